// The HTTP client (used by the tartarus CLI and Hecatoncheir node agents): blocking
// HTTP/1.1 over TCP or a Unix socket, one keep-alive connection per Client, with connect
// and request deadlines and a streaming mode for chunked responses.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "http/url.h"

namespace tartarus::http {

// Endpoint: "http://host:port" (port defaults to 80; "[::1]:8080" for IPv6) or
// "unix:///path/to.sock" (also a bare "/path/to.sock"). https is not supported.
struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5000}, request_timeout{60000};
  std::string bearer_token;  // sent as "Authorization: Bearer <token>" unless a header overrides
};

struct ClientResponse {
  int status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string Header(std::string_view name) const;  // case-insensitive, "" if absent
};

// Errors: kFailedPrecondition "cannot reach <endpoint>: <why>" when connecting fails,
// kTimeout when a deadline passes, kProtocol for a malformed response, kCancelled after
// Cancel(). HTTP error statuses are not Errors: they come back in ClientResponse.
// A Client is used by one thread at a time (except Cancel); it is movable.
class Client {
 public:
  static Result<Client> Create(const std::string& endpoint,
                               ClientOptions options = {});  // validates only
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  // request_timeout covers connecting, sending and the whole response.
  Result<ClientResponse> Do(const std::string& method, const std::string& target,
                            const std::string& body = "",
                            std::vector<std::pair<std::string, std::string>> headers = {});
  // For streaming responses: on_chunk gets body bytes as they arrive; returns status when the
  // stream ends. A non-2xx status returns the full body in the response without calling
  // on_chunk. request_timeout covers only the response header: a stream may idle for long.
  // on_chunk returning false closes the connection and returns the response so far (no error).
  Result<ClientResponse> Stream(
      const std::string& method, const std::string& target, const std::string& body,
      const std::function<bool(std::string_view)>& on_chunk,  // false: stop
      std::vector<std::pair<std::string, std::string>> headers = {});
  // Aborts a Do/Stream running on another thread (e.g. from a SIGINT watcher); thread-safe.
  // Sticky: every later call on this Client fails with kCancelled too.
  void Cancel();
  const std::string& endpoint() const;

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tartarus::http

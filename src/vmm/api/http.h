// tartarus-vmm (Tartarus's KVM microVM monitor): the API socket's HTTP/1.1 codec.
// A small incremental request parser and a response formatter, dependency-free, for the
// Firecracker API on a Unix socket: the VMM's only network-facing parser, so every bound is
// explicit (request line, header count and size, body size) and every byte is outside input.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace tartarus::vmm::api {

struct HttpRequest {
  std::string method;  // "GET", "PUT", "PATCH", ... (case-sensitive, as RFC 9110 says)
  std::string path;    // origin-form target without the query string
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  bool keep_alive = true;  // HTTP/1.1 default; "Connection: close" turns it off

  // The first header with this (lower-case) name.
  std::optional<std::string_view> Header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string body;  // JSON when not empty
};

std::string_view HttpStatusText(int status);
// "HTTP/1.1 <status> <text>", Content-Length, Content-Type when there is a body.
std::string FormatHttpResponse(const HttpResponse& response, bool keep_alive);

// Feed bytes as they arrive; Next() yields each complete request in turn. After an error the
// parser stays failed: answer error_status() and close the connection.
class HttpRequestParser {
 public:
  static constexpr size_t kMaxHeadBytes = 8 * 1024;  // request line and headers
  static constexpr size_t kMaxHeaders = 64;
  static constexpr size_t kMaxBodyBytes = 64 * 1024;

  void Feed(std::string_view bytes);
  // A request, nullopt when more bytes are needed, or an Error naming what was wrong.
  Result<std::optional<HttpRequest>> Next();
  // The HTTP status for the last error: 400, 413 (body), 431 (head), 501 (chunked), 505.
  int error_status() const { return error_status_; }
  // Bytes received but not yet consumed by a request.
  size_t buffered() const { return buffer_.size(); }

 private:
  std::unexpected<Error> Failed(int status, std::string message);
  Result<HttpRequest> ParseHead(std::string_view head, size_t* body_length);

  std::string buffer_;
  int error_status_ = 0;
  std::optional<Error> error_;
};

}  // namespace tartarus::vmm::api

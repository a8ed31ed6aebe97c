// The HTTP server (used by Olympus, the API server): Boost.Beast async HTTP/1.1 over TCP
// and Unix sockets, with a router ("/v1/sandboxes/{id}"), request ids, JSON errors and
// chunked streaming responses that handlers may answer from any thread.
//
// Threads: io_threads run all socket work; a handler for a route with blocking = false
// runs on an io thread (it must not block), one with blocking = true on the worker pool.
// Outside input is bounded: header size, body size per route, header timeout, connection
// count. Malformed requests get a JSON error and the connection is closed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "http/url.h"

namespace tartarus::http {

struct Request {
  std::string method, target, path;           // path: target without the query, percent-decoded
  std::map<std::string, std::string> query;   // decoded
  std::map<std::string, std::string> params;  // from the route pattern, e.g. {id} (decoded)
  std::string body, request_id, peer;  // peer: "1.2.3.4:5678", "[::1]:5678", "unix:uid=N,pid=N"
  std::string Header(std::string_view name) const;  // case-insensitive, "" if absent
  std::vector<std::pair<std::string, std::string>> headers;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // CR/LF in names/values: dropped
};

// How a handler answers: once with Send(), or as a stream (chunked transfer encoding):
// StartStream, Write*, Finish. Thread-safe: callable from any thread, after the handler
// returned (async work). Writes are queued; the connection's socket is only touched on its
// strand. If the client goes away, closed() becomes true and the OnClose callbacks run (so a
// producer can stop). Calls out of order (Write before StartStream, a second Send, anything
// after Finish or after close) are ignored. The Request passed to the handler stays valid
// for as long as this Responder is alive.
class Responder {
 public:
  Responder() = default;
  explicit Responder(std::string request_id) : request_id_(std::move(request_id)) {}
  virtual ~Responder() = default;
  virtual void Send(Response response) = 0;
  virtual void StartStream(int status, std::string content_type,
                           std::vector<std::pair<std::string, std::string>> headers = {}) = 0;
  virtual void Write(std::string chunk) = 0;  // empty chunks are skipped
  virtual void Finish() = 0;
  virtual bool closed() const = 0;
  // Runs once when the client goes away or the server stops (at once if already closed);
  // not after a response completed normally. Runs on an io thread: must not block.
  virtual void OnClose(std::function<void()> callback) = 0;
  virtual size_t pending_bytes()
      const = 0;  // queued, not yet written: producers apply backpressure
  const std::string& request_id() const { return request_id_; }

 protected:
  std::string request_id_;
};

using Handler = std::function<void(Request&, std::shared_ptr<Responder>)>;

namespace detail {
struct ServerCore;  // server.cc
}  // namespace detail

struct RouteOptions {
  bool blocking = false;  // run on the worker pool (handlers that touch the database)
  size_t max_body_bytes = 1 << 20;
};

struct ServerOptions {
  int io_threads = 2;
  int worker_threads = 8;
  size_t max_connections = 1024;  // beyond it: 503 and close
  std::chrono::seconds header_timeout{
      30};                             // also the keep-alive idle timeout and body idle timeout
  size_t max_header_bytes = 16 << 10;  // beyond it: 431
};

class Server {
 public:
  explicit Server(ServerOptions options = {});
  ~Server();  // stops
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Patterns like "/v1/sandboxes/{id}/exec"; method "GET"... 404/405 answered as JSON errors.
  // A literal segment wins over a {param} at the same place. HEAD is served by GET routes.
  // Register routes before Start().
  void Route(std::string method, std::string pattern, Handler handler, RouteOptions options = {});
  // Runs around every request (e.g. logging, metrics): called with request, status, duration
  // when done (the response fully written, or 499 if the client left before it was).
  void OnRequestDone(
      std::function<void(const Request&, int status, std::chrono::microseconds)> hook);
  Status ListenTcp(const std::string& host, uint16_t port);  // port 0: pick one; see tcp_port()
  Status ListenUnix(const std::string& path);  // removes a stale socket file; mode 0660
  uint16_t tcp_port() const;
  void Start();  // io threads run; returns at once
  // Stops accepting, closes connections (OnClose callbacks run), waits for the worker pool
  // and joins the io threads; idempotent. Not from a handler or an io/worker thread.
  void Stop();
  // Runs fn on the worker pool (for handlers that must block, e.g. a streaming proxy loop).
  void Post(std::function<void()> fn);

 private:
  std::unique_ptr<detail::ServerCore> impl_;
};

// The JSON error body every Tartarus API error uses:
// {"error":{"code":"not_found","message":"...","request_id":"..."}}
Response JsonError(int status, std::string_view code, std::string_view message,
                   std::string_view request_id);

// Maps an Error's ErrorCode to an HTTP status and code string (kNotFound->404 "not_found",
// kInvalidArgument->400 "invalid_argument", kPermissionDenied->403 "permission_denied",
// kAlreadyExists->409 "already_exists", kFailedPrecondition->409 "failed_precondition",
// kResourceExhausted->429 "resource_exhausted", kTimeout->504 "timeout", else 500 "internal").
Response ErrorResponse(const Error& error, std::string_view request_id);

// True for a client-supplied request id we keep: [A-Za-z0-9._-]{1,64}.
bool IsSaneRequestId(std::string_view id);
// A fresh random request id (16 hex digits).
std::string NewRequestId();

}  // namespace tartarus::http

// The HTTP client (tartarus CLI, Hecatoncheir node agents): blocking calls built on Beast's
// async operations, each driven on the caller's thread with io_context::run_one_until so
// every phase has a deadline and Cancel() can interrupt it.
#include "http/client.h"

#include <poll.h>
#include <sys/un.h>

#include <array>
#include <atomic>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace tartarus::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using BoostError = boost::system::error_code;
using Proto = asio::generic::stream_protocol;
using Clock = std::chrono::steady_clock;

namespace {

std::string_view ToStd(beast::string_view view) { return {view.data(), view.size()}; }

constexpr size_t kMaxResponseHeader = 64 << 10;
constexpr size_t kMaxBufferedBody = 256 << 20;  // Do() and error bodies; streams are unbounded

bool IsTokenChar(unsigned char c) {
  return std::isalnum(c) ||
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool IsToken(std::string_view text) {
  if (text.empty()) return false;
  for (unsigned char c : text) {
    if (!IsTokenChar(c)) return false;
  }
  return true;
}

bool IsCleanValue(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool IsCleanTarget(std::string_view target) {
  if (target.empty() || target.front() != '/') return false;
  for (unsigned char c : target) {
    if (c <= 0x20 || c == 0x7f) return false;
  }
  return true;
}

std::string HeaderLookup(const std::vector<std::pair<std::string, std::string>>& headers,
                         std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

}  // namespace

std::string ClientResponse::Header(std::string_view name) const {
  return HeaderLookup(headers, name);
}

struct Client::Impl {
  std::string endpoint;
  ClientOptions options;
  bool is_unix = false;
  std::string host, port, unix_path, host_header;

  asio::io_context io;
  std::optional<Proto::socket> socket;
  std::optional<asio::ip::tcp::resolver> resolver;
  beast::flat_buffer buffer;
  std::atomic<bool> cancelled{false};

  using Parser = bhttp::response_parser<bhttp::buffer_body>;

  // Closes the connection; pending operations complete with an error.
  void AbortIo() {
    BoostError ignored;
    if (socket) socket->close(ignored);
    if (resolver) resolver->cancel();
  }

  void Disconnect() {
    AbortIo();
    socket.reset();
    buffer.consume(buffer.size());
  }

  // Runs the io_context on this thread until `done`; false when the deadline passed first
  // (the operation was then aborted and has completed).
  bool Run(const bool& done, std::optional<Clock::time_point> deadline) {
    io.restart();
    while (!done) {
      size_t ran = deadline ? io.run_one_until(*deadline) : io.run_one();
      if (ran == 0 && !done) {
        AbortIo();
        io.restart();
        while (!done && io.run_one() > 0) {
        }
        return false;
      }
    }
    return true;
  }

  Error Unreachable(std::string_view why) const {
    return Error{ErrorCode::kFailedPrecondition, fmt::format("cannot reach {}: {}", endpoint, why)};
  }
  Error Cancelled() const { return Error{ErrorCode::kCancelled, "request cancelled"}; }
  Error TimedOut(std::string_view what) const {
    return Error{ErrorCode::kTimeout, fmt::format("{} {} timed out", what, endpoint)};
  }
  Error Broken(std::string_view what, const BoostError& ec) const {
    if (cancelled) return Cancelled();
    bool parse = &ec.category() == &bhttp::make_error_code(bhttp::error::bad_method).category() &&
                 ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
    return Error{parse ? ErrorCode::kProtocol : ErrorCode::kIo,
                 fmt::format("{} {}: {}", what, endpoint, ec.message())};
  }

  Status Connect(Clock::time_point deadline) {
    Disconnect();
    std::vector<Proto::endpoint> endpoints;
    if (is_unix) {
      endpoints.emplace_back(asio::local::stream_protocol::endpoint(unix_path));
    } else {
      resolver.emplace(io);
      bool done = false;
      BoostError resolve_ec;
      resolver->async_resolve(host, port,
                              [&](BoostError ec, asio::ip::tcp::resolver::results_type results) {
                                resolve_ec = ec;
                                for (const auto& entry : results)
                                  endpoints.emplace_back(entry.endpoint());
                                done = true;
                              });
      bool in_time = Run(done, deadline);
      resolver.reset();
      if (cancelled) return Fail(Cancelled());
      if (!in_time) return Fail(Unreachable("resolving the host timed out"));
      if (resolve_ec) return Fail(Unreachable(resolve_ec.message()));
      if (endpoints.empty()) return Fail(Unreachable("the host has no address"));
    }
    socket.emplace(io);
    bool done = false;
    BoostError connect_ec;
    asio::async_connect(*socket, endpoints, [&](BoostError ec, const Proto::endpoint&) {
      connect_ec = ec;
      done = true;
    });
    bool in_time = Run(done, deadline);
    if (cancelled) return Fail(Cancelled());
    if (!in_time) {
      Disconnect();
      return Fail(Unreachable(
          fmt::format("connect timed out after {}ms", options.connect_timeout.count())));
    }
    if (connect_ec) {
      Disconnect();
      return Fail(Unreachable(connect_ec.message()));
    }
    return Ok();
  }

  // An idle keep-alive connection the server has closed (or sent junk on) reads as ready.
  bool IdleConnectionUsable() {
    if (!socket || !socket->is_open() || buffer.size() > 0) return false;
    pollfd pfd{.fd = socket->native_handle(), .events = POLLIN, .revents = 0};
    return ::poll(&pfd, 1, 0) == 0;
  }

  Result<ClientResponse> Exchange(const std::string& method, const std::string& target,
                                  const std::string& body,
                                  const std::vector<std::pair<std::string, std::string>>& headers,
                                  const std::function<bool(std::string_view)>* on_chunk) {
    if (cancelled) return Fail(Cancelled());
    if (!IsToken(method)) {
      return Fail(ErrorCode::kInvalidArgument, fmt::format("bad HTTP method '{}'", method));
    }
    if (!IsCleanTarget(target)) {
      return Fail(ErrorCode::kInvalidArgument,
                  fmt::format("bad request target '{}': must start with '/' and have no spaces "
                              "or control characters (use UrlEncode)",
                              target));
    }
    bhttp::request<bhttp::string_body> request;
    request.version(11);
    request.method_string(method);
    request.target(target);
    request.set(bhttp::field::host, host_header);
    request.set(bhttp::field::user_agent, "tartarus/" TARTARUS_VERSION);
    if (!options.bearer_token.empty() && HeaderLookup(headers, "Authorization").empty()) {
      if (!IsCleanValue(options.bearer_token)) {
        return Fail(ErrorCode::kInvalidArgument, "bearer token has control characters");
      }
      request.set(bhttp::field::authorization, "Bearer " + options.bearer_token);
    }
    for (const auto& [name, value] : headers) {
      if (!IsToken(name) || !IsCleanValue(value)) {
        return Fail(ErrorCode::kInvalidArgument, fmt::format("bad request header '{}'", name));
      }
      request.set(name, value);
    }
    request.body() = body;
    request.keep_alive(true);
    request.prepare_payload();

    const Clock::time_point deadline = Clock::now() + options.request_timeout;
    std::optional<Parser> parser;
    for (int attempt = 0;; ++attempt) {
      bool reused = socket.has_value() && socket->is_open();
      if (reused && !IdleConnectionUsable()) {
        Disconnect();
        reused = false;
      }
      if (!reused) {
        auto connect_deadline = std::min(deadline, Clock::now() + options.connect_timeout);
        TRY(Connect(connect_deadline));
      }
      // A reused connection the server dropped meanwhile fails before any response byte:
      // then (once) reconnect and send again.
      bool retry = reused && attempt == 0;

      bool done = false;
      BoostError write_ec;
      bhttp::async_write(*socket, request, [&](BoostError ec, size_t) {
        write_ec = ec;
        done = true;
      });
      if (!Run(done, deadline)) {
        Disconnect();
        return Fail(cancelled ? Cancelled() : TimedOut(fmt::format("{} {} on", method, target)));
      }
      if (write_ec) {
        Disconnect();
        if (retry && !cancelled) continue;
        return Fail(Broken("sending request to", write_ec));
      }

      parser.emplace();
      parser->header_limit(kMaxResponseHeader);
      parser->body_limit(std::numeric_limits<std::uint64_t>::max());
      if (method == "HEAD") parser->skip(true);
      done = false;
      BoostError read_ec;
      bhttp::async_read_header(*socket, buffer, *parser, [&](BoostError ec, size_t) {
        read_ec = ec;
        done = true;
      });
      if (!Run(done, deadline)) {
        Disconnect();
        return Fail(cancelled ? Cancelled() : TimedOut(fmt::format("{} {} on", method, target)));
      }
      if (read_ec) {
        Disconnect();
        bool dropped = read_ec == bhttp::error::end_of_stream ||
                       read_ec == asio::error::connection_reset ||
                       read_ec == asio::error::broken_pipe || read_ec == asio::error::eof;
        if (retry && dropped && !cancelled) continue;
        return Fail(Broken("reading response from", read_ec));
      }
      break;
    }

    ClientResponse response;
    response.status = static_cast<int>(parser->get().result_int());
    for (const auto& field : parser->get()) {
      response.headers.emplace_back(std::string(ToStd(field.name_string())),
                                    std::string(ToStd(field.value())));
    }
    bool streaming = on_chunk != nullptr && response.status >= 200 && response.status < 300;
    // A stream may idle for long: only Do() keeps the deadline for the body.
    std::optional<Clock::time_point> body_deadline =
        on_chunk != nullptr ? std::nullopt : std::optional<Clock::time_point>(deadline);

    std::array<char, 64 << 10> chunk_buffer;
    while (!parser->is_done()) {
      parser->get().body().data = chunk_buffer.data();
      parser->get().body().size = chunk_buffer.size();
      bool done = false;
      BoostError read_ec;
      bhttp::async_read_some(*socket, buffer, *parser, [&](BoostError ec, size_t) {
        read_ec = ec;
        done = true;
      });
      if (!Run(done, body_deadline)) {
        Disconnect();
        return Fail(cancelled ? Cancelled() : TimedOut(fmt::format("{} {} on", method, target)));
      }
      if (read_ec == bhttp::error::need_buffer) read_ec = {};
      if (read_ec) {
        Disconnect();
        return Fail(Broken("reading response body from", read_ec));
      }
      size_t got = chunk_buffer.size() - parser->get().body().size;
      if (got == 0) continue;
      std::string_view piece(chunk_buffer.data(), got);
      if (streaming) {
        if (!(*on_chunk)(piece)) {
          Disconnect();  // the caller stopped reading: this connection is mid-response
          return response;
        }
        continue;
      }
      if (response.body.size() + got > kMaxBufferedBody) {
        Disconnect();
        return Fail(
            ErrorCode::kResourceExhausted,
            fmt::format("response from {} is larger than {} bytes", endpoint, kMaxBufferedBody));
      }
      response.body.append(piece);
    }
    if (!parser->keep_alive()) Disconnect();
    return response;
  }
};

Result<Client> Client::Create(const std::string& endpoint, ClientOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->endpoint = endpoint;
  impl->options = options;
  std::string_view rest = endpoint;
  auto bad = [&](std::string_view why) {
    return Fail(ErrorCode::kInvalidArgument, fmt::format("bad endpoint '{}': {}", endpoint, why));
  };
  if (rest.starts_with("unix://") || rest.starts_with("/")) {
    if (rest.starts_with("unix://")) rest.remove_prefix(7);
    if (rest.empty()) return bad("no socket path");
    if (rest.size() >= sizeof(sockaddr_un{}.sun_path)) return bad("socket path too long");
    if (!IsCleanValue(rest)) return bad("control characters in the socket path");
    impl->is_unix = true;
    impl->unix_path = std::string(rest);
    impl->host_header = "localhost";
    return Client(std::move(impl));
  }
  if (rest.starts_with("https://")) {
    return bad("https is not supported (no TLS here): use http:// or a unix socket");
  }
  if (!rest.starts_with("http://")) {
    return bad("want http://host:port, unix:///path or /path");
  }
  rest.remove_prefix(7);
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path = rest.substr(authority.size());
  if (!path.empty() && path != "/") return bad("a path prefix is not supported");
  if (authority.empty()) return bad("no host");
  std::string_view host = authority, port = "80";
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("unclosed '[' in the host");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after the IPv6 address");
      port = after.substr(1);
    }
  } else if (size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) return bad("no host");
  for (char c : host) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
          c == '_')) {
      return bad("bad character in the host");
    }
  }
  int port_number = 0;
  if (port.empty() || port.size() > 5) return bad("bad port");
  for (char c : port) {
    if (c < '0' || c > '9') return bad("bad port");
    port_number = port_number * 10 + (c - '0');
  }
  if (port_number < 1 || port_number > 65535) return bad("port out of range");
  impl->host = std::string(host);
  impl->port = std::string(port);
  impl->host_header = std::string(authority);
  return Client(std::move(impl));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

Result<ClientResponse> Client::Do(const std::string& method, const std::string& target,
                                  const std::string& body,
                                  std::vector<std::pair<std::string, std::string>> headers) {
  if (!impl_) return Fail(ErrorCode::kFailedPrecondition, "http client was moved from");
  try {
    return impl_->Exchange(method, target, body, headers, nullptr);
  } catch (const std::exception& e) {  // allocation failures and the like stay inside
    impl_->Disconnect();
    return Fail(ErrorCode::kInternal, fmt::format("http client: {}", e.what()));
  }
}

Result<ClientResponse> Client::Stream(const std::string& method, const std::string& target,
                                      const std::string& body,
                                      const std::function<bool(std::string_view)>& on_chunk,
                                      std::vector<std::pair<std::string, std::string>> headers) {
  if (!impl_) return Fail(ErrorCode::kFailedPrecondition, "http client was moved from");
  try {
    return impl_->Exchange(method, target, body, headers, &on_chunk);
  } catch (const std::exception& e) {
    impl_->Disconnect();
    return Fail(ErrorCode::kInternal, fmt::format("http client: {}", e.what()));
  }
}

void Client::Cancel() {
  if (!impl_) return;
  impl_->cancelled = true;
  asio::post(impl_->io, [impl = impl_.get()] { impl->AbortIo(); });
}

const std::string& Client::endpoint() const {
  static const std::string kNone;
  return impl_ ? impl_->endpoint : kNone;
}

}  // namespace tartarus::http

// The HTTP server (Olympus' front door): connections, request parsing, routing, responders.
//
// Each connection is a Session on its own strand. It reads one request at a time (header,
// route, then body), hands it to the handler, and while the handler works keeps a read
// pending so a client that leaves is noticed (closed() / OnClose). Responders serialize
// the response bytes themselves and post them to the session's strand, which writes them
// in batches. Sessions hold their responder weakly; a responder holds its session until
// the response is complete or the connection closes, so neither can keep the other alive
// forever.
#include "http/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "http/router.h"
#include "telemetry/log.h"

namespace tartarus::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using BoostError = boost::system::error_code;
using Proto = asio::generic::stream_protocol;
using Strand = asio::strand<asio::io_context::executor_type>;
using Socket = asio::basic_stream_socket<Proto, Strand>;
using Acceptor = asio::basic_socket_acceptor<Proto, Strand>;
using Clock = std::chrono::steady_clock;
using telemetry::LogJson;

namespace {

std::string_view ToStd(beast::string_view view) { return {view.data(), view.size()}; }

constexpr size_t kWatchLimit = 64 << 10;  // pipelined bytes buffered while a handler works
constexpr size_t kDrainLimit = 4 << 20;   // unread request bytes swallowed before closing
constexpr auto kDrainTime = std::chrono::seconds(2);

int SaneStatus(int status) { return status >= 100 && status <= 599 ? status : 500; }

std::string_view Reason(int status) {
  auto code = bhttp::int_to_status(static_cast<unsigned>(status));
  if (code == bhttp::status::unknown) return "Unknown";
  return ToStd(bhttp::obsolete_reason(code));
}

bool IsTokenChar(unsigned char c) {
  return std::isalnum(c) ||
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

// Header names must be tokens and values free of CR, LF and NUL: a handler echoing outside
// input into a header must not be able to split the response.
bool SafeHeader(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (!IsTokenChar(c)) return false;
  }
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool IsBeastHttpError(const BoostError& ec) {
  return &ec.category() == &bhttp::make_error_code(bhttp::error::bad_method).category();
}

std::string PeerName(Socket& socket, bool is_unix) {
  int fd = socket.native_handle();
  if (is_unix) {
    struct ucred cred {};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      return fmt::format("unix:uid={},pid={}", cred.uid, cred.pid);
    }
    return "unix";
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "";
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    return fmt::format("{}:{}", text, ntohs(in->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    return fmt::format("[{}]:{}", text, ntohs(in6->sin6_port));
  }
  return "";
}

std::string SerializeSimple(int status, const Response& response, std::string_view request_id) {
  std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Request-Id: {}\r\n"
      "Connection: close\r\n\r\n",
      status, Reason(status), response.content_type, response.body.size(), request_id);
  return out + response.body;
}

}  // namespace

namespace detail {

class Session;
class ResponderImpl;
struct Listener;

struct ServerCore {
  explicit ServerCore(ServerOptions opts)
      : options(opts),
        work(asio::make_work_guard(io)),
        pool(static_cast<size_t>(std::max(1, opts.worker_threads))) {}

  void Accept(Listener* listener);
  bool Register(const std::shared_ptr<Session>& session);
  size_t SessionCount();
  void Unregister(Session* session);
  void Stop();

  ServerOptions options;
  asio::io_context io;  // first member: destroyed last, after everything that uses it
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::thread_pool pool;
  std::vector<std::thread> io_threads;
  Router router;
  std::function<void(const Request&, int, std::chrono::microseconds)> hook;
  std::vector<std::unique_ptr<Listener>> listeners;
  uint16_t tcp_port = 0;

  std::mutex sessions_mu;
  std::condition_variable sessions_cv;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  std::atomic<bool> started{false};
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;
  bool stopped = false;
};

struct Listener {
  Acceptor acceptor;
  asio::steady_timer retry;
  bool is_unix = false;
  std::string path;
  Listener(Strand strand) : acceptor(strand), retry(strand) {}
};

// One piece of a response, posted from a responder to its session's strand.
struct Output {
  std::string bytes;
  int status = 0;  // set on the first piece (status line)
  bool keep_alive = true;
  bool last = false;   // the response is complete once written
  bool abort = false;  // the stream was abandoned: close after writing
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerCore* server, Socket socket, bool is_unix)
      : server_(server),
        socket_(std::move(socket)),
        read_timer_(socket_.get_executor()),
        write_timer_(socket_.get_executor()),
        is_unix_(is_unix) {}

  Strand executor() { return socket_.get_executor(); }

  void Start() {
    asio::post(executor(), [self = shared_from_this()] { self->Begin(); });
  }
  void CloseFromAnyThread() {
    asio::post(executor(), [self = shared_from_this()] { self->Close(); });
  }
  // On the strand (or once no io thread runs).
  void Close();
  void Deliver(uint64_t exchange, Output output);

 private:
  enum class Next { kNone, kRead, kDrain };

  void Begin();
  void ReadNext();
  void OnHeader(BoostError ec);
  void ReadBody();
  void OnBody(BoostError ec);
  void Dispatch();
  void Reject(int status, std::string_view code, std::string_view message,
              std::vector<std::pair<std::string, std::string>> headers = {});
  void StartWatch();
  void OnWatch(BoostError ec, size_t n);
  void MaybeWrite();
  void OnWrite(BoostError ec, size_t n);
  void EndExchange();
  void Drain();
  void DrainSome();
  void CallHook(int status);
  void ArmReadTimer(Clock::duration timeout);
  void CancelReadTimer();
  void ArmWriteTimer();

  ServerCore* server_;  // outlives every session callback: Stop joins the io threads
  Socket socket_;
  asio::steady_timer read_timer_;
  asio::steady_timer write_timer_;
  uint64_t read_timer_generation_ = 0;
  uint64_t write_timer_generation_ = 0;
  bool is_unix_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::array<char, 4096> drain_buffer_{};
  size_t drained_ = 0;
  bool closed_ = false;

  // The current exchange (one request and its response).
  uint64_t exchange_id_ = 0;
  bool exchange_active_ = false;
  std::shared_ptr<Request> request_;
  std::weak_ptr<ResponderImpl> responder_;
  // Owns the responder from header to dispatch, before the handler takes it over.
  std::shared_ptr<ResponderImpl> pending_responder_;
  const RouteEntry* route_ = nullptr;
  Clock::time_point started_at_{};
  int status_ = 0;
  bool keep_alive_ = true;
  bool ending_ = false;
  bool abort_ = false;

  bool watching_ = false;
  Next after_watch_ = Next::kNone;

  std::deque<std::string> queue_;
  std::vector<std::string> batch_;  // being written
  bool writing_ = false;
};

class ResponderImpl final : public Responder {
 public:
  ResponderImpl(std::shared_ptr<Session> session, uint64_t exchange,
                std::shared_ptr<Request> request, bool keep_alive, bool head, bool http10)
      : Responder(request->request_id),
        session_(std::move(session)),
        request_(std::move(request)),
        exchange_(exchange),
        keep_alive_(keep_alive),
        head_(head),
        http10_(http10) {}

  ~ResponderImpl() override {
    try {
      std::lock_guard lock(mu_);
      if (closed_ || !session_) return;
      if (state_ == State::kIdle) {
        // The handler dropped its responder without answering: answer for it.
        LogJson("error", "handler did not answer",
                {{"request_id", request_id_}, {"path", request_->path}});
        SendLocked(JsonError(500, "internal", "the handler did not answer", request_id_));
      } else if (state_ == State::kStreaming) {
        // Abandoned mid-stream: cut the connection so the client sees a truncated body.
        Post(Output{.bytes = {}, .last = true, .abort = true});
      }
    } catch (...) {  // a destructor must not throw
    }
  }

  void Send(Response response) override {
    std::lock_guard lock(mu_);
    SendLocked(std::move(response));
  }

  // For errors found before the handler runs: the connection closes afterwards.
  void SendAndClose(Response response) {
    std::lock_guard lock(mu_);
    keep_alive_ = false;
    SendLocked(std::move(response));
  }

  void StartStream(int status, std::string content_type,
                   std::vector<std::pair<std::string, std::string>> headers) override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kIdle || !session_) return;
    state_ = State::kStreaming;
    status = SaneStatus(status);
    chunked_ = !http10_;  // HTTP/1.0 has no chunked encoding: the body ends at close
    if (http10_) keep_alive_ = false;
    Post(Output{.bytes = Head(status, content_type, headers, std::nullopt),
                .status = status,
                .keep_alive = keep_alive_});
  }

  void Write(std::string chunk) override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kStreaming || !session_ || chunk.empty() || head_) return;
    if (!chunked_) {
      Post(Output{.bytes = std::move(chunk)});
      return;
    }
    std::string framed = fmt::format("{:x}\r\n", chunk.size());
    framed.reserve(framed.size() + chunk.size() + 2);
    framed += chunk;
    framed += "\r\n";
    Post(Output{.bytes = std::move(framed)});
  }

  void Finish() override {
    std::lock_guard lock(mu_);
    if (closed_ || state_ != State::kStreaming || !session_) return;
    state_ = State::kDone;
    Post(Output{.bytes = chunked_ && !head_ ? "0\r\n\r\n" : "", .last = true});
  }

  bool closed() const override { return closed_.load(); }

  void OnClose(std::function<void()> callback) override {
    if (!callback) return;
    {
      std::lock_guard lock(mu_);
      if (!closed_) {
        if (!detached_) on_close_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }

  size_t pending_bytes() const override { return pending_.load(); }

  // Session side, on its strand.
  void Written(size_t n) { pending_.fetch_sub(std::min(n, pending_.load())); }
  void Detach() {
    std::lock_guard lock(mu_);
    detached_ = true;
    session_.reset();
    on_close_.clear();
  }
  void MarkClosed() {
    std::vector<std::function<void()>> callbacks;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      session_.reset();
      callbacks.swap(on_close_);
    }
    for (auto& callback : callbacks) {
      try {
        callback();
      } catch (const std::exception& e) {
        LogJson("error", "OnClose callback threw", {{"error", e.what()}});
      } catch (...) {
        LogJson("error", "OnClose callback threw");
      }
    }
  }

 private:
  enum class State { kIdle, kStreaming, kDone };

  void SendLocked(Response response) {
    if (closed_ || state_ != State::kIdle || !session_) return;
    state_ = State::kDone;
    int status = SaneStatus(response.status);
    bool no_body = status < 200 || status == 204 || status == 304;
    std::string out =
        Head(status, no_body ? std::string() : response.content_type, response.headers,
             no_body ? std::nullopt : std::optional<size_t>(response.body.size()));
    if (!head_ && !no_body) out += response.body;
    Post(
        Output{.bytes = std::move(out), .status = status, .keep_alive = keep_alive_, .last = true});
  }

  // Status line and headers; content_length nullopt on a stream means chunked (HTTP/1.1).
  std::string Head(int status, std::string_view content_type,
                   const std::vector<std::pair<std::string, std::string>>& headers,
                   std::optional<size_t> content_length) {
    std::string out = fmt::format("HTTP/1.{} {} {}\r\n", http10_ ? 0 : 1, status, Reason(status));
    if (!content_type.empty() && SafeHeader("Content-Type", content_type)) {
      out += fmt::format("Content-Type: {}\r\n", content_type);
    }
    if (content_length) {
      out += fmt::format("Content-Length: {}\r\n", *content_length);
    } else if (state_ == State::kStreaming && chunked_) {
      out += "Transfer-Encoding: chunked\r\n";
    }
    out += fmt::format("X-Request-Id: {}\r\n", request_id_);
    if (!keep_alive_) {
      out += "Connection: close\r\n";
    } else if (http10_) {
      out += "Connection: keep-alive\r\n";
    }
    for (const auto& [name, value] : headers) {
      // Framing headers are ours; a bad header is dropped rather than split the response.
      if (EqualsIgnoreCase(name, "Content-Length") || EqualsIgnoreCase(name, "Transfer-Encoding") ||
          EqualsIgnoreCase(name, "Connection") || EqualsIgnoreCase(name, "X-Request-Id") ||
          (!content_type.empty() && EqualsIgnoreCase(name, "Content-Type")) ||
          !SafeHeader(name, value)) {
        continue;
      }
      out += fmt::format("{}: {}\r\n", name, value);
    }
    out += "\r\n";
    return out;
  }

  // Queues bytes for the session; called with mu_ held so pieces keep their order.
  void Post(Output output) {
    pending_.fetch_add(output.bytes.size());
    asio::post(session_->executor(),
               [session = session_, exchange = exchange_, output = std::move(output)]() mutable {
                 session->Deliver(exchange, std::move(output));
               });
  }

  mutable std::mutex mu_;
  std::shared_ptr<Session> session_;  // reset once the response completed or the client left
  std::shared_ptr<Request> request_;  // keeps the handler's Request& valid
  uint64_t exchange_;
  State state_ = State::kIdle;
  std::atomic<bool> closed_{false};
  bool detached_ = false;
  std::vector<std::function<void()>> on_close_;
  std::atomic<size_t> pending_{0};
  bool keep_alive_;
  bool head_;
  bool http10_;
  bool chunked_ = false;
};

// ---- Session ----

void Session::Begin() {
  if (server_->stopping) {
    Close();
    return;
  }
  peer_ = PeerName(socket_, is_unix_);
  if (!is_unix_) {
    int one = 1;
    setsockopt(socket_.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(socket_.native_handle(), SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  }
  ReadNext();
}

void Session::ArmReadTimer(Clock::duration timeout) {
  uint64_t generation = ++read_timer_generation_;
  read_timer_.expires_after(timeout);
  read_timer_.async_wait([self = shared_from_this(), generation](BoostError ec) {
    if (ec || generation != self->read_timer_generation_ || self->closed_) return;
    self->Close();  // header, body or drain took too long
  });
}

void Session::CancelReadTimer() {
  ++read_timer_generation_;
  read_timer_.cancel();
}

void Session::ArmWriteTimer() {
  uint64_t generation = ++write_timer_generation_;
  write_timer_.expires_after(server_->options.header_timeout * 2);
  write_timer_.async_wait([self = shared_from_this(), generation](BoostError ec) {
    if (ec || generation != self->write_timer_generation_ || self->closed_) return;
    self->Close();  // the client stopped reading
  });
}

void Session::ReadNext() {
  if (closed_) return;
  if (server_->stopping) {
    Close();
    return;
  }
  parser_.emplace();
  parser_->header_limit(static_cast<uint32_t>(server_->options.max_header_bytes));
  // The route's limit is applied once the header is read (and checked against Content-Length).
  parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
  ArmReadTimer(server_->options.header_timeout);
  bhttp::async_read_header(
      socket_, buffer_, *parser_,
      [self = shared_from_this()](BoostError ec, size_t) { self->OnHeader(ec); });
}

void Session::OnHeader(BoostError ec) {
  CancelReadTimer();
  if (closed_) return;

  ++exchange_id_;
  exchange_active_ = true;
  started_at_ = Clock::now();
  status_ = 0;
  ending_ = abort_ = false;
  route_ = nullptr;
  request_ = std::make_shared<Request>();
  request_->peer = peer_;

  if (ec) {
    request_->request_id = NewRequestId();
    if (ec == bhttp::error::header_limit) {
      Reject(431, "invalid_argument",
             fmt::format("request header larger than {} bytes", server_->options.max_header_bytes));
    } else if (IsBeastHttpError(ec) && ec != bhttp::error::end_of_stream &&
               ec != bhttp::error::partial_message) {
      Reject(400, "invalid_argument", fmt::format("malformed request: {}", ec.message()));
    } else {
      exchange_active_ = false;
      Close();  // the client left (or sent half a header and left)
    }
    return;
  }

  const auto& message = parser_->get();
  request_->method = std::string(ToStd(message.method_string()));
  request_->target = std::string(ToStd(message.target()));
  for (const auto& field : message) {
    request_->headers.emplace_back(std::string(ToStd(field.name_string())),
                                   std::string(ToStd(field.value())));
  }
  std::string given_id = request_->Header("X-Request-Id");
  request_->request_id = IsSaneRequestId(given_id) ? given_id : NewRequestId();
  keep_alive_ = message.keep_alive();

  auto responder =
      std::make_shared<ResponderImpl>(shared_from_this(), exchange_id_, request_, keep_alive_,
                                      request_->method == "HEAD", message.version() == 10);
  responder_ = responder;
  pending_responder_ = responder;  // owned here until the handler takes it

  if (auto parsed = ParseTarget(request_->target, *request_); !parsed) {
    Reject(400, "invalid_argument", parsed.error().message);
    return;
  }
  std::string_view raw_path = request_->target;
  raw_path = raw_path.substr(0, raw_path.find('?'));
  auto match = server_->router.Find(request_->method, raw_path);
  if (!match) {
    Reject(400, "invalid_argument", match.error().message);
    return;
  }
  if (match->outcome == Router::Outcome::kNotFound) {
    Reject(404, "not_found", fmt::format("no route for {} {}", request_->method, request_->path));
    return;
  }
  if (match->outcome == Router::Outcome::kMethodNotAllowed) {
    Reject(405, "method_not_allowed",
           fmt::format("{} is not allowed on {} (allowed: {})", request_->method, request_->path,
                       match->allow),
           {{"Allow", match->allow}});
    return;
  }
  route_ = match->route;
  request_->params = std::move(match->params);

  size_t max_body = route_->options.max_body_bytes;
  if (auto length = parser_->content_length(); length && *length > max_body) {
    Reject(413, "invalid_argument",
           fmt::format("request body of {} bytes exceeds the limit of {}", *length, max_body));
    return;
  }
  parser_->body_limit(max_body);
  if (parser_->is_done()) {
    Dispatch();
    return;
  }
  if (EqualsIgnoreCase(ToStd(message[bhttp::field::expect]), "100-continue")) {
    // curl waits for this before sending a body.
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    ArmWriteTimer();
    asio::async_write(socket_, asio::buffer(kContinue.data(), kContinue.size()),
                      [self = shared_from_this()](BoostError write_ec, size_t) {
                        ++self->write_timer_generation_;
                        self->write_timer_.cancel();
                        if (self->closed_) return;
                        if (write_ec) {
                          self->Close();
                          return;
                        }
                        self->ReadBody();
                      });
    return;
  }
  ReadBody();
}

void Session::ReadBody() {
  if (closed_) return;
  ArmReadTimer(server_->options.header_timeout);
  bhttp::async_read_some(socket_, buffer_, *parser_,
                         [self = shared_from_this()](BoostError ec, size_t) { self->OnBody(ec); });
}

void Session::OnBody(BoostError ec) {
  CancelReadTimer();
  if (closed_) return;
  if (ec == bhttp::error::body_limit) {
    Reject(
        413, "invalid_argument",
        fmt::format("request body exceeds the limit of {} bytes", route_->options.max_body_bytes));
    return;
  }
  if (ec && IsBeastHttpError(ec) && ec != bhttp::error::end_of_stream &&
      ec != bhttp::error::partial_message) {
    Reject(400, "invalid_argument", fmt::format("malformed request body: {}", ec.message()));
    return;
  }
  if (ec) {
    Close();
    return;
  }
  if (!parser_->is_done()) {
    ReadBody();
    return;
  }
  Dispatch();
}

void Session::Reject(int status, std::string_view code, std::string_view message,
                     std::vector<std::pair<std::string, std::string>> headers) {
  auto responder = responder_.lock();
  if (!responder) {
    responder = std::make_shared<ResponderImpl>(shared_from_this(), exchange_id_, request_, false,
                                                false, false);
    responder_ = responder;
  }
  pending_responder_.reset();
  Response response = JsonError(status, code, message, request_->request_id);
  response.headers = std::move(headers);
  responder->SendAndClose(std::move(response));
}

void Session::Dispatch() {
  request_->body = std::move(parser_->get().body());
  parser_.reset();
  std::shared_ptr<ResponderImpl> responder = std::move(pending_responder_);
  const RouteEntry* route = route_;
  auto run = [route, request = request_, responder = std::move(responder)]() mutable {
    std::string request_id = responder->request_id();
    try {
      route->handler(*request, responder);
    } catch (const std::exception& e) {
      LogJson("error", "handler threw", {{"request_id", request_id}, {"error", e.what()}});
      responder->Send(JsonError(500, "internal", "internal error", request_id));
    } catch (...) {
      LogJson("error", "handler threw", {{"request_id", request_id}});
      responder->Send(JsonError(500, "internal", "internal error", request_id));
    }
    // Dropping the last reference here answers 500 if the handler never did (~ResponderImpl).
    responder.reset();
  };
  if (route->options.blocking) {
    asio::post(server_->pool, std::move(run));
  } else {
    run();
  }
  StartWatch();
}

void Session::StartWatch() {
  if (watching_ || closed_ || !exchange_active_ || buffer_.size() >= kWatchLimit) return;
  watching_ = true;
  socket_.async_read_some(
      buffer_.prepare(4096),
      [self = shared_from_this()](BoostError ec, size_t n) { self->OnWatch(ec, n); });
}

void Session::OnWatch(BoostError ec, size_t n) {
  watching_ = false;
  if (closed_) return;
  buffer_.commit(n);
  if (exchange_active_) {
    if (ec) {
      Close();  // the client went away while its request was being handled
      return;
    }
    StartWatch();  // pipelined bytes: keep them for the next request
    return;
  }
  Next next = std::exchange(after_watch_, Next::kNone);
  if (next == Next::kRead) {
    ReadNext();
  } else if (next == Next::kDrain) {
    Drain();
  }
}

void Session::Deliver(uint64_t exchange, Output output) {
  if (closed_ || !exchange_active_ || exchange != exchange_id_ || ending_) return;
  if (output.status != 0) {
    status_ = output.status;
    keep_alive_ = keep_alive_ && output.keep_alive;
  }
  if (!output.bytes.empty()) queue_.push_back(std::move(output.bytes));
  if (output.last) {
    ending_ = true;
    abort_ = output.abort;
  }
  MaybeWrite();
}

void Session::MaybeWrite() {
  if (writing_ || closed_) return;
  if (queue_.empty()) {
    if (ending_ && exchange_active_) EndExchange();
    return;
  }
  writing_ = true;
  batch_.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  std::vector<asio::const_buffer> buffers;
  buffers.reserve(batch_.size());
  for (const std::string& piece : batch_) buffers.push_back(asio::buffer(piece));
  ArmWriteTimer();
  size_t last_progress = 0;
  asio::async_write(
      socket_, buffers,
      [self = shared_from_this(), last_progress](const BoostError& ec,
                                                 size_t transferred) mutable -> size_t {
        if (ec) return 0;
        if (transferred != last_progress) {  // progress: the client is reading
          last_progress = transferred;
          self->ArmWriteTimer();
        }
        return 1 << 20;
      },
      [self = shared_from_this()](BoostError ec, size_t n) { self->OnWrite(ec, n); });
}

void Session::OnWrite(BoostError ec, size_t n) {
  writing_ = false;
  ++write_timer_generation_;
  write_timer_.cancel();
  batch_.clear();
  if (closed_) return;
  if (auto responder = responder_.lock()) responder->Written(n);
  if (ec) {
    Close();
    return;
  }
  MaybeWrite();
}

void Session::CallHook(int status) {
  if (!server_->hook || !request_) return;
  auto elapsed = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started_at_);
  try {
    server_->hook(*request_, status, elapsed);
  } catch (...) {  // a logging hook must not take the connection down
  }
}

void Session::EndExchange() {
  if (abort_) {
    Close();
    return;
  }
  exchange_active_ = false;
  CallHook(status_);
  if (auto responder = responder_.lock()) responder->Detach();
  responder_.reset();
  request_.reset();
  Next next = keep_alive_ && !server_->stopping ? Next::kRead : Next::kDrain;
  if (watching_) {
    after_watch_ = next;  // OnWatch continues once the cancelled read returns
    BoostError ignored;
    socket_.cancel(ignored);
    return;
  }
  if (next == Next::kRead) {
    ReadNext();
  } else {
    Drain();
  }
}

void Session::Drain() {
  // Half-close and swallow what the client still sends, so it reads our answer instead of
  // a reset; then close.
  BoostError ignored;
  socket_.shutdown(Proto::socket::shutdown_send, ignored);
  drained_ = 0;
  ArmReadTimer(kDrainTime);
  DrainSome();
}

void Session::DrainSome() {
  if (closed_) return;
  // Bytes already buffered count as drained.
  buffer_.consume(buffer_.size());
  socket_.async_read_some(asio::buffer(drain_buffer_),
                          [self = shared_from_this()](BoostError ec, size_t n) {
                            if (self->closed_) return;
                            self->drained_ += n;
                            if (ec || self->drained_ > kDrainLimit) {
                              self->Close();
                              return;
                            }
                            self->DrainSome();
                          });
}

void Session::Close() {
  if (closed_) return;
  closed_ = true;
  CancelReadTimer();
  ++write_timer_generation_;
  write_timer_.cancel();
  BoostError ignored;
  socket_.shutdown(Proto::socket::shutdown_both, ignored);
  socket_.close(ignored);
  if (exchange_active_) {
    exchange_active_ = false;
    CallHook(status_ != 0 ? status_ : 499);  // 499: the client left before an answer
    if (auto responder = responder_.lock()) responder->MarkClosed();
  }
  pending_responder_.reset();  // after MarkClosed: a closed responder does not answer 500
  responder_.reset();
  request_.reset();
  queue_.clear();
  server_->Unregister(this);
}

// ---- ServerCore ----

size_t ServerCore::SessionCount() {
  std::lock_guard lock(sessions_mu);
  return sessions.size();
}

bool ServerCore::Register(const std::shared_ptr<Session>& session) {
  std::lock_guard lock(sessions_mu);
  if (stopping) return false;
  sessions.emplace(session.get(), session);
  return true;
}

void ServerCore::Unregister(Session* session) {
  std::lock_guard lock(sessions_mu);
  sessions.erase(session);
  if (sessions.empty()) sessions_cv.notify_all();
}

void ServerCore::Accept(Listener* listener) {
  listener->acceptor.async_accept(
      asio::make_strand(io), [this, listener](BoostError ec, Socket socket) {
        if (stopping) return;
        if (ec) {
          if (ec == asio::error::operation_aborted) return;
          // Out of descriptors and the like: back off rather than spin.
          LogJson("warn", "accept failed", {{"error", ec.message()}});
          listener->retry.expires_after(std::chrono::milliseconds(100));
          listener->retry.async_wait([this, listener](BoostError wait_ec) {
            if (!wait_ec && !stopping) Accept(listener);
          });
          return;
        }
        if (SessionCount() >= options.max_connections) {
          // Over the limit: a short answer written at once (it fits the socket buffer of a
          // fresh connection), then close.
          std::string id = NewRequestId();
          std::string bytes = SerializeSimple(
              503, JsonError(503, "resource_exhausted", "too many connections", id), id);
          BoostError ignored;
          asio::write(socket, asio::buffer(bytes), ignored);
          socket.shutdown(Proto::socket::shutdown_both, ignored);
          socket.close(ignored);
        } else {
          auto session = std::make_shared<Session>(this, std::move(socket), listener->is_unix);
          if (Register(session)) session->Start();
        }
        Accept(listener);
      });
}

void ServerCore::Stop() {
  std::lock_guard stop_lock(stop_mu);
  if (stopped) return;
  stopped = true;
  stopping = true;
  bool running = started.load();
  for (auto& listener : listeners) {
    if (running) {
      asio::post(listener->acceptor.get_executor(), [l = listener.get()] {
        BoostError ignored;
        l->acceptor.close(ignored);
        l->retry.cancel();
      });
    }
  }
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(sessions_mu);
    for (auto& [ptr, weak] : sessions) {
      if (auto session = weak.lock()) live.push_back(std::move(session));
    }
  }
  if (running) {
    for (auto& session : live) session->CloseFromAnyThread();
    std::unique_lock lock(sessions_mu);
    sessions_cv.wait_for(lock, std::chrono::seconds(2), [&] { return sessions.empty(); });
  }
  live.clear();
  pool.join();  // blocking handlers see closed() and return
  work.reset();
  io.stop();
  for (auto& thread : io_threads) {
    if (thread.joinable()) thread.join();
  }
  // No io thread runs now: close whatever is left directly.
  {
    std::unique_lock lock(sessions_mu);
    for (auto& [ptr, weak] : sessions) {
      if (auto session = weak.lock()) live.push_back(std::move(session));
    }
  }
  for (auto& session : live) session->Close();
  for (auto& listener : listeners) {
    BoostError ignored;
    listener->acceptor.close(ignored);
    if (listener->is_unix) ::unlink(listener->path.c_str());
  }
}

}  // namespace detail

// ---- public API ----

std::string Request::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (EqualsIgnoreCase(key, name)) return value;
  }
  return "";
}

Response JsonError(int status, std::string_view code, std::string_view message,
                   std::string_view request_id) {
  nlohmann::json body = {{"error",
                          {{"code", std::string(code)},
                           {"message", std::string(message)},
                           {"request_id", std::string(request_id)}}}};
  Response response;
  response.status = status;
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return response;
}

Response ErrorResponse(const Error& error, std::string_view request_id) {
  int status = 500;
  std::string_view code = "internal";
  switch (error.code) {
    case ErrorCode::kNotFound:
      status = 404, code = "not_found";
      break;
    case ErrorCode::kInvalidArgument:
      status = 400, code = "invalid_argument";
      break;
    case ErrorCode::kPermissionDenied:
      status = 403, code = "permission_denied";
      break;
    case ErrorCode::kAlreadyExists:
      status = 409, code = "already_exists";
      break;
    case ErrorCode::kFailedPrecondition:
      status = 409, code = "failed_precondition";
      break;
    case ErrorCode::kResourceExhausted:
      status = 429, code = "resource_exhausted";
      break;
    case ErrorCode::kTimeout:
      status = 504, code = "timeout";
      break;
    default:
      break;
  }
  return JsonError(status, code, error.message, request_id);
}

bool IsSaneRequestId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (unsigned char c : id) {
    if (!std::isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

std::string NewRequestId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

Server::Server(ServerOptions options) : impl_(std::make_unique<detail::ServerCore>(options)) {}

Server::~Server() { Stop(); }

void Server::Route(std::string method, std::string pattern, Handler handler, RouteOptions options) {
  std::string shown = method + " " + pattern;
  if (auto added =
          impl_->router.Add(std::move(method), std::move(pattern), std::move(handler), options);
      !added) {
    LogJson("error", "route not added", {{"route", shown}, {"error", added.error().message}});
  }
}

void Server::OnRequestDone(
    std::function<void(const Request&, int status, std::chrono::microseconds)> hook) {
  impl_->hook = std::move(hook);
}

namespace {

Error SocketError(std::string_view what, const BoostError& ec) {
  if (ec.category() == boost::system::system_category()) return ErrnoError(what, ec.value());
  return Error{ErrorCode::kIo, fmt::format("{}: {}", what, ec.message())};
}

}  // namespace

Status Server::ListenTcp(const std::string& host, uint16_t port) {
  if (impl_->stopping) return Fail(ErrorCode::kFailedPrecondition, "server is stopped");
  std::string where = fmt::format("{}:{}", host, port);
  BoostError ec;
  asio::ip::tcp::resolver resolver(impl_->io);
  auto results = resolver.resolve(
      host, std::to_string(port),
      asio::ip::tcp::resolver::passive | asio::ip::tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Fail(ErrorCode::kInvalidArgument,
                fmt::format("listen on {}: cannot resolve host: {}", where, ec.message()));
  }
  asio::ip::tcp::endpoint endpoint = results.begin()->endpoint();
  auto listener = std::make_unique<detail::Listener>(asio::make_strand(impl_->io));
  Proto::endpoint generic(endpoint);
  listener->acceptor.open(generic.protocol(), ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", where), ec));
  listener->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  listener->acceptor.bind(generic, ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", where), ec));
  listener->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", where), ec));
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listener->acceptor.native_handle(), reinterpret_cast<sockaddr*>(&bound), &len) ==
      0) {
    if (bound.ss_family == AF_INET) {
      impl_->tcp_port = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    } else if (bound.ss_family == AF_INET6) {
      impl_->tcp_port = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
    }
  }
  impl_->Accept(listener.get());
  impl_->listeners.push_back(std::move(listener));
  return Ok();
}

Status Server::ListenUnix(const std::string& path) {
  if (impl_->stopping) return Fail(ErrorCode::kFailedPrecondition, "server is stopped");
  if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Fail(ErrorCode::kInvalidArgument,
                fmt::format("unix socket path '{}' is empty or longer than {} bytes", path,
                            sizeof(sockaddr_un{}.sun_path) - 1));
  }
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Fail(ErrorCode::kAlreadyExists,
                  fmt::format("listen on {}: exists and is not a socket", path));
    }
    // A socket file nobody answers on is stale; one somebody answers on is in use.
    asio::io_context probe_io;
    asio::local::stream_protocol::socket probe(probe_io);
    BoostError probe_ec;
    probe.connect(asio::local::stream_protocol::endpoint(path), probe_ec);
    if (!probe_ec) {
      return Fail(ErrorCode::kAlreadyExists,
                  fmt::format("listen on {}: another server is listening there", path));
    }
    ::unlink(path.c_str());
  }
  BoostError ec;
  auto listener = std::make_unique<detail::Listener>(asio::make_strand(impl_->io));
  listener->is_unix = true;
  listener->path = path;
  Proto::endpoint generic{asio::local::stream_protocol::endpoint(path)};
  listener->acceptor.open(generic.protocol(), ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", path), ec));
  listener->acceptor.bind(generic, ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", path), ec));
  if (::chmod(path.c_str(), 0660) != 0) return FailErrno(fmt::format("chmod 0660 {}", path));
  listener->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Fail(SocketError(fmt::format("listen on {}", path), ec));
  impl_->Accept(listener.get());
  impl_->listeners.push_back(std::move(listener));
  return Ok();
}

uint16_t Server::tcp_port() const { return impl_->tcp_port; }

void Server::Start() {
  if (impl_->stopping || impl_->started.exchange(true)) return;
  int threads = std::max(1, impl_->options.io_threads);
  for (int i = 0; i < threads; ++i) {
    impl_->io_threads.emplace_back([core = impl_.get()] {
      while (true) {
        try {
          core->io.run();
          return;
        } catch (const std::exception& e) {  // never let one bad callback end an io thread
          LogJson("error", "io thread caught an exception", {{"error", e.what()}});
        }
      }
    });
  }
}

void Server::Stop() { impl_->Stop(); }

void Server::Post(std::function<void()> fn) {
  if (!fn) return;
  asio::post(impl_->pool, [fn = std::move(fn)] {
    try {
      fn();
    } catch (const std::exception& e) {
      LogJson("error", "posted task threw", {{"error", e.what()}});
    } catch (...) {
      LogJson("error", "posted task threw");
    }
  });
}

}  // namespace tartarus::http

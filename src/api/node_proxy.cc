// Olympus: async forwarding to node agents (see node_proxy.h).
#include "api/node_proxy.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <thread>

namespace tartarus::api {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using Socket = asio::generic::stream_protocol::socket;

namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(5);
constexpr auto kHeaderTimeout = std::chrono::seconds(60);
// Past this much unsent output the client is slow: stop reading from the node for a moment.
constexpr size_t kMaxPendingBytes = 4 << 20;

// One forward: connect, send, read the header, then pump body bytes to the responder.
struct ForwardOp : std::enable_shared_from_this<ForwardOp> {
  ForwardOp(asio::io_context& io, std::shared_ptr<http::Responder> r)
      : socket(io), timer(io), resolver(io), responder(std::move(r)) {}

  Socket socket;
  asio::steady_timer timer;
  asio::ip::tcp::resolver resolver;
  std::shared_ptr<http::Responder> responder;
  std::function<void(int)> on_done;
  int status = 0;
  bhttp::request<bhttp::string_body> request;
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::buffer_body> parser;
  char chunk[64 << 10];
  bool started = false, done = false;

  void Fail(const std::string& why) {
    if (done) return;
    done = true;
    beast::error_code ignored;
    socket.close(ignored);
    timer.cancel();
    if (!started) {
      responder->Send(http::JsonError(502, "node_unreachable", "the sandbox's node: " + why,
                                      responder->request_id()));
      if (on_done) on_done(0);
      return;
    }
    if (on_done) {
      on_done(-1);
    } else {
      responder->Finish();
    }
  }

  void Succeed() {
    if (done) return;
    done = true;
    beast::error_code ignored;
    socket.close(ignored);
    timer.cancel();
    if (on_done) {
      on_done(status);
    } else {
      responder->Finish();
    }
  }

  void Arm(std::chrono::steady_clock::duration d) {
    timer.expires_after(d);
    timer.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->Fail("timed out");
    });
  }

  void Connect(const std::string& address) {
    // Unlimited: Boost 1.74 compares lengths against an empty optional as "over the limit".
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    Arm(kConnectTimeout);
    std::string path;
    if (address.rfind("unix://", 0) == 0) {
      path = address.substr(7);
    } else if (!address.empty() && address[0] == '/') {
      path = address;
    }
    if (!path.empty()) {
      asio::local::stream_protocol::endpoint ep(path);
      socket.async_connect(
          asio::generic::stream_protocol::endpoint(ep),
          [self = shared_from_this()](beast::error_code ec) { self->OnConnect(ec); });
      return;
    }
    std::string hostport = address.rfind("http://", 0) == 0 ? address.substr(7) : address;
    if (auto slash = hostport.find('/'); slash != std::string::npos) hostport.resize(slash);
    size_t colon = hostport.rfind(':');
    if (colon == std::string::npos) return Fail("bad node address '" + address + "'");
    std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
      host = host.substr(1, host.size() - 2);
    resolver.async_resolve(
        host, port,
        [self = shared_from_this()](beast::error_code ec,
                                    asio::ip::tcp::resolver::results_type results) {
          if (ec || results.empty()) return self->Fail("cannot resolve: " + ec.message());
          asio::ip::tcp::endpoint ep = *results.begin();
          self->socket.async_connect(asio::generic::stream_protocol::endpoint(ep),
                                     [self](beast::error_code ec2) { self->OnConnect(ec2); });
        });
  }

  void OnConnect(beast::error_code ec) {
    if (done) return;
    if (ec) return Fail("cannot connect: " + ec.message());
    Arm(kHeaderTimeout);
    bhttp::async_write(socket, request, [self = shared_from_this()](beast::error_code ec2, size_t) {
      if (ec2) return self->Fail("sending: " + ec2.message());
      bhttp::async_read_header(self->socket, self->buffer, self->parser,
                               [self](beast::error_code ec3, size_t) { self->OnHeader(ec3); });
    });
  }

  void OnHeader(beast::error_code ec) {
    if (done) return;
    if (ec) return Fail("reading the answer: " + ec.message());
    timer.cancel();
    const auto& res = parser.get();
    std::string content_type(res[bhttp::field::content_type]);
    if (content_type.empty()) content_type = "application/octet-stream";
    started = true;
    status = static_cast<int>(res.result_int());
    responder->StartStream(status, content_type);
    std::weak_ptr<ForwardOp> weak = shared_from_this();
    responder->OnClose([weak] {
      if (auto self = weak.lock()) {
        asio::post(self->socket.get_executor(), [self] {
          self->done = true;
          beast::error_code ignored;
          self->socket.close(ignored);
          self->timer.cancel();
        });
      }
    });
    ReadBody();
  }

  void ReadBody() {
    if (done) return;
    if (parser.is_done()) return Succeed();
    if (responder->closed()) {
      done = true;
      return;
    }
    if (responder->pending_bytes() > kMaxPendingBytes) {
      timer.expires_after(std::chrono::milliseconds(10));
      timer.async_wait([self = shared_from_this()](beast::error_code) { self->ReadBody(); });
      return;
    }
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    bhttp::async_read_some(socket, buffer, parser,
                           [self = shared_from_this()](beast::error_code ec, size_t) {
                             if (self->done) return;
                             size_t got = sizeof(self->chunk) - self->parser.get().body().size;
                             if (got > 0) self->responder->Write(std::string(self->chunk, got));
                             if (ec == bhttp::error::need_buffer) ec = {};
                             if (ec) return self->Fail("reading the stream: " + ec.message());
                             self->ReadBody();
                           });
  }
};

}  // namespace

struct NodeProxy::Impl {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
};

NodeProxy::NodeProxy() : impl_(std::make_shared<Impl>()) {
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

NodeProxy::~NodeProxy() {
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

void NodeProxy::Forward(const std::string& address, const std::string& method,
                        const std::string& target, std::string body,
                        std::shared_ptr<http::Responder> responder,
                        std::function<void(int status)> on_done) {
  auto fwd = std::make_shared<ForwardOp>(impl_->io, std::move(responder));
  fwd->on_done = std::move(on_done);
  fwd->request.method_string(method);
  fwd->request.target(target);
  fwd->request.version(11);
  fwd->request.set(bhttp::field::host, "node");
  fwd->request.set(bhttp::field::connection, "close");
  fwd->request.set("X-Request-Id", fwd->responder->request_id());
  if (!body.empty()) {
    fwd->request.set(bhttp::field::content_type, "application/octet-stream");
  }
  fwd->request.body() = std::move(body);
  fwd->request.prepare_payload();
  asio::post(impl_->io, [fwd, address] { fwd->Connect(address); });
}

void NodeProxy::After(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto timer = std::make_shared<asio::steady_timer>(impl_->io, delay);
  timer->async_wait([timer, fn = std::move(fn)](beast::error_code ec) {
    if (!ec) fn();
  });
}

}  // namespace tartarus::api

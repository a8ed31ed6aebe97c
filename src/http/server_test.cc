// Tests for the HTTP server and client: round trips over TCP and Unix sockets, routing,
// JSON errors, request ids, keep-alive, streaming, disconnects and thread economy.
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http/client.h"
#include "http/fake_responder.h"
#include "http/raw_connection_test_util.h"
#include "http/server.h"

namespace tartarus::http {
namespace {

using std::chrono::milliseconds;
using test_util::RawConnection;
using ::testing::HasSubstr;

int ProcessThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

ServerOptions SmallOptions() {
  ServerOptions options;
  options.io_threads = 2;
  options.worker_threads = 2;
  return options;
}

std::string Endpoint(const Server& server) {
  return "http://127.0.0.1:" + std::to_string(server.tcp_port());
}

Client MakeClient(const std::string& endpoint, ClientOptions options = {}) {
  auto client = Client::Create(endpoint, options);
  EXPECT_TRUE(client) << client.error().message;
  return std::move(*client);
}

nlohmann::json Json(const std::string& body) {
  return nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
}

// A waitable flag for callbacks that run on server threads.
class Signal {
 public:
  void Notify() {
    std::lock_guard lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool Wait(milliseconds timeout = milliseconds(5000)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

void Echo(Request& request, std::shared_ptr<Responder> responder) {
  nlohmann::json body = {
      {"method", request.method},        {"path", request.path}, {"params", request.params},
      {"query", request.query},          {"body", request.body}, {"peer", request.peer},
      {"request_id", request.request_id}};
  responder->Send(Response{.body = body.dump()});
}

class ServerTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = SmallOptions()) {
    server_ = std::make_unique<Server>(options);
    server_->Route("GET", "/v1/echo", Echo);
    server_->Route("POST", "/v1/sandboxes/{id}/exec", Echo, {.blocking = true});
    server_->Route("GET", "/v1/sandboxes/{id}", Echo);
    server_->Route("GET", "/v1/sandboxes/stats", [](Request&, std::shared_ptr<Responder> r) {
      r->Send(Response{.body = R"({"stats":true})"});
    });
    server_->Route("POST", "/v1/small", Echo, {.max_body_bytes = 1000});
    server_->Route("GET", "/v1/throws",
                   [](Request&, std::shared_ptr<Responder>) { throw std::runtime_error("boom"); });
    server_->Route("GET", "/v1/drops", [](Request&, std::shared_ptr<Responder>) {});
    ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
    ASSERT_NE(server_->tcp_port(), 0);
    server_->Start();
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, RoundTripOverTcp) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Do("GET", "/v1/echo?x=1&y=a%20b");
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->Header("content-type"), "application/json");
  auto body = Json(response->body);
  EXPECT_EQ(body["path"], "/v1/echo");
  EXPECT_EQ(body["query"]["y"], "a b");
  EXPECT_THAT(body["peer"].get<std::string>(), HasSubstr("127.0.0.1:"));
  EXPECT_TRUE(IsSaneRequestId(response->Header("X-Request-Id")));
  EXPECT_EQ(body["request_id"], response->Header("X-Request-Id"));
}

TEST_F(ServerTest, RoundTripOverUnixSocket) {
  auto dir = std::filesystem::temp_directory_path() / ("http-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "api.sock").string();
  {
    std::ofstream stale(path);  // a regular file is not removed
  }
  Server server(SmallOptions());
  server.Route("POST", "/v1/sandboxes/{id}/exec", Echo);
  auto listened = server.ListenUnix(path);
  ASSERT_FALSE(listened);
  EXPECT_EQ(listened.error().code, ErrorCode::kAlreadyExists);
  std::filesystem::remove(path);
  ASSERT_TRUE(server.ListenUnix(path));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  server.Start();

  for (std::string endpoint : {"unix://" + path, path}) {
    Client client = MakeClient(endpoint);
    auto response = client.Do("POST", "/v1/sandboxes/sb-1/exec", R"({"cmd":["ls"]})");
    ASSERT_TRUE(response) << response.error().message;
    EXPECT_EQ(response->status, 200);
    auto body = Json(response->body);
    EXPECT_EQ(body["params"]["id"], "sb-1");
    EXPECT_EQ(body["body"], R"({"cmd":["ls"]})");
    EXPECT_THAT(body["peer"].get<std::string>(), HasSubstr("unix:uid="));
  }
  server.Stop();
  EXPECT_FALSE(std::filesystem::exists(path)) << "Stop removes the socket file";

  // A stale socket file (nobody listening, e.g. after a crash) is replaced.
  Server again(SmallOptions());
  ASSERT_EQ(::mknod(path.c_str(), S_IFSOCK | 0600, 0), 0);
  EXPECT_TRUE(again.ListenUnix(path));
  again.Stop();
  std::filesystem::remove_all(dir);
}

TEST_F(ServerTest, RoutesWithParamsAndLiterals) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Do("GET", "/v1/sandboxes/" + UrlEncode("a/b c"));
  ASSERT_TRUE(response);
  EXPECT_EQ(Json(response->body)["params"]["id"], "a/b c");
  response = client.Do("GET", "/v1/sandboxes/stats");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->body, R"({"stats":true})");
}

TEST_F(ServerTest, NotFoundAndMethodNotAllowedAreJsonErrors) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Do("GET", "/v1/nothing", "", {{"X-Request-Id", "abc-123"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 404);
  auto body = Json(response->body);
  EXPECT_EQ(body["error"]["code"], "not_found");
  EXPECT_EQ(body["error"]["request_id"], "abc-123");
  EXPECT_THAT(body["error"]["message"].get<std::string>(), HasSubstr("/v1/nothing"));

  response = client.Do("DELETE", "/v1/echo");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 405);
  EXPECT_EQ(Json(response->body)["error"]["code"], "method_not_allowed");
  EXPECT_EQ(response->Header("Allow"), "GET, HEAD");
}

TEST_F(ServerTest, OversizedBodyIs413) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Do("POST", "/v1/small", std::string(5000, 'x'));
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, 413);
  EXPECT_EQ(Json(response->body)["error"]["code"], "invalid_argument");
  response = client.Do("POST", "/v1/small", std::string(1000, 'x'));
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, 200) << "the client reconnects after the server closed";

  // Chunked bodies have no Content-Length: the limit applies while reading.
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  std::string chunk(800, 'y');
  ASSERT_TRUE(
      raw.Send("POST /v1/small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               "320\r\n" +
               chunk + "\r\n320\r\n" + chunk + "\r\n0\r\n\r\n"));
  std::string raw_response = raw.ReadResponse();
  EXPECT_THAT(raw_response, HasSubstr("HTTP/1.1 413"));
  EXPECT_THAT(raw_response, HasSubstr("Connection: close"));
}

TEST_F(ServerTest, MalformedRequestsAre400AndClose) {
  StartServer();
  for (std::string bad :
       {std::string("GARBAGE\r\n\r\n"), std::string("GET /v1/echo HTTX/1.1\r\n\r\n"),
        std::string("GET /v1/echo HTTP/1.1\r\nBad Header\r\n\r\n"),
        std::string("GET /v1/%zz HTTP/1.1\r\nHost: x\r\n\r\n"),
        std::string("GET * HTTP/1.1\r\nHost: x\r\n\r\n")}) {
    RawConnection raw = RawConnection::Tcp(server_->tcp_port());
    ASSERT_TRUE(raw.Send(bad));
    std::string response = raw.ReadResponse();
    EXPECT_THAT(response, HasSubstr("HTTP/1.1 400")) << bad;
    EXPECT_THAT(response, HasSubstr("\"code\":\"invalid_argument\"")) << bad;
    EXPECT_THAT(response, HasSubstr("X-Request-Id: ")) << bad;
    EXPECT_TRUE(raw.WaitForClose(milliseconds(3000))) << bad;
  }
}

TEST_F(ServerTest, HugeHeaderIs431) {
  ServerOptions options = SmallOptions();
  options.max_header_bytes = 1024;
  StartServer(options);
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(raw.Send("GET /v1/echo HTTP/1.1\r\nX-Big: " + std::string(4000, 'a') + "\r\n\r\n"));
  EXPECT_THAT(raw.ReadResponse(), HasSubstr("HTTP/1.1 431"));
}

TEST_F(ServerTest, RequestIdIsEchoedWhenSaneAndGeneratedOtherwise) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Do("GET", "/v1/echo", "", {{"X-Request-Id", "req.A_b-9"}});
  ASSERT_TRUE(response);
  EXPECT_EQ(response->Header("X-Request-Id"), "req.A_b-9");
  for (std::string insane : {std::string("has space"), std::string(65, 'a'), std::string("a/b")}) {
    response = client.Do("GET", "/v1/echo", "", {{"X-Request-Id", insane}});
    ASSERT_TRUE(response);
    std::string id = response->Header("X-Request-Id");
    EXPECT_NE(id, insane);
    EXPECT_TRUE(IsSaneRequestId(id)) << id;
  }
}

TEST_F(ServerTest, KeepAliveReusesOneConnection) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  auto first = client.Do("GET", "/v1/echo");
  auto second = client.Do("GET", "/v1/echo");
  ASSERT_TRUE(first && second);
  EXPECT_EQ(Json(first->body)["peer"], Json(second->body)["peer"]) << "same client port";

  // Pipelined requests on one raw connection are answered in order.
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(
      raw.Send("GET /v1/echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /v1/echo?n=2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_THAT(raw.ReadResponse(), HasSubstr(R"("n":"1")"));
  EXPECT_THAT(raw.ReadResponse(), HasSubstr(R"("n":"2")"));
}

TEST_F(ServerTest, ClientReconnectsAfterIdleConnectionDropped) {
  ServerOptions options = SmallOptions();
  options.header_timeout = std::chrono::seconds(1);  // also the idle timeout
  StartServer(options);
  Client client = MakeClient(Endpoint(*server_));
  auto first = client.Do("GET", "/v1/echo");
  ASSERT_TRUE(first);
  std::this_thread::sleep_for(milliseconds(1500));
  auto second = client.Do("GET", "/v1/echo");
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(second->status, 200);
  EXPECT_NE(Json(first->body)["peer"], Json(second->body)["peer"]) << "a new connection";
}

TEST_F(ServerTest, HeaderTimeoutClosesSlowClients) {
  ServerOptions options = SmallOptions();
  options.header_timeout = std::chrono::seconds(1);
  StartServer(options);
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(raw.Send("GET /v1/echo HTTP/1.1\r\nHost:"));
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(raw.WaitForClose(milliseconds(4000)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(800));
}

TEST_F(ServerTest, HandlerFailuresBecome500) {
  StartServer();
  Client client = MakeClient(Endpoint(*server_));
  for (std::string path : {"/v1/throws", "/v1/drops"}) {
    auto response = client.Do("GET", path);
    ASSERT_TRUE(response) << path;
    EXPECT_EQ(response->status, 500) << path;
    EXPECT_EQ(Json(response->body)["error"]["code"], "internal") << path;
  }
}

TEST_F(ServerTest, HeadAndExpectContinue) {
  StartServer();
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(raw.Send("HEAD /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(raw.ReadUntil("\r\n\r\n"));
  EXPECT_THAT(raw.pending(), HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(raw.pending(), HasSubstr("Content-Length: "));
  EXPECT_TRUE(raw.pending().ends_with("\r\n\r\n")) << "no body after HEAD";
  raw.pending().clear();

  ASSERT_TRUE(
      raw.Send("POST /v1/small HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
               "Expect: 100-continue\r\n\r\n"));
  ASSERT_TRUE(raw.ReadUntil("100 Continue\r\n\r\n"));
  raw.pending().clear();
  ASSERT_TRUE(raw.Send("hello"));
  EXPECT_THAT(raw.ReadResponse(), HasSubstr(R"("body":"hello")"));
}

TEST_F(ServerTest, OnRequestDoneSeesStatusAndDuration) {
  std::mutex mu;
  std::vector<std::pair<std::string, int>> seen;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/echo", Echo);
  server_->OnRequestDone([&](const Request& request, int status, std::chrono::microseconds took) {
    std::lock_guard lock(mu);
    seen.emplace_back(request.path, status);
    EXPECT_GE(took.count(), 0);
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  Client client = MakeClient(Endpoint(*server_));
  ASSERT_TRUE(client.Do("GET", "/v1/echo"));
  ASSERT_TRUE(client.Do("GET", "/v1/missing"));
  // The hook runs once the last byte is written, which may be just after the client read it.
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard lock(mu);
      if (seen.size() >= 2) break;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  std::lock_guard lock(mu);
  EXPECT_THAT(seen, ::testing::ElementsAre(std::pair<std::string, int>("/v1/echo", 200),
                                           std::pair<std::string, int>("/v1/missing", 404)));
}

TEST_F(ServerTest, StreamArrivesIncrementally) {
  Signal first_seen;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/logs", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->StartStream(200, "text/plain");
    responder->Write("first\n");
    // Produce the rest from another thread, only after the client saw the first chunk.
    std::thread([&, responder] {
      first_seen.Wait();
      responder->Write("second\n");
      responder->Finish();
    }).detach();
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();

  Client client = MakeClient(Endpoint(*server_));
  std::string received;
  auto response = client.Stream("GET", "/v1/logs", "", [&](std::string_view chunk) {
    received += chunk;
    if (received == "first\n") first_seen.Notify();
    return true;
  });
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(received, "first\nsecond\n");
  EXPECT_EQ(response->Header("Transfer-Encoding"), "chunked");
  // The connection is reusable after a finished stream; error bodies skip on_chunk.
  auto again = client.Stream("GET", "/v1/nope", "", [](std::string_view) {
    ADD_FAILURE() << "on_chunk must not see an error body";
    return true;
  });
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 404);
  EXPECT_EQ(Json(again->body)["error"]["code"], "not_found");
}

TEST_F(ServerTest, ClientLeavingMidStreamTriggersOnClose) {
  Signal closed;
  std::shared_ptr<Responder> kept;
  std::mutex mu;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/follow", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    responder->StartStream(200, "text/plain");
    responder->Write("line\n");
    std::lock_guard lock(mu);
    kept = responder;  // never finished: only the client's departure ends it
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  Client client = MakeClient(Endpoint(*server_));
  auto response = client.Stream("GET", "/v1/follow", "", [](std::string_view) { return false; });
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_TRUE(closed.Wait());
  std::lock_guard lock(mu);
  ASSERT_TRUE(kept);
  EXPECT_TRUE(kept->closed());
  kept->Write("ignored after close");
  kept->Finish();
}

TEST_F(ServerTest, UnansweredRequestIsReleasedWhenClientLeaves) {
  Signal closed;
  std::shared_ptr<Responder> kept;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/never", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    kept = responder;
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  {
    RawConnection raw = RawConnection::Tcp(server_->tcp_port());
    ASSERT_TRUE(raw.Send("GET /v1/never HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_TRUE(closed.Wait());
  EXPECT_TRUE(kept->closed());
  bool ran_at_once = false;
  kept->OnClose([&] { ran_at_once = true; });
  EXPECT_TRUE(ran_at_once) << "OnClose after close runs at once";
}

TEST_F(ServerTest, ClientRequestTimeout) {
  std::vector<std::shared_ptr<Responder>> parked;
  std::mutex mu;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/never", [&](Request&, std::shared_ptr<Responder> responder) {
    std::lock_guard lock(mu);
    parked.push_back(responder);
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  Client client = MakeClient(Endpoint(*server_), {.request_timeout = milliseconds(300)});
  auto start = std::chrono::steady_clock::now();
  auto response = client.Do("GET", "/v1/never");
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(3000));
}

TEST_F(ServerTest, ClientCancelInterruptsAStream) {
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  std::shared_ptr<Responder> kept;
  server_->Route("GET", "/v1/follow", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->StartStream(200, "text/plain");
    responder->Write("x");
    kept = responder;
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  Client client = MakeClient(Endpoint(*server_));
  Signal got_chunk;
  std::thread canceller([&] {
    got_chunk.Wait();
    client.Cancel();
  });
  auto response = client.Stream("GET", "/v1/follow", "", [&](std::string_view) {
    got_chunk.Notify();
    return true;
  });
  canceller.join();
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::kCancelled);
  EXPECT_EQ(client.Do("GET", "/v1/follow").error().code, ErrorCode::kCancelled) << "sticky";
}

TEST_F(ServerTest, ManyConcurrentStreamsUseFewThreads) {
  constexpr int kStreams = 200;
  int threads_before = ProcessThreadCount();
  std::mutex mu;
  std::vector<std::shared_ptr<Responder>> streams;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/follow", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->StartStream(200, "text/plain");
    responder->Write("hello\n");
    std::lock_guard lock(mu);
    streams.push_back(responder);
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();

  std::vector<RawConnection> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.push_back(RawConnection::Tcp(server_->tcp_port()));
    ASSERT_TRUE(clients.back().ok());
    ASSERT_TRUE(clients.back().Send("GET /v1/follow HTTP/1.1\r\nHost: x\r\n\r\n"));
  }
  for (auto& client : clients) ASSERT_TRUE(client.ReadUntil("hello\n"));
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(streams.size(), static_cast<size_t>(kStreams));
  }
  int threads_during = ProcessThreadCount();
  EXPECT_LE(threads_during - threads_before, 2 + 2 + 2)
      << "io + worker threads only, whatever the number of streams";

  {
    std::lock_guard lock(mu);
    for (auto& stream : streams) {
      stream->Write("bye\n");
      stream->Finish();
    }
  }
  for (auto& client : clients) ASSERT_TRUE(client.ReadUntil("bye\n\r\n0\r\n\r\n"));
}

TEST_F(ServerTest, ConnectionLimitAnswers503) {
  ServerOptions options = SmallOptions();
  options.max_connections = 2;
  StartServer(options);
  RawConnection a = RawConnection::Tcp(server_->tcp_port());
  RawConnection b = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(a.Send("GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(b.Send("GET /v1/echo HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_THAT(a.ReadResponse(), HasSubstr("200 OK"));
  ASSERT_THAT(b.ReadResponse(), HasSubstr("200 OK"));
  RawConnection c = RawConnection::Tcp(server_->tcp_port());
  std::string response = c.ReadResponse();
  EXPECT_THAT(response, HasSubstr("HTTP/1.1 503"));
  EXPECT_THAT(response, HasSubstr("resource_exhausted"));
}

TEST_F(ServerTest, StopClosesOpenStreams) {
  Signal closed;
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/follow", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->OnClose([&] { closed.Notify(); });
    responder->StartStream(200, "text/plain");
    responder->Write("x\n");
    // A blocking producer that stops when the connection does.
    std::thread([responder] {
      while (!responder->closed()) std::this_thread::sleep_for(milliseconds(10));
    }).detach();
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  RawConnection raw = RawConnection::Tcp(server_->tcp_port());
  ASSERT_TRUE(raw.Send("GET /v1/follow HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(raw.ReadUntil("x\n"));
  auto start = std::chrono::steady_clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(3000));
  EXPECT_TRUE(closed.Wait(milliseconds(100)));
  EXPECT_TRUE(raw.WaitForClose(milliseconds(1000)));
}

TEST_F(ServerTest, BackpressureIsVisible) {
  Signal done;
  std::atomic<size_t> peak{0};
  auto server_ = std::make_unique<Server>(SmallOptions());  // destroyed before the locals
  server_->Route("GET", "/v1/flood", [&](Request&, std::shared_ptr<Responder> responder) {
    responder->StartStream(200, "application/octet-stream");
    std::thread([&, responder] {
      // A producer that waits while too much is queued.
      for (int i = 0; i < 200 && !responder->closed(); ++i) {
        while (responder->pending_bytes() > (1 << 20) && !responder->closed()) {
          std::this_thread::sleep_for(milliseconds(1));
        }
        peak = std::max(peak.load(), responder->pending_bytes());
        responder->Write(std::string(64 << 10, 'z'));
      }
      responder->Finish();
      done.Notify();
    }).detach();
  });
  ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
  server_->Start();
  Client client = MakeClient(Endpoint(*server_));
  size_t total = 0;
  auto response = client.Stream("GET", "/v1/flood", "", [&](std::string_view chunk) {
    total += chunk.size();
    return true;
  });
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(total, 200u * (64 << 10));
  EXPECT_TRUE(done.Wait());
  EXPECT_LE(peak.load(), (1u << 20) + (70u << 10));
}

TEST(ClientTest, UnreachableEndpointIsFailedPrecondition) {
  Client client = MakeClient("http://127.0.0.1:1", {.connect_timeout = milliseconds(2000)});
  auto response = client.Do("GET", "/v1/echo");
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(response.error().message, HasSubstr("cannot reach http://127.0.0.1:1: "));

  Client missing = MakeClient("unix:///nonexistent/tartarus.sock");
  response = missing.Do("GET", "/");
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(response.error().message,
              HasSubstr("cannot reach unix:///nonexistent/tartarus.sock"));
}

TEST(ClientTest, ValidatesEndpointsAndRequests) {
  for (std::string bad :
       {"", "ftp://x", "https://x", "http://", "http://host:0", "http://host:99999",
        "http://host:12ab", "http://[::1", "unix://", "http://host/prefix"}) {
    auto client = Client::Create(bad);
    ASSERT_FALSE(client) << bad;
    EXPECT_EQ(client.error().code, ErrorCode::kInvalidArgument) << bad;
  }
  for (std::string good : {"http://localhost", "http://127.0.0.1:8080/", "http://[::1]:80",
                           "unix:///run/tartarus.sock", "/run/tartarus.sock"}) {
    auto client = Client::Create(good);
    ASSERT_TRUE(client) << good;
    EXPECT_EQ(client->endpoint(), good);
  }
  Client client = MakeClient("http://127.0.0.1:1");
  EXPECT_EQ(client.Do("GET", "no-slash").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(client.Do("GET", "/a b").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(client.Do("GE T", "/").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(client.Do("GET", "/", "", {{"X", "a\r\nInjected: 1"}}).error().code,
            ErrorCode::kInvalidArgument);
}

TEST(ClientTest, SendsBearerToken) {
  Server server(SmallOptions());
  server.Route("GET", "/v1/whoami", [](Request& request, std::shared_ptr<Responder> responder) {
    responder->Send(
        Response{.content_type = "text/plain", .body = request.Header("authorization")});
  });
  ASSERT_TRUE(server.ListenTcp("127.0.0.1", 0));
  server.Start();
  Client client = MakeClient(Endpoint(server), {.bearer_token = "tok123"});
  auto response = client.Do("GET", "/v1/whoami");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->body, "Bearer tok123");
  EXPECT_EQ(response->Header("Content-Type"), "text/plain");
}

TEST(FakeResponderTest, RecordsAnswersForHandlerUnitTests) {
  Request request;
  request.params["id"] = "sb-9";
  auto sent = std::make_shared<FakeResponder>();
  Echo(request, sent);
  ASSERT_TRUE(sent->WaitDone());
  EXPECT_EQ(Json(sent->response().body)["params"]["id"], "sb-9");

  auto stream = std::make_shared<FakeResponder>();
  bool gone = false;
  stream->OnClose([&] { gone = true; });
  stream->StartStream(200, "text/plain");
  stream->Write("a");
  stream->Write("b");
  stream->SimulateClientGone();
  stream->Write("c");
  EXPECT_TRUE(gone);
  EXPECT_TRUE(stream->closed());
  EXPECT_FALSE(stream->done());
  EXPECT_EQ(stream->response().body, "ab");
  EXPECT_EQ(stream->chunks().size(), 2u);
}

TEST(ErrorResponseTest, MapsCodes) {
  struct Case {
    ErrorCode code;
    int status;
    std::string name;
  };
  for (const Case& c :
       std::vector<Case>{{ErrorCode::kNotFound, 404, "not_found"},
                         {ErrorCode::kInvalidArgument, 400, "invalid_argument"},
                         {ErrorCode::kPermissionDenied, 403, "permission_denied"},
                         {ErrorCode::kAlreadyExists, 409, "already_exists"},
                         {ErrorCode::kFailedPrecondition, 409, "failed_precondition"},
                         {ErrorCode::kResourceExhausted, 429, "resource_exhausted"},
                         {ErrorCode::kTimeout, 504, "timeout"},
                         {ErrorCode::kIo, 500, "internal"}}) {
    Response response = ErrorResponse(Error{c.code, "what \"happened\""}, "rid");
    EXPECT_EQ(response.status, c.status);
    EXPECT_EQ(response.body, R"({"error":{"code":")" + c.name +
                                 R"(","message":"what \"happened\"","request_id":"rid"}})");
  }
}

}  // namespace
}  // namespace tartarus::http

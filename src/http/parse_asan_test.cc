// The HTTP server's request parsing path under ASan/UBSan: malformed, truncated, oversized
// and random requests over real sockets. Every one must get an answer or a close, never a
// crash, and the server must keep serving afterwards.
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "http/raw_connection_test_util.h"
#include "http/server.h"

namespace tartarus::http {
namespace {

using std::chrono::milliseconds;
using test_util::RawConnection;
using ::testing::HasSubstr;

class ParseAsanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.io_threads = 1;
    options.worker_threads = 1;
    options.max_header_bytes = 2048;
    options.header_timeout = std::chrono::seconds(2);
    server_ = std::make_unique<Server>(options);
    server_->Route("POST", "/v1/things/{id}",
                   [](Request& request, std::shared_ptr<Responder> r) {
                     r->Send(Response{.body = request.params["id"] + ":" +
                                              std::to_string(request.body.size())});
                   },
                   {.max_body_bytes = 4096});
    server_->Route("GET", "/v1/stream", [](Request&, std::shared_ptr<Responder> r) {
      r->StartStream(200, "text/plain", {{"X-Bad\r\nInjected", "1"}, {"X-Ok", "bad\r\nvalue"}});
      r->Write("a");
      r->Finish();
    });
    ASSERT_TRUE(server_->ListenTcp("127.0.0.1", 0));
    server_->Start();
  }
  void TearDown() override { server_->Stop(); }

  std::string Exchange(const std::string& bytes) {
    RawConnection raw = RawConnection::Tcp(server_->tcp_port());
    EXPECT_TRUE(raw.ok());
    raw.Send(bytes);
    raw.WaitForClose(milliseconds(300));
    return raw.pending();
  }

  void ExpectStillServing() {
    std::string response = Exchange(
        "POST /v1/things/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        "Connection: close\r\n\r\nabc");
    EXPECT_THAT(response, HasSubstr("ok:3"));
  }

  std::unique_ptr<Server> server_;
};

TEST_F(ParseAsanTest, MalformedRequestsGetErrors) {
  struct Case {
    std::string bytes;
    std::string status;
  };
  std::vector<Case> cases = {
      {"\r\n\r\n", "400"},
      {"POST /v1/things/1 HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"},
      {"POST /v1/things/1 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"},
      {"POST /v1/things/1 HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "400"},
      {"POST /v1/things/1 HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", "413"},
      {"POST /v1/things/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"},
      {"POST /v1/things/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n", "413"},
      {"GET /v1/things/%00 HTTP/1.1\r\n\r\n", "400"},
      {"GET /v1/things/a?x=%f HTTP/1.1\r\n\r\n", "400"},
      {"GET /" + std::string(4000, 'a') + " HTTP/1.1\r\n\r\n", "431"},
      {"GET / HTTP/1.1\r\n" + std::string(100, 'X') + ": " + std::string(3000, 'v') + "\r\n\r\n",
       "431"},
      {"G\x01T / HTTP/1.1\r\n\r\n", "400"},
      {"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", "400"},
      {"DELETE /v1/things/1 HTTP/1.1\r\n\r\n", "405"},
      {"GET /nope HTTP/1.1\r\n\r\n", "404"},
  };
  cases[12].bytes = std::string("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 30);
  for (const Case& c : cases) {
    std::string response = Exchange(c.bytes);
    EXPECT_THAT(response, HasSubstr("HTTP/1.1 " + c.status)) << c.bytes.substr(0, 80);
    EXPECT_THAT(response, HasSubstr("\"error\":{")) << c.bytes.substr(0, 80);
  }
  ExpectStillServing();
}

TEST_F(ParseAsanTest, ResponseHeadersCannotBeSplit) {
  std::string response = Exchange("GET /v1/stream HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_THAT(response, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(response, ::testing::Not(HasSubstr("Injected")));
  EXPECT_THAT(response, ::testing::Not(HasSubstr("X-Ok")));
  EXPECT_THAT(response, HasSubstr("1\r\na\r\n0\r\n\r\n"));
}

TEST_F(ParseAsanTest, TruncatedRequestsAreDropped) {
  const std::string full =
      "POST /v1/things/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789";
  for (size_t cut = 1; cut < full.size(); cut += 7) {
    RawConnection raw = RawConnection::Tcp(server_->tcp_port());
    ASSERT_TRUE(raw.Send(full.substr(0, cut)));
    raw.Close();
  }
  ExpectStillServing();
}

TEST_F(ParseAsanTest, RandomBytesNeverCrash) {
  std::mt19937 rng(7);
  const std::string seed =
      "POST /v1/things/x%20y?a=b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      "Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  for (int i = 0; i < 300; ++i) {
    std::string bytes = seed;
    int mutations = 1 + static_cast<int>(rng() % 8);
    for (int m = 0; m < mutations; ++m) {
      size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng() % 256);
          break;
        case 1:
          bytes.erase(at, 1 + rng() % 4);
          break;
        default:
          bytes.insert(at, 1 + rng() % 3, static_cast<char>(rng() % 256));
          break;
      }
      if (bytes.empty()) bytes = "x";
    }
    RawConnection raw = RawConnection::Tcp(server_->tcp_port());
    ASSERT_TRUE(raw.ok());
    raw.Send(bytes);
    raw.WaitForClose(milliseconds(20));
  }
  ExpectStillServing();
}

}  // namespace
}  // namespace tartarus::http

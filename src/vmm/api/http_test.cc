// tartarus-vmm (Tartarus's KVM microVM monitor): the API socket's HTTP/1.1 parser on good,
// split, pipelined, malformed and oversized input (also run under ASan/UBSan).
#include "vmm/api/http.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

namespace tartarus::vmm::api {
namespace {

using ::testing::HasSubstr;

TEST(HttpParserTest, ParsesARequestWithABody) {
  HttpRequestParser parser;
  parser.Feed(
      "PUT /drives/rootfs?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
      "Content-Type: application/json\r\n\r\n{\"a\"");
  auto request = parser.Next();
  ASSERT_TRUE(request && *request);
  EXPECT_EQ((*request)->method, "PUT");
  EXPECT_EQ((*request)->path, "/drives/rootfs");
  EXPECT_EQ((*request)->body, "{\"a\"");
  EXPECT_EQ((*request)->Header("content-type"), "application/json");
  EXPECT_TRUE((*request)->keep_alive);
  EXPECT_EQ(parser.buffered(), 0u);
}

TEST(HttpParserTest, WaitsForBytesSplitAnywhere) {
  const std::string text = "PATCH /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  for (size_t split = 0; split < text.size(); ++split) {
    HttpRequestParser parser;
    parser.Feed(text.substr(0, split));
    auto first = parser.Next();
    ASSERT_TRUE(first);
    EXPECT_FALSE(*first) << "split at " << split;
    parser.Feed(text.substr(split));
    auto second = parser.Next();
    ASSERT_TRUE(second && *second) << "split at " << split;
    EXPECT_EQ((*second)->body, "hello");
  }
}

TEST(HttpParserTest, PipelinedRequestsComeOutInOrder) {
  HttpRequestParser parser;
  parser.Feed("GET / HTTP/1.1\r\n\r\nGET /machine-config HTTP/1.0\r\n\r\n");
  auto first = parser.Next();
  auto second = parser.Next();
  ASSERT_TRUE(first && *first && second && *second);
  EXPECT_EQ((*first)->path, "/");
  EXPECT_EQ((*second)->path, "/machine-config");
  EXPECT_FALSE((*second)->keep_alive);  // HTTP/1.0
  auto third = parser.Next();
  ASSERT_TRUE(third);
  EXPECT_FALSE(*third);
}

TEST(HttpParserTest, ConnectionCloseEndsKeepAlive) {
  HttpRequestParser parser;
  parser.Feed("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  auto request = parser.Next();
  ASSERT_TRUE(request && *request);
  EXPECT_FALSE((*request)->keep_alive);
}

struct BadCase {
  std::string text;
  int status;
  std::string message;
};

TEST(HttpParserTest, MalformedRequestsFailWithAStatusAndReason) {
  const BadCase cases[] = {
      {"GET\r\n\r\n", 400, "malformed request line"},
      {"GET  / HTTP/1.1\r\n\r\n", 400, "not an absolute path"},
      {"G@T / HTTP/1.1\r\n\r\n", 400, "malformed method"},
      {"GET / HTTP/2.0\r\n\r\n", 505, "unsupported HTTP version"},
      {"GET / FTP/1.0\r\n\r\n", 400, "malformed HTTP version"},
      {"GET http://x/ HTTP/1.1\r\n\r\n", 400, "not an absolute path"},
      {"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "malformed header line"},
      {"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400, "malformed header name"},
      {"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "malformed header name"},
      {"GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n", 400, "control character"},
      {"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "invalid Content-Length"},
      {"PUT / HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", 400, "invalid Content-Length"},
      {"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400,
       "invalid Content-Length"},
      {"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "conflicting"},
      {"PUT / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n", 413, "exceeds"},
      {"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding"},
      {"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", 501, "Expect"},
  };
  for (const BadCase& bad : cases) {
    HttpRequestParser parser;
    parser.Feed(bad.text);
    auto request = parser.Next();
    ASSERT_FALSE(request) << bad.text;
    EXPECT_EQ(parser.error_status(), bad.status) << bad.text;
    EXPECT_THAT(request.error().message, HasSubstr(bad.message)) << bad.text;
    // The parser stays failed.
    parser.Feed("GET / HTTP/1.1\r\n\r\n");
    EXPECT_FALSE(parser.Next());
  }
}

TEST(HttpParserTest, OversizedHeadsAndTooManyHeadersAreRefused) {
  HttpRequestParser endless;
  endless.Feed("GET / HTTP/1.1\r\nX: " + std::string(HttpRequestParser::kMaxHeadBytes, 'a'));
  EXPECT_FALSE(endless.Next());
  EXPECT_EQ(endless.error_status(), 431);

  std::string many = "GET / HTTP/1.1\r\n";
  for (size_t i = 0; i <= HttpRequestParser::kMaxHeaders; ++i) many += "X: y\r\n";
  HttpRequestParser parser;
  parser.Feed(many + "\r\n");
  auto request = parser.Next();
  ASSERT_FALSE(request);
  EXPECT_EQ(parser.error_status(), 431);
  EXPECT_THAT(request.error().message, HasSubstr("headers"));
}

TEST(HttpParserTest, RandomBytesNeverCrashAndEveryRequestIsBounded) {
  std::mt19937 random(7);
  const std::string seed = "PUT /a HTTP/1.1\r\nContent-Length: 3\r\nX: y\r\n\r\nabc";
  for (int round = 0; round < 3000; ++round) {
    std::string text = seed;
    for (int flips = random() % 6; flips >= 0; --flips) {
      text[random() % text.size()] = static_cast<char>(random());
    }
    HttpRequestParser parser;
    parser.Feed(text);
    for (int i = 0; i < 4; ++i) {
      auto request = parser.Next();
      if (!request || !*request) break;
      EXPECT_LE((*request)->body.size(), HttpRequestParser::kMaxBodyBytes);
      EXPECT_EQ((*request)->path.front(), '/');
    }
  }
}

TEST(HttpResponseTest, FormatsStatusLengthTypeAndConnection) {
  EXPECT_EQ(FormatHttpResponse({204, ""}, true),
            "HTTP/1.1 204 No Content\r\nServer: tartarus-vmm\r\n\r\n");
  std::string ok = FormatHttpResponse({200, "{}"}, false);
  EXPECT_THAT(ok, HasSubstr("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(ok, HasSubstr("Content-Type: application/json\r\n"));
  EXPECT_THAT(ok, HasSubstr("Content-Length: 2\r\n"));
  EXPECT_THAT(ok, HasSubstr("Connection: close\r\n\r\n{}"));
}

}  // namespace
}  // namespace tartarus::vmm::api

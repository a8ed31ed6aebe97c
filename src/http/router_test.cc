// Tests for the HTTP server's router, target parsing and url helpers (also run under ASan).
#include "http/router.h"

#include <random>

#include <gtest/gtest.h>

#include "http/url.h"

namespace tartarus::http {
namespace {

Handler Noop() {
  return [](Request&, std::shared_ptr<Responder>) {};
}

TEST(UrlTest, EncodesAndDecodes) {
  EXPECT_EQ(UrlEncode("a b/c?d=é~_.-"), "a%20b%2Fc%3Fd%3D%C3%A9~_.-");
  EXPECT_EQ(*UrlDecode("a%20b%2Fc"), "a b/c");
  EXPECT_EQ(*UrlDecode("a+b"), "a+b");
  EXPECT_EQ(*UrlDecode("a+b", true), "a b");
  for (std::string bad : {"%", "%4", "%zz", "abc%0", "%00"}) {
    auto decoded = UrlDecode(bad);
    ASSERT_FALSE(decoded) << bad;
    EXPECT_EQ(decoded.error().code, ErrorCode::kInvalidArgument);
  }
  std::string all;
  for (int c = 1; c < 256; ++c) all.push_back(static_cast<char>(c));
  EXPECT_EQ(*UrlDecode(UrlEncode(all)), all);
}

TEST(UrlTest, ParsesQueries) {
  auto query = ParseQuery("a=1&b=x%20y&flag&&c=d+e&a=2");
  ASSERT_TRUE(query);
  EXPECT_EQ(*query, (std::map<std::string, std::string>{
                        {"a", "2"}, {"b", "x y"}, {"flag", ""}, {"c", "d e"}}));
  EXPECT_FALSE(ParseQuery("a=%zz"));
  EXPECT_TRUE(EqualsIgnoreCase("X-Request-Id", "x-request-ID"));
  EXPECT_FALSE(EqualsIgnoreCase("X-Request-Id", "X-Request-I"));
}

TEST(ParseTargetTest, SplitsPathAndQuery) {
  Request request;
  ASSERT_TRUE(ParseTarget("/v1/sandboxes/a%20b?state=running&q=1%2B1#frag", request));
  EXPECT_EQ(request.path, "/v1/sandboxes/a b");
  EXPECT_EQ(request.query.at("state"), "running");
  EXPECT_EQ(request.query.at("q"), "1+1");
  for (std::string bad : {"", "*", "http://x/y", "/a%2", "/a?b=%g0"}) {
    Request r;
    auto parsed = ParseTarget(bad, r);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_EQ(parsed.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(RouterTest, MatchesParamsAndPrefersLiterals) {
  Router router;
  ASSERT_TRUE(router.Add("GET", "/v1/sandboxes/{id}", Noop(), {}));
  ASSERT_TRUE(router.Add("GET", "/v1/sandboxes/stats", Noop(), {}));
  ASSERT_TRUE(router.Add("post", "/v1/sandboxes/{id}/exec", Noop(), {}));

  auto match = router.Find("GET", "/v1/sandboxes/sb%2F1");
  ASSERT_TRUE(match);
  ASSERT_EQ(match->outcome, Router::Outcome::kFound);
  EXPECT_EQ(match->route->pattern, "/v1/sandboxes/{id}");
  EXPECT_EQ(match->params.at("id"), "sb/1");

  match = router.Find("GET", "/v1/sandboxes/stats/");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->route->pattern, "/v1/sandboxes/stats");
  EXPECT_TRUE(match->params.empty());

  match = router.Find("POST", "/v1/sandboxes/x/exec");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->outcome, Router::Outcome::kFound);
  EXPECT_EQ(match->params.at("id"), "x");

  match = router.Find("HEAD", "/v1/sandboxes/x");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->outcome, Router::Outcome::kFound) << "HEAD falls back to GET";
}

TEST(RouterTest, ReportsNotFoundAndMethodNotAllowed) {
  Router router;
  ASSERT_TRUE(router.Add("GET", "/v1/nodes", Noop(), {}));
  ASSERT_TRUE(router.Add("POST", "/v1/nodes", Noop(), {}));
  auto match = router.Find("DELETE", "/v1/nodes");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->outcome, Router::Outcome::kMethodNotAllowed);
  EXPECT_EQ(match->allow, "GET, HEAD, POST");
  match = router.Find("GET", "/v1/nodez");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->outcome, Router::Outcome::kNotFound);
  match = router.Find("GET", "/v1//nodes");
  ASSERT_TRUE(match);
  EXPECT_EQ(match->outcome, Router::Outcome::kNotFound);
  EXPECT_FALSE(router.Find("GET", "/v1/%zz"));
}

TEST(RouterTest, RejectsBadPatterns) {
  Router router;
  for (std::string bad : {"", "v1", "/a/{}", "/a/{id", "/a/x{id}", "/a//b"}) {
    EXPECT_FALSE(router.Add("GET", bad, Noop(), {})) << bad;
  }
  EXPECT_FALSE(router.Add("", "/a", Noop(), {}));
}

TEST(RouterTest, SurvivesRandomPaths) {
  Router router;
  ASSERT_TRUE(router.Add("GET", "/v1/{a}/{b}", Noop(), {}));
  ASSERT_TRUE(router.Add("GET", "/v1/x/{b}", Noop(), {}));
  std::mt19937 rng(42);
  const std::string alphabet = "/%{}?&=+ab0F\x01\xff";
  for (int i = 0; i < 20000; ++i) {
    std::string path = "/";
    int length = static_cast<int>(rng() % 24);
    for (int j = 0; j < length; ++j) path.push_back(alphabet[rng() % alphabet.size()]);
    Request request;
    (void)ParseTarget(path, request);
    auto match = router.Find("GET", path);
    if (match && match->outcome == Router::Outcome::kFound) {
      EXPECT_EQ(match->params.size(), match->route->pattern == "/v1/x/{b}" ? 1u : 2u);
    }
  }
}

}  // namespace
}  // namespace tartarus::http

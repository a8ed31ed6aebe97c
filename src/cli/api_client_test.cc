// tartarus CLI, Olympus client: error mapping and response parsing (no server needed).
#include "cli/api_client.h"

#include <gtest/gtest.h>

namespace tartarus::cli {
namespace {

using nlohmann::json;

TEST(ApiError, CarriesServerMessageAndRequestId) {
  Error e = ApiError(
      404,
      R"({"error":{"code":"not_found","message":"sandbox 3f2a not found","request_id":"9c1e77"}})",
      "ignored-header-id");
  EXPECT_EQ(e.code, ErrorCode::kNotFound);
  EXPECT_EQ(e.message, "sandbox 3f2a not found (request 9c1e77)");
}

TEST(ApiError, MapsStatuses) {
  const std::string body = R"({"error":{"code":"x","message":"m","request_id":""}})";
  EXPECT_EQ(ApiError(400, body, "").code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(ApiError(403, body, "").code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(ApiError(409, body, "").code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(ApiError(413, body, "").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(ApiError(429, body, "").code, ErrorCode::kResourceExhausted);
  EXPECT_EQ(ApiError(500, body, "").code, ErrorCode::kInternal);
  // An empty request_id in the body falls back to the header's.
  EXPECT_EQ(ApiError(500, body, "hdr1").message, "m (request hdr1)");
}

TEST(ApiError, UnauthorizedSaysHowToAuthenticate) {
  Error e = ApiError(401, R"({"error":{"code":"unauthenticated","message":"no token"}})", "r1");
  EXPECT_EQ(e.code, ErrorCode::kPermissionDenied);
  EXPECT_NE(e.message.find("--token"), std::string::npos);
  EXPECT_NE(e.message.find("(request r1)"), std::string::npos);
}

TEST(ApiError, NonJsonBodyFromAProxy) {
  Error e = ApiError(502, "<html>Bad Gateway</html>\nmore", "");
  EXPECT_EQ(e.message, "the server answered HTTP 502: <html>Bad Gateway</html>");
  EXPECT_EQ(ApiError(503, "", "").message, "the server answered HTTP 503");
}

TEST(ParseSandbox, ReadsTheSchema) {
  json body = json::parse(R"json({
    "id": "3f2a", "tenant": "acme", "template": "base", "runtime": "gvisor", "state": "exited",
    "command": ["python3", "-c", "print(1)"],
    "limits": {"millicpus": 500, "memory_bytes": 536870912, "disk_bytes": 1, "timeout_ms": 30000},
    "labels": {"team": "ml"}, "node": "n1", "attempt": 2, "exit_code": 7, "signal": 0,
    "timed_out": true, "error": "", "reason": "", "created_ms": 1000, "finished_ms": 2000,
    "future_field": {"x": 1}})json");
  auto s = ParseSandbox(body);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->id, "3f2a");
  EXPECT_EQ(s->template_name, "base");
  EXPECT_EQ(s->command.size(), 3u);
  EXPECT_EQ(s->limits.memory_bytes, 536870912);
  EXPECT_EQ(s->labels.at("team"), "ml");
  EXPECT_EQ(s->attempt, 2);
  ASSERT_TRUE(s->exit_code.has_value());
  EXPECT_EQ(*s->exit_code, 7);
  EXPECT_TRUE(s->timed_out);
  EXPECT_EQ(s->raw["future_field"]["x"], 1) << "raw keeps fields this CLI does not know";
}

TEST(ParseSandbox, NullExitCodeAndMissingOptionals) {
  auto s = ParseSandbox(json::parse(R"({"id":"a","state":"queued","exit_code":null})"));
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_FALSE(s->exit_code.has_value());
  EXPECT_EQ(s->node, "");
}

TEST(ParseSandbox, WrongTypesNameTheField) {
  auto missing = ParseSandbox(json::parse(R"({"state":"queued"})"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kProtocol);
  EXPECT_NE(missing.error().message.find("sandbox.id: missing"), std::string::npos);

  auto wrong = ParseSandbox(json::parse(R"({"id":"a","state":"x","limits":{"millicpus":"1"}})"));
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("sandbox.limits.millicpus: not an integer"),
            std::string::npos)
      << wrong.error().message;

  EXPECT_FALSE(ParseSandbox(json::parse(R"({"id":"a","state":"x","command":"ls"})")));
  EXPECT_FALSE(ParseSandbox(json::parse(R"([1])")));
}

TEST(ParseToken, SecretOnlyWhenGiven) {
  auto t = ParseToken(json::parse(
      R"({"id":"tok1","tenant":"acme","name":"ci","secret":"tt_x","created_ms":5,"revoked_ms":null})"));
  ASSERT_TRUE(t);
  EXPECT_EQ(t->secret, "tt_x");
  EXPECT_FALSE(t->revoked_ms.has_value());
}

TEST(IsFinalSandboxState, OnlyEndedStates) {
  for (const char* s : {"exited", "killed", "failed", "lost"}) EXPECT_TRUE(IsFinalSandboxState(s));
  for (const char* s : {"queued", "assigned", "running", ""}) EXPECT_FALSE(IsFinalSandboxState(s));
}

}  // namespace
}  // namespace tartarus::cli

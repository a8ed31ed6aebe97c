// Olympus: request parsing refuses bad input with the field named, and accepts good input.
#include "api/sandbox_json.h"

#include <gtest/gtest.h>

namespace tartarus::api {
namespace {

std::string ErrorOf(std::string_view body) {
  auto r = ParseCreateRequest(body);
  EXPECT_FALSE(r.has_value()) << body;
  return r ? "" : r.error().message;
}

TEST(CreateRequest, FullRequestParses) {
  auto r = ParseCreateRequest(R"j({"template":"python-ds","runtime":"gvisor",
      "command":["python3","-c","print(1)"],"env":["A=1","B=x=y"],"workdir":"/tmp","user":"1000",
      "cpus":"0.5","memory":"256M","disk":"1G","timeout":"30s","labels":{"team":"ml"},
      "node_selector":{"zone":"a"},"priority":5,"deadline":"1m","max_attempts":2})j");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->template_name, "python-ds");
  EXPECT_EQ(r->runtime, "gvisor");
  EXPECT_EQ(r->command.size(), 3u);
  EXPECT_EQ(r->env[1], "B=x=y");
  EXPECT_EQ(*r->millicpus, 500);
  EXPECT_EQ(*r->memory_bytes, 256 << 20);
  EXPECT_EQ(*r->disk_bytes, int64_t{1} << 30);
  EXPECT_EQ(*r->timeout_ms, 30000);
  EXPECT_EQ(r->deadline_ms, 60000);
  EXPECT_EQ(r->labels.at("team"), "ml");
  EXPECT_EQ(r->node_selector.at("zone"), "a");
  EXPECT_EQ(r->priority, 5);
  EXPECT_EQ(r->max_attempts, 2);
}

TEST(CreateRequest, DefaultsForAMinimalRequest) {
  auto r = ParseCreateRequest(R"j({"command":["true"]})j");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->template_name, "base");
  EXPECT_EQ(r->runtime, "");
  EXPECT_FALSE(r->millicpus.has_value());
  EXPECT_EQ(r->max_attempts, 3);
}

TEST(CreateRequest, NumericCpusMeanCpus) {
  auto r = ParseCreateRequest(R"j({"command":["true"],"cpus":2})j");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r->millicpus, 2000);
}

TEST(CreateRequest, BadInputNamesTheField) {
  EXPECT_NE(ErrorOf(""), "");
  EXPECT_NE(ErrorOf("[1,2]").find("JSON object"), std::string::npos);
  EXPECT_NE(ErrorOf("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"bogus":1})j").find("bogus: unknown field"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"j({})j").find("command: required"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":"ls"})j").find("command: expected an array"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":[1]})j").find("command"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"memory":"12Q"})j").find("memory:"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"timeout":-5})j").find("timeout: must be positive"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"runtime":"docker"})j").find("runtime:"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"template":"../etc"})j").find("template:"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"env":["NOEQUALS"]})j").find("env:"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"workdir":"rel"})j").find("workdir:"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"priority":1000})j").find("priority:"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"labels":{"a b":"c"}})j").find("labels:"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"labels":{"a":1}})j").find("labels:"), std::string::npos);
  EXPECT_NE(ErrorOf(R"j({"command":["x"],"cpus":1e300})j").find("cpus:"), std::string::npos);
}

TEST(CreateRequest, OversizedCommandIsRefused) {
  std::string big(200 << 10, 'a');
  EXPECT_NE(ErrorOf(R"j({"command":[")j" + big + R"j("]})j").find("exceed"), std::string::npos);
}

TEST(ExecRequest, ParsesAndRoundTrips) {
  auto r = ParseExecRequest(R"j({"command":["ls","-l"],"env":["X=1"],"timeout":"5s"})j");
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(r->timeout_ms, 5000);
  auto again = ParseExecRequest(ExecRequestToJson(*r).dump());
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(again->command, r->command);
  EXPECT_EQ(again->timeout_ms, 5000);
  EXPECT_FALSE(ParseExecRequest(R"j({"command":[]})j").has_value());
}

TEST(Stdin, RequestedOnCreateAndExecAndKeptInTheSpec) {
  auto create = ParseCreateRequest(R"j({"command":["cat"],"stdin":true})j");
  ASSERT_TRUE(create.has_value()) << create.error().message;
  EXPECT_TRUE(create->stdin);
  EXPECT_FALSE(ParseCreateRequest(R"j({"command":["cat"]})j")->stdin) << "off by default";
  auto bad = ParseCreateRequest(R"j({"command":["cat"],"stdin":"yes"})j");
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("stdin"), std::string::npos) << bad.error().message;

  auto exec = ParseExecRequest(R"j({"command":["cat"],"stdin":true})j");
  ASSERT_TRUE(exec.has_value()) << exec.error().message;
  EXPECT_TRUE(exec->stdin);
  EXPECT_EQ(ExecRequestToJson(*exec).value("stdin", false), true) << "the node must see it";
  EXPECT_FALSE(ParseExecRequest(R"j({"command":["cat"],"stdin":1})j").has_value());

  RunSpec spec;
  spec.command = {"cat"};
  spec.stdin = true;
  auto back = RunSpecFromJson(RunSpecToJson(spec));
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(back->stdin);
}

TEST(Ids, ExecIdsAre32LowercaseHexDigits) {
  EXPECT_TRUE(IsValidExecId(std::string(32, 'a')));
  EXPECT_FALSE(IsValidExecId(std::string(31, 'a')));
  EXPECT_FALSE(IsValidExecId(std::string(32, 'A')));
  EXPECT_FALSE(IsValidExecId("../../v1/nodes/x/heartbeat000000"));
}

TEST(RunSpec, RoundTrips) {
  RunSpec spec{{"echo", "hi"}, {"A=1"}, "/w", "nobody", 500, 1 << 20, 1 << 30, 1000};
  auto back = RunSpecFromJson(RunSpecToJson(spec));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->command, spec.command);
  EXPECT_EQ(back->memory_bytes, spec.memory_bytes);
  EXPECT_EQ(back->timeout_ms, 1000);
  EXPECT_FALSE(RunSpecFromJson("nope").has_value());
}

TEST(SandboxJson, HasTheSchemaFields) {
  store::SandboxRow row;
  row.id = "0123456789abcdef";
  row.state = "exited";
  row.exit_code = 3;
  row.spec_json = RunSpecToJson(RunSpec{{"true"}, {}, "", "", 1000, 1, 1, 0});
  auto j = SandboxToJson(row, "acme");
  for (const char* field : {"id", "tenant", "template", "runtime", "state", "command", "limits",
                            "labels", "attempt", "created_ms", "exit_code"}) {
    EXPECT_TRUE(j.contains(field)) << field;
  }
  EXPECT_EQ(j["exit_code"], 3);
  EXPECT_EQ(j["tenant"], "acme");
}

TEST(Ids, SandboxIdsAreValidAndDistinct) {
  std::string a = NewSandboxId(), b = NewSandboxId();
  EXPECT_TRUE(IsValidSandboxId(a));
  EXPECT_NE(a, b);
  EXPECT_FALSE(IsValidSandboxId("0123"));
  EXPECT_FALSE(IsValidSandboxId("0123456789ABCDEF"));
}

}  // namespace
}  // namespace tartarus::api

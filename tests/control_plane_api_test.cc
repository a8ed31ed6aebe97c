// The control plane's API against a real `tartarus up` daemon: every answer is checked against
// docs/openapi.yaml, and sandboxes run for real on the daemon's node.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "cluster_util.h"
#include "http/client.h"
#include "http/url.h"
#include "test_util.h"

namespace tartarus::testing {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

class ApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string reason = SkipReason("container", "base");
    if (!reason.empty()) return;
    state_ = new ScratchState();
    port_ = FreePort();
    daemon_ = new Daemon(
        state_->dir(), "daemon",
        {"up", "--listen", "127.0.0.1:" + std::to_string(port_), "--node-id", "api-test-node"});
    auto st = daemon_->Start();
    if (st) st = daemon_->WaitHealthy(Unix());
    if (!st) start_error_ = new std::string(st.error().message);
  }
  static void TearDownTestSuite() {
    if (daemon_) {
      auto status = daemon_->Stop();
      EXPECT_TRUE(status && status->Success()) << daemon_->Log();
    }
    delete daemon_;
    delete state_;
    delete start_error_;
    daemon_ = nullptr;
    state_ = nullptr;
    start_error_ = nullptr;
  }
  void SetUp() override {
    std::string reason = SkipReason("container", "base");
    if (!reason.empty()) GTEST_SKIP() << reason;
    ASSERT_EQ(start_error_, nullptr) << *start_error_;
  }
  static std::string Unix() { return "unix://" + state_->dir() + "/olympus.sock"; }
  static std::string Tcp() { return "http://127.0.0.1:" + std::to_string(port_); }
  Api Admin() { return Api(Unix()); }

  // A token for `tenant`, created over the admin socket.
  std::string TokenFor(const std::string& tenant) {
    auto res = Admin().Post("/v1/tokens", {{"tenant", tenant}, {"name", "test"}});
    EXPECT_EQ(res.status, 201) << res.body;
    EXPECT_EQ(CheckSchema(res.json, "Token"), "");
    return res.json.value("secret", "");
  }
  void ExpectError(const ApiResponse& res, int status, const std::string& code) {
    EXPECT_EQ(res.status, status) << res.body;
    EXPECT_EQ(CheckSchema(res.json, "Error"), "") << res.body;
    EXPECT_EQ(res.json["error"].value("code", ""), code) << res.body;
    EXPECT_FALSE(res.request_id.empty());
    EXPECT_EQ(res.json["error"].value("request_id", ""), res.request_id);
  }

  ApiResponse Stdin(Api& api, const std::string& id, const std::string& exec, uint64_t offset,
                    const std::string& data, bool eof = false) {
    return PostStdin(api, id, exec, offset, data, eof);
  }
  void ExpectTaken(const ApiResponse& res, uint64_t offset) {
    EXPECT_EQ(res.status, 200) << res.body;
    EXPECT_EQ(CheckSchema(res.json, "StdinAccepted"), "") << res.body;
    EXPECT_EQ(res.json.value("offset", uint64_t{0}), offset) << res.body;
  }

  static ScratchState* state_;
  static Daemon* daemon_;
  static int port_;
  static std::string* start_error_;
};
ScratchState* ApiTest::state_ = nullptr;
Daemon* ApiTest::daemon_ = nullptr;
int ApiTest::port_ = 0;
std::string* ApiTest::start_error_ = nullptr;

TEST_F(ApiTest, HealthReadinessAndMetrics) {
  Api open(Tcp());
  auto health = open.Call("GET", "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(CheckSchema(health.json, "Health"), "");
  EXPECT_EQ(open.Call("GET", "/readyz").status, 200);
  auto metrics = open.Call("GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_THAT(metrics.body, HasSubstr("# TYPE tartarus_queue_jobs gauge"));
  EXPECT_THAT(metrics.body, HasSubstr("tartarus_node_capacity_millicpus{node=\"api-test-node\"}"));
}

TEST_F(ApiTest, TheNodeRegisteredItself) {
  auto res = Admin().Call("GET", "/v1/nodes");
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_EQ(CheckSchema(res.json, "NodeList"), "");
  bool found = false;
  for (const auto& n : res.json["items"]) {
    if (n["id"] == "api-test-node") {
      found = true;
      EXPECT_EQ(n["state"], "ready");
      EXPECT_GT(n["millicpus"].get<int64_t>(), 0);
    }
  }
  EXPECT_TRUE(found) << res.body;
}

TEST_F(ApiTest, RunToCompletionThenReadItsLogs) {
  Api api = Admin();
  auto res =
      api.Post("/v1/sandboxes?wait=true",
               {{"command", {"sh", "-c", "echo out; echo err >&2; exit 3"}}, {"timeout", "60s"}});
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_EQ(CheckSchema(res.json, "Sandbox"), "") << res.body;
  EXPECT_EQ(res.json["state"], "exited");
  EXPECT_EQ(res.json["exit_code"], 3);
  EXPECT_EQ(res.json["node"], "api-test-node");
  EXPECT_EQ(res.json["attempt"], 1);
  std::string id = res.json["id"];

  int status = 0;
  auto events = api.Events("GET", "/v1/sandboxes/" + id + "/logs", "", &status);
  ASSERT_EQ(status, 200);
  std::string out, err;
  for (const auto& e : events) {
    EXPECT_EQ(CheckSchema(e, "StreamEvent"), "") << e.dump();
    if (e["event"] == "stdout") out += e.value("data", "");
    if (e["event"] == "stderr") err += e.value("data", "");
  }
  EXPECT_EQ(out, "out\n");
  EXPECT_EQ(err, "err\n");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "end");
  EXPECT_EQ(events.back()["exit_code"], 3);

  auto del = api.Call("DELETE", "/v1/sandboxes/" + id);
  EXPECT_EQ(del.status, 204) << del.body;
  ExpectError(api.Call("GET", "/v1/sandboxes/" + id), 404, "not_found");
}

TEST_F(ApiTest, FollowingLogsStreamsWhileItRuns) {
  Api api = Admin();
  auto res = api.Post("/v1/sandboxes",
                      {{"command", {"sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done"}}});
  ASSERT_EQ(res.status, 201) << res.body;
  std::string id = res.json["id"];
  // Started right after create: the stream waits for the run, follows it and ends with it.
  auto events = api.Events("GET", "/v1/sandboxes/" + id + "/logs?follow=true");
  std::string out;
  for (const auto& e : events) {
    if (e["event"] == "stdout") out += e.value("data", "");
  }
  EXPECT_EQ(out, "1\n2\n3\n");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "end");
  EXPECT_EQ(events.back()["state"], "exited");
  EXPECT_EQ(events.back()["exit_code"], 0);
}

TEST_F(ApiTest, ExecFilesAndKillOnARunningSandbox) {
  Api api = Admin();
  auto res =
      api.Post("/v1/sandboxes", {{"command", {"sleep", "120"}}, {"labels", {{"suite", "api"}}}});
  ASSERT_EQ(res.status, 201) << res.body;
  std::string id = res.json["id"];
  auto running = api.WaitForState(id, {"running"});
  ASSERT_EQ(running.value("state", ""), "running") << running.dump();

  std::string content = "line one\nline two\n";
  auto put =
      api.Call("PUT", "/v1/sandboxes/" + id + "/files?path=" + http::UrlEncode("/tmp/note.txt"),
               content, {{"Content-Type", "application/octet-stream"}});
  EXPECT_EQ(put.status, 204) << put.body;
  auto get = api.Call("GET", "/v1/sandboxes/" + id + "/files?path=/tmp/note.txt");
  EXPECT_EQ(get.status, 200) << get.body;
  EXPECT_EQ(get.body, content);

  int status = 0;
  auto events =
      api.Events("POST", "/v1/sandboxes/" + id + "/exec",
                 json{{"command", {"sh", "-c", "wc -l < /tmp/note.txt; exit 5"}}}.dump(), &status);
  ASSERT_EQ(status, 200);
  std::string out;
  for (const auto& e : events) {
    if (e["event"] == "stdout") out += e.value("data", "");
  }
  EXPECT_EQ(out, "2\n");
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "end");
  EXPECT_EQ(events.back()["exit_code"], 5);

  auto list = api.Call("GET", "/v1/sandboxes?label=suite%3Dapi&state=running");
  ASSERT_EQ(list.status, 200);
  EXPECT_EQ(CheckSchema(list.json, "SandboxList"), "");
  ASSERT_EQ(list.json["items"].size(), 1u) << list.body;
  EXPECT_EQ(list.json["items"][0]["id"], id);

  auto kill = api.Post("/v1/sandboxes/" + id + "/kill", json::object());
  EXPECT_EQ(kill.status, 200) << kill.body;
  auto killed = api.WaitForState(id, {"killed", "exited"});
  EXPECT_EQ(killed.value("state", ""), "killed") << killed.dump();
  ExpectError(api.Call("GET", "/v1/sandboxes/" + id + "/files?path=/tmp/note.txt"), 409,
              "failed_precondition");
}

TEST_F(ApiTest, TokensAuthenticateAndTenantsSeeOnlyTheirOwn) {
  ExpectError(Api(Tcp()).Call("GET", "/v1/sandboxes"), 401, "unauthenticated");
  ExpectError(Api(Tcp(), "tt_not_a_real_token").Call("GET", "/v1/sandboxes"), 401,
              "unauthenticated");

  Api acme(Tcp(), TokenFor("acme"));
  Api globex(Tcp(), TokenFor("globex"));
  auto res = acme.Post("/v1/sandboxes?wait=true", {{"command", {"true"}}});
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_EQ(res.json["tenant"], "acme");
  std::string id = res.json["id"];

  ExpectError(globex.Call("GET", "/v1/sandboxes/" + id), 404, "not_found");
  // Short ids: a unique prefix names the sandbox, for its tenant only.
  auto by_prefix = acme.Call("GET", "/v1/sandboxes/" + id.substr(0, 10));
  ASSERT_EQ(by_prefix.status, 200) << by_prefix.body;
  EXPECT_EQ(by_prefix.json["id"], id);
  ExpectError(globex.Call("GET", "/v1/sandboxes/" + id.substr(0, 10)), 404, "not_found");
  ExpectError(acme.Call("GET", "/v1/sandboxes/" + id.substr(0, 10) + "%25"), 404, "not_found");
  // Ids are random hex: after at most 17 sandboxes two share their first character.
  std::set<char> firsts{id[0]};
  char shared = 0;
  for (int i = 0; i < 17 && !shared; ++i) {
    auto more = acme.Post("/v1/sandboxes", {{"command", {"true"}}});
    ASSERT_EQ(more.status, 201) << more.body;
    char first = more.json["id"].get<std::string>()[0];
    if (!firsts.insert(first).second) shared = first;
  }
  ASSERT_NE(shared, 0);
  auto ambiguous = acme.Call("GET", "/v1/sandboxes/" + std::string(1, shared));
  ExpectError(ambiguous, 400, "invalid_argument");
  EXPECT_NE(ambiguous.body.find("ambiguous"), std::string::npos) << ambiguous.body;
  auto theirs = globex.Call("GET", "/v1/sandboxes");
  ASSERT_EQ(theirs.status, 200);
  for (const auto& s : theirs.json["items"]) EXPECT_NE(s["id"], id);
  EXPECT_EQ(acme.Call("GET", "/v1/sandboxes/" + id).status, 200);
  // Admin routes need an admin token.
  ExpectError(acme.Call("GET", "/v1/tokens"), 403, "permission_denied");

  // A revoked token stops working at once.
  auto tokens = Admin().Call("GET", "/v1/tokens");
  ASSERT_EQ(tokens.status, 200);
  EXPECT_EQ(CheckSchema(tokens.json, "TokenList"), "");
  for (const auto& t : tokens.json["items"]) {
    EXPECT_FALSE(t.contains("secret"));
    if (t["tenant"] == "globex") {
      EXPECT_EQ(Admin().Call("DELETE", "/v1/tokens/" + t["id"].get<std::string>()).status, 204);
    }
  }
  ExpectError(globex.Call("GET", "/v1/sandboxes"), 401, "unauthenticated");
}

TEST_F(ApiTest, PolicyDenialSaysWhichRuleAndIsRecorded) {
  std::string policy =
      "name: strict-initech\n"
      "tenant: initech\n"
      "allow:\n"
      "  runtimes: [container]\n"
      "limits:\n"
      "  max_memory: 256M\n";
  auto put = Admin().Call("PUT", "/v1/policies/strict-initech", policy,
                          {{"Content-Type", "application/yaml"}});
  ASSERT_EQ(put.status, 200) << put.body;
  EXPECT_EQ(CheckSchema(put.json, "Policy"), "");
  auto bad =
      Admin().Call("PUT", "/v1/policies/broken", "name: broken\nlimits:\n  max_memory: 12Q\n");
  ExpectError(bad, 400, "invalid_argument");
  EXPECT_THAT(bad.json["error"].value("message", ""), HasSubstr("max_memory"));

  Api initech(Tcp(), TokenFor("initech"));
  auto denied = initech.Post("/v1/sandboxes", {{"command", {"true"}}, {"memory", "1G"}});
  ExpectError(denied, 403, "policy_denied");
  EXPECT_THAT(denied.json["error"].value("message", ""), HasSubstr("limits.max_memory"));
  auto wrong_runtime =
      initech.Post("/v1/sandboxes", {{"command", {"true"}}, {"runtime", "gvisor"}});
  ExpectError(wrong_runtime, 403, "policy_denied");
  EXPECT_THAT(wrong_runtime.json["error"].value("message", ""), HasSubstr("allow.runtimes"));
  // Within the policy: admitted, with the safe default timeout filled in.
  auto ok = initech.Post("/v1/sandboxes?wait=true", {{"command", {"true"}}, {"memory", "128M"}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(ok.json["limits"]["memory_bytes"], 128 << 20);
  EXPECT_GT(ok.json["limits"]["timeout_ms"].get<int64_t>(), 0);

  auto errors = initech.Call("GET", "/v1/errors?kind=admission");
  ASSERT_EQ(errors.status, 200);
  EXPECT_EQ(CheckSchema(errors.json, "ErrorList"), "") << errors.body;
  ASSERT_GE(errors.json["items"].size(), 2u) << errors.body;
  EXPECT_THAT(errors.json["items"][0]["message"].get<std::string>(), HasSubstr("allow.runtimes"));
  EXPECT_EQ(Admin().Call("DELETE", "/v1/policies/strict-initech").status, 204);
}

TEST_F(ApiTest, IdempotencyKeysReturnTheSameSandbox) {
  Api api = Admin();
  json body = {{"command", {"true"}}};
  auto first = api.Post("/v1/sandboxes", body, {{"Idempotency-Key", "order-42"}});
  ASSERT_EQ(first.status, 201) << first.body;
  auto again = api.Post("/v1/sandboxes", body, {{"Idempotency-Key", "order-42"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(first.json["id"], again.json["id"]);
  auto other = api.Post("/v1/sandboxes", body, {{"Idempotency-Key", "order-43"}});
  EXPECT_NE(other.json["id"], first.json["id"]);
}

TEST_F(ApiTest, BadRequestsGetClearErrors) {
  Api api = Admin();
  auto r1 = api.Call("POST", "/v1/sandboxes", "{not json", {{"Content-Type", "application/json"}});
  ExpectError(r1, 400, "invalid_argument");
  auto r2 = api.Post("/v1/sandboxes", {{"command", {"true"}}, {"memroy", "1G"}});
  ExpectError(r2, 400, "invalid_argument");
  EXPECT_THAT(r2.json["error"].value("message", ""), HasSubstr("memroy: unknown field"));
  auto r3 = api.Post("/v1/sandboxes",
                     {{"command", {"true"}}, {"template", "no-such-template"}, {"deadline", "2s"}});
  // An unknown template is queued, found on no node, and fails with the scheduler's reason.
  ASSERT_EQ(r3.status, 201) << r3.body;
  auto failed = api.WaitForState(r3.json["id"], {"failed", "exited"}, std::chrono::seconds(30));
  EXPECT_EQ(failed.value("state", ""), "failed") << failed.dump();
  ExpectError(api.Call("GET", "/v1/sandboxes/ffffffffffffffff"), 404, "not_found");
  ExpectError(api.Call("GET", "/v1/no-such-thing"), 404, "not_found");
  ExpectError(api.Call("GET", "/v1/sandboxes?limit=0"), 400, "invalid_argument");
}

TEST_F(ApiTest, QueueViewsAndNodeCordon) {
  Api api = Admin();
  auto stats = api.Call("GET", "/v1/queue");
  ASSERT_EQ(stats.status, 200);
  EXPECT_EQ(CheckSchema(stats.json, "QueueStats"), "");
  auto dead = api.Call("GET", "/v1/queue/dead");
  EXPECT_EQ(dead.status, 200);
  EXPECT_EQ(CheckSchema(dead.json, "JobList"), "");

  auto cordon = api.Post("/v1/nodes/api-test-node/cordon", json::object());
  ASSERT_EQ(cordon.status, 200) << cordon.body;
  EXPECT_EQ(cordon.json["state"], "cordoned");
  auto waiting = api.Post("/v1/sandboxes", {{"command", {"true"}}});
  ASSERT_EQ(waiting.status, 201);
  std::string id = waiting.json["id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto queued = api.Call("GET", "/v1/sandboxes/" + id);
  EXPECT_EQ(queued.json["state"], "queued");
  EXPECT_THAT(queued.json.value("reason", ""), HasSubstr("cordoned")) << queued.body;
  auto uncordon = api.Post("/v1/nodes/api-test-node/uncordon", json::object());
  EXPECT_EQ(uncordon.json["state"], "ready");
  auto done = api.WaitForState(id, {"exited"}, std::chrono::seconds(60));
  EXPECT_EQ(done.value("state", ""), "exited") << done.dump();
}

TEST_F(ApiTest, ExecStdinArrivesByteExactOnceAndInOrder) {
  Api api = Admin();
  auto res = api.Post("/v1/sandboxes", {{"command", {"sleep", "300"}}, {"timeout", "200s"}});
  ASSERT_EQ(res.status, 201) << res.body;
  std::string id = res.json["id"];
  ASSERT_EQ(api.WaitForState(id, {"running"}).value("state", ""), "running");

  // 5 MiB and a bit, every byte value, in chunks of exactly the 1 MiB bound.
  std::string payload((5 << 20) + 12345, '\0');
  uint32_t x = 12345;
  for (auto& c : payload) {
    x = x * 1103515245 + 12345;
    c = static_cast<char>(x >> 24);
  }
  const size_t kChunk = 1 << 20;
  ExecStream cat(Unix(), id, {{"command", {"cat"}}, {"stdin", true}});
  std::string exec = cat.WaitForId();
  ASSERT_EQ(exec.size(), 32u) << "the first event names the exec";
  uint64_t offset = 0;
  for (; offset < payload.size(); offset += kChunk) {
    auto chunk = payload.substr(offset, kChunk);
    ExpectTaken(Stdin(api, id, exec, offset, chunk), offset + chunk.size());
    if (offset == 0) {
      // A retried chunk (its answer was lost): taken once, the offset does not move.
      ExpectTaken(Stdin(api, id, exec, 0, chunk), chunk.size());
    }
  }
  offset = payload.size();
  // A gap is refused, not filled with garbage.
  ExpectError(Stdin(api, id, exec, offset + 10, "x"), 409, "offset_mismatch");
  // Over the bound: 413 before anything reaches the node.
  ExpectError(Stdin(api, id, exec, offset, std::string(kChunk + 1, 'x')), 413, "invalid_argument");
  ExpectTaken(Stdin(api, id, exec, offset, "", /*eof=*/true), payload.size());
  cat.Join();
  std::string out = cat.out();
  EXPECT_EQ(cat.status(), 200);
  EXPECT_EQ(out.size(), payload.size());
  EXPECT_TRUE(out == payload) << "the bytes differ";
  EXPECT_EQ(cat.end().value("event", ""), "end") << cat.end().dump();
  EXPECT_EQ(cat.end()["exit_code"], 0) << cat.end().dump();
  // The exec has ended: a late chunk is a clear conflict, not a 404 or a hang.
  ExpectError(Stdin(api, id, exec, payload.size(), "late"), 409, "stdin_closed");

  // wc -c prints only at end of file, so its answer proves EOF arrived, and when.
  ExecStream wc(Unix(), id, {{"command", {"wc", "-c"}}, {"stdin", true}});
  exec = wc.WaitForId();
  ASSERT_FALSE(exec.empty());
  ExpectTaken(Stdin(api, id, exec, 0, "hello "), 6);
  ExpectTaken(Stdin(api, id, exec, 6, "world\n"), 12);
  ExpectTaken(Stdin(api, id, exec, 6, "world\n"), 12);  // duplicate: ignored
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(wc.OutSoFar(), "") << "wc saw end of file before the client sent it";
  ExpectTaken(Stdin(api, id, exec, 12, "", /*eof=*/true), 12);
  wc.Join();
  EXPECT_EQ(wc.out(), "12\n");

  // Another tenant cannot reach this sandbox's stdin: 404, as for everything else of it.
  Api other(Tcp(), TokenFor("stdin-other"));
  ExpectError(Stdin(other, id, "", 0, "x"), 404, "not_found");
  ExpectError(Stdin(other, id, exec, 12, "x"), 404, "not_found");
  // Unknown exec ids are 404 too.
  ExpectError(Stdin(api, id, std::string(32, 'a'), 0, "x"), 404, "not_found");

  EXPECT_EQ(api.Post("/v1/sandboxes/" + id + "/kill", json::object()).status, 200);
  api.WaitForState(id, {"killed", "exited"});
}

TEST_F(ApiTest, MainCommandStdinWaitsForTheClientsEndOfFile) {
  Api api = Admin();
  auto res = api.Post(
      "/v1/sandboxes",
      {{"command", {"sh", "-c", "cat; echo eof-seen >&2"}}, {"stdin", true}, {"timeout", "120s"}});
  ASSERT_EQ(res.status, 201) << res.body;
  EXPECT_EQ(res.json.value("stdin", false), true) << res.body;
  std::string id = res.json["id"];
  ASSERT_EQ(api.WaitForState(id, {"running"}).value("state", ""), "running");
  ExpectTaken(Stdin(api, id, "", 0, "abc"), 3);
  ExpectTaken(Stdin(api, id, "", 0, "abc"), 3);   // a retry: taken once
  ExpectTaken(Stdin(api, id, "", 1, "bcde"), 5);  // overlapping: only "de" is new
  // The command does not see end of file until the client says so.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(api.Call("GET", "/v1/sandboxes/" + id).json.value("state", ""), "running");
  ExpectTaken(Stdin(api, id, "", 5, "f", /*eof=*/true), 6);
  auto done = api.WaitForState(id, {"exited"});
  EXPECT_EQ(done["exit_code"], 0) << done.dump();
  int status = 0;
  std::string out, err;
  for (const auto& e : api.Events("GET", "/v1/sandboxes/" + id + "/logs", "", &status)) {
    if (e["event"] == "stdout") out += e.value("data", "");
    if (e["event"] == "stderr") err += e.value("data", "");
  }
  EXPECT_EQ(out, "abcdef");
  EXPECT_EQ(err, "eof-seen\n");
  ExpectError(Stdin(api, id, "", 6, "late"), 409, "stdin_closed");

  // Without "stdin": true the command reads /dev/null, as before, and chunks are refused.
  auto plain = api.Post("/v1/sandboxes?wait=true", {{"command", {"wc", "-c"}}});
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(plain.json["exit_code"], 0);
  ExpectError(Stdin(api, plain.json["id"], "", 0, "x"), 409, "stdin_closed");
  ExpectError(api.Call("POST", "/v1/sandboxes/" + id + "/stdin", "x"), 400, "invalid_argument");
}

TEST_F(ApiTest, EveryDocumentedRouteIsServed) {
  // A documented route may answer 4xx for a dummy id, but never "no such route".
  Api api = Admin();
  for (const auto& [method, path] : DocumentedOperations()) {
    std::string target = path;
    for (const char* param : {"{id}", "{name}", "{exec_id}"}) {
      if (auto pos = target.find(param); pos != std::string::npos)
        target.replace(pos, strlen(param), "x0");
    }
    if (target.find("heartbeat") != std::string::npos ||
        target.find("reports") != std::string::npos ||
        target.find("/cordon") != std::string::npos || target.find("/drain") != std::string::npos) {
      continue;  // would change the test node's state
    }
    auto res = api.Call(method, target, method == "GET" || method == "DELETE" ? "" : "{}",
                        {{"Content-Type", "application/json"}});
    EXPECT_NE(res.status, 405) << method << " " << target;
    if (res.status == 404) {
      EXPECT_THAT(res.json["error"].value("message", ""), ::testing::Not(HasSubstr("no route")))
          << method << " " << target << ": " << res.body;
    }
  }
}

}  // namespace
}  // namespace tartarus::testing

// Hecatoncheir (the node agent): exec and stdin streams hold no thread each. A real
// `tartarus up` daemon (Olympus and the node agent in one process) runs 20 concurrent execs
// (sleep + output; half of them fed stdin through the API) and main commands fed stdin, and
// its thread count (/proc/<pid>/task) must not grow with them, while every output and exit
// code comes out right.
#include <dirent.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "cluster_util.h"
#include "http/client.h"
#include "test_util.h"

namespace tartarus::testing {
namespace {

using nlohmann::json;

// The pid of the `tartarus --state-dir DIR up ...` process (not its supervisors).
int DaemonPid(const std::string& state_dir) {
  DIR* proc = opendir("/proc");
  if (!proc) return 0;
  int found = 0;
  while (dirent* entry = readdir(proc)) {
    int pid = atoi(entry->d_name);
    if (pid <= 0) continue;
    std::ifstream in("/proc/" + std::string(entry->d_name) + "/cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> argv;
    for (size_t at = 0; at < cmdline.size();) {
      size_t end = cmdline.find('\0', at);
      if (end == std::string::npos) end = cmdline.size();
      argv.push_back(cmdline.substr(at, end - at));
      at = end + 1;
    }
    if (argv.size() >= 4 && argv[1] == "--state-dir" && argv[2] == state_dir && argv[3] == "up") {
      found = pid;
      break;
    }
  }
  closedir(proc);
  return found;
}

int ThreadCount(int pid) {
  DIR* dir = opendir(("/proc/" + std::to_string(pid) + "/task").c_str());
  if (!dir) return -1;
  int n = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n;
}

class NodeStreamsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason = SkipReason("container", "base");
    if (!reason.empty()) GTEST_SKIP() << reason;
    state_ = std::make_unique<ScratchState>();
    daemon_ = std::make_unique<Daemon>(
        state_->dir(), "daemon",
        std::vector<std::string>{"up", "--listen", "127.0.0.1:" + std::to_string(FreePort()),
                                 "--node-id", "streams-test-node"});
    ASSERT_TRUE(daemon_->Start());
    auto healthy = daemon_->WaitHealthy(Unix());
    ASSERT_TRUE(healthy) << healthy.error().message;
  }
  void TearDown() override {
    if (daemon_) {
      auto status = daemon_->Stop();
      EXPECT_TRUE(status && status->Success()) << daemon_->Log();
    }
  }
  std::string Unix() { return "unix://" + state_->dir() + "/olympus.sock"; }

  std::unique_ptr<ScratchState> state_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(NodeStreamsTest, ConcurrentExecsAndStdinsHoldNoThreadEach) {
  constexpr int kExecs = 20;
  constexpr int kMainStdins = 3;
  Api api(Unix());
  auto res = api.Post(
      "/v1/sandboxes",
      {{"command", {"sleep", "300"}}, {"timeout", "250s"}, {"cpus", "0.2"}, {"memory", "128M"}});
  ASSERT_EQ(res.status, 201) << res.body;
  const std::string id = res.json["id"];
  std::vector<std::string> fed;  // sandboxes whose main command reads API-fed stdin
  for (int j = 0; j < kMainStdins; ++j) {
    auto created = api.Post("/v1/sandboxes", {{"command", {"sh", "-c", "cat; exit 4"}},
                                              {"stdin", true},
                                              {"timeout", "250s"},
                                              {"cpus", "0.2"},
                                              {"memory", "128M"}});
    ASSERT_EQ(created.status, 201) << created.body;
    fed.push_back(created.json["id"]);
  }
  ASSERT_EQ(api.WaitForState(id, {"running"}).value("state", ""), "running");
  for (const auto& f : fed) {
    ASSERT_EQ(api.WaitForState(f, {"running"}).value("state", ""), "running");
  }
  const int pid = DaemonPid(state_->dir());
  ASSERT_GT(pid, 0) << "cannot find the daemon's process";
  // The threads that started the runs are gone once their reports are in.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const int baseline = ThreadCount(pid);
  ASSERT_GT(baseline, 0);

  // Even: output, sleep, more output, exit i. Odd: stdin, held until the test closes it.
  std::vector<std::unique_ptr<ExecStream>> execs;
  for (int i = 0; i < kExecs; ++i) {
    std::string n = std::to_string(i);
    json request =
        i % 2 == 0
            ? json{{"command",
                    {"sh", "-c", "echo start-" + n + "; sleep 4; echo end-" + n + "; exit " + n}}}
            : json{{"command", {"sh", "-c", "echo start-" + n + "; cat; exit 3"}}, {"stdin", true}};
    execs.push_back(std::make_unique<ExecStream>(Unix(), id, request));
  }
  for (int i = 0; i < kExecs; ++i) {
    std::string want = "start-" + std::to_string(i) + "\n";
    ASSERT_TRUE(execs[i]->WaitFor([&](const std::string& exec_id, const std::string& out) {
      return out == want && (i % 2 == 0 || !exec_id.empty());
    })) << "exec "
        << i << " did not start";
  }
  // Every stdin exec and every main command takes its first chunk: all streams are live.
  for (int i = 1; i < kExecs; i += 2) {
    auto taken = PostStdin(api, id, execs[i]->exec_id(), 0, "in-" + std::to_string(i) + "\n");
    EXPECT_EQ(taken.status, 200) << taken.body;
  }
  for (int j = 0; j < kMainStdins; ++j) {
    auto taken = PostStdin(api, fed[j], "", 0, "abc-" + std::to_string(j) + "\n");
    EXPECT_EQ(taken.status, 200) << taken.body;
  }
  int most = 0;
  for (int k = 0; k < 10; ++k) {
    most = std::max(most, ThreadCount(pid));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  // One thread per stream would be 20+ more (the old design: 30 for these execs, 3 feeders).
  EXPECT_LE(most, baseline + 3) << "the node agent's threads grew with its streams: " << baseline
                                << " -> " << most;

  for (int i = 1; i < kExecs; i += 2) {
    std::string line = "in-" + std::to_string(i) + "\n";
    auto closed = PostStdin(api, id, execs[i]->exec_id(), line.size(), "more\n", /*eof=*/true);
    EXPECT_EQ(closed.status, 200) << closed.body;
  }
  for (int j = 0; j < kMainStdins; ++j) {
    std::string line = "abc-" + std::to_string(j) + "\n";
    auto closed = PostStdin(api, fed[j], "", line.size(), "xyz\n", /*eof=*/true);
    EXPECT_EQ(closed.status, 200) << closed.body;
  }
  for (int i = 0; i < kExecs; ++i) {
    execs[i]->Join();
    std::string n = std::to_string(i);
    EXPECT_EQ(execs[i]->status(), 200);
    EXPECT_EQ(execs[i]->end().value("event", ""), "end") << execs[i]->end().dump();
    if (i % 2 == 0) {
      EXPECT_EQ(execs[i]->out(), "start-" + n + "\nend-" + n + "\n");
      EXPECT_EQ(execs[i]->end()["exit_code"], i) << execs[i]->end().dump();
    } else {
      EXPECT_EQ(execs[i]->out(), "start-" + n + "\nin-" + n + "\nmore\n");
      EXPECT_EQ(execs[i]->end()["exit_code"], 3) << execs[i]->end().dump();
    }
  }
  for (int j = 0; j < kMainStdins; ++j) {
    auto done = api.WaitForState(fed[j], {"exited", "failed", "killed"});
    EXPECT_EQ(done.value("state", ""), "exited") << done.dump();
    EXPECT_EQ(done["exit_code"], 4) << done.dump();
    std::string out;
    for (const auto& e : api.Events("GET", "/v1/sandboxes/" + fed[j] + "/logs")) {
      if (e["event"] == "stdout") out += e.value("data", "");
    }
    EXPECT_EQ(out, "abc-" + std::to_string(j) + "\nxyz\n");
  }
  // Every stream has ended: nothing was left behind either.
  EXPECT_LE(ThreadCount(pid), baseline + 3);

  // A connection lost mid-exec (the sandbox was killed) ends the stream with an error event.
  ExecStream doomed(Unix(), id, {{"command", {"sh", "-c", "echo up; sleep 100"}}});
  ASSERT_TRUE(
      doomed.WaitFor([](const std::string&, const std::string& out) { return out == "up\n"; }));
  EXPECT_EQ(api.Post("/v1/sandboxes/" + id + "/kill", json::object()).status, 200);
  doomed.Join();
  EXPECT_EQ(doomed.end().value("event", ""), "end") << doomed.end().dump();
  EXPECT_EQ(doomed.end().value("state", ""), "failed") << doomed.end().dump();
  EXPECT_NE(doomed.end().value("error", ""), "") << doomed.end().dump();
  api.WaitForState(id, {"killed", "exited"});
}

}  // namespace
}  // namespace tartarus::testing

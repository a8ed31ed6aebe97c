// End-to-end: the tartarus CLI running real commands in real sandboxes, in each backend.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "common/subprocess.h"
#include "test_util.h"

namespace tartarus::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class RunTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string reason = SkipReason(GetParam(), "base");
    if (!reason.empty()) GTEST_SKIP() << reason;
  }
  std::vector<std::string> Run(std::vector<std::string> args) {
    std::vector<std::string> all = {"run", "--runtime", GetParam(), "--rm", "-q"};
    all.insert(all.end(), args.begin(), args.end());
    return all;
  }
  // The id of the sandbox a detached run printed.
  std::string Detach(std::vector<std::string> args) {
    std::vector<std::string> all = {"run", "-d", "--runtime", GetParam(), "-q"};
    all.insert(all.end(), args.begin(), args.end());
    auto r = RunCli(all);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string id = r.out.substr(0, r.out.find('\n'));
    EXPECT_EQ(id.size(), 12u) << r.out << r.err;
    return id;
  }
  std::string StateOf(const std::string& id) {
    auto r = RunCli({"inspect", id});
    auto pos = r.out.find("\"state\": \"");
    if (pos == std::string::npos) return "?";
    pos += 10;
    return r.out.substr(pos, r.out.find('"', pos) - pos);
  }
};

TEST_P(RunTest, HelloFromTheUnderworld) {
  auto r = RunCli(Run(
      {"--template", "python-ds", "--", "python3", "-c", "print('Hello from the Underworld')"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "Hello from the Underworld\n");
}

TEST_P(RunTest, ExitCodesFollowTheShell) {
  EXPECT_EQ(RunCli(Run({"--", "sh", "-c", "exit 7"})).exit_code, 7);
  auto missing = RunCli(Run({"--", "no-such-command-here"}));
  EXPECT_EQ(missing.exit_code, 127);
  EXPECT_THAT(missing.err, HasSubstr("no-such-command-here"));
  EXPECT_EQ(RunCli(Run({"--", "sh", "-c", "kill -TERM $$"})).exit_code, 128 + SIGTERM);
  auto timeout = RunCli(Run({"--timeout", "1s", "--", "sleep", "30"}));
  EXPECT_EQ(timeout.exit_code, 124) << timeout.err;
}

TEST_P(RunTest, StdoutAndStderrStaySeparate) {
  auto r = RunCli(Run({"--", "sh", "-c", "echo to-out; echo to-err >&2; echo more-out"}));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "to-out\nmore-out\n");
  EXPECT_EQ(r.err, "to-err\n");
}

TEST_P(RunTest, FiftyMegabytesOfOutputArriveByteExact) {
  // Random bytes (every byte value), with the sandbox's own checksum on stderr.
  auto r = RunCli(Run({"--", "sh", "-c",
                       "head -c 52428800 /dev/urandom > /tmp/r && sha256sum /tmp/r >&2 && "
                       "cat /tmp/r"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(r.out.size(), 52428800u);
  EXPECT_EQ(r.err.substr(0, 64), Sha256Hex(r.out));
}

TEST_P(RunTest, StdinPassesThrough) {
  std::string input;
  for (int i = 0; i < 100000; ++i) input += "line " + std::to_string(i) + "\n";
  auto r = RunCli(Run({"--", "cat"}), input);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out == input) << "got " << r.out.size() << " bytes, sent " << input.size();
}

TEST_P(RunTest, EnvAndWorkdir) {
  auto r =
      RunCli(Run({"-e", "GREETING=hades", "-w", "/tmp", "--", "sh", "-c", "echo $GREETING; pwd"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hades\n/tmp\n");
}

TEST_P(RunTest, NoNetworkButLoopback) {
  // Interface names from /proc/net/dev (gVisor has no /sys/class/net).
  auto r = RunCli(Run({"--", "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "lo\n");
}

TEST_P(RunTest, HostFilesAreInvisible) {
  std::string secret = "/tmp/tartarus-host-secret-" + std::to_string(getpid());
  std::ofstream(secret) << "do not read";
  auto r = RunCli(Run({"--", "sh", "-c", "test -e " + secret + " && echo visible || echo hidden"}));
  unlink(secret.c_str());
  EXPECT_EQ(r.out, "hidden\n") << r.err;
}

TEST_P(RunTest, WritesAreGoneAfterTheSandboxEnds) {
  auto first =
      RunCli(Run({"--", "sh", "-c", "echo x > /root/left-behind && cat /root/left-behind"}));
  EXPECT_EQ(first.out, "x\n") << first.err;
  auto second =
      RunCli(Run({"--", "sh", "-c", "test -e /root/left-behind && echo kept || echo gone"}));
  EXPECT_EQ(second.out, "gone\n") << second.err;
}

TEST_P(RunTest, CommandsHaveNoCapabilities) {
  auto r = RunCli(Run({"--", "grep", "-E", "^Cap(Eff|Prm|Bnd)", "/proc/self/status"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("CapPrm:\t0000000000000000"));
  EXPECT_THAT(r.out, HasSubstr("CapEff:\t0000000000000000"));
}

TEST_P(RunTest, MemoryHogIsKilledByTheLimit) {
  auto r = RunCli(Run({"--memory", "64M", "--template", "python-ds", "--", "python3", "-c",
                       "b = bytearray(300 * 1024 * 1024); print('survived')"}));
  EXPECT_NE(r.out, "survived\n");
  // runc kills the process (137); gVisor's limit covers the whole sandbox, which ends.
  if (GetParam() == "gvisor") {
    EXPECT_NE(r.exit_code, 0) << r.err;
  } else {
    EXPECT_EQ(r.exit_code, 137) << r.err;
    EXPECT_THAT(r.err, HasSubstr("out of memory"));
  }
}

TEST_P(RunTest, ForkBombIsContained) {
  auto r = RunCli(Run({"--pids", "64", "--timeout", "5s", "--", "sh", "-c",
                       "b() { b | b & }; b; sleep 3; echo host-alive"}));
  // The bomb hits the pids limit; the sandbox ends by itself or at the timeout. Under
  // gVisor the limit applies to the whole sandbox, which is stopped.
  if (GetParam() != "gvisor") {
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 124) << r.exit_code << r.err;
  }
  auto after = RunCli(Run({"--", "echo", "still-works"}));
  EXPECT_EQ(after.out, "still-works\n");
}

TEST_P(RunTest, DetachedSandboxExecCpLogsKillRm) {
  std::string id = Detach({"--", "sh", "-c", "echo started; sleep 600"});
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(StateOf(id), "running");
  auto ps = RunCli({"ps"});
  EXPECT_THAT(ps.out, HasSubstr(id));

  auto exec = RunCli({"exec", id, "--", "sh", "-c", "echo from-exec; exit 3"});
  EXPECT_EQ(exec.exit_code, 3) << exec.err;
  EXPECT_EQ(exec.out, "from-exec\n");

  std::string local = "/tmp/tartarus-cp-" + std::to_string(getpid());
  std::string data(3 << 20, 'z');
  std::ofstream(local) << data;
  auto cp_in = RunCli({"cp", local, id + ":/root/data"});
  EXPECT_EQ(cp_in.exit_code, 0) << cp_in.err;
  EXPECT_EQ(RunCli({"exec", id, "--", "wc", "-c", "/root/data"}).out, "3145728 /root/data\n");
  unlink(local.c_str());
  auto cp_out = RunCli({"cp", id + ":/root/data", local});
  EXPECT_EQ(cp_out.exit_code, 0) << cp_out.err;
  std::ifstream back(local);
  std::string copied((std::istreambuf_iterator<char>(back)), {});
  EXPECT_TRUE(copied == data);
  unlink(local.c_str());

  auto logs = RunCli({"logs", id});
  EXPECT_EQ(logs.out, "started\n");

  EXPECT_EQ(RunCli({"kill", id}).exit_code, 0);
  EXPECT_EQ(StateOf(id), "killed");
  EXPECT_THAT(Leftovers(StateDir(), id), IsEmpty());
  auto exec_after = RunCli({"exec", id, "--", "true"});
  EXPECT_EQ(exec_after.exit_code, 125);
  EXPECT_THAT(exec_after.err, HasSubstr("not running"));
  EXPECT_EQ(RunCli({"rm", id}).exit_code, 0);
  EXPECT_THAT(RunCli({"inspect", id}).err, HasSubstr("no such sandbox"));
}

TEST_P(RunTest, CtrlCKillsTheSandboxCleanly) {
  SpawnOptions options;
  options.argv = {TARTARUS_BIN, "--state-dir", StateDir(), "run",   "--runtime",
                  GetParam(),   "-q",          "--",       "sleep", "600"};
  options.fds = {{0, -1}, {1, -1}, {2, -1}};
  auto child = Spawn(options);
  ASSERT_TRUE(child);
  // Wait until it runs, then interrupt it as a terminal would.
  std::string id;
  for (int i = 0; i < 200 && id.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto ps = RunCli({"ps", "--state", "running", "--json"});
    if (ps.out.find("\"sleep\"") != std::string::npos) {
      auto pos = ps.out.find("\"id\": \"");
      if (pos != std::string::npos) id = ps.out.substr(pos + 7, 12);
    }
  }
  ASSERT_FALSE(id.empty());
  child->Signal(SIGINT);
  auto status = child->Wait();
  ASSERT_TRUE(status);
  EXPECT_EQ(status->ShellCode(), 130);
  EXPECT_EQ(StateOf(id), "killed");
  EXPECT_THAT(Leftovers(StateDir(), id), IsEmpty());
  RunCli({"rm", id});
}

TEST_P(RunTest, CrashedSupervisorIsCleanedUp) {
  std::string id = Detach({"--", "sleep", "600"});
  ASSERT_FALSE(id.empty());
  auto inspect = RunCli({"inspect", id});
  auto pos = inspect.out.find("\"supervisor_pid\": ");
  ASSERT_NE(pos, std::string::npos);
  pid_t pid = std::stoi(inspect.out.substr(pos + 18));
  ASSERT_GT(pid, 1);
  kill(pid, SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // Any command reconciles: leftovers go, the record says lost.
  RunCli({"ps"});
  EXPECT_EQ(StateOf(id), "lost");
  EXPECT_THAT(Leftovers(StateDir(), id), IsEmpty());
  RunCli({"rm", id});
}

INSTANTIATE_TEST_SUITE_P(Backends, RunTest, ::testing::Values("container", "gvisor"),
                         [](const auto& info) { return info.param; });

TEST(Cli, BadInputGetsOneClearLine) {
  auto bad_memory = RunCli({"run", "--memory", "512X", "--", "true"});
  EXPECT_EQ(bad_memory.exit_code, 125);
  EXPECT_THAT(bad_memory.err, HasSubstr("--memory"));
  EXPECT_THAT(bad_memory.err, HasSubstr("unknown unit"));
  auto bad_template = RunCli({"run", "--template", "pyhton-ds", "--", "true"});
  EXPECT_EQ(bad_template.exit_code, 125);
  EXPECT_THAT(bad_template.err, HasSubstr("unknown template 'pyhton-ds'"));
  auto bad_runtime = RunCli({"run", "--runtime", "kvm", "--", "true"});
  EXPECT_EQ(bad_runtime.exit_code, 125);
  EXPECT_THAT(bad_runtime.err, HasSubstr("kvm"));
  auto no_command = RunCli({"run"});
  EXPECT_EQ(no_command.exit_code, 125);
  EXPECT_THAT(no_command.err, HasSubstr("no command"));
  auto unknown_id = RunCli({"inspect", "ffffffffffff"});
  EXPECT_EQ(unknown_id.exit_code, 125);
  EXPECT_THAT(unknown_id.err, HasSubstr("no such sandbox"));
}

TEST(Cli, HelpExplains) {
  auto r = RunCli({"run", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--timeout"));
  EXPECT_THAT(r.out, HasSubstr("Exit codes"));
}

}  // namespace
}  // namespace tartarus::testing

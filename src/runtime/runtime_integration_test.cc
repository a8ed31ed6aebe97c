// Integration tests of the Tartarus runtime's OCI backends: real sandboxes on a busybox
// root filesystem, driven through a fake agent (testdata/fake_agent.cc). Need root and
// the runtime binaries; otherwise each test is skipped with the reason.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/subprocess.h"
#include "runtime/cgroups.h"
#include "runtime/lethe.h"
#include "runtime/oci_backend.h"
#include "runtime/oci_bundle.h"
#include "runtime/owner.h"
#include "runtime/runtime.h"

namespace tartarus::runtime {
namespace {

using std::chrono::milliseconds;

std::string ReadOr(const std::string& path) {
  auto text = ReadSmallFile(path, 1 << 20);
  return text ? *text : "";
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// A busybox-static root filesystem: /bin/busybox plus one symlink per applet.
void MakeBusyboxRootfs(const std::string& dir) {
  for (const char* sub : {"", "/bin", "/proc", "/sys", "/dev", "/tmp", "/etc", "/root"}) {
    ASSERT_EQ(mkdir((dir + sub).c_str(), 0755), 0) << dir + sub;
  }
  ASSERT_EQ(chmod((dir + "/tmp").c_str(), 01777), 0);
  auto copied = RunCommand({"cp", "/bin/busybox", dir + "/bin/busybox"});
  ASSERT_TRUE(copied && copied->status.Success());
  auto list = RunCommand({"/bin/busybox", "--list"});
  ASSERT_TRUE(list && list->status.Success());
  size_t pos = 0;
  while (pos < list->out.size()) {
    size_t end = list->out.find('\n', pos);
    if (end == std::string::npos) end = list->out.size();
    std::string applet = list->out.substr(pos, end - pos);
    pos = end + 1;
    if (applet.empty() || applet == "busybox") continue;
    ASSERT_EQ(symlink("busybox", (dir + "/bin/" + applet).c_str()), 0) << applet;
  }
  ASSERT_TRUE(WriteSmallFile(dir + "/etc/template-file", "from the template\n"));
}

// Talks to the fake agent: one command per line, answers end with "__EXIT__ <code>".
class AgentClient {
 public:
  AgentClient(UniqueFd to, UniqueFd from) : to_(std::move(to)), from_(std::move(from)) {}

  struct Reply {
    int code = -1;
    std::string out;
  };

  Reply Run(const std::string& command, milliseconds timeout = milliseconds(20000)) {
    Reply reply;
    std::string line = command + "\n";
    if (write(to_.Get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
      reply.out = "write to agent failed";
      return reply;
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      size_t marker = buffer_.find("__EXIT__ ");
      if (marker != std::string::npos) {
        size_t end = buffer_.find('\n', marker);
        if (end != std::string::npos) {
          reply.out = buffer_.substr(0, marker);
          reply.code = std::atoi(buffer_.substr(marker + 9, end - marker - 9).c_str());
          buffer_.erase(0, end + 1);
          return reply;
        }
      }
      auto left =
          std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd pfd{from_.Get(), POLLIN, 0};
      if (poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      ssize_t n = read(from_.Get(), chunk, sizeof chunk);
      if (n <= 0) break;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
    reply.out = buffer_ + " [agent stream ended or timed out]";
    return reply;
  }

  void CloseInput() { to_.Reset(); }

 private:
  UniqueFd to_;
  UniqueFd from_;
  std::string buffer_;
};

// Lines of /proc/*/cmdline that mention `needle`, except our own process.
std::vector<std::string> ProcessesMentioning(const std::string& needle) {
  std::vector<std::string> found;
  DIR* dir = opendir("/proc");
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (std::atoi(name.c_str()) == getpid()) continue;
    std::string cmdline = ReadOr("/proc/" + name + "/cmdline");
    for (char& c : cmdline) c = c ? c : ' ';
    if (cmdline.find(needle) != std::string::npos) found.push_back(name + ": " + cmdline);
  }
  closedir(dir);
  return found;
}

class RuntimeIntegrationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "skipped: needs root (mounts, cgroups)";
    char pattern[] = "/tmp/tartarus-rt-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    tmp_ = pattern;
    rootfs_ = tmp_ + "/rootfs";
    MakeBusyboxRootfs(rootfs_);
    config_.state_dir = tmp_ + "/state";
    auto backend = MakeBackend(GetParam(), config_);
    ASSERT_TRUE(backend) << backend.error().message;
    backend_ = std::move(*backend);
    if (auto available = backend_->CheckAvailable(); !available) {
      GTEST_SKIP() << "skipped: " << available.error().message;
    }
  }

  void TearDown() override {
    if (tmp_.empty()) return;
    (void)CleanupLeftovers(config_);
    auto removed = RunCommand({"rm", "-rf", "--one-file-system", tmp_});
    (void)removed;
  }

  SandboxSpec Spec(const std::string& id) {
    SandboxSpec spec;
    spec.id = id;
    spec.rootfs = rootfs_;
    spec.agent_path = TARTARUS_FAKE_AGENT;
    spec.hostname = "sbx-" + id;
    spec.limits.memory_bytes = 64ull << 20;
    spec.limits.pids = 32;
    spec.limits.disk_bytes = 8ull << 20;
    return spec;
  }

  std::string Id(const std::string& base) {
    std::string name = GetParam();
    for (char& c : name) c = c == '_' ? '-' : c;
    return base + "-" + name + "-" + std::to_string(getpid());
  }

  // Everything Destroy must remove, for sandbox `id`.
  void ExpectNothingLeft(const std::string& id) {
    EXPECT_FALSE(Exists(SandboxDir(config_, id)));
    std::string mountinfo = ReadOr("/proc/self/mountinfo");
    EXPECT_EQ(mountinfo.find(SandboxDir(config_, id)), std::string::npos) << mountinfo;
    for (const char* hierarchy : {"memory", "pids", "cpu", "cpuacct", "freezer", "devices", "blkio",
                                  "cpuset", "systemd", "unified", ""}) {
      std::string dir = std::string(kCgroupRoot) + "/" + hierarchy + "/tartarus/" + id;
      EXPECT_FALSE(Exists(dir)) << dir;
    }
    EXPECT_EQ(ProcessesMentioning(id), std::vector<std::string>());
    for (const char* runtime : {"runc", "runsc", "crun"}) {
      EXPECT_FALSE(Exists(RuntimeStateDir(config_) + "/" + runtime + "/" + id));
    }
  }

  std::string tmp_;
  std::string rootfs_;
  RuntimeConfig config_;
  std::unique_ptr<Backend> backend_;
};

TEST_P(RuntimeIntegrationTest, IsolationProfile) {
  std::string id = Id("iso");
  std::string marker = tmp_ + "/host-only-marker";
  ASSERT_TRUE(WriteSmallFile(marker, "secret"));
  auto sandbox = backend_->Start(Spec(id));
  ASSERT_TRUE(sandbox) << sandbox.error().message;
  AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());

  auto echo = agent.Run("echo hello stream");
  EXPECT_EQ(echo.code, 0) << ReadOr(SandboxDir(config_, id) + "/runtime.log");
  EXPECT_EQ(echo.out, "hello stream\n");
  // The agent answered: the runtime has started the sandbox (the other tests Destroy
  // without asking, which must work as well).
  auto started = (*sandbox)->WaitStarted();
  EXPECT_TRUE(started) << started.error().message;
  EXPECT_TRUE((*sandbox)->WaitStarted());  // idempotent
  EXPECT_EQ(agent.Run("hostname").out, "sbx-" + id + "\n");
  // A new network namespace: loopback only.
  auto net = agent.Run("cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '");
  EXPECT_EQ(net.out, "lo\n");
  // The agent is PID 1 of its own pid namespace.
  auto init = agent.Run("tr '\\0' ' ' < /proc/1/cmdline");
  // runc and crun hand the agent its protocol fds with --preserve-fds; runsc cannot.
  EXPECT_EQ(init.out, std::string(kAgentGuestPath) +
                          (GetParam() == "gvisor" ? " --stdio " : " --seccomp --fds 3,4 "));
  // ...and the commands it runs do not inherit them.
  EXPECT_EQ(agent.Run("ls /proc/self/fd/3 /proc/self/fd/4 2>/dev/null | wc -l").out, "0\n");
  // Bounding set = CAP_SETGID (6), CAP_SETUID (7), CAP_SETPCAP (8).
  auto caps = agent.Run("grep -E '^Cap(Bnd|Inh|Amb)' /proc/self/status");
  EXPECT_NE(caps.out.find("CapBnd:\t00000000000001c0"), std::string::npos) << caps.out;
  EXPECT_NE(caps.out.find("CapInh:\t0000000000000000"), std::string::npos) << caps.out;
  if (GetParam() != "gvisor") {  // gVisor's /proc/<pid>/status has no NoNewPrivs line
    EXPECT_NE(agent.Run("grep NoNewPrivs /proc/self/status").out.find("1"), std::string::npos);
  }
  // Seccomp denies new namespaces, even user namespaces that need no capability.
  EXPECT_NE(agent.Run("unshare -U true").code, 0);
  EXPECT_NE(agent.Run("unshare -n true").code, 0);
  // Host files are invisible; the agent is mounted read-only.
  EXPECT_NE(agent.Run("cat " + marker).code, 0);
  EXPECT_NE(agent.Run("echo x >> " + std::string(kAgentGuestPath)).code, 0);
  EXPECT_NE(agent.Run("cat /proc/kcore | head -c 1").out.size(), 1u);

  ASSERT_TRUE((*sandbox)->Destroy());
  ExpectNothingLeft(id);
  EXPECT_TRUE((*sandbox)->Destroy());  // idempotent
}

TEST_P(RuntimeIntegrationTest, LetheLayerIsPrivateSizedAndEphemeral) {
  std::string id = Id("fs");
  auto sandbox = backend_->Start(Spec(id));
  ASSERT_TRUE(sandbox) << sandbox.error().message;
  AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());

  EXPECT_EQ(agent.Run("cat /etc/template-file").out, "from the template\n");
  EXPECT_EQ(agent.Run("echo changed > /etc/template-file && echo new > /new-file").code, 0);
  EXPECT_EQ(agent.Run("cat /etc/template-file /new-file").out, "changed\nnew\n");
  EXPECT_EQ(agent.Run("rm /bin/ls").code, 0);
  // The template is never written.
  EXPECT_EQ(ReadOr(rootfs_ + "/etc/template-file"), "from the template\n");
  EXPECT_FALSE(Exists(rootfs_ + "/new-file"));
  EXPECT_TRUE(Exists(rootfs_ + "/bin/ls"));
  // The disk limit (8 MiB) gives ENOSPC.
  auto fill = agent.Run("dd if=/dev/zero of=/big bs=1M count=32 2>&1");
  EXPECT_NE(fill.code, 0);
  EXPECT_NE(fill.out.find("No space left on device"), std::string::npos) << fill.out;

  ASSERT_TRUE((*sandbox)->Destroy());
  ExpectNothingLeft(id);

  // A new sandbox from the same template starts clean.
  auto again = backend_->Start(Spec(id));
  ASSERT_TRUE(again) << again.error().message;
  AgentClient agent2((*again)->TakeToAgent(), (*again)->TakeFromAgent());
  EXPECT_EQ(agent2.Run("cat /etc/template-file; test -e /new-file || echo clean").out,
            "from the template\nclean\n");
  ASSERT_TRUE((*again)->Destroy());
  ExpectNothingLeft(id);
}

TEST_P(RuntimeIntegrationTest, MemoryLimitAndUsage) {
  std::string id = Id("mem");
  auto sandbox = backend_->Start(Spec(id));
  ASSERT_TRUE(sandbox) << sandbox.error().message;
  AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());
  // Start does not wait for the runtime to create the cgroup.
  ASSERT_TRUE((*sandbox)->WaitStarted());

  auto usage = (*sandbox)->GetUsage();
  ASSERT_TRUE(usage) << usage.error().message;
  EXPECT_GT(usage->pids_current, 0u);
  EXPECT_GT(usage->memory_current_bytes, 0u);
  EXPECT_FALSE(usage->oom_killed);

  // The memory limit (64 MiB) stops a 100 MiB allocation: tail buffers its whole input.
  auto alloc = agent.Run("head -c 100m /dev/zero | tail > /dev/null; echo status=$?");
  EXPECT_EQ(alloc.out.find("status=0"), std::string::npos) << alloc.out;
  if (GetParam() == "gvisor") {
    // The host OOM killer hits the sentry: the whole sandbox ends (docs/runtime.md).
    EXPECT_EQ(alloc.code, -1) << alloc.out;
  } else {
    EXPECT_NE(alloc.out.find("status=137"), std::string::npos) << alloc.out;
    usage = (*sandbox)->GetUsage();
    ASSERT_TRUE(usage) << usage.error().message;
    EXPECT_TRUE(usage->oom_killed);
    EXPECT_GT(usage->cpu_ns, 0u);
    EXPECT_GT(usage->memory_peak_bytes, 32ull << 20);
    EXPECT_LE(usage->memory_peak_bytes, 64ull << 20);
  }
  ASSERT_TRUE((*sandbox)->Destroy());
  ExpectNothingLeft(id);
}

TEST_P(RuntimeIntegrationTest, PidsLimit) {
  std::string id = Id("pids");
  auto sandbox = backend_->Start(Spec(id));
  ASSERT_TRUE(sandbox) << sandbox.error().message;
  AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());
  // The pids limit (32) stops a fork loop.
  auto forks = agent.Run("i=0; while [ $i -lt 400 ]; do sleep 0.3 & i=$((i+1)); done; wait");
  if (GetParam() == "gvisor") {
    // The host limit counts gVisor's own threads and stubs too: when the sentry cannot
    // make one, the whole sandbox ends (docs/runtime.md).
    EXPECT_TRUE(forks.code == -1 || forks.out.find("fork") != std::string::npos) << forks.out;
  } else {
    EXPECT_NE(forks.out.find("can't fork"), std::string::npos) << forks.out;
    EXPECT_EQ(agent.Run("echo still here").out, "still here\n");
  }
  ASSERT_TRUE((*sandbox)->Destroy());
  ExpectNothingLeft(id);
}

TEST_P(RuntimeIntegrationTest, AgentExitEndsSandboxAndDestroyIsCheap) {
  std::string id = Id("exit");
  auto sandbox = backend_->Start(Spec(id));
  ASSERT_TRUE(sandbox) << sandbox.error().message;
  AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());
  EXPECT_EQ(agent.Run("true").code, 0);
  agent.CloseInput();  // the agent exits on EOF
  auto end = agent.Run("", milliseconds(10000));
  EXPECT_EQ(end.code, -1);  // stream closed
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*sandbox)->Destroy());
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, milliseconds(500));
  ExpectNothingLeft(id);
}

TEST_P(RuntimeIntegrationTest, StartFailsWithRuntimeError) {
  SandboxSpec spec = Spec(Id("bad"));
  spec.agent_path = tmp_ + "/not-an-agent";  // exists, but is not executable
  ASSERT_TRUE(WriteSmallFile(spec.agent_path, "no"));
  auto sandbox = backend_->Start(spec);
  if (sandbox) {
    // Start does not wait for the sandbox: the stream must end at once, and WaitStarted
    // reports the runtime's error (some runtimes report exec failures only on the stream).
    AgentClient agent((*sandbox)->TakeToAgent(), (*sandbox)->TakeFromAgent());
    EXPECT_EQ(agent.Run("true", milliseconds(10000)).code, -1);
    auto started = (*sandbox)->WaitStarted();
    if (!started) {
      EXPECT_NE(started.error().message.find("exited early"), std::string::npos)
          << started.error().message;
    }
    ASSERT_TRUE((*sandbox)->Destroy());
  } else {
    EXPECT_NE(sandbox.error().message.find("exited early"), std::string::npos)
        << sandbox.error().message;
  }
  ExpectNothingLeft(spec.id);
}

TEST_P(RuntimeIntegrationTest, CleanupLeftoversAfterOwnerIsKilled) {
  std::string id = Id("orphan");
  SandboxSpec spec = Spec(id);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(ready[0]);
    auto sandbox = backend_->Start(spec);
    char status = sandbox && (*sandbox)->WaitStarted() ? 'y' : 'n';
    if (write(ready[1], &status, 1) != 1) _exit(1);
    if (sandbox) (void)(*sandbox)->TakeToAgent().Release();  // keep the agent alive
    while (true) pause();
  }
  close(ready[1]);
  char status = 0;
  ASSERT_EQ(read(ready[0], &status, 1), 1);
  close(ready[0]);
  ASSERT_EQ(status, 'y');
  // Nothing to clean while the owner lives.
  auto none = CleanupLeftovers(config_);
  ASSERT_TRUE(none) << none.error().message;
  EXPECT_TRUE(none->empty());
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  EXPECT_TRUE(Exists(SandboxDir(config_, id)));

  auto cleaned = CleanupLeftovers(config_);
  ASSERT_TRUE(cleaned) << cleaned.error().message;
  EXPECT_EQ(*cleaned, std::vector<std::string>{id});
  ExpectNothingLeft(id);
  auto again = CleanupLeftovers(config_);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->empty());
}

// Lethe on its own (needs root for the mounts).
TEST(LetheTest, CopyOnWriteSizedAndGone) {
  if (geteuid() != 0) GTEST_SKIP() << "skipped: needs root (mounts)";
  char pattern[] = "/tmp/tartarus-lethe-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  std::string tmp = pattern;
  ASSERT_EQ(mkdir((tmp + "/lower").c_str(), 0755), 0);
  ASSERT_TRUE(WriteSmallFile(tmp + "/lower/file", "template"));
  {
    auto lethe = Lethe::Create(tmp + "/lower", tmp + "/layer", tmp + "/root", 1 << 20);
    ASSERT_TRUE(lethe) << lethe.error().message;
    EXPECT_EQ(ReadOr(tmp + "/root/file"), "template");
    ASSERT_TRUE(WriteSmallFile(tmp + "/root/file", "changed"));
    EXPECT_EQ(ReadOr(tmp + "/root/file"), "changed");
    EXPECT_EQ(ReadOr(tmp + "/lower/file"), "template");
    auto big = WriteSmallFile(tmp + "/root/big", std::string(2 << 20, 'x'));
    ASSERT_FALSE(big);
    EXPECT_NE(big.error().message.find("No space left"), std::string::npos) << big.error().message;
    ASSERT_TRUE(lethe->Destroy());
    EXPECT_TRUE(lethe->Destroy());
  }
  EXPECT_FALSE(Exists(tmp + "/root"));
  EXPECT_FALSE(Exists(tmp + "/layer"));
  EXPECT_EQ(ReadOr("/proc/self/mountinfo").find(tmp), std::string::npos);
  // Teardown of what is already gone is fine; a lower dir that is missing fails cleanly.
  EXPECT_TRUE(Lethe::Teardown(tmp + "/layer", tmp + "/root"));
  EXPECT_FALSE(Lethe::Create(tmp + "/missing", tmp + "/layer", tmp + "/root", 1 << 20));
  EXPECT_FALSE(Exists(tmp + "/root"));
  (void)RunCommand({"rm", "-rf", "--one-file-system", tmp});
}

// DetachNow: one lazy detach of the tmpfs takes the overlay inside it along (the layout
// of the OCI backends), a root outside is detached on its own; the mount points go too.
TEST(LetheTest, DetachNowUnmountsBothLayoutsAndRemovesTheDirs) {
  if (geteuid() != 0) GTEST_SKIP() << "skipped: needs root (mounts)";
  char pattern[] = "/tmp/tartarus-lethe-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  std::string tmp = pattern;
  ASSERT_EQ(mkdir((tmp + "/lower").c_str(), 0755), 0);
  ASSERT_TRUE(WriteSmallFile(tmp + "/lower/file", "template"));
  for (const std::string& root : {tmp + "/layer/rootfs", tmp + "/root"}) {
    auto lethe = Lethe::Create(tmp + "/lower", tmp + "/layer", root, 1 << 20);
    ASSERT_TRUE(lethe) << lethe.error().message;
    EXPECT_EQ(ReadOr(root + "/file"), "template");
    EXPECT_TRUE(lethe->DetachNow()) << root;
    EXPECT_FALSE(Exists(root));
    EXPECT_FALSE(Exists(tmp + "/layer"));
    EXPECT_EQ(ReadOr("/proc/self/mountinfo").find(tmp), std::string::npos) << root;
    EXPECT_FALSE(lethe->DetachNow());  // nothing left to detach
    EXPECT_TRUE(lethe->Destroy());
  }
  (void)RunCommand({"rm", "-rf", "--one-file-system", tmp});
}

INSTANTIATE_TEST_SUITE_P(Backends, RuntimeIntegrationTest,
                         ::testing::Values("container", "gvisor", "container-crun"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) c = c == '-' ? '_' : c;
                           return name;
                         });

}  // namespace
}  // namespace tartarus::runtime

// tartarus-agent's init mode (guest agent, microVM boot): the boot options, the module
// order and the mount plan as data, and the real binary's --vsock / --init arguments.
#include "guest/init.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace tartarus::guest {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(BootOptions, ReadsTheTartarusKeysAndIgnoresTheKernels) {
  auto options = ParseBootOptions(
      "console=ttyS0 reboot=k panic=-1 tartarus.root=/dev/vda tartarus.vsock_port=5000 "
      "tartarus.disk_bytes=2097152 tartarus.hostname=box-1 tartarus.agent_tty=/dev/hvc0 quiet "
      "-- --init\n");
  ASSERT_TRUE(options) << options.error().message;
  EXPECT_EQ(options->root_device, "/dev/vda");
  EXPECT_EQ(options->agent_tty, "/dev/hvc0");
  EXPECT_EQ(options->root_fstype, "ext4");
  EXPECT_EQ(options->vsock_port, 5000u);
  EXPECT_EQ(options->disk_bytes, 2097152u);
  EXPECT_EQ(options->hostname, "box-1");
}

TEST(BootOptions, DefaultsWhereTheHostSaysNothing) {
  auto options = ParseBootOptions("tartarus.root=/dev/vdb");
  ASSERT_TRUE(options) << options.error().message;
  EXPECT_EQ(options->vsock_port, kDefaultVsockPort);
  EXPECT_EQ(options->hostname, "tartarus");
  EXPECT_EQ(options->disk_bytes, 1ull << 30);
  EXPECT_EQ(options->agent_tty, "") << "vsock unless the host asks for a terminal";
}

TEST(BootOptions, RefusesBadValuesNamingTheKey) {
  struct Case {
    const char* cmdline;
    const char* expected;
  };
  const Case cases[] = {
      {"console=ttyS0", "no tartarus.root="},
      {"tartarus.root=vda", "tartarus.root"},
      {"tartarus.root=/dev/", "tartarus.root"},
      {"tartarus.root=/dev/../etc/x", "tartarus.root"},
      {"tartarus.root=/dev/vda tartarus.vsock_port=0", "tartarus.vsock_port"},
      {"tartarus.root=/dev/vda tartarus.vsock_port=4294967295", "tartarus.vsock_port"},
      {"tartarus.root=/dev/vda tartarus.vsock_port=12x", "tartarus.vsock_port"},
      {"tartarus.root=/dev/vda tartarus.disk_bytes=10", "tartarus.disk_bytes"},
      {"tartarus.root=/dev/vda tartarus.disk_bytes=-1", "tartarus.disk_bytes"},
      {"tartarus.root=/dev/vda tartarus.hostname=a_b", "tartarus.hostname"},
      {"tartarus.root=/dev/vda tartarus.rootfstype=Ext4", "tartarus.rootfstype"},
      {"tartarus.root=/dev/vda tartarus.colour=red", "unknown key tartarus.colour"},
      {"tartarus.root=/dev/vda tartarus.hostname", "has no value"},
      {"tartarus.root=/dev/vda tartarus.agent_tty=hvc0", "tartarus.agent_tty"},
      {"tartarus.root=/dev/vda tartarus.agent_tty=/dev/../etc/passwd", "tartarus.agent_tty"},
  };
  for (const Case& c : cases) {
    auto options = ParseBootOptions(c.cmdline);
    ASSERT_FALSE(options) << c.cmdline;
    EXPECT_EQ(options.error().code, ErrorCode::kInvalidArgument) << c.cmdline;
    EXPECT_THAT(options.error().message, HasSubstr(c.expected)) << c.cmdline;
  }
}

TEST(BootOptions, WordsAfterDoubleDashBelongToInit) {
  auto options = ParseBootOptions("tartarus.root=/dev/vda -- tartarus.colour=red");
  ASSERT_TRUE(options) << options.error().message;
}

// The Debian cloud kernel's shape: vsock transport -> common -> vsock; virtio_mmio ->
// virtio, virtio_ring.
constexpr const char* kModulesDep =
    "kernel/drivers/virtio/virtio.ko:\n"
    "kernel/drivers/virtio/virtio_ring.ko:\n"
    "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko "
    "kernel/drivers/virtio/virtio.ko\n"
    "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko "
    "kernel/drivers/virtio/virtio.ko\n"
    "kernel/net/vmw_vsock/vsock.ko:\n"
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n"
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: "
    "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko "
    "kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko "
    "kernel/net/vmw_vsock/vsock.ko\n"
    "kernel/fs/overlayfs/overlay.ko:\n";

TEST(ModuleLoadOrder, DependenciesFirstEachOnce) {
  auto order = ModuleLoadOrder(
      kModulesDep, {"virtio_mmio", "virtio-blk", "overlay", "vmw_vsock_virtio_transport"});
  ASSERT_TRUE(order) << order.error().message;
  EXPECT_THAT(
      *order,
      ElementsAre("kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                  "kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/block/virtio_blk.ko",
                  "kernel/fs/overlayfs/overlay.ko", "kernel/net/vmw_vsock/vsock.ko",
                  "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
                  "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko"));
}

TEST(ModuleLoadOrder, NothingWantedNothingLoaded) {
  auto order = ModuleLoadOrder(kModulesDep, {});
  ASSERT_TRUE(order) << order.error().message;
  EXPECT_TRUE(order->empty());
}

TEST(ModuleLoadOrder, RefusesUnknownModulesCyclesAndBadLines) {
  auto unknown = ModuleLoadOrder(kModulesDep, {"ext4"});
  ASSERT_FALSE(unknown);
  EXPECT_THAT(unknown.error().message, HasSubstr("ext4 is not in modules.dep"));

  auto cycle = ModuleLoadOrder("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n", {"a"});
  ASSERT_FALSE(cycle);
  EXPECT_THAT(cycle.error().message, HasSubstr("cycle"));

  auto missing_dep = ModuleLoadOrder("a.ko: b.ko\n", {"a"});
  ASSERT_FALSE(missing_dep);
  EXPECT_THAT(missing_dep.error().message, HasSubstr("b.ko is a dependency but has no line"));

  auto bad_line = ModuleLoadOrder("a.ko: \nthis is not a module\n", {"a"});
  ASSERT_FALSE(bad_line);
  EXPECT_THAT(bad_line.error().message, HasSubstr("line 2"));
}

TEST(MountPlan, EarlyMountsProcSysAndDevtmpfs) {
  auto plan = EarlyMountPlan();
  std::vector<std::string> mounted;
  for (const MountStep& step : plan) {
    if (step.kind == MountStep::Kind::kMount) mounted.push_back(step.fstype + ":" + step.target);
  }
  EXPECT_THAT(mounted, ElementsAre("proc:/proc", "sysfs:/sys", "devtmpfs:/dev"));
}

TEST(MountPlan, ImageReadOnlyUnderATmpfsOverlayThenTheBasicsMovedIn) {
  BootOptions options{.root_device = "/dev/vda", .disk_bytes = 64 << 20};
  auto plan = RootMountPlan(options);
  auto find = [&](std::string_view target, MountStep::Kind kind) -> const MountStep* {
    for (const MountStep& step : plan) {
      if (step.target == target && step.kind == kind) return &step;
    }
    return nullptr;
  };
  const MountStep* lower = find("/lower", MountStep::Kind::kMount);
  ASSERT_NE(lower, nullptr);
  EXPECT_EQ(lower->source, "/dev/vda");
  EXPECT_EQ(lower->fstype, "ext4");
  EXPECT_TRUE(lower->flags & MS_RDONLY);

  const MountStep* rw = find("/rw", MountStep::Kind::kMount);
  ASSERT_NE(rw, nullptr);
  EXPECT_EQ(rw->fstype, "tmpfs");
  EXPECT_THAT(rw->data, HasSubstr("size=67108864"));

  const MountStep* root = find(kNewRoot, MountStep::Kind::kMount);
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(root->fstype, "overlay");
  EXPECT_EQ(root->data, "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work");

  // Every mount point is created before it is used, and the layers before the overlay.
  std::vector<std::string> made;
  size_t index = 0;
  size_t overlay_index = 0, lower_index = 0, rw_index = 0;
  for (const MountStep& step : plan) {
    if (step.kind == MountStep::Kind::kMkdir) {
      made.push_back(step.target);
    } else {
      EXPECT_NE(std::find(made.begin(), made.end(), step.target), made.end())
          << step.target << " used before it was created";
    }
    if (&step == root) overlay_index = index;
    if (&step == lower) lower_index = index;
    if (&step == rw) rw_index = index;
    ++index;
  }
  EXPECT_LT(lower_index, overlay_index);
  EXPECT_LT(rw_index, overlay_index);
  std::string new_root = kNewRoot;
  for (const char* basic : {"/dev", "/proc", "/sys"}) {
    const MountStep* moved = find(new_root + basic, MountStep::Kind::kMove);
    ASSERT_NE(moved, nullptr) << basic;
    EXPECT_EQ(moved->source, basic);
  }
  EXPECT_NE(find(new_root + "/dev/pts", MountStep::Kind::kMount), nullptr);
}

TEST(MountPlan, RunningAPlanNamesTheStepThatFailed) {
  // A mount of a filesystem type that does not exist fails on any host, as root or not.
  std::vector<MountStep> plan = {{.kind = MountStep::Kind::kMount,
                                  .source = "none",
                                  .target = "/nonexistent-tartarus-target",
                                  .fstype = "tartarusfs"}};
  auto ran = RunMountPlan(plan);
  ASSERT_FALSE(ran);
  EXPECT_THAT(ran.error().message,
              HasSubstr("mount tartarusfs none on /nonexistent-tartarus-target"));
}

TEST(VsockPort, ParsesDecimalPortsOnly) {
  EXPECT_EQ(ParseVsockPort("1024").value_or(0), 1024u);
  EXPECT_FALSE(ParseVsockPort(""));
  EXPECT_FALSE(ParseVsockPort("0"));
  EXPECT_FALSE(ParseVsockPort("-1"));
  EXPECT_FALSE(ParseVsockPort("0x10"));
  EXPECT_FALSE(ParseVsockPort("4294967296"));
}

int RunAgent(std::vector<std::string> args, std::chrono::milliseconds wait, bool* still_running) {
  pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    std::string path = TARTARUS_AGENT_PATH;
    argv.push_back(path.data());
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + wait;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      *still_running = false;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  *still_running = true;
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

TEST(AgentBinary, RefusesBadVsockAndInitArguments) {
  bool running = false;
  for (std::vector<std::string> args : {std::vector<std::string>{"--vsock"},
                                        {"--vsock", "0"},
                                        {"--vsock", "port"},
                                        {"--vsock", "1024", "extra"},
                                        {"--init"},
                                        {"--seccomp", "--init"}}) {
    EXPECT_EQ(RunAgent(args, std::chrono::seconds(5), &running), 2) << args.back();
    EXPECT_FALSE(running);
  }
}

TEST(AgentBinary, ListensOnVsock) {
  int probe = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (probe < 0) GTEST_SKIP() << "skipped: this host has no AF_VSOCK sockets";
  close(probe);
  // A listener that bound and listens keeps running; a failed bind exits 1 at once.
  bool running = false;
  int code = RunAgent({"--vsock", std::to_string(40000 + getpid() % 20000)},
                      std::chrono::milliseconds(500), &running);
  EXPECT_TRUE(running) << "exited with " << code;
}

}  // namespace
}  // namespace tartarus::guest

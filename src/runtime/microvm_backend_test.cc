// The microvm backend (Tartarus runtime): the availability reasons, finding the guest
// kernel and initramfs, the VM's config file and kernel command line (checked against the
// guest agent's own parser), the hybrid vsock handshake against a fake VMM socket, the jailed
// VMM's argv and cgroup limits, the real tartarus-vmm accepting the config we write and
// running jailed with exactly the backend's argv (and CleanupLeftovers stopping it when its
// owner died), and `tartarus run --runtime microvm` end to end where the host can boot a
// Linux guest.
#include "runtime/microvm_backend.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/subprocess.h"
#include "guest/init.h"
#include "runtime/oci_backend.h"
#include "runtime/owner.h"
#include "template/ext4_image.h"

namespace tartarus::runtime {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string MakeTempDir() {
  char path[] = "/tmp/tartarus-microvm-test-XXXXXX";
  EXPECT_NE(mkdtemp(path), nullptr);
  return path;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream file(path);
  file << text;
}

void RemoveTree(const std::string& path) { (void)RunCommand({"rm", "-rf", path}); }

std::string StateDir() {
  const char* env = std::getenv("TARTARUS_STATE_DIR");
  return env && *env ? env : "/var/lib/tartarus";
}

TEST(MicrovmBackend, ReasonNamesWhatTheHostLacks) {
  KvmHostFacts no_kvm{.dev_kvm_usable = false, .dev_kvm_error = "No such file or directory"};
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("/dev/kvm did not open"));
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("No such file or directory"));

  KvmHostFacts pvm{.dev_kvm_usable = true, .pvm = true, .hardware_virt = false};
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("PVM"));
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("--runtime gvisor"));

  KvmHostFacts hardware{.dev_kvm_usable = true, .pvm = false, .hardware_virt = true};
  EXPECT_EQ(MicrovmUnavailableReason(hardware), "");
}

// The reason is the host's when the host is what lacks, then the guest side's: never a
// crash, never a silent fallback to another backend.
TEST(MicrovmBackend, RefusesWithTheFirstMissingPiece) {
  std::string state = MakeTempDir();
  auto backend = MakeBackend("microvm", {.state_dir = state});
  ASSERT_TRUE(backend) << backend.error().message;
  EXPECT_EQ((*backend)->Name(), "microvm");
  auto available = (*backend)->CheckAvailable();
  // An empty state dir has no kernel: no host passes.
  ASSERT_FALSE(available);
  EXPECT_EQ(available.error().code, ErrorCode::kFailedPrecondition);
  std::string host_reason = MicrovmUnavailableReason(ReadKvmHostFacts());
  if (!host_reason.empty()) {
    EXPECT_EQ(available.error().message, host_reason);
  } else if (available.error().message.find("tartarus-vmm") == std::string::npos) {
    EXPECT_THAT(available.error().message, HasSubstr("scripts/fetch-guest-kernel.sh"));
  }
  auto started = (*backend)->Start({.id = "microvm-test"});
  ASSERT_FALSE(started);
  EXPECT_THAT(started.error().message, HasSubstr(available.error().message));
  RemoveTree(state);
}

TEST(MicrovmBackend, FindsAKernelWithItsInitramfsOrSaysWhichScriptToRun) {
  std::string vmm = MakeTempDir();
  auto none = FindGuestImages(vmm);
  ASSERT_FALSE(none);
  EXPECT_THAT(none.error().message, HasSubstr("scripts/fetch-guest-kernel.sh " + vmm + "/kernel"));

  std::string release = "6.1.0-56-cloud-amd64";
  std::string boot = vmm + "/kernel/linux-image-" + release + "/boot";
  ASSERT_EQ(RunCommand({"mkdir", "-p", boot})->status.code, 0);
  WriteFile(boot + "/vmlinuz-" + release, "kernel");
  auto no_initramfs = FindGuestImages(vmm);
  ASSERT_FALSE(no_initramfs);
  EXPECT_THAT(no_initramfs.error().message, HasSubstr("scripts/build-guest-initramfs.sh " + vmm));
  EXPECT_THAT(no_initramfs.error().message, HasSubstr(release));

  WriteFile(vmm + "/initramfs-" + release + ".cpio.gz", "cpio");
  auto found = FindGuestImages(vmm);
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(found->release, release);
  EXPECT_EQ(found->kernel, boot + "/vmlinuz-" + release);
  EXPECT_EQ(found->initramfs, vmm + "/initramfs-" + release + ".cpio.gz");
  RemoveTree(vmm);
}

MicrovmLaunch TestLaunch() {
  SandboxSpec spec{.id = "box", .hostname = "box-7"};
  spec.limits.millicpus = 1500;
  spec.limits.memory_bytes = 256ull << 20;
  spec.limits.disk_bytes = 64ull << 20;
  auto launch =
      MakeMicrovmLaunch(spec, {.release = "r", .kernel = "/k/vmlinuz", .initramfs = "/k/i"},
                        "/t/rootfs.ext4", "vsock.sock");
  EXPECT_TRUE(launch) << launch.error().message;
  return launch.value_or(MicrovmLaunch{});
}

TEST(MicrovmLaunch, LimitsBecomeTheMachine) {
  MicrovmLaunch launch = TestLaunch();
  EXPECT_EQ(launch.vcpus, 2u);  // a fraction of a CPU still needs a whole vCPU
  EXPECT_EQ(launch.memory_mib, 256u);
  EXPECT_EQ(launch.disk_bytes, 64ull << 20);

  SandboxSpec small{.id = "s"};
  small.limits.millicpus = 250;
  auto one = MakeMicrovmLaunch(small, {}, "/i", "v");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->vcpus, 1u);

  // The hostname goes on the kernel command line: nothing that could add a kernel argument.
  for (const char* bad : {"a b", "x tartarus.root=/dev/vdb", "", "a\nb"}) {
    SandboxSpec spec{.id = "s", .hostname = bad};
    auto refused = MakeMicrovmLaunch(spec, {}, "/i", "v");
    ASSERT_FALSE(refused) << bad;
    EXPECT_THAT(refused.error().message, HasSubstr("hostname"));
  }
}

// Host and guest agree: what the backend writes, the agent's init mode reads back.
TEST(MicrovmLaunch, BootArgsAreWhatTheGuestAgentParses) {
  MicrovmLaunch launch = TestLaunch();
  std::string args = MicrovmBootArgs(launch);
  EXPECT_THAT(args, HasSubstr("console=ttyS0"));
  EXPECT_THAT(args, HasSubstr("reboot=k"));
  EXPECT_THAT(args, EndsWith(" -- --init"));
  auto parsed = guest::ParseBootOptions(args);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->root_device, "/dev/vda");
  EXPECT_EQ(parsed->vsock_port, kAgentVsockPort);
  EXPECT_EQ(parsed->disk_bytes, 64ull << 20);
  EXPECT_EQ(parsed->hostname, "box-7");
}

TEST(MicrovmLaunch, ConfigFileIsFirecrackersJson) {
  MicrovmLaunch launch = TestLaunch();
  auto config = nlohmann::json::parse(MicrovmConfigJson(launch));
  EXPECT_EQ(config["boot-source"]["kernel_image_path"], "/k/vmlinuz");
  EXPECT_EQ(config["boot-source"]["initrd_path"], "/k/i");
  EXPECT_EQ(config["boot-source"]["boot_args"], MicrovmBootArgs(launch));
  EXPECT_EQ(config["machine-config"]["vcpu_count"], 2);
  EXPECT_EQ(config["machine-config"]["mem_size_mib"], 256);
  ASSERT_EQ(config["drives"].size(), 1u);
  EXPECT_EQ(config["drives"][0]["path_on_host"], "/t/rootfs.ext4");
  EXPECT_EQ(config["drives"][0]["is_root_device"], true);
  EXPECT_EQ(config["drives"][0]["is_read_only"], true);
  EXPECT_EQ(config["vsock"]["guest_cid"], kGuestCid);
  EXPECT_EQ(config["vsock"]["uds_path"], "vsock.sock");
  EXPECT_TRUE(config.contains("entropy"));
}

TEST(MicrovmJail, CgroupLimitsCoverTheGuestAndTheVmm) {
  MicrovmLaunch launch = TestLaunch();  // 1.5 CPUs, 256 MiB
  MicrovmCgroupLimits limits = MicrovmVmmLimits(launch);
  EXPECT_EQ(limits.cpu_quota_us, 150000u);  // the bandwidth asked for, per 100 ms
  EXPECT_EQ(limits.memory_max_bytes, (256ull << 20) + kVmmMemoryOverheadBytes + (4ull << 20));
  EXPECT_EQ(limits.pids_max, 2u + kVmmThreadAllowance);

  SandboxSpec small{.id = "s"};
  small.limits.millicpus = 250;
  small.limits.memory_bytes = 64ull << 20;
  auto quarter = MakeMicrovmLaunch(small, {}, "/i", "/v");
  ASSERT_TRUE(quarter);
  EXPECT_EQ(MicrovmVmmLimits(*quarter).cpu_quota_us, 25000u);
  EXPECT_EQ(MicrovmVmmLimits(*quarter).pids_max, 1u + kVmmThreadAllowance);
  // The kernel's smallest quota is 1 ms.
  small.limits.millicpus = 1;
  auto tiny = MakeMicrovmLaunch(small, {}, "/i", "/v");
  ASSERT_TRUE(tiny);
  EXPECT_EQ(MicrovmVmmLimits(*tiny).cpu_quota_us, 1000u);
}

MicrovmLaunch JailTestLaunch(const std::string& sandbox_dir) {
  MicrovmLaunch launch = TestLaunch();
  launch.vsock_uds = MicrovmVsockPath(sandbox_dir);
  return launch;
}

TEST(MicrovmJail, ArgvRunsTheVmmJailedWithTheLimits) {
  const std::string dir = "/var/lib/tartarus/runtime/sandboxes/abc123";
  auto argv =
      MicrovmVmmArgv({.vmm_path = "/opt/bin/tartarus-vmm", .sandbox_dir = dir, .id = "abc123"},
                     JailTestLaunch(dir));
  ASSERT_TRUE(argv) << argv.error().message;
  MicrovmCgroupLimits limits = MicrovmVmmLimits(JailTestLaunch(dir));
  const std::string uid = std::to_string(kDefaultVmmUid);
  const std::string gid = std::to_string(kDefaultVmmGid);
  EXPECT_EQ(*argv, (std::vector<std::string>{
                       "/opt/bin/tartarus-vmm", "--config-file", dir + "/vm.json", "--id", "abc123",
                       "--jail", dir + "/jail", "--uid", uid, "--gid", gid, "--cgroup-parent",
                       "tartarus-vmm", "--cpu-max", "150000 100000", "--memory-max",
                       std::to_string(limits.memory_max_bytes), "--pids-max", "18"}));
  EXPECT_EQ(MicrovmVsockPath(dir), dir + "/vsock/v.sock");
  EXPECT_NE(kDefaultVmmUid, 0u);
  EXPECT_NE(kDefaultVmmGid, 0u);

  auto custom = MicrovmVmmArgv(
      {.vmm_path = "/v", .sandbox_dir = dir, .id = "abc123", .uid = 1234, .gid = 5678},
      JailTestLaunch(dir));
  ASSERT_TRUE(custom) << custom.error().message;
  EXPECT_EQ((*custom)[8], "1234");
  EXPECT_EQ((*custom)[10], "5678");
}

TEST(MicrovmJail, ArgvRefusesRootRelativePathsAndLongSockets) {
  const std::string dir = "/s/box";
  auto refused = [&](MicrovmVmmCommand command, MicrovmLaunch launch, const char* what) {
    auto argv = MicrovmVmmArgv(command, launch);
    EXPECT_FALSE(argv) << what;
    if (!argv) {
      EXPECT_EQ(argv.error().code, ErrorCode::kInvalidArgument) << what;
      EXPECT_THAT(argv.error().message, HasSubstr(what));
    }
  };
  MicrovmVmmCommand command{.vmm_path = "/v", .sandbox_dir = dir, .id = "box"};
  MicrovmVmmCommand as_root = command;
  as_root.uid = 0;
  refused(as_root, JailTestLaunch(dir), "must not run as root");
  MicrovmVmmCommand root_group = command;
  root_group.gid = 0;
  refused(root_group, JailTestLaunch(dir), "must not run as root");
  MicrovmVmmCommand relative = command;
  relative.sandbox_dir = "s/box";
  refused(relative, JailTestLaunch(dir), "sandbox dir \"s/box\"");
  MicrovmLaunch relative_vsock = JailTestLaunch(dir);
  relative_vsock.vsock_uds = "vsock.sock";
  refused(command, relative_vsock, "vsock socket \"vsock.sock\"");
  MicrovmLaunch relative_image = JailTestLaunch(dir);
  relative_image.root_image = "rootfs.ext4";
  refused(command, relative_image, "root image \"rootfs.ext4\"");
  MicrovmVmmCommand bad_id = command;
  bad_id.id = "../x";
  EXPECT_FALSE(MicrovmVmmArgv(bad_id, JailTestLaunch(dir)));
  const std::string deep = "/" + std::string(100, 'd');
  refused({.vmm_path = "/v", .sandbox_dir = deep, .id = "box"}, JailTestLaunch(deep),
          "more than a Unix socket takes");
}

// A stand-in for tartarus-vmm's hybrid vsock listener: answers one connection with `reply`.
class FakeVsockListener {
 public:
  FakeVsockListener(std::string path, std::string reply, bool hang = false)
      : path_(std::move(path)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    listener_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(bind(listener_.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(listener_.Get(), 1), 0);
    thread_ = std::thread([this, reply, hang] {
      UniqueFd conn(accept(listener_.Get(), nullptr, nullptr));
      if (!conn) return;
      char c;
      while (recv(conn.Get(), &c, 1, 0) == 1 && c != '\n') request_.push_back(c);
      if (hang) {
        std::this_thread::sleep_for(500ms);
        return;
      }
      (void)!write(conn.Get(), reply.data(), reply.size());
      // The stream goes on after the OK line: the client must see these bytes.
      if (reply.rfind("OK", 0) == 0) {
        char buf[8];
        (void)!read(conn.Get(), buf, sizeof buf);
      }
    });
  }
  ~FakeVsockListener() {
    if (thread_.joinable()) thread_.join();
    unlink(path_.c_str());
  }
  const std::string& request() {
    if (thread_.joinable()) thread_.join();
    return request_;
  }

 private:
  std::string path_;
  UniqueFd listener_;
  std::thread thread_;
  std::string request_;
};

TEST(HybridVsock, ConnectsAndLeavesTheStreamBytesAfterOk) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/v.sock";
  {
    FakeVsockListener vmm(path, "OK 1073741824\nHELLO");
    auto stream = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_TRUE(stream) << stream.error().message;
    char buf[5];
    ASSERT_EQ(recv(stream->Get(), buf, sizeof buf, MSG_WAITALL), 5);
    EXPECT_EQ(std::string(buf, 5), "HELLO");
    ASSERT_EQ(write(stream->Get(), "x", 1), 1);
    EXPECT_EQ(vmm.request(), "CONNECT 1024");
  }
  RemoveTree(dir);
}

TEST(HybridVsock, NotYetListeningIsRetryableAndGarbageIsNot) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/v.sock";
  auto missing = ConnectHybridVsock(path, 1024, 500ms);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  {
    FakeVsockListener vmm(path, "");  // the VMM closes: nothing listens in the guest
    auto closed = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_FALSE(closed);
    EXPECT_EQ(closed.error().code, ErrorCode::kNotFound);
  }
  {
    FakeVsockListener vmm(path, "NOPE\n");
    auto garbage = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_FALSE(garbage);
    EXPECT_EQ(garbage.error().code, ErrorCode::kProtocol);
    EXPECT_THAT(garbage.error().message, HasSubstr("NOPE"));
  }
  {
    FakeVsockListener vmm(path, "", /*hang=*/true);
    auto silent = ConnectHybridVsock(path, 1024, 100ms);
    ASSERT_FALSE(silent);
    EXPECT_EQ(silent.error().code, ErrorCode::kTimeout);
  }
  RemoveTree(dir);
}

// The real tartarus-vmm takes the config file as written (relative vsock path included)
// and binds the socket in its working directory. The test guest does not drive vsock, so
// a CONNECT gets no OK: retryable, as while a Linux guest still boots. Runs where /dev/kvm
// runs the VMM's test guests (PVM included).
TEST(MicrovmLaunch, RealVmmAcceptsTheConfigFile) {
  if (!ReadKvmHostFacts().dev_kvm_usable) GTEST_SKIP() << "skipped: /dev/kvm does not open";
  std::string dir = MakeTempDir();
  WriteFile(dir + "/initramfs", "not really an initramfs");
  ASSERT_EQ(mkdir((dir + "/tree").c_str(), 0755), 0);
  WriteFile(dir + "/tree/hello", "hi\n");
  auto image = templates::EnsureExt4Image(dir + "/tree");
  if (!image && image.error().code == ErrorCode::kFailedPrecondition) {
    GTEST_SKIP() << "skipped: " << image.error().message;
  }
  ASSERT_TRUE(image) << image.error().message;
  SandboxSpec spec{.id = "vmm-config"};
  spec.limits.memory_bytes = 64ull << 20;
  auto launch = MakeMicrovmLaunch(
      spec, {.release = "test", .kernel = TARTARUS_IDLE_GUEST, .initramfs = dir + "/initramfs"},
      *image, "vsock.sock");
  ASSERT_TRUE(launch) << launch.error().message;
  WriteFile(dir + "/vm.json", MicrovmConfigJson(*launch));
  std::string log = dir + "/vmm.log";
  UniqueFd log_fd(open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  auto vmm = Spawn({.argv = {TARTARUS_VMM_PATH, "--config-file", dir + "/vm.json"},
                    .cwd = dir,
                    .fds = {{0, -1}, {1, log_fd.Get()}, {2, log_fd.Get()}}});
  ASSERT_TRUE(vmm) << vmm.error().message;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (access((dir + "/vsock.sock").c_str(), F_OK) != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    auto exited = vmm->TryWait();
    ASSERT_TRUE(exited);
    ASSERT_FALSE(exited->has_value()) << "tartarus-vmm exited: " << (*exited)->Describe();
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(access((dir + "/vsock.sock").c_str(), F_OK), 0) << "no vsock.sock in the VMM's cwd";
  auto stream = ConnectHybridVsock(dir + "/vsock.sock", kAgentVsockPort, 3000ms);
  ASSERT_FALSE(stream);
  EXPECT_NE(stream.error().code, ErrorCode::kProtocol) << stream.error().message;
  auto still = vmm->TryWait();
  ASSERT_TRUE(still);
  EXPECT_FALSE(still->has_value()) << "tartarus-vmm refused the config file";
  vmm->Signal(SIGKILL);
  (void)vmm->Wait();
  RemoveTree(dir);
}

std::string JailSkipReason() {
  if (geteuid() != 0) return "the jailed tartarus-vmm needs root (namespaces, mounts, chown)";
  if (!ReadKvmHostFacts().dev_kvm_usable) return "/dev/kvm does not open";
  return "";
}

// A sandbox dir laid out as MicrovmSandbox::Start lays it (vm.json and vsock/ owned by the
// VMM's uid, the ext4 image of a tiny tree), with `guest` as the kernel, and tartarus-vmm
// spawned with exactly the argv the backend builds.
struct JailedVmm {
  std::string state;
  std::string id = "jailtest-1";
  std::string dir;
  std::string log;
  MicrovmLaunch launch;
  Subprocess jailer;
  bool skipped = false;
  std::string skip_reason;
  ~JailedVmm() {
    if (jailer.pid() > 0) {
      jailer.Signal(SIGKILL);
      (void)jailer.Wait();
    }
    if (!state.empty()) RemoveTree(state);
  }
};

void StartJailedVmm(const std::string& guest, JailedVmm& vm) {
  vm.state = MakeTempDir();
  RuntimeConfig config{.state_dir = vm.state};
  vm.dir = SandboxDir(config, vm.id);
  ASSERT_EQ(RunCommand({"mkdir", "-p", vm.dir})->status.code, 0);
  ASSERT_EQ(mkdir((vm.state + "/tree").c_str(), 0755), 0);
  WriteFile(vm.state + "/tree/hello", "hi\n");
  WriteFile(vm.state + "/initramfs", "not really an initramfs");
  auto image = templates::EnsureExt4Image(vm.state + "/tree", [](std::string_view) {});
  if (!image && image.error().code == ErrorCode::kFailedPrecondition) {
    vm.skipped = true;
    vm.skip_reason = image.error().message;
    return;
  }
  ASSERT_TRUE(image) << image.error().message;
  SandboxSpec spec{.id = vm.id};
  spec.limits.memory_bytes = 64ull << 20;
  auto launch = MakeMicrovmLaunch(
      spec, {.release = "test", .kernel = guest, .initramfs = vm.state + "/initramfs"}, *image,
      MicrovmVsockPath(vm.dir));
  ASSERT_TRUE(launch) << launch.error().message;
  vm.launch = *launch;
  auto argv = MicrovmVmmArgv({.vmm_path = TARTARUS_VMM_PATH, .sandbox_dir = vm.dir, .id = vm.id},
                             vm.launch);
  ASSERT_TRUE(argv) << argv.error().message;
  WriteFile(MicrovmConfigPath(vm.dir), MicrovmConfigJson(vm.launch));
  ASSERT_EQ(chown(MicrovmConfigPath(vm.dir).c_str(), kDefaultVmmUid, kDefaultVmmGid), 0);
  ASSERT_EQ(mkdir((vm.dir + "/vsock").c_str(), 0700), 0);
  ASSERT_EQ(chown((vm.dir + "/vsock").c_str(), kDefaultVmmUid, kDefaultVmmGid), 0);
  vm.log = vm.dir + "/runtime.log";
  UniqueFd log_fd(open(vm.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  auto spawned =
      Spawn({.argv = *argv, .cwd = vm.dir, .fds = {{0, -1}, {1, log_fd.Get()}, {2, log_fd.Get()}}});
  ASSERT_TRUE(spawned) << spawned.error().message;
  vm.jailer = std::move(*spawned);
}

std::string ReadText(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool CgroupLeafExists(const std::string& id) {
  for (const char* mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    if (std::filesystem::exists(std::string(mount) + "/tartarus-vmm/" + id)) return true;
  }
  return false;
}

// The backend's argv, jailed, on the "hello" guest that halts by itself: the VMM ends
// cleanly, the jailer removed the jail and its cgroup, and the backend's teardown leaves the
// sandbox dir with nothing of the VM's.
TEST(MicrovmJail, RealVmmRunsJailedWithTheBackendsArgvAndLeavesNothing) {
  if (std::string reason = JailSkipReason(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  JailedVmm vm;
  ASSERT_NO_FATAL_FAILURE(StartJailedVmm(TARTARUS_HELLO_GUEST, vm));
  if (vm.skipped) GTEST_SKIP() << "skipped: " << vm.skip_reason;
  auto status = vm.jailer.WaitFor(20s);
  vm.jailer = Subprocess();
  ASSERT_TRUE(status) << status.error().message;
  std::string log = ReadText(vm.log);
  EXPECT_EQ(status->code, 0) << status->Describe() << ": " << log;
  EXPECT_THAT(log, HasSubstr("hello from the guest"));
  EXPECT_FALSE(std::filesystem::exists(MicrovmJailBase(vm.dir) + "/" + vm.id)) << log;
  EXPECT_FALSE(CgroupLeafExists(vm.id));
  ASSERT_TRUE(TeardownMicrovmJail(vm.dir, vm.id));
  EXPECT_FALSE(std::filesystem::exists(MicrovmJailBase(vm.dir)));
  EXPECT_FALSE(std::filesystem::exists(vm.dir + "/vsock"));
}

// pid (from /proc/<pid>/status) of the jailer's child, the VMM; 0 if none.
pid_t ChildOf(pid_t parent) {
  std::string p = std::to_string(parent);
  std::istringstream children(ReadText("/proc/" + p + "/task/" + p + "/children"));
  pid_t child = 0;
  children >> child;
  return child;
}

// A jailed VMM whose owner died (kill -9 of the CLI): it runs as the unprivileged uid with
// its vsock socket visible on the host, its limits are applied or the log says why not,
// and CleanupLeftovers, finding the jailer's pid in `runtime`, stops it and removes the
// jail, the cgroup leaf and the sandbox dir.
TEST(MicrovmJail, CleanupLeftoversStopsAJailedVmmWhoseOwnerDied) {
  if (std::string reason = JailSkipReason(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  JailedVmm vm;
  ASSERT_NO_FATAL_FAILURE(StartJailedVmm(TARTARUS_IDLE_GUEST, vm));
  if (vm.skipped) GTEST_SKIP() << "skipped: " << vm.skip_reason;
  const std::string uds = MicrovmVsockPath(vm.dir);
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (access(uds.c_str(), F_OK) != 0 && std::chrono::steady_clock::now() < deadline) {
    auto exited = vm.jailer.TryWait();
    ASSERT_TRUE(exited);
    ASSERT_FALSE(exited->has_value())
        << "the jailer exited: " << (*exited)->Describe() << ": " << ReadText(vm.log);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(access(uds.c_str(), F_OK), 0) << "no vsock socket on the host: " << ReadText(vm.log);
  auto stream = ConnectHybridVsock(uds, kAgentVsockPort, 3000ms);
  ASSERT_FALSE(stream);  // the idle guest has no vsock driver
  EXPECT_NE(stream.error().code, ErrorCode::kProtocol) << stream.error().message;
  EXPECT_TRUE(std::filesystem::exists(MicrovmJailBase(vm.dir) + "/" + vm.id + "/root"));

  pid_t vmm = ChildOf(vm.jailer.pid());
  ASSERT_GT(vmm, 0);
  auto vmm_start = ProcessStartTime(vmm);
  ASSERT_TRUE(vmm_start);
  const OwnerRecord vmm_process{vmm, *vmm_start};
  std::string status = ReadText("/proc/" + std::to_string(vmm) + "/status");
  const std::string ids = std::to_string(kDefaultVmmUid);
  EXPECT_THAT(status, HasSubstr("Uid:\t" + ids + "\t" + ids + "\t" + ids));
  EXPECT_THAT(status, HasSubstr("Gid:\t" + std::to_string(kDefaultVmmGid)));

  // Limits: set in the VM's leaf (cgroup v2's memory.max, or v1's memory.limit_in_bytes on
  // hybrid hosts such as these), or skipped with the jailer's reason in runtime.log.
  std::string log = ReadText(vm.log);
  MicrovmCgroupLimits limits = MicrovmVmmLimits(vm.launch);
  std::string memory_max;
  for (const char* file : {"/sys/fs/cgroup/tartarus-vmm/%s/memory.max",
                           "/sys/fs/cgroup/unified/tartarus-vmm/%s/memory.max",
                           "/sys/fs/cgroup/memory/tartarus-vmm/%s/memory.limit_in_bytes"}) {
    std::string path = file;
    path.replace(path.find("%s"), 2, vm.id);
    if (std::filesystem::exists(path)) memory_max = ReadText(path);
  }
  if (!memory_max.empty()) {
    EXPECT_EQ(memory_max, std::to_string(limits.memory_max_bytes) + "\n");
  } else {
    EXPECT_THAT(log, HasSubstr("memory limit not set")) << log;
  }

  // The owner is dead (its start time does not match); the jailer is the runtime process.
  RuntimeConfig config{.state_dir = vm.state};
  WriteFile(vm.dir + "/owner", FormatOwnerRecord({getpid(), 1}));
  auto start = ProcessStartTime(vm.jailer.pid());
  ASSERT_TRUE(start);
  WriteFile(vm.dir + "/runtime", FormatOwnerRecord({vm.jailer.pid(), *start}));
  auto cleaned = CleanupLeftovers(config);
  ASSERT_TRUE(cleaned) << cleaned.error().message;
  EXPECT_EQ(*cleaned, std::vector<std::string>{vm.id});
  auto ended = vm.jailer.WaitFor(5s);
  vm.jailer = Subprocess();
  ASSERT_TRUE(ended);
  EXPECT_FALSE(ended->Success());
  auto gone_by = std::chrono::steady_clock::now() + 5s;
  while (OwnerAlive(vmm_process) && std::chrono::steady_clock::now() < gone_by) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_FALSE(OwnerAlive(vmm_process)) << "the jailed VMM outlived the cleanup";
  EXPECT_FALSE(std::filesystem::exists(vm.dir));
  EXPECT_FALSE(CgroupLeafExists(vm.id));
}

// scripts/build-guest-initramfs.sh with this build's agent, into a temporary directory (the
// kernel comes from, or is fetched into, the state dir's cache). Skips when the kernel
// package cannot be had (no network to Debian's mirror, no apt-get).
TEST(MicrovmGuestInitramfs, BuildsAnArchiveTheAgentCanBootFrom) {
  for (const char* tool : {"cpio", "gzip", "objcopy", "apt-get", "dpkg-deb"}) {
    if (FindExecutable(tool).empty()) GTEST_SKIP() << "skipped: " << tool << " not installed";
  }
  std::string out = MakeTempDir();
  std::string script = std::string(TARTARUS_SOURCE_DIR) + "/scripts/build-guest-initramfs.sh";
  auto built =
      RunCommand({script, "--agent", TARTARUS_AGENT_PATH, "--out", out, StateDir() + "/vmm"},
                 std::chrono::minutes(10));
  ASSERT_TRUE(built) << built.error().message;
  if (!built->status.Success() &&
      built->err.find("fetching the guest kernel failed") != std::string::npos) {
    RemoveTree(out);
    GTEST_SKIP() << "skipped: the kernel package could not be fetched: " << built->err;
  }
  ASSERT_TRUE(built->status.Success()) << built->err;
  std::string archive = built->out.substr(0, built->out.find('\n'));
  ASSERT_EQ(archive.rfind(out + "/initramfs-", 0), 0u) << archive;
  std::string release = archive.substr(out.size() + std::string("/initramfs-").size());
  release = release.substr(0, release.size() - std::string(".cpio.gz").size());

  auto listing = RunCommand({"sh", "-c", "gzip -dc \"$0\" | cpio -t --quiet", archive});
  ASSERT_TRUE(listing && listing->status.Success()) << (listing ? listing->err : "");
  // Every entry between newlines, the first one included.
  listing->out.insert(0, "\n");
  std::string modules = "lib/modules/" + release + "/";
  for (std::string entry :
       {std::string("init"), std::string("proc"), std::string("sys"), std::string("dev"),
        std::string("lib/modules/tartarus.modules"), modules + "modules.dep",
        modules + "kernel/drivers/virtio/virtio_mmio.ko",
        modules + "kernel/drivers/block/virtio_blk.ko", modules + "kernel/fs/overlayfs/overlay.ko",
        modules + "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        modules + "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        modules + "kernel/net/vmw_vsock/vsock.ko", modules + "kernel/drivers/virtio/virtio.ko",
        modules + "kernel/drivers/virtio/virtio_ring.ko",
        modules + "kernel/drivers/char/virtio_console.ko"}) {
    EXPECT_THAT(listing->out, HasSubstr("\n" + entry + "\n")) << entry;
  }

  // What the agent will do with it at boot: every listed module resolves, dependencies
  // first, and every path it loads is in the archive.
  auto extract = [&](const std::string& member) {
    auto text = RunCommand(
        {"sh", "-c", "gzip -dc \"$0\" | cpio -i --quiet --to-stdout \"$1\"", archive, member});
    EXPECT_TRUE(text && text->status.Success()) << member;
    return text ? text->out : "";
  };
  std::vector<std::string> wanted;
  std::istringstream names(extract("lib/modules/tartarus.modules"));
  for (std::string name; names >> name;) wanted.push_back(name);
  EXPECT_THAT(wanted, ::testing::Contains("vmw_vsock_virtio_transport"));
  auto order = guest::ModuleLoadOrder(extract(modules + "modules.dep"), wanted);
  ASSERT_TRUE(order) << order.error().message;
  auto position = [&](const std::string& name) {
    return std::find_if(order->begin(), order->end(),
                        [&](const std::string& path) {
                          return path.find("/" + name + ".ko") != std::string::npos;
                        }) -
           order->begin();
  };
  EXPECT_LT(position("vsock"), position("vmw_vsock_virtio_transport_common"));
  EXPECT_LT(position("vmw_vsock_virtio_transport_common"), position("vmw_vsock_virtio_transport"));
  EXPECT_LT(position("virtio_ring"), position("virtio_mmio"));
  for (const std::string& path : *order) {
    EXPECT_THAT(listing->out, HasSubstr("\n" + modules + path + "\n")) << path;
  }

  // Cached: the second run builds nothing.
  auto again =
      RunCommand({script, "--agent", TARTARUS_AGENT_PATH, "--out", out, StateDir() + "/vmm"},
                 std::chrono::minutes(10));
  ASSERT_TRUE(again && again->status.Success()) << (again ? again->err : "");
  EXPECT_THAT(again->err, HasSubstr("up to date"));
  EXPECT_EQ(again->out, built->out);
  RemoveTree(out);
}

// The whole path: kernel, initramfs, the template as ext4, vsock, the agent. Only where a
// Linux guest boots and the guest side has been fetched and built.
TEST(MicrovmEndToEnd, RunEchoesInAMicroVm) {
  if (std::string reason = MicrovmUnavailableReason(ReadKvmHostFacts()); !reason.empty()) {
    GTEST_SKIP() << "skipped: " << reason;
  }
  std::string state = StateDir();
  if (auto images = FindGuestImages(state + "/vmm"); !images) {
    GTEST_SKIP() << "skipped: " << images.error().message;
  }
  auto run = RunCommand({TARTARUS_CLI_PATH, "--state-dir", state, "run", "--runtime", "microvm",
                         "--rm", "--", "sh", "-c", "echo hi; echo w > /tmp/f && cat /tmp/f"},
                        std::chrono::minutes(10));
  ASSERT_TRUE(run) << run.error().message;
  EXPECT_EQ(run->status.code, 0) << run->err;
  EXPECT_EQ(run->out, "hi\nw\n") << run->err;
}

}  // namespace
}  // namespace tartarus::runtime

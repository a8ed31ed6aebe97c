// tartarus-vmm (Tartarus's KVM microVM monitor), tests of the hardening: the per-thread
// seccomp allowlists (Cerberus) in-process and in the binary, and the jailer (Erebus):
// guests boot and do virtio I/O under both, a forbidden syscall kills the VMM with SIGSYS, a
// jailed VMM sees no host file it was not given, and the jail is removed afterwards.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vmm/jailer.h"
#include "vmm/kvm.h"
#include "vmm/seccomp.h"
#include "vmm/vmm_process_test_util.h"
#include "vmm/vsock_peer_testing.h"

namespace tartarus::vmm {
namespace {

using test_util::Guest;
using test_util::ReadFile;
using test_util::VmmProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kKilledBySigsys = 128 + SIGSYS;
constexpr uid_t kJailUid = 40123;

std::set<int> Numbers(ThreadKind kind) {
  std::set<int> numbers;
  for (const AllowedSyscall& allowed : AllowedSyscalls(kind)) numbers.insert(allowed.number);
  return numbers;
}

// A directory the jailed uid may write (Lethe overlays, sockets), removed at the end.
struct TempDir {
  TempDir() {
    char name[] = "/tmp/vmm-hardening-XXXXXX";
    path = ::mkdtemp(name) ? name : "";
    if (::chown(path.c_str(), kJailUid, kJailUid) != 0) path.clear();
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

std::string Skip() {
  if (!KvmSystem::Open()) return "/dev/kvm not available";
  return "";
}

std::string SkipJail() {
  if (std::string reason = Skip(); !reason.empty()) return reason;
  if (::geteuid() != 0) return "--jail needs root (namespaces, mounts)";
  return "";
}

// Connects to a Unix socket, retrying while the VMM starts; -1 on failure.
int ConnectUnix(const std::string& path) {
  for (int attempt = 0; attempt < 500; ++attempt) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) return fd;
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

// Drives the vsock device's event thread (accept, read, reset) through its Unix socket.
void ExerciseVsock(const std::string& uds) {
  int fd = ConnectUnix(uds);
  ASSERT_GE(fd, 0) << "no vsock socket at " << uds;
  const std::string line = "CONNECT 52\n";
  ASSERT_EQ(::write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  pollfd pfd{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1) << "the connection was neither answered nor reset";
  char buf[64];
  EXPECT_EQ(::read(fd, buf, sizeof buf), 0) << "the idle guest has no vsock driver: a reset";
  ::close(fd);
}

// Runs body in a forked child; its wait status.
template <typename Body>
int InChild(Body body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST(SeccompAllowlistTest, EveryKindBuildsAStackableListWithoutTheTestSyscall) {
  const std::set<int> vmm = Numbers(ThreadKind::kVmm);
  for (ThreadKind kind : {ThreadKind::kVmm, ThreadKind::kVcpu, ThreadKind::kApi}) {
    auto program = BuildThreadFilter(kind);
    ASSERT_TRUE(program) << program.error().message;
    EXPECT_LT(program->size(), 200u) << ThreadKindName(kind);
    EXPECT_EQ(program->back().k, SECCOMP_RET_ALLOW);
    EXPECT_FALSE(Numbers(kind).contains(__NR_getppid)) << "the test hook's syscall";
    // vCPU and API filters stack on the VMM thread's: what they allow, it must allow.
    for (int number : Numbers(kind)) EXPECT_TRUE(vmm.contains(number)) << number;
  }
  // The API thread builds no VM: no KVM, no files, no threads.
  const std::set<int> api = Numbers(ThreadKind::kApi);
  for (int forbidden : {__NR_ioctl, __NR_openat, __NR_clone, __NR_clone3, __NR_socket}) {
    EXPECT_FALSE(api.contains(forbidden)) << forbidden;
  }
  EXPECT_FALSE(Numbers(ThreadKind::kVcpu).contains(__NR_openat));
  EXPECT_FALSE(Numbers(ThreadKind::kVcpu).contains(__NR_clone));
}

TEST(SeccompAllowlistTest, UnlistedSyscallOrForeignIoctlKillsTheProcess) {
  // An allowed call passes; getppid (listed nowhere) is SIGSYS.
  int status = InChild([] {
    if (!InstallThreadFilter(ThreadKind::kApi)) ::_exit(3);
    ::syscall(__NR_getppid);
    ::_exit(4);
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGSYS);
  status = InChild([] {
    if (!InstallThreadFilter(ThreadKind::kVcpu)) ::_exit(3);
    if (::write(-1, "", 0) != -1) ::_exit(5);  // allowed: fails with EBADF, no kill
    ::_exit(0);
  });
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // ioctl is KVM's only (and TCGETS): FIONREAD on stdin is a kill.
  status = InChild([] {
    if (!InstallThreadFilter(ThreadKind::kVmm)) ::_exit(3);
    int pending = 0;
    ::syscall(__NR_ioctl, 0, 0x541B /* FIONREAD */, &pending);
    ::_exit(4);
  });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGSYS);
}

// Arguments are checked where it matters: no executable mapping on any thread, and Unix
// sockets only. The allowed forms pass; the others kill.
TEST(SeccompAllowlistTest, ExecutableMappingsAndNonUnixSocketsKillTheProcess) {
  struct Case {
    const char* what;
    ThreadKind kind;
    int (*call)();
    bool killed;
  };
  const Case cases[] = {
      {"mmap read-write", ThreadKind::kVcpu,
       [] {
         return ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
                        MAP_FAILED
                    ? 1
                    : 0;
       },
       false},
      {"mmap executable", ThreadKind::kVcpu,
       [] {
         return ::mmap(nullptr, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) ==
                        MAP_FAILED
                    ? 1
                    : 0;
       },
       true},
      {"mprotect executable", ThreadKind::kApi,
       [] {
         void* page =
             ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
         return ::mprotect(page, 4096, PROT_READ | PROT_EXEC);
       },
       true},
      {"AF_UNIX socket", ThreadKind::kVmm,
       [] {
         int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
         return fd < 0 ? 1 : ::close(fd);
       },
       false},
      {"AF_INET socket", ThreadKind::kVmm,
       [] {
         int fd = ::socket(AF_INET, SOCK_STREAM, 0);
         return fd < 0 ? 1 : ::close(fd);
       },
       true},
  };
  for (const Case& c : cases) {
    const int status = InChild([&c] {
      if (!InstallThreadFilter(c.kind)) ::_exit(3);
      ::_exit(c.call() == 0 ? 0 : 4);
    });
    if (c.killed) {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) << c.what << ": " << status;
    } else {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << c.what << ": " << status;
    }
  }
}

// The binary filters every thread by default: the virtio guest's blk and rng I/O runs on
// its vCPU thread, the vsock event thread serves a connection, the API thread answers.
TEST(VmmSeccompTest, GuestsBootAndDoVirtioIoUnderTheFilters) {
  if (std::string reason = Skip(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string disk = dir.path + "/disk.img";
  std::ofstream(disk) << std::string(8192, 'c');
  const std::string config = dir.path + "/vm.json";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("virtio")
                        << R"("}, "drives": [{"drive_id": "rootfs", "path_on_host": ")" << disk
                        << R"(", "is_root_device": true}], "entropy": {}})";
  VmmProcess vmm({"--config-file", config});
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("blk: read sector 1 status=00 len=0000000000000201 "
                                      "data=5355524154524154\n"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("rng: len=10"));
  EXPECT_EQ(ReadFile(disk).substr(512, 8), "TARTARUS");

  const std::string uds = dir.path + "/v.sock";
  VmmProcess idle({"--api-sock", "@SOCK"});
  EXPECT_THAT(
      idle.Send("PUT", "/boot-source", R"({"kernel_image_path": ")" + Guest("idle") + R"("})"),
      HasSubstr("204"));
  EXPECT_THAT(idle.Send("PUT", "/vsock", R"({"guest_cid": 3, "uds_path": ")" + uds + R"("})"),
              HasSubstr("204"));
  EXPECT_THAT(idle.Send("PUT", "/actions", R"({"action_type": "InstanceStart"})"),
              HasSubstr("204"));
  ExerciseVsock(uds);
  EXPECT_THAT(idle.Send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr("204"));
  EXPECT_THAT(idle.Send("PATCH", "/vm", R"({"state": "Resumed"})"), HasSubstr("204"));
  EXPECT_THAT(idle.Send("GET", "/", ""), HasSubstr("Running"));
  EXPECT_TRUE(idle.Running()) << idle.Stderr();
}

// A guest-initiated vsock stream under the filters: the vCPU thread (no socket, no connect in
// its list) queues the REQUEST and the vsock event thread connects "<uds>_52".
TEST(VmmSeccompTest, GuestOpensAVsockStreamUnderTheFilters) {
  if (std::string reason = Skip(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  EXPECT_FALSE(Numbers(ThreadKind::kVcpu).contains(__NR_socket));
  EXPECT_FALSE(Numbers(ThreadKind::kVcpu).contains(__NR_connect));
  TempDir dir;
  const std::string uds = dir.path + "/v.sock";
  VsockGuestPeer peer(uds);
  const std::string config = dir.path + "/vm.json";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("vsock")
                        << R"("}, "vsock": {"guest_cid": 3, "uds_path": ")" << uds << R"("}})";
  VmmProcess vmm({"--config-file", config});
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  const VsockGuestPeer::Outcome host = peer.Finish();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("vsock: connected\nvsock: rx op="));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("vsock: host said pong\n"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("vsock guest done\n"));
  EXPECT_EQ(host.error, "");
  EXPECT_EQ(host.received, "ping");
  EXPECT_TRUE(host.closed);
}

TEST(VmmSeccompTest, ForbiddenSyscallOnAVcpuThreadKillsTheVmmWithSigsys) {
  if (std::string reason = Skip(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  ::setenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION", "vcpu", 1);
  VmmProcess vmm({"--kernel", Guest("hello")});
  ::unsetenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION");
  EXPECT_EQ(vmm.Wait(), kKilledBySigsys) << vmm.Stderr();
  EXPECT_EQ(vmm.Stdout(), "") << "the vCPU died before its first KVM_RUN";

  // --no-seccomp: the same hook does nothing (getppid is harmless unfiltered).
  ::setenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION", "vcpu", 1);
  VmmProcess unfiltered({"--no-seccomp", "--kernel", Guest("hello")});
  ::unsetenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION");
  EXPECT_EQ(unfiltered.Wait(), 0) << unfiltered.Stderr();
  EXPECT_THAT(unfiltered.Stdout(), HasSubstr("hello from the guest"));
}

TEST(VmmSeccompTest, ForbiddenSyscallOnTheApiThreadKillsTheVmmWithSigsys) {
  ::setenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION", "api", 1);
  VmmProcess vmm({"--api-sock", "@SOCK"});
  ::unsetenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION");
  EXPECT_EQ(vmm.Wait(), kKilledBySigsys) << vmm.Stderr();
}

TEST(JailTest, BadJailFlagsAreRefusedNamingTheFlag) {
  VmmProcess no_uid({"--jail", "/tmp/j", "--kernel", Guest("hello")});
  EXPECT_EQ(no_uid.Wait(), 64);
  EXPECT_THAT(no_uid.Stderr(), HasSubstr("--jail needs --uid and --gid"));
  VmmProcess bad_id(
      {"--jail", "/tmp/j", "--uid", "1", "--gid", "1", "--id", "../x", "--kernel", Guest("hello")});
  EXPECT_EQ(bad_id.Wait(), 64);
  EXPECT_THAT(bad_id.Stderr(), HasSubstr("--id ../x"));
  VmmProcess bad_cpu({"--jail", "/tmp/j", "--uid", "1", "--gid", "1", "--cpu-max", "lots",
                      "--kernel", Guest("hello")});
  EXPECT_EQ(bad_cpu.Wait(), 64);
  EXPECT_THAT(bad_cpu.Stderr(), HasSubstr("--cpu-max \"lots\""));
  VmmProcess relative({"--jail", "j", "--uid", "1", "--gid", "1", "--kernel", Guest("hello")});
  EXPECT_EQ(relative.Wait(), 64);
  EXPECT_THAT(relative.Stderr(), HasSubstr("need an absolute path"));
  JailOptions options{.base_dir = "/tmp/j", .id = "vm", .uid = 1, .gid = 1};
  EXPECT_TRUE(ValidateJailOptions(options));
  options.memory_max = "12x";
  EXPECT_FALSE(ValidateJailOptions(options));
  options.memory_max = "max";
  options.cgroup_parent = "/abs";
  EXPECT_FALSE(ValidateJailOptions(options));
}

// A jailed VMM (config file) boots the virtio guest on its drive; the jail held only the
// device nodes and the files it was given, and is gone afterwards (or kept with --keep-jail).
TEST(JailTest, JailedVirtioGuestBootsAndTheJailIsRemoved) {
  if (std::string reason = SkipJail(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string jails = dir.path + "/jails";
  const std::string disk = dir.path + "/disk.img";
  std::ofstream(disk) << std::string(8192, 'c');
  ASSERT_EQ(::chown(disk.c_str(), kJailUid, kJailUid), 0);
  const std::string uds = dir.path + "/sock/v.sock";
  std::filesystem::create_directory(dir.path + "/sock");
  ASSERT_EQ(::chown((dir.path + "/sock").c_str(), kJailUid, kJailUid), 0);
  const std::string config = dir.path + "/vm.json";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("virtio")
                        << R"("}, "drives": [{"drive_id": "rootfs", "path_on_host": ")" << disk
                        << R"(", "is_root_device": true}], "entropy": {},
      "vsock": {"guest_cid": 3, "uds_path": ")"
                        << uds << R"("}})";
  const std::string uid = std::to_string(kJailUid);
  VmmProcess vmm({"--jail", jails, "--uid", uid, "--gid", uid, "--id", "vm-1", "--config-file",
                  config, "--pids-max", "64", "--keep-jail"});
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("blk: read sector 1 status=00 len=0000000000000201 "
                                      "data=5355524154524154\n"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("rng: len=10"));
  EXPECT_EQ(ReadFile(disk).substr(512, 8), "TARTARUS");
  // --keep-jail: what the root held (mount points of the files given, the device nodes).
  std::set<std::string> held;
  const std::string root = jails + "/vm-1/root";
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_directory()) held.insert(entry.path().string().substr(root.size()));
  }
  EXPECT_EQ(held, (std::set<std::string>{"/dev/kvm", "/dev/null", "/dev/urandom", disk, config,
                                         Guest("virtio")}));
  struct stat kvm {};
  ASSERT_EQ(::stat((root + "/dev/kvm").c_str(), &kvm), 0);
  EXPECT_EQ(kvm.st_uid, kJailUid) << "the jail's own /dev/kvm belongs to the VM's uid";
  EXPECT_TRUE(S_ISCHR(kvm.st_mode));

  // The cgroup leaf (where cgroup v2 is writable) is gone with the VM.
  for (const char* mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    EXPECT_FALSE(std::filesystem::exists(std::string(mount) + "/tartarus-vmm/vm-1")) << mount;
  }

  // Without --keep-jail the directory goes; --serial-out is created for the jailed uid.
  const std::string serial = dir.path + "/serial.log";
  VmmProcess again({"--jail", jails, "--uid", uid, "--gid", uid, "--id", "vm-2", "--config-file",
                    config, "--serial-out", serial});
  EXPECT_EQ(again.Wait(), 0) << again.Stderr();
  EXPECT_THAT(ReadFile(serial), HasSubstr("virtio guest done"));
  EXPECT_EQ(again.Stdout(), "");
  EXPECT_FALSE(std::filesystem::exists(jails + "/vm-2"));
}

// Where a controller lives: its cgroup v1 hierarchy (hybrid and v1 hosts), else cgroup v2.
struct ControllerHome {
  std::string mount;
  bool v1 = false;
};
ControllerHome FindController(const std::string& controller) {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, point, type, options, rest, v2;
  while (mounts >> device >> point >> type >> options && std::getline(mounts, rest)) {
    if (type == "cgroup2") v2 = point;
    if (type != "cgroup") continue;
    std::stringstream words(options);
    for (std::string word; std::getline(words, word, ',');) {
      if (word == controller) return {point, true};
    }
  }
  return {v2, false};
}

// The limits reach the kernel wherever the host keeps each controller: on this project's
// hybrid hosts cpu, memory and pids are cgroup v1, elsewhere v2. The VMM runs in the leaves,
// and they are gone with it.
TEST(JailTest, JailedVmmRunsUnderItsCgroupLimits) {
  if (std::string reason = SkipJail(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string config = dir.path + "/vm.json";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("idle")
                        << R"("}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}})";
  const std::string uid = std::to_string(kJailUid);
  const std::string id = "vm-limits-" + std::to_string(::getpid());
  VmmProcess vmm({"--jail", dir.path + "/jails", "--uid", uid, "--gid", uid, "--id", id,
                  "--config-file", config, "--memory-max", "268435456", "--pids-max", "20",
                  "--cpu-max", "50000 100000"});
  // The VMM is the jailer's only child.
  pid_t child = 0;
  for (int attempt = 0; attempt < 500 && child == 0; ++attempt) {
    std::ifstream children("/proc/" + std::to_string(vmm.pid()) + "/task/" +
                           std::to_string(vmm.pid()) + "/children");
    if (!(children >> child)) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(child, 0) << vmm.Stderr();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // joined its cgroups by now
  ASSERT_TRUE(vmm.Running()) << vmm.Stderr();
  const std::string membership = ReadFile("/proc/" + std::to_string(child) + "/cgroup");
  struct Expected {
    const char* controller;
    const char* v1_file;
    const char* v1_value;
    const char* v2_value;
  };
  std::vector<std::string> leaves;
  for (const Expected& e : {Expected{"memory", "memory.limit_in_bytes", "268435456", "268435456"},
                            Expected{"pids", "pids.max", "20", "20"},
                            Expected{"cpu", "cpu.cfs_quota_us", "50000", "50000 100000"}}) {
    const ControllerHome home = FindController(e.controller);
    ASSERT_FALSE(home.mount.empty()) << e.controller;
    const std::string leaf = home.mount + "/tartarus-vmm/" + id;
    leaves.push_back(leaf);
    const std::string file =
        leaf + "/" + (home.v1 ? e.v1_file : e.controller + std::string(".max"));
    EXPECT_EQ(ReadFile(file), std::string(home.v1 ? e.v1_value : e.v2_value) + "\n")
        << file << "\n"
        << vmm.Stderr();
    EXPECT_THAT(ReadFile(leaf + "/cgroup.procs"), HasSubstr(std::to_string(child) + "\n")) << leaf;
  }
  EXPECT_THAT(membership, HasSubstr("/tartarus-vmm/" + id + "\n"));
  EXPECT_THAT(vmm.Stderr(), Not(HasSubstr("limit not set")));
  vmm.Signal(SIGTERM);
  vmm.Wait();
  for (const std::string& leaf : leaves) EXPECT_FALSE(std::filesystem::exists(leaf)) << leaf;
}

// A jailer killed outright while it is still jailing the VMM (before the child's parent-death
// signal is set) must not leave a VMM running: the child sees the jailer's end of their pipe
// closed and gives up. The test hook widens that window to half a second.
TEST(JailTest, JailerKilledWhileJailingLeavesNoVmm) {
  if (std::string reason = SkipJail(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string config = dir.path + "/vm.json";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("idle")
                        << R"("}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}})";
  const std::string uid = std::to_string(kJailUid);
  ::setenv("TARTARUS_VMM_TEST_JAIL_DELAY_MS", "500", 1);
  VmmProcess vmm({"--jail", dir.path + "/jails", "--uid", uid, "--gid", uid, "--id", "vm-orphan",
                  "--config-file", config});
  ::unsetenv("TARTARUS_VMM_TEST_JAIL_DELAY_MS");
  pid_t child = 0;
  for (int attempt = 0; attempt < 200 && child == 0; ++attempt) {
    std::ifstream children("/proc/" + std::to_string(vmm.pid()) + "/task/" +
                           std::to_string(vmm.pid()) + "/children");
    if (!(children >> child)) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GT(child, 0);
  // Past the jailer's go-ahead (cgroups set up: milliseconds), inside the widened window.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  vmm.Kill();  // SIGKILL: no cleanup, no forwarded signal
  // The orphan is reparented and reaped by init once it exits; within a few seconds.
  bool gone = false;
  for (int attempt = 0; attempt < 400 && !gone; ++attempt) {
    const std::string status = ReadFile("/proc/" + std::to_string(child) + "/status");
    gone = status.empty() || status.find("State:\tZ") != std::string::npos;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "the VMM outlived its jailer";
  if (!gone) ::kill(child, SIGKILL);
  // The killed jailer could not remove its (empty) cgroup leaf: the runtime's teardown does
  // that for a sandbox; here the test does.
  for (const char* mount : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    ::rmdir((std::string(mount) + "/tartarus-vmm/vm-orphan").c_str());
  }
}

// Paths given through the API resolve inside the jail: a host file not given is not there;
// one given with --jail-file is. The vsock event thread and the API work jailed and filtered.
TEST(JailTest, JailedVmmCannotSeeHostFilesItWasNotGiven) {
  if (std::string reason = SkipJail(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string jails = dir.path + "/jails";
  const std::string sock_dir = dir.path + "/api";
  std::filesystem::create_directory(sock_dir);
  ASSERT_EQ(::chown(sock_dir.c_str(), kJailUid, kJailUid), 0);
  const std::string api = sock_dir + "/api.sock";
  const std::string secret = dir.path + "/secret.img";
  std::ofstream(secret) << std::string(4096, 's');
  const std::string uid = std::to_string(kJailUid);
  VmmProcess vmm({"--jail", jails, "--uid", uid, "--gid", uid, "--id", "api-vm", "--api-sock", api,
                  "--jail-file", Guest("idle"), "--lethe-dir", sock_dir});
  // Wait for the socket at the host path (the jail binds its directory).
  int fd = ConnectUnix(api);
  ASSERT_GE(fd, 0) << vmm.Stderr();
  ::close(fd);
  const auto send = [&](const std::string& method, const std::string& path,
                        const std::string& body) {
    int conn = ConnectUnix(api);
    std::string request = method + " " + path +
                          " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\nConnection: close\r\n\r\n" + body;
    (void)::send(conn, request.data(), request.size(), MSG_NOSIGNAL);
    std::string response;
    char buffer[4096];
    ssize_t n;
    while ((n = ::recv(conn, buffer, sizeof buffer, 0)) > 0) response.append(buffer, n);
    ::close(conn);
    return response;
  };
  // The host's kernel image and drive exist, but not in the jail.
  std::string refused =
      send("PUT", "/boot-source", R"({"kernel_image_path": ")" + Guest("hello") + R"("})");
  EXPECT_THAT(refused, HasSubstr("400"));
  EXPECT_THAT(refused, HasSubstr(Guest("hello")));
  refused =
      send("PUT", "/drives/root",
           R"({"drive_id": "root", "path_on_host": ")" + secret + R"(", "is_root_device": true})");
  EXPECT_THAT(refused, HasSubstr("400"));
  EXPECT_THAT(
      send("PUT", "/drives/etc",
           R"({"drive_id": "etc", "path_on_host": "/etc/passwd", "is_root_device": false})"),
      HasSubstr("400"));
  EXPECT_THAT(send("PUT", "/boot-source", R"({"kernel_image_path": ")" + Guest("idle") + R"("})"),
              HasSubstr("204"));
  EXPECT_THAT(send("PUT", "/actions", R"({"action_type": "InstanceStart"})"), HasSubstr("204"));
  EXPECT_THAT(send("GET", "/", ""), HasSubstr("Running"));
  EXPECT_TRUE(vmm.Running()) << vmm.Stderr();
  // The jailer stops the jailed VMM on SIGTERM and removes the jail.
  vmm.Signal(SIGTERM);
  EXPECT_NE(vmm.Wait(), -1);
  EXPECT_FALSE(std::filesystem::exists(jails + "/api-vm")) << vmm.Stderr();
}

// A seccomp kill inside the jail reaches whoever waits for the jailer as SIGSYS, and the
// jail is still removed.
TEST(JailTest, SeccompKillInsideTheJailIsReportedAsSigsys) {
  if (std::string reason = SkipJail(); !reason.empty()) GTEST_SKIP() << "skipped: " << reason;
  TempDir dir;
  const std::string jails = dir.path + "/jails";
  const std::string uid = std::to_string(kJailUid);
  ::setenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION", "vcpu", 1);
  VmmProcess vmm(
      {"--jail", jails, "--uid", uid, "--gid", uid, "--id", "sigsys", "--kernel", Guest("hello")});
  ::unsetenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION");
  EXPECT_EQ(vmm.Wait(), kKilledBySigsys) << vmm.Stderr();
  EXPECT_FALSE(std::filesystem::exists(jails + "/sigsys"));
}

}  // namespace
}  // namespace tartarus::vmm

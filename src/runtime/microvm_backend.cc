// The microvm backend (Tartarus runtime): see microvm_backend.h.
#include "runtime/microvm_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/subprocess.h"
#include "common/unix_address.h"
#include "runtime/cgroups.h"
#include "runtime/oci_backend.h"
#include "runtime/oci_bundle.h"
#include "runtime/owner.h"
#include "template/ext4_image.h"

namespace tartarus::runtime {
namespace {

using std::chrono::milliseconds;

constexpr uint64_t kMiB = 1 << 20;
// A cold boot of the cloud kernel is well under a second on hardware virtualization; the
// rest is slack for loaded hosts.
constexpr milliseconds kBootTimeout{30000};
// The VMM answers a CONNECT within 2 s (OK, or closing when nobody listens).
constexpr milliseconds kConnectAttemptTimeout{3000};
constexpr milliseconds kRetryInterval{20};
constexpr milliseconds kExitTimeout{5000};
// The jailer needs a moment after SIGTERM: kill the VMM, remove the jail and the cgroup.
constexpr milliseconds kJailerStopTimeout{3000};
constexpr size_t kLogTailBytes = 2048;
constexpr const char* kVsockFile = "v.sock";
// sockaddr_un::sun_path less its terminating NUL.
constexpr size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

bool ValidHostname(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-';
  });
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  if (!dir) return names;
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

// The last lines of the runtime's log, for error messages.
std::string LogTail(const std::string& path) { return ReadFileTail(path, kLogTailBytes); }

// The jailer's child is the VMM (pid 1 of its PID namespace); 0 before it forked.
pid_t JailedVmmPid(pid_t jailer) {
  std::string jailer_pid = std::to_string(jailer);
  std::ifstream children("/proc/" + jailer_pid + "/task/" + jailer_pid + "/children");
  long pid = 0;
  return children >> pid ? static_cast<pid_t>(pid) : 0;
}

// The cgroup leaf the jailer makes for the VM, as a path under each hierarchy's root.
std::string VmmCgroupPath(std::string_view id) {
  return "/" + std::string(kVmmCgroupParent) + "/" + std::string(id);
}

Status RemoveTreeUnlessMounted(const std::string& dir) {
  if (HasMountsUnder(dir)) {
    return Fail(ErrorCode::kFailedPrecondition, dir + " still has mount points under it");
  }
  std::error_code error;
  std::filesystem::remove_all(dir, error);
  if (error) return Fail(ErrorCode::kIo, "removing " + dir + ": " + error.message());
  return Ok();
}

// After the jailer is gone: the VMM if it outlived it (its parent-death signal is set only
// once it is jailed), the cgroup leaf, the jail and the vsock dir. The VMM dies
// asynchronously, so removing its cgroup retries for a moment.
Status RemoveJailLeftovers(const std::string& sandbox_dir, std::string_view id) {
  const std::string cgroup = VmmCgroupPath(id);
  Status removed = Ok();
  auto deadline = std::chrono::steady_clock::now() + kJailerStopTimeout;
  do {
    KillCgroupProcesses(CgroupDirsForPath(std::string(kCgroupRoot), cgroup));
    removed = RemoveCgroupPath(std::string(kCgroupRoot), cgroup);
    if (removed) break;
    std::this_thread::sleep_for(kRetryInterval);
  } while (std::chrono::steady_clock::now() < deadline);
  TRY(removed);
  TRY(RemoveTreeUnlessMounted(MicrovmJailBase(sandbox_dir)));
  TRY(RemoveTreeUnlessMounted(sandbox_dir + "/vsock"));
  return Ok();
}

// The jailed VMM opens the files vm.json names as its own uid/gid, inside the jail: say so
// here rather than as a permission error in the VMM's log.
Status CheckReadableBy(const std::string& path, uint32_t uid, uint32_t gid) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return FailErrno("stat " + path);
  bool readable = (st.st_mode & S_IROTH) || (st.st_uid == uid && (st.st_mode & S_IRUSR)) ||
                  (st.st_gid == gid && (st.st_mode & S_IRGRP));
  if (readable) return Ok();
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return Fail(ErrorCode::kPermissionDenied,
              path + " (mode " + mode + ") is not readable by the jailed tartarus-vmm (uid " +
                  std::to_string(uid) + ", gid " + std::to_string(gid) + "): chmod a+r it");
}

void PrintProgressLine(std::string_view line) {
  std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  std::fflush(stderr);
}

// Waits for `fd` to be readable (or writable) until `deadline`; false on timeout.
bool WaitFd(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  while (true) {
    auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    int ready = poll(&p, 1, static_cast<int>(left.count()));
    if (ready > 0) return true;
    if (ready < 0 && errno != EINTR) return false;
  }
}

// CPU time and memory of the VMM process: the whole VM from the host's side.
Result<Usage> ProcessUsage(pid_t pid) {
  Usage usage;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = text.rfind(')');
  if (paren == std::string::npos) {
    return Fail(ErrorCode::kNotFound, "tartarus-vmm (pid " + std::to_string(pid) + ") is gone");
  }
  std::istringstream fields(text.substr(paren + 2));
  std::string field;
  // After the command: state is field 3; utime and stime are fields 14 and 15.
  uint64_t utime = 0, stime = 0;
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (index == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  long ticks = sysconf(_SC_CLK_TCK);
  if (ticks > 0) usage.cpu_ns = (utime + stime) * (1000000000ull / static_cast<uint64_t>(ticks));
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    auto kib = [&](std::string_view key) -> std::optional<uint64_t> {
      if (line.rfind(key, 0) != 0) return std::nullopt;
      return std::strtoull(line.c_str() + key.size(), nullptr, 10) * 1024;
    };
    if (auto rss = kib("VmRSS:")) usage.memory_current_bytes = *rss;
    if (auto peak = kib("VmHWM:")) usage.memory_peak_bytes = *peak;
  }
  usage.pids_current = 1;
  return usage;
}

class MicrovmSandbox final : public Sandbox {
 public:
  MicrovmSandbox(RuntimeConfig config, std::string id)
      : config_(std::move(config)), id_(std::move(id)), dir_(SandboxDir(config_, id_)) {}
  ~MicrovmSandbox() override { (void)Destroy(); }

  const std::string& Id() const override { return id_; }
  UniqueFd TakeFromAgent() override { return std::move(from_agent_); }
  UniqueFd TakeToAgent() override { return std::move(to_agent_); }
  Result<Usage> GetUsage() override {
    if (process_.pid() <= 0) return Fail(ErrorCode::kFailedPrecondition, "sandbox not started");
    // The VM is the jailer's child; the jailer itself only waits.
    pid_t vmm = JailedVmmPid(process_.pid());
    return ProcessUsage(vmm > 0 ? vmm : process_.pid());
  }
  // Start() returns only once the agent answered on vsock.
  Status WaitStarted() override { return Ok(); }

  Status Destroy() override {
    if (destroyed_) return Ok();
    if (!created_dir_) {
      destroyed_ = true;  // the dir belongs to another sandbox with this id
      return Ok();
    }
    from_agent_.Reset();
    to_agent_.Reset();
    if (process_.pid() > 0) {
      // The VM is one process: killing it ends every guest process at once. SIGTERM makes
      // the jailer SIGKILL the VMM and remove the jail and its cgroup before it exits.
      process_.Signal(SIGTERM);
      bool timed_out = false;
      (void)process_.WaitFor(kJailerStopTimeout, &timed_out);
      if (timed_out) {
        process_.Signal(SIGKILL);
        (void)process_.WaitFor(kExitTimeout);
      }
      process_ = Subprocess();
    }
    if (Status left = RemoveJailLeftovers(dir_, id_); !left) {
      return Fail(left.error().Context("destroying sandbox " + id_));
    }
    for (const char* file : {"owner", "runtime", "runtime.log", "vm.json"}) {
      std::string path = dir_ + "/" + file;
      if (unlink(path.c_str()) < 0 && errno != ENOENT) {
        return Fail(ErrnoError("unlink " + path).Context("destroying sandbox " + id_));
      }
    }
    if (rmdir(dir_.c_str()) < 0 && errno != ENOENT) {
      return Fail(ErrnoError("rmdir " + dir_).Context("destroying sandbox " + id_));
    }
    destroyed_ = true;
    return Ok();
  }

  Status Start(const SandboxSpec& spec) {
    GuestImages images = TRY(FindGuestImages(MicrovmStateDir(config_)));
    TRY(CheckInitramfsHasAgent(images, spec.agent_path));
    // The first microVM of a template makes its ext4 image: seconds for big templates.
    std::string image = TRY(
        templates::EnsureExt4Image(spec.rootfs, spec.progress ? spec.progress : PrintProgressLine));
    for (const std::string& file : {images.kernel, images.initramfs, image}) {
      TRY(CheckReadableBy(file, config_.vmm_uid, config_.vmm_gid));
    }
    MicrovmLaunch launch = TRY(MakeMicrovmLaunch(spec, images, image, MicrovmVsockPath(dir_)));
    std::vector<std::string> argv = TRY(MicrovmVmmArgv({.vmm_path = SelfDir() + "/tartarus-vmm",
                                                        .sandbox_dir = dir_,
                                                        .id = id_,
                                                        .uid = config_.vmm_uid,
                                                        .gid = config_.vmm_gid},
                                                       launch));
    if (mkdir(dir_.c_str(), 0700) < 0) {
      if (errno == EEXIST) {
        return Fail(ErrorCode::kAlreadyExists, "sandbox " + id_ + " already exists");
      }
      return FailErrno("mkdir " + dir_);
    }
    created_dir_ = true;
    auto owner = TRY(CurrentProcessOwner());
    TRY(WriteFileAtomic(dir_ + "/owner", FormatOwnerRecord(owner), Durability::kNoFsync, 0600));
    // The jailed VMM reads its config and binds its vsock socket as its own uid.
    std::string config_path = MicrovmConfigPath(dir_);
    TRY(WriteFileAtomic(config_path, MicrovmConfigJson(launch), Durability::kNoFsync, 0600));
    if (chown(config_path.c_str(), config_.vmm_uid, config_.vmm_gid) < 0) {
      return FailErrno("chown " + config_path);
    }
    std::string vsock_dir = dir_ + "/vsock";
    if (mkdir(vsock_dir.c_str(), 0700) < 0 ||
        chown(vsock_dir.c_str(), config_.vmm_uid, config_.vmm_gid) < 0) {
      return FailErrno("making " + vsock_dir);
    }

    std::string log_path = dir_ + "/runtime.log";
    UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!log) return FailErrno("creating " + log_path);
    // What the jail is meant to be; the jailer's own lines follow, among them any limit this
    // host cannot apply (it runs the VM without it rather than fail).
    MicrovmCgroupLimits limits = MicrovmVmmLimits(launch);
    std::string intro =
        "tartarus: tartarus-vmm jailed in " + MicrovmJailBase(dir_) + "/" + id_ + " as uid " +
        std::to_string(config_.vmm_uid) + " gid " + std::to_string(config_.vmm_gid) + ", cgroup " +
        std::string(kVmmCgroupParent) + "/" + id_ + " cpu.max \"" +
        std::to_string(limits.cpu_quota_us) + " " + std::to_string(kCpuMaxPeriodUs) +
        "\" memory.max " + std::to_string(limits.memory_max_bytes) + " pids.max " +
        std::to_string(limits.pids_max) + "\n";
    (void)!write(log.Get(), intro.data(), intro.size());
    process_ =
        TRY(Spawn({.argv = argv, .cwd = dir_, .fds = {{0, -1}, {1, log.Get()}, {2, log.Get()}}}));
    // Recorded for CleanupLeftovers: the jailer (and its VMM) outlive a killed owner.
    if (auto start = ProcessStartTime(process_.pid())) {
      (void)WriteFileAtomic(dir_ + "/runtime", FormatOwnerRecord({process_.pid(), *start}),
                            Durability::kNoFsync, 0600);
    }
    UniqueFd stream = TRY(ConnectToAgent(log_path));
    UniqueFd second(fcntl(stream.Get(), F_DUPFD_CLOEXEC, 3));
    if (!second) return FailErrno("dup vsock stream");
    from_agent_ = std::move(stream);
    to_agent_ = std::move(second);
    return Ok();
  }

 private:
  // The agent inside the initramfs answers the host's Hello with its version: an older
  // build than the host's agent would be refused there, with a less helpful message.
  static Status CheckInitramfsHasAgent(const GuestImages& images, const std::string& agent) {
    struct stat agent_stat, initramfs_stat;
    if (agent.empty() || stat(agent.c_str(), &agent_stat) < 0) return Ok();
    if (stat(images.initramfs.c_str(), &initramfs_stat) < 0) {
      return FailErrno("stat " + images.initramfs);
    }
    if (agent_stat.st_mtime > initramfs_stat.st_mtime) {
      return Fail(ErrorCode::kFailedPrecondition,
                  images.initramfs + " is older than the agent " + agent +
                      ": rebuild it with `scripts/build-guest-initramfs.sh --agent " + agent + "`");
    }
    return Ok();
  }

  // Retries the hybrid vsock handshake while the guest boots; a VMM that exits ends it.
  Result<UniqueFd> ConnectToAgent(const std::string& log_path) {
    // MicrovmVmmArgv made sure the path fits in a sockaddr_un.
    std::string uds = MicrovmVsockPath(dir_);
    auto deadline = std::chrono::steady_clock::now() + kBootTimeout;
    Error last{ErrorCode::kTimeout, "no attempt"};
    while (std::chrono::steady_clock::now() < deadline) {
      auto exited = TRY(process_.TryWait());
      if (exited) {
        process_ = Subprocess();
        return Fail(ErrorCode::kFailedPrecondition,
                    "tartarus-vmm (jailed) exited before the guest agent answered (" +
                        exited->Describe() + "): " + LogTail(log_path));
      }
      auto stream = ConnectHybridVsock(uds, kAgentVsockPort, kConnectAttemptTimeout);
      if (stream) return stream;
      if (stream.error().code != ErrorCode::kNotFound) return Fail(stream.error());
      last = stream.error();
      std::this_thread::sleep_for(kRetryInterval);
    }
    return Fail(ErrorCode::kTimeout, "the guest agent did not answer on vsock port " +
                                         std::to_string(kAgentVsockPort) + " within " +
                                         std::to_string(kBootTimeout.count() / 1000) + " s (" +
                                         last.message + "): " + LogTail(log_path));
  }

  RuntimeConfig config_;
  std::string id_;
  std::string dir_;
  Subprocess process_;
  UniqueFd from_agent_;
  UniqueFd to_agent_;
  bool created_dir_ = false;
  bool destroyed_ = false;
};

class MicrovmBackend final : public Backend {
 public:
  explicit MicrovmBackend(RuntimeConfig config) : config_(std::move(config)) {}

  std::string_view Name() const override { return "microvm"; }

  Status CheckAvailable() const override {
    if (std::string reason = MicrovmUnavailableReason(ReadKvmHostFacts()); !reason.empty()) {
      return Fail(ErrorCode::kFailedPrecondition, reason);
    }
    std::string vmm = SelfDir() + "/tartarus-vmm";
    if (access(vmm.c_str(), X_OK) != 0) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "the microvm backend needs tartarus-vmm next to tartarus (" + vmm + ")");
    }
    if (geteuid() != 0) {
      return Fail(ErrorCode::kPermissionDenied,
                  "the microvm backend jails tartarus-vmm (namespaces, chroot, an unprivileged "
                  "uid), which needs root: run tartarus as root");
    }
    TRY(FindGuestImages(MicrovmStateDir(config_)));
    return Ok();
  }

  Result<std::unique_ptr<Sandbox>> Start(const SandboxSpec& spec) override {
    TRY(ValidateSandboxId(spec.id));
    TRY(CheckAvailable());
    auto sandbox = std::make_unique<MicrovmSandbox>(config_, spec.id);
    if (auto started = sandbox->Start(spec); !started) {
      (void)sandbox->Destroy();
      return Fail(started.error().Context("starting microVM " + spec.id));
    }
    return std::unique_ptr<Sandbox>(std::move(sandbox));
  }

 private:
  RuntimeConfig config_;
};

}  // namespace

KvmHostFacts ReadKvmHostFacts() {
  KvmHostFacts facts;
  UniqueFd kvm(open("/dev/kvm", O_RDWR | O_CLOEXEC));
  facts.dev_kvm_usable = kvm.Get() >= 0;
  if (!facts.dev_kvm_usable) facts.dev_kvm_error = std::strerror(errno);
  facts.pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string flag;
    while (words >> flag)
      facts.hardware_virt = facts.hardware_virt || flag == "vmx" || flag == "svm";
    break;
  }
  return facts;
}

std::string MicrovmUnavailableReason(const KvmHostFacts& facts) {
  if (!facts.dev_kvm_usable) {
    return "the microvm backend needs KVM: /dev/kvm did not open (" + facts.dev_kvm_error +
           "); run on a host with hardware virtualization and the kvm_intel or kvm_amd module";
  }
  if (facts.pvm && !facts.hardware_virt) {
    return "the microvm backend needs hardware virtualization: this host's KVM is PVM "
           "(kvm_pvm loaded, no vmx or svm in /proc/cpuinfo), on which a Linux guest does not "
           "boot in useful time; use --runtime gvisor or container here (docs/vmm.md)";
  }
  return "";
}

std::string MicrovmStateDir(const RuntimeConfig& config) { return config.state_dir + "/vmm"; }

Result<GuestImages> FindGuestImages(const std::string& vmm_dir) {
  std::string kernel_dir = vmm_dir + "/kernel";
  // Newest release first: "linux-image-6.1.0-56-cloud-amd64" sorts by name within a series.
  std::vector<std::string> packages = ListDir(kernel_dir);
  std::reverse(packages.begin(), packages.end());
  std::vector<std::string> releases_without_initramfs;
  for (const std::string& package : packages) {
    const std::string prefix = "linux-image-";
    if (package.rfind(prefix, 0) != 0) continue;
    std::string release = package.substr(prefix.size());
    GuestImages images{.release = release,
                       .kernel = kernel_dir + "/" + package + "/boot/vmlinuz-" + release,
                       .initramfs = vmm_dir + "/initramfs-" + release + ".cpio.gz"};
    if (access(images.kernel.c_str(), R_OK) != 0) continue;
    if (access(images.initramfs.c_str(), R_OK) != 0) {
      releases_without_initramfs.push_back(release);
      continue;
    }
    return images;
  }
  if (releases_without_initramfs.empty()) {
    return Fail(ErrorCode::kFailedPrecondition,
                "the microvm backend needs a guest kernel: none in " + kernel_dir +
                    "; run `scripts/fetch-guest-kernel.sh " + kernel_dir + "`");
  }
  return Fail(ErrorCode::kFailedPrecondition,
              "the microvm backend needs an initramfs with the guest agent for kernel " +
                  releases_without_initramfs.front() + " (" + vmm_dir + "/initramfs-" +
                  releases_without_initramfs.front() +
                  ".cpio.gz is missing); run `scripts/build-guest-initramfs.sh " + vmm_dir + "`");
}

Result<MicrovmLaunch> MakeMicrovmLaunch(const SandboxSpec& spec, GuestImages images,
                                        std::string root_image, std::string vsock_uds) {
  if (!ValidHostname(spec.hostname)) {
    return Fail(ErrorCode::kInvalidArgument,
                "hostname \"" + spec.hostname + "\": expected 1-64 of [A-Za-z0-9.-]");
  }
  MicrovmLaunch launch{.images = std::move(images),
                       .root_image = std::move(root_image),
                       .vsock_uds = std::move(vsock_uds),
                       .hostname = spec.hostname};
  // A VM has whole vCPUs: a fraction of a CPU still needs one.
  launch.vcpus = std::clamp<uint32_t>((spec.limits.millicpus + 999) / 1000, 1, 32);
  launch.millicpus = std::clamp<uint32_t>(spec.limits.millicpus, 1, launch.vcpus * 1000);
  // Guest RAM is the memory limit; the guest kernel takes its share of it.
  launch.memory_mib = std::max<uint64_t>(spec.limits.memory_bytes / kMiB, 64);
  launch.disk_bytes = std::max<uint64_t>(spec.limits.disk_bytes, kMiB);
  return launch;
}

MicrovmCgroupLimits MicrovmVmmLimits(const MicrovmLaunch& launch) {
  uint64_t guest = launch.memory_mib * kMiB;
  // At least 1 ms per period: the kernel refuses a smaller cpu.max quota.
  uint64_t quota =
      std::max<uint64_t>(static_cast<uint64_t>(std::min(launch.millicpus, launch.vcpus * 1000)) *
                             kCpuMaxPeriodUs / 1000,
                         1000);
  return {.cpu_quota_us = quota,
          .memory_max_bytes = guest + kVmmMemoryOverheadBytes + guest / 64,
          .pids_max = launch.vcpus + kVmmThreadAllowance};
}

std::string MicrovmConfigPath(const std::string& sandbox_dir) { return sandbox_dir + "/vm.json"; }
std::string MicrovmVsockPath(const std::string& sandbox_dir) {
  return sandbox_dir + "/vsock/" + kVsockFile;
}
std::string MicrovmJailBase(const std::string& sandbox_dir) { return sandbox_dir + "/jail"; }

Result<std::vector<std::string>> MicrovmVmmArgv(const MicrovmVmmCommand& command,
                                                const MicrovmLaunch& launch) {
  if (command.uid == 0 || command.gid == 0) {
    return Fail(ErrorCode::kInvalidArgument, "tartarus-vmm uid " + std::to_string(command.uid) +
                                                 " gid " + std::to_string(command.gid) +
                                                 ": the jailed VMM must not run as root");
  }
  TRY(ValidateSandboxId(command.id));
  if (command.vmm_path.empty()) {
    return Fail(ErrorCode::kInvalidArgument, "no tartarus-vmm binary given");
  }
  for (const auto& [what, path] :
       {std::pair<const char*, const std::string&>{"sandbox dir", command.sandbox_dir},
        {"kernel", launch.images.kernel},
        {"initramfs", launch.images.initramfs},
        {"root image", launch.root_image},
        {"vsock socket", launch.vsock_uds}}) {
    if (path.empty() || path.front() != '/') {
      return Fail(ErrorCode::kInvalidArgument,
                  std::string(what) + " \"" + path +
                      "\": must be an absolute path (the jail holds files at their host paths)");
    }
  }
  if (launch.vsock_uds.size() > kMaxUnixPath) {
    return Fail(ErrorCode::kInvalidArgument, "vsock socket path " + launch.vsock_uds + " is " +
                                                 std::to_string(launch.vsock_uds.size()) +
                                                 " bytes, more than a Unix socket takes (" +
                                                 std::to_string(kMaxUnixPath) +
                                                 "): use a shorter --state-dir");
  }
  MicrovmCgroupLimits limits = MicrovmVmmLimits(launch);
  return std::vector<std::string>{
      command.vmm_path,
      "--config-file",
      MicrovmConfigPath(command.sandbox_dir),
      "--id",
      command.id,
      "--jail",
      MicrovmJailBase(command.sandbox_dir),
      "--uid",
      std::to_string(command.uid),
      "--gid",
      std::to_string(command.gid),
      "--cgroup-parent",
      std::string(kVmmCgroupParent),
      "--cpu-max",
      std::to_string(limits.cpu_quota_us) + " " + std::to_string(kCpuMaxPeriodUs),
      "--memory-max",
      std::to_string(limits.memory_max_bytes),
      "--pids-max",
      std::to_string(limits.pids_max)};
}

Status TeardownMicrovmJail(const std::string& sandbox_dir, std::string_view id) {
  // Only microVM sandboxes have these; other backends' dirs are left alone.
  if (access(MicrovmConfigPath(sandbox_dir).c_str(), F_OK) != 0 &&
      access(MicrovmJailBase(sandbox_dir).c_str(), F_OK) != 0) {
    return Ok();
  }
  if (auto text = ReadSmallFile(sandbox_dir + "/runtime", 256)) {
    auto jailer = ParseOwnerRecord(*text);
    if (jailer && OwnerAlive(*jailer)) {
      // Not our child: poll for its exit instead of waiting.
      kill(jailer->pid, SIGTERM);
      auto deadline = std::chrono::steady_clock::now() + kJailerStopTimeout;
      while (OwnerAlive(*jailer) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(kRetryInterval);
      }
      if (OwnerAlive(*jailer)) kill(jailer->pid, SIGKILL);
    }
  }
  return RemoveJailLeftovers(sandbox_dir, id);
}

std::string MicrovmBootArgs(const MicrovmLaunch& launch) {
  return "console=ttyS0 quiet reboot=k panic=-1 pci=off i8042.noaux tartarus.root=/dev/vda "
         "tartarus.vsock_port=" +
         std::to_string(kAgentVsockPort) +
         " tartarus.disk_bytes=" + std::to_string(launch.disk_bytes) +
         " tartarus.hostname=" + launch.hostname + " -- --init";
}

std::string MicrovmConfigJson(const MicrovmLaunch& launch) {
  nlohmann::json config = {
      {"boot-source",
       {{"kernel_image_path", launch.images.kernel},
        {"initrd_path", launch.images.initramfs},
        {"boot_args", MicrovmBootArgs(launch)}}},
      {"machine-config", {{"vcpu_count", launch.vcpus}, {"mem_size_mib", launch.memory_mib}}},
      {"drives", nlohmann::json::array({{{"drive_id", "rootfs"},
                                         {"path_on_host", launch.root_image},
                                         {"is_root_device", true},
                                         {"is_read_only", true}}})},
      {"vsock", {{"guest_cid", kGuestCid}, {"uds_path", launch.vsock_uds}}},
      {"entropy", nlohmann::json::object()},
  };
  return config.dump(2) + "\n";
}

Result<UniqueFd> ConnectHybridVsock(const std::string& uds_path, uint32_t port,
                                    milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  sockaddr_un addr = TRY(UnixSocketAddress(uds_path));
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return FailErrno("socket");
  if (connect(fd.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return Fail(ErrorCode::kNotFound, "no hybrid vsock socket at " + uds_path + " yet");
    }
    return FailErrno("connect " + uds_path);
  }
  std::string request = "CONNECT " + std::to_string(port) + "\n";
  if (send(fd.Get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return FailErrno("sending CONNECT to " + uds_path);
  }
  // Byte by byte up to the newline: what follows is the agent's stream.
  std::string line;
  bool whole_line = false;
  while (!whole_line && line.size() < 32) {
    if (!WaitFd(fd.Get(), POLLIN, deadline)) {
      return Fail(ErrorCode::kTimeout, "no answer to CONNECT " + std::to_string(port) + " on " +
                                           uds_path + " within " + std::to_string(timeout.count()) +
                                           " ms");
    }
    char c;
    ssize_t n = recv(fd.Get(), &c, 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
      return Fail(ErrorCode::kNotFound,
                  "nothing listens on vsock port " + std::to_string(port) + " in the guest yet");
    }
    if (n < 0) return FailErrno("reading the CONNECT answer on " + uds_path);
    if (c == '\n') {
      whole_line = true;
    } else {
      line.push_back(c);
    }
  }
  if (!whole_line || line.rfind("OK ", 0) != 0 || line.size() == 3 ||
      line.find_first_not_of("0123456789", 3) != std::string::npos) {
    return Fail(ErrorCode::kProtocol,
                "hybrid vsock on " + uds_path + ": expected \"OK <port>\", got \"" + line + "\"");
  }
  return fd;
}

std::unique_ptr<Backend> MakeMicrovmBackend(const RuntimeConfig& config) {
  return std::make_unique<MicrovmBackend>(config);
}

}  // namespace tartarus::runtime

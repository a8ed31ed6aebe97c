// The Tartarus runtime: the OCI backends (runc, crun, runsc).
#include "runtime/oci_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <optional>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "common/subprocess.h"
#include "common/unique_fd.h"
#include "runtime/cgroups.h"
#include "runtime/lethe.h"
#include "runtime/microvm_backend.h"
#include "runtime/oci_bundle.h"
#include "runtime/owner.h"
#include "runtime/phase_trace.h"

namespace tartarus::runtime {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kStartTimeout{30000};
constexpr milliseconds kExitTimeout{5000};  // for the runtime, after its init was killed
constexpr milliseconds kCommandTimeout{15000};
constexpr size_t kLogTailBytes = 2048;
// How often WaitStarted looks for the runtime's pid file (see there why not inotify).
constexpr std::chrono::microseconds kPidFilePoll{1000};

// crun 1.8 misreads hybrid hosts (v1 controllers + a cgroup2 mount at
// /sys/fs/cgroup/unified) and fails; without that mount it sees plain v1. So every crun
// command runs in a private mount namespace where the cgroup2 mount is gone.
constexpr const char* kCrunWrapper =
    "if [ -d /sys/fs/cgroup/unified ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then "
    "umount /sys/fs/cgroup/unified || exit 125; fi; exec crun \"$@\"";

const char* BinaryName(OciRuntime runtime) {
  switch (runtime) {
    case OciRuntime::kRunc:
      return "runc";
    case OciRuntime::kCrun:
      return "crun";
    case OciRuntime::kRunsc:
      return "runsc";
  }
  return "runc";
}

const char* BackendName(OciRuntime runtime) {
  switch (runtime) {
    case OciRuntime::kRunc:
      return "container";
    case OciRuntime::kCrun:
      return "container-crun";
    case OciRuntime::kRunsc:
      return "gvisor";
  }
  return "container";
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

Status MakeDirs(const std::string& path) {
  for (size_t slash = 1; slash != std::string::npos;) {
    slash = path.find('/', slash + 1);
    std::string prefix = path.substr(0, slash);
    if (mkdir(prefix.c_str(), 0700) < 0 && errno != EEXIST) return FailErrno("mkdir " + prefix);
  }
  return Ok();
}

// The runtime's argv up to (not including) the subcommand.
std::vector<std::string> RuntimePrefix(OciRuntime runtime, const RuntimeConfig& config) {
  std::string root = OciRootDir(config, runtime);
  switch (runtime) {
    case OciRuntime::kRunc:
      return {"runc", "--root", root};
    case OciRuntime::kCrun:
      return {"unshare", "-m",         "--propagation", "private", "sh",
              "-c",      kCrunWrapper, "crun",          "--root",  root};
    case OciRuntime::kRunsc:
      // No network stack at all; the OCI seccomp profile applies inside the sentry too;
      // no gVisor-internal overlay, so writes land in Lethe's size-limited tmpfs.
      return {"runsc",
              "--root",
              root,
              "--platform=" + config.gvisor_platform,
              "--network=none",
              "--overlay2=none",
              "--oci-seccomp"};
  }
  return {};
}

// The last lines of the runtime's log, for error messages.
std::string LogTail(const std::string& path) { return ReadFileTail(path, kLogTailBytes); }

// Removes the files Start writes and the sandbox dirs; never descends into mounts.
// Once Lethe's tmpfs is gone, only the sandbox dir remains; the other names are the
// layout of older versions, whose files were on the host's disk.
Status RemoveSandboxFiles(const std::string& dir) {
  // vm.json and vsock.sock: the microvm backend's, which shares this layout and cleanup.
  for (const char* file :
       {"owner", "bundle/config.json", "runtime", "runtime.log", "vm.json", "vsock.sock"}) {
    std::string path = dir + "/" + file;
    if (unlink(path.c_str()) < 0 && errno != ENOENT) return FailErrno("unlink " + path);
  }
  for (const std::string& path : {dir + "/bundle", dir}) {
    if (rmdir(path.c_str()) < 0 && errno != ENOENT) return FailErrno("rmdir " + path);
  }
  return Ok();
}

// Makes the OCI runtime forget container `id` (killing it if it still runs), but only
// when the runtime still has state for it: runc run deletes its own state on exit.
Status DeleteContainer(const RuntimeConfig& config, OciRuntime runtime, std::string_view id) {
  if (!Exists(OciRootDir(config, runtime) + "/" + std::string(id))) return Ok();
  std::vector<std::string> argv = RuntimePrefix(runtime, config);
  argv.push_back("delete");
  argv.push_back(runtime == OciRuntime::kRunsc ? "-force" : "-f");
  argv.push_back(std::string(id));
  auto output = RunCommand(argv, kCommandTimeout);
  if (!output) return Fail(output.error().Context(std::string(BinaryName(runtime)) + " delete"));
  if (!output->status.Success() && Exists(OciRootDir(config, runtime) + "/" + std::string(id))) {
    return Fail(ErrorCode::kIo, std::string(BinaryName(runtime)) + " delete " + std::string(id) +
                                    " failed (" + output->status.Describe() + "): " + output->err);
  }
  return Ok();
}

// Starts the OCI runtime with fds 0-2 = `stdio` and nothing else open, default signal
// dispositions and an empty signal mask. posix_spawn (a vfork-style clone in glibc)
// instead of common's fork-based Spawn: copying this process's page tables and closing
// a thousand fds one by one cost 1-2 ms on every run's critical path here; this ~0.25 ms.
// `child_fds[i]` becomes fd i of the runtime (-1: /dev/null); everything else is closed.
Result<Subprocess> SpawnRuntime(const std::vector<std::string>& argv,
                                const std::vector<int>& child_fds) {
  std::string path = FindExecutable(argv.at(0));
  if (path.empty()) return Fail(ErrorCode::kNotFound, argv[0] + ": executable not found in PATH");
  const int count = static_cast<int>(child_fds.size());
  // A source fd among the targets could be overwritten by an earlier dup2: move it above.
  std::vector<UniqueFd> moved(child_fds.size());
  std::vector<int> sources = child_fds;
  for (int i = 0; i < count; ++i) {
    if (sources[i] >= 0 && sources[i] < count) {
      moved[i].Reset(fcntl(sources[i], F_DUPFD_CLOEXEC, count));
      if (!moved[i]) return FailErrno("fcntl F_DUPFD_CLOEXEC");
      sources[i] = moved[i].Get();
    }
  }
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  if (int err = posix_spawn_file_actions_init(&actions)) return FailErrno("posix_spawn", err);
  if (int err = posix_spawnattr_init(&attr)) {
    posix_spawn_file_actions_destroy(&actions);
    return FailErrno("posix_spawn", err);
  }
  int err = 0;
  for (int i = 0; i < count && !err; ++i) {
    err = sources[i] >= 0 ? posix_spawn_file_actions_adddup2(&actions, sources[i], i)
                          : posix_spawn_file_actions_addopen(&actions, i, "/dev/null", O_RDWR, 0);
  }
  if (!err) err = posix_spawn_file_actions_addclosefrom_np(&actions, count);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  if (!err) err = posix_spawnattr_setsigmask(&attr, &none);
  if (!err) err = posix_spawnattr_setsigdefault(&attr, &all);
  if (!err) err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (!err) err = posix_spawn(&pid, path.c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err) return FailErrno("exec " + argv[0], err);
  return Subprocess(pid);
}

// Waits up to `timeout` for `fd` (a pidfd: the process exited) to become readable.
bool WaitReadable(int fd, milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    int ready = poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (ready > 0) return true;
    if (ready == 0 || errno != EINTR) return false;
  }
}

int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

class OciSandbox : public Sandbox {
 public:
  OciSandbox(OciRuntime runtime, RuntimeConfig config, std::string id)
      : runtime_(runtime),
        config_(std::move(config)),
        id_(std::move(id)),
        dir_(SandboxDir(config_, id_)) {}
  ~OciSandbox() override { (void)Destroy(); }

  const std::string& Id() const override { return id_; }
  UniqueFd TakeFromAgent() override { return std::move(from_agent_); }
  UniqueFd TakeToAgent() override { return std::move(to_agent_); }

  Result<Usage> GetUsage() override {
    auto usage = ReadCgroupUsage(CgroupDirsForPath(std::string(kCgroupRoot), CgroupsPathFor(id_)));
    if (!usage) return Fail(usage.error().Context("sandbox " + id_ + " usage"));
    return usage;
  }

  Status Destroy() override {
    if (destroyed_) return Ok();
    if (!created_dir_) {
      // Start failed on an existing dir: it belongs to another sandbox with this id.
      destroyed_ = true;
      return Ok();
    }
    // Kill the container's init: the kernel then kills its whole pid namespace (or, for
    // gVisor, the whole sandbox), and the foreground runtime cleans up and exits by itself.
    PhaseTimer wait_phase("destroy.runtime_exit");
    // Without WaitStarted(): the init pid, if the runtime got that far.
    if (!started_ && process_.pid() > 0) (void)ReadInitPid();
    if (process_.pid() > 0) {
      auto exited = process_.TryWait();
      if (exited && !exited->has_value()) {
        if (init_pidfd_) {
          syscall(SYS_pidfd_send_signal, init_pidfd_.Get(), SIGKILL, nullptr, 0);
          // runc and crun: once their init is gone, so is every process and mount of the
          // container (the kernel reaps the whole pid namespace before the init's pidfd
          // turns readable), and Lethe can go while the runtime still removes its cgroups
          // and state. Not gVisor: its gofer, a separate process, still holds files open.
          if (runtime_ != OciRuntime::kRunsc && WaitReadable(init_pidfd_.Get(), kExitTimeout)) {
            PhaseTimer early_phase("destroy.lethe_detach");
            (void)lethe_.DetachNow();
          }
        }
        // Without the init's pidfd there is nothing to wait for: kill the runtime at once.
        WaitRuntimeExit(init_pidfd_ ? kExitTimeout : milliseconds(0));
      }
    }
    init_pidfd_.Reset();
    runtime_pidfd_.Reset();
    wait_phase.Stop();
    // Every step runs even when an earlier one failed, so a failure leaks as little as
    // possible; the first error is reported and a later Destroy() retries.
    Status first = Ok();
    auto step = [&first](Status status) {
      if (!status && first) first = std::move(status);
    };
    // Only when the runtime did not get to clean up (it was killed, or died).
    step(DeleteContainer(config_, runtime_, id_));
    PhaseTimer lethe_phase("destroy.lethe");
    step(lethe_.Destroy());
    lethe_phase.Stop();
    PhaseTimer cgroup_phase("destroy.cgroups+files");
    if (!RemoveCgroupPath(std::string(kCgroupRoot), CgroupsPathFor(id_))) {
      // Busy: something outlived the runtime (it was killed before it could clean up).
      KillCgroupProcesses(CgroupDirsForPath(std::string(kCgroupRoot), CgroupsPathFor(id_)));
      step(RemoveCgroupPath(std::string(kCgroupRoot), CgroupsPathFor(id_)));
    }
    if (first) step(RemoveSandboxFiles(dir_));
    if (!first) return Fail(first.error().Context("destroying sandbox " + id_));
    destroyed_ = true;
    return Ok();
  }

  Status Start(const SandboxSpec& spec) {
    if (mkdir(dir_.c_str(), 0700) < 0) {
      if (errno == EEXIST) {
        return Fail(ErrorCode::kAlreadyExists, "sandbox " + id_ + " already exists");
      }
      return FailErrno("mkdir " + dir_);
    }
    created_dir_ = true;
    PhaseTimer lethe_phase("start.lethe");
    // Lethe's tmpfs is mounted on the sandbox dir itself and holds every file of the run:
    // it is also the OCI bundle. Files and dirs on the host's disk cost on every run: CPU
    // to allocate inodes, and on these hosts (ext4 with `discard`) a synchronous discard
    // for every directory removed. A crash before `owner` is written leaves a dir without
    // one, which CleanupLeftovers removes after a minute.
    std::string bundle = dir_;
    lethe_ = TRY(Lethe::Create(spec.rootfs, dir_, dir_ + "/rootfs", spec.limits.disk_bytes));
    lethe_phase.Stop();
    PhaseTimer owner_phase("start.owner");
    auto owner = TRY(CurrentProcessOwner());
    TRY(WriteFileAtomic(dir_ + "/owner", FormatOwnerRecord(owner), Durability::kNoFsync, 0600));
    owner_phase.Stop();
    PhaseTimer bundle_phase("start.bundle");
    OciProfileOptions profile;
    if (runtime_ == OciRuntime::kRunsc) profile.runtime_host_pids = kGvisorRuntimeHostPids;
    // runsc has no --preserve-fds: the agent stays on its stdio there.
    profile.agent_on_preserved_fds = runtime_ != OciRuntime::kRunsc;
    profile.seccomp_in_agent = runtime_ != OciRuntime::kRunsc;
    TRY(WriteOciBundle(bundle, spec, profile));

    bundle_phase.Stop();
    PhaseTimer spawn_phase("start.spawn_runtime");
    int to_agent[2], from_agent[2];
    if (pipe2(to_agent, O_CLOEXEC) < 0) return FailErrno("pipe2");
    UniqueFd agent_stdin(to_agent[0]);
    to_agent_.Reset(to_agent[1]);
    if (pipe2(from_agent, O_CLOEXEC) < 0) return FailErrno("pipe2");
    from_agent_.Reset(from_agent[0]);
    UniqueFd agent_stdout(from_agent[1]);
    std::string log_path = bundle + "/runtime.log";
    UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!log) return FailErrno("creating " + log_path);

    // On Lethe's tmpfs: runc writes it with O_SYNC, which costs milliseconds on a disk.
    std::string pid_path = bundle + "/init.pid";
    std::vector<std::string> argv = RuntimePrefix(runtime_, config_);
    for (const std::string& arg : {std::string("run"), std::string("--bundle"), bundle,
                                   std::string("--pid-file"), pid_path}) {
      argv.push_back(arg);
    }
    // The runtime's own stdio then carries only the agent's diagnostics, into the log.
    std::vector<int> runtime_fds = {agent_stdin.Get(), agent_stdout.Get(), log.Get()};
    if (profile.agent_on_preserved_fds) {
      argv.insert(argv.end(), {"--preserve-fds", "2"});
      runtime_fds = {-1, log.Get(), log.Get(), agent_stdin.Get(), agent_stdout.Get()};
    }
    argv.push_back(id_);
    // Not die_with_parent: the owner supervises, and CleanupLeftovers handles its death.
    // No new session either: with scheduler autogroups it made every start ~10 ms slower
    // here; a terminal's SIGINT reaching the runtime is forwarded to the agent, which as
    // PID 1 ignores signals it has no handler for.
    process_ = TRY(SpawnRuntime(argv, runtime_fds));
    // Recorded for CleanupLeftovers: the runtime outlives a killed owner.
    if (auto start = ProcessStartTime(process_.pid())) {
      (void)WriteFileAtomic(bundle + "/runtime", FormatOwnerRecord({process_.pid(), *start}),
                            Durability::kNoFsync, 0600);
    }
    agent_stdin.Reset();
    agent_stdout.Reset();
    runtime_pidfd_.Reset(PidfdOpen(process_.pid()));  // our unreaped child: cannot be reused

    spawn_phase.Stop();
    start_deadline_ = std::chrono::steady_clock::now() + kStartTimeout;
    log_path_ = log_path;
    pid_path_ = pid_path;
    return Ok();
  }

  // Not in Start: the agent's handshake tells when the sandbox runs, and it overlaps with
  // the runtime's last steps (writing the pid file, waking us). By the time the caller
  // gets here the pid file is normally there. The runtime's pidfd wakes us when it exits;
  // otherwise the pid file is looked at every kPidFilePoll. Not inotify: closing an
  // inotify instance waits for an SRCU grace period in the kernel (the destruction of its
  // watch), 6-11 ms of uninterruptible sleep on every run on the dev VMs.
  Status WaitStarted() override {
    if (started_) return Ok();
    if (start_error_) return Fail(*start_error_);
    PhaseTimer phase("start.wait_init_pid");
    std::string runtime = BinaryName(runtime_);
    while (!ReadInitPid()) {
      if (process_.pid() < 0) {
        start_error_ = Error{ErrorCode::kFailedPrecondition, runtime + " is not running"};
        return Fail(*start_error_);
      }
      auto exited = TRY(process_.TryWait());
      if (exited) {
        start_error_ = Error{
            ErrorCode::kFailedPrecondition,
            runtime + " run exited early (" + exited->Describe() + "): " + LogTail(log_path_)};
        return Fail(*start_error_);
      }
      if (std::chrono::steady_clock::now() > start_deadline_) {
        start_error_ =
            Error{ErrorCode::kTimeout,
                  runtime + " run did not start the sandbox in time: " + LogTail(log_path_)};
        return Fail(*start_error_);
      }
      // Without a pidfd (old kernels) this is a plain sleep.
      pollfd exit_fd{runtime_pidfd_.Get(), POLLIN, 0};
      timespec interval{0, std::chrono::nanoseconds(kPidFilePoll).count()};
      (void)ppoll(&exit_fd, 1, &interval, nullptr);
    }
    return Ok();
  }

 private:
  // Reads the pid file once; true (and the init's pidfd taken) when it holds the pid.
  bool ReadInitPid() {
    // runsc creates the file before writing it: wait for a whole number.
    auto text = ReadSmallFile(pid_path_, 64);
    if (!text || text->empty() || text->back() == ' ') return false;
    int pid = 0;
    auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), pid);
    if (ec != std::errc() || pid <= 0) return false;
    init_pidfd_.Reset(PidfdOpen(pid));
    started_ = true;
    return true;
  }

  // Waits up to `timeout` for the runtime process to exit, then kills and reaps it.
  void WaitRuntimeExit(milliseconds timeout) {
    if (runtime_pidfd_ && timeout.count() > 0) {
      pollfd fd{runtime_pidfd_.Get(), POLLIN, 0};
      auto deadline = std::chrono::steady_clock::now() + timeout;
      while (true) {
        auto left =
            std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        int ready = poll(&fd, 1, static_cast<int>(left.count()));
        if (ready > 0 || (ready < 0 && errno != EINTR)) break;
      }
    }
    bool timed_out = false;
    (void)process_.WaitFor(runtime_pidfd_ ? milliseconds(0) : timeout, &timed_out);
  }

  OciRuntime runtime_;
  RuntimeConfig config_;
  std::string id_;
  std::string dir_;
  Subprocess process_;
  UniqueFd runtime_pidfd_;
  UniqueFd init_pidfd_;
  UniqueFd to_agent_;
  UniqueFd from_agent_;
  Lethe lethe_;
  std::string log_path_;
  std::string pid_path_;
  std::chrono::steady_clock::time_point start_deadline_;
  bool started_ = false;  // the init pid is known
  std::optional<Error> start_error_;
  bool created_dir_ = false;
  bool destroyed_ = false;
};

class OciBackend : public Backend {
 public:
  OciBackend(OciRuntime runtime, RuntimeConfig config)
      : runtime_(runtime), config_(std::move(config)) {}

  std::string_view Name() const override { return BackendName(runtime_); }

  Status CheckAvailable() const override {
    std::string binary = BinaryName(runtime_);
    if (FindExecutable(binary).empty()) {
      return Fail(ErrorCode::kFailedPrecondition,
                  binary + " not found: install it with `apt-get install " + binary + "`");
    }
    if (geteuid() != 0) {
      return Fail(ErrorCode::kPermissionDenied,
                  "the " + std::string(Name()) + " backend needs root (mounts, cgroups)");
    }
    std::string root(kCgroupRoot);
    if (!Exists(root + "/cgroup.controllers") && !Exists(root + "/memory")) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "no memory cgroup controller under " + root + ": limits cannot be enforced");
    }
    // overlayfs may be a module that the first mount loads: only a kernel that has it
    // neither loaded nor installed is refused.
    auto filesystems = ReadSmallFile("/proc/filesystems");
    if (filesystems && filesystems->find("\toverlay\n") == std::string::npos &&
        !Exists("/sys/module/overlay")) {
      struct utsname uts;
      if (uname(&uts) == 0 &&
          !Exists(std::string("/lib/modules/") + uts.release + "/kernel/fs/overlayfs")) {
        return Fail(ErrorCode::kFailedPrecondition,
                    "overlayfs is not available in this kernel (Lethe needs it)");
      }
    }
    if (runtime_ == OciRuntime::kCrun && Exists(root + "/unified") &&
        FindExecutable("unshare").empty()) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "crun cannot use this hybrid cgroup host without unshare (util-linux) to hide "
                  "/sys/fs/cgroup/unified");
    }
    if (runtime_ == OciRuntime::kRunsc && config_.gvisor_platform == "kvm") {
      if (!Exists("/dev/kvm")) {
        return Fail(ErrorCode::kFailedPrecondition,
                    "runsc --platform=kvm needs /dev/kvm; use gvisor_platform=ptrace");
      }
      if (Exists("/sys/module/kvm_pvm")) {
        return Fail(ErrorCode::kFailedPrecondition,
                    "runsc --platform=kvm does not run on KVM-PVM hosts (no VMX/SVM); use "
                    "gvisor_platform=ptrace");
      }
    }
    return Ok();
  }

  Result<std::unique_ptr<Sandbox>> Start(const SandboxSpec& spec) override {
    TRY(ValidateSandboxId(spec.id));
    if (spec.rootfs.empty() || spec.rootfs[0] != '/') {
      return Fail(ErrorCode::kInvalidArgument, "rootfs must be an absolute path: " + spec.rootfs);
    }
    if (!Exists(spec.agent_path)) {
      return Fail(ErrorCode::kNotFound, "guest agent not found: " + spec.agent_path);
    }
    TRY(MakeDirs(SandboxesDir(config_)));
    auto sandbox = std::make_unique<OciSandbox>(runtime_, config_, spec.id);
    auto started = sandbox->Start(spec);
    if (!started) {
      // Destroy() leaves a dir it did not create (a sandbox with the same id) alone.
      auto destroyed = sandbox->Destroy();
      if (!destroyed) {
        return Fail(started.error().Context("starting sandbox " + spec.id +
                                            " (cleanup: " + destroyed.error().message + ")"));
      }
      return Fail(started.error().Context("starting sandbox " + spec.id));
    }
    return std::unique_ptr<Sandbox>(std::move(sandbox));
  }

 private:
  OciRuntime runtime_;
  RuntimeConfig config_;
};

}  // namespace

std::string RuntimeStateDir(const RuntimeConfig& config) { return config.state_dir + "/runtime"; }
std::string SandboxesDir(const RuntimeConfig& config) {
  return RuntimeStateDir(config) + "/sandboxes";
}
std::string SandboxDir(const RuntimeConfig& config, std::string_view id) {
  return SandboxesDir(config) + "/" + std::string(id);
}
std::string OciRootDir(const RuntimeConfig& config, OciRuntime runtime) {
  return RuntimeStateDir(config) + "/" + BinaryName(runtime);
}

std::unique_ptr<Backend> MakeOciBackend(OciRuntime runtime, const RuntimeConfig& config) {
  return std::make_unique<OciBackend>(runtime, config);
}

Status TeardownSandboxState(const RuntimeConfig& config, std::string_view id) {
  TRY(ValidateSandboxId(id));
  std::string dir = SandboxDir(config, id);
  Status first = Ok();
  auto step = [&first](Status status) {
    if (!status && first) first = std::move(status);
  };
  for (OciRuntime runtime : {OciRuntime::kRunc, OciRuntime::kRunsc, OciRuntime::kCrun}) {
    step(DeleteContainer(config, runtime, id));
  }
  // A microVM's jailer first, by SIGTERM, so that it removes its jail and cgroup itself.
  step(TeardownMicrovmJail(dir, id));
  // The foreground runtime process of the dead owner, if it has not exited by itself.
  if (auto text = ReadSmallFile(dir + "/runtime", 256)) {
    auto runtime = ParseOwnerRecord(*text);
    if (runtime && OwnerAlive(*runtime)) kill(runtime->pid, SIGKILL);
  }
  // Whatever still runs in the sandbox's cgroup (the runtime's state may have been lost).
  KillCgroupProcesses(CgroupDirsForPath(std::string(kCgroupRoot), CgroupsPathFor(id)));
  // Lethe: the overlay and the tmpfs on the sandbox dir; then the same in the layout of
  // older versions (<dir>/layer and <dir>/bundle/rootfs on the host's disk).
  step(UnmountIfMounted(dir + "/rootfs"));
  step(UnmountIfMounted(dir));
  step(Lethe::Teardown(dir + "/layer", dir + "/bundle/rootfs"));
  step(RemoveCgroupPath(std::string(kCgroupRoot), CgroupsPathFor(id)));
  if (first) step(RemoveSandboxFiles(dir));
  return first;
}

Result<std::unique_ptr<Backend>> MakeBackend(std::string_view name, const RuntimeConfig& config) {
  if (config.state_dir.empty() || config.state_dir[0] != '/') {
    return Fail(ErrorCode::kInvalidArgument, "runtime state dir must be an absolute path");
  }
  if (name == "container") return MakeOciBackend(OciRuntime::kRunc, config);
  if (name == "container-crun") return MakeOciBackend(OciRuntime::kCrun, config);
  if (name == "gvisor") return MakeOciBackend(OciRuntime::kRunsc, config);
  if (name == "microvm") return MakeMicrovmBackend(config);
  return Fail(ErrorCode::kInvalidArgument,
              "unknown backend \"" + std::string(name) +
                  "\": expected container, container-crun, gvisor or microvm");
}

std::vector<std::string> BackendNames() {
  return {"container", "container-crun", "gvisor", "microvm"};
}

Result<std::vector<std::string>> CleanupLeftovers(const RuntimeConfig& config) {
  std::vector<std::string> cleaned;
  std::string dir_path = SandboxesDir(config);
  DIR* dir = opendir(dir_path.c_str());
  if (!dir) {
    if (errno == ENOENT) return cleaned;
    return FailErrno("opendir " + dir_path);
  }
  std::vector<std::string> ids;
  while (dirent* entry = readdir(dir)) {
    std::string name = entry->d_name;
    if (name == "." || name == ".." || !ValidateSandboxId(name)) continue;
    ids.push_back(name);
  }
  closedir(dir);
  std::string errors;
  for (const auto& id : ids) {
    std::string owner_path = SandboxDir(config, id) + "/owner";
    auto text = ReadSmallFile(owner_path, 256);
    auto owner = text ? ParseOwnerRecord(*text) : Result<OwnerRecord>(Fail(text.error()));
    if (owner) {
      if (OwnerAlive(*owner)) continue;
    } else {
      // No owner record yet (a Start may be between mkdir and writing it), or an
      // unreadable one: leave young dirs, clean up old ones.
      struct stat st;
      if (stat(SandboxDir(config, id).c_str(), &st) < 0) continue;
      if (time(nullptr) - st.st_mtime < 60) continue;
    }
    auto torn_down = TeardownSandboxState(config, id);
    if (!torn_down) {
      errors += (errors.empty() ? "" : "; ") + id + ": " + torn_down.error().message;
      continue;
    }
    cleaned.push_back(id);
  }
  if (!errors.empty()) return Fail(ErrorCode::kIo, "cleaning up leftover sandboxes: " + errors);
  return cleaned;
}

}  // namespace tartarus::runtime

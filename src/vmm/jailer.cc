// tartarus-vmm (Tartarus's KVM microVM monitor): the jailer (Erebus). See jailer.h.
#include "vmm/jailer.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/file_util.h"
#include "common/unique_fd.h"

namespace tartarus::vmm {
namespace {

namespace fs = std::filesystem;

volatile sig_atomic_t jailed_child = 0;

// pid 1 of a PID namespace ignores signals it has no handler for: stop it with SIGKILL.
void ForwardStop(int) {
  if (jailed_child > 0) ::kill(jailed_child, SIGKILL);
}

bool IsCount(const std::string& text) {
  return !text.empty() && text.size() <= 19 &&
         text.find_first_not_of("0123456789") == std::string::npos;
}

Status WriteText(const std::string& path, const std::string& text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return FailErrno("open " + path);
  if (::write(fd.Get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return FailErrno("write " + text + " to " + path);
  }
  return Ok();
}

// The cgroup v2 mount point, or empty (a cgroup v1-only host).
std::string CgroupV2Mount() {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, point, type;
  std::string rest;
  while (mounts >> device >> point >> type && std::getline(mounts, rest)) {
    if (type == "cgroup2") return point;
  }
  return "";
}

// The cgroup v1 hierarchy that has `controller` (hybrid and v1-only hosts), or empty.
std::string CgroupV1Mount(const std::string& controller) {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, point, type, options;
  std::string rest;
  while (mounts >> device >> point >> type >> options && std::getline(mounts, rest)) {
    if (type != "cgroup") continue;
    std::stringstream words(options);
    for (std::string word; std::getline(words, word, ',');) {
      if (word == controller) return point;
    }
  }
  return "";
}

// One limit as cgroup v1 spells it: memory.limit_in_bytes, cpu.cfs_period_us then
// cpu.cfs_quota_us, pids.max ("max" is -1 for the first two).
Status WriteV1Limit(const std::string& leaf, const std::string& controller,
                    const std::string& value) {
  if (controller == "memory") {
    return WriteText(leaf + "/memory.limit_in_bytes", value == "max" ? "-1" : value);
  }
  if (controller == "cpu") {
    const size_t space = value.find(' ');
    const std::string quota = value.substr(0, space);
    if (space != std::string::npos)
      TRY(WriteText(leaf + "/cpu.cfs_period_us", value.substr(space + 1)));
    return WriteText(leaf + "/cpu.cfs_quota_us", quota == "max" ? "-1" : quota);
  }
  return WriteText(leaf + "/pids.max", value);
}

// Makes <mount>/<cgroup_parent>/<id>; empty (after saying why) when it cannot.
std::string MakeLeaf(const std::string& mount, const JailOptions& options) {
  const std::string parent = mount + "/" + options.cgroup_parent;
  const std::string leaf = parent + "/" + options.id;
  std::error_code error;
  fs::create_directories(parent, error);
  if (::mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
    std::fprintf(stderr, "tartarus-vmm: jail: cannot create cgroup %s (%s)\n", leaf.c_str(),
                 std::strerror(errno));
    return "";
  }
  return leaf;
}

// The jail's cgroup leaves (to remove when the VM ends). Each limit goes where its controller
// is: the cgroup v2 leaf <cgroup2>/<parent>/<id> when v2 has it, else the v1 hierarchy that
// has it (hybrid hosts such as this project's machines bind cpu, memory and pids to v1), at
// the same relative path. A limit that fits nowhere is reported and skipped: the VM runs.
std::vector<std::string> SetUpCgroups(const JailOptions& options, pid_t child) {
  std::vector<std::string> leaves;
  const auto join = [&](const std::string& leaf) {
    if (Status moved = WriteText(leaf + "/cgroup.procs", std::to_string(child)); !moved) {
      std::fprintf(stderr, "tartarus-vmm: jail: %s; running outside %s\n",
                   moved.error().message.c_str(), leaf.c_str());
    }
    leaves.push_back(leaf);
  };
  const std::pair<std::string, const std::string*> limits[] = {
      {"cpu", &options.cpu_max}, {"memory", &options.memory_max}, {"pids", &options.pids_max}};
  std::vector<std::pair<std::string, std::string>> not_in_v2;
  const std::string v2 = CgroupV2Mount();
  std::string v2_leaf;
  if (!v2.empty() && ::access(v2.c_str(), W_OK) == 0) v2_leaf = MakeLeaf(v2, options);
  for (const auto& [controller, value] : limits) {
    if (value->empty()) continue;
    bool set = false;
    if (!v2_leaf.empty()) {
      // Controllers are enabled top-down; one bound to v1 cannot be, and its file is missing.
      std::string dir = v2;
      for (const auto& part : fs::path(options.cgroup_parent)) {
        (void)WriteText(dir + "/cgroup.subtree_control", "+" + controller);
        dir += "/" + part.string();
      }
      (void)WriteText(dir + "/cgroup.subtree_control", "+" + controller);
      set = static_cast<bool>(WriteText(v2_leaf + "/" + controller + ".max", *value));
    }
    if (!set) not_in_v2.emplace_back(controller, *value);
  }
  if (!v2_leaf.empty()) join(v2_leaf);
  for (const auto& [controller, value] : not_in_v2) {
    const std::string mount = CgroupV1Mount(controller);
    std::string leaf = mount.empty() ? "" : MakeLeaf(mount, options);
    Status set = leaf.empty() ? Fail(ErrorCode::kNotFound, "no cgroup v1 or v2 hierarchy has it")
                              : WriteV1Limit(leaf, controller, value);
    if (!set) {
      std::fprintf(stderr,
                   "tartarus-vmm: jail: %s limit not set, cgroup limits skipped for it: %s\n",
                   controller.c_str(), set.error().message.c_str());
    }
    // cpu and cpuacct (or others) may share one hierarchy: join each leaf once.
    if (!leaf.empty() && std::find(leaves.begin(), leaves.end(), leaf) == leaves.end()) join(leaf);
  }
  return leaves;
}

Status MakeParents(const std::string& path) {
  std::error_code error;
  fs::create_directories(fs::path(path).parent_path(), error);
  if (error) return Fail(ErrorCode::kIo, "jail: mkdir " + path + ": " + error.message());
  return Ok();
}

Status BindInto(const std::string& root, const std::string& host, bool directory, bool read_only) {
  const std::string target = root + host;
  TRY(MakeParents(target));
  if (directory) {
    if (::mkdir(target.c_str(), 0755) != 0 && errno != EEXIST)
      return FailErrno("jail: mkdir " + target);
  } else {
    UniqueFd made(::open(target.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    if (!made) return FailErrno("jail: create " + target);
  }
  if (::mount(host.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return FailErrno("jail: bind " + host);
  }
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (read_only ? MS_RDONLY : 0);
  if (::mount(nullptr, target.c_str(), nullptr, flags, nullptr) != 0) {
    return FailErrno("jail: remount " + host);
  }
  return Ok();
}

// A device node like the host's, owned by the VM's uid/gid (bind-mounting the host's node
// would keep root's ownership, and chown on it would change the host's).
Status MakeDevice(const std::string& root, const std::string& host, mode_t mode,
                  const JailOptions& options) {
  struct stat info {};
  if (::stat(host.c_str(), &info) != 0) return FailErrno("jail: stat " + host);
  const std::string target = root + host;
  if (::mknod(target.c_str(), S_IFCHR | mode, info.st_rdev) != 0) {
    return FailErrno("jail: mknod " + target);
  }
  if (::chown(target.c_str(), options.uid, options.gid) != 0 ||
      ::chmod(target.c_str(), mode) != 0) {
    return FailErrno("jail: chown " + target);
  }
  return Ok();
}

// In the child (root, pid 1 of its PID namespace): everything up to running the VMM.
// parent_alive: the read end of a pipe whose write end only the jailer holds, until it ends.
Status EnterJail(const JailOptions& options, const JailContents& contents, const std::string& root,
                 int parent_alive) {
  if (::unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS) != 0) {
    return FailErrno("jail: unshare(mount, net, ipc, uts)");
  }
  // Nothing mounted from here on propagates back to the host.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return FailErrno("jail: make / private");
  }
  if (::mount(root.c_str(), root.c_str(), nullptr, MS_BIND | MS_NOSUID, nullptr) != 0) {
    return FailErrno("jail: bind " + root);
  }
  if (::mkdir((root + "/dev").c_str(), 0755) != 0) return FailErrno("jail: mkdir dev");
  TRY(MakeDevice(root, "/dev/kvm", 0660, options));
  TRY(MakeDevice(root, "/dev/urandom", 0666, options));
  TRY(MakeDevice(root, "/dev/null", 0666, options));
  // HostKvmIsPvm() looks for this directory: the guest's CPUID depends on it.
  if (::access("/sys/module/kvm_pvm", F_OK) == 0) TRY(MakeParents(root + "/sys/module/kvm_pvm/x"));
  for (const std::string& file : contents.read_only_files) TRY(BindInto(root, file, false, true));
  for (const std::string& file : contents.files) TRY(BindInto(root, file, false, false));
  for (const std::string& dir : contents.dirs) TRY(BindInto(root, dir, true, false));

  // pivot_root(".", "."): the old root ends up on top of the new one and is detached.
  if (::chdir(root.c_str()) != 0) return FailErrno("jail: chdir " + root);
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return FailErrno("jail: pivot_root");
  if (::umount2(".", MNT_DETACH) != 0) return FailErrno("jail: detach the old root");
  if (::chdir("/") != 0) return FailErrno("jail: chdir /");
  // The root itself is read-only; the bind mounts above keep their own flags.
  if (::mount(nullptr, "/", nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, nullptr) != 0) {
    return FailErrno("jail: remount / read-only");
  }

  if (::setgroups(0, nullptr) != 0) return FailErrno("jail: setgroups");
  if (::setresgid(options.gid, options.gid, options.gid) != 0) return FailErrno("jail: setresgid");
  if (::setresuid(options.uid, options.uid, options.uid) != 0) return FailErrno("jail: setresuid");
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return FailErrno("jail: no_new_privs");
  // A jailer killed outright takes its VM along (set after setresuid, which clears it).
  // Test only: widens the window before the parent-death signal, so a test can kill the
  // jailer inside it (vmm_hardening_test).
  if (const char* delay = std::getenv("TARTARUS_VMM_TEST_JAIL_DELAY_MS")) {
    ::usleep(static_cast<useconds_t>(std::atoi(delay)) * 1000);
  }
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) return FailErrno("jail: pdeathsig");
  // A jailer that died before the line above sent no signal: its end of the pipe is closed.
  pollfd parent{parent_alive, POLLIN, 0};
  if (::poll(&parent, 1, 0) != 0) {
    return Fail(ErrorCode::kCancelled, "jail: the jailer ended while the VMM was being jailed");
  }
  if (::syscall(SYS_close_range, 3u, ~0u, 0u) != 0) return FailErrno("jail: close_range");
  return Ok();
}

}  // namespace

Status ValidateJailOptions(const JailOptions& options) {
  if (options.id.empty() || options.id.size() > 64 ||
      options.id.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789-_") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                "--id " + options.id + ": a jailed VM's id is 1-64 letters, digits, '-' or '_'");
  }
  if (options.base_dir.empty() || options.base_dir.front() != '/') {
    return Fail(ErrorCode::kInvalidArgument,
                "--jail " + options.base_dir + ": need an absolute path");
  }
  const fs::path parent(options.cgroup_parent);
  if (options.cgroup_parent.empty() || parent.is_absolute() ||
      options.cgroup_parent.find("..") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                "--cgroup-parent " + options.cgroup_parent + ": need a relative path without ..");
  }
  if (!options.cpu_max.empty()) {
    std::istringstream words(options.cpu_max);
    std::string quota, period, extra;
    words >> quota >> period >> extra;
    if (!(quota == "max" || IsCount(quota)) || !IsCount(period) || !extra.empty()) {
      return Fail(ErrorCode::kInvalidArgument, "--cpu-max \"" + options.cpu_max +
                                                   "\": need \"QUOTA PERIOD\" (microseconds) "
                                                   "or \"max PERIOD\"");
    }
  }
  if (!options.memory_max.empty() && options.memory_max != "max" && !IsCount(options.memory_max)) {
    return Fail(ErrorCode::kInvalidArgument,
                "--memory-max " + options.memory_max + ": need a byte count or max");
  }
  if (!options.pids_max.empty() && options.pids_max != "max" && !IsCount(options.pids_max)) {
    return Fail(ErrorCode::kInvalidArgument,
                "--pids-max " + options.pids_max + ": need a count or max");
  }
  return Ok();
}

std::string JailScratchDir(const JailOptions& options) {
  return options.base_dir + "/" + options.id + "/scratch";
}

std::string AbsolutePath(const std::string& path) {
  if (path.empty()) return path;
  std::error_code error;
  fs::path absolute = fs::absolute(path, error);
  return (error ? fs::path(path) : absolute).lexically_normal().string();
}

Result<std::optional<int>> RunJailed(const JailOptions& options, const JailContents& contents) {
  TRY(ValidateJailOptions(options));
  if (::geteuid() != 0) {
    return Fail(ErrorCode::kPermissionDenied, "--jail needs root (namespaces, mounts, chown)");
  }
  const std::string jail = options.base_dir + "/" + options.id;
  const std::string root = jail + "/root";
  std::error_code error;
  fs::create_directories(options.base_dir, error);
  if (::mkdir(jail.c_str(), 0700) != 0) {
    return FailErrno("jail: mkdir " + jail +
                     (errno == EEXIST ? " (is another VM using this id?)" : ""));
  }
  if (::mkdir(root.c_str(), 0755) != 0 || ::chown(root.c_str(), 0, 0) != 0) {
    return FailErrno("jail: mkdir " + root);
  }

  const std::string scratch = JailScratchDir(options);
  if (::mkdir(scratch.c_str(), 0700) != 0 ||
      ::chown(scratch.c_str(), options.uid, options.gid) != 0) {
    return FailErrno("jail: mkdir " + scratch);
  }
  JailContents with_scratch = contents;
  with_scratch.dirs.push_back(scratch);

  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) return FailErrno("jail: pipe");
  if (::unshare(CLONE_NEWPID) != 0) return FailErrno("jail: unshare(pid)");
  pid_t child = ::fork();
  if (child < 0) return FailErrno("jail: fork");
  if (child == 0) {
    ::close(ready[1]);
    char go = 0;
    // The parent first puts this process in the cgroup, so every VMM thread starts there.
    if (::read(ready[0], &go, 1) != 1) ::_exit(1);
    if (Status entered = EnterJail(options, with_scratch, root, ready[0]); !entered) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", entered.error().message.c_str());
      ::_exit(1);
    }
    return std::nullopt;
  }
  ::close(ready[0]);
  jailed_child = child;
  struct sigaction forward {};
  forward.sa_handler = ForwardStop;
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(signal, &forward, nullptr);
  const std::vector<std::string> cgroups = SetUpCgroups(options, child);
  (void)!::write(ready[1], "g", 1);
  // ready[1] stays open while the jailer lives: the child checks it after setting its
  // parent-death signal, which covers a jailer killed before then.

  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  ::close(ready[1]);
  if (!options.keep_jail) {
    if (HasMountsUnder(jail)) {
      std::fprintf(stderr, "tartarus-vmm: jail: %s still has mounts; not removed\n", jail.c_str());
    } else {
      fs::remove_all(jail, error);
      if (error) {
        std::fprintf(stderr, "tartarus-vmm: jail: removing %s: %s\n", jail.c_str(),
                     error.message().c_str());
      }
    }
  }
  // Empty now: its only process has exited. The kernel may still count it for a moment after
  // the wait (EBUSY), so retry briefly rather than leave the leaf behind.
  for (const std::string& cgroup : cgroups) {
    for (int attempt = 0; attempt < 200; ++attempt) {
      if (::rmdir(cgroup.c_str()) == 0 || errno != EBUSY) break;
      ::usleep(5000);
    }
  }
  return status;
}

void ExitLikeChild(int wait_status) {
  if (WIFEXITED(wait_status)) std::exit(WEXITSTATUS(wait_status));
  const int signal = WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : SIGKILL;
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  ::signal(signal, SIG_DFL);
  sigset_t only;
  sigemptyset(&only);
  sigaddset(&only, signal);
  ::sigprocmask(SIG_UNBLOCK, &only, nullptr);
  ::raise(signal);
  std::_Exit(128 + signal);
}

}  // namespace tartarus::vmm

// The Debian template builder. See template_builder.h.
#include "template/template_builder.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <deque>
#include <fstream>
#include <sstream>

#include "common/subprocess.h"
#include "common/unique_fd.h"
#include "template/fs_util.h"

namespace tartarus::templates {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kDefaultMirror = "http://deb.debian.org/debian";
constexpr std::string_view kChrootPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// Runs inside a fresh mount + PID namespace (unshare); "$1" is the tree, "$2" the
// command. Mounts are private to the namespace, so they vanish when the step ends, even
// if we are killed. /dev is a tmpfs with the few host nodes bound in, never the host's
// /dev itself, so a setup command cannot delete host device nodes.
constexpr std::string_view kChrootScript = R"(set -e
root="$1"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty; do
  : > "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive /bin/sh -c "$2"
)";

// Forbids service starts during package installs (invoke-rc.d asks this script).
constexpr std::string_view kPolicyRcD =
    "#!/bin/sh\n# Written by Tartarus: no services start in templates.\nexit 101\n";

constexpr std::string_view kCleanupCommand =
    "apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* "
    "/var/cache/debconf/*-old /var/lib/dpkg/*-old && mkdir -p /var/lib/apt/lists/partial";

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string FormatSeconds(double seconds) {
  char buffer[32];
  snprintf(buffer, sizeof buffer, "%.1fs", seconds);
  return buffer;
}

std::string ShellQuote(std::string_view text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

// First line of a command, shortened for a progress line.
std::string Summarize(std::string_view text, size_t max_chars = 60) {
  std::string line(text.substr(0, text.find('\n')));
  bool more = line.size() < text.size();
  if (line.size() > max_chars) {
    line.resize(max_chars);
    more = true;
  }
  return more ? line + " ..." : line;
}

std::string JoinTail(const std::deque<std::string>& tail) {
  std::string out;
  for (const auto& line : tail) out += "\n  | " + line;
  return out;
}

struct CommandResult {
  ExitStatus status;
  bool timed_out = false;
  std::deque<std::string> tail;  // last lines of combined stdout and stderr
};

// Runs argv with stdout and stderr merged into one pipe we read line by line: lines go to
// `on_line` (when set) and the last `tail_lines` are kept for error messages.
Result<CommandResult> RunStreaming(const std::vector<std::string>& argv,
                                   std::chrono::seconds timeout, size_t tail_lines,
                                   const ProgressCallback& on_line) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) return FailErrno("pipe2");
  UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
  SpawnOptions options;
  options.argv = argv;
  options.env = std::vector<std::string>{"PATH=" + std::string(kChrootPath), "LANG=C.UTF-8",
                                         "DEBIAN_FRONTEND=noninteractive", "HOME=/root"};
  options.fds = {{0, -1}, {1, write_end.Get()}, {2, write_end.Get()}};
  options.die_with_parent = true;
  Subprocess child = TRY(Spawn(options));
  write_end.Reset();

  CommandResult result;
  std::string partial;
  auto emit = [&](std::string line) {
    if (on_line) on_line("    " + line);
    result.tail.push_back(std::move(line));
    while (result.tail.size() > tail_lines) result.tail.pop_front();
  };
  auto deadline = Clock::now() + timeout;
  char buffer[8192];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      child.Signal(SIGKILL);
      break;
    }
    struct pollfd pfd = {read_end.Get(), POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      child.Signal(SIGKILL);
      (void)child.Wait();
      return FailErrno("poll");
    }
    if (ready == 0) continue;
    ssize_t n = read(read_end.Get(), buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      child.Signal(SIGKILL);
      (void)child.Wait();
      return FailErrno("read child output");
    }
    if (n == 0) break;
    partial.append(buffer, static_cast<size_t>(n));
    size_t newline;
    while ((newline = partial.find_first_of("\r\n")) != std::string::npos) {
      std::string line = partial.substr(0, newline);
      partial.erase(0, newline + 1);
      if (!line.empty()) emit(std::move(line));
    }
    // A child that never prints a newline must not grow our memory without bound.
    if (partial.size() > 64 * 1024) emit(std::exchange(partial, ""));
  }
  if (!partial.empty()) emit(partial);
  result.status = TRY(child.Wait());
  return result;
}

// Progress lines "[k/n] what" at the start of a step and "[k/n] what: done in 1.2s" at
// its end.
class StepReporter {
 public:
  StepReporter(const ProgressCallback& progress, int total) : progress_(progress), total_(total) {}

  void Begin(std::string what) {
    ++current_;
    what_ = std::move(what);
    started_ = Clock::now();
    Say(Prefix() + what_);
  }
  void End(std::string_view note = "") {
    Say(Prefix() + what_ + ": " + (note.empty() ? "" : std::string(note) + ", ") + "done in " +
        FormatSeconds(SecondsSince(started_)));
  }
  // A step that took no work, reported on one line.
  void Skip(std::string what, std::string_view note) {
    ++current_;
    Say(Prefix() + what + " (" + std::string(note) + ")");
  }
  Error StepError(const Error& error) const {
    return error.Context("step " + std::to_string(current_) + "/" + std::to_string(total_) + " (" +
                         what_ + ")");
  }
  const std::string& what() const { return what_; }

 private:
  std::string Prefix() const {
    return "[" + std::to_string(current_) + "/" + std::to_string(total_) + "] ";
  }
  void Say(const std::string& line) const {
    if (progress_) progress_(line);
  }

  const ProgressCallback& progress_;
  int total_;
  int current_ = 0;
  std::string what_;
  Clock::time_point started_;
};

Status CheckCommand(const Result<CommandResult>& result, std::string_view what,
                    std::chrono::seconds timeout) {
  if (!result) return Fail(result.error());
  if (result->timed_out) {
    return Fail(ErrorCode::kTimeout, std::string(what) + " did not finish within " +
                                         std::to_string(timeout.count()) + "s" +
                                         JoinTail(result->tail));
  }
  if (!result->status.Success()) {
    return Fail(
        ErrorCode::kFailedPrecondition,
        std::string(what) + " failed (" + result->status.Describe() + ")" + JoinTail(result->tail));
  }
  return Ok();
}

std::string TrimSlash(std::string text) {
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

bool IsUsableMirror(std::string_view uri) {
  return uri.starts_with("http://") || uri.starts_with("https://") || uri.starts_with("file:/");
}

std::string MirrorFromAptSources() {
  {
    std::ifstream sources("/etc/apt/sources.list.d/debian.sources");
    std::string line;
    while (std::getline(sources, line)) {
      if (!line.starts_with("URIs:")) continue;
      std::istringstream uris(line.substr(5));
      std::string uri;
      while (uris >> uri) {
        if (IsUsableMirror(uri) && uri.find("security") == std::string::npos) return TrimSlash(uri);
      }
    }
  }
  std::ifstream list("/etc/apt/sources.list");
  std::string line;
  while (std::getline(list, line)) {
    std::istringstream words(line);
    std::string word;
    if (!(words >> word) || word != "deb") continue;
    while (words >> word) {
      if (word.starts_with("[")) {
        while (word.find(']') == std::string::npos && (words >> word)) {
        }
        continue;
      }
      if (IsUsableMirror(word) && word.find("security") == std::string::npos)
        return TrimSlash(word);
      break;
    }
  }
  return "";
}

}  // namespace

std::string DefaultDebianMirror() {
  if (const char* mirror = getenv("TARTARUS_DEBIAN_MIRROR"); mirror && *mirror) {
    return TrimSlash(mirror);
  }
  std::string mirror = MirrorFromAptSources();
  return mirror.empty() ? std::string(kDefaultMirror) : mirror;
}

DebootstrapBuilder::DebootstrapBuilder(std::string state_dir, DebootstrapOptions options)
    : state_dir_(std::move(state_dir)), options_(std::move(options)) {
  if (options_.mirror.empty()) options_.mirror = DefaultDebianMirror();
}

Status DebootstrapBuilder::CheckHost() {
  if (geteuid() != 0) {
    return Fail(ErrorCode::kPermissionDenied,
                "building templates needs root (debootstrap, chroot and mounts); run as root");
  }
  for (const char* tool : {"debootstrap", "chroot", "unshare", "cp"}) {
    if (FindExecutable(tool).empty()) {
      return Fail(
          ErrorCode::kFailedPrecondition,
          std::string(tool) +
              " not found in PATH; install it (apt-get install debootstrap coreutils util-linux)");
    }
  }
  return Ok();
}

Result<std::string> DebootstrapBuilder::EnsureSuiteCache(std::string_view suite,
                                                         const ProgressCallback& progress,
                                                         bool* cached) {
  std::string cache_root = state_dir_ + "/cache/debootstrap";
  std::string suite_dir = cache_root + "/" + std::string(suite);
  std::string tree = suite_dir + "/rootfs";
  std::string stamp = suite_dir + "/complete";
  TRY(MakeDirs(suite_dir));
  // The stamp is written last, so a tree without it is a build that did not finish.
  struct stat st;
  if (stat(stamp.c_str(), &st) == 0 && stat(tree.c_str(), &st) == 0) {
    if (cached) *cached = true;
    return tree;
  }
  FileLock lock = TRY(FileLock::Acquire(suite_dir + ".lock", [&] {
    if (progress)
      progress("waiting for another debootstrap of " + std::string(suite) + " to finish");
  }));
  if (stat(stamp.c_str(), &st) == 0 && stat(tree.c_str(), &st) == 0) {
    if (cached) *cached = true;
    return tree;
  }
  if (cached) *cached = false;
  TRY(RemoveTree(tree));
  std::string temp = suite_dir + "/rootfs.tmp";
  TRY(RemoveTree(temp));
  // debootstrap mounts /proc and /sys in the target; its own namespace drops them if it dies.
  auto result = RunStreaming(
      {"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
       "debootstrap", "--variant=minbase", std::string(suite), temp, options_.mirror},
      options_.step_timeout, options_.error_tail_lines,
      options_.verbose ? progress : ProgressCallback());
  Status status =
      CheckCommand(result, "debootstrap " + std::string(suite) + " from " + options_.mirror,
                   options_.step_timeout);
  if (!status) {
    // debootstrap's own log says which package or download failed.
    auto log = ReadSmallFile(temp + "/debootstrap/debootstrap.log");
    std::string message = status.error().message;
    if (log && !log->empty()) {
      std::deque<std::string> tail;
      std::istringstream lines(*log);
      std::string line;
      while (std::getline(lines, line)) {
        tail.push_back(line);
        if (tail.size() > options_.error_tail_lines) tail.pop_front();
      }
      message += "\n  debootstrap.log:" + JoinTail(tail);
    }
    (void)RemoveTree(temp);
    return Fail(status.error().code, message);
  }
  if (rename(temp.c_str(), tree.c_str()) < 0) return FailErrno("rename " + temp);
  TRY(WriteFileAtomic(stamp, "mirror " + options_.mirror + "\nvariant minbase\n"));
  return tree;
}

Status DebootstrapBuilder::BuildRootfs(const TemplateSpec& spec, const std::string& rootfs_dir,
                                       const ProgressCallback& progress) {
  TRY(CheckHost());
  // Whatever happens below, nothing stays mounted in the tree (the namespaces should
  // already have taken every mount with them).
  struct UnmountGuard {
    const std::string& root;
    ~UnmountGuard() { (void)UnmountUnder(root); }
  } unmount_guard{rootfs_dir};
  int total = 3 + (spec.packages.empty() ? 0 : 1) + (spec.files.empty() ? 0 : 1) +
              static_cast<int>(spec.setup.size());
  StepReporter steps(progress, total);
  ProgressCallback child_lines = options_.verbose ? progress : ProgressCallback();
  // `label` names the command in errors; the step line already says what it does.
  auto in_chroot = [&](const std::string& command, std::string_view label) -> Status {
    auto result = RunStreaming(
        {"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
         "/bin/sh", "-c", std::string(kChrootScript), "tartarus-chroot", rootfs_dir, command},
        options_.step_timeout, options_.error_tail_lines, child_lines);
    Status status = CheckCommand(result, label, options_.step_timeout);
    // The namespace took its mounts with it; this catches anything that leaked anyway.
    Status unmounted = Ok();
    for (const char* dir : {"/proc", "/sys", "/dev"}) {
      if (Status s = UnmountUnder(rootfs_dir + dir); !s && unmounted) unmounted = s;
    }
    if (!status) return status;
    return unmounted;
  };

  // 1. The suite's debootstrap tree, shared by every template of that suite.
  std::string what = "debootstrap " + spec.base;
  struct stat st;
  if (stat((state_dir_ + "/cache/debootstrap/" + spec.base + "/complete").c_str(), &st) == 0) {
    steps.Skip(what, "cached");
  } else {
    steps.Begin(what + " from " + options_.mirror);
    bool cached = false;
    auto tree = EnsureSuiteCache(spec.base, progress, &cached);
    if (!tree) return Fail(steps.StepError(tree.error()));
    steps.End(cached ? "built by another process" : "");
  }
  std::string base_tree = state_dir_ + "/cache/debootstrap/" + spec.base + "/rootfs";

  // 2. Copy it; reflinks make this nearly free where the file system supports them.
  steps.Begin("copy " + spec.base + " tree");
  auto copy = RunStreaming({"cp", "-a", "--reflink=auto", base_tree + "/.", rootfs_dir + "/"},
                           options_.step_timeout, options_.error_tail_lines, child_lines);
  if (Status s = CheckCommand(copy, "cp -a", options_.step_timeout); !s) {
    return Fail(steps.StepError(s.error()));
  }
  auto prepare = [&]() -> Status {
    TRY(WriteFileInRoot(rootfs_dir, "/usr/sbin/policy-rc.d", kPolicyRcD, 0755));
    TRY(WriteFileInRoot(rootfs_dir, "/etc/apt/sources.list",
                        "deb " + options_.mirror + " " + spec.base + " main\n", 0644));
    auto resolv = ReadSmallFile("/etc/resolv.conf");
    if (resolv) {
      // Replace a symlink rather than write through it.
      unlink((rootfs_dir + "/etc/resolv.conf").c_str());
      TRY(WriteFileInRoot(rootfs_dir, "/etc/resolv.conf", *resolv, 0644));
    }
    return Ok();
  };
  if (Status s = prepare(); !s) return Fail(steps.StepError(s.error()));
  steps.End();

  // 3. Packages.
  if (!spec.packages.empty()) {
    std::string names;
    for (const auto& package : spec.packages) names += " " + package;
    steps.Begin("apt-get install" + Summarize(names, 100));
    std::string command =
        "apt-get update -q -o Acquire::Retries=3 && apt-get install -y -q -o Acquire::Retries=3 "
        "--no-install-recommends -o Dpkg::Options::=--force-confdef "
        "-o Dpkg::Options::=--force-confold" +
        names;
    if (Status s = in_chroot(command, "apt-get"); !s) return Fail(steps.StepError(s.error()));
    steps.End();
  }

  // 4. Files.
  if (!spec.files.empty()) {
    steps.Begin("write " + std::to_string(spec.files.size()) +
                (spec.files.size() == 1 ? " file" : " files"));
    for (const auto& file : spec.files) {
      if (Status s = WriteFileInRoot(rootfs_dir, file.path, file.content, file.mode); !s) {
        return Fail(steps.StepError(s.error()));
      }
    }
    steps.End();
  }

  // 5. Setup commands, in order, each in a fresh namespace.
  for (const auto& command : spec.setup) {
    steps.Begin("setup: " + Summarize(command));
    if (Status s = in_chroot(command, "the command"); !s) return Fail(steps.StepError(s.error()));
    steps.End();
  }

  // 6. Workdir, and drop what only the build needed (apt lists and caches are ~100 MB).
  steps.Begin("clean up");
  if (Status s = in_chroot(
          "mkdir -p -- " + ShellQuote(spec.workdir) + " && " + std::string(kCleanupCommand),
          "clean-up");
      !s) {
    return Fail(steps.StepError(s.error()));
  }
  steps.End();
  return Ok();
}

}  // namespace tartarus::templates

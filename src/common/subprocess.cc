#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/unique_fd.h"

extern char** environ;

namespace tartarus {
namespace {

ExitStatus FromWaitStatus(int status) {
  ExitStatus result;
  if (WIFEXITED(status)) result.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

[[noreturn]] void ReportAndExit(int report_fd, int err) {
  ssize_t ignored = write(report_fd, &err, sizeof err);
  (void)ignored;
  _exit(127);
}

// Only async-signal-safe calls between fork and exec.
[[noreturn]] void ExecChild(const SpawnOptions& options, const std::string& path, char** argv,
                            char** envp, int report_fd) {
  auto fail = [&](int err) { ReportAndExit(report_fd, err); };
  if (options.new_session && setsid() < 0) fail(errno);
  if (options.die_with_parent && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) fail(errno);
  // Move every source fd above the highest target so dup2 never clobbers a source.
  constexpr int kStash = 1000;
  int stashed[64];
  size_t count = options.fds.size() < 64 ? options.fds.size() : 64;
  for (size_t i = 0; i < count; ++i) {
    int source = options.fds[i].second;
    if (source < 0) source = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (source < 0) fail(errno);
    stashed[i] = fcntl(source, F_DUPFD_CLOEXEC, kStash);
    if (stashed[i] < 0) fail(errno);
  }
  for (size_t i = 0; i < count; ++i) {
    if (dup2(stashed[i], options.fds[i].first) < 0) fail(errno);
  }
  // Close everything else but the targets; report_fd and the stash are close-on-exec.
  for (int fd = 3; fd < kStash + 64; ++fd) {
    bool target = fd == report_fd;
    for (size_t i = 0; i < count && !target; ++i) target = options.fds[i].first == fd;
    if (!target) close(fd);
  }
  close_range(kStash + 64, ~0U, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  if (!options.cwd.empty() && chdir(options.cwd.c_str()) < 0) fail(errno);
  execve(path.c_str(), argv, envp);
  ReportAndExit(report_fd, errno);
}

}  // namespace

std::string ExitStatus::Describe() const {
  if (signal) return std::string("killed by signal ") + strsignal(signal);
  return "exit code " + std::to_string(code);
}

std::string FindExecutable(const std::string& name) {
  if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = getenv("PATH");
  std::string dirs = path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

Result<Subprocess> Spawn(const SpawnOptions& options) {
  if (options.argv.empty()) return Fail(ErrorCode::kInvalidArgument, "spawn: empty argv");
  if (options.fds.size() > 64) return Fail(ErrorCode::kInvalidArgument, "spawn: too many fds");
  std::string path = FindExecutable(options.argv[0]);
  if (path.empty()) {
    return Fail(ErrorCode::kNotFound, options.argv[0] + ": executable not found in PATH");
  }
  std::vector<char*> argv;
  for (const auto& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env) {
    for (const auto& var : *options.env) envp.push_back(const_cast<char*>(var.c_str()));
    envp.push_back(nullptr);
  }
  int report[2];
  if (pipe2(report, O_CLOEXEC) < 0) return FailErrno("pipe2");
  UniqueFd report_read(report[0]), report_write(report[1]);
  pid_t pid = fork();
  if (pid < 0) return FailErrno("fork");
  if (pid == 0) {
    ExecChild(options, path, argv.data(), options.env ? envp.data() : environ, report[1]);
  }
  report_write.Reset();
  int child_errno = 0;
  ssize_t n;
  do {
    n = read(report_read.Get(), &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof child_errno) {
    int status;
    waitpid(pid, &status, 0);
    return FailErrno("exec " + options.argv[0], child_errno);
  }
  return Subprocess(pid);
}

Result<ExitStatus> Subprocess::Wait() {
  if (pid_ < 0) return Fail(ErrorCode::kInternal, "wait: no process");
  int status;
  while (waitpid(pid_, &status, 0) < 0) {
    if (errno != EINTR) return FailErrno("waitpid");
  }
  pid_ = -1;
  return FromWaitStatus(status);
}

Result<std::optional<ExitStatus>> Subprocess::TryWait() {
  if (pid_ < 0) return Fail(ErrorCode::kInternal, "wait: no process");
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r < 0) return FailErrno("waitpid");
  if (r == 0) return std::optional<ExitStatus>();
  pid_ = -1;
  return std::optional<ExitStatus>(FromWaitStatus(status));
}

Result<ExitStatus> Subprocess::WaitFor(std::chrono::milliseconds timeout, bool* timed_out) {
  if (timed_out) *timed_out = false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto sleep = std::chrono::microseconds(200);
  while (true) {
    auto done = TryWait();
    if (!done) return Fail(done.error());
    if (done->has_value()) return **done;
    if (std::chrono::steady_clock::now() >= deadline) {
      if (timed_out) *timed_out = true;
      Signal(SIGKILL);
      return Wait();
    }
    std::this_thread::sleep_for(sleep);
    if (sleep < std::chrono::milliseconds(20)) sleep *= 2;
  }
}

void Subprocess::Signal(int signo) const {
  if (pid_ > 0) kill(pid_, signo);
}

Result<CommandOutput> RunCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout, size_t max_output_bytes) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) < 0) return FailErrno("pipe2");
  UniqueFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) < 0) return FailErrno("pipe2");
  UniqueFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  SpawnOptions options;
  options.argv = argv;
  options.fds = {{0, -1}, {1, out_write.Get()}, {2, err_write.Get()}};
  options.die_with_parent = true;
  auto child = Spawn(options);
  if (!child) return Fail(child.error());
  out_write.Reset();
  err_write.Reset();

  CommandOutput result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true;
  char buffer[16384];
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd fds[2] = {{out_open ? out_read.Get() : -1, POLLIN, 0},
                     {err_open ? err_read.Get() : -1, POLLIN, 0}};
    int r = poll(fds, 2, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
        continue;
      }
      std::string& sink = i == 0 ? result.out : result.err;
      size_t room = max_output_bytes - std::min(max_output_bytes, sink.size());
      sink.append(buffer, std::min(room, static_cast<size_t>(n)));
    }
  }
  bool timed_out = false;
  auto status =
      child->WaitFor(std::chrono::milliseconds(out_open || err_open ? 0 : 1000 * 60), &timed_out);
  if (!status) return Fail(status.error());
  if (timed_out || out_open || err_open) {
    return Fail(ErrorCode::kTimeout,
                argv[0] + " did not finish within " + std::to_string(timeout.count()) + " ms");
  }
  result.status = *status;
  return result;
}

}  // namespace tartarus

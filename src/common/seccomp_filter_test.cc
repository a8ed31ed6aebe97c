// The sandbox's seccomp filter, installed for real in a forked child: denied syscalls fail
// with the right errno, everything a program needs still works.
#include "common/seccomp_filter.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace tartarus {
namespace {

TEST(SeccompFilterTest, BuildsWithEveryDeniedSyscall) {
  auto program = BuildSandboxSeccompFilter();
  ASSERT_TRUE(program) << program.error().message;
  size_t x86_64_denied = 0;
  for (const DeniedSyscall& denied : DeniedSyscallTable()) {
    if (denied.x86_64_number < 0) continue;
    ++x86_64_denied;
    bool compared = false;
    for (const sock_filter& op : *program) {
      compared |= op.code == (BPF_JMP | BPF_JEQ | BPF_K) &&
                  op.k == static_cast<uint32_t>(denied.x86_64_number);
    }
    EXPECT_TRUE(compared) << denied.name;
  }
  EXPECT_GT(x86_64_denied, 50u);
  EXPECT_LT(program->size(), 256u);
}

// Runs `checks` in a child with the filter installed; returns what the child reported.
std::string RunFiltered(std::string (*checks)()) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) < 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    close(pipe_fds[0]);
    std::string report;
    if (auto installed = InstallSandboxSeccompFilter(); !installed) {
      report = "install: " + installed.error().message;
    } else {
      report = checks();
    }
    (void)!write(pipe_fds[1], report.data(), report.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string report;
  char buffer[4096];
  ssize_t n;
  while ((n = read(pipe_fds[0], buffer, sizeof buffer)) > 0) report.append(buffer, n);
  close(pipe_fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) report += " (child died: " + std::to_string(status) + ")";
  return report;
}

// "" when `result` failed with `expected_errno`, else a line saying what happened.
std::string Expect(const char* what, long result, int expected_errno) {
  int err = errno;
  if (result == -1 && err == expected_errno) return "";
  return std::string(what) + ": got " + std::to_string(result) + " errno " + strerror(err) +
         ", wanted " + strerror(expected_errno) + "\n";
}

std::string Allowed(const char* what, long result) {
  return result >= 0 ? "" : std::string(what) + " failed: " + strerror(errno) + "\n";
}

TEST(SeccompFilterTest, DeniesWhatThePolicyDenies) {
  std::string report = RunFiltered([]() -> std::string {
    std::string r;
    r += Expect("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER), EPERM);
    r += Expect("unshare(CLONE_NEWNET)", unshare(CLONE_NEWNET), EPERM);
    r += Expect("mount", mount("none", "/tmp", "tmpfs", 0, nullptr), EPERM);
    r += Expect("setns", setns(0, 0), EPERM);
    r += Expect("bpf", syscall(__NR_bpf, 0, nullptr, 0), EPERM);
    r += Expect("io_uring_setup", syscall(__NR_io_uring_setup, 1, nullptr), EPERM);
    r += Expect("ptrace", syscall(__NR_ptrace, 0, 0, 0, 0), EPERM);
    r += Expect("clone(CLONE_NEWPID)", syscall(__NR_clone, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0),
                EPERM);
    r += Expect("clone3", syscall(__NR_clone3, nullptr, 0), ENOSYS);
    r += Expect("x32 getpid", syscall(0x40000000 | __NR_getpid), ENOSYS);
    r += Expect("personality(ADDR_NO_RANDOMIZE)", personality(ADDR_NO_RANDOMIZE), EPERM);
    r += Expect("personality(READ_IMPLIES_EXEC)", personality(READ_IMPLIES_EXEC), EPERM);
    return r;
  });
  EXPECT_EQ(report, "");
}

TEST(SeccompFilterTest, AllowsWhatProgramsNeed) {
  std::string report = RunFiltered([]() -> std::string {
    std::string r;
    r += Allowed("getpid", getpid());
    r += Allowed("personality query", personality(0xffffffff));
    r += Allowed("personality(PER_LINUX)", personality(PER_LINUX));
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    r += Allowed("open", fd);
    if (fd >= 0) close(fd);
    // fork() is clone() without CLONE_NEW* flags; the child inherits the filter.
    pid_t child = fork();
    if (child == 0) _exit(unshare(CLONE_NEWUTS) == -1 && errno == EPERM ? 7 : 1);
    r += Allowed("fork", child);
    int status = 0;
    if (child > 0) waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 7) r += "forked child was not filtered\n";
    return r;
  });
  EXPECT_EQ(report, "");
}

}  // namespace
}  // namespace tartarus

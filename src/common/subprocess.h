// Child processes: spawn with an explicit fd map, wait, signal, capture output.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"

namespace tartarus {

struct ExitStatus {
  int code = 0;    // exit code when the process exited normally
  int signal = 0;  // non-zero when a signal killed it

  // The shell's convention: the exit code, or 128 + signal.
  int ShellCode() const { return signal ? 128 + signal : code; }
  bool Success() const { return signal == 0 && code == 0; }
  std::string Describe() const;
};

struct SpawnOptions {
  std::vector<std::string> argv;                // argv[0] is looked up in PATH when it has no '/'
  std::optional<std::vector<std::string>> env;  // nullopt: inherit ours
  std::string cwd;                              // empty: inherit ours
  // Child fd -> parent fd to install there; -1 installs /dev/null. Fds 0-2 not listed are
  // inherited; every other fd is closed in the child.
  std::vector<std::pair<int, int>> fds;
  bool new_session = false;      // setsid(): survives our terminal's Ctrl-C
  bool die_with_parent = false;  // PR_SET_PDEATHSIG(SIGKILL)
};

class Subprocess {
 public:
  Subprocess() = default;
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  Subprocess(Subprocess&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}
  Subprocess& operator=(Subprocess&& other) noexcept {
    pid_ = std::exchange(other.pid_, -1);
    return *this;
  }
  // Does not wait: callers that own a child wait for it explicitly.
  ~Subprocess() = default;

  pid_t pid() const { return pid_; }
  Result<ExitStatus> Wait();
  // Returns nullopt while the child still runs.
  Result<std::optional<ExitStatus>> TryWait();
  // Waits up to `timeout`; on expiry sends SIGKILL and reaps.
  Result<ExitStatus> WaitFor(std::chrono::milliseconds timeout, bool* timed_out = nullptr);
  void Signal(int signo) const;

 private:
  pid_t pid_ = -1;
};

Result<Subprocess> Spawn(const SpawnOptions& options);

struct CommandOutput {
  ExitStatus status;
  std::string out;
  std::string err;
};

// Runs a command to completion, capturing stdout and stderr (each capped at
// max_output_bytes; the rest is drained and dropped). stdin is /dev/null.
Result<CommandOutput> RunCommand(const std::vector<std::string>& argv,
                                 std::chrono::milliseconds timeout = std::chrono::minutes(10),
                                 size_t max_output_bytes = 1 << 20);

// Finds an executable in PATH; empty when absent.
std::string FindExecutable(const std::string& name);

}  // namespace tartarus

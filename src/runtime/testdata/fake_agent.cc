// A stand-in guest agent for the Tartarus runtime's integration tests (test only, built
// static): takes the real agent's arguments (its seccomp filter is the real one), reads one
// shell command per line of its input (stdin, or fd IN of --fds), runs it with /bin/sh -c
// (stdout and stderr both to its output), then prints "__EXIT__ <status>\n". Exits on EOF.
// As PID 1 it also reaps orphans.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "common/seccomp_filter.h"

namespace {

bool ReadLine(std::string* line) {
  line->clear();
  char c;
  while (true) {
    ssize_t n = read(0, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    line->push_back(c);
  }
}

void WriteAll(const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(1, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // The real agent's arguments: `[--seccomp] --stdio` or `[--seccomp] --fds IN,OUT`.
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--seccomp") {
      if (auto installed = tartarus::InstallSandboxSeccompFilter(); !installed) {
        std::fprintf(stderr, "fake agent: %s\n", installed.error().message.c_str());
        return 1;
      }
    } else if (arg == "--fds" && i + 1 < argc) {
      int in = -1, out = -1;
      if (std::sscanf(argv[++i], "%d,%d", &in, &out) != 2) return 2;
      dup2(in, 0);
      dup2(out, 1);
      close(in);
      close(out);
    }
  }
  std::string line;
  while (ReadLine(&line)) {
    // Orphans of earlier commands (reparented to us, PID 1) hold pids until reaped.
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    pid_t child = fork();
    if (child < 0) {
      WriteAll("__EXIT__ fork-failed\n");
      continue;
    }
    if (child == 0) {
      dup2(1, 2);
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    int status = 0;
    while (true) {
      pid_t done = waitpid(-1, &status, 0);
      if (done == child) break;
      if (done < 0 && errno != EINTR) break;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    WriteAll("__EXIT__ " + std::to_string(code) + "\n");
  }
  return 0;
}

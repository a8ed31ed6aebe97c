// A stand-in guest agent for the Tartarus runtime's integration tests (test only, built
// static): reads one shell command per stdin line, runs it with /bin/sh -c (stdout and
// stderr both to our stdout), then prints "__EXIT__ <status>\n". Exits on EOF. As PID 1 it
// also reaps orphans.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

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
  (void)argc;
  (void)argv;
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

#include "node/stdin_pump.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

namespace tartarus::node {

StdinPump::StdinPump(int fd, protocol::ExecHandle& exec) : stop_(eventfd(0, EFD_CLOEXEC)) {
  thread_ = std::thread([this, fd, &exec] { Loop(fd, exec); });
}

void StdinPump::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  (void)!write(stop_.Get(), &one, sizeof one);
  thread_.join();
}

void StdinPump::Loop(int fd, protocol::ExecHandle& exec) {
  char buffer[64 << 10];
  while (true) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_.Get(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[1].revents) return;
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    // WriteStdin blocks while the agent's stdin window is full; Stop() during that wait
    // returns once the command ends and the handle fails the write.
    if (!exec.WriteStdin(std::string_view(buffer, n))) return;
  }
  (void)exec.CloseStdin();
}

}  // namespace tartarus::node

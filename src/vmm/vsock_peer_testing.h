// tartarus-vmm (Tartarus's KVM microVM monitor), tests only: the host end of the "vsock" test
// guest's stream (guests/vsock.s). It listens on "<uds_path>_52", where the hybrid vsock
// connects a guest's REQUEST to host port 52, and on its own thread accepts one connection,
// reads "ping", answers "pong" and waits for the VMM to close the connection. Every wait is
// bounded, so a guest that never connects fails the test instead of hanging it.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

#include "common/unique_fd.h"

namespace tartarus::vmm {

class VsockGuestPeer {
 public:
  struct Outcome {
    std::string received;  // what the guest wrote
    bool closed = false;   // the VMM closed the host socket (the guest's RST)
    std::string error;     // the first wait that ran out, or a failed call
  };

  explicit VsockGuestPeer(const std::string& uds_path) {
    const std::string path = uds_path + "_52";
    listener_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (::bind(listener_.Get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        ::listen(listener_.Get(), 4) != 0) {
      outcome_.error = "cannot listen on " + path;
      return;
    }
    thread_ = std::thread([this] { Serve(); });
  }
  ~VsockGuestPeer() {
    if (thread_.joinable()) thread_.join();
  }

  // Waits for the exchange to end (at most a few timeouts) and says how it went.
  Outcome Finish() {
    if (thread_.joinable()) thread_.join();
    return outcome_;
  }

 private:
  static constexpr int kTimeoutMs = 20000;

  bool WaitReadable(int fd, const char* what) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, kTimeoutMs) == 1) return true;
    outcome_.error = std::string("timed out waiting for ") + what;
    return false;
  }

  void Serve() {
    if (!WaitReadable(listener_.Get(), "the guest's connection")) return;
    UniqueFd connection(::accept4(listener_.Get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!connection) {
      outcome_.error = "accept failed";
      return;
    }
    while (outcome_.received.size() < 4) {
      if (!WaitReadable(connection.Get(), "the guest's ping")) return;
      char bytes[16];
      const ssize_t got = ::read(connection.Get(), bytes, sizeof(bytes));
      if (got <= 0) {
        outcome_.error = "the connection ended before the guest's ping";
        return;
      }
      outcome_.received.append(bytes, static_cast<size_t>(got));
    }
    if (::write(connection.Get(), "pong", 4) != 4) {
      outcome_.error = "writing pong failed";
      return;
    }
    if (!WaitReadable(connection.Get(), "the VMM to close the connection")) return;
    char byte;
    outcome_.closed = ::read(connection.Get(), &byte, 1) == 0;
  }

  UniqueFd listener_;
  std::thread thread_;
  Outcome outcome_;
};

}  // namespace tartarus::vmm

// Test helper for the HTTP server tests: a plain blocking socket, so tests can send bytes
// no well-behaved client would (malformed requests, half headers, pipelining).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

namespace tartarus::http::test_util {

class RawConnection {
 public:
  static RawConnection Tcp(uint16_t port) {
    RawConnection c;
    c.fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) c.Close();
    return c;
  }
  static RawConnection Unix(const std::string& path) {
    RawConnection c;
    c.fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(c.fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) c.Close();
    return c;
  }
  RawConnection() = default;
  RawConnection(RawConnection&& other) noexcept
      : fd_(other.fd_), pending_(std::move(other.pending_)) {
    other.fd_ = -1;
  }
  RawConnection& operator=(RawConnection&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = other.fd_;
      pending_ = std::move(other.pending_);
      other.fd_ = -1;
    }
    return *this;
  }
  ~RawConnection() { Close(); }

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Appends what arrives within the timeout to pending(); false on EOF/error/timeout.
  bool ReadMore(std::chrono::milliseconds timeout) {
    if (fd_ < 0) return false;
    pollfd pfd{.fd = fd_, .events = POLLIN, .revents = 0};
    if (::poll(&pfd, 1, static_cast<int>(timeout.count())) <= 0) return false;
    char buffer[16384];
    ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
    if (n <= 0) return false;
    pending_.append(buffer, static_cast<size_t>(n));
    return true;
  }
  // Reads until `needle` is in pending() (true) or the time is up / EOF (false).
  bool ReadUntil(std::string_view needle,
                 std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pending_.find(needle) == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !ReadMore(left)) return pending_.find(needle) != std::string::npos;
    }
    return true;
  }
  // Reads one Content-Length response off pending(); "" if none arrives in time.
  std::string ReadResponse(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    if (!ReadUntil("\r\n\r\n", timeout)) return "";
    size_t header_end = pending_.find("\r\n\r\n") + 4;
    size_t length = 0;
    std::string lower = pending_.substr(0, header_end);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (size_t at = lower.find("content-length: "); at != std::string::npos) {
      length = std::stoul(lower.substr(at + 16));
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pending_.size() < header_end + length) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || !ReadMore(left)) return "";
    }
    std::string response = pending_.substr(0, header_end + length);
    pending_.erase(0, header_end + length);
    return response;
  }
  // True when the peer closed the connection within the timeout.
  bool WaitForClose(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd pfd{.fd = fd_, .events = POLLIN, .revents = 0};
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      deadline - std::chrono::steady_clock::now())
                                      .count());
      if (::poll(&pfd, 1, std::max(left, 0)) <= 0) return false;
      char buffer[4096];
      ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) return true;
      pending_.append(buffer, static_cast<size_t>(n));
    }
    return false;
  }
  std::string& pending() { return pending_; }

 private:
  int fd_ = -1;
  std::string pending_;
};

}  // namespace tartarus::http::test_util

// tartarus-vmm (Tartarus's KVM microVM monitor), test only: a real tartarus-vmm child
// process and its API socket, shared by the tests that drive the binary (api_binary_test,
// snapshot/vmm_snapshot_api_test). The including test defines TARTARUS_VMM_BINARY and
// TARTARUS_VMM_GUEST_DIR.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace tartarus::vmm::test_util {

inline std::string Guest(const std::string& name) {
  return std::string(TARTARUS_VMM_GUEST_DIR) + "/" + name + ".elf";
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream out;
  out << file.rdbuf();
  return out.str();
}

// A tartarus-vmm child process with its stdout and stderr in files of a temporary directory.
// In `args`, "@SOCK" becomes the API socket's path and "@DIR..." a path in that directory.
class VmmProcess {
 public:
  explicit VmmProcess(std::vector<std::string> args) {
    char dir[] = "/tmp/vmm-process-XXXXXX";
    dir_ = ::mkdtemp(dir) ? dir : "/tmp";
    socket_ = dir_ + "/api.sock";
    for (std::string& arg : args) {
      if (arg == "@SOCK") arg = socket_;
      if (arg.starts_with("@DIR")) arg = dir_ + arg.substr(4);
    }
    args.insert(args.begin(), TARTARUS_VMM_BINARY);
    pid_ = ::fork();
    if (pid_ == 0) {
      int out = ::open((dir_ + "/stdout").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = ::open((dir_ + "/stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, 1);
      ::dup2(err, 2);
      std::vector<char*> argv;
      for (std::string& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~VmmProcess() {
    Kill();
    std::filesystem::remove_all(dir_);
  }
  VmmProcess(const VmmProcess&) = delete;
  VmmProcess& operator=(const VmmProcess&) = delete;

  void Kill() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      exited_ = true;
    }
  }
  // Sends signal to the process (a jailed VMM's jailer stops and cleans up on SIGTERM).
  pid_t pid() const { return pid_; }
  void Signal(int signal) {
    if (pid_ > 0 && !exited_) ::kill(pid_, signal);
  }
  bool Running() {
    int status = 0;
    if (!exited_ && ::waitpid(pid_, &status, WNOHANG) == pid_) exited_ = true;
    return !exited_;
  }
  // Waits up to timeout for exit; the exit status, or -1.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  // Connects to the API socket, retrying while the VMM starts.
  int Connect() {
    for (int attempt = 0; attempt < 500; ++attempt) {
      int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      std::strncpy(address.sun_path, socket_.c_str(), sizeof(address.sun_path) - 1);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) return fd;
      ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }
  // One request on a fresh connection (retried while the VMM starts): the raw response.
  std::string Send(const std::string& method, const std::string& path, const std::string& body) {
    int fd = Connect();
    if (fd < 0) return "connect failed";
    std::string request = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n";
    if (!body.empty()) request += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    request += "Connection: close\r\n\r\n" + body;
    std::string response;
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) >= 0) {
      char buffer[4096];
      ssize_t n;
      while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) {
        response.append(buffer, static_cast<size_t>(n));
      }
    }
    ::close(fd);
    return response;
  }
  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }
  std::string Stdout() const { return ReadFile(dir_ + "/stdout"); }
  std::string Stderr() const { return ReadFile(dir_ + "/stderr"); }

 private:
  std::string dir_;
  std::string socket_;
  pid_t pid_ = -1;
  bool exited_ = false;
};

}  // namespace tartarus::vmm::test_util

// tartarus-vmm (Tartarus's KVM microVM monitor): the API server on a Unix socket.
#include "vmm/api/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/unix_address.h"

namespace tartarus::vmm::api {

Result<std::unique_ptr<ApiServer>> ApiServer::Listen(const std::string& path, Handler handler) {
  Result<sockaddr_un> parsed = UnixSocketAddress(path);
  if (!parsed) return Fail(parsed.error().Context("API socket"));
  sockaddr_un address = *parsed;
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listener) return FailErrno("socket");
  if (::bind(listener.Get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) < 0) {
    return FailErrno("bind API socket " + path);
  }
  if (::listen(listener.Get(), 16) < 0) return FailErrno("listen on " + path);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) return FailErrno("pipe2");
  return std::unique_ptr<ApiServer>(new ApiServer(path, std::move(listener), UniqueFd(pipe_fds[0]),
                                                  UniqueFd(pipe_fds[1]), std::move(handler)));
}

ApiServer::ApiServer(std::string path, UniqueFd listener, UniqueFd wake_read, UniqueFd wake_write,
                     Handler handler)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      wake_read_(std::move(wake_read)),
      wake_write_(std::move(wake_write)),
      handler_(std::move(handler)) {}

ApiServer::~ApiServer() { ::unlink(path_.c_str()); }

void ApiServer::Shutdown() {
  char byte = 1;
  (void)!::write(wake_write_.Get(), &byte, 1);
}

Status ApiServer::Serve() {
  while (true) {
    std::vector<pollfd> fds;
    fds.push_back({wake_read_.Get(), POLLIN, 0});
    // At the connection limit, new clients wait in the backlog.
    fds.push_back({connections_.size() < kMaxConnections ? listener_.Get() : -1, POLLIN, 0});
    for (auto& [fd, connection] : connections_) {
      fds.push_back({fd, static_cast<short>(connection.output.empty() ? POLLIN : POLLOUT), 0});
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return FailErrno("poll");
    }
    if (fds[0].revents != 0) return Ok();
    if (fds[1].revents & POLLIN) Accept();
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      auto it = connections_.find(fds[i].fd);
      if (it == connections_.end()) continue;
      if (!ServeConnection(it->second)) connections_.erase(it);
    }
  }
}

void ApiServer::Accept() {
  int fd = ::accept4(listener_.Get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return;  // EAGAIN or a client that already left
  Connection& connection = connections_[fd];
  connection.fd.Reset(fd);
}

bool ApiServer::FlushOutput(Connection& connection) {
  while (!connection.output.empty()) {
    ssize_t n = ::send(connection.fd.Get(), connection.output.data(), connection.output.size(),
                       MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // wait for POLLOUT
    if (n <= 0) return false;
    connection.output.erase(0, static_cast<size_t>(n));
  }
  return !connection.closing;
}

bool ApiServer::ServeConnection(Connection& connection) {
  if (!connection.output.empty()) return FlushOutput(connection);
  char buffer[4096];
  ssize_t n = ::recv(connection.fd.Get(), buffer, sizeof(buffer), 0);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;  // closed by the client, or an error
  connection.parser.Feed(std::string_view(buffer, static_cast<size_t>(n)));
  // Answer every complete request (pipelining), in order.
  while (!connection.closing) {
    auto request = connection.parser.Next();
    if (!request) {
      // The parser's messages are printable ASCII; only quotes and backslashes need escaping.
      HttpResponse response{connection.parser.error_status(), "{\"fault_message\":\""};
      for (char c : request.error().message) {
        if (c == '"' || c == '\\') response.body.push_back('\\');
        response.body.push_back(c);
      }
      response.body += "\"}";
      connection.output += FormatHttpResponse(response, false);
      connection.closing = true;
      break;
    }
    if (!*request) break;
    HttpResponse response = handler_(**request);
    connection.output += FormatHttpResponse(response, (*request)->keep_alive);
    if (!(*request)->keep_alive) connection.closing = true;
  }
  return FlushOutput(connection);
}

}  // namespace tartarus::vmm::api

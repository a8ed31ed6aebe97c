// tartarus-vmm (Tartarus's KVM microVM monitor): the API server on a Unix socket.
// One thread, poll(2) over the listening socket and its connections, HTTP/1.1 keep-alive,
// requests answered one at a time by a handler (the VmController).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/result.h"
#include "common/unique_fd.h"
#include "vmm/api/http.h"

namespace tartarus::vmm::api {

class ApiServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;
  static constexpr size_t kMaxConnections = 16;

  // Binds path (which must not exist yet, as with Firecracker) and listens.
  static Result<std::unique_ptr<ApiServer>> Listen(const std::string& path, Handler handler);
  ~ApiServer();  // closes everything and removes the socket file

  // Serves until Shutdown() (from any thread).
  Status Serve();
  void Shutdown();

 private:
  struct Connection {
    UniqueFd fd;
    HttpRequestParser parser;
    std::string output;
    bool closing = false;
  };
  ApiServer(std::string path, UniqueFd listener, UniqueFd wake_read, UniqueFd wake_write,
            Handler handler);
  void Accept();
  // Reads what is there and answers complete requests; false when the connection is done.
  bool ServeConnection(Connection& connection);
  bool FlushOutput(Connection& connection);

  std::string path_;
  UniqueFd listener_;
  UniqueFd wake_read_;
  UniqueFd wake_write_;
  Handler handler_;
  std::map<int, Connection> connections_;
};

}  // namespace tartarus::vmm::api

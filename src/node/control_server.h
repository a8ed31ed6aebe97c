// Hecatoncheir (the node agent): a sandbox's control socket. Other CLI processes
// (`tartarus exec`, `cp`, `kill`) connect to <sandbox dir>/control.sock and speak the
// guest protocol itself; the server answers Hello, forwards every request to the guest
// agent over the supervisor's one connection with the ids remapped, and routes the
// answers back. A Shutdown frame asks for the whole sandbox to be killed.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "protocol/client.h"

namespace tartarus::node {

class ControlServer {
 public:
  // Listens on `socket_path` (mode 0600: only root may drive a sandbox).
  static Result<std::unique_ptr<ControlServer>> Start(std::string socket_path,
                                                      protocol::AgentClient& upstream,
                                                      std::function<void()> on_kill);
  ~ControlServer();
  // Closes the socket and every connection; in-flight requests get no further answers.
  void Stop();

 private:
  struct Connection;
  ControlServer(std::string socket_path, UniqueFd listener, protocol::AgentClient& upstream,
                std::function<void()> on_kill);
  void AcceptLoop();
  void Serve(std::shared_ptr<Connection> connection);

  std::string socket_path_;
  UniqueFd listener_;
  UniqueFd stop_event_;
  protocol::AgentClient& upstream_;
  std::function<void()> on_kill_;
  std::thread accept_thread_;
  std::mutex mutex_;
  bool stopped_ = false;
  std::vector<std::shared_ptr<Connection>> connections_;
  std::vector<std::thread> threads_;
};

}  // namespace tartarus::node

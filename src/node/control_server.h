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

// Frames with this client id address the sandbox's main command, which the supervisor
// started itself: StdinData and StdinClose go to its stdin, each answered with Ok once the
// bytes are within the agent's stdin window (or an Error once the command has ended).
// That answer is the flow control, so a client sends one frame and waits.
inline constexpr uint32_t kMainStdinRequestId = 0xffffffffu;

// The supervisor's side of kMainStdinRequestId: blocking calls on the main command.
struct MainStdin {
  std::function<Status(std::string_view)> write;  // empty: its stdin is not open to clients
  std::function<Status()> close;
};

class ControlServer {
 public:
  // Listens on `socket_path` (mode 0600: only root may drive a sandbox).
  static Result<std::unique_ptr<ControlServer>> Start(std::string socket_path,
                                                      protocol::AgentClient& upstream,
                                                      std::function<void()> on_kill,
                                                      MainStdin main_stdin = {});
  ~ControlServer();
  // Closes the socket and every connection; in-flight requests get no further answers.
  void Stop();

 private:
  struct Connection;
  ControlServer(std::string socket_path, UniqueFd listener, protocol::AgentClient& upstream,
                std::function<void()> on_kill, MainStdin main_stdin);
  // A frame for kMainStdinRequestId; blocks this connection's thread while the window is full.
  void ServeMainStdin(Connection& connection, const protocol::Frame& frame);
  void AcceptLoop();
  void Serve(std::shared_ptr<Connection> connection);

  std::string socket_path_;
  UniqueFd listener_;
  UniqueFd stop_event_;
  protocol::AgentClient& upstream_;
  std::function<void()> on_kill_;
  MainStdin main_stdin_;
  std::thread accept_thread_;
  std::mutex mutex_;
  bool stopped_ = false;
  std::vector<std::shared_ptr<Connection>> connections_;
  std::vector<std::thread> threads_;
};

}  // namespace tartarus::node

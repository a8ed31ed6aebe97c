// Hecatoncheir (the node agent): the supervisor of one sandbox. It owns the isolation
// boundary and the connection to the guest agent, runs the sandbox's main command,
// writes its output to the logs (and to a terminal for foreground runs), serves the
// sandbox's control socket for `exec`, `cp` and `kill`, enforces the timeout backstop,
// and always tears everything down, recording how the sandbox ended.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "node/sandbox_record.h"
#include "node/sandbox_store.h"
#include "node/stdin_pump.h"
#include "protocol/client.h"
#include "runtime/runtime.h"

namespace tartarus::node {

class ControlServer;

struct Launch {
  SandboxRecord record;       // state kCreating, already in the store
  runtime::SandboxSpec spec;  // what the backend starts
  int stdin_fd = -1;          // forwarded to the main command when >= 0
  int stdout_fd = -1;         // the main command's output also goes here when >= 0
  int stderr_fd = -1;
  // run --rm: Finish() removes the record (while the runtime cleans up) instead of saving
  // the final one; a failed Start() removes it too.
  bool remove_record = false;
  // The record is not in the store yet: Start() creates it once the runtime is spawned, so
  // that writing it overlaps with the runtime's start. Else it exists (state creating).
  bool create_record = false;
  // The node lease (node_lease.h): the sandbox is stopped as lost once it lapses.
  std::string lease_file;
};

class Supervisor {
 public:
  Supervisor(SandboxStore& store, runtime::Backend& backend, Launch launch);
  ~Supervisor();

  // Starts the boundary, connects to the agent, opens the control socket and starts the
  // main command. On failure everything is torn down and the record says why.
  Status Start();
  // Waits for the main command, tears the sandbox down, saves and returns the final record.
  SandboxRecord Finish();
  // Stops the sandbox now (from any thread): `state` and `reason` go into the record and
  // the exit code becomes 128 + signo.
  void Kill(SandboxState state, int signo, std::string reason);

 private:
  SandboxRecord Wait();
  // The watchdog thread: the timeout backstop and the node lease.
  void Watch();
  bool Killed();
  void OnOutput(protocol::Stream stream, std::string_view data);
  // `meanwhile` runs once the agent was told to exit, while the runtime cleans up.
  void Teardown(const std::function<void()>& meanwhile = nullptr);

  SandboxStore& store_;
  runtime::Backend& backend_;
  Launch launch_;
  SandboxRecord record_;

  std::unique_ptr<runtime::Sandbox> sandbox_;
  std::unique_ptr<protocol::AgentClient> client_;
  std::unique_ptr<protocol::ExecHandle> main_exec_;
  std::unique_ptr<ControlServer> control_;
  UniqueFd stdout_log_, stderr_log_;  // opened on the first output
  bool stdout_log_opened_ = false, stderr_log_opened_ = false;
  uint64_t stdout_logged_ = 0, stderr_logged_ = 0;

  std::mutex mutex_;          // guards the kill and finish state below
  std::mutex destroy_mutex_;  // guards sandbox_ against a concurrent Kill()
  std::condition_variable killed_cv_;
  bool killed_ = false;
  SandboxState kill_state_ = SandboxState::kKilled;
  int kill_signo_ = 0;
  std::string kill_reason_;
  bool finished_ = false;
  bool torn_down_ = false;
  std::unique_ptr<StdinPump> stdin_pump_;
  std::thread watchdog_;
};

}  // namespace tartarus::node

// Hecatoncheir (the node agent), local mode: everything the CLI does to sandboxes on this
// host, against the state directory. The control-plane issue puts an HTTP API in front of
// the same operations; the CLI's commands and output stay as they are.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "node/sandbox_record.h"
#include "node/sandbox_store.h"
#include "protocol/messages.h"
#include "runtime/runtime.h"

namespace tartarus::node {

struct NodeConfig {
  std::string state_dir = "/var/lib/tartarus";
  std::string agent_path;                  // the static guest agent binary
  std::string self_path;                   // the tartarus binary (to spawn supervisors)
  std::vector<std::string> template_dirs;  // where <name>.yaml templates are found
  std::string gvisor_platform = "ptrace";
  // Detached runs stop when this node lease lapses (node_lease.h); empty: no lease (a
  // single host without Olympus).
  std::string lease_file;
};

// What the user asked for; unset limits come from the template, then from defaults.
struct RunRequest {
  std::string id;  // empty: a new random id; else [a-z0-9-], unused on this host (node agent runs)
  std::string template_name = "base";
  std::string runtime = "container";
  std::vector<std::string> command;
  std::vector<std::string> env;  // KEY=VALUE, on top of the template's env
  std::string workdir;           // empty: the template's
  std::string user;
  std::optional<uint32_t> millicpus;
  std::optional<uint64_t> memory_bytes;
  std::optional<uint64_t> disk_bytes;
  std::optional<uint32_t> pids;
  std::optional<std::chrono::milliseconds> timeout;
  bool forward_stdin = false;
  // Detached runs (node agents): keep the main command's stdin open for the node agent to
  // feed through the control socket (node/async_control_client.h, AsyncMainStdin).
  bool stdin_via_control = false;
  bool remove_when_done = false;  // --rm
};

// Where a foreground command's bytes go: stdout/stderr of the CLI, or a test's buffers.
struct IoSinks {
  int stdin_fd = -1;  // -1: no stdin
  int stdout_fd = 1;
  int stderr_fd = 2;
};

using ProgressFn = std::function<void(const std::string& line)>;

// The ExecStart for a command in a running sandbox: the sandbox's env, workdir and user
// unless the request overrides them. Shared by LocalNode::Exec and the node agent's
// asynchronous exec, so both run a command the same way.
protocol::ExecStart MakeExecStart(const SandboxRecord& record,
                                  const std::vector<std::string>& command,
                                  const std::vector<std::string>& env, const std::string& workdir,
                                  const std::string& user,
                                  std::optional<std::chrono::milliseconds> timeout,
                                  bool stdin_pipe);
// An exec's exit as a shell reports it: 124 on timeout, 128+N for signal N, else its code.
int ExecExitCode(const protocol::ExecExit& exit);

class LocalNode {
 public:
  explicit LocalNode(NodeConfig config);
  ~LocalNode();

  // Cleans up after supervisors that died: their sandboxes' leftovers are removed and
  // their records marked lost. Cheap when there is nothing to do.
  void Reconcile();

  // Runs to completion, streaming output; returns the final record (exit_code set).
  // Ctrl-C/SIGTERM must be routed to Cancel() by the caller.
  Result<SandboxRecord> Run(const RunRequest& request, const IoSinks& io, ProgressFn progress);
  // Kills the sandbox Run() is running (thread- and signal-thread-safe).
  void Cancel(int signo);
  // Starts a supervisor process that runs the sandbox in the background; returns its id
  // once the main command runs.
  Result<std::string> RunDetached(const RunRequest& request, ProgressFn progress);
  // Entry point of that supervisor process (hidden `tartarus __supervise ID`).
  int SuperviseDetached(const std::string& id, int ready_fd);

  std::vector<SandboxRecord> List();
  Result<SandboxRecord> Inspect(std::string_view id);
  Result<int> Exec(std::string_view id, const std::vector<std::string>& command,
                   const std::vector<std::string>& env, const std::string& workdir,
                   const std::string& user, std::optional<std::chrono::milliseconds> timeout,
                   const IoSinks& io);
  Status Kill(std::string_view id);
  Status Remove(std::string_view id, bool force);
  Status Logs(std::string_view id, bool follow, const IoSinks& io);
  // `src` and `dst`: one is a local path, the other "ID:/path".
  Status Copy(const std::string& src, const std::string& dst, ProgressFn progress);

  SandboxStore& store() { return store_; }

 private:
  struct Impl;
  NodeConfig config_;
  SandboxStore store_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tartarus::node

// Hecatoncheir (the node agent), local mode: what a node knows about each sandbox it ran.
// One record per sandbox, kept as <state_dir>/sandboxes/<id>/record.json and written
// atomically; the sandbox's supervisor owns it while the sandbox runs.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "runtime/runtime.h"

namespace tartarus::node {

enum class SandboxState {
  kCreating,  // record written, boundary not up yet
  kRunning,   // main command running
  kExited,    // main command finished (any exit code), sandbox destroyed
  kKilled,    // stopped by `kill`, Ctrl-C or a signal to the supervisor
  kFailed,    // could not start, or the sandbox broke (error says why)
  kLost,      // its supervisor died; leftovers were cleaned up
};

std::string_view StateName(SandboxState state);
Result<SandboxState> ParseState(std::string_view name);
inline bool IsFinal(SandboxState s) {
  return s != SandboxState::kCreating && s != SandboxState::kRunning;
}

struct SandboxRecord {
  std::string id;
  std::string template_name;
  std::string runtime;  // backend name
  std::vector<std::string> command;
  std::vector<std::string> env;  // user-supplied KEY=VALUE (template env is added at run)
  std::string workdir;
  std::string user;
  runtime::Limits limits;
  uint64_t timeout_ms = 0;
  bool detached = false;
  // The main command's stdin stays open and is fed through the control socket (API mode's
  // `run -i`); false: /dev/null, or the foreground CLI's own stdin.
  bool stdin_via_control = false;

  SandboxState state = SandboxState::kCreating;
  int64_t created_ms = 0;  // Unix epoch milliseconds
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  std::optional<int> exit_code;  // the shell-style code the CLI exits with
  int signal = 0;
  bool timed_out = false;
  std::string error;

  pid_t supervisor_pid = 0;
  uint64_t supervisor_start_time = 0;  // /proc/<pid>/stat field 22, to survive pid reuse

  runtime::Usage usage;
};

std::string RecordToJson(const SandboxRecord& record);
Result<SandboxRecord> RecordFromJson(const std::string& json);

int64_t NowMs();
// A new random sandbox id: 12 lowercase hex characters.
std::string NewSandboxId();

}  // namespace tartarus::node

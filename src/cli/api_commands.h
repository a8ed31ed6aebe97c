// tartarus CLI, API mode: the sandbox commands (run, ps, inspect, logs, exec, kill, rm, cp)
// against Olympus, and the commands that only exist with a control plane (token, policy,
// node, errors, queue, tenant). commands.cc picks these when connection.h says "API".
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.h"
#include "cli/connection.h"
#include "common/result.h"

namespace tartarus::cli {

// Where API-mode commands read and write (tests pass pipes).
struct ApiIo {
  int stdin_fd = 0;
  int stdout_fd = 1;
  int stderr_fd = 2;
};

// The CreateSandbox body for `run`'s flags. Sizes and durations are checked here with the
// same parsers as local mode (so mistakes fail before a request), then sent as typed.
Result<nlohmann::json> CreateSpecFromFlags(const RunFlags& flags);

// The `name:` of a policy document (policy apply FILE); errors name the file.
Result<std::string> PolicyNameOf(std::string_view yaml, const std::string& file);

int ApiRun(const Connection& connection, const RunFlags& flags, const ApiIo& io = {});
int ApiPs(const Connection& connection, const std::string& state, bool quiet, bool json,
          bool all_pages);
int ApiInspect(const Connection& connection, const std::string& id);
int ApiLogs(const Connection& connection, const std::string& id, bool follow, const ApiIo& io = {});
struct ApiExecArgs {
  std::string id;
  std::vector<std::string> command, env;
  std::string workdir, user, timeout;
  bool interactive = false;
};
int ApiExec(const Connection& connection, const ApiExecArgs& args, const ApiIo& io = {});
int ApiKill(const Connection& connection, const std::vector<std::string>& ids);
int ApiRemove(const Connection& connection, const std::vector<std::string>& ids, bool force);
int ApiCopy(const Connection& connection, const std::string& src, const std::string& dst);

// Output helpers shared by the API-mode commands.
void PrintJson(const nlohmann::json& value);              // indented, to stdout
std::string OrDash(const std::string& text);              // "" -> "-" in table cells
std::string OneLine(std::string text, size_t max_chars);  // for messages in table cells

// token, policy, node, errors, queue, tenant.
void AddControlPlaneCommands(CLI::App& app, GlobalOptions& global, int& exit_code);

}  // namespace tartarus::cli

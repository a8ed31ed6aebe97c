// The tartarus CLI's commands, registered on a CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

#include "node/local_node.h"

namespace tartarus::cli {

// The CLI's own failures (not the sandboxed command's) exit with 125, as docker does.
inline constexpr int kTartarusFailure = 125;

struct GlobalOptions {
  node::NodeConfig node;
  bool command_given = false;        // the command line had "--"
  std::vector<std::string> command;  // what followed it
  // Where commands go (connection.h decides): Olympus's API or this host's state directory.
  bool local = false;       // --local
  std::string host;         // --host
  std::string token;        // --token
  std::string context;      // --context
  std::string config_path;  // --config (default: $TARTARUS_CONFIG, ~/.config/tartarus/...)
};

// `tartarus run`'s flags, shared by local and API mode.
struct RunFlags {
  std::string template_name = "base";
  std::string runtime = "container";
  std::string cpus, memory, disk, timeout;
  uint32_t pids = 0;
  std::vector<std::string> env;
  std::string workdir, user;
  bool detach = false, interactive = false, remove = false, quiet = false;
  std::vector<std::string> command;
};

// --env KEY=VALUE, or --env KEY to pass this process's value through.
Result<std::vector<std::string>> ParseEnv(const std::vector<std::string>& entries);
// SIGINT, SIGTERM and SIGHUP go to one thread that hands them to `on_signal`; SIGPIPE is
// ignored. Call before any other thread starts.
void RouteSignals(std::function<void(int)> on_signal);

void RegisterCommands(CLI::App& app, GlobalOptions& global, int& exit_code);
// `tartarus template build|ls|inspect|rm` (template_commands.cc).
void AddTemplateCommands(CLI::App& app, GlobalOptions& global, int& exit_code);
// `tartarus up|olympus|agent`: the daemons (daemon_commands.cc).
void AddDaemonCommands(CLI::App& app, GlobalOptions& global, int& exit_code);
int ReportError(const Error& error);  // prints "tartarus: <message>", returns 125

}  // namespace tartarus::cli

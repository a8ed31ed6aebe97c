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
};

void RegisterCommands(CLI::App& app, GlobalOptions& global, int& exit_code);
// `tartarus template build|ls|inspect|rm` (template_commands.cc).
void AddTemplateCommands(CLI::App& app, GlobalOptions& global, int& exit_code);
int ReportError(const Error& error);  // prints "tartarus: <message>", returns 125

}  // namespace tartarus::cli

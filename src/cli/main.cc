// tartarus: the command-line interface. In API mode the sandbox commands go to Olympus
// (the control plane) over HTTP; in local mode they act on this host's state directory
// through node::LocalNode. connection.h holds the rules that choose.
// Exit codes: a run's or exec's own exit code (127 not found, 124 timeout, 128+N signal);
// 125 when Tartarus itself failed (bad flag, unknown template, missing runtime, ...).
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "cli/commands.h"

namespace tartarus::cli {
namespace {

std::string SelfDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? "." : exe.parent_path().string();
}

// Where shipped templates are looked up, first match wins.
std::vector<std::string> TemplateDirs(const std::string& self_dir) {
  std::vector<std::string> dirs;
  if (const char* env = getenv("TARTARUS_TEMPLATE_PATH")) {
    std::string path = env;
    size_t start = 0;
    while (start <= path.size()) {
      size_t end = path.find(':', start);
      if (end == std::string::npos) end = path.size();
      if (end > start) dirs.push_back(path.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.push_back(self_dir + "/../share/tartarus/templates");  // installed layout
  dirs.push_back(self_dir + "/../../templates");              // build/bin in a checkout
  return dirs;
}

}  // namespace
}  // namespace tartarus::cli

int main(int argc, char** argv) {
  using namespace tartarus::cli;
  std::string self_dir = SelfDir();
  GlobalOptions global;
  const char* env_state = getenv("TARTARUS_STATE_DIR");
  global.node.state_dir = env_state && *env_state ? env_state : "/var/lib/tartarus";
  global.node.agent_path = self_dir + "/tartarus-agent";
  global.node.self_path = self_dir + "/tartarus";
  global.node.template_dirs = TemplateDirs(self_dir);

  CLI::App app{
      "Tartarus runs untrusted code in sandboxes that start as fast as containers and\n"
      "isolate like virtual machines.\n\n"
      "  tartarus run --template python-ds -- python3 -c \"print('hi')\"\n"
      "  tartarus ps\n\n"
      "Commands go to the control plane (API mode) when --host, TARTARUS_HOST or a config\n"
      "context names one, or when `tartarus up` runs on this host (<state-dir>/olympus.sock);\n"
      "otherwise they run the sandboxes in this process (local mode).\n",
      "tartarus"};
  app.set_version_flag("--version", std::string("tartarus ") + TARTARUS_VERSION);
  app.require_subcommand(1);
  app.add_option("--state-dir", global.node.state_dir,
                 "State directory: templates, sandboxes, runtime state (env TARTARUS_STATE_DIR)")
      ->capture_default_str();
  app.add_option("--host", global.host,
                 "Olympus API to talk to: http://HOST:PORT, HOST[:PORT] (port 7777) or "
                 "unix:///PATH (env TARTARUS_HOST)");
  app.add_option("--token", global.token, "API token (env TARTARUS_TOKEN)");
  app.add_option("--context", global.context,
                 "Context from the config file to use instead of its current-context");
  app.add_option("--config", global.config_path,
                 "Config file (env TARTARUS_CONFIG; default ~/.config/tartarus/config.yaml)");
  app.add_flag("--local", global.local,
               "Act on this host's state directory directly, even when a daemon or host is set");
  app.add_option("--gvisor-platform", global.node.gvisor_platform,
                 "runsc --platform for the gvisor runtime (ptrace works everywhere; kvm needs "
                 "hardware virtualization)")
      ->capture_default_str();

  int exit_code = 0;
  RegisterCommands(app, global, exit_code);
  // Everything after the first "--" is the sandboxed command, never our flags.
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--" && !global.command_given) {
      global.command_given = true;
      global.command.assign(argv + i + 1, argv + argc);
      break;
    }
    args.emplace_back(argv[i]);
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments reversed
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "tartarus: %s\nRun 'tartarus --help' (or 'tartarus COMMAND --help').\n",
                 e.what());
    return kTartarusFailure;
  }
  return exit_code;
}

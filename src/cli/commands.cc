#include "cli/commands.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/api_commands.h"
#include "cli/connection.h"
#include "cli/table.h"
#include "common/units.h"

namespace tartarus::cli {
namespace {

int Report(const Error& error) { return ReportError(error); }

// API mode or local mode (connection.h); on error the command stops with 125.
std::optional<Connection> ChooseMode(const GlobalOptions& global, int& exit_code) {
  auto connection = SelectConnection(global);
  if (!connection) {
    exit_code = Report(connection.error());
    return std::nullopt;
  }
  return *connection;
}

void PrintProgress(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

Result<node::RunRequest> ToRequest(const RunFlags& flags) {
  node::RunRequest request;
  request.template_name = flags.template_name;
  request.runtime = flags.runtime;
  request.command = flags.command;
  request.env = TRY(ParseEnv(flags.env));
  request.workdir = flags.workdir;
  request.user = flags.user;
  auto with_flag = [](const char* flag, const Error& e) {
    return Error{e.code, std::string("--") + flag + ": " + e.message};
  };
  if (!flags.cpus.empty()) {
    auto v = ParseMilliCpus(flags.cpus);
    if (!v) return Fail(with_flag("cpus", v.error()));
    request.millicpus = *v;
  }
  if (!flags.memory.empty()) {
    auto v = ParseBytes(flags.memory);
    if (!v) return Fail(with_flag("memory", v.error()));
    if (*v < (16ull << 20)) return Fail(ErrorCode::kInvalidArgument, "--memory: at least 16M");
    request.memory_bytes = *v;
  }
  if (!flags.disk.empty()) {
    auto v = ParseBytes(flags.disk);
    if (!v) return Fail(with_flag("disk", v.error()));
    if (*v < (1ull << 20)) return Fail(ErrorCode::kInvalidArgument, "--disk: at least 1M");
    request.disk_bytes = *v;
  }
  if (!flags.timeout.empty()) {
    auto v = ParseDuration(flags.timeout);
    if (!v) return Fail(with_flag("timeout", v.error()));
    if (v->count() <= 0) return Fail(ErrorCode::kInvalidArgument, "--timeout: must be positive");
    request.timeout = *v;
  }
  if (flags.pids) request.pids = flags.pids;
  request.forward_stdin = flags.interactive || !isatty(0);
  request.remove_when_done = flags.remove;
  if (request.command.empty()) {
    return Fail(ErrorCode::kInvalidArgument,
                "no command given: tartarus run [OPTIONS] -- COMMAND [ARGS...]");
  }
  return request;
}

int ExitCodeOf(const node::SandboxRecord& record) {
  if (!record.error.empty()) std::fprintf(stderr, "tartarus: %s\n", record.error.c_str());
  return record.exit_code ? *record.exit_code : kTartarusFailure;
}

void AddRunCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto flags = std::make_shared<RunFlags>();
  CLI::App* run = app.add_subcommand(
      "run", "Run a command in a new sandbox; exits with the command's exit code");
  run->footer(
      "\nExit codes: the command's own; 124 on --timeout; 128+N when signal N killed it;\n"
      "127 when the command was not found; 125 when Tartarus itself failed.\n"
      "Examples:\n"
      "  tartarus run --template python-ds -- python3 -c \"print('Hello')\"\n"
      "  echo data | tartarus run --memory 256M --timeout 10s -- wc -c\n"
      "  tartarus run -d -- sleep 600      # prints the sandbox id\n"
      "  tartarus --host olympus:7777 run -- echo hi   # through the control plane\n"
      "Stdin is forwarded in local and API mode alike (always when it is a pipe or file).");
  run->add_option("-t,--template", flags->template_name,
                  "Template (root filesystem and defaults); built on first use")
      ->capture_default_str();
  run->add_option("--runtime", flags->runtime,
                  "Isolation backend: container (runc), container-crun, gvisor (runsc), "
                  "microvm (tartarus-vmm; needs hardware virtualization)")
      ->capture_default_str();
  run->add_option("--cpus", flags->cpus, "CPU limit, e.g. 1 or 0.5 (default: the template's)");
  run->add_option("--memory", flags->memory, "Memory limit, e.g. 512M or 2G");
  run->add_option("--disk", flags->disk, "Size of the sandbox's writable layer, e.g. 1G");
  run->add_option("--pids", flags->pids, "Maximum processes and threads");
  run->add_option("--timeout", flags->timeout, "Kill the command after this long, e.g. 30s, 5m");
  run->add_option("-e,--env", flags->env, "Environment variable KEY=VALUE (or KEY to pass ours)");
  run->add_option("-w,--workdir", flags->workdir, "Working directory inside the sandbox");
  run->add_option("-u,--user", flags->user, "User inside the sandbox: name, uid or uid:gid");
  run->add_flag("-d,--detach", flags->detach, "Run in the background and print the sandbox id");
  run->add_flag("-i,--interactive", flags->interactive,
                "Pass stdin through even when it is a terminal (always when it is not)");
  run->add_flag("--rm", flags->remove, "Remove the sandbox's record and logs when it ends");
  run->add_flag("-q,--quiet", flags->quiet, "No progress output (template builds)");
  run->prefix_command();
  run->callback([&global, &exit_code, flags, run] {
    flags->command = run->remaining();
    if (global.command_given) {
      if (!flags->command.empty()) {
        exit_code = Report(Error{ErrorCode::kInvalidArgument,
                                 "unexpected arguments before '--': " + flags->command.front()});
        return;
      }
      flags->command = global.command;
    }
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiRun(*mode, *flags);
      return;
    }
    auto request = ToRequest(*flags);
    if (!request) {
      exit_code = Report(request.error());
      return;
    }
    node::LocalNode local(global.node);
    node::ProgressFn progress = flags->quiet ? node::ProgressFn() : PrintProgress;
    if (flags->detach) {
      local.Reconcile();
      auto id = local.RunDetached(*request, progress);
      if (!id) {
        exit_code = Report(id.error());
        return;
      }
      std::printf("%s\n", id->c_str());
      exit_code = 0;
      return;
    }
    RouteSignals([&local](int signo) { local.Cancel(signo); });
    local.Reconcile();
    node::IoSinks io;
    io.stdin_fd = request->forward_stdin ? 0 : -1;
    auto record = local.Run(*request, io, progress);
    if (!record) {
      exit_code = Report(record.error());
      return;
    }
    exit_code = ExitCodeOf(*record);
  });
}

void AddSuperviseCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto id = std::make_shared<std::string>();
  auto ready_fd = std::make_shared<int>(-1);
  CLI::App* cmd = app.add_subcommand("__supervise", "");
  cmd->group("");  // hidden: started by `run --detach`
  cmd->add_option("id", *id)->required();
  auto lease_file = std::make_shared<std::string>();
  cmd->add_option("--ready-fd", *ready_fd);
  cmd->add_option("--lease-file", *lease_file);
  cmd->callback([&global, &exit_code, id, ready_fd, lease_file] {
    signal(SIGPIPE, SIG_IGN);
    node::NodeConfig config = global.node;
    config.lease_file = *lease_file;
    node::LocalNode local(config);
    exit_code = local.SuperviseDetached(*id, *ready_fd);
  });
}

std::string StateCell(const node::SandboxRecord& r) {
  std::string state(node::StateName(r.state));
  if (r.state == node::SandboxState::kExited && r.exit_code) {
    state += " (" + std::to_string(*r.exit_code) + (r.timed_out ? ", timed out" : "") + ")";
  }
  return state;
}

void AddPsCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  struct Flags {
    std::string state;
    bool quiet = false, json = false, all_pages = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* ps = app.add_subcommand("ps", "List sandboxes, newest first");
  ps->add_option("--state", flags->state,
                 "Only sandboxes in this state: creating, running, exited, killed, failed, lost "
                 "(API mode: queued, assigned, running, exited, killed, failed, lost)");
  ps->add_flag("-q,--quiet", flags->quiet, "Only print ids");
  ps->add_flag("--json", flags->json, "JSON output");
  ps->add_flag("--all-pages", flags->all_pages,
               "API mode: every page of the list, not only the first");
  ps->callback([&global, &exit_code, flags] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiPs(*mode, flags->state, flags->quiet, flags->json, flags->all_pages);
      return;
    }
    std::optional<node::SandboxState> want;
    if (!flags->state.empty()) {
      auto s = node::ParseState(flags->state);
      if (!s) {
        exit_code = Report(s.error());
        return;
      }
      want = *s;
    }
    node::LocalNode local(global.node);
    local.Reconcile();
    auto records = local.List();
    std::erase_if(records, [&](const auto& r) { return want && r.state != *want; });
    if (flags->json) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& r : records) list.push_back(nlohmann::json::parse(node::RecordToJson(r)));
      std::printf("%s\n", list.dump(2).c_str());
    } else if (flags->quiet) {
      for (const auto& r : records) std::printf("%s\n", r.id.c_str());
    } else {
      Table table({"ID", "TEMPLATE", "RUNTIME", "STATE", "CREATED", "COMMAND"});
      int64_t now = node::NowMs();
      for (const auto& r : records) {
        table.AddRow({r.id, r.template_name, r.runtime, StateCell(r), Ago(r.created_ms, now),
                      QuoteCommand(r.command)});
      }
      std::fputs(table.Render().c_str(), stdout);
    }
    exit_code = 0;
  });
}

void AddInspectCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto id = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Show a sandbox's full record as JSON");
  cmd->add_option("id", *id, "Sandbox id or unique prefix")->required();
  cmd->callback([&global, &exit_code, id] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiInspect(*mode, *id);
      return;
    }
    node::LocalNode local(global.node);
    local.Reconcile();
    auto record = local.Inspect(*id);
    if (!record) {
      exit_code = Report(record.error());
      return;
    }
    std::fputs(node::RecordToJson(*record).c_str(), stdout);
    exit_code = 0;
  });
}

void AddLogsCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto id = std::make_shared<std::string>();
  auto follow = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("logs", "Print a sandbox's output (stdout and stderr)");
  cmd->add_option("id", *id, "Sandbox id or unique prefix")->required();
  cmd->add_flag("-f,--follow", *follow, "Keep printing new output until the sandbox ends");
  cmd->callback([&global, &exit_code, id, follow] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiLogs(*mode, *id, *follow);
      return;
    }
    signal(SIGPIPE, SIG_IGN);
    node::LocalNode local(global.node);
    local.Reconcile();
    auto status = local.Logs(*id, *follow, node::IoSinks{});
    exit_code = status ? 0 : Report(status.error());
  });
}

void AddExecCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  struct Flags {
    std::string id, workdir, user, timeout;
    std::vector<std::string> env;
    bool interactive = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand(
      "exec", "Run another command in a running sandbox; exits with its exit code");
  cmd->footer("\nExample: tartarus exec 3f2a -- ls /tmp");
  cmd->add_option("-e,--env", flags->env, "Environment variable KEY=VALUE");
  cmd->add_option("-w,--workdir", flags->workdir, "Working directory");
  cmd->add_option("-u,--user", flags->user, "User: name, uid or uid:gid");
  cmd->add_option("--timeout", flags->timeout, "Kill the command after this long");
  cmd->add_flag("-i,--interactive", flags->interactive, "Pass stdin through from a terminal");
  cmd->prefix_command();
  cmd->callback([&global, &exit_code, flags, cmd] {
    std::vector<std::string> args = cmd->remaining();
    if (args.empty()) {
      exit_code = Report(Error{ErrorCode::kInvalidArgument,
                               "usage: tartarus exec [OPTIONS] ID -- COMMAND [ARGS...]"});
      return;
    }
    std::string id = args.front();
    args.erase(args.begin());
    if (global.command_given) args.insert(args.end(), global.command.begin(), global.command.end());
    if (args.empty()) {
      exit_code = Report(Error{ErrorCode::kInvalidArgument,
                               "no command given: tartarus exec ID -- COMMAND [ARGS...]"});
      return;
    }
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiExec(*mode, ApiExecArgs{id, args, flags->env, flags->workdir, flags->user,
                                             flags->timeout, flags->interactive});
      return;
    }
    auto env = ParseEnv(flags->env);
    if (!env) {
      exit_code = Report(env.error());
      return;
    }
    std::optional<std::chrono::milliseconds> timeout;
    if (!flags->timeout.empty()) {
      auto t = ParseDuration(flags->timeout);
      if (!t) {
        exit_code = Report(Error{t.error().code, "--timeout: " + t.error().message});
        return;
      }
      timeout = *t;
    }
    node::LocalNode local(global.node);
    node::IoSinks io;
    io.stdin_fd = flags->interactive || !isatty(0) ? 0 : -1;
    signal(SIGPIPE, SIG_IGN);
    auto code = local.Exec(id, args, *env, flags->workdir, flags->user, timeout, io);
    exit_code = code ? *code : Report(code.error());
  });
}

void AddCpCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto src = std::make_shared<std::string>();
  auto dst = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("cp", "Copy files or directories into or out of a sandbox");
  cmd->footer(
      "\nOne side is a local path, the other ID:PATH inside a running sandbox.\n"
      "  tartarus cp data.csv 3f2a:/root/data.csv\n"
      "  tartarus cp 3f2a:/root/out ./out\n"
      "With a control plane (API mode): single files only, up to 64 MiB each.");
  cmd->add_option("src", *src, "Source: local path or ID:PATH")->required();
  cmd->add_option("dst", *dst, "Destination: local path or ID:PATH")->required();
  cmd->callback([&global, &exit_code, src, dst] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiCopy(*mode, *src, *dst);
      return;
    }
    node::LocalNode local(global.node);
    auto status = local.Copy(*src, *dst, node::ProgressFn());
    exit_code = status ? 0 : Report(status.error());
  });
}

void AddKillCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto ids = std::make_shared<std::vector<std::string>>();
  CLI::App* cmd = app.add_subcommand("kill", "Kill running sandboxes (everything in them stops)");
  cmd->add_option("ids", *ids, "Sandbox ids or unique prefixes")->required();
  cmd->callback([&global, &exit_code, ids] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiKill(*mode, *ids);
      return;
    }
    node::LocalNode local(global.node);
    local.Reconcile();
    exit_code = 0;
    for (const auto& id : *ids) {
      auto status = local.Kill(id);
      if (!status) exit_code = Report(status.error());
    }
  });
}

void AddRmCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto ids = std::make_shared<std::vector<std::string>>();
  auto force = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("rm", "Remove finished sandboxes' records and logs");
  cmd->add_option("ids", *ids, "Sandbox ids or unique prefixes")->required();
  cmd->add_flag("-f,--force", *force, "Kill running sandboxes first");
  cmd->callback([&global, &exit_code, ids, force] {
    auto mode = ChooseMode(global, exit_code);
    if (!mode) return;
    if (mode->api()) {
      exit_code = ApiRemove(*mode, *ids, *force);
      return;
    }
    node::LocalNode local(global.node);
    local.Reconcile();
    exit_code = 0;
    for (const auto& id : *ids) {
      auto status = local.Remove(id, *force);
      if (!status) exit_code = Report(status.error());
    }
  });
}

}  // namespace

// SIGINT, SIGTERM and SIGHUP go to one thread that hands them to `on_signal`; SIGPIPE is
// ignored so a closed stdout becomes an error we handle, not a death that strands a
// sandbox. Call before any other thread starts.
void RouteSignals(std::function<void(int)> on_signal) {
  signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set, on_signal = std::move(on_signal)] {
    while (true) {
      int signo = 0;
      if (sigwait(&set, &signo) == 0) on_signal(signo);
    }
  }).detach();
}

Result<std::vector<std::string>> ParseEnv(const std::vector<std::string>& entries) {
  std::vector<std::string> env;
  for (const auto& entry : entries) {
    size_t eq = entry.find('=');
    std::string key = entry.substr(0, eq);
    bool valid = !key.empty() && !isdigit(static_cast<unsigned char>(key[0]));
    for (char c : key) valid = valid && (isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!valid) {
      return Fail(ErrorCode::kInvalidArgument,
                  "invalid --env '" + entry +
                      "': expected KEY=VALUE with KEY made of letters, "
                      "digits and '_'");
    }
    if (eq == std::string::npos) {
      const char* value = getenv(key.c_str());
      if (!value) continue;
      env.push_back(key + "=" + value);
    } else {
      env.push_back(entry);
    }
  }
  return env;
}

int ReportError(const Error& error) {
  std::fprintf(stderr, "tartarus: %s\n", error.message.c_str());
  return kTartarusFailure;
}

void RegisterCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  AddRunCommand(app, global, exit_code);
  AddPsCommand(app, global, exit_code);
  AddInspectCommand(app, global, exit_code);
  AddLogsCommand(app, global, exit_code);
  AddExecCommand(app, global, exit_code);
  AddCpCommand(app, global, exit_code);
  AddKillCommand(app, global, exit_code);
  AddRmCommand(app, global, exit_code);
  AddTemplateCommands(app, global, exit_code);
  AddControlPlaneCommands(app, global, exit_code);
  AddDaemonCommands(app, global, exit_code);
  AddSuperviseCommand(app, global, exit_code);
}

}  // namespace tartarus::cli

// The daemons: `tartarus up` (Olympus and one Hecatoncheir in one process, SQLite),
// `tartarus olympus` (an API replica over a shared store) and `tartarus agent` (a node agent
// that registers with Olympus). Each runs until SIGINT or SIGTERM, then stops cleanly:
// sandboxes keep running in their supervisors and are adopted when the agent comes back.
#include <fmt/format.h>
#include <signal.h>

#include <filesystem>
#include <thread>

#include "api/olympus.h"
#include "cli/commands.h"
#include "cli/daemon_config.h"
#include "common/units.h"
#include "node/node_agent.h"
#include "telemetry/log.h"

namespace tartarus::cli {
namespace {

struct DaemonFlags {
  std::string config_file;
  std::string store, listen, unix_socket, log_level;
  bool no_tcp = false;
  // agent
  std::string olympus, token, node_id, agent_listen, advertise, cpus, memory, runtimes;
  std::vector<std::string> labels;
};

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Signals must be blocked before any thread starts, so every thread inherits the mask and
// only sigwait sees them.
void BlockStopSignals() {
  sigset_t set = StopSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

// Blocks until SIGINT/SIGTERM (blocked by BlockStopSignals); returns the signal.
int WaitForStopSignal() {
  sigset_t set = StopSignals();
  int sig = 0;
  sigwait(&set, &sig);
  return sig;
}

Result<DaemonConfig> LoadConfig(const DaemonFlags& flags, const GlobalOptions& global) {
  DaemonConfig config;
  if (!flags.config_file.empty()) config = TRY(LoadDaemonConfig(flags.config_file));
  if (config.state_dir.empty()) config.state_dir = global.node.state_dir;
  if (!flags.store.empty()) config.store = flags.store;
  if (!flags.listen.empty()) config.listen = flags.listen;
  if (flags.no_tcp) config.listen = "none";
  if (!flags.unix_socket.empty()) config.unix_socket = flags.unix_socket;
  if (!flags.log_level.empty()) config.log_level = flags.log_level;
  auto& a = config.agent;
  if (!flags.olympus.empty()) a.olympus = flags.olympus;
  if (!flags.token.empty()) a.token = flags.token;
  if (a.token.empty()) {
    if (const char* env = getenv("TARTARUS_TOKEN")) a.token = env;
  }
  if (!flags.node_id.empty()) a.node_id = flags.node_id;
  if (!flags.agent_listen.empty()) a.listen = flags.agent_listen;
  if (!flags.advertise.empty()) a.advertise = flags.advertise;
  if (!flags.cpus.empty()) {
    auto m = ParseMilliCpus(flags.cpus);
    if (!m || *m == 0)
      return Fail(ErrorCode::kInvalidArgument, "--cpus: expected a CPU count such as 4");
    a.millicpus = *m;
  }
  if (!flags.memory.empty()) {
    auto b = ParseBytes(flags.memory);
    if (!b || *b == 0)
      return Fail(ErrorCode::kInvalidArgument, "--memory: expected a size such as 8G");
    a.memory_bytes = static_cast<int64_t>(*b);
  }
  for (const auto& kv : flags.labels) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Fail(ErrorCode::kInvalidArgument, fmt::format("--label: '{}' is not KEY=VALUE", kv));
    }
    a.labels[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!flags.runtimes.empty()) {
    a.runtimes.clear();
    size_t start = 0;
    while (start <= flags.runtimes.size()) {
      size_t end = flags.runtimes.find(',', start);
      if (end == std::string::npos) end = flags.runtimes.size();
      if (end > start) a.runtimes.push_back(flags.runtimes.substr(start, end - start));
      start = end + 1;
    }
  }
  auto level = telemetry::ParseLogLevel(config.log_level);
  if (!level) return Fail(ErrorCode::kInvalidArgument, "--log-level: " + level.error().message);
  telemetry::SetMinLogLevel(*level);
  return config;
}

Result<api::OlympusConfig> OlympusConfigFrom(const DaemonConfig& c) {
  api::OlympusConfig o;
  o.store_url = c.store;
  o.unix_socket = c.unix_socket;
  auto [host, port] = TRY(ParseListen(c.listen));
  o.tcp_host = host;
  o.tcp_port = port;
  o.node_lease = c.node_lease;
  o.schedule_interval = c.schedule_interval;
  o.schedule_batch = c.schedule_batch;
  o.best_of_k = c.best_of_k;
  o.open_metrics = c.open_metrics;
  o.io_threads = c.api_threads;
  o.worker_threads = c.worker_threads;
  return o;
}

node::NodeAgentConfig AgentConfigFrom(const DaemonConfig& c, const GlobalOptions& global) {
  node::NodeAgentConfig a;
  a.node = global.node;
  a.node.state_dir = c.state_dir;
  a.olympus = c.agent.olympus;
  a.token = c.agent.token;
  a.node_id = c.agent.node_id;
  a.listen = c.agent.listen.empty() ? "unix://" + c.state_dir + "/node.sock" : c.agent.listen;
  a.advertise = c.agent.advertise;
  a.millicpus = c.agent.millicpus;
  a.memory_bytes = c.agent.memory_bytes;
  a.labels = c.agent.labels;
  a.runtimes = c.agent.runtimes;
  a.heartbeat_interval = c.agent.heartbeat_interval;
  return a;
}

void AddConfigFlag(CLI::App* cmd, DaemonFlags& flags) {
  cmd->add_option("-c,--config-file", flags.config_file,
                  "YAML config file (docs/configuration.md); flags override it");
  cmd->add_option("--log-level", flags.log_level, "debug, info, warn or error (default info)");
}

void AddAgentFlags(CLI::App* cmd, DaemonFlags& flags) {
  cmd->add_option("--node-id", flags.node_id, "This node's id (default: the host name)");
  cmd->add_option("--agent-listen", flags.agent_listen,
                  "Where the node agent serves logs/exec/files to Olympus: HOST:PORT or "
                  "unix:///path (default: <state-dir>/node.sock)");
  cmd->add_option("--advertise", flags.advertise,
                  "How Olympus reaches --agent-listen, e.g. http://10.0.0.5:7778");
  cmd->add_option("--cpus", flags.cpus, "CPU capacity offered (default: every CPU)");
  cmd->add_option("--memory", flags.memory, "Memory capacity offered (default: 90% of RAM)");
  cmd->add_option("--label", flags.labels, "Node label KEY=VALUE for node selectors (repeatable)");
  cmd->add_option("--runtimes", flags.runtimes,
                  "Runtimes offered, comma-separated (default: every installed one)");
}

int RunUp(const DaemonFlags& flags, const GlobalOptions& global) {
  BlockStopSignals();
  auto config = LoadConfig(flags, global);
  if (!config) return ReportError(config.error());
  std::error_code ec;
  std::filesystem::create_directories(config->state_dir, ec);
  if (ec)
    return ReportError(
        Error{ErrorCode::kIo, "creating " + config->state_dir + ": " + ec.message()});
  if (config->store.empty()) config->store = "sqlite://" + config->state_dir + "/tartarus.db";
  if (config->unix_socket.empty()) config->unix_socket = config->state_dir + "/olympus.sock";
  auto olympus_config = OlympusConfigFrom(*config);
  if (!olympus_config) return ReportError(olympus_config.error());
  auto olympus = api::Olympus::Start(*olympus_config);
  if (!olympus) return ReportError(olympus.error());
  if (config->agent.olympus.empty()) config->agent.olympus = "unix://" + config->unix_socket;
  auto agent = node::NodeAgent::Start(AgentConfigFrom(*config, global));
  if (!agent) {
    (*olympus)->Stop();
    return ReportError(agent.error().Context("starting the node agent"));
  }
  std::string tcp =
      olympus_config->tcp_port >= 0
          ? fmt::format(" and http://{}:{}", olympus_config->tcp_host, (*olympus)->tcp_port())
          : "";
  telemetry::LogJson("info", "tartarus is up",
                     {{"api", "unix://" + config->unix_socket + tcp},
                      {"store", config->store},
                      {"node", (*agent)->node_id()},
                      {"state_dir", config->state_dir}});
  int sig = WaitForStopSignal();
  telemetry::LogJson("info", "stopping", {{"signal", strsignal(sig)}});
  (*agent)->Stop();
  (*olympus)->Stop();
  return 0;
}

int RunOlympus(const DaemonFlags& flags, const GlobalOptions& global) {
  BlockStopSignals();
  auto config = LoadConfig(flags, global);
  if (!config) return ReportError(config.error());
  if (config->store.empty()) {
    return ReportError(
        Error{ErrorCode::kInvalidArgument,
              "--store: required, e.g. postgres://user@host/tartarus or a SQLite path"});
  }
  auto olympus_config = OlympusConfigFrom(*config);
  if (!olympus_config) return ReportError(olympus_config.error());
  auto olympus = api::Olympus::Start(*olympus_config);
  if (!olympus) return ReportError(olympus.error());
  telemetry::LogJson(
      "info", "olympus is up",
      {{"tcp", olympus_config->tcp_port >= 0
                   ? fmt::format("{}:{}", olympus_config->tcp_host, (*olympus)->tcp_port())
                   : "none"},
       {"unix", config->unix_socket}});
  int sig = WaitForStopSignal();
  telemetry::LogJson("info", "stopping", {{"signal", strsignal(sig)}});
  (*olympus)->Stop();
  return 0;
}

int RunAgent(const DaemonFlags& flags, const GlobalOptions& global) {
  BlockStopSignals();
  auto config = LoadConfig(flags, global);
  if (!config) return ReportError(config.error());
  if (config->agent.olympus.empty()) {
    return ReportError(Error{ErrorCode::kInvalidArgument,
                             "--olympus: required, e.g. http://olympus.example:7777"});
  }
  auto agent = node::NodeAgent::Start(AgentConfigFrom(*config, global));
  if (!agent) return ReportError(agent.error());
  telemetry::LogJson("info", "node agent is up",
                     {{"node", (*agent)->node_id()},
                      {"endpoint", (*agent)->endpoint()},
                      {"olympus", config->agent.olympus}});
  int sig = WaitForStopSignal();
  telemetry::LogJson("info", "stopping", {{"signal", strsignal(sig)}});
  (*agent)->Stop();
  return 0;
}

}  // namespace

void AddDaemonCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto up_flags = std::make_shared<DaemonFlags>();
  CLI::App* up = app.add_subcommand(
      "up",
      "Run the all-in-one daemon: the API (Olympus) and this host as a node, state in SQLite");
  up->footer(
      "\nThe API listens on <state-dir>/olympus.sock (trusted: admin) and on\n"
      "127.0.0.1:7777 (bearer tokens: `tartarus token create`). Other tartarus commands\n"
      "use the daemon automatically when its socket answers. Stop with Ctrl-C or SIGTERM.\n"
      "Example:\n"
      "  tartarus up &\n"
      "  tartarus run -- echo hello");
  AddConfigFlag(up, *up_flags);
  up->add_option("--store", up_flags->store,
                 "Store URL (default: sqlite://<state-dir>/tartarus.db)");
  up->add_option("--listen", up_flags->listen, "TCP address of the API (default 127.0.0.1:7777)");
  up->add_flag("--no-tcp", up_flags->no_tcp, "Serve the API only on the Unix socket");
  up->add_option("--unix-socket", up_flags->unix_socket,
                 "Unix socket of the API (default: <state-dir>/olympus.sock)");
  AddAgentFlags(up, *up_flags);
  up->callback([&global, &exit_code, up_flags] { exit_code = RunUp(*up_flags, global); });

  auto olympus_flags = std::make_shared<DaemonFlags>();
  CLI::App* olympus = app.add_subcommand(
      "olympus", "Run an API server replica over a shared store (PostgreSQL for several replicas)");
  olympus->footer(
      "\nExample:\n"
      "  tartarus olympus --store 'postgresql://tartarus@db/tartarus' --listen 0.0.0.0:7777");
  AddConfigFlag(olympus, *olympus_flags);
  olympus->add_option("--store", olympus_flags->store,
                      "Store URL: postgres://... or a SQLite path");
  olympus->add_option("--listen", olympus_flags->listen, "TCP address (default 127.0.0.1:7777)");
  olympus->add_option("--unix-socket", olympus_flags->unix_socket,
                      "Also serve on this Unix socket");
  olympus->callback(
      [&global, &exit_code, olympus_flags] { exit_code = RunOlympus(*olympus_flags, global); });

  auto agent_flags = std::make_shared<DaemonFlags>();
  CLI::App* agent = app.add_subcommand(
      "agent", "Run this host as a node (Hecatoncheir) of an Olympus control plane");
  agent->footer(
      "\nExample:\n"
      "  tartarus agent --olympus http://olympus:7777 --token $ADMIN_TOKEN \\\n"
      "      --agent-listen 0.0.0.0:7778 --advertise http://10.0.0.5:7778 --label zone=a");
  AddConfigFlag(agent, *agent_flags);
  agent->add_option("--olympus", agent_flags->olympus,
                    "Olympus URL: http://host:port or unix:///path; several replicas "
                    "comma-separated (fails over to the next)");
  agent->add_option("--token", agent_flags->token, "An admin API token (env TARTARUS_TOKEN)");
  AddAgentFlags(agent, *agent_flags);
  agent->callback(
      [&global, &exit_code, agent_flags] { exit_code = RunAgent(*agent_flags, global); });
}

}  // namespace tartarus::cli

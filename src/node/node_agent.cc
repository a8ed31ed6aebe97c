// Hecatoncheir (the node agent), cluster mode (see node_agent.h).
#include "node/node_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <boost/asio.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "common/unique_fd.h"
#include "http/client.h"
#include "http/server.h"
#include "http/url.h"
#include "node/async_control_client.h"
#include "node/node_lease.h"
#include "telemetry/log.h"
#include "template/template_store.h"

namespace tartarus::node {

namespace asio = boost::asio;
using nlohmann::json;

namespace {

constexpr size_t kMaxFileBytes = 64 << 20;    // one file through the API
constexpr size_t kMaxPendingBytes = 4 << 20;  // unsent stream output before we pause
constexpr auto kLogPollInterval = std::chrono::milliseconds(50);
// Stdin: one chunk per request at most this big (413 beyond), and how long an ended
// command's stdin is remembered, so a late chunk gets a clear 409 rather than a 404.
constexpr size_t kMaxStdinChunkBytes = 1 << 20;
constexpr auto kEndedStdinMemory = std::chrono::minutes(10);

std::string NewExecId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}{:016x}", rng(), rng());
}

// A query parameter that must be a non-negative integer (a byte offset).
Result<uint64_t> QueryOffset(const std::map<std::string, std::string>& query) {
  auto it = query.find("offset");
  if (it == query.end()) return Fail(ErrorCode::kInvalidArgument, "offset: required");
  const std::string& text = it->second;
  if (text.empty() || text.size() > 15 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                "offset: expected a byte offset (a non-negative integer), got '" + text + "'");
  }
  return std::stoull(text);
}

bool QueryTrue(const std::map<std::string, std::string>& query, const char* key) {
  auto it = query.find(key);
  return it != query.end() && (it->second == "1" || it->second == "true");
}

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    size_t n;
    if (c < 0x80) {
      n = 0;
    } else if ((c >> 5) == 6) {
      n = 1;
    } else if ((c >> 4) == 14) {
      n = 2;
    } else if ((c >> 3) == 30) {
      n = 3;
    } else {
      return false;
    }
    if (i + n >= s.size() && n > 0) return false;
    for (size_t k = 1; k <= n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n + 1;
  }
  return true;
}

std::string Base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "node";
  return buf;
}

int64_t HostMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemTotal:") return kb * 1024;
  }
  return int64_t{1} << 30;
}

http::Response JsonResponse(int status, const json& body) {
  http::Response r;
  r.status = status;
  r.body = body.dump();
  return r;
}

std::string StateForReport(SandboxState s) {
  switch (s) {
    case SandboxState::kExited:
      return "exited";
    case SandboxState::kKilled:
      return "killed";
    default:
      return "failed";
  }
}

}  // namespace

std::string RunId(const std::string& sandbox_id, int attempt) {
  return sandbox_id + "-" + std::to_string(attempt);
}

bool ParseRunId(const std::string& run_id, std::string* sandbox_id, int* attempt) {
  size_t dash = run_id.rfind('-');
  if (dash != 16 || run_id.size() < 18 || run_id.size() > 24) return false;
  for (size_t i = 0; i < 16; ++i) {
    char c = run_id[i];
    if (!(isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f'))) return false;
  }
  int n = 0;
  for (size_t i = dash + 1; i < run_id.size(); ++i) {
    if (!isdigit(static_cast<unsigned char>(run_id[i]))) return false;
    n = n * 10 + (run_id[i] - '0');
    if (n > 1000000) return false;
  }
  if (n <= 0) return false;
  *sandbox_id = run_id.substr(0, 16);
  *attempt = n;
  return true;
}

std::string OutputEvent(std::string_view stream, std::string_view bytes) {
  json event = {{"event", stream}};
  if (ValidUtf8(bytes)) {
    event["data"] = std::string(bytes);
  } else {
    event["data_b64"] = Base64(bytes);
  }
  return event.dump() + "\n";
}

// Olympus as seen from an agent: one or more replicas (config `olympus: URL,URL,...`). A
// request that cannot reach one replica goes to the next; the replica that answered last is
// tried first by every thread. Answers, errors included, come from whichever replica answered.
class OlympusLink {
 public:
  static Result<OlympusLink> Create(const std::string& endpoints,
                                    const http::ClientOptions& options,
                                    std::shared_ptr<std::atomic<size_t>> preferred) {
    OlympusLink link;
    link.preferred_ = std::move(preferred);
    size_t begin = 0;
    while (begin <= endpoints.size()) {
      size_t end = std::min(endpoints.find(',', begin), endpoints.size());
      std::string url = endpoints.substr(begin, end - begin);
      if (url.empty()) {
        return Fail(ErrorCode::kInvalidArgument,
                    "--olympus: an empty address in \"" + endpoints + "\" (URL[,URL...])");
      }
      auto client = http::Client::Create(url, options);
      if (!client) return Fail(client.error().Context("--olympus " + url));
      link.clients_.push_back(std::move(*client));
      begin = end + 1;
    }
    return link;
  }

  Result<http::ClientResponse> Do(const std::string& method, const std::string& target,
                                  const std::string& body,
                                  std::vector<std::pair<std::string, std::string>> headers) {
    size_t first = preferred_->load() % clients_.size();
    Result<http::ClientResponse> answer = Fail(ErrorCode::kIo, "no Olympus address");
    for (size_t i = 0; i < clients_.size(); ++i) {
      size_t at = (first + i) % clients_.size();
      answer = clients_[at].Do(method, target, body, headers);
      if (answer) {
        preferred_->store(at);
        return answer;
      }
    }
    return answer;
  }

 private:
  std::vector<http::Client> clients_;
  std::shared_ptr<std::atomic<size_t>> preferred_;
};

struct NodeAgent::Impl : std::enable_shared_from_this<NodeAgent::Impl> {
  NodeAgentConfig config;
  std::unique_ptr<http::Server> server;
  asio::io_context io;  // log-follow timers and exec output pumps
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread io_thread, loop_thread, report_thread;
  std::atomic<bool> stopping{false};

  enum class Phase { kStarting, kRunning, kReported };
  struct Run {
    std::string sandbox_id;
    int attempt = 0;
    Phase phase = Phase::kStarting;
    bool started_reported = false;  // re-sent until Olympus has it
  };
  std::mutex mu;
  std::map<std::string, Run> runs;  // by run id
  bool registered = false;
  // When our lease ends unless renewed. Past it Olympus may hand our runs to another node, so
  // we stop them first (self-fencing): a sandbox never runs twice at once.
  std::optional<std::chrono::steady_clock::time_point> lease_end;
  bool swept = false;  // orphans of a previous agent were checked since registering

  // ---- talking to Olympus ----

  std::shared_ptr<std::atomic<size_t>> preferred_olympus = std::make_shared<std::atomic<size_t>>(0);

  // One per thread (a client is not shared between threads).
  Result<OlympusLink> OlympusClient() {
    http::ClientOptions options;
    options.bearer_token = config.token;
    options.request_timeout = std::chrono::milliseconds(10000);
    return OlympusLink::Create(config.olympus, options, preferred_olympus);
  }

  // POST with a JSON body; returns the parsed answer, or an Error carrying the API's message.
  // Errors: the HTTP status mapped to a code (409 -> kFailedPrecondition: stale or lost,
  // 404 -> kNotFound); not reaching Olympus at all is always kIo, so it is never mistaken
  // for Olympus's answer.
  Result<json> Post(OlympusLink& client, const std::string& target, const json& body) {
    auto sent = client.Do("POST", target, body.dump(), {{"Content-Type", "application/json"}});
    if (!sent) return Fail(ErrorCode::kIo, sent.error().message);
    auto& res = *sent;
    if (res.status == 204) return json::object();
    json doc = json::parse(res.body, nullptr, false);
    if (res.status >= 200 && res.status < 300) {
      if (doc.is_discarded()) return Fail(ErrorCode::kProtocol, "Olympus sent invalid JSON");
      return doc;
    }
    std::string message = res.body;
    if (!doc.is_discarded() && doc.contains("error") && doc["error"].is_object()) {
      message = doc["error"].value("message", res.body);
    }
    ErrorCode code = res.status == 404                        ? ErrorCode::kNotFound
                     : res.status == 409                      ? ErrorCode::kFailedPrecondition
                     : res.status == 401 || res.status == 403 ? ErrorCode::kPermissionDenied
                                                              : ErrorCode::kIo;
    return Fail(code, fmt::format("Olympus: {} ({})", message, res.status));
  }

  std::vector<std::string> Templates() {
    std::vector<std::string> names;
    templates::TemplateStore store(config.node.state_dir, config.node.template_dirs);
    if (auto list = store.List()) {
      for (const auto& t : *list) {
        if (t.built) names.push_back(t.name);
      }
    }
    return names;
  }

  Status Register(OlympusLink& client) {
    json body = {{"id", config.node_id},
                 {"name", config.node_id},
                 {"address", config.advertise},
                 {"millicpus", config.millicpus},
                 {"memory_bytes", config.memory_bytes},
                 {"labels", config.labels},
                 {"runtimes", config.runtimes},
                 {"templates", Templates()}};
    TRY(Post(client, "/v1/nodes", body));
    telemetry::LogJson("info", "registered with Olympus",
                       {{"node", config.node_id}, {"olympus", config.olympus}});
    return Ok();
  }

  // True when Olympus took the report, or answered that the run is stale (then the run is
  // killed: never let two runs go on). False when it did not answer: try again later.
  bool Report(OlympusLink& client, const Run& run, json body, const std::string& run_id) {
    body["sandbox"] = run.sandbox_id;
    body["attempt"] = run.attempt;
    auto res = Post(client, "/v1/nodes/" + http::UrlEncode(config.node_id) + "/reports", body);
    if (res) return true;
    if (res.error().code == ErrorCode::kFailedPrecondition) {
      telemetry::LogJson("warn", "stale run, killing it",
                         {{"run", run_id}, {"error", res.error().message}});
      LocalNode local(config.node);
      (void)local.Kill(run_id);
      return true;
    }
    telemetry::LogJson("warn", "report failed, will retry",
                       {{"run", run_id}, {"error", res.error().message}});
    return false;
  }

  // ---- the loop ----

  void Loop() {
    auto client = OlympusClient();
    if (!client) {
      telemetry::LogJson("error", "bad Olympus address", {{"error", client.error().message}});
      return;
    }
    while (!stopping) {
      if (!registered) {
        auto st = Register(*client);
        if (!st) {
          if (lease_end && std::chrono::steady_clock::now() >= *lease_end) Fence();
          telemetry::LogJson("warn", "registration failed, retrying",
                             {{"error", st.error().message}});
          Sleep(std::chrono::milliseconds(1000));
          continue;
        }
        registered = true;
        swept = false;
      }
      json known = json::array();
      {
        std::lock_guard lock(mu);
        for (const auto& [run_id, run] : runs) known.push_back(run_id);
      }
      auto reply = Post(*client, "/v1/nodes/" + http::UrlEncode(config.node_id) + "/heartbeat",
                        {{"templates", Templates()},
                         {"known", known},
                         {"wait_ms", config.heartbeat_interval.count()}});
      if (!reply) {
        if (reply.error().code == ErrorCode::kNotFound ||
            reply.error().code == ErrorCode::kFailedPrecondition) {
          registered = false;  // lost or forgotten: register again
        }
        telemetry::LogJson("warn", "heartbeat failed", {{"error", reply.error().message}});
        if (lease_end && std::chrono::steady_clock::now() >= *lease_end) Fence();
        Sleep(config.heartbeat_interval);
        continue;
      }
      int64_t lease_left = reply->value("lease_ms", int64_t{0}) - WallMs();
      // Renewal took time to reach us: keep a safety margin of one heartbeat.
      lease_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(lease_left) -
                  config.heartbeat_interval;
      // For our supervisors, which must stop in time even if this process dies.
      if (auto written =
              WriteNodeLease(config.node.lease_file,
                             MonotonicMs() + lease_left - config.heartbeat_interval.count());
          !written) {
        telemetry::LogJson("warn", "could not write the node lease: runs will stop",
                           {{"error", written.error().message}});
      }
      auto reconciled = std::chrono::steady_clock::now();
      Reconcile(*client, *reply);
      // A long poll answers at once when there is news; never spin on repeated news.
      if (std::chrono::steady_clock::now() - reconciled < std::chrono::milliseconds(20)) {
        Sleep(std::chrono::milliseconds(20));
      }
    }
  }

  // Reports runs that ended, promptly: the heartbeat thread may be in a long poll.
  void ReportLoop() {
    auto client = OlympusClient();
    if (!client) return;
    while (!stopping) {
      bool ok = ReportEnded(*client);
      Sleep(std::chrono::milliseconds(ok ? 50 : 1000));
    }
  }

  static int64_t WallMs() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  // Our lease lapsed without renewal: kill every run we have.
  void Fence() {
    std::vector<std::string> to_kill;
    {
      std::lock_guard lock(mu);
      for (const auto& [run_id, run] : runs) {
        if (run.phase == Phase::kRunning) to_kill.push_back(run_id);
      }
    }
    if (to_kill.empty()) return;
    telemetry::LogJson("warn", "lease lapsed: stopping every run on this node",
                       {{"runs", to_kill.size()}});
    LocalNode local(config.node);
    for (const auto& run_id : to_kill) (void)local.Kill(run_id);
    lease_end.reset();
  }

  void Sleep(std::chrono::milliseconds d) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!stopping && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  void Reconcile(OlympusLink& client, const json& reply) {
    std::set<std::string> desired, kill_ids;
    LocalNode local(config.node);
    for (const auto& k : reply.value("kill", json::array())) {
      if (k.is_string()) kill_ids.insert(k.get<std::string>());
    }
    for (const auto& a : reply.value("assignments", json::array())) {
      if (!a.is_object() || !a.contains("sandbox")) continue;
      const json& sandbox = a["sandbox"];
      std::string id = sandbox.value("id", "");
      int attempt = a.value("attempt", 0);
      if (id.empty() || attempt <= 0) continue;
      std::string run_id = RunId(id, attempt);
      desired.insert(run_id);
      {
        std::lock_guard lock(mu);
        if (runs.count(run_id)) continue;
      }
      auto record = local.store().Load(run_id);
      if (record) {
        // Adopt a run a previous agent on this host started.
        std::lock_guard lock(mu);
        // Olympus still saying "assigned" means the start report never reached it.
        runs[run_id] = Run{id, attempt, Phase::kRunning, sandbox.value("state", "") != "assigned"};
        telemetry::LogJson("info", "adopted run", {{"run", run_id}});
        continue;
      }
      if (kill_ids.count(id)) {
        // Killed before it started here: nothing to run, only to report.
        Report(client, Run{id, attempt, Phase::kReported},
               {{"event", "finished"}, {"state", "killed"}, {"exit_code", nullptr}}, run_id);
        continue;
      }
      {
        std::lock_guard lock(mu);
        runs[run_id] = Run{id, attempt, Phase::kStarting};
      }
      std::thread([self = shared_from_this(), sandbox, run_id, id, attempt] {
        self->StartRun(sandbox, run_id, id, attempt);
      }).detach();
    }
    std::vector<std::string> to_kill;
    {
      std::lock_guard lock(mu);
      for (const auto& [run_id, run] : runs) {
        if (kill_ids.count(run.sandbox_id) && run.phase == Phase::kRunning)
          to_kill.push_back(run_id);
      }
    }
    for (const auto& run_id : to_kill) (void)local.Kill(run_id);
    // Runs no longer assigned to us: killed if still going (Olympus moved them or ended them).
    std::vector<std::string> orphans;
    {
      std::lock_guard lock(mu);
      for (auto it = runs.begin(); it != runs.end();) {
        if (desired.count(it->first) || it->second.phase == Phase::kStarting) {
          ++it;
          continue;
        }
        if (it->second.phase == Phase::kRunning) orphans.push_back(it->first);
        it = runs.erase(it);
      }
    }
    if (!swept) {
      // After (re)registering: runs of a previous agent that Olympus no longer assigns here.
      for (const auto& record : local.List()) {
        std::string sid;
        int attempt = 0;
        if (!IsFinal(record.state) && ParseRunId(record.id, &sid, &attempt) &&
            !desired.count(record.id)) {
          std::lock_guard lock(mu);
          if (!runs.count(record.id)) orphans.push_back(record.id);
        }
      }
      swept = true;
    }
    for (const auto& run_id : orphans) {
      auto record = local.store().Load(run_id);
      if (record && !IsFinal(record->state)) {
        telemetry::LogJson("warn", "killing a run Olympus no longer assigns here",
                           {{"run", run_id}});
        (void)local.Kill(run_id);
      }
    }
  }

  void StartRun(const json& sandbox, const std::string& run_id, const std::string& id,
                int attempt) {
    RunRequest request;
    request.id = run_id;
    request.template_name = sandbox.value("template", "base");
    request.runtime = sandbox.value("runtime", "container");
    request.command = sandbox.value("command", std::vector<std::string>{});
    request.env = sandbox.value("env", std::vector<std::string>{});
    request.workdir = sandbox.value("workdir", "");
    request.user = sandbox.value("user", "");
    // Created with "stdin": true: the command's stdin stays open for POST .../stdin.
    request.stdin_via_control = sandbox.value("stdin", false);
    json limits = sandbox.value("limits", json::object());
    if (int64_t v = limits.value("millicpus", int64_t{0}); v > 0)
      request.millicpus = static_cast<uint32_t>(v);
    if (int64_t v = limits.value("memory_bytes", int64_t{0}); v > 0)
      request.memory_bytes = static_cast<uint64_t>(v);
    if (int64_t v = limits.value("disk_bytes", int64_t{0}); v > 0)
      request.disk_bytes = static_cast<uint64_t>(v);
    if (int64_t v = limits.value("timeout_ms", int64_t{0}); v > 0)
      request.timeout = std::chrono::milliseconds(v);
    if (int64_t v = limits.value("pids", int64_t{0}); v > 0)
      request.pids = static_cast<uint32_t>(v);

    LocalNode local(config.node);
    auto started = local.RunDetached(request, nullptr);
    auto client = OlympusClient();
    if (!client) return;
    Run run{id, attempt, Phase::kRunning};
    if (started) {
      bool reported = Report(*client, run, {{"event", "started"}}, run_id);
      std::lock_guard lock(mu);
      if (auto it = runs.find(run_id); it != runs.end()) {
        it->second.phase = Phase::kRunning;
        it->second.started_reported = reported;  // else ReportEnded sends it again
      }
      return;
    }
    // Bad requests fail everywhere; anything else may work on another try or node.
    ErrorCode code = started.error().code;
    bool retryable = code != ErrorCode::kInvalidArgument && code != ErrorCode::kNotFound;
    telemetry::LogJson(
        "warn", "run failed to start",
        {{"run", run_id}, {"error", started.error().message}, {"retryable", retryable}});
    // Until Olympus has it (or our lease ends and Olympus requeues the job anyway).
    for (int i = 0; i < 20 && !stopping; ++i) {
      if (Report(
              *client, run,
              {{"event", "failed"}, {"error", started.error().message}, {"retryable", retryable}},
              run_id)) {
        break;
      }
      Sleep(std::chrono::milliseconds(500));
    }
    std::lock_guard lock(mu);
    if (auto it = runs.find(run_id); it != runs.end()) it->second.phase = Phase::kReported;
  }

  // False when some report did not get through (the caller backs off).
  bool ReportEnded(OlympusLink& client) {
    bool all_delivered = true;
    std::vector<std::pair<std::string, Run>> running;
    {
      std::lock_guard lock(mu);
      for (const auto& [run_id, run] : runs) {
        if (run.phase == Phase::kRunning) running.emplace_back(run_id, run);
      }
    }
    SandboxStore store(config.node.state_dir);
    for (const auto& [run_id, run] : running) {
      auto record = store.Load(run_id);
      bool delivered = false;
      if (record && !IsFinal(record->state)) {
        if (!run.started_reported && Report(client, run, {{"event", "started"}}, run_id)) {
          std::lock_guard lock(mu);
          if (auto it = runs.find(run_id); it != runs.end()) it->second.started_reported = true;
        }
        continue;
      }
      if (!record) {
        delivered = Report(
            client, run,
            {{"event", "failed"}, {"error", "the run's record disappeared"}, {"retryable", true}},
            run_id);
      } else if (IsFinal(record->state)) {
        if (record->state == SandboxState::kLost) {
          delivered = Report(
              client, run,
              {{"event", "failed"}, {"error", "the sandbox supervisor died"}, {"retryable", true}},
              run_id);
        } else {
          json body = {{"event", "finished"},      {"state", StateForReport(record->state)},
                       {"signal", record->signal}, {"timed_out", record->timed_out},
                       {"error", record->error},   {"exit_code", nullptr}};
          if (record->exit_code) body["exit_code"] = *record->exit_code;
          delivered = Report(client, run, body, run_id);
        }
      }
      if (!delivered) {  // Olympus unreachable: the next round sends it again
        all_delivered = false;
        continue;
      }
      std::lock_guard lock(mu);
      if (auto it = runs.find(run_id); it != runs.end()) it->second.phase = Phase::kReported;
    }
    return all_delivered;
  }

  // ---- the node endpoint (Olympus forwards logs, exec and files here) ----

  Result<std::string> RunOf(http::Request& req) {
    const std::string& id = req.params["id"];
    auto it = req.query.find("attempt");
    int attempt = it == req.query.end() ? 0 : atoi(it->second.c_str());
    std::string run_id = RunId(id, attempt);
    std::string sid;
    int a = 0;
    if (!ParseRunId(run_id, &sid, &a)) {
      return Fail(ErrorCode::kInvalidArgument, "expected a sandbox id and ?attempt=N");
    }
    SandboxStore store(config.node.state_dir);
    if (!store.Load(run_id))
      return Fail(ErrorCode::kNotFound, "no run " + run_id + " on this node");
    return run_id;
  }

  struct LogPump {
    std::string run_id;
    std::string paths[2];
    off_t offsets[2] = {0, 0};
    bool follow = false;
    std::shared_ptr<http::Responder> responder;
    std::unique_ptr<asio::steady_timer> timer;
  };

  // Reads what is new in both logs; true when something was sent.
  static bool Drain(LogPump& pump) {
    static const char* kStreams[2] = {"stdout", "stderr"};
    bool any = false;
    for (int i = 0; i < 2; ++i) {
      UniqueFd fd(open(pump.paths[i].c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) continue;
      char buf[64 << 10];
      for (int rounds = 0; rounds < 8; ++rounds) {
        ssize_t n = pread(fd.Get(), buf, sizeof buf, pump.offsets[i]);
        if (n <= 0) break;
        pump.offsets[i] += n;
        pump.responder->Write(OutputEvent(kStreams[i], std::string_view(buf, n)));
        any = true;
      }
    }
    return any;
  }

  void PumpLogs(std::shared_ptr<LogPump> pump) {
    if (pump->responder->closed() || stopping) return;
    if (pump->responder->pending_bytes() < kMaxPendingBytes) {
      bool sent = Drain(*pump);
      bool final = true;
      if (pump->follow) {
        SandboxStore store(config.node.state_dir);
        auto record = store.Load(pump->run_id);
        final = !record || IsFinal(record->state);
        if (final) sent = Drain(*pump) || sent;  // what was written before it ended
      }
      if (final && !sent) {
        pump->responder->Finish();
        return;
      }
    }
    pump->timer->expires_after(kLogPollInterval);
    pump->timer->async_wait([self = shared_from_this(), pump](boost::system::error_code ec) {
      if (!ec) self->PumpLogs(pump);
    });
  }

  void Logs(http::Request& req, std::shared_ptr<http::Responder> responder) {
    auto run_id = RunOf(req);
    if (!run_id) return responder->Send(http::ErrorResponse(run_id.error(), req.request_id));
    SandboxStore store(config.node.state_dir);
    auto pump = std::make_shared<LogPump>();
    pump->run_id = *run_id;
    pump->paths[0] = store.StdoutLog(*run_id);
    pump->paths[1] = store.StderrLog(*run_id);
    auto follow = req.query.find("follow");
    pump->follow = follow != req.query.end() && (follow->second == "1" || follow->second == "true");
    pump->responder = responder;
    pump->timer = std::make_unique<asio::steady_timer>(io);
    responder->StartStream(200, "application/x-ndjson");
    asio::post(io, [self = shared_from_this(), pump] { self->PumpLogs(pump); });
  }

  // ---- exec and stdin streams (docs/control-plane.md, "Stdin through the API") ----
  //
  // No thread per stream: every exec and every API-fed main-command stdin is a connection
  // to the sandbox's control socket (AsyncControlClient) on the io thread. Exec output
  // frames go straight to the HTTP responder; stdin chunks become StdinData/StdinClose
  // frames. Closing a connection kills its exec (the control server's rule for a client
  // that went away), which is how node shutdown and a vanished HTTP client cancel it.

  // Every live connection, so that Stop() can close them (on the io thread).
  std::vector<std::weak_ptr<AsyncControlClient>> live_clients;

  void Track(AsyncControlClient& client) {
    std::erase_if(live_clients, [](const auto& weak) { return weak.expired(); });
    live_clients.push_back(client.weak_from_this());
  }

  // On the io thread: ends every stream (their execs are killed, their HTTP streams end
  // with an error event).
  void CloseStreams() {
    auto clients = std::move(live_clients);
    live_clients.clear();
    for (auto& weak : clients) {
      if (auto client = weak.lock()) {
        client->Close(Error{ErrorCode::kCancelled, "the node agent is stopping"});
      }
    }
  }

  // One exec's HTTP stream, and the backpressure between it and the exec's connection.
  struct ExecStream {
    std::shared_ptr<http::Responder> responder;
    std::shared_ptr<AsyncExec> exec;
    std::unique_ptr<asio::steady_timer> drain_timer;  // set while reading is paused
  };

  static void EndExecStream(ExecStream& stream, const Result<protocol::ExecExit>& result) {
    json end = {{"event", "end"}, {"exit_code", nullptr}, {"error", ""}};
    if (result) {
      end["exit_code"] = ExecExitCode(*result);
      end["state"] = "exited";
    } else {
      end["state"] = "failed";
      end["error"] = result.error().message;
    }
    stream.responder->Write(end.dump() + "\n");
    stream.responder->Finish();
  }

  // A slow HTTP client: stop reading the exec's connection (so the sandbox's writes wait)
  // until the responder drained; a client that went away cancels the exec.
  void WaitForDrain(std::shared_ptr<ExecStream> stream) {
    stream->drain_timer->expires_after(std::chrono::milliseconds(20));
    stream->drain_timer->async_wait(
        [self = shared_from_this(), stream](boost::system::error_code ec) {
          if (ec || !stream->exec) return;
          if (stream->responder->closed()) {
            return stream->exec->Cancel(Error{ErrorCode::kCancelled, "the client went away"});
          }
          if (stream->responder->pending_bytes() < kMaxPendingBytes / 2) {
            stream->drain_timer.reset();
            return stream->exec->client().ResumeReading();
          }
          self->WaitForDrain(stream);
        });
  }

  void StartExecStream(std::shared_ptr<ExecStream> stream, const SandboxRecord& record,
                       protocol::ExecStart start, const std::string& exec_id) {
    if (record.state != SandboxState::kRunning) {
      return EndExecStream(*stream, Fail(ErrorCode::kFailedPrecondition,
                                         "sandbox " + record.id + " is not running (" +
                                             std::string(StateName(record.state)) + ")"));
    }
    AsyncExec::Callbacks callbacks;
    std::weak_ptr<ExecStream> weak = stream;
    callbacks.on_output = [self = shared_from_this(), weak](protocol::Stream which,
                                                            std::string_view data) {
      auto stream = weak.lock();
      if (!stream) return;
      stream->responder->Write(
          OutputEvent(which == protocol::Stream::kStdout ? "stdout" : "stderr", data));
      if (stream->responder->pending_bytes() >= kMaxPendingBytes && !stream->drain_timer) {
        stream->exec->client().PauseReading();
        stream->drain_timer = std::make_unique<asio::steady_timer>(self->io);
        self->WaitForDrain(stream);
      }
    };
    // Holds the stream until the exec ends; the exec holds itself until its connection does.
    callbacks.on_end = [self = shared_from_this(), stream,
                        exec_id](Result<protocol::ExecExit> result) {
      if (!exec_id.empty()) self->EndStdinSink(exec_id);
      stream->drain_timer.reset();
      EndExecStream(*stream, result);
      stream->exec.reset();
    };
    SandboxStore store(config.node.state_dir);
    stream->exec = AsyncExec::Start(io, store.ControlSocket(record.id), std::move(start),
                                    std::move(callbacks));
    if (!stream->exec) return;
    Track(stream->exec->client());
    if (!exec_id.empty() && stream->exec->client().connected()) {
      AddStdinSink(exec_id, record.id, stream->exec);
      stream->responder->Write(json{{"event", "started"}, {"exec_id", exec_id}}.dump() + "\n");
    }
    // The HTTP client went away (or the server stops): the exec dies with it, as it does
    // for `tartarus exec` on the control socket.
    stream->responder->OnClose([weak_self = weak_from_this(), weak] {
      auto self = weak_self.lock();
      if (!self) return;
      asio::post(self->io, [weak] {
        auto stream = weak.lock();
        if (stream && stream->exec) {
          stream->exec->Cancel(Error{ErrorCode::kCancelled, "the client went away"});
        }
      });
    });
  }

  void Exec(http::Request& req, std::shared_ptr<http::Responder> responder) {
    auto run_id = RunOf(req);
    if (!run_id) return responder->Send(http::ErrorResponse(run_id.error(), req.request_id));
    json doc = json::parse(req.body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return responder->Send(
          http::JsonError(400, "invalid_argument", "expected a JSON exec request", req.request_id));
    }
    std::vector<std::string> command, env;
    std::string workdir, user;
    std::optional<std::chrono::milliseconds> timeout;
    bool with_stdin = false;
    try {
      with_stdin = doc.value("stdin", false);
      command = doc.value("command", std::vector<std::string>{});
      env = doc.value("env", std::vector<std::string>{});
      workdir = doc.value("workdir", "");
      user = doc.value("user", "");
      if (doc.contains("timeout") && doc["timeout"].is_number_integer()) {
        timeout = std::chrono::milliseconds(doc["timeout"].get<int64_t>());
      }
    } catch (const json::exception& e) {
      return responder->Send(http::JsonError(400, "invalid_argument", e.what(), req.request_id));
    }
    if (command.empty()) {
      return responder->Send(
          http::JsonError(400, "invalid_argument", "command: required", req.request_id));
    }
    SandboxStore store(config.node.state_dir);
    auto record = store.Load(*run_id);
    if (!record) return responder->Send(http::ErrorResponse(record.error(), req.request_id));
    protocol::ExecStart start =
        MakeExecStart(*record, command, env, workdir, user, timeout, with_stdin);
    // With stdin, the exec's first event names it, so that the client can address its
    // stdin; the sink exists before that event goes out.
    const std::string exec_id = with_stdin ? NewExecId() : "";
    auto stream = std::make_shared<ExecStream>();
    stream->responder = responder;
    responder->StartStream(200, "application/x-ndjson");
    asio::post(io, [self = shared_from_this(), stream, record = std::move(*record),
                    start = std::move(start), exec_id]() mutable {
      self->StartExecStream(stream, record, std::move(start), exec_id);
    });
  }

  // ---- stdin chunks ----
  //
  // Every command whose stdin the API feeds has a sink: an AsyncExec (its exec's own
  // connection) or an AsyncMainStdin (a connection opened by the first chunk). A chunk is
  // answered once the sandbox took all of it: for an exec, once its last frame fits in the
  // agent's stdin window; for the main command, once the supervisor answered its last frame.
  struct StdinSink {
    std::string run_id;
    std::shared_ptr<AsyncStdinTarget> target;  // null once closed or ended
    uint64_t accepted = 0;                     // bytes taken so far: the next chunk's offset
    bool busy = false;                         // a chunk is being written
    bool eof = false;                          // the client closed stdin
    bool ended = false;                        // the command ended: nothing more is taken
    bool forget_scheduled = false;
  };
  // By exec id, or by "main:" + run id. Touched only on the io thread.
  std::map<std::string, std::shared_ptr<StdinSink>> stdin_sinks;

  void AddStdinSink(const std::string& key, const std::string& run_id,
                    std::shared_ptr<AsyncStdinTarget> target) {
    auto sink = std::make_shared<StdinSink>();
    sink->run_id = run_id;
    sink->target = std::move(target);
    stdin_sinks[key] = sink;
  }

  // On the io thread once the command (or its connection) ended: later chunks get 409, and
  // the sink is forgotten after a while.
  void EndStdinSink(const std::string& key) {
    auto it = stdin_sinks.find(key);
    if (it == stdin_sinks.end()) return;
    auto sink = it->second;
    sink->ended = true;
    sink->target.reset();
    if (sink->forget_scheduled) return;
    sink->forget_scheduled = true;
    auto timer = std::make_shared<asio::steady_timer>(io, kEndedStdinMemory);
    std::weak_ptr<Impl> weak = shared_from_this();
    timer->async_wait([weak, key, sink, timer](boost::system::error_code) {
      auto self = weak.lock();
      if (!self) return;
      auto now = self->stdin_sinks.find(key);
      if (now != self->stdin_sinks.end() && now->second == sink) self->stdin_sinks.erase(now);
    });
  }

  static json StdinAnswer(const StdinSink& sink) {
    return {{"offset", sink.accepted}, {"eof", sink.eof}};
  }

  // One chunk, on the io thread: exactly-once by offset, in order, one at a time.
  void ApplyStdin(std::shared_ptr<StdinSink> sink, uint64_t offset, bool eof, std::string data,
                  std::shared_ptr<http::Responder> responder, std::string request_id,
                  std::string what) {
    auto conflict = [&](const char* code, const std::string& message) {
      responder->Send(http::JsonError(409, code, message, request_id));
    };
    if (sink->ended) {
      return conflict("stdin_closed", what + " has ended: its stdin is closed");
    }
    if (sink->busy) {
      return conflict("stdin_busy", "a chunk for " + what + " is still being written: retry");
    }
    if (offset > sink->accepted) {
      return conflict("offset_mismatch", fmt::format("{} has taken {} bytes of stdin: send from "
                                                     "offset {}, not {}",
                                                     what, sink->accepted, sink->accepted, offset));
    }
    // A retried chunk: skip what was applied before.
    uint64_t seen = sink->accepted - offset;
    data.erase(0, std::min<uint64_t>(seen, data.size()));
    if (sink->eof) {
      if (!data.empty()) return conflict("stdin_closed", "stdin of " + what + " was closed");
      return responder->Send(JsonResponse(200, StdinAnswer(*sink)));
    }
    auto finish = [sink, eof, responder] {
      if (!eof || !sink->target) return responder->Send(JsonResponse(200, StdinAnswer(*sink)));
      // End of file: answered once the close went out (for the main command: once the
      // supervisor closed the command's stdin), whether or not the command still runs.
      sink->eof = true;
      sink->busy = true;
      auto target = std::move(sink->target);
      target->CloseStdin([sink, responder](Status) {
        sink->busy = false;
        responder->Send(JsonResponse(200, StdinAnswer(*sink)));
      });
    };
    if (data.empty()) return finish();
    sink->busy = true;
    sink->target->WriteStdin(std::move(data), [sink, responder, request_id, what, finish](
                                                  uint64_t taken, Status status) {
      sink->busy = false;
      sink->accepted += taken;
      if (!status) {
        // The command ended (or its connection did) while we waited.
        sink->ended = true;
        sink->target.reset();
        return responder->Send(http::JsonError(
            409, "stdin_closed", what + " has ended: its stdin is closed", request_id));
      }
      finish();
    });
  }

  // POST /v1/node/sandboxes/{id}/stdin and /v1/node/sandboxes/{id}/execs/{exec}/stdin.
  void Stdin(http::Request& req, std::shared_ptr<http::Responder> responder) {
    auto run_id = RunOf(req);
    if (!run_id) return responder->Send(http::ErrorResponse(run_id.error(), req.request_id));
    auto offset = QueryOffset(req.query);
    if (!offset) return responder->Send(http::ErrorResponse(offset.error(), req.request_id));
    bool eof = QueryTrue(req.query, "eof");  // with data: close after it
    auto exec_it = req.params.find("exec");
    if (exec_it != req.params.end()) {
      std::string exec_id = exec_it->second;
      asio::post(io,
                 [self = shared_from_this(), exec_id, run_id = *run_id, offset = *offset, eof,
                  body = std::move(req.body), responder, request_id = req.request_id]() mutable {
                   auto it = self->stdin_sinks.find(exec_id);
                   if (it == self->stdin_sinks.end() || it->second->run_id != run_id) {
                     return responder->Send(http::JsonError(
                         404, "not_found", "no exec '" + exec_id + "' with stdin in this sandbox",
                         request_id));
                   }
                   self->ApplyStdin(it->second, offset, eof, std::move(body), responder, request_id,
                                    "exec " + exec_id);
                 });
      return;
    }
    // The main command: its connection opens with the first chunk.
    SandboxStore store(config.node.state_dir);
    auto record = store.Load(*run_id);
    if (!record) return responder->Send(http::ErrorResponse(record.error(), req.request_id));
    if (!record->stdin_via_control) {
      return responder->Send(http::JsonError(
          409, "stdin_closed",
          "the sandbox was created without stdin: its command reads /dev/null (create it with "
          "\"stdin\": true)",
          req.request_id));
    }
    bool final = IsFinal(record->state);
    asio::post(io, [self = shared_from_this(), run_id = *run_id, offset = *offset, eof, final,
                    socket = store.ControlSocket(*run_id), body = std::move(req.body), responder,
                    request_id = req.request_id]() mutable {
      const std::string key = "main:" + run_id;
      auto it = self->stdin_sinks.find(key);
      if (it == self->stdin_sinks.end()) {
        if (final) {
          return responder->Send(
              http::JsonError(409, "stdin_closed",
                              "the sandbox's command has ended: its stdin is closed", request_id));
        }
        std::weak_ptr<Impl> weak = self;
        auto feeder =
            AsyncMainStdin::Start(self->io, socket, [weak, run_id, key](const Error& why) {
              auto self = weak.lock();
              if (!self) return;
              if (why.code != ErrorCode::kCancelled) {
                telemetry::LogJson("info", "main command stdin ended",
                                   {{"run", run_id}, {"why", why.message}});
              }
              // Not from inside the connection's own callback chain: the sink may be mid-chunk.
              asio::post(self->io, [self, key] { self->EndStdinSink(key); });
            });
        self->Track(feeder->client());
        self->AddStdinSink(key, run_id, feeder);
        it = self->stdin_sinks.find(key);
      }
      self->ApplyStdin(it->second, offset, eof, std::move(body), responder, request_id,
                       "the sandbox's command");
    });
  }

  // Files: copied through a private temporary directory with LocalNode::Copy.
  Result<http::Response> Files(http::Request& req) {
    std::string run_id = TRY(RunOf(req));
    auto path = req.query.find("path");
    if (path == req.query.end() || path->second.empty() || path->second[0] != '/') {
      return Fail(ErrorCode::kInvalidArgument, "path: required, an absolute path");
    }
    std::string tmpl = config.node.state_dir + "/tmp/files-XXXXXX";
    std::filesystem::create_directories(config.node.state_dir + "/tmp");
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) return FailErrno("mkdtemp");
    std::string dir = buf.data();
    struct Cleanup {
      std::string dir;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
      }
    } cleanup{dir};
    std::string local_file = dir + "/file";
    LocalNode local(config.node);
    if (req.method == "PUT") {
      mode_t mode = 0644;
      if (auto m = req.query.find("mode"); m != req.query.end()) {
        char* end = nullptr;
        long v = strtol(m->second.c_str(), &end, 8);
        if (m->second.empty() || *end != '\0' || v < 0 || v > 07777) {
          return Fail(ErrorCode::kInvalidArgument, "mode: expected an octal mode such as 0644");
        }
        mode = static_cast<mode_t>(v);
      }
      UniqueFd fd(open(local_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
      if (!fd) return FailErrno("creating " + local_file);
      size_t off = 0;
      while (off < req.body.size()) {
        ssize_t n = write(fd.Get(), req.body.data() + off, req.body.size() - off);
        if (n < 0) return FailErrno("writing " + local_file);
        off += n;
      }
      fchmod(fd.Get(), mode);
      fd.Reset();
      TRY(local.Copy(local_file, run_id + ":" + path->second, nullptr));
      return http::Response{.status = 204, .content_type = "", .body = ""};
    }
    TRY(local.Copy(run_id + ":" + path->second, local_file, nullptr));
    std::error_code ec;
    if (std::filesystem::is_directory(local_file, ec)) {
      return Fail(ErrorCode::kInvalidArgument,
                  path->second + " is a directory: copy files one by one");
    }
    auto size = std::filesystem::file_size(local_file, ec);
    if (ec) return Fail(ErrorCode::kIo, "reading the copied file: " + ec.message());
    if (size > kMaxFileBytes) {
      return Fail(ErrorCode::kResourceExhausted,
                  fmt::format("{} is larger than 64 MiB", path->second));
    }
    std::ifstream in(local_file, std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return http::Response{
        .status = 200, .content_type = "application/octet-stream", .body = std::move(content)};
  }

  void RegisterRoutes() {
    http::RouteOptions blocking;
    blocking.blocking = true;
    server->Route("GET", "/healthz", [](http::Request&, std::shared_ptr<http::Responder> r) {
      r->Send(JsonResponse(200, {{"status", "ok"}}));
    });
    server->Route(
        "GET", "/v1/node/sandboxes/{id}/logs",
        [this](http::Request& req, std::shared_ptr<http::Responder> r) { Logs(req, r); }, blocking);
    server->Route(
        "POST", "/v1/node/sandboxes/{id}/exec",
        [this](http::Request& req, std::shared_ptr<http::Responder> r) { Exec(req, r); }, blocking);
    http::RouteOptions stdin_chunk = blocking;
    stdin_chunk.max_body_bytes = kMaxStdinChunkBytes;
    auto stdin_route = [this](http::Request& req, std::shared_ptr<http::Responder> r) {
      Stdin(req, r);
    };
    server->Route("POST", "/v1/node/sandboxes/{id}/stdin", stdin_route, stdin_chunk);
    server->Route("POST", "/v1/node/sandboxes/{id}/execs/{exec}/stdin", stdin_route, stdin_chunk);
    auto files = [this](http::Request& req, std::shared_ptr<http::Responder> r) {
      auto res = Files(req);
      r->Send(res ? std::move(*res) : http::ErrorResponse(res.error(), req.request_id));
    };
    server->Route("GET", "/v1/node/sandboxes/{id}/files", files, blocking);
    http::RouteOptions upload = blocking;
    upload.max_body_bytes = kMaxFileBytes;
    server->Route("PUT", "/v1/node/sandboxes/{id}/files", files, upload);
    server->Route(
        "DELETE", "/v1/node/sandboxes/{id}",
        [this](http::Request& req, std::shared_ptr<http::Responder> r) {
          auto run_id = RunOf(req);
          if (run_id) {
            LocalNode local(config.node);
            (void)local.Remove(*run_id, /*force=*/true);
          }
          r->Send(http::Response{.status = 204, .content_type = "", .body = ""});
        },
        blocking);
  }
};

NodeAgent::NodeAgent(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

NodeAgent::~NodeAgent() { Stop(); }

Result<std::unique_ptr<NodeAgent>> NodeAgent::Start(NodeAgentConfig config) {
  if (config.olympus.empty()) return Fail(ErrorCode::kInvalidArgument, "--olympus: required");
  if (auto link = OlympusLink::Create(config.olympus, {}, std::make_shared<std::atomic<size_t>>(0));
      !link) {
    return Fail(link.error());
  }
  if (config.listen.empty()) return Fail(ErrorCode::kInvalidArgument, "--listen: required");
  if (config.node_id.empty()) config.node_id = HostName();
  if (config.node.lease_file.empty())
    config.node.lease_file = config.node.state_dir + "/node.lease";
  if (config.millicpus <= 0) {
    config.millicpus =
        static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency())) * 1000;
  }
  if (config.memory_bytes <= 0) config.memory_bytes = HostMemoryBytes() / 10 * 9;
  if (config.runtimes.empty()) {
    runtime::RuntimeConfig rc{config.node.state_dir, config.node.gvisor_platform};
    for (const auto& name : runtime::BackendNames()) {
      auto backend = runtime::MakeBackend(name, rc);
      if (backend && (*backend)->CheckAvailable()) config.runtimes.push_back(name);
    }
  }
  // A stdin chunk can race its command's end: the write then fails with EPIPE (a 409)
  // instead of the signal ending the agent.
  signal(SIGPIPE, SIG_IGN);
  auto impl = std::make_shared<Impl>();
  impl->config = config;
  http::ServerOptions options;
  options.io_threads = 1;
  options.worker_threads = 8;
  impl->server = std::make_unique<http::Server>(options);
  impl->RegisterRoutes();
  const std::string& listen = config.listen;
  if (listen.rfind("unix://", 0) == 0 || listen[0] == '/') {
    std::string path = listen.rfind("unix://", 0) == 0 ? listen.substr(7) : listen;
    TRY(impl->server->ListenUnix(path));
    if (impl->config.advertise.empty()) impl->config.advertise = "unix://" + path;
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return Fail(ErrorCode::kInvalidArgument, "--listen: expected HOST:PORT or unix:///path");
    }
    int port = atoi(listen.c_str() + colon + 1);
    if (port < 0 || port > 65535) return Fail(ErrorCode::kInvalidArgument, "--listen: bad port");
    std::string host = listen.substr(0, colon);
    TRY(impl->server->ListenTcp(host, static_cast<uint16_t>(port)));
    if (impl->config.advertise.empty()) {
      impl->config.advertise = fmt::format("http://{}:{}", host, impl->server->tcp_port());
    }
  }
  impl->server->Start();
  impl->work.emplace(impl->io.get_executor());
  impl->io_thread = std::thread([raw = impl.get()] { raw->io.run(); });
  impl->loop_thread = std::thread([raw = impl.get()] { raw->Loop(); });
  impl->report_thread = std::thread([raw = impl.get()] { raw->ReportLoop(); });
  return std::unique_ptr<NodeAgent>(new NodeAgent(std::move(impl)));
}

void NodeAgent::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  if (impl_->loop_thread.joinable()) impl_->loop_thread.join();
  if (impl_->report_thread.joinable()) impl_->report_thread.join();
  impl_->server->Stop();
  // Every exec and stdin stream ends (their execs are killed) while the io thread still
  // runs them; a wedged io thread must not hang the stop.
  auto closed = std::make_shared<std::promise<void>>();
  auto closed_future = closed->get_future();
  asio::post(impl_->io, [raw = impl_.get(), closed] {
    raw->CloseStreams();
    closed->set_value();
  });
  (void)closed_future.wait_for(std::chrono::seconds(10));
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->io_thread.joinable()) impl_->io_thread.join();
}

const std::string& NodeAgent::node_id() const { return impl_->config.node_id; }

std::string NodeAgent::endpoint() const { return impl_->config.advertise; }

}  // namespace tartarus::node

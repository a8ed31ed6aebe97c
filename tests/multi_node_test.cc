// Olympus (API replicas) + Hades (node registry) + Hecatoncheir (node agents), multi-node test:
// PostgreSQL, two `tartarus olympus` replicas and three `tartarus agent` nodes as separate
// processes on this host, under concurrent load, kill -9 of an agent and of a replica, and a
// restart of everything. Each test builds its own cluster in its own PostgreSQL schema.
#include <dirent.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "cluster_util.h"
#include "common/subprocess.h"
#include "http/url.h"
#include "store/database.h"
#include "test_util.h"

namespace tartarus::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr const char* kPgBin = "/usr/lib/postgresql/15/bin";
constexpr int kReplicas = 2;
constexpr int kAgents = 3;

const Clock::time_point kProcessStart = Clock::now();

// Progress lines, so a slow CI run can be diagnosed from its output.
void Say(const std::string& line) {
  double t = std::chrono::duration<double>(Clock::now() - kProcessStart).count();
  std::fprintf(stderr, "[multi-node %6.1fs] %s\n", t, line.c_str());
  std::fflush(stderr);
}

std::string RandomHex(int digits) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  std::string out;
  for (int i = 0; i < digits; ++i) out += "0123456789abcdef"[rng() & 15];
  return out;
}

bool IsFinal(const std::string& state) {
  return state == "exited" || state == "killed" || state == "failed" || state == "lost";
}

// ---- PostgreSQL: TARTARUS_TEST_PG_URL, or one throwaway server for this process ----

class Postgres {
 public:
  static Postgres& Get() {
    static Postgres instance;
    return instance;
  }
  // Starts a server on first use unless TARTARUS_TEST_PG_URL names one.
  void Ensure() {
    std::call_once(once_, [this] { Start(); });
  }
  const std::string& url() const { return url_; }
  const std::string& skip_reason() const { return skip_reason_; }
  const std::string& error() const { return error_; }
  void Stop() {
    if (dir_.empty()) return;
    auto stopped = RunCommand({"bash", Script(), "stop", dir_}, seconds(60));
    if (!stopped || !stopped->status.Success()) {
      Say("could not stop PostgreSQL in " + dir_ + ": " +
          (stopped ? stopped->err : stopped.error().message));
    } else {
      Say("stopped PostgreSQL in " + dir_);
    }
    dir_.clear();
  }

 private:
  static std::string Script() { return TARTARUS_SOURCE_DIR "/scripts/pg-test-server.sh"; }

  void Start() {
    if (const char* env = getenv("TARTARUS_TEST_PG_URL"); env && *env) {
      url_ = env;
      return;
    }
    if (access((std::string(kPgBin) + "/initdb").c_str(), X_OK) != 0 ||
        access((std::string(kPgBin) + "/postgres").c_str(), X_OK) != 0) {
      skip_reason_ = std::string("skipped: TARTARUS_TEST_PG_URL is not set and there are no ") +
                     "PostgreSQL 15 server binaries in " + kPgBin;
      return;
    }
    char tmpl[] = "/tmp/tartarus-mn-pg-XXXXXX";
    if (!mkdtemp(tmpl)) {
      error_ = "mkdtemp for PostgreSQL failed";
      return;
    }
    dir_ = tmpl;
    auto started = RunCommand({"bash", Script(), "start", dir_}, seconds(120));
    if (!started || !started->status.Success()) {
      error_ = "scripts/pg-test-server.sh start failed: " +
               (started ? started->err : started.error().message);
      Stop();
      return;
    }
    std::istringstream lines(started->out);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("postgres", 0) == 0) url_ = line;
    }
    if (url_.empty()) error_ = "scripts/pg-test-server.sh printed no URL: " + started->out;
    Say("started PostgreSQL in " + dir_);
  }

  std::once_flag once_;
  std::string url_, skip_reason_, error_, dir_;
};

// Stops the server this process started, after the last test.
class PostgresEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { Postgres::Get().Stop(); }
};
[[maybe_unused]] ::testing::Environment* const kPostgresEnvironment =
    ::testing::AddGlobalTestEnvironment(new PostgresEnvironment);

// A fresh schema for one test's cluster (the store's tables live in it), dropped at the end.
class TestSchema {
 public:
  static Result<std::unique_ptr<TestSchema>> Create(const std::string& base_url) {
    auto schema = std::unique_ptr<TestSchema>(new TestSchema());
    schema->admin_ = TRY(store::OpenDatabase(base_url));
    schema->name_ = "t_mn_" + RandomHex(12);
    TRY(schema->admin_->Exec("CREATE SCHEMA " + schema->name_));
    schema->url_ = base_url + (base_url.find('?') == std::string::npos ? "?" : "&") +
                   "options=-csearch_path%3D" + schema->name_;
    return schema;
  }
  ~TestSchema() {
    if (admin_) (void)admin_->Exec("DROP SCHEMA " + name_ + " CASCADE");
  }
  const std::string& url() const { return url_; }

 private:
  TestSchema() = default;
  std::shared_ptr<store::Database> admin_;
  std::string name_, url_;
};

// ---- what the nodes left on the host ----

// `tartarus __supervise` processes working in `state_dir`: pid -> the run id they supervise.
std::map<int, std::string> Supervisors(const std::string& state_dir) {
  std::map<int, std::string> found;
  DIR* proc = opendir("/proc");
  while (dirent* e = proc ? readdir(proc) : nullptr) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/cmdline");
    std::vector<std::string> args;
    for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
    bool ours = false;
    std::string run_id;
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--state-dir" && args[i + 1] == state_dir) ours = true;
      if (args[i] == "__supervise") run_id = args[i + 1];
    }
    if (ours && !run_id.empty()) found[atoi(e->d_name)] = run_id;
  }
  if (proc) closedir(proc);
  return found;
}

// The runs a node keeps locally (<state>/sandboxes/<run id>/record.json): run id -> state.
std::map<std::string, std::string> LocalRuns(const std::string& state_dir) {
  std::map<std::string, std::string> runs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(state_dir + "/sandboxes", ec)) {
    std::ifstream in(entry.path() / "record.json");
    if (!in) continue;
    json record = json::parse(in, nullptr, false);
    if (record.is_discarded() || !record.is_object()) continue;
    runs[record.value("id", entry.path().filename().string())] = record.value("state", "?");
  }
  return runs;
}

// ---- the cluster ----

struct ClusterOptions {
  std::string node_lease;                   // "" = the default (10 s)
  std::vector<int> agent_replica{0, 1, 0};  // which replica each agent talks to
  // Agents that also know the other replica (`--olympus B,A`), to fail over to it.
  std::vector<bool> agent_failover{false, false, false};
};

class Cluster {
 public:
  Cluster(std::string store_url, ClusterOptions options)
      : store_url_(std::move(store_url)), options_(std::move(options)) {
    for (int i = 0; i < kReplicas; ++i) {
      replica_state_.push_back(std::make_unique<ScratchState>());
      replica_port_.push_back(FreePort());
    }
    for (int i = 0; i < kAgents; ++i) {
      agent_state_.push_back(std::make_unique<ScratchState>());
      agent_port_.push_back(FreePort());
    }
  }

  ~Cluster() {
    for (auto& agent : agents_) {
      if (agent && agent->running()) (void)agent->Stop();
    }
    for (auto& replica : replicas_) {
      if (replica && replica->running()) (void)replica->Stop();
    }
    // A safety net after a failed test (the test itself checks this): no run may outlive it.
    for (int i = 0; i < kAgents; ++i) {
      for (const auto& [run_id, state] : LocalRuns(AgentDir(i))) {
        if (IsFinal(state)) continue;
        Say("cleanup: killing leftover run " + run_id + " of " + NodeId(i));
        (void)RunCommand({TARTARUS_BIN, "--state-dir", AgentDir(i), "kill", run_id}, seconds(60));
      }
    }
  }

  // Both replicas, the admin and client tokens, a roomy default policy, then the agents.
  Status Start() {
    for (int i = 0; i < kReplicas; ++i) {
      std::vector<std::string> args = {"olympus", "--store", store_url_, "--listen",
                                       "127.0.0.1:" + std::to_string(replica_port_[i])};
      // Only replica A gets the trusted socket: the one way to mint the first admin token.
      if (i == 0) args.insert(args.end(), {"--unix-socket", AdminSocket()});
      if (!options_.node_lease.empty()) {
        std::string config = ReplicaDir(i) + "/olympus.yaml";
        std::ofstream(config) << "node_lease: " << options_.node_lease << "\n";
        args.insert(args.end(), {"-c", config});
      }
      replicas_.push_back(
          std::make_unique<Daemon>(ReplicaDir(i), "olympus-" + std::string(1, 'a' + i), args));
    }
    for (int i = 0; i < kReplicas; ++i) TRY(StartReplica(i));

    Api local("unix://" + AdminSocket());
    auto admin = local.Post("/v1/tokens", {{"tenant", "admin"}, {"name", "multi-node-admin"}});
    if (admin.status != 201) return Fail(ErrorCode::kInternal, "admin token: " + admin.body);
    admin_token_ = admin.json.value("secret", "");
    auto client = local.Post("/v1/tokens", {{"tenant", "loadtest"}, {"name", "multi-node"}});
    if (client.status != 201) return Fail(ErrorCode::kInternal, "client token: " + client.body);
    client_token_ = client.json.value("secret", "");
    // The built-in default allows 100 active sandboxes per tenant; this test runs 200.
    auto policy =
        Api(Tcp(0), admin_token_)
            .Call("PUT", "/v1/policies/default",
                  "name: default\nlimits:\n  max_concurrent: 1000\n  max_rate: 100000/m\n",
                  {{"Content-Type", "application/yaml"}});
    if (policy.status != 200) return Fail(ErrorCode::kInternal, "default policy: " + policy.body);

    for (int i = 0; i < kAgents; ++i) {
      agents_.push_back(std::make_unique<Daemon>(
          AgentDir(i), NodeId(i),
          std::vector<std::string>{"agent", "--olympus", AgentOlympus(i), "--token", admin_token_,
                                   "--node-id", NodeId(i), "--agent-listen",
                                   "127.0.0.1:" + std::to_string(agent_port_[i]), "--cpus", "2",
                                   "--memory", "4G", "--runtimes", "container"}));
    }
    for (int i = 0; i < kAgents; ++i) TRY(StartAgent(i));
    for (int i = 0; i < kAgents; ++i) TRY(WaitNodeState(i, "ready", seconds(30)));
    return Ok();
  }

  Status StartReplica(int i) {
    TRY(replicas_[i]->Start());
    return replicas_[i]->WaitHealthy(Tcp(i));
  }
  Status StartAgent(int i) {
    TRY(agents_[i]->Start());
    return agents_[i]->WaitHealthy("http://127.0.0.1:" + std::to_string(agent_port_[i]));
  }

  // Polls GET /v1/nodes/{id} on whichever replica answers.
  Status WaitNodeState(int agent, const std::string& state, seconds timeout) {
    auto deadline = Clock::now() + timeout;
    std::string last;
    while (Clock::now() < deadline) {
      for (int r = 0; r < kReplicas; ++r) {
        auto res = Admin(r).Call("GET", "/v1/nodes/" + NodeId(agent));
        if (res.status == 0) continue;
        last = res.body;
        if (res.status == 200 && res.json.value("state", "") == state) return Ok();
        break;
      }
      std::this_thread::sleep_for(milliseconds(200));
    }
    return Fail(ErrorCode::kTimeout,
                NodeId(agent) + " did not become " + state + " (last answer: " + last + ")");
  }

  // SIGTERM to every daemon, agents first; each must exit cleanly.
  Status StopAll() {
    std::string failures;
    auto stop = [&](Daemon& d, const std::string& name) {
      if (!d.running()) return;
      auto status = d.Stop();
      if (!status || !status->Success()) {
        failures += name + " did not stop cleanly: " +
                    (status ? status->Describe() : status.error().message) + "\n" + d.Log() + "\n";
      }
    };
    for (int i = 0; i < kAgents; ++i) stop(*agents_[i], NodeId(i));
    for (int i = 0; i < kReplicas; ++i) stop(*replicas_[i], "olympus replica " + std::to_string(i));
    if (!failures.empty()) return Fail(ErrorCode::kInternal, failures);
    return Ok();
  }

  std::string Tcp(int replica) const {
    return "http://127.0.0.1:" + std::to_string(replica_port_[replica]);
  }
  // The --olympus value of agent i: its replica, then the other one when it fails over.
  std::string AgentOlympus(int i) const {
    int own = options_.agent_replica[i];
    if (!options_.agent_failover[i]) return Tcp(own);
    return Tcp(own) + "," + Tcp(1 - own);
  }
  Api Admin(int replica) const { return Api(Tcp(replica), admin_token_); }
  Api Client(int replica) const { return Api(Tcp(replica), client_token_); }
  // The first replica that is up (the test thread knows which ones it killed).
  int LiveReplica() const {
    for (int i = 0; i < kReplicas; ++i) {
      if (replicas_[i]->running()) return i;
    }
    return 0;
  }
  static std::string NodeId(int agent) { return "node-" + std::to_string(agent + 1); }
  static int AgentIndex(const std::string& node_id) {
    for (int i = 0; i < kAgents; ++i) {
      if (NodeId(i) == node_id) return i;
    }
    return -1;
  }
  const std::string& AgentDir(int i) const { return agent_state_[i]->dir(); }
  const std::string& ReplicaDir(int i) const { return replica_state_[i]->dir(); }
  std::string AdminSocket() const { return ReplicaDir(0) + "/olympus.sock"; }
  Daemon& agent(int i) { return *agents_[i]; }
  Daemon& replica(int i) { return *replicas_[i]; }
  const std::string& admin_token() const { return admin_token_; }
  const std::string& client_token() const { return client_token_; }
  std::string Logs() const {
    std::string out;
    for (int i = 0; i < kReplicas; ++i)
      out += "--- olympus " + std::to_string(i) + "\n" + replicas_[i]->Log();
    for (int i = 0; i < kAgents; ++i) out += "--- " + NodeId(i) + "\n" + agents_[i]->Log();
    return out;
  }

 private:
  std::string store_url_;
  ClusterOptions options_;
  std::vector<std::unique_ptr<ScratchState>> replica_state_, agent_state_;
  std::vector<int> replica_port_, agent_port_;
  std::vector<std::unique_ptr<Daemon>> replicas_, agents_;
  std::string admin_token_, client_token_;
};

// ---- clients ----

// A light sandbox that prints its marker once.
json SandboxBody(const std::string& tag, const std::string& marker, const std::string& script,
                 const std::string& cpus = "0.1") {
  return {{"command", {"sh", "-c", "echo $0; " + script, marker}},
          {"cpus", cpus},
          {"memory", "64M"},
          {"timeout", "120s"},
          {"labels", {{"run", tag}}}};
}

struct Submission {
  std::string id;
  int tries = 0;          // requests sent, over both replicas
  bool replayed = false;  // answered 200: the Idempotency-Key found an earlier create
  std::string error;
};

// Creates a sandbox through replica `first`; on a connection error, 5xx or 429 it tries again
// on the other replica with the same Idempotency-Key, as a client behind a load balancer would.
Submission Submit(const Cluster& cluster, int first, const json& body, const std::string& key,
                  seconds budget = seconds(60)) {
  Submission out;
  auto deadline = Clock::now() + budget;
  int replica = first;
  while (Clock::now() < deadline) {
    ++out.tries;
    auto res = cluster.Client(replica).Post("/v1/sandboxes", body, {{"Idempotency-Key", key}});
    if (res.status == 200 || res.status == 201) {
      out.id = res.json.value("id", "");
      out.replayed = res.status == 200;
      out.error.clear();
      return out;
    }
    out.error = "HTTP " + std::to_string(res.status) + ": " + res.body;
    if (res.status != 0 && res.status < 500 && res.status != 429) return out;
    replica = (replica + 1) % kReplicas;
    std::this_thread::sleep_for(milliseconds(50 * std::min(out.tries, 10)));
  }
  return out;
}

// Every sandbox labelled run=<tag>, through whichever replica answers (paged).
std::vector<json> ListRun(const Cluster& cluster, const std::string& tag, int first = 0) {
  for (int k = 0; k < kReplicas; ++k) {
    int replica = (first + k) % kReplicas;
    std::vector<json> items;
    std::string token;
    bool ok = true;
    do {
      std::string target = "/v1/sandboxes?limit=1000&label=" + http::UrlEncode("run=" + tag);
      if (!token.empty()) target += "&page_token=" + http::UrlEncode(token);
      auto res = cluster.Admin(replica).Call("GET", target);
      if (res.status != 200) {
        ok = false;
        break;
      }
      for (const auto& item : res.json["items"]) items.push_back(item);
      token = res.json.value("next_page_token", "");
    } while (!token.empty());
    if (ok) return items;
  }
  return {};
}

// Waits until `count` sandboxes of the run exist and all have ended; prints progress.
std::vector<json> WaitRunFinished(const Cluster& cluster, const std::string& tag, size_t count,
                                  seconds timeout) {
  auto deadline = Clock::now() + timeout;
  auto next_report = Clock::now();
  std::vector<json> items;
  while (Clock::now() < deadline) {
    items = ListRun(cluster, tag, cluster.LiveReplica());
    std::map<std::string, int> by_state;
    size_t final = 0;
    for (const auto& s : items) {
      std::string state = s.value("state", "?");
      by_state[state]++;
      if (IsFinal(state)) ++final;
    }
    if (Clock::now() >= next_report || (items.size() == count && final == count)) {
      std::string states;
      for (const auto& [state, n] : by_state) states += " " + state + "=" + std::to_string(n);
      Say("run " + tag + ": " + std::to_string(final) + "/" + std::to_string(count) +
          " finished (" + std::to_string(items.size()) + " listed:" + states + ")");
      next_report = Clock::now() + seconds(5);
    }
    if (items.size() == count && final == count) return items;
    std::this_thread::sleep_for(milliseconds(500));
  }
  return items;
}

// Samples GET /v1/nodes while the test runs: a node's reservations must never exceed what
// it offers.
class CapacityWatch {
 public:
  explicit CapacityWatch(const Cluster& cluster) : cluster_(cluster) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~CapacityWatch() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int samples() const { return samples_; }
  std::vector<std::string> violations() {
    std::lock_guard lock(mu_);
    return violations_;
  }
  std::map<std::string, int64_t> peak_millicpus() {
    std::lock_guard lock(mu_);
    return peak_millicpus_;
  }

 private:
  void Loop() {
    int replica = 0;
    while (!stop_) {
      auto res = cluster_.Admin(replica).Call("GET", "/v1/nodes");
      if (res.status != 200) {
        replica = (replica + 1) % kReplicas;  // that one may have been killed
      } else {
        ++samples_;
        std::lock_guard lock(mu_);
        for (const auto& n : res.json["items"]) {
          std::string id = n.value("id", "");
          int64_t cpu = n.value("reserved_millicpus", int64_t{0});
          int64_t mem = n.value("reserved_memory_bytes", int64_t{0});
          peak_millicpus_[id] = std::max(peak_millicpus_[id], cpu);
          if (cpu > n.value("millicpus", int64_t{0}) || mem > n.value("memory_bytes", int64_t{0})) {
            violations_.push_back(n.dump());
          }
        }
      }
      std::this_thread::sleep_for(milliseconds(250));
    }
  }

  const Cluster& cluster_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> samples_{0};
  std::mutex mu_;
  std::vector<std::string> violations_;
  std::map<std::string, int64_t> peak_millicpus_;
};

// The stdout of a sandbox through the API (Olympus forwards it from the node that ran it).
std::string StdoutOf(const Cluster& cluster, const std::string& id, json* end) {
  Api api = cluster.Admin(cluster.LiveReplica());
  int status = 0;
  auto events = api.Events("GET", "/v1/sandboxes/" + id + "/logs", "", &status);
  std::string out;
  for (const auto& e : events) {
    if (e.value("event", "") == "stdout") out += e.value("data", "");
  }
  if (end) *end = events.empty() ? json() : events.back();
  if (status != 200) out += "[logs: HTTP " + std::to_string(status) + "]";
  return out;
}

// The marker a sandbox was given: the last word of its command (see SandboxBody).
std::string MarkerOf(const json& sandbox) {
  json command = sandbox.value("command", json::array());
  if (!command.is_array() || command.size() != 4 || !command[3].is_string()) return "";
  return command[3].get<std::string>();
}

// The core check: every marker ran in exactly one sandbox; each sandbox exited 0; its final
// attempt ran on its node once (the node keeps one local run per attempt, never a later one)
// and its logs carry its marker once. `expected_attempt` (id -> attempt) defaults to 1.
void ExpectEachRanOnce(const Cluster& cluster, const std::vector<json>& items,
                       const std::set<std::string>& markers,
                       const std::map<std::string, int>& expected_attempt = {}) {
  std::map<std::string, int> marker_count;
  std::set<std::string> ids;
  for (const auto& s : items) {
    EXPECT_TRUE(ids.insert(s.value("id", "")).second) << "listed twice: " << s.dump();
    marker_count[MarkerOf(s)]++;
  }
  for (const auto& m : markers) EXPECT_EQ(marker_count[m], 1) << "marker " << m;
  EXPECT_EQ(items.size(), markers.size());

  std::array<std::map<std::string, std::string>, kAgents> local;
  for (int i = 0; i < kAgents; ++i) local[i] = LocalRuns(cluster.AgentDir(i));

  std::mutex mu;
  std::vector<std::string> failures;
  std::atomic<size_t> next{0};
  auto check = [&] {
    for (size_t k; (k = next++) < items.size();) {
      const json& s = items[k];
      std::string id = s.value("id", "");
      std::string marker = MarkerOf(s);
      std::vector<std::string> problems;
      if (s.value("state", "") != "exited" || s.value("exit_code", json()) != json(0)) {
        problems.push_back("ended " + s.value("state", "?") + " exit " +
                           s.value("exit_code", json()).dump() + " error '" + s.value("error", "") +
                           "'");
      }
      int attempt = s.value("attempt", 0);
      auto want = expected_attempt.find(id);
      int wanted = want == expected_attempt.end() ? 1 : want->second;
      if (wanted > 0 && attempt != wanted) {
        problems.push_back("attempt " + std::to_string(attempt) + ", want " +
                           std::to_string(wanted));
      }
      int node = Cluster::AgentIndex(s.value("node", ""));
      if (node < 0) {
        problems.push_back("ran on unknown node '" + s.value("node", "") + "'");
      } else {
        auto run = local[node].find(id + "-" + std::to_string(attempt));
        if (run == local[node].end()) {
          problems.push_back("no local run " + id + "-" + std::to_string(attempt) + " on " +
                             Cluster::NodeId(node));
        } else if (run->second != "exited") {
          problems.push_back("local run is " + run->second);
        }
        // Never more runs of it than attempts, and none of a later attempt anywhere.
        int runs = 0;
        for (int i = 0; i < kAgents; ++i) {
          for (const auto& [run_id, state] : local[i]) {
            if (run_id.rfind(id + "-", 0) != 0) continue;
            ++runs;
            if (atoi(run_id.c_str() + id.size() + 1) > attempt) {
              problems.push_back("a later run " + run_id + " on " + Cluster::NodeId(i));
            }
          }
        }
        if (runs > attempt)
          problems.push_back(std::to_string(runs) + " local runs for " + std::to_string(attempt) +
                             " attempts");
      }
      json end;
      std::string out = StdoutOf(cluster, id, &end);
      if (out != marker + "\n") problems.push_back("stdout '" + out + "', want the marker once");
      if (end.value("event", "") != "end" || end.value("exit_code", json()) != json(0)) {
        problems.push_back("log stream ended with " + end.dump());
      }
      if (!problems.empty()) {
        std::string text = id + " (" + marker + "):";
        for (const auto& p : problems) text += " " + p + ";";
        std::lock_guard lock(mu);
        failures.push_back(text);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back(check);
  for (auto& t : threads) t.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " sandboxes did not run exactly once, e.g.:\n"
                                << (failures.empty() ? "" : failures.front()) << "\n"
                                << (failures.size() > 1 ? failures[1] : "");
}

// What a batch of concurrent submissions gave.
struct Batch {
  std::string tag;
  std::vector<Submission> submissions;
  std::set<std::string> markers;
  int retried = 0, replayed = 0;
};
std::string Marker(const std::string& tag, int n) {
  return "mark-" + tag + "-" + std::to_string(n);
}

// Optional calls around submission number n, on the client thread submitting it.
struct SubmitHooks {
  std::function<void(int)> before, after;
};

// Submits `count` sandboxes from `threads` client threads, alternating replicas.
Batch SubmitConcurrently(const Cluster& cluster, const std::string& tag, int count, int threads,
                         const std::string& script, const SubmitHooks& hooks = {}) {
  Batch batch;
  batch.tag = tag;
  batch.submissions.resize(count);
  std::atomic<int> next{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&] {
      for (int n; (n = next++) < count;) {
        if (hooks.before) hooks.before(n);
        batch.submissions[n] =
            Submit(cluster, n % kReplicas, SandboxBody(tag, Marker(tag, n), script),
                   tag + "-" + std::to_string(n));
        if (hooks.after) hooks.after(n);
      }
    });
  }
  for (auto& c : clients) c.join();
  for (int n = 0; n < count; ++n) {
    batch.markers.insert(Marker(tag, n));
    const auto& s = batch.submissions[n];
    EXPECT_FALSE(s.id.empty()) << "sandbox " << n << " was not accepted: " << s.error;
    if (s.tries > 1) ++batch.retried;
    if (s.replayed) ++batch.replayed;
  }
  Say("submitted " + std::to_string(count) + " sandboxes of run " + tag + " (" +
      std::to_string(batch.retried) + " needed another try, " + std::to_string(batch.replayed) +
      " answered by an Idempotency-Key replay)");
  return batch;
}

// ---- the fixture ----

class MultiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason = SkipReason("container", "base");
    if (!reason.empty()) GTEST_SKIP() << reason;
    if (!fs::exists(StateDir() + "/templates/base/rootfs")) {
      GTEST_SKIP() << "skipped: the base template is not built (tartarus template build base)";
    }
    Postgres::Get().Ensure();
    if (!Postgres::Get().skip_reason().empty()) GTEST_SKIP() << Postgres::Get().skip_reason();
    ASSERT_TRUE(Postgres::Get().error().empty()) << Postgres::Get().error();
    auto schema = TestSchema::Create(Postgres::Get().url());
    ASSERT_TRUE(schema) << schema.error().message;
    schema_ = std::move(*schema);
    started_ = Clock::now();
  }

  // Cordons node-1 and node-2 (new work then goes to node-3), or uncordons them.
  void CordonAllButNode3(bool cordon) {
    for (int i : {0, 1}) {
      auto c = cluster_->Admin(0).Post(
          "/v1/nodes/" + Cluster::NodeId(i) + (cordon ? "/cordon" : "/uncordon"), json::object());
      ASSERT_EQ(c.status, 200) << c.body;
    }
  }

  void StartCluster(ClusterOptions options) {
    cluster_ = std::make_unique<Cluster>(schema_->url(), std::move(options));
    auto st = cluster_->Start();
    ASSERT_TRUE(st) << st.error().message << "\n" << cluster_->Logs();
    Say("cluster up: 2 Olympus replicas, 3 nodes");
  }

  // Leave nothing behind: every sandbox ended, daemons stopped cleanly, no supervisor left.
  void TearDown() override {
    if (cluster_) {
      if (cluster_->replica(0).running() || cluster_->replica(1).running()) {
        int r = cluster_->LiveReplica();
        auto all = cluster_->Admin(r).Call("GET", "/v1/sandboxes?limit=1000");
        EXPECT_EQ(all.status, 200) << all.body;
        for (const auto& s : all.json.value("items", json::array())) {
          EXPECT_TRUE(IsFinal(s.value("state", ""))) << "still going at the end: " << s.dump();
        }
      }
      auto stopped = cluster_->StopAll();
      EXPECT_TRUE(stopped) << stopped.error().message;
      for (int i = 0; i < kAgents; ++i) {
        EXPECT_TRUE(Supervisors(cluster_->AgentDir(i)).empty())
            << Cluster::NodeId(i) << " left sandbox supervisors running";
        for (const auto& [run_id, state] : LocalRuns(cluster_->AgentDir(i))) {
          EXPECT_TRUE(IsFinal(state))
              << Cluster::NodeId(i) << " left run " << run_id << " " << state;
          // Mounts, cgroups, processes, runtime state.
          auto left = Leftovers(cluster_->AgentDir(i), run_id);
          EXPECT_TRUE(left.empty()) << run_id << " left " << left.front();
        }
      }
      if (HasFailure()) Say("daemon logs:\n" + cluster_->Logs());
      cluster_.reset();
    }
    schema_.reset();
    if (started_ != Clock::time_point{}) {
      Say("test took " +
          std::to_string(std::chrono::duration_cast<seconds>(Clock::now() - started_).count()) +
          " s");
    }
  }

  std::unique_ptr<TestSchema> schema_;
  std::unique_ptr<Cluster> cluster_;
  Clock::time_point started_{};
};

TEST_F(MultiNodeTest, TwoHundredConcurrentSandboxesEachRunExactlyOnce) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  CapacityWatch watch(*cluster_);
  std::string tag = RandomHex(8);
  Batch batch = SubmitConcurrently(*cluster_, tag, 200, 8, "sleep 0.2");
  auto items = WaitRunFinished(*cluster_, tag, 200, seconds(180));
  watch.Stop();
  ASSERT_EQ(items.size(), 200u);
  ExpectEachRanOnce(*cluster_, items, batch.markers);

  std::map<std::string, int> per_node;
  for (const auto& s : items) per_node[s.value("node", "")]++;
  for (int i = 0; i < kAgents; ++i) {
    EXPECT_GT(per_node[Cluster::NodeId(i)], 0) << Cluster::NodeId(i) << " ran nothing";
  }
  EXPECT_GT(watch.samples(), 0);
  EXPECT_TRUE(watch.violations().empty())
      << "reservations above capacity: " << watch.violations().front();
  std::string peaks;
  for (const auto& [node, peak] : watch.peak_millicpus())
    peaks += " " + node + "=" + std::to_string(peak) + "m";
  Say("sandboxes per node: node-1=" + std::to_string(per_node["node-1"]) +
      " node-2=" + std::to_string(per_node["node-2"]) +
      " node-3=" + std::to_string(per_node["node-3"]) + "; peak reservations (of 2000m):" + peaks);
  auto queue = cluster_->Admin(0).Call("GET", "/v1/queue");
  EXPECT_EQ(queue.json.value("dead", -1), 0) << queue.body;
  auto lost = cluster_->Admin(0).Call("GET", "/v1/errors?kind=node_lost");
  EXPECT_EQ(lost.json.value("items", json::array()).size(), 0u) << lost.body;
}

TEST_F(MultiNodeTest, KilledAgentsSandboxesAreRetriedOnOtherNodes) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({.node_lease = "3s"}));
  CapacityWatch watch(*cluster_);
  std::string tag = RandomHex(8);
  // 12 long sandboxes, a quarter CPU each: 4 per node fit, and the victim's fit elsewhere.
  std::set<std::string> markers;
  for (int n = 0; n < 12; ++n) {
    auto s = Submit(*cluster_, n % kReplicas, SandboxBody(tag, Marker(tag, n), "sleep 20", "0.25"),
                    tag + "-" + std::to_string(n));
    ASSERT_FALSE(s.id.empty()) << s.error;
    markers.insert(Marker(tag, n));
  }
  // Kill the node running the most of them, once they all run.
  std::vector<json> items;
  auto deadline = Clock::now() + seconds(60);
  while (Clock::now() < deadline) {
    items = ListRun(*cluster_, tag);
    size_t running = 0;
    for (const auto& s : items) running += s.value("state", "") == "running";
    if (running == 12) break;
    std::this_thread::sleep_for(milliseconds(200));
  }
  std::map<std::string, std::vector<std::string>> by_node;
  for (const auto& s : items) {
    if (s.value("state", "") == "running")
      by_node[s.value("node", "")].push_back(s.value("id", ""));
  }
  ASSERT_EQ(items.size(), 12u);
  std::string victim_node;
  for (const auto& [node, ids] : by_node) {
    if (victim_node.empty() || ids.size() > by_node[victim_node].size()) victim_node = node;
  }
  int victim = Cluster::AgentIndex(victim_node);
  ASSERT_GE(victim, 0) << "nothing is running: " << json(items).dump();
  std::vector<std::string> victim_ids = by_node[victim_node];
  ASSERT_FALSE(victim_ids.empty());
  cluster_->agent(victim).Kill9();
  Say("kill -9 " + victim_node + " while it runs " + std::to_string(victim_ids.size()) +
      " sandboxes");

  auto lost = cluster_->WaitNodeState(victim, "lost", seconds(20));
  ASSERT_TRUE(lost) << lost.error().message;
  Say(victim_node + " is lost");
  // Its sandboxes go back to the queue and start again elsewhere as attempt 2.
  std::map<std::string, int> expected_attempt;
  for (const auto& id : victim_ids) {
    expected_attempt[id] = 2;
    auto deadline2 = Clock::now() + seconds(30);
    json s;
    while (Clock::now() < deadline2) {
      auto res = cluster_->Admin(0).Call("GET", "/v1/sandboxes/" + id);
      s = res.json;
      if (res.status == 200 && s.value("attempt", 0) == 2 && s.value("state", "") == "running")
        break;
      std::this_thread::sleep_for(milliseconds(200));
    }
    EXPECT_EQ(s.value("attempt", 0), 2) << s.dump();
    EXPECT_EQ(s.value("state", ""), "running") << s.dump();
    EXPECT_NE(s.value("node", ""), victim_node) << s.dump();
  }
  // The killed agent's supervisors are separate processes: they stop their sandboxes on their
  // own once the node lease file is no longer renewed, before Olympus hands the work on.
  auto stopped_by = Clock::now() + seconds(10);
  while (!Supervisors(cluster_->AgentDir(victim)).empty() && Clock::now() < stopped_by) {
    std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_TRUE(Supervisors(cluster_->AgentDir(victim)).empty())
      << "the dead agent's supervisors ran on past the node lease";
  for (const auto& id : victim_ids) {
    auto runs = LocalRuns(cluster_->AgentDir(victim));
    auto it = runs.find(id + "-1");
    ASSERT_NE(it, runs.end()) << "no local record of " << id << "-1";
    EXPECT_EQ(it->second, "lost") << it->first;
  }
  Say("with " + victim_node + " lost, its " + std::to_string(victim_ids.size()) +
      " old runs stopped on their own (lost)");

  // Cocytus recorded the loss of each.
  auto errors = cluster_->Admin(1).Call("GET", "/v1/errors?kind=node_lost&limit=1000");
  ASSERT_EQ(errors.status, 200) << errors.body;
  EXPECT_EQ(CheckSchema(errors.json, "ErrorList"), "");
  for (const auto& id : victim_ids) {
    bool found = false;
    for (const auto& e : errors.json["items"]) {
      found = found || (e.value("sandbox", "") == id && e.value("node", "") == victim_node);
    }
    EXPECT_TRUE(found) << "no node_lost error for " << id << ": " << errors.body;
  }

  // The agent comes back to old runs that all ended, and takes new work.
  ASSERT_TRUE(cluster_->StartAgent(victim));
  ASSERT_TRUE(cluster_->WaitNodeState(victim, "ready", seconds(20)));
  EXPECT_TRUE(Supervisors(cluster_->AgentDir(victim)).empty());
  std::string old_states;
  for (const auto& id : victim_ids) {
    auto runs = LocalRuns(cluster_->AgentDir(victim));
    auto it = runs.find(id + "-1");
    ASSERT_NE(it, runs.end()) << "no local record of " << id << "-1";
    EXPECT_TRUE(IsFinal(it->second)) << it->first << " is " << it->second;
    old_states += " " + it->second;
  }
  Say("restarted " + victim_node + "; its old runs ended:" + old_states);

  items = WaitRunFinished(*cluster_, tag, 12, seconds(90));
  watch.Stop();
  ExpectEachRanOnce(*cluster_, items, markers, expected_attempt);
  EXPECT_TRUE(watch.violations().empty())
      << "reservations above capacity: " << watch.violations().front();
}

TEST_F(MultiNodeTest, KilledReplicaLosesNothing) {
  // node-3 heartbeats to replica B, which dies: node-3 knows only B (no load balancer, no
  // failover list), so it is lost until B is back.
  ASSERT_NO_FATAL_FAILURE(StartCluster({.node_lease = "3s", .agent_replica = {0, 0, 1}}));
  CapacityWatch watch(*cluster_);
  std::string tag = RandomHex(8);

  // Three long sandboxes on node-3 (the other nodes cordoned meanwhile).
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(true));
  std::vector<std::string> long_ids;
  std::set<std::string> markers;
  for (int n = 1000; n < 1003; ++n) {
    auto s = Submit(*cluster_, 0, SandboxBody(tag, Marker(tag, n), "sleep 15", "0.25"),
                    tag + "-" + std::to_string(n));
    ASSERT_FALSE(s.id.empty()) << s.error;
    long_ids.push_back(s.id);
    markers.insert(Marker(tag, n));
  }
  for (const auto& id : long_ids) {
    auto s = cluster_->Admin(0).WaitForState(id, {"running"}, seconds(60));
    ASSERT_EQ(s.value("state", ""), "running") << s.dump();
    ASSERT_EQ(s.value("node", ""), "node-3") << s.dump();
  }
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(false));

  // 80 short ones from 8 threads, alternating replicas; B is killed once the first 40 are in,
  // and the second 40 wait for that, so half of them meet a dead replica first.
  std::mutex mu;
  std::condition_variable cv;
  bool killed = false;
  std::atomic<int> first_half_done{0};
  std::thread killer([&] {
    while (first_half_done < 40) std::this_thread::sleep_for(milliseconds(5));
    cluster_->replica(1).Kill9();
    Say("kill -9 Olympus replica B");
    std::lock_guard lock(mu);
    killed = true;
    cv.notify_all();
  });
  SubmitHooks hooks;
  hooks.before = [&](int n) {
    if (n < 40) return;
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return killed; });
  };
  hooks.after = [&](int n) {
    if (n < 40) ++first_half_done;
  };
  Batch batch = SubmitConcurrently(*cluster_, tag, 80, 8, "sleep 0.5", hooks);
  killer.join();
  markers.insert(batch.markers.begin(), batch.markers.end());
  EXPECT_GE(batch.retried, 20) << "requests to the dead replica should have been retried on A";

  // node-3 cannot renew its lease through B: lost, and its long sandboxes run again elsewhere.
  auto lost = cluster_->WaitNodeState(2, "lost", seconds(20));
  ASSERT_TRUE(lost) << lost.error().message;
  Say("node-3 (heartbeating to the dead replica) is lost");
  // Self-fencing (node_agent.cc): an agent whose lease lapsed stops its runs, so a sandbox
  // never runs twice at once. Its lease has lapsed by now.
  auto fenced_by = Clock::now() + seconds(10);
  while (!Supervisors(cluster_->AgentDir(2)).empty() && Clock::now() < fenced_by) {
    std::this_thread::sleep_for(milliseconds(200));
  }
  auto unfenced = Supervisors(cluster_->AgentDir(2));
  EXPECT_TRUE(unfenced.empty()) << "node-3 is lost (its lease lapsed) and still runs "
                                << unfenced.size()
                                << " sandboxes that Olympus hands to other nodes";

  std::map<std::string, int> expected_attempt;
  for (const auto& id : long_ids) expected_attempt[id] = 2;
  // A short one node-3 ran may have finished unreported (attempt 2 elsewhere): any attempt.
  for (const auto& s : batch.submissions) expected_attempt[s.id] = 0;
  auto items = WaitRunFinished(*cluster_, tag, 83, seconds(120));
  ASSERT_EQ(items.size(), 83u);
  ExpectEachRanOnce(*cluster_, items, markers, expected_attempt);
  int retried = 0;
  for (const auto& s : items) retried += s.value("attempt", 0) > 1;
  Say(std::to_string(retried) + " of 83 sandboxes ran a second attempt after node-3 was lost");

  // B comes back on the same port: node-3 reaches it again and registers.
  ASSERT_TRUE(cluster_->StartReplica(1));
  auto ready = cluster_->WaitNodeState(2, "ready", seconds(20));
  ASSERT_TRUE(ready) << ready.error().message;
  auto swept_by = Clock::now() + seconds(20);
  while (!Supervisors(cluster_->AgentDir(2)).empty() && Clock::now() < swept_by) {
    std::this_thread::sleep_for(milliseconds(200));
  }
  EXPECT_TRUE(Supervisors(cluster_->AgentDir(2)).empty())
      << "node-3 kept runs after registering again";

  std::string tag2 = RandomHex(8);
  Batch after = SubmitConcurrently(*cluster_, tag2, 6, 2, "true");
  auto items2 = WaitRunFinished(*cluster_, tag2, 6, seconds(60));
  ExpectEachRanOnce(*cluster_, items2, after.markers);
  watch.Stop();
  EXPECT_TRUE(watch.violations().empty())
      << "reservations above capacity: " << watch.violations().front();
}

TEST_F(MultiNodeTest, ReportsSurviveAShortReplicaOutage) {
  // node-3 talks to replica B; B is down for a few seconds (well inside the 10 s lease) while
  // node-3's sandboxes end. Once B is back, their ends must reach the store.
  ASSERT_NO_FATAL_FAILURE(StartCluster({.agent_replica = {0, 0, 1}}));
  std::string tag = RandomHex(8);
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(true));
  std::set<std::string> markers;
  std::vector<std::string> ids;
  for (int n = 0; n < 4; ++n) {
    auto s = Submit(*cluster_, 0, SandboxBody(tag, Marker(tag, n), "sleep 2", "0.25"),
                    tag + "-" + std::to_string(n));
    ASSERT_FALSE(s.id.empty()) << s.error;
    ids.push_back(s.id);
    markers.insert(Marker(tag, n));
  }
  for (const auto& id : ids) {
    auto s = cluster_->Admin(0).WaitForState(id, {"running"}, seconds(60));
    ASSERT_EQ(s.value("state", ""), "running") << s.dump();
  }
  cluster_->replica(1).Kill9();
  Say("kill -9 Olympus replica B while node-3 runs 4 sandboxes");
  std::this_thread::sleep_for(seconds(4));
  ASSERT_TRUE(cluster_->StartReplica(1));
  Say("replica B is back");
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(false));
  auto items = WaitRunFinished(*cluster_, tag, 4, seconds(20));
  ExpectEachRanOnce(*cluster_, items, markers);
}

TEST_F(MultiNodeTest, AgentFailsOverToTheOtherReplica) {
  // node-3 heartbeats to replica B and knows A too. B dies for good: node-3 keeps its lease
  // through A, and its sandboxes run on as attempt 1.
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      {.node_lease = "3s", .agent_replica = {0, 0, 1}, .agent_failover = {false, false, true}}));
  std::string tag = RandomHex(8);
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(true));
  std::set<std::string> markers;
  std::vector<std::string> ids;
  for (int n = 0; n < 3; ++n) {
    auto s = Submit(*cluster_, 0, SandboxBody(tag, Marker(tag, n), "sleep 8", "0.25"),
                    tag + "-" + std::to_string(n));
    ASSERT_FALSE(s.id.empty()) << s.error;
    ids.push_back(s.id);
    markers.insert(Marker(tag, n));
  }
  for (const auto& id : ids) {
    auto s = cluster_->Admin(0).WaitForState(id, {"running"}, seconds(60));
    ASSERT_EQ(s.value("state", ""), "running") << s.dump();
    ASSERT_EQ(s.value("node", ""), "node-3") << s.dump();
  }
  cluster_->replica(1).Kill9();
  Say("kill -9 Olympus replica B; node-3 fails over to A");
  // Two leases later node-3 is still ready: its heartbeats reach A.
  std::this_thread::sleep_for(seconds(6));
  auto node = cluster_->Admin(0).Call("GET", "/v1/nodes/node-3");
  ASSERT_EQ(node.status, 200) << node.body;
  EXPECT_EQ(node.json.value("state", ""), "ready") << node.body;
  ASSERT_NO_FATAL_FAILURE(CordonAllButNode3(false));
  std::map<std::string, int> expected_attempt;
  for (const auto& id : ids) expected_attempt[id] = 1;
  auto items = WaitRunFinished(*cluster_, tag, 3, seconds(60));
  ExpectEachRanOnce(*cluster_, items, markers, expected_attempt);
}

TEST_F(MultiNodeTest, RestartedClusterKeepsItsState) {
  ASSERT_NO_FATAL_FAILURE(StartCluster({}));
  std::string tag = RandomHex(8);
  Batch batch = SubmitConcurrently(*cluster_, tag, 20, 4, "sleep 0.1");
  auto before = WaitRunFinished(*cluster_, tag, 20, seconds(90));
  ASSERT_EQ(before.size(), 20u);
  ExpectEachRanOnce(*cluster_, before, batch.markers);
  // Three still running through the restart: their supervisors outlive the agents, which
  // adopt them when they come back (inside the node lease, so nothing is retried).
  std::string long_tag = RandomHex(8);
  Batch long_batch = SubmitConcurrently(*cluster_, long_tag, 3, 3, "sleep 8");
  for (const auto& s : long_batch.submissions) {
    auto r = cluster_->Admin(0).WaitForState(s.id, {"running"}, seconds(60));
    ASSERT_EQ(r.value("state", ""), "running") << r.dump();
  }
  auto tokens = cluster_->Admin(0).Call("GET", "/v1/tokens");
  ASSERT_EQ(tokens.status, 200);

  auto stopped = cluster_->StopAll();
  ASSERT_TRUE(stopped) << stopped.error().message;
  size_t supervisors = 0;
  for (int i = 0; i < kAgents; ++i) supervisors += Supervisors(cluster_->AgentDir(i)).size();
  EXPECT_EQ(supervisors, 3u) << "the running sandboxes should outlive their stopped agents";
  Say("stopped every daemon; " + std::to_string(supervisors) + " sandboxes still run on their own");

  for (int i = 0; i < kReplicas; ++i) ASSERT_TRUE(cluster_->StartReplica(i));
  for (int i = 0; i < kAgents; ++i) ASSERT_TRUE(cluster_->StartAgent(i));
  for (int i = 0; i < kAgents; ++i) ASSERT_TRUE(cluster_->WaitNodeState(i, "ready", seconds(30)));
  Say("restarted every daemon on the same store");

  // Tokens: the client's still authenticates on both replicas; the list is unchanged.
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_EQ(cluster_->Client(r).Call("GET", "/v1/sandboxes?limit=1").status, 200);
  }
  auto tokens_after = cluster_->Admin(1).Call("GET", "/v1/tokens");
  ASSERT_EQ(tokens_after.status, 200);
  EXPECT_EQ(tokens_after.json["items"], tokens.json["items"]);
  EXPECT_EQ(cluster_->Admin(1).Call("GET", "/v1/policies/default").status, 200);
  // Nodes: all three, as registered before.
  auto nodes = cluster_->Admin(1).Call("GET", "/v1/nodes");
  ASSERT_EQ(nodes.status, 200);
  std::set<std::string> node_ids;
  for (const auto& n : nodes.json["items"]) node_ids.insert(n.value("id", ""));
  EXPECT_EQ(node_ids, (std::set<std::string>{"node-1", "node-2", "node-3"}));
  // Sandboxes: the same records, and their logs still readable from their nodes.
  auto after = ListRun(*cluster_, tag, 1);
  ASSERT_EQ(after.size(), before.size());
  std::map<std::string, json> by_id;
  for (const auto& s : before) by_id[s.value("id", "")] = s;
  for (const auto& s : after) {
    auto it = by_id.find(s.value("id", ""));
    ASSERT_NE(it, by_id.end()) << s.dump();
    EXPECT_EQ(s, it->second);
  }
  ExpectEachRanOnce(*cluster_, after, batch.markers);
  // The adopted ones finish as attempt 1, on the node that started them.
  auto long_items = WaitRunFinished(*cluster_, long_tag, 3, seconds(60));
  ExpectEachRanOnce(*cluster_, long_items, long_batch.markers);
  // And new work runs.
  std::string new_tag = RandomHex(8);
  Batch fresh = SubmitConcurrently(*cluster_, new_tag, 10, 4, "true");
  auto fresh_items = WaitRunFinished(*cluster_, new_tag, 10, seconds(60));
  ExpectEachRanOnce(*cluster_, fresh_items, fresh.markers);
}

}  // namespace
}  // namespace tartarus::testing

// Moirai (the scheduler) with Acheron (the queue) and Hades (the node registry): a
// deterministic simulation. A real ControlStore on a temporary SQLite file is driven by a
// fake clock; simulated nodes register, heartbeat, run what they are assigned and report,
// while faults are injected (host crashes, agent restarts, partitions, lost heartbeats and
// replies, duplicate deliveries, stale reports). Invariants are checked at every step.
// A failing seed is replayed with TARTARUS_SIM_SEED=N.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "scheduler/scheduler.h"
#include "store/control_store.h"

namespace tartarus::scheduler {
namespace {

using store::ControlStore;
using store::HeartbeatReply;
using store::JobRow;
using store::NodeRow;
using store::SandboxRow;

constexpr int64_t kMi = int64_t{1} << 20;
constexpr int64_t kGi = int64_t{1} << 30;

struct SimConfig {
  uint64_t seed = 1;
  int nodes = 5;
  int sandboxes = 70;
  int64_t tick_ms = 100;
  int64_t lease_ms = 3000;
  int64_t heartbeat_every_ms = 500;
  int64_t fault_phase_ms = 40'000;  // faults are injected only before this
  int64_t max_ms = 400'000;         // give up on liveness after this
  // A node kills its runs once its lease lapses without renewal. Without it a partitioned
  // node keeps running what Olympus hands to another node.
  bool self_fencing = true;
  // Per-tick probabilities, in millionths.
  int host_crash = 2'000, agent_restart = 2'000, partition = 2'500;
  // Per-message probabilities, in millionths.
  int request_lost = 40'000, reply_lost = 40'000, duplicate_delivery = 100'000,
      stale_replay = 50'000, stale_attempt = 100'000, start_failure = 40'000;
};

struct SimResult {
  std::vector<std::string> violations;
  std::vector<std::string> trace;  // what happened, in order: equal for equal seeds
  std::map<std::string, int> final_states;
  int dead = 0, unfinished = 0, double_run_checks = 0, finishes_accepted = 0;
  // Evidence that the faults happened and were survived.
  std::map<std::string, int> events;
};

// ---------------------------------------------------------------- the simulated world

struct LocalRun {
  int attempt = 0;
  int64_t end_ms = 0;
  bool counted = false;  // ReportStarted accepted while this run exists: it "runs"
  int exit_code = 0;
};

struct Report {
  enum Kind { kStarted, kFinished, kRetryable } kind = kStarted;
  std::string sandbox_id;
  int attempt = 0;
  std::string final_state;  // kFinished: exited killed failed
  int exit_code = 0;
};

struct SimNode {
  enum Status { kUp, kHostDown, kAgentDown, kPartitioned };
  NodeRow row;
  Status status = kUp;
  int64_t back_at_ms = 0;         // when a fault ends
  int64_t lease_deadline_ms = 0;  // as far as the node knows: last renewal + lease
  int64_t next_heartbeat_ms = 0;
  bool needs_register = true;
  std::map<std::string, LocalRun> runs;  // by sandbox id
  std::vector<Report> unsent;            // request or reply lost: sent again
  std::vector<Report> history;           // everything sent, for stale replays
};

class Simulation {
 public:
  explicit Simulation(SimConfig config)
      : config_(config), rng_(config.seed), place_rng_(config.seed * 7919 + 1) {}

  SimResult Run(const std::string& url) {
    auto opened = ControlStore::Open(url, store::RetryPolicy{200, 2000});
    if (!opened) {
      result_.violations.push_back("cannot open store: " + opened.error().message);
      return result_;
    }
    store_ = std::move(*opened);
    auto tenant = store_->CreateTenant("sim");
    if (!tenant) {
      result_.violations.push_back("cannot create tenant: " + tenant.error().message);
      return result_;
    }
    tenant_id_ = tenant->id;
    MakeNodes();

    int created = 0;
    for (now_ = config_.tick_ms; now_ <= config_.max_ms; now_ += config_.tick_ms) {
      bool faults = now_ < config_.fault_phase_ms;
      if (faults) InjectFaults();
      RecoverNodes();
      for (SimNode& node : nodes_) Fence(node);
      for (size_t i : ShuffledNodeOrder()) Act(nodes_[i]);
      // Clients: create the sandboxes over the first part of the run, kill a few.
      if (created < config_.sandboxes && Chance(300'000)) CreateSandbox(created++);
      if (faults && Chance(20'000)) KillRandomSandbox(created);
      Check(store_->ExpireLeases(now_), "ExpireLeases");
      Schedule();
      CheckReservations();
      CheckSingleRuns();
      if (created == config_.sandboxes && !faults && now_ % 1000 == 0 && AllFinal()) break;
      if (result_.violations.size() > 20) break;
    }
    Finish();
    return result_;
  }

 private:
  // ---- randomness: our own draws, so every standard library gives the same history
  bool Chance(int millionths) { return static_cast<int>(rng_() % 1'000'000) < millionths; }
  int64_t Between(int64_t low, int64_t high) {
    return low + static_cast<int64_t>(rng_() % static_cast<uint64_t>(high - low + 1));
  }
  template <class T>
  const T& Pick(const std::vector<T>& items) {
    return items[rng_() % items.size()];
  }

  void Violation(std::string what) {
    result_.violations.push_back("t=" + std::to_string(now_) + "ms: " + what);
  }
  void Trace(std::string what) { result_.trace.push_back(std::to_string(now_) + " " + what); }

  template <class R>
  void Check(const R& result, std::string_view what) {
    if (!result) Violation(std::string(what) + " failed: " + result.error().message);
  }

  void MakeNodes() {
    for (int i = 0; i < config_.nodes; ++i) {
      SimNode node;
      node.row.id = "node-" + std::to_string(i);
      node.row.name = node.row.id;
      node.row.millicpus = Pick(std::vector<int64_t>{2000, 4000, 8000});
      node.row.memory_bytes = Pick(std::vector<int64_t>{4 * kGi, 8 * kGi, 16 * kGi});
      node.row.labels = {{"zone", i % 2 == 0 ? "a" : "b"}};
      node.row.runtimes = {"container"};
      if (i != 1) node.row.runtimes.push_back("gvisor");  // one node without gVisor
      nodes_.push_back(std::move(node));
    }
  }

  std::vector<size_t> ShuffledNodeOrder() {
    std::vector<size_t> order(nodes_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng_() % i]);
    return order;
  }

  // ---- faults
  void InjectFaults() {
    for (SimNode& node : nodes_) {
      if (node.status != SimNode::kUp) continue;
      if (Chance(config_.host_crash)) {
        // The host dies: its runs die with it.
        node.status = SimNode::kHostDown;
        node.back_at_ms = now_ + Between(500, 8000);
        for (auto& [id, run] : node.runs) EndRun(node, id, "host crash");
        node.runs.clear();
        node.unsent.clear();
        Trace(node.row.id + " host crash");
        ++result_.events["host_crash"];
      } else if (Chance(config_.agent_restart)) {
        // Only the agent restarts: runs live on in their supervisors and are adopted.
        node.status = SimNode::kAgentDown;
        node.back_at_ms = now_ + Between(200, 6000);
        node.unsent.clear();
        Trace(node.row.id + " agent restart");
        ++result_.events["agent_restart"];
      } else if (Chance(config_.partition)) {
        node.status = SimNode::kPartitioned;
        node.back_at_ms = now_ + Between(500, 8000);
        Trace(node.row.id + " partitioned");
        ++result_.events["partition"];
      }
    }
  }

  void RecoverNodes() {
    for (SimNode& node : nodes_) {
      if (node.status == SimNode::kUp || now_ < node.back_at_ms) continue;
      if (node.status != SimNode::kPartitioned) node.needs_register = true;
      node.status = SimNode::kUp;
      node.next_heartbeat_ms = now_;
      Trace(node.row.id + " back");
    }
  }

  // Self-fencing: the node cannot know whether its lease was renewed, so at the deadline
  // it stops everything (the runs' supervisors do it when the agent is down).
  void Fence(SimNode& node) {
    if (!config_.self_fencing || node.runs.empty() || now_ < node.lease_deadline_ms) return;
    for (auto& [id, run] : node.runs) EndRun(node, id, "fenced");
    node.runs.clear();
    Trace(node.row.id + " fenced");
    ++result_.events["fenced"];
  }

  // ---- the run ledger behind the "one node at a time" invariant
  void CountRun(SimNode& node, const std::string& sandbox_id) {
    LocalRun& run = node.runs.at(sandbox_id);
    if (run.counted) return;
    ++result_.double_run_checks;
    auto [it, fresh] = running_on_.emplace(sandbox_id, node.row.id);
    if (!fresh && it->second != node.row.id) {
      Violation("sandbox " + sandbox_id + " runs on " + it->second + " and " + node.row.id +
                " at once");
    }
    run.counted = true;
    if (!ran_on_[sandbox_id].empty() && ran_on_[sandbox_id].back() != node.row.id) {
      ++result_.events["rerun_elsewhere"];
    }
    ran_on_[sandbox_id].push_back(node.row.id);
    Trace(node.row.id + " runs " + sandbox_id + "#" + std::to_string(run.attempt));
  }

  void EndRun(SimNode& node, const std::string& sandbox_id, std::string_view why) {
    auto run = node.runs.find(sandbox_id);
    if (run == node.runs.end()) return;
    if (run->second.counted) {
      auto owner = running_on_.find(sandbox_id);
      if (owner != running_on_.end() && owner->second == node.row.id) running_on_.erase(owner);
    }
    run->second.counted = false;
    Trace(node.row.id + " ends " + sandbox_id + " (" + std::string(why) + ")");
  }

  // ---- one node's turn
  void Act(SimNode& node) {
    if (node.status != SimNode::kUp) return;
    if (node.needs_register) Register(node);
    if (node.needs_register) return;
    std::vector<Report> unsent = std::move(node.unsent);
    node.unsent.clear();
    for (const Report& report : unsent) Send(node, report);
    if (!node.history.empty() && Chance(config_.stale_replay)) Replay(node, Pick(node.history));
    if (now_ >= node.next_heartbeat_ms) {
      node.next_heartbeat_ms = now_ + config_.heartbeat_every_ms;
      HeartbeatOnce(node);
    }
    // Runs that ended on their own.
    std::vector<std::string> done;
    for (auto& [id, run] : node.runs) {
      if (run.end_ms <= now_) done.push_back(id);
    }
    for (const std::string& id : done) {
      LocalRun run = node.runs.at(id);
      EndRun(node, id, "exited");
      node.runs.erase(id);
      Send(node, Report{Report::kFinished, id, run.attempt, "exited", run.exit_code});
      if (run.attempt > 1 && Chance(config_.stale_attempt)) {
        SendStale(node, Report{Report::kFinished, id, run.attempt - 1, "exited", 0});
      }
    }
  }

  void Register(SimNode& node) {
    if (Chance(config_.request_lost)) return;
    auto registered = store_->RegisterNode(node.row, now_, config_.lease_ms);
    if (!registered) {
      Violation("RegisterNode " + node.row.id + ": " + registered.error().message);
      return;
    }
    if (Chance(config_.reply_lost)) return;
    node.needs_register = false;
    node.lease_deadline_ms = now_ + config_.lease_ms;
    Trace(node.row.id + " registered");
  }

  void HeartbeatOnce(SimNode& node) {
    if (Chance(config_.request_lost)) return;
    auto reply = store_->Heartbeat(node.row.id, node.row.templates, now_, config_.lease_ms);
    if (Chance(config_.reply_lost)) return;
    if (!reply) {
      if (reply.error().code == ErrorCode::kFailedPrecondition ||
          reply.error().code == ErrorCode::kNotFound) {
        // Lost: everything here belongs to someone else now.
        for (auto& [id, run] : node.runs) EndRun(node, id, "node lost");
        node.runs.clear();
        node.needs_register = true;
        Trace(node.row.id + " learns it is lost");
        ++result_.events["learned_lost"];
      } else {
        Violation("Heartbeat " + node.row.id + ": " + reply.error().message);
      }
      return;
    }
    node.lease_deadline_ms = now_ + config_.lease_ms;
    Handle(node, *reply);
    if (Chance(config_.duplicate_delivery)) {
      Handle(node, *reply);  // the same reply twice
      ++result_.events["duplicate_delivery"];
    }
  }

  void Handle(SimNode& node, const HeartbeatReply& reply) {
    std::set<std::string> kill(reply.kill.begin(), reply.kill.end());
    std::set<std::string> assigned;
    for (const auto& assignment : reply.assignments) {
      const std::string& id = assignment.sandbox.id;
      int attempt = assignment.sandbox.attempt;
      assigned.insert(id);
      auto local = node.runs.find(id);
      if (local != node.runs.end() && local->second.attempt != attempt) {
        EndRun(node, id, "superseded");
        node.runs.erase(local);
        local = node.runs.end();
      }
      if (kill.count(id)) {
        if (local != node.runs.end()) {
          EndRun(node, id, "killed");
          node.runs.erase(local);
        }
        Send(node, Report{Report::kFinished, id, attempt, "killed", 137});
        continue;
      }
      if (local != node.runs.end()) continue;  // already running: a repeated delivery
      if (assignment.job.state == "running") {
        // Olympus thinks it runs here, but this node has no such run (a crash or a fence).
        Send(node, Report{Report::kRetryable, id, attempt, "", 0});
        continue;
      }
      if (Chance(config_.start_failure)) {
        Send(node, Report{Report::kRetryable, id, attempt, "", 0});
        continue;
      }
      LocalRun run;
      run.attempt = attempt;
      run.end_ms = now_ + Between(300, 5000);
      run.exit_code = static_cast<int>(Between(0, 2));
      node.runs[id] = run;
      const std::string& template_name = assignment.job.template_name;
      if (std::find(node.row.templates.begin(), node.row.templates.end(), template_name) ==
          node.row.templates.end()) {
        node.row.templates.push_back(template_name);
      }
      Send(node, Report{Report::kStarted, id, attempt, "", 0});
    }
    // Runs Olympus no longer assigns here: stale, stop them.
    for (auto it = node.runs.begin(); it != node.runs.end();) {
      if (assigned.count(it->first)) {
        ++it;
        continue;
      }
      EndRun(node, it->first, "not assigned");
      it = node.runs.erase(it);
    }
  }

  // ---- reports
  Status Deliver(SimNode& node, const Report& report) {
    switch (report.kind) {
      case Report::kStarted:
        return store_->ReportStarted(report.sandbox_id, node.row.id, report.attempt, now_);
      case Report::kRetryable:
        return store_->ReportRetryableFailure(report.sandbox_id, node.row.id, report.attempt,
                                              "simulated start failure", now_);
      case Report::kFinished: {
        SandboxRow result;
        result.state = report.final_state;
        result.exit_code = report.exit_code;
        if (report.final_state == "killed") result.signal = 9;
        auto before = store_->GetSandbox(report.sandbox_id);
        Status status =
            store_->ReportFinished(report.sandbox_id, node.row.id, report.attempt, result, now_);
        auto after = store_->GetSandbox(report.sandbox_id);
        if (!before || !after) {
          Violation("GetSandbox " + report.sandbox_id + " failed");
          return status;
        }
        bool was_final = final_states_.count(before->state) > 0;
        bool is_final = final_states_.count(after->state) > 0;
        if (status && !was_final && is_final) {
          ++result_.finishes_accepted;
          if (++finish_accepted_[report.sandbox_id] > 1) {
            Violation("ReportFinished accepted twice for " + report.sandbox_id);
          }
          Trace(node.row.id + " finished " + report.sandbox_id + " " + after->state);
        }
        if (status && was_final &&
            (after->state != before->state || after->finished_ms != before->finished_ms ||
             after->exit_code != before->exit_code)) {
          Violation("a repeated ReportFinished changed final sandbox " + report.sandbox_id);
        }
        return status;
      }
    }
    return Ok();
  }

  // A report from the node itself: it may be lost on the way or its reply may be.
  void Send(SimNode& node, const Report& report) {
    node.history.push_back(report);
    if (Chance(config_.request_lost)) {
      node.unsent.push_back(report);
      return;
    }
    Status status = Deliver(node, report);
    if (report.kind == Report::kStarted && status) {
      auto run = node.runs.find(report.sandbox_id);
      // Acceptance counts as a run only while the run exists (the store saw it either way).
      if (run != node.runs.end() && run->second.attempt == report.attempt) {
        CountRun(node, report.sandbox_id);
      }
    }
    if (Chance(config_.reply_lost)) {
      // No reply: the node cannot tell, so it sends the report again later.
      ++result_.events["reply_lost"];
      if (report.kind != Report::kRetryable || status) node.unsent.push_back(report);
      return;
    }
    if (!status) {
      if (status.error().code != ErrorCode::kFailedPrecondition) {
        Violation("report on " + report.sandbox_id + ": " + status.error().message);
        return;
      }
      // Stale: the run is not ours any more.
      ++result_.events["report_refused"];
      auto run = node.runs.find(report.sandbox_id);
      if (run != node.runs.end() && run->second.attempt == report.attempt) {
        EndRun(node, report.sandbox_id, "stale");
        node.runs.erase(run);
      }
    }
  }

  // A copy of an old message arriving late; the node never sees its reply.
  void Replay(SimNode& node, const Report& report) {
    Status status = Deliver(node, report);
    ++result_.events[status ? "replay_accepted" : "replay_refused"];
    if (report.kind == Report::kStarted && status) {
      auto run = node.runs.find(report.sandbox_id);
      if (run != node.runs.end() && run->second.attempt == report.attempt) {
        CountRun(node, report.sandbox_id);
      }
    }
  }

  // A report for an attempt that is certainly not current: it must be refused.
  void SendStale(SimNode& node, const Report& report) {
    Status status = Deliver(node, report);
    if (!status) ++result_.events["stale_refused"];
    if (status) {
      Violation("stale report for " + report.sandbox_id + " attempt " +
                std::to_string(report.attempt) + " from " + node.row.id + " was accepted");
    } else if (status.error().code != ErrorCode::kFailedPrecondition) {
      Violation("stale report: unexpected error " + status.error().message);
    }
  }

  // ---- clients and Olympus
  void CreateSandbox(int index) {
    char id[32];
    std::snprintf(id, sizeof id, "sb-%04d", index);
    SandboxRow sandbox;
    sandbox.id = id;
    sandbox.tenant_id = tenant_id_;
    sandbox.template_name = Chance(500'000) ? "base" : "python-ds";
    sandbox.runtime = Chance(700'000) ? "container" : "gvisor";
    sandbox.created_ms = now_;
    JobRow job;
    job.max_attempts = 3;
    job.millicpus = Pick(std::vector<int64_t>{250, 500, 1000, 2000});
    job.memory_bytes = Pick(std::vector<int64_t>{256 * kMi, 512 * kMi, kGi, 2 * kGi});
    job.deadline_ms = now_ + 30'000;
    if (Chance(150'000)) job.selector = {{"zone", "a"}};
    if (Chance(30'000)) job.millicpus = 64'000;  // fits nowhere: fails at its deadline
    auto created = store_->CreateSandbox(sandbox, job);
    Check(created, "CreateSandbox");
    sandbox_ids_.push_back(id);
    Trace(std::string("create ") + id);
  }

  void KillRandomSandbox(int created) {
    if (created == 0) return;
    const std::string& id = sandbox_ids_[rng_() % sandbox_ids_.size()];
    Check(store_->RequestKill(id, now_), "RequestKill");
    Trace("kill " + id);
  }

  void Schedule() {
    auto placed = store_->ScheduleBatch(
        now_, 16, [&](const JobRow& job, const std::vector<NodeRow>& rows, std::string* reason) {
          std::vector<NodeView> views;
          for (const NodeRow& row : rows) {
            views.push_back(NodeView{row.id, row.state, row.millicpus, row.memory_bytes,
                                     row.reserved_millicpus, row.reserved_memory_bytes, row.labels,
                                     row.runtimes, row.templates});
          }
          PlacementRequest request{job.millicpus, job.memory_bytes, job.template_name, job.runtime,
                                   job.selector};
          auto chosen = Place(request, views, place_rng_, 2);
          if (!chosen) {
            *reason = chosen.error();
            return std::optional<std::string>();
          }
          Trace("place " + job.id + " on " + *chosen);
          return std::optional<std::string>(*chosen);
        });
    Check(placed, "ScheduleBatch");
  }

  // ---- invariants
  void CheckReservations() {
    auto nodes = store_->ListNodes();
    Check(nodes, "ListNodes");
    auto sums = store_->RecomputeReservations();
    Check(sums, "RecomputeReservations");
    if (!nodes || !sums) return;
    for (const NodeRow& node : *nodes) {
      // The stored columns scheduling reads equal the sums over the node's active jobs.
      store::NodeReservation want;
      if (auto found = sums->find(node.id); found != sums->end()) want = found->second;
      if (node.reserved_millicpus != want.millicpus ||
          node.reserved_memory_bytes != want.memory_bytes || node.active_jobs != want.active_jobs) {
        Violation("node " + node.id + " columns say " + std::to_string(node.reserved_millicpus) +
                  "m/" + std::to_string(node.reserved_memory_bytes) + "/" +
                  std::to_string(node.active_jobs) + " jobs, its jobs sum to " +
                  std::to_string(want.millicpus) + "m/" + std::to_string(want.memory_bytes) + "/" +
                  std::to_string(want.active_jobs));
      }
      if (node.reserved_millicpus > node.millicpus ||
          node.reserved_memory_bytes > node.memory_bytes) {
        Violation("node " + node.id + " reserves " + std::to_string(node.reserved_millicpus) +
                  "m/" + std::to_string(node.reserved_memory_bytes) + " of " +
                  std::to_string(node.millicpus) + "m/" + std::to_string(node.memory_bytes));
      }
    }
  }

  // The ledger and the nodes' own runs agree, and no sandbox is counted on two nodes.
  void CheckSingleRuns() {
    std::map<std::string, std::vector<std::string>> counted;
    for (const SimNode& node : nodes_) {
      for (const auto& [id, run] : node.runs) {
        if (run.counted) counted[id].push_back(node.row.id);
      }
    }
    for (const auto& [id, owners] : counted) {
      if (owners.size() > 1)
        Violation("sandbox " + id + " runs on " + owners[0] + " and " + owners[1]);
    }
  }

  bool AllFinal() {
    for (const std::string& id : sandbox_ids_) {
      auto sandbox = store_->GetSandbox(id);
      if (!sandbox || !final_states_.count(sandbox->state)) return false;
    }
    return true;
  }

  // Liveness: every sandbox ended, or its job is in the dead-letter queue.
  void Finish() {
    for (const std::string& id : sandbox_ids_) {
      auto sandbox = store_->GetSandbox(id);
      auto job = store_->GetJob(id);
      if (!sandbox || !job) {
        Violation("cannot read " + id);
        continue;
      }
      ++result_.final_states[sandbox->state];
      if (job->state == "dead") ++result_.dead;
      if (!final_states_.count(sandbox->state) && job->state != "dead") {
        ++result_.unfinished;
        Violation("sandbox " + id + " never finished: " + sandbox->state + " (job " + job->state +
                  ", " + job->reason + ")");
      }
    }
    for (const SimNode& node : nodes_) {
      for (const auto& [id, run] : node.runs) {
        if (run.counted)
          Violation("run of " + id + " on " + node.row.id + " outlived the simulation");
      }
    }
  }

  SimConfig config_;
  std::mt19937_64 rng_, place_rng_;
  std::unique_ptr<ControlStore> store_;
  std::string tenant_id_;
  int64_t now_ = 0;
  std::vector<SimNode> nodes_;
  std::vector<std::string> sandbox_ids_;
  std::map<std::string, std::string> running_on_;  // sandbox -> the node whose run counts
  std::map<std::string, int> finish_accepted_;
  std::map<std::string, std::vector<std::string>> ran_on_;  // every node a sandbox ran on
  const std::set<std::string> final_states_ = {"exited", "killed", "failed", "lost"};
  SimResult result_;
};

// A fresh SQLite file per run; in /dev/shm when there is one, so commits cost no disk time.
class TempDatabase {
 public:
  TempDatabase() {
    std::filesystem::path base = std::filesystem::exists("/dev/shm")
                                     ? std::filesystem::path("/dev/shm")
                                     : std::filesystem::temp_directory_path();
    std::random_device random;
    dir_ = base / ("tartarus-sim-" + std::to_string(random()) + std::to_string(random()));
    std::filesystem::create_directories(dir_);
  }
  ~TempDatabase() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string url() const { return "sqlite://" + (dir_ / "sim.db").string(); }

 private:
  std::filesystem::path dir_;
};

SimResult Simulate(const SimConfig& config) {
  TempDatabase db;
  return Simulation(config).Run(db.url());
}

std::vector<uint64_t> Seeds() {
  if (const char* seed = std::getenv("TARTARUS_SIM_SEED"); seed != nullptr && *seed != '\0') {
    return {std::strtoull(seed, nullptr, 10)};
  }
  std::vector<uint64_t> seeds;
  for (uint64_t seed = 1; seed <= 20; ++seed) seeds.push_back(seed);
  return seeds;
}

std::string Describe(const SimResult& result) {
  std::string out;
  for (const auto& [state, count] : result.final_states) {
    out += state + "=" + std::to_string(count) + " ";
  }
  for (const auto& [event, count] : result.events) {
    out += event + "=" + std::to_string(count) + " ";
  }
  out += "dead=" + std::to_string(result.dead) +
         " runs_checked=" + std::to_string(result.double_run_checks) +
         " finishes=" + std::to_string(result.finishes_accepted);
  return out;
}

TEST(SimulationTest, InvariantsHoldUnderFaults) {
  int total_runs = 0, total_finishes = 0;
  std::map<std::string, int> events;
  for (uint64_t seed : Seeds()) {
    std::printf("simulation seed=%llu\n", static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    SimConfig config;
    config.seed = seed;
    SimResult result = Simulate(config);
    std::printf("  %s\n", Describe(result).c_str());
    for (const auto& violation : result.violations) {
      ADD_FAILURE() << "seed " << seed << ": " << violation
                    << " (replay: TARTARUS_SIM_SEED=" << seed << ")";
    }
    EXPECT_EQ(result.unfinished, 0) << "seed " << seed;
    total_runs += result.double_run_checks;
    total_finishes += result.finishes_accepted;
    for (const auto& [event, count] : result.events) events[event] += count;
  }
  if (Seeds().size() > 1) {
    // Every kind of fault happened somewhere, and work moved to other nodes because of it.
    for (const char* event : {"host_crash", "agent_restart", "partition", "fenced", "learned_lost",
                              "duplicate_delivery", "rerun_elsewhere", "stale_refused",
                              "replay_refused", "report_refused", "reply_lost"}) {
      EXPECT_GT(events[event], 0) << event;
    }
  }
  // The simulation did real work: sandboxes ran and finished.
  EXPECT_GT(total_runs, 0);
  EXPECT_GT(total_finishes, 0);
}

// Fewer sandboxes, many more faults: nodes are down or cut off much of the time.
TEST(SimulationTest, InvariantsHoldUnderHeavyFaults) {
  std::vector<uint64_t> seeds = Seeds();
  if (seeds.size() > 5) seeds.resize(5);
  for (uint64_t seed : seeds) {
    std::printf("simulation seed=%llu (heavy faults)\n", static_cast<unsigned long long>(seed));
    SimConfig config;
    config.seed = seed + 1000;
    config.sandboxes = 40;
    config.host_crash = config.agent_restart = config.partition = 10'000;
    config.request_lost = config.reply_lost = 150'000;
    config.stale_replay = 200'000;
    SimResult result = Simulate(config);
    std::printf("  %s\n", Describe(result).c_str());
    for (const auto& violation : result.violations) {
      ADD_FAILURE() << "seed " << seed << " (heavy): " << violation;
    }
    EXPECT_EQ(result.unfinished, 0) << "seed " << seed;
  }
}

TEST(SimulationTest, SameSeedSameHistory) {
  SimConfig config;
  config.seed = Seeds().front();
  config.sandboxes = 30;
  SimResult first = Simulate(config);
  SimResult second = Simulate(config);
  ASSERT_FALSE(first.trace.empty());
  EXPECT_EQ(first.trace, second.trace);
  config.seed += 1;
  EXPECT_NE(Simulate(config).trace, first.trace);
}

// The checker can fail: without self-fencing a partitioned node keeps running sandboxes
// that Olympus has meanwhile handed to another node, and the simulation says so.
TEST(SimulationTest, DetectsDoubleRunsWithoutFencing) {
  bool found = false;
  for (uint64_t seed = 1; seed <= 10 && !found; ++seed) {
    SimConfig config;
    config.seed = seed;
    config.self_fencing = false;
    config.host_crash = config.agent_restart = 0;
    config.partition = 20'000;
    SimResult result = Simulate(config);
    for (const auto& violation : result.violations) {
      if (!found && violation.find(" runs on ") != std::string::npos) {
        found = true;
        std::printf("without fencing, seed=%llu: %s\n", static_cast<unsigned long long>(seed),
                    violation.c_str());
      }
    }
  }
  EXPECT_TRUE(found) << "no double run found without fencing";
}

}  // namespace
}  // namespace tartarus::scheduler

// The control store: the domain operations Olympus calls, over one Database. Holds tenants
// and tokens, Themis's policies, sandboxes, the queue (Acheron), the node registry with
// leases (Hades) and the failure log (Cocytus). Every operation that changes more than one
// row runs in one transaction, so any number of Olympus replicas can share one PostgreSQL.
//
// Time is always passed in (now_ms, epoch milliseconds): the store never reads the clock,
// so a simulation can drive it with a fake one.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "store/database.h"

namespace tartarus::store {

struct Tenant {
  std::string id, name;
  int64_t created_ms = 0;
};

struct TokenInfo {
  std::string id, tenant_id, name;
  int64_t created_ms = 0;
  std::optional<int64_t> revoked_ms;
};

struct PolicyRow {
  std::string name, tenant, template_name, yaml;  // tenant/template "" = any
  int64_t updated_ms = 0;
};

// exited, killed, failed and lost: the sandbox will never run again.
bool IsFinalSandboxState(std::string_view state);

struct SandboxRow {
  std::string id, tenant_id, template_name, runtime;
  std::string state;      // queued assigned running exited killed failed lost
  std::string spec_json;  // the admitted request, opaque to the store
  std::map<std::string, std::string> labels;
  std::string node_id;
  int attempt = 0;
  std::optional<int> exit_code;
  int signal = 0;
  bool timed_out = false;
  bool kill_requested = false;
  std::string error;   // why it failed
  std::string reason;  // why it waits (e.g. "no node has 4 CPUs free")
  int64_t created_ms = 0, started_ms = 0, finished_ms = 0;
  std::string idempotency_key;
};

// Acheron: one job per sandbox, job id == sandbox id.
struct JobRow {
  std::string id;
  int priority = 0;
  std::string state;  // queued assigned running done dead
  int attempts = 0, max_attempts = 3;
  int64_t available_ms = 0, deadline_ms = 0;  // deadline 0 = none
  std::string node_id;
  int64_t lease_ms = 0;
  int64_t millicpus = 0, memory_bytes = 0;
  std::string template_name, runtime;
  std::map<std::string, std::string> selector;  // node labels required
  std::string reason, last_error;
  int64_t created_ms = 0, updated_ms = 0;
};

struct NodeRow {
  std::string id, name;
  std::string address;                      // where Olympus reaches the node agent's HTTP server
  int64_t millicpus = 0, memory_bytes = 0;  // capacity
  std::map<std::string, std::string> labels;
  std::vector<std::string> runtimes, templates;
  std::string state;  // ready cordoned draining lost
  int64_t lease_ms = 0, registered_ms = 0, heartbeat_ms = 0;
  // The sums over the node's assigned and running jobs, stored on the node row (schema 3)
  // and kept in step by every transaction that places a job or takes one off a node.
  int64_t reserved_millicpus = 0, reserved_memory_bytes = 0;
  int active_jobs = 0;
};

// What a node's reservation columns must hold, summed from its jobs.
struct NodeReservation {
  int64_t millicpus = 0, memory_bytes = 0;
  int active_jobs = 0;
};

// One fixed window of a tenant's creations: the window that holds the latest creation
// counted (start_ms, a multiple of the length) and the one just before it.
struct RateWindow {
  int64_t start_ms = 0, current = 0, previous = 0;
};

// Themis's counters for one tenant (schema 4), on one row kept in step by every transaction
// that creates a sandbox or moves one into or out of queued/assigned/running.
struct TenantUsageRow {
  std::string tenant_id;
  int64_t active = 0;  // sandboxes queued, assigned or running
  // Creations in fixed windows of 1 s, 1 min and 1 h (kRateWindowLengthsMs).
  std::array<RateWindow, 3> windows;

  // The tenant's creations within the last `window_ms` before now_ms, estimated from the
  // two fixed windows of that length (a sliding-window counter): the current window's
  // count plus the previous one's weighted by how much of it the sliding window still
  // covers, rounded up. Exact when the creations of the previous window were spread evenly;
  // nullopt for a length that is not kept (only 1 s, 1 min and 1 h are).
  std::optional<int64_t> CreatedWithin(int64_t window_ms, int64_t now_ms) const;
};
inline constexpr std::array<int64_t, 3> kRateWindowLengthsMs = {1000, 60'000, 3'600'000};

// What admission reads, in one round trip: every policy and the tenant's counters.
struct AdmissionSnapshot {
  std::vector<PolicyRow> policies;
  TenantUsageRow usage;
};

// Cocytus. kind: admission scheduling runtime guest timeout node_lost internal
struct ErrorRow {
  std::string id, tenant_id, sandbox_id, node_id, kind, message, context_json;
  int64_t created_ms = 0;
};

// Newest first. Empty fields match anything; labels must all match.
struct SandboxFilter {
  std::string tenant_id, state, template_name, node_id;
  std::map<std::string, std::string> labels;
  int limit = 100;
  std::string page_token;  // opaque; from SandboxPage::next_page_token
};

struct SandboxPage {
  std::vector<SandboxRow> items;
  std::string next_page_token;  // "" when this is the last page
};

// Newest first.
struct ErrorFilter {
  std::string tenant_id, sandbox_id, kind;
  int64_t since_ms = 0;
  int limit = 100;
};

struct QueueStats {
  int64_t queued = 0, assigned = 0, running = 0, done = 0, dead = 0;
};

struct Assignment {
  SandboxRow sandbox;
  JobRow job;
};

struct HeartbeatReply {
  std::vector<Assignment> assignments;  // every job assigned or running on this node
  std::vector<std::string> kill;        // sandbox ids whose kill was requested
};

// Moirai, called inside ScheduleBatch's transaction: returns the chosen node id, or nullopt
// and a reason. `nodes` are all nodes (lapsed leases shown as lost) with their reservations;
// only a ready one may be chosen.
using PlaceFn = std::function<std::optional<std::string>(
    const JobRow& job, const std::vector<NodeRow>& nodes, std::string* reason)>;

struct RetryPolicy {
  int64_t base_backoff_ms = 1000, max_backoff_ms = 60000;
};

class ControlStore {
 public:
  // Opens the database at `url` (see OpenDatabase) and migrates it.
  static Result<std::unique_ptr<ControlStore>> Open(const std::string& url, RetryPolicy retry = {});
  explicit ControlStore(std::shared_ptr<Database> db, RetryPolicy retry = {});

  Database& db() { return *db_; }

  // --- Tenants and tokens. A token secret is "tt_" + 32 random hex chars, returned once;
  // only its SHA-256 is stored. created_ms / revoked_ms here come from the wall clock.
  Result<Tenant> CreateTenant(const std::string& name);  // kAlreadyExists
  Result<Tenant> GetTenant(const std::string& id_or_name);
  Result<std::vector<Tenant>> ListTenants();
  Result<std::pair<TokenInfo, std::string>> CreateToken(const std::string& tenant_id,
                                                        const std::string& name);
  // kPermissionDenied for an unknown or revoked secret.
  Result<Tenant> Authenticate(std::string_view secret);
  Result<std::vector<TokenInfo>> ListTokens(const std::string& tenant_id);  // "" = all
  Status RevokeToken(const std::string& token_id);

  // --- Themis's policies (the YAML is opaque here). PutPolicy upserts by name
  // (updated_ms: the wall clock when 0).
  Status PutPolicy(const PolicyRow& policy);
  Result<PolicyRow> GetPolicy(const std::string& name);
  Result<std::vector<PolicyRow>> ListPolicies();
  Status DeletePolicy(const std::string& name);

  // --- Sandboxes and the queue.
  // Inserts the sandbox (state queued) and its job in one transaction and wakes schedulers.
  // sandbox.id is generated when empty ("sb_..."); job.id is always the sandbox id.
  // created_ms: from the sandbox (the caller's clock; the wall clock only when 0); the job's
  // available_ms defaults to created_ms. Only the job's scheduling fields are read
  // (priority, max_attempts, available_ms, deadline_ms, resources, template, runtime,
  // selector).
  // A non-empty idempotency key already used by the same tenant returns the existing
  // sandbox and false; a fresh insert returns true.
  Result<std::pair<SandboxRow, bool>> CreateSandbox(const SandboxRow& sandbox, const JobRow& job);
  Result<SandboxRow> GetSandbox(const std::string& id);
  // Up to `limit` ids (sorted) of sandboxes whose id starts with `prefix`, of one tenant
  // (all tenants when tenant_id is empty): short ids, as `tartarus ps` users type them.
  Result<std::vector<std::string>> FindSandboxIdsByPrefix(const std::string& tenant_id,
                                                          const std::string& prefix, int limit);
  Result<SandboxPage> ListSandboxes(const SandboxFilter& filter);
  // Themis's reads: the policies and the tenant's counters (all zero for a tenant with no
  // sandboxes yet) in one statement, O(policies) whatever the number of sandboxes.
  Result<AdmissionSnapshot> ReadAdmission(const std::string& tenant_id);
  Result<TenantUsageRow> GetTenantUsage(const std::string& tenant_id);
  // Exact counts over the sandbox rows, O(the tenant's sandboxes): for checking the
  // counters, and for a rate window the counters do not keep. Deleted sandboxes are not
  // counted here (the counters keep their creations).
  Result<int64_t> CountActiveSandboxes(const std::string& tenant_id);  // queued assigned running
  Result<int64_t> CountSandboxesCreatedSince(const std::string& tenant_id, int64_t since_ms);
  // TenantUsageRow::active of every tenant recomputed from the sandboxes (tenants with none
  // active are absent): for checking the stored counters, not for admission.
  Result<std::map<std::string, int64_t>> RecomputeActiveSandboxes();
  // queued -> killed at once (job done); assigned/running -> kill_requested (delivered by the
  // heartbeat); final -> no-op. Returns the sandbox as it is afterwards.
  Result<SandboxRow> RequestKill(const std::string& id, int64_t now_ms);
  Status DeleteSandbox(const std::string& id);  // kFailedPrecondition unless final

  // Moirai's loop body, one transaction: claims up to `limit` queued jobs with available_ms
  // <= now (priority desc, then oldest; PostgreSQL: FOR UPDATE SKIP LOCKED, node rows FOR
  // UPDATE so two schedulers never over-commit a node) and calls place() for each with all
  // nodes and their reservations (one row per node, including the ones made earlier in this
  // batch).
  //   placed:     job assigned (attempts+1, node_id, lease_ms = node lease), sandbox assigned
  //   not placed: reason saved on job and sandbox
  //   past deadline_ms: sandbox failed with the reason, job done, error row (kind scheduling)
  // Returns the number of jobs assigned.
  Result<int> ScheduleBatch(int64_t now_ms, int limit, const PlaceFn& place);

  // --- Hades. Register upserts by id (a lost node comes back ready; cordoned/draining stay).
  Result<NodeRow> RegisterNode(const NodeRow& node, int64_t now_ms, int64_t lease_duration_ms);
  // Renews the lease and records the templates the node has cached.
  // kNotFound: unknown node; kFailedPrecondition: node is lost (it must register again).
  Result<HeartbeatReply> Heartbeat(const std::string& node_id,
                                   const std::vector<std::string>& templates, int64_t now_ms,
                                   int64_t lease_duration_ms);
  // state: ready cordoned draining (lost is set only by ExpireLeases).
  Status SetNodeState(const std::string& node_id, const std::string& state);
  Result<std::vector<NodeRow>> ListNodes();
  Result<NodeRow> GetNode(const std::string& id);
  // The reservations summed from the assigned and running jobs, by node id (nodes with
  // none are absent): O(active jobs), for checking the stored columns, not for scheduling.
  Result<std::map<std::string, NodeReservation>> RecomputeReservations();

  // --- Reports from the node running a job. `attempt` is SandboxRow::attempt of the
  // assignment: it grows by one on every hand-out and never goes back (JobRow::attempts
  // counts tries against max_attempts and restarts at 0 when a dead job is replayed).
  // kFailedPrecondition ("stale attempt") when the node or attempt is not the current one:
  // the node must then kill what it runs. Repeating a report already applied is Ok.
  Status ReportStarted(const std::string& sandbox_id, const std::string& node_id, int attempt,
                       int64_t now_ms);
  // result: state (exited killed failed), exit_code, signal, timed_out, error. Job -> done.
  // A Cocytus row is written for a failed run (kind runtime) and a timed-out one (timeout).
  Status ReportFinished(const std::string& sandbox_id, const std::string& node_id, int attempt,
                        const SandboxRow& result, int64_t now_ms);
  // The node could not run it (the runtime failed to start): back to the queue with
  // exponential backoff (base * 2^(attempts-1), capped), or dead after max_attempts (sandbox
  // failed). Error row kind runtime.
  Status ReportRetryableFailure(const std::string& sandbox_id, const std::string& node_id,
                                int attempt, const std::string& error, int64_t now_ms);
  // Nodes whose lease lapsed -> lost; their jobs -> queued with backoff, or dead (sandbox
  // lost); a sandbox whose kill was requested becomes killed instead. One error row (kind
  // node_lost) per affected sandbox. Returns how many nodes were marked lost.
  Result<int> ExpireLeases(int64_t now_ms);

  // --- Dead letters and queue views.
  Result<std::vector<JobRow>> ListDeadJobs();
  // Queued again (attempts reset, available now), sandbox queued. kFailedPrecondition
  // unless the job is dead.
  Status ReplayDeadJob(const std::string& id, int64_t now_ms);
  Result<QueueStats> GetQueueStats();
  Result<JobRow> GetJob(const std::string& id);

  // --- Cocytus.
  // id and created_ms filled when empty/0 (created_ms from the wall clock).
  Status RecordError(const ErrorRow& error);
  Result<std::vector<ErrorRow>> ListErrors(const ErrorFilter& filter);

  // Wake-ups for the scheduler loop: returns early when a job was enqueued (or replayed,
  // or put back) since the previous call. PostgreSQL: LISTEN/NOTIFY, so other replicas
  // wake too; SQLite: in-process.
  void WaitForJobs(std::chrono::milliseconds timeout);

  // A fresh random id: prefix + 24 hex chars (e.g. "sb_3f9a...").
  static std::string NewId(std::string_view prefix);

 private:
  int64_t BackoffMs(int attempts) const;

  std::shared_ptr<Database> db_;
  RetryPolicy retry_;
};

}  // namespace tartarus::store

// The control store: tenants, tokens, policies, sandboxes, the queue (Acheron), the node
// registry (Hades) and the failure log (Cocytus), as transactions over one Database.
// Written once for both engines; the only dialect branches are PostgreSQL's row locks.
#include "store/control_store.h"

#include <sys/random.h>

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

#include "common/sha256.h"
#include "store/database_internal.h"

namespace tartarus::store {
namespace {

using json = nlohmann::json;

constexpr std::string_view kJobsChannel = "tartarus_jobs";

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  size_t filled = 0;
  while (filled < bytes) {
    ssize_t got = getrandom(raw.data() + filled, bytes - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      // getrandom cannot fail on Linux >= 3.17 with these flags; a zero id would be a bug.
      std::abort();
    }
    filled += static_cast<size_t>(got);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

Value NullableText(const std::string& text) {
  if (text.empty()) return std::monostate{};
  return text;
}

// Outside input may hold invalid UTF-8: replace it rather than throw.
std::string Dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}
std::string MapToJson(const std::map<std::string, std::string>& map) { return Dump(json(map)); }
std::string ListToJson(const std::vector<std::string>& list) { return Dump(json(list)); }

// Stored JSON is ours, but a hand-edited row must not crash a reader: bad -> empty.
std::map<std::string, std::string> JsonToMap(const std::string& text) {
  std::map<std::string, std::string> out;
  json parsed = json::parse(text, nullptr, false);
  if (!parsed.is_object()) return out;
  for (auto& [key, value] : parsed.items()) {
    if (value.is_string()) out[key] = value.get<std::string>();
  }
  return out;
}
std::vector<std::string> JsonToList(const std::string& text) {
  std::vector<std::string> out;
  json parsed = json::parse(text, nullptr, false);
  if (!parsed.is_array()) return out;
  for (auto& value : parsed) {
    if (value.is_string()) out.push_back(value.get<std::string>());
  }
  return out;
}

// ---- Row mapping. Column lists and parsers stay side by side so they cannot drift.

std::string Columns(std::string_view prefix, std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view name : names) {
    if (!out.empty()) out += ", ";
    out += prefix;
    out += name;
  }
  return out;
}

std::string SandboxColumns(std::string_view prefix = "") {
  return Columns(
      prefix, {"id", "tenant_id", "template", "runtime", "state", "spec_json", "labels_json",
               "node_id", "attempt", "exit_code", "signal", "timed_out", "kill_requested", "error",
               "reason", "created_ms", "started_ms", "finished_ms", "idempotency_key"});
}
constexpr size_t kSandboxColumnCount = 19;

SandboxRow ParseSandbox(const Row& row, size_t at = 0) {
  SandboxRow s;
  s.id = row.Text(at + 0);
  s.tenant_id = row.Text(at + 1);
  s.template_name = row.Text(at + 2);
  s.runtime = row.Text(at + 3);
  s.state = row.Text(at + 4);
  s.spec_json = row.Text(at + 5);
  s.labels = JsonToMap(row.Text(at + 6));
  s.node_id = row.Text(at + 7);
  s.attempt = static_cast<int>(row.Int(at + 8));
  if (auto code = row.OptInt(at + 9)) s.exit_code = static_cast<int>(*code);
  s.signal = static_cast<int>(row.Int(at + 10));
  s.timed_out = row.Int(at + 11) != 0;
  s.kill_requested = row.Int(at + 12) != 0;
  s.error = row.Text(at + 13);
  s.reason = row.Text(at + 14);
  s.created_ms = row.Int(at + 15);
  s.started_ms = row.Int(at + 16);
  s.finished_ms = row.Int(at + 17);
  s.idempotency_key = row.Text(at + 18);
  return s;
}

std::string JobColumns(std::string_view prefix = "") {
  return Columns(
      prefix, {"id", "priority", "state", "attempts", "max_attempts", "available_ms", "deadline_ms",
               "node_id", "lease_ms", "millicpus", "memory_bytes", "template", "runtime",
               "selector_json", "reason", "last_error", "created_ms", "updated_ms"});
}

JobRow ParseJob(const Row& row, size_t at = 0) {
  JobRow j;
  j.id = row.Text(at + 0);
  j.priority = static_cast<int>(row.Int(at + 1));
  j.state = row.Text(at + 2);
  j.attempts = static_cast<int>(row.Int(at + 3));
  j.max_attempts = static_cast<int>(row.Int(at + 4));
  j.available_ms = row.Int(at + 5);
  j.deadline_ms = row.Int(at + 6);
  j.node_id = row.Text(at + 7);
  j.lease_ms = row.Int(at + 8);
  j.millicpus = row.Int(at + 9);
  j.memory_bytes = row.Int(at + 10);
  j.template_name = row.Text(at + 11);
  j.runtime = row.Text(at + 12);
  j.selector = JsonToMap(row.Text(at + 13));
  j.reason = row.Text(at + 14);
  j.last_error = row.Text(at + 15);
  j.created_ms = row.Int(at + 16);
  j.updated_ms = row.Int(at + 17);
  return j;
}

std::string NodeColumns() {
  return Columns(
      "", {"id", "name", "address", "millicpus", "memory_bytes", "labels_json", "runtimes_json",
           "templates_json", "state", "lease_ms", "registered_ms", "heartbeat_ms",
           "reserved_millicpus", "reserved_memory_bytes", "active_jobs"});
}

NodeRow ParseNode(const Row& row) {
  NodeRow n;
  n.id = row.Text(0);
  n.name = row.Text(1);
  n.address = row.Text(2);
  n.millicpus = row.Int(3);
  n.memory_bytes = row.Int(4);
  n.labels = JsonToMap(row.Text(5));
  n.runtimes = JsonToList(row.Text(6));
  n.templates = JsonToList(row.Text(7));
  n.state = row.Text(8);
  n.lease_ms = row.Int(9);
  n.registered_ms = row.Int(10);
  n.heartbeat_ms = row.Int(11);
  n.reserved_millicpus = row.Int(12);
  n.reserved_memory_bytes = row.Int(13);
  n.active_jobs = static_cast<int>(row.Int(14));
  return n;
}

const char* kErrorColumns =
    "id, tenant_id, sandbox_id, node_id, kind, message, context_json, created_ms";

ErrorRow ParseError(const Row& row) {
  return ErrorRow{.id = row.Text(0),
                  .tenant_id = row.Text(1),
                  .sandbox_id = row.Text(2),
                  .node_id = row.Text(3),
                  .kind = row.Text(4),
                  .message = row.Text(5),
                  .context_json = row.Text(6),
                  .created_ms = row.Int(7)};
}

const char* kTokenColumns = "id, tenant_id, name, created_ms, revoked_ms";

TokenInfo ParseToken(const Row& row) {
  TokenInfo t{.id = row.Text(0), .tenant_id = row.Text(1), .name = row.Text(2)};
  t.created_ms = row.Int(3);
  t.revoked_ms = row.OptInt(4);
  return t;
}

const char* kPolicyColumns = "name, tenant, template, yaml, updated_ms";

PolicyRow ParsePolicy(const Row& row) {
  return PolicyRow{.name = row.Text(0),
                   .tenant = row.Text(1),
                   .template_name = row.Text(2),
                   .yaml = row.Text(3),
                   .updated_ms = row.Int(4)};
}

// ---- Shared pieces of the transactions.

Status InsertError(Database& db, ErrorRow error) {
  if (error.id.empty()) error.id = ControlStore::NewId("err_");
  if (error.created_ms == 0) error.created_ms = WallMs();
  if (error.context_json.empty()) error.context_json = "{}";
  return db.Exec(
      "INSERT INTO errors (id, tenant_id, sandbox_id, node_id, kind, message, context_json, "
      "created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
      {error.id, error.tenant_id, error.sandbox_id, error.node_id, error.kind, error.message,
       error.context_json, error.created_ms});
}

Result<SandboxRow> LoadSandbox(Database& db, const std::string& id) {
  auto rows = TRY(db.Query("SELECT " + SandboxColumns() + " FROM sandboxes WHERE id = $1", {id}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no sandbox '" + id + "'");
  return ParseSandbox(rows[0]);
}

// The job with its sandbox, row-locked on PostgreSQL.
Result<std::pair<JobRow, SandboxRow>> LoadJobAndSandbox(Database& db, const std::string& id) {
  std::string sql = "SELECT " + JobColumns("j.") + ", " + SandboxColumns("s.") +
                    " FROM jobs j JOIN sandboxes s ON s.id = j.id WHERE j.id = $1";
  if (db.dialect() == Dialect::kPostgres) sql += " FOR UPDATE";
  auto rows = TRY(db.Query(sql, {id}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no sandbox '" + id + "'");
  return std::pair{ParseJob(rows[0]), ParseSandbox(rows[0], 18)};
}

// The job and sandbox when (node, attempt) is the current hand-out and the job is in one of
// `states`; a stale-attempt error otherwise.
Result<std::pair<JobRow, SandboxRow>> LoadCurrent(Database& db, const std::string& sandbox_id,
                                                  const std::string& node_id, int attempt,
                                                  std::initializer_list<std::string_view> states) {
  auto [job, sandbox] = TRY(LoadJobAndSandbox(db, sandbox_id));
  bool state_ok = std::find(states.begin(), states.end(), job.state) != states.end();
  if (job.node_id != node_id || sandbox.attempt != attempt || !state_ok) {
    return Fail(ErrorCode::kFailedPrecondition,
                "stale attempt: sandbox " + sandbox_id + " attempt " + std::to_string(attempt) +
                    " on node " + node_id + " is not current (now attempt " +
                    std::to_string(sandbox.attempt) + " on node '" + job.node_id + "', job " +
                    job.state + ")");
  }
  return std::pair{std::move(job), std::move(sandbox)};
}

// The reservation columns of nodes (schema 3) hold the sums over each node's assigned and
// running jobs. Every transaction that moves a job out of assigned/running calls this in the
// same transaction (placement adds in AssignJob; a lost node is zeroed in ExpireLeases).
// Lock order is job rows, then node rows, everywhere, so reports and heartbeats cannot
// deadlock with each other.
Status ReleaseReservation(Database& tx, const JobRow& job) {
  if (job.node_id.empty() || (job.state != "assigned" && job.state != "running")) return Ok();
  return tx.Exec(
      "UPDATE nodes SET reserved_millicpus = reserved_millicpus - $2, "
      "reserved_memory_bytes = reserved_memory_bytes - $3, active_jobs = active_jobs - 1 "
      "WHERE id = $1",
      {job.node_id, job.millicpus, job.memory_bytes});
}

// Hands a queued job to a node: job assigned, sandbox assigned, node reservation grown.
// PostgreSQL does the three in one statement (one round trip on the hot path).
Status AssignJob(Database& tx, const JobRow& job, const NodeRow& node, int64_t now_ms) {
  constexpr std::string_view kJob =
      "UPDATE jobs SET state = 'assigned', attempts = attempts + 1, node_id = $2, "
      "lease_ms = $3, reason = '', updated_ms = $4 WHERE id = $1";
  constexpr std::string_view kSandbox =
      "UPDATE sandboxes SET state = 'assigned', node_id = $2, attempt = attempt + 1, "
      "reason = '' WHERE id = $1";
  constexpr std::string_view kNode =
      "UPDATE nodes SET reserved_millicpus = reserved_millicpus + $5, "
      "reserved_memory_bytes = reserved_memory_bytes + $6, active_jobs = active_jobs + 1 "
      "WHERE id = $2";
  std::vector<Value> params{job.id, node.id,       node.lease_ms,
                            now_ms, job.millicpus, job.memory_bytes};
  if (tx.dialect() == Dialect::kPostgres) {
    // Data-modifying CTEs all run, exactly once, whether or not the outer query reads them.
    return tx.Exec("WITH j AS (" + std::string(kJob) + " RETURNING id), s AS (" +
                       std::string(kSandbox) + " RETURNING id) " + std::string(kNode),
                   std::move(params));
  }
  TRY(tx.Exec(kJob, {job.id, node.id, node.lease_ms, now_ms}));
  TRY(tx.Exec(kSandbox, {job.id, node.id}));
  return tx.Exec(kNode, std::move(params));
}

// ---- Themis's counters (schema 4): tenant_usage holds each tenant's active count and its
// creation-rate windows, changed in the same transaction as the sandboxes they count.

static_assert(internal::kRateWindows.size() == kRateWindowLengthsMs.size());

bool IsActiveSandboxState(std::string_view state) {
  return state == "queued" || state == "assigned" || state == "running";
}

// How a sandbox's move from `before` to `after` changes its tenant's active count.
int64_t ActiveDelta(std::string_view before, std::string_view after) {
  return int64_t{IsActiveSandboxState(after)} - int64_t{IsActiveSandboxState(before)};
}

// Changes to tenants' active counts, by tenant id. Applied as the last step of a
// transaction, in tenant id order: tenant rows are locked after job and node rows, and in
// one order everywhere, so transactions that touch several tenants cannot deadlock.
using ActiveDeltas = std::map<std::string, int64_t>;

Status ApplyActiveDeltas(Database& tx, const ActiveDeltas& deltas) {
  for (const auto& [tenant_id, delta] : deltas) {
    if (delta == 0) continue;
    // An upsert, so a tenant whose row is missing (a hand-edited store) still gets one.
    TRY(tx.Exec(
        "INSERT INTO tenant_usage (tenant_id, active) VALUES ($1, $2) ON CONFLICT (tenant_id) "
        "DO UPDATE SET active = tenant_usage.active + excluded.active",
        {tenant_id, delta}));
  }
  return Ok();
}

Status ApplyActiveDelta(Database& tx, const std::string& tenant_id, std::string_view before,
                        std::string_view after) {
  return ApplyActiveDeltas(tx, {{tenant_id, ActiveDelta(before, after)}});
}

// The upsert that counts one creation: active + 1, and each rate window moved to the window
// that holds the creation ($starts[i], its start) before counting it. A creation older than
// the current window (another replica's clock behind) counts in the current one.
std::string CountCreationSql(std::string_view tenant, const std::array<std::string, 3>& starts) {
  std::string columns = "tenant_id, active", values = std::string(tenant) + ", 1";
  std::string updates = "active = tenant_usage.active + 1";
  for (size_t i = 0; i < internal::kRateWindows.size(); ++i) {
    const internal::RateWindowColumns& w = internal::kRateWindows[i];
    const std::string old_start = "tenant_usage." + w.start, next_start = "excluded." + w.start;
    const std::string length = std::to_string(w.length_ms);
    columns += ", " + w.start + ", " + w.current + ", " + w.previous;
    values += ", " + starts[i] + ", 1, 0";
    // SET expressions all read the row as it was before the update.
    updates += ", " + w.previous + " = CASE WHEN " + next_start + " = " + old_start + " + " +
               length + " THEN tenant_usage." + w.current + " WHEN " + next_start + " > " +
               old_start + " THEN 0 ELSE tenant_usage." + w.previous + " END";
    updates += ", " + w.current + " = CASE WHEN " + next_start + " > " + old_start +
               " THEN 1 ELSE tenant_usage." + w.current + " + 1 END";
    updates += ", " + w.start + " = CASE WHEN " + next_start + " > " + old_start + " THEN " +
               next_start + " ELSE " + old_start + " END";
  }
  return "INSERT INTO tenant_usage (" + columns + ") VALUES (" + values +
         ") ON CONFLICT (tenant_id) DO UPDATE SET " + updates;
}

std::string TenantUsageColumns(std::string_view prefix) {
  std::string out = std::string(prefix) + "active";
  for (const internal::RateWindowColumns& w : internal::kRateWindows) {
    for (const std::string* column : {&w.start, &w.current, &w.previous}) {
      out += ", " + std::string(prefix) + *column;
    }
  }
  return out;
}
constexpr size_t kTenantUsageColumnCount = 10;

TenantUsageRow ParseTenantUsage(const std::string& tenant_id, const Row& row, size_t at = 0) {
  TenantUsageRow usage{.tenant_id = tenant_id, .active = row.Int(at)};
  for (size_t i = 0; i < usage.windows.size(); ++i) {
    usage.windows[i] = RateWindow{.start_ms = row.Int(at + 1 + 3 * i),
                                  .current = row.Int(at + 2 + 3 * i),
                                  .previous = row.Int(at + 3 + 3 * i)};
  }
  return usage;
}

std::string PageToken(const SandboxRow& row) {
  return std::to_string(row.created_ms) + "." + row.id;
}

Result<std::pair<int64_t, std::string>> ParsePageToken(const std::string& token) {
  size_t dot = token.find('.');
  int64_t created_ms = 0;
  if (dot != std::string::npos && dot > 0) {
    auto [end, ec] = std::from_chars(token.data(), token.data() + dot, created_ms);
    if (ec == std::errc() && end == token.data() + dot && dot + 1 < token.size()) {
      return std::pair{created_ms, token.substr(dot + 1)};
    }
  }
  return Fail(ErrorCode::kInvalidArgument, "bad page_token '" + token + "'");
}

bool LabelsMatch(const std::map<std::string, std::string>& want,
                 const std::map<std::string, std::string>& have) {
  for (const auto& [key, value] : want) {
    auto found = have.find(key);
    if (found == have.end() || found->second != value) return false;
  }
  return true;
}

}  // namespace

std::string ControlStore::NewId(std::string_view prefix) {
  return std::string(prefix) + RandomHex(12);
}

Result<std::unique_ptr<ControlStore>> ControlStore::Open(const std::string& url,
                                                         RetryPolicy retry) {
  auto db = TRY(OpenDatabase(url));
  TRY(Migrate(*db));
  return std::make_unique<ControlStore>(std::move(db), retry);
}

ControlStore::ControlStore(std::shared_ptr<Database> db, RetryPolicy retry)
    : db_(std::move(db)), retry_(retry) {
  if (retry_.base_backoff_ms < 0) retry_.base_backoff_ms = 0;
  if (retry_.max_backoff_ms < retry_.base_backoff_ms)
    retry_.max_backoff_ms = retry_.base_backoff_ms;
}

int64_t ControlStore::BackoffMs(int attempts) const {
  int64_t backoff = retry_.base_backoff_ms;
  for (int i = 1; i < attempts && backoff < retry_.max_backoff_ms; ++i) backoff *= 2;
  return std::min(backoff, retry_.max_backoff_ms);
}

// ---------------------------------------------------------------- tenants and tokens

Result<Tenant> ControlStore::CreateTenant(const std::string& name) {
  if (name.empty()) return Fail(ErrorCode::kInvalidArgument, "tenant name is empty");
  Tenant tenant{.id = NewId("ten_"), .name = name, .created_ms = WallMs()};
  auto inserted = db_->Exec("INSERT INTO tenants (id, name, created_ms) VALUES ($1, $2, $3)",
                            {tenant.id, tenant.name, tenant.created_ms});
  if (!inserted) {
    if (inserted.error().code == ErrorCode::kAlreadyExists) {
      return Fail(ErrorCode::kAlreadyExists, "tenant '" + name + "' already exists");
    }
    return Fail(inserted.error().Context("creating tenant '" + name + "'"));
  }
  return tenant;
}

Result<Tenant> ControlStore::GetTenant(const std::string& id_or_name) {
  auto rows = TRY(db_->Query(
      "SELECT id, name, created_ms FROM tenants WHERE id = $1 OR name = $1 ORDER BY id = $1 DESC",
      {id_or_name}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no tenant '" + id_or_name + "'");
  return Tenant{.id = rows[0].Text(0), .name = rows[0].Text(1), .created_ms = rows[0].Int(2)};
}

Result<std::vector<Tenant>> ControlStore::ListTenants() {
  auto rows = TRY(db_->Query("SELECT id, name, created_ms FROM tenants ORDER BY name"));
  std::vector<Tenant> out;
  for (const Row& row : rows) {
    out.push_back(Tenant{.id = row.Text(0), .name = row.Text(1), .created_ms = row.Int(2)});
  }
  return out;
}

Result<std::pair<TokenInfo, std::string>> ControlStore::CreateToken(const std::string& tenant_id,
                                                                    const std::string& name) {
  Tenant tenant = TRY(GetTenant(tenant_id));
  std::string secret = "tt_" + RandomHex(16);
  TokenInfo token{.id = NewId("tok_"), .tenant_id = tenant.id, .name = name};
  token.created_ms = WallMs();
  auto inserted = db_->Exec(
      "INSERT INTO tokens (id, tenant_id, name, secret_hash, created_ms) "
      "VALUES ($1, $2, $3, $4, $5)",
      {token.id, token.tenant_id, token.name, Sha256Hex(secret), token.created_ms});
  if (!inserted) return Fail(inserted.error().Context("creating a token"));
  return std::pair{std::move(token), std::move(secret)};
}

Result<Tenant> ControlStore::Authenticate(std::string_view secret) {
  auto denied = [] { return Fail(ErrorCode::kPermissionDenied, "unknown or revoked token"); };
  if (secret.size() != 35 || secret.substr(0, 3) != "tt_") return denied();
  auto rows = TRY(db_->Query(
      "SELECT t.id, t.name, t.created_ms FROM tokens k JOIN tenants t ON t.id = k.tenant_id "
      "WHERE k.secret_hash = $1 AND k.revoked_ms IS NULL",
      {Sha256Hex(secret)}));
  if (rows.empty()) return denied();
  return Tenant{.id = rows[0].Text(0), .name = rows[0].Text(1), .created_ms = rows[0].Int(2)};
}

Result<std::vector<TokenInfo>> ControlStore::ListTokens(const std::string& tenant_id) {
  std::string sql = std::string("SELECT ") + kTokenColumns + " FROM tokens";
  std::vector<Value> params;
  if (!tenant_id.empty()) {
    sql += " WHERE tenant_id = $1";
    params.push_back(tenant_id);
  }
  sql += " ORDER BY created_ms, id";
  auto rows = TRY(db_->Query(sql, std::move(params)));
  std::vector<TokenInfo> out;
  for (const Row& row : rows) out.push_back(ParseToken(row));
  return out;
}

Status ControlStore::RevokeToken(const std::string& token_id) {
  auto rows = TRY(db_->Query(
      "UPDATE tokens SET revoked_ms = COALESCE(revoked_ms, $2) WHERE id = $1 RETURNING id",
      {token_id, WallMs()}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no token '" + token_id + "'");
  return Ok();
}

// ---------------------------------------------------------------- policies

Status ControlStore::PutPolicy(const PolicyRow& policy) {
  if (policy.name.empty()) return Fail(ErrorCode::kInvalidArgument, "policy name is empty");
  int64_t updated_ms = policy.updated_ms != 0 ? policy.updated_ms : WallMs();
  return db_->Exec(
      "INSERT INTO policies (name, tenant, template, yaml, updated_ms) VALUES ($1, $2, $3, $4, $5) "
      "ON CONFLICT (name) DO UPDATE SET tenant = excluded.tenant, template = excluded.template, "
      "yaml = excluded.yaml, updated_ms = excluded.updated_ms",
      {policy.name, policy.tenant, policy.template_name, policy.yaml, updated_ms});
}

Result<PolicyRow> ControlStore::GetPolicy(const std::string& name) {
  auto rows = TRY(db_->Query(
      std::string("SELECT ") + kPolicyColumns + " FROM policies WHERE name = $1", {name}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no policy '" + name + "'");
  return ParsePolicy(rows[0]);
}

Result<std::vector<PolicyRow>> ControlStore::ListPolicies() {
  auto rows =
      TRY(db_->Query(std::string("SELECT ") + kPolicyColumns + " FROM policies ORDER BY name"));
  std::vector<PolicyRow> out;
  for (const Row& row : rows) out.push_back(ParsePolicy(row));
  return out;
}

Status ControlStore::DeletePolicy(const std::string& name) {
  auto rows = TRY(db_->Query("DELETE FROM policies WHERE name = $1 RETURNING name", {name}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no policy '" + name + "'");
  return Ok();
}

// ---------------------------------------------------------------- sandboxes

Result<std::pair<SandboxRow, bool>> ControlStore::CreateSandbox(const SandboxRow& sandbox_in,
                                                                const JobRow& job_in) {
  if (sandbox_in.tenant_id.empty()) {
    return Fail(ErrorCode::kInvalidArgument, "sandbox has no tenant");
  }
  if (job_in.max_attempts < 1) {
    return Fail(ErrorCode::kInvalidArgument,
                "max_attempts must be at least 1, got " + std::to_string(job_in.max_attempts));
  }
  if (job_in.millicpus < 0 || job_in.memory_bytes < 0) {
    return Fail(ErrorCode::kInvalidArgument, "negative resource request");
  }
  SandboxRow sandbox = sandbox_in;
  if (sandbox.id.empty()) sandbox.id = NewId("sb_");
  if (sandbox.created_ms == 0) sandbox.created_ms = WallMs();
  if (sandbox.spec_json.empty()) sandbox.spec_json = "{}";
  sandbox.state = "queued";
  sandbox.node_id.clear();
  sandbox.attempt = 0;
  sandbox.exit_code.reset();
  sandbox.signal = 0;
  sandbox.timed_out = false;
  sandbox.kill_requested = false;
  sandbox.error.clear();
  sandbox.started_ms = sandbox.finished_ms = 0;
  JobRow job = job_in;
  job.id = sandbox.id;
  job.state = "queued";
  job.attempts = 0;
  job.node_id.clear();
  job.lease_ms = 0;
  if (job.available_ms == 0) job.available_ms = sandbox.created_ms;
  job.created_ms = job.updated_ms = sandbox.created_ms;
  if (job.template_name.empty()) job.template_name = sandbox.template_name;
  if (job.runtime.empty()) job.runtime = sandbox.runtime;

  auto find_existing = [&](Database& db) -> Result<std::optional<SandboxRow>> {
    auto rows = TRY(db.Query("SELECT " + SandboxColumns() +
                                 " FROM sandboxes WHERE tenant_id = $1 AND idempotency_key = $2",
                             {sandbox.tenant_id, sandbox.idempotency_key}));
    if (rows.empty()) return std::optional<SandboxRow>();
    return std::optional<SandboxRow>(ParseSandbox(rows[0]));
  };

  // One parameter list for both inserts: $1..$10 the sandbox, $11..$21 its job ($1 is the
  // job's id too), $22 the wake-up channel, $23..$25 the starts of the tenant's rate
  // windows that hold created_ms.
  constexpr std::string_view kInsertSandbox =
      "INSERT INTO sandboxes (id, tenant_id, template, runtime, state, spec_json, labels_json, "
      "attempt, created_ms, idempotency_key, reason) "
      "VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10)";
  constexpr std::string_view kInsertJob =
      "INSERT INTO jobs (id, priority, state, attempts, max_attempts, available_ms, "
      "deadline_ms, lease_ms, millicpus, memory_bytes, template, runtime, selector_json, "
      "reason, last_error, created_ms, updated_ms) "
      "VALUES ($1, $11, $12, 0, $13, $14, $15, 0, $16, $17, $18, $19, $20, $21, '', $8, $8)";
  std::vector<Value> params{sandbox.id,
                            sandbox.tenant_id,
                            sandbox.template_name,
                            sandbox.runtime,
                            sandbox.state,
                            sandbox.spec_json,
                            MapToJson(sandbox.labels),
                            sandbox.created_ms,
                            NullableText(sandbox.idempotency_key),
                            sandbox.reason,
                            int64_t{job.priority},
                            job.state,
                            int64_t{job.max_attempts},
                            job.available_ms,
                            job.deadline_ms,
                            job.millicpus,
                            job.memory_bytes,
                            job.template_name,
                            job.runtime,
                            MapToJson(job.selector),
                            job.reason,
                            std::string(kJobsChannel)};
  std::array<int64_t, 3> window_starts;
  params.resize(22 + window_starts.size());  // assigned, not pushed: see BackfillTenantUsage
  for (size_t i = 0; i < window_starts.size(); ++i) {
    window_starts[i] =
        internal::RateWindowStart(sandbox.created_ms, internal::kRateWindows[i].length_ms);
    params[22 + i] = window_starts[i];
  }
  bool postgres = db_->dialect() == Dialect::kPostgres;
  // PostgreSQL: both inserts, the tenant's counters and the wake-up in one statement, which
  // is its own transaction (one round trip instead of six; the notification goes out at its
  // commit). The idempotency check needs a read first, so keyed creates take the transaction
  // below.
  const std::string insert_and_notify =
      "WITH s AS (" + std::string(kInsertSandbox) + "), j AS (" + std::string(kInsertJob) +
      "), u AS (" + CountCreationSql("$2", {"$23", "$24", "$25"}) + ") SELECT pg_notify($22, '')";

  std::optional<SandboxRow> existing;
  Status status = Ok();
  if (postgres && sandbox.idempotency_key.empty()) {
    status = db_->Exec(insert_and_notify, params);
  } else {
    status = db_->Transaction([&](Database& tx) -> Status {
      existing.reset();
      if (!sandbox.idempotency_key.empty()) {
        existing = TRY(find_existing(tx));
        if (existing) return Ok();
      }
      if (postgres) return tx.Exec(insert_and_notify, params);  // delivered at commit
      // SQLite numbers placeholders by the highest one used, so the job keeps $1..$21 and
      // the sandbox insert gets the list cut after $10.
      TRY(tx.Exec(kInsertSandbox, std::vector<Value>(params.begin(), params.begin() + 10)));
      TRY(tx.Exec(kInsertJob, std::vector<Value>(params.begin(), params.begin() + 21)));
      return tx.Exec(CountCreationSql("$1", {"$2", "$3", "$4"}),
                     {sandbox.tenant_id, window_starts[0], window_starts[1], window_starts[2]});
    });
  }
  if (!status) {
    // Two replicas raced on one idempotency key (PostgreSQL): the loser returns the winner's.
    if (status.error().code == ErrorCode::kAlreadyExists && !sandbox.idempotency_key.empty()) {
      auto found = TRY(find_existing(*db_));
      if (found) return std::pair{std::move(*found), false};
    }
    return Fail(status.error().Context("creating sandbox"));
  }
  if (existing) return std::pair{std::move(*existing), false};
  if (!postgres) (void)db_->Notify(kJobsChannel);  // best effort: schedulers also poll
  return std::pair{std::move(sandbox), true};
}

Result<SandboxRow> ControlStore::GetSandbox(const std::string& id) { return LoadSandbox(*db_, id); }

Result<std::vector<std::string>> ControlStore::FindSandboxIdsByPrefix(const std::string& tenant_id,
                                                                      const std::string& prefix,
                                                                      int limit) {
  // substr rather than LIKE (no escaping) or a range (PostgreSQL's collation may not order
  // ids bytewise); the tenant's index bounds the scan.
  std::string sql =
      "SELECT id FROM sandboxes WHERE substr(id, 1, " + std::to_string(prefix.size()) + ") = $1";
  std::vector<Value> params{prefix};
  if (!tenant_id.empty()) {
    params.push_back(tenant_id);
    sql += " AND tenant_id = $2";
  }
  sql += " ORDER BY id LIMIT " + std::to_string(std::max(1, limit));
  auto rows = TRY(db_->Query(sql, params));
  std::vector<std::string> ids;
  for (const Row& row : rows) ids.push_back(row.Text(0));
  return ids;
}

Result<SandboxPage> ControlStore::ListSandboxes(const SandboxFilter& filter) {
  int limit = std::clamp(filter.limit <= 0 ? 100 : filter.limit, 1, 1000);
  std::optional<std::pair<int64_t, std::string>> cursor;
  if (!filter.page_token.empty()) cursor = TRY(ParsePageToken(filter.page_token));

  // Label filters run here (their JSON is opaque to SQL), so scan in chunks until the
  // page is full or the table ends.
  int chunk = filter.labels.empty() ? limit + 1 : std::max(limit + 1, 200);
  SandboxPage page;
  std::vector<SandboxRow> matched;
  while (true) {
    std::string sql = "SELECT " + SandboxColumns() + " FROM sandboxes WHERE 1 = 1";
    std::vector<Value> params;
    auto add = [&](std::string_view column, const std::string& value) {
      if (value.empty()) return;
      params.push_back(value);
      sql += " AND " + std::string(column) + " = $" + std::to_string(params.size());
    };
    add("tenant_id", filter.tenant_id);
    add("state", filter.state);
    add("template", filter.template_name);
    add("node_id", filter.node_id);
    if (cursor) {
      params.push_back(cursor->first);
      std::string ms = "$" + std::to_string(params.size());
      params.push_back(cursor->second);
      std::string id = "$" + std::to_string(params.size());
      sql += " AND (created_ms < " + ms + " OR (created_ms = " + ms + " AND id < " + id + "))";
    }
    params.push_back(int64_t{chunk});
    sql += " ORDER BY created_ms DESC, id DESC LIMIT $" + std::to_string(params.size());
    auto rows = TRY(db_->Query(sql, std::move(params)));
    for (const Row& row : rows) {
      SandboxRow sandbox = ParseSandbox(row);
      cursor = std::pair{sandbox.created_ms, sandbox.id};
      if (!LabelsMatch(filter.labels, sandbox.labels)) continue;
      matched.push_back(std::move(sandbox));
      if (static_cast<int>(matched.size()) > limit) break;
    }
    if (static_cast<int>(matched.size()) > limit || static_cast<int>(rows.size()) < chunk) break;
  }
  if (static_cast<int>(matched.size()) > limit) {
    matched.resize(limit);
    page.next_page_token = PageToken(matched.back());
  }
  page.items = std::move(matched);
  return page;
}

Result<AdmissionSnapshot> ControlStore::ReadAdmission(const std::string& tenant_id) {
  // One row per policy (or one row of NULLs when there is none), each carrying the tenant's
  // counters (NULLs when the tenant has no row yet).
  auto rows =
      TRY(db_->Query("SELECT " + TenantUsageColumns("u.") + ", " +
                         Columns("p.", {"name", "tenant", "template", "yaml", "updated_ms"}) +
                         " FROM (SELECT 1 AS one) o "
                         "LEFT JOIN tenant_usage u ON u.tenant_id = $1 "
                         "LEFT JOIN policies p ON 1 = 1 ORDER BY p.name",
                     {tenant_id}));
  AdmissionSnapshot snapshot;
  snapshot.usage.tenant_id = tenant_id;
  if (!rows.empty()) snapshot.usage = ParseTenantUsage(tenant_id, rows[0]);
  for (const Row& row : rows) {
    if (row.IsNull(kTenantUsageColumnCount)) continue;
    Row policy;
    policy.values.assign(row.values.begin() + kTenantUsageColumnCount, row.values.end());
    snapshot.policies.push_back(ParsePolicy(policy));
  }
  return snapshot;
}

Result<TenantUsageRow> ControlStore::GetTenantUsage(const std::string& tenant_id) {
  auto rows = TRY(db_->Query(
      "SELECT " + TenantUsageColumns("") + " FROM tenant_usage WHERE tenant_id = $1", {tenant_id}));
  if (rows.empty()) return TenantUsageRow{.tenant_id = tenant_id};
  return ParseTenantUsage(tenant_id, rows[0]);
}

Result<std::map<std::string, int64_t>> ControlStore::RecomputeActiveSandboxes() {
  auto rows =
      TRY(db_->Query("SELECT tenant_id, COUNT(*) FROM sandboxes WHERE state IN ('queued', "
                     "'assigned', 'running') GROUP BY tenant_id"));
  std::map<std::string, int64_t> out;
  for (const Row& row : rows) out[row.Text(0)] = row.Int(1);
  return out;
}

Result<int64_t> ControlStore::CountActiveSandboxes(const std::string& tenant_id) {
  auto rows = TRY(db_->Query(
      "SELECT COUNT(*) FROM sandboxes WHERE tenant_id = $1 AND state IN ('queued', 'assigned', "
      "'running')",
      {tenant_id}));
  return rows.empty() ? 0 : rows[0].Int(0);
}

Result<int64_t> ControlStore::CountSandboxesCreatedSince(const std::string& tenant_id,
                                                         int64_t since_ms) {
  auto rows =
      TRY(db_->Query("SELECT COUNT(*) FROM sandboxes WHERE tenant_id = $1 AND created_ms >= $2",
                     {tenant_id, since_ms}));
  return rows.empty() ? 0 : rows[0].Int(0);
}

Result<SandboxRow> ControlStore::RequestKill(const std::string& id, int64_t now_ms) {
  SandboxRow result;
  auto status = db_->Transaction([&](Database& tx) -> Status {
    auto [job, sandbox] = TRY(LoadJobAndSandbox(tx, id));
    if (sandbox.state == "queued") {
      TRY(
          tx.Exec("UPDATE sandboxes SET state = 'killed', kill_requested = 1, reason = '', "
                  "finished_ms = $2 WHERE id = $1",
                  {id, now_ms}));
      TRY(tx.Exec("UPDATE jobs SET state = 'done', reason = '', updated_ms = $2 WHERE id = $1",
                  {id, now_ms}));
      TRY(ApplyActiveDelta(tx, sandbox.tenant_id, sandbox.state, "killed"));
    } else if (sandbox.state == "assigned" || sandbox.state == "running") {
      TRY(tx.Exec("UPDATE sandboxes SET kill_requested = 1 WHERE id = $1", {id}));
    }
    result = TRY(LoadSandbox(tx, id));
    return Ok();
  });
  if (!status) return Fail(status.error());
  return result;
}

Status ControlStore::DeleteSandbox(const std::string& id) {
  return db_->Transaction([&](Database& tx) -> Status {
    SandboxRow sandbox = TRY(LoadSandbox(tx, id));
    if (!IsFinalSandboxState(sandbox.state)) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "sandbox " + id + " is " + sandbox.state + ": kill it before removing it");
    }
    // A final sandbox's job no longer holds a reservation; release one anyway should a
    // hand-edited row say otherwise, so the node's columns never keep a phantom.
    auto deleted = TRY(tx.Query(
        "DELETE FROM jobs WHERE id = $1 RETURNING state, node_id, millicpus, memory_bytes", {id}));
    for (const Row& row : deleted) {
      TRY(ReleaseReservation(tx, JobRow{.state = row.Text(0),
                                        .node_id = row.Text(1),
                                        .millicpus = row.Int(2),
                                        .memory_bytes = row.Int(3)}));
    }
    TRY(tx.Exec("DELETE FROM sandboxes WHERE id = $1", {id}));
    return Ok();
  });
}

// ---------------------------------------------------------------- Moirai's batch

Result<int> ControlStore::ScheduleBatch(int64_t now_ms, int limit, const PlaceFn& place) {
  if (limit <= 0) return 0;
  int assigned = 0;
  auto status = db_->Transaction([&](Database& tx) -> Status {
    assigned = 0;
    ActiveDeltas deltas;  // sandboxes failed for their deadline
    bool postgres = tx.dialect() == Dialect::kPostgres;
    auto job_rows = TRY(tx.Query("SELECT " + JobColumns() +
                                     " FROM jobs WHERE state = 'queued' AND available_ms <= $1 "
                                     "ORDER BY priority DESC, created_ms, id LIMIT $2" +
                                     (postgres ? " FOR UPDATE SKIP LOCKED" : ""),
                                 {now_ms, int64_t{limit}}));
    if (job_rows.empty()) return Ok();

    // Locking the nodes serializes the placement step of concurrent schedulers, and the
    // reservation columns read under the lock include every placement committed before it.
    // Every node is passed, so a job that fits nowhere gets a reason naming cordoned and
    // lost ones too.
    auto node_rows = TRY(tx.Query("SELECT " + NodeColumns() + " FROM nodes ORDER BY id" +
                                  (postgres ? " FOR UPDATE" : "")));
    std::vector<NodeRow> nodes;
    for (const Row& row : node_rows) {
      NodeRow node = ParseNode(row);
      if (node.lease_ms <= now_ms) node.state = "lost";  // lapsed, not yet expired by Hades
      nodes.push_back(std::move(node));
    }

    for (const Row& row : job_rows) {
      JobRow job = ParseJob(row);
      std::string reason;
      std::optional<std::string> chosen = place(job, nodes, &reason);
      auto node = chosen ? std::find_if(nodes.begin(), nodes.end(),
                                        [&](const NodeRow& n) { return n.id == *chosen; })
                         : nodes.end();
      if (chosen && (node == nodes.end() || node->state != "ready")) {
        reason = "placement chose node '" + *chosen + "', which is not ready";
        chosen.reset();
      }
      if (chosen) {
        node->reserved_millicpus += job.millicpus;
        node->reserved_memory_bytes += job.memory_bytes;
        node->active_jobs += 1;
        TRY(AssignJob(tx, job, *node, now_ms));
        ++assigned;
        continue;
      }
      if (reason.empty()) reason = "no node can run it";
      if (job.deadline_ms > 0 && now_ms > job.deadline_ms) {
        std::string error = "not scheduled before its deadline: " + reason;
        TRY(tx.Exec("UPDATE jobs SET state = 'done', reason = $2, updated_ms = $3 WHERE id = $1",
                    {job.id, reason, now_ms}));
        TRY(tx.Exec(
            "UPDATE sandboxes SET state = 'failed', error = $2, reason = $3, finished_ms = $4 "
            "WHERE id = $1",
            {job.id, error, reason, now_ms}));
        SandboxRow sandbox = TRY(LoadSandbox(tx, job.id));
        deltas[sandbox.tenant_id] += ActiveDelta("queued", sandbox.state);
        TRY(InsertError(tx, ErrorRow{.tenant_id = sandbox.tenant_id,
                                     .sandbox_id = job.id,
                                     .kind = "scheduling",
                                     .message = error,
                                     .created_ms = now_ms}));
        continue;
      }
      if (reason != job.reason) {
        TRY(tx.Exec("UPDATE jobs SET reason = $2, updated_ms = $3 WHERE id = $1",
                    {job.id, reason, now_ms}));
        TRY(tx.Exec("UPDATE sandboxes SET reason = $2 WHERE id = $1", {job.id, reason}));
      }
    }
    return ApplyActiveDeltas(tx, deltas);
  });
  if (!status) return Fail(status.error().Context("scheduling"));
  return assigned;
}

// ---------------------------------------------------------------- Hades

Result<NodeRow> ControlStore::RegisterNode(const NodeRow& node, int64_t now_ms,
                                           int64_t lease_duration_ms) {
  if (node.id.empty()) return Fail(ErrorCode::kInvalidArgument, "node id is empty");
  if (node.millicpus < 0 || node.memory_bytes < 0) {
    return Fail(ErrorCode::kInvalidArgument, "node " + node.id + " reports negative capacity");
  }
  if (lease_duration_ms <= 0) {
    return Fail(ErrorCode::kInvalidArgument, "lease duration must be positive");
  }
  std::string first_state = node.state.empty() ? "ready" : node.state;
  if (first_state != "ready" && first_state != "cordoned" && first_state != "draining") {
    return Fail(ErrorCode::kInvalidArgument, "bad node state '" + node.state + "'");
  }
  auto status = db_->Transaction([&](Database& tx) -> Status {
    // Jobs still assigned here (a restart inside the lease) carry the new lease. Job rows
    // before the node row: the lock order every transaction keeps.
    TRY(tx.Exec(
        "UPDATE jobs SET lease_ms = $2 WHERE node_id = $1 AND state IN ('assigned', 'running')",
        {node.id, now_ms + lease_duration_ms}));
    // An existing node keeps cordoned/draining; lost comes back ready. The reservation
    // columns are not touched: they belong to the jobs still placed here.
    TRY(
        tx.Exec("INSERT INTO nodes (id, name, address, millicpus, memory_bytes, labels_json, "
                "runtimes_json, templates_json, state, lease_ms, registered_ms, heartbeat_ms) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address, "
                "millicpus = excluded.millicpus, memory_bytes = excluded.memory_bytes, "
                "labels_json = excluded.labels_json, runtimes_json = excluded.runtimes_json, "
                "templates_json = excluded.templates_json, "
                "state = CASE WHEN nodes.state = 'lost' THEN 'ready' ELSE nodes.state END, "
                "lease_ms = excluded.lease_ms, registered_ms = excluded.registered_ms, "
                "heartbeat_ms = excluded.heartbeat_ms",
                {node.id, node.name, node.address, node.millicpus, node.memory_bytes,
                 MapToJson(node.labels), ListToJson(node.runtimes), ListToJson(node.templates),
                 first_state, now_ms + lease_duration_ms, now_ms}));
    return Ok();
  });
  if (!status) return Fail(status.error().Context("registering node " + node.id));
  return GetNode(node.id);
}

Result<HeartbeatReply> ControlStore::Heartbeat(const std::string& node_id,
                                               const std::vector<std::string>& templates,
                                               int64_t now_ms, int64_t lease_duration_ms) {
  HeartbeatReply reply;
  auto status = db_->Transaction([&](Database& tx) -> Status {
    reply = {};
    auto rows = TRY(tx.Query("SELECT state FROM nodes WHERE id = $1", {node_id}));
    if (rows.empty()) return Fail(ErrorCode::kNotFound, "no node '" + node_id + "'");
    if (rows[0].Text(0) == "lost") {
      return Fail(ErrorCode::kFailedPrecondition,
                  "node " + node_id + " is lost (its lease lapsed): register again");
    }
    int64_t lease_ms = now_ms + lease_duration_ms;
    // Job rows before the node row: the lock order every transaction keeps.
    TRY(tx.Exec(
        "UPDATE jobs SET lease_ms = $2 WHERE node_id = $1 AND state IN ('assigned', 'running')",
        {node_id, lease_ms}));
    TRY(tx.Exec(
        "UPDATE nodes SET lease_ms = $2, heartbeat_ms = $3, templates_json = $4 WHERE id = $1",
        {node_id, lease_ms, now_ms, ListToJson(templates)}));
    auto assignments = TRY(tx.Query("SELECT " + SandboxColumns("s.") + ", " + JobColumns("j.") +
                                        " FROM jobs j JOIN sandboxes s ON s.id = j.id "
                                        "WHERE j.node_id = $1 AND j.state IN ('assigned', "
                                        "'running') ORDER BY j.created_ms, j.id",
                                    {node_id}));
    for (const Row& row : assignments) {
      Assignment assignment{.sandbox = ParseSandbox(row),
                            .job = ParseJob(row, kSandboxColumnCount)};
      if (assignment.sandbox.kill_requested) reply.kill.push_back(assignment.sandbox.id);
      reply.assignments.push_back(std::move(assignment));
    }
    return Ok();
  });
  if (!status) return Fail(status.error());
  return reply;
}

Status ControlStore::SetNodeState(const std::string& node_id, const std::string& state) {
  if (state != "ready" && state != "cordoned" && state != "draining") {
    return Fail(ErrorCode::kInvalidArgument,
                "bad node state '" + state + "': want ready, cordoned or draining");
  }
  return db_->Transaction([&](Database& tx) -> Status {
    auto rows = TRY(tx.Query("SELECT state FROM nodes WHERE id = $1", {node_id}));
    if (rows.empty()) return Fail(ErrorCode::kNotFound, "no node '" + node_id + "'");
    if (rows[0].Text(0) == "lost" && state == "ready") {
      return Fail(ErrorCode::kFailedPrecondition,
                  "node " + node_id + " is lost: it becomes ready when it registers again");
    }
    return tx.Exec("UPDATE nodes SET state = $2 WHERE id = $1", {node_id, state});
  });
}

Result<std::vector<NodeRow>> ControlStore::ListNodes() {
  auto rows = TRY(db_->Query("SELECT " + NodeColumns() + " FROM nodes ORDER BY id"));
  std::vector<NodeRow> out;
  for (const Row& row : rows) out.push_back(ParseNode(row));
  return out;
}

Result<NodeRow> ControlStore::GetNode(const std::string& id) {
  auto rows = TRY(db_->Query("SELECT " + NodeColumns() + " FROM nodes WHERE id = $1", {id}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no node '" + id + "'");
  return ParseNode(rows[0]);
}

Result<std::map<std::string, NodeReservation>> ControlStore::RecomputeReservations() {
  auto rows =
      TRY(db_->Query("SELECT node_id, SUM(millicpus), SUM(memory_bytes), COUNT(*) FROM jobs "
                     "WHERE state IN ('assigned', 'running') AND node_id IS NOT NULL "
                     "GROUP BY node_id"));
  std::map<std::string, NodeReservation> out;
  for (const Row& row : rows) {
    out[row.Text(0)] = NodeReservation{.millicpus = row.Int(1),
                                       .memory_bytes = row.Int(2),
                                       .active_jobs = static_cast<int>(row.Int(3))};
  }
  return out;
}

// ---------------------------------------------------------------- reports from nodes

Status ControlStore::ReportStarted(const std::string& sandbox_id, const std::string& node_id,
                                   int attempt, int64_t now_ms) {
  return db_->Transaction([&](Database& tx) -> Status {
    auto [job, sandbox] =
        TRY(LoadCurrent(tx, sandbox_id, node_id, attempt, {"assigned", "running"}));
    if (job.state == "running") return Ok();  // a repeated report
    TRY(tx.Exec("UPDATE jobs SET state = 'running', updated_ms = $2 WHERE id = $1",
                {sandbox_id, now_ms}));
    TRY(tx.Exec("UPDATE sandboxes SET state = 'running', started_ms = $2 WHERE id = $1",
                {sandbox_id, now_ms}));
    return Ok();
  });
}

Status ControlStore::ReportFinished(const std::string& sandbox_id, const std::string& node_id,
                                    int attempt, const SandboxRow& result, int64_t now_ms) {
  if (result.state != "exited" && result.state != "killed" && result.state != "failed") {
    return Fail(ErrorCode::kInvalidArgument,
                "bad final state '" + result.state + "': want exited, killed or failed");
  }
  return db_->Transaction([&](Database& tx) -> Status {
    auto [job, sandbox] = TRY(LoadJobAndSandbox(tx, sandbox_id));
    // A repeated report (the reply to the first was lost) changes nothing.
    if (job.state == "done" && job.node_id == node_id && sandbox.attempt == attempt &&
        sandbox.state == result.state) {
      return Ok();
    }
    TRY(LoadCurrent(tx, sandbox_id, node_id, attempt, {"assigned", "running"}));
    TRY(ReleaseReservation(tx, job));
    TRY(
        tx.Exec("UPDATE sandboxes SET state = $2, exit_code = $3, signal = $4, timed_out = $5, "
                "error = $6, reason = '', finished_ms = $7 WHERE id = $1",
                {sandbox_id, result.state,
                 result.exit_code ? Value(int64_t{*result.exit_code}) : Value(std::monostate{}),
                 int64_t{result.signal}, int64_t{result.timed_out ? 1 : 0}, result.error, now_ms}));
    TRY(tx.Exec("UPDATE jobs SET state = 'done', reason = '', updated_ms = $2 WHERE id = $1",
                {sandbox_id, now_ms}));
    TRY(ApplyActiveDelta(tx, sandbox.tenant_id, sandbox.state, result.state));
    if (result.state == "failed" || result.timed_out) {
      std::string message = result.error;
      if (message.empty()) message = result.timed_out ? "timed out" : "failed";
      TRY(InsertError(tx, ErrorRow{.tenant_id = sandbox.tenant_id,
                                   .sandbox_id = sandbox_id,
                                   .node_id = node_id,
                                   .kind = result.timed_out ? "timeout" : "runtime",
                                   .message = message,
                                   .context_json = Dump(json{{"attempt", attempt}}),
                                   .created_ms = now_ms}));
    }
    return Ok();
  });
}

Status ControlStore::ReportRetryableFailure(const std::string& sandbox_id,
                                            const std::string& node_id, int attempt,
                                            const std::string& error, int64_t now_ms) {
  bool requeued = false;
  auto status = db_->Transaction([&](Database& tx) -> Status {
    auto [job, sandbox] =
        TRY(LoadCurrent(tx, sandbox_id, node_id, attempt, {"assigned", "running"}));
    requeued = false;
    TRY(ReleaseReservation(tx, job));  // every branch below moves the job off the node
    std::string message = error.empty() ? "the runtime failed to start the sandbox" : error;
    std::string next_state = "queued";
    if (sandbox.kill_requested) {
      next_state = "killed";
      // Nobody wants it any more: do not try again.
      TRY(tx.Exec(
          "UPDATE sandboxes SET state = 'killed', error = $2, finished_ms = $3 WHERE id = $1",
          {sandbox_id, message, now_ms}));
      TRY(tx.Exec("UPDATE jobs SET state = 'done', last_error = $2, updated_ms = $3 WHERE id = $1",
                  {sandbox_id, message, now_ms}));
    } else if (job.attempts >= job.max_attempts) {
      next_state = "failed";
      TRY(tx.Exec("UPDATE jobs SET state = 'dead', last_error = $2, updated_ms = $3 WHERE id = $1",
                  {sandbox_id, message, now_ms}));
      TRY(tx.Exec(
          "UPDATE sandboxes SET state = 'failed', error = $2, finished_ms = $3 WHERE id = $1",
          {sandbox_id,
           message + " (attempt " + std::to_string(job.attempts) + " of " +
               std::to_string(job.max_attempts) + ")",
           now_ms}));
    } else {
      int64_t available_ms = now_ms + BackoffMs(job.attempts);
      std::string reason = "retrying after: " + message;
      TRY(tx.Exec(
          "UPDATE jobs SET state = 'queued', node_id = NULL, lease_ms = 0, available_ms = $2, "
          "last_error = $3, reason = $4, updated_ms = $5 WHERE id = $1",
          {sandbox_id, available_ms, message, reason, now_ms}));
      TRY(tx.Exec(
          "UPDATE sandboxes SET state = 'queued', node_id = NULL, reason = $2 WHERE id = $1",
          {sandbox_id, reason}));
      requeued = true;
    }
    TRY(InsertError(tx, ErrorRow{.tenant_id = sandbox.tenant_id,
                                 .sandbox_id = sandbox_id,
                                 .node_id = node_id,
                                 .kind = "runtime",
                                 .message = message,
                                 .context_json = Dump(json{{"attempt", attempt}}),
                                 .created_ms = now_ms}));
    return ApplyActiveDelta(tx, sandbox.tenant_id, sandbox.state, next_state);
  });
  if (!status) return status;
  if (requeued) (void)db_->Notify(kJobsChannel);
  return Ok();
}

Result<int> ControlStore::ExpireLeases(int64_t now_ms) {
  int lost = 0;
  bool requeued = false;
  auto status = db_->Transaction([&](Database& tx) -> Status {
    lost = 0;
    requeued = false;
    ActiveDeltas deltas;  // sandboxes killed or lost with their node
    bool postgres = tx.dialect() == Dialect::kPostgres;
    auto nodes = TRY(tx.Query(
        "SELECT id FROM nodes WHERE state <> 'lost' AND lease_ms < $1 ORDER BY id", {now_ms}));
    const std::string active_jobs = "SELECT " + JobColumns("j.") + ", " + SandboxColumns("s.") +
                                    " FROM jobs j JOIN sandboxes s ON s.id = j.id WHERE "
                                    "j.node_id = $1 AND j.state IN ('assigned', 'running') "
                                    "ORDER BY j.id" +
                                    (postgres ? " FOR UPDATE" : "");
    for (const Row& node_row : nodes) {
      std::string node_id = node_row.Text(0);
      // Job rows before the node row (the lock order of reports and heartbeats), then the
      // lease again under the node's lock: a heartbeat may have renewed it meanwhile.
      if (postgres) TRY(tx.Query(active_jobs, {node_id}));
      auto still_lapsed = TRY(tx.Query(
          std::string("SELECT id FROM nodes WHERE id = $1 AND state <> 'lost' AND lease_ms < $2") +
              (postgres ? " FOR UPDATE" : ""),
          {node_id, now_ms}));
      if (still_lapsed.empty()) continue;
      // With the node locked no placement can add to it: every active job is handled below,
      // so its reservations drop to zero.
      TRY(
          tx.Exec("UPDATE nodes SET state = 'lost', reserved_millicpus = 0, "
                  "reserved_memory_bytes = 0, active_jobs = 0 WHERE id = $1",
                  {node_id}));
      ++lost;
      auto rows = TRY(tx.Query(active_jobs, {node_id}));
      for (const Row& row : rows) {
        JobRow job = ParseJob(row);
        SandboxRow sandbox = ParseSandbox(row, 18);
        std::string message =
            "node " + node_id + " lost (its lease lapsed) while the sandbox was " + sandbox.state;
        std::string next_state = "queued";
        if (sandbox.kill_requested) {
          next_state = "killed";
          TRY(tx.Exec(
              "UPDATE sandboxes SET state = 'killed', error = $2, finished_ms = $3 WHERE id = $1",
              {job.id, message, now_ms}));
          TRY(tx.Exec(
              "UPDATE jobs SET state = 'done', last_error = $2, updated_ms = $3 WHERE id = $1",
              {job.id, message, now_ms}));
        } else if (job.attempts >= job.max_attempts) {
          next_state = "lost";
          TRY(tx.Exec(
              "UPDATE jobs SET state = 'dead', last_error = $2, updated_ms = $3 WHERE id = $1",
              {job.id, message, now_ms}));
          TRY(tx.Exec(
              "UPDATE sandboxes SET state = 'lost', error = $2, finished_ms = $3 WHERE id = $1",
              {job.id,
               message + " (attempt " + std::to_string(job.attempts) + " of " +
                   std::to_string(job.max_attempts) + ")",
               now_ms}));
        } else {
          std::string reason = "retrying: " + message;
          TRY(tx.Exec(
              "UPDATE jobs SET state = 'queued', node_id = NULL, lease_ms = 0, available_ms = $2, "
              "last_error = $3, reason = $4, updated_ms = $5 WHERE id = $1",
              {job.id, now_ms + BackoffMs(job.attempts), message, reason, now_ms}));
          TRY(tx.Exec(
              "UPDATE sandboxes SET state = 'queued', node_id = NULL, reason = $2 WHERE id = $1",
              {job.id, reason}));
          requeued = true;
        }
        TRY(InsertError(tx, ErrorRow{.tenant_id = sandbox.tenant_id,
                                     .sandbox_id = job.id,
                                     .node_id = node_id,
                                     .kind = "node_lost",
                                     .message = message,
                                     .context_json = Dump(json{{"attempt", sandbox.attempt}}),
                                     .created_ms = now_ms}));
        deltas[sandbox.tenant_id] += ActiveDelta(sandbox.state, next_state);
      }
    }
    return ApplyActiveDeltas(tx, deltas);
  });
  if (!status) return Fail(status.error().Context("expiring node leases"));
  if (requeued) (void)db_->Notify(kJobsChannel);
  return lost;
}

// ---------------------------------------------------------------- dead letters, queue views

Result<std::vector<JobRow>> ControlStore::ListDeadJobs() {
  auto rows = TRY(db_->Query("SELECT " + JobColumns() +
                             " FROM jobs WHERE state = 'dead' ORDER BY updated_ms DESC, id"));
  std::vector<JobRow> out;
  for (const Row& row : rows) out.push_back(ParseJob(row));
  return out;
}

Status ControlStore::ReplayDeadJob(const std::string& id, int64_t now_ms) {
  auto status = db_->Transaction([&](Database& tx) -> Status {
    auto [job, sandbox] = TRY(LoadJobAndSandbox(tx, id));
    if (job.state != "dead") {
      return Fail(ErrorCode::kFailedPrecondition,
                  "job " + id + " is " + job.state + ", not dead: only dead jobs replay");
    }
    TRY(tx.Exec(
        "UPDATE jobs SET state = 'queued', attempts = 0, available_ms = $2, node_id = NULL, "
        "lease_ms = 0, reason = '', updated_ms = $2 WHERE id = $1",
        {id, now_ms}));
    TRY(
        tx.Exec("UPDATE sandboxes SET state = 'queued', node_id = NULL, error = '', reason = '', "
                "exit_code = NULL, signal = 0, timed_out = 0, kill_requested = 0, started_ms = 0, "
                "finished_ms = 0 WHERE id = $1",
                {id}));
    return ApplyActiveDelta(tx, sandbox.tenant_id, sandbox.state, "queued");
  });
  if (!status) return status;
  (void)db_->Notify(kJobsChannel);
  return Ok();
}

Result<QueueStats> ControlStore::GetQueueStats() {
  auto rows = TRY(db_->Query("SELECT state, COUNT(*) FROM jobs GROUP BY state"));
  QueueStats stats;
  for (const Row& row : rows) {
    std::string state = row.Text(0);
    int64_t count = row.Int(1);
    if (state == "queued") stats.queued = count;
    if (state == "assigned") stats.assigned = count;
    if (state == "running") stats.running = count;
    if (state == "done") stats.done = count;
    if (state == "dead") stats.dead = count;
  }
  return stats;
}

Result<JobRow> ControlStore::GetJob(const std::string& id) {
  auto rows = TRY(db_->Query("SELECT " + JobColumns() + " FROM jobs WHERE id = $1", {id}));
  if (rows.empty()) return Fail(ErrorCode::kNotFound, "no job '" + id + "'");
  return ParseJob(rows[0]);
}

// ---------------------------------------------------------------- Cocytus

Status ControlStore::RecordError(const ErrorRow& error) {
  if (error.kind.empty()) return Fail(ErrorCode::kInvalidArgument, "error row has no kind");
  return InsertError(*db_, error);
}

Result<std::vector<ErrorRow>> ControlStore::ListErrors(const ErrorFilter& filter) {
  std::string sql = std::string("SELECT ") + kErrorColumns + " FROM errors WHERE created_ms >= $1";
  std::vector<Value> params{filter.since_ms};
  auto add = [&](std::string_view column, const std::string& value) {
    if (value.empty()) return;
    params.push_back(value);
    sql += " AND " + std::string(column) + " = $" + std::to_string(params.size());
  };
  add("tenant_id", filter.tenant_id);
  add("sandbox_id", filter.sandbox_id);
  add("kind", filter.kind);
  params.push_back(int64_t{std::clamp(filter.limit <= 0 ? 100 : filter.limit, 1, 1000)});
  sql += " ORDER BY created_ms DESC, id DESC LIMIT $" + std::to_string(params.size());
  auto rows = TRY(db_->Query(sql, std::move(params)));
  std::vector<ErrorRow> out;
  for (const Row& row : rows) out.push_back(ParseError(row));
  return out;
}

void ControlStore::WaitForJobs(std::chrono::milliseconds timeout) {
  db_->WaitForNotification(kJobsChannel, timeout);
}

std::optional<int64_t> TenantUsageRow::CreatedWithin(int64_t window_ms, int64_t now_ms) const {
  auto length = std::find(kRateWindowLengthsMs.begin(), kRateWindowLengthsMs.end(), window_ms);
  if (length == kRateWindowLengthsMs.end()) return std::nullopt;
  const RateWindow& w = windows[length - kRateWindowLengthsMs.begin()];
  int64_t now_start = internal::RateWindowStart(now_ms, window_ms);
  // A count of the window before now's, weighted by the share of it that the sliding window
  // [now - window, now] still covers, rounded up.
  auto weighted = [&](int64_t count) {
    int64_t covered = window_ms - (now_ms - now_start);  // 1..window_ms
    // count <= creations ever made, covered <= 1 h: no overflow before 2^40 creations.
    return (count * covered + window_ms - 1) / window_ms;
  };
  if (now_start == w.start_ms) return w.current + weighted(w.previous);
  if (now_start == w.start_ms + window_ms) return weighted(w.current);
  if (now_start < w.start_ms) return w.current + w.previous;  // our clock is behind: count all
  return 0;                                                   // nothing in the last two windows
}

bool IsFinalSandboxState(std::string_view state) {
  return state == "exited" || state == "killed" || state == "failed" || state == "lost";
}

}  // namespace tartarus::store

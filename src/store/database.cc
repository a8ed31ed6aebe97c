// The store (Olympus's memory): Row readers, OpenDatabase's URL dispatch and the schema
// migrations shared by SQLite and PostgreSQL.
#include "store/database.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "store/database_internal.h"

namespace tartarus::store {
namespace {

bool StartsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// One schema version: statements that both engines accept, then an optional backfill that
// needs parameters (the wall clock), applied in one transaction.
struct Migration {
  int64_t version;
  std::vector<std::string_view> statements;
  Status (*backfill)(Database& tx, int64_t now_ms) = nullptr;
};

// Schema 4: one tenant_usage row per tenant that has sandboxes, its active count and its
// creation-rate windows computed from the sandboxes as they are now (the windows as if every
// creation had been counted when it happened).
Status BackfillTenantUsage(Database& tx, int64_t now_ms) {
  std::string columns = "tenant_id, active", select;
  // Assigned, not pushed: GCC 12 sees a maybe-uninitialized string in Value's move.
  std::vector<Value> params(2 * internal::kRateWindows.size());
  for (size_t i = 0; i < internal::kRateWindows.size(); ++i) {
    const internal::RateWindowColumns& window = internal::kRateWindows[i];
    int64_t start = internal::RateWindowStart(now_ms, window.length_ms);
    params[2 * i] = start;
    params[2 * i + 1] = start - window.length_ms;
    std::string start_param = "$" + std::to_string(2 * i + 1);
    std::string previous_param = "$" + std::to_string(2 * i + 2);
    columns += ", " + window.start + ", " + window.current + ", " + window.previous;
    select += ", " + start_param + ", SUM(CASE WHEN created_ms >= " + start_param +
              " THEN 1 ELSE 0 END), SUM(CASE WHEN created_ms >= " + previous_param +
              " AND created_ms < " + start_param + " THEN 1 ELSE 0 END)";
  }
  return tx.Exec("INSERT INTO tenant_usage (" + columns +
                     ") SELECT tenant_id, SUM(CASE WHEN state IN ('queued', 'assigned', "
                     "'running') THEN 1 ELSE 0 END)" +
                     select + " FROM sandboxes GROUP BY tenant_id",
                 std::move(params));
}

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> kMigrations = {
      {1,
       {
           R"(CREATE TABLE tenants (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                created_ms BIGINT NOT NULL))",
           R"(CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL REFERENCES tenants(id),
                name TEXT NOT NULL,
                secret_hash TEXT NOT NULL UNIQUE,
                created_ms BIGINT NOT NULL,
                revoked_ms BIGINT))",
           "CREATE INDEX tokens_tenant ON tokens(tenant_id)",
           R"(CREATE TABLE policies (
                name TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                template TEXT NOT NULL,
                yaml TEXT NOT NULL,
                updated_ms BIGINT NOT NULL))",
           R"(CREATE TABLE sandboxes (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                template TEXT NOT NULL,
                runtime TEXT NOT NULL,
                state TEXT NOT NULL,
                spec_json TEXT NOT NULL,
                labels_json TEXT NOT NULL,
                node_id TEXT,
                attempt BIGINT NOT NULL DEFAULT 0,
                exit_code BIGINT,
                signal BIGINT NOT NULL DEFAULT 0,
                timed_out BIGINT NOT NULL DEFAULT 0,
                kill_requested BIGINT NOT NULL DEFAULT 0,
                error TEXT NOT NULL DEFAULT '',
                reason TEXT NOT NULL DEFAULT '',
                created_ms BIGINT NOT NULL,
                started_ms BIGINT NOT NULL DEFAULT 0,
                finished_ms BIGINT NOT NULL DEFAULT 0,
                idempotency_key TEXT,
                UNIQUE (tenant_id, idempotency_key)))",
           "CREATE INDEX sandboxes_created ON sandboxes(created_ms, id)",
           "CREATE INDEX sandboxes_tenant_created ON sandboxes(tenant_id, created_ms)",
           "CREATE INDEX sandboxes_node ON sandboxes(node_id, state)",
           R"(CREATE TABLE jobs (
                id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
                priority BIGINT NOT NULL DEFAULT 0,
                state TEXT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                max_attempts BIGINT NOT NULL DEFAULT 3,
                available_ms BIGINT NOT NULL DEFAULT 0,
                deadline_ms BIGINT NOT NULL DEFAULT 0,
                node_id TEXT,
                lease_ms BIGINT NOT NULL DEFAULT 0,
                millicpus BIGINT NOT NULL DEFAULT 0,
                memory_bytes BIGINT NOT NULL DEFAULT 0,
                template TEXT NOT NULL,
                runtime TEXT NOT NULL,
                selector_json TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                last_error TEXT NOT NULL DEFAULT '',
                created_ms BIGINT NOT NULL,
                updated_ms BIGINT NOT NULL))",
           "CREATE INDEX jobs_claim ON jobs(state, available_ms)",
           "CREATE INDEX jobs_node ON jobs(node_id, state)",
           R"(CREATE TABLE nodes (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                address TEXT NOT NULL,
                millicpus BIGINT NOT NULL,
                memory_bytes BIGINT NOT NULL,
                labels_json TEXT NOT NULL,
                runtimes_json TEXT NOT NULL,
                templates_json TEXT NOT NULL,
                state TEXT NOT NULL,
                lease_ms BIGINT NOT NULL,
                registered_ms BIGINT NOT NULL,
                heartbeat_ms BIGINT NOT NULL))",
           R"(CREATE TABLE errors (
                id TEXT PRIMARY KEY,
                tenant_id TEXT NOT NULL,
                sandbox_id TEXT NOT NULL,
                node_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                message TEXT NOT NULL,
                context_json TEXT NOT NULL,
                created_ms BIGINT NOT NULL))",
           "CREATE INDEX errors_created ON errors(created_ms, id)",
           "CREATE INDEX errors_sandbox ON errors(sandbox_id)",
           "CREATE INDEX errors_tenant ON errors(tenant_id, created_ms)",
       }},
      // Admission counts a tenant's active sandboxes on every create: by state, not by
      // scanning every sandbox the tenant ever had. Scheduling sums reservations per node
      // on every batch: from the index alone, without reading job rows.
      {2,
       {
           "CREATE INDEX sandboxes_tenant_state ON sandboxes(tenant_id, state)",
           "CREATE INDEX jobs_reservations ON jobs(state, node_id, millicpus, memory_bytes)",
       }},
      // Each node carries its reservations (the sums over its assigned and running jobs),
      // kept in step by every transaction that moves a job onto or off a node, so
      // scheduling reads one row per node instead of aggregating the active jobs. The
      // aggregate's covering index goes: it cost a write on every job update.
      {3,
       {
           "ALTER TABLE nodes ADD COLUMN reserved_millicpus BIGINT NOT NULL DEFAULT 0",
           "ALTER TABLE nodes ADD COLUMN reserved_memory_bytes BIGINT NOT NULL DEFAULT 0",
           "ALTER TABLE nodes ADD COLUMN active_jobs BIGINT NOT NULL DEFAULT 0",
           R"(UPDATE nodes SET
                reserved_millicpus = COALESCE((SELECT SUM(j.millicpus) FROM jobs j
                  WHERE j.node_id = nodes.id AND j.state IN ('assigned', 'running')), 0),
                reserved_memory_bytes = COALESCE((SELECT SUM(j.memory_bytes) FROM jobs j
                  WHERE j.node_id = nodes.id AND j.state IN ('assigned', 'running')), 0),
                active_jobs = (SELECT COUNT(*) FROM jobs j
                  WHERE j.node_id = nodes.id AND j.state IN ('assigned', 'running')))",
           "DROP INDEX jobs_reservations",
       }},
      // Themis's counters: each tenant's active sandboxes (queued, assigned, running) and its
      // creations in fixed windows of 1 s, 1 min and 1 h (the current window and the one
      // before), kept in step by every transaction that creates a sandbox or moves one into
      // or out of the active states, so admission reads one row instead of counting.
      {4,
       {
           R"(CREATE TABLE tenant_usage (
                tenant_id TEXT PRIMARY KEY,
                active BIGINT NOT NULL DEFAULT 0,
                rate_s_start_ms BIGINT NOT NULL DEFAULT 0,
                rate_s_current BIGINT NOT NULL DEFAULT 0,
                rate_s_previous BIGINT NOT NULL DEFAULT 0,
                rate_m_start_ms BIGINT NOT NULL DEFAULT 0,
                rate_m_current BIGINT NOT NULL DEFAULT 0,
                rate_m_previous BIGINT NOT NULL DEFAULT 0,
                rate_h_start_ms BIGINT NOT NULL DEFAULT 0,
                rate_h_current BIGINT NOT NULL DEFAULT 0,
                rate_h_previous BIGINT NOT NULL DEFAULT 0))",
       },
       BackfillTenantUsage},
  };
  return kMigrations;
}

// Any fixed number: the key of the advisory lock that serializes migrations.
constexpr int64_t kMigrationLockKey = 0x7461727461727573;  // "tartarus"

}  // namespace

int64_t Row::Int(size_t column) const {
  if (column >= values.size()) return 0;
  const Value& value = values[column];
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  if (const auto* d = std::get_if<double>(&value)) {
    if (!std::isfinite(*d) || std::fabs(*d) > 9.2e18) return 0;
    return static_cast<int64_t>(*d);
  }
  if (const auto* s = std::get_if<std::string>(&value)) {
    int64_t parsed = 0;
    auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), parsed);
    if (ec == std::errc() && end == s->data() + s->size()) return parsed;
    // "12.0" (numeric sums) and other decimal spellings.
    double as_double = 0;
    auto [dend, dec] = std::from_chars(s->data(), s->data() + s->size(), as_double);
    if (dec == std::errc() && dend == s->data() + s->size() && std::isfinite(as_double) &&
        std::fabs(as_double) <= 9.2e18) {
      return static_cast<int64_t>(as_double);
    }
  }
  return 0;
}

double Row::Double(size_t column) const {
  if (column >= values.size()) return 0;
  const Value& value = values[column];
  if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* s = std::get_if<std::string>(&value)) {
    double parsed = 0;
    auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), parsed);
    if (ec == std::errc() && end == s->data() + s->size()) return parsed;
  }
  return 0;
}

std::string Row::Text(size_t column) const {
  if (column >= values.size()) return "";
  const Value& value = values[column];
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  if (const auto* i = std::get_if<int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return std::to_string(*d);
  return "";
}

bool Row::IsNull(size_t column) const {
  return column >= values.size() || std::holds_alternative<std::monostate>(values[column]);
}

std::optional<int64_t> Row::OptInt(size_t column) const {
  if (IsNull(column)) return std::nullopt;
  return Int(column);
}

Result<std::shared_ptr<Database>> OpenDatabase(const std::string& url) {
  if (url.empty()) return Fail(ErrorCode::kInvalidArgument, "empty database URL");
  if (StartsWith(url, "postgres://") || StartsWith(url, "postgresql://")) {
    return internal::OpenPostgres(url);
  }
  if (url == "sqlite::memory:" || url == ":memory:") return internal::OpenSqlite(":memory:");
  if (StartsWith(url, "sqlite://")) {
    std::string path = url.substr(std::string_view("sqlite://").size());
    if (path.empty() || path[0] != '/') {
      return Fail(ErrorCode::kInvalidArgument,
                  "bad SQLite URL '" + url + "': want sqlite:///absolute/path.db");
    }
    return internal::OpenSqlite(path);
  }
  if (url.find("://") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument, "unsupported database URL scheme in '" +
                                                 url.substr(0, url.find("://")) +
                                                 "://...': want sqlite:// or postgres://");
  }
  return internal::OpenSqlite(url);
}

int64_t LatestSchemaVersion() { return Migrations().back().version; }

Status Migrate(Database& db) { return MigrateTo(db, LatestSchemaVersion()); }

Status MigrateTo(Database& db, int64_t target_version) {
  auto status = db.Transaction([&](Database& tx) -> Status {
    // One migrator at a time; the others wait here, then find the work done.
    if (tx.dialect() == Dialect::kPostgres) {
      TRY(tx.Exec("SELECT pg_advisory_xact_lock($1)", {kMigrationLockKey}));
    }
    TRY(
        tx.Exec("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, "
                "applied_ms BIGINT NOT NULL)"));
    auto rows = TRY(tx.Query("SELECT version FROM schema_migrations"));
    std::vector<int64_t> applied;
    for (const Row& row : rows) applied.push_back(row.Int(0));
    for (const Migration& migration : Migrations()) {
      if (migration.version > target_version) break;
      if (std::find(applied.begin(), applied.end(), migration.version) != applied.end()) continue;
      int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
      for (std::string_view statement : migration.statements) {
        auto done = tx.Exec(statement);
        if (!done) {
          return Fail(
              done.error().Context("schema migration " + std::to_string(migration.version)));
        }
      }
      if (migration.backfill != nullptr) {
        auto done = migration.backfill(tx, now_ms);
        if (!done) {
          return Fail(
              done.error().Context("schema migration " + std::to_string(migration.version)));
        }
      }
      TRY(tx.Exec("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                  {migration.version, now_ms}));
    }
    return Ok();
  });
  if (!status) return Fail(status.error().Context("migrating the store schema"));
  return Ok();
}

namespace internal {

std::string SqliteNumberedPlaceholders(std::string_view sql) {
  std::string out;
  out.reserve(sql.size());
  char quote = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    char c = sql[i];
    if (quote != 0) {
      if (c == quote) quote = 0;  // a doubled quote re-enters the same state on the next char
      out += c;
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
      out += c;
      continue;
    }
    if (c == '$' && i + 1 < sql.size() && sql[i + 1] >= '0' && sql[i + 1] <= '9') {
      out += '?';
      continue;
    }
    out += c;
  }
  return out;
}

std::string SqlForMessage(std::string_view sql) {
  std::string flat;
  bool space = false;
  for (char c : sql) {
    if (c == '\n' || c == '\t' || c == ' ' || c == '\r') {
      space = !flat.empty();
      continue;
    }
    if (space) flat += ' ';
    space = false;
    flat += c;
  }
  if (flat.size() > 80) flat = flat.substr(0, 77) + "...";
  return flat;
}

}  // namespace internal
}  // namespace tartarus::store

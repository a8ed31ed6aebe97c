// The store (Olympus's memory): one SQL interface over SQLite and PostgreSQL (libpq).
// Callers write one dialect: $1..$N placeholders, BIGINT epoch-ms times, TEXT JSON, and
// standard SQL both engines accept (INSERT .. ON CONFLICT, RETURNING). Where the engines
// differ (row locks, advisory locks), callers branch on dialect().
//
// Errors map to ErrorCode: unique/primary-key violation -> kAlreadyExists, foreign key or
// check violation -> kFailedPrecondition, cannot connect -> kFailedPrecondition (names the
// host, never the password), lock contention that outlived the retries -> kTimeout, anything
// else -> kInternal with the engine's message.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"

namespace tartarus::store {

enum class Dialect { kSqlite, kPostgres };

// One SQL value; monostate is NULL. PostgreSQL results come back typed by column type
// (integers and booleans as int64_t, floating point as double, the rest as text).
using Value = std::variant<std::monostate, int64_t, double, std::string>;

struct Row {
  std::vector<Value> values;

  // Lenient readers: NULL -> 0 / "", numbers written as text are parsed, out of range -> 0.
  int64_t Int(size_t column) const;
  double Double(size_t column) const;
  std::string Text(size_t column) const;
  bool IsNull(size_t column) const;
  std::optional<int64_t> OptInt(size_t column) const;
};

class Database {
 public:
  virtual ~Database() = default;

  virtual Dialect dialect() const = 0;

  // Runs a statement that returns no rows (or whose rows are ignored).
  virtual Status Exec(std::string_view sql, std::vector<Value> params = {}) = 0;
  virtual Result<std::vector<Row>> Query(std::string_view sql, std::vector<Value> params = {}) = 0;

  // Runs fn inside one transaction on one connection; fn gets a Database bound to that
  // connection (use it, not *this, inside fn). Commits when fn returns Ok, rolls back
  // otherwise. Retries the whole fn (bounded) on SQLITE_BUSY, serialization failure and
  // deadlock, so fn must have no side effects outside the database. SQLite: BEGIN IMMEDIATE.
  // Nested calls on the bound Database run fn inline in the same transaction.
  virtual Status Transaction(const std::function<Status(Database&)>& fn) = 0;

  // Wake-ups between processes. PostgreSQL: pg_notify on the channel (inside a transaction
  // it is delivered at commit) and LISTEN on one dedicated connection; SQLite: in-process only.
  virtual Status Notify(std::string_view channel) = 0;
  // Returns true as soon as a notification on `channel` is pending (one that arrived since
  // the previous call counts), false after `timeout`. Consumes the pending notification.
  virtual bool WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) = 0;
};

// "sqlite:///abs/path.db", "sqlite::memory:" (one private in-memory database), or a plain
// file path; "postgres://..." / "postgresql://..." (libpq URI syntax).
Result<std::shared_ptr<Database>> OpenDatabase(const std::string& url);

// Creates or upgrades the control-plane schema (schema_migrations holds the applied
// versions). Idempotent; safe when several processes migrate at once (PostgreSQL:
// pg_advisory_lock; SQLite: BEGIN IMMEDIATE).
Status Migrate(Database& db);

// Migrate, stopping after `version`: tests build a store as an older release left it.
Status MigrateTo(Database& db, int64_t version);

// The newest schema version Migrate() applies.
int64_t LatestSchemaVersion();

}  // namespace tartarus::store

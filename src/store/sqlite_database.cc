// The store's SQLite back end: a pool of connections to one database file in WAL mode
// (readers never block the writer), busy_timeout for writer contention, foreign keys on.
// Transactions start with BEGIN IMMEDIATE, so a transaction that will write takes the
// write lock up front and never fails half-way on lock upgrade.
#include <sqlite3.h>

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "store/database.h"
#include "store/database_internal.h"

namespace tartarus::store::internal {
namespace {

constexpr int kMaxFileConnections = 8;
constexpr int kBusyTimeoutMs = 10000;
constexpr int kTransactionAttempts = 8;

// One open connection with its prepared-statement cache.
class SqliteConnection {
 public:
  explicit SqliteConnection(sqlite3* db) : db_(db) {}
  ~SqliteConnection() {
    for (auto& [sql, statement] : statements_) sqlite3_finalize(statement);
    sqlite3_close_v2(db_);
  }
  SqliteConnection(const SqliteConnection&) = delete;
  SqliteConnection& operator=(const SqliteConnection&) = delete;

  // Runs one statement. `busy` is set when it failed on lock contention (worth a retry).
  Result<std::vector<Row>> Run(std::string_view sql, const std::vector<Value>& params, bool* busy) {
    *busy = false;
    sqlite3_stmt* statement = TRY(Prepare(sql));
    // Leaves the statement reusable whatever happens below.
    struct Reset {
      sqlite3_stmt* s;
      ~Reset() {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
      }
    } reset{statement};

    int expected = sqlite3_bind_parameter_count(statement);
    if (expected > static_cast<int>(params.size())) {
      return Fail(ErrorCode::kInternal, "SQL wants " + std::to_string(expected) +
                                            " parameters, got " + std::to_string(params.size()) +
                                            ": " + SqlForMessage(sql));
    }
    for (int i = 0; i < expected; ++i) {
      const Value& value = params[i];
      int rc = SQLITE_OK;
      if (const auto* n = std::get_if<int64_t>(&value)) {
        rc = sqlite3_bind_int64(statement, i + 1, *n);
      } else if (const auto* d = std::get_if<double>(&value)) {
        rc = sqlite3_bind_double(statement, i + 1, *d);
      } else if (const auto* s = std::get_if<std::string>(&value)) {
        // Rejected on both engines alike (libpq cannot carry a NUL in text).
        if (s->find('\0') != std::string::npos) {
          return Fail(ErrorCode::kInvalidArgument,
                      "text parameter $" + std::to_string(i + 1) + " contains a NUL byte");
        }
        rc = sqlite3_bind_text64(statement, i + 1, s->data(), s->size(), SQLITE_TRANSIENT,
                                 SQLITE_UTF8);
      } else {
        rc = sqlite3_bind_null(statement, i + 1);
      }
      if (rc != SQLITE_OK) return Fail(ErrorFor(rc, sql));
    }

    std::vector<Row> rows;
    int columns = sqlite3_column_count(statement);
    while (true) {
      int rc = sqlite3_step(statement);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) {
        int code = sqlite3_extended_errcode(db_);
        *busy = (code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED;
        return Fail(ErrorFor(code, sql));
      }
      Row row;
      row.values.reserve(columns);
      for (int c = 0; c < columns; ++c) {
        switch (sqlite3_column_type(statement, c)) {
          case SQLITE_INTEGER:
            row.values.emplace_back(static_cast<int64_t>(sqlite3_column_int64(statement, c)));
            break;
          case SQLITE_FLOAT:
            row.values.emplace_back(sqlite3_column_double(statement, c));
            break;
          case SQLITE_NULL:
            row.values.emplace_back(std::monostate{});
            break;
          default: {
            const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(statement, c));
            int size = sqlite3_column_bytes(statement, c);
            row.values.emplace_back(std::string(text ? text : "", text ? size : 0));
          }
        }
      }
      rows.push_back(std::move(row));
    }
    return rows;
  }

  Error ErrorFor(int code, std::string_view sql) const {
    std::string message =
        std::string("sqlite: ") + sqlite3_errmsg(db_) + " (in: " + SqlForMessage(sql) + ")";
    switch (code) {
      case SQLITE_CONSTRAINT_UNIQUE:
      case SQLITE_CONSTRAINT_PRIMARYKEY:
        return Error{ErrorCode::kAlreadyExists, message};
      case SQLITE_CONSTRAINT_FOREIGNKEY:
      case SQLITE_CONSTRAINT_CHECK:
      case SQLITE_CONSTRAINT_NOTNULL:
        return Error{ErrorCode::kFailedPrecondition, message};
      default:
        break;
    }
    switch (code & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return Error{ErrorCode::kTimeout, message};
      case SQLITE_FULL:
        return Error{ErrorCode::kResourceExhausted, message};
      case SQLITE_IOERR:
      case SQLITE_CANTOPEN:
      case SQLITE_READONLY:
        return Error{ErrorCode::kIo, message};
      default:
        return Error{ErrorCode::kInternal, message};
    }
  }

  sqlite3* raw() { return db_; }

 private:
  Result<sqlite3_stmt*> Prepare(std::string_view sql) {
    std::string key(sql);
    auto found = statements_.find(key);
    if (found != statements_.end()) return found->second;
    std::string numbered = SqliteNumberedPlaceholders(sql);
    sqlite3_stmt* statement = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v3(db_, numbered.c_str(), static_cast<int>(numbered.size()),
                                SQLITE_PREPARE_PERSISTENT, &statement, &tail);
    if (rc != SQLITE_OK) return Fail(ErrorFor(sqlite3_extended_errcode(db_), sql));
    if (statement == nullptr) {
      return Fail(ErrorCode::kInternal, "empty SQL statement");
    }
    for (; tail != nullptr && *tail != '\0'; ++tail) {
      if (*tail != ' ' && *tail != '\n' && *tail != '\t' && *tail != ';') {
        sqlite3_finalize(statement);
        return Fail(ErrorCode::kInternal,
                    "one statement per call, got more: " + SqlForMessage(sql));
      }
    }
    statements_.emplace(std::move(key), statement);
    return statement;
  }

  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> statements_;
};

class SqliteDatabase;

// The Database handed to a Transaction's fn: every call runs on the transaction's connection.
class SqliteBound final : public Database {
 public:
  SqliteBound(SqliteDatabase& owner, SqliteConnection& connection)
      : owner_(owner), connection_(connection) {}

  Dialect dialect() const override { return Dialect::kSqlite; }
  Status Exec(std::string_view sql, std::vector<Value> params) override {
    TRY(Query(sql, std::move(params)));
    return Ok();
  }
  Result<std::vector<Row>> Query(std::string_view sql, std::vector<Value> params) override {
    bool busy = false;
    auto rows = connection_.Run(sql, params, &busy);
    if (busy) saw_busy_ = true;
    return rows;
  }
  Status Transaction(const std::function<Status(Database&)>& fn) override { return fn(*this); }
  Status Notify(std::string_view channel) override;
  bool WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) override;

  bool saw_busy() const { return saw_busy_; }

 private:
  SqliteDatabase& owner_;
  SqliteConnection& connection_;
  bool saw_busy_ = false;
};

class SqliteDatabase final : public Database, public std::enable_shared_from_this<SqliteDatabase> {
 public:
  SqliteDatabase(std::string path, int max_connections)
      : path_(std::move(path)), max_connections_(max_connections) {}

  Status Init() {
    // Open one connection now so a bad path fails at open time, with its name.
    auto connection = TRY(Connect());
    idle_.push_back(std::move(connection));
    ++open_;
    return Ok();
  }

  Dialect dialect() const override { return Dialect::kSqlite; }

  Status Exec(std::string_view sql, std::vector<Value> params) override {
    TRY(Query(sql, std::move(params)));
    return Ok();
  }

  Result<std::vector<Row>> Query(std::string_view sql, std::vector<Value> params) override {
    auto lease = TRY(Acquire());
    bool busy = false;
    auto rows = lease->Run(sql, params, &busy);
    Release(std::move(lease));
    return rows;
  }

  Status Transaction(const std::function<Status(Database&)>& fn) override {
    auto connection = TRY(Acquire());
    Status result = Ok();
    for (int attempt = 1; attempt <= kTransactionAttempts; ++attempt) {
      bool busy = false;
      auto begun = connection->Run("BEGIN IMMEDIATE", {}, &busy);
      if (!begun) {
        result = Fail(begun.error());
        if (busy && attempt < kTransactionAttempts) {
          Backoff(attempt);
          continue;
        }
        break;
      }
      SqliteBound bound(*this, *connection);
      result = fn(bound);
      if (result) {
        auto committed = connection->Run("COMMIT", {}, &busy);
        if (committed) break;
        result = Fail(committed.error());
      }
      // Rolls back what fn did (or a failed commit); harmless if SQLite already did.
      if (!sqlite3_get_autocommit(connection->raw())) {
        bool ignored = false;
        (void)connection->Run("ROLLBACK", {}, &ignored);
      }
      if (!(busy || bound.saw_busy()) || attempt == kTransactionAttempts) break;
      Backoff(attempt);
    }
    Release(std::move(connection));
    return result;
  }

  Status Notify(std::string_view channel) override {
    {
      std::lock_guard lock(notify_mutex_);
      pending_[std::string(channel)] = true;
    }
    notify_cv_.notify_all();
    return Ok();
  }

  bool WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) override {
    std::unique_lock lock(notify_mutex_);
    bool& pending = pending_[std::string(channel)];
    bool woken = notify_cv_.wait_for(lock, timeout, [&] { return pending; });
    pending = false;
    return woken;
  }

 private:
  static void Backoff(int attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2 << std::min(attempt, 6)));
  }

  Result<std::unique_ptr<SqliteConnection>> Connect() {
    sqlite3* raw = nullptr;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path_.c_str(), &raw, flags, nullptr);
    if (rc != SQLITE_OK) {
      std::string why = raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc);
      sqlite3_close_v2(raw);
      return Fail(ErrorCode::kFailedPrecondition,
                  "cannot open SQLite database '" + path_ + "': " + why);
    }
    auto connection = std::make_unique<SqliteConnection>(raw);
    sqlite3_busy_timeout(raw, kBusyTimeoutMs);
    sqlite3_extended_result_codes(raw, 1);
    bool busy = false;
    for (const char* pragma :
         {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON"}) {
      auto done = connection->Run(pragma, {}, &busy);
      if (!done) {
        return Fail(done.error().Context("setting up SQLite database '" + path_ + "'"));
      }
    }
    return connection;
  }

  Result<std::unique_ptr<SqliteConnection>> Acquire() {
    std::unique_lock lock(pool_mutex_);
    while (true) {
      if (!idle_.empty()) {
        auto connection = std::move(idle_.back());
        idle_.pop_back();
        return connection;
      }
      if (open_ < max_connections_) {
        ++open_;
        lock.unlock();
        auto connection = Connect();
        if (!connection) {
          std::lock_guard relock(pool_mutex_);
          --open_;
          pool_cv_.notify_one();
        }
        return connection;
      }
      pool_cv_.wait(lock);
    }
  }

  void Release(std::unique_ptr<SqliteConnection> connection) {
    {
      std::lock_guard lock(pool_mutex_);
      idle_.push_back(std::move(connection));
    }
    pool_cv_.notify_one();
  }

  const std::string path_;
  const int max_connections_;
  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<SqliteConnection>> idle_;
  int open_ = 0;

  std::mutex notify_mutex_;
  std::condition_variable notify_cv_;
  std::map<std::string, bool> pending_;
};

Status SqliteBound::Notify(std::string_view channel) { return owner_.Notify(channel); }
bool SqliteBound::WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) {
  return owner_.WaitForNotification(channel, timeout);
}

}  // namespace

Result<std::shared_ptr<Database>> OpenSqlite(const std::string& path) {
  // An in-memory database exists per connection: keep exactly one.
  bool memory = path == ":memory:";
  auto db = std::make_shared<SqliteDatabase>(path, memory ? 1 : kMaxFileConnections);
  TRY(db->Init());
  return std::shared_ptr<Database>(std::move(db));
}

}  // namespace tartarus::store::internal

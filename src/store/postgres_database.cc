// The store's PostgreSQL back end: libpq, a pool of PGconn, text parameters. Statements
// are prepared once per connection (named by their text and parameter types), so the
// server parses and plans each of the store's few dozen statements once, not per call. Results are
// typed by column type. Errors carry the server's message and SQLSTATE-derived ErrorCode;
// connection errors name the host, never the password. LISTEN runs on one dedicated connection that
// WaitForNotification polls.
#include <poll.h>

#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "store/database.h"
#include "store/database_internal.h"
#include "store/libpq_library.h"

namespace tartarus::store::internal {
namespace {

constexpr int kMaxConnections = 8;
constexpr int kTransactionAttempts = 8;
// Statements built from filters (list views) vary; past this many per connection the rest
// run unprepared rather than growing server memory without bound.
constexpr size_t kMaxPreparedPerConnection = 256;

// Type OIDs (src/include/catalog/pg_type.h).
constexpr Oid kBoolOid = 16, kInt8Oid = 20, kInt2Oid = 21, kInt4Oid = 23, kTextOid = 25,
              kOidOid = 26, kFloat4Oid = 700, kFloat8Oid = 701, kNumericOid = 1700;

// OpenPostgres loads the library before anything here runs.
const LibPq& Pq() { return **LoadLibPq(); }

struct PgConnDeleter {
  void operator()(PGconn* conn) const { Pq().PQfinish(conn); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
struct PgResultDeleter {
  void operator()(PGresult* result) const { Pq().PQclear(result); }
};
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// One pooled connection and the statements prepared on it: "text\x01types" -> name.
// Prepared statements belong to the session, so they survive rollbacks.
struct PgSession {
  PgConnPtr conn;
  std::unordered_map<std::string, std::string> prepared;
};
using PgSessionPtr = std::unique_ptr<PgSession>;

// Only plain DML/queries are worth preparing (and preparable); BEGIN, LISTEN and DDL are not.
bool Preparable(std::string_view sql) {
  size_t start = sql.find_first_not_of(" \t\n\r(");
  if (start == std::string_view::npos) return false;
  std::string keyword;
  for (size_t i = start; i < sql.size() && std::isalpha(static_cast<unsigned char>(sql[i])); ++i) {
    keyword += static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i])));
  }
  return keyword == "SELECT" || keyword == "INSERT" || keyword == "UPDATE" || keyword == "DELETE" ||
         keyword == "WITH";
}

void IgnoreNotice(void*, const char*) {}

std::string Trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

// "host:port/db" for messages; a Unix socket directory shows as the host.
std::string Where(PGconn* conn) {
  if (conn == nullptr) return "(unknown server)";
  std::string host = Pq().PQhost(conn) ? Pq().PQhost(conn) : "";
  std::string port = Pq().PQport(conn) ? Pq().PQport(conn) : "";
  std::string db = Pq().PQdb(conn) ? Pq().PQdb(conn) : "";
  return host + ":" + port + "/" + db;
}

Result<PgConnPtr> Connect(const std::string& conninfo) {
  PgConnPtr conn(Pq().PQconnectdb(conninfo.c_str()));
  if (!conn) return Fail(ErrorCode::kResourceExhausted, "libpq could not allocate a connection");
  if (Pq().PQstatus(conn.get()) != CONNECTION_OK) {
    return Fail(ErrorCode::kFailedPrecondition, "cannot connect to PostgreSQL at " +
                                                    Where(conn.get()) + ": " +
                                                    Trim(Pq().PQerrorMessage(conn.get())));
  }
  Pq().PQsetNoticeProcessor(conn.get(), IgnoreNotice, nullptr);
  return conn;
}

Value ConvertField(PGresult* result, int row, int column) {
  if (Pq().PQgetisnull(result, row, column)) return std::monostate{};
  const char* text = Pq().PQgetvalue(result, row, column);
  int size = Pq().PQgetlength(result, row, column);
  std::string_view view(text, size);
  switch (Pq().PQftype(result, column)) {
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid:
    case kOidOid:
    case kNumericOid: {
      int64_t parsed = 0;
      auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), parsed);
      if (ec == std::errc() && end == view.data() + view.size()) return parsed;
      double as_double = 0;
      auto [dend, dec] = std::from_chars(view.data(), view.data() + view.size(), as_double);
      if (dec == std::errc() && dend == view.data() + view.size()) return as_double;
      return std::string(view);
    }
    case kFloat4Oid:
    case kFloat8Oid: {
      double parsed = 0;
      auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), parsed);
      if (ec == std::errc() && end == view.data() + view.size()) return parsed;
      return std::string(view);
    }
    case kBoolOid:
      return static_cast<int64_t>(view == "t" ? 1 : 0);
    default:
      return std::string(view);
  }
}

// Sends one statement: through the session's prepared statement for it (prepared on first
// use) when `session` is given, otherwise unnamed. Returns the failed PREPARE's result when
// preparing fails, so the caller maps its error like any other.
PGresult* Send(PGconn* conn, PgSession* session, std::string_view sql,
               const std::vector<Oid>& types, const std::vector<const char*>& values) {
  int count = static_cast<int>(values.size());
  if (session != nullptr && Preparable(sql)) {
    std::string key(sql);
    key += '\x01';
    for (Oid type : types) key += std::to_string(type) + ",";
    auto found = session->prepared.find(key);
    if (found == session->prepared.end() && session->prepared.size() < kMaxPreparedPerConnection) {
      std::string name = "tt_" + std::to_string(session->prepared.size());
      std::string text(sql);
      PGresult* prepared = Pq().PQprepare(conn, name.c_str(), text.c_str(), count, types.data());
      if (prepared == nullptr || Pq().PQresultStatus(prepared) != PGRES_COMMAND_OK) {
        return prepared;
      }
      Pq().PQclear(prepared);
      found = session->prepared.emplace(std::move(key), std::move(name)).first;
    }
    if (found != session->prepared.end()) {
      return Pq().PQexecPrepared(conn, found->second.c_str(), count, values.data(), nullptr,
                                 nullptr, 0);
    }
  }
  std::string statement(sql);
  return Pq().PQexecParams(conn, statement.c_str(), count, types.data(), values.data(), nullptr,
                           nullptr, 0);
}

// Runs one statement on `conn`. `retryable` is set for serialization failures and
// deadlocks; `broken` when the connection itself is gone.
Result<std::vector<Row>> Run(PGconn* conn, PgSession* session, std::string_view sql,
                             const std::vector<Value>& params, bool* retryable, bool* broken) {
  *retryable = false;
  *broken = false;
  std::vector<std::string> texts(params.size());
  std::vector<const char*> values(params.size(), nullptr);
  std::vector<Oid> types(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    const Value& value = params[i];
    if (const auto* n = std::get_if<int64_t>(&value)) {
      texts[i] = std::to_string(*n);
      types[i] = kInt8Oid;
    } else if (const auto* d = std::get_if<double>(&value)) {
      char buffer[64];
      std::snprintf(buffer, sizeof(buffer), "%.17g", *d);
      texts[i] = buffer;
      types[i] = kFloat8Oid;
    } else if (const auto* s = std::get_if<std::string>(&value)) {
      // libpq passes C strings: a NUL would silently cut the value short.
      if (s->find('\0') != std::string::npos) {
        return Fail(ErrorCode::kInvalidArgument,
                    "text parameter $" + std::to_string(i + 1) + " contains a NUL byte");
      }
      texts[i] = *s;
      types[i] = kTextOid;
    } else {
      continue;  // NULL: values[i] stays nullptr, type left to the server
    }
    values[i] = texts[i].c_str();
  }
  PgResultPtr result(Send(conn, session, sql, types, values));
  if (!result) {
    *broken = Pq().PQstatus(conn) != CONNECTION_OK;
    return Fail(ErrorCode::kFailedPrecondition, "lost connection to PostgreSQL at " + Where(conn) +
                                                    ": " + Trim(Pq().PQerrorMessage(conn)));
  }
  ExecStatusType status = Pq().PQresultStatus(result.get());
  if (status == PGRES_COMMAND_OK || status == PGRES_EMPTY_QUERY) return std::vector<Row>{};
  if (status == PGRES_TUPLES_OK) {
    int rows = Pq().PQntuples(result.get());
    int columns = Pq().PQnfields(result.get());
    std::vector<Row> out(rows);
    for (int r = 0; r < rows; ++r) {
      out[r].values.reserve(columns);
      for (int c = 0; c < columns; ++c) out[r].values.push_back(ConvertField(result.get(), r, c));
    }
    return out;
  }
  const char* sqlstate_field = Pq().PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
  std::string sqlstate = sqlstate_field ? sqlstate_field : "";
  const char* primary = Pq().PQresultErrorField(result.get(), PG_DIAG_MESSAGE_PRIMARY);
  std::string message =
      "postgres: " + (primary ? std::string(primary) : Trim(Pq().PQerrorMessage(conn))) +
      (sqlstate.empty() ? "" : " [" + sqlstate + "]") + " (in: " + SqlForMessage(sql) + ")";
  if (Pq().PQstatus(conn) != CONNECTION_OK) {
    *broken = true;
    return Fail(ErrorCode::kFailedPrecondition,
                "lost connection to PostgreSQL at " + Where(conn) + ": " + message);
  }
  if (sqlstate == "23505") return Fail(ErrorCode::kAlreadyExists, message);
  if (sqlstate == "23503" || sqlstate == "23514" || sqlstate == "23502") {
    return Fail(ErrorCode::kFailedPrecondition, message);
  }
  if (sqlstate == "40001" || sqlstate == "40P01") {
    *retryable = true;
    return Fail(ErrorCode::kTimeout, message);
  }
  if (sqlstate == "55P03" || sqlstate == "57014") return Fail(ErrorCode::kTimeout, message);
  if (sqlstate.starts_with("08")) {
    *broken = true;
    return Fail(ErrorCode::kFailedPrecondition, message);
  }
  if (sqlstate == "53300" || sqlstate.starts_with("53")) {
    return Fail(ErrorCode::kResourceExhausted, message);
  }
  // Data exceptions (bad encoding, out of range) come from the values, which may be outside
  // input; syntax and access errors (42) are ours.
  if (sqlstate.starts_with("22")) return Fail(ErrorCode::kInvalidArgument, message);
  return Fail(ErrorCode::kInternal, message);
}

std::string QuoteIdentifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

class PostgresDatabase;

class PostgresBound final : public Database {
 public:
  PostgresBound(PostgresDatabase& owner, PgSession* session) : owner_(owner), session_(session) {}

  Dialect dialect() const override { return Dialect::kPostgres; }
  Status Exec(std::string_view sql, std::vector<Value> params) override {
    TRY(Query(sql, std::move(params)));
    return Ok();
  }
  Result<std::vector<Row>> Query(std::string_view sql, std::vector<Value> params) override {
    bool retryable = false, broken = false;
    auto rows = Run(session_->conn.get(), session_, sql, params, &retryable, &broken);
    saw_retryable_ = saw_retryable_ || retryable;
    saw_broken_ = saw_broken_ || broken;
    return rows;
  }
  Status Transaction(const std::function<Status(Database&)>& fn) override { return fn(*this); }
  // Transactional: delivered when the transaction commits.
  Status Notify(std::string_view channel) override {
    return Exec("SELECT pg_notify($1, '')", {std::string(channel)});
  }
  bool WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) override;

  bool saw_retryable() const { return saw_retryable_; }
  bool saw_broken() const { return saw_broken_; }

 private:
  PostgresDatabase& owner_;
  PgSession* session_;
  bool saw_retryable_ = false;
  bool saw_broken_ = false;
};

class PostgresDatabase final : public Database {
 public:
  explicit PostgresDatabase(std::string conninfo) : conninfo_(std::move(conninfo)) {}

  Status Init() {
    auto conn = TRY(Connect(conninfo_));
    idle_.push_back(
        std::make_unique<PgSession>(PgSession{.conn = std::move(conn), .prepared = {}}));
    ++open_;
    return Ok();
  }

  Dialect dialect() const override { return Dialect::kPostgres; }

  Status Exec(std::string_view sql, std::vector<Value> params) override {
    TRY(Query(sql, std::move(params)));
    return Ok();
  }

  Result<std::vector<Row>> Query(std::string_view sql, std::vector<Value> params) override {
    auto conn = TRY(Acquire());
    bool retryable = false, broken = false;
    auto rows = Run(conn->conn.get(), conn.get(), sql, params, &retryable, &broken);
    Release(std::move(conn), broken);
    return rows;
  }

  Status Transaction(const std::function<Status(Database&)>& fn) override {
    Status result = Ok();
    for (int attempt = 1; attempt <= kTransactionAttempts; ++attempt) {
      auto conn = TRY(Acquire());
      bool retryable = false, broken = false;
      auto begun = Run(conn->conn.get(), nullptr, "BEGIN", {}, &retryable, &broken);
      if (!begun) {
        Release(std::move(conn), broken);
        // A pooled connection the server dropped while idle: try a fresh one.
        if (broken && attempt < kTransactionAttempts) continue;
        return Fail(begun.error());
      }
      PostgresBound bound(*this, conn.get());
      result = fn(bound);
      if (result) {
        auto committed = Run(conn->conn.get(), nullptr, "COMMIT", {}, &retryable, &broken);
        if (committed) {
          Release(std::move(conn), false);
          return Ok();
        }
        result = Fail(committed.error());
      } else {
        bool ignored_retryable = false, rollback_broken = false;
        (void)Run(conn->conn.get(), nullptr, "ROLLBACK", {}, &ignored_retryable, &rollback_broken);
        broken = broken || rollback_broken;
      }
      Release(std::move(conn), broken || bound.saw_broken());
      if (!(retryable || bound.saw_retryable()) || attempt == kTransactionAttempts) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2 << std::min(attempt, 6)));
    }
    return result;
  }

  Status Notify(std::string_view channel) override {
    return Exec("SELECT pg_notify($1, '')", {std::string(channel)});
  }

  bool WaitForNotification(std::string_view channel, std::chrono::milliseconds timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::unique_lock lock(listen_mutex_, std::defer_lock);
    if (!lock.try_lock_until(deadline)) return false;
    std::string name(channel);
    if (!listener_ || listening_.count(name) == 0) {
      if (!StartListening(name)) {
        // No listener: behave like a plain sleep so callers still poll at their pace.
        lock.unlock();
        std::this_thread::sleep_until(deadline);
        return false;
      }
    }
    while (true) {
      if (Pq().PQconsumeInput(listener_.get()) == 0) {
        listener_.reset();  // reconnects (and LISTENs again) on the next call
        lock.unlock();
        std::this_thread::sleep_until(deadline);
        return false;
      }
      while (PGnotify* notify = Pq().PQnotifies(listener_.get())) {
        pending_.insert(notify->relname);
        Pq().PQfreemem(notify);
      }
      if (pending_.erase(name) > 0) return true;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd fd{.fd = Pq().PQsocket(listener_.get()), .events = POLLIN, .revents = 0};
      if (fd.fd < 0) {
        listener_.reset();
        return false;
      }
      int ready = poll(&fd, 1, static_cast<int>(std::min<int64_t>(left.count(), 60000)));
      if (ready < 0 && errno != EINTR) {
        listener_.reset();
        return false;
      }
    }
  }

 private:
  // Called with listen_mutex_ held.
  bool StartListening(const std::string& channel) {
    if (!listener_) {
      auto conn = Connect(conninfo_);
      if (!conn) return false;
      listener_ = std::move(*conn);
      for (const std::string& name : listening_) {
        if (!ListenOn(name)) return false;
      }
    }
    if (listening_.count(channel) == 0) {
      if (!ListenOn(channel)) return false;
      listening_.insert(channel);
    }
    return true;
  }

  bool ListenOn(const std::string& channel) {
    bool retryable = false, broken = false;
    auto done = Run(listener_.get(), nullptr, "LISTEN " + QuoteIdentifier(channel), {}, &retryable,
                    &broken);
    if (!done) {
      listener_.reset();
      return false;
    }
    return true;
  }

  Result<PgSessionPtr> Acquire() {
    std::unique_lock lock(pool_mutex_);
    while (true) {
      if (!idle_.empty()) {
        PgSessionPtr conn = std::move(idle_.back());
        idle_.pop_back();
        if (Pq().PQstatus(conn->conn.get()) == CONNECTION_OK) return conn;
        --open_;  // dropped by the server while idle: replace it
        continue;
      }
      if (open_ < kMaxConnections) {
        ++open_;
        lock.unlock();
        auto conn = Connect(conninfo_);
        if (!conn) {
          std::lock_guard relock(pool_mutex_);
          --open_;
          pool_cv_.notify_one();
          return Fail(conn.error());
        }
        return std::make_unique<PgSession>(PgSession{.conn = std::move(*conn), .prepared = {}});
      }
      pool_cv_.wait(lock);
    }
  }

  void Release(PgSessionPtr conn, bool broken) {
    {
      std::lock_guard lock(pool_mutex_);
      if (broken || Pq().PQstatus(conn->conn.get()) != CONNECTION_OK ||
          Pq().PQtransactionStatus(conn->conn.get()) != PQTRANS_IDLE) {
        --open_;
        conn.reset();
      } else {
        idle_.push_back(std::move(conn));
      }
    }
    pool_cv_.notify_one();
  }

  const std::string conninfo_;
  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::vector<PgSessionPtr> idle_;
  int open_ = 0;

  std::timed_mutex listen_mutex_;
  PgConnPtr listener_;
  std::set<std::string> listening_;
  std::set<std::string> pending_;
};

bool PostgresBound::WaitForNotification(std::string_view channel,
                                        std::chrono::milliseconds timeout) {
  return owner_.WaitForNotification(channel, timeout);
}

}  // namespace

Result<std::shared_ptr<Database>> OpenPostgres(const std::string& conninfo) {
  TRY(LoadLibPq());
  auto db = std::make_shared<PostgresDatabase>(conninfo);
  TRY(db->Init());
  return std::shared_ptr<Database>(std::move(db));
}

}  // namespace tartarus::store::internal

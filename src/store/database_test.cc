// Tests of the store's Database layer (SQLite and PostgreSQL): values, errors,
// transactions, migrations and notifications. Every TEST_P runs on both engines.
#include "store/database.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "store/database_internal.h"
#include "store/store_test_util.h"

namespace tartarus::store {
namespace {

using testing::TestDatabase;

TEST(RowTest, ReadersAreLenient) {
  Row row{{std::monostate{}, int64_t{42}, 2.5, std::string("17"), std::string("x")}};
  EXPECT_TRUE(row.IsNull(0));
  EXPECT_FALSE(row.OptInt(0).has_value());
  EXPECT_EQ(row.Int(0), 0);
  EXPECT_EQ(row.Text(0), "");
  EXPECT_EQ(row.Int(1), 42);
  EXPECT_EQ(row.OptInt(1), 42);
  EXPECT_EQ(row.Text(1), "42");
  EXPECT_EQ(row.Int(2), 2);
  EXPECT_DOUBLE_EQ(row.Double(2), 2.5);
  EXPECT_EQ(row.Int(3), 17);
  EXPECT_EQ(row.Int(4), 0);
  EXPECT_TRUE(row.IsNull(99));  // out of range is NULL, not a crash
  EXPECT_EQ(row.Text(99), "");
}

TEST(PlaceholderTest, NumbersOutsideQuotesOnly) {
  EXPECT_EQ(internal::SqliteNumberedPlaceholders("SELECT $1, '$2', \"$3\", $10"),
            "SELECT ?1, '$2', \"$3\", ?10");
  EXPECT_EQ(internal::SqliteNumberedPlaceholders("SELECT 'it''s $1' || $2"),
            "SELECT 'it''s $1' || ?2");
}

TEST(OpenDatabaseTest, RejectsBadUrls) {
  auto empty = OpenDatabase("");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
  auto scheme = OpenDatabase("mysql://host/db");
  ASSERT_FALSE(scheme);
  EXPECT_EQ(scheme.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(scheme.error().message.find("mysql"), std::string::npos);
  auto relative = OpenDatabase("sqlite://relative.db");
  ASSERT_FALSE(relative);
  EXPECT_EQ(relative.error().code, ErrorCode::kInvalidArgument);
  auto missing_dir = OpenDatabase("sqlite:///nonexistent-dir-for-tartarus/x.db");
  ASSERT_FALSE(missing_dir);
  EXPECT_EQ(missing_dir.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(missing_dir.error().message.find("/nonexistent-dir-for-tartarus/x.db"),
            std::string::npos);
}

TEST(OpenDatabaseTest, PostgresConnectFailureNamesHostNotPassword) {
  // Port 1 on loopback: nothing listens there, so libpq fails fast.
  auto db = OpenDatabase("postgresql://tartarus:s3cr3t-pw@127.0.0.1:1/tartarus?connect_timeout=2");
  ASSERT_FALSE(db);
  EXPECT_EQ(db.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(db.error().message.find("127.0.0.1"), std::string::npos) << db.error().message;
  EXPECT_EQ(db.error().message.find("s3cr3t-pw"), std::string::npos) << db.error().message;
}

TEST(OpenDatabaseTest, MemoryDatabaseWorks) {
  auto db = OpenDatabase("sqlite::memory:");
  ASSERT_TRUE(db) << db.error().message;
  ASSERT_TRUE(Migrate(**db));
  auto rows = (*db)->Query("SELECT COUNT(*) FROM schema_migrations");
  ASSERT_TRUE(rows);
  EXPECT_EQ((*rows)[0].Int(0), LatestSchemaVersion());
}

class DatabaseTest : public ::testing::TestWithParam<Dialect> {
 protected:
  void SetUp() override {
    std::string skip, error;
    test_db_ = TestDatabase::Create(GetParam(), &skip, &error);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_TRUE(test_db_) << error;
    auto db = OpenDatabase(test_db_->url());
    ASSERT_TRUE(db) << db.error().message;
    db_ = *db;
    ASSERT_TRUE(
        db_->Exec("CREATE TABLE kv (k TEXT PRIMARY KEY, i BIGINT, d DOUBLE PRECISION, "
                  "t TEXT)"));
  }

  std::unique_ptr<TestDatabase> test_db_;
  std::shared_ptr<Database> db_;
};

TEST_P(DatabaseTest, ValuesRoundTrip) {
  EXPECT_EQ(db_->dialect(), GetParam());
  ASSERT_TRUE(db_->Exec("INSERT INTO kv (k, i, d, t) VALUES ($1, $2, $3, $4)",
                        {std::string("a"), int64_t{-9007199254740993}, 0.125,
                         std::string("it's \"quoted\" \xc3\xa9")}));
  ASSERT_TRUE(db_->Exec("INSERT INTO kv (k, i, d, t) VALUES ($1, $2, $3, $4)",
                        {std::string("b"), std::monostate{}, std::monostate{}, std::monostate{}}));
  auto rows = db_->Query("SELECT k, i, d, t FROM kv WHERE k = $1 OR k = $2 ORDER BY k",
                         {std::string("a"), std::string("b")});
  ASSERT_TRUE(rows) << rows.error().message;
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].Text(0), "a");
  EXPECT_EQ((*rows)[0].Int(1), -9007199254740993);
  EXPECT_DOUBLE_EQ((*rows)[0].Double(2), 0.125);
  EXPECT_EQ((*rows)[0].Text(3), "it's \"quoted\" \xc3\xa9");
  EXPECT_TRUE((*rows)[1].IsNull(1));
  EXPECT_TRUE((*rows)[1].IsNull(2));
  EXPECT_TRUE((*rows)[1].IsNull(3));

  // Aggregates come back as numbers on both engines (PostgreSQL's SUM is numeric).
  auto sums = db_->Query("SELECT COUNT(*), SUM(i) FROM kv");
  ASSERT_TRUE(sums) << sums.error().message;
  EXPECT_EQ((*sums)[0].Int(0), 2);
  EXPECT_EQ((*sums)[0].Int(1), -9007199254740993);
}

TEST_P(DatabaseTest, ErrorsMapToCodes) {
  ASSERT_TRUE(db_->Exec("INSERT INTO kv (k) VALUES ($1)", {std::string("dup")}));
  auto dup = db_->Exec("INSERT INTO kv (k) VALUES ($1)", {std::string("dup")});
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists) << dup.error().message;

  // Same answer on both engines: libpq cannot carry a NUL inside text.
  auto nul = db_->Exec("INSERT INTO kv (k) VALUES ($1)", {std::string("a\0b", 3)});
  ASSERT_FALSE(nul);
  EXPECT_EQ(nul.error().code, ErrorCode::kInvalidArgument) << nul.error().message;

  auto bad = db_->Query("SELECT nope FROM kv");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInternal);
  EXPECT_NE(bad.error().message.find("nope"), std::string::npos) << bad.error().message;
}

// Statements are prepared once per connection and reused: the same text with NULL, number
// and text parameters, failures inside and outside transactions (a failed prepare is not
// cached), and reuse after a rollback all give the answers an unprepared run would.
TEST_P(DatabaseTest, RepeatedStatementsWithVaryingParameterTypes) {
  const std::string insert = "INSERT INTO kv (k, i, t) VALUES ($1, $2, $3)";
  for (int round = 0; round < 20; ++round) {
    Value i = round % 3 == 0 ? Value(std::monostate{}) : Value(int64_t{round});
    Value t = round % 2 == 0 ? Value(std::monostate{}) : Value("t" + std::to_string(round));
    ASSERT_TRUE(db_->Exec(insert, {"k" + std::to_string(round), i, t})) << round;
  }
  auto count = db_->Query("SELECT COUNT(*), COUNT(i), COUNT(t), SUM(i) FROM kv WHERE k <> $1",
                          {std::string("")});
  ASSERT_TRUE(count) << count.error().message;
  EXPECT_EQ((*count)[0].Int(0), 20);
  EXPECT_EQ((*count)[0].Int(1), 13);  // rounds not divisible by 3
  EXPECT_EQ((*count)[0].Int(2), 10);  // odd rounds
  auto dup = db_->Exec(insert, {std::string("k1"), int64_t{1}, std::string("x")});
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  for (int round = 0; round < 3; ++round) {
    auto bad = db_->Query("SELECT nope FROM kv WHERE k = $1", {std::string("k1")});
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("nope"), std::string::npos) << bad.error().message;
  }
  auto rolled_back = db_->Transaction([&](Database& tx) -> Status {
    TRY(tx.Exec(insert, {std::string("in-tx"), int64_t{7}, std::string("x")}));
    return Fail(ErrorCode::kCancelled, "roll back");
  });
  ASSERT_FALSE(rolled_back);
  ASSERT_TRUE(db_->Transaction([&](Database& tx) -> Status {
    return tx.Exec(insert, {std::string("in-tx"), int64_t{8}, std::string("y")});
  }));
  auto row = db_->Query("SELECT i, t FROM kv WHERE k = $1", {std::string("in-tx")});
  ASSERT_TRUE(row && row->size() == 1u);
  EXPECT_EQ((*row)[0].Int(0), 8);
  EXPECT_EQ((*row)[0].Text(1), "y");
}

TEST_P(DatabaseTest, TransactionCommitsOrRollsBack) {
  auto failed = db_->Transaction([](Database& tx) -> Status {
    TRY(tx.Exec("INSERT INTO kv (k) VALUES ('rolled-back')"));
    return Fail(ErrorCode::kCancelled, "changed my mind");
  });
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, ErrorCode::kCancelled);
  auto none = db_->Query("SELECT COUNT(*) FROM kv WHERE k = 'rolled-back'");
  ASSERT_TRUE(none);
  EXPECT_EQ((*none)[0].Int(0), 0);

  auto committed = db_->Transaction([](Database& tx) -> Status {
    TRY(tx.Exec("INSERT INTO kv (k) VALUES ('kept')"));
    // Nested Transaction on the bound database runs inline.
    return tx.Transaction(
        [](Database& inner) { return inner.Exec("INSERT INTO kv (k) VALUES ('kept-too')"); });
  });
  ASSERT_TRUE(committed) << committed.error().message;
  auto kept = db_->Query("SELECT COUNT(*) FROM kv WHERE k LIKE 'kept%'");
  ASSERT_TRUE(kept);
  EXPECT_EQ((*kept)[0].Int(0), 2);
}

TEST_P(DatabaseTest, ConcurrentIncrementsAreNotLost) {
  ASSERT_TRUE(db_->Exec("INSERT INTO kv (k, i) VALUES ('counter', 0)"));
  constexpr int kThreads = 4, kEach = 25;
  std::vector<std::thread> threads;
  std::atomic<int> failures = 0;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        // Read-modify-write: only correct if the transaction isolates it.
        auto done = db_->Transaction([](Database& tx) -> Status {
          std::string sql = "SELECT i FROM kv WHERE k = 'counter'";
          if (tx.dialect() == Dialect::kPostgres) sql += " FOR UPDATE";
          auto rows = TRY(tx.Query(sql));
          return tx.Exec("UPDATE kv SET i = $1 WHERE k = 'counter'", {rows.at(0).Int(0) + 1});
        });
        if (!done) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  auto rows = db_->Query("SELECT i FROM kv WHERE k = 'counter'");
  ASSERT_TRUE(rows);
  EXPECT_EQ((*rows)[0].Int(0), kThreads * kEach);
}

TEST_P(DatabaseTest, MigrateIsIdempotent) {
  ASSERT_TRUE(Migrate(*db_));
  ASSERT_TRUE(Migrate(*db_));
  auto rows = db_->Query("SELECT COUNT(*), MAX(version) FROM schema_migrations");
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ((*rows)[0].Int(0), static_cast<int64_t>(LatestSchemaVersion()));
  EXPECT_EQ((*rows)[0].Int(1), LatestSchemaVersion());
  auto tables = db_->Query("SELECT COUNT(*) FROM sandboxes");
  EXPECT_TRUE(tables) << tables.error().message;
}

TEST_P(DatabaseTest, ConcurrentMigrationsFromSeparateProcessesAgree) {
  // Separate Database objects stand in for separate Olympus processes.
  constexpr int kMigrators = 4;
  std::vector<std::shared_ptr<Database>> dbs;
  for (int i = 0; i < kMigrators; ++i) {
    auto db = OpenDatabase(test_db_->url());
    ASSERT_TRUE(db) << db.error().message;
    dbs.push_back(*db);
  }
  std::vector<std::string> errors(kMigrators);
  std::vector<std::thread> threads;
  for (int i = 0; i < kMigrators; ++i) {
    threads.emplace_back([&, i] {
      auto done = Migrate(*dbs[i]);
      if (!done) errors[i] = done.error().message;
    });
  }
  for (auto& thread : threads) thread.join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");
  auto rows = db_->Query("SELECT COUNT(*) FROM schema_migrations");
  ASSERT_TRUE(rows) << rows.error().message;
  EXPECT_EQ((*rows)[0].Int(0), static_cast<int64_t>(LatestSchemaVersion()));
}

TEST_P(DatabaseTest, NotificationWakesWaiter) {
  std::string channel = "tartarus_test_" + testing::RandomSuffix();
  // Nothing pending yet (this first wait also starts listening).
  EXPECT_FALSE(db_->WaitForNotification(channel, std::chrono::milliseconds(50)));
  std::thread notifier([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(db_->Notify(channel));
  });
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(db_->WaitForNotification(channel, std::chrono::seconds(10)));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  notifier.join();
  // Consumed: the next wait times out.
  EXPECT_FALSE(db_->WaitForNotification(channel, std::chrono::milliseconds(50)));
}

INSTANTIATE_TEST_SUITE_P(Engines, DatabaseTest,
                         ::testing::Values(Dialect::kSqlite, Dialect::kPostgres),
                         [](const auto& info) { return testing::DialectName(info.param); });

}  // namespace
}  // namespace tartarus::store

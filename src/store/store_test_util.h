// Store test helpers: a fresh, empty database per test on either engine. SQLite: a file in
// a temporary directory. PostgreSQL (TARTARUS_TEST_PG_URL, see scripts/pg-test-server.sh):
// a schema of its own on that server, selected through the URL's search_path, so tests can
// run in parallel on one server.
#pragma once

#include <sys/random.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <ostream>
#include <string>

#include "store/database.h"

namespace tartarus::store::testing {

inline std::string DialectName(Dialect dialect) {
  return dialect == Dialect::kSqlite ? "sqlite" : "postgres";
}

}  // namespace tartarus::store::testing

namespace tartarus::store {
// Names the engine in test output instead of dumping its bytes.
inline void PrintTo(Dialect dialect, std::ostream* out) {
  *out << (dialect == Dialect::kSqlite ? "sqlite" : "postgres");
}
}  // namespace tartarus::store

namespace tartarus::store::testing {

inline std::string RandomSuffix() {
  unsigned char bytes[6] = {};
  if (getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) return "0";
  std::string out;
  for (unsigned char c : bytes) {
    out += "0123456789abcdef"[c >> 4];
    out += "0123456789abcdef"[c & 15];
  }
  return out;
}

class TestDatabase {
 public:
  // A fresh empty database, or nullptr with *skip_reason / *error set.
  static std::unique_ptr<TestDatabase> Create(Dialect dialect, std::string* skip_reason,
                                              std::string* error) {
    auto test_db = std::unique_ptr<TestDatabase>(new TestDatabase());
    if (dialect == Dialect::kSqlite) {
      test_db->dir_ = std::filesystem::temp_directory_path() / ("tartarus-store-" + RandomSuffix());
      std::filesystem::create_directories(test_db->dir_);
      test_db->url_ = "sqlite://" + (test_db->dir_ / "store.db").string();
      return test_db;
    }
    const char* base = std::getenv("TARTARUS_TEST_PG_URL");
    if (base == nullptr || *base == '\0') {
      *skip_reason =
          "skipped: TARTARUS_TEST_PG_URL is not set (start a server with "
          "scripts/pg-test-server.sh start DIR)";
      return nullptr;
    }
    auto admin = OpenDatabase(base);
    if (!admin) {
      *error = admin.error().message;
      return nullptr;
    }
    test_db->admin_ = *admin;
    test_db->schema_ = "t_" + RandomSuffix();
    auto created = test_db->admin_->Exec("CREATE SCHEMA " + test_db->schema_);
    if (!created) {
      *error = created.error().message;
      return nullptr;
    }
    std::string url = base;
    url += url.find('?') == std::string::npos ? "?" : "&";
    url += "options=-csearch_path%3D" + test_db->schema_;
    test_db->url_ = url;
    return test_db;
  }

  ~TestDatabase() {
    if (admin_) (void)admin_->Exec("DROP SCHEMA " + schema_ + " CASCADE");
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  const std::string& url() const { return url_; }

 private:
  TestDatabase() = default;

  std::string url_;
  std::filesystem::path dir_;
  std::shared_ptr<Database> admin_;
  std::string schema_;
};

}  // namespace tartarus::store::testing

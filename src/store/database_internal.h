// The store's engine back ends (SQLite, PostgreSQL) behind Database, and helpers they share.
// Not for use outside src/store/.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "store/database.h"

namespace tartarus::store::internal {

// path: a file path, or ":memory:" for one private in-memory database.
Result<std::shared_ptr<Database>> OpenSqlite(const std::string& path);
// conninfo: a libpq URI or key=value string.
Result<std::shared_ptr<Database>> OpenPostgres(const std::string& conninfo);

// Rewrites $N placeholders as ?N (SQLite's numbered form), leaving quoted text alone.
std::string SqliteNumberedPlaceholders(std::string_view sql);

// The first line of a statement, shortened, for error messages.
std::string SqlForMessage(std::string_view sql);

}  // namespace tartarus::store::internal

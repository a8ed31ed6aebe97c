// The store's engine back ends (SQLite, PostgreSQL) behind Database, and helpers they share.
// Not for use outside src/store/.
#pragma once

#include <array>
#include <cstdint>
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

// The creation-rate windows tenant_usage keeps (schema 4): the lengths a policy's max_rate
// can name (N/s, N/m, N/h), in the order of TenantUsageRow::windows.
struct RateWindowColumns {
  int64_t length_ms;
  std::string start, current, previous;
};
inline const std::array<RateWindowColumns, 3> kRateWindows = {{
    {1000, "rate_s_start_ms", "rate_s_current", "rate_s_previous"},
    {60'000, "rate_m_start_ms", "rate_m_current", "rate_m_previous"},
    {3'600'000, "rate_h_start_ms", "rate_h_current", "rate_h_previous"},
}};

// The start of the fixed window of length `length_ms` that holds `ms` (floor, also for
// times before the epoch).
inline int64_t RateWindowStart(int64_t ms, int64_t length_ms) {
  int64_t start = ms - ms % length_ms;
  return start > ms ? start - length_ms : start;
}

}  // namespace tartarus::store::internal

// The Tartarus runtime: sandbox ownership records. The process that starts a sandbox owns
// it; its pid and start time (field 22 of /proc/<pid>/stat, so a reused pid never passes
// for the owner) are written to <state>/runtime/sandboxes/<id>/owner. CleanupLeftovers
// removes the sandboxes whose owner is gone.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus::runtime {

struct OwnerRecord {
  pid_t pid = 0;
  uint64_t start_time = 0;  // clock ticks since boot
};

// Start time of `pid` from the text of /proc/<pid>/stat (the comm field may hold spaces
// and parentheses).
Result<uint64_t> ParseProcStatStartTime(std::string_view stat_text);
Result<uint64_t> ProcessStartTime(pid_t pid);
Result<OwnerRecord> CurrentProcessOwner();

// "<pid> <start_time>\n".
std::string FormatOwnerRecord(const OwnerRecord& owner);
Result<OwnerRecord> ParseOwnerRecord(std::string_view text);

// True while the recorded process still runs (same pid and same start time).
bool OwnerAlive(const OwnerRecord& owner);

// Small file helpers shared by the runtime.
Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 1 << 16);
Status WriteSmallFile(const std::string& path, std::string_view text);

}  // namespace tartarus::runtime

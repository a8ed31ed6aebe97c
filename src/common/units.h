// Parsing and printing of the quantities users type: sizes, durations, CPUs.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus {

// "512M", "2G", "100k", "1048576", "64MiB" -> bytes. Suffixes are binary (K = 1024).
Result<uint64_t> ParseBytes(std::string_view text);
// "30s", "1.5m", "250ms", "2h", "90" (seconds) -> milliseconds.
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);
// "1", "0.5", "2.25" -> millicpus (1000 = one CPU).
Result<uint32_t> ParseMilliCpus(std::string_view text);

std::string FormatBytes(uint64_t bytes);                // 536870912 -> "512M"
std::string FormatDuration(std::chrono::milliseconds);  // 90000 -> "1m30s"
std::string FormatMilliCpus(uint32_t millicpus);        // 1500 -> "1.5"

}  // namespace tartarus

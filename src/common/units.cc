#include "common/units.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <string>

namespace tartarus {
namespace {

// Splits "1.5GiB" into 1.5 and "GiB"; fails on anything but digits, one dot, then letters.
Result<std::pair<double, std::string>> SplitNumber(std::string_view text, std::string_view what) {
  std::string s(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  bool digits = false, dot = false;
  for (; i < s.size(); ++i) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      digits = true;
    } else if (s[i] == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (!digits || i > 18) {
    return Fail(ErrorCode::kInvalidArgument, "invalid " + std::string(what) + " '" + s +
                                                 "': expected a number with an optional unit");
  }
  return std::pair<double, std::string>(std::stod(s.substr(0, i)), s.substr(i));
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

Result<uint64_t> ParseBytes(std::string_view text) {
  auto [number, unit] = TRY(SplitNumber(text, "size"));
  std::string u = Lower(unit);
  double scale;
  if (u.empty() || u == "b")
    scale = 1;
  else if (u == "k" || u == "kb" || u == "ki" || u == "kib")
    scale = 1024.0;
  else if (u == "m" || u == "mb" || u == "mi" || u == "mib")
    scale = 1024.0 * 1024;
  else if (u == "g" || u == "gb" || u == "gi" || u == "gib")
    scale = 1024.0 * 1024 * 1024;
  else if (u == "t" || u == "tb" || u == "ti" || u == "tib")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else {
    return Fail(ErrorCode::kInvalidArgument, "invalid size '" + std::string(text) +
                                                 "': unknown unit '" + unit +
                                                 "' (use K, M, G or T, for example 512M)");
  }
  double bytes = number * scale;
  if (bytes >= 1.8e19) {
    return Fail(ErrorCode::kInvalidArgument, "invalid size '" + std::string(text) + "': too large");
  }
  return static_cast<uint64_t>(std::llround(bytes));
}

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  auto [number, unit] = TRY(SplitNumber(text, "duration"));
  std::string u = Lower(unit);
  double scale_ms;
  if (u == "ms")
    scale_ms = 1;
  else if (u.empty() || u == "s")
    scale_ms = 1000;
  else if (u == "m" || u == "min")
    scale_ms = 60'000;
  else if (u == "h")
    scale_ms = 3'600'000;
  else {
    return Fail(ErrorCode::kInvalidArgument, "invalid duration '" + std::string(text) +
                                                 "': unknown unit '" + unit +
                                                 "' (use ms, s, m or h, for example 30s)");
  }
  double ms = number * scale_ms;
  if (ms > 365.0 * 24 * 3'600'000) {
    return Fail(ErrorCode::kInvalidArgument,
                "invalid duration '" + std::string(text) + "': longer than a year");
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

Result<uint32_t> ParseMilliCpus(std::string_view text) {
  auto [number, unit] = TRY(SplitNumber(text, "CPU count"));
  if (!unit.empty()) {
    return Fail(ErrorCode::kInvalidArgument, "invalid CPU count '" + std::string(text) +
                                                 "': expected a number such as 1 or 0.5");
  }
  double milli = std::round(number * 1000);
  if (milli < 10 || milli > 1'024'000) {
    return Fail(ErrorCode::kInvalidArgument,
                "invalid CPU count '" + std::string(text) + "': must be between 0.01 and 1024");
  }
  return static_cast<uint32_t>(milli);
}

std::string FormatBytes(uint64_t bytes) {
  const char* units[] = {"", "K", "M", "G", "T"};
  int i = 0;
  double value = static_cast<double>(bytes);
  while (value >= 1024 && i < 4) {
    value /= 1024;
    ++i;
  }
  char buf[32];
  if (value == std::floor(value)) {
    std::snprintf(buf, sizeof buf, "%.0f%s", value, units[i]);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f%s", value, units[i]);
  }
  return buf;
}

std::string FormatDuration(std::chrono::milliseconds duration) {
  int64_t ms = duration.count();
  if (ms < 1000) return std::to_string(ms) + "ms";
  int64_t s = ms / 1000;
  std::string out;
  if (s >= 3600) out += std::to_string(s / 3600) + "h";
  if (s % 3600 >= 60) out += std::to_string((s % 3600) / 60) + "m";
  if (s % 60 || out.empty()) out += std::to_string(s % 60) + "s";
  return out;
}

std::string FormatMilliCpus(uint32_t millicpus) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", millicpus / 1000.0);
  return buf;
}

}  // namespace tartarus

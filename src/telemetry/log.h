// Hermes (telemetry): structured logs. One JSON object per line on stderr:
// {"ts":"2024-05-01T12:00:00.123Z","level":"info","msg":"...", ...fields}
// Thread-safe; lines below the global minimum level are dropped.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace tartarus::telemetry {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn" (or "warning"), "error"; anything else is kInvalidArgument.
Result<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

void SetMinLogLevel(LogLevel level);  // default kInfo
LogLevel MinLogLevel();

// level is one of the names above (unknown names log as given, at kInfo's rank). fields
// is merged into the line when it is an object (ts/level/msg win over same-named fields);
// anything else goes under "fields". Invalid UTF-8 is replaced, never thrown.
void LogJson(std::string_view level, std::string_view msg, const nlohmann::json& fields = {});

// Where lines go (each without its trailing newline); nullptr restores stderr. For tests.
void SetLogSink(std::function<void(std::string_view line)> sink);

// The line LogJson would write, without the level filter (exposed for tests).
std::string FormatLogLine(std::string_view level, std::string_view msg,
                          const nlohmann::json& fields);

}  // namespace tartarus::telemetry

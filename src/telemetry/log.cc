// Hermes (telemetry): JSON log lines on stderr.
#include "telemetry/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include <fmt/format.h>

namespace tartarus::telemetry {
namespace {

std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

std::mutex& SinkMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
std::function<void(std::string_view)>& Sink() {
  static auto* sink = new std::function<void(std::string_view)>();
  return *sink;
}

std::string Rfc3339Millis(std::chrono::system_clock::time_point now) {
  auto since_epoch = now.time_since_epoch();
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds);
  std::time_t t = static_cast<std::time_t>(seconds.count());
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis.count());
}

std::string Dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

Result<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  return Fail(ErrorCode::kInvalidArgument,
              fmt::format("unknown log level '{}' (want debug, info, warn or error)", name));
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void SetMinLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }
LogLevel MinLogLevel() { return static_cast<LogLevel>(g_min_level.load()); }

std::string FormatLogLine(std::string_view level, std::string_view msg,
                          const nlohmann::json& fields) {
  std::string line = fmt::format(
      "{{\"ts\":\"{}\",\"level\":{},\"msg\":{}", Rfc3339Millis(std::chrono::system_clock::now()),
      Dump(nlohmann::json(std::string(level))), Dump(nlohmann::json(std::string(msg))));
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) {
      if (key == "ts" || key == "level" || key == "msg") continue;
      line += fmt::format(",{}:{}", Dump(nlohmann::json(key)), Dump(value));
    }
  } else if (!fields.is_null()) {
    line += fmt::format(",\"fields\":{}", Dump(fields));
  }
  line += '}';
  return line;
}

void LogJson(std::string_view level, std::string_view msg, const nlohmann::json& fields) {
  auto parsed = ParseLogLevel(level);
  LogLevel rank = parsed ? *parsed : LogLevel::kInfo;
  if (static_cast<int>(rank) < g_min_level.load(std::memory_order_relaxed)) return;
  std::string line = FormatLogLine(level, msg, fields);
  std::lock_guard lock(SinkMutex());
  if (Sink()) {
    Sink()(line);
    return;
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

void SetLogSink(std::function<void(std::string_view line)> sink) {
  std::lock_guard lock(SinkMutex());
  Sink() = std::move(sink);
}

}  // namespace tartarus::telemetry

#include "node/sandbox_record.h"

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

namespace tartarus::node {

using nlohmann::json;

namespace {
constexpr std::pair<SandboxState, std::string_view> kStateNames[] = {
    {SandboxState::kCreating, "creating"}, {SandboxState::kRunning, "running"},
    {SandboxState::kExited, "exited"},     {SandboxState::kKilled, "killed"},
    {SandboxState::kFailed, "failed"},     {SandboxState::kLost, "lost"},
};
}  // namespace

std::string_view StateName(SandboxState state) {
  for (auto [s, name] : kStateNames) {
    if (s == state) return name;
  }
  return "unknown";
}

Result<SandboxState> ParseState(std::string_view name) {
  for (auto [s, n] : kStateNames) {
    if (n == name) return s;
  }
  return Fail(ErrorCode::kInvalidArgument,
              "unknown state '" + std::string(name) +
                  "' (expected creating, running, exited, killed, failed or lost)");
}

std::string RecordToJson(const SandboxRecord& r) {
  json j = {
      {"id", r.id},
      {"template", r.template_name},
      {"runtime", r.runtime},
      {"command", r.command},
      {"env", r.env},
      {"workdir", r.workdir},
      {"user", r.user},
      {"limits",
       {{"millicpus", r.limits.millicpus},
        {"memory_bytes", r.limits.memory_bytes},
        {"pids", r.limits.pids},
        {"disk_bytes", r.limits.disk_bytes},
        {"open_files", r.limits.open_files}}},
      {"timeout_ms", r.timeout_ms},
      {"detached", r.detached},
      {"stdin_via_control", r.stdin_via_control},
      {"state", StateName(r.state)},
      {"created_ms", r.created_ms},
      {"started_ms", r.started_ms},
      {"finished_ms", r.finished_ms},
      {"exit_code", r.exit_code ? json(*r.exit_code) : json(nullptr)},
      {"signal", r.signal},
      {"timed_out", r.timed_out},
      {"error", r.error},
      {"supervisor_pid", r.supervisor_pid},
      {"supervisor_start_time", r.supervisor_start_time},
      {"usage",
       {{"cpu_ns", r.usage.cpu_ns},
        {"memory_peak_bytes", r.usage.memory_peak_bytes},
        {"oom_killed", r.usage.oom_killed}}},
  };
  return j.dump(2) + "\n";
}

Result<SandboxRecord> RecordFromJson(const std::string& text) {
  try {
    json j = json::parse(text);
    SandboxRecord r;
    r.id = j.at("id").get<std::string>();
    r.template_name = j.value("template", "");
    r.runtime = j.value("runtime", "");
    r.command = j.value("command", std::vector<std::string>{});
    r.env = j.value("env", std::vector<std::string>{});
    r.workdir = j.value("workdir", "");
    r.user = j.value("user", "");
    if (j.contains("limits")) {
      const json& l = j["limits"];
      r.limits.millicpus = l.value("millicpus", r.limits.millicpus);
      r.limits.memory_bytes = l.value("memory_bytes", r.limits.memory_bytes);
      r.limits.pids = l.value("pids", r.limits.pids);
      r.limits.disk_bytes = l.value("disk_bytes", r.limits.disk_bytes);
      r.limits.open_files = l.value("open_files", r.limits.open_files);
    }
    r.timeout_ms = j.value("timeout_ms", uint64_t{0});
    r.detached = j.value("detached", false);
    r.stdin_via_control = j.value("stdin_via_control", false);
    r.state = TRY(ParseState(j.value("state", "creating")));
    r.created_ms = j.value("created_ms", int64_t{0});
    r.started_ms = j.value("started_ms", int64_t{0});
    r.finished_ms = j.value("finished_ms", int64_t{0});
    if (j.contains("exit_code") && !j["exit_code"].is_null())
      r.exit_code = j["exit_code"].get<int>();
    r.signal = j.value("signal", 0);
    r.timed_out = j.value("timed_out", false);
    r.error = j.value("error", "");
    r.supervisor_pid = j.value("supervisor_pid", 0);
    r.supervisor_start_time = j.value("supervisor_start_time", uint64_t{0});
    if (j.contains("usage")) {
      const json& u = j["usage"];
      r.usage.cpu_ns = u.value("cpu_ns", uint64_t{0});
      r.usage.memory_peak_bytes = u.value("memory_peak_bytes", uint64_t{0});
      r.usage.oom_killed = u.value("oom_killed", false);
    }
    return r;
  } catch (const std::exception& e) {
    return Fail(ErrorCode::kInvalidArgument, std::string("corrupt sandbox record: ") + e.what());
  }
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NewSandboxId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t v = rng();
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return std::string(buf, 12);
}

}  // namespace tartarus::node

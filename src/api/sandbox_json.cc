// Olympus: sandbox JSON shapes and request parsing (see sandbox_json.h).
#include "api/sandbox_json.h"

#include <fmt/format.h>

#include <random>

#include "common/units.h"

namespace tartarus::api {
namespace {

using nlohmann::json;

// Bounds on what one request may carry.
constexpr size_t kMaxArgs = 1024;
constexpr size_t kMaxArgBytes = 128 << 10;  // command + env together
constexpr size_t kMaxLabels = 64;
constexpr size_t kMaxPathBytes = 4096;

Error Invalid(std::string_view field, std::string_view what) {
  return Error{ErrorCode::kInvalidArgument, fmt::format("{}: {}", field, what)};
}

Result<json> ParseObject(std::string_view body) {
  if (body.empty())
    return Fail(ErrorCode::kInvalidArgument, "request body: expected a JSON object");
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Fail(ErrorCode::kInvalidArgument, "request body: not valid JSON");
  if (!doc.is_object())
    return Fail(ErrorCode::kInvalidArgument, "request body: expected a JSON object");
  return doc;
}

Status CheckKnownFields(const json& doc, std::initializer_list<std::string_view> known) {
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    bool ok = false;
    for (auto k : known) ok = ok || it.key() == k;
    if (!ok) return Fail(Invalid(it.key(), "unknown field"));
  }
  return Ok();
}

Result<std::string> GetString(const json& doc, std::string_view field, size_t max_bytes) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return std::string();
  if (!it->is_string()) return Fail(Invalid(field, "expected a string"));
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_bytes)
    return Fail(Invalid(field, fmt::format("longer than {} bytes", max_bytes)));
  if (s.find('\0') != std::string::npos) return Fail(Invalid(field, "contains a NUL byte"));
  return s;
}

Result<bool> GetBool(const json& doc, std::string_view field) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return false;
  if (!it->is_boolean()) return Fail(Invalid(field, "expected true or false"));
  return it->get<bool>();
}

Result<std::vector<std::string>> GetStringList(const json& doc, std::string_view field,
                                               size_t* total_bytes) {
  std::vector<std::string> out;
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return out;
  if (!it->is_array()) return Fail(Invalid(field, "expected an array of strings"));
  if (it->size() > kMaxArgs)
    return Fail(Invalid(field, fmt::format("more than {} items", kMaxArgs)));
  for (const auto& item : *it) {
    if (!item.is_string()) return Fail(Invalid(field, "expected an array of strings"));
    const auto& s = item.get_ref<const std::string&>();
    if (s.find('\0') != std::string::npos)
      return Fail(Invalid(field, "an item contains a NUL byte"));
    *total_bytes += s.size() + 1;
    if (*total_bytes > kMaxArgBytes) {
      return Fail(Invalid(field, fmt::format("command and env exceed {} bytes", kMaxArgBytes)));
    }
    out.push_back(s);
  }
  return out;
}

Status CheckEnv(const std::vector<std::string>& env) {
  for (const auto& kv : env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return Fail(Invalid("env", fmt::format("'{}' is not KEY=VALUE", kv.substr(0, 64))));
    }
  }
  return Ok();
}

bool IsLabelKey(std::string_view key) {
  if (key.empty() || key.size() > 63) return false;
  for (char c : key) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '/')) {
      return false;
    }
  }
  return true;
}

Result<std::map<std::string, std::string>> GetLabels(const json& doc, std::string_view field) {
  std::map<std::string, std::string> out;
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return out;
  if (!it->is_object()) return Fail(Invalid(field, "expected an object of strings"));
  if (it->size() > kMaxLabels)
    return Fail(Invalid(field, fmt::format("more than {} labels", kMaxLabels)));
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    if (!IsLabelKey(kv.key())) {
      return Fail(Invalid(field, fmt::format("'{}' is not a label key ([A-Za-z0-9._/-], 1-63)",
                                             kv.key().substr(0, 64))));
    }
    if (!kv->is_string() || kv->get_ref<const std::string&>().size() > 256) {
      return Fail(
          Invalid(field, fmt::format("{}: expected a string of at most 256 bytes", kv.key())));
    }
    out[kv.key()] = kv->get<std::string>();
  }
  return out;
}

// A duration or size may come as a string ("30s", "512M") or a plain number (ms, bytes).
template <class Parse>
Result<std::optional<int64_t>> GetQuantity(const json& doc, std::string_view field, Parse parse) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return std::optional<int64_t>();
  if (it->is_number_integer() || it->is_number_unsigned()) {
    int64_t v = it->get<int64_t>();
    if (v <= 0) return Fail(Invalid(field, "must be positive"));
    return std::optional<int64_t>(v);
  }
  if (!it->is_string())
    return Fail(Invalid(field, "expected a string such as \"512M\" or \"30s\""));
  auto v = parse(it->get<std::string>());
  if (!v) return Fail(Invalid(field, v.error().message));
  if (*v <= 0) return Fail(Invalid(field, "must be positive"));
  return std::optional<int64_t>(*v);
}

Result<int64_t> ParseMs(const std::string& s) {
  auto d = ParseDuration(s);
  if (!d) return Fail(d.error());
  return static_cast<int64_t>(d->count());
}
Result<int64_t> ParseSize(const std::string& s) {
  auto b = ParseBytes(s);
  if (!b) return Fail(b.error());
  if (*b > (uint64_t{1} << 50)) return Fail(ErrorCode::kInvalidArgument, "too large");
  return static_cast<int64_t>(*b);
}
Result<int64_t> ParseCpus(const std::string& s) {
  auto m = ParseMilliCpus(s);
  if (!m) return Fail(m.error());
  return static_cast<int64_t>(*m);
}

Result<int> GetInt(const json& doc, std::string_view field, int lo, int hi, int fallback) {
  auto it = doc.find(field);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) return Fail(Invalid(field, "expected an integer"));
  int64_t v = it->get<int64_t>();
  if (v < lo || v > hi)
    return Fail(Invalid(field, fmt::format("must be between {} and {}", lo, hi)));
  return static_cast<int>(v);
}

Status CheckWorkdir(const std::string& workdir) {
  if (!workdir.empty() && workdir[0] != '/')
    return Fail(Invalid("workdir", "must be an absolute path"));
  return Ok();
}

}  // namespace

bool IsValidTemplateName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(islower(static_cast<unsigned char>(c)) || isdigit(static_cast<unsigned char>(c)) ||
          c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return name[0] != '.' && name[0] != '-';
}

bool IsValidSandboxId(std::string_view id) {
  if (id.size() != 16) return false;
  for (char c : id) {
    if (!(isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsValidExecId(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!(isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string NewSandboxId() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

bool IsKnownRuntime(std::string_view runtime) {
  for (const char* r : kKnownRuntimes) {
    if (runtime == r) return true;
  }
  return false;
}

std::string RunSpecToJson(const RunSpec& spec) {
  json doc = {{"command", spec.command},
              {"env", spec.env},
              {"workdir", spec.workdir},
              {"user", spec.user},
              {"millicpus", spec.millicpus},
              {"memory_bytes", spec.memory_bytes},
              {"disk_bytes", spec.disk_bytes},
              {"timeout_ms", spec.timeout_ms},
              {"pids", spec.pids},
              {"stdin", spec.stdin}};
  return doc.dump();
}

Result<RunSpec> RunSpecFromJson(std::string_view text) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Fail(ErrorCode::kInternal, "stored sandbox spec is not a JSON object");
  }
  RunSpec spec;
  size_t total = 0;
  spec.command = TRY(GetStringList(doc, "command", &total));
  spec.env = TRY(GetStringList(doc, "env", &total));
  spec.workdir = TRY(GetString(doc, "workdir", kMaxPathBytes));
  spec.user = TRY(GetString(doc, "user", 64));
  spec.millicpus = doc.value("millicpus", int64_t{0});
  spec.memory_bytes = doc.value("memory_bytes", int64_t{0});
  spec.disk_bytes = doc.value("disk_bytes", int64_t{0});
  spec.timeout_ms = doc.value("timeout_ms", int64_t{0});
  spec.pids = doc.value("pids", int64_t{0});
  spec.stdin = doc.value("stdin", false);
  return spec;
}

Result<CreateRequest> ParseCreateRequest(std::string_view body) {
  json doc = TRY(ParseObject(body));
  TRY(CheckKnownFields(doc, {"template", "runtime", "command", "env", "workdir", "user", "cpus",
                             "memory", "disk", "timeout", "labels", "node_selector", "priority",
                             "deadline", "max_attempts", "pids", "stdin"}));
  CreateRequest r;
  std::string template_name = TRY(GetString(doc, "template", 64));
  if (!template_name.empty()) r.template_name = template_name;
  if (!IsValidTemplateName(r.template_name)) {
    return Fail(Invalid("template", fmt::format("'{}' is not a template name", r.template_name)));
  }
  r.runtime = TRY(GetString(doc, "runtime", 32));
  if (!r.runtime.empty() && !IsKnownRuntime(r.runtime)) {
    return Fail(Invalid("runtime", fmt::format("'{}' is not one of container, container-crun, "
                                               "gvisor, microvm",
                                               r.runtime)));
  }
  size_t total = 0;
  r.command = TRY(GetStringList(doc, "command", &total));
  if (r.command.empty())
    return Fail(Invalid("command", "required: the command to run, as an array"));
  if (r.command[0].empty()) return Fail(Invalid("command", "the program name is empty"));
  r.env = TRY(GetStringList(doc, "env", &total));
  TRY(CheckEnv(r.env));
  r.workdir = TRY(GetString(doc, "workdir", kMaxPathBytes));
  TRY(CheckWorkdir(r.workdir));
  r.user = TRY(GetString(doc, "user", 64));
  r.millicpus = TRY(GetQuantity(doc, "cpus", ParseCpus));
  // A bare number for cpus means CPUs, like the CLI's --cpus 2.
  if (auto it = doc.find("cpus"); it != doc.end() && it->is_number()) {
    double cpus = it->get<double>();
    if (!(cpus > 0) || cpus > 1024) return Fail(Invalid("cpus", "must be between 0 and 1024"));
    r.millicpus = static_cast<int64_t>(cpus * 1000 + 0.5);
  }
  r.memory_bytes = TRY(GetQuantity(doc, "memory", ParseSize));
  r.disk_bytes = TRY(GetQuantity(doc, "disk", ParseSize));
  r.timeout_ms = TRY(GetQuantity(doc, "timeout", ParseMs));
  auto deadline = TRY(GetQuantity(doc, "deadline", ParseMs));
  r.deadline_ms = deadline.value_or(0);
  r.labels = TRY(GetLabels(doc, "labels"));
  r.node_selector = TRY(GetLabels(doc, "node_selector"));
  r.priority = TRY(GetInt(doc, "priority", -100, 100, 0));
  r.max_attempts = TRY(GetInt(doc, "max_attempts", 1, 10, 3));
  r.pids = TRY(GetInt(doc, "pids", 1, 1 << 20, 0));
  r.stdin = TRY(GetBool(doc, "stdin"));
  return r;
}

Result<ExecRequest> ParseExecRequest(std::string_view body) {
  json doc = TRY(ParseObject(body));
  TRY(CheckKnownFields(doc, {"command", "env", "workdir", "user", "timeout", "stdin"}));
  ExecRequest r;
  size_t total = 0;
  r.command = TRY(GetStringList(doc, "command", &total));
  if (r.command.empty())
    return Fail(Invalid("command", "required: the command to run, as an array"));
  r.env = TRY(GetStringList(doc, "env", &total));
  TRY(CheckEnv(r.env));
  r.workdir = TRY(GetString(doc, "workdir", kMaxPathBytes));
  TRY(CheckWorkdir(r.workdir));
  r.user = TRY(GetString(doc, "user", 64));
  auto timeout = TRY(GetQuantity(doc, "timeout", ParseMs));
  r.timeout_ms = timeout.value_or(0);
  r.stdin = TRY(GetBool(doc, "stdin"));
  return r;
}

json ExecRequestToJson(const ExecRequest& r) {
  json doc = {{"command", r.command}, {"env", r.env}, {"workdir", r.workdir}, {"user", r.user}};
  if (r.timeout_ms > 0) doc["timeout"] = r.timeout_ms;
  if (r.stdin) doc["stdin"] = true;
  return doc;
}

json SandboxToJson(const store::SandboxRow& row, const std::string& tenant_name) {
  json doc = {{"id", row.id},
              {"tenant", tenant_name},
              {"template", row.template_name},
              {"runtime", row.runtime},
              {"state", row.state},
              {"labels", row.labels},
              {"node", row.node_id},
              {"attempt", row.attempt},
              {"exit_code", nullptr},
              {"signal", row.signal},
              {"timed_out", row.timed_out},
              {"kill_requested", row.kill_requested},
              {"error", row.error},
              {"reason", row.reason},
              {"created_ms", row.created_ms},
              {"started_ms", row.started_ms},
              {"finished_ms", row.finished_ms}};
  if (row.exit_code) doc["exit_code"] = *row.exit_code;
  RunSpec spec;
  if (auto parsed = RunSpecFromJson(row.spec_json)) spec = *parsed;
  doc["command"] = spec.command;
  doc["env"] = spec.env;
  doc["workdir"] = spec.workdir;
  doc["user"] = spec.user;
  doc["stdin"] = spec.stdin;
  doc["limits"] = {{"millicpus", spec.millicpus},
                   {"memory_bytes", spec.memory_bytes},
                   {"disk_bytes", spec.disk_bytes},
                   {"timeout_ms", spec.timeout_ms},
                   {"pids", spec.pids}};
  return doc;
}

json JobToJson(const store::JobRow& job) {
  return {{"id", job.id},
          {"state", job.state},
          {"priority", job.priority},
          {"attempts", job.attempts},
          {"max_attempts", job.max_attempts},
          {"node", job.node_id},
          {"last_error", job.last_error},
          {"reason", job.reason},
          {"available_ms", job.available_ms}};
}

json NodeToJson(const store::NodeRow& n) {
  return {{"id", n.id},
          {"name", n.name},
          {"address", n.address},
          {"millicpus", n.millicpus},
          {"memory_bytes", n.memory_bytes},
          {"labels", n.labels},
          {"runtimes", n.runtimes},
          {"templates", n.templates},
          {"state", n.state},
          {"lease_ms", n.lease_ms},
          {"heartbeat_ms", n.heartbeat_ms},
          {"reserved_millicpus", n.reserved_millicpus},
          {"reserved_memory_bytes", n.reserved_memory_bytes},
          {"active_jobs", n.active_jobs}};
}

}  // namespace tartarus::api

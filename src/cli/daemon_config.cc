// The daemons' config file (see daemon_config.h).
#include "cli/daemon_config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <sstream>

#include "common/units.h"

namespace tartarus::cli {
namespace {

constexpr size_t kMaxConfigBytes = 1 << 20;

struct Reader {
  std::string source;

  Error At(const YAML::Node& node, std::string_view key, std::string_view what) const {
    auto mark = node.Mark();
    return Error{ErrorCode::kInvalidArgument, fmt::format("{}:{}:{}: {}: {}", source, mark.line + 1,
                                                          mark.column + 1, key, what)};
  }

  Result<std::string> String(const YAML::Node& node, std::string_view key) const {
    if (!node.IsScalar()) return Fail(At(node, key, "expected a string"));
    return node.Scalar();
  }
  Result<int64_t> Int(const YAML::Node& node, std::string_view key, int64_t lo, int64_t hi) const {
    std::string s = TRY(String(node, key));
    char* end = nullptr;
    errno = 0;
    long long v = strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
      return Fail(
          At(node, key, fmt::format("'{}' is not an integer between {} and {}", s, lo, hi)));
    }
    return static_cast<int64_t>(v);
  }
  Result<bool> Bool(const YAML::Node& node, std::string_view key) const {
    std::string s = TRY(String(node, key));
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
    return Fail(At(node, key, fmt::format("'{}' is not true or false", s)));
  }
  Result<std::chrono::milliseconds> Duration(const YAML::Node& node, std::string_view key) const {
    std::string s = TRY(String(node, key));
    auto d = ParseDuration(s);
    if (!d || d->count() <= 0)
      return Fail(At(node, key, fmt::format("'{}' is not a duration such as 10s", s)));
    return *d;
  }
  Result<int64_t> Bytes(const YAML::Node& node, std::string_view key) const {
    std::string s = TRY(String(node, key));
    auto b = ParseBytes(s);
    if (!b || *b == 0) return Fail(At(node, key, fmt::format("'{}' is not a size such as 8G", s)));
    return static_cast<int64_t>(*b);
  }
  Result<int64_t> Cpus(const YAML::Node& node, std::string_view key) const {
    std::string s = TRY(String(node, key));
    auto m = ParseMilliCpus(s);
    if (!m || *m == 0)
      return Fail(At(node, key, fmt::format("'{}' is not a CPU count such as 4 or 0.5", s)));
    return static_cast<int64_t>(*m);
  }
  Result<std::vector<std::string>> List(const YAML::Node& node, std::string_view key) const {
    if (!node.IsSequence()) return Fail(At(node, key, "expected a list"));
    std::vector<std::string> out;
    for (const auto& item : node) out.push_back(TRY(String(item, key)));
    return out;
  }
  Result<std::map<std::string, std::string>> Map(const YAML::Node& node,
                                                 std::string_view key) const {
    if (!node.IsMap()) return Fail(At(node, key, "expected a mapping of strings"));
    std::map<std::string, std::string> out;
    for (const auto& kv : node) {
      std::string k = TRY(String(kv.first, key));
      out[k] = TRY(String(kv.second, fmt::format("{}.{}", key, k)));
    }
    return out;
  }
};

Status ParseAgent(const Reader& r, const YAML::Node& node, DaemonConfig::Agent& a) {
  if (!node.IsMap()) return Fail(r.At(node, "agent", "expected a mapping"));
  for (const auto& kv : node) {
    std::string key = kv.first.Scalar();
    std::string path = "agent." + key;
    const YAML::Node& v = kv.second;
    if (key == "olympus") {
      a.olympus = TRY(r.String(v, path));
    } else if (key == "token") {
      a.token = TRY(r.String(v, path));
    } else if (key == "node_id") {
      a.node_id = TRY(r.String(v, path));
    } else if (key == "listen") {
      a.listen = TRY(r.String(v, path));
    } else if (key == "advertise") {
      a.advertise = TRY(r.String(v, path));
    } else if (key == "cpus") {
      a.millicpus = TRY(r.Cpus(v, path));
    } else if (key == "memory") {
      a.memory_bytes = TRY(r.Bytes(v, path));
    } else if (key == "labels") {
      a.labels = TRY(r.Map(v, path));
    } else if (key == "runtimes") {
      a.runtimes = TRY(r.List(v, path));
    } else if (key == "heartbeat_interval") {
      a.heartbeat_interval = TRY(r.Duration(v, path));
    } else {
      return Fail(r.At(kv.first, path, "unknown key"));
    }
  }
  return Ok();
}

}  // namespace

Result<DaemonConfig> ParseDaemonConfig(std::string_view yaml, std::string_view source_name) {
  if (yaml.size() > kMaxConfigBytes) {
    return Fail(ErrorCode::kInvalidArgument, fmt::format("{}: larger than 1 MiB", source_name));
  }
  Reader r{std::string(source_name)};
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return Fail(
        ErrorCode::kInvalidArgument,
        fmt::format("{}:{}:{}: {}", source_name, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  DaemonConfig c;
  if (root.IsNull()) return c;
  if (!root.IsMap())
    return Fail(ErrorCode::kInvalidArgument, fmt::format("{}: expected a mapping", source_name));
  try {
    for (const auto& kv : root) {
      std::string key = kv.first.Scalar();
      const YAML::Node& v = kv.second;
      if (key == "state_dir") {
        c.state_dir = TRY(r.String(v, key));
      } else if (key == "store") {
        c.store = TRY(r.String(v, key));
      } else if (key == "listen") {
        c.listen = TRY(r.String(v, key));
        if (auto listen = ParseListen(c.listen); !listen) {
          return Fail(r.At(v, key, listen.error().message));
        }
      } else if (key == "unix_socket") {
        c.unix_socket = TRY(r.String(v, key));
      } else if (key == "node_lease") {
        c.node_lease = TRY(r.Duration(v, key));
      } else if (key == "schedule_interval") {
        c.schedule_interval = TRY(r.Duration(v, key));
      } else if (key == "schedule_batch") {
        c.schedule_batch = static_cast<int>(TRY(r.Int(v, key, 1, 10000)));
      } else if (key == "best_of_k") {
        c.best_of_k = static_cast<int>(TRY(r.Int(v, key, 1, 100)));
      } else if (key == "open_metrics") {
        c.open_metrics = TRY(r.Bool(v, key));
      } else if (key == "api_threads") {
        c.api_threads = static_cast<int>(TRY(r.Int(v, key, 1, 64)));
      } else if (key == "worker_threads") {
        c.worker_threads = static_cast<int>(TRY(r.Int(v, key, 1, 256)));
      } else if (key == "log_level") {
        c.log_level = TRY(r.String(v, key));
        if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warn" &&
            c.log_level != "error") {
          return Fail(r.At(v, key, "expected debug, info, warn or error"));
        }
      } else if (key == "agent") {
        TRY(ParseAgent(r, v, c.agent));
      } else {
        return Fail(r.At(kv.first, key, "unknown key"));
      }
    }
  } catch (const YAML::Exception& e) {
    return Fail(ErrorCode::kInvalidArgument, fmt::format("{}: {}", source_name, e.what()));
  }
  return c;
}

Result<DaemonConfig> LoadDaemonConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Fail(ErrorCode::kNotFound, fmt::format("config file {}: cannot open it", path));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseDaemonConfig(text.str(), path);
}

Result<std::pair<std::string, int>> ParseListen(const std::string& listen) {
  if (listen.empty() || listen == "none") return std::pair<std::string, int>{"", -1};
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Fail(ErrorCode::kInvalidArgument, fmt::format("'{}' is not HOST:PORT", listen));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  std::string port = listen.substr(colon + 1);
  char* end = nullptr;
  long p = strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    return Fail(ErrorCode::kInvalidArgument, fmt::format("'{}': bad port", listen));
  }
  return std::pair<std::string, int>{host, static_cast<int>(p)};
}

}  // namespace tartarus::cli

// tartarus CLI, mode selection: config file, endpoints and the rules of ChooseConnection.
#include "cli/connection.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "http/client.h"

namespace tartarus::cli {
namespace {

// Bound on outside input: nobody's CLI config is this large.
constexpr size_t kMaxConfigBytes = 1 << 20;

std::string Where(const std::string& path, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  std::string where = path.empty() ? "config" : path;
  if (mark.line >= 0) {
    where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
  }
  return where;
}

Result<std::string> ScalarString(const YAML::Node& node, const std::string& path,
                                 const std::string& key) {
  if (!node.IsScalar()) {
    return Fail(ErrorCode::kInvalidArgument,
                Where(path, node) + ": " + key + ": expected a string");
  }
  return node.Scalar();
}

Result<ContextEntry> ParseContext(const YAML::Node& node, const std::string& path,
                                  const std::string& name) {
  if (!node.IsMap()) {
    return Fail(ErrorCode::kInvalidArgument,
                Where(path, node) + ": contexts." + name + ": expected a map with host and token");
  }
  ContextEntry entry;
  for (const auto& item : node) {
    if (!item.first.IsScalar()) {
      return Fail(ErrorCode::kInvalidArgument,
                  Where(path, item.first) + ": contexts." + name + ": keys must be strings");
    }
    const std::string key = item.first.Scalar();
    const std::string full_key = "contexts." + name + "." + key;
    if (key == "host") {
      entry.host = TRY(ScalarString(item.second, path, full_key));
    } else if (key == "token") {
      entry.token = TRY(ScalarString(item.second, path, full_key));
    } else {
      return Fail(ErrorCode::kInvalidArgument, Where(path, item.first) + ": unknown key '" +
                                                   full_key + "' (expected host, token)");
    }
  }
  if (entry.host.empty()) {
    return Fail(ErrorCode::kInvalidArgument,
                Where(path, node) + ": contexts." + name + ": host is missing");
  }
  return entry;
}

Result<CliConfig> ParseConfigNode(const YAML::Node& root, const std::string& path) {
  CliConfig config;
  config.path = path;
  if (!root || root.IsNull()) return config;  // an empty file
  if (!root.IsMap()) {
    return Fail(ErrorCode::kInvalidArgument,
                Where(path, root) + ": expected a map with current-context and contexts");
  }
  for (const auto& item : root) {
    if (!item.first.IsScalar()) {
      return Fail(ErrorCode::kInvalidArgument, Where(path, item.first) + ": keys must be strings");
    }
    const std::string key = item.first.Scalar();
    if (key == "current-context") {
      if (!item.second.IsNull()) {
        config.current_context = TRY(ScalarString(item.second, path, key));
      }
    } else if (key == "contexts") {
      if (item.second.IsNull()) continue;
      if (!item.second.IsMap()) {
        return Fail(
            ErrorCode::kInvalidArgument,
            Where(path, item.second) + ": contexts: expected a map of name -> {host, token}");
      }
      for (const auto& context : item.second) {
        const std::string name = TRY(ScalarString(context.first, path, "contexts"));
        if (name.empty()) {
          return Fail(ErrorCode::kInvalidArgument,
                      Where(path, context.first) + ": contexts: a context needs a name");
        }
        config.contexts[name] = TRY(ParseContext(context.second, path, name));
      }
    } else {
      return Fail(ErrorCode::kInvalidArgument, Where(path, item.first) + ": unknown key '" + key +
                                                   "' (expected current-context, contexts)");
    }
  }
  if (!config.current_context.empty() && !config.contexts.contains(config.current_context)) {
    return Fail(ErrorCode::kInvalidArgument, (path.empty() ? std::string("config") : path) +
                                                 ": current-context '" + config.current_context +
                                                 "' is not one of its contexts");
  }
  return config;
}

std::string GetEnv(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

Result<Connection> FromContext(const ConnectionInputs& in, const std::string& name,
                               const std::string& how) {
  auto it = in.config.contexts.find(name);
  if (it == in.config.contexts.end()) {
    std::string known;
    for (const auto& [context, entry] : in.config.contexts) {
      known += (known.empty() ? "" : ", ") + context;
    }
    std::string file = in.config.path.empty() ? "the config file" : in.config.path;
    return Fail(ErrorCode::kNotFound,
                "context '" + name + "' (" + how + ") is not in " + file +
                    (known.empty() ? " (it has no contexts)" : " (known: " + known + ")"));
  }
  Connection connection;
  connection.mode = Mode::kApi;
  connection.origin = "context '" + name + "'";
  auto endpoint = NormalizeEndpoint(it->second.host);
  if (!endpoint) return Fail(endpoint.error().Context("context '" + name + "'"));
  connection.endpoint = *endpoint;
  connection.token = !in.token_flag.empty()  ? in.token_flag
                     : !in.env_token.empty() ? in.env_token
                                             : it->second.token;
  return connection;
}

Result<Connection> FromHost(const ConnectionInputs& in, const std::string& host,
                            const std::string& origin) {
  Connection connection;
  connection.mode = Mode::kApi;
  connection.origin = origin;
  auto endpoint = NormalizeEndpoint(host);
  if (!endpoint) return Fail(endpoint.error().Context(origin));
  connection.endpoint = *endpoint;
  connection.token = !in.token_flag.empty() ? in.token_flag : in.env_token;
  return connection;
}

}  // namespace

Result<CliConfig> ParseCliConfig(std::string_view yaml, const std::string& path) {
  if (yaml.size() > kMaxConfigBytes) {
    return Fail(ErrorCode::kInvalidArgument, path + ": larger than 1 MiB");
  }
  try {
    return ParseConfigNode(YAML::Load(std::string(yaml)), path);
  } catch (const YAML::Exception& e) {
    std::string where = path.empty() ? "config" : path;
    if (e.mark.line >= 0) {
      where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    }
    return Fail(ErrorCode::kInvalidArgument, where + ": " + e.msg);
  }
}

Result<CliConfig> LoadCliConfig(const std::string& path, bool must_exist) {
  CliConfig empty;
  if (path.empty()) return empty;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (must_exist) {
      return Fail(ErrorCode::kNotFound, "config file " + path + " does not exist");
    }
    return empty;
  }
  if (std::filesystem::file_size(path, ec) > kMaxConfigBytes && !ec) {
    return Fail(ErrorCode::kInvalidArgument, path + ": larger than 1 MiB");
  }
  std::ifstream file(path);
  if (!file) return FailErrno("reading config file " + path);
  std::stringstream text;
  text << file.rdbuf();
  return ParseCliConfig(text.str(), path);
}

std::string DefaultConfigPath(const EnvLookup& env) {
  if (std::string explicit_path = env("TARTARUS_CONFIG"); !explicit_path.empty()) {
    return explicit_path;
  }
  if (std::string xdg = env("XDG_CONFIG_HOME"); !xdg.empty()) {
    return xdg + "/tartarus/config.yaml";
  }
  if (std::string home = env("HOME"); !home.empty()) {
    return home + "/.config/tartarus/config.yaml";
  }
  return "";
}

Result<std::string> NormalizeEndpoint(std::string_view host) {
  std::string text(host);
  while (!text.empty() && text.back() == '/' && text.find("://") != std::string::npos &&
         text.size() > text.find("://") + 3) {
    text.pop_back();  // "http://h:7777/" is the same endpoint
  }
  if (text.empty()) return Fail(ErrorCode::kInvalidArgument, "empty host");
  if (text.front() == '/') return "unix://" + text;
  if (text.starts_with("unix://")) {
    if (text.size() == 7 || text[7] != '/') {
      return Fail(ErrorCode::kInvalidArgument,
                  "host '" + text + "': a unix socket needs an absolute path, unix:///path");
    }
    return text;
  }
  if (text.starts_with("tcp://")) text = "http://" + text.substr(6);  // docker's spelling
  if (text.starts_with("https://")) {
    return Fail(ErrorCode::kInvalidArgument,
                "host '" + text + "': https is not supported yet; use http:// or a unix socket");
  }
  std::string authority;
  if (text.starts_with("http://")) {
    authority = text.substr(7);
  } else if (text.find("://") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                "host '" + text + "': expected http://HOST:PORT, HOST:PORT or unix:///PATH");
  } else {
    authority = text;
  }
  if (authority.empty() || authority.find('/') != std::string::npos ||
      authority.find_first_of(" \t\r\n?#@") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                "host '" + std::string(host) +
                    "': expected http://HOST:PORT, HOST:PORT or unix:///PATH (no path)");
  }
  // A port is present when the last ':' is outside an IPv6 literal's brackets.
  size_t colon = authority.rfind(':');
  size_t bracket = authority.rfind(']');
  bool has_port = colon != std::string::npos && (bracket == std::string::npos || colon > bracket);
  if (has_port) {
    std::string port = authority.substr(colon + 1);
    bool digits = !port.empty() && port.size() <= 5 &&
                  port.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoi(port) == 0 || std::stoi(port) > 65535) {
      return Fail(ErrorCode::kInvalidArgument,
                  "host '" + std::string(host) + "': port '" + port + "' is not 1-65535");
    }
  }
  // A bare host means Olympus's default port; an explicit http:// URL means URL rules (80).
  if (!has_port && !text.starts_with("http://")) authority += ":7777";
  return "http://" + authority;
}

Result<Connection> ChooseConnection(const ConnectionInputs& in, const DaemonProbe& probe) {
  if (in.local_flag) {
    if (!in.host_flag.empty() || !in.context_flag.empty()) {
      return Fail(ErrorCode::kInvalidArgument,
                  "--local cannot be combined with --host or --context");
    }
    return Connection{};
  }
  if (!in.host_flag.empty() && !in.context_flag.empty()) {
    return Fail(ErrorCode::kInvalidArgument, "give --host or --context, not both");
  }
  if (!in.host_flag.empty()) return FromHost(in, in.host_flag, "--host");
  if (!in.context_flag.empty()) return FromContext(in, in.context_flag, "--context");
  if (!in.env_host.empty()) return FromHost(in, in.env_host, "TARTARUS_HOST");
  if (!in.config.current_context.empty()) {
    return FromContext(in, in.config.current_context, "current-context");
  }
  if (!in.daemon_socket.empty() && probe && probe(in.daemon_socket)) {
    Connection connection;
    connection.mode = Mode::kApi;
    connection.endpoint = "unix://" + in.daemon_socket;
    connection.origin = "the local daemon";
    connection.token = !in.token_flag.empty() ? in.token_flag : in.env_token;
    return connection;
  }
  return Connection{};
}

bool DaemonAnswers(const std::string& socket_path) {
  std::error_code ec;
  if (!std::filesystem::is_socket(socket_path, ec)) return false;
  http::ClientOptions options;
  options.connect_timeout = std::chrono::milliseconds(500);
  options.request_timeout = std::chrono::milliseconds(2000);
  auto client = http::Client::Create("unix://" + socket_path, options);
  if (!client) return false;
  auto response = client->Do("GET", "/healthz");
  return response && response->status == 200;
}

Result<Connection> SelectConnection(const GlobalOptions& global) {
  ConnectionInputs in;
  in.local_flag = global.local;
  in.host_flag = global.host;
  in.token_flag = global.token;
  in.context_flag = global.context;
  in.env_host = GetEnv("TARTARUS_HOST");
  in.env_token = GetEnv("TARTARUS_TOKEN");
  if (!in.local_flag && in.host_flag.empty() && (in.env_host.empty() || !in.context_flag.empty())) {
    // The config file only matters when it can decide; a file named explicitly must exist.
    bool named = !global.config_path.empty() || !GetEnv("TARTARUS_CONFIG").empty();
    std::string path = !global.config_path.empty() ? global.config_path : DefaultConfigPath(GetEnv);
    in.config = TRY(LoadCliConfig(path, named));
  }
  in.daemon_socket = global.node.state_dir + "/olympus.sock";
  return ChooseConnection(in, DaemonAnswers);
}

}  // namespace tartarus::cli

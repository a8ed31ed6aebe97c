// tartarus CLI, mode selection: whether a command talks to Olympus (the control plane's
// HTTP API) or acts on this host's state directory itself (local, embedded mode).
// The rules live here and nowhere else, so every command chooses the same way.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus::cli {

struct GlobalOptions;

// One entry of the config file's `contexts:` map.
struct ContextEntry {
  std::string host;
  std::string token;
};

// ~/.config/tartarus/config.yaml:
//   current-context: prod
//   contexts:
//     prod: {host: http://olympus.example:7777, token: tt_...}
struct CliConfig {
  std::string path;  // where it was read from; "" when there was no file
  std::string current_context;
  std::map<std::string, ContextEntry> contexts;
};

// Parses the config file's text; errors name the file and the key that was wrong.
Result<CliConfig> ParseCliConfig(std::string_view yaml, const std::string& path);
// Reads and parses `path`. A missing file is an empty config unless `must_exist` (the
// user named the file explicitly).
Result<CliConfig> LoadCliConfig(const std::string& path, bool must_exist);

using EnvLookup = std::function<std::string(const char* name)>;  // "" when unset
// $TARTARUS_CONFIG, else $XDG_CONFIG_HOME/tartarus/config.yaml, else
// $HOME/.config/tartarus/config.yaml ("" when none of them can be formed).
std::string DefaultConfigPath(const EnvLookup& env);

// "host:port" -> "http://host:port"; a bare host gets Olympus's port 7777; "/x.sock" ->
// "unix:///x.sock". http:// and unix:// pass through; https and other schemes are errors.
Result<std::string> NormalizeEndpoint(std::string_view host);

enum class Mode { kLocal, kApi };

struct Connection {
  Mode mode = Mode::kLocal;
  std::string endpoint;  // for the API: "http://host:port" or "unix:///path"
  std::string token;     // bearer token; may be empty (the daemon's socket needs none)
  std::string origin;    // where the endpoint came from, for error messages: "--host", ...
  bool api() const { return mode == Mode::kApi; }
};

// Everything that decides the mode, gathered from flags, environment and config file.
struct ConnectionInputs {
  bool local_flag = false;  // --local: this host's state directory, whatever else is set
  std::string host_flag, token_flag, context_flag;
  std::string env_host, env_token;
  CliConfig config;
  std::string daemon_socket;  // <state_dir>/olympus.sock
};

// True when a daemon listens on this Unix socket and answers GET /healthz.
using DaemonProbe = std::function<bool(const std::string& socket_path)>;

// The rules, first match wins:
//   --local                                   -> local mode
//   --host URL                                -> API at URL
//   --context NAME                            -> API at that context's host
//   TARTARUS_HOST                             -> API at it
//   the config file's current-context         -> API at that context's host
//   <state_dir>/olympus.sock answers /healthz -> API over that socket (trusted, no token)
//   otherwise                                 -> local mode
// Token: --token, else TARTARUS_TOKEN, else the context's token (only when the host came
// from that context, so a secret never goes to a host it was not written for).
// A named context that does not exist is an error, never a fallback to local mode.
Result<Connection> ChooseConnection(const ConnectionInputs& inputs, const DaemonProbe& probe);

// The real probe: GET /healthz over the socket with short deadlines.
bool DaemonAnswers(const std::string& socket_path);

// ChooseConnection with this process's flags, environment, config file and daemon socket.
Result<Connection> SelectConnection(const GlobalOptions& global);

}  // namespace tartarus::cli

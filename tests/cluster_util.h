// Helpers for control-plane tests: real daemons (`tartarus up`, `olympus`, `agent`) as child
// processes with their own state directories, an HTTP client to them, and checks of JSON
// answers against docs/openapi.yaml.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/subprocess.h"
#include "http/client.h"

namespace tartarus::testing {

// A state directory for one daemon: fresh, with the host's built templates and debootstrap
// cache linked in (so tests do not rebuild them). Removed (with everything under it) when
// the object goes away.
class ScratchState {
 public:
  ScratchState();
  ~ScratchState();
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

// A daemon process: `tartarus --state-dir DIR <args>`, stderr in DIR/<name>.log.
class Daemon {
 public:
  Daemon(std::string state_dir, std::string name, std::vector<std::string> args);
  ~Daemon();  // SIGTERM, then SIGKILL after 20 s
  Status Start();
  // Waits until GET /healthz at `endpoint` answers 200.
  Status WaitHealthy(const std::string& endpoint,
                     std::chrono::seconds timeout = std::chrono::seconds(30));
  // SIGTERM and wait: the exit status.
  Result<ExitStatus> Stop(std::chrono::seconds timeout = std::chrono::seconds(30));
  void Kill9();
  bool running() const { return running_; }
  std::string Log() const;  // what it wrote to stderr
  const std::string& state_dir() const { return state_dir_; }

 private:
  std::string state_dir_, name_;
  std::vector<std::string> args_;
  Subprocess process_;
  bool running_ = false;
};

// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
int FreePort();

// Blocking API calls. `json` is the parsed body (null when empty or not JSON).
struct ApiResponse {
  int status = 0;
  std::string body;
  nlohmann::json json;
  std::string request_id;
};
class Api {
 public:
  Api(std::string endpoint, std::string token = "");
  ApiResponse Call(const std::string& method, const std::string& target,
                   const std::string& body = "",
                   std::vector<std::pair<std::string, std::string>> headers = {});
  ApiResponse Post(const std::string& target, const nlohmann::json& body,
                   std::vector<std::pair<std::string, std::string>> headers = {});
  // A streaming GET/POST: every NDJSON event, in order, until the stream ends.
  std::vector<nlohmann::json> Events(const std::string& method, const std::string& target,
                                     const std::string& body = "", int* status = nullptr);
  // Polls GET /v1/sandboxes/{id} until its state is one of `states` (or the timeout).
  nlohmann::json WaitForState(const std::string& id, const std::vector<std::string>& states,
                              std::chrono::seconds timeout = std::chrono::seconds(120));
  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string endpoint_, token_;
};

// POSTs one stdin chunk at `offset` (`exec` empty: the main command's stdin).
ApiResponse PostStdin(Api& api, const std::string& sandbox, const std::string& exec,
                      uint64_t offset, const std::string& data, bool eof = false);

// One streaming exec (POST /v1/sandboxes/{id}/exec with `request`), read on a thread of its
// own: its exec id (with stdin) as soon as the first event names it, what it printed
// (data_b64 decoded), its last event and the HTTP status.
class ExecStream {
 public:
  ExecStream(const std::string& endpoint, const std::string& sandbox,
             const nlohmann::json& request);
  ~ExecStream();
  // Waits until `ready` holds for what arrived so far (false if the stream ended first or the
  // timeout passed).
  bool WaitFor(const std::function<bool(const std::string& exec_id, const std::string& out)>& ready,
               std::chrono::seconds timeout = std::chrono::seconds(60));
  std::string WaitForId();  // the exec id, or empty if the stream ended without one
  std::string exec_id();
  std::string OutSoFar();
  void Join();
  // After Join(): everything it printed, its last event, the HTTP status.
  const std::string& out() const { return out_; }
  const nlohmann::json& end() const { return end_; }
  int status() const { return status_; }

 private:
  void Done();
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::string exec_id_, out_;
  nlohmann::json end_;
  int status_ = 0;
  bool done_ = false;
};

// Checks `value` against a schema of docs/openapi.yaml (components/schemas/<name>): types,
// required fields and enums, following $ref. Empty when it conforms, else what is wrong.
std::string CheckSchema(const nlohmann::json& value, const std::string& schema_name);
// Every (method, path template) docs/openapi.yaml documents.
std::vector<std::pair<std::string, std::string>> DocumentedOperations();

}  // namespace tartarus::testing

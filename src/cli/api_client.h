// tartarus CLI, Olympus client: typed calls for the endpoints of docs/openapi.yaml over
// http::Client. API errors become Error values carrying the server's message and request id
// ("sandbox 3f2a not found (request 9c1e...)"). Every type keeps the JSON it was read from
// (`raw`) so `--json` prints what the server sent, including fields this CLI does not know.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/connection.h"
#include "cli/stream_events.h"
#include "common/result.h"
#include "store/control_store.h"

namespace tartarus::http {
class Client;
}

namespace tartarus::cli {

struct ApiLimits {
  int64_t millicpus = 0, memory_bytes = 0, disk_bytes = 0, timeout_ms = 0;
};

struct ApiSandbox {
  std::string id, tenant, template_name, runtime, state;
  std::vector<std::string> command;
  ApiLimits limits;
  std::map<std::string, std::string> labels;
  std::string node;
  int64_t attempt = 0;
  std::optional<int> exit_code;
  int signal = 0;
  bool timed_out = false, kill_requested = false;
  std::string error, reason;
  int64_t created_ms = 0, started_ms = 0, finished_ms = 0;
  nlohmann::json raw;
};

// exited, killed, failed, lost: the sandbox will not change any more (the store's rule).
using store::IsFinalSandboxState;

struct SandboxPage {
  std::vector<ApiSandbox> items;
  std::string next_page_token;
};

struct SandboxFilter {
  std::string state, template_name, node;
  int limit = 0;  // 0: the server's default
  std::string page_token;
};

struct ApiNode {
  std::string id, name, address, state;
  int64_t millicpus = 0, memory_bytes = 0, reserved_millicpus = 0, reserved_memory_bytes = 0;
  int64_t active_jobs = 0, lease_ms = 0, heartbeat_ms = 0;
  std::map<std::string, std::string> labels;
  std::vector<std::string> runtimes, templates;
  nlohmann::json raw;
};

struct ApiToken {
  std::string id, tenant, name, secret;  // secret: only in the create response
  int64_t created_ms = 0;
  std::optional<int64_t> revoked_ms;
  nlohmann::json raw;
};

struct ApiPolicy {
  std::string name, tenant, template_name, yaml;
  int64_t updated_ms = 0;
  nlohmann::json raw;
};

struct ApiTenant {
  std::string id, name;
  int64_t created_ms = 0;
  nlohmann::json raw;
};

struct ApiErrorRecord {
  std::string id, tenant, sandbox, node, kind, message;
  int64_t created_ms = 0;
  nlohmann::json raw;
};

struct ErrorFilter {
  std::string sandbox, kind;
  int limit = 0;
};

struct ApiQueueStats {
  int64_t queued = 0, assigned = 0, running = 0, done = 0, dead = 0;
  nlohmann::json raw;
};

struct ApiJob {
  std::string id, state, node, last_error, reason;
  int64_t priority = 0, attempts = 0, max_attempts = 0, available_ms = 0;
  nlohmann::json raw;
};

// The Error for a non-2xx response: the server's {"error": {...}} message with its request
// id, or the status and the start of the body when the body is not that shape.
Error ApiError(int status, std::string_view body, std::string_view request_id_header);

// Parsers for response bodies; errors name the field ("sandbox: state: not a string").
Result<ApiSandbox> ParseSandbox(const nlohmann::json& json);
Result<ApiNode> ParseNode(const nlohmann::json& json);
Result<ApiToken> ParseToken(const nlohmann::json& json);
Result<ApiPolicy> ParsePolicy(const nlohmann::json& json);

// The answer to one stdin chunk (POST /v1/sandboxes/{id}[/execs/{exec}]/stdin).
struct StdinAnswer {
  int status = 0;       // the HTTP status; 0: no answer (error says why)
  std::string code;     // the API's error code when not 200 ("stdin_closed", "stdin_busy", ...)
  uint64_t offset = 0;  // on 200: the bytes the command's stdin has taken so far
  Error error;          // when not 200
};

class ApiClient {
 public:
  static Result<ApiClient> Create(const Connection& connection);
  ApiClient(ApiClient&&) noexcept;
  ApiClient& operator=(ApiClient&&) noexcept;
  ~ApiClient();

  // POST /v1/sandboxes with `spec` (a CreateSandbox object). The key makes a retry of the
  // same request return the same sandbox instead of creating a second one.
  Result<ApiSandbox> CreateSandbox(const nlohmann::json& spec, const std::string& idempotency_key);
  Result<ApiSandbox> GetSandbox(const std::string& id);
  Result<SandboxPage> ListSandboxes(const SandboxFilter& filter);
  Result<ApiSandbox> KillSandbox(const std::string& id);
  Status DeleteSandbox(const std::string& id);

  // The logs and exec streams: on_event gets every stdout/stderr event as it arrives (it
  // returns false to stop reading); the result is the end event. A stream that stops
  // before its end event is a kProtocol error.
  using EventFn = std::function<bool(const StreamEvent&)>;
  Result<StreamEvent> StreamLogs(const std::string& id, bool follow, const EventFn& on_event);
  Result<StreamEvent> Exec(const std::string& id, const nlohmann::json& request,
                           const EventFn& on_event);

  // One chunk of stdin at `offset` for the main command (exec_id empty) or an exec; `eof`
  // closes the stdin after it. A retry with the same offset is applied once.
  StdinAnswer SendStdin(const std::string& id, const std::string& exec_id, uint64_t offset,
                        std::string_view data, bool eof);

  Result<std::string> ReadFile(const std::string& id, const std::string& path);
  Status WriteFile(const std::string& id, const std::string& path, std::string_view data, int mode);

  Result<std::vector<ApiNode>> ListNodes();
  // action: cordon, uncordon or drain.
  Result<ApiNode> NodeAction(const std::string& id, const std::string& action);

  Result<ApiToken> CreateToken(const std::string& tenant, const std::string& name);
  Result<std::vector<ApiToken>> ListTokens();
  Status RevokeToken(const std::string& id);

  Result<ApiPolicy> PutPolicy(const std::string& name, const std::string& yaml);
  Result<std::vector<ApiPolicy>> ListPolicies();
  Result<ApiPolicy> GetPolicy(const std::string& name);
  Status DeletePolicy(const std::string& name);

  Result<std::vector<ApiTenant>> ListTenants();
  Result<std::vector<ApiErrorRecord>> ListErrors(const ErrorFilter& filter);
  Result<ApiQueueStats> QueueStats();
  Result<std::vector<ApiJob>> DeadJobs();
  Result<ApiSandbox> ReplayJob(const std::string& id);

  // Aborts a call running on another thread (a second Ctrl-C); thread-safe.
  void Cancel();
  const Connection& connection() const { return connection_; }

 private:
  ApiClient(Connection connection, std::unique_ptr<http::Client> client);
  // One request; a non-2xx status becomes ApiError, a transport error names the endpoint.
  Result<std::string> Call(const std::string& method, const std::string& target,
                           const std::string& body = "", const std::string& content_type = "",
                           std::vector<std::pair<std::string, std::string>> headers = {});
  Result<nlohmann::json> CallJson(const std::string& method, const std::string& target,
                                  const std::string& body = "",
                                  const std::string& content_type = "",
                                  std::vector<std::pair<std::string, std::string>> headers = {});
  Result<StreamEvent> StreamEvents(const std::string& method, const std::string& target,
                                   const std::string& body, const EventFn& on_event);
  Error Transport(const Error& error) const;

  Connection connection_;
  std::unique_ptr<http::Client> client_;
};

}  // namespace tartarus::cli

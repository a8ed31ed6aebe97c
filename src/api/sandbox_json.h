// Olympus (the API server): the JSON shapes of docs/openapi.yaml for sandboxes, and the strict
// parsing of create and exec requests. Request bodies are outside input: every field is
// checked for type and bounds, unknown fields are refused, and errors name the field.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "store/control_store.h"

namespace tartarus::api {

// What a sandbox runs: stored as the sandbox's spec_json once Themis has filled in limits.
struct RunSpec {
  std::vector<std::string> command;
  std::vector<std::string> env;  // KEY=VALUE
  std::string workdir, user;
  int64_t millicpus = 0, memory_bytes = 0, disk_bytes = 0, timeout_ms = 0;
  int64_t pids = 0;    // 0: the template's or the node's default
  bool stdin = false;  // the command's stdin stays open for POST .../stdin (else /dev/null)
};

std::string RunSpecToJson(const RunSpec& spec);
Result<RunSpec> RunSpecFromJson(std::string_view json);

// POST /v1/sandboxes, parsed and bounds-checked but not yet admitted (limits optional).
struct CreateRequest {
  std::string template_name = "base";
  std::string runtime;  // empty: the first runtime policy allows, else container
  std::vector<std::string> command, env;
  std::string workdir, user;
  std::optional<int64_t> millicpus, memory_bytes, disk_bytes, timeout_ms;
  std::map<std::string, std::string> labels, node_selector;
  int priority = 0;
  int64_t deadline_ms = 0;  // relative; 0: wait as long as it takes
  int max_attempts = 3;
  int64_t pids = 0;
  bool stdin = false;
};
Result<CreateRequest> ParseCreateRequest(std::string_view body);

// POST /v1/sandboxes/{id}/exec.
struct ExecRequest {
  std::vector<std::string> command, env;
  std::string workdir, user;
  int64_t timeout_ms = 0;
  bool stdin = false;  // the stream starts with {"event":"started","exec_id":...}
};
Result<ExecRequest> ParseExecRequest(std::string_view body);
nlohmann::json ExecRequestToJson(const ExecRequest& request);

// The Sandbox schema. tenant_name is shown instead of the tenant's id.
nlohmann::json SandboxToJson(const store::SandboxRow& row, const std::string& tenant_name);
nlohmann::json JobToJson(const store::JobRow& job);
nlohmann::json NodeToJson(const store::NodeRow& node);

// Checks shared by the request parsers and the node API.
bool IsValidTemplateName(std::string_view name);
bool IsValidSandboxId(std::string_view id);  // 16 lowercase hex digits
std::string NewSandboxId();
inline constexpr const char* kKnownRuntimes[] = {"container", "container-crun", "gvisor",
                                                 "microvm"};
bool IsKnownRuntime(std::string_view runtime);
bool IsValidExecId(std::string_view id);  // 32 lowercase hex digits (a node's exec id)

}  // namespace tartarus::api

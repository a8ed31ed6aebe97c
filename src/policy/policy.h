// Themis (the policy engine): YAML policies and the admission decision for one sandbox
// request. Parsing reads outside input and never throws; errors name the field and
// position ("policy.yaml:7:14: limits.max_memory: '2Q' is not a size"). Evaluation is
// pure: the caller passes the policies and the tenant's usage. docs/policies.md
// describes the format and the rules.
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::policy {

// Bound on outside input: the YAML text of one policy.
inline constexpr size_t kMaxPolicyBytes = 256 << 10;
// The name of the built-in policy; an operator policy of this name with no tenant and no
// template replaces the built-in values it sets (how an operator raises the ceilings).
inline constexpr std::string_view kDefaultPolicyName = "default";

// "60/m": at most `count` creations per `window`.
struct RateLimit {
  int64_t count = 0;
  std::chrono::milliseconds window{0};

  bool operator==(const RateLimit&) const = default;
};

// Stored now, enforced by Styx later. `egress: deny` -> deny_all; a list -> the
// destinations allowed ("host:port", "ip:port", "cidr:port"; IPv6 in brackets).
struct NetworkRules {
  bool egress_deny_all = true;
  std::vector<std::string> egress_allow;

  bool operator==(const NetworkRules&) const = default;
};

// Unset optionals mean "this policy says nothing about it".
struct Policy {
  std::string name;           // [a-z0-9-]{1,63}
  std::string tenant;         // empty: every tenant
  std::string template_name;  // empty: every template
  std::optional<std::vector<std::string>> allowed_templates;
  std::optional<std::vector<std::string>> allowed_runtimes;
  std::optional<int64_t> max_millicpus;
  std::optional<int64_t> max_memory_bytes;
  std::optional<int64_t> max_disk_bytes;
  std::optional<std::chrono::milliseconds> max_timeout;
  std::optional<std::chrono::milliseconds> default_timeout;
  std::optional<int64_t> max_concurrent;
  std::optional<RateLimit> max_rate;
  std::optional<NetworkRules> network;
  std::string source_yaml;  // the text it was parsed from (empty for DefaultPolicy())

  bool operator==(const Policy&) const = default;
};

// Parses and validates one policy document; source_name prefixes error positions.
Result<Policy> ParsePolicy(std::string_view yaml, std::string_view source_name = "policy");

bool IsValidPolicyName(std::string_view name);

// Safe built-in values: any runtime, no network, max 4 CPUs, 4G memory, 8G disk,
// max_timeout 1h, default_timeout 10m, max_concurrent 100, max_rate 600/m.
Policy DefaultPolicy();

// True when the policy applies to this tenant (name) and template.
bool Applies(const Policy& policy, std::string_view tenant, std::string_view template_name);

struct AdmissionRequest {
  std::string tenant;         // tenant name
  std::string template_name;  // the template the sandbox will use (the server fills its default)
  // Empty: the client left it to the platform. Admission::runtime then names the first
  // runtime the policies allow, or stays empty when no policy restricts runtimes.
  std::string runtime;
  std::optional<int64_t> millicpus, memory_bytes, disk_bytes;
  std::optional<std::chrono::milliseconds> timeout;
};

struct TenantUsage {
  int64_t active = 0;  // sandboxes queued, assigned or running for the tenant
  // Creations by the tenant within the last `window`; unset counts as 0.
  std::function<int64_t(std::chrono::milliseconds window)> created_within;
};

struct Denial {
  std::string policy;  // name of the policy that denied ("default" for the built-in one)
  std::string rule;    // the field, e.g. "limits.max_memory", "allow.runtimes"
  std::string reason;  // for people: "memory 8G exceeds 2G allowed by policy x (limits.max_memory)"
  bool retry_later = false;  // max_concurrent / max_rate: may pass later (HTTP 429, not 403)
};

// The request with every limit filled in.
struct Admission {
  int64_t millicpus = 0, memory_bytes = 0, disk_bytes = 0;
  std::chrono::milliseconds timeout{0};
  std::string runtime;                // see AdmissionRequest::runtime
  std::vector<std::string> policies;  // names of the policies that applied, default first
};

// Every policy that applies (tenant matches or is unset, template matches or is unset)
// must admit, plus DefaultPolicy(). Unset request limits get defaults (1 CPU, 512M,
// 1G disk, default_timeout), lowered to the lowest applicable cap when above it. The
// first denial found is returned (policies in the order given, the default first).
std::expected<Admission, Denial> Evaluate(const AdmissionRequest& request,
                                          const std::vector<Policy>& policies,
                                          const TenantUsage& usage);

// "60/m", "1/s", "100/h".
std::string FormatRate(const RateLimit& rate);

}  // namespace tartarus::policy

// Themis (the policy engine): policy parsing and admission. yaml-cpp throws on bad input
// and on misuse of nodes, so every yaml-cpp call happens inside the try block of
// ParsePolicy(); Evaluate() touches no YAML at all.
#include "policy/policy.h"
#include "common/field_hints.h"
#include "common/yaml_kind.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <limits>
#include <set>

#include "common/units.h"

namespace tartarus::policy {
namespace {

using std::chrono::milliseconds;

constexpr size_t kMaxListEntries = 1000;
constexpr int64_t kMaxCount = 1'000'000'000;
constexpr std::string_view kTopFields[] = {"name",  "tenant", "template",
                                           "allow", "limits", "network"};
constexpr std::string_view kAllowFields[] = {"templates", "runtimes"};
constexpr std::string_view kLimitFields[] = {"max_cpus",    "max_memory",      "max_disk",
                                             "max_timeout", "default_timeout", "max_concurrent",
                                             "max_rate"};
constexpr std::string_view kNetworkFields[] = {"egress"};

// Request defaults, lowered to the applicable caps.
constexpr int64_t kDefaultMilliCpus = 1000;
constexpr int64_t kDefaultMemoryBytes = int64_t{512} << 20;
constexpr int64_t kDefaultDiskBytes = int64_t{1} << 30;

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Names of templates and runtimes: the same shape as template names.
bool IsValidObjectName(std::string_view name) {
  return !name.empty() && name.size() <= 63 && IsLowerAlnum(name[0]) &&
         std::all_of(name.begin(), name.end(), [](char c) { return IsLowerAlnum(c) || c == '-'; });
}

bool IsValidTenantName(std::string_view name) {
  return !name.empty() && name.size() <= 253 && std::all_of(name.begin(), name.end(), [](char c) {
    return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z') || c == '-' || c == '_' || c == '.';
  });
}

bool AllDigits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "500m" (millicpus) or what ParseMilliCpus takes ("2", "0.5").
Result<int64_t> ParseCpus(std::string_view text) {
  if (text.size() > 1 && text.back() == 'm' && AllDigits(text.substr(0, text.size() - 1))) {
    std::string_view digits = text.substr(0, text.size() - 1);
    // The same range ParseMilliCpus allows, but down to one millicpu.
    if (digits.size() > 9 || std::stoll(std::string(digits)) == 0 ||
        std::stoll(std::string(digits)) > 1'024'000) {
      return Fail(ErrorCode::kInvalidArgument, "out of range");
    }
    return std::stoll(std::string(digits));
  }
  return static_cast<int64_t>(TRY(ParseMilliCpus(text)));
}

// "60/m" -> 60 per minute.
std::optional<RateLimit> ParseRate(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view count = text.substr(0, slash), unit = text.substr(slash + 1);
  if (!AllDigits(count) || count.size() > 9) return std::nullopt;
  RateLimit rate;
  rate.count = std::stoll(std::string(count));
  if (unit == "s")
    rate.window = milliseconds(1000);
  else if (unit == "m")
    rate.window = milliseconds(60'000);
  else if (unit == "h")
    rate.window = milliseconds(3'600'000);
  else
    return std::nullopt;
  return rate;
}

bool IsValidPort(std::string_view port) {
  return AllDigits(port) && port.size() <= 5 && std::stoi(std::string(port)) >= 1 &&
         std::stoi(std::string(port)) <= 65535;
}

bool IsValidHostname(std::string_view host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.back() == '.') return false;
  size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
    } else if (IsLowerAlnum(c) || (c >= 'A' && c <= 'Z') || c == '-' || (c == '*' && label == 0)) {
      if (++label > 63) return false;
    } else {
      return false;
    }
  }
  return true;
}

bool IsValidIpv6(std::string_view address) {
  if (address.size() < 2 || address.size() > 45) return false;
  int colons = 0;
  for (char c : address) {
    if (c == ':') {
      ++colons;
    } else if (!std::isxdigit(static_cast<unsigned char>(c)) && c != '.') {
      return false;
    }
  }
  return colons >= 2;
}

bool IsValidPrefix(std::string_view prefix, int max) {
  return AllDigits(prefix) && prefix.size() <= 3 && std::stoi(std::string(prefix)) <= max;
}

// "host:port", "10.0.0.0/8:443", "[2001:db8::/32]:443", "*.example.com:443".
bool IsValidEgressRule(std::string_view rule) {
  size_t colon = rule.rfind(':');
  if (colon == std::string_view::npos || !IsValidPort(rule.substr(colon + 1))) return false;
  std::string_view host = rule.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    size_t slash = host.find('/');
    if (slash != std::string_view::npos) {
      if (!IsValidPrefix(host.substr(slash + 1), 128)) return false;
      host = host.substr(0, slash);
    }
    return IsValidIpv6(host);
  }
  size_t slash = host.find('/');
  if (slash != std::string_view::npos) {
    if (!IsValidPrefix(host.substr(slash + 1), 32)) return false;
    host = host.substr(0, slash);
    // A CIDR needs a dotted IPv4 address in front of it.
    int dots = 0;
    for (char c : host) {
      if (c == '.') {
        ++dots;
      } else if (c < '0' || c > '9') {
        return false;
      }
    }
    if (dots != 3) return false;
  }
  return IsValidHostname(host);
}

// The 1-based line where a second YAML document starts, or 0. A text scan because
// yaml-cpp 0.7's LoadAll can loop forever on malformed input, and Load silently drops
// every document after the first.
int SecondDocumentLine(std::string_view yaml) {
  auto has_content = [](std::string_view rest) {
    size_t start = rest.find_first_not_of(" \t\r");
    return start != std::string_view::npos && rest[start] != '#';
  };
  bool seen_content = false, ended = false;
  int line_number = 0;
  size_t pos = 0;
  while (pos <= yaml.size()) {
    size_t end = yaml.find('\n', pos);
    if (end == std::string_view::npos) end = yaml.size();
    std::string_view line = yaml.substr(pos, end - pos);
    ++line_number;
    pos = end + 1;
    bool marker_start = line.starts_with("---"), marker_end = line.starts_with("...");
    if ((marker_start || marker_end) &&
        (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r')) {
      if (marker_start && (seen_content || ended)) return line_number;
      if (marker_end) ended = true;
      if (has_content(line.substr(3))) seen_content = true;
      continue;
    }
    if (line.starts_with("%")) continue;  // a directive belongs to the next document
    if (has_content(line)) {
      if (ended) return line_number;
      seen_content = true;
    }
  }
  return 0;
}

// Walks the document; each method returns an error that names the field and position.
class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  Error At(const YAML::Mark& mark, std::string message) const {
    std::string where = source_;
    if (!mark.is_null()) {
      where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    return Error{ErrorCode::kInvalidArgument, where + ": " + message};
  }

  // "policy.yaml:7:14: limits.max_memory: '2Q' is not a size"
  Error AtField(const YAML::Node& node, std::string_view field, std::string message) const {
    return At(node.Mark(), std::string(field) + ": " + message);
  }

  Result<std::string> Scalar(const YAML::Node& node, std::string_view field) const {
    if (!node.IsScalar()) {
      return Fail(
          AtField(node, field, "must be a scalar (text), got " + std::string(YamlNodeKind(node))));
    }
    const std::string& value = node.Scalar();
    if (value.find('\0') != std::string::npos) {
      return Fail(AtField(node, field, "contains a NUL byte"));
    }
    return value;
  }

  // A list of names (templates, runtimes); duplicates removed, order kept.
  Result<std::vector<std::string>> NameList(const YAML::Node& node, std::string_view field,
                                            std::string_view what) const {
    if (!node.IsSequence()) {
      return Fail(AtField(node, field, "must be a list, got " + std::string(YamlNodeKind(node))));
    }
    if (node.size() > kMaxListEntries) {
      return Fail(
          AtField(node, field, "has more than " + std::to_string(kMaxListEntries) + " entries"));
    }
    std::vector<std::string> values;
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node item = node[i];
      std::string sub = std::string(field) + "[" + std::to_string(i) + "]";
      std::string value = TRY(Scalar(item, sub));
      if (!IsValidObjectName(value)) {
        return Fail(AtField(
            item, sub, "'" + Printable(value) + "' is not a valid " + std::string(what) + " name"));
      }
      if (std::find(values.begin(), values.end(), value) == values.end()) {
        values.push_back(std::move(value));
      }
    }
    return values;
  }

  // Calls visit(key, key_node, value_node) for each entry of a mapping; rejects
  // non-scalar and duplicate keys.
  template <class Visit>
  Status ForEachField(const YAML::Node& map, std::string_view field, Visit visit) const {
    if (!map.IsMap()) {
      return Fail(AtField(map, field, "must be a mapping, got " + std::string(YamlNodeKind(map))));
    }
    if (map.size() > kMaxListEntries) {
      return Fail(AtField(map, field, "has too many entries"));
    }
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        return Fail(
            AtField(key, field, "expected a field name, got " + std::string(YamlNodeKind(key))));
      }
      if (!seen.insert(key.Scalar()).second) {
        return Fail(At(key.Mark(), "duplicate field '" + Printable(key.Scalar()) + "'"));
      }
      TRY(visit(key.Scalar(), key, value));
    }
    return Ok();
  }

  Status Allow(const YAML::Node& node, Policy& policy) const {
    if (node.IsNull()) return Ok();
    return ForEachField(
        node, "allow",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          std::string sub = "allow." + key;
          if (key == "templates") {
            if (!value.IsNull()) policy.allowed_templates = TRY(NameList(value, sub, "template"));
          } else if (key == "runtimes") {
            if (!value.IsNull()) policy.allowed_runtimes = TRY(NameList(value, sub, "runtime"));
          } else {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "' in allow" +
                                                SuggestField(key, kAllowFields)));
          }
          return Ok();
        });
  }

  Status Limits(const YAML::Node& node, Policy& policy) const {
    if (node.IsNull()) return Ok();
    TRY(ForEachField(
        node, "limits",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          std::string sub = "limits." + key;
          if (std::find(std::begin(kLimitFields), std::end(kLimitFields), key) ==
              std::end(kLimitFields)) {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "' in limits" +
                                                SuggestField(key, kLimitFields)));
          }
          if (value.IsNull()) return Ok();  // "max_cpus:" with nothing says nothing
          if (key == "max_cpus") {
            std::string text = TRY(Scalar(value, sub));
            auto parsed = ParseCpus(text);
            if (!parsed) {
              return Fail(AtField(value, sub,
                                  "'" + Printable(text) +
                                      "' is not a CPU count (for example 2, 0.5 or 500m, "
                                      "between 0.01 and 1024)"));
            }
            policy.max_millicpus = *parsed;
          } else if (key == "max_memory" || key == "max_disk") {
            std::string text = TRY(Scalar(value, sub));
            auto parsed = ParseBytes(text);
            if (!parsed || *parsed == 0 ||
                *parsed > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
              return Fail(AtField(
                  value, sub, "'" + Printable(text) + "' is not a size (for example 512M or 2G)"));
            }
            (key == "max_memory" ? policy.max_memory_bytes : policy.max_disk_bytes) =
                static_cast<int64_t>(*parsed);
          } else if (key == "max_timeout" || key == "default_timeout") {
            std::string text = TRY(Scalar(value, sub));
            auto parsed = ParseDuration(text);
            if (!parsed || parsed->count() <= 0) {
              return Fail(AtField(
                  value, sub,
                  "'" + Printable(text) + "' is not a duration (for example 30s, 10m or 1h)"));
            }
            (key == "max_timeout" ? policy.max_timeout : policy.default_timeout) = *parsed;
          } else if (key == "max_concurrent") {
            std::string text = TRY(Scalar(value, sub));
            if (!AllDigits(text) || text.size() > 9) {
              return Fail(
                  AtField(value, sub,
                          "'" + Printable(text) + "' is not a count (a whole number, 0 or more)"));
            }
            policy.max_concurrent = std::stoll(text);
          } else if (key == "max_rate") {
            std::string text = TRY(Scalar(value, sub));
            auto parsed = ParseRate(text);
            if (!parsed || parsed->count > kMaxCount) {
              return Fail(AtField(
                  value, sub,
                  "'" + Printable(text) + "' is not a rate (N/s, N/m or N/h, for example 60/m)"));
            }
            policy.max_rate = *parsed;
          }
          return Ok();
        }));
    if (policy.default_timeout && policy.max_timeout &&
        *policy.default_timeout > *policy.max_timeout) {
      return Fail(AtField(node["default_timeout"], "limits.default_timeout",
                          FormatDuration(*policy.default_timeout) +
                              " is above limits.max_timeout " +
                              FormatDuration(*policy.max_timeout)));
    }
    return Ok();
  }

  Status Network(const YAML::Node& node, Policy& policy) const {
    if (node.IsNull()) return Ok();
    NetworkRules rules;
    TRY(ForEachField(
        node, "network",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          if (key != "egress") {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "' in network" +
                                                SuggestField(key, kNetworkFields)));
          }
          if (value.IsScalar()) {
            if (value.Scalar() != "deny") {
              return Fail(AtField(value, "network.egress",
                                  "'" + Printable(value.Scalar()) +
                                      "' is not allowed: use deny or a list of host:port / "
                                      "cidr:port destinations"));
            }
            rules = NetworkRules{};
            return Ok();
          }
          if (!value.IsSequence()) {
            return Fail(AtField(value, "network.egress",
                                "must be deny or a list, got " + std::string(YamlNodeKind(value))));
          }
          if (value.size() > kMaxListEntries) {
            return Fail(AtField(value, "network.egress", "has too many entries"));
          }
          rules.egress_deny_all = false;
          for (size_t i = 0; i < value.size(); ++i) {
            const YAML::Node item = value[i];
            std::string sub = "network.egress[" + std::to_string(i) + "]";
            std::string rule = TRY(Scalar(item, sub));
            if (!IsValidEgressRule(rule)) {
              return Fail(AtField(item, sub,
                                  "'" + Printable(rule) +
                                      "' is not a destination (host:port, ip:port or "
                                      "cidr:port, for example 10.0.0.0/8:443)"));
            }
            rules.egress_allow.push_back(std::move(rule));
          }
          return Ok();
        }));
    policy.network = std::move(rules);
    return Ok();
  }

  Result<Policy> Document(const YAML::Node& root) const {
    if (root.IsNull()) {
      return Fail(
          At(YAML::Mark::null_mark(), "empty policy: expected a mapping with at least 'name'"));
    }
    Policy policy;
    bool has_name = false;
    TRY(ForEachField(
        root, "policy",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          if (key == "name") {
            policy.name = TRY(Scalar(value, key));
            if (!IsValidPolicyName(policy.name)) {
              return Fail(AtField(value, key,
                                  "'" + Printable(policy.name) +
                                      "' is not a valid policy name (lower-case "
                                      "letters, digits and '-', at most 63)"));
            }
            has_name = true;
          } else if (key == "tenant") {
            if (value.IsNull()) return Ok();
            policy.tenant = TRY(Scalar(value, key));
            if (!IsValidTenantName(policy.tenant)) {
              return Fail(AtField(value, key,
                                  "'" + Printable(policy.tenant) + "' is not a valid tenant name"));
            }
          } else if (key == "template") {
            if (value.IsNull()) return Ok();
            policy.template_name = TRY(Scalar(value, key));
            if (!IsValidObjectName(policy.template_name)) {
              return Fail(AtField(
                  value, key,
                  "'" + Printable(policy.template_name) + "' is not a valid template name"));
            }
          } else if (key == "allow") {
            return Allow(value, policy);
          } else if (key == "limits") {
            return Limits(value, policy);
          } else if (key == "network") {
            return Network(value, policy);
          } else {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "'" +
                                                SuggestField(key, kTopFields)));
          }
          return Ok();
        }));
    if (!has_name) return Fail(At(root.Mark(), "name: is required"));
    return policy;
  }

 private:
  std::string source_;
};

// Formatting for reasons: values come from requests, so no narrowing casts.
std::string Cpus(int64_t millicpus) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(millicpus) / 1000.0);
  return buf;
}
std::string Bytes(int64_t bytes) { return FormatBytes(static_cast<uint64_t>(bytes)); }
std::string Duration(milliseconds duration) { return FormatDuration(duration); }

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out.empty() ? "none" : out;
}

bool Contains(const std::vector<std::string>& list, std::string_view item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

std::string WindowName(milliseconds window) {
  if (window == milliseconds(1000)) return "second";
  if (window == milliseconds(60'000)) return "minute";
  if (window == milliseconds(3'600'000)) return "hour";
  return Duration(window);
}

// The built-in default with an operator's untargeted "default" policy laid over it.
Policy EffectiveDefault(const std::vector<Policy>& policies) {
  Policy base = DefaultPolicy();
  for (const Policy& p : policies) {
    if (p.name != kDefaultPolicyName || !p.tenant.empty() || !p.template_name.empty()) continue;
    if (p.allowed_templates) base.allowed_templates = p.allowed_templates;
    if (p.allowed_runtimes) base.allowed_runtimes = p.allowed_runtimes;
    if (p.max_millicpus) base.max_millicpus = p.max_millicpus;
    if (p.max_memory_bytes) base.max_memory_bytes = p.max_memory_bytes;
    if (p.max_disk_bytes) base.max_disk_bytes = p.max_disk_bytes;
    if (p.max_timeout) base.max_timeout = p.max_timeout;
    if (p.default_timeout) base.default_timeout = p.default_timeout;
    if (p.max_concurrent) base.max_concurrent = p.max_concurrent;
    if (p.max_rate) base.max_rate = p.max_rate;
    if (p.network) base.network = p.network;
    base.source_yaml = p.source_yaml;
  }
  // The operator may raise max_timeout without restating default_timeout, or lower it.
  if (base.max_timeout && base.default_timeout && *base.default_timeout > *base.max_timeout) {
    base.default_timeout = base.max_timeout;
  }
  return base;
}

Denial Deny(const Policy& policy, std::string rule, std::string reason, bool retry_later = false) {
  return Denial{policy.name, std::move(rule), std::move(reason), retry_later};
}

std::string By(const Policy& policy, std::string_view rule) {
  return "allowed by policy " + policy.name + " (" + std::string(rule) + ")";
}

// The policy with the lowest cap among those the value exceeds, or null. Naming the
// strictest one tells the user the value that will actually pass.
template <class T>
const Policy* Strictest(const std::vector<const Policy*>& applicable, std::optional<T> Policy::*cap,
                        T value) {
  const Policy* strictest = nullptr;
  for (const Policy* p : applicable) {
    if ((p->*cap) && value > *(p->*cap) && (!strictest || *(p->*cap) < *(strictest->*cap))) {
      strictest = p;
    }
  }
  return strictest;
}

// The allow lists and caps: decided by the request alone.
std::optional<Denial> CheckStatic(const std::vector<const Policy*>& applicable,
                                  const AdmissionRequest& request, const Admission& admission) {
  for (const Policy* p : applicable) {
    if (p->allowed_templates && !Contains(*p->allowed_templates, request.template_name)) {
      return Deny(*p, "allow.templates",
                  "template '" + Printable(request.template_name) + "' is not allowed by policy " +
                      p->name + " (allow.templates: " + Join(*p->allowed_templates) + ")");
    }
  }
  for (const Policy* p : applicable) {
    if (p->allowed_runtimes && !admission.runtime.empty() &&
        !Contains(*p->allowed_runtimes, admission.runtime)) {
      return Deny(*p, "allow.runtimes",
                  "runtime '" + Printable(admission.runtime) + "' is not allowed by policy " +
                      p->name + " (allow.runtimes: " + Join(*p->allowed_runtimes) + ")");
    }
  }
  if (auto* p = Strictest(applicable, &Policy::max_millicpus, admission.millicpus)) {
    return Deny(*p, "limits.max_cpus",
                "cpus " + Cpus(admission.millicpus) + " exceeds " + Cpus(*p->max_millicpus) + " " +
                    By(*p, "limits.max_cpus"));
  }
  if (auto* p = Strictest(applicable, &Policy::max_memory_bytes, admission.memory_bytes)) {
    return Deny(*p, "limits.max_memory",
                "memory " + Bytes(admission.memory_bytes) + " exceeds " +
                    Bytes(*p->max_memory_bytes) + " " + By(*p, "limits.max_memory"));
  }
  if (auto* p = Strictest(applicable, &Policy::max_disk_bytes, admission.disk_bytes)) {
    return Deny(*p, "limits.max_disk",
                "disk " + Bytes(admission.disk_bytes) + " exceeds " + Bytes(*p->max_disk_bytes) +
                    " " + By(*p, "limits.max_disk"));
  }
  if (auto* p = Strictest(applicable, &Policy::max_timeout, admission.timeout)) {
    return Deny(*p, "limits.max_timeout",
                "timeout " + Duration(admission.timeout) + " exceeds " + Duration(*p->max_timeout) +
                    " " + By(*p, "limits.max_timeout"));
  }
  return std::nullopt;
}

// Concurrency and rate: may pass later, so checked only once the request itself is fine.
std::optional<Denial> CheckUsage(const std::vector<const Policy*>& applicable,
                                 const AdmissionRequest& request, const TenantUsage& usage) {
  std::string tenant = "tenant " + Printable(request.tenant);
  if (auto* p = Strictest(applicable, &Policy::max_concurrent, usage.active + 1)) {
    return Deny(*p, "limits.max_concurrent",
                tenant + " has " + std::to_string(usage.active) + " active sandboxes, the most " +
                    By(*p, "limits.max_concurrent") + "; wait for one to finish",
                true);
  }
  for (const Policy* p : applicable) {
    if (!p->max_rate) continue;
    int64_t created = usage.created_within ? usage.created_within(p->max_rate->window) : 0;
    if (created >= p->max_rate->count) {
      return Deny(*p, "limits.max_rate",
                  tenant + " created " + std::to_string(created) + " sandboxes in the last " +
                      WindowName(p->max_rate->window) + ", the most " +
                      By(*p, "limits.max_rate " + FormatRate(*p->max_rate)) + "; retry later",
                  true);
    }
  }
  return std::nullopt;
}

// The first runtime every restricting policy allows, in the first restricting policy's order.
std::optional<std::string> ResolveRuntime(const std::vector<const Policy*>& applicable) {
  const Policy* first = nullptr;
  for (const Policy* p : applicable) {
    if (p->allowed_runtimes) {
      first = p;
      break;
    }
  }
  if (first == nullptr) return std::string();
  for (const auto& runtime : *first->allowed_runtimes) {
    bool everywhere = std::all_of(applicable.begin(), applicable.end(), [&](const Policy* p) {
      return !p->allowed_runtimes || Contains(*p->allowed_runtimes, runtime);
    });
    if (everywhere) return runtime;
  }
  return std::nullopt;
}

}  // namespace

bool IsValidPolicyName(std::string_view name) {
  return !name.empty() && name.size() <= 63 &&
         std::all_of(name.begin(), name.end(), [](char c) { return IsLowerAlnum(c) || c == '-'; });
}

Result<Policy> ParsePolicy(std::string_view yaml, std::string_view source_name) {
  Parser parser(source_name);
  if (yaml.size() > kMaxPolicyBytes) {
    return Fail(parser.At(YAML::Mark::null_mark(), "policy is larger than 256K"));
  }
  try {
    if (int line = SecondDocumentLine(yaml)) {
      YAML::Mark mark;
      mark.line = line - 1;
      mark.column = 0;
      return Fail(parser.At(mark, "expected one policy per file, found a second document"));
    }
    Policy policy = TRY(parser.Document(YAML::Load(std::string(yaml))));
    policy.source_yaml = std::string(yaml);
    return policy;
  } catch (const YAML::Exception& error) {
    // error.msg is yaml-cpp's message without its own "line x, column y" prefix.
    return Fail(parser.At(error.mark, "invalid YAML: " + error.msg));
  } catch (const std::exception& error) {
    return Fail(parser.At(YAML::Mark::null_mark(), std::string("invalid policy: ") + error.what()));
  } catch (...) {
    return Fail(parser.At(YAML::Mark::null_mark(), "invalid policy"));
  }
}

Policy DefaultPolicy() {
  Policy policy;
  policy.name = std::string(kDefaultPolicyName);
  policy.max_millicpus = 4000;
  policy.max_memory_bytes = int64_t{4} << 30;
  policy.max_disk_bytes = int64_t{8} << 30;
  policy.max_timeout = std::chrono::hours(1);
  policy.default_timeout = std::chrono::minutes(10);
  policy.max_concurrent = 100;
  policy.max_rate = RateLimit{600, std::chrono::minutes(1)};
  policy.network = NetworkRules{};
  return policy;
}

bool Applies(const Policy& policy, std::string_view tenant, std::string_view template_name) {
  return (policy.tenant.empty() || policy.tenant == tenant) &&
         (policy.template_name.empty() || policy.template_name == template_name);
}

std::expected<Admission, Denial> Evaluate(const AdmissionRequest& request,
                                          const std::vector<Policy>& policies,
                                          const TenantUsage& usage) {
  Policy base = EffectiveDefault(policies);
  std::vector<const Policy*> applicable = {&base};
  for (const Policy& p : policies) {
    bool is_default = p.name == kDefaultPolicyName && p.tenant.empty() && p.template_name.empty();
    if (!is_default && Applies(p, request.tenant, request.template_name)) applicable.push_back(&p);
  }

  // Bad numbers from the client are denied by no policy in particular.
  auto invalid = [](std::string rule, std::string reason) {
    return std::unexpected(Denial{"", std::move(rule), std::move(reason), false});
  };
  if (request.millicpus && *request.millicpus <= 0) {
    return invalid("request.cpus", "cpus must be above 0");
  }
  if (request.memory_bytes && *request.memory_bytes <= 0) {
    return invalid("request.memory", "memory must be above 0");
  }
  if (request.disk_bytes && *request.disk_bytes <= 0) {
    return invalid("request.disk", "disk must be above 0");
  }
  if (request.timeout && request.timeout->count() <= 0) {
    return invalid("request.timeout", "timeout must be above 0");
  }

  // Defaults, lowered to the lowest applicable cap (the built-in default sets every cap).
  auto lowest = [&](auto field, auto start) {
    for (const Policy* p : applicable) {
      if ((p->*field) && *(p->*field) < start) start = *(p->*field);
    }
    return start;
  };
  Admission admission;
  admission.millicpus =
      request.millicpus.value_or(lowest(&Policy::max_millicpus, kDefaultMilliCpus));
  admission.memory_bytes =
      request.memory_bytes.value_or(lowest(&Policy::max_memory_bytes, kDefaultMemoryBytes));
  admission.disk_bytes =
      request.disk_bytes.value_or(lowest(&Policy::max_disk_bytes, kDefaultDiskBytes));
  admission.timeout = request.timeout.value_or(
      lowest(&Policy::max_timeout, lowest(&Policy::default_timeout, *base.default_timeout)));

  admission.runtime = request.runtime;
  if (request.runtime.empty()) {
    auto resolved = ResolveRuntime(applicable);
    if (!resolved) {
      std::string names;
      const Policy* last = applicable.back();
      for (const Policy* p : applicable) {
        if (!p->allowed_runtimes) continue;
        names += (names.empty() ? "" : ", ") + p->name;
        last = p;
      }
      return std::unexpected(Denial{
          last->name, "allow.runtimes",
          "no runtime is allowed by all of the policies " + names + " (allow.runtimes)", false});
    }
    admission.runtime = *resolved;
  }

  if (auto denial = CheckStatic(applicable, request, admission)) return std::unexpected(*denial);
  if (auto denial = CheckUsage(applicable, request, usage)) return std::unexpected(*denial);
  for (const Policy* p : applicable) admission.policies.push_back(p->name);
  return admission;
}

std::string FormatRate(const RateLimit& rate) {
  std::string unit;
  if (rate.window == milliseconds(1000))
    unit = "s";
  else if (rate.window == milliseconds(60'000))
    unit = "m";
  else if (rate.window == milliseconds(3'600'000))
    unit = "h";
  else
    unit = FormatDuration(rate.window);
  return std::to_string(rate.count) + "/" + unit;
}

}  // namespace tartarus::policy

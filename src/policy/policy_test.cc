// Themis (the policy engine): parsing errors with positions, each admission rule and
// denial, defaults filling and caps. Also built under ASan/UBSan (policy_asan_test).
#include "policy/policy.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

namespace tartarus::policy {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;

constexpr int64_t kMi = int64_t{1} << 20;
constexpr int64_t kGi = int64_t{1} << 30;

Policy MustParse(std::string_view yaml) {
  auto policy = ParsePolicy(yaml, "test.yaml");
  EXPECT_TRUE(policy.has_value()) << (policy ? "" : policy.error().message);
  return policy ? *policy : Policy{};
}

TEST(ParsePolicyTest, ParsesEveryField) {
  constexpr std::string_view kYaml = R"(name: untrusted-default
tenant: acme
template: python-ds
allow:
  templates: [base, python-ds, base]
  runtimes: [gvisor, microvm]
limits:
  max_cpus: 2
  max_memory: 2G
  max_disk: 4G
  max_timeout: 10m
  default_timeout: 5m
  max_concurrent: 10
  max_rate: 60/m
network:
  egress: deny
)";
  Policy p = MustParse(kYaml);
  EXPECT_EQ(p.name, "untrusted-default");
  EXPECT_EQ(p.tenant, "acme");
  EXPECT_EQ(p.template_name, "python-ds");
  EXPECT_EQ(p.allowed_templates, (std::vector<std::string>{"base", "python-ds"}));
  EXPECT_EQ(p.allowed_runtimes, (std::vector<std::string>{"gvisor", "microvm"}));
  EXPECT_EQ(p.max_millicpus, 2000);
  EXPECT_EQ(p.max_memory_bytes, 2 * kGi);
  EXPECT_EQ(p.max_disk_bytes, 4 * kGi);
  EXPECT_EQ(p.max_timeout, minutes(10));
  EXPECT_EQ(p.default_timeout, minutes(5));
  EXPECT_EQ(p.max_concurrent, 10);
  EXPECT_EQ(p.max_rate, (RateLimit{60, minutes(1)}));
  ASSERT_TRUE(p.network.has_value());
  EXPECT_TRUE(p.network->egress_deny_all);
  EXPECT_EQ(p.source_yaml, kYaml);
}

TEST(ParsePolicyTest, MinimalPolicySaysNothing) {
  Policy p = MustParse("name: empty\n");
  EXPECT_EQ(p.tenant, "");
  EXPECT_EQ(p.template_name, "");
  EXPECT_FALSE(p.allowed_templates.has_value());
  EXPECT_FALSE(p.allowed_runtimes.has_value());
  EXPECT_FALSE(p.max_millicpus.has_value());
  EXPECT_FALSE(p.max_rate.has_value());
  EXPECT_FALSE(p.network.has_value());
}

TEST(ParsePolicyTest, QuantityForms) {
  EXPECT_EQ(MustParse("name: a\nlimits: {max_cpus: 500m}").max_millicpus, 500);
  EXPECT_EQ(MustParse("name: a\nlimits: {max_cpus: '0.5'}").max_millicpus, 500);
  EXPECT_EQ(MustParse("name: a\nlimits: {max_memory: 512M}").max_memory_bytes, 512 * kMi);
  EXPECT_EQ(MustParse("name: a\nlimits: {max_rate: 5/s}").max_rate,
            (RateLimit{5, milliseconds(1000)}));
  EXPECT_EQ(MustParse("name: a\nlimits: {max_rate: 100/h}").max_rate,
            (RateLimit{100, std::chrono::hours(1)}));
  EXPECT_EQ(MustParse("name: a\nlimits: {max_concurrent: 0}").max_concurrent, 0);
  EXPECT_FALSE(MustParse("name: a\nlimits: {max_cpus: }").max_millicpus.has_value());
  EXPECT_FALSE(MustParse("name: a\nallow: {templates: }").allowed_templates.has_value());
  EXPECT_EQ(MustParse("name: a\nallow: {templates: []}").allowed_templates,
            std::vector<std::string>{});
}

TEST(ParsePolicyTest, EgressList) {
  Policy p = MustParse(R"(name: net
network:
  egress: ["pypi.org:443", "10.0.0.0/8:5432", "[2001:db8::/32]:443", "*.example.com:80",
           "1.2.3.4:53"]
)");
  ASSERT_TRUE(p.network.has_value());
  EXPECT_FALSE(p.network->egress_deny_all);
  EXPECT_EQ(p.network->egress_allow.size(), 5u);
  EXPECT_EQ(p.network->egress_allow[1], "10.0.0.0/8:5432");
}

TEST(ParsePolicyTest, ErrorNamesFieldAndPosition) {
  auto result = ParsePolicy(
      "name: x\ntenant: acme\nallow:\n  templates: [base]\n"
      "  runtimes: [gvisor]\nlimits:\n  max_memory: 2Q\n",
      "policy.yaml");
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(result.error().message.substr(0, 48),
            "policy.yaml:7:15: limits.max_memory: '2Q' is not");
}

struct BadPolicyCase {
  std::string yaml;
  std::string expected;  // a substring of the message
};
void PrintTo(const BadPolicyCase& c, std::ostream* out) { *out << c.yaml; }

class BadPolicyTest : public ::testing::TestWithParam<BadPolicyCase> {};

TEST_P(BadPolicyTest, IsRejectedWithAMessage) {
  auto result = ParsePolicy(GetParam().yaml, "p.yaml");
  ASSERT_FALSE(result.has_value()) << GetParam().yaml;
  EXPECT_EQ(result.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(result.error().message.find(GetParam().expected), std::string::npos)
      << result.error().message;
  EXPECT_EQ(result.error().message.rfind("p.yaml", 0), 0u) << result.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadPolicyTest,
    ::testing::Values(
        BadPolicyCase{"", "empty policy"}, BadPolicyCase{"tenant: a\n", "name: is required"},
        BadPolicyCase{"name: Bad_Name\n", "p.yaml:1:7: name: 'Bad_Name' is not a valid policy"},
        BadPolicyCase{"name: " + std::string(64, 'a') + "\n", "not a valid policy name"},
        BadPolicyCase{"name: a\nnmae: b\n",
                      "p.yaml:2:1: unknown field 'nmae' (did you mean 'name'?)"},
        BadPolicyCase{"name: a\nlimits:\n  max_cpu: 2\n",
                      "unknown field 'max_cpu' in limits (did you mean 'max_cpus'?)"},
        BadPolicyCase{"name: a\nlimits:\n  bogus:\n", "unknown field 'bogus' in limits"},
        BadPolicyCase{"name: a\nallow:\n  images: [x]\n", "unknown field 'images' in allow"},
        BadPolicyCase{"name: a\nnetwork:\n  ingress: deny\n", "unknown field 'ingress' in network"},
        BadPolicyCase{"name: a\nlimits:\n  max_cpus: two\n", "limits.max_cpus: 'two' is not a CPU"},
        BadPolicyCase{"name: a\nlimits:\n  max_cpus: 0m\n", "limits.max_cpus: '0m'"},
        BadPolicyCase{"name: a\nlimits:\n  max_cpus: 5000\n", "limits.max_cpus"},
        BadPolicyCase{"name: a\nlimits:\n  max_cpus: 2000000m\n", "limits.max_cpus"},
        BadPolicyCase{"name: a\nlimits:\n  max_disk: 0\n", "limits.max_disk: '0' is not a size"},
        BadPolicyCase{"name: a\nlimits:\n  max_timeout: forever\n",
                      "p.yaml:3:16: limits.max_timeout: 'forever' is not a duration"},
        BadPolicyCase{"name: a\nlimits:\n  default_timeout: 0s\n", "limits.default_timeout"},
        BadPolicyCase{"name: a\nlimits:\n  max_timeout: 5m\n  default_timeout: 10m\n",
                      "p.yaml:4:20: limits.default_timeout: 10m is above limits.max_timeout 5m"},
        BadPolicyCase{"name: a\nlimits:\n  max_concurrent: -1\n",
                      "limits.max_concurrent: '-1' is not a count"},
        BadPolicyCase{"name: a\nlimits:\n  max_rate: 60\n", "limits.max_rate: '60' is not a rate"},
        BadPolicyCase{"name: a\nlimits:\n  max_rate: 60/d\n", "is not a rate"},
        BadPolicyCase{"name: a\nlimits:\n  max_rate: /m\n", "is not a rate"},
        BadPolicyCase{"name: a\nlimits: [1]\n", "limits: must be a mapping, got a list"},
        BadPolicyCase{"name: a\nallow:\n  runtimes: gvisor\n", "allow.runtimes: must be a list"},
        BadPolicyCase{"name: a\nallow:\n  runtimes: [Gvisor]\n",
                      "allow.runtimes[0]: 'Gvisor' is not a valid runtime name"},
        BadPolicyCase{"name: a\nallow:\n  templates: [[x]]\n",
                      "allow.templates[0]: must be a scalar"},
        BadPolicyCase{"name: a\nnetwork:\n  egress: allow\n",
                      "network.egress: 'allow' is not allowed"},
        BadPolicyCase{"name: a\nnetwork:\n  egress: [example.com]\n",
                      "network.egress[0]: 'example.com' is not a destination"},
        BadPolicyCase{"name: a\nnetwork:\n  egress: ['10.0.0.0/33:443']\n", "is not a destination"},
        BadPolicyCase{"name: a\nnetwork:\n  egress: ['host:99999']\n", "is not a destination"},
        BadPolicyCase{"name: a\nnetwork:\n  egress: ['ex ample:80']\n", "is not a destination"},
        BadPolicyCase{"name: a\ntenant: [x]\n", "tenant: must be a scalar"},
        BadPolicyCase{"name: a\ntenant: 'a b'\n", "'a b' is not a valid tenant name"},
        BadPolicyCase{"name: a\ntemplate: Py\n", "'Py' is not a valid template name"},
        BadPolicyCase{"name: a\nname: b\n", "duplicate field 'name'"},
        BadPolicyCase{"- name: a\n", "policy: must be a mapping, got a list"},
        BadPolicyCase{"name: [unclosed\n", "invalid YAML"},
        BadPolicyCase{"name: a\n---\nname: b\n", "p.yaml:2:1: expected one policy per file"},
        BadPolicyCase{"name: a\n...\nname: b\n", "p.yaml:3:1: expected one policy per file"},
        BadPolicyCase{"--- {name: a}\n--- {name: b}\n", "p.yaml:2:1: expected one policy"},
        BadPolicyCase{"name: \"a\\0b\"\n", "contains a NUL byte"}));

TEST(ParsePolicyTest, DocumentMarkersAroundOnePolicy) {
  EXPECT_EQ(MustParse("---\nname: a\n").name, "a");
  EXPECT_EQ(MustParse("# c\n--- # c\nname: a\n...\n# trailing comment\n").name, "a");
  EXPECT_EQ(MustParse("%YAML 1.2\n---\nname: a\n").name, "a");
  EXPECT_EQ(MustParse("name: a\nlimits:\n  max_rate: 1/s  # --- not a marker\n").name, "a");
}

// yaml-cpp 0.7's LoadAll loops forever on this input; ParsePolicy must return.
TEST(ParsePolicyTest, InputThatHangsLoadAll) {
  auto result = ParsePolicy("{a |@:at,},an]/72\"7:`\\sn{13\n9/%G74&\nt", "hang.yaml");
  EXPECT_FALSE(result.has_value());
}

TEST(ParsePolicyTest, DeepNestingIsAnErrorNotACrash) {
  auto result = ParsePolicy("name: a\nallow: " + std::string(100'000, '[') + "\n", "deep.yaml");
  ASSERT_FALSE(result.has_value());
  EXPECT_NE(result.error().message.find("deep.yaml:"), std::string::npos);
}

TEST(ParsePolicyTest, RejectsOversizedInput) {
  std::string yaml = "name: a\n# " + std::string(kMaxPolicyBytes, 'x') + "\n";
  auto result = ParsePolicy(yaml, "big.yaml");
  ASSERT_FALSE(result.has_value());
  EXPECT_NE(result.error().message.find("larger than 256K"), std::string::npos);
}

// Arbitrary bytes never crash the parser (the ASan build makes this meaningful).
TEST(ParsePolicyTest, GarbageNeverCrashes) {
  std::mt19937 rng(7);
  const std::string alphabet = "name:tenat-[]{},\n '\"&*!|>%@`#\t\\0123456789mGs/";
  int accepted = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string text;
    size_t length = rng() % 120;
    for (size_t j = 0; j < length; ++j) text += alphabet[rng() % alphabet.size()];
    if (ParsePolicy(text, "fuzz").has_value()) ++accepted;
  }
  EXPECT_LT(accepted, 2000);
}

TEST(ParsePolicyTest, ShippedExamplesParse) {
  for (const char* file : {"untrusted.yaml", "trusted.yaml"}) {
    std::ifstream in(std::string(TARTARUS_POLICY_EXAMPLES) + "/" + file);
    ASSERT_TRUE(in.good()) << file;
    std::stringstream text;
    text << in.rdbuf();
    auto policy = ParsePolicy(text.str(), file);
    EXPECT_TRUE(policy.has_value()) << policy.error().message;
  }
}

TEST(DefaultPolicyTest, SafeValues) {
  Policy p = DefaultPolicy();
  EXPECT_EQ(p.name, "default");
  EXPECT_FALSE(p.allowed_runtimes.has_value());
  EXPECT_EQ(p.max_millicpus, 4000);
  EXPECT_EQ(p.max_memory_bytes, 4 * kGi);
  EXPECT_EQ(p.max_disk_bytes, 8 * kGi);
  EXPECT_EQ(p.max_timeout, std::chrono::hours(1));
  EXPECT_EQ(p.default_timeout, minutes(10));
  EXPECT_EQ(p.max_concurrent, 100);
  EXPECT_EQ(p.max_rate, (RateLimit{600, minutes(1)}));
  ASSERT_TRUE(p.network.has_value());
  EXPECT_TRUE(p.network->egress_deny_all);
}

TEST(AppliesTest, TenantAndTemplateMatch) {
  Policy p = MustParse("name: a\ntenant: acme\ntemplate: python-ds\n");
  EXPECT_TRUE(Applies(p, "acme", "python-ds"));
  EXPECT_FALSE(Applies(p, "other", "python-ds"));
  EXPECT_FALSE(Applies(p, "acme", "base"));
  EXPECT_TRUE(Applies(MustParse("name: b\n"), "anyone", "anything"));
}

TEST(FormatRateTest, Units) {
  EXPECT_EQ(FormatRate({60, minutes(1)}), "60/m");
  EXPECT_EQ(FormatRate({1, milliseconds(1000)}), "1/s");
  EXPECT_EQ(FormatRate({7, std::chrono::hours(1)}), "7/h");
}

constexpr std::string_view kUntrusted = R"(name: untrusted-default
allow:
  runtimes: [gvisor, microvm]
limits:
  max_cpus: 2
  max_memory: 2G
  max_disk: 4G
  max_timeout: 10m
  default_timeout: 5m
  max_concurrent: 10
  max_rate: 60/m
)";

constexpr std::string_view kAcme = R"(name: acme-small
tenant: acme
allow:
  templates: [base, python-ds]
  runtimes: [microvm, gvisor, container]
limits:
  max_cpus: 500m
  max_memory: 256M
  max_concurrent: 3
)";

constexpr std::string_view kPythonOnly = R"(name: python-ds-short
template: python-ds
limits:
  max_timeout: 2m
  max_rate: 5/s
)";

struct DenialCase {
  std::string name;
  std::vector<std::string_view> policies;
  AdmissionRequest request;
  int64_t active = 0;
  int64_t created = 0;
  std::string policy, rule, reason;  // reason: a substring
  bool retry_later = false;
};

void PrintTo(const DenialCase& c, std::ostream* out) { *out << c.name; }

class DenialTest : public ::testing::TestWithParam<DenialCase> {};

TEST_P(DenialTest, DeniesWithRuleAndReason) {
  const DenialCase& c = GetParam();
  std::vector<Policy> policies;
  for (auto yaml : c.policies) policies.push_back(MustParse(yaml));
  TenantUsage usage{c.active, [&](milliseconds) { return c.created; }};
  auto result = Evaluate(c.request, policies, usage);
  ASSERT_FALSE(result.has_value()) << c.name;
  EXPECT_EQ(result.error().policy, c.policy);
  EXPECT_EQ(result.error().rule, c.rule);
  EXPECT_NE(result.error().reason.find(c.reason), std::string::npos) << result.error().reason;
  EXPECT_EQ(result.error().retry_later, c.retry_later);
}

AdmissionRequest Req(std::string tenant, std::string template_name, std::string runtime) {
  AdmissionRequest r;
  r.tenant = std::move(tenant);
  r.template_name = std::move(template_name);
  r.runtime = std::move(runtime);
  return r;
}

AdmissionRequest With(AdmissionRequest r, std::optional<int64_t> cpus,
                      std::optional<int64_t> memory, std::optional<int64_t> disk = std::nullopt,
                      std::optional<milliseconds> timeout = std::nullopt) {
  r.millicpus = cpus;
  r.memory_bytes = memory;
  r.disk_bytes = disk;
  r.timeout = timeout;
  return r;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, DenialTest,
    ::testing::Values(
        DenialCase{"runtime",
                   {kUntrusted},
                   Req("x", "base", "container"),
                   0,
                   0,
                   "untrusted-default",
                   "allow.runtimes",
                   "runtime 'container' is not allowed by policy untrusted-default "
                   "(allow.runtimes: gvisor, microvm)"},
        DenialCase{"template",
                   {kAcme},
                   Req("acme", "rust", "gvisor"),
                   0,
                   0,
                   "acme-small",
                   "allow.templates",
                   "template 'rust' is not allowed by policy acme-small"},
        DenialCase{"memory",
                   {kUntrusted},
                   With(Req("x", "base", "gvisor"), {}, 8 * kGi),
                   0,
                   0,
                   "untrusted-default",
                   "limits.max_memory",
                   "memory 8G exceeds 2G allowed by policy untrusted-default (limits.max_memory)"},
        DenialCase{"cpus",
                   {kUntrusted},
                   With(Req("x", "base", "gvisor"), 3000, {}),
                   0,
                   0,
                   "untrusted-default",
                   "limits.max_cpus",
                   "cpus 3 exceeds 2 allowed by policy untrusted-default (limits.max_cpus)"},
        DenialCase{"cpus tenant",
                   {kUntrusted, kAcme},
                   With(Req("acme", "base", "gvisor"), 1000, {}),
                   0,
                   0,
                   "acme-small",
                   "limits.max_cpus",
                   "cpus 1 exceeds 0.5 allowed"},
        DenialCase{"disk",
                   {kUntrusted},
                   With(Req("x", "base", "gvisor"), {}, {}, 5 * kGi),
                   0,
                   0,
                   "untrusted-default",
                   "limits.max_disk",
                   "disk 5G exceeds 4G allowed"},
        DenialCase{"timeout",
                   {kUntrusted, kPythonOnly},
                   With(Req("x", "python-ds", "gvisor"), {}, {}, {}, minutes(3)),
                   0,
                   0,
                   "python-ds-short",
                   "limits.max_timeout",
                   "timeout 3m exceeds 2m allowed by policy python-ds-short"},
        DenialCase{"default cap",
                   {},
                   With(Req("x", "base", ""), 8000, {}),
                   0,
                   0,
                   "default",
                   "limits.max_cpus",
                   "cpus 8 exceeds 4 allowed by policy default"},
        DenialCase{"default timeout",
                   {},
                   With(Req("x", "base", ""), {}, {}, {}, minutes(61)),
                   0,
                   0,
                   "default",
                   "limits.max_timeout",
                   "exceeds 1h"},
        DenialCase{"concurrent",
                   {kUntrusted, kAcme},
                   Req("acme", "base", "gvisor"),
                   3,
                   0,
                   "acme-small",
                   "limits.max_concurrent",
                   "tenant acme has 3 active sandboxes, the most allowed by policy acme-small",
                   true},
        DenialCase{"default concurrent",
                   {},
                   Req("x", "base", ""),
                   100,
                   0,
                   "default",
                   "limits.max_concurrent",
                   "has 100 active sandboxes",
                   true},
        DenialCase{"rate",
                   {kUntrusted},
                   Req("x", "base", "gvisor"),
                   0,
                   60,
                   "untrusted-default",
                   "limits.max_rate",
                   "tenant x created 60 sandboxes in the last minute, the most allowed by policy "
                   "untrusted-default (limits.max_rate 60/m)",
                   true},
        DenialCase{"static before usage",
                   {kUntrusted},
                   With(Req("x", "base", "gvisor"), {}, 8 * kGi),
                   50,
                   500,
                   "untrusted-default",
                   "limits.max_memory",
                   "memory 8G",
                   false},
        DenialCase{"no common runtime",
                   {kUntrusted, "name: only-runc\nallow: {runtimes: [container]}\n"},
                   Req("x", "base", ""),
                   0,
                   0,
                   "only-runc",
                   "allow.runtimes",
                   "no runtime is allowed by all of the policies untrusted-default, only-runc"},
        DenialCase{"bad request",
                   {},
                   With(Req("x", "base", ""), 0, {}),
                   0,
                   0,
                   "",
                   "request.cpus",
                   "cpus must be above 0"},
        DenialCase{"negative memory",
                   {},
                   With(Req("x", "base", ""), {}, -5),
                   0,
                   0,
                   "",
                   "request.memory",
                   "memory must be above 0"}),
    [](const auto& info) {
      std::string name = info.param.name;
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(EvaluateTest, FillsDefaults) {
  auto result = Evaluate(Req("x", "base", "container"), {}, {});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->millicpus, 1000);
  EXPECT_EQ(result->memory_bytes, 512 * kMi);
  EXPECT_EQ(result->disk_bytes, kGi);
  EXPECT_EQ(result->timeout, minutes(10));
  EXPECT_EQ(result->runtime, "container");
  EXPECT_EQ(result->policies, std::vector<std::string>{"default"});
}

TEST(EvaluateTest, DefaultsLoweredToTheLowestCap) {
  std::vector<Policy> policies = {MustParse(kUntrusted), MustParse(kAcme)};
  auto result = Evaluate(Req("acme", "base", ""), policies, {});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->millicpus, 500);           // 1 CPU default, acme caps at 500m
  EXPECT_EQ(result->memory_bytes, 256 * kMi);  // 512M default, acme caps at 256M
  EXPECT_EQ(result->disk_bytes, kGi);          // under every cap
  EXPECT_EQ(result->timeout, minutes(5));      // untrusted's default_timeout
  EXPECT_EQ(result->runtime, "gvisor");        // first of untrusted's list acme also allows
  EXPECT_EQ(result->policies,
            (std::vector<std::string>{"default", "untrusted-default", "acme-small"}));
}

TEST(EvaluateTest, DefaultTimeoutLoweredToMaxTimeout) {
  std::vector<Policy> policies = {MustParse(kPythonOnly)};
  auto result = Evaluate(Req("x", "python-ds", ""), policies, {});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->timeout, minutes(2));
  EXPECT_EQ(result->runtime, "");  // nobody restricts runtimes: the server's default
}

TEST(EvaluateTest, RequestedValuesAreKept) {
  std::vector<Policy> policies = {MustParse(kUntrusted)};
  auto result = Evaluate(With(Req("x", "base", "microvm"), 2000, 2 * kGi, 4 * kGi, minutes(10)),
                         policies, {});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->millicpus, 2000);  // equal to the cap is allowed
  EXPECT_EQ(result->memory_bytes, 2 * kGi);
  EXPECT_EQ(result->disk_bytes, 4 * kGi);
  EXPECT_EQ(result->timeout, minutes(10));
  EXPECT_EQ(result->runtime, "microvm");
}

TEST(EvaluateTest, PoliciesForOtherTenantsAndTemplatesDoNotApply) {
  std::vector<Policy> policies = {MustParse(kAcme), MustParse(kPythonOnly)};
  auto result = Evaluate(With(Req("globex", "base", "container"), 2000, kGi, {}, minutes(30)),
                         policies, TenantUsage{5, [](milliseconds) { return int64_t{100}; }});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->policies, std::vector<std::string>{"default"});
}

TEST(EvaluateTest, RateWindowIsThePolicys) {
  std::vector<Policy> policies = {MustParse(kPythonOnly)};
  std::vector<milliseconds> asked;
  TenantUsage usage{0, [&](milliseconds window) {
                      asked.push_back(window);
                      return window == milliseconds(1000) ? int64_t{5} : int64_t{0};
                    }};
  auto result = Evaluate(Req("x", "python-ds", ""), policies, usage);
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().rule, "limits.max_rate");
  EXPECT_NE(result.error().reason.find("in the last second"), std::string::npos);
  EXPECT_EQ(asked, (std::vector<milliseconds>{minutes(1), milliseconds(1000)}));
  // Under the limit: admitted.
  usage.created_within = [](milliseconds) { return int64_t{4}; };
  EXPECT_TRUE(Evaluate(Req("x", "python-ds", ""), policies, usage).has_value());
}

TEST(EvaluateTest, OperatorDefaultRaisesTheBuiltInCeilings) {
  std::vector<Policy> policies = {
      MustParse("name: default\nlimits: {max_cpus: 16, max_memory: 32G, max_timeout: 4h}\n")};
  auto big = With(Req("x", "base", ""), 16000, 32 * kGi, {}, std::chrono::hours(3));
  auto result = Evaluate(big, policies, {});
  ASSERT_TRUE(result.has_value()) << result.error().reason;
  EXPECT_EQ(result->timeout, std::chrono::hours(3));
  EXPECT_EQ(result->policies, std::vector<std::string>{"default"});
  // What the operator left out keeps the built-in value.
  auto disk = Evaluate(With(Req("x", "base", ""), {}, {}, 9 * kGi), policies, {});
  ASSERT_FALSE(disk.has_value());
  EXPECT_EQ(disk.error().rule, "limits.max_disk");
  // A tenant-targeted policy named default is an ordinary policy, not an override.
  std::vector<Policy> targeted = {MustParse("name: default\ntenant: x\nlimits: {max_cpus: 16}\n")};
  EXPECT_FALSE(Evaluate(With(Req("x", "base", ""), 8000, {}), targeted, {}).has_value());
}

TEST(EvaluateTest, MissingUsageCallbackCountsAsNone) {
  std::vector<Policy> policies = {MustParse(kUntrusted)};
  TenantUsage usage;  // no created_within
  EXPECT_TRUE(Evaluate(Req("x", "base", "gvisor"), policies, usage).has_value());
}

}  // namespace
}  // namespace tartarus::policy

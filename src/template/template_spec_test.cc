// Template parsing: the happy paths, every error with its position and field, and the
// build hash (changes iff a build input changes).
#include "template/template_spec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>

namespace tartarus::templates {
namespace {

using ::testing::HasSubstr;

std::string ErrorOf(std::string_view yaml) {
  auto spec = ParseTemplate(yaml, "t.yaml");
  if (spec) return "(parsed)";
  EXPECT_EQ(spec.error().code, ErrorCode::kInvalidArgument);
  return spec.error().message;
}

constexpr std::string_view kFull = R"(# a comment
name: python-ds
description: Python for data science
base: bullseye
packages:
  - python3
  - python3-numpy
  - python3   # duplicates are dropped
files:
  - path: /etc/motd
    content: |
      welcome
  - path: /usr/local/bin/hello
    content: "#!/bin/sh\necho hello\n"
    mode: "0755"
  - path: /etc/secret
    mode: 600
env:
  MPLBACKEND: Agg
  EMPTY:
workdir: /work
setup:
  - echo one
  - |
    echo two
    echo three
limits:
  cpus: "1.5"
  memory: 1G
  timeout: 5m
  pids: 256
  disk: 2G
)";

TEST(ParseTemplateTest, ParsesEveryField) {
  auto spec = ParseTemplate(kFull, "python-ds.yaml");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->name, "python-ds");
  EXPECT_EQ(spec->description, "Python for data science");
  EXPECT_EQ(spec->base, "bullseye");
  EXPECT_EQ(spec->packages, (std::vector<std::string>{"python3", "python3-numpy"}));
  ASSERT_EQ(spec->files.size(), 3u);
  EXPECT_EQ(spec->files[0], (TemplateFile{"/etc/motd", "welcome\n", 0644}));
  EXPECT_EQ(spec->files[1],
            (TemplateFile{"/usr/local/bin/hello", "#!/bin/sh\necho hello\n", 0755}));
  EXPECT_EQ(spec->files[2], (TemplateFile{"/etc/secret", "", 0600}));
  EXPECT_EQ(spec->env, (std::map<std::string, std::string>{{"EMPTY", ""}, {"MPLBACKEND", "Agg"}}));
  EXPECT_EQ(spec->workdir, "/work");
  EXPECT_EQ(spec->setup, (std::vector<std::string>{"echo one", "echo two\necho three\n"}));
  EXPECT_EQ(spec->limits.millicpus, 1500u);
  EXPECT_EQ(spec->limits.memory_bytes, 1ull << 30);
  EXPECT_EQ(spec->limits.timeout, std::chrono::minutes(5));
  EXPECT_EQ(spec->limits.pids, 256u);
  EXPECT_EQ(spec->limits.disk_bytes, 2ull << 30);
}

TEST(ParseTemplateTest, MinimalTemplateGetsDefaults) {
  auto spec = ParseTemplate("name: base\n", "base.yaml");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->base, "bookworm");
  EXPECT_EQ(spec->workdir, "/root");
  EXPECT_TRUE(spec->packages.empty());
  EXPECT_TRUE(spec->files.empty());
  EXPECT_TRUE(spec->setup.empty());
  EXPECT_EQ(spec->limits, TemplateLimits{});
}

TEST(ParseTemplateTest, EmptyListsAndFlowStyle) {
  auto spec = ParseTemplate("{name: x1, packages: [], setup: , env: {A: b}, files: []}", "t.yaml");
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ(spec->env.at("A"), "b");
}

TEST(ParseTemplateTest, ModeForms) {
  for (const char* mode : {"644", "0644", "0o644", "\"0644\""}) {
    auto spec = ParseTemplate(
        std::string("name: m\nfiles:\n  - path: /f\n    mode: ") + mode + "\n", "t.yaml");
    ASSERT_TRUE(spec) << mode << ": " << spec.error().message;
    EXPECT_EQ(spec->files[0].mode, 0644u) << mode;
  }
}

TEST(ParseTemplateTest, UnknownFieldSuggestsTheClosest) {
  EXPECT_EQ(ErrorOf("name: python-ds\ndescription: x\npackages: [a1]\nfiles: []\nsetup: []\n"
                    "env: {}\n  \npakages: [python3]\n"),
            "t.yaml:8:1: unknown field 'pakages' (did you mean 'packages'?)");
  EXPECT_EQ(ErrorOf("name: x\nlimits:\n  memroy: 1G\n"),
            "t.yaml:3:3: unknown field 'memroy' in limits (did you mean 'memory'?)");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /a\n    contents: hi\n"),
            "t.yaml:4:5: unknown field 'contents' in files[0] (did you mean 'content'?)");
  EXPECT_THAT(ErrorOf("name: x\nzzzzzzzzzz: 1\n"),
              HasSubstr("t.yaml:2:1: unknown field 'zzzzzzzzzz' (known fields: name, description"));
}

TEST(ParseTemplateTest, WrongTypesNameFieldAndPosition) {
  EXPECT_EQ(ErrorOf("name: x\npackages: python3\n"),
            "t.yaml:2:11: field 'packages' must be a list, got a scalar");
  EXPECT_EQ(ErrorOf("name: x\npackages:\n  - [a, b]\n"),
            "t.yaml:3:5: field 'packages[0]' must be a scalar (text), got a list");
  EXPECT_EQ(ErrorOf("name: [x]\n"), "t.yaml:1:7: field 'name' must be a scalar (text), got a list");
  EXPECT_EQ(ErrorOf("name: x\nenv: [A]\n"),
            "t.yaml:2:6: field 'env' must be a mapping, got a list");
  EXPECT_EQ(ErrorOf("name: x\nenv:\n  A: {b: c}\n"),
            "t.yaml:3:6: field 'env.A' must be a scalar (text), got a mapping");
  EXPECT_EQ(ErrorOf("name: x\nfiles: {path: /a}\n"),
            "t.yaml:2:8: field 'files' must be a list, got a mapping");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - /etc/motd\n"),
            "t.yaml:3:5: field 'files[0]' must be a mapping, got a scalar");
  EXPECT_EQ(ErrorOf("name: x\nlimits: 1G\n"),
            "t.yaml:2:9: field 'limits' must be a mapping, got a scalar");
  EXPECT_EQ(ErrorOf("name: x\nsetup: echo hi\n"),
            "t.yaml:2:8: field 'setup' must be a list, got a scalar");
  EXPECT_EQ(ErrorOf("name: x\nworkdir: [a]\n"),
            "t.yaml:2:10: field 'workdir' must be a scalar (text), got a list");
}

TEST(ParseTemplateTest, InvalidValues) {
  EXPECT_EQ(ErrorOf("description: no name\n"), "t.yaml:1:1: field 'name' is required");
  EXPECT_THAT(ErrorOf("name: Python_DS\n"),
              HasSubstr("t.yaml:1:7: field 'name': 'Python_DS' is not a valid template name"));
  EXPECT_THAT(ErrorOf("name: " + std::string(64, 'a') + "\n"),
              HasSubstr("is not a valid template name"));
  EXPECT_EQ(ParseTemplate("name: " + std::string(63, 'a') + "\n", "t.yaml").has_value(), true);
  EXPECT_THAT(ErrorOf("name: -x\n"), HasSubstr("not a valid template name"));
  EXPECT_EQ(ErrorOf("name: x\nbase: Book Worm\n"),
            "t.yaml:2:7: field 'base': 'Book Worm' is not a Debian suite name (like bookworm)");
  EXPECT_EQ(ErrorOf("name: x\npackages: [python3, 'rm -rf']\n"),
            "t.yaml:2:21: field 'packages[1]': 'rm -rf' is not a valid Debian package name");
  EXPECT_THAT(ErrorOf("name: x\npackages: [a]\n"),
              HasSubstr("'a' is not a valid Debian package name"));
  EXPECT_THAT(ErrorOf("name: x\npackages: [Python3]\n"),
              HasSubstr("not a valid Debian package name"));
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - content: hi\n"),
            "t.yaml:3:5: field 'files[0].path' is required");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: etc/motd\n"),
            "t.yaml:3:11: field 'files[0].path' must be an absolute path, got 'etc/motd'");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /etc/../../x\n"),
            "t.yaml:3:11: field 'files[0].path' must not contain '..'");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /etc/\n"),
            "t.yaml:3:11: field 'files[0].path' must name a file, not a directory");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /a\n  - path: /a\n"),
            "t.yaml:4:5: files[1]: path '/a' is listed twice");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /a\n    mode: 0999\n"),
            "t.yaml:4:11: field 'files[0].mode' must be an octal mode like 0644, got '0999'");
  EXPECT_EQ(ErrorOf("name: x\nfiles:\n  - path: /a\n    mode: 17777\n"),
            "t.yaml:4:11: field 'files[0].mode' is above 07777");
  EXPECT_EQ(ErrorOf("name: x\nenv:\n  1BAD: x\n"),
            "t.yaml:3:3: field 'env': '1BAD' is not a valid environment variable name");
  EXPECT_EQ(ErrorOf("name: x\nworkdir: work\n"),
            "t.yaml:2:10: field 'workdir' must be an absolute path, got 'work'");
  EXPECT_EQ(ErrorOf("name: x\nsetup: ['echo', '  ']\n"), "t.yaml:2:17: field 'setup[1]' is empty");
  EXPECT_THAT(ErrorOf("name: x\nlimits:\n  memory: lots\n"),
              HasSubstr("t.yaml:3:11: field 'limits.memory': "));
  EXPECT_THAT(ErrorOf("name: x\nlimits:\n  cpus: fast\n"),
              HasSubstr("t.yaml:3:9: field 'limits.cpus': "));
  EXPECT_THAT(ErrorOf("name: x\nlimits:\n  timeout: soon\n"),
              HasSubstr("t.yaml:3:12: field 'limits.timeout': "));
  EXPECT_EQ(ErrorOf("name: x\nlimits:\n  pids: -1\n"),
            "t.yaml:3:9: field 'limits.pids' must be a positive integer, got '-1'");
  EXPECT_EQ(ErrorOf("name: x\nlimits:\n  pids: 0\n"),
            "t.yaml:3:9: field 'limits.pids' must be a positive integer, got '0'");
  EXPECT_EQ(ErrorOf("name: x\nlimits:\n  memory: 1k\n"),
            "t.yaml:3:11: field 'limits.memory' must be at least 4M");
  EXPECT_EQ(ErrorOf("name: x\nname: y\n"), "t.yaml:2:1: duplicate field 'name'");
  EXPECT_EQ(ErrorOf("name: x\n[a]: 1\n"),
            "t.yaml:2:1: expected a field name in 'template', got a list");
}

TEST(ParseTemplateTest, NotAMappingOrEmpty) {
  EXPECT_EQ(ErrorOf(""), "t.yaml: empty template: expected a mapping with at least 'name'");
  EXPECT_EQ(ErrorOf("# only a comment\n"),
            "t.yaml: empty template: expected a mapping with at least 'name'");
  EXPECT_EQ(ErrorOf("- a\n- b\n"), "t.yaml:1:1: field 'template' must be a mapping, got a list");
  EXPECT_EQ(ErrorOf("just text\n"), "t.yaml:1:1: field 'template' must be a mapping, got a scalar");
}

TEST(ParseTemplateTest, YamlSyntaxErrorsHaveAPosition) {
  EXPECT_THAT(ErrorOf("name: x\npackages: [a1, b2\n"), HasSubstr("t.yaml:3:1: invalid YAML: "));
  EXPECT_THAT(ErrorOf("name: x\n  bad: indent\n"), HasSubstr("t.yaml:2:6: invalid YAML: "));
  EXPECT_THAT(ErrorOf("name: x\n- item\n"), HasSubstr("t.yaml:2:1: invalid YAML: "));
  EXPECT_THAT(ErrorOf("name: *nope\n"), HasSubstr("t.yaml:1:7: invalid YAML: "));
  EXPECT_THAT(ErrorOf("name: x\n---\nname: y\n"),
              HasSubstr("(parsed)"));  // only the first document
}

TEST(ParseTemplateTest, HostileInputNeverCrashes) {
  EXPECT_THAT(ErrorOf(std::string(100000, '[')), HasSubstr("t.yaml"));
  EXPECT_THAT(ErrorOf(std::string(2 << 20, ' ')), HasSubstr("t.yaml: template is larger than 1M"));
  EXPECT_THAT(ErrorOf(std::string("name: x\0y\n", 10)), HasSubstr("t.yaml"));
  EXPECT_THAT(ErrorOf("name: x\nfiles:\n  - &f {path: /a, content: x}\n  - *f\n"),
              HasSubstr("listed twice"));
  // Billion laughs: aliases share nodes, and our walk is bounded by the schema depth.
  EXPECT_THAT(ErrorOf("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                      "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nname: x\n"),
              HasSubstr("unknown field 'a'"));
  std::mt19937 random(12345);
  const std::string alphabet = "name:- \n\t[]{}&*!|>'\"#%@`,?x0/";
  for (int i = 0; i < 3000; ++i) {
    std::string text(random() % 200, ' ');
    for (char& c : text) c = alphabet[random() % alphabet.size()];
    (void)ParseTemplate(text, "fuzz.yaml");  // must return, not crash or throw
  }
}

TEST(BuildHashTest, StableAndIgnoresWhatDoesNotChangeTheTree) {
  auto a = ParseTemplate(kFull, "a.yaml");
  ASSERT_TRUE(a);
  std::string hash = BuildHash(*a);
  EXPECT_EQ(hash.size(), 64u);
  EXPECT_EQ(BuildHash(*a), hash);
  // Comments, key order, quoting, package order and duplicates, description, env and
  // limits do not change the tree.
  auto b = ParseTemplate(R"(name: python-ds
description: something else entirely
base: "bullseye"
limits: {memory: 2G}
env: {OTHER: "1"}
packages: [python3-numpy, python3, python3-numpy]
setup: ["echo one", "echo two\necho three\n"]
workdir: /work
files:
  - {path: /etc/secret, mode: "0600"}
  - {path: /usr/local/bin/hello, mode: 0755, content: "#!/bin/sh\necho hello\n"}
  - {path: /etc/motd, content: "welcome\n", mode: 644}
)",
                         "b.yaml");
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(BuildHash(*b), hash) << CanonicalBuildInputs(*a) << "\n" << CanonicalBuildInputs(*b);
}

TEST(BuildHashTest, ChangesWithEveryBuildInput) {
  auto base = ParseTemplate(kFull, "a.yaml");
  ASSERT_TRUE(base);
  std::string hash = BuildHash(*base);
  auto changed = [&](auto edit) {
    TemplateSpec spec = *base;
    edit(spec);
    return BuildHash(spec) != hash;
  };
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.base = "bookworm"; }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.packages.push_back("curl"); }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.files[0].content += " "; }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.files[0].mode = 0600; }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.files[0].path = "/etc/motd2"; }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { std::swap(s.setup[0], s.setup[1]); }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.setup.push_back("true"); }));
  EXPECT_TRUE(changed([](TemplateSpec& s) { s.workdir = "/srv"; }));
  EXPECT_FALSE(changed([](TemplateSpec& s) { s.name = "other"; }));  // the tree is the same
  // Non-UTF-8 contents hash by their bytes, not by replacement characters.
  TemplateSpec x = *base, y = *base;
  x.files[0].content = "\xff";
  y.files[0].content = "\xfe";
  EXPECT_NE(BuildHash(x), BuildHash(y));
}

}  // namespace
}  // namespace tartarus::templates

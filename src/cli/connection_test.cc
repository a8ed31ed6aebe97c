// tartarus CLI, mode selection: config parsing, endpoints and the precedence rules.
#include "cli/connection.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace tartarus::cli {
namespace {

constexpr const char* kConfig = R"(current-context: prod
contexts:
  prod:
    host: http://olympus.example:7777
    token: tt_prod
  dev: {host: "127.0.0.1:8080"}
)";

CliConfig MustParse(const char* yaml) {
  auto config = ParseCliConfig(yaml, "config.yaml");
  EXPECT_TRUE(config) << config.error().message;
  return config ? *config : CliConfig{};
}

// A probe that answers `answer` and counts calls: the socket must not be probed when a
// host is already known (it costs a connect per command).
struct FakeProbe {
  bool answer = false;
  int calls = 0;
  DaemonProbe Fn() {
    return [this](const std::string&) {
      ++calls;
      return answer;
    };
  }
};

TEST(CliConfig, ParsesContexts) {
  CliConfig config = MustParse(kConfig);
  EXPECT_EQ(config.current_context, "prod");
  ASSERT_EQ(config.contexts.size(), 2u);
  EXPECT_EQ(config.contexts["prod"].host, "http://olympus.example:7777");
  EXPECT_EQ(config.contexts["prod"].token, "tt_prod");
  EXPECT_EQ(config.contexts["dev"].host, "127.0.0.1:8080");
  EXPECT_EQ(config.contexts["dev"].token, "");
}

TEST(CliConfig, EmptyFileIsEmptyConfig) {
  CliConfig config = MustParse("");
  EXPECT_TRUE(config.current_context.empty());
  EXPECT_TRUE(config.contexts.empty());
}

TEST(CliConfig, ErrorsNameFileKeyAndPosition) {
  auto typo = ParseCliConfig("contexts:\n  prod:\n    hots: x\n", "c.yaml");
  ASSERT_FALSE(typo);
  EXPECT_EQ(typo.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(typo.error().message.find("c.yaml:3:5"), std::string::npos) << typo.error().message;
  EXPECT_NE(typo.error().message.find("contexts.prod.hots"), std::string::npos);

  auto dangling = ParseCliConfig("current-context: nope\ncontexts: {a: {host: h}}\n", "c.yaml");
  ASSERT_FALSE(dangling);
  EXPECT_NE(dangling.error().message.find("'nope' is not one of its contexts"), std::string::npos);

  auto no_host = ParseCliConfig("contexts: {a: {token: t}}\n", "c.yaml");
  ASSERT_FALSE(no_host);
  EXPECT_NE(no_host.error().message.find("host is missing"), std::string::npos);

  auto not_map = ParseCliConfig("- a\n- b\n", "c.yaml");
  ASSERT_FALSE(not_map);
  auto list_token = ParseCliConfig("contexts: {a: {host: h, token: [1]}}\n", "c.yaml");
  ASSERT_FALSE(list_token);
  EXPECT_NE(list_token.error().message.find("expected a string"), std::string::npos);

  auto broken = ParseCliConfig("contexts: {a: [", "c.yaml");
  ASSERT_FALSE(broken);
  EXPECT_NE(broken.error().message.find("c.yaml:"), std::string::npos);
}

TEST(CliConfig, MissingFileIsEmptyUnlessNamed) {
  std::string path = "/nonexistent-tartarus-test/config.yaml";
  auto quiet = LoadCliConfig(path, /*must_exist=*/false);
  ASSERT_TRUE(quiet);
  EXPECT_TRUE(quiet->contexts.empty());
  auto named = LoadCliConfig(path, /*must_exist=*/true);
  ASSERT_FALSE(named);
  EXPECT_NE(named.error().message.find(path), std::string::npos);
}

TEST(CliConfig, LoadsFromDisk) {
  std::string dir = ::testing::TempDir() + "/cli-config-" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.yaml") << kConfig;
  auto config = LoadCliConfig(dir + "/config.yaml", true);
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->path, dir + "/config.yaml");
  EXPECT_EQ(config->contexts.size(), 2u);
  std::filesystem::remove_all(dir);
}

TEST(DefaultConfigPath, FollowsEnvironment) {
  std::map<std::string, std::string> env;
  EnvLookup lookup = [&env](const char* name) {
    auto it = env.find(name);
    return it == env.end() ? std::string() : it->second;
  };
  EXPECT_EQ(DefaultConfigPath(lookup), "");
  env["HOME"] = "/home/u";
  EXPECT_EQ(DefaultConfigPath(lookup), "/home/u/.config/tartarus/config.yaml");
  env["XDG_CONFIG_HOME"] = "/x";
  EXPECT_EQ(DefaultConfigPath(lookup), "/x/tartarus/config.yaml");
  env["TARTARUS_CONFIG"] = "/etc/t.yaml";
  EXPECT_EQ(DefaultConfigPath(lookup), "/etc/t.yaml");
}

TEST(NormalizeEndpoint, AcceptsTheUsualSpellings) {
  EXPECT_EQ(*NormalizeEndpoint("http://h:8080"), "http://h:8080");
  EXPECT_EQ(*NormalizeEndpoint("http://h:8080/"), "http://h:8080");
  EXPECT_EQ(*NormalizeEndpoint("http://h"), "http://h");  // URL rules: port 80
  EXPECT_EQ(*NormalizeEndpoint("h:8080"), "http://h:8080");
  EXPECT_EQ(*NormalizeEndpoint("h"), "http://h:7777");  // a bare host: Olympus's port
  EXPECT_EQ(*NormalizeEndpoint("[::1]"), "http://[::1]:7777");
  EXPECT_EQ(*NormalizeEndpoint("[::1]:9"), "http://[::1]:9");
  EXPECT_EQ(*NormalizeEndpoint("tcp://h:1"), "http://h:1");
  EXPECT_EQ(*NormalizeEndpoint("/run/t.sock"), "unix:///run/t.sock");
  EXPECT_EQ(*NormalizeEndpoint("unix:///run/t.sock"), "unix:///run/t.sock");
}

TEST(NormalizeEndpoint, RejectsWhatTheClientCannotUse) {
  for (const char* bad : {"", "https://h", "ftp://h", "h:0", "h:99999", "h:x", "http://h/api",
                          "unix://relative", "h h"}) {
    auto endpoint = NormalizeEndpoint(bad);
    EXPECT_FALSE(endpoint) << bad << " -> " << (endpoint ? *endpoint : "");
    if (!endpoint) {
      EXPECT_EQ(endpoint.error().code, ErrorCode::kInvalidArgument);
    }
  }
  EXPECT_NE(NormalizeEndpoint("https://h").error().message.find("https is not supported"),
            std::string::npos);
}

TEST(ChooseConnection, NothingSetIsLocalMode) {
  FakeProbe probe;
  ConnectionInputs in;
  in.daemon_socket = "/state/olympus.sock";
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->api());
  EXPECT_EQ(probe.calls, 1);
}

TEST(ChooseConnection, AnsweringDaemonSocketIsApiMode) {
  FakeProbe probe{.answer = true};
  ConnectionInputs in;
  in.daemon_socket = "/state/olympus.sock";
  in.env_token = "tt_env";
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->api());
  EXPECT_EQ(c->endpoint, "unix:///state/olympus.sock");
  EXPECT_EQ(c->token, "tt_env");
  EXPECT_EQ(c->origin, "the local daemon");
}

TEST(ChooseConnection, HostFlagWinsAndNeverProbes) {
  FakeProbe probe{.answer = true};
  ConnectionInputs in;
  in.host_flag = "10.0.0.1:7777";
  in.env_host = "http://env:1";
  in.config = MustParse(kConfig);
  in.daemon_socket = "/state/olympus.sock";
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->endpoint, "http://10.0.0.1:7777");
  EXPECT_EQ(c->origin, "--host");
  // The current context's token belongs to its own host, not to this one.
  EXPECT_EQ(c->token, "");
  EXPECT_EQ(probe.calls, 0);
}

TEST(ChooseConnection, ContextFlagBeatsEnvHostAndCurrentContext) {
  FakeProbe probe;
  ConnectionInputs in;
  in.context_flag = "dev";
  in.env_host = "http://env:1";
  in.config = MustParse(kConfig);
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->endpoint, "http://127.0.0.1:8080");
  EXPECT_EQ(c->origin, "context 'dev'");
}

TEST(ChooseConnection, EnvHostBeatsCurrentContext) {
  FakeProbe probe;
  ConnectionInputs in;
  in.env_host = "http://env:1";
  in.env_token = "tt_env";
  in.config = MustParse(kConfig);
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->endpoint, "http://env:1");
  EXPECT_EQ(c->origin, "TARTARUS_HOST");
  EXPECT_EQ(c->token, "tt_env");
}

TEST(ChooseConnection, CurrentContextWithItsToken) {
  FakeProbe probe{.answer = true};
  ConnectionInputs in;
  in.config = MustParse(kConfig);
  in.daemon_socket = "/state/olympus.sock";
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_EQ(c->endpoint, "http://olympus.example:7777");
  EXPECT_EQ(c->token, "tt_prod");
  EXPECT_EQ(probe.calls, 0);
}

TEST(ChooseConnection, TokenPrecedence) {
  ConnectionInputs in;
  in.config = MustParse(kConfig);
  in.env_token = "tt_env";
  EXPECT_EQ(ChooseConnection(in, nullptr)->token, "tt_env");
  in.token_flag = "tt_flag";
  EXPECT_EQ(ChooseConnection(in, nullptr)->token, "tt_flag");
}

TEST(ChooseConnection, UnknownContextIsAnErrorNotLocalMode) {
  FakeProbe probe;
  ConnectionInputs in;
  in.context_flag = "staging";
  in.config = MustParse(kConfig);
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ErrorCode::kNotFound);
  EXPECT_NE(c.error().message.find("'staging'"), std::string::npos);
  EXPECT_NE(c.error().message.find("known: dev, prod"), std::string::npos) << c.error().message;
}

TEST(ChooseConnection, BadHostIsAnErrorNamingItsSource) {
  ConnectionInputs in;
  in.env_host = "https://secure";
  auto c = ChooseConnection(in, nullptr);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message.rfind("TARTARUS_HOST: ", 0), 0u) << c.error().message;
}

TEST(ChooseConnection, LocalFlagOverridesEnvironmentButNotFlags) {
  FakeProbe probe{.answer = true};
  ConnectionInputs in;
  in.local_flag = true;
  in.env_host = "http://env:1";
  in.config = MustParse(kConfig);
  in.daemon_socket = "/state/olympus.sock";
  auto c = ChooseConnection(in, probe.Fn());
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->api());
  EXPECT_EQ(probe.calls, 0);
  in.host_flag = "h:1";
  EXPECT_FALSE(ChooseConnection(in, probe.Fn()));
}

TEST(ChooseConnection, HostAndContextFlagsConflict) {
  ConnectionInputs in;
  in.host_flag = "h:1";
  in.context_flag = "prod";
  in.config = MustParse(kConfig);
  EXPECT_FALSE(ChooseConnection(in, nullptr));
}

}  // namespace
}  // namespace tartarus::cli

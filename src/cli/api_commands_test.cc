// tartarus CLI, API mode: request building, the stdin guard and policy names.
#include "cli/api_commands.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>

namespace tartarus::cli {
namespace {

RunFlags Flags(std::vector<std::string> command) {
  RunFlags flags;
  flags.command = std::move(command);
  return flags;
}

TEST(CreateSpecFromFlags, SendsWhatWasTyped) {
  RunFlags flags = Flags({"python3", "-c", "print(1)"});
  flags.template_name = "python-ds";
  flags.runtime = "gvisor";
  flags.cpus = "0.5";
  flags.memory = "256M";
  flags.timeout = "30s";
  flags.env = {"A=1"};
  flags.workdir = "/tmp";
  auto spec = CreateSpecFromFlags(flags);
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_EQ((*spec)["template"], "python-ds");
  EXPECT_EQ((*spec)["runtime"], "gvisor");
  EXPECT_EQ((*spec)["command"].size(), 3u);
  EXPECT_EQ((*spec)["cpus"], "0.5");
  EXPECT_EQ((*spec)["memory"], "256M");
  EXPECT_EQ((*spec)["timeout"], "30s");
  EXPECT_EQ((*spec)["env"][0], "A=1");
  EXPECT_EQ((*spec)["workdir"], "/tmp");
  EXPECT_FALSE(spec->contains("disk")) << "unset limits are left to the server";
  EXPECT_FALSE(spec->contains("user"));
}

TEST(CreateSpecFromFlags, RejectsBadFlagsBeforeAnyRequest) {
  EXPECT_FALSE(CreateSpecFromFlags(Flags({})));
  RunFlags memory = Flags({"ls"});
  memory.memory = "lots";
  auto bad = CreateSpecFromFlags(memory);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message.rfind("--memory: ", 0), 0u);
  RunFlags pids = Flags({"ls"});
  pids.pids = 10;
  auto with_pids = CreateSpecFromFlags(pids);
  ASSERT_TRUE(with_pids) << with_pids.error().message;
  EXPECT_EQ((*with_pids)["pids"], 10);
  RunFlags env = Flags({"ls"});
  env.env = {"1BAD=x"};
  EXPECT_FALSE(CreateSpecFromFlags(env));
}

TEST(PolicyNameOf, ReadsNameOrSaysWhatIsWrong) {
  EXPECT_EQ(*PolicyNameOf("name: acme-small\ntenant: acme\n", "p.yaml"), "acme-small");
  auto no_name = PolicyNameOf("tenant: acme\n", "p.yaml");
  ASSERT_FALSE(no_name);
  EXPECT_EQ(no_name.error().message, "p.yaml: the policy has no name: field");
  auto broken = PolicyNameOf("name: [", "p.yaml");
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().message.rfind("p.yaml:", 0), 0u);
  EXPECT_FALSE(PolicyNameOf("- a\n", "p.yaml"));
  EXPECT_FALSE(PolicyNameOf("name: {a: 1}\n", "p.yaml"));
}

}  // namespace
}  // namespace tartarus::cli

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

TEST(StdinHasData, PipeWithData) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(write(p[1], "x", 1), 1);
  EXPECT_TRUE(StdinHasData(p[0]));
  close(p[0]);
  close(p[1]);
}

TEST(StdinHasData, EmptyPipeOpenOrClosedDoesNotBlock) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  EXPECT_FALSE(StdinHasData(p[0])) << "writer still open, nothing written";
  close(p[1]);
  EXPECT_FALSE(StdinHasData(p[0])) << "writer closed: empty";
  close(p[0]);
}

TEST(StdinHasData, SocketIsPeekedNotConsumed) {
  int s[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, s), 0);
  EXPECT_FALSE(StdinHasData(s[0]));
  ASSERT_EQ(write(s[1], "y", 1), 1);
  EXPECT_TRUE(StdinHasData(s[0]));
  char c = 0;
  EXPECT_EQ(read(s[0], &c, 1), 1);
  EXPECT_EQ(c, 'y');
  close(s[0]);
  close(s[1]);
}

TEST(StdinHasData, FilesAndDevNull) {
  int null_fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(null_fd, 0);
  EXPECT_FALSE(StdinHasData(null_fd));
  close(null_fd);
  std::string path = ::testing::TempDir() + "/stdin-" + std::to_string(getpid());
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(StdinHasData(fd));
  ASSERT_EQ(write(fd, "abc", 3), 3);
  ASSERT_EQ(lseek(fd, 0, SEEK_SET), 0);
  EXPECT_TRUE(StdinHasData(fd));
  ASSERT_EQ(lseek(fd, 0, SEEK_END), 3);
  EXPECT_FALSE(StdinHasData(fd)) << "already read to the end";
  close(fd);
  unlink(path.c_str());
  EXPECT_FALSE(StdinHasData(-1));
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

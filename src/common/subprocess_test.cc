#include "common/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace tartarus {
namespace {

TEST(RunCommand, CapturesOutputAndExitCode) {
  auto r = RunCommand({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  EXPECT_EQ(r->status.code, 3);
  EXPECT_EQ(r->status.ShellCode(), 3);
}

TEST(RunCommand, ReportsSignals) {
  auto r = RunCommand({"sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status.signal, SIGKILL);
  EXPECT_EQ(r->status.ShellCode(), 137);
}

TEST(RunCommand, CapsOutput) {
  auto r = RunCommand({"sh", "-c", "head -c 100000 /dev/zero"}, std::chrono::seconds(10), 1000);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->out.size(), 1000u);
}

TEST(RunCommand, TimesOut) {
  auto r = RunCommand({"sleep", "10"}, std::chrono::milliseconds(200));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
}

TEST(Spawn, MissingExecutableIsNotFound) {
  SpawnOptions options;
  options.argv = {"no-such-binary-tartarus"};
  auto r = Spawn(options);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
}

TEST(Spawn, MapsFdsAndClosesTheRest) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  int stray = open("/dev/null", O_RDONLY);  // not close-on-exec: must still be closed
  SpawnOptions options;
  options.argv = {"sh", "-c", "echo hi >&5; ls /proc/self/fd | wc -l >&5"};
  options.fds = {{5, p[1]}};
  auto child = Spawn(options);
  ASSERT_TRUE(child) << child.error().message;
  close(p[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) out.append(buf, n);
  close(p[0]);
  close(stray);
  auto status = child->Wait();
  ASSERT_TRUE(status);
  EXPECT_TRUE(status->Success());
  // fds 0, 1, 2, 5 and the one ls opens for /proc/self/fd.
  EXPECT_EQ(out, "hi\n5\n");
}

TEST(Subprocess, WaitForKillsOnTimeout) {
  SpawnOptions options;
  options.argv = {"sleep", "10"};
  auto child = Spawn(options);
  ASSERT_TRUE(child);
  bool timed_out = false;
  auto status = child->WaitFor(std::chrono::milliseconds(100), &timed_out);
  ASSERT_TRUE(status);
  EXPECT_TRUE(timed_out);
  EXPECT_EQ(status->signal, SIGKILL);
}

}  // namespace
}  // namespace tartarus

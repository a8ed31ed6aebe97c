// tartarus-vmm (Tartarus's KVM microVM monitor): runs the tartarus-vmm binary as a process and
// checks its output and exit status.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "common/subprocess.h"
#include "vmm/kvm.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

const std::string kBinary = TARTARUS_VMM_BINARY;

std::string Guest(const std::string& name) {
  return std::string(TARTARUS_VMM_GUEST_DIR) + "/" + name + ".elf";
}

CommandOutput RunVmm(std::vector<std::string> args) {
  args.insert(args.begin(), kBinary);
  auto output = RunCommand(args, std::chrono::seconds(60));
  EXPECT_TRUE(output) << output.error().message;
  return output ? *output : CommandOutput{};
}

TEST(VmmBinaryTest, HelpDescribesTheFlags) {
  CommandOutput out = RunVmm({"--help"});
  EXPECT_EQ(out.status.code, 0);
  for (const char* flag : {"--kernel", "--mem-mib", "--vcpus", "--cmdline", "--serial-out"}) {
    EXPECT_THAT(out.out, HasSubstr(flag));
  }
  EXPECT_THAT(out.out, HasSubstr("Exit status"));
}

TEST(VmmBinaryTest, BadFlagsExitWithUsageStatus) {
  CommandOutput missing = RunVmm({});
  EXPECT_EQ(missing.status.code, 64);
  EXPECT_THAT(missing.err, HasSubstr("--kernel"));
  CommandOutput bad_memory = RunVmm({"--kernel", Guest("hello"), "--mem-mib", "zero"});
  EXPECT_EQ(bad_memory.status.code, 64);
}

TEST(VmmBinaryTest, RunsAGuestToACleanHalt) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  CommandOutput out = RunVmm({"--kernel", Guest("hello"), "--mem-mib", "32"});
  EXPECT_EQ(out.status.code, 0) << out.err;
  EXPECT_EQ(out.out, "hello from the guest\n");
  EXPECT_THAT(out.err, HasSubstr("guest boot complete"));
  EXPECT_THAT(out.err, HasSubstr("guest stopped: halted"));
}

TEST(VmmBinaryTest, WritesSerialOutputToAFileAndPassesTheCommandLine) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  char dir[] = "/tmp/vmm-main-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string serial = std::string(dir) + "/serial.log";
  CommandOutput out =
      RunVmm({"--kernel", Guest("bootinfo"), "--cmdline", "hello=world", "--serial-out", serial});
  EXPECT_EQ(out.status.code, 0) << out.err;
  EXPECT_EQ(out.out, "");
  std::ifstream file(serial);
  std::stringstream content;
  content << file.rdbuf();
  EXPECT_THAT(content.str(), HasSubstr("cmdline=hello=world\n"));
  ::unlink(serial.c_str());
  ::rmdir(dir);
}

TEST(VmmBinaryTest, TripleFaultExitsWithStatusTwo) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  CommandOutput out = RunVmm({"--kernel", Guest("crash")});
  EXPECT_EQ(out.status.code, 2);
  EXPECT_THAT(out.err, HasSubstr("triple fault"));
}

TEST(VmmBinaryTest, RebootIsACleanStop) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  CommandOutput out = RunVmm({"--kernel", Guest("reboot")});
  EXPECT_EQ(out.status.code, 0) << out.err;
  EXPECT_THAT(out.err, HasSubstr("guest stopped: reboot"));
}

TEST(VmmBinaryTest, MalformedKernelIsAVmmError) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  CommandOutput out = RunVmm({"--kernel", "/proc/self/status"});
  EXPECT_EQ(out.status.code, 1);
  EXPECT_THAT(out.err, HasSubstr("kernel"));
}

}  // namespace
}  // namespace tartarus::vmm

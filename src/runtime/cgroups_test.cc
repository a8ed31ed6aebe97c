// Unit tests of the Tartarus runtime's cgroup reading, on fake v1, v2 and hybrid trees.
#include "runtime/cgroups.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "common/subprocess.h"
#include "runtime/owner.h"

namespace tartarus::runtime {
namespace {

class CgroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tartarus-cgroups-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    root_ = dir;
  }
  void TearDown() override { (void)RunCommand({"rm", "-rf", root_}); }

  void MakeDirs(const std::string& relative) {
    std::string path = root_;
    size_t pos = 0;
    while (pos != std::string::npos) {
      size_t next = relative.find('/', pos + 1);
      path = root_ + "/" + relative.substr(0, next);
      mkdir(path.c_str(), 0755);
      pos = next;
    }
  }
  void Write(const std::string& relative, const std::string& text) {
    std::string path = root_ + "/" + relative;
    if (relative.find('/') != std::string::npos) MakeDirs(relative.substr(0, relative.rfind('/')));
    ASSERT_TRUE(WriteSmallFile(path, text)) << path;
  }

  // A hybrid host like this project's machines: v1 controllers and an empty cgroup2.
  void MakeHybridTree(const std::string& cpuacct_mount = "cpuacct") {
    Write(cpuacct_mount + "/tartarus/sbx/cpuacct.usage", "123456789\n");
    Write("memory/tartarus/sbx/memory.usage_in_bytes", "1048576\n");
    Write("memory/tartarus/sbx/memory.max_usage_in_bytes", "67108864\n");
    Write("memory/tartarus/sbx/memory.oom_control",
          "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
    Write("pids/tartarus/sbx/pids.current", "7\n");
    MakeDirs("unified/tartarus/sbx");
  }

  std::string root_;
};

TEST_F(CgroupsTest, HybridReadsV1Controllers) {
  MakeHybridTree();
  CgroupDirs dirs = CgroupDirsForPath(root_, "/tartarus/sbx");
  EXPECT_EQ(dirs.memory, root_ + "/memory/tartarus/sbx");
  EXPECT_EQ(dirs.unified, root_ + "/unified/tartarus/sbx");
  auto usage = ReadCgroupUsage(dirs);
  ASSERT_TRUE(usage) << usage.error().message;
  EXPECT_EQ(usage->cpu_ns, 123456789u);
  EXPECT_EQ(usage->memory_current_bytes, 1048576u);
  EXPECT_EQ(usage->memory_peak_bytes, 67108864u);
  EXPECT_EQ(usage->pids_current, 7u);
  EXPECT_TRUE(usage->oom_killed);
}

TEST_F(CgroupsTest, CoMountedCpuCpuacct) {
  MakeHybridTree("cpu,cpuacct");
  auto usage = ReadCgroupUsage(CgroupDirsForPath(root_, "/tartarus/sbx"));
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->cpu_ns, 123456789u);
}

TEST_F(CgroupsTest, OldKernelWithoutOomKillCounter) {
  MakeHybridTree();
  Write("memory/tartarus/sbx/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
  auto usage = ReadCgroupUsage(CgroupDirsForPath(root_, "/tartarus/sbx"));
  ASSERT_TRUE(usage);
  EXPECT_FALSE(usage->oom_killed);
}

TEST_F(CgroupsTest, PureV2) {
  Write("cgroup.controllers", "cpu memory pids\n");
  Write("tartarus/sbx/cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n");
  Write("tartarus/sbx/memory.current", "4096\n");
  Write("tartarus/sbx/memory.peak", "8192\n");
  Write("tartarus/sbx/memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n");
  Write("tartarus/sbx/pids.current", "3\n");
  CgroupDirs dirs = CgroupDirsForPath(root_, "/tartarus/sbx");
  EXPECT_EQ(dirs.unified, root_ + "/tartarus/sbx");
  EXPECT_TRUE(dirs.memory.empty());
  auto usage = ReadCgroupUsage(dirs);
  ASSERT_TRUE(usage) << usage.error().message;
  EXPECT_EQ(usage->cpu_ns, 1500000u);
  EXPECT_EQ(usage->memory_current_bytes, 4096u);
  EXPECT_EQ(usage->memory_peak_bytes, 8192u);
  EXPECT_EQ(usage->pids_current, 3u);
  EXPECT_TRUE(usage->oom_killed);
}

TEST_F(CgroupsTest, V2WithoutMemoryPeakUsesCurrent) {
  Write("cgroup.controllers", "memory\n");
  Write("tartarus/sbx/memory.current", "4096\n");
  Write("tartarus/sbx/memory.events", "oom 0\noom_kill 0\n");
  auto usage = ReadCgroupUsage(CgroupDirsForPath(root_, "/tartarus/sbx"));
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->memory_peak_bytes, 4096u);
  EXPECT_FALSE(usage->oom_killed);
}

TEST_F(CgroupsTest, GarbageFilesAreIgnoredAndMissingCgroupFails) {
  Write("memory/tartarus/sbx/memory.usage_in_bytes", "lots\n");
  Write("pids/tartarus/sbx/pids.current", "");
  auto usage = ReadCgroupUsage(CgroupDirsForPath(root_, "/tartarus/sbx"));
  ASSERT_FALSE(usage);
  EXPECT_EQ(usage.error().code, ErrorCode::kNotFound);
  EXPECT_FALSE(ReadCgroupUsage(CgroupDirsForPath(root_, "/tartarus/other")));
}

TEST_F(CgroupsTest, ProcCgroupTextOnHybridHost) {
  MakeHybridTree("cpu,cpuacct");
  std::string text =
      "12:pids:/tartarus/sbx\n"
      "4:cpu,cpuacct:/tartarus/sbx\n"
      "3:memory:/tartarus/sbx\n"
      "1:name=systemd:/user.slice\n"
      "0::/tartarus/sbx\n";
  auto dirs = CgroupDirsFromProcText(root_, text);
  ASSERT_TRUE(dirs) << dirs.error().message;
  EXPECT_EQ(dirs->pids, root_ + "/pids/tartarus/sbx");
  EXPECT_EQ(dirs->cpuacct, root_ + "/cpu,cpuacct/tartarus/sbx");
  EXPECT_EQ(dirs->memory, root_ + "/memory/tartarus/sbx");
  EXPECT_EQ(dirs->unified, root_ + "/unified/tartarus/sbx");
  auto usage = ReadCgroupUsage(*dirs);
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->pids_current, 7u);
}

TEST_F(CgroupsTest, ProcCgroupTextOnV2Host) {
  Write("cgroup.controllers", "memory\n");
  auto dirs = CgroupDirsFromProcText(root_, "0::/tartarus/sbx\n");
  ASSERT_TRUE(dirs);
  EXPECT_EQ(dirs->unified, root_ + "/tartarus/sbx");
}

TEST_F(CgroupsTest, ProcCgroupTextMalformed) {
  EXPECT_FALSE(CgroupDirsFromProcText(root_, "garbage\n"));
  EXPECT_FALSE(CgroupDirsFromProcText(root_, "1:memory\n"));
  EXPECT_FALSE(CgroupDirsFromProcText(root_, "1:memory:relative\n"));
  EXPECT_TRUE(CgroupDirsFromProcText(root_, ""));
}

TEST_F(CgroupsTest, RemoveCgroupPathInEveryHierarchy) {
  for (const char* dir :
       {"memory/tartarus/sbx", "pids/tartarus/sbx", "unified/tartarus/sbx", "cpu/tartarus/other"}) {
    MakeDirs(dir);
  }
  ASSERT_TRUE(RemoveCgroupPath(root_, "/tartarus/sbx"));
  EXPECT_NE(access((root_ + "/memory/tartarus/sbx").c_str(), F_OK), 0);
  EXPECT_NE(access((root_ + "/unified/tartarus/sbx").c_str(), F_OK), 0);
  EXPECT_EQ(access((root_ + "/memory/tartarus").c_str(), F_OK), 0);
  EXPECT_EQ(access((root_ + "/cpu/tartarus/other").c_str(), F_OK), 0);
  EXPECT_TRUE(RemoveCgroupPath(root_, "/tartarus/sbx"));  // nothing left: fine
  Write("pids/tartarus/busy/cgroup.procs", "1\n");        // a non-empty dir stands for "busy"
  EXPECT_FALSE(RemoveCgroupPath(root_, "/tartarus/busy"));
}

}  // namespace
}  // namespace tartarus::runtime

// Templates as ext4 images (template system): sizing, the mkfs command, and a real image
// built from a small tree and read back with debugfs (no mount, no loop device).
#include "template/ext4_image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "common/subprocess.h"

namespace tartarus::templates {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

std::string MakeTempDir() {
  char path[] = "/tmp/tartarus-ext4-test-XXXXXX";
  EXPECT_NE(mkdtemp(path), nullptr);
  return path;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream file(path);
  file << text;
}

std::string FindTool(const std::string& name) {
  std::string found = FindExecutable(name);
  if (!found.empty()) return found;
  for (std::string dir : {"/usr/sbin/", "/sbin/"}) {
    if (access((dir + name).c_str(), X_OK) == 0) return dir + name;
  }
  return "";
}

TEST(Ext4Image, PathSitsBesideTheRootfs) {
  EXPECT_EQ(Ext4ImagePath("/var/lib/tartarus/templates/base/rootfs"),
            "/var/lib/tartarus/templates/base/rootfs.ext4");
  EXPECT_EQ(Ext4ImagePath("/t/base/rootfs/"), "/t/base/rootfs.ext4");
}

TEST(Ext4Image, GeometryLeavesRoomForTheTreeAndMetadata) {
  auto empty = Ext4GeometryFor({.bytes = 0, .entries = 1});
  EXPECT_GE(empty.bytes, 16ull << 20);
  EXPECT_EQ(empty.bytes % (1 << 20), 0u);
  EXPECT_GE(empty.inodes, 1024u);
  auto big = Ext4GeometryFor({.bytes = 1ull << 30, .entries = 100000});
  EXPECT_GE(big.bytes, (1ull << 30) * 5 / 4);
  EXPECT_GE(big.inodes, 125000u);
}

TEST(Ext4Image, CommandHasNoJournalAndTheTree) {
  auto command = MkfsExt4Command("/sbin/mkfs.ext4", "/t/rootfs", "/t/img",
                                 {.bytes = 64ull << 20, .inodes = 2048});
  EXPECT_EQ(command.front(), "/sbin/mkfs.ext4");
  EXPECT_THAT(command, Contains("^has_journal"));
  EXPECT_THAT(command, Contains("/t/rootfs"));
  EXPECT_THAT(command, Contains("2048"));
  EXPECT_EQ(command.back(), "65536k");
  EXPECT_EQ(command[command.size() - 2], "/t/img");
}

TEST(Ext4Image, MeasureRefusesAFile) {
  std::string dir = MakeTempDir();
  WriteFile(dir + "/file", "x");
  auto measured = MeasureTree(dir + "/file");
  ASSERT_FALSE(measured);
  EXPECT_THAT(measured.error().message, HasSubstr("not a directory"));
  auto missing = MeasureTree(dir + "/missing");
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message, HasSubstr("missing"));
  (void)RunCommand({"rm", "-rf", dir});
}

TEST(Ext4Image, BuildsOnceFromATreeAndDebugfsReadsItBack) {
  std::string mkfs = FindTool("mkfs.ext4");
  std::string debugfs = FindTool("debugfs");
  if (mkfs.empty() || debugfs.empty()) {
    GTEST_SKIP() << "skipped: mkfs.ext4 or debugfs missing (apt-get install e2fsprogs)";
  }
  std::string dir = MakeTempDir();
  std::string rootfs = dir + "/rootfs";
  ASSERT_EQ(mkdir(rootfs.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((rootfs + "/etc").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((rootfs + "/bin").c_str(), 0755), 0);
  WriteFile(rootfs + "/etc/hostname", "underworld\n");
  WriteFile(rootfs + "/bin/tool", "#!/bin/sh\necho hi\n");
  ASSERT_EQ(chmod((rootfs + "/bin/tool").c_str(), 0755), 0);
  ASSERT_EQ(symlink("bin", (rootfs + "/sbin").c_str()), 0);

  std::vector<std::string> lines;
  auto image = EnsureExt4Image(rootfs, [&](std::string_view line) { lines.emplace_back(line); });
  ASSERT_TRUE(image) << image.error().message;
  EXPECT_EQ(*image, rootfs + ".ext4");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("mkfs.ext4 -d"));

  auto listing = RunCommand({debugfs, "-R", "ls -l /bin", *image});
  ASSERT_TRUE(listing) << listing.error().message;
  EXPECT_THAT(listing->out, HasSubstr("tool"));
  EXPECT_THAT(listing->out, HasSubstr("100755"));
  auto content = RunCommand({debugfs, "-R", "cat /etc/hostname", *image});
  ASSERT_TRUE(content) << content.error().message;
  EXPECT_EQ(content->out, "underworld\n");
  auto link = RunCommand({debugfs, "-R", "stat /sbin", *image});
  ASSERT_TRUE(link) << link.error().message;
  EXPECT_THAT(link->out, HasSubstr("Fast link dest: \"bin\""));
  auto features = RunCommand({debugfs, "-R", "features", *image});
  ASSERT_TRUE(features);
  EXPECT_THAT(features->out, ::testing::Not(HasSubstr("has_journal")));

  // Cached: a second call does not build again (no progress line, same file).
  struct stat before, after;
  ASSERT_EQ(stat(image->c_str(), &before), 0);
  auto again = EnsureExt4Image(rootfs, [&](std::string_view line) { lines.emplace_back(line); });
  ASSERT_TRUE(again) << again.error().message;
  ASSERT_EQ(stat(again->c_str(), &after), 0);
  EXPECT_EQ(lines.size(), 1u);
  EXPECT_EQ(before.st_ino, after.st_ino);
  (void)RunCommand({"rm", "-rf", dir});
}

TEST(Ext4Image, AMissingTreeIsAnErrorAndLeavesNoImage) {
  std::string dir = MakeTempDir();
  auto image = EnsureExt4Image(dir + "/nothing");
  ASSERT_FALSE(image);
  EXPECT_THAT(image.error().message, HasSubstr(dir + "/nothing"));
  EXPECT_NE(access((dir + "/nothing.ext4").c_str(), F_OK), 0);
  (void)RunCommand({"rm", "-rf", dir});
}

}  // namespace
}  // namespace tartarus::templates

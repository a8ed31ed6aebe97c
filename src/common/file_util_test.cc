// Tests for the shared file helpers.
#include "common/file_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace tartarus {
namespace {

std::string TempPath() {
  char path[] = "/tmp/file-util-test-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  return path;
}

TEST(ReadFileTail, LastBytesWithTrailingBlanksTrimmed) {
  std::string path = TempPath();
  std::string content = std::string(3000, 'a') + "the end of the log\n \n";
  ASSERT_TRUE(WriteFileAtomic(path, content, Durability::kNoFsync));
  std::string tail = ReadFileTail(path, 100);
  EXPECT_EQ(tail.size(), 97u);  // the last 100 bytes, less the trailing "\n \n"
  EXPECT_TRUE(tail.ends_with("the end of the log")) << tail;
  EXPECT_EQ(ReadFileTail(path, 1 << 20), content.substr(0, content.size() - 3));
  unlink(path.c_str());
}

TEST(ReadFileTail, MissingOrEmptyFileIsEmpty) {
  EXPECT_EQ(ReadFileTail("/nonexistent/file-util-test", 100), "");
  std::string path = TempPath();
  EXPECT_EQ(ReadFileTail(path, 100), "");
  unlink(path.c_str());
}

TEST(HasMountsUnder, SeesMountPointsAtAndBelowADirOnly) {
  EXPECT_TRUE(HasMountsUnder("/proc"));  // /proc itself is one
  EXPECT_TRUE(HasMountsUnder("/"));
  std::string dir = TempPath();
  EXPECT_FALSE(HasMountsUnder(dir));
  EXPECT_FALSE(HasMountsUnder("/pro")) << "a prefix of a mount point's name is not above it";
}

}  // namespace
}  // namespace tartarus

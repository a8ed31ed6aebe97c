// Unit tests of the guest agent's helpers: user resolution without NSS, file helpers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>

#include "guest/child.h"
#include "guest/files.h"

namespace tartarus::guest {
namespace {

class HelpersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/agent_helpers.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    std::ofstream(dir_ + "/passwd") << "root:x:0:0:root:/root:/bin/sh\n"
                                       "garbage line\n"
                                       "alice:x:1000:1000::/home/alice:/bin/sh\n"
                                       "bob:x:1001:100::/home/bob:/bin/sh\n";
    std::ofstream(dir_ + "/group") << "root:x:0:\nalice:x:1000:\nusers:x:100:\n"
                                      "docker:x:999:alice,bob\nwheel:x:10:bob\n";
  }
  void TearDown() override { RemoveTree(dir_); }
  Result<Credentials> Resolve(const std::string& user) {
    return ResolveUser(user, dir_ + "/passwd", dir_ + "/group");
  }
  std::string dir_;
};

TEST_F(HelpersTest, ResolveUser) {
  EXPECT_FALSE(Resolve("")->change);
  auto alice = Resolve("alice");
  ASSERT_TRUE(alice);
  EXPECT_EQ(alice->uid, 1000u);
  EXPECT_EQ(alice->gid, 1000u);
  EXPECT_EQ(alice->groups, (std::vector<gid_t>{1000, 999}));
  auto bob = Resolve("bob");
  EXPECT_EQ(bob->groups, (std::vector<gid_t>{100, 999, 10}));
  auto numeric = Resolve("1001");
  EXPECT_EQ(numeric->uid, 1001u);
  EXPECT_EQ(numeric->gid, 100u);  // from the passwd entry
  auto unknown_uid = Resolve("4242");
  EXPECT_EQ(unknown_uid->uid, 4242u);
  EXPECT_EQ(unknown_uid->gid, 0u);
  auto pair = Resolve("4242:77");
  EXPECT_EQ(pair->gid, 77u);
  EXPECT_EQ(pair->groups, (std::vector<gid_t>{77}));
  EXPECT_EQ(Resolve("alice:users")->gid, 100u);
  auto missing = Resolve("mallory");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("unknown user 'mallory'"), std::string::npos);
  EXPECT_FALSE(Resolve("alice:nogroup"));
  EXPECT_FALSE(Resolve(":1"));
  EXPECT_FALSE(Resolve("1:"));
  EXPECT_FALSE(Resolve("99999999999"));  // does not fit: treated as a name, unknown
}

TEST_F(HelpersTest, MakeDirsAndRemoveTree) {
  std::string deep = dir_ + "/a/b/c";
  EXPECT_EQ(MakeDirs(deep, 0700), 0);
  EXPECT_EQ(MakeDirs(deep, 0700), 0);
  struct stat st;
  ASSERT_EQ(stat(deep.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(MakeParents(dir_ + "/x/y/file"), 0);
  EXPECT_EQ(stat((dir_ + "/x/y").c_str(), &st), 0);
  std::ofstream(dir_ + "/plain") << "x";
  EXPECT_EQ(MakeDirs(dir_ + "/plain/sub", 0755), ENOTDIR);

  // A symlink inside the tree pointing outside must not be followed.
  std::string outside = dir_ + "/outside";
  ASSERT_EQ(MakeDirs(outside, 0755), 0);
  std::ofstream(outside + "/keep") << "keep";
  ASSERT_EQ(symlink(outside.c_str(), (dir_ + "/a/link").c_str()), 0);
  EXPECT_EQ(RemoveTree(dir_ + "/a"), 0);
  EXPECT_NE(stat((dir_ + "/a").c_str(), &st), 0);
  EXPECT_EQ(stat((outside + "/keep").c_str(), &st), 0);
  EXPECT_EQ(RemoveTree(dir_ + "/missing"), ENOENT);
}

TEST_F(HelpersTest, ErrnoMapping) {
  EXPECT_EQ(KindForErrno(ENOENT), protocol::ErrorKind::kNotFound);
  EXPECT_EQ(KindForErrno(EACCES), protocol::ErrorKind::kPermissionDenied);
  EXPECT_EQ(KindForErrno(ENOSPC), protocol::ErrorKind::kResourceExhausted);
  EXPECT_EQ(KindForErrno(EIO), protocol::ErrorKind::kIo);
  auto reply = ErrnoReply("open", "/x", ENOENT);
  EXPECT_EQ(reply.message, "open /x: No such file or directory");
  EXPECT_EQ(CheckPath("/ok"), "");
  EXPECT_NE(CheckPath("rel"), "");
  EXPECT_NE(CheckPath(""), "");
  EXPECT_NE(CheckPath(std::string("/a\0b", 4)), "");
}

}  // namespace
}  // namespace tartarus::guest

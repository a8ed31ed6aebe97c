#include "node/node_lease.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "node/sandbox_record.h"

namespace tartarus::node {
namespace {

using ::testing::HasSubstr;

class NodeLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("tartarus-lease-" + NewSandboxId());
    std::filesystem::create_directories(dir_);
    path_ = dir_ + "/node.lease";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_, path_;
};

TEST_F(NodeLeaseTest, HoldsUntilItsDeadline) {
  ASSERT_TRUE(WriteNodeLease(path_, MonotonicMs() + 60000));
  EXPECT_EQ(NodeLeaseLapsed(path_), "");
  ASSERT_TRUE(WriteNodeLease(path_, MonotonicMs() - 1500));
  EXPECT_THAT(NodeLeaseLapsed(path_), HasSubstr("lapsed"));
  EXPECT_THAT(NodeLeaseLapsed(path_), HasSubstr("ms ago"));
}

TEST_F(NodeLeaseTest, MissingOrGarbledCountsAsLapsed) {
  EXPECT_THAT(NodeLeaseLapsed(path_), HasSubstr("missing"));
  for (const char* text : {"", "soon\n", "12x\n", "99999999999999999999999\n"}) {
    std::ofstream(path_) << text;
    EXPECT_THAT(NodeLeaseLapsed(path_), HasSubstr("garbled")) << "content: " << text;
  }
}

TEST_F(NodeLeaseTest, WriteFailsClearlyWithoutItsDirectory) {
  auto written = WriteNodeLease(dir_ + "/no-such-dir/node.lease", MonotonicMs());
  ASSERT_FALSE(written);
  EXPECT_THAT(written.error().message, HasSubstr("no-such-dir"));
}

}  // namespace
}  // namespace tartarus::node

#include "common/units.h"

#include <gtest/gtest.h>

namespace tartarus {
namespace {

TEST(ParseBytes, AcceptsBinarySuffixes) {
  EXPECT_EQ(*ParseBytes("512M"), 512ull << 20);
  EXPECT_EQ(*ParseBytes("2G"), 2ull << 30);
  EXPECT_EQ(*ParseBytes("64MiB"), 64ull << 20);
  EXPECT_EQ(*ParseBytes("100k"), 100ull << 10);
  EXPECT_EQ(*ParseBytes("1048576"), 1048576u);
  EXPECT_EQ(*ParseBytes("1.5G"), 3ull << 29);
}

TEST(ParseBytes, RejectsGarbageWithClearMessage) {
  auto r = ParseBytes("512X");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("unknown unit 'X'"), std::string::npos) << r.error().message;
  EXPECT_FALSE(ParseBytes(""));
  EXPECT_FALSE(ParseBytes("M"));
  EXPECT_FALSE(ParseBytes("-5M"));
  EXPECT_FALSE(ParseBytes("99999999999999999999T"));
}

TEST(ParseDuration, AcceptsUnits) {
  EXPECT_EQ(ParseDuration("30s")->count(), 30000);
  EXPECT_EQ(ParseDuration("250ms")->count(), 250);
  EXPECT_EQ(ParseDuration("1.5m")->count(), 90000);
  EXPECT_EQ(ParseDuration("2h")->count(), 7200000);
  EXPECT_EQ(ParseDuration("90")->count(), 90000);
}

TEST(ParseDuration, RejectsBadInput) {
  EXPECT_FALSE(ParseDuration("30 seconds"));
  EXPECT_FALSE(ParseDuration("abc"));
  EXPECT_FALSE(ParseDuration("100000h"));
}

TEST(ParseMilliCpus, Bounds) {
  EXPECT_EQ(*ParseMilliCpus("1"), 1000u);
  EXPECT_EQ(*ParseMilliCpus("0.5"), 500u);
  EXPECT_FALSE(ParseMilliCpus("0"));
  EXPECT_FALSE(ParseMilliCpus("2cpus"));
  EXPECT_FALSE(ParseMilliCpus("5000"));
}

TEST(Format, RoundTripsReadably) {
  EXPECT_EQ(FormatBytes(512ull << 20), "512M");
  EXPECT_EQ(FormatBytes(1536ull << 20), "1.5G");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(90000)), "1m30s");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(250)), "250ms");
  EXPECT_EQ(FormatMilliCpus(1500), "1.5");
}

}  // namespace
}  // namespace tartarus

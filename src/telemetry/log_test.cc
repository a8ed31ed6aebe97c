// Hermes (telemetry) tests: JSON log lines.
#include "telemetry/log.h"

#include <regex>
#include <vector>

#include <gtest/gtest.h>

namespace tartarus::telemetry {
namespace {

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogSink([this](std::string_view line) { lines_.emplace_back(line); });
  }
  void TearDown() override {
    SetLogSink(nullptr);
    SetMinLogLevel(LogLevel::kInfo);
  }
  std::vector<std::string> lines_;
};

TEST_F(LogTest, WritesOneJsonObjectWithFieldsMerged) {
  LogJson("info", "sandbox started", {{"sandbox", "sb-1"}, {"cpus", 2}, {"msg", "ignored"}});
  ASSERT_EQ(lines_.size(), 1u);
  auto line = nlohmann::json::parse(lines_[0]);
  EXPECT_EQ(line["level"], "info");
  EXPECT_EQ(line["msg"], "sandbox started");
  EXPECT_EQ(line["sandbox"], "sb-1");
  EXPECT_EQ(line["cpus"], 2);
  EXPECT_TRUE(std::regex_match(line["ts"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
      << line["ts"];
  EXPECT_EQ(lines_[0].find("{\"ts\":"), 0u) << "ts comes first";
  EXPECT_EQ(lines_[0].find('\n'), std::string::npos);
}

TEST_F(LogTest, MinimumLevelFilters) {
  SetMinLogLevel(LogLevel::kWarn);
  LogJson("debug", "a");
  LogJson("info", "b");
  LogJson("warn", "c");
  LogJson("error", "d");
  ASSERT_EQ(lines_.size(), 2u);
  EXPECT_EQ(nlohmann::json::parse(lines_[0])["msg"], "c");
  EXPECT_EQ(nlohmann::json::parse(lines_[1])["msg"], "d");
}

TEST_F(LogTest, NonObjectFieldsAndBadUtf8DoNotThrow) {
  LogJson("info", "bad \xff utf8", nlohmann::json::array({1, 2}));
  ASSERT_EQ(lines_.size(), 1u);
  auto line = nlohmann::json::parse(lines_[0]);
  EXPECT_EQ(line["fields"], nlohmann::json::array({1, 2}));
  EXPECT_NE(line["msg"].get<std::string>().find("bad"), std::string::npos);
}

TEST(LogLevelTest, Parses) {
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarn);
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  auto bad = ParseLogLevel("loud");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(LogLevelName(LogLevel::kError), "error");
}

}  // namespace
}  // namespace tartarus::telemetry

// Hecatoncheir cluster mode: run ids and stream events.
#include "node/node_agent.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace tartarus::node {
namespace {

TEST(RunId, RoundTrips) {
  std::string id;
  int attempt = 0;
  ASSERT_TRUE(ParseRunId(RunId("0123456789abcdef", 3), &id, &attempt));
  EXPECT_EQ(id, "0123456789abcdef");
  EXPECT_EQ(attempt, 3);
}

TEST(RunId, LocalSandboxIdsAreNotRuns) {
  std::string id;
  int attempt = 0;
  EXPECT_FALSE(ParseRunId("3f2a9c01bd4e", &id, &attempt));        // a local-mode id
  EXPECT_FALSE(ParseRunId("0123456789abcdef-0", &id, &attempt));  // attempts start at 1
  EXPECT_FALSE(ParseRunId("0123456789abcdef-x", &id, &attempt));
  EXPECT_FALSE(ParseRunId("0123456789ABCDEF-1", &id, &attempt));
  EXPECT_FALSE(ParseRunId("0123456789abcdef-", &id, &attempt));
}

TEST(OutputEvent, TextStaysText) {
  auto event = nlohmann::json::parse(OutputEvent("stdout", "héllo\n"));
  EXPECT_EQ(event["event"], "stdout");
  EXPECT_EQ(event["data"], "héllo\n");
  EXPECT_FALSE(event.contains("data_b64"));
}

TEST(OutputEvent, BinaryIsBase64) {
  auto event = nlohmann::json::parse(OutputEvent("stderr", std::string("\xff\x00\x01", 3)));
  EXPECT_EQ(event["event"], "stderr");
  EXPECT_EQ(event["data_b64"], "/wAB");
  EXPECT_FALSE(event.contains("data"));
  // A multi-byte character cut at the end is not valid UTF-8 on its own.
  auto cut = nlohmann::json::parse(OutputEvent("stdout", "a\xc3"));
  EXPECT_EQ(cut["data_b64"], "YcM=");
}

}  // namespace
}  // namespace tartarus::node

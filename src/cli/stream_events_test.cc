// tartarus CLI, Olympus streams: NDJSON decoding across arbitrary chunk boundaries.
#include "cli/stream_events.h"

#include <gtest/gtest.h>

#include <vector>

namespace tartarus::cli {
namespace {

using Kind = StreamEvent::Kind;

constexpr std::string_view kStream =
    "{\"event\":\"stdout\",\"data\":\"hello \\u00e9\\n\"}\n"
    "{\"event\":\"stderr\",\"data_b64\":\"/wA=\"}\n"
    "{\"event\":\"progress\",\"data\":\"ignored\"}\n"
    "\n"
    "{\"event\":\"stdout\",\"data\":\"line2\\n\"}\r\n"
    "{\"event\":\"end\",\"state\":\"exited\",\"exit_code\":3,\"error\":\"\"}\n";

std::vector<StreamEvent> DecodeInChunks(std::string_view stream, size_t chunk_size) {
  std::vector<StreamEvent> events;
  EventDecoder decoder([&](const StreamEvent& e) { events.push_back(e); });
  for (size_t i = 0; i < stream.size(); i += chunk_size) {
    auto status = decoder.Feed(stream.substr(i, chunk_size));
    EXPECT_TRUE(status) << status.error().message;
  }
  auto finished = decoder.Finish();
  EXPECT_TRUE(finished) << finished.error().message;
  return events;
}

TEST(EventDecoder, SameEventsWhateverTheChunking) {
  for (size_t chunk : {1ul, 2ul, 3ul, 7ul, 64ul, 4096ul}) {
    auto events = DecodeInChunks(kStream, chunk);
    ASSERT_EQ(events.size(), 5u) << "chunk " << chunk;
    EXPECT_EQ(events[0].kind, Kind::kStdout);
    EXPECT_EQ(events[0].data, "hello \xc3\xa9\n");
    EXPECT_EQ(events[1].kind, Kind::kStderr);
    EXPECT_EQ(events[1].data, std::string("\xff\x00", 2));
    EXPECT_EQ(events[2].kind, Kind::kOther);
    EXPECT_EQ(events[2].name, "progress");
    EXPECT_EQ(events[3].data, "line2\n");
    EXPECT_EQ(events[4].kind, Kind::kEnd);
    EXPECT_EQ(events[4].state, "exited");
    ASSERT_TRUE(events[4].exit_code.has_value());
    EXPECT_EQ(*events[4].exit_code, 3);
  }
}

TEST(EventDecoder, FinalLineWithoutNewlineCounts) {
  std::vector<StreamEvent> events;
  EventDecoder decoder([&](const StreamEvent& e) { events.push_back(e); });
  ASSERT_TRUE(decoder.Feed("{\"event\":\"end\",\"state\":\"failed\",\"exit_code\":null,"));
  EXPECT_FALSE(decoder.saw_end());
  ASSERT_TRUE(decoder.Feed("\"error\":\"no node has gvisor\"}"));
  EXPECT_FALSE(decoder.saw_end());
  ASSERT_TRUE(decoder.Finish());
  ASSERT_TRUE(decoder.saw_end());
  EXPECT_EQ(decoder.end()->state, "failed");
  EXPECT_FALSE(decoder.end()->exit_code.has_value());
  EXPECT_EQ(decoder.end()->error, "no node has gvisor");
}

TEST(EventDecoder, MalformedInputIsAProtocolErrorAndSticks) {
  for (const char* bad :
       {"not json\n", "[1,2]\n", "{\"data\":\"x\"}\n", "{\"event\":\"stdout\",\"data\":5}\n",
        "{\"event\":\"stdout\",\"data_b64\":\"@@@@\"}\n",
        "{\"event\":\"end\",\"exit_code\":\"0\"}\n", "{\"event\":\"end\",\"exit_code\":300}\n"}) {
    EventDecoder decoder(nullptr);
    auto status = decoder.Feed(bad);
    ASSERT_FALSE(status) << bad;
    EXPECT_EQ(status.error().code, ErrorCode::kProtocol);
    EXPECT_FALSE(decoder.Feed("{\"event\":\"end\"}\n")) << "a failed decoder stays failed";
  }
}

TEST(EventDecoder, NothingAfterTheEnd) {
  EventDecoder decoder(nullptr);
  EXPECT_FALSE(decoder.Feed("{\"event\":\"end\"}\n{\"event\":\"stdout\",\"data\":\"x\"}\n"));
}

TEST(EventDecoder, BoundsOneLine) {
  EventDecoder decoder(nullptr);
  std::string big(1 << 20, 'a');
  Status status;
  for (int i = 0; i < 17 && status; ++i) status = decoder.Feed(big);
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("16 MiB"), std::string::npos);
}

TEST(DecodeBase64, RoundTripsAndRejects) {
  EXPECT_EQ(*DecodeBase64(""), "");
  EXPECT_EQ(*DecodeBase64("Zg=="), "f");
  EXPECT_EQ(*DecodeBase64("Zm8="), "fo");
  EXPECT_EQ(*DecodeBase64("Zm9v"), "foo");
  EXPECT_EQ(*DecodeBase64("+/+/"), "\xfb\xff\xbf");
  for (const char* bad : {"Zg=", "Z===", "Zg=a", "Zm9v\n", "Zg==Zg==", "====", "Zm9*"}) {
    EXPECT_FALSE(DecodeBase64(bad)) << bad;
  }
}

}  // namespace
}  // namespace tartarus::cli

namespace tartarus::cli {
namespace {

TEST(ParseStreamEvent, StartedNamesTheExecWhoseStdinIsOpen) {
  auto event = ParseStreamEvent(R"({"event":"started","exec_id":"0123abcd"})");
  ASSERT_TRUE(event) << event.error().message;
  EXPECT_EQ(event->kind, StreamEvent::Kind::kStarted);
  EXPECT_EQ(event->exec_id, "0123abcd");
  auto nameless = ParseStreamEvent(R"({"event":"started"})");
  ASSERT_FALSE(nameless);
  EXPECT_NE(nameless.error().message.find("exec_id"), std::string::npos);
}

}  // namespace
}  // namespace tartarus::cli

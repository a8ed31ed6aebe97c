// Tests for the guest protocol codec: round trips of every message and every way a
// hostile or broken peer can malform a frame.
#include "protocol/codec.h"

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tartarus::protocol {
namespace {

// Field-wise equality through the encoding: the encoding is canonical, so two messages
// are equal exactly when they encode to the same bytes.
std::string Bytes(const Frame& frame) {
  auto bytes = EncodeFrame(frame);
  EXPECT_TRUE(bytes.has_value()) << bytes.error().message;
  return bytes.value_or("");
}

std::vector<Frame> OneOfEach() {
  std::vector<Frame> frames;
  frames.push_back({0, Hello{1, 3}});
  frames.push_back(
      {7,
       ExecStart{{"sh", "-c", "echo hi"}, {"PATH=/bin", "A="}, "/tmp", "1000:1000", true, 1500}});
  frames.push_back({7, StdinData{std::string("a\0b", 3)}});
  frames.push_back({7, StdinClose{}});
  frames.push_back({7, Signal{-9}});
  frames.push_back({8, FileWriteOpen{"/x/y", 0600, true}});
  frames.push_back({8, FileWriteData{std::string(1000, 'z')}});
  frames.push_back({8, FileWriteClose{}});
  frames.push_back({9, FileRead{"/etc/passwd"}});
  frames.push_back({10, Stat{"/"}});
  frames.push_back({11, List{"/tmp"}});
  frames.push_back({12, Mkdir{"/a/b", 0700, true}});
  frames.push_back({13, Remove{"/a", true}});
  frames.push_back({0, Shutdown{}});
  frames.push_back({0, Ready{1, "0.1.0"}});
  frames.push_back({7, ExecStarted{4242}});
  frames.push_back({7, Output{Stream::kStderr, "oops\n"}});
  frames.push_back({7, ExecExit{-1, 9, true}});
  frames.push_back({7, StdinAck{65536}});
  frames.push_back({9, FileData{"chunk"}});
  frames.push_back({9, FileEnd{}});
  frames.push_back({10, StatResult{FileType::kSymlink, 0777, 1ull << 40, -5}});
  frames.push_back(
      {11, ListChunk{{{"a", FileType::kRegular, 0644, 3}, {"b", FileType::kDirectory, 0755, 4096}},
                     true}});
  frames.push_back({12, Ok{}});
  frames.push_back({13, ErrorReply{ErrorKind::kNotFound, "open /x: No such file or directory"}});
  return frames;
}

std::string Header(uint32_t length, uint8_t type, uint32_t id) {
  std::string h;
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>(length >> (8 * i)));
  h.push_back(static_cast<char>(type));
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>(id >> (8 * i)));
  return h;
}

std::string Le32(uint32_t v) { return Header(v, 0, 0).substr(0, 4); }

// Decodes `bytes` as one frame, expecting a per-frame error mentioning `needle`.
void ExpectBadFrame(const std::string& bytes, const std::string& needle) {
  FrameDecoder decoder;
  decoder.Feed(bytes);
  DecodeEvent event = decoder.Next();
  ASSERT_EQ(event.kind, DecodeEvent::Kind::kBadFrame) << needle;
  EXPECT_NE(event.error.find(needle), std::string::npos) << event.error;
  EXPECT_EQ(decoder.Next().kind, DecodeEvent::Kind::kNeedMore);
}

TEST(CodecTest, EveryMessageTypeRoundTrips) {
  std::vector<Frame> frames = OneOfEach();
  ASSERT_EQ(frames.size(), std::variant_size_v<Message>);
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_EQ(frames[i].message.index(), i) << "OneOfEach must list the variant in order";
    std::string bytes = Bytes(frames[i]);
    ASSERT_GE(bytes.size(), kFrameHeaderBytes);
    EXPECT_EQ(static_cast<uint8_t>(bytes[4]), static_cast<uint8_t>(TypeOf(frames[i].message)));
    FrameDecoder decoder;
    decoder.Feed(bytes);
    DecodeEvent event = decoder.Next();
    ASSERT_EQ(event.kind, DecodeEvent::Kind::kFrame)
        << MessageTypeName(TypeOf(frames[i].message)) << ": " << event.error;
    EXPECT_EQ(event.frame.id, frames[i].id);
    EXPECT_EQ(event.frame.message.index(), i);
    EXPECT_EQ(Bytes(event.frame), bytes);
    EXPECT_EQ(decoder.Next().kind, DecodeEvent::Kind::kNeedMore);
  }
}

TEST(CodecTest, FieldsSurviveRoundTrip) {
  Frame frame{99, ExecStart{{"a", ""}, {"K=V"}, "/w", "root", true, 123456789012ull}};
  FrameDecoder decoder;
  decoder.Feed(Bytes(frame));
  DecodeEvent event = decoder.Next();
  ASSERT_EQ(event.kind, DecodeEvent::Kind::kFrame);
  const auto& exec = std::get<ExecStart>(event.frame.message);
  EXPECT_EQ(exec.argv, (std::vector<std::string>{"a", ""}));
  EXPECT_EQ(exec.env, (std::vector<std::string>{"K=V"}));
  EXPECT_EQ(exec.cwd, "/w");
  EXPECT_EQ(exec.user, "root");
  EXPECT_TRUE(exec.stdin_pipe);
  EXPECT_EQ(exec.timeout_ms, 123456789012ull);
}

TEST(CodecTest, ByteAtATimeAndConcatenated) {
  std::string stream;
  for (const Frame& frame : OneOfEach()) stream += Bytes(frame);
  FrameDecoder decoder;
  size_t frames = 0;
  for (char c : stream) {
    decoder.Feed(std::string_view(&c, 1));
    for (;;) {
      DecodeEvent event = decoder.Next();
      if (event.kind == DecodeEvent::Kind::kNeedMore) break;
      ASSERT_EQ(event.kind, DecodeEvent::Kind::kFrame) << event.error;
      ++frames;
    }
  }
  EXPECT_EQ(frames, OneOfEach().size());
  EXPECT_EQ(decoder.BufferedBytes(), 0u);
}

TEST(CodecTest, LargestDataChunkFits) {
  Frame frame{1, Output{Stream::kStdout, std::string(kMaxPayloadBytes - 5, 'x')}};
  std::string bytes = Bytes(frame);
  EXPECT_EQ(bytes.size(), kFrameHeaderBytes + kMaxPayloadBytes);
  FrameDecoder decoder;
  decoder.Feed(bytes);
  EXPECT_EQ(decoder.Next().kind, DecodeEvent::Kind::kFrame);
}

TEST(CodecTest, EncoderRejectsWhatTheDecoderWould) {
  EXPECT_FALSE(EncodeFrame({1, Output{Stream::kStdout, std::string(kMaxPayloadBytes, 'x')}}));
  EXPECT_FALSE(EncodeFrame({1, Stat{std::string(kMaxStringBytes + 1, 'p')}}));
  EXPECT_TRUE(EncodeFrame({1, Stat{std::string(kMaxStringBytes, 'p')}}));
  ExecStart too_many;
  too_many.argv.assign(kMaxListItems + 1, "a");
  auto result = EncodeFrame({1, too_many});
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find("list of 4097 items"), std::string::npos);
  EXPECT_FALSE(EncodeFrame({1, Output{static_cast<Stream>(9), "x"}}));
  EXPECT_FALSE(EncodeFrame({1, ErrorReply{static_cast<ErrorKind>(0), "x"}}));
  // Strings that each fit but together overflow the payload.
  ExecStart big;
  big.argv.assign(20, std::string(kMaxStringBytes, 'a'));
  EXPECT_FALSE(EncodeFrame({1, big}));
  // A failed append leaves the output untouched.
  std::string out = "prefix";
  EXPECT_FALSE(AppendFrame({1, big}, out));
  EXPECT_EQ(out, "prefix");
}

TEST(CodecTest, UnknownTypeIsPerFrameError) {
  for (uint8_t type : {0, 15, 63, 75, 255}) {
    std::string bytes = Header(0, type, 5) + Bytes({1, Ok{}});
    FrameDecoder decoder;
    decoder.Feed(bytes);
    DecodeEvent event = decoder.Next();
    ASSERT_EQ(event.kind, DecodeEvent::Kind::kBadFrame);
    EXPECT_EQ(event.id, 5u);
    EXPECT_EQ(event.type, type);
    EXPECT_NE(event.error.find("unknown"), std::string::npos);
    EXPECT_EQ(decoder.Next().kind, DecodeEvent::Kind::kFrame) << "the stream continues";
  }
}

TEST(CodecTest, OversizedDeclaredLengthIsFatal) {
  FrameDecoder decoder;
  decoder.Feed(Header(kMaxPayloadBytes + 1, 66, 1));
  DecodeEvent event = decoder.Next();
  ASSERT_EQ(event.kind, DecodeEvent::Kind::kFatal);
  EXPECT_NE(event.error.find("over the limit"), std::string::npos);
  decoder.Feed(Bytes({1, Ok{}}));
  EXPECT_EQ(decoder.Next().kind, DecodeEvent::Kind::kFatal);
  EXPECT_EQ(decoder.BufferedBytes(), 0u);
}

TEST(CodecTest, TrailingBytes) {
  std::string payload = Le32(1) + Le32(1) + "x";
  ExpectBadFrame(Header(payload.size(), 1, 0) + payload, "1 trailing bytes");
  ExpectBadFrame(Header(1, 73, 0) + "x", "trailing");  // Ok has no fields
}

TEST(CodecTest, TruncatedPayload) {
  ExpectBadFrame(Header(3, 1, 0) + "abc", "truncated");
  std::string payload = Le32(10) + "abc";  // Stat path claims 10 bytes, has 3
  ExpectBadFrame(Header(payload.size(), 10, 0) + payload, "truncated");
}

TEST(CodecTest, OversizedStrings) {
  std::string payload = Le32(kMaxStringBytes + 1) + std::string(kMaxStringBytes + 1, 'a');
  ExpectBadFrame(Header(payload.size(), 10, 3) + payload, "exceeds the limit of 65536");
  // A length beyond the payload limit, claimed inside a small payload.
  payload = Le32(0xffffffff);
  ExpectBadFrame(Header(payload.size(), 3, 3) + payload, "exceeds the limit");
}

TEST(CodecTest, ListBounds) {
  std::string payload = Le32(kMaxListItems + 1);
  ExpectBadFrame(Header(payload.size(), 2, 1) + payload, "4097 items");
  payload = Le32(1000);  // a count the payload cannot hold
  ExpectBadFrame(Header(payload.size(), 2, 1) + payload, "exceeds the payload");
}

TEST(CodecTest, BadEnumsAndBools) {
  std::string payload = std::string(1, '\x07') + Le32(0);  // Output stream 7
  ExpectBadFrame(Header(payload.size(), 66, 1) + payload, "invalid enum value 7");
  payload = Le32(0) + Le32(0);  // ErrorReply kind 0
  ExpectBadFrame(Header(payload.size(), 74, 1) + payload, "invalid enum value 0");
  payload = std::string(1, '\x04') + std::string(20, '\0');  // StatResult type 4
  ExpectBadFrame(Header(payload.size(), 71, 1) + payload, "invalid enum value 4");
  payload = Le32(0) + Le32(0) + Le32(0) + Le32(0) + std::string(1, '\x02') + std::string(8, '\0');
  ExpectBadFrame(Header(payload.size(), 2, 1) + payload, "bool value 2");
  payload =
      Le32(1) + Le32(1) + "a" + std::string(1, '\x01') + Le32(0) + std::string(8, '\0') + "\x05";
  ExpectBadFrame(Header(payload.size(), 72, 1) + payload, "bool value 5");  // ListChunk.last
}

TEST(CodecTest, ErrorNamesTheMessage) {
  ExpectBadFrame(Header(1, 71, 0) + "\x01", "StatResult: truncated");
}

TEST(CodecTest, NamesAreTotal) {
  EXPECT_EQ(MessageTypeName(MessageType::kFileWriteOpen), "FileWriteOpen");
  EXPECT_EQ(MessageTypeName(static_cast<MessageType>(200)), "Unknown");
  EXPECT_EQ(ErrorKindName(ErrorKind::kUnknownId), "unknown_id");
}

TEST(CodecTest, BlockingHelpersOverPipe) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  ASSERT_TRUE(WriteFrame(fds[1], {3, Output{Stream::kStdout, "hello"}}));
  std::string bad = Header(1, 200, 4) + "x";
  ASSERT_TRUE(WriteAll(fds[1], bad));
  ASSERT_TRUE(WriteFrame(fds[1], {5, Ok{}}));
  auto frame = ReadFrame(fds[0], 1000);
  ASSERT_TRUE(frame) << frame.error().message;
  EXPECT_EQ(frame->id, 3u);
  EXPECT_EQ(std::get<Output>(frame->message).data, "hello");
  auto error = ReadFrame(fds[0], 1000);
  ASSERT_FALSE(error);
  EXPECT_EQ(error.error().code, ErrorCode::kProtocol);
  frame = ReadFrame(fds[0], 1000);
  ASSERT_TRUE(frame);
  EXPECT_EQ(frame->id, 5u);
  auto timeout = ReadFrame(fds[0], 50);
  ASSERT_FALSE(timeout);
  EXPECT_EQ(timeout.error().code, ErrorCode::kTimeout);
  close(fds[1]);
  auto eof = ReadFrame(fds[0], 1000);
  ASSERT_FALSE(eof);
  EXPECT_EQ(eof.error().code, ErrorCode::kCancelled);
  close(fds[0]);
}

}  // namespace
}  // namespace tartarus::protocol

// The guest protocol codec: turns Frames (messages.h) into bytes and bytes back into
// Frames. Shared by the host (AgentClient, the sandbox supervisor) and the guest agent,
// so it depends on nothing but the standard library and tartarus_common.
//
// Decoding never trusts its input: every length and count is bounded by messages.h, and
// anything else (unknown type, bad enum value, truncated or trailing bytes) comes back as
// an error value naming the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"
#include "protocol/messages.h"

namespace tartarus::protocol {

std::string_view MessageTypeName(MessageType type);
std::string_view ErrorKindName(ErrorKind kind);
// The wire type of the message held by the variant.
MessageType TypeOf(const Message& message);

// Appends the encoded frame to `out`. Fails, appending nothing, when a field breaks a
// bound of messages.h (string, list, payload size, enum value): we never emit a frame the
// peer would have to reject.
Status AppendFrame(const Frame& frame, std::string& out);
Result<std::string> EncodeFrame(const Frame& frame);

// Decodes the payload of one frame (the bytes after the 9-byte header).
Result<Message> DecodePayload(uint8_t type, std::string_view payload);

// What FrameDecoder::Next found.
struct DecodeEvent {
  enum class Kind {
    kFrame,     // `frame` holds the next frame
    kNeedMore,  // feed more bytes
    kBadFrame,  // a well-delimited frame with a malformed payload was skipped; the
                // stream continues. `id` and `type` are the skipped frame's header.
    kFatal,     // the stream cannot be resynchronised (declared payload too large);
                // every later call returns kFatal too
  };
  Kind kind = Kind::kNeedMore;
  Frame frame;
  uint32_t id = 0;
  uint8_t type = 0;
  std::string error;  // kBadFrame, kFatal: what was wrong
};

// Incremental decoder for a byte stream of frames. It buffers at most one frame plus
// whatever was fed since the last complete frame, so memory stays bounded as long as the
// caller pulls frames after each Feed.
class FrameDecoder {
 public:
  void Feed(std::string_view bytes);
  DecodeEvent Next();
  // Bytes fed but not yet consumed by a returned frame.
  size_t BufferedBytes() const { return buffer_.size() - start_; }

 private:
  std::string buffer_;
  size_t start_ = 0;
  std::string fatal_;
};

// Blocking helpers for simple peers and tests.
// Writes every byte (retrying EINTR and short writes).
Status WriteAll(int fd, std::string_view bytes);
Status WriteFrame(int fd, const Frame& frame);
// Reads exactly one frame from a blocking fd. timeout_ms < 0 waits forever. End of stream
// before a whole frame fails with ErrorCode::kCancelled; a malformed frame with
// ErrorCode::kProtocol (the stream stays aligned on the next frame unless the declared
// length was oversized).
Result<Frame> ReadFrame(int fd, int timeout_ms = -1);

}  // namespace tartarus::protocol

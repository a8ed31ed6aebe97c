// libFuzzer target for the guest protocol decoder (src/protocol/codec.h): the bytes a
// hostile guest agent (or host) could put on the stream. Checks that decoding never
// crashes, that what decodes re-encodes to exactly the bytes it came from (the encoding
// is canonical), and that feeding the same bytes in pieces gives the same frames.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/codec.h"

namespace {

using tartarus::protocol::DecodeEvent;
using tartarus::protocol::FrameDecoder;

[[noreturn]] void Check(bool ok) {
  (void)ok;
  __builtin_trap();
}
#define FUZZ_CHECK(cond)       \
  do {                         \
    if (!(cond)) Check(false); \
  } while (0)

uint32_t Le32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

// Every event from feeding `input` in pieces of `step` bytes, as (kind, encoded frame).
std::vector<std::pair<DecodeEvent::Kind, std::string>> Decode(std::string_view input, size_t step) {
  std::vector<std::pair<DecodeEvent::Kind, std::string>> events;
  FrameDecoder decoder;
  for (size_t pos = 0; pos < input.size(); pos += step) {
    decoder.Feed(input.substr(pos, step));
    for (;;) {
      DecodeEvent event = decoder.Next();
      if (event.kind == DecodeEvent::Kind::kNeedMore) break;
      std::string bytes;
      if (event.kind == DecodeEvent::Kind::kFrame) {
        auto encoded = tartarus::protocol::EncodeFrame(event.frame);
        FUZZ_CHECK(encoded.has_value());  // whatever decodes must be encodable
        bytes = std::move(*encoded);
      }
      events.emplace_back(event.kind, std::move(bytes));
      if (event.kind == DecodeEvent::Kind::kFatal) return events;
    }
  }
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto whole = Decode(input, input.size() ? input.size() : 1);

  // Canonical encoding: each decoded frame re-encodes to exactly its input bytes.
  size_t offset = 0;
  for (const auto& [kind, bytes] : whole) {
    if (kind == DecodeEvent::Kind::kFatal) break;
    FUZZ_CHECK(offset + 9 <= input.size());
    size_t length = 9 + static_cast<size_t>(Le32(input.data() + offset));
    FUZZ_CHECK(offset + length <= input.size());
    if (kind == DecodeEvent::Kind::kFrame) FUZZ_CHECK(input.substr(offset, length) == bytes);
    offset += length;
  }

  // Incremental feeding finds the same events.
  size_t step = size ? (data[0] % 13) + 1 : 1;
  FUZZ_CHECK(Decode(input, step) == whole);
  return 0;
}

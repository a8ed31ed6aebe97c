// tartarus CLI, Olympus streams: decoding the newline-delimited JSON events of the logs and
// exec endpoints ({"event":"stdout","data":"..."} ... {"event":"end",...}) from HTTP chunks
// that split lines anywhere. The bytes come from a server: bounded, and never trusted.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus::cli {

// Bound on one event line (base64 output chunks are far smaller; this stops a runaway).
inline constexpr size_t kMaxEventLineBytes = 16 << 20;

struct StreamEvent {
  enum class Kind { kStdout, kStderr, kEnd, kStarted, kOther };
  Kind kind = Kind::kOther;
  std::string name;              // the "event" field as sent (for kOther: what we skipped)
  std::string data;              // output bytes, from "data" or decoded from "data_b64"
  std::string state;             // end: the sandbox's state ("exited", "failed", ...)
  std::optional<int> exit_code;  // end: null when there is none (killed, failed, lost)
  std::string error;             // end: why it failed
  std::string exec_id;           // started (an exec with stdin): where its stdin goes
};

// Parses one line (without its newline) into an event.
Result<StreamEvent> ParseStreamEvent(std::string_view line);

// Standard base64 (RFC 4648, with padding; whitespace is not allowed).
Result<std::string> DecodeBase64(std::string_view text);

// Feeds chunks in, calls on_event for every complete line. After an error (malformed
// event, line over the bound) the decoder stays failed.
class EventDecoder {
 public:
  using EventFn = std::function<void(const StreamEvent&)>;
  explicit EventDecoder(EventFn on_event) : on_event_(std::move(on_event)) {}

  Status Feed(std::string_view chunk);
  // At the end of the stream: a final line without '\n' still counts.
  Status Finish();
  bool saw_end() const { return end_.has_value(); }
  const std::optional<StreamEvent>& end() const { return end_; }

 private:
  Status Line(std::string_view line);

  EventFn on_event_;
  std::string pending_;
  std::optional<StreamEvent> end_;
  std::optional<Error> failed_;
};

}  // namespace tartarus::cli

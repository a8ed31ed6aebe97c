// tartarus CLI, Olympus streams: NDJSON event decoding and base64.
#include "cli/stream_events.h"

#include <array>
#include <nlohmann/json.hpp>

namespace tartarus::cli {
namespace {

Error BadEvent(std::string_view why) {
  return Error{ErrorCode::kProtocol, "malformed stream event from the server: " + std::string(why)};
}

// Returns the string field, "" when absent or null; an error when it has another type.
Result<std::string> OptionalString(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string();
  if (!it->is_string()) return Fail(BadEvent(std::string(key) + " is not a string"));
  return it->get<std::string>();
}

}  // namespace

Result<std::string> DecodeBase64(std::string_view text) {
  static constexpr std::array<int8_t, 256> kValues = [] {
    std::array<int8_t, 256> values{};
    values.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) values[static_cast<unsigned char>(alphabet[i])] = i;
    return values;
  }();
  if (text.size() % 4 != 0) {
    return Fail(ErrorCode::kInvalidArgument, "base64 length is not a multiple of 4");
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int padding = 0;
    uint32_t group = 0;
    for (size_t j = 0; j < 4; ++j) {
      unsigned char c = static_cast<unsigned char>(text[i + j]);
      if (c == '=' && last && j >= 2) {
        ++padding;
        group <<= 6;
        continue;
      }
      if (padding > 0 || kValues[c] < 0) {
        return Fail(ErrorCode::kInvalidArgument,
                    "invalid base64 character at offset " + std::to_string(i + j));
      }
      group = (group << 6) | static_cast<uint32_t>(kValues[c]);
    }
    out.push_back(static_cast<char>((group >> 16) & 0xff));
    if (padding < 2) out.push_back(static_cast<char>((group >> 8) & 0xff));
    if (padding < 1) out.push_back(static_cast<char>(group & 0xff));
  }
  return out;
}

Result<StreamEvent> ParseStreamEvent(std::string_view line) {
  nlohmann::json object = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return Fail(BadEvent("not JSON"));
  if (!object.is_object()) return Fail(BadEvent("not a JSON object"));
  StreamEvent event;
  event.name = TRY(OptionalString(object, "event"));
  if (event.name.empty()) return Fail(BadEvent("no \"event\" field"));
  if (event.name == "stdout") {
    event.kind = StreamEvent::Kind::kStdout;
  } else if (event.name == "stderr") {
    event.kind = StreamEvent::Kind::kStderr;
  } else if (event.name == "end") {
    event.kind = StreamEvent::Kind::kEnd;
  } else if (event.name == "started") {
    event.kind = StreamEvent::Kind::kStarted;
    event.exec_id = TRY(OptionalString(object, "exec_id"));
    if (event.exec_id.empty() || event.exec_id.size() > 64) {
      return Fail(BadEvent("started: exec_id is missing or longer than 64 characters"));
    }
    return event;
  } else {
    return event;  // a newer server's event: skipped, not an error
  }
  event.data = TRY(OptionalString(object, "data"));
  std::string b64 = TRY(OptionalString(object, "data_b64"));
  if (!b64.empty()) {
    auto bytes = DecodeBase64(b64);
    if (!bytes) return Fail(BadEvent("data_b64: " + bytes.error().message));
    event.data += *bytes;
  }
  event.state = TRY(OptionalString(object, "state"));
  event.error = TRY(OptionalString(object, "error"));
  if (auto it = object.find("exit_code"); it != object.end() && !it->is_null()) {
    if (!it->is_number_integer()) return Fail(BadEvent("exit_code is not an integer"));
    int64_t code = it->get<int64_t>();
    if (code < 0 || code > 255) return Fail(BadEvent("exit_code out of range 0-255"));
    event.exit_code = static_cast<int>(code);
  }
  return event;
}

Status EventDecoder::Feed(std::string_view chunk) {
  if (failed_) return Fail(*failed_);
  while (!chunk.empty()) {
    size_t newline = chunk.find('\n');
    if (newline == std::string_view::npos) {
      if (pending_.size() + chunk.size() > kMaxEventLineBytes) {
        failed_ = BadEvent("an event line is longer than 16 MiB");
        return Fail(*failed_);
      }
      pending_.append(chunk);
      return Ok();
    }
    if (pending_.size() + newline > kMaxEventLineBytes) {
      failed_ = BadEvent("an event line is longer than 16 MiB");
      return Fail(*failed_);
    }
    Status status;
    if (pending_.empty()) {
      status = Line(chunk.substr(0, newline));
    } else {
      pending_.append(chunk.substr(0, newline));
      std::string line = std::move(pending_);
      pending_.clear();
      status = Line(line);
    }
    if (!status) {
      failed_ = status.error();
      return status;
    }
    chunk.remove_prefix(newline + 1);
  }
  return Ok();
}

Status EventDecoder::Finish() {
  if (failed_) return Fail(*failed_);
  if (pending_.empty()) return Ok();
  std::string line = std::move(pending_);
  pending_.clear();
  Status status = Line(line);
  if (!status) failed_ = status.error();
  return status;
}

Status EventDecoder::Line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t") == std::string_view::npos) return Ok();  // keep-alive
  if (end_) return Fail(BadEvent("an event after the end event"));
  StreamEvent event = TRY(ParseStreamEvent(line));
  if (event.kind == StreamEvent::Kind::kEnd) end_ = event;
  if (on_event_) on_event_(event);
  return Ok();
}

}  // namespace tartarus::cli

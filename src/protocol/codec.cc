// The guest protocol codec (see codec.h). One field list per message (VisitFields) drives
// both the encoder and the decoder, so the two cannot drift apart.
#include "protocol/codec.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <type_traits>
#include <utility>

namespace tartarus::protocol {
namespace {

constexpr size_t kHostToAgentTypes = 14;  // Hello .. Shutdown, wire types 1..14
constexpr uint8_t kFirstAgentType = 64;   // Ready .. Error, wire types 64..74

static_assert(std::variant_size_v<Message> == 25);
static_assert(std::is_same_v<std::variant_alternative_t<13, Message>, Shutdown>);
static_assert(std::is_same_v<std::variant_alternative_t<14, Message>, Ready>);
static_assert(std::is_same_v<std::variant_alternative_t<24, Message>, ErrorReply>);

constexpr uint8_t TypeForIndex(size_t index) {
  return index < kHostToAgentTypes
             ? static_cast<uint8_t>(index + 1)
             : static_cast<uint8_t>(index - kHostToAgentTypes + kFirstAgentType);
}
static_assert(TypeForIndex(13) == static_cast<uint8_t>(MessageType::kShutdown));
static_assert(TypeForIndex(24) == static_cast<uint8_t>(MessageType::kError));

// Variant index for a wire type, or -1 when the type is unknown.
int IndexForType(uint8_t type) {
  if (type >= 1 && type <= kHostToAgentTypes) return type - 1;
  if (type >= kFirstAgentType && type < kFirstAgentType + (25 - kHostToAgentTypes)) {
    return static_cast<int>(type - kFirstAgentType + kHostToAgentTypes);
  }
  return -1;
}

bool ValidEnum(Stream value) { return value == Stream::kStdout || value == Stream::kStderr; }
bool ValidEnum(FileType value) { return static_cast<uint8_t>(value) <= 3; }
bool ValidEnum(ErrorKind value) {
  auto raw = static_cast<uint32_t>(value);
  return raw >= 1 && raw <= 9;
}

// The field list of every message, in wire order. `c(x)` is a bounded string, integer,
// bool, enum or list; `c.Bytes(x)` is a data chunk bounded only by the payload size.
template <class C, class M>
void VisitFields(C& c, M& m) {
  using T = std::remove_const_t<M>;
  if constexpr (std::is_same_v<T, Hello>) {
    c(m.min_version), c(m.max_version);
  } else if constexpr (std::is_same_v<T, ExecStart>) {
    c(m.argv), c(m.env), c(m.cwd), c(m.user), c(m.stdin_pipe), c(m.timeout_ms);
  } else if constexpr (std::is_same_v<T, StdinData> || std::is_same_v<T, FileWriteData> ||
                       std::is_same_v<T, FileData>) {
    c.Bytes(m.data);
  } else if constexpr (std::is_same_v<T, Signal>) {
    c(m.signo);
  } else if constexpr (std::is_same_v<T, FileWriteOpen>) {
    c(m.path), c(m.mode), c(m.make_parents);
  } else if constexpr (std::is_same_v<T, FileRead> || std::is_same_v<T, Stat> ||
                       std::is_same_v<T, List>) {
    c(m.path);
  } else if constexpr (std::is_same_v<T, Mkdir>) {
    c(m.path), c(m.mode), c(m.make_parents);
  } else if constexpr (std::is_same_v<T, Remove>) {
    c(m.path), c(m.recursive);
  } else if constexpr (std::is_same_v<T, Ready>) {
    c(m.version), c(m.agent_version);
  } else if constexpr (std::is_same_v<T, ExecStarted>) {
    c(m.pid);
  } else if constexpr (std::is_same_v<T, Output>) {
    c(m.stream), c.Bytes(m.data);
  } else if constexpr (std::is_same_v<T, ExecExit>) {
    c(m.exit_code), c(m.signal), c(m.timed_out);
  } else if constexpr (std::is_same_v<T, StdinAck>) {
    c(m.bytes);
  } else if constexpr (std::is_same_v<T, StatResult>) {
    c(m.type), c(m.mode), c(m.size), c(m.mtime_s);
  } else if constexpr (std::is_same_v<T, DirEntry>) {
    c(m.name), c(m.type), c(m.mode), c(m.size);
  } else if constexpr (std::is_same_v<T, ListChunk>) {
    c(m.entries), c(m.last);
  } else if constexpr (std::is_same_v<T, ErrorReply>) {
    c(m.kind), c(m.message);
  } else if constexpr (std::is_empty_v<T>) {
    (void)c, (void)m;  // StdinClose, FileWriteClose, Shutdown, FileEnd, Ok
  } else {
    static_assert(std::is_void_v<T>, "message without a field list");  // never true
  }
}

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}

  void operator()(uint8_t v) { Raw(&v, 1); }
  void operator()(bool v) { (*this)(static_cast<uint8_t>(v ? 1 : 0)); }
  void operator()(uint32_t v) { Le(v); }
  void operator()(int32_t v) { Le(static_cast<uint32_t>(v)); }
  void operator()(uint64_t v) { Le(v); }
  void operator()(int64_t v) { Le(static_cast<uint64_t>(v)); }
  template <class E>
  requires std::is_enum_v<E>
  void operator()(E v) {
    if (!ValidEnum(v)) Fail("invalid enum value " + std::to_string(static_cast<uint64_t>(v)));
    (*this)(static_cast<std::underlying_type_t<E>>(v));
  }
  void operator()(const std::string& s) {
    if (s.size() > kMaxStringBytes) {
      Fail("string of " + std::to_string(s.size()) + " bytes exceeds the limit of " +
           std::to_string(kMaxStringBytes));
      return;
    }
    Bytes(s);
  }
  void Bytes(const std::string& s) {
    if (s.size() > kMaxPayloadBytes) {
      Fail("data of " + std::to_string(s.size()) + " bytes exceeds the payload limit");
      return;
    }
    Le(static_cast<uint32_t>(s.size()));
    Raw(s.data(), s.size());
  }
  template <class T>
  void operator()(const std::vector<T>& items) {
    if (items.size() > kMaxListItems) {
      Fail("list of " + std::to_string(items.size()) + " items exceeds the limit of " +
           std::to_string(kMaxListItems));
      return;
    }
    Le(static_cast<uint32_t>(items.size()));
    for (const T& item : items) {
      if constexpr (std::is_same_v<T, std::string>) {
        (*this)(item);
      } else {
        VisitFields(*this, item);
      }
    }
  }

  const std::string& error() const { return error_; }

 private:
  template <class U>
  void Le(U v) {
    unsigned char bytes[sizeof(U)];
    for (size_t i = 0; i < sizeof(U); ++i) bytes[i] = static_cast<unsigned char>(v >> (8 * i));
    Raw(bytes, sizeof(U));
  }
  void Raw(const void* data, size_t size) {
    if (!error_.empty()) return;
    out_.append(static_cast<const char*>(data), size);
  }
  void Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }

  std::string& out_;
  std::string error_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  void operator()(uint8_t& v) {
    unsigned char b = 0;
    if (Raw(&b, 1)) v = b;
  }
  void operator()(bool& v) {
    uint8_t raw = 0;
    (*this)(raw);
    if (raw > 1) Fail("bool value " + std::to_string(raw) + " is not 0 or 1");
    v = raw == 1;
  }
  void operator()(uint32_t& v) { Le(v); }
  void operator()(int32_t& v) {
    uint32_t raw = 0;
    Le(raw);
    v = static_cast<int32_t>(raw);
  }
  void operator()(uint64_t& v) { Le(v); }
  void operator()(int64_t& v) {
    uint64_t raw = 0;
    Le(raw);
    v = static_cast<int64_t>(raw);
  }
  template <class E>
  requires std::is_enum_v<E>
  void operator()(E& v) {
    std::underlying_type_t<E> raw{};
    (*this)(raw);
    v = static_cast<E>(raw);
    if (ok() && !ValidEnum(v)) Fail("invalid enum value " + std::to_string(raw));
  }
  void operator()(std::string& s) { Bounded(s, kMaxStringBytes, "string"); }
  void Bytes(std::string& s) { Bounded(s, kMaxPayloadBytes, "data"); }
  template <class T>
  void operator()(std::vector<T>& items) {
    uint32_t count = 0;
    Le(count);
    if (!ok()) return;
    if (count > kMaxListItems) {
      Fail("list of " + std::to_string(count) + " items exceeds the limit of " +
           std::to_string(kMaxListItems));
      return;
    }
    // Every item takes at least 4 bytes on the wire: a lying count cannot make us
    // reserve more than the payload could hold.
    if (count > Remaining() / 4) {
      Fail("list count " + std::to_string(count) + " exceeds the payload");
      return;
    }
    items.reserve(count);
    for (uint32_t i = 0; i < count && ok(); ++i) {
      T item{};
      if constexpr (std::is_same_v<T, std::string>) {
        (*this)(item);
      } else {
        VisitFields(*this, item);
      }
      items.push_back(std::move(item));
    }
  }

  bool ok() const { return error_.empty(); }
  size_t Remaining() const { return in_.size() - pos_; }
  const std::string& error() const { return error_; }
  void Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }

 private:
  template <class U>
  void Le(U& v) {
    unsigned char bytes[sizeof(U)];
    if (!Raw(bytes, sizeof(U))) return;
    U result = 0;
    for (size_t i = 0; i < sizeof(U); ++i) result |= static_cast<U>(bytes[i]) << (8 * i);
    v = result;
  }
  bool Raw(void* data, size_t size) {
    if (!ok()) return false;
    if (Remaining() < size) {
      Fail("truncated payload");
      return false;
    }
    std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
    return true;
  }
  void Bounded(std::string& s, uint32_t limit, const char* what) {
    uint32_t size = 0;
    Le(size);
    if (!ok()) return;
    if (size > limit) {
      Fail(std::string(what) + " of " + std::to_string(size) + " bytes exceeds the limit of " +
           std::to_string(limit));
      return;
    }
    if (size > Remaining()) {
      Fail("truncated payload");
      return;
    }
    s.assign(in_.data() + pos_, size);
    pos_ += size;
  }

  std::string_view in_;
  size_t pos_ = 0;
  std::string error_;
};

template <size_t I>
Result<Message> DecodeAs(std::string_view payload) {
  using T = std::variant_alternative_t<I, Message>;
  T message{};
  Reader reader(payload);
  VisitFields(reader, message);
  if (reader.ok() && reader.Remaining() != 0) {
    reader.Fail(std::to_string(reader.Remaining()) + " trailing bytes");
  }
  if (!reader.ok()) {
    return tartarus::Fail(ErrorCode::kProtocol,
                          std::string(MessageTypeName(static_cast<MessageType>(TypeForIndex(I)))) +
                              ": " + reader.error());
  }
  return Message(std::in_place_index<I>, std::move(message));
}

template <size_t... I>
Result<Message> DecodeIndex(size_t index, std::string_view payload, std::index_sequence<I...>) {
  using Decoder = Result<Message> (*)(std::string_view);
  static constexpr Decoder kDecoders[] = {&DecodeAs<I>...};
  return kDecoders[index](payload);
}

uint32_t ReadLe32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace

std::string_view MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "Hello";
    case MessageType::kExecStart:
      return "ExecStart";
    case MessageType::kStdinData:
      return "StdinData";
    case MessageType::kStdinClose:
      return "StdinClose";
    case MessageType::kSignal:
      return "Signal";
    case MessageType::kFileWriteOpen:
      return "FileWriteOpen";
    case MessageType::kFileWriteData:
      return "FileWriteData";
    case MessageType::kFileWriteClose:
      return "FileWriteClose";
    case MessageType::kFileRead:
      return "FileRead";
    case MessageType::kStat:
      return "Stat";
    case MessageType::kList:
      return "List";
    case MessageType::kMkdir:
      return "Mkdir";
    case MessageType::kRemove:
      return "Remove";
    case MessageType::kShutdown:
      return "Shutdown";
    case MessageType::kReady:
      return "Ready";
    case MessageType::kExecStarted:
      return "ExecStarted";
    case MessageType::kOutput:
      return "Output";
    case MessageType::kExecExit:
      return "ExecExit";
    case MessageType::kStdinAck:
      return "StdinAck";
    case MessageType::kFileData:
      return "FileData";
    case MessageType::kFileEnd:
      return "FileEnd";
    case MessageType::kStatResult:
      return "StatResult";
    case MessageType::kListChunk:
      return "ListChunk";
    case MessageType::kOk:
      return "Ok";
    case MessageType::kError:
      return "Error";
  }
  return "Unknown";
}

std::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kBadFrame:
      return "bad_frame";
    case ErrorKind::kVersionMismatch:
      return "version_mismatch";
    case ErrorKind::kNotFound:
      return "not_found";
    case ErrorKind::kPermissionDenied:
      return "permission_denied";
    case ErrorKind::kInvalidArgument:
      return "invalid_argument";
    case ErrorKind::kResourceExhausted:
      return "resource_exhausted";
    case ErrorKind::kIo:
      return "io";
    case ErrorKind::kUnknownId:
      return "unknown_id";
    case ErrorKind::kInternal:
      return "internal";
  }
  return "unknown";
}

MessageType TypeOf(const Message& message) {
  return static_cast<MessageType>(TypeForIndex(message.index()));
}

Status AppendFrame(const Frame& frame, std::string& out) {
  const size_t start = out.size();
  out.append(kFrameHeaderBytes, '\0');
  Writer writer(out);
  std::visit([&](const auto& m) { VisitFields(writer, m); }, frame.message);
  const size_t payload = out.size() - start - kFrameHeaderBytes;
  std::string error = writer.error();
  if (error.empty() && payload > kMaxPayloadBytes) {
    error = "payload of " + std::to_string(payload) + " bytes exceeds the limit of " +
            std::to_string(kMaxPayloadBytes);
  }
  if (!error.empty()) {
    out.resize(start);
    return tartarus::Fail(
        ErrorCode::kInvalidArgument,
        "encoding " + std::string(MessageTypeName(TypeOf(frame.message))) + ": " + error);
  }
  char* header = out.data() + start;
  for (int i = 0; i < 4; ++i) header[i] = static_cast<char>(payload >> (8 * i));
  header[4] = static_cast<char>(TypeForIndex(frame.message.index()));
  for (int i = 0; i < 4; ++i) header[5 + i] = static_cast<char>(frame.id >> (8 * i));
  return {};
}

Result<std::string> EncodeFrame(const Frame& frame) {
  std::string out;
  TRY(AppendFrame(frame, out));
  return out;
}

Result<Message> DecodePayload(uint8_t type, std::string_view payload) {
  if (payload.size() > kMaxPayloadBytes) {
    return tartarus::Fail(ErrorCode::kProtocol, "payload of " + std::to_string(payload.size()) +
                                                    " bytes exceeds the limit");
  }
  int index = IndexForType(type);
  if (index < 0) {
    return tartarus::Fail(ErrorCode::kProtocol,
                          "frame type " + std::to_string(type) + " is unknown");
  }
  return DecodeIndex(static_cast<size_t>(index), payload,
                     std::make_index_sequence<std::variant_size_v<Message>>());
}

void FrameDecoder::Feed(std::string_view bytes) {
  if (!fatal_.empty()) return;  // the stream is dead; do not grow without bound
  // Drop consumed bytes once they dominate, keeping appends amortised O(1).
  if (start_ > 0 && start_ >= buffer_.size() / 2) {
    buffer_.erase(0, start_);
    start_ = 0;
  }
  buffer_.append(bytes);
}

DecodeEvent FrameDecoder::Next() {
  DecodeEvent event;
  if (!fatal_.empty()) {
    event.kind = DecodeEvent::Kind::kFatal;
    event.error = fatal_;
    return event;
  }
  if (BufferedBytes() < kFrameHeaderBytes) return event;  // kNeedMore
  const char* header = buffer_.data() + start_;
  const uint32_t length = ReadLe32(header);
  const auto type = static_cast<uint8_t>(header[4]);
  const uint32_t id = ReadLe32(header + 5);
  if (length > kMaxPayloadBytes) {
    fatal_ = "frame declares a payload of " + std::to_string(length) +
             " bytes, over the limit of " + std::to_string(kMaxPayloadBytes);
    buffer_.clear();
    start_ = 0;
    event.kind = DecodeEvent::Kind::kFatal;
    event.error = fatal_;
    return event;
  }
  if (BufferedBytes() < kFrameHeaderBytes + length) return event;  // kNeedMore
  std::string_view payload(buffer_.data() + start_ + kFrameHeaderBytes, length);
  Result<Message> message = DecodePayload(type, payload);
  start_ += kFrameHeaderBytes + length;
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  if (!message) {
    event.kind = DecodeEvent::Kind::kBadFrame;
    event.id = id;
    event.type = type;
    event.error = std::move(message.error().message);
    return event;
  }
  event.kind = DecodeEvent::Kind::kFrame;
  event.frame.id = id;
  event.frame.message = std::move(*message);
  return event;
}

Status WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      return FailErrno("write");
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Status WriteFrame(int fd, const Frame& frame) {
  std::string bytes = TRY(EncodeFrame(frame));
  return WriteAll(fd, bytes);
}

namespace {

// Reads exactly `size` bytes before `deadline` (or forever when timeout_ms < 0).
Status ReadExact(int fd, char* data, size_t size, int timeout_ms,
                 std::chrono::steady_clock::time_point deadline) {
  size_t done = 0;
  while (done < size) {
    if (timeout_ms >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      if (left < 0) left = 0;
      pollfd p{fd, POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(left));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return FailErrno("poll");
      if (r == 0) return tartarus::Fail(ErrorCode::kTimeout, "timed out reading a frame");
    }
    ssize_t n = ::read(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return FailErrno("read");
    }
    if (n == 0) return tartarus::Fail(ErrorCode::kCancelled, "end of stream");
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

Result<Frame> ReadFrame(int fd, int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char header[kFrameHeaderBytes];
  TRY(ReadExact(fd, header, sizeof header, timeout_ms, deadline));
  const uint32_t length = ReadLe32(header);
  if (length > kMaxPayloadBytes) {
    return tartarus::Fail(ErrorCode::kProtocol,
                          "frame declares a payload of " + std::to_string(length) + " bytes");
  }
  std::string payload(length, '\0');
  TRY(ReadExact(fd, payload.data(), length, timeout_ms, deadline));
  Message message = TRY(DecodePayload(static_cast<uint8_t>(header[4]), payload));
  return Frame{ReadLe32(header + 5), std::move(message)};
}

}  // namespace tartarus::protocol

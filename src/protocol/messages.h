// The guest protocol: the one framed, versioned, length-prefixed protocol that the host
// speaks to the guest agent (PID 1 in every sandbox) over a byte stream: the agent's
// stdio for container and gVisor sandboxes, a socket or vsock for microVMs.
// docs/protocol.md describes the wire format; this header is its definition.
//
// Every frame:  u32 payload_length (little endian) | u8 type | u32 id | payload
// `id` names the request a frame belongs to (an exec, a file transfer); 0 is the
// connection itself. Payload fields are encoded in declaration order:
//   integers little endian; string/bytes = u32 length + data; list = u32 count + items.
// Decoding bounds every length and count and rejects trailing bytes.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace tartarus::protocol {

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr uint32_t kFrameHeaderBytes = 9;
inline constexpr uint32_t kMaxPayloadBytes = 1 << 20;  // 1 MiB
inline constexpr uint32_t kMaxChunkBytes = 256 << 10;  // data chunks the sender emits
inline constexpr uint32_t kMaxStringBytes = 64 << 10;  // any path, arg, env entry
inline constexpr uint32_t kMaxListItems = 4096;        // argv, env, list entries per frame
inline constexpr uint32_t kMaxConcurrentExecs = 256;
inline constexpr uint32_t kMaxOpenFiles = 64;
// Stdin flow control: the host may have at most this many stdin bytes per exec that the
// agent has not yet acknowledged with StdinAck.
inline constexpr uint32_t kStdinWindowBytes = 1 << 20;

enum class MessageType : uint8_t {
  // host -> agent
  kHello = 1,
  kExecStart = 2,
  kStdinData = 3,
  kStdinClose = 4,
  kSignal = 5,
  kFileWriteOpen = 6,
  kFileWriteData = 7,
  kFileWriteClose = 8,
  kFileRead = 9,
  kStat = 10,
  kList = 11,
  kMkdir = 12,
  kRemove = 13,
  kShutdown = 14,
  // agent -> host
  kReady = 64,
  kExecStarted = 65,
  kOutput = 66,
  kExecExit = 67,
  kStdinAck = 68,
  kFileData = 69,
  kFileEnd = 70,
  kStatResult = 71,
  kListChunk = 72,
  kOk = 73,
  kError = 74,
};

// ---- host -> agent ----------------------------------------------------------------

// id 0. The agent answers Ready (id 0) or Error (id 0, kVersionMismatch) and closes.
struct Hello {
  uint32_t min_version = kProtocolVersion;
  uint32_t max_version = kProtocolVersion;
};

// id: a fresh exec id chosen by the host (non-zero, unique on this connection).
// Answer: ExecStarted, then Output frames, then exactly one ExecExit; or Error.
// A command that cannot be executed still starts: it prints why on stderr and exits
// 127 (not found) or 126 (not executable), as a shell does.
struct ExecStart {
  std::vector<std::string> argv;  // argv[0] looked up in PATH from env when it has no '/'
  std::vector<std::string> env;   // "KEY=VALUE"; the process gets exactly these
  std::string cwd;                // empty: "/"
  std::string user;               // empty: the agent's user; "name", "uid" or "uid:gid"
  bool stdin_pipe = false;        // false: stdin is /dev/null
  uint64_t timeout_ms = 0;        // 0: none. On expiry the process group gets SIGKILL
};

struct StdinData {  // id: exec id
  std::string data;
};
struct StdinClose {};  // id: exec id
struct Signal {        // id: exec id; delivered to the exec's process group
  int32_t signo = 0;
};

// id: fresh transfer id. Creates or truncates `path`, then FileWriteData chunks, then
// FileWriteClose; the agent answers Ok after close (or Error at any point, which ends it).
struct FileWriteOpen {
  std::string path;
  uint32_t mode = 0644;
  bool make_parents = false;
};
struct FileWriteData {
  std::string data;
};
struct FileWriteClose {};

// id: fresh transfer id. Answer: FileData chunks then FileEnd, or Error.
struct FileRead {
  std::string path;
};

struct Stat {  // answer: StatResult or Error
  std::string path;
};
struct List {  // answer: ListChunk frames, the last one with `last` set; or Error
  std::string path;
};
struct Mkdir {  // answer: Ok or Error
  std::string path;
  uint32_t mode = 0755;
  bool make_parents = false;
};
struct Remove {  // answer: Ok or Error
  std::string path;
  bool recursive = false;
};
// id 0. The agent kills every process it started (SIGKILL to each group), answers Ok,
// and exits.
struct Shutdown {};

// ---- agent -> host ----------------------------------------------------------------

struct Ready {
  uint32_t version = kProtocolVersion;
  std::string agent_version;
};
struct ExecStarted {
  int32_t pid = 0;  // as seen inside the sandbox
};
enum class Stream : uint8_t { kStdout = 1, kStderr = 2 };
struct Output {
  Stream stream = Stream::kStdout;
  std::string data;
};
// Sent after both output streams reached end of file (or the process group is gone).
struct ExecExit {
  int32_t exit_code = 0;  // valid when signal == 0
  int32_t signal = 0;     // the signal that killed it, or 0
  bool timed_out = false;
};
struct StdinAck {  // the agent consumed this many more stdin bytes
  uint32_t bytes = 0;
};
struct FileData {
  std::string data;
};
struct FileEnd {};
enum class FileType : uint8_t { kOther = 0, kRegular = 1, kDirectory = 2, kSymlink = 3 };
struct StatResult {
  FileType type = FileType::kOther;
  uint32_t mode = 0;  // permission bits
  uint64_t size = 0;
  int64_t mtime_s = 0;
};
struct DirEntry {
  std::string name;
  FileType type = FileType::kOther;
  uint32_t mode = 0;
  uint64_t size = 0;
};
struct ListChunk {
  std::vector<DirEntry> entries;
  bool last = false;
};
struct Ok {};

enum class ErrorKind : uint32_t {
  kBadFrame = 1,         // malformed, oversized or unknown frame (the frame is dropped)
  kVersionMismatch = 2,  // Hello with no common version; the agent closes
  kNotFound = 3,
  kPermissionDenied = 4,
  kInvalidArgument = 5,
  kResourceExhausted = 6,  // too many execs or transfers
  kIo = 7,
  kUnknownId = 8,  // a frame for an exec or transfer the agent does not know
  kInternal = 9,
};
struct ErrorReply {
  ErrorKind kind = ErrorKind::kInternal;
  std::string message;
};

using Message = std::variant<Hello, ExecStart, StdinData, StdinClose, Signal, FileWriteOpen,
                             FileWriteData, FileWriteClose, FileRead, Stat, List, Mkdir, Remove,
                             Shutdown, Ready, ExecStarted, Output, ExecExit, StdinAck, FileData,
                             FileEnd, StatResult, ListChunk, Ok, ErrorReply>;

struct Frame {
  uint32_t id = 0;
  Message message;
};

}  // namespace tartarus::protocol

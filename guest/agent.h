// The guest agent (tartarus-agent): PID 1 inside every Tartarus sandbox. It serves the
// guest protocol (src/protocol/messages.h) to the host over one byte stream: it runs
// commands (exec), streams their stdin/stdout/stderr, delivers signals, enforces timeouts,
// moves files and reaps every process in the sandbox.
//
// One thread, one poll loop, non-blocking I/O everywhere. Output toward the host goes
// through a bounded queue: when it is full the agent stops reading child pipes and files
// (backpressure reaches the command), it never drops bytes.
#pragma once

#include <dirent.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/unique_fd.h"
#include "protocol/codec.h"
#include "protocol/messages.h"

namespace tartarus::guest {

// Data producers (child pipes, file reads, listings) pause while this much output waits.
inline constexpr size_t kOutputQueueLimitBytes = 4 << 20;
// Host input is not read while this much output waits (a host that never reads must not
// make the agent grow without bound).
inline constexpr size_t kHostInputPauseBytes = 16 << 20;
// After a command's main process exits, how long to wait for the rest of its process
// group (already sent SIGKILL) to release the output pipes before giving up on them.
inline constexpr std::chrono::milliseconds kDrainGrace{200};

class Agent {
 public:
  enum class End {
    kHostClosed,       // end of the host stream, or it broke
    kShutdown,         // the host sent Shutdown
    kVersionMismatch,  // Hello had no common version
    kFatal,            // the host stream cannot be decoded any further
  };

  // `agent_version` goes into Ready. Requires SIGCHLD to be blocked in the caller.
  explicit Agent(std::string agent_version);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Serves one host connection (in_fd may equal out_fd for a socket). Both fds are made
  // non-blocking. Every process started for this connection is killed before returning.
  End Serve(int in_fd, int out_fd);

 private:
  using Clock = std::chrono::steady_clock;

  struct Exec {
    uint32_t id = 0;
    pid_t pid = -1;  // also the process group id
    UniqueFd stdout_fd, stderr_fd;
    UniqueFd stdin_fd;  // write end; invalid when absent or closed
    bool has_stdin_pipe = false;
    bool stdin_close_requested = false;
    std::deque<std::string> stdin_queue;
    size_t stdin_offset = 0;         // into stdin_queue.front()
    size_t stdin_pending_bytes = 0;  // queued, not yet acknowledged
    bool exited = false;
    int wait_status = 0;
    Clock::time_point exit_time;
    std::optional<Clock::time_point> deadline;
    bool timed_out = false;
  };

  struct Transfer {
    enum class Kind { kWrite, kRead, kList } kind = Kind::kWrite;
    std::string path;
    UniqueFd fd;
    DIR* dir = nullptr;  // kList
    ~Transfer();
  };

  // Frames toward the host.
  void Send(uint32_t id, protocol::Message message);
  void SendError(uint32_t id, protocol::ErrorKind kind, std::string message);
  void SendError(uint32_t id, protocol::ErrorReply reply);
  // Writes queued output until the fd would block. False when the host is gone.
  bool FlushOutput();
  // Blocks up to `timeout` to get the queue out (before exiting).
  void FlushOutputFor(std::chrono::milliseconds timeout);
  bool OutputHasRoom() const { return out_bytes_ < kOutputQueueLimitBytes; }

  // Host input.
  bool ReadHost();
  void Dispatch(protocol::Frame& frame);
  void OnHello(uint32_t id, const protocol::Hello& hello);
  void OnExecStart(uint32_t id, protocol::ExecStart& start);
  void OnStdinData(uint32_t id, protocol::StdinData& data);
  void OnStdinClose(uint32_t id);
  void OnSignal(uint32_t id, const protocol::Signal& signal);
  void OnFileWriteOpen(uint32_t id, const protocol::FileWriteOpen& open);
  void OnFileWriteData(uint32_t id, const protocol::FileWriteData& data);
  void OnFileWriteClose(uint32_t id);
  void OnFileRead(uint32_t id, const protocol::FileRead& read);
  void OnStat(uint32_t id, const protocol::Stat& stat);
  void OnList(uint32_t id, const protocol::List& list);
  void OnMkdir(uint32_t id, const protocol::Mkdir& mkdir);
  void OnRemove(uint32_t id, const protocol::Remove& remove);
  // Checks a fresh request id; replies with an error and returns false when unusable.
  bool CheckNewId(uint32_t id);
  bool CheckNewTransfer(uint32_t id, const std::string& path);

  // Processes.
  void ReapChildren();
  // Reads one chunk from an exec's output pipe into an Output frame; closes the pipe at end
  // of file or error, and also when it is empty if `closing_when_empty`.
  void ReadPipe(Exec& exec, protocol::Stream stream, bool closing_when_empty);
  void WriteStdin(Exec& exec);
  void AckStdin(Exec& exec, size_t bytes);
  void CheckExecs(Clock::time_point now);
  void KillAll();

  // File reads and listings, one chunk per call while there is room.
  void PumpTransfers();
  void PumpRead(uint32_t id, Transfer& transfer);
  void PumpList(uint32_t id, Transfer& transfer);

  std::string agent_version_;
  UniqueFd signal_fd_;
  int in_fd_ = -1;
  int out_fd_ = -1;
  bool negotiated_ = false;
  std::optional<End> end_;
  protocol::FrameDecoder decoder_;

  std::deque<std::string> out_queue_;
  size_t out_offset_ = 0;  // into out_queue_.front()
  size_t out_bytes_ = 0;   // total unsent bytes

  std::map<uint32_t, std::unique_ptr<Exec>> execs_;
  std::unordered_map<pid_t, uint32_t> exec_by_pid_;
  std::map<uint32_t, std::unique_ptr<Transfer>> transfers_;
};

}  // namespace tartarus::guest

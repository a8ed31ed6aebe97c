// AgentClient: the host side of the guest protocol (messages.h). It talks to the guest
// agent (PID 1 in a sandbox) over a (read fd, write fd) byte stream handed over by a
// runtime backend, and is the one place that turns the protocol into calls: exec with
// streamed I/O, signals, files.
//
// Threads: one reader thread per client dispatches incoming frames by id to handlers;
// any number of caller threads may use the client at once (writes are serialised by a
// mutex). When the connection dies, every waiter wakes with an error; nothing hangs.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "protocol/codec.h"
#include "protocol/messages.h"

namespace tartarus::protocol {

class AgentClient;

// Called on the reader thread for each Output frame of an exec. It may block: that only
// slows the agent down (backpressure), nothing is dropped.
using OutputCallback = std::function<void(Stream stream, std::string_view data)>;

// A running command. Destroying the handle before the command exited kills it (SIGKILL).
// A handle must not outlive the AgentClient that started it.
class ExecHandle {
 public:
  ~ExecHandle();
  ExecHandle(const ExecHandle&) = delete;
  ExecHandle& operator=(const ExecHandle&) = delete;

  uint32_t id() const { return id_; }
  pid_t pid() const { return pid_; }  // inside the sandbox

  // Sends stdin bytes (any size), blocking while the agent's stdin window is full.
  // Fails once the command has exited or the connection died.
  Status WriteStdin(std::string_view data);
  Status CloseStdin();
  Status SendSignal(int signo);
  // Blocks until ExecExit; fails if the connection dies first.
  Result<ExecExit> Wait();
  // As Wait, but gives up after `timeout` (ErrorCode::kTimeout; the command keeps running).
  Result<ExecExit> WaitFor(std::chrono::milliseconds timeout);

 private:
  friend class AgentClient;
  struct State;
  ExecHandle(AgentClient* client, uint32_t id, std::shared_ptr<State> state)
      : client_(client), id_(id), state_(std::move(state)) {}

  AgentClient* client_;
  uint32_t id_;
  pid_t pid_ = 0;
  std::shared_ptr<State> state_;
};

class AgentClient {
 public:
  using Handler = std::function<void(const Frame&)>;
  using LostCallback = std::function<void(const Error&)>;

  struct Options {
    std::chrono::milliseconds handshake_timeout{10'000};
    // False: Connect returns once Hello is sent, so that the first requests travel with it
    // (the agent reads them after Hello, in order) and a sandbox start saves a round trip.
    // A refused, broken or late handshake then ends the connection with the error Connect
    // would have returned, and every pending request reports it. WaitReady() waits for it.
    bool wait_for_ready = true;
  };

  // Sends Hello and starts the reader thread, which does the Hello/Ready handshake; waits
  // for it unless options.wait_for_ready is false. Fails with a clear message on version
  // mismatch, end of stream, garbage or the timeout.
  static Result<std::unique_ptr<AgentClient>> Connect(UniqueFd from_agent, UniqueFd to_agent,
                                                      Options options);
  static Result<std::unique_ptr<AgentClient>> Connect(UniqueFd from_agent, UniqueFd to_agent) {
    return Connect(std::move(from_agent), std::move(to_agent), Options{});
  }

  // Closes the stream (the agent sees end of file and kills its processes) and joins the
  // reader. Waiters on other threads wake with an error.
  ~AgentClient();
  AgentClient(const AgentClient&) = delete;
  AgentClient& operator=(const AgentClient&) = delete;

  // Known once the handshake is done (Connect waited for it, or WaitReady() returned).
  const std::string& agent_version() const { return agent_version_; }
  uint32_t protocol_version() const { return protocol_version_; }
  // Returns once the agent answered Hello with Ready, or with the error that ended the
  // connection (a refused or timed-out handshake included).
  Status WaitReady();
  // False once the connection died (end of stream, broken stream, Close()).
  bool Connected() const;
  // The error that ended the connection, if it ended.
  std::optional<Error> ConnectionError() const;
  // Ends the connection now (wakes every waiter with an error).
  void Close();

  // ---- high level ----
  Result<std::unique_ptr<ExecHandle>> StartExec(const ExecStart& start, OutputCallback on_output);
  // Writes a whole file, streamed in kMaxChunkBytes chunks (any size).
  Status WriteFile(const std::string& path, uint32_t mode, std::string_view contents,
                   bool make_parents = false);
  // Same, reading the contents from `fd` until its end.
  Status WriteFileFromFd(const std::string& path, uint32_t mode, int fd, bool make_parents = false);
  // Streams a file to `on_data` (called on the reader thread, one chunk at a time).
  Status ReadFile(const std::string& path, const std::function<void(std::string_view)>& on_data);
  Status ReadFileToFd(const std::string& path, int fd);
  Result<std::string> ReadFileToString(const std::string& path, size_t max_bytes = 1ull << 30);
  Result<StatResult> Stat(const std::string& path);
  Result<std::vector<DirEntry>> List(const std::string& path);
  Status Mkdir(const std::string& path, uint32_t mode = 0755, bool make_parents = false);
  Status Remove(const std::string& path, bool recursive = false);
  // Asks the agent to kill everything and exit; waits for its Ok.
  Status Shutdown();

  // ---- low level (used by the per-sandbox supervisor to proxy other clients) ----
  // A fresh, non-zero request id unique on this connection.
  uint32_t AllocateId();
  // Encodes and writes one frame (thread-safe).
  Status Send(const Frame& frame);
  // Frames with this id go to `on_frame` (on the reader thread); `on_lost`, if set, runs
  // once if the connection dies while registered (at once if it is already dead).
  // Replaces any previous handler. Frames for ids without a handler are dropped.
  // Callbacks must not block for long, and must not Send() bulk data: the reader thread
  // is what keeps the agent's output, and so its input, flowing.
  void RegisterHandler(uint32_t id, Handler on_frame, LostCallback on_lost = nullptr);
  // After this returns, neither callback of the handler is running or will run again
  // (unless called from one of them, which is allowed).
  void UnregisterHandler(uint32_t id);
  // Runs once, on the reader thread (or the thread that called Close), when the
  // connection dies.
  void SetConnectionLostCallback(LostCallback callback);

 private:
  struct HandlerEntry {
    Handler on_frame;
    LostCallback on_lost;
  };

  AgentClient(UniqueFd from_agent, UniqueFd to_agent);
  Status SendHello();
  // Checks the agent's answer to Hello; on success records its version and sets ready_.
  Status OnHandshakeFrame(const Frame& frame);
  static Error HandshakeClosedError();
  Error HandshakeTimeoutError() const;
  void ReaderLoop();
  // Dispatches every complete frame in decoder_; false once the connection was marked lost.
  bool DispatchBuffered();
  void Dispatch(const Frame& frame);
  void MarkLost(Error error);
  Error LostError() const;

  // A simple request: register, send, collect frames until `done` says so.
  // `on_frame` returns true when the request is complete.
  Status Request(const Frame& request,
                 const std::function<Status(const Frame&, bool& done)>& on_frame);

  UniqueFd from_agent_;
  UniqueFd to_agent_;
  FrameDecoder decoder_;  // the reader thread's
  std::string agent_version_;
  uint32_t protocol_version_ = 0;
  std::chrono::milliseconds handshake_timeout_{0};
  std::chrono::steady_clock::time_point handshake_deadline_;

  std::mutex write_mutex_;
  std::atomic<uint32_t> next_id_{1};

  mutable std::mutex mutex_;  // guards everything below
  std::condition_variable dispatch_done_;
  std::unordered_map<uint32_t, std::shared_ptr<HandlerEntry>> handlers_;
  uint32_t dispatching_id_ = 0;  // id whose handler runs right now on the reader thread
  bool dispatching_ = false;
  bool notifying_lost_ = false;  // MarkLost is running the on_lost callbacks
  std::thread::id notifying_thread_;
  std::optional<Error> lost_;
  bool ready_ = false;  // the agent answered Hello with Ready
  std::condition_variable ready_changed_;
  LostCallback on_lost_;
  std::thread reader_;
  std::thread::id reader_id_;
  int wake_pipe_[2] = {-1, -1};  // written by Close() to stop the reader's poll
};

}  // namespace tartarus::protocol

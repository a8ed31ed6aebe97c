// Hecatoncheir (the node agent): asynchronous clients of a sandbox's control socket
// (control_server.h), on the node agent's asio io_context. They let the node agent stream
// any number of execs and feed any number of stdins without a thread each: a connection is
// a socket with a read loop (the codec's incremental FrameDecoder) and a write queue.
//
// Threads: everything runs on one io_context that ONE thread runs. Every method must be
// called on that thread, and every callback runs there; callbacks must not block.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/result.h"
#include "protocol/codec.h"
#include "protocol/messages.h"

namespace tartarus::node {

// One connection to a control socket, speaking the guest protocol: Hello first, then
// frames routed to handlers by request id.
class AsyncControlClient : public std::enable_shared_from_this<AsyncControlClient> {
 public:
  using FrameHandler = std::function<void(const protocol::Frame&)>;
  using LostHandler = std::function<void(const Error&)>;

  static std::shared_ptr<AsyncControlClient> Create(boost::asio::io_context& io);

  // Connects to `socket_path` and sends Hello; `on_ready` runs once Ready came back, or with
  // the error that ended the attempt (then the lost handler runs too). Frames sent before
  // Ready are queued behind Hello (the server reads them after it, in order).
  void Connect(const std::string& socket_path, std::function<void(Status)> on_ready,
               std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10));

  // A fresh, non-zero request id on this connection.
  uint32_t AllocateId() { return next_id_++; }
  // Frames with this id go to `handler`; frames for ids without one are dropped.
  void RegisterHandler(uint32_t id, FrameHandler handler);
  void UnregisterHandler(uint32_t id);
  // Runs once when the connection ends: end of stream, a broken stream, or Close().
  void OnLost(LostHandler handler);

  // Queues one frame. Fails, queueing nothing, when the frame breaks a protocol bound or
  // the connection has ended.
  Status Send(const protocol::Frame& frame);
  // Ends the connection: pending frames are dropped, the lost handler runs with `why`, and
  // every handler is forgotten (which breaks reference cycles through them).
  void Close(Error why);
  bool connected() const { return !lost_; }
  // Bytes queued or being written.
  size_t queued_bytes() const { return writing_.size() + queued_.size(); }

  // Backpressure: while paused, nothing is read (so the peer's writes block).
  void PauseReading() { paused_ = true; }
  void ResumeReading();

 private:
  explicit AsyncControlClient(boost::asio::io_context& io);
  void StartRead();
  void OnRead(boost::system::error_code ec, size_t n);
  void Dispatch(const protocol::Frame& frame);
  void StartWrite();

  boost::asio::local::stream_protocol::socket socket_;
  boost::asio::steady_timer handshake_timer_;
  protocol::FrameDecoder decoder_;
  char read_buffer_[64 << 10];
  bool reading_ = false;  // a read is in flight
  bool paused_ = false;
  bool connected_ = false;  // the socket connect completed
  bool ready_ = false;      // Ready arrived
  std::function<void(Status)> on_ready_;
  std::string writing_;  // in flight
  std::string queued_;   // behind it
  uint32_t next_id_ = 1;
  std::map<uint32_t, FrameHandler> handlers_;
  LostHandler on_lost_;
  std::optional<Error> lost_;
};

// Where the node agent sends API-fed stdin chunks (one at a time).
class AsyncStdinTarget {
 public:
  virtual ~AsyncStdinTarget() = default;
  // `done(taken, status)` runs once the sandbox took all of `data` (status ok), or once it
  // cannot take more (an error; `taken` counts the bytes it did take before).
  virtual void WriteStdin(std::string data,
                          std::function<void(uint64_t taken, Status status)> done) = 0;
  // Closes the command's stdin; `done` runs once that was sent or answered.
  virtual void CloseStdin(std::function<void(Status)> done) = 0;
};

// One exec on a connection of its own, so that ending the connection (Cancel) kills the
// command: the control server kills the running execs of a client that went away.
class AsyncExec : public AsyncStdinTarget, public std::enable_shared_from_this<AsyncExec> {
 public:
  struct Callbacks {
    std::function<void(protocol::Stream, std::string_view)> on_output;
    // Exactly once: ExecExit, or why the command could not start or its stream was lost.
    std::function<void(Result<protocol::ExecExit>)> on_end;
  };
  // Connects to the control socket at `socket_path` and starts `start` there.
  static std::shared_ptr<AsyncExec> Start(boost::asio::io_context& io,
                                          const std::string& socket_path, protocol::ExecStart start,
                                          Callbacks callbacks);
  // Stdin travels as StdinData frames within the agent's stdin window (kStdinWindowBytes
  // unacknowledged): `done` runs once the last frame of `data` fits in the window.
  void WriteStdin(std::string data, std::function<void(uint64_t, Status)> done) override;
  void CloseStdin(std::function<void(Status)> done) override;
  // Kills the command (closes its connection); on_end runs with `why` unless it ran already.
  void Cancel(Error why);
  AsyncControlClient& client() { return *client_; }

 private:
  AsyncExec() = default;
  void OnFrame(const protocol::Frame& frame);
  void PumpStdin();
  void End(Result<protocol::ExecExit> result);

  std::shared_ptr<AsyncControlClient> client_;
  Callbacks callbacks_;
  uint32_t id_ = 0;
  bool started_ = false;
  bool ended_ = false;
  uint64_t stdin_in_flight_ = 0;  // sent, not yet acknowledged by StdinAck
  struct PendingStdin {
    std::string data;
    size_t sent = 0;
    std::function<void(uint64_t, Status)> done;
  };
  std::optional<PendingStdin> pending_stdin_;
};

// The stdin of a detached run's main command (started with stdin_via_control): StdinData
// and StdinClose under kMainStdinRequestId, one frame in flight, each answered by the
// supervisor once the agent's stdin window took it.
class AsyncMainStdin : public AsyncStdinTarget,
                       public std::enable_shared_from_this<AsyncMainStdin> {
 public:
  // `on_end` runs once, when the connection ends: the sandbox ended, Cancel, a failure, or
  // stdin was closed (CloseStdin answered; then with kCancelled).
  static std::shared_ptr<AsyncMainStdin> Start(boost::asio::io_context& io,
                                               const std::string& socket_path,
                                               std::function<void(const Error&)> on_end);
  void WriteStdin(std::string data, std::function<void(uint64_t, Status)> done) override;
  void CloseStdin(std::function<void(Status)> done) override;
  void Cancel(Error why) { client_->Close(std::move(why)); }
  AsyncControlClient& client() { return *client_; }

 private:
  AsyncMainStdin() = default;
  void SendNext();
  void OnAnswer(Status answer);

  std::shared_ptr<AsyncControlClient> client_;
  struct Pending {
    std::string data;
    size_t sent = 0;        // bytes the supervisor took
    size_t frame_size = 0;  // bytes in the frame awaiting its answer
    bool close = false;     // a StdinClose, not data
    std::function<void(uint64_t, Status)> done;
  };
  std::optional<Pending> pending_;
};

}  // namespace tartarus::node

// Hecatoncheir (the node agent): asynchronous control-socket clients (see
// async_control_client.h).
#include "node/async_control_client.h"

#include <sys/un.h>

#include <algorithm>
#include <boost/asio/write.hpp>

#include "node/control_server.h"

namespace tartarus::node {

namespace asio = boost::asio;
using protocol::Frame;

namespace {

ErrorCode CodeForKind(protocol::ErrorKind kind) {
  switch (kind) {
    case protocol::ErrorKind::kNotFound:
      return ErrorCode::kNotFound;
    case protocol::ErrorKind::kPermissionDenied:
      return ErrorCode::kPermissionDenied;
    case protocol::ErrorKind::kInvalidArgument:
      return ErrorCode::kInvalidArgument;
    case protocol::ErrorKind::kResourceExhausted:
      return ErrorCode::kResourceExhausted;
    case protocol::ErrorKind::kVersionMismatch:
      return ErrorCode::kFailedPrecondition;
    case protocol::ErrorKind::kBadFrame:
    case protocol::ErrorKind::kUnknownId:
      return ErrorCode::kProtocol;
    case protocol::ErrorKind::kIo:
      return ErrorCode::kIo;
    case protocol::ErrorKind::kInternal:
      return ErrorCode::kInternal;
  }
  return ErrorCode::kInternal;
}

Error FromReply(const protocol::ErrorReply& reply) {
  return Error{CodeForKind(reply.kind), reply.message};
}

}  // namespace

// ---- AsyncControlClient -------------------------------------------------------------------

AsyncControlClient::AsyncControlClient(asio::io_context& io) : socket_(io), handshake_timer_(io) {}

std::shared_ptr<AsyncControlClient> AsyncControlClient::Create(asio::io_context& io) {
  return std::shared_ptr<AsyncControlClient>(new AsyncControlClient(io));
}

void AsyncControlClient::Connect(const std::string& socket_path,
                                 std::function<void(Status)> on_ready,
                                 std::chrono::milliseconds handshake_timeout) {
  on_ready_ = std::move(on_ready);
  if (socket_path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Close(
        Error{ErrorCode::kInvalidArgument, "control socket path too long: " + socket_path});
  }
  // Hello goes first in the write queue, whatever is sent before the socket connects.
  std::string hello;
  if (auto encoded = protocol::AppendFrame(Frame{0, protocol::Hello{}}, hello); !encoded) {
    return Close(encoded.error());
  }
  queued_.insert(0, hello);
  handshake_timer_.expires_after(handshake_timeout);
  handshake_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec || self->ready_) return;
    self->Close(Error{ErrorCode::kTimeout, "the sandbox's control socket did not answer Hello"});
  });
  socket_.async_connect(
      asio::local::stream_protocol::endpoint(socket_path),
      [self = shared_from_this()](boost::system::error_code ec) {
        if (self->lost_) return;
        if (ec) {
          return self->Close(
              Error{ErrorCode::kFailedPrecondition,
                    "the sandbox is not reachable (its supervisor is gone): " + ec.message()});
        }
        self->connected_ = true;
        self->StartWrite();
        self->StartRead();
      });
}

void AsyncControlClient::RegisterHandler(uint32_t id, FrameHandler handler) {
  if (lost_) return;
  handlers_[id] = std::move(handler);
}

void AsyncControlClient::UnregisterHandler(uint32_t id) { handlers_.erase(id); }

void AsyncControlClient::OnLost(LostHandler handler) {
  if (lost_) {
    Error error = *lost_;
    handler(error);
    return;
  }
  on_lost_ = std::move(handler);
}

Status AsyncControlClient::Send(const Frame& frame) {
  if (lost_) return Fail(*lost_);
  TRY(protocol::AppendFrame(frame, queued_));
  StartWrite();
  return Ok();
}

void AsyncControlClient::Close(Error why) {
  if (lost_) return;
  auto keep = shared_from_this();  // the callbacks below may drop every other reference
  lost_ = why;
  boost::system::error_code ignored;
  handshake_timer_.cancel();
  socket_.close(ignored);
  writing_.clear();
  queued_.clear();
  // Moved out first: the callbacks may drop the last other reference to us or call back in.
  auto on_ready = std::move(on_ready_);
  auto on_lost = std::move(on_lost_);
  auto handlers = std::move(handlers_);
  handlers_.clear();
  if (on_ready && !ready_) on_ready(Fail(why));
  if (on_lost) on_lost(why);
}

void AsyncControlClient::ResumeReading() {
  paused_ = false;
  StartRead();
}

void AsyncControlClient::StartRead() {
  if (reading_ || paused_ || lost_ || !connected_) return;
  reading_ = true;
  socket_.async_read_some(asio::buffer(read_buffer_),
                          [self = shared_from_this()](boost::system::error_code ec, size_t n) {
                            self->reading_ = false;
                            self->OnRead(ec, n);
                          });
}

void AsyncControlClient::OnRead(boost::system::error_code ec, size_t n) {
  if (lost_) return;
  if (n > 0) decoder_.Feed(std::string_view(read_buffer_, n));
  while (!lost_) {
    protocol::DecodeEvent event = decoder_.Next();
    if (event.kind == protocol::DecodeEvent::Kind::kNeedMore) break;
    if (event.kind != protocol::DecodeEvent::Kind::kFrame) {
      // A skipped frame could have been output or an exit: end loudly rather than lose it.
      return Close(
          Error{ErrorCode::kProtocol, "the control socket sent a bad frame: " + event.error});
    }
    Dispatch(event.frame);
  }
  if (lost_) return;
  if (ec) {
    return Close(Error{ErrorCode::kCancelled, ec == asio::error::eof
                                                  ? "the sandbox's control socket closed"
                                                  : "reading the control socket: " + ec.message()});
  }
  StartRead();
}

void AsyncControlClient::Dispatch(const Frame& frame) {
  if (!ready_) {
    if (frame.id == 0 && std::holds_alternative<protocol::Ready>(frame.message)) {
      ready_ = true;
      handshake_timer_.cancel();
      if (auto on_ready = std::move(on_ready_)) on_ready(Ok());
      return;
    }
    if (const auto* error = std::get_if<protocol::ErrorReply>(&frame.message)) {
      return Close(FromReply(*error).Context("the control socket refused Hello"));
    }
    return Close(Error{ErrorCode::kProtocol, "the control socket answered Hello with " +
                                                 std::string(protocol::MessageTypeName(
                                                     protocol::TypeOf(frame.message)))});
  }
  auto it = handlers_.find(frame.id);
  if (it == handlers_.end()) return;
  FrameHandler handler = it->second;  // a copy: the handler may unregister itself
  handler(frame);
}

void AsyncControlClient::StartWrite() {
  if (!writing_.empty() || queued_.empty() || lost_ || !connected_) return;
  writing_.swap(queued_);
  asio::async_write(
      socket_, asio::buffer(writing_),
      [self = shared_from_this()](boost::system::error_code ec, size_t) {
        if (self->lost_) return;
        if (ec) {
          return self->Close(Error{ErrorCode::kIo, "writing the control socket: " + ec.message()});
        }
        self->writing_.clear();
        self->StartWrite();
      });
}

// ---- AsyncExec ----------------------------------------------------------------------------

std::shared_ptr<AsyncExec> AsyncExec::Start(asio::io_context& io, const std::string& socket_path,
                                            protocol::ExecStart start, Callbacks callbacks) {
  std::shared_ptr<AsyncExec> exec(new AsyncExec());
  exec->callbacks_ = std::move(callbacks);
  exec->client_ = AsyncControlClient::Create(io);
  exec->id_ = exec->client_->AllocateId();
  // The handlers hold the exec alive until the connection ends.
  exec->client_->RegisterHandler(exec->id_, [exec](const Frame& f) { exec->OnFrame(f); });
  exec->client_->OnLost([exec](const Error& why) {
    exec->End(
        Fail(exec->started_ ? why.Context("sandbox stopped before the command finished") : why));
  });
  // Queued behind Hello: the start costs no extra round trip.
  if (auto sent = exec->client_->Send(Frame{exec->id_, std::move(start)}); !sent) {
    exec->client_->Close(sent.error().Context("starting command"));
    return exec;
  }
  exec->client_->Connect(socket_path, [](Status) {});
  return exec;
}

void AsyncExec::OnFrame(const Frame& frame) {
  if (const auto* output = std::get_if<protocol::Output>(&frame.message)) {
    if (callbacks_.on_output) callbacks_.on_output(output->stream, output->data);
  } else if (std::holds_alternative<protocol::ExecStarted>(frame.message)) {
    started_ = true;
  } else if (const auto* ack = std::get_if<protocol::StdinAck>(&frame.message)) {
    stdin_in_flight_ -= std::min<uint64_t>(ack->bytes, stdin_in_flight_);
    PumpStdin();
  } else if (const auto* exit = std::get_if<protocol::ExecExit>(&frame.message)) {
    End(*exit);
  } else if (const auto* error = std::get_if<protocol::ErrorReply>(&frame.message)) {
    // Before ExecStarted an error refuses the exec; after it, it answers a stdin or signal
    // frame of a command that is ending, whose ExecExit follows.
    if (!started_) End(Fail(FromReply(*error).Context("starting command")));
  }
}

void AsyncExec::WriteStdin(std::string data, std::function<void(uint64_t, Status)> done) {
  if (ended_ || pending_stdin_) {
    return done(0, Fail(ErrorCode::kFailedPrecondition,
                        ended_ ? "the command has ended" : "a stdin write is in progress"));
  }
  pending_stdin_ = PendingStdin{std::move(data), 0, std::move(done)};
  PumpStdin();
}

void AsyncExec::PumpStdin() {
  if (!pending_stdin_) return;
  auto& p = *pending_stdin_;
  while (p.sent < p.data.size()) {
    size_t chunk = std::min<size_t>(p.data.size() - p.sent, protocol::kMaxChunkBytes);
    if (stdin_in_flight_ + chunk > protocol::kStdinWindowBytes) return;  // wait for StdinAck
    Frame frame{id_, protocol::StdinData{p.data.substr(p.sent, chunk)}};
    if (auto sent = client_->Send(frame); !sent) {
      auto done = std::move(p.done);
      uint64_t taken = p.sent;
      pending_stdin_.reset();
      return done(taken, Fail(sent.error()));
    }
    stdin_in_flight_ += chunk;
    p.sent += chunk;
  }
  auto done = std::move(p.done);
  uint64_t taken = p.sent;
  pending_stdin_.reset();
  done(taken, Ok());
}

void AsyncExec::CloseStdin(std::function<void(Status)> done) {
  if (ended_) return done(Fail(ErrorCode::kFailedPrecondition, "the command has ended"));
  done(client_->Send(Frame{id_, protocol::StdinClose{}}));
}

void AsyncExec::Cancel(Error why) {
  auto keep = shared_from_this();  // on_end may drop the caller's reference
  End(Fail(why));
  client_->Close(std::move(why));
}

void AsyncExec::End(Result<protocol::ExecExit> result) {
  if (ended_) return;
  auto keep = shared_from_this();
  ended_ = true;
  if (pending_stdin_) {
    auto done = std::move(pending_stdin_->done);
    uint64_t taken = pending_stdin_->sent;
    pending_stdin_.reset();
    done(taken, Fail(ErrorCode::kFailedPrecondition, "the command has ended"));
  }
  auto on_end = std::move(callbacks_.on_end);
  callbacks_ = {};
  if (on_end) on_end(std::move(result));
  // Done with the connection: the server forgets the exec; this breaks our handler cycle.
  client_->Close(Error{ErrorCode::kCancelled, "the exec ended"});
}

// ---- AsyncMainStdin -----------------------------------------------------------------------

std::shared_ptr<AsyncMainStdin> AsyncMainStdin::Start(asio::io_context& io,
                                                      const std::string& socket_path,
                                                      std::function<void(const Error&)> on_end) {
  std::shared_ptr<AsyncMainStdin> feeder(new AsyncMainStdin());
  feeder->client_ = AsyncControlClient::Create(io);
  feeder->client_->RegisterHandler(kMainStdinRequestId, [feeder](const Frame& frame) {
    if (const auto* error = std::get_if<protocol::ErrorReply>(&frame.message)) {
      feeder->OnAnswer(Fail(ErrorCode::kFailedPrecondition, error->message));
    } else {
      feeder->OnAnswer(Ok());
    }
  });
  feeder->client_->OnLost([feeder, on_end = std::move(on_end)](const Error& why) {
    feeder->OnAnswer(Fail(ErrorCode::kFailedPrecondition, why.message));
    if (on_end) on_end(why);
  });
  feeder->client_->Connect(socket_path, [](Status) {});
  return feeder;
}

void AsyncMainStdin::WriteStdin(std::string data, std::function<void(uint64_t, Status)> done) {
  if (!client_->connected() || pending_) {
    return done(
        0, Fail(ErrorCode::kFailedPrecondition,
                !pending_ ? "the sandbox's command has ended" : "a stdin write is in progress"));
  }
  pending_ = Pending{.data = std::move(data), .done = std::move(done)};
  SendNext();
}

void AsyncMainStdin::CloseStdin(std::function<void(Status)> done) {
  if (!client_->connected() || pending_) {
    return done(Fail(ErrorCode::kFailedPrecondition, "the sandbox's command has ended"));
  }
  pending_ = Pending{.close = true,
                     .done = [done = std::move(done)](uint64_t, Status s) { done(std::move(s)); }};
  SendNext();
}

void AsyncMainStdin::SendNext() {
  auto& p = *pending_;
  protocol::Message message = protocol::StdinClose{};
  if (!p.close) {
    p.frame_size = std::min<size_t>(p.data.size() - p.sent, protocol::kMaxChunkBytes);
    message = protocol::StdinData{p.data.substr(p.sent, p.frame_size)};
  }
  // One frame in flight: its answer is the flow control.
  if (auto sent = client_->Send(Frame{kMainStdinRequestId, std::move(message)}); !sent) {
    OnAnswer(Fail(sent.error()));
  }
}

void AsyncMainStdin::OnAnswer(Status answer) {
  if (!pending_) return;
  auto& p = *pending_;
  if (answer) {
    p.sent += p.frame_size;
    if (!p.close && p.sent < p.data.size()) return SendNext();
  }
  const bool closed = p.close && answer;
  auto done = std::move(p.done);
  uint64_t taken = p.sent;
  pending_.reset();
  done(taken, std::move(answer));
  // Stdin is closed for good: nothing more to say on this connection.
  if (closed) client_->Close(Error{ErrorCode::kCancelled, "stdin closed"});
}

}  // namespace tartarus::node

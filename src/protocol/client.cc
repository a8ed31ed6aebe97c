// AgentClient: the host side of the guest protocol (see client.h).
#include "protocol/client.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>

namespace tartarus::protocol {
namespace {

constexpr size_t kReadBytes = 256 << 10;

ErrorCode CodeForKind(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kNotFound:
      return ErrorCode::kNotFound;
    case ErrorKind::kPermissionDenied:
      return ErrorCode::kPermissionDenied;
    case ErrorKind::kInvalidArgument:
      return ErrorCode::kInvalidArgument;
    case ErrorKind::kResourceExhausted:
      return ErrorCode::kResourceExhausted;
    case ErrorKind::kIo:
      return ErrorCode::kIo;
    case ErrorKind::kVersionMismatch:
      return ErrorCode::kFailedPrecondition;
    case ErrorKind::kBadFrame:
    case ErrorKind::kUnknownId:
      return ErrorCode::kProtocol;
    case ErrorKind::kInternal:
      return ErrorCode::kInternal;
  }
  return ErrorCode::kInternal;
}

Error FromReply(const ErrorReply& reply) { return Error{CodeForKind(reply.kind), reply.message}; }

// A write to a vanished agent must be an EPIPE error, not a process-killing SIGPIPE.
// Only replaces the default disposition: an application's own handler stays.
void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL &&
        !(current.sa_flags & SA_SIGINFO)) {
      signal(SIGPIPE, SIG_IGN);
    }
  });
}

}  // namespace

// ---- ExecHandle -------------------------------------------------------------------------

struct ExecHandle::State {
  std::mutex mutex;
  std::condition_variable changed;
  bool started = false;
  pid_t pid = 0;
  bool stdin_pipe = false;
  std::optional<Error> start_error;
  std::optional<ExecExit> exit;
  std::optional<Error> lost;
  uint64_t stdin_in_flight = 0;  // sent, not yet acknowledged
  OutputCallback on_output;
};

ExecHandle::~ExecHandle() {
  bool running;
  {
    std::lock_guard lock(state_->mutex);
    running = !state_->exit && !state_->lost;
  }
  if (running) (void)client_->Send(Frame{id_, Signal{SIGKILL}});
  client_->UnregisterHandler(id_);
}

Status ExecHandle::WriteStdin(std::string_view data) {
  if (!state_->stdin_pipe) {
    return Fail(ErrorCode::kInvalidArgument, "the command was started without a stdin pipe");
  }
  while (!data.empty()) {
    const size_t chunk = std::min<size_t>(data.size(), kMaxChunkBytes);
    {
      std::unique_lock lock(state_->mutex);
      state_->changed.wait(lock, [&] {
        return state_->exit || state_->lost || state_->stdin_in_flight + chunk <= kStdinWindowBytes;
      });
      if (state_->lost) return Fail(*state_->lost);
      if (state_->exit) return Fail(ErrorCode::kFailedPrecondition, "the command already exited");
      state_->stdin_in_flight += chunk;
    }
    TRY(client_->Send(Frame{id_, StdinData{std::string(data.substr(0, chunk))}}));
    data.remove_prefix(chunk);
  }
  return {};
}

Status ExecHandle::CloseStdin() { return client_->Send(Frame{id_, StdinClose{}}); }

Status ExecHandle::SendSignal(int signo) { return client_->Send(Frame{id_, Signal{signo}}); }

Result<ExecExit> ExecHandle::Wait() {
  std::unique_lock lock(state_->mutex);
  state_->changed.wait(lock, [&] { return state_->exit || state_->lost; });
  if (state_->exit) return *state_->exit;
  return Fail(*state_->lost);
}

Result<ExecExit> ExecHandle::WaitFor(std::chrono::milliseconds timeout) {
  std::unique_lock lock(state_->mutex);
  if (!state_->changed.wait_for(lock, timeout, [&] { return state_->exit || state_->lost; })) {
    return Fail(ErrorCode::kTimeout, "the command is still running");
  }
  if (state_->exit) return *state_->exit;
  return Fail(*state_->lost);
}

// ---- connection -------------------------------------------------------------------------

AgentClient::AgentClient(UniqueFd from_agent, UniqueFd to_agent)
    : from_agent_(std::move(from_agent)), to_agent_(std::move(to_agent)) {}

Result<std::unique_ptr<AgentClient>> AgentClient::Connect(UniqueFd from_agent, UniqueFd to_agent,
                                                          Options options) {
  if (!from_agent || !to_agent) {
    return Fail(ErrorCode::kInvalidArgument, "AgentClient needs two open file descriptors");
  }
  IgnoreSigpipeOnce();
  std::unique_ptr<AgentClient> client(new AgentClient(std::move(from_agent), std::move(to_agent)));
  if (pipe2(client->wake_pipe_, O_CLOEXEC | O_NONBLOCK) < 0) return FailErrno("pipe");
  TRY(client->SendHello());
  client->handshake_timeout_ = options.handshake_timeout;
  client->handshake_deadline_ = std::chrono::steady_clock::now() + options.handshake_timeout;
  // The reader thread does the handshake either way; a failed one ends the connection, and
  // the client's destructor then joins the reader.
  client->reader_ = std::thread([c = client.get()] { c->ReaderLoop(); });
  {
    std::lock_guard lock(client->mutex_);
    client->reader_id_ = client->reader_.get_id();
  }
  if (options.wait_for_ready) TRY(client->WaitReady());
  return client;
}

Status AgentClient::SendHello() {
  std::string hello = TRY(EncodeFrame(Frame{0, Hello{}}));
  if (auto written = WriteAll(to_agent_.Get(), hello); !written) {
    return Fail(written.error().message.find("Broken pipe") != std::string::npos
                    ? HandshakeClosedError()
                    : written.error().Context("sending Hello to the guest agent"));
  }
  return {};
}

Error AgentClient::HandshakeClosedError() {
  return Error{ErrorCode::kFailedPrecondition,
               "guest agent closed the connection during handshake"};
}

Error AgentClient::HandshakeTimeoutError() const {
  return Error{ErrorCode::kTimeout, "guest agent did not answer the handshake within " +
                                        std::to_string(handshake_timeout_.count()) + " ms"};
}

Status AgentClient::OnHandshakeFrame(const Frame& frame) {
  const Message& m = frame.message;
  if (const auto* ready = std::get_if<Ready>(&m)) {
    if (ready->version != kProtocolVersion) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "guest agent speaks protocol version " + std::to_string(ready->version) +
                      ", host speaks " + std::to_string(kProtocolVersion));
    }
    std::lock_guard lock(mutex_);
    protocol_version_ = ready->version;
    agent_version_ = ready->agent_version;
    ready_ = true;
    return {};
  }
  if (const auto* error = std::get_if<ErrorReply>(&m)) {
    if (error->kind == ErrorKind::kVersionMismatch) {
      return Fail(ErrorCode::kFailedPrecondition, error->message);
    }
    return Fail(FromReply(*error).Context("guest agent refused the handshake"));
  }
  return Fail(ErrorCode::kProtocol, "guest agent sent " + std::string(MessageTypeName(TypeOf(m))) +
                                        " instead of Ready during handshake");
}

Status AgentClient::WaitReady() {
  std::unique_lock lock(mutex_);
  ready_changed_.wait(lock, [&] { return ready_ || lost_; });
  if (ready_) return {};
  return Fail(*lost_);
}

AgentClient::~AgentClient() {
  Close();
  if (reader_.joinable()) reader_.join();
  for (int fd : wake_pipe_) {
    if (fd >= 0) close(fd);
  }
}

void AgentClient::Close() {
  MarkLost(Error{ErrorCode::kCancelled, "connection to the guest agent closed by the host"});
  if (wake_pipe_[1] >= 0) {
    char byte = 0;
    ssize_t ignored = write(wake_pipe_[1], &byte, 1);
    (void)ignored;
  }
}

bool AgentClient::Connected() const {
  std::lock_guard lock(mutex_);
  return !lost_;
}

std::optional<Error> AgentClient::ConnectionError() const {
  std::lock_guard lock(mutex_);
  return lost_;
}

Error AgentClient::LostError() const {
  std::lock_guard lock(mutex_);
  return lost_.value_or(Error{ErrorCode::kInternal, "connection not lost"});
}

void AgentClient::ReaderLoop() {
  std::string buffer(kReadBytes, '\0');
  // Until the agent answered Hello, frames go to the handshake, with its deadline.
  bool ready = false;
  for (;;) {
    if (!ready) {
      // Frames already buffered (Ready and the replies that follow it) come first.
      DecodeEvent event = decoder_.Next();
      if (event.kind == DecodeEvent::Kind::kFrame) {
        if (auto handshake = OnHandshakeFrame(event.frame); !handshake) {
          return MarkLost(handshake.error());
        }
        ready = true;
        ready_changed_.notify_all();
        continue;
      }
      if (event.kind != DecodeEvent::Kind::kNeedMore) {
        return MarkLost(Error{ErrorCode::kProtocol,
                              "guest agent sent garbage during handshake: " + event.error});
      }
    } else {
      if (!DispatchBuffered()) return;
    }
    int timeout_ms = -1;
    if (!ready) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(handshake_deadline_ -
                                                               std::chrono::steady_clock::now());
      if (left.count() <= 0) return MarkLost(HandshakeTimeoutError());
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd fds[2] = {{from_agent_.Get(), POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    int polled = poll(fds, 2, timeout_ms);
    if (polled < 0) {
      if (errno == EINTR) continue;
      return MarkLost(ErrnoError("guest agent connection: poll"));
    }
    if (fds[1].revents) return;  // Close(): already marked lost
    if (!fds[0].revents) continue;
    ssize_t n = read(from_agent_.Get(), buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return MarkLost(ErrnoError("guest agent connection: read"));
    }
    if (n == 0) {
      return MarkLost(ready ? Error{ErrorCode::kCancelled, "guest agent closed the connection"}
                            : HandshakeClosedError());
    }
    decoder_.Feed(std::string_view(buffer.data(), static_cast<size_t>(n)));
  }
}

bool AgentClient::DispatchBuffered() {
  for (;;) {
    DecodeEvent event = decoder_.Next();
    if (event.kind == DecodeEvent::Kind::kNeedMore) return true;
    if (event.kind == DecodeEvent::Kind::kFatal) {
      MarkLost(Error{ErrorCode::kProtocol, "guest agent broke the protocol: " + event.error});
      return false;
    }
    // A malformed frame from the agent is dropped; its request times out or the
    // connection ends, rather than trusting a half-understood reply.
    if (event.kind == DecodeEvent::Kind::kBadFrame) continue;
    Dispatch(event.frame);
  }
}

void AgentClient::Dispatch(const Frame& frame) {
  std::shared_ptr<HandlerEntry> entry;
  {
    std::lock_guard lock(mutex_);
    auto it = handlers_.find(frame.id);
    if (it == handlers_.end()) return;
    entry = it->second;
    dispatching_ = true;
    dispatching_id_ = frame.id;
  }
  entry->on_frame(frame);
  {
    std::lock_guard lock(mutex_);
    dispatching_ = false;
  }
  dispatch_done_.notify_all();
}

void AgentClient::MarkLost(Error error) {
  std::unordered_map<uint32_t, std::shared_ptr<HandlerEntry>> handlers;
  LostCallback callback;
  {
    std::lock_guard lock(mutex_);
    if (lost_) return;
    lost_ = error;
    handlers.swap(handlers_);
    callback = on_lost_;
    notifying_lost_ = true;
    notifying_thread_ = std::this_thread::get_id();
  }
  for (auto& [id, entry] : handlers) {
    if (entry->on_lost) entry->on_lost(error);
  }
  if (callback) callback(error);
  {
    std::lock_guard lock(mutex_);
    notifying_lost_ = false;
  }
  dispatch_done_.notify_all();
  ready_changed_.notify_all();
}

uint32_t AgentClient::AllocateId() {
  for (;;) {
    uint32_t id = next_id_.fetch_add(1);
    if (id != 0) return id;
  }
}

Status AgentClient::Send(const Frame& frame) {
  std::string bytes = TRY(EncodeFrame(frame));
  if (!Connected()) return Fail(LostError());
  Status written;
  {
    std::lock_guard lock(write_mutex_);
    written = WriteAll(to_agent_.Get(), bytes);
  }
  if (!written) {
    MarkLost(written.error().Context("guest agent connection lost"));
    return Fail(LostError());
  }
  return {};
}

void AgentClient::RegisterHandler(uint32_t id, Handler on_frame, LostCallback on_lost) {
  auto entry =
      std::make_shared<HandlerEntry>(HandlerEntry{std::move(on_frame), std::move(on_lost)});
  std::unique_lock lock(mutex_);
  if (lost_) {
    Error error = *lost_;
    lock.unlock();
    if (entry->on_lost) entry->on_lost(error);
    return;
  }
  handlers_[id] = std::move(entry);
}

void AgentClient::UnregisterHandler(uint32_t id) {
  std::unique_lock lock(mutex_);
  handlers_.erase(id);
  // From a handler or lost callback itself: it is the one running, nothing to wait for.
  const auto self = std::this_thread::get_id();
  if (self == reader_id_ || (notifying_lost_ && self == notifying_thread_)) return;
  dispatch_done_.wait(lock,
                      [&] { return !(dispatching_ && dispatching_id_ == id) && !notifying_lost_; });
}

void AgentClient::SetConnectionLostCallback(LostCallback callback) {
  std::unique_lock lock(mutex_);
  if (lost_) {
    Error error = *lost_;
    lock.unlock();
    callback(error);
    return;
  }
  on_lost_ = std::move(callback);
}

// ---- high level -------------------------------------------------------------------------

Result<std::unique_ptr<ExecHandle>> AgentClient::StartExec(const ExecStart& start,
                                                           OutputCallback on_output) {
  const uint32_t id = AllocateId();
  auto state = std::make_shared<ExecHandle::State>();
  state->stdin_pipe = start.stdin_pipe;
  state->on_output = std::move(on_output);
  auto on_frame = [this, id, state](const Frame& frame) {
    if (const auto* output = std::get_if<Output>(&frame.message)) {
      if (state->on_output) state->on_output(output->stream, output->data);
      return;
    }
    bool finished = false;
    {
      std::lock_guard lock(state->mutex);
      if (const auto* started = std::get_if<ExecStarted>(&frame.message)) {
        state->started = true;
        state->pid = started->pid;
      } else if (const auto* ack = std::get_if<StdinAck>(&frame.message)) {
        state->stdin_in_flight -= std::min<uint64_t>(ack->bytes, state->stdin_in_flight);
      } else if (const auto* exit = std::get_if<ExecExit>(&frame.message)) {
        state->exit = *exit;
        finished = true;
      } else if (const auto* error = std::get_if<ErrorReply>(&frame.message)) {
        // Before ExecStarted an error refuses the exec; after it, it answers a stdin or
        // signal frame, which the caller's send already reported as best it could.
        if (!state->started) {
          state->start_error = FromReply(*error).Context("starting command");
          finished = true;
        }
      }
    }
    state->changed.notify_all();
    if (finished) UnregisterHandler(id);
  };
  auto on_lost = [state](const Error& error) {
    {
      std::lock_guard lock(state->mutex);
      // Before ExecStarted the error itself says why (a refused handshake, for one).
      state->lost =
          state->started ? error.Context("sandbox stopped before the command finished") : error;
    }
    state->changed.notify_all();
  };
  RegisterHandler(id, on_frame, on_lost);
  if (auto sent = Send(Frame{id, start}); !sent) {
    UnregisterHandler(id);
    return Fail(sent.error());
  }
  std::unique_lock lock(state->mutex);
  state->changed.wait(lock, [&] { return state->started || state->start_error || state->lost; });
  if (!state->started) {
    Error error = state->start_error ? *state->start_error : *state->lost;
    lock.unlock();
    UnregisterHandler(id);
    return Fail(error);
  }
  std::unique_ptr<ExecHandle> handle(new ExecHandle(this, id, state));
  handle->pid_ = state->pid;
  return handle;
}

Status AgentClient::Request(const Frame& request,
                            const std::function<Status(const Frame&, bool& done)>& on_frame) {
  struct Pending {
    std::mutex mutex;
    std::condition_variable changed;
    bool done = false;
    Status result;
  };
  auto pending = std::make_shared<Pending>();
  auto finish = [pending](Status status) {
    {
      std::lock_guard lock(pending->mutex);
      if (pending->done) return;
      pending->done = true;
      pending->result = std::move(status);
    }
    pending->changed.notify_all();
  };
  // on_frame runs on the reader thread; it references our caller's stack, which stays
  // valid because we unregister (waiting out any running dispatch) before returning.
  RegisterHandler(
      request.id,
      [&on_frame, pending, finish](const Frame& frame) {
        {
          std::lock_guard lock(pending->mutex);
          if (pending->done) return;
        }
        if (const auto* error = std::get_if<ErrorReply>(&frame.message)) {
          return finish(Fail(FromReply(*error)));
        }
        bool done = false;
        Status status = on_frame(frame, done);
        if (!status || done) finish(std::move(status));
      },
      [finish](const Error& error) { finish(Fail(error)); });
  if (auto sent = Send(request); !sent) {
    UnregisterHandler(request.id);
    return sent;
  }
  std::unique_lock lock(pending->mutex);
  pending->changed.wait(lock, [&] { return pending->done; });
  Status result = pending->result;
  lock.unlock();
  UnregisterHandler(request.id);
  return result;
}

namespace {

Status Unexpected(const Frame& frame, std::string_view request) {
  return Fail(ErrorCode::kProtocol, "guest agent answered " + std::string(request) + " with " +
                                        std::string(MessageTypeName(TypeOf(frame.message))));
}

}  // namespace

Result<StatResult> AgentClient::Stat(const std::string& path) {
  StatResult result;
  TRY(Request(Frame{AllocateId(), protocol::Stat{path}}, [&](const Frame& frame, bool& done) {
    const auto* stat = std::get_if<StatResult>(&frame.message);
    if (!stat) return Unexpected(frame, "Stat");
    result = *stat;
    done = true;
    return Status{};
  }));
  return result;
}

Result<std::vector<DirEntry>> AgentClient::List(const std::string& path) {
  std::vector<DirEntry> entries;
  TRY(Request(Frame{AllocateId(), protocol::List{path}}, [&](const Frame& frame, bool& done) {
    const auto* chunk = std::get_if<ListChunk>(&frame.message);
    if (!chunk) return Unexpected(frame, "List");
    entries.insert(entries.end(), chunk->entries.begin(), chunk->entries.end());
    done = chunk->last;
    return Status{};
  }));
  return entries;
}

Status AgentClient::Mkdir(const std::string& path, uint32_t mode, bool make_parents) {
  return Request(Frame{AllocateId(), protocol::Mkdir{path, mode, make_parents}},
                 [](const Frame& frame, bool& done) {
                   if (!std::holds_alternative<Ok>(frame.message))
                     return Unexpected(frame, "Mkdir");
                   done = true;
                   return Status{};
                 });
}

Status AgentClient::Remove(const std::string& path, bool recursive) {
  return Request(Frame{AllocateId(), protocol::Remove{path, recursive}},
                 [](const Frame& frame, bool& done) {
                   if (!std::holds_alternative<Ok>(frame.message))
                     return Unexpected(frame, "Remove");
                   done = true;
                   return Status{};
                 });
}

Status AgentClient::Shutdown() {
  return Request(Frame{0, protocol::Shutdown{}}, [](const Frame& frame, bool& done) {
    if (!std::holds_alternative<Ok>(frame.message)) return Unexpected(frame, "Shutdown");
    done = true;
    return Status{};
  });
}

Status AgentClient::ReadFile(const std::string& path,
                             const std::function<void(std::string_view)>& on_data) {
  return Request(Frame{AllocateId(), FileRead{path}}, [&](const Frame& frame, bool& done) {
    if (const auto* data = std::get_if<FileData>(&frame.message)) {
      on_data(data->data);
      return Status{};
    }
    if (!std::holds_alternative<FileEnd>(frame.message)) return Unexpected(frame, "FileRead");
    done = true;
    return Status{};
  });
}

Status AgentClient::ReadFileToFd(const std::string& path, int fd) {
  Status write_status;
  TRY(ReadFile(path, [&](std::string_view data) {
    if (write_status) write_status = WriteAll(fd, data);
  }));
  return write_status;
}

Result<std::string> AgentClient::ReadFileToString(const std::string& path, size_t max_bytes) {
  std::string contents;
  bool too_big = false;
  TRY(ReadFile(path, [&](std::string_view data) {
    if (contents.size() + data.size() > max_bytes) {
      too_big = true;
      return;
    }
    contents.append(data);
  }));
  if (too_big) {
    return Fail(ErrorCode::kResourceExhausted,
                path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  return contents;
}

namespace {

// Reads up to `size` bytes; 0 at end of input.
using ChunkSource = std::function<Result<size_t>(char* data, size_t size)>;

}  // namespace

static Status WriteFileFrom(AgentClient& client, const std::string& path, uint32_t mode,
                            bool make_parents, const ChunkSource& source) {
  struct Pending {
    std::mutex mutex;
    std::condition_variable changed;
    std::optional<Status> result;  // set by Ok, Error or connection loss
  };
  auto pending = std::make_shared<Pending>();
  auto finish = [pending](Status status) {
    {
      std::lock_guard lock(pending->mutex);
      if (pending->result) return;
      pending->result = std::move(status);
    }
    pending->changed.notify_all();
  };
  const uint32_t id = client.AllocateId();
  client.RegisterHandler(
      id,
      [finish](const Frame& frame) {
        if (const auto* error = std::get_if<ErrorReply>(&frame.message)) {
          finish(Fail(FromReply(*error)));
        } else if (std::holds_alternative<Ok>(frame.message)) {
          finish(Status{});
        } else {
          finish(Unexpected(frame, "FileWrite"));
        }
      },
      [finish](const Error& error) { finish(Fail(error)); });
  auto failed = [&]() -> std::optional<Status> {
    std::lock_guard lock(pending->mutex);
    return pending->result;
  };
  std::optional<Error> source_error;  // reading the caller's data failed
  auto send_all = [&]() -> Status {
    TRY(client.Send(Frame{id, FileWriteOpen{path, mode, make_parents}}));
    std::string buffer(kMaxChunkBytes, '\0');
    for (;;) {
      // Stop streaming as soon as the agent refused (e.g. the open failed).
      if (auto early = failed(); early && !*early) return *early;
      Result<size_t> n = source(buffer.data(), buffer.size());
      if (!n) {
        source_error = n.error();
        break;  // close the transfer so the agent frees it, then remove the partial file
      }
      if (*n == 0) break;
      TRY(client.Send(Frame{id, FileWriteData{buffer.substr(0, *n)}}));
    }
    return client.Send(Frame{id, FileWriteClose{}});
  };
  Status sent = send_all();
  Status result;
  if (!sent && !failed()) {
    result = sent;  // refused locally (e.g. a path over kMaxStringBytes): nothing was sent
  } else {
    // Otherwise the transfer ends in Ok, Error or connection loss; each sets the result.
    std::unique_lock lock(pending->mutex);
    pending->changed.wait(lock, [&] { return pending->result.has_value(); });
    result = *pending->result;
  }
  if (source_error) {
    client.UnregisterHandler(id);
    (void)client.Remove(path);
    return Fail(*source_error);
  }
  client.UnregisterHandler(id);
  return result;
}

Status AgentClient::WriteFile(const std::string& path, uint32_t mode, std::string_view contents,
                              bool make_parents) {
  return WriteFileFrom(*this, path, mode, make_parents,
                       [&contents](char* data, size_t size) -> Result<size_t> {
                         size_t n = std::min(size, contents.size());
                         std::copy_n(contents.data(), n, data);
                         contents.remove_prefix(n);
                         return n;
                       });
}

Status AgentClient::WriteFileFromFd(const std::string& path, uint32_t mode, int fd,
                                    bool make_parents) {
  return WriteFileFrom(*this, path, mode, make_parents,
                       [fd](char* data, size_t size) -> Result<size_t> {
                         for (;;) {
                           ssize_t n = read(fd, data, size);
                           if (n >= 0) return static_cast<size_t>(n);
                           if (errno != EINTR) return FailErrno("reading the file to upload");
                         }
                       });
}

}  // namespace tartarus::protocol

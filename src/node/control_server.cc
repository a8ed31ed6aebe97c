#include "node/control_server.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "protocol/codec.h"

namespace tartarus::node {

using namespace protocol;

// One client of the control socket and the upstream ids its requests map to.
struct ControlServer::Connection {
  UniqueFd fd;
  std::mutex write_mutex;
  std::mutex ids_mutex;
  std::map<uint32_t, uint32_t> upstream_of;  // client id -> upstream id
  std::set<uint32_t> running_execs;          // upstream ids of execs still running

  void Reply(const Frame& frame) {
    std::lock_guard lock(write_mutex);
    (void)WriteFrame(fd.Get(), frame);
  }
  void ReplyError(uint32_t id, ErrorKind kind, std::string message) {
    Reply(Frame{id, ErrorReply{kind, std::move(message)}});
  }
};

namespace {

// Frames that end a request: after them the id mapping is dropped.
bool EndsRequest(const Message& m) {
  return std::holds_alternative<ExecExit>(m) || std::holds_alternative<ErrorReply>(m) ||
         std::holds_alternative<protocol::Ok>(m) || std::holds_alternative<FileEnd>(m) ||
         std::holds_alternative<StatResult>(m) ||
         (std::holds_alternative<ListChunk>(m) && std::get<ListChunk>(m).last);
}

// Frames that open a request under a fresh client id.
bool OpensRequest(const Message& m) {
  return std::holds_alternative<ExecStart>(m) || std::holds_alternative<FileWriteOpen>(m) ||
         std::holds_alternative<FileRead>(m) || std::holds_alternative<Stat>(m) ||
         std::holds_alternative<List>(m) || std::holds_alternative<Mkdir>(m) ||
         std::holds_alternative<Remove>(m);
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::Start(std::string socket_path,
                                                            AgentClient& upstream,
                                                            std::function<void()> on_kill,
                                                            MainStdin main_stdin) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    return Fail(ErrorCode::kInvalidArgument,
                "control socket path too long (" + socket_path + "): use a shorter --state-dir");
  }
  std::copy(socket_path.begin(), socket_path.end(), addr.sun_path);
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) return FailErrno("socket");
  unlink(socket_path.c_str());
  mode_t old_umask = umask(0077);
  int r = bind(listener.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old_umask);
  if (r < 0) return FailErrno("bind " + socket_path);
  if (listen(listener.Get(), 64) < 0) return FailErrno("listen " + socket_path);
  auto server = std::unique_ptr<ControlServer>(
      new ControlServer(std::move(socket_path), std::move(listener), upstream, std::move(on_kill),
                        std::move(main_stdin)));
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  return server;
}

ControlServer::ControlServer(std::string socket_path, UniqueFd listener, AgentClient& upstream,
                             std::function<void()> on_kill, MainStdin main_stdin)
    : socket_path_(std::move(socket_path)),
      listener_(std::move(listener)),
      stop_event_(eventfd(0, EFD_CLOEXEC)),
      upstream_(upstream),
      on_kill_(std::move(on_kill)),
      main_stdin_(std::move(main_stdin)) {}

void ControlServer::ServeMainStdin(Connection& c, const Frame& frame) {
  const bool is_data = std::holds_alternative<StdinData>(frame.message);
  if (!is_data && !std::holds_alternative<StdinClose>(frame.message)) {
    return c.ReplyError(frame.id, ErrorKind::kBadFrame,
                        "only StdinData and StdinClose address the main command");
  }
  if (!main_stdin_.write) {
    return c.ReplyError(frame.id, ErrorKind::kInvalidArgument,
                        "the main command's stdin is not open: the sandbox was created without "
                        "stdin");
  }
  Status done =
      is_data ? main_stdin_.write(std::get<StdinData>(frame.message).data) : main_stdin_.close();
  if (!done) {
    // The command has ended (or the agent is gone): its stdin is closed for good.
    return c.ReplyError(frame.id, ErrorKind::kNotFound, done.error().message);
  }
  c.Reply(Frame{frame.id, protocol::Ok{}});
}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
    for (auto& c : connections_) shutdown(c->fd.Get(), SHUT_RDWR);
  }
  uint64_t one = 1;
  (void)!write(stop_event_.Get(), &one, sizeof one);
  if (accept_thread_.joinable()) accept_thread_.join();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  unlink(socket_path_.c_str());
}

void ControlServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listener_.Get(), POLLIN, 0}, {stop_event_.Get(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    UniqueFd fd(accept4(listener_.Get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) continue;
    auto connection = std::make_shared<Connection>();
    connection->fd = std::move(fd);
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    connections_.push_back(connection);
    threads_.emplace_back([this, connection] { Serve(connection); });
  }
}

void ControlServer::Serve(std::shared_ptr<Connection> c) {
  auto hello = ReadFrame(c->fd.Get(), 10'000);
  if (!hello || !std::holds_alternative<Hello>(hello->message)) {
    c->ReplyError(0, ErrorKind::kBadFrame, "expected Hello");
    return;
  }
  const auto& h = std::get<Hello>(hello->message);
  if (h.min_version > kProtocolVersion || h.max_version < kProtocolVersion) {
    c->ReplyError(0, ErrorKind::kVersionMismatch,
                  "tartarus speaks protocol version " + std::to_string(kProtocolVersion));
    return;
  }
  c->Reply(Frame{0, Ready{kProtocolVersion, TARTARUS_VERSION}});

  while (true) {
    auto frame = ReadFrame(c->fd.Get());
    if (!frame) {
      if (frame.error().code == ErrorCode::kProtocol) {
        c->ReplyError(0, ErrorKind::kBadFrame, frame.error().message);
        continue;
      }
      break;  // closed
    }
    if (std::holds_alternative<Shutdown>(frame->message)) {
      on_kill_();
      c->Reply(Frame{frame->id, protocol::Ok{}});
      continue;
    }
    if (frame->id == kMainStdinRequestId) {
      ServeMainStdin(*c, *frame);
      continue;
    }
    if (frame->id == 0 || std::holds_alternative<Hello>(frame->message)) {
      c->ReplyError(frame->id, ErrorKind::kBadFrame, "unexpected frame on the control socket");
      continue;
    }
    uint32_t client_id = frame->id;
    uint32_t upstream_id;
    {
      std::lock_guard lock(c->ids_mutex);
      auto it = c->upstream_of.find(client_id);
      if (OpensRequest(frame->message)) {
        if (it != c->upstream_of.end()) {
          c->ReplyError(client_id, ErrorKind::kInvalidArgument, "request id already in use");
          continue;
        }
        upstream_id = upstream_.AllocateId();
        c->upstream_of[client_id] = upstream_id;
        if (std::holds_alternative<ExecStart>(frame->message)) c->running_execs.insert(upstream_id);
        std::weak_ptr<Connection> weak = c;
        upstream_.RegisterHandler(upstream_id,
                                  [this, weak, client_id, upstream_id](const Frame& f) {
                                    auto conn = weak.lock();
                                    if (!conn) return;
                                    if (EndsRequest(f.message)) {
                                      std::lock_guard lock(conn->ids_mutex);
                                      conn->upstream_of.erase(client_id);
                                      conn->running_execs.erase(upstream_id);
                                      upstream_.UnregisterHandler(upstream_id);
                                    }
                                    conn->Reply(Frame{client_id, f.message});
                                  });
      } else {
        if (it == c->upstream_of.end()) {
          c->ReplyError(client_id, ErrorKind::kUnknownId, "no request with this id");
          continue;
        }
        upstream_id = it->second;
      }
    }
    if (auto s = upstream_.Send(Frame{upstream_id, frame->message}); !s) {
      c->ReplyError(client_id, ErrorKind::kIo, s.error().message);
    }
  }
  // The client went away: its execs die with it, as a terminal's would.
  std::lock_guard lock(c->ids_mutex);
  for (uint32_t id : c->running_execs) (void)upstream_.Send(Frame{id, protocol::Signal{SIGKILL}});
  for (auto [client_id, upstream_id] : c->upstream_of) upstream_.UnregisterHandler(upstream_id);
  c->upstream_of.clear();
}

}  // namespace tartarus::node

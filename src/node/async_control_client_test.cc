// Hecatoncheir (the node agent): the asynchronous control-socket clients against a scripted
// control socket (a thread speaking the guest protocol with the blocking codec helpers).
#include "node/async_control_client.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <filesystem>
#include <future>
#include <thread>

#include "common/unique_fd.h"
#include "node/control_server.h"

namespace tartarus::node {
namespace {

namespace asio = boost::asio;
using namespace protocol;

// A listening Unix socket in a fresh directory; Accept() returns one connection after the
// Hello/Ready handshake.
class FakeControlSocket {
 public:
  FakeControlSocket() {
    char tmpl[] = "/tmp/async-control-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/control.sock";
    listener_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::copy(path_.begin(), path_.end(), addr.sun_path);
    EXPECT_EQ(bind(listener_.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(listener_.Get(), 4), 0);
  }
  ~FakeControlSocket() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

  UniqueFd Accept() {
    UniqueFd fd(accept4(listener_.Get(), nullptr, nullptr, SOCK_CLOEXEC));
    auto hello = ReadFrame(fd.Get(), 5000);
    EXPECT_TRUE(hello && std::holds_alternative<Hello>(hello->message));
    EXPECT_TRUE(WriteFrame(fd.Get(), Frame{0, Ready{kProtocolVersion, "fake"}}));
    return fd;
  }

 private:
  std::string dir_, path_;
  UniqueFd listener_;
};

// True when a frame arrives on `fd` within `ms`.
bool Readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, ms) > 0;
}

// The io_context on a thread of its own, as in the node agent.
class IoThread {
 public:
  IoThread() : work_(io_.get_executor()), thread_([this] { io_.run(); }) {}
  ~IoThread() {
    work_.reset();
    io_.stop();
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  template <class F>
  void Run(F f) {
    asio::post(io_, std::move(f));
  }

 private:
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
};

struct ExecResult {
  std::string out;
  std::promise<Result<ExecExit>> end;
};

std::shared_ptr<AsyncExec> StartExec(IoThread& io, const std::string& path,
                                     std::shared_ptr<ExecResult> result, bool stdin_pipe) {
  std::promise<std::shared_ptr<AsyncExec>> started;
  io.Run([&] {
    ExecStart start;
    start.argv = {"cat"};
    start.stdin_pipe = stdin_pipe;
    AsyncExec::Callbacks callbacks;
    callbacks.on_output = [result](Stream, std::string_view data) { result->out += data; };
    callbacks.on_end = [result](Result<ExecExit> end) { result->end.set_value(std::move(end)); };
    started.set_value(AsyncExec::Start(io.io(), path, start, std::move(callbacks)));
  });
  return started.get_future().get();
}

// The control server's side of a started exec: the connection past the handshake, and the
// client's ExecStart frame, answered with ExecStarted{42}. Empty if any step failed.
struct AcceptedExec {
  UniqueFd peer;
  Frame start;
};
std::optional<AcceptedExec> AcceptExec(FakeControlSocket& server) {
  UniqueFd peer = server.Accept();
  auto start = ReadFrame(peer.Get(), 5000);
  EXPECT_TRUE(start && std::holds_alternative<ExecStart>(start->message));
  if (!start || !std::holds_alternative<ExecStart>(start->message)) return std::nullopt;
  if (!WriteFrame(peer.Get(), Frame{start->id, ExecStarted{42}})) return std::nullopt;
  return AcceptedExec{std::move(peer), std::move(*start)};
}

// How the exec ended, or a timeout error when on_end did not run within 5 s.
Result<ExecExit> WaitForEnd(std::future<Result<ExecExit>>& ended) {
  if (ended.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    return Fail(ErrorCode::kTimeout, "the exec did not end within 5 s");
  }
  return ended.get();
}

TEST(AsyncControlClientTest, ExecStreamsOutputThenItsExit) {
  FakeControlSocket server;
  IoThread io;
  auto result = std::make_shared<ExecResult>();
  auto ended = result->end.get_future();
  auto exec = StartExec(io, server.path(), result, false);
  auto accepted = AcceptExec(server);
  ASSERT_TRUE(accepted);
  const int peer = accepted->peer.Get();
  const uint32_t id = accepted->start.id;
  EXPECT_EQ(std::get<ExecStart>(accepted->start.message).argv, std::vector<std::string>{"cat"});
  ASSERT_TRUE(WriteFrame(peer, Frame{id, Output{Stream::kStdout, "hello "}}));
  ASSERT_TRUE(WriteFrame(peer, Frame{id, Output{Stream::kStdout, "world"}}));
  ASSERT_TRUE(WriteFrame(peer, Frame{id, ExecExit{5, 0, false}}));
  auto exit = WaitForEnd(ended);
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_EQ(exit->exit_code, 5);
  EXPECT_EQ(result->out, "hello world");
  // Done with the exec: the client hung up.
  EXPECT_FALSE(ReadFrame(peer, 5000));
}

TEST(AsyncControlClientTest, ExecStdinStaysWithinTheWindowAndIsAnsweredOnceTaken) {
  FakeControlSocket server;
  IoThread io;
  auto result = std::make_shared<ExecResult>();
  auto ended = result->end.get_future();
  auto exec = StartExec(io, server.path(), result, true);
  auto accepted = AcceptExec(server);
  ASSERT_TRUE(accepted);
  ASSERT_TRUE(std::get<ExecStart>(accepted->start.message).stdin_pipe);
  const int peer = accepted->peer.Get();
  const uint32_t id = accepted->start.id;

  const std::string payload(kStdinWindowBytes + kStdinWindowBytes / 2, 'x');
  std::promise<std::pair<uint64_t, Status>> written;
  io.Run([&] {
    exec->WriteStdin(payload, [&](uint64_t taken, Status s) { written.set_value({taken, s}); });
  });
  auto answer = written.get_future();
  size_t received = 0;
  while (received < kStdinWindowBytes) {
    auto frame = ReadFrame(peer, 5000);
    ASSERT_TRUE(frame && std::holds_alternative<StdinData>(frame->message));
    received += std::get<StdinData>(frame->message).data.size();
  }
  EXPECT_EQ(received, kStdinWindowBytes);
  // The window is full: nothing more until the agent acknowledges, and no answer yet.
  EXPECT_FALSE(Readable(peer, 300));
  EXPECT_EQ(answer.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
  ASSERT_TRUE(WriteFrame(peer, Frame{id, StdinAck{kStdinWindowBytes}}));
  while (received < payload.size()) {
    auto frame = ReadFrame(peer, 5000);
    ASSERT_TRUE(frame && std::holds_alternative<StdinData>(frame->message));
    received += std::get<StdinData>(frame->message).data.size();
  }
  ASSERT_EQ(answer.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto [taken, status] = answer.get();
  EXPECT_TRUE(status);
  EXPECT_EQ(taken, payload.size());

  std::promise<Status> closed;
  io.Run([&] { exec->CloseStdin([&](Status s) { closed.set_value(s); }); });
  EXPECT_TRUE(closed.get_future().get());
  auto close = ReadFrame(peer, 5000);
  EXPECT_TRUE(close && std::holds_alternative<StdinClose>(close->message));
  ASSERT_TRUE(WriteFrame(peer, Frame{id, ExecExit{0, 0, false}}));
  EXPECT_TRUE(WaitForEnd(ended));
}

TEST(AsyncControlClientTest, ALostConnectionEndsTheExecWithAnError) {
  FakeControlSocket server;
  IoThread io;
  auto result = std::make_shared<ExecResult>();
  auto ended = result->end.get_future();
  auto exec = StartExec(io, server.path(), result, true);
  ASSERT_TRUE(AcceptExec(server));  // and the supervisor goes away at once
  auto exit = WaitForEnd(ended);
  ASSERT_FALSE(exit);
  EXPECT_NE(exit.error().message.find("sandbox stopped before the command finished"),
            std::string::npos)
      << exit.error().message;
  // Stdin after the end is refused, not queued.
  std::promise<Status> written;
  io.Run([&] { exec->WriteStdin("late", [&](uint64_t, Status s) { written.set_value(s); }); });
  EXPECT_FALSE(written.get_future().get());
}

TEST(AsyncControlClientTest, AMissingSocketEndsTheExecWithAClearError) {
  IoThread io;
  auto result = std::make_shared<ExecResult>();
  auto ended = result->end.get_future();
  auto exec = StartExec(io, "/nonexistent/control.sock", result, false);
  auto exit = WaitForEnd(ended);
  ASSERT_FALSE(exit);
  EXPECT_NE(exit.error().message.find("not reachable"), std::string::npos) << exit.error().message;
}

TEST(AsyncControlClientTest, CancelKillsTheExecByHangingUp) {
  FakeControlSocket server;
  IoThread io;
  auto result = std::make_shared<ExecResult>();
  auto ended = result->end.get_future();
  auto exec = StartExec(io, server.path(), result, false);
  auto accepted = AcceptExec(server);
  ASSERT_TRUE(accepted);
  io.Run([&] { exec->Cancel(Error{ErrorCode::kCancelled, "the node agent is stopping"}); });
  auto exit = WaitForEnd(ended);
  ASSERT_FALSE(exit);
  EXPECT_EQ(exit.error().code, ErrorCode::kCancelled);
  EXPECT_FALSE(ReadFrame(accepted->peer.Get(), 5000)) << "the control server must see the hang-up";
}

TEST(AsyncControlClientTest, MainStdinSendsOneFrameAtATime) {
  FakeControlSocket server;
  IoThread io;
  std::promise<Error> lost;
  std::promise<std::shared_ptr<AsyncMainStdin>> made;
  io.Run([&] {
    made.set_value(AsyncMainStdin::Start(io.io(), server.path(),
                                         [&](const Error& why) { lost.set_value(why); }));
  });
  auto feeder = made.get_future().get();
  const std::string payload(kMaxChunkBytes * 2 + 10, 'y');
  std::promise<std::pair<uint64_t, Status>> written;
  io.Run([&] {
    feeder->WriteStdin(payload, [&](uint64_t taken, Status s) { written.set_value({taken, s}); });
  });
  UniqueFd peer = server.Accept();
  size_t received = 0;
  for (int frames = 0; frames < 3; ++frames) {
    auto frame = ReadFrame(peer.Get(), 5000);
    ASSERT_TRUE(frame);
    EXPECT_EQ(frame->id, kMainStdinRequestId);
    ASSERT_TRUE(std::holds_alternative<StdinData>(frame->message));
    received += std::get<StdinData>(frame->message).data.size();
    // Nothing more until this frame is answered.
    EXPECT_FALSE(Readable(peer.Get(), 100));
    ASSERT_TRUE(WriteFrame(peer.Get(), Frame{kMainStdinRequestId, protocol::Ok{}}));
  }
  EXPECT_EQ(received, payload.size());
  auto answer = written.get_future();
  ASSERT_EQ(answer.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  auto [taken, status] = answer.get();
  EXPECT_TRUE(status);
  EXPECT_EQ(taken, payload.size());

  // The command ended: the next write gets the supervisor's error, and what it did take.
  std::promise<std::pair<uint64_t, Status>> refused;
  io.Run([&] {
    feeder->WriteStdin("late", [&](uint64_t taken, Status s) { refused.set_value({taken, s}); });
  });
  auto frame = ReadFrame(peer.Get(), 5000);
  ASSERT_TRUE(frame);
  ASSERT_TRUE(WriteFrame(
      peer.Get(), Frame{kMainStdinRequestId, ErrorReply{ErrorKind::kNotFound, "it has ended"}}));
  auto [late_taken, late_status] = refused.get_future().get();
  EXPECT_FALSE(late_status);
  EXPECT_EQ(late_taken, 0u);

  // A close is answered, then the connection ends.
  std::promise<Status> closed;
  io.Run([&] { feeder->CloseStdin([&](Status s) { closed.set_value(s); }); });
  auto close = ReadFrame(peer.Get(), 5000);
  ASSERT_TRUE(close && std::holds_alternative<StdinClose>(close->message));
  ASSERT_TRUE(WriteFrame(peer.Get(), Frame{kMainStdinRequestId, protocol::Ok{}}));
  EXPECT_TRUE(closed.get_future().get());
  auto why = lost.get_future();
  ASSERT_EQ(why.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(why.get().code, ErrorCode::kCancelled);
}

}  // namespace
}  // namespace tartarus::node

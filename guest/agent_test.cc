// End-to-end tests of the guest agent and the host AgentClient: the real tartarus-agent
// binary runs as a child process of the test (as the current user, no container) and the
// two talk the guest protocol over pipes.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/subprocess.h"
#include "common/unique_fd.h"
#include "protocol/client.h"
#include "protocol/codec.h"

namespace tartarus::protocol {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// A running agent: its pid and the host ends of its stdio pipes.
struct AgentProcess {
  Subprocess process;
  UniqueFd from_agent;
  UniqueFd to_agent;

  ~AgentProcess() {
    if (process.pid() > 0) {
      from_agent.Reset();
      to_agent.Reset();
      bool timed_out = false;
      (void)process.WaitFor(5s, &timed_out);
    }
  }
};

// The agent serves on its stdio, or with `on_fds` on fds 3 (in) and 4 (out), as runc
// hands them over with --preserve-fds 2 (stdio then /dev/null).
std::unique_ptr<AgentProcess> StartAgent(bool on_fds = false) {
  int to[2], from[2];
  EXPECT_EQ(pipe2(to, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(from, O_CLOEXEC), 0);
  UniqueFd to_read(to[0]), from_write(from[1]);
  auto agent = std::make_unique<AgentProcess>();
  agent->to_agent.Reset(to[1]);
  agent->from_agent.Reset(from[0]);
  SpawnOptions options;
  options.argv = {TARTARUS_AGENT_PATH, "--stdio"};
  options.fds = {{0, to_read.Get()}, {1, from_write.Get()}};
  if (on_fds) {
    options.argv = {TARTARUS_AGENT_PATH, "--fds", "3,4"};
    options.fds = {{0, -1}, {1, -1}, {3, to_read.Get()}, {4, from_write.Get()}};
  }
  options.die_with_parent = true;
  auto process = Spawn(options);
  EXPECT_TRUE(process) << process.error().message;
  agent->process = std::move(*process);
  return agent;
}

struct RunResult {
  ExecExit exit;
  std::string out;
  std::string err;
};

ExecStart Command(std::vector<std::string> argv) {
  ExecStart start;
  start.argv = std::move(argv);
  start.env = {"PATH=/usr/local/bin:/usr/bin:/bin"};
  return start;
}

ExecStart Shell(const std::string& script) { return Command({"sh", "-c", script}); }

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    agent_ = StartAgent();
    auto client = AgentClient::Connect(std::move(agent_->from_agent), std::move(agent_->to_agent));
    ASSERT_TRUE(client) << client.error().message;
    client_ = std::move(*client);
    char dir[] = "/tmp/agent_test.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override {
    client_.reset();
    agent_.reset();
    (void)RunCommand({"rm", "-rf", dir_});
  }

  RunResult Run(const ExecStart& start) {
    RunResult result;
    std::mutex mutex;
    auto exec = client_->StartExec(start, [&](Stream stream, std::string_view data) {
      std::lock_guard lock(mutex);
      (stream == Stream::kStdout ? result.out : result.err).append(data);
    });
    EXPECT_TRUE(exec) << exec.error().message;
    if (!exec) return result;
    auto exit = (*exec)->Wait();
    EXPECT_TRUE(exit) << exit.error().message;
    if (exit) result.exit = *exit;
    std::lock_guard lock(mutex);
    return result;
  }

  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<AgentClient> client_;
  std::string dir_;
};

TEST_F(AgentTest, Handshake) {
  EXPECT_EQ(client_->protocol_version(), kProtocolVersion);
  EXPECT_FALSE(client_->agent_version().empty());
  EXPECT_TRUE(client_->Connected());
}

TEST_F(AgentTest, ExitCodes) {
  EXPECT_EQ(Run(Command({"true"})).exit.exit_code, 0);
  RunResult r = Run(Shell("exit 3"));
  EXPECT_EQ(r.exit.exit_code, 3);
  EXPECT_EQ(r.exit.signal, 0);
  EXPECT_FALSE(r.exit.timed_out);
}

TEST_F(AgentTest, SignalDeath) {
  RunResult r = Run(Shell("kill -TERM $$"));
  EXPECT_EQ(r.exit.signal, SIGTERM);
  EXPECT_EQ(r.exit.exit_code, 128 + SIGTERM);
}

TEST_F(AgentTest, SeparateStdoutAndStderr) {
  RunResult r = Run(Shell("echo out; echo err >&2; echo out2"));
  EXPECT_EQ(r.out, "out\nout2\n");
  EXPECT_EQ(r.err, "err\n");
}

TEST_F(AgentTest, StdinIsDevNullWithoutPipe) {
  RunResult r = Run(Command({"cat"}));
  EXPECT_EQ(r.exit.exit_code, 0);
  EXPECT_EQ(r.out, "");
}

TEST_F(AgentTest, StdinStreamingBeyondTheWindow) {
  std::string input;
  for (int i = 0; input.size() < 5 * kStdinWindowBytes; ++i) input += std::to_string(i) + "\n";
  ExecStart start = Command({"cat"});
  start.stdin_pipe = true;
  std::string out;
  auto exec = client_->StartExec(start, [&](Stream, std::string_view data) { out.append(data); });
  ASSERT_TRUE(exec) << exec.error().message;
  ASSERT_TRUE((*exec)->WriteStdin(input));
  ASSERT_TRUE((*exec)->CloseStdin());
  auto exit = (*exec)->Wait();
  ASSERT_TRUE(exit);
  EXPECT_EQ(exit->exit_code, 0);
  EXPECT_EQ(out.size(), input.size());
  EXPECT_TRUE(out == input);
}

TEST_F(AgentTest, StdinWriterNeverBlocksWhenTheCommandStopsReading) {
  ExecStart start = Command({"head", "-c", "10"});
  start.stdin_pipe = true;
  std::string out;
  auto exec = client_->StartExec(start, [&](Stream, std::string_view data) { out.append(data); });
  ASSERT_TRUE(exec);
  // Whether the writes succeed or hit the exit, they must not hang.
  (void)(*exec)->WriteStdin(std::string(8 * kStdinWindowBytes, 'x'));
  (void)(*exec)->CloseStdin();
  auto exit = (*exec)->Wait();
  ASSERT_TRUE(exit);
  EXPECT_EQ(out, std::string(10, 'x'));
}

TEST_F(AgentTest, LargeOutputIsByteExact) {
  std::string expected;
  for (int i = 1; i <= 3'000'000; ++i) expected += std::to_string(i) + "\n";
  ASSERT_GT(expected.size(), 20u << 20);
  RunResult r = Run(Command({"seq", "1", "3000000"}));
  EXPECT_EQ(r.exit.exit_code, 0);
  EXPECT_EQ(r.out.size(), expected.size());
  EXPECT_TRUE(r.out == expected);
}

TEST_F(AgentTest, ConcurrentExecs) {
  constexpr int kExecs = 32;
  std::vector<std::thread> threads;
  std::atomic<int> good = 0;
  for (int i = 0; i < kExecs; ++i) {
    threads.emplace_back([&, i] {
      RunResult r =
          Run(Shell("sleep 0.2; echo " + std::to_string(i) + "; exit " + std::to_string(i % 7)));
      if (r.out == std::to_string(i) + "\n" && r.exit.exit_code == i % 7) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good, kExecs);
}

TEST_F(AgentTest, ConcurrentLargeOutputs) {
  std::vector<std::thread> threads;
  std::atomic<int> good = 0;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      RunResult r = Run(Shell("head -c 8000000 /dev/zero"));
      if (r.out == std::string(8'000'000, '\0')) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good, 4);
}

TEST_F(AgentTest, Timeout) {
  ExecStart start = Command({"sleep", "30"});
  start.timeout_ms = 300;
  auto begin = std::chrono::steady_clock::now();
  RunResult r = Run(start);
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
  EXPECT_TRUE(r.exit.timed_out);
  EXPECT_EQ(r.exit.signal, SIGKILL);
}

TEST_F(AgentTest, TimeoutKillsTheWholeGroup) {
  ExecStart start = Shell("sleep 30 & sleep 30 & wait");
  start.timeout_ms = 300;
  auto begin = std::chrono::steady_clock::now();
  RunResult r = Run(start);
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
  EXPECT_TRUE(r.exit.timed_out);
}

TEST_F(AgentTest, BackgroundedGrandchildDoesNotHangTheExec) {
  auto begin = std::chrono::steady_clock::now();
  RunResult r = Run(Shell("sleep 30 & echo done"));
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
  EXPECT_EQ(r.exit.exit_code, 0);
  EXPECT_EQ(r.out, "done\n");
}

TEST_F(AgentTest, EscapedDaemonHoldingThePipeDoesNotHangTheExec) {
  auto begin = std::chrono::steady_clock::now();
  RunResult r = Run(Shell("setsid sleep 3 & echo done"));
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 2500ms);
  EXPECT_EQ(r.out, "done\n");
}

TEST_F(AgentTest, CommandNotFound) {
  RunResult r = Run(Command({"no-such-command-xyz"}));
  EXPECT_EQ(r.exit.exit_code, 127);
  EXPECT_EQ(r.err, "tartarus: no-such-command-xyz: command not found\n");
  r = Run(Command({"/no/such/path"}));
  EXPECT_EQ(r.exit.exit_code, 127);
}

TEST_F(AgentTest, NotExecutable) {
  std::string script = dir_ + "/script";
  ASSERT_TRUE(client_->WriteFile(script, 0644, "#!/bin/sh\necho hi\n"));
  RunResult r = Run(Command({script}));
  EXPECT_EQ(r.exit.exit_code, 126);
  EXPECT_THAT(r.err, HasSubstr("Permission denied"));
  ASSERT_TRUE(client_->WriteFile(script, 0755, "#!/bin/sh\necho hi\n"));
  EXPECT_EQ(Run(Command({script})).out, "hi\n");
}

TEST_F(AgentTest, EnvIsExactAndCwdApplies) {
  ExecStart start = Command({"env"});
  start.env = {"PATH=/usr/bin:/bin", "FOO=bar baz", "EMPTY="};
  RunResult r = Run(start);
  EXPECT_EQ(r.out, "PATH=/usr/bin:/bin\nFOO=bar baz\nEMPTY=\n");
  start = Command({"pwd"});
  start.cwd = dir_;
  EXPECT_EQ(Run(start).out, dir_ + "\n");
}

TEST_F(AgentTest, PathLookupUsesTheExecsPath) {
  std::string tool = dir_ + "/mytool";
  ASSERT_TRUE(client_->WriteFile(tool, 0755, "#!/bin/sh\necho mine\n"));
  ExecStart start = Command({"mytool"});
  start.env = {"PATH=/nonexistent:" + dir_ + ":/bin"};
  EXPECT_EQ(Run(start).out, "mine\n");
}

TEST_F(AgentTest, BadCwdAndUser) {
  ExecStart start = Command({"true"});
  start.cwd = "/no/such/dir";
  RunResult r = Run(start);
  EXPECT_EQ(r.exit.exit_code, 126);
  EXPECT_THAT(r.err, HasSubstr("/no/such/dir"));
  start = Command({"true"});
  start.user = "no-such-user-xyz";
  auto exec = client_->StartExec(start, nullptr);
  ASSERT_FALSE(exec);
  EXPECT_THAT(exec.error().message, HasSubstr("unknown user 'no-such-user-xyz'"));
}

TEST_F(AgentTest, UserSwitching) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  ExecStart start = Command({"id"});
  start.user = "65534:65534";
  RunResult r = Run(start);
  EXPECT_THAT(r.out, HasSubstr("uid=65534"));
  EXPECT_THAT(r.out, HasSubstr("gid=65534"));
  start.user = "nobody";
  EXPECT_THAT(Run(start).out, HasSubstr("uid=65534(nobody)"));
}

TEST_F(AgentTest, CapabilitiesAreDropped) {
  RunResult r = Run(Shell("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)|^NoNewPrivs' /proc/self/status"));
  EXPECT_THAT(r.out, HasSubstr("CapPrm:\t0000000000000000"));
  EXPECT_THAT(r.out, HasSubstr("CapEff:\t0000000000000000"));
  EXPECT_THAT(r.out, HasSubstr("CapInh:\t0000000000000000"));
  EXPECT_THAT(r.out, HasSubstr("CapAmb:\t0000000000000000"));
  EXPECT_THAT(r.out, HasSubstr("NoNewPrivs:\t1"));
  if (geteuid() == 0) {
    EXPECT_THAT(r.out, HasSubstr("CapBnd:\t0000000000000000"));
  }
}

TEST_F(AgentTest, SignalGoesToTheGroup) {
  std::atomic<bool> started = false;
  auto exec = client_->StartExec(Shell("echo ready; sleep 30"),
                                 [&](Stream, std::string_view) { started = true; });
  ASSERT_TRUE(exec);
  EXPECT_GT((*exec)->pid(), 0);
  while (!started) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE((*exec)->SendSignal(SIGTERM));
  auto exit = (*exec)->Wait();
  ASSERT_TRUE(exit);
  EXPECT_EQ(exit->signal, SIGTERM);
}

TEST_F(AgentTest, DroppingTheHandleKillsTheCommand) {
  std::string marker = dir_ + "/marker";
  {
    auto exec = client_->StartExec(Shell("sleep 1; touch " + marker), nullptr);
    ASSERT_TRUE(exec);
  }
  std::this_thread::sleep_for(1500ms);
  EXPECT_FALSE(client_->Stat(marker));
}

TEST_F(AgentTest, FileWriteReadByteExact) {
  std::string contents(3 * 1024 * 1024 + 17, '\0');
  std::mt19937 rng(42);
  for (char& c : contents) c = static_cast<char>(rng());
  std::string path = dir_ + "/sub/dir/blob";
  ASSERT_TRUE(client_->WriteFile(path, 0600, contents, /*make_parents=*/true));
  auto read = client_->ReadFileToString(path);
  ASSERT_TRUE(read) << read.error().message;
  EXPECT_TRUE(*read == contents);
  auto stat = client_->Stat(path);
  ASSERT_TRUE(stat);
  EXPECT_EQ(stat->type, FileType::kRegular);
  EXPECT_EQ(stat->mode, 0600u);
  EXPECT_EQ(stat->size, contents.size());
  EXPECT_GT(stat->mtime_s, 0);
  // An empty file, and overwriting truncates.
  ASSERT_TRUE(client_->WriteFile(path, 0644, ""));
  EXPECT_EQ(client_->ReadFileToString(path).value_or("x"), "");
}

TEST_F(AgentTest, UnreadableSourceLeavesNoPartialFile) {
  UniqueFd dir_fd(open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));  // read(): EISDIR
  auto write = client_->WriteFileFromFd(dir_ + "/partial", 0644, dir_fd.Get());
  ASSERT_FALSE(write);
  EXPECT_THAT(write.error().message, HasSubstr("reading the file to upload"));
  EXPECT_FALSE(client_->Stat(dir_ + "/partial"));
  EXPECT_TRUE(client_->WriteFile(dir_ + "/after", 0644, "ok"));
}

TEST_F(AgentTest, FileTransfersThroughFds) {
  std::string local = dir_ + "/local";
  std::string contents(600'000, 'q');
  {
    UniqueFd fd(open(local.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(WriteAll(fd.Get(), contents));
  }
  UniqueFd in(open(local.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(client_->WriteFileFromFd(dir_ + "/remote", 0644, in.Get()));
  std::string copy = dir_ + "/copy";
  UniqueFd out(open(copy.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(client_->ReadFileToFd(dir_ + "/remote", out.Get()));
  out.Reset();
  EXPECT_EQ(client_->ReadFileToString(copy).value_or(""), contents);
}

TEST_F(AgentTest, FileErrorsNameThePath) {
  auto read = client_->ReadFileToString(dir_ + "/missing");
  ASSERT_FALSE(read);
  EXPECT_EQ(read.error().code, ErrorCode::kNotFound);
  EXPECT_THAT(read.error().message, HasSubstr(dir_ + "/missing"));
  auto write = client_->WriteFile(dir_ + "/no/parent/file", 0644, std::string(2'000'000, 'a'));
  ASSERT_FALSE(write);
  EXPECT_EQ(write.error().code, ErrorCode::kNotFound);
  auto dir_read = client_->ReadFileToString(dir_);
  ASSERT_FALSE(dir_read);
  EXPECT_EQ(dir_read.error().code, ErrorCode::kInvalidArgument);
  auto relative = client_->Stat("relative/path");
  ASSERT_FALSE(relative);
  EXPECT_EQ(relative.error().code, ErrorCode::kInvalidArgument);
  auto long_path = client_->WriteFile("/" + std::string(kMaxStringBytes, 'p'), 0644, "x");
  ASSERT_FALSE(long_path);
  EXPECT_EQ(long_path.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(client_->Stat("/" + std::string(kMaxStringBytes, 'p')));
  // The connection is still fine after all that.
  EXPECT_TRUE(client_->Stat(dir_));
}

TEST_F(AgentTest, MkdirListRemove) {
  ASSERT_TRUE(client_->Mkdir(dir_ + "/a/b/c", 0700, /*make_parents=*/true));
  ASSERT_TRUE(client_->Mkdir(dir_ + "/a/b/c", 0700, /*make_parents=*/true));  // idempotent
  auto again = client_->Mkdir(dir_ + "/a", 0755);
  ASSERT_FALSE(again);
  EXPECT_THAT(again.error().message, HasSubstr("File exists"));
  ASSERT_TRUE(client_->WriteFile(dir_ + "/a/file", 0640, "12345"));
  ASSERT_EQ(symlink("/etc", (dir_ + "/a/link").c_str()), 0);
  auto stat = client_->Stat(dir_ + "/a/b/c");
  ASSERT_TRUE(stat);
  EXPECT_EQ(stat->type, FileType::kDirectory);
  EXPECT_EQ(stat->mode, 0700u);
  EXPECT_EQ(client_->Stat(dir_ + "/a/link")->type, FileType::kSymlink);

  auto entries = client_->List(dir_ + "/a");
  ASSERT_TRUE(entries) << entries.error().message;
  std::map<std::string, DirEntry> by_name;
  for (auto& e : *entries) by_name[e.name] = e;
  ASSERT_EQ(by_name.size(), 3u);
  EXPECT_EQ(by_name["b"].type, FileType::kDirectory);
  EXPECT_EQ(by_name["file"].type, FileType::kRegular);
  EXPECT_EQ(by_name["file"].size, 5u);
  EXPECT_EQ(by_name["file"].mode, 0640u);
  EXPECT_EQ(by_name["link"].type, FileType::kSymlink);

  auto not_empty = client_->Remove(dir_ + "/a");
  ASSERT_FALSE(not_empty);
  ASSERT_TRUE(client_->Remove(dir_ + "/a", /*recursive=*/true));
  EXPECT_FALSE(client_->Stat(dir_ + "/a"));
  EXPECT_TRUE(client_->Stat("/etc/passwd")) << "the symlink target survives";
}

TEST_F(AgentTest, ListManyEntriesInChunks) {
  for (int i = 0; i < 4200; ++i) {  // more than one ListChunk holds
    std::string name = dir_ + "/f" + std::to_string(i);
    close(open(name.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
  }
  auto entries = client_->List(dir_);
  ASSERT_TRUE(entries);
  EXPECT_EQ(entries->size(), 4200u);
}

TEST_F(AgentTest, LowLevelApi) {
  uint32_t id = client_->AllocateId();
  EXPECT_NE(id, 0u);
  EXPECT_NE(client_->AllocateId(), id);
  std::mutex mutex;
  std::condition_variable cv;
  std::optional<Frame> got;
  client_->RegisterHandler(id, [&](const Frame& frame) {
    std::lock_guard lock(mutex);
    got = frame;
    cv.notify_all();
  });
  ASSERT_TRUE(client_->Send(Frame{id, protocol::Stat{"/"}}));
  std::unique_lock lock(mutex);
  ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return got.has_value(); }));
  EXPECT_EQ(got->id, id);
  EXPECT_EQ(std::get<StatResult>(got->message).type, FileType::kDirectory);
  lock.unlock();
  client_->UnregisterHandler(id);
}

TEST_F(AgentTest, AgentKilledMidExec) {
  std::atomic<bool> lost = false;
  client_->SetConnectionLostCallback([&](const Error&) { lost = true; });
  auto exec = client_->StartExec(Command({"sleep", "5"}), nullptr);
  ASSERT_TRUE(exec);
  auto stat_thread = std::thread([&] {
    // Another waiter: a blocked stdin writer on a different exec.
    ExecStart start = Command({"sleep", "5"});
    start.stdin_pipe = true;
    auto blocked = client_->StartExec(start, nullptr);
    if (!blocked) return;
    auto write = (*blocked)->WriteStdin(std::string(4 * kStdinWindowBytes, 'x'));
    EXPECT_FALSE(write);
  });
  std::this_thread::sleep_for(200ms);
  kill(agent_->process.pid(), SIGKILL);
  auto begin = std::chrono::steady_clock::now();
  auto exit = (*exec)->Wait();
  ASSERT_FALSE(exit);
  EXPECT_THAT(exit.error().message, HasSubstr("sandbox stopped before the command finished"));
  stat_thread.join();
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 5s);
  EXPECT_TRUE(lost);
  EXPECT_FALSE(client_->Connected());
  EXPECT_FALSE(client_->Stat("/"));
  EXPECT_FALSE(client_->StartExec(Command({"true"}), nullptr));
}

TEST_F(AgentTest, Shutdown) {
  ASSERT_TRUE(client_->Shutdown());
  bool timed_out = false;
  auto status = agent_->process.WaitFor(5s, &timed_out);
  ASSERT_TRUE(status);
  EXPECT_FALSE(timed_out);
  EXPECT_EQ(status->code, 0);
  agent_->process = Subprocess();
}

// ---- raw protocol against the agent ---------------------------------------------------

class RawAgentTest : public ::testing::Test {
 protected:
  void SetUp() override { agent_ = StartAgent(); }
  void Write(const Frame& frame) { ASSERT_TRUE(WriteFrame(agent_->to_agent.Get(), frame)); }
  Frame Read() {
    auto frame = ReadFrame(agent_->from_agent.Get(), 5000);
    EXPECT_TRUE(frame) << frame.error().message;
    return frame.value_or(Frame{});
  }
  void Handshake() {
    Write({0, Hello{}});
    Frame ready = Read();
    ASSERT_TRUE(std::holds_alternative<Ready>(ready.message));
  }
  ErrorReply ReadError(uint32_t id) {
    Frame frame = Read();
    EXPECT_EQ(frame.id, id);
    auto* error = std::get_if<ErrorReply>(&frame.message);
    EXPECT_NE(error, nullptr) << MessageTypeName(TypeOf(frame.message));
    return error ? *error : ErrorReply{};
  }
  int WaitExit() {
    bool timed_out = false;
    auto status = agent_->process.WaitFor(5s, &timed_out);
    EXPECT_FALSE(timed_out);
    agent_->process = Subprocess();
    return status ? status->code : -1;
  }
  std::unique_ptr<AgentProcess> agent_;
};

TEST_F(RawAgentTest, VersionMismatch) {
  Write({0, Hello{2, 3}});
  ErrorReply error = ReadError(0);
  EXPECT_EQ(error.kind, ErrorKind::kVersionMismatch);
  EXPECT_EQ(error.message, "guest agent speaks protocol version 1, host speaks 2-3");
  EXPECT_NE(WaitExit(), 0);
}

TEST_F(RawAgentTest, RequestsBeforeHelloAreRefused) {
  Write({4, protocol::Stat{"/"}});
  EXPECT_EQ(ReadError(4).kind, ErrorKind::kInvalidArgument);
  Handshake();
}

TEST_F(RawAgentTest, MalformedFramesGetErrorsAndServingContinues) {
  Handshake();
  std::string unknown_type =
      std::string("\x01\0\0\0", 4) + "\xc8" + std::string("\x05\0\0\0", 4) + "x";
  ASSERT_TRUE(WriteAll(agent_->to_agent.Get(), unknown_type));
  ErrorReply error = ReadError(5);
  EXPECT_EQ(error.kind, ErrorKind::kBadFrame);
  EXPECT_THAT(error.message, HasSubstr("frame type 200 is unknown"));
  std::string trailing = std::string("\x01\0\0\0", 4) + "\x0e" + std::string("\0\0\0\0", 4) + "x";
  ASSERT_TRUE(WriteAll(agent_->to_agent.Get(), trailing));
  EXPECT_EQ(ReadError(0).kind, ErrorKind::kBadFrame);
  Write({6, Ready{}});  // an agent-to-host message
  EXPECT_EQ(ReadError(6).kind, ErrorKind::kBadFrame);
  Write({7, StdinData{"x"}});
  EXPECT_EQ(ReadError(7).kind, ErrorKind::kUnknownId);
  Write({8, Signal{SIGTERM}});
  EXPECT_EQ(ReadError(8).kind, ErrorKind::kUnknownId);
  Write({9, FileWriteData{"x"}});
  EXPECT_EQ(ReadError(9).kind, ErrorKind::kUnknownId);
  Write({0, ExecStart{{"true"}}});
  EXPECT_EQ(ReadError(0).kind, ErrorKind::kInvalidArgument);
  Write({10, ExecStart{}});
  EXPECT_EQ(ReadError(10).kind, ErrorKind::kInvalidArgument);
  // Still serving.
  Write({11, protocol::Stat{"/"}});
  Frame stat = Read();
  EXPECT_EQ(stat.id, 11u);
  EXPECT_TRUE(std::holds_alternative<StatResult>(stat.message));
}

TEST_F(RawAgentTest, OversizedFrameIsFatal) {
  Handshake();
  std::string header = std::string("\xff\xff\xff\x7f", 4) + "\x03" + std::string("\x01\0\0\0", 4);
  ASSERT_TRUE(WriteAll(agent_->to_agent.Get(), header));
  EXPECT_EQ(ReadError(0).kind, ErrorKind::kBadFrame);
  EXPECT_NE(WaitExit(), 0);
}

TEST_F(RawAgentTest, TooManyOpenFiles) {
  Handshake();
  char dir[] = "/tmp/agent_raw.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  for (uint32_t i = 1; i <= kMaxOpenFiles; ++i) {
    Write({i, FileWriteOpen{std::string(dir) + "/f" + std::to_string(i), 0644, false}});
  }
  Write({1000, FileWriteOpen{std::string(dir) + "/one-too-many", 0644, false}});
  EXPECT_EQ(ReadError(1000).kind, ErrorKind::kResourceExhausted);
  Write({1, FileWriteClose{}});
  Frame ok = Read();
  EXPECT_EQ(ok.id, 1u);
  EXPECT_TRUE(std::holds_alternative<Ok>(ok.message));
  (void)RunCommand({"rm", "-rf", dir});
}

TEST_F(RawAgentTest, DuplicateIdIsRefused) {
  Handshake();
  Write({3, ExecStart{{"sleep", "5"}, {"PATH=/bin:/usr/bin"}}});
  EXPECT_TRUE(std::holds_alternative<ExecStarted>(Read().message));
  Write({3, ExecStart{{"true"}, {"PATH=/bin:/usr/bin"}}});
  EXPECT_EQ(ReadError(3).kind, ErrorKind::kInvalidArgument);
}

TEST_F(RawAgentTest, HostEofKillsEverythingAndExits) {
  Handshake();
  Write({3, ExecStart{{"sleep", "30"}, {"PATH=/bin:/usr/bin"}}});
  Frame started = Read();
  pid_t pid = std::get<ExecStarted>(started.message).pid;
  agent_->to_agent.Reset();
  EXPECT_EQ(WaitExit(), 0);
  // The command is gone too (killed, and reaped by the agent as its subreaper).
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST_F(RawAgentTest, TooManyExecs) {
  Handshake();
  for (uint32_t i = 1; i <= kMaxConcurrentExecs; ++i) {
    Write({i, ExecStart{{"sleep", "10"}, {"PATH=/bin:/usr/bin"}}});
  }
  for (uint32_t i = 1; i <= kMaxConcurrentExecs; ++i) {
    ASSERT_TRUE(std::holds_alternative<ExecStarted>(Read().message));
  }
  Write({5000, ExecStart{{"true"}, {"PATH=/bin:/usr/bin"}}});
  EXPECT_EQ(ReadError(5000).kind, ErrorKind::kResourceExhausted);
  Write({0, protocol::Shutdown{}});
  EXPECT_TRUE(std::holds_alternative<Ok>(Read().message));
  EXPECT_EQ(WaitExit(), 0);
}

// ---- client handshake against fake agents ---------------------------------------------

// Runs `peer` on the agent side of a pipe pair and connects a client to it.
Result<std::unique_ptr<AgentClient>> ConnectToFake(std::function<void(int in, int out)> peer,
                                                   std::chrono::milliseconds timeout = 2s) {
  int to[2], from[2];
  EXPECT_EQ(pipe2(to, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(from, O_CLOEXEC), 0);
  std::thread fake([=] {
    peer(to[0], from[1]);
    close(to[0]);
    close(from[1]);
  });
  auto client = AgentClient::Connect(UniqueFd(from[0]), UniqueFd(to[1]), {timeout});
  fake.join();
  return client;
}

TEST(ClientHandshakeTest, DeferredHandshakeReportsTheVersionToPendingRequests) {
  std::unique_ptr<AgentClient> client;
  int to[2], from[2];
  ASSERT_EQ(pipe2(to, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(from, O_CLOEXEC), 0);
  auto connected = AgentClient::Connect(UniqueFd(from[0]), UniqueFd(to[1]),
                                        {.handshake_timeout = 2s, .wait_for_ready = false});
  ASSERT_TRUE(connected) << connected.error().message;
  client = std::move(*connected);
  std::thread fake([in = to[0], out = from[1]] {
    (void)ReadFrame(in, 1000);  // Hello
    (void)ReadFrame(in, 1000);  // the ExecStart sent before any answer
    (void)WriteFrame(out, {0, Ready{2, "9.9"}});
    close(in);
    close(out);
  });
  auto exec = client->StartExec(Command({"true"}), nullptr);
  fake.join();
  ASSERT_FALSE(exec);
  EXPECT_EQ(exec.error().message, "guest agent speaks protocol version 2, host speaks 1");
  auto ready = client->WaitReady();
  ASSERT_FALSE(ready);
  EXPECT_EQ(ready.error().message, "guest agent speaks protocol version 2, host speaks 1");
}

TEST(ClientHandshakeTest, DeferredHandshakeTimesOut) {
  int to[2], from[2];
  ASSERT_EQ(pipe2(to, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(from, O_CLOEXEC), 0);
  UniqueFd silent_in(to[0]), silent_out(from[1]);  // the "agent" never answers
  auto client = AgentClient::Connect(UniqueFd(from[0]), UniqueFd(to[1]),
                                     {.handshake_timeout = 100ms, .wait_for_ready = false});
  ASSERT_TRUE(client) << client.error().message;
  auto ready = (*client)->WaitReady();
  ASSERT_FALSE(ready);
  EXPECT_EQ(ready.error().code, ErrorCode::kTimeout);
  EXPECT_FALSE((*client)->Connected());
}

TEST(ClientHandshakeTest, DeferredHandshakeEof) {
  int to[2], from[2];
  ASSERT_EQ(pipe2(to, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(from, O_CLOEXEC), 0);
  UniqueFd agent_in(to[0]);
  close(from[1]);  // the agent died before answering
  auto client = AgentClient::Connect(UniqueFd(from[0]), UniqueFd(to[1]),
                                     {.handshake_timeout = 2s, .wait_for_ready = false});
  ASSERT_TRUE(client) << client.error().message;
  auto ready = (*client)->WaitReady();
  ASSERT_FALSE(ready);
  EXPECT_EQ(ready.error().message, "guest agent closed the connection during handshake");
}

// The real agent answers an ExecStart that arrived together with Hello.
TEST(PipelinedStartTest, ExecSentBeforeReadyRuns) {
  auto agent = StartAgent();
  auto client = AgentClient::Connect(std::move(agent->from_agent), std::move(agent->to_agent),
                                     {.handshake_timeout = 5s, .wait_for_ready = false});
  ASSERT_TRUE(client) << client.error().message;
  std::string out;
  auto exec = (*client)->StartExec(Shell("echo first"),
                                   [&](Stream, std::string_view data) { out.append(data); });
  ASSERT_TRUE(exec) << exec.error().message;
  auto exit = (*exec)->Wait();
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_EQ(exit->exit_code, 0);
  EXPECT_EQ(out, "first\n");
  ASSERT_TRUE((*client)->WaitReady());
  EXPECT_EQ((*client)->protocol_version(), kProtocolVersion);
  EXPECT_FALSE((*client)->agent_version().empty());
}

// --fds: the protocol on inherited fds 3 and 4, which the agent's commands must not inherit.
TEST(FdsModeTest, ServesOnInheritedFdsAndDoesNotLeakThem) {
  auto agent = StartAgent(/*on_fds=*/true);
  auto client = AgentClient::Connect(std::move(agent->from_agent), std::move(agent->to_agent));
  ASSERT_TRUE(client) << client.error().message;
  std::string out;
  auto exec = (*client)->StartExec(
      Shell("for fd in 3 4; do [ -e /proc/self/fd/$fd ] && echo leaked $fd; done; echo done"),
      [&](Stream, std::string_view data) { out.append(data); });
  ASSERT_TRUE(exec) << exec.error().message;
  auto exit = (*exec)->Wait();
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_EQ(out, "done\n");
}

TEST(FdsModeTest, BadFdPairsAreRefused) {
  for (std::string pair : {"1,4", "3,3", "3", "3,x", "40,41", ""}) {
    SpawnOptions options;
    options.argv = {TARTARUS_AGENT_PATH, "--fds", pair};
    options.fds = {{0, -1}, {1, -1}, {2, -1}};
    auto process = Spawn(options);
    ASSERT_TRUE(process) << process.error().message;
    auto status = process->Wait();
    ASSERT_TRUE(status);
    EXPECT_EQ(status->code, 2) << "--fds " << pair;
  }
}

TEST(ClientHandshakeTest, NewerAgent) {
  auto client = ConnectToFake([](int in, int out) {
    (void)ReadFrame(in, 1000);
    (void)WriteFrame(out, {0, Ready{2, "9.9"}});
  });
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().message, "guest agent speaks protocol version 2, host speaks 1");
}

TEST(ClientHandshakeTest, EofDuringHandshake) {
  auto client = ConnectToFake([](int in, int) { (void)ReadFrame(in, 1000); });
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().message, "guest agent closed the connection during handshake");
}

TEST(ClientHandshakeTest, Garbage) {
  auto client = ConnectToFake([](int in, int out) {
    (void)ReadFrame(in, 1000);
    (void)WriteAll(out, "HTTP/1.1 400 Bad Request\r\n\r\n");
  });
  ASSERT_FALSE(client);
  EXPECT_THAT(client.error().message, HasSubstr("guest agent sent garbage during handshake"));
}

TEST(ClientHandshakeTest, Timeout) {
  auto client = ConnectToFake([](int, int) { std::this_thread::sleep_for(500ms); }, 100ms);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().code, ErrorCode::kTimeout);
}

TEST(ClientHandshakeTest, VersionMismatchFromAgent) {
  // The real agent, asked for a version it does not speak, is covered above; here the
  // client relays the agent's explanation.
  auto client = ConnectToFake([](int in, int out) {
    (void)ReadFrame(in, 1000);
    (void)WriteFrame(out, {0, ErrorReply{ErrorKind::kVersionMismatch,
                                         "guest agent speaks protocol version 2, host speaks 1"}});
  });
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().message, "guest agent speaks protocol version 2, host speaks 1");
}

// ---- --listen mode ----------------------------------------------------------------------

TEST(ListenModeTest, ServesConnectionsOneAfterAnother) {
  char dir[] = "/tmp/agent_listen.XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/agent.sock";
  SpawnOptions options;
  options.argv = {TARTARUS_AGENT_PATH, "--listen", path};
  options.die_with_parent = true;
  auto agent = Spawn(options);
  ASSERT_TRUE(agent) << agent.error().message;
  auto connect = [&]() -> Result<std::unique_ptr<AgentClient>> {
    for (int attempt = 0; attempt < 200; ++attempt) {
      UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
      if (::connect(sock.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        UniqueFd write_end(fcntl(sock.Get(), F_DUPFD_CLOEXEC, 0));
        return AgentClient::Connect(std::move(sock), std::move(write_end));
      }
      std::this_thread::sleep_for(10ms);
    }
    return Fail(ErrorCode::kTimeout, "agent socket never appeared");
  };
  for (int round = 0; round < 2; ++round) {
    auto client = connect();
    ASSERT_TRUE(client) << client.error().message;
    std::string out;
    auto exec = (*client)->StartExec(Shell("echo round " + std::to_string(round)),
                                     [&](Stream, std::string_view data) { out.append(data); });
    ASSERT_TRUE(exec);
    auto exit = (*exec)->Wait();
    ASSERT_TRUE(exit);
    EXPECT_EQ(out, "round " + std::to_string(round) + "\n");
    if (round == 1) {
      ASSERT_TRUE((*client)->Shutdown());
    }
  }
  bool timed_out = false;
  auto status = agent->WaitFor(5s, &timed_out);
  ASSERT_TRUE(status);
  EXPECT_FALSE(timed_out);
  EXPECT_EQ(status->code, 0);
  (void)RunCommand({"rm", "-rf", dir});
}

}  // namespace
}  // namespace tartarus::protocol

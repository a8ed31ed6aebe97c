// The guest agent: the event loop and protocol handlers (see agent.h).
#include "guest/agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "guest/child.h"
#include "guest/files.h"

namespace tartarus::guest {

using protocol::ErrorKind;
using protocol::Frame;
using protocol::Message;
using protocol::Stream;

namespace {

// Frames from the host are read in pieces of this size.
constexpr size_t kHostReadBytes = 256 << 10;
// A ListChunk stops growing at this many encoded bytes, well under kMaxPayloadBytes.
constexpr size_t kListChunkBytes = 256 << 10;

void SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

bool HasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

int MillisUntil(std::chrono::steady_clock::time_point when,
                std::chrono::steady_clock::time_point now) {
  if (when <= now) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(when - now).count();
  return static_cast<int>(std::min<int64_t>(ms, 60'000));
}

}  // namespace

Agent::Transfer::~Transfer() {
  if (dir) closedir(dir);
}

Agent::Agent(std::string agent_version) : agent_version_(std::move(agent_version)) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  signal_fd_.Reset(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signal_fd_) std::fprintf(stderr, "tartarus-agent: signalfd: %s\n", std::strerror(errno));
}

Agent::~Agent() { KillAll(); }

// ---- output toward the host ---------------------------------------------------------

void Agent::Send(uint32_t id, Message message) {
  Frame frame{id, std::move(message)};
  // Batch small frames into one buffer so a burst costs one write.
  if (out_queue_.empty() || out_queue_.back().size() >= (64 << 10)) out_queue_.emplace_back();
  std::string& tail = out_queue_.back();
  const size_t before = tail.size();
  if (auto status = protocol::AppendFrame(frame, tail); !status) {
    // Only our own bug can get here (every field we send is bounded); say so on stderr
    // and tell the host something rather than nothing.
    std::fprintf(stderr, "tartarus-agent: %s\n", status.error().message.c_str());
    if (!std::holds_alternative<protocol::ErrorReply>(frame.message)) {
      SendError(id, ErrorKind::kInternal, "agent could not encode a reply");
    }
    return;
  }
  out_bytes_ += tail.size() - before;
}

void Agent::SendError(uint32_t id, ErrorKind kind, std::string message) {
  if (message.size() > protocol::kMaxStringBytes) message.resize(protocol::kMaxStringBytes);
  Send(id, protocol::ErrorReply{kind, std::move(message)});
}

void Agent::SendError(uint32_t id, protocol::ErrorReply reply) {
  SendError(id, reply.kind, std::move(reply.message));
}

bool Agent::FlushOutput() {
  while (!out_queue_.empty()) {
    const std::string& front = out_queue_.front();
    ssize_t n = write(out_fd_, front.data() + out_offset_, front.size() - out_offset_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return true;
      return false;
    }
    out_offset_ += static_cast<size_t>(n);
    out_bytes_ -= static_cast<size_t>(n);
    if (out_offset_ == front.size()) {
      out_queue_.pop_front();
      out_offset_ = 0;
    }
  }
  return true;
}

void Agent::FlushOutputFor(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (!out_queue_.empty()) {
    if (!FlushOutput()) return;
    if (out_queue_.empty()) return;
    auto now = Clock::now();
    if (now >= deadline) return;
    pollfd p{out_fd_, POLLOUT, 0};
    poll(&p, 1, MillisUntil(deadline, now));
  }
}

// ---- the loop -------------------------------------------------------------------------

Agent::End Agent::Serve(int in_fd, int out_fd) {
  in_fd_ = in_fd;
  out_fd_ = out_fd;
  SetNonBlocking(in_fd_);
  SetNonBlocking(out_fd_);
  enum class Slot { kHostIn, kHostOut, kSignal, kStdout, kStderr, kStdin };
  std::vector<pollfd> fds;
  std::vector<std::pair<Slot, uint32_t>> slots;
  auto add = [&](int fd, short events, Slot slot, uint32_t id) {
    fds.push_back(pollfd{fd, events, 0});
    slots.emplace_back(slot, id);
  };

  while (!end_) {
    fds.clear();
    slots.clear();
    if (out_bytes_ < kHostInputPauseBytes) add(in_fd_, POLLIN, Slot::kHostIn, 0);
    if (out_bytes_ > 0) add(out_fd_, POLLOUT, Slot::kHostOut, 0);
    if (signal_fd_) add(signal_fd_.Get(), POLLIN, Slot::kSignal, 0);
    const bool room = OutputHasRoom();
    const auto now = Clock::now();
    int timeout_ms = -1;
    auto wake_at = [&](Clock::time_point when) {
      int ms = MillisUntil(when, now);
      if (timeout_ms < 0 || ms < timeout_ms) timeout_ms = ms;
    };
    for (auto& [id, exec] : execs_) {
      if (room && exec->stdout_fd) add(exec->stdout_fd.Get(), POLLIN, Slot::kStdout, id);
      if (room && exec->stderr_fd) add(exec->stderr_fd.Get(), POLLIN, Slot::kStderr, id);
      if (exec->stdin_fd && !exec->stdin_queue.empty()) {
        add(exec->stdin_fd.Get(), POLLOUT, Slot::kStdin, id);
      }
      if (!exec->exited && exec->deadline && !exec->timed_out) wake_at(*exec->deadline);
      // Without room, the host draining the queue wakes us instead (no busy loop).
      if (exec->exited && room && (exec->stdout_fd || exec->stderr_fd)) {
        wake_at(exec->exit_time + kDrainGrace);
      }
    }
    if (room) {
      for (auto& [id, transfer] : transfers_) {
        if (transfer->kind != Transfer::Kind::kWrite) timeout_ms = 0;
      }
    }
    if (!signal_fd_) wake_at(now + std::chrono::milliseconds(50));  // reap by polling

    int ready = poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0 && errno != EINTR) {
      std::fprintf(stderr, "tartarus-agent: poll: %s\n", std::strerror(errno));
      end_ = End::kHostClosed;
      break;
    }
    for (size_t i = 0; ready > 0 && i < fds.size() && !end_; ++i) {
      if (fds[i].revents == 0) continue;
      auto [slot, id] = slots[i];
      switch (slot) {
        case Slot::kHostIn:
          if (!ReadHost() && !end_) end_ = End::kHostClosed;
          break;
        case Slot::kHostOut:
          if (!FlushOutput()) end_ = End::kHostClosed;
          break;
        case Slot::kSignal:
          ReapChildren();
          break;
        case Slot::kStdout:
        case Slot::kStderr:
          if (auto it = execs_.find(id); it != execs_.end()) {
            ReadPipe(*it->second, slot == Slot::kStdout ? Stream::kStdout : Stream::kStderr, false);
          }
          break;
        case Slot::kStdin:
          if (auto it = execs_.find(id); it != execs_.end()) WriteStdin(*it->second);
          break;
      }
    }
    if (end_) break;
    if (!signal_fd_) ReapChildren();
    PumpTransfers();
    CheckExecs(Clock::now());
    if (out_bytes_ > 0 && !FlushOutput()) end_ = End::kHostClosed;
  }
  const End end = *end_;
  KillAll();
  // A host that only closed its sending side still gets the replies (bounded wait; a
  // vanished host fails the write at once).
  FlushOutputFor(std::chrono::seconds(end == End::kHostClosed ? 1 : 2));
  return end;
}

// ---- host input -----------------------------------------------------------------------

bool Agent::ReadHost() {
  static char buffer[kHostReadBytes];
  ssize_t n = read(in_fd_, buffer, sizeof buffer);
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (n == 0) return false;
  decoder_.Feed(std::string_view(buffer, static_cast<size_t>(n)));
  while (!end_) {
    protocol::DecodeEvent event = decoder_.Next();
    switch (event.kind) {
      case protocol::DecodeEvent::Kind::kNeedMore:
        return true;
      case protocol::DecodeEvent::Kind::kFrame:
        Dispatch(event.frame);
        break;
      case protocol::DecodeEvent::Kind::kBadFrame:
        SendError(event.id, ErrorKind::kBadFrame, "malformed frame: " + event.error);
        break;
      case protocol::DecodeEvent::Kind::kFatal:
        std::fprintf(stderr, "tartarus-agent: host stream broken: %s\n", event.error.c_str());
        SendError(0, ErrorKind::kBadFrame, "host stream broken: " + event.error);
        end_ = End::kFatal;
        return true;
    }
  }
  return true;
}

void Agent::Dispatch(Frame& frame) {
  const uint32_t id = frame.id;
  Message& m = frame.message;
  if (auto* hello = std::get_if<protocol::Hello>(&m)) return OnHello(id, *hello);
  if (!negotiated_) {
    return SendError(
        id, ErrorKind::kInvalidArgument,
        "expected Hello first, got " + std::string(protocol::MessageTypeName(protocol::TypeOf(m))));
  }
  if (auto* x = std::get_if<protocol::ExecStart>(&m)) return OnExecStart(id, *x);
  if (auto* x = std::get_if<protocol::StdinData>(&m)) return OnStdinData(id, *x);
  if (std::holds_alternative<protocol::StdinClose>(m)) return OnStdinClose(id);
  if (auto* x = std::get_if<protocol::Signal>(&m)) return OnSignal(id, *x);
  if (auto* x = std::get_if<protocol::FileWriteOpen>(&m)) return OnFileWriteOpen(id, *x);
  if (auto* x = std::get_if<protocol::FileWriteData>(&m)) return OnFileWriteData(id, *x);
  if (std::holds_alternative<protocol::FileWriteClose>(m)) return OnFileWriteClose(id);
  if (auto* x = std::get_if<protocol::FileRead>(&m)) return OnFileRead(id, *x);
  if (auto* x = std::get_if<protocol::Stat>(&m)) return OnStat(id, *x);
  if (auto* x = std::get_if<protocol::List>(&m)) return OnList(id, *x);
  if (auto* x = std::get_if<protocol::Mkdir>(&m)) return OnMkdir(id, *x);
  if (auto* x = std::get_if<protocol::Remove>(&m)) return OnRemove(id, *x);
  if (std::holds_alternative<protocol::Shutdown>(m)) {
    KillAll();
    Send(id, protocol::Ok{});
    end_ = End::kShutdown;
    return;
  }
  SendError(id, ErrorKind::kBadFrame,
            std::string(protocol::MessageTypeName(protocol::TypeOf(m))) +
                " is not a host-to-agent message");
}

void Agent::OnHello(uint32_t id, const protocol::Hello& hello) {
  if (negotiated_) return SendError(id, ErrorKind::kInvalidArgument, "Hello sent twice");
  if (hello.min_version > protocol::kProtocolVersion ||
      hello.max_version < protocol::kProtocolVersion || hello.min_version > hello.max_version) {
    std::string host = std::to_string(hello.min_version);
    if (hello.max_version != hello.min_version) host += "-" + std::to_string(hello.max_version);
    SendError(id, ErrorKind::kVersionMismatch,
              "guest agent speaks protocol version " + std::to_string(protocol::kProtocolVersion) +
                  ", host speaks " + host);
    end_ = End::kVersionMismatch;
    return;
  }
  negotiated_ = true;
  Send(id, protocol::Ready{protocol::kProtocolVersion, agent_version_});
}

bool Agent::CheckNewId(uint32_t id) {
  if (id == 0) {
    SendError(id, ErrorKind::kInvalidArgument, "request id 0 is reserved for the connection");
    return false;
  }
  if (execs_.count(id) || transfers_.count(id)) {
    SendError(id, ErrorKind::kInvalidArgument, "id " + std::to_string(id) + " is already in use");
    return false;
  }
  return true;
}

// ---- exec -----------------------------------------------------------------------------

void Agent::OnExecStart(uint32_t id, protocol::ExecStart& start) {
  if (!CheckNewId(id)) return;
  if (execs_.size() >= protocol::kMaxConcurrentExecs) {
    return SendError(
        id, ErrorKind::kResourceExhausted,
        "too many running commands (limit " + std::to_string(protocol::kMaxConcurrentExecs) + ")");
  }
  if (start.argv.empty() || start.argv[0].empty()) {
    return SendError(id, ErrorKind::kInvalidArgument, "exec: empty command");
  }
  for (const auto* list : {&start.argv, &start.env}) {
    for (const std::string& s : *list) {
      if (HasNul(s))
        return SendError(id, ErrorKind::kInvalidArgument,
                         "exec: argument or environment entry contains a NUL byte");
    }
  }
  ChildSpec spec;
  spec.cwd = start.cwd.empty() ? "/" : start.cwd;
  if (std::string problem = CheckPath(spec.cwd); !problem.empty()) {
    return SendError(id, ErrorKind::kInvalidArgument, "exec: working directory: " + problem);
  }
  auto credentials = ResolveUser(start.user);
  if (!credentials) {
    return SendError(id,
                     credentials.error().code == ErrorCode::kNotFound ? ErrorKind::kNotFound
                                                                      : ErrorKind::kInvalidArgument,
                     "exec: " + credentials.error().message);
  }
  spec.credentials = std::move(*credentials);

  int out[2], err[2], in[2] = {-1, -1};
  if (pipe2(out, O_CLOEXEC) < 0) return SendError(id, ErrnoReply("exec: pipe", "", errno));
  UniqueFd out_read(out[0]), out_write(out[1]);
  if (pipe2(err, O_CLOEXEC) < 0) return SendError(id, ErrnoReply("exec: pipe", "", errno));
  UniqueFd err_read(err[0]), err_write(err[1]);
  UniqueFd in_read, in_write;
  if (start.stdin_pipe) {
    if (pipe2(in, O_CLOEXEC) < 0) return SendError(id, ErrnoReply("exec: pipe", "", errno));
    in_read.Reset(in[0]);
    in_write.Reset(in[1]);
  } else {
    in_read.Reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!in_read) {  // no /dev/null yet: an empty pipe reads as end of file too
      if (pipe2(in, O_CLOEXEC) < 0) return SendError(id, ErrnoReply("exec: pipe", "", errno));
      in_read.Reset(in[0]);
      close(in[1]);
    }
  }
  spec.argv = std::move(start.argv);
  spec.env = std::move(start.env);
  spec.stdin_fd = in_read.Get();
  spec.stdout_fd = out_write.Get();
  spec.stderr_fd = err_write.Get();
  spec.agent_pid = getpid();

  pid_t pid = fork();
  if (pid < 0) return SendError(id, ErrnoReply("exec: fork", "", errno));
  if (pid == 0) RunChild(spec);
  setpgid(pid, pid);  // also done in the child: whichever runs first wins the race

  auto exec = std::make_unique<Exec>();
  exec->id = id;
  exec->pid = pid;
  exec->stdout_fd = std::move(out_read);
  exec->stderr_fd = std::move(err_read);
  SetNonBlocking(exec->stdout_fd.Get());
  SetNonBlocking(exec->stderr_fd.Get());
  if (start.stdin_pipe) {
    exec->has_stdin_pipe = true;
    exec->stdin_fd = std::move(in_write);
    SetNonBlocking(exec->stdin_fd.Get());
  }
  if (start.timeout_ms > 0) {
    // Clamp so that absurd timeouts cannot overflow the clock.
    uint64_t ms = std::min<uint64_t>(start.timeout_ms, 100ull * 365 * 24 * 3600 * 1000);
    exec->deadline = Clock::now() + std::chrono::milliseconds(ms);
  }
  exec_by_pid_[pid] = id;
  execs_[id] = std::move(exec);
  Send(id, protocol::ExecStarted{pid});
}

void Agent::OnStdinData(uint32_t id, protocol::StdinData& data) {
  auto it = execs_.find(id);
  if (it == execs_.end()) {
    return SendError(id, ErrorKind::kUnknownId, "stdin for unknown exec " + std::to_string(id));
  }
  Exec& exec = *it->second;
  if (!exec.has_stdin_pipe) {
    return SendError(id, ErrorKind::kInvalidArgument,
                     "exec " + std::to_string(id) + " has no stdin pipe");
  }
  if (exec.stdin_close_requested) {
    return SendError(id, ErrorKind::kInvalidArgument,
                     "stdin of exec " + std::to_string(id) + " is closed");
  }
  if (data.data.empty()) return;
  if (!exec.stdin_fd) {
    // The command closed its stdin (or is gone): the bytes are consumed, as a pipe to a
    // dead reader would; acknowledge so the host never waits for credit forever.
    return AckStdin(exec, data.data.size());
  }
  if (exec.stdin_pending_bytes + data.data.size() > protocol::kStdinWindowBytes) {
    return SendError(id, ErrorKind::kResourceExhausted,
                     "stdin window of " + std::to_string(protocol::kStdinWindowBytes) +
                         " bytes exceeded; data dropped");
  }
  exec.stdin_pending_bytes += data.data.size();
  exec.stdin_queue.push_back(std::move(data.data));
  WriteStdin(exec);
}

void Agent::OnStdinClose(uint32_t id) {
  auto it = execs_.find(id);
  if (it == execs_.end()) {
    return SendError(id, ErrorKind::kUnknownId,
                     "stdin close for unknown exec " + std::to_string(id));
  }
  Exec& exec = *it->second;
  exec.stdin_close_requested = true;
  if (exec.stdin_queue.empty()) exec.stdin_fd.Reset();
}

void Agent::AckStdin(Exec& exec, size_t bytes) {
  if (bytes > 0) Send(exec.id, protocol::StdinAck{static_cast<uint32_t>(bytes)});
}

void Agent::WriteStdin(Exec& exec) {
  size_t written = 0;
  while (exec.stdin_fd && !exec.stdin_queue.empty()) {
    const std::string& front = exec.stdin_queue.front();
    ssize_t n = write(exec.stdin_fd.Get(), front.data() + exec.stdin_offset,
                      front.size() - exec.stdin_offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      // EPIPE: the command closed its stdin. Everything queued counts as consumed.
      written += exec.stdin_pending_bytes;
      exec.stdin_queue.clear();
      exec.stdin_offset = 0;
      exec.stdin_pending_bytes = 0;
      exec.stdin_fd.Reset();
      break;
    }
    written += static_cast<size_t>(n);
    exec.stdin_pending_bytes -= static_cast<size_t>(n);
    exec.stdin_offset += static_cast<size_t>(n);
    if (exec.stdin_offset == front.size()) {
      exec.stdin_queue.pop_front();
      exec.stdin_offset = 0;
    }
  }
  if (exec.stdin_close_requested && exec.stdin_queue.empty()) exec.stdin_fd.Reset();
  AckStdin(exec, written);
}

void Agent::OnSignal(uint32_t id, const protocol::Signal& signal) {
  auto it = execs_.find(id);
  if (it == execs_.end()) {
    return SendError(id, ErrorKind::kUnknownId, "signal for unknown exec " + std::to_string(id));
  }
  if (signal.signo <= 0 || signal.signo >= NSIG) {
    return SendError(id, ErrorKind::kInvalidArgument,
                     "invalid signal " + std::to_string(signal.signo));
  }
  // After the main process exited its group was killed, and the pid may be reused.
  if (it->second->exited) return;
  if (kill(-it->second->pid, signal.signo) < 0 && errno != ESRCH) {
    SendError(id, ErrnoReply("signal", "process group " + std::to_string(it->second->pid), errno));
  }
}

void Agent::ReapChildren() {
  if (signal_fd_) {
    signalfd_siginfo info;
    while (read(signal_fd_.Get(), &info, sizeof info) == sizeof info) {
    }
  }
  // Every child, ours or reparented orphans: PID 1 must leave no zombie behind.
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    auto found = exec_by_pid_.find(pid);
    if (found == exec_by_pid_.end()) continue;
    auto it = execs_.find(found->second);
    exec_by_pid_.erase(found);
    if (it == execs_.end()) continue;
    Exec& exec = *it->second;
    exec.exited = true;
    exec.wait_status = status;
    exec.exit_time = Clock::now();
    // Whatever the command left running in its group would hold the pipes open forever.
    kill(-exec.pid, SIGKILL);
  }
}

void Agent::ReadPipe(Exec& exec, Stream stream, bool closing_when_empty) {
  static char buffer[protocol::kMaxChunkBytes];
  UniqueFd& fd = stream == Stream::kStdout ? exec.stdout_fd : exec.stderr_fd;
  if (!fd) return;
  ssize_t n = read(fd.Get(), buffer, sizeof buffer);
  if (n > 0) {
    Send(exec.id, protocol::Output{stream, std::string(buffer, static_cast<size_t>(n))});
    return;
  }
  if (n < 0 && errno == EINTR) return;
  if (n < 0 && errno == EAGAIN && !closing_when_empty) return;
  fd.Reset();  // end of file, error, or drained after exit
}

void Agent::CheckExecs(Clock::time_point now) {
  for (auto it = execs_.begin(); it != execs_.end();) {
    Exec& exec = *it->second;
    if (!exec.exited && exec.deadline && !exec.timed_out && now >= *exec.deadline) {
      exec.timed_out = true;
      kill(-exec.pid, SIGKILL);
      kill(exec.pid, SIGKILL);
    }
    if (exec.exited && (exec.stdout_fd || exec.stderr_fd)) {
      bool group_gone = kill(-exec.pid, 0) < 0 && errno == ESRCH;
      if (group_gone || now >= exec.exit_time + kDrainGrace) {
        // Take what is already in the pipes, then stop waiting for end of file: a process
        // outside the group (setsid) may hold them open forever.
        while (OutputHasRoom() && exec.stdout_fd) ReadPipe(exec, Stream::kStdout, true);
        while (OutputHasRoom() && exec.stderr_fd) ReadPipe(exec, Stream::kStderr, true);
      }
    }
    if (exec.exited && !exec.stdout_fd && !exec.stderr_fd) {
      protocol::ExecExit exit;
      if (WIFEXITED(exec.wait_status)) {
        exit.exit_code = WEXITSTATUS(exec.wait_status);
      } else if (WIFSIGNALED(exec.wait_status)) {
        exit.signal = WTERMSIG(exec.wait_status);
        exit.exit_code = 128 + exit.signal;
      }
      exit.timed_out = exec.timed_out;
      Send(exec.id, exit);
      it = execs_.erase(it);
      continue;
    }
    ++it;
  }
}

void Agent::KillAll() {
  for (auto& [id, exec] : execs_) {
    if (exec->exited) continue;  // its group was killed when it exited
    kill(-exec->pid, SIGKILL);
    kill(exec->pid, SIGKILL);
  }
  // Reap what we killed so no zombie outlives its connection (bounded: a process stuck in
  // the kernel must not hang the agent).
  auto deadline = Clock::now() + std::chrono::seconds(2);
  while (!exec_by_pid_.empty() && Clock::now() < deadline) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      exec_by_pid_.erase(pid);
    } else if (pid == 0) {
      usleep(1000);
    } else {
      break;
    }
  }
  exec_by_pid_.clear();
  execs_.clear();
  transfers_.clear();
}

// ---- files ----------------------------------------------------------------------------

bool Agent::CheckNewTransfer(uint32_t id, const std::string& path) {
  if (!CheckNewId(id)) return false;
  if (std::string problem = CheckPath(path); !problem.empty()) {
    SendError(id, ErrorKind::kInvalidArgument, problem);
    return false;
  }
  if (transfers_.size() >= protocol::kMaxOpenFiles) {
    SendError(
        id, ErrorKind::kResourceExhausted,
        "too many open file transfers (limit " + std::to_string(protocol::kMaxOpenFiles) + ")");
    return false;
  }
  return true;
}

void Agent::OnFileWriteOpen(uint32_t id, const protocol::FileWriteOpen& open_msg) {
  if (!CheckNewTransfer(id, open_msg.path)) return;
  const std::string& path = open_msg.path;
  if (open_msg.make_parents) {
    if (int err = MakeParents(path))
      return SendError(id, ErrnoReply("create parents of", path, err));
  }
  // O_NONBLOCK: opening a FIFO must not hang the agent; only regular files are written.
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
                   open_msg.mode & 07777));
  if (!fd) return SendError(id, ErrnoReply("open", path, errno));
  struct stat st;
  if (fstat(fd.Get(), &st) < 0) return SendError(id, ErrnoReply("stat", path, errno));
  if (!S_ISREG(st.st_mode)) {
    return SendError(id, ErrorKind::kInvalidArgument, "write " + path + ": not a regular file");
  }
  if (fchmod(fd.Get(), open_msg.mode & 07777) < 0) {
    return SendError(id, ErrnoReply("chmod", path, errno));
  }
  fcntl(fd.Get(), F_SETFL, fcntl(fd.Get(), F_GETFL) & ~O_NONBLOCK);
  auto transfer = std::make_unique<Transfer>();
  transfer->kind = Transfer::Kind::kWrite;
  transfer->path = path;
  transfer->fd = std::move(fd);
  transfers_[id] = std::move(transfer);
}

void Agent::OnFileWriteData(uint32_t id, const protocol::FileWriteData& data) {
  auto it = transfers_.find(id);
  if (it == transfers_.end() || it->second->kind != Transfer::Kind::kWrite) {
    return SendError(id, ErrorKind::kUnknownId,
                     "file data for unknown transfer " + std::to_string(id));
  }
  std::string_view bytes = data.data;
  while (!bytes.empty()) {
    ssize_t n = write(it->second->fd.Get(), bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      SendError(id, ErrnoReply("write", it->second->path, err));
      transfers_.erase(it);
      return;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

void Agent::OnFileWriteClose(uint32_t id) {
  auto it = transfers_.find(id);
  if (it == transfers_.end() || it->second->kind != Transfer::Kind::kWrite) {
    return SendError(id, ErrorKind::kUnknownId,
                     "file close for unknown transfer " + std::to_string(id));
  }
  std::unique_ptr<Transfer> transfer = std::move(it->second);
  transfers_.erase(it);
  if (close(transfer->fd.Release()) < 0)
    return SendError(id, ErrnoReply("close", transfer->path, errno));
  Send(id, protocol::Ok{});
}

void Agent::OnFileRead(uint32_t id, const protocol::FileRead& read_msg) {
  if (!CheckNewTransfer(id, read_msg.path)) return;
  const std::string& path = read_msg.path;
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) return SendError(id, ErrnoReply("open", path, errno));
  struct stat st;
  if (fstat(fd.Get(), &st) < 0) return SendError(id, ErrnoReply("stat", path, errno));
  if (S_ISDIR(st.st_mode)) return SendError(id, ErrnoReply("read", path, EISDIR));
  if (!S_ISREG(st.st_mode)) {
    return SendError(id, ErrorKind::kInvalidArgument, "read " + path + ": not a regular file");
  }
  auto transfer = std::make_unique<Transfer>();
  transfer->kind = Transfer::Kind::kRead;
  transfer->path = path;
  transfer->fd = std::move(fd);
  transfers_[id] = std::move(transfer);
}

void Agent::OnList(uint32_t id, const protocol::List& list) {
  if (!CheckNewTransfer(id, list.path)) return;
  int fd = open(list.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return SendError(id, ErrnoReply("list", list.path, errno));
  DIR* dir = fdopendir(fd);
  if (!dir) {
    int err = errno;
    close(fd);
    return SendError(id, ErrnoReply("list", list.path, err));
  }
  auto transfer = std::make_unique<Transfer>();
  transfer->kind = Transfer::Kind::kList;
  transfer->path = list.path;
  transfer->dir = dir;
  transfers_[id] = std::move(transfer);
}

void Agent::PumpTransfers() {
  // Round robin, one chunk per transfer per pass, while the output queue has room.
  bool progress = true;
  while (progress && OutputHasRoom()) {
    progress = false;
    for (auto it = transfers_.begin(); it != transfers_.end() && OutputHasRoom();) {
      auto next = std::next(it);
      if (it->second->kind == Transfer::Kind::kRead) {
        PumpRead(it->first, *it->second);
        progress = true;
      } else if (it->second->kind == Transfer::Kind::kList) {
        PumpList(it->first, *it->second);
        progress = true;
      }
      it = next;  // PumpRead / PumpList may erase `it`, never `next`
    }
  }
}

void Agent::PumpRead(uint32_t id, Transfer& transfer) {
  static char buffer[protocol::kMaxChunkBytes];
  ssize_t n = read(transfer.fd.Get(), buffer, sizeof buffer);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n < 0) {
    SendError(id, ErrnoReply("read", transfer.path, errno));
  } else if (n == 0) {
    Send(id, protocol::FileEnd{});
  } else {
    Send(id, protocol::FileData{std::string(buffer, static_cast<size_t>(n))});
    return;
  }
  transfers_.erase(id);
}

void Agent::PumpList(uint32_t id, Transfer& transfer) {
  protocol::ListChunk chunk;
  size_t bytes = 0;
  while (chunk.entries.size() < protocol::kMaxListItems && bytes < kListChunkBytes) {
    errno = 0;
    dirent* entry = readdir(transfer.dir);
    if (!entry) {
      if (errno != 0) {
        SendError(id, ErrnoReply("list", transfer.path, errno));
        transfers_.erase(id);
        return;
      }
      chunk.last = true;
      break;
    }
    if (std::strcmp(entry->d_name, ".") == 0 || std::strcmp(entry->d_name, "..") == 0) continue;
    protocol::DirEntry item;
    item.name = entry->d_name;
    struct stat st;
    if (fstatat(dirfd(transfer.dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      item.type = TypeOfMode(st.st_mode);
      item.mode = st.st_mode & 07777;
      item.size = static_cast<uint64_t>(st.st_size);
    }
    bytes += item.name.size() + 17;
    chunk.entries.push_back(std::move(item));
  }
  const bool last = chunk.last;
  Send(id, std::move(chunk));
  if (last) transfers_.erase(id);
}

void Agent::OnStat(uint32_t id, const protocol::Stat& stat_msg) {
  if (std::string problem = CheckPath(stat_msg.path); !problem.empty()) {
    return SendError(id, ErrorKind::kInvalidArgument, problem);
  }
  struct stat st;
  if (lstat(stat_msg.path.c_str(), &st) < 0)
    return SendError(id, ErrnoReply("stat", stat_msg.path, errno));
  Send(id,
       protocol::StatResult{TypeOfMode(st.st_mode), static_cast<uint32_t>(st.st_mode & 07777),
                            static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtime)});
}

void Agent::OnMkdir(uint32_t id, const protocol::Mkdir& mkdir_msg) {
  if (std::string problem = CheckPath(mkdir_msg.path); !problem.empty()) {
    return SendError(id, ErrorKind::kInvalidArgument, problem);
  }
  const mode_t mode = mkdir_msg.mode & 07777;
  int err = 0;
  if (mkdir_msg.make_parents) {
    err = MakeDirs(mkdir_msg.path, mode);
  } else if (mkdir(mkdir_msg.path.c_str(), mode) < 0) {
    err = errno;
  }
  if (err) return SendError(id, ErrnoReply("mkdir", mkdir_msg.path, err));
  Send(id, protocol::Ok{});
}

void Agent::OnRemove(uint32_t id, const protocol::Remove& remove_msg) {
  const std::string& path = remove_msg.path;
  if (std::string problem = CheckPath(path); !problem.empty()) {
    return SendError(id, ErrorKind::kInvalidArgument, problem);
  }
  if (path.find_first_not_of('/') == std::string::npos) {
    return SendError(id, ErrorKind::kInvalidArgument, "refusing to remove /");
  }
  int err = 0;
  if (remove_msg.recursive) {
    err = RemoveTree(path);
  } else {
    struct stat st;
    if (lstat(path.c_str(), &st) < 0) {
      err = errno;
    } else if (S_ISDIR(st.st_mode) ? rmdir(path.c_str()) < 0 : unlink(path.c_str()) < 0) {
      err = errno;
    }
  }
  if (err) return SendError(id, ErrnoReply("remove", path, err));
  Send(id, protocol::Ok{});
}

}  // namespace tartarus::guest

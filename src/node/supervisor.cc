#include "node/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "common/units.h"
#include "node/control_server.h"
#include "protocol/codec.h"
#include "runtime/owner.h"

namespace tartarus::node {
namespace {

constexpr auto kAgentHandshakeTimeout = std::chrono::seconds(20);
// The agent enforces the timeout; the supervisor steps in this much later if it has not.
constexpr auto kTimeoutBackstopGrace = std::chrono::seconds(5);

UniqueFd OpenLog(const std::string& path) {
  return UniqueFd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
}

// Appends to a capped log; the first write past the cap leaves a marker instead.
void AppendCapped(int fd, uint64_t& written, std::string_view data) {
  if (fd < 0 || written > kMaxLogBytes) return;
  uint64_t room = kMaxLogBytes - written;
  std::string_view part = data.substr(0, std::min<uint64_t>(room, data.size()));
  if (!part.empty()) (void)protocol::WriteAll(fd, part);
  written += part.size();
  if (part.size() < data.size()) {
    (void)protocol::WriteAll(fd,
                             "\n[tartarus: log truncated at " + FormatBytes(kMaxLogBytes) + "]\n");
    written = kMaxLogBytes + 1;
  }
}

struct ExitOutcome {
  int exit_code;
  int signal;
  bool timed_out;
};

}  // namespace

Supervisor::Supervisor(SandboxStore& store, runtime::Backend& backend, Launch launch)
    : store_(store), backend_(backend), launch_(std::move(launch)), record_(launch_.record) {}

Supervisor::~Supervisor() { Teardown(); }

Status Supervisor::Start() {
  stdout_log_ = OpenLog(store_.StdoutLog(record_.id));
  stderr_log_ = OpenLog(store_.StderrLog(record_.id));
  record_.supervisor_pid = getpid();
  record_.supervisor_start_time = runtime::ProcessStartTime(getpid()).value_or(0);
  (void)store_.Save(record_);

  auto fail = [&](const Error& error) -> Status {
    Teardown();
    std::lock_guard lock(mutex_);
    record_.state = killed_ ? kill_state_ : SandboxState::kFailed;
    record_.error = killed_ ? kill_reason_ : error.message;
    record_.finished_ms = NowMs();
    (void)store_.Save(record_);
    return Fail(killed_ ? Error{ErrorCode::kCancelled, kill_reason_} : error);
  };

  auto sandbox = backend_.Start(launch_.spec);
  if (!sandbox)
    return fail(sandbox.error().Context("starting the " + record_.runtime + " sandbox"));
  {
    std::lock_guard lock(destroy_mutex_);
    sandbox_ = std::move(*sandbox);
  }
  if (Killed()) return fail(Error{ErrorCode::kCancelled, kill_reason_});

  auto client = protocol::AgentClient::Connect(sandbox_->TakeFromAgent(), sandbox_->TakeToAgent(),
                                               {.handshake_timeout = kAgentHandshakeTimeout});
  if (!client) return fail(client.error().Context("connecting to the guest agent"));
  client_ = std::move(*client);

  auto control = ControlServer::Start(store_.ControlSocket(record_.id), *client_, [this] {
    Kill(SandboxState::kKilled, SIGKILL, "killed by `tartarus kill`");
  });
  if (!control) return fail(control.error().Context("opening the control socket"));
  control_ = std::move(*control);

  protocol::ExecStart exec;
  exec.argv = record_.command;
  exec.env = record_.env;
  exec.cwd = record_.workdir;
  exec.user = record_.user;
  exec.stdin_pipe = launch_.stdin_fd >= 0;
  exec.timeout_ms = record_.timeout_ms;
  auto main_exec = client_->StartExec(
      exec, [this](protocol::Stream stream, std::string_view data) { OnOutput(stream, data); });
  if (!main_exec) return fail(main_exec.error().Context("starting the command"));
  main_exec_ = std::move(*main_exec);

  {
    std::lock_guard lock(mutex_);
    if (killed_) return Ok();  // Wait() reports it
    record_.state = SandboxState::kRunning;
    record_.started_ms = NowMs();
  }
  (void)store_.Save(record_);

  if (launch_.stdin_fd >= 0)
    stdin_pump_ = std::make_unique<StdinPump>(launch_.stdin_fd, *main_exec_);
  if (record_.timeout_ms > 0) {
    watchdog_ = std::thread([this] {
      std::unique_lock lock(mutex_);
      auto limit = std::chrono::milliseconds(record_.timeout_ms) + kTimeoutBackstopGrace;
      if (killed_cv_.wait_for(lock, limit, [this] { return killed_ || finished_; })) return;
      lock.unlock();
      Kill(SandboxState::kExited, 0, "timed out");
    });
  }
  return Ok();
}

void Supervisor::OnOutput(protocol::Stream stream, std::string_view data) {
  bool is_stdout = stream == protocol::Stream::kStdout;
  AppendCapped(is_stdout ? stdout_log_.Get() : stderr_log_.Get(),
               is_stdout ? stdout_logged_ : stderr_logged_, data);
  int terminal = is_stdout ? launch_.stdout_fd : launch_.stderr_fd;
  // A closed terminal pipe must not stop the sandbox: the logs still get everything.
  if (terminal >= 0) (void)protocol::WriteAll(terminal, data);
}

bool Supervisor::Killed() {
  std::lock_guard lock(mutex_);
  return killed_;
}

SandboxRecord Supervisor::Wait() {
  Result<protocol::ExecExit> exit = Fail(ErrorCode::kCancelled, kill_reason_);
  if (main_exec_) exit = main_exec_->Wait();
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  killed_cv_.notify_all();

  if (sandbox_ && !killed_) {
    if (auto usage = sandbox_->GetUsage()) record_.usage = *usage;
  }
  std::lock_guard lock(mutex_);
  if (killed_ && kill_state_ == SandboxState::kExited) {  // the timeout backstop
    record_.state = SandboxState::kExited;
    record_.timed_out = true;
    record_.exit_code = 124;
  } else if (killed_) {
    record_.state = kill_state_;
    record_.signal = kill_signo_;
    record_.exit_code = 128 + kill_signo_;
    record_.error = kill_reason_;
  } else if (exit || record_.usage.oom_killed) {
    // Without an ExecExit, an OOM kill ended the whole sandbox (gVisor's limit covers
    // the sandbox, not one process): report it as the SIGKILL it was.
    ExitOutcome outcome = exit ? ExitOutcome{exit->exit_code, exit->signal, exit->timed_out}
                               : ExitOutcome{0, SIGKILL, false};
    record_.state = SandboxState::kExited;
    record_.signal = outcome.signal;
    record_.timed_out = outcome.timed_out;
    record_.exit_code = outcome.timed_out ? 124
                        : outcome.signal  ? 128 + outcome.signal
                                          : outcome.exit_code;
    if (outcome.signal == SIGKILL && record_.usage.oom_killed) {
      record_.error = "out of memory: the sandbox hit its memory limit of " +
                      FormatBytes(record_.limits.memory_bytes);
    }
  } else {
    record_.state = SandboxState::kFailed;
    record_.error = exit.error().message;
  }
  return record_;
}

void Supervisor::Kill(SandboxState state, int signo, std::string reason) {
  {
    std::lock_guard lock(mutex_);
    if (killed_ || finished_) return;
    killed_ = true;
    kill_state_ = state;
    kill_signo_ = signo;
    kill_reason_ = std::move(reason);
  }
  killed_cv_.notify_all();
  // Destroying the boundary ends every process in it; the agent connection then closes
  // and Wait() returns.
  std::lock_guard lock(destroy_mutex_);
  if (sandbox_) (void)sandbox_->Destroy();
}

void Supervisor::Teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  killed_cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  stdin_pump_.reset();
  if (control_) control_->Stop();
  // Asking the agent to exit lets the OCI runtime finish by itself, which is faster than
  // killing the container.
  if (client_ && !killed_) (void)client_->Shutdown();
  {
    std::lock_guard lock(destroy_mutex_);
    if (sandbox_) (void)sandbox_->Destroy();
  }
  control_.reset();
  main_exec_.reset();
  client_.reset();
  sandbox_.reset();
  unlink(store_.ControlSocket(record_.id).c_str());
}

SandboxRecord Supervisor::Finish() {
  SandboxRecord record = Wait();
  Teardown();
  record.finished_ms = NowMs();
  record_ = record;
  (void)store_.Save(record);
  return record;
}

}  // namespace tartarus::node

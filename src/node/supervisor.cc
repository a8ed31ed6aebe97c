#include "node/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include "common/units.h"
#include "node/control_server.h"
#include "node/node_lease.h"
#include "protocol/codec.h"
#include "runtime/owner.h"
#include "runtime/phase_trace.h"

namespace tartarus::node {
namespace {

// Also covers the runtime's start: the handshake is what tells that the sandbox runs.
constexpr auto kAgentHandshakeTimeout = std::chrono::seconds(30);
// The agent enforces the timeout; the supervisor steps in this much later if it has not.
constexpr auto kTimeoutBackstopGrace = std::chrono::seconds(5);
// How late a supervisor may notice that the node lease lapsed. The agent renews it one
// heartbeat before Olympus's deadline, so this must stay well under a heartbeat interval.
constexpr auto kLeaseCheckInterval = std::chrono::milliseconds(200);

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
  runtime::PhaseTimer logs_phase("supervisor.record");
  bool record_written = !launch_.create_record;
  bool record_taken = false;  // its id belongs to another sandbox's record
  // A record created by this process already names it as the supervisor.
  if (record_written && record_.supervisor_pid != getpid()) {
    record_.supervisor_pid = getpid();
    record_.supervisor_start_time = runtime::ProcessStartTime(getpid()).value_or(0);
    (void)store_.Save(record_);
  }

  auto fail = [&](const Error& error) -> Status {
    Teardown();
    std::lock_guard lock(mutex_);
    record_.state = killed_ ? kill_state_ : SandboxState::kFailed;
    record_.error = killed_ ? kill_reason_ : error.message;
    record_.finished_ms = NowMs();
    if (record_taken) {
      // Not ours to write.
    } else if (launch_.remove_record) {
      if (record_written) (void)store_.Remove(record_.id);
    } else if (record_written) {
      (void)store_.Save(record_);
    } else {
      (void)store_.Create(record_);  // final: `ps` shows why it failed
    }
    return Fail(killed_ ? Error{ErrorCode::kCancelled, kill_reason_} : error);
  };

  logs_phase.Stop();
  runtime::PhaseTimer start_phase("supervisor.backend_start");
  auto sandbox = backend_.Start(launch_.spec);
  start_phase.Stop();
  if (!sandbox)
    return fail(sandbox.error().Context("starting the " + record_.runtime + " sandbox"));
  {
    std::lock_guard lock(destroy_mutex_);
    sandbox_ = std::move(*sandbox);
  }
  if (!record_written) {
    runtime::PhaseTimer create_phase("store.create");
    if (auto created = store_.Create(record_); !created) {
      record_taken = created.error().code == ErrorCode::kAlreadyExists;
      return fail(created.error().Context("creating the sandbox record"));
    }
    record_written = true;
  }
  if (Killed()) return fail(Error{ErrorCode::kCancelled, kill_reason_});

  // A runtime that failed closes the agent's stream: its own error says more.
  auto fail_to_connect = [&](const Error& error) {
    Status started = Ok();
    {
      std::lock_guard lock(destroy_mutex_);
      started = sandbox_->WaitStarted();
    }
    if (!started) {
      return fail(started.error().Context("starting the " + record_.runtime + " sandbox"));
    }
    return fail(error.Context("connecting to the guest agent"));
  };
  // The main command's ExecStart goes out with Hello, without waiting for Ready: the
  // agent reads both when it starts, and the run saves a round trip.
  runtime::PhaseTimer connect_phase("supervisor.agent_start_and_exec");
  auto client = protocol::AgentClient::Connect(
      sandbox_->TakeFromAgent(), sandbox_->TakeToAgent(),
      {.handshake_timeout = kAgentHandshakeTimeout, .wait_for_ready = false});
  if (!client) return fail_to_connect(client.error());
  client_ = std::move(*client);

  protocol::ExecStart exec;
  exec.argv = record_.command;
  exec.env = record_.env;
  exec.cwd = record_.workdir;
  exec.user = record_.user;
  exec.stdin_pipe = launch_.stdin_fd >= 0 || record_.stdin_via_control;
  exec.timeout_ms = record_.timeout_ms;
  auto main_exec = client_->StartExec(
      exec, [this](protocol::Stream stream, std::string_view data) { OnOutput(stream, data); });
  if (!main_exec) {
    if (auto ready = client_->WaitReady(); !ready) return fail_to_connect(ready.error());
    return fail(main_exec.error().Context("starting the command"));
  }
  main_exec_ = std::move(*main_exec);
  connect_phase.Stop();

  // After the main command started, so that this overlaps with its run.
  runtime::PhaseTimer control_phase("supervisor.control_socket");
  MainStdin main_stdin;
  if (record_.stdin_via_control && launch_.stdin_fd < 0) {
    main_stdin.write = [this](std::string_view data) { return main_exec_->WriteStdin(data); };
    main_stdin.close = [this] { return main_exec_->CloseStdin(); };
  }
  auto control = ControlServer::Start(
      store_.ControlSocket(record_.id), *client_,
      [this] { Kill(SandboxState::kKilled, SIGKILL, "killed by `tartarus kill`"); },
      std::move(main_stdin));
  if (!control) return fail(control.error().Context("opening the control socket"));
  control_ = std::move(*control);
  control_phase.Stop();

  {
    std::lock_guard lock(mutex_);
    if (killed_) return Ok();  // Wait() reports it
    record_.state = SandboxState::kRunning;
    record_.started_ms = NowMs();
  }
  {
    runtime::PhaseTimer save_phase("supervisor.save_running");
    (void)store_.Save(record_);
  }
  {
    // The agent runs, so the runtime has (all but) written the init pid by now; without it
    // Destroy still works (it kills the runtime and whatever is in the sandbox's cgroup).
    std::lock_guard lock(destroy_mutex_);
    if (sandbox_) (void)sandbox_->WaitStarted();
  }

  if (launch_.stdin_fd >= 0)
    stdin_pump_ = std::make_unique<StdinPump>(launch_.stdin_fd, *main_exec_);
  if (record_.timeout_ms > 0 || !launch_.lease_file.empty()) {
    watchdog_ = std::thread([this] { Watch(); });
  }
  return Ok();
}

void Supervisor::Watch() {
  using Clock = std::chrono::steady_clock;
  // The agent enforces the timeout; this is the backstop should the agent be gone.
  auto timeout_at =
      record_.timeout_ms > 0
          ? Clock::now() + std::chrono::milliseconds(record_.timeout_ms) + kTimeoutBackstopGrace
          : Clock::time_point::max();
  std::unique_lock lock(mutex_);
  while (true) {
    auto wake = timeout_at;
    if (!launch_.lease_file.empty()) wake = std::min(wake, Clock::now() + kLeaseCheckInterval);
    if (killed_cv_.wait_until(lock, wake, [this] { return killed_ || finished_; })) return;
    if (Clock::now() >= timeout_at) {
      lock.unlock();
      Kill(SandboxState::kExited, 0, "timed out");
      return;
    }
    if (std::string lapsed = NodeLeaseLapsed(launch_.lease_file); !lapsed.empty()) {
      lock.unlock();
      Kill(SandboxState::kLost, SIGKILL, "stopped: " + lapsed);
      return;
    }
  }
}

void Supervisor::OnOutput(protocol::Stream stream, std::string_view data) {
  bool is_stdout = stream == protocol::Stream::kStdout;
  // Created on the first output (only this reader thread writes them): a command that
  // prints nothing costs no files. Readers of the logs treat a missing one as empty.
  UniqueFd& log = is_stdout ? stdout_log_ : stderr_log_;
  if (!log && !(is_stdout ? stdout_log_opened_ : stderr_log_opened_)) {
    (is_stdout ? stdout_log_opened_ : stderr_log_opened_) = true;
    log = OpenLog(is_stdout ? store_.StdoutLog(record_.id) : store_.StderrLog(record_.id));
  }
  AppendCapped(log.Get(), is_stdout ? stdout_logged_ : stderr_logged_, data);
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
  runtime::PhaseTimer wait_phase("supervisor.main_exec_wait");
  if (main_exec_) exit = main_exec_->Wait();
  wait_phase.Stop();
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  killed_cv_.notify_all();

  // Usage goes into the final record, and tells an OOM kill from other deaths; a clean
  // exit whose record nobody keeps (run --rm) needs neither.
  bool need_usage = !launch_.remove_record || !exit || exit->signal != 0;
  if (sandbox_ && !killed_ && need_usage) {
    runtime::PhaseTimer usage_phase("supervisor.usage");
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

void Supervisor::Teardown(const std::function<void()>& meanwhile) {
  if (torn_down_) return;
  torn_down_ = true;
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
  }
  killed_cv_.notify_all();
  // Tell the agent to end the sandbox first, without waiting for its answer: it kills what
  // still runs and exits, and the OCI runtime cleans up, while we stop our threads below.
  if (client_ && !Killed()) {
    (void)client_->Send(protocol::Frame{client_->AllocateId(), protocol::Shutdown{}});
  }
  if (watchdog_.joinable()) watchdog_.join();
  stdin_pump_.reset();
  runtime::PhaseTimer control_phase("teardown.control_stop");
  if (control_) control_->Stop();
  control_.reset();
  control_phase.Stop();
  // Closing the stream ends the agent too (at end of file it kills whatever still runs and
  // exits), if the Shutdown above did not already. Either way the OCI runtime then
  // finishes by itself, which is faster than killing the container.
  runtime::PhaseTimer close_phase("teardown.agent_close");
  main_exec_.reset();
  client_.reset();
  close_phase.Stop();
  if (meanwhile) meanwhile();
  runtime::PhaseTimer destroy_phase("teardown.destroy");
  {
    std::lock_guard lock(destroy_mutex_);
    if (sandbox_) (void)sandbox_->Destroy();
  }
  destroy_phase.Stop();
  sandbox_.reset();
  unlink(store_.ControlSocket(record_.id).c_str());
}

SandboxRecord Supervisor::Finish() {
  SandboxRecord record = Wait();
  if (launch_.remove_record) {
    // Nobody keeps this record: it goes while the runtime cleans up, off the run's path.
    Teardown([&] {
      runtime::PhaseTimer remove_phase("supervisor.remove_record");
      (void)store_.Remove(record.id);
    });
  } else {
    Teardown();
  }
  record.finished_ms = NowMs();
  record_ = record;
  if (!launch_.remove_record) {
    runtime::PhaseTimer save_phase("supervisor.save_final");
    (void)store_.Save(record);
  }
  return record;
}

}  // namespace tartarus::node

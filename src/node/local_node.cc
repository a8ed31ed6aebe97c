#include "node/local_node.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "common/subprocess.h"
#include "common/units.h"
#include "node/control_server.h"
#include "node/file_copy.h"
#include "node/stdin_pump.h"
#include "node/supervisor.h"
#include "protocol/client.h"
#include "protocol/codec.h"
#include "runtime/owner.h"
#include "runtime/phase_trace.h"
#include "template/ext4_image.h"
#include "template/template_store.h"

namespace tartarus::node {
namespace {

// Limits of a sandbox when neither the request nor the template sets them.
constexpr runtime::Limits kDefaultLimits{};
constexpr auto kDetachedStartTimeout = std::chrono::seconds(120);

runtime::RuntimeConfig RuntimeConfigOf(const NodeConfig& config) {
  return runtime::RuntimeConfig{config.state_dir, config.gvisor_platform};
}

// Environment of the main command: the template's, then the user's on top.
std::vector<std::string> MergeEnv(std::vector<std::string> base,
                                  const std::vector<std::string>& overrides) {
  for (const auto& entry : overrides) {
    std::string key = entry.substr(0, entry.find('='));
    std::erase_if(base, [&](const std::string& e) { return e.substr(0, e.find('=')) == key; });
    base.push_back(entry);
  }
  return base;
}

Error NotRunning(const SandboxRecord& record) {
  return Error{ErrorCode::kFailedPrecondition, "sandbox " + record.id + " is not running (" +
                                                   std::string(StateName(record.state)) + ")"};
}

Result<UniqueFd> ConnectControl(const SandboxStore& store, const SandboxRecord& record) {
  if (record.state != SandboxState::kRunning) return Fail(NotRunning(record));
  std::string path = store.ControlSocket(record.id);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return Fail(ErrorCode::kInvalidArgument, "control socket path too long: " + path);
  }
  std::copy(path.begin(), path.end(), addr.sun_path);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return FailErrno("socket");
  if (connect(fd.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    return Fail(
        ErrorCode::kFailedPrecondition,
        "sandbox " + record.id + " is not reachable (its supervisor is gone): " + strerror(errno));
  }
  return fd;
}

Result<std::unique_ptr<protocol::AgentClient>> ConnectClient(const SandboxStore& store,
                                                             const SandboxRecord& record) {
  UniqueFd fd = TRY(ConnectControl(store, record));
  UniqueFd write_fd(dup(fd.Get()));
  if (!write_fd) return FailErrno("dup");
  return protocol::AgentClient::Connect(std::move(fd), std::move(write_fd),
                                        {.handshake_timeout = std::chrono::seconds(10)});
}

}  // namespace

struct LocalNode::Impl {
  std::mutex mutex;
  Supervisor* running = nullptr;  // the foreground run, for Cancel()
  int cancel_signo = 0;
};

LocalNode::LocalNode(NodeConfig config)
    : config_(std::move(config)), store_(config_.state_dir), impl_(std::make_unique<Impl>()) {}

LocalNode::~LocalNode() = default;

void LocalNode::Reconcile() {
  runtime::PhaseTimer reconcile_phase("reconcile");
  runtime::PhaseTimer leftovers_phase("reconcile.leftovers");
  (void)runtime::CleanupLeftovers(RuntimeConfigOf(config_));
  leftovers_phase.Stop();
  // Only the records not final yet: reading every record the host kept made every
  // command slower the more sandboxes had run.
  for (auto& record : store_.ListActive()) {
    runtime::OwnerRecord owner{record.supervisor_pid, record.supervisor_start_time};
    if (record.supervisor_pid == 0) {
      // Still being created by a live `run`? Give it a minute before calling it lost.
      if (NowMs() - record.created_ms < 60'000) continue;
    } else if (runtime::OwnerAlive(owner)) {
      continue;
    }
    record.state = SandboxState::kLost;
    record.error = "its supervisor (pid " + std::to_string(record.supervisor_pid) +
                   ") died; the sandbox was cleaned up";
    record.finished_ms = NowMs();
    (void)store_.Save(record);
  }
}

namespace {

// Resolves template, backend and limits into a record and the spec to start.
struct Prepared {
  SandboxRecord record;
  runtime::SandboxSpec spec;
  std::unique_ptr<runtime::Backend> backend;
};

Result<std::unique_ptr<runtime::Backend>> CheckedBackend(const NodeConfig& config,
                                                         const std::string& name) {
  auto backend = TRY(runtime::MakeBackend(name, RuntimeConfigOf(config)));
  TRY(backend->CheckAvailable());
  return backend;
}

Result<templates::BuiltTemplate> EnsureTemplate(const NodeConfig& config, const std::string& name,
                                                const ProgressFn& progress) {
  templates::TemplateStore templates(config.state_dir, config.template_dirs);
  return templates.Ensure(name, [&](std::string_view line) {
    if (progress) progress(std::string(line));
  });
}

Result<Prepared> Prepare(const NodeConfig& config, const RunRequest& request,
                         const ProgressFn& progress) {
  if (access(config.agent_path.c_str(), X_OK) != 0) {
    return Fail(ErrorCode::kFailedPrecondition, "guest agent not found at " + config.agent_path +
                                                    ": build it (cmake --build build)");
  }
  Prepared p;
  runtime::PhaseTimer backend_phase("prepare.check_backend");
  p.backend = TRY(CheckedBackend(config, request.runtime));
  backend_phase.Stop();
  runtime::PhaseTimer template_phase("prepare.ensure_template");
  auto built = TRY(EnsureTemplate(config, request.template_name, progress));
  if (request.runtime == "microvm") {
    // A template's first microVM needs its ext4 image: made here, where the caller's progress
    // output (and -q) applies, rather than silently inside the backend.
    TRY(templates::EnsureExt4Image(built.rootfs, [&](std::string_view line) {
      if (progress) progress(std::string(line));
    }));
  }
  template_phase.Stop();

  SandboxRecord& r = p.record;
  r.id = request.id.empty() ? NewSandboxId() : request.id;
  r.template_name = built.name;
  r.runtime = request.runtime;
  r.command = request.command;
  r.env = MergeEnv(built.env, request.env);
  r.workdir = request.workdir.empty() ? built.workdir : request.workdir;
  r.user = request.user;
  const auto& t = built.spec.limits;
  r.limits.millicpus = request.millicpus.value_or(t.millicpus.value_or(kDefaultLimits.millicpus));
  r.limits.memory_bytes =
      request.memory_bytes.value_or(t.memory_bytes.value_or(kDefaultLimits.memory_bytes));
  r.limits.disk_bytes =
      request.disk_bytes.value_or(t.disk_bytes.value_or(kDefaultLimits.disk_bytes));
  r.limits.pids = request.pids.value_or(t.pids.value_or(kDefaultLimits.pids));
  auto timeout = request.timeout ? request.timeout : t.timeout;
  r.timeout_ms = timeout ? static_cast<uint64_t>(timeout->count()) : 0;
  r.created_ms = NowMs();

  p.spec.id = r.id;
  p.spec.rootfs = built.rootfs;
  p.spec.agent_path = config.agent_path;
  p.spec.limits = r.limits;
  return p;
}

}  // namespace

Result<SandboxRecord> LocalNode::Run(const RunRequest& request, const IoSinks& io,
                                     ProgressFn progress) {
  runtime::PhaseTimer run_phase("run");
  Prepared p = TRY(Prepare(config_, request, progress));
  // This process supervises: the first record already says so, which saves a rewrite.
  p.record.supervisor_pid = getpid();
  p.record.supervisor_start_time = runtime::ProcessStartTime(getpid()).value_or(0);
  Launch launch{p.record, p.spec, io.stdin_fd, io.stdout_fd, io.stderr_fd};
  // The supervisor writes the record while the runtime starts, and removes it for --rm.
  launch.create_record = true;
  launch.remove_record = request.remove_when_done;
  Supervisor supervisor(store_, *p.backend, std::move(launch));
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->cancel_signo) return Fail(ErrorCode::kCancelled, "interrupted");
    impl_->running = &supervisor;
  }
  auto started = supervisor.Start();
  std::optional<SandboxRecord> record;
  if (started) record = supervisor.Finish();
  {
    std::lock_guard lock(impl_->mutex);
    impl_->running = nullptr;
  }
  if (!started) return Fail(started.error());
  return *record;
}

void LocalNode::Cancel(int signo) {
  std::lock_guard lock(impl_->mutex);
  impl_->cancel_signo = signo;
  if (impl_->running) {
    impl_->running->Kill(SandboxState::kKilled, signo,
                         std::string("interrupted by ") + sigabbrev_np(signo));
  }
}

Result<std::string> LocalNode::RunDetached(const RunRequest& request, ProgressFn progress) {
  Prepared p = TRY(Prepare(config_, request, progress));
  p.record.detached = true;
  p.record.stdin_via_control = request.stdin_via_control;
  TRY(store_.Create(p.record));
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return FailErrno("pipe2");
  UniqueFd ready_read(ready[0]), ready_write(ready[1]);
  UniqueFd log(open((store_.Dir(p.record.id) + "/supervisor.log").c_str(),
                    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  SpawnOptions options;
  options.argv = {config_.self_path,
                  "--state-dir",
                  config_.state_dir,
                  "--gvisor-platform",
                  config_.gvisor_platform,
                  "__supervise",
                  p.record.id,
                  "--ready-fd",
                  "3"};
  if (!config_.lease_file.empty()) {
    options.argv.insert(options.argv.end(), {"--lease-file", config_.lease_file});
  }
  options.fds = {{0, -1}, {1, -1}, {2, log.Get()}, {3, ready_write.Get()}};
  options.new_session = true;
  auto child = Spawn(options);
  if (!child) {
    (void)store_.Remove(p.record.id);
    return Fail(child.error().Context("starting the sandbox supervisor"));
  }
  ready_write.Reset();
  // The supervisor writes "ok" once the command runs, or the reason it could not start.
  std::string answer;
  pollfd pfd{ready_read.Get(), POLLIN, 0};
  auto deadline = std::chrono::steady_clock::now() + kDetachedStartTimeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (poll(&pfd, 1, 100) <= 0) continue;
    char buf[4096];
    ssize_t n = read(ready_read.Get(), buf, sizeof buf);
    if (n <= 0) break;
    answer.append(buf, n);
  }
  if (answer == "ok") return p.record.id;
  if (answer.empty()) answer = "the sandbox supervisor exited before the sandbox started";
  return Fail(ErrorCode::kInternal, answer);
}

int LocalNode::SuperviseDetached(const std::string& id, int ready_fd) {
  UniqueFd ready(ready_fd);
  auto say = [&](const std::string& text) {
    if (ready) (void)protocol::WriteAll(ready.Get(), text);
    ready.Reset();
  };
  auto record = store_.Load(id);
  if (!record) {
    say(record.error().message);
    return 1;
  }
  auto backend = CheckedBackend(config_, record->runtime);
  auto built = backend ? EnsureTemplate(config_, record->template_name, nullptr)
                       : Result<templates::BuiltTemplate>(Fail(backend.error()));
  if (!built) {
    const Error& e = backend ? built.error() : backend.error();
    record->state = SandboxState::kFailed;
    record->error = e.message;
    (void)store_.Save(*record);
    say(e.message);
    return 1;
  }
  // SIGTERM (e.g. from a host shutdown) kills the sandbox cleanly.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  runtime::SandboxSpec spec;
  spec.id = id;
  spec.rootfs = built->rootfs;
  spec.agent_path = config_.agent_path;
  spec.limits = record->limits;
  Launch launch{*record, spec, -1, -1, -1};
  launch.lease_file = config_.lease_file;
  Supervisor supervisor(store_, **backend, std::move(launch));
  auto started = supervisor.Start();
  if (!started) {
    say(started.error().message);
    return 1;
  }
  say("ok");
  std::thread([&supervisor, set] {
    int signo = 0;
    if (sigwait(&set, &signo) == 0) {
      supervisor.Kill(SandboxState::kKilled, signo,
                      std::string("supervisor received ") + sigabbrev_np(signo));
    }
  }).detach();
  supervisor.Finish();
  return 0;
}

std::vector<SandboxRecord> LocalNode::List() { return store_.List(); }

Result<SandboxRecord> LocalNode::Inspect(std::string_view id) {
  std::string full = TRY(store_.Resolve(id));
  return store_.Load(full);
}

protocol::ExecStart MakeExecStart(const SandboxRecord& record,
                                  const std::vector<std::string>& command,
                                  const std::vector<std::string>& env, const std::string& workdir,
                                  const std::string& user,
                                  std::optional<std::chrono::milliseconds> timeout,
                                  bool stdin_pipe) {
  protocol::ExecStart exec;
  exec.argv = command;
  exec.env = MergeEnv(record.env, env);
  exec.cwd = workdir.empty() ? record.workdir : workdir;
  exec.user = user.empty() ? record.user : user;
  exec.stdin_pipe = stdin_pipe;
  exec.timeout_ms = timeout ? static_cast<uint64_t>(timeout->count()) : 0;
  return exec;
}

int ExecExitCode(const protocol::ExecExit& exit) {
  if (exit.timed_out) return 124;
  return exit.signal ? 128 + exit.signal : exit.exit_code;
}

Result<int> LocalNode::Exec(std::string_view id, const std::vector<std::string>& command,
                            const std::vector<std::string>& env, const std::string& workdir,
                            const std::string& user,
                            std::optional<std::chrono::milliseconds> timeout, const IoSinks& io) {
  SandboxRecord record = TRY(Inspect(id));
  auto client = TRY(ConnectClient(store_, record));
  protocol::ExecStart exec =
      MakeExecStart(record, command, env, workdir, user, timeout, io.stdin_fd >= 0);
  auto handle = TRY(client->StartExec(exec, [&](protocol::Stream stream, std::string_view data) {
    (void)protocol::WriteAll(stream == protocol::Stream::kStdout ? io.stdout_fd : io.stderr_fd,
                             data);
  }));
  // Ctrl-C and SIGTERM go to the command, as a terminal would send them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::atomic<bool> done{false};
  std::thread forward_signals([&] {
    timespec tick{0, 100'000'000};
    while (!done) {
      int signo = sigtimedwait(&set, nullptr, &tick);
      if (signo > 0) (void)handle->SendSignal(signo);
    }
  });
  std::optional<StdinPump> pump;
  if (io.stdin_fd >= 0) pump.emplace(io.stdin_fd, *handle);
  auto exit = handle->Wait();
  done = true;
  forward_signals.join();
  pump.reset();
  if (!exit) return Fail(exit.error());
  return ExecExitCode(*exit);
}

Status LocalNode::Kill(std::string_view id) {
  SandboxRecord record = TRY(Inspect(id));
  if (IsFinal(record.state)) return Fail(NotRunning(record));
  auto client = ConnectClient(store_, record);
  if (!client) {
    // No supervisor to ask: clean up after it.
    Reconcile();
    return Ok();
  }
  // The supervisor may close the socket before its answer gets out: what counts is that
  // the record reaches a final state.
  auto asked = (*client)->Shutdown();
  for (int i = 0; i < 400; ++i) {
    auto now = store_.Load(record.id);
    if (!now || IsFinal(now->state)) return Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  if (!asked) return Fail(asked.error().Context("killing sandbox " + record.id));
  return Fail(ErrorCode::kTimeout, "sandbox " + record.id + " did not stop within 10s");
}

Status LocalNode::Remove(std::string_view id, bool force) {
  SandboxRecord record = TRY(Inspect(id));
  if (!IsFinal(record.state)) {
    if (!force) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "sandbox " + record.id + " is running: kill it first, or use `rm -f`");
    }
    TRY(Kill(record.id));
  }
  return store_.Remove(record.id);
}

Status LocalNode::Logs(std::string_view id, bool follow, const IoSinks& io) {
  SandboxRecord record = TRY(Inspect(id));
  struct Stream {
    std::string path;
    int out;
    UniqueFd fd;
  } streams[2] = {
      {store_.StdoutLog(record.id), io.stdout_fd, UniqueFd()},
      {store_.StderrLog(record.id), io.stderr_fd, UniqueFd()},
  };
  char buffer[64 << 10];
  while (true) {
    bool any = false;
    for (auto& s : streams) {
      // The supervisor creates a log on the first output: until then, there is none.
      if (!s.fd) s.fd.Reset(open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!s.fd) continue;
      ssize_t n;
      while ((n = read(s.fd.Get(), buffer, sizeof buffer)) > 0) {
        any = true;
        if (!protocol::WriteAll(s.out, std::string_view(buffer, n))) return Ok();  // reader gone
      }
    }
    if (!follow) return Ok();
    if (!any) {
      auto now = store_.Load(record.id);
      if (!now || IsFinal(now->state)) {
        // One last drain: output written just before the end.
        for (auto& s : streams) {
          if (!s.fd) s.fd.Reset(open(s.path.c_str(), O_RDONLY | O_CLOEXEC));
          ssize_t n;
          while (s.fd && (n = read(s.fd.Get(), buffer, sizeof buffer)) > 0) {
            (void)protocol::WriteAll(s.out, std::string_view(buffer, n));
          }
        }
        return Ok();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

Status LocalNode::Copy(const std::string& src, const std::string& dst, ProgressFn progress) {
  auto remote = [&](const std::string& spec) -> std::optional<std::pair<std::string, std::string>> {
    size_t colon = spec.find(':');
    if (colon == std::string::npos || colon == 0) return std::nullopt;
    std::string id = spec.substr(0, colon);
    if (id.find('/') != std::string::npos) return std::nullopt;
    return std::make_pair(id, spec.substr(colon + 1));
  };
  auto from = remote(src), to = remote(dst);
  if (from && to) {
    return Fail(ErrorCode::kInvalidArgument,
                "both sides are sandboxes: copy out to a local path, then in");
  }
  if (!from && !to) {
    return Fail(ErrorCode::kInvalidArgument,
                "neither side is a sandbox path: one of them must be ID:PATH");
  }
  const auto& [id, path] = from ? *from : *to;
  if (path.empty() || path[0] != '/') {
    return Fail(ErrorCode::kInvalidArgument,
                "sandbox path '" + path + "' must be absolute, e.g. " + id + ":/root/file");
  }
  SandboxRecord record = TRY(Inspect(id));
  auto client = TRY(ConnectClient(store_, record));
  if (to) return CopyIn(*client, src, path, progress);
  return CopyOut(*client, path, dst, progress);
}

}  // namespace tartarus::node

// tartarus CLI, API mode: sandbox commands over Olympus's HTTP API (docs/openapi.yaml).
#include "cli/api_commands.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "cli/api_client.h"
#include "cli/table.h"
#include "common/file_util.h"
#include "common/unique_fd.h"
#include "common/units.h"

namespace tartarus::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// The API refuses file bodies above this (PUT /v1/sandboxes/{id}/files).
constexpr uint64_t kMaxApiFileBytes = 64ull << 20;

void WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a closed stdout: keep following so the sandbox is still waited for
    data.remove_prefix(static_cast<size_t>(n));
  }
}

void Say(const ApiIo& io, const std::string& line) { WriteAll(io.stderr_fd, line + "\n"); }

int ReportTo(const ApiIo& io, const Error& error) {
  Say(io, "tartarus: " + error.message);
  return kTartarusFailure;
}

std::string RandomKey() {
  std::random_device device;
  std::string key;
  char hex[9];
  for (int i = 0; i < 4; ++i) {
    std::snprintf(hex, sizeof(hex), "%08x", device());
    key += hex;
  }
  return key;
}

std::string StateCell(const ApiSandbox& s) {
  std::string state = s.state;
  if (s.state == "exited" && s.exit_code) {
    state += " (" + std::to_string(*s.exit_code) + (s.timed_out ? ", timed out" : "") + ")";
  }
  return state;
}

// Streams output events to the caller's descriptors.
ApiClient::EventFn WriteEventsTo(const ApiIo& io) {
  return [io](const StreamEvent& event) {
    if (event.kind == StreamEvent::Kind::kStdout) WriteAll(io.stdout_fd, event.data);
    if (event.kind == StreamEvent::Kind::kStderr) WriteAll(io.stderr_fd, event.data);
    return true;
  };
}

// Whether `run`/`exec` send stdin, as local mode does: always with -i, else when it is a
// pipe, file or socket. /dev/null and other devices are not worth a stream: without stdin
// the command reads /dev/null anyway.
bool ForwardsStdin(int fd, bool interactive) {
  if (fd < 0) return false;
  if (interactive) return true;
  if (isatty(fd)) return false;
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  return S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
}

// Copies the CLI's stdin into a sandbox's command (POST .../stdin) on a thread of its own:
// ordered chunks with their offset, one in flight, so the server's answer is the flow
// control; a chunk whose answer was lost is sent again with the same offset and applied
// once. End of file closes the command's stdin. Stop() ends it at any time (the command
// ended): no thread is left blocked in read() or in a request.
class StdinForwarder {
 public:
  // Bytes per chunk: large enough that tens of MB take few round trips, well under the
  // API's 1 MiB bound.
  static constexpr size_t kChunkBytes = 512 << 10;

  StdinForwarder(Connection connection, std::string sandbox, std::string exec_id, int fd, ApiIo io)
      : connection_(std::move(connection)),
        sandbox_(std::move(sandbox)),
        exec_id_(std::move(exec_id)),
        io_(io),
        stop_(eventfd(0, EFD_CLOEXEC)) {
    thread_ = std::thread([this, fd] { Loop(fd); });
  }
  ~StdinForwarder() { Stop(); }

  void Stop() {
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
      if (client_) client_->Cancel();
    }
    uint64_t one = 1;
    (void)!write(stop_.Get(), &one, sizeof one);
    if (thread_.joinable()) thread_.join();
  }

 private:
  bool Stopped() {
    std::lock_guard lock(mutex_);
    return stopped_;
  }

  void Loop(int fd) {
    auto client = ApiClient::Create(connection_);
    if (!client) return (void)ReportTo(io_, client.error().Context("forwarding stdin"));
    {
      std::lock_guard lock(mutex_);
      if (stopped_) return;
      client_ = &*client;
    }
    struct Forget {
      StdinForwarder& self;
      ~Forget() {
        std::lock_guard lock(self.mutex_);
        self.client_ = nullptr;
      }
    } forget{*this};
    std::string chunk;
    uint64_t offset = 0;
    while (true) {
      chunk.clear();
      bool eof = false;
      if (!Read(fd, chunk, eof)) return;
      if (!Deliver(*client, offset, chunk, eof)) return;
      offset += chunk.size();
      if (eof) return;
    }
  }

  // Waits for input, then takes what is there (up to a chunk) without waiting for more, so
  // that typed lines go out at once. False: stopped, or stdin failed.
  bool Read(int fd, std::string& chunk, bool& eof) {
    chunk.resize(kChunkBytes);
    size_t have = 0;
    while (have < kChunkBytes) {
      pollfd fds[2] = {{fd, POLLIN, 0}, {stop_.Get(), POLLIN, 0}};
      int ready = poll(fds, 2, have == 0 ? -1 : 0);
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) return false;
      if (fds[1].revents) return false;
      if (ready == 0) break;  // nothing more right now: send what we have
      ssize_t n = read(fd, chunk.data() + have, kChunkBytes - have);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) {
        Say(io_, std::string("tartarus: reading stdin: ") + strerror(errno));
        eof = true;  // the command sees end of file rather than waiting forever
        break;
      }
      if (n == 0) {
        eof = true;
        break;
      }
      have += static_cast<size_t>(n);
    }
    chunk.resize(have);
    return true;
  }

  // Sends one chunk until the server took it. False: stop forwarding (the command's stdin
  // is closed, we were stopped, or an error that a retry cannot fix, which is reported).
  bool Deliver(ApiClient& client, uint64_t offset, std::string_view chunk, bool eof) {
    auto delay = std::chrono::milliseconds(50);
    for (int attempt = 0; attempt < 600; ++attempt) {
      if (Stopped()) return false;
      StdinAnswer answer = client.SendStdin(sandbox_, exec_id_, offset, chunk, eof);
      if (answer.status == 200) return true;
      if (answer.code == "stdin_closed") return false;  // the command ended: nothing to do
      if (answer.error.code == ErrorCode::kCancelled) return false;
      // Worth another try: no answer (network, timeout), a node in between unreachable, the
      // previous try of this chunk still being written, a sandbox that is about to run.
      bool retry = answer.status == 0 || answer.status == 502 || answer.status == 503 ||
                   answer.code == "stdin_busy" || answer.code == "failed_precondition";
      if (!retry) {
        ReportTo(io_, answer.error.Context("forwarding stdin"));
        return false;
      }
      std::this_thread::sleep_for(delay);
      delay = std::min(delay * 2, std::chrono::milliseconds(1000));
    }
    ReportTo(io_, Error{ErrorCode::kTimeout, "forwarding stdin: giving up after many retries"});
    return false;
  }

  Connection connection_;
  std::string sandbox_, exec_id_;
  ApiIo io_;
  UniqueFd stop_;
  std::mutex mutex_;
  bool stopped_ = false;
  ApiClient* client_ = nullptr;  // the request in flight, cancelled by Stop()
  std::thread thread_;
};

// What Ctrl-C does during `run`: the first signal kills the sandbox (and we keep waiting
// for its end event, so the exit code is still right); the second stops waiting.
struct RunInterrupt {
  Connection connection;
  std::mutex mutex;
  std::string id;  // the sandbox, once created
  int signals = 0;
  int first_signo = 0;
  bool kill_sent = false;
  ApiClient* waiting = nullptr;  // the client following the sandbox, cancelled on give-up
  ApiIo io;

  void SendKill(const std::string& sandbox) {
    Say(io, "tartarus: killing sandbox " + sandbox + " (Ctrl-C again to stop waiting)");
    auto client = ApiClient::Create(connection);
    if (!client) {
      ReportTo(io, client.error());
      return;
    }
    auto killed = client->KillSandbox(sandbox);
    if (!killed) ReportTo(io, killed.error().Context("killing sandbox " + sandbox));
  }
  void OnSignal(int signo) {
    std::string kill_id;
    {
      std::lock_guard lock(mutex);
      ++signals;
      if (signals == 1) first_signo = signo;
      if (signals >= 2 && waiting) waiting->Cancel();
      if (!id.empty() && !kill_sent) {
        kill_sent = true;
        kill_id = id;
      }
    }
    if (!kill_id.empty()) SendKill(kill_id);
  }
  // After the sandbox exists: a signal that came before it is acted on now.
  void Created(const std::string& sandbox) {
    bool kill_now = false;
    {
      std::lock_guard lock(mutex);
      id = sandbox;
      kill_now = signals > 0 && !kill_sent;
      kill_sent = kill_sent || kill_now;
    }
    if (kill_now) SendKill(sandbox);
  }
  bool GaveUp() {
    std::lock_guard lock(mutex);
    return signals >= 2;
  }
  int Signo() {
    std::lock_guard lock(mutex);
    return first_signo;
  }
  void SetWaiting(ApiClient* client) {
    std::lock_guard lock(mutex);
    waiting = client;
  }
};

// Polls a queued or assigned sandbox until a node runs it (or it ended), showing why it
// waits once that takes more than a second.
Result<ApiSandbox> WaitUntilPlaced(ApiClient& client, ApiSandbox sandbox, RunInterrupt& interrupt,
                                   bool quiet, const ApiIo& io) {
  const auto start = Clock::now();
  std::string shown;
  while (sandbox.state == "queued" || sandbox.state == "assigned") {
    if (interrupt.GaveUp()) return Fail(ErrorCode::kCancelled, "interrupted");
    auto waited = Clock::now() - start;
    if (!quiet && waited > std::chrono::seconds(1) && !sandbox.reason.empty() &&
        sandbox.reason != shown) {
      Say(io, "tartarus: sandbox " + sandbox.id + " is " + sandbox.state + ": " + sandbox.reason);
      shown = sandbox.reason;
    }
    // Fast at first (most sandboxes are placed at once), then gentler on the server.
    std::this_thread::sleep_for(waited < std::chrono::seconds(2) ? std::chrono::milliseconds(50)
                                                                 : std::chrono::milliseconds(500));
    sandbox = TRY(client.GetSandbox(sandbox.id));
  }
  return sandbox;
}

// The exit code of a finished sandbox, as local mode computes it: the command's own, else
// 128+signal for a kill, else 125 with the error printed.
int ExitCodeOfEnd(const StreamEvent& end, const std::string& id, ApiClient& client, int signo,
                  const ApiIo& io) {
  if (!end.error.empty()) Say(io, "tartarus: " + end.error);
  if (end.exit_code) return *end.exit_code;
  if (end.state == "killed") {
    auto sandbox = client.GetSandbox(id);
    if (sandbox && sandbox->exit_code) return *sandbox->exit_code;
    if (sandbox && sandbox->signal > 0) return 128 + sandbox->signal;
    if (end.error.empty()) Say(io, "tartarus: sandbox " + id + " was killed");
    return 128 + (signo > 0 ? signo : SIGKILL);
  }
  if (end.error.empty()) {
    Say(io, "tartarus: sandbox " + id + " ended " +
                (end.state.empty() ? "without an exit code" : "in state " + end.state));
  }
  return kTartarusFailure;
}

// DELETE after the end event; the record may need a moment to become final.
void RemoveWhenDone(ApiClient& client, const std::string& id, const ApiIo& io) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (true) {
    auto removed = client.DeleteSandbox(id);
    if (removed) return;
    if (removed.error().code != ErrorCode::kFailedPrecondition || Clock::now() > deadline) {
      ReportTo(io, removed.error().Context("--rm: removing sandbox " + id));
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// Opens the logs stream; a sandbox that a node has not started yet answers 409 for a moment.
Result<StreamEvent> FollowLogs(ApiClient& client, const std::string& id, RunInterrupt* interrupt,
                               const ApiIo& io) {
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (true) {
    auto end = client.StreamLogs(id, /*follow=*/true, WriteEventsTo(io));
    if (end || end.error().code != ErrorCode::kFailedPrecondition || Clock::now() > deadline ||
        (interrupt && interrupt->GaveUp())) {
      return end;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

Result<std::pair<std::string, std::string>> SplitRemote(const std::string& spec) {
  size_t colon = spec.find(':');
  if (colon == std::string::npos || colon == 0) {
    return Fail(ErrorCode::kNotFound, "not a sandbox path");
  }
  std::string id = spec.substr(0, colon);
  if (id.find('/') != std::string::npos) return Fail(ErrorCode::kNotFound, "not a sandbox path");
  return std::make_pair(id, spec.substr(colon + 1));
}

std::string Basename(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  size_t slash = trimmed.rfind('/');
  return slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
}

Result<std::string> ReadLocalFile(const std::string& path, uint64_t max_bytes,
                                  const std::string& too_big) {
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec) return Fail(ErrorCode::kNotFound, path + ": " + ec.message());
  if (size > max_bytes) return Fail(ErrorCode::kResourceExhausted, path + ": " + too_big);
  std::ifstream file(path, std::ios::binary);
  if (!file) return FailErrno("reading " + path);
  std::stringstream text;
  text << file.rdbuf();
  if (file.bad()) return FailErrno("reading " + path);
  return text.str();
}

Status CopyIn(ApiClient& client, const std::string& local, const std::string& id,
              std::string remote) {
  struct stat st;
  if (stat(local.c_str(), &st) != 0) return FailErrno(local);
  if (S_ISDIR(st.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument,
                "cp: copying directories is not supported in API mode yet; copy single files");
  }
  if (!S_ISREG(st.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument, "cp: " + local + " is not a regular file");
  }
  std::string data =
      TRY(ReadLocalFile(local, kMaxApiFileBytes, "larger than the API's 64 MiB per file"));
  if (remote.ends_with('/')) remote += Basename(local);
  return client.WriteFile(id, remote, data, static_cast<int>(st.st_mode & 07777));
}

Status CopyOut(ApiClient& client, const std::string& id, const std::string& remote,
               std::string local) {
  if (remote.ends_with('/')) {
    return Fail(ErrorCode::kInvalidArgument,
                "cp: copying directories is not supported in API mode yet; copy single files");
  }
  std::string data = TRY(client.ReadFile(id, remote));
  std::error_code ec;
  if (std::filesystem::is_directory(local, ec)) local += "/" + Basename(remote);
  return WriteFileAtomic(local, data, Durability::kNoFsync, 0644);
}

}  // namespace

void PrintJson(const json& value) { std::printf("%s\n", value.dump(2).c_str()); }

std::string OrDash(const std::string& text) { return text.empty() ? "-" : text; }

std::string OneLine(std::string text, size_t max_chars) {
  for (char& c : text) {
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  }
  if (max_chars >= 3 && text.size() > max_chars) text = text.substr(0, max_chars - 3) + "...";
  return text;
}

Result<json> CreateSpecFromFlags(const RunFlags& flags) {
  if (flags.command.empty()) {
    return Fail(ErrorCode::kInvalidArgument,
                "no command given: tartarus run [OPTIONS] -- COMMAND [ARGS...]");
  }
  json spec = {
      {"template", flags.template_name}, {"runtime", flags.runtime}, {"command", flags.command}};
  if (flags.pids) spec["pids"] = flags.pids;
  auto env = TRY(ParseEnv(flags.env));
  if (!env.empty()) spec["env"] = env;
  if (!flags.workdir.empty()) spec["workdir"] = flags.workdir;
  if (!flags.user.empty()) spec["user"] = flags.user;
  auto with_flag = [](const char* flag, const Error& e) {
    return Error{e.code, std::string("--") + flag + ": " + e.message};
  };
  if (!flags.cpus.empty()) {
    auto v = ParseMilliCpus(flags.cpus);
    if (!v) return Fail(with_flag("cpus", v.error()));
    spec["cpus"] = flags.cpus;
  }
  if (!flags.memory.empty()) {
    auto v = ParseBytes(flags.memory);
    if (!v) return Fail(with_flag("memory", v.error()));
    if (*v < (16ull << 20)) return Fail(ErrorCode::kInvalidArgument, "--memory: at least 16M");
    spec["memory"] = flags.memory;
  }
  if (!flags.disk.empty()) {
    auto v = ParseBytes(flags.disk);
    if (!v) return Fail(with_flag("disk", v.error()));
    if (*v < (1ull << 20)) return Fail(ErrorCode::kInvalidArgument, "--disk: at least 1M");
    spec["disk"] = flags.disk;
  }
  if (!flags.timeout.empty()) {
    auto v = ParseDuration(flags.timeout);
    if (!v) return Fail(with_flag("timeout", v.error()));
    if (v->count() <= 0) return Fail(ErrorCode::kInvalidArgument, "--timeout: must be positive");
    spec["timeout"] = flags.timeout;
  }
  return spec;
}

Result<std::string> PolicyNameOf(std::string_view yaml, const std::string& file) {
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) {
      return Fail(ErrorCode::kInvalidArgument, file + ": expected a policy (a YAML map)");
    }
    YAML::Node name = root["name"];
    if (!name || !name.IsScalar() || name.Scalar().empty()) {
      return Fail(ErrorCode::kInvalidArgument, file + ": the policy has no name: field");
    }
    return name.Scalar();
  } catch (const YAML::Exception& e) {
    std::string where = file;
    if (e.mark.line >= 0) {
      where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    }
    return Fail(ErrorCode::kInvalidArgument, where + ": " + e.msg);
  }
}

int ApiRun(const Connection& connection, const RunFlags& flags, const ApiIo& io) {
  auto spec = CreateSpecFromFlags(flags);
  if (!spec) return ReportTo(io, spec.error());
  if (flags.detach && flags.remove) {
    return ReportTo(io, Error{ErrorCode::kInvalidArgument,
                              "--rm with --detach is not supported in API mode yet: remove the "
                              "sandbox with `tartarus rm ID` when it has ended"});
  }
  // A detached run has nobody to read stdin from: its command reads /dev/null.
  const bool with_stdin = !flags.detach && ForwardsStdin(io.stdin_fd, flags.interactive);
  if (with_stdin) (*spec)["stdin"] = true;
  auto interrupt = std::make_shared<RunInterrupt>();
  interrupt->connection = connection;
  interrupt->io = io;
  if (!flags.detach) {
    RouteSignals([interrupt](int signo) { interrupt->OnSignal(signo); });
  }
  auto client = ApiClient::Create(connection);
  if (!client) return ReportTo(io, client.error());

  // The key makes one retry safe: a second POST returns the sandbox the first created.
  const std::string key = RandomKey();
  auto sandbox = client->CreateSandbox(*spec, key);
  if (!sandbox &&
      (sandbox.error().code == ErrorCode::kIo || sandbox.error().code == ErrorCode::kProtocol)) {
    sandbox = client->CreateSandbox(*spec, key);
  }
  if (!sandbox) return ReportTo(io, sandbox.error());
  const std::string id = sandbox->id;
  if (flags.detach) {
    WriteAll(io.stdout_fd, id + "\n");
    return 0;
  }
  interrupt->Created(id);
  interrupt->SetWaiting(&*client);
  struct ClearWaiting {
    RunInterrupt& interrupt;
    ~ClearWaiting() { interrupt.SetWaiting(nullptr); }
  } clear_waiting{*interrupt};

  auto gave_up = [&] {
    Say(io, "tartarus: stopped waiting for sandbox " + id + "; it is being killed");
    return 128 + (interrupt->Signo() > 0 ? interrupt->Signo() : SIGINT);
  };
  auto placed = WaitUntilPlaced(*client, *sandbox, *interrupt, flags.quiet, io);
  if (!placed) {
    if (interrupt->GaveUp()) return gave_up();
    return ReportTo(io, placed.error().Context("waiting for sandbox " + id));
  }
  std::optional<StdinForwarder> forwarder;
  if (with_stdin) forwarder.emplace(connection, id, "", io.stdin_fd, io);
  auto end = FollowLogs(*client, id, interrupt.get(), io);
  if (forwarder) forwarder->Stop();  // the command ended: its stdin is closed anyway
  if (!end) {
    if (interrupt->GaveUp()) return gave_up();
    // The output stream broke (network, server restart): say how to see the rest.
    ReportTo(io, end.error().Context("following the output of sandbox " + id));
    auto now = client->GetSandbox(id);
    if (now && IsFinalSandboxState(now->state) && now->exit_code) {
      Say(io,
          "tartarus: sandbox " + id + " has " + now->state + "; its output: tartarus logs " + id);
      return *now->exit_code;
    }
    Say(io, "tartarus: sandbox " + id + " may still be running: tartarus logs -f " + id);
    return kTartarusFailure;
  }
  int code = ExitCodeOfEnd(*end, id, *client, interrupt->Signo(), io);
  if (flags.remove) RemoveWhenDone(*client, id, io);
  return code;
}

int ApiPs(const Connection& connection, const std::string& state, bool quiet, bool as_json,
          bool all_pages) {
  auto client = ApiClient::Create(connection);
  if (!client) return ReportError(client.error());
  SandboxFilter filter;
  filter.state = state;
  if (all_pages) filter.limit = 1000;  // fewer round trips
  std::vector<ApiSandbox> sandboxes;
  std::string more;
  // Bounded: a server that keeps returning page tokens cannot keep us here forever.
  for (int page = 0; page < 100000; ++page) {
    auto listed = client->ListSandboxes(filter);
    if (!listed) return ReportError(listed.error());
    for (auto& s : listed->items) sandboxes.push_back(std::move(s));
    if (listed->next_page_token.empty() || listed->next_page_token == filter.page_token) break;
    if (!all_pages) {
      more = listed->next_page_token;
      break;
    }
    filter.page_token = listed->next_page_token;
  }
  if (as_json) {
    json list = json::array();
    for (const auto& s : sandboxes) list.push_back(s.raw);
    PrintJson(list);
  } else if (quiet) {
    for (const auto& s : sandboxes) std::printf("%s\n", s.id.c_str());
  } else {
    Table table({"ID", "TEMPLATE", "RUNTIME", "STATE", "NODE", "CREATED", "COMMAND"});
    int64_t now = node::NowMs();
    for (const auto& s : sandboxes) {
      table.AddRow({s.id, s.template_name, s.runtime, StateCell(s), OrDash(s.node),
                    Ago(s.created_ms, now), QuoteCommand(s.command)});
    }
    std::fputs(table.Render().c_str(), stdout);
  }
  std::fflush(stdout);
  if (!more.empty()) {
    std::fprintf(stderr, "tartarus: more sandboxes than shown: tartarus ps --all-pages\n");
  }
  return 0;
}

int ApiInspect(const Connection& connection, const std::string& id) {
  auto client = ApiClient::Create(connection);
  if (!client) return ReportError(client.error());
  auto sandbox = client->GetSandbox(id);
  if (!sandbox) return ReportError(sandbox.error());
  PrintJson(sandbox->raw);
  return 0;
}

int ApiLogs(const Connection& connection, const std::string& id, bool follow, const ApiIo& io) {
  signal(SIGPIPE, SIG_IGN);
  auto client = ApiClient::Create(connection);
  if (!client) return ReportTo(io, client.error());
  auto end = client->StreamLogs(id, follow, WriteEventsTo(io));
  if (!end) return ReportTo(io, end.error());
  return 0;
}

int ApiExec(const Connection& connection, const ApiExecArgs& args, const ApiIo& io) {
  json request = {{"command", args.command}};
  const bool with_stdin = ForwardsStdin(io.stdin_fd, args.interactive);
  if (with_stdin) request["stdin"] = true;
  auto env = ParseEnv(args.env);
  if (!env) return ReportTo(io, env.error());
  if (!env->empty()) request["env"] = *env;
  if (!args.workdir.empty()) request["workdir"] = args.workdir;
  if (!args.user.empty()) request["user"] = args.user;
  if (!args.timeout.empty()) {
    auto t = ParseDuration(args.timeout);
    if (!t) return ReportTo(io, Error{t.error().code, "--timeout: " + t.error().message});
    request["timeout"] = args.timeout;
  }
  signal(SIGPIPE, SIG_IGN);
  auto client = ApiClient::Create(connection);
  if (!client) return ReportTo(io, client.error());
  // Ctrl-C ends this process; the server kills an exec whose client went away.
  std::optional<StdinForwarder> forwarder;
  auto write_output = WriteEventsTo(io);
  auto end = client->Exec(args.id, request, [&](const StreamEvent& event) {
    // The first event names the exec: from then on its stdin can be sent.
    if (event.kind == StreamEvent::Kind::kStarted && with_stdin && !forwarder) {
      forwarder.emplace(connection, args.id, event.exec_id, io.stdin_fd, io);
    }
    return write_output(event);
  });
  if (forwarder) forwarder->Stop();
  if (!end) return ReportTo(io, end.error());
  if (!end->error.empty()) Say(io, "tartarus: " + end->error);
  if (end->exit_code) return *end->exit_code;
  if (end->error.empty()) Say(io, "tartarus: the command ended without an exit code");
  return kTartarusFailure;
}

int ApiKill(const Connection& connection, const std::vector<std::string>& ids) {
  auto client = ApiClient::Create(connection);
  if (!client) return ReportError(client.error());
  int exit_code = 0;
  for (const auto& id : ids) {
    auto killed = client->KillSandbox(id);
    if (!killed) exit_code = ReportError(killed.error());
  }
  return exit_code;
}

int ApiRemove(const Connection& connection, const std::vector<std::string>& ids, bool force) {
  auto client = ApiClient::Create(connection);
  if (!client) return ReportError(client.error());
  int exit_code = 0;
  for (const auto& id : ids) {
    if (force) {
      // A running sandbox ends on its node's next heartbeat: wait for that, bounded.
      auto sandbox = client->GetSandbox(id);
      if (!sandbox) {
        exit_code = ReportError(sandbox.error());
        continue;
      }
      if (!IsFinalSandboxState(sandbox->state)) {
        auto killed = client->KillSandbox(id);
        if (!killed) {
          exit_code = ReportError(killed.error());
          continue;
        }
        const auto deadline = Clock::now() + std::chrono::seconds(60);
        ApiSandbox now = *killed;
        while (!IsFinalSandboxState(now.state) && Clock::now() < deadline) {
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          auto again = client->GetSandbox(id);
          if (!again) break;
          now = *again;
        }
      }
    }
    auto removed = client->DeleteSandbox(id);
    if (!removed) exit_code = ReportError(removed.error());
  }
  return exit_code;
}

int ApiCopy(const Connection& connection, const std::string& src, const std::string& dst) {
  auto from = SplitRemote(src), to = SplitRemote(dst);
  if (from && to) {
    return ReportError(Error{ErrorCode::kInvalidArgument,
                             "both sides are sandboxes: copy out to a local path, then in"});
  }
  if (!from && !to) {
    return ReportError(Error{ErrorCode::kInvalidArgument,
                             "neither side is a sandbox path: one of them must be ID:PATH"});
  }
  const auto& [id, path] = from ? *from : *to;
  if (path.empty() || path[0] != '/') {
    return ReportError(
        Error{ErrorCode::kInvalidArgument,
              "sandbox path '" + path + "' must be absolute, e.g. " + id + ":/root/file"});
  }
  auto client = ApiClient::Create(connection);
  if (!client) return ReportError(client.error());
  Status copied = to ? CopyIn(*client, src, id, path) : CopyOut(*client, id, path, dst);
  return copied ? 0 : ReportError(copied.error());
}

}  // namespace tartarus::cli

// tartarus-vmm (Tartarus's KVM microVM monitor): the Firecracker API's request handlers.
#include "vmm/api/api.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <vector>

#include "common/field_hints.h"

namespace tartarus::vmm::api {
namespace {

using nlohmann::json;

// Firecracker's wording for its state rules.
constexpr std::string_view kNotAfterStart =
    "The requested operation is not supported after starting the microVM.";
constexpr std::string_view kNotBeforeStart =
    "The requested operation is not supported before starting the microVM.";
constexpr uint32_t kMaxVcpus = 32;  // Firecracker's limit
constexpr uint64_t kMinMemMib = 2;
constexpr uint64_t kMaxMemMib = 1u << 20;

std::unexpected<Error> Invalid(std::string message) {
  return Fail(ErrorCode::kInvalidArgument, std::move(message));
}

std::string Quote(std::string_view text) { return "`" + Printable(text) + "`"; }

// One JSON object's fields, checked as serde does with deny_unknown_fields: every field
// known, each of the right type, the required ones present.
class Fields {
 public:
  Fields(const json& object, std::string what) : object_(object), what_(std::move(what)) {}

  // Fails on a non-object or a field outside known.
  Status Check(std::initializer_list<std::string_view> known) const {
    if (!object_.is_object()) return Invalid(what_ + ": expected a JSON object");
    std::vector<std::string_view> names(known);
    for (const auto& [key, value] : object_.items()) {
      if (std::find(names.begin(), names.end(), key) == names.end()) {
        return Invalid(what_ + ": unknown field " + Quote(key) + SuggestField(key, names));
      }
    }
    return Ok();
  }

  bool Has(std::string_view name) const {
    auto it = object_.find(name);
    return it != object_.end() && !it->is_null();
  }

  Result<std::optional<std::string>> String(std::string_view name, bool required) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return Missing<std::string>(name, required);
    if (!it->is_string()) return WrongType(name, "a string");
    return std::optional<std::string>(it->get<std::string>());
  }
  // A string that must be non-empty (paths, ids).
  Result<std::optional<std::string>> NonEmpty(std::string_view name, bool required) const {
    auto value = TRY(String(name, required));
    if (value && value->empty()) return Invalid(what_ + ": " + Quote(name) + " is empty");
    return value;
  }
  Result<std::optional<bool>> Bool(std::string_view name, bool required) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return Missing<bool>(name, required);
    if (!it->is_boolean()) return WrongType(name, "a boolean");
    return std::optional<bool>(it->get<bool>());
  }
  Result<std::optional<uint64_t>> Unsigned(std::string_view name, bool required, uint64_t min,
                                           uint64_t max) const {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) return Missing<uint64_t>(name, required);
    if (!it->is_number_unsigned()) return WrongType(name, "a non-negative integer");
    uint64_t value = it->get<uint64_t>();
    if (value < min || value > max) {
      return Invalid(what_ + ": " + Quote(name) + " is " + std::to_string(value) + ", must be " +
                     std::to_string(min) + " to " + std::to_string(max));
    }
    return std::optional<uint64_t>(value);
  }
  // One of a few strings.
  Result<std::optional<std::string>> Enum(std::string_view name, bool required,
                                          std::initializer_list<std::string_view> allowed) const {
    auto value = TRY(String(name, required));
    if (!value) return value;
    if (std::find(allowed.begin(), allowed.end(), *value) == allowed.end()) {
      std::string list;
      for (std::string_view item : allowed) list += (list.empty() ? "" : ", ") + Quote(item);
      return Invalid(what_ + ": " + Quote(name) + " is " + Quote(*value) + ", expected one of " +
                     list);
    }
    return value;
  }
  // Fields Firecracker has that tartarus-vmm does not implement: only null is accepted.
  Status Unsupported(std::string_view name) const {
    if (Has(name)) {
      return Invalid(what_ + ": " + Quote(name) + " is not supported by tartarus-vmm");
    }
    return Ok();
  }

 private:
  template <class T>
  Result<std::optional<T>> Missing(std::string_view name, bool required) const {
    if (required) return Invalid(what_ + ": missing field " + Quote(name));
    return std::optional<T>();
  }
  std::unexpected<Error> WrongType(std::string_view name, std::string_view expected) const {
    return Invalid(what_ + ": " + Quote(name) + " must be " + std::string(expected));
  }

  const json& object_;
  std::string what_;
};

// A file the VMM will open later: exists, is a regular file and readable now.
Status CheckReadableFile(std::string_view what, const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) < 0) {
    return Invalid(std::string(what) + ": cannot open " + Quote(path) + ": " +
                   ErrnoError("stat").message.substr(6));
  }
  if (!S_ISREG(info.st_mode) && !S_ISBLK(info.st_mode)) {
    return Invalid(std::string(what) + ": " + Quote(path) + " is not a regular file");
  }
  if (::access(path.c_str(), R_OK) < 0) {
    return Invalid(std::string(what) + ": " + Quote(path) + " is not readable");
  }
  return Ok();
}

Result<json> ParseBody(std::string_view body) {
  if (body.empty()) return Invalid("Empty request body.");
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Invalid("the request body is not valid JSON");
  return parsed;
}

HttpResponse Fault(std::string_view message) {
  return {400, json{{"fault_message", message}}.dump()};
}

uint64_t NowMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

}  // namespace

std::string_view InstanceStateName(InstanceState state) {
  switch (state) {
    case InstanceState::kNotStarted:
      return "Not started";
    case InstanceState::kRunning:
      return "Running";
    case InstanceState::kPaused:
      return "Paused";
    case InstanceState::kStopped:
      return "Stopped";
  }
  return "Unknown";
}

VmController::VmController(VmmConfig defaults, Options options)
    : config_(std::move(defaults)), options_(std::move(options)) {
  boot_source_set_ = !config_.kernel_path.empty();
}

VmController::~VmController() {
  Stop();
  if (run_thread_.joinable()) run_thread_.join();
}

InstanceState VmController::state() const {
  std::lock_guard guard(mutex_);
  return state_;
}

Status VmController::RequireNotStarted() const {
  if (state() != InstanceState::kNotStarted) return Invalid(std::string(kNotAfterStart));
  return Ok();
}

Status VmController::RequireStarted() const {
  if (state() == InstanceState::kNotStarted) return Invalid(std::string(kNotBeforeStart));
  return Ok();
}

HttpResponse VmController::Handle(std::string_view method, std::string_view path,
                                  std::string_view body) {
  ++requests_;
  auto response = Route(method, path, body);
  if (!response) {
    ++failed_requests_;
    return Fault(response.error().message);
  }
  return *response;
}

Result<HttpResponse> VmController::Route(std::string_view method, std::string_view path,
                                         std::string_view body) {
  const HttpResponse no_content{204, ""};
  // Trailing slashes are tolerated, as by Firecracker's router.
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (method == "GET" && path == "/") {
    return HttpResponse{200, json{{"id", options_.instance_id},
                                  {"state", InstanceStateName(state())},
                                  {"vmm_version", kVmmVersion},
                                  {"app_name", "tartarus-vmm"}}
                                 .dump()};
  }
  if (method == "GET" && path == "/machine-config") {
    return HttpResponse{200, json{{"vcpu_count", config_.vcpus},
                                  {"mem_size_mib", config_.memory_mib},
                                  {"smt", false},
                                  {"track_dirty_pages", track_dirty_pages_},
                                  {"huge_pages", "None"}}
                                 .dump()};
  }
  struct Route {
    std::string_view method;
    std::string_view path;
    Status (VmController::*handler)(const json&);
  };
  static constexpr Route kRoutes[] = {
      {"PUT", "/boot-source", &VmController::PutBootSource},
      {"PUT", "/machine-config", &VmController::PutMachineConfig},
      {"PUT", "/vsock", &VmController::PutVsock},
      {"PUT", "/entropy", &VmController::PutEntropy},
      {"PUT", "/metrics", &VmController::PutMetrics},
      {"PUT", "/actions", &VmController::PutActions},
      {"PATCH", "/vm", &VmController::PatchVm},
      {"PUT", "/snapshot/create", &VmController::PutSnapshotCreate},
      {"PUT", "/snapshot/load", &VmController::PutSnapshotLoad},
  };
  for (const Route& route : kRoutes) {
    if (route.method == method && route.path == path) {
      json parsed = TRY(ParseBody(body));
      TRY((this->*route.handler)(parsed));
      return no_content;
    }
  }
  constexpr std::string_view kDrives = "/drives/";
  if (method == "PUT" && path.starts_with(kDrives) && path.size() > kDrives.size() &&
      path.find('/', kDrives.size()) == std::string_view::npos) {
    json parsed = TRY(ParseBody(body));
    TRY(PutDrive(path.substr(kDrives.size()), parsed));
    return no_content;
  }
  return Invalid("Invalid request method and/or path: " + Printable(method) + " " +
                 Printable(path) + ".");
}

Status VmController::PutBootSource(const json& body) {
  Fields fields(body, "boot-source");
  TRY(fields.Check({"kernel_image_path", "boot_args", "initrd_path"}));
  auto kernel = TRY(fields.NonEmpty("kernel_image_path", true));
  auto boot_args = TRY(fields.String("boot_args", false));
  auto initrd = TRY(fields.NonEmpty("initrd_path", false));
  TRY(RequireNotStarted());
  TRY(CheckReadableFile("boot-source: kernel_image_path", *kernel));
  if (initrd) TRY(CheckReadableFile("boot-source: initrd_path", *initrd));
  if (boot_args && boot_args->find('\0') != std::string::npos) {
    return Invalid("boot-source: `boot_args` contains a NUL byte");
  }
  config_.kernel_path = *kernel;
  config_.initrd_path = initrd.value_or("");
  // Firecracker's default command line when boot_args is absent.
  config_.cmdline = boot_args.value_or("reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0");
  boot_source_set_ = true;
  boot_configured_ = true;
  return Ok();
}

Status VmController::PutMachineConfig(const json& body) {
  Fields fields(body, "machine-config");
  TRY(fields.Check(
      {"vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "cpu_template", "huge_pages"}));
  auto vcpus = TRY(fields.Unsigned("vcpu_count", true, 1, kMaxVcpus));
  auto memory = TRY(fields.Unsigned("mem_size_mib", true, kMinMemMib, kMaxMemMib));
  auto smt = TRY(fields.Bool("smt", false));
  auto track = TRY(fields.Bool("track_dirty_pages", false));
  TRY(fields.Enum("cpu_template", false, {"None"}));
  TRY(fields.Enum("huge_pages", false, {"None"}));
  if (smt.value_or(false)) {
    // Firecracker: with SMT the vCPU count must be 1 or even; we expose no SMT topology.
    return Invalid("machine-config: `smt` true is not supported by tartarus-vmm");
  }
  TRY(RequireNotStarted());
  config_.vcpus = static_cast<uint32_t>(*vcpus);
  config_.memory_mib = *memory;
  track_dirty_pages_ = track.value_or(false);
  boot_configured_ = true;
  return Ok();
}

Status VmController::PutDrive(std::string_view path_id, const json& body) {
  Fields fields(body, "drive");
  TRY(fields.Check({"drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid",
                    "cache_type", "io_engine", "rate_limiter", "socket", "lethe"}));
  auto id = TRY(fields.NonEmpty("drive_id", true));
  auto path = TRY(fields.NonEmpty("path_on_host", true));
  auto is_root = TRY(fields.Bool("is_root_device", true));
  auto read_only = TRY(fields.Bool("is_read_only", false));
  auto lethe = TRY(fields.Bool("lethe", false));
  TRY(fields.Enum("cache_type", false, {"Unsafe", "Writeback"}));
  TRY(fields.Enum("io_engine", false, {"Sync"}));
  TRY(fields.Unsupported("partuuid"));
  TRY(fields.Unsupported("rate_limiter"));
  TRY(fields.Unsupported("socket"));
  if (*id != path_id) {
    return Invalid("drive: the id from the path (" + Quote(path_id) +
                   ") does not match the id from the body (" + Quote(*id) + ")");
  }
  if (!std::all_of(id->begin(), id->end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
      })) {
    return Invalid("drive: `drive_id` " + Quote(*id) +
                   " may only hold letters, digits, '_' and '-'");
  }
  TRY(RequireNotStarted());
  TRY(CheckReadableFile("drive " + *id + ": path_on_host", *path));
  DriveConfig drive{.id = *id,
                    .path = *path,
                    .read_only = read_only.value_or(false),
                    .is_root = *is_root,
                    .lethe = lethe.value_or(false)};
  // A PUT with an existing id replaces that drive (Firecracker's update before boot).
  std::vector<DriveConfig> drives = config_.drives;
  auto existing = std::find_if(drives.begin(), drives.end(),
                               [&](const DriveConfig& other) { return other.id == *id; });
  if (existing != drives.end()) {
    *existing = drive;
  } else {
    drives.push_back(drive);
  }
  if (auto status = ValidateDrives(drives); !status) return Invalid(status.error().message);
  config_.drives = std::move(drives);
  return Ok();
}

Status VmController::PutVsock(const json& body) {
  Fields fields(body, "vsock");
  TRY(fields.Check({"guest_cid", "uds_path", "vsock_id"}));
  // CIDs 0-2 are reserved (hypervisor, local, host); the CID is a u32 in Firecracker.
  auto cid = TRY(fields.Unsigned("guest_cid", true, 3, UINT32_MAX));
  auto uds = TRY(fields.NonEmpty("uds_path", true));
  TRY(fields.String("vsock_id", false));  // deprecated, ignored as by Firecracker
  if (uds->size() >= 108) {
    return Invalid("vsock: `uds_path` is longer than a Unix socket path can be (107 bytes)");
  }
  TRY(RequireNotStarted());
  config_.vsock = VsockConfig{.guest_cid = static_cast<uint32_t>(*cid), .uds_path = *uds};
  return Ok();
}

Status VmController::PutEntropy(const json& body) {
  Fields fields(body, "entropy");
  TRY(fields.Check({"rate_limiter"}));
  TRY(fields.Unsupported("rate_limiter"));
  TRY(RequireNotStarted());
  config_.entropy = true;
  return Ok();
}

Status VmController::PutMetrics(const json& body) {
  Fields fields(body, "metrics");
  TRY(fields.Check({"metrics_path"}));
  auto path = TRY(fields.NonEmpty("metrics_path", true));
  TRY(RequireNotStarted());
  if (metrics_fd_) return Invalid("metrics: the metrics system is already initialized");
  // As Firecracker: the file (or FIFO) must exist; lines are appended.
  int fd = ::open(path->c_str(), O_WRONLY | O_APPEND | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    return Invalid("metrics: cannot open `metrics_path` " + Quote(*path) + ": " +
                   ErrnoError("open").message.substr(6));
  }
  metrics_fd_.Reset(fd);
  return Ok();
}

Status VmController::PutActions(const json& body) {
  Fields fields(body, "actions");
  TRY(fields.Check({"action_type"}));
  auto action =
      TRY(fields.Enum("action_type", true, {"InstanceStart", "SendCtrlAltDel", "FlushMetrics"}));
  if (*action == "InstanceStart") return Start();
  if (*action == "FlushMetrics") {
    if (!metrics_fd_) return Invalid("actions: FlushMetrics: no metrics_path was set");
    return FlushMetrics();
  }
  TRY(RequireStarted());
  // As Firecracker: Ctrl+Alt+Del through the i8042 keyboard; the guest decides what to do.
  auto sent = vmm_->SendCtrlAltDel();
  if (!sent) return Invalid("actions: SendCtrlAltDel: " + sent.error().message);
  return Ok();
}

Status VmController::PatchVm(const json& body) {
  Fields fields(body, "vm");
  TRY(fields.Check({"state"}));
  auto target = TRY(fields.Enum("state", true, {"Paused", "Resumed"}));
  TRY(RequireStarted());
  std::unique_lock lock(mutex_);
  if (state_ == InstanceState::kStopped) return Invalid("vm: the microVM has stopped");
  if (*target == "Paused") {
    if (state_ == InstanceState::kPaused) return Ok();
    lock.unlock();
    TRY(vmm_->Pause());
    lock.lock();
    if (state_ == InstanceState::kRunning) state_ = InstanceState::kPaused;
    ++pauses_;
  } else {
    if (state_ == InstanceState::kRunning) return Ok();
    vmm_->Resume();
    state_ = InstanceState::kRunning;
    ++resumes_;
  }
  return Ok();
}

Status VmController::PutSnapshotCreate(const json& body) {
  Fields fields(body, "snapshot/create");
  TRY(fields.Check({"snapshot_type", "snapshot_path", "mem_file_path", "version"}));
  SnapshotCreateParams params;
  params.snapshot_type =
      TRY(fields.Enum("snapshot_type", false, {"Full", "Diff"})).value_or("Full");
  params.snapshot_path = *TRY(fields.NonEmpty("snapshot_path", true));
  params.mem_file_path = *TRY(fields.NonEmpty("mem_file_path", true));
  TRY(fields.String("version", false));  // deprecated by Firecracker, ignored
  if (params.snapshot_type == "Diff" && !track_dirty_pages_) {
    return Invalid("snapshot/create: a Diff snapshot needs `track_dirty_pages` in machine-config");
  }
  TRY(RequireStarted());
  if (state() != InstanceState::kPaused) {
    return Invalid("snapshot/create: the microVM must be paused first (PATCH /vm Paused)");
  }
  if (params.snapshot_type == "Diff") {
    return Invalid(
        "snapshot/create: Diff snapshots are not supported by tartarus-vmm (no dirty-page "
        "tracking yet); use `snapshot_type` `Full`");
  }
  if (options_.create_snapshot) return options_.create_snapshot(*vmm_, params);
  auto created = vmm_->CreateSnapshot(params.snapshot_path, params.mem_file_path);
  if (!created) return Invalid("snapshot/create: " + created.error().message);
  return Ok();
}

Status VmController::PutSnapshotLoad(const json& body) {
  Fields fields(body, "snapshot/load");
  TRY(fields.Check({"snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots",
                    "track_dirty_pages", "resume_vm"}));
  SnapshotLoadParams params;
  params.snapshot_path = *TRY(fields.NonEmpty("snapshot_path", true));
  auto mem_file = TRY(fields.NonEmpty("mem_file_path", false));
  params.track_dirty_pages = TRY(fields.Bool("track_dirty_pages", false)).value_or(false) ||
                             TRY(fields.Bool("enable_diff_snapshots", false)).value_or(false);
  params.resume_vm = TRY(fields.Bool("resume_vm", false)).value_or(false);
  if (fields.Has("mem_backend")) {
    if (mem_file) {
      return Invalid("snapshot/load: give either `mem_file_path` or `mem_backend`, not both");
    }
    const json& backend = body["mem_backend"];
    Fields backend_fields(backend, "snapshot/load: mem_backend");
    TRY(backend_fields.Check({"backend_type", "backend_path"}));
    params.mem_backend_type = *TRY(backend_fields.Enum("backend_type", true, {"File", "Uffd"}));
    params.mem_backend_path = *TRY(backend_fields.NonEmpty("backend_path", true));
  } else if (mem_file) {
    params.mem_backend_path = *mem_file;
  } else {
    return Invalid("snapshot/load: missing field `mem_backend` (or `mem_file_path`)");
  }
  TRY(RequireNotStarted());
  // Firecracker: a snapshot loads into a fresh VMM only.
  if (!config_.drives.empty() || config_.entropy || config_.vsock || boot_configured_) {
    return Invalid(
        "snapshot/load: Loading a microVM snapshot not allowed after configuring boot-specific "
        "resources (boot-source, machine-config, drives, vsock, entropy).");
  }
  if (params.mem_backend_type == "Uffd") {
    return Invalid(
        "snapshot/load: `backend_type` `Uffd` is not supported by tartarus-vmm; use `File`");
  }
  Result<std::unique_ptr<Vmm>> restored =
      options_.load_snapshot ? options_.load_snapshot(config_, params)
                             : Vmm::Restore(config_, params.snapshot_path, params.mem_backend_path);
  if (!restored) return Invalid("snapshot/load: " + restored.error().message);
  vmm_ = std::move(*restored);
  // What the snapshot held is now the configuration (GET /machine-config shows it).
  config_ = vmm_->config();
  track_dirty_pages_ = params.track_dirty_pages;
  if (!params.resume_vm) {
    TRY(vmm_->Pause());  // before Run(): the vCPU threads park as they start
    ++pauses_;
  }
  RunVmm(params.resume_vm ? InstanceState::kRunning : InstanceState::kPaused);
  return Ok();
}

Status VmController::Start() {
  TRY(RequireNotStarted());
  if (!boot_source_set_) {
    return Invalid(
        "InstanceStart: no boot source: PUT /boot-source with a kernel_image_path first");
  }
  auto vmm = Vmm::Create(config_);
  if (!vmm) return Invalid("InstanceStart: " + vmm.error().message);
  vmm_ = std::move(*vmm);
  RunVmm(InstanceState::kRunning);
  return Ok();
}

void VmController::RunVmm(InstanceState initial) {
  {
    std::lock_guard guard(mutex_);
    state_ = initial;
  }
  run_thread_ = std::thread([this] {
    Result<RunReport> report = vmm_->Run();
    {
      std::lock_guard guard(mutex_);
      report_ = std::move(report);
      state_ = InstanceState::kStopped;
    }
    stopped_.notify_all();
  });
}

Result<RunReport> VmController::WaitForStop() {
  std::unique_lock lock(mutex_);
  stopped_.wait(lock, [this] { return report_.has_value(); });
  return *report_;
}

void VmController::Stop() {
  if (vmm_) {
    vmm_->Resume();  // a paused VM's vCPU threads must see the stop
    vmm_->RequestStop();
  }
}

std::string VmController::MetricsJson() const {
  json vmm = {{"state", InstanceStateName(state())}, {"pauses", pauses_}, {"resumes", resumes_}};
  {
    std::lock_guard guard(mutex_);
    if (report_ && *report_) {
      vmm["exits"] = (*report_)->exits;
      vmm["stop_reason"] = StopReasonName((*report_)->reason);
      if ((*report_)->boot_complete) vmm["boot_complete_us"] = (*report_)->boot_complete->count();
    }
  }
  json line = {{"utc_timestamp_ms", NowMs()},
               {"api_server", {{"requests", requests_}, {"failed_requests", failed_requests_}}},
               {"vmm", vmm},
               {"metrics", {{"flushes", metrics_flushes_ + 1}}}};
  return line.dump();
}

Status VmController::FlushMetrics() {
  if (!metrics_fd_) return Ok();
  std::string line = MetricsJson() + "\n";
  ++metrics_flushes_;
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(metrics_fd_.Get(), line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(ErrnoError("metrics: write"));
    done += static_cast<size_t>(n);
  }
  return Ok();
}

Status VmController::ApplyConfigFile(std::string_view text) {
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return Invalid("config file: not valid JSON");
  Fields top(parsed, "config file");
  TRY(top.Check({"boot-source", "machine-config", "drives", "vsock", "entropy", "metrics",
                 "network-interfaces", "logger", "balloon", "mmds-config", "cpu-config"}));
  // Sections Firecracker has and tartarus-vmm does not: an empty value is fine.
  for (std::string_view name :
       {"network-interfaces", "logger", "balloon", "mmds-config", "cpu-config"}) {
    auto it = parsed.find(name);
    if (it != parsed.end() && !it->is_null() && !(it->is_array() && it->empty())) {
      return Invalid("config file: " + Quote(name) + " is not supported by tartarus-vmm");
    }
  }
  auto section = [&](std::string_view name,
                     Status (VmController::*handler)(const json&)) -> Status {
    auto it = parsed.find(name);
    if (it == parsed.end() || it->is_null()) return Ok();
    auto status = (this->*handler)(*it);
    if (!status) return Fail(status.error().Context("config file"));
    return Ok();
  };
  if (!parsed.contains("boot-source")) return Invalid("config file: missing `boot-source`");
  TRY(section("boot-source", &VmController::PutBootSource));
  TRY(section("machine-config", &VmController::PutMachineConfig));
  TRY(section("vsock", &VmController::PutVsock));
  TRY(section("entropy", &VmController::PutEntropy));
  TRY(section("metrics", &VmController::PutMetrics));
  if (auto it = parsed.find("drives"); it != parsed.end() && !it->is_null()) {
    if (!it->is_array()) return Invalid("config file: `drives` must be an array");
    for (const json& drive : *it) {
      std::string id;
      if (drive.is_object() && drive.contains("drive_id") && drive["drive_id"].is_string()) {
        id = drive["drive_id"].get<std::string>();
      }
      auto status = PutDrive(id, drive);
      if (!status) return Fail(status.error().Context("config file"));
    }
  }
  return Ok();
}

}  // namespace tartarus::vmm::api

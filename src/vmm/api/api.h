// tartarus-vmm (Tartarus's KVM microVM monitor): the Firecracker API's request handlers.
// VmController holds the microVM being configured, applies Firecracker's state rules
// (configuration before InstanceStart, Pause/Resume after), builds and runs the Vmm, and
// answers each request as Firecracker does: 204 for a successful PUT/PATCH, 200 with JSON for
// a GET, 400 with {"fault_message": "..."} otherwise. Bodies are checked like serde's
// deny_unknown_fields: an unknown field or a wrong type is a 400 naming it. The same checks
// serve --config-file (Firecracker's JSON with "boot-source", "drives", ...).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "common/unique_fd.h"
#include "vmm/api/http.h"
#include "vmm/vmm.h"

namespace tartarus::vmm::api {

inline constexpr std::string_view kVmmVersion = "0.1.0";

// PUT /snapshot/create, validated.
struct SnapshotCreateParams {
  std::string snapshot_type = "Full";  // "Full" or "Diff"
  std::string snapshot_path;
  std::string mem_file_path;
};

// PUT /snapshot/load, validated (mem_file_path is folded into a File backend).
struct SnapshotLoadParams {
  std::string snapshot_path;
  std::string mem_backend_type = "File";  // "File" or "Uffd"
  std::string mem_backend_path;
  bool track_dirty_pages = false;
  bool resume_vm = false;
};

enum class InstanceState { kNotStarted, kRunning, kPaused, kStopped };
std::string_view InstanceStateName(InstanceState state);

class VmController {
 public:
  struct Options {
    std::string instance_id = "anonymous-instance";
    // The snapshot seams, called after the body and the state rules were checked. Unset:
    // Vmm::CreateSnapshot and Vmm::Restore (tests replace them to see the parameters).
    std::function<Status(Vmm&, const SnapshotCreateParams&)> create_snapshot;
    // Returns the restored, not yet running VM; the controller runs it (paused unless
    // resume_vm).
    std::function<Result<std::unique_ptr<Vmm>>(const VmmConfig&, const SnapshotLoadParams&)>
        load_snapshot;
  };

  // defaults: what the command line set (serial output, kernel, lethe_dir, ...).
  VmController(VmmConfig defaults, Options options);
  ~VmController();
  VmController(const VmController&) = delete;
  VmController& operator=(const VmController&) = delete;

  // One API request. Safe to call from one thread at a time (the API thread).
  HttpResponse Handle(std::string_view method, std::string_view path, std::string_view body);

  // Applies Firecracker's --config-file JSON (before InstanceStart).
  Status ApplyConfigFile(std::string_view json);
  // InstanceStart: builds the Vmm from the configuration and runs it on its own thread.
  Status Start();
  // Blocks until the VM has been started (by the API) and has stopped; its report.
  Result<RunReport> WaitForStop();
  // Stops a running VM (for shutdown).
  void Stop();

  InstanceState state() const;
  const VmmConfig& config() const { return config_; }
  // The metrics line PUT /metrics writes on FlushMetrics and at exit.
  std::string MetricsJson() const;
  // Appends MetricsJson() to the metrics file, if one was configured.
  Status FlushMetrics();

 private:
  Result<HttpResponse> Route(std::string_view method, std::string_view path, std::string_view body);
  Status PutBootSource(const nlohmann::json& json);
  Status PutMachineConfig(const nlohmann::json& json);
  Status PutDrive(std::string_view path_id, const nlohmann::json& json);
  Status PutVsock(const nlohmann::json& json);
  Status PutEntropy(const nlohmann::json& json);
  Status PutMetrics(const nlohmann::json& json);
  Status PutActions(const nlohmann::json& json);
  Status PatchVm(const nlohmann::json& json);
  Status PutSnapshotCreate(const nlohmann::json& json);
  Status PutSnapshotLoad(const nlohmann::json& json);
  Status RequireNotStarted() const;
  Status RequireStarted() const;
  // Runs vmm_ on run_thread_ (InstanceStart, or a loaded snapshot).
  void RunVmm(InstanceState initial);

  VmmConfig config_;
  Options options_;
  bool boot_source_set_ = false;
  // A boot-source or machine-config PUT happened: a snapshot can no longer be loaded.
  bool boot_configured_ = false;
  bool track_dirty_pages_ = false;
  UniqueFd metrics_fd_;

  std::unique_ptr<Vmm> vmm_;
  std::thread run_thread_;
  mutable std::mutex mutex_;
  std::condition_variable stopped_;
  InstanceState state_ = InstanceState::kNotStarted;
  std::optional<Result<RunReport>> report_;

  // Counters for the metrics line.
  uint64_t requests_ = 0;
  uint64_t failed_requests_ = 0;
  uint64_t pauses_ = 0;
  uint64_t resumes_ = 0;
  uint64_t metrics_flushes_ = 0;
};

}  // namespace tartarus::vmm::api

// The Tartarus runtime: one interface over the isolation backends (container = runc/crun,
// gvisor = runsc, microvm = tartarus-vmm). A backend starts an
// isolation boundary running the guest agent as PID 1 and hands back a byte stream to
// it; everything above (exec, streaming, files, timeouts) speaks the guest protocol over
// that stream and is written once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace tartarus::runtime {

struct Limits {
  uint32_t millicpus = 1000;             // CPU bandwidth: 1000 = one CPU
  uint64_t memory_bytes = 512ull << 20;  // memory (and swap) limit
  uint32_t pids = 512;                   // processes and threads in the sandbox
  uint64_t disk_bytes = 1ull << 30;      // writable layer size (Lethe)
  uint32_t open_files = 4096;            // RLIMIT_NOFILE
};

struct SandboxSpec {
  std::string id;          // [a-z0-9-], at most 64 chars; unique on this host
  std::string rootfs;      // the template's root filesystem: shared, never written
  std::string agent_path;  // host path of the static guest agent, mounted read-only
  std::string hostname = "tartarus";
  Limits limits;
  // One line per slow first-use step the backend takes (the microvm backend making the
  // template's ext4 image); unset: the line goes to stderr.
  std::function<void(std::string_view line)> progress;
};

// Resource usage of a sandbox, read from its cgroup.
struct Usage {
  uint64_t cpu_ns = 0;
  uint64_t memory_current_bytes = 0;
  uint64_t memory_peak_bytes = 0;
  uint32_t pids_current = 0;
  bool oom_killed = false;  // the memory limit killed something in the sandbox
};

// A running isolation boundary. Destroy() always runs, from the destructor if not before.
class Sandbox {
 public:
  virtual ~Sandbox() = default;
  virtual const std::string& Id() const = 0;
  // The byte stream to the guest agent: read agent frames from `from_agent`, write host
  // frames to `to_agent`. Can be taken once.
  virtual UniqueFd TakeFromAgent() = 0;
  virtual UniqueFd TakeToAgent() = 0;
  virtual Result<Usage> GetUsage() = 0;
  // Waits until the runtime has started the sandbox (the backend knows its init process),
  // or fails with the runtime's own error (it exited early, or took too long). Start()
  // returns before that, so that the caller's handshake with the agent, which answers as
  // soon as it runs, overlaps with the runtime's last steps; call this after the
  // handshake, and when the handshake failed, for the reason. Idempotent.
  virtual Status WaitStarted() = 0;
  // Kills every process of the sandbox and removes all its host state (processes, mounts,
  // cgroups, directories). Idempotent.
  virtual Status Destroy() = 0;
};

// The unprivileged ids the microvm backend's jailed tartarus-vmm runs as (docs/runtime.md,
// "Jailing"): one fixed pair for every VM, since the jail already gives each VM its own
// namespaces and only its own files. Not 0: a VMM running as root gains nothing from the jail.
inline constexpr uint32_t kDefaultVmmUid = 64500;
inline constexpr uint32_t kDefaultVmmGid = 64500;

struct RuntimeConfig {
  std::string state_dir;                   // runtime state lives under <state_dir>/runtime
  std::string gvisor_platform = "ptrace";  // runsc --platform
  uint32_t vmm_uid = kDefaultVmmUid;       // microvm: the jailed tartarus-vmm's uid and gid
  uint32_t vmm_gid = kDefaultVmmGid;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view Name() const = 0;
  // Fails with a clear, actionable message when this host cannot run the backend
  // (binary missing, unusable cgroups, ...).
  virtual Status CheckAvailable() const = 0;
  // Prepares the sandbox and starts its runtime, without waiting for the sandbox to run:
  // see Sandbox::WaitStarted(). Bytes written to the agent's stream meanwhile wait in it.
  virtual Result<std::unique_ptr<Sandbox>> Start(const SandboxSpec& spec) = 0;
};

// Backend names: "container" (runc), "container-crun", "gvisor", "microvm" (tartarus-vmm).
Result<std::unique_ptr<Backend>> MakeBackend(std::string_view name, const RuntimeConfig& config);
std::vector<std::string> BackendNames();

// Removes what sandboxes left behind after their owning process died (kill -9, crash,
// power loss): containers, mounts, cgroups, directories. A sandbox's owner is the
// process that called Start(); its pid and start time are recorded under the state dir.
// Returns the ids of the sandboxes that were cleaned up.
Result<std::vector<std::string>> CleanupLeftovers(const RuntimeConfig& config);

}  // namespace tartarus::runtime

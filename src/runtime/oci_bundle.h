// The Tartarus runtime: the OCI profile of container and gVisor sandboxes.
// Every security and resource choice of a sandbox's config.json is made in oci_bundle.cc,
// in one place, and explained in docs/runtime.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "runtime/runtime.h"

namespace tartarus::runtime {

// Where the agent appears inside every sandbox, and how it is started.
inline constexpr std::string_view kAgentGuestPath = "/.tartarus/agent";
// CFS period for the CPU quota: 100 ms, the kernel's default.
inline constexpr uint64_t kCpuPeriodUs = 100000;

// Ok when `id` is 1 to 64 characters of [a-z0-9-]: it becomes a path component, a cgroup
// name and a runc container id, so nothing else may pass.
Status ValidateSandboxId(std::string_view id);

// The cgroup path handed to the OCI runtime: "/tartarus/<id>".
std::string CgroupsPathFor(std::string_view id);

// CPU quota in microseconds per kCpuPeriodUs for `millicpus` (1000 = one CPU).
int64_t CpuQuotaUs(uint32_t millicpus);

// The syscalls the default seccomp profile denies with EPERM (see docs/runtime.md).
const std::vector<std::string>& DeniedSyscalls();

// How a backend's runtime differs from runc's model.
struct OciProfileOptions {
  // Host processes and threads the runtime itself puts in the sandbox's cgroup, added to
  // the pids limit. gVisor's sentry, gofer and ptrace stubs all count there.
  uint32_t runtime_host_pids = 0;
  // The agent serves the protocol on fds 3 (in) and 4 (out), handed over with
  // `--preserve-fds 2` (runc, crun), instead of on stdio, which runc relays through pipes
  // of its own: every frame then costs two extra copies and a wake-up of runc.
  bool agent_on_preserved_fds = false;
  // The agent installs the seccomp filter itself (`--seccomp`, common/seccomp_filter.h)
  // and config.json has none: runc would compile the OCI profile with libseccomp on every
  // start, ~3 ms. runsc applies the OCI profile in its own kernel instead.
  bool seccomp_in_agent = false;
};

// The fds the agent serves on with agent_on_preserved_fds, as the runtime numbers them.
inline constexpr int kAgentPreservedFdIn = 3;
inline constexpr int kAgentPreservedFdOut = 4;

// The host pids gVisor needs next to the sandboxed processes (Go runtime threads of the
// sentry and gofer, one ptrace stub per guest address space): measured, see runtime.md.
inline constexpr uint32_t kGvisorRuntimeHostPids = 128;

// The text of config.json for `spec`; `rootfs_dir` is the (already mounted) root, usually
// "<bundle>/rootfs". Fails on invalid specs and on paths that are not valid UTF-8.
Result<std::string> OciConfigText(const SandboxSpec& spec, const std::string& rootfs_dir,
                                  const OciProfileOptions& options = {});

// The same, parsed (for tests and inspection). Never throws.
Result<nlohmann::json> MakeOciConfig(const SandboxSpec& spec, const std::string& rootfs_dir,
                                     const OciProfileOptions& options = {});

// Writes <bundle_dir>/config.json (bundle_dir must exist).
Status WriteOciBundle(const std::string& bundle_dir, const SandboxSpec& spec,
                      const OciProfileOptions& options = {});

}  // namespace tartarus::runtime

// The Tartarus runtime: the OCI backends. "container" runs the sandbox under runc,
// "container-crun" under crun, "gvisor" under runsc; all three take the same bundle
// (oci_bundle.h) on a Lethe root and hand back the agent's stdio as the byte stream.
//
// State layout under <state_dir>/runtime:
//   sandboxes/<id>/                 Lethe's tmpfs (mounted on the dir), also the OCI bundle:
//     owner                         "<pid> <start time>" of the process that called Start
//     upper/ work/                  the overlay's writable layer
//     rootfs/                       the overlay: the sandbox's root
//     config.json                   the OCI config
//     init.pid                      the pid of the container's init (gVisor: its sandbox)
//     runtime                       "<pid> <start time>" of the OCI runtime process
//     runtime.log                   the OCI runtime's stderr (startup errors)
//   runc/, crun/, runsc/            the runtimes' own --root state
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"
#include "runtime/runtime.h"

namespace tartarus::runtime {

enum class OciRuntime { kRunc, kCrun, kRunsc };

std::unique_ptr<Backend> MakeOciBackend(OciRuntime runtime, const RuntimeConfig& config);

// Paths of the state layout above.
std::string RuntimeStateDir(const RuntimeConfig& config);
std::string SandboxesDir(const RuntimeConfig& config);
std::string SandboxDir(const RuntimeConfig& config, std::string_view id);
std::string OciRootDir(const RuntimeConfig& config, OciRuntime runtime);

// Kills and removes everything of sandbox `id` whatever state it is in (used by
// CleanupLeftovers). Each step is skipped when already done.
Status TeardownSandboxState(const RuntimeConfig& config, std::string_view id);

}  // namespace tartarus::runtime

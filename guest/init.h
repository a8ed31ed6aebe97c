// tartarus-agent's init mode (guest agent, microVM boot): when the agent is PID 1 of a
// microVM's initramfs it reads its settings from the kernel command line, loads the kernel
// modules shipped in the initramfs, mounts the template's ext4 image read-only under a
// tmpfs-backed overlay as the sandbox root, switches into it and then serves the guest
// protocol over vsock (or a terminal, tartarus.agent_tty). The decisions (options, module order,
// mount plan) are plain data so they are tested on any host; RunInit carries them out.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::guest {

// The vsock port the agent listens on unless the command line says otherwise.
inline constexpr uint32_t kDefaultVsockPort = 1024;

// What the host says on the kernel command line (keys `tartarus.*`; other words are the
// kernel's).
struct BootOptions {
  std::string root_device;                  // tartarus.root=/dev/vda (required)
  std::string root_fstype = "ext4";         // tartarus.rootfstype=
  uint32_t vsock_port = kDefaultVsockPort;  // tartarus.vsock_port=
  uint64_t disk_bytes = 1ull << 30;         // tartarus.disk_bytes=: the writable layer's size
  std::string hostname = "tartarus";        // tartarus.hostname=
  // tartarus.agent_tty=/dev/hvc0: serve the guest protocol on this terminal (put in raw mode)
  // instead of vsock, for hypervisors without a vsock device (QEMU without vhost-vsock, as
  // the QEMU boot test uses). The device must appear once the modules are loaded.
  std::string agent_tty;
};

// Parses /proc/cmdline's text. Unknown `tartarus.` keys, bad numbers, a relative root
// device and bad hostnames are errors naming the key.
Result<BootOptions> ParseBootOptions(std::string_view cmdline);

// A decimal port in [1, 2^32 - 2] (VMADDR_PORT_ANY is not a port one listens on).
Result<uint32_t> ParseVsockPort(std::string_view text);

// The .ko paths (relative to the modules.dep directory) to load for `wanted`, every
// module after its dependencies, each once. modules.dep is depmod's format
// ("kernel/a/x.ko: kernel/b/y.ko ..."); a module is named by its file name without .ko,
// '-' and '_' alike. Unknown modules, malformed lines and dependency cycles are errors.
Result<std::vector<std::string>> ModuleLoadOrder(std::string_view modules_dep,
                                                 const std::vector<std::string>& wanted);

// One step of getting from the initramfs to the sandbox root.
struct MountStep {
  enum class Kind { kMkdir, kMount, kMove } kind = Kind::kMount;
  std::string source;  // kMount: device or fs name; kMove: the mount point to move
  std::string target;
  std::string fstype;  // kMount
  unsigned long flags = 0;
  std::string data;  // kMount: fs options
  bool operator==(const MountStep&) const = default;
};

// Where the new root is assembled inside the initramfs.
inline constexpr const char* kNewRoot = "/sysroot";

// The steps after /proc, /sys and /dev are up and modules are loaded: the image read-only
// at /lower, a tmpfs of disk_bytes at /rw (upper/ and work/), the overlay at kNewRoot, and
// /dev, /proc, /sys moved into it. Switching into kNewRoot (MS_MOVE onto /, chroot) follows.
std::vector<MountStep> RootMountPlan(const BootOptions& options);

// /proc, /sys and /dev (devtmpfs) in the initramfs.
std::vector<MountStep> EarlyMountPlan();

// Carries a plan out; stops at the first failure, naming the step.
Status RunMountPlan(const std::vector<MountStep>& plan);

// The whole boot as PID 1: early mounts, modules from /lib/modules/<release>/ (the list in
// /lib/modules/tartarus.modules, one name a line), the root and agent_tty devices, the root,
// the switch, the hostname.
// Returns the options for the caller to serve on, or what failed.
Result<BootOptions> RunInit();

}  // namespace tartarus::guest

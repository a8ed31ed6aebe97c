// The microvm backend (Tartarus runtime): each sandbox in its own KVM microVM under
// tartarus-vmm (docs/vmm.md). The guest is Debian's cloud kernel with an initramfs whose
// /init is the static agent (scripts/build-guest-initramfs.sh, guest/init.h); the template
// is its read-only root drive as an ext4 image (template/ext4_image.h) under a tmpfs overlay
// in the guest; the agent's byte stream is Firecracker's hybrid vsock (the host connects to
// a Unix socket and writes `CONNECT <port>\n`). Its availability check names exactly what a
// host lacks, with the command that fixes it.
//
// State under <state_dir>:
//   vmm/kernel/linux-image-<release>/boot/vmlinuz-<release>   scripts/fetch-guest-kernel.sh
//   vmm/initramfs-<release>.cpio.gz                           scripts/build-guest-initramfs.sh
//   runtime/sandboxes/<id>/  owner, runtime (the jailer's pid: tartarus-vmm --jail, whose
//                            child is the VMM), runtime.log (serial console, VMM and jailer
//                            messages), vm.json (--config-file, owned by the VMM's uid),
//                            vsock/v.sock (the VMM's uid owns vsock/), jail/<id>/ (the VM's
//                            root while it runs; the jailer removes it)
//
// tartarus-vmm always runs jailed (src/vmm/jailer.h): its own namespaces and root holding
// only the files vm.json names, as RuntimeConfig::vmm_uid/vmm_gid, in a cgroup v2 leaf
// <cgroup2>/tartarus-vmm/<id> limited by MicrovmVmmLimits. A host without usable cgroup v2
// controllers gets the VM without those limits and a line saying so in runtime.log.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "runtime/runtime.h"

namespace tartarus::runtime {

// What the host offers a microVM, read from /dev/kvm, /sys/module and /proc/cpuinfo.
struct KvmHostFacts {
  bool dev_kvm_usable = false;  // /dev/kvm opens read-write
  bool pvm = false;             // kvm_pvm is loaded
  bool hardware_virt = false;   // vmx or svm in /proc/cpuinfo
  std::string dev_kvm_error;    // why /dev/kvm did not open
};
KvmHostFacts ReadKvmHostFacts();

// Why a Linux microVM cannot run on a host with these facts; empty when it can.
std::string MicrovmUnavailableReason(const KvmHostFacts& facts);

// The guest's kernel and initramfs of one release.
struct GuestImages {
  std::string release;    // e.g. 6.1.0-56-cloud-amd64
  std::string kernel;     // .../boot/vmlinuz-<release>
  std::string initramfs;  // <vmm_dir>/initramfs-<release>.cpio.gz
};
// <state_dir>/vmm.
std::string MicrovmStateDir(const RuntimeConfig& config);
// The newest fetched kernel that has an initramfs; otherwise an error naming the missing
// piece and the script that makes it.
Result<GuestImages> FindGuestImages(const std::string& vmm_dir);

// Everything one VM is started with.
inline constexpr uint32_t kAgentVsockPort = 1024;
inline constexpr uint32_t kGuestCid = 3;
struct MicrovmLaunch {
  GuestImages images;
  std::string root_image;  // the template's ext4 image, attached read-only as /dev/vda
  std::string vsock_uds;   // as the VMM binds it (relative to its working directory)
  uint32_t vcpus = 1;
  uint32_t millicpus = 1000;  // the CPU bandwidth asked for: the jail's cpu.max
  uint64_t memory_mib = 512;
  uint64_t disk_bytes = 1ull << 30;  // the guest's tmpfs upper layer
  std::string hostname = "tartarus";
};
// vCPUs (whole CPUs, at least one), memory and disk from the spec; the hostname checked,
// since it goes on the kernel command line.
Result<MicrovmLaunch> MakeMicrovmLaunch(const SandboxSpec& spec, GuestImages images,
                                        std::string root_image, std::string vsock_uds);
// The kernel command line: console, reboot on panic through the i8042, and the agent's
// tartarus.* keys (guest/init.h), `-- --init` last.
std::string MicrovmBootArgs(const MicrovmLaunch& launch);
// tartarus-vmm's --config-file (Firecracker's JSON): boot-source, machine-config, the root
// drive (read-only), vsock, entropy.
std::string MicrovmConfigJson(const MicrovmLaunch& launch);

// The jailed VMM's cgroup limits: what the whole VM costs the host, guest and VMM together.
// memory.max is guest RAM plus kVmmMemoryOverheadBytes plus 1/64 of guest RAM: the VMM's
// own heap, thread stacks and virtqueue buffers, KVM's page tables for guest memory (charged
// to the cgroup) and slack for the drive's page cache, which the kernel can reclaim.
// cpu.max is the spec's CPU bandwidth (at most one CPU per vCPU) per kCpuMaxPeriodUs.
// pids.max counts threads: one per vCPU plus kVmmThreadAllowance (main, monitor, vsock
// event thread, API, with room to spare); a VMM that forks or spawns threads beyond that is
// misbehaving.
inline constexpr uint64_t kVmmMemoryOverheadBytes = 64ull << 20;
inline constexpr uint64_t kCpuMaxPeriodUs = 100000;
inline constexpr uint32_t kVmmThreadAllowance = 16;
// The cgroup v2 parent of every VM's leaf (the jailer's default, passed explicitly).
inline constexpr std::string_view kVmmCgroupParent = "tartarus-vmm";
struct MicrovmCgroupLimits {
  uint64_t cpu_quota_us = 0;  // per kCpuMaxPeriodUs
  uint64_t memory_max_bytes = 0;
  uint32_t pids_max = 0;
};
MicrovmCgroupLimits MicrovmVmmLimits(const MicrovmLaunch& launch);

// Where one sandbox's VMM pieces live, under its sandbox dir.
std::string MicrovmConfigPath(const std::string& sandbox_dir);  // <dir>/vm.json
std::string MicrovmVsockPath(const std::string& sandbox_dir);   // <dir>/vsock/v.sock
std::string MicrovmJailBase(const std::string& sandbox_dir);    // <dir>/jail (--jail)

// What MicrovmVmmArgv needs besides the launch.
struct MicrovmVmmCommand {
  std::string vmm_path;     // the tartarus-vmm binary
  std::string sandbox_dir;  // absolute
  std::string id;           // the sandbox id: also the jail's --id and the cgroup leaf
  uint32_t uid = kDefaultVmmUid;
  uint32_t gid = kDefaultVmmGid;
};
// tartarus-vmm's argv for one launch: --config-file MicrovmConfigPath, --id, --jail
// MicrovmJailBase, --uid/--gid, --cgroup-parent kVmmCgroupParent, and --cpu-max,
// --memory-max, --pids-max from MicrovmVmmLimits. Refuses uid or gid 0, a relative sandbox
// dir or launch path (the jailer binds only absolute paths into the VM's root), an id the
// jailer would refuse, and a vsock path too long for a Unix socket (the VMM binds it by
// its absolute path).
Result<std::vector<std::string>> MicrovmVmmArgv(const MicrovmVmmCommand& command,
                                                const MicrovmLaunch& launch);

// Stops what a microVM sandbox may have left in `sandbox_dir` after its owner died: the
// jailer recorded in <dir>/runtime (SIGTERM, which makes it kill the VMM and remove the jail
// and cgroup; SIGKILL if it does not exit), then whatever still runs in the cgroup leaf,
// the leaf itself, the jail and vsock dirs. Nothing to do for other backends' sandboxes.
Status TeardownMicrovmJail(const std::string& sandbox_dir, std::string_view id);

// One attempt at Firecracker's hybrid vsock handshake on `uds_path`: connect, send
// `CONNECT <port>\n`, read `OK <host port>\n` (bytes after it belong to the stream).
// kNotFound when the socket is not there yet or nobody listens on the port in the guest
// (the VMM closes the connection): the caller retries while the guest boots.
Result<UniqueFd> ConnectHybridVsock(const std::string& uds_path, uint32_t port,
                                    std::chrono::milliseconds timeout);

std::unique_ptr<Backend> MakeMicrovmBackend(const RuntimeConfig& config);

}  // namespace tartarus::runtime

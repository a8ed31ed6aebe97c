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
//   runtime/sandboxes/<id>/  owner, runtime (the VMM's pid), runtime.log (serial console and
//                            VMM messages), vm.json (--config-file), vsock.sock
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

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

// One attempt at Firecracker's hybrid vsock handshake on `uds_path`: connect, send
// `CONNECT <port>\n`, read `OK <host port>\n` (bytes after it belong to the stream).
// kNotFound when the socket is not there yet or nobody listens on the port in the guest
// (the VMM closes the connection): the caller retries while the guest boots.
Result<UniqueFd> ConnectHybridVsock(const std::string& uds_path, uint32_t port,
                                    std::chrono::milliseconds timeout);

std::unique_ptr<Backend> MakeMicrovmBackend(const RuntimeConfig& config);

}  // namespace tartarus::runtime

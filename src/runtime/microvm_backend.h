// The microvm backend: each sandbox in its own KVM microVM under tartarus-vmm (docs/vmm.md).
// Its availability check names exactly why a host cannot run it; the start path (guest
// kernel, initramfs with the agent, the template as an ext4 image, the agent's stream over
// hybrid vsock) is being built in issue 4.
#pragma once

#include <memory>
#include <string>

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

std::unique_ptr<Backend> MakeMicrovmBackend(const RuntimeConfig& config);

}  // namespace tartarus::runtime

// tartarus-vmm (Tartarus's KVM microVM monitor): per-thread seccomp allowlists (Cerberus, the
// VMM's gatekeeper). Each kind of thread installs its own filter on itself once its setup is
// done (no TSYNC): the main/VMM thread first (the monitor and the vsock event thread inherit
// it), then every vCPU thread and the API thread stack a shorter list on top. Any syscall not
// on the list kills the whole process (SECCOMP_RET_KILL_PROCESS, SIGSYS). docs/vmm.md,
// "Seccomp filters", explains each entry.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::vmm {

enum class ThreadKind {
  kVmm,   // main thread (API requests, VM build, snapshots), monitor, vsock event thread
  kVcpu,  // KVM_RUN and the device models the guest's exits reach
  kApi,   // the HTTP server: poll, accept, read, write, hand requests to the VMM thread
};
std::string_view ThreadKindName(ThreadKind kind);

// A condition on one argument: allowed only if (its low 32 bits & mask) == value.
struct ArgumentRule {
  uint32_t index;
  uint32_t mask;
  uint32_t value;
};

struct AllowedSyscall {
  std::string_view name;
  int number;
  std::optional<ArgumentRule> rule;  // none: any arguments
};

// The allowlist of one thread kind. ioctl, where present, is further limited to KVM's ioctls
// and the terminal query stdio makes; mmap and mprotect never get PROT_EXEC; socket is
// AF_UNIX only.
std::span<const AllowedSyscall> AllowedSyscalls(ThreadKind kind);

// The classic-BPF program: x86_64 only, listed syscalls allowed, everything else
// SECCOMP_RET_KILL_PROCESS.
Result<std::vector<sock_filter>> BuildThreadFilter(ThreadKind kind);

// Sets no_new_privs and installs kind's filter on the calling thread only.
Status InstallThreadFilter(ThreadKind kind);

// Test only: when TARTARUS_VMM_TEST_SECCOMP_VIOLATION names this thread kind ("vcpu", "api",
// "vmm"), issues a syscall no list allows (getppid), so the process must die with SIGSYS.
void ViolateForTestIfAsked(ThreadKind kind);

}  // namespace tartarus::vmm

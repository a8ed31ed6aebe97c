// tartarus-vmm (Tartarus's KVM microVM monitor): per-thread seccomp allowlists (Cerberus).
// The lists were found with `strace -f` on the KVM tests (boot, virtio-blk, vsock, API,
// snapshot create/load) and are kept to what the code paths named beside each entry need.
#include "vmm/seccomp.h"

#include <linux/audit.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <string>

#include "common/bpf_assembler.h"

namespace tartarus::vmm {
namespace {

#define ALLOW(name) \
  { #name, __NR_##name, std::nullopt }
// Allowed only when (low 32 bits of argument `index` & mask) == value.
#define ALLOW_IF(name, index, mask, value)                  \
  {                                                         \
#name, __NR_##name, ArgumentRule { index, mask, value } \
  }

// Every thread: memory allocation (malloc arenas are per thread), locks and condition
// variables, the vCPU kick signal's return, logging to stderr, pthread_kill, and leaving.
// Nothing the VMM does after start-up maps code, so no mapping may become executable: code
// injected into a compromised VMM's memory cannot be run (W^X).
#define COMMON_SYSCALLS                                                               \
  ALLOW(futex), ALLOW_IF(mmap, 2, PROT_EXEC, 0), ALLOW(munmap),                       \
      ALLOW_IF(mprotect, 2, PROT_EXEC, 0), ALLOW(madvise), ALLOW(brk), ALLOW(mremap), \
      ALLOW(rt_sigreturn), ALLOW(rt_sigprocmask), ALLOW(write), ALLOW(clock_gettime), \
      ALLOW(restart_syscall), ALLOW(getpid), ALLOW(tgkill), ALLOW(exit), ALLOW(exit_group)

constexpr AllowedSyscall kVcpu[] = {
    COMMON_SYSCALLS,
    ALLOW(ioctl),  // KVM_RUN, MP state and registers (halt check, snapshot capture)
    // virtio-blk on the notifying vCPU: FileDisk/LetheDisk reads, writes, copy-up, flush.
    ALLOW(pread64),
    ALLOW(pwrite64),
    ALLOW(fdatasync),
    ALLOW(getrandom),  // virtio-rng
    // virtio-vsock tx (guest to host) runs on the notifying vCPU: stream data, the kick
    // eventfd, closing a connection. Guest-initiated connects to <uds>_<port> are made by the
    // vsock event thread, so a vCPU never creates or connects a socket.
    ALLOW(read),
    ALLOW(sendto),
    ALLOW(recvfrom),
    ALLOW(epoll_ctl),
    ALLOW(close),
};

constexpr AllowedSyscall kApi[] = {
    COMMON_SYSCALLS,
    ALLOW(poll),  // the listener, the stop pipe and up to 16 connections
    ALLOW(accept4),  ALLOW(read), ALLOW(recvfrom), ALLOW(sendto), ALLOW(close),
};

constexpr AllowedSyscall kVmm[] = {
    COMMON_SYSCALLS,
    ALLOW(ioctl),  // KVM (VM build, irq lines, snapshot) and stdio's terminal check
    // Files: kernel, initrd, drives, Lethe overlays, metrics, snapshot and memory files.
    ALLOW(openat),
    ALLOW(close),
    ALLOW(read),
    ALLOW(pread64),
    ALLOW(pwrite64),
    ALLOW(lseek),       // a disk's size
    ALLOW(newfstatat),  // fstat and stat in glibc 2.36
    ALLOW(access),      // the API's file checks, HostKvmIsPvm
    ALLOW(ftruncate),
    ALLOW(fsync),
    ALLOW(fdatasync),
    ALLOW(rename),  // snapshot state file: written under a temporary name
    ALLOW(unlink),  // Lethe overlays are unnamed at once; the API socket at exit
    ALLOW(getrandom),
    // Threads: vCPUs, the monitor, the vsock event thread, the stop waiter.
    ALLOW(clone3),  // pthread_create (glibc falls back to clone only on ENOSYS)
    ALLOW(set_robust_list),
    ALLOW(rseq),
    ALLOW(rt_sigaction),     // the vCPU kick handler
    ALLOW(clock_nanosleep),  // the monitor's kick loop while vCPUs leave KVM_RUN
    // vsock: the Unix listener, host connections and guest-initiated ones, the epoll loop
    // and its eventfds. Unix sockets only: the VMM never talks to a network.
    ALLOW_IF(socket, 0, 0xffffffff, AF_UNIX),
    ALLOW(bind),
    ALLOW(listen),
    ALLOW(accept4),
    ALLOW(connect),
    ALLOW(sendto),
    ALLOW(recvfrom),
    ALLOW(epoll_create1),
    ALLOW(epoll_ctl),
    ALLOW(epoll_wait),
    ALLOW(eventfd2),
    ALLOW(poll),  // the API thread's list is stacked on this one
    // Stacking the vCPU and API filters (filters only ever narrow what is allowed).
    ALLOW(seccomp),
};

#undef COMMON_SYSCALLS
#undef ALLOW_IF
#undef ALLOW

constexpr uint32_t kX32SyscallBit = 0x40000000;
constexpr uint32_t kIoctlTypeMask = 0xff00;
constexpr uint32_t kKvmIoctlType = KVMIO << 8;
// The low 32 bits of argument `index` (x86_64 is little endian).
constexpr uint32_t ArgumentLow(uint32_t index) {
  return offsetof(seccomp_data, args) + index * sizeof(uint64_t);
}

}  // namespace

std::string_view ThreadKindName(ThreadKind kind) {
  switch (kind) {
    case ThreadKind::kVmm:
      return "vmm";
    case ThreadKind::kVcpu:
      return "vcpu";
    case ThreadKind::kApi:
      return "api";
  }
  return "unknown";
}

std::span<const AllowedSyscall> AllowedSyscalls(ThreadKind kind) {
  switch (kind) {
    case ThreadKind::kVmm:
      return kVmm;
    case ThreadKind::kVcpu:
      return kVcpu;
    case ThreadKind::kApi:
      return kApi;
  }
  return {};
}

Result<std::vector<sock_filter>> BuildThreadFilter(ThreadKind kind) {
  BpfAssembler p;
  constexpr auto kNone = BpfAssembler::kNext;
  const auto kAllow = p.NewLabel(), kKill = p.NewLabel(), kIoctl = p.NewLabel();
  p.Load(offsetof(seccomp_data, arch));
  p.Jump(BPF_JEQ, AUDIT_ARCH_X86_64, kNone, kKill);
  p.Load(offsetof(seccomp_data, nr));
  p.Jump(BPF_JGE, kX32SyscallBit, kKill, kNone);
  std::vector<std::pair<ArgumentRule, BpfAssembler::Label>> rules;
  for (const AllowedSyscall& allowed : AllowedSyscalls(kind)) {
    BpfAssembler::Label target = kAllow;
    if (allowed.number == __NR_ioctl) {
      target = kIoctl;
    } else if (allowed.rule) {
      target = p.NewLabel();
      rules.emplace_back(*allowed.rule, target);
    }
    p.Jump(BPF_JEQ, static_cast<uint32_t>(allowed.number), target, kNone);
  }
  p.Return(SECCOMP_RET_KILL_PROCESS);
  for (const auto& [rule, label] : rules) {
    p.Bind(label);
    p.Load(ArgumentLow(rule.index));
    p.And(rule.mask);
    p.Jump(BPF_JEQ, rule.value, kAllow, kKill);
  }
  // ioctl: KVM's requests (type 0xAE), and TCGETS (stdio asks whether stdout is a terminal).
  p.Bind(kIoctl);
  p.Load(ArgumentLow(1));
  p.Jump(BPF_JEQ, TCGETS, kAllow, kNone);
  p.And(kIoctlTypeMask);
  p.Jump(BPF_JEQ, kKvmIoctlType, kAllow, kNone);
  p.Bind(kKill);
  p.Return(SECCOMP_RET_KILL_PROCESS);
  p.Bind(kAllow);
  p.Return(SECCOMP_RET_ALLOW);
  return p.Finish();
}

Status InstallThreadFilter(ThreadKind kind) {
  std::vector<sock_filter> program = TRY(BuildThreadFilter(kind));
  sock_fprog fprog{static_cast<unsigned short>(program.size()), program.data()};
  // Needed to install a filter without CAP_SYS_ADMIN. The VMM thread's filter comes first and
  // every thread started after it inherits the flag (its list has no prctl).
  if (kind == ThreadKind::kVmm && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    return FailErrno("prctl(PR_SET_NO_NEW_PRIVS)");
  }
  // The raw syscall (no TSYNC flag): the filter applies to this thread and its future children.
  if (::syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) {
    return FailErrno("seccomp: installing the " + std::string(ThreadKindName(kind)) + " filter");
  }
  return Ok();
}

void ViolateForTestIfAsked(ThreadKind kind) {
  const char* asked = std::getenv("TARTARUS_VMM_TEST_SECCOMP_VIOLATION");
  if (asked != nullptr && ThreadKindName(kind) == asked) ::syscall(__NR_getppid);
}

}  // namespace tartarus::vmm

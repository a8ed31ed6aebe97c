#include "common/seccomp_filter.h"

#include <linux/audit.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <string>

#include "common/bpf_assembler.h"

namespace tartarus {
namespace {

constexpr DeniedSyscall kDenied[] = {
    // Mounts and the namespaces/filesystems they lead to.
    {"mount", __NR_mount},
    {"umount", -1},
    {"umount2", __NR_umount2},
    {"pivot_root", __NR_pivot_root},
    {"mount_setattr", __NR_mount_setattr},
    {"move_mount", __NR_move_mount},
    {"open_tree", __NR_open_tree},
    {"fsopen", __NR_fsopen},
    {"fsconfig", __NR_fsconfig},
    {"fsmount", __NR_fsmount},
    {"fspick", __NR_fspick},
    {"setns", __NR_setns},
    {"unshare", __NR_unshare},
    // The kernel itself: modules, kexec, reboot, swap, accounting, quotas, logs.
    {"kexec_load", __NR_kexec_load},
    {"kexec_file_load", __NR_kexec_file_load},
    {"init_module", __NR_init_module},
    {"finit_module", __NR_finit_module},
    {"delete_module", __NR_delete_module},
    {"create_module", __NR_create_module},
    {"get_kernel_syms", __NR_get_kernel_syms},
    {"query_module", __NR_query_module},
    {"reboot", __NR_reboot},
    {"swapon", __NR_swapon},
    {"swapoff", __NR_swapoff},
    {"acct", __NR_acct},
    {"quotactl", __NR_quotactl},
    {"quotactl_fd", __NR_quotactl_fd},
    {"syslog", __NR_syslog},
    {"lookup_dcookie", __NR_lookup_dcookie},
    {"nfsservctl", __NR_nfsservctl},
    {"_sysctl", __NR__sysctl},
    {"sysfs", __NR_sysfs},
    {"ustat", __NR_ustat},
    {"uselib", __NR_uselib},
    // Large attack surfaces sandboxed code has no need for.
    {"bpf", __NR_bpf},
    {"perf_event_open", __NR_perf_event_open},
    {"userfaultfd", __NR_userfaultfd},
    {"keyctl", __NR_keyctl},
    {"add_key", __NR_add_key},
    {"request_key", __NR_request_key},
    {"io_uring_setup", __NR_io_uring_setup},
    {"io_uring_enter", __NR_io_uring_enter},
    {"io_uring_register", __NR_io_uring_register},
    {"fanotify_init", __NR_fanotify_init},
    // The host clock is shared.
    {"settimeofday", __NR_settimeofday},
    {"stime", -1},
    {"clock_settime", __NR_clock_settime},
    {"clock_settime64", -1},
    {"clock_adjtime", __NR_clock_adjtime},
    {"clock_adjtime64", -1},
    {"adjtimex", __NR_adjtimex},
    // File handles bypass the mount namespace.
    {"open_by_handle_at", __NR_open_by_handle_at},
    {"name_to_handle_at", __NR_name_to_handle_at},
    // Hardware and legacy x86.
    {"iopl", __NR_iopl},
    {"ioperm", __NR_ioperm},
    {"vm86", -1},
    {"vm86old", -1},
    // Other processes' memory.
    {"ptrace", __NR_ptrace},
    {"process_vm_readv", __NR_process_vm_readv},
    {"process_vm_writev", __NR_process_vm_writev},
    {"kcmp", __NR_kcmp},
    {"pidfd_getfd", __NR_pidfd_getfd},
};

// Syscall numbers with this bit set are the x32 ABI.
constexpr uint32_t kX32SyscallBit = 0x40000000;

template <size_t N>
constexpr uint32_t Mask(const uint64_t (&flags)[N]) {
  uint64_t mask = 0;
  for (uint64_t flag : flags) mask |= flag;
  return static_cast<uint32_t>(mask);
}

// The low 32 bits of the first argument (x86_64 is little endian); the flags live there.
constexpr uint32_t kFirstArgLow = offsetof(seccomp_data, args);

}  // namespace

std::span<const DeniedSyscall> DeniedSyscallTable() { return kDenied; }

Result<std::vector<sock_filter>> BuildSandboxSeccompFilter() {
  static_assert(Mask(kDeniedCloneFlags) != 0 && Mask(kDeniedPersonalityFlags) != 0);
  BpfAssembler a;
  constexpr auto kNext = BpfAssembler::kNext;
  const auto kAllow = a.NewLabel(), kEperm = a.NewLabel(), kEnosys = a.NewLabel(),
             kCloneCheck = a.NewLabel(), kPersonalityCheck = a.NewLabel();
  a.Load(offsetof(seccomp_data, arch));
  a.Jump(BPF_JEQ, AUDIT_ARCH_X86_64, kNext, kEnosys);
  a.Load(offsetof(seccomp_data, nr));
  a.Jump(BPF_JGE, kX32SyscallBit, kEnosys, kNext);
  a.Jump(BPF_JEQ, __NR_clone3, kEnosys, kNext);
  a.Jump(BPF_JEQ, __NR_clone, kCloneCheck, kNext);
  a.Jump(BPF_JEQ, __NR_personality, kPersonalityCheck, kNext);
  for (const DeniedSyscall& denied : kDenied) {
    if (denied.x86_64_number >= 0) {
      a.Jump(BPF_JEQ, static_cast<uint32_t>(denied.x86_64_number), kEperm, kNext);
    }
  }
  a.Return(SECCOMP_RET_ALLOW);
  a.Bind(kCloneCheck);
  a.Load(kFirstArgLow);
  a.Jump(BPF_JSET, Mask(kDeniedCloneFlags), kEperm, kAllow);
  a.Bind(kPersonalityCheck);
  a.Load(kFirstArgLow);
  a.Jump(BPF_JSET, static_cast<uint32_t>(kPersonalityQueryBit), kAllow, kNext);
  a.Jump(BPF_JSET, Mask(kDeniedPersonalityFlags), kEperm, kAllow);
  a.Bind(kAllow);
  a.Return(SECCOMP_RET_ALLOW);
  a.Bind(kEperm);
  a.Return(SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
  a.Bind(kEnosys);
  a.Return(SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA));
  return a.Finish();
}

Status InstallSandboxSeccompFilter() {
  std::vector<sock_filter> program = TRY(BuildSandboxSeccompFilter());
  sock_fprog fprog{static_cast<unsigned short>(program.size()), program.data()};
  // Required for an unprivileged filter; the OCI runtime has set it already.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return FailErrno("prctl(PR_SET_NO_NEW_PRIVS)");
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) < 0) {
    return FailErrno("installing the seccomp filter");
  }
  return Ok();
}

}  // namespace tartarus

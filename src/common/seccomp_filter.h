// The sandbox's default seccomp policy (part of the Tartarus runtime), in two forms:
//  - the list of denied syscalls, which the OCI profile of config.json names for runtimes
//    that apply it themselves (runsc);
//  - a classic BPF program that the guest agent builds and installs on itself before it
//    serves (`tartarus-agent --seccomp`), so that every command inherits it. runc compiles
//    an OCI profile with libseccomp on every start, about 8M instructions (3 ms here); this
//    program takes microseconds to build.
//
// The policy: syscalls are allowed except the denied ones (EPERM), clone() with any
// CLONE_NEW* flag (EPERM), personality() flags that weaken ASLR or W^X (EPERM) and clone3
// (ENOSYS, so that libc falls back to clone(), whose flags the filter can see). The BPF
// program admits only the x86_64 syscall ABI: i386 (int 0x80) and x32 syscalls get ENOSYS,
// as under gVisor, which runs no 32-bit code either.
#pragma once

#include <linux/filter.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus {

struct DeniedSyscall {
  std::string_view name;
  int x86_64_number;  // -1: the syscall exists only in the i386 ABI
};

// Every denied syscall, grouped by why (see the .cc).
std::span<const DeniedSyscall> DeniedSyscallTable();

// CLONE_NEW* flags: clone() with any of them is denied, so nothing inside makes namespaces
// (unshare and setns are denied outright). CLONE_NEWTIME (0x80) overlaps clone()'s exit
// signal field and can only be asked for through clone3/unshare, both denied.
inline constexpr uint64_t kDeniedCloneFlags[] = {
    0x00020000,  // CLONE_NEWNS
    0x02000000,  // CLONE_NEWCGROUP
    0x04000000,  // CLONE_NEWUTS
    0x08000000,  // CLONE_NEWIPC
    0x10000000,  // CLONE_NEWUSER
    0x20000000,  // CLONE_NEWPID
    0x40000000,  // CLONE_NEWNET
};

// personality() flags that weaken ASLR or W^X; asking for any is denied unless the call
// is the query form (0xffffffff, which has kPersonalityQueryBit set).
inline constexpr uint64_t kDeniedPersonalityFlags[] = {
    0x0040000,  // ADDR_NO_RANDOMIZE
    0x0100000,  // MMAP_PAGE_ZERO
    0x0200000,  // ADDR_COMPAT_LAYOUT
    0x0400000,  // READ_IMPLIES_EXEC
    0x0800000,  // ADDR_LIMIT_32BIT
    0x8000000,  // ADDR_LIMIT_3GB
};
inline constexpr uint64_t kPersonalityQueryBit = 0x80000000;

// The policy above as a BPF program for seccomp(SECCOMP_SET_MODE_FILTER).
Result<std::vector<sock_filter>> BuildSandboxSeccompFilter();

// Sets no_new_privs and installs the filter on the calling thread (and so on everything it
// starts afterwards). Single-threaded callers only: other threads keep no filter.
Status InstallSandboxSeccompFilter();

}  // namespace tartarus

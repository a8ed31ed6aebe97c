// tartarus-vmm (Tartarus's KVM microVM monitor): the jailer (Erebus, the darkness the VM is
// kept in: it sees nothing it was not handed). `tartarus-vmm --jail DIR ...`
// forks the VMM into new mount, PID, network, IPC and UTS namespaces, with a root of its own
// under DIR/<id>/root that holds /dev/kvm, /dev/urandom, /dev/null and only the files the VM
// needs (bind-mounted at their own absolute paths), as an unprivileged uid/gid with
// no_new_privs, no inherited descriptors, and in cgroup leaves with the requested limits (v2,
// or v1 for a controller a hybrid host keeps there).
// The parent waits, passes the VMM's exit status on, and removes the jail and the cgroup.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace tartarus::vmm {

struct JailOptions {
  std::string base_dir;  // --jail: the VM's root is base_dir/<id>/root
  std::string id;        // --id: letters, digits, '-' and '_', at most 64
  uid_t uid = 0;
  gid_t gid = 0;
  // Leaves <cgroup2 mount>/<cgroup_parent>/<id>, and the same under each v1 hierarchy that
  // holds a limited controller; empty limits are not set.
  std::string cgroup_parent = "tartarus-vmm";
  std::string cpu_max;     // "QUOTA PERIOD" or "max PERIOD"
  std::string memory_max;  // bytes or "max"
  std::string pids_max;    // a count or "max"
  bool keep_jail = false;
};

// What the VM may see, as absolute host paths (made absolute by the caller). Each is
// bind-mounted at the same path inside the jail, so paths given to the VMM keep their meaning
// and nothing else exists there.
struct JailContents {
  std::vector<std::string> read_only_files;  // kernel, initrd, config file
  std::vector<std::string> files;            // drives, metrics, serial output
  std::vector<std::string> dirs;             // Lethe dir, API and vsock socket directories
};

// A directory of the VM's own, writable by its uid, removed with the jail: the default
// --lethe-dir of a jailed VMM (overlays have no name, so nothing else is there).
std::string JailScratchDir(const JailOptions& options);

// Checks the options: id, uid/gid given, limits well formed. Errors name the flag.
Status ValidateJailOptions(const JailOptions& options);

// Absolute, normalized form of path (relative to the current directory).
std::string AbsolutePath(const std::string& path);

// Forks into the jail. In the jailed child: returns nullopt, and the caller goes on to run
// the VMM (from now on its paths resolve inside the jail). In the parent: waits for the
// child, removes the jail (unless keep_jail) and the cgroup, and returns the child's wait
// status for ExitLikeChild.
Result<std::optional<int>> RunJailed(const JailOptions& options, const JailContents& contents);

// Ends the parent as the VMM ended: its exit code, or the same signal re-raised on itself
// (core dumps off), so whoever waits for the jailer sees SIGSYS from a seccomp filter or
// SIGKILL from the OOM killer as such.
[[noreturn]] void ExitLikeChild(int wait_status);

}  // namespace tartarus::vmm

// The Tartarus runtime: reading a sandbox's resource usage from its cgroup, on cgroup v1,
// v2 and hybrid hosts (v1 controllers plus a cgroup2 mount at <root>/unified). The cgroup
// root is a parameter so tests can use fake trees.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"
#include "runtime/runtime.h"

namespace tartarus::runtime {

inline constexpr std::string_view kCgroupRoot = "/sys/fs/cgroup";

// The directories that hold one cgroup's files; empty when that hierarchy is absent.
struct CgroupDirs {
  std::string cpuacct;  // v1 cpuacct controller
  std::string memory;   // v1 memory controller
  std::string pids;     // v1 pids controller
  std::string unified;  // cgroup2 (all controllers on v2, few or none on hybrid)
};

// Dirs of the cgroup at `path` (e.g. "/tartarus/<id>", as in OCI cgroupsPath) under `root`.
CgroupDirs CgroupDirsForPath(const std::string& root, std::string_view path);

// Dirs of a process's cgroups from the text of /proc/<pid>/cgroup (read from the host's
// cgroup namespace). Fails on malformed text.
Result<CgroupDirs> CgroupDirsFromProcText(const std::string& root, std::string_view text);

// Usage from whichever hierarchy has each file (v1 first, then v2). Fails only when no
// usage file at all is readable (the cgroup is gone).
Result<Usage> ReadCgroupUsage(const CgroupDirs& dirs);

// SIGKILLs every process in the cgroup (each hierarchy), a few rounds to catch forks.
void KillCgroupProcesses(const CgroupDirs& dirs);

// Removes the cgroup at `path` in every hierarchy under `root` (v1 controllers, the
// unified mount, or the v2 root). Missing dirs are fine; a busy dir is an error.
Status RemoveCgroupPath(const std::string& root, std::string_view path);

}  // namespace tartarus::runtime

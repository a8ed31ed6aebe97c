// The Tartarus runtime: the OCI profile. Every choice below is explained in docs/runtime.md.
#include "runtime/oci_bundle.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "common/unique_fd.h"

namespace tartarus::runtime {
namespace {

using nlohmann::json;

constexpr size_t kMaxIdLength = 64;
constexpr const char* kPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The agent switches users for each command, then drops everything (bounding set too).
const std::vector<std::string>& AgentCapabilities() {
  static const std::vector<std::string> caps = {"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"};
  return caps;
}

// CLONE_NEW* flags: clone() with any of them is denied, so nothing inside makes namespaces
// (unshare and setns are denied outright). CLONE_NEWTIME (0x80) overlaps clone()'s exit
// signal field and can only be asked for through clone3/unshare, both denied.
constexpr uint64_t kCloneNewFlags[] = {
    0x00020000,  // CLONE_NEWNS
    0x02000000,  // CLONE_NEWCGROUP
    0x04000000,  // CLONE_NEWUTS
    0x08000000,  // CLONE_NEWIPC
    0x10000000,  // CLONE_NEWUSER
    0x20000000,  // CLONE_NEWPID
    0x40000000,  // CLONE_NEWNET
};

// personality() flags that weaken the process (no ASLR, executable data, page 0). Bit 31
// is in each mask so that the query personality(0xffffffff) still works.
constexpr uint64_t kPersonalityDenyFlags[] = {
    0x0040000,  // ADDR_NO_RANDOMIZE
    0x0100000,  // MMAP_PAGE_ZERO
    0x0200000,  // ADDR_COMPAT_LAYOUT
    0x0400000,  // READ_IMPLIES_EXEC
    0x0800000,  // ADDR_LIMIT_32BIT
    0x8000000,  // ADDR_LIMIT_3GB
};
constexpr uint64_t kPersonalityQueryBit = 0x80000000;

constexpr int kEperm = EPERM;
constexpr int kEnosys = ENOSYS;

json MaskedEqRule(const std::string& name, uint64_t mask, uint64_t value, int errno_ret) {
  return json{
      {"names", {name}},
      {"action", "SCMP_ACT_ERRNO"},
      {"errnoRet", errno_ret},
      {"args",
       {{{"index", 0}, {"value", mask}, {"valueTwo", value}, {"op", "SCMP_CMP_MASKED_EQ"}}}}};
}

json SeccompProfile() {
  json syscalls = json::array();
  syscalls.push_back(
      json{{"names", DeniedSyscalls()}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", kEperm}});
  // ENOSYS, not EPERM: libc then falls back to clone(), whose flags seccomp can see.
  syscalls.push_back(
      json{{"names", {"clone3"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", kEnosys}});
  for (uint64_t flag : kCloneNewFlags)
    syscalls.push_back(MaskedEqRule("clone", flag, flag, kEperm));
  for (uint64_t flag : kPersonalityDenyFlags) {
    syscalls.push_back(MaskedEqRule("personality", flag | kPersonalityQueryBit, flag, kEperm));
  }
  return json{{"defaultAction", "SCMP_ACT_ALLOW"},
              {"architectures", {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}},
              {"syscalls", syscalls}};
}

json Mount(const std::string& destination, const std::string& type, const std::string& source,
           std::vector<std::string> options) {
  return json{
      {"destination", destination}, {"type", type}, {"source", source}, {"options", options}};
}

}  // namespace

Status ValidateSandboxId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLength) {
    return Fail(ErrorCode::kInvalidArgument,
                "sandbox id must be 1 to 64 characters, got " + std::to_string(id.size()));
  }
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) {
      return Fail(ErrorCode::kInvalidArgument,
                  "sandbox id may only contain [a-z0-9-]: \"" + std::string(id) + "\"");
    }
  }
  return Ok();
}

std::string CgroupsPathFor(std::string_view id) { return "/tartarus/" + std::string(id); }

int64_t CpuQuotaUs(uint32_t millicpus) {
  // The kernel rejects quotas under 1 ms.
  int64_t quota = static_cast<int64_t>(millicpus) * static_cast<int64_t>(kCpuPeriodUs) / 1000;
  return quota < 1000 ? 1000 : quota;
}

const std::vector<std::string>& DeniedSyscalls() {
  static const std::vector<std::string> names = {
      // Mounts and the namespaces/filesystems they lead to.
      "mount",
      "umount",
      "umount2",
      "pivot_root",
      "mount_setattr",
      "move_mount",
      "open_tree",
      "fsopen",
      "fsconfig",
      "fsmount",
      "fspick",
      "setns",
      "unshare",
      // The kernel itself: modules, kexec, reboot, swap, accounting, quotas, logs.
      "kexec_load",
      "kexec_file_load",
      "init_module",
      "finit_module",
      "delete_module",
      "create_module",
      "get_kernel_syms",
      "query_module",
      "reboot",
      "swapon",
      "swapoff",
      "acct",
      "quotactl",
      "quotactl_fd",
      "syslog",
      "lookup_dcookie",
      "nfsservctl",
      "_sysctl",
      "sysfs",
      "ustat",
      "uselib",
      // Large attack surfaces sandboxed code has no need for.
      "bpf",
      "perf_event_open",
      "userfaultfd",
      "keyctl",
      "add_key",
      "request_key",
      "io_uring_setup",
      "io_uring_enter",
      "io_uring_register",
      "fanotify_init",
      // The host clock is shared.
      "settimeofday",
      "stime",
      "clock_settime",
      "clock_settime64",
      "clock_adjtime",
      "clock_adjtime64",
      "adjtimex",
      // File handles bypass the mount namespace.
      "open_by_handle_at",
      "name_to_handle_at",
      // Hardware and legacy x86.
      "iopl",
      "ioperm",
      "vm86",
      "vm86old",
      // Other processes' memory.
      "ptrace",
      "process_vm_readv",
      "process_vm_writev",
      "kcmp",
      "pidfd_getfd",
  };
  return names;
}

Result<nlohmann::json> MakeOciConfig(const SandboxSpec& spec, const std::string& rootfs_dir,
                                     const OciProfileOptions& options) {
  TRY(ValidateSandboxId(spec.id));
  if (spec.agent_path.empty() || spec.agent_path[0] != '/') {
    return Fail(ErrorCode::kInvalidArgument, "agent path must be absolute: " + spec.agent_path);
  }
  bool hostname_ok = !spec.hostname.empty() && spec.hostname.size() <= 64;
  for (char c : spec.hostname) {
    hostname_ok = hostname_ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                  (c >= '0' && c <= '9') || c == '-' || c == '.');
  }
  if (!hostname_ok) {
    return Fail(ErrorCode::kInvalidArgument,
                "hostname must be 1 to 64 characters of [A-Za-z0-9.-]");
  }
  if (spec.limits.memory_bytes == 0 || spec.limits.pids == 0 || spec.limits.millicpus == 0 ||
      spec.limits.open_files == 0) {
    return Fail(ErrorCode::kInvalidArgument, "limits must be positive");
  }
  if (spec.limits.memory_bytes > static_cast<uint64_t>(INT64_MAX)) {
    return Fail(ErrorCode::kInvalidArgument, "memory limit too large");
  }
  try {
    const auto& caps = AgentCapabilities();
    json process = {
        {"terminal", false},
        {"user", {{"uid", 0}, {"gid", 0}}},
        {"args", {std::string(kAgentGuestPath), "--stdio"}},
        {"env", {kPath}},
        {"cwd", "/"},
        {"capabilities",
         {{"bounding", caps},
          {"effective", caps},
          {"permitted", caps},
          {"inheritable", json::array()},
          {"ambient", json::array()}}},
        {"rlimits",
         {{{"type", "RLIMIT_NOFILE"},
           {"hard", spec.limits.open_files},
           {"soft", spec.limits.open_files}},
          {{"type", "RLIMIT_CORE"}, {"hard", 0}, {"soft", 0}}}},
        {"noNewPrivileges", true},
    };
    json mounts = json::array({
        Mount("/proc", "proc", "proc", {"nosuid", "noexec", "nodev"}),
        Mount("/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"}),
        Mount("/dev/pts", "devpts", "devpts",
              {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}),
        Mount("/dev/shm", "tmpfs", "shm",
              {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}),
        Mount("/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"}),
        Mount("/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"}),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup",
              {"nosuid", "noexec", "nodev", "relatime", "ro"}),
        Mount(std::string(kAgentGuestPath), "bind", spec.agent_path,
              {"rbind", "ro", "nosuid", "nodev"}),
    });
    json resources = {
        {"devices", {{{"allow", false}, {"access", "rwm"}}}},
        {"memory",
         {{"limit", static_cast<int64_t>(spec.limits.memory_bytes)},
          {"swap", static_cast<int64_t>(spec.limits.memory_bytes)}}},
        {"cpu", {{"quota", CpuQuotaUs(spec.limits.millicpus)}, {"period", kCpuPeriodUs}}},
        {"pids", {{"limit", static_cast<int64_t>(spec.limits.pids) + options.runtime_host_pids}}},
    };
    json linux = {
        {"namespaces",
         {{{"type", "pid"}},
          {{"type", "mount"}},
          {{"type", "ipc"}},
          {{"type", "uts"}},
          {{"type", "network"}},
          {{"type", "cgroup"}}}},
        {"cgroupsPath", CgroupsPathFor(spec.id)},
        {"resources", resources},
        {"seccomp", SeccompProfile()},
        {"maskedPaths",
         {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware", "/sys/devices/virtual/powercap"}},
        {"readonlyPaths",
         {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}},
    };
    return json{
        {"ociVersion", "1.0.2"},
        {"process", process},
        {"root", {{"path", rootfs_dir}, {"readonly", false}}},
        {"hostname", spec.hostname},
        {"mounts", mounts},
        {"linux", linux},
    };
  } catch (const std::exception& e) {
    return Fail(ErrorCode::kInternal, std::string("building config.json: ") + e.what());
  }
}

Status WriteOciBundle(const std::string& bundle_dir, const SandboxSpec& spec,
                      const OciProfileOptions& options) {
  auto config = TRY(MakeOciConfig(spec, bundle_dir + "/rootfs", options));
  std::string text;
  try {
    text = config.dump(2);
  } catch (const std::exception& e) {
    return Fail(ErrorCode::kInvalidArgument, std::string("config.json: ") + e.what());
  }
  std::string path = bundle_dir + "/config.json";
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return FailErrno("creating " + path);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.Get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("writing " + path);
    done += static_cast<size_t>(n);
  }
  return Ok();
}

}  // namespace tartarus::runtime

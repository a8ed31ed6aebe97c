// Unit tests of the Tartarus runtime's OCI profile (the generated config.json).
#include "runtime/oci_bundle.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "runtime/owner.h"

namespace tartarus::runtime {
namespace {

using nlohmann::json;
using ::testing::UnorderedElementsAre;

SandboxSpec TestSpec() {
  SandboxSpec spec;
  spec.id = "sbx-1";
  spec.rootfs = "/templates/base/rootfs";
  spec.agent_path = "/usr/lib/tartarus/agent";
  spec.hostname = "box";
  spec.limits.millicpus = 1500;
  spec.limits.memory_bytes = 256ull << 20;
  spec.limits.pids = 100;
  spec.limits.open_files = 1024;
  return spec;
}

json Config(const SandboxSpec& spec = TestSpec(), const OciProfileOptions& options = {}) {
  auto config = MakeOciConfig(spec, "/state/sbx-1/bundle/rootfs", options);
  EXPECT_TRUE(config) << config.error().message;
  return config ? *config : json();
}

std::set<std::string> Strings(const json& array) {
  std::set<std::string> result;
  for (const auto& item : array) result.insert(item.get<std::string>());
  return result;
}

TEST(SandboxIdTest, AcceptsLowercaseDigitsAndDashes) {
  EXPECT_TRUE(ValidateSandboxId("a"));
  EXPECT_TRUE(ValidateSandboxId("run-42-abc"));
  EXPECT_TRUE(ValidateSandboxId(std::string(64, 'x')));
}

TEST(SandboxIdTest, RejectsEverythingElse) {
  for (const std::string& bad :
       std::vector<std::string>{"", "A", "a_b", "a.b", "a/b", "..", "a b", "é",
                                std::string(65, 'x'), std::string("a\0b", 3)}) {
    auto status = ValidateSandboxId(bad);
    ASSERT_FALSE(status) << bad;
    EXPECT_EQ(status.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(OciConfigTest, ProcessRunsTheAgentWithThreeCapabilities) {
  json process = Config()["process"];
  EXPECT_EQ(process["args"], json({"/.tartarus/agent", "--stdio"}));
  // With preserved fds the agent serves on 3 (in) and 4 (out).
  EXPECT_EQ(Config(TestSpec(), {.agent_on_preserved_fds = true})["process"]["args"],
            json({"/.tartarus/agent", "--fds", "3,4"}));
  // With the filter in the agent, config.json has no seccomp profile for runc to compile.
  json agent_filter =
      Config(TestSpec(), {.agent_on_preserved_fds = true, .seccomp_in_agent = true});
  EXPECT_EQ(agent_filter["process"]["args"],
            json({"/.tartarus/agent", "--seccomp", "--fds", "3,4"}));
  EXPECT_FALSE(agent_filter["linux"].contains("seccomp"));
  EXPECT_TRUE(Config()["linux"].contains("seccomp"));
  EXPECT_EQ(process["terminal"], false);
  EXPECT_EQ(process["user"]["uid"], 0);
  EXPECT_EQ(process["user"]["gid"], 0);
  EXPECT_EQ(process["cwd"], "/");
  EXPECT_EQ(process["noNewPrivileges"], true);
  ASSERT_EQ(process["env"].size(), 1u);
  EXPECT_THAT(process["env"][0].get<std::string>(), ::testing::StartsWith("PATH=/usr/local/sbin"));
  for (const char* set : {"bounding", "effective", "permitted"}) {
    EXPECT_THAT(Strings(process["capabilities"][set]),
                UnorderedElementsAre("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"))
        << set;
  }
  EXPECT_TRUE(process["capabilities"]["inheritable"].empty());
  EXPECT_TRUE(process["capabilities"]["ambient"].empty());
}

TEST(OciConfigTest, Rlimits) {
  json rlimits = Config()["process"]["rlimits"];
  ASSERT_EQ(rlimits.size(), 2u);
  EXPECT_EQ(rlimits[0], json({{"type", "RLIMIT_NOFILE"}, {"hard", 1024}, {"soft", 1024}}));
  EXPECT_EQ(rlimits[1], json({{"type", "RLIMIT_CORE"}, {"hard", 0}, {"soft", 0}}));
}

TEST(OciConfigTest, RootHostnameAndMounts) {
  json config = Config();
  EXPECT_EQ(config["root"]["path"], "/state/sbx-1/bundle/rootfs");
  EXPECT_EQ(config["root"]["readonly"], false);
  EXPECT_EQ(config["hostname"], "box");
  std::set<std::string> destinations;
  for (const auto& mount : config["mounts"]) {
    destinations.insert(mount["destination"].get<std::string>());
  }
  EXPECT_THAT(destinations,
              UnorderedElementsAre("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                                   "/sys/fs/cgroup", "/.tartarus/agent"));
  for (const auto& mount : config["mounts"]) {
    std::set<std::string> options = Strings(mount["options"]);
    std::string destination = mount["destination"];
    if (destination == "/.tartarus/agent") {
      EXPECT_EQ(mount["source"], "/usr/lib/tartarus/agent");
      EXPECT_EQ(mount["type"], "bind");
      EXPECT_TRUE(options.contains("ro"));
      EXPECT_TRUE(options.contains("rbind"));
    }
    if (destination == "/sys" || destination == "/sys/fs/cgroup") {
      EXPECT_TRUE(options.contains("ro")) << destination;
      EXPECT_TRUE(options.contains("nosuid")) << destination;
    }
    if (destination == "/dev") {
      EXPECT_EQ(mount["type"], "tmpfs");
      EXPECT_TRUE(options.contains("mode=755"));
      EXPECT_TRUE(options.contains("strictatime"));
    }
  }
}

TEST(OciConfigTest, NamespacesAreNewAndExactlyThese) {
  json namespaces = Config()["linux"]["namespaces"];
  std::set<std::string> types;
  for (const auto& ns : namespaces) {
    types.insert(ns["type"].get<std::string>());
    EXPECT_FALSE(ns.contains("path")) << ns;  // never join an existing one
  }
  EXPECT_THAT(types, UnorderedElementsAre("pid", "mount", "ipc", "uts", "network", "cgroup"));
}

TEST(OciConfigTest, ResourceLimitsMath) {
  json linux = Config()["linux"];
  EXPECT_EQ(linux["cgroupsPath"], "/tartarus/sbx-1");
  json resources = linux["resources"];
  EXPECT_EQ(resources["memory"]["limit"], 256ll << 20);
  EXPECT_EQ(resources["memory"]["swap"], 256ll << 20);  // memory+swap = memory: no swap
  EXPECT_EQ(resources["cpu"]["period"], 100000);
  EXPECT_EQ(resources["cpu"]["quota"], 150000);
  EXPECT_EQ(resources["pids"]["limit"], 100);
  EXPECT_EQ(CpuQuotaUs(1000), 100000);
  EXPECT_EQ(CpuQuotaUs(250), 25000);
  EXPECT_EQ(CpuQuotaUs(4000), 400000);
  EXPECT_EQ(CpuQuotaUs(1), 1000);  // the kernel's minimum quota
}

TEST(OciConfigTest, RuntimeHostPidsAreAdded) {
  json linux = Config(TestSpec(), {.runtime_host_pids = kGvisorRuntimeHostPids})["linux"];
  EXPECT_EQ(linux["resources"]["pids"]["limit"], 100 + kGvisorRuntimeHostPids);
}

TEST(OciConfigTest, MaskedAndReadonlyPaths) {
  json linux = Config()["linux"];
  std::set<std::string> masked = Strings(linux["maskedPaths"]);
  for (const char* path : {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                           "/sys/firmware", "/proc/scsi", "/proc/acpi"}) {
    EXPECT_TRUE(masked.contains(path)) << path;
  }
  EXPECT_THAT(Strings(linux["readonlyPaths"]),
              UnorderedElementsAre("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                   "/proc/sysrq-trigger"));
}

TEST(OciConfigTest, SeccompDeniesDangerousSyscalls) {
  json seccomp = Config()["linux"]["seccomp"];
  EXPECT_EQ(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
  EXPECT_THAT(Strings(seccomp["architectures"]),
              UnorderedElementsAre("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"));
  std::set<std::string> eperm;  // denied whatever the arguments
  bool clone3_enosys = false;
  std::set<uint64_t> clone_flags;
  for (const auto& rule : seccomp["syscalls"]) {
    EXPECT_EQ(rule["action"], "SCMP_ACT_ERRNO");
    std::set<std::string> names = Strings(rule["names"]);
    if (!rule.contains("args")) {
      if (rule["errnoRet"] == EPERM) eperm.insert(names.begin(), names.end());
      if (names.contains("clone3") && rule["errnoRet"] == ENOSYS) clone3_enosys = true;
      continue;
    }
    ASSERT_EQ(rule["args"].size(), 1u);  // runc ORs several conditions on one argument
    EXPECT_EQ(rule["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    EXPECT_EQ(rule["args"][0]["index"], 0);
    if (names.contains("clone")) {
      EXPECT_EQ(rule["args"][0]["value"], rule["args"][0]["valueTwo"]);
      clone_flags.insert(rule["args"][0]["value"].get<uint64_t>());
    }
  }
  for (const char* name : {"mount",
                           "umount2",
                           "pivot_root",
                           "kexec_load",
                           "kexec_file_load",
                           "init_module",
                           "finit_module",
                           "delete_module",
                           "bpf",
                           "perf_event_open",
                           "keyctl",
                           "add_key",
                           "request_key",
                           "setns",
                           "unshare",
                           "swapon",
                           "swapoff",
                           "reboot",
                           "acct",
                           "settimeofday",
                           "clock_settime",
                           "clock_adjtime",
                           "adjtimex",
                           "open_by_handle_at",
                           "name_to_handle_at",
                           "userfaultfd",
                           "lookup_dcookie",
                           "quotactl",
                           "mount_setattr",
                           "move_mount",
                           "open_tree",
                           "fsopen",
                           "fsconfig",
                           "fsmount",
                           "fspick",
                           "iopl",
                           "ioperm",
                           "syslog",
                           "ptrace",
                           "process_vm_readv",
                           "process_vm_writev",
                           "kcmp",
                           "vm86",
                           "vm86old",
                           "create_module",
                           "get_kernel_syms",
                           "query_module",
                           "nfsservctl",
                           "uselib",
                           "ustat",
                           "sysfs",
                           "_sysctl",
                           "fanotify_init",
                           "pidfd_getfd"}) {
    EXPECT_TRUE(eperm.contains(name)) << name;
  }
  // Things every program needs stay allowed.
  for (const char* name : {"clone", "clone3", "execve", "read", "fork", "personality", "mmap"}) {
    EXPECT_FALSE(eperm.contains(name)) << name;
  }
  EXPECT_TRUE(clone3_enosys);
  // CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
  EXPECT_EQ(clone_flags, (std::set<uint64_t>{0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000,
                                             0x20000000, 0x40000000}));
}

TEST(OciConfigTest, PersonalityQueryStaysAllowed) {
  json config = Config();
  for (const auto& rule : config["linux"]["seccomp"]["syscalls"]) {
    if (!Strings(rule["names"]).contains("personality")) continue;
    uint64_t mask = rule["args"][0]["value"];
    uint64_t value = rule["args"][0]["valueTwo"];
    EXPECT_NE(0xffffffffull & mask, value);  // personality(0xffffffff) is not matched
    EXPECT_NE(0ull & mask, value);           // nor the default persona
  }
}

TEST(OciConfigTest, BadSpecsFailWithoutThrowing) {
  SandboxSpec spec = TestSpec();
  spec.id = "Bad Id";
  EXPECT_FALSE(MakeOciConfig(spec, "/r"));
  spec = TestSpec();
  spec.agent_path = "relative/agent";
  EXPECT_FALSE(MakeOciConfig(spec, "/r"));
  spec = TestSpec();
  spec.limits.memory_bytes = 0;
  EXPECT_FALSE(MakeOciConfig(spec, "/r"));
  spec = TestSpec();
  spec.limits.memory_bytes = ~0ull;
  EXPECT_FALSE(MakeOciConfig(spec, "/r"));
  spec = TestSpec();
  spec.hostname = std::string("\xff\xfe", 2);  // invalid UTF-8: dump() would throw
  char dir[] = "/tmp/tartarus-bundle-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  auto written = WriteOciBundle(dir, spec);
  EXPECT_FALSE(written);
  unlink((std::string(dir) + "/config.json").c_str());
  rmdir(dir);
}

TEST(OciConfigTest, StringsAreEscapedAndMustBeUtf8) {
  SandboxSpec spec = TestSpec();
  spec.agent_path = "/odd \"quoted\" \\ path\n\x01/\xc3\xa9/\xf0\x9f\x90\x8d";
  auto config = MakeOciConfig(spec, "/r");
  ASSERT_TRUE(config) << config.error().message;
  bool found = false;
  for (const auto& mount : (*config)["mounts"]) {
    if (mount["destination"] == "/.tartarus/agent") {
      EXPECT_EQ(mount["source"], spec.agent_path);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  for (const std::string& bad : {std::string("/\xff"), std::string("/\xc0\xaf"),
                                 std::string("/\xed\xa0\x80"), std::string("/\xe2\x82")}) {
    auto rejected = MakeOciConfig(TestSpec(), bad);
    ASSERT_FALSE(rejected) << bad;
    EXPECT_EQ(rejected.error().code, ErrorCode::kInvalidArgument);
  }
}

TEST(OciConfigTest, WriteOciBundleWritesParseableJson) {
  char dir[] = "/tmp/tartarus-bundle-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  ASSERT_TRUE(WriteOciBundle(dir, TestSpec()));
  auto text = ReadSmallFile(std::string(dir) + "/config.json", 1 << 20);
  ASSERT_TRUE(text);
  json parsed = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(parsed.is_discarded());
  EXPECT_EQ(parsed["root"]["path"], std::string(dir) + "/rootfs");
  EXPECT_EQ(parsed["ociVersion"], "1.0.2");
  unlink((std::string(dir) + "/config.json").c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace tartarus::runtime

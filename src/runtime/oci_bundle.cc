// The Tartarus runtime: the OCI profile. Every choice below is explained in docs/runtime.md.
#include "runtime/oci_bundle.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>

#include "common/seccomp_filter.h"
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

// The policy itself lives in common/seccomp_filter.h, shared with the guest agent.
constexpr int kEperm = EPERM;
constexpr int kEnosys = ENOSYS;

// A minimal JSON writer. config.json is written on every run, before the runtime can
// start: building it as nlohmann::json and dumping that took ~2M instructions (~0.7 ms
// here), this ~1/20 of it. Commas are placed by the writer; strings are escaped, and a
// string that is not valid UTF-8 makes the whole text invalid (ok() is false).
class JsonWriter {
 public:
  JsonWriter() { out_.reserve(8192); }

  JsonWriter& Open(char bracket) {
    Comma();
    out_ += bracket;
    first_ = true;
    return *this;
  }
  JsonWriter& Close(char bracket) {
    out_ += bracket;
    first_ = false;
    return *this;
  }
  JsonWriter& Key(std::string_view key) {
    String(key);
    out_ += ':';
    first_ = true;
    return *this;
  }
  JsonWriter& String(std::string_view text) {
    Comma();
    AppendQuoted(text);
    return *this;
  }
  JsonWriter& Int(int64_t value) {
    Comma();
    out_ += std::to_string(value);
    return *this;
  }
  JsonWriter& Uint(uint64_t value) {
    Comma();
    out_ += std::to_string(value);
    return *this;
  }
  JsonWriter& Bool(bool value) {
    Comma();
    out_ += value ? "true" : "false";
    return *this;
  }
  template <class Strings>
  JsonWriter& StringArray(const Strings& items) {
    Open('[');
    for (const auto& item : items) String(item);
    return Close(']');
  }
  JsonWriter& StringArray(std::initializer_list<std::string_view> items) {
    return StringArray<std::initializer_list<std::string_view>>(items);
  }

  bool ok() const { return valid_; }
  std::string Take() { return std::move(out_); }

 private:
  void Comma() {
    if (!first_) out_ += ',';
    first_ = false;
  }

  void AppendQuoted(std::string_view text) {
    out_ += '"';
    for (size_t i = 0; i < text.size(); ++i) {
      auto c = static_cast<unsigned char>(text[i]);
      if (c == '"' || c == '\\') {
        out_ += '\\';
        out_ += static_cast<char>(c);
      } else if (c < 0x20) {
        char escaped[8];
        std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
        out_ += escaped;
      } else if (c < 0x80) {
        out_ += static_cast<char>(c);
      } else {
        size_t length = Utf8SequenceLength(text.substr(i));
        if (length == 0) {
          valid_ = false;
          return;
        }
        out_.append(text.substr(i, length));
        i += length - 1;
      }
    }
    out_ += '"';
  }

  // Length of the UTF-8 sequence `text` starts with; 0 when it is not valid UTF-8
  // (overlong forms, surrogates and code points past U+10FFFF included).
  static size_t Utf8SequenceLength(std::string_view text) {
    auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
    unsigned char lead = byte(0);
    size_t length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
    if (length == 0 || lead == 0xC0 || lead == 0xC1 || lead > 0xF4 || text.size() < length) {
      return 0;
    }
    for (size_t i = 1; i < length; ++i) {
      if ((byte(i) & 0xC0) != 0x80) return 0;
    }
    unsigned char second = byte(1);
    if ((lead == 0xE0 && second < 0xA0) || (lead == 0xED && second > 0x9F) ||
        (lead == 0xF0 && second < 0x90) || (lead == 0xF4 && second > 0x8F)) {
      return 0;
    }
    return length;
  }

  std::string out_;
  bool first_ = true;
  bool valid_ = true;
};

void MaskedEqRule(JsonWriter& w, std::string_view name, uint64_t mask, uint64_t value,
                  int errno_ret) {
  w.Open('{').Key("names").StringArray({name});
  w.Key("action").String("SCMP_ACT_ERRNO").Key("errnoRet").Int(errno_ret);
  w.Key("args").Open('[').Open('{');
  w.Key("index").Int(0).Key("value").Uint(mask).Key("valueTwo").Uint(value);
  w.Key("op").String("SCMP_CMP_MASKED_EQ");
  w.Close('}').Close(']').Close('}');
}

void SeccompProfile(JsonWriter& w) {
  w.Open('{').Key("defaultAction").String("SCMP_ACT_ALLOW");
  w.Key("architectures").StringArray({"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"});
  w.Key("syscalls").Open('[');
  w.Open('{').Key("names").StringArray(DeniedSyscalls());
  w.Key("action").String("SCMP_ACT_ERRNO").Key("errnoRet").Int(kEperm).Close('}');
  // ENOSYS, not EPERM: libc then falls back to clone(), whose flags seccomp can see.
  w.Open('{').Key("names").StringArray({"clone3"});
  w.Key("action").String("SCMP_ACT_ERRNO").Key("errnoRet").Int(kEnosys).Close('}');
  for (uint64_t flag : kDeniedCloneFlags) MaskedEqRule(w, "clone", flag, flag, kEperm);
  for (uint64_t flag : kDeniedPersonalityFlags) {
    MaskedEqRule(w, "personality", flag | kPersonalityQueryBit, flag, kEperm);
  }
  w.Close(']').Close('}');
}

void Mount(JsonWriter& w, std::string_view destination, std::string_view type,
           std::string_view source, std::initializer_list<std::string_view> options) {
  w.Open('{').Key("destination").String(destination).Key("type").String(type);
  w.Key("source").String(source).Key("options").StringArray(options).Close('}');
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
  static const std::vector<std::string> names = [] {
    std::vector<std::string> list;
    for (const DeniedSyscall& denied : DeniedSyscallTable()) list.emplace_back(denied.name);
    return list;
  }();
  return names;
}

Result<std::string> OciConfigText(const SandboxSpec& spec, const std::string& rootfs_dir,
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
  const auto& caps = AgentCapabilities();
  JsonWriter w;
  w.Open('{').Key("ociVersion").String("1.0.2");

  w.Key("process").Open('{');
  w.Key("terminal").Bool(false);
  w.Key("user").Open('{').Key("uid").Int(0).Key("gid").Int(0).Close('}');
  {
    static const std::string fds =
        std::to_string(kAgentPreservedFdIn) + "," + std::to_string(kAgentPreservedFdOut);
    std::vector<std::string> args = {std::string(kAgentGuestPath)};
    if (options.seccomp_in_agent) args.push_back("--seccomp");
    if (options.agent_on_preserved_fds) {
      args.insert(args.end(), {"--fds", fds});
    } else {
      args.push_back("--stdio");
    }
    w.Key("args").StringArray(args);
  }
  w.Key("env").StringArray({kPath});
  w.Key("cwd").String("/");
  w.Key("capabilities").Open('{');
  for (const char* set : {"bounding", "effective", "permitted"}) w.Key(set).StringArray(caps);
  w.Key("inheritable").Open('[').Close(']').Key("ambient").Open('[').Close(']');
  w.Close('}');
  w.Key("rlimits").Open('[');
  w.Open('{').Key("type").String("RLIMIT_NOFILE");
  w.Key("hard").Uint(spec.limits.open_files).Key("soft").Uint(spec.limits.open_files).Close('}');
  w.Open('{').Key("type").String("RLIMIT_CORE").Key("hard").Int(0).Key("soft").Int(0).Close('}');
  w.Close(']');
  w.Key("noNewPrivileges").Bool(true);
  w.Close('}');

  w.Key("root").Open('{').Key("path").String(rootfs_dir).Key("readonly").Bool(false).Close('}');
  w.Key("hostname").String(spec.hostname);

  w.Key("mounts").Open('[');
  Mount(w, "/proc", "proc", "proc", {"nosuid", "noexec", "nodev"});
  Mount(w, "/dev", "tmpfs", "tmpfs", {"nosuid", "strictatime", "mode=755", "size=65536k"});
  Mount(w, "/dev/pts", "devpts", "devpts",
        {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"});
  Mount(w, "/dev/shm", "tmpfs", "shm", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"});
  Mount(w, "/dev/mqueue", "mqueue", "mqueue", {"nosuid", "noexec", "nodev"});
  Mount(w, "/sys", "sysfs", "sysfs", {"nosuid", "noexec", "nodev", "ro"});
  Mount(w, "/sys/fs/cgroup", "cgroup", "cgroup", {"nosuid", "noexec", "nodev", "relatime", "ro"});
  Mount(w, kAgentGuestPath, "bind", spec.agent_path, {"rbind", "ro", "nosuid", "nodev"});
  w.Close(']');

  w.Key("linux").Open('{');
  w.Key("namespaces").Open('[');
  for (const char* type : {"pid", "mount", "ipc", "uts", "network", "cgroup"}) {
    w.Open('{').Key("type").String(type).Close('}');
  }
  w.Close(']');
  w.Key("cgroupsPath").String(CgroupsPathFor(spec.id));
  w.Key("resources").Open('{');
  w.Key("devices").Open('[').Open('{').Key("allow").Bool(false).Key("access").String("rwm");
  w.Close('}').Close(']');
  auto memory = static_cast<int64_t>(spec.limits.memory_bytes);
  w.Key("memory").Open('{').Key("limit").Int(memory).Key("swap").Int(memory).Close('}');
  w.Key("cpu").Open('{').Key("quota").Int(CpuQuotaUs(spec.limits.millicpus));
  w.Key("period").Uint(kCpuPeriodUs).Close('}');
  w.Key("pids").Open('{').Key("limit");
  w.Int(static_cast<int64_t>(spec.limits.pids) + options.runtime_host_pids).Close('}');
  w.Close('}');
  if (!options.seccomp_in_agent) {
    w.Key("seccomp");
    SeccompProfile(w);
  }
  w.Key("maskedPaths")
      .StringArray({"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                    "/sys/devices/virtual/powercap"});
  w.Key("readonlyPaths")
      .StringArray({"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"});
  w.Close('}');
  w.Close('}');
  if (!w.ok()) {
    return Fail(ErrorCode::kInvalidArgument,
                "config.json: the root, agent path or hostname is not valid UTF-8");
  }
  return w.Take();
}

Result<nlohmann::json> MakeOciConfig(const SandboxSpec& spec, const std::string& rootfs_dir,
                                     const OciProfileOptions& options) {
  std::string text = TRY(OciConfigText(spec, rootfs_dir, options));
  json config = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return Fail(ErrorCode::kInternal, "config.json does not parse");
  return config;
}

Status WriteOciBundle(const std::string& bundle_dir, const SandboxSpec& spec,
                      const OciProfileOptions& options) {
  std::string text = TRY(OciConfigText(spec, bundle_dir + "/rootfs", options));
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

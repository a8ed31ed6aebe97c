// tartarus-agent's init mode (guest agent, microVM boot): see init.h.
#include "guest/init.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "common/unique_fd.h"

namespace tartarus::guest {
namespace {

constexpr uint64_t kMinDiskBytes = 1 << 20;
// virtio-blk probes as its module loads, but devtmpfs creates the node from a kernel thread.
constexpr std::chrono::seconds kRootDeviceWait{10};

Result<uint64_t> ParseDecimal(std::string_view key, std::string_view text, uint64_t min,
                              uint64_t max) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < min ||
      value > max) {
    return Fail(ErrorCode::kInvalidArgument, std::string(key) + ": expected a number in [" +
                                                 std::to_string(min) + ", " + std::to_string(max) +
                                                 "], got \"" + std::string(text) + "\"");
  }
  return value;
}

bool ValidHostname(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool ValidFsType(std::string_view type) {
  if (type.empty() || type.size() > 32) return false;
  for (char c : type) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

// "kernel/fs/overlayfs/overlay.ko" -> "overlay"; '-' and '_' are one to the kernel.
std::string ModuleName(std::string_view path) {
  size_t slash = path.rfind('/');
  std::string name(slash == std::string_view::npos ? path : path.substr(slash + 1));
  if (size_t ko = name.find(".ko"); ko != std::string::npos) name.resize(ko);
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return name;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
    text.remove_suffix(1);
  }
  return text;
}

struct ModuleEntry {
  std::string path;
  std::vector<std::string> deps;  // paths
};

class ModuleResolver {
 public:
  explicit ModuleResolver(std::map<std::string, ModuleEntry> by_path)
      : by_path_(std::move(by_path)) {}

  // Depth-first, dependencies first; a module met again while being visited is a cycle.
  Status Visit(const std::string& path, std::vector<std::string>& order) {
    auto& state = state_[path];
    if (state == kDone) return Ok();
    if (state == kVisiting) {
      return Fail(ErrorCode::kInvalidArgument, "modules.dep: dependency cycle through " + path);
    }
    auto entry = by_path_.find(path);
    if (entry == by_path_.end()) {
      return Fail(ErrorCode::kNotFound,
                  "modules.dep: " + path + " is a dependency but has no line");
    }
    state = kVisiting;
    for (const std::string& dep : entry->second.deps) TRY(Visit(dep, order));
    state_[path] = kDone;
    order.push_back(path);
    return Ok();
  }

 private:
  enum State { kUnvisited, kVisiting, kDone };
  std::map<std::string, ModuleEntry> by_path_;
  std::map<std::string, State> state_;
};

Status RunStep(const MountStep& step) {
  switch (step.kind) {
    case MountStep::Kind::kMkdir:
      if (mkdir(step.target.c_str(), 0755) < 0 && errno != EEXIST) {
        return FailErrno("mkdir " + step.target);
      }
      return Ok();
    case MountStep::Kind::kMount:
      if (mount(step.source.c_str(), step.target.c_str(), step.fstype.c_str(), step.flags,
                step.data.empty() ? nullptr : step.data.c_str()) < 0) {
        return FailErrno("mount " + step.fstype + " " + step.source + " on " + step.target +
                         (step.data.empty() ? "" : " (" + step.data + ")"));
      }
      return Ok();
    case MountStep::Kind::kMove:
      if (mount(step.source.c_str(), step.target.c_str(), nullptr, MS_MOVE, nullptr) < 0) {
        return FailErrno("move mount " + step.source + " to " + step.target);
      }
      return Ok();
  }
  return Fail(ErrorCode::kInternal, "unknown mount step");
}

MountStep Mkdir(std::string path) {
  return {.kind = MountStep::Kind::kMkdir, .target = std::move(path)};
}
MountStep Mount(std::string source, std::string target, std::string type, unsigned long flags,
                std::string data = "") {
  return {.kind = MountStep::Kind::kMount,
          .source = std::move(source),
          .target = std::move(target),
          .fstype = std::move(type),
          .flags = flags,
          .data = std::move(data)};
}
MountStep Move(std::string from, std::string to) {
  return {.kind = MountStep::Kind::kMove, .source = std::move(from), .target = std::move(to)};
}

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return FailErrno("open " + path);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

Status LoadModules() {
  utsname uts{};
  if (uname(&uts) < 0) return FailErrno("uname");
  std::string dir = std::string("/lib/modules/") + uts.release;
  auto list = ReadWholeFile("/lib/modules/tartarus.modules");
  // An initramfs for a kernel with everything built in ships no modules.
  if (!list) return Ok();
  std::vector<std::string> wanted;
  std::istringstream lines(*list);
  for (std::string line; std::getline(lines, line);) {
    std::string_view name = Trim(line);
    if (!name.empty() && name.front() != '#') wanted.emplace_back(name);
  }
  auto dep_text = TRY(ReadWholeFile(dir + "/modules.dep"));
  auto order = TRY(ModuleLoadOrder(dep_text, wanted));
  for (const std::string& relative : order) {
    std::string path = dir + "/" + relative;
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return FailErrno("open " + path);
    // EEXIST: built in, or already loaded as a dependency of an earlier one.
    if (syscall(SYS_finit_module, fd.Get(), "", 0) < 0 && errno != EEXIST) {
      return FailErrno("loading kernel module " + path);
    }
  }
  return Ok();
}

// Devices appear in devtmpfs as their drivers probe them, after the module load returned.
Status WaitForDevice(const std::string& what, const std::string& path) {
  auto deadline = std::chrono::steady_clock::now() + kRootDeviceWait;
  while (access(path.c_str(), F_OK) != 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      return Fail(ErrorCode::kNotFound, what + " " + path + " did not appear within " +
                                            std::to_string(kRootDeviceWait.count()) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return Ok();
}

// busybox's switch_root without deleting the initramfs: it is a few MiB and the agent
// binary runs from it.
Status SwitchRoot(const std::string& new_root) {
  if (chdir(new_root.c_str()) < 0) return FailErrno("chdir " + new_root);
  if (mount(".", "/", nullptr, MS_MOVE, nullptr) < 0)
    return FailErrno("move " + new_root + " to /");
  if (chroot(".") < 0) return FailErrno("chroot " + new_root);
  if (chdir("/") < 0) return FailErrno("chdir /");
  return Ok();
}

}  // namespace

Result<uint32_t> ParseVsockPort(std::string_view text) {
  return static_cast<uint32_t>(TRY(ParseDecimal("vsock port", text, 1, 0xfffffffeu)));
}

Result<BootOptions> ParseBootOptions(std::string_view cmdline) {
  BootOptions options;
  bool have_root = false;
  std::istringstream words{std::string(cmdline)};
  for (std::string word; words >> word;) {
    if (word == "--") break;  // what follows is init's argv
    if (word.rfind("tartarus.", 0) != 0) continue;
    size_t equals = word.find('=');
    if (equals == std::string::npos) {
      return Fail(ErrorCode::kInvalidArgument, "kernel command line: " + word + " has no value");
    }
    std::string key = word.substr(0, equals);
    std::string value = word.substr(equals + 1);
    if (key == "tartarus.root") {
      if (value.rfind("/dev/", 0) != 0 || value.size() <= 5 ||
          value.find("..") != std::string::npos) {
        return Fail(ErrorCode::kInvalidArgument,
                    "tartarus.root: expected a device under /dev/, got \"" + value + "\"");
      }
      options.root_device = value;
      have_root = true;
    } else if (key == "tartarus.rootfstype") {
      if (!ValidFsType(value)) {
        return Fail(ErrorCode::kInvalidArgument, "tartarus.rootfstype: bad name \"" + value + "\"");
      }
      options.root_fstype = value;
    } else if (key == "tartarus.vsock_port") {
      options.vsock_port =
          static_cast<uint32_t>(TRY(ParseDecimal("tartarus.vsock_port", value, 1, 0xfffffffeu)));
    } else if (key == "tartarus.disk_bytes") {
      options.disk_bytes =
          TRY(ParseDecimal("tartarus.disk_bytes", value, kMinDiskBytes, 1ull << 50));
    } else if (key == "tartarus.agent_tty") {
      if (value.rfind("/dev/", 0) != 0 || value.size() <= 5 ||
          value.find("..") != std::string::npos) {
        return Fail(ErrorCode::kInvalidArgument,
                    "tartarus.agent_tty: expected a device under /dev/, got \"" + value + "\"");
      }
      options.agent_tty = value;
    } else if (key == "tartarus.hostname") {
      if (!ValidHostname(value)) {
        return Fail(ErrorCode::kInvalidArgument,
                    "tartarus.hostname: expected 1-64 of [A-Za-z0-9.-], got \"" + value + "\"");
      }
      options.hostname = value;
    } else {
      return Fail(ErrorCode::kInvalidArgument, "kernel command line: unknown key " + key);
    }
  }
  if (!have_root) {
    return Fail(ErrorCode::kInvalidArgument,
                "kernel command line: no tartarus.root= (the host did not start this VM as a "
                "Tartarus sandbox)");
  }
  return options;
}

Result<std::vector<std::string>> ModuleLoadOrder(std::string_view modules_dep,
                                                 const std::vector<std::string>& wanted) {
  std::map<std::string, ModuleEntry> by_path;
  std::map<std::string, std::string> path_by_name;
  size_t line_number = 0;
  while (!modules_dep.empty()) {
    size_t newline = modules_dep.find('\n');
    std::string_view line = Trim(modules_dep.substr(0, newline));
    modules_dep.remove_prefix(newline == std::string_view::npos ? modules_dep.size() : newline + 1);
    ++line_number;
    if (line.empty() || line.front() == '#') continue;
    size_t colon = line.find(':');
    std::string_view path = colon == std::string_view::npos ? "" : Trim(line.substr(0, colon));
    if (path.empty() || path.find(".ko") == std::string_view::npos) {
      return Fail(ErrorCode::kInvalidArgument, "modules.dep line " + std::to_string(line_number) +
                                                   ": expected \"path.ko: deps\", got \"" +
                                                   std::string(line) + "\"");
    }
    ModuleEntry entry{.path = std::string(path)};
    std::istringstream deps{std::string(line.substr(colon + 1))};
    for (std::string dep; deps >> dep;) entry.deps.push_back(dep);
    path_by_name[ModuleName(path)] = entry.path;
    by_path[entry.path] = std::move(entry);
  }
  std::vector<std::string> roots;
  for (const std::string& name : wanted) {
    auto found = path_by_name.find(ModuleName(name));
    if (found == path_by_name.end()) {
      return Fail(ErrorCode::kNotFound, "kernel module " + name + " is not in modules.dep");
    }
    roots.push_back(found->second);
  }
  ModuleResolver resolver(std::move(by_path));
  std::vector<std::string> order;
  for (const std::string& root : roots) TRY(resolver.Visit(root, order));
  return order;
}

std::vector<MountStep> EarlyMountPlan() {
  return {
      Mkdir("/proc"), Mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
      Mkdir("/sys"),  Mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC),
      Mkdir("/dev"),  Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
  };
}

std::vector<MountStep> RootMountPlan(const BootOptions& options) {
  std::string root = kNewRoot;
  return {
      Mkdir("/lower"),
      Mount(options.root_device, "/lower", options.root_fstype, MS_RDONLY),
      Mkdir("/rw"),
      Mount("tmpfs", "/rw", "tmpfs", MS_NOSUID | MS_NODEV,
            "size=" + std::to_string(options.disk_bytes) + ",mode=0755"),
      Mkdir("/rw/upper"),
      Mkdir("/rw/work"),
      Mkdir(root),
      Mount("overlay", root, "overlay", 0, "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work"),
      Mkdir(root + "/dev"),
      Move("/dev", root + "/dev"),
      Mkdir(root + "/proc"),
      Move("/proc", root + "/proc"),
      Mkdir(root + "/sys"),
      Move("/sys", root + "/sys"),
      // What MountBasics adds in a container; here /tmp stays in the writable layer.
      Mkdir(root + "/dev/pts"),
      Mount("devpts", root + "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=620"),
      Mkdir(root + "/dev/shm"),
      Mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
  };
}

Status RunMountPlan(const std::vector<MountStep>& plan) {
  for (const MountStep& step : plan) TRY(RunStep(step));
  return Ok();
}

Result<BootOptions> RunInit() {
  TRY(RunMountPlan(EarlyMountPlan()));
  auto cmdline = TRY(ReadWholeFile("/proc/cmdline"));
  BootOptions options = TRY(ParseBootOptions(cmdline));
  TRY(LoadModules());
  TRY(WaitForDevice("root device", options.root_device));
  // /dev moves into the new root, so the path stays valid after the switch.
  if (!options.agent_tty.empty()) TRY(WaitForDevice("agent terminal", options.agent_tty));
  TRY(RunMountPlan(RootMountPlan(options)));
  TRY(SwitchRoot(kNewRoot));
  if (sethostname(options.hostname.data(), options.hostname.size()) < 0) {
    return FailErrno("sethostname " + options.hostname);
  }
  return options;
}

}  // namespace tartarus::guest

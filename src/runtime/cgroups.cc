// The Tartarus runtime: cgroup usage on v1, v2 and hybrid hosts.
#include "runtime/cgroups.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <vector>

#include "runtime/owner.h"

namespace tartarus::runtime {
namespace {

bool IsDir(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsPureV2(const std::string& root) {
  return access((root + "/cgroup.controllers").c_str(), F_OK) == 0;
}

std::string Join(const std::string& root, std::string_view hierarchy, std::string_view path) {
  std::string result = root;
  if (!hierarchy.empty()) result += "/" + std::string(hierarchy);
  if (!path.empty() && path.front() != '/') result += "/";
  result += path;
  while (result.size() > 1 && result.back() == '/') result.pop_back();
  return result;
}

// The v1 mount of `controller`: "<root>/<controller>", or a co-mount like "cpu,cpuacct".
std::string V1Mount(const std::string& root, std::string_view controller,
                    std::string_view comount = "") {
  if (!comount.empty() && IsDir(Join(root, comount, ""))) return Join(root, comount, "");
  if (IsDir(Join(root, controller, ""))) return Join(root, controller, "");
  return "";
}

std::optional<uint64_t> ReadU64(const std::string& path) {
  auto text = ReadSmallFile(path, 256);
  if (!text) return std::nullopt;
  std::string_view view = *text;
  while (!view.empty() && (view.back() == '\n' || view.back() == ' ')) view.remove_suffix(1);
  if (view == "max") return UINT64_MAX;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), value);
  if (ec != std::errc() || end != view.data() + view.size()) return std::nullopt;
  return value;
}

// "key value" lines (memory.events, cpu.stat, memory.oom_control).
std::optional<uint64_t> ReadKey(const std::string& path, std::string_view key) {
  auto text = ReadSmallFile(path);
  if (!text) return std::nullopt;
  std::string_view view = *text;
  while (!view.empty()) {
    size_t end = view.find('\n');
    std::string_view line = view.substr(0, end);
    view = end == std::string_view::npos ? std::string_view() : view.substr(end + 1);
    if (line.size() > key.size() && line.substr(0, key.size()) == key && line[key.size()] == ' ') {
      std::string_view number = line.substr(key.size() + 1);
      uint64_t value = 0;
      auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
      if (ec == std::errc()) return value;
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace

CgroupDirs CgroupDirsForPath(const std::string& root, std::string_view path) {
  CgroupDirs dirs;
  if (IsPureV2(root)) {
    dirs.unified = Join(root, "", path);
    return dirs;
  }
  if (auto mount = V1Mount(root, "cpuacct", "cpu,cpuacct"); !mount.empty()) {
    dirs.cpuacct = Join(mount, "", path);
  }
  if (auto mount = V1Mount(root, "memory"); !mount.empty()) dirs.memory = Join(mount, "", path);
  if (auto mount = V1Mount(root, "pids"); !mount.empty()) dirs.pids = Join(mount, "", path);
  if (IsDir(root + "/unified")) dirs.unified = Join(root, "unified", path);
  return dirs;
}

Result<CgroupDirs> CgroupDirsFromProcText(const std::string& root, std::string_view text) {
  CgroupDirs dirs;
  bool pure_v2 = IsPureV2(root);
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    if (line.empty()) continue;
    // "hierarchy-id:controller-list:path"; the path itself may contain ':'.
    size_t first = line.find(':');
    size_t second = first == std::string_view::npos ? first : line.find(':', first + 1);
    if (second == std::string_view::npos) {
      return Fail(ErrorCode::kInvalidArgument,
                  "/proc/<pid>/cgroup: malformed line \"" + std::string(line) + "\"");
    }
    std::string_view id = line.substr(0, first);
    std::string_view controllers = line.substr(first + 1, second - first - 1);
    std::string_view path = line.substr(second + 1);
    if (path.empty() || path.front() != '/') {
      return Fail(ErrorCode::kInvalidArgument,
                  "/proc/<pid>/cgroup: relative path \"" + std::string(path) + "\"");
    }
    if (id == "0" && controllers.empty()) {
      dirs.unified = pure_v2 ? Join(root, "", path) : Join(root, "unified", path);
      continue;
    }
    // A v1 line: each listed controller lives in the co-mount named by the whole list.
    size_t pos = 0;
    while (pos <= controllers.size()) {
      size_t comma = controllers.find(',', pos);
      if (comma == std::string_view::npos) comma = controllers.size();
      std::string_view controller = controllers.substr(pos, comma - pos);
      std::string mount = V1Mount(root, controller, controllers);
      if (!mount.empty()) {
        if (controller == "cpuacct") dirs.cpuacct = Join(mount, "", path);
        if (controller == "memory") dirs.memory = Join(mount, "", path);
        if (controller == "pids") dirs.pids = Join(mount, "", path);
      }
      pos = comma + 1;
    }
  }
  return dirs;
}

Result<Usage> ReadCgroupUsage(const CgroupDirs& dirs) {
  Usage usage;
  bool any = false;
  auto v1 = [](const std::string& dir, const char* file) {
    return dir.empty() ? std::nullopt : ReadU64(dir + "/" + file);
  };
  auto v2 = [&](const char* file) {
    return dirs.unified.empty() ? std::nullopt : ReadU64(dirs.unified + "/" + file);
  };
  auto v2_key = [&](const char* file, std::string_view key) {
    return dirs.unified.empty() ? std::nullopt : ReadKey(dirs.unified + "/" + file, key);
  };

  if (auto ns = v1(dirs.cpuacct, "cpuacct.usage")) {
    usage.cpu_ns = *ns, any = true;
  } else if (auto us = v2_key("cpu.stat", "usage_usec")) {
    usage.cpu_ns = *us * 1000, any = true;
  }

  if (auto current = v1(dirs.memory, "memory.usage_in_bytes")) {
    usage.memory_current_bytes = *current, any = true;
    usage.memory_peak_bytes = v1(dirs.memory, "memory.max_usage_in_bytes").value_or(*current);
    auto kills = ReadKey(dirs.memory + "/memory.oom_control", "oom_kill");
    usage.oom_killed = kills.value_or(0) > 0;
  } else if (auto current = v2("memory.current")) {
    usage.memory_current_bytes = *current, any = true;
    // memory.peak exists from Linux 5.19 on.
    usage.memory_peak_bytes = v2("memory.peak").value_or(*current);
    usage.oom_killed = v2_key("memory.events", "oom_kill").value_or(0) > 0;
  }

  std::optional<uint64_t> pids = v1(dirs.pids, "pids.current");
  if (!pids) pids = v2("pids.current");
  if (pids) usage.pids_current = static_cast<uint32_t>(*pids), any = true;

  if (!any) return Fail(ErrorCode::kNotFound, "no readable cgroup usage files");
  return usage;
}

void KillCgroupProcesses(const CgroupDirs& dirs) {
  for (int round = 0; round < 5; ++round) {
    bool any = false;
    for (const std::string* dir : {&dirs.memory, &dirs.pids, &dirs.cpuacct, &dirs.unified}) {
      if (dir->empty()) continue;
      auto text = ReadSmallFile(*dir + "/cgroup.procs", 1 << 20);
      if (!text) continue;
      size_t pos = 0;
      while (pos < text->size()) {
        size_t end = text->find('\n', pos);
        if (end == std::string::npos) end = text->size();
        int pid = 0;
        auto [ptr, ec] = std::from_chars(text->data() + pos, text->data() + end, pid);
        if (ec == std::errc() && pid > 1) {
          kill(pid, SIGKILL);
          any = true;
        }
        pos = end + 1;
      }
    }
    if (!any) return;
    usleep(2000);
  }
}

Status RemoveCgroupPath(const std::string& root, std::string_view path) {
  std::vector<std::string> candidates;
  if (IsPureV2(root)) {
    candidates.push_back(Join(root, "", path));
  } else {
    DIR* dir = opendir(root.c_str());
    if (!dir) return Ok();  // no cgroups mounted at all
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      // Co-mounts appear twice (the dir and its symlinks): rmdir of the second is ENOENT.
      candidates.push_back(Join(root, name, path));
    }
    closedir(dir);
  }
  std::string busy;
  for (const auto& candidate : candidates) {
    if (rmdir(candidate.c_str()) == 0 || errno == ENOENT || errno == ENOTDIR) continue;
    busy = candidate + ": " + strerror(errno);
  }
  if (!busy.empty()) return Fail(ErrorCode::kIo, "removing cgroup " + busy);
  return Ok();
}

}  // namespace tartarus::runtime

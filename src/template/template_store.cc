// The template store. See template_store.h for the layout and the locking rules.
#include "template/template_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/units.h"
#include "template/fs_util.h"

namespace tartarus::templates {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kDefaultPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* handle = opendir(dir.c_str());
  if (!handle) return names;
  while (struct dirent* entry = readdir(handle)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  closedir(handle);
  std::sort(names.begin(), names.end());
  return names;
}

bool LooksLikePath(std::string_view text) {
  return text.find('/') != std::string_view::npos || text.ends_with(".yaml") ||
         text.ends_with(".yml");
}

std::string Rfc3339(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm utc;
  gmtime_r(&t, &utc);
  char buffer[32];
  strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buffer;
}

struct Meta {
  std::string name;
  std::string hash;
  std::string base;
  std::vector<std::string> packages;
  std::string description;
  std::string source;
  uint64_t size_bytes = 0;
  int64_t built_at_unix = 0;
  double build_seconds = 0;
};

Result<Meta> ReadMeta(const std::string& path) {
  std::string text = TRY(ReadSmallFile(path, 1 << 20));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return Fail(ErrorCode::kIo, path + ": not valid JSON");
  }
  Meta meta;
  auto str = [&](const char* key) {
    auto it = json.find(key);
    return it != json.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  meta.name = str("name");
  meta.hash = str("hash");
  meta.base = str("base");
  meta.description = str("description");
  meta.source = str("source");
  if (auto it = json.find("packages"); it != json.end() && it->is_array()) {
    for (const auto& package : *it) {
      if (package.is_string()) meta.packages.push_back(package.get<std::string>());
    }
  }
  if (auto it = json.find("size_bytes"); it != json.end() && it->is_number_unsigned()) {
    meta.size_bytes = it->get<uint64_t>();
  }
  if (auto it = json.find("built_at_unix"); it != json.end() && it->is_number_integer()) {
    meta.built_at_unix = it->get<int64_t>();
  }
  if (auto it = json.find("build_seconds"); it != json.end() && it->is_number()) {
    meta.build_seconds = it->get<double>();
  }
  if (meta.hash.empty()) return Fail(ErrorCode::kIo, path + ": no hash");
  return meta;
}

std::string MetaJson(const Meta& meta) {
  nlohmann::json json = {
      {"name", meta.name},
      {"hash", meta.hash},
      {"base", meta.base},
      {"packages", meta.packages},
      {"description", meta.description},
      {"source", meta.source},
      {"size_bytes", meta.size_bytes},
      {"built_at", Rfc3339(meta.built_at_unix)},
      {"built_at_unix", meta.built_at_unix},
      {"build_seconds", meta.build_seconds},
      {"builder_version", kBuilderVersion},
  };
  return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// Overlay mounts visible to us whose lower dir is this tree.
bool MountedAsLowerDir(const std::string& rootfs) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    size_t options = line.find("lowerdir=");
    if (options == std::string::npos) continue;
    size_t at = line.find(rootfs, options);
    if (at == std::string::npos) continue;
    size_t end = at + rootfs.size();
    if (end == line.size() || line[end] == ':' || line[end] == ',' || line[end] == '/') return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> SandboxEnv(const TemplateSpec& spec) {
  std::map<std::string, std::string> env = {
      {"PATH", std::string(kDefaultPath)}, {"LANG", "C.UTF-8"}, {"HOME", "/root"}};
  for (const auto& [key, value] : spec.env) env[key] = value;
  std::vector<std::string> out;
  for (const auto& [key, value] : env) out.push_back(key + "=" + value);
  return out;
}

TemplateStore::TemplateStore(std::string state_dir, std::vector<std::string> search_dirs,
                             StoreOptions options)
    : state_dir_(std::move(state_dir)),
      search_dirs_(std::move(search_dirs)),
      options_(std::move(options)) {
  builder_ = std::make_unique<DebootstrapBuilder>(state_dir_, options_.debootstrap);
}

TemplateStore::TemplateStore(std::string state_dir, std::vector<std::string> search_dirs,
                             std::unique_ptr<RootfsBuilder> builder, StoreOptions options)
    : state_dir_(std::move(state_dir)),
      search_dirs_(std::move(search_dirs)),
      builder_(std::move(builder)),
      options_(std::move(options)) {}

TemplateStore::~TemplateStore() = default;

std::vector<std::string> TemplateStore::DefaultSearchDirs(const std::string& state_dir) {
  std::vector<std::string> dirs;
  if (const char* path = getenv("TARTARUS_TEMPLATE_PATH"); path && *path) {
    std::string_view rest = path;
    while (!rest.empty()) {
      size_t colon = rest.find(':');
      std::string dir(rest.substr(0, colon));
      if (!dir.empty()) dirs.push_back(dir);
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
    return dirs;
  }
  return {state_dir + "/templates.d", "/etc/tartarus/templates", "/usr/share/tartarus/templates"};
}

std::string TemplateStore::TemplateDir(std::string_view name) const {
  return state_dir_ + "/templates/" + std::string(name);
}

std::vector<std::string> TemplateStore::AvailableNames() const {
  std::set<std::string> names;
  for (const auto& dir : search_dirs_) {
    for (const auto& file : ListDir(dir)) {
      std::string stem;
      if (file.ends_with(".yaml")) stem = file.substr(0, file.size() - 5);
      if (file.ends_with(".yml")) stem = file.substr(0, file.size() - 4);
      if (IsValidTemplateName(stem)) names.insert(stem);
    }
  }
  for (const auto& entry : ListDir(state_dir_ + "/templates")) {
    if (IsValidTemplateName(entry) && IsRegularFile(TemplateDir(entry) + "/meta.json"))
      names.insert(entry);
  }
  return {names.begin(), names.end()};
}

Result<TemplateStore::Source> TemplateStore::Resolve(std::string_view name_or_path) const {
  Source source;
  if (LooksLikePath(name_or_path)) {
    source.path = std::string(name_or_path);
    auto text = ReadSmallFile(source.path, kMaxTemplateBytes);
    if (!text) return Fail(text.error().Context("template file"));
    source.text = std::move(*text);
    source.spec = TRY(ParseTemplate(source.text, source.path));
    return source;
  }
  std::string name(name_or_path);
  if (!IsValidTemplateName(name)) {
    return Fail(ErrorCode::kInvalidArgument,
                "invalid template name '" + name +
                    "' (lower-case letters, digits and '-'; or give a path to a .yaml file)");
  }
  for (const auto& dir : search_dirs_) {
    for (const char* extension : {".yaml", ".yml"}) {
      std::string path = dir + "/" + name + extension;
      if (IsRegularFile(path)) source.path = path;
      if (!source.path.empty()) break;
    }
    if (!source.path.empty()) break;
  }
  // A build whose file has gone still runs: its copy of the file is in the cache.
  if (source.path.empty() && IsRegularFile(TemplateDir(name) + "/template.yaml")) {
    source.path = TemplateDir(name) + "/template.yaml";
  }
  if (source.path.empty()) {
    std::string available;
    for (const auto& known : AvailableNames()) available += (available.empty() ? "" : ", ") + known;
    if (available.empty()) available = "none";
    return Fail(ErrorCode::kNotFound, "unknown template '" + name + "': available templates: " +
                                          available + " (see `tartarus template ls`)");
  }
  source.text = TRY(ReadSmallFile(source.path, kMaxTemplateBytes));
  source.spec = TRY(ParseTemplate(source.text, source.path));
  if (source.spec.name != name) {
    return Fail(ErrorCode::kInvalidArgument, source.path + ": name '" + source.spec.name +
                                                 "' does not match the file name '" + name + "'");
  }
  return source;
}

Result<BuiltTemplate> TemplateStore::FromCache(const Source& source) const {
  std::string dir = TemplateDir(source.spec.name);
  Meta meta = TRY(ReadMeta(dir + "/meta.json"));
  std::string hash = BuildHash(source.spec);
  if (meta.hash != hash) {
    return Fail(ErrorCode::kFailedPrecondition,
                "template '" + source.spec.name + "' is out of date");
  }
  if (!IsDirectory(dir + "/rootfs")) {
    return Fail(ErrorCode::kNotFound, "template '" + source.spec.name + "' has no rootfs");
  }
  BuiltTemplate built;
  built.name = source.spec.name;
  built.hash = hash;
  built.rootfs = dir + "/rootfs";
  built.source_path = source.path;
  built.spec = source.spec;
  built.env = SandboxEnv(source.spec);
  built.workdir = source.spec.workdir;
  built.size_bytes = meta.size_bytes;
  built.built_at_unix = meta.built_at_unix;
  built.build_seconds = meta.build_seconds;
  return built;
}

bool TemplateStore::InUse(std::string_view name) const {
  if (options_.in_use && options_.in_use(name)) return true;
  return MountedAsLowerDir(TemplateDir(name) + "/rootfs");
}

Result<BuiltTemplate> TemplateStore::BuildLocked(const Source& source,
                                                 const ProgressCallback& progress) {
  const std::string& name = source.spec.name;
  std::string templates_dir = state_dir_ + "/templates";
  std::string final_dir = TemplateDir(name);
  // '.' cannot occur in a template name, so ".build-<name>." never matches another name.
  std::string leftover_prefix = ".build-" + name + ".";
  for (const auto& entry : ListDir(templates_dir)) {
    if (entry.starts_with(leftover_prefix)) {
      TRY(RemoveTree(templates_dir + "/" + entry));
      continue;
    }
    // Another template's leftover is stale when nobody holds that template's lock.
    if (!entry.starts_with(".build-")) continue;
    std::string other = entry.substr(7, entry.find('.', 7) - 7);
    if (!IsValidTemplateName(other)) continue;
    auto other_lock = FileLock::TryAcquire(state_dir_ + "/templates/.locks/" + other + ".lock");
    if (other_lock && other_lock->Held()) (void)RemoveTree(templates_dir + "/" + entry);
  }
  if (IsDirectory(final_dir) && InUse(name)) {
    return Fail(ErrorCode::kFailedPrecondition,
                "template '" + name +
                    "' must be rebuilt, but running sandboxes use its current build; "
                    "stop them and try again");
  }
  std::string temp_dir = templates_dir + "/" + leftover_prefix + std::to_string(getpid());
  TRY(MakeDirs(temp_dir + "/rootfs"));
  if (progress) {
    progress("building template '" + name + "' (" + source.spec.base + ", " +
             std::to_string(source.spec.packages.size()) + " packages)");
  }
  auto started = Clock::now();
  Status built = builder_->BuildRootfs(source.spec, temp_dir + "/rootfs", progress);
  auto finish = [&]() -> Result<Meta> {
    TRY(built);
    Meta meta;
    meta.name = name;
    meta.hash = BuildHash(source.spec);
    meta.base = source.spec.base;
    meta.packages = source.spec.packages;
    meta.description = source.spec.description;
    meta.source = source.path;
    meta.size_bytes = TRY(DiskUsageBytes(temp_dir + "/rootfs"));
    meta.built_at_unix = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
    meta.build_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    TRY(WriteFileAtomic(temp_dir + "/template.yaml", source.text));
    TRY(WriteFileAtomic(temp_dir + "/meta.json", MetaJson(meta)));
    // The swap is the commit point: before it the old build is intact, after it the new one is.
    if (IsDirectory(final_dir)) {
      if (renameat2(AT_FDCWD, temp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) < 0) {
        return FailErrno("swap " + temp_dir + " and " + final_dir);
      }
    } else if (rename(temp_dir.c_str(), final_dir.c_str()) < 0) {
      return FailErrno("rename " + temp_dir + " to " + final_dir);
    }
    return meta;
  };
  auto meta = finish();
  // Either the failed build or, after the swap, the previous build.
  Status removed = RemoveTree(temp_dir);
  if (!meta) return Fail(meta.error().Context("building template '" + name + "'"));
  if (!removed && progress)
    progress("warning: could not remove the previous build: " + removed.error().message);
  if (progress) {
    char seconds[32];
    snprintf(seconds, sizeof seconds, "%.1f", meta->build_seconds);
    progress("built template '" + name + "' in " + seconds + "s (" + FormatBytes(meta->size_bytes) +
             ")");
  }
  BuiltTemplate result = TRY(FromCache(source));
  result.built_now = true;
  return result;
}

Result<BuiltTemplate> TemplateStore::Build(std::string_view name_or_path,
                                           const ProgressCallback& progress, bool force) {
  Source source = TRY(Resolve(name_or_path));
  const std::string& name = source.spec.name;
  TRY(MakeDirs(state_dir_ + "/templates/.locks"));
  FileLock lock = TRY(FileLock::Acquire(state_dir_ + "/templates/.locks/" + name + ".lock", [&] {
    if (progress) progress("waiting for another build of template '" + name + "' to finish");
  }));
  if (!force) {
    if (auto cached = FromCache(source)) {
      if (progress)
        progress("template '" + name + "' is up to date (" + cached->hash.substr(0, 12) + ")");
      return cached;
    }
  }
  return BuildLocked(source, progress);
}

Result<BuiltTemplate> TemplateStore::Ensure(std::string_view name_or_path,
                                            const ProgressCallback& progress) {
  Source source = TRY(Resolve(name_or_path));
  // Fast path without the lock: meta.json and rootfs/ change together by one rename.
  if (auto cached = FromCache(source)) return cached;
  const std::string& name = source.spec.name;
  TRY(MakeDirs(state_dir_ + "/templates/.locks"));
  FileLock lock = TRY(FileLock::Acquire(state_dir_ + "/templates/.locks/" + name + ".lock", [&] {
    if (progress) progress("waiting for another build of template '" + name + "' to finish");
  }));
  if (auto cached = FromCache(source)) return cached;  // the other builder made it
  return BuildLocked(source, progress);
}

Result<std::vector<TemplateInfo>> TemplateStore::List() const {
  std::vector<TemplateInfo> infos;
  for (const auto& name : AvailableNames()) {
    auto info = Inspect(name);
    if (!info) return Fail(info.error());
    info->spec.reset();
    infos.push_back(std::move(*info));
  }
  return infos;
}

Result<TemplateInfo> TemplateStore::Inspect(std::string_view name_or_path) const {
  TemplateInfo info;
  auto source = Resolve(name_or_path);
  if (source) {
    info.name = source->spec.name;
    info.source_path = source->path;
    info.description = source->spec.description;
    info.base = source->spec.base;
    info.packages = source->spec.packages;
    info.spec = source->spec;
  } else if (source.error().code == ErrorCode::kInvalidArgument && !LooksLikePath(name_or_path) &&
             IsValidTemplateName(name_or_path)) {
    info.name = std::string(name_or_path);  // listed, but its file does not parse
    info.parse_error = source.error().message;
  } else {
    return Fail(source.error());
  }
  auto meta = ReadMeta(TemplateDir(info.name) + "/meta.json");
  if (meta && IsDirectory(TemplateDir(info.name) + "/rootfs")) {
    info.built = true;
    info.hash = meta->hash;
    info.size_bytes = meta->size_bytes;
    info.built_at_unix = meta->built_at_unix;
    info.build_seconds = meta->build_seconds;
    info.up_to_date = source && meta->hash == BuildHash(source->spec);
    if (info.base.empty()) info.base = meta->base;
    if (info.packages.empty()) info.packages = meta->packages;
    if (info.description.empty()) info.description = meta->description;
  }
  if (source && source->path == TemplateDir(info.name) + "/template.yaml") info.source_path.clear();
  return info;
}

Status TemplateStore::Remove(std::string_view name_view) {
  std::string name(name_view);
  if (!IsValidTemplateName(name)) {
    return Fail(ErrorCode::kInvalidArgument, "invalid template name '" + name + "'");
  }
  std::string dir = TemplateDir(name);
  if (!IsDirectory(dir)) return Fail(ErrorCode::kNotFound, "template '" + name + "' is not built");
  TRY(MakeDirs(state_dir_ + "/templates/.locks"));
  FileLock lock = TRY(FileLock::Acquire(state_dir_ + "/templates/.locks/" + name + ".lock"));
  if (!IsDirectory(dir)) return Fail(ErrorCode::kNotFound, "template '" + name + "' is not built");
  if (InUse(name)) {
    return Fail(
        ErrorCode::kFailedPrecondition,
        "template '" + name + "' is in use by running sandboxes; stop them before removing it");
  }
  // Out of sight first, so no reader finds a half-deleted tree.
  std::string doomed = state_dir_ + "/templates/.build-" + name + "." + std::to_string(getpid());
  TRY(RemoveTree(doomed));
  if (rename(dir.c_str(), doomed.c_str()) < 0) return FailErrno("rename " + dir);
  return RemoveTree(doomed);
}

}  // namespace tartarus::templates

#include "node/sandbox_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "common/file_util.h"
#include "runtime/owner.h"

namespace tartarus::node {

namespace fs = std::filesystem;

SandboxStore::SandboxStore(std::string state_dir) : state_dir_(std::move(state_dir)) {}

std::string SandboxStore::Dir(const std::string& id) const {
  return state_dir_ + "/sandboxes/" + id;
}

Status SandboxStore::Create(const SandboxRecord& record) {
  std::error_code ec;
  fs::create_directories(state_dir_ + "/sandboxes", ec);
  if (ec) return Fail(ErrorCode::kIo, "creating " + state_dir_ + "/sandboxes: " + ec.message());
  if (mkdir(Dir(record.id).c_str(), 0700) < 0) return FailErrno("creating " + Dir(record.id));
  return Save(record);
}

Status SandboxStore::Save(const SandboxRecord& record) {
  // No fsync: records are rewritten on the hot path of every run, and after a power loss
  // reconciling marks any sandbox that was running as lost anyway.
  return WriteFileAtomic(Dir(record.id) + "/record.json", RecordToJson(record),
                         Durability::kNoFsync, 0600);
}

Result<SandboxRecord> SandboxStore::Load(const std::string& id) const {
  auto text = runtime::ReadSmallFile(Dir(id) + "/record.json", 1 << 20);
  if (!text) {
    if (text.error().code == ErrorCode::kNotFound) {
      return Fail(ErrorCode::kNotFound, "no such sandbox: " + id);
    }
    return Fail(text.error());
  }
  auto record = RecordFromJson(*text);
  if (!record) return Fail(record.error().Context("sandbox " + id));
  return record;
}

std::vector<SandboxRecord> SandboxStore::List() const {
  std::vector<SandboxRecord> records;
  DIR* dir = opendir((state_dir_ + "/sandboxes").c_str());
  if (!dir) return records;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    if (auto record = Load(entry->d_name)) records.push_back(std::move(*record));
  }
  closedir(dir);
  std::sort(records.begin(), records.end(),
            [](const auto& a, const auto& b) { return a.created_ms > b.created_ms; });
  return records;
}

Result<std::string> SandboxStore::Resolve(std::string_view id_or_prefix) const {
  if (id_or_prefix.empty()) return Fail(ErrorCode::kInvalidArgument, "empty sandbox id");
  for (char c : id_or_prefix) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return Fail(ErrorCode::kInvalidArgument, "invalid sandbox id '" + std::string(id_or_prefix) +
                                                   "': ids are lowercase hex (see `tartarus ps`)");
    }
  }
  std::vector<std::string> matches;
  DIR* dir = opendir((state_dir_ + "/sandboxes").c_str());
  if (dir) {
    while (dirent* entry = readdir(dir)) {
      std::string_view name = entry->d_name;
      if (name.starts_with(id_or_prefix)) matches.emplace_back(name);
    }
    closedir(dir);
  }
  if (matches.empty()) {
    return Fail(ErrorCode::kNotFound,
                "no such sandbox: " + std::string(id_or_prefix) + " (see `tartarus ps`)");
  }
  if (matches.size() > 1) {
    return Fail(ErrorCode::kInvalidArgument, "sandbox id prefix '" + std::string(id_or_prefix) +
                                                 "' is ambiguous: give more characters");
  }
  return matches[0];
}

Status SandboxStore::Remove(const std::string& id) {
  std::error_code ec;
  fs::remove_all(Dir(id), ec);
  if (ec) return Fail(ErrorCode::kIo, "removing " + Dir(id) + ": " + ec.message());
  return Ok();
}

}  // namespace tartarus::node

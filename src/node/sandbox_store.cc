// Hecatoncheir (the node agent), local mode: the sandbox record store.
#include "node/sandbox_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "common/unique_fd.h"
#include "runtime/owner.h"

namespace tartarus::node {

namespace fs = std::filesystem;

namespace {

// Replaces `path` with `content` so that readers see the old or the new content, never a
// partial file. Not rename() over the old file: on ext4 that starts writeback of the new
// file at once (auto_da_alloc), and replacing or unlinking it again soon after waits for
// that I/O, 2-3 ms per record write on the dev VMs and several writes per run. Exchanging
// the two names is just as atomic and does not trigger it; the old content then goes with
// an unlink. No fsync either: after a power loss reconciling marks any sandbox that was
// running as lost anyway, and an empty record loads as lost (see Load).
Status ReplaceFile(const std::string& path, std::string_view content) {
  // The thread id keeps concurrent writers (threads and processes) off each other's file.
  std::string temp = path + ".tmp-" + std::to_string(gettid());
  {
    UniqueFd fd(open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return FailErrno("create " + temp);
    size_t written = 0;
    while (written < content.size()) {
      ssize_t n = write(fd.Get(), content.data() + written, content.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int err = errno;
        unlink(temp.c_str());
        return FailErrno("write " + temp, err);
      }
      written += static_cast<size_t>(n);
    }
  }
  if (renameat2(AT_FDCWD, temp.c_str(), AT_FDCWD, path.c_str(), RENAME_EXCHANGE) == 0) {
    unlink(temp.c_str());  // now the old content
    return Ok();
  }
  // No old file yet (ENOENT), or a file system without RENAME_EXCHANGE: a plain rename.
  if (rename(temp.c_str(), path.c_str()) < 0) {
    int err = errno;
    unlink(temp.c_str());
    return FailErrno("rename " + temp, err);
  }
  return Ok();
}

}  // namespace

SandboxStore::SandboxStore(std::string state_dir) : state_dir_(std::move(state_dir)) {}

std::string SandboxStore::Dir(const std::string& id) const {
  return state_dir_ + "/sandboxes/" + id;
}

Status SandboxStore::Create(const SandboxRecord& record) {
  std::error_code ec;
  fs::create_directories(state_dir_ + "/sandboxes", ec);
  if (ec) return Fail(ErrorCode::kIo, "creating " + state_dir_ + "/sandboxes: " + ec.message());
  if (mkdir(ActiveDir().c_str(), 0700) < 0 && errno != EEXIST) {
    return FailErrno("creating " + ActiveDir());
  }
  if (mkdir(Dir(record.id).c_str(), 0700) < 0) return FailErrno("creating " + Dir(record.id));
  TRY(Save(record));
  // After the record: an index entry always has a record to read. A crash between the two
  // syscalls leaves a record reconciling does not see: the runtime's own leftover cleanup
  // (owner records) still removes whatever the sandbox left; `ps` shows it as creating.
  if (!IsFinal(record.state)) {
    std::string entry = ActiveDir() + "/" + record.id;
    if (symlink(("../" + record.id).c_str(), entry.c_str()) < 0 && errno != EEXIST) {
      return FailErrno("creating " + entry);
    }
  }
  return Ok();
}

Status SandboxStore::Save(const SandboxRecord& record) {
  TRY(ReplaceFile(Dir(record.id) + "/record.json", RecordToJson(record)));
  if (IsFinal(record.state)) unlink((ActiveDir() + "/" + record.id).c_str());
  return Ok();
}

Result<SandboxRecord> SandboxStore::Load(const std::string& id) const {
  auto text = runtime::ReadSmallFile(Dir(id) + "/record.json", 1 << 20);
  if (!text) {
    if (text.error().code == ErrorCode::kNotFound) {
      return Fail(ErrorCode::kNotFound, "no such sandbox: " + id);
    }
    return Fail(text.error());
  }
  if (text->empty()) {
    SandboxRecord lost;
    lost.id = id;
    lost.state = SandboxState::kLost;
    lost.error = "its record was empty (the host went down before it reached the disk)";
    return lost;
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

void SandboxStore::IndexOlderRecords() {
  std::string indexed = ActiveDir() + "/.indexed";
  if (access(indexed.c_str(), F_OK) == 0) return;
  if (mkdir(ActiveDir().c_str(), 0700) < 0 && errno != EEXIST) return;
  for (const auto& record : List()) {
    if (IsFinal(record.state)) continue;
    (void)symlink(("../" + record.id).c_str(), (ActiveDir() + "/" + record.id).c_str());
  }
  UniqueFd done(open(indexed.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
}

std::vector<SandboxRecord> SandboxStore::ListActive() {
  std::vector<SandboxRecord> records;
  // Nothing was ever created here: nothing to index (and `ps` creates no directories).
  if (access((state_dir_ + "/sandboxes").c_str(), F_OK) != 0) return records;
  IndexOlderRecords();
  DIR* dir = opendir(ActiveDir().c_str());
  if (!dir) return records;
  std::vector<std::string> ids;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ids.emplace_back(entry->d_name);
  }
  closedir(dir);
  for (const auto& id : ids) {
    auto record = Load(id);
    if (record && !IsFinal(record->state)) {
      records.push_back(std::move(*record));
    } else if (record || record.error().code == ErrorCode::kNotFound) {
      // Final, or removed: a writer died between its last write and the unlink.
      unlink((ActiveDir() + "/" + id).c_str());
    }
  }
  return records;
}

Result<std::string> SandboxStore::Resolve(std::string_view id_or_prefix) const {
  if (id_or_prefix.empty()) return Fail(ErrorCode::kInvalidArgument, "empty sandbox id");
  for (char c : id_or_prefix) {
    // Local ids are hex; runs for the control plane are "<hex id>-<attempt>".
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-')) {
      return Fail(ErrorCode::kInvalidArgument, "invalid sandbox id '" + std::string(id_or_prefix) +
                                                   "': ids are lowercase hex (see `tartarus ps`)");
    }
  }
  std::vector<std::string> matches;
  DIR* dir = opendir((state_dir_ + "/sandboxes").c_str());
  if (dir) {
    while (dirent* entry = readdir(dir)) {
      std::string_view name = entry->d_name;
      if (name == id_or_prefix) {  // an exact id wins over longer ids it prefixes ("x-1", "x-12")
        closedir(dir);
        return std::string(name);
      }
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
  unlink((ActiveDir() + "/" + id).c_str());
  std::error_code ec;
  fs::remove_all(Dir(id), ec);
  if (ec) return Fail(ErrorCode::kIo, "removing " + Dir(id) + ": " + ec.message());
  return Ok();
}

}  // namespace tartarus::node

// Filesystem helpers for template trees: safe recursive removal (never crosses into a
// mount, unmounts leftovers first), writing a file inside a root without escaping it,
// disk usage, and a per-name flock.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "common/file_util.h"  // WriteFileAtomic, used with these helpers
#include "common/result.h"
#include "common/unique_fd.h"

namespace tartarus::templates {

// mkdir -p.
Status MakeDirs(const std::string& path);

// Lazily unmounts every mount at or below `path` in our mount namespace, deepest first.
Status UnmountUnder(const std::string& path);

// Unmounts anything below `path`, then deletes it recursively without following symlinks
// or crossing file systems. A missing path is fine.
Status RemoveTree(const std::string& path);

// Creates `path` (inside `root`, resolved as if `root` were "/": symlinks in the tree
// cannot point outside it) with its parent directories, writes `content`, sets `mode`.
Status WriteFileInRoot(const std::string& root, std::string_view path, std::string_view content,
                       uint32_t mode);

// Bytes allocated on disk by the tree (hard links counted once), not crossing mounts.
Result<uint64_t> DiskUsageBytes(const std::string& path);

Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes = 4 << 20);

// An exclusive flock(2) on `path` (created if missing), held until destruction.
class FileLock {
 public:
  // Blocks until the lock is ours. `on_wait` runs once if someone else holds it.
  static Result<FileLock> Acquire(const std::string& path,
                                  const std::function<void()>& on_wait = {});
  // Returns nullopt-like empty lock (Held() false) when another holder has it.
  static Result<FileLock> TryAcquire(const std::string& path);
  bool Held() const { return fd_.Valid(); }

 private:
  explicit FileLock(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

}  // namespace tartarus::templates

// Small file helpers shared by every component.
#pragma once

#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus {

enum class Durability {
  kFsync,    // the new content survives a power loss once this returns
  kNoFsync,  // readers never see a partial file, but a power loss may lose the write
};

// Writes `content` to a temp file beside `path` and renames it over `path`, so a reader
// (another process included) sees the old content or the new, never a partial file.
Status WriteFileAtomic(const std::string& path, std::string_view content,
                       Durability durability = Durability::kFsync, int mode = 0644);

// The last `max_bytes` of a file (a log, for an error message), trailing newlines and
// spaces trimmed; empty when it cannot be read.
std::string ReadFileTail(const std::string& path, size_t max_bytes);

// True when `dir` or anything under it is a mount point in this process's mount namespace
// (/proc/self/mounts): a recursive delete would then reach into whatever is mounted there.
bool HasMountsUnder(const std::string& dir);

}  // namespace tartarus

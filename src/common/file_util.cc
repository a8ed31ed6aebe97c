#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include "common/unique_fd.h"

namespace tartarus {

Status WriteFileAtomic(const std::string& path, std::string_view content, Durability durability,
                       int mode) {
  // The pid keeps concurrent writers in different processes off each other's temp file.
  std::string temp = path + ".tmp-" + std::to_string(getpid());
  {
    UniqueFd fd(open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
    if (!fd) return FailErrno("create " + temp);
    size_t written = 0;
    while (written < content.size()) {
      ssize_t n = write(fd.Get(), content.data() + written, content.size() - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        unlink(temp.c_str());
        return FailErrno("write " + temp);
      }
      written += static_cast<size_t>(n);
    }
    if (durability == Durability::kFsync && fsync(fd.Get()) < 0) {
      unlink(temp.c_str());
      return FailErrno("fsync " + temp);
    }
  }
  if (rename(temp.c_str(), path.c_str()) < 0) {
    unlink(temp.c_str());
    return FailErrno("rename " + temp);
  }
  return Ok();
}

std::string ReadFileTail(const std::string& path, size_t max_bytes) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return "";
  off_t size = lseek(fd.Get(), 0, SEEK_END);
  if (size < 0) return "";
  off_t start = size > static_cast<off_t>(max_bytes) ? size - static_cast<off_t>(max_bytes) : 0;
  std::string text(static_cast<size_t>(size - start), '\0');
  ssize_t n = pread(fd.Get(), text.data(), text.size(), start);
  text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

bool HasMountsUnder(const std::string& dir) {
  std::ifstream mounts("/proc/self/mounts");
  std::string device, point, rest;
  while (mounts >> device >> point && std::getline(mounts, rest)) {
    if (point == dir || point.starts_with(dir + "/")) return true;
  }
  return false;
}

}  // namespace tartarus

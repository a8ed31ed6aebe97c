#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>

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

}  // namespace tartarus

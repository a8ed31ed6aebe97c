// Filesystem helpers for template trees. See fs_util.h.
#include "template/fs_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace tartarus::templates {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountPath(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size()) {
      int value = 0;
      bool ok = true;
      for (size_t j = 1; j <= 3; ++j) {
        char c = text[i + j];
        if (c < '0' || c > '7') ok = false;
        value = value * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::vector<std::string> MountsUnder(const std::string& path) {
  std::vector<std::string> mounts;
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mountinfo, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    if (!(fields >> id >> parent >> devno >> root >> mount_point)) continue;
    std::string point = UnescapeMountPath(mount_point);
    if (point == path || point.starts_with(path + "/")) mounts.push_back(point);
  }
  return mounts;
}

int OpenAt2(int dirfd, const std::string& path, uint64_t flags, uint64_t mode) {
  struct open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = flags;
  how.mode = mode;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  return static_cast<int>(syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
}

// nftw() takes a plain function pointer, so the walkers keep their state here.
thread_local int remove_errno = 0;
thread_local std::string remove_failed_path;
thread_local uint64_t usage_bytes = 0;
thread_local std::set<std::pair<dev_t, ino_t>>* usage_seen = nullptr;

int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  int rc = (type == FTW_DP) ? rmdir(path) : unlink(path);
  if (rc < 0 && errno != ENOENT && remove_errno == 0) {
    remove_errno = errno;
    remove_failed_path = path;
  }
  return 0;  // keep going: remove as much as we can
}

int CountEntry(const char*, const struct stat* st, int, struct FTW*) {
  if (st->st_nlink > 1 && !S_ISDIR(st->st_mode)) {
    if (!usage_seen->insert({st->st_dev, st->st_ino}).second) return 0;
  }
  usage_bytes += static_cast<uint64_t>(st->st_blocks) * 512;
  return 0;
}

}  // namespace

Status MakeDirs(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  if (error) return Fail(ErrorCode::kIo, "mkdir " + path + ": " + error.message());
  return Ok();
}

Status UnmountUnder(const std::string& path) {
  // Bounded: nested and stacked mounts need a few passes, an endless loop needs a bug.
  for (int pass = 0; pass < 8; ++pass) {
    std::vector<std::string> mounts = MountsUnder(path);
    if (mounts.empty()) return Ok();
    std::sort(mounts.begin(), mounts.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (const auto& mount : mounts) {
      if (umount2(mount.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
        return FailErrno("unmount " + mount);
      }
    }
  }
  return Fail(ErrorCode::kIo, "mounts under " + path + " keep coming back");
}

Status RemoveTree(const std::string& path) {
  if (path.empty() || path == "/")
    return Fail(ErrorCode::kInternal, "refusing to remove '" + path + "'");
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return Ok();
    return FailErrno("stat " + path);
  }
  TRY(UnmountUnder(path));
  remove_errno = 0;
  remove_failed_path.clear();
  if (nftw(path.c_str(), RemoveEntry, 64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0 &&
      errno != ENOENT) {
    return FailErrno("walk " + path);
  }
  if (remove_errno != 0) return FailErrno("remove " + remove_failed_path, remove_errno);
  return Ok();
}

Status WriteFileInRoot(const std::string& root, std::string_view path, std::string_view content,
                       uint32_t mode) {
  UniqueFd root_fd(open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd) return FailErrno("open " + root);
  std::string target(path);
  // Create missing parents one by one, each resolved inside the root.
  for (size_t slash = target.find('/', 1); slash != std::string::npos;
       slash = target.find('/', slash + 1)) {
    std::string parent = target.substr(0, slash);
    UniqueFd fd(OpenAt2(root_fd.Get(), parent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0));
    if (fd) continue;
    if (errno != ENOENT) return FailErrno("open " + parent + " in " + root);
    size_t last = parent.rfind('/');
    std::string grandparent = last == 0 ? "/" : parent.substr(0, last);
    UniqueFd grand_fd(OpenAt2(root_fd.Get(), grandparent, O_PATH | O_DIRECTORY | O_CLOEXEC, 0));
    if (!grand_fd) return FailErrno("open " + grandparent + " in " + root);
    if (mkdirat(grand_fd.Get(), parent.substr(last + 1).c_str(), 0755) < 0 && errno != EEXIST) {
      return FailErrno("mkdir " + parent + " in " + root);
    }
  }
  UniqueFd fd(
      OpenAt2(root_fd.Get(), target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777));
  if (!fd) return FailErrno("create " + target + " in " + root);
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = write(fd.Get(), content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("write " + target + " in " + root);
    }
    written += static_cast<size_t>(n);
  }
  // The umask trimmed the mode at creation; an existing file kept its old one.
  if (fchmod(fd.Get(), mode & 07777) < 0) return FailErrno("chmod " + target + " in " + root);
  return Ok();
}

Result<uint64_t> DiskUsageBytes(const std::string& path) {
  std::set<std::pair<dev_t, ino_t>> seen;
  usage_seen = &seen;
  usage_bytes = 0;
  int rc = nftw(path.c_str(), CountEntry, 64, FTW_PHYS | FTW_MOUNT);
  usage_seen = nullptr;
  if (rc < 0) return FailErrno("walk " + path);
  return usage_bytes;
}

Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return FailErrno("open " + path);
  std::string data;
  char buffer[65536];
  while (true) {
    ssize_t n = read(fd.Get(), buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("read " + path);
    }
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > max_bytes) {
      return Fail(ErrorCode::kResourceExhausted,
                  path + ": larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  return data;
}

Result<FileLock> FileLock::Acquire(const std::string& path, const std::function<void()>& on_wait) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd) return FailErrno("open lock " + path);
  if (flock(fd.Get(), LOCK_EX | LOCK_NB) == 0) return FileLock(std::move(fd));
  if (errno != EWOULDBLOCK) return FailErrno("lock " + path);
  if (on_wait) on_wait();
  while (flock(fd.Get(), LOCK_EX) < 0) {
    if (errno != EINTR) return FailErrno("lock " + path);
  }
  return FileLock(std::move(fd));
}

Result<FileLock> FileLock::TryAcquire(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd) return FailErrno("open lock " + path);
  if (flock(fd.Get(), LOCK_EX | LOCK_NB) == 0) return FileLock(std::move(fd));
  if (errno != EWOULDBLOCK) return FailErrno("lock " + path);
  return FileLock(UniqueFd());
}

}  // namespace tartarus::templates

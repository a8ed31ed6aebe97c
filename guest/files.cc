// The guest agent: filesystem helpers (see files.h).
#include "guest/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tartarus::guest {
namespace {

// Deeper trees fail with ELOOP instead of exhausting fds or the stack.
constexpr int kMaxRemoveDepth = 256;

// Removes everything inside the directory open as `dir_fd` (which this call closes).
int RemoveContents(int dir_fd, int depth) {
  if (depth > kMaxRemoveDepth) {
    close(dir_fd);
    return ELOOP;
  }
  DIR* dir = fdopendir(dir_fd);
  if (!dir) {
    int err = errno;
    close(dir_fd);
    return err;
  }
  int result = 0;
  while (dirent* entry = readdir(dir)) {
    const char* name = entry->d_name;
    if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) continue;
      result = errno;
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      int child = openat(dirfd(dir), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (child < 0) {
        result = errno;
        break;
      }
      if ((result = RemoveContents(child, depth + 1)) != 0) break;
      if (unlinkat(dirfd(dir), name, AT_REMOVEDIR) < 0) {
        result = errno;
        break;
      }
    } else if (unlinkat(dirfd(dir), name, 0) < 0 && errno != ENOENT) {
      result = errno;
      break;
    }
  }
  closedir(dir);
  return result;
}

}  // namespace

protocol::ErrorKind KindForErrno(int err) {
  using protocol::ErrorKind;
  switch (err) {
    case ENOENT:
      return ErrorKind::kNotFound;
    case EACCES:
    case EPERM:
    case EROFS:
      return ErrorKind::kPermissionDenied;
    case EINVAL:
    case EEXIST:
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY:
    case ENAMETOOLONG:
    case ELOOP:
    case EBUSY:
      return ErrorKind::kInvalidArgument;
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EFBIG:
      return ErrorKind::kResourceExhausted;
    default:
      return ErrorKind::kIo;
  }
}

protocol::ErrorReply ErrnoReply(std::string_view what, std::string_view path, int err) {
  std::string message(what);
  message.append(" ").append(path).append(": ").append(std::strerror(err));
  return protocol::ErrorReply{KindForErrno(err), std::move(message)};
}

protocol::FileType TypeOfMode(mode_t mode) {
  if (S_ISREG(mode)) return protocol::FileType::kRegular;
  if (S_ISDIR(mode)) return protocol::FileType::kDirectory;
  if (S_ISLNK(mode)) return protocol::FileType::kSymlink;
  return protocol::FileType::kOther;
}

std::string CheckPath(std::string_view path) {
  if (path.empty()) return "empty path";
  if (path.find('\0') != std::string_view::npos) return "path contains a NUL byte";
  if (path[0] != '/') return "path '" + std::string(path) + "' is not absolute";
  return "";
}

int MakeDirs(const std::string& path, mode_t mode) {
  // Walk every prefix ending before a '/', then the full path.
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), pos == path.size() ? mode : 0755) == 0) continue;
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    return err == EEXIST ? ENOTDIR : err;
  }
  return 0;
}

int MakeParents(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == 0 || slash == std::string::npos) return 0;
  return MakeDirs(path.substr(0, slash), 0755);
}

int RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return errno;
  if (!S_ISDIR(st.st_mode)) return unlink(path.c_str()) < 0 ? errno : 0;
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno;
  if (int err = RemoveContents(fd, 0)) return err;
  return rmdir(path.c_str()) < 0 ? errno : 0;
}

}  // namespace tartarus::guest

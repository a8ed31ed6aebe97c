#include "node/file_copy.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/unique_fd.h"

namespace tartarus::node {
namespace {

using protocol::FileType;

// Directory trees deeper than this are refused rather than recursed into.
constexpr int kMaxDepth = 64;

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string Join(const std::string& dir, const std::string& name) {
  return dir.ends_with('/') ? dir + name : dir + "/" + name;
}

void Note(const std::function<void(const std::string&)>& progress, const std::string& line) {
  if (progress) progress(line);
}

Status CopyInTree(protocol::AgentClient& client, const std::string& local,
                  const std::string& remote,
                  const std::function<void(const std::string&)>& progress, int depth) {
  struct stat st;
  if (lstat(local.c_str(), &st) < 0) return FailErrno(local);
  if (S_ISREG(st.st_mode)) {
    UniqueFd fd(open(local.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return FailErrno(local);
    auto s = client.WriteFileFromFd(remote, st.st_mode & 07777, fd.Get());
    if (!s) return Fail(s.error().Context("copying " + local + " to " + remote));
    return Ok();
  }
  if (S_ISDIR(st.st_mode)) {
    if (depth > kMaxDepth) return Fail(ErrorCode::kResourceExhausted, local + ": tree too deep");
    auto s = client.Mkdir(remote, st.st_mode & 07777, /*make_parents=*/true);
    if (!s) return Fail(s.error().Context("creating " + remote));
    DIR* dir = opendir(local.c_str());
    if (!dir) return FailErrno(local);
    Status result = Ok();
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name == "." || name == "..") continue;
      result = CopyInTree(client, Join(local, name), Join(remote, name), progress, depth + 1);
      if (!result) break;
    }
    closedir(dir);
    return result;
  }
  Note(progress, "skipped " + local + ": not a regular file or directory");
  return Ok();
}

Status CopyOutTree(protocol::AgentClient& client, const std::string& remote,
                   const protocol::StatResult& st, const std::string& local,
                   const std::function<void(const std::string&)>& progress, int depth) {
  if (st.type == FileType::kRegular) {
    UniqueFd fd(open(local.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.mode & 07777));
    if (!fd) return FailErrno(local);
    auto s = client.ReadFileToFd(remote, fd.Get());
    if (!s) return Fail(s.error().Context("copying " + remote));
    return Ok();
  }
  if (st.type == FileType::kDirectory) {
    if (depth > kMaxDepth) return Fail(ErrorCode::kResourceExhausted, remote + ": tree too deep");
    if (mkdir(local.c_str(), (st.mode & 07777) | 0700) < 0 && errno != EEXIST) {
      return FailErrno(local);
    }
    auto entries = client.List(remote);
    if (!entries) return Fail(entries.error().Context("listing " + remote));
    for (const auto& entry : *entries) {
      if (entry.name == "." || entry.name == ".." || entry.name.find('/') != std::string::npos) {
        continue;  // a guest must not steer us outside the destination
      }
      protocol::StatResult child{entry.type, entry.mode, entry.size, 0};
      TRY(CopyOutTree(client, Join(remote, entry.name), child, Join(local, entry.name), progress,
                      depth + 1));
    }
    return Ok();
  }
  Note(progress, "skipped " + remote + ": not a regular file or directory");
  return Ok();
}

}  // namespace

Status CopyIn(protocol::AgentClient& client, const std::string& local_path,
              const std::string& remote_path,
              const std::function<void(const std::string&)>& progress) {
  struct stat st;
  if (stat(local_path.c_str(), &st) < 0) return FailErrno(local_path);
  std::string target = remote_path;
  auto remote = client.Stat(remote_path);
  if (remote && remote->type == FileType::kDirectory)
    target = Join(remote_path, BaseName(local_path));
  return CopyInTree(client, local_path, target, progress, 0);
}

Status CopyOut(protocol::AgentClient& client, const std::string& remote_path,
               const std::string& local_path,
               const std::function<void(const std::string&)>& progress) {
  auto remote = client.Stat(remote_path);
  if (!remote) return Fail(remote.error().Context(remote_path));
  std::string target = local_path;
  struct stat st;
  if (stat(local_path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    target = Join(local_path, BaseName(remote_path));
  }
  return CopyOutTree(client, remote_path, *remote, target, progress, 0);
}

}  // namespace tartarus::node

// Lethe: ephemeral copy-on-write filesystems.
#include "runtime/lethe.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <utility>

namespace tartarus::runtime {
namespace {

Status MakeDir(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) < 0 && errno != EEXIST) return FailErrno("mkdir " + path);
  return Ok();
}

Status RemoveDir(const std::string& path) {
  if (rmdir(path.c_str()) < 0 && errno != ENOENT) return FailErrno("rmdir " + path);
  return Ok();
}

}  // namespace

Status UnmountIfMounted(const std::string& path) {
  // umount2 is the check: EINVAL means "not a mount point", ENOENT "no such dir".
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (umount2(path.c_str(), UMOUNT_NOFOLLOW) == 0) continue;  // maybe stacked: again
    if (errno == EINVAL || errno == ENOENT) return Ok();
    if (errno != EBUSY) return FailErrno("umount " + path);
    // A process may still be exiting; give it a moment before detaching.
    std::this_thread::sleep_for(std::chrono::milliseconds(5 << attempt));
  }
  if (umount2(path.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) < 0 && errno != EINVAL &&
      errno != ENOENT) {
    return FailErrno("umount (detach) " + path);
  }
  return Ok();
}

Result<Lethe> Lethe::Create(const std::string& lower_dir, const std::string& layer_dir,
                            const std::string& root_dir, uint64_t size_bytes) {
  struct stat st;
  if (stat(lower_dir.c_str(), &st) < 0) return FailErrno("root filesystem " + lower_dir);
  if (!S_ISDIR(st.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument, "root filesystem is not a directory: " + lower_dir);
  }
  if (lower_dir.find_first_of(",:") != std::string::npos) {
    // Overlay mount options cannot carry these.
    return Fail(ErrorCode::kInvalidArgument, "root filesystem path contains ',' or ':'");
  }
  if (size_bytes < 4096) return Fail(ErrorCode::kInvalidArgument, "disk limit under 4 KiB");

  Lethe lethe;
  lethe.layer_dir_ = layer_dir;
  lethe.root_dir_ = root_dir;
  TRY(MakeDir(layer_dir, 0700));
  // mode=755: the upper dir's parent; the overlay root takes the lower root's mode.
  std::string tmpfs_options = "size=" + std::to_string(size_bytes) + ",mode=700";
  if (mount("tartarus-lethe", layer_dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
            tmpfs_options.c_str()) < 0) {
    return FailErrno("mount tmpfs at " + layer_dir);
  }
  TRY(MakeDir(layer_dir + "/upper", 0755));
  TRY(MakeDir(layer_dir + "/work", 0700));
  // After the tmpfs: the root may be inside it (the OCI backends put it there).
  TRY(MakeDir(root_dir, 0755));
  std::string overlay_options =
      "lowerdir=" + lower_dir + ",upperdir=" + layer_dir + "/upper,workdir=" + layer_dir + "/work";
  if (mount("tartarus-lethe", root_dir.c_str(), "overlay", MS_NODEV, overlay_options.c_str()) < 0) {
    return FailErrno("mount overlay at " + root_dir);
  }
  return lethe;
}

Lethe::Lethe(Lethe&& other) noexcept
    : layer_dir_(std::exchange(other.layer_dir_, {})),
      root_dir_(std::exchange(other.root_dir_, {})) {}

Lethe& Lethe::operator=(Lethe&& other) noexcept {
  if (this != &other) {
    (void)Destroy();
    layer_dir_ = std::exchange(other.layer_dir_, {});
    root_dir_ = std::exchange(other.root_dir_, {});
  }
  return *this;
}

Lethe::~Lethe() { (void)Destroy(); }

Status Lethe::Destroy() {
  if (layer_dir_.empty() && root_dir_.empty()) return Ok();
  TRY(Teardown(layer_dir_, root_dir_));
  layer_dir_.clear();
  root_dir_.clear();
  return Ok();
}

bool Lethe::DetachNow() {
  if (layer_dir_.empty() || root_dir_.empty()) return false;
  // A root outside the tmpfs is not taken along by its detach.
  if (!root_dir_.starts_with(layer_dir_ + "/") &&
      umount2(root_dir_.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) < 0) {
    return false;
  }
  if (umount2(layer_dir_.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) < 0) return false;
  // What is left are the empty mount points (the root, if inside, went with the tmpfs).
  if (!Teardown(layer_dir_, root_dir_)) return false;
  layer_dir_.clear();
  root_dir_.clear();
  return true;
}

Status Lethe::Teardown(const std::string& layer_dir, const std::string& root_dir) {
  // Overlay first: it pins the tmpfs. The tmpfs contents vanish with the unmount.
  if (!root_dir.empty()) {
    TRY(UnmountIfMounted(root_dir));
    TRY(RemoveDir(root_dir));
  }
  if (!layer_dir.empty()) {
    TRY(UnmountIfMounted(layer_dir));
    // Not mounted any more: if the mount had failed half way, upper/work are on the host fs.
    (void)RemoveDir(layer_dir + "/upper");
    (void)RemoveDir(layer_dir + "/work/work");
    (void)RemoveDir(layer_dir + "/work");
    TRY(RemoveDir(layer_dir));
  }
  return Ok();
}

}  // namespace tartarus::runtime

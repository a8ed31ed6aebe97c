// Templates as ext4 images (part of the template system): see ext4_image.h.
#include "template/ext4_image.h"

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>

#include "common/subprocess.h"

namespace tartarus::templates {
namespace {

constexpr uint64_t kMiB = 1 << 20;
// ext4's metadata (group descriptors, bitmaps, inode tables) and a margin for the tree.
constexpr uint64_t kFixedOverheadBytes = 32 * kMiB;
constexpr uint64_t kMinInodes = 1024;
constexpr std::chrono::minutes kMkfsTimeout{20};

// nftw has no context argument; a build is one thread's work at a time per process.
thread_local TreeSize* g_measuring = nullptr;

int CountEntry(const char*, const struct stat* st, int, struct FTW*) {
  g_measuring->entries++;
  g_measuring->bytes += static_cast<uint64_t>(st->st_blocks) * 512;
  return 0;
}

std::string FindMkfs() {
  std::string found = FindExecutable("mkfs.ext4");
  if (!found.empty()) return found;
  // root's PATH has sbin; other callers' may not.
  for (const char* path : {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"}) {
    if (access(path, X_OK) == 0) return path;
  }
  return "";
}

}  // namespace

std::string Ext4ImagePath(const std::string& rootfs) {
  std::string path = rootfs;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path + ".ext4";
}

Result<TreeSize> MeasureTree(const std::string& root) {
  struct stat st;
  if (lstat(root.c_str(), &st) < 0) return FailErrno("stat " + root);
  if (!S_ISDIR(st.st_mode)) return Fail(ErrorCode::kInvalidArgument, root + " is not a directory");
  TreeSize size;
  g_measuring = &size;
  int walked = nftw(root.c_str(), CountEntry, 64, FTW_PHYS | FTW_MOUNT);
  g_measuring = nullptr;
  if (walked != 0) return FailErrno("walking " + root);
  return size;
}

Ext4Geometry Ext4GeometryFor(const TreeSize& tree) {
  uint64_t bytes = tree.bytes + tree.bytes / 4 + kFixedOverheadBytes;
  bytes = (bytes + kMiB - 1) / kMiB * kMiB;
  uint64_t inodes = tree.entries + tree.entries / 4 + kMinInodes;
  return {.bytes = bytes, .inodes = inodes};
}

std::vector<std::string> MkfsExt4Command(const std::string& mkfs, const std::string& tree,
                                         const std::string& image, const Ext4Geometry& geometry) {
  return {mkfs,
          "-q",
          "-F",
          "-t",
          "ext4",
          "-b",
          "4096",
          "-m",
          "0",
          "-N",
          std::to_string(geometry.inodes),
          "-O",
          "^has_journal",
          "-E",
          "root_owner=0:0,nodiscard",
          "-L",
          "tartarus",
          "-d",
          tree,
          image,
          std::to_string(geometry.bytes / 1024) + "k"};
}

Result<std::string> EnsureExt4Image(const std::string& rootfs,
                                    const std::function<void(std::string_view)>& progress) {
  std::string image = Ext4ImagePath(rootfs);
  if (access(image.c_str(), R_OK) == 0) return image;
  std::string mkfs = FindMkfs();
  if (mkfs.empty()) {
    return Fail(ErrorCode::kFailedPrecondition,
                "mkfs.ext4 not found: install e2fsprogs (scripts/install-deps.sh)");
  }
  TreeSize tree = TRY(MeasureTree(rootfs));
  Ext4Geometry geometry = Ext4GeometryFor(tree);
  if (progress) {
    progress("making the microVM image " + image + " (" + std::to_string(geometry.bytes / kMiB) +
             " MiB, " + std::to_string(tree.entries) + " files) with mkfs.ext4 -d");
  }
  std::string temp = image + ".tmp-" + std::to_string(getpid());
  unlink(temp.c_str());
  auto output = RunCommand(MkfsExt4Command(mkfs, rootfs, temp, geometry), kMkfsTimeout);
  if (!output || !output->status.Success()) {
    unlink(temp.c_str());
    if (!output) return Fail(output.error().Context("mkfs.ext4 for " + rootfs));
    return Fail(ErrorCode::kIo, "mkfs.ext4 -d " + rootfs + " failed (" + output->status.Describe() +
                                    "): " + output->err);
  }
  if (rename(temp.c_str(), image.c_str()) < 0) {
    auto error = ErrnoError("rename " + temp + " to " + image);
    unlink(temp.c_str());
    return Fail(error);
  }
  return image;
}

}  // namespace tartarus::templates

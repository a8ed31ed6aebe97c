// tartarus-vmm (Tartarus's KVM microVM monitor): disks behind virtio-blk.
#include "vmm/virtio/disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tartarus::vmm::virtio {
namespace {

Status PreadAll(int fd, uint64_t offset, std::span<uint8_t> out, const char* what) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t got =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return FailErrno(std::string("reading ") + what);
    }
    if (got == 0) {  // the file shrank under us: what it no longer has reads as zeros
      std::fill(out.begin() + static_cast<ptrdiff_t>(done), out.end(), 0);
      return Ok();
    }
    done += static_cast<size_t>(got);
  }
  return Ok();
}

Status PwriteAll(int fd, uint64_t offset, std::span<const uint8_t> data, const char* what) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t put =
        ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (put < 0) {
      if (errno == EINTR) continue;
      return FailErrno(std::string("writing ") + what);
    }
    done += static_cast<size_t>(put);
  }
  return Ok();
}

Result<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat info;
  if (::fstat(fd, &info) != 0) return FailErrno("stat " + path);
  if (!S_ISREG(info.st_mode) && !S_ISBLK(info.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument, path + " is not a regular file or block device");
  }
  if (S_ISBLK(info.st_mode)) {
    const off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0) return FailErrno("seek " + path);
    return static_cast<uint64_t>(end);
  }
  return static_cast<uint64_t>(info.st_size);
}

}  // namespace

Status CheckDiskRange(uint64_t size, uint64_t offset, uint64_t length) {
  if (offset > size || length > size - offset) {
    return Fail(ErrorCode::kInvalidArgument,
                "disk range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                    ") is past the end of a " + std::to_string(size) + "-byte disk");
  }
  return Ok();
}

Result<std::unique_ptr<FileDisk>> FileDisk::Open(const std::string& path, bool read_only) {
  const int fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return FailErrno("open disk " + path);
  auto size = FileSize(fd, path);
  if (!size) {
    ::close(fd);
    return Fail(size.error());
  }
  return std::unique_ptr<FileDisk>(new FileDisk(fd, *size, read_only));
}

FileDisk::~FileDisk() { ::close(fd_); }

Status FileDisk::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckDiskRange(size_, offset, out.size()));
  return PreadAll(fd_, offset, out, "disk");
}

Status FileDisk::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  if (read_only_) return Fail(ErrorCode::kPermissionDenied, "disk is read-only");
  TRY(CheckDiskRange(size_, offset, data.size()));
  return PwriteAll(fd_, offset, data, "disk");
}

Status FileDisk::Flush() {
  if (read_only_) return Ok();
  if (::fdatasync(fd_) != 0) return FailErrno("fdatasync disk");
  return Ok();
}

Result<std::unique_ptr<LetheDisk>> LetheDisk::Create(const std::string& base_path,
                                                     const std::string& overlay_dir) {
  const int base_fd = ::open(base_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (base_fd < 0) return FailErrno("open base image " + base_path);
  auto size = FileSize(base_fd, base_path);
  if (!size) {
    ::close(base_fd);
    return Fail(size.error());
  }
  // O_TMPFILE: an overlay that never has a name, so no crash can leave it behind.
  int overlay_fd = ::open(overlay_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (overlay_fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR)) {
    // Filesystems without O_TMPFILE: create a name and drop it at once.
    std::string name = overlay_dir + "/lethe-overlay-XXXXXX";
    overlay_fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (overlay_fd >= 0) ::unlink(name.c_str());
  }
  if (overlay_fd < 0) {
    Error error = ErrnoError("create overlay in " + overlay_dir);
    ::close(base_fd);
    return Fail(error);
  }
  // Sparse: the overlay costs only the blocks the VM writes.
  if (::ftruncate(overlay_fd, static_cast<off_t>(*size)) != 0) {
    Error error = ErrnoError("size overlay");
    ::close(base_fd);
    ::close(overlay_fd);
    return Fail(error);
  }
  return std::unique_ptr<LetheDisk>(new LetheDisk(base_fd, overlay_fd, *size));
}

LetheDisk::LetheDisk(int base_fd, int overlay_fd, uint64_t size)
    : base_fd_(base_fd), overlay_fd_(overlay_fd), size_(size) {
  state_.block_size = kBlockSize;
  const uint64_t blocks = (size + kBlockSize - 1) / kBlockSize;
  state_.written.assign((blocks + 63) / 64, 0);
}

LetheDisk::~LetheDisk() {
  ::close(base_fd_);
  ::close(overlay_fd_);  // the last reference: the kernel frees the overlay's blocks
}

bool LetheDisk::Written(uint64_t block) const {
  return (state_.written[block / 64] >> (block % 64)) & 1;
}

void LetheDisk::MarkWritten(uint64_t block) {
  state_.written[block / 64] |= uint64_t{1} << (block % 64);
}

Status LetheDisk::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckDiskRange(size_, offset, out.size()));
  // Block by block: from the overlay once the VM wrote the block, from the base until then.
  uint64_t done = 0;
  while (done < out.size()) {
    const uint64_t at = offset + done;
    const uint64_t block = at / kBlockSize;
    const uint64_t piece = std::min<uint64_t>(out.size() - done, kBlockSize - at % kBlockSize);
    const bool from_overlay = Written(block);
    TRY(PreadAll(from_overlay ? overlay_fd_ : base_fd_, at, out.subspan(done, piece),
                 from_overlay ? "overlay" : "base image"));
    done += piece;
  }
  return Ok();
}

Status LetheDisk::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  TRY(CheckDiskRange(size_, offset, data.size()));
  uint64_t done = 0;
  std::vector<uint8_t> block_bytes;
  while (done < data.size()) {
    const uint64_t at = offset + done;
    const uint64_t block = at / kBlockSize;
    const uint64_t block_start = block * kBlockSize;
    const uint64_t piece = std::min<uint64_t>(data.size() - done, kBlockSize - at % kBlockSize);
    if (!Written(block) && piece < std::min(kBlockSize, size_ - block_start)) {
      // First write to this block covers only part of it: copy the rest up from the base.
      block_bytes.resize(std::min(kBlockSize, size_ - block_start));
      TRY(PreadAll(base_fd_, block_start, block_bytes, "base image"));
      std::copy_n(data.begin() + static_cast<ptrdiff_t>(done), piece,
                  block_bytes.begin() + static_cast<ptrdiff_t>(at - block_start));
      TRY(PwriteAll(overlay_fd_, block_start, block_bytes, "overlay"));
    } else {
      TRY(PwriteAll(overlay_fd_, at, data.subspan(done, piece), "overlay"));
    }
    MarkWritten(block);
    done += piece;
  }
  return Ok();
}

Status LetheDisk::Flush() { return Ok(); }

Status LetheDisk::SaveOverlay(int fd) const {
  if (::ftruncate(fd, 0) < 0 || ::ftruncate(fd, static_cast<off_t>(size_)) < 0) {
    return FailErrno("sizing the saved overlay");
  }
  std::vector<uint8_t> bytes;
  const uint64_t blocks = (size_ + kBlockSize - 1) / kBlockSize;
  for (uint64_t block = 0; block < blocks; ++block) {
    if (!Written(block)) continue;
    const uint64_t start = block * kBlockSize;
    bytes.resize(std::min(kBlockSize, size_ - start));
    TRY(PreadAll(overlay_fd_, start, bytes, "overlay"));
    TRY(PwriteAll(fd, start, bytes, "saved overlay"));
  }
  return Ok();
}

Status LetheDisk::LoadOverlay(const LetheState& saved, int fd) {
  if (saved.block_size != kBlockSize) {
    return Fail(ErrorCode::kInvalidArgument, "overlay block size " +
                                                 std::to_string(saved.block_size) + ", expected " +
                                                 std::to_string(kBlockSize));
  }
  if (saved.written.size() != state_.written.size()) {
    return Fail(ErrorCode::kInvalidArgument,
                "overlay bitmap of " + std::to_string(saved.written.size()) +
                    " words does not fit a disk of " + std::to_string(size_) + " bytes");
  }
  const uint64_t blocks = (size_ + kBlockSize - 1) / kBlockSize;
  // Bits past the last block would make reads look past the disk's end.
  if (blocks % 64 != 0 && !saved.written.empty() && (saved.written.back() >> (blocks % 64)) != 0) {
    return Fail(ErrorCode::kInvalidArgument, "overlay bitmap marks blocks past the disk's end");
  }
  struct stat info {};
  if (::fstat(fd, &info) < 0) return FailErrno("stat saved overlay");
  if (static_cast<uint64_t>(info.st_size) != size_) {
    return Fail(ErrorCode::kInvalidArgument, "saved overlay is " + std::to_string(info.st_size) +
                                                 " bytes, the disk " + std::to_string(size_));
  }
  std::vector<uint8_t> bytes;
  for (uint64_t block = 0; block < blocks; ++block) {
    if (!((saved.written[block / 64] >> (block % 64)) & 1)) continue;
    const uint64_t start = block * kBlockSize;
    bytes.resize(std::min(kBlockSize, size_ - start));
    TRY(PreadAll(fd, start, bytes, "saved overlay"));
    TRY(PwriteAll(overlay_fd_, start, bytes, "overlay"));
    MarkWritten(block);
  }
  return Ok();
}

}  // namespace tartarus::vmm::virtio

// tartarus-vmm (Tartarus's KVM microVM monitor): disks behind virtio-blk.
// FileDisk is a plain image file. LetheDisk (Lethe, the river of forgetting, for microVMs) is a
// read-only base image plus a per-VM copy-on-write overlay that is forgotten with the VM: the
// overlay file is unlinked as soon as it is created, so nothing is left on the host even when
// the VMM is killed, and its blocks are freed when the disk is destroyed.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"

namespace tartarus::vmm::virtio {

// Byte-addressed storage. Callers keep requests inside [0, Size()).
class Disk {
 public:
  virtual ~Disk() = default;
  virtual uint64_t Size() const = 0;
  virtual bool ReadOnly() const = 0;
  virtual Status ReadAt(uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Status WriteAt(uint64_t offset, std::span<const uint8_t> data) = 0;
  virtual Status Flush() = 0;
};

// Checks [offset, offset + length) against a disk of size bytes, without overflow.
Status CheckDiskRange(uint64_t size, uint64_t offset, uint64_t length);

class FileDisk : public Disk {
 public:
  static Result<std::unique_ptr<FileDisk>> Open(const std::string& path, bool read_only);
  ~FileDisk() override;
  uint64_t Size() const override { return size_; }
  bool ReadOnly() const override { return read_only_; }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Status Flush() override;

 private:
  FileDisk(int fd, uint64_t size, bool read_only) : fd_(fd), size_(size), read_only_(read_only) {}
  int fd_;
  uint64_t size_;
  bool read_only_;
};

// Which overlay blocks hold the VM's own data: plain data, for snapshots.
struct LetheState {
  uint64_t block_size = 0;
  std::vector<uint64_t> written;  // bitmap, one bit per block, little-endian words
};

class LetheDisk : public Disk {
 public:
  static constexpr uint64_t kBlockSize = 4096;
  // Opens base read-only and creates the overlay in overlay_dir (a per-VM directory).
  static Result<std::unique_ptr<LetheDisk>> Create(const std::string& base_path,
                                                   const std::string& overlay_dir);
  ~LetheDisk() override;
  uint64_t Size() const override { return size_; }
  bool ReadOnly() const override { return false; }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Status Flush() override;  // nothing to make durable: the overlay dies with the VM

  const LetheState& state() const { return state_; }
  // Snapshots. SaveOverlay writes the blocks the VM wrote to fd at their own offsets (fd is
  // truncated to Size() first, so every other block is a hole). LoadOverlay, on a fresh disk,
  // takes a saved bitmap (checked: this disk's block size and block count) and copies its
  // blocks from fd into the overlay.
  Status SaveOverlay(int fd) const;
  Status LoadOverlay(const LetheState& saved, int fd);
  int overlay_fd() const { return overlay_fd_; }  // for tests and snapshots

 private:
  LetheDisk(int base_fd, int overlay_fd, uint64_t size);
  bool Written(uint64_t block) const;
  void MarkWritten(uint64_t block);

  int base_fd_;
  int overlay_fd_;
  uint64_t size_;
  LetheState state_;
};

}  // namespace tartarus::vmm::virtio

// tartarus-vmm (Tartarus's KVM microVM monitor): test helpers for the virtio device model.
// FakeDriver plays a guest driver on plain GuestMemory: it lays out one split queue, writes
// descriptor chains and available-ring entries, and reads the used ring back. MemoryDisk is a
// Disk in a vector. Used by the unit tests and the fuzz targets (so: no gtest here).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/bus.h"
#include "vmm/guest_memory.h"
#include "vmm/virtio/disk.h"
#include "vmm/virtio/queue.h"

namespace tartarus::vmm::virtio::testing {

struct Segment {
  uint64_t addr = 0;
  uint32_t len = 0;
  bool writable = false;
};

struct UsedElement {
  uint32_t id = 0;
  uint32_t len = 0;
};

class FakeDriver {
 public:
  // Rings at base (descriptors), base + 0x1000 (available), base + 0x2000 (used); buffers
  // from Alloc come from base + 0x3000 on. size is at most 256.
  FakeDriver(GuestMemory& memory, uint16_t size, uint64_t base = 0x10000);

  VirtqueueState QueueState() const;
  uint16_t size() const { return size_; }
  uint64_t desc_addr() const { return base_; }
  uint64_t avail_addr() const { return base_ + 0x1000; }
  uint64_t used_addr() const { return base_ + 0x2000; }

  // A 16-byte-aligned buffer of len bytes, filled with fill.
  uint64_t Alloc(uint64_t len, uint8_t fill = 0);
  Status WriteBytes(uint64_t addr, std::span<const uint8_t> bytes);
  Result<std::vector<uint8_t>> ReadBytes(uint64_t addr, uint64_t len);

  // Writes one raw descriptor into the table (or into a table at table_addr).
  Status WriteDescriptor(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next,
                         uint64_t table_addr = 0);
  // Writes segments as a chain at consecutive free descriptor slots and publishes its head.
  Result<uint16_t> AddChain(std::span<const Segment> segments);
  // Writes segments as an indirect table (in Alloc'd memory) behind one descriptor; publishes.
  Result<uint16_t> AddIndirectChain(std::span<const Segment> segments);
  // Puts head in the next available-ring slot and bumps the available index.
  Status Publish(uint16_t head);
  Status SetAvailIdx(uint16_t idx);
  Status SetAvailFlags(uint16_t flags);

  Result<uint16_t> UsedIdx();
  Result<UsedElement> Used(uint16_t ring_index);

 private:
  GuestMemory& memory_;
  uint16_t size_;
  uint64_t base_;
  uint64_t next_alloc_;
  uint16_t next_desc_ = 0;
  uint16_t avail_idx_ = 0;
};

// A disk in memory.
class MemoryDisk : public Disk {
 public:
  explicit MemoryDisk(std::vector<uint8_t> bytes, bool read_only = false)
      : bytes_(std::move(bytes)), read_only_(read_only) {}
  uint64_t Size() const override { return bytes_.size(); }
  bool ReadOnly() const override { return read_only_; }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override;
  Status Flush() override {
    ++flushes;
    return Ok();
  }
  std::vector<uint8_t>& bytes() { return bytes_; }
  int flushes = 0;

 private:
  std::vector<uint8_t> bytes_;
  bool read_only_;
};

// An interrupt line that remembers its level.
class FakeIrq : public IrqLine {
 public:
  void SetLevel(bool asserted) override {
    level = asserted;
    ++changes;
  }
  bool level = false;
  int changes = 0;
};

}  // namespace tartarus::vmm::virtio::testing

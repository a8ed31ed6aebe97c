// tartarus-vmm (Tartarus's KVM microVM monitor): test helpers for the virtio device model.
#include "vmm/virtio/virtio_testing.h"

#include <algorithm>

namespace tartarus::vmm::virtio::testing {

FakeDriver::FakeDriver(GuestMemory& memory, uint16_t size, uint64_t base)
    : memory_(memory), size_(size), base_(base), next_alloc_(base + 0x3000) {}

VirtqueueState FakeDriver::QueueState() const {
  return VirtqueueState{.size = size_,
                        .ready = true,
                        .desc_addr = desc_addr(),
                        .avail_addr = avail_addr(),
                        .used_addr = used_addr()};
}

uint64_t FakeDriver::Alloc(uint64_t len, uint8_t fill) {
  const uint64_t addr = next_alloc_;
  next_alloc_ = (next_alloc_ + len + 15) & ~uint64_t{15};
  (void)memory_.Fill(addr, len, fill);
  return addr;
}

Status FakeDriver::WriteBytes(uint64_t addr, std::span<const uint8_t> bytes) {
  return memory_.Write(addr, bytes);
}

Result<std::vector<uint8_t>> FakeDriver::ReadBytes(uint64_t addr, uint64_t len) {
  std::vector<uint8_t> bytes(len);
  TRY(memory_.Read(addr, bytes));
  return bytes;
}

Status FakeDriver::WriteDescriptor(uint16_t index, uint64_t addr, uint32_t len, uint16_t flags,
                                   uint16_t next, uint64_t table_addr) {
  const uint64_t at = (table_addr != 0 ? table_addr : desc_addr()) + kDescSize * index;
  TRY(memory_.WriteObject(at, addr));
  TRY(memory_.WriteObject(at + 8, len));
  TRY(memory_.WriteObject(at + 12, flags));
  TRY(memory_.WriteObject(at + 14, next));
  return Ok();
}

Result<uint16_t> FakeDriver::AddChain(std::span<const Segment> segments) {
  if (segments.empty()) return Fail(ErrorCode::kInvalidArgument, "empty chain");
  const uint16_t head = next_desc_;
  for (size_t i = 0; i < segments.size(); ++i) {
    const uint16_t index = static_cast<uint16_t>((head + i) % size_);
    const bool last = i + 1 == segments.size();
    const uint16_t flags =
        static_cast<uint16_t>((last ? 0 : kDescNext) | (segments[i].writable ? kDescWrite : 0));
    TRY(WriteDescriptor(index, segments[i].addr, segments[i].len, flags,
                        static_cast<uint16_t>((index + 1) % size_)));
  }
  next_desc_ = static_cast<uint16_t>((head + segments.size()) % size_);
  TRY(Publish(head));
  return head;
}

Result<uint16_t> FakeDriver::AddIndirectChain(std::span<const Segment> segments) {
  const uint64_t table = Alloc(kDescSize * segments.size());
  for (size_t i = 0; i < segments.size(); ++i) {
    const bool last = i + 1 == segments.size();
    const uint16_t flags =
        static_cast<uint16_t>((last ? 0 : kDescNext) | (segments[i].writable ? kDescWrite : 0));
    TRY(WriteDescriptor(static_cast<uint16_t>(i), segments[i].addr, segments[i].len, flags,
                        static_cast<uint16_t>(i + 1), table));
  }
  const uint16_t head = next_desc_;
  TRY(WriteDescriptor(head, table, static_cast<uint32_t>(kDescSize * segments.size()),
                      kDescIndirect, 0));
  next_desc_ = static_cast<uint16_t>((head + 1) % size_);
  TRY(Publish(head));
  return head;
}

Status FakeDriver::Publish(uint16_t head) {
  TRY(memory_.WriteObject(avail_addr() + 4 + 2 * static_cast<uint64_t>(avail_idx_ % size_), head));
  return SetAvailIdx(static_cast<uint16_t>(avail_idx_ + 1));
}

Status FakeDriver::SetAvailIdx(uint16_t idx) {
  avail_idx_ = idx;
  return memory_.WriteObject(avail_addr() + 2, idx);
}

Status FakeDriver::SetAvailFlags(uint16_t flags) {
  return memory_.WriteObject(avail_addr(), flags);
}

Result<uint16_t> FakeDriver::UsedIdx() { return memory_.ReadObject<uint16_t>(used_addr() + 2); }

Result<UsedElement> FakeDriver::Used(uint16_t ring_index) {
  return memory_.ReadObject<UsedElement>(used_addr() + 4 +
                                         8 * static_cast<uint64_t>(ring_index % size_));
}

Status MemoryDisk::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckDiskRange(bytes_.size(), offset, out.size()));
  std::copy_n(bytes_.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
  return Ok();
}

Status MemoryDisk::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  if (read_only_) return Fail(ErrorCode::kPermissionDenied, "disk is read-only");
  TRY(CheckDiskRange(bytes_.size(), offset, data.size()));
  std::copy(data.begin(), data.end(), bytes_.begin() + static_cast<ptrdiff_t>(offset));
  return Ok();
}

}  // namespace tartarus::vmm::virtio::testing

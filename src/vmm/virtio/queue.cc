// tartarus-vmm (Tartarus's KVM microVM monitor): split virtqueues (virtio 1.1, section 2.7).
#include "vmm/virtio/queue.h"

#include <atomic>
#include <string>

namespace tartarus::vmm::virtio {
namespace {

// The in-memory layout of a descriptor (little-endian, as x86 and the spec are).
struct RawDescriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(RawDescriptor) == kDescSize);

Error ChainError(uint16_t head, std::string what) {
  return Error{ErrorCode::kInvalidArgument,
               "descriptor chain at head " + std::to_string(head) + ": " + std::move(what)};
}

uint64_t AvailRingBytes(uint16_t size) { return 6 + 2 * uint64_t{size}; }
uint64_t UsedRingBytes(uint16_t size) { return 6 + 8 * uint64_t{size}; }

}  // namespace

uint64_t DescriptorChain::ReadableBytes() const {
  uint64_t total = 0;
  for (const Buffer& buffer : readable) total += buffer.len;
  return total;
}

uint64_t DescriptorChain::WritableBytes() const {
  uint64_t total = 0;
  for (const Buffer& buffer : writable) total += buffer.len;
  return total;
}

Status Virtqueue::Validate(GuestMemory& memory, uint16_t max_size) const {
  const uint16_t size = state_.size;
  if (size == 0 || size > max_size || (size & (size - 1)) != 0) {
    return Fail(ErrorCode::kInvalidArgument, "queue size " + std::to_string(size) +
                                                 " is not a power of two in [1, " +
                                                 std::to_string(max_size) + "]");
  }
  if (state_.desc_addr % 16 != 0 || state_.avail_addr % 2 != 0 || state_.used_addr % 4 != 0) {
    return Fail(ErrorCode::kInvalidArgument, "queue ring addresses are misaligned");
  }
  if (auto ok = memory.Slice(state_.desc_addr, kDescSize * size); !ok) {
    return Fail(ok.error().Context("descriptor table"));
  }
  if (auto ok = memory.Slice(state_.avail_addr, AvailRingBytes(size)); !ok) {
    return Fail(ok.error().Context("available ring"));
  }
  if (auto ok = memory.Slice(state_.used_addr, UsedRingBytes(size)); !ok) {
    return Fail(ok.error().Context("used ring"));
  }
  return Ok();
}

Result<std::optional<DescriptorChain>> Virtqueue::Pop(GuestMemory& memory) {
  const uint16_t size = state_.size;
  if (size == 0) return Fail(ErrorCode::kFailedPrecondition, "queue is not configured");
  const uint16_t avail_idx = TRY(memory.ReadObject<uint16_t>(state_.avail_addr + 2));
  const uint16_t pending = static_cast<uint16_t>(avail_idx - state_.next_avail);
  if (pending == 0) return std::optional<DescriptorChain>();
  if (pending > size) {
    return Fail(ErrorCode::kInvalidArgument, "available index moved " + std::to_string(pending) +
                                                 " entries ahead, more than the queue size " +
                                                 std::to_string(size));
  }
  // The ring entry must be read after the index that published it.
  std::atomic_thread_fence(std::memory_order_acquire);
  const uint16_t head = TRY(memory.ReadObject<uint16_t>(
      state_.avail_addr + 4 + 2 * static_cast<uint64_t>(state_.next_avail % size)));
  DescriptorChain chain;
  chain.head = head;
  TRY(ReadChain(memory, head, chain));
  ++state_.next_avail;
  return std::optional<DescriptorChain>(std::move(chain));
}

Status Virtqueue::ReadChain(GuestMemory& memory, uint16_t head, DescriptorChain& chain) const {
  // Each descriptor is copied out of guest memory once and checked on the copy, so a guest
  // rewriting the table meanwhile cannot change what was checked.
  uint64_t table = state_.desc_addr;
  uint32_t table_entries = state_.size;
  uint32_t index = head;
  bool indirect = false;
  // A chain may not be longer than the queue (2.7.5.2); this bound also ends loops.
  uint32_t visited = 0;
  for (;;) {
    if (index >= table_entries) {
      return Fail(ChainError(head, "descriptor index " + std::to_string(index) +
                                       " is outside a table of " + std::to_string(table_entries)));
    }
    if (++visited > state_.size) {
      return Fail(ChainError(head, "chain is longer than the queue size " +
                                       std::to_string(state_.size) + " (or loops)"));
    }
    const RawDescriptor desc = TRY(memory.ReadObject<RawDescriptor>(table + kDescSize * index));
    if (desc.flags & kDescIndirect) {
      if (indirect) return Fail(ChainError(head, "indirect descriptor inside an indirect table"));
      if (desc.flags & kDescNext) {
        return Fail(ChainError(head, "indirect descriptor also has the NEXT flag"));
      }
      if (desc.len == 0 || desc.len % kDescSize != 0 || desc.len / kDescSize > state_.size) {
        return Fail(ChainError(head, "indirect table length " + std::to_string(desc.len) +
                                         " is not a positive multiple of 16 of at most the queue "
                                         "size entries"));
      }
      if (desc.addr % 16 != 0) return Fail(ChainError(head, "indirect table is misaligned"));
      if (auto ok = memory.Slice(desc.addr, desc.len); !ok) {
        return Fail(ChainError(head, "indirect table: " + ok.error().message));
      }
      table = desc.addr;
      table_entries = desc.len / kDescSize;
      index = 0;
      indirect = true;
      visited = 0;  // the table's own entries count against the bound from here
      continue;
    }
    if (desc.len == 0) return Fail(ChainError(head, "zero-length descriptor"));
    if (auto ok = memory.Slice(desc.addr, desc.len); !ok) {
      return Fail(ChainError(head, "buffer: " + ok.error().message));
    }
    const bool writable = (desc.flags & kDescWrite) != 0;
    if (!writable && !chain.writable.empty()) {
      return Fail(ChainError(head, "device-readable descriptor after a device-writable one"));
    }
    (writable ? chain.writable : chain.readable)
        .push_back(Buffer{.addr = desc.addr, .len = desc.len, .device_writable = writable});
    if (!(desc.flags & kDescNext)) return Ok();
    index = desc.next;
  }
}

Status Virtqueue::PushUsed(GuestMemory& memory, uint16_t head, uint32_t written) {
  const uint16_t size = state_.size;
  if (size == 0) return Fail(ErrorCode::kFailedPrecondition, "queue is not configured");
  struct UsedElement {
    uint32_t id;
    uint32_t len;
  };
  const uint64_t slot = state_.used_addr + 4 + 8 * static_cast<uint64_t>(state_.next_used % size);
  TRY(memory.WriteObject(slot, UsedElement{head, written}));
  // The element must be visible before the index that publishes it (2.7.8.2).
  std::atomic_thread_fence(std::memory_order_release);
  ++state_.next_used;
  TRY(memory.WriteObject<uint16_t>(state_.used_addr + 2, state_.next_used));
  return Ok();
}

Result<bool> Virtqueue::InterruptWanted(const GuestMemory& memory) const {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t flags = TRY(memory.ReadObject<uint16_t>(state_.avail_addr));
  return (flags & kAvailNoInterrupt) == 0;
}

uint64_t BufferCursor::Remaining() const {
  uint64_t total = 0;
  for (size_t i = index_; i < buffers_.size(); ++i) total += buffers_[i].len;
  return total - offset_;
}

Status BufferCursor::Read(std::span<uint8_t> out) {
  size_t done = 0;
  return ForEach(out.size(), [&](std::span<uint8_t> bytes) -> Status {
    std::copy(bytes.begin(), bytes.end(), out.begin() + static_cast<ptrdiff_t>(done));
    done += bytes.size();
    return Ok();
  });
}

Status BufferCursor::Write(std::span<const uint8_t> data) {
  size_t done = 0;
  return ForEach(data.size(), [&](std::span<uint8_t> bytes) -> Status {
    std::copy_n(data.begin() + static_cast<ptrdiff_t>(done), bytes.size(), bytes.begin());
    done += bytes.size();
    return Ok();
  });
}

}  // namespace tartarus::vmm::virtio

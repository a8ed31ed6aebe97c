// tartarus-vmm (Tartarus's KVM microVM monitor): split virtqueues (virtio 1.1, section 2.7).
// The descriptor table, available ring and used ring live in guest memory and are read only
// through GuestMemory. Everything the guest wrote there is outside input: a malformed chain is
// an Error (the transport then puts the device in its DEVICE_NEEDS_RESET state), never a crash
// and never an unbounded loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/result.h"
#include "vmm/guest_memory.h"

namespace tartarus::vmm::virtio {

// Descriptor flags (2.7.5).
inline constexpr uint16_t kDescNext = 1;
inline constexpr uint16_t kDescWrite = 2;
inline constexpr uint16_t kDescIndirect = 4;
// Available ring flag: the driver asks for no used-buffer interrupts (2.7.7).
inline constexpr uint16_t kAvailNoInterrupt = 1;

inline constexpr uint64_t kDescSize = 16;
inline constexpr uint16_t kMaxQueueSize = 256;  // what every device offers as QueueNumMax

// One queue's configuration and progress: plain data, so a snapshot can save it as is.
struct VirtqueueState {
  uint16_t size = 0;  // QueueNum, set by the driver
  bool ready = false;
  uint64_t desc_addr = 0;   // descriptor table
  uint64_t avail_addr = 0;  // "driver area"
  uint64_t used_addr = 0;   // "device area"
  uint16_t next_avail = 0;  // the next available-ring index the device will read
  uint16_t next_used = 0;   // the used-ring index the device will write next
};

// One guest buffer of a chain: already checked to lie inside one guest memory region.
struct Buffer {
  uint64_t addr = 0;
  uint32_t len = 0;
  bool device_writable = false;
};

// A descriptor chain taken from the available ring: device-readable buffers first, then
// device-writable ones (the order is checked).
struct DescriptorChain {
  uint16_t head = 0;  // returned in the used ring
  std::vector<Buffer> readable;
  std::vector<Buffer> writable;
  uint64_t ReadableBytes() const;
  uint64_t WritableBytes() const;
};

class Virtqueue {
 public:
  Virtqueue() = default;
  explicit Virtqueue(VirtqueueState state) : state_(state) {}

  VirtqueueState& state() { return state_; }
  const VirtqueueState& state() const { return state_; }

  // Checks the driver's configuration before the queue is used: a power-of-two size no larger
  // than max_size, aligned ring addresses, and rings that lie inside guest memory.
  Status Validate(GuestMemory& memory, uint16_t max_size) const;

  // The next available chain, std::nullopt when the driver has offered nothing new, or an
  // Error naming what was malformed.
  Result<std::optional<DescriptorChain>> Pop(GuestMemory& memory);

  // Returns a chain to the driver with the number of bytes the device wrote into it.
  Status PushUsed(GuestMemory& memory, uint16_t head, uint32_t written);

  // Whether the driver wants an interrupt for used buffers (VIRTQ_AVAIL_F_NO_INTERRUPT).
  Result<bool> InterruptWanted(const GuestMemory& memory) const;

 private:
  Status ReadChain(GuestMemory& memory, uint16_t head, DescriptorChain& chain) const;

  VirtqueueState state_;
};

// Walks a list of guest buffers as one byte stream: the readable part of a chain (requests
// from the driver) or its writable part (answers to it). Buffers were range-checked by Pop, so
// failures here mean the stream is shorter than asked for.
class BufferCursor {
 public:
  BufferCursor(GuestMemory& memory, std::span<const Buffer> buffers)
      : memory_(memory), buffers_(buffers) {}
  // Copies exactly out.size() bytes out of the stream, or fails.
  Status Read(std::span<uint8_t> out);
  // Copies exactly data.size() bytes into the stream, or fails.
  Status Write(std::span<const uint8_t> data);
  // Calls fn(host_bytes) for the next length bytes, piece by piece (no copy), or fails when
  // fewer remain. fn returns Status.
  template <class Fn>
  Status ForEach(uint64_t length, Fn&& fn);
  uint64_t Remaining() const;

 private:
  GuestMemory& memory_;
  std::span<const Buffer> buffers_;
  size_t index_ = 0;
  uint64_t offset_ = 0;  // within buffers_[index_]
};

template <class Fn>
Status BufferCursor::ForEach(uint64_t length, Fn&& fn) {
  if (length > Remaining()) {
    return Fail(ErrorCode::kInvalidArgument, "descriptor chain is shorter than the request");
  }
  while (length > 0) {
    const Buffer& buffer = buffers_[index_];
    const uint64_t piece = std::min<uint64_t>(length, buffer.len - offset_);
    if (piece > 0) {
      std::span<uint8_t> bytes = TRY(memory_.Slice(buffer.addr + offset_, piece));
      TRY(fn(bytes));
    }
    length -= piece;
    offset_ += piece;
    if (offset_ == buffer.len) {
      ++index_;
      offset_ = 0;
    }
  }
  return Ok();
}

}  // namespace tartarus::vmm::virtio

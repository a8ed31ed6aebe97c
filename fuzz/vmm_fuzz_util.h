// Shared by the tartarus-vmm virtio fuzz targets (fuzz/vmm_*_fuzz.cc): lays fuzzer bytes out
// as guest memory holding one split queue, the way a hostile guest driver could.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "vmm/guest_memory.h"
#include "vmm/virtio/queue.h"

namespace tartarus::vmm::virtio::fuzz {

#define VMM_FUZZ_CHECK(cond)       \
  do {                             \
    if (!(cond)) __builtin_trap(); \
  } while (0)

inline constexpr uint64_t kFuzzMemorySize = 16 * 1024;

// Byte 0 picks the queue size (1 to 16) and the next-available index; the rest is copied
// into guest memory from address 0: the descriptor table is at 0, the available ring at 0x100,
// the used ring at 0x200, and buffers anywhere.
inline GuestMemory& FuzzMemory() {
  static GuestMemory memory = std::move(GuestMemory::CreateAnonymous(kFuzzMemorySize).value());
  return memory;
}

inline Virtqueue QueueFromInput(const uint8_t* data, size_t size) {
  GuestMemory& memory = FuzzMemory();
  (void)memory.Fill(0, kFuzzMemorySize, 0);
  VirtqueueState state{
      .size = 16, .ready = true, .desc_addr = 0, .avail_addr = 0x100, .used_addr = 0x200};
  if (size > 0) {
    state.size = static_cast<uint16_t>(1u << (data[0] % 5));
    state.next_avail = static_cast<uint16_t>(data[0] >> 5);
    ++data;
    --size;
  }
  state.next_used = state.next_avail;
  const size_t copied = std::min<size_t>(size, kFuzzMemorySize);
  (void)memory.Write(0, std::span(data, copied));
  return Virtqueue(state);
}

// Every buffer of a popped chain must lie inside guest memory and be non-empty.
inline void CheckChain(GuestMemory& memory, const DescriptorChain& chain) {
  for (const auto* list : {&chain.readable, &chain.writable}) {
    for (const Buffer& buffer : *list) {
      VMM_FUZZ_CHECK(buffer.len > 0);
      VMM_FUZZ_CHECK(memory.Slice(buffer.addr, buffer.len).has_value());
    }
  }
}

}  // namespace tartarus::vmm::virtio::fuzz

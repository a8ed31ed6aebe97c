// libFuzzer target for tartarus-vmm's virtio-rng request handling (src/vmm/virtio/rng.h):
// the device fills at most the per-request cap for each chain it uses, and ends.
#include "vmm/virtio/rng.h"
#include "vmm_fuzz_util.h"

using namespace tartarus::vmm::virtio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tartarus::vmm::GuestMemory& memory = fuzz::FuzzMemory();
  Virtqueue queue = fuzz::QueueFromInput(data, size);
  // A fixed source: the fuzzer explores parsing, not the kernel's entropy. (Used lengths are
  // not read back from the used ring: a hostile guest may point buffers at it.)
  uint64_t filled = 0;
  RngDevice device([&filled](std::span<uint8_t> out) {
    std::fill(out.begin(), out.end(), 0xa5);
    filled += out.size();
    return tartarus::Ok();
  });
  const uint16_t used_before = queue.state().next_used;
  auto used = device.ProcessQueue(0, queue, memory);
  const uint16_t chains = static_cast<uint16_t>(queue.state().next_used - used_before);
  VMM_FUZZ_CHECK(chains <= queue.state().size);
  if (used && !*used) VMM_FUZZ_CHECK(chains == 0 && filled == 0);
  // Every used chain got at most the per-request cap.
  VMM_FUZZ_CHECK(filled <= (uint64_t{chains} + (used ? 0 : 1)) * RngDevice::kMaxBytesPerRequest);
  return 0;
}

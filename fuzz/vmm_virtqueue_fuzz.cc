// libFuzzer target for tartarus-vmm's split virtqueue (src/vmm/virtio/queue.h): descriptor
// tables, available rings and indirect tables a hostile guest could write. Pop must end (an
// Error or a chain), every buffer it returns must lie in guest memory, and the readable/
// writable byte streams must read and write exactly what they hold.
#include <vector>

#include "vmm_fuzz_util.h"

using namespace tartarus::vmm::virtio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tartarus::vmm::GuestMemory& memory = fuzz::FuzzMemory();
  Virtqueue queue = fuzz::QueueFromInput(data, size);
  for (int i = 0; i < 32; ++i) {
    auto chain = queue.Pop(memory);
    if (!chain || !chain->has_value()) break;
    fuzz::CheckChain(memory, **chain);
    // Bounded copies: buffers may overlap and be large.
    BufferCursor reader(memory, (*chain)->readable);
    std::vector<uint8_t> bytes(std::min<uint64_t>(reader.Remaining(), 4096));
    VMM_FUZZ_CHECK(reader.Read(bytes).has_value());
    BufferCursor writer(memory, (*chain)->writable);
    const uint64_t room = writer.Remaining();
    bytes.assign(std::min<uint64_t>(room, 4096), 0x5a);
    VMM_FUZZ_CHECK(writer.Write(bytes).has_value());
    VMM_FUZZ_CHECK(writer.Remaining() == room - bytes.size());
    VMM_FUZZ_CHECK(queue.PushUsed(memory, (*chain)->head, static_cast<uint32_t>(bytes.size())));
  }
  return 0;
}

// libFuzzer target for tartarus-vmm's virtio-mmio transport (src/vmm/virtio/mmio.h): a hostile
// driver's register accesses, in any order and width, against an rng device whose queue
// memory is also fuzzer-chosen. The state machine must hold its invariants: no DRIVER_OK
// without FEATURES_OK, the interrupt line follows InterruptStatus, and nothing crashes.
#include <cstring>
#include <memory>

#include "vmm/virtio/mmio.h"
#include "vmm/virtio/rng.h"
#include "vmm/virtio/virtio_testing.h"
#include "vmm_fuzz_util.h"

using namespace tartarus::vmm::virtio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tartarus::vmm::GuestMemory& memory = fuzz::FuzzMemory();
  (void)memory.Fill(0, fuzz::kFuzzMemorySize, 0);
  testing::FakeIrq irq;
  MmioTransport transport(std::make_unique<RngDevice>([](std::span<uint8_t> out) {
                            std::fill(out.begin(), out.end(), 0x5a);
                            return tartarus::Ok();
                          }),
                          memory, &irq);
  // Each operation: 1 byte kind/width, 1 byte register (offset / 4), 4 bytes value.
  // Kind 0xff copies the next 64 bytes into guest memory at value % memory size.
  size_t at = 0;
  while (at + 6 <= size) {
    const uint8_t kind = data[at];
    const uint64_t offset = uint64_t{data[at + 1]} * 4 + (kind & 0x40 ? kind & 3 : 0);
    uint32_t value;
    std::memcpy(&value, data + at + 2, 4);
    at += 6;
    if (kind == 0xff) {
      const size_t length = std::min<size_t>(64, size - at);
      (void)memory.Write(value % (fuzz::kFuzzMemorySize - 64), std::span(data + at, length));
      at += length;
      continue;
    }
    const size_t width = size_t{1} << ((kind >> 1) & 3);  // 1, 2, 4 or 8 bytes
    uint8_t bytes[8] = {};
    std::memcpy(bytes, &value, 4);
    if (kind & 1) {
      transport.Write(offset, std::span<const uint8_t>(bytes, width));
    } else {
      transport.Read(offset, std::span<uint8_t>(bytes, width));
    }
    const MmioTransportState state = transport.State();
    if (state.status & kStatusDriverOk) VMM_FUZZ_CHECK(state.status & kStatusFeaturesOk);
    VMM_FUZZ_CHECK(irq.level == (state.interrupt_status != 0));
    if (state.status & kStatusNeedsReset) VMM_FUZZ_CHECK(transport.device_error().has_value());
  }
  return 0;
}

// libFuzzer target for tartarus-vmm's virtio-blk request parsing (src/vmm/virtio/block.h):
// chains and request headers a hostile guest could write, served against a 8 KiB in-memory
// disk. Processing must end with used chains or an Error, and disk accesses stay in bounds
// (MemoryDisk checks them; a read-only disk must never change).
#include <memory>
#include <vector>

#include "vmm/virtio/block.h"
#include "vmm/virtio/virtio_testing.h"
#include "vmm_fuzz_util.h"

using namespace tartarus::vmm::virtio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tartarus::vmm::GuestMemory& memory = fuzz::FuzzMemory();
  Virtqueue queue = fuzz::QueueFromInput(data, size);
  const bool read_only = size > 0 && (data[0] & 0x10);
  std::vector<uint8_t> image(8 * 1024, 0x33);
  auto disk = std::make_unique<testing::MemoryDisk>(image, read_only);
  testing::MemoryDisk* raw = disk.get();
  BlockDevice device(std::move(disk), "fuzz", read_only);
  auto used = device.ProcessQueue(0, queue, memory);
  (void)used;
  if (read_only) VMM_FUZZ_CHECK(raw->bytes() == image);
  return 0;
}

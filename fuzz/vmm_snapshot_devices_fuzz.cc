// libFuzzer target for Persephone's device state blobs (src/vmm/snapshot/devices.h) and the
// virtio-mmio transport's Restore (src/vmm/virtio/mmio.h): what a snapshot file carries for
// its devices is outside input. The first byte picks how the rest is used:
//   0: raw bytes as a serial blob and as a virtio blob;
//   1: a valid virtio blob of a fuzzer-chosen kind, then damaged by edits (3 bytes each: u8
//      position, u8 operation, u8 value) so mutations reach the fields behind the header.
// Whatever a decoder accepts must re-encode to the same bytes; an accepted virtio-rng blob is
// restored into a transport over guest memory and notified once.
#include <cstring>
#include <vector>

#include "vmm/snapshot/devices.h"
#include "vmm/virtio/mmio.h"
#include "vmm/virtio/rng.h"
#include "vmm_fuzz_util.h"

using namespace tartarus::vmm;
using namespace tartarus::vmm::snapshot;

namespace {

std::vector<uint8_t> Structured(const uint8_t* data, size_t size) {
  VirtioDeviceSnapshot device;
  const uint8_t kind = size > 0 ? data[0] : 0;
  if (size > 0) {
    ++data;
    --size;
  }
  virtio::VirtqueueState queue{.size = 8,
                               .ready = (kind & 4) != 0,
                               .desc_addr = 0,
                               .avail_addr = 0x100,
                               .used_addr = 0x200,
                               .next_avail = 1,
                               .next_used = 1};
  device.transport.status = (kind & 4) ? 0xf : 0;
  device.transport.driver_features = (kind & 4) ? virtio::kFeatureVersion1 : 0;
  device.slot = kind >> 4;
  switch (kind % 3) {
    case 0:
      device.device_id = virtio::kDeviceIdRng;
      device.transport.queues = {queue};
      break;
    case 1:
      device.device_id = virtio::kDeviceIdBlock;
      device.transport.queues = {queue};
      device.drive_id = "rootfs";
      device.drive_path = "/images/root.ext4";
      device.lethe = (kind & 8) != 0;
      device.disk_bytes = 200 * 4096;
      if (device.lethe) device.lethe_state = {.block_size = 4096, .written = {5, 0, 0, 1}};
      break;
    default:
      device.device_id = virtio::kDeviceIdVsock;
      device.transport.queues = {queue, queue, {}};
      device.guest_cid = 3;
      device.uds_path = "/run/v.sock";
      break;
  }
  auto encoded = EncodeVirtioBlob(device);
  VMM_FUZZ_CHECK(encoded.has_value());
  std::vector<uint8_t> bytes = std::move(*encoded);
  while (size >= 3 && !bytes.empty()) {
    const size_t at = data[0] % bytes.size();
    switch (data[1] % 3) {
      case 0:
        bytes[at] = data[2];
        break;
      case 1:
        bytes.resize(at);
        break;
      default:
        bytes.insert(bytes.begin() + static_cast<ptrdiff_t>(at), data[2]);
        break;
    }
    data += 3;
    size -= 3;
  }
  return bytes;
}

void RestoreRng(const VirtioDeviceSnapshot& device) {
  GuestMemory& memory = virtio::fuzz::FuzzMemory();
  (void)memory.Fill(0, virtio::fuzz::kFuzzMemorySize, 0);
  virtio::MmioTransport transport(std::make_unique<virtio::RngDevice>([](std::span<uint8_t> out) {
                                    std::fill(out.begin(), out.end(), 0x5a);
                                    return tartarus::Ok();
                                  }),
                                  memory, nullptr);
  if (!transport.Restore(device.transport)) {
    VMM_FUZZ_CHECK(transport.State().status == 0);  // a refused state changes nothing
    return;
  }
  const uint32_t queue = 0;
  transport.Write(virtio::kRegQueueNotify,
                  std::span(reinterpret_cast<const uint8_t*>(&queue), sizeof(queue)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> bytes;
  if (data[0] % 2 == 1) {
    bytes = Structured(data + 1, size - 1);
  } else {
    bytes.assign(data + 1, data + size);
    if (auto uart = DecodeSerialBlob(bytes)) {
      VMM_FUZZ_CHECK(EncodeSerialBlob(*uart) == bytes);
    } else {
      VMM_FUZZ_CHECK(!uart.error().message.empty());
    }
  }
  auto device = DecodeVirtioBlob(bytes);
  if (!device) {
    VMM_FUZZ_CHECK(!device.error().message.empty());
    return 0;
  }
  auto again = EncodeVirtioBlob(*device);
  VMM_FUZZ_CHECK(again.has_value() && *again == bytes);
  if (device->device_id == virtio::kDeviceIdRng) RestoreRng(*device);
  return 0;
}

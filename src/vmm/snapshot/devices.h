// Persephone (tartarus-vmm snapshots): device state blobs.
// Each device model's state travels in the state file as an opaque blob keyed by the device's
// id (format.h). This is what is inside those blobs: the serial port's registers, and for
// every virtio-mmio device its slot, transport (status, features, queues), what the device is
// (virtio-blk with its drive and Lethe bitmap, virtio-rng, virtio-vsock with its CID and
// socket path). A blob is outside input: the decoders refuse anything malformed with an Error
// naming the device and the field, before any of it reaches a device model.
//
// Blob layout (little-endian): u32 kind, u32 version, then the kind's fields in a fixed order;
// strings and arrays are a u32 count then the items; no trailing bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/serial.h"
#include "vmm/virtio/disk.h"
#include "vmm/virtio/mmio.h"

namespace tartarus::vmm::snapshot {

inline constexpr uint32_t kDeviceBlobVersion = 1;
inline constexpr uint32_t kBlobKindSerial = 1;
inline constexpr uint32_t kBlobKindVirtio = 2;
inline constexpr std::string_view kSerialDeviceId = "serial";

// Bounds the decoders enforce.
inline constexpr size_t kMaxBlobPathBytes = 4096;
inline constexpr size_t kMaxDriveIdBytes = 56;  // "blk." + id fits a 64-byte device id
inline constexpr uint64_t kMaxDiskBytes = uint64_t{1} << 44;  // 16 TiB

// What sits behind one virtio-mmio transport.
struct VirtioDeviceSnapshot {
  uint32_t slot = 0;       // MmioSlot index: base address and IRQ follow from it
  uint32_t device_id = 0;  // virtio device ID: kDeviceIdBlock, kDeviceIdRng or kDeviceIdVsock
  virtio::MmioTransportState transport;
  // virtio-blk
  std::string drive_id;
  std::string drive_path;
  bool read_only = false;
  bool is_root = false;
  bool lethe = false;
  uint64_t disk_bytes = 0;         // the image's size when saved (must match at load)
  virtio::LetheState lethe_state;  // lethe only; its blocks are in a file beside the state file
  // virtio-vsock
  uint32_t guest_cid = 0;
  std::string uds_path;
};

// The key a virtio device's blob has in the state file: "blk.<drive id>", "rng", "vsock".
Result<std::string> VirtioDeviceKey(const VirtioDeviceSnapshot& device);

std::vector<uint8_t> EncodeSerialBlob(const UartState& state);
Result<UartState> DecodeSerialBlob(std::span<const uint8_t> blob);

Result<std::vector<uint8_t>> EncodeVirtioBlob(const VirtioDeviceSnapshot& device);
Result<VirtioDeviceSnapshot> DecodeVirtioBlob(std::span<const uint8_t> blob);

}  // namespace tartarus::vmm::snapshot

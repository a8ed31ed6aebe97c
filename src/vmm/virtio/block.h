// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-blk (virtio 1.1, section 5.2).
// One request queue; IN, OUT, FLUSH and GET_ID over a Disk, capacity in config space, and the
// RO feature for read-only disks. Data moves straight between the disk and guest buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "vmm/virtio/device.h"
#include "vmm/virtio/disk.h"

namespace tartarus::vmm::virtio {

inline constexpr uint64_t kBlkFeatureReadOnly = 1ULL << 5;  // VIRTIO_BLK_F_RO
inline constexpr uint64_t kBlkFeatureFlush = 1ULL << 9;     // VIRTIO_BLK_F_FLUSH

inline constexpr uint32_t kBlkTypeIn = 0;
inline constexpr uint32_t kBlkTypeOut = 1;
inline constexpr uint32_t kBlkTypeFlush = 4;
inline constexpr uint32_t kBlkTypeGetId = 8;

inline constexpr uint8_t kBlkStatusOk = 0;
inline constexpr uint8_t kBlkStatusIoErr = 1;
inline constexpr uint8_t kBlkStatusUnsupported = 2;

inline constexpr uint64_t kSectorSize = 512;
inline constexpr size_t kBlkIdBytes = 20;

// The request header every chain starts with (device-readable).
struct BlkRequestHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(BlkRequestHeader) == 16);

class BlockDevice : public VirtioDevice {
 public:
  // id is returned by GET_ID (at most 20 bytes are used). read_only also holds for a writable
  // disk (the drive was attached read-only).
  BlockDevice(std::unique_ptr<Disk> disk, std::string id, bool read_only);

  std::string_view Name() const override { return "virtio-blk"; }
  uint32_t DeviceId() const override { return kDeviceIdBlock; }
  uint64_t Features() const override;
  size_t QueueCount() const override { return 1; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;
  Result<bool> ProcessQueue(size_t index, Virtqueue& queue, GuestMemory& memory) override;

  uint64_t capacity_sectors() const { return disk_->Size() / kSectorSize; }
  Disk& disk() { return *disk_; }

 private:
  // Serves one chain; returns the bytes written into it (data and status byte).
  Result<uint32_t> Serve(GuestMemory& memory, const DescriptorChain& chain);

  std::unique_ptr<Disk> disk_;
  std::string id_;
  bool read_only_;
};

}  // namespace tartarus::vmm::virtio

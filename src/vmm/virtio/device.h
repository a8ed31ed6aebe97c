// tartarus-vmm (Tartarus's KVM microVM monitor): the virtio device interface.
// A VirtioDevice is what a transport (virtio-mmio here) exposes to the guest: an ID, feature
// bits, a config space and queues. The transport owns the queues and the driver state machine;
// the device only turns available chains into used ones.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "common/result.h"
#include "vmm/guest_memory.h"
#include "vmm/virtio/queue.h"

namespace tartarus::vmm::virtio {

// Device IDs (virtio 1.1, section 5).
inline constexpr uint32_t kDeviceIdBlock = 2;
inline constexpr uint32_t kDeviceIdRng = 4;
inline constexpr uint32_t kDeviceIdVsock = 19;

// Reserved feature bits (section 6).
inline constexpr uint64_t kFeatureIndirectDesc = 1ULL << 28;  // VIRTIO_RING_F_INDIRECT_DESC
inline constexpr uint64_t kFeatureEventIdx = 1ULL << 29;  // VIRTIO_RING_F_EVENT_IDX (not offered)
inline constexpr uint64_t kFeatureVersion1 = 1ULL << 32;  // VIRTIO_F_VERSION_1

// Every device here offers these: modern only, indirect descriptors supported.
inline constexpr uint64_t kCommonFeatures = kFeatureVersion1 | kFeatureIndirectDesc;

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;
  virtual std::string_view Name() const = 0;
  virtual uint32_t DeviceId() const = 0;
  virtual uint64_t Features() const = 0;  // offered to the driver
  virtual size_t QueueCount() const = 0;
  virtual uint16_t MaxQueueSize() const { return kMaxQueueSize; }

  // Device config space; bytes past its end read as zero and writes to them are ignored.
  virtual void ReadConfig(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void WriteConfig(uint64_t /*offset*/, std::span<const uint8_t> /*data*/) {}

  // Takes every available chain of queue index and returns it used. Returns whether any chain
  // was used (the transport then interrupts the driver). An Error means the driver broke the
  // protocol (malformed chain or request): the transport stops the device until reset.
  virtual Result<bool> ProcessQueue(size_t index, Virtqueue& queue, GuestMemory& memory) = 0;

  // The driver wrote 0 to Status: forget everything negotiated.
  virtual void Reset() {}
};

// Copies the little-endian bytes of a config struct out, zero past its end.
void ReadConfigBytes(std::span<const uint8_t> config, uint64_t offset, std::span<uint8_t> out);

}  // namespace tartarus::vmm::virtio

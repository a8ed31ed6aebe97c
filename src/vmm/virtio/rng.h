// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-rng, the entropy device (virtio 1.1,
// section 5.4). One queue of device-writable buffers, filled from the host's getrandom().
#pragma once

#include <functional>
#include <span>

#include "vmm/virtio/device.h"

namespace tartarus::vmm::virtio {

class RngDevice : public VirtioDevice {
 public:
  // At most this many bytes per request: the spec lets the device fill less, and it bounds the
  // time one notification keeps a vCPU.
  static constexpr uint64_t kMaxBytesPerRequest = 64 * 1024;
  using Source = std::function<Status(std::span<uint8_t>)>;

  // source fills a buffer with entropy; the default is getrandom(2).
  explicit RngDevice(Source source = nullptr);

  std::string_view Name() const override { return "virtio-rng"; }
  uint32_t DeviceId() const override { return kDeviceIdRng; }
  uint64_t Features() const override { return kCommonFeatures; }
  size_t QueueCount() const override { return 1; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;
  Result<bool> ProcessQueue(size_t index, Virtqueue& queue, GuestMemory& memory) override;

 private:
  Source source_;
};

// getrandom(2) until out is full.
Status FillFromGetrandom(std::span<uint8_t> out);

}  // namespace tartarus::vmm::virtio

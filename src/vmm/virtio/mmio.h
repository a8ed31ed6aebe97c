// tartarus-vmm (Tartarus's KVM microVM monitor): the virtio-mmio transport (virtio 1.1, 4.2).
// A BusDevice on the MMIO bus holding one VirtioDevice: the version 2 ("modern") register
// file, the driver status state machine, queue configuration, and the interrupt line (level:
// asserted while InterruptStatus is non-zero). Legacy (version 1) devices are not offered.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/bus.h"
#include "vmm/guest_memory.h"
#include "vmm/virtio/device.h"
#include "vmm/virtio/queue.h"

namespace tartarus::vmm::virtio {

inline constexpr uint32_t kMmioMagic = 0x74726976;     // "virt"
inline constexpr uint32_t kMmioVersion = 2;            // modern only
inline constexpr uint32_t kMmioVendorId = 0x53525454;  // "TTRS"

// Register offsets (4.2.2). Registers take aligned 32-bit accesses; config space any width.
inline constexpr uint64_t kRegMagicValue = 0x000;
inline constexpr uint64_t kRegVersion = 0x004;
inline constexpr uint64_t kRegDeviceId = 0x008;
inline constexpr uint64_t kRegVendorId = 0x00c;
inline constexpr uint64_t kRegDeviceFeatures = 0x010;
inline constexpr uint64_t kRegDeviceFeaturesSel = 0x014;
inline constexpr uint64_t kRegDriverFeatures = 0x020;
inline constexpr uint64_t kRegDriverFeaturesSel = 0x024;
inline constexpr uint64_t kRegQueueSel = 0x030;
inline constexpr uint64_t kRegQueueNumMax = 0x034;
inline constexpr uint64_t kRegQueueNum = 0x038;
inline constexpr uint64_t kRegQueueReady = 0x044;
inline constexpr uint64_t kRegQueueNotify = 0x050;
inline constexpr uint64_t kRegInterruptStatus = 0x060;
inline constexpr uint64_t kRegInterruptAck = 0x064;
inline constexpr uint64_t kRegStatus = 0x070;
inline constexpr uint64_t kRegQueueDescLow = 0x080;
inline constexpr uint64_t kRegQueueDescHigh = 0x084;
inline constexpr uint64_t kRegQueueDriverLow = 0x090;
inline constexpr uint64_t kRegQueueDriverHigh = 0x094;
inline constexpr uint64_t kRegQueueDeviceLow = 0x0a0;
inline constexpr uint64_t kRegQueueDeviceHigh = 0x0a4;
inline constexpr uint64_t kRegConfigGeneration = 0x0fc;
inline constexpr uint64_t kRegConfig = 0x100;

// Device status bits (2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusNeedsReset = 0x40;
inline constexpr uint32_t kStatusFailed = 0x80;

// InterruptStatus bits.
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;

// Where one virtio-mmio device sits, for whoever describes it to the guest: the ACPI DSDT
// (a "LNRO0005" device with this memory range and interrupt) or Linux's command line.
struct MmioDeviceInfo {
  uint64_t base = 0;
  uint64_t size = 0;
  uint32_t irq = 0;
  // "virtio_mmio.device=4K@0xd0001000:5" (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
  std::string KernelCmdlineArg() const;
};

// The default layout: one 4 KiB window per device from 0xd0001000 (just above the
// boot-complete port at the start of the MMIO gap), legacy IRQs from 5.
inline constexpr uint64_t kMmioFirstBase = 0xd0001000;
inline constexpr uint64_t kMmioWindowSize = 0x1000;
inline constexpr uint32_t kMmioFirstIrq = 5;
inline constexpr size_t kMmioMaxDevices = 19;  // IRQs 5-23 of the IOAPIC
Result<MmioDeviceInfo> MmioSlot(size_t index);

// The transport's whole state as plain data (for snapshots); queues in device order.
struct MmioTransportState {
  uint32_t status = 0;
  uint32_t device_features_sel = 0;
  uint32_t driver_features_sel = 0;
  uint64_t driver_features = 0;
  uint32_t queue_sel = 0;
  uint32_t interrupt_status = 0;
  uint32_t config_generation = 0;
  std::vector<VirtqueueState> queues;
};

class MmioTransport : public BusDevice {
 public:
  // Called once per device error (the guest broke the protocol), e.g. to log it.
  using ErrorSink = std::function<void(const Error&)>;

  // memory must outlive the transport; irq may be null (tests that poll).
  MmioTransport(std::unique_ptr<VirtioDevice> device, GuestMemory& memory, IrqLine* irq,
                ErrorSink on_error = nullptr);

  std::string_view Name() const override { return device_->Name(); }
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Processes a queue as if the driver had notified it: for devices whose work arrives from
  // the host (vsock). Safe from any thread.
  void NotifyFromHost(size_t queue_index);
  // The device changed its config space: bump ConfigGeneration and interrupt the driver.
  void SignalConfigChange();

  // While the VM is paused (Vmm::Pause), host-side events must not touch guest memory or the
  // interrupt line, or a snapshot could save a used ring ahead of the transport state it
  // saved. Held, NotifyFromHost and SignalConfigChange only record what they were asked;
  // ReleaseHostNotifications does it. Once Hold returns, no host notification is running.
  void HoldHostNotifications();
  void ReleaseHostNotifications();
  bool holding_host_notifications() const;

  MmioTransportState State() const;
  // Puts a freshly built transport into a saved state (snapshot restore). The state is
  // outside input: the queue count must be the device's, status bits known and in order,
  // features a subset of the device's, and every ready queue passes Validate against guest
  // memory. The interrupt line is driven to match InterruptStatus.
  Status Restore(const MmioTransportState& state);
  // Why the device is in DEVICE_NEEDS_RESET, if it is.
  std::optional<Error> device_error() const;
  VirtioDevice& device() { return *device_; }

 private:
  uint32_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint32_t value);
  void WriteStatus(uint32_t value);
  void SetQueueReady(Virtqueue& queue, bool ready);
  void ProcessQueueLocked(size_t index);
  void DeviceErrorLocked(Error error);
  void RaiseLocked(uint32_t bits);
  void UpdateIrqLocked();
  void ResetLocked();
  // The queue QueueSel names, if it exists and may be reconfigured (not ready).
  Virtqueue* ConfigurableQueue();

  std::unique_ptr<VirtioDevice> device_;
  GuestMemory& memory_;
  IrqLine* irq_;
  ErrorSink on_error_;

  mutable std::mutex mutex_;
  uint32_t status_ = 0;
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_sel_ = 0;
  uint32_t interrupt_status_ = 0;
  uint32_t config_generation_ = 0;
  std::vector<Virtqueue> queues_;
  std::optional<Error> error_;
  bool irq_asserted_ = false;
  bool holding_ = false;
  uint64_t held_queues_ = 0;  // bit i: queue i was notified from the host while held
  bool held_config_change_ = false;
};

}  // namespace tartarus::vmm::virtio

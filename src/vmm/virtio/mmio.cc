// tartarus-vmm (Tartarus's KVM microVM monitor): the virtio-mmio transport (virtio 1.1, 4.2).
#include "vmm/virtio/mmio.h"

#include <cstdio>
#include <cstring>
#include <utility>

namespace tartarus::vmm::virtio {
namespace {

uint32_t Low(uint64_t value) { return static_cast<uint32_t>(value); }
uint32_t High(uint64_t value) { return static_cast<uint32_t>(value >> 32); }
void SetLow(uint64_t& field, uint32_t value) { field = (field & ~0xffffffffULL) | value; }
void SetHigh(uint64_t& field, uint32_t value) {
  field = (field & 0xffffffffULL) | (uint64_t{value} << 32);
}

}  // namespace

void ReadConfigBytes(std::span<const uint8_t> config, uint64_t offset, std::span<uint8_t> out) {
  for (size_t i = 0; i < out.size(); ++i) {
    const uint64_t at = offset + i;
    out[i] = at >= offset && at < config.size() ? config[at] : 0;
  }
}

std::string MmioDeviceInfo::KernelCmdlineArg() const {
  char text[96];
  std::snprintf(text, sizeof(text), "virtio_mmio.device=%lluK@0x%llx:%u",
                static_cast<unsigned long long>(size / 1024), static_cast<unsigned long long>(base),
                irq);
  return text;
}

Result<MmioDeviceInfo> MmioSlot(size_t index) {
  if (index >= kMmioMaxDevices) {
    return Fail(
        ErrorCode::kResourceExhausted,
        "virtio-mmio: at most " + std::to_string(kMmioMaxDevices) + " devices (one IRQ each)");
  }
  return MmioDeviceInfo{.base = kMmioFirstBase + kMmioWindowSize * index,
                        .size = kMmioWindowSize,
                        .irq = kMmioFirstIrq + static_cast<uint32_t>(index)};
}

MmioTransport::MmioTransport(std::unique_ptr<VirtioDevice> device, GuestMemory& memory,
                             IrqLine* irq, ErrorSink on_error)
    : device_(std::move(device)),
      memory_(memory),
      irq_(irq),
      on_error_(std::move(on_error)),
      queues_(device_->QueueCount()) {}

void MmioTransport::Read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (offset >= kRegConfig) {
    device_->ReadConfig(offset - kRegConfig, data);
    return;
  }
  std::fill(data.begin(), data.end(), 0);
  if (data.size() != 4 || offset % 4 != 0) return;  // registers are 32-bit only
  const uint32_t value = ReadRegister(offset);
  std::memcpy(data.data(), &value, 4);
}

void MmioTransport::Write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (offset >= kRegConfig) {
    device_->WriteConfig(offset - kRegConfig, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) return;
  uint32_t value;
  std::memcpy(&value, data.data(), 4);
  WriteRegister(offset, value);
}

uint32_t MmioTransport::ReadRegister(uint64_t offset) {
  const bool queue_exists = queue_sel_ < queues_.size();
  switch (offset) {
    case kRegMagicValue:
      return kMmioMagic;
    case kRegVersion:
      return kMmioVersion;
    case kRegDeviceId:
      return device_->DeviceId();
    case kRegVendorId:
      return kMmioVendorId;
    case kRegDeviceFeatures:
      if (device_features_sel_ == 0) return Low(device_->Features());
      if (device_features_sel_ == 1) return High(device_->Features());
      return 0;
    case kRegQueueNumMax:
      return queue_exists ? device_->MaxQueueSize() : 0;
    case kRegQueueReady:
      return queue_exists && queues_[queue_sel_].state().ready ? 1 : 0;
    case kRegInterruptStatus:
      return interrupt_status_;
    case kRegStatus:
      return status_;
    case kRegConfigGeneration:
      return config_generation_;
    default:
      return 0;  // write-only or reserved
  }
}

Virtqueue* MmioTransport::ConfigurableQueue() {
  if (queue_sel_ >= queues_.size()) return nullptr;
  Virtqueue& queue = queues_[queue_sel_];
  // A ready queue is in use: its configuration may only change after QueueReady = 0.
  if (queue.state().ready) return nullptr;
  return &queue;
}

void MmioTransport::WriteRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case kRegDeviceFeaturesSel:
      device_features_sel_ = value;
      return;
    case kRegDriverFeatures:
      // Features are fixed once FEATURES_OK is set (3.1.1).
      if (status_ & kStatusFeaturesOk) return;
      if (driver_features_sel_ == 0) SetLow(driver_features_, value);
      if (driver_features_sel_ == 1) SetHigh(driver_features_, value);
      return;
    case kRegDriverFeaturesSel:
      driver_features_sel_ = value;
      return;
    case kRegQueueSel:
      queue_sel_ = value;
      return;
    case kRegQueueNum:
      if (Virtqueue* queue = ConfigurableQueue()) {
        // Out-of-range sizes are kept and refused by Validate when the queue is made ready.
        queue->state().size = value > 0xffff ? 0 : static_cast<uint16_t>(value);
      }
      return;
    case kRegQueueReady:
      if (queue_sel_ < queues_.size()) SetQueueReady(queues_[queue_sel_], value == 1);
      return;
    case kRegQueueNotify:
      ProcessQueueLocked(value);
      return;
    case kRegInterruptAck:
      interrupt_status_ &= ~value;
      UpdateIrqLocked();
      return;
    case kRegStatus:
      WriteStatus(value);
      return;
    case kRegQueueDescLow:
    case kRegQueueDescHigh:
    case kRegQueueDriverLow:
    case kRegQueueDriverHigh:
    case kRegQueueDeviceLow:
    case kRegQueueDeviceHigh: {
      Virtqueue* queue = ConfigurableQueue();
      if (queue == nullptr) return;
      VirtqueueState& state = queue->state();
      uint64_t& field = offset < kRegQueueDriverLow   ? state.desc_addr
                        : offset < kRegQueueDeviceLow ? state.avail_addr
                                                      : state.used_addr;
      (offset % 8 == 0) ? SetLow(field, value) : SetHigh(field, value);
      return;
    }
    default:
      return;  // read-only or reserved: ignored
  }
}

void MmioTransport::SetQueueReady(Virtqueue& queue, bool ready) {
  VirtqueueState& state = queue.state();
  if (!ready) {
    state.ready = false;
    return;
  }
  // Queues are set up after FEATURES_OK (3.1.1 step 7), and not in an error state.
  if (state.ready || !(status_ & kStatusFeaturesOk) || (status_ & kStatusNeedsReset)) return;
  if (auto valid = queue.Validate(memory_, device_->MaxQueueSize()); !valid) {
    DeviceErrorLocked(valid.error().Context("queue " + std::to_string(queue_sel_)));
    return;
  }
  state.ready = true;
  state.next_avail = 0;
  state.next_used = 0;
}

void MmioTransport::WriteStatus(uint32_t value) {
  if (value == 0) {
    ResetLocked();
    return;
  }
  // The driver sets bits one step at a time and never clears them except by reset (2.1.2);
  // DEVICE_NEEDS_RESET is the device's to set.
  const uint32_t keep = status_ & kStatusNeedsReset;
  value &= ~kStatusNeedsReset;
  if ((value & status_ & ~kStatusNeedsReset) != (status_ & ~kStatusNeedsReset)) return;
  const uint32_t added = value & ~status_;
  if ((added & kStatusDriver) && !(value & kStatusAcknowledge)) value &= ~kStatusDriver;
  if (added & kStatusFeaturesOk) {
    const bool negotiable = (value & kStatusDriver) &&
                            (driver_features_ & ~device_->Features()) == 0 &&
                            (driver_features_ & kFeatureVersion1) != 0;
    // Not setting FEATURES_OK is how a device refuses the driver's feature set (3.1.1).
    if (!negotiable) value &= ~kStatusFeaturesOk;
  }
  if ((added & kStatusDriverOk) && !(value & kStatusFeaturesOk)) value &= ~kStatusDriverOk;
  status_ = value | keep;
}

void MmioTransport::ProcessQueueLocked(size_t index) {
  if (!(status_ & kStatusDriverOk) || (status_ & kStatusNeedsReset)) return;
  if (index >= queues_.size() || !queues_[index].state().ready) return;
  Virtqueue& queue = queues_[index];
  Result<bool> used = device_->ProcessQueue(index, queue, memory_);
  if (!used) {
    DeviceErrorLocked(
        used.error().Context(std::string(device_->Name()) + " queue " + std::to_string(index)));
    return;
  }
  if (!*used) return;
  Result<bool> wanted = queue.InterruptWanted(memory_);
  if (!wanted || *wanted) RaiseLocked(kInterruptUsedBuffer);
}

void MmioTransport::NotifyFromHost(size_t queue_index) {
  std::lock_guard lock(mutex_);
  if (holding_) {
    if (queue_index < 64) held_queues_ |= uint64_t{1} << queue_index;
    return;
  }
  ProcessQueueLocked(queue_index);
}

void MmioTransport::SignalConfigChange() {
  std::lock_guard lock(mutex_);
  if (holding_) {
    held_config_change_ = true;
    return;
  }
  ++config_generation_;
  if (status_ & kStatusDriverOk) RaiseLocked(kInterruptConfigChange);
}

void MmioTransport::HoldHostNotifications() {
  std::lock_guard lock(mutex_);  // waits for a notification in progress
  holding_ = true;
}

void MmioTransport::ReleaseHostNotifications() {
  uint64_t queues;
  bool config_change;
  {
    std::lock_guard lock(mutex_);
    holding_ = false;
    queues = std::exchange(held_queues_, 0);
    config_change = std::exchange(held_config_change_, false);
  }
  for (size_t index = 0; index < 64; ++index) {
    if (queues & (uint64_t{1} << index)) NotifyFromHost(index);
  }
  if (config_change) SignalConfigChange();
}

bool MmioTransport::holding_host_notifications() const {
  std::lock_guard lock(mutex_);
  return holding_;
}

void MmioTransport::DeviceErrorLocked(Error error) {
  if (error_) return;
  error_ = error;
  status_ |= kStatusNeedsReset;
  // The driver learns of DEVICE_NEEDS_RESET through a config-change interrupt (2.1.2).
  if (status_ & kStatusDriverOk) RaiseLocked(kInterruptConfigChange);
  if (on_error_) on_error_(error);
}

void MmioTransport::RaiseLocked(uint32_t bits) {
  interrupt_status_ |= bits;
  UpdateIrqLocked();
}

void MmioTransport::UpdateIrqLocked() {
  const bool level = interrupt_status_ != 0;
  if (level == irq_asserted_) return;
  irq_asserted_ = level;
  if (irq_ != nullptr) irq_->SetLevel(level);
}

void MmioTransport::ResetLocked() {
  status_ = 0;
  device_features_sel_ = 0;
  driver_features_sel_ = 0;
  driver_features_ = 0;
  queue_sel_ = 0;
  interrupt_status_ = 0;
  for (Virtqueue& queue : queues_) queue = Virtqueue();
  error_.reset();
  device_->Reset();
  UpdateIrqLocked();
}

MmioTransportState MmioTransport::State() const {
  std::lock_guard lock(mutex_);
  MmioTransportState state{.status = status_,
                           .device_features_sel = device_features_sel_,
                           .driver_features_sel = driver_features_sel_,
                           .driver_features = driver_features_,
                           .queue_sel = queue_sel_,
                           .interrupt_status = interrupt_status_,
                           .config_generation = config_generation_};
  for (const Virtqueue& queue : queues_) state.queues.push_back(queue.state());
  return state;
}

Status MmioTransport::Restore(const MmioTransportState& state) {
  std::lock_guard lock(mutex_);
  const std::string what = std::string(device_->Name()) + " transport state: ";
  if (state.queues.size() != queues_.size()) {
    return Fail(ErrorCode::kInvalidArgument, what + std::to_string(state.queues.size()) +
                                                 " queues, the device has " +
                                                 std::to_string(queues_.size()));
  }
  constexpr uint32_t kKnownStatus = kStatusAcknowledge | kStatusDriver | kStatusDriverOk |
                                    kStatusFeaturesOk | kStatusNeedsReset | kStatusFailed;
  if ((state.status & ~kKnownStatus) != 0) {
    return Fail(ErrorCode::kInvalidArgument, what + "unknown status bits");
  }
  if (((state.status & kStatusDriver) && !(state.status & kStatusAcknowledge)) ||
      ((state.status & kStatusFeaturesOk) && !(state.status & kStatusDriver)) ||
      ((state.status & kStatusDriverOk) && !(state.status & kStatusFeaturesOk))) {
    return Fail(ErrorCode::kInvalidArgument, what + "status bits out of order");
  }
  if ((state.driver_features & ~device_->Features()) != 0) {
    return Fail(ErrorCode::kInvalidArgument, what + "driver features the device does not offer");
  }
  if ((state.interrupt_status & ~(kInterruptUsedBuffer | kInterruptConfigChange)) != 0) {
    return Fail(ErrorCode::kInvalidArgument, what + "unknown interrupt status bits");
  }
  for (size_t i = 0; i < state.queues.size(); ++i) {
    const VirtqueueState& queue = state.queues[i];
    if (!queue.ready) continue;
    if (!(state.status & kStatusFeaturesOk)) {
      return Fail(ErrorCode::kInvalidArgument,
                  what + "queue " + std::to_string(i) + " is ready before FEATURES_OK");
    }
    if (auto valid = Virtqueue(queue).Validate(memory_, device_->MaxQueueSize()); !valid) {
      return Fail(valid.error().Context(what + "queue " + std::to_string(i)));
    }
  }
  status_ = state.status;
  device_features_sel_ = state.device_features_sel;
  driver_features_sel_ = state.driver_features_sel;
  driver_features_ = state.driver_features;
  queue_sel_ = state.queue_sel;
  interrupt_status_ = state.interrupt_status;
  config_generation_ = state.config_generation;
  for (size_t i = 0; i < queues_.size(); ++i) queues_[i] = Virtqueue(state.queues[i]);
  error_.reset();
  if (status_ & kStatusNeedsReset) {
    error_ = Error{ErrorCode::kFailedPrecondition, "restored in DEVICE_NEEDS_RESET"};
  }
  // A new VM's line starts low: raise it if InterruptStatus says so.
  irq_asserted_ = false;
  UpdateIrqLocked();
  return Ok();
}

std::optional<Error> MmioTransport::device_error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

}  // namespace tartarus::vmm::virtio

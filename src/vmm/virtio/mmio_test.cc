// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the virtio-mmio transport: the
// register file, the driver status state machine, queue setup, notification, interrupts, and
// the DEVICE_NEEDS_RESET state a protocol error leads to.
#include "vmm/virtio/mmio.h"

#include <gtest/gtest.h>

#include <cstring>

#include "vmm/virtio/block.h"
#include "vmm/virtio/rng.h"
#include "vmm/virtio/virtio_testing.h"

namespace tartarus::vmm::virtio {
namespace {

using testing::FakeDriver;
using testing::FakeIrq;
using testing::MemoryDisk;
using testing::Segment;

class MmioTest : public ::testing::Test {
 protected:
  MmioTest()
      : memory_(std::move(GuestMemory::CreateAnonymous(1 << 20).value())),
        driver_(memory_, 16),
        transport_(std::make_unique<RngDevice>([](std::span<uint8_t> out) {
                     std::fill(out.begin(), out.end(), 0x42);
                     return Ok();
                   }),
                   memory_, &irq_,
                   [this](const Error& error) { errors_.push_back(error.message); }) {}

  uint32_t Get(uint64_t offset) {
    uint32_t value;
    transport_.Read(offset, std::span(reinterpret_cast<uint8_t*>(&value), 4));
    return value;
  }
  void Set(uint64_t offset, uint32_t value) {
    transport_.Write(offset, std::span(reinterpret_cast<const uint8_t*>(&value), 4));
  }
  uint64_t DeviceFeatures() {
    Set(kRegDeviceFeaturesSel, 0);
    const uint64_t low = Get(kRegDeviceFeatures);
    Set(kRegDeviceFeaturesSel, 1);
    return low | (uint64_t{Get(kRegDeviceFeatures)} << 32);
  }
  void Negotiate(uint64_t features) {
    Set(kRegStatus, kStatusAcknowledge);
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver);
    Set(kRegDriverFeaturesSel, 0);
    Set(kRegDriverFeatures, static_cast<uint32_t>(features));
    Set(kRegDriverFeaturesSel, 1);
    Set(kRegDriverFeatures, static_cast<uint32_t>(features >> 32));
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  }
  void SetUpQueue(uint32_t size = 16) {
    Set(kRegQueueSel, 0);
    Set(kRegQueueNum, size);
    Set(kRegQueueDescLow, static_cast<uint32_t>(driver_.desc_addr()));
    Set(kRegQueueDescHigh, 0);
    Set(kRegQueueDriverLow, static_cast<uint32_t>(driver_.avail_addr()));
    Set(kRegQueueDriverHigh, 0);
    Set(kRegQueueDeviceLow, static_cast<uint32_t>(driver_.used_addr()));
    Set(kRegQueueDeviceHigh, 0);
    Set(kRegQueueReady, 1);
  }
  // The whole initialization sequence of 3.1.1.
  void Initialize() {
    Negotiate(DeviceFeatures());
    SetUpQueue();
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    ASSERT_EQ(Get(kRegStatus),
              kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  }
  void AddEntropyRequest() {
    const uint64_t buffer = driver_.Alloc(32);
    const Segment chain[] = {{buffer, 32, true}};
    ASSERT_TRUE(driver_.AddChain(chain));
  }

  GuestMemory memory_;
  FakeDriver driver_;
  FakeIrq irq_;
  std::vector<std::string> errors_;
  MmioTransport transport_;
};

TEST_F(MmioTest, IdentifiesAsAModernDevice) {
  EXPECT_EQ(Get(kRegMagicValue), kMmioMagic);
  EXPECT_EQ(Get(kRegVersion), 2u);
  EXPECT_EQ(Get(kRegDeviceId), kDeviceIdRng);
  EXPECT_EQ(Get(kRegVendorId), kMmioVendorId);
  EXPECT_EQ(DeviceFeatures(), kCommonFeatures);
  Set(kRegDeviceFeaturesSel, 2);
  EXPECT_EQ(Get(kRegDeviceFeatures), 0u);
  EXPECT_EQ(Get(kRegQueueNumMax), kMaxQueueSize);
  Set(kRegQueueSel, 1);  // rng has one queue
  EXPECT_EQ(Get(kRegQueueNumMax), 0u);
}

TEST_F(MmioTest, IgnoresRegisterAccessesThatAreNot32Bits) {
  uint8_t byte = 0xff;
  transport_.Read(kRegMagicValue, std::span(&byte, 1));
  EXPECT_EQ(byte, 0);
  uint8_t wide[8];
  transport_.Read(kRegMagicValue, wide);
  EXPECT_EQ(wide[0], 0);
  const uint8_t status = kStatusAcknowledge;
  transport_.Write(kRegStatus, std::span(&status, 1));
  EXPECT_EQ(Get(kRegStatus), 0u);
  Set(kRegStatus + 2, kStatusAcknowledge);  // misaligned
  EXPECT_EQ(Get(kRegStatus), 0u);
}

TEST_F(MmioTest, FeaturesOkNeedsVersion1AndOnlyOfferedFeatures) {
  Negotiate(kFeatureIndirectDesc);  // no VERSION_1: a legacy driver
  EXPECT_EQ(Get(kRegStatus) & kStatusFeaturesOk, 0u);
  Set(kRegStatus, 0);
  Negotiate(kCommonFeatures | kFeatureEventIdx);  // not offered
  EXPECT_EQ(Get(kRegStatus) & kStatusFeaturesOk, 0u);
  Set(kRegStatus, 0);
  Negotiate(kFeatureVersion1);
  EXPECT_EQ(Get(kRegStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  // Features are fixed from now on.
  Set(kRegDriverFeaturesSel, 0);
  Set(kRegDriverFeatures, 0xffffffff);
  EXPECT_EQ(transport_.State().driver_features, kFeatureVersion1);
}

TEST_F(MmioTest, StatusFollowsTheDriverStateMachine) {
  Set(kRegStatus, kStatusDriver);  // DRIVER before ACKNOWLEDGE
  EXPECT_EQ(Get(kRegStatus), 0u);
  Set(kRegStatus, kStatusAcknowledge | kStatusDriverOk);  // DRIVER_OK without FEATURES_OK
  EXPECT_EQ(Get(kRegStatus), kStatusAcknowledge);
  Negotiate(kCommonFeatures);
  Set(kRegStatus, kStatusAcknowledge);  // clearing bits is not allowed
  EXPECT_EQ(Get(kRegStatus), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusNeedsReset);
  EXPECT_EQ(Get(kRegStatus) & kStatusNeedsReset, 0u);  // the device's bit, not the driver's
  Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusFailed);
  EXPECT_TRUE(Get(kRegStatus) & kStatusFailed);
}

TEST_F(MmioTest, NotificationUsesBuffersAndRaisesTheInterrupt) {
  Initialize();
  EXPECT_EQ(Get(kRegQueueReady), 1u);
  AddEntropyRequest();
  Set(kRegQueueNotify, 0);
  EXPECT_EQ(driver_.UsedIdx().value(), 1);
  EXPECT_EQ(driver_.Used(0)->len, 32u);
  EXPECT_EQ(Get(kRegInterruptStatus), kInterruptUsedBuffer);
  EXPECT_TRUE(irq_.level);
  Set(kRegInterruptAck, kInterruptUsedBuffer);
  EXPECT_EQ(Get(kRegInterruptStatus), 0u);
  EXPECT_FALSE(irq_.level);
  EXPECT_TRUE(errors_.empty());
}

// Snapshots: a transport's State() put into a fresh transport carries on where it stopped.
TEST_F(MmioTest, RestoreContinuesInANewTransportAndRefusesImpossibleStates) {
  Initialize();
  AddEntropyRequest();
  Set(kRegQueueNotify, 0);
  ASSERT_EQ(driver_.UsedIdx().value(), 1);
  const MmioTransportState saved = transport_.State();
  ASSERT_EQ(saved.interrupt_status, kInterruptUsedBuffer);

  auto fresh = [this](FakeIrq* irq) {
    return std::make_unique<MmioTransport>(std::make_unique<RngDevice>([](std::span<uint8_t> out) {
                                             std::fill(out.begin(), out.end(), 0x42);
                                             return Ok();
                                           }),
                                           memory_, irq);
  };
  FakeIrq restored_irq;
  auto restored = fresh(&restored_irq);
  ASSERT_TRUE(restored->Restore(saved));
  EXPECT_TRUE(restored_irq.level);  // InterruptStatus was pending
  const MmioTransportState again = restored->State();
  EXPECT_EQ(again.status, saved.status);
  EXPECT_EQ(again.driver_features, saved.driver_features);
  EXPECT_EQ(again.queues[0].next_avail, 1);
  EXPECT_EQ(again.queues[0].next_used, 1);
  // The next request goes through the restored transport, into used-ring slot 1.
  AddEntropyRequest();
  uint32_t zero = 0;
  restored->Write(kRegQueueNotify, std::span(reinterpret_cast<const uint8_t*>(&zero), 4));
  EXPECT_EQ(driver_.UsedIdx().value(), 2);
  EXPECT_EQ(driver_.Used(1)->len, 32u);

  auto expect_refused = [&](MmioTransportState state, const std::string& why) {
    FakeIrq irq;
    auto target = fresh(&irq);
    auto status = target->Restore(state);
    ASSERT_FALSE(status) << why;
    EXPECT_NE(status.error().message.find(why), std::string::npos) << status.error().message;
    EXPECT_EQ(target->State().status, 0u);  // nothing was applied
  };
  MmioTransportState bad = saved;
  bad.queues.push_back({});
  expect_refused(bad, "2 queues, the device has 1");
  bad = saved;
  bad.status |= 0x10;
  expect_refused(bad, "unknown status bits");
  bad = saved;
  bad.status = kStatusAcknowledge | kStatusDriver | kStatusDriverOk;
  expect_refused(bad, "status bits out of order");
  bad = saved;
  bad.driver_features |= 1ULL << 40;
  expect_refused(bad, "driver features the device does not offer");
  bad = saved;
  bad.interrupt_status = 4;
  expect_refused(bad, "unknown interrupt status bits");
  bad = saved;
  bad.queues[0].desc_addr = 0x3fff0001;  // misaligned and outside memory
  expect_refused(bad, "queue 0");
  bad = saved;
  bad.status = kStatusAcknowledge | kStatusDriver;
  expect_refused(bad, "queue 0 is ready before FEATURES_OK");
}

TEST_F(MmioTest, HonoursNoInterruptAndIgnoresBadQueueIndexes) {
  Initialize();
  ASSERT_TRUE(driver_.SetAvailFlags(kAvailNoInterrupt));
  AddEntropyRequest();
  Set(kRegQueueNotify, 7);  // no such queue
  EXPECT_EQ(driver_.UsedIdx().value(), 0);
  Set(kRegQueueNotify, 0);
  EXPECT_EQ(driver_.UsedIdx().value(), 1);
  EXPECT_FALSE(irq_.level);
}

TEST_F(MmioTest, NotificationsBeforeDriverOkAreIgnored) {
  Negotiate(kCommonFeatures);
  SetUpQueue();
  AddEntropyRequest();
  Set(kRegQueueNotify, 0);
  EXPECT_EQ(driver_.UsedIdx().value(), 0);
}

TEST_F(MmioTest, QueueSetupBeforeFeaturesOkOrWithBadSizesFails) {
  SetUpQueue();  // before FEATURES_OK: ignored
  EXPECT_EQ(Get(kRegQueueReady), 0u);
  Negotiate(kCommonFeatures);
  SetUpQueue(12);  // not a power of two
  EXPECT_EQ(Get(kRegQueueReady), 0u);
  EXPECT_TRUE(Get(kRegStatus) & kStatusNeedsReset);
  ASSERT_EQ(errors_.size(), 1u);
  EXPECT_NE(errors_[0].find("queue size 12"), std::string::npos);
}

TEST_F(MmioTest, ReadyQueuesCannotBeReconfigured) {
  Initialize();
  Set(kRegQueueNum, 4);
  Set(kRegQueueDescLow, 0x40000);
  EXPECT_EQ(transport_.State().queues[0].size, 16);
  EXPECT_EQ(transport_.State().queues[0].desc_addr, driver_.desc_addr());
  Set(kRegQueueReady, 0);
  Set(kRegQueueNum, 4);
  EXPECT_EQ(transport_.State().queues[0].size, 4);
}

TEST_F(MmioTest, MalformedChainPutsTheDeviceInNeedsResetUntilReset) {
  Initialize();
  ASSERT_TRUE(driver_.WriteDescriptor(0, driver_.Alloc(8), 8, kDescWrite | kDescNext, 0));
  ASSERT_TRUE(driver_.Publish(0));  // a self loop
  Set(kRegQueueNotify, 0);
  EXPECT_TRUE(Get(kRegStatus) & kStatusNeedsReset);
  EXPECT_EQ(Get(kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_TRUE(irq_.level);
  ASSERT_TRUE(transport_.device_error().has_value());
  EXPECT_NE(transport_.device_error()->message.find("longer than the queue size"),
            std::string::npos);
  ASSERT_EQ(errors_.size(), 1u);

  // Stopped: later notifications do nothing.
  AddEntropyRequest();
  Set(kRegQueueNotify, 0);
  EXPECT_EQ(driver_.UsedIdx().value(), 0);

  // Reset clears everything and lowers the line; the device works again afterwards.
  Set(kRegStatus, 0);
  EXPECT_EQ(Get(kRegStatus), 0u);
  EXPECT_EQ(Get(kRegInterruptStatus), 0u);
  EXPECT_FALSE(irq_.level);
  EXPECT_FALSE(transport_.device_error().has_value());
  EXPECT_EQ(Get(kRegQueueReady), 0u);
  ASSERT_TRUE(driver_.SetAvailIdx(0));  // the driver starts its rings over too
  ASSERT_TRUE(memory_.Fill(driver_.used_addr(), 0x1000, 0));
  Initialize();
  AddEntropyRequest();
  Set(kRegQueueNotify, 0);
  EXPECT_EQ(driver_.UsedIdx().value(), 1);
}

TEST_F(MmioTest, ConfigChangeBumpsTheGenerationAndInterrupts) {
  Initialize();
  const uint32_t before = Get(kRegConfigGeneration);
  transport_.SignalConfigChange();
  EXPECT_EQ(Get(kRegConfigGeneration), before + 1);
  EXPECT_EQ(Get(kRegInterruptStatus), kInterruptConfigChange);
  EXPECT_TRUE(irq_.level);
}

// A paused VM: host-side notifications and config changes touch neither guest memory nor the
// interrupt line until released, and then each happens once.
TEST_F(MmioTest, HeldHostNotificationsWaitForTheRelease) {
  Initialize();
  AddEntropyRequest();
  const uint32_t generation = Get(kRegConfigGeneration);
  transport_.HoldHostNotifications();
  EXPECT_TRUE(transport_.holding_host_notifications());
  transport_.NotifyFromHost(0);
  transport_.NotifyFromHost(0);
  transport_.NotifyFromHost(7);  // no such queue: dropped on release, as unheld
  transport_.SignalConfigChange();
  EXPECT_EQ(driver_.UsedIdx().value(), 0);
  EXPECT_EQ(Get(kRegInterruptStatus), 0u);
  EXPECT_EQ(Get(kRegConfigGeneration), generation);
  EXPECT_FALSE(irq_.level);
  transport_.ReleaseHostNotifications();
  EXPECT_FALSE(transport_.holding_host_notifications());
  EXPECT_EQ(driver_.UsedIdx().value(), 1);
  EXPECT_EQ(Get(kRegConfigGeneration), generation + 1);
  EXPECT_EQ(Get(kRegInterruptStatus), kInterruptUsedBuffer | kInterruptConfigChange);
  EXPECT_TRUE(irq_.level);
  // Released means released: the next notification is served at once, and a second release
  // replays nothing.
  AddEntropyRequest();
  transport_.NotifyFromHost(0);
  EXPECT_EQ(driver_.UsedIdx().value(), 2);
  transport_.ReleaseHostNotifications();
  EXPECT_EQ(driver_.UsedIdx().value(), 2);
  EXPECT_EQ(Get(kRegConfigGeneration), generation + 1);
  EXPECT_TRUE(errors_.empty());
}

TEST(MmioBlockTest, ConfigSpaceHoldsTheCapacityAtAnyWidth) {
  GuestMemory memory = std::move(GuestMemory::CreateAnonymous(1 << 16).value());
  MmioTransport transport(
      std::make_unique<BlockDevice>(std::make_unique<MemoryDisk>(std::vector<uint8_t>(1 << 20)),
                                    "id", false),
      memory, nullptr);
  uint64_t capacity = 0;
  transport.Read(kRegConfig, std::span(reinterpret_cast<uint8_t*>(&capacity), 8));
  EXPECT_EQ(capacity, 2048u);
  uint32_t high = 1;
  transport.Read(kRegConfig + 4, std::span(reinterpret_cast<uint8_t*>(&high), 4));
  EXPECT_EQ(high, 0u);
  uint8_t byte = 0;
  transport.Read(kRegConfig + 1, std::span(&byte, 1));
  EXPECT_EQ(byte, 0x08);
  uint32_t id = 0;
  transport.Read(kRegDeviceId, std::span(reinterpret_cast<uint8_t*>(&id), 4));
  EXPECT_EQ(id, kDeviceIdBlock);
}

TEST(MmioLayoutTest, SlotsDescribeWindowsAndIrqs) {
  MmioDeviceInfo first = MmioSlot(0).value();
  EXPECT_EQ(first.base, 0xd0001000u);
  EXPECT_EQ(first.size, 0x1000u);
  EXPECT_EQ(first.irq, 5u);
  EXPECT_EQ(first.KernelCmdlineArg(), "virtio_mmio.device=4K@0xd0001000:5");
  EXPECT_EQ(MmioSlot(2)->base, 0xd0003000u);
  EXPECT_FALSE(MmioSlot(kMmioMaxDevices));
}

}  // namespace
}  // namespace tartarus::vmm::virtio

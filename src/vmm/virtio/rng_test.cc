// tartarus-vmm (Tartarus's KVM microVM monitor): tests for virtio-rng.
#include "vmm/virtio/rng.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "vmm/virtio/virtio_testing.h"

namespace tartarus::vmm::virtio {
namespace {

using testing::FakeDriver;
using testing::Segment;

class RngTest : public ::testing::Test {
 protected:
  RngTest()
      : memory_(std::move(GuestMemory::CreateAnonymous(1 << 20).value())),
        driver_(memory_, 8),
        queue_(driver_.QueueState()) {}
  GuestMemory memory_;
  FakeDriver driver_;
  Virtqueue queue_;
};

TEST_F(RngTest, FillsWritableBuffersFromTheSource) {
  RngDevice device([](std::span<uint8_t> out) {
    std::fill(out.begin(), out.end(), 0xab);
    return Ok();
  });
  const uint64_t a = driver_.Alloc(10), b = driver_.Alloc(6);
  const Segment chain[] = {{a, 10, true}, {b, 6, true}};
  ASSERT_TRUE(driver_.AddChain(chain));
  auto used = device.ProcessQueue(0, queue_, memory_);
  ASSERT_TRUE(used && *used);
  EXPECT_EQ(driver_.ReadBytes(b, 6).value(), std::vector<uint8_t>(6, 0xab));
  EXPECT_EQ(driver_.Used(0)->len, 16u);
  EXPECT_EQ(device.DeviceId(), kDeviceIdRng);
}

TEST_F(RngTest, UsesGetrandomByDefault) {
  RngDevice device;
  const uint64_t a = driver_.Alloc(64, 0);
  const Segment chain[] = {{a, 64, true}};
  ASSERT_TRUE(driver_.AddChain(chain));
  ASSERT_TRUE(device.ProcessQueue(0, queue_, memory_));
  const auto bytes = driver_.ReadBytes(a, 64).value();
  EXPECT_NE(bytes, std::vector<uint8_t>(64, 0));  // 2^-512 odds of a false failure
}

TEST_F(RngTest, CapsOneRequest) {
  RngDevice device;
  const uint64_t a = driver_.Alloc(RngDevice::kMaxBytesPerRequest + 4096);
  const Segment chain[] = {{a, static_cast<uint32_t>(RngDevice::kMaxBytesPerRequest + 4096), true}};
  ASSERT_TRUE(driver_.AddChain(chain));
  ASSERT_TRUE(device.ProcessQueue(0, queue_, memory_));
  EXPECT_EQ(driver_.Used(0)->len, RngDevice::kMaxBytesPerRequest);
}

TEST_F(RngTest, ReadableBuffersAreAProtocolError) {
  RngDevice device;
  const uint64_t a = driver_.Alloc(8);
  const Segment chain[] = {{a, 8, false}};
  ASSERT_TRUE(driver_.AddChain(chain));
  auto used = device.ProcessQueue(0, queue_, memory_);
  ASSERT_FALSE(used);
  EXPECT_NE(used.error().message.find("device-readable"), std::string::npos);
}

}  // namespace
}  // namespace tartarus::vmm::virtio

// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the MMIO/PIO bus.
#include "vmm/bus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <vector>

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

// Remembers the last access and answers reads with offset + 1 in every byte.
class RecordingDevice : public BusDevice {
 public:
  explicit RecordingDevice(std::string name = "recorder") : name_(std::move(name)) {}
  std::string_view Name() const override { return name_; }
  void Read(uint64_t offset, std::span<uint8_t> data) override {
    last_offset = offset;
    for (uint8_t& byte : data) byte = static_cast<uint8_t>(offset + 1);
    ++reads;
  }
  void Write(uint64_t offset, std::span<const uint8_t> data) override {
    last_offset = offset;
    written.assign(data.begin(), data.end());
    ++writes;
  }
  uint64_t last_offset = 0;
  std::vector<uint8_t> written;
  int reads = 0;
  int writes = 0;

 private:
  std::string name_;
};

TEST(BusTest, DispatchesToTheDeviceWithTheOffsetInsideItsRange) {
  Bus bus("pio");
  auto device = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x3f8, 8, device));
  uint8_t value = 0;
  EXPECT_TRUE(bus.Read(0x3fd, std::span(&value, 1)));
  EXPECT_EQ(device->last_offset, 5u);
  EXPECT_EQ(value, 6);
  const uint8_t data[2] = {0xaa, 0xbb};
  EXPECT_TRUE(bus.Write(0x3f8, data));
  EXPECT_EQ(device->last_offset, 0u);
  EXPECT_EQ(device->written, (std::vector<uint8_t>{0xaa, 0xbb}));
  EXPECT_EQ(bus.unhandled_reads() + bus.unhandled_writes(), 0u);
}

TEST(BusTest, RefusesOverlappingRanges) {
  Bus bus("mmio");
  ASSERT_TRUE(bus.Insert(0x1000, 0x100, std::make_shared<RecordingDevice>("first")));
  for (auto [base, length] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0x1000, 0x100}, {0x0f80, 0x100}, {0x10ff, 0x10}, {0x1010, 0x10}, {0x0, 0x10000}}) {
    auto status = bus.Insert(base, length, std::make_shared<RecordingDevice>("second"));
    ASSERT_FALSE(status) << std::hex << base << "+" << length;
    EXPECT_EQ(status.error().code, ErrorCode::kAlreadyExists);
    EXPECT_THAT(status.error().message, HasSubstr("overlaps first"));
  }
  // Adjacent ranges on both sides are fine.
  EXPECT_TRUE(bus.Insert(0x0f00, 0x100, std::make_shared<RecordingDevice>()));
  EXPECT_TRUE(bus.Insert(0x1100, 0x100, std::make_shared<RecordingDevice>()));
}

TEST(BusTest, RefusesEmptyAndWrappingRangesAndNullDevices) {
  Bus bus("mmio");
  EXPECT_FALSE(bus.Insert(0x1000, 0, std::make_shared<RecordingDevice>()));
  EXPECT_FALSE(bus.Insert(UINT64_MAX - 4, 0x10, std::make_shared<RecordingDevice>()));
  EXPECT_FALSE(bus.Insert(0x1000, 0x10, nullptr));
}

TEST(BusTest, UnclaimedAccessesReadAllOnesAndAreCounted) {
  Bus bus("pio");
  auto device = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x60, 5, device));
  uint32_t value = 0;
  EXPECT_FALSE(bus.Read(0x80, std::span(reinterpret_cast<uint8_t*>(&value), 4)));
  EXPECT_EQ(value, 0xffffffffu);
  // An access that starts inside but runs past the device's range is not the device's.
  EXPECT_FALSE(bus.Read(0x63, std::span(reinterpret_cast<uint8_t*>(&value), 4)));
  const uint8_t byte = 1;
  EXPECT_FALSE(bus.Write(0x70, std::span(&byte, 1)));
  EXPECT_FALSE(bus.Write(UINT64_MAX, std::span(&byte, 1)));
  EXPECT_EQ(bus.unhandled_reads(), 2u);
  EXPECT_EQ(bus.unhandled_writes(), 2u);
  EXPECT_EQ(device->reads + device->writes, 0);
}

TEST(BusTest, OneDeviceMayServeSeveralRanges) {
  Bus bus("pio");
  auto device = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Insert(0x3f0, 1, device));
  ASSERT_TRUE(bus.Insert(0x500, 1, device));
  const uint8_t byte = 123;
  EXPECT_TRUE(bus.Write(0x3f0, std::span(&byte, 1)));
  EXPECT_TRUE(bus.Write(0x500, std::span(&byte, 1)));
  EXPECT_EQ(device->writes, 2);
}

}  // namespace
}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): tests for virtio-blk request handling, driven
// by the fake driver over an in-memory disk.
#include "vmm/virtio/block.h"

#include <gtest/gtest.h>

#include <cstring>

#include "vmm/virtio/virtio_testing.h"

namespace tartarus::vmm::virtio {
namespace {

using testing::FakeDriver;
using testing::MemoryDisk;
using testing::Segment;

std::vector<uint8_t> Pattern(size_t size) {
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + i / 512);
  return bytes;
}

class BlockTest : public ::testing::Test {
 protected:
  BlockTest() : memory_(std::move(GuestMemory::CreateAnonymous(1 << 20).value())) { Attach(false); }

  void Attach(bool read_only) {
    auto disk = std::make_unique<MemoryDisk>(Pattern(64 * 1024));
    disk_ = disk.get();
    device_ = std::make_unique<BlockDevice>(std::move(disk), "tartarus-disk-0", read_only);
    driver_ = std::make_unique<FakeDriver>(memory_, 16);
    queue_ = Virtqueue(driver_->QueueState());
  }

  uint64_t Header(uint32_t type, uint64_t sector) {
    const BlkRequestHeader header{type, 0, sector};
    const uint64_t addr = driver_->Alloc(sizeof(header));
    EXPECT_TRUE(memory_.WriteObject(addr, header));
    return addr;
  }

  // Runs the queue and returns the status byte at status_addr.
  uint8_t Run(uint64_t status_addr) {
    auto used = device_->ProcessQueue(0, queue_, memory_);
    EXPECT_TRUE(used) << used.error().message;
    EXPECT_TRUE(used && *used);
    return memory_.ReadObject<uint8_t>(status_addr).value();
  }

  GuestMemory memory_;
  MemoryDisk* disk_ = nullptr;
  std::unique_ptr<BlockDevice> device_;
  std::unique_ptr<FakeDriver> driver_;
  Virtqueue queue_;
};

TEST_F(BlockTest, ReportsCapacityAndFeatures) {
  uint8_t config[12];
  device_->ReadConfig(0, config);
  uint64_t capacity;
  std::memcpy(&capacity, config, 8);
  EXPECT_EQ(capacity, 128u);  // 64 KiB in sectors
  EXPECT_EQ(config[8], 0);    // past capacity: zeros
  EXPECT_TRUE(device_->Features() & kFeatureVersion1);
  EXPECT_TRUE(device_->Features() & kBlkFeatureFlush);
  EXPECT_FALSE(device_->Features() & kBlkFeatureReadOnly);
}

TEST_F(BlockTest, ReadsSectorsIntoSplitBuffers) {
  const uint64_t data_a = driver_->Alloc(512, 0xee), data_b = driver_->Alloc(1024, 0xee);
  const uint64_t status = driver_->Alloc(1, 0xff);
  const Segment chain[] = {{Header(kBlkTypeIn, 3), 16, false},
                           {data_a, 512, true},
                           {data_b, 1024, true},
                           {status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(chain));
  EXPECT_EQ(Run(status), kBlkStatusOk);
  const auto expected = Pattern(64 * 1024);
  EXPECT_EQ(driver_->ReadBytes(data_a, 512).value(),
            std::vector<uint8_t>(expected.begin() + 3 * 512, expected.begin() + 4 * 512));
  EXPECT_EQ(driver_->ReadBytes(data_b, 1024).value(),
            std::vector<uint8_t>(expected.begin() + 4 * 512, expected.begin() + 6 * 512));
  EXPECT_EQ(driver_->Used(0)->len, 1537u);
}

TEST_F(BlockTest, ServesRequestsWhoseStatusSharesTheLastDataBuffer) {
  // Data and status in one writable descriptor, header split across two readable ones.
  const BlkRequestHeader header{kBlkTypeIn, 0, 1};
  const uint64_t h1 = driver_->Alloc(6), h2 = driver_->Alloc(10);
  ASSERT_TRUE(memory_.Write(h1, std::span(reinterpret_cast<const uint8_t*>(&header), 6)));
  ASSERT_TRUE(memory_.Write(h2, std::span(reinterpret_cast<const uint8_t*>(&header) + 6, 10)));
  const uint64_t data = driver_->Alloc(513);
  const Segment chain[] = {{h1, 6, false}, {h2, 10, false}, {data, 513, true}};
  ASSERT_TRUE(driver_->AddChain(chain));
  EXPECT_EQ(Run(data + 512), kBlkStatusOk);
  const auto expected = Pattern(1024);
  EXPECT_EQ(driver_->ReadBytes(data, 4).value(),
            std::vector<uint8_t>(expected.begin() + 512, expected.begin() + 516));
}

TEST_F(BlockTest, WritesSectors) {
  std::vector<uint8_t> payload(1024, 0x5a);
  const uint64_t data = driver_->Alloc(1024);
  ASSERT_TRUE(memory_.Write(data, payload));
  const uint64_t status = driver_->Alloc(1, 0xff);
  const Segment chain[] = {
      {Header(kBlkTypeOut, 10), 16, false}, {data, 1024, false}, {status, 1, true}};
  ASSERT_TRUE(driver_->AddIndirectChain(chain));
  EXPECT_EQ(Run(status), kBlkStatusOk);
  EXPECT_EQ(std::vector<uint8_t>(disk_->bytes().begin() + 5120, disk_->bytes().begin() + 6144),
            payload);
  EXPECT_EQ(disk_->bytes()[5119], Pattern(64 * 1024)[5119]);
  EXPECT_EQ(driver_->Used(0)->len, 1u);
}

TEST_F(BlockTest, ReadOnlyDiskRefusesWrites) {
  Attach(true);
  EXPECT_TRUE(device_->Features() & kBlkFeatureReadOnly);
  const uint64_t data = driver_->Alloc(512, 0x11), status = driver_->Alloc(1, 0xff);
  const Segment chain[] = {
      {Header(kBlkTypeOut, 0), 16, false}, {data, 512, false}, {status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(chain));
  EXPECT_EQ(Run(status), kBlkStatusIoErr);
  EXPECT_EQ(disk_->bytes(), Pattern(64 * 1024));
}

TEST_F(BlockTest, FlushesAndReturnsTheId) {
  const uint64_t flush_status = driver_->Alloc(1, 0xff);
  const Segment flush[] = {{Header(kBlkTypeFlush, 0), 16, false}, {flush_status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(flush));
  const uint64_t id = driver_->Alloc(20, 0xff), id_status = driver_->Alloc(1, 0xff);
  const Segment get_id[] = {
      {Header(kBlkTypeGetId, 0), 16, false}, {id, 20, true}, {id_status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(get_id));
  EXPECT_EQ(Run(flush_status), kBlkStatusOk);
  EXPECT_EQ(disk_->flushes, 1);
  EXPECT_EQ(memory_.ReadObject<uint8_t>(id_status).value(), kBlkStatusOk);
  const auto bytes = driver_->ReadBytes(id, 20).value();
  EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + 15), "tartarus-disk-0");
  EXPECT_EQ(bytes[15], 0);
  EXPECT_EQ(driver_->Used(1)->len, 21u);
}

TEST_F(BlockTest, AnswersUnsupportedTypes) {
  const uint64_t status = driver_->Alloc(1, 0xff);
  const Segment chain[] = {{Header(77, 0), 16, false}, {status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(chain));
  EXPECT_EQ(Run(status), kBlkStatusUnsupported);
}

TEST_F(BlockTest, RefusesRequestsPastTheEndOrUnaligned) {
  struct Case {
    uint32_t type;
    uint64_t sector;
    uint32_t length;
  };
  for (Case c : {Case{kBlkTypeIn, 127, 1024}, Case{kBlkTypeIn, 128, 512},
                 Case{kBlkTypeOut, ~uint64_t{0} / 256, 512}, Case{kBlkTypeIn, 0, 100},
                 Case{kBlkTypeOut, 0, 700}}) {
    const uint64_t data = driver_->Alloc(c.length), status = driver_->Alloc(1, 0xff);
    const Segment chain[] = {{Header(c.type, c.sector), 16, false},
                             {data, c.length, c.type == kBlkTypeIn},
                             {status, 1, true}};
    ASSERT_TRUE(driver_->AddChain(chain));
    EXPECT_EQ(Run(status), kBlkStatusIoErr) << c.type << " " << c.sector << " " << c.length;
  }
  EXPECT_EQ(disk_->bytes(), Pattern(64 * 1024));
}

TEST_F(BlockTest, RequestsWithoutStatusOrHeaderAreProtocolErrors) {
  const Segment no_status[] = {{Header(kBlkTypeIn, 0), 16, false}};
  ASSERT_TRUE(driver_->AddChain(no_status));
  auto used = device_->ProcessQueue(0, queue_, memory_);
  ASSERT_FALSE(used);
  EXPECT_NE(used.error().message.find("status"), std::string::npos);

  Attach(false);
  const uint64_t status = driver_->Alloc(1);
  const Segment short_header[] = {{Header(kBlkTypeIn, 0), 8, false}, {status, 1, true}};
  ASSERT_TRUE(driver_->AddChain(short_header));
  used = device_->ProcessQueue(0, queue_, memory_);
  ASSERT_FALSE(used);
  EXPECT_NE(used.error().message.find("header"), std::string::npos);
}

TEST_F(BlockTest, ProcessesAtMostOneQueueOfChainsPerNotification) {
  for (int i = 0; i < 16; ++i) {
    const uint64_t status = driver_->Alloc(1);
    const Segment chain[] = {{Header(kBlkTypeFlush, 0), 16, false}, {status, 1, true}};
    ASSERT_TRUE(driver_->AddChain(chain));
  }
  ASSERT_TRUE(device_->ProcessQueue(0, queue_, memory_));
  EXPECT_EQ(driver_->UsedIdx().value(), 16);
  EXPECT_EQ(disk_->flushes, 16);
}

}  // namespace
}  // namespace tartarus::vmm::virtio

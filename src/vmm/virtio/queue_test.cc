// tartarus-vmm (Tartarus's KVM microVM monitor): tests for split virtqueues on plain memory,
// including every kind of malformed chain a guest can write.
#include "vmm/virtio/queue.h"

#include <gtest/gtest.h>

#include <random>

#include "vmm/virtio/virtio_testing.h"

namespace tartarus::vmm::virtio {
namespace {

using testing::FakeDriver;
using testing::Segment;

constexpr uint64_t kMemorySize = 1 << 20;

class QueueTest : public ::testing::Test {
 protected:
  QueueTest()
      : memory_(std::move(GuestMemory::CreateAnonymous(kMemorySize).value())),
        driver_(memory_, 16),
        queue_(driver_.QueueState()) {}

  // Pops and expects an Error whose message contains what.
  void ExpectChainError(const std::string& what) {
    auto chain = queue_.Pop(memory_);
    ASSERT_FALSE(chain) << "expected an error containing '" << what << "'";
    EXPECT_NE(chain.error().message.find(what), std::string::npos) << chain.error().message;
  }

  GuestMemory memory_;
  FakeDriver driver_;
  Virtqueue queue_;
};

TEST_F(QueueTest, EmptyQueuePopsNothing) {
  auto chain = queue_.Pop(memory_);
  ASSERT_TRUE(chain) << chain.error().message;
  EXPECT_FALSE(chain->has_value());
}

TEST_F(QueueTest, PopsReadableThenWritableBuffersAndReturnsThemUsed) {
  const uint64_t a = driver_.Alloc(16), b = driver_.Alloc(100), c = driver_.Alloc(1);
  const Segment chain[] = {{a, 16, false}, {b, 100, false}, {c, 1, true}};
  const uint16_t head = driver_.AddChain(chain).value();

  auto popped = queue_.Pop(memory_);
  ASSERT_TRUE(popped && popped->has_value());
  const DescriptorChain& got = **popped;
  EXPECT_EQ(got.head, head);
  ASSERT_EQ(got.readable.size(), 2u);
  ASSERT_EQ(got.writable.size(), 1u);
  EXPECT_EQ(got.readable[1].addr, b);
  EXPECT_EQ(got.ReadableBytes(), 116u);
  EXPECT_EQ(got.WritableBytes(), 1u);
  EXPECT_FALSE(queue_.Pop(memory_)->has_value());  // consumed

  ASSERT_TRUE(queue_.PushUsed(memory_, got.head, 1));
  EXPECT_EQ(driver_.UsedIdx().value(), 1);
  EXPECT_EQ(driver_.Used(0)->id, head);
  EXPECT_EQ(driver_.Used(0)->len, 1u);
}

TEST_F(QueueTest, WrapsAroundTheRingAndTheSixteenBitIndex) {
  queue_.state().next_avail = 65530;
  queue_.state().next_used = 65530;
  ASSERT_TRUE(driver_.SetAvailIdx(65530));
  const uint64_t buffer = driver_.Alloc(8);
  for (int i = 0; i < 12; ++i) {
    const Segment one[] = {{buffer, 8, true}};
    ASSERT_TRUE(driver_.AddChain(one));
    auto chain = queue_.Pop(memory_);
    ASSERT_TRUE(chain && chain->has_value()) << i;
    ASSERT_TRUE(queue_.PushUsed(memory_, (*chain)->head, 8));
  }
  EXPECT_EQ(queue_.state().next_avail, 6);
  EXPECT_EQ(driver_.UsedIdx().value(), 6);
}

TEST_F(QueueTest, PopsIndirectChains) {
  const uint64_t a = driver_.Alloc(16), b = driver_.Alloc(512), c = driver_.Alloc(1);
  const Segment chain[] = {{a, 16, false}, {b, 512, true}, {c, 1, true}};
  ASSERT_TRUE(driver_.AddIndirectChain(chain));
  auto popped = queue_.Pop(memory_);
  ASSERT_TRUE(popped && popped->has_value()) << (popped ? "" : popped.error().message);
  EXPECT_EQ((*popped)->readable.size(), 1u);
  EXPECT_EQ((*popped)->writable.size(), 2u);
  EXPECT_EQ((*popped)->WritableBytes(), 513u);
}

TEST_F(QueueTest, ValidateRefusesBadSizesAlignmentAndRingsOutsideMemory) {
  EXPECT_TRUE(queue_.Validate(memory_, kMaxQueueSize));
  for (uint16_t size : {0, 3, 512}) {
    Virtqueue bad(driver_.QueueState());
    bad.state().size = size;
    EXPECT_FALSE(bad.Validate(memory_, kMaxQueueSize)) << size;
  }
  Virtqueue misaligned(driver_.QueueState());
  misaligned.state().desc_addr += 8;
  EXPECT_FALSE(misaligned.Validate(memory_, kMaxQueueSize));
  Virtqueue outside(driver_.QueueState());
  outside.state().used_addr = kMemorySize - 8;
  auto status = outside.Validate(memory_, kMaxQueueSize);
  ASSERT_FALSE(status);
  EXPECT_NE(status.error().message.find("used ring"), std::string::npos);
  Virtqueue wrapping(driver_.QueueState());
  wrapping.state().avail_addr = ~uint64_t{1};
  EXPECT_FALSE(wrapping.Validate(memory_, kMaxQueueSize));
}

TEST_F(QueueTest, RefusesAnAvailableIndexMovedPastTheQueueSize) {
  ASSERT_TRUE(driver_.SetAvailIdx(17));
  ExpectChainError("more than the queue size");
}

TEST_F(QueueTest, RefusesAHeadOutsideTheTable) {
  ASSERT_TRUE(driver_.Publish(16));
  ExpectChainError("outside a table of 16");
}

TEST_F(QueueTest, RefusesANextIndexOutsideTheTable) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, driver_.Alloc(8), 8, kDescNext, 40));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("index 40 is outside");
}

TEST_F(QueueTest, RefusesLoopingChains) {
  const uint64_t buffer = driver_.Alloc(8);
  ASSERT_TRUE(driver_.WriteDescriptor(0, buffer, 8, kDescNext, 1));
  ASSERT_TRUE(driver_.WriteDescriptor(1, buffer, 8, kDescNext, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("longer than the queue size");
}

TEST_F(QueueTest, RefusesASelfLoop) {
  ASSERT_TRUE(driver_.WriteDescriptor(3, driver_.Alloc(8), 8, kDescNext, 3));
  ASSERT_TRUE(driver_.Publish(3));
  ExpectChainError("longer than the queue size");
}

TEST_F(QueueTest, RefusesBuffersOutsideGuestMemory) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, kMemorySize - 4, 8, 0, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("outside guest memory");
}

TEST_F(QueueTest, RefusesBuffersWhoseEndWraps) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, ~uint64_t{0} - 4, 16, 0, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("overflows");
}

TEST_F(QueueTest, RefusesZeroLengthDescriptors) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, driver_.Alloc(8), 0, 0, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("zero-length");
}

TEST_F(QueueTest, RefusesReadableAfterWritable) {
  const uint64_t a = driver_.Alloc(8), b = driver_.Alloc(8);
  const Segment chain[] = {{a, 8, true}, {b, 8, false}};
  ASSERT_TRUE(driver_.AddChain(chain));
  ExpectChainError("device-readable descriptor after a device-writable one");
}

TEST_F(QueueTest, RefusesNestedIndirectTables) {
  const uint64_t inner = driver_.Alloc(16);
  const uint64_t table = driver_.Alloc(16);
  ASSERT_TRUE(driver_.WriteDescriptor(0, inner, 16, kDescIndirect, 0, table));
  ASSERT_TRUE(driver_.WriteDescriptor(0, table, 16, kDescIndirect, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("inside an indirect table");
}

TEST_F(QueueTest, RefusesIndirectWithNext) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, driver_.Alloc(16), 16, kDescIndirect | kDescNext, 1));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("also has the NEXT flag");
}

TEST_F(QueueTest, RefusesBadIndirectTableLengths) {
  const uint64_t table = driver_.Alloc(16 * 32);
  for (uint32_t len : {0u, 8u, 24u, 16u * 17}) {  // 17 entries: more than the queue size
    Virtqueue queue(driver_.QueueState());
    ASSERT_TRUE(driver_.WriteDescriptor(0, table, len, kDescIndirect, 0));
    ASSERT_TRUE(driver_.Publish(0));
    auto chain = queue.Pop(memory_);
    EXPECT_FALSE(chain) << len;
    ASSERT_TRUE(driver_.SetAvailIdx(0));
  }
}

TEST_F(QueueTest, RefusesIndirectTablesOutsideMemory) {
  ASSERT_TRUE(driver_.WriteDescriptor(0, kMemorySize - 16, 32, kDescIndirect, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("indirect table");
}

TEST_F(QueueTest, RefusesLoopsInsideIndirectTables) {
  const uint64_t table = driver_.Alloc(32);
  const uint64_t buffer = driver_.Alloc(8);
  ASSERT_TRUE(driver_.WriteDescriptor(0, buffer, 8, kDescNext, 1, table));
  ASSERT_TRUE(driver_.WriteDescriptor(1, buffer, 8, kDescNext, 0, table));
  ASSERT_TRUE(driver_.WriteDescriptor(0, table, 32, kDescIndirect, 0));
  ASSERT_TRUE(driver_.Publish(0));
  ExpectChainError("longer than the queue size");
}

TEST_F(QueueTest, BufferCursorReadsAndWritesAcrossBuffers) {
  const uint64_t a = driver_.Alloc(3), b = driver_.Alloc(5);
  const Buffer buffers[] = {{a, 3, true}, {b, 5, true}};
  BufferCursor writer(memory_, buffers);
  EXPECT_EQ(writer.Remaining(), 8u);
  const uint8_t data[] = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(writer.Write(data));
  EXPECT_EQ(writer.Remaining(), 2u);
  EXPECT_FALSE(writer.Write(data));  // only 2 bytes left
  EXPECT_EQ(driver_.ReadBytes(b, 3).value(), (std::vector<uint8_t>{4, 5, 6}));

  BufferCursor reader(memory_, buffers);
  uint8_t back[6];
  ASSERT_TRUE(reader.Read(back));
  EXPECT_EQ(std::vector<uint8_t>(back, back + 6), std::vector<uint8_t>(data, data + 6));
}

// Random bytes in the descriptor table and rings: every Pop ends, with an Error or with a
// chain whose buffers all lie in guest memory.
TEST_F(QueueTest, RandomRingContentsNeverYieldBuffersOutsideMemory) {
  std::mt19937_64 random(42);
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> garbage(0x1000 + 64);
    for (uint8_t& byte : garbage) byte = static_cast<uint8_t>(random());
    // Keep addresses small half the time so some chains are valid.
    if (round % 2 == 0) {
      for (size_t d = 0; d < 16; ++d) {
        garbage[d * 16 + 2] &= 0x0f;
        for (size_t k = 3; k < 8; ++k) garbage[d * 16 + k] = 0;
        garbage[d * 16 + 9] &= 0x0f;
        garbage[d * 16 + 10] = garbage[d * 16 + 11] = 0;
        garbage[d * 16 + 14] &= 0x0f;
        garbage[d * 16 + 15] = 0;
      }
    }
    ASSERT_TRUE(memory_.Write(driver_.desc_addr(), std::span(garbage).first(256)));
    ASSERT_TRUE(memory_.Write(driver_.avail_addr(), std::span(garbage).subspan(256, 38)));
    Virtqueue queue(driver_.QueueState());
    for (int pops = 0; pops < 20; ++pops) {
      auto chain = queue.Pop(memory_);
      if (!chain || !chain->has_value()) break;
      for (const auto* list : {&(*chain)->readable, &(*chain)->writable}) {
        for (const Buffer& buffer : *list) {
          ASSERT_GT(buffer.len, 0u);
          ASSERT_TRUE(memory_.Slice(buffer.addr, buffer.len));
        }
      }
    }
  }
}

}  // namespace
}  // namespace tartarus::vmm::virtio

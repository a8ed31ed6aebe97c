// tartarus-vmm (Tartarus's KVM microVM monitor): tests for guest memory bounds.
#include "vmm/guest_memory.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <string>

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;

TEST(GuestMemoryTest, ReadsBackWhatWasWritten) {
  auto memory = GuestMemory::CreateAnonymous(16 * kPage);
  ASSERT_TRUE(memory) << memory.error().message;
  EXPECT_EQ(memory->TotalSize(), 16 * kPage);
  ASSERT_TRUE(memory->WriteObject<uint64_t>(0x1234, 0x1122334455667788));
  auto value = memory->ReadObject<uint64_t>(0x1234);
  ASSERT_TRUE(value);
  EXPECT_EQ(*value, 0x1122334455667788u);
  auto fresh = memory->ReadObject<uint32_t>(0x8000);
  ASSERT_TRUE(fresh);
  EXPECT_EQ(*fresh, 0u);  // anonymous memory starts zeroed
}

TEST(GuestMemoryTest, RefusesOutOfRangeAccesses) {
  auto memory = GuestMemory::CreateAnonymous(4 * kPage);
  ASSERT_TRUE(memory);
  std::array<uint8_t, 8> buffer{};
  for (uint64_t addr : std::initializer_list<uint64_t>{4 * kPage, 4 * kPage - 4, uint64_t{1} << 40,
                                                       UINT64_MAX - 2}) {
    auto read = memory->Read(addr, buffer);
    ASSERT_FALSE(read) << std::hex << addr;
    EXPECT_EQ(read.error().code, ErrorCode::kInvalidArgument);
    EXPECT_FALSE(memory->Write(addr, buffer)) << std::hex << addr;
    EXPECT_FALSE(memory->Slice(addr, buffer.size())) << std::hex << addr;
  }
  auto overflow = memory->Slice(UINT64_MAX - 2, 8);
  ASSERT_FALSE(overflow);
  EXPECT_THAT(overflow.error().message, HasSubstr("overflows"));
  auto outside = memory->Read(4 * kPage, buffer);
  EXPECT_THAT(outside.error().message, HasSubstr("outside guest memory"));
  EXPECT_FALSE(memory->Slice(0, 4 * kPage + 1));
  EXPECT_FALSE(memory->Fill(kPage, UINT64_MAX, 0));
}

TEST(GuestMemoryTest, AcceptsAccessesReachingExactlyTheEnd) {
  auto memory = GuestMemory::CreateAnonymous(4 * kPage);
  ASSERT_TRUE(memory);
  auto whole = memory->Slice(0, 4 * kPage);
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->size(), 4 * kPage);
  EXPECT_TRUE(memory->WriteObject<uint32_t>(4 * kPage - 4, 7));
  EXPECT_TRUE(memory->Slice(4 * kPage, 0));
}

TEST(GuestMemoryTest, AccessesMustStayInsideOneRegion) {
  auto memory = GuestMemory::Create(
      {{.guest_addr = 0, .size = 2 * kPage}, {.guest_addr = 4 * kPage, .size = 2 * kPage}});
  ASSERT_TRUE(memory) << memory.error().message;
  EXPECT_EQ(memory->regions().size(), 2u);
  EXPECT_TRUE(memory->WriteObject<uint64_t>(5 * kPage, 1));
  EXPECT_FALSE(memory->WriteObject<uint64_t>(3 * kPage, 1));      // in the hole
  EXPECT_FALSE(memory->WriteObject<uint64_t>(2 * kPage - 4, 1));  // runs into the hole
  EXPECT_FALSE(memory->Slice(kPage, 4 * kPage));                  // spans both regions
}

TEST(GuestMemoryTest, RefusesBadRegionSpecs) {
  EXPECT_FALSE(GuestMemory::Create({}));
  EXPECT_FALSE(GuestMemory::Create({{.guest_addr = 0, .size = 0}}));
  EXPECT_FALSE(GuestMemory::Create({{.guest_addr = 0, .size = 100}}));
  EXPECT_FALSE(GuestMemory::Create({{.guest_addr = 10, .size = kPage}}));
  EXPECT_FALSE(GuestMemory::Create({{.guest_addr = UINT64_MAX - kPage + 1, .size = 2 * kPage}}));
  auto overlap = GuestMemory::Create(
      {{.guest_addr = 2 * kPage, .size = 2 * kPage}, {.guest_addr = 0, .size = 3 * kPage}});
  ASSERT_FALSE(overlap);
  EXPECT_THAT(overlap.error().message, HasSubstr("overlaps"));
}

TEST(GuestMemoryTest, FileBackedRegionsAreCopyOnWrite) {
  // The shape snapshots will use: MAP_PRIVATE of a memory file.
  char path[] = "/tmp/vmm-memory-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  std::string content(2 * kPage, 'x');
  content[kPage] = 'y';
  ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  {
    auto memory = GuestMemory::Create(
        {{.guest_addr = 0, .size = kPage, .backing = {.fd = fd, .offset = kPage}}});
    ASSERT_TRUE(memory) << memory.error().message;
    auto first = memory->ReadObject<char>(0);
    ASSERT_TRUE(first);
    EXPECT_EQ(*first, 'y');
    ASSERT_TRUE(memory->WriteObject<char>(0, 'z'));
  }
  char on_disk = 0;
  ASSERT_EQ(::pread(fd, &on_disk, 1, kPage), 1);
  EXPECT_EQ(on_disk, 'y');  // the guest's write stayed private
  ::close(fd);
}

}  // namespace
}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the bzImage setup-header parser,
// loader and the zero page it leads to.
#include "vmm/bzimage.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "vmm/boot.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMemory = 64 << 20;
constexpr uint64_t kKernelBytes = 0x800;

template <class T>
void Set(std::vector<uint8_t>& image, uint64_t offset, T value) {
  std::memcpy(image.data() + offset, &value, sizeof(T));
}

// A minimal valid bzImage: one setup sector after the boot sector, 2 KiB of kernel.
std::vector<uint8_t> MakeBzImage() {
  namespace sh = setup_header;
  std::vector<uint8_t> image(0x400 + kKernelBytes, 0);
  image[sh::kSetupSects] = 1;
  Set<uint32_t>(image, sh::kSysSize, kKernelBytes / 16);
  Set<uint16_t>(image, sh::kBootFlag, 0xaa55);
  image[sh::kJump] = 0xeb;
  image[sh::kJump + 1] = 0x6a;  // header ends at 0x26c
  std::memcpy(image.data() + sh::kHeader, "HdrS", 4);
  Set<uint16_t>(image, sh::kVersion, 0x020f);
  image[sh::kLoadFlags] = kLoadedHigh;
  Set<uint32_t>(image, sh::kInitrdAddrMax, 0x7fffffff);
  Set<uint32_t>(image, sh::kKernelAlignment, 0x200000);
  image[sh::kRelocatableKernel] = 1;
  Set<uint16_t>(image, sh::kXLoadFlags, kXlfKernel64);
  Set<uint32_t>(image, sh::kCmdlineSize, 64);
  Set<uint64_t>(image, sh::kPrefAddress, 0x1000000);
  Set<uint32_t>(image, sh::kInitSize, 0x100000);
  for (uint64_t i = 0; i < kKernelBytes; ++i) image[0x400 + i] = static_cast<uint8_t>(i * 7);
  return image;
}

void ExpectRefused(const std::vector<uint8_t>& image, const std::string& what) {
  auto header = ParseBzImageHeader(image);
  ASSERT_FALSE(header) << "expected refusal: " << what;
  EXPECT_EQ(header.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(header.error().message, HasSubstr("bzImage: "));
  EXPECT_THAT(header.error().message, HasSubstr(what));
}

TEST(BzImageTest, ParsesTheSetupHeader) {
  auto header = ParseBzImageHeader(MakeBzImage());
  ASSERT_TRUE(header) << header.error().message;
  EXPECT_EQ(header->version, 0x020f);
  EXPECT_EQ(header->setup_size, 0x400u);
  EXPECT_EQ(header->kernel_size, kKernelBytes);
  EXPECT_EQ(header->header_end, 0x26cu);
  EXPECT_EQ(header->pref_address, 0x1000000u);
  EXPECT_EQ(header->init_size, 0x100000u);
  EXPECT_EQ(header->cmdline_size, 64u);
  EXPECT_TRUE(header->relocatable);
  // setup_sects 0 means 4 (boot.rst).
  std::vector<uint8_t> four = MakeBzImage();
  four[setup_header::kSetupSects] = 0;
  four.insert(four.begin() + 0x400, 0x600, 0);
  header = ParseBzImageHeader(four);
  ASSERT_TRUE(header) << header.error().message;
  EXPECT_EQ(header->setup_size, 0xa00u);
}

TEST(BzImageTest, RefusesMalformedHeaders) {
  namespace sh = setup_header;
  std::vector<uint8_t> image = MakeBzImage();
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.begin() + 0x100), "truncated");
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.begin() + 0x240), "truncated");
  auto bad = image;
  Set<uint16_t>(bad, sh::kBootFlag, 0x55aa);
  ExpectRefused(bad, "bad boot flag 0x55aa");
  bad = image;
  bad[sh::kHeader] = 'X';
  ExpectRefused(bad, "HdrS");
  bad = image;
  Set<uint16_t>(bad, sh::kVersion, 0x0206);
  ExpectRefused(bad, "boot protocol 2.06 is too old");
  bad = image;
  bad[sh::kJump + 1] = 0x20;
  ExpectRefused(bad, "setup header ends at 0x222");
  bad = image;
  bad[sh::kSetupSects] = 200;
  ExpectRefused(bad, "setup_sects 200");
  bad = image;
  Set<uint32_t>(bad, sh::kSysSize, 0x10000000);
  ExpectRefused(bad, "syssize says");
  bad = image;
  bad[sh::kLoadFlags] = 0;
  ExpectRefused(bad, "LOADED_HIGH");
  bad = image;
  Set<uint16_t>(bad, sh::kXLoadFlags, 0);
  ExpectRefused(bad, "XLF_KERNEL_64");
  bad = image;
  Set<uint32_t>(bad, sh::kKernelAlignment, 0x300000);
  ExpectRefused(bad, "not a power of two");
  bad = image;
  bad.resize(0x400 + 0x100);
  Set<uint32_t>(bad, sh::kSysSize, 0x10);
  ExpectRefused(bad, "before its 64-bit entry");
}

TEST(BzImageTest, LoadsAtPrefAddressOrTheFirstAlignedAddressThatFits) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::vector<uint8_t> image = MakeBzImage();
  auto loaded = LoadBzImage(image, *memory);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(loaded->load_addr, 0x1000000u);
  EXPECT_EQ(loaded->entry, 0x1000200u);
  EXPECT_EQ(loaded->load_end, 0x1100000u);  // init_size is larger than the kernel
  EXPECT_EQ(*memory->ReadObject<uint8_t>(0x1000000 + 5), 35);

  // pref_address beyond RAM: a relocatable kernel goes to 2 MiB (aligned up from 1 MiB).
  Set<uint64_t>(image, setup_header::kPrefAddress, 0x40000000);
  loaded = LoadBzImage(image, *memory);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(loaded->load_addr, 0x200000u);
  // ... a fixed one is refused.
  image[setup_header::kRelocatableKernel] = 0;
  loaded = LoadBzImage(image, *memory);
  ASSERT_FALSE(loaded);
  EXPECT_THAT(loaded.error().message, HasSubstr("guest RAM below 4 GiB ends at"));
  // init_size larger than all of RAM.
  image = MakeBzImage();
  Set<uint32_t>(image, setup_header::kInitSize, 0x80000000);
  EXPECT_FALSE(LoadBzImage(image, *memory));
}

TEST(BzImageTest, ZeroPageCopiesTheHeaderAndAddsTheLoadersFields) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::vector<uint8_t> image = MakeBzImage();
  std::vector<uint8_t> initrd(3000, 0x5a);
  auto plan = PrepareLinuxBoot(image, {.cmdline = "console=ttyS0", .initrd = initrd}, *memory);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->format, KernelFormat::kBzImage);
  EXPECT_EQ(plan->mode, EntryMode::kLongMode64);
  EXPECT_EQ(plan->entry, 0x1000200u);
  EXPECT_EQ(plan->initrd_addr, (kMemory - 3000) & ~0xfffull);
  const uint64_t zp = kZeroPageAddr;
  EXPECT_EQ(*memory->ReadObject<uint16_t>(zp + setup_header::kVersion), 0x020f);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(zp + setup_header::kPrefAddress), 0x1000000u);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + setup_header::kCmdlineSize), 64u);
  EXPECT_EQ(*memory->ReadObject<uint8_t>(zp + setup_header::kTypeOfLoader), 0xff);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + setup_header::kCmdLinePtr), kCmdlineAddr);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + setup_header::kRamdiskImage), plan->initrd_addr);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + setup_header::kRamdiskSize), 3000u);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(zp + zero_page::kAcpiRsdpAddr), kRsdpAddr);
  EXPECT_EQ(*memory->ReadObject<uint8_t>(zp + zero_page::kE820Entries), 2);

  // The kernel's cmdline_size bounds the command line.
  auto too_long = PrepareLinuxBoot(image, {.cmdline = std::string(65, 'x')}, *memory);
  ASSERT_FALSE(too_long);
  EXPECT_THAT(too_long.error().message, HasSubstr("cmdline_size 64"));
  // initrd_addr_max bounds the initrd: below the kernel's footprint it cannot go.
  Set<uint32_t>(image, setup_header::kInitrdAddrMax, 0xffffff);
  auto low_limit = PrepareLinuxBoot(image, {.initrd = initrd}, *memory);
  ASSERT_FALSE(low_limit);
  EXPECT_THAT(low_limit.error().message, HasSubstr("initrd of 3000 bytes does not fit"));
}

TEST(BzImageTest, SurvivesRandomCorruption) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  const std::vector<uint8_t> valid = MakeBzImage();
  std::mt19937 random(4);
  int loaded = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> image = valid;
    const int flips = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < flips; ++i) {
      image[0x1f0 + random() % 0x80] = static_cast<uint8_t>(random());
    }
    if (random() % 8 == 0) image.resize(random() % image.size());
    // Must return a value or an Error, never crash or read out of bounds (ASan build).
    auto plan = PrepareLinuxBoot(image, {.cmdline = "x", .initrd = valid}, *memory);
    if (plan) ++loaded;
  }
  EXPECT_GT(loaded, 0);
}

}  // namespace
}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the ELF loader and boot structures.
#include "vmm/boot.h"

#include <elf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kMemory = 16 << 20;

struct Segment {
  uint64_t paddr;
  std::vector<uint8_t> bytes;
  uint64_t memsz = 0;  // 0: bytes.size()
};

// An ELF64 x86-64 executable: header, program headers, then each segment's bytes.
std::vector<uint8_t> MakeElf(const std::vector<Segment>& segments, uint64_t entry) {
  Elf64_Ehdr header{};
  std::memcpy(header.e_ident, ELFMAG, SELFMAG);
  header.e_ident[EI_CLASS] = ELFCLASS64;
  header.e_ident[EI_DATA] = ELFDATA2LSB;
  header.e_ident[EI_VERSION] = EV_CURRENT;
  header.e_type = ET_EXEC;
  header.e_machine = EM_X86_64;
  header.e_version = EV_CURRENT;
  header.e_entry = entry;
  header.e_phoff = sizeof(Elf64_Ehdr);
  header.e_ehsize = sizeof(Elf64_Ehdr);
  header.e_phentsize = sizeof(Elf64_Phdr);
  header.e_phnum = static_cast<uint16_t>(segments.size());
  std::vector<uint8_t> image(sizeof(header) + segments.size() * sizeof(Elf64_Phdr));
  std::memcpy(image.data(), &header, sizeof(header));
  for (size_t i = 0; i < segments.size(); ++i) {
    Elf64_Phdr phdr{};
    phdr.p_type = PT_LOAD;
    phdr.p_flags = PF_R | PF_X;
    phdr.p_offset = image.size();
    phdr.p_vaddr = phdr.p_paddr = segments[i].paddr;
    phdr.p_filesz = segments[i].bytes.size();
    phdr.p_memsz = segments[i].memsz ? segments[i].memsz : segments[i].bytes.size();
    image.insert(image.end(), segments[i].bytes.begin(), segments[i].bytes.end());
    std::memcpy(image.data() + sizeof(header) + i * sizeof(Elf64_Phdr), &phdr, sizeof(phdr));
  }
  return image;
}

Elf64_Phdr* Phdr(std::vector<uint8_t>& image, size_t index) {
  return reinterpret_cast<Elf64_Phdr*>(image.data() + sizeof(Elf64_Ehdr) +
                                       index * sizeof(Elf64_Phdr));
}
Elf64_Ehdr* Header(std::vector<uint8_t>& image) {
  return reinterpret_cast<Elf64_Ehdr*>(image.data());
}

std::vector<uint8_t> ValidElf() {
  return MakeElf({{0x100000, {0xf4, 0xeb, 0xfd}}, {0x200000, {1, 2, 3, 4}, 0x2000}}, 0x100000);
}

class ElfLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto memory = GuestMemory::CreateAnonymous(kMemory);
    ASSERT_TRUE(memory);
    memory_.emplace(std::move(*memory));
  }
  // Loads and expects a kInvalidArgument error mentioning `what`.
  void ExpectRefused(const std::vector<uint8_t>& image, const std::string& what) {
    auto loaded = LoadElf64(image, *memory_);
    ASSERT_FALSE(loaded) << "expected refusal: " << what;
    EXPECT_EQ(loaded.error().code, ErrorCode::kInvalidArgument);
    EXPECT_THAT(loaded.error().message, HasSubstr(what));
  }
  std::optional<GuestMemory> memory_;
};

TEST_F(ElfLoaderTest, LoadsSegmentsAtTheirPhysicalAddressesAndZeroesTheRest) {
  ASSERT_TRUE(memory_->Fill(0x200000, 0x2000, 0xcc));  // stale bytes the loader must clear
  auto loaded = LoadElf64(ValidElf(), *memory_);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(loaded->entry, 0x100000u);
  EXPECT_EQ(loaded->load_start, 0x100000u);
  EXPECT_EQ(loaded->load_end, 0x202000u);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(0x100000), 0xf4);
  EXPECT_EQ(*memory_->ReadObject<uint32_t>(0x200000), 0x04030201u);
  EXPECT_EQ(*memory_->ReadObject<uint32_t>(0x201ffc), 0u);
}

TEST_F(ElfLoaderTest, RefusesTruncatedImages) {
  std::vector<uint8_t> image = ValidElf();
  ExpectRefused({}, "bad magic");
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.begin() + 8), "truncated");
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.begin() + 20), "truncated");
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.begin() + sizeof(Elf64_Ehdr) + 10),
                "program headers");
  ExpectRefused(std::vector<uint8_t>(image.begin(), image.end() - 2), "end past the file");
}

TEST_F(ElfLoaderTest, RefusesWrongClassMachineTypeAndHeaderSizes) {
  std::vector<uint8_t> image = ValidElf();
  image[EI_CLASS] = ELFCLASS32;
  ExpectRefused(image, "need ELF64");
  image = ValidElf();
  image[EI_DATA] = ELFDATA2MSB;
  ExpectRefused(image, "little-endian");
  image = ValidElf();
  Header(image)->e_machine = EM_AARCH64;
  ExpectRefused(image, "wrong machine");
  image = ValidElf();
  Header(image)->e_type = ET_DYN;
  ExpectRefused(image, "not an executable");
  image = ValidElf();
  Header(image)->e_phentsize = 10;
  ExpectRefused(image, "program header size");
  image = ValidElf();
  Header(image)->e_phnum = 0;
  ExpectRefused(image, "no program headers");
  image = ValidElf();
  Header(image)->e_phoff = UINT64_MAX - 8;
  ExpectRefused(image, "end past the file");
}

TEST_F(ElfLoaderTest, RefusesBadSegments) {
  std::vector<uint8_t> image = ValidElf();
  Phdr(image, 0)->p_offset = UINT64_MAX - 1;  // offset + size overflows
  ExpectRefused(image, "end past the file");
  image = ValidElf();
  Phdr(image, 1)->p_filesz = 0x3000;
  ExpectRefused(image, "file size exceeds memory size");
  image = ValidElf();
  Phdr(image, 1)->p_paddr = 0x100002;
  ExpectRefused(image, "overlaps the segment at 0x100000");
  image = ValidElf();
  Phdr(image, 1)->p_paddr = kMemory - 0x1000;
  ExpectRefused(image, "does not fit in guest memory");
  image = ValidElf();
  Phdr(image, 1)->p_paddr = 1ull << 40;
  ExpectRefused(image, "does not fit in guest memory");
  image = ValidElf();
  Phdr(image, 1)->p_paddr = UINT64_MAX - 0x100;
  ExpectRefused(image, "wraps around");
  image = ValidElf();
  Phdr(image, 0)->p_paddr = 0x7000;  // the zero page
  ExpectRefused(image, "below 1 MiB");
  image = ValidElf();
  Header(image)->e_entry = 0x300000;
  ExpectRefused(image, "entry point 0x300000 is not inside a loaded segment");
  image = ValidElf();
  Phdr(image, 0)->p_type = PT_NOTE;
  Phdr(image, 1)->p_type = PT_DYNAMIC;
  ExpectRefused(image, "no loadable");
}

TEST_F(ElfLoaderTest, SurvivesRandomCorruption) {
  // Any byte of a kernel image is outside input: flipping bytes must give an Error or a load,
  // never a crash (this test earns its keep under ASan/UBSan).
  std::mt19937 random(42);
  const std::vector<uint8_t> valid = ValidElf();
  int refused = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> image = valid;
    int flips = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < flips; ++i) {
      size_t at = random() % (sizeof(Elf64_Ehdr) + 2 * sizeof(Elf64_Phdr));
      image[at] = static_cast<uint8_t>(random());
    }
    if (random() % 8 == 0) image.resize(random() % image.size());
    if (!LoadElf64(image, *memory_)) ++refused;
  }
  EXPECT_GT(refused, 0);
}

TEST(BootStructuresTest, IdentityMapsTheFirstFourGibWithLargePages) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  ASSERT_TRUE(WritePageTables(*memory));
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kPml4Addr), kPdptAddr | 0x3);
  for (uint64_t gib = 0; gib < 4; ++gib) {
    EXPECT_EQ(*memory->ReadObject<uint64_t>(kPdptAddr + gib * 8), (kPdAddr + gib * 0x1000) | 0x3);
  }
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kPdAddr), 0x83u);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kPdAddr + 8), 0x200083u);
  // The last 2 MiB page below 4 GiB.
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kPdAddr + 3 * 0x1000 + 511 * 8), 0xffe00083u);
}

TEST(BootStructuresTest, ZeroPageCarriesCommandLineAndE820Map) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::vector<E820Entry> e820 = BuildE820Map(*memory);
  ASSERT_EQ(e820.size(), 2u);
  EXPECT_EQ(e820[0].size, kEbdaStart);
  EXPECT_EQ(e820[1].addr, kHighMemStart);
  EXPECT_EQ(e820[1].size, kMemory - kHighMemStart);
  ASSERT_TRUE(WriteBootParams(*memory, "console=ttyS0 quiet", e820));
  const uint64_t zp = kZeroPageAddr;
  EXPECT_EQ(*memory->ReadObject<uint16_t>(zp + zero_page::kBootFlag), 0xaa55);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + zero_page::kHeader), 0x53726448u);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + zero_page::kCmdLinePtr), kCmdlineAddr);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + zero_page::kCmdlineSize), 19u);
  std::vector<uint8_t> cmdline(20);
  ASSERT_TRUE(memory->Read(kCmdlineAddr, cmdline));
  EXPECT_EQ(std::string(reinterpret_cast<char*>(cmdline.data())), "console=ttyS0 quiet");
  EXPECT_EQ(*memory->ReadObject<uint8_t>(zp + zero_page::kE820Entries), 2);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(zp + zero_page::kE820Table + 20), kHighMemStart);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(zp + zero_page::kE820Table + 20 + 16), kE820Ram);

  auto too_long = WriteBootParams(*memory, std::string(kCmdlineMaxSize, 'a'), e820);
  ASSERT_FALSE(too_long);
  EXPECT_THAT(too_long.error().message, HasSubstr("longer than"));
  EXPECT_FALSE(WriteBootParams(*memory, std::string("a\0b", 3), e820));
}

TEST(BootStructuresTest, LargeGuestsSkipTheMmioGap) {
  std::vector<RegionSpec> layout = GuestRamLayout(kMmioGapStart + (256 << 20));
  ASSERT_EQ(layout.size(), 2u);
  EXPECT_EQ(layout[0].size, kMmioGapStart);
  EXPECT_EQ(layout[1].guest_addr, kMmioGapEnd);
  EXPECT_EQ(layout[1].size, 256u << 20);
  auto memory = GuestMemory::Create(layout);
  ASSERT_TRUE(memory) << memory.error().message;
  std::vector<E820Entry> e820 = BuildE820Map(*memory);
  ASSERT_EQ(e820.size(), 3u);
  EXPECT_EQ(e820[2].addr, kMmioGapEnd);
  EXPECT_EQ(GuestRamLayout(64 << 20).size(), 1u);
}

TEST(BootStructuresTest, LongModeStateFollowsTheLinuxBootProtocol) {
  kvm_sregs initial{};
  initial.apic_base = 0xfee00900;
  VcpuBootState state = BuildLongModeState(0x1000000, initial);
  EXPECT_EQ(state.regs.rip, 0x1000000u);
  EXPECT_EQ(state.regs.rsi, kZeroPageAddr);
  EXPECT_EQ(state.regs.rsp, kBootStackTop);
  EXPECT_EQ(state.regs.rflags & (1u << 9), 0u);  // interrupts off
  EXPECT_EQ(state.sregs.cr0 & 0x80000001u, 0x80000001u);
  EXPECT_EQ(state.sregs.cr4 & 0x20u, 0x20u);
  EXPECT_EQ(state.sregs.efer, 0x500u);
  EXPECT_EQ(state.sregs.cr3, kPml4Addr);
  EXPECT_EQ(state.sregs.cs.selector, kCodeSelector);
  EXPECT_EQ(state.sregs.cs.l, 1);
  EXPECT_EQ(state.sregs.cs.db, 0);
  EXPECT_EQ(state.sregs.cs.dpl, 0);
  EXPECT_EQ(state.sregs.cs.limit, 0xffffffffu);
  EXPECT_EQ(state.sregs.ss.selector, kDataSelector);
  EXPECT_EQ(state.sregs.ds.type, 3);
  EXPECT_EQ(state.sregs.tr.selector, kTssSelector);
  EXPECT_EQ(state.sregs.tr.type, 11);
  EXPECT_EQ(state.sregs.gdt.base, kGdtAddr);
  EXPECT_EQ(state.sregs.apic_base, 0xfee00900u);  // kept from KVM's reset state
}

TEST(BootStructuresTest, PrepareLinuxBootNamesBadFormats) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::vector<uint8_t> bzimage(0x1000, 0);
  std::memcpy(bzimage.data() + 0x202, "HdrS", 4);
  auto result = PrepareLinuxBoot(bzimage, {}, *memory);
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message, HasSubstr("bzImage: bad boot flag"));
  std::vector<uint8_t> junk(100, 0x90);
  result = PrepareLinuxBoot(junk, {}, *memory);
  ASSERT_FALSE(result);
  EXPECT_THAT(result.error().message, HasSubstr("neither an ELF"));
  auto ok = PrepareLinuxBoot(ValidElf(), {.cmdline = "console=ttyS0"}, *memory);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->mode, EntryMode::kLongMode64);
  EXPECT_EQ(ok->entry, 0x100000u);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kGdtAddr + 8) >> 40 & 0xff, 0x9bu);
  // ACPI tables are always there, and the zero page points at them.
  EXPECT_EQ(ok->rsdp_addr, kRsdpAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kZeroPageAddr + zero_page::kAcpiRsdpAddr), kRsdpAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kRsdpAddr), 0x2052545020445352u);  // "RSD PTR "
}

TEST(BootStructuresTest, InitrdGoesHighPageAlignedAndBoundsChecked) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::vector<uint8_t> initrd(5000, 0xab);
  auto plan = PrepareLinuxBoot(ValidElf(), {.cmdline = "", .initrd = initrd}, *memory);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->initrd_addr % 0x1000, 0u);
  EXPECT_EQ(plan->initrd_addr, (kMemory - initrd.size()) & ~0xfffull);
  EXPECT_EQ(plan->initrd_size, initrd.size());
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kZeroPageAddr + zero_page::kRamdiskImage),
            plan->initrd_addr);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kZeroPageAddr + zero_page::kRamdiskSize), 5000u);
  EXPECT_EQ(*memory->ReadObject<uint8_t>(plan->initrd_addr + 4999), 0xab);

  // Too big to fit above the kernel (which ends at 0x202000).
  std::vector<uint8_t> huge(kMemory - 0x200000, 1);
  auto refused = PlaceInitrd(*memory, huge, 0x202000, UINT64_MAX);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, HasSubstr("does not fit"));
  // A limit below the kernel (bzImage initrd_addr_max) is refused too, not wrapped around.
  refused = PlaceInitrd(*memory, initrd, 0x202000, 0x1000);
  ASSERT_FALSE(refused);
  // Exactly fitting works.
  auto exact = PlaceInitrd(*memory, std::vector<uint8_t>(0x1000, 2), kMemory - 0x1000, kMemory);
  ASSERT_TRUE(exact) << exact.error().message;
  EXPECT_EQ(*exact, kMemory - 0x1000);
}

}  // namespace
}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the PVH note parser, hvm_start_info
// and the 32-bit entry state.
#include "vmm/pvh.h"

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

struct Note {
  std::string name;  // without the NUL
  uint32_t type;
  std::vector<uint8_t> desc;
};

std::vector<uint8_t> NoteBytes(const std::vector<Note>& notes) {
  std::vector<uint8_t> out;
  auto put32 = [&out](uint32_t value) {
    out.insert(out.end(), reinterpret_cast<uint8_t*>(&value),
               reinterpret_cast<uint8_t*>(&value) + 4);
  };
  for (const Note& note : notes) {
    put32(static_cast<uint32_t>(note.name.size() + 1));
    put32(static_cast<uint32_t>(note.desc.size()));
    put32(note.type);
    out.insert(out.end(), note.name.begin(), note.name.end());
    out.push_back(0);
    while (out.size() % 4) out.push_back(0);
    out.insert(out.end(), note.desc.begin(), note.desc.end());
    while (out.size() % 4) out.push_back(0);
  }
  return out;
}

std::vector<uint8_t> Le(uint64_t value, size_t bytes) {
  std::vector<uint8_t> out(bytes);
  for (size_t i = 0; i < bytes && i < 8; ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
  return out;
}

// An ELF64 with one PT_LOAD at 1 MiB (a HLT loop) and one PT_NOTE holding `notes`.
std::vector<uint8_t> MakePvhElf(const std::vector<uint8_t>& notes) {
  Elf64_Ehdr header{};
  std::memcpy(header.e_ident, ELFMAG, SELFMAG);
  header.e_ident[EI_CLASS] = ELFCLASS64;
  header.e_ident[EI_DATA] = ELFDATA2LSB;
  header.e_ident[EI_VERSION] = EV_CURRENT;
  header.e_type = ET_EXEC;
  header.e_machine = EM_X86_64;
  header.e_version = EV_CURRENT;
  header.e_entry = 0x100000;
  header.e_phoff = sizeof(Elf64_Ehdr);
  header.e_ehsize = sizeof(Elf64_Ehdr);
  header.e_phentsize = sizeof(Elf64_Phdr);
  header.e_phnum = 2;
  const uint64_t code_offset = sizeof(Elf64_Ehdr) + 2 * sizeof(Elf64_Phdr);
  const std::vector<uint8_t> code(0x100, 0xf4);
  Elf64_Phdr load{};
  load.p_type = PT_LOAD;
  load.p_offset = code_offset;
  load.p_paddr = load.p_vaddr = 0x100000;
  load.p_filesz = load.p_memsz = code.size();
  Elf64_Phdr note{};
  note.p_type = PT_NOTE;
  note.p_offset = code_offset + code.size();
  note.p_filesz = notes.size();
  note.p_align = 4;
  std::vector<uint8_t> image(code_offset);
  std::memcpy(image.data(), &header, sizeof(header));
  std::memcpy(image.data() + sizeof(header), &load, sizeof(load));
  std::memcpy(image.data() + sizeof(header) + sizeof(load), &note, sizeof(note));
  image.insert(image.end(), code.begin(), code.end());
  image.insert(image.end(), notes.begin(), notes.end());
  return image;
}

Elf64_Phdr* NotePhdr(std::vector<uint8_t>& image) {
  return reinterpret_cast<Elf64_Phdr*>(image.data() + sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr));
}

TEST(PvhNoteTest, FindsTheEntryPastOtherNotes) {
  auto image = MakePvhElf(NoteBytes({{"GNU", 3, Le(0x1234, 20)},
                                     {"Xen", 6, {'l', 'i', 'n', 'u', 'x', 0}},
                                     {"Xen", kXenElfNotePhys32Entry, Le(0x100010, 4)}}));
  auto entry = FindPvhEntry(image);
  ASSERT_TRUE(entry) << entry.error().message;
  ASSERT_TRUE(entry->has_value());
  EXPECT_EQ(**entry, 0x100010u);
  // Linux writes the entry with _ASM_PTR: 8 bytes on x86-64.
  image = MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(0x100020, 8)}}));
  entry = FindPvhEntry(image);
  ASSERT_TRUE(entry && entry->has_value());
  EXPECT_EQ(**entry, 0x100020u);
  // Type 18 from another owner is not the PVH entry.
  image = MakePvhElf(NoteBytes({{"Foo", kXenElfNotePhys32Entry, Le(0x100020, 4)}}));
  entry = FindPvhEntry(image);
  ASSERT_TRUE(entry);
  EXPECT_FALSE(entry->has_value());
}

TEST(PvhNoteTest, RefusesMalformedNotes) {
  auto expect_refused = [](std::vector<uint8_t> image, const std::string& what) {
    auto entry = FindPvhEntry(image);
    ASSERT_FALSE(entry) << what;
    EXPECT_EQ(entry.error().code, ErrorCode::kInvalidArgument);
    EXPECT_THAT(entry.error().message, HasSubstr(what));
  };
  auto image = MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(0x100010, 4)}}));
  auto bad = image;
  NotePhdr(bad)->p_filesz = 0x10000;
  expect_refused(bad, "ends past the file");
  bad = image;
  NotePhdr(bad)->p_offset = ~0ull;
  expect_refused(bad, "ends past the file");
  bad = image;  // descsz claims more than the segment holds
  std::memcpy(bad.data() + NotePhdr(bad)->p_offset + 4, "\xff\xff\xff\x7f", 4);
  expect_refused(bad, "truncated");
  bad = image;  // namesz overflowing a 32-bit sum
  std::memcpy(bad.data() + NotePhdr(bad)->p_offset, "\xfe\xff\xff\xff", 4);
  expect_refused(bad, "truncated");
  expect_refused(MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(0x1000, 2)}})),
                 "descriptor of 2 bytes");
  expect_refused(MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(1ull << 32, 8)}})),
                 "above 4 GiB");
  bad = image;
  bad.resize(40);
  expect_refused(bad, "not an ELF64");
  bad = image;
  reinterpret_cast<Elf64_Ehdr*>(bad.data())->e_phnum = 1000;
  expect_refused(bad, "program headers end past the file");
}

TEST(PvhNoteTest, SurvivesRandomCorruption) {
  const auto valid = MakePvhElf(NoteBytes({{"Xen", 6, {'l', 'i', 'n', 'u', 'x', 0}},
                                           {"Xen", kXenElfNotePhys32Entry, Le(0x100010, 4)}}));
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  std::mt19937 random(18);
  int found = 0;
  for (int round = 0; round < 3000; ++round) {
    auto image = valid;
    const int flips = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < flips; ++i) image[random() % image.size()] = static_cast<uint8_t>(random());
    auto entry = FindPvhEntry(image);
    if (entry && entry->has_value()) ++found;
    (void)PrepareLinuxBoot(image, {.cmdline = "x"}, *memory);
  }
  EXPECT_GT(found, 0);
}

TEST(PvhBootTest, PrepareLinuxBootPrefersPvhAndWritesStartInfo) {
  auto memory = GuestMemory::CreateAnonymous(kMemory);
  ASSERT_TRUE(memory);
  auto image = MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(0x100010, 4)}}));
  std::vector<uint8_t> initrd(100, 7);
  auto plan = PrepareLinuxBoot(image, {.cmdline = "console=ttyS0", .initrd = initrd}, *memory);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->mode, EntryMode::kPvh32);
  EXPECT_EQ(plan->entry, 0x100010u);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kStartInfoAddr), kHvmStartMagic);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kStartInfoAddr + 4), 1u);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kStartInfoAddr + 12), 1u);  // nr_modules
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kStartInfoAddr + 16), kModlistAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kStartInfoAddr + 24), kCmdlineAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kStartInfoAddr + 32), kRsdpAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kModlistAddr), plan->initrd_addr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kModlistAddr + 8), 100u);
  // Memory map: low RAM, the reserved BIOS/ACPI area, RAM from 1 MiB.
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kStartInfoAddr + 48), 3u);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kMemmapAddr + 24), kEbdaStart);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(kMemmapAddr + 24 + 16), kE820Reserved);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kMemmapAddr + 48), kHighMemStart);
  // The GDT's code segment is 32-bit (D set, L clear).
  const uint64_t code = *memory->ReadObject<uint64_t>(kGdtAddr + 8);
  EXPECT_EQ((code >> 53) & 3, 2u);

  // A note pointing outside the loaded kernel is refused.
  image = MakePvhElf(NoteBytes({{"Xen", kXenElfNotePhys32Entry, Le(0x300000, 4)}}));
  auto outside = PrepareLinuxBoot(image, {}, *memory);
  ASSERT_FALSE(outside);
  EXPECT_THAT(outside.error().message, HasSubstr("PVH entry 0x300000 is outside"));
}

TEST(PvhBootTest, EntryStateIsFlatProtectedModeWithoutPaging) {
  kvm_sregs initial{};
  initial.apic_base = 0xfee00900;
  VcpuBootState state = BuildPvhState(0x100010, initial);
  EXPECT_EQ(state.regs.rip, 0x100010u);
  EXPECT_EQ(state.regs.rbx, kStartInfoAddr);
  EXPECT_EQ(state.regs.rflags, 2u);
  EXPECT_EQ(state.sregs.cr0 & 1, 1u);
  EXPECT_EQ(state.sregs.cr0 & (1ull << 31), 0u);
  EXPECT_EQ(state.sregs.efer, 0u);
  EXPECT_EQ(state.sregs.cs.db, 1);
  EXPECT_EQ(state.sregs.cs.l, 0);
  EXPECT_EQ(state.sregs.cs.limit, 0xffffffffu);
  EXPECT_EQ(state.sregs.ss.base, 0u);
  EXPECT_EQ(state.sregs.ds.type, 3);
  EXPECT_EQ(state.sregs.tr.type, 11);
  EXPECT_EQ(state.sregs.apic_base, 0xfee00900u);
}

}  // namespace
}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): PVH boot.
#include "vmm/pvh.h"

#include <elf.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace tartarus::vmm {
namespace {

std::unexpected<Error> NoteError(const std::string& what) {
  return Fail(ErrorCode::kInvalidArgument, "kernel ELF notes: " + what);
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

}  // namespace

Result<std::optional<uint32_t>> FindPvhEntry(std::span<const uint8_t> elf) {
  if (elf.size() < sizeof(Elf64_Ehdr) || std::memcmp(elf.data(), ELFMAG, SELFMAG) != 0 ||
      elf[EI_CLASS] != ELFCLASS64) {
    return NoteError("not an ELF64 file");
  }
  Elf64_Ehdr header;
  std::memcpy(&header, elf.data(), sizeof(header));
  if (header.e_phentsize != sizeof(Elf64_Phdr)) return NoteError("bad program header size");
  const uint64_t table_size = uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
  if (header.e_phoff > elf.size() || table_size > elf.size() - header.e_phoff) {
    return NoteError("program headers end past the file");
  }
  for (size_t i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr phdr;
    std::memcpy(&phdr, elf.data() + header.e_phoff + i * sizeof(Elf64_Phdr), sizeof(phdr));
    if (phdr.p_type != PT_NOTE) continue;
    const std::string where = "PT_NOTE segment " + std::to_string(i);
    if (phdr.p_offset > elf.size() || phdr.p_filesz > elf.size() - phdr.p_offset) {
      return NoteError(where + " ends past the file");
    }
    // Linux's notes are 4-byte aligned even in ELF64; honour an explicit 8.
    const uint64_t align = phdr.p_align == 8 ? 8 : 4;
    std::span<const uint8_t> notes = elf.subspan(phdr.p_offset, phdr.p_filesz);
    uint64_t offset = 0;
    while (notes.size() - offset >= 12) {
      uint32_t namesz, descsz, type;
      std::memcpy(&namesz, notes.data() + offset, 4);
      std::memcpy(&descsz, notes.data() + offset + 4, 4);
      std::memcpy(&type, notes.data() + offset + 8, 4);
      const uint64_t name_at = offset + 12;
      const uint64_t desc_at = name_at + AlignUp(namesz, align);
      const uint64_t next = desc_at + AlignUp(descsz, align);
      // 32-bit sizes cannot overflow these 64-bit sums; only the bounds need checking.
      if (desc_at + descsz > notes.size()) {
        return NoteError(where + ": note at +" + std::to_string(offset) + " (name " +
                         std::to_string(namesz) + " bytes, descriptor " + std::to_string(descsz) +
                         " bytes) is truncated");
      }
      if (type == kXenElfNotePhys32Entry && namesz == 4 &&
          std::memcmp(notes.data() + name_at, "Xen", 4) == 0) {
        uint64_t entry = 0;
        if (descsz == 4) {
          uint32_t entry32;
          std::memcpy(&entry32, notes.data() + desc_at, 4);
          entry = entry32;
        } else if (descsz == 8) {
          std::memcpy(&entry, notes.data() + desc_at, 8);
        } else {
          return NoteError("XEN_ELFNOTE_PHYS32_ENTRY descriptor of " + std::to_string(descsz) +
                           " bytes (need 4 or 8)");
        }
        if (entry > 0xffffffffull) {
          char text[24];
          std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(entry));
          return NoteError(std::string("PVH entry ") + text + " is above 4 GiB");
        }
        return std::optional<uint32_t>(static_cast<uint32_t>(entry));
      }
      if (next > notes.size()) break;  // padding of the last note may be cut off
      offset = next;
    }
  }
  return std::optional<uint32_t>();
}

std::vector<E820Entry> PvhMemoryMap(const std::vector<E820Entry>& e820) {
  std::vector<E820Entry> map = e820;
  map.push_back({kEbdaStart, kHighMemStart - kEbdaStart, kE820Reserved});
  std::sort(map.begin(), map.end(),
            [](const E820Entry& a, const E820Entry& b) { return a.addr < b.addr; });
  return map;
}

Status WriteStartInfo(GuestMemory& memory, const StartInfoConfig& config) {
  constexpr size_t kMaxEntries = (0x7000 - kMemmapAddr) / 24;
  if (config.memmap.size() > kMaxEntries) {
    return Fail(ErrorCode::kInvalidArgument,
                "PVH memory map has more than " + std::to_string(kMaxEntries) + " entries");
  }
  uint8_t info[56] = {};
  auto put = [&info](size_t offset, auto value) {
    std::memcpy(info + offset, &value, sizeof(value));
  };
  put(0, kHvmStartMagic);
  put(4, uint32_t{1});  // version 1: has the memory map
  put(12, uint32_t{config.initrd_size ? 1u : 0u});
  put(16, uint64_t{config.initrd_size ? kModlistAddr : 0});
  put(24, config.cmdline_addr);
  put(32, config.rsdp_addr);
  put(40, uint64_t{kMemmapAddr});
  put(48, static_cast<uint32_t>(config.memmap.size()));
  TRY(memory.Fill(kStartInfoAddr, 0x7000 - kStartInfoAddr, 0));
  TRY(memory.WriteObject(kStartInfoAddr, info));
  if (config.initrd_size) {
    const uint64_t module[4] = {config.initrd_addr, config.initrd_size, 0, 0};
    TRY(memory.WriteObject(kModlistAddr, module));
  }
  for (size_t i = 0; i < config.memmap.size(); ++i) {
    uint8_t entry[24] = {};
    std::memcpy(entry, &config.memmap[i].addr, 8);
    std::memcpy(entry + 8, &config.memmap[i].size, 8);
    std::memcpy(entry + 16, &config.memmap[i].type, 4);
    TRY(memory.WriteObject(kMemmapAddr + i * 24, entry));
  }
  return Ok();
}

VcpuBootState BuildPvhState(uint32_t entry, const kvm_sregs& initial) {
  constexpr uint64_t kCr0Pe = 1ull << 0;
  constexpr uint64_t kCr0Et = 1ull << 4;
  VcpuBootState state{};
  state.sregs = initial;
  kvm_segment code{};
  code.base = 0;
  code.limit = 0xffffffff;
  code.selector = kCodeSelector;
  code.type = 0xb;  // execute/read, accessed
  code.present = 1;
  code.s = 1;
  code.db = 1;  // 32-bit
  code.g = 1;
  kvm_segment data = code;
  data.selector = kDataSelector;
  data.type = 0x3;  // read/write, accessed
  kvm_segment tss{};
  tss.limit = 0x67;
  tss.selector = kTssSelector;
  tss.type = 0xb;  // 32-bit busy TSS
  tss.present = 1;
  state.sregs.cs = code;
  state.sregs.ds = state.sregs.es = state.sregs.fs = state.sregs.gs = state.sregs.ss = data;
  state.sregs.tr = tss;
  state.sregs.gdt.base = kGdtAddr;
  state.sregs.gdt.limit = 4 * 8 - 1;
  state.sregs.idt.base = kIdtAddr;
  state.sregs.idt.limit = sizeof(uint64_t) - 1;
  state.sregs.cr0 = kCr0Pe | kCr0Et;
  state.sregs.cr3 = 0;
  state.sregs.cr4 = 0;
  state.sregs.efer = 0;
  state.regs.rflags = 0x2;
  state.regs.rip = entry;
  state.regs.rbx = kStartInfoAddr;
  return state;
}

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): x86-64 boot.
#include "vmm/boot.h"

#include <elf.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <string>

#include "vmm/bzimage.h"
#include "vmm/pvh.h"

namespace tartarus::vmm {
namespace {

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

std::unexpected<Error> ElfError(const std::string& what) {
  return Fail(ErrorCode::kInvalidArgument, "kernel ELF: " + what);
}

// A GDT descriptor from packed flags (access byte in bits 0-7, flags nibble in 12-15).
uint64_t GdtEntry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((static_cast<uint64_t>(base) & 0xff000000u) << (56 - 24)) |
         ((static_cast<uint64_t>(flags) & 0xf0ffu) << 40) |
         ((static_cast<uint64_t>(limit) & 0x000f0000u) << (48 - 16)) |
         ((static_cast<uint64_t>(base) & 0x00ffffffu) << 16) |
         (static_cast<uint64_t>(limit) & 0x0000ffffu);
}

constexpr uint16_t kGdtCodeFlags = 0xa09b;  // present, DPL0, code exec/read accessed, L, G
constexpr uint16_t kGdtDataFlags = 0xc093;  // present, DPL0, data read/write accessed, D/B, G
constexpr uint16_t kGdtTssFlags = 0x808b;   // present, busy 64-bit TSS, G

kvm_segment SegmentFromGdt(uint64_t entry, uint16_t selector) {
  kvm_segment segment{};
  segment.base = ((entry >> 16) & 0xffffff) | (((entry >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((entry & 0xffff) | (((entry >> 48) & 0xf) << 16));
  segment.g = (entry >> 55) & 1;
  // With 4 KiB granularity the limit counts pages: the byte limit has the low 12 bits set.
  segment.limit = segment.g ? (limit << 12) | 0xfff : limit;
  segment.selector = selector;
  segment.type = (entry >> 40) & 0xf;
  segment.present = (entry >> 47) & 1;
  segment.dpl = (entry >> 45) & 3;
  segment.db = (entry >> 54) & 1;
  segment.s = (entry >> 44) & 1;
  segment.l = (entry >> 53) & 1;
  segment.avl = (entry >> 52) & 1;
  segment.unusable = segment.present ? 0 : 1;
  return segment;
}

const std::array<uint64_t, 4> kBootGdt = {
    0,
    GdtEntry(kGdtCodeFlags, 0, 0xfffff),
    GdtEntry(kGdtDataFlags, 0, 0xfffff),
    GdtEntry(kGdtTssFlags, 0, 0xfffff),
};
// PVH starts in 32-bit protected mode: the same table with a 32-bit code segment (D/B, no L).
constexpr uint16_t kGdtCode32Flags = 0xc09b;
const std::array<uint64_t, 4> kPvhGdt = {
    0,
    GdtEntry(kGdtCode32Flags, 0, 0xfffff),
    GdtEntry(kGdtDataFlags, 0, 0xfffff),
    GdtEntry(kGdtTssFlags, 0, 0xfffff),
};

constexpr uint64_t kPageSize = 0x1000;

uint64_t LowRamEnd(const GuestMemory& memory) {
  for (const GuestRegion& region : memory.regions()) {
    if (region.guest_addr == 0) return region.size;
  }
  return 0;
}

}  // namespace

std::vector<RegionSpec> GuestRamLayout(uint64_t memory_size) {
  std::vector<RegionSpec> regions;
  uint64_t low = std::min(memory_size, kMmioGapStart);
  regions.push_back({.guest_addr = 0, .size = low});
  if (memory_size > low) regions.push_back({.guest_addr = kMmioGapEnd, .size = memory_size - low});
  return regions;
}

std::vector<E820Entry> BuildE820Map(const GuestMemory& memory) {
  std::vector<E820Entry> map;
  for (const GuestRegion& region : memory.regions()) {
    if (region.guest_addr == 0) {
      // Low memory up to the EBDA, then everything from 1 MiB.
      map.push_back({0, std::min(region.size, kEbdaStart), kE820Ram});
      if (region.size > kHighMemStart) {
        map.push_back({kHighMemStart, region.size - kHighMemStart, kE820Ram});
      }
    } else {
      map.push_back({region.guest_addr, region.size, kE820Ram});
    }
  }
  return map;
}

KernelFormat DetectKernelFormat(std::span<const uint8_t> image) {
  if (image.size() >= SELFMAG && std::memcmp(image.data(), ELFMAG, SELFMAG) == 0) {
    return KernelFormat::kElf64;
  }
  if (image.size() >= zero_page::kHeader + 4 &&
      std::memcmp(image.data() + zero_page::kHeader, "HdrS", 4) == 0) {
    return KernelFormat::kBzImage;
  }
  return KernelFormat::kUnknown;
}

Result<LoadedKernel> LoadElf64(std::span<const uint8_t> image, GuestMemory& memory) {
  if (image.size() < SELFMAG || std::memcmp(image.data(), ELFMAG, SELFMAG) != 0) {
    return ElfError("not an ELF file (bad magic)");
  }
  if (image.size() < EI_NIDENT) return ElfError("truncated inside the ELF identification");
  if (image[EI_CLASS] != ELFCLASS64) {
    return ElfError("wrong class " + std::to_string(image[EI_CLASS]) + ": need ELF64");
  }
  if (image[EI_DATA] != ELFDATA2LSB) return ElfError("not little-endian");
  if (image.size() < sizeof(Elf64_Ehdr)) {
    return ElfError("truncated: " + std::to_string(image.size()) +
                    " bytes is shorter than the ELF header");
  }
  Elf64_Ehdr header;
  std::memcpy(&header, image.data(), sizeof(header));
  if (header.e_machine != EM_X86_64) {
    return ElfError("wrong machine " + std::to_string(header.e_machine) + ": need x86-64 (62)");
  }
  if (header.e_type != ET_EXEC) {
    return ElfError("type " + std::to_string(header.e_type) + " is not an executable (ET_EXEC)");
  }
  if (header.e_phnum == 0) return ElfError("no program headers");
  if (header.e_phentsize != sizeof(Elf64_Phdr)) {
    return ElfError("program header size " + std::to_string(header.e_phentsize) + ", need " +
                    std::to_string(sizeof(Elf64_Phdr)));
  }
  const uint64_t table_size = uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
  if (header.e_phoff > image.size() || table_size > image.size() - header.e_phoff) {
    return ElfError("truncated: program headers at " + Hex(header.e_phoff) + " end past the file");
  }

  std::vector<Elf64_Phdr> segments;
  for (size_t i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr phdr;
    std::memcpy(&phdr, image.data() + header.e_phoff + i * sizeof(Elf64_Phdr), sizeof(phdr));
    if (phdr.p_type != PT_LOAD || phdr.p_memsz == 0) continue;
    const std::string name = "segment " + std::to_string(i) + " at " + Hex(phdr.p_paddr);
    if (phdr.p_filesz > phdr.p_memsz) return ElfError(name + ": file size exceeds memory size");
    if (phdr.p_offset > image.size() || phdr.p_filesz > image.size() - phdr.p_offset) {
      return ElfError(name + ": file bytes at " + Hex(phdr.p_offset) + " end past the file");
    }
    if (phdr.p_paddr + phdr.p_memsz < phdr.p_paddr) return ElfError(name + ": wraps around");
    if (phdr.p_paddr < kHighMemStart) {
      return ElfError(name + ": below 1 MiB, where the boot structures live");
    }
    for (const Elf64_Phdr& other : segments) {
      if (phdr.p_paddr < other.p_paddr + other.p_memsz &&
          other.p_paddr < phdr.p_paddr + phdr.p_memsz) {
        return ElfError(name + ": overlaps the segment at " + Hex(other.p_paddr));
      }
    }
    if (auto slice = memory.Slice(phdr.p_paddr, phdr.p_memsz); !slice) {
      return ElfError(name + " of " + Hex(phdr.p_memsz) + " bytes does not fit in guest memory");
    }
    segments.push_back(phdr);
  }
  if (segments.empty()) return ElfError("no loadable (PT_LOAD) segments");

  LoadedKernel loaded{.entry = header.e_entry, .load_start = UINT64_MAX, .load_end = 0};
  bool entry_inside = false;
  for (const Elf64_Phdr& phdr : segments) {
    TRY(memory.Write(phdr.p_paddr, image.subspan(phdr.p_offset, phdr.p_filesz)));
    TRY(memory.Fill(phdr.p_paddr + phdr.p_filesz, phdr.p_memsz - phdr.p_filesz, 0));
    loaded.load_start = std::min<uint64_t>(loaded.load_start, phdr.p_paddr);
    loaded.load_end = std::max<uint64_t>(loaded.load_end, phdr.p_paddr + phdr.p_memsz);
    if (header.e_entry >= phdr.p_paddr && header.e_entry - phdr.p_paddr < phdr.p_memsz) {
      entry_inside = true;
    }
  }
  if (!entry_inside) {
    return ElfError("entry point " + Hex(header.e_entry) + " is not inside a loaded segment");
  }
  return loaded;
}

Status WritePageTables(GuestMemory& memory) {
  constexpr uint64_t kPresentWritable = 0x3;
  constexpr uint64_t kPageSize2M = 0x80;
  constexpr uint64_t kDirectories = kIdentityMappedBytes >> 30;  // one PD maps 1 GiB
  TRY(memory.Fill(kPml4Addr, 0x1000, 0));
  TRY(memory.Fill(kPdptAddr, 0x1000, 0));
  TRY(memory.WriteObject<uint64_t>(kPml4Addr, kPdptAddr | kPresentWritable));
  for (uint64_t pd = 0; pd < kDirectories; ++pd) {
    const uint64_t pd_addr = kPdAddr + pd * 0x1000;
    TRY(memory.WriteObject<uint64_t>(kPdptAddr + pd * 8, pd_addr | kPresentWritable));
    std::array<uint64_t, 512> entries;
    for (uint64_t i = 0; i < 512; ++i) {
      entries[i] = (((pd << 30) + (i << 21))) | kPresentWritable | kPageSize2M;
    }
    TRY(memory.WriteObject(pd_addr, entries));
  }
  return Ok();
}

Status WriteGdt(GuestMemory& memory, bool long_mode_code) {
  TRY(memory.WriteObject(kGdtAddr, long_mode_code ? kBootGdt : kPvhGdt));
  TRY(memory.WriteObject<uint64_t>(kIdtAddr, 0));
  return Ok();
}

Status WriteBootParams(GuestMemory& memory, std::string_view cmdline,
                       const std::vector<E820Entry>& e820, const BootParamsExtras& extras) {
  if (cmdline.size() + 1 > kCmdlineMaxSize) {
    return Fail(ErrorCode::kInvalidArgument, "command line of " + std::to_string(cmdline.size()) +
                                                 " bytes is longer than " +
                                                 std::to_string(kCmdlineMaxSize - 1));
  }
  if (cmdline.find('\0') != std::string_view::npos) {
    return Fail(ErrorCode::kInvalidArgument, "command line contains a NUL byte");
  }
  if (e820.size() > zero_page::kE820MaxEntries) {
    return Fail(ErrorCode::kInvalidArgument, "e820 map has more than 128 entries");
  }
  TRY(memory.Fill(kCmdlineAddr, kCmdlineMaxSize, 0));
  TRY(memory.Write(kCmdlineAddr,
                   std::span(reinterpret_cast<const uint8_t*>(cmdline.data()), cmdline.size())));

  std::array<uint8_t, zero_page::kSize> page{};
  auto put = [&page](uint64_t offset, auto value) {
    std::memcpy(page.data() + offset, &value, sizeof(value));
  };
  if (!extras.setup_header.empty()) {
    // boot.rst: the loader copies the kernel's setup header, then fills in its own fields.
    const size_t length =
        std::min<size_t>(extras.setup_header.size(), setup_header::kMaxEnd - setup_header::kStart);
    std::memcpy(page.data() + setup_header::kStart, extras.setup_header.data(), length);
  } else {
    put(zero_page::kBootFlag, uint16_t{0xaa55});
    put(zero_page::kHeader, uint32_t{0x53726448});  // "HdrS"
    put(zero_page::kVersion, uint16_t{0x020f});     // boot protocol 2.15
    put(zero_page::kLoadFlags, uint8_t{0x01});      // LOADED_HIGH: kernel above 1 MiB
    put(zero_page::kKernelAlignment, uint32_t{0x1000000});
    put(zero_page::kCmdlineSize, static_cast<uint32_t>(cmdline.size()));
  }
  put(zero_page::kTypeOfLoader, uint8_t{0xff});  // no registered loader id
  put(zero_page::kCmdLinePtr, static_cast<uint32_t>(kCmdlineAddr));
  put(zero_page::kRamdiskImage, static_cast<uint32_t>(extras.initrd_addr));
  put(zero_page::kRamdiskSize, static_cast<uint32_t>(extras.initrd_size));
  put(zero_page::kAcpiRsdpAddr, extras.rsdp_addr);
  put(zero_page::kE820Entries, static_cast<uint8_t>(e820.size()));
  for (size_t i = 0; i < e820.size(); ++i) {
    const uint64_t offset = zero_page::kE820Table + i * 20;  // packed: u64 addr, u64 size, u32
    put(offset, e820[i].addr);
    put(offset + 8, e820[i].size);
    put(offset + 16, e820[i].type);
  }
  TRY(memory.WriteObject(kZeroPageAddr, page));
  return Ok();
}

VcpuBootState BuildLongModeState(uint64_t entry, const kvm_sregs& initial) {
  constexpr uint64_t kCr0Pe = 1ull << 0;
  constexpr uint64_t kCr0Et = 1ull << 4;
  constexpr uint64_t kCr0Pg = 1ull << 31;
  constexpr uint64_t kCr4Pae = 1ull << 5;
  constexpr uint64_t kEferLme = 1ull << 8;
  constexpr uint64_t kEferLma = 1ull << 10;

  VcpuBootState state{};
  state.sregs = initial;
  kvm_segment code = SegmentFromGdt(kBootGdt[1], kCodeSelector);
  kvm_segment data = SegmentFromGdt(kBootGdt[2], kDataSelector);
  kvm_segment tss = SegmentFromGdt(kBootGdt[3], kTssSelector);
  state.sregs.cs = code;
  state.sregs.ds = state.sregs.es = state.sregs.fs = state.sregs.gs = state.sregs.ss = data;
  state.sregs.tr = tss;
  state.sregs.gdt.base = kGdtAddr;
  state.sregs.gdt.limit = static_cast<uint16_t>(sizeof(kBootGdt) - 1);
  state.sregs.idt.base = kIdtAddr;
  state.sregs.idt.limit = sizeof(uint64_t) - 1;
  state.sregs.cr0 = kCr0Pe | kCr0Et | kCr0Pg;
  state.sregs.cr3 = kPml4Addr;
  state.sregs.cr4 = kCr4Pae;
  state.sregs.efer = kEferLme | kEferLma;

  state.regs.rflags = 0x2;  // reserved bit 1; interrupts off
  state.regs.rip = entry;
  state.regs.rsp = kBootStackTop;
  state.regs.rbp = kBootStackTop;
  state.regs.rsi = kZeroPageAddr;
  return state;
}

Result<uint64_t> PlaceInitrd(GuestMemory& memory, std::span<const uint8_t> initrd,
                             uint64_t kernel_end, uint64_t max_end) {
  const uint64_t top = std::min(LowRamEnd(memory), max_end);
  const uint64_t bottom = (kernel_end + kPageSize - 1) & ~(kPageSize - 1);
  if (initrd.size() > top || ((top - initrd.size()) & ~(kPageSize - 1)) < bottom) {
    return Fail(ErrorCode::kInvalidArgument,
                "initrd of " + std::to_string(initrd.size()) + " bytes does not fit between " +
                    "the kernel's end " + Hex(kernel_end) + " and " + Hex(top) +
                    " (end of RAM below 4 GiB or the kernel's initrd_addr_max)");
  }
  const uint64_t addr = (top - initrd.size()) & ~(kPageSize - 1);
  TRY(memory.Write(addr, initrd));
  return addr;
}

Result<BootPlan> PrepareLinuxBoot(std::span<const uint8_t> image, const BootConfig& config,
                                  GuestMemory& memory) {
  BootPlan plan;
  plan.format = DetectKernelFormat(image);
  std::span<const uint8_t> setup_header;
  uint64_t initrd_max_end = kMmioGapStart;
  switch (plan.format) {
    case KernelFormat::kElf64: {
      LoadedKernel kernel = TRY(LoadElf64(image, memory));
      plan.entry = kernel.entry;
      plan.load_start = kernel.load_start;
      plan.load_end = kernel.load_end;
      std::optional<uint32_t> pvh_entry = TRY(FindPvhEntry(image));
      if (pvh_entry) {
        if (*pvh_entry < kernel.load_start || *pvh_entry >= kernel.load_end) {
          return Fail(ErrorCode::kInvalidArgument,
                      "kernel ELF: PVH entry " + Hex(*pvh_entry) + " is outside the loaded " +
                          "kernel [" + Hex(kernel.load_start) + ", " + Hex(kernel.load_end) + ")");
        }
        plan.mode = EntryMode::kPvh32;
        plan.entry = *pvh_entry;
      }
      break;
    }
    case KernelFormat::kBzImage: {
      LoadedBzImage kernel = TRY(LoadBzImage(image, memory));
      if (config.cmdline.size() > kernel.header.cmdline_size) {
        return Fail(ErrorCode::kInvalidArgument,
                    "command line of " + std::to_string(config.cmdline.size()) +
                        " bytes is longer than the kernel's cmdline_size " +
                        std::to_string(kernel.header.cmdline_size));
      }
      plan.entry = kernel.entry;
      plan.load_start = kernel.load_addr;
      plan.load_end = kernel.load_end;
      setup_header =
          image.subspan(setup_header::kStart, kernel.header.header_end - setup_header::kStart);
      initrd_max_end = uint64_t{kernel.header.initrd_addr_max} + 1;
      break;
    }
    case KernelFormat::kUnknown:
      return Fail(ErrorCode::kInvalidArgument, "kernel is neither an ELF file nor a bzImage");
  }
  if (!config.initrd.empty()) {
    plan.initrd_addr = TRY(PlaceInitrd(memory, config.initrd, plan.load_end, initrd_max_end));
    plan.initrd_size = config.initrd.size();
  }
  plan.rsdp_addr = TRY(WriteAcpiTables(memory, config.acpi));
  TRY(WritePageTables(memory));
  TRY(WriteGdt(memory, plan.mode == EntryMode::kLongMode64));
  const std::vector<E820Entry> e820 = BuildE820Map(memory);
  TRY(WriteBootParams(memory, config.cmdline, e820,
                      {.setup_header = setup_header,
                       .initrd_addr = plan.initrd_addr,
                       .initrd_size = plan.initrd_size,
                       .rsdp_addr = plan.rsdp_addr}));
  if (plan.mode == EntryMode::kPvh32) {
    TRY(WriteStartInfo(memory, {.cmdline_addr = kCmdlineAddr,
                                .initrd_addr = plan.initrd_addr,
                                .initrd_size = plan.initrd_size,
                                .rsdp_addr = plan.rsdp_addr,
                                .memmap = PvhMemoryMap(e820)}));
  }
  return plan;
}

VcpuBootState BuildBootState(const BootPlan& plan, const kvm_sregs& initial) {
  if (plan.mode == EntryMode::kPvh32) {
    return BuildPvhState(static_cast<uint32_t>(plan.entry), initial);
  }
  return BuildLongModeState(plan.entry, initial);
}

}  // namespace tartarus::vmm

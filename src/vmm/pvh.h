// tartarus-vmm (Tartarus's KVM microVM monitor): PVH boot.
// The PVH boot ABI (Xen's arch-x86/hvm/start_info.h, used by Firecracker and QEMU for Linux):
// an ELF vmlinux announces a 32-bit entry point in a Xen ELF note (XEN_ELFNOTE_PHYS32_ENTRY);
// the loader starts the vCPU there in flat 32-bit protected mode, paging off, with EBX
// pointing at an hvm_start_info (command line, modules such as the initrd, memory map, RSDP).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "common/result.h"
#include "vmm/boot.h"
#include "vmm/guest_memory.h"

namespace tartarus::vmm {

inline constexpr uint32_t kXenElfNotePhys32Entry = 18;
inline constexpr uint32_t kHvmStartMagic = 0x336ec578;
inline constexpr uint64_t kStartInfoAddr = 0x6000;  // below the zero page
inline constexpr uint64_t kModlistAddr = 0x6040;
inline constexpr uint64_t kMemmapAddr = 0x6080;  // up to 128 entries of 24 bytes: < 0x7000

// The PVH entry from an ELF64 image's PT_NOTE segments: nullopt when there is no
// XEN_ELFNOTE_PHYS32_ENTRY note; an Error when the notes themselves are malformed (outside
// the file, truncated, sizes that overflow, an entry descriptor that is not 4 or 8 bytes or
// points above 4 GiB).
Result<std::optional<uint32_t>> FindPvhEntry(std::span<const uint8_t> elf);

struct StartInfoConfig {
  uint64_t cmdline_addr = 0;  // 0: none
  uint64_t initrd_addr = 0;
  uint64_t initrd_size = 0;  // 0: no module
  uint64_t rsdp_addr = 0;
  std::vector<E820Entry> memmap;
};

// Writes hvm_start_info (magic, version 1), the module list and the memory map.
Status WriteStartInfo(GuestMemory& memory, const StartInfoConfig& config);

// The PVH memory map: the e820 RAM map plus the legacy area [EBDA, 1 MiB), which holds the
// ACPI tables, as reserved; sorted by address.
std::vector<E820Entry> PvhMemoryMap(const std::vector<E820Entry>& e820);

// 32-bit protected mode, paging off: CR0 = PE|ET, flat 4 GiB CS (32-bit code) and DS/ES/SS/
// FS/GS, a 32-bit busy TSS in TR, EBX = start info, EIP = entry, EFLAGS = 2.
VcpuBootState BuildPvhState(uint32_t entry, const kvm_sregs& initial);

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): x86-64 boot.
// Loads a 64-bit ELF kernel and prepares what Linux's 64-bit boot protocol hands over: an
// identity-mapped long-mode page table, a GDT, the zero page (boot_params, with e820 map and
// command line) in RSI, and the long-mode register state. PrepareLinuxBoot picks the entry:
// PVH (pvh.h) for an ELF with a PVH note, else the ELF's 64-bit entry, or a bzImage's
// (bzimage.h); it also places the initrd and writes the ACPI tables (acpi.h).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/acpi.h"
#include "vmm/guest_memory.h"

namespace tartarus::vmm {

// The guest physical layout below 1 MiB (Firecracker's, so guests written for it run here).
inline constexpr uint64_t kGdtAddr = 0x500;
inline constexpr uint64_t kIdtAddr = 0x520;
inline constexpr uint64_t kZeroPageAddr = 0x7000;
inline constexpr uint64_t kBootStackTop = 0x8ff0;
inline constexpr uint64_t kPml4Addr = 0x9000;  // then the PDPT at 0xa000 and 4 PDs from 0xb000
inline constexpr uint64_t kPdptAddr = 0xa000;
inline constexpr uint64_t kPdAddr = 0xb000;
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kCmdlineMaxSize = 4096;  // bytes, including the terminating NUL
inline constexpr uint64_t kEbdaStart = 0x9fc00;
inline constexpr uint64_t kHighMemStart = 0x100000;  // kernels load at or above 1 MiB
inline constexpr uint64_t kIdentityMappedBytes = 4ull << 30;
// RAM stops below the 32-bit MMIO gap and resumes at 4 GiB.
inline constexpr uint64_t kMmioGapStart = 0xd0000000;
inline constexpr uint64_t kMmioGapEnd = 1ull << 32;

// Segment selectors in the boot GDT: null, code, data, TSS.
inline constexpr uint16_t kCodeSelector = 0x08;
inline constexpr uint16_t kDataSelector = 0x10;
inline constexpr uint16_t kTssSelector = 0x18;

inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};

// The RAM regions for a guest of memory_size bytes, split around the MMIO gap.
std::vector<RegionSpec> GuestRamLayout(uint64_t memory_size);
// The e820 map describing those regions (the EBDA and legacy ROM area are left out).
std::vector<E820Entry> BuildE820Map(const GuestMemory& memory);

enum class KernelFormat { kElf64, kBzImage, kUnknown };
KernelFormat DetectKernelFormat(std::span<const uint8_t> image);

struct LoadedKernel {
  uint64_t entry = 0;       // guest physical entry point
  uint64_t load_start = 0;  // lowest loaded guest physical address
  uint64_t load_end = 0;    // one past the highest
};

// Loads an ELF64 x86-64 executable's PT_LOAD segments at their physical addresses. The image
// is outside input: malformed headers, segments outside the file or guest memory, segments
// that overlap each other or the boot structures below 1 MiB are refused with an Error.
Result<LoadedKernel> LoadElf64(std::span<const uint8_t> image, GuestMemory& memory);

// Writes the identity map of the first 4 GiB with 2 MiB pages.
Status WritePageTables(GuestMemory& memory);
// Writes the boot GDT and an empty IDT. The code segment is 64-bit, or 32-bit for PVH.
Status WriteGdt(GuestMemory& memory, bool long_mode_code = true);

// What the zero page carries besides the command line and e820 map.
struct BootParamsExtras {
  // A bzImage's setup header (image bytes from 0x1f1 to its end), copied in as boot.rst asks;
  // empty: a synthesized header (protocol 2.15) is written instead.
  std::span<const uint8_t> setup_header;
  uint64_t initrd_addr = 0;
  uint64_t initrd_size = 0;
  uint64_t rsdp_addr = 0;  // boot_params.acpi_rsdp_addr; 0 leaves the guest to scan for it
};
// Writes the command line and a zero page (boot_params) pointing at it, with the e820 map.
Status WriteBootParams(GuestMemory& memory, std::string_view cmdline,
                       const std::vector<E820Entry>& e820, const BootParamsExtras& extras = {});

// Places the initrd at the highest page-aligned address where it ends at or below
// min(max_end, end of RAM below 4 GiB) and starts at or above kernel_end. Returns its address.
Result<uint64_t> PlaceInitrd(GuestMemory& memory, std::span<const uint8_t> initrd,
                             uint64_t kernel_end, uint64_t max_end);

// Zero-page offsets used by the loader (Documentation/arch/x86/zero-page.rst and boot.rst).
namespace zero_page {
inline constexpr uint64_t kE820Entries = 0x1e8;  // u8
inline constexpr uint64_t kBootFlag = 0x1fe;     // u16, 0xaa55
inline constexpr uint64_t kHeader = 0x202;       // u32, "HdrS"
inline constexpr uint64_t kVersion = 0x206;      // u16
inline constexpr uint64_t kTypeOfLoader = 0x210;
inline constexpr uint64_t kLoadFlags = 0x211;
inline constexpr uint64_t kAcpiRsdpAddr = 0x070;  // u64
inline constexpr uint64_t kRamdiskImage = 0x218;  // u32
inline constexpr uint64_t kRamdiskSize = 0x21c;   // u32
inline constexpr uint64_t kCmdLinePtr = 0x228;    // u32
inline constexpr uint64_t kKernelAlignment = 0x230;
inline constexpr uint64_t kCmdlineSize = 0x238;  // u32
inline constexpr uint64_t kE820Table = 0x2d0;    // 20-byte entries
inline constexpr uint64_t kE820MaxEntries = 128;
inline constexpr uint64_t kSize = 4096;
}  // namespace zero_page

struct VcpuBootState {
  kvm_regs regs;
  kvm_sregs sregs;
};

// Long mode at CPL0: CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 = the identity map, flat 64-bit
// code and data segments from the boot GDT; RIP = entry, RSP = the boot stack, RSI = the zero
// page. `initial` is the vCPU's current sregs (KVM_GET_SREGS), so the APIC base and the like
// are kept.
VcpuBootState BuildLongModeState(uint64_t entry, const kvm_sregs& initial);

struct BootConfig {
  std::string_view cmdline;
  std::span<const uint8_t> initrd;  // empty: none
  AcpiConfig acpi;
};

enum class EntryMode {
  kLongMode64,  // Linux 64-bit boot protocol: long mode, RSI = zero page
  kPvh32,       // PVH: 32-bit protected mode, EBX = hvm_start_info
};

struct BootPlan {
  KernelFormat format = KernelFormat::kUnknown;
  EntryMode mode = EntryMode::kLongMode64;
  uint64_t entry = 0;
  uint64_t load_start = 0;  // the kernel's footprint in guest RAM
  uint64_t load_end = 0;
  uint64_t initrd_addr = 0;
  uint64_t initrd_size = 0;
  uint64_t rsdp_addr = 0;
};

// Everything above for one kernel image: detects its format, loads it (PVH when an ELF has
// the note, else its 64-bit entry; a bzImage's 64-bit entry), places the initrd, writes the
// page tables, GDT, ACPI tables, zero page and, for PVH, hvm_start_info.
Result<BootPlan> PrepareLinuxBoot(std::span<const uint8_t> image, const BootConfig& config,
                                  GuestMemory& memory);
// The boot vCPU state for a plan: BuildLongModeState or BuildPvhState.
VcpuBootState BuildBootState(const BootPlan& plan, const kvm_sregs& initial);

}  // namespace tartarus::vmm

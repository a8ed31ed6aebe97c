// tartarus-vmm (Tartarus's KVM microVM monitor): the bzImage loader.
// Parses and validates a bzImage's real-mode setup header (Documentation/arch/x86/boot.rst)
// and loads its protected-mode kernel for the 64-bit entry point (load address + 0x200).
// Protocol 2.12 or newer is required: that is the first version with xloadflags, which is how
// a kernel says it has a 64-bit entry (XLF_KERNEL_64); every x86-64 kernel since 3.8 has it.
#pragma once

#include <cstdint>
#include <span>

#include "common/result.h"
#include "vmm/guest_memory.h"

namespace tartarus::vmm {

// Setup-header offsets in the image and in the zero page (the header sits at 0x1f1 in both).
namespace setup_header {
inline constexpr uint64_t kStart = 0x1f1;
inline constexpr uint64_t kSetupSects = 0x1f1;  // u8, 0 means 4
inline constexpr uint64_t kSysSize = 0x1f4;     // u32, protected-mode size in 16-byte units
inline constexpr uint64_t kBootFlag = 0x1fe;    // u16, 0xaa55
inline constexpr uint64_t kJump = 0x200;        // u16; its second byte sizes the header
inline constexpr uint64_t kHeader = 0x202;      // u32, "HdrS"
inline constexpr uint64_t kVersion = 0x206;     // u16
inline constexpr uint64_t kTypeOfLoader = 0x210;
inline constexpr uint64_t kLoadFlags = 0x211;
inline constexpr uint64_t kCode32Start = 0x214;
inline constexpr uint64_t kRamdiskImage = 0x218;
inline constexpr uint64_t kRamdiskSize = 0x21c;
inline constexpr uint64_t kCmdLinePtr = 0x228;
inline constexpr uint64_t kInitrdAddrMax = 0x22c;
inline constexpr uint64_t kKernelAlignment = 0x230;
inline constexpr uint64_t kRelocatableKernel = 0x234;
inline constexpr uint64_t kXLoadFlags = 0x236;
inline constexpr uint64_t kCmdlineSize = 0x238;
inline constexpr uint64_t kPrefAddress = 0x258;
inline constexpr uint64_t kInitSize = 0x260;
inline constexpr uint64_t kEnd212 = 0x268;  // protocol 2.12 fields end here
inline constexpr uint64_t kMaxEnd = 0x290;  // boot_params' next field after the header
}  // namespace setup_header

inline constexpr uint16_t kMinBootProtocol = 0x020c;  // 2.12
inline constexpr uint8_t kLoadedHigh = 0x01;          // loadflags
inline constexpr uint16_t kXlfKernel64 = 0x01;        // xloadflags
inline constexpr uint64_t kBzImage64BitEntryOffset = 0x200;

struct BzImageHeader {
  uint16_t version = 0;
  uint8_t loadflags = 0;
  uint16_t xloadflags = 0;
  uint64_t setup_size = 0;   // bytes before the protected-mode kernel: (setup_sects + 1) * 512
  uint64_t kernel_size = 0;  // bytes of protected-mode kernel in the file
  uint32_t initrd_addr_max = 0;
  uint32_t kernel_alignment = 0;
  bool relocatable = false;
  uint32_t cmdline_size = 0;  // longest command line the kernel takes, without the NUL
  uint64_t pref_address = 0;
  uint32_t init_size = 0;   // bytes the kernel needs from its load address while booting
  uint64_t header_end = 0;  // one past the setup header: 0x202 + the byte at 0x201
};

// Validates the setup header. Refuses, naming the problem: truncation, bad boot flag or
// "HdrS" magic, protocol older than 2.12, no 64-bit entry, not loadable high, sizes that
// point outside the file, a kernel alignment that is not a power of two.
Result<BzImageHeader> ParseBzImageHeader(std::span<const uint8_t> image);

struct LoadedBzImage {
  BzImageHeader header;
  uint64_t load_addr = 0;  // where the protected-mode kernel went
  uint64_t entry = 0;      // load_addr + 0x200
  uint64_t load_end = 0;   // load_addr + max(kernel size, init_size): the kernel's footprint
};

// Loads the protected-mode kernel at pref_address (or, when that does not fit and the kernel
// is relocatable, at the lowest kernel_alignment-aligned address from 1 MiB). Refuses when
// the footprint does not fit in guest RAM below the MMIO gap.
Result<LoadedBzImage> LoadBzImage(std::span<const uint8_t> image, GuestMemory& memory);

}  // namespace tartarus::vmm

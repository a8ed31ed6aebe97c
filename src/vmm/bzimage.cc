// tartarus-vmm (Tartarus's KVM microVM monitor): the bzImage loader.
#include "vmm/bzimage.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace tartarus::vmm {
namespace {

constexpr uint64_t kSectorSize = 512;
constexpr uint64_t kLowestLoadAddr = 0x100000;

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

std::unexpected<Error> BzError(const std::string& what) {
  return Fail(ErrorCode::kInvalidArgument, "bzImage: " + what);
}

template <class T>
T Field(std::span<const uint8_t> image, uint64_t offset) {
  T value;
  std::memcpy(&value, image.data() + offset, sizeof(T));
  return value;
}

// The end of the RAM region that starts at 0: kernels stay below the MMIO gap.
uint64_t LowRamEnd(const GuestMemory& memory) {
  for (const GuestRegion& region : memory.regions()) {
    if (region.guest_addr == 0) return region.size;
  }
  return 0;
}

}  // namespace

Result<BzImageHeader> ParseBzImageHeader(std::span<const uint8_t> image) {
  namespace sh = setup_header;
  if (image.size() < sh::kHeader + 4) {
    return BzError("truncated: " + std::to_string(image.size()) +
                   " bytes is shorter than the setup header");
  }
  if (Field<uint16_t>(image, sh::kBootFlag) != 0xaa55) {
    return BzError("bad boot flag " + Hex(Field<uint16_t>(image, sh::kBootFlag)) +
                   " at 0x1fe (need 0xaa55)");
  }
  if (std::memcmp(image.data() + sh::kHeader, "HdrS", 4) != 0) {
    return BzError("no \"HdrS\" magic at 0x202");
  }
  BzImageHeader header;
  header.header_end = sh::kHeader + image[sh::kJump + 1];
  if (image.size() < sh::kEnd212) {
    return BzError("truncated: " + std::to_string(image.size()) +
                   " bytes ends inside the setup header");
  }
  header.version = Field<uint16_t>(image, sh::kVersion);
  if (header.version < kMinBootProtocol) {
    char version[16];
    std::snprintf(version, sizeof(version), "%u.%02u", header.version >> 8, header.version & 0xff);
    return BzError(std::string("boot protocol ") + version +
                   " is too old: need 2.12 or newer (xloadflags)");
  }
  if (header.header_end < sh::kEnd212) {
    return BzError("setup header ends at " + Hex(header.header_end) +
                   " (0x202 + byte at 0x201), before the protocol 2.12 fields");
  }
  header.header_end = std::min(header.header_end, sh::kMaxEnd);
  if (header.header_end > image.size()) {
    return BzError("truncated: the setup header ends at " + Hex(header.header_end) +
                   ", past the file");
  }

  uint64_t setup_sects = image[sh::kSetupSects];
  if (setup_sects == 0) setup_sects = 4;  // boot.rst: 0 means 4
  header.setup_size = (setup_sects + 1) * kSectorSize;
  if (header.setup_size >= image.size()) {
    return BzError("setup_sects " + std::to_string(setup_sects) + " puts the kernel at " +
                   Hex(header.setup_size) + ", at or past the end of the " +
                   std::to_string(image.size()) + "-byte file");
  }
  header.kernel_size = image.size() - header.setup_size;
  const uint64_t syssize_bytes = uint64_t{Field<uint32_t>(image, sh::kSysSize)} * 16;
  if (syssize_bytes > header.kernel_size) {
    return BzError("syssize says " + std::to_string(syssize_bytes) +
                   " bytes of kernel but the file holds " + std::to_string(header.kernel_size));
  }

  header.loadflags = image[sh::kLoadFlags];
  if ((header.loadflags & kLoadedHigh) == 0) {
    return BzError("loadflags lack LOADED_HIGH: a zImage loaded at 0x10000 is not supported");
  }
  header.xloadflags = Field<uint16_t>(image, sh::kXLoadFlags);
  if ((header.xloadflags & kXlfKernel64) == 0) {
    return BzError("xloadflags lack XLF_KERNEL_64: the kernel has no 64-bit entry point");
  }
  header.initrd_addr_max = Field<uint32_t>(image, sh::kInitrdAddrMax);
  header.kernel_alignment = Field<uint32_t>(image, sh::kKernelAlignment);
  header.relocatable = image[sh::kRelocatableKernel] != 0;
  if (header.relocatable && (header.kernel_alignment == 0 ||
                             (header.kernel_alignment & (header.kernel_alignment - 1)) != 0)) {
    return BzError("kernel_alignment " + Hex(header.kernel_alignment) + " is not a power of two");
  }
  header.cmdline_size = Field<uint32_t>(image, sh::kCmdlineSize);
  header.pref_address = Field<uint64_t>(image, sh::kPrefAddress);
  header.init_size = Field<uint32_t>(image, sh::kInitSize);
  if (header.kernel_size <= kBzImage64BitEntryOffset) {
    return BzError("the protected-mode kernel (" + std::to_string(header.kernel_size) +
                   " bytes) ends before its 64-bit entry at +0x200");
  }
  return header;
}

Result<LoadedBzImage> LoadBzImage(std::span<const uint8_t> image, GuestMemory& memory) {
  LoadedBzImage loaded;
  loaded.header = TRY(ParseBzImageHeader(image));
  const BzImageHeader& header = loaded.header;
  const uint64_t footprint = std::max<uint64_t>(header.kernel_size, header.init_size);
  const uint64_t ram_end = LowRamEnd(memory);
  auto fits = [&](uint64_t addr) {
    return addr >= kLowestLoadAddr && addr <= ram_end && footprint <= ram_end - addr;
  };

  uint64_t addr = header.pref_address;
  if (!fits(addr) && header.relocatable) {
    const uint64_t align = header.kernel_alignment;
    addr = (kLowestLoadAddr + align - 1) & ~(align - 1);
  }
  if (!fits(addr)) {
    return BzError("the kernel needs " + Hex(footprint) +
                   " bytes (max of its size and init_size) " + "from " + Hex(header.pref_address) +
                   " (pref_address" +
                   (header.relocatable ? ", or its first aligned address from 1 MiB" : "") +
                   "), but guest RAM below 4 GiB ends at " + Hex(ram_end));
  }
  if (header.relocatable && (addr & (header.kernel_alignment - 1)) != 0) {
    return BzError("pref_address " + Hex(addr) + " is not aligned to kernel_alignment " +
                   Hex(header.kernel_alignment));
  }
  // The rest of the footprint is the kernel's own scratch space; fresh guest RAM is zero.
  TRY(memory.Write(addr, image.subspan(header.setup_size)));
  loaded.load_addr = addr;
  loaded.entry = addr + kBzImage64BitEntryOffset;
  loaded.load_end = addr + footprint;
  return loaded;
}

}  // namespace tartarus::vmm

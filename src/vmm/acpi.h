// tartarus-vmm (Tartarus's KVM microVM monitor): ACPI tables.
// Builds what a HW-reduced microVM firmware would leave in memory: RSDP (v2) -> XSDT -> FADT
// (-> DSDT) and MADT. The DSDT comes from a small AML encoder and describes COM1 and one
// LNRO0005 device per virtio-mmio slot, which is how Debian's kernel (no
// VIRTIO_MMIO_CMDLINE_DEVICES) discovers virtio-mmio devices, as under Firecracker and QEMU
// microvm.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "vmm/guest_memory.h"

namespace tartarus::vmm {

// Where the tables go: the RSDP at 0xe0000 (the BIOS area Linux scans, as Firecracker places
// it), the other tables right behind it, all below 1 MiB.
inline constexpr uint64_t kRsdpAddr = 0xe0000;
inline constexpr uint64_t kAcpiAreaEnd = 0x100000;
inline constexpr uint64_t kIoApicAddr = 0xfec00000;
inline constexpr uint64_t kLocalApicAddr = 0xfee00000;

// One virtio-mmio transport to announce (the transport itself is built elsewhere).
struct VirtioMmioSlot {
  uint64_t base = 0;
  uint64_t size = 0x1000;
  uint32_t irq = 0;
};

struct AcpiConfig {
  uint32_t vcpus = 1;
  std::vector<VirtioMmioSlot> virtio_mmio;
};

// The tables as separate byte strings (checksums filled in), addressed for `rsdp_addr`.
struct AcpiTables {
  uint64_t rsdp_addr = 0;
  std::vector<uint8_t> rsdp;
  struct Table {
    uint64_t addr;
    std::vector<uint8_t> bytes;
  };
  std::vector<Table> tables;  // XSDT, FADT, DSDT, MADT in that order
};

// Builds the tables to live at [rsdp_addr, area_end). Refuses configurations that cannot be
// described (no vCPUs, more than 255, a virtio slot above 4 GiB or with an IRQ past 255, too
// many slots for the area).
Result<AcpiTables> BuildAcpiTables(const AcpiConfig& config, uint64_t rsdp_addr = kRsdpAddr,
                                   uint64_t area_end = kAcpiAreaEnd);
// Builds the tables and writes them to guest memory; returns the RSDP's address.
Result<uint64_t> WriteAcpiTables(GuestMemory& memory, const AcpiConfig& config);

// The 8-bit sum ACPI checksums make zero.
uint8_t AcpiChecksum(std::span<const uint8_t> bytes);

// A minimal AML encoder: just what the DSDT needs.
namespace aml {
std::vector<uint8_t> PkgLength(size_t content_length);  // encodes content + its own bytes
std::vector<uint8_t> Integer(uint64_t value);
std::vector<uint8_t> String(std::string_view text);
std::vector<uint8_t> EisaId(std::string_view id);  // "PNP0501" -> DWordConst
std::vector<uint8_t> Name(std::string_view name_seg, std::span<const uint8_t> object);
std::vector<uint8_t> Buffer(std::span<const uint8_t> bytes);
std::vector<uint8_t> Device(std::string_view name_seg, std::span<const uint8_t> body);
std::vector<uint8_t> Scope(std::string_view name_string, std::span<const uint8_t> body);
// Resource descriptors for a ResourceTemplate (EndTag appended by ResourceTemplate).
std::vector<uint8_t> Memory32Fixed(uint32_t base, uint32_t length);
std::vector<uint8_t> ExtendedInterrupt(uint32_t irq);  // consumer, edge, active high, exclusive
std::vector<uint8_t> Io16(uint16_t base, uint8_t length);
std::vector<uint8_t> IrqNoFlags(uint8_t irq);
std::vector<uint8_t> ResourceTemplate(std::span<const uint8_t> descriptors);
}  // namespace aml

}  // namespace tartarus::vmm

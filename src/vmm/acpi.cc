// tartarus-vmm (Tartarus's KVM microVM monitor): ACPI tables.
#include "vmm/acpi.h"

#include <cstring>
#include <string>

#include "vmm/serial.h"

namespace tartarus::vmm {
namespace {

constexpr size_t kSdtHeaderSize = 36;
constexpr size_t kRsdpSize = 36;
constexpr size_t kFadtSize = 276;  // ACPI 6.x FADT
constexpr uint32_t kIoApicPins = 24;

void Put(std::vector<uint8_t>& bytes, size_t offset, const void* value, size_t size) {
  std::memcpy(bytes.data() + offset, value, size);
}
template <class T>
void PutInt(std::vector<uint8_t>& bytes, size_t offset, T value) {
  Put(bytes, offset, &value, sizeof(value));
}
void Append(std::vector<uint8_t>& out, std::span<const uint8_t> more) {
  out.insert(out.end(), more.begin(), more.end());
}

// A table of `length` bytes starting with the common SDT header (checksum filled in later).
std::vector<uint8_t> SdtHeader(const char (&signature)[5], size_t length, uint8_t revision) {
  std::vector<uint8_t> table(length, 0);
  Put(table, 0, signature, 4);
  PutInt<uint32_t>(table, 4, static_cast<uint32_t>(length));
  table[8] = revision;
  Put(table, 10, "TARTAR", 6);     // OEM ID
  Put(table, 16, "TARTVMM ", 8);   // OEM table ID
  PutInt<uint32_t>(table, 24, 1);  // OEM revision
  Put(table, 28, "TRTS", 4);       // creator ID
  PutInt<uint32_t>(table, 32, 1);  // creator revision
  return table;
}

void SealSdt(std::vector<uint8_t>& table) {
  table[9] = 0;
  table[9] = static_cast<uint8_t>(-AcpiChecksum(table));
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

std::vector<uint8_t> NameSeg(std::string_view name) {
  std::vector<uint8_t> seg(4, '_');
  for (size_t i = 0; i < name.size() && i < 4; ++i) seg[i] = static_cast<uint8_t>(name[i]);
  return seg;
}

std::string DeviceName(size_t index) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return {'V', kHex[(index >> 8) & 0xf], kHex[(index >> 4) & 0xf], kHex[index & 0xf]};
}

std::vector<uint8_t> BuildDsdt(const AcpiConfig& config) {
  std::vector<uint8_t> devices;
  // COM1. (The i8042 is announced by the FADT's 8042 flag, and its reset through the FADT
  // reset register.)
  {
    std::vector<uint8_t> body = aml::Name("_HID", aml::EisaId("PNP0501"));
    Append(body, aml::Name("_UID", aml::Integer(1)));
    std::vector<uint8_t> resources = aml::Io16(kCom1Port, 8);
    Append(resources, aml::IrqNoFlags(static_cast<uint8_t>(kCom1Irq)));
    Append(body, aml::Name("_CRS", aml::ResourceTemplate(resources)));
    Append(devices, aml::Device("COM1", body));
  }
  for (size_t i = 0; i < config.virtio_mmio.size(); ++i) {
    const VirtioMmioSlot& slot = config.virtio_mmio[i];
    std::vector<uint8_t> body = aml::Name("_HID", aml::String("LNRO0005"));
    Append(body, aml::Name("_UID", aml::Integer(i)));
    std::vector<uint8_t> resources =
        aml::Memory32Fixed(static_cast<uint32_t>(slot.base), static_cast<uint32_t>(slot.size));
    Append(resources, aml::ExtendedInterrupt(slot.irq));
    Append(body, aml::Name("_CRS", aml::ResourceTemplate(resources)));
    Append(devices, aml::Device(DeviceName(i), body));
  }
  std::vector<uint8_t> scope = aml::Scope("\\_SB_", devices);
  std::vector<uint8_t> dsdt = SdtHeader("DSDT", kSdtHeaderSize + scope.size(), 2);
  Put(dsdt, kSdtHeaderSize, scope.data(), scope.size());
  return dsdt;
}

std::vector<uint8_t> BuildMadt(uint32_t vcpus) {
  constexpr size_t kLocalApicEntry = 8;
  constexpr size_t kIoApicEntry = 12;
  std::vector<uint8_t> madt =
      SdtHeader("APIC", kSdtHeaderSize + 8 + vcpus * kLocalApicEntry + kIoApicEntry, 5);
  PutInt<uint32_t>(madt, 36, static_cast<uint32_t>(kLocalApicAddr));
  PutInt<uint32_t>(madt, 40, 1);  // PCAT_COMPAT: the in-kernel 8259 pair exists
  size_t offset = kSdtHeaderSize + 8;
  for (uint32_t i = 0; i < vcpus; ++i) {
    // Processor Local APIC: UID and APIC ID are the vCPU index (FilterCpuid sets the same).
    const uint8_t entry[kLocalApicEntry] = {
        0, kLocalApicEntry, static_cast<uint8_t>(i), static_cast<uint8_t>(i), 1, 0, 0, 0};
    Put(madt, offset, entry, sizeof(entry));
    offset += kLocalApicEntry;
  }
  madt[offset] = 1;  // I/O APIC, id 0, GSI base 0
  madt[offset + 1] = kIoApicEntry;
  PutInt<uint32_t>(madt, offset + 4, static_cast<uint32_t>(kIoApicAddr));
  return madt;
}

std::vector<uint8_t> BuildFadt(uint64_t dsdt_addr) {
  std::vector<uint8_t> fadt = SdtHeader("FACP", kFadtSize, 6);
  PutInt<uint32_t>(fadt, 40, static_cast<uint32_t>(dsdt_addr));
  // IAPC_BOOT_ARCH: an 8042 (so that Linux probes its keyboard, through which
  // SendCtrlAltDel arrives; without the bit it treats the i8042 as absent), no VGA, no MSI,
  // no ASPM control, no CMOS RTC.
  PutInt<uint16_t>(fadt, 109, (1u << 1) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5));
  // Flags: WBINVD, no fixed power/sleep buttons, RESET_REG_SUP, HW_REDUCED_ACPI.
  PutInt<uint32_t>(fadt, 112, (1u << 0) | (1u << 4) | (1u << 5) | (1u << 10) | (1u << 20));
  // RESET_REG: system I/O port 0x64, byte access, value 0xfe: the i8042 reset we emulate.
  const uint8_t reset_gas[4] = {1, 8, 0, 1};
  Put(fadt, 116, reset_gas, sizeof(reset_gas));
  PutInt<uint64_t>(fadt, 120, 0x64);
  fadt[128] = 0xfe;
  fadt[131] = 5;  // FADT minor version: ACPI 6.5
  PutInt<uint64_t>(fadt, 140, dsdt_addr);
  Put(fadt, 268, "TARTARUS", 8);  // hypervisor vendor identity
  return fadt;
}

}  // namespace

uint8_t AcpiChecksum(std::span<const uint8_t> bytes) {
  uint8_t sum = 0;
  for (uint8_t byte : bytes) sum = static_cast<uint8_t>(sum + byte);
  return sum;
}

namespace aml {

std::vector<uint8_t> PkgLength(size_t content_length) {
  size_t total = content_length + 1;
  if (total <= 0x3f) return {static_cast<uint8_t>(total)};
  for (size_t extra = 1; extra <= 3; ++extra) {
    total = content_length + 1 + extra;
    if (total < (size_t{1} << (4 + 8 * extra))) {
      std::vector<uint8_t> out{static_cast<uint8_t>((extra << 6) | (total & 0xf))};
      for (size_t i = 0; i < extra; ++i) out.push_back(static_cast<uint8_t>(total >> (4 + 8 * i)));
      return out;
    }
  }
  return {};  // callers never build 256 MiB of AML
}

std::vector<uint8_t> Integer(uint64_t value) {
  if (value == 0) return {0x00};  // ZeroOp
  if (value == 1) return {0x01};  // OneOp
  std::vector<uint8_t> out;
  size_t width;
  if (value <= 0xff) {
    out.push_back(0x0a), width = 1;
  } else if (value <= 0xffff) {
    out.push_back(0x0b), width = 2;
  } else if (value <= 0xffffffff) {
    out.push_back(0x0c), width = 4;
  } else {
    out.push_back(0x0e), width = 8;
  }
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
  return out;
}

std::vector<uint8_t> String(std::string_view text) {
  std::vector<uint8_t> out(text.size() + 2, 0);  // sized up front: GCC 12 misreads insert()
  out[0] = 0x0d;
  std::memcpy(out.data() + 1, text.data(), text.size());
  return out;
}

std::vector<uint8_t> EisaId(std::string_view id) {
  // Three letters (5 bits each) and four hex digits, stored big-endian as a DWord.
  auto hex = [](char c) -> uint32_t {
    return c <= '9' ? static_cast<uint32_t>(c - '0') : static_cast<uint32_t>(c - 'A' + 10);
  };
  uint32_t packed = 0;
  if (id.size() == 7) {
    packed = ((static_cast<uint32_t>(id[0] - 0x40) & 0x1f) << 26) |
             ((static_cast<uint32_t>(id[1] - 0x40) & 0x1f) << 21) |
             ((static_cast<uint32_t>(id[2] - 0x40) & 0x1f) << 16) | (hex(id[3]) << 12) |
             (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
  }
  return {0x0c, static_cast<uint8_t>(packed >> 24), static_cast<uint8_t>(packed >> 16),
          static_cast<uint8_t>(packed >> 8), static_cast<uint8_t>(packed)};
}

std::vector<uint8_t> Name(std::string_view name_seg, std::span<const uint8_t> object) {
  std::vector<uint8_t> out{0x08};
  Append(out, NameSeg(name_seg));
  Append(out, object);
  return out;
}

std::vector<uint8_t> Buffer(std::span<const uint8_t> bytes) {
  std::vector<uint8_t> content = Integer(bytes.size());
  Append(content, bytes);
  std::vector<uint8_t> out{0x11};
  Append(out, PkgLength(content.size()));
  Append(out, content);
  return out;
}

std::vector<uint8_t> Device(std::string_view name_seg, std::span<const uint8_t> body) {
  std::vector<uint8_t> content = NameSeg(name_seg);
  Append(content, body);
  std::vector<uint8_t> out{0x5b, 0x82};  // ExtOpPrefix DeviceOp
  Append(out, PkgLength(content.size()));
  Append(out, content);
  return out;
}

std::vector<uint8_t> Scope(std::string_view name_string, std::span<const uint8_t> body) {
  std::vector<uint8_t> content;
  if (!name_string.empty() && name_string[0] == '\\') {
    content.push_back('\\');
    name_string.remove_prefix(1);
  }
  Append(content, NameSeg(name_string));
  Append(content, body);
  std::vector<uint8_t> out{0x10};
  Append(out, PkgLength(content.size()));
  Append(out, content);
  return out;
}

std::vector<uint8_t> Memory32Fixed(uint32_t base, uint32_t length) {
  std::vector<uint8_t> out{0x86, 9, 0, 1};  // large item, 9 bytes, read/write
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(base >> (8 * i)));
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(length >> (8 * i)));
  return out;
}

std::vector<uint8_t> ExtendedInterrupt(uint32_t irq) {
  // Large item 0x89, 6 bytes: flags (consumer | edge), one interrupt number.
  std::vector<uint8_t> out{0x89, 6, 0, 0x03, 1};
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(irq >> (8 * i)));
  return out;
}

std::vector<uint8_t> Io16(uint16_t base, uint8_t length) {
  return {0x47,
          1,  // decodes 16 address bits
          static_cast<uint8_t>(base),
          static_cast<uint8_t>(base >> 8),
          static_cast<uint8_t>(base),
          static_cast<uint8_t>(base >> 8),
          1,
          length};
}

std::vector<uint8_t> IrqNoFlags(uint8_t irq) {
  const uint16_t mask = static_cast<uint16_t>(1u << (irq & 0xf));
  return {0x22, static_cast<uint8_t>(mask), static_cast<uint8_t>(mask >> 8)};
}

std::vector<uint8_t> ResourceTemplate(std::span<const uint8_t> descriptors) {
  std::vector<uint8_t> bytes(descriptors.begin(), descriptors.end());
  bytes.push_back(0x79);  // EndTag; a zero checksum means "not checksummed"
  bytes.push_back(0);
  return Buffer(bytes);
}

}  // namespace aml

Result<AcpiTables> BuildAcpiTables(const AcpiConfig& config, uint64_t rsdp_addr,
                                   uint64_t area_end) {
  if (config.vcpus == 0 || config.vcpus > 255) {
    return Fail(ErrorCode::kInvalidArgument,
                "ACPI: " + std::to_string(config.vcpus) + " vCPUs: the MADT describes 1 to 255");
  }
  if (config.virtio_mmio.size() > 0xfff) {
    return Fail(ErrorCode::kInvalidArgument, "ACPI: more than 4095 virtio-mmio devices");
  }
  for (size_t i = 0; i < config.virtio_mmio.size(); ++i) {
    const VirtioMmioSlot& slot = config.virtio_mmio[i];
    const std::string name = "ACPI: virtio-mmio slot " + std::to_string(i);
    if (slot.size == 0 || slot.base > 0xffffffffull || slot.size > 0x100000000ull - slot.base) {
      return Fail(ErrorCode::kInvalidArgument,
                  name + ": [base, base + size) must be non-empty and below 4 GiB");
    }
    if (slot.irq == 0 || slot.irq >= kIoApicPins || slot.irq == kCom1Irq) {
      return Fail(ErrorCode::kInvalidArgument, name + ": IRQ " + std::to_string(slot.irq) +
                                                   " is not a free IOAPIC pin (1-23, 4 is COM1)");
    }
    for (size_t j = 0; j < i; ++j) {
      const VirtioMmioSlot& other = config.virtio_mmio[j];
      if (slot.base < other.base + other.size && other.base < slot.base + slot.size) {
        return Fail(ErrorCode::kInvalidArgument,
                    name + " overlaps slot " + std::to_string(j) + "'s registers");
      }
    }
  }

  AcpiTables tables;
  tables.rsdp_addr = rsdp_addr;
  std::vector<uint8_t> dsdt = BuildDsdt(config);
  std::vector<uint8_t> madt = BuildMadt(config.vcpus);
  std::vector<uint8_t> xsdt = SdtHeader("XSDT", kSdtHeaderSize + 2 * 8, 1);
  const uint64_t xsdt_addr = AlignUp(rsdp_addr + kRsdpSize, 16);
  const uint64_t fadt_addr = AlignUp(xsdt_addr + xsdt.size(), 16);
  const uint64_t dsdt_addr = AlignUp(fadt_addr + kFadtSize, 16);
  const uint64_t madt_addr = AlignUp(dsdt_addr + dsdt.size(), 16);
  if (madt_addr + madt.size() > area_end) {
    return Fail(ErrorCode::kResourceExhausted,
                "ACPI: tables need " + std::to_string(madt_addr + madt.size() - rsdp_addr) +
                    " bytes, more than the " + std::to_string(area_end - rsdp_addr) +
                    " reserved for them");
  }
  std::vector<uint8_t> fadt = BuildFadt(dsdt_addr);
  PutInt<uint64_t>(xsdt, kSdtHeaderSize, fadt_addr);
  PutInt<uint64_t>(xsdt, kSdtHeaderSize + 8, madt_addr);
  for (std::vector<uint8_t>* table : {&xsdt, &fadt, &dsdt, &madt}) SealSdt(*table);

  std::vector<uint8_t> rsdp(kRsdpSize, 0);
  Put(rsdp, 0, "RSD PTR ", 8);
  Put(rsdp, 9, "TARTAR", 6);
  rsdp[15] = 2;  // revision: ACPI 2.0+, XSDT only (RsdtAddress stays 0)
  PutInt<uint32_t>(rsdp, 20, kRsdpSize);
  PutInt<uint64_t>(rsdp, 24, xsdt_addr);
  rsdp[8] = static_cast<uint8_t>(-AcpiChecksum(std::span(rsdp).first(20)));
  rsdp[32] = static_cast<uint8_t>(-AcpiChecksum(rsdp));
  tables.rsdp = std::move(rsdp);
  tables.tables = {{xsdt_addr, std::move(xsdt)},
                   {fadt_addr, std::move(fadt)},
                   {dsdt_addr, std::move(dsdt)},
                   {madt_addr, std::move(madt)}};
  return tables;
}

Result<uint64_t> WriteAcpiTables(GuestMemory& memory, const AcpiConfig& config) {
  AcpiTables tables = TRY(BuildAcpiTables(config));
  TRY(memory.Fill(kRsdpAddr, kAcpiAreaEnd - kRsdpAddr, 0));
  TRY(memory.Write(tables.rsdp_addr, tables.rsdp));
  for (const AcpiTables::Table& table : tables.tables) TRY(memory.Write(table.addr, table.bytes));
  return tables.rsdp_addr;
}

}  // namespace tartarus::vmm

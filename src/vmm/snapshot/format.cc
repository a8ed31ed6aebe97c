// Persephone (tartarus-vmm snapshots): the snapshot state file format (see format.h).
#include "vmm/snapshot/format.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <set>
#include <type_traits>

namespace tartarus::vmm::snapshot {
namespace {

constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8;
constexpr size_t kTableEntryBytes = 4 + 4 + 8 + 8;
constexpr size_t kTrailerBytes = 4;
constexpr size_t kRegionBytes = 24;
constexpr size_t kMsrBytes = 16;  // u32 index, u32 reserved, u64 value
constexpr size_t kMaxSections = 2 + kMaxVcpus + kMaxDevices;

// Field tags inside each section.
enum VmField : uint32_t { kPicMaster = 1, kPicSlave, kIoapic, kPit, kClock, kVmFieldEnd };
enum MemoryField : uint32_t { kRegions = 1, kMemoryFieldEnd };
enum VcpuField : uint32_t {
  kIndex = 1,
  kCpuid,
  kMpState,
  kRegs,
  kSregs,
  kFpu,
  kXsave,
  kXcrs,
  kDebugRegs,
  kLapic,
  kMsrs,
  kEvents,
  kTscKhz,
  kVcpuFieldEnd
};
enum DeviceField : uint32_t { kDeviceId = 1, kDeviceBlob, kDeviceFieldEnd };

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

Error Invalid(std::string message) {
  return Error{ErrorCode::kInvalidArgument, "snapshot state file: " + std::move(message)};
}

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? 0x82f63b78u : 0);
    table[i] = crc;
  }
  return table;
}

// ---- writing ----

class Writer {
 public:
  void U32(uint32_t value) { Raw(&value, sizeof(value)); }
  void U64(uint64_t value) { Raw(&value, sizeof(value)); }
  void Raw(const void* data, size_t length) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    out_.insert(out_.end(), bytes, bytes + length);
  }
  void Field(uint32_t tag, const void* data, size_t length) {
    U32(tag);
    U32(static_cast<uint32_t>(length));
    Raw(data, length);
  }
  template <class T>
  void Field(uint32_t tag, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    Field(tag, &value, sizeof(T));
  }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

std::vector<uint8_t> EncodeVm(const VmState& vm) {
  Writer w;
  w.Field(kPicMaster, vm.pic_master);
  w.Field(kPicSlave, vm.pic_slave);
  w.Field(kIoapic, vm.ioapic);
  w.Field(kPit, vm.pit);
  w.Field(kClock, vm.clock);
  return std::move(w.bytes());
}

std::vector<uint8_t> EncodeMemory(const std::vector<MemoryRegionLayout>& memory) {
  Writer regions;
  for (const MemoryRegionLayout& region : memory) {
    regions.U64(region.guest_addr);
    regions.U64(region.size);
    regions.U64(region.file_offset);
  }
  Writer w;
  w.Field(kRegions, regions.bytes().data(), regions.bytes().size());
  return std::move(w.bytes());
}

std::vector<uint8_t> EncodeVcpu(const VcpuState& vcpu) {
  Writer w;
  w.Field(kIndex, vcpu.index);
  w.Field(kCpuid, vcpu.cpuid.data(), vcpu.cpuid.size() * sizeof(kvm_cpuid_entry2));
  w.Field(kMpState, vcpu.mp_state);
  w.Field(kRegs, vcpu.regs);
  w.Field(kSregs, vcpu.sregs);
  w.Field(kFpu, vcpu.fpu);
  if (vcpu.has_xsave) w.Field(kXsave, vcpu.xsave);
  if (vcpu.has_xcrs) w.Field(kXcrs, vcpu.xcrs);
  w.Field(kDebugRegs, vcpu.debug_regs);
  w.Field(kLapic, vcpu.lapic);
  Writer msrs;
  for (const MsrEntry& msr : vcpu.msrs) {
    msrs.U32(msr.index);
    msrs.U32(0);
    msrs.U64(msr.value);
  }
  w.Field(kMsrs, msrs.bytes().data(), msrs.bytes().size());
  w.Field(kEvents, vcpu.events);
  w.Field(kTscKhz, vcpu.tsc_khz);
  return std::move(w.bytes());
}

std::vector<uint8_t> EncodeDevice(const DeviceState& device) {
  Writer w;
  w.Field(kDeviceId, device.id.data(), device.id.size());
  w.Field(kDeviceBlob, device.blob.data(), device.blob.size());
  return std::move(w.bytes());
}

// ---- reading ----

// Bounds-checked little-endian reads; every length is checked before any sum is formed.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  size_t remaining() const { return bytes_.size() - position_; }
  bool U32(uint32_t& value) { return Raw(&value, sizeof(value)); }
  bool U64(uint64_t& value) { return Raw(&value, sizeof(value)); }
  bool Raw(void* out, size_t length) {
    if (length > remaining()) return false;
    std::memcpy(out, bytes_.data() + position_, length);
    position_ += length;
    return true;
  }
  bool Span(size_t length, std::span<const uint8_t>& out) {
    if (length > remaining()) return false;
    out = bytes_.subspan(position_, length);
    position_ += length;
    return true;
  }

 private:
  std::span<const uint8_t> bytes_;
  size_t position_ = 0;
};

struct FieldView {
  uint32_t tag = 0;
  std::span<const uint8_t> data;
};

// Splits a section into fields; refuses truncation, unknown tags and repeats.
Result<std::vector<FieldView>> SplitFields(std::span<const uint8_t> section, uint32_t tag_end,
                                           const std::string& where) {
  Reader reader(section);
  std::vector<FieldView> fields;
  std::set<uint32_t> seen;
  while (reader.remaining() > 0) {
    FieldView field;
    uint32_t length = 0;
    if (!reader.U32(field.tag) || !reader.U32(length)) {
      return Fail(Invalid(where + ": truncated field header"));
    }
    if (field.tag == 0 || field.tag >= tag_end) {
      return Fail(Invalid(where + ": unknown field tag " + std::to_string(field.tag)));
    }
    if (!seen.insert(field.tag).second) {
      return Fail(Invalid(where + ": field " + std::to_string(field.tag) + " appears twice"));
    }
    if (!reader.Span(length, field.data)) {
      return Fail(Invalid(where + ": field " + std::to_string(field.tag) + " claims " +
                          std::to_string(length) + " bytes, " + std::to_string(reader.remaining()) +
                          " remain"));
    }
    fields.push_back(field);
  }
  return fields;
}

const FieldView* FindField(const std::vector<FieldView>& fields, uint32_t tag) {
  for (const FieldView& field : fields) {
    if (field.tag == tag) return &field;
  }
  return nullptr;
}

template <class T>
Status ReadFixed(const std::vector<FieldView>& fields, uint32_t tag, const char* name,
                 const std::string& where, T& out) {
  static_assert(std::is_trivially_copyable_v<T>);
  const FieldView* field = FindField(fields, tag);
  if (field == nullptr) return Fail(Invalid(where + ": missing " + name));
  if (field->data.size() != sizeof(T)) {
    return Fail(Invalid(where + ": " + name + " is " + std::to_string(field->data.size()) +
                        " bytes, expected " + std::to_string(sizeof(T))));
  }
  std::memcpy(&out, field->data.data(), sizeof(T));
  return Ok();
}

// A field holding count items of item_size bytes, count in [min_count, max_count].
Result<std::span<const uint8_t>> ReadArray(const std::vector<FieldView>& fields, uint32_t tag,
                                           const char* name, const std::string& where,
                                           size_t item_size, size_t min_count, size_t max_count) {
  const FieldView* field = FindField(fields, tag);
  if (field == nullptr) return Fail(Invalid(where + ": missing " + name));
  if (field->data.size() % item_size != 0) {
    return Fail(Invalid(where + ": " + name + " length " + std::to_string(field->data.size()) +
                        " is not a multiple of " + std::to_string(item_size)));
  }
  size_t count = field->data.size() / item_size;
  if (count < min_count || count > max_count) {
    return Fail(Invalid(where + ": " + std::to_string(count) + " " + name + " (allowed " +
                        std::to_string(min_count) + " to " + std::to_string(max_count) + ")"));
  }
  return field->data;
}

Result<VmState> DecodeVm(std::span<const uint8_t> section) {
  const std::string where = "VM section";
  std::vector<FieldView> fields = TRY(SplitFields(section, kVmFieldEnd, where));
  VmState vm;
  TRY(ReadFixed(fields, kPicMaster, "PIC master", where, vm.pic_master));
  TRY(ReadFixed(fields, kPicSlave, "PIC slave", where, vm.pic_slave));
  TRY(ReadFixed(fields, kIoapic, "IOAPIC", where, vm.ioapic));
  TRY(ReadFixed(fields, kPit, "PIT", where, vm.pit));
  TRY(ReadFixed(fields, kClock, "clock", where, vm.clock));
  return vm;
}

Result<std::vector<MemoryRegionLayout>> DecodeMemory(std::span<const uint8_t> section) {
  const std::string where = "memory section";
  std::vector<FieldView> fields = TRY(SplitFields(section, kMemoryFieldEnd, where));
  std::span<const uint8_t> data =
      TRY(ReadArray(fields, kRegions, "memory regions", where, kRegionBytes, 1, kMaxMemoryRegions));
  Reader reader(data);
  std::vector<MemoryRegionLayout> memory(data.size() / kRegionBytes);
  for (MemoryRegionLayout& region : memory) {
    (void)(reader.U64(region.guest_addr) && reader.U64(region.size) &&
           reader.U64(region.file_offset));
  }
  return memory;
}

Result<VcpuState> DecodeVcpu(std::span<const uint8_t> section, size_t ordinal) {
  const std::string where = "vCPU section " + std::to_string(ordinal);
  std::vector<FieldView> fields = TRY(SplitFields(section, kVcpuFieldEnd, where));
  VcpuState vcpu;
  TRY(ReadFixed(fields, kIndex, "vCPU index", where, vcpu.index));
  std::span<const uint8_t> cpuid = TRY(ReadArray(fields, kCpuid, "CPUID entries", where,
                                                 sizeof(kvm_cpuid_entry2), 1, kMaxCpuidEntries));
  vcpu.cpuid.resize(cpuid.size() / sizeof(kvm_cpuid_entry2));
  std::memcpy(vcpu.cpuid.data(), cpuid.data(), cpuid.size());
  TRY(ReadFixed(fields, kMpState, "MP state", where, vcpu.mp_state));
  TRY(ReadFixed(fields, kRegs, "registers", where, vcpu.regs));
  TRY(ReadFixed(fields, kSregs, "special registers", where, vcpu.sregs));
  TRY(ReadFixed(fields, kFpu, "FPU", where, vcpu.fpu));
  if (FindField(fields, kXsave) != nullptr) {
    vcpu.has_xsave = true;
    TRY(ReadFixed(fields, kXsave, "XSAVE area", where, vcpu.xsave));
  }
  if (FindField(fields, kXcrs) != nullptr) {
    vcpu.has_xcrs = true;
    TRY(ReadFixed(fields, kXcrs, "XCRs", where, vcpu.xcrs));
  }
  TRY(ReadFixed(fields, kDebugRegs, "debug registers", where, vcpu.debug_regs));
  TRY(ReadFixed(fields, kLapic, "LAPIC", where, vcpu.lapic));
  std::span<const uint8_t> msrs =
      TRY(ReadArray(fields, kMsrs, "MSRs", where, kMsrBytes, 0, kMaxMsrs));
  Reader reader(msrs);
  vcpu.msrs.resize(msrs.size() / kMsrBytes);
  for (MsrEntry& msr : vcpu.msrs) {
    uint32_t reserved = 0;
    (void)(reader.U32(msr.index) && reader.U32(reserved) && reader.U64(msr.value));
    if (reserved != 0) return Fail(Invalid(where + ": MSR entry with non-zero reserved bits"));
  }
  TRY(ReadFixed(fields, kEvents, "vCPU events", where, vcpu.events));
  TRY(ReadFixed(fields, kTscKhz, "TSC frequency", where, vcpu.tsc_khz));
  return vcpu;
}

Result<DeviceState> DecodeDevice(std::span<const uint8_t> section, size_t ordinal) {
  const std::string where = "device section " + std::to_string(ordinal);
  std::vector<FieldView> fields = TRY(SplitFields(section, kDeviceFieldEnd, where));
  std::span<const uint8_t> id =
      TRY(ReadArray(fields, kDeviceId, "device id bytes", where, 1, 1, kMaxDeviceIdBytes));
  std::span<const uint8_t> blob =
      TRY(ReadArray(fields, kDeviceBlob, "device state bytes", where, 1, 0, kMaxDeviceBlobBytes));
  return DeviceState{std::string(id.begin(), id.end()),
                     std::vector<uint8_t>(blob.begin(), blob.end())};
}

bool ValidDeviceIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

Status ValidateMemory(const std::vector<MemoryRegionLayout>& memory) {
  if (memory.empty() || memory.size() > kMaxMemoryRegions) {
    return Fail(Invalid(std::to_string(memory.size()) + " memory regions (allowed 1 to " +
                        std::to_string(kMaxMemoryRegions) + ")"));
  }
  for (size_t i = 0; i < memory.size(); ++i) {
    const MemoryRegionLayout& region = memory[i];
    const std::string name = "memory region " + std::to_string(i) + " (guest " +
                             Hex(region.guest_addr) + ", size " + Hex(region.size) + ")";
    if (region.size == 0 || region.size % kPageSize != 0 || region.guest_addr % kPageSize != 0 ||
        region.file_offset % kPageSize != 0) {
      return Fail(Invalid(name + ": empty or not page aligned"));
    }
    if (region.guest_addr > UINT64_MAX - region.size ||
        region.file_offset > UINT64_MAX - region.size) {
      return Fail(Invalid(name + ": wraps past the end of the address space"));
    }
    for (size_t j = 0; j < i; ++j) {
      const MemoryRegionLayout& other = memory[j];
      if (region.guest_addr < other.guest_addr + other.size &&
          other.guest_addr < region.guest_addr + region.size) {
        return Fail(Invalid(name + ": overlaps memory region " + std::to_string(j) +
                            " in guest physical memory"));
      }
      if (region.file_offset < other.file_offset + other.size &&
          other.file_offset < region.file_offset + region.size) {
        return Fail(Invalid(name + ": overlaps memory region " + std::to_string(j) +
                            " in the memory file"));
      }
    }
  }
  return Ok();
}

}  // namespace

uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc) {
  static const std::array<uint32_t, 256> table = MakeCrcTable();
  crc = ~crc;
  for (uint8_t byte : data) crc = table[(crc ^ byte) & 0xff] ^ (crc >> 8);
  return ~crc;
}

Status ValidateSnapshot(const Snapshot& snapshot) {
  TRY(ValidateMemory(snapshot.memory));
  const VmState& vm = snapshot.vm;
  if (vm.pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER ||
      vm.pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE || vm.ioapic.chip_id != KVM_IRQCHIP_IOAPIC) {
    return Fail(Invalid("irqchip ids are not PIC master, PIC slave, IOAPIC"));
  }
  if (snapshot.vcpus.empty() || snapshot.vcpus.size() > kMaxVcpus) {
    return Fail(Invalid(std::to_string(snapshot.vcpus.size()) + " vCPUs (allowed 1 to " +
                        std::to_string(kMaxVcpus) + ")"));
  }
  std::vector<bool> seen(snapshot.vcpus.size(), false);
  for (const VcpuState& vcpu : snapshot.vcpus) {
    const std::string name = "vCPU " + std::to_string(vcpu.index);
    if (vcpu.index >= snapshot.vcpus.size() || seen[vcpu.index]) {
      return Fail(Invalid(name + ": index out of range or repeated (" +
                          std::to_string(snapshot.vcpus.size()) + " vCPUs)"));
    }
    seen[vcpu.index] = true;
    if (vcpu.cpuid.empty() || vcpu.cpuid.size() > kMaxCpuidEntries) {
      return Fail(Invalid(name + ": " + std::to_string(vcpu.cpuid.size()) + " CPUID entries"));
    }
    if (vcpu.msrs.size() > kMaxMsrs) {
      return Fail(Invalid(name + ": " + std::to_string(vcpu.msrs.size()) + " MSRs"));
    }
    if (vcpu.has_xcrs && vcpu.xcrs.nr_xcrs > KVM_MAX_XCRS) {
      return Fail(Invalid(name + ": " + std::to_string(vcpu.xcrs.nr_xcrs) + " XCRs (at most " +
                          std::to_string(KVM_MAX_XCRS) + ")"));
    }
  }
  if (snapshot.devices.size() > kMaxDevices) {
    return Fail(Invalid(std::to_string(snapshot.devices.size()) + " devices (at most " +
                        std::to_string(kMaxDevices) + ")"));
  }
  std::set<std::string> ids;
  for (const DeviceState& device : snapshot.devices) {
    if (device.id.empty() || device.id.size() > kMaxDeviceIdBytes ||
        !std::all_of(device.id.begin(), device.id.end(), ValidDeviceIdChar)) {
      return Fail(Invalid("device id of " + std::to_string(device.id.size()) +
                          " bytes is empty, too long or not [A-Za-z0-9_.-]"));
    }
    if (!ids.insert(device.id).second) {
      return Fail(Invalid("device id '" + device.id + "' appears twice"));
    }
    if (device.blob.size() > kMaxDeviceBlobBytes) {
      return Fail(Invalid("device '" + device.id + "': state of " +
                          std::to_string(device.blob.size()) + " bytes is too large"));
    }
  }
  return Ok();
}

Result<std::vector<uint8_t>> EncodeSnapshot(const Snapshot& snapshot) {
  TRY(ValidateSnapshot(snapshot));
  std::vector<std::pair<SectionType, std::vector<uint8_t>>> sections;
  sections.emplace_back(SectionType::kVm, EncodeVm(snapshot.vm));
  sections.emplace_back(SectionType::kMemory, EncodeMemory(snapshot.memory));
  for (const VcpuState& vcpu : snapshot.vcpus) {
    sections.emplace_back(SectionType::kVcpu, EncodeVcpu(vcpu));
  }
  for (const DeviceState& device : snapshot.devices) {
    sections.emplace_back(SectionType::kDevice, EncodeDevice(device));
  }
  uint64_t size = kHeaderBytes + sections.size() * kTableEntryBytes + kTrailerBytes;
  for (const auto& section : sections) size += section.second.size();
  if (size > kMaxStateFileBytes) {
    return Fail(Invalid("would be " + std::to_string(size) + " bytes, more than the " +
                        std::to_string(kMaxStateFileBytes) + " a reader accepts"));
  }
  Writer w;
  w.Raw(kMagic, sizeof(kMagic));
  w.U32(kFormatVersion);
  w.U32(static_cast<uint32_t>(sections.size()));
  w.U64(size);
  uint64_t offset = kHeaderBytes + sections.size() * kTableEntryBytes;
  for (const auto& [type, bytes] : sections) {
    w.U32(static_cast<uint32_t>(type));
    w.U32(0);
    w.U64(offset);
    w.U64(bytes.size());
    offset += bytes.size();
  }
  for (const auto& section : sections) w.Raw(section.second.data(), section.second.size());
  w.U32(Crc32c(w.bytes()));
  return std::move(w.bytes());
}

Result<Snapshot> DecodeSnapshot(std::span<const uint8_t> bytes) {
  if (bytes.size() < kHeaderBytes + kTrailerBytes) {
    return Fail(Invalid("truncated: " + std::to_string(bytes.size()) +
                        " bytes is shorter than the header"));
  }
  if (bytes.size() > kMaxStateFileBytes) {
    return Fail(Invalid(std::to_string(bytes.size()) + " bytes is more than the limit of " +
                        std::to_string(kMaxStateFileBytes)));
  }
  Reader header(bytes);
  char magic[8];
  uint32_t version = 0;
  uint32_t section_count = 0;
  uint64_t file_size = 0;
  (void)(header.Raw(magic, sizeof(magic)) && header.U32(version) && header.U32(section_count) &&
         header.U64(file_size));
  if (std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return Fail(Invalid("wrong magic: not a tartarus-vmm snapshot"));
  }
  if (version != kFormatVersion) {
    return Fail(Invalid("format version " + std::to_string(version) + " is not supported (this " +
                        "reader knows version " + std::to_string(kFormatVersion) + ")"));
  }
  if (file_size != bytes.size()) {
    return Fail(Invalid(std::string(file_size > bytes.size() ? "truncated" : "trailing bytes") +
                        ": header says " + std::to_string(file_size) + " bytes, file has " +
                        std::to_string(bytes.size())));
  }
  const size_t body = bytes.size() - kTrailerBytes;
  uint32_t stored_crc = 0;
  std::memcpy(&stored_crc, bytes.data() + body, sizeof(stored_crc));
  uint32_t crc = Crc32c(bytes.first(body));
  if (crc != stored_crc) {
    return Fail(Invalid("CRC-32C mismatch (stored " + Hex(stored_crc) + ", computed " + Hex(crc) +
                        "): the file is corrupt"));
  }
  if (section_count < 3 || section_count > kMaxSections) {
    return Fail(Invalid(std::to_string(section_count) + " sections (allowed 3 to " +
                        std::to_string(kMaxSections) + ")"));
  }
  const uint64_t table_end = kHeaderBytes + uint64_t{section_count} * kTableEntryBytes;
  if (table_end > body) return Fail(Invalid("truncated section table"));

  Snapshot snapshot;
  bool have_vm = false;
  bool have_memory = false;
  uint64_t expected_offset = table_end;
  for (uint32_t i = 0; i < section_count; ++i) {
    uint32_t type = 0;
    uint32_t reserved = 0;
    uint64_t offset = 0;
    uint64_t length = 0;
    (void)(header.U32(type) && header.U32(reserved) && header.U64(offset) && header.U64(length));
    const std::string name = "section " + std::to_string(i);
    if (reserved != 0) return Fail(Invalid(name + ": non-zero reserved bits"));
    // Sections tile the file in table order: no gaps, overlaps or bytes outside the body.
    if (offset != expected_offset) {
      return Fail(Invalid(name + " starts at " + std::to_string(offset) + ", expected " +
                          std::to_string(expected_offset)));
    }
    if (length > body - offset) {
      return Fail(Invalid(name + ": length " + std::to_string(length) + " runs past the end"));
    }
    expected_offset = offset + length;
    std::span<const uint8_t> data = bytes.subspan(offset, length);
    switch (static_cast<SectionType>(type)) {
      case SectionType::kVm:
        if (have_vm) return Fail(Invalid("more than one VM section"));
        have_vm = true;
        snapshot.vm = TRY(DecodeVm(data));
        break;
      case SectionType::kMemory:
        if (have_memory) return Fail(Invalid("more than one memory section"));
        have_memory = true;
        snapshot.memory = TRY(DecodeMemory(data));
        break;
      case SectionType::kVcpu:
        if (snapshot.vcpus.size() >= kMaxVcpus) return Fail(Invalid("too many vCPU sections"));
        snapshot.vcpus.push_back(TRY(DecodeVcpu(data, snapshot.vcpus.size())));
        break;
      case SectionType::kDevice:
        if (snapshot.devices.size() >= kMaxDevices) {
          return Fail(Invalid("too many device sections"));
        }
        snapshot.devices.push_back(TRY(DecodeDevice(data, snapshot.devices.size())));
        break;
      default:
        return Fail(Invalid(name + ": unknown type " + std::to_string(type)));
    }
  }
  if (expected_offset != body) {
    return Fail(Invalid(std::to_string(body - expected_offset) +
                        " bytes after the last section belong to none"));
  }
  if (!have_vm) return Fail(Invalid("no VM section"));
  if (!have_memory) return Fail(Invalid("no memory section"));
  TRY(ValidateSnapshot(snapshot));
  return snapshot;
}

Status CheckMemoryFileSize(const std::vector<MemoryRegionLayout>& memory, uint64_t file_size) {
  for (size_t i = 0; i < memory.size(); ++i) {
    const MemoryRegionLayout& region = memory[i];
    if (region.file_offset > file_size || region.size > file_size - region.file_offset) {
      return Fail(
          Error{ErrorCode::kInvalidArgument, "snapshot memory file: " + std::to_string(file_size) +
                                                 " bytes, but memory region " + std::to_string(i) +
                                                 " needs [" + Hex(region.file_offset) + ", " +
                                                 Hex(region.file_offset + region.size) + ")"});
    }
  }
  return Ok();
}

}  // namespace tartarus::vmm::snapshot

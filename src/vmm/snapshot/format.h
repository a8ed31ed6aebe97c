// Persephone (tartarus-vmm snapshots): the snapshot state file format.
// A state file is outside input: the reader refuses anything malformed with an Error naming
// what was wrong, before any of it reaches KVM. Guest memory lives in a separate file whose
// layout (which file offset holds which guest range) is recorded here.
//
// Layout (little-endian, x86_64 KVM structs as the kernel ABI lays them out):
//   header   magic "TTRSNAP\0", u32 version, u32 section count, u64 file size
//   table    per section: u32 type, u32 reserved (0), u64 offset, u64 length
//   sections VM, memory layout, one per vCPU, one per device blob (see SectionType)
//   trailer  u32 CRC-32C of every byte before it
// Sections are records of fields: u32 tag, u32 length, bytes. Each field has a fixed size
// (or a bounded count of fixed-size items); every required field appears exactly once.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/kvm.h"

namespace tartarus::vmm::snapshot {

inline constexpr char kMagic[8] = {'T', 'T', 'R', 'S', 'N', 'A', 'P', '\0'};
inline constexpr uint32_t kFormatVersion = 1;

// Bounds the reader enforces (far above anything tartarus-vmm writes).
inline constexpr size_t kMaxStateFileBytes = 64u << 20;
inline constexpr size_t kMaxVcpus = 256;
inline constexpr size_t kMaxMsrs = 2048;
inline constexpr size_t kMaxCpuidEntries = 256;  // KVM_MAX_CPUID_ENTRIES
inline constexpr size_t kMaxMemoryRegions = 64;
inline constexpr size_t kMaxDevices = 64;
inline constexpr size_t kMaxDeviceIdBytes = 64;
inline constexpr size_t kMaxDeviceBlobBytes = 16u << 20;
inline constexpr uint64_t kPageSize = 4096;

enum class SectionType : uint32_t {
  kVm = 1,
  kMemory = 2,
  kVcpu = 3,
  kDevice = 4,
};

// The VM-wide KVM state: in-kernel irqchip, PIT and kvmclock.
struct VmState {
  kvm_irqchip pic_master{};
  kvm_irqchip pic_slave{};
  kvm_irqchip ioapic{};
  kvm_pit_state2 pit{};
  kvm_clock_data clock{};
};

// One vCPU's KVM state. FPU is always present; XSAVE and XCRs only where KVM has them.
struct VcpuState {
  uint32_t index = 0;  // vCPU id; the file holds ids 0..n-1, each once
  std::vector<kvm_cpuid_entry2> cpuid;
  kvm_mp_state mp_state{};
  kvm_regs regs{};
  kvm_sregs sregs{};
  kvm_fpu fpu{};
  bool has_xsave = false;
  XsaveArea xsave{};
  bool has_xcrs = false;
  kvm_xcrs xcrs{};
  kvm_debugregs debug_regs{};
  kvm_lapic_state lapic{};
  std::vector<MsrEntry> msrs;
  kvm_vcpu_events events{};
  uint32_t tsc_khz = 0;  // 0: unknown
};

// Where one guest RAM region's bytes are in the memory file.
struct MemoryRegionLayout {
  uint64_t guest_addr = 0;
  uint64_t size = 0;         // a multiple of kPageSize
  uint64_t file_offset = 0;  // a multiple of kPageSize
};

// A device model's own state, opaque to this format, keyed by the device's id.
struct DeviceState {
  std::string id;  // 1 to kMaxDeviceIdBytes of [A-Za-z0-9_.-]
  std::vector<uint8_t> blob;
};

struct Snapshot {
  VmState vm;
  std::vector<MemoryRegionLayout> memory;
  std::vector<VcpuState> vcpus;
  std::vector<DeviceState> devices;
};

// CRC-32C (Castagnoli), as iSCSI and ext4 use it.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

// Checks the same bounds the reader does, so a writer cannot produce a file it would refuse.
Status ValidateSnapshot(const Snapshot& snapshot);

Result<std::vector<uint8_t>> EncodeSnapshot(const Snapshot& snapshot);
Result<Snapshot> DecodeSnapshot(std::span<const uint8_t> bytes);

// The memory file must hold every region: bytes [file_offset, file_offset + size).
Status CheckMemoryFileSize(const std::vector<MemoryRegionLayout>& memory, uint64_t file_size);

}  // namespace tartarus::vmm::snapshot

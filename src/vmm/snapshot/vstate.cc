// Persephone (tartarus-vmm snapshots): capturing and restoring KVM state, and the files.
#include "vmm/snapshot/vstate.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tartarus::vmm::snapshot {
namespace {

constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrTscDeadline = 0x6e0;

struct MsrRange {
  uint32_t first;
  uint32_t last;  // inclusive
};

// Firecracker's serializable MSR ranges (src/vmm/src/arch/x86_64/msr.rs), minus MCG_CTL
// (Linux does not export it) and write-only command MSRs. Everything else KVM lists is either
// derived from CPUID or host configuration and is set up again by the restore itself.
constexpr MsrRange kSavedMsrs[] = {
    {0x0, 0x1},                // P5 machine-check address/type
    {0x10, 0x12},              // TSC, kvmclock wall clock and system time (old numbers)
    {0x17, 0x17},              // platform id
    {0x1b, 0x1b},              // APIC base
    {0x2a, 0x2a},              // EBL_CR_POWERON
    {0x2c, 0x2c},              // EBC_FREQUENCY_ID
    {0x34, 0x34},              // SMI count
    {0x3a, 0x3b},              // feature control, TSC_ADJUST
    {0x48, 0x48},              // SPEC_CTRL
    {0x8b, 0x8b},              // microcode revision
    {0x9e, 0x9e},              // SMBASE
    {0xcd, 0xce},              // FSB frequency, platform info
    {0xe1, 0xe2},              // UMWAIT control, C-state config
    {0xe7, 0xe8},              // MPERF, APERF
    {0xfe, 0xfe},              // MTRR capabilities
    {0x10a, 0x10a},            // ARCH_CAPABILITIES
    {0x11e, 0x11e},            // BBL_CR_CTL3
    {0x122, 0x122},            // TSX_CTRL
    {0x174, 0x176},            // SYSENTER CS/ESP/EIP
    {0x179, 0x17a},            // MCG_CAP, MCG_STATUS
    {0x198, 0x198},            // PERF_STATUS
    {0x1a0, 0x1a0},            // MISC_ENABLE
    {0x1a4, 0x1a4},            // MISC_FEATURE_CONTROL
    {0x1aa, 0x1aa},            // MISC_PWR_MGMT
    {0x1ad, 0x1ad},            // TURBO_RATIO_LIMIT
    {0x1d9, 0x1d9},            // DEBUGCTL
    {0x1db, 0x1de},            // last branch / exception IPs
    {0x200, 0x21f},            // variable MTRRs
    {0x250, 0x250},            // fixed MTRRs
    {0x258, 0x259},            //
    {0x268, 0x26f},            //
    {0x277, 0x277},            // PAT
    {0x2ff, 0x2ff},            // MTRR default type
    {0x400, 0x47f},            // MCE banks
    {0x4d0, 0x4d0},            // MCG_EXT_CTL
    {0x6e0, 0x6e0},            // TSC_DEADLINE
    {0xda0, 0xda0},            // XSS
    {0x4b564d00, 0x4b564dff},  // KVM paravirtual: kvmclock, async PF, steal time, PV EOI, ...
    {0xc0000080, 0xc0000084},  // EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    {0xc0000100, 0xc0000103},  // FS/GS base, KERNEL_GS_BASE, TSC_AUX
    {0xc0010015, 0xc0010015},  // AMD HWCR
    {0xc001011f, 0xc001011f},  // AMD VIRT_SPEC_CTRL
};

bool ShouldSave(uint32_t index) {
  return std::any_of(std::begin(kSavedMsrs), std::end(kSavedMsrs),
                     [index](const MsrRange& r) { return index >= r.first && index <= r.last; });
}

Status WriteAllAt(int fd, const uint8_t* data, size_t length, uint64_t offset) {
  while (length > 0) {
    ssize_t wrote = ::pwrite(fd, data, length, static_cast<off_t>(offset));
    if (wrote < 0) {
      if (errno == EINTR) continue;
      return FailErrno("writing snapshot memory file");
    }
    data += wrote;
    length -= static_cast<size_t>(wrote);
    offset += static_cast<uint64_t>(wrote);
  }
  return Ok();
}

bool AllZero(const uint8_t* page) {
  static const uint8_t kZero[kPageSize] = {};
  return std::memcmp(page, kZero, kPageSize) == 0;
}

}  // namespace

std::vector<uint32_t> MsrsToSave(const std::vector<uint32_t>& supported) {
  std::vector<uint32_t> msrs;
  for (uint32_t index : supported) {
    if (ShouldSave(index) && std::find(msrs.begin(), msrs.end(), index) == msrs.end()) {
      msrs.push_back(index);
    }
  }
  // TSC first, TSC_DEADLINE last; the rest keeps KVM's order.
  std::stable_partition(msrs.begin(), msrs.end(), [](uint32_t i) { return i == kMsrTsc; });
  std::stable_partition(msrs.begin(), msrs.end(), [](uint32_t i) { return i != kMsrTscDeadline; });
  return msrs;
}

Result<VcpuCaptureConfig> VcpuCaptureConfigFor(const KvmSystem& kvm) {
  VcpuCaptureConfig config;
  config.msrs = MsrsToSave(TRY(kvm.GetMsrIndexList()));
  config.xsave = kvm.CheckExtension(KVM_CAP_XSAVE) > 0;
  config.xcrs = kvm.CheckExtension(KVM_CAP_XCRS) > 0;
  return config;
}

Result<VcpuState> CaptureVcpu(const VcpuFd& vcpu, uint32_t index, const VcpuCaptureConfig& config) {
  VcpuState state;
  state.index = index;
  // Firecracker's order: KVM_GET_MP_STATE may process pending LAPIC events, so it goes
  // first; vCPU events last, since the other reads can change pending-event state.
  state.mp_state = TRY(vcpu.GetMpState());
  state.regs = TRY(vcpu.GetRegs());
  state.sregs = TRY(vcpu.GetSregs());
  state.fpu = TRY(vcpu.GetFpu());
  if (config.xsave) {
    state.has_xsave = true;
    state.xsave = TRY(vcpu.GetXsave());
  }
  if (config.xcrs) {
    state.has_xcrs = true;
    state.xcrs = TRY(vcpu.GetXcrs());
  }
  state.debug_regs = TRY(vcpu.GetDebugRegs());
  state.lapic = TRY(vcpu.GetLapic());
  if (auto khz = vcpu.GetTscKhz()) state.tsc_khz = *khz;
  state.cpuid = TRY(vcpu.GetCpuid());
  state.msrs = TRY(vcpu.GetMsrs(config.msrs));
  state.events = TRY(vcpu.GetVcpuEvents());
  return state;
}

Result<VmState> CaptureVm(const VmFd& vm) {
  VmState state;
  state.pic_master = TRY(vm.GetIrqchip(kIrqchipPicMaster));
  state.pic_slave = TRY(vm.GetIrqchip(kIrqchipPicSlave));
  state.ioapic = TRY(vm.GetIrqchip(kIrqchipIoapic));
  state.pit = TRY(vm.GetPit2());
  state.clock = TRY(vm.GetClock());
  return state;
}

Status RestoreVcpu(VcpuFd& vcpu, const VcpuState& state) {
  // A different host TSC rate: scale the guest's, or its clocks would run fast or slow.
  if (state.tsc_khz != 0) {
    auto khz = vcpu.GetTscKhz();
    if (khz && *khz != state.tsc_khz) TRY(vcpu.SetTscKhz(state.tsc_khz));
  }
  TRY(vcpu.SetCpuid(state.cpuid));
  TRY(vcpu.SetMpState(state.mp_state));
  TRY(vcpu.SetRegs(state.regs));
  TRY(vcpu.SetSregs(state.sregs));
  TRY(vcpu.SetFpu(state.fpu));
  if (state.has_xsave) TRY(vcpu.SetXsave(state.xsave));
  if (state.has_xcrs) TRY(vcpu.SetXcrs(state.xcrs));
  TRY(vcpu.SetDebugRegs(state.debug_regs));
  TRY(vcpu.SetLapic(state.lapic));
  TRY(vcpu.SetMsrs(state.msrs));
  TRY(vcpu.SetVcpuEvents(state.events));
  return Ok();
}

Status RestoreVm(VmFd& vm, const VmState& state) {
  TRY(vm.SetPit2(state.pit));
  // The clock value exactly as saved: no KVM_CLOCK_REALTIME catch-up, so every clone of one
  // snapshot starts from the same guest time.
  kvm_clock_data clock{};
  clock.clock = state.clock.clock;
  TRY(vm.SetClock(clock));
  TRY(vm.SetIrqchip(state.pic_master));
  TRY(vm.SetIrqchip(state.pic_slave));
  TRY(vm.SetIrqchip(state.ioapic));
  return Ok();
}

Result<std::vector<MemoryRegionLayout>> WriteMemoryFile(const GuestMemory& memory, int fd) {
  // Holes must read as zeros: drop whatever the file held before.
  if (::ftruncate(fd, 0) < 0) return FailErrno("truncating snapshot memory file");
  std::vector<MemoryRegionLayout> layout;
  uint64_t offset = 0;
  for (const GuestRegion& region : memory.regions()) {
    layout.push_back({region.guest_addr, region.size, offset});
    // Runs of non-zero pages are written; zero pages stay holes (read back as zeros).
    uint64_t page = 0;
    while (page < region.size) {
      if (AllZero(region.host + page)) {
        page += kPageSize;
        continue;
      }
      uint64_t end = page + kPageSize;
      while (end < region.size && !AllZero(region.host + end)) end += kPageSize;
      TRY(WriteAllAt(fd, region.host + page, end - page, offset + page));
      page = end;
    }
    offset += region.size;
  }
  if (::ftruncate(fd, static_cast<off_t>(offset)) < 0) {
    return FailErrno("sizing snapshot memory file");
  }
  return layout;
}

Status WriteStateFile(const std::string& path, const Snapshot& snapshot) {
  std::vector<uint8_t> bytes = TRY(EncodeSnapshot(snapshot));
  const std::string temporary = path + ".tmp";
  UniqueFd fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return FailErrno("creating " + temporary);
  Status written = WriteAllAt(fd.Get(), bytes.data(), bytes.size(), 0);
  if (written && ::fsync(fd.Get()) < 0) written = FailErrno("fsync " + temporary);
  if (written && ::rename(temporary.c_str(), path.c_str()) < 0) {
    written = FailErrno("renaming " + temporary + " to " + path);
  }
  if (!written) ::unlink(temporary.c_str());
  return written;
}

Result<Snapshot> ReadStateFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return FailErrno("opening snapshot state file " + path);
  struct stat info {};
  if (::fstat(fd.Get(), &info) < 0) return FailErrno("stat " + path);
  if (!S_ISREG(info.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument, "snapshot state file " + path + ": not a file");
  }
  if (static_cast<uint64_t>(info.st_size) > kMaxStateFileBytes) {
    return Fail(ErrorCode::kInvalidArgument, "snapshot state file " + path + ": " +
                                                 std::to_string(info.st_size) +
                                                 " bytes is more than the limit");
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(info.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t got =
        ::pread(fd.Get(), bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return FailErrno("reading " + path);
    if (got == 0) break;  // shrank meanwhile: the decoder reports the truncation
    done += static_cast<size_t>(got);
  }
  bytes.resize(done);
  auto snapshot = DecodeSnapshot(bytes);
  if (!snapshot) return Fail(snapshot.error().Context(path));
  return snapshot;
}

Result<RestoredVm> RestoreFromSnapshot(const Snapshot& snapshot, int memory_fd,
                                       const RestoreOptions& options) {
  TRY(ValidateSnapshot(snapshot));
  // A region past the file's end would fault (SIGBUS) when touched: refuse it up front.
  struct stat info {};
  if (::fstat(memory_fd, &info) < 0) return FailErrno("stat snapshot memory file");
  TRY(CheckMemoryFileSize(snapshot.memory, static_cast<uint64_t>(info.st_size)));
  std::vector<RegionSpec> specs;
  for (const MemoryRegionLayout& region : snapshot.memory) {
    specs.push_back({region.guest_addr, region.size, {memory_fd, region.file_offset}});
  }
  KvmSystem kvm = TRY(KvmSystem::Open(options.kvm_path));
  GuestMemory memory = TRY(GuestMemory::Create(specs));
  VmFd vm = TRY(kvm.CreateVm());
  // Memory slots before the irqchip: once it exists every slot change waits for an SRCU
  // grace period (measured here: ~7 ms per slot after, ~0.2 ms before, for 256 MiB).
  for (size_t slot = 0; slot < memory.regions().size(); ++slot) {
    const GuestRegion& region = memory.regions()[slot];
    TRY(vm.SetUserMemoryRegion(static_cast<uint32_t>(slot), region.guest_addr, region.size,
                               region.host));
  }
  (void)vm.SetTssAddr(options.tss_addr);  // VMX only; as in Vmm::Setup
  TRY(vm.CreateIrqchip());
  TRY(vm.CreatePit2());
  std::vector<VcpuFd> vcpus;
  for (uint32_t id = 0; id < snapshot.vcpus.size(); ++id) vcpus.push_back(TRY(vm.CreateVcpu(id)));
  for (const VcpuState& state : snapshot.vcpus) {
    Status restored = RestoreVcpu(vcpus[state.index], state);
    if (!restored)
      return Fail(restored.error().Context("restoring vCPU " + std::to_string(state.index)));
  }
  TRY(RestoreVm(vm, snapshot.vm));
  return RestoredVm{std::move(kvm), std::move(vm), std::move(memory), std::move(vcpus)};
}

Result<RestoredVm> RestoreFromFiles(const std::string& state_path, const std::string& memory_path,
                                    Snapshot* snapshot_out, const RestoreOptions& options) {
  Snapshot snapshot = TRY(ReadStateFile(state_path));
  UniqueFd memory_fd(::open(memory_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!memory_fd) return FailErrno("opening snapshot memory file " + memory_path);
  // The mappings keep the file referenced; the fd can close when this returns.
  auto restored = RestoreFromSnapshot(snapshot, memory_fd.Get(), options);
  if (restored && snapshot_out != nullptr) *snapshot_out = std::move(snapshot);
  return restored;
}

}  // namespace tartarus::vmm::snapshot

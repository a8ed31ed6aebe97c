// tartarus-vmm (Tartarus's KVM microVM monitor): RAII wrappers over the KVM ioctl API.
#include "vmm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace tartarus::vmm {
namespace {

// Retries on EINTR: only KVM_RUN treats a signal as meaningful, and it does not use this.
int RetryIoctl(int fd, unsigned long request, const void* arg) {
  int rc;
  do {
    rc = ::ioctl(fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  return rc;
}

Status IoctlStatus(int fd, unsigned long request, const void* arg, const char* name) {
  if (RetryIoctl(fd, request, arg) < 0) return FailErrno(name);
  return Ok();
}

constexpr uint32_t Bit(int n) { return 1u << n; }

// <linux/kvm.h> declares kvm_cpuid2 and kvm_msrs with __DECLARE_FLEX_ARRAY, whose empty struct
// has size 1 in C++: sizeof, the entries' offset and the ioctl numbers derived from them all
// differ from the kernel's. So the lists are laid out here: an 8-byte header, then entries.
struct KvmListHeader {
  uint32_t count;
  uint32_t padding;
};
static_assert(sizeof(KvmListHeader) == 8);
constexpr unsigned long kIoctlGetSupportedCpuid = _IOWR(KVMIO, 0x05, KvmListHeader);
constexpr unsigned long kIoctlSetCpuid2 = _IOW(KVMIO, 0x90, KvmListHeader);
constexpr unsigned long kIoctlSetMsrs = _IOW(KVMIO, 0x89, KvmListHeader);
constexpr unsigned long kIoctlGetMsrs = _IOWR(KVMIO, 0x88, KvmListHeader);
constexpr unsigned long kIoctlGetCpuid2 = _IOWR(KVMIO, 0x91, KvmListHeader);
// kvm_msr_list's header is one u32 (its flexible array has the same C++ problem).
constexpr unsigned long kIoctlGetMsrIndexList = _IOWR(KVMIO, 0x02, uint32_t);
constexpr unsigned long kIoctlGetXsave = _IOR(KVMIO, 0xa4, XsaveArea);
constexpr unsigned long kIoctlSetXsave = _IOW(KVMIO, 0xa5, XsaveArea);

template <class Entry>
class KvmList {
 public:
  explicit KvmList(size_t count)
      : storage_((sizeof(KvmListHeader) + count * sizeof(Entry) + 7) / 8) {
    header()->count = static_cast<uint32_t>(count);
  }
  KvmListHeader* header() { return reinterpret_cast<KvmListHeader*>(storage_.data()); }
  Entry* entries() { return reinterpret_cast<Entry*>(storage_.data() + 1); }
  void* data() { return storage_.data(); }

 private:
  std::vector<uint64_t> storage_;  // 8-byte aligned, zeroed
};

}  // namespace

std::vector<MsrEntry> BootMsrs() {
  constexpr uint64_t kMiscEnableFastString = 1;
  constexpr uint64_t kMtrrEnable = 1u << 11;
  constexpr uint64_t kMemTypeWriteBack = 6;
  return {
      {kMsrIa32SysenterCs, 0},
      {kMsrIa32SysenterEsp, 0},
      {kMsrIa32SysenterEip, 0},
      {kMsrStar, 0},
      {kMsrCstar, 0},
      {kMsrKernelGsBase, 0},
      {kMsrSyscallMask, 0},
      {kMsrLstar, 0},
      {kMsrIa32Tsc, 0},
      {kMsrIa32MiscEnable, kMiscEnableFastString},
      {kMsrMtrrDefType, kMtrrEnable | kMemTypeWriteBack},
  };
}

void FilterCpuid(std::vector<kvm_cpuid_entry2>& entries, const CpuidOptions& options) {
  for (kvm_cpuid_entry2& entry : entries) {
    switch (entry.function) {
      case 1: {
        // Topology: initial APIC id and logical processor count; CLFLUSH line size of 64 bytes.
        entry.ebx = (entry.ebx & 0x0000ffffu) | (options.vcpu_index << 24) |
                    ((options.vcpu_count & 0xff) << 16);
        if ((entry.ebx & 0xff00u) == 0) entry.ebx |= 8u << 8;
        entry.ecx |= Bit(31);   // hypervisor: the guest runs under a VMM
        entry.ecx &= ~Bit(3);   // MONITOR/MWAIT: not emulated; guests idle with HLT
        entry.ecx &= ~Bit(5);   // VMX: no nested virtualization
        entry.ecx &= ~Bit(27);  // OSXSAVE mirrors the guest's CR4; KVM sets it at run time
        if (options.emulated_cpu) {
          // KVM's instruction emulator lacks CMPXCHG16B and XSAVE/XRSTOR; AVX, FMA and F16C
          // need XSAVE-managed state.
          entry.ecx &= ~(Bit(13) | Bit(26) | Bit(28) | Bit(12) | Bit(29));
        }
        break;
      }
      case 6:
        // Thermal and power management is not emulated; keep only ARAT (APIC timer always
        // running), which KVM's LAPIC provides.
        entry.eax &= Bit(2);
        entry.ebx = entry.ecx = entry.edx = 0;
        break;
      case 7:
        if (entry.index == 0 && options.emulated_cpu) {
          // AVX2 and the AVX-512 family need XSAVE-managed state.
          entry.ebx &= ~(Bit(5) | Bit(16) | Bit(17) | Bit(21) | Bit(26) | Bit(27) | Bit(28) |
                         Bit(30) | Bit(31));
          entry.ecx &= ~(Bit(1) | Bit(6) | Bit(11) | Bit(12) | Bit(14));
          entry.edx &= ~(Bit(2) | Bit(3) | Bit(8) | Bit(23));
        }
        break;
      case 0xb:
      case 0x1f:
        entry.edx = options.vcpu_index;  // x2APIC id
        break;
      case 0xd:
        if (options.emulated_cpu) entry.eax = entry.ebx = entry.ecx = entry.edx = 0;
        break;
      default:
        break;
    }
  }
}

bool HostKvmIsPvm() { return ::access("/sys/module/kvm_pvm", F_OK) == 0; }

Result<KvmSystem> KvmSystem::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return FailErrno("open " + path);
  int version = ::ioctl(fd.Get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return Fail(ErrorCode::kFailedPrecondition, "KVM_GET_API_VERSION: got " +
                                                    std::to_string(version) + ", need " +
                                                    std::to_string(KVM_API_VERSION));
  }
  return KvmSystem(std::move(fd));
}

int KvmSystem::CheckExtension(int capability) const {
  int rc = ::ioctl(fd_.Get(), KVM_CHECK_EXTENSION, capability);
  return rc < 0 ? 0 : rc;
}

Result<std::vector<kvm_cpuid_entry2>> KvmSystem::GetSupportedCpuid() const {
  for (uint32_t capacity = 128; capacity <= 4096; capacity *= 2) {
    KvmList<kvm_cpuid_entry2> list(capacity);
    if (RetryIoctl(fd_.Get(), kIoctlGetSupportedCpuid, list.data()) < 0) {
      if (errno == E2BIG) continue;
      return FailErrno("KVM_GET_SUPPORTED_CPUID");
    }
    return std::vector<kvm_cpuid_entry2>(list.entries(), list.entries() + list.header()->count);
  }
  return Fail(ErrorCode::kResourceExhausted, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

Result<std::vector<uint32_t>> KvmSystem::GetMsrIndexList() const {
  for (uint32_t capacity = 256; capacity <= 16384; capacity *= 2) {
    std::vector<uint32_t> list(1 + capacity);
    list[0] = capacity;
    if (RetryIoctl(fd_.Get(), kIoctlGetMsrIndexList, list.data()) < 0) {
      if (errno == E2BIG) continue;
      return FailErrno("KVM_GET_MSR_INDEX_LIST");
    }
    uint32_t count = std::min(list[0], capacity);
    return std::vector<uint32_t>(list.begin() + 1, list.begin() + 1 + count);
  }
  return Fail(ErrorCode::kResourceExhausted, "KVM_GET_MSR_INDEX_LIST: more than 16384 MSRs");
}

Result<size_t> KvmSystem::VcpuMmapSize() const {
  int size = ::ioctl(fd_.Get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < 0) return FailErrno("KVM_GET_VCPU_MMAP_SIZE");
  if (static_cast<size_t>(size) < sizeof(kvm_run)) {
    return Fail(ErrorCode::kInternal, "KVM_GET_VCPU_MMAP_SIZE: smaller than struct kvm_run");
  }
  return static_cast<size_t>(size);
}

Result<VmFd> KvmSystem::CreateVm() const {
  size_t mmap_size = TRY(VcpuMmapSize());
  int fd;
  do {
    fd = ::ioctl(fd_.Get(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return FailErrno("KVM_CREATE_VM");
  return VmFd(UniqueFd(fd), mmap_size);
}

Status VmFd::SetUserMemoryRegion(uint32_t slot, uint64_t guest_phys_addr, uint64_t size,
                                 void* host_addr, uint32_t flags) {
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = guest_phys_addr;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host_addr);
  return IoctlStatus(fd_.Get(), KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
}

Status VmFd::SetTssAddr(uint64_t addr) {
  if (::ioctl(fd_.Get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(addr)) < 0) {
    return FailErrno("KVM_SET_TSS_ADDR");
  }
  return Ok();
}

Status VmFd::CreateIrqchip() {
  if (::ioctl(fd_.Get(), KVM_CREATE_IRQCHIP, 0) < 0) return FailErrno("KVM_CREATE_IRQCHIP");
  return Ok();
}

Status VmFd::CreatePit2() {
  kvm_pit_config config{};
  config.flags = KVM_PIT_SPEAKER_DUMMY;  // port 0x61 reads as a present but silent speaker
  return IoctlStatus(fd_.Get(), KVM_CREATE_PIT2, &config, "KVM_CREATE_PIT2");
}

Status VmFd::SetIrqLine(uint32_t irq, bool level) {
  kvm_irq_level irq_level{};
  irq_level.irq = irq;
  irq_level.level = level ? 1 : 0;
  return IoctlStatus(fd_.Get(), KVM_IRQ_LINE, &irq_level, "KVM_IRQ_LINE");
}

Result<VcpuFd> VmFd::CreateVcpu(uint32_t id) {
  int fd = ::ioctl(fd_.Get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return FailErrno("KVM_CREATE_VCPU " + std::to_string(id));
  UniqueFd owned(fd);
  void* run = ::mmap(nullptr, vcpu_mmap_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (run == MAP_FAILED) return FailErrno("mmap kvm_run of vCPU " + std::to_string(id));
  return VcpuFd(std::move(owned), static_cast<kvm_run*>(run), vcpu_mmap_size_);
}

Result<kvm_irqchip> VmFd::GetIrqchip(uint32_t chip_id) const {
  kvm_irqchip chip{};
  chip.chip_id = chip_id;
  TRY(IoctlStatus(fd_.Get(), KVM_GET_IRQCHIP, &chip, "KVM_GET_IRQCHIP"));
  return chip;
}

Status VmFd::SetIrqchip(const kvm_irqchip& chip) {
  return IoctlStatus(fd_.Get(), KVM_SET_IRQCHIP, &chip, "KVM_SET_IRQCHIP");
}

Result<kvm_pit_state2> VmFd::GetPit2() const {
  kvm_pit_state2 pit{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_PIT2, &pit, "KVM_GET_PIT2"));
  return pit;
}

Status VmFd::SetPit2(const kvm_pit_state2& pit) {
  return IoctlStatus(fd_.Get(), KVM_SET_PIT2, &pit, "KVM_SET_PIT2");
}

Result<kvm_clock_data> VmFd::GetClock() const {
  kvm_clock_data clock{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK"));
  return clock;
}

Status VmFd::SetClock(const kvm_clock_data& clock) {
  return IoctlStatus(fd_.Get(), KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK");
}

int VmFd::CheckExtension(int capability) const {
  int rc = ::ioctl(fd_.Get(), KVM_CHECK_EXTENSION, capability);
  return rc < 0 ? 0 : rc;
}

VcpuFd::VcpuFd(VcpuFd&& other) noexcept
    : fd_(std::move(other.fd_)),
      run_(std::exchange(other.run_, nullptr)),
      run_size_(std::exchange(other.run_size_, 0)) {}

VcpuFd& VcpuFd::operator=(VcpuFd&& other) noexcept {
  if (this != &other) {
    Unmap();
    fd_ = std::move(other.fd_);
    run_ = std::exchange(other.run_, nullptr);
    run_size_ = std::exchange(other.run_size_, 0);
  }
  return *this;
}

VcpuFd::~VcpuFd() { Unmap(); }

void VcpuFd::Unmap() {
  if (run_ != nullptr) ::munmap(run_, run_size_);
  run_ = nullptr;
}

Status VcpuFd::Run() {
  if (::ioctl(fd_.Get(), KVM_RUN, 0) < 0) {
    if (errno == EINTR) return Fail(ErrorCode::kCancelled, "KVM_RUN: interrupted");
    return FailErrno("KVM_RUN");
  }
  return Ok();
}

Result<kvm_regs> VcpuFd::GetRegs() const {
  kvm_regs regs{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_REGS, &regs, "KVM_GET_REGS"));
  return regs;
}

Status VcpuFd::SetRegs(const kvm_regs& regs) {
  return IoctlStatus(fd_.Get(), KVM_SET_REGS, &regs, "KVM_SET_REGS");
}

Result<kvm_sregs> VcpuFd::GetSregs() const {
  kvm_sregs sregs{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_SREGS, &sregs, "KVM_GET_SREGS"));
  return sregs;
}

Status VcpuFd::SetSregs(const kvm_sregs& sregs) {
  return IoctlStatus(fd_.Get(), KVM_SET_SREGS, &sregs, "KVM_SET_SREGS");
}

Status VcpuFd::SetCpuid(std::span<const kvm_cpuid_entry2> entries) {
  KvmList<kvm_cpuid_entry2> list(entries.size());
  std::copy(entries.begin(), entries.end(), list.entries());
  return IoctlStatus(fd_.Get(), kIoctlSetCpuid2, list.data(), "KVM_SET_CPUID2");
}

Status VcpuFd::SetMsrs(std::span<const MsrEntry> msrs) {
  KvmList<kvm_msr_entry> list(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) {
    list.entries()[i].index = msrs[i].index;
    list.entries()[i].data = msrs[i].value;
  }
  int set = RetryIoctl(fd_.Get(), kIoctlSetMsrs, list.data());
  if (set < 0) return FailErrno("KVM_SET_MSRS");
  // KVM stops at the first MSR it refuses and returns how many it set.
  if (static_cast<size_t>(set) < msrs.size()) {
    char index[16];
    std::snprintf(index, sizeof(index), "0x%x", msrs[set].index);
    return Fail(ErrorCode::kFailedPrecondition,
                std::string("KVM_SET_MSRS: KVM refused MSR ") + index);
  }
  return Ok();
}

Result<kvm_mp_state> VcpuFd::GetMpState() const {
  kvm_mp_state state{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_MP_STATE, &state, "KVM_GET_MP_STATE"));
  return state;
}

Status VcpuFd::SetFpu(const kvm_fpu& fpu) {
  return IoctlStatus(fd_.Get(), KVM_SET_FPU, &fpu, "KVM_SET_FPU");
}

Result<std::vector<kvm_cpuid_entry2>> VcpuFd::GetCpuid() const {
  for (uint32_t capacity = 128; capacity <= 4096; capacity *= 2) {
    KvmList<kvm_cpuid_entry2> list(capacity);
    if (RetryIoctl(fd_.Get(), kIoctlGetCpuid2, list.data()) < 0) {
      if (errno == E2BIG) continue;
      return FailErrno("KVM_GET_CPUID2");
    }
    uint32_t count = std::min(list.header()->count, capacity);
    return std::vector<kvm_cpuid_entry2>(list.entries(), list.entries() + count);
  }
  return Fail(ErrorCode::kResourceExhausted, "KVM_GET_CPUID2: more than 4096 entries");
}

Result<std::vector<MsrEntry>> VcpuFd::GetMsrs(std::span<const uint32_t> indices) const {
  KvmList<kvm_msr_entry> list(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) list.entries()[i].index = indices[i];
  int read = RetryIoctl(fd_.Get(), kIoctlGetMsrs, list.data());
  if (read < 0) return FailErrno("KVM_GET_MSRS");
  // Like KVM_SET_MSRS, KVM stops at the first MSR it cannot read.
  if (static_cast<size_t>(read) < indices.size()) {
    char index[16];
    std::snprintf(index, sizeof(index), "0x%x", indices[read]);
    return Fail(ErrorCode::kFailedPrecondition,
                std::string("KVM_GET_MSRS: KVM could not read MSR ") + index);
  }
  std::vector<MsrEntry> msrs(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    msrs[i] = {list.entries()[i].index, list.entries()[i].data};
  }
  return msrs;
}

Result<kvm_fpu> VcpuFd::GetFpu() const {
  kvm_fpu fpu{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_FPU, &fpu, "KVM_GET_FPU"));
  return fpu;
}

Result<XsaveArea> VcpuFd::GetXsave() const {
  XsaveArea xsave{};
  TRY(IoctlStatus(fd_.Get(), kIoctlGetXsave, &xsave, "KVM_GET_XSAVE"));
  return xsave;
}

Status VcpuFd::SetXsave(const XsaveArea& xsave) {
  return IoctlStatus(fd_.Get(), kIoctlSetXsave, &xsave, "KVM_SET_XSAVE");
}

Result<kvm_xcrs> VcpuFd::GetXcrs() const {
  kvm_xcrs xcrs{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_XCRS, &xcrs, "KVM_GET_XCRS"));
  return xcrs;
}

Status VcpuFd::SetXcrs(const kvm_xcrs& xcrs) {
  return IoctlStatus(fd_.Get(), KVM_SET_XCRS, &xcrs, "KVM_SET_XCRS");
}

Result<kvm_lapic_state> VcpuFd::GetLapic() const {
  kvm_lapic_state lapic{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC"));
  return lapic;
}

Status VcpuFd::SetLapic(const kvm_lapic_state& lapic) {
  return IoctlStatus(fd_.Get(), KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");
}

Status VcpuFd::SetMpState(const kvm_mp_state& state) {
  return IoctlStatus(fd_.Get(), KVM_SET_MP_STATE, &state, "KVM_SET_MP_STATE");
}

Result<kvm_vcpu_events> VcpuFd::GetVcpuEvents() const {
  kvm_vcpu_events events{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_VCPU_EVENTS, &events, "KVM_GET_VCPU_EVENTS"));
  return events;
}

Status VcpuFd::SetVcpuEvents(const kvm_vcpu_events& events) {
  return IoctlStatus(fd_.Get(), KVM_SET_VCPU_EVENTS, &events, "KVM_SET_VCPU_EVENTS");
}

Result<kvm_debugregs> VcpuFd::GetDebugRegs() const {
  kvm_debugregs regs{};
  TRY(IoctlStatus(fd_.Get(), KVM_GET_DEBUGREGS, &regs, "KVM_GET_DEBUGREGS"));
  return regs;
}

Status VcpuFd::SetDebugRegs(const kvm_debugregs& regs) {
  return IoctlStatus(fd_.Get(), KVM_SET_DEBUGREGS, &regs, "KVM_SET_DEBUGREGS");
}

Result<uint32_t> VcpuFd::GetTscKhz() const {
  int khz = ::ioctl(fd_.Get(), KVM_GET_TSC_KHZ, 0);
  if (khz < 0) return FailErrno("KVM_GET_TSC_KHZ");
  return static_cast<uint32_t>(khz);
}

Status VcpuFd::SetTscKhz(uint32_t khz) {
  if (::ioctl(fd_.Get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) < 0) {
    return FailErrno("KVM_SET_TSC_KHZ");
  }
  return Ok();
}

Status VcpuFd::CompletePendingIo() {
  run_->immediate_exit = 1;
  int rc = ::ioctl(fd_.Get(), KVM_RUN, 0);
  int err = errno;
  run_->immediate_exit = 0;
  // With immediate_exit set KVM_RUN completes the pending exit and returns EINTR.
  if (rc < 0 && err != EINTR) return FailErrno("KVM_RUN (completing pending I/O)", err);
  return Ok();
}

}  // namespace tartarus::vmm

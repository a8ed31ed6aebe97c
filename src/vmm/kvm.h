// tartarus-vmm (Tartarus's KVM microVM monitor): RAII wrappers over the KVM ioctl API.
// Each wrapper owns one fd; errors carry the ioctl's name and errno.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace tartarus::vmm {

// MSR indices the boot path sets.
inline constexpr uint32_t kMsrIa32Tsc = 0x10;
inline constexpr uint32_t kMsrIa32SysenterCs = 0x174;
inline constexpr uint32_t kMsrIa32SysenterEsp = 0x175;
inline constexpr uint32_t kMsrIa32SysenterEip = 0x176;
inline constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
inline constexpr uint32_t kMsrMtrrDefType = 0x2ff;
inline constexpr uint32_t kMsrEfer = 0xc0000080;
inline constexpr uint32_t kMsrStar = 0xc0000081;
inline constexpr uint32_t kMsrLstar = 0xc0000082;
inline constexpr uint32_t kMsrCstar = 0xc0000083;
inline constexpr uint32_t kMsrSyscallMask = 0xc0000084;
inline constexpr uint32_t kMsrKernelGsBase = 0xc0000102;

struct MsrEntry {
  uint32_t index;
  uint64_t value;
};

// struct kvm_xsave's legacy 4 KiB region. <linux/kvm.h> declares it with a flexible array,
// which changes its sizeof (and so the ioctl number) in C++; this is the kernel's layout.
struct XsaveArea {
  uint32_t region[1024];
};
static_assert(sizeof(XsaveArea) == 4096);

// The in-kernel irqchip's three chips (KVM_GET_IRQCHIP chip_id).
inline constexpr uint32_t kIrqchipPicMaster = KVM_IRQCHIP_PIC_MASTER;
inline constexpr uint32_t kIrqchipPicSlave = KVM_IRQCHIP_PIC_SLAVE;
inline constexpr uint32_t kIrqchipIoapic = KVM_IRQCHIP_IOAPIC;

// The MSR values Linux expects at its 64-bit entry point (as Firecracker sets them):
// syscall/sysenter MSRs cleared, TSC at 0, fast strings on, MTRRs enabled with write-back default.
std::vector<MsrEntry> BootMsrs();

// Options for turning the host's supported CPUID into what the guest sees.
struct CpuidOptions {
  uint32_t vcpu_index = 0;
  uint32_t vcpu_count = 1;
  // True when guest code runs through KVM's instruction emulator (PVM hosts): hide the
  // features it cannot execute (see FilterCpuid).
  bool emulated_cpu = false;
};

// Filters KVM_GET_SUPPORTED_CPUID output in place for one vCPU. Pure: unit-testable.
void FilterCpuid(std::vector<kvm_cpuid_entry2>& entries, const CpuidOptions& options);

// True when this host's KVM is PVM (no VMX/SVM; guests run in the instruction emulator).
bool HostKvmIsPvm();

class VcpuFd;
class VmFd;

// The /dev/kvm system fd.
class KvmSystem {
 public:
  static Result<KvmSystem> Open(const std::string& path = "/dev/kvm");

  int CheckExtension(int capability) const;  // 0 when absent or on error
  Result<std::vector<kvm_cpuid_entry2>> GetSupportedCpuid() const;
  // KVM_GET_MSR_INDEX_LIST: every MSR KVM can save and restore for a vCPU.
  Result<std::vector<uint32_t>> GetMsrIndexList() const;
  Result<size_t> VcpuMmapSize() const;
  Result<VmFd> CreateVm() const;
  int fd() const { return fd_.Get(); }

 private:
  explicit KvmSystem(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

class VmFd {
 public:
  VmFd(UniqueFd fd, size_t vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}

  Status SetUserMemoryRegion(uint32_t slot, uint64_t guest_phys_addr, uint64_t size,
                             void* host_addr, uint32_t flags = 0);
  Status SetTssAddr(uint64_t addr);
  Status CreateIrqchip();
  Status CreatePit2();
  // Sets an interrupt line of the in-kernel PIC/IOAPIC (KVM_IRQ_LINE).
  Status SetIrqLine(uint32_t irq, bool level);
  Result<VcpuFd> CreateVcpu(uint32_t id);
  // Snapshot state of the in-kernel devices. chip_id: kIrqchipPicMaster/Slave/Ioapic.
  Result<kvm_irqchip> GetIrqchip(uint32_t chip_id) const;
  Status SetIrqchip(const kvm_irqchip& chip);
  Result<kvm_pit_state2> GetPit2() const;
  Status SetPit2(const kvm_pit_state2& pit);
  Result<kvm_clock_data> GetClock() const;
  Status SetClock(const kvm_clock_data& clock);
  int CheckExtension(int capability) const;  // on the VM fd; 0 when absent or on error
  int fd() const { return fd_.Get(); }

 private:
  UniqueFd fd_;
  size_t vcpu_mmap_size_;
};

// A vCPU fd and its mmapped kvm_run area; unmapped on destruction.
class VcpuFd {
 public:
  VcpuFd(UniqueFd fd, kvm_run* run, size_t run_size)
      : fd_(std::move(fd)), run_(run), run_size_(run_size) {}
  VcpuFd(VcpuFd&& other) noexcept;
  VcpuFd& operator=(VcpuFd&& other) noexcept;
  VcpuFd(const VcpuFd&) = delete;
  VcpuFd& operator=(const VcpuFd&) = delete;
  ~VcpuFd();

  // KVM_RUN; EINTR (a kick) is returned as an Error with code kCancelled.
  Status Run();
  Result<kvm_regs> GetRegs() const;
  Status SetRegs(const kvm_regs& regs);
  Result<kvm_sregs> GetSregs() const;
  Status SetSregs(const kvm_sregs& sregs);
  Status SetCpuid(std::span<const kvm_cpuid_entry2> entries);
  // Fails naming the first MSR KVM refused.
  Status SetMsrs(std::span<const MsrEntry> msrs);
  Result<kvm_mp_state> GetMpState() const;
  Status SetFpu(const kvm_fpu& fpu);

  // Snapshot state. GetMsrs fails naming the first MSR KVM could not read.
  Result<std::vector<kvm_cpuid_entry2>> GetCpuid() const;
  Result<std::vector<MsrEntry>> GetMsrs(std::span<const uint32_t> indices) const;
  Result<kvm_fpu> GetFpu() const;
  Result<XsaveArea> GetXsave() const;
  Status SetXsave(const XsaveArea& xsave);
  Result<kvm_xcrs> GetXcrs() const;
  Status SetXcrs(const kvm_xcrs& xcrs);
  Result<kvm_lapic_state> GetLapic() const;
  Status SetLapic(const kvm_lapic_state& lapic);
  Status SetMpState(const kvm_mp_state& state);
  Result<kvm_vcpu_events> GetVcpuEvents() const;
  Status SetVcpuEvents(const kvm_vcpu_events& events);
  Result<kvm_debugregs> GetDebugRegs() const;
  Status SetDebugRegs(const kvm_debugregs& regs);
  Result<uint32_t> GetTscKhz() const;
  Status SetTscKhz(uint32_t khz);
  // Finishes an I/O or MMIO exit without running guest code (KVM_RUN with immediate_exit):
  // KVM completes the instruction only on re-entry, so state read before this is mid-exit.
  Status CompletePendingIo();

  kvm_run* run() const { return run_; }
  int fd() const { return fd_.Get(); }

 private:
  void Unmap();
  UniqueFd fd_;
  kvm_run* run_ = nullptr;
  size_t run_size_ = 0;
};

}  // namespace tartarus::vmm

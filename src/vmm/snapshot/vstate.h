// Persephone (tartarus-vmm snapshots): capturing and restoring KVM state, and the files.
// Capture reads a paused VM's vCPUs, irqchip, PIT and clock; restore builds a new VM whose
// guest memory maps the memory file MAP_PRIVATE (pages load lazily, clones share them
// copy-on-write) and sets the state back in the order KVM needs (see RestoreVcpu).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "vmm/guest_memory.h"
#include "vmm/kvm.h"
#include "vmm/snapshot/format.h"

namespace tartarus::vmm::snapshot {

// Of KVM_GET_MSR_INDEX_LIST, the MSRs that carry guest state across a snapshot (as
// Firecracker chooses them: syscall/sysenter, PAT, MTRRs, TSC and TSC_ADJUST, kvmclock and
// the other KVM paravirtual MSRs, MCE banks, speculation controls, ...), ordered so that
// IA32_TSC comes first and TSC_DEADLINE last: the deadline is relative to the TSC.
std::vector<uint32_t> MsrsToSave(const std::vector<uint32_t>& supported);

// What this host's KVM can save for a vCPU: computed once per VM.
struct VcpuCaptureConfig {
  std::vector<uint32_t> msrs;  // MsrsToSave(KVM_GET_MSR_INDEX_LIST)
  bool xsave = false;          // KVM_CAP_XSAVE
  bool xcrs = false;           // KVM_CAP_XCRS
};
Result<VcpuCaptureConfig> VcpuCaptureConfigFor(const KvmSystem& kvm);

// Reads one vCPU's state. The vCPU must not be running; call VcpuFd::CompletePendingIo
// first if its last KVM_RUN ended in an I/O or MMIO exit.
Result<VcpuState> CaptureVcpu(const VcpuFd& vcpu, uint32_t index, const VcpuCaptureConfig& config);
// Reads the VM-wide state: PIC master and slave, IOAPIC, PIT, kvmclock.
Result<VmState> CaptureVm(const VmFd& vm);

// Sets a fresh vCPU's state: CPUID, MP state, regs, sregs, FPU/XSAVE, XCRs, debug regs,
// LAPIC, MSRs, vCPU events (Firecracker's order: sregs carries the APIC base the LAPIC needs,
// the LAPIC's timer mode decides what TSC_DEADLINE means, and events go last because the
// other calls can change pending-interrupt state).
Status RestoreVcpu(VcpuFd& vcpu, const VcpuState& state);
// Sets the VM-wide state. Call after every vCPU's RestoreVcpu (the IOAPIC and PIC deliver to
// the restored LAPICs).
Status RestoreVm(VmFd& vm, const VmState& state);

// Writes each region's bytes to fd (truncated first), page aligned, one after another,
// leaving holes for all-zero pages; returns the layout for the state file.
Result<std::vector<MemoryRegionLayout>> WriteMemoryFile(const GuestMemory& memory, int fd);

// State file I/O: EncodeSnapshot/DecodeSnapshot plus the file (written to a temporary name
// and renamed, so a reader never sees half a file).
Status WriteStateFile(const std::string& path, const Snapshot& snapshot);
Result<Snapshot> ReadStateFile(const std::string& path);

// A restored VM, created but not running: memory maps the memory file MAP_PRIVATE.
struct RestoredVm {
  KvmSystem kvm;
  VmFd vm;
  GuestMemory memory;
  std::vector<VcpuFd> vcpus;  // vcpus[i] has id i
};

struct RestoreOptions {
  std::string kvm_path = "/dev/kvm";
  uint64_t tss_addr = 0xfffbd000;  // as Vmm uses
};

// Builds a VM from a decoded snapshot and an open memory file (checked to hold every region):
// memory slots, irqchip, PIT, vCPUs, then RestoreVcpu for each and RestoreVm. Device blobs
// are left to the caller.
Result<RestoredVm> RestoreFromSnapshot(const Snapshot& snapshot, int memory_fd,
                                       const RestoreOptions& options = {});
// The same from the two files.
Result<RestoredVm> RestoreFromFiles(const std::string& state_path, const std::string& memory_path,
                                    Snapshot* snapshot_out = nullptr,
                                    const RestoreOptions& options = {});

}  // namespace tartarus::vmm::snapshot

// Persephone's test rig: a minimal runner on the kvm.h wrappers (not Vmm) for the "counter"
// guest (counter.s), shared by the snapshot tests and bench/vmm_snapshot_bench. It boots the
// guest, runs it until it has printed N more lines on a polled COM1, and snapshots it.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "vmm/guest_memory.h"
#include "vmm/kvm.h"
#include "vmm/snapshot/format.h"

namespace tartarus::vmm::snapshot {

struct CounterVm {
  KvmSystem kvm;
  VmFd vm;
  GuestMemory memory;
  std::vector<VcpuFd> vcpus;
};

// Boots the guest ELF at `guest_path` in `guest_bytes` of RAM, one vCPU, ready to run.
Result<CounterVm> BootCounterVm(const std::string& guest_path, uint64_t guest_bytes);

struct RunOutput {
  std::string serial;
  std::optional<std::chrono::steady_clock::time_point> first_byte;
};

// Runs one vCPU until the guest has printed `lines` more newlines on COM1 (a polled 8250 whose
// line status always says "transmitter empty"), then completes the pending OUT so the vCPU's
// state is between instructions. Gives up with kTimeout after `timeout`.
Result<RunOutput> RunLines(VcpuFd& vcpu, int lines, std::chrono::milliseconds timeout);

// Captures the (stopped) VM into a state file and a memory file.
Result<Snapshot> SnapshotToFiles(CounterVm& vm, const std::string& state_path,
                                 const std::string& memory_path);

Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path);

}  // namespace tartarus::vmm::snapshot

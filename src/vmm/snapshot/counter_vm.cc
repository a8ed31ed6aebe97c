#include "vmm/snapshot/counter_vm.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "vmm/boot.h"
#include "vmm/snapshot/vstate.h"

namespace tartarus::vmm::snapshot {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint16_t kCom1 = 0x3f8;
constexpr uint16_t kCom1LineStatus = 0x3fd;

void IgnoreSignal(int) {}

// Kicks `thread` out of KVM_RUN with SIGUSR1 every 10 ms once `deadline` has passed, until
// destroyed: the runner then sees KVM_RUN fail with EINTR and gives up.
class Watchdog {
 public:
  Watchdog(pthread_t thread, Clock::time_point deadline) {
    struct sigaction action {};
    action.sa_handler = IgnoreSignal;  // no SA_RESTART: KVM_RUN must return
    ::sigaction(SIGUSR1, &action, nullptr);
    kicker_ = std::thread([this, thread, deadline] {
      while (!done_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        if (Clock::now() >= deadline && !done_) ::pthread_kill(thread, SIGUSR1);
      }
    });
  }
  ~Watchdog() {
    done_ = true;
    kicker_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread kicker_;
};

}  // namespace

// Runs one vCPU until the guest has printed `lines` more newlines on COM1 (a polled 8250 whose
// line status always says "transmitter empty"), then completes the pending OUT so the vCPU's
// state is between instructions.
Result<RunOutput> RunLines(VcpuFd& vcpu, int lines, std::chrono::milliseconds timeout) {
  RunOutput output;
  const Clock::time_point deadline = Clock::now() + timeout;
  Watchdog watchdog(::pthread_self(), deadline);
  int newlines = 0;
  kvm_run* run = vcpu.run();
  while (true) {
    Status ran = vcpu.Run();
    if (!ran) {
      if (ran.error().code == ErrorCode::kCancelled && Clock::now() < deadline) continue;
      if (ran.error().code == ErrorCode::kCancelled) {
        return Fail(ErrorCode::kTimeout, "guest printed " + std::to_string(newlines) + " of " +
                                             std::to_string(lines) + " lines: " + output.serial);
      }
      return Fail(ran.error());
    }
    if (run->exit_reason != KVM_EXIT_IO) {
      auto regs = vcpu.GetRegs();
      char rip[32];
      std::snprintf(rip, sizeof(rip), "0x%llx",
                    regs ? static_cast<unsigned long long>(regs->rip) : 0ull);
      return Fail(ErrorCode::kInternal, "unexpected exit " + std::to_string(run->exit_reason) +
                                            " (suberror " + std::to_string(run->internal.suberror) +
                                            ") at RIP " + rip + " after output: " + output.serial);
    }
    uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
    for (uint32_t i = 0; i < run->io.count; ++i) {
      uint8_t* item = data + i * run->io.size;
      if (run->io.direction == KVM_EXIT_IO_IN) {
        std::memset(item, run->io.port == kCom1LineStatus ? 0x20 : 0xff, run->io.size);
      } else if (run->io.port == kCom1) {
        if (!output.first_byte) output.first_byte = Clock::now();
        output.serial.push_back(static_cast<char>(*item));
        if (*item == '\n') ++newlines;
      }
    }
    if (newlines >= lines) {
      TRY(vcpu.CompletePendingIo());
      return output;
    }
  }
}

Result<std::vector<uint8_t>> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Fail(ErrorCode::kNotFound, "cannot read " + path);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

Result<CounterVm> BootCounterVm(const std::string& guest_path, uint64_t guest_bytes) {
  KvmSystem kvm = TRY(KvmSystem::Open());
  GuestMemory memory = TRY(GuestMemory::Create(GuestRamLayout(guest_bytes)));
  VmFd vm = TRY(kvm.CreateVm());
  (void)vm.SetTssAddr(0xfffbd000);
  // Memory before the irqchip, as Vmm does (a slot change after it waits for SRCU readers).
  for (size_t slot = 0; slot < memory.regions().size(); ++slot) {
    const GuestRegion& region = memory.regions()[slot];
    TRY(vm.SetUserMemoryRegion(static_cast<uint32_t>(slot), region.guest_addr, region.size,
                               region.host));
  }
  TRY(vm.CreateIrqchip());
  TRY(vm.CreatePit2());
  std::vector<uint8_t> image = TRY(ReadWholeFile(guest_path));
  BootPlan plan = TRY(PrepareLinuxBoot(image, BootConfig{}, memory));
  VcpuFd vcpu = TRY(vm.CreateVcpu(0));
  std::vector<kvm_cpuid_entry2> cpuid = TRY(kvm.GetSupportedCpuid());
  FilterCpuid(cpuid, {.emulated_cpu = HostKvmIsPvm()});
  TRY(vcpu.SetCpuid(cpuid));
  TRY(vcpu.SetMsrs(BootMsrs()));
  VcpuBootState boot = BuildBootState(plan, TRY(vcpu.GetSregs()));
  TRY(vcpu.SetSregs(boot.sregs));
  TRY(vcpu.SetRegs(boot.regs));
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  TRY(vcpu.SetFpu(fpu));
  std::vector<VcpuFd> vcpus;
  vcpus.push_back(std::move(vcpu));
  return CounterVm{std::move(kvm), std::move(vm), std::move(memory), std::move(vcpus)};
}

Result<Snapshot> SnapshotToFiles(CounterVm& vm, const std::string& state_path,
                                 const std::string& memory_path) {
  VcpuCaptureConfig config = TRY(VcpuCaptureConfigFor(vm.kvm));
  Snapshot snapshot;
  snapshot.vcpus.push_back(TRY(CaptureVcpu(vm.vcpus[0], 0, config)));
  snapshot.vm = TRY(CaptureVm(vm.vm));
  UniqueFd memory_fd(::open(memory_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!memory_fd) return FailErrno("creating " + memory_path);
  snapshot.memory = TRY(WriteMemoryFile(vm.memory, memory_fd.Get()));
  snapshot.devices.push_back({"counter.test", {'o', 'k'}});
  TRY(WriteStateFile(state_path, snapshot));
  return snapshot;
}

}  // namespace tartarus::vmm::snapshot

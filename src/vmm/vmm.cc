// tartarus-vmm (Tartarus's KVM microVM monitor): one microVM's lifetime.
//
// Threads: one per vCPU, each looping KVM_RUN -> one flat exit dispatch; the thread calling
// Run() is the monitor. With the in-kernel irqchip a HLT never leaves the kernel, so the
// monitor kicks quiet vCPUs (a signal that sets kvm_run.immediate_exit) and each looks at its
// own MP state: the VM has halted when every vCPU is halted with interrupts off or was never
// started (an AP waiting for SIPI).
#include "vmm/vmm.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <set>

#include "vmm/boot.h"
#include "vmm/virtio/block.h"
#include "vmm/virtio/disk.h"
#include "vmm/virtio/rng.h"
#include "vmm/virtio/vsock.h"

namespace tartarus::vmm {
namespace {

constexpr uint64_t kTssAddr = 0xfffbd000;
constexpr std::chrono::milliseconds kMonitorTick{2};
constexpr uint64_t kRflagsInterruptEnable = 1u << 9;
constexpr uint64_t kMaxBootFileBytes = 512ull << 20;

thread_local kvm_run* current_run = nullptr;

void KickHandler(int) {
  // Async-signal-safe: the next (or current) KVM_RUN returns EINTR at once.
  if (current_run != nullptr) current_run->immediate_exit = 1;
}

int KickSignal() { return SIGRTMIN; }

Status InstallKickHandler() {
  static const Status installed = [] {
    struct sigaction action {};
    action.sa_handler = KickHandler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    if (::sigaction(KickSignal(), &action, nullptr) < 0) return Status(FailErrno("sigaction"));
    return Ok();
  }();
  return installed;
}

// Reads a kernel or initrd ("what") of at most 512 MiB.
Result<std::vector<uint8_t>> ReadBootFile(const std::string& what, const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return FailErrno("open " + what + " " + path);
  UniqueFd owned(fd);
  struct stat info {};
  if (::fstat(fd, &info) < 0) return FailErrno("stat " + what + " " + path);
  if (!S_ISREG(info.st_mode)) {
    return Fail(ErrorCode::kInvalidArgument, what + " " + path + " is not a regular file");
  }
  if (static_cast<uint64_t>(info.st_size) > kMaxBootFileBytes) {
    return Fail(ErrorCode::kInvalidArgument, what + " " + path + " is larger than 512 MiB");
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(info.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("read " + what + " " + path);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

// An interrupt pin of the in-kernel PIC and IOAPIC, driven with KVM_IRQ_LINE (the serial port
// and every virtio-mmio transport: their lines are level, so the pin simply follows them).
class KvmIrqLine : public IrqLine {
 public:
  KvmIrqLine(VmFd& vm, uint32_t irq) : vm_(vm), irq_(irq) {}
  void SetLevel(bool asserted) override {
    if (auto status = vm_.SetIrqLine(irq_, asserted); !status && !reported_) {
      reported_ = true;
      std::fprintf(stderr, "tartarus-vmm: irq %u: %s\n", irq_, status.error().message.c_str());
    }
  }

 private:
  VmFd& vm_;
  uint32_t irq_;
  bool reported_ = false;
};

void WriteAll(int fd, uint8_t byte) {
  while (::write(fd, &byte, 1) < 0 && errno == EINTR) {
  }
}

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace

Status ValidateDrives(const std::vector<DriveConfig>& drives) {
  std::set<std::string> ids;
  size_t roots = 0;
  for (const DriveConfig& drive : drives) {
    if (drive.id.empty()) return Fail(ErrorCode::kInvalidArgument, "drive: empty drive id");
    if (!ids.insert(drive.id).second) {
      return Fail(ErrorCode::kInvalidArgument, "drive " + drive.id + ": duplicate drive id");
    }
    if (drive.path.empty()) {
      return Fail(ErrorCode::kInvalidArgument, "drive " + drive.id + ": empty path");
    }
    if (drive.lethe && drive.read_only) {
      return Fail(ErrorCode::kInvalidArgument,
                  "drive " + drive.id + ": a Lethe drive is writable (its base is never written)");
    }
    if (drive.is_root && ++roots > 1) {
      return Fail(ErrorCode::kInvalidArgument,
                  "drive " + drive.id + ": only one drive can be the root device");
    }
  }
  if (drives.size() + 1 > virtio::kMmioMaxDevices) {
    return Fail(ErrorCode::kResourceExhausted,
                "at most " + std::to_string(virtio::kMmioMaxDevices - 1) + " drives");
  }
  return Ok();
}

std::string_view StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kHalted:
      return "halted";
    case StopReason::kReboot:
      return "reboot";
    case StopReason::kShutdown:
      return "shutdown";
    case StopReason::kTripleFault:
      return "triple-fault";
    case StopReason::kStopped:
      return "stopped";
    case StopReason::kError:
      return "error";
  }
  return "unknown";
}

Result<std::unique_ptr<Vmm>> Vmm::Create(const VmmConfig& config) {
  if (config.memory_mib < 2 || config.memory_mib > (1u << 20)) {
    return Fail(ErrorCode::kInvalidArgument,
                "memory size " + std::to_string(config.memory_mib) + " MiB: need 2 to 1048576");
  }
  if (config.vcpus == 0) return Fail(ErrorCode::kInvalidArgument, "need at least one vCPU");
  TRY(ValidateDrives(config.drives));
  KvmSystem kvm = TRY(KvmSystem::Open(config.kvm_path));
  int max_vcpus = kvm.CheckExtension(KVM_CAP_NR_VCPUS);
  if (max_vcpus <= 0) max_vcpus = 4;  // KVM's documented default when the cap is absent
  if (config.vcpus > static_cast<uint32_t>(max_vcpus)) {
    return Fail(ErrorCode::kInvalidArgument, std::to_string(config.vcpus) +
                                                 " vCPUs requested; KVM here supports " +
                                                 std::to_string(max_vcpus));
  }
  GuestMemory memory = TRY(GuestMemory::Create(GuestRamLayout(config.memory_mib << 20)));
  VmFd vm = TRY(kvm.CreateVm());
  std::unique_ptr<Vmm> vmm(new Vmm(config, std::move(memory), std::move(kvm), std::move(vm)));
  TRY(vmm->Setup());
  return vmm;
}

Vmm::Vmm(VmmConfig config, GuestMemory memory, KvmSystem kvm, VmFd vm)
    : config_(std::move(config)),
      memory_(std::move(memory)),
      kvm_(std::move(kvm)),
      vm_(std::move(vm)) {}

Vmm::~Vmm() {
  RequestStop();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  // Its thread calls into the transport, which devices_ destroys.
  if (vsock_) vsock_->Stop();
}

Status Vmm::Setup() {
  // Needed by VMX for its real-mode TSS; harmless elsewhere, so a refusal is not fatal.
  (void)vm_.SetTssAddr(kTssAddr);
  // Memory before the irqchip: once an irqchip exists, every memory slot change waits for
  // KVM's SRCU readers (measured here: 7-12 ms for the first slot, against 0.15 ms before).
  for (size_t slot = 0; slot < memory_.regions().size(); ++slot) {
    const GuestRegion& region = memory_.regions()[slot];
    TRY(vm_.SetUserMemoryRegion(static_cast<uint32_t>(slot), region.guest_addr, region.size,
                                region.host));
  }
  TRY(vm_.CreateIrqchip());
  TRY(vm_.CreatePit2());

  // The root drive goes first so the guest sees it as /dev/vda, as under Firecracker.
  std::stable_partition(config_.drives.begin(), config_.drives.end(),
                        [](const DriveConfig& drive) { return drive.is_root; });
  TRY(AttachDevices());
  std::vector<VirtioMmioSlot> slots = config_.virtio_mmio;
  for (const AttachedDevice& device : devices_) {
    slots.push_back({.base = device.slot.base, .size = device.slot.size, .irq = device.slot.irq});
  }
  std::string cmdline = config_.cmdline;
  if (!config_.drives.empty() && config_.drives.front().is_root &&
      cmdline.find("root=") == std::string::npos) {
    cmdline += config_.drives.front().read_only ? " root=/dev/vda ro" : " root=/dev/vda rw";
  }

  std::vector<uint8_t> image = TRY(ReadBootFile("kernel", config_.kernel_path));
  std::vector<uint8_t> initrd;
  if (!config_.initrd_path.empty()) initrd = TRY(ReadBootFile("initrd", config_.initrd_path));
  auto plan = PrepareLinuxBoot(image,
                               {.cmdline = cmdline,
                                .initrd = initrd,
                                .acpi = {.vcpus = config_.vcpus, .virtio_mmio = slots}},
                               memory_);
  if (!plan) return Fail(plan.error().Context("loading " + config_.kernel_path));

  TRY(AttachLegacyDevices());

  // vCPUs. APs get the same state; the in-kernel LAPIC keeps them waiting for INIT/SIPI.
  std::vector<kvm_cpuid_entry2> supported = TRY(kvm_.GetSupportedCpuid());
  const bool emulated = HostKvmIsPvm();
  for (uint32_t index = 0; index < config_.vcpus; ++index) {
    VcpuFd vcpu = TRY(vm_.CreateVcpu(index));
    std::vector<kvm_cpuid_entry2> cpuid = supported;
    FilterCpuid(cpuid,
                {.vcpu_index = index, .vcpu_count = config_.vcpus, .emulated_cpu = emulated});
    TRY(vcpu.SetCpuid(cpuid));
    TRY(vcpu.SetMsrs(BootMsrs()));
    kvm_sregs initial = TRY(vcpu.GetSregs());
    VcpuBootState state = BuildBootState(*plan, initial);
    TRY(vcpu.SetSregs(state.sregs));
    TRY(vcpu.SetRegs(state.regs));
    kvm_fpu fpu{};
    fpu.fcw = 0x37f;     // x87 default control word
    fpu.mxcsr = 0x1f80;  // SSE default: all exceptions masked
    TRY(vcpu.SetFpu(fpu));
    vcpus_.push_back(std::move(vcpu));
  }
  InitVcpuCounters();
  return Ok();
}

void Vmm::InitVcpuCounters() {
  exit_counts_.reset(new std::atomic<uint64_t>[vcpus_.size()]);
  idle_generation_.reset(new std::atomic<uint64_t>[vcpus_.size()]);
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    exit_counts_[i] = 0;
    idle_generation_[i] = 0;
  }
  vcpu_task_results_.assign(vcpus_.size(), std::nullopt);
}

Status Vmm::AttachLegacyDevices() {
  Uart8250::Sink sink = config_.serial_sink;
  if (!sink && config_.serial_fd >= 0) {
    int fd = config_.serial_fd;
    sink = [fd](uint8_t byte) { WriteAll(fd, byte); };
  }
  serial_irq_ = std::make_unique<KvmIrqLine>(vm_, kCom1Irq);
  serial_ = std::make_shared<Uart8250>(std::move(sink), serial_irq_.get());
  keyboard_irq_ = std::make_unique<KvmIrqLine>(vm_, kKeyboardIrq);
  i8042_ = std::make_shared<I8042>([this] { Stop(StopReason::kReboot, "i8042 reset"); },
                                   keyboard_irq_.get());
  boot_timer_ = std::make_shared<BootTimer>(nullptr);
  TRY(pio_.Insert(kCom1Port, 8, serial_));
  TRY(pio_.Insert(kI8042Port, kI8042PortCount, i8042_));
  TRY(pio_.Insert(kBootCompletePort, 1, boot_timer_));
  TRY(mmio_.Insert(kBootCompleteMmio, 0x1000, boot_timer_));
  return Ok();
}

Status Vmm::SendCtrlAltDel() {
  if (!i8042_) return Fail(ErrorCode::kFailedPrecondition, "the VM has no i8042 yet");
  if (!i8042_->SendCtrlAltDel()) {
    return Fail(ErrorCode::kResourceExhausted,
                "the guest's i8042 keyboard buffer is full (it is not reading its keyboard)");
  }
  return Ok();
}

Result<size_t> Vmm::AttachVirtio(std::string name, uint32_t slot_index,
                                 std::unique_ptr<virtio::VirtioDevice> device) {
  virtio::MmioDeviceInfo slot = TRY(virtio::MmioSlot(slot_index));
  device_irqs_.push_back(std::make_unique<KvmIrqLine>(vm_, slot.irq));
  auto transport = std::make_shared<virtio::MmioTransport>(
      std::move(device), memory_, device_irqs_.back().get(), [name](const Error& error) {
        // The guest broke the virtio protocol: its device is reset-only until it recovers.
        std::fprintf(stderr, "tartarus-vmm: %s: %s\n", name.c_str(), error.message.c_str());
      });
  TRY(mmio_.Insert(slot.base, slot.size, transport));
  devices_.push_back({.name = std::move(name),
                      .slot = slot,
                      .transport = std::move(transport),
                      .slot_index = slot_index});
  return devices_.size() - 1;
}

Status Vmm::StartVsock(size_t index) {
  virtio::MmioTransport* transport = devices_[index].transport.get();
  auto* vsock = static_cast<virtio::VsockDevice*>(&transport->device());
  // Host-side data for the guest arrives on the device's own thread: it kicks the rx queue.
  TRY(vsock->Start([transport] { transport->NotifyFromHost(virtio::VsockDevice::kRxQueue); }));
  vsock_ = vsock;
  return Ok();
}

Status Vmm::AttachDevices() {
  const auto next_slot = [this] {
    return static_cast<uint32_t>(config_.virtio_mmio.size() + devices_.size());
  };
  for (const DriveConfig& drive : config_.drives) {
    std::unique_ptr<virtio::Disk> disk;
    virtio::LetheDisk* lethe_disk = nullptr;
    if (drive.lethe) {
      auto lethe = virtio::LetheDisk::Create(drive.path, config_.lethe_dir);
      if (!lethe) return Fail(lethe.error().Context("drive " + drive.id));
      lethe_disk = lethe->get();
      disk = std::move(*lethe);
    } else {
      auto file = virtio::FileDisk::Open(drive.path, drive.read_only);
      if (!file) return Fail(file.error().Context("drive " + drive.id));
      disk = std::move(*file);
    }
    const uint64_t disk_bytes = disk->Size();
    size_t index = TRY(AttachVirtio(
        "virtio-blk " + drive.id, next_slot(),
        std::make_unique<virtio::BlockDevice>(std::move(disk), drive.id, drive.read_only)));
    devices_[index].drive = drive;
    devices_[index].disk_bytes = disk_bytes;
    devices_[index].lethe = lethe_disk;
  }
  if (config_.entropy) {
    TRY(AttachVirtio("virtio-rng", next_slot(), std::make_unique<virtio::RngDevice>()));
  }
  if (config_.vsock) {
    auto device = virtio::VsockDevice::Create(
        {.guest_cid = config_.vsock->guest_cid, .uds_path = config_.vsock->uds_path});
    if (!device) return Fail(device.error().Context("vsock"));
    size_t index = TRY(AttachVirtio("virtio-vsock", next_slot(), std::move(*device)));
    TRY(StartVsock(index));
  }
  return Ok();
}

Status Vmm::Pause() {
  // Before Run() has started the vCPU threads there is nothing to wait for: they park at once.
  std::unique_lock lock(mutex_);
  paused_ = true;
  // Kicks until every vCPU thread has parked (or left); a kick sets immediate_exit, so one
  // landing between a thread's pause check and KVM_RUN is not lost. thread_handles_ only
  // changes under mutex_.
  while (parked_vcpus_.load() < running_threads_.load() && !stopping_.load()) {
    KickAll();
    changed_.wait_for(lock, std::chrono::milliseconds(5));
  }
  // Host-side device events (vsock's event thread) wait too: a paused VM's memory and device
  // state stay still, as a snapshot needs.
  for (const AttachedDevice& device : devices_) device.transport->HoldHostNotifications();
  return Ok();
}

void Vmm::Resume() {
  for (const AttachedDevice& device : devices_) device.transport->ReleaseHostNotifications();
  {
    std::lock_guard guard(mutex_);
    paused_ = false;
  }
  changed_.notify_all();
}

void Vmm::Stop(StopReason reason, std::string detail) {
  {
    std::lock_guard guard(mutex_);
    if (!stop_reason_) {
      stop_reason_ = reason;
      stop_detail_ = std::move(detail);
    }
  }
  stopping_ = true;
  changed_.notify_all();
}

void Vmm::RequestStop() { Stop(StopReason::kStopped, "stop requested"); }

void Vmm::KickAll() {
  for (pthread_t handle : thread_handles_) ::pthread_kill(handle, KickSignal());
}

Result<RunReport> Vmm::Run() {
  if (!threads_.empty()) return Fail(ErrorCode::kFailedPrecondition, "the VM has already run");
  TRY(InstallKickHandler());
  {
    std::lock_guard guard(mutex_);  // Pause() kicks thread_handles_ from another thread
    running_threads_ = vcpus_.size();
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      threads_.emplace_back([this, i] { VcpuLoop(i); });
      thread_handles_.push_back(threads_.back().native_handle());
    }
  }

  const auto started = std::chrono::steady_clock::now();
  std::vector<uint64_t> last_exits(vcpus_.size(), UINT64_MAX);
  bool timed_out = false;
  std::unique_lock lock(mutex_);
  while (!stop_reason_) {
    changed_.wait_for(lock, kMonitorTick);
    if (stop_reason_) break;
    if (config_.timeout.count() > 0 &&
        std::chrono::steady_clock::now() - started > config_.timeout) {
      timed_out = true;
      break;
    }
    // All vCPUs were found idle after the previous round of kicks, and none exited since.
    const uint64_t generation = kick_generation_.load();
    bool all_idle = true;
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      all_idle = all_idle && idle_generation_[i].load() == generation &&
                 exit_counts_[i].load() == last_exits[i];
    }
    if (all_idle) {
      stop_reason_ = StopReason::kHalted;
      stop_detail_ = "every vCPU halted with interrupts disabled";
      break;
    }
    // Kick the vCPUs that have been quiet for a tick so they look at their MP state.
    kick_generation_.fetch_add(1);
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      uint64_t exits = exit_counts_[i].load();
      if (exits == last_exits[i]) ::pthread_kill(thread_handles_[i], KickSignal());
      last_exits[i] = exits;
    }
  }
  lock.unlock();
  stopping_ = true;
  changed_.notify_all();  // parked (paused) vCPU threads
  // Kick until every vCPU thread has left KVM_RUN and its loop.
  while (running_threads_.load() > 0) {
    KickAll();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (std::thread& thread : threads_) thread.join();

  if (timed_out) {
    return Fail(ErrorCode::kTimeout,
                "guest still running after " + std::to_string(config_.timeout.count()) + " ms");
  }
  RunReport report;
  report.reason = *stop_reason_;
  report.detail = stop_detail_;
  report.boot_complete = boot_timer_->boot_time();
  for (size_t i = 0; i < vcpus_.size(); ++i) report.exits += exit_counts_[i].load();
  report.unhandled_pio = pio_.unhandled_reads() + pio_.unhandled_writes();
  report.unhandled_mmio = mmio_.unhandled_reads() + mmio_.unhandled_writes();
  return report;
}

void Vmm::VcpuLoop(size_t index) {
  VcpuFd& vcpu = vcpus_[index];
  current_run = vcpu.run();
  if (config_.on_vcpu_thread) {
    if (Status ready = config_.on_vcpu_thread(); !ready) {
      Stop(StopReason::kError, "vCPU " + std::to_string(index) + ": " + ready.error().message);
      current_run = nullptr;
      running_threads_.fetch_sub(1);
      changed_.notify_all();
      return;
    }
  }
  while (!stopping_.load()) {
    if (paused_.load()) {
      std::unique_lock lock(mutex_);
      parked_vcpus_.fetch_add(1);
      changed_.notify_all();
      while (true) {
        const auto task_waiting = [this, index] {
          return vcpu_task_ != nullptr && !vcpu_task_results_[index].has_value();
        };
        changed_.wait(lock, [&] { return !paused_.load() || stopping_.load() || task_waiting(); });
        if (!paused_.load() || stopping_.load()) break;
        // A task for parked vCPUs (snapshot capture): KVM wants vCPU ioctls on their thread.
        const auto* task = vcpu_task_;
        lock.unlock();
        Status result = (*task)(index, vcpu);
        lock.lock();
        vcpu_task_results_[index] = std::move(result);
        changed_.notify_all();
      }
      parked_vcpus_.fetch_sub(1);
      vcpu.run()->immediate_exit = 0;
      continue;
    }
    Status status = vcpu.Run();
    if (!status) {
      if (status.error().code != ErrorCode::kCancelled) {
        Stop(StopReason::kError, "vCPU " + std::to_string(index) + ": " + status.error().message);
        break;
      }
      vcpu.run()->immediate_exit = 0;
      if (!stopping_.load()) CheckIdle(index);
      continue;
    }
    exit_counts_[index].fetch_add(1, std::memory_order_relaxed);
    if (!HandleExit(index)) break;
  }
  current_run = nullptr;
  running_threads_.fetch_sub(1);
  changed_.notify_all();
}

void Vmm::CheckIdle(size_t index) {
  VcpuFd& vcpu = vcpus_[index];
  bool idle = false;
  auto state = vcpu.GetMpState();
  if (state) {
    if (state->mp_state == KVM_MP_STATE_UNINITIALIZED ||
        state->mp_state == KVM_MP_STATE_INIT_RECEIVED) {
      idle = true;  // an AP the guest never started
    } else if (state->mp_state == KVM_MP_STATE_HALTED) {
      auto regs = vcpu.GetRegs();
      idle = regs && (regs->rflags & kRflagsInterruptEnable) == 0;
    }
  }
  idle_generation_[index] = idle ? kick_generation_.load() : 0;
}

bool Vmm::HandleExit(size_t index) {
  VcpuFd& vcpu = vcpus_[index];
  kvm_run* run = vcpu.run();
  const std::string who = "vCPU " + std::to_string(index);
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      auto* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; ++i) {
        std::span<uint8_t> item(data + size_t{i} * run->io.size, run->io.size);
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          pio_.Write(run->io.port, item);
        } else {
          pio_.Read(run->io.port, item);
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO: {
      std::span<uint8_t> item(run->mmio.data, std::min<size_t>(run->mmio.len, 8));
      if (run->mmio.is_write) {
        mmio_.Write(run->mmio.phys_addr, item);
      } else {
        mmio_.Read(run->mmio.phys_addr, item);
      }
      return true;
    }
    case KVM_EXIT_HLT: {
      // Only without an in-kernel LAPIC; halting with interrupts off ends the VM.
      auto regs = vcpu.GetRegs();
      if (regs && (regs->rflags & kRflagsInterruptEnable) == 0) {
        Stop(StopReason::kHalted, who + " halted with interrupts disabled");
        return false;
      }
      return true;
    }
    case KVM_EXIT_SHUTDOWN: {
      auto regs = vcpu.GetRegs();
      Stop(StopReason::kTripleFault, who + ": triple fault (KVM_EXIT_SHUTDOWN)" +
                                         (regs ? " near RIP " + Hex(regs->rip) : ""));
      return false;
    }
    case KVM_EXIT_FAIL_ENTRY:
      Stop(StopReason::kError, who + ": KVM_EXIT_FAIL_ENTRY, hardware reason " +
                                   Hex(run->fail_entry.hardware_entry_failure_reason));
      return false;
    case KVM_EXIT_INTERNAL_ERROR: {
      auto regs = vcpu.GetRegs();
      std::string detail =
          who + ": KVM_EXIT_INTERNAL_ERROR, suberror " + std::to_string(run->internal.suberror);
      if (run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION) {
        detail += " (KVM's instruction emulator cannot run the guest's instruction)";
      }
      if (regs) detail += " at RIP " + Hex(regs->rip);
      Stop(StopReason::kError, detail);
      return false;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          Stop(StopReason::kShutdown, who + ": system event shutdown");
          break;
        case KVM_SYSTEM_EVENT_RESET:
          Stop(StopReason::kReboot, who + ": system event reset");
          break;
        default:
          Stop(StopReason::kError,
               who + ": system event " + std::to_string(run->system_event.type) + " (crash)");
          break;
      }
      return false;
    case KVM_EXIT_INTR:
      return true;
    default:
      Stop(StopReason::kError,
           who + ": unexpected KVM exit reason " + std::to_string(run->exit_reason));
      return false;
  }
}

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): one microVM's lifetime.
// Vmm builds the VM (memory, irqchip, PIT, vCPUs, devices, boot state) and runs it until the
// guest stops. main() and the Firecracker API (src/vmm/api/) both drive this class.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "vmm/acpi.h"
#include "vmm/boot_timer.h"
#include "vmm/bus.h"
#include "vmm/guest_memory.h"
#include "vmm/i8042.h"
#include "vmm/kvm.h"
#include "vmm/serial.h"
#include "vmm/virtio/mmio.h"

namespace tartarus::vmm::virtio {
class LetheDisk;
class VsockDevice;
}  // namespace tartarus::vmm::virtio

namespace tartarus::vmm {

// One virtio-blk drive (Firecracker's PUT /drives/{drive_id}).
struct DriveConfig {
  std::string id;  // also the virtio-blk serial (GET_ID)
  std::string path;
  bool read_only = false;
  bool is_root = false;  // adds root=/dev/vda to the command line; placed first
  // Lethe: path is a read-only base and writes go to a per-VM overlay forgotten with the VM.
  bool lethe = false;
};

// virtio-vsock with Firecracker's hybrid vsock: host connections on uds_path.
struct VsockConfig {
  uint32_t guest_cid = 3;
  std::string uds_path;
};

struct VmmConfig {
  std::string kernel_path;  // ELF vmlinux (PVH note or 64-bit entry) or bzImage
  std::string initrd_path;  // empty: none
  // Extra virtio-mmio slots to describe in the DSDT with no device behind them (tests of
  // the tables); the devices below get their slots after these.
  std::vector<VirtioMmioSlot> virtio_mmio;
  // Devices, in slot order: drives (the root drive first), then the entropy device.
  std::vector<DriveConfig> drives;
  bool entropy = false;
  std::optional<VsockConfig> vsock;
  std::string lethe_dir = "/tmp";  // where Lethe overlays are created (never named)
  uint64_t memory_mib = 128;
  uint32_t vcpus = 1;
  std::string cmdline = "console=ttyS0 reboot=k panic=1";
  // Where the guest's serial output goes: an fd (-1 discards it), or serial_sink if set.
  int serial_fd = 1;
  std::function<void(uint8_t)> serial_sink;
  std::chrono::milliseconds timeout{0};  // 0: no limit
  std::string kvm_path = "/dev/kvm";
  // Runs first on every vCPU thread, before its first KVM_RUN (tartarus-vmm installs the
  // vCPU seccomp filter here). An error stops the VM with that error.
  std::function<Status()> on_vcpu_thread;
};

// Checks a drive list: non-empty unique ids and paths, at most one root, Lethe drives writable.
Status ValidateDrives(const std::vector<DriveConfig>& drives);

enum class StopReason {
  kHalted,       // every vCPU halted with interrupts disabled (or never started)
  kReboot,       // i8042 reset or a KVM reset event
  kShutdown,     // a KVM shutdown event (e.g. PSCI/ACPI off)
  kTripleFault,  // KVM_EXIT_SHUTDOWN: the guest crashed
  kStopped,      // RequestStop() from the host
  kError,        // the VMM could not continue (see detail)
};
std::string_view StopReasonName(StopReason reason);

struct RunReport {
  StopReason reason = StopReason::kError;
  std::string detail;
  std::optional<std::chrono::microseconds> boot_complete;  // since VMM process start
  uint64_t exits = 0;
  uint64_t unhandled_pio = 0;
  uint64_t unhandled_mmio = 0;
  // True for the stops main() reports with exit status 0.
  bool Clean() const {
    return reason == StopReason::kHalted || reason == StopReason::kReboot ||
           reason == StopReason::kShutdown || reason == StopReason::kStopped;
  }
};

class Vmm {
 public:
  static Result<std::unique_ptr<Vmm>> Create(const VmmConfig& config);
  ~Vmm();
  Vmm(const Vmm&) = delete;
  Vmm& operator=(const Vmm&) = delete;

  // Runs the guest until it stops. Fails with kTimeout when config.timeout expires.
  Result<RunReport> Run();
  // Asks a running VM to stop (safe from any thread).
  void RequestStop();
  // Stops every vCPU outside KVM_RUN (returns once they are) and holds host-side device
  // notifications (MmioTransport::HoldHostNotifications), or lets them all go again.
  // Safe from any thread, before or during Run(); a no-op when already in that state.
  Status Pause();
  void Resume();
  bool paused() const { return paused_.load(); }
  // Firecracker's SendCtrlAltDel: Ctrl+Alt+Del through the i8042 keyboard (safe from any
  // thread). Fails when the guest has left its keyboard's buffer full.
  Status SendCtrlAltDel();

  // Persephone (docs/vmm.md, "Snapshots"). The VM must be paused: every vCPU's state is read
  // on its own thread (after completing a pending I/O exit), then the VM's, the guest memory
  // (memory_path) and each device's blob (state_path). A Lethe drive's written blocks go to
  // LetheOverlayPath(state_path, device key), beside the state file.
  Status CreateSnapshot(const std::string& state_path, const std::string& memory_path);
  // A new VM from a snapshot, not yet running (call Pause() before Run() to keep it parked).
  // config gives the host side (serial output, lethe_dir, kvm_path, timeout); the machine
  // and its devices come from the files. Every inconsistency is an Error naming it.
  static Result<std::unique_ptr<Vmm>> Restore(const VmmConfig& config,
                                              const std::string& state_path,
                                              const std::string& memory_path);
  static std::string LetheOverlayPath(const std::string& state_path, const std::string& key);
  // The configuration the VM was built from (for a restored VM: what the snapshot held).
  const VmmConfig& config() const { return config_; }

  // Where each virtio device sits, in slot order (after config.virtio_mmio's empty slots).
  struct AttachedDevice {
    std::string name;  // "virtio-blk rootfs", "virtio-rng"
    virtio::MmioDeviceInfo slot;
    std::shared_ptr<virtio::MmioTransport> transport;
    uint32_t slot_index = 0;             // MmioSlot index
    std::optional<DriveConfig> drive;    // virtio-blk only
    uint64_t disk_bytes = 0;             // virtio-blk only
    virtio::LetheDisk* lethe = nullptr;  // a Lethe drive's disk, owned by the device
  };
  const std::vector<AttachedDevice>& devices() const { return devices_; }

  Uart8250& serial() { return *serial_; }
  GuestMemory& memory() { return memory_; }

 private:
  Vmm(VmmConfig config, GuestMemory memory, KvmSystem kvm, VmFd vm);
  Status Setup();
  Status AttachDevices();
  Status AttachLegacyDevices();
  // Puts a virtio device on the MMIO bus at MmioSlot(slot_index) with its own IRQ line.
  // Returns its index in devices_.
  Result<size_t> AttachVirtio(std::string name, uint32_t slot_index,
                              std::unique_ptr<virtio::VirtioDevice> device);
  Status StartVsock(size_t index);
  void InitVcpuCounters();
  // Runs task on every vCPU's own thread while they are parked (the VM must be paused).
  Status RunOnParkedVcpus(const std::function<Status(size_t, VcpuFd&)>& task);
  void VcpuLoop(size_t index);
  // Handles one KVM exit; returns false when the vCPU must stop.
  bool HandleExit(size_t index);
  void CheckIdle(size_t index);
  void Stop(StopReason reason, std::string detail);
  void KickAll();

  VmmConfig config_;
  GuestMemory memory_;  // declared first: outlives the VM that maps it
  KvmSystem kvm_;
  VmFd vm_;
  std::vector<VcpuFd> vcpus_;
  Bus pio_{"pio"};
  Bus mmio_{"mmio"};
  std::unique_ptr<IrqLine> serial_irq_;
  std::unique_ptr<IrqLine> keyboard_irq_;
  std::shared_ptr<Uart8250> serial_;
  std::shared_ptr<I8042> i8042_;
  std::shared_ptr<BootTimer> boot_timer_;
  std::vector<std::unique_ptr<IrqLine>> device_irqs_;
  std::vector<AttachedDevice> devices_;
  virtio::VsockDevice* vsock_ = nullptr;  // owned by its transport in devices_

  std::vector<std::thread> threads_;
  std::vector<pthread_t> thread_handles_;
  std::unique_ptr<std::atomic<uint64_t>[]> exit_counts_;
  std::unique_ptr<std::atomic<uint64_t>[]> idle_generation_;  // kick generation found idle
  std::atomic<uint64_t> kick_generation_{1};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> paused_{false};
  std::atomic<size_t> parked_vcpus_{0};  // vCPU threads waiting out a pause
  std::atomic<size_t> running_threads_{0};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<StopReason> stop_reason_;
  // RunOnParkedVcpus: the task parked vCPU threads run, and per vCPU whether it ran and how.
  const std::function<Status(size_t, VcpuFd&)>* vcpu_task_ = nullptr;
  std::vector<std::optional<Status>> vcpu_task_results_;
  // A restored VM's memory file (device, inode): a snapshot must not overwrite it.
  std::optional<std::pair<uint64_t, uint64_t>> backing_memory_file_;
  std::string stop_detail_;
};

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor) with Persephone (snapshots): a whole Vmm to a
// state file and a memory file, and back into a new process.
//
// Create: the VM is paused; each vCPU completes a pending I/O exit and is read on its own
// thread (KVM_RUN with immediate_exit, then the KVM_GET_* calls); then the VM-wide state, the
// guest memory, and one blob per device (serial, every virtio-mmio transport with what is
// behind it). Restore: every blob is decoded and checked before anything is built, the VM
// comes back through snapshot::RestoreFromSnapshot (memory mapped MAP_PRIVATE), then the
// devices are rebuilt at their saved slots and set to their saved state.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "vmm/snapshot/devices.h"
#include "vmm/snapshot/format.h"
#include "vmm/snapshot/vstate.h"
#include "vmm/virtio/block.h"
#include "vmm/virtio/disk.h"
#include "vmm/virtio/rng.h"
#include "vmm/virtio/vsock.h"
#include "vmm/vmm.h"

namespace tartarus::vmm {
namespace {

// How long a snapshot waits for vCPU threads to park and to run their capture.
constexpr std::chrono::seconds kVcpuTaskTimeout{5};

std::unexpected<Error> Invalid(std::string message) {
  return Fail(ErrorCode::kInvalidArgument, std::move(message));
}

// The saved state of one virtio device, as the blob codec wants it.
snapshot::VirtioDeviceSnapshot DescribeDevice(const Vmm::AttachedDevice& device,
                                              const VmmConfig& config) {
  snapshot::VirtioDeviceSnapshot saved;
  saved.slot = device.slot_index;
  saved.device_id = device.transport->device().DeviceId();
  saved.transport = device.transport->State();
  if (device.drive) {
    saved.drive_id = device.drive->id;
    saved.drive_path = device.drive->path;
    saved.read_only = device.drive->read_only;
    saved.is_root = device.drive->is_root;
    saved.lethe = device.drive->lethe;
    saved.disk_bytes = device.disk_bytes;
    if (device.lethe != nullptr) saved.lethe_state = device.lethe->state();
  }
  if (saved.device_id == virtio::kDeviceIdVsock && config.vsock) {
    saved.guest_cid = config.vsock->guest_cid;
    saved.uds_path = config.vsock->uds_path;
  }
  return saved;
}

}  // namespace

std::string Vmm::LetheOverlayPath(const std::string& state_path, const std::string& key) {
  return state_path + "." + key + ".overlay";
}

Status Vmm::RunOnParkedVcpus(const std::function<Status(size_t, VcpuFd&)>& task) {
  std::unique_lock lock(mutex_);
  if (!paused_.load()) return Fail(ErrorCode::kFailedPrecondition, "the VM is not paused");
  const auto deadline = std::chrono::steady_clock::now() + kVcpuTaskTimeout;
  // Right after InstanceStart the threads may still be starting: they park as they come.
  while (parked_vcpus_.load() < vcpus_.size()) {
    if (stopping_.load()) return Fail(ErrorCode::kFailedPrecondition, "the VM has stopped");
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
        parked_vcpus_.load() < vcpus_.size()) {
      return Fail(ErrorCode::kTimeout, "the vCPU threads did not park within 5 s");
    }
  }
  vcpu_task_ = &task;
  vcpu_task_results_.assign(vcpus_.size(), std::nullopt);
  changed_.notify_all();
  const bool finished = changed_.wait_until(lock, deadline, [this] {
    return stopping_.load() ||
           std::all_of(vcpu_task_results_.begin(), vcpu_task_results_.end(),
                       [](const std::optional<Status>& result) { return result.has_value(); });
  });
  vcpu_task_ = nullptr;
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    if (!vcpu_task_results_[i]) {
      return Fail(finished ? ErrorCode::kFailedPrecondition : ErrorCode::kTimeout,
                  "vCPU " + std::to_string(i) +
                      (finished ? ": the VM stopped" : ": its thread did not answer within 5 s"));
    }
    if (!*vcpu_task_results_[i]) {
      return Fail(vcpu_task_results_[i]->error().Context("vCPU " + std::to_string(i)));
    }
  }
  return Ok();
}

Status Vmm::CreateSnapshot(const std::string& state_path, const std::string& memory_path) {
  if (!paused_.load()) {
    return Fail(ErrorCode::kFailedPrecondition, "the VM must be paused to snapshot it");
  }
  if (state_path == memory_path) {
    return Invalid("the state file and the memory file are the same path " + state_path);
  }
  // Everything that can be refused without touching a file comes first.
  std::vector<snapshot::VirtioDeviceSnapshot> described;
  std::vector<std::string> keys;
  for (const AttachedDevice& device : devices_) {
    described.push_back(DescribeDevice(device, config_));
    keys.push_back(TRY(snapshot::VirtioDeviceKey(described.back())));
  }
  if (backing_memory_file_) {
    // This VM's memory is mapped from that file: truncating it would pull the pages away.
    struct stat info {};
    if (::stat(memory_path.c_str(), &info) == 0 &&
        std::pair<uint64_t, uint64_t>(info.st_dev, info.st_ino) == *backing_memory_file_) {
      return Invalid("mem_file_path " + memory_path +
                     " is the file this VM's memory was restored from; choose another path");
    }
  }

  snapshot::Snapshot saved;
  const snapshot::VcpuCaptureConfig capture = TRY(snapshot::VcpuCaptureConfigFor(kvm_));
  saved.vcpus.resize(vcpus_.size());
  TRY(RunOnParkedVcpus([&](size_t index, VcpuFd& vcpu) -> Status {
    // KVM finishes an I/O or MMIO instruction only on the next KVM_RUN: do that first, so
    // the state is between instructions and nothing is replayed or lost.
    TRY(vcpu.CompletePendingIo());
    saved.vcpus[index] = TRY(snapshot::CaptureVcpu(vcpu, static_cast<uint32_t>(index), capture));
    return Ok();
  }));
  saved.vm = TRY(snapshot::CaptureVm(vm_));

  UniqueFd memory_fd(::open(memory_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!memory_fd) return FailErrno("creating memory file " + memory_path);
  saved.memory = TRY(snapshot::WriteMemoryFile(memory_, memory_fd.Get()));

  saved.devices.push_back(
      {std::string(snapshot::kSerialDeviceId), snapshot::EncodeSerialBlob(serial_->State())});
  for (size_t i = 0; i < devices_.size(); ++i) {
    // Transport state again, now that the vCPUs have completed their pending exits.
    described[i].transport = devices_[i].transport->State();
    saved.devices.push_back({keys[i], TRY(snapshot::EncodeVirtioBlob(described[i]))});
    if (devices_[i].lethe != nullptr) {
      const std::string overlay = LetheOverlayPath(state_path, keys[i]);
      UniqueFd fd(::open(overlay.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
      if (!fd) return FailErrno("creating Lethe overlay file " + overlay);
      auto written = devices_[i].lethe->SaveOverlay(fd.Get());
      if (!written) return Fail(written.error().Context("drive " + devices_[i].drive->id));
    }
  }
  if (::fsync(memory_fd.Get()) < 0) return FailErrno("fsync " + memory_path);
  return snapshot::WriteStateFile(state_path, saved);
}

Result<std::unique_ptr<Vmm>> Vmm::Restore(const VmmConfig& host_config,
                                          const std::string& state_path,
                                          const std::string& memory_path) {
  snapshot::Snapshot saved = TRY(snapshot::ReadStateFile(state_path));

  // Decode and cross-check every device blob before building anything.
  std::optional<UartState> serial;
  std::vector<snapshot::VirtioDeviceSnapshot> virtio_devices;
  std::set<uint32_t> slots;
  for (const snapshot::DeviceState& device : saved.devices) {
    if (device.id == snapshot::kSerialDeviceId) {
      serial = TRY(snapshot::DecodeSerialBlob(device.blob));
      continue;
    }
    auto decoded = snapshot::DecodeVirtioBlob(device.blob);
    if (!decoded) return Fail(decoded.error().Context("device " + device.id));
    const std::string key = TRY(snapshot::VirtioDeviceKey(*decoded));
    if (key != device.id) {
      return Invalid("device " + device.id + ": its blob describes device " + key);
    }
    if (!slots.insert(decoded->slot).second) {
      return Invalid("device " + device.id + ": virtio-mmio slot " + std::to_string(decoded->slot) +
                     " is taken by another device");
    }
    virtio_devices.push_back(std::move(*decoded));
  }
  if (!serial) return Invalid("the snapshot has no `serial` device blob");
  std::sort(virtio_devices.begin(), virtio_devices.end(),
            [](const auto& a, const auto& b) { return a.slot < b.slot; });

  // The machine as it was: sizes from the file, devices from the blobs.
  VmmConfig config = host_config;
  config.kernel_path.clear();
  config.initrd_path.clear();
  config.virtio_mmio.clear();
  config.drives.clear();
  config.entropy = false;
  config.vsock.reset();
  config.vcpus = static_cast<uint32_t>(saved.vcpus.size());
  uint64_t memory_bytes = 0;
  for (const snapshot::MemoryRegionLayout& region : saved.memory) memory_bytes += region.size;
  config.memory_mib = memory_bytes >> 20;
  for (const snapshot::VirtioDeviceSnapshot& device : virtio_devices) {
    if (device.device_id == virtio::kDeviceIdBlock) {
      config.drives.push_back({.id = device.drive_id,
                               .path = device.drive_path,
                               .read_only = device.read_only,
                               .is_root = device.is_root,
                               .lethe = device.lethe});
    } else if (device.device_id == virtio::kDeviceIdRng) {
      config.entropy = true;
    } else if (device.device_id == virtio::kDeviceIdVsock) {
      config.vsock = VsockConfig{.guest_cid = device.guest_cid, .uds_path = device.uds_path};
    }
  }
  TRY(ValidateDrives(config.drives));

  UniqueFd memory_fd(::open(memory_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!memory_fd) return FailErrno("opening memory file " + memory_path);
  struct stat memory_info {};
  if (::fstat(memory_fd.Get(), &memory_info) < 0) return FailErrno("stat " + memory_path);
  if (!S_ISREG(memory_info.st_mode)) return Invalid("memory file " + memory_path + ": not a file");
  snapshot::RestoreOptions options{.kvm_path = config.kvm_path};
  snapshot::RestoredVm restored =
      TRY(snapshot::RestoreFromSnapshot(saved, memory_fd.Get(), options));

  std::unique_ptr<Vmm> vmm(
      new Vmm(config, std::move(restored.memory), std::move(restored.kvm), std::move(restored.vm)));
  vmm->vcpus_ = std::move(restored.vcpus);
  vmm->backing_memory_file_ = {memory_info.st_dev, memory_info.st_ino};
  TRY(vmm->AttachLegacyDevices());
  vmm->serial_->Restore(*serial);

  for (const snapshot::VirtioDeviceSnapshot& device : virtio_devices) {
    const std::string key = TRY(snapshot::VirtioDeviceKey(device));
    size_t index = 0;
    if (device.device_id == virtio::kDeviceIdBlock) {
      const std::string what = "drive " + device.drive_id;
      std::unique_ptr<virtio::Disk> disk;
      virtio::LetheDisk* lethe_disk = nullptr;
      if (device.lethe) {
        auto lethe = virtio::LetheDisk::Create(device.drive_path, config.lethe_dir);
        if (!lethe) return Fail(lethe.error().Context(what));
        lethe_disk = lethe->get();
        disk = std::move(*lethe);
      } else {
        auto file = virtio::FileDisk::Open(device.drive_path, device.read_only);
        if (!file) return Fail(file.error().Context(what));
        disk = std::move(*file);
      }
      if (disk->Size() != device.disk_bytes) {
        return Invalid(what + ": " + device.drive_path + " is " + std::to_string(disk->Size()) +
                       " bytes, it was " + std::to_string(device.disk_bytes) +
                       " bytes when the snapshot was taken");
      }
      if (lethe_disk != nullptr) {
        const std::string overlay = LetheOverlayPath(state_path, key);
        UniqueFd fd(::open(overlay.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) return FailErrno(what + ": opening its saved Lethe overlay " + overlay);
        auto loaded = lethe_disk->LoadOverlay(device.lethe_state, fd.Get());
        if (!loaded) return Fail(loaded.error().Context(what + ": " + overlay));
      }
      index = TRY(vmm->AttachVirtio("virtio-blk " + device.drive_id, device.slot,
                                    std::make_unique<virtio::BlockDevice>(
                                        std::move(disk), device.drive_id, device.read_only)));
      vmm->devices_[index].drive = DriveConfig{.id = device.drive_id,
                                               .path = device.drive_path,
                                               .read_only = device.read_only,
                                               .is_root = device.is_root,
                                               .lethe = device.lethe};
      vmm->devices_[index].disk_bytes = device.disk_bytes;
      vmm->devices_[index].lethe = lethe_disk;
    } else if (device.device_id == virtio::kDeviceIdRng) {
      index =
          TRY(vmm->AttachVirtio("virtio-rng", device.slot, std::make_unique<virtio::RngDevice>()));
    } else {
      auto vsock =
          virtio::VsockDevice::Create({.guest_cid = device.guest_cid, .uds_path = device.uds_path});
      if (!vsock) return Fail(vsock.error().Context("vsock"));
      index = TRY(vmm->AttachVirtio("virtio-vsock", device.slot, std::move(*vsock)));
    }
    auto restored_transport = vmm->devices_[index].transport->Restore(device.transport);
    if (!restored_transport) return Fail(restored_transport.error().Context("device " + key));
    if (device.device_id == virtio::kDeviceIdVsock) {
      TRY(vmm->StartVsock(index));
      // Connections were not saved: tell the guest, as Firecracker does after a restore.
      vmm->vsock_->RequestTransportReset();
      vmm->devices_[index].transport->NotifyFromHost(virtio::VsockDevice::kEventQueue);
    }
  }
  vmm->InitVcpuCounters();
  return vmm;
}

}  // namespace tartarus::vmm

// Persephone (tartarus-vmm snapshots): device state blobs.
#include "vmm/snapshot/devices.h"

#include <algorithm>
#include <cstring>

namespace tartarus::vmm::snapshot {
namespace {

std::unexpected<Error> Invalid(std::string message) {
  return Fail(ErrorCode::kInvalidArgument, std::move(message));
}

class BlobWriter {
 public:
  void U8(uint8_t value) { bytes_.push_back(value); }
  void Bool(bool value) { U8(value ? 1 : 0); }
  void U16(uint16_t value) { Raw(&value, sizeof(value)); }
  void U32(uint32_t value) { Raw(&value, sizeof(value)); }
  void U64(uint64_t value) { Raw(&value, sizeof(value)); }
  void Bytes(std::span<const uint8_t> data) {
    U32(static_cast<uint32_t>(data.size()));
    Raw(data.data(), data.size());
  }
  void String(std::string_view text) {
    Bytes({reinterpret_cast<const uint8_t*>(text.data()), text.size()});
  }
  std::vector<uint8_t> Take() { return std::move(bytes_); }

 private:
  void Raw(const void* data, size_t size) {
    const auto* begin = static_cast<const uint8_t*>(data);
    bytes_.insert(bytes_.end(), begin, begin + size);
  }
  std::vector<uint8_t> bytes_;
};

// Reads fields in order; every read names the field it failed on.
class BlobReader {
 public:
  BlobReader(std::span<const uint8_t> bytes, std::string what)
      : bytes_(bytes), what_(std::move(what)) {}

  Result<uint8_t> U8(std::string_view field) {
    uint8_t value = 0;
    TRY(Raw(&value, sizeof(value), field));
    return value;
  }
  Result<bool> Bool(std::string_view field) {
    const uint8_t value = TRY(U8(field));
    if (value > 1) return Invalid(what_ + ": " + std::string(field) + " is not 0 or 1");
    return value == 1;
  }
  Result<uint16_t> U16(std::string_view field) {
    uint16_t value = 0;
    TRY(Raw(&value, sizeof(value), field));
    return value;
  }
  Result<uint32_t> U32(std::string_view field) {
    uint32_t value = 0;
    TRY(Raw(&value, sizeof(value), field));
    return value;
  }
  Result<uint64_t> U64(std::string_view field) {
    uint64_t value = 0;
    TRY(Raw(&value, sizeof(value), field));
    return value;
  }
  // A count-prefixed byte string of at most max bytes.
  Result<std::vector<uint8_t>> Bytes(std::string_view field, size_t max) {
    const uint32_t count = TRY(U32(field));
    if (count > max) {
      return Invalid(what_ + ": " + std::string(field) + " holds " + std::to_string(count) +
                     " bytes, at most " + std::to_string(max) + " allowed");
    }
    std::vector<uint8_t> out(count);
    TRY(Raw(out.data(), out.size(), field));
    return out;
  }
  Result<std::string> String(std::string_view field, size_t max) {
    std::vector<uint8_t> bytes = TRY(Bytes(field, max));
    std::string text(bytes.begin(), bytes.end());
    if (text.find('\0') != std::string::npos) {
      return Invalid(what_ + ": " + std::string(field) + " contains a NUL byte");
    }
    return text;
  }
  Status End() const {
    if (offset_ != bytes_.size()) {
      return Invalid(what_ + ": " + std::to_string(bytes_.size() - offset_) +
                     " trailing bytes after the last field");
    }
    return Ok();
  }
  const std::string& what() const { return what_; }

 private:
  Status Raw(void* out, size_t size, std::string_view field) {
    if (bytes_.size() - offset_ < size) {
      return Invalid(what_ + ": truncated at " + std::string(field));
    }
    if (size > 0) std::memcpy(out, bytes_.data() + offset_, size);
    offset_ += size;
    return Ok();
  }

  std::span<const uint8_t> bytes_;
  std::string what_;
  size_t offset_ = 0;
};

size_t QueueCountFor(uint32_t device_id) {
  switch (device_id) {
    case virtio::kDeviceIdBlock:
    case virtio::kDeviceIdRng:
      return 1;
    case virtio::kDeviceIdVsock:
      return 3;
    default:
      return 0;
  }
}

bool ValidDriveId(std::string_view id) {
  return !id.empty() && id.size() <= kMaxDriveIdBytes &&
         std::all_of(id.begin(), id.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
         });
}

uint64_t LetheWordsFor(uint64_t disk_bytes) {
  const uint64_t blocks =
      (disk_bytes + virtio::LetheDisk::kBlockSize - 1) / virtio::LetheDisk::kBlockSize;
  return (blocks + 63) / 64;
}

// The checks both the encoder and the decoder apply (what: "device blk.x").
Status ValidateVirtio(const VirtioDeviceSnapshot& device, const std::string& what) {
  if (device.slot >= virtio::kMmioMaxDevices) {
    return Invalid(what + ": slot " + std::to_string(device.slot) + " is past the last (" +
                   std::to_string(virtio::kMmioMaxDevices - 1) + ")");
  }
  const size_t queues = QueueCountFor(device.device_id);
  if (queues == 0) {
    return Invalid(what + ": unknown virtio device ID " + std::to_string(device.device_id));
  }
  if (device.transport.queues.size() != queues) {
    return Invalid(what + ": " + std::to_string(device.transport.queues.size()) +
                   " queues, the device has " + std::to_string(queues));
  }
  for (size_t i = 0; i < queues; ++i) {
    if (device.transport.queues[i].size > virtio::kMaxQueueSize) {
      return Invalid(what + ": queue " + std::to_string(i) + " size " +
                     std::to_string(device.transport.queues[i].size) + " is above " +
                     std::to_string(virtio::kMaxQueueSize));
    }
  }
  if (device.device_id == virtio::kDeviceIdBlock) {
    if (!ValidDriveId(device.drive_id)) {
      return Invalid(what + ": drive id must be 1-" + std::to_string(kMaxDriveIdBytes) +
                     " letters, digits, '_' or '-'");
    }
    if (device.drive_path.empty() || device.drive_path.size() > kMaxBlobPathBytes ||
        device.drive_path.find('\0') != std::string::npos) {
      return Invalid(what + ": drive path is empty, too long or holds a NUL byte");
    }
    if (device.disk_bytes > kMaxDiskBytes) {
      return Invalid(what + ": disk size " + std::to_string(device.disk_bytes) +
                     " is above the limit");
    }
    if (device.lethe && device.read_only) {
      return Invalid(what + ": a Lethe drive cannot be read-only");
    }
    if (device.lethe) {
      if (device.lethe_state.block_size != virtio::LetheDisk::kBlockSize) {
        return Invalid(what + ": Lethe block size " +
                       std::to_string(device.lethe_state.block_size) + ", expected " +
                       std::to_string(virtio::LetheDisk::kBlockSize));
      }
      if (device.lethe_state.written.size() != LetheWordsFor(device.disk_bytes)) {
        return Invalid(
            what + ": Lethe bitmap of " + std::to_string(device.lethe_state.written.size()) +
            " words does not fit a disk of " + std::to_string(device.disk_bytes) + " bytes");
      }
    } else if (device.lethe_state.block_size != 0 || !device.lethe_state.written.empty()) {
      return Invalid(what + ": a Lethe bitmap for a drive that is not Lethe");
    }
  }
  if (device.device_id == virtio::kDeviceIdVsock) {
    if (device.guest_cid < 3 || device.guest_cid == UINT32_MAX) {
      return Invalid(what + ": guest CID " + std::to_string(device.guest_cid) + " is reserved");
    }
    if (device.uds_path.empty() || device.uds_path.size() >= 108 ||
        device.uds_path.find('\0') != std::string::npos) {
      return Invalid(what + ": vsock uds_path is empty, longer than 107 bytes or holds a NUL");
    }
  }
  return Ok();
}

Status ReadHeader(BlobReader& reader, uint32_t expected_kind) {
  const uint32_t kind = TRY(reader.U32("kind"));
  if (kind != expected_kind) {
    return Invalid(reader.what() + ": blob kind " + std::to_string(kind) + ", expected " +
                   std::to_string(expected_kind));
  }
  const uint32_t version = TRY(reader.U32("version"));
  if (version != kDeviceBlobVersion) {
    return Invalid(reader.what() + ": blob version " + std::to_string(version) +
                   ", this tartarus-vmm reads version " + std::to_string(kDeviceBlobVersion));
  }
  return Ok();
}

}  // namespace

Result<std::string> VirtioDeviceKey(const VirtioDeviceSnapshot& device) {
  switch (device.device_id) {
    case virtio::kDeviceIdBlock:
      if (!ValidDriveId(device.drive_id)) {
        return Invalid("drive id `" + device.drive_id + "` cannot key a snapshot blob (1-" +
                       std::to_string(kMaxDriveIdBytes) + " letters, digits, '_' or '-')");
      }
      return "blk." + device.drive_id;
    case virtio::kDeviceIdRng:
      return std::string("rng");
    case virtio::kDeviceIdVsock:
      return std::string("vsock");
    default:
      return Invalid("unknown virtio device ID " + std::to_string(device.device_id));
  }
}

std::vector<uint8_t> EncodeSerialBlob(const UartState& state) {
  BlobWriter out;
  out.U32(kBlobKindSerial);
  out.U32(kDeviceBlobVersion);
  for (uint8_t reg :
       {state.ier, state.lcr, state.mcr, state.msr, state.scr, state.fcr, state.dll, state.dlm}) {
    out.U8(reg);
  }
  out.Bool(state.thr_empty_pending);
  const size_t input = std::min(state.input.size(), Uart8250::kInputCapacity);
  out.Bytes({state.input.data(), input});
  return out.Take();
}

Result<UartState> DecodeSerialBlob(std::span<const uint8_t> blob) {
  BlobReader in(blob, "device " + std::string(kSerialDeviceId));
  TRY(ReadHeader(in, kBlobKindSerial));
  UartState state;
  state.ier = TRY(in.U8("IER"));
  state.lcr = TRY(in.U8("LCR"));
  state.mcr = TRY(in.U8("MCR"));
  state.msr = TRY(in.U8("MSR"));
  state.scr = TRY(in.U8("SCR"));
  state.fcr = TRY(in.U8("FCR"));
  state.dll = TRY(in.U8("DLL"));
  state.dlm = TRY(in.U8("DLM"));
  state.thr_empty_pending = TRY(in.Bool("THR-empty pending"));
  state.input = TRY(in.Bytes("input", Uart8250::kInputCapacity));
  TRY(in.End());
  return state;
}

Result<std::vector<uint8_t>> EncodeVirtioBlob(const VirtioDeviceSnapshot& device) {
  const std::string key = TRY(VirtioDeviceKey(device));
  TRY(ValidateVirtio(device, "device " + key));
  BlobWriter out;
  out.U32(kBlobKindVirtio);
  out.U32(kDeviceBlobVersion);
  out.U32(device.slot);
  out.U32(device.device_id);
  const virtio::MmioTransportState& transport = device.transport;
  out.U32(transport.status);
  out.U32(transport.device_features_sel);
  out.U32(transport.driver_features_sel);
  out.U64(transport.driver_features);
  out.U32(transport.queue_sel);
  out.U32(transport.interrupt_status);
  out.U32(transport.config_generation);
  out.U32(static_cast<uint32_t>(transport.queues.size()));
  for (const virtio::VirtqueueState& queue : transport.queues) {
    out.U16(queue.size);
    out.Bool(queue.ready);
    out.U64(queue.desc_addr);
    out.U64(queue.avail_addr);
    out.U64(queue.used_addr);
    out.U16(queue.next_avail);
    out.U16(queue.next_used);
  }
  if (device.device_id == virtio::kDeviceIdBlock) {
    out.String(device.drive_id);
    out.String(device.drive_path);
    out.Bool(device.read_only);
    out.Bool(device.is_root);
    out.Bool(device.lethe);
    out.U64(device.disk_bytes);
    out.U64(device.lethe_state.block_size);
    out.U32(static_cast<uint32_t>(device.lethe_state.written.size()));
    for (uint64_t word : device.lethe_state.written) out.U64(word);
  } else if (device.device_id == virtio::kDeviceIdVsock) {
    out.U32(device.guest_cid);
    out.String(device.uds_path);
  }
  return out.Take();
}

Result<VirtioDeviceSnapshot> DecodeVirtioBlob(std::span<const uint8_t> blob) {
  BlobReader in(blob, "virtio device blob");
  TRY(ReadHeader(in, kBlobKindVirtio));
  VirtioDeviceSnapshot device;
  device.slot = TRY(in.U32("slot"));
  device.device_id = TRY(in.U32("device ID"));
  const size_t expected_queues = QueueCountFor(device.device_id);
  if (expected_queues == 0) {
    return Invalid("virtio device blob: unknown virtio device ID " +
                   std::to_string(device.device_id));
  }
  virtio::MmioTransportState& transport = device.transport;
  transport.status = TRY(in.U32("status"));
  transport.device_features_sel = TRY(in.U32("device features select"));
  transport.driver_features_sel = TRY(in.U32("driver features select"));
  transport.driver_features = TRY(in.U64("driver features"));
  transport.queue_sel = TRY(in.U32("queue select"));
  transport.interrupt_status = TRY(in.U32("interrupt status"));
  transport.config_generation = TRY(in.U32("config generation"));
  const uint32_t queues = TRY(in.U32("queue count"));
  if (queues != expected_queues) {
    return Invalid("virtio device blob: " + std::to_string(queues) + " queues, the device has " +
                   std::to_string(expected_queues));
  }
  for (uint32_t i = 0; i < queues; ++i) {
    virtio::VirtqueueState queue;
    queue.size = TRY(in.U16("queue size"));
    queue.ready = TRY(in.Bool("queue ready"));
    queue.desc_addr = TRY(in.U64("queue descriptor address"));
    queue.avail_addr = TRY(in.U64("queue driver area"));
    queue.used_addr = TRY(in.U64("queue device area"));
    queue.next_avail = TRY(in.U16("queue next available"));
    queue.next_used = TRY(in.U16("queue next used"));
    transport.queues.push_back(queue);
  }
  if (device.device_id == virtio::kDeviceIdBlock) {
    device.drive_id = TRY(in.String("drive id", kMaxDriveIdBytes));
    device.drive_path = TRY(in.String("drive path", kMaxBlobPathBytes));
    device.read_only = TRY(in.Bool("read-only"));
    device.is_root = TRY(in.Bool("root device"));
    device.lethe = TRY(in.Bool("lethe"));
    device.disk_bytes = TRY(in.U64("disk size"));
    device.lethe_state.block_size = TRY(in.U64("Lethe block size"));
    const uint32_t words = TRY(in.U32("Lethe bitmap length"));
    // Bounded before allocating: a disk of kMaxDiskBytes needs this many words at most.
    if (words > LetheWordsFor(kMaxDiskBytes)) {
      return Invalid("virtio device blob: Lethe bitmap of " + std::to_string(words) +
                     " words is above the limit");
    }
    for (uint32_t i = 0; i < words; ++i) {
      device.lethe_state.written.push_back(TRY(in.U64("Lethe bitmap")));
    }
  } else if (device.device_id == virtio::kDeviceIdVsock) {
    device.guest_cid = TRY(in.U32("guest CID"));
    device.uds_path = TRY(in.String("uds_path", 107));
  }
  TRY(in.End());
  auto key = VirtioDeviceKey(device);
  const std::string what = key ? "device " + *key : "virtio device blob";
  TRY(ValidateVirtio(device, what));
  return device;
}

}  // namespace tartarus::vmm::snapshot

// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-blk (virtio 1.1, section 5.2).
#include "vmm/virtio/block.h"

#include <algorithm>
#include <array>
#include <vector>

namespace tartarus::vmm::virtio {

BlockDevice::BlockDevice(std::unique_ptr<Disk> disk, std::string id, bool read_only)
    : disk_(std::move(disk)), id_(std::move(id)), read_only_(read_only || disk_->ReadOnly()) {
  if (id_.size() > kBlkIdBytes) id_.resize(kBlkIdBytes);
}

uint64_t BlockDevice::Features() const {
  return kCommonFeatures | kBlkFeatureFlush | (read_only_ ? kBlkFeatureReadOnly : 0);
}

void BlockDevice::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  // struct virtio_blk_config: only capacity (le64 at 0) is meaningful without more features.
  const uint64_t capacity = capacity_sectors();
  std::array<uint8_t, 8> config;
  for (size_t i = 0; i < config.size(); ++i) config[i] = static_cast<uint8_t>(capacity >> (8 * i));
  ReadConfigBytes(config, offset, data);
}

Result<bool> BlockDevice::ProcessQueue(size_t /*index*/, Virtqueue& queue, GuestMemory& memory) {
  bool used = false;
  // At most one queue's worth per notification: chains added meanwhile come with their own
  // notification, so a guest that keeps adding cannot hold the vCPU here forever.
  for (uint32_t served = 0; served < queue.state().size; ++served) {
    std::optional<DescriptorChain> chain = TRY(queue.Pop(memory));
    if (!chain) break;
    const uint32_t written = TRY(Serve(memory, *chain));
    TRY(queue.PushUsed(memory, chain->head, written));
    used = true;
  }
  return used;
}

Result<uint32_t> BlockDevice::Serve(GuestMemory& memory, const DescriptorChain& chain) {
  // Framing errors (no header, nowhere to put the status) break the protocol: Errors.
  // Everything else is answered in the status byte.
  if (chain.writable.empty()) {
    return Fail(ErrorCode::kInvalidArgument, "block request has no device-writable status byte");
  }
  BufferCursor request(memory, chain.readable);
  BlkRequestHeader header;
  if (auto ok = request.Read(std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header))); !ok) {
    return Fail(ErrorCode::kInvalidArgument, "block request is shorter than its 16-byte header");
  }
  // The status is the chain's last byte; the writable bytes before it are the data buffers.
  std::vector<Buffer> data_in(chain.writable);
  Buffer& last = data_in.back();
  const uint64_t status_addr = last.addr + last.len - 1;
  if (--last.len == 0) data_in.pop_back();
  BufferCursor answer(memory, data_in);
  const uint64_t answer_bytes = answer.Remaining();

  uint8_t status = kBlkStatusOk;
  uint64_t written = 0;
  const uint64_t disk_bytes = capacity_sectors() * kSectorSize;
  auto disk_offset = [&](uint64_t length) -> Result<uint64_t> {
    if (length % kSectorSize != 0) {
      return Fail(ErrorCode::kInvalidArgument, "data length is not a multiple of 512");
    }
    if (header.sector > disk_bytes / kSectorSize) {
      return Fail(ErrorCode::kInvalidArgument, "sector is past the end of the disk");
    }
    const uint64_t offset = header.sector * kSectorSize;
    TRY(CheckDiskRange(disk_bytes, offset, length));
    return offset;
  };
  switch (header.type) {
    case kBlkTypeIn: {
      auto offset = disk_offset(answer_bytes);
      Status done = offset ? answer.ForEach(answer_bytes,
                                            [&](std::span<uint8_t> bytes) -> Status {
                                              TRY(disk_->ReadAt(*offset, bytes));
                                              *offset += bytes.size();
                                              return Ok();
                                            })
                           : Status(Fail(offset.error()));
      if (done) {
        written = answer_bytes;
      } else {
        status = kBlkStatusIoErr;
      }
      break;
    }
    case kBlkTypeOut: {
      const uint64_t length = request.Remaining();
      auto offset = disk_offset(length);
      if (read_only_ || !offset) {
        status = kBlkStatusIoErr;
        break;
      }
      Status done = request.ForEach(length, [&](std::span<uint8_t> bytes) -> Status {
        TRY(disk_->WriteAt(*offset, bytes));
        *offset += bytes.size();
        return Ok();
      });
      if (!done) status = kBlkStatusIoErr;
      break;
    }
    case kBlkTypeFlush:
      if (!disk_->Flush()) status = kBlkStatusIoErr;
      break;
    case kBlkTypeGetId: {
      // 20 bytes, NUL-padded (the ID is not NUL-terminated when it is exactly 20 long).
      std::array<uint8_t, kBlkIdBytes> id{};
      std::copy(id_.begin(), id_.end(), id.begin());
      const uint64_t length = std::min<uint64_t>(answer_bytes, id.size());
      if (answer.Write(std::span(id).first(length))) {
        written = length;
      } else {
        status = kBlkStatusIoErr;
      }
      break;
    }
    default:
      status = kBlkStatusUnsupported;
      break;
  }
  TRY(memory.WriteObject(status_addr, status));
  // written <= guest memory backing the chain, but the used ring holds 32 bits.
  return static_cast<uint32_t>(std::min<uint64_t>(written + 1, UINT32_MAX));
}

}  // namespace tartarus::vmm::virtio

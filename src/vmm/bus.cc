// tartarus-vmm (Tartarus's KVM microVM monitor): the MMIO and port-I/O buses.
#include "vmm/bus.h"

#include <algorithm>
#include <cstdio>

namespace tartarus::vmm {
namespace {

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace

Status Bus::Insert(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device) {
  if (device == nullptr) return Fail(ErrorCode::kInvalidArgument, name_ + " bus: null device");
  const std::string what = name_ + " bus: " + std::string(device->Name()) + " at [" + Hex(base) +
                           ", +" + Hex(length) + ")";
  if (length == 0 || base + length < base) {
    return Fail(ErrorCode::kInvalidArgument, what + ": empty or wrapping range");
  }
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + length) {
    return Fail(ErrorCode::kAlreadyExists,
                what + " overlaps " + std::string(next->second.device->Name()));
  }
  if (next != ranges_.begin()) {
    auto previous = std::prev(next);
    if (previous->first + previous->second.length > base) {
      return Fail(ErrorCode::kAlreadyExists,
                  what + " overlaps " + std::string(previous->second.device->Name()));
    }
  }
  auto& lock = device_locks_[device.get()];
  if (lock == nullptr) lock = std::make_shared<std::mutex>();
  ranges_.emplace(base, Entry{length, std::move(device), lock});
  return Ok();
}

const Bus::Entry* Bus::Lookup(uint64_t addr, uint64_t size, uint64_t* offset) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t relative = addr - it->first;
  if (relative >= it->second.length || size > it->second.length - relative) return nullptr;
  *offset = relative;
  return &it->second;
}

bool Bus::Read(uint64_t addr, std::span<uint8_t> data) {
  uint64_t offset = 0;
  const Entry* entry = Lookup(addr, data.size(), &offset);
  if (entry == nullptr) {
    std::fill(data.begin(), data.end(), 0xff);
    unhandled_reads_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  std::lock_guard guard(*entry->lock);
  entry->device->Read(offset, data);
  return true;
}

bool Bus::Write(uint64_t addr, std::span<const uint8_t> data) {
  uint64_t offset = 0;
  const Entry* entry = Lookup(addr, data.size(), &offset);
  if (entry == nullptr) {
    unhandled_writes_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  std::lock_guard guard(*entry->lock);
  entry->device->Write(offset, data);
  return true;
}

}  // namespace tartarus::vmm

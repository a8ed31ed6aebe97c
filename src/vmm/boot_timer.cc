// tartarus-vmm (Tartarus's KVM microVM monitor): the boot-complete port.
#include "vmm/boot_timer.h"

#include <algorithm>

namespace tartarus::vmm {
namespace {

// Initialized before main(): within a fraction of a millisecond of exec.
const std::chrono::steady_clock::time_point process_start = std::chrono::steady_clock::now();

}  // namespace

std::chrono::steady_clock::time_point ProcessStartTime() { return process_start; }

void BootTimer::Read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }

void BootTimer::Write(uint64_t offset, std::span<const uint8_t> data) {
  // Like Firecracker: only a one-byte write of the magic value at offset 0 counts.
  if (offset != 0 || data.size() != 1 || data[0] != kBootCompleteMagic) return;
  if (boot_time_) return;
  boot_time_ = std::chrono::duration_cast<std::chrono::microseconds>(
      std::chrono::steady_clock::now() - process_start);
  if (on_boot_complete_) on_boot_complete_(*boot_time_);
}

}  // namespace tartarus::vmm

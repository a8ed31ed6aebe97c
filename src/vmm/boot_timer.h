// tartarus-vmm (Tartarus's KVM microVM monitor): the boot-complete port, Firecracker's
// "boot timer". A guest writes the byte 123 to port 0x3f0 (or to MMIO 0xd0000000, where
// newer Firecracker releases put it) to say it has booted; the VMM records the time since its
// own process started, for start-up benchmarks.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>

#include "vmm/bus.h"

namespace tartarus::vmm {

inline constexpr uint16_t kBootCompletePort = 0x3f0;
inline constexpr uint64_t kBootCompleteMmio = 0xd0000000;
inline constexpr uint8_t kBootCompleteMagic = 123;

// When this process started, as closely as a static initializer can tell.
std::chrono::steady_clock::time_point ProcessStartTime();

class BootTimer : public BusDevice {
 public:
  using Callback = std::function<void(std::chrono::microseconds since_process_start)>;
  explicit BootTimer(Callback on_boot_complete) : on_boot_complete_(std::move(on_boot_complete)) {}

  std::string_view Name() const override { return "boot-timer"; }
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // The first signal's time; later signals are ignored.
  std::optional<std::chrono::microseconds> boot_time() const { return boot_time_; }

 private:
  Callback on_boot_complete_;
  std::optional<std::chrono::microseconds> boot_time_;
};

}  // namespace tartarus::vmm

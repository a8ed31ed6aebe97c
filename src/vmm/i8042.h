// tartarus-vmm (Tartarus's KVM microVM monitor): the i8042 keyboard controller, only as far
// as a guest needs it to reboot: command 0xfe on port 0x64 pulses the CPU reset line.
#pragma once

#include <functional>

#include "vmm/bus.h"

namespace tartarus::vmm {

inline constexpr uint16_t kI8042Port = 0x60;  // data 0x60, command/status 0x64
inline constexpr uint64_t kI8042PortCount = 5;

class I8042 : public BusDevice {
 public:
  explicit I8042(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}

  std::string_view Name() const override { return "i8042"; }
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  static constexpr uint64_t kCommandOffset = 4;
  static constexpr uint8_t kCommandResetCpu = 0xfe;

 private:
  std::function<void()> on_reset_;
};

}  // namespace tartarus::vmm

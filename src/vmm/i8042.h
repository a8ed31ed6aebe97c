// tartarus-vmm (Tartarus's KVM microVM monitor): the i8042 keyboard controller, as far as a
// guest needs it: command 0xfe on port 0x64 pulses the CPU reset line (reboot), and the
// keyboard can deliver Ctrl+Alt+Del (Firecracker's SendCtrlAltDel) so that a Linux guest
// shuts down cleanly. Also the controller commands Linux's i8042 driver issues while probing.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

#include "vmm/bus.h"

namespace tartarus::vmm {

inline constexpr uint16_t kI8042Port = 0x60;  // data 0x60, command/status 0x64
inline constexpr uint64_t kI8042PortCount = 5;
inline constexpr uint32_t kKeyboardIrq = 1;

class I8042 : public BusDevice {
 public:
  // keyboard_irq may be null (polling only). Reads come from vCPU threads and
  // SendCtrlAltDel from the API thread: every entry point takes the lock.
  I8042(std::function<void()> on_reset, IrqLine* keyboard_irq = nullptr)
      : on_reset_(std::move(on_reset)), irq_(keyboard_irq) {}

  std::string_view Name() const override { return "i8042"; }
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Queues the scancodes (set 2) of Ctrl, Alt and Delete being pressed, as Firecracker does,
  // and raises the keyboard interrupt if the guest enabled it. False when the output
  // buffer is full (the guest is not reading its keyboard).
  bool SendCtrlAltDel();

  static constexpr uint64_t kDataOffset = 0;
  static constexpr uint64_t kCommandOffset = 4;
  // Controller commands (port 0x64).
  static constexpr uint8_t kCommandReadControl = 0x20;
  static constexpr uint8_t kCommandWriteControl = 0x60;
  static constexpr uint8_t kCommandDisableAux = 0xa7;
  static constexpr uint8_t kCommandEnableAux = 0xa8;
  static constexpr uint8_t kCommandTestAux = 0xa9;
  static constexpr uint8_t kCommandSelfTest = 0xaa;
  static constexpr uint8_t kCommandTestKeyboard = 0xab;
  static constexpr uint8_t kCommandDisableKeyboard = 0xad;
  static constexpr uint8_t kCommandEnableKeyboard = 0xae;
  static constexpr uint8_t kCommandReadOutputPort = 0xd0;
  static constexpr uint8_t kCommandWriteOutputPort = 0xd1;
  static constexpr uint8_t kCommandResetCpu = 0xfe;
  // Status register bits (port 0x64 reads).
  static constexpr uint8_t kStatusOutputFull = 0x01;
  static constexpr uint8_t kStatusSystemFlag = 0x04;
  static constexpr uint8_t kStatusLastWasCommand = 0x08;
  static constexpr uint8_t kStatusKeyboardEnabled = 0x10;
  // Control byte bits.
  static constexpr uint8_t kControlKeyboardInterrupt = 0x01;
  static constexpr uint8_t kControlSystemFlag = 0x04;
  static constexpr uint8_t kControlKeyboardDisabled = 0x10;
  // Keyboard answers (port 0x60).
  static constexpr uint8_t kKeyboardAck = 0xfa;
  static constexpr uint8_t kKeyboardSelfTestPassed = 0xaa;
  static constexpr size_t kBufferCapacity = 16;

 private:
  bool Push(uint8_t byte);  // false when full
  void UpdateIrq();         // the line follows "output full and keyboard interrupt enabled"
  void KeyboardCommand(uint8_t byte);

  std::mutex mutex_;
  std::function<void()> on_reset_;
  IrqLine* irq_;
  std::deque<uint8_t> buffer_;  // bytes for the guest to read from port 0x60
  uint8_t control_ = kControlKeyboardInterrupt | kControlSystemFlag;
  uint8_t status_ = kStatusSystemFlag | kStatusKeyboardEnabled;
  uint8_t pending_command_ = 0;  // a controller command waiting for its data byte
  uint8_t output_port_ = 0x01;   // bit 0: the CPU is out of reset
  bool irq_asserted_ = false;
};

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor): the i8042 keyboard controller (reset, the
// probe commands, and Ctrl+Alt+Del through the keyboard).
#include "vmm/i8042.h"

#include <algorithm>

namespace tartarus::vmm {

namespace {
// Set 2 make codes, as Firecracker sends them (Linux's atkbd reads set 2 untranslated).
constexpr uint8_t kKeyCtrl = 0x14;
constexpr uint8_t kKeyAlt = 0x11;
constexpr uint8_t kExtendedPrefix = 0xe0;
constexpr uint8_t kKeyDelete = 0x71;  // after kExtendedPrefix
}  // namespace

bool I8042::Push(uint8_t byte) {
  if (buffer_.size() >= kBufferCapacity) return false;
  buffer_.push_back(byte);
  return true;
}

void I8042::UpdateIrq() {
  bool want = !buffer_.empty() && (control_ & kControlKeyboardInterrupt) != 0;
  if (irq_ && want != irq_asserted_) irq_->SetLevel(want);
  irq_asserted_ = want;
}

void I8042::Read(uint64_t offset, std::span<uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  uint8_t value = 0;
  if (offset == kCommandOffset) {
    value = status_ | (buffer_.empty() ? 0 : kStatusOutputFull);
  } else if (offset == kDataOffset && !buffer_.empty()) {
    value = buffer_.front();
    buffer_.pop_front();
    // The next byte is a new interrupt: lower the line so that it rises again (ISA IRQs
    // are edge-triggered on the PIC).
    if (irq_ && irq_asserted_) {
      irq_->SetLevel(false);
      irq_asserted_ = false;
    }
    UpdateIrq();
  }
  std::fill(data.begin(), data.end(), 0);
  data[0] = value;
}

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  uint8_t byte = data[0];
  bool reset = false;
  {
    std::lock_guard lock(mutex_);
    if (offset == kCommandOffset) {
      status_ |= kStatusLastWasCommand;
      pending_command_ = 0;
      switch (byte) {
        case kCommandReadControl:
          Push(control_);
          break;
        case kCommandWriteControl:
        case kCommandWriteOutputPort:
          pending_command_ = byte;
          break;
        case kCommandReadOutputPort:
          Push(output_port_);
          break;
        case kCommandSelfTest:
          Push(0x55);  // passed
          break;
        case kCommandTestKeyboard:
        case kCommandTestAux:
          Push(0x00);  // no error
          break;
        case kCommandDisableKeyboard:
          control_ |= kControlKeyboardDisabled;
          status_ &= ~kStatusKeyboardEnabled;
          break;
        case kCommandEnableKeyboard:
          control_ &= ~kControlKeyboardDisabled;
          status_ |= kStatusKeyboardEnabled;
          break;
        case kCommandResetCpu:
          reset = true;
          break;
        default:  // aux port enable/disable and the rest: accepted, nothing to model
          break;
      }
    } else if (offset == kDataOffset) {
      status_ &= ~kStatusLastWasCommand;
      if (pending_command_ == kCommandWriteControl) {
        control_ = byte;
        status_ = (status_ & ~kStatusSystemFlag) | (byte & kControlSystemFlag);
      } else if (pending_command_ == kCommandWriteOutputPort) {
        output_port_ = byte;
        // Bit 0 low holds the CPU in reset: that is a reboot request too.
        reset = (byte & 0x01) == 0;
      } else {
        KeyboardCommand(byte);
      }
      pending_command_ = 0;
    }
    UpdateIrq();
  }
  // Outside the lock: the reset handler stops the VM and may wait for vCPU threads.
  if (reset && on_reset_) on_reset_();
}

// A byte for the keyboard itself: every command is acknowledged; reset also passes its
// self-test and "get ID" names an MF2 keyboard, which is what Linux's atkbd probes for.
void I8042::KeyboardCommand(uint8_t byte) {
  constexpr uint8_t kKeyboardReset = 0xff, kKeyboardGetId = 0xf2;
  Push(kKeyboardAck);
  if (byte == kKeyboardReset) Push(kKeyboardSelfTestPassed);
  if (byte == kKeyboardGetId) {
    Push(0xab);
    Push(0x83);
  }
}

bool I8042::SendCtrlAltDel() {
  std::lock_guard lock(mutex_);
  if (buffer_.size() + 4 > kBufferCapacity) return false;
  Push(kKeyCtrl);
  Push(kKeyAlt);
  Push(kExtendedPrefix);
  Push(kKeyDelete);
  UpdateIrq();
  return true;
}

}  // namespace tartarus::vmm

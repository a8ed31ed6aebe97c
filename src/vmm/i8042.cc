// tartarus-vmm (Tartarus's KVM microVM monitor): the i8042 keyboard controller (reset only).
#include "vmm/i8042.h"

#include <algorithm>

namespace tartarus::vmm {

void I8042::Read(uint64_t, std::span<uint8_t> data) {
  // Status 0: no input waiting, output buffer empty, so a guest's polling loops end at once.
  std::fill(data.begin(), data.end(), 0);
}

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset == kCommandOffset && !data.empty() && data[0] == kCommandResetCpu && on_reset_) {
    on_reset_();
  }
}

}  // namespace tartarus::vmm

// tartarus-vmm (Tartarus's KVM microVM monitor), test only: an interrupt line that records
// every level change (the legacy devices' tests: serial, i8042).
#pragma once

#include <vector>

#include "vmm/bus.h"

namespace tartarus::vmm::testing {

class FakeIrq : public IrqLine {
 public:
  void SetLevel(bool asserted) override {
    level = asserted;
    changes.push_back(asserted);
  }
  bool level = false;
  std::vector<bool> changes;
};

}  // namespace tartarus::vmm::testing

// Shared by the guest agent's sandbox filter (common/seccomp_filter.cc) and tartarus-vmm's
// per-thread allowlists (vmm/seccomp.cc): a tiny classic-BPF assembler whose jumps name
// labels, resolved to 8-bit offsets once the program is laid out.
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

#include "common/result.h"

namespace tartarus {

class BpfAssembler {
 public:
  using Label = int;
  static constexpr Label kNext = -1;  // fall through to the next instruction

  Label NewLabel() {
    bound_.push_back(-1);
    return static_cast<Label>(bound_.size() - 1);
  }
  void Bind(Label label) { bound_[label] = static_cast<int>(code_.size()); }
  void Load(uint32_t offset) { Emit(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset), kNext, kNext); }
  void And(uint32_t mask) { Emit(BPF_STMT(BPF_ALU | BPF_AND | BPF_K, mask), kNext, kNext); }
  void Return(uint32_t value) { Emit(BPF_STMT(BPF_RET | BPF_K, value), kNext, kNext); }
  // Forward jumps only, as classic BPF has.
  void Jump(uint16_t op, uint32_t k, Label if_true, Label if_false) {
    Emit(BPF_JUMP(BPF_JMP | op | BPF_K, k, 0, 0), if_true, if_false);
  }

  Result<std::vector<sock_filter>> Finish() {
    for (size_t i = 0; i < code_.size(); ++i) {
      const std::pair<Label, uint8_t*> jumps[] = {{true_[i], &code_[i].jt},
                                                  {false_[i], &code_[i].jf}};
      for (auto [label, field] : jumps) {
        if (label == kNext) continue;
        int offset = bound_[label] - static_cast<int>(i) - 1;
        if (bound_[label] < 0 || offset < 0 || offset > 255) {
          return Fail(ErrorCode::kInternal,
                      "seccomp filter: jump " + std::to_string(i) + " out of range");
        }
        *field = static_cast<uint8_t>(offset);
      }
    }
    if (code_.size() > BPF_MAXINSNS) return Fail(ErrorCode::kInternal, "seccomp filter too long");
    return code_;
  }

 private:
  void Emit(sock_filter instruction, Label if_true, Label if_false) {
    code_.push_back(instruction);
    true_.push_back(if_true);
    false_.push_back(if_false);
  }

  std::vector<sock_filter> code_;
  std::vector<Label> true_, false_;
  std::vector<int> bound_;
};

}  // namespace tartarus

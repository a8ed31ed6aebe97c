// tartarus-vmm (Tartarus's KVM microVM monitor): the 8250/16550 UART.
#include "vmm/serial.h"

#include <algorithm>

namespace tartarus::vmm {

void Uart8250::Read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard guard(mutex_);
  // Registers are bytes; wider accesses read the register then zeros.
  for (size_t i = 0; i < data.size(); ++i) data[i] = i == 0 ? ReadRegister(offset) : 0;
  UpdateIrq();
}

void Uart8250::Write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard guard(mutex_);
  if (!data.empty()) WriteRegister(offset, data[0]);
  UpdateIrq();
}

size_t Uart8250::EnqueueInput(std::span<const uint8_t> bytes) {
  std::lock_guard guard(mutex_);
  size_t accepted = 0;
  for (uint8_t byte : bytes) {
    if (input_.size() >= kInputCapacity) break;
    input_.push_back(byte);
    ++accepted;
  }
  UpdateIrq();
  return accepted;
}

UartState Uart8250::State() {
  std::lock_guard guard(mutex_);
  return UartState{.ier = ier_,
                   .lcr = lcr_,
                   .mcr = mcr_,
                   .msr = msr_,
                   .scr = scr_,
                   .fcr = fcr_,
                   .dll = dll_,
                   .dlm = dlm_,
                   .thr_empty_pending = thr_empty_pending_,
                   .input = std::vector<uint8_t>(input_.begin(), input_.end())};
}

void Uart8250::Restore(const UartState& state) {
  std::lock_guard guard(mutex_);
  ier_ = state.ier;
  lcr_ = state.lcr;
  mcr_ = state.mcr;
  msr_ = state.msr;
  scr_ = state.scr;
  fcr_ = state.fcr;
  dll_ = state.dll;
  dlm_ = state.dlm;
  thr_empty_pending_ = state.thr_empty_pending;
  input_.assign(
      state.input.begin(),
      state.input.begin() + static_cast<ptrdiff_t>(std::min(state.input.size(), kInputCapacity)));
  // A new VM's line starts low: raise it if the restored registers say so.
  irq_asserted_ = false;
  UpdateIrq();
}

uint8_t Uart8250::InterruptId() const {
  // Priority order of the 16550: line status (not modelled), received data, THR empty.
  if ((ier_ & kIerReceivedData) && !input_.empty()) return kIirReceivedData;
  if ((ier_ & kIerThrEmpty) && thr_empty_pending_) return kIirThrEmpty;
  return kIirNone;
}

uint8_t Uart8250::ReadRegister(uint64_t offset) {
  const bool dlab = (lcr_ & kLcrDlab) != 0;
  switch (offset) {
    case kData:
      if (dlab) return dll_;
      if (input_.empty()) return 0;
      {
        uint8_t byte = input_.front();
        input_.pop_front();
        return byte;
      }
    case kIer:
      return dlab ? dlm_ : ier_;
    case kIir: {
      uint8_t id = InterruptId();
      // Reading IIR acknowledges a THR-empty interrupt.
      if (id == kIirThrEmpty) thr_empty_pending_ = false;
      return id | ((fcr_ & 0x01) ? 0xc0 : 0x00);
    }
    case kLcr:
      return lcr_;
    case kMcr:
      return mcr_;
    case kLsr:
      // Transmission is instantaneous: THR and the shift register are always empty.
      return static_cast<uint8_t>(kLsrThrEmpty | kLsrIdle | (input_.empty() ? 0 : kLsrDataReady));
    case kMsr:
      if (mcr_ & kMcrLoop) {
        // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD (what Linux's probe checks).
        return static_cast<uint8_t>(((mcr_ & 0x01) << 5) | ((mcr_ & 0x02) << 3) |
                                    ((mcr_ & 0x04) << 4) | ((mcr_ & 0x08) << 4));
      }
      return msr_;
    case kScr:
      return scr_;
    default:
      return 0xff;
  }
}

void Uart8250::WriteRegister(uint64_t offset, uint8_t value) {
  const bool dlab = (lcr_ & kLcrDlab) != 0;
  switch (offset) {
    case kData:
      if (dlab) {
        dll_ = value;
        return;
      }
      if (mcr_ & kMcrLoop) {
        if (input_.size() < kInputCapacity) input_.push_back(value);
      } else if (sink_) {
        sink_(value);
      }
      thr_empty_pending_ = true;  // the byte left at once; THR is empty again
      return;
    case kIer: {
      if (dlab) {
        dlm_ = value;
        return;
      }
      uint8_t previous = ier_;
      ier_ = value & 0x0f;
      // Enabling the THR-empty interrupt while THR is empty raises it at once.
      if ((ier_ & kIerThrEmpty) && !(previous & kIerThrEmpty)) thr_empty_pending_ = true;
      return;
    }
    case kIir:  // FCR
      fcr_ = value & 0xc9;
      if (value & 0x02) input_.clear();  // clear the receive FIFO
      return;
    case kLcr:
      lcr_ = value;
      return;
    case kMcr:
      mcr_ = value & 0x1f;
      return;
    case kScr:
      scr_ = value;
      return;
    default:  // LSR and MSR are read-only
      return;
  }
}

void Uart8250::UpdateIrq() {
  bool asserted = InterruptId() != kIirNone;
  if (asserted == irq_asserted_) return;
  irq_asserted_ = asserted;
  if (irq_ != nullptr) irq_->SetLevel(asserted);
}

}  // namespace tartarus::vmm

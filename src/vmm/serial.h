// tartarus-vmm (Tartarus's KVM microVM monitor): the 8250/16550 UART (COM1 at 0x3f8, IRQ 4).
// A register model on plain memory: transmitted bytes go to a sink, host input is queued for
// the guest, and the interrupt line follows IIR (THR-empty and received-data interrupts).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "vmm/bus.h"

namespace tartarus::vmm {

inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint32_t kCom1Irq = 4;

// The UART's registers and pending input as plain data (for snapshots).
struct UartState {
  uint8_t ier = 0;
  uint8_t lcr = 0x03;
  uint8_t mcr = 0x08;
  uint8_t msr = 0xb0;
  uint8_t scr = 0;
  uint8_t fcr = 0;
  uint8_t dll = 0x0c;
  uint8_t dlm = 0;
  bool thr_empty_pending = false;
  std::vector<uint8_t> input;  // at most Uart8250::kInputCapacity bytes
};

class Uart8250 : public BusDevice {
 public:
  using Sink = std::function<void(uint8_t)>;
  // irq may be null (polling only).
  Uart8250(Sink sink, IrqLine* irq) : sink_(std::move(sink)), irq_(irq) {}

  std::string_view Name() const override { return "uart8250"; }
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Host input for the guest; returns how many bytes fit in the receive buffer.
  size_t EnqueueInput(std::span<const uint8_t> bytes);

  UartState State();
  // Sets the registers and input (beyond kInputCapacity dropped) and drives the line to match.
  void Restore(const UartState& state);

  // Register offsets from the base port.
  static constexpr uint64_t kData = 0;  // RBR (read) / THR (write) / DLL (DLAB=1)
  static constexpr uint64_t kIer = 1;   // IER / DLM (DLAB=1)
  static constexpr uint64_t kIir = 2;   // IIR (read) / FCR (write)
  static constexpr uint64_t kLcr = 3;
  static constexpr uint64_t kMcr = 4;
  static constexpr uint64_t kLsr = 5;
  static constexpr uint64_t kMsr = 6;
  static constexpr uint64_t kScr = 7;

  static constexpr uint8_t kIerReceivedData = 0x01;
  static constexpr uint8_t kIerThrEmpty = 0x02;
  static constexpr uint8_t kIirNone = 0x01;
  static constexpr uint8_t kIirThrEmpty = 0x02;
  static constexpr uint8_t kIirReceivedData = 0x04;
  static constexpr uint8_t kLsrDataReady = 0x01;
  static constexpr uint8_t kLsrThrEmpty = 0x20;
  static constexpr uint8_t kLsrIdle = 0x40;
  static constexpr uint8_t kLcrDlab = 0x80;
  static constexpr uint8_t kMcrLoop = 0x10;
  static constexpr size_t kInputCapacity = 4096;

 private:
  uint8_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint8_t value);
  uint8_t InterruptId() const;  // IIR without the FIFO bits
  void UpdateIrq();

  Sink sink_;
  IrqLine* irq_;
  std::mutex mutex_;
  uint8_t ier_ = 0;
  uint8_t lcr_ = 0x03;  // 8 data bits, no parity, 1 stop bit
  uint8_t mcr_ = 0x08;  // OUT2, which PCs use to gate the interrupt
  uint8_t msr_ = 0xb0;  // DCD, DSR, CTS: a connected, ready peer
  uint8_t scr_ = 0;
  uint8_t fcr_ = 0;
  uint8_t dll_ = 0x0c;  // divisor 12: 9600 baud
  uint8_t dlm_ = 0;
  bool thr_empty_pending_ = false;
  bool irq_asserted_ = false;
  std::deque<uint8_t> input_;
};

}  // namespace tartarus::vmm

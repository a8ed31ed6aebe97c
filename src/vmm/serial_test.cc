// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the 8250 UART register model.
#include "vmm/serial.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "vmm/irq_testing.h"

namespace tartarus::vmm {
namespace {

using testing::FakeIrq;

class UartTest : public ::testing::Test {
 protected:
  UartTest() : uart_([this](uint8_t byte) { output_ += static_cast<char>(byte); }, &irq_) {}
  uint8_t In(uint64_t offset) {
    uint8_t value = 0;
    uart_.Read(offset, std::span(&value, 1));
    return value;
  }
  void Out(uint64_t offset, uint8_t value) { uart_.Write(offset, std::span(&value, 1)); }

  std::string output_;
  FakeIrq irq_;
  Uart8250 uart_;
};

// Snapshots: registers and pending input move to a new UART, whose line follows them.
TEST_F(UartTest, StateRestoresIntoANewUartWithItsInterruptLine) {
  Out(Uart8250::kLcr, 0x80);  // DLAB: divisor 1
  Out(Uart8250::kData, 1);
  Out(Uart8250::kLcr, 0x1b);
  Out(Uart8250::kScr, 0x5a);
  Out(Uart8250::kIer, Uart8250::kIerReceivedData);
  const uint8_t input[] = {'o', 'k'};
  ASSERT_EQ(uart_.EnqueueInput(input), 2u);
  ASSERT_TRUE(irq_.level);
  const UartState saved = uart_.State();
  EXPECT_EQ(saved.dll, 1);
  EXPECT_EQ(saved.input, (std::vector<uint8_t>{'o', 'k'}));

  FakeIrq other_irq;
  Uart8250 restored([](uint8_t) {}, &other_irq);
  restored.Restore(saved);
  EXPECT_TRUE(other_irq.level);  // received data is pending with its interrupt enabled
  uint8_t value = 0;
  restored.Read(Uart8250::kScr, std::span(&value, 1));
  EXPECT_EQ(value, 0x5a);
  restored.Read(Uart8250::kData, std::span(&value, 1));
  EXPECT_EQ(value, 'o');
  restored.Read(Uart8250::kData, std::span(&value, 1));
  EXPECT_EQ(value, 'k');
  EXPECT_FALSE(other_irq.level);
  // More input than the buffer holds is cut to its capacity.
  UartState flooded = saved;
  flooded.input.assign(Uart8250::kInputCapacity + 10, 'x');
  restored.Restore(flooded);
  EXPECT_EQ(restored.State().input.size(), Uart8250::kInputCapacity);
}

TEST_F(UartTest, TransmitsToTheSinkAndAlwaysReportsAnEmptyTransmitter) {
  for (char c : std::string("hi\n")) Out(Uart8250::kData, static_cast<uint8_t>(c));
  EXPECT_EQ(output_, "hi\n");
  EXPECT_EQ(In(Uart8250::kLsr), Uart8250::kLsrThrEmpty | Uart8250::kLsrIdle);
  EXPECT_TRUE(irq_.changes.empty());  // no interrupt without IER
}

TEST_F(UartTest, DivisorLatchShadowsDataAndIer) {
  Out(Uart8250::kLcr, 0x83);  // DLAB on, 8N1
  Out(Uart8250::kData, 0x01);
  Out(Uart8250::kIer, 0x02);
  EXPECT_EQ(In(Uart8250::kData), 0x01);
  EXPECT_EQ(In(Uart8250::kIer), 0x02);
  Out(Uart8250::kLcr, 0x03);
  EXPECT_EQ(output_, "");               // the divisor write did not transmit
  EXPECT_EQ(In(Uart8250::kIer), 0x00);  // nor did it enable interrupts
  EXPECT_EQ(In(Uart8250::kLcr), 0x03);
}

TEST_F(UartTest, ThrEmptyInterruptIsRaisedAcknowledgedAndRaisedAgain) {
  Out(Uart8250::kIer, Uart8250::kIerThrEmpty);
  EXPECT_TRUE(irq_.level);
  EXPECT_EQ(In(Uart8250::kIir), Uart8250::kIirThrEmpty);
  EXPECT_FALSE(irq_.level);  // reading IIR acknowledged it
  EXPECT_EQ(In(Uart8250::kIir), Uart8250::kIirNone);
  Out(Uart8250::kData, 'x');
  EXPECT_TRUE(irq_.level);  // the byte left: THR is empty again
  Out(Uart8250::kIer, 0);
  EXPECT_FALSE(irq_.level);
  EXPECT_EQ(irq_.changes, (std::vector<bool>{true, false, true, false}));
}

TEST_F(UartTest, ReceivedDataInterruptTakesPriorityAndClearsWhenRead) {
  Out(Uart8250::kIer, Uart8250::kIerReceivedData | Uart8250::kIerThrEmpty);
  const uint8_t input[] = {'a', 'b'};
  EXPECT_EQ(uart_.EnqueueInput(input), 2u);
  EXPECT_TRUE(irq_.level);
  EXPECT_EQ(In(Uart8250::kLsr) & Uart8250::kLsrDataReady, Uart8250::kLsrDataReady);
  EXPECT_EQ(In(Uart8250::kIir), Uart8250::kIirReceivedData);
  EXPECT_EQ(In(Uart8250::kData), 'a');
  EXPECT_EQ(In(Uart8250::kData), 'b');
  EXPECT_EQ(In(Uart8250::kLsr) & Uart8250::kLsrDataReady, 0);
  EXPECT_EQ(In(Uart8250::kIir), Uart8250::kIirThrEmpty);  // the lower-priority one remains
  EXPECT_FALSE(irq_.level);
  EXPECT_EQ(In(Uart8250::kData), 0);  // reading an empty RBR is harmless
}

TEST_F(UartTest, LoopbackReturnsTransmittedBytesAndModemLines) {
  Out(Uart8250::kMcr, Uart8250::kMcrLoop | 0x0a);  // loop, RTS, OUT2: Linux's probe
  EXPECT_EQ(In(Uart8250::kMsr) & 0xf0, 0x90);
  Out(Uart8250::kData, 'q');
  EXPECT_EQ(output_, "");
  EXPECT_EQ(In(Uart8250::kData), 'q');
  Out(Uart8250::kMcr, 0x08);
  EXPECT_EQ(In(Uart8250::kMsr), 0xb0);  // a connected peer outside loopback
}

TEST_F(UartTest, ScratchFifoControlAndInputBound) {
  Out(Uart8250::kScr, 0x5a);
  EXPECT_EQ(In(Uart8250::kScr), 0x5a);
  Out(Uart8250::kIir, 0x01);  // FCR: FIFO on
  EXPECT_EQ(In(Uart8250::kIir), 0xc1);
  std::vector<uint8_t> flood(Uart8250::kInputCapacity + 10, 'z');
  EXPECT_EQ(uart_.EnqueueInput(flood), Uart8250::kInputCapacity);
  Out(Uart8250::kIir, 0x03);  // FCR: FIFO on, clear receive FIFO
  EXPECT_EQ(In(Uart8250::kLsr) & Uart8250::kLsrDataReady, 0);
  Out(Uart8250::kLsr, 0);  // read-only registers ignore writes
  EXPECT_EQ(In(Uart8250::kLsr), Uart8250::kLsrThrEmpty | Uart8250::kLsrIdle);
}

}  // namespace
}  // namespace tartarus::vmm

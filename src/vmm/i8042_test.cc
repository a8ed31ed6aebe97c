// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the i8042 model: reset, the probe
// commands Linux issues, and Ctrl+Alt+Del with its interrupt line.
#include "vmm/i8042.h"

#include <gtest/gtest.h>

#include <vector>

#include "vmm/irq_testing.h"

namespace tartarus::vmm {
namespace {

using testing::FakeIrq;

class I8042Test : public ::testing::Test {
 protected:
  I8042Test() : i8042_([this] { ++resets_; }, &irq_) {}
  uint8_t In(uint64_t offset) {
    uint8_t value = 0xee;
    i8042_.Read(offset, std::span(&value, 1));
    return value;
  }
  void Out(uint64_t offset, uint8_t value) { i8042_.Write(offset, std::span(&value, 1)); }
  uint8_t Status() { return In(I8042::kCommandOffset); }
  uint8_t Data() { return In(I8042::kDataOffset); }

  FakeIrq irq_;
  int resets_ = 0;
  I8042 i8042_;
};

TEST_F(I8042Test, ResetCommandAndOutputPortBitZeroReboot) {
  Out(I8042::kCommandOffset, I8042::kCommandResetCpu);
  EXPECT_EQ(resets_, 1);
  Out(I8042::kCommandOffset, I8042::kCommandWriteOutputPort);
  Out(I8042::kDataOffset, 0x03);  // CPU stays out of reset
  EXPECT_EQ(resets_, 1);
  Out(I8042::kCommandOffset, I8042::kCommandWriteOutputPort);
  Out(I8042::kDataOffset, 0x02);  // bit 0 low: reset
  EXPECT_EQ(resets_, 2);
}

TEST_F(I8042Test, EmptyControllerReadsAsNoData) {
  EXPECT_EQ(Status() & I8042::kStatusOutputFull, 0);
  EXPECT_EQ(Data(), 0);
  EXPECT_TRUE(irq_.changes.empty());
}

TEST_F(I8042Test, ProbeCommandsAnswerAsLinuxExpects) {
  Out(I8042::kCommandOffset, I8042::kCommandSelfTest);
  EXPECT_NE(Status() & I8042::kStatusOutputFull, 0);
  EXPECT_EQ(Data(), 0x55);
  EXPECT_EQ(Status() & I8042::kStatusOutputFull, 0);
  Out(I8042::kCommandOffset, I8042::kCommandTestKeyboard);
  EXPECT_EQ(Data(), 0x00);
  // Control byte: read, written, read back.
  Out(I8042::kCommandOffset, I8042::kCommandReadControl);
  EXPECT_EQ(Data(), I8042::kControlKeyboardInterrupt | I8042::kControlSystemFlag);
  Out(I8042::kCommandOffset, I8042::kCommandWriteControl);
  Out(I8042::kDataOffset, 0x44);
  Out(I8042::kCommandOffset, I8042::kCommandReadControl);
  EXPECT_EQ(Data(), 0x44);
  // Keyboard commands: reset acks and passes, "get ID" names an MF2 keyboard, others ack.
  Out(I8042::kDataOffset, 0xff);
  EXPECT_EQ(Data(), I8042::kKeyboardAck);
  EXPECT_EQ(Data(), I8042::kKeyboardSelfTestPassed);
  Out(I8042::kDataOffset, 0xf2);
  EXPECT_EQ(Data(), I8042::kKeyboardAck);
  EXPECT_EQ(Data(), 0xab);
  EXPECT_EQ(Data(), 0x83);
  Out(I8042::kDataOffset, 0xed);  // set LEDs
  EXPECT_EQ(Data(), I8042::kKeyboardAck);
  EXPECT_EQ(resets_, 0);
}

TEST_F(I8042Test, CtrlAltDelQueuesSetTwoScancodesWithAnEdgePerByte) {
  ASSERT_TRUE(i8042_.SendCtrlAltDel());
  EXPECT_TRUE(irq_.level);
  std::vector<uint8_t> keys;
  while (Status() & I8042::kStatusOutputFull) keys.push_back(Data());
  EXPECT_EQ(keys, (std::vector<uint8_t>{0x14, 0x11, 0xe0, 0x71}));
  EXPECT_FALSE(irq_.level);
  // Up once, then down and up again after each of the first three reads, down after the last.
  EXPECT_EQ(irq_.changes, (std::vector<bool>{true, false, true, false, true, false, true, false}));
}

TEST_F(I8042Test, NoInterruptWhenTheGuestDisabledIt) {
  Out(I8042::kCommandOffset, I8042::kCommandWriteControl);
  Out(I8042::kDataOffset, I8042::kControlSystemFlag);  // keyboard interrupt off
  ASSERT_TRUE(i8042_.SendCtrlAltDel());
  EXPECT_FALSE(irq_.level);
  EXPECT_NE(Status() & I8042::kStatusOutputFull, 0);  // still there to poll
  EXPECT_EQ(Data(), 0x14);
}

TEST_F(I8042Test, FullBufferRefusesMoreKeysWithoutLosingQueuedOnes) {
  for (size_t i = 0; i < I8042::kBufferCapacity / 4; ++i) ASSERT_TRUE(i8042_.SendCtrlAltDel());
  EXPECT_FALSE(i8042_.SendCtrlAltDel());
  size_t read = 0;
  while (Status() & I8042::kStatusOutputFull) {
    Data();
    ++read;
  }
  EXPECT_EQ(read, I8042::kBufferCapacity);
  EXPECT_TRUE(i8042_.SendCtrlAltDel());
}

}  // namespace
}  // namespace tartarus::vmm

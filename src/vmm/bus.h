// tartarus-vmm (Tartarus's KVM microVM monitor): the MMIO and port-I/O buses.
// Devices claim address ranges; a vCPU exit is dispatched to the device owning the address.
// Accesses nobody claims are ignored (reads return all-ones, as on a PC) and counted.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "common/result.h"

namespace tartarus::vmm {

// A device model on a bus. Offsets are relative to the base the device was inserted at.
// Calls for one device are serialized by the bus.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual std::string_view Name() const = 0;
  virtual void Read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void Write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

// An interrupt line a device drives (an in-kernel PIC/IOAPIC pin, or a fake in tests).
class IrqLine {
 public:
  virtual ~IrqLine() = default;
  virtual void SetLevel(bool asserted) = 0;
};

// Ranges are inserted before vCPUs run; dispatch is then safe from several vCPU threads.
class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}

  // Claims [base, base + length) for device; refuses empty, wrapping or overlapping ranges.
  // One device may be inserted at several ranges.
  Status Insert(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device);

  // Returns false when no device claims the whole access (the read is then all-ones).
  bool Read(uint64_t addr, std::span<uint8_t> data);
  bool Write(uint64_t addr, std::span<const uint8_t> data);

  uint64_t unhandled_reads() const { return unhandled_reads_.load(); }
  uint64_t unhandled_writes() const { return unhandled_writes_.load(); }
  const std::string& name() const { return name_; }

 private:
  struct Entry {
    uint64_t length;
    std::shared_ptr<BusDevice> device;
    std::shared_ptr<std::mutex> lock;  // shared by every range of one device
  };
  // The entry containing [addr, addr + size), or nullptr.
  const Entry* Lookup(uint64_t addr, uint64_t size, uint64_t* offset) const;

  std::string name_;
  std::map<uint64_t, Entry> ranges_;  // by base address
  std::map<const BusDevice*, std::shared_ptr<std::mutex>> device_locks_;
  std::atomic<uint64_t> unhandled_reads_{0};
  std::atomic<uint64_t> unhandled_writes_{0};
};

}  // namespace tartarus::vmm

// libFuzzer target for Persephone, tartarus-vmm's snapshot state file reader
// (src/vmm/snapshot/format.h). The first input byte picks how the rest is used:
//   0: the raw bytes as a state file;
//   1: the same with the CRC trailer fixed up, so mutations reach the parser behind it;
//   2: a valid file built from a shape the next bytes choose, then damaged by edits the rest
//      describe (5 bytes each: u16 position, u8 operation, u16 value), CRC fixed up.
// Whatever the reader accepts must pass ValidateSnapshot and re-encode canonically.
#include <cstring>
#include <vector>

#include "vmm/snapshot/format.h"

using namespace tartarus::vmm::snapshot;

#define SNAPSHOT_FUZZ_CHECK(cond)  \
  do {                             \
    if (!(cond)) __builtin_trap(); \
  } while (0)

namespace {

void Reseal(std::vector<uint8_t>& bytes) {
  if (bytes.size() < 4) return;
  uint32_t crc = Crc32c(std::span<const uint8_t>(bytes).first(bytes.size() - 4));
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
}

uint8_t Take(const uint8_t*& data, size_t& size) {
  if (size == 0) return 0;
  --size;
  return *data++;
}

std::vector<uint8_t> Structured(const uint8_t* data, size_t size) {
  Snapshot s;
  s.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  s.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  const int regions = 1 + Take(data, size) % 3;
  for (int i = 0; i < regions; ++i) {
    s.memory.push_back({uint64_t(i) << 32, 0x10000, uint64_t(i) * 0x10000});
  }
  const int vcpus = 1 + Take(data, size) % 3;
  const int msrs = Take(data, size) % 8;
  const bool xsave = Take(data, size) & 1;
  for (int i = 0; i < vcpus; ++i) {
    VcpuState v;
    v.index = static_cast<uint32_t>(i);
    v.cpuid.resize(2);
    v.has_xsave = v.has_xcrs = xsave;
    for (int m = 0; m < msrs; ++m) v.msrs.push_back({uint32_t(0x10 + m), uint64_t(m)});
    s.vcpus.push_back(v);
  }
  const int devices = Take(data, size) % 4;
  for (int i = 0; i < devices; ++i) s.devices.push_back({"dev" + std::to_string(i), {1, 2}});
  auto encoded = EncodeSnapshot(s);
  SNAPSHOT_FUZZ_CHECK(encoded.has_value());
  std::vector<uint8_t> bytes = std::move(*encoded);
  while (size >= 5) {
    uint16_t position;
    uint16_t value;
    std::memcpy(&position, data, 2);
    const uint8_t op = data[2];
    std::memcpy(&value, data + 3, 2);
    data += 5;
    size -= 5;
    if (bytes.empty()) break;
    const size_t at = position % bytes.size();
    switch (op % 4) {
      case 0:
        bytes[at] = static_cast<uint8_t>(value);
        break;
      case 1:  // a small number where a u32 count or length may live
        if (at + 4 <= bytes.size()) {
          uint32_t word = value;
          std::memcpy(bytes.data() + at, &word, 4);
        }
        break;
      case 2:
        bytes.resize(at);
        break;
      default:
        bytes.insert(bytes.begin() + static_cast<ptrdiff_t>(at), static_cast<uint8_t>(value));
        break;
    }
  }
  Reseal(bytes);
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  std::vector<uint8_t> bytes;
  if (mode == 2) {
    bytes = Structured(data + 1, size - 1);
  } else {
    bytes.assign(data + 1, data + size);
    if (mode == 1) Reseal(bytes);
  }
  auto decoded = DecodeSnapshot(bytes);
  if (!decoded) {
    SNAPSHOT_FUZZ_CHECK(!decoded.error().message.empty());
    return 0;
  }
  SNAPSHOT_FUZZ_CHECK(ValidateSnapshot(*decoded).has_value());
  auto again = EncodeSnapshot(*decoded);
  SNAPSHOT_FUZZ_CHECK(again.has_value());
  auto redecoded = DecodeSnapshot(*again);
  SNAPSHOT_FUZZ_CHECK(redecoded.has_value());
  auto third = EncodeSnapshot(*redecoded);
  SNAPSHOT_FUZZ_CHECK(third.has_value() && *third == *again);
  return 0;
}

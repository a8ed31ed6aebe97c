// Persephone (tartarus-vmm snapshots): tests of the state file format and its strict reader.
#include "vmm/snapshot/format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace tartarus::vmm::snapshot {
namespace {

using ::testing::HasSubstr;

constexpr size_t kHeaderBytes = 24;
constexpr size_t kTableEntryBytes = 24;

template <class T>
void Pattern(T& value, uint8_t seed) {
  auto* bytes = reinterpret_cast<uint8_t*>(&value);
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<uint8_t>(seed + i * 7);
}

template <class T>
bool SameBytes(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

Snapshot Sample() {
  Snapshot s;
  Pattern(s.vm.pic_master, 1);
  Pattern(s.vm.pic_slave, 2);
  Pattern(s.vm.ioapic, 3);
  s.vm.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
  s.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  s.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  Pattern(s.vm.pit, 4);
  Pattern(s.vm.clock, 5);
  s.memory = {{0, 0xd0000000, 0}, {0x100000000, 0x10000000, 0xd0000000}};
  for (uint32_t index : {1u, 0u}) {  // any order in the file
    VcpuState v;
    v.index = index;
    v.cpuid.resize(3);
    Pattern(v.cpuid[1], static_cast<uint8_t>(10 + index));
    Pattern(v.mp_state, 11);
    Pattern(v.regs, 12);
    Pattern(v.sregs, 13);
    Pattern(v.fpu, 14);
    v.has_xsave = index == 0;
    Pattern(v.xsave, 15);
    v.has_xcrs = index == 0;
    v.xcrs.nr_xcrs = 1;
    v.xcrs.xcrs[0].value = 7;
    Pattern(v.debug_regs, 16);
    Pattern(v.lapic, 17);
    v.msrs = {{0x10, 123456789}, {0x4b564d01, 0xabc1}, {0x6e0, 99}};
    Pattern(v.events, 18);
    v.tsc_khz = 2'000'000;
    s.vcpus.push_back(v);
  }
  s.devices.push_back({"rootfs", {1, 2, 3}});
  s.devices.push_back({"vsock.0", {}});
  return s;
}

std::vector<uint8_t> Encoded(const Snapshot& s = Sample()) {
  auto bytes = EncodeSnapshot(s);
  EXPECT_TRUE(bytes) << bytes.error().message;
  return bytes ? *bytes : std::vector<uint8_t>{};
}

// Recomputes the trailer so a test reaches the checks behind the CRC.
void Reseal(std::vector<uint8_t>& bytes) {
  if (bytes.size() < 4) return;
  uint32_t crc = Crc32c(std::span<const uint8_t>(bytes).first(bytes.size() - 4));
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
}

template <class T>
void Put(std::vector<uint8_t>& bytes, size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}
template <class T>
T Get(const std::vector<uint8_t>& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Where section i's bytes start, from the table.
size_t SectionOffset(const std::vector<uint8_t>& bytes, size_t i) {
  return static_cast<size_t>(Get<uint64_t>(bytes, kHeaderBytes + i * kTableEntryBytes + 8));
}

std::string DecodeError(const std::vector<uint8_t>& bytes) {
  auto decoded = DecodeSnapshot(bytes);
  if (decoded) return "(decoded fine)";
  EXPECT_EQ(decoded.error().code, ErrorCode::kInvalidArgument);
  return decoded.error().message;
}

std::string EncodeError(const Snapshot& snapshot) {
  auto encoded = EncodeSnapshot(snapshot);
  return encoded ? "(encoded fine)" : encoded.error().message;
}

TEST(SnapshotFormatTest, Crc32cKnownAnswer) {
  const std::string text = "123456789";
  EXPECT_EQ(Crc32c(std::span(reinterpret_cast<const uint8_t*>(text.data()), text.size())),
            0xe3069283u);
}

TEST(SnapshotFormatTest, RoundTripKeepsEveryField) {
  Snapshot in = Sample();
  std::vector<uint8_t> bytes = Encoded(in);
  ASSERT_EQ(std::memcmp(bytes.data(), kMagic, 8), 0);
  auto out = DecodeSnapshot(bytes);
  ASSERT_TRUE(out) << out.error().message;
  EXPECT_TRUE(SameBytes(out->vm.pic_master, in.vm.pic_master));
  EXPECT_TRUE(SameBytes(out->vm.pic_slave, in.vm.pic_slave));
  EXPECT_TRUE(SameBytes(out->vm.ioapic, in.vm.ioapic));
  EXPECT_TRUE(SameBytes(out->vm.pit, in.vm.pit));
  EXPECT_TRUE(SameBytes(out->vm.clock, in.vm.clock));
  ASSERT_EQ(out->memory.size(), 2u);
  EXPECT_EQ(out->memory[1].guest_addr, 0x100000000u);
  EXPECT_EQ(out->memory[1].file_offset, 0xd0000000u);
  ASSERT_EQ(out->vcpus.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const VcpuState& a = in.vcpus[i];
    const VcpuState& b = out->vcpus[i];
    EXPECT_EQ(a.index, b.index);
    ASSERT_EQ(a.cpuid.size(), b.cpuid.size());
    EXPECT_EQ(std::memcmp(a.cpuid.data(), b.cpuid.data(), a.cpuid.size() * sizeof(a.cpuid[0])), 0);
    EXPECT_TRUE(SameBytes(a.mp_state, b.mp_state));
    EXPECT_TRUE(SameBytes(a.regs, b.regs));
    EXPECT_TRUE(SameBytes(a.sregs, b.sregs));
    EXPECT_TRUE(SameBytes(a.fpu, b.fpu));
    EXPECT_EQ(a.has_xsave, b.has_xsave);
    if (a.has_xsave) {
      EXPECT_TRUE(SameBytes(a.xsave, b.xsave));
    }
    EXPECT_EQ(a.has_xcrs, b.has_xcrs);
    if (a.has_xcrs) {
      EXPECT_TRUE(SameBytes(a.xcrs, b.xcrs));
    }
    EXPECT_TRUE(SameBytes(a.debug_regs, b.debug_regs));
    EXPECT_TRUE(SameBytes(a.lapic, b.lapic));
    ASSERT_EQ(a.msrs.size(), b.msrs.size());
    for (size_t m = 0; m < a.msrs.size(); ++m) {
      EXPECT_EQ(a.msrs[m].index, b.msrs[m].index);
      EXPECT_EQ(a.msrs[m].value, b.msrs[m].value);
    }
    EXPECT_TRUE(SameBytes(a.events, b.events));
    EXPECT_EQ(a.tsc_khz, b.tsc_khz);
  }
  ASSERT_EQ(out->devices.size(), 2u);
  EXPECT_EQ(out->devices[0].id, "rootfs");
  EXPECT_EQ(out->devices[0].blob, (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(out->devices[1].id, "vsock.0");
  EXPECT_TRUE(out->devices[1].blob.empty());
  // Encoding is deterministic.
  EXPECT_EQ(Encoded(*out), bytes);
}

TEST(SnapshotFormatTest, RefusesShortWrongMagicAndWrongVersion) {
  EXPECT_THAT(DecodeError({}), HasSubstr("truncated"));
  std::vector<uint8_t> bytes = Encoded();
  EXPECT_THAT(DecodeError(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 20)),
              HasSubstr("truncated"));
  std::vector<uint8_t> magic = bytes;
  magic[0] = 'X';
  EXPECT_THAT(DecodeError(magic), HasSubstr("wrong magic"));
  std::vector<uint8_t> version = bytes;
  Put<uint32_t>(version, 8, 2);
  Reseal(version);
  EXPECT_THAT(DecodeError(version), HasSubstr("format version 2 is not supported"));
}

TEST(SnapshotFormatTest, RefusesTruncationAndTrailingBytes) {
  std::vector<uint8_t> bytes = Encoded();
  for (size_t cut : {size_t{1}, size_t{4}, size_t{100}, bytes.size() / 2}) {
    std::vector<uint8_t> truncated(bytes.begin(), bytes.end() - static_cast<ptrdiff_t>(cut));
    EXPECT_THAT(DecodeError(truncated), HasSubstr("truncated")) << cut;
  }
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_THAT(DecodeError(longer), HasSubstr("trailing bytes"));
}

TEST(SnapshotFormatTest, RefusesEverySingleByteChangeThroughTheCrc) {
  std::vector<uint8_t> bytes = Encoded();
  // Every byte after the header's size field is covered by the CRC (or is the CRC).
  for (size_t i = kHeaderBytes; i < bytes.size(); i += 13) {
    std::vector<uint8_t> bad = bytes;
    bad[i] ^= 0x20;
    EXPECT_THAT(DecodeError(bad), HasSubstr("CRC-32C mismatch")) << "byte " << i;
  }
}

TEST(SnapshotFormatTest, RefusesBadSectionTable) {
  std::vector<uint8_t> bytes = Encoded();
  auto resealed = [&](auto mutate) {
    std::vector<uint8_t> bad = bytes;
    mutate(bad);
    Reseal(bad);
    return DecodeError(bad);
  };
  EXPECT_THAT(resealed([](auto& b) { Put<uint32_t>(b, 12, 0); }), HasSubstr("0 sections"));
  EXPECT_THAT(resealed([](auto& b) { Put<uint32_t>(b, 12, 0xffffffff); }),
              HasSubstr("4294967295 sections"));
  EXPECT_THAT(resealed([](auto& b) { Put<uint32_t>(b, 12, 300); }),
              HasSubstr("section 0 starts at"));
  // Table entry 2 (first vCPU): type, reserved, offset, length.
  const size_t entry = kHeaderBytes + 2 * kTableEntryBytes;
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, entry, 9); }),
              HasSubstr("section 2: unknown type 9"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, entry + 4, 1); }),
              HasSubstr("non-zero reserved"));
  EXPECT_THAT(
      resealed([&](auto& b) { Put<uint64_t>(b, entry + 8, Get<uint64_t>(b, entry + 8) + 8); }),
      HasSubstr("section 2 starts at"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint64_t>(b, entry + 16, 1ull << 62); }),
              HasSubstr("runs past the end"));
  EXPECT_THAT(
      resealed([&](auto& b) { Put<uint64_t>(b, entry + 16, Get<uint64_t>(b, entry + 16) - 8); }),
      HasSubstr("vCPU section 0: truncated field header"));
  // The memory section relabelled as a second VM section; a vCPU relabelled as memory.
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, kHeaderBytes + kTableEntryBytes, 1); }),
              HasSubstr("more than one VM section"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, entry, 2); }),
              HasSubstr("more than one memory section"));
}

TEST(SnapshotFormatTest, RefusesBadFields) {
  std::vector<uint8_t> bytes = Encoded();
  const size_t vm = SectionOffset(bytes, 0);
  const size_t vcpu = SectionOffset(bytes, 2);
  auto resealed = [&](auto mutate) {
    std::vector<uint8_t> bad = bytes;
    mutate(bad);
    Reseal(bad);
    return DecodeError(bad);
  };
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, vm, 77); }),
              HasSubstr("VM section: unknown field tag 77"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, vm, 2); }),
              HasSubstr("VM section: field 2 appears twice"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, vm + 4, 0x7fffffff); }),
              HasSubstr("claims 2147483647 bytes"));
  // vCPU section: the index field comes first (tag, length, u32).
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, vcpu + 8, 7); }),
              HasSubstr("vCPU 7: index out of range or repeated"));
  EXPECT_THAT(resealed([&](auto& b) { Put<uint32_t>(b, vcpu + 8, 0); }),
              HasSubstr("index out of range or repeated"));
  // The index field's length and payload as a 2-byte field leaves the reader misaligned.
  EXPECT_NE(resealed([&](auto& b) { Put<uint32_t>(b, vcpu + 4, 2); }), "(decoded fine)");
}

// Re-encodes a snapshot the encoder would refuse, by patching a valid file.
std::vector<uint8_t> WithRegions(std::vector<MemoryRegionLayout> regions) {
  std::vector<uint8_t> bytes = Encoded();
  const size_t memory = SectionOffset(bytes, 1) + 8;  // past the field header
  for (size_t i = 0; i < regions.size() && i < 2; ++i) {
    Put<uint64_t>(bytes, memory + i * 24, regions[i].guest_addr);
    Put<uint64_t>(bytes, memory + i * 24 + 8, regions[i].size);
    Put<uint64_t>(bytes, memory + i * 24 + 16, regions[i].file_offset);
  }
  Reseal(bytes);
  return bytes;
}

TEST(SnapshotFormatTest, RefusesBadMemoryLayouts) {
  EXPECT_THAT(DecodeError(WithRegions({{0, 0x10000, 0}, {0x8000, 0x10000, 0x10000}})),
              HasSubstr("overlaps memory region 0 in guest physical memory"));
  EXPECT_THAT(DecodeError(WithRegions({{0, 0x10000, 0}, {0x100000, 0x10000, 0x8000}})),
              HasSubstr("overlaps memory region 0 in the memory file"));
  EXPECT_THAT(DecodeError(WithRegions({{0, 0, 0}})), HasSubstr("empty or not page aligned"));
  EXPECT_THAT(DecodeError(WithRegions({{0x1001, 0x1000, 0}})),
              HasSubstr("empty or not page aligned"));
  EXPECT_THAT(DecodeError(WithRegions({{0, 0x1000, 0}, {~0xfffull, 0x2000, 0x1000}})),
              HasSubstr("wraps"));
}

TEST(SnapshotFormatTest, EncoderRefusesWhatTheReaderWould) {
  Snapshot s = Sample();
  s.memory.assign(kMaxMemoryRegions + 1, {0, 0x1000, 0});
  EXPECT_FALSE(EncodeSnapshot(s));
  s = Sample();
  s.vcpus.clear();
  EXPECT_THAT(EncodeError(s), HasSubstr("0 vCPUs"));
  s = Sample();
  s.vcpus[0].index = 5;
  EXPECT_THAT(EncodeError(s), HasSubstr("vCPU 5"));
  s = Sample();
  s.devices.push_back({"rootfs", {}});
  EXPECT_THAT(EncodeError(s), HasSubstr("'rootfs' appears twice"));
  s = Sample();
  s.devices.push_back({"bad/id", {}});
  EXPECT_THAT(EncodeError(s), HasSubstr("not [A-Za-z0-9_.-]"));
  s = Sample();
  s.vm.ioapic.chip_id = 0;
  EXPECT_THAT(EncodeError(s), HasSubstr("irqchip ids"));
  s = Sample();
  s.vcpus[1].xcrs.nr_xcrs = 1000;  // vCPU 0, the one with XCRs
  EXPECT_THAT(EncodeError(s), HasSubstr("1000 XCRs"));
  s = Sample();
  s.vcpus[0].cpuid.clear();
  EXPECT_THAT(EncodeError(s), HasSubstr("0 CPUID entries"));
}

TEST(SnapshotFormatTest, MemoryFileMustHoldEveryRegion) {
  std::vector<MemoryRegionLayout> memory = {{0, 0x2000, 0}, {0x100000, 0x1000, 0x2000}};
  EXPECT_TRUE(CheckMemoryFileSize(memory, 0x3000));
  auto short_file = CheckMemoryFileSize(memory, 0x2fff);
  ASSERT_FALSE(short_file);
  EXPECT_THAT(short_file.error().message, HasSubstr("memory region 1 needs [0x2000, 0x3000)"));
  EXPECT_FALSE(CheckMemoryFileSize({{0, 0x1000, ~0ull - 0xfff}}, 0x1000));
}

// Random damage, with and without a fixed-up CRC: the reader never crashes, and whatever it
// accepts is a snapshot the writer could have produced.
TEST(SnapshotFormatTest, RandomCorruptionIsRefusedOrValid) {
  const std::vector<uint8_t> bytes = Encoded();
  std::mt19937_64 random(20261127);
  size_t accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> bad = bytes;
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (random() % 4) {
        case 0:
          bad[random() % bad.size()] ^= static_cast<uint8_t>(1 + random() % 255);
          break;
        case 1:  // a small integer where counts and lengths live
          Put<uint32_t>(bad, (random() % (bad.size() / 4)) * 4,
                        static_cast<uint32_t>(random() % 70000));
          break;
        case 2:
          bad.resize(random() % bad.size());
          if (bad.size() < 8) bad.resize(8);
          break;
        default:
          bad.insert(bad.begin() + static_cast<ptrdiff_t>(random() % bad.size()),
                     static_cast<uint8_t>(random()));
          break;
      }
    }
    if (bad == bytes) continue;  // an edit that rewrote the same value
    const bool resealed = round % 2 == 0;
    if (resealed) Reseal(bad);
    auto decoded = DecodeSnapshot(bad);
    if (decoded) {
      ++accepted;
      EXPECT_TRUE(resealed) << "a damaged file passed the CRC in round " << round;
      EXPECT_TRUE(ValidateSnapshot(*decoded));
      EXPECT_TRUE(EncodeSnapshot(*decoded));
    } else {
      EXPECT_FALSE(decoded.error().message.empty());
    }
  }
  EXPECT_LT(accepted, 3000u);
}

}  // namespace
}  // namespace tartarus::vmm::snapshot

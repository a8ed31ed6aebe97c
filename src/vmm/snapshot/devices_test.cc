// Persephone (tartarus-vmm snapshots): the device state blobs. Round trips, each refusal by
// name, every truncation, and random damage (never a crash; what is accepted re-encodes to
// the same bytes). Also built under ASan/UBSan.
#include "vmm/snapshot/devices.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <tuple>

namespace tartarus::vmm::snapshot {
namespace {

using ::testing::HasSubstr;

UartState SampleUart() {
  return UartState{.ier = 0x03,
                   .lcr = 0x1b,
                   .mcr = 0x0b,
                   .msr = 0xb0,
                   .scr = 0x5a,
                   .fcr = 0xc7,
                   .dll = 0x01,
                   .dlm = 0x00,
                   .thr_empty_pending = true,
                   .input = {'h', 'i'}};
}

virtio::VirtqueueState ReadyQueue(uint64_t base) {
  return {.size = 8,
          .ready = true,
          .desc_addr = base,
          .avail_addr = base + 0x1000,
          .used_addr = base + 0x2000,
          .next_avail = 3,
          .next_used = 3};
}

VirtioDeviceSnapshot SampleBlock() {
  VirtioDeviceSnapshot device;
  device.slot = 0;
  device.device_id = virtio::kDeviceIdBlock;
  device.transport = {.status = 0xf,
                      .device_features_sel = 1,
                      .driver_features_sel = 0,
                      .driver_features = uint64_t{1} << 32,
                      .queue_sel = 0,
                      .interrupt_status = 1,
                      .config_generation = 2,
                      .queues = {ReadyQueue(0x200000)}};
  device.drive_id = "rootfs";
  device.drive_path = "/var/lib/images/root.ext4";
  device.is_root = true;
  device.lethe = true;
  device.disk_bytes = 5 * 4096 + 100;  // 6 blocks, one bitmap word
  device.lethe_state = {.block_size = 4096, .written = {0b100101}};
  return device;
}

VirtioDeviceSnapshot SampleVsock() {
  VirtioDeviceSnapshot device;
  device.slot = 2;
  device.device_id = virtio::kDeviceIdVsock;
  device.transport.queues = {ReadyQueue(0x300000), ReadyQueue(0x310000), {}};
  device.guest_cid = 3;
  device.uds_path = "/run/vm/v.sock";
  return device;
}

void ExpectSame(const VirtioDeviceSnapshot& a, const VirtioDeviceSnapshot& b) {
  EXPECT_EQ(a.slot, b.slot);
  EXPECT_EQ(a.device_id, b.device_id);
  EXPECT_EQ(a.transport.status, b.transport.status);
  EXPECT_EQ(a.transport.device_features_sel, b.transport.device_features_sel);
  EXPECT_EQ(a.transport.driver_features, b.transport.driver_features);
  EXPECT_EQ(a.transport.interrupt_status, b.transport.interrupt_status);
  EXPECT_EQ(a.transport.config_generation, b.transport.config_generation);
  ASSERT_EQ(a.transport.queues.size(), b.transport.queues.size());
  for (size_t i = 0; i < a.transport.queues.size(); ++i) {
    const auto& x = a.transport.queues[i];
    const auto& y = b.transport.queues[i];
    EXPECT_EQ(std::tie(x.size, x.ready, x.desc_addr, x.avail_addr, x.used_addr, x.next_avail,
                       x.next_used),
              std::tie(y.size, y.ready, y.desc_addr, y.avail_addr, y.used_addr, y.next_avail,
                       y.next_used));
  }
  EXPECT_EQ(a.drive_id, b.drive_id);
  EXPECT_EQ(a.drive_path, b.drive_path);
  EXPECT_EQ(std::tie(a.read_only, a.is_root, a.lethe, a.disk_bytes),
            std::tie(b.read_only, b.is_root, b.lethe, b.disk_bytes));
  EXPECT_EQ(a.lethe_state.block_size, b.lethe_state.block_size);
  EXPECT_EQ(a.lethe_state.written, b.lethe_state.written);
  EXPECT_EQ(a.guest_cid, b.guest_cid);
  EXPECT_EQ(a.uds_path, b.uds_path);
}

TEST(DeviceBlobTest, SerialRoundTrips) {
  std::vector<uint8_t> blob = EncodeSerialBlob(SampleUart());
  auto decoded = DecodeSerialBlob(blob);
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->ier, 0x03);
  EXPECT_EQ(decoded->lcr, 0x1b);
  EXPECT_EQ(decoded->scr, 0x5a);
  EXPECT_EQ(decoded->fcr, 0xc7);
  EXPECT_TRUE(decoded->thr_empty_pending);
  EXPECT_EQ(decoded->input, (std::vector<uint8_t>{'h', 'i'}));
  EXPECT_EQ(EncodeSerialBlob(*decoded), blob);
}

TEST(DeviceBlobTest, VirtioRoundTripsForEachKind) {
  VirtioDeviceSnapshot rng;
  rng.slot = 1;
  rng.device_id = virtio::kDeviceIdRng;
  rng.transport.queues = {ReadyQueue(0x400000)};
  for (const VirtioDeviceSnapshot& device : {SampleBlock(), SampleVsock(), rng}) {
    auto blob = EncodeVirtioBlob(device);
    ASSERT_TRUE(blob) << blob.error().message;
    auto decoded = DecodeVirtioBlob(*blob);
    ASSERT_TRUE(decoded) << decoded.error().message;
    ExpectSame(device, *decoded);
    EXPECT_EQ(*EncodeVirtioBlob(*decoded), *blob);
  }
  EXPECT_EQ(*VirtioDeviceKey(SampleBlock()), "blk.rootfs");
  EXPECT_EQ(*VirtioDeviceKey(rng), "rng");
  EXPECT_EQ(*VirtioDeviceKey(SampleVsock()), "vsock");
}

void ExpectSerialRefused(std::vector<uint8_t> blob, const std::string& why) {
  auto decoded = DecodeSerialBlob(blob);
  ASSERT_FALSE(decoded) << why;
  EXPECT_EQ(decoded.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(decoded.error().message, HasSubstr(why));
}

TEST(DeviceBlobTest, SerialRefusalsNameTheProblem) {
  const std::vector<uint8_t> good = EncodeSerialBlob(SampleUart());
  std::vector<uint8_t> blob = good;
  blob[0] = kBlobKindVirtio;
  ExpectSerialRefused(blob, "blob kind 2, expected 1");
  blob = good;
  blob[4] = 2;
  ExpectSerialRefused(blob, "blob version 2");
  blob = good;
  blob[16] = 2;  // THR-empty pending
  ExpectSerialRefused(blob, "THR-empty pending is not 0 or 1");
  blob = good;
  blob.push_back(0);
  ExpectSerialRefused(blob, "1 trailing bytes");
  blob = good;
  const uint32_t huge = Uart8250::kInputCapacity + 1;
  std::memcpy(blob.data() + 17, &huge, 4);
  ExpectSerialRefused(blob, "input holds 4097 bytes, at most 4096");
  ExpectSerialRefused({}, "device serial: truncated at kind");
  for (size_t length = 0; length < good.size(); ++length) {
    ExpectSerialRefused({good.begin(), good.begin() + static_cast<ptrdiff_t>(length)},
                        "truncated at");
  }
}

void ExpectVirtioRefused(const VirtioDeviceSnapshot& device, const std::string& why) {
  auto encoded = EncodeVirtioBlob(device);
  ASSERT_FALSE(encoded) << why;  // the writer refuses what the reader would
  EXPECT_THAT(encoded.error().message, HasSubstr(why));
}

TEST(DeviceBlobTest, VirtioRefusalsNameTheProblem) {
  VirtioDeviceSnapshot device = SampleBlock();
  device.slot = 19;
  ExpectVirtioRefused(device, "slot 19 is past the last (18)");
  device = SampleBlock();
  device.transport.queues.push_back({});
  ExpectVirtioRefused(device, "2 queues, the device has 1");
  device = SampleBlock();
  device.transport.queues[0].size = 512;
  ExpectVirtioRefused(device, "queue 0 size 512 is above 256");
  device = SampleBlock();
  device.drive_id = "root fs";
  ExpectVirtioRefused(device, "cannot key a snapshot blob");
  device = SampleBlock();
  device.drive_path.clear();
  ExpectVirtioRefused(device, "drive path is empty");
  device = SampleBlock();
  device.lethe_state.written.push_back(0);
  ExpectVirtioRefused(device, "Lethe bitmap of 2 words does not fit a disk of 20580 bytes");
  device = SampleBlock();
  device.lethe_state.block_size = 512;
  ExpectVirtioRefused(device, "Lethe block size 512");
  device = SampleBlock();
  device.read_only = true;
  ExpectVirtioRefused(device, "a Lethe drive cannot be read-only");
  device = SampleBlock();
  device.lethe = false;
  ExpectVirtioRefused(device, "a Lethe bitmap for a drive that is not Lethe");
  device = SampleBlock();
  device.disk_bytes = kMaxDiskBytes + 1;
  ExpectVirtioRefused(device, "is above the limit");
  device = SampleVsock();
  device.guest_cid = 2;
  ExpectVirtioRefused(device, "guest CID 2 is reserved");
  device = SampleVsock();
  device.uds_path = std::string(108, 'u');
  ExpectVirtioRefused(device, "longer than 107 bytes");
  device = SampleVsock();
  device.device_id = 7;
  ExpectVirtioRefused(device, "unknown virtio device ID 7");

  // The reader, on bytes no writer produces.
  const std::vector<uint8_t> good = *EncodeVirtioBlob(SampleBlock());
  std::vector<uint8_t> blob = good;
  const uint32_t unknown = 99;
  std::memcpy(blob.data() + 12, &unknown, 4);  // device ID
  auto decoded = DecodeVirtioBlob(blob);
  ASSERT_FALSE(decoded);
  EXPECT_THAT(decoded.error().message, HasSubstr("unknown virtio device ID 99"));
  blob = good;
  const uint32_t queues = 3;
  std::memcpy(blob.data() + 48, &queues, 4);  // queue count
  decoded = DecodeVirtioBlob(blob);
  ASSERT_FALSE(decoded);
  EXPECT_THAT(decoded.error().message, HasSubstr("3 queues, the device has 1"));
  blob = good;
  blob.push_back(0);
  decoded = DecodeVirtioBlob(blob);
  ASSERT_FALSE(decoded);
  EXPECT_THAT(decoded.error().message, HasSubstr("trailing bytes"));
  for (size_t length = 0; length < good.size(); ++length) {
    decoded = DecodeVirtioBlob({good.data(), length});
    ASSERT_FALSE(decoded) << length;
    EXPECT_THAT(decoded.error().message, HasSubstr("truncated at")) << length;
  }
}

TEST(DeviceBlobTest, RandomDamageNeverCrashesAndWhatIsAcceptedReencodes) {
  std::mt19937 random(7);
  const std::vector<std::vector<uint8_t>> seeds = {*EncodeVirtioBlob(SampleBlock()),
                                                   *EncodeVirtioBlob(SampleVsock()),
                                                   EncodeSerialBlob(SampleUart())};
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> blob = seeds[round % seeds.size()];
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int e = 0; e < edits && !blob.empty(); ++e) {
      const size_t at = random() % blob.size();
      switch (random() % 3) {
        case 0:
          blob[at] = static_cast<uint8_t>(random());
          break;
        case 1:
          blob.resize(at);
          break;
        default:
          blob.insert(blob.begin() + static_cast<ptrdiff_t>(at), static_cast<uint8_t>(random()));
          break;
      }
    }
    if (auto device = DecodeVirtioBlob(blob)) {
      ++accepted;
      auto again = EncodeVirtioBlob(*device);
      ASSERT_TRUE(again) << again.error().message;
      EXPECT_EQ(*again, blob);
    }
    if (auto uart = DecodeSerialBlob(blob)) {
      ++accepted;
      EXPECT_EQ(EncodeSerialBlob(*uart), blob);
    }
  }
  EXPECT_GT(accepted, 0);  // some edits (register values, addresses) are legitimate
}

}  // namespace
}  // namespace tartarus::vmm::snapshot

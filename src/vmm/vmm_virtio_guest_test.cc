// tartarus-vmm (Tartarus's KVM microVM monitor): virtio devices wired into Vmm, driven on
// /dev/kvm by the freestanding "virtio" and "vsock" guests (guests/virtio.s, guests/vsock.s)
// through real MMIO exits and the device's interrupt line; also the drive-list checks of
// Vmm::Create.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "vmm/kvm.h"
#include "vmm/vmm.h"
#include "vmm/vsock_peer_testing.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

#define SKIP_WITHOUT_KVM()                                                     \
  do {                                                                         \
    if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available"; \
  } while (0)

const std::string kGuest = std::string(TARTARUS_VMM_GUEST_DIR) + "/virtio.elf";
constexpr char kMarker[] = "TARTARUS";

// A directory with a 64 KiB disk image whose sector 0 starts "SECTOR0!".
class TempImage {
 public:
  TempImage() {
    char dir[] = "/tmp/vmm-virtio-XXXXXX";
    dir_ = ::mkdtemp(dir) ? dir : "/tmp";
    path_ = dir_ + "/disk.img";
    std::string bytes(64 * 1024, '\0');
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + 1);
    bytes.replace(0, 8, "SECTOR0!");
    std::ofstream(path_, std::ios::binary) << bytes;
  }
  ~TempImage() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string Contents() const {
    std::ifstream file(path_, std::ios::binary);
    std::stringstream out;
    out << file.rdbuf();
    return out.str();
  }
  const std::string& path() const { return path_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string path_;
};

struct GuestRun {
  Result<RunReport> report;
  std::string serial;
};

GuestRun RunGuest(VmmConfig config, const std::string& guest = kGuest) {
  auto serial = std::make_shared<std::string>();
  config.kernel_path = guest;
  config.memory_mib = 32;
  config.serial_sink = [serial](uint8_t byte) { serial->push_back(static_cast<char>(byte)); };
  config.timeout = std::chrono::seconds(60);
  auto vmm = Vmm::Create(config);
  if (!vmm) return {Fail(vmm.error()), ""};
  auto report = (*vmm)->Run();
  return {std::move(report), *serial};
}

// Sector 0's first 8 bytes as the guest prints them (a little-endian qword).
std::string Qword(const std::string& bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[i]);
  char text[20];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

TEST(VirtioGuestTest, DriverReadsWritesAndGetsTheInterruptFromAFileDrive) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  const std::string before = image.Contents();
  VmmConfig config;
  config.drives = {{.id = "rootfs", .path = image.path(), .is_root = true}};
  GuestRun run = RunGuest(config);
  ASSERT_TRUE(run.report) << run.report.error().message << "\n" << run.serial;
  EXPECT_EQ(run.report->reason, StopReason::kHalted) << run.serial;
  EXPECT_EQ(run.report->unhandled_mmio, 1u);  // the guest's probe of the empty slot 1
  const std::string sector0 = Qword(before);
  const std::string marker = Qword(kMarker);
  EXPECT_EQ(run.serial,
            "blk: found, capacity=0000000000000080\n"
            "blk: read sector 0 status=00 len=0000000000000201 data=" +
                sector0 +
                "\n"
                "blk: write sector 1 status=00 len=0000000000000001 data=" +
                marker +
                "\n"
                "blk: interrupt isr=01\n"
                "blk: read sector 1 status=00 len=0000000000000201 data=" +
                marker +
                "\n"
                "virtio guest done\n");
  // Sector 1 on the host now holds what the guest wrote: the marker, then sector 0's rest.
  const std::string after = image.Contents();
  ASSERT_EQ(after.size(), before.size());
  EXPECT_EQ(after.substr(512, 8), kMarker);
  EXPECT_EQ(after.substr(520, 504), before.substr(8, 504));
  EXPECT_EQ(after.substr(0, 512), before.substr(0, 512));
  EXPECT_EQ(after.substr(1024), before.substr(1024));
}

TEST(VirtioGuestTest, LetheDriveLeavesTheBaseImageUnchanged) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  const std::string before = image.Contents();
  struct stat base_stat {};
  ASSERT_EQ(::stat(image.path().c_str(), &base_stat), 0);
  VmmConfig config;
  config.drives = {{.id = "rootfs", .path = image.path(), .is_root = true, .lethe = true}};
  config.lethe_dir = image.dir();
  GuestRun run = RunGuest(config);
  ASSERT_TRUE(run.report) << run.report.error().message;
  // The guest reads its own write back through the overlay...
  EXPECT_THAT(
      run.serial,
      HasSubstr("blk: read sector 1 status=00 len=0000000000000201 data=" + Qword(kMarker) + "\n"));
  // ...while the base image keeps every byte and its mtime, and no overlay file is left.
  EXPECT_EQ(image.Contents(), before);
  struct stat after_stat {};
  ASSERT_EQ(::stat(image.path().c_str(), &after_stat), 0);
  EXPECT_EQ(after_stat.st_mtim.tv_sec, base_stat.st_mtim.tv_sec);
  EXPECT_EQ(after_stat.st_mtim.tv_nsec, base_stat.st_mtim.tv_nsec);
}

TEST(VirtioGuestTest, ReadOnlyDriveRefusesTheWriteInItsStatusByte) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  const std::string before = image.Contents();
  VmmConfig config;
  config.drives = {{.id = "data", .path = image.path(), .read_only = true}};
  GuestRun run = RunGuest(config);
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_THAT(run.serial, HasSubstr("blk: write sector 1 status=01"));  // VIRTIO_BLK_S_IOERR
  EXPECT_EQ(image.Contents(), before);
}

TEST(VirtioGuestTest, GuestReadsEntropyFromTheRngInSlotOne) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  VmmConfig config;
  config.drives = {{.id = "rootfs", .path = image.path()}};
  config.entropy = true;
  GuestRun run = RunGuest(config);
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_THAT(run.serial, HasSubstr("rng: len=10 data="));
  EXPECT_THAT(run.serial, Not(HasSubstr("rng: len=10 data=00000000000000000000000000000000")));
  EXPECT_THAT(run.serial, HasSubstr("virtio guest done\n"));
}

TEST(VirtioGuestTest, DevicesGetConsecutiveSlotsRootDriveFirst) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  VmmConfig config;
  config.kernel_path = kGuest;
  config.memory_mib = 32;
  config.serial_fd = -1;
  config.drives = {{.id = "data", .path = image.path(), .read_only = true},
                   {.id = "rootfs", .path = image.path(), .is_root = true, .lethe = true}};
  config.lethe_dir = image.dir();
  config.entropy = true;
  auto vmm = Vmm::Create(config);
  ASSERT_TRUE(vmm) << vmm.error().message;
  const auto& devices = (*vmm)->devices();
  ASSERT_EQ(devices.size(), 3u);
  EXPECT_EQ(devices[0].name, "virtio-blk rootfs");
  EXPECT_EQ(devices[1].name, "virtio-blk data");
  EXPECT_EQ(devices[2].name, "virtio-rng");
  for (size_t i = 0; i < devices.size(); ++i) {
    EXPECT_EQ(devices[i].slot.base, 0xd0001000u + 0x1000u * i);
    EXPECT_EQ(devices[i].slot.irq, 5u + i);
  }
}

TEST(VirtioGuestTest, BadDriveListsAreRefusedNamingTheDrive) {
  EXPECT_THAT(ValidateDrives({{.id = "", .path = "x"}}).error().message, HasSubstr("empty"));
  EXPECT_THAT(ValidateDrives({{.id = "a", .path = "x"}, {.id = "a", .path = "y"}}).error().message,
              HasSubstr("drive a: duplicate"));
  EXPECT_THAT(ValidateDrives({{.id = "a", .path = ""}}).error().message, HasSubstr("empty path"));
  EXPECT_THAT(ValidateDrives({{.id = "a", .path = "x", .is_root = true},
                              {.id = "b", .path = "y", .is_root = true}})
                  .error()
                  .message,
              HasSubstr("drive b: only one drive can be the root"));
  EXPECT_THAT(
      ValidateDrives({{.id = "a", .path = "x", .read_only = true, .lethe = true}}).error().message,
      HasSubstr("Lethe"));
  EXPECT_TRUE(ValidateDrives({{.id = "a", .path = "x"}}));
}

TEST(VirtioGuestTest, MissingDriveFileIsRefusedNamingTheDrive) {
  SKIP_WITHOUT_KVM();
  VmmConfig config;
  config.kernel_path = kGuest;
  config.drives = {{.id = "rootfs", .path = "/nonexistent/disk.img"}};
  auto vmm = Vmm::Create(config);
  ASSERT_FALSE(vmm);
  EXPECT_THAT(vmm.error().message, HasSubstr("drive rootfs"));
}

// The guest opens a stream to host port 52 as Linux's virtio-vsock driver would: the hybrid
// vsock connects it to "<uds>_52" (on the event thread), data goes both ways, and the guest's
// SHUTDOWN ends in an RST and a closed host socket.
TEST(VirtioGuestTest, GuestConnectsToAHostListenerOverVsock) {
  SKIP_WITHOUT_KVM();
  TempImage image;  // for its directory
  const std::string uds = image.dir() + "/v.sock";
  VsockGuestPeer peer(uds);
  VmmConfig config;
  config.vsock = VsockConfig{.guest_cid = 7, .uds_path = uds};
  GuestRun run = RunGuest(config, std::string(TARTARUS_VMM_GUEST_DIR) + "/vsock.elf");
  const VsockGuestPeer::Outcome host = peer.Finish();
  ::unlink((uds + "_52").c_str());
  ASSERT_TRUE(run.report) << run.report.error().message << "\n" << run.serial;
  EXPECT_THAT(run.serial, HasSubstr("vsock: found, guest_cid=0000000000000007\n"));
  EXPECT_THAT(run.serial, HasSubstr("vsock: rx op=02 len=0000000000000000\nvsock: connected\n"));
  EXPECT_THAT(run.serial, HasSubstr("vsock: host said pong\n"));
  EXPECT_THAT(run.serial, HasSubstr("vsock: rx op=03"));
  EXPECT_THAT(run.serial, HasSubstr("vsock guest done\n"));
  EXPECT_THAT(run.serial, Not(HasSubstr("FAIL")));
  EXPECT_EQ(host.error, "");
  EXPECT_EQ(host.received, "ping");
  EXPECT_TRUE(host.closed);
}

// Pause holds every transport's host-side notifications (so a snapshot sees still memory);
// Resume lets them go.
TEST(VirtioGuestTest, PauseHoldsHostNotificationsUntilResume) {
  SKIP_WITHOUT_KVM();
  TempImage image;
  VmmConfig config;
  config.kernel_path = std::string(TARTARUS_VMM_GUEST_DIR) + "/idle.elf";
  config.memory_mib = 32;
  config.serial_fd = -1;
  config.entropy = true;
  config.vsock = VsockConfig{.guest_cid = 3, .uds_path = image.dir() + "/v.sock"};
  config.timeout = std::chrono::seconds(30);
  auto vmm = Vmm::Create(config);
  ASSERT_TRUE(vmm) << vmm.error().message;
  Result<RunReport> report = Fail(ErrorCode::kInternal, "not run");
  std::thread runner([&] { report = (*vmm)->Run(); });
  ASSERT_TRUE((*vmm)->Pause());
  ASSERT_EQ((*vmm)->devices().size(), 2u);
  for (const auto& device : (*vmm)->devices()) {
    EXPECT_TRUE(device.transport->holding_host_notifications()) << device.name;
  }
  (*vmm)->Resume();
  for (const auto& device : (*vmm)->devices()) {
    EXPECT_FALSE(device.transport->holding_host_notifications()) << device.name;
  }
  (*vmm)->RequestStop();
  runner.join();
  EXPECT_TRUE(report) << report.error().message;
}

}  // namespace
}  // namespace tartarus::vmm

// Persephone (tartarus-vmm snapshots) end to end: real tartarus-vmm processes driven through
// the Firecracker API. One boots a guest, pauses it, snapshots it and is killed; new
// processes load the files and must continue exactly where it stopped. Every refusal of a
// corrupt or mismatched snapshot is checked against a live process too.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vmm/kvm.h"
#include "vmm/snapshot/devices.h"
#include "vmm/snapshot/vstate.h"
#include "vmm/vmm.h"
#include "vmm/vmm_process_test_util.h"

namespace tartarus::vmm::snapshot {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using vmm::test_util::Guest;
using vmm::test_util::ReadFile;
using vmm::test_util::VmmProcess;

const std::string kCounterGuest = TARTARUS_SNAPSHOT_GUEST;
const std::string kBlkGuest = TARTARUS_SNAPSHOT_BLK_GUEST;

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

constexpr std::string_view kNoContent = " 204 ";

// Waits until fn() is true (polling), up to timeout.
template <class Fn>
bool WaitFor(Fn&& fn, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fn()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return fn();
}

size_t CountLines(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// The complete lines of text (a partial last line is dropped).
std::vector<std::string> CompleteLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(text.substr(start, end - start));
  }
  return lines;
}

class SnapshotApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
    char dir[] = "/tmp/vmm-snapfiles-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    state_ = dir_ + "/vm.snap";
    memory_ = dir_ + "/vm.mem";
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string CreateBody(const std::string& type = "Full") const {
    return R"({"snapshot_type": ")" + type + R"(", "snapshot_path": ")" + state_ +
           R"(", "mem_file_path": ")" + memory_ + R"("})";
  }
  std::string LoadBody(const std::string& state, const std::string& memory, bool resume) const {
    return R"({"snapshot_path": ")" + state + R"(", "mem_backend": {"backend_type": "File",
        "backend_path": ")" +
           memory + R"("}, "resume_vm": )" + (resume ? "true" : "false") + "}";
  }
  // Boots guest through the API in vm, waits for ready(stdout), pauses and snapshots it.
  template <class Ready>
  void BootPauseSnapshot(VmmProcess& vm, const std::string& kernel, const std::string& devices,
                         Ready&& ready) {
    ASSERT_THAT(vm.Send("PUT", "/boot-source", R"({"kernel_image_path": ")" + kernel + "\"}"),
                HasSubstr(kNoContent));
    ASSERT_THAT(vm.Send("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 32})"),
                HasSubstr(kNoContent));
    if (!devices.empty()) {
      ASSERT_THAT(vm.Send("PUT", "/drives/rootfs", devices), HasSubstr(kNoContent));
    }
    ASSERT_THAT(vm.Send("PUT", "/actions", R"({"action_type": "InstanceStart"})"),
                HasSubstr(kNoContent));
    ASSERT_TRUE(WaitFor([&] { return ready(vm.Stdout()); })) << vm.Stdout() << vm.Stderr();
    ASSERT_THAT(vm.Send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr(kNoContent));
    // Pausing a paused VM is fine, as with Firecracker.
    ASSERT_THAT(vm.Send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr(kNoContent));
    ASSERT_THAT(vm.Send("PUT", "/snapshot/create", CreateBody()), HasSubstr(kNoContent))
        << vm.Stderr();
  }

  std::string dir_;
  std::string state_;
  std::string memory_;
};

TEST_F(SnapshotApiTest, CounterGuestContinuesExactlyInNewProcesses) {
  std::string before;
  {
    VmmProcess original({"--api-sock", "@SOCK"});
    BootPauseSnapshot(original, kCounterGuest, "",
                      [](const std::string& out) { return CountLines(out) >= 15; });
    ASSERT_FALSE(HasFailure());
    EXPECT_THAT(original.Send("GET", "/", ""), HasSubstr("\"state\":\"Paused\""));
    // Paused means no guest progress: the serial output stands still.
    before = original.Stdout();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ(original.Stdout(), before);
    original.Kill();  // the snapshot must stand on its own
  }
  ASSERT_TRUE(std::filesystem::exists(state_));
  const std::string memory_bytes = ReadFile(memory_);

  // Clone A resumes at once; clone B loads paused and is resumed by PATCH.
  VmmProcess clone_a({"--api-sock", "@SOCK"});
  EXPECT_THAT(clone_a.Send("GET", "/", ""), HasSubstr("\"state\":\"Not started\""));
  ASSERT_THAT(clone_a.Send("PUT", "/snapshot/load", LoadBody(state_, memory_, true)),
              HasSubstr(kNoContent))
      << clone_a.Stderr();
  EXPECT_THAT(clone_a.Send("GET", "/", ""), HasSubstr("\"state\":\"Running\""));
  EXPECT_THAT(clone_a.Send("GET", "/machine-config", ""), HasSubstr("\"mem_size_mib\":32"));
  EXPECT_THAT(clone_a.Send("PUT", "/snapshot/load", LoadBody(state_, memory_, true)),
              HasSubstr("not supported after starting the microVM"));

  VmmProcess clone_b({"--api-sock", "@SOCK"});
  ASSERT_THAT(clone_b.Send("PUT", "/snapshot/load",
                           R"({"snapshot_path": ")" + state_ + R"(", "mem_file_path": ")" +
                               memory_ + R"("})"),
              HasSubstr(kNoContent))
      << clone_b.Stderr();
  EXPECT_THAT(clone_b.Send("GET", "/", ""), HasSubstr("\"state\":\"Paused\""));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(clone_b.Stdout(), "");
  ASSERT_THAT(clone_b.Send("PATCH", "/vm", R"({"state": "Resumed"})"), HasSubstr(kNoContent));

  ASSERT_TRUE(WaitFor([&] { return CountLines(clone_a.Stdout()) >= 15; }))
      << clone_a.Stdout() << clone_a.Stderr();
  ASSERT_TRUE(WaitFor([&] { return CountLines(clone_b.Stdout()) >= 15; }))
      << clone_b.Stdout() << clone_b.Stderr();
  clone_a.Kill();
  clone_b.Kill();
  const std::vector<std::string> a = CompleteLines(before + clone_a.Stdout());
  const std::vector<std::string> b = CompleteLines(before + clone_b.Stdout());

  // The reference: the same guest booted fresh, never snapshotted.
  VmmProcess reference({"--kernel", kCounterGuest, "--mem-mib", "32"});
  const size_t wanted = std::max(a.size(), b.size());
  ASSERT_TRUE(WaitFor([&] { return CountLines(reference.Stdout()) >= wanted; }));
  reference.Kill();
  const std::vector<std::string> expected = CompleteLines(reference.Stdout());
  ASSERT_GE(a.size(), CountLines(before) + 10);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], expected[i]) << "line " << i;
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], expected[i]) << "line " << i;
  // Clones map the memory file MAP_PRIVATE: it is unchanged.
  EXPECT_EQ(ReadFile(memory_), memory_bytes);
}

TEST_F(SnapshotApiTest, CreateIsRefusedUnlessPausedFullAndToOtherFiles) {
  VmmProcess vm({"--api-sock", "@SOCK"});
  ASSERT_THAT(vm.Send("PUT", "/boot-source", R"({"kernel_image_path": ")" + Guest("idle") + "\"}"),
              HasSubstr(kNoContent));
  ASSERT_THAT(vm.Send("PUT", "/machine-config",
                      R"({"vcpu_count": 1, "mem_size_mib": 32, "track_dirty_pages": true})"),
              HasSubstr(kNoContent));
  ASSERT_THAT(vm.Send("PUT", "/actions", R"({"action_type": "InstanceStart"})"),
              HasSubstr(kNoContent));
  EXPECT_THAT(vm.Send("PUT", "/snapshot/create", CreateBody()), HasSubstr("must be paused first"));
  ASSERT_THAT(vm.Send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr(kNoContent));
  EXPECT_THAT(vm.Send("PUT", "/snapshot/create", CreateBody("Diff")),
              HasSubstr("Diff snapshots are not supported"));
  EXPECT_THAT(
      vm.Send("PUT", "/snapshot/create",
              R"({"snapshot_path": ")" + state_ + R"(", "mem_file_path": ")" + state_ + R"("})"),
      HasSubstr("are the same path"));
  EXPECT_FALSE(std::filesystem::exists(state_));
  // The VM survives the refusals and snapshots fine afterwards, then runs on.
  EXPECT_THAT(vm.Send("PUT", "/snapshot/create", CreateBody()), HasSubstr(kNoContent));
  EXPECT_THAT(vm.Send("PATCH", "/vm", R"({"state": "Resumed"})"), HasSubstr(kNoContent));
  EXPECT_THAT(vm.Send("GET", "/", ""), HasSubstr("\"state\":\"Running\""));
  EXPECT_TRUE(vm.Running());
}

// A snapshot of the idle guest with a Lethe drive and virtio-rng, damaged one way at a time:
// each load is refused with a 400 naming the problem, and the process stays loadable.
TEST_F(SnapshotApiTest, CorruptOrMismatchedSnapshotsAreRefused) {
  const std::string disk = dir_ + "/disk.img";
  WriteFile(disk, std::string(64 * 1024, 'd'));
  {
    VmmProcess original({"--api-sock", "@SOCK"});
    ASSERT_THAT(original.Send("PUT", "/entropy", "{}"), HasSubstr(kNoContent));
    BootPauseSnapshot(
        original, Guest("idle"),
        R"({"drive_id": "rootfs", "path_on_host": ")" + disk +
            R"(", "is_root_device": true, "lethe": true})",
        [](const std::string& out) { return out.find("idle guest running") != std::string::npos; });
    ASSERT_FALSE(HasFailure());
  }
  const std::string overlay = Vmm::LetheOverlayPath(state_, "blk.rootfs");
  ASSERT_TRUE(std::filesystem::exists(overlay));
  auto good = ReadStateFile(state_);
  ASSERT_TRUE(good) << good.error().message;
  ASSERT_EQ(good->devices.size(), 3u);  // serial, blk.rootfs, rng
  const std::string state_bytes = ReadFile(state_);
  const std::string memory_bytes = ReadFile(memory_);

  VmmProcess vm({"--api-sock", "@SOCK"});
  const std::string bad_state = dir_ + "/bad.snap";
  const std::string bad_memory = dir_ + "/bad.mem";
  auto expect_refused = [&](const std::string& state, const std::string& memory,
                            const std::string& why) {
    std::string response = vm.Send("PUT", "/snapshot/load", LoadBody(state, memory, true));
    EXPECT_THAT(response, HasSubstr(" 400 ")) << why;
    EXPECT_THAT(response, HasSubstr(why));
  };
  // Writes the good snapshot with its devices changed by edit into bad_state.
  auto with_devices = [&](auto&& edit) {
    Snapshot changed = *good;
    edit(changed.devices);
    auto written = WriteStateFile(bad_state, changed);
    ASSERT_TRUE(written) << written.error().message;
  };

  expect_refused(dir_ + "/missing.snap", memory_, "missing.snap");
  WriteFile(bad_state, state_bytes.substr(0, state_bytes.size() / 2));
  expect_refused(bad_state, memory_, "bad.snap");
  std::string flipped = state_bytes;
  flipped[flipped.size() / 2] ^= 0x40;
  WriteFile(bad_state, flipped);
  expect_refused(bad_state, memory_, "CRC");
  expect_refused(state_, dir_ + "/missing.mem", "missing.mem");
  WriteFile(bad_memory, memory_bytes.substr(0, memory_bytes.size() / 2));
  expect_refused(state_, bad_memory, "memory file");

  with_devices([](std::vector<DeviceState>& devices) { devices.erase(devices.begin()); });
  expect_refused(bad_state, memory_, "no `serial` device blob");
  with_devices([](std::vector<DeviceState>& devices) { devices[0].blob.resize(5); });
  expect_refused(bad_state, memory_, "device serial: truncated at version");
  with_devices([](std::vector<DeviceState>& devices) { devices[0].blob.push_back(0); });
  expect_refused(bad_state, memory_, "trailing bytes");
  with_devices([](std::vector<DeviceState>& devices) {
    for (DeviceState& device : devices) {
      if (device.id == "rng") device.id = "vsock";
    }
  });
  expect_refused(bad_state, memory_, "its blob describes device rng");
  with_devices([](std::vector<DeviceState>& devices) {
    for (DeviceState& device : devices) {
      if (device.id == "blk.rootfs") device.blob[4] = 9;  // the blob version
    }
  });
  expect_refused(bad_state, memory_, "blob version 9");
  with_devices([](std::vector<DeviceState>& devices) {
    for (DeviceState& device : devices) {
      if (device.id == "rng") device.blob.resize(device.blob.size() - 3);
    }
  });
  expect_refused(bad_state, memory_, "device rng: virtio device blob: truncated");

  // The drive's image changed size since the snapshot, then its saved overlay went missing.
  WriteFile(disk, std::string(32 * 1024, 'd'));
  expect_refused(state_, memory_, "was 65536 bytes when the snapshot was taken");
  WriteFile(disk, std::string(64 * 1024, 'd'));
  std::filesystem::rename(overlay, overlay + ".away");
  expect_refused(state_, memory_, "saved Lethe overlay");
  std::filesystem::rename(overlay + ".away", overlay);

  EXPECT_THAT(vm.Send("GET", "/", ""), HasSubstr("\"state\":\"Not started\""));
  // After every refusal the same process still loads the good snapshot.
  EXPECT_THAT(vm.Send("PUT", "/snapshot/load", LoadBody(state_, memory_, true)),
              HasSubstr(kNoContent))
      << vm.Stderr();
  EXPECT_THAT(vm.Send("GET", "/", ""), HasSubstr("\"state\":\"Running\""));
  // A snapshot may not overwrite the memory file the VM runs from.
  ASSERT_THAT(vm.Send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr(kNoContent));
  EXPECT_THAT(vm.Send("PUT", "/snapshot/create",
                      R"({"snapshot_path": ")" + dir_ + R"(/again.snap", "mem_file_path": ")" +
                          memory_ + R"("})"),
              HasSubstr("is the file this VM's memory was restored from"));
  EXPECT_EQ(ReadFile(memory_), memory_bytes);
}

// The blk guest writes a sector through virtio-blk to a Lethe drive, is snapshotted while it
// waits, and a new process (with the base image unchanged) reads the sector back: the data
// can only come from the saved overlay.
TEST_F(SnapshotApiTest, LetheDriveWritesSurviveTheSnapshot) {
  const std::string disk = dir_ + "/disk.img";
  WriteFile(disk, std::string(64 * 1024, 'b'));
  std::string before;
  {
    VmmProcess original({"--api-sock", "@SOCK"});
    BootPauseSnapshot(
        original, kBlkGuest,
        R"({"drive_id": "rootfs", "path_on_host": ")" + disk +
            R"(", "is_root_device": true, "lethe": true})",
        [](const std::string& out) { return out.find("written, waiting") != std::string::npos; });
    ASSERT_FALSE(HasFailure());
    before = original.Stdout();
    EXPECT_THAT(before, Not(HasSubstr("read back")));
  }
  EXPECT_EQ(ReadFile(disk), std::string(64 * 1024, 'b'));  // Lethe: the base is untouched

  VmmProcess clone({"--api-sock", "@SOCK"});
  ASSERT_THAT(clone.Send("PUT", "/snapshot/load", LoadBody(state_, memory_, true)),
              HasSubstr(kNoContent))
      << clone.Stderr();
  ASSERT_TRUE(WaitFor([&] { return !clone.Running(); }, std::chrono::seconds(60)))
      << clone.Stdout();
  EXPECT_THAT(clone.Stdout(), HasSubstr("read back PERSEPHONE\n"));
  EXPECT_THAT(clone.Stderr(), HasSubstr("guest stopped: halted"));
  EXPECT_EQ(ReadFile(disk), std::string(64 * 1024, 'b'));
}

}  // namespace
}  // namespace tartarus::vmm::snapshot

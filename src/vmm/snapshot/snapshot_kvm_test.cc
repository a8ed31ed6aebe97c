// Persephone (tartarus-vmm snapshots): snapshot and restore on this host's /dev/kvm.
// A minimal runner on the kvm.h wrappers (not Vmm) boots the "counter" guest, pauses it after
// N lines, snapshots it to files, destroys the VM and restores new VMs from the files.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <thread>

#include "vmm/boot.h"
#include "vmm/snapshot/counter_vm.h"
#include "vmm/snapshot/vstate.h"

namespace tartarus::vmm::snapshot {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kGuestBytes = 256ull << 20;

#define SKIP_WITHOUT_KVM()                                                     \
  do {                                                                         \
    if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available"; \
  } while (0)

using TestVm = CounterVm;

Result<TestVm> BootCounterGuest() { return BootCounterVm(TARTARUS_SNAPSHOT_GUEST, kGuestBytes); }

uint64_t Fnv1a(const uint8_t* data, size_t length, uint64_t hash = 0xcbf29ce484222325ull) {
  for (size_t i = 0; i < length; ++i) hash = (hash ^ data[i]) * 0x100000001b3ull;
  return hash;
}

uint64_t MemoryHash(const GuestMemory& memory) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const GuestRegion& region : memory.regions()) hash = Fnv1a(region.host, region.size, hash);
  return hash;
}

// The guest's line counter: the quadword after "CNTRDATA" in its data segment.
Result<uint64_t> FindLineCounter(GuestMemory& memory) {
  std::span<uint8_t> image = TRY(memory.Slice(0x100000, 0x10000));
  for (size_t offset = 0; offset + 16 <= image.size(); offset += 8) {
    if (std::memcmp(image.data() + offset, "CNTRDATA", 8) == 0) return 0x100000 + offset + 8;
  }
  return Fail(ErrorCode::kNotFound, "no CNTRDATA marker in the guest image");
}

int CountLines(const std::string& text, const std::string& prefix) {
  int count = 0;
  for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at + 1)) {
    ++count;
  }
  return count;
}

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/tartarus-snapshot-XXXXXX";
    path_ = ::mkdtemp(pattern) != nullptr ? pattern : "";
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(SnapshotMsrTest, KeepsStateMsrsWithTscFirstAndDeadlineLast) {
  std::vector<uint32_t> msrs =
      MsrsToSave({0x6e0, 0x174, 0x17b, 0x10, 0x4b564d01, 0x40000000, 0xc0000080, 0x10, 0x38f});
  EXPECT_EQ(msrs, (std::vector<uint32_t>{0x10, 0x174, 0x4b564d01, 0xc0000080, 0x6e0}));
}

TEST(SnapshotRestoreTest, RefusesAMemoryFileShorterThanItsLayout) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = dir.path() + "/memory";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd);
  ASSERT_EQ(::ftruncate(fd.Get(), 0x1000), 0);
  Snapshot snapshot;
  snapshot.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  snapshot.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  snapshot.memory = {{0, 0x2000, 0}};
  snapshot.vcpus.resize(1);
  snapshot.vcpus[0].cpuid.resize(1);
  auto restored = RestoreFromSnapshot(snapshot, fd.Get());
  ASSERT_FALSE(restored);
  EXPECT_THAT(restored.error().message, HasSubstr("memory region 0 needs [0x0, 0x2000)"));
}

TEST(SnapshotRestoreTest, RefusesMissingAndCorruptStateFiles) {
  TempDir dir;
  auto missing = RestoreFromFiles(dir.path() + "/none", dir.path() + "/none");
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message, HasSubstr("opening snapshot state file"));
  const std::string path = dir.path() + "/state";
  std::ofstream(path) << "TTRSNAP but not really a snapshot";
  auto corrupt = ReadStateFile(path);
  ASSERT_FALSE(corrupt);
  EXPECT_THAT(corrupt.error().message, HasSubstr(path + ": snapshot state file:"));
}

TEST(SnapshotKvmTest, RestoredClonesContinueExactlyWhereTheGuestLeftOff) {
  SKIP_WITHOUT_KVM();
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string state_path = dir.path() + "/state";
  const std::string memory_path = dir.path() + "/memory";
  const auto timeout = std::chrono::seconds(20);

  // The original: boot, 20 lines, pause, snapshot, then 10 more lines as the reference.
  auto booted = BootCounterGuest();
  ASSERT_TRUE(booted) << booted.error().message;
  auto original = std::make_unique<TestVm>(std::move(*booted));
  auto before = RunLines(original->vcpus[0], 21, timeout);
  ASSERT_TRUE(before) << before.error().message;
  ASSERT_EQ(before->serial.rfind("counter ready\n", 0), 0u) << before->serial;
  EXPECT_EQ(CountLines(before->serial, "line "), 20) << before->serial;
  EXPECT_THAT(before->serial, HasSubstr("line 0000000000000014 sum "));
  auto counter_addr = FindLineCounter(original->memory);
  ASSERT_TRUE(counter_addr) << counter_addr.error().message;

  auto snapshot = SnapshotToFiles(*original, state_path, memory_path);
  ASSERT_TRUE(snapshot) << snapshot.error().message;
  const uint64_t memory_hash = MemoryHash(original->memory);
  EXPECT_EQ(*original->memory.ReadObject<uint64_t>(*counter_addr), 20u);
  // The interrupt controllers and the PIT as the guest programmed them.
  const VcpuState& saved = snapshot->vcpus[0];
  EXPECT_EQ(snapshot->vm.pic_master.chip.pic.irq_base, 0x20);
  EXPECT_EQ(snapshot->vm.pic_master.chip.pic.imr, 0xfe);
  EXPECT_EQ(snapshot->vm.pic_slave.chip.pic.imr, 0xff);
  EXPECT_EQ(snapshot->vm.pit.channels[0].count, 1193u);
  EXPECT_EQ(snapshot->vm.pit.channels[0].mode, 2);
  EXPECT_NE(saved.regs.rflags & 0x200, 0u) << "the guest waits with interrupts on";
  EXPECT_TRUE(std::any_of(saved.msrs.begin(), saved.msrs.end(), [](const MsrEntry& msr) {
    return msr.index == 0x10;
  })) << "IA32_TSC is saved";
  std::fprintf(stderr, "snapshot: %zu MSRs, xsave %d, xcrs %d, mp_state %u, tsc %u kHz\n",
               saved.msrs.size(), saved.has_xsave, saved.has_xcrs, saved.mp_state.mp_state,
               saved.tsc_khz);

  auto reference = RunLines(original->vcpus[0], 10, timeout);
  ASSERT_TRUE(reference) << reference.error().message;
  EXPECT_THAT(reference->serial, HasSubstr("line 0000000000000015 sum "));
  original.reset();  // the original VM is gone; only the files remain
  auto memory_file = ReadWholeFile(memory_path);
  ASSERT_TRUE(memory_file);
  const uint64_t file_hash = Fnv1a(memory_file->data(), memory_file->size());
  memory_file->clear();
  memory_file->shrink_to_fit();

  // Clone A: restore into a new VM, time it to the point of running.
  const Clock::time_point load_start = Clock::now();
  Snapshot loaded;
  auto clone_a = RestoreFromFiles(state_path, memory_path, &loaded);
  const Clock::time_point loaded_at = Clock::now();
  ASSERT_TRUE(clone_a) << clone_a.error().message;
  ASSERT_EQ(loaded.devices.size(), 1u);
  EXPECT_EQ(loaded.devices[0].id, "counter.test");
  auto regs = clone_a->vcpus[0].GetRegs();
  ASSERT_TRUE(regs);
  EXPECT_EQ(std::memcmp(&*regs, &saved.regs, sizeof(kvm_regs)), 0) << "registers";
  auto sregs = clone_a->vcpus[0].GetSregs();
  ASSERT_TRUE(sregs);
  EXPECT_EQ(sregs->cr0, saved.sregs.cr0);
  EXPECT_EQ(sregs->cr3, saved.sregs.cr3);
  EXPECT_EQ(sregs->cr4, saved.sregs.cr4);
  EXPECT_EQ(sregs->efer, saved.sregs.efer);
  EXPECT_EQ(sregs->apic_base, saved.sregs.apic_base);
  EXPECT_EQ(std::memcmp(&sregs->cs, &saved.sregs.cs, sizeof(kvm_segment)), 0);
  EXPECT_EQ(std::memcmp(&sregs->idt, &saved.sregs.idt, sizeof(kvm_dtable)), 0);
  auto pic = clone_a->vm.GetIrqchip(kIrqchipPicMaster);
  ASSERT_TRUE(pic);
  EXPECT_EQ(pic->chip.pic.imr, 0xfe);
  EXPECT_EQ(pic->chip.pic.irq_base, 0x20);
  auto pit = clone_a->vm.GetPit2();
  ASSERT_TRUE(pit);
  EXPECT_EQ(pit->channels[0].count, 1193u);
  EXPECT_EQ(pit->channels[0].mode, 2);

  auto after_a = RunLines(clone_a->vcpus[0], 10, timeout);
  ASSERT_TRUE(after_a) << after_a.error().message;
  ASSERT_TRUE(after_a->first_byte.has_value());
  const double first_load_ms =
      std::chrono::duration<double, std::milli>(loaded_at - load_start).count();
  const double first_byte_ms =
      std::chrono::duration<double, std::milli>(*after_a->first_byte - load_start).count();
  EXPECT_EQ(after_a->serial, reference->serial) << "the restored guest continues exactly";

  // Clone B from the same files while A lives: it starts from the snapshot, not from A.
  auto clone_b = RestoreFromFiles(state_path, memory_path);
  ASSERT_TRUE(clone_b) << clone_b.error().message;
  EXPECT_EQ(*clone_b->memory.ReadObject<uint64_t>(*counter_addr), 20u);
  EXPECT_EQ(*clone_a->memory.ReadObject<uint64_t>(*counter_addr), 30u);
  EXPECT_EQ(MemoryHash(clone_b->memory), memory_hash) << "memory contents equal";
  auto after_b = RunLines(clone_b->vcpus[0], 10, timeout);
  ASSERT_TRUE(after_b) << after_b.error().message;
  EXPECT_EQ(after_b->serial, reference->serial);
  // Both ran on again independently; the shared file saw none of their writes.
  auto more_a = RunLines(clone_a->vcpus[0], 2, timeout);
  ASSERT_TRUE(more_a) << more_a.error().message;
  EXPECT_THAT(more_a->serial, HasSubstr("line 000000000000001f sum "));
  EXPECT_EQ(*clone_a->memory.ReadObject<uint64_t>(*counter_addr), 32u);
  EXPECT_EQ(*clone_b->memory.ReadObject<uint64_t>(*counter_addr), 30u);
  // Load time, restore to ready-to-run, over several loads: this 2-core host is shared, so
  // the minimum says what the code costs and the median what a load saw today.
  std::vector<double> loads_ms = {first_load_ms};
  for (int i = 0; i < 7; ++i) {
    const Clock::time_point start = Clock::now();
    auto clone = RestoreFromFiles(state_path, memory_path);
    const Clock::time_point ready = Clock::now();
    ASSERT_TRUE(clone) << clone.error().message;
    loads_ms.push_back(std::chrono::duration<double, std::milli>(ready - start).count());
  }
  std::sort(loads_ms.begin(), loads_ms.end());
  std::fprintf(stderr,
               "snapshot load of a %llu MiB guest, restore to ready-to-run over %zu loads: "
               "min %.3f ms, median %.3f ms (target: under 5 ms); first clone's first serial "
               "byte after %.3f ms\n",
               static_cast<unsigned long long>(kGuestBytes >> 20), loads_ms.size(), loads_ms[0],
               loads_ms[loads_ms.size() / 2], first_byte_ms);

  auto file_after = ReadWholeFile(memory_path);
  ASSERT_TRUE(file_after);
  EXPECT_EQ(Fnv1a(file_after->data(), file_after->size()), file_hash)
      << "clones must not write through to the memory file";
}

}  // namespace
}  // namespace tartarus::vmm::snapshot

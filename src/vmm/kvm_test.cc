// tartarus-vmm (Tartarus's KVM microVM monitor): KVM-level tests. They run the freestanding
// guests from guests/ on this host's /dev/kvm and check their serial output and exit reasons.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "vmm/boot.h"
#include "vmm/kvm.h"
#include "vmm/vmm.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

#define SKIP_WITHOUT_KVM()                                                     \
  do {                                                                         \
    if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available"; \
  } while (0)

std::string GuestPath(const std::string& name) {
  return std::string(TARTARUS_VMM_GUEST_DIR) + "/" + name + ".elf";
}

struct GuestRun {
  Result<RunReport> report;
  std::string serial;
};

GuestRun RunGuest(const std::string& name, VmmConfig config = {}) {
  auto serial = std::make_shared<std::string>();
  config.kernel_path = GuestPath(name);
  config.serial_sink = [serial](uint8_t byte) { serial->push_back(static_cast<char>(byte)); };
  if (config.timeout.count() == 0) config.timeout = std::chrono::seconds(20);
  auto vmm = Vmm::Create(config);
  if (!vmm) return {Fail(vmm.error()), ""};
  auto report = (*vmm)->Run();
  return {std::move(report), *serial};
}

std::string Hex16(uint64_t value) {
  char text[20];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

TEST(CpuidTest, FilterSetsHypervisorAndTopologyAndHidesWhatIsNotEmulated) {
  std::vector<kvm_cpuid_entry2> entries(3);
  entries[0].function = 1;
  entries[0].ecx = (1u << 5) | (1u << 13) | (1u << 26) | (1u << 3);
  entries[0].ebx = 0x0800;
  entries[1].function = 7;
  entries[1].ebx = 1u << 5;  // AVX2
  entries[2].function = 0xb;
  FilterCpuid(entries, {.vcpu_index = 1, .vcpu_count = 2, .emulated_cpu = true});
  EXPECT_NE(entries[0].ecx & (1u << 31), 0u);
  EXPECT_EQ(entries[0].ecx & ((1u << 5) | (1u << 13) | (1u << 26) | (1u << 3)), 0u);
  EXPECT_EQ(entries[0].ebx >> 24, 1u);
  EXPECT_EQ((entries[0].ebx >> 16) & 0xff, 2u);
  EXPECT_EQ(entries[1].ebx, 0u);
  EXPECT_EQ(entries[2].edx, 1u);
  // On hardware virtualization CMPXCHG16B stays.
  std::vector<kvm_cpuid_entry2> hardware(1);
  hardware[0].function = 1;
  hardware[0].ecx = 1u << 13;
  FilterCpuid(hardware, {});
  EXPECT_NE(hardware[0].ecx & (1u << 13), 0u);
}

TEST(KvmTest, WrappersReportTheIoctlAndErrno) {
  SKIP_WITHOUT_KVM();
  auto kvm = KvmSystem::Open();
  ASSERT_TRUE(kvm);
  auto cpuid = kvm->GetSupportedCpuid();
  ASSERT_TRUE(cpuid) << cpuid.error().message;
  EXPECT_GT(cpuid->size(), 1u);
  auto vm = kvm->CreateVm();
  ASSERT_TRUE(vm) << vm.error().message;
  // A memory slot whose size is not page-aligned is refused by KVM.
  auto status = vm->SetUserMemoryRegion(0, 0, 100, nullptr);
  ASSERT_FALSE(status);
  EXPECT_THAT(status.error().message, HasSubstr("KVM_SET_USER_MEMORY_REGION"));
  EXPECT_THAT(status.error().message, HasSubstr("Invalid argument"));
  ASSERT_TRUE(vm->CreateIrqchip());
  ASSERT_TRUE(vm->CreatePit2());
  auto vcpu = vm->CreateVcpu(0);
  ASSERT_TRUE(vcpu) << vcpu.error().message;
  EXPECT_TRUE(vcpu->SetMsrs(BootMsrs())) << "boot MSRs";
  auto duplicate = vm->CreateVcpu(0);
  ASSERT_FALSE(duplicate);
  EXPECT_THAT(duplicate.error().message, HasSubstr("KVM_CREATE_VCPU"));
  auto missing = KvmSystem::Open("/nonexistent/kvm");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

// The snapshot wrappers: state reads round-trip through their setters, and failures name
// the ioctl (and, for MSRs, the MSR).
TEST(KvmTest, SnapshotStateWrappersRoundTripAndNameTheIoctl) {
  SKIP_WITHOUT_KVM();
  auto kvm = KvmSystem::Open();
  ASSERT_TRUE(kvm);
  auto msr_list = kvm->GetMsrIndexList();
  ASSERT_TRUE(msr_list) << msr_list.error().message;
  EXPECT_NE(std::find(msr_list->begin(), msr_list->end(), kMsrIa32Tsc), msr_list->end());
  auto vm = kvm->CreateVm();
  ASSERT_TRUE(vm);
  auto no_chip = vm->GetIrqchip(kIrqchipPicMaster);
  ASSERT_FALSE(no_chip);
  EXPECT_THAT(no_chip.error().message, HasSubstr("KVM_GET_IRQCHIP"));
  auto no_pit = vm->GetPit2();
  ASSERT_FALSE(no_pit);
  EXPECT_THAT(no_pit.error().message, HasSubstr("KVM_GET_PIT2"));
  ASSERT_TRUE(vm->CreateIrqchip());
  ASSERT_TRUE(vm->CreatePit2());
  for (uint32_t chip_id : {kIrqchipPicMaster, kIrqchipPicSlave, kIrqchipIoapic}) {
    auto chip = vm->GetIrqchip(chip_id);
    ASSERT_TRUE(chip) << chip.error().message;
    EXPECT_EQ(chip->chip_id, chip_id);
    EXPECT_TRUE(vm->SetIrqchip(*chip));
  }
  auto pit = vm->GetPit2();
  ASSERT_TRUE(pit);
  EXPECT_TRUE(vm->SetPit2(*pit));
  auto clock = vm->GetClock();
  ASSERT_TRUE(clock) << clock.error().message;
  kvm_clock_data later{};
  later.clock = clock->clock + 1'000'000'000;
  ASSERT_TRUE(vm->SetClock(later));
  EXPECT_GE(vm->GetClock()->clock, later.clock);

  auto vcpu = vm->CreateVcpu(0);
  ASSERT_TRUE(vcpu);
  ASSERT_TRUE(vcpu->SetMsrs(BootMsrs()));
  const uint32_t star = kMsrStar;
  ASSERT_TRUE(vcpu->SetMsrs(std::vector<MsrEntry>{{star, 0x0023001000000000ull}}));
  auto read = vcpu->GetMsrs(std::span<const uint32_t>(&star, 1));
  ASSERT_TRUE(read) << read.error().message;
  EXPECT_EQ((*read)[0].value, 0x0023001000000000ull);
  const uint32_t bogus[] = {kMsrStar, 0xdeadbeef};
  auto refused = vcpu->GetMsrs(bogus);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message,
              HasSubstr("KVM_GET_MSRS: KVM could not read MSR 0xdeadbeef"));
  auto lapic = vcpu->GetLapic();
  ASSERT_TRUE(lapic) << lapic.error().message;
  EXPECT_TRUE(vcpu->SetLapic(*lapic));
  auto events = vcpu->GetVcpuEvents();
  ASSERT_TRUE(events) << events.error().message;
  EXPECT_TRUE(vcpu->SetVcpuEvents(*events));
  auto debug = vcpu->GetDebugRegs();
  ASSERT_TRUE(debug) << debug.error().message;
  EXPECT_TRUE(vcpu->SetDebugRegs(*debug));
  auto fpu = vcpu->GetFpu();
  ASSERT_TRUE(fpu);
  EXPECT_TRUE(vcpu->SetFpu(*fpu));
  if (kvm->CheckExtension(KVM_CAP_XSAVE) > 0) {
    auto xsave = vcpu->GetXsave();
    ASSERT_TRUE(xsave) << xsave.error().message;
    EXPECT_TRUE(vcpu->SetXsave(*xsave));
  }
  auto cpuid = kvm->GetSupportedCpuid();
  ASSERT_TRUE(cpuid);
  ASSERT_TRUE(vcpu->SetCpuid(*cpuid));
  auto back = vcpu->GetCpuid();
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->size(), cpuid->size());
  auto mp = vcpu->GetMpState();
  ASSERT_TRUE(mp);
  EXPECT_TRUE(vcpu->SetMpState(*mp));
  // Nothing pending: completing I/O is a no-op that must not run the guest.
  EXPECT_TRUE(vcpu->CompletePendingIo());
  EXPECT_EQ(vcpu->run()->immediate_exit, 0);
}

TEST(GuestTest, HelloRunsInLongModeAtCpl0AndHalts) {
  SKIP_WITHOUT_KVM();
  GuestRun run = RunGuest("hello");
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_EQ(run.serial, "hello from the guest\n");
  EXPECT_EQ(run.report->reason, StopReason::kHalted) << run.report->detail;
  ASSERT_TRUE(run.report->boot_complete.has_value());
  EXPECT_GT(run.report->boot_complete->count(), 0);
  EXPECT_GT(run.report->exits, 20u);  // at least one exit per serial byte
  EXPECT_EQ(run.report->unhandled_pio, 0u);
}

TEST(GuestTest, BootInfoSeesTheCommandLineAndE820Map) {
  SKIP_WITHOUT_KVM();
  VmmConfig config;
  config.memory_mib = 64;
  config.cmdline = "console=ttyS0 tartarus.test=yes";
  GuestRun run = RunGuest("bootinfo", config);
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_EQ(run.report->reason, StopReason::kHalted);
  const std::string expected =
      "header=0000000053726448\n"
      "cmdline=console=ttyS0 tartarus.test=yes\n"
      "e820 entries=02\n"
      "e820 0000000000000000 " +
      Hex16(kEbdaStart) +
      " 01\n"
      "e820 0000000000100000 " +
      Hex16((64 << 20) - kHighMemStart) +
      " 01\n"
      "bootinfo done\n";
  EXPECT_EQ(run.serial, expected);
}

TEST(GuestTest, UartInterruptReachesTheGuestThroughTheInKernelPic) {
  SKIP_WITHOUT_KVM();
  VmmConfig config;
  config.timeout = std::chrono::seconds(5);
  GuestRun run = RunGuest("irq", config);
  if (!run.report && run.report.error().code == ErrorCode::kTimeout &&
      run.serial == "waiting for interrupt\n") {
    GTEST_SKIP() << "skipped: this host's KVM did not deliver the IRQ 4 interrupt to the guest";
  }
  ASSERT_TRUE(run.report) << run.report.error().message << "\nserial: " << run.serial;
  EXPECT_EQ(run.serial, "waiting for interrupt\ninterrupt delivered iir=02\n");
  EXPECT_EQ(run.report->reason, StopReason::kHalted);
}

TEST(GuestTest, I8042ResetEndsTheVmAsAReboot) {
  SKIP_WITHOUT_KVM();
  GuestRun run = RunGuest("reboot");
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_EQ(run.serial, "rebooting\n");
  EXPECT_EQ(run.report->reason, StopReason::kReboot);
  EXPECT_TRUE(run.report->Clean());
}

TEST(GuestTest, TripleFaultIsReportedAsACrash) {
  SKIP_WITHOUT_KVM();
  GuestRun run = RunGuest("crash");
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_EQ(run.serial, "crashing\n");
  EXPECT_EQ(run.report->reason, StopReason::kTripleFault) << run.report->detail;
  EXPECT_FALSE(run.report->Clean());
}

TEST(GuestTest, SecondVcpuWaitingForSipiDoesNotKeepTheVmAlive) {
  SKIP_WITHOUT_KVM();
  auto kvm = KvmSystem::Open();
  if (kvm->CheckExtension(KVM_CAP_NR_VCPUS) < 2) GTEST_SKIP() << "skipped: KVM allows 1 vCPU";
  VmmConfig config;
  config.vcpus = 2;
  GuestRun run = RunGuest("hello", config);
  ASSERT_TRUE(run.report) << run.report.error().message;
  EXPECT_EQ(run.serial, "hello from the guest\n");
  EXPECT_EQ(run.report->reason, StopReason::kHalted);
}

TEST(VmmTest, RefusesBadConfigurationsWithClearErrors) {
  SKIP_WITHOUT_KVM();
  VmmConfig config;
  config.kernel_path = "/nonexistent/vmlinux";
  auto missing = Vmm::Create(config);
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message, HasSubstr("/nonexistent/vmlinux"));

  char path[] = "/tmp/vmm-kernel-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string elf32(64, 0);  // a 32-bit ELF header
  elf32.replace(0, 5,
                "\x7f"
                "ELF\x01");
  ASSERT_EQ(::write(fd, elf32.data(), elf32.size()), 64);
  ::close(fd);
  config.kernel_path = path;
  auto malformed = Vmm::Create(config);
  ::unlink(path);
  ASSERT_FALSE(malformed);
  EXPECT_THAT(malformed.error().message, HasSubstr("kernel ELF: wrong class"));

  config.kernel_path = GuestPath("hello");
  config.vcpus = 1000;
  auto too_many = Vmm::Create(config);
  ASSERT_FALSE(too_many);
  EXPECT_THAT(too_many.error().message, HasSubstr("vCPUs requested"));
  config.vcpus = 1;
  config.memory_mib = 1;
  EXPECT_FALSE(Vmm::Create(config));
}

}  // namespace
}  // namespace tartarus::vmm

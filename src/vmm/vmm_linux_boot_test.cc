// tartarus-vmm (Tartarus's KVM microVM monitor): the Linux boot path on /dev/kvm. Guests
// packaged as Linux is (guests/bzimage.s, guests/pvhboot.s) check what they were handed and
// report over serial; a real Debian cloud kernel boots where the host has hardware
// virtualization (scripts/fetch-guest-kernel.sh fetches it).
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "vmm/acpi.h"
#include "vmm/boot.h"
#include "vmm/bzimage.h"
#include "vmm/kvm.h"
#include "vmm/vmm.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

#define SKIP_WITHOUT_KVM()                                                     \
  do {                                                                         \
    if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available"; \
  } while (0)

std::string Guest(const std::string& file) {
  return std::string(TARTARUS_VMM_GUEST_DIR) + "/" + file;
}

std::string Hex16(uint64_t value) {
  char text[20];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}
std::string Hex8(uint64_t value) {
  char text[12];
  std::snprintf(text, sizeof(text), "%08llx", static_cast<unsigned long long>(value));
  return text;
}

uint32_t Fnv1a(const std::string& bytes) {
  uint32_t hash = 0x811c9dc5;
  for (unsigned char byte : bytes) hash = (hash ^ byte) * 0x01000193;
  return hash;
}

// A temporary initrd: pseudo-random bytes, not a multiple of the page size.
class TempInitrd {
 public:
  explicit TempInitrd(size_t size) {
    char path[] = "/tmp/vmm-initrd-XXXXXX";
    int fd = ::mkstemp(path);
    path_ = path;
    uint32_t state = 12345;
    for (size_t i = 0; i < size; ++i) {
      state = state * 1103515245 + 12345;
      bytes_.push_back(static_cast<char>(state >> 16));
    }
    if (fd >= 0) {
      (void)!::write(fd, bytes_.data(), bytes_.size());
      ::close(fd);
    }
  }
  ~TempInitrd() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string path_;
  std::string bytes_;
};

struct GuestRun {
  Result<RunReport> report;
  std::string serial;
};

GuestRun RunVm(VmmConfig config) {
  auto serial = std::make_shared<std::string>();
  config.serial_sink = [serial](uint8_t byte) { serial->push_back(static_cast<char>(byte)); };
  if (config.timeout.count() == 0) config.timeout = std::chrono::seconds(30);
  auto vmm = Vmm::Create(config);
  if (!vmm) return {Fail(vmm.error()), ""};
  auto report = (*vmm)->Run();
  return {std::move(report), *serial};
}

// The initrd's address as the loader places it: page aligned, ending at the top of low RAM.
uint64_t ExpectedInitrdAddr(uint64_t memory_mib, size_t size) {
  return ((memory_mib << 20) - size) & ~0xfffull;
}

TEST(LinuxBootGuestTest, BzImageSeesItsHeaderCommandLineInitrdE820AndLongMode) {
  SKIP_WITHOUT_KVM();
  TempInitrd initrd(5000);
  VmmConfig config;
  config.kernel_path = Guest("bzImage");
  config.initrd_path = initrd.path();
  config.memory_mib = 64;
  config.cmdline = "console=ttyS0 tartarus.bz=1";
  GuestRun run = RunVm(config);
  ASSERT_TRUE(run.report) << run.report.error().message << "\nserial:\n" << run.serial;
  EXPECT_EQ(run.report->reason, StopReason::kHalted) << run.report->detail;
  EXPECT_THAT(run.serial, Not(HasSubstr("FAIL")));
  const std::string expected =
      "entry=0000000001000200\n"
      "setup header copy: ok\n"
      "type_of_loader: ok\n"
      "cmdline=console=ttyS0 tartarus.bz=1\n"
      "ramdisk=" +
      Hex16(ExpectedInitrdAddr(64, 5000)) + " " + Hex16(5000) +
      "\n"
      "initrd fnv=" +
      Hex16(Fnv1a(initrd.bytes())) +
      "\n"
      "e820 entries=02\n"
      "e820 0000000000000000 " +
      Hex16(kEbdaStart) +
      " 01\n"
      "e820 0000000000100000 " +
      Hex16((64 << 20) - kHighMemStart) +
      " 01\n"
      "rsdp=" +
      Hex16(kRsdpAddr) +
      "\n"
      "long mode paging: ok\n"
      "boot segments: ok\n"
      "bzimage done\n";
  EXPECT_EQ(run.serial, expected);
  EXPECT_TRUE(run.report->boot_complete.has_value());
}

TEST(LinuxBootGuestTest, BzImageCommandLineLongerThanItsCmdlineSizeIsRefused) {
  SKIP_WITHOUT_KVM();
  VmmConfig config;
  config.kernel_path = Guest("bzImage");
  config.cmdline = std::string(256, 'x');  // the guest's header says 255
  GuestRun run = RunVm(config);
  ASSERT_FALSE(run.report);
  EXPECT_THAT(run.report.error().message, HasSubstr("cmdline_size 255"));
}

TEST(LinuxBootGuestTest, PvhGuestSeesStartInfoInitrdMemoryMapAndAcpiTables) {
  SKIP_WITHOUT_KVM();
  TempInitrd initrd(3333);
  VmmConfig config;
  config.kernel_path = Guest("pvhboot.elf");
  config.initrd_path = initrd.path();
  config.memory_mib = 64;
  config.cmdline = "console=ttyS0 tartarus.pvh=1";
  config.virtio_mmio = {{.base = 0xd0001000, .size = 0x1000, .irq = 5},
                        {.base = 0xd0002000, .size = 0x1000, .irq = 6},
                        {.base = 0xd0003000, .size = 0x1000, .irq = 7}};
  GuestRun run = RunVm(config);
  ASSERT_TRUE(run.report) << run.report.error().message << "\nserial:\n" << run.serial;
  EXPECT_EQ(run.report->reason, StopReason::kHalted) << run.report->detail;
  EXPECT_THAT(run.serial, Not(HasSubstr("FAIL")));
  const uint64_t initrd_addr = ExpectedInitrdAddr(64, 3333);
  const std::string expected =
      "pvh magic: ok\n"
      "pvh version=00000001\n"
      "protected mode without paging: ok\n"
      "flat segments: ok\n"
      "cmdline=console=ttyS0 tartarus.pvh=1\n"
      "modules=00000001\n"
      "module " +
      Hex16(initrd_addr) + " " + Hex16(3333) +
      "\n"
      "initrd fnv=" +
      Hex8(Fnv1a(initrd.bytes())) +
      "\n"
      "memmap entries=03\n"
      "memmap 0000000000000000 " +
      Hex16(kEbdaStart) +
      " 01\n"
      "memmap " +
      Hex16(kEbdaStart) + " " + Hex16(kHighMemStart - kEbdaStart) +
      " 02\n"
      "memmap 0000000000100000 " +
      Hex16((64 << 20) - kHighMemStart) +
      " 01\n"
      "rsdp=" +
      Hex16(kRsdpAddr) +
      "\n"
      "rsdp: ok\n"
      "xsdt: ok\n"
      "table FACP: ok\n"
      "table DSDT: ok\n"
      "virtio devices=03\n"
      "table APIC: ok\n"
      "lapics=01 ioapics=01\n"
      "pvh done\n";
  EXPECT_EQ(run.serial, expected);
}

TEST(LinuxBootGuestTest, PvhGuestCountsOneLocalApicPerVcpu) {
  SKIP_WITHOUT_KVM();
  auto kvm = KvmSystem::Open();
  if (kvm->CheckExtension(KVM_CAP_NR_VCPUS) < 2) GTEST_SKIP() << "skipped: KVM allows 1 vCPU";
  VmmConfig config;
  config.kernel_path = Guest("pvhboot.elf");
  config.vcpus = 2;
  GuestRun run = RunVm(config);
  ASSERT_TRUE(run.report) << run.report.error().message << "\nserial:\n" << run.serial;
  EXPECT_THAT(run.serial, HasSubstr("modules=00000000\n"));
  EXPECT_THAT(run.serial, HasSubstr("virtio devices=00\n"));
  EXPECT_THAT(run.serial, HasSubstr("lapics=02 ioapics=01\n"));
  EXPECT_THAT(run.serial, Not(HasSubstr("FAIL")));
}

TEST(LinuxBootGuestTest, InitrdThatDoesNotFitIsRefused) {
  SKIP_WITHOUT_KVM();
  TempInitrd initrd(40 << 20);
  VmmConfig config;
  config.kernel_path = Guest("bzImage");  // its footprint ends above 17 MiB
  config.initrd_path = initrd.path();
  config.memory_mib = 48;
  auto vmm = Vmm::Create(config);
  ASSERT_FALSE(vmm);
  EXPECT_THAT(vmm.error().message, HasSubstr("does not fit"));
  config.initrd_path = "/nonexistent/initrd";
  vmm = Vmm::Create(config);
  ASSERT_FALSE(vmm);
  EXPECT_THAT(vmm.error().message, HasSubstr("open initrd /nonexistent/initrd"));
}

TEST(LinuxBootBinaryTest, KernelAndInitrdFlagsBootTheBzImageGuest) {
  SKIP_WITHOUT_KVM();
  TempInitrd initrd(100);
  const std::string command = std::string(TARTARUS_VMM_BINARY) + " --kernel " + Guest("bzImage") +
                              " --initrd " + initrd.path() + " --cmdline hello 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = ::pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output;
  EXPECT_THAT(output, HasSubstr("cmdline=hello\n"));
  EXPECT_THAT(output, HasSubstr("ramdisk=" + Hex16(ExpectedInitrdAddr(128, 100)) + " "));
  EXPECT_THAT(output, HasSubstr("bzimage done\n"));
  EXPECT_THAT(output, Not(HasSubstr("FAIL")));
}

// Real Linux: only where KVM runs guest code natively. On PVM hosts (this project's machines)
// guest code runs in KVM's instruction emulator and a stock kernel does not boot.
bool HostIsPvmWithoutHardwareVirtualization(std::string& why) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  bool hardware = false;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0 &&
        (line.find(" vmx") != std::string::npos || line.find(" svm") != std::string::npos)) {
      hardware = true;
    }
  }
  if (std::filesystem::exists("/sys/module/kvm_pvm") && !hardware) {
    why =
        "KVM here is PVM (/sys/module/kvm_pvm, no vmx/svm in /proc/cpuinfo): guest code runs "
        "in KVM's instruction emulator and a stock Linux kernel does not boot";
    return true;
  }
  return false;
}

// The vmlinuz scripts/fetch-guest-kernel.sh unpacked, or empty.
std::filesystem::path FetchedKernel(std::filesystem::path& kernel_dir) {
  const char* dir = std::getenv("TARTARUS_VMM_KERNEL_DIR");
  kernel_dir = dir ? dir : "/var/lib/tartarus/vmm/kernel";
  std::filesystem::path vmlinuz;
  std::error_code error;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(kernel_dir, error)) {
    if (entry.path().filename().string().rfind("vmlinuz-", 0) == 0) vmlinuz = entry.path();
  }
  return vmlinuz;
}

TEST(RealLinuxTest, DebianCloudKernelHeaderIsAccepted) {
  std::filesystem::path kernel_dir;
  const std::filesystem::path vmlinuz = FetchedKernel(kernel_dir);
  if (vmlinuz.empty()) {
    GTEST_SKIP() << "skipped: no vmlinuz-* under " << kernel_dir
                 << "; run scripts/fetch-guest-kernel.sh first";
  }
  std::ifstream in(vmlinuz, std::ios::binary);
  std::vector<uint8_t> image((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  auto header = ParseBzImageHeader(image);
  ASSERT_TRUE(header) << header.error().message;
  EXPECT_GE(header->version, kMinBootProtocol);
  EXPECT_TRUE(header->relocatable);
  EXPECT_GT(header->init_size, header->kernel_size);
  auto memory = GuestMemory::CreateAnonymous(256 << 20);
  ASSERT_TRUE(memory);
  auto plan = PrepareLinuxBoot(image, {.cmdline = "console=ttyS0"}, *memory);
  ASSERT_TRUE(plan) << plan.error().message;
  EXPECT_EQ(plan->format, KernelFormat::kBzImage);
  EXPECT_EQ(plan->entry, plan->load_start + 0x200);
}

TEST(RealLinuxTest, DebianCloudKernelPrintsItsBannerOnTheSerialConsole) {
  SKIP_WITHOUT_KVM();
  std::string why;
  if (HostIsPvmWithoutHardwareVirtualization(why)) GTEST_SKIP() << "skipped: " << why;
  std::filesystem::path kernel_dir;
  const std::filesystem::path vmlinuz = FetchedKernel(kernel_dir);
  if (vmlinuz.empty()) {
    GTEST_SKIP() << "skipped: no vmlinuz-* under " << kernel_dir
                 << "; run scripts/fetch-guest-kernel.sh first";
  }
  VmmConfig config;
  config.kernel_path = vmlinuz.string();
  config.memory_mib = 256;
  config.cmdline = "console=ttyS0 reboot=k panic=-1 i8042.noaux";
  config.timeout = std::chrono::seconds(60);
  GuestRun run = RunVm(config);
  // With no root filesystem the kernel panics and (panic=-1) reboots; its banner came first.
  EXPECT_THAT(run.serial, HasSubstr("Linux version")) << run.serial;
  if (run.report) {
    EXPECT_NE(run.report->reason, StopReason::kError) << run.report->detail;
  }
}

}  // namespace
}  // namespace tartarus::vmm

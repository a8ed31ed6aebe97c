// tartarus-vmm (Tartarus's KVM microVM monitor): tests for the ACPI tables and AML encoder,
// including a check by Debian's ACPICA disassembler (iasl -d) where it is installed.
#include "vmm/acpi.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace tartarus::vmm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

template <class T>
T At(const std::vector<uint8_t>& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

std::string Signature(const std::vector<uint8_t>& table) {
  return std::string(reinterpret_cast<const char*>(table.data()), 4);
}

AcpiConfig TwoDevices() {
  return {.vcpus = 2,
          .virtio_mmio = {{.base = 0xd0001000, .size = 0x1000, .irq = 5},
                          {.base = 0xd0002000, .size = 0x1000, .irq = 6}}};
}

TEST(AmlTest, EncodesPackageLengthsIntegersStringsAndEisaIds) {
  EXPECT_THAT(aml::PkgLength(10), ElementsAre(11));
  EXPECT_THAT(aml::PkgLength(62), ElementsAre(63));
  // 63 content bytes + 2 length bytes = 65 = 0x41: low nibble in byte 0, the rest after.
  EXPECT_THAT(aml::PkgLength(63), ElementsAre(0x41, 0x04));
  EXPECT_THAT(aml::PkgLength(5000), ElementsAre(0x8b, 0x38, 0x01));  // 5003 = 0x138b
  EXPECT_THAT(aml::Integer(0), ElementsAre(0x00));
  EXPECT_THAT(aml::Integer(1), ElementsAre(0x01));
  EXPECT_THAT(aml::Integer(0x12), ElementsAre(0x0a, 0x12));
  EXPECT_THAT(aml::Integer(0x1234), ElementsAre(0x0b, 0x34, 0x12));
  EXPECT_THAT(aml::Integer(0xd0000000), ElementsAre(0x0c, 0, 0, 0, 0xd0));
  EXPECT_EQ(aml::Integer(1ull << 40).size(), 9u);
  EXPECT_THAT(aml::String("AB"), ElementsAre(0x0d, 'A', 'B', 0));
  EXPECT_THAT(aml::EisaId("PNP0501"), ElementsAre(0x0c, 0x41, 0xd0, 0x05, 0x01));
  EXPECT_THAT(aml::Memory32Fixed(0xd0000000, 0x1000),
              ElementsAre(0x86, 9, 0, 1, 0, 0, 0, 0xd0, 0, 0x10, 0, 0));
  EXPECT_THAT(aml::ExtendedInterrupt(5), ElementsAre(0x89, 6, 0, 3, 1, 5, 0, 0, 0));
}

TEST(AcpiTest, TablesLinkUpAndEveryChecksumHolds) {
  auto tables = BuildAcpiTables(TwoDevices());
  ASSERT_TRUE(tables) << tables.error().message;
  ASSERT_EQ(tables->rsdp.size(), 36u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(tables->rsdp.data()), 8), "RSD PTR ");
  EXPECT_EQ(AcpiChecksum(std::span(tables->rsdp).first(20)), 0);
  EXPECT_EQ(AcpiChecksum(tables->rsdp), 0);
  EXPECT_EQ(tables->rsdp[15], 2);
  ASSERT_EQ(tables->tables.size(), 4u);
  const auto& xsdt = tables->tables[0];
  const auto& fadt = tables->tables[1];
  const auto& dsdt = tables->tables[2];
  const auto& madt = tables->tables[3];
  EXPECT_EQ(At<uint64_t>(tables->rsdp, 24), xsdt.addr);
  EXPECT_EQ(Signature(xsdt.bytes), "XSDT");
  EXPECT_EQ(Signature(fadt.bytes), "FACP");
  EXPECT_EQ(Signature(dsdt.bytes), "DSDT");
  EXPECT_EQ(Signature(madt.bytes), "APIC");
  for (const auto& table : tables->tables) {
    EXPECT_EQ(At<uint32_t>(table.bytes, 4), table.bytes.size()) << Signature(table.bytes);
    EXPECT_EQ(AcpiChecksum(table.bytes), 0) << Signature(table.bytes);
    EXPECT_GE(table.addr, kRsdpAddr);
    EXPECT_LE(table.addr + table.bytes.size(), kAcpiAreaEnd);
  }
  EXPECT_EQ(At<uint64_t>(xsdt.bytes, 36), fadt.addr);
  EXPECT_EQ(At<uint64_t>(xsdt.bytes, 44), madt.addr);
  EXPECT_EQ(At<uint64_t>(fadt.bytes, 140), dsdt.addr);
  EXPECT_EQ(At<uint32_t>(fadt.bytes, 112) & (1u << 20), 1u << 20);  // HW_REDUCED_ACPI
  // IAPC_BOOT_ARCH says there is an 8042 (Linux would otherwise skip its keyboard) and no VGA.
  EXPECT_EQ(At<uint16_t>(fadt.bytes, 109) & 0x6u, 0x6u);
  EXPECT_EQ(fadt.bytes.size(), 276u);
  // MADT: a local APIC per vCPU (ids 0, 1), then the IOAPIC.
  EXPECT_EQ(madt.bytes[44], 0);
  EXPECT_EQ(madt.bytes[44 + 3], 0);
  EXPECT_EQ(madt.bytes[52], 0);
  EXPECT_EQ(madt.bytes[52 + 3], 1);
  EXPECT_EQ(madt.bytes[60], 1);
  EXPECT_EQ(At<uint32_t>(madt.bytes, 64), kIoApicAddr);
  // The DSDT names both devices.
  std::string aml(dsdt.bytes.begin(), dsdt.bytes.end());
  size_t first = aml.find("LNRO0005");
  ASSERT_NE(first, std::string::npos);
  EXPECT_NE(aml.find("LNRO0005", first + 1), std::string::npos);
}

TEST(AcpiTest, RefusesWhatTheTablesCannotDescribe) {
  auto expect_refused = [](AcpiConfig config, const std::string& what) {
    auto tables = BuildAcpiTables(config);
    ASSERT_FALSE(tables) << what;
    EXPECT_THAT(tables.error().message, HasSubstr(what));
  };
  expect_refused({.vcpus = 0}, "vCPUs");
  expect_refused({.vcpus = 256}, "vCPUs");
  expect_refused({.vcpus = 1, .virtio_mmio = {{.base = 0x100000000, .size = 0x1000, .irq = 5}}},
                 "below 4 GiB");
  expect_refused({.vcpus = 1, .virtio_mmio = {{.base = 0xfffff000, .size = 0x2000, .irq = 5}}},
                 "below 4 GiB");
  expect_refused({.vcpus = 1, .virtio_mmio = {{.base = 0xd0000000, .size = 0, .irq = 5}}},
                 "non-empty");
  expect_refused({.vcpus = 1, .virtio_mmio = {{.base = 0xd0000000, .size = 0x1000, .irq = 4}}},
                 "IRQ 4");
  expect_refused({.vcpus = 1, .virtio_mmio = {{.base = 0xd0000000, .size = 0x1000, .irq = 24}}},
                 "IRQ 24");
  expect_refused({.vcpus = 1,
                  .virtio_mmio = {{.base = 0xd0000000, .size = 0x1000, .irq = 5},
                                  {.base = 0xd0000800, .size = 0x1000, .irq = 6}}},
                 "overlaps slot 0");
  auto small = BuildAcpiTables(TwoDevices(), kRsdpAddr, kRsdpAddr + 0x100);
  ASSERT_FALSE(small);
  EXPECT_EQ(small.error().code, ErrorCode::kResourceExhausted);
}

TEST(AcpiTest, ManyDevicesStillFitAndUseLongPackageLengths) {
  AcpiConfig config{.vcpus = 1};
  for (uint32_t i = 0; i < 200; ++i) {
    config.virtio_mmio.push_back(
        {.base = 0xd0000000 + i * 0x1000ull, .size = 0x1000, .irq = 5 + i % 18});
  }
  auto tables = BuildAcpiTables(config);
  ASSERT_TRUE(tables) << tables.error().message;
  for (const auto& table : tables->tables) EXPECT_EQ(AcpiChecksum(table.bytes), 0);
}

TEST(AcpiTest, WritesTheTablesIntoGuestMemory) {
  auto memory = GuestMemory::CreateAnonymous(2 << 20);
  ASSERT_TRUE(memory);
  auto rsdp = WriteAcpiTables(*memory, TwoDevices());
  ASSERT_TRUE(rsdp) << rsdp.error().message;
  EXPECT_EQ(*rsdp, kRsdpAddr);
  EXPECT_EQ(*memory->ReadObject<uint64_t>(kRsdpAddr), 0x2052545020445352u);  // "RSD PTR "
  const uint64_t xsdt = *memory->ReadObject<uint64_t>(kRsdpAddr + 24);
  EXPECT_EQ(*memory->ReadObject<uint32_t>(xsdt), 0x54445358u);  // "XSDT"
  auto tiny = GuestMemory::CreateAnonymous(0x80000);            // ends below the BIOS area
  ASSERT_TRUE(tiny);
  EXPECT_FALSE(WriteAcpiTables(*tiny, TwoDevices()));
}

// Runs a shell command, returning its exit status and output.
int RunCommand(const std::string& command, std::string& output) {
  output.clear();
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(AcpiTest, IaslDisassemblesEveryTableCleanly) {
  std::string output;
  if (RunCommand("command -v iasl", output) != 0) {
    GTEST_SKIP() << "skipped: iasl (Debian package acpica-tools) is not installed";
  }
  auto tables = BuildAcpiTables(TwoDevices());
  ASSERT_TRUE(tables) << tables.error().message;
  char dir_template[] = "/tmp/vmm-acpi-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::filesystem::path dir = dir_template;
  // Not the RSDP: iasl 20200925 only disassembles binary tables that start with an SDT
  // header ("RSD PTR " is not a valid signature there). The other tests check it byte by byte
  // and the pvhboot guest checks its signature, revision and both checksums.
  std::vector<std::pair<std::string, std::vector<uint8_t>>> files;
  for (const auto& table : tables->tables) {
    std::string name = Signature(table.bytes);
    for (char& c : name) c = static_cast<char>(std::tolower(c));
    files.emplace_back(name, table.bytes);
  }
  std::map<std::string, std::string> disassembled;
  for (const auto& [name, bytes] : files) {
    const std::filesystem::path binary = dir / (name + ".dat");
    std::ofstream(binary, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    int status = RunCommand("cd " + dir.string() + " && iasl -d " + binary.string(), output);
    EXPECT_EQ(status, 0) << name << ":\n" << output;
    EXPECT_THAT(output, Not(HasSubstr("rror"))) << name << ":\n" << output;
    EXPECT_THAT(output, Not(HasSubstr("arning"))) << name << ":\n" << output;
    const std::string text = ReadText(dir / (name + ".dsl"));
    EXPECT_THAT(text, Not(HasSubstr("ncorrect"))) << name << ":\n" << text;
    EXPECT_THAT(text, Not(HasSubstr("Invalid"))) << name << ":\n" << text;
    disassembled[name] = text;
  }
  EXPECT_THAT(disassembled["facp"], HasSubstr("Hardware Reduced (V5) : 1"));
  EXPECT_THAT(disassembled["apic"], HasSubstr("Processor Local APIC"));
  const std::string& dsdt = disassembled["dsdt"];
  EXPECT_THAT(dsdt, HasSubstr("Device (V000)"));
  EXPECT_THAT(dsdt, HasSubstr("Device (V001)"));
  EXPECT_THAT(dsdt, HasSubstr("Name (_HID, \"LNRO0005\")"));
  EXPECT_THAT(dsdt, HasSubstr("0xD0001000"));
  EXPECT_THAT(dsdt, HasSubstr("0xD0002000"));
  EXPECT_THAT(dsdt, HasSubstr("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n"
                              "                {\n                    0x00000005,"));
  EXPECT_THAT(dsdt, HasSubstr("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n"
                              "                {\n                    0x00000006,"));
  EXPECT_THAT(dsdt, HasSubstr("EisaId (\"PNP0501\")"));
  if (!HasFailure()) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tartarus::vmm

#include "runtime/microvm_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tartarus::runtime {
namespace {

using ::testing::HasSubstr;

TEST(MicrovmBackend, ReasonNamesWhatTheHostLacks) {
  KvmHostFacts no_kvm{.dev_kvm_usable = false, .dev_kvm_error = "No such file or directory"};
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("/dev/kvm did not open"));
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("No such file or directory"));

  KvmHostFacts pvm{.dev_kvm_usable = true, .pvm = true, .hardware_virt = false};
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("PVM"));
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("--runtime gvisor"));

  KvmHostFacts hardware{.dev_kvm_usable = true, .pvm = false, .hardware_virt = true};
  EXPECT_EQ(MicrovmUnavailableReason(hardware), "");
}

// On this host: the backend exists, and says why it cannot run here (never a crash, never a
// silent fallback to another backend).
TEST(MicrovmBackend, RefusesWithAReasonWhereItCannotRun) {
  auto backend = MakeBackend("microvm", {.state_dir = "/tmp/tartarus-microvm-test"});
  ASSERT_TRUE(backend) << backend.error().message;
  EXPECT_EQ((*backend)->Name(), "microvm");
  auto facts = ReadKvmHostFacts();
  auto available = (*backend)->CheckAvailable();
  // The guest side is not built yet: no host passes today. The reason must be the host's
  // when the host is what lacks.
  ASSERT_FALSE(available);
  EXPECT_EQ(available.error().code, ErrorCode::kFailedPrecondition);
  std::string host_reason = MicrovmUnavailableReason(facts);
  if (!host_reason.empty()) {
    EXPECT_EQ(available.error().message, host_reason);
  }
  auto started = (*backend)->Start({.id = "microvm-test"});
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().message, available.error().message);
}

}  // namespace
}  // namespace tartarus::runtime

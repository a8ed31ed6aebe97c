#include "runtime/microvm_backend.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/unique_fd.h"

namespace tartarus::runtime {
namespace {

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

class MicrovmBackend final : public Backend {
 public:
  explicit MicrovmBackend(RuntimeConfig config) : config_(std::move(config)) {}

  std::string_view Name() const override { return "microvm"; }

  Status CheckAvailable() const override {
    if (std::string reason = MicrovmUnavailableReason(ReadKvmHostFacts()); !reason.empty()) {
      return Fail(ErrorCode::kFailedPrecondition, reason);
    }
    std::string vmm = SelfDir() + "/tartarus-vmm";
    if (access(vmm.c_str(), X_OK) != 0) {
      return Fail(ErrorCode::kFailedPrecondition,
                  "the microvm backend needs tartarus-vmm next to tartarus (" + vmm + ")");
    }
    return Fail(ErrorCode::kFailedPrecondition,
                "the microvm backend cannot start sandboxes yet: its guest side (a kernel from "
                "scripts/fetch-guest-kernel.sh, an initramfs with the agent and templates as ext4 "
                "images) is still being built (docs/vmm.md); use --runtime gvisor meanwhile");
  }

  Result<std::unique_ptr<Sandbox>> Start(const SandboxSpec&) override {
    TRY(CheckAvailable());
    return Fail(ErrorCode::kFailedPrecondition, "the microvm backend is not available");
  }

 private:
  RuntimeConfig config_;
};

}  // namespace

KvmHostFacts ReadKvmHostFacts() {
  KvmHostFacts facts;
  UniqueFd kvm(open("/dev/kvm", O_RDWR | O_CLOEXEC));
  facts.dev_kvm_usable = kvm.Get() >= 0;
  if (!facts.dev_kvm_usable) facts.dev_kvm_error = std::strerror(errno);
  facts.pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::string flag;
    while (words >> flag)
      facts.hardware_virt = facts.hardware_virt || flag == "vmx" || flag == "svm";
    break;
  }
  return facts;
}

std::string MicrovmUnavailableReason(const KvmHostFacts& facts) {
  if (!facts.dev_kvm_usable) {
    return "the microvm backend needs KVM: /dev/kvm did not open (" + facts.dev_kvm_error +
           "); run on a host with hardware virtualization and the kvm_intel or kvm_amd module";
  }
  if (facts.pvm && !facts.hardware_virt) {
    return "the microvm backend needs hardware virtualization: this host's KVM is PVM "
           "(kvm_pvm loaded, no vmx or svm in /proc/cpuinfo), on which a Linux guest does not "
           "boot in useful time; use --runtime gvisor or container here (docs/vmm.md)";
  }
  return "";
}

std::unique_ptr<Backend> MakeMicrovmBackend(const RuntimeConfig& config) {
  return std::make_unique<MicrovmBackend>(config);
}

}  // namespace tartarus::runtime

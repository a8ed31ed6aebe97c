// tartarus-vmm snapshot restore against a cold boot of the same guest, in the same run.
// The guest (src/vmm/snapshot/counter.s) programs the PIC and the PIT at 1 kHz and prints a
// line per tick. It runs 20 lines in 256 MiB, is snapshotted to a state file and a memory file,
// and then, interleaved:
//   restore: RestoreFromFiles (memory mapped MAP_PRIVATE, all KVM state set back), timed to
//            "ready to run" (the target: under 5 ms here), then to its next line;
//   peer:    a cold boot of the same guest to its first line.
//
//   vmm_snapshot_bench [--runs N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "vmm/snapshot/counter_vm.h"
#include "vmm/snapshot/vstate.h"

using namespace tartarus;
using namespace tartarus::vmm;
using namespace tartarus::vmm::snapshot;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kGuestBytes = 256ull << 20;
constexpr auto kTimeout = std::chrono::seconds(20);

double Ms(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--runs") {
      runs = std::max(1, std::atoi(argv[i + 1]));
    } else {
      std::fprintf(stderr, "usage: vmm_snapshot_bench [--runs N]\n");
      return 2;
    }
  }
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("skipped: /dev/kvm is not usable\n");
    return 0;
  }
  char pattern[] = "/tmp/tartarus-snapshot-bench-XXXXXX";
  if (!mkdtemp(pattern)) {
    std::perror("mkdtemp");
    return 1;
  }
  std::string dir = pattern;
  std::string state_path = dir + "/vm.state", memory_path = dir + "/vm.mem";
  auto fail = [&](const std::string& what, const Error& error) {
    std::fprintf(stderr, "vmm_snapshot_bench: %s: %s\n", what.c_str(), error.message.c_str());
    std::filesystem::remove_all(dir);
    return 1;
  };
  {
    auto original = BootCounterVm(TARTARUS_SNAPSHOT_GUEST, kGuestBytes);
    if (!original) return fail("boot", original.error());
    if (auto ran = RunLines(original->vcpus[0], 20, kTimeout); !ran)
      return fail("run", ran.error());
    if (auto saved = SnapshotToFiles(*original, state_path, memory_path); !saved) {
      return fail("snapshot", saved.error());
    }
  }
  std::vector<double> load, restore_line, cold_line;
  for (int i = 0; i < runs; ++i) {
    auto start = Clock::now();
    auto restored = RestoreFromFiles(state_path, memory_path);
    auto ready = Clock::now();
    if (!restored) return fail("restore", restored.error());
    auto line = RunLines(restored->vcpus[0], 1, kTimeout);
    if (!line) return fail("run after restore", line.error());
    load.push_back(Ms(start, ready));
    restore_line.push_back(Ms(start, Clock::now()));

    auto cold_start = Clock::now();
    auto cold = BootCounterVm(TARTARUS_SNAPSHOT_GUEST, kGuestBytes);
    if (!cold) return fail("cold boot", cold.error());
    auto first = RunLines(cold->vcpus[0], 1, kTimeout);
    if (!first) return fail("cold run", first.error());
    cold_line.push_back(Ms(cold_start, Clock::now()));
  }
  std::filesystem::remove_all(dir);
  std::printf("runs: %d, 256 MiB guest; ms, median (p95)\n\n", runs);
  std::printf(
      "| measure | snapshot restore | cold boot (peer) | boot / restore |\n|---|---|---|---|\n");
  std::printf("| load: restore until ready to run | %.2f (%.2f) | | |\n", Percentile(load, 0.5),
              Percentile(load, 0.95));
  std::printf("| until the guest's next line | %.2f (%.2f) | %.2f (%.2f) | %.1fx |\n",
              Percentile(restore_line, 0.5), Percentile(restore_line, 0.95),
              Percentile(cold_line, 0.5), Percentile(cold_line, 0.95),
              Percentile(cold_line, 0.5) / Percentile(restore_line, 0.5));
  return 0;
}

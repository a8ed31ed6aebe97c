// tartarus-vmm start-up against QEMU's microvm machine, in the same run, on the same guest:
// bench/guests/pvh_hello.s, an ELF with a PVH entry that writes "H\n" to the serial port and
// stops. Measured from just before spawning the VMM process: the first serial byte on its
// stdout (the guest ran its first instructions), and the process's exit.
// Target (issue 4): tartarus-vmm at least 10x faster than QEMU to the first serial byte.
//
// Then memory overhead: each VMM runs a guest that idles with interrupts on
// (bench/guests/pvh_idle.s) in 128 MiB, and its resident memory outside the guest's RAM mapping is
// read from /proc/PID/smaps (target: under 5 MiB per VM, as Firecracker promises).
//
//   vmm_start_bench [--runs N] [--vmm PATH] [--qemu PATH]
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
  double first_byte_ms = -1;
  double exit_ms = -1;
  bool ok = false;
};

// Spawns argv with stdout on a pipe; times the first byte and the exit.
Sample RunOnce(const std::vector<std::string>& argv) {
  Sample s;
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) return s;
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, devnull, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  auto start = Clock::now();
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  close(devnull);
  if (rc != 0) {
    close(out[0]);
    return s;
  }
  char buf[256];
  std::string got;
  pollfd pfd{out[0], POLLIN, 0};
  while (poll(&pfd, 1, 10000) > 0) {
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    if (s.first_byte_ms < 0) {
      s.first_byte_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    }
    got.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  s.exit_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  s.ok = got.find('H') != std::string::npos;
  return s;
}

// Resident KiB of a process outside its mappings of exactly `guest_bytes` (the guest's RAM).
long OverheadKib(pid_t pid, uint64_t guest_bytes) {
  std::ifstream smaps("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  long total = 0;
  bool guest = false;
  while (std::getline(smaps, line)) {
    unsigned long start = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &start, &end) == 2 && line.find(':') > 8) {
      guest = end - start == guest_bytes;
      continue;
    }
    long kib = 0;
    if (!guest && std::sscanf(line.c_str(), "Rss: %ld kB", &kib) == 1) total += kib;
  }
  return total;
}

// Starts argv (output discarded), waits for it to settle, reads its overhead, kills it.
long MeasureOverheadKib(const std::vector<std::string>& argv, uint64_t guest_bytes) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  long kib = OverheadKib(pid, guest_bytes);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return kib;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 30;
  std::string vmm = TARTARUS_VMM_BIN;
  std::string qemu = "/usr/bin/qemu-system-x86_64";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--runs") {
      runs = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--vmm") {
      vmm = argv[i + 1];
    } else if (flag == "--qemu") {
      qemu = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: vmm_start_bench [--runs N] [--vmm PATH] [--qemu PATH]\n");
      return 2;
    }
  }
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    std::printf("skipped: /dev/kvm is not usable\n");
    return 0;
  }
  if (access(qemu.c_str(), X_OK) != 0) {
    std::printf("skipped: no peer: %s is missing (apt-get install qemu-system-x86)\n",
                qemu.c_str());
    return 0;
  }
  std::string guest = TARTARUS_BENCH_GUEST;
  std::vector<std::string> ours = {vmm, "--kernel", guest, "--mem-mib", "128"};
  // QEMU's microvm machine as its documentation suggests for fast boots; -cpu host fails on
  // PVM hosts (it sets MSR 0x10a), so the CPU model is the default one without extras.
  std::vector<std::string> peer = {qemu,
                                   "-M",
                                   "microvm",
                                   "-nodefaults",
                                   "-no-user-config",
                                   "-nographic",
                                   "-serial",
                                   "stdio",
                                   "-enable-kvm",
                                   "-cpu",
                                   "qemu64",
                                   "-m",
                                   "128",
                                   "-kernel",
                                   guest,
                                   "-device",
                                   "isa-debug-exit,iobase=0xf4,iosize=0x04"};
  std::vector<double> ours_first, ours_exit, peer_first, peer_exit;
  int failures = 0;
  for (int i = 0; i < runs; ++i) {  // interleaved, so both see the same machine
    Sample a = RunOnce(ours);
    Sample b = RunOnce(peer);
    if (!a.ok || !b.ok) {
      ++failures;
      continue;
    }
    ours_first.push_back(a.first_byte_ms);
    ours_exit.push_back(a.exit_ms);
    peer_first.push_back(b.first_byte_ms);
    peer_exit.push_back(b.exit_ms);
  }
  if (ours_first.empty()) {
    std::fprintf(stderr, "vmm_start_bench: no run printed the guest's byte (%d failures)\n",
                 failures);
    return 1;
  }
  std::printf("runs: %zu (failed: %d); ms, median and p95\n\n", ours_first.size(), failures);
  std::printf(
      "| measure | tartarus-vmm | QEMU microvm | QEMU / tartarus-vmm |\n|---|---|---|---|\n");
  auto row = [](const char* name, const std::vector<double>& a, const std::vector<double>& b) {
    std::printf("| %s | %.2f (p95 %.2f) | %.2f (p95 %.2f) | %.1fx |\n", name, Percentile(a, 0.5),
                Percentile(a, 0.95), Percentile(b, 0.5), Percentile(b, 0.95),
                Percentile(b, 0.5) / Percentile(a, 0.5));
  };
  row("process start to the first serial byte", ours_first, peer_first);
  row("process start to exit", ours_exit, peer_exit);

  const uint64_t guest_bytes = 128ull << 20;
  std::string idle = TARTARUS_IDLE_GUEST;
  std::vector<std::string> ours_idle = {vmm, "--kernel", idle, "--mem-mib", "128"};
  std::vector<std::string> peer_idle = peer;
  peer_idle[std::find(peer_idle.begin(), peer_idle.end(), guest) - peer_idle.begin()] = idle;
  std::vector<double> ours_kib, peer_kib;
  for (int i = 0; i < 3; ++i) {
    ours_kib.push_back(static_cast<double>(MeasureOverheadKib(ours_idle, guest_bytes)));
    peer_kib.push_back(static_cast<double>(MeasureOverheadKib(peer_idle, guest_bytes)));
  }
  std::printf(
      "\n| resident memory outside guest RAM (128 MiB guest, idle) | tartarus-vmm | QEMU "
      "microvm |\n|---|---|---|\n| MiB, median of 3 | %.1f | %.1f |\n",
      Percentile(ours_kib, 0.5) / 1024, Percentile(peer_kib, 0.5) / 1024);
  return 0;
}

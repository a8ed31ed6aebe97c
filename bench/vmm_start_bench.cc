// tartarus-vmm start-up against QEMU's microvm machine, in the same run, on the same guest:
// bench/guests/pvh_hello.s, an ELF with a PVH entry that writes "H\n" to the serial port and
// stops. Measured from just before spawning the VMM process: the first serial byte on its
// stdout (the guest ran its first instructions), and the process's exit.
// Target (issue 4): tartarus-vmm at least 10x faster than QEMU to the first serial byte.
//
//   vmm_start_bench [--runs N] [--vmm PATH] [--qemu PATH]
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
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
  return 0;
}

// Sandbox start-up benchmark: `tartarus run` against `runc run` and `runsc run` of the same
// root filesystem, in the same run, reporting median, p95 and the ratio; then sandboxes
// started per second with 2 and 8 concurrent clients. Needs root and built templates.
//
//   build/bin/sandbox_startup_bench [--runs N] [--state-dir DIR] [--seconds S]
//                                   [--tartarus PATH]   (another build, for before/after)
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/subprocess.h"

namespace {

using Clock = std::chrono::steady_clock;
using tartarus::RunCommand;

struct Stats {
  double median_ms = 0, p95_ms = 0;
  int failures = 0;
};

double RunOnceMs(const std::vector<std::string>& argv, bool* ok) {
  auto start = Clock::now();
  auto r = RunCommand(argv, std::chrono::seconds(120));
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  *ok = r && r->status.Success();
  if (!*ok) {
    std::fprintf(stderr, "failed: %s: %s\n", argv[0].c_str(),
                 r ? r->err.substr(0, 300).c_str() : r.error().message.c_str());
  }
  return ms;
}

// Alternates the commands run by run so that drift on the machine hits all alike.
std::vector<Stats> Measure(const std::vector<std::vector<std::string>>& commands, int runs) {
  std::vector<std::vector<double>> samples(commands.size());
  std::vector<Stats> stats(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {  // warm-up
    bool ok;
    RunOnceMs(commands[i], &ok);
  }
  for (int run = 0; run < runs; ++run) {
    for (size_t i = 0; i < commands.size(); ++i) {
      bool ok;
      double ms = RunOnceMs(commands[i], &ok);
      if (ok)
        samples[i].push_back(ms);
      else
        stats[i].failures++;
    }
  }
  for (size_t i = 0; i < commands.size(); ++i) {
    auto& s = samples[i];
    if (s.empty()) continue;
    std::sort(s.begin(), s.end());
    stats[i].median_ms = s[s.size() / 2];
    stats[i].p95_ms = s[std::min(s.size() - 1, s.size() * 95 / 100)];
  }
  return stats;
}

// Sandboxes completed per second by `clients` threads each running `argv` in a loop.
double Throughput(const std::vector<std::string>& argv, int clients, double seconds) {
  std::atomic<int> done{0};
  auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      while (Clock::now() < deadline) {
        bool ok;
        RunOnceMs(argv, &ok);
        if (ok) done++;
      }
    });
  }
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  return done / elapsed;
}

// An OCI bundle for the plain runtimes: the template's tree as a read-only root.
std::string MakeBundle(const std::string& dir, const std::string& rootfs,
                       const std::vector<std::string>& args) {
  std::filesystem::create_directories(dir);
  auto r = RunCommand({"runc", "spec", "--bundle", dir});
  if (!r || !r->status.Success()) return "";
  std::ifstream in(dir + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["process"]["terminal"] = false;
  config["process"]["args"] = args;
  config["root"]["path"] = rootfs;
  config["root"]["readonly"] = true;
  std::ofstream(dir + "/config.json") << config.dump(2);
  return dir;
}

std::vector<std::string> Runc(const std::string& runtime, const std::string& bundle) {
  // A fresh container id per run comes from the shell's $$.
  std::string extra = runtime == "runsc" ? " --platform=ptrace --network=none" : "";
  return {"sh", "-c",
          runtime + extra + " run --bundle " + bundle + " bench-$$ </dev/null >/dev/null"};
}

void Row(const char* name, const Stats& ours, const Stats& peer) {
  std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.2f |\n", name, ours.median_ms, ours.p95_ms,
              peer.median_ms, peer.p95_ms,
              peer.median_ms > 0 ? ours.median_ms / peer.median_ms : 0);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 30;
  double seconds = 10;
  std::string state_dir = "/var/lib/tartarus";
  std::string tartarus_bin = TARTARUS_BIN;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--runs")
      runs = std::stoi(argv[i + 1]);
    else if (flag == "--seconds")
      seconds = std::stod(argv[i + 1]);
    else if (flag == "--state-dir")
      state_dir = argv[i + 1];
    else if (flag == "--tartarus")
      tartarus_bin = argv[i + 1];
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "skipped: the benchmark needs root\n");
    return 0;
  }
  std::string base = state_dir + "/templates/base/rootfs";
  std::string pyds = state_dir + "/templates/python-ds/rootfs";
  if (!std::filesystem::exists(base) || !std::filesystem::exists(pyds)) {
    std::fprintf(stderr, "build the templates first: tartarus template build base python-ds\n");
    return 1;
  }
  // runc refuses a root path that goes through a symlink.
  base = std::filesystem::canonical(base).string();
  pyds = std::filesystem::canonical(pyds).string();
  std::string tmp = "/tmp/tartarus-bench-" + std::to_string(getpid());
  std::string true_bundle = MakeBundle(tmp + "/true", base, {"/bin/true"});
  std::string py_bundle =
      MakeBundle(tmp + "/py", pyds, {"python3", "-c", "print('Hello from the Underworld')"});
  auto tartarus = [&](const std::string& runtime, const std::string& tpl,
                      std::vector<std::string> cmd) {
    std::vector<std::string> argv = {tartarus_bin, "--state-dir", state_dir,    "run", "--rm", "-q",
                                     "--runtime",  runtime,       "--template", tpl,   "--"};
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    return argv;
  };
  std::vector<std::string> py = {"python3", "-c", "print('Hello from the Underworld')"};

  std::printf("tartarus: %s\nruns per case: %d (median and p95 of wall time, ms)\n\n",
              tartarus_bin.c_str(), runs);
  std::printf("| case | tartarus median | tartarus p95 | peer median | peer p95 | ratio |\n");
  std::printf("|---|---|---|---|---|---|\n");
  auto c = Measure({tartarus("container", "base", {"true"}), Runc("runc", true_bundle)}, runs);
  Row("`true`, container vs `runc run`", c[0], c[1]);
  auto p = Measure({tartarus("container", "python-ds", py), Runc("runc", py_bundle)}, runs);
  Row("python-ds hello, container vs `runc run`", p[0], p[1]);
  int gruns = std::max(5, runs / 3);
  auto g = Measure({tartarus("gvisor", "base", {"true"}), Runc("runsc", true_bundle)}, gruns);
  Row("`true`, gvisor vs `runsc run`", g[0], g[1]);
  auto gp = Measure({tartarus("gvisor", "python-ds", py), Runc("runsc", py_bundle)}, gruns);
  Row("python-ds hello, gvisor vs `runsc run`", gp[0], gp[1]);

  std::printf("\n| concurrent clients | tartarus sandboxes/s | runc run/s | ratio |\n");
  std::printf("|---|---|---|---|\n");
  for (int clients : {2, 8}) {
    double ours = Throughput(tartarus("container", "base", {"true"}), clients, seconds);
    double peer = Throughput(Runc("runc", true_bundle), clients, seconds);
    std::printf("| %d | %.1f | %.1f | %.2f |\n", clients, ours, peer, peer > 0 ? ours / peer : 0);
  }
  std::filesystem::remove_all(tmp);
  return 0;
}

// The Tartarus runtime: phase timings (TARTARUS_TRACE_PHASES=1).
#include "runtime/phase_trace.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace tartarus::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// Set during static initialisation, so "+N ms" counts from about the exec.
const Clock::time_point kOrigin = Clock::now();
void TraceExit();
const bool kEnabled = [] {
  const char* value = getenv("TARTARUS_TRACE_PHASES");
  bool enabled = value && *value && std::strcmp(value, "0") != 0;
  // The last line: how long the process ran until exit() and its CPU time in total.
  if (enabled) atexit(TraceExit);
  return enabled;
}();

const Clock::duration kZero{};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void Emit(std::string_view name, const Clock::duration* duration, int64_t cpu_ns) {
  char line[256];
  int n;
  double at = Ms(Clock::now() - kOrigin);
  int len = static_cast<int>(std::min<size_t>(name.size(), 120));
  if (duration) {
    n = std::snprintf(line, sizeof line, "tartarus[%d] +%8.3f ms  %.*s  %.3f ms  (cpu %.3f ms)\n",
                      getpid(), at, len, name.data(), Ms(*duration), cpu_ns / 1e6);
  } else {
    n = std::snprintf(line, sizeof line, "tartarus[%d] +%8.3f ms  %.*s\n", getpid(), at, len,
                      name.data());
  }
  // One write per line: lines from several threads or processes never interleave.
  if (n > 0) (void)!write(2, line, static_cast<size_t>(std::min<int>(n, sizeof line - 1)));
}

void TraceExit() { Emit("exit", &kZero, ProcessCpuNs()); }

}  // namespace

bool PhaseTraceEnabled() { return kEnabled; }

int64_t ProcessCpuNs() {
  if (!kEnabled) return 0;
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void TracePhase(std::string_view name, Clock::duration duration, int64_t cpu_ns) {
  if (kEnabled) Emit(name, &duration, cpu_ns);
}

void TraceMark(std::string_view name) {
  if (kEnabled) Emit(name, nullptr, 0);
}

}  // namespace tartarus::runtime

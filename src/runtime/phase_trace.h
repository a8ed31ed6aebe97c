// The Tartarus runtime: phase timings. With TARTARUS_TRACE_PHASES=1 in the environment,
// the run path (CLI, supervisor, backend, Lethe) prints one line per phase to stderr:
//
//   tartarus[1234] +  12.345 ms  lethe.mount  0.840 ms  (cpu 0.312 ms)
//
// "+12.345 ms" is the time since the process started tracing (static initialisation,
// i.e. right after exec), then the phase's own duration, and the CPU time this process
// (all its threads) used meanwhile: wall time well above CPU time is waiting (for a
// child, the disk, a lock or a CPU). Off (the default), a phase costs one load of a bool.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

namespace tartarus::runtime {

bool PhaseTraceEnabled();
// CPU time used by this process so far, in nanoseconds (0 when tracing is off).
int64_t ProcessCpuNs();
// Prints a phase that took `duration` (wall) and `cpu_ns` (CPU) and ended now.
void TracePhase(std::string_view name, std::chrono::steady_clock::duration duration,
                int64_t cpu_ns);
// Prints a point in time (no duration), e.g. "main exec started".
void TraceMark(std::string_view name);

// Times its own scope; Stop() ends the phase early.
class PhaseTimer {
 public:
  explicit PhaseTimer(std::string_view name) : name_(name), enabled_(PhaseTraceEnabled()) {
    if (enabled_) {
      start_ = std::chrono::steady_clock::now();
      cpu_start_ns_ = ProcessCpuNs();
    }
  }
  ~PhaseTimer() { Stop(); }
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

  void Stop() {
    if (!enabled_) return;
    enabled_ = false;
    TracePhase(name_, std::chrono::steady_clock::now() - start_, ProcessCpuNs() - cpu_start_ns_);
  }

 private:
  std::string_view name_;  // a literal: phases are named in the code
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
  int64_t cpu_start_ns_ = 0;
};

}  // namespace tartarus::runtime

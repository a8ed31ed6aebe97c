#include "node/node_lease.h"

#include <time.h>

#include <charconv>
#include <fstream>

#include "common/file_util.h"

namespace tartarus::node {

int64_t MonotonicMs() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1000000;
}

Status WriteNodeLease(const std::string& path, int64_t deadline_monotonic_ms) {
  return WriteFileAtomic(path, std::to_string(deadline_monotonic_ms) + "\n", Durability::kNoFsync,
                         0600);
}

std::string NodeLeaseLapsed(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "the node lease file " + path + " is missing";
  std::string text;
  std::getline(in, text, '\n');
  int64_t deadline = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), deadline);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return "the node lease file " + path + " is garbled";
  }
  int64_t now = MonotonicMs();
  if (now < deadline) return "";
  return "the node's lease lapsed " + std::to_string(now - deadline) +
         " ms ago (its agent stopped renewing it)";
}

}  // namespace tartarus::node

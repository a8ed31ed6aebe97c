// Moirai (the scheduler): feasibility, scoring and best-of-K placement. Nodes are
// considered in id order and the RNG is consumed only by our own sampling loop, so a
// placement depends on nothing but the inputs and the RNG state.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <limits>

#include "common/units.h"

namespace tartarus::scheduler {
namespace {

// Why a node is out, in the order checked; the first failing check is the node's reason.
enum class Misfit { kNone, kState, kRuntime, kSelector, kCpu, kMemory };

Misfit Check(const PlacementRequest& request, const NodeView& node) {
  if (node.state != "ready") return Misfit::kState;
  if (!request.runtime.empty() && std::find(node.runtimes.begin(), node.runtimes.end(),
                                            request.runtime) == node.runtimes.end()) {
    return Misfit::kRuntime;
  }
  for (const auto& [key, value] : request.selector) {
    auto label = node.labels.find(key);
    if (label == node.labels.end() || label->second != value) return Misfit::kSelector;
  }
  if (node.millicpus - node.reserved_millicpus < request.millicpus) return Misfit::kCpu;
  if (node.memory_bytes - node.reserved_memory_bytes < request.memory_bytes) return Misfit::kMemory;
  return Misfit::kNone;
}

std::string Cpus(int64_t millicpus) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(millicpus) / 1000.0);
  return buf;
}

std::string Bytes(int64_t bytes) {
  return FormatBytes(static_cast<uint64_t>(std::max<int64_t>(bytes, 0)));
}

std::string Selector(const std::map<std::string, std::string>& selector) {
  std::string out;
  for (const auto& [key, value] : selector) out += (out.empty() ? "" : ",") + key + "=" + value;
  return out;
}

// The phrase after the count: "2 lack memory (needs 4G)", "1 lacks memory (needs 4G)".
std::string Phrase(Misfit misfit, const PlacementRequest& request, int64_t count,
                   const std::string& state) {
  bool one = count == 1;
  switch (misfit) {
    case Misfit::kState:
      return state.empty() ? std::string(one ? "is not ready" : "are not ready") : state;
    case Misfit::kRuntime:
      return std::string(one ? "lacks" : "lack") + " runtime " + request.runtime;
    case Misfit::kSelector:
      return std::string(one ? "doesn't" : "don't") + " match selector " +
             Selector(request.selector);
    case Misfit::kCpu:
      return std::string(one ? "lacks" : "lack") + " CPU (needs " + Cpus(request.millicpus) + ")";
    case Misfit::kMemory:
      return std::string(one ? "lacks" : "lack") + " memory (needs " + Bytes(request.memory_bytes) +
             ")";
    case Misfit::kNone:
      break;
  }
  return "";
}

// Free share of one resource after placement, in [0, 1].
double ShareLeft(int64_t capacity, int64_t reserved, int64_t requested) {
  if (capacity <= 0) return 0;
  double left =
      static_cast<double>(capacity - reserved - requested) / static_cast<double>(capacity);
  return std::clamp(left, 0.0, 1.0);
}

}  // namespace

std::string Infeasibility(const PlacementRequest& request, const NodeView& node) {
  Misfit misfit = Check(request, node);
  if (misfit == Misfit::kNone) return "";
  std::string state = misfit == Misfit::kState ? "is " + node.state : "";
  if (misfit == Misfit::kState && node.state.empty()) state = "";
  return node.id + " " + Phrase(misfit, request, 1, state);
}

double Score(const PlacementRequest& request, const NodeView& node) {
  double cpu = ShareLeft(node.millicpus, node.reserved_millicpus, request.millicpus);
  double memory = ShareLeft(node.memory_bytes, node.reserved_memory_bytes, request.memory_bytes);
  // Mean free share, minus a penalty for leaving one resource stranded next to the other.
  double score = (cpu + memory) / 2 - std::abs(cpu - memory) / 4;
  if (!request.template_name.empty() && std::find(node.templates.begin(), node.templates.end(),
                                                  request.template_name) != node.templates.end()) {
    score += kTemplateAffinityBonus;
  }
  return score;
}

std::expected<std::string, std::string> Place(const PlacementRequest& request,
                                              const std::vector<NodeView>& nodes,
                                              std::mt19937_64& rng, int k) {
  if (request.millicpus < 0 || request.memory_bytes < 0) {
    return std::unexpected("invalid request: negative CPU or memory");
  }
  std::vector<const NodeView*> sorted;
  sorted.reserve(nodes.size());
  for (const NodeView& node : nodes) sorted.push_back(&node);
  std::sort(sorted.begin(), sorted.end(),
            [](const NodeView* a, const NodeView* b) { return a->id < b->id; });

  std::vector<const NodeView*> feasible;
  // Counts per reason; states are counted each under their own name ("1 cordoned").
  std::map<Misfit, int64_t> misfits;
  std::map<std::string, int64_t> states;
  for (const NodeView* node : sorted) {
    Misfit misfit = Check(request, *node);
    if (misfit == Misfit::kNone) {
      feasible.push_back(node);
    } else if (misfit == Misfit::kState) {
      ++states[node->state];
    } else {
      ++misfits[misfit];
    }
  }

  if (feasible.empty()) {
    std::string reason = "0/" + std::to_string(nodes.size()) + " nodes can run it";
    if (nodes.empty()) return std::unexpected(reason + ": no nodes registered");
    // Most common reason first; ties in check order (states by name first).
    std::vector<std::pair<int64_t, std::string>> parts;
    for (const auto& [state, count] : states) {
      parts.emplace_back(count, Phrase(Misfit::kState, request, count, state));
    }
    for (const auto& [misfit, count] : misfits) {
      parts.emplace_back(count, Phrase(misfit, request, count, ""));
    }
    std::stable_sort(parts.begin(), parts.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = 0; i < parts.size(); ++i) {
      reason += (i == 0 ? ": " : ", ") + std::to_string(parts[i].first) + " " + parts[i].second;
    }
    return std::unexpected(reason);
  }

  // Partial Fisher-Yates: the first `sample` entries become a uniform sample without
  // replacement. Our own loop, not std::shuffle, so every standard library agrees.
  size_t sample = k <= 0 ? feasible.size() : std::min(feasible.size(), static_cast<size_t>(k));
  if (sample < feasible.size()) {
    for (size_t i = 0; i < sample; ++i) {
      size_t j = i + static_cast<size_t>(rng() % (feasible.size() - i));
      std::swap(feasible[i], feasible[j]);
    }
  }
  const NodeView* best = nullptr;
  double best_score = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < sample; ++i) {
    double score = Score(request, *feasible[i]);
    if (score > best_score || (score == best_score && feasible[i]->id < best->id)) {
      best = feasible[i];
      best_score = score;
    }
  }
  return best->id;
}

}  // namespace tartarus::scheduler

// Moirai (the scheduler): pure placement of one sandbox on one node. Given the same
// nodes, request and RNG state it always picks the same node; the store and the
// scheduling loop (src/api) own everything that changes.
#pragma once

#include <cstdint>
#include <expected>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace tartarus::scheduler {

// A node as the scheduler sees it: capacity, what is already reserved on it (assigned
// and running jobs), and what it offers.
struct NodeView {
  std::string id, state;  // ready cordoned draining lost
  int64_t millicpus = 0, memory_bytes = 0, reserved_millicpus = 0, reserved_memory_bytes = 0;
  std::map<std::string, std::string> labels;
  std::vector<std::string> runtimes, templates;  // templates: already present on the node
};

struct PlacementRequest {
  int64_t millicpus = 0, memory_bytes = 0;
  std::string template_name, runtime;
  std::map<std::string, std::string> selector;  // every label must match
};

// Added to the score of a node that already holds the template (scores are in [0, 1]).
inline constexpr double kTemplateAffinityBonus = 0.25;

// Why a node cannot take the request, or empty when it can.
std::string Infeasibility(const PlacementRequest& request, const NodeView& node);

// Higher is better: the balanced free share left after placement, plus the affinity bonus.
double Score(const PlacementRequest& request, const NodeView& node);

// Feasible: state ready, runtime offered, selector labels all match, free >= requested
// for CPU and memory. Best of K: sample K feasible nodes (without replacement; all if
// fewer), the highest score wins, ties by id. No feasible node: a reason like
// "0/3 nodes can run it: 2 lack memory (needs 4G), 1 cordoned".
std::expected<std::string, std::string> Place(const PlacementRequest& request,
                                              const std::vector<NodeView>& nodes,
                                              std::mt19937_64& rng, int k = 2);

}  // namespace tartarus::scheduler

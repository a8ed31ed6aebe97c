// Moirai (the scheduler): feasibility per rule, the no-fit reasons, scoring, spreading
// under best-of-K, template affinity and determinism per seed.
#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace tartarus::scheduler {
namespace {

constexpr int64_t kGi = int64_t{1} << 30;

NodeView Node(std::string id, int64_t millicpus = 4000, int64_t memory = 8 * kGi) {
  NodeView node;
  node.id = std::move(id);
  node.state = "ready";
  node.millicpus = millicpus;
  node.memory_bytes = memory;
  node.runtimes = {"container", "gvisor"};
  node.labels = {{"zone", "a"}};
  return node;
}

PlacementRequest Request(int64_t millicpus = 1000, int64_t memory = kGi) {
  PlacementRequest request;
  request.millicpus = millicpus;
  request.memory_bytes = memory;
  request.runtime = "gvisor";
  request.template_name = "base";
  return request;
}

struct FeasibilityCase {
  std::string name;
  NodeView node;
  PlacementRequest request;
  std::string expected;  // Infeasibility(): "" when it fits
};

void PrintTo(const FeasibilityCase& c, std::ostream* out) { *out << c.name; }

class FeasibilityTest : public ::testing::TestWithParam<FeasibilityCase> {};

TEST_P(FeasibilityTest, Rule) {
  const FeasibilityCase& c = GetParam();
  EXPECT_EQ(Infeasibility(c.request, c.node), c.expected);
  std::mt19937_64 rng(1);
  auto placed = Place(c.request, {c.node}, rng);
  EXPECT_EQ(placed.has_value(), c.expected.empty());
}

NodeView With(NodeView node, auto change) {
  change(node);
  return node;
}

PlacementRequest WithRequest(PlacementRequest request, auto change) {
  change(request);
  return request;
}

INSTANTIATE_TEST_SUITE_P(
    Rules, FeasibilityTest,
    ::testing::Values(
        FeasibilityCase{"fits", Node("n1"), Request(), ""},
        FeasibilityCase{"exact fit",
                        With(Node("n1"),
                             [](NodeView& n) {
                               n.reserved_millicpus = 3000;
                               n.reserved_memory_bytes = 7 * kGi;
                             }),
                        Request(), ""},
        FeasibilityCase{"cordoned", With(Node("n1"), [](NodeView& n) { n.state = "cordoned"; }),
                        Request(), "n1 is cordoned"},
        FeasibilityCase{"draining", With(Node("n1"), [](NodeView& n) { n.state = "draining"; }),
                        Request(), "n1 is draining"},
        FeasibilityCase{"lost", With(Node("n1"), [](NodeView& n) { n.state = "lost"; }), Request(),
                        "n1 is lost"},
        FeasibilityCase{"runtime",
                        With(Node("n1"), [](NodeView& n) { n.runtimes = {"container"}; }),
                        Request(), "n1 lacks runtime gvisor"},
        FeasibilityCase{"any runtime",
                        With(Node("n1"), [](NodeView& n) { n.runtimes = {"container"}; }),
                        WithRequest(Request(), [](PlacementRequest& r) { r.runtime = ""; }), ""},
        FeasibilityCase{"selector match", Node("n1"),
                        WithRequest(Request(),
                                    [](PlacementRequest& r) {
                                      r.selector = {{"zone", "a"}};
                                    }),
                        ""},
        FeasibilityCase{"selector value", Node("n1"),
                        WithRequest(Request(),
                                    [](PlacementRequest& r) {
                                      r.selector = {{"zone", "b"}};
                                    }),
                        "n1 doesn't match selector zone=b"},
        FeasibilityCase{"selector missing", Node("n1"),
                        WithRequest(Request(),
                                    [](PlacementRequest& r) {
                                      r.selector = {{"zone", "a"}, {"gpu", "yes"}};
                                    }),
                        "n1 doesn't match selector gpu=yes,zone=a"},
        FeasibilityCase{"cpu", With(Node("n1"), [](NodeView& n) { n.reserved_millicpus = 3500; }),
                        Request(), "n1 lacks CPU (needs 1)"},
        FeasibilityCase{
            "memory", With(Node("n1"), [](NodeView& n) { n.reserved_memory_bytes = 7 * kGi + 1; }),
            Request(), "n1 lacks memory (needs 1G)"},
        FeasibilityCase{"overcommitted node",
                        With(Node("n1"), [](NodeView& n) { n.reserved_millicpus = 9000; }),
                        Request(0, 0), "n1 lacks CPU (needs 0)"}),
    [](const auto& info) {
      std::string name = info.param.name;
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(PlaceTest, ReasonCountsNodesLikeKubernetes) {
  std::vector<NodeView> nodes = {
      With(Node("a", 4000, 2 * kGi), [](NodeView&) {}),
      With(Node("b", 4000, 8 * kGi), [](NodeView& n) { n.reserved_memory_bytes = 6 * kGi; }),
      With(Node("c"), [](NodeView& n) { n.state = "cordoned"; }),
  };
  std::mt19937_64 rng(1);
  auto placed = Place(Request(1000, 4 * kGi), nodes, rng);
  ASSERT_FALSE(placed.has_value());
  EXPECT_EQ(placed.error(), "0/3 nodes can run it: 2 lack memory (needs 4G), 1 cordoned");
}

TEST(PlaceTest, ReasonListsEveryKind) {
  std::vector<NodeView> nodes = {
      With(Node("a"), [](NodeView& n) { n.state = "lost"; }),
      With(Node("b"), [](NodeView& n) { n.state = "draining"; }),
      With(Node("c"), [](NodeView& n) { n.runtimes = {}; }),
      With(Node("d"), [](NodeView& n) { n.labels = {}; }),
      With(Node("e"), [](NodeView& n) { n.reserved_millicpus = 4000; }),
      With(Node("f"), [](NodeView& n) { n.reserved_millicpus = 4000; }),
  };
  PlacementRequest request = Request(500);
  request.selector = {{"zone", "a"}};
  std::mt19937_64 rng(1);
  auto placed = Place(request, nodes, rng);
  ASSERT_FALSE(placed.has_value());
  EXPECT_EQ(placed.error(),
            "0/6 nodes can run it: 2 lack CPU (needs 0.5), 1 draining, 1 lost, 1 lacks runtime "
            "gvisor, 1 doesn't match selector zone=a");
}

TEST(PlaceTest, NoNodes) {
  std::mt19937_64 rng(1);
  auto placed = Place(Request(), {}, rng);
  ASSERT_FALSE(placed.has_value());
  EXPECT_EQ(placed.error(), "0/0 nodes can run it: no nodes registered");
}

TEST(PlaceTest, RejectsNegativeRequest) {
  std::mt19937_64 rng(1);
  EXPECT_FALSE(Place(Request(-1, 0), {Node("a")}, rng).has_value());
}

TEST(PlaceTest, OnlyFeasibleNodeWins) {
  std::vector<NodeView> nodes = {
      With(Node("a"), [](NodeView& n) { n.state = "cordoned"; }),
      With(Node("b"), [](NodeView& n) { n.runtimes = {"container"}; }),
      Node("c", 1000, kGi),
  };
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    EXPECT_EQ(Place(Request(), nodes, rng), "c");
  }
}

TEST(ScoreTest, PrefersFreeAndBalancedNodes) {
  PlacementRequest request = Request(1000, kGi);
  request.template_name = "";
  NodeView empty = Node("a");
  NodeView half = With(Node("b"), [](NodeView& n) {
    n.reserved_millicpus = 2000;
    n.reserved_memory_bytes = 4 * kGi;
  });
  NodeView lopsided = With(Node("c"), [](NodeView& n) { n.reserved_millicpus = 2000; });
  EXPECT_GT(Score(request, empty), Score(request, half));
  // Same mean free share as a node with both half used, but one resource nearly gone.
  NodeView skewed = With(Node("d"), [](NodeView& n) {
    n.reserved_millicpus = 3000;
    n.reserved_memory_bytes = 1 * kGi;
  });
  NodeView even = With(Node("e"), [](NodeView& n) {
    n.reserved_millicpus = 2000;
    n.reserved_memory_bytes = 3 * kGi;
  });
  EXPECT_GT(Score(request, even), Score(request, skewed));
  EXPECT_GT(Score(request, empty), Score(request, lopsided));
  NodeView zero = Node("z", 0, 0);
  EXPECT_EQ(Score(Request(0, 0), zero), 0);
}

TEST(PlaceTest, AllFeasibleWhenFewerThanKAndHighestScoreWins) {
  std::vector<NodeView> nodes = {
      With(Node("a"), [](NodeView& n) { n.reserved_millicpus = 3000; }),
      Node("b"),
  };
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    EXPECT_EQ(Place(Request(), nodes, rng, 2), "b");
    EXPECT_EQ(Place(Request(), nodes, rng, 5), "b");
  }
}

TEST(PlaceTest, TiesGoToTheSmallestId) {
  std::vector<NodeView> nodes = {Node("c"), Node("a"), Node("b")};
  std::mt19937_64 rng(3);
  EXPECT_EQ(Place(Request(), nodes, rng, 0), "a");  // k <= 0: every feasible node
}

TEST(PlaceTest, TemplateAffinityWinsOverSlightlyMoreFreeSpace) {
  std::vector<NodeView> nodes = {
      Node("a"),
      With(Node("b"),
           [](NodeView& n) {
             n.reserved_millicpus = 500;
             n.templates = {"base"};
           }),
  };
  std::mt19937_64 rng(1);
  EXPECT_EQ(Place(Request(), nodes, rng, 0), "b");
  // Without the template on b, the emptier node wins.
  PlacementRequest other = Request();
  other.template_name = "python-ds";
  EXPECT_EQ(Place(other, nodes, rng, 0), "a");
}

// Places `count` sandboxes one after another on the given nodes, reserving as it goes.
std::map<std::string, int> PlaceMany(std::vector<NodeView> nodes, int count, uint64_t seed, int k,
                                     PlacementRequest request = Request(100, 64 << 20)) {
  std::mt19937_64 rng(seed);
  std::map<std::string, int> placed;
  for (int i = 0; i < count; ++i) {
    auto id = Place(request, nodes, rng, k);
    if (!id) break;
    ++placed[*id];
    for (auto& node : nodes) {
      if (node.id == *id) {
        node.reserved_millicpus += request.millicpus;
        node.reserved_memory_bytes += request.memory_bytes;
      }
    }
  }
  return placed;
}

std::vector<NodeView> IdenticalNodes(int count) {
  std::vector<NodeView> nodes;
  for (int i = 0; i < count; ++i)
    nodes.push_back(Node("node-" + std::to_string(10 + i), 64000, 256 * kGi));
  return nodes;
}

TEST(PlaceTest, BestOfTwoSpreadsEvenly) {
  for (uint64_t seed : {1, 2, 3}) {
    auto placed = PlaceMany(IdenticalNodes(10), 200, seed, 2);
    ASSERT_EQ(placed.size(), 10u) << "every node gets work";
    auto [low, high] = std::minmax_element(placed.begin(), placed.end(),
                                           [](auto& a, auto& b) { return a.second < b.second; });
    EXPECT_LE(high->second - low->second, 3) << "seed " << seed;
  }
}

TEST(PlaceTest, BestOfOneIsRandomAndLessEven) {
  // k = 1 is plain random placement: it still reaches every node, but far less evenly
  // than best of 2 (which is the reason for K).
  int spread_random = 0, spread_best = 0;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    auto random = PlaceMany(IdenticalNodes(10), 200, seed, 1);
    auto best = PlaceMany(IdenticalNodes(10), 200, seed, 2);
    auto spread = [](const std::map<std::string, int>& m) {
      auto [low, high] = std::minmax_element(m.begin(), m.end(),
                                             [](auto& a, auto& b) { return a.second < b.second; });
      return high->second - low->second;
    };
    spread_random += spread(random);
    spread_best += spread(best);
  }
  EXPECT_GT(spread_random, spread_best);
}

TEST(PlaceTest, FillsToCapacityThenExplains) {
  std::vector<NodeView> nodes = {Node("a", 2000, 8 * kGi), Node("b", 2000, 8 * kGi)};
  auto placed = PlaceMany(nodes, 10, 7, 2, Request(1000, kGi));
  EXPECT_EQ(placed["a"], 2);
  EXPECT_EQ(placed["b"], 2);
}

TEST(PlaceTest, DeterministicPerSeedAndIndependentOfInputOrder) {
  std::vector<NodeView> nodes = IdenticalNodes(8);
  for (size_t i = 0; i < nodes.size(); ++i) nodes[i].reserved_millicpus = int64_t(i % 3) * 1000;
  std::vector<NodeView> reversed(nodes.rbegin(), nodes.rend());
  auto run = [](const std::vector<NodeView>& input, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::string> picks;
    for (int i = 0; i < 50; ++i) picks.push_back(Place(Request(), input, rng, 2).value_or("?"));
    return picks;
  };
  EXPECT_EQ(run(nodes, 42), run(nodes, 42));
  EXPECT_EQ(run(nodes, 42), run(reversed, 42));
  EXPECT_NE(run(nodes, 42), run(nodes, 43));
}

}  // namespace
}  // namespace tartarus::scheduler

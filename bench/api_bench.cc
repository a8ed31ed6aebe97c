// Control-plane benchmark: API requests per second (create, get, list) and sandboxes
// scheduled per second, against a real `tartarus olympus` process. No node agent runs, so
// sandboxes are only admitted, queued and placed (on registered nodes that never start
// them): this measures Olympus, Themis, Acheron and Moirai, not the runtimes.
//
// The peer in the same run is the API server's own floor: GET /healthz, which goes through
// the same HTTP stack, router and logging but touches no store. Ratios against it show what
// each operation adds; absolute numbers depend on the machine.
//
// Then the latency scheduling adds to a run: one client creates sandboxes one after another
// on an idle cluster, and the phase histograms Olympus exports (admit, queue = created until
// placed, place = Moirai's decision) give p50/p99 for exactly those requests.
//
//   api_bench [--seconds 3] [--clients 8] [--jobs 2000] [--store URL]
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <sstream>
#include <thread>

#include "../tests/cluster_util.h"

using namespace tartarus;
using namespace tartarus::testing;
using nlohmann::json;

namespace {

struct Options {
  int seconds = 3;
  int clients = 8;
  int jobs = 2000;
  std::string store;
};

struct Rate {
  double rps = 0;
  int64_t errors = 0;
  double p50_ms = 0, p99_ms = 0;  // per request, as the client saw it
};

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  size_t k = std::min(values.size() - 1, static_cast<size_t>(q * values.size()));
  std::nth_element(values.begin(), values.begin() + k, values.end());
  return values[k];
}

// `clients` threads, each with one keep-alive connection, call `op` for `seconds`.
Rate Measure(const Options& o, const std::string& endpoint, const std::string& token,
             const std::function<bool(http::Client&, int thread, int64_t i)>& op) {
  std::atomic<int64_t> done{0}, errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<std::vector<double>> latencies(o.clients);
  auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < o.clients; ++t) {
    threads.emplace_back([&, t] {
      auto client = http::Client::Create(endpoint, {.bearer_token = token});
      if (!client) return;
      for (int64_t i = 0; !stop; ++i) {
        auto began = std::chrono::steady_clock::now();
        if (op(*client, t, i)) {
          done++;
          latencies[t].push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - began)
                  .count());
        } else {
          errors++;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(o.seconds));
  stop = true;
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  return Rate{done / secs, errors.load(), Percentile(all, 0.5), Percentile(all, 0.99)};
}

// Cumulative bucket counts of tartarus_phase_seconds{phase=...} from /metrics: le -> count.
using Buckets = std::map<double, double>;
std::map<std::string, Buckets> PhaseBuckets(Api& api) {
  std::map<std::string, Buckets> out;
  auto res = api.Call("GET", "/metrics");
  std::istringstream lines(res.body);
  std::string line;
  const std::string prefix = "tartarus_phase_seconds_bucket{";
  while (std::getline(lines, line)) {
    if (line.rfind(prefix, 0) != 0) continue;
    auto phase_at = line.find("phase=\"");
    auto le_at = line.find("le=\"");
    auto close = line.find('}');
    if (phase_at == std::string::npos || le_at == std::string::npos || close == std::string::npos)
      continue;
    std::string phase = line.substr(phase_at + 7, line.find('"', phase_at + 7) - phase_at - 7);
    std::string le = line.substr(le_at + 4, line.find('"', le_at + 4) - le_at - 4);
    double bound = le == "+Inf" ? 1e300 : std::stod(le);
    out[phase][bound] = std::stod(line.substr(close + 1));
  }
  return out;
}

// The q-quantile (ms) of the observations between two scrapes, interpolated inside its bucket
// as Prometheus's histogram_quantile does.
double QuantileMs(const Buckets& before, const Buckets& after, double q) {
  double total = 0;
  if (!after.empty())
    total = after.rbegin()->second - (before.empty() ? 0 : before.rbegin()->second);
  if (total <= 0) return 0;
  double lower = 0, below = 0;
  for (const auto& [bound, count] : after) {
    double delta = count - (before.count(bound) ? before.at(bound) : 0);
    if (delta >= q * total) {
      if (bound > 1e299) return lower * 1000;
      double in_bucket = delta - below;
      double fraction = in_bucket > 0 ? (q * total - below) / in_bucket : 1;
      return (lower + (bound - lower) * fraction) * 1000;
    }
    lower = bound;
    below = delta;
  }
  return lower * 1000;
}

int64_t QueueCount(Api& api, const char* state) {
  auto res = api.Call("GET", "/v1/queue");
  return res.status == 200 ? res.json.value(state, int64_t{0}) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--seconds")
      o.seconds = atoi(argv[i + 1]);
    else if (flag == "--clients")
      o.clients = atoi(argv[i + 1]);
    else if (flag == "--jobs")
      o.jobs = atoi(argv[i + 1]);
    else if (flag == "--store")
      o.store = argv[i + 1];
    else {
      fprintf(stderr, "usage: api_bench [--seconds N] [--clients N] [--jobs N] [--store URL]\n");
      return 2;
    }
  }
  ScratchState state;
  if (o.store.empty()) o.store = "sqlite://" + state.dir() + "/bench.db";
  {
    FILE* f = fopen((state.dir() + "/olympus.yaml").c_str(), "w");
    // Registered nodes never heartbeat here: a long lease keeps them placeable.
    fprintf(f, "node_lease: 10m\nlog_level: warn\n");
    fclose(f);
  }
  int port = FreePort();
  std::string sock = state.dir() + "/olympus.sock";
  Daemon olympus(state.dir(), "olympus",
                 {"olympus", "--config-file", state.dir() + "/olympus.yaml", "--store", o.store,
                  "--listen", fmt::format("127.0.0.1:{}", port), "--unix-socket", sock});
  auto st = olympus.Start();
  if (st) st = olympus.WaitHealthy("unix://" + sock);
  if (!st) {
    fprintf(stderr, "api_bench: %s\n", st.error().message.c_str());
    return 1;
  }
  Api admin("unix://" + sock);
  std::string token = admin.Post("/v1/tokens", {{"tenant", "bench"}}).json.value("secret", "");
  std::string tcp = fmt::format("http://127.0.0.1:{}", port);
  for (int n = 0; n < 20; ++n) {
    admin.Post("/v1/nodes", {{"id", fmt::format("bench-node-{:02}", n)},
                             {"address", "http://127.0.0.1:1"},
                             {"millicpus", 1000000},
                             {"memory_bytes", int64_t{1} << 42},
                             {"runtimes", {"container"}},
                             {"templates", {"base"}}});
  }
  // The bench tenant may create as fast as it can.
  admin.Call("PUT", "/v1/policies/default",
             "name: default\nlimits:\n  max_concurrent: 10000000\n  max_rate: 100000000/s\n");

  printf("api_bench: store %s, %d clients, %d s per operation, %u CPUs\n\n",
         o.store.substr(0, o.store.find(':')).c_str(), o.clients, o.seconds,
         std::thread::hardware_concurrency());
  std::string body = json{{"command", {"true"}}, {"cpus", "0.01"}, {"memory", "16M"}}.dump();
  std::vector<std::vector<std::string>> ids(o.clients);

  // What scheduling adds to one run: sequential creates, each polled until placed, and the
  // change of Olympus's phase histograms over exactly those requests. Run on an empty store
  // and again at the end, when thousands of sandboxes hold reservations.
  const int kLatencyRuns = 300;
  auto PhasesOfSequentialCreates = [&] {
    auto phases_before = PhaseBuckets(admin);
    auto client = http::Client::Create(tcp, {.bearer_token = token});
    for (int n = 0; client && n < kLatencyRuns; ++n) {
      auto created =
          client->Do("POST", "/v1/sandboxes", body, {{"Content-Type", "application/json"}});
      if (!created || created->status != 201) continue;
      // Polled by id (an indexed read), so the polling itself costs the server little.
      std::string target = "/v1/sandboxes/" + json::parse(created->body).value("id", "");
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (std::chrono::steady_clock::now() < until) {
        auto got = client->Do("GET", target);
        if (!got || got->status != 200 ||
            json::parse(got->body, nullptr, false).value("state", "") != "queued") {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    auto phases_after = PhaseBuckets(admin);
    std::map<std::string, std::pair<double, double>> out;
    for (const char* phase : {"admit", "place", "queue"}) {
      out[phase] = {QuantileMs(phases_before[phase], phases_after[phase], 0.5),
                    QuantileMs(phases_before[phase], phases_after[phase], 0.99)};
    }
    return out;
  };
  auto early = PhasesOfSequentialCreates();

  Rate health = Measure(o, tcp, token, [](http::Client& c, int, int64_t) {
    auto r = c.Do("GET", "/healthz");
    return r && r->status == 200;
  });
  Rate create = Measure(o, tcp, token, [&](http::Client& c, int t, int64_t) {
    auto r = c.Do("POST", "/v1/sandboxes", body, {{"Content-Type", "application/json"}});
    if (!r || r->status != 201) return false;
    if (ids[t].size() < 1000) ids[t].push_back(json::parse(r->body).value("id", ""));
    return true;
  });
  Rate get = Measure(o, tcp, token, [&](http::Client& c, int t, int64_t i) {
    if (ids[t].empty()) return false;
    auto r = c.Do("GET", "/v1/sandboxes/" + ids[t][i % ids[t].size()]);
    return r && r->status == 200;
  });
  Rate list = Measure(o, tcp, token, [](http::Client& c, int, int64_t) {
    auto r = c.Do("GET", "/v1/sandboxes?limit=50");
    return r && r->status == 200;
  });

  // Scheduling throughput: queue `jobs` sandboxes with every node cordoned, then uncordon and
  // time until the scheduler has placed them all.
  for (int n = 0; n < 20; ++n)
    admin.Post(fmt::format("/v1/nodes/bench-node-{:02}/cordon", n), json::object());
  int64_t before = QueueCount(admin, "assigned");
  {
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < o.clients; ++t) {
      threads.emplace_back([&] {
        auto client = http::Client::Create(tcp, {.bearer_token = token});
        while (client && next++ < o.jobs) {
          (void)client->Do("POST", "/v1/sandboxes", body, {{"Content-Type", "application/json"}});
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  auto start = std::chrono::steady_clock::now();
  for (int n = 0; n < 20; ++n)
    admin.Post(fmt::format("/v1/nodes/bench-node-{:02}/uncordon", n), json::object());
  int64_t assigned = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(120)) {
    assigned = QueueCount(admin, "assigned") - before;
    if (assigned >= o.jobs) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  double sched_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double sched_rate = assigned / sched_secs;

  auto late = PhasesOfSequentialCreates();

  printf(
      "| operation | requests/s | vs GET /healthz | p50 ms | p99 ms | errors |\n"
      "|---|---|---|---|---|---|\n");
  auto row = [&](const char* name, const Rate& r) {
    printf("| %s | %.0f | %.2f | %.2f | %.2f | %lld |\n", name, r.rps,
           health.rps > 0 ? r.rps / health.rps : 0, r.p50_ms, r.p99_ms,
           static_cast<long long>(r.errors));
  };
  row("GET /healthz (peer: the HTTP stack alone)", health);
  row("POST /v1/sandboxes (admit + enqueue)", create);
  row("GET /v1/sandboxes/{id}", get);
  row("GET /v1/sandboxes?limit=50", list);
  printf(
      "\nscheduled: %lld of %d queued sandboxes placed on 20 nodes in %.2f s: %.0f sandboxes/s\n",
      static_cast<long long>(assigned), o.jobs, sched_secs, sched_rate);
  printf(
      "\nphases of %d sandboxes created one at a time, p50 / p99 ms (from /metrics); queue is\n"
      "created until placed, so it includes admit:\n\n",
      kLatencyRuns);
  printf(
      "| phase | empty store | after the runs above (%lld sandboxes holding reservations) |\n"
      "|---|---|---|\n",
      static_cast<long long>(QueueCount(admin, "assigned")));
  for (const char* phase : {"admit", "place", "queue"}) {
    printf("| %s | %.2f / %.2f | %.2f / %.2f |\n", phase, early[phase].first, early[phase].second,
           late[phase].first, late[phase].second);
  }
  auto stopped = olympus.Stop();
  return assigned >= o.jobs && stopped ? 0 : 1;
}

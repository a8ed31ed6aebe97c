// Tests of the control store (tenants, tokens, policies, sandboxes, Acheron, Hades,
// Cocytus). Every TEST_P runs on SQLite and on PostgreSQL; time is a fake clock.
#include "store/control_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>
#include <tuple>

#include "store/store_test_util.h"

namespace tartarus::store {
namespace {

using testing::TestDatabase;

constexpr int64_t kT0 = 1'700'000'000'000;  // the fake clock's start
constexpr int64_t kLease = 10'000;

// First fit by free CPU and memory, honouring the job's label selector.
std::optional<std::string> FirstFit(const JobRow& job, const std::vector<NodeRow>& nodes,
                                    std::string* reason) {
  for (const NodeRow& node : nodes) {
    bool labels_ok = true;
    for (const auto& [key, value] : job.selector) {
      auto found = node.labels.find(key);
      labels_ok = labels_ok && found != node.labels.end() && found->second == value;
    }
    if (labels_ok && node.millicpus - node.reserved_millicpus >= job.millicpus &&
        node.memory_bytes - node.reserved_memory_bytes >= job.memory_bytes) {
      return node.id;
    }
  }
  *reason = nodes.empty() ? "no ready node"
                          : "no node has " + std::to_string(job.millicpus) + " millicpus free";
  return std::nullopt;
}

class ControlStoreTest : public ::testing::TestWithParam<Dialect> {
 protected:
  void SetUp() override {
    std::string skip, error;
    test_db_ = TestDatabase::Create(GetParam(), &skip, &error);
    if (!skip.empty()) GTEST_SKIP() << skip;
    ASSERT_TRUE(test_db_) << error;
    store_ = OpenStore();
    ASSERT_TRUE(store_);
    auto tenant = store_->CreateTenant("acme");
    ASSERT_TRUE(tenant) << tenant.error().message;
    tenant_ = *tenant;
  }

  std::unique_ptr<ControlStore> OpenStore() {
    auto store = ControlStore::Open(test_db_->url(),
                                    RetryPolicy{.base_backoff_ms = 1000, .max_backoff_ms = 4000});
    EXPECT_TRUE(store) << store.error().message;
    return store ? std::move(*store) : nullptr;
  }

  NodeRow Node(const std::string& id, int64_t millicpus) {
    NodeRow node;
    node.id = id;
    node.name = id;
    node.address = "http://" + id + ":7070";
    node.millicpus = millicpus;
    node.memory_bytes = int64_t{16} << 30;
    node.runtimes = {"container"};
    return node;
  }

  void Register(const std::string& id, int64_t millicpus, int64_t now = kT0) {
    auto node = store_->RegisterNode(Node(id, millicpus), now, kLease);
    ASSERT_TRUE(node) << node.error().message;
  }

  // A queued sandbox with its job; created_ms orders the list views.
  SandboxRow Create(int64_t created_ms, int64_t millicpus = 1000, std::string key = "",
                    std::map<std::string, std::string> labels = {}, int max_attempts = 3,
                    std::string tenant_id = "") {
    SandboxRow sandbox;
    sandbox.tenant_id = tenant_id.empty() ? tenant_.id : tenant_id;
    sandbox.template_name = "base";
    sandbox.runtime = "container";
    sandbox.spec_json = R"({"command":["true"]})";
    sandbox.labels = std::move(labels);
    sandbox.created_ms = created_ms;
    sandbox.idempotency_key = std::move(key);
    JobRow job;
    job.millicpus = millicpus;
    job.memory_bytes = 256 << 20;
    job.max_attempts = max_attempts;
    auto created = store_->CreateSandbox(sandbox, job);
    EXPECT_TRUE(created) << created.error().message;
    return created ? created->first : SandboxRow{};
  }

  std::unique_ptr<TestDatabase> test_db_;
  std::unique_ptr<ControlStore> store_;
  Tenant tenant_;
};

TEST_P(ControlStoreTest, TenantsAndTokens) {
  auto dup = store_->CreateTenant("acme");
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, ErrorCode::kAlreadyExists);
  EXPECT_FALSE(store_->CreateTenant(""));

  auto by_name = store_->GetTenant("acme");
  ASSERT_TRUE(by_name) << by_name.error().message;
  EXPECT_EQ(by_name->id, tenant_.id);
  auto by_id = store_->GetTenant(tenant_.id);
  ASSERT_TRUE(by_id);
  EXPECT_EQ(by_id->name, "acme");
  EXPECT_EQ(store_->GetTenant("nobody").error().code, ErrorCode::kNotFound);

  auto token = store_->CreateToken("acme", "ci");
  ASSERT_TRUE(token) << token.error().message;
  const std::string& secret = token->second;
  ASSERT_EQ(secret.size(), 35u);
  EXPECT_EQ(secret.substr(0, 3), "tt_");
  EXPECT_EQ(secret.find_first_not_of("0123456789abcdef", 3), std::string::npos);

  // Only the hash is stored.
  auto raw = store_->db().Query("SELECT secret_hash FROM tokens");
  ASSERT_TRUE(raw);
  ASSERT_EQ(raw->size(), 1u);
  EXPECT_EQ((*raw)[0].Text(0).find(secret.substr(3)), std::string::npos);

  auto who = store_->Authenticate(secret);
  ASSERT_TRUE(who) << who.error().message;
  EXPECT_EQ(who->id, tenant_.id);
  std::string wrong = secret;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  EXPECT_EQ(store_->Authenticate(wrong).error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(store_->Authenticate("").error().code, ErrorCode::kPermissionDenied);
  EXPECT_EQ(store_->Authenticate("Bearer x").error().code, ErrorCode::kPermissionDenied);

  auto tokens = store_->ListTokens(tenant_.id);
  ASSERT_TRUE(tokens);
  ASSERT_EQ(tokens->size(), 1u);
  EXPECT_EQ((*tokens)[0].name, "ci");
  EXPECT_FALSE((*tokens)[0].revoked_ms);

  ASSERT_TRUE(store_->RevokeToken(token->first.id));
  EXPECT_EQ(store_->Authenticate(secret).error().code, ErrorCode::kPermissionDenied);
  tokens = store_->ListTokens("");
  ASSERT_TRUE(tokens);
  ASSERT_EQ(tokens->size(), 1u);
  EXPECT_TRUE((*tokens)[0].revoked_ms);
  EXPECT_EQ(store_->RevokeToken("tok_nope").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->CreateToken("nobody", "x").error().code, ErrorCode::kNotFound);

  auto tenants = store_->ListTenants();
  ASSERT_TRUE(tenants);
  EXPECT_EQ(tenants->size(), 1u);
}

TEST_P(ControlStoreTest, Policies) {
  PolicyRow policy{.name = "default", .tenant = "", .template_name = "", .yaml = "max_cpus: 2\n"};
  ASSERT_TRUE(store_->PutPolicy(policy));
  policy.yaml = "max_cpus: 4\n";
  policy.tenant = tenant_.id;
  ASSERT_TRUE(store_->PutPolicy(policy));  // upsert
  auto got = store_->GetPolicy("default");
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->yaml, "max_cpus: 4\n");
  EXPECT_EQ(got->tenant, tenant_.id);
  EXPECT_GT(got->updated_ms, 0);
  ASSERT_TRUE(store_->PutPolicy(PolicyRow{.name = "b", .yaml = "{}"}));
  auto all = store_->ListPolicies();
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "b");
  ASSERT_TRUE(store_->DeletePolicy("b"));
  EXPECT_EQ(store_->DeletePolicy("b").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->GetPolicy("b").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->PutPolicy(PolicyRow{}).error().code, ErrorCode::kInvalidArgument);
}

TEST_P(ControlStoreTest, IdempotencyKeys) {
  SandboxRow first = Create(kT0, 1000, "key-1");
  ASSERT_FALSE(first.id.empty());
  EXPECT_EQ(first.state, "queued");

  SandboxRow sandbox;
  sandbox.tenant_id = tenant_.id;
  sandbox.template_name = "other";
  sandbox.created_ms = kT0 + 5;
  sandbox.idempotency_key = "key-1";
  auto again = store_->CreateSandbox(sandbox, JobRow{});
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE(again->second);
  EXPECT_EQ(again->first.id, first.id);
  EXPECT_EQ(again->first.template_name, "base");

  // Same key, other tenant: a different sandbox.
  auto other = store_->CreateTenant("globex");
  ASSERT_TRUE(other);
  SandboxRow theirs = Create(kT0 + 6, 1000, "key-1", {}, 3, other->id);
  EXPECT_NE(theirs.id, first.id);
  // No key: never deduplicated.
  EXPECT_NE(Create(kT0 + 7).id, Create(kT0 + 8).id);

  // Racing replicas with one key: one sandbox, everyone gets its id.
  constexpr int kThreads = 4;
  std::vector<std::unique_ptr<ControlStore>> replicas;
  for (int i = 0; i < kThreads; ++i) replicas.push_back(OpenStore());
  std::vector<std::string> ids(kThreads);
  std::atomic<int> created = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      SandboxRow row;
      row.tenant_id = tenant_.id;
      row.template_name = "base";
      row.created_ms = kT0 + 10;
      row.idempotency_key = "race";
      auto result = replicas[i]->CreateSandbox(row, JobRow{});
      if (result) {
        ids[i] = result->first.id;
        if (result->second) ++created;
      } else {
        ids[i] = "error: " + result.error().message;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(created, 1);
  for (const std::string& id : ids) EXPECT_EQ(id, ids[0]);

  // Invalid UTF-8 in labels (outside input) is stored replaced, not thrown.
  SandboxRow odd = Create(kT0 + 20, 1000, "", {{"k", "\xff\xfe"}});
  ASSERT_FALSE(odd.id.empty());
  EXPECT_EQ(store_->GetSandbox(odd.id)->labels.count("k"), 1u);

  auto bad = store_->CreateSandbox(SandboxRow{}, JobRow{});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

TEST_P(ControlStoreTest, ShortIdsResolveByPrefixWithinATenant) {
  auto other = store_->CreateTenant("globex");
  ASSERT_TRUE(other);
  SandboxRow mine = Create(kT0);
  SandboxRow theirs = Create(kT0, 1000, "", {}, 3, other->id);
  auto one = store_->FindSandboxIdsByPrefix(tenant_.id, mine.id.substr(0, 12), 3);
  ASSERT_TRUE(one) << one.error().message;
  EXPECT_EQ(*one, std::vector<std::string>{mine.id});
  // Another tenant's sandbox is not found through this tenant, only through all of them.
  auto hidden = store_->FindSandboxIdsByPrefix(tenant_.id, theirs.id.substr(0, 12), 3);
  ASSERT_TRUE(hidden);
  EXPECT_TRUE(hidden->empty());
  auto all = store_->FindSandboxIdsByPrefix("", "sb_", 5);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 2u);
  EXPECT_TRUE(std::is_sorted(all->begin(), all->end()));
  // The limit bounds the answer; a full id is its own prefix; LIKE's wildcards are literal.
  auto limited = store_->FindSandboxIdsByPrefix("", "sb_", 1);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->size(), 1u);
  auto full = store_->FindSandboxIdsByPrefix(tenant_.id, mine.id, 3);
  ASSERT_TRUE(full);
  EXPECT_EQ(*full, std::vector<std::string>{mine.id});
  auto wildcard = store_->FindSandboxIdsByPrefix("", "sb%", 3);
  ASSERT_TRUE(wildcard);
  EXPECT_TRUE(wildcard->empty());
}

TEST_P(ControlStoreTest, ListFiltersAndPaging) {
  auto other = store_->CreateTenant("globex");
  ASSERT_TRUE(other);
  std::set<std::string> gpu_ids;
  for (int i = 0; i < 25; ++i) {
    std::map<std::string, std::string> labels{{"team", i % 2 == 0 ? "gpu" : "web"}};
    SandboxRow row = Create(kT0 + i / 2, 1000, "", labels);  // pairs share created_ms
    if (i % 2 == 0) gpu_ids.insert(row.id);
  }
  Create(kT0 + 100, 1000, "", {}, 3, other->id);

  // Pages of 10 over one tenant: newest first, no duplicates, nothing missed.
  std::vector<SandboxRow> seen;
  SandboxFilter filter{.tenant_id = tenant_.id, .limit = 10};
  int pages = 0;
  do {
    auto page = store_->ListSandboxes(filter);
    ASSERT_TRUE(page) << page.error().message;
    EXPECT_LE(page->items.size(), 10u);
    seen.insert(seen.end(), page->items.begin(), page->items.end());
    filter.page_token = page->next_page_token;
    ++pages;
  } while (!filter.page_token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 25u);
  std::set<std::string> unique;
  for (size_t i = 0; i < seen.size(); ++i) {
    unique.insert(seen[i].id);
    if (i > 0) {
      EXPECT_GE(seen[i - 1].created_ms, seen[i].created_ms);
    }
  }
  EXPECT_EQ(unique.size(), 25u);

  // Labels with paging: exactly the 13 gpu sandboxes.
  std::set<std::string> gpu_seen;
  SandboxFilter by_label{.labels = {{"team", "gpu"}}, .limit = 5};
  pages = 0;
  do {
    auto page = store_->ListSandboxes(by_label);
    ASSERT_TRUE(page) << page.error().message;
    for (const auto& row : page->items) gpu_seen.insert(row.id);
    by_label.page_token = page->next_page_token;
    ++pages;
  } while (!by_label.page_token.empty() && pages < 10);
  EXPECT_EQ(gpu_seen, gpu_ids);

  auto theirs = store_->ListSandboxes(SandboxFilter{.tenant_id = other->id});
  ASSERT_TRUE(theirs);
  ASSERT_EQ(theirs->items.size(), 1u);
  EXPECT_TRUE(theirs->next_page_token.empty());

  auto running = store_->ListSandboxes(SandboxFilter{.state = "running"});
  ASSERT_TRUE(running);
  EXPECT_TRUE(running->items.empty());

  auto bad = store_->ListSandboxes(SandboxFilter{.page_token = "garbage"});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);

  auto active = store_->CountActiveSandboxes(tenant_.id);
  ASSERT_TRUE(active);
  EXPECT_EQ(*active, 25);
  auto recent = store_->CountSandboxesCreatedSince(tenant_.id, kT0 + 10);
  ASSERT_TRUE(recent);
  EXPECT_EQ(*recent, 5);  // created_ms kT0+10 (2) and kT0+11 (2) and kT0+12 (1)
}

TEST_P(ControlStoreTest, ScheduleBatchRespectsCapacity) {
  Register("node-a", 4000);
  std::vector<SandboxRow> sandboxes;
  for (int i = 0; i < 6; ++i) sandboxes.push_back(Create(kT0 + i));

  auto assigned = store_->ScheduleBatch(kT0 + 100, 10, FirstFit);
  ASSERT_TRUE(assigned) << assigned.error().message;
  EXPECT_EQ(*assigned, 4);
  auto node = store_->GetNode("node-a");
  ASSERT_TRUE(node);
  EXPECT_EQ(node->reserved_millicpus, 4000);
  EXPECT_EQ(node->active_jobs, 4);

  // Oldest first: the last two wait, with the reason on both rows.
  for (int i = 0; i < 6; ++i) {
    auto sandbox = store_->GetSandbox(sandboxes[i].id);
    auto job = store_->GetJob(sandboxes[i].id);
    ASSERT_TRUE(sandbox && job);
    if (i < 4) {
      EXPECT_EQ(sandbox->state, "assigned");
      EXPECT_EQ(sandbox->node_id, "node-a");
      EXPECT_EQ(sandbox->attempt, 1);
      EXPECT_EQ(job->attempts, 1);
      EXPECT_EQ(job->lease_ms, kT0 + kLease);
    } else {
      EXPECT_EQ(sandbox->state, "queued");
      EXPECT_EQ(sandbox->reason, "no node has 1000 millicpus free");
      EXPECT_EQ(job->reason, sandbox->reason);
    }
  }
  auto stats = store_->GetQueueStats();
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->assigned, 4);
  EXPECT_EQ(stats->queued, 2);

  // A cordoned node is not offered; priority beats age.
  ASSERT_TRUE(store_->SetNodeState("node-a", "cordoned"));
  Register("node-b", 1000);
  SandboxRow urgent = Create(kT0 + 50);
  ASSERT_TRUE(store_->db().Exec("UPDATE jobs SET priority = 5 WHERE id = $1", {urgent.id}));
  assigned = store_->ScheduleBatch(kT0 + 100, 10, FirstFit);
  ASSERT_TRUE(assigned);
  EXPECT_EQ(*assigned, 1);
  EXPECT_EQ(store_->GetSandbox(urgent.id)->node_id, "node-b");
}

TEST_P(ControlStoreTest, ConcurrentSchedulersNeverOvercommit) {
  constexpr int kNodes = 3, kJobs = 30, kSchedulers = 4;
  for (int n = 0; n < kNodes; ++n) Register("node-" + std::to_string(n), 2000);
  for (int i = 0; i < kJobs; ++i) Create(kT0 + i, 500);

  // Each scheduler is its own replica (own connection pool), as in production.
  std::vector<std::unique_ptr<ControlStore>> replicas;
  for (int i = 0; i < kSchedulers; ++i) replicas.push_back(OpenStore());
  std::atomic<int> total = 0;
  std::vector<std::string> errors(kSchedulers);
  auto slow_fit = [](const JobRow& job, const std::vector<NodeRow>& nodes, std::string* reason) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // widen the race window
    return FirstFit(job, nodes, reason);
  };
  std::vector<std::thread> threads;
  for (int s = 0; s < kSchedulers; ++s) {
    threads.emplace_back([&, s] {
      for (int round = 0; round < 20; ++round) {
        auto assigned = replicas[s]->ScheduleBatch(kT0 + 1000, 3, slow_fit);
        if (!assigned) {
          errors[s] = assigned.error().message;
          return;
        }
        total += *assigned;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");

  EXPECT_EQ(total, kNodes * 4);  // 2000 / 500 per node
  auto nodes = store_->ListNodes();
  ASSERT_TRUE(nodes);
  ASSERT_EQ(nodes->size(), static_cast<size_t>(kNodes));
  for (const NodeRow& node : *nodes) {
    EXPECT_LE(node.reserved_millicpus, node.millicpus) << node.id;
    EXPECT_EQ(node.active_jobs, 4) << node.id;
  }
  auto stats = store_->GetQueueStats();
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->assigned, kNodes * 4);
  EXPECT_EQ(stats->queued, kJobs - kNodes * 4);
}

// The reservation columns on the node rows equal the sums over each node's assigned and
// running jobs, and each tenant's active counter equals its queued, assigned and running
// sandboxes; `where` names the step for the failure message.
void ExpectCountersExact(ControlStore& store, const std::string& where) {
  auto nodes = store.ListNodes();
  auto sums = store.RecomputeReservations();
  ASSERT_TRUE(nodes && sums) << where;
  for (const NodeRow& node : *nodes) {
    NodeReservation want;
    if (auto found = sums->find(node.id); found != sums->end()) want = found->second;
    EXPECT_EQ(node.reserved_millicpus, want.millicpus) << where << ": " << node.id;
    EXPECT_EQ(node.reserved_memory_bytes, want.memory_bytes) << where << ": " << node.id;
    EXPECT_EQ(node.active_jobs, want.active_jobs) << where << ": " << node.id;
  }
  auto recomputed = store.RecomputeActiveSandboxes();
  auto stored = store.db().Query("SELECT tenant_id, active FROM tenant_usage");
  ASSERT_TRUE(recomputed && stored) << where;
  std::map<std::string, int64_t> counters;
  for (const Row& row : *stored) {
    if (row.Int(1) != 0) counters[row.Text(0)] = row.Int(1);
  }
  EXPECT_EQ(counters, *recomputed) << where << ": tenant active counters";
  for (const auto& [tenant_id, active] : *recomputed) {
    auto usage = store.GetTenantUsage(tenant_id);
    ASSERT_TRUE(usage) << where;
    EXPECT_EQ(usage->active, active) << where << ": " << tenant_id;
    EXPECT_EQ(*store.CountActiveSandboxes(tenant_id), active) << where << ": " << tenant_id;
  }
}

// Every path that takes a job off a node releases its reservation: finish, kill, retry,
// dead-letter (by retries and by node loss), node lost with a requeue, replay, delete.
TEST_P(ControlStoreTest, ReservationColumnsFollowEveryStateChange) {
  Register("node-a", 8000);
  Register("node-b", 8000, kT0 + 5000);  // outlives node-a's lease
  auto ready_first_fit = [](const JobRow& job, const std::vector<NodeRow>& nodes,
                            std::string* reason) {
    std::vector<NodeRow> ready;
    for (const NodeRow& node : nodes) {
      if (node.state == "ready") ready.push_back(node);
    }
    return FirstFit(job, ready, reason);
  };
  auto schedule = [&](int64_t now) {
    auto assigned = store_->ScheduleBatch(now, 50, ready_first_fit);
    EXPECT_TRUE(assigned) << assigned.error().message;
    ExpectCountersExact(*store_, "after scheduling at " + std::to_string(now));
    return assigned ? *assigned : 0;
  };
  auto node_of = [&](const SandboxRow& s) { return store_->GetSandbox(s.id)->node_id; };
  auto attempt_of = [&](const SandboxRow& s) { return store_->GetSandbox(s.id)->attempt; };

  std::vector<SandboxRow> all;
  // The last one may run once only: losing its node dead-letters it.
  for (int i = 0; i < 8; ++i) all.push_back(Create(kT0 + i, 500 + 100 * i, "", {}, i == 7 ? 1 : 2));
  EXPECT_EQ(schedule(kT0 + 10), 8);
  auto nodes = store_->ListNodes();
  ASSERT_TRUE(nodes);
  int64_t placed_cpu = 0;
  for (const NodeRow& node : *nodes) placed_cpu += node.reserved_millicpus;
  EXPECT_EQ(placed_cpu, 8 * 500 + 100 * 28);  // the columns are not trivially zero

  // Finished (exited), after a start.
  ASSERT_TRUE(store_->ReportStarted(all[0].id, node_of(all[0]), 1, kT0 + 20));
  SandboxRow exited;
  exited.state = "exited";
  exited.exit_code = 0;
  ASSERT_TRUE(store_->ReportFinished(all[0].id, node_of(all[0]), 1, exited, kT0 + 21));
  ExpectCountersExact(*store_, "finish");
  // Killed: requested, then reported killed by the node.
  ASSERT_TRUE(store_->RequestKill(all[1].id, kT0 + 22));
  ExpectCountersExact(*store_, "kill requested");
  SandboxRow killed;
  killed.state = "killed";
  ASSERT_TRUE(store_->ReportFinished(all[1].id, node_of(all[1]), 1, killed, kT0 + 23));
  ExpectCountersExact(*store_, "killed");
  // Retried (back to the queue), then placed again, then dead-lettered by a second failure.
  ASSERT_TRUE(store_->ReportRetryableFailure(all[2].id, node_of(all[2]), 1, "boom", kT0 + 24));
  ExpectCountersExact(*store_, "retry");
  EXPECT_EQ(schedule(kT0 + 24 + 1000), 1);
  ASSERT_TRUE(store_->ReportRetryableFailure(all[2].id, node_of(all[2]), 2, "boom", kT0 + 1030));
  EXPECT_EQ(store_->GetJob(all[2].id)->state, "dead");
  ExpectCountersExact(*store_, "dead-lettered by retries");
  // A retryable failure of a sandbox whose kill was requested ends it.
  ASSERT_TRUE(store_->RequestKill(all[3].id, kT0 + 1031));
  ASSERT_TRUE(store_->ReportRetryableFailure(all[3].id, node_of(all[3]), 1, "x", kT0 + 1032));
  ExpectCountersExact(*store_, "retry after kill");
  // Replayed: queued again, then placed.
  ASSERT_TRUE(store_->ReplayDeadJob(all[2].id, kT0 + 1040));
  ExpectCountersExact(*store_, "replay");
  EXPECT_EQ(schedule(kT0 + 1041), 1);

  // node-a is lost: its jobs are requeued, dead-lettered (no attempts left) or killed.
  std::vector<SandboxRow> on_a;
  for (const SandboxRow& s : all) {
    auto row = store_->GetSandbox(s.id);
    if (row->node_id == "node-a" && !IsFinalSandboxState(row->state)) on_a.push_back(s);
  }
  ASSERT_FALSE(on_a.empty());
  ASSERT_TRUE(store_->RequestKill(on_a[0].id, kT0 + 1050));
  ASSERT_TRUE(store_->Heartbeat("node-b", {}, kT0 + kLease, kLease));
  EXPECT_EQ(*store_->ExpireLeases(kT0 + kLease + 1), 1);
  EXPECT_EQ(store_->GetNode("node-a")->active_jobs, 0);
  EXPECT_EQ(store_->GetNode("node-a")->reserved_millicpus, 0);
  EXPECT_EQ(store_->GetJob(all[7].id)->state, "dead");
  EXPECT_EQ(store_->GetSandbox(on_a[0].id)->state, "killed");
  ExpectCountersExact(*store_, "node lost");
  // Requeued ones land on node-b; node-a comes back empty and takes new work.
  int64_t now = kT0 + kLease + 2000;
  ASSERT_TRUE(store_->Heartbeat("node-b", {}, now, kLease));
  EXPECT_EQ(schedule(now), static_cast<int>(on_a.size()) - 2);
  EXPECT_GT(store_->GetNode("node-b")->active_jobs, 0);
  Register("node-a", 8000, now + 1);
  ExpectCountersExact(*store_, "node registered again");
  SandboxRow late = Create(now + 2, 7000);
  EXPECT_EQ(schedule(now + 3), 1);
  EXPECT_EQ(node_of(late), "node-a");
  EXPECT_EQ(attempt_of(late), 1);

  // Everything finishes; the final ones are deleted: every node is back to zero.
  all.push_back(late);
  for (const SandboxRow& s : all) {
    auto row = store_->GetSandbox(s.id);
    ASSERT_TRUE(row);
    if (row->state == "assigned" || row->state == "running") {
      ASSERT_TRUE(store_->ReportFinished(s.id, row->node_id, row->attempt, exited, now + 10));
    }
  }
  for (const SandboxRow& s : all) {
    if (IsFinalSandboxState(store_->GetSandbox(s.id)->state)) {
      ASSERT_TRUE(store_->DeleteSandbox(s.id));
    }
  }
  ExpectCountersExact(*store_, "all finished");
  auto final_nodes = store_->ListNodes();
  ASSERT_TRUE(final_nodes);
  for (const NodeRow& node : *final_nodes) {
    EXPECT_EQ(node.reserved_millicpus, 0) << node.id;
    EXPECT_EQ(node.reserved_memory_bytes, 0) << node.id;
    EXPECT_EQ(node.active_jobs, 0) << node.id;
  }
}

// A store left at schema 2 with work placed on its nodes: migrating fills the new columns
// with the sums of the jobs already there.
TEST_P(ControlStoreTest, MigrationBackfillsReservations) {
  std::string skip, error;
  auto old_db = TestDatabase::Create(GetParam(), &skip, &error);
  ASSERT_TRUE(old_db) << error;
  auto db = OpenDatabase(old_db->url());
  ASSERT_TRUE(db) << db.error().message;
  ASSERT_TRUE(MigrateTo(**db, 2));
  for (const char* node : {"n1", "n2", "n3"}) {
    ASSERT_TRUE(
        (*db)->Exec("INSERT INTO nodes (id, name, address, millicpus, memory_bytes, labels_json, "
                    "runtimes_json, templates_json, state, lease_ms, registered_ms, heartbeat_ms) "
                    "VALUES ($1, $1, '', 8000, 8000000000, '{}', '[]', '[]', 'ready', 0, 0, 0)",
                    {std::string(node)}));
  }
  // (node, state, millicpus): only assigned and running count.
  std::vector<std::tuple<std::string, std::string, int64_t>> jobs = {
      {"n1", "assigned", 500}, {"n1", "running", 700}, {"n1", "done", 900},
      {"n2", "running", 300},  {"n2", "dead", 400},    {"", "queued", 100}};
  for (size_t i = 0; i < jobs.size(); ++i) {
    auto [node, state, cpu] = jobs[i];
    std::string id = "sb_" + std::to_string(i);
    ASSERT_TRUE((*db)->Exec(
        "INSERT INTO sandboxes (id, tenant_id, template, runtime, state, spec_json, "
        "labels_json, created_ms) VALUES ($1, 't', 'base', 'container', 'queued', '{}', '{}', 0)",
        {id}));
    ASSERT_TRUE((*db)->Exec(
        "INSERT INTO jobs (id, state, node_id, millicpus, memory_bytes, template, runtime, "
        "selector_json, created_ms, updated_ms) "
        "VALUES ($1, $2, $3, $4, $5, 'base', 'container', '{}', 0, 0)",
        {id, state, node.empty() ? Value(std::monostate{}) : Value(node), cpu, cpu * 1000}));
  }
  auto migrated = ControlStore::Open(old_db->url());
  ASSERT_TRUE(migrated) << migrated.error().message;
  auto versions = (*migrated)->db().Query("SELECT MAX(version) FROM schema_migrations");
  ASSERT_TRUE(versions);
  EXPECT_EQ((*versions)[0].Int(0), LatestSchemaVersion());
  auto n1 = (*migrated)->GetNode("n1");
  auto n2 = (*migrated)->GetNode("n2");
  auto n3 = (*migrated)->GetNode("n3");
  ASSERT_TRUE(n1 && n2 && n3);
  EXPECT_EQ(n1->reserved_millicpus, 1200);
  EXPECT_EQ(n1->reserved_memory_bytes, 1'200'000);
  EXPECT_EQ(n1->active_jobs, 2);
  EXPECT_EQ(n2->reserved_millicpus, 300);
  EXPECT_EQ(n2->active_jobs, 1);
  EXPECT_EQ(n3->reserved_millicpus, 0);
  EXPECT_EQ(n3->active_jobs, 0);
  ExpectCountersExact(**migrated, "after migration");
}

// Schedulers on several replicas place while nodes report finishes and failures at the same
// time: no node is over-committed, nothing deadlocks, and the columns stay exact.
TEST_P(ControlStoreTest, ConcurrentPlacementsAndReportsKeepReservationsExact) {
  constexpr int kNodes = 3, kJobs = 60;
  for (int n = 0; n < kNodes; ++n) Register("node-" + std::to_string(n), 2000, kT0 + 1'000'000);
  for (int i = 0; i < kJobs; ++i) Create(kT0 + i, 500, "", {}, 10);
  auto schedulers = std::vector<std::unique_ptr<ControlStore>>();
  for (int i = 0; i < 3; ++i) schedulers.push_back(OpenStore());
  std::atomic<bool> done = false;
  std::atomic<int> finished = 0;
  std::vector<std::string> errors(schedulers.size() + 1);
  std::vector<std::thread> threads;
  for (size_t s = 0; s < schedulers.size(); ++s) {
    threads.emplace_back([&, s] {
      while (!done) {
        auto assigned = schedulers[s]->ScheduleBatch(kT0 + 1000, 4, FirstFit);
        if (!assigned) {
          errors[s] = assigned.error().message;
          return;
        }
        auto nodes = schedulers[s]->ListNodes();
        for (const NodeRow& node : nodes ? *nodes : std::vector<NodeRow>{}) {
          if (node.reserved_millicpus > node.millicpus) errors[s] = "over-committed " + node.id;
        }
        // Leave the reporter a turn at SQLite's single writer lock (slow under sanitizers).
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  threads.emplace_back([&] {
    auto reporter = OpenStore();
    auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (finished < kJobs && std::chrono::steady_clock::now() < give_up) {
      for (int n = 0; n < kNodes; ++n) {
        std::string node = "node-" + std::to_string(n);
        auto reply = reporter->Heartbeat(node, {}, kT0 + 1000, 1'000'000);
        if (!reply) {
          errors.back() = reply.error().message;
          return;
        }
        for (const Assignment& a : reply->assignments) {
          // Every third one fails once and goes back to the queue.
          Status status = a.sandbox.attempt == 1 && a.sandbox.id.back() % 3 == 0
                              ? reporter->ReportRetryableFailure(a.sandbox.id, node,
                                                                 a.sandbox.attempt, "x", kT0)
                              : reporter->ReportFinished(a.sandbox.id, node, a.sandbox.attempt,
                                                         SandboxRow{.state = "exited"}, kT0);
          if (!status) {
            errors.back() = status.error().message;
            return;
          }
          if (a.sandbox.attempt != 1 || a.sandbox.id.back() % 3 != 0) ++finished;
        }
      }
    }
  });
  threads.back().join();
  done = true;
  for (size_t t = 0; t + 1 < threads.size(); ++t) threads[t].join();
  for (const std::string& error : errors) EXPECT_EQ(error, "");
  EXPECT_EQ(finished, kJobs);
  ExpectCountersExact(*store_, "after the concurrent run");
  auto final_nodes = store_->ListNodes();
  ASSERT_TRUE(final_nodes);
  for (const NodeRow& node : *final_nodes) EXPECT_EQ(node.active_jobs, 0) << node.id;
}

// The paths the reservation test does not take, with two tenants: an idempotent repeat
// (counts nothing), a kill while queued, a deadline that passes in the queue, a sandbox
// deleted after it ended, and admission's one-statement read.
TEST_P(ControlStoreTest, TenantCountersFollowEveryStateChange) {
  auto other = store_->CreateTenant("beta");
  ASSERT_TRUE(other);
  ASSERT_TRUE(store_->PutPolicy(PolicyRow{.name = "b", .yaml = "name: b"}));
  ASSERT_TRUE(store_->PutPolicy(PolicyRow{.name = "a", .yaml = "name: a"}));
  auto empty = store_->ReadAdmission(tenant_.id);
  ASSERT_TRUE(empty) << empty.error().message;
  EXPECT_EQ(empty->usage.active, 0);
  EXPECT_EQ(empty->usage.tenant_id, tenant_.id);
  ASSERT_EQ(empty->policies.size(), 2u);
  EXPECT_EQ(empty->policies[0].name, "a");
  EXPECT_EQ(empty->policies[1].yaml, "name: b");

  SandboxRow keyed = Create(kT0, 1000, "key-1");
  SandboxRow repeated = Create(kT0 + 1, 1000, "key-1");
  EXPECT_EQ(repeated.id, keyed.id);
  SandboxRow to_kill = Create(kT0 + 2);
  SandboxRow theirs = Create(kT0 + 3, 1000, "", {}, 3, other->id);
  ExpectCountersExact(*store_, "created");
  EXPECT_EQ(store_->GetTenantUsage(tenant_.id)->active, 2);
  EXPECT_EQ(store_->GetTenantUsage(other->id)->active, 1);

  ASSERT_TRUE(store_->RequestKill(to_kill.id, kT0 + 10));
  ExpectCountersExact(*store_, "killed while queued");
  ASSERT_TRUE(store_->RequestKill(to_kill.id, kT0 + 11));  // again: already final
  ExpectCountersExact(*store_, "killed twice");

  SandboxRow sandbox;
  sandbox.tenant_id = other->id;
  sandbox.template_name = "base";
  sandbox.created_ms = kT0 + 20;
  auto late = store_->CreateSandbox(sandbox, JobRow{.deadline_ms = kT0 + 100, .millicpus = 1});
  ASSERT_TRUE(late);
  EXPECT_EQ(store_->GetTenantUsage(other->id)->active, 2);
  EXPECT_EQ(*store_->ScheduleBatch(kT0 + 101, 10, FirstFit), 0);  // no node: past due
  EXPECT_EQ(store_->GetSandbox(late->first.id)->state, "failed");
  ExpectCountersExact(*store_, "deadline passed");
  EXPECT_EQ(store_->GetTenantUsage(other->id)->active, 1);

  ASSERT_TRUE(store_->DeleteSandbox(to_kill.id));
  ASSERT_TRUE(store_->DeleteSandbox(late->first.id));
  ExpectCountersExact(*store_, "deleted");
  auto snapshot = store_->ReadAdmission(tenant_.id);
  ASSERT_TRUE(snapshot);
  EXPECT_EQ(snapshot->usage.active, 1);
  EXPECT_EQ(snapshot->policies.size(), 2u);
  // Deleting a sandbox does not give its creation back: the rate windows still hold both
  // creations of each tenant (the repeat was not one), the deleted ones included.
  EXPECT_EQ(snapshot->usage.CreatedWithin(60'000, kT0 + 100), 2);
  EXPECT_EQ(store_->GetTenantUsage(other->id)->CreatedWithin(60'000, kT0 + 100), 2);
}

// The rate windows against the exact count of creations, on a fake clock: exact while the
// creations sit in the current fixed window, then the previous window weighted down.
TEST_P(ControlStoreTest, RateWindowsCountCreations) {
  // A start that is a whole hour, so every window length begins there.
  constexpr int64_t kHour = 3'600'000, kStart = (kT0 / kHour + 1) * kHour;
  for (int i = 0; i < 10; ++i) Create(kStart + 100 * i);  // kStart .. kStart + 900
  auto usage = store_->GetTenantUsage(tenant_.id);
  ASSERT_TRUE(usage);
  EXPECT_EQ(usage->windows[0].start_ms, kStart);
  EXPECT_EQ(usage->windows[0].current, 10);
  for (int64_t length : kRateWindowLengthsMs) {
    EXPECT_EQ(usage->CreatedWithin(length, kStart + 999), 10) << length;
    EXPECT_EQ(usage->CreatedWithin(length, kStart + 999),
              *store_->CountSandboxesCreatedSince(tenant_.id, kStart + 999 - length))
        << length;
  }
  EXPECT_EQ(usage->CreatedWithin(5000, kStart + 999), std::nullopt);  // not kept
  // Half a second into the next second: half of the previous one still counts.
  EXPECT_EQ(usage->CreatedWithin(1000, kStart + 1500), 5);
  EXPECT_EQ(usage->CreatedWithin(1000, kStart + 1999), 1);  // rounded up
  EXPECT_EQ(usage->CreatedWithin(1000, kStart + 2000), 0);  // two windows on: none
  EXPECT_EQ(usage->CreatedWithin(60'000, kStart + 2000), 10);
  // A creation in the next second moves the window: previous 10, current 1.
  Create(kStart + 1200);
  usage = store_->GetTenantUsage(tenant_.id);
  EXPECT_EQ(usage->windows[0].start_ms, kStart + 1000);
  EXPECT_EQ(usage->windows[0].previous, 10);
  EXPECT_EQ(usage->windows[0].current, 1);
  EXPECT_EQ(usage->windows[1].current, 11);
  EXPECT_EQ(usage->CreatedWithin(1000, kStart + 1200), 1 + 8);
  // One that skips a whole second drops the old counts.
  Create(kStart + 3500);
  usage = store_->GetTenantUsage(tenant_.id);
  EXPECT_EQ(usage->windows[0].start_ms, kStart + 3000);
  EXPECT_EQ(usage->windows[0].previous, 0);
  EXPECT_EQ(usage->windows[0].current, 1);
  // A replica whose clock is behind counts into the current window rather than lose it.
  Create(kStart + 2100);
  usage = store_->GetTenantUsage(tenant_.id);
  EXPECT_EQ(usage->windows[0].start_ms, kStart + 3000);
  EXPECT_EQ(usage->windows[0].current, 2);
  EXPECT_EQ(usage->windows[2].current, 13);
  EXPECT_EQ(usage->CreatedWithin(kHour, kStart + 3600), 13);
  EXPECT_EQ(usage->CreatedWithin(1000, kStart - 5000), 2);  // the reader's clock is behind
}

// Replicas creating for two tenants at once: every creation is counted exactly once.
TEST_P(ControlStoreTest, ConcurrentCreatesCountExactly) {
  auto other = store_->CreateTenant("beta");
  ASSERT_TRUE(other);
  constexpr int kThreads = 4, kEach = 15;
  std::vector<std::thread> threads;
  std::atomic<int> failures = 0;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto replica = OpenStore();
      for (int i = 0; i < kEach && replica; ++i) {
        SandboxRow sandbox;
        sandbox.tenant_id = (t + i) % 2 == 0 ? tenant_.id : other->id;
        sandbox.template_name = "base";
        sandbox.created_ms = kT0 + i;
        // Every third one keyed: the transaction path instead of PostgreSQL's one statement.
        if (i % 3 == 0) sandbox.idempotency_key = "k" + std::to_string(t) + "-" + std::to_string(i);
        if (!replica->CreateSandbox(sandbox, JobRow{.millicpus = 1})) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  ExpectCountersExact(*store_, "after concurrent creates");
  auto mine = store_->GetTenantUsage(tenant_.id);
  auto theirs = store_->GetTenantUsage(other->id);
  ASSERT_TRUE(mine && theirs);
  EXPECT_EQ(mine->active + theirs->active, kThreads * kEach);
  EXPECT_EQ(mine->windows[2].current + theirs->windows[2].current, kThreads * kEach);
}

// A store left at schema 3 with sandboxes of two tenants: migrating fills tenant_usage from
// them (active by state, the rate windows by created_ms against the wall clock).
TEST_P(ControlStoreTest, MigrationBackfillsTenantCounters) {
  std::string skip, error;
  auto old_db = TestDatabase::Create(GetParam(), &skip, &error);
  ASSERT_TRUE(old_db) << error;
  auto db = OpenDatabase(old_db->url());
  ASSERT_TRUE(db) << db.error().message;
  ASSERT_TRUE(MigrateTo(**db, 3));
  auto wall_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  int64_t before = wall_ms();
  // (tenant, state, age in ms at `before`)
  std::vector<std::tuple<std::string, std::string, int64_t>> sandboxes = {
      {"t1", "queued", 10},        {"t1", "assigned", 30'000},  {"t1", "running", 90'000},
      {"t1", "exited", 5'000},     {"t1", "failed", 7'200'000}, {"t2", "lost", 100},
      {"t2", "running", 4'000'000}};
  for (size_t i = 0; i < sandboxes.size(); ++i) {
    auto [tenant, state, age] = sandboxes[i];
    ASSERT_TRUE((*db)->Exec(
        "INSERT INTO sandboxes (id, tenant_id, template, runtime, state, spec_json, "
        "labels_json, created_ms) VALUES ($1, $2, 'base', 'container', $3, '{}', '{}', $4)",
        {"sb_" + std::to_string(i), tenant, state, before - age}));
  }
  auto migrated = ControlStore::Open(old_db->url());
  ASSERT_TRUE(migrated) << migrated.error().message;
  int64_t after = wall_ms();
  ExpectCountersExact(**migrated, "after migration");
  auto t1 = (*migrated)->GetTenantUsage("t1");
  auto t2 = (*migrated)->GetTenantUsage("t2");
  ASSERT_TRUE(t1 && t2);
  EXPECT_EQ(t1->active, 3);
  EXPECT_EQ(t2->active, 1);
  // Each window's start is the one that held the migration's clock; current + previous
  // hold exactly the creations since the previous window began.
  for (size_t w = 0; w < kRateWindowLengthsMs.size(); ++w) {
    int64_t length = kRateWindowLengthsMs[w];
    for (const TenantUsageRow* usage : {&*t1, &*t2}) {
      const RateWindow& window = usage->windows[w];
      EXPECT_EQ(window.start_ms % length, 0) << length;
      EXPECT_GE(window.start_ms, before - before % length - length) << length;
      EXPECT_LE(window.start_ms, after) << length;
      int64_t exact =
          *(*migrated)->CountSandboxesCreatedSince(usage->tenant_id, window.start_ms - length);
      EXPECT_EQ(window.current + window.previous, exact) << usage->tenant_id << " " << length;
    }
  }
  // The hour windows hold 4 of t1's 5 (not the one from two hours ago) whatever the clock.
  EXPECT_EQ(t1->windows[2].current + t1->windows[2].previous, 4);
}

TEST_P(ControlStoreTest, HeartbeatReturnsAssignmentsAndKills) {
  Register("node-a", 4000);
  SandboxRow one = Create(kT0 + 1);
  SandboxRow two = Create(kT0 + 2);
  ASSERT_EQ(*store_->ScheduleBatch(kT0 + 10, 10, FirstFit), 2);

  auto reply = store_->Heartbeat("node-a", {"base", "python-ds"}, kT0 + 1000, kLease);
  ASSERT_TRUE(reply) << reply.error().message;
  ASSERT_EQ(reply->assignments.size(), 2u);
  EXPECT_EQ(reply->assignments[0].sandbox.id, one.id);
  EXPECT_EQ(reply->assignments[0].sandbox.attempt, 1);
  EXPECT_EQ(reply->assignments[0].job.millicpus, 1000);
  EXPECT_EQ(reply->assignments[0].sandbox.spec_json, R"({"command":["true"]})");
  EXPECT_TRUE(reply->kill.empty());
  auto node = store_->GetNode("node-a");
  ASSERT_TRUE(node);
  EXPECT_EQ(node->lease_ms, kT0 + 1000 + kLease);
  EXPECT_EQ(node->heartbeat_ms, kT0 + 1000);
  EXPECT_EQ(node->templates, (std::vector<std::string>{"base", "python-ds"}));
  EXPECT_EQ(store_->GetJob(one.id)->lease_ms, kT0 + 1000 + kLease);

  ASSERT_TRUE(store_->ReportStarted(one.id, "node-a", 1, kT0 + 1100));
  auto killed = store_->RequestKill(one.id, kT0 + 1200);
  ASSERT_TRUE(killed) << killed.error().message;
  EXPECT_EQ(killed->state, "running");
  EXPECT_TRUE(killed->kill_requested);
  reply = store_->Heartbeat("node-a", {}, kT0 + 1300, kLease);
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->kill, std::vector<std::string>{one.id});

  // A queued sandbox is killed at once; a final one is left alone.
  SandboxRow queued = Create(kT0 + 3);
  auto now_killed = store_->RequestKill(queued.id, kT0 + 1400);
  ASSERT_TRUE(now_killed);
  EXPECT_EQ(now_killed->state, "killed");
  EXPECT_EQ(now_killed->finished_ms, kT0 + 1400);
  EXPECT_EQ(store_->GetJob(queued.id)->state, "done");
  EXPECT_EQ(store_->RequestKill(queued.id, kT0 + 1500)->finished_ms, kT0 + 1400);
  EXPECT_EQ(store_->RequestKill("sb_nope", kT0).error().code, ErrorCode::kNotFound);

  EXPECT_EQ(store_->Heartbeat("node-x", {}, kT0, kLease).error().code, ErrorCode::kNotFound);
}

TEST_P(ControlStoreTest, StaleAttemptsAreRefused) {
  Register("node-a", 4000);
  Register("node-b", 4000);
  SandboxRow sandbox = Create(kT0);
  ASSERT_EQ(*store_->ScheduleBatch(kT0 + 10, 10, FirstFit), 1);
  std::string node = store_->GetSandbox(sandbox.id)->node_id;
  std::string other = node == "node-a" ? "node-b" : "node-a";

  auto wrong_attempt = store_->ReportStarted(sandbox.id, node, 2, kT0 + 20);
  ASSERT_FALSE(wrong_attempt);
  EXPECT_EQ(wrong_attempt.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(wrong_attempt.error().message.find("stale attempt"), std::string::npos);
  EXPECT_EQ(store_->ReportStarted(sandbox.id, other, 1, kT0 + 20).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->ReportStarted("sb_nope", node, 1, kT0 + 20).error().code, ErrorCode::kNotFound);

  ASSERT_TRUE(store_->ReportStarted(sandbox.id, node, 1, kT0 + 20));
  ASSERT_TRUE(store_->ReportStarted(sandbox.id, node, 1, kT0 + 21));  // repeated: fine
  auto running = store_->GetSandbox(sandbox.id);
  EXPECT_EQ(running->state, "running");
  EXPECT_EQ(running->started_ms, kT0 + 20);

  SandboxRow result;
  result.state = "exited";
  result.exit_code = 3;
  EXPECT_EQ(store_->ReportFinished(sandbox.id, other, 1, result, kT0 + 30).error().code,
            ErrorCode::kFailedPrecondition);
  result.state = "running";
  EXPECT_EQ(store_->ReportFinished(sandbox.id, node, 1, result, kT0 + 30).error().code,
            ErrorCode::kInvalidArgument);
  result.state = "exited";
  ASSERT_TRUE(store_->ReportFinished(sandbox.id, node, 1, result, kT0 + 30));
  ASSERT_TRUE(store_->ReportFinished(sandbox.id, node, 1, result, kT0 + 31));  // repeated
  auto done = store_->GetSandbox(sandbox.id);
  EXPECT_EQ(done->state, "exited");
  EXPECT_EQ(done->exit_code, 3);
  EXPECT_EQ(done->finished_ms, kT0 + 30);
  EXPECT_EQ(store_->GetJob(sandbox.id)->state, "done");
  // Finished: no more starts.
  EXPECT_EQ(store_->ReportStarted(sandbox.id, node, 1, kT0 + 40).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetNode(node)->active_jobs, 0);

  // Final sandboxes can be deleted, others cannot.
  SandboxRow waiting = Create(kT0 + 1, 100000);
  EXPECT_EQ(store_->DeleteSandbox(waiting.id).error().code, ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(store_->DeleteSandbox(sandbox.id));
  EXPECT_EQ(store_->GetSandbox(sandbox.id).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->GetJob(sandbox.id).error().code, ErrorCode::kNotFound);
}

TEST_P(ControlStoreTest, LeaseExpiryRequeuesWithBackoffThenDeadLetters) {
  Register("node-a", 4000);
  SandboxRow sandbox = Create(kT0, 1000, "", {}, /*max_attempts=*/2);
  ASSERT_EQ(*store_->ScheduleBatch(kT0, 10, FirstFit), 1);
  ASSERT_TRUE(store_->ReportStarted(sandbox.id, "node-a", 1, kT0 + 1));

  EXPECT_EQ(*store_->ExpireLeases(kT0 + kLease - 1), 0);  // still within the lease
  int64_t t1 = kT0 + kLease + 1;
  auto lost = store_->ExpireLeases(t1);
  ASSERT_TRUE(lost) << lost.error().message;
  EXPECT_EQ(*lost, 1);
  EXPECT_EQ(*store_->ExpireLeases(t1), 0);  // already lost
  EXPECT_EQ(store_->GetNode("node-a")->state, "lost");
  auto job = store_->GetJob(sandbox.id);
  EXPECT_EQ(job->state, "queued");
  EXPECT_EQ(job->available_ms, t1 + 1000);  // base backoff after attempt 1
  EXPECT_EQ(job->attempts, 1);
  EXPECT_TRUE(job->node_id.empty());
  auto queued = store_->GetSandbox(sandbox.id);
  EXPECT_EQ(queued->state, "queued");
  EXPECT_TRUE(queued->node_id.empty());
  EXPECT_NE(queued->reason.find("lost"), std::string::npos);

  auto errors = store_->ListErrors(ErrorFilter{.sandbox_id = sandbox.id});
  ASSERT_TRUE(errors);
  ASSERT_EQ(errors->size(), 1u);
  EXPECT_EQ((*errors)[0].kind, "node_lost");
  EXPECT_EQ((*errors)[0].node_id, "node-a");
  EXPECT_EQ((*errors)[0].tenant_id, tenant_.id);

  // The lost node must register again; its old attempt is refused.
  EXPECT_EQ(store_->Heartbeat("node-a", {}, t1, kLease).error().code,
            ErrorCode::kFailedPrecondition);
  SandboxRow exited;
  exited.state = "exited";
  exited.exit_code = 0;
  EXPECT_EQ(store_->ReportFinished(sandbox.id, "node-a", 1, exited, t1).error().code,
            ErrorCode::kFailedPrecondition);
  Register("node-a", 4000, t1);
  EXPECT_EQ(store_->GetNode("node-a")->state, "ready");

  EXPECT_EQ(*store_->ScheduleBatch(t1 + 999, 10, FirstFit), 0);  // backing off
  ASSERT_EQ(*store_->ScheduleBatch(t1 + 1000, 10, FirstFit), 1);
  EXPECT_EQ(store_->GetSandbox(sandbox.id)->attempt, 2);

  // Second loss: attempts exhausted -> dead letter, sandbox lost.
  int64_t t2 = t1 + kLease + 1;
  ASSERT_EQ(*store_->ExpireLeases(t2), 1);
  job = store_->GetJob(sandbox.id);
  EXPECT_EQ(job->state, "dead");
  EXPECT_NE(job->last_error.find("lost"), std::string::npos);
  EXPECT_EQ(store_->GetSandbox(sandbox.id)->state, "lost");
  auto dead = store_->ListDeadJobs();
  ASSERT_TRUE(dead);
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ((*dead)[0].id, sandbox.id);
  EXPECT_EQ(store_->GetQueueStats()->dead, 1);
  EXPECT_EQ(store_->ListErrors(ErrorFilter{.kind = "node_lost"})->size(), 2u);

  // Replay: queued again with a fresh budget; the attempt number keeps growing.
  EXPECT_EQ(store_->ReplayDeadJob("sb_nope", t2).error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(store_->ReplayDeadJob(sandbox.id, t2 + 5));
  EXPECT_EQ(store_->ReplayDeadJob(sandbox.id, t2 + 5).error().code, ErrorCode::kFailedPrecondition);
  job = store_->GetJob(sandbox.id);
  EXPECT_EQ(job->state, "queued");
  EXPECT_EQ(job->attempts, 0);
  EXPECT_EQ(job->available_ms, t2 + 5);
  auto replayed = store_->GetSandbox(sandbox.id);
  EXPECT_EQ(replayed->state, "queued");
  EXPECT_TRUE(replayed->error.empty());
  EXPECT_EQ(replayed->finished_ms, 0);
  Register("node-a", 4000, t2 + 5);
  ASSERT_EQ(*store_->ScheduleBatch(t2 + 5, 10, FirstFit), 1);
  EXPECT_EQ(store_->GetSandbox(sandbox.id)->attempt, 3);
  EXPECT_EQ(store_->GetJob(sandbox.id)->attempts, 1);
  ASSERT_TRUE(store_->ReportStarted(sandbox.id, "node-a", 3, t2 + 6));
}

TEST_P(ControlStoreTest, RetryableFailuresBackOffExponentiallyThenDie) {
  Register("node-a", 4000);
  SandboxRow sandbox = Create(kT0, 1000, "", {}, /*max_attempts=*/3);
  int64_t now = kT0;
  std::vector<int64_t> backoffs;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    ASSERT_EQ(*store_->ScheduleBatch(now, 10, FirstFit), 1) << "attempt " << attempt;
    ASSERT_TRUE(store_->ReportRetryableFailure(sandbox.id, "node-a", attempt, "runc: boom", now));
    auto job = store_->GetJob(sandbox.id);
    ASSERT_TRUE(job);
    if (attempt < 3) {
      EXPECT_EQ(job->state, "queued");
      backoffs.push_back(job->available_ms - now);
      now = job->available_ms;
    } else {
      EXPECT_EQ(job->state, "dead");
      EXPECT_EQ(job->last_error, "runc: boom");
    }
  }
  EXPECT_EQ(backoffs, (std::vector<int64_t>{1000, 2000}));
  auto failed = store_->GetSandbox(sandbox.id);
  EXPECT_EQ(failed->state, "failed");
  EXPECT_NE(failed->error.find("runc: boom"), std::string::npos);
  auto errors = store_->ListErrors(ErrorFilter{.kind = "runtime"});
  ASSERT_TRUE(errors);
  EXPECT_EQ(errors->size(), 3u);
  // A stale report of a failure changes nothing.
  EXPECT_EQ(store_->ReportRetryableFailure(sandbox.id, "node-a", 1, "late", now).error().code,
            ErrorCode::kFailedPrecondition);
}

TEST_P(ControlStoreTest, DeadlinePassedFailsTheSandbox) {
  SandboxRow sandbox;
  sandbox.tenant_id = tenant_.id;
  sandbox.template_name = "base";
  sandbox.created_ms = kT0;
  JobRow job;
  job.millicpus = 1000;
  job.deadline_ms = kT0 + 100;
  auto created = store_->CreateSandbox(sandbox, job);
  ASSERT_TRUE(created);
  std::string id = created->first.id;

  EXPECT_EQ(*store_->ScheduleBatch(kT0 + 50, 10, FirstFit), 0);
  EXPECT_EQ(store_->GetSandbox(id)->reason, "no ready node");
  EXPECT_EQ(store_->GetSandbox(id)->state, "queued");

  EXPECT_EQ(*store_->ScheduleBatch(kT0 + 101, 10, FirstFit), 0);
  auto failed = store_->GetSandbox(id);
  EXPECT_EQ(failed->state, "failed");
  EXPECT_NE(failed->error.find("no ready node"), std::string::npos);
  EXPECT_EQ(store_->GetJob(id)->state, "done");
  auto errors = store_->ListErrors(ErrorFilter{.sandbox_id = id});
  ASSERT_TRUE(errors);
  ASSERT_EQ(errors->size(), 1u);
  EXPECT_EQ((*errors)[0].kind, "scheduling");
  EXPECT_EQ((*errors)[0].created_ms, kT0 + 101);
}

TEST_P(ControlStoreTest, NodeRegistry) {
  NodeRow node = Node("node-a", 8000);
  node.labels = {{"zone", "eu"}};
  auto registered = store_->RegisterNode(node, kT0, kLease);
  ASSERT_TRUE(registered) << registered.error().message;
  EXPECT_EQ(registered->state, "ready");
  EXPECT_EQ(registered->labels.at("zone"), "eu");
  EXPECT_EQ(registered->runtimes, std::vector<std::string>{"container"});
  EXPECT_EQ(registered->lease_ms, kT0 + kLease);

  ASSERT_TRUE(store_->SetNodeState("node-a", "cordoned"));
  registered = store_->RegisterNode(node, kT0 + 5, kLease);  // a restart keeps the cordon
  ASSERT_TRUE(registered);
  EXPECT_EQ(registered->state, "cordoned");
  EXPECT_EQ(store_->SetNodeState("node-a", "lost").error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->SetNodeState("node-x", "ready").error().code, ErrorCode::kNotFound);
  ASSERT_TRUE(store_->SetNodeState("node-a", "ready"));

  ASSERT_EQ(*store_->ExpireLeases(kT0 + 5 + kLease + 1), 1);
  EXPECT_EQ(store_->SetNodeState("node-a", "ready").error().code, ErrorCode::kFailedPrecondition);

  EXPECT_EQ(store_->RegisterNode(NodeRow{}, kT0, kLease).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->GetNode("node-x").error().code, ErrorCode::kNotFound);
  auto nodes = store_->ListNodes();
  ASSERT_TRUE(nodes);
  EXPECT_EQ(nodes->size(), 1u);
}

TEST_P(ControlStoreTest, ErrorLog) {
  ASSERT_TRUE(store_->RecordError(ErrorRow{.tenant_id = tenant_.id,
                                           .sandbox_id = "sb_1",
                                           .kind = "admission",
                                           .message = "denied by rule max_cpus",
                                           .created_ms = kT0}));
  ASSERT_TRUE(store_->RecordError(ErrorRow{
      .tenant_id = tenant_.id, .sandbox_id = "sb_2", .kind = "guest", .created_ms = kT0 + 10}));
  ASSERT_TRUE(store_->RecordError(ErrorRow{
      .tenant_id = "other", .sandbox_id = "sb_3", .kind = "guest", .created_ms = kT0 + 20}));
  EXPECT_EQ(store_->RecordError(ErrorRow{}).error().code, ErrorCode::kInvalidArgument);

  auto all = store_->ListErrors(ErrorFilter{});
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].sandbox_id, "sb_3");  // newest first
  EXPECT_FALSE((*all)[0].id.empty());
  EXPECT_EQ((*all)[2].context_json, "{}");
  EXPECT_EQ(store_->ListErrors(ErrorFilter{.tenant_id = tenant_.id})->size(), 2u);
  EXPECT_EQ(store_->ListErrors(ErrorFilter{.kind = "guest"})->size(), 2u);
  EXPECT_EQ(store_->ListErrors(ErrorFilter{.since_ms = kT0 + 10})->size(), 2u);
  EXPECT_EQ(store_->ListErrors(ErrorFilter{.limit = 1})->size(), 1u);
  auto one = store_->ListErrors(ErrorFilter{.sandbox_id = "sb_1"});
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].message, "denied by rule max_cpus");
}

TEST_P(ControlStoreTest, WaitForJobsWakesOnEnqueue) {
  store_->WaitForJobs(std::chrono::milliseconds(20));  // drain, and start listening
  // Another replica enqueues: on PostgreSQL the wake-up crosses connections.
  std::unique_ptr<ControlStore> other = GetParam() == Dialect::kPostgres ? OpenStore() : nullptr;
  ControlStore& producer = other ? *other : *store_;
  std::thread enqueue([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    SandboxRow sandbox;
    sandbox.tenant_id = tenant_.id;
    sandbox.created_ms = kT0;
    EXPECT_TRUE(producer.CreateSandbox(sandbox, JobRow{}));
  });
  auto start = std::chrono::steady_clock::now();
  store_->WaitForJobs(std::chrono::seconds(20));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  enqueue.join();
}

INSTANTIATE_TEST_SUITE_P(Engines, ControlStoreTest,
                         ::testing::Values(Dialect::kSqlite, Dialect::kPostgres),
                         [](const auto& info) { return testing::DialectName(info.param); });

}  // namespace
}  // namespace tartarus::store

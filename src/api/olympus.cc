// Olympus (the API server): routes, authentication, admission and the background loops.
#include "api/olympus.h"

#include <fmt/format.h>

#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "api/node_proxy.h"
#include "api/sandbox_json.h"
#include "common/units.h"
#include "http/client.h"
#include "http/server.h"
#include "http/url.h"
#include "policy/policy.h"
#include "scheduler/scheduler.h"
#include "telemetry/log.h"

namespace tartarus::api {
namespace {

using nlohmann::json;
using Clock = std::chrono::system_clock;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
      .count();
}

struct Caller {
  std::string tenant_id, tenant_name;
  bool admin = false;
};

http::Response JsonResponse(int status, const json& body) {
  http::Response r;
  r.status = status;
  r.body = body.dump();
  return r;
}

bool Truthy(const std::map<std::string, std::string>& query, const std::string& key) {
  auto it = query.find(key);
  return it != query.end() && (it->second == "1" || it->second == "true" || it->second.empty());
}

// One stdin chunk per request at most (413 beyond): the node answers once it took it all.
constexpr size_t kMaxStdinChunkBytes = 1 << 20;

// ?offset=N of a stdin chunk: required, a byte offset.
Result<int64_t> QueryOffset(const std::map<std::string, std::string>& query) {
  auto it = query.find("offset");
  if (it == query.end()) {
    return Fail(ErrorCode::kInvalidArgument,
                "offset: required, the byte offset of this chunk in the stdin stream");
  }
  const std::string& text = it->second;
  if (text.empty() || text.size() > 15 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return Fail(ErrorCode::kInvalidArgument,
                fmt::format("offset: expected a byte offset (a non-negative integer), got '{}'",
                            text.substr(0, 32)));
  }
  return static_cast<int64_t>(std::stoll(text));
}

Result<int> QueryInt(const std::map<std::string, std::string>& query, const std::string& key,
                     int lo, int hi, int fallback) {
  auto it = query.find(key);
  if (it == query.end()) return fallback;
  char* end = nullptr;
  long v = strtol(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end != '\0' || v < lo || v > hi) {
    return Fail(ErrorCode::kInvalidArgument,
                fmt::format("{}: expected an integer between {} and {}", key, lo, hi));
  }
  return static_cast<int>(v);
}

bool IsValidNodeId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

std::string EndEvent(const store::SandboxRow& row) {
  json end = {{"event", "end"},       {"state", row.state},         {"exit_code", nullptr},
              {"signal", row.signal}, {"timed_out", row.timed_out}, {"error", row.error}};
  if (row.exit_code) end["exit_code"] = *row.exit_code;
  return end.dump() + "\n";
}

}  // namespace

struct Olympus::Impl {
  OlympusConfig config;
  std::unique_ptr<store::ControlStore> store;
  std::unique_ptr<http::Server> server;
  std::unique_ptr<NodeProxy> proxy;
  telemetry::Registry& metrics = telemetry::DefaultRegistry();
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> assign_generation{0};  // bumped when this replica assigns or kills
  std::thread scheduler_thread, lease_thread;
  std::string admin_tenant_id;
  std::mutex tenant_mu;
  std::map<std::string, std::string> tenant_names;  // id -> name; tenants are never renamed

  using JsonHandler = std::function<Result<http::Response>(http::Request&, const Caller&)>;
  using RawHandler =
      std::function<void(http::Request&, const Caller&, std::shared_ptr<http::Responder>)>;

  // ---- plumbing ----

  Result<Caller> Authenticate(const http::Request& req) {
    if (req.peer.rfind("unix:", 0) == 0) return Caller{admin_tenant_id, kAdminTenant, true};
    std::string auth = req.Header("Authorization");
    if (auth.rfind("Bearer ", 0) != 0 || auth.size() <= 7) {
      return Fail(ErrorCode::kPermissionDenied,
                  "missing bearer token: create one with `tartarus token create --tenant NAME` "
                  "and send it as 'Authorization: Bearer <token>'");
    }
    auto tenant = store->Authenticate(std::string_view(auth).substr(7));
    if (!tenant) {
      if (tenant.error().code == ErrorCode::kPermissionDenied) {
        return Fail(ErrorCode::kPermissionDenied, "invalid or revoked token");
      }
      return Fail(tenant.error());
    }
    return Caller{tenant->id, tenant->name, tenant->name == kAdminTenant};
  }

  std::string TenantName(const std::string& id) {
    {
      std::lock_guard lock(tenant_mu);
      if (auto it = tenant_names.find(id); it != tenant_names.end()) return it->second;
    }
    auto t = store->GetTenant(id);
    if (!t) return id;
    std::lock_guard lock(tenant_mu);
    tenant_names[id] = t->name;
    return t->name;
  }

  // Runs `fn` after authentication; an unauthenticated request gets 401, a non-admin one on an
  // admin route 403.
  void Route(const std::string& method, const std::string& pattern, RawHandler fn,
             bool admin_only = false, size_t max_body = 1 << 20) {
    http::RouteOptions options;
    options.blocking = true;
    options.max_body_bytes = max_body;
    server->Route(
        method, pattern,
        [this, fn = std::move(fn), admin_only](http::Request& req,
                                               std::shared_ptr<http::Responder> responder) {
          auto caller = Authenticate(req);
          if (!caller) {
            int status = caller.error().code == ErrorCode::kPermissionDenied ? 401 : 503;
            responder->Send(http::JsonError(status,
                                            status == 401 ? "unauthenticated" : "unavailable",
                                            caller.error().message, req.request_id));
            return;
          }
          if (admin_only && !caller->admin) {
            responder->Send(http::JsonError(403, "permission_denied",
                                            "this needs an admin token (tenant 'admin')",
                                            req.request_id));
            return;
          }
          fn(req, *caller, std::move(responder));
        },
        options);
  }

  void Json(const std::string& method, const std::string& pattern, JsonHandler fn,
            bool admin_only = false, size_t max_body = 1 << 20) {
    Route(
        method, pattern,
        [fn = std::move(fn)](http::Request& req, const Caller& caller,
                             std::shared_ptr<http::Responder> responder) {
          auto response = fn(req, caller);
          responder->Send(response ? std::move(*response)
                                   : http::ErrorResponse(response.error(), req.request_id));
        },
        admin_only, max_body);
  }

  // A tenant sees only its own sandboxes: another tenant's is "not found", not "forbidden".
  // A unique prefix of an id (as typed from `tartarus ps`) names that sandbox.
  Result<store::SandboxRow> OwnSandbox(const std::string& id, const Caller& caller) {
    auto row = store->GetSandbox(id);
    if (row && (caller.admin || row->tenant_id == caller.tenant_id)) return row;
    if (!row && row.error().code != ErrorCode::kNotFound) return Fail(row.error());
    auto not_found = Fail(ErrorCode::kNotFound, fmt::format("no sandbox '{}'", id));
    if (id.empty() || id.size() > 64 ||
        id.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
            std::string::npos) {
      return not_found;
    }
    auto matches = TRY(store->FindSandboxIdsByPrefix(caller.admin ? "" : caller.tenant_id, id, 3));
    if (matches.empty()) return not_found;
    if (matches.size() > 1) {
      return Fail(ErrorCode::kInvalidArgument,
                  fmt::format("sandbox id prefix '{}' is ambiguous: it matches {}{}; give more of "
                              "the id",
                              id, fmt::join(matches.begin(), matches.begin() + 2, ", "),
                              matches.size() > 2 ? " and more" : ""));
    }
    return store->GetSandbox(matches[0]);
  }

  json SandboxJson(const store::SandboxRow& row) {
    return SandboxToJson(row, TenantName(row.tenant_id));
  }

  telemetry::Histogram& Phase(const char* phase) {
    return metrics.histogram("tartarus_phase_seconds",
                             "Latency of each phase of a sandbox: admit, queue, place, start, run",
                             {{"phase", phase}},
                             {.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                              1, 2.5, 5, 10, 30, 60, 300});
  }

  // ---- sandboxes ----

  Result<http::Response> CreateSandbox(http::Request& req, const Caller& caller,
                                       std::shared_ptr<http::Responder> responder) {
    auto started = std::chrono::steady_clock::now();
    auto request = TRY(ParseCreateRequest(req.body));
    std::string idempotency_key = req.Header("Idempotency-Key");
    if (idempotency_key.size() > 128) {
      return Fail(ErrorCode::kInvalidArgument, "Idempotency-Key: longer than 128 bytes");
    }
    int64_t now = NowMs();

    // Themis: the policies and the tenant's counters in one read, O(1) in the number of
    // sandboxes (the store keeps the counters in step with every state change).
    std::vector<policy::Policy> policies;
    auto snapshot = TRY(store->ReadAdmission(caller.tenant_id));
    for (const auto& row : snapshot.policies) {
      auto parsed = policy::ParsePolicy(row.yaml, row.name);
      if (!parsed) {
        // Validated when stored; a stricter parser later must not stop every admission.
        telemetry::LogJson("error", "stored policy no longer parses; skipped",
                           {{"policy", row.name}, {"error", parsed.error().message}});
        continue;
      }
      policies.push_back(std::move(*parsed));
    }
    policy::AdmissionRequest areq;
    areq.tenant = caller.tenant_name;
    areq.template_name = request.template_name;
    areq.runtime = request.runtime;
    areq.millicpus = request.millicpus;
    areq.memory_bytes = request.memory_bytes;
    areq.disk_bytes = request.disk_bytes;
    if (request.timeout_ms) areq.timeout = std::chrono::milliseconds(*request.timeout_ms);
    policy::TenantUsage usage;
    usage.active = snapshot.usage.active;
    usage.created_within = [&](std::chrono::milliseconds window) -> int64_t {
      if (auto estimate = snapshot.usage.CreatedWithin(window.count(), now)) return *estimate;
      // A window the counters do not keep (policies name only 1 s, 1 min or 1 h): count.
      auto n = store->CountSandboxesCreatedSince(caller.tenant_id, now - window.count());
      return n ? *n : 0;
    };
    auto admission = policy::Evaluate(areq, policies, usage);
    if (!admission) {
      const auto& denial = admission.error();
      metrics
          .counter("tartarus_admission_denied_total", "Requests Themis denied, by rule",
                   {{"rule", denial.rule}})
          .Inc();
      store::ErrorRow error;
      error.tenant_id = caller.tenant_id;
      error.kind = "admission";
      error.message = denial.reason;
      error.context_json = json{
          {"policy", denial.policy},
          {"rule", denial.rule},
          {"template", request.template_name},
          {"request_id",
           req.request_id}}.dump();
      (void)store->RecordError(error);
      int status = denial.retry_later ? 429 : 403;
      return http::JsonError(status, denial.retry_later ? "rate_limited" : "policy_denied",
                             denial.reason, req.request_id);
    }

    RunSpec spec;
    spec.command = request.command;
    spec.env = request.env;
    spec.workdir = request.workdir;
    spec.user = request.user;
    spec.millicpus = admission->millicpus;
    spec.memory_bytes = admission->memory_bytes;
    spec.disk_bytes = admission->disk_bytes;
    spec.timeout_ms = admission->timeout.count();
    spec.pids = request.pids;
    spec.stdin = request.stdin;
    std::string runtime = !request.runtime.empty()      ? request.runtime
                          : !admission->runtime.empty() ? admission->runtime
                                                        : "container";

    store::SandboxRow sandbox;
    sandbox.id = NewSandboxId();
    sandbox.tenant_id = caller.tenant_id;
    sandbox.template_name = request.template_name;
    sandbox.runtime = runtime;
    sandbox.state = "queued";
    sandbox.spec_json = RunSpecToJson(spec);
    sandbox.labels = request.labels;
    sandbox.created_ms = now;
    sandbox.idempotency_key = idempotency_key;
    store::JobRow job;
    job.id = sandbox.id;
    job.priority = request.priority;
    job.state = "queued";
    job.max_attempts = request.max_attempts;
    job.available_ms = now;
    job.deadline_ms = request.deadline_ms ? now + request.deadline_ms : 0;
    job.millicpus = spec.millicpus;
    job.memory_bytes = spec.memory_bytes;
    job.template_name = sandbox.template_name;
    job.runtime = runtime;
    job.selector = request.node_selector;
    job.created_ms = now;
    auto [row, created] = TRY(store->CreateSandbox(sandbox, job));
    Phase("admit").Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    if (created) {
      metrics.counter("tartarus_sandboxes_created_total", "Sandboxes admitted and queued").Inc();
      telemetry::LogJson("info", "sandbox created",
                         {{"request_id", req.request_id},
                          {"sandbox", row.id},
                          {"tenant", caller.tenant_name},
                          {"template", row.template_name},
                          {"runtime", row.runtime}});
    }
    if (Truthy(req.query, "wait") && !store::IsFinalSandboxState(row.state)) {
      WaitUntilFinal(row.id, responder);
      return http::Response{.status = 0};  // answered later
    }
    return JsonResponse(created ? 201 : 200, SandboxJson(row));
  }

  // wait=true: checks every 200 ms (on the proxy's timer, the check itself on a worker).
  void WaitUntilFinal(const std::string& id, std::shared_ptr<http::Responder> responder) {
    proxy->After(std::chrono::milliseconds(200), [this, id, responder] {
      if (responder->closed() || stopping) return;
      server->Post([this, id, responder] {
        auto row = store->GetSandbox(id);
        if (!row) {
          responder->Send(http::ErrorResponse(row.error(), responder->request_id()));
        } else if (store::IsFinalSandboxState(row->state)) {
          responder->Send(JsonResponse(200, SandboxJson(*row)));
        } else {
          WaitUntilFinal(id, responder);
        }
      });
    });
  }

  Result<http::Response> ListSandboxes(http::Request& req, const Caller& caller) {
    store::SandboxFilter filter;
    if (!caller.admin) filter.tenant_id = caller.tenant_id;
    if (auto it = req.query.find("tenant"); it != req.query.end() && caller.admin) {
      auto t = TRY(store->GetTenant(it->second));
      filter.tenant_id = t.id;
    }
    auto get = [&](const char* key) {
      auto it = req.query.find(key);
      return it == req.query.end() ? std::string() : it->second;
    };
    filter.state = get("state");
    if (!filter.state.empty() && !store::IsFinalSandboxState(filter.state) &&
        filter.state != "queued" && filter.state != "assigned" && filter.state != "running") {
      return Fail(
          ErrorCode::kInvalidArgument,
          fmt::format("state: '{}' is not one of queued, assigned, running, exited, killed, "
                      "failed, lost",
                      filter.state));
    }
    filter.template_name = get("template");
    filter.node_id = get("node");
    filter.page_token = get("page_token");
    if (std::string label = get("label"); !label.empty()) {
      // Several labels: comma-separated k=v pairs.
      size_t start = 0;
      while (start < label.size()) {
        size_t end = label.find(',', start);
        if (end == std::string::npos) end = label.size();
        std::string kv = label.substr(start, end - start);
        size_t eq = kv.find('=');
        if (eq == std::string::npos || eq == 0) {
          return Fail(ErrorCode::kInvalidArgument, "label: expected key=value[,key=value...]");
        }
        filter.labels[kv.substr(0, eq)] = kv.substr(eq + 1);
        start = end + 1;
      }
    }
    filter.limit = TRY(QueryInt(req.query, "limit", 1, 1000, 100));
    auto page = TRY(store->ListSandboxes(filter));
    json items = json::array();
    for (const auto& row : page.items) items.push_back(SandboxJson(row));
    json body = {{"items", items}};
    if (!page.next_page_token.empty()) body["next_page_token"] = page.next_page_token;
    return JsonResponse(200, body);
  }

  // Logs: forwarded from the node that ran the sandbox; Olympus adds the end event once the
  // store has the final state, so `end` always carries the authoritative exit code.
  void Logs(const std::string& id, bool follow, std::shared_ptr<http::Responder> responder,
            int waited_ms) {
    auto row = store->GetSandbox(id);
    if (!row) return responder->Send(http::ErrorResponse(row.error(), responder->request_id()));
    if (!row->node_id.empty() && row->attempt > 0 && row->state != "assigned") {
      auto node = store->GetNode(row->node_id);
      if (!node) return responder->Send(http::ErrorResponse(node.error(), responder->request_id()));
      std::string target = fmt::format("/v1/node/sandboxes/{}/logs?attempt={}&follow={}", id,
                                       row->attempt, follow ? 1 : 0);
      proxy->Forward(node->address, "GET", target, "", responder,
                     [this, id, responder](int status) {
                       if (status == 0) return;  // a 502 was sent
                       if (status != 200 && status != -1) return responder->Finish();
                       server->Post([this, id, responder] { FinishLogs(id, responder, 0); });
                     });
      return;
    }
    if (store::IsFinalSandboxState(row->state) || !follow) {
      responder->StartStream(200, "application/x-ndjson");
      responder->Write(EndEvent(*row));
      return responder->Finish();
    }
    // Queued or just assigned: wait for it to start (bounded by the client staying connected).
    proxy->After(std::chrono::milliseconds(200), [this, id, follow, responder, waited_ms] {
      if (responder->closed() || stopping) return;
      server->Post([this, id, follow, responder, waited_ms] {
        Logs(id, follow, responder, waited_ms + 200);
      });
    });
  }

  void FinishLogs(const std::string& id, std::shared_ptr<http::Responder> responder,
                  int waited_ms) {
    if (responder->closed()) return;
    auto row = store->GetSandbox(id);
    // The node ends the stream when its run ends; its report reaches the store just after.
    if (row && !store::IsFinalSandboxState(row->state) && waited_ms < 10000) {
      proxy->After(std::chrono::milliseconds(50), [this, id, responder, waited_ms] {
        server->Post(
            [this, id, responder, waited_ms] { FinishLogs(id, responder, waited_ms + 50); });
      });
      return;
    }
    if (row) responder->Write(EndEvent(*row));
    responder->Finish();
  }

  Result<store::NodeRow> RunningOn(const store::SandboxRow& row) {
    if (row.state != "running" || row.node_id.empty()) {
      return Fail(ErrorCode::kFailedPrecondition,
                  fmt::format("sandbox {} is {}, not running", row.id, row.state));
    }
    return store->GetNode(row.node_id);
  }

  // ---- nodes ----

  Result<http::Response> RegisterNode(http::Request& req) {
    json doc = json::parse(req.body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return Fail(ErrorCode::kInvalidArgument, "request body: expected a JSON object");
    }
    store::NodeRow node;
    try {
      node.id = doc.value("id", "");
      node.name = doc.value("name", node.id);
      node.address = doc.value("address", "");
      node.millicpus = doc.value("millicpus", int64_t{0});
      node.memory_bytes = doc.value("memory_bytes", int64_t{0});
      node.labels = doc.value("labels", std::map<std::string, std::string>{});
      node.runtimes = doc.value("runtimes", std::vector<std::string>{});
      node.templates = doc.value("templates", std::vector<std::string>{});
    } catch (const json::exception& e) {
      return Fail(ErrorCode::kInvalidArgument, fmt::format("node: {}", e.what()));
    }
    if (!IsValidNodeId(node.id)) {
      return Fail(ErrorCode::kInvalidArgument, "id: expected [A-Za-z0-9._-], 1 to 64 characters");
    }
    if (node.address.empty()) return Fail(ErrorCode::kInvalidArgument, "address: required");
    if (node.millicpus <= 0 || node.memory_bytes <= 0) {
      return Fail(ErrorCode::kInvalidArgument, "millicpus and memory_bytes: must be positive");
    }
    auto row = TRY(store->RegisterNode(node, NowMs(), config.node_lease.count()));
    telemetry::LogJson("info", "node registered",
                       {{"node", row.id}, {"address", row.address}, {"state", row.state}});
    return JsonResponse(200, NodeToJson(row));
  }

  // A heartbeat renews the node's lease and answers with its assignments. With wait_ms it is
  // a long poll: when nothing is new for the node (every assignment is in `known`, no kill),
  // the answer waits until the scheduler assigns something or wait_ms passes, so a new
  // sandbox starts without waiting for the next heartbeat.
  struct HeartbeatAsk {
    std::string node_id;
    std::vector<std::string> templates;
    std::set<std::string> known;  // run ids ("<id>-<attempt>") the node already handles
    int wait_ms = 0;
  };

  Result<HeartbeatAsk> ParseHeartbeat(http::Request& req) {
    HeartbeatAsk ask;
    ask.node_id = req.params["id"];
    if (req.body.empty()) return ask;
    json doc = json::parse(req.body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return Fail(ErrorCode::kInvalidArgument, "request body: expected a JSON object");
    }
    auto strings = [&](const char* key, auto add) -> Status {
      auto it = doc.find(key);
      if (it == doc.end()) return Ok();
      if (!it->is_array() || it->size() > 100000) {
        return Fail(ErrorCode::kInvalidArgument,
                    std::string(key) + ": expected an array of strings");
      }
      for (const auto& t : *it) {
        if (t.is_string()) add(t.get<std::string>());
      }
      return Ok();
    };
    TRY(strings("templates", [&](std::string t) { ask.templates.push_back(std::move(t)); }));
    TRY(strings("known", [&](std::string t) { ask.known.insert(std::move(t)); }));
    if (auto it = doc.find("wait_ms"); it != doc.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 5000) {
        return Fail(ErrorCode::kInvalidArgument, "wait_ms: expected 0 to 5000");
      }
      ask.wait_ms = it->get<int>();
    }
    return ask;
  }

  // One heartbeat; *news tells whether it holds anything the node does not know yet.
  Result<http::Response> HeartbeatOnce(const HeartbeatAsk& ask, bool* news) {
    int64_t now = NowMs();
    auto reply = TRY(store->Heartbeat(ask.node_id, ask.templates, now, config.node_lease.count()));
    json assignments = json::array();
    *news = !reply.kill.empty();
    for (const auto& a : reply.assignments) {
      assignments.push_back({{"sandbox", SandboxJson(a.sandbox)}, {"attempt", a.sandbox.attempt}});
      if (!ask.known.count(a.sandbox.id + "-" + std::to_string(a.sandbox.attempt))) *news = true;
    }
    return JsonResponse(200, {{"assignments", assignments},
                              {"kill", reply.kill},
                              {"lease_ms", now + config.node_lease.count()}});
  }

  void Heartbeat(http::Request& req, std::shared_ptr<http::Responder> responder) {
    auto ask = ParseHeartbeat(req);
    if (!ask) return responder->Send(http::ErrorResponse(ask.error(), req.request_id));
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ask->wait_ms);
    PollHeartbeat(std::make_shared<HeartbeatAsk>(std::move(*ask)), until, responder);
  }

  void PollHeartbeat(std::shared_ptr<HeartbeatAsk> ask, std::chrono::steady_clock::time_point until,
                     std::shared_ptr<http::Responder> responder) {
    uint64_t seen = assign_generation.load();
    bool news = false;
    auto response = HeartbeatOnce(*ask, &news);
    if (!response || news || std::chrono::steady_clock::now() >= until || stopping) {
      return responder->Send(response
                                 ? std::move(*response)
                                 : http::ErrorResponse(response.error(), responder->request_id()));
    }
    WaitForAssignments(ask, until, seen, std::chrono::steady_clock::now(), responder);
  }

  // Checks every 20 ms whether this replica's scheduler assigned anything (no store access),
  // and asks the store every 500 ms for what other replicas assigned.
  void WaitForAssignments(std::shared_ptr<HeartbeatAsk> ask,
                          std::chrono::steady_clock::time_point until, uint64_t seen,
                          std::chrono::steady_clock::time_point last_check,
                          std::shared_ptr<http::Responder> responder) {
    proxy->After(std::chrono::milliseconds(20), [=, this] {
      if (responder->closed()) return;
      auto now = std::chrono::steady_clock::now();
      if (assign_generation.load() != seen || now >= until || stopping ||
          now - last_check >= std::chrono::milliseconds(500)) {
        server->Post([=, this] { PollHeartbeat(ask, until, responder); });
        return;
      }
      WaitForAssignments(ask, until, seen, last_check, responder);
    });
  }

  Result<http::Response> Report(http::Request& req) {
    const std::string& node_id = req.params["id"];
    json doc = json::parse(req.body, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) {
      return Fail(ErrorCode::kInvalidArgument, "request body: expected a JSON object");
    }
    std::string sandbox_id, event, state, error;
    int attempt = 0;
    store::SandboxRow result;
    bool retryable = false;
    try {
      sandbox_id = doc.value("sandbox", "");
      attempt = doc.value("attempt", 0);
      event = doc.value("event", "");
      result.state = doc.value("state", "");
      if (auto it = doc.find("exit_code"); it != doc.end() && it->is_number_integer()) {
        result.exit_code = it->get<int>();
      }
      result.signal = doc.value("signal", 0);
      result.timed_out = doc.value("timed_out", false);
      result.error = doc.value("error", "");
      retryable = doc.value("retryable", false);
    } catch (const json::exception& e) {
      return Fail(ErrorCode::kInvalidArgument, fmt::format("report: {}", e.what()));
    }
    int64_t now = NowMs();
    if (event == "started") {
      TRY(store->ReportStarted(sandbox_id, node_id, attempt, now));
      if (auto row = store->GetSandbox(sandbox_id)) {
        Phase("start").Observe((now - row->created_ms) / 1000.0);
      }
    } else if (event == "finished" || (event == "failed" && !retryable)) {
      if (event == "failed") result.state = "failed";
      if (result.state != "exited" && result.state != "killed" && result.state != "failed") {
        return Fail(ErrorCode::kInvalidArgument, "state: expected exited, killed or failed");
      }
      TRY(store->ReportFinished(sandbox_id, node_id, attempt, result, now));
      auto row = store->GetSandbox(sandbox_id);
      if (row && row->started_ms > 0) Phase("run").Observe((now - row->started_ms) / 1000.0);
      // ReportFinished wrote the Cocytus row for failures and timeouts.
    } else if (event == "failed") {
      TRY(store->ReportRetryableFailure(sandbox_id, node_id, attempt, result.error, now));
    } else {
      return Fail(ErrorCode::kInvalidArgument, "event: expected started, finished or failed");
    }
    return http::Response{.status = 204, .content_type = "", .body = ""};
  }

  Result<http::Response> NodeAction(http::Request& req, const std::string& state) {
    const std::string& id = req.params["id"];
    TRY(store->SetNodeState(id, state));
    auto node = TRY(store->GetNode(id));
    telemetry::LogJson("info", "node state changed", {{"node", id}, {"state", state}});
    return JsonResponse(200, NodeToJson(node));
  }

  // ---- routes ----

  void RegisterRoutes() {
    http::RouteOptions light;
    server->Route(
        "GET", "/healthz",
        [](http::Request&, std::shared_ptr<http::Responder> r) {
          r->Send(JsonResponse(200, {{"status", "ok"}}));
        },
        light);
    http::RouteOptions blocking;
    blocking.blocking = true;
    server->Route(
        "GET", "/readyz",
        [this](http::Request& req, std::shared_ptr<http::Responder> r) {
          auto ok = store->db().Query("SELECT 1");
          r->Send(ok ? JsonResponse(200, {{"status", "ready"}})
                     : http::JsonError(503, "unavailable", "store: " + ok.error().message,
                                       req.request_id));
        },
        blocking);
    server->Route(
        "GET", "/metrics",
        [this](http::Request& req, std::shared_ptr<http::Responder> r) {
          if (!config.open_metrics) {
            auto caller = Authenticate(req);
            if (!caller) {
              return r->Send(
                  http::JsonError(401, "unauthenticated", caller.error().message, req.request_id));
            }
          }
          RefreshGauges();
          r->Send(http::Response{.status = 200,
                                 .content_type = "text/plain; version=0.0.4",
                                 .body = metrics.RenderPrometheus()});
        },
        blocking);

    Route("POST", "/v1/sandboxes",
          [this](http::Request& req, const Caller& caller, std::shared_ptr<http::Responder> r) {
            auto response = CreateSandbox(req, caller, r);
            if (!response) return r->Send(http::ErrorResponse(response.error(), req.request_id));
            if (response->status != 0) r->Send(std::move(*response));
          });
    Json("GET", "/v1/sandboxes",
         [this](http::Request& req, const Caller& caller) { return ListSandboxes(req, caller); });
    Json("GET", "/v1/sandboxes/{id}",
         [this](http::Request& req, const Caller& caller) -> Result<http::Response> {
           auto row = TRY(OwnSandbox(req.params["id"], caller));
           return JsonResponse(200, SandboxJson(row));
         });
    Json("DELETE", "/v1/sandboxes/{id}",
         [this](http::Request& req, const Caller& caller) -> Result<http::Response> {
           auto row = TRY(OwnSandbox(req.params["id"], caller));
           if (!store::IsFinalSandboxState(row.state)) {
             return Fail(ErrorCode::kFailedPrecondition,
                         fmt::format("sandbox {} is {}: kill it first", row.id, row.state));
           }
           if (!row.node_id.empty() && row.attempt > 0) {
             // Best effort: the node drops its record and logs; a lost node cleans up itself.
             if (auto node = store->GetNode(row.node_id)) {
               if (auto client = http::Client::Create(
                       node->address, {.connect_timeout = std::chrono::milliseconds(1000),
                                       .request_timeout = std::chrono::milliseconds(3000)})) {
                 (void)client->Do("DELETE", fmt::format("/v1/node/sandboxes/{}?attempt={}", row.id,
                                                        row.attempt));
               }
             }
           }
           TRY(store->DeleteSandbox(row.id));
           return http::Response{.status = 204, .content_type = "", .body = ""};
         });
    Json("POST", "/v1/sandboxes/{id}/kill",
         [this](http::Request& req, const Caller& caller) -> Result<http::Response> {
           auto row = TRY(OwnSandbox(req.params["id"], caller));
           auto after = TRY(store->RequestKill(row.id, NowMs()));
           assign_generation++;  // wakes the node's long-polling heartbeat
           return JsonResponse(200, SandboxJson(after));
         });
    Route("GET", "/v1/sandboxes/{id}/logs",
          [this](http::Request& req, const Caller& caller, std::shared_ptr<http::Responder> r) {
            auto row = OwnSandbox(req.params["id"], caller);
            if (!row) return r->Send(http::ErrorResponse(row.error(), req.request_id));
            Logs(row->id, Truthy(req.query, "follow"), r, 0);
          });
    Route("POST", "/v1/sandboxes/{id}/exec",
          [this](http::Request& req, const Caller& caller, std::shared_ptr<http::Responder> r) {
            auto row = OwnSandbox(req.params["id"], caller);
            if (!row) return r->Send(http::ErrorResponse(row.error(), req.request_id));
            auto exec = ParseExecRequest(req.body);
            if (!exec) return r->Send(http::ErrorResponse(exec.error(), req.request_id));
            auto node = RunningOn(*row);
            if (!node) return r->Send(http::ErrorResponse(node.error(), req.request_id));
            proxy->Forward(
                node->address, "POST",
                fmt::format("/v1/node/sandboxes/{}/exec?attempt={}", row->id, row->attempt),
                ExecRequestToJson(*exec).dump(), r);
          });
    // Stdin chunks (docs/control-plane.md, "Stdin through the API"): checked here, then
    // forwarded to the node, whose answer comes once it took the chunk (backpressure).
    auto stdin_chunk = [this](http::Request& req, const Caller& caller,
                              std::shared_ptr<http::Responder> r) {
      auto row = OwnSandbox(req.params["id"], caller);
      if (!row) return r->Send(http::ErrorResponse(row.error(), req.request_id));
      std::string exec_path;
      if (auto exec = req.params.find("exec_id"); exec != req.params.end()) {
        if (!IsValidExecId(exec->second)) {
          return r->Send(http::JsonError(
              404, "not_found",
              fmt::format("no exec '{}' in sandbox {}", exec->second.substr(0, 64), row->id),
              req.request_id));
        }
        exec_path = "/execs/" + exec->second;
      }
      auto offset = QueryOffset(req.query);
      if (!offset) return r->Send(http::ErrorResponse(offset.error(), req.request_id));
      if (store::IsFinalSandboxState(row->state)) {
        return r->Send(http::JsonError(
            409, "stdin_closed",
            fmt::format("sandbox {} has {}: its stdin is closed", row->id, row->state),
            req.request_id));
      }
      auto node = RunningOn(*row);
      if (!node) return r->Send(http::ErrorResponse(node.error(), req.request_id));
      proxy->Forward(node->address, "POST",
                     fmt::format("/v1/node/sandboxes/{}{}/stdin?attempt={}&offset={}&eof={}",
                                 row->id, exec_path, row->attempt, *offset,
                                 Truthy(req.query, "eof") ? "true" : "false"),
                     std::move(req.body), r);
    };
    Route("POST", "/v1/sandboxes/{id}/stdin", stdin_chunk, false, kMaxStdinChunkBytes);
    Route("POST", "/v1/sandboxes/{id}/execs/{exec_id}/stdin", stdin_chunk, false,
          kMaxStdinChunkBytes);
    auto files = [this](http::Request& req, const Caller& caller,
                        std::shared_ptr<http::Responder> r) {
      auto row = OwnSandbox(req.params["id"], caller);
      if (!row) return r->Send(http::ErrorResponse(row.error(), req.request_id));
      auto path = req.query.find("path");
      if (path == req.query.end() || path->second.empty() || path->second[0] != '/') {
        return r->Send(http::JsonError(400, "invalid_argument",
                                       "path: required, an absolute path inside the sandbox",
                                       req.request_id));
      }
      auto node = RunningOn(*row);
      if (!node) return r->Send(http::ErrorResponse(node.error(), req.request_id));
      std::string target = fmt::format("/v1/node/sandboxes/{}/files?attempt={}&path={}", row->id,
                                       row->attempt, http::UrlEncode(path->second));
      if (auto mode = req.query.find("mode"); mode != req.query.end()) {
        target += "&mode=" + http::UrlEncode(mode->second);
      }
      proxy->Forward(node->address, req.method, target, std::move(req.body), r);
    };
    Route("GET", "/v1/sandboxes/{id}/files", files);
    Route("PUT", "/v1/sandboxes/{id}/files", files, false, 64 << 20);

    Json("GET", "/v1/templates", [this](http::Request&, const Caller&) -> Result<http::Response> {
      auto nodes = TRY(store->ListNodes());
      std::map<std::string, std::vector<std::string>> by_template;
      for (const auto& n : nodes) {
        for (const auto& t : n.templates) by_template[t].push_back(n.id);
      }
      json items = json::array();
      for (const auto& [name, on] : by_template) items.push_back({{"name", name}, {"nodes", on}});
      return JsonResponse(200, {{"items", items}});
    });

    Json("GET", "/v1/nodes", [this](http::Request&, const Caller&) -> Result<http::Response> {
      auto nodes = TRY(store->ListNodes());
      json items = json::array();
      for (const auto& n : nodes) items.push_back(NodeToJson(n));
      return JsonResponse(200, {{"items", items}});
    });
    Json(
        "POST", "/v1/nodes",
        [this](http::Request& req, const Caller&) { return RegisterNode(req); }, true);
    Json("GET", "/v1/nodes/{id}",
         [this](http::Request& req, const Caller&) -> Result<http::Response> {
           auto node = TRY(store->GetNode(req.params["id"]));
           return JsonResponse(200, NodeToJson(node));
         });
    Json(
        "POST", "/v1/nodes/{id}/cordon",
        [this](http::Request& req, const Caller&) { return NodeAction(req, "cordoned"); }, true);
    Json(
        "POST", "/v1/nodes/{id}/uncordon",
        [this](http::Request& req, const Caller&) { return NodeAction(req, "ready"); }, true);
    Json(
        "POST", "/v1/nodes/{id}/drain",
        [this](http::Request& req, const Caller&) { return NodeAction(req, "draining"); }, true);
    Route(
        "POST", "/v1/nodes/{id}/heartbeat",
        [this](http::Request& req, const Caller&, std::shared_ptr<http::Responder> r) {
          Heartbeat(req, r);
        },
        true);
    Json(
        "POST", "/v1/nodes/{id}/reports",
        [this](http::Request& req, const Caller&) { return Report(req); }, true);

    Json("GET", "/v1/policies", [this](http::Request&, const Caller&) -> Result<http::Response> {
      auto rows = TRY(store->ListPolicies());
      json items = json::array();
      for (const auto& p : rows) {
        items.push_back({{"name", p.name},
                         {"tenant", p.tenant},
                         {"template", p.template_name},
                         {"yaml", p.yaml},
                         {"updated_ms", p.updated_ms}});
      }
      return JsonResponse(200, {{"items", items}});
    });
    Json("GET", "/v1/policies/{name}",
         [this](http::Request& req, const Caller&) -> Result<http::Response> {
           auto p = TRY(store->GetPolicy(req.params["name"]));
           return JsonResponse(200, {{"name", p.name},
                                     {"tenant", p.tenant},
                                     {"template", p.template_name},
                                     {"yaml", p.yaml},
                                     {"updated_ms", p.updated_ms}});
         });
    Json(
        "PUT", "/v1/policies/{name}",
        [this](http::Request& req, const Caller&) -> Result<http::Response> {
          const std::string& name = req.params["name"];
          auto parsed = TRY(policy::ParsePolicy(req.body, name + ".yaml"));
          if (parsed.name != name) {
            return Fail(ErrorCode::kInvalidArgument,
                        fmt::format("the policy file names '{}' but the URL names '{}'",
                                    parsed.name, name));
          }
          store::PolicyRow row{parsed.name, parsed.tenant, parsed.template_name, req.body, NowMs()};
          TRY(store->PutPolicy(row));
          telemetry::LogJson("info", "policy stored",
                             {{"policy", name}, {"request_id", req.request_id}});
          return JsonResponse(200, {{"name", row.name},
                                    {"tenant", row.tenant},
                                    {"template", row.template_name},
                                    {"yaml", row.yaml},
                                    {"updated_ms", row.updated_ms}});
        },
        true, policy::kMaxPolicyBytes);
    Json(
        "DELETE", "/v1/policies/{name}",
        [this](http::Request& req, const Caller&) -> Result<http::Response> {
          TRY(store->DeletePolicy(req.params["name"]));
          return http::Response{.status = 204, .content_type = "", .body = ""};
        },
        true);

    Json(
        "GET", "/v1/tenants",
        [this](http::Request&, const Caller&) -> Result<http::Response> {
          auto tenants = TRY(store->ListTenants());
          json items = json::array();
          for (const auto& t : tenants) {
            items.push_back({{"id", t.id}, {"name", t.name}, {"created_ms", t.created_ms}});
          }
          return JsonResponse(200, {{"items", items}});
        },
        true);
    Json(
        "GET", "/v1/tokens",
        [this](http::Request&, const Caller&) -> Result<http::Response> {
          auto tokens = TRY(store->ListTokens(""));
          json items = json::array();
          for (const auto& t : tokens) {
            json item = {{"id", t.id},
                         {"tenant", TenantName(t.tenant_id)},
                         {"name", t.name},
                         {"created_ms", t.created_ms},
                         {"revoked_ms", nullptr}};
            if (t.revoked_ms) item["revoked_ms"] = *t.revoked_ms;
            items.push_back(item);
          }
          return JsonResponse(200, {{"items", items}});
        },
        true);
    Json(
        "POST", "/v1/tokens",
        [this](http::Request& req, const Caller&) -> Result<http::Response> {
          json doc = json::parse(req.body, nullptr, false);
          if (doc.is_discarded() || !doc.is_object() || !doc.contains("tenant") ||
              !doc["tenant"].is_string()) {
            return Fail(ErrorCode::kInvalidArgument, "expected {\"tenant\": NAME, \"name\": ...}");
          }
          for (auto it = doc.begin(); it != doc.end(); ++it) {
            if (it.key() != "tenant" && it.key() != "name") {
              return Fail(ErrorCode::kInvalidArgument, it.key() + ": unknown field");
            }
          }
          std::string tenant_name = doc["tenant"].get<std::string>();
          std::string name =
              doc.contains("name") && doc["name"].is_string() ? doc["name"].get<std::string>() : "";
          if (!IsValidNodeId(tenant_name)) {
            return Fail(ErrorCode::kInvalidArgument,
                        "tenant: expected [A-Za-z0-9._-], 1 to 64 characters");
          }
          if (name.size() > 128) return Fail(ErrorCode::kInvalidArgument, "name: too long");
          auto tenant = store->GetTenant(tenant_name);
          if (!tenant && tenant.error().code == ErrorCode::kNotFound) {
            tenant = store->CreateTenant(tenant_name);
            if (!tenant && tenant.error().code == ErrorCode::kAlreadyExists) {
              tenant = store->GetTenant(tenant_name);
            }
          }
          if (!tenant) return Fail(tenant.error());
          auto [info, secret] = TRY(store->CreateToken(tenant->id, name));
          telemetry::LogJson(
              "info", "token created",
              {{"token", info.id}, {"tenant", tenant->name}, {"request_id", req.request_id}});
          return JsonResponse(201, {{"id", info.id},
                                    {"tenant", tenant->name},
                                    {"name", info.name},
                                    {"secret", secret},
                                    {"created_ms", info.created_ms},
                                    {"revoked_ms", nullptr}});
        },
        true);
    Json(
        "DELETE", "/v1/tokens/{id}",
        [this](http::Request& req, const Caller&) -> Result<http::Response> {
          TRY(store->RevokeToken(req.params["id"]));
          return http::Response{.status = 204, .content_type = "", .body = ""};
        },
        true);

    Json("GET", "/v1/errors",
         [this](http::Request& req, const Caller& caller) -> Result<http::Response> {
           store::ErrorFilter filter;
           if (!caller.admin) filter.tenant_id = caller.tenant_id;
           if (auto it = req.query.find("sandbox"); it != req.query.end())
             filter.sandbox_id = it->second;
           if (auto it = req.query.find("kind"); it != req.query.end()) filter.kind = it->second;
           filter.limit = TRY(QueryInt(req.query, "limit", 1, 1000, 100));
           auto rows = TRY(store->ListErrors(filter));
           json items = json::array();
           for (const auto& e : rows) {
             json context = json::parse(e.context_json, nullptr, false);
             if (context.is_discarded()) context = json::object();
             items.push_back({{"id", e.id},
                              {"tenant", e.tenant_id.empty() ? "" : TenantName(e.tenant_id)},
                              {"sandbox", e.sandbox_id},
                              {"node", e.node_id},
                              {"kind", e.kind},
                              {"message", e.message},
                              {"context", context},
                              {"created_ms", e.created_ms}});
           }
           return JsonResponse(200, {{"items", items}});
         });
    Json(
        "GET", "/v1/queue",
        [this](http::Request&, const Caller&) -> Result<http::Response> {
          auto s = TRY(store->GetQueueStats());
          return JsonResponse(200, {{"queued", s.queued},
                                    {"assigned", s.assigned},
                                    {"running", s.running},
                                    {"done", s.done},
                                    {"dead", s.dead}});
        },
        true);
    Json(
        "GET", "/v1/queue/dead",
        [this](http::Request&, const Caller&) -> Result<http::Response> {
          auto jobs = TRY(store->ListDeadJobs());
          json items = json::array();
          for (const auto& j : jobs) items.push_back(JobToJson(j));
          return JsonResponse(200, {{"items", items}});
        },
        true);
    Json(
        "POST", "/v1/queue/dead/{id}/replay",
        [this](http::Request& req, const Caller&) -> Result<http::Response> {
          TRY(store->ReplayDeadJob(req.params["id"], NowMs()));
          auto row = TRY(store->GetSandbox(req.params["id"]));
          return JsonResponse(200, SandboxJson(row));
        },
        true);

    server->OnRequestDone(
        [this](const http::Request& req, int status, std::chrono::microseconds took) {
          metrics
              .counter("tartarus_http_requests_total", "API requests by method and status",
                       {{"method", req.method}, {"status", std::to_string(status)}})
              .Inc();
          metrics.histogram("tartarus_http_request_seconds", "API request latency")
              .Observe(took.count() / 1e6);
          if (req.path == "/healthz" || req.path == "/metrics" ||
              (req.path.find("/heartbeat") != std::string::npos && status < 400)) {
            return;  // polled constantly: metrics only
          }
          telemetry::LogJson(status >= 500 ? "error" : "info", "request",
                             {{"request_id", req.request_id},
                              {"method", req.method},
                              {"path", req.path},
                              {"status", status},
                              {"duration_ms", took.count() / 1000.0}});
        });
  }

  // Gauges read at scrape time: queue depth, sandboxes by state, node capacity.
  void RefreshGauges() {
    if (auto s = store->GetQueueStats()) {
      auto g = [&](const char* state, int64_t v) {
        metrics.gauge("tartarus_queue_jobs", "Acheron's jobs by state", {{"state", state}}).Set(v);
      };
      g("queued", s->queued);
      g("assigned", s->assigned);
      g("running", s->running);
      g("done", s->done);
      g("dead", s->dead);
    }
    if (auto rows = store->db().Query("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")) {
      for (const char* state :
           {"queued", "assigned", "running", "exited", "killed", "failed", "lost"}) {
        int64_t n = 0;
        for (const auto& r : *rows) {
          if (r.Text(0) == state) n = r.Int(1);
        }
        metrics.gauge("tartarus_sandboxes", "Sandboxes by state", {{"state", state}}).Set(n);
      }
    }
    if (auto nodes = store->ListNodes()) {
      for (const auto& n : *nodes) {
        telemetry::Labels l{{"node", n.id}};
        metrics.gauge("tartarus_node_capacity_millicpus", "Node CPU capacity", l).Set(n.millicpus);
        metrics.gauge("tartarus_node_reserved_millicpus", "CPU reserved by placed sandboxes", l)
            .Set(n.reserved_millicpus);
        metrics.gauge("tartarus_node_capacity_memory_bytes", "Node memory capacity", l)
            .Set(n.memory_bytes);
        metrics
            .gauge("tartarus_node_reserved_memory_bytes", "Memory reserved by placed sandboxes", l)
            .Set(n.reserved_memory_bytes);
        metrics.gauge("tartarus_node_up", "1 when the node's lease is live", l)
            .Set(n.state == "lost" ? 0 : 1);
      }
    }
  }

  // ---- background loops ----

  void ScheduleLoop() {
    std::mt19937_64 rng{std::random_device{}()};
    auto place = [&](const store::JobRow& job, const std::vector<store::NodeRow>& nodes,
                     std::string* reason) -> std::optional<std::string> {
      auto started = std::chrono::steady_clock::now();
      scheduler::PlacementRequest req{job.millicpus, job.memory_bytes, job.template_name,
                                      job.runtime, job.selector};
      std::vector<scheduler::NodeView> views;
      views.reserve(nodes.size());
      for (const auto& n : nodes) {
        views.push_back({n.id, n.state, n.millicpus, n.memory_bytes, n.reserved_millicpus,
                         n.reserved_memory_bytes, n.labels, n.runtimes, n.templates});
      }
      auto chosen = scheduler::Place(req, views, rng, config.best_of_k);
      Phase("place").Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      if (!chosen) {
        *reason = chosen.error();
        return std::nullopt;
      }
      Phase("queue").Observe((NowMs() - job.created_ms) / 1000.0);
      return *chosen;
    };
    while (!stopping) {
      store->WaitForJobs(config.schedule_interval);
      if (stopping) break;
      for (int round = 0; round < 100 && !stopping; ++round) {
        auto n = store->ScheduleBatch(NowMs(), config.schedule_batch, place);
        if (!n) {
          telemetry::LogJson("error", "scheduling failed", {{"error", n.error().message}});
          break;
        }
        if (*n > 0) assign_generation++;
        if (*n < config.schedule_batch) break;
      }
    }
  }

  void LeaseLoop() {
    while (!stopping) {
      for (int i = 0; i < config.lease_check_interval.count() / 50 && !stopping; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (stopping) break;
      auto lost = store->ExpireLeases(NowMs());
      if (!lost) {
        telemetry::LogJson("error", "lease expiry failed", {{"error", lost.error().message}});
      } else if (*lost > 0) {
        telemetry::LogJson("warn", "nodes lost", {{"count", *lost}});
      }
    }
  }
};

Olympus::Olympus(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Olympus::~Olympus() { Stop(); }

Result<std::unique_ptr<Olympus>> Olympus::Start(OlympusConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->store = TRY(store::ControlStore::Open(config.store_url));
  auto admin = impl->store->GetTenant(kAdminTenant);
  if (!admin) admin = impl->store->CreateTenant(kAdminTenant);
  if (!admin && admin.error().code == ErrorCode::kAlreadyExists) {
    admin = impl->store->GetTenant(kAdminTenant);  // another replica created it just now
  }
  if (!admin) return Fail(admin.error().Context("creating the admin tenant"));
  impl->admin_tenant_id = admin->id;

  http::ServerOptions options;
  options.io_threads = config.io_threads;
  options.worker_threads = config.worker_threads;
  impl->server = std::make_unique<http::Server>(options);
  impl->proxy = std::make_unique<NodeProxy>();
  impl->RegisterRoutes();
  if (!config.unix_socket.empty()) TRY(impl->server->ListenUnix(config.unix_socket));
  if (config.tcp_port >= 0) {
    auto st = impl->server->ListenTcp(config.tcp_host, static_cast<uint16_t>(config.tcp_port));
    if (!st) {
      return Fail(st.error().Context(
          fmt::format("listening on {}:{} (another daemon running? choose a port with --listen)",
                      config.tcp_host, config.tcp_port)));
    }
  }
  impl->server->Start();
  Impl* raw = impl.get();
  impl->scheduler_thread = std::thread([raw] { raw->ScheduleLoop(); });
  impl->lease_thread = std::thread([raw] { raw->LeaseLoop(); });
  return std::unique_ptr<Olympus>(new Olympus(std::move(impl)));
}

void Olympus::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  if (impl_->scheduler_thread.joinable()) impl_->scheduler_thread.join();
  if (impl_->lease_thread.joinable()) impl_->lease_thread.join();
  impl_->server->Stop();
  impl_->proxy.reset();
}

uint16_t Olympus::tcp_port() const { return impl_->server->tcp_port(); }

store::ControlStore& Olympus::store() { return *impl_->store; }

}  // namespace tartarus::api

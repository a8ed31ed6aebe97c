// tartarus CLI, control-plane commands: `token`, `policy`, `node`, `errors`, `queue` and
// `tenant`. They exist only in API mode; in local mode they say how to get a control plane.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/api_client.h"
#include "cli/api_commands.h"
#include "cli/table.h"
#include "common/units.h"

namespace tartarus::cli {
namespace {

using nlohmann::json;

// Bound on a policy file we send (the server refuses larger ones too).
constexpr size_t kMaxPolicyFileBytes = 256 << 10;

void PrintTable(const Table& table) {
  std::fputs(table.Render().c_str(), stdout);
  std::fflush(stdout);
}

template <class T>
json RawList(const std::vector<T>& items) {
  json list = json::array();
  for (const auto& item : items) list.push_back(item.raw);
  return list;
}

// Runs `body` with a client for Olympus, or explains that `command` needs a control plane.
void WithApi(GlobalOptions& global, int& exit_code, const std::string& command,
             const std::function<int(ApiClient&)>& body) {
  auto connection = SelectConnection(global);
  if (!connection) {
    exit_code = ReportError(connection.error());
    return;
  }
  if (!connection->api()) {
    exit_code =
        ReportError(Error{ErrorCode::kFailedPrecondition,
                          command + " needs the control plane: run `tartarus up` or set --host "
                                    "(or TARTARUS_HOST, or a context in the config file)"});
    return;
  }
  auto client = ApiClient::Create(*connection);
  if (!client) {
    exit_code = ReportError(client.error());
    return;
  }
  exit_code = body(*client);
}

template <class T>
int Check(const Result<T>& result) {
  return result ? 0 : ReportError(result.error());
}

void AddTokenCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  CLI::App* token = app.add_subcommand("token", "Manage API tokens (admin)");
  token->require_subcommand(1);
  token->footer(
      "\nExamples:\n"
      "  export TARTARUS_TOKEN=$(tartarus token create --tenant acme --name ci)\n"
      "  tartarus token ls\n"
      "  tartarus token revoke tok_3f2a");

  struct CreateFlags {
    std::string tenant, name;
    bool json = false;
  };
  auto create_flags = std::make_shared<CreateFlags>();
  CLI::App* create = token->add_subcommand(
      "create", "Create a token for a tenant (created if new); prints the secret once");
  create->footer(
      "\nThe secret goes to stdout alone (for $(...)); the token's id and tenant to stderr.\n"
      "It is never shown again: store it now.");
  create->add_option("--tenant", create_flags->tenant, "Tenant name")->required();
  create->add_option("--name", create_flags->name, "A name to tell tokens apart, e.g. ci");
  create->add_flag("--json", create_flags->json, "JSON output (includes the secret)");
  create->callback([&global, &exit_code, create_flags] {
    WithApi(global, exit_code, "token create", [&](ApiClient& client) {
      auto created = client.CreateToken(create_flags->tenant, create_flags->name);
      if (!created) return ReportError(created.error());
      if (create_flags->json) {
        PrintJson(created->raw);
        return 0;
      }
      std::fprintf(stderr, "tartarus: token %s for tenant %s%s; the secret is shown only once:\n",
                   created->id.c_str(), created->tenant.c_str(),
                   created->name.empty() ? "" : (" (" + created->name + ")").c_str());
      std::printf("%s\n", created->secret.c_str());
      return 0;
    });
  });

  auto ls_json = std::make_shared<bool>(false);
  CLI::App* ls = token->add_subcommand("ls", "List tokens (secrets are never shown again)");
  ls->add_flag("--json", *ls_json, "JSON output");
  ls->callback([&global, &exit_code, ls_json] {
    WithApi(global, exit_code, "token ls", [&](ApiClient& client) {
      auto tokens = client.ListTokens();
      if (!tokens) return ReportError(tokens.error());
      if (*ls_json) {
        PrintJson(RawList(*tokens));
        return 0;
      }
      Table table({"ID", "TENANT", "NAME", "CREATED", "REVOKED"});
      int64_t now = node::NowMs();
      for (const auto& t : *tokens) {
        table.AddRow({t.id, t.tenant, OrDash(t.name), Ago(t.created_ms, now),
                      t.revoked_ms ? Ago(*t.revoked_ms, now) : "-"});
      }
      PrintTable(table);
      return 0;
    });
  });

  auto revoke_ids = std::make_shared<std::vector<std::string>>();
  CLI::App* revoke = token->add_subcommand("revoke", "Revoke tokens: they stop working at once");
  revoke->add_option("ids", *revoke_ids, "Token ids (from `tartarus token ls`)")->required();
  revoke->callback([&global, &exit_code, revoke_ids] {
    WithApi(global, exit_code, "token revoke", [&](ApiClient& client) {
      int code = 0;
      for (const auto& id : *revoke_ids) {
        if (int c = Check(client.RevokeToken(id))) code = c;
      }
      return code;
    });
  });
}

void AddPolicyCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  CLI::App* policy = app.add_subcommand("policy", "Manage Themis admission policies");
  policy->require_subcommand(1);
  policy->footer(
      "\nA policy is a YAML file with a name: (see docs/policies.md), e.g.\n"
      "  name: acme-small\n"
      "  tenant: acme\n"
      "  limits: {max_memory: 1G, max_timeout: 10m}\n"
      "Examples:\n"
      "  tartarus policy apply acme-small.yaml\n"
      "  tartarus policy ls\n"
      "  tartarus policy get acme-small > acme-small.yaml\n"
      "  tartarus policy rm acme-small");

  auto file = std::make_shared<std::string>();
  auto apply_json = std::make_shared<bool>(false);
  CLI::App* apply =
      policy->add_subcommand("apply", "Create or replace a policy from a YAML file (admin)");
  apply->add_option("file", *file, "Policy YAML file ('-' reads stdin)")->required();
  apply->add_flag("--json", *apply_json, "JSON output");
  apply->callback([&global, &exit_code, file, apply_json] {
    std::string yaml;
    if (*file == "-") {
      std::stringstream text;
      text << std::cin.rdbuf();
      yaml = text.str();
    } else {
      std::ifstream in(*file, std::ios::binary);
      if (!in) {
        exit_code = ReportError(ErrnoError("reading policy file " + *file));
        return;
      }
      std::stringstream text;
      text << in.rdbuf();
      yaml = text.str();
    }
    if (yaml.size() > kMaxPolicyFileBytes) {
      exit_code = ReportError(Error{ErrorCode::kInvalidArgument, *file + ": larger than 256 KiB"});
      return;
    }
    auto name = PolicyNameOf(yaml, *file == "-" ? "stdin" : *file);
    if (!name) {
      exit_code = ReportError(name.error());
      return;
    }
    WithApi(global, exit_code, "policy apply", [&](ApiClient& client) {
      auto stored = client.PutPolicy(*name, yaml);
      if (!stored) return ReportError(stored.error());
      if (*apply_json) {
        PrintJson(stored->raw);
      } else {
        std::printf("policy %s applied\n", stored->name.c_str());
      }
      return 0;
    });
  });

  auto ls_json = std::make_shared<bool>(false);
  CLI::App* ls = policy->add_subcommand("ls", "List policies");
  ls->add_flag("--json", *ls_json, "JSON output (includes each policy's YAML)");
  ls->callback([&global, &exit_code, ls_json] {
    WithApi(global, exit_code, "policy ls", [&](ApiClient& client) {
      auto policies = client.ListPolicies();
      if (!policies) return ReportError(policies.error());
      if (*ls_json) {
        PrintJson(RawList(*policies));
        return 0;
      }
      Table table({"NAME", "TENANT", "TEMPLATE", "UPDATED"});
      int64_t now = node::NowMs();
      for (const auto& p : *policies) {
        // An empty tenant or template means the policy applies to all of them.
        table.AddRow({p.name, p.tenant.empty() ? "*" : p.tenant,
                      p.template_name.empty() ? "*" : p.template_name, Ago(p.updated_ms, now)});
      }
      PrintTable(table);
      return 0;
    });
  });

  auto get_name = std::make_shared<std::string>();
  auto get_json = std::make_shared<bool>(false);
  CLI::App* get = policy->add_subcommand("get", "Print a policy's YAML");
  get->add_option("name", *get_name, "Policy name")->required();
  get->add_flag("--json", *get_json, "JSON output (name, tenant, template, yaml, updated_ms)");
  get->callback([&global, &exit_code, get_name, get_json] {
    WithApi(global, exit_code, "policy get", [&](ApiClient& client) {
      auto found = client.GetPolicy(*get_name);
      if (!found) return ReportError(found.error());
      if (*get_json) {
        PrintJson(found->raw);
      } else {
        std::fputs(found->yaml.c_str(), stdout);
        if (!found->yaml.empty() && found->yaml.back() != '\n') std::fputs("\n", stdout);
      }
      return 0;
    });
  });

  auto rm_names = std::make_shared<std::vector<std::string>>();
  CLI::App* rm = policy->add_subcommand("rm", "Delete policies (admin)");
  rm->add_option("names", *rm_names, "Policy names")->required();
  rm->callback([&global, &exit_code, rm_names] {
    WithApi(global, exit_code, "policy rm", [&](ApiClient& client) {
      int code = 0;
      for (const auto& name : *rm_names) {
        if (int c = Check(client.DeletePolicy(name))) code = c;
      }
      return code;
    });
  });
}

void AddNodeCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  CLI::App* node = app.add_subcommand("node", "List nodes (Hades) and take them out of service");
  node->require_subcommand(1);
  node->footer(
      "\nExamples:\n"
      "  tartarus node ls\n"
      "  tartarus node drain node-7     # no new sandboxes; running ones finish\n"
      "  tartarus node uncordon node-7  # accept sandboxes again");

  auto ls_json = std::make_shared<bool>(false);
  CLI::App* ls = node->add_subcommand("ls", "List nodes with their capacity and reservations");
  ls->add_flag("--json", *ls_json, "JSON output");
  ls->callback([&global, &exit_code, ls_json] {
    WithApi(global, exit_code, "node ls", [&](ApiClient& client) {
      auto nodes = client.ListNodes();
      if (!nodes) return ReportError(nodes.error());
      if (*ls_json) {
        PrintJson(RawList(*nodes));
        return 0;
      }
      Table table({"ID", "NAME", "STATE", "CPUS", "MEMORY", "JOBS", "HEARTBEAT"});
      int64_t now = node::NowMs();
      auto cpus = [](int64_t m) {
        return FormatMilliCpus(static_cast<uint32_t>(std::clamp<int64_t>(m, 0, UINT32_MAX)));
      };
      auto bytes = [](int64_t b) {
        return FormatBytes(static_cast<uint64_t>(std::max<int64_t>(b, 0)));
      };
      for (const auto& n : *nodes) {
        // Reserved of total: what the scheduler has promised away.
        table.AddRow({n.id, OrDash(n.name), OrDash(n.state),
                      cpus(n.reserved_millicpus) + "/" + cpus(n.millicpus),
                      bytes(n.reserved_memory_bytes) + "/" + bytes(n.memory_bytes),
                      std::to_string(n.active_jobs), Ago(n.heartbeat_ms, now)});
      }
      PrintTable(table);
      return 0;
    });
  });

  for (const char* action : {"cordon", "uncordon", "drain"}) {
    const char* help = std::string_view(action) == "cordon" ? "No new sandboxes on these nodes"
                       : std::string_view(action) == "uncordon"
                           ? "Accept sandboxes again"
                           : "No new sandboxes; running ones finish";
    auto ids = std::make_shared<std::vector<std::string>>();
    CLI::App* cmd = node->add_subcommand(action, help);
    cmd->add_option("ids", *ids, "Node ids (from `tartarus node ls`)")->required();
    cmd->callback([&global, &exit_code, ids, action = std::string(action)] {
      WithApi(global, exit_code, "node " + action, [&](ApiClient& client) {
        int code = 0;
        for (const auto& id : *ids) {
          auto changed = client.NodeAction(id, action);
          if (!changed) {
            code = ReportError(changed.error());
            continue;
          }
          std::printf("node %s: %s\n", changed->id.c_str(), OrDash(changed->state).c_str());
        }
        return code;
      });
    });
  }
}

void AddErrorsCommand(CLI::App& app, GlobalOptions& global, int& exit_code) {
  struct Flags {
    ErrorFilter filter;
    bool json = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* cmd = app.add_subcommand("errors", "Failures recorded by Cocytus, newest first");
  cmd->footer(
      "\nKinds: admission, scheduling, runtime, guest, timeout, node_lost, internal.\n"
      "Examples:\n"
      "  tartarus errors --sandbox 3f2a\n"
      "  tartarus errors --kind node_lost --limit 20");
  cmd->add_option("--sandbox", flags->filter.sandbox, "Only this sandbox's failures");
  cmd->add_option("--kind", flags->filter.kind, "Only failures of this kind");
  cmd->add_option("--limit", flags->filter.limit, "At most this many (1-1000)")
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", flags->json, "JSON output (includes each failure's context)");
  cmd->callback([&global, &exit_code, flags] {
    WithApi(global, exit_code, "errors", [&](ApiClient& client) {
      auto errors = client.ListErrors(flags->filter);
      if (!errors) return ReportError(errors.error());
      if (flags->json) {
        PrintJson(RawList(*errors));
        return 0;
      }
      Table table({"ID", "KIND", "SANDBOX", "NODE", "CREATED", "MESSAGE"});
      int64_t now = node::NowMs();
      for (const auto& e : *errors) {
        table.AddRow({e.id, e.kind, OrDash(e.sandbox), OrDash(e.node), Ago(e.created_ms, now),
                      OneLine(e.message, 80)});
      }
      PrintTable(table);
      return 0;
    });
  });
}

void AddQueueCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  auto stats_json = std::make_shared<bool>(false);
  CLI::App* queue = app.add_subcommand("queue", "Acheron, the job queue: depth by state (admin)");
  queue->footer(
      "\nExamples:\n"
      "  tartarus queue                  # queued, assigned, running, done, dead\n"
      "  tartarus queue dead             # jobs that ran out of attempts\n"
      "  tartarus queue replay 3f2a      # put a dead job back in the queue");
  queue->add_flag("--json", *stats_json, "JSON output");
  queue->callback([&global, &exit_code, stats_json, queue] {
    if (!queue->get_subcommands().empty()) return;  // `queue dead` / `queue replay` ran
    WithApi(global, exit_code, "queue", [&](ApiClient& client) {
      auto stats = client.QueueStats();
      if (!stats) return ReportError(stats.error());
      if (*stats_json) {
        PrintJson(stats->raw);
        return 0;
      }
      Table table({"QUEUED", "ASSIGNED", "RUNNING", "DONE", "DEAD"});
      table.AddRow({std::to_string(stats->queued), std::to_string(stats->assigned),
                    std::to_string(stats->running), std::to_string(stats->done),
                    std::to_string(stats->dead)});
      PrintTable(table);
      return 0;
    });
  });

  auto dead_json = std::make_shared<bool>(false);
  CLI::App* dead = queue->add_subcommand("dead", "The dead-letter queue (admin)");
  dead->add_flag("--json", *dead_json, "JSON output");
  dead->callback([&global, &exit_code, dead_json] {
    WithApi(global, exit_code, "queue dead", [&](ApiClient& client) {
      auto jobs = client.DeadJobs();
      if (!jobs) return ReportError(jobs.error());
      if (*dead_json) {
        PrintJson(RawList(*jobs));
        return 0;
      }
      Table table({"ID", "PRIORITY", "ATTEMPTS", "LAST ERROR"});
      for (const auto& j : *jobs) {
        table.AddRow({j.id, std::to_string(j.priority),
                      std::to_string(j.attempts) + "/" + std::to_string(j.max_attempts),
                      OneLine(OrDash(j.last_error), 80)});
      }
      PrintTable(table);
      return 0;
    });
  });

  auto replay_ids = std::make_shared<std::vector<std::string>>();
  CLI::App* replay =
      queue->add_subcommand("replay", "Put dead jobs back in the queue (admin); prints their ids");
  replay->add_option("ids", *replay_ids, "Job (= sandbox) ids from `tartarus queue dead`")
      ->required();
  replay->callback([&global, &exit_code, replay_ids] {
    WithApi(global, exit_code, "queue replay", [&](ApiClient& client) {
      int code = 0;
      for (const auto& id : *replay_ids) {
        auto sandbox = client.ReplayJob(id);
        if (!sandbox) {
          code = ReportError(sandbox.error());
          continue;
        }
        std::printf("%s: %s\n", sandbox->id.c_str(), sandbox->state.c_str());
      }
      return code;
    });
  });
}

void AddTenantCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  CLI::App* tenant = app.add_subcommand("tenant", "List tenants (admin)");
  tenant->require_subcommand(1);
  tenant->footer(
      "\nTenants are created with their first token: tartarus token create --tenant NAME");
  auto ls_json = std::make_shared<bool>(false);
  CLI::App* ls = tenant->add_subcommand("ls", "List tenants");
  ls->add_flag("--json", *ls_json, "JSON output");
  ls->callback([&global, &exit_code, ls_json] {
    WithApi(global, exit_code, "tenant ls", [&](ApiClient& client) {
      auto tenants = client.ListTenants();
      if (!tenants) return ReportError(tenants.error());
      if (*ls_json) {
        PrintJson(RawList(*tenants));
        return 0;
      }
      Table table({"ID", "NAME", "CREATED"});
      int64_t now = node::NowMs();
      for (const auto& t : *tenants) table.AddRow({t.id, t.name, Ago(t.created_ms, now)});
      PrintTable(table);
      return 0;
    });
  });
}

}  // namespace

void AddControlPlaneCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  AddTokenCommands(app, global, exit_code);
  AddPolicyCommands(app, global, exit_code);
  AddNodeCommands(app, global, exit_code);
  AddErrorsCommand(app, global, exit_code);
  AddQueueCommands(app, global, exit_code);
  AddTenantCommands(app, global, exit_code);
}

}  // namespace tartarus::cli

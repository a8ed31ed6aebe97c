// `tartarus template build|ls|inspect|rm`: the CLI side of the template store.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/table.h"
#include "common/units.h"
#include "node/sandbox_store.h"
#include "template/ext4_image.h"
#include "template/template_store.h"

namespace tartarus::cli {
namespace {

templates::TemplateStore OpenStore(const GlobalOptions& global, bool verbose = false) {
  templates::StoreOptions options;
  options.debootstrap.verbose = verbose;
  // A template whose tree is under a live sandbox cannot be removed.
  options.in_use = [state_dir = global.node.state_dir](std::string_view name) {
    node::SandboxStore store(state_dir);
    for (const auto& r : store.List()) {
      if (!node::IsFinal(r.state) && r.template_name == name) return true;
    }
    return false;
  };
  return templates::TemplateStore(global.node.state_dir, global.node.template_dirs, options);
}

void PrintLine(std::string_view line) {
  std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  std::fflush(stderr);
}

std::string Date(int64_t unix_s) {
  if (unix_s <= 0) return "-";
  return Ago(unix_s * 1000, node::NowMs());
}

}  // namespace

void AddTemplateCommands(CLI::App& app, GlobalOptions& global, int& exit_code) {
  CLI::App* group =
      app.add_subcommand("template", "Build and manage templates (root filesystems with defaults)");
  group->require_subcommand(1);
  group->footer(
      "\nA template is a YAML file (docs/templates.md). Shipped: base, python-ds.\n"
      "Templates build on first use; `build` does it ahead of time.");

  struct BuildFlags {
    std::vector<std::string> names;
    bool force = false, verbose = false, microvm = false;
  };
  auto build_flags = std::make_shared<BuildFlags>();
  CLI::App* build = group->add_subcommand(
      "build", "Build templates (by name or path to a .yaml file); skips up-to-date ones");
  build->add_option("templates", build_flags->names, "Template names or .yaml paths")->required();
  build->add_flag("-f,--force", build_flags->force, "Rebuild even when up to date");
  build->add_flag("-v,--verbose", build_flags->verbose, "Show the output of debootstrap and apt");
  build->add_flag("--microvm", build_flags->microvm,
                  "Also make the ext4 image the microvm runtime boots (rootfs.ext4), which "
                  "its first run would otherwise make");
  build->callback([&global, &exit_code, build_flags] {
    auto store = OpenStore(global, build_flags->verbose);
    exit_code = 0;
    for (const auto& name : build_flags->names) {
      auto built = store.Build(name, PrintLine, build_flags->force);
      if (!built) {
        exit_code = ReportError(built.error());
        continue;
      }
      std::fprintf(stderr, "%s: %s (%s, %s)\n", built->name.c_str(),
                   built->built_now ? "built" : "up to date",
                   FormatBytes(built->size_bytes).c_str(), built->rootfs.c_str());
      if (!build_flags->microvm) continue;
      // Right after the tree, so the first `run --runtime microvm` starts without it.
      bool made = false;
      auto image = templates::EnsureExt4Image(built->rootfs, [&made](std::string_view line) {
        made = true;
        PrintLine(line);
      });
      if (!image) {
        exit_code = ReportError(image.error().Context(built->name + ": microvm image"));
        continue;
      }
      std::fprintf(stderr, "%s: microvm image %s (%s)\n", built->name.c_str(),
                   made ? "made" : "up to date", image->c_str());
    }
  });

  auto ls_json = std::make_shared<bool>(false);
  CLI::App* ls = group->add_subcommand("ls", "List available and built templates");
  ls->add_flag("--json", *ls_json, "JSON output");
  ls->callback([&global, &exit_code, ls_json] {
    auto store = OpenStore(global);
    auto list = store.List();
    if (!list) {
      exit_code = ReportError(list.error());
      return;
    }
    if (*ls_json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& t : *list) {
        out.push_back({{"name", t.name},
                       {"description", t.description},
                       {"source", t.source_path},
                       {"built", t.built},
                       {"up_to_date", t.up_to_date},
                       {"size_bytes", t.size_bytes},
                       {"built_at", t.built_at_unix},
                       {"error", t.parse_error}});
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      Table table({"NAME", "STATUS", "SIZE", "BUILT", "DESCRIPTION"});
      for (const auto& t : *list) {
        std::string status = !t.parse_error.empty() ? "invalid"
                             : !t.built             ? "not built"
                             : t.up_to_date         ? "ready"
                                                    : "stale (rebuilds on use)";
        table.AddRow({t.name, status, t.built ? FormatBytes(t.size_bytes) : "-",
                      Date(t.built_at_unix), t.description});
      }
      std::fputs(table.Render().c_str(), stdout);
    }
    exit_code = 0;
  });

  auto inspect_name = std::make_shared<std::string>();
  CLI::App* inspect = group->add_subcommand("inspect", "Show a template's definition and build");
  inspect->add_option("template", *inspect_name, "Template name or .yaml path")->required();
  inspect->callback([&global, &exit_code, inspect_name] {
    auto store = OpenStore(global);
    auto info = store.Inspect(*inspect_name);
    if (!info) {
      exit_code = ReportError(info.error());
      return;
    }
    nlohmann::json out = {{"name", info->name},
                          {"description", info->description},
                          {"source", info->source_path},
                          {"base", info->base},
                          {"packages", info->packages},
                          {"built", info->built},
                          {"up_to_date", info->up_to_date},
                          {"hash", info->hash},
                          {"size_bytes", info->size_bytes},
                          {"built_at", info->built_at_unix},
                          {"build_seconds", info->build_seconds}};
    if (!info->parse_error.empty()) out["error"] = info->parse_error;
    if (info->spec) {
      out["env"] = info->spec->env;
      out["workdir"] = info->spec->workdir;
      out["setup"] = info->spec->setup;
      nlohmann::json limits = nlohmann::json::object();
      const auto& l = info->spec->limits;
      if (l.millicpus) limits["cpus"] = FormatMilliCpus(*l.millicpus);
      if (l.memory_bytes) limits["memory"] = FormatBytes(*l.memory_bytes);
      if (l.disk_bytes) limits["disk"] = FormatBytes(*l.disk_bytes);
      if (l.pids) limits["pids"] = *l.pids;
      if (l.timeout) limits["timeout"] = FormatDuration(*l.timeout);
      out["limits"] = limits;
    }
    std::printf("%s\n", out.dump(2).c_str());
    exit_code = 0;
  });

  auto rm_names = std::make_shared<std::vector<std::string>>();
  CLI::App* rm = group->add_subcommand("rm", "Remove templates' built root filesystems");
  rm->add_option("templates", *rm_names, "Template names")->required();
  rm->callback([&global, &exit_code, rm_names] {
    auto store = OpenStore(global);
    exit_code = 0;
    for (const auto& name : *rm_names) {
      auto s = store.Remove(name);
      if (!s) exit_code = ReportError(s.error());
    }
  });
}

}  // namespace tartarus::cli

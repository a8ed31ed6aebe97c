// The template store: finds template files by name or path, builds them into a cache
// under <state_dir>/templates/<name>/ (rootfs/, template.yaml, meta.json), and answers
// "is this template built and up to date?" in a few small reads on every `run`.
//
// Concurrency: one flock per template name (<state_dir>/templates/.locks/<name>.lock)
// serializes builds and removals across processes; readers never lock. A build happens
// in <state_dir>/templates/.build-<name>-<pid>/ and replaces the template's directory
// with one atomic rename (RENAME_EXCHANGE), so a failed or killed build leaves the
// previous good build in place, and leftovers are deleted by the next build of that name.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "template/template_builder.h"
#include "template/template_spec.h"

namespace tartarus::templates {

// A built template, ready for the run path.
struct BuiltTemplate {
  std::string name;
  std::string hash;         // BuildHash() of the spec the tree was built from
  std::string rootfs;       // absolute path of the tree; sandboxes must not write to it
  std::string source_path;  // the template file the spec came from
  TemplateSpec spec;        // as in the current template file (env, workdir, limits)
  // KEY=VALUE for the sandbox's processes: PATH, LANG=C.UTF-8 and HOME=/root, overridden
  // by the template's env.
  std::vector<std::string> env;
  std::string workdir;
  uint64_t size_bytes = 0;
  int64_t built_at_unix = 0;
  double build_seconds = 0;
  bool built_now = false;  // false: the cached build was up to date
};

// One row of `tartarus template ls` / `inspect`.
struct TemplateInfo {
  std::string name;
  std::string source_path;  // empty when only a cached build exists
  std::string description;  // from the source when it parses, else from the cache
  std::string base;
  std::vector<std::string> packages;
  std::string parse_error;  // set when the source file does not parse
  bool built = false;
  bool up_to_date = false;  // built and its hash matches the source (or no source)
  std::string hash;         // of the built tree
  uint64_t size_bytes = 0;
  int64_t built_at_unix = 0;
  double build_seconds = 0;
  std::optional<TemplateSpec> spec;  // Inspect() only: the parsed source, or the cached copy
};

// Answers whether sandboxes still use a template (their trees are overlay lower dirs).
using InUseCallback = std::function<bool(std::string_view name)>;

struct StoreOptions {
  // Consulted by Remove() and before a rebuild replaces an existing tree: a tree in use
  // is never deleted. Unset: the store only checks overlay mounts it can see itself.
  InUseCallback in_use;
  DebootstrapOptions debootstrap;
};

class TemplateStore {
 public:
  // search_dirs: where `<name>.yaml` files are looked up, first match wins.
  TemplateStore(std::string state_dir, std::vector<std::string> search_dirs,
                StoreOptions options = {});
  // For tests: a builder other than debootstrap.
  TemplateStore(std::string state_dir, std::vector<std::string> search_dirs,
                std::unique_ptr<RootfsBuilder> builder, StoreOptions options = {});
  ~TemplateStore();

  // Builds the template (a name from the search dirs, or a path to a .yaml file). Skips
  // the build when the cached tree's hash matches ("up to date" on progress) unless
  // `force`.
  Result<BuiltTemplate> Build(std::string_view name_or_path, const ProgressCallback& progress,
                              bool force = false);
  // The run path: returns the cached build when its hash matches the source (reads the
  // template file and meta.json; never walks the tree), else builds it.
  Result<BuiltTemplate> Ensure(std::string_view name_or_path, const ProgressCallback& progress);
  // Every template found in the search dirs plus every cached build, sorted by name.
  Result<std::vector<TemplateInfo>> List() const;
  Result<TemplateInfo> Inspect(std::string_view name_or_path) const;
  // Deletes a cached build. Fails with kFailedPrecondition if it is in use (see
  // StoreOptions::in_use), kNotFound if it is not built.
  Status Remove(std::string_view name);

  std::string TemplateDir(std::string_view name) const;
  const std::string& state_dir() const { return state_dir_; }

  // The search path a CLI would use: $TARTARUS_TEMPLATE_PATH (colon-separated), else
  // <state_dir>/templates.d, /etc/tartarus/templates, and /usr/share/tartarus/templates.
  static std::vector<std::string> DefaultSearchDirs(const std::string& state_dir);

 private:
  struct Source {
    std::string path;  // file the spec was read from
    std::string text;
    TemplateSpec spec;
  };
  Result<Source> Resolve(std::string_view name_or_path) const;
  Result<BuiltTemplate> FromCache(const Source& source) const;
  Result<BuiltTemplate> BuildLocked(const Source& source, const ProgressCallback& progress);
  std::vector<std::string> AvailableNames() const;
  bool InUse(std::string_view name) const;

  std::string state_dir_;
  std::vector<std::string> search_dirs_;
  std::unique_ptr<RootfsBuilder> builder_;
  StoreOptions options_;
};

// The environment defaults every template starts from.
std::vector<std::string> SandboxEnv(const TemplateSpec& spec);

}  // namespace tartarus::templates

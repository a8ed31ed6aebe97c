// Template files: the YAML format that describes a sandbox root filesystem (a Debian
// suite, packages, files, setup commands) plus the runtime defaults of its sandboxes
// (env, workdir, limits). Parsing never throws and reports "file:line:col: message".
// docs/templates.md describes the format.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::templates {

// Bump when the builder's recipe changes in a way that changes the built tree; every
// template's build hash changes with it, so every template is rebuilt once.
inline constexpr int kBuilderVersion = 1;

inline constexpr std::string_view kDefaultBase = "bookworm";
inline constexpr std::string_view kDefaultWorkdir = "/root";
inline constexpr uint32_t kDefaultFileMode = 0644;
// Bounds on outside input: the whole file, and the sum of all `files` contents.
inline constexpr size_t kMaxTemplateBytes = 1 << 20;
inline constexpr size_t kMaxListEntries = 1000;

struct TemplateFile {
  std::string path;  // absolute path inside the rootfs
  std::string content;
  uint32_t mode = kDefaultFileMode;  // permission bits, at most 07777

  bool operator==(const TemplateFile&) const = default;
};

// Defaults for sandboxes of this template; unset fields fall back to the caller's defaults.
struct TemplateLimits {
  std::optional<uint32_t> millicpus;  // `cpus: "1.5"` -> 1500
  std::optional<uint64_t> memory_bytes;
  std::optional<std::chrono::milliseconds> timeout;
  std::optional<uint32_t> pids;
  std::optional<uint64_t> disk_bytes;

  bool operator==(const TemplateLimits&) const = default;
};

struct TemplateSpec {
  std::string name;  // [a-z0-9][a-z0-9-]*, at most 63 characters
  std::string description;
  std::string base = std::string(kDefaultBase);  // Debian suite
  std::vector<std::string> packages;             // in file order, duplicates removed
  std::vector<TemplateFile> files;
  std::map<std::string, std::string> env;
  std::string workdir = std::string(kDefaultWorkdir);
  std::vector<std::string> setup;  // shell commands, run with /bin/sh -c in the rootfs
  TemplateLimits limits;

  bool operator==(const TemplateSpec&) const = default;
};

// Parses and validates a template. `source_name` prefixes error messages
// ("python-ds.yaml:7:3: unknown field 'pakages' (did you mean 'packages'?)").
Result<TemplateSpec> ParseTemplate(std::string_view yaml_text, std::string_view source_name);

// The build inputs of a spec (base, packages as a set, files by path, setup, workdir) as
// compact JSON with sorted keys. Description, env and limits are not build inputs: they
// are read from the template at run time and never force a rebuild.
std::string CanonicalBuildInputs(const TemplateSpec& spec);

// sha256 hex of the builder version and CanonicalBuildInputs(): a built tree is up to
// date iff its recorded hash equals this.
std::string BuildHash(const TemplateSpec& spec);

// Validators, shared with the store and the CLI.
bool IsValidTemplateName(std::string_view name);
bool IsValidDebianPackageName(std::string_view name);
bool IsValidEnvName(std::string_view name);

}  // namespace tartarus::templates

// Template YAML parsing and validation. yaml-cpp throws on bad input and on misuse of
// nodes, so every yaml-cpp call happens inside one try block in ParseTemplate().
#include "template/template_spec.h"
#include "common/field_hints.h"
#include "common/yaml_kind.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "common/sha256.h"
#include "common/units.h"

namespace tartarus::templates {
namespace {

constexpr std::string_view kTopFields[] = {"name", "description", "base",  "packages", "files",
                                           "env",  "workdir",     "setup", "limits"};
constexpr std::string_view kFileFields[] = {"path", "content", "mode"};
constexpr std::string_view kLimitFields[] = {"cpus", "memory", "timeout", "pids", "disk"};
constexpr size_t kMaxFilesContentBytes = 16 << 20;
constexpr size_t kMaxBaseLength = 32;

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Walks the document; each method returns an error that names the field and position.
class Parser {
 public:
  explicit Parser(std::string_view source) : source_(source) {}

  Error At(const YAML::Mark& mark, std::string message) const {
    std::string where = source_;
    if (!mark.is_null()) {
      where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    return Error{ErrorCode::kInvalidArgument, where + ": " + message};
  }

  Result<std::string> Scalar(const YAML::Node& node, std::string_view field) const {
    if (!node.IsScalar()) {
      return Fail(At(node.Mark(), "field '" + std::string(field) +
                                      "' must be a scalar (text), got " +
                                      std::string(YamlNodeKind(node))));
    }
    const std::string& value = node.Scalar();
    if (value.find('\0') != std::string::npos) {
      return Fail(At(node.Mark(), "field '" + std::string(field) + "' contains a NUL byte"));
    }
    return value;
  }

  Result<std::vector<std::string>> ScalarList(const YAML::Node& node,
                                              std::string_view field) const {
    std::vector<std::string> values;
    if (node.IsNull()) return values;
    if (!node.IsSequence()) {
      return Fail(At(node.Mark(), "field '" + std::string(field) + "' must be a list, got " +
                                      std::string(YamlNodeKind(node))));
    }
    if (node.size() > kMaxListEntries) {
      return Fail(At(node.Mark(), "field '" + std::string(field) + "' has more than " +
                                      std::to_string(kMaxListEntries) + " entries"));
    }
    for (size_t i = 0; i < node.size(); ++i) {
      values.push_back(TRY(Scalar(node[i], std::string(field) + "[" + std::to_string(i) + "]")));
    }
    return values;
  }

  // Calls visit(key, key_node, value_node) for each entry of a mapping; rejects
  // non-scalar and duplicate keys.
  template <class Visit>
  Status ForEachField(const YAML::Node& map, std::string_view field, Visit visit) const {
    if (!map.IsMap()) {
      return Fail(At(map.Mark(), "field '" + std::string(field) + "' must be a mapping, got " +
                                     std::string(YamlNodeKind(map))));
    }
    if (map.size() > kMaxListEntries) {
      return Fail(At(map.Mark(), "field '" + std::string(field) + "' has too many entries"));
    }
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        return Fail(At(key.Mark(), "expected a field name in '" + std::string(field) + "', got " +
                                       std::string(YamlNodeKind(key))));
      }
      if (!seen.insert(key.Scalar()).second) {
        return Fail(At(key.Mark(), "duplicate field '" + Printable(key.Scalar()) + "'"));
      }
      TRY(visit(key.Scalar(), key, value));
    }
    return Ok();
  }

  Result<uint32_t> Mode(const YAML::Node& node, std::string_view field) const {
    std::string text = TRY(Scalar(node, field));
    std::string_view digits = text;
    if (digits.starts_with("0o") || digits.starts_with("0O")) digits.remove_prefix(2);
    // Modes are always octal, as in chmod: 644, 0644, 0o644 and "0755" all work.
    if (digits.empty() || digits.size() > 6 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '7'; })) {
      return Fail(At(node.Mark(), "field '" + std::string(field) +
                                      "' must be an octal mode like 0644, got '" + Printable(text) +
                                      "'"));
    }
    uint32_t mode = std::stoul(std::string(digits), nullptr, 8);
    if (mode > 07777) {
      return Fail(At(node.Mark(), "field '" + std::string(field) + "' is above 07777"));
    }
    return mode;
  }

  Result<std::string> AbsolutePath(const YAML::Node& node, std::string_view field) const {
    std::string path = TRY(Scalar(node, field));
    if (path.empty() || path[0] != '/') {
      return Fail(At(node.Mark(), "field '" + std::string(field) +
                                      "' must be an absolute path, got '" + Printable(path) + "'"));
    }
    if (path.size() > 4096)
      return Fail(At(node.Mark(), "field '" + std::string(field) + "' is too long"));
    size_t start = 1;
    while (start <= path.size()) {
      size_t end = path.find('/', start);
      if (end == std::string::npos) end = path.size();
      std::string_view part = std::string_view(path).substr(start, end - start);
      if (part == "..") {
        return Fail(At(node.Mark(), "field '" + std::string(field) + "' must not contain '..'"));
      }
      start = end + 1;
    }
    return path;
  }

  Result<TemplateFile> File(const YAML::Node& node, size_t index) const {
    std::string field = "files[" + std::to_string(index) + "]";
    TemplateFile file;
    bool has_path = false;
    TRY(ForEachField(
        node, field,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          std::string sub = field + "." + key;
          if (key == "path") {
            file.path = TRY(AbsolutePath(value, sub));
            if (file.path.size() < 2 || file.path.back() == '/') {
              return Fail(
                  At(value.Mark(), "field '" + sub + "' must name a file, not a directory"));
            }
            has_path = true;
          } else if (key == "content") {
            file.content = value.IsNull() ? "" : TRY(Scalar(value, sub));
          } else if (key == "mode") {
            file.mode = TRY(Mode(value, sub));
          } else {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "' in " + field +
                                                SuggestField(key, kFileFields)));
          }
          return Ok();
        }));
    if (!has_path) return Fail(At(node.Mark(), "field '" + field + ".path' is required"));
    return file;
  }

  Status Limits(const YAML::Node& node, TemplateLimits& limits) const {
    if (node.IsNull()) return Ok();
    return ForEachField(
        node, "limits",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          std::string sub = "limits." + key;
          auto bad = [&](const Error& error) {
            return Fail(At(value.Mark(), "field '" + sub + "': " + error.message));
          };
          if (key == "cpus") {
            auto parsed = ParseMilliCpus(TRY(Scalar(value, sub)));
            if (!parsed) return bad(parsed.error());
            if (*parsed == 0) return Fail(At(value.Mark(), "field '" + sub + "' must be above 0"));
            limits.millicpus = *parsed;
          } else if (key == "memory") {
            auto parsed = ParseBytes(TRY(Scalar(value, sub)));
            if (!parsed) return bad(parsed.error());
            if (*parsed < (4u << 20)) {
              return Fail(At(value.Mark(), "field '" + sub + "' must be at least 4M"));
            }
            limits.memory_bytes = *parsed;
          } else if (key == "timeout") {
            auto parsed = ParseDuration(TRY(Scalar(value, sub)));
            if (!parsed) return bad(parsed.error());
            if (parsed->count() <= 0)
              return Fail(At(value.Mark(), "field '" + sub + "' must be above 0"));
            limits.timeout = *parsed;
          } else if (key == "pids") {
            std::string text = TRY(Scalar(value, sub));
            if (text.empty() || text.size() > 9 ||
                !std::all_of(text.begin(), text.end(),
                             [](char c) { return c >= '0' && c <= '9'; }) ||
                std::stoul(text) == 0) {
              return Fail(At(value.Mark(), "field '" + sub + "' must be a positive integer, got '" +
                                               Printable(text) + "'"));
            }
            limits.pids = static_cast<uint32_t>(std::stoul(text));
          } else if (key == "disk") {
            auto parsed = ParseBytes(TRY(Scalar(value, sub)));
            if (!parsed) return bad(parsed.error());
            if (*parsed == 0) return Fail(At(value.Mark(), "field '" + sub + "' must be above 0"));
            limits.disk_bytes = *parsed;
          } else {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "' in limits" +
                                                SuggestField(key, kLimitFields)));
          }
          return Ok();
        });
  }

  Result<TemplateSpec> Document(const YAML::Node& root) const {
    if (root.IsNull()) {
      return Fail(
          At(YAML::Mark::null_mark(), "empty template: expected a mapping with at least 'name'"));
    }
    TemplateSpec spec;
    bool has_name = false;
    size_t content_bytes = 0;
    TRY(ForEachField(
        root, "template",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) -> Status {
          if (key == "name") {
            spec.name = TRY(Scalar(value, key));
            if (!IsValidTemplateName(spec.name)) {
              return Fail(
                  At(value.Mark(), "field 'name': '" + Printable(spec.name) +
                                       "' is not a valid template name (lower-case letters, "
                                       "digits and '-', starting with a letter or digit, at "
                                       "most 63 characters)"));
            }
            has_name = true;
          } else if (key == "description") {
            spec.description = value.IsNull() ? "" : TRY(Scalar(value, key));
          } else if (key == "base") {
            if (value.IsNull()) return Ok();
            spec.base = TRY(Scalar(value, key));
            bool ok = !spec.base.empty() && spec.base.size() <= kMaxBaseLength &&
                      spec.base[0] >= 'a' && spec.base[0] <= 'z' &&
                      std::all_of(spec.base.begin(), spec.base.end(),
                                  [](char c) { return IsLowerAlnum(c) || c == '-'; });
            if (!ok) {
              return Fail(At(value.Mark(), "field 'base': '" + Printable(spec.base) +
                                               "' is not a Debian suite name (like bookworm)"));
            }
          } else if (key == "packages") {
            if (!value.IsNull() && value.IsSequence()) {
              for (size_t i = 0; i < value.size() && i < kMaxListEntries; ++i) {
                const YAML::Node item = value[i];
                if (item.IsScalar() && !IsValidDebianPackageName(item.Scalar())) {
                  return Fail(At(item.Mark(), "field 'packages[" + std::to_string(i) + "]': '" +
                                                  Printable(item.Scalar()) +
                                                  "' is not a valid Debian package name"));
                }
              }
            }
            for (auto& package : TRY(ScalarList(value, key))) {
              if (std::find(spec.packages.begin(), spec.packages.end(), package) ==
                  spec.packages.end()) {
                spec.packages.push_back(std::move(package));
              }
            }
          } else if (key == "files") {
            if (value.IsNull()) return Ok();
            if (!value.IsSequence()) {
              return Fail(At(value.Mark(), "field 'files' must be a list, got " +
                                               std::string(YamlNodeKind(value))));
            }
            if (value.size() > kMaxListEntries) {
              return Fail(At(value.Mark(), "field 'files' has too many entries"));
            }
            std::set<std::string> paths;
            for (size_t i = 0; i < value.size(); ++i) {
              const YAML::Node item = value[i];
              TemplateFile file = TRY(File(item, i));
              if (!paths.insert(file.path).second) {
                return Fail(At(item.Mark(), "files[" + std::to_string(i) + "]: path '" +
                                                Printable(file.path) + "' is listed twice"));
              }
              content_bytes += file.content.size();
              if (content_bytes > kMaxFilesContentBytes) {
                return Fail(At(item.Mark(), "files: contents exceed 16M in total"));
              }
              spec.files.push_back(std::move(file));
            }
          } else if (key == "env") {
            if (value.IsNull()) return Ok();
            return ForEachField(
                value, "env",
                [&](const std::string& env_key, const YAML::Node& env_key_node,
                    const YAML::Node& env_value) -> Status {
                  if (!IsValidEnvName(env_key)) {
                    return Fail(
                        At(env_key_node.Mark(), "field 'env': '" + Printable(env_key) +
                                                    "' is not a valid environment variable name"));
                  }
                  spec.env[env_key] =
                      env_value.IsNull() ? "" : TRY(Scalar(env_value, "env." + env_key));
                  return Ok();
                });
          } else if (key == "workdir") {
            if (value.IsNull()) return Ok();
            spec.workdir = TRY(AbsolutePath(value, key));
          } else if (key == "setup") {
            spec.setup = TRY(ScalarList(value, key));
            for (size_t i = 0; i < spec.setup.size(); ++i) {
              if (spec.setup[i].find_first_not_of(" \t\n") == std::string::npos) {
                return Fail(
                    At(value[i].Mark(), "field 'setup[" + std::to_string(i) + "]' is empty"));
              }
            }
          } else if (key == "limits") {
            return Limits(value, spec.limits);
          } else {
            return Fail(At(key_node.Mark(), "unknown field '" + Printable(key) + "'" +
                                                SuggestField(key, kTopFields)));
          }
          return Ok();
        }));
    if (!has_name) return Fail(At(root.Mark(), "field 'name' is required"));
    return spec;
  }

 private:
  std::string source_;
};

}  // namespace

bool IsValidTemplateName(std::string_view name) {
  return !name.empty() && name.size() <= 63 && IsLowerAlnum(name[0]) &&
         std::all_of(name.begin(), name.end(), [](char c) { return IsLowerAlnum(c) || c == '-'; });
}

// Debian Policy 5.6.7: at least two characters, [a-z0-9][a-z0-9+.-]+.
bool IsValidDebianPackageName(std::string_view name) {
  return name.size() >= 2 && name.size() <= 128 && IsLowerAlnum(name[0]) &&
         std::all_of(name.begin(), name.end(),
                     [](char c) { return IsLowerAlnum(c) || c == '+' || c == '-' || c == '.'; });
}

bool IsValidEnvName(std::string_view name) {
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
  return !name.empty() && name.size() <= 255 && alpha(name[0]) &&
         std::all_of(name.begin(), name.end(),
                     [&](char c) { return alpha(c) || (c >= '0' && c <= '9'); });
}

Result<TemplateSpec> ParseTemplate(std::string_view yaml_text, std::string_view source_name) {
  Parser parser(source_name);
  if (yaml_text.size() > kMaxTemplateBytes) {
    return Fail(parser.At(YAML::Mark::null_mark(), "template is larger than 1M"));
  }
  try {
    YAML::Node root = YAML::Load(std::string(yaml_text));
    return parser.Document(root);
  } catch (const YAML::Exception& error) {
    // error.msg is yaml-cpp's message without its own "line x, column y" prefix.
    return Fail(parser.At(error.mark, "invalid YAML: " + error.msg));
  } catch (const std::exception& error) {
    return Fail(
        parser.At(YAML::Mark::null_mark(), std::string("invalid template: ") + error.what()));
  } catch (...) {
    return Fail(parser.At(YAML::Mark::null_mark(), "invalid template"));
  }
}

std::string CanonicalBuildInputs(const TemplateSpec& spec) {
  nlohmann::json inputs;
  inputs["base"] = spec.base;
  std::set<std::string> packages(spec.packages.begin(), spec.packages.end());
  inputs["packages"] = packages;
  nlohmann::json files = nlohmann::json::object();
  for (const auto& file : spec.files) {
    // A digest instead of the bytes: contents need not be UTF-8, JSON strings must be.
    files[file.path] = {{"content_sha256", Sha256Hex(file.content)}, {"mode", file.mode}};
  }
  inputs["files"] = files;
  inputs["setup"] = spec.setup;
  inputs["workdir"] = spec.workdir;
  // Invalid UTF-8 (in setup commands) is replaced, never thrown on.
  return inputs.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string BuildHash(const TemplateSpec& spec) {
  Sha256 hash;
  hash.Update("tartarus-template-builder/" + std::to_string(kBuilderVersion) + "\n");
  hash.Update(CanonicalBuildInputs(spec));
  return hash.FinishHex();
}

}  // namespace tartarus::templates

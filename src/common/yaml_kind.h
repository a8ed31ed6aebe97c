// How a YAML node is named in error messages ("expected a list, got a mapping"). Header-only
// so tartarus_common stays free of yaml-cpp (the static guest agent links it).
#pragma once

#include <yaml-cpp/yaml.h>

#include <string_view>

namespace tartarus {

inline std::string_view YamlNodeKind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "an undefined node";
  }
}

}  // namespace tartarus

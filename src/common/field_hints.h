// Wording for errors about outside input (template files, policy files): bytes made safe
// to print, and a "did you mean" hint for a misspelt field name.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace tartarus {

// At most 80 characters, control characters shown as '?'.
std::string Printable(std::string_view text);

// Levenshtein distance.
size_t EditDistance(std::string_view a, std::string_view b);

// " (did you mean 'x'?)" when one known field is a close typo of `unknown`, else
// " (known fields: a, b, ...)".
std::string SuggestField(std::string_view unknown, std::span<const std::string_view> known);

}  // namespace tartarus

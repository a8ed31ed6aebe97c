// Wording for errors about outside input (see field_hints.h).
#include "common/field_hints.h"

#include <algorithm>
#include <vector>

namespace tartarus {

std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 80)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (text.size() > 80) out += "...";
  return out;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string SuggestField(std::string_view unknown, std::span<const std::string_view> known) {
  std::string_view best;
  size_t best_distance = 3;  // only close typos: further away the hint misleads
  for (std::string_view candidate : known) {
    // Bounded work on outside input: a longer key is no close typo of any field anyway.
    size_t distance = EditDistance(unknown.substr(0, 64), candidate);
    if (distance < best_distance && distance < candidate.size()) {
      best = candidate;
      best_distance = distance;
    }
  }
  if (best.empty()) {
    std::string all;
    for (std::string_view candidate : known) {
      all += (all.empty() ? "" : ", ") + std::string(candidate);
    }
    return " (known fields: " + all + ")";
  }
  return " (did you mean '" + std::string(best) + "'?)";
}

}  // namespace tartarus

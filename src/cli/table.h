// Plain-text tables for CLI output: columns padded to their widest cell.
#pragma once

#include <string>
#include <vector>

namespace tartarus::cli {

class Table {
 public:
  explicit Table(std::vector<std::string> headers) : rows_{std::move(headers)} {}
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

// "3 seconds ago", "5 minutes ago", "2 days ago".
std::string Ago(int64_t then_ms, int64_t now_ms);
// Shell-like rendering of an argv: python3 -c 'print(1)'.
std::string QuoteCommand(const std::vector<std::string>& argv, size_t max_chars = 40);

}  // namespace tartarus::cli

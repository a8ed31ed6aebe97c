#include "cli/table.h"

#include <gtest/gtest.h>

namespace tartarus::cli {
namespace {

TEST(Table, PadsColumnsToWidestCell) {
  Table t({"ID", "STATE"});
  t.AddRow({"abc", "running"});
  t.AddRow({"a", "x"});
  EXPECT_EQ(t.Render(), "ID    STATE\nabc   running\na     x\n");
}

TEST(QuoteCommand, QuotesLikeAShell) {
  EXPECT_EQ(QuoteCommand({"python3", "-c", "print('hi')"}), "python3 -c 'print('\\''hi'\\'')'");
  EXPECT_EQ(QuoteCommand({"echo", ""}), "echo ''");
  EXPECT_EQ(QuoteCommand({"x", std::string(100, 'a')}, 10), "x aaaaa...");
}

TEST(Ago, Humanizes) {
  EXPECT_EQ(Ago(0, 1000), "-");
  EXPECT_EQ(Ago(1000, 2000), "1 second ago");
  EXPECT_EQ(Ago(0 + 1, 1 + 3 * 3600 * 1000), "3 hours ago");
}

}  // namespace
}  // namespace tartarus::cli

// Unit tests of the Tartarus runtime's sandbox ownership records.
#include "runtime/owner.h"

#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace tartarus::runtime {
namespace {

TEST(ProcStatTest, ParsesStartTimeAfterAHostileComm) {
  // comm may contain spaces and ')' ; starttime is field 22.
  std::string stat =
      "4242 (evil) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 "
      "12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
  auto start = ParseProcStatStartTime(stat);
  ASSERT_TRUE(start) << start.error().message;
  EXPECT_EQ(*start, 987654u);
}

TEST(ProcStatTest, RejectsTruncatedOrGarbage) {
  EXPECT_FALSE(ParseProcStatStartTime(""));
  EXPECT_FALSE(ParseProcStatStartTime("12 (x S 1"));
  EXPECT_FALSE(ParseProcStatStartTime("12 (x) S 1 2 3"));
  EXPECT_FALSE(
      ParseProcStatStartTime("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 1 1"));
}

TEST(ProcStatTest, ReadsOurOwnStartTime) {
  auto start = ProcessStartTime(getpid());
  ASSERT_TRUE(start) << start.error().message;
  EXPECT_GT(*start, 0u);
}

TEST(OwnerRecordTest, RoundTrips) {
  OwnerRecord owner{1234, 5678901234};
  EXPECT_EQ(FormatOwnerRecord(owner), "1234 5678901234\n");
  auto parsed = ParseOwnerRecord(FormatOwnerRecord(owner));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->pid, 1234);
  EXPECT_EQ(parsed->start_time, 5678901234u);
}

TEST(OwnerRecordTest, RejectsMalformed) {
  for (const char* bad : {"", "\n", "1234", "1234 ", "abc 12", "12 abc", "-1 5", "0 5",
                          "99999999999 5", "12 5 7", "12  5"}) {
    EXPECT_FALSE(ParseOwnerRecord(bad)) << bad;
  }
}

TEST(OwnerRecordTest, AliveOnlyForTheSameProcess) {
  auto self = CurrentProcessOwner();
  ASSERT_TRUE(self);
  EXPECT_TRUE(OwnerAlive(*self));
  // Same pid, other start time: a reused pid is not the owner.
  EXPECT_FALSE(OwnerAlive({self->pid, self->start_time + 1}));
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  auto start = ProcessStartTime(child);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  if (start) {
    EXPECT_FALSE(OwnerAlive({child, *start}));
  }
}

TEST(SmallFileTest, WritesAndReadsCapped) {
  char dir[] = "/tmp/tartarus-owner-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/f";
  ASSERT_TRUE(WriteSmallFile(path, "hello world"));
  EXPECT_EQ(*ReadSmallFile(path), "hello world");
  EXPECT_EQ(*ReadSmallFile(path, 5), "hello");
  EXPECT_FALSE(ReadSmallFile(std::string(dir) + "/missing"));
  unlink(path.c_str());
  rmdir(dir);
}

}  // namespace
}  // namespace tartarus::runtime

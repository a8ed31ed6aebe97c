#include "node/sandbox_record.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "node/sandbox_store.h"

namespace tartarus::node {
namespace {

SandboxRecord Sample() {
  SandboxRecord r;
  r.id = "0123456789ab";
  r.template_name = "python-ds";
  r.runtime = "gvisor";
  r.command = {"python3", "-c", "print('x')"};
  r.env = {"A=1"};
  r.limits.memory_bytes = 256 << 20;
  r.state = SandboxState::kExited;
  r.exit_code = 3;
  r.created_ms = 1000;
  r.usage.cpu_ns = 42;
  return r;
}

TEST(SandboxRecord, JsonRoundTrip) {
  auto back = RecordFromJson(RecordToJson(Sample()));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->id, "0123456789ab");
  EXPECT_EQ(back->command, Sample().command);
  EXPECT_EQ(back->limits.memory_bytes, 256u << 20);
  EXPECT_EQ(back->state, SandboxState::kExited);
  EXPECT_EQ(back->exit_code, 3);
  EXPECT_EQ(back->usage.cpu_ns, 42u);
  EXPECT_FALSE(back->stdin_via_control);
  SandboxRecord with_stdin = Sample();
  with_stdin.stdin_via_control = true;
  auto again = RecordFromJson(RecordToJson(with_stdin));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_TRUE(again->stdin_via_control) << "the detached supervisor reads it from the record";
}

TEST(SandboxRecord, CorruptJsonIsAnError) {
  EXPECT_FALSE(RecordFromJson("{"));
  EXPECT_FALSE(RecordFromJson("{\"id\": 5}"));
  EXPECT_FALSE(RecordFromJson("{\"id\": \"x\", \"state\": \"dancing\"}"));
}

TEST(SandboxRecord, IdsAreHexAndDistinct) {
  std::string a = NewSandboxId(), b = NewSandboxId();
  EXPECT_EQ(a.size(), 12u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST(SandboxStore, CreateListResolveRemove) {
  std::string dir = std::filesystem::temp_directory_path() / ("tartarus-store-" + NewSandboxId());
  SandboxStore store(dir);
  auto a = Sample();
  a.id = "aaaa11112222";
  a.created_ms = 1;
  auto b = Sample();
  b.id = "aaab11112222";
  b.created_ms = 2;
  ASSERT_TRUE(store.Create(a));
  ASSERT_TRUE(store.Create(b));
  EXPECT_FALSE(store.Create(a));  // exists
  auto list = store.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id, b.id);  // newest first
  EXPECT_EQ(*store.Resolve("aaab"), b.id);
  auto ambiguous = store.Resolve("aaa");
  ASSERT_FALSE(ambiguous);
  EXPECT_NE(ambiguous.error().message.find("ambiguous"), std::string::npos);
  EXPECT_EQ(store.Resolve("ffff").error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store.Resolve("../x").error().code, ErrorCode::kInvalidArgument);
  ASSERT_TRUE(store.Remove(a.id));
  EXPECT_EQ(store.List().size(), 1u);
  std::filesystem::remove_all(dir);
}

// Reconciling reads the active index, not every record: only records that are not final
// are in it, and it drops entries whose record became final or went away.
TEST(SandboxStore, ActiveIndexHoldsOnlyRecordsNotFinal) {
  std::string dir = std::filesystem::temp_directory_path() / ("tartarus-store-" + NewSandboxId());
  SandboxStore store(dir);
  EXPECT_TRUE(store.ListActive().empty());
  EXPECT_FALSE(std::filesystem::exists(dir));  // reading creates nothing
  auto running = Sample();
  running.id = "aaaa00000001";
  running.state = SandboxState::kRunning;
  auto done = Sample();
  done.id = "aaaa00000002";  // created final: never indexed
  ASSERT_TRUE(store.Create(running));
  ASSERT_TRUE(store.Create(done));
  auto active = store.ListActive();
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].id, running.id);
  EXPECT_EQ(store.List().size(), 2u);

  running.state = SandboxState::kExited;
  ASSERT_TRUE(store.Save(running));
  EXPECT_TRUE(store.ListActive().empty());
  EXPECT_FALSE(std::filesystem::exists(dir + "/sandboxes/.active/" + running.id));

  // An entry whose record is gone (a crash during rm) or final (a crash before the unlink).
  auto lost = Sample();
  lost.id = "aaaa00000003";
  lost.state = SandboxState::kCreating;
  ASSERT_TRUE(store.Create(lost));
  std::filesystem::remove_all(store.Dir(lost.id));
  std::filesystem::create_symlink("../" + done.id, dir + "/sandboxes/.active/" + done.id);
  EXPECT_TRUE(store.ListActive().empty());
  EXPECT_FALSE(std::filesystem::exists(dir + "/sandboxes/.active/" + lost.id));
  EXPECT_FALSE(std::filesystem::is_symlink(dir + "/sandboxes/.active/" + done.id));

  auto again = Sample();
  again.id = "aaaa00000004";
  again.state = SandboxState::kRunning;
  ASSERT_TRUE(store.Create(again));
  ASSERT_TRUE(store.Remove(again.id));
  EXPECT_TRUE(store.ListActive().empty());
  std::filesystem::remove_all(dir);
}

// A state dir from before the index: its records that are not final get indexed once.
TEST(SandboxStore, OlderRecordsAreIndexedOnce) {
  std::string dir = std::filesystem::temp_directory_path() / ("tartarus-store-" + NewSandboxId());
  SandboxStore store(dir);
  auto old = Sample();
  old.id = "bbbb00000001";
  old.state = SandboxState::kRunning;
  ASSERT_TRUE(store.Create(old));
  // What an older version leaves: the record, no index.
  std::filesystem::remove_all(dir + "/sandboxes/.active");
  auto active = store.ListActive();
  ASSERT_EQ(active.size(), 1u);
  EXPECT_EQ(active[0].id, old.id);
  EXPECT_TRUE(std::filesystem::exists(dir + "/sandboxes/.active/.indexed"));
  EXPECT_EQ(store.List().size(), 1u);  // the index is not a record
  EXPECT_EQ(*store.Resolve("bbbb"), old.id);
  std::filesystem::remove_all(dir);
}

// After a crash the data of a record may never have reached the disk: it shows as lost.
TEST(SandboxStore, EmptyRecordLoadsAsLost) {
  std::string dir = std::filesystem::temp_directory_path() / ("tartarus-store-" + NewSandboxId());
  SandboxStore store(dir);
  auto r = Sample();
  r.id = "cccc00000001";
  r.state = SandboxState::kRunning;
  ASSERT_TRUE(store.Create(r));
  std::filesystem::resize_file(store.Dir(r.id) + "/record.json", 0);
  auto loaded = store.Load(r.id);
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(loaded->id, r.id);
  EXPECT_EQ(loaded->state, SandboxState::kLost);
  EXPECT_FALSE(loaded->error.empty());
  EXPECT_TRUE(store.ListActive().empty());  // final: out of the index
  ASSERT_TRUE(store.Remove(r.id));
  std::filesystem::remove_all(dir);
}

// Save replaces the record in place of the old one, and leaves no temporary file.
TEST(SandboxStore, SaveReplacesAtomically) {
  std::string dir = std::filesystem::temp_directory_path() / ("tartarus-store-" + NewSandboxId());
  SandboxStore store(dir);
  auto r = Sample();
  r.id = "dddd00000001";
  ASSERT_TRUE(store.Create(r));
  for (int code = 0; code < 3; ++code) {
    r.exit_code = code;
    ASSERT_TRUE(store.Save(r));
    EXPECT_EQ(store.Load(r.id)->exit_code, code);
  }
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(store.Dir(r.id))) {
    EXPECT_EQ(entry.path().filename(), "record.json");
    ++files;
  }
  EXPECT_EQ(files, 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tartarus::node

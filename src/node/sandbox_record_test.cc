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

}  // namespace
}  // namespace tartarus::node

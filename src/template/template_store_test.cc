// The template store with a fake builder: lookup, errors, the Ensure fast path, rebuild
// rules, failed builds, List/Inspect/Remove and the per-template lock. No root needed.
#include "template/template_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "template/fs_util.h"

namespace tartarus::templates {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

// Writes a marker file instead of debootstrapping; counts calls; can fail or be slow.
class FakeBuilder : public RootfsBuilder {
 public:
  Status BuildRootfs(const TemplateSpec& spec, const std::string& rootfs_dir,
                     const ProgressCallback& progress) override {
    ++builds;
    if (progress) progress("[1/1] fake build");
    std::this_thread::sleep_for(delay);
    std::string marker;
    for (const auto& command : spec.setup) marker += command + "\n";
    TRY(WriteFileInRoot(rootfs_dir, "/marker", marker, 0644));
    if (!fail_with.empty()) return Fail(ErrorCode::kFailedPrecondition, fail_with);
    return Ok();
  }

  std::atomic<int> builds{0};
  std::string fail_with;
  std::chrono::milliseconds delay{0};
};

class TemplateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tartarus-store-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    root_ = dir;
    state_ = root_ + "/state";
    first_ = root_ + "/first";
    second_ = root_ + "/second";
    ASSERT_TRUE(MakeDirs(first_));
    ASSERT_TRUE(MakeDirs(second_));
    MakeStore();
  }
  void TearDown() override { EXPECT_TRUE(RemoveTree(root_)); }

  void MakeStore(StoreOptions options = {}) {
    auto builder = std::make_unique<FakeBuilder>();
    builder_ = builder.get();
    store_ = std::make_unique<TemplateStore>(state_, std::vector<std::string>{first_, second_},
                                             std::move(builder), std::move(options));
  }
  static void Write(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
  }
  std::string Marker(const BuiltTemplate& built) {
    auto text = ReadSmallFile(built.rootfs + "/marker");
    return text ? *text : "(missing)";
  }
  std::vector<std::string> Leftovers() {
    std::vector<std::string> found;
    for (const auto& entry : std::filesystem::directory_iterator(state_ + "/templates")) {
      std::string name = entry.path().filename();
      if (name.starts_with(".build-")) found.push_back(name);
    }
    return found;
  }

  std::string root_, state_, first_, second_;
  FakeBuilder* builder_ = nullptr;
  std::unique_ptr<TemplateStore> store_;
  ProgressCallback quiet_;
};

TEST_F(TemplateStoreTest, FindsByNameFirstSearchDirWinsAndByPath) {
  Write(first_ + "/base.yaml", "name: base\ndescription: first\n");
  Write(second_ + "/base.yaml", "name: base\ndescription: second\n");
  Write(second_ + "/extra.yml", "name: extra\n");
  auto info = store_->Inspect("base");
  ASSERT_TRUE(info) << info.error().message;
  EXPECT_EQ(info->description, "first");
  EXPECT_EQ(info->source_path, first_ + "/base.yaml");
  auto by_path = store_->Inspect(second_ + "/base.yaml");
  ASSERT_TRUE(by_path) << by_path.error().message;
  EXPECT_EQ(by_path->description, "second");
  EXPECT_TRUE(store_->Inspect("extra"));
}

TEST_F(TemplateStoreTest, UnknownTemplateListsWhatExists) {
  Write(first_ + "/base.yaml", "name: base\n");
  Write(second_ + "/python-ds.yaml", "name: python-ds\n");
  auto built = store_->Ensure("pyhton-ds", quiet_);
  ASSERT_FALSE(built);
  EXPECT_EQ(built.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(built.error().message,
            "unknown template 'pyhton-ds': available templates: base, python-ds (see `tartarus "
            "template ls`)");
  EXPECT_EQ(builder_->builds, 0);
}

TEST_F(TemplateStoreTest, BadNamesAndMismatchedFiles) {
  Write(first_ + "/base.yaml", "name: other\n");
  auto mismatch = store_->Ensure("base", quiet_);
  ASSERT_FALSE(mismatch);
  EXPECT_THAT(mismatch.error().message,
              HasSubstr("name 'other' does not match the file name 'base'"));
  auto bad = store_->Ensure("Bad_Name", quiet_);
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message, HasSubstr("invalid template name 'Bad_Name'"));
  auto missing = store_->Ensure(root_ + "/nope.yaml", quiet_);
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message, HasSubstr("nope.yaml"));
  Write(first_ + "/broken.yaml", "name: broken\npakages: [x1]\n");
  auto broken = store_->Ensure("broken", quiet_);
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().message,
            first_ + "/broken.yaml:2:1: unknown field 'pakages' (did you mean 'packages'?)");
}

TEST_F(TemplateStoreTest, BuildOnceThenUpToDate) {
  Write(first_ + "/base.yaml",
        "name: base\nsetup: [echo one]\nenv: {HOME: /home/u, X: y}\nworkdir: /w\n");
  auto built = store_->Build("base", quiet_);
  ASSERT_TRUE(built) << built.error().message;
  EXPECT_TRUE(built->built_now);
  EXPECT_EQ(built->rootfs, state_ + "/templates/base/rootfs");
  EXPECT_EQ(Marker(*built), "echo one\n");
  EXPECT_EQ(built->workdir, "/w");
  EXPECT_EQ(built->env,
            (std::vector<std::string>{
                "HOME=/home/u", "LANG=C.UTF-8",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "X=y"}));
  EXPECT_GT(built->built_at_unix, 0);
  struct stat st;
  EXPECT_EQ(stat((state_ + "/templates/base/template.yaml").c_str(), &st), 0);
  auto meta = ReadSmallFile(state_ + "/templates/base/meta.json");
  ASSERT_TRUE(meta);
  for (const char* key : {"\"name\"", "\"hash\"", "\"base\"", "\"packages\"", "\"size_bytes\"",
                          "\"built_at\"", "\"build_seconds\"", "\"source\""}) {
    EXPECT_THAT(*meta, HasSubstr(key));
  }

  std::vector<std::string> lines;
  auto again = store_->Build("base", [&](std::string_view line) { lines.emplace_back(line); });
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->built_now);
  EXPECT_EQ(builder_->builds, 1);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("template 'base' is up to date"));
  auto ensured = store_->Ensure("base", quiet_);
  ASSERT_TRUE(ensured);
  EXPECT_FALSE(ensured->built_now);
  EXPECT_EQ(builder_->builds, 1);

  auto forced = store_->Build("base", quiet_, /*force=*/true);
  ASSERT_TRUE(forced);
  EXPECT_TRUE(forced->built_now);
  EXPECT_EQ(builder_->builds, 2);
  EXPECT_TRUE(Leftovers().empty());
}

TEST_F(TemplateStoreTest, EnsureFastPathTrustsAMatchingMeta) {
  Write(first_ + "/base.yaml", "name: base\npackages: [curl]\n");
  auto spec = ParseTemplate("name: base\npackages: [curl]\n", "x");
  ASSERT_TRUE(spec);
  ASSERT_TRUE(MakeDirs(state_ + "/templates/base/rootfs"));
  Write(state_ + "/templates/base/meta.json",
        "{\"name\": \"base\", \"hash\": \"" + BuildHash(*spec) + "\", \"size_bytes\": 1234}");
  builder_->fail_with = "must not build";
  auto built = store_->Ensure("base", quiet_);
  ASSERT_TRUE(built) << built.error().message;
  EXPECT_FALSE(built->built_now);
  EXPECT_EQ(built->size_bytes, 1234u);
  EXPECT_EQ(builder_->builds, 0);
}

TEST_F(TemplateStoreTest, ChangedBuildInputsRebuildOtherChangesDoNot) {
  Write(first_ + "/base.yaml", "name: base\nsetup: [echo one]\n");
  ASSERT_TRUE(store_->Ensure("base", quiet_));
  Write(first_ + "/base.yaml",
        "# comment\nname: base\ndescription: new\nenv: {A: b}\nsetup: [echo one]\n");
  auto same = store_->Ensure("base", quiet_);
  ASSERT_TRUE(same);
  EXPECT_FALSE(same->built_now);
  EXPECT_EQ(same->spec.env.at("A"), "b");  // runtime settings come from the current file
  Write(first_ + "/base.yaml", "name: base\nsetup: [echo two]\n");
  auto rebuilt = store_->Ensure("base", quiet_);
  ASSERT_TRUE(rebuilt);
  EXPECT_TRUE(rebuilt->built_now);
  EXPECT_EQ(Marker(*rebuilt), "echo two\n");
  EXPECT_EQ(builder_->builds, 2);
}

TEST_F(TemplateStoreTest, FailedBuildKeepsThePreviousGoodBuild) {
  Write(first_ + "/base.yaml", "name: base\nsetup: [echo good]\n");
  ASSERT_TRUE(store_->Ensure("base", quiet_));
  Write(first_ + "/base.yaml", "name: base\nsetup: [echo bad]\n");
  builder_->fail_with = "step 3/4 (setup: echo bad): exit code 1";
  auto failed = store_->Ensure("base", quiet_);
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().message,
            "building template 'base': step 3/4 (setup: echo bad): exit code 1");
  EXPECT_TRUE(Leftovers().empty());
  Write(first_ + "/base.yaml", "name: base\nsetup: [echo good]\n");
  auto good = store_->Ensure("base", quiet_);
  ASSERT_TRUE(good) << good.error().message;
  EXPECT_FALSE(good->built_now);
  EXPECT_EQ(Marker(*good), "echo good\n");
}

TEST_F(TemplateStoreTest, LeftoversOfKilledBuildsAreRemoved) {
  Write(first_ + "/base.yaml", "name: base\n");
  ASSERT_TRUE(MakeDirs(state_ + "/templates/.build-base.999999/rootfs/etc"));
  ASSERT_TRUE(MakeDirs(state_ + "/templates/.build-base-x.999999/rootfs"));
  ASSERT_TRUE(MakeDirs(state_ + "/templates/.build-busy.999999/rootfs"));
  ASSERT_TRUE(MakeDirs(state_ + "/templates/.locks"));
  auto busy_lock = FileLock::Acquire(state_ + "/templates/.locks/busy.lock");
  ASSERT_TRUE(busy_lock);
  ASSERT_TRUE(store_->Ensure("base", quiet_));
  // Another template's leftover goes too, unless its build still runs (holds its lock).
  EXPECT_EQ(Leftovers(), (std::vector<std::string>{".build-busy.999999"}));
}

TEST_F(TemplateStoreTest, ListShowsBuiltUnbuiltStaleBrokenAndOrphaned) {
  Write(first_ + "/a.yaml", "name: a\ndescription: built\n");
  Write(first_ + "/b.yaml", "name: b\n");
  Write(first_ + "/c.yaml", "name: c\nsetup: [one]\n");
  Write(first_ + "/orphan.yaml", "name: orphan\ndescription: gone later\npackages: [curl]\n");
  ASSERT_TRUE(store_->Ensure("a", quiet_));
  ASSERT_TRUE(store_->Ensure("c", quiet_));
  ASSERT_TRUE(store_->Ensure("orphan", quiet_));
  Write(first_ + "/c.yaml", "name: c\nsetup: [two]\n");
  Write(first_ + "/d.yaml", "name: d\nbad: field\n");
  ASSERT_EQ(unlink((first_ + "/orphan.yaml").c_str()), 0);
  auto list = store_->List();
  ASSERT_TRUE(list) << list.error().message;
  ASSERT_EQ(list->size(), 5u);
  const auto& a = (*list)[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_TRUE(a.built && a.up_to_date);
  EXPECT_EQ(a.description, "built");
  const auto& b = (*list)[1];
  EXPECT_TRUE(!b.built && !b.up_to_date);
  const auto& c = (*list)[2];
  EXPECT_TRUE(c.built && !c.up_to_date);
  const auto& d = (*list)[3];
  EXPECT_EQ(d.name, "d");
  EXPECT_THAT(d.parse_error, HasSubstr("d.yaml:2:1: unknown field 'bad'"));
  const auto& orphan = (*list)[4];
  EXPECT_EQ(orphan.name, "orphan");
  EXPECT_TRUE(orphan.built && orphan.up_to_date);
  EXPECT_EQ(orphan.source_path, "");
  EXPECT_EQ(orphan.packages, std::vector<std::string>{"curl"});
  // A built template whose file is gone still runs from its cached copy.
  auto ensured = store_->Ensure("orphan", quiet_);
  ASSERT_TRUE(ensured) << ensured.error().message;
  EXPECT_FALSE(ensured->built_now);
}

TEST_F(TemplateStoreTest, RemoveRefusesWhileInUse) {
  std::atomic<bool> in_use = true;
  StoreOptions options;
  options.in_use = [&](std::string_view name) { return name == "base" && in_use; };
  MakeStore(std::move(options));
  Write(first_ + "/base.yaml", "name: base\n");
  auto not_built = store_->Remove("base");
  ASSERT_FALSE(not_built);
  EXPECT_EQ(not_built.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(not_built.error().message, "template 'base' is not built");
  ASSERT_TRUE(store_->Ensure("base", quiet_));
  auto busy = store_->Remove("base");
  ASSERT_FALSE(busy);
  EXPECT_EQ(busy.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(busy.error().message,
            "template 'base' is in use by running sandboxes; stop them before removing it");
  // Nor is a tree in use replaced by a rebuild.
  auto rebuild = store_->Build("base", quiet_, /*force=*/true);
  ASSERT_FALSE(rebuild);
  EXPECT_THAT(rebuild.error().message, HasSubstr("running sandboxes use its current build"));
  in_use = false;
  ASSERT_TRUE(store_->Remove("base"));
  struct stat st;
  EXPECT_NE(stat((state_ + "/templates/base").c_str(), &st), 0);
  auto info = store_->Inspect("base");
  ASSERT_TRUE(info);
  EXPECT_FALSE(info->built);
  EXPECT_TRUE(Leftovers().empty());
}

TEST_F(TemplateStoreTest, ConcurrentEnsuresBuildOnce) {
  Write(first_ + "/base.yaml", "name: base\n");
  builder_->delay = std::chrono::milliseconds(300);
  std::vector<std::thread> threads;
  std::atomic<int> ok = 0;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      if (store_->Ensure("base", quiet_)) ++ok;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok, 4);
  EXPECT_EQ(builder_->builds, 1);
}

TEST_F(TemplateStoreTest, WaitsForALockHeldElsewhere) {
  Write(first_ + "/base.yaml", "name: base\n");
  ASSERT_TRUE(MakeDirs(state_ + "/templates/.locks"));
  auto acquired = FileLock::Acquire(state_ + "/templates/.locks/base.lock");
  ASSERT_TRUE(acquired);
  std::optional<FileLock> held(std::move(*acquired));
  std::atomic<bool> waiting = false, done = false;
  std::thread builder([&] {
    auto built = store_->Ensure("base", [&](std::string_view line) {
      if (line.find("waiting for another build of template 'base'") != std::string_view::npos)
        waiting = true;
    });
    EXPECT_TRUE(built);
    done = true;
  });
  for (int i = 0; i < 200 && !waiting; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(waiting);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(done);
  EXPECT_EQ(builder_->builds, 0);
  held.reset();
  builder.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(builder_->builds, 1);
}

}  // namespace
}  // namespace tartarus::templates

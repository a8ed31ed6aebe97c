// Integration test: builds real templates with debootstrap and chroot. Runs only as root
// with debootstrap installed and the Debian mirror reachable; otherwise it skips with the
// reason. TARTARUS_TEST_STATE_DIR names a state dir to reuse (its debootstrap cache makes
// reruns take seconds instead of a minute). Also `tartarus template build --microvm` on a
// template whose tree a fake builder made (no debootstrap, no root).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "template/ext4_image.h"
#include "template/fs_util.h"
#include "template/template_builder.h"
#include "template/template_store.h"

namespace tartarus::templates {
namespace {

// "http://host[:port]/path" -> can we open a TCP connection within 5 s?
std::string MirrorUnreachableReason(const std::string& mirror) {
  if (mirror.starts_with("file:")) {
    struct stat st;
    std::string path = mirror.substr(5);
    while (path.starts_with("//")) path.erase(0, 1);
    return stat(path.c_str(), &st) == 0 ? "" : "mirror directory " + path + " does not exist";
  }
  size_t scheme = mirror.find("://");
  if (scheme == std::string::npos) return "cannot parse mirror URL " + mirror;
  std::string rest = mirror.substr(scheme + 3);
  std::string host = rest.substr(0, rest.find('/'));
  std::string port = mirror.starts_with("https") ? "443" : "80";
  if (size_t colon = host.find(':'); colon != std::string::npos) {
    port = host.substr(colon + 1);
    host.resize(colon);
  }
  struct addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* addresses = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &addresses) != 0 || !addresses) {
    return "cannot resolve mirror host " + host;
  }
  bool connected = false;
  for (auto* address = addresses; address && !connected; address = address->ai_next) {
    int fd = socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (connect(fd, address->ai_addr, address->ai_addrlen) == 0) {
      connected = true;
    } else if (errno == EINPROGRESS) {
      struct pollfd pfd = {fd, POLLOUT, 0};
      int error = 0;
      socklen_t length = sizeof error;
      connected = poll(&pfd, 1, 5000) == 1 &&
                  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
    }
    close(fd);
  }
  freeaddrinfo(addresses);
  return connected ? "" : "mirror " + host + ":" + port + " is not reachable";
}

std::string ReadOrEmpty(const std::string& path) {
  auto text = ReadSmallFile(path);
  return text ? *text : "";
}

class TemplateBuildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "skipped: building templates needs root";
    if (FindExecutable("debootstrap").empty())
      GTEST_SKIP() << "skipped: debootstrap is not installed";
    if (std::string reason = MirrorUnreachableReason(DefaultDebianMirror()); !reason.empty()) {
      GTEST_SKIP() << "skipped: " << reason;
    }
    char scratch[] = "/tmp/tartarus-template-it-XXXXXX";
    ASSERT_NE(mkdtemp(scratch), nullptr);
    scratch_ = scratch;
    if (const char* shared = getenv("TARTARUS_TEST_STATE_DIR"); shared && *shared) {
      state_dir_ = shared;
    } else {
      state_dir_ = scratch_ + "/state";
    }
    ASSERT_TRUE(MakeDirs(state_dir_));
    search_dir_ = scratch_ + "/templates";
    ASSERT_TRUE(MakeDirs(search_dir_));
  }
  void TearDown() override {
    if (store_) (void)store_->Remove(kName);
    if (!scratch_.empty()) {
      EXPECT_TRUE(RemoveTree(scratch_));
    }
  }

  void WriteTemplate(const std::string& text) {
    std::ofstream(search_dir_ + "/" + kName + ".yaml") << text;
  }
  TemplateStore& Store() {
    if (!store_)
      store_ = std::make_unique<TemplateStore>(state_dir_, std::vector<std::string>{search_dir_});
    return *store_;
  }

  static constexpr const char* kName = "it-tiny";
  std::string scratch_, state_dir_, search_dir_;
  std::unique_ptr<TemplateStore> store_;
};

constexpr const char* kTinyTemplate = R"yaml(name: it-tiny
description: integration test template
files:
  - path: /etc/tartarus-hello
    content: "hello\n"
    mode: "0600"
  - path: /opt/app/run.sh
    content: |
      #!/bin/sh
      echo run
    mode: 0755
env:
  GREETING: hi
workdir: /srv/work
setup:
  - echo built-in-chroot > /etc/tartarus-setup
  - test -x /opt/app/run.sh && test "$(cat /etc/tartarus-hello)" = hello
)yaml";

TEST_F(TemplateBuildTest, BuildsTinyTemplateThenReusesAndRebuilds) {
  WriteTemplate(kTinyTemplate);
  std::vector<std::string> lines;
  auto progress = [&](std::string_view line) {
    lines.emplace_back(line);
    fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  auto built = Store().Build(kName, progress, /*force=*/true);
  ASSERT_TRUE(built) << built.error().message;
  EXPECT_TRUE(built->built_now);
  const std::string& root = built->rootfs;
  EXPECT_EQ(ReadOrEmpty(root + "/etc/tartarus-hello"), "hello\n");
  EXPECT_EQ(ReadOrEmpty(root + "/etc/tartarus-setup"), "built-in-chroot\n");
  struct stat st;
  ASSERT_EQ(stat((root + "/etc/tartarus-hello").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(stat((root + "/opt/app/run.sh").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_TRUE(stat((root + "/srv/work").c_str(), &st) == 0 && S_ISDIR(st.st_mode));
  EXPECT_TRUE(stat((root + "/usr/bin/apt-get").c_str(), &st) == 0);
  // Apt lists are dropped, nothing stays mounted, no temp dirs stay behind.
  EXPECT_NE(stat((root + "/var/lib/apt/lists/partial").c_str(), &st), -1);
  std::string mountinfo = ReadOrEmpty("/proc/self/mountinfo");
  EXPECT_EQ(mountinfo.find(root), std::string::npos) << mountinfo;
  auto leftovers = RunCommand(
      {"sh", "-c", "ls -a " + state_dir_ + "/templates | grep '^.build-it-tiny[.]' || true"});
  ASSERT_TRUE(leftovers);
  EXPECT_EQ(leftovers->out, "");
  EXPECT_GT(built->size_bytes, 50u << 20);
  EXPECT_NE(std::find(built->env.begin(), built->env.end(), "GREETING=hi"), built->env.end());
  EXPECT_EQ(built->workdir, "/srv/work");
  bool saw_step = false;
  for (const auto& line : lines)
    saw_step |= line.starts_with("[1/") && line.find("debootstrap bookworm") != std::string::npos;
  EXPECT_TRUE(saw_step);

  // Unchanged: the fast path, no build.
  auto start = std::chrono::steady_clock::now();
  auto again = Store().Ensure(kName, progress);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE(again->built_now);
  // Generous: the machines are shared; an actual build takes seconds.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));

  // A failing setup command names its step and shows its output; the good build stays.
  std::string broken = std::string(kTinyTemplate) + "  - echo something-broke >&2; exit 3\n";
  WriteTemplate(broken);
  auto failed = Store().Build(kName, progress);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("setup: echo something-broke"), std::string::npos)
      << failed.error().message;
  EXPECT_NE(failed.error().message.find("  | something-broke"), std::string::npos)
      << failed.error().message;
  EXPECT_EQ(ReadOrEmpty(root + "/etc/tartarus-setup"), "built-in-chroot\n");
  leftovers = RunCommand(
      {"sh", "-c", "ls -a " + state_dir_ + "/templates | grep '^.build-it-tiny[.]' || true"});
  ASSERT_TRUE(leftovers);
  EXPECT_EQ(leftovers->out, "");

  // Back to the good file: the cached build is still up to date.
  WriteTemplate(kTinyTemplate);
  auto restored = Store().Ensure(kName, progress);
  ASSERT_TRUE(restored) << restored.error().message;
  EXPECT_FALSE(restored->built_now);

  // A changed file rebuilds.
  WriteTemplate(std::string(kTinyTemplate) + "  - echo second > /etc/tartarus-second\n");
  auto rebuilt = Store().Ensure(kName, progress);
  ASSERT_TRUE(rebuilt) << rebuilt.error().message;
  EXPECT_TRUE(rebuilt->built_now);
  EXPECT_EQ(ReadOrEmpty(root + "/etc/tartarus-second"), "second\n");
}

// Stands in for debootstrap: a tree of two files, made in no time.
class TinyTreeBuilder : public RootfsBuilder {
 public:
  Status BuildRootfs(const TemplateSpec&, const std::string& rootfs_dir,
                     const ProgressCallback&) override {
    TRY(WriteFileInRoot(rootfs_dir, "/etc/hostname", "tiny\n", 0644));
    TRY(WriteFileInRoot(rootfs_dir, "/bin/run", "#!/bin/sh\n", 0755));
    return Ok();
  }
};

// `template build --microvm` makes the ext4 image right after the (here: cached) tree, with
// one progress line, and says so; a second run finds it up to date. The CLI builds the
// template from the same state dir the store below filled, so nothing is debootstrapped.
TEST(TemplateBuildCli, MicrovmFlagMakesTheExt4ImageWithProgress) {
  if (FindExecutable("mkfs.ext4").empty() && access("/usr/sbin/mkfs.ext4", X_OK) != 0 &&
      access("/sbin/mkfs.ext4", X_OK) != 0) {
    GTEST_SKIP() << "skipped: mkfs.ext4 (e2fsprogs) is not installed";
  }
  char scratch[] = "/tmp/tartarus-template-cli-XXXXXX";
  ASSERT_NE(mkdtemp(scratch), nullptr);
  const std::string root = scratch, state = root + "/state", yaml = root + "/cli-tiny.yaml";
  std::ofstream(yaml) << "name: cli-tiny\ndescription: CLI test template\n";
  TemplateStore store(state, {root}, std::make_unique<TinyTreeBuilder>());
  auto built = store.Build(yaml, {});
  ASSERT_TRUE(built) << built.error().message;
  const std::string image = Ext4ImagePath(built->rootfs);
  ASSERT_NE(access(image.c_str(), F_OK), 0) << "a plain build makes no image";

  auto help = RunCommand({TARTARUS_CLI_PATH, "template", "build", "--help"});
  ASSERT_TRUE(help);
  EXPECT_THAT(help->out, ::testing::HasSubstr("--microvm"));

  auto cli =
      RunCommand({TARTARUS_CLI_PATH, "--state-dir", state, "template", "build", "--microvm", yaml});
  ASSERT_TRUE(cli) << cli.error().message;
  EXPECT_EQ(cli->status.code, 0) << cli->err;
  EXPECT_THAT(cli->err, ::testing::HasSubstr("cli-tiny: up to date"));
  EXPECT_THAT(cli->err, ::testing::HasSubstr("making the microVM image " + image));
  EXPECT_THAT(cli->err, ::testing::HasSubstr("cli-tiny: microvm image made (" + image + ")"));
  EXPECT_EQ(access(image.c_str(), R_OK), 0);
  auto files = RunCommand({"debugfs", "-R", "ls -l /bin", image});
  if (files && files->status.Success()) {
    EXPECT_THAT(files->out, ::testing::HasSubstr("run"));
  }

  auto again =
      RunCommand({TARTARUS_CLI_PATH, "--state-dir", state, "template", "build", "--microvm", yaml});
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(again->status.code, 0) << again->err;
  EXPECT_THAT(again->err, ::testing::Not(::testing::HasSubstr("making")));
  EXPECT_THAT(again->err, ::testing::HasSubstr("cli-tiny: microvm image up to date"));
  EXPECT_TRUE(RemoveTree(root));
}

}  // namespace
}  // namespace tartarus::templates

// The microvm backend (Tartarus runtime): the availability reasons, finding the guest
// kernel and initramfs, the VM's config file and kernel command line (checked against the
// guest agent's own parser), the hybrid vsock handshake against a fake VMM socket, the real
// tartarus-vmm accepting the config we write, and `tartarus run --runtime microvm` end to end
// where the host can boot a Linux guest.
#include "runtime/microvm_backend.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/subprocess.h"
#include "guest/init.h"
#include "template/ext4_image.h"

namespace tartarus::runtime {
namespace {

using ::testing::EndsWith;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string MakeTempDir() {
  char path[] = "/tmp/tartarus-microvm-test-XXXXXX";
  EXPECT_NE(mkdtemp(path), nullptr);
  return path;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream file(path);
  file << text;
}

void RemoveTree(const std::string& path) { (void)RunCommand({"rm", "-rf", path}); }

std::string StateDir() {
  const char* env = std::getenv("TARTARUS_STATE_DIR");
  return env && *env ? env : "/var/lib/tartarus";
}

TEST(MicrovmBackend, ReasonNamesWhatTheHostLacks) {
  KvmHostFacts no_kvm{.dev_kvm_usable = false, .dev_kvm_error = "No such file or directory"};
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("/dev/kvm did not open"));
  EXPECT_THAT(MicrovmUnavailableReason(no_kvm), HasSubstr("No such file or directory"));

  KvmHostFacts pvm{.dev_kvm_usable = true, .pvm = true, .hardware_virt = false};
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("PVM"));
  EXPECT_THAT(MicrovmUnavailableReason(pvm), HasSubstr("--runtime gvisor"));

  KvmHostFacts hardware{.dev_kvm_usable = true, .pvm = false, .hardware_virt = true};
  EXPECT_EQ(MicrovmUnavailableReason(hardware), "");
}

// The reason is the host's when the host is what lacks, then the guest side's: never a
// crash, never a silent fallback to another backend.
TEST(MicrovmBackend, RefusesWithTheFirstMissingPiece) {
  std::string state = MakeTempDir();
  auto backend = MakeBackend("microvm", {.state_dir = state});
  ASSERT_TRUE(backend) << backend.error().message;
  EXPECT_EQ((*backend)->Name(), "microvm");
  auto available = (*backend)->CheckAvailable();
  // An empty state dir has no kernel: no host passes.
  ASSERT_FALSE(available);
  EXPECT_EQ(available.error().code, ErrorCode::kFailedPrecondition);
  std::string host_reason = MicrovmUnavailableReason(ReadKvmHostFacts());
  if (!host_reason.empty()) {
    EXPECT_EQ(available.error().message, host_reason);
  } else if (available.error().message.find("tartarus-vmm") == std::string::npos) {
    EXPECT_THAT(available.error().message, HasSubstr("scripts/fetch-guest-kernel.sh"));
  }
  auto started = (*backend)->Start({.id = "microvm-test"});
  ASSERT_FALSE(started);
  EXPECT_THAT(started.error().message, HasSubstr(available.error().message));
  RemoveTree(state);
}

TEST(MicrovmBackend, FindsAKernelWithItsInitramfsOrSaysWhichScriptToRun) {
  std::string vmm = MakeTempDir();
  auto none = FindGuestImages(vmm);
  ASSERT_FALSE(none);
  EXPECT_THAT(none.error().message, HasSubstr("scripts/fetch-guest-kernel.sh " + vmm + "/kernel"));

  std::string release = "6.1.0-56-cloud-amd64";
  std::string boot = vmm + "/kernel/linux-image-" + release + "/boot";
  ASSERT_EQ(RunCommand({"mkdir", "-p", boot})->status.code, 0);
  WriteFile(boot + "/vmlinuz-" + release, "kernel");
  auto no_initramfs = FindGuestImages(vmm);
  ASSERT_FALSE(no_initramfs);
  EXPECT_THAT(no_initramfs.error().message, HasSubstr("scripts/build-guest-initramfs.sh " + vmm));
  EXPECT_THAT(no_initramfs.error().message, HasSubstr(release));

  WriteFile(vmm + "/initramfs-" + release + ".cpio.gz", "cpio");
  auto found = FindGuestImages(vmm);
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(found->release, release);
  EXPECT_EQ(found->kernel, boot + "/vmlinuz-" + release);
  EXPECT_EQ(found->initramfs, vmm + "/initramfs-" + release + ".cpio.gz");
  RemoveTree(vmm);
}

MicrovmLaunch TestLaunch() {
  SandboxSpec spec{.id = "box", .hostname = "box-7"};
  spec.limits.millicpus = 1500;
  spec.limits.memory_bytes = 256ull << 20;
  spec.limits.disk_bytes = 64ull << 20;
  auto launch =
      MakeMicrovmLaunch(spec, {.release = "r", .kernel = "/k/vmlinuz", .initramfs = "/k/i"},
                        "/t/rootfs.ext4", "vsock.sock");
  EXPECT_TRUE(launch) << launch.error().message;
  return launch.value_or(MicrovmLaunch{});
}

TEST(MicrovmLaunch, LimitsBecomeTheMachine) {
  MicrovmLaunch launch = TestLaunch();
  EXPECT_EQ(launch.vcpus, 2u);  // a fraction of a CPU still needs a whole vCPU
  EXPECT_EQ(launch.memory_mib, 256u);
  EXPECT_EQ(launch.disk_bytes, 64ull << 20);

  SandboxSpec small{.id = "s"};
  small.limits.millicpus = 250;
  auto one = MakeMicrovmLaunch(small, {}, "/i", "v");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->vcpus, 1u);

  // The hostname goes on the kernel command line: nothing that could add a kernel argument.
  for (const char* bad : {"a b", "x tartarus.root=/dev/vdb", "", "a\nb"}) {
    SandboxSpec spec{.id = "s", .hostname = bad};
    auto refused = MakeMicrovmLaunch(spec, {}, "/i", "v");
    ASSERT_FALSE(refused) << bad;
    EXPECT_THAT(refused.error().message, HasSubstr("hostname"));
  }
}

// Host and guest agree: what the backend writes, the agent's init mode reads back.
TEST(MicrovmLaunch, BootArgsAreWhatTheGuestAgentParses) {
  MicrovmLaunch launch = TestLaunch();
  std::string args = MicrovmBootArgs(launch);
  EXPECT_THAT(args, HasSubstr("console=ttyS0"));
  EXPECT_THAT(args, HasSubstr("reboot=k"));
  EXPECT_THAT(args, EndsWith(" -- --init"));
  auto parsed = guest::ParseBootOptions(args);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->root_device, "/dev/vda");
  EXPECT_EQ(parsed->vsock_port, kAgentVsockPort);
  EXPECT_EQ(parsed->disk_bytes, 64ull << 20);
  EXPECT_EQ(parsed->hostname, "box-7");
}

TEST(MicrovmLaunch, ConfigFileIsFirecrackersJson) {
  MicrovmLaunch launch = TestLaunch();
  auto config = nlohmann::json::parse(MicrovmConfigJson(launch));
  EXPECT_EQ(config["boot-source"]["kernel_image_path"], "/k/vmlinuz");
  EXPECT_EQ(config["boot-source"]["initrd_path"], "/k/i");
  EXPECT_EQ(config["boot-source"]["boot_args"], MicrovmBootArgs(launch));
  EXPECT_EQ(config["machine-config"]["vcpu_count"], 2);
  EXPECT_EQ(config["machine-config"]["mem_size_mib"], 256);
  ASSERT_EQ(config["drives"].size(), 1u);
  EXPECT_EQ(config["drives"][0]["path_on_host"], "/t/rootfs.ext4");
  EXPECT_EQ(config["drives"][0]["is_root_device"], true);
  EXPECT_EQ(config["drives"][0]["is_read_only"], true);
  EXPECT_EQ(config["vsock"]["guest_cid"], kGuestCid);
  EXPECT_EQ(config["vsock"]["uds_path"], "vsock.sock");
  EXPECT_TRUE(config.contains("entropy"));
}

// A stand-in for tartarus-vmm's hybrid vsock listener: answers one connection with `reply`.
class FakeVsockListener {
 public:
  FakeVsockListener(std::string path, std::string reply, bool hang = false)
      : path_(std::move(path)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    listener_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_EQ(bind(listener_.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(listener_.Get(), 1), 0);
    thread_ = std::thread([this, reply, hang] {
      UniqueFd conn(accept(listener_.Get(), nullptr, nullptr));
      if (!conn) return;
      char c;
      while (recv(conn.Get(), &c, 1, 0) == 1 && c != '\n') request_.push_back(c);
      if (hang) {
        std::this_thread::sleep_for(500ms);
        return;
      }
      (void)!write(conn.Get(), reply.data(), reply.size());
      // The stream goes on after the OK line: the client must see these bytes.
      if (reply.rfind("OK", 0) == 0) {
        char buf[8];
        (void)!read(conn.Get(), buf, sizeof buf);
      }
    });
  }
  ~FakeVsockListener() {
    if (thread_.joinable()) thread_.join();
    unlink(path_.c_str());
  }
  const std::string& request() {
    if (thread_.joinable()) thread_.join();
    return request_;
  }

 private:
  std::string path_;
  UniqueFd listener_;
  std::thread thread_;
  std::string request_;
};

TEST(HybridVsock, ConnectsAndLeavesTheStreamBytesAfterOk) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/v.sock";
  {
    FakeVsockListener vmm(path, "OK 1073741824\nHELLO");
    auto stream = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_TRUE(stream) << stream.error().message;
    char buf[5];
    ASSERT_EQ(recv(stream->Get(), buf, sizeof buf, MSG_WAITALL), 5);
    EXPECT_EQ(std::string(buf, 5), "HELLO");
    ASSERT_EQ(write(stream->Get(), "x", 1), 1);
    EXPECT_EQ(vmm.request(), "CONNECT 1024");
  }
  RemoveTree(dir);
}

TEST(HybridVsock, NotYetListeningIsRetryableAndGarbageIsNot) {
  std::string dir = MakeTempDir();
  std::string path = dir + "/v.sock";
  auto missing = ConnectHybridVsock(path, 1024, 500ms);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  {
    FakeVsockListener vmm(path, "");  // the VMM closes: nothing listens in the guest
    auto closed = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_FALSE(closed);
    EXPECT_EQ(closed.error().code, ErrorCode::kNotFound);
  }
  {
    FakeVsockListener vmm(path, "NOPE\n");
    auto garbage = ConnectHybridVsock(path, 1024, 2000ms);
    ASSERT_FALSE(garbage);
    EXPECT_EQ(garbage.error().code, ErrorCode::kProtocol);
    EXPECT_THAT(garbage.error().message, HasSubstr("NOPE"));
  }
  {
    FakeVsockListener vmm(path, "", /*hang=*/true);
    auto silent = ConnectHybridVsock(path, 1024, 100ms);
    ASSERT_FALSE(silent);
    EXPECT_EQ(silent.error().code, ErrorCode::kTimeout);
  }
  RemoveTree(dir);
}

// The real tartarus-vmm takes the config file as written (relative vsock path included)
// and binds the socket in its working directory. The test guest does not drive vsock, so
// a CONNECT gets no OK: retryable, as while a Linux guest still boots. Runs where /dev/kvm
// runs the VMM's test guests (PVM included).
TEST(MicrovmLaunch, RealVmmAcceptsTheConfigFile) {
  if (!ReadKvmHostFacts().dev_kvm_usable) GTEST_SKIP() << "skipped: /dev/kvm does not open";
  std::string dir = MakeTempDir();
  WriteFile(dir + "/initramfs", "not really an initramfs");
  ASSERT_EQ(mkdir((dir + "/tree").c_str(), 0755), 0);
  WriteFile(dir + "/tree/hello", "hi\n");
  auto image = templates::EnsureExt4Image(dir + "/tree");
  if (!image && image.error().code == ErrorCode::kFailedPrecondition) {
    GTEST_SKIP() << "skipped: " << image.error().message;
  }
  ASSERT_TRUE(image) << image.error().message;
  SandboxSpec spec{.id = "vmm-config"};
  spec.limits.memory_bytes = 64ull << 20;
  auto launch = MakeMicrovmLaunch(
      spec, {.release = "test", .kernel = TARTARUS_IDLE_GUEST, .initramfs = dir + "/initramfs"},
      *image, "vsock.sock");
  ASSERT_TRUE(launch) << launch.error().message;
  WriteFile(dir + "/vm.json", MicrovmConfigJson(*launch));
  std::string log = dir + "/vmm.log";
  UniqueFd log_fd(open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  auto vmm = Spawn({.argv = {TARTARUS_VMM_PATH, "--config-file", dir + "/vm.json"},
                    .cwd = dir,
                    .fds = {{0, -1}, {1, log_fd.Get()}, {2, log_fd.Get()}}});
  ASSERT_TRUE(vmm) << vmm.error().message;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (access((dir + "/vsock.sock").c_str(), F_OK) != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    auto exited = vmm->TryWait();
    ASSERT_TRUE(exited);
    ASSERT_FALSE(exited->has_value()) << "tartarus-vmm exited: " << (*exited)->Describe();
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(access((dir + "/vsock.sock").c_str(), F_OK), 0) << "no vsock.sock in the VMM's cwd";
  auto stream = ConnectHybridVsock(dir + "/vsock.sock", kAgentVsockPort, 3000ms);
  ASSERT_FALSE(stream);
  EXPECT_NE(stream.error().code, ErrorCode::kProtocol) << stream.error().message;
  auto still = vmm->TryWait();
  ASSERT_TRUE(still);
  EXPECT_FALSE(still->has_value()) << "tartarus-vmm refused the config file";
  vmm->Signal(SIGKILL);
  (void)vmm->Wait();
  RemoveTree(dir);
}

// scripts/build-guest-initramfs.sh with this build's agent, into a temporary directory (the
// kernel comes from, or is fetched into, the state dir's cache). Skips when the kernel
// package cannot be had (no network to Debian's mirror, no apt-get).
TEST(MicrovmGuestInitramfs, BuildsAnArchiveTheAgentCanBootFrom) {
  for (const char* tool : {"cpio", "gzip", "objcopy", "apt-get", "dpkg-deb"}) {
    if (FindExecutable(tool).empty()) GTEST_SKIP() << "skipped: " << tool << " not installed";
  }
  std::string out = MakeTempDir();
  std::string script = std::string(TARTARUS_SOURCE_DIR) + "/scripts/build-guest-initramfs.sh";
  auto built =
      RunCommand({script, "--agent", TARTARUS_AGENT_PATH, "--out", out, StateDir() + "/vmm"},
                 std::chrono::minutes(10));
  ASSERT_TRUE(built) << built.error().message;
  if (!built->status.Success() &&
      built->err.find("fetching the guest kernel failed") != std::string::npos) {
    RemoveTree(out);
    GTEST_SKIP() << "skipped: the kernel package could not be fetched: " << built->err;
  }
  ASSERT_TRUE(built->status.Success()) << built->err;
  std::string archive = built->out.substr(0, built->out.find('\n'));
  ASSERT_EQ(archive.rfind(out + "/initramfs-", 0), 0u) << archive;
  std::string release = archive.substr(out.size() + std::string("/initramfs-").size());
  release = release.substr(0, release.size() - std::string(".cpio.gz").size());

  auto listing = RunCommand({"sh", "-c", "gzip -dc \"$0\" | cpio -t --quiet", archive});
  ASSERT_TRUE(listing && listing->status.Success()) << (listing ? listing->err : "");
  // Every entry between newlines, the first one included.
  listing->out.insert(0, "\n");
  std::string modules = "lib/modules/" + release + "/";
  for (std::string entry :
       {std::string("init"), std::string("proc"), std::string("sys"), std::string("dev"),
        std::string("lib/modules/tartarus.modules"), modules + "modules.dep",
        modules + "kernel/drivers/virtio/virtio_mmio.ko",
        modules + "kernel/drivers/block/virtio_blk.ko", modules + "kernel/fs/overlayfs/overlay.ko",
        modules + "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        modules + "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        modules + "kernel/net/vmw_vsock/vsock.ko", modules + "kernel/drivers/virtio/virtio.ko",
        modules + "kernel/drivers/virtio/virtio_ring.ko"}) {
    EXPECT_THAT(listing->out, HasSubstr("\n" + entry + "\n")) << entry;
  }

  // What the agent will do with it at boot: every listed module resolves, dependencies
  // first, and every path it loads is in the archive.
  auto extract = [&](const std::string& member) {
    auto text = RunCommand(
        {"sh", "-c", "gzip -dc \"$0\" | cpio -i --quiet --to-stdout \"$1\"", archive, member});
    EXPECT_TRUE(text && text->status.Success()) << member;
    return text ? text->out : "";
  };
  std::vector<std::string> wanted;
  std::istringstream names(extract("lib/modules/tartarus.modules"));
  for (std::string name; names >> name;) wanted.push_back(name);
  EXPECT_THAT(wanted, ::testing::Contains("vmw_vsock_virtio_transport"));
  auto order = guest::ModuleLoadOrder(extract(modules + "modules.dep"), wanted);
  ASSERT_TRUE(order) << order.error().message;
  auto position = [&](const std::string& name) {
    return std::find_if(order->begin(), order->end(),
                        [&](const std::string& path) {
                          return path.find("/" + name + ".ko") != std::string::npos;
                        }) -
           order->begin();
  };
  EXPECT_LT(position("vsock"), position("vmw_vsock_virtio_transport_common"));
  EXPECT_LT(position("vmw_vsock_virtio_transport_common"), position("vmw_vsock_virtio_transport"));
  EXPECT_LT(position("virtio_ring"), position("virtio_mmio"));
  for (const std::string& path : *order) {
    EXPECT_THAT(listing->out, HasSubstr("\n" + modules + path + "\n")) << path;
  }

  // Cached: the second run builds nothing.
  auto again =
      RunCommand({script, "--agent", TARTARUS_AGENT_PATH, "--out", out, StateDir() + "/vmm"},
                 std::chrono::minutes(10));
  ASSERT_TRUE(again && again->status.Success()) << (again ? again->err : "");
  EXPECT_THAT(again->err, HasSubstr("up to date"));
  EXPECT_EQ(again->out, built->out);
  RemoveTree(out);
}

// The whole path: kernel, initramfs, the template as ext4, vsock, the agent. Only where a
// Linux guest boots and the guest side has been fetched and built.
TEST(MicrovmEndToEnd, RunEchoesInAMicroVm) {
  if (std::string reason = MicrovmUnavailableReason(ReadKvmHostFacts()); !reason.empty()) {
    GTEST_SKIP() << "skipped: " << reason;
  }
  std::string state = StateDir();
  if (auto images = FindGuestImages(state + "/vmm"); !images) {
    GTEST_SKIP() << "skipped: " << images.error().message;
  }
  auto run = RunCommand({TARTARUS_CLI_PATH, "--state-dir", state, "run", "--runtime", "microvm",
                         "--rm", "--", "sh", "-c", "echo hi; echo w > /tmp/f && cat /tmp/f"},
                        std::chrono::minutes(10));
  ASSERT_TRUE(run) << run.error().message;
  EXPECT_EQ(run->status.code, 0) << run->err;
  EXPECT_EQ(run->out, "hi\nw\n") << run->err;
}

}  // namespace
}  // namespace tartarus::runtime

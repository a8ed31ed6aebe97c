// The microvm backend's guest side (Tartarus runtime), booted for real: Debian's cloud
// kernel with the initramfs scripts/build-guest-initramfs.sh builds, under QEMU's `microvm`
// machine in software emulation (TCG), since this host's KVM (PVM) cannot run a Linux guest.
// QEMU has no vsock device without /dev/vhost-vsock, so the agent serves on a virtio-console
// port (tartarus.agent_tty=/dev/hvc0) that QEMU exposes as a Unix socket; everything else is
// what tartarus-vmm gives the guest: virtio-mmio devices described by ACPI, the template's
// ext4 image as a read-only /dev/vda, the kernel command line the backend writes.
//
// What it proves that the data-level tests cannot: the modules load in the kernel, the root
// device appears, the overlay root is mounted and switched into, the hostname is set, the
// real agent runs commands in it over the guest protocol, and a shutdown powers the VM off.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "common/subprocess.h"
#include "protocol/client.h"
#include "runtime/microvm_backend.h"
#include "template/ext4_image.h"

namespace tartarus::runtime {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string MakeTempDir() {
  char dir[] = "/tmp/tartarus-qemu-guest-XXXXXX";
  return mkdtemp(dir) ? dir : "";
}

std::string ReadText(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

std::string Tail(const std::string& text, size_t bytes = 3000) {
  return text.size() <= bytes ? text : text.substr(text.size() - bytes);
}

std::string StateDir() {
  const char* env = std::getenv("TARTARUS_STATE_DIR");
  return env && *env ? env : "/var/lib/tartarus";
}

// Kills QEMU and removes the scratch directory however the test ends.
struct Scratch {
  std::string dir = MakeTempDir();
  Subprocess qemu;
  ~Scratch() {
    if (qemu.pid() > 0) {
      qemu.Signal(SIGKILL);
      (void)qemu.Wait();
    }
    (void)RunCommand({"rm", "-rf", dir});
  }
};

UniqueFd ConnectUnix(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  if (connect(fd.Get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return UniqueFd();
  }
  return fd;
}

TEST(MicrovmGuestUnderQemu, KernelInitramfsAndAgentRunACommandInTheOverlayRoot) {
  for (const char* tool :
       {"qemu-system-x86_64", "cpio", "gzip", "objcopy", "apt-get", "dpkg-deb", "mkfs.ext4"}) {
    if (FindExecutable(tool).empty() && access((std::string("/sbin/") + tool).c_str(), X_OK)) {
      GTEST_SKIP() << "skipped: " << tool << " not installed (scripts/install-deps.sh)";
    }
  }
  if (access("/bin/busybox", X_OK) != 0) GTEST_SKIP() << "skipped: no /bin/busybox";
  Scratch scratch;
  ASSERT_FALSE(scratch.dir.empty());
  const std::string& dir = scratch.dir;

  // The initramfs, as a user builds it (the kernel is fetched into the state dir if missing).
  const std::string script = std::string(TARTARUS_SOURCE_DIR) + "/scripts/build-guest-initramfs.sh";
  auto built =
      RunCommand({script, "--agent", TARTARUS_AGENT_PATH, "--out", dir, StateDir() + "/vmm"},
                 std::chrono::minutes(10));
  ASSERT_TRUE(built) << built.error().message;
  if (!built->status.Success() &&
      built->err.find("fetching the guest kernel failed") != std::string::npos) {
    GTEST_SKIP() << "skipped: the kernel package could not be fetched: " << built->err;
  }
  ASSERT_TRUE(built->status.Success()) << built->err;
  const std::string initramfs = built->out.substr(0, built->out.find('\n'));
  const std::string prefix = dir + "/initramfs-";
  const std::string release = initramfs.substr(
      prefix.size(), initramfs.size() - prefix.size() - std::string(".cpio.gz").size());
  const std::string kernel =
      StateDir() + "/vmm/kernel/linux-image-" + release + "/boot/vmlinuz-" + release;
  ASSERT_EQ(access(kernel.c_str(), R_OK), 0) << kernel;

  // A template root with one static program, as its ext4 image.
  const std::string tree = dir + "/tree";
  for (const char* sub : {"", "/bin", "/proc", "/sys", "/dev", "/tmp", "/etc"}) {
    ASSERT_EQ(mkdir((tree + sub).c_str(), 0755), 0) << sub;
  }
  ASSERT_TRUE(RunCommand({"cp", "/bin/busybox", tree + "/bin/busybox"})->status.Success());
  std::ofstream(tree + "/etc/marker") << "from the template\n";
  auto image = templates::EnsureExt4Image(tree);
  ASSERT_TRUE(image) << image.error().message;

  // The command line the backend writes, with the terminal instead of vsock.
  MicrovmLaunch launch;
  launch.hostname = "qemu-guest";
  launch.disk_bytes = 64ull << 20;
  const std::string boot_args = MicrovmBootArgs(launch);
  const std::string console = dir + "/console.log";
  const std::string agent_socket = dir + "/agent.sock";
  auto qemu = Spawn(
      {.argv = {"qemu-system-x86_64", "-M",
                "microvm,acpi=on,x-option-roms=off,rtc=on,pit=on,pic=on", "-cpu", "max", "-m",
                "512", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", "file:" + console, "-kernel", kernel, "-initrd", initramfs, "-append",
                // TCG has no reliable TSC calibration source: give the kernel its frequency.
                "tsc_early_khz=2000000 no_timer_check tartarus.agent_tty=/dev/hvc0 " + boot_args,
                "-drive", "id=root,file=" + *image + ",format=raw,if=none,readonly=on", "-device",
                "virtio-blk-device,drive=root", "-device", "virtio-serial-device", "-chardev",
                "socket,id=agent,path=" + agent_socket + ",server=on,wait=off", "-device",
                "virtconsole,chardev=agent"},
       .fds = {{0, -1}, {1, -1}, {2, -1}}});
  ASSERT_TRUE(qemu) << qemu.error().message;
  scratch.qemu = std::move(*qemu);

  // Boot: the agent says where it serves (on the kernel console) once the root is switched.
  const auto deadline = std::chrono::steady_clock::now() + 240s;
  std::string log;
  while ((log = ReadText(console)).find("tartarus-agent: serving on /dev/hvc0") ==
         std::string::npos) {
    ASSERT_EQ(log.find("boot failed"), std::string::npos) << Tail(log);
    auto exited = scratch.qemu.TryWait();
    ASSERT_TRUE(exited && !exited->has_value()) << "QEMU exited early:\n" << Tail(log);
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no agent after 240 s:\n" << Tail(log);
    std::this_thread::sleep_for(100ms);
  }
  UniqueFd stream = ConnectUnix(agent_socket);
  ASSERT_TRUE(stream.Valid()) << "cannot connect to " << agent_socket;
  UniqueFd second(fcntl(stream.Get(), F_DUPFD_CLOEXEC, 3));
  auto client = protocol::AgentClient::Connect(std::move(stream), std::move(second),
                                               {.handshake_timeout = 60s});
  ASSERT_TRUE(client) << client.error().message << "\n" << Tail(ReadText(console));

  std::string out;
  protocol::ExecStart start;
  start.argv = {"/bin/busybox", "sh", "-c",
                "B=/bin/busybox; echo kernel $($B uname -r); echo host $($B hostname); "
                "$B grep ' / ' /proc/mounts; $B cat /etc/marker; echo written > /etc/marker; "
                "$B cat /etc/marker; exit 7"};
  auto exec = (*client)->StartExec(
      start, [&](protocol::Stream, std::string_view data) { out.append(data); });
  ASSERT_TRUE(exec) << exec.error().message;
  auto exit = (*exec)->WaitFor(120s);
  ASSERT_TRUE(exit) << exit.error().message;
  EXPECT_EQ(exit->exit_code, 7);
  EXPECT_EQ(exit->signal, 0);
  EXPECT_THAT(out, HasSubstr("kernel " + release + "\n"));
  EXPECT_THAT(out, HasSubstr("host qemu-guest\n"));
  EXPECT_THAT(out, HasSubstr("overlay / overlay"));  // the writable layer over the image
  EXPECT_THAT(out, HasSubstr("from the template\nwritten\n"));

  // Shutdown ends the agent; PID 1 reboots, which QEMU (-no-reboot) takes as power-off.
  EXPECT_TRUE((*client)->Shutdown());
  client->reset();
  auto status = scratch.qemu.WaitFor(60s);
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_TRUE(status->Success()) << status->Describe() << "\n" << Tail(ReadText(console));
  scratch.qemu = Subprocess();
}

}  // namespace
}  // namespace tartarus::runtime

// tartarus-vmm (Tartarus's KVM microVM monitor): the tartarus-vmm binary's Firecracker API,
// spoken as real HTTP over its Unix socket, and --config-file boots.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "vmm/kvm.h"
#include "vmm/vmm_process_test_util.h"

namespace tartarus::vmm {
namespace {

using ::testing::HasSubstr;

using test_util::Guest;
using test_util::ReadFile;
using test_util::VmmProcess;

// One HTTP exchange on a connection: the raw response (status line, headers, body).
std::string Exchange(int fd, const std::string& request) {
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) return "send failed";
  std::string response;
  char buffer[4096];
  // Read until the headers and the announced body are in (or the peer closes).
  while (true) {
    size_t head_end = response.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      size_t length = 0;
      size_t at = response.find("Content-Length: ");
      if (at != std::string::npos && at < head_end) length = std::stoul(response.substr(at + 16));
      if (response.size() >= head_end + 4 + length) return response;
    }
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) return response;
    response.append(buffer, static_cast<size_t>(n));
  }
}

std::string Request(const std::string& method, const std::string& path, const std::string& body) {
  std::string text = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\n";
  if (!body.empty()) {
    text +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  return text + "\r\n" + body;
}

TEST(VmmApiBinaryTest, AnswersFirecrackerRequestsOverItsUnixSocket) {
  VmmProcess vmm({"--api-sock", "@SOCK", "--id", "test-vm"});
  int fd = vmm.Connect();
  ASSERT_GE(fd, 0) << vmm.Stderr();
  std::string root = Exchange(fd, Request("GET", "/", ""));
  EXPECT_THAT(root, HasSubstr("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(root, HasSubstr("\"id\":\"test-vm\""));
  EXPECT_THAT(root, HasSubstr("\"state\":\"Not started\""));
  // Keep-alive: the same connection serves the next requests.
  std::string put =
      Exchange(fd, Request("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 64})"));
  EXPECT_THAT(put, HasSubstr("HTTP/1.1 204 No Content\r\n"));
  EXPECT_THAT(Exchange(fd, Request("GET", "/machine-config", "")),
              HasSubstr("\"mem_size_mib\":64"));
  std::string bad =
      Exchange(fd, Request("PUT", "/machine-config", R"({"vcpu_count": 1, "mem": 64})"));
  EXPECT_THAT(bad, HasSubstr("HTTP/1.1 400 Bad Request\r\n"));
  EXPECT_THAT(bad, HasSubstr("{\"fault_message\":\"machine-config: unknown field `mem`"));
  EXPECT_THAT(Exchange(fd, Request("GET", "/nope", "")), HasSubstr("Invalid request method"));
  ::close(fd);

  // A malformed request gets its status and the connection is closed.
  fd = vmm.Connect();
  std::string chunked =
      Exchange(fd, "PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_THAT(chunked, HasSubstr("HTTP/1.1 501 Not Implemented\r\n"));
  EXPECT_THAT(chunked, HasSubstr("Connection: close"));
  char byte;
  EXPECT_EQ(::recv(fd, &byte, 1, 0), 0);  // closed by the server
  ::close(fd);
  EXPECT_EQ(vmm.Wait(std::chrono::milliseconds(50)), -1);  // still serving
}

TEST(VmmApiBinaryTest, SocketPathThatExistsIsRefused) {
  VmmProcess first({"--api-sock", "@SOCK"});
  ASSERT_GE(first.Connect(), 0);
  VmmProcess second({"--api-sock", first.socket()});
  EXPECT_EQ(second.Wait(), 1);
  EXPECT_THAT(second.Stderr(), HasSubstr("bind API socket"));
}

TEST(VmmApiBinaryTest, BootsTheVirtioGuestThroughTheApiAndExitsWithIt) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  VmmProcess vmm({"--api-sock", "@SOCK"});
  std::ofstream(vmm.dir() + "/disk.img") << std::string(8192, 'd');
  std::ofstream(vmm.dir() + "/metrics").close();
  int fd = vmm.Connect();
  ASSERT_GE(fd, 0);
  auto put = [&](const std::string& path, const std::string& body) {
    return Exchange(fd, Request("PUT", path, body));
  };
  EXPECT_THAT(put("/boot-source", R"({"kernel_image_path": ")" + Guest("virtio") +
                                      R"(", "boot_args": "console=ttyS0"})"),
              HasSubstr(" 204 "));
  EXPECT_THAT(put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 32})"),
              HasSubstr(" 204 "));
  EXPECT_THAT(put("/drives/rootfs", R"({"drive_id": "rootfs", "path_on_host": ")" + vmm.dir() +
                                        R"(/disk.img", "is_root_device": true,
                                        "is_read_only": false})"),
              HasSubstr(" 204 "));
  EXPECT_THAT(put("/entropy", "{}"), HasSubstr(" 204 "));
  EXPECT_THAT(put("/metrics", R"({"metrics_path": ")" + vmm.dir() + R"(/metrics"})"),
              HasSubstr(" 204 "));
  EXPECT_THAT(put("/actions", R"({"action_type": "InstanceStart"})"), HasSubstr(" 204 "));
  ::close(fd);
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("blk: read sector 1 status=00"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("rng: len=10"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("virtio guest done\n"));
  EXPECT_THAT(vmm.Stderr(), HasSubstr("guest stopped: halted"));
  EXPECT_THAT(ReadFile(vmm.dir() + "/metrics"), HasSubstr("\"stop_reason\":\"halted\""));
  EXPECT_EQ(ReadFile(vmm.dir() + "/disk.img").substr(512, 8), "TARTARUS");
  EXPECT_FALSE(std::filesystem::exists(vmm.socket()));  // removed on exit
}

TEST(VmmApiBinaryTest, StateRulesAfterInstanceStartAndPauseResume) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  VmmProcess vmm({"--api-sock", "@SOCK", "--kernel", Guest("idle"), "--mem-mib", "32"});
  int fd = vmm.Connect();
  ASSERT_GE(fd, 0);
  auto send = [&](const std::string& method, const std::string& path, const std::string& body) {
    return Exchange(fd, Request(method, path, body));
  };
  EXPECT_THAT(send("PATCH", "/vm", R"({"state": "Paused"})"),
              HasSubstr("not supported before starting the microVM"));
  EXPECT_THAT(send("PUT", "/actions", R"({"action_type": "InstanceStart"})"), HasSubstr(" 204 "));
  EXPECT_THAT(send("GET", "/", ""), HasSubstr("\"state\":\"Running\""));
  const std::string after = "not supported after starting the microVM";
  EXPECT_THAT(send("PUT", "/actions", R"({"action_type": "InstanceStart"})"), HasSubstr(after));
  EXPECT_THAT(send("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 64})"),
              HasSubstr(after));
  EXPECT_THAT(send("PUT", "/boot-source", R"({"kernel_image_path": ")" + Guest("idle") + "\"}"),
              HasSubstr(after));
  EXPECT_THAT(send("PUT", "/entropy", "{}"), HasSubstr(after));
  EXPECT_THAT(send("PUT", "/vsock", R"({"guest_cid": 3, "uds_path": "/tmp/x"})"), HasSubstr(after));
  EXPECT_THAT(send("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m"})"),
              HasSubstr(after));
  EXPECT_THAT(send("PUT", "/snapshot/create", R"({"snapshot_path": "/s", "mem_file_path": "/m"})"),
              HasSubstr("must be paused first"));
  EXPECT_THAT(send("PATCH", "/vm", R"({"state": "Paused"})"), HasSubstr(" 204 "));
  EXPECT_THAT(send("GET", "/", ""), HasSubstr("\"state\":\"Paused\""));
  // The snapshot code runs (here it cannot create its files, and says which).
  EXPECT_THAT(send("PUT", "/snapshot/create",
                   R"({"snapshot_path": ")" + vmm.dir() + R"(/none/s", "mem_file_path": ")" +
                       vmm.dir() + R"(/none/m"})"),
              HasSubstr("snapshot/create: creating memory file"));
  EXPECT_THAT(send("PATCH", "/vm", R"({"state": "Resumed"})"), HasSubstr(" 204 "));
  EXPECT_THAT(send("GET", "/", ""), HasSubstr("\"state\":\"Running\""));
  // The idle guest never reads its keyboard: four Ctrl+Alt+Dels fill the i8042's buffer.
  for (int i = 0; i < 4; ++i) {
    EXPECT_THAT(send("PUT", "/actions", R"({"action_type": "SendCtrlAltDel"})"),
                HasSubstr(" 204 "));
  }
  EXPECT_THAT(send("PUT", "/actions", R"({"action_type": "SendCtrlAltDel"})"),
              HasSubstr("keyboard buffer is full"));
  ::close(fd);
  EXPECT_EQ(vmm.Wait(std::chrono::milliseconds(100)), -1);  // the guest keeps running
  EXPECT_THAT(vmm.Stdout(), HasSubstr("idle guest running\n"));
}

// Firecracker's SendCtrlAltDel: the keys reach a guest that reads them as Linux does (the
// control byte polled, then one scancode per keyboard interrupt through the PIC).
TEST(VmmApiBinaryTest, SendCtrlAltDelReachesTheGuestsKeyboardInterrupt) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  VmmProcess vmm({"--api-sock", "@SOCK", "--kernel", Guest("keyboard"), "--mem-mib", "32"});
  EXPECT_THAT(vmm.Send("PUT", "/actions", R"({"action_type": "InstanceStart"})"),
              HasSubstr(" 204 "));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (vmm.Stdout().find("keyboard ready") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_THAT(vmm.Send("PUT", "/actions", R"({"action_type": "SendCtrlAltDel"})"),
              HasSubstr(" 204 "));
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("keyboard ready ctr=05\n"));
  EXPECT_THAT(vmm.Stdout(), HasSubstr("keys: 14 11 e0 71 \n"));
  EXPECT_THAT(vmm.Stderr(), HasSubstr("guest stopped: halted"));
}

TEST(VmmApiBinaryTest, ConfigFileBootsWithoutApiCalls) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  char dir[] = "/tmp/vmm-config-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string disk = std::string(dir) + "/disk.img";
  const std::string config = std::string(dir) + "/vm.json";
  std::ofstream(disk) << std::string(8192, 'c');
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("virtio")
                        << R"("}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
      "drives": [{"drive_id": "rootfs", "path_on_host": ")"
                        << disk << R"(", "is_root_device": true, "lethe": true}]})";
  VmmProcess vmm({"--config-file", config, "--lethe-dir", dir});
  EXPECT_EQ(vmm.Wait(), 0) << vmm.Stderr();
  EXPECT_THAT(vmm.Stdout(), HasSubstr("blk: read sector 1 status=00 len=0000000000000201 "
                                      "data=5355524154524154\n"));
  EXPECT_EQ(ReadFile(disk), std::string(8192, 'c'));  // Lethe: the base is untouched

  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("virtio")
                        << R"("}, "drives": [{"drive_id": "rootfs"}]})";
  VmmProcess bad({"--config-file", config});
  EXPECT_EQ(bad.Wait(), 1);
  EXPECT_THAT(bad.Stderr(), HasSubstr("config file: drive: missing field `path_on_host`"));
  std::filesystem::remove_all(dir);
}

// The vsock device is wired: its Unix socket takes host connections while the VM runs. The
// idle guest has no vsock driver, so a CONNECT is never answered with OK: the device resets
// it once its request times out (Firecracker's behaviour for a guest that does not listen).
TEST(VmmApiBinaryTest, VsockSocketTakesConnectionsWhileTheVmRuns) {
  if (!KvmSystem::Open()) GTEST_SKIP() << "skipped: /dev/kvm not available";
  char dir[] = "/tmp/vmm-vsock-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string config = std::string(dir) + "/vm.json";
  const std::string uds = std::string(dir) + "/v.sock";
  std::ofstream(config) << R"({"boot-source": {"kernel_image_path": ")" << Guest("idle")
                        << R"("}, "vsock": {"guest_cid": 3, "uds_path": ")" << uds << R"("}})";
  VmmProcess vmm({"--config-file", config});
  int fd = -1;
  for (int attempt = 0; attempt < 500 && fd < 0; ++attempt) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, uds.c_str(), sizeof(address.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ::close(fd);
      fd = -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ASSERT_GE(fd, 0) << "no vsock socket at " << uds << ": " << vmm.Stderr();
  const std::string line = "CONNECT 52\n";
  ASSERT_EQ(::write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  pollfd pfd{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1) << "the connection was neither answered nor reset";
  char buf[64];
  EXPECT_EQ(::read(fd, buf, sizeof buf), 0) << "expected a reset, not an answer";
  ::close(fd);
  EXPECT_EQ(vmm.Wait(std::chrono::milliseconds(100)), -1) << "the VM should still run";
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tartarus::vmm

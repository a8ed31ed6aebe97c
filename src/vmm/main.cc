// tartarus-vmm (Tartarus's KVM microVM monitor): the command-line front end.
// Boots straight from flags (--kernel ...), from Firecracker's JSON (--config-file), or waits
// for the Firecracker API on a Unix socket (--api-sock); the exit status says how the guest
// stopped. The API thread serves requests while this thread waits for the VM to stop.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "common/unique_fd.h"
#include "vmm/api/api.h"
#include "vmm/api/server.h"
#include "vmm/vmm.h"

namespace {

constexpr int kExitVmmError = 1;
constexpr int kExitGuestCrashed = 2;
constexpr int kExitUsage = 64;

}  // namespace

int main(int argc, char** argv) {
  using namespace tartarus;
  vmm::VmmConfig config;
  std::string serial_out = "-";
  std::string api_sock;
  std::string config_file;
  std::string instance_id = "anonymous-instance";
  unsigned timeout_ms = 0;
  CLI::App app{
      "tartarus-vmm: Tartarus's KVM microVM monitor.\n"
      "Boots a Linux kernel: an ELF vmlinux (PVH entry when it has the note, else its 64-bit\n"
      "entry) or a bzImage (64-bit boot protocol), with an optional initrd and ACPI tables,\n"
      "an 8250 serial port on 0x3f8, an i8042 for reboot, Firecracker's boot-complete port\n"
      "(123 to port 0x3f0) and virtio-mmio devices (virtio-blk drives, virtio-rng, virtio-vsock\n"
      "with Firecracker's hybrid vsock), and runs it until the guest halts with interrupts\n"
      "off, reboots or shuts down.\n"
      "Configure it with --kernel and the flags below, with Firecracker's JSON\n"
      "(--config-file), or through the Firecracker API on a Unix socket (--api-sock): PUT\n"
      "/boot-source, /machine-config, /drives/{id}, /vsock, /entropy, /metrics, then /actions\n"
      "InstanceStart; PATCH /vm Paused|Resumed; PUT /snapshot/create (paused) and, in a fresh\n"
      "tartarus-vmm, PUT /snapshot/load (docs/vmm.md, \"The Firecracker API\").\n"
      "Exit status: 0 on a clean guest stop, 1 on a VMM error, a bad --config-file or a\n"
      "timeout, 2 when the guest crashed (triple fault), 64 on bad flags.",
      "tartarus-vmm"};
  app.add_option("--kernel", config.kernel_path, "kernel: ELF64 vmlinux (PVH or 64-bit) or bzImage")
      ->check(CLI::ExistingFile);
  app.add_option("--initrd", config.initrd_path, "initial ramdisk, loaded high in guest RAM")
      ->check(CLI::ExistingFile);
  app.add_option("--mem-mib", config.memory_mib, "guest memory in MiB")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--vcpus", config.vcpus, "number of vCPUs")
      ->capture_default_str()
      ->check(CLI::Range(1, 255));
  app.add_option("--cmdline", config.cmdline, "kernel command line")->capture_default_str();
  app.add_option("--serial-out", serial_out, "file for the guest's serial output, - for stdout")
      ->capture_default_str();
  app.add_option("--timeout-ms", timeout_ms, "stop with an error after this long (0: never)")
      ->capture_default_str();
  app.add_option("--api-sock", api_sock,
                 "serve the Firecracker API on this Unix socket (must not exist yet)");
  app.add_option("--config-file", config_file,
                 "boot from Firecracker's JSON configuration (boot-source, machine-config, "
                 "drives, vsock, entropy, metrics) without API calls")
      ->check(CLI::ExistingFile);
  app.add_option("--id", instance_id, "instance id reported by GET /")->capture_default_str();
  app.add_option("--lethe-dir", config.lethe_dir,
                 "directory for the unnamed copy-on-write overlays of \"lethe\" drives")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    int code = app.exit(error);
    return code == 0 ? 0 : kExitUsage;
  }
  if (config.kernel_path.empty() && api_sock.empty() && config_file.empty()) {
    std::fprintf(stderr, "tartarus-vmm: need --kernel, --config-file or --api-sock (see --help)\n");
    return kExitUsage;
  }

  UniqueFd serial_file;
  if (serial_out != "-") {
    serial_file.Reset(::open(serial_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!serial_file) {
      std::fprintf(stderr, "tartarus-vmm: cannot open --serial-out %s: %s\n", serial_out.c_str(),
                   std::strerror(errno));
      return kExitUsage;
    }
    config.serial_fd = serial_file.Get();
  }
  config.timeout = std::chrono::milliseconds(timeout_ms);

  vmm::api::VmController controller(config, {.instance_id = instance_id});
  if (!config_file.empty()) {
    std::ifstream file(config_file);
    std::stringstream text;
    text << file.rdbuf();
    auto applied = controller.ApplyConfigFile(text.str());
    if (!applied) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", applied.error().message.c_str());
      return kExitVmmError;
    }
  }
  // Without an API socket nothing else can start the VM: start it now.
  if (api_sock.empty() || !config_file.empty()) {
    auto started = controller.Start();
    if (!started) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", started.error().message.c_str());
      return kExitVmmError;
    }
  }

  std::unique_ptr<vmm::api::ApiServer> server;
  std::thread api_thread;
  if (!api_sock.empty()) {
    auto listening =
        vmm::api::ApiServer::Listen(api_sock, [&controller](const vmm::api::HttpRequest& request) {
          return controller.Handle(request.method, request.path, request.body);
        });
    if (!listening) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", listening.error().message.c_str());
      controller.Stop();
      return kExitVmmError;
    }
    server = std::move(*listening);
    api_thread = std::thread([&server] {
      if (auto served = server->Serve(); !served) {
        std::fprintf(stderr, "tartarus-vmm: API server: %s\n", served.error().message.c_str());
      }
    });
  }

  auto report = controller.WaitForStop();
  (void)controller.FlushMetrics();
  if (server) {
    server->Shutdown();
    api_thread.join();
  }
  if (!report) {
    std::fprintf(stderr, "tartarus-vmm: %s\n", report.error().message.c_str());
    return kExitVmmError;
  }
  if (report->boot_complete) {
    std::fprintf(stderr, "tartarus-vmm: guest boot complete %lld us after VMM start\n",
                 static_cast<long long>(report->boot_complete->count()));
  }
  std::fprintf(stderr, "tartarus-vmm: guest stopped: %s (%s)\n",
               std::string(vmm::StopReasonName(report->reason)).c_str(), report->detail.c_str());
  if (report->Clean()) return 0;
  return report->reason == vmm::StopReason::kTripleFault ? kExitGuestCrashed : kExitVmmError;
}

// tartarus-vmm (Tartarus's KVM microVM monitor): the command-line front end.
// Boots straight from flags (--kernel ...), from Firecracker's JSON (--config-file), or waits
// for the Firecracker API on a Unix socket (--api-sock); the exit status says how the guest
// stopped. The API thread only moves bytes: each request is handed to this (the VMM) thread,
// which applies it and waits for the VM to stop. With --jail the VMM runs in a jail
// (jailer.h); unless --no-seccomp every thread kind runs under its own allowlist (seccomp.h).
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/unique_fd.h"
#include "vmm/api/api.h"
#include "vmm/api/server.h"
#include "vmm/jailer.h"
#include "vmm/seccomp.h"
#include "vmm/vmm.h"

namespace {

constexpr int kExitVmmError = 1;
constexpr int kExitGuestCrashed = 2;
constexpr int kExitUsage = 64;

// API requests cross from the API thread to the VMM thread here, so the API thread's
// seccomp list stays a socket server's: building a VM, snapshots and file checks happen on
// the VMM thread.
class RequestQueue {
 public:
  using Task = std::function<void()>;
  // API thread: runs task on the VMM thread and waits for it; false once the VM has stopped
  // and the VMM thread no longer serves.
  bool RunOnVmmThread(Task task) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] { return pending_ == nullptr || stopped_; });
    if (stopped_ && serving_ended_) return false;
    pending_ = std::move(task);
    done_ = false;
    changed_.notify_all();
    changed_.wait(lock, [this] { return done_; });
    return true;
  }
  // VMM thread: serves requests until the VM has stopped.
  void Serve() {
    std::unique_lock lock(mutex_);
    while (true) {
      changed_.wait(lock, [this] { return pending_ != nullptr || stopped_; });
      if (pending_) {
        Task task = std::move(pending_);
        pending_ = nullptr;
        lock.unlock();
        task();
        lock.lock();
        done_ = true;
        changed_.notify_all();
        continue;
      }
      serving_ended_ = true;
      return;
    }
  }
  void MarkStopped() {
    std::lock_guard guard(mutex_);
    stopped_ = true;
    changed_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  Task pending_;
  bool done_ = false;
  bool stopped_ = false;
  bool serving_ended_ = false;
};

// The host files a config file names (kernel, initrd, drives, metrics) and the directory of
// its vsock socket, for the jail. Anything malformed is left to ApplyConfigFile to report.
void AddConfigFilePaths(const std::string& text, tartarus::vmm::JailContents& contents) {
  using tartarus::vmm::AbsolutePath;
  nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (!json.is_object()) return;
  const auto string_at = [](const nlohmann::json& object, const char* key) -> std::string {
    if (!object.is_object() || !object.contains(key) || !object[key].is_string()) return "";
    return object[key].get<std::string>();
  };
  const auto add = [](std::vector<std::string>& list, const std::string& path) {
    if (!path.empty() && path.front() == '/') list.push_back(AbsolutePath(path));
  };
  if (json.contains("boot-source")) {
    add(contents.read_only_files, string_at(json["boot-source"], "kernel_image_path"));
    add(contents.read_only_files, string_at(json["boot-source"], "initrd_path"));
  }
  if (json.contains("drives") && json["drives"].is_array()) {
    for (const auto& drive : json["drives"]) add(contents.files, string_at(drive, "path_on_host"));
  }
  if (json.contains("metrics")) add(contents.files, string_at(json["metrics"], "metrics_path"));
  if (json.contains("vsock")) {
    std::string uds = string_at(json["vsock"], "uds_path");
    if (!uds.empty() && uds.front() == '/') {
      add(contents.dirs, std::filesystem::path(uds).parent_path().string());
    }
  }
}

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
  bool no_seccomp = false;
  app.add_flag("--no-seccomp", no_seccomp,
               "run without the per-thread seccomp filters (for debugging only)");
  vmm::JailOptions jail;
  std::vector<std::string> jail_files;
  auto* jail_option = app.add_option("--jail", jail.base_dir,
                                     "run jailed: new namespaces, root DIR/<id>/root, --uid/--gid");
  app.add_option("--uid", jail.uid, "jailed VMM's uid (with --jail)")->needs(jail_option);
  app.add_option("--gid", jail.gid, "jailed VMM's gid (with --jail)")->needs(jail_option);
  app.add_option("--cgroup-parent", jail.cgroup_parent,
                 "cgroup parent of the VM's leaf, relative to each hierarchy's mount (v2, and v1 "
                 "for controllers kept there)")
      ->capture_default_str()
      ->needs(jail_option);
  app.add_option("--cpu-max", jail.cpu_max, "cgroup cpu.max: \"QUOTA PERIOD\"")->needs(jail_option);
  app.add_option("--memory-max", jail.memory_max, "cgroup memory.max in bytes")->needs(jail_option);
  app.add_option("--pids-max", jail.pids_max, "cgroup pids.max")->needs(jail_option);
  app.add_flag("--keep-jail", jail.keep_jail, "leave DIR/<id> in place after the VM ends")
      ->needs(jail_option);
  app.add_option("--jail-file", jail_files,
                 "also bind this host file or directory into the jail at its own path (for "
                 "drives, kernels and sockets named later through the API)")
      ->needs(jail_option);
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

  if (!jail.base_dir.empty()) {
    if (app.count("--uid") == 0 || app.count("--gid") == 0) {
      std::fprintf(stderr, "tartarus-vmm: --jail needs --uid and --gid\n");
      return kExitUsage;
    }
    jail.id = instance_id;
    if (auto valid = vmm::ValidateJailOptions(jail); !valid) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", valid.error().message.c_str());
      return kExitUsage;
    }
    // Paths the VMM will open, made absolute: inside the jail they sit at the same place.
    vmm::JailContents contents;
    for (std::string* path : {&config.kernel_path, &config.initrd_path, &config_file}) {
      *path = vmm::AbsolutePath(*path);
      if (!path->empty()) contents.read_only_files.push_back(*path);
    }
    if (!config_file.empty()) {
      std::ifstream file(config_file);
      std::stringstream text;
      text << file.rdbuf();
      AddConfigFilePaths(text.str(), contents);
    }
    if (serial_out != "-") {
      serial_out = vmm::AbsolutePath(serial_out);
      UniqueFd created(::open(serial_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
      if (!created || ::fchown(created.Get(), jail.uid, jail.gid) != 0) {
        std::fprintf(stderr, "tartarus-vmm: cannot create --serial-out %s: %s\n",
                     serial_out.c_str(), std::strerror(errno));
        return kExitUsage;
      }
      contents.files.push_back(serial_out);
    }
    // Lethe overlays go to the jail's own scratch directory unless --lethe-dir names one.
    if (app.count("--lethe-dir") == 0) {
      config.lethe_dir = vmm::JailScratchDir(jail);
    } else {
      config.lethe_dir = vmm::AbsolutePath(config.lethe_dir);
      contents.dirs.push_back(config.lethe_dir);
    }
    if (!api_sock.empty()) {
      api_sock = vmm::AbsolutePath(api_sock);
      contents.dirs.push_back(std::filesystem::path(api_sock).parent_path().string());
    }
    for (const std::string& extra : jail_files) {
      std::error_code error;
      const std::string path = vmm::AbsolutePath(extra);
      if (std::filesystem::is_directory(path, error)) {
        contents.dirs.push_back(path);
      } else if (std::filesystem::exists(path, error)) {
        contents.files.push_back(path);
      } else {
        std::fprintf(stderr, "tartarus-vmm: --jail-file %s does not exist\n", extra.c_str());
        return kExitUsage;
      }
    }
    std::sort(contents.dirs.begin(), contents.dirs.end());  // parents before children
    contents.dirs.erase(std::unique(contents.dirs.begin(), contents.dirs.end()),
                        contents.dirs.end());
    auto jailed = vmm::RunJailed(jail, contents);
    if (!jailed) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", jailed.error().message.c_str());
      return kExitVmmError;
    }
    if (*jailed) vmm::ExitLikeChild(**jailed);  // the parent: the VM has ended
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

  if (!no_seccomp) {
    config.on_vcpu_thread = []() -> Status {
      TRY(vmm::InstallThreadFilter(vmm::ThreadKind::kVcpu));
      vmm::ViolateForTestIfAsked(vmm::ThreadKind::kVcpu);
      return Ok();
    };
  }
  vmm::api::VmController controller(config, {.instance_id = instance_id});
  RequestQueue requests;
  // The API socket exists before the filters go on: the VMM thread's list has no bind.
  std::unique_ptr<vmm::api::ApiServer> server;
  if (!api_sock.empty()) {
    auto listening = vmm::api::ApiServer::Listen(
        api_sock, [&controller, &requests](const vmm::api::HttpRequest& request) {
          vmm::api::HttpResponse response{
              .status = 400, .body = R"({"fault_message": "The microVM has stopped."})"};
          requests.RunOnVmmThread(
              [&] { response = controller.Handle(request.method, request.path, request.body); });
          return response;
        });
    if (!listening) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", listening.error().message.c_str());
      return kExitVmmError;
    }
    server = std::move(*listening);
  }
  // Setup is done: from here on this thread and every thread it starts (monitor, vsock,
  // vCPUs, API) is limited to the VMM list; vCPU and API threads narrow it further.
  if (!no_seccomp) {
    if (auto filtered = vmm::InstallThreadFilter(vmm::ThreadKind::kVmm); !filtered) {
      std::fprintf(stderr, "tartarus-vmm: %s\n", filtered.error().message.c_str());
      return kExitVmmError;
    }
    vmm::ViolateForTestIfAsked(vmm::ThreadKind::kVmm);
  }
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

  std::thread api_thread;
  if (server) {
    api_thread = std::thread([&server, no_seccomp] {
      if (!no_seccomp) {
        if (auto filtered = vmm::InstallThreadFilter(vmm::ThreadKind::kApi); !filtered) {
          std::fprintf(stderr, "tartarus-vmm: %s\n", filtered.error().message.c_str());
          return;
        }
        vmm::ViolateForTestIfAsked(vmm::ThreadKind::kApi);
      }
      if (auto served = server->Serve(); !served) {
        std::fprintf(stderr, "tartarus-vmm: API server: %s\n", served.error().message.c_str());
      }
    });
  }
  // Serve API requests here until the VM has been started and has stopped.
  std::thread stop_waiter([&controller, &requests] {
    (void)controller.WaitForStop();
    requests.MarkStopped();
  });
  requests.Serve();
  stop_waiter.join();

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

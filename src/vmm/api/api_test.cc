// tartarus-vmm (Tartarus's KVM microVM monitor): the Firecracker API handlers, called
// directly: every validation error, the state rules, the snapshot seam, --config-file.
#include "vmm/api/api.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace tartarus::vmm::api {
namespace {

using ::testing::HasSubstr;

const std::string kGuestDir = TARTARUS_VMM_GUEST_DIR;

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/vmm-api-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    disk_ = dir_ + "/disk.img";
    std::ofstream(disk_) << std::string(4096, 'x');
  }
  void TearDown() override {
    ::unlink(disk_.c_str());
    ::unlink((dir_ + "/metrics").c_str());
    ::rmdir(dir_.c_str());
  }
  HttpResponse Put(const std::string& path, const std::string& body) {
    return controller_.Handle("PUT", path, body);
  }
  // A 400 whose fault_message contains what.
  void ExpectFault(const HttpResponse& response, const std::string& what) {
    EXPECT_EQ(response.status, 400) << response.body;
    EXPECT_THAT(response.body, HasSubstr("\"fault_message\""));
    EXPECT_THAT(response.body, HasSubstr(what));
  }
  std::string Kernel() const { return kGuestDir + "/hello.elf"; }

  VmController controller_{VmmConfig{.serial_fd = -1}, {}};
  std::string dir_;
  std::string disk_;
};

TEST_F(ApiTest, GetRootDescribesTheInstance) {
  HttpResponse response = controller_.Handle("GET", "/", "");
  EXPECT_EQ(response.status, 200);
  EXPECT_THAT(response.body, HasSubstr("\"state\":\"Not started\""));
  EXPECT_THAT(response.body, HasSubstr("\"id\":\"anonymous-instance\""));
  EXPECT_THAT(response.body, HasSubstr("\"vmm_version\""));
}

TEST_F(ApiTest, MachineConfigRoundTrips) {
  EXPECT_THAT(controller_.Handle("GET", "/machine-config", "").body,
              HasSubstr("\"mem_size_mib\":128"));
  EXPECT_EQ(Put("/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
            "track_dirty_pages": true})")
                .status,
            204);
  HttpResponse got = controller_.Handle("GET", "/machine-config", "");
  EXPECT_EQ(got.status, 200);
  EXPECT_THAT(got.body, HasSubstr("\"vcpu_count\":2"));
  EXPECT_THAT(got.body, HasSubstr("\"mem_size_mib\":256"));
  EXPECT_THAT(got.body, HasSubstr("\"track_dirty_pages\":true"));
}

TEST_F(ApiTest, MachineConfigErrorsNameTheField) {
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1})"), "missing field `mem_size_mib`");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 0, "mem_size_mib": 128})"),
              "`vcpu_count` is 0, must be 1 to 32");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 33, "mem_size_mib": 128})"),
              "`vcpu_count` is 33");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": -1, "mem_size_mib": 128})"),
              "`vcpu_count` must be a non-negative integer");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1.5, "mem_size_mib": 128})"),
              "`vcpu_count` must be");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": "128"})"),
              "`mem_size_mib` must be");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 1})"),
              "`mem_size_mib` is 1");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "smt": 1})"),
              "`smt` must be a boolean");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "smt": true})"),
              "`smt` true is not supported");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 1})"),
              "unknown field `vcpus`");
  ExpectFault(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128,
              "cpu_template": "T2"})"),
              "`cpu_template` is `T2`");
  ExpectFault(Put("/machine-config", "[1]"), "expected a JSON object");
  ExpectFault(Put("/machine-config", "{"), "not valid JSON");
  ExpectFault(Put("/machine-config", ""), "Empty request body");
}

TEST_F(ApiTest, BootSourceErrors) {
  ExpectFault(Put("/boot-source", R"({})"), "missing field `kernel_image_path`");
  ExpectFault(Put("/boot-source", R"({"kernel_image_path": ""})"), "`kernel_image_path` is empty");
  ExpectFault(Put("/boot-source", R"({"kernel_image_path": "/nonexistent"})"),
              "cannot open `/nonexistent`");
  ExpectFault(Put("/boot-source", R"({"kernel_image_path": "/tmp"})"), "not a regular file");
  ExpectFault(Put("/boot-source",
                  R"({"kernel_image_path": ")" + Kernel() + R"(", "initrd_path": "/nonexistent"})"),
              "initrd_path");
  ExpectFault(
      Put("/boot-source", R"({"kernel_image_path": ")" + Kernel() + R"(", "boot_args": 5})"),
      "`boot_args` must be a string");
  ExpectFault(Put("/boot-source", R"({"kernel_image_path": ")" + Kernel() + R"(", "kernel": "x"})"),
              "unknown field `kernel`");
  EXPECT_EQ(Put("/boot-source",
                R"({"kernel_image_path": ")" + Kernel() + R"(", "boot_args": "console=ttyS0"})")
                .status,
            204);
  EXPECT_EQ(controller_.config().cmdline, "console=ttyS0");
}

TEST_F(ApiTest, DrivesAreValidatedAndReplacedById) {
  const std::string good = R"({"drive_id": "rootfs", "path_on_host": ")" + disk_ +
                           R"(", "is_root_device": true, "is_read_only": false})";
  EXPECT_EQ(Put("/drives/rootfs", good).status, 204);
  EXPECT_EQ(Put("/drives/rootfs", good).status, 204);  // replaced, not added
  EXPECT_EQ(controller_.config().drives.size(), 1u);
  ExpectFault(Put("/drives/other", good), "does not match the id from the body");
  ExpectFault(Put("/drives/rootfs", R"({"drive_id": "rootfs", "is_root_device": true})"),
              "missing field `path_on_host`");
  ExpectFault(Put("/drives/rootfs", R"({"drive_id": "rootfs", "path_on_host": ")" + disk_ + "\"}"),
              "missing field `is_root_device`");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": "/nonexistent",
              "is_root_device": false})"),
              "drive data: path_on_host: cannot open");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                      R"(", "is_root_device": true})"),
              "only one drive can be the root");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                      R"(", "is_root_device": false, "io_engine": "Async"})"),
              "`io_engine` is `Async`");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                      R"(", "is_root_device": false, "rate_limiter": {}})"),
              "`rate_limiter` is not supported");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                      R"(", "is_root_device": false, "is_read_only": "no"})"),
              "`is_read_only` must be a boolean");
  ExpectFault(Put("/drives/a.b", R"({"drive_id": "a.b", "path_on_host": ")" + disk_ +
                                     R"(", "is_root_device": false})"),
              "may only hold letters");
  ExpectFault(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                      R"(", "is_root_device": false, "lethe": true,
                                      "is_read_only": true})"),
              "Lethe");
  EXPECT_EQ(Put("/drives/data", R"({"drive_id": "data", "path_on_host": ")" + disk_ +
                                    R"(", "is_root_device": false, "lethe": true})")
                .status,
            204);
  EXPECT_TRUE(controller_.config().drives.back().lethe);
}

TEST_F(ApiTest, VsockEntropyMetricsAndRoutes) {
  ExpectFault(Put("/vsock", R"({"guest_cid": 2, "uds_path": "/tmp/v.sock"})"),
              "`guest_cid` is 2, must be 3");
  ExpectFault(Put("/vsock", R"({"guest_cid": 3})"), "missing field `uds_path`");
  ExpectFault(Put("/vsock", R"({"guest_cid": 3, "uds_path": ")" + std::string(120, 'a') + "\"}"),
              "longer than a Unix socket path");
  EXPECT_EQ(Put("/vsock", R"({"guest_cid": 3, "uds_path": "/tmp/v.sock"})").status, 204);
  EXPECT_EQ(controller_.config().vsock->guest_cid, 3u);

  ExpectFault(Put("/entropy", R"({"rate_limiter": {"bandwidth": {}}})"), "rate_limiter");
  ExpectFault(Put("/entropy", R"({"x": 1})"), "unknown field `x`");
  EXPECT_EQ(Put("/entropy", "{}").status, 204);
  EXPECT_TRUE(controller_.config().entropy);

  ExpectFault(Put("/metrics", R"({"metrics_path": "/nonexistent/m"})"), "cannot open");
  const std::string metrics = dir_ + "/metrics";
  std::ofstream(metrics).close();
  EXPECT_EQ(Put("/metrics", R"({"metrics_path": ")" + metrics + "\"}").status, 204);
  ExpectFault(Put("/metrics", R"({"metrics_path": ")" + metrics + "\"}"), "already initialized");
  EXPECT_EQ(Put("/actions", R"({"action_type": "FlushMetrics"})").status, 204);
  std::ifstream file(metrics);
  std::string line;
  std::getline(file, line);
  EXPECT_THAT(line, HasSubstr("\"api_server\":{\"failed_requests\":"));
  EXPECT_THAT(line, HasSubstr("\"utc_timestamp_ms\""));

  ExpectFault(controller_.Handle("GET", "/nowhere", ""),
              "Invalid request method and/or path: GET /nowhere.");
  ExpectFault(controller_.Handle("DELETE", "/machine-config", ""), "Invalid request method");
  ExpectFault(Put("/drives/", "{}"), "Invalid request method");
  ExpectFault(Put("/drives/a/b", "{}"), "Invalid request method");
}

TEST_F(ApiTest, ActionsAndVmStateRulesBeforeStart) {
  ExpectFault(Put("/actions", R"({"action_type": "Reboot"})"), "`action_type` is `Reboot`");
  ExpectFault(Put("/actions", R"({})"), "missing field `action_type`");
  ExpectFault(Put("/actions", R"({"action_type": "InstanceStart"})"), "no boot source");
  ExpectFault(Put("/actions", R"({"action_type": "SendCtrlAltDel"})"),
              "not supported before starting the microVM");
  ExpectFault(controller_.Handle("PATCH", "/vm", R"({"state": "Paused"})"),
              "not supported before starting the microVM");
  ExpectFault(controller_.Handle("PATCH", "/vm", R"({"state": "Stopped"})"),
              "`state` is `Stopped`");
  ExpectFault(Put("/actions", R"({"action_type": "FlushMetrics"})"), "no metrics_path");
}

TEST_F(ApiTest, SnapshotBodiesAndStateRulesAreChecked) {
  ExpectFault(Put("/snapshot/create", R"({"snapshot_path": "/tmp/s"})"),
              "missing field `mem_file_path`");
  ExpectFault(Put("/snapshot/create", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m",
              "snapshot_type": "Partial"})"),
              "`snapshot_type` is `Partial`");
  ExpectFault(Put("/snapshot/create", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m",
              "snapshot_type": "Diff"})"),
              "needs `track_dirty_pages`");
  ExpectFault(Put("/snapshot/create", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})"),
              "not supported before starting");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s"})"),
              "missing field `mem_backend`");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m",
              "mem_backend": {"backend_type": "File", "backend_path": "/tmp/m"}})"),
              "not both");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s",
              "mem_backend": {"backend_type": "Disk", "backend_path": "/tmp/m"}})"),
              "`backend_type` is `Disk`");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s",
              "mem_backend": {"backend_type": "File"}})"),
              "mem_backend: missing field `backend_path`");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s", "resume_vm": "yes",
              "mem_file_path": "/tmp/m"})"),
              "`resume_vm` must be a boolean");
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s",
              "mem_backend": {"backend_type": "Uffd", "backend_path": "/tmp/m"}})"),
              "`Uffd` is not supported");
  // A missing state file is named; the controller is still unstarted afterwards.
  const std::string missing = dir_ + "/no-such-snapshot";
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": ")" + missing +
                                        R"(", "mem_file_path": "/tmp/m", "resume_vm": true})"),
              "no-such-snapshot");
  EXPECT_EQ(controller_.state(), InstanceState::kNotStarted);
  // After boot configuration a snapshot can no longer be loaded (Firecracker's rule).
  ASSERT_EQ(Put("/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 64})").status, 204);
  ExpectFault(Put("/snapshot/load", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})"),
              "not allowed after configuring boot-specific resources");
}

TEST_F(ApiTest, SnapshotLoadSeamReceivesTheValidatedParameters) {
  SnapshotLoadParams seen;
  VmController controller(
      VmmConfig{.serial_fd = -1},
      {.load_snapshot = [&seen](const VmmConfig&,
                                const SnapshotLoadParams& params) -> Result<std::unique_ptr<Vmm>> {
        seen = params;
        return Fail(ErrorCode::kInvalidArgument, "seam says no");
      }});
  HttpResponse response = controller.Handle("PUT", "/snapshot/load", R"({"snapshot_path": "/s",
      "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true})");
  EXPECT_EQ(response.status, 400) << response.body;
  EXPECT_THAT(response.body, HasSubstr("snapshot/load: seam says no"));
  EXPECT_EQ(seen.snapshot_path, "/s");
  EXPECT_EQ(seen.mem_backend_type, "File");
  EXPECT_EQ(seen.mem_backend_path, "/m");
  EXPECT_TRUE(seen.resume_vm);
  EXPECT_EQ(controller.state(), InstanceState::kNotStarted);
}

TEST_F(ApiTest, ConfigFileSectionsAreCheckedLikeRequests) {
  const std::string boot = R"("boot-source": {"kernel_image_path": ")" + Kernel() + "\"}";
  EXPECT_TRUE(controller_.ApplyConfigFile("{" + boot + R"(, "machine-config": {"vcpu_count": 1,
      "mem_size_mib": 64}, "drives": [{"drive_id": "rootfs", "path_on_host": ")" +
                                          disk_ +
                                          R"(", "is_root_device": true}], "entropy": {},
      "network-interfaces": []})"));
  EXPECT_EQ(controller_.config().memory_mib, 64u);
  EXPECT_EQ(controller_.config().drives.size(), 1u);

  VmController other(VmmConfig{.serial_fd = -1}, {});
  EXPECT_THAT(other.ApplyConfigFile("{").error().message, HasSubstr("not valid JSON"));
  EXPECT_THAT(other.ApplyConfigFile("{}").error().message, HasSubstr("missing `boot-source`"));
  EXPECT_THAT(other.ApplyConfigFile("{" + boot + R"(, "boot-sauce": {}})").error().message,
              HasSubstr("unknown field `boot-sauce` (did you mean 'boot-source'?)"));
  EXPECT_THAT(other.ApplyConfigFile("{" + boot + R"(, "drives": {}})").error().message,
              HasSubstr("`drives` must be an array"));
  EXPECT_THAT(
      other.ApplyConfigFile("{" + boot + R"(, "drives": [{"drive_id": "x"}]})").error().message,
      HasSubstr("config file: drive: missing field `path_on_host`"));
  EXPECT_THAT(other.ApplyConfigFile("{" + boot + R"(, "network-interfaces": [{"iface_id": "e"}]})")
                  .error()
                  .message,
              HasSubstr("`network-interfaces` is not supported"));
  EXPECT_THAT(other.ApplyConfigFile("{" + boot + R"(, "machine-config": {"vcpu_count": 1}})")
                  .error()
                  .message,
              HasSubstr("config file: machine-config: missing field `mem_size_mib`"));
}

}  // namespace
}  // namespace tartarus::vmm::api

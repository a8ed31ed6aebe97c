// Olympus (the API server): serves /v1 (docs/openapi.yaml) over HTTP on TCP and a Unix socket,
// authenticates every request to a tenant, asks Themis to admit new sandboxes, queues them in
// Acheron, and runs the two background loops every replica runs: Moirai's scheduling loop and
// Hades's lease expiry. Olympus keeps no state of its own: any number of replicas can share
// one PostgreSQL store.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/result.h"
#include "store/control_store.h"
#include "telemetry/metrics.h"

namespace tartarus::api {

struct OlympusConfig {
  std::string store_url;    // sqlite path/URL or postgres://...
  std::string unix_socket;  // "" = none; trusted like the Docker socket (admin)
  std::string tcp_host = "127.0.0.1";
  int tcp_port = 7777;  // -1 = no TCP listener; 0 = any free port
  std::chrono::milliseconds node_lease{10000};
  std::chrono::milliseconds schedule_interval{500};
  std::chrono::milliseconds lease_check_interval{1000};
  int schedule_batch = 64;
  int best_of_k = 2;
  bool open_metrics = true;  // /metrics without a token
  int io_threads = 2;
  int worker_threads = 8;
};

// The tenant every Unix-socket request acts as, and whose tokens may do anything.
inline constexpr const char* kAdminTenant = "admin";

class Olympus {
 public:
  static Result<std::unique_ptr<Olympus>> Start(OlympusConfig config);
  ~Olympus();
  void Stop();  // idempotent
  uint16_t tcp_port() const;
  store::ControlStore& store();

 private:
  struct Impl;
  explicit Olympus(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tartarus::api

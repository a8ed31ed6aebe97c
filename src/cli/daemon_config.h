// The daemons' config file (docs/configuration.md): one YAML file for `tartarus up`,
// `tartarus olympus` and `tartarus agent`. Command-line flags override it. Unknown keys and
// bad values are errors naming the key and line.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::cli {

struct DaemonConfig {
  std::string state_dir;  // empty: the CLI's --state-dir
  // Olympus.
  std::string store;  // empty: sqlite under the state dir (up); required for `olympus`
  std::string listen = "127.0.0.1:7777";  // "" or "none": no TCP listener
  std::string unix_socket;  // empty: <state_dir>/olympus.sock for `up`, none for `olympus`
  std::chrono::milliseconds node_lease{10000};
  std::chrono::milliseconds schedule_interval{500};
  int schedule_batch = 64;
  int best_of_k = 2;
  bool open_metrics = true;
  int api_threads = 2;
  int worker_threads = 8;
  std::string log_level = "info";
  // Hecatoncheir.
  struct Agent {
    std::string olympus;  // empty with `up`: the daemon's own Unix socket
    std::string token;
    std::string node_id;
    std::string listen;     // empty: <state_dir>/node.sock
    std::string advertise;  // empty: derived from listen
    int64_t millicpus = 0;
    int64_t memory_bytes = 0;
    std::map<std::string, std::string> labels;
    std::vector<std::string> runtimes;
    std::chrono::milliseconds heartbeat_interval{1000};
  } agent;
};

// Parses the YAML text (source_name prefixes error positions).
Result<DaemonConfig> ParseDaemonConfig(std::string_view yaml, std::string_view source_name);
// Reads and parses a file; a missing file is an error.
Result<DaemonConfig> LoadDaemonConfig(const std::string& path);
// HOST:PORT -> parts; "none"/"" -> port -1.
Result<std::pair<std::string, int>> ParseListen(const std::string& listen);

}  // namespace tartarus::cli

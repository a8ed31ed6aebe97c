// Helpers for end-to-end tests: run the tartarus binary, feed stdin, inspect the host.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/subprocess.h"

namespace tartarus::testing {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `tartarus <args>` with the given stdin, capturing up to 128 MiB of each stream.
CliResult RunCli(const std::vector<std::string>& args, const std::string& stdin_data = "",
                 std::chrono::seconds timeout = std::chrono::seconds(300));

// Why this host cannot run sandboxes with `runtime`, or empty when it can.
std::string SkipReason(const std::string& runtime, const std::string& template_name);

// Host-side traces of a sandbox: mounts, cgroups, processes, runtime state. Empty when
// the sandbox left nothing behind.
std::vector<std::string> Leftovers(const std::string& state_dir, const std::string& id);

std::string StateDir();
std::string Sha256Hex(const std::string& data);

}  // namespace tartarus::testing

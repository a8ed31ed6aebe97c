// Hecatoncheir (the node agent), cluster mode: registers this host with Olympus, renews its
// lease with a heartbeat, runs the sandboxes assigned to it through LocalNode (each in its own
// supervisor process, so they outlive an agent restart), reports when they start and end, and
// serves their logs, exec and files to Olympus on its own HTTP endpoint.
//
// No orphans, no double runs: a run is identified by (sandbox id, attempt) and lives locally
// as "<id>-<attempt>". After a restart the agent adopts the runs Olympus still assigns to it
// and kills every other run of its own that is still going.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "node/local_node.h"

namespace tartarus::node {

struct NodeAgentConfig {
  NodeConfig node;
  // Olympus: http://host:port or unix:///path; several replicas comma-separated (the agent
  // fails over to the next one it can reach).
  std::string olympus;
  std::string token;    // an admin token (empty over the trusted Unix socket)
  std::string node_id;  // default: the host name
  // Where this agent serves logs/exec/files: "unix:///path.sock" or "host:port".
  std::string listen;
  std::string advertise;     // how Olympus reaches `listen`; default: the same
  int64_t millicpus = 0;     // capacity offered; 0: every CPU of the host
  int64_t memory_bytes = 0;  // 0: the host's memory minus 10%
  std::map<std::string, std::string> labels;
  std::vector<std::string> runtimes;  // empty: every runtime whose binary is installed
  std::chrono::milliseconds heartbeat_interval{1000};
};

class NodeAgent {
 public:
  static Result<std::unique_ptr<NodeAgent>> Start(NodeAgentConfig config);
  ~NodeAgent();
  // Stops heartbeats and the endpoint. Sandboxes keep running in their supervisors; the
  // next agent on this host adopts them (or Olympus's lease expiry hands them elsewhere).
  void Stop();
  const std::string& node_id() const;
  std::string endpoint() const;  // the address given to Olympus

 private:
  struct Impl;
  explicit NodeAgent(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// "<id>-<attempt>": the local sandbox id of one run of a control-plane sandbox.
std::string RunId(const std::string& sandbox_id, int attempt);
// The reverse; false for ids that are not runs (local-mode sandboxes).
bool ParseRunId(const std::string& run_id, std::string* sandbox_id, int* attempt);

// Output bytes as one NDJSON stream event: {"event":"stdout","data":...} with data_b64
// instead of data when the bytes are not valid UTF-8.
std::string OutputEvent(std::string_view stream, std::string_view bytes);

}  // namespace tartarus::node

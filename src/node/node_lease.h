// Hecatoncheir's node lease on disk. The node agent rewrites this file after every heartbeat
// Olympus answered; it holds the moment (CLOCK_MONOTONIC, milliseconds: one clock for every
// process on the host) past which Olympus may give this node's runs to another node. Each
// sandbox supervisor checks it, so a run stops in time even when the agent was kill -9'd
// and cannot fence its runs itself: a sandbox never runs on two nodes at once.
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace tartarus::node {

int64_t MonotonicMs();

// Atomically replaces the file (no fsync: after a host crash nothing of it runs anyway).
Status WriteNodeLease(const std::string& path, int64_t deadline_monotonic_ms);

// Why the lease no longer covers this node, or empty while it does. A missing or garbled
// file counts as lapsed: the agent writes it before it starts any run.
std::string NodeLeaseLapsed(const std::string& path);

}  // namespace tartarus::node

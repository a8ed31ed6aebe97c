// The daemons' config file: every option parses, and mistakes name the key and line.
#include "cli/daemon_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tartarus::cli {
namespace {

using ::testing::HasSubstr;

TEST(DaemonConfig, EveryOptionParses) {
  auto c = ParseDaemonConfig(R"(
state_dir: /srv/tartarus
store: postgresql://tartarus@db/tartarus
listen: 0.0.0.0:7777
unix_socket: /run/tartarus/olympus.sock
node_lease: 15s
schedule_interval: 250ms
schedule_batch: 32
best_of_k: 3
open_metrics: false
api_threads: 4
worker_threads: 16
log_level: warn
agent:
  olympus: http://olympus:7777
  token: tt_secret
  node_id: worker-1
  listen: 0.0.0.0:7778
  advertise: http://10.0.0.5:7778
  cpus: 8
  memory: 16G
  labels: {zone: a, disk: ssd}
  runtimes: [container, gvisor]
  heartbeat_interval: 2s
)",
                             "config.yaml");
  ASSERT_TRUE(c.has_value()) << c.error().message;
  EXPECT_EQ(c->state_dir, "/srv/tartarus");
  EXPECT_EQ(c->store, "postgresql://tartarus@db/tartarus");
  EXPECT_EQ(c->listen, "0.0.0.0:7777");
  EXPECT_EQ(c->node_lease.count(), 15000);
  EXPECT_EQ(c->schedule_interval.count(), 250);
  EXPECT_EQ(c->schedule_batch, 32);
  EXPECT_EQ(c->best_of_k, 3);
  EXPECT_FALSE(c->open_metrics);
  EXPECT_EQ(c->worker_threads, 16);
  EXPECT_EQ(c->log_level, "warn");
  EXPECT_EQ(c->agent.node_id, "worker-1");
  EXPECT_EQ(c->agent.millicpus, 8000);
  EXPECT_EQ(c->agent.memory_bytes, int64_t{16} << 30);
  EXPECT_EQ(c->agent.labels.at("zone"), "a");
  EXPECT_EQ(c->agent.runtimes.size(), 2u);
  EXPECT_EQ(c->agent.heartbeat_interval.count(), 2000);
}

TEST(DaemonConfig, EmptyFileMeansDefaults) {
  auto c = ParseDaemonConfig("", "empty.yaml");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->listen, "127.0.0.1:7777");
  EXPECT_EQ(c->node_lease.count(), 10000);
}

TEST(DaemonConfig, MistakesNameTheKeyAndLine) {
  auto unknown = ParseDaemonConfig("listen: 1.2.3.4:80\nlistne: x\n", "c.yaml");
  ASSERT_FALSE(unknown.has_value());
  EXPECT_THAT(unknown.error().message, HasSubstr("c.yaml:2:1: listne: unknown key"));
  auto lease = ParseDaemonConfig("node_lease: soon\n", "c.yaml");
  ASSERT_FALSE(lease.has_value());
  EXPECT_THAT(lease.error().message, HasSubstr("c.yaml:1:13: node_lease"));
  auto port = ParseDaemonConfig("listen: localhost:99999\n", "c.yaml");
  ASSERT_FALSE(port.has_value());
  EXPECT_THAT(port.error().message, HasSubstr("bad port"));
  auto nested = ParseDaemonConfig("agent:\n  memory: lots\n", "c.yaml");
  ASSERT_FALSE(nested.has_value());
  EXPECT_THAT(nested.error().message, HasSubstr("c.yaml:2:11: agent.memory"));
  auto level = ParseDaemonConfig("log_level: chatty\n", "c.yaml");
  EXPECT_FALSE(level.has_value());
  auto broken = ParseDaemonConfig("listen: [unclosed\n", "c.yaml");
  ASSERT_FALSE(broken.has_value());
  EXPECT_THAT(broken.error().message, HasSubstr("c.yaml:"));
}

TEST(DaemonConfig, ListenAddresses) {
  EXPECT_EQ(ParseListen("127.0.0.1:7777")->second, 7777);
  EXPECT_EQ(ParseListen("[::1]:80")->first, "::1");
  EXPECT_EQ(ParseListen("none")->second, -1);
  EXPECT_FALSE(ParseListen("7777").has_value());
  EXPECT_FALSE(ParseListen("host:").has_value());
}

}  // namespace
}  // namespace tartarus::cli

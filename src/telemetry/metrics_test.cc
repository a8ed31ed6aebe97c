// Hermes (telemetry) tests: the registry and its exact Prometheus text.
#include "telemetry/metrics.h"

#include <thread>

#include <gtest/gtest.h>

namespace tartarus::telemetry {
namespace {

TEST(MetricsTest, RendersExactPrometheusText) {
  Registry registry;
  registry.counter("tartarus_requests_total", "Requests served.", {{"code", "200"}}).Inc(3);
  registry.counter("tartarus_requests_total", "Requests served.", {{"code", "404"}}).Inc();
  registry.gauge("tartarus_sandboxes", "Sandboxes by state.", {{"state", "running"}}).Set(2.5);
  registry.gauge_fn("tartarus_queue_depth", "Queued jobs.", {}, [] { return 7.0; });
  Histogram& latency =
      registry.histogram("tartarus_latency_seconds", "Request latency.", {}, {0.1, 1});
  latency.Observe(0.05);
  latency.Observe(0.1);  // le is inclusive
  latency.Observe(3);

  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP tartarus_latency_seconds Request latency.\n"
            "# TYPE tartarus_latency_seconds histogram\n"
            "tartarus_latency_seconds_bucket{le=\"0.1\"} 2\n"
            "tartarus_latency_seconds_bucket{le=\"1\"} 2\n"
            "tartarus_latency_seconds_bucket{le=\"+Inf\"} 3\n"
            "tartarus_latency_seconds_sum 3.15\n"
            "tartarus_latency_seconds_count 3\n"
            "# HELP tartarus_queue_depth Queued jobs.\n"
            "# TYPE tartarus_queue_depth gauge\n"
            "tartarus_queue_depth 7\n"
            "# HELP tartarus_requests_total Requests served.\n"
            "# TYPE tartarus_requests_total counter\n"
            "tartarus_requests_total{code=\"200\"} 3\n"
            "tartarus_requests_total{code=\"404\"} 1\n"
            "# HELP tartarus_sandboxes Sandboxes by state.\n"
            "# TYPE tartarus_sandboxes gauge\n"
            "tartarus_sandboxes{state=\"running\"} 2.5\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  Registry registry;
  registry.counter("x_total", "line one\nback\\slash", {{"b", "q\"uote\\n\nl"}, {"a", "1"}}).Inc();
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP x_total line one\\nback\\\\slash\n"
            "# TYPE x_total counter\n"
            "x_total{a=\"1\",b=\"q\\\"uote\\\\n\\nl\"} 1\n");
}

TEST(MetricsTest, HistogramWithLabelsPutsLeLast) {
  Registry registry;
  registry.histogram("h", "", {{"route", "/v1"}}, {0.5}).Observe(0.25);
  EXPECT_EQ(registry.RenderPrometheus(),
            "# HELP h \n# TYPE h histogram\n"
            "h_bucket{route=\"/v1\",le=\"0.5\"} 1\n"
            "h_bucket{route=\"/v1\",le=\"+Inf\"} 1\n"
            "h_sum{route=\"/v1\"} 0.25\n"
            "h_count{route=\"/v1\"} 1\n");
}

TEST(MetricsTest, SameNameAndLabelsIsSameMetric) {
  Registry registry;
  Counter& a = registry.counter("c_total", "", {{"k", "v"}});
  Counter& b = registry.counter("c_total", "", {{"k", "v"}});
  EXPECT_EQ(&a, &b);
  a.Inc(2);
  b.Inc(-5);  // ignored: counters only go up
  EXPECT_EQ(b.value(), 2);
}

TEST(MetricsTest, BadNamesAndTypeClashesAreDetached) {
  Registry registry;
  registry.counter("clash", "").Inc();
  Gauge& clash = registry.gauge("clash", "");  // same name, other type
  clash.Set(5);
  registry.counter("9bad", "").Inc();
  registry.counter("ok_total", "", {{"bad-label", "x"}}).Inc();
  registry.histogram("hist", "", {{"le", "x"}}).Observe(1);
  EXPECT_EQ(clash.value(), 5);  // still usable
  EXPECT_EQ(registry.RenderPrometheus(), "# HELP clash \n# TYPE clash counter\nclash 1\n");
}

TEST(MetricsTest, FormatsValues) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-3), "-3");
  EXPECT_EQ(FormatMetricValue(0.005), "0.005");
  EXPECT_EQ(FormatMetricValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatMetricValue(-1.0 / 0.0), "-Inf");
  EXPECT_EQ(FormatMetricValue(0.0 / 0.0), "NaN");
  EXPECT_EQ(FormatMetricValue(1e20), "1e+20");
}

TEST(MetricsTest, ConcurrentIncrementsAreNotLost) {
  Registry registry;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        registry.counter("n_total", "").Inc();
        registry.histogram("d", "", {}, {1}).Observe(0.5);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(registry.counter("n_total", "").value(), 40000);
  EXPECT_EQ(registry.histogram("d", "").count(), 40000u);
}

TEST(MetricsTest, ExponentialBuckets) {
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
  EXPECT_EQ(DefaultBuckets().size(), 11u);
}

}  // namespace
}  // namespace tartarus::telemetry

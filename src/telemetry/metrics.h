// Hermes (telemetry): Prometheus metrics. A Registry holds counter, gauge and histogram
// families; a metric is looked up once (mutex) and then updated with lock-free atomics.
// RenderPrometheus() writes text exposition format 0.0.4.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace tartarus::telemetry {

using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  void Inc(double amount = 1);  // negative amounts are ignored: counters only go up
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Inc(double amount = 1) { value_.fetch_add(amount, std::memory_order_relaxed); }
  void Dec(double amount = 1) { value_.fetch_sub(amount, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // Upper bounds, sorted and deduplicated here; +Inf is implicit.
  explicit Histogram(std::vector<double> buckets);
  void Observe(double value);
  const std::vector<double>& buckets() const { return bounds_; }
  // Non-cumulative count per bucket (last one: +Inf), sum and count, read one by one.
  std::vector<uint64_t> bucket_counts() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

// Prometheus' default buckets: .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 (seconds).
std::vector<double> DefaultBuckets();
// start, start*factor, ... (count bounds).
std::vector<double> ExponentialBuckets(double start, double factor, int count);

// A gauge whose value is read at render time (queue depth, open connections).
using GaugeFn = std::function<double()>;

// Thread-safe. Returned references stay valid for the Registry's lifetime. The same name
// with the same labels returns the same metric. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*
// and label names [a-zA-Z_][a-zA-Z0-9_]*; a metric with a bad name, or a name already used
// by another type, is returned detached (it works but is never rendered) -- a programming
// error, not outside input. Label values may be anything: they are escaped.
class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  Counter& counter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge& gauge(std::string_view name, std::string_view help, const Labels& labels = {});
  // buckets empty: DefaultBuckets(). The first registration of a name fixes its buckets.
  Histogram& histogram(std::string_view name, std::string_view help, const Labels& labels = {},
                       std::vector<double> buckets = {});
  // Registers (or replaces) a callback gauge; fn runs during RenderPrometheus, under the
  // registry lock: it must not call back into this Registry.
  void gauge_fn(std::string_view name, std::string_view help, const Labels& labels, GaugeFn fn);

  // Families sorted by name, series by labels; HELP and TYPE lines for each family.
  std::string RenderPrometheus() const;

 private:
  struct Family;
  Family* FamilyFor(std::string_view name, std::string_view help, int type);
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
  std::vector<std::unique_ptr<Counter>> detached_counters_;
  std::vector<std::unique_ptr<Gauge>> detached_gauges_;
  std::vector<std::unique_ptr<Histogram>> detached_histograms_;
};

// The process-wide registry served at /metrics.
Registry& DefaultRegistry();

// Prometheus number format: integers without a fraction, "+Inf", "-Inf", "NaN".
std::string FormatMetricValue(double value);
// Escapes a label value: backslash, double quote and newline.
std::string EscapeLabelValue(std::string_view value);

}  // namespace tartarus::telemetry

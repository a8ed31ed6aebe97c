// Hermes (telemetry): Prometheus metrics registry and text exposition format 0.0.4.
#include "telemetry/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace tartarus::telemetry {
namespace {

enum FamilyType { kCounterType = 0, kGaugeType = 1, kHistogramType = 2 };

constexpr std::string_view TypeName(int type) {
  switch (type) {
    case kCounterType:
      return "counter";
    case kGaugeType:
      return "gauge";
    default:
      return "histogram";
  }
}

bool IsMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsLabelName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool AreLabelNames(const Labels& labels, bool histogram) {
  for (const auto& [name, value] : labels) {
    if (!IsLabelName(name) || (histogram && name == "le")) return false;
  }
  return true;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// {a="1",b="2"} with an optional extra label appended (le for buckets); "" when empty.
std::string RenderLabels(const Labels& labels, std::string_view extra_name = {},
                         std::string_view extra_value = {}) {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [name, value] : labels) {
    if (!first) out += ',';
    first = false;
    out += fmt::format("{}=\"{}\"", name, EscapeLabelValue(value));
  }
  if (!extra_name.empty()) {
    if (!first) out += ',';
    out += fmt::format("{}=\"{}\"", extra_name, extra_value);
  }
  out += '}';
  return out;
}

std::vector<double> CleanBuckets(std::vector<double> buckets) {
  if (buckets.empty()) buckets = DefaultBuckets();
  std::erase_if(buckets, [](double b) { return std::isnan(b) || std::isinf(b); });
  std::sort(buckets.begin(), buckets.end());
  buckets.erase(std::unique(buckets.begin(), buckets.end()), buckets.end());
  return buckets;
}

}  // namespace

struct Registry::Family {
  int type = kCounterType;
  std::string help;
  std::vector<double> buckets;  // histograms
  std::map<Labels, std::unique_ptr<Counter>> counters;
  std::map<Labels, std::unique_ptr<Gauge>> gauges;
  std::map<Labels, GaugeFn> gauge_fns;
  std::map<Labels, std::unique_ptr<Histogram>> histograms;
};

void Counter::Inc(double amount) {
  if (!(amount > 0)) return;
  value_.fetch_add(amount, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> buckets)
    : bounds_(CleanBuckets(std::move(buckets))),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::Observe(double value) {
  // The first bound >= value ("le" is inclusive); NaN lands in +Inf.
  size_t index = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  if (std::isnan(value)) index = bounds_.size();
  counts_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::bucket_counts() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) out[i] = counts_[i].load(std::memory_order_relaxed);
  return out;
}

std::vector<double> DefaultBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(start);
    start *= factor;
  }
  return out;
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {
    return fmt::format("{}", static_cast<int64_t>(value));
  }
  return fmt::format("{}", value);  // shortest round-trip form
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

Registry::Registry() = default;
Registry::~Registry() = default;

Registry::Family* Registry::FamilyFor(std::string_view name, std::string_view help, int type) {
  if (!IsMetricName(name)) return nullptr;
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto family = std::make_unique<Family>();
    family->type = type;
    family->help = std::string(help);
    it = families_.emplace(std::string(name), std::move(family)).first;
  }
  return it->second->type == type ? it->second.get() : nullptr;
}

Counter& Registry::counter(std::string_view name, std::string_view help, const Labels& labels) {
  std::lock_guard lock(mu_);
  Family* family = AreLabelNames(labels, false) ? FamilyFor(name, help, kCounterType) : nullptr;
  if (family == nullptr) return *detached_counters_.emplace_back(std::make_unique<Counter>());
  auto& slot = family->counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Registry::gauge(std::string_view name, std::string_view help, const Labels& labels) {
  std::lock_guard lock(mu_);
  Family* family = AreLabelNames(labels, false) ? FamilyFor(name, help, kGaugeType) : nullptr;
  if (family == nullptr) return *detached_gauges_.emplace_back(std::make_unique<Gauge>());
  auto& slot = family->gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Registry::histogram(std::string_view name, std::string_view help, const Labels& labels,
                               std::vector<double> buckets) {
  std::lock_guard lock(mu_);
  Family* family = AreLabelNames(labels, true) ? FamilyFor(name, help, kHistogramType) : nullptr;
  if (family == nullptr) {
    return *detached_histograms_.emplace_back(std::make_unique<Histogram>(std::move(buckets)));
  }
  if (family->histograms.empty() && family->buckets.empty()) {
    family->buckets = CleanBuckets(std::move(buckets));
  }
  auto& slot = family->histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(family->buckets);
  return *slot;
}

void Registry::gauge_fn(std::string_view name, std::string_view help, const Labels& labels,
                        GaugeFn fn) {
  std::lock_guard lock(mu_);
  Family* family = AreLabelNames(labels, false) ? FamilyFor(name, help, kGaugeType) : nullptr;
  if (family == nullptr || !fn) return;
  family->gauge_fns[labels] = std::move(fn);
}

std::string Registry::RenderPrometheus() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, EscapeHelp(family->help), name,
                       TypeName(family->type));
    switch (family->type) {
      case kCounterType:
        for (const auto& [labels, counter] : family->counters) {
          out += fmt::format("{}{} {}\n", name, RenderLabels(labels),
                             FormatMetricValue(counter->value()));
        }
        break;
      case kGaugeType: {
        // Static gauges and callback gauges share one family; a callback wins on equal labels.
        std::map<Labels, double> values;
        for (const auto& [labels, gauge] : family->gauges) values[labels] = gauge->value();
        for (const auto& [labels, fn] : family->gauge_fns) {
          double value = std::numeric_limits<double>::quiet_NaN();
          try {
            value = fn();
          } catch (...) {  // a throwing callback must not break /metrics
          }
          values[labels] = value;
        }
        for (const auto& [labels, value] : values) {
          out += fmt::format("{}{} {}\n", name, RenderLabels(labels), FormatMetricValue(value));
        }
        break;
      }
      default:
        for (const auto& [labels, histogram] : family->histograms) {
          std::vector<uint64_t> counts = histogram->bucket_counts();
          uint64_t cumulative = 0;
          for (size_t i = 0; i < counts.size(); ++i) {
            cumulative += counts[i];
            std::string le = i < histogram->buckets().size()
                                 ? FormatMetricValue(histogram->buckets()[i])
                                 : std::string("+Inf");
            out +=
                fmt::format("{}_bucket{} {}\n", name, RenderLabels(labels, "le", le), cumulative);
          }
          // _count from the same snapshot as the buckets, so the +Inf bucket always equals it.
          out += fmt::format("{}_sum{} {}\n", name, RenderLabels(labels),
                             FormatMetricValue(histogram->sum()));
          out += fmt::format("{}_count{} {}\n", name, RenderLabels(labels), cumulative);
        }
        break;
    }
  }
  return out;
}

Registry& DefaultRegistry() {
  static Registry* registry = new Registry();  // never destroyed: used from exiting threads
  return *registry;
}

}  // namespace tartarus::telemetry

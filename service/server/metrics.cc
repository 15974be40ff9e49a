#include "service/server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <exception>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "service/server/status_page.h"

namespace quotad {
namespace {

// 50us .. ~0.8s, doubling: decisions take microseconds; waits and reloads take longer.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double v = 50e-6; v < 1.0; v *= 2) b.push_back(v);
  return b;
}

}  // namespace

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  using prometheus::BuildCounter;
  using prometheus::BuildGauge;
  using prometheus::BuildHistogram;
  decisions_ = &BuildCounter()
                    .Name("quotad_decisions_total")
                    .Help("Acquire decisions by credential, feature and result.")
                    .Register(*registry_);
  denials_ = &BuildCounter()
                  .Name("quotad_denials_total")
                  .Help("Denied Acquires by credential and the limit that denied them.")
                  .Register(*registry_);
  request_errors_ = &BuildCounter()
                         .Name("quotad_request_errors_total")
                         .Help("Calls that ended with an error status, by method and code.")
                         .Register(*registry_);
  auth_failures_ = &BuildCounter()
                        .Name("quotad_auth_failures_total")
                        .Help("Calls refused by authentication or access rules.")
                        .Register(*registry_);
  waits_ = &BuildCounter()
                .Name("quotad_waits_total")
                .Help("Acquires parked in the wait queue, by credential.")
                .Register(*registry_);
  fail_open_grants_ = &BuildCounter()
                          .Name("quotad_fail_open_grants_total")
                          .Help("Shared mode: Acquires granted without Redis (fail_open), counted "
                                "nowhere else, by credential.")
                          .Register(*registry_);
  cooldowns_ = &BuildCounter()
                    .Name("quotad_cooldowns_total")
                    .Help("Cooldowns started by upstream throttle answers.")
                    .Register(*registry_);
  store_errors_ = &BuildCounter()
                       .Name("quotad_store_errors_total")
                       .Help("Failed store operations.")
                       .Register(*registry_);
  // Series at 0 for the store operations the server counts, so that the first error is an
  // increase() and the family is on /metrics before any error (the alert rules name it).
  for (const char* operation : {"compact", "dedup", "flush"}) {
    store_errors_->Add({{"operation", operation}});
  }
  reloads_ = &BuildCounter()
                  .Name("quotad_config_reloads_total")
                  .Help("Configuration reloads by result.")
                  .Register(*registry_);
  limit_hits_ = &BuildCounter()
                     .Name("quotad_limit_hits_total")
                     .Help("Callers refused by one of quotad's own limits, by limit.")
                     .Register(*registry_);
  resource_in_use_ = &BuildGauge()
                          .Name("quotad_resource_in_use")
                          .Help("Use of each bounded resource a caller can make quotad hold.")
                          .Register(*registry_);
  resource_limit_ = &BuildGauge()
                         .Name("quotad_resource_limit")
                         .Help("The configured limit of each bounded resource.")
                         .Register(*registry_);
  queue_depth_family_ = &BuildGauge()
                             .Name("quotad_queue_depth")
                             .Help("Acquires waiting in the queue.")
                             .Register(*registry_);
  queue_depth_ = &queue_depth_family_->Add({});
  state_file_bytes_ = &BuildGauge()
                           .Name("quotad_state_file_bytes")
                           .Help("Size of the --state file on disk.")
                           .Register(*registry_)
                           .Add({});
  state_wal_bytes_ = &BuildGauge()
                          .Name("quotad_state_wal_bytes")
                          .Help("Size of the write-ahead log of the --state file on disk.")
                          .Register(*registry_)
                          .Add({});
  live_leases_ = &BuildGauge()
                      .Name("quotad_live_leases")
                      .Help("Leases not yet released or expired, by credential.")
                      .Register(*registry_);
  cooldown_active_ = &BuildGauge()
                          .Name("quotad_cooldown_active")
                          .Help("1 while a feature is cooling down after a throttle answer.")
                          .Register(*registry_);
  remaining_ = &BuildGauge()
                    .Name("quotad_remaining_units")
                    .Help("Units left in the current window (smallest over scopes).")
                    .Register(*registry_);
  outside_estimate_ = &BuildGauge()
                           .Name("quotad_outside_estimate_units")
                           .Help("Units held back for use from outside quotad, learnt from "
                                 "throttles (0 when nothing was learnt).")
                           .Register(*registry_);
  capacity_ = &BuildGauge()
                   .Name("quotad_capacity_units")
                   .Help("Capacity of each limit.")
                   .Register(*registry_);
  window_ = &BuildGauge()
                 .Name("quotad_window_seconds")
                 .Help("Length of each limit's window (refill time of a token bucket).")
                 .Register(*registry_);
  reset_ = &BuildGauge()
                .Name("quotad_reset_timestamp_seconds")
                .Help("Unix time at which each limit's window ends or its next unit frees.")
                .Register(*registry_);
  latency_ = &BuildHistogram()
                  .Name("quotad_decision_latency_seconds")
                  .Help("Time from a call's arrival in its handler to its answer, by method.")
                  .Register(*registry_);
}

Metrics::~Metrics() = default;

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Create(const std::string& listen,
                                                          const MetricsHttpOptions& http) {
  if (http.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_threads=", http.threads, " must be at least 1"));
  }
  if (http.request_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics_request_timeout=",
                                                   absl::FormatDuration(http.request_timeout),
                                                   " must be positive"));
  }
  std::unique_ptr<Metrics> m(new Metrics());
  if (listen.empty()) return m;
  try {
    // civetweb's options: a pool of workers, and a bound on every read and write of a request
    // (a client that opens a connection and sends nothing holds a worker only that long). The
    // status page answers its paths first (HttpPages).
    HttpPages::Binding bind(&m->pages_);
    m->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{
            "listening_ports", listen, "num_threads", absl::StrCat(http.threads),
            "request_timeout_ms",
            absl::StrCat(std::max<int64_t>(1, absl::ToInt64Milliseconds(http.request_timeout)))},
        HttpPages::Callbacks());
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  const std::vector<int> ports = m->exposer_->GetListeningPorts();
  m->port_ = ports.empty() ? 0 : ports.front();
  return m;
}

void Metrics::OnLimitHit(absl::string_view limit) {
  CachedCounter(limit_hits_, "limit", limit).Increment();
}

void Metrics::SetResource(absl::string_view resource, int64_t in_use) {
  resource_in_use_->Add({{"resource", std::string(resource)}}).Set(static_cast<double>(in_use));
}

void Metrics::SetResourceLimit(absl::string_view resource, int64_t limit) {
  resource_limit_->Add({{"resource", std::string(resource)}}).Set(static_cast<double>(limit));
}

prometheus::Counter& Metrics::CachedCounter(prometheus::Family<prometheus::Counter>* family,
                                            absl::string_view k1, absl::string_view v1,
                                            absl::string_view k2, absl::string_view v2,
                                            absl::string_view k3, absl::string_view v3) {
  const std::string key =
      absl::StrCat(reinterpret_cast<uintptr_t>(family), "\x1f", v1, "\x1f", v2, "\x1f", v3);
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    if (auto it = counters_.find(key); it != counters_.end()) return *it->second;
  }
  prometheus::Labels labels{{std::string(k1), std::string(v1)}};
  if (!k2.empty()) labels.emplace(std::string(k2), std::string(v2));
  if (!k3.empty()) labels.emplace(std::string(k3), std::string(v3));
  prometheus::Counter& c = family->Add(labels);  // returns the existing series if any
  absl::MutexLock lock(&cache_mu_);
  counters_.emplace(key, &c);
  return c;
}

prometheus::Histogram& Metrics::LatencyFor(absl::string_view method) {
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    if (auto it = latencies_.find(method); it != latencies_.end()) return *it->second;
  }
  prometheus::Histogram& h = latency_->Add({{"method", std::string(method)}}, LatencyBuckets());
  absl::MutexLock lock(&cache_mu_);
  latencies_.emplace(method, &h);
  return h;
}

void Metrics::OnDecision(absl::string_view method, absl::string_view credential,
                         absl::string_view feature, bool granted, absl::string_view limited_by,
                         absl::Duration latency) {
  CachedCounter(decisions_, "credential", credential, "feature", feature, "result",
                granted ? "granted" : "denied")
      .Increment();
  if (!granted && !limited_by.empty()) {
    CachedCounter(denials_, "credential", credential, "limit", limited_by).Increment();
  }
  LatencyFor(method).Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::OnDecisions(absl::string_view credential, absl::string_view feature, bool granted,
                          absl::string_view limited_by, int64_t count) {
  if (count <= 0) return;
  CachedCounter(decisions_, "credential", credential, "feature", feature, "result",
                granted ? "granted" : "denied")
      .Increment(static_cast<double>(count));
  if (!granted && !limited_by.empty()) {
    CachedCounter(denials_, "credential", credential, "limit", limited_by)
        .Increment(static_cast<double>(count));
  }
}

void Metrics::OnRequestError(absl::string_view method, absl::string_view code) {
  CachedCounter(request_errors_, "method", method, "code", code).Increment();
}

void Metrics::OnCall(absl::string_view method, absl::Duration latency) {
  LatencyFor(method).Observe(absl::ToDoubleSeconds(latency));
}

void Metrics::OnAuthFailure(absl::string_view reason) {
  CachedCounter(auth_failures_, "reason", reason).Increment();
}

void Metrics::OnWait(absl::string_view credential) {
  CachedCounter(waits_, "credential", credential).Increment();
}

void Metrics::OnFailOpenGrant(absl::string_view credential) {
  CachedCounter(fail_open_grants_, "credential", credential).Increment();
}

void Metrics::OnCooldown(absl::string_view credential, absl::string_view feature,
                         absl::Time until) {
  CachedCounter(cooldowns_, "credential", credential, "feature", feature).Increment();
  absl::MutexLock lock(&cache_mu_);
  absl::Time& t = cooldown_until_[{std::string(credential), std::string(feature)}];
  t = std::max(t, until);
}

void Metrics::OnStoreError(absl::string_view operation) {
  CachedCounter(store_errors_, "operation", operation).Increment();
}

void Metrics::OnConfigReload(bool ok) {
  CachedCounter(reloads_, "result", ok ? "ok" : "rejected").Increment();
}

void Metrics::SetStateFileSizes(int64_t file_bytes, int64_t wal_bytes) {
  state_file_bytes_->Set(static_cast<double>(file_bytes));
  state_wal_bytes_->Set(static_cast<double>(wal_bytes));
}

void Metrics::Refresh(Ledger& ledger, absl::Time now) {
  queue_depth_->Set(static_cast<double>(ledger.waiting()));
  const Policy policy = ledger.policy();
  absl::flat_hash_map<std::string, int64_t> leases;
  for (const CredentialSpec& c : policy.credentials) leases[c.name] = 0;
  for (const auto& [credential, n] : ledger.LeaseCounts()) {
    if (auto it = leases.find(credential); it != leases.end()) it->second += n;
  }

  absl::MutexLock lock(&refresh_mu_);
  absl::flat_hash_set<std::string> seen;
  auto set = [&](prometheus::Family<prometheus::Gauge>* family, prometheus::Labels labels,
                 double value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(refresh_mu_) {
    std::string key = absl::StrCat(reinterpret_cast<uintptr_t>(family));
    for (const auto& [k, v] : labels) absl::StrAppend(&key, "\x1f", k, "=", v);
    auto it = gauges_.find(key);
    if (it == gauges_.end()) {
      it = gauges_.emplace(key, GaugeRef{family, &family->Add(labels)}).first;
    }
    it->second.gauge->Set(value);
    seen.insert(std::move(key));
  };

  for (const auto& [credential, n] : leases) {
    set(live_leases_, {{"credential", credential}}, static_cast<double>(n));
  }
  for (const CredentialSpec& c : policy.credentials) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage(c.name);
    if (!usage.ok()) continue;
    absl::flat_hash_map<std::string, const LimitStatus*> by_limit;  // the smallest remaining
    for (const LimitStatus& l : *usage) {
      if (l.kind == LimitKind::kUnlimited || l.cooldown) continue;
      auto [it, inserted] = by_limit.emplace(l.name, &l);
      if (!inserted && l.remaining < it->second->remaining) it->second = &l;
    }
    absl::flat_hash_map<std::string, absl::Duration> windows;
    for (const FeatureSpec& f : c.features) {
      for (const LimitSpec& l : f.limits) {
        windows[absl::StrCat(f.name, ".", l.name)] = WindowLength(l, now);
      }
    }
    for (const auto& [limit, l] : by_limit) {
      set(remaining_, {{"credential", c.name}, {"limit", limit}}, static_cast<double>(l->remaining));
      set(capacity_, {{"credential", c.name}, {"limit", limit}}, static_cast<double>(l->capacity));
      set(outside_estimate_, {{"credential", c.name}, {"limit", limit}},
          static_cast<double>(l->outside_estimate));
      if (auto it = windows.find(limit); it != windows.end() && it->second > absl::ZeroDuration()) {
        set(window_, {{"credential", c.name}, {"limit", limit}}, absl::ToDoubleSeconds(it->second));
      }
      if (l->reset != absl::InfiniteFuture() && l->reset != absl::InfinitePast()) {
        set(reset_, {{"credential", c.name}, {"limit", limit}},
            absl::ToDoubleSeconds(l->reset - absl::UnixEpoch()));
      }
    }
  }
  std::vector<std::pair<std::pair<std::string, std::string>, absl::Time>> cooldowns;
  {
    absl::MutexLock cache_lock(&cache_mu_);
    absl::erase_if(cooldown_until_,
                   [&](const auto& kv) { return !leases.contains(kv.first.first); });
    cooldowns.assign(cooldown_until_.begin(), cooldown_until_.end());
  }
  for (const auto& [key, until] : cooldowns) {
    set(cooldown_active_, {{"credential", key.first}, {"feature", key.second}},
        until > now ? 1.0 : 0.0);
  }

  absl::erase_if(gauges_, [&](const auto& kv) {
    if (seen.contains(kv.first)) return false;
    kv.second.family->Remove(kv.second.gauge);
    return true;
  });
}

std::string Metrics::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace quotad

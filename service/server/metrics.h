#ifndef QUOTAD_SERVICE_SERVER_METRICS_H_
#define QUOTAD_SERVICE_SERVER_METRICS_H_

// Prometheus metrics of the server (prometheus-cpp), served over HTTP at /metrics.
//
// Label values are bounded by the configuration: credential, feature and limit labels are set
// only from decisions the ledger made (so the names exist in the policy), never from a request
// that failed validation; scopes are never a label. Gauges are refreshed from the ledger by
// Refresh(), which the server calls periodically; series of credentials that a reload removed are
// dropped at the next refresh.
//
//   quotad_decisions_total{credential,feature,result="granted|denied"}   counter
//   quotad_denials_total{credential,limit}                               counter
//   quotad_request_errors_total{method,code}                             counter
//   quotad_auth_failures_total{reason="unauthenticated|permission_denied"} counter
//   quotad_waits_total{credential}                                       counter
//   quotad_fail_open_grants_total{credential}                            counter (shared mode)
//   quotad_queue_depth                                                   gauge
//   quotad_live_leases{credential}                                       gauge
//   quotad_cooldowns_total{credential,feature}                           counter
//   quotad_cooldown_active{credential,feature}                           gauge (0/1)
//   quotad_remaining_units{credential,limit}                             gauge
//   quotad_outside_estimate_units{credential,limit}                      gauge
//   quotad_capacity_units{credential,limit}                              gauge
//   quotad_window_seconds{credential,limit}                              gauge (length of window)
//   quotad_reset_timestamp_seconds{credential,limit}                     gauge (unix time)
//   quotad_decision_latency_seconds{method}                              histogram
//   quotad_store_errors_total{operation}                                 counter
//   quotad_config_reloads_total{result="ok|rejected"}                    counter
//   quotad_limit_hits_total{limit}                                       counter
//   quotad_resource_in_use{resource}                                     gauge
//   quotad_resource_limit{resource}                                      gauge
//   quotad_state_file_bytes                                              gauge
//   quotad_state_wal_bytes                                               gauge
//
// quotad_limit_hits_total and quotad_resource_* cover quotad's own bounds (SECURITY.md lists them): every time a caller is
// refused because of one, quotad_limit_hits_total{limit} counts it; the resources a caller can
// make quotad hold report their use and their limit under the same name.
//
// Scoped limits report the smallest remaining of their scopes (and that scope's reset). Unlimited
// limits are left out of the remaining/capacity gauges; concurrency limits have no window, and a
// limit with nothing pending no reset.
//
// Pages other than /metrics (the status page) are served on the same listener through pages().
//
// Thread-safe. Owns its registry and HTTP listener.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/ledger.h"
#include "service/server/http_pages.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace quotad {

// How the HTTP endpoint serves: enough worker threads that one slow or half-open client does not
// stall the scrape, and a timeout on each request's reads and writes.
struct MetricsHttpOptions {
  int threads = 4;
  absl::Duration request_timeout = absl::Seconds(5);
};

class Metrics {
 public:
  // `listen` is host:port for the HTTP endpoint ("127.0.0.1:9090"; port 0 picks one); empty
  // keeps the registry without serving it. kUnavailable when the address cannot be bound;
  // kInvalidArgument for http.threads < 1 or a request_timeout not positive.
  static absl::StatusOr<std::unique_ptr<Metrics>> Create(
      const std::string& listen, const MetricsHttpOptions& http = MetricsHttpOptions());
  ~Metrics();

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The bound HTTP port; 0 without a listener.
  int port() const { return port_; }

  // A decision the ledger made on `credential`/`feature` (both known to the policy).
  // `limited_by` is "feature.limit" when denied. `method` is "Acquire" (or "AcquireWait").
  void OnDecision(absl::string_view method, absl::string_view credential,
                  absl::string_view feature, bool granted, absl::string_view limited_by,
                  absl::Duration latency);
  // `count` decisions of one AcquireBatch with the same outcome, counted at once (the batch's
  // latency is the call's, OnCall("AcquireBatch"); its items add none to "Acquire").
  void OnDecisions(absl::string_view credential, absl::string_view feature, bool granted,
                   absl::string_view limited_by, int64_t count);
  // A call that ended with an error status (code as absl::StatusCodeToString), any method.
  void OnRequestError(absl::string_view method, absl::string_view code);
  // Latency of any other call that reached its handler (Release, Renew, Report, Admin ...).
  void OnCall(absl::string_view method, absl::Duration latency);
  // A refused caller: reason "unauthenticated" or "permission_denied".
  void OnAuthFailure(absl::string_view reason);
  // A request parked in the wait queue of a known credential.
  void OnWait(absl::string_view credential);
  // Shared mode: an Acquire granted without Redis (a fail_open profile while Redis is down).
  void OnFailOpenGrant(absl::string_view credential);
  // A throttle answer put `feature` of `credential` into cooldown until `until`.
  void OnCooldown(absl::string_view credential, absl::string_view feature, absl::Time until);
  // The store failed an operation ("reserve", "lease", "release", "restore", ...).
  void OnStoreError(absl::string_view operation);
  void OnConfigReload(bool ok);
  // A caller refused by one of quotad's own limits (`limit` is a fixed name such as
  // "waiters_per_identity", never caller input).
  void OnLimitHit(absl::string_view limit);
  // How much of a bounded resource is in use now, and its limit (fixed names, as above).
  void SetResource(absl::string_view resource, int64_t in_use);
  void SetResourceLimit(absl::string_view resource, int64_t limit);
  // Sizes on disk of the --state file and of its WAL (set with the other gauges).
  void SetStateFileSizes(int64_t file_bytes, int64_t wal_bytes);

  // Re-reads the gauges from `ledger`: queue depth, live leases, remaining and capacity of every
  // limit of every configured credential, active cooldowns at `now`.
  void Refresh(Ledger& ledger, absl::Time now);

  // The whole registry in the Prometheus text format (what /metrics serves).
  std::string Serialize() const;

  // Other pages on the metrics listener; see http_pages.h.
  HttpPages& pages() { return pages_; }

 private:
  Metrics();
  prometheus::Counter& CachedCounter(prometheus::Family<prometheus::Counter>* family,
                                     absl::string_view k1, absl::string_view v1,
                                     absl::string_view k2 = {}, absl::string_view v2 = {},
                                     absl::string_view k3 = {}, absl::string_view v3 = {});
  prometheus::Histogram& LatencyFor(absl::string_view method);

  std::shared_ptr<prometheus::Registry> registry_;
  HttpPages pages_;  // before exposer_: outlives the listener's threads
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;

  prometheus::Family<prometheus::Counter>* decisions_;
  prometheus::Family<prometheus::Counter>* denials_;
  prometheus::Family<prometheus::Counter>* request_errors_;
  prometheus::Family<prometheus::Counter>* auth_failures_;
  prometheus::Family<prometheus::Counter>* waits_;
  prometheus::Family<prometheus::Counter>* fail_open_grants_;
  prometheus::Family<prometheus::Counter>* cooldowns_;
  prometheus::Family<prometheus::Counter>* store_errors_;
  prometheus::Family<prometheus::Counter>* reloads_;
  prometheus::Family<prometheus::Counter>* limit_hits_;
  prometheus::Family<prometheus::Gauge>* resource_in_use_;
  prometheus::Family<prometheus::Gauge>* resource_limit_;
  prometheus::Family<prometheus::Gauge>* queue_depth_family_;
  prometheus::Family<prometheus::Gauge>* live_leases_;
  prometheus::Family<prometheus::Gauge>* cooldown_active_;
  prometheus::Family<prometheus::Gauge>* remaining_;
  prometheus::Family<prometheus::Gauge>* outside_estimate_;
  prometheus::Family<prometheus::Gauge>* capacity_;
  prometheus::Family<prometheus::Gauge>* window_;
  prometheus::Family<prometheus::Gauge>* reset_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* state_file_bytes_;
  prometheus::Gauge* state_wal_bytes_;

  // Counters by family and label values, so the hot path does not rebuild label maps.
  mutable absl::Mutex cache_mu_;
  absl::flat_hash_map<std::string, prometheus::Counter*> counters_ ABSL_GUARDED_BY(cache_mu_);
  absl::flat_hash_map<std::string, prometheus::Histogram*> latencies_ ABSL_GUARDED_BY(cache_mu_);

  // Cooldowns seen, and gauges set by the last Refresh (to drop the ones no longer configured).
  absl::Mutex refresh_mu_;
  absl::flat_hash_map<std::pair<std::string, std::string>, absl::Time> cooldown_until_
      ABSL_GUARDED_BY(cache_mu_);
  struct GaugeRef {
    prometheus::Family<prometheus::Gauge>* family;
    prometheus::Gauge* gauge;
  };
  absl::flat_hash_map<std::string, GaugeRef> gauges_ ABSL_GUARDED_BY(refresh_mu_);
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_METRICS_H_

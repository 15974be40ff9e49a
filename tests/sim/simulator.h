#ifndef QUOTAD_TESTS_SIM_SIMULATOR_H_
#define QUOTAD_TESTS_SIM_SIMULATOR_H_

// A deterministic, event-driven simulation of many workers sharing one credential through
// quotad's Ledger, against a model of the provider's own enforcement (upstream.h).
//
// Time is a FakeClock moved by an event queue ordered by (time, insertion order); nothing
// sleeps. Each worker loops: pick a job, Acquire; when denied, wake again at retry_at; when
// granted, the request reaches the provider (at once, or after a network delay), holds the
// provider busy for the job's latency (renewing its lease meanwhile when asked), then the
// worker releases the lease with the units the provider actually charged and starts over.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "service/core/policy.h"
#include "tests/sim/upstream.h"

namespace quotad::sim {

// One request a worker wants to make.
struct Job {
  std::string feature;     // quotad feature to Acquire
  std::string endpoint;    // provider endpoint it calls
  int64_t cost = 1;        // units acquired from quotad
  int64_t charged = 1;     // units the provider will charge (<= cost; bulk calls charge less)
  absl::Duration latency;  // how long the provider takes to answer
};

// Another tool using the same key without quotad: it calls the provider model directly, one
// unit per request, and quotad learns of it only through the headers of its own workers'
// answers (when they Report them). A throttled outside request is dropped, not retried, so the
// outside tool tries at the same instants in every run of a scenario.
struct OutsideTraffic {
  std::string endpoint;
  double share = 0;  // its mean rate as a fraction of the binding capacity, for the table
  // Time from one burst of outside requests to the next. Drawn from the outside tool's own
  // random stream (seeded from Scenario::seed), independent of the workers'.
  std::function<absl::Duration(std::mt19937_64& rng)> next_gap;
  // The first burst at start + first; InfiniteDuration: at start + next_gap().
  absl::Duration first = absl::InfiniteDuration();
  int burst = 1;                                        // requests per burst
  absl::Duration burst_spacing = absl::Milliseconds(100);  // between requests of a burst
  absl::Duration latency = absl::Milliseconds(200);  // how long each is in flight
};

struct Scenario {
  std::string name;
  const Policy* policy = nullptr;  // must outlive Run()
  std::string credential;
  // A fresh model of the provider; called once for the simulation and once per ideal endpoint.
  std::function<std::unique_ptr<Upstream>()> upstream;
  // The denominator: for each endpoint, an ideal client alone against a fresh provider sends
  // cost-1 requests whenever the provider would accept one (zero latency, so an in-flight cap
  // never binds). Their sum is "units the provider would have allowed".
  std::vector<std::string> ideal_endpoints;
  int workers = 64;
  absl::Time start;
  absl::Time end;  // simulated span is [start, end)
  uint64_t seed = 42;
  // The next job of `worker`. Called when the previous one was granted.
  std::function<Job(int worker, std::mt19937_64& rng)> next_job;
  // Delay between quotad's grant and the request's arrival at the provider; unset: none.
  std::function<absl::Duration(std::mt19937_64& rng)> network_delay;
  // Renew the lease every ttl/2 while the request is in flight (concurrency leases).
  bool renew = false;
  // Traffic on the same key from outside quotad; unset: none.
  std::optional<OutsideTraffic> outside;
  // Workers pass every answer they get (status, headers, body) to Ledger::Report at the
  // simulated instant they see it: a throttle at once, an accepted request when it completes.
  bool report_answers = false;
};

struct Report {
  std::string name;
  absl::Duration span;
  int64_t grants = 0;            // Acquires granted
  int64_t denials = 0;           // Acquires denied (workers then waited for retry_at)
  int64_t units_charged = 0;     // units the provider accepted and charged
  int64_t throttles = 0;         // provider answers 429/420
  int64_t units_allowed = 0;     // the ideal client's units over the same span
  int64_t engine_calls = 0;      // Acquire + Release + Renew
  int64_t expired_releases = 0;  // Release of a lease that had expired (NotFound)
  int64_t max_in_flight = 0;     // most requests the provider held at once
  // Without outside traffic: units_charged / units_allowed. With it: units_charged /
  // (units_allowed - outside_charged), the part of what the provider allows that the outside
  // tool left to quotad's workers. In percent.
  double utilization = 0;
  absl::Duration wall;           // real time the run took (simulation and ideal)
  // Denials by the limit that denied ("feature.limit"), and the simulated time workers slept on
  // them in total.
  std::map<std::string, int64_t> denials_by_limit;
  std::map<std::string, absl::Duration> waited_by_limit;
  std::vector<std::string> throttle_samples;  // the first few throttles, for the failure message
  std::vector<absl::Time> throttle_times;     // every worker throttle, in order
  std::vector<std::string> throttle_rules;    // the provider rule that refused each of them
  std::map<std::string, int64_t> throttles_by_rule;  // by the provider rule that refused
  // Outside traffic.
  double outside_share = 0;
  int64_t outside_sent = 0;
  int64_t outside_charged = 0;    // units the provider accepted from the outside tool
  int64_t outside_throttled = 0;  // outside requests the provider refused
  // Ledger::Report.
  bool report_answers = false;
  int64_t reports = 0;            // Report calls
  int64_t reports_adopted = 0;    // Reports that raised a counter to the upstream's count
  int64_t report_warnings = 0;    // warnings Report returned (the models send valid headers)
  std::vector<std::string> warning_samples;
  std::vector<std::string> errors;            // engine errors and impossible decisions
};

Report Run(const Scenario& scenario);

// One line per report, with a header.
std::string FormatTable(const std::vector<Report>& reports);

// The outside-traffic table: provider, outside share, Report on/off, throttles, utilization.
std::string FormatOutsideTable(const std::vector<Report>& reports);

}  // namespace quotad::sim

#endif  // QUOTAD_TESTS_SIM_SIMULATOR_H_

#include "tests/sim/simulator.h"

#include <algorithm>
#include <chrono>
#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"

namespace quotad::sim {
namespace {

constexpr int kMaxSamples = 5;
// A worker whose request was throttled waits this long (VirusTotal's documented back-off start).
constexpr absl::Duration kThrottleBackoff = absl::Seconds(60);

enum class EventType : uint8_t { kWake, kArrive, kRespond, kRenew, kOutside, kOutsideDone };

struct Event {
  int64_t at_ns;
  uint64_t seq;
  int32_t worker;
  EventType type;
  uint64_t generation;  // kRespond/kRenew: the grant they belong to
};

struct Later {
  bool operator()(const Event& a, const Event& b) const {
    return a.at_ns != b.at_ns ? a.at_ns > b.at_ns : a.seq > b.seq;
  }
};

struct Worker {
  Job job;
  bool has_job = false;
  bool in_flight = false;
  LeaseId lease;
  absl::Duration ttl;
  uint64_t generation = 0;  // bumped on every grant and response
  std::string holder;
  Upstream::Answer answer;  // what the provider answered the request in flight
  absl::Time sent;          // when that request reached the provider
};

std::string Fmt(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%E3S", t, absl::UTCTimeZone());
}

class Simulation {
 public:
  explicit Simulation(const Scenario& s)
      : s_(s), clock_(s.start), rng_(s.seed), outside_rng_(s.seed ^ 0x0075'1de0'0075'1de0ULL) {}

  void Run(Report* report) {
    r_ = report;
    LedgerOptions options;
    options.jitter_seed = s_.seed | 1;  // back-off jitter reproducible run to run
    auto ledger = Ledger::Create(*s_.policy, &clock_, options);
    if (!ledger.ok()) {
      r_->errors.push_back(absl::StrCat("Ledger::Create: ", ledger.status().ToString()));
      return;
    }
    ledger_ = std::move(*ledger);
    upstream_ = s_.upstream();
    workers_.resize(s_.workers);
    for (int w = 0; w < s_.workers; ++w) {
      workers_[w].holder = absl::StrCat("worker-", w);
      Schedule(s_.start, w, EventType::kWake, 0);
    }
    if (s_.outside) {
      const absl::Duration first = s_.outside->first == absl::InfiniteDuration()
                                       ? s_.outside->next_gap(outside_rng_)
                                       : s_.outside->first;
      Schedule(s_.start + first, -1, EventType::kOutside, 0);
    }
    const int64_t end_ns = absl::ToUnixNanos(s_.end);
    while (!queue_.empty() && r_->errors.empty()) {
      const Event e = queue_.top();
      if (e.at_ns >= end_ns) break;
      queue_.pop();
      clock_.Set(absl::FromUnixNanos(e.at_ns));
      switch (e.type) {
        case EventType::kWake:
          Wake(e.worker);
          break;
        case EventType::kArrive:
          Arrive(e.worker);
          break;
        case EventType::kRespond:
          Respond(e.worker);
          break;
        case EventType::kRenew:
          if (e.generation == workers_[e.worker].generation) Renew(e.worker);
          break;
        case EventType::kOutside:
          Outside();
          break;
        case EventType::kOutsideDone:
          upstream_->Finish();
          break;
      }
    }
  }

 private:
  void Schedule(absl::Time at, int worker, EventType type, uint64_t generation) {
    queue_.push(Event{absl::ToUnixNanos(at), seq_++, worker, type, generation});
  }

  void Error(std::string what) {
    r_->errors.push_back(absl::StrCat(Fmt(clock_.Now()), " ", std::move(what)));
  }

  void Wake(int w) {
    Worker& wk = workers_[w];
    if (!wk.has_job) {
      wk.job = s_.next_job(w, rng_);
      wk.has_job = true;
    }
    AcquireRequest req;
    req.credential = s_.credential;
    req.feature = wk.job.feature;
    req.cost = wk.job.cost;
    req.holder = wk.holder;
    req.want_limits = false;
    ++r_->engine_calls;
    absl::StatusOr<Decision> d = ledger_->Acquire(req);
    if (!d.ok()) return Error(absl::StrCat("Acquire: ", d.status().ToString()));
    const absl::Time now = clock_.Now();
    if (!d->granted) {
      ++r_->denials;
      if (d->retry_at <= now || d->retry_at == absl::InfiniteFuture()) {
        return Error(absl::StrCat("denied by ", d->limited_by, " with retry_at ", Fmt(d->retry_at),
                                  " not in the future"));
      }
      ++r_->denials_by_limit[d->limited_by];
      r_->waited_by_limit[d->limited_by] += std::min(d->retry_at, s_.end) - now;
      Schedule(d->retry_at, w, EventType::kWake, 0);
      return;
    }
    ++r_->grants;
    wk.has_job = false;
    wk.lease = d->lease_id;
    wk.ttl = d->lease_expiry - now;
    ++wk.generation;
    if (s_.renew) Schedule(now + wk.ttl / 2, w, EventType::kRenew, wk.generation);
    if (s_.network_delay) {
      Schedule(now + s_.network_delay(rng_), w, EventType::kArrive, wk.generation);
    } else {
      Arrive(w);
    }
  }

  // The outside tool's next request, straight to the provider.
  void Outside() {
    const absl::Time now = clock_.Now();
    ++r_->outside_sent;
    if (upstream_->Send(now, s_.outside->endpoint, 1).status == 200) {
      ++r_->outside_charged;
      Schedule(now + s_.outside->latency, -1, EventType::kOutsideDone, 0);
    } else {
      ++r_->outside_throttled;
    }
    if (++outside_in_burst_ < s_.outside->burst) {
      Schedule(now + s_.outside->burst_spacing, -1, EventType::kOutside, 0);
      return;
    }
    outside_in_burst_ = 0;
    Schedule(now + s_.outside->next_gap(outside_rng_), -1, EventType::kOutside, 0);
  }

  // Passes what worker `w` saw to the ledger, now.
  void ReportAnswer(int w) {
    if (!s_.report_answers) return;
    const Worker& wk = workers_[w];
    UpstreamAnswer ua;
    ua.credential = s_.credential;
    ua.feature = wk.job.feature;
    ua.http_status = wk.answer.status;
    ua.headers = wk.answer.headers;
    ua.body = wk.answer.body;
    ua.observed_at = clock_.Now();
    ua.sent_at = wk.sent;
    ++r_->reports;
    ++r_->engine_calls;
    absl::StatusOr<ReportResult> res = ledger_->Report(ua);
    if (!res.ok()) return Error(absl::StrCat("Report: ", res.status().ToString()));
    if (!res->adopted.empty()) ++r_->reports_adopted;
    r_->report_warnings += static_cast<int64_t>(res->warnings.size());
    for (const std::string& warning : res->warnings) {
      if (r_->warning_samples.size() < kMaxSamples) {
        r_->warning_samples.push_back(absl::StrCat(Fmt(clock_.Now()), " ", warning));
      }
    }
  }

  void Arrive(int w) {
    Worker& wk = workers_[w];
    const absl::Time now = clock_.Now();
    wk.answer = upstream_->Send(now, wk.job.endpoint, wk.job.charged);
    wk.sent = now;
    const Upstream::Answer& a = wk.answer;
    if (a.status != 200) {
      ++r_->throttles;
      r_->throttle_times.push_back(now);
      r_->throttle_rules.push_back(a.rule);
      ++r_->throttles_by_rule[a.rule];
      if (r_->throttle_samples.size() < kMaxSamples) {
        r_->throttle_samples.push_back(absl::StrCat(Fmt(now), " ", wk.holder, " ", wk.job.endpoint,
                                                    " cost ", wk.job.charged, ": HTTP ", a.status,
                                                    " by ", a.rule));
      }
      // The provider charged nothing: tell quotad what it said, give everything back, then back
      // off.
      ++wk.generation;
      ReportAnswer(w);
      ReleaseLease(w, 0);
      Schedule(now + kThrottleBackoff, w, EventType::kWake, 0);
      return;
    }
    r_->units_charged += wk.job.charged;
    r_->max_in_flight = std::max(r_->max_in_flight, upstream_->in_flight());
    wk.in_flight = true;
    Schedule(now + wk.job.latency, w, EventType::kRespond, wk.generation);
  }

  void Respond(int w) {
    Worker& wk = workers_[w];
    upstream_->Finish();
    wk.in_flight = false;
    ++wk.generation;  // stale renewals
    ReportAnswer(w);
    ReleaseLease(w, wk.job.charged);
    Wake(w);
  }

  void ReleaseLease(int w, int64_t used) {
    ++r_->engine_calls;
    absl::StatusOr<ReleaseResult> rel = ledger_->Release(workers_[w].lease, used);
    if (absl::IsNotFound(rel.status())) {
      ++r_->expired_releases;
    } else if (!rel.ok()) {
      Error(absl::StrCat("Release: ", rel.status().ToString()));
    }
  }

  void Renew(int w) {
    Worker& wk = workers_[w];
    ++r_->engine_calls;
    absl::StatusOr<absl::Time> expiry = ledger_->Renew(wk.lease, wk.ttl);
    if (!expiry.ok()) return Error(absl::StrCat("Renew: ", expiry.status().ToString()));
    Schedule(clock_.Now() + wk.ttl / 2, w, EventType::kRenew, wk.generation);
  }

  const Scenario& s_;
  FakeClock clock_;
  std::mt19937_64 rng_;
  std::mt19937_64 outside_rng_;
  int outside_in_burst_ = 0;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<Upstream> upstream_;
  std::vector<Worker> workers_;
  std::priority_queue<Event, std::vector<Event>, Later> queue_;
  uint64_t seq_ = 0;
  Report* r_ = nullptr;
};

int64_t IdealUnits(const Scenario& s) {
  int64_t units = 0;
  for (const std::string& endpoint : s.ideal_endpoints) {
    std::unique_ptr<Upstream> up = s.upstream();
    absl::Time t = s.start;
    for (;;) {
      t = up->Earliest(t, endpoint, 1);
      if (t >= s.end) break;
      if (up->Send(t, endpoint, 1).status != 200) break;  // cannot happen: Earliest said yes
      up->Finish();
      ++units;
    }
  }
  return units;
}

}  // namespace

Report Run(const Scenario& s) {
  const auto wall_start = std::chrono::steady_clock::now();
  Report r;
  r.name = s.name;
  r.span = s.end - s.start;
  r.report_answers = s.report_answers;
  if (s.outside) r.outside_share = s.outside->share;
  Simulation(s).Run(&r);
  r.units_allowed = IdealUnits(s);
  const int64_t left = r.units_allowed - r.outside_charged;
  r.utilization = left > 0 ? 100.0 * r.units_charged / left : 0;
  r.wall = absl::FromChrono(std::chrono::steady_clock::now() - wall_start);
  return r;
}

std::string FormatTable(const std::vector<Report>& reports) {
  std::string out =
      absl::StrFormat("%-34s %7s %9s %9s %9s %9s %8s %10s %8s\n", "scenario", "span", "grants",
                      "charged", "allowed", "util%", "throttle", "engine", "wall");
  for (const Report& r : reports) {
    absl::StrAppendFormat(&out, "%-34s %6.1fd %9d %9d %9d %9.3f %8d %10d %7.2fs\n", r.name,
                          absl::ToDoubleHours(r.span) / 24, r.grants, r.units_charged,
                          r.units_allowed, r.utilization, r.throttles, r.engine_calls,
                          absl::ToDoubleSeconds(r.wall));
  }
  return out;
}

}  // namespace quotad::sim

namespace quotad::sim {

std::string FormatOutsideTable(const std::vector<Report>& reports) {
  std::string out = absl::StrFormat("%-28s %7s %7s %6s %9s %9s %9s %9s %9s %8s %7s\n", "provider",
                                    "outside", "report", "span", "throttle", "quotad", "outside",
                                    "allowed", "left", "util%", "wall");
  for (const Report& r : reports) {
    absl::StrAppendFormat(&out, "%-28s %6.0f%% %7s %5.1fd %9d %9d %9d %9d %9d %8.3f %6.2fs\n",
                          r.name, 100 * r.outside_share, r.report_answers ? "on" : "off",
                          absl::ToDoubleHours(r.span) / 24, r.throttles, r.units_charged,
                          r.outside_charged, r.units_allowed, r.units_allowed - r.outside_charged,
                          r.utilization, absl::ToDoubleSeconds(r.wall));
  }
  return out;
}

}  // namespace quotad::sim

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

enum class EventType : uint8_t { kWake, kArrive, kRespond, kRenew };

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
};

std::string Fmt(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%E3S", t, absl::UTCTimeZone());
}

class Simulation {
 public:
  explicit Simulation(const Scenario& s) : s_(s), clock_(s.start), rng_(s.seed) {}

  void Run(Report* report) {
    r_ = report;
    auto ledger = Ledger::Create(*s_.policy, &clock_);
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

  void Arrive(int w) {
    Worker& wk = workers_[w];
    const absl::Time now = clock_.Now();
    const Upstream::Answer a = upstream_->Send(now, wk.job.endpoint, wk.job.charged);
    if (a.status != 200) {
      ++r_->throttles;
      if (r_->throttle_samples.size() < kMaxSamples) {
        r_->throttle_samples.push_back(absl::StrCat(Fmt(now), " ", wk.holder, " ", wk.job.endpoint,
                                                    " cost ", wk.job.charged, ": HTTP ", a.status,
                                                    " by ", a.rule));
      }
      // The provider charged nothing: give everything back, then back off.
      ++wk.generation;
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
  Simulation(s).Run(&r);
  r.units_allowed = IdealUnits(s);
  r.utilization = r.units_allowed > 0 ? 100.0 * r.units_charged / r.units_allowed : 0;
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

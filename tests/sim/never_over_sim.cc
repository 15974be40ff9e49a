#include "tests/sim/never_over_sim.h"

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "service/core/clock.h"
#include "service/core/journal.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/store/sqlite_journal.h"
#include "tests/sim/never_over_oracle.h"
#include "tests/support/temp_dir.h"

namespace quotad::sim {
namespace {

constexpr int64_t kStart = 1767225600LL * 1000000000LL + 12345;  // 2026-01-01 UTC, a bit after

int64_t Ns(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }
int64_t Ns(absl::Time t) {
  if (t == absl::InfiniteFuture()) return INT64_MAX;
  if (t == absl::InfinitePast()) return INT64_MIN;
  return absl::ToUnixNanos(t);
}

enum Kind {
  kAdvance,
  kAdvanceToBoundary,
  kAcquire,
  kAcquireWait,
  kCancel,
  kRelease,
  kRenew,
  kRenewAtExpiry,
  kRenewRace,
  kReleaseRace,
  kReportOutside,
  kReportThrottle,
  kReload,
  kCrash,
  kFlushJournal,
  kSweep,
  kCompact,
  kPump,
  kStepWall,
  kReset,  // see GenerateOps: this kind and those after it are weighed on streams of their own
  kAcquireAll,
  kNumKinds
};

static_assert(kNumKinds == kAcquireAll + 1, "new kinds go after kReset, weighed like it");

// Kinds GenerateOps leaves out (DisableOpKinds).
std::vector<int>& DisabledKinds() {
  static std::vector<int> kinds;
  return kinds;
}

const char* kKindNames[] = {"advance",      "advance_to_boundary", "acquire",   "acquire_wait",
                            "cancel",       "release",             "renew",     "renew_at_expiry",
                            "renew_race",   "release_race",        "report_outside",
                            "report_throttle", "reload",           "crash",     "flush_journal",
                            "sweep",        "compact",             "pump",
                            "step_wall",    "reset",               "acquire_all"};

// Time the simulator owns. A FakeClock, plus a one-shot hook run at the next clock read: the read
// returns the time from before the hook, as if the reader was preempted right after reading.
// (When Clock gains a monotonic reading, it is read from the same FakeClock; a wall-clock step
// then moves only the wall time.)
class SimClock : public Clock {
 public:
  explicit SimClock(int64_t start) : fake_(absl::FromUnixNanos(start)) {}
  absl::Time Now() const override {
    const absl::Time t = fake_.Now();
    if (hook_) {
      std::function<void()> h = std::move(hook_);
      hook_ = nullptr;
      h();
    }
    return t;
  }
  absl::Duration Monotonic() const override { return fake_.Monotonic(); }
  std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) override {
    return fake_.CreateTimer(std::move(callback));
  }
  // True time: what durations are measured on (the wall clock may step away from it).
  int64_t now() const { return absl::ToInt64Nanoseconds(fake_.Monotonic()); }
  void Set(int64_t t) { fake_.Advance(absl::Nanoseconds(t - now())); }
  void StepWall(int64_t d) { fake_.StepWall(absl::Nanoseconds(d)); }
  int64_t wall_offset() const { return absl::ToUnixNanos(fake_.Now()) - now(); }
  void Arm(std::function<void()> hook) { hook_ = std::move(hook); }
  bool armed() const { return static_cast<bool>(hook_); }

 private:
  FakeClock fake_;
  mutable std::function<void()> hook_;
};

// The journal as a kill -9 sees it: synchronous writes pass through at once; the deferred ones
// (refund-only leases, releases) wait here until the simulator lets a prefix of them through
// (the store's group commit); a crash drops what is still here.
class KillNineJournal : public Journal {
 public:
  struct Deferred {
    bool is_delete = false;
    JournalLease lease;
    std::string id;
  };
  explicit KillNineJournal(Journal* inner) : inner_(inner) {}
  absl::StatusOr<JournalState> Load() override { return inner_->Load(); }
  absl::Status Reserve(const std::vector<Reservation>& r) override { return inner_->Reserve(r); }
  absl::Status PutLease(const JournalLease& lease) override {
    if (lease.holds_slots) return inner_->PutLease(lease);
    buffer_.push_back({false, lease, lease.id});
    return absl::OkStatus();
  }
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override {
    return inner_->RenewLease(id, expiry_ns);
  }
  void DeleteLease(const std::string& id) override { buffer_.push_back({true, {}, id}); }
  absl::Status PutCooldown(const JournalCooldown& c) override { return inner_->PutCooldown(c); }
  absl::Status PutOutside(const JournalOutside& o) override { return inner_->PutOutside(o); }
  absl::Status Compact(int64_t now_ns) override { return inner_->Compact(now_ns); }

  void Release(size_t n) {
    for (size_t i = 0; i < n && !buffer_.empty(); ++i) {
      Deferred d = std::move(buffer_.front());
      buffer_.pop_front();
      if (d.is_delete) {
        inner_->DeleteLease(d.id);
      } else {
        inner_->PutLease(d.lease).IgnoreError();
      }
    }
  }
  std::deque<Deferred> Drop() { return std::exchange(buffer_, {}); }
  size_t buffered() const { return buffer_.size(); }

 private:
  Journal* const inner_;
  std::deque<Deferred> buffer_;
};

// ---- policy generation ----

const absl::Duration kPeriods[] = {absl::Seconds(10), absl::Seconds(30), absl::Minutes(1),
                                   absl::Minutes(5), absl::Hours(1)};

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone z;
  if (!absl::LoadTimeZone(name, &z)) z = absl::UTCTimeZone();
  return z;
}

LimitSpec RandomLimit(std::mt19937_64& rng, const std::string& name, bool allow_concurrency) {
  LimitSpec l;
  l.name = name;
  const int k = static_cast<int>(rng() % (allow_concurrency ? 7 : 6));
  l.capacity = 1 + static_cast<int64_t>(rng() % 10);
  l.period = kPeriods[rng() % 5];
  switch (k) {
    case 0:
    case 5:
      l.kind = LimitKind::kCalendar;
      l.unit = static_cast<CalendarUnit>(1 + rng() % 3);  // minute, hour, day
      if (rng() % 4 == 0) {
        l.zone_name = "America/New_York";
        l.zone = Zone(l.zone_name);
      }
      break;
    case 1:
      l.kind = LimitKind::kRolling;
      break;
    case 2:
      l.kind = LimitKind::kSliding;
      if (rng() % 2 == 0) l.sub_buckets = static_cast<int>(2 + rng() % 6);
      break;
    case 3:
      l.kind = LimitKind::kTokenBucket;
      l.rate = 1 + static_cast<int64_t>(rng() % l.capacity);
      break;
    case 4:
      l.kind = LimitKind::kUnlimited;
      l.capacity = 0;
      if (rng() % 2 == 0) l.unit = CalendarUnit::kDay;
      break;
    case 6:
      l.kind = LimitKind::kConcurrency;
      l.capacity = 1 + static_cast<int64_t>(rng() % 3);
      break;
  }
  if (rng() % 6 == 0 && l.kind != LimitKind::kConcurrency) {
    l.guard = absl::Seconds(1 + static_cast<int64_t>(rng() % 5));
  }
  return l;
}

CredentialSpec RandomPolicy(uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 7);
  CredentialSpec c;
  c.name = "cred";
  c.profile = "sim";
  FeatureSpec requests;
  requests.name = "requests";
  const int n = 1 + static_cast<int>(rng() % 2);
  for (int i = 0; i < n; ++i) requests.limits.push_back(RandomLimit(rng, absl::StrCat("r", i), false));
  FeatureSpec scan;
  scan.name = "scan";
  scan.draws_on = {"requests"};
  scan.limits.push_back(RandomLimit(rng, "s0", false));
  FeatureSpec hunt;
  hunt.name = "hunt";
  hunt.limits.push_back(RandomLimit(rng, "h0", false));
  hunt.limits.back().scoped = true;
  if (hunt.limits.back().kind == LimitKind::kUnlimited) hunt.limits.back().kind = LimitKind::kRolling,
                                                        hunt.limits.back().capacity = 3;
  FeatureSpec jobs;
  jobs.name = "jobs";
  LimitSpec slots;
  slots.name = "slots";
  slots.kind = LimitKind::kConcurrency;
  slots.capacity = 1 + static_cast<int64_t>(rng() % 3);
  slots.scoped = rng() % 4 == 0;
  jobs.limits.push_back(slots);
  jobs.default_lease_ttl = absl::Seconds(5 + static_cast<int64_t>(rng() % 60));
  jobs.max_lease_ttl = absl::Hours(1);
  c.features = {requests, scan, hunt, jobs};
  if (rng() % 6 == 0) {
    // Validation accepts a slow bucket whose burst times its emission passes int64 (issue 11 #8).
    FeatureSpec slow;
    slow.name = "slow";
    LimitSpec b;
    b.name = "bucket";
    b.kind = LimitKind::kTokenBucket;
    b.capacity = 300;
    b.rate = 1;
    b.period = absl::Hours(24 * 366);
    slow.limits.push_back(b);
    c.features.push_back(slow);
  }
  for (FeatureSpec& f : c.features) {
    if (rng() % 3 == 0) {
      f.throttle.initial_backoff = absl::Seconds(1 + static_cast<int64_t>(rng() % 60));
    }
  }
  return c;
}

// One edit of one field of one limit (or of a feature's TTLs).
std::string Mutate(CredentialSpec& c, uint64_t r1, uint64_t r2) {
  std::mt19937_64 rng(r2);
  FeatureSpec& f = c.features[r1 % c.features.size()];
  LimitSpec& l = f.limits[(r1 >> 8) % f.limits.size()];
  const std::string what = absl::StrCat(f.name, ".", l.name, ": ", DescribeLimit(l), " -> ");
  switch ((r1 >> 16) % 10) {
    case 0: {  // kind (and what the new kind needs)
      LimitSpec n = RandomLimit(rng, l.name, l.kind == LimitKind::kConcurrency);
      n.scoped = l.scoped;
      if (f.name == "hunt" && n.kind == LimitKind::kUnlimited) n.kind = LimitKind::kSliding;
      l = n;
      break;
    }
    case 1:
      l.capacity = std::max<int64_t>(1, rng() % 2 ? l.capacity * 2 : l.capacity / 2);
      break;
    case 2:
      if (l.kind == LimitKind::kTokenBucket) {
        l.rate = std::max<int64_t>(1, rng() % 2 ? l.rate * 2 : l.rate / 2);
      } else {
        l.capacity = std::max<int64_t>(1, l.capacity + (rng() % 2 ? 1 : -1));
      }
      break;
    case 3:
      l.period = kPeriods[rng() % 5];
      break;
    case 4:
      l.guard = rng() % 2 ? absl::ZeroDuration() : absl::Seconds(1 + static_cast<int64_t>(rng() % 10));
      break;
    case 5:
      l.scoped = !l.scoped;
      break;
    case 6:
      l.sub_buckets = rng() % 2 ? 0 : static_cast<int>(2 + rng() % 10);
      break;
    case 7:
      f.default_lease_ttl = absl::Seconds(1 + static_cast<int64_t>(rng() % 120));
      f.max_lease_ttl = std::max(f.default_lease_ttl, absl::Seconds(static_cast<int64_t>(rng() % 7200)));
      return absl::StrCat(f.name, " ttl default ", absl::FormatDuration(f.default_lease_ttl),
                          " max ", absl::FormatDuration(f.max_lease_ttl));
    case 8:
      if (l.kind == LimitKind::kCalendar) {
        l.unit = static_cast<CalendarUnit>(1 + rng() % 5);
        l.zone_name = rng() % 2 ? "UTC" : "America/New_York";
        l.zone = Zone(l.zone_name);
      } else {
        l.capacity = std::max<int64_t>(1, l.capacity - 1);
      }
      break;
    case 9:
      l.capacity = 1 + static_cast<int64_t>(rng() % 10);
      l.period = kPeriods[rng() % 5];
      break;
  }
  return what + DescribeLimit(l);
}

std::string DescribePolicy(const CredentialSpec& c) {
  std::string out;
  for (const FeatureSpec& f : c.features) {
    absl::StrAppend(&out, "  ", f.name,
                    f.draws_on.empty() ? "" : absl::StrCat(" (draws_on ", absl::StrJoin(f.draws_on, ","), ")"),
                    " ttl ", absl::FormatDuration(f.default_lease_ttl), ":");
    for (const LimitSpec& l : f.limits) absl::StrAppend(&out, " [", l.name, " ", DescribeLimit(l), "]");
    absl::StrAppend(&out, "\n");
  }
  return out;
}

// ---- the simulator ----

class Sim {
 public:
  Sim(uint64_t seed, bool log)
      : seed_(seed),
        logging_(log),
        clock_(kStart),
        dir_("never-over"),
        path_(dir_.File("state.db")) {
    cred_ = RandomPolicy(seed);
    std::mt19937_64 rng(seed ^ 0xABCDEF);
    const double fractions[] = {0.01, 0.2, 0.5};
    const int64_t blocks[] = {1, 2, 1000};
    reserve_fraction_ = fractions[rng() % 3];
    max_block_ = blocks[rng() % 3];
    oracle_.ApplyPolicy(cred_, clock_.now());
  }
  ~Sim() {
    ledger_.reset();
    journal_.reset();
    sqlite_.reset();
  }

  std::string Start() {
    auto s = SqliteJournal::Open(path_);
    if (!s.ok()) return std::string(s.status().message());
    sqlite_ = std::move(*s);
    journal_ = std::make_unique<KillNineJournal>(sqlite_.get());
    LedgerOptions o;
    o.journal = journal_.get();
    o.reserve_fraction = reserve_fraction_;
    o.max_reserve_block = max_block_;
    o.jitter_seed = seed_ + 1;
    o.wake = [this](absl::Time t) {
      if (t != absl::InfiniteFuture()) wakes_.insert(True(t));
    };
    Policy p;
    p.credentials = {cred_};
    // Every other start (which one first depends on the seed) reads the journal with
    // CreateRestored, on a thread of its own while the policy compiles; the others Create, then
    // Restore. Both must give the same ledger.
    const bool create_restored = (seed_ + starts_++) % 2 == 1;
    if (create_restored) {
      auto l = Ledger::CreateRestored(p, &clock_, o);
      if (!l.ok()) return absl::StrCat("Ledger::CreateRestored: ", l.status().message());
      ledger_ = std::move(*l);
      Log("started with CreateRestored");
      return "";
    }
    auto l = Ledger::Create(p, &clock_, o);
    if (!l.ok()) return absl::StrCat("Ledger::Create: ", l.status().message());
    ledger_ = std::move(*l);
    if (absl::Status st = ledger_->Restore(); !st.ok()) {
      return absl::StrCat("Restore: ", st.message());
    }
    return "";
  }

  RunResult Run(const std::vector<Op>& ops) {
    RunResult r;
    r.policy = absl::StrCat("reserve_fraction=", reserve_fraction_, " max_reserve_block=", max_block_,
                            "\n", DescribePolicy(cred_));
    if (std::string e = Start(); !e.empty()) {
      r.violation = Violation{0, "engine-error", e};
      return r;
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      step_ = static_cast<int>(i);
      line_.clear();
      Execute(ops[i]);
      ++r.ops_run;
      if (logging_) {
        r.log.push_back(absl::StrFormat("#%-4d %-10s %s", ops[i].index, When(clock_.now()), line_));
      }
      if (!target_.empty() && seen_.count(target_)) break;
    }
    r.violation = violation_;
    r.all = violations_;
    if (!target_.empty()) {
      r.violation.reset();
      for (const Violation& v : violations_) {
        if (v.invariant == target_) r.violation = v;
      }
    }
    return r;
  }

 private:
  struct SimLease {
    LeaseId id;
    std::string feature, scope;
    int64_t cost = 0;
    std::optional<int64_t> used;
    bool done = false;
  };
  struct SimWaiter {
    WaitTicket ticket;
    std::string feature, scope;
    int64_t cost = 0;
    int priority = 0;
    std::optional<int64_t> used;
    bool answered = false;
  };
  struct Event {
    uint64_t arrival;
    absl::StatusOr<Decision> result;
  };

  std::string When(int64_t t) const {
    return absl::StrFormat("+%.3fs", static_cast<double>(t - kStart) / 1e9);
  }
  void Log(const std::string& s) {
    if (logging_) absl::StrAppend(&line_, line_.empty() ? "" : "; ", s);
  }
  // Records the first violation of each invariant and goes on, so that one frequent finding
  // does not hide the others.
  void Fail(const std::string& invariant, const std::string& message) {
    Log(absl::StrCat("VIOLATION ", invariant, ": ", message));
    if (seen_.insert(invariant).second) violations_.push_back(Violation{step_, invariant, message});
    if (!violation_) violation_ = violations_.front();
  }

  std::vector<std::string> Features() const {
    std::vector<std::string> out;
    for (const FeatureSpec& f : cred_.features) out.push_back(f.name);
    return out;
  }
  const FeatureSpec* Feature(const std::string& name) const {
    for (const FeatureSpec& f : cred_.features) {
      if (f.name == name) return &f;
    }
    return nullptr;
  }

  // A grant the ledger made: the worker sends what it will use, at once.
  void Granted(const Decision& d, const std::string& feature, const std::string& scope, int64_t cost,
               std::optional<int64_t> used, uint64_t arrival, int priority, int64_t decided_at) {
    const int64_t now = clock_.now();
    const uint64_t n = leases_.size();
    leases_.push_back({d.lease_id, feature, scope, cost, used, false});
    const int64_t units = used.value_or(cost);
    Log(absl::StrCat("granted L", n, " expiry ", When(True(d.lease_expiry)), ", worker sends ",
                     units));
    auto cool = expected_cooldown_.find(feature);
    if (cool != expected_cooldown_.end() && decided_at < cool->second) {
      Fail("cooldown", absl::StrCat("granted ", feature, " at ", When(decided_at),
                                    " inside the Retry-After the upstream gave (until ",
                                    When(cool->second), ")"));
    }
    if (std::string v = oracle_.SendOurs(now, feature, scope, units); !v.empty()) {
      Fail("over-grant", v);
    }
    if (std::string v = oracle_.Grant(n, now, feature, scope, cost, True(d.lease_expiry));
        !v.empty()) {
      Fail("concurrency", v);
    }
    if (std::string v = oracle_.CheckNotPassing(arrival, priority, Touches(cred_, feature, scope), now,
                                                absl::StrCat("request ", feature, scope.empty() ? "" : "/" + scope,
                                                             " cost ", cost));
        !v.empty()) {
      Fail("waiter-passed", v);
    }
  }

  void ProcessEvents() {
    std::vector<Event> events = std::move(events_);
    events_.clear();
    for (const Event& e : events) oracle_.waiters().erase(e.arrival);
    for (Event& e : events) {
      auto it = waiters_.find(e.arrival);
      if (it == waiters_.end()) continue;
      SimWaiter& w = it->second;
      w.answered = true;
      if (!e.result.ok()) {
        Log(absl::StrCat("waiter #", e.arrival, " answered ", e.result.status().ToString()));
      } else if (!e.result->granted) {
        Log(absl::StrCat("waiter #", e.arrival, " denied (", e.result->limited_by, ")"));
      } else {
        Log(absl::StrCat("waiter #", e.arrival, " served"));
        Granted(*e.result, w.feature, w.scope, w.cost, w.used, e.arrival, w.priority, clock_.now());
      }
      waiters_.erase(it);
    }
  }

  void Pump() {
    const absl::Time next = ledger_->Pump();
    if (next != absl::InfiniteFuture()) wakes_.insert(True(next));
    ProcessEvents();
  }

  void AdvanceTo(int64_t target) {
    int spins = 0;
    while (!wakes_.empty() && *wakes_.begin() <= target) {
      const int64_t w = *wakes_.begin();
      wakes_.erase(wakes_.begin());
      if (w > clock_.now()) {
        clock_.Set(w);
        spins = 0;
      } else if (++spins > 20) {
        continue;
      }
      Pump();
    }
    if (target > clock_.now()) clock_.Set(target);
  }

  std::optional<int64_t> UsedPlan(int64_t cost, uint64_t r) {
    if (r % 3 == 0) return std::nullopt;
    return static_cast<int64_t>((r >> 8) % (cost + 1));
  }

  void DoAcquire(const Op& op, bool wait) {
    const std::vector<std::string> fs = Features();
    const std::string feature = fs[op.a % fs.size()];
    static const char* kScopes[] = {"", "s1", "s2"};
    const std::string scope = kScopes[(op.a >> 8) % 3];
    int64_t cost = 1 + static_cast<int64_t>(op.b % 3);
    if (op.b % 17 == 0) cost = 1 + static_cast<int64_t>((op.b >> 8) % 12);
    const std::optional<int64_t> used = UsedPlan(cost, op.d);
    AcquireRequest req;
    req.credential = cred_.name;
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    req.want_limits = false;
    if (op.c % 5 == 0) req.lease_ttl = absl::Seconds(1 + static_cast<int64_t>((op.c >> 8) % 30));
    const uint64_t arrival = next_arrival_++;
    const int priority = wait ? static_cast<int>((op.c >> 16) % 3) : 0;
    Log(absl::StrCat(wait ? "acquire_wait #" : "acquire #", arrival, " ", feature,
                     scope.empty() ? "" : "/" + scope, " cost ", cost,
                     req.lease_ttl > absl::ZeroDuration() ? absl::StrCat(" ttl ", absl::FormatDuration(req.lease_ttl)) : "",
                     wait ? absl::StrCat(" prio ", priority) : ""));
    const int64_t decided_at = clock_.now();
    if (!wait) {
      absl::StatusOr<Decision> d = ledger_->Acquire(req);
      ProcessEvents();
      if (!d.ok()) {
        Log(d.status().ToString());
        if (d.status().code() == absl::StatusCode::kInternal) Fail("engine-error", d.status().ToString());
        return;
      }
      if (!d->granted) {
        Log(absl::StrCat("denied by ", d->limited_by, " retry ", When(True(d->retry_at))));
        return;
      }
      Granted(*d, feature, scope, cost, used, arrival, 0, decided_at);
      return;
    }
    const absl::Duration max_wait = absl::Seconds(1 + static_cast<int64_t>((op.d >> 16) % 120));
    SimWaiter& w = waiters_[arrival];
    w.feature = feature;
    w.scope = scope;
    w.cost = cost;
    w.priority = priority;
    w.used = used;
    const WaitTicket ticket = ledger_->AcquireOrWait(
        req, max_wait, priority, [this, arrival](absl::StatusOr<Decision> r) {
          events_.push_back({arrival, std::move(r)});
        });
    auto it = waiters_.find(arrival);
    const bool answered_now = std::any_of(events_.begin(), events_.end(),
                                          [&](const Event& e) { return e.arrival == arrival; });
    if (ticket.credential != nullptr && !answered_now && it != waiters_.end()) {
      it->second.ticket = ticket;
      Oracle::Waiter ow;
      ow.arrival = arrival;
      ow.priority = priority;
      ow.feature = feature;
      ow.scope = scope;
      ow.cost = cost;
      ow.deadline = decided_at + Ns(max_wait);
      ow.touches = Touches(cred_, feature, scope);
      oracle_.waiters()[arrival] = ow;
      Log(absl::StrCat("parked until ", When(ow.deadline)));
    }
    ProcessEvents();
  }

  // Index of a live (not released) lease picked by r; -1 when none.
  int PickLease(uint64_t r, bool prefer_slots) {
    std::vector<int> live;
    for (size_t i = 0; i < leases_.size(); ++i) {
      if (leases_[i].done) continue;
      if (prefer_slots && leases_[i].feature != "jobs") continue;
      live.push_back(static_cast<int>(i));
    }
    if (live.empty() && prefer_slots) return PickLease(r, false);
    if (live.empty()) return -1;
    return live[r % live.size()];
  }

  void DoRelease(const Op& op, bool race) {
    const int i = PickLease(op.a, false);
    if (i < 0) {
      Log("release: no lease");
      return;
    }
    const LeaseId id = leases_[i].id;  // the race below may grow leases_
    std::optional<int64_t> used = leases_[i].used;
    Log(absl::StrCat("release L", i, used ? absl::StrCat(" used ", *used) : " (no used)"));
    if (race) ArmRace(op, i);
    absl::StatusOr<ReleaseResult> r = ledger_->Release(id, used);
    // The release happened before the waiters it let through were granted.
    leases_[i].done = true;
    Oracle::Lease* ol = oracle_.FindLease(i);
    if (ol != nullptr) ol->released = true;
    ProcessEvents();
    if (!r.ok()) {
      Log(r.status().ToString());
      return;
    }
    Log(absl::StrCat("refunded ", r->refunded, " freed ", r->freed));
  }

  // Preempts the next operation at its first clock read: time moves to around the lease's expiry
  // and another worker's request on the lease's feature runs first.
  void ArmRace(const Op& op, int lease) {
    Oracle::Lease* ol = oracle_.FindLease(lease);
    if (ol == nullptr) return;
    const int64_t expiry = ol->expiry;
    const std::string feature = leases_[lease].feature;
    const std::string scope = leases_[lease].scope;
    clock_.Arm([this, expiry, feature, scope, op] {
      race_read_ = clock_.now();
      const int64_t to = std::max(clock_.now(), expiry + static_cast<int64_t>(op.c % 3));
      AdvanceTo(to);  // timers due by then fire first
      Log(absl::StrCat("[preempted at ", When(race_read_), "; meanwhile at ", When(to), ":"));
      AcquireRequest req;
      req.credential = cred_.name;
      req.feature = feature;
      req.scope = scope;
      req.cost = 1;
      req.want_limits = false;
      const uint64_t arrival = next_arrival_++;
      absl::StatusOr<Decision> d = ledger_->Acquire(req);
      if (d.ok() && d->granted) {
        Granted(*d, feature, scope, 1, std::nullopt, arrival, 0, to);
      } else {
        Log(d.ok() ? absl::StrCat("acquire #", arrival, " denied") : d.status().ToString());
      }
      Log("]");
    });
  }

  void DoRenew(const Op& op, int mode) {
    const int i = PickLease(op.a, true);
    if (i < 0) {
      Log("renew: no lease");
      return;
    }
    const LeaseId id = leases_[i].id;  // the race below may grow leases_
    Oracle::Lease* ol = oracle_.FindLease(i);
    if (mode == 1 && ol != nullptr) {  // right around expiry
      const int64_t delta = static_cast<int64_t>(op.c % 3) - 1;
      AdvanceTo(ol->expiry + delta);
    }
    const absl::Duration ttl =
        op.b % 3 == 0 ? absl::ZeroDuration() : absl::Seconds(1 + static_cast<int64_t>((op.b >> 8) % 60));
    Log(absl::StrCat("renew L", i, " ttl ", absl::FormatDuration(ttl),
                     ol ? absl::StrCat(" (expiry ", When(ol->expiry), ")") : ""));
    race_read_ = clock_.now();
    if (mode == 2) ArmRace(op, i);
    absl::StatusOr<absl::Time> r = ledger_->Renew(id, ttl);
    ol = oracle_.FindLease(i);
    clock_.Arm(nullptr);
    ProcessEvents();
    if (!r.ok()) {
      Log(r.status().ToString());
      return;
    }
    Log(absl::StrCat("renewed to ", When(True(*r))));
    if (ol == nullptr) return;
    // A lease that holds no slot may come back from a crash with the expiry it was first
    // written with (its renewals are not journaled: losing them loses a refund at most).
    bool holds_slots = false;
    for (const CounterRef& c : ol->touches) {
      const LimitSpec* spec = FindLimit(cred_, c.limit);
      holds_slots |= spec != nullptr && spec->kind == LimitKind::kConcurrency;
    }
    if (holds_slots && ol->expiry <= race_read_) {
      Fail("renew-after-expiry",
           absl::StrCat("lease L", i, " expired at ", When(ol->expiry), " but Renew at ",
                        When(race_read_), " returned OK (must be NOT_FOUND)"));
    }
    // A renewal may keep a slot past a lowered capacity (nobody new gets one), but it must not
    // bring back a slot: more holders than before the renewal is a violation.
    std::vector<int64_t> held_before;
    for (const CounterRef& c : ol->touches) held_before.push_back(oracle_.Held(c, clock_.now(), false));
    ol->expiry = True(*r);
    for (size_t k = 0; k < ol->touches.size(); ++k) {
      const CounterRef& c = ol->touches[k];
      const LimitSpec* spec = FindLimit(cred_, c.limit);
      if (spec == nullptr || spec->kind != LimitKind::kConcurrency || ol->released) continue;
      const int64_t held = oracle_.Held(c, clock_.now(), false);
      if (held > spec->capacity && held > held_before[k]) {
        Fail("concurrency", absl::StrCat("after renewing L", i, ", ", c.limit, " has ", held,
                                         " units held by live leases > capacity ", spec->capacity));
      }
    }
  }

  void DoCancel(const Op& op) {
    std::vector<uint64_t> parked;
    for (const auto& [arrival, w] : waiters_) {
      if (w.ticket.credential != nullptr && !w.answered) parked.push_back(arrival);
    }
    if (parked.empty()) {
      Log("cancel: nobody waits");
      return;
    }
    const uint64_t arrival = parked[op.a % parked.size()];
    SimWaiter w = waiters_[arrival];
    const bool cancelled = ledger_->Cancel(w.ticket);
    Log(absl::StrCat("cancel #", arrival, cancelled ? " -> cancelled" : " -> already answered"));
    if (cancelled) {
      waiters_.erase(arrival);
      oracle_.waiters().erase(arrival);
    }
    ProcessEvents();
    // Whatever timers are due run now (the server's timer would); then the next waiter of that
    // queue must have been served if it fits.
    AdvanceTo(clock_.now());
    if (!cancelled) return;
    CheckQueueHead(w.feature, w.scope, "cancelled head");
  }

  // A waiter of a concurrency-only feature whose slots are free (counting releases a crash lost)
  // and that no earlier waiter sharing them precedes must not still be waiting.
  void CheckQueueHead(const std::string& feature, const std::string& scope, const std::string& why) {
    const int64_t now = clock_.now();
    auto cool = oracle_.cooled_until().find(feature);
    if (cool != oracle_.cooled_until().end() && now < cool->second) return;
    const Oracle::Waiter* head = nullptr;
    for (const auto& [a, w] : oracle_.waiters()) {
      if (w.feature != feature || w.scope != scope || w.deadline <= now) continue;
      if (head == nullptr || w.priority > head->priority) head = &w;
    }
    if (head == nullptr) return;
    for (const CounterRef& c : head->touches) {
      const LimitSpec* spec = FindLimit(cred_, c.limit);
      if (spec == nullptr) return;
      if (spec->kind == LimitKind::kUnlimited) continue;
      if (spec->kind != LimitKind::kConcurrency) return;  // only slots are modelled exactly
      if (oracle_.Held(c, now, true) + head->cost > spec->capacity) return;
      for (const auto& [a, w] : oracle_.waiters()) {
        if (a >= head->arrival) break;
        if (w.priority >= head->priority && w.deadline > now &&
            std::find(w.touches.begin(), w.touches.end(), c) != w.touches.end()) {
          return;
        }
      }
    }
    Fail("cancelled-head",
         absl::StrCat("after the ", why, " left, waiter #", head->arrival, " (", feature,
                      scope.empty() ? "" : "/" + scope, " cost ", head->cost,
                      ") fits every limit it needs but is still waiting after the next Pump"));
  }

  // Outside traffic on one limit, then the provider's headers reported back.
  void DoReportOutside(const Op& op) {
    const std::vector<std::string> fs = Features();
    const std::string feature = fs[op.a % fs.size()];
    // The limits Report can match: unscoped window limits the feature touches, capacity unique.
    std::vector<CounterRef> touches = Touches(cred_, feature, "");
    std::vector<std::pair<std::string, LimitSpec>> candidates;
    for (const CounterRef& c : touches) {
      const LimitSpec* l = FindLimit(cred_, c.limit);
      if (l == nullptr || l->scoped) continue;
      if (l->kind == LimitKind::kCalendar || l->kind == LimitKind::kRolling ||
          l->kind == LimitKind::kSliding) {
        candidates.emplace_back(c.limit, *l);
      }
    }
    std::vector<std::pair<std::string, LimitSpec>> unique;
    for (const auto& c : candidates) {
      int same = 0;
      for (const auto& o : candidates) same += o.second.capacity == c.second.capacity;
      if (same == 1) unique.push_back(c);
    }
    if (unique.empty()) {
      Log(absl::StrCat("report on ", feature, ": no limit a report can name"));
      return;
    }
    const auto& [limit, spec] = unique[(op.a >> 8) % unique.size()];
    const int64_t now = clock_.now();
    const int calls = op.b % 4 == 0 ? 0 : 1 + static_cast<int>((op.b >> 8) % 4);
    bool throttled = false;
    int accepted = 0;
    for (int i = 0; i < calls; ++i) {
      if (oracle_.SendOutside(now, limit, 1)) {
        ++accepted;
      } else {
        throttled = true;
      }
    }
    ProviderLimit* model = oracle_.Current(limit);
    const int64_t model_now = oracle_.ModelTime(model->spec(), now);
    const int64_t used = model->Used("", model_now);
    // The provider's headers show wall times.
    const int64_t reset = oracle_.TrueTime(model->spec(), model->ResetNs("", model_now)) +
                          clock_.wall_offset();
    UpstreamAnswer a;
    a.credential = cred_.name;
    a.feature = feature;
    a.http_status = throttled ? 429 : 200;
    a.headers.emplace_back("X-RateLimit-Limit", absl::StrCat(spec.capacity));
    if (op.c % 2 == 0) {
      a.headers.emplace_back("X-RateLimit-Remaining", absl::StrCat(std::max<int64_t>(0, spec.capacity - used)));
    } else {
      a.headers.emplace_back("X-RateLimit-Used", absl::StrCat(used));
    }
    const int64_t reset_s = (reset + 999999999) / 1000000000;  // rounded up: never early
    if (spec.kind == LimitKind::kRolling) {
      a.headers.emplace_back("X-RateLimit-Reset-In", absl::StrCat(reset_s - now / 1000000000, "s"));
    } else {
      a.headers.emplace_back("X-RateLimit-Reset", absl::StrCat(reset_s));
    }
    int64_t retry_after = 0;
    if (throttled && op.c % 3 != 0) {
      retry_after = std::max<int64_t>(1, reset_s - now / 1000000000);
      a.headers.emplace_back("Retry-After", absl::StrCat(retry_after));
    }
    // The headers are of now: the provider counted the request now, so sent_at (when the
    // provider counted it, by Report's contract) is now, or absent.
    a.sent_at = SentAt(op.d, 0);
    Log(absl::StrCat("outside traffic on ", limit, ": ", accepted, " of ", calls,
                     " accepted; report ", feature, " ", a.http_status, " used ", used, "/",
                     spec.capacity, retry_after ? absl::StrCat(" Retry-After ", retry_after) : "",
                     SentAtText(a.sent_at)));
    Report(a, retry_after);
  }

  // When a reported request was sent, from a random word: absent for a quarter of the answers
  // (taken as observed_at), else between `back_ns` before now and now, on the wall clock the
  // worker reads (which may have stepped).
  absl::Time SentAt(uint64_t word, int64_t back_ns) const {
    if (word % 4 == 0 || back_ns < 0) return absl::InfinitePast();
    const int64_t back = static_cast<int64_t>((word >> 8) % static_cast<uint64_t>(back_ns + 1));
    return absl::FromUnixNanos(clock_.now() + clock_.wall_offset() - back);
  }
  std::string SentAtText(absl::Time sent_at) const {
    if (sent_at == absl::InfinitePast()) return "";
    return absl::StrCat(" sent ",
                        absl::FormatDuration(absl::Nanoseconds(clock_.now() + clock_.wall_offset()) -
                                             absl::Nanoseconds(absl::ToUnixNanos(sent_at))),
                        " before");
  }

  void Report(const UpstreamAnswer& a, int64_t retry_after) {
    const int64_t now = clock_.now();
    absl::StatusOr<ReportResult> r = ledger_->Report(a);
    ProcessEvents();
    if (!r.ok()) {
      Log(r.status().ToString());
      return;
    }
    if (!r->adopted.empty()) Log(absl::StrCat("adopted ", absl::StrJoin(r->adopted, ", ")));
    if (!r->warnings.empty()) Log(absl::StrCat("warnings: ", absl::StrJoin(r->warnings, "; ")));
    if (r->cooldown_until != absl::InfinitePast()) {
      // The features sharing a counter with the throttled one cool down with it: read them
      // from the ledger's usage (each "<feature>.cooldown").
      absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage(cred_.name);
      if (usage.ok()) {
        for (const LimitStatus& st : *usage) {
          if (!st.cooldown) continue;
          int64_t& c = oracle_.cooled_until()[st.name.substr(0, st.name.rfind('.'))];
          c = std::max(c, True(st.reset));
        }
      }
      Log(absl::StrCat("cooldown until ", When(True(r->cooldown_until))));
    }
    if (retry_after > 0) {
      int64_t& e = expected_cooldown_[std::string(a.feature)];
      // Whole seconds of Retry-After from the second the answer was seen; a Retry-After longer
      // than the feature's longest window is capped by the ledger, which says so.
      int64_t until = now + retry_after * 1000000000 - (now % 1000000000);
      const bool capped = std::any_of(r->warnings.begin(), r->warnings.end(), [](const auto& w) {
        return w.find("capped at") != std::string::npos;
      });
      if (capped) until = std::min(until, True(r->cooldown_until));
      e = std::max(e, until);
    }
  }

  void DoReportThrottle(const Op& op) {
    const std::vector<std::string> fs = Features();
    UpstreamAnswer a;
    a.credential = cred_.name;
    const std::string feature = fs[op.a % fs.size()];
    a.feature = feature;
    a.http_status = 429;
    int64_t retry_after = 0;
    if (op.b % 2 == 0) {
      retry_after = 1 + static_cast<int64_t>((op.b >> 8) % 120);
      a.headers.emplace_back("Retry-After", absl::StrCat(retry_after));
    }
    a.sent_at = SentAt(op.c, absl::ToInt64Nanoseconds(absl::Minutes(2)));
    Log(absl::StrCat("report ", feature, " 429",
                     retry_after ? absl::StrCat(" Retry-After ", retry_after) : "",
                     SentAtText(a.sent_at)));
    Report(a, retry_after);
  }

  // An operator resets the credential because the provider zeroed its counters: the oracle's
  // provider does so at the same instant, before the waiters the reset lets through send.
  // What the ledger may not do after it: give back units of leases granted before it (their
  // refunds must give nothing, or later grants pass the provider's fresh count), or keep a
  // window the provider no longer has. What it may do: count more than the provider (the
  // zeroing is not journaled, so a crash right after a reset restores the old reservations: an
  // under-grant, which the oracle does not flag). The simulated workers send at the grant, so
  // no unit granted before the reset reaches the provider after it.
  // An all-or-nothing batch (Ledger::AcquireAll) of 2-4 items over the features and scopes:
  // the ledger grants every item or none, and names the item that refused the batch in every
  // other one; a granted batch's items are checked as single grants made at once, in order.
  void DoAcquireAll(const Op& op) {
    struct Item {
      std::string feature, scope;
      int64_t cost = 1;
      std::optional<int64_t> used;
      uint64_t arrival = 0;
    };
    std::mt19937_64 rng(op.a);
    const int n = 2 + static_cast<int>(op.b % 3);
    const std::vector<std::string> fs = Features();
    static const char* kScopes[] = {"", "s1", "s2"};
    std::vector<Item> items(n);
    std::vector<AcquireRequest> reqs(n);
    std::vector<std::string> described;
    for (int i = 0; i < n; ++i) {
      Item& it = items[i];
      it.feature = fs[rng() % fs.size()];
      it.scope = kScopes[rng() % 3];
      it.cost = 1 + static_cast<int64_t>(rng() % 3);
      it.used = UsedPlan(it.cost, rng());
      it.arrival = next_arrival_++;
      AcquireRequest& req = reqs[i];
      req.credential = cred_.name;
      req.feature = it.feature;
      req.scope = it.scope;
      req.cost = it.cost;
      req.want_limits = false;
      if (rng() % 5 == 0) req.lease_ttl = absl::Seconds(1 + static_cast<int64_t>(rng() % 30));
      described.push_back(absl::StrCat("#", it.arrival, " ", it.feature,
                                       it.scope.empty() ? "" : "/" + it.scope, " cost ", it.cost));
    }
    Log(absl::StrCat("acquire_all [", absl::StrJoin(described, ", "), "]"));
    const int64_t decided_at = clock_.now();
    const size_t live_before = ledger_->Leases(cred_.name).size();
    const size_t served_before = leases_.size();
    std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(reqs);
    ProcessEvents();  // waiters served before the batch's own charges
    // A refused batch leaves no lease: the ledger holds the waiters' new ones only.
    const size_t live_after = ledger_->Leases(cred_.name).size();
    const size_t served = leases_.size() - served_before;
    if (static_cast<int>(out.size()) != n) {
      Fail("all-or-nothing", absl::StrCat("AcquireAll answered ", out.size(), " of ", n, " items"));
      return;
    }
    int granted = 0;
    for (const absl::StatusOr<Decision>& d : out) {
      if (!d.ok() && d.status().code() == absl::StatusCode::kInternal) {
        Fail("engine-error", d.status().ToString());
      }
      if (d.ok() && d->granted) ++granted;
    }
    if (granted == n) {
      for (int i = 0; i < n; ++i) {
        Granted(*out[i], items[i].feature, items[i].scope, items[i].cost, items[i].used,
                items[i].arrival, 0, decided_at);
      }
      return;
    }
    if (granted > 0) {
      Fail("all-or-nothing", absl::StrCat("AcquireAll granted ", granted, " of ", n, " items"));
      return;
    }
    if (live_after != live_before + served) {
      Fail("all-or-nothing", absl::StrCat("a refused batch left ", live_after, " live leases of ",
                                          live_before, " and ", served, " waiters served"));
    }
    // Refused: one item says why (an error or its own limit), every other one names it.
    int blocker = -1;
    for (int i = 0; i < n; ++i) {
      if (!out[i].ok() || !absl::StartsWith(out[i]->limited_by, "all_or_nothing:")) {
        if (blocker >= 0) {
          Fail("all-or-nothing", absl::StrCat("items ", blocker, " and ", i, " both refused"));
          return;
        }
        blocker = i;
      }
    }
    const std::string label = absl::StrCat("all_or_nothing:items[", blocker, "]");
    for (int i = 0; i < n; ++i) {
      if (i != blocker && out[i]->limited_by != label) {
        Fail("all-or-nothing", absl::StrCat("item ", i, " says ", out[i]->limited_by, ", not ",
                                            label));
        return;
      }
    }
    Log(blocker < 0 ? "refused, naming no item"
                    : absl::StrCat("refused by item ", blocker, ": ",
                                   out[blocker].ok() ? out[blocker]->limited_by
                                                     : out[blocker].status().ToString()));
    if (blocker < 0) Fail("all-or-nothing", "every item names another as the one that refused");
  }

  void DoReset() {
    const absl::Status s = ledger_->Reset(cred_.name);
    Log(absl::StrCat("reset ", cred_.name, " -> ", s.ok() ? "OK" : s.ToString()));
    if (!s.ok()) {
      Fail("engine-error", absl::StrCat("Reset: ", s.ToString()));
      ProcessEvents();
      return;
    }
    oracle_.Reset(clock_.now());
    // The Retry-After the provider gave was about the counts it has just zeroed; the ledger
    // forgets its cooldowns.
    expected_cooldown_.clear();
    ProcessEvents();
  }

  void DoReload(const Op& op) {
    CorrectWallClock();
    CredentialSpec next = cred_;
    std::string what = Mutate(next, op.a, op.b);
    if (op.c % 3 == 0) absl::StrAppend(&what, "; ", Mutate(next, op.c, op.d));
    Policy p;
    p.credentials = {next};
    const absl::Status s = ledger_->Reload(p);
    Log(absl::StrCat("reload ", what, " -> ", s.ok() ? "OK" : std::string(s.message())));
    if (s.ok()) {
      cred_ = next;
      oracle_.ApplyPolicy(cred_, clock_.now());
    }
    ProcessEvents();
  }

  // Within a process durations run on the monotonic clock, whatever the wall clock does. A new
  // process anchors its ledger time to the wall clock again (a step still uncorrected at a
  // restart moves every duration by it), and calendar boundaries, which a reload reads to carry
  // a calendar limit's units, follow the wall clock (README, Operations). So the simulated NTP
  // corrects the wall clock before a restart or a reload.
  void CorrectWallClock() {
    if (const int64_t off = clock_.wall_offset(); off != 0) {
      clock_.StepWall(-off);
      oracle_.set_wall_offset(0, clock_.now());
      Log(absl::StrCat("wall clock corrected by ", absl::FormatDuration(absl::Nanoseconds(-off)),
                       "; "));
    }
  }

  void DoCrash() {
    CorrectWallClock();
    std::deque<KillNineJournal::Deferred> lost = journal_->Drop();
    int lost_releases = 0, lost_leases = 0;
    for (const auto& d : lost) {
      if (!d.is_delete) {
        ++lost_leases;
        continue;
      }
      ++lost_releases;
      for (size_t i = 0; i < leases_.size(); ++i) {
        if (leases_[i].id.ToString() != d.id) continue;
        if (Oracle::Lease* ol = oracle_.FindLease(i)) ol->ghost = true;
      }
    }
    ledger_.reset();
    journal_.reset();
    sqlite_.reset();
    waiters_.clear();
    oracle_.waiters().clear();
    events_.clear();
    wakes_.clear();
    Log(absl::StrCat("kill -9 (lost ", lost_leases, " lease writes, ", lost_releases,
                     " releases) and restart"));
    if (std::string e = Start(); !e.empty()) Fail("engine-error", e);
  }

  // A time the ledger answered (a wall time) as true time.
  int64_t True(absl::Time t) const {
    const int64_t ns = Ns(t);
    return ns == INT64_MAX || ns == INT64_MIN ? ns : ns - clock_.wall_offset();
  }

  void Execute(const Op& op) {
    switch (op.kind) {
      case kAdvance: {
        int64_t d;
        switch (op.a % 10) {
          case 0: d = 1 + static_cast<int64_t>(op.b % 1000); break;
          case 1:
          case 2: d = Ns(absl::Milliseconds(1 + op.b % 999)); break;
          case 3:
          case 4:
          case 5: d = Ns(absl::Seconds(1 + op.b % 59)); break;
          case 6:
          case 7: d = Ns(absl::Minutes(1 + op.b % 30)); break;
          case 8: d = Ns(absl::Hours(1 + op.b % 30)); break;
          default: d = op.c % 4 == 0 ? Ns(absl::Hours(24 * (1 + op.b % 40))) : Ns(absl::Seconds(op.b % 600));
        }
        Log(absl::StrCat("advance ", absl::FormatDuration(absl::Nanoseconds(d))));
        AdvanceTo(clock_.now() + d);
        break;
      }
      case kAdvanceToBoundary: {
        // To just before, at, or just after the next minute/hour/day boundary (UTC).
        const int64_t units[] = {Ns(absl::Minutes(1)), Ns(absl::Hours(1)), Ns(absl::Hours(24))};
        const int64_t u = units[op.a % 3];
        const int64_t next = (clock_.now() / u + 1) * u;
        const int64_t offsets[] = {-Ns(absl::Seconds(1)), -1, 0, 1, Ns(absl::Seconds(1))};
        const int64_t to = next + offsets[op.b % 5];
        Log(absl::StrCat("advance to boundary ", When(to)));
        AdvanceTo(to);
        break;
      }
      case kAcquire: DoAcquire(op, false); break;
      case kAcquireWait: DoAcquire(op, true); break;
      case kCancel: DoCancel(op); break;
      case kRelease: DoRelease(op, false); break;
      case kReleaseRace: DoRelease(op, true); clock_.Arm(nullptr); break;
      case kRenew: DoRenew(op, 0); break;
      case kRenewAtExpiry: DoRenew(op, 1); break;
      case kRenewRace: DoRenew(op, 2); break;
      case kReportOutside: DoReportOutside(op); break;
      case kStepWall: {
        // An NTP step of the wall clock, forward or back, by up to a day; no time passes. What
        // is checked is that durations ignore it; calendar boundaries follow the wall clock and
        // assume a correct one, so the step is taken only while no calendar limit is in force.
        bool calendar = false;
        for (const FeatureSpec& f : cred_.features) {
          for (const LimitSpec& l : f.limits) {
            calendar |= (l.kind == LimitKind::kCalendar || l.kind == LimitKind::kUnlimited) &&
                        l.unit != CalendarUnit::kNone;
          }
        }
        if (calendar) {
          Log("wall clock step skipped (a calendar limit is in force)");
          break;
        }
        const int64_t steps[] = {Ns(absl::Seconds(1)), Ns(absl::Minutes(5)), Ns(absl::Hours(1)),
                                 Ns(absl::Hours(25))};
        const int64_t d = (op.b % 2 == 0 ? 1 : -1) * steps[op.a % 4];
        clock_.StepWall(d);
        oracle_.set_wall_offset(clock_.wall_offset(), clock_.now());
        Log(absl::StrCat("wall clock steps ", absl::FormatDuration(absl::Nanoseconds(d))));
        break;
      }
      case kReportThrottle: DoReportThrottle(op); break;
      case kReload: DoReload(op); break;
      case kCrash: DoCrash(); break;
      case kReset: DoReset(); break;
      case kAcquireAll: DoAcquireAll(op); break;
      case kFlushJournal: {
        const size_t n = journal_->buffered() == 0 ? 0 : op.a % (journal_->buffered() + 1);
        Log(absl::StrCat("journal writes ", n, " of ", journal_->buffered(), " deferred records"));
        journal_->Release(n);
        break;
      }
      case kSweep: Log(absl::StrCat("sweep dropped ", ledger_->Sweep())); break;
      case kCompact: {
        const absl::Status s = journal_->Compact(ledger_->CompactionTimeNs());
        Log(absl::StrCat("compact ", s.ToString()));
        break;
      }
      case kPump: Log("pump"); Pump(); break;
    }
  }

  const uint64_t seed_;
  const bool logging_;
  uint64_t starts_ = 0;  // how many times Start ran (picks Create + Restore or CreateRestored)
  SimClock clock_;
  // Removed after the journal is closed: members are destroyed in reverse order.
  ::quotad::testing::TempDir dir_;
  std::string path_;
  CredentialSpec cred_;
  double reserve_fraction_ = 0.01;
  int64_t max_block_ = 1000;
  Oracle oracle_;
  std::unique_ptr<SqliteJournal> sqlite_;
  std::unique_ptr<KillNineJournal> journal_;
  std::unique_ptr<Ledger> ledger_;
  std::vector<SimLease> leases_;
  std::map<uint64_t, SimWaiter> waiters_;
  std::vector<Event> events_;
  std::set<int64_t> wakes_;
  std::map<std::string, int64_t> expected_cooldown_;
  uint64_t next_arrival_ = 1;
  int64_t race_read_ = 0;
  int step_ = 0;
  std::string line_;
  std::optional<Violation> violation_;
  std::vector<Violation> violations_;
  std::set<std::string> seen_;

 public:
  std::string target_;  // stop at the first violation of this invariant
};

}  // namespace

const char* OpKindName(int kind) { return kind >= 0 && kind < kNumKinds ? kKindNames[kind] : "?"; }

int OpKindByName(const std::string& name) {
  for (int k = 0; k < kNumKinds; ++k) {
    if (name == kKindNames[k]) return k;
  }
  return -1;
}

void DisableOpKinds(const std::vector<int>& kinds) { DisabledKinds() = kinds; }

std::vector<Op> GenerateOps(uint64_t seed, int count) {
  std::mt19937_64 rng(seed);
  // Swarm testing: each seed weighs the operation kinds differently, some not at all.
  int weights[kNumKinds];
  const int choices[] = {0, 1, 2, 4, 8};
  for (int k = 0; k < kReset; ++k) weights[k] = choices[rng() % 5];
  weights[kAdvance] = std::max(weights[kAdvance], 6);
  weights[kAcquire] = std::max(weights[kAcquire], 6);
  weights[kCrash] = std::min(weights[kCrash], 2);
  // Kinds added later draw their weight from a stream of their own, so that a seed's other
  // weights stay what they were and, with the new kinds left out (--without), its whole list.
  std::mt19937_64 later(seed ^ 0x5E7C0FFEEULL);
  weights[kReset] = std::min(choices[later() % 5], 2);  // an operator's act: rare
  std::mt19937_64 batches(seed ^ 0xA11A11BA7C4ULL);  // acquire_all's own stream
  weights[kAcquireAll] = std::min(choices[batches() % 5], 4);
  for (int k : DisabledKinds()) weights[k] = 0;
  int total = 0;
  for (int w : weights) total += w;
  if (total == 0) return {};
  std::vector<Op> ops(count);
  for (int i = 0; i < count; ++i) {
    int pick = static_cast<int>(rng() % total);
    int k = 0;
    while (pick >= weights[k]) pick -= weights[k++];
    ops[i] = {i, k, rng(), rng(), rng(), rng()};
  }
  return ops;
}

RunResult RunOps(uint64_t seed, const std::vector<Op>& ops, bool log, const std::string& target) {
  Sim sim(seed, log);
  sim.target_ = target;
  return sim.Run(ops);
}

std::string Shrink(uint64_t seed, int count, const Violation& v, int64_t ops_run,
                   absl::Time deadline, int64_t* shrink_ops, std::vector<int>* kept) {
  std::vector<Op> ops = GenerateOps(seed, count);
  ops.resize(v.step + 1);
  const std::string& invariant = v.invariant;
  auto still_fails = [&](const std::vector<Op>& candidate) {
    RunResult r = RunOps(seed, candidate, false, invariant);
    *shrink_ops += r.ops_run;
    return r.violation.has_value();
  };
  for (size_t chunk = std::max<size_t>(1, ops.size() / 2); absl::Now() < deadline; chunk /= 2) {
    for (size_t i = 0; i < ops.size() && absl::Now() < deadline;) {
      std::vector<Op> candidate(ops.begin(), ops.begin() + i);
      candidate.insert(candidate.end(), ops.begin() + std::min(ops.size(), i + chunk), ops.end());
      if (!candidate.empty() && still_fails(candidate)) {
        ops = std::move(candidate);
      } else {
        i += chunk;
      }
    }
    if (chunk <= 1) break;
  }
  RunResult last = RunOps(seed, ops, true, invariant);
  std::vector<std::string> idx;
  kept->clear();
  for (const Op& op : ops) {
    kept->push_back(op.index);
    idx.push_back(absl::StrCat(op.index));
  }
  return absl::StrCat(
      "seed ", seed, ": ", invariant, "\n  ", last.violation ? last.violation->message : v.message,
      last.violation ? "" : " (not reproduced by the shrunk trace)", "\n",
      "policy: ", last.policy, "trace (", ops.size(), " of ", ops_run, " ops):\n    ",
      absl::StrJoin(last.log, "\n    "), "\nreplay: never_over_sim_test --seed=", seed,
      " --ops=", count, " --keep=", absl::StrJoin(idx, ","), "\n");
}

SeedReport RunSeed(uint64_t seed, int count, absl::Duration shrink_budget) {
  SeedReport report;
  report.seed = seed;
  RunResult first = RunOps(seed, GenerateOps(seed, count), false, "");
  report.ops_run = first.ops_run;
  if (first.all.empty()) return report;
  report.ok = false;
  const absl::Time deadline = absl::Now() + shrink_budget;
  for (const Violation& v : first.all) {
    report.invariants.push_back(v.invariant);
    if (report.invariant.empty()) report.invariant = v.invariant;
    std::vector<int> kept;
    const absl::Time each = std::min(deadline, absl::Now() + shrink_budget / 4);
    absl::StrAppend(&report.text,
                    Shrink(seed, count, v, first.ops_run, each, &report.shrink_ops, &kept), "\n");
    if (report.kept.empty()) report.kept = kept;
  }
  return report;
}

}  // namespace quotad::sim

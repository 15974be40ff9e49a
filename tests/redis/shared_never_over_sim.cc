#include "tests/redis/shared_never_over_sim.h"

#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/backend_helpers.h"
#include "tests/sim/never_over_oracle.h"
#include "tests/support/policy_builders.h"
#include "tests/support/eventually.h"

namespace quotad::testing {
namespace {

using ::quotad::sim::CounterRef;
using ::quotad::sim::Oracle;

constexpr char kCredential[] = "sim/shared";
constexpr int kReplicas = 3;

// One feature per limit kind shared mode supports, a scoped limit and a feature drawing on two
// siblings. Windows of seconds, so that a run of seconds sees many of them turn; the calendar
// limit is the shortest unit there is (a minute, in an IANA zone).
CredentialSpec InitialCredential() {
  LimitSpec scoped = Sliding("per_scope", 2, absl::Seconds(2));
  scoped.scoped = true;
  std::vector<FeatureSpec> features = {
      Feature("cal", {Calendar("per_minute", 12, CalendarUnit::kMinute, "America/New_York")}),
      Feature("roll", {Rolling("per_2s", 5, absl::Seconds(2))}),
      Feature("slide", {Sliding("per_3s", 6, absl::Seconds(3)), scoped}),
      Feature("bucket", {Bucket("burst", 3, absl::Seconds(1), 4)}),
      Feature("conc", {Concurrency("slots", 3)}),
      Feature("free", {Unlimited("count")}),
      Feature("child", {Rolling("own", 8, absl::Seconds(3))}, {"slide", "bucket"}),
  };
  for (FeatureSpec& f : features) {
    f.default_lease_ttl = absl::Seconds(2);
    f.max_lease_ttl = absl::Seconds(10);
    // Back-offs on the sim's time scale (DoReport): 100 ms doubling to at most 800 ms, so that a
    // throttle without Retry-After cools a feature for a fraction of a run, not for minutes.
    f.throttle.initial_backoff = absl::Milliseconds(100);
    f.throttle.max_backoff = absl::Milliseconds(800);
  }
  return Credential(kCredential, "", std::move(features));
}

// Whether every limit a request of `feature` touches is of `kind` (own and draws_on).
bool OnlyKind(const CredentialSpec& cred, const std::string& feature, LimitKind kind) {
  for (const CounterRef& c : sim::Touches(cred, feature, "")) {
    const LimitSpec* l = sim::FindLimit(cred, c.limit);
    if (l == nullptr || l->kind != kind) return false;
  }
  return true;
}

int64_t Ns(absl::Time t) { return absl::ToUnixNanos(t); }

class SharedSim {
 public:
  SharedSim(RedisServer& redis, const SharedSimOptions& options)
      : redis_(redis), options_(options), rng_(options.seed), cred_(InitialCredential()) {}

  SharedSimResult Run() {
    Policy policy;
    policy.credentials = {cred_};
    for (int i = 0; i < kReplicas; ++i) {
      absl::StatusOr<std::unique_ptr<RedisBackend>> b =
          RedisBackend::Create(policy, Clock::Real(), ReplicaOptions(redis_));
      if (!b.ok()) return Abort(absl::StrCat("RedisBackend::Create: ", b.status().ToString()));
      backends_.push_back(*std::move(b));
      if (!backends_.back()->CheckHealth()) return Abort("a replica is not serving at start");
    }
    start_ = Now();
    oracle_.ApplyPolicy(cred_, start_);
    if (options_.conformance) {
      shadow_clock_ = std::make_unique<FakeClock>(absl::FromUnixNanos(start_));
      absl::StatusOr<std::unique_ptr<Ledger>> l = Ledger::Create(policy, shadow_clock_.get());
      if (!l.ok()) return Abort(absl::StrCat("Ledger::Create: ", l.status().ToString()));
      ledger_ = *std::move(l);
    }
    // The kills, at random points of the run.
    std::vector<int64_t> kills;
    const int64_t span = absl::ToInt64Nanoseconds(options_.duration);
    for (int k = 0; k < options_.kills; ++k) {
      kills.push_back(start_ + span / 5 + static_cast<int64_t>(rng_() % (span / 2 + 1)));
    }
    std::sort(kills.begin(), kills.end());
    const absl::Time end = absl::Now() + options_.duration;
    int down_ops = 0;
    while (absl::Now() < end && result_.ops < options_.max_ops && result_.ok) {
      ++result_.ops;
      if (down_) {
        if (++down_ops > 4) {
          Restart();
          continue;
        }
      } else if (!kills.empty() && Now() >= kills.front()) {
        kills.erase(kills.begin());
        Kill();
        down_ops = 0;
        continue;
      }
      // 0..99 as before; 100..106 (about 6.5% of the operations) a Report.
      const uint64_t k = rng_() % 107;
      if (down_) {
        // While redis-server is down: calls that must all fail closed.
        if (down_ops == 1) {
          DoAcquire();
        } else if (down_ops == 2) {
          DoAcquireAll();
        } else if (down_ops == 3) {
          DoRelease();
        } else if (k % 2 == 0) {
          DoRenew(false);
        } else {
          DoReport();  // a throttle or a clean answer: it must fail, not be lost
        }
      } else if (k < 50) {
        DoAcquire();
      } else if (k < 62) {
        DoRelease();
      } else if (k < 70) {
        DoRenew(false);
      } else if (k < 73) {
        DoRenew(true);
      } else if (k < 85) {
        DoWait();
      } else if (k < 89) {
        DoExpire();
      } else if (k < 91) {
        if (!down_) DoReset();
      } else if (k < 95) {
        if (!down_ && options_.reloads) DoReload();
      } else if (k < 97) {
        DoAcquireAll();
      } else if (k < 100) {
        DoAcquireMany();
      } else {
        DoReport();
      }
    }
    if (down_) Restart();
    return std::move(result_);
  }

 private:
  struct SimLease {
    LeaseId id;
    std::string feature, scope;
    int64_t cost = 0;
    std::optional<int64_t> used;
    int64_t expiry = 0;  // Redis's, ns
    bool done = false;   // released, or found gone
    std::optional<LeaseId> shadow;  // the embedded ledger's lease for the same grant
    int64_t at = 0;                 // Redis's instant of the grant, ns
    bool released = false;          // released by the worker (what it used was refunded)
  };

  SharedSimResult Abort(const std::string& why) {
    Fail("engine-error", why);
    return std::move(result_);
  }

  // Redis's TIME in ns (the clock of every decision); the local clock while it is down.
  int64_t Now() {
    absl::StatusOr<std::string> t = redis_.Command({"TIME"});
    if (t.ok()) {
      std::vector<std::string> parts = absl::StrSplit(*t, ' ');
      int64_t s = 0, us = 0;
      if (parts.size() == 2 && absl::SimpleAtoi(parts[0], &s) && absl::SimpleAtoi(parts[1], &us)) {
        return s * 1000000000 + us * 1000;
      }
    }
    return Ns(absl::Now());
  }
  std::string When(int64_t t) const {
    return absl::StrFormat("+%.6fs", static_cast<double>(t - start_) / 1e9);
  }
  void Log(std::string line) {
    result_.trace.push_back(absl::StrCat("#", result_.ops, " ", std::move(line)));
  }
  void Fail(const std::string& invariant, const std::string& message) {
    Log(absl::StrCat("VIOLATION ", invariant, ": ", message));
    if (!result_.ok) return;
    result_.ok = false;
    result_.violation = absl::StrCat(invariant, ": ", message);
  }
  void SetShadow(int64_t t) {
    if (shadow_clock_ == nullptr) return;
    if (t > Ns(shadow_clock_->Now())) shadow_clock_->Set(absl::FromUnixNanos(t));
  }

  absl::StatusOr<Decision> Call(int replica, const AcquireRequest& req, const std::string& rid,
                                const std::string& fingerprint) {
    absl::Notification done;
    absl::StatusOr<Decision> out;
    SharedRequestId id;
    id.key = rid;
    id.request_id = rid;
    id.fingerprint = fingerprint;
    backends_[replica]->AcquireShared(req, rid.empty() ? SharedRequestId{} : id,
                                      [&](absl::StatusOr<Decision> d) {
                                        out = std::move(d);
                                        done.Notify();
                                      });
    done.WaitForNotification();
    return out;
  }

  const FeatureSpec& FeatureOf(const std::string& name) const {
    for (const FeatureSpec& f : cred_.features) {
      if (f.name == name) return f;
    }
    return cred_.features.front();
  }
  bool HoldsSlots(const std::string& feature) const {
    for (const CounterRef& c : sim::Touches(cred_, feature, "")) {
      const LimitSpec* l = sim::FindLimit(cred_, c.limit);
      if (l != nullptr && l->kind == LimitKind::kConcurrency) return true;
    }
    return false;
  }
  // A window boundary or a lease's expiry in [lo, hi]: a denial there has no exact instant.
  bool Ambiguous(const std::string& feature, int64_t lo, int64_t hi) const {
    for (const CounterRef& c : sim::Touches(cred_, feature, "")) {
      const LimitSpec* l = sim::FindLimit(cred_, c.limit);
      if (l == nullptr || l->kind != LimitKind::kCalendar) continue;
      int64_t s, e;
      sim::OracleCalendarWindow(l->unit, l->zone, lo, &s, &e);
      if (e <= hi) return true;
    }
    for (const SimLease& l : leases_) {
      if (l.expiry >= lo && l.expiry <= hi) return true;
    }
    return false;
  }

  void DoAcquire() {
    const FeatureSpec& f = cred_.features[rng_() % cred_.features.size()];
    const std::string feature = f.name;
    static const char* kScopes[] = {"", "a", "b"};
    const std::string scope = kScopes[rng_() % 3];
    int64_t cost = 1 + static_cast<int64_t>(rng_() % 3);
    if (rng_() % 13 == 0) cost = 1 + static_cast<int64_t>(rng_() % 8);
    static const absl::Duration kTtls[] = {absl::Milliseconds(300), absl::Milliseconds(700),
                                           absl::Milliseconds(1500), absl::Seconds(3)};
    const absl::Duration ttl = kTtls[rng_() % 4];
    std::optional<int64_t> used;
    if (rng_() % 3 != 0) used = static_cast<int64_t>(rng_() % (cost + 1));
    const uint64_t mode = rng_() % 20;  // <12 plain, <16 request_id, <19 lost answer, 19 other
    const int r = static_cast<int>(rng_() % kReplicas);
    const int r2 = (r + 1 + static_cast<int>(rng_() % 2)) % kReplicas;
    const std::string rid = mode >= 12 ? absl::StrCat("rq", options_.seed, "-", result_.ops) : "";
    const std::string fp =
        absl::StrCat(feature, "/", scope, "/", cost, "/", absl::FormatDuration(ttl));
    AcquireRequest req;
    req.credential = kCredential;
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    req.lease_ttl = ttl;
    req.want_limits = false;
    std::string line = absl::StrCat("acquire ", feature, scope.empty() ? "" : "/" + scope,
                                    " cost ", cost, " ttl ", absl::FormatDuration(ttl),
                                    used ? absl::StrCat(" (will use ", *used, ")") : "",
                                    " via R", r, rid.empty() ? "" : " rid " + rid);
    const int64_t lo = Now();
    absl::StatusOr<Decision> d = Call(r, req, rid, fp);
    if (mode >= 16 && mode < 19) {
      // The first answer is lost on its way to the worker, which retries through another
      // replica: a grant must come back as the same lease, charged once.
      absl::StatusOr<Decision> again = Call(r2, req, rid, fp);
      absl::StrAppend(&line, "; answer lost (",
                      d.ok() ? (d->granted ? "granted" : "denied") : d.status().ToString(),
                      "), retried via R", r2);
      if (d.ok() && d->granted && again.ok() &&
          (!again->granted || !(again->lease_id == d->lease_id) ||
           again->lease_expiry != d->lease_expiry)) {
        Fail("request-id", absl::StrCat("retry of granted ", rid, " through R", r2,
                                        " answered ", again->granted ? "another lease" : "a denial"));
      }
      if (!(d.ok() && d->granted && !again.ok())) d = std::move(again);
    }
    const int64_t hi = Now();
    if (!d.ok()) {
      absl::StrAppend(&line, " -> ", d.status().ToString());
      Log(line);
      if (down_ && absl::IsUnavailable(d.status())) {
        ++result_.unavailable;
        return;
      }
      if (absl::IsInvalidArgument(d.status()) &&
          absl::StrContains(d.status().message(), "can never be granted")) {
        // More than a limit's capacity (e.g. after a reload tightened it): refused, as the
        // embedded ledger refuses it.
        if (ledger_ != nullptr) {
          SetShadow(lo);
          absl::StatusOr<Decision> e = ledger_->Acquire(req);
          if (!absl::IsInvalidArgument(e.status())) {
            const std::string what = absl::StrCat(feature, " cost ", cost, ": redis ",
                                                  d.status().ToString(), ", embedded ",
                                                  e.ok() ? "answered" : e.status().ToString());
            result_.disagreements.push_back(what);
            Fail("conformance", what);
          }
        }
        return;
      }
      Fail("engine-error", d.status().ToString());
      return;
    }
    if (!d->granted) {
      ++result_.denials;
      absl::StrAppend(&line, " -> denied (", d->limited_by, ", retry ", When(Ns(d->retry_at)), ")");
      Log(line);
      if (OnlyKind(cred_, feature, LimitKind::kUnlimited) &&
          !CoolingWithin(feature, d->limited_by, lo, hi)) {
        Fail("unlimited", absl::StrCat(feature, " has only unlimited limits but was denied"));
      }
      Shadow(req, false, lo, hi, -1, used);
      return;
    }
    ++result_.grants;
    const int64_t t = Ns(d->lease_expiry - ttl);
    const int64_t n = static_cast<int64_t>(leases_.size());
    const int64_t units = used.value_or(cost);
    absl::StrAppend(&line, " -> L", n, " at ", When(t), " expiry ", When(Ns(d->lease_expiry)),
                    ", worker sends ", units);
    Log(line);
    if (down_) Fail("fail-closed", "granted while redis-server was killed");
    if (t < lo || t > hi) {
      Fail("decision-time", absl::StrCat("grant at ", When(t), " outside the call [", When(lo),
                                         ", ", When(hi), "]"));
    }
    CheckCooldown(feature, t);
    leases_.push_back({d->lease_id, feature, scope, cost, used, Ns(d->lease_expiry)});
    leases_.back().at = t;
    ++result_.sends;
    if (std::string v = oracle_.SendOurs(t, feature, scope, units); !v.empty()) {
      Fail("over-grant", v);
    }
    if (std::string v = oracle_.Grant(n, t, feature, scope, cost, Ns(d->lease_expiry));
        !v.empty()) {
      Fail("concurrency", v);
    }
    if (mode == 19) {
      // The same request_id asking for something else: refused, naming both.
      AcquireRequest other = req;
      other.cost = cost + 1;
      absl::StatusOr<Decision> bad =
          Call(r2, other, rid,
               absl::StrCat(feature, "/", scope, "/", cost + 1, "/", absl::FormatDuration(ttl)));
      Log(absl::StrCat("  same rid, cost ", cost + 1, " via R", r2, " -> ",
                       bad.ok() ? (bad->granted ? "granted" : "denied") : bad.status().ToString()));
      if (!absl::IsInvalidArgument(bad.status())) {
        Fail("request-id", absl::StrCat(rid, " reused for another request was not refused"));
      }
    }
    Shadow(req, true, t, t, n, used);
  }

  // A batch's items at random (features, scopes, costs, TTLs, what the worker will use), some
  // with a request_id (every one when the batch is to be retried), and the replicas to send it
  // through.
  struct SimBatch {
    std::vector<AcquireRequest> reqs;
    std::vector<std::string> features, scopes, rids, fps;
    std::vector<std::optional<int64_t>> used;
    int replica = 0, retry_replica = 0;
    bool retried = false;
    std::string line;
  };
  SimBatch RandomBatch(const char* what, int n) {
    SimBatch b;
    b.retried = rng_() % 4 == 0;
    b.replica = static_cast<int>(rng_() % kReplicas);
    b.retry_replica = (b.replica + 1 + static_cast<int>(rng_() % 2)) % kReplicas;
    static const char* kScopes[] = {"", "a", "b"};
    static const absl::Duration kTtls[] = {absl::Milliseconds(300), absl::Milliseconds(700),
                                           absl::Milliseconds(1500), absl::Seconds(3)};
    b.reqs.resize(n);
    b.features.resize(n);
    b.scopes.resize(n);
    b.rids.resize(n);
    b.fps.resize(n);
    b.used.resize(n);
    b.line = absl::StrCat(what, " via R", b.replica, ":");
    for (int i = 0; i < n; ++i) {
      b.features[i] = cred_.features[rng_() % cred_.features.size()].name;
      b.scopes[i] = kScopes[rng_() % 3];
      const int64_t cost = 1 + static_cast<int64_t>(rng_() % 3);
      const absl::Duration ttl = kTtls[rng_() % 4];
      if (rng_() % 3 != 0) b.used[i] = static_cast<int64_t>(rng_() % (cost + 1));
      if (b.retried || rng_() % 4 == 0) {
        b.rids[i] = absl::StrCat("rq", options_.seed, "-", result_.ops, "-", i);
        b.fps[i] = absl::StrCat(b.features[i], "/", b.scopes[i], "/", cost, "/",
                                absl::FormatDuration(ttl));
      }
      AcquireRequest& req = b.reqs[i];
      req.credential = kCredential;
      req.feature = b.features[i];
      req.scope = b.scopes[i];
      req.cost = cost;
      req.lease_ttl = ttl;
      req.want_limits = false;
      absl::StrAppend(&b.line, i == 0 ? " " : ", ", b.features[i],
                      b.scopes[i].empty() ? "" : "/" + b.scopes[i], " cost ", cost, " ttl ",
                      absl::FormatDuration(ttl), b.rids[i].empty() ? "" : " rid " + b.rids[i]);
    }
    return b;
  }
  // `b` through `replica`: AcquireAllShared, or AcquireManyShared.
  std::vector<absl::StatusOr<Decision>> CallBatch(bool all, int replica, const SimBatch& b) {
    std::vector<SharedRequestId> ids(b.reqs.size());
    for (size_t i = 0; i < b.reqs.size(); ++i) {
      if (!b.rids[i].empty()) ids[i] = SharedRequestId{b.rids[i], b.rids[i], b.fps[i]};
    }
    return BatchThrough(*backends_[replica], b.reqs, ids, all);
  }

  // A batch of 2 to 6 independent Acquires in one call (AcquireManyShared): each item decided
  // as a single Acquire, in order, the grants at one instant of Redis's. Some batches are sent
  // again through another replica with every item's request_id (the first answer lost): each
  // grant answers the same lease, charged once.
  void DoAcquireMany() {
    const SimBatch b = RandomBatch("acquire many", 2 + static_cast<int>(rng_() % 5));
    const int n = static_cast<int>(b.reqs.size());
    std::string line = b.line;
    const int64_t lo = Now();
    std::vector<absl::StatusOr<Decision>> d = CallBatch(false, b.replica, b);
    if (b.retried) {
      std::vector<absl::StatusOr<Decision>> again = CallBatch(false, b.retry_replica, b);
      absl::StrAppend(&line, "; answer lost, retried via R", b.retry_replica);
      for (int i = 0; i < n; ++i) {
        if (!d[i].ok() || !d[i]->granted || !again[i].ok()) continue;
        if (!again[i]->granted || !(again[i]->lease_id == d[i]->lease_id)) {
          Log(line);
          Fail("request-id", absl::StrCat("the retried batch's items[", i, "] answered ",
                                          again[i]->granted ? "another lease" : "a denial"));
          return;
        }
      }
      for (int i = 0; i < n; ++i) {
        if (!(d[i].ok() && d[i]->granted && !again[i].ok())) d[i] = std::move(again[i]);
      }
    }
    const int64_t hi = Now();
    int64_t at = -1;  // the grants' instant
    std::vector<std::string> results;
    for (int i = 0; i < n; ++i) {
      const AcquireRequest& req = b.reqs[i];
      if (!d[i].ok()) {
        results.push_back(d[i].status().ToString());
        if (down_ && absl::IsUnavailable(d[i].status())) {
          ++result_.unavailable;
        } else if (!(absl::IsInvalidArgument(d[i].status()) &&
                     absl::StrContains(d[i].status().message(), "can never be granted"))) {
          Fail("engine-error", absl::StrCat("items[", i, "]: ", d[i].status().ToString()));
        }
        continue;
      }
      if (!d[i]->granted) {
        ++result_.denials;
        results.push_back(absl::StrCat("denied (", d[i]->limited_by, ")"));
        if (OnlyKind(cred_, b.features[i], LimitKind::kUnlimited) &&
            !CoolingWithin(b.features[i], d[i]->limited_by, lo, hi)) {
          Fail("unlimited",
               absl::StrCat(b.features[i], " has only unlimited limits but was denied"));
        }
        Shadow(req, false, lo, hi, -1, b.used[i]);
        continue;
      }
      ++result_.grants;
      const int64_t t = Ns(d[i]->lease_expiry - req.lease_ttl);
      const int64_t lease = static_cast<int64_t>(leases_.size());
      results.push_back(absl::StrCat("L", lease, " at ", When(t)));
      if (down_) Fail("fail-closed", "granted while redis-server was killed");
      if (at >= 0 && t != at) {
        Fail("batch", absl::StrCat("items[", i, "] granted at ", When(t), ", an earlier item at ",
                                   When(at)));
      }
      at = t;
      if (t < lo || t > hi) {
        Fail("decision-time", absl::StrCat("grant at ", When(t), " outside the call [",
                                           When(lo), ", ", When(hi), "]"));
      }
      CheckCooldown(b.features[i], t);
      leases_.push_back({d[i]->lease_id, b.features[i], b.scopes[i], req.cost, b.used[i],
                         Ns(d[i]->lease_expiry)});
      leases_.back().at = t;
      ++result_.sends;
      const int64_t units = b.used[i].value_or(req.cost);
      if (std::string v = oracle_.SendOurs(t, b.features[i], b.scopes[i], units); !v.empty()) {
        Fail("over-grant", v);
      }
      if (std::string v = oracle_.Grant(lease, t, b.features[i], b.scopes[i], req.cost,
                                        Ns(d[i]->lease_expiry));
          !v.empty()) {
        Fail("concurrency", v);
      }
      Shadow(req, true, t, t, lease, b.used[i]);
    }
    Log(absl::StrCat(line, " -> ", absl::StrJoin(results, "; ")));
  }

  // An all-or-nothing batch of 2 to 4 items (features, scopes and costs at random) through one
  // replica: every item granted at one instant of Redis's, or none; the blocker denied by a
  // limit and the others in its name. Some batches give every item a request_id and are sent
  // again through another replica (the first answer lost): the same leases, charged once.
  void DoAcquireAll() {
    const SimBatch b = RandomBatch("acquire all", 2 + static_cast<int>(rng_() % 3));
    const int n = static_cast<int>(b.reqs.size());
    const int r = b.replica, r2 = b.retry_replica;
    const bool retried = b.retried;
    const std::vector<AcquireRequest>& reqs = b.reqs;
    const std::vector<std::string>& features = b.features;
    const std::vector<std::string>& scopes = b.scopes;
    const std::vector<std::optional<int64_t>>& used = b.used;
    std::string line = b.line;
    auto call = [&](int replica) { return CallBatch(true, replica, b); };
    const int64_t lo = Now();
    std::vector<absl::StatusOr<Decision>> d = call(r);
    auto granted = [&](const std::vector<absl::StatusOr<Decision>>& v) {
      int g = 0;
      for (const absl::StatusOr<Decision>& x : v) g += x.ok() && x->granted ? 1 : 0;
      return g;
    };
    if (static_cast<int>(d.size()) != n) {
      Log(line);
      Fail("engine-error", absl::StrCat("AcquireAllShared answered ", d.size(), " of ", n));
      return;
    }
    if (retried) {
      std::vector<absl::StatusOr<Decision>> again = call(r2);
      absl::StrAppend(&line, "; answer lost (", granted(d), " granted), retried via R", r2);
      if (granted(d) == n) {
        for (int i = 0; i < n; ++i) {
          if (!again[i].ok() || !again[i]->granted || !(again[i]->lease_id == d[i]->lease_id)) {
            Log(line);
            Fail("request-id", absl::StrCat("the retried batch's items[", i, "] answered ",
                                            again[i].ok() ? "another decision"
                                                          : again[i].status().ToString()));
            return;
          }
        }
      }
      d = std::move(again);
    }
    const int64_t hi = Now();
    const int g = granted(d);
    int blocker = -1;
    for (int i = 0; i < n; ++i) {
      if (!d[i].ok() || (!d[i]->granted &&
                         !absl::StartsWith(d[i]->limited_by, "all_or_nothing:items["))) {
        blocker = i;
        break;
      }
    }
    if (g != 0 && g != n) {
      Log(line);
      Fail("all-or-nothing", absl::StrCat(g, " of ", n, " items granted"));
      return;
    }
    if (g == 0) {
      const absl::Status error = blocker >= 0 && !d[blocker].ok() ? d[blocker].status()
                                                                   : absl::OkStatus();
      absl::StrAppend(&line, " -> none granted (items[", blocker, "]: ",
                      blocker < 0 ? "?" : error.ok() ? d[blocker]->limited_by : error.ToString(),
                      ")");
      Log(line);
      if (blocker < 0) {
        Fail("all-or-nothing", "denied with no item naming why");
        return;
      }
      for (int i = 0; i < n; ++i) {
        if (i == blocker) continue;
        if (!d[i].ok() || d[i]->limited_by != absl::StrCat("all_or_nothing:items[", blocker, "]")) {
          Fail("all-or-nothing", absl::StrCat("items[", i, "] is not denied in items[", blocker,
                                              "]'s name"));
        }
      }
      if (!error.ok()) {
        if (down_ && absl::IsUnavailable(error)) {
          ++result_.unavailable;
        } else if (!(absl::IsInvalidArgument(error) &&
                     absl::StrContains(error.message(), "can never be granted"))) {
          Fail("engine-error", error.ToString());
        }
        return;
      }
      ++result_.denials;
      for (int i = 0; i < n; ++i) {
        if (OnlyKind(cred_, features[i], LimitKind::kUnlimited) && i == blocker &&
            !CoolingWithin(features[i], d[i]->limited_by, lo, hi)) {
          Fail("unlimited", absl::StrCat(features[i], " has only unlimited limits but was denied"));
        }
      }
      ShadowAll(reqs, false, lo, hi, {});
      return;
    }
    // Every item granted, at one instant.
    const int64_t t = Ns(d[0]->lease_expiry - reqs[0].lease_ttl);
    absl::StrAppend(&line, " -> all granted at ", When(t));
    std::vector<int64_t> ids(n);
    for (int i = 0; i < n; ++i) {
      ids[i] = static_cast<int64_t>(leases_.size());
      absl::StrAppend(&line, i == 0 ? ": L" : ", L", ids[i]);
      leases_.push_back({d[i]->lease_id, features[i], scopes[i], reqs[i].cost, used[i],
                         Ns(d[i]->lease_expiry)});
      leases_.back().at = t;
    }
    Log(line);
    result_.grants += n;
    if (down_) Fail("fail-closed", "granted while redis-server was killed");
    for (int i = 0; i < n; ++i) {
      const int64_t ti = Ns(d[i]->lease_expiry - reqs[i].lease_ttl);
      if (ti != t) {
        Fail("all-or-nothing", absl::StrCat("items[", i, "] granted at ", When(ti),
                                            ", items[0] at ", When(t)));
      }
    }
    if (t < lo || t > hi) {
      Fail("decision-time", absl::StrCat("grant at ", When(t), " outside the call [", When(lo),
                                         ", ", When(hi), "]"));
    }
    for (int i = 0; i < n; ++i) {
      CheckCooldown(features[i], t);
      ++result_.sends;
      const int64_t units = used[i].value_or(reqs[i].cost);
      if (std::string v = oracle_.SendOurs(t, features[i], scopes[i], units); !v.empty()) {
        Fail("over-grant", v);
      }
      if (std::string v = oracle_.Grant(ids[i], t, features[i], scopes[i], reqs[i].cost,
                                        Ns(d[i]->lease_expiry));
          !v.empty()) {
        Fail("concurrency", v);
      }
    }
    ShadowAll(reqs, true, t, t, ids);
  }

  // ShadowAll: the same batch through the embedded ledger's AcquireAll, as Shadow compares a
  // single decision (asserted when every item's feature has only calendar or only concurrency
  // limits; a denial near a window boundary or lease expiry of any item is not compared).
  void ShadowAll(const std::vector<AcquireRequest>& reqs, bool granted, int64_t lo, int64_t hi,
                 const std::vector<int64_t>& leases) {
    if (ledger_ == nullptr) return;
    SetShadow(lo);
    std::vector<absl::StatusOr<Decision>> e = ledger_->AcquireAll(reqs);
    bool e_granted = !e.empty();
    for (const absl::StatusOr<Decision>& x : e) e_granted = e_granted && x.ok() && x->granted;
    for (size_t i = 0; i < e.size() && e_granted; ++i) {
      if (!leases.empty()) {
        leases_[leases[i]].shadow = e[i]->lease_id;
      } else {
        (void)ledger_->Release(e[i]->lease_id, 0);  // granted here only: given back at once
      }
    }
    bool ambiguous = false, explained = false, asserted = true;
    for (const AcquireRequest& req : reqs) {
      const std::string feature(req.feature);
      ambiguous = ambiguous || (!granted && Ambiguous(feature, lo, hi)) ||
                  CooldownEndNear(feature, lo, hi);
      auto it = diverged_until_.find(feature);
      explained = explained || (it != diverged_until_.end() && it->second > lo);
      asserted = asserted && (OnlyKind(cred_, feature, LimitKind::kCalendar) ||
                              OnlyKind(cred_, feature, LimitKind::kConcurrency));
    }
    if (ambiguous) {
      ++result_.ambiguous;
      return;
    }
    ++result_.compared;
    if (e_granted == granted) return;
    std::string what = absl::StrCat("all-or-nothing batch of ", reqs.size(), " at ", When(lo),
                                    ": redis ", granted ? "granted" : "denied", ", embedded ",
                                    e_granted ? "granted" : "denied");
    if (explained) {
      absl::StrAppend(&what, " (explained: after a reload raised or reshaped a limit it touches, "
                             "or an earlier disagreement)");
    } else {
      ++result_.unexplained;
    }
    Log(absl::StrCat("  DISAGREE ", what));
    result_.disagreements.push_back(what);
    if (asserted && !explained) {
      ++result_.asserted_disagreements;
      Fail("conformance", what);
    }
    for (const AcquireRequest& req : reqs) Diverge(std::string(req.feature), lo);
  }

  // The same decision through the embedded ledger, at Redis's instant (a denial: at `lo`).
  void Shadow(const AcquireRequest& req, bool granted, int64_t lo, int64_t hi, int64_t lease,
              std::optional<int64_t> used) {
    if (ledger_ == nullptr) return;
    SetShadow(lo);
    absl::StatusOr<Decision> e = ledger_->Acquire(req);
    const std::string feature(req.feature);
    const bool e_granted = e.ok() && e->granted;
    if (e_granted) {
      if (lease >= 0) {
        leases_[lease].shadow = e->lease_id;
      } else {
        // Granted here only: given back at once, so that the two keep the same counts.
        (void)ledger_->Release(e->lease_id, 0);
      }
    }
    if ((!granted && Ambiguous(feature, lo, hi)) || CooldownEndNear(feature, lo, hi)) {
      ++result_.ambiguous;
      return;
    }
    ++result_.compared;
    if (e_granted == granted && e.ok()) return;
    const bool asserted = OnlyKind(cred_, feature, LimitKind::kCalendar) ||
                          OnlyKind(cred_, feature, LimitKind::kConcurrency);
    std::string what = absl::StrCat(
        feature, req.scope.empty() ? "" : "/" + std::string(req.scope), " cost ", req.cost,
        " at ", When(lo), ": redis ", granted ? "granted" : "denied", ", embedded ",
        e.ok() ? (e->granted ? "granted" : absl::StrCat("denied (", e->limited_by, ")"))
               : e.status().ToString());
    auto it = diverged_until_.find(feature);
    const bool explained = it != diverged_until_.end() && it->second > lo;
    if (explained) {
      absl::StrAppend(&what, " (explained: after a reload raised or reshaped a limit it touches, "
                             "or an earlier disagreement)");
    } else {
      ++result_.unexplained;
    }
    Log(absl::StrCat("  DISAGREE ", what));
    result_.disagreements.push_back(what);
    if (asserted && !explained) {
      ++result_.asserted_disagreements;
      Fail("conformance", what);
    }
    Diverge(feature, lo);
  }

  // The two no longer hold the same counts for `feature`: not compared until its calendar
  // windows turn (for good, when it has other limits).
  void Diverge(const std::string& feature, int64_t t) {
    int64_t until = 0;
    for (const CounterRef& c : sim::Touches(cred_, feature, "")) {
      const LimitSpec* l = sim::FindLimit(cred_, c.limit);
      if (l == nullptr) continue;
      if (l->kind != LimitKind::kCalendar) {
        until = INT64_MAX;
        break;
      }
      int64_t s, e;
      sim::OracleCalendarWindow(l->unit, l->zone, t, &s, &e);
      until = std::max(until, e);
    }
    int64_t& u = diverged_until_[feature];
    u = std::max(u, until);
  }

  int PickLive() {
    std::vector<int> live;
    for (size_t i = 0; i < leases_.size(); ++i) {
      if (!leases_[i].done) live.push_back(static_cast<int>(i));
    }
    if (live.empty()) return -1;
    return live[rng_() % live.size()];
  }

  void DoRelease() {
    const int i = PickLive();
    if (i < 0) return;
    SimLease& l = leases_[i];
    const int r = static_cast<int>(rng_() % kReplicas);
    const int64_t lo = Now();
    absl::StatusOr<ReleaseResult> rr = backends_[r]->Release(l.id, l.used);
    const int64_t hi = Now();
    Log(absl::StrCat("release L", i, l.used ? absl::StrCat(" used ", *l.used) : "", " via R", r,
                     " -> ", rr.ok() ? absl::StrCat("refunded ", rr->refunded, " freed ", rr->freed)
                                     : rr.status().ToString()));
    if (rr.ok()) {
      l.done = true;
      l.released = true;
      if (Oracle::Lease* ol = oracle_.FindLease(i)) ol->released = true;
      if (rr->refunded > l.cost) {
        Fail("refund", absl::StrCat("L", i, " refunded ", rr->refunded, " > cost ", l.cost));
      }
      if (l.shadow && ledger_ != nullptr) {
        SetShadow(lo);
        (void)ledger_->Release(*l.shadow, l.used);
      }
      return;
    }
    if (absl::IsNotFound(rr.status())) {
      l.done = true;
      if (l.expiry > hi) {
        Fail("lease-lost", absl::StrCat("L", i, " expires at ", When(l.expiry),
                                        " but Release at ", When(lo), " did not find it"));
      }
      return;
    }
    if (down_ && absl::IsUnavailable(rr.status())) {
      ++result_.unavailable;
    } else {
      Fail("engine-error", rr.status().ToString());
    }
  }

  void DoRenew(bool at_expiry) {
    const int i = PickLive();
    if (i < 0) return;
    if (at_expiry) {
      if (leases_[i].expiry - Now() > 1000000000) return;
      WaitUntil(leases_[i].expiry + static_cast<int64_t>(rng_() % 7) * 1000000 - 3000000);
    }
    SimLease& l = leases_[i];
    static const absl::Duration kTtls[] = {absl::ZeroDuration(), absl::Milliseconds(500),
                                           absl::Seconds(1), absl::Milliseconds(2500)};
    const absl::Duration ttl = kTtls[rng_() % 4];
    const absl::Duration effective =
        ttl == absl::ZeroDuration() ? FeatureOf(l.feature).default_lease_ttl : ttl;
    const int r = static_cast<int>(rng_() % kReplicas);
    const int64_t lo = Now();
    absl::StatusOr<absl::Time> rn = backends_[r]->Renew(l.id, ttl);
    const int64_t hi = Now();
    Log(absl::StrCat("renew L", i, " (expiry ", When(l.expiry), ") ttl ",
                     absl::FormatDuration(ttl), " via R", r, " at [", When(lo), ", ", When(hi),
                     "] -> ", rn.ok() ? When(Ns(*rn)) : rn.status().ToString()));
    if (!rn.ok()) {
      if (absl::IsNotFound(rn.status())) {
        l.done = true;
        if (l.expiry > hi) {
          Fail("lease-lost", absl::StrCat("L", i, " expires at ", When(l.expiry),
                                          " but Renew at ", When(lo), " did not find it"));
        }
      } else if (down_ && absl::IsUnavailable(rn.status())) {
        ++result_.unavailable;
      } else {
        Fail("engine-error", rn.status().ToString());
      }
      return;
    }
    const int64_t tr = Ns(*rn - effective);
    Oracle::Lease* ol = oracle_.FindLease(i);
    if (HoldsSlots(l.feature) && l.expiry <= tr) {
      Fail("renew-after-expiry", absl::StrCat("L", i, " expired at ", When(l.expiry),
                                              " but Renew at ", When(tr), " returned OK"));
    }
    if (ol != nullptr) {
      std::vector<int64_t> before;
      for (const CounterRef& c : ol->touches) before.push_back(oracle_.Held(c, tr, false));
      ol->expiry = Ns(*rn);
      for (size_t k = 0; k < ol->touches.size(); ++k) {
        const LimitSpec* spec = sim::FindLimit(cred_, ol->touches[k].limit);
        if (spec == nullptr || spec->kind != LimitKind::kConcurrency) continue;
        const int64_t held = oracle_.Held(ol->touches[k], tr, false);
        if (held > spec->capacity && held > before[k]) {
          Fail("concurrency", absl::StrCat("renewing L", i, " brought ", ol->touches[k].limit,
                                           " to ", held, " held > capacity ", spec->capacity));
        }
      }
    }
    l.expiry = Ns(*rn);
    if (l.shadow && ledger_ != nullptr) {
      SetShadow(tr);
      (void)ledger_->Renew(*l.shadow, ttl);
    }
  }

  // Until Redis's clock reaches `t` (bounded: at most 5 s).
  void WaitUntil(int64_t t) {
    testing::Eventually([&] { return Now() >= t; }, absl::Seconds(5), absl::Milliseconds(2));
  }
  void DoWait() {
    const int64_t d = (20 + static_cast<int64_t>(rng_() % 280)) * 1000000;
    Log(absl::StrCat("wait ", d / 1000000, " ms"));
    WaitUntil(Now() + d);
  }
  // Until the next live lease has expired (when that is within 1.5 s).
  void DoExpire() {
    int64_t next = INT64_MAX;
    for (const SimLease& l : leases_) {
      if (!l.done) next = std::min(next, l.expiry);
    }
    const int64_t now = Now();
    if (next == INT64_MAX || next - now > 1500000000) return;
    Log(absl::StrCat("wait for the expiry at ", When(next)));
    WaitUntil(next + 1000000);
  }

  void DoReset() {
    const int r = static_cast<int>(rng_() % kReplicas);
    const absl::Status s = backends_[r]->Reset(kCredential);
    const int64_t t = Now();
    Log(absl::StrCat("reset via R", r, " -> ", s.ok() ? "OK" : s.ToString(), " by ", When(t)));
    if (!s.ok()) {
      Fail("engine-error", s.ToString());
      return;
    }
    oracle_.Reset(t);
    // Reset forgets every cooldown, outside estimate and back-off, in both engines.
    expected_cooldown_.clear();
    cooled_until_.clear();
    told_cooldown_.clear();
    cooldown_ends_.clear();
    if (ledger_ != nullptr) {
      SetShadow(t);
      (void)ledger_->Reset(kCredential);
    }
  }

  // A hot reload on every replica: a limit tightened, loosened or renamed.
  void DoReload() {
    CredentialSpec next = cred_;
    FeatureSpec& f = next.features[rng_() % next.features.size()];
    LimitSpec& l = f.limits[rng_() % f.limits.size()];
    const LimitSpec before = l;
    std::string what = absl::StrCat(f.name, ".", l.name, " ", sim::DescribeLimit(l), " -> ");
    const uint64_t what_kind = rng_() % 7;
    const uint64_t up = rng_() % 2;
    switch (options_.shape_changes ? what_kind : what_kind % 5) {
      case 0: l.capacity *= 2; break;
      case 1: l.capacity = std::max<int64_t>(1, l.capacity / 2); break;
      case 2: l.capacity = std::max<int64_t>(1, l.capacity + (up ? 1 : -1)); break;
      case 3: l.capacity = std::max<int64_t>(1, l.capacity - 1); break;
      case 4:
        // A concurrency limit renamed while leases hold it: see SharedSimOptions::renames.
        if (l.kind == LimitKind::kConcurrency && !options_.concurrency_renames) {
          l.capacity += 1;
          break;
        }
        l.name = absl::EndsWith(l.name, "_r") ? l.name.substr(0, l.name.size() - 2)
                                              : l.name + "_r";
        break;
      case 5:  // a shape change: a bucket's rate, a window's period, a calendar's unit
      case 6:
        if (l.kind == LimitKind::kTokenBucket) {
          l.rate = std::max<int64_t>(1, up ? l.rate * 2 : l.rate / 2);
        } else if (l.kind == LimitKind::kRolling || l.kind == LimitKind::kSliding) {
          l.period = up ? l.period * 2 : std::max(absl::Seconds(1), l.period / 2);
        } else if (l.kind == LimitKind::kCalendar) {
          l.unit = l.unit == CalendarUnit::kMinute ? CalendarUnit::kHour : CalendarUnit::kMinute;
        } else {
          l.capacity = std::max<int64_t>(1, l.capacity - 1);
        }
        break;
    }
    absl::StrAppend(&what, l.name, " ", sim::DescribeLimit(l));
    Policy p;
    p.credentials = {next};
    for (int r = 0; r < kReplicas; ++r) {
      const absl::Status s = backends_[r]->Reload(p);
      if (!s.ok()) {
        Log(absl::StrCat("reload ", what, " on R", r, " -> ", s.ToString()));
        Fail("engine-error", absl::StrCat("Reload: ", s.ToString()));
        return;
      }
    }
    const int64_t t = Now();
    Log(absl::StrCat("reload on every replica: ", what, " by ", When(t)));
    // A raised capacity or rate applies at once in Redis (the provider model with the new rule
    // allows it) but only once the old window drained in the embedded ledger
    // (Rule::CarriesCounterOf): the two part until then, an explained difference.
    const bool raised = l.capacity > before.capacity || l.rate > before.rate ||
                        l.kind != before.kind || l.unit != before.unit ||
                        l.period != before.period;
    if (l.name != before.name) {
      // What Report learnt about the old name (its cooldown, estimate, back-off) is not the new
      // limit's, in either engine; a feature's own cooldown (Retry-After) stays.
      for (const FeatureSpec& g : cred_.features) {
        for (const CounterRef& c : sim::Touches(cred_, g.name, "")) {
          if (c.limit == absl::StrCat(f.name, ".", before.name)) cooled_until_.erase(g.name);
        }
      }
    }
    cred_ = next;
    if (raised) {
      for (const FeatureSpec& g : cred_.features) {
        for (const CounterRef& c : sim::Touches(cred_, g.name, "")) {
          if (c.limit == absl::StrCat(f.name, ".", l.name)) Diverge(g.name, t);
        }
      }
    }
    oracle_.ApplyPolicy(cred_, t);
    if (ledger_ != nullptr) {
      SetShadow(t);
      if (absl::Status s = ledger_->Reload(p); !s.ok()) Fail("engine-error", s.ToString());
    }
  }


  // ---- Report: what a worker saw from the upstream, passed on through a replica ----
  //
  // Mirrors tests/sim/never_over_sim.cc (DoReportOutside, DoReportThrottle) on Redis's clock.
  // Answers at random: a 200 or 429 with X-RateLimit-Limit/Remaining (or Used)/Reset counts
  // of one limit the feature touches (after calls from outside quotad on it, which the oracle's
  // provider counts: the units a Report adopts are those calls, so every later grant is checked
  // against a provider that holds them); a 429 with Retry-After (1 or 2 s) or without; with
  // sent_at or without; a clean 200 without counts (the back-off starts over). What is checked:
  //   - over-grant, by the oracle as for every grant (an adoption can only reduce later grants);
  //     some answers give a stale lower count (which must not lower quotad's) or a higher one;
  //   - a throttle cools the reported feature until ReportResult::cooldown_until, and every
  //     feature GetUsage then shows cooling until its reset: a grant on one of them decided
  //     inside [the Report, that end) is a violation ("cooldown"); with Retry-After R the
  //     reported feature grants nothing before observed_at + R (unless the answer says it was
  //     capped), whatever reloads come between, as in the embedded sim;
  //   - conformance: the embedded ledger gets the same answer at the Report's first instant of
  //     Redis's TIME, lo (see CompareReport for what is comparable).
  void DoReport() {
    // < 8 counts, < 14 a bare throttle, else a clean 200. While redis-server is down no
    // outside calls are made: the answer telling of them cannot reach Redis.
    const uint64_t kind = down_ ? 8 + rng_() % 12 : rng_() % 20;
    const int r = static_cast<int>(rng_() % kReplicas);
    const bool explicit_observed = rng_() % 2 == 0;
    const uint64_t sent_word = rng_();
    const std::string feature = cred_.features[rng_() % cred_.features.size()].name;
    UpstreamAnswer a;
    a.credential = kCredential;
    a.feature = feature;
    int64_t retry_after = 0;
    std::string line;
    std::string named;  // the limit the counts describe, and the count they give
    int64_t said = -1;
    const int64_t t0 = Now();
    if (kind < 8) {
      if (!CountsAnswer(feature, t0, &a, &retry_after, &line, &named, &said)) return;
    } else if (kind < 14) {
      a.http_status = 429;
      if (rng_() % 2 == 0) {
        retry_after = 1 + static_cast<int64_t>(rng_() % 2);
        a.headers.emplace_back("Retry-After", absl::StrCat(retry_after));
      }
      line = absl::StrCat("report ", feature, " 429",
                          retry_after ? absl::StrCat(" Retry-After ", retry_after) : "");
    } else {
      a.http_status = 200;
      line = absl::StrCat("report ", feature, " 200 (no counts)");
    }
    // sent_at: absent for a quarter of the answers, else up to 1 s before (counts: the headers
    // are of t0, so the provider counted the request then), in whole microseconds as Redis
    // keeps times; never inside an earlier Report's call, where the two engines' instants of it
    // differ (Redis decides somewhere in [lo, hi], the embedded ledger at lo).
    if (sent_word % 4 != 0) {
      const int64_t back = kind < 8 ? 0 : 1000000;  // us
      int64_t sent = t0 - static_cast<int64_t>((sent_word >> 8) % (back + 1)) * 1000;
      sent -= sent % 1000;
      for (const auto& [plo, phi] : report_spans_) {
        if (sent >= plo - 1000 && sent <= phi + 1000) sent = plo - 2000;
      }
      a.sent_at = absl::FromUnixNanos(sent);
      absl::StrAppend(&line, " sent ", When(sent));
    }
    const int64_t lo = Now();
    if (explicit_observed) {
      a.observed_at = absl::FromUnixNanos(lo);
      absl::StrAppend(&line, " observed ", When(lo));
    }
    absl::StatusOr<ReportResult> rs = backends_[r]->Report(a);
    const int64_t hi = Now();
    report_spans_.push_back({lo, hi});
    if (report_spans_.size() > 16) report_spans_.erase(report_spans_.begin());
    absl::StrAppend(&line, " via R", r, " at [", When(lo), ", ", When(hi), "]");
    if (!rs.ok()) {
      Log(absl::StrCat(line, " -> ", rs.status().ToString()));
      if (down_ && absl::IsUnavailable(rs.status())) {
        ++result_.unavailable;
      } else {
        Fail("engine-error", absl::StrCat("Report: ", rs.status().ToString()));
      }
      return;
    }
    if (down_) {
      Log(absl::StrCat(line, " -> OK"));
      Fail("fail-closed", "a Report answered OK while redis-server was killed");
      return;
    }
    const bool throttled = a.http_status == 429;
    ++result_.reports;
    if (throttled) ++result_.throttles;
    result_.adoptions += static_cast<int64_t>(rs->adopted.size());
    const int64_t until =
        rs->cooldown_until == absl::InfinitePast() ? 0 : Ns(rs->cooldown_until);
    Log(absl::StrCat(line, " ->", rs->adopted.empty() ? "" : " adopted ",
                     absl::StrJoin(rs->adopted, ", "),
                     until ? absl::StrCat(" cooldown until ", When(until)) : "",
                     rs->warnings.empty() ? "" : " warnings: ",
                     absl::StrJoin(rs->warnings, "; ")));
    // An adoption only ever raises a count, to the one the answer gave (at most the capacity),
    // on the limit it named: "<limit> used <before> -> <after>".
    for (const std::string& adopted : rs->adopted) {
      std::vector<std::string> w = absl::StrSplit(adopted, ' ');
      int64_t before = -1, after = -1;
      if (w.size() != 5 || w[1] != "used" || w[3] != "->" || !absl::SimpleAtoi(w[2], &before) ||
          !absl::SimpleAtoi(w[4], &after) || w[0] != named || after <= before ||
          after != said) {
        Fail("adoption", absl::StrCat("the answer gave ", named.empty() ? "no count" : named,
                                      named.empty() ? "" : absl::StrCat(" used ", said),
                                      " but the replica adopted \"", adopted, "\""));
      }
    }
    if (throttled != (until != 0)) {
      Fail("cooldown", absl::StrCat("a ", a.http_status, " answer ",
                                    throttled ? "cooled nothing" : "cooled the feature"));
      return;
    }
    if (throttled) {
      if (until < lo) {
        Fail("cooldown", absl::StrCat("a throttle reported at ", When(lo),
                                      " cools only until ", When(until)));
      }
      NoteCooling(&cooled_until_, feature, lo, until);
      NoteCooling(&told_cooldown_, feature, lo, until);
      if (retry_after > 0) {
        // observed_at is lo, or the replica's clock after lo: the upstream's Retry-After ends
        // no earlier than lo + R. A Retry-After longer than the feature's longest window is
        // capped, which the answer says.
        int64_t want = lo + retry_after * 1000000000;
        const bool capped = std::any_of(rs->warnings.begin(), rs->warnings.end(), [](auto& w) {
          return absl::StrContains(w, "capped at");
        });
        if (capped) want = std::min(want, until);
        if (until < want) {
          Fail("cooldown", absl::StrCat("Retry-After ", retry_after, " seen at ", When(lo),
                                        " but ", feature, " cools only until ", When(until)));
        }
        NoteCooling(&expected_cooldown_, feature, lo, want);
      }
    }
    // Which features cool now: GetUsage through a replica (every feature charging a cooled
    // limit shows "<feature>.cooldown" until its end).
    const int ru = static_cast<int>(rng_() % kReplicas);
    const int64_t ulo = Now();
    absl::StatusOr<std::vector<LimitStatus>> usage = backends_[ru]->Usage(kCredential);
    const int64_t uhi = Now();
    if (!usage.ok()) {
      Fail("engine-error", absl::StrCat("Usage: ", usage.status().ToString()));
      return;
    }
    std::map<std::string, int64_t> cooling;
    std::vector<std::string> learnt;
    for (const LimitStatus& st : *usage) {
      if (st.outside_estimate > 0) {
        learnt.push_back(absl::StrCat(st.name, " ", st.outside_estimate));
      }
      if (!st.cooldown) continue;
      const std::string g = st.name.substr(0, st.name.rfind('.'));
      cooling[g] = Ns(st.reset);
      NoteCooling(&cooled_until_, g, lo, Ns(st.reset));
      NoteCooling(&told_cooldown_, g, lo, Ns(st.reset));
    }
    if (!cooling.empty() || !learnt.empty()) {
      std::vector<std::string> cooled;
      for (const auto& [g, end] : cooling) cooled.push_back(absl::StrCat(g, " until ", When(end)));
      Log(absl::StrCat("  usage via R", ru, ": cooling [", absl::StrJoin(cooled, ", "),
                       "], outside estimates [", absl::StrJoin(learnt, ", "), "]"));
    }
    if (until > uhi && (cooling.count(feature) == 0 || cooling[feature] + 1000 < until)) {
      Fail("cooldown", absl::StrCat("the throttle cools ", feature, " until ", When(until),
                                    " but GetUsage through R", ru, " at [", When(ulo), ", ",
                                    When(uhi), "] shows ",
                                    cooling.count(feature) ? When(cooling[feature]) : "none"));
    }
    CompareReport(a, *rs, t0, lo, hi, *usage, cooling, ulo, uhi);
  }

  // The headers of a 200 or 429 about one limit of `feature`: unscoped calendar, rolling or
  // sliding (what X-RateLimit-Limit can name: capacity unique among them), after 0 to 4 calls
  // from outside quotad on it at `t0` (a 429 when one did not fit the provider's window).
  // False (nothing to report) when the feature has no such limit.
  bool CountsAnswer(const std::string& feature, int64_t t0, UpstreamAnswer* a,
                    int64_t* retry_after, std::string* line, std::string* named,
                    int64_t* said_out) {
    std::vector<std::pair<std::string, LimitSpec>> candidates;
    for (const CounterRef& c : sim::Touches(cred_, feature, "")) {
      const LimitSpec* l = sim::FindLimit(cred_, c.limit);
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
      return false;
    }
    const auto& [limit, spec] = unique[rng_() % unique.size()];
    int calls = rng_() % 4 == 0 ? 0 : 1 + static_cast<int>(rng_() % 4);
    if (calls > 0 && !options_.counts_behind_unsent_charges && spec.kind == LimitKind::kSliding) {
      // The known finding (shared_never_over_test.cc, SharedNeverOverFindings): a sliding
      // count no higher than quotad's charges of the span is taken as quotad's own units, also
      // when some of those charges were never sent (a lease that used less and has not been
      // released, or expired); they leave the window before the outside calls the count holds,
      // which are then granted again. Unless asked for, no outside calls are made on a sliding
      // limit while such a charge of the last span (and a second) lies on it.
      for (const SimLease& l : leases_) {
        if (l.released || l.at <= t0 - absl::ToInt64Nanoseconds(spec.period) - 1000000000 ||
            l.used.value_or(l.cost) >= l.cost) {
          continue;
        }
        bool on = false;
        for (const CounterRef& c : sim::Touches(cred_, l.feature, l.scope)) on |= c.limit == limit;
        if (on) {
          Log(absl::StrCat("report on ", feature, ": no outside calls on ", limit, " (L",
                           &l - leases_.data(), " charged more than it sent)"));
          calls = 0;
          break;
        }
      }
    }
    bool throttled = false;
    int accepted = 0;
    for (int i = 0; i < calls; ++i) {
      if (oracle_.SendOutside(t0, limit, 1)) {
        ++accepted;
      } else {
        throttled = true;
      }
    }
    result_.outside_sends += accepted;
    sim::ProviderLimit* model = oracle_.Current(limit);
    if (model == nullptr) return false;
    const int64_t used = model->Used("", t0);
    const int64_t reset = model->ResetNs("", t0);
    // Mostly the provider's count. When no outside call was just made (earlier ones were
    // reported then), some 200s carry a stale lower count (it must not lower quotad's: the
    // oracle sees any grant that lets through) or a higher one, up to the capacity (calls the
    // provider counted that this sim does not model).
    int64_t said = used;
    const uint64_t variant = rng_() % 10;
    if (accepted == 0 && !throttled && variant == 0) {
      said = static_cast<int64_t>(rng_() % static_cast<uint64_t>(used + 1));
    } else if (accepted == 0 && !throttled && variant == 1 && spec.capacity > used) {
      said = used + static_cast<int64_t>(rng_() % static_cast<uint64_t>(spec.capacity - used + 1));
    }
    *named = limit;
    *said_out = said;
    a->http_status = throttled ? 429 : 200;
    a->headers.emplace_back("X-RateLimit-Limit", absl::StrCat(spec.capacity));
    if (rng_() % 2 == 0) {
      a->headers.emplace_back("X-RateLimit-Remaining",
                              absl::StrCat(std::max<int64_t>(0, spec.capacity - said)));
    } else {
      a->headers.emplace_back("X-RateLimit-Used", absl::StrCat(said));
    }
    const int64_t now_s = t0 / 1000000000;
    int64_t reset_s = 0;
    if (reset > t0 && reset < t0 + 3600 * int64_t{1000000000}) {
      reset_s = (reset + 999999999) / 1000000000;  // rounded up: never early
      if (spec.kind == LimitKind::kRolling) {
        a->headers.emplace_back("X-RateLimit-Reset-In", absl::StrCat(reset_s - now_s, "s"));
      } else {
        a->headers.emplace_back("X-RateLimit-Reset", absl::StrCat(reset_s));
      }
    }
    if (throttled && rng_() % 3 != 0) {
      *retry_after = std::max<int64_t>(1, reset_s - now_s);
      a->headers.emplace_back("Retry-After", absl::StrCat(*retry_after));
    }
    *line = absl::StrCat("outside traffic on ", limit, ": ", accepted, " of ", calls,
                         " accepted; report ", feature, " ", a->http_status, " used ", said,
                         said != used ? absl::StrCat(" (provider ", used, ")") : "", "/",
                         spec.capacity, reset_s ? absl::StrCat(" reset ", When(reset_s * 1000000000)) : "",
                         *retry_after ? absl::StrCat(" Retry-After ", *retry_after) : "");
    return true;
  }

  // A cooldown of `feature` over [from, until), merged with one it overlaps.
  static void NoteCooling(std::map<std::string, std::pair<int64_t, int64_t>>* m,
                          const std::string& feature, int64_t from, int64_t until) {
    if (until <= from) return;
    auto it = m->find(feature);
    if (it != m->end() && it->second.second >= from) {
      it->second.second = std::max(it->second.second, until);
      return;
    }
    (*m)[feature] = {from, until};
  }

  // A grant on `feature` decided at `t` (Redis's instant) inside a cooldown it was told of.
  void CheckCooldown(const std::string& feature, int64_t t) {
    for (const auto* m : {&expected_cooldown_, &cooled_until_}) {
      auto it = m->find(feature);
      if (it == m->end() || t < it->second.first || t >= it->second.second) continue;
      Fail("cooldown",
           absl::StrCat("granted ", feature, " at ", When(t), " inside its cooldown from ",
                        When(it->second.first), " until ", When(it->second.second),
                        m == &expected_cooldown_ ? " (the upstream's Retry-After)"
                                                 : " (as the replicas answered the throttle)"));
    }
  }

  // Whether a denial of `feature` in [lo, hi] naming `limited_by` is its cooldown, one it was
  // told of (an unlimited feature is denied only so: a throttle cools every feature).
  bool CoolingWithin(const std::string& feature, const std::string& limited_by, int64_t lo,
                     int64_t hi) const {
    if (limited_by != absl::StrCat(feature, ".cooldown")) return false;
    for (const auto* m : {&expected_cooldown_, &told_cooldown_}) {
      auto it = m->find(feature);
      if (it != m->end() && it->second.first <= hi && it->second.second >= lo) return true;
    }
    return false;
  }

  // Whether a cooldown of `feature` ends, in one engine or the other, within [lo, hi]: the two
  // end the same back-off apart by up to a Report's call (Redis starts it at its TIME in
  // [lo, hi], the embedded ledger at lo), so a decision there is not compared.
  bool CooldownEndNear(const std::string& feature, int64_t lo, int64_t hi) const {
    auto it = cooldown_ends_.find(feature);
    if (it == cooldown_ends_.end()) return false;
    for (const auto& [a, b] : it->second) {
      if (lo <= b + 1000000 && hi >= a - 1000000) return true;
    }
    return false;
  }
  void NoteCooldownEnds(const std::string& feature, int64_t a, int64_t b) {
    std::vector<std::pair<int64_t, int64_t>>& v = cooldown_ends_[feature];
    v.push_back({std::min(a, b), std::max(a, b)});
    if (v.size() > 8) v.erase(v.begin());
  }

  static std::string NoDigits(const std::vector<std::string>& lines) {
    std::string out;
    for (const std::string& l : lines) {
      for (char c : l) {
        if (c < '0' || c > '9') out.push_back(c);
      }
      out.push_back('\n');
    }
    return out;
  }

  // The same answer through the embedded ledger, at lo, and what both then show.
  //
  // Comparable only where the two hold the same counts: which limits a throttle blames (the
  // fullest), whether a count is adopted and from what, and whether a full count explains a
  // throttle all read the counts. So the answer is compared when the reported feature and every
  // feature sharing a limit with it have not diverged (Diverge), and no window boundary, lease
  // expiry or cooldown end of theirs lies between the headers' instant t0 and hi (the two
  // decide at different instants of [lo, hi]). Compared: the adopted lines; the warnings with
  // their digits taken out (they name instants, which differ by the call's span); the cooldown's
  // end, to within the call's span (+1 ms); GetUsage's outside estimate of each limit the
  // feature touches, to within one unit (the two learnt it up to the call's span apart and read
  // it at different instants of GetUsage's call, rounding to nearest); and which of those
  // features cool and until when (to within the call's span). As for decisions, a difference is
  // asserted when those features have only calendar, concurrency or unlimited limits, and
  // counted and shown otherwise; either way they diverge from then on.
  void CompareReport(const UpstreamAnswer& a, const ReportResult& rs, int64_t t0, int64_t lo,
                     int64_t hi, const std::vector<LimitStatus>& shared_usage,
                     const std::map<std::string, int64_t>& shared_cooling, int64_t ulo,
                     int64_t uhi) {
    if (ledger_ == nullptr) return;
    const std::string feature(a.feature);
    SetShadow(lo);
    absl::StatusOr<ReportResult> re = ledger_->Report(a);
    SetShadow(ulo);
    absl::StatusOr<std::vector<LimitStatus>> eu = ledger_->Usage(kCredential);
    if (!re.ok() || !eu.ok()) {
      const std::string what = absl::StrCat("report ", feature, " at ", When(lo),
                                            ": redis OK, embedded ",
                                            re.ok() ? eu.status().ToString() : re.status().ToString());
      result_.disagreements.push_back(what);
      Fail("conformance", what);
      return;
    }
    std::map<std::string, int64_t> embedded_cooling;
    for (const LimitStatus& st : *eu) {
      if (st.cooldown) embedded_cooling[st.name.substr(0, st.name.rfind('.'))] = Ns(st.reset);
    }
    const int64_t slack = hi - lo + 1000000;
    // The features that share a limit with the reported one (itself included).
    std::set<std::string> touched;
    for (const CounterRef& c : sim::Touches(cred_, feature, "")) touched.insert(c.limit);
    std::vector<std::string> involved;
    bool diverged = false, ambiguous = false, asserted = true;
    for (const FeatureSpec& g : cred_.features) {
      bool shares = g.name == feature;
      for (const CounterRef& c : sim::Touches(cred_, g.name, "")) shares |= touched.count(c.limit);
      if (!shares) continue;
      involved.push_back(g.name);
      auto it = diverged_until_.find(g.name);
      diverged |= it != diverged_until_.end() && it->second > lo;
      ambiguous |= Ambiguous(g.name, t0, hi) || CooldownEndNear(g.name, t0, hi);
      asserted &= OnlyKind(cred_, g.name, LimitKind::kCalendar) ||
                  OnlyKind(cred_, g.name, LimitKind::kConcurrency) ||
                  OnlyKind(cred_, g.name, LimitKind::kUnlimited);
    }
    // The ends of the cooldowns as the two engines have them: decisions near them are not
    // compared (CooldownEndNear).
    const int64_t e_until =
        re->cooldown_until == absl::InfinitePast() ? 0 : Ns(re->cooldown_until);
    const int64_t s_until =
        rs.cooldown_until == absl::InfinitePast() ? 0 : Ns(rs.cooldown_until);
    if (e_until && s_until) NoteCooldownEnds(feature, e_until, s_until);
    for (const std::string& g : involved) {
      auto s = shared_cooling.find(g);
      auto e = embedded_cooling.find(g);
      if (s != shared_cooling.end() && e != embedded_cooling.end()) {
        NoteCooldownEnds(g, s->second, e->second);
      } else if (s != shared_cooling.end()) {
        NoteCooldownEnds(g, s->second - slack, s->second + slack);
      } else if (e != embedded_cooling.end()) {
        NoteCooldownEnds(g, e->second - slack, e->second + slack);
      }
    }
    if (diverged) return;  // the counts differ already: nothing to compare
    if (ambiguous) {
      ++result_.ambiguous;
      for (const std::string& g : involved) Diverge(g, lo);
      return;
    }
    ++result_.compared;
    ++result_.reports_compared;
    std::vector<std::string> diffs;
    if (rs.adopted != re->adopted) {
      diffs.push_back(absl::StrCat("adopted [", absl::StrJoin(rs.adopted, ", "), "] vs [",
                                   absl::StrJoin(re->adopted, ", "), "]"));
    }
    if (NoDigits(rs.warnings) != NoDigits(re->warnings)) {
      diffs.push_back(absl::StrCat("warnings [", absl::StrJoin(rs.warnings, "; "), "] vs [",
                                   absl::StrJoin(re->warnings, "; "), "]"));
    }
    if ((s_until == 0) != (e_until == 0) || std::abs(s_until - e_until) > slack) {
      diffs.push_back(absl::StrCat("cooldown until ", s_until ? When(s_until) : "none", " vs ",
                                   e_until ? When(e_until) : "none"));
    }
    for (const LimitStatus& st : shared_usage) {
      if (st.cooldown || !st.scope.empty() || !touched.count(st.name)) continue;
      for (const LimitStatus& et : *eu) {
        if (et.cooldown || et.name != st.name || !et.scope.empty()) continue;
        if (std::abs(st.outside_estimate - et.outside_estimate) > 1) {
          diffs.push_back(absl::StrCat(st.name, " outside estimate ", st.outside_estimate,
                                       " vs ", et.outside_estimate));
        }
      }
    }
    for (const std::string& g : involved) {
      auto s = shared_cooling.find(g);
      auto e = embedded_cooling.find(g);
      const int64_t se = s == shared_cooling.end() ? 0 : s->second;
      const int64_t ee = e == embedded_cooling.end() ? 0 : e->second;
      if ((se && ee && std::abs(se - ee) > slack) || (se && !ee && se > uhi + slack) ||
          (ee && !se && ee > uhi + slack)) {
        diffs.push_back(absl::StrCat(g, " cools until ", se ? When(se) : "none", " vs ",
                                     ee ? When(ee) : "none"));
      }
    }
    if (diffs.empty()) return;
    std::string what = absl::StrCat("report ", feature, " ", a.http_status, " at ", When(lo),
                                    ": redis vs embedded: ", absl::StrJoin(diffs, "; "));
    ++result_.unexplained;
    Log(absl::StrCat("  DISAGREE ", what));
    result_.disagreements.push_back(what);
    if (asserted) {
      ++result_.asserted_disagreements;
      Fail("conformance", what);
    }
    for (const std::string& g : involved) Diverge(g, lo);
  }

  void Kill() {
    Log(absl::StrCat("kill -9 redis-server at ", When(Now())));
    if (absl::Status s = redis_.Stop(SIGKILL); !s.ok()) Fail("engine-error", s.ToString());
    down_ = true;
  }
  void Restart() {
    if (absl::Status s = redis_.Restart(); !s.ok()) {
      Fail("engine-error", absl::StrCat("restart: ", s.ToString()));
      down_ = false;
      return;
    }
    const bool all = testing::Eventually(
        [&] {
          for (auto& b : backends_) {
            if (!b->CheckHealth()) return false;
          }
          return true;
        },
        absl::Seconds(15), absl::Milliseconds(20));
    down_ = false;
    Log(absl::StrCat("redis-server restarted (AOF replayed), every replica serving by ",
                     When(Now())));
    if (!all) Fail("engine-error", "the replicas did not serve again within 15 s");
  }

  RedisServer& redis_;
  const SharedSimOptions options_;
  std::mt19937_64 rng_;
  CredentialSpec cred_;
  std::vector<std::unique_ptr<RedisBackend>> backends_;
  Oracle oracle_;
  std::unique_ptr<FakeClock> shadow_clock_;
  std::unique_ptr<Ledger> ledger_;
  // Features whose counts the ledger no longer shares, until when.
  std::map<std::string, int64_t> diverged_until_;
  std::vector<SimLease> leases_;
  // Cooldowns each feature was told of, [from, until) in Redis's ns: by the upstream's
  // Retry-After (kept across reloads, as the feature's own cooldown is), and as the replicas
  // answered (ReportResult, GetUsage). Reset clears both.
  std::map<std::string, std::pair<int64_t, int64_t>> expected_cooldown_, cooled_until_;
  // As cooled_until_, but kept across reloads: what explains a denial naming a cooldown.
  std::map<std::string, std::pair<int64_t, int64_t>> told_cooldown_;
  // Per feature, the last spans where the two engines' ends of one cooldown lie.
  std::map<std::string, std::vector<std::pair<int64_t, int64_t>>> cooldown_ends_;
  // The last Reports' [lo, hi], which a later answer's sent_at avoids.
  std::vector<std::pair<int64_t, int64_t>> report_spans_;
  int64_t start_ = 0;
  bool down_ = false;
  SharedSimResult result_;
};

}  // namespace

std::string SharedSimResult::Summary() const {
  return absl::StrFormat(
      "%d ops: %d grants, %d denials, %d unavailable while killed; %d reports (%d throttles, "
      "%d counts adopted, %d outside calls); embedded ledger compared %d decisions and reports "
      "(%d of them reports; %d ambiguous not compared), %d disagreements (%d not explained by a reload, %d of them "
      "on calendar, concurrency or unlimited)",
      ops, grants, denials, unavailable, reports, throttles, adoptions, outside_sends, compared,
      reports_compared, ambiguous, static_cast<int64_t>(disagreements.size()), unexplained,
      asserted_disagreements);
}

SharedSimResult RunSharedSim(RedisServer& redis, const SharedSimOptions& options) {
  return SharedSim(redis, options).Run();
}

}  // namespace quotad::testing

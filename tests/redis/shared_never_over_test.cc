// The never-over simulation against shared mode (issue 13), and 64 clients over three quotad
// replicas on one Redis calling a strict fake upstream.
//
// SharedNeverOverTest.FixedSeeds runs shared_never_over_sim.h on a fixed seed set (a real
// redis-server per seed, AOF always, killed -9 and restarted once per seed; Reports among the
// operations: adopted counts, throttles and their cooldowns, checked). Longer runs:
//
//   shared_never_over_test --seed=N [--seconds=S] [--kills=K] [--no_conformance]
//   shared_never_over_test --seeds=N [--first_seed=F] [--seconds=S]   (S seconds per seed)
//   ... [--trace] [--shape_changes] [--concurrency_renames] [--no_reloads]
//       [--counts_behind_unsent_charges]
//
// SharedNeverOverFindings: what the simulation found in service/, as DISABLED_ tests that fail
// until it is fixed (run them with --gtest_also_run_disabled_tests).
//
// SharedClientsTest: three QuotadServer replicas over one redis-server, 64 client threads spread
// over them, one credential per limit kind; each client calls a strict fake upstream after each
// grant: exactly the capacity granted for each window kind, at most the slots held for
// concurrency, every call for unlimited, and the upstream throttles nothing.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/redis/shared_never_over_sim.h"
#include "tests/support/policy_builders.h"
#include "tests/support/temp_dir.h"
#include "tests/support/eventually.h"

namespace quotad::testing {
namespace {

double g_seconds = 0;  // --seconds: per seed (0: the test's own)
bool g_trace = false;  // --trace: print every operation

bool RunSeeds(uint64_t first, int count, double seconds, int kills, bool conformance,
              bool shapes = false, bool conc_renames = false, bool reloads = true,
              bool hidden_outside = false) {
  bool all_ok = true;
  for (uint64_t seed = first; seed < first + static_cast<uint64_t>(count); ++seed) {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    if (!redis.ok()) {
      ADD_FAILURE() << "redis-server: " << redis.status();
      return false;
    }
    SharedSimOptions options;
    options.seed = seed;
    options.duration = absl::Seconds(seconds);
    options.kills = kills;
    options.conformance = conformance;
    options.shape_changes = shapes;
    options.concurrency_renames = conc_renames;
    options.reloads = reloads;
    options.counts_behind_unsent_charges = hidden_outside;
    SharedSimResult r = RunSharedSim(**redis, options);
    std::printf("shared_never_over: seed %llu: %s\n", static_cast<unsigned long long>(seed),
                r.Summary().c_str());
    int shown = 0;
    for (const std::string& d : r.disagreements) {  // the unexplained ones first
      if (d.find("(explained") == std::string::npos && shown++ < 8) {
        std::printf("  disagreement: %s\n", d.c_str());
      }
    }
    for (const std::string& d : r.disagreements) {
      if (d.find("(explained") != std::string::npos && shown++ < 8) {
        std::printf("  disagreement: %s\n", d.c_str());
      }
    }
    if (g_trace) {
      for (const std::string& line : r.trace) std::printf("  %s\n", line.c_str());
    }
    if (!r.ok) {
      all_ok = false;
      std::string trace;
      const size_t from = r.trace.size() > 400 ? r.trace.size() - 400 : 0;
      for (size_t i = from; i < r.trace.size(); ++i) absl::StrAppend(&trace, "  ", r.trace[i], "\n");
      ADD_FAILURE() << "seed " << seed << " VIOLATION " << r.violation << "\n"
                    << "trace (last " << r.trace.size() - from << " of " << r.trace.size()
                    << " operations):\n"
                    << trace << "replay: shared_never_over_test --seed=" << seed
                    << " --seconds=" << seconds;
    }
    EXPECT_GT(r.grants, 0) << "seed " << seed;
    EXPECT_GT(r.denials, 0) << "seed " << seed;
    EXPECT_GT(r.reports, 0) << "seed " << seed << ": no Report among the operations";
    if (kills > 0) {
      EXPECT_GT(r.unavailable, 0) << "seed " << seed << ": no call while killed";
    }
  }
  return all_ok;
}

TEST(SharedNeverOverTest, FixedSeeds) {
  RunSeeds(1, 3, g_seconds > 0 ? g_seconds : 12, 1, true);
}

// ---- Findings of the simulation, kept as failing tests until service/ is fixed ----

// The same acquires through a RedisBackend and an embedded Ledger (real clock both), with a
// reload between them. Returns the grants of `after` tries following the reload, per engine.
struct Grants {
  int redis = 0, embedded = 0;
  std::string redis_error, embedded_error;  // the first non-OK answer after the reload
};
// With `wait`, the tries start once Redis's clock has passed the first grant by that much.
Grants GrantsAfterReload(const Policy& before, const Policy& after, const std::string& feature,
                         int first, int tries, absl::Duration wait = absl::ZeroDuration()) {
  Grants g;
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  if (!redis.ok()) {
    ADD_FAILURE() << redis.status();
    return g;
  }
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
      RedisBackend::Create(before, Clock::Real(), ReplicaOptions(**redis));
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(before, Clock::Real());
  if (!backend.ok() || !ledger.ok()) {
    ADD_FAILURE() << backend.status() << " " << ledger.status();
    return g;
  }
  AcquireRequest req;
  req.credential = before.credentials[0].name;
  req.feature = feature;
  req.lease_ttl = absl::Seconds(10);
  req.want_limits = false;
  absl::Time first_grant = absl::InfiniteFuture();
  for (int i = 0; i < first; ++i) {
    absl::StatusOr<Decision> r = AcquireThrough(**backend, req);
    absl::StatusOr<Decision> e = (*ledger)->Acquire(req);
    EXPECT_TRUE(r.ok() && r->granted) << i;
    EXPECT_TRUE(e.ok() && e->granted) << i;
    if (r.ok() && r->granted) first_grant = std::min(first_grant, r->lease_expiry - req.lease_ttl);
  }
  EXPECT_TRUE((*backend)->Reload(after).ok());
  EXPECT_TRUE((*ledger)->Reload(after).ok());
  if (wait > absl::ZeroDuration()) {
    // Until Redis's clock has passed it (bounded).
    auto redis_now = [&] {
      absl::StatusOr<std::string> t = (*redis)->Command({"TIME"});
      std::vector<std::string> parts = absl::StrSplit(t.ok() ? *t : "", ' ');
      int64_t sec = 0, us = 0;
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &sec) ||
          !absl::SimpleAtoi(parts[1], &us)) {
        return absl::InfiniteFuture();
      }
      return absl::FromUnixMicros(sec * 1000000 + us);
    };
    testing::Eventually([&] { return redis_now() >= first_grant + wait; },
                        wait + absl::Seconds(5), absl::Milliseconds(5));
  }
  for (int i = 0; i < tries; ++i) {
    absl::StatusOr<Decision> r = AcquireThrough(**backend, req);
    absl::StatusOr<Decision> e = (*ledger)->Acquire(req);
    g.redis += r.ok() && r->granted;
    g.embedded += e.ok() && e->granted;
    if (!r.ok() && g.redis_error.empty()) g.redis_error = r.status().ToString();
    if (!e.ok() && g.embedded_error.empty()) g.embedded_error = e.status().ToString();
  }
  return g;
}

// Found by seed 1 with --shape_changes (`shared_never_over_test --seed=1 --seconds=12
// --shape_changes`), fixed: a reload that lowers a token bucket's rate. Redis keeps the bucket's
// state as a theoretical arrival time (quotad.lua, T: `tat`); read with the new emission
// interval, 4 units charged at 3/s (tat = t0 + 1.33 s) stood for 1.33 units owed under 1/s and 2
// more were granted while the provider's bucket (burst 4, now refilling 1/s, 4 units just sent)
// refuses anything for a second. The hash now keeps the shape each state was written under and
// the next call converts it (quotad_reshape.lua: the units still owed, plus a burst under a
// slower refill, charged anew), as the embedded ledger rebuilds the counter (ledger_reload.cc).
TEST(SharedNeverOverTest, TokenBucketRateLoweredByAReloadGrantsNothingMore) {
  const Policy before =
      OneCredential("f/bucket", {Feature("b", {Bucket("burst", 3, absl::Seconds(1), 4)})});
  const Policy after =
      OneCredential("f/bucket", {Feature("b", {Bucket("burst", 1, absl::Seconds(1), 4)})});
  const Grants g = GrantsAfterReload(before, after, "b", 4, 4);
  EXPECT_EQ(g.embedded, 0);
  EXPECT_EQ(g.redis, 0) << "granted within a second of the reload, where the provider's bucket "
                           "(1/s, burst 4, 4 units just sent) refuses all";
}

// Found by seed 44 with --shape_changes (`shared_never_over_test --seed=44 --seconds=40
// --shape_changes`, over-grant 10 of 8), fixed: a reload that lengthens a rolling window's
// period. Redis kept the open window's end from the old period and opened a new window there,
// while the provider's window, now of the new period, runs on with the units already sent.
// Here: 3 units at t0 on 3 per 1 s, reloaded to 3 per 10 s, and the first call after the reload
// comes at t0 + 1.05 s, once the old window has closed: the units it held were charged at its
// end at the latest, and a 10 s window still counts them (quotad_reshape.lua `carry`).
TEST(SharedNeverOverTest, RollingPeriodLengthenedByAReloadGrantsNothingMore) {
  const Policy before =
      OneCredential("f/roll", {Feature("r", {Rolling("window", 3, absl::Seconds(1))})});
  const Policy after =
      OneCredential("f/roll", {Feature("r", {Rolling("window", 3, absl::Seconds(10))})});
  const Grants g = GrantsAfterReload(before, after, "r", 3, 3, absl::Milliseconds(1050));
  EXPECT_EQ(g.embedded, 0);
  EXPECT_EQ(g.redis, 0) << "granted into the provider's 10 s window that holds 3 of 3";
}

// FINDING (any seed with --concurrency_renames, e.g. seed 2): a reload that renames a
// concurrency limit while leases hold it gives the new name empty slots, so the calls still
// in flight under the old name and the new grants together pass the provider's cap on
// simultaneous calls (the oracle: a lease holds the counters of its request under the
// configuration in force). Both engines do it (by name: RedisBackend's counters, the embedded
// ledger's rehome finds no counter of the old name); the embedded one already re-homes live
// leases when a concurrency limit is rebuilt under the same name. Whether a rename should
// carry them is a policy question for the lead; until then this test fails on both.
TEST(SharedNeverOverFindings, DISABLED_ConcurrencyLimitRenamedWhileLeasesLiveGrantsFreshSlots) {
  const Policy before = OneCredential("f/conc", {Feature("c", {Concurrency("slots", 1)})});
  const Policy after = OneCredential("f/conc", {Feature("c", {Concurrency("slots_r", 1)})});
  const Grants g = GrantsAfterReload(before, after, "c", 1, 1);
  EXPECT_EQ(g.redis, 0) << "a second call in flight against a cap of 1";
  EXPECT_EQ(g.embedded, 0) << "a second call in flight against a cap of 1";
}

// FINDING (seed 20 with --counts_behind_unsent_charges: `shared_never_over_test --seed=20
// --seconds=6 --counts_behind_unsent_charges`, provider slide.per_3s holds 7 > 6): a sliding
// count no higher than quotad's own charges of the span is taken as quotad's units (Counter::
// Adopt, `used <= known`, and quotad_functions.lua's report alike), also when some of those
// charges were never sent: a lease that used less than its cost and was not released yet, or
// expired unreleased. Those charges leave the window before the outside calls the count holds
// (or a release refunds them: a count is no floor for a sliding limit, unlike calendar and
// rolling ones), and the outside calls' units are then granted again: an over-grant, in both
// engines. The code says so ("Counting
// ours high adopts too little (the next throttle teaches the rest)"): the provider refuses the
// calls past its capacity, and only that throttle teaches quotad. Here: 3 charged at t0 and
// never sent (the lease lives on), 3 calls from outside at t0 + 1 s, reported (used 3 of 6,
// sent then): nothing is adopted; once t0's charge has left (t0 + 2 s) both engines grant 6,
// while the provider still holds the 3 outside calls until t0 + 3 s and accepts 3. Whether a
// count should keep a floor until it has left the provider's window (as adopted counts do for
// calendar and rolling limits, Counter::adopted_) is for the lead; until then this fails.
TEST(SharedNeverOverFindings, DISABLED_ASlidingCountExplainedByUnsentChargesIsGrantedAgain) {
  const Policy policy =
      OneCredential("f/slide", {Feature("s", {Sliding("window", 6, absl::Seconds(2))})});
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
      RedisBackend::Create(policy, Clock::Real(), ReplicaOptions(**redis));
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(policy, Clock::Real());
  ASSERT_TRUE(backend.ok() && ledger.ok()) << backend.status() << " " << ledger.status();
  AcquireRequest req;
  req.credential = "f/slide";
  req.feature = "s";
  req.cost = 3;
  req.lease_ttl = absl::Seconds(30);  // held, never released: the worker has sent nothing yet
  req.want_limits = false;
  absl::StatusOr<Decision> held = AcquireThrough(**backend, req);
  absl::StatusOr<Decision> held_e = (*ledger)->Acquire(req);
  ASSERT_TRUE(held.ok() && held->granted && held_e.ok() && held_e->granted);
  const absl::Time t0 = held->lease_expiry - req.lease_ttl;
  ASSERT_TRUE(Eventually([&] { return absl::Now() >= t0 + absl::Seconds(1); }, absl::Seconds(5),
                         absl::Milliseconds(5)));
  // 3 calls from outside quotad; the provider answers a worker: 3 of 6 used.
  UpstreamAnswer answer;
  answer.credential = "f/slide";
  answer.feature = "s";
  answer.http_status = 200;
  answer.headers = {{"X-RateLimit-Limit", "6"}, {"X-RateLimit-Used", "3"}};
  answer.sent_at = absl::Now();
  const absl::Time outside_leave = answer.sent_at + absl::Seconds(2);
  absl::StatusOr<ReportResult> r = (*backend)->Report(answer);
  absl::StatusOr<ReportResult> e = (*ledger)->Report(answer);
  ASSERT_TRUE(r.ok() && e.ok()) << r.status() << " " << e.status();
  EXPECT_EQ(r->adopted, e->adopted);
  // t0's charge leaves; the outside calls are still in the provider's window.
  ASSERT_TRUE(Eventually([&] { return absl::Now() >= t0 + absl::Milliseconds(2100); },
                         absl::Seconds(5), absl::Milliseconds(5)));
  req.cost = 1;
  req.lease_ttl = absl::Seconds(10);
  int redis_grants = 0, embedded_grants = 0;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(**backend, req);
    absl::StatusOr<Decision> de = (*ledger)->Acquire(req);
    redis_grants += d.ok() && d->granted;
    embedded_grants += de.ok() && de->granted;
  }
  ASSERT_LT(absl::Now(), outside_leave) << "too slow: the outside calls left the window";
  EXPECT_LE(redis_grants, 3) << "the provider holds 3 outside calls of 6";
  EXPECT_LE(embedded_grants, 3) << "the provider holds 3 outside calls of 6";
}

// A limit `x` of feature `f` reloaded from one shape to another, 3 units of 3 charged just
// before (nothing of them frees within the test: windows of a minute or more).
struct Reshape {
  const char* name;
  LimitSpec before, after;
};
LimitSpec Scoped(LimitSpec l) {
  l.scoped = true;
  return l;
}
const LimitSpec kCalMinute = Calendar("x", 3, CalendarUnit::kMinute, "America/New_York");
const LimitSpec kCalHour = Calendar("x", 3, CalendarUnit::kHour, "America/New_York");
const LimitSpec kRoll = Rolling("x", 3, absl::Minutes(1));
const LimitSpec kSlide = Sliding("x", 3, absl::Minutes(1));
const LimitSpec kBucket = Bucket("x", 1, absl::Hours(1), 3);

Grants RunReshape(const Reshape& c) {
  return GrantsAfterReload(OneCredential("p/x", {Feature("f", {c.before})}),
                           OneCredential("p/x", {Feature("f", {c.after})}), "f", 3, 3);
}

// Reshapes shared mode carries safely: nothing more granted than by the embedded ledger (which
// grants nothing here), and no error.
TEST(SharedNeverOverTest, ReloadReshapingALimitGrantsNoMoreThanTheEmbeddedLedger) {
  const std::vector<Reshape> cases = {
      {"calendar minute -> hour", kCalMinute, kCalHour},
      {"calendar -> rolling", kCalMinute, kRoll},
      {"calendar -> token bucket", kCalMinute, kBucket},
      {"rolling -> calendar", kRoll, kCalHour},
      {"rolling -> token bucket", kRoll, kBucket},
      {"rolling 1 min -> 1 h", kRoll, Rolling("x", 3, absl::Hours(1))},
      {"sliding 1 min -> 1 h", kSlide, Sliding("x", 3, absl::Hours(1))},
      {"unlimited -> calendar", Unlimited("x", CalendarUnit::kMinute), kCalMinute},
  };
  for (const Reshape& c : cases) {
    const Grants g = RunReshape(c);
    EXPECT_LE(g.redis, g.embedded) << c.name;
    EXPECT_EQ(g.redis_error, "") << c.name;
    EXPECT_EQ(g.embedded_error, "") << c.name;
  }
}

// Found deterministic, fixed: a reload that changes a sliding limit's kind, or that makes a
// limit scoped or unscoped, granted 3 more units right after 3 of 3 were sent. Kind: the new
// kind's loader read the sliding layout as its own (an empty window or bucket). Scoping: the
// counter's name changes (`f.x` <-> `f.x[scope]`, redis_backend.cc CounterName) and the new one
// started empty. Now the old state is decoded by its own kind's code and a new scoped counter
// starts with the unscoped one's units, a new unscoped one with the scoped ones' sum
// (quotad_reshape.lua), as the embedded ledger does.
TEST(SharedNeverOverTest, ReloadChangingASlidingKindOrTheScopingGrantsNothingMore) {
  const std::vector<Reshape> cases = {
      {"sliding -> rolling", kSlide, kRoll},
      {"sliding -> calendar", kSlide, kCalHour},
      {"sliding -> token bucket", kSlide, kBucket},
      {"sliding -> scoped sliding", kSlide, Scoped(kSlide)},
      {"scoped sliding -> sliding", Scoped(kSlide), kSlide},
      // Sub-bucketed sliding windows (state 'B'), into and out of.
      {"sliding -> sub-bucketed sliding", kSlide, Sliding("x", 3, absl::Minutes(1), 6)},
      {"sub-bucketed sliding -> sliding", Sliding("x", 3, absl::Minutes(1), 6), kSlide},
      {"sub-bucketed sliding -> calendar", Sliding("x", 3, absl::Minutes(1), 6), kCalHour},
      {"sub-bucketed sliding -> token bucket", Sliding("x", 3, absl::Minutes(1), 6), kBucket},
      {"sub-bucketed sliding 6 -> 12 buckets", Sliding("x", 3, absl::Minutes(1), 6),
       Sliding("x", 3, absl::Minutes(1), 12)},
      {"calendar -> sub-bucketed sliding", kCalMinute, Sliding("x", 3, absl::Minutes(1), 6)},
  };
  for (const Reshape& c : cases) {
    const Grants g = RunReshape(c);
    EXPECT_EQ(g.embedded, 0) << c.name;
    EXPECT_EQ(g.redis, 0) << c.name << ": granted where the provider holds 3 of 3";
  }
}

// Found deterministic, fixed: a reload that changes a limit's kind to one whose packed state is
// longer failed every Acquire of the feature with INTERNAL ("data string too short" from
// unpack) until the credential's hash expired. The state is now read by the code of the shape
// it was written under; none of these grants either (3 of 3 were just charged).
TEST(SharedNeverOverTest, ReloadChangingALimitsKindAnswersAndGrantsNothingMore) {
  const std::vector<Reshape> cases = {
      {"calendar -> sliding", kCalMinute, kSlide},
      {"rolling -> sliding", kRoll, kSlide},
      {"token bucket -> calendar", kBucket, kCalHour},
      {"token bucket -> rolling", kBucket, kRoll},
      {"token bucket -> sliding", kBucket, kSlide},
  };
  for (const Reshape& c : cases) {
    const Grants g = RunReshape(c);
    EXPECT_EQ(g.embedded_error, "") << c.name;
    EXPECT_EQ(g.redis_error, "") << c.name;
    EXPECT_EQ(g.embedded, 0) << c.name;
    EXPECT_EQ(g.redis, 0) << c.name << ": granted where the provider holds 3 of 3";
  }
}

// Found deterministic, fixed: the same for a concurrency limit. Made scoped or unscoped while a
// lease holds its only slot, shared mode granted a second (the lease's slot stayed on the old
// counter's name); changed to a calendar limit, every Acquire failed with INTERNAL. Now the new
// counter copies the old one's live leases (their slots count until freed, renewed away or
// expired), or counts the slots held as units charged at the reload, as the embedded ledger
// re-homes live leases (ledger_reload.cc `rehome`).
TEST(SharedNeverOverTest, ReloadReshapingAConcurrencyLimitWhileHeldKeepsItsSlot) {
  const LimitSpec conc = Concurrency("x", 1);
  const std::vector<Reshape> cases = {
      {"concurrency -> scoped", conc, Scoped(conc)},
      {"scoped concurrency -> unscoped", Scoped(conc), conc},
      {"concurrency -> calendar", conc, Calendar("x", 1, CalendarUnit::kHour, "UTC")},
  };
  for (const Reshape& c : cases) {
    const Grants g = GrantsAfterReload(OneCredential("p/x", {Feature("f", {c.before})}),
                                       OneCredential("p/x", {Feature("f", {c.after})}), "f", 1, 1);
    EXPECT_EQ(g.embedded, 0) << c.name;
    EXPECT_EQ(g.redis, 0) << c.name << ": a second call in flight against a cap of 1";
    EXPECT_EQ(g.redis_error, "") << c.name;
  }
}

// A slot copied onto the counter of a concurrency limit made scoped (the lease acquired before
// the reload) is freed by that lease's Release after it: the next call is granted, not held
// back until the lease would have expired.
TEST(SharedNeverOverTest, ASlotCarriedByAScopingReloadIsFreedByItsLease) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const LimitSpec conc = Concurrency("x", 1);
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend = RedisBackend::Create(
      OneCredential("p/x", {Feature("f", {conc})}), Clock::Real(), ReplicaOptions(**redis));
  ASSERT_TRUE(backend.ok()) << backend.status();
  AcquireRequest req;
  req.credential = "p/x";
  req.feature = "f";
  req.lease_ttl = absl::Seconds(30);
  req.want_limits = false;
  absl::StatusOr<Decision> held = AcquireThrough(**backend, req);
  ASSERT_TRUE(held.ok() && held->granted);
  ASSERT_TRUE((*backend)->Reload(OneCredential("p/x", {Feature("f", {Scoped(conc)})})).ok());
  absl::StatusOr<Decision> second = AcquireThrough(**backend, req);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(second->granted) << "the lease still holds the only slot";
  absl::StatusOr<ReleaseResult> released = (*backend)->Release(held->lease_id, std::nullopt);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(released->freed, 1);
  absl::StatusOr<Decision> third = AcquireThrough(**backend, req);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_TRUE(third->granted) << "the slot was freed by its lease";
}

// Scoping toggled twice (unscoped, scoped, unscoped again), a unit charged in each era: the
// unscoped counter takes in what the scoped one counted meanwhile, so nothing is granted past
// the 3 the provider allows (the embedded ledger grants no more either).
TEST(SharedNeverOverTest, ScopingToggledTwiceKeepsEveryEraCounted) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  const Policy unscoped = OneCredential("p/x", {Feature("f", {kSlide})});
  const Policy scoped = OneCredential("p/x", {Feature("f", {Scoped(kSlide)})});
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
      RedisBackend::Create(unscoped, Clock::Real(), ReplicaOptions(**redis));
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(unscoped, Clock::Real());
  ASSERT_TRUE(backend.ok() && ledger.ok());
  AcquireRequest req;
  req.credential = "p/x";
  req.feature = "f";
  req.lease_ttl = absl::Seconds(10);
  req.want_limits = false;
  int redis_grants = 0, embedded_grants = 0;
  auto one = [&] {
    absl::StatusOr<Decision> r = AcquireThrough(**backend, req);
    absl::StatusOr<Decision> e = (*ledger)->Acquire(req);
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(e.ok()) << e.status();
    redis_grants += r.ok() && r->granted;
    embedded_grants += e.ok() && e->granted;
  };
  one();
  ASSERT_TRUE((*backend)->Reload(scoped).ok());
  ASSERT_TRUE((*ledger)->Reload(scoped).ok());
  one();
  ASSERT_TRUE((*backend)->Reload(unscoped).ok());
  ASSERT_TRUE((*ledger)->Reload(unscoped).ok());
  for (int i = 0; i < 3; ++i) one();
  EXPECT_LE(redis_grants, 3);
  EXPECT_LE(redis_grants, embedded_grants);
  EXPECT_GE(redis_grants, 2) << "the first two fit in any configuration";
}

// A counter whose recorded shape this library cannot decode (written by another version, say)
// denies until the credential's hash expires: neither read as empty nor INTERNAL.
TEST(SharedNeverOverTest, AShapeTheLibraryCannotDecodeDenies) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend = RedisBackend::Create(
      OneCredential("p/x", {Feature("f", {kBucket})}), Clock::Real(), ReplicaOptions(**redis));
  ASSERT_TRUE(backend.ok()) << backend.status();
  AcquireRequest req;
  req.credential = "p/x";
  req.feature = "f";
  req.want_limits = false;
  absl::StatusOr<Decision> first = AcquireThrough(**backend, req);
  ASSERT_TRUE(first.ok() && first->granted);
  // Written under a kind no version has (capacity 3, no scoping era).
  ASSERT_TRUE((*redis)->Command({"HSET", redis::StateKey("p/x"), "~k:f.x", "zz|1|1;3;0"}).ok());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(**backend, req);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_FALSE(d->granted) << i << ": 2 of the burst of 3 are left, but the state is unknown";
  }
}

// ---- 64 clients over three replicas ----

constexpr int kReplicas = 3;
constexpr int kClients = 64;
constexpr int kCapacity = 40;
constexpr int kSlots = 6;

constexpr char kConfig[] = R"(
credentials:
  - name: k/cal
    features:
      - name: req
        limits:
          - {name: daily, kind: calendar, unit: day, zone: Asia/Kathmandu, capacity: 40}
  - name: k/roll
    features:
      - name: req
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 40}
  - name: k/slide
    features:
      - name: req
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 40}
  - name: k/bucket
    features:
      - name: req
        limits:
          - {name: burst, kind: token_bucket, capacity: 40, rate: 1, period: 1h}
  - name: k/conc
    features:
      - name: req
        default_lease_ttl: 30s
        limits:
          - {name: slots, kind: concurrency, capacity: 6}
  - name: k/free
    features:
      - name: req
        limits:
          - {name: count, kind: unlimited}
)";

// A provider that enforces each credential's limit strictly: window kinds at most kCapacity
// calls over the test (none of the windows frees a unit within it; the calendar day is keyed by
// its date in the zone), concurrency at most kSlots calls in flight. Thread-safe.
class StrictUpstream {
 public:
  // A call on `credential`; false: throttled.
  bool Begin(const std::string& credential) {
    absl::MutexLock lock(&mu_);
    ++calls_[credential];
    if (credential == "k/free") return true;
    if (credential == "k/conc") {
      if (in_flight_ + 1 > kSlots) return Throttle();
      peak_ = std::max(peak_, ++in_flight_);
      return true;
    }
    std::string key = credential;
    if (credential == "k/cal") {
      absl::TimeZone zone;
      absl::LoadTimeZone("Asia/Kathmandu", &zone);
      absl::StrAppend(&key, absl::FormatTime("@%Y-%m-%d", absl::Now(), zone));
    }
    if (++used_[key] > kCapacity) {
      --used_[key];
      return Throttle();
    }
    return true;
  }
  void End() {
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  int throttles() const { absl::MutexLock lock(&mu_); return throttles_; }
  int peak() const { absl::MutexLock lock(&mu_); return peak_; }
  int windows(const std::string& prefix) const {
    absl::MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [k, v] : used_) n += k.rfind(prefix, 0) == 0;
    return n;
  }

 private:
  bool Throttle() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++throttles_;
    return false;
  }
  mutable absl::Mutex mu_;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> used_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int peak_ ABSL_GUARDED_BY(mu_) = 0;
  int throttles_ ABSL_GUARDED_BY(mu_) = 0;
};

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return ctx;
}

TEST(SharedClientsTest, SixtyFourClientsOverThreeReplicasGetExactlyTheCapacity) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  TempDir dir;
  const std::string config = dir.WriteFile("quotad.yaml", kConfig);
  std::vector<std::unique_ptr<QuotadServer>> servers;
  std::vector<std::unique_ptr<v1::Quota::Stub>> stubs;
  for (int i = 0; i < kReplicas; ++i) {
    ServerOptions options;
    options.config_path = config;
    options.redis_url = absl::StrCat("redis://127.0.0.1:", (*redis)->port());
    options.listen_address = "127.0.0.1:0";
    options.sweep_interval = absl::Milliseconds(50);
    options.config_watch_interval = absl::ZeroDuration();
    options.cq_threads = 2;
    options.shutdown_grace = absl::Seconds(2);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    stubs.push_back(v1::Quota::NewStub(
        grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials())));
    servers.push_back(*std::move(server));
  }
  // Every replica serves before the clients start: a call refused by a replica that has not
  // reached Redis yet would count as an error and leave the capacity short.
  for (const std::unique_ptr<QuotadServer>& s : servers) {
    ASSERT_TRUE(ServesWithin(s->address())) << s->address();
  }
  const std::vector<std::string> kinds = {"k/cal", "k/roll", "k/slide", "k/bucket", "k/conc",
                                          "k/free"};
  constexpr int kTries = 3;  // per client and credential: 192 asks against 40
  StrictUpstream upstream;
  std::map<std::string, std::atomic<int>> granted;
  for (const std::string& k : kinds) granted[k] = 0;
  std::atomic<int> errors{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int t = 0; t < kTries; ++t) {
        for (size_t j = 0; j < kinds.size(); ++j) {
          const std::string& cred = kinds[(j + c) % kinds.size()];
          const int replica = (c + t + static_cast<int>(j)) % kReplicas;
          v1::AcquireRequest req;
          req.set_credential(cred);
          req.set_feature("req");
          v1::AcquireResponse resp;
          grpc::Status s = stubs[replica]->Acquire(Context().get(), req, &resp);
          if (!s.ok()) {
            errors++;
            continue;
          }
          if (!resp.granted()) continue;
          granted[cred]++;
          upstream.Begin(cred);
          if (cred == "k/conc") {
            // Hold the slot over a renewal and release through other replicas.
            v1::RenewRequest renew;
            renew.set_lease_id(resp.lease_id());
            v1::RenewResponse renewed;
            if (!stubs[(replica + 1) % kReplicas]->Renew(Context().get(), renew, &renewed).ok()) {
              errors++;
            }
            upstream.End();
            v1::ReleaseRequest rel;
            rel.set_lease_id(resp.lease_id());
            v1::ReleaseResponse released;
            if (!stubs[(replica + 2) % kReplicas]->Release(Context().get(), rel, &released).ok()) {
              errors++;
            }
          }
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(upstream.throttles(), 0);
  for (const char* k : {"k/roll", "k/slide", "k/bucket"}) {
    EXPECT_EQ(granted[k].load(), kCapacity) << k;
  }
  // A day turning in Asia/Kathmandu during the test opens a second window.
  EXPECT_EQ(granted["k/cal"].load(), kCapacity * upstream.windows("k/cal@"));
  EXPECT_EQ(granted["k/free"].load(), kClients * kTries);
  EXPECT_LE(upstream.peak(), kSlots);
  EXPECT_GE(granted["k/conc"].load(), kSlots);
  std::printf("64 clients: granted cal %d roll %d slide %d bucket %d conc %d (peak in flight %d "
              "of %d) free %d; upstream throttles %d\n",
              granted["k/cal"].load(), granted["k/roll"].load(), granted["k/slide"].load(),
              granted["k/bucket"].load(), granted["k/conc"].load(), upstream.peak(), kSlots,
              granted["k/free"].load(), upstream.throttles());
}

}  // namespace
}  // namespace quotad::testing

int main(int argc, char** argv) {
  int64_t seed = -1, seeds = -1, first = 1, kills = 1;
  double seconds = 0;
  bool conformance = true, shapes = false, conc_renames = false, reloads = true;
  bool hidden_outside = false;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* name) -> const char* {
      const size_t n = std::strlen(name);
      return a.compare(0, n, name) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = val("--seed=")) seed = std::atoll(v);
    else if (const char* v = val("--seeds=")) seeds = std::atoll(v);
    else if (const char* v = val("--first_seed=")) first = std::atoll(v);
    else if (const char* v = val("--seconds=")) seconds = std::atof(v);
    else if (const char* v = val("--kills=")) kills = std::atoll(v);
    else if (a == "--no_conformance") conformance = false;
    else if (a == "--shape_changes") shapes = true;
    else if (a == "--concurrency_renames") conc_renames = true;
    else if (a == "--no_reloads") reloads = false;
    else if (a == "--counts_behind_unsent_charges") hidden_outside = true;
    else if (a == "--trace") quotad::testing::g_trace = true;
    else rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  testing::InitGoogleTest(&n, rest.data());
  if (seed >= 0 || seeds > 0) {
    const bool ok = quotad::testing::RunSeeds(
        seed >= 0 ? seed : first, seed >= 0 ? 1 : static_cast<int>(seeds),
        seconds > 0 ? seconds : 30, static_cast<int>(kills), conformance, shapes,
        conc_renames, reloads, hidden_outside);
    return ok ? 0 : 1;
  }
  quotad::testing::g_seconds = seconds;
  return RUN_ALL_TESTS();
}

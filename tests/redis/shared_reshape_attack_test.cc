// Attacks on shared mode's reload reshaping (quotad_reshape.lua) and sub-bucketed sliding
// windows (quotad_buckets.lua, kind 'sb'), max_scopes and Decision.limits, each against a real
// redis-server started by the test. Oracle: the provider's window holds at most the capacity of
// the strictest configuration in force during it (every window here is a minute or more, so no
// unit frees within a test unless said), no call fails with INTERNAL, and no credential is
// locked out (a call that should fit is granted).
//
// Chains of reloads (A -> B -> A) within one window; two replicas on different configurations
// flip-flopping on every call; a scoped limit with 9000 scopes (Lua unpack's limit) reshaped;
// sub_buckets 3600; refunds of leases charged under another shape; Reset after a reshape;
// concurrency leases held across reshapes and released, renewed or expired; max_scopes under
// concurrent new scopes over three replicas, denials and request_id retries, a lease released
// after its scoped hash expired; sub-bucket refunds after an adoption (Report); kill -9 of
// redis-server (appendfsync always) right after a reshape was written.
//
// SharedReshapeAttackFindings: what these attacks found and left unfixed, as DISABLED_ tests
// that fail until it is (run them with --gtest_also_run_disabled_tests).

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/limits.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/support/eventually.h"
#include "tests/support/policy_builders.h"

namespace quotad::testing {
namespace {

LimitSpec Scoped(LimitSpec l) {
  l.scoped = true;
  return l;
}

Policy One(const LimitSpec& l, int64_t max_scopes = 10000) {
  FeatureSpec f = Feature("f", {l});
  f.max_scopes = max_scopes;
  return OneCredential("p/x", {f});
}

const LimitSpec kSlide = Sliding("x", 3, absl::Minutes(1));
const LimitSpec kSb6 = Sliding("x", 3, absl::Minutes(1), 6);
const LimitSpec kSb12 = Sliding("x", 3, absl::Minutes(1), 12);
const LimitSpec kBucket = Bucket("x", 1, absl::Hours(1), 3);
const LimitSpec kCal = Calendar("x", 3, CalendarUnit::kHour, "UTC");
const LimitSpec kRoll = Rolling("x", 3, absl::Minutes(1));
// 7 min in 3 buckets: a width (140 s) that divides the period, and 7 min in 4 (105 s) one that
// does not divide the guard-widened span.
const LimitSpec kSlide7 = Sliding("x", 3, absl::Minutes(7));
const LimitSpec kSb7x4 = Sliding("x", 3, absl::Minutes(7), 4);
const LimitSpec kSb7x3 = Sliding("x", 3, absl::Minutes(7), 3);

AcquireRequest Req(absl::string_view scope = "", int64_t cost = 1,
                   absl::Duration ttl = absl::Seconds(30)) {
  AcquireRequest req;
  req.credential = "p/x";
  req.feature = "f";
  req.scope = scope;
  req.cost = cost;
  req.lease_ttl = ttl;
  req.want_limits = false;
  return req;
}

// A redis-server and replicas of it, each on its own configuration.
struct Env {
  std::unique_ptr<RedisServer> redis;
  std::vector<std::unique_ptr<RedisBackend>> replicas;
  std::vector<std::string> errors;  // every non-OK answer

  static std::unique_ptr<Env> Make(const std::vector<Policy>& policies,
                                   RedisServerOptions options = {}) {
    auto env = std::make_unique<Env>();
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start(options);
    if (!redis.ok()) {
      ADD_FAILURE() << redis.status();
      return nullptr;
    }
    env->redis = *std::move(redis);
    for (const Policy& p : policies) {
      // Up to 1000 calls are queued at once (AcquireScopes), each timed from then: at the
      // default 1 s a loaded machine's Redis answers the last ones too late (shared_attack_test's
      // 9000 scopes did, in a full ctest -j3 run). Nothing here waits for a timeout.
      RedisBackendOptions replica_options = ReplicaOptions(*env->redis);
      replica_options.call_timeout = absl::Seconds(30);
      absl::StatusOr<std::unique_ptr<RedisBackend>> b =
          RedisBackend::Create(p, Clock::Real(), replica_options);
      if (!b.ok()) {
        ADD_FAILURE() << b.status();
        return nullptr;
      }
      env->replicas.push_back(*std::move(b));
    }
    return env;
  }
  // Acquire through replica `i`; nullopt (recorded) on an error.
  std::optional<Decision> Acquire(int i, const AcquireRequest& req) {
    absl::StatusOr<Decision> d = AcquireThrough(*replicas[i], req);
    if (!d.ok()) {
      errors.push_back(d.status().ToString());
      return std::nullopt;
    }
    return *d;
  }
  int Grants(int i, const AcquireRequest& req, int tries) {
    int n = 0;
    for (int t = 0; t < tries; ++t) {
      std::optional<Decision> d = Acquire(i, req);
      n += d && d->granted;
    }
    return n;
  }
  void Reload(int i, const Policy& p) { EXPECT_TRUE(replicas[i]->Reload(p).ok()); }
};

std::string Errors(const Env& env) {
  std::string out;
  for (const std::string& e : env.errors) absl::StrAppend(&out, e, "; ");
  return out;
}

// A -> B -> A within one window, a try after each reload: 3 of 3 were charged first.
TEST(SharedReshapeAttackTest, ChainsOfReloadsWithinOneWindowGrantNothingMore) {
  struct Case {
    const char* name;
    LimitSpec a, b;
  };
  const std::vector<Case> cases = {
      {"sliding -> sb -> sliding", kSlide, kSb6},
      {"sb -> sliding -> sb", kSb6, kSlide},
      {"sb 6 -> sb 12 -> sb 6", kSb6, kSb12},
      {"token bucket -> sb -> token bucket", kBucket, kSb6},
      {"sb -> token bucket -> sb", kSb6, kBucket},
      {"calendar -> sb -> calendar", kCal, kSb6},
      {"rolling -> sb -> rolling", kRoll, kSb6},
      {"sb -> scoped sb -> sb", kSb6, Scoped(kSb6)},
      {"scoped sb -> sb -> scoped sb", Scoped(kSb6), kSb6},
      {"sliding 7 min -> sb 4 buckets -> sliding", kSlide7, kSb7x4},
      {"sb 7 min 3 -> sb 7 min 4 -> sb 3", kSb7x3, kSb7x4},
      // Rate and burst changed together: the stricter burst (3, all sent) holds the window.
      {"bucket 1/h burst 3 -> 2/h burst 5", kBucket, Bucket("x", 2, absl::Hours(1), 5)},
      {"bucket 1/h burst 3 -> 1/2h burst 5", kBucket, Bucket("x", 1, absl::Hours(2), 5)},
      {"sliding 3 -> sb 6", kSlide, Sliding("x", 6, absl::Minutes(1), 6)},
      {"sb 3 -> sb 6 in 12", kSb6, Sliding("x", 6, absl::Minutes(1), 12)},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Env> env = Env::Make({One(c.a)});
    ASSERT_NE(env, nullptr);
    EXPECT_EQ(env->Grants(0, Req("s"), 3), 3) << c.name;
    env->Reload(0, One(c.b));
    int more = env->Grants(0, Req("s"), 2);
    env->Reload(0, One(c.a));
    more += env->Grants(0, Req("s"), 2);
    env->Reload(0, One(c.b));
    more += env->Grants(0, Req("s"), 2);
    EXPECT_EQ(more, 0) << c.name << ": granted where the provider holds 3 of 3";
    EXPECT_TRUE(env->errors.empty()) << c.name << ": " << Errors(*env);
  }
}

// Replica 0 reloaded, replica 1 still on the old configuration, both serving: the calls
// alternate between them, so every call meets a state written under the other shape. Never
// more than the stricter capacity; the first call is granted (no lock-out).
TEST(SharedReshapeAttackTest, TwoReplicasOnTwoShapesFlipFlopNeverPassTheStricter) {
  struct Case {
    const char* name;
    LimitSpec a, b;
    int stricter;
  };
  const std::vector<Case> cases = {
      {"sliding | sb", kSlide, kSb6, 3},
      {"sb 6 | sb 12", kSb6, kSb12, 3},
      {"token bucket | sb", kBucket, kSb6, 3},
      {"calendar | sb", kCal, kSb6, 3},
      {"rolling | sb", kRoll, kSb6, 3},
      {"sliding 3 | sb 5", kSlide, Sliding("x", 5, absl::Minutes(1), 6), 3},
      {"sb 5 | sliding 3", Sliding("x", 5, absl::Minutes(1), 6), kSlide, 3},
      {"sliding 7 min | sb 7 min in 4", kSlide7, kSb7x4, 3},
      {"sb | scoped sb", kSb6, Scoped(kSb6), 3},
      {"scoped sliding | sliding", Scoped(kSlide), kSlide, 3},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Env> env = Env::Make({One(c.a), One(c.b)});
    ASSERT_NE(env, nullptr);
    int granted = 0;
    bool first = false;
    for (int i = 0; i < 16; ++i) {
      std::optional<Decision> d = env->Acquire(i % 2, Req("s"));
      granted += d && d->granted;
      if (i == 0) first = d && d->granted;
    }
    EXPECT_LE(granted, c.stricter) << c.name;
    EXPECT_TRUE(first) << c.name << ": the first call of an empty credential was refused";
    EXPECT_TRUE(env->errors.empty()) << c.name << ": " << Errors(*env);
  }
}

// Fires `n` acquires on scopes prefix0..prefix(n-1) through `backend`, `batch` in flight at a
// time; returns the grants (errors appended to `errors`).
int AcquireScopes(RedisBackend& backend, const std::string& prefix, int n, int batch,
                  std::vector<std::string>* errors, absl::Status* first_error = nullptr) {
  int granted = 0;
  std::vector<std::string> scopes(n);
  for (int i = 0; i < n; ++i) scopes[i] = absl::StrCat(prefix, i);
  for (int from = 0; from < n; from += batch) {
    const int to = std::min(n, from + batch);
    absl::Mutex mu;
    int left = to - from;
    std::vector<absl::StatusOr<Decision>> out(to - from);
    for (int i = from; i < to; ++i) {
      backend.AcquireShared(Req(scopes[i]), SharedRequestId{}, [&, i](absl::StatusOr<Decision> d) {
        absl::MutexLock lock(&mu);
        out[i - from] = std::move(d);
        --left;
      });
    }
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* l) { return *l == 0; }, &left));
    for (const absl::StatusOr<Decision>& d : out) {
      if (!d.ok()) {
        errors->push_back(d.status().ToString());
        if (first_error && first_error->ok()) *first_error = d.status();
      } else {
        granted += d->granted;
      }
    }
  }
  return granted;
}

// 9000 scopes of a scoped limit with 3600 sub-buckets (past Lua unpack's ~8000), then reloaded
// unscoped (the unscoped counter takes in every scope: call_batched), then scoped again.
TEST(SharedReshapeAttackTest, NineThousandScopesReshapedAnsweredWithoutInternal) {
  const LimitSpec sb = Sliding("x", 3, absl::Hours(1), 3600);
  std::unique_ptr<Env> env = Env::Make({One(Scoped(sb))});
  ASSERT_NE(env, nullptr);
  EXPECT_EQ(AcquireScopes(*env->replicas[0], "s", 9000, 1000, &env->errors), 9000);
  ASSERT_TRUE(env->errors.empty()) << Errors(*env);
  env->Reload(0, One(sb));
  EXPECT_EQ(env->Grants(0, Req(), 2), 0) << "9000 units held against an unscoped 3";
  env->Reload(0, One(Sliding("x", 3, absl::Hours(1))));  // sb -> exact sliding, unscoped
  EXPECT_EQ(env->Grants(0, Req(), 2), 0);
  env->Reload(0, One(Sliding("x", 3, absl::Hours(1), 7200)));  // 7200 sub-buckets, unscoped
  EXPECT_EQ(env->Grants(0, Req(), 2), 0);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// Leases charged under one shape released after a reload with used = 0 (a refund through the
// old shape's token) or used = 1: no error, and nothing granted past what the provider saw.
TEST(SharedReshapeAttackTest, RefundsOfLeasesChargedUnderAnotherShape) {
  struct Case {
    const char* name;
    LimitSpec a, b;
  };
  const std::vector<Case> cases = {
      {"sliding -> sb", kSlide, kSb6},         {"sb -> sliding", kSb6, kSlide},
      {"sb 6 -> sb 12", kSb6, kSb12},          {"sb 12 -> sb 6", kSb12, kSb6},
      {"sb -> bucket", kSb6, kBucket},         {"bucket -> sb", kBucket, kSb6},
      {"sb -> scoped sb", kSb6, Scoped(kSb6)}, {"calendar -> sb", kCal, kSb6},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Env> env = Env::Make({One(c.a)});
    ASSERT_NE(env, nullptr);
    std::vector<LeaseId> leases;
    for (int i = 0; i < 3; ++i) {
      std::optional<Decision> d = env->Acquire(0, Req("s"));
      ASSERT_TRUE(d && d->granted) << c.name;
      leases.push_back(d->lease_id);
    }
    env->Reload(0, One(c.b));
    // One lease refunded entirely (the provider saw 2), two used.
    absl::StatusOr<ReleaseResult> r0 = env->replicas[0]->Release(leases[0], 0);
    EXPECT_TRUE(r0.ok()) << c.name << ": " << r0.status();
    for (int i = 1; i < 3; ++i) {
      absl::StatusOr<ReleaseResult> r = env->replicas[0]->Release(leases[i], 1);
      EXPECT_TRUE(r.ok()) << c.name << ": " << r.status();
    }
    EXPECT_LE(env->Grants(0, Req("s"), 3), 1) << c.name << ": the provider holds 2 of 3";
    EXPECT_TRUE(env->errors.empty()) << c.name << ": " << Errors(*env);
  }
}

// A Reset after a reshape (a retired counter in the ~k: meta) frees the whole capacity: exactly
// 3 granted again, not fewer (locked out by the retired counter) nor more.
TEST(SharedReshapeAttackTest, ResetAfterAReshapeFreesExactlyTheCapacity) {
  struct Case {
    const char* name;
    LimitSpec a, b;
  };
  const std::vector<Case> cases = {
      {"sliding -> sb", kSlide, kSb6},         {"sb -> sliding", kSb6, kSlide},
      {"bucket -> sb", kBucket, kSb6},         {"sb -> scoped sb", kSb6, Scoped(kSb6)},
      {"scoped sb -> sb", Scoped(kSb6), kSb6},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Env> env = Env::Make({One(c.a)});
    ASSERT_NE(env, nullptr);
    EXPECT_EQ(env->Grants(0, Req("s"), 3), 3) << c.name;
    env->Reload(0, One(c.b));
    EXPECT_EQ(env->Grants(0, Req("s"), 1), 0) << c.name;
    EXPECT_TRUE(env->replicas[0]->Reset("p/x").ok()) << c.name;
    EXPECT_EQ(env->Grants(0, Req("s"), 4), 3) << c.name;
    env->Reload(0, One(c.a));
    EXPECT_EQ(env->Grants(0, Req("s"), 2), 0) << c.name << ": 3 of 3 since the reset";
    EXPECT_TRUE(env->errors.empty()) << c.name << ": " << Errors(*env);
  }
}

// A concurrency slot held across reshapes (unscoped -> scoped -> unscoped), renewed between
// them: never two in flight against a cap of 1; released, the slot is free again.
TEST(SharedReshapeAttackTest, ConcurrencyLeaseHeldAcrossReshapesRenewedThenReleased) {
  const LimitSpec conc = Concurrency("x", 1);
  std::unique_ptr<Env> env = Env::Make({One(conc)});
  ASSERT_NE(env, nullptr);
  std::optional<Decision> held = env->Acquire(0, Req("s"));
  ASSERT_TRUE(held && held->granted);
  env->Reload(0, One(Scoped(conc)));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0);
  EXPECT_TRUE(env->replicas[0]->Renew(held->lease_id, absl::Seconds(60)).ok());
  env->Reload(0, One(conc));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0) << "the renewed lease still holds the only slot";
  env->Reload(0, One(Scoped(conc)));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0);
  absl::StatusOr<ReleaseResult> released = env->replicas[0]->Release(held->lease_id, std::nullopt);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(env->Grants(0, Req("s"), 2), 1) << "the slot is free again, and only one";
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// A concurrency slot carried by a reshape frees when its lease expires: polled (bounded).
TEST(SharedReshapeAttackTest, ConcurrencySlotCarriedByAReshapeFreesAtExpiry) {
  const LimitSpec conc = Concurrency("x", 1);
  std::unique_ptr<Env> env = Env::Make({One(conc)});
  ASSERT_NE(env, nullptr);
  std::optional<Decision> held = env->Acquire(0, Req("s", 1, absl::Milliseconds(800)));
  ASSERT_TRUE(held && held->granted);
  env->Reload(0, One(Scoped(conc)));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0);
  env->Reload(0, One(conc));
  EXPECT_TRUE(Eventually([&] { return env->Grants(0, Req("s"), 1) == 1; }, absl::Seconds(8),
                         absl::Milliseconds(50)))
      << "locked out after the lease expired";
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0) << "one slot";
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// Sub-bucketed sliding refunds after an adoption (Report) and across a reshape and back, through
// the library directly (one counter name, its rule switched between sb and exact sliding): the
// upstream's count adopted stays counted (a refund never takes a bucket that holds adopted
// units), a refund through another shape's token takes nothing it should not.
TEST(SharedReshapeAttackTest, SubBucketRefundsAfterAnAdoptionAndAcrossAReshape) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::StatusOr<std::unique_ptr<redis::RedisClient>> client = redis::RedisClient::Create(
      {.port = (*redis)->port(), .connections = 1, .call_timeout = absl::Seconds(10)});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->WaitConnected(absl::Seconds(5)));
  redis::RedisFunctions fn(client->get(), [] { return absl::Now(); });
  ASSERT_TRUE(fn.EnsureLoaded().ok());
  const Rule sb(Sliding("l", 6, absl::Minutes(1), 7), "d.l");  // 60 s / 7: width not whole
  const Rule slide(Sliding("l", 6, absl::Minutes(1)), "d.l");
  const std::vector<redis::CounterRef> under_sb = {{sb.full_name, &sb}};
  const std::vector<redis::CounterRef> under_slide = {{slide.full_name, &slide}};
  int n = 0, granted_after_report = 0;
  std::vector<std::string> leases;
  auto acquire = [&](const std::vector<redis::CounterRef>& cs) {
    redis::AcquireCall call{"team/p", absl::StrCat("l", n++), 1, absl::Hours(1), cs};
    call.want_limits = true;
    absl::StatusOr<redis::AcquireAnswer> a = fn.AcquireSync(call);
    EXPECT_TRUE(a.ok()) << a.status();
    if (a.ok() && a->granted) {
      leases.push_back(call.lease_id);
      EXPECT_EQ(a->limits.size(), 1u);
      if (!a->limits.empty()) EXPECT_LE(a->limits[0].used, 6);
    }
    return a.ok() && a->granted;
  };
  auto release = [&](const std::string& id, int64_t used,
                     const std::vector<redis::CounterRef>& cs) {
    absl::StatusOr<redis::ReleaseAnswer> r = fn.ReleaseSync({"team/p", id, used, cs});
    EXPECT_TRUE(r.ok()) << r.status();
  };
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(acquire(under_sb));
  redis::ReportCall report{"team/p", "d", under_sb, 5};
  report.longest_window = absl::Hours(1);
  report.max_cooldown = absl::Hours(1);
  absl::StatusOr<redis::ReportAnswer> r = fn.ReportSync(report);
  ASSERT_TRUE(r.ok()) << r.status();
  // The upstream counts 5 of 6: one lease refunded entirely changes nothing it counted.
  release(leases[0], 0, under_sb);
  for (int i = 0; i < 3; ++i) granted_after_report += acquire(under_sb);
  EXPECT_LE(granted_after_report, 1) << "the upstream counts 5 of 6";
  // Reshaped to exact sliding: a refund of a lease charged in a bucket, then tries.
  release(leases[1], 0, under_slide);
  for (int i = 0; i < 3; ++i) granted_after_report += acquire(under_slide);
  EXPECT_LE(granted_after_report, 1) << "after sb -> sliding";
  // And back, with a refund of a lease charged under the sliding log.
  if (leases.size() > 3) release(leases.back(), 0, under_sb);
  release(leases[2], 0, under_sb);
  for (int i = 0; i < 3; ++i) granted_after_report += acquire(under_sb);
  EXPECT_LE(granted_after_report, 1) << "after sliding -> sb";
}

// A request_id granted under one shape and retried after a reload to another, through the other
// replica too: answered with its first grant, charged once; nothing more fits.
TEST(SharedReshapeAttackTest, ARequestIdRetriedAcrossAReshapeIsChargedOnce) {
  std::unique_ptr<Env> env = Env::Make({One(kSb6), One(kSb6)});
  ASSERT_NE(env, nullptr);
  auto with_id = [&](int i) {
    absl::Notification done;
    absl::StatusOr<Decision> out;
    env->replicas[i]->AcquireShared(Req("s"), SharedRequestId{"rid-7", "rid-7", "fp"},
                                    [&](absl::StatusOr<Decision> d) {
                                      out = std::move(d);
                                      done.Notify();
                                    });
    done.WaitForNotification();
    return out;
  };
  absl::StatusOr<Decision> first = with_id(0);
  ASSERT_TRUE(first.ok() && first->granted) << first.status();
  EXPECT_EQ(env->Grants(0, Req("s"), 2), 2);
  env->Reload(0, One(kSlide));
  env->Reload(1, One(kBucket));
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> again = with_id(i);
    ASSERT_TRUE(again.ok()) << i << ": " << again.status();
    EXPECT_TRUE(again->granted) << i;
    EXPECT_EQ(again->lease_id.ToString(), first->lease_id.ToString()) << i;
  }
  EXPECT_EQ(env->Grants(0, Req("s"), 2) + env->Grants(1, Req("s"), 2), 0);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// Two replicas on a concurrency limit and its scoped form, leases held: never two slots held
// against a cap of 1; once the holder releases, a call fits again (no lock-out).
TEST(SharedReshapeAttackTest, ConcurrencyFlipFlopBetweenScopingsHoldsOneSlot) {
  const LimitSpec conc = Concurrency("x", 1);
  std::unique_ptr<Env> env = Env::Make({One(conc), One(Scoped(conc))});
  ASSERT_NE(env, nullptr);
  std::vector<std::pair<int, LeaseId>> held;
  for (int i = 0; i < 8; ++i) {
    std::optional<Decision> d = env->Acquire(i % 2, Req("s"));
    if (d && d->granted) held.push_back({i % 2, d->lease_id});
  }
  EXPECT_EQ(held.size(), 1u) << "slots held against a cap of 1";
  for (const auto& [i, id] : held) {
    absl::StatusOr<ReleaseResult> r = env->replicas[1 - i]->Release(id, std::nullopt);
    EXPECT_TRUE(r.ok()) << r.status();
  }
  int again = 0;
  for (int i = 0; i < 4; ++i) {
    std::optional<Decision> d = env->Acquire(i % 2, Req("s"));
    again += d && d->granted;
  }
  EXPECT_EQ(again, 1) << "after the release: one slot, free";
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// A concurrency limit reshaped into a calendar one while a lease holds its slot, then the lease
// renewed and released: no error, and the call in flight counts in the hour.
TEST(SharedReshapeAttackTest, ConcurrencyToCalendarThenTheOldLeaseReleased) {
  const LimitSpec conc = Concurrency("x", 1);
  std::unique_ptr<Env> env = Env::Make({One(conc)});
  ASSERT_NE(env, nullptr);
  std::optional<Decision> a = env->Acquire(0, Req("s"));
  std::optional<Decision> b = env->Acquire(0, Req("s"));
  ASSERT_TRUE(a && a->granted);
  EXPECT_TRUE(b && !b->granted);
  env->Reload(0, One(Calendar("x", 1, CalendarUnit::kHour, "UTC")));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0);
  absl::StatusOr<absl::Time> renewed = env->replicas[0]->Renew(a->lease_id, absl::Seconds(60));
  EXPECT_TRUE(renewed.ok() || renewed.status().code() != absl::StatusCode::kInternal)
      << renewed.status();
  absl::StatusOr<ReleaseResult> r = env->replicas[0]->Release(a->lease_id, 1);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(env->Grants(0, Req("s"), 2), 0) << "the call sent counts in the hour";
  // Back to concurrency: the calendar hour in force since the reload keeps counting its unit (a
  // retired counter until the hour ends), the stricter of the two.
  env->Reload(0, One(conc));
  EXPECT_EQ(env->Grants(0, Req("s"), 2), 0) << "the hour of 1 in force holds 1";
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// A scoped counter's hash expired (a 1 s window, leases of 30 s still live), then its lease
// released (refunded) and renewed: nothing recreates a scope behind max_scopes' count, so at most
// max_scopes (2) distinct scopes are granted afterwards.
void LeaseReleasedAfterItsHashExpired(const LimitSpec& limit) {
  const Policy p = One(Scoped(limit), 2);
  std::unique_ptr<Env> env = Env::Make({p});
  ASSERT_NE(env, nullptr);
  std::optional<Decision> a = env->Acquire(0, Req("a"));
  std::optional<Decision> a2 = env->Acquire(0, Req("a"));
  ASSERT_TRUE(a && a->granted && a2 && a2->granted);
  const std::string key = redis::StateKey("p/x");
  ASSERT_TRUE(Eventually(
      [&] {
        return env->redis->Command({"EXISTS", key}).value_or("") == "0";
      },
      absl::Seconds(15), absl::Milliseconds(50)))
      << "the hash never expired";
  absl::StatusOr<absl::Time> renewed = env->replicas[0]->Renew(a2->lease_id, absl::Seconds(30));
  EXPECT_TRUE(renewed.ok() || renewed.status().code() != absl::StatusCode::kInternal)
      << renewed.status();
  absl::StatusOr<ReleaseResult> r = env->replicas[0]->Release(a->lease_id, 0);
  EXPECT_TRUE(r.ok()) << r.status();
  int scopes = 0;
  for (const char* s : {"a", "b", "c", "d"}) {
    std::optional<Decision> d = env->Acquire(0, Req(s));
    scopes += d && d->granted;
  }
  env->errors.erase(std::remove_if(env->errors.begin(), env->errors.end(),
                                   [](const std::string& e) {
                                     return e.find("RESOURCE_EXHAUSTED") != std::string::npos;
                                   }),
                    env->errors.end());
  EXPECT_LE(scopes, 2) << "distinct scopes granted past max_scopes 2";
  EXPECT_GE(scopes, 1);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

TEST(SharedReshapeAttackTest, ASubBucketLeaseReleasedAfterItsHashExpiredLeaksNoScope) {
  LeaseReleasedAfterItsHashExpired(Sliding("x", 3, absl::Seconds(1), 4));
}

TEST(SharedReshapeAttackTest, ASlidingLeaseReleasedAfterItsHashExpiredLeaksNoScope) {
  LeaseReleasedAfterItsHashExpired(Sliding("x", 3, absl::Seconds(1)));
}

TEST(SharedReshapeAttackTest, ARollingLeaseReleasedAfterItsHashExpiredLeaksNoScope) {
  LeaseReleasedAfterItsHashExpired(Rolling("x", 3, absl::Seconds(1)));
}

// max_scopes 2 while one replica runs the limit unscoped and the other scoped, their calls
// interleaved: the scoped replica's new scopes still stop at 2 (the eras' conversions create no
// uncounted scope), and nothing fails.
TEST(SharedReshapeAttackTest, MaxScopesHoldsWhileTheScopingFlipFlops) {
  const LimitSpec sb = Sliding("x", 100, absl::Minutes(1), 6);
  std::unique_ptr<Env> env = Env::Make({One(sb, 2), One(Scoped(sb), 2)});
  ASSERT_NE(env, nullptr);
  int scopes = 0, unscoped = 0;
  for (int i = 0; i < 6; ++i) {
    unscoped += env->Grants(0, Req(), 1);
    std::optional<Decision> d = env->Acquire(1, Req(absl::StrCat("s", i)));
    scopes += d && d->granted;
  }
  env->errors.erase(std::remove_if(env->errors.begin(), env->errors.end(),
                                   [](const std::string& e) {
                                     return e.find("RESOURCE_EXHAUSTED") != std::string::npos;
                                   }),
                    env->errors.end());
  EXPECT_LE(scopes, 2) << "distinct scopes granted past max_scopes 2";
  EXPECT_GE(scopes, 1);
  EXPECT_GE(unscoped, 1);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// FINDING (documented design, README "A capacity (or burst) change is no shape change"): a
// replica still on the looser capacity while another serves the stricter one grants up to the
// looser one in the same window. The ~k: meta records the capacity each state was written
// under, but only a shape change retires the old counter (quotad_reshape.lua reshape_load:
// `rewrite` without `ret` when only meta.cap differs), so burst 5 | burst 3 flip-flopping
// grants 5, calendar 5 | 3 grants 5. Keeping the stricter capacity for the window would delay
// a legitimate raise to the next window (the embedded ledger applies a raise at once): a
// policy question for the lead, so kept failing here.
TEST(SharedReshapeAttackFindings, DISABLED_TwoReplicasOnTwoCapacitiesFlipFlopPassTheStricter) {
  struct Case {
    const char* name;
    LimitSpec a, b;
  };
  const std::vector<Case> cases = {
      {"bucket burst 5 | burst 3", Bucket("x", 1, absl::Hours(1), 5), kBucket},
      {"calendar 5 | 3", Calendar("x", 5, CalendarUnit::kHour, "UTC"), kCal},
      {"sb 5 | sb 3", Sliding("x", 5, absl::Minutes(1), 6), kSb6},
  };
  for (const Case& c : cases) {
    std::unique_ptr<Env> env = Env::Make({One(c.a), One(c.b)});
    ASSERT_NE(env, nullptr);
    int granted = 0;
    for (int i = 0; i < 16; ++i) {
      std::optional<Decision> d = env->Acquire(i % 2, Req("s"));
      granted += d && d->granted;
    }
    EXPECT_LE(granted, 3) << c.name;
    EXPECT_TRUE(env->errors.empty()) << c.name << ": " << Errors(*env);
  }
}

// FINDING: a scoping era that only denied is lost. Scoped (scope "a" holds 3 of 3), reloaded
// unscoped: the call converts (the unscoped counter takes in the scopes' sum, a new unscoped
// era in ~s:) and denies, and a denial writes nothing (quotad_functions.lua quotad_acquire: "A
// denial writes nothing: what roll() changed is recomputed the same way next time" -- not true
// of a conversion whose inputs a later reload changes). Reloaded scoped again, a new scope "b"
// finds no unscoped era nor unscoped counter and starts empty: 3 granted, where the embedded
// ledger seeds "b" with the unscoped counter's 3 (scope_seeds) and grants nothing, and where
// the unscoped configuration in force during the window allowed 3 in all. The fix writes the
// converted state (and the ~s: mark) on the denial path too, outside quotad_reshape.lua's
// load-only contract (reshape_load "Writes nothing"), so it is left to the owner of
// quotad_functions.lua.
TEST(SharedReshapeAttackFindings, DISABLED_AScopingEraThatOnlyDeniedIsLost) {
  const Policy scoped = One(Scoped(kSb6));
  const Policy unscoped = One(kSb6);
  std::unique_ptr<Env> env = Env::Make({scoped});
  ASSERT_NE(env, nullptr);
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(scoped, Clock::Real());
  ASSERT_TRUE(ledger.ok());
  auto embedded = [&](const AcquireRequest& req, int tries) {
    int n = 0;
    for (int i = 0; i < tries; ++i) {
      absl::StatusOr<Decision> d = (*ledger)->Acquire(req);
      n += d.ok() && d->granted;
    }
    return n;
  };
  EXPECT_EQ(env->Grants(0, Req("a"), 3), 3);
  EXPECT_EQ(embedded(Req("a"), 3), 3);
  env->Reload(0, unscoped);
  ASSERT_TRUE((*ledger)->Reload(unscoped).ok());
  EXPECT_EQ(env->Grants(0, Req(), 1), 0);
  EXPECT_EQ(embedded(Req(), 1), 0);
  env->Reload(0, scoped);
  ASSERT_TRUE((*ledger)->Reload(scoped).ok());
  const int e = embedded(Req("b"), 3);
  EXPECT_EQ(env->Grants(0, Req("b"), 3), e) << "the embedded ledger grants " << e;
  EXPECT_EQ(e, 0);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

// max_scopes 5 over three replicas, 90 acquires of new scopes at once: at most 5 scopes ever
// granted, refusals are RESOURCE_EXHAUSTED (never INTERNAL).
TEST(SharedReshapeAttackTest, MaxScopesHoldsUnderConcurrentNewScopesOverThreeReplicas) {
  const Policy p = One(Scoped(kSb6), 5);
  std::unique_ptr<Env> env = Env::Make({p, p, p});
  ASSERT_NE(env, nullptr);
  absl::Mutex mu;
  int left = 90, granted = 0;
  std::vector<std::string> bad;
  std::vector<std::string> scopes(90);
  for (int i = 0; i < 90; ++i) {
    scopes[i] = absl::StrCat("n", i);
    env->replicas[i % 3]->AcquireShared(
        Req(scopes[i]), SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
          absl::MutexLock lock(&mu);
          if (d.ok()) {
            granted += d->granted;
          } else if (d.status().code() != absl::StatusCode::kResourceExhausted) {
            bad.push_back(d.status().ToString());
          }
          --left;
        });
  }
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(
        +[](int* l) { return *l == 0; }, &left));
  }
  EXPECT_LE(granted, 5);
  EXPECT_GE(granted, 1);
  EXPECT_TRUE(bad.empty()) << bad.front();
}

// A denial (cost past the capacity) and a request_id retry create no scope: with max_scopes 3,
// three other scopes still fit afterwards.
TEST(SharedReshapeAttackTest, MaxScopesCountsNoScopeForADenialOrARetry) {
  const Policy p = One(Scoped(kSb6), 3);
  std::unique_ptr<Env> env = Env::Make({p, p});
  ASSERT_NE(env, nullptr);
  std::optional<Decision> denied = env->Acquire(0, Req("big", 4));
  EXPECT_TRUE(!denied || !denied->granted);
  env->errors.clear();  // a cost past the capacity may be refused either way
  // One request_id sent twice, through both replicas.
  for (int i = 0; i < 2; ++i) {
    absl::Notification done;
    absl::StatusOr<Decision> out;
    env->replicas[i]->AcquireShared(Req("r"), SharedRequestId{"rid-1", "rid-1", "fp"},
                                    [&](absl::StatusOr<Decision> d) {
                                      out = std::move(d);
                                      done.Notify();
                                    });
    done.WaitForNotification();
    EXPECT_TRUE(out.ok() && out->granted) << i << ": " << out.status();
  }
  EXPECT_EQ(env->Grants(1, Req("a"), 1), 1) << "the second scope";
  EXPECT_EQ(env->Grants(0, Req("b"), 1), 1) << "the third scope";
  std::optional<Decision> fourth = env->Acquire(1, Req("c"));
  EXPECT_TRUE(!fourth || !fourth->granted) << "a fourth scope past max_scopes 3";
}

// kill -9 of redis-server (appendfsync always) right after a call wrote a reshape, restarted:
// the converted state (and the retired counter) came back with the AOF.
TEST(SharedReshapeAttackTest, KillNineRightAfterAReshapeKeepsItsUnits) {
  RedisServerOptions options;
  options.appendfsync = "always";
  std::unique_ptr<Env> env = Env::Make({One(kSlide)}, options);
  ASSERT_NE(env, nullptr);
  EXPECT_EQ(env->Grants(0, Req("s"), 3), 3);
  env->Reload(0, One(kSb6));
  EXPECT_EQ(env->Grants(0, Req("s"), 1), 0);  // writes the conversion
  ASSERT_TRUE(env->redis->Stop(SIGKILL).ok());
  ASSERT_TRUE(env->redis->Restart().ok());
  env->Reload(0, One(kSlide));
  // Calls fail while the replica reconnects; once one answers it must deny.
  std::optional<Decision> d;
  EXPECT_TRUE(Eventually(
      [&] {
        absl::StatusOr<Decision> r = AcquireThrough(*env->replicas[0], Req("s"));
        if (r.ok()) d = *r;
        return r.ok();
      },
      absl::Seconds(10), absl::Milliseconds(50)));
  ASSERT_TRUE(d.has_value());
  EXPECT_FALSE(d->granted) << "3 of 3 held before the crash";
  EXPECT_EQ(env->Grants(0, Req("s"), 2), 0);
  EXPECT_TRUE(env->errors.empty()) << Errors(*env);
}

}  // namespace
}  // namespace quotad::testing

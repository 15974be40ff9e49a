// Attacks on the shared-mode all-or-nothing batch (quotad_acquire_all, RedisBackend::
// AcquireAllShared, commit 8ab7a4e): items sharing counters within one batch (a feature twice,
// draws_on, scoped limits with max_scopes, concurrency + token bucket + sub-bucketed sliding +
// calendar, two credentials), decided against the embedded ledger's AcquireAll; batches racing
// singles from three replicas; a batch behind a parked waiter; request_ids (a replay inside a
// denied batch, one request_id for two requests in a batch, the same request twice, a batch
// retried through another replica); a cooldown, a hot reload that tightens a limit, a reset,
// calendar windows offered around a clock days off, bad items, 1000 items, a SIGKILL of
// redis-server under load, and WAIT with no replica and with a replica that acknowledges nothing
// (SIGSTOP). One redis-server (and, for WAIT, its replica) started per test on loopback;
// replicas are RedisBackends in process. Bounded: a few hundred batches in all, a few threads.

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::BatchThrough;
using ::quotad::testing::CountGranted;
using ::quotad::testing::Eventually;
using ::quotad::testing::Granted;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::ReplicaOptions;

constexpr char kCredential[] = "team/aon";

// p: four limit kinds; k draws on p; s: scoped, at most 2 scopes; w: 2 slots; big: 1000 units.
std::string Config(int k_own = 5) {
  return absl::StrCat(R"(
credentials:
  - name: team/aon
    features:
      - name: p
        default_lease_ttl: 5m
        limits:
          - {name: slots, kind: concurrency, capacity: 6}
          - {name: tb, kind: token_bucket, capacity: 8, rate: 1, period: 1h}
          - {name: sl, kind: sliding, period: 1h, sub_buckets: 6, capacity: 10}
          - {name: day, kind: calendar, unit: day, capacity: 12}
      - name: k
        default_lease_ttl: 5m
        draws_on: [p]
        limits:
          - {name: own, kind: rolling, period: 1h, capacity: )",
                      k_own, R"(}
      - name: s
        max_scopes: 2
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 3, scoped: true}
          - {name: all, kind: rolling, period: 1h, capacity: 9}
      - name: w
        default_lease_ttl: 5m
        limits:
          - {name: slots, kind: concurrency, capacity: 2}
      - name: big
        limits:
          - {name: units, kind: rolling, period: 1h, capacity: 1000}
      - name: race
        default_lease_ttl: 5m
        limits:
          - {name: slots, kind: concurrency, capacity: 30}
          - {name: units, kind: rolling, period: 1h, capacity: 25}
      - name: race2
        default_lease_ttl: 5m
        draws_on: [race]
        limits:
          - {name: own, kind: rolling, period: 1h, capacity: 12}
  - name: team/aon2
    features:
      - name: a
        limits:
          - {name: sl, kind: sliding, period: 1h, sub_buckets: 4, capacity: 20}
      - name: b
        draws_on: [a]
        limits:
          - {name: day, kind: calendar, unit: day, capacity: 6}
      - name: c
        draws_on: [a]
        limits:
          - {name: tb, kind: token_bucket, capacity: 5, rate: 1, period: 1h}
)");
}

Policy MustPolicy(int k_own = 5) {
  absl::StatusOr<Policy> p = LoadPolicyFromString(Config(k_own), "aon.yaml");
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : Policy{};
}

// One batch item's request.
struct Item {
  std::string feature;
  int64_t cost = 1;
  std::string scope;
  std::string rid;  // request_id key (and request_id); empty: none
  std::string fp;   // its fingerprint
  std::string credential = kCredential;
};

AcquireRequest Core(const Item& item) {
  AcquireRequest r;
  r.credential = item.credential;
  r.feature = item.feature;
  r.scope = item.scope;
  r.cost = item.cost;
  r.holder = "shared_all_or_nothing_attack_test";
  return r;
}

// A batch through `backend`, waited for.
std::vector<absl::StatusOr<Decision>> Batch(RedisBackend& backend, const std::vector<Item>& items) {
  std::vector<AcquireRequest> reqs;
  std::vector<SharedRequestId> ids;
  for (const Item& item : items) {
    reqs.push_back(Core(item));
    ids.push_back(SharedRequestId{item.rid, item.rid, item.fp});
  }
  return BatchThrough(backend, reqs, ids, /*all_or_nothing=*/true);
}

// A single Acquire through `backend`, with a request_id.
absl::StatusOr<Decision> Single(RedisBackend& backend, const Item& item) {
  return AcquireThrough(backend, Core(item), SharedRequestId{item.rid, item.rid, item.fp});
}

// How many single cost-1 Acquires of `item` are granted now (at most `limit` tried).
int Fill(RedisBackend& backend, const Item& item, int limit) {
  int n = 0;
  for (int i = 0; i < limit; ++i) {
    absl::StatusOr<Decision> d = Single(backend, item);
    if (!Granted(d)) break;
    ++n;
  }
  return n;
}

class SharedAllOrNothingAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
  }
  void TearDown() override {
    backends_.clear();  // before Redis goes
    redis_.reset();
  }

  RedisBackend& AddBackend(RedisBackendOptions options) {
    absl::StatusOr<std::unique_ptr<RedisBackend>> b =
        RedisBackend::Create(MustPolicy(), Clock::Real(), std::move(options));
    EXPECT_TRUE(b.ok()) << b.status();
    backends_.push_back(*std::move(b));
    RedisBackend& backend = *backends_.back();
    EXPECT_TRUE(Eventually([&] { return backend.serving(); }));
    return backend;
  }
  RedisBackend& AddBackend() { return AddBackend(ReplicaOptions(*redis_)); }

  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<RedisBackend>> backends_;
};

// Random batches over counters that items share (the same feature twice, k drawing on p's four
// limit kinds, two new scopes against max_scopes 2, b and c drawing on a, two credentials in one
// batch), some slots given back: every batch is decided as the embedded ledger's AcquireAll
// decides it (granted whole, or denied by the same item, with the same error code), and
// team/aon2's limits never count more than their capacity.
TEST_F(SharedAllOrNothingAttackTest, SharedCountersDecideAsTheEmbeddedLedger) {
  RedisBackend& backend = AddBackend();
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(MustPolicy(), Clock::Real());
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  std::mt19937 rng(20261127);
  const std::vector<std::string> scopes = {"a", "b", "c"};
  std::vector<std::pair<LeaseId, LeaseId>> held;  // p or k leases (redis, embedded)
  int granted_batches = 0, denied_batches = 0;
  std::map<std::string, int64_t> units2;  // team/aon2's granted units per feature
  for (int round = 0; round < 120; ++round) {
    std::vector<Item> items;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) {
      Item it;
      switch (rng() % 6) {
        case 0:
          it.feature = "p";
          break;
        case 1:
          it.feature = "k";
          break;
        case 2:
          it.feature = "s";
          it.scope = scopes[rng() % scopes.size()];
          break;
        default:  // team/aon2: b's calendar, c's bucket, then a's sub-bucketed sliding bind
          it.credential = "team/aon2";
          it.feature = std::string(1, static_cast<char>('a' + rng() % 3));
      }
      it.cost = 1 + static_cast<int64_t>(rng() % 3);
      items.push_back(it);
    }
    std::vector<AcquireRequest> reqs;
    for (const Item& it : items) reqs.push_back(Core(it));
    const std::vector<absl::StatusOr<Decision>> want = (*ledger)->AcquireAll(reqs);
    const std::vector<absl::StatusOr<Decision>> got = Batch(backend, items);
    ASSERT_EQ(got.size(), items.size());
    std::string what;
    for (const Item& it : items) {
      absl::StrAppend(&what, " ", it.credential, ":", it.feature, it.scope, "x", it.cost);
    }
    const int g = CountGranted(got);
    ASSERT_TRUE(g == 0 || g == n) << "round " << round << what << ": " << g << " of " << n;
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(Granted(got[i]), Granted(want[i]))
          << "round " << round << what << " item " << i << ": redis "
          << (got[i].ok() ? got[i]->limited_by : got[i].status().ToString()) << ", embedded "
          << (want[i].ok() ? want[i]->limited_by : want[i].status().ToString());
      ASSERT_EQ(got[i].status().code(), want[i].status().code())
          << "round " << round << what << " item " << i << ": " << got[i].status() << " vs "
          << want[i].status();
      if (got[i].ok() && !got[i]->granted) {
        EXPECT_EQ(absl::StartsWith(got[i]->limited_by, "all_or_nothing:"),
                  absl::StartsWith(want[i]->limited_by, "all_or_nothing:"))
            << "round " << round << what << " item " << i << ": " << got[i]->limited_by << " vs "
            << want[i]->limited_by;
      }
    }
    if (g == n) {
      ++granted_batches;
      for (const Item& it : items) {
        if (it.credential == "team/aon2") units2[it.feature] += it.cost;
      }
      for (int i = 0; i < n; ++i) {
        if (items[i].feature == "p" || items[i].feature == "k")
          held.emplace_back(got[i]->lease_id, want[i]->lease_id);
      }
    } else {
      ++denied_batches;
    }
    // Now and then two slots of p come back (window limits refund nothing: used unknown).
    if (round % 7 == 6) {
      for (int j = 0; j < 2 && !held.empty(); ++j) {
        const size_t at = rng() % held.size();
        const auto [r, e] = held[at];
        held.erase(held.begin() + static_cast<ptrdiff_t>(at));
        ASSERT_TRUE(backend.Release(r, std::nullopt).ok());
        ASSERT_TRUE((*ledger)->Release(e, std::nullopt).ok());
      }
    }
  }
  EXPECT_GT(granted_batches, 5);
  EXPECT_GT(denied_batches, 5);
  EXPECT_LE(units2["a"] + units2["b"] + units2["c"], 20) << "a.sl";
  EXPECT_LE(units2["b"], 6) << "b.day";
  EXPECT_LE(units2["c"], 5) << "c.tb";
}

// Exact capacity with shared counters: k draws on p, so [p x3, k x3] takes 6 of p's 6 slots;
// one unit more in the batch, and nothing is charged.
TEST_F(SharedAllOrNothingAttackTest, DeniedExactlyWhenSequentialChargingWouldExceed) {
  RedisBackend& backend = AddBackend();
  std::vector<absl::StatusOr<Decision>> over = Batch(backend, {{"p", 3}, {"k", 3}, {"k", 1}});
  ASSERT_EQ(CountGranted(over), 0);
  ASSERT_TRUE(over[2].ok());
  EXPECT_EQ(over[2]->limited_by, "p.slots");
  EXPECT_EQ(over[0]->limited_by, "all_or_nothing:items[2]");
  std::vector<absl::StatusOr<Decision>> exact = Batch(backend, {{"p", 3}, {"k", 3}});
  EXPECT_EQ(CountGranted(exact), 2) << "6 slots: nothing was charged by the denied batch";
  EXPECT_FALSE(Granted(Single(backend, {"p", 1}))) << "a seventh slot";
  // max_scopes 2 with one scope in use: a batch opening two more is refused whole (the second
  // new scope counts the first); one opening one is granted, and a third scope is refused.
  ASSERT_EQ(CountGranted(Batch(backend, {{"s", 1, "a"}})), 1);
  std::vector<absl::StatusOr<Decision>> two_new = Batch(backend, {{"s", 1, "b"}, {"s", 1, "c"}});
  EXPECT_EQ(CountGranted(two_new), 0);
  EXPECT_EQ(two_new[1].status().code(), absl::StatusCode::kResourceExhausted)
      << two_new[1].status();
  EXPECT_EQ(CountGranted(Batch(backend, {{"s", 2, "b"}, {"s", 2, "a"}})), 2);
  std::vector<absl::StatusOr<Decision>> third = Batch(backend, {{"s", 1, "c"}, {"s", 1, "c"}});
  EXPECT_EQ(CountGranted(third), 0);
  EXPECT_EQ(third[0].status().code(), absl::StatusCode::kResourceExhausted) << third[0].status();
  EXPECT_EQ(Fill(backend, {"s", 1, "b"}, 5), 1) << "scope b holds 2 of 3";
  EXPECT_EQ(Fill(backend, {"s", 1, "a"}, 5), 0) << "scope a holds 3 of 3";
}

// Unknown features, an empty credential, a cost over capacity: refused before anything is
// decided, naming the item; nothing charged.
TEST_F(SharedAllOrNothingAttackTest, BadItemsChargeNothing) {
  RedisBackend& backend = AddBackend();
  for (const std::vector<Item>& bad : std::vector<std::vector<Item>>{
           {{"w", 1}, {"nothing", 1}}, {{"w", 1}, {"w", 3}}, {{"w", 1}, {"w", 0}}}) {
    std::vector<absl::StatusOr<Decision>> d = Batch(backend, bad);
    EXPECT_EQ(CountGranted(d), 0);
    EXPECT_FALSE(d[1].ok());
    ASSERT_TRUE(d[0].ok());
    EXPECT_EQ(d[0]->limited_by, "all_or_nothing:items[1]");
  }
  AcquireRequest empty = Core({"w", 1});
  empty.credential = "";
  std::vector<AcquireRequest> reqs = {Core({"w", 1}), empty};
  std::vector<SharedRequestId> ids(2);
  absl::Notification done;
  backend.AcquireAllShared(reqs, ids, [&](std::vector<absl::StatusOr<Decision>> d) {
    EXPECT_EQ(CountGranted(d), 0);
    done.Notify();
  });
  done.WaitForNotification();
  EXPECT_EQ(Fill(backend, {"w", 1}, 3), 2) << "both slots still free";
}

// Batches ([race, race2] and [race2, race2]) and singles race from three replicas, three
// threads each: every batch all or nothing, and race.units (25) granted exactly, never more;
// race2.own (12) never more.
TEST_F(SharedAllOrNothingAttackTest, RacingBatchesAndSinglesNeverPassTheCapacity) {
  for (int i = 0; i < 3; ++i) AddBackend();
  std::atomic<int> units{0}, own{0}, partial{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 9; ++t) {
    threads.emplace_back([&, t] {
      RedisBackend& backend = *backends_[t % 3];
      for (int op = 0; op < 15; ++op) {
        if ((op + t) % 3 == 0) {
          if (Granted(Single(backend, {"race", 1}))) ++units;
          continue;
        }
        const bool both2 = (op + t) % 3 == 1;
        std::vector<Item> items = {{both2 ? "race2" : "race", 1}, {"race2", 1}};
        std::vector<absl::StatusOr<Decision>> d = Batch(backend, items);
        for (const auto& x : d) {
          if (!x.ok()) ++errors;
        }
        const int g = CountGranted(d);
        if (g != 0 && g != 2) ++partial;
        if (g == 2) {
          units += 2;
          own += both2 ? 2 : 1;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(partial.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(units.load(), 25);
  EXPECT_LE(own.load(), 12);
}

// A waiter parked on w (asking for both slots) while one slot is free: a batch asking for that
// slot is held back as a single Acquire is (it never passes the waiter), and the waiter is
// granted once the second slot comes back.
TEST_F(SharedAllOrNothingAttackTest, BatchNeverPassesAQueuedWaiter) {
  RedisBackend& a = AddBackend();
  RedisBackend& b = AddBackend();
  absl::StatusOr<Decision> l1 = Single(a, {"w", 1});
  absl::StatusOr<Decision> l2 = Single(a, {"w", 1});
  ASSERT_TRUE(Granted(l1) && Granted(l2));
  absl::Notification answered;
  absl::StatusOr<Decision> waited;
  a.AcquireSharedOrWait(Core({"w", 2}), SharedRequestId{}, absl::Seconds(10), 0,
                        [&](absl::StatusOr<Decision> d) {
                          waited = std::move(d);
                          answered.Notify();
                        });
  ASSERT_TRUE(Eventually([&] { return a.wait_stats().placed >= 1; }));
  ASSERT_TRUE(b.Release(l1->lease_id, std::nullopt).ok());
  std::vector<absl::StatusOr<Decision>> d = Batch(b, {{"w", 1}});
  EXPECT_FALSE(Granted(d[0])) << "a batch passed the queued waiter";
  std::vector<absl::StatusOr<Decision>> d2 = Batch(b, {{"p", 1}, {"w", 1}});
  EXPECT_EQ(CountGranted(d2), 0) << "a batch passed the queued waiter";
  EXPECT_FALSE(Granted(Single(b, {"w", 1}))) << "a single passed the queued waiter";
  EXPECT_FALSE(answered.HasBeenNotified());
  ASSERT_TRUE(b.Release(l2->lease_id, std::nullopt).ok());
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(Granted(waited)) << waited.status();
  EXPECT_FALSE(Granted(Batch(b, {{"w", 1}})[0])) << "the waiter holds both slots";
}

// request_ids: a single grant replayed inside a denied batch stands (answered, not given back);
// one request_id for two different requests in a batch is refused with nothing charged; the same
// request twice in a batch is one grant; a batch retried through another replica answers the same
// leases and charges nothing.
TEST_F(SharedAllOrNothingAttackTest, RequestIdsInBatches) {
  RedisBackend& a = AddBackend();
  RedisBackend& b = AddBackend();
  absl::StatusOr<Decision> first = Single(a, {"w", 1, "", "r", "fp-r"});
  ASSERT_TRUE(Granted(first));
  std::vector<absl::StatusOr<Decision>> d = Batch(b, {{"w", 1, "", "r", "fp-r"}, {"w", 2}});
  ASSERT_TRUE(Granted(d[0])) << "the earlier grant is answered";
  EXPECT_EQ(d[0]->lease_id, first->lease_id);
  EXPECT_FALSE(Granted(d[1]));
  EXPECT_EQ(Fill(a, {"w", 1}, 3), 1) << "r still holds its slot (not given back), one free";
}

TEST_F(SharedAllOrNothingAttackTest, OneRequestIdForTwoRequestsChargesNothing) {
  RedisBackend& a = AddBackend();
  std::vector<absl::StatusOr<Decision>> d =
      Batch(a, {{"w", 1, "", "x", "fp-1"}, {"w", 1, "", "x", "fp-2"}});
  EXPECT_EQ(CountGranted(d), 0);
  EXPECT_EQ(d[1].status().code(), absl::StatusCode::kInvalidArgument)
      << "the conflict is named on the second item: " << d[1].status();
  EXPECT_EQ(Fill(a, {"w", 1}, 3), 2) << "the batch charged a slot it did not hand out";
  // Not recorded either: x is free for a new request.
  std::vector<absl::StatusOr<Decision>> p = Batch(a, {{"p", 1, "", "x", "fp-3"}});
  EXPECT_TRUE(Granted(p[0])) << (p[0].ok() ? p[0]->limited_by : p[0].status().ToString());
}

TEST_F(SharedAllOrNothingAttackTest, SameRequestTwiceIsOneGrantAndRetriesAcrossReplicas) {
  RedisBackend& a = AddBackend();
  RedisBackend& b = AddBackend();
  // Both of w's slots, asked twice by one request: one grant.
  std::vector<absl::StatusOr<Decision>> d =
      Batch(a, {{"w", 2, "", "y", "fp-y"}, {"w", 2, "", "y", "fp-y"}});
  ASSERT_EQ(CountGranted(d), 2) << (d[0].ok() ? d[0]->limited_by : d[0].status().ToString());
  EXPECT_EQ(d[0]->lease_id, d[1]->lease_id);
  EXPECT_FALSE(Granted(Single(b, {"w", 1})));
  // A batch retried through another replica: the same leases, nothing charged.
  std::vector<Item> batch = {{"k", 2, "", "z1", "fp-z1"}, {"p", 2, "", "z2", "fp-z2"}};
  std::vector<absl::StatusOr<Decision>> once = Batch(a, batch);
  ASSERT_EQ(CountGranted(once), 2);
  std::vector<absl::StatusOr<Decision>> again = Batch(b, batch);
  ASSERT_EQ(CountGranted(again), 2);
  EXPECT_EQ(again[0]->lease_id, once[0]->lease_id);
  EXPECT_EQ(again[1]->lease_id, once[1]->lease_id);
  EXPECT_EQ(Fill(b, {"p", 1}, 10), 2) << "6 slots, 4 held";
  // A batch's lease given back through the other replica frees its slots (p.tb keeps its 6
  // units: nothing refunded without a used count, so 2 of 8 are left).
  ASSERT_TRUE(b.Release(once[1]->lease_id, std::nullopt).ok());
  EXPECT_EQ(Fill(a, {"p", 1}, 10), 2);
  EXPECT_EQ(Fill(a, {"w", 1}, 3), 0) << "y still holds both of w's slots";
}

// A replica whose clock is days off offers calendar windows around its own time: the batch is
// decided again around Redis's time (quotad_acquire_all's -1), and its units count in today's
// window, which a replica with the right clock then sees full.
TEST_F(SharedAllOrNothingAttackTest, CalendarWindowsAroundAWrongClock) {
  FakeClock off(absl::Now() - absl::Hours(75));
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), &off, ReplicaOptions(*redis_));
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& skewed = **created;
  RedisBackend& right = AddBackend();
  std::vector<absl::StatusOr<Decision>> d =
      Batch(skewed, {{"b", 2, "", "", "", "team/aon2"}, {"b", 2, "", "", "", "team/aon2"}});
  ASSERT_EQ(CountGranted(d), 2) << (d[0].ok() ? d[0]->limited_by : d[0].status().ToString());
  EXPECT_EQ(Fill(right, {"b", 1, "", "", "", "team/aon2"}, 8), 2) << "b.day is 6, 4 used today";
  std::vector<absl::StatusOr<Decision>> more =
      Batch(skewed, {{"a", 1, "", "", "", "team/aon2"}, {"b", 1, "", "", "", "team/aon2"}});
  EXPECT_EQ(CountGranted(more), 0) << "b.day is full today";
  created->reset();
}

// A hot reload that tightens k.own from 5 to 3 holds from the next batch on; a cooldown (a 429
// reported for p) denies a batch that has a p item, and its other item is not charged.
TEST_F(SharedAllOrNothingAttackTest, ReloadAndCooldownBetweenBatches) {
  RedisBackend& a = AddBackend();
  ASSERT_EQ(CountGranted(Batch(a, {{"k", 2}})), 1);
  ASSERT_TRUE(a.Reload(MustPolicy(3)).ok());
  std::vector<absl::StatusOr<Decision>> tight = Batch(a, {{"k", 1}, {"k", 1}});
  EXPECT_EQ(CountGranted(tight), 0) << "k.own is 3 now, 2 used";
  ASSERT_TRUE(tight[1].ok()) << tight[1].status();
  EXPECT_EQ(tight[1]->limited_by, "k.own");
  EXPECT_EQ(CountGranted(Batch(a, {{"k", 1}})), 1);

  UpstreamAnswer answer;
  answer.credential = kCredential;
  answer.feature = "p";
  answer.http_status = 429;
  ASSERT_TRUE(a.Report(answer).ok());
  std::vector<absl::StatusOr<Decision>> cooled = Batch(a, {{"s", 3, "a"}, {"p", 1}});
  EXPECT_EQ(CountGranted(cooled), 0);
  EXPECT_EQ(Fill(a, {"s", 1, "a"}, 5), 3) << "scope a's 3 units untouched by the denied batch";
}

// A reset between batches forgets the window charges but not the slots live leases hold: a
// batch after it still counts them (p.slots 6, 4 held).
TEST_F(SharedAllOrNothingAttackTest, ResetKeepsHeldSlotsForTheNextBatch) {
  RedisBackend& a = AddBackend();
  RedisBackend& b = AddBackend();
  std::vector<absl::StatusOr<Decision>> held = Batch(a, {{"k", 2}, {"p", 2}});
  ASSERT_EQ(CountGranted(held), 2);
  ASSERT_TRUE(b.Reset(kCredential).ok());
  std::vector<absl::StatusOr<Decision>> over = Batch(b, {{"p", 2}, {"k", 1}});
  EXPECT_EQ(CountGranted(over), 0) << "7 of 6 slots";
  ASSERT_TRUE(over[1].ok()) << over[1].status();
  EXPECT_EQ(over[1]->limited_by, "p.slots");
  EXPECT_EQ(CountGranted(Batch(b, {{"p", 1}, {"k", 1}})), 2);
  EXPECT_EQ(Fill(a, {"p", 1}, 3), 0);
  // A lease from before the reset frees its slots when released.
  ASSERT_TRUE(a.Release(held[1]->lease_id, std::nullopt).ok());
  EXPECT_EQ(Fill(b, {"p", 1}, 5), 2);
}

// 1000 items in one batch: granted whole at exactly the capacity (1000 units), one more
// denied; 1000 more units asked with one over: denied, nothing charged.
TEST_F(SharedAllOrNothingAttackTest, AThousandItems) {
  RedisBackend& a = AddBackend();
  std::vector<Item> over(999, Item{"big", 1});
  over.push_back(Item{"big", 2});
  std::vector<absl::StatusOr<Decision>> d = Batch(a, over);
  EXPECT_EQ(CountGranted(d), 0);
  ASSERT_TRUE(d[999].ok()) << d[999].status();
  EXPECT_EQ(d[999]->limited_by, "big.units");
  std::vector<absl::StatusOr<Decision>> all = Batch(a, std::vector<Item>(1000, Item{"big", 1}));
  EXPECT_EQ(CountGranted(all), 1000)
      << (all[0].ok() ? all[0]->limited_by : all[0].status().ToString());
  EXPECT_FALSE(Granted(Single(a, {"big", 1})));
}

// redis-server killed (SIGKILL, AOF always) while two threads send batches of 2 on k.own
// (5 units): every batch all or nothing, none granted while it is down (UNAVAILABLE), and after
// the restart Redis counts every unit granted (no more than 5 in all).
TEST_F(SharedAllOrNothingAttackTest, KilledMidLoadFailsClosed) {
  RedisBackend& a = AddBackend();
  std::atomic<bool> stop{false};
  std::atomic<int> units{0}, partial{0}, batches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        std::vector<absl::StatusOr<Decision>> d = Batch(a, {{"k", 1}, {"k", 1}});
        const int g = CountGranted(d);
        if (g != 0 && g != 2) ++partial;
        units += g;
        ++batches;
        if (batches.load() > 400) break;
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return batches.load() >= 1; }));
  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  std::vector<absl::StatusOr<Decision>> down = Batch(a, {{"w", 1}, {"w", 1}});
  EXPECT_EQ(CountGranted(down), 0);
  EXPECT_EQ(down[0].status().code(), absl::StatusCode::kUnavailable) << down[0].status();
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return a.serving(); }));
  ASSERT_TRUE(Eventually([&] { return Granted(Single(a, {"w", 1})); }));
  stop = true;
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(partial.load(), 0);
  EXPECT_LE(units.load(), 4) << "k.own is 5: batches of 2 fit twice";
  // A batch the kill cut off may be charged and answered UNAVAILABLE (an under-grant), never
  // the reverse.
  EXPECT_LE(units.load() + Fill(a, {"k", 1}, 6), 5) << "grants Redis does not count";
}

// The pid of a redis-server, from INFO server.
int PidOf(const RedisServer& server) {
  absl::StatusOr<std::string> info = server.Command({"INFO", "server"});
  if (!info.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(*info, absl::ByAnyChar("\r\n "))) {
    int pid = 0;
    if (absl::ConsumePrefix(&line, "process_id:") && absl::SimpleAtoi(line, &pid)) return pid;
  }
  return -1;
}

// WAIT 1 with no replica: nothing granted. With a replica that stops acknowledging (SIGSTOP),
// a single grant is not handed out (UNAVAILABLE, though charged); its retry inside a denied
// batch must not hand it out either (the single path's retry waits again and answers
// UNAVAILABLE).
TEST_F(SharedAllOrNothingAttackTest, WaitPolicyHandsOutNothingUnacknowledged) {
  RedisBackendOptions lone = ReplicaOptions(*redis_);
  lone.wait_replicas = 1;
  lone.wait_timeout = absl::Milliseconds(100);
  {
    absl::StatusOr<std::unique_ptr<RedisBackend>> b =
        RedisBackend::Create(MustPolicy(), Clock::Real(), lone);
    ASSERT_TRUE(b.ok()) << b.status();
    std::vector<absl::StatusOr<Decision>> d = Batch(**b, {{"w", 1}});
    EXPECT_FALSE(Granted(d[0]));
    EXPECT_EQ(d[0].status().code(), absl::StatusCode::kUnavailable) << d[0].status();
  }
  // A replica's sync starts at once.
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "repl-diskless-sync-delay", "0"}).ok());
  RedisServerOptions ro;
  ro.extra_args = {"--replicaof", "127.0.0.1", absl::StrCat(redis_->port())};
  absl::StatusOr<std::unique_ptr<RedisServer>> replica = RedisServer::Start(ro);
  ASSERT_TRUE(replica.ok()) << replica.status();
  const int pid = PidOf(**replica);
  ASSERT_GT(pid, 0);
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), Clock::Real(), lone);
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& a = **created;
  // The server's health loop calls CheckHealth (ROLE: the replica connected); here the test.
  ASSERT_TRUE(Eventually([&] { return a.CheckHealth() && Granted(Single(a, {"p", 1})); }));
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  absl::Cleanup resume = [pid] { ::kill(pid, SIGCONT); };
  absl::StatusOr<Decision> single = Single(a, {"w", 1, "", "r", "fp-r"});
  ASSERT_EQ(single.status().code(), absl::StatusCode::kUnavailable) << single.status();
  absl::StatusOr<Decision> retried = Single(a, {"w", 1, "", "r", "fp-r"});
  EXPECT_EQ(retried.status().code(), absl::StatusCode::kUnavailable) << retried.status();
  std::vector<absl::StatusOr<Decision>> d = Batch(a, {{"w", 1, "", "r", "fp-r"}, {"w", 2}});
  EXPECT_FALSE(Granted(d[0])) << "an unacknowledged grant handed out by a denied batch";
  EXPECT_EQ(d[0].status().code(), absl::StatusCode::kUnavailable) << d[0].status();
  EXPECT_FALSE(Granted(d[1]));
  // Once the replica acknowledges again, the retry inside a denied batch answers the grant.
  std::move(resume).Invoke();
  EXPECT_TRUE(Eventually([&] {
    std::vector<absl::StatusOr<Decision>> again = Batch(a, {{"w", 1, "", "r", "fp-r"}, {"w", 2}});
    return Granted(again[0]) && !Granted(again[1]);
  }));
  created->reset();  // before the replica resumes and goes
}

}  // namespace
}  // namespace quotad

// Attacks on the shared-mode batch without all_or_nothing (quotad_acquire_many,
// RedisFunctions::AcquireMany, RedisBackend::AcquireManyShared, commit e9756c0): items sharing
// counters within one batch (a feature twice, draws_on, scoped limits with max_scopes, four limit
// kinds, two credentials, bad items) decided against the embedded ledger deciding the same items
// one after the other; batches racing singles from three replicas; a batch behind a parked
// waiter; request_ids (the same request twice, one request_id for two requests, a single grant
// replayed inside a batch, a batch retried through another replica, and with calendar windows
// sent again); calendar windows offered around a clock days off (items kept in order); fail_open
// and fail-closed credentials in one batch while redis-server is down and while it dies under
// batches, and a batch timed out (CLIENT PAUSE); 1000 items in one FCALL; a SIGKILL of redis-server
// under batch load; WAIT with a replica that acknowledges nothing (SIGSTOP); a batch over a
// three-master Redis Cluster (one FCALL per master, a master killed); and through two quotad
// servers (every item checked first, retried across servers, fail open with Redis killed). One
// redis-server (or cluster) started per test on loopback; replicas are RedisBackends in process.
// Bounded: a few hundred batches in all, a few threads.

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
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
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/cluster_harness.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::BatchThrough;
using ::quotad::testing::ClusterGroup;
using ::quotad::testing::CountGranted;
using ::quotad::testing::Eventually;
using ::quotad::testing::Granted;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::ReplicaOptions;

constexpr char kCredential[] = "team/many";

// p: four limit kinds; k draws on p; s: scoped, at most 2 scopes; w: 2 slots; big: 1000 units;
// race/race2 for racing; team/many2: a sub-bucketed sliding limit b and c draw on; team/open
// (fail_open) and team/closed: the same 3 units an hour.
std::string Config(int k_own = 5) {
  return absl::StrCat(R"(
profiles:
  - name: lenient
    fail_open: true
    features:
      - name: f
        default_lease_ttl: 5m
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 3}
credentials:
  - name: team/open
    profile: lenient
  - name: team/closed
    features:
      - name: f
        default_lease_ttl: 5m
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 3}
  - name: team/many
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
  - name: team/many2
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

Policy MustPolicy(const std::string& yaml) {
  absl::StatusOr<Policy> p = LoadPolicyFromString(yaml, "many.yaml");
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : Policy{};
}
Policy MustPolicy(int k_own = 5) { return MustPolicy(Config(k_own)); }

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
  r.holder = "shared_batch_attack_test";
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
  return BatchThrough(backend, reqs, ids, /*all_or_nothing=*/false);
}

// A single Acquire through `backend`, with a request_id.
absl::StatusOr<Decision> Single(RedisBackend& backend, const Item& item) {
  return AcquireThrough(backend, Core(item), SharedRequestId{item.rid, item.rid, item.fp});
}

std::string Show(const absl::StatusOr<Decision>& d) {
  if (!d.ok()) return d.status().ToString();
  return d->granted ? absl::StrCat("granted ", d->lease_id.ToString())
                    : absl::StrCat("denied by ", d->limited_by);
}

// How many single cost-1 Acquires of `item` are granted now (at most `limit` tried).
int Fill(RedisBackend& backend, const Item& item, int limit) {
  int n = 0;
  for (int i = 0; i < limit; ++i) {
    if (!Granted(Single(backend, item))) break;
    ++n;
  }
  return n;
}

class SharedBatchAttackTest : public ::testing::Test {
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
// limit kinds, new scopes against max_scopes 2, b and c drawing on a, two credentials, a cost
// over capacity, an unknown feature), some slots given back: every item is decided as the
// embedded ledger decides the same items one after the other (granted, or denied by the same
// limit, or the same error code), and team/many2's limits never count more than their capacity.
void DecideAsTheEmbeddedLedger(RedisBackend& backend, uint32_t seed) {
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(MustPolicy(), Clock::Real());
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  std::mt19937 rng(seed);
  const std::vector<std::string> scopes = {"a", "b", "c"};
  std::vector<std::pair<LeaseId, LeaseId>> held;  // p or k leases (redis, embedded)
  int granted = 0, denied = 0, errors = 0;
  std::map<std::string, int64_t> units2;  // team/many2's granted units per feature
  for (int round = 0; round < 100; ++round) {
    std::vector<Item> items;
    const int n = 1 + static_cast<int>(rng() % 6);
    for (int i = 0; i < n; ++i) {
      Item it;
      switch (rng() % 8) {
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
        case 3:
          it.feature = rng() % 2 == 0 ? "nothing" : "w";
          break;
        default:
          it.credential = "team/many2";
          it.feature = std::string(1, static_cast<char>('a' + rng() % 3));
      }
      it.cost = 1 + static_cast<int64_t>(rng() % 3);
      if (it.feature == "w" && rng() % 2 == 0) it.cost = 3;  // over w's capacity of 2
      items.push_back(it);
    }
    std::vector<absl::StatusOr<Decision>> want;
    for (const Item& it : items) want.push_back((*ledger)->Acquire(Core(it)));
    const std::vector<absl::StatusOr<Decision>> got = Batch(backend, items);
    std::string what;
    for (const Item& it : items) {
      absl::StrAppend(&what, " ", it.credential, ":", it.feature, it.scope, "x", it.cost);
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(got[i].status().code(), want[i].status().code())
          << "round " << round << what << " item " << i << ": redis " << Show(got[i])
          << ", embedded " << Show(want[i]);
      if (!got[i].ok()) {
        ++errors;
        continue;
      }
      ASSERT_EQ(got[i]->granted, want[i]->granted)
          << "round " << round << what << " item " << i << ": redis " << Show(got[i])
          << ", embedded " << Show(want[i]);
      if (!got[i]->granted) {
        ++denied;
        EXPECT_EQ(got[i]->limited_by, want[i]->limited_by) << "round " << round << what;
        continue;
      }
      ++granted;
      if (items[i].credential == "team/many2") units2[items[i].feature] += items[i].cost;
      if (items[i].feature == "p" || items[i].feature == "k" || items[i].feature == "w") {
        held.emplace_back(got[i]->lease_id, want[i]->lease_id);
      }
    }
    // Now and then two leases come back (window limits refund nothing: used unknown).
    if (round % 5 == 4) {
      for (int j = 0; j < 2 && !held.empty(); ++j) {
        const size_t at = rng() % held.size();
        const auto [r, e] = held[at];
        held.erase(held.begin() + static_cast<ptrdiff_t>(at));
        ASSERT_TRUE(backend.Release(r, std::nullopt).ok());
        ASSERT_TRUE((*ledger)->Release(e, std::nullopt).ok());
      }
    }
  }
  EXPECT_GT(granted, 20);
  EXPECT_GT(denied, 20);
  EXPECT_GT(errors, 5);
  EXPECT_LE(units2["a"] + units2["b"] + units2["c"], 20) << "a.sl";
  EXPECT_LE(units2["b"], 6) << "b.day";
  EXPECT_LE(units2["c"], 5) << "c.tb";
}

TEST_F(SharedBatchAttackTest, SharedCountersDecideAsTheEmbeddedLedgerInOrder) {
  DecideAsTheEmbeddedLedger(AddBackend(), 20261127);
}

// The same from a replica whose clock is 75 h off: every item from the first with a calendar
// window on is sent again around Redis's time, and the batch is still decided in order.
TEST_F(SharedBatchAttackTest, SharedCountersDecideInOrderAroundAWrongClock) {
  FakeClock off(absl::Now() - absl::Hours(75));
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), &off, ReplicaOptions(*redis_));
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(Eventually([&] { return (*created)->serving(); }));
  DecideAsTheEmbeddedLedger(**created, 1127);
  created->reset();
}

// In order at one time: k draws on p, so [p x3, k x3, k x1, p x1] grants the first two (p's 6
// slots) and denies the others by p.slots; max_scopes 2: [s a, s b, s c, s a] grants a, b and the
// second a, and refuses c (RESOURCE_EXHAUSTED) without counting it; one FCALL for the batch.
TEST_F(SharedBatchAttackTest, ItemsAreChargedInOrderAtExactCapacity) {
  RedisBackend& backend = AddBackend();
  const int64_t before = redis_->Calls("fcall");
  std::vector<absl::StatusOr<Decision>> d =
      Batch(backend, {{"p", 3}, {"k", 3}, {"k", 1}, {"p", 1}});
  EXPECT_EQ(redis_->Calls("fcall") - before, 1) << "one FCALL per batch";
  EXPECT_TRUE(Granted(d[0]) && Granted(d[1])) << Show(d[0]) << " " << Show(d[1]);
  for (int i : {2, 3}) {
    ASSERT_TRUE(d[i].ok()) << d[i].status();
    EXPECT_FALSE(d[i]->granted) << i;
    EXPECT_EQ(d[i]->limited_by, "p.slots") << i;
  }
  EXPECT_NE(d[0]->lease_id.ToString(), d[1]->lease_id.ToString());
  EXPECT_FALSE(Granted(Single(backend, {"p", 1}))) << "a seventh slot";
  std::vector<absl::StatusOr<Decision>> s =
      Batch(backend, {{"s", 1, "a"}, {"s", 1, "b"}, {"s", 1, "c"}, {"s", 2, "a"}});
  EXPECT_TRUE(Granted(s[0]) && Granted(s[1]) && Granted(s[3]))
      << Show(s[0]) << " " << Show(s[1]) << " " << Show(s[3]);
  EXPECT_EQ(s[2].status().code(), absl::StatusCode::kResourceExhausted) << Show(s[2]);
  EXPECT_EQ(Fill(backend, {"s", 1, "b"}, 5), 2) << "scope b holds 1 of 3";
  EXPECT_EQ(Fill(backend, {"s", 1, "a"}, 5), 0) << "scope a holds 3 of 3";
  EXPECT_EQ(Fill(backend, {"s", 1, "c"}, 5), 0) << "a third scope";
}

// Batches ([race, race2, race] and [race2, race2]) and singles race from three replicas, three
// threads each: race.units (25) granted exactly, never more; race2.own (12) never more; every
// item answered without an error.
TEST_F(SharedBatchAttackTest, RacingBatchesAndSinglesGrantExactlyTheCapacity) {
  for (int i = 0; i < 3; ++i) AddBackend();
  std::atomic<int> units{0}, own{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 9; ++t) {
    threads.emplace_back([&, t] {
      RedisBackend& backend = *backends_[t % 3];
      for (int op = 0; op < 12; ++op) {
        if ((op + t) % 3 == 0) {
          if (Granted(Single(backend, {"race", 1}))) ++units;
          continue;
        }
        const bool both2 = (op + t) % 3 == 1;
        std::vector<Item> items = both2 ? std::vector<Item>{{"race2", 1}, {"race2", 1}}
                                        : std::vector<Item>{{"race", 1}, {"race2", 1}, {"race", 1}};
        std::vector<absl::StatusOr<Decision>> d = Batch(backend, items);
        for (size_t i = 0; i < d.size(); ++i) {
          if (!d[i].ok()) ++errors;
          if (!Granted(d[i])) continue;
          ++units;
          if (items[i].feature == "race2") ++own;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(units.load(), 25);
  EXPECT_LE(own.load(), 12);
  EXPECT_FALSE(Granted(Single(*backends_[0], {"race", 1})));
}

// A waiter parked on w (asking for both slots) while one slot is free: batch items asking for
// that slot are held back as a single Acquire is (never passing the waiter), an item on another
// feature of the same batch is granted, and the waiter is granted once the second slot is back.
TEST_F(SharedBatchAttackTest, BatchItemsNeverPassAQueuedWaiter) {
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
  std::vector<absl::StatusOr<Decision>> d = Batch(b, {{"w", 1}, {"p", 1}, {"w", 1}});
  EXPECT_FALSE(Granted(d[0])) << "a batch item passed the queued waiter";
  EXPECT_TRUE(Granted(d[1])) << Show(d[1]);
  EXPECT_FALSE(Granted(d[2])) << "a batch item passed the queued waiter";
  EXPECT_FALSE(answered.HasBeenNotified());
  ASSERT_TRUE(b.Release(l2->lease_id, std::nullopt).ok());
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(Granted(waited)) << waited.status();
  EXPECT_EQ(CountGranted(Batch(b, {{"w", 1}, {"w", 1}})), 0) << "the waiter holds both slots";
}

// request_ids: the same request twice in a batch is one grant (one lease, charged once); one
// request_id for two different requests: the first granted, the second INVALID_ARGUMENT and
// charged nothing; a single grant replayed inside a batch answers its lease; a batch retried
// through another replica answers the same leases and charges nothing.
TEST_F(SharedBatchAttackTest, RequestIdsInBatches) {
  RedisBackend& a = AddBackend();
  RedisBackend& b = AddBackend();
  std::vector<absl::StatusOr<Decision>> twice =
      Batch(a, {{"w", 1, "", "y", "fp-y"}, {"w", 1, "", "y", "fp-y"}});
  ASSERT_TRUE(Granted(twice[0]) && Granted(twice[1])) << Show(twice[0]) << " " << Show(twice[1]);
  EXPECT_EQ(twice[0]->lease_id.ToString(), twice[1]->lease_id.ToString());
  EXPECT_EQ(Fill(b, {"w", 1}, 3), 1) << "y is one slot of 2";

  std::vector<absl::StatusOr<Decision>> two =
      Batch(a, {{"p", 1, "", "x", "fp-1"}, {"p", 2, "", "x", "fp-2"}});
  ASSERT_TRUE(Granted(two[0])) << Show(two[0]);
  EXPECT_EQ(two[1].status().code(), absl::StatusCode::kInvalidArgument) << Show(two[1]);
  EXPECT_TRUE(absl::StrContains(two[1].status().message(), "'x'")) << two[1].status();
  EXPECT_EQ(Fill(b, {"p", 1}, 10), 5) << "6 slots, the first request holds 1";

  absl::StatusOr<Decision> first = Single(a, {"big", 1, "", "r", "fp-r"});
  ASSERT_TRUE(Granted(first)) << Show(first);
  const std::string m2 = "team/many2";
  std::vector<Item> batch = {{"big", 1, "", "r", "fp-r"},
                             {"c", 2, "", "z1", "fp-z1", m2},
                             {"c", 1, "", "z2", "fp-z2", m2},
                             {"c", 1, "", "", "", m2}};
  std::vector<absl::StatusOr<Decision>> once = Batch(b, batch);
  ASSERT_EQ(CountGranted(once), 4)
      << Show(once[0]) << " " << Show(once[1]) << " " << Show(once[2]) << " " << Show(once[3]);
  EXPECT_EQ(once[0]->lease_id.ToString(), first->lease_id.ToString());
  std::vector<absl::StatusOr<Decision>> again = Batch(a, batch);
  for (int i : {0, 1, 2}) {
    ASSERT_TRUE(Granted(again[i])) << i << " " << Show(again[i]);
    EXPECT_EQ(again[i]->lease_id.ToString(), once[i]->lease_id.ToString()) << i;
  }
  // c.tb is 5: 4 used by the first batch, the retry's replays charge nothing, so its last item
  // takes the fifth unit.
  EXPECT_TRUE(Granted(again[3])) << "the retry charged its replays again: " << Show(again[3]);
  EXPECT_EQ(Fill(a, {"c", 1, "", "", "", m2}, 3), 0);
}

// A replica whose clock is days off offers calendar windows around its own time: those items
// are decided again alone around Redis's time, and count in today's window, which a replica
// with the right clock sees. A request_id used by two requests of such a batch, the first with a
// calendar window, the second without: still the first granted and the second refused (as in
// order), never the reverse.
TEST_F(SharedBatchAttackTest, CalendarWindowsAroundAWrongClock) {
  FakeClock off(absl::Now() - absl::Hours(75));
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), &off, ReplicaOptions(*redis_));
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& skewed = **created;
  ASSERT_TRUE(Eventually([&] { return skewed.serving(); }));
  RedisBackend& right = AddBackend();
  const std::string m2 = "team/many2";
  std::vector<absl::StatusOr<Decision>> d =
      Batch(skewed, {{"b", 2, "", "", "", m2}, {"a", 1, "", "", "", m2}, {"b", 2, "", "", "", m2}});
  ASSERT_EQ(CountGranted(d), 3) << Show(d[0]) << " " << Show(d[1]) << " " << Show(d[2]);
  EXPECT_EQ(Fill(right, {"b", 1, "", "", "", m2}, 8), 2) << "b.day is 6, 4 used today";
  std::vector<absl::StatusOr<Decision>> more =
      Batch(skewed, {{"b", 1, "", "", "", m2}, {"a", 1, "", "", "", m2}});
  EXPECT_FALSE(Granted(more[0])) << "b.day is full today";
  EXPECT_TRUE(Granted(more[1])) << Show(more[1]);

  std::vector<absl::StatusOr<Decision>> rid =
      Batch(skewed, {{"p", 1, "", "cal", "fp-1"}, {"w", 1, "", "cal", "fp-2"}});
  EXPECT_TRUE(Granted(rid[0])) << "the first request: " << Show(rid[0]);
  EXPECT_EQ(rid[1].status().code(), absl::StatusCode::kInvalidArgument)
      << "the second request: " << Show(rid[1]);
  created->reset();
}

// Items from a replica whose clock is days off stay in order: b (a calendar, drawing on a's
// sliding 20) first, then a x17 and a x1: b and a x17 granted (20 of 20), the last denied by
// a.sl, as in order; never the items without a calendar first and b denied.
TEST_F(SharedBatchAttackTest, CalendarItemsStayInOrderAroundAWrongClock) {
  FakeClock off(absl::Now() - absl::Hours(75));
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), &off, ReplicaOptions(*redis_));
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& skewed = **created;
  ASSERT_TRUE(Eventually([&] { return skewed.serving(); }));
  const std::string m2 = "team/many2";
  std::vector<absl::StatusOr<Decision>> d = Batch(
      skewed, {{"b", 3, "", "", "", m2}, {"a", 17, "", "", "", m2}, {"a", 1, "", "", "", m2}});
  EXPECT_TRUE(Granted(d[0])) << Show(d[0]);
  EXPECT_TRUE(Granted(d[1])) << Show(d[1]);
  ASSERT_TRUE(d[2].ok()) << d[2].status();
  EXPECT_FALSE(d[2]->granted);
  EXPECT_EQ(d[2]->limited_by, "a.sl");
  created->reset();
}

// Every item of a batch while redis-server is down (and while it dies under batches) is
// answered as a single Acquire is: a fail_open credential granted locally (a fail-open lease
// id), a fail-closed one UNAVAILABLE; never a hang. Back up, Redis counts none of them.
TEST_F(SharedBatchAttackTest, FailOpenOnlyForFailOpenCredentials) {
  RedisBackendOptions options = ReplicaOptions(*redis_);
  options.call_timeout = absl::Milliseconds(500);
  RedisBackend& a = AddBackend(options);
  const std::vector<Item> mixed = {{"f", 1, "", "", "", "team/open"},
                                   {"f", 1, "", "", "", "team/closed"},
                                   {"f", 1, "", "", "", "team/open"},
                                   {"nothing", 1, "", "", "", "team/open"}};
  // Dying under batches: a thread sends them while the server is killed; each item is a Redis
  // grant, a fail-open grant (team/open only), or an error.
  std::atomic<bool> stop{false};
  std::atomic<int> batches{0}, wrong{0}, closed_granted{0};
  std::thread load([&] {
    while (!stop.load() && batches.load() < 3000) {
      std::vector<absl::StatusOr<Decision>> d = Batch(a, mixed);
      if (Granted(d[1])) ++closed_granted;
      // team/open: decided by Redis or granted locally, never an error.
      if (!d[0].ok() || !d[2].ok()) ++wrong;
      if (d[3].status().code() != absl::StatusCode::kNotFound) ++wrong;
      ++batches;
    }
  });
  ASSERT_TRUE(Eventually([&] { return batches.load() >= 1; }));
  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  ASSERT_TRUE(Eventually([&] { return !a.serving(); }));
  const int at_down = batches.load();
  EXPECT_TRUE(Eventually([&] { return batches.load() >= std::min(at_down + 3, 3000); }))
      << "batches stopped being answered after " << at_down;
  stop = true;
  load.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(closed_granted.load(), 3) << "team/closed granted past its 3 units";
  // Down: fail open for team/open only.
  for (int round = 0; round < 3; ++round) {
    std::vector<absl::StatusOr<Decision>> d = Batch(a, mixed);
    for (int i : {0, 2}) {
      ASSERT_TRUE(Granted(d[i])) << Show(d[i]);
      EXPECT_TRUE(RedisBackend::IsFailOpenLease(d[i]->lease_id));
    }
    EXPECT_EQ(d[1].status().code(), absl::StatusCode::kUnavailable) << Show(d[1]);
    EXPECT_EQ(d[3].status().code(), absl::StatusCode::kNotFound) << Show(d[3]);
  }
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return a.serving(); }, absl::Seconds(20)));
  const int closed_left = Fill(a, {"f", 1, "", "", "", "team/closed"}, 5);
  // A batch the kill cut off may be charged and answered UNAVAILABLE (an under-grant).
  EXPECT_LE(closed_left + closed_granted.load(), 3) << "a grant of team/closed not counted";
  std::vector<absl::StatusOr<Decision>> up = Batch(a, mixed);
  for (const auto& x : up) {
    if (Granted(x)) {
      EXPECT_FALSE(RedisBackend::IsFailOpenLease(x->lease_id));
    }
  }
}

// A batch whose FCALL outlives call_timeout (CLIENT PAUSE): every item answered within the
// bound, team/open granted locally, team/closed UNAVAILABLE (the call may still grant in Redis:
// an under-grant); once Redis answers again, team/closed is never past its 3 units.
TEST_F(SharedBatchAttackTest, ATimedOutBatchAnswersEveryItem) {
  RedisBackendOptions options = ReplicaOptions(*redis_);
  options.call_timeout = absl::Milliseconds(300);
  RedisBackend& a = AddBackend(options);
  ASSERT_TRUE(redis_->Command({"CLIENT", "PAUSE", "1500", "ALL"}).ok());
  const absl::Time start = absl::Now();
  std::vector<absl::StatusOr<Decision>> d =
      Batch(a, {{"f", 2, "", "", "", "team/closed"}, {"f", 1, "", "", "", "team/open"}});
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(d[0].status().code(), absl::StatusCode::kUnavailable) << Show(d[0]);
  ASSERT_TRUE(Granted(d[1])) << Show(d[1]);
  EXPECT_TRUE(RedisBackend::IsFailOpenLease(d[1]->lease_id));
  // PING waits for the pause to end (ALL pauses every client's commands).
  ASSERT_TRUE(redis_->Command({"PING"}).ok());
  ASSERT_TRUE(Eventually([&] { return a.serving(); }, absl::Seconds(20)));
  // The timed-out FCALL ran once the pause ended (2 units charged, none handed out), or never.
  const int left = Fill(a, {"f", 1, "", "", "", "team/closed"}, 5);
  EXPECT_TRUE(left == 1 || left == 3) << left << " of team/closed's 3 units left";
}

// 1000 items (and one more) in one FCALL: the first 1000 granted at exactly the capacity, the
// last denied; every item answered with its own lease.
TEST_F(SharedBatchAttackTest, AThousandItemsInOneCall) {
  RedisBackend& a = AddBackend();
  const int64_t before = redis_->Calls("fcall");
  std::vector<absl::StatusOr<Decision>> d = Batch(a, std::vector<Item>(1001, Item{"big", 1}));
  EXPECT_EQ(redis_->Calls("fcall") - before, 1);
  std::set<std::string> leases;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(Granted(d[i])) << i << " " << Show(d[i]);
    leases.insert(d[i]->lease_id.ToString());
  }
  EXPECT_EQ(leases.size(), 1000u);
  ASSERT_TRUE(d[1000].ok()) << d[1000].status();
  EXPECT_EQ(d[1000]->limited_by, "big.units");
  EXPECT_FALSE(Granted(Single(a, {"big", 1})));
}

// redis-server killed (SIGKILL, AOF always) while two threads send batches of 3 on k.own
// (5 units): every batch answered, none granted while it is down (UNAVAILABLE), and after the
// restart Redis counts every unit granted (no more than 5 in all).
TEST_F(SharedBatchAttackTest, KilledUnderLoadFailsClosed) {
  RedisBackend& a = AddBackend();
  std::atomic<bool> stop{false};
  std::atomic<int> units{0}, batches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!stop.load() && batches.load() < 400) {
        units += CountGranted(Batch(a, {{"k", 1}, {"k", 1}, {"k", 1}}));
        ++batches;
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return batches.load() >= 1; }));
  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  std::vector<absl::StatusOr<Decision>> down = Batch(a, {{"w", 1}, {"w", 1}});
  EXPECT_EQ(CountGranted(down), 0);
  EXPECT_EQ(down[0].status().code(), absl::StatusCode::kUnavailable) << Show(down[0]);
  ASSERT_TRUE(redis_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return a.serving(); }, absl::Seconds(20)));
  ASSERT_TRUE(Eventually([&] { return Granted(Single(a, {"w", 1})); }));
  stop = true;
  for (std::thread& t : threads) t.join();
  EXPECT_LE(units.load(), 5);
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

// WAIT 1 with a replica that stops acknowledging (SIGSTOP): no grant of a batch is handed out
// (each item UNAVAILABLE, though charged), a duplicate inside the batch neither, nor one decided
// in a second FCALL (calendar windows around a clock 75 h off); once the replica acknowledges
// again, the batches retried with their request_ids answer the grants, each charged once.
TEST_F(SharedBatchAttackTest, WaitPolicyHandsOutNothingUnacknowledged) {
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "repl-diskless-sync-delay", "0"}).ok());
  RedisServerOptions ro;
  ro.extra_args = {"--replicaof", "127.0.0.1", absl::StrCat(redis_->port())};
  absl::StatusOr<std::unique_ptr<RedisServer>> replica = RedisServer::Start(ro);
  ASSERT_TRUE(replica.ok()) << replica.status();
  const int pid = PidOf(**replica);
  ASSERT_GT(pid, 0);
  RedisBackendOptions options = ReplicaOptions(*redis_);
  options.wait_replicas = 1;
  options.wait_timeout = absl::Milliseconds(100);
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(), Clock::Real(), options);
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& a = **created;
  ASSERT_TRUE(Eventually([&] { return a.CheckHealth() && Granted(Single(a, {"big", 1})); }));
  // A replica 75 h off: its calendar items are decided in a second FCALL, waited for as well.
  FakeClock off(absl::Now() - absl::Hours(75));
  absl::StatusOr<std::unique_ptr<RedisBackend>> skewed_created =
      RedisBackend::Create(MustPolicy(), &off, options);
  ASSERT_TRUE(skewed_created.ok()) << skewed_created.status();
  RedisBackend& skewed = **skewed_created;
  ASSERT_TRUE(Eventually([&] { return skewed.CheckHealth() && skewed.serving(); }));
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  absl::Cleanup resume = [pid] { ::kill(pid, SIGCONT); };
  const std::vector<Item> batch = {
      {"w", 1, "", "r1", "fp-r1"}, {"w", 1, "", "r1", "fp-r1"}, {"p", 1, "", "r2", "fp-r2"}};
  std::vector<absl::StatusOr<Decision>> d = Batch(a, batch);
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(Granted(d[i])) << "an unacknowledged grant handed out: item " << i;
    EXPECT_EQ(d[i].status().code(), absl::StatusCode::kUnavailable) << i << " " << Show(d[i]);
  }
  const std::vector<Item> around = {{"big", 1, "", "r5", "fp-r5"}, {"p", 1, "", "r4", "fp-r4"}};
  std::vector<absl::StatusOr<Decision>> late = Batch(skewed, around);
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(Granted(late[i])) << "an unacknowledged grant handed out: item " << i;
    EXPECT_EQ(late[i].status().code(), absl::StatusCode::kUnavailable) << i << " " << Show(late[i]);
  }
  std::move(resume).Invoke();
  EXPECT_TRUE(Eventually([&] { return CountGranted(Batch(skewed, around)) == 2; }));
  std::vector<absl::StatusOr<Decision>> again;
  EXPECT_TRUE(Eventually([&] {
    again = Batch(a, batch);
    return CountGranted(again) == 3;
  }));
  if (CountGranted(again) == 3) {
    EXPECT_EQ(again[0]->lease_id.ToString(), again[1]->lease_id.ToString());
  }
  EXPECT_EQ(Fill(a, {"w", 1}, 3), 1) << "r1 holds one of w's 2 slots, charged once";
  EXPECT_EQ(Fill(a, {"p", 1}, 8), 4) << "p's 6 slots: r2 and r4 hold one each, charged once";
  skewed_created->reset();
  created->reset();  // before the replica goes
}

// A hot reload between batches that tightens k.own from 5 to 3 holds from the next batch on,
// item by item.
TEST_F(SharedBatchAttackTest, ReloadBetweenBatches) {
  RedisBackend& a = AddBackend();
  ASSERT_EQ(CountGranted(Batch(a, {{"k", 2}})), 1);
  ASSERT_TRUE(a.Reload(MustPolicy(3)).ok());
  std::vector<absl::StatusOr<Decision>> d = Batch(a, {{"k", 1}, {"k", 1}, {"p", 1}});
  EXPECT_TRUE(Granted(d[0])) << Show(d[0]);
  ASSERT_TRUE(d[1].ok()) << d[1].status();
  EXPECT_FALSE(d[1]->granted);
  EXPECT_EQ(d[1]->limited_by, "k.own");
  EXPECT_TRUE(Granted(d[2])) << Show(d[2]);
}

v1::AcquireRequest WireItem(const std::string& credential, const std::string& feature,
                            const std::string& request_id = "") {
  v1::AcquireRequest req;
  req.set_credential(credential);
  req.set_feature(feature);
  req.set_holder("shared_batch_attack_test");
  req.set_request_id(request_id);
  return req;
}

// Through two quotad servers (QuotaService::AcquireBatchShared): every item checked first (a
// max_wait, an unknown credential: errors naming their item, charging nothing), the same request
// twice one lease, the rest decided in order; the batch retried through the other server answers
// the same lease and charges nothing; with redis-server killed every batch is still answered
// (team/open granted locally, team/closed UNAVAILABLE), and the servers serve again after it.
TEST(SharedBatchServerTest, EveryItemCheckedThenDecidedThroughTheServers) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  testing::TempDir dir("shared-batch");
  const std::string config = dir.WriteFile("quotad.yaml", Config());
  std::vector<std::unique_ptr<QuotadServer>> servers;
  std::vector<std::unique_ptr<v1::Quota::Stub>> stubs;
  for (int i = 0; i < 2; ++i) {
    ServerOptions options =
        testing::SharedServerOptions(config, absl::StrCat("redis://127.0.0.1:", (*redis)->port()));
    options.redis_timeout = absl::Milliseconds(500);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_TRUE(testing::ServesWithin((*server)->address()));
    stubs.push_back(v1::Quota::NewStub(
        grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials())));
    servers.push_back(*std::move(server));
  }
  auto batch = [&](int server, const v1::AcquireBatchRequest& req, v1::AcquireBatchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return stubs[server]->AcquireBatch(&ctx, req, resp);
  };
  v1::AcquireBatchRequest req;
  *req.add_items() = WireItem(kCredential, "w", "g");
  *req.add_items() = WireItem(kCredential, "w", "g");
  *req.add_items() = WireItem(kCredential, "w");
  req.mutable_items(2)->mutable_max_wait()->set_seconds(5);
  *req.add_items() = WireItem("team/nobody", "w");
  *req.add_items() = WireItem(kCredential, "w");
  *req.add_items() = WireItem(kCredential, "w");
  v1::AcquireBatchResponse resp;
  grpc::Status s = batch(0, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.results_size(), 6);
  ASSERT_TRUE(resp.results(0).response().granted()) << resp.DebugString();
  EXPECT_EQ(resp.results(1).response().lease_id(), resp.results(0).response().lease_id());
  ASSERT_TRUE(resp.results(2).has_error()) << resp.results(2).DebugString();
  EXPECT_EQ(resp.results(2).error().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(resp.results(2).error().message(), "items[2]"));
  EXPECT_TRUE(absl::StrContains(resp.results(2).error().message(), "max_wait"));
  ASSERT_TRUE(resp.results(3).has_error()) << resp.results(3).DebugString();
  EXPECT_TRUE(absl::StrContains(resp.results(3).error().message(), "items[3]"));
  EXPECT_TRUE(resp.results(4).response().granted()) << "w's second slot";
  EXPECT_FALSE(resp.results(5).response().granted());
  EXPECT_EQ(resp.results(5).response().limited_by(), "w.slots");

  v1::AcquireBatchResponse again;
  ASSERT_TRUE(batch(1, req, &again).ok());
  ASSERT_EQ(again.results_size(), 6);
  EXPECT_EQ(again.results(0).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_EQ(again.results(1).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_FALSE(again.results(4).response().granted()) << "a third slot";
  EXPECT_FALSE(again.results(5).response().granted()) << "a third slot";

  ASSERT_TRUE((*redis)->Stop(SIGKILL).ok());
  v1::AcquireBatchRequest mixed;
  *mixed.add_items() = WireItem("team/open", "f");
  *mixed.add_items() = WireItem("team/closed", "f");
  *mixed.add_items() = WireItem("team/open", "f", "o1");
  for (int round = 0; round < 4; ++round) {
    v1::AcquireBatchResponse down;
    grpc::Status st = batch(round % 2, mixed, &down);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(down.results_size(), 3);
    for (int i : {0, 2}) {
      ASSERT_TRUE(down.results(i).response().granted()) << down.results(i).DebugString();
      EXPECT_TRUE(absl::StartsWith(down.results(i).response().lease_id(), "fa11fa11"))
          << down.results(i).response().lease_id();
    }
    ASSERT_TRUE(down.results(1).has_error()) << down.results(1).DebugString();
    EXPECT_EQ(down.results(1).error().code(), grpc::StatusCode::UNAVAILABLE);
  }
  ASSERT_TRUE((*redis)->Restart().ok());
  // Back (health may not have turned NOT_SERVING yet): Redis decides every item again.
  v1::AcquireBatchResponse back;
  EXPECT_TRUE(Eventually(
      [&] {
        if (!batch(0, mixed, &back).ok() || back.results_size() != 3) return false;
        for (int i = 0; i < 3; ++i) {
          if (!back.results(i).response().granted() ||
              absl::StartsWith(back.results(i).response().lease_id(), "fa11fa11")) {
            return false;
          }
        }
        return true;
      },
      absl::Seconds(20)))
      << back.DebugString();
  servers.clear();  // before Redis goes
}

// A batch over a three-master Redis Cluster spanning credentials on every master: one FCALL per
// master, each credential's items decided in order at its capacity (the rest denied); a master
// killed: its credentials' items UNAVAILABLE, every other item still decided.
TEST(SharedBatchClusterTest, OneCallPerMasterEachItemAnswered) {
  absl::StatusOr<std::unique_ptr<ClusterGroup>> group = ClusterGroup::Start();
  ASSERT_TRUE(group.ok()) << group.status();
  std::string yaml = "credentials:\n";
  for (int i = 0; i < 24; ++i) {
    absl::StrAppend(&yaml, "  - name: team/c", i, "\n    features:\n      - name: f\n",
                    "        limits:\n",
                    "          - {name: hourly, kind: rolling, period: 1h, capacity: 2}\n");
  }
  std::vector<std::string> on(3);  // a credential on each master
  for (int i = 0; i < 24; ++i) {
    const std::string cred = absl::StrCat("team/c", i);
    const int owner = (*group)->OwnerOf(redis::KeySlot(redis::StateKey(cred)));
    if (owner >= 0 && owner < 3 && on[owner].empty()) on[owner] = cred;
  }
  for (int m = 0; m < 3; ++m) ASSERT_FALSE(on[m].empty()) << "no credential on master " << m;
  RedisBackendOptions options;
  options.url = (*group)->url();
  options.connect_wait = absl::Seconds(5);
  options.call_timeout = absl::Milliseconds(500);
  absl::StatusOr<std::unique_ptr<RedisBackend>> created =
      RedisBackend::Create(MustPolicy(yaml), Clock::Real(), options);
  ASSERT_TRUE(created.ok()) << created.status();
  RedisBackend& backend = **created;
  ASSERT_TRUE(Eventually([&] { return backend.serving(); }));
  std::vector<Item> items;
  for (int round = 0; round < 3; ++round) {
    for (int m = 0; m < 3; ++m) items.push_back({"f", 1, "", "", "", on[m]});
  }
  std::vector<int64_t> before(3);
  for (int m = 0; m < 3; ++m) before[m] = (*group)->node(m).Calls("fcall");
  std::vector<absl::StatusOr<Decision>> d = Batch(backend, items);
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ((*group)->node(m).Calls("fcall") - before[m], 1) << "master " << m;
  }
  for (size_t i = 0; i < items.size(); ++i) {
    ASSERT_TRUE(d[i].ok()) << i << " " << Show(d[i]);
    EXPECT_EQ(d[i]->granted, i < 6) << i << " " << items[i].credential;
  }
  for (int m = 0; m < 3; ++m) EXPECT_EQ(Fill(backend, {"f", 1, "", "", "", on[m]}, 3), 0);

  // Master 1 killed: its items UNAVAILABLE, the others decided (denied: full).
  ASSERT_TRUE((*group)->Kill(1).ok());
  std::vector<absl::StatusOr<Decision>> after = Batch(backend, items);
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].credential == on[1]) {
      EXPECT_EQ(after[i].status().code(), absl::StatusCode::kUnavailable) << i << Show(after[i]);
    } else {
      ASSERT_TRUE(after[i].ok()) << i << " " << Show(after[i]);
      EXPECT_FALSE(after[i]->granted) << i;
    }
  }
  created->reset();
}

}  // namespace
}  // namespace quotad

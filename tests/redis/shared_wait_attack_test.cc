// Attacks on shared mode's cross-replica wait queue (RedisBackend::AcquireSharedOrWait,
// quotad_wait; README "Waiting"): one real redis-server on loopback, RedisBackends as replicas
// (a replica is a backend: what the gRPC layer adds is tested in shared_wait_test.cc). Each test
// is an attack that failed before its fix, or a guard that a fault (a lost subscription, a
// restarted or emptied Redis) neither over-grants nor wedges nor reorders the queue.
//
// Ordering without sleeps: a backend with one connection pipelines its calls and answers them in
// order on one thread, so a call made after another is answered (and its callback run) after
// it; the tests use that to know a cancelled waiter's last answer was handled.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/redis/sentinel_harness.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::ReplicaOptions;
using ::quotad::testing::SentinelGroup;
using ::quotad::testing::TempDir;

constexpr char kCredential[] = "team/wait";

constexpr char kConfig[] = R"(
credentials:
  - name: team/wait
    features:
      - name: one
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
      - name: other
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 5}
      - name: pool
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 3}
      - name: win
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: calendar, unit: day, capacity: 2}
)";

// The same, `pool` tightened to one slot and `one` removed (a hot reload).
constexpr char kTightConfig[] = R"(
credentials:
  - name: team/wait
    features:
      - name: other
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 5}
      - name: pool
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
)";

// One AcquireSharedOrWait, answered later on the backend's threads.
struct Waiting {
  std::string request_key, fingerprint;  // the SharedRequestId's strings
  WaitTicket ticket;
  absl::Notification done;
  absl::StatusOr<Decision> answer;

  bool answered() const { return done.HasBeenNotified(); }
  bool granted() const { return answered() && answer.ok() && answer->granted; }
};

class SharedWaitAttackTest : public ::testing::Test {
 protected:
  void SetUp() override { StartRedis({}); }

  void StartRedis(RedisServerOptions options) {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start(std::move(options));
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
  }

  // A replica of redis_ (one connection: its calls are answered in the order made).
  std::unique_ptr<RedisBackend> Replica(absl::Duration beat = absl::Seconds(1)) {
    absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "attack.yaml");
    EXPECT_TRUE(policy.ok()) << policy.status();
    if (!policy.ok()) return nullptr;
    RedisBackendOptions options = ReplicaOptions(*redis_);
    options.connections = 1;
    options.wait_beat = beat;
    absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
        RedisBackend::Create(*policy, Clock::Real(), options);
    EXPECT_TRUE(backend.ok()) << backend.status();
    if (!backend.ok()) return nullptr;
    return *std::move(backend);
  }

  static AcquireRequest Request(const char* feature, int64_t cost = 1) {
    AcquireRequest req;
    req.credential = kCredential;
    req.feature = feature;
    req.cost = cost;
    return req;
  }

  // An Acquire through `b` that may wait `max_wait`; with a request_id when `key` is not empty.
  // Kept by the fixture, so that it outlives the backends (locals of the test) that answer it.
  std::shared_ptr<Waiting> Wait(RedisBackend& b, const char* feature, absl::Duration max_wait,
                                int priority = 0, std::string key = "",
                                std::string fingerprint = "fp") {
    auto w = std::make_shared<Waiting>();
    waitings_.push_back(w);
    w->request_key = std::move(key);
    w->fingerprint = w->request_key.empty() ? "" : std::move(fingerprint);
    Waiting* raw = w.get();
    w->ticket = b.AcquireSharedOrWait(
        Request(feature), SharedRequestId{raw->request_key, raw->request_key, raw->fingerprint},
        max_wait, priority, [raw](absl::StatusOr<Decision> d) {
          raw->answer = std::move(d);
          raw->done.Notify();
        });
    return w;
  }

  // AcquireShared with a request_id, waited for.
  static absl::StatusOr<Decision> AcquireWithId(RedisBackend& b, const char* feature,
                                                const std::string& key,
                                                const std::string& fingerprint = "fp") {
    absl::Notification done;
    absl::StatusOr<Decision> out;
    b.AcquireShared(Request(feature), SharedRequestId{key, key, fingerprint},
                    [&](absl::StatusOr<Decision> d) {
                      out = std::move(d);
                      done.Notify();
                    });
    done.WaitForNotification();
    return out;
  }

  // Every replica has the answer to its waiters' first calls (their places in the queue known).
  // A connection cut before that answers the waiter the error (it may not be queued); a test
  // that cuts it on purpose waits for this first.
  static bool Placed(const std::vector<RedisBackend*>& backends, int64_t each) {
    return Eventually([&] {
      return std::all_of(backends.begin(), backends.end(),
                         [&](RedisBackend* b) { return b->wait_stats().placed == each; });
    });
  }

  // Starts the waiting machinery of `backends` (a first wait, granted at once, on `other`) and
  // waits until their subscriptions are up: a subscription coming up makes every waiter parked
  // then call once, which a test that times its own steps must not meet later.
  void Subscribed(const std::vector<RedisBackend*>& backends) {
    for (RedisBackend* b : backends) {
      std::shared_ptr<Waiting> w = Wait(*b, "other", absl::Seconds(10));
      ASSERT_TRUE(w->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
      ASSERT_TRUE(w->granted()) << w->answer.status();
      ASSERT_TRUE(b->Release(w->answer->lease_id, 0).ok());
    }
    ASSERT_TRUE(Eventually([&] {
      absl::StatusOr<std::string> list = redis_->Command({"CLIENT", "LIST", "TYPE", "pubsub"});
      if (!list.ok()) return false;
      size_t n = 0;
      for (size_t at = list->find("psub=1"); at != std::string::npos;
           at = list->find("psub=1", at + 1)) {
        ++n;
      }
      return n == backends.size();
    }));
  }

  // Waiters queued in Redis on `feature`'s counter (live or not yet dropped).
  int Queued(const std::string& feature) {
    absl::StatusOr<std::string> n =
        redis_->Command({"ZCARD", absl::StrCat("q:{", kCredential, "}:w:", feature, ".slots")});
    int v = -1;
    if (!n.ok() || !absl::SimpleAtoi(*n, &v)) return -1;
    return v;
  }

  std::unique_ptr<RedisServer> redis_;
  std::vector<std::shared_ptr<Waiting>> waitings_;
};

// (1) A waiter with a request_id cancelled while its grant is on its way. The grant is recorded
// under the request_id, so the client's retry of it is answered that lease: the lease must still
// hold its slot. Before the fix the cancelled grant was released (used -1) while its record
// stayed: the retry got a dead lease and a third request took its slot (2 held, capacity 1).
TEST_F(SharedWaitAttackTest, CancelledGrantOfARequestIdIsNotGivenBack) {
  std::unique_ptr<RedisBackend> b = Replica();
  ASSERT_NE(b, nullptr);
  bool raced = false;
  for (int attempt = 0; attempt < 50 && !raced; ++attempt) {
    const std::string key = absl::StrCat("r-cancel-", attempt);
    std::shared_ptr<Waiting> w = Wait(*b, "one", absl::Seconds(30), 0, key);
    if (!b->Cancel(w->ticket)) {
      // Answered before the cancel: a plain grant; give it back and try again.
      ASSERT_TRUE(w->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
      ASSERT_TRUE(w->granted()) << w->answer.status();
      ASSERT_TRUE(b->Release(w->answer->lease_id, 0).ok());
      continue;
    }
    raced = true;
    // The retry of the request_id (answered after the cancelled call's answer was handled).
    absl::StatusOr<Decision> retry = AcquireWithId(*b, "one", key);
    ASSERT_TRUE(retry.ok()) << retry.status();
    ASSERT_TRUE(retry->granted) << "the cancelled call's grant is recorded under its request_id";
    // The lease the retry holds is live, and holds the only slot.
    absl::StatusOr<absl::Time> renewed = b->Renew(retry->lease_id, absl::Seconds(60));
    EXPECT_TRUE(renewed.ok()) << "the retry was answered a lease already given back: "
                              << renewed.status();
    absl::StatusOr<Decision> third = AcquireThrough(*b, Request("one"));
    ASSERT_TRUE(third.ok()) << third.status();
    EXPECT_FALSE(third->granted) << "two leases on a capacity of 1";
  }
  ASSERT_TRUE(raced) << "no cancel reached a call in flight in 50 attempts";
}

// (2) A retry of a request_id already granted, waiting, cancelled while its answer (the first
// grant's lease, a duplicate) is on its way: the first lease is the client's and must not be
// given back by the cancelled copy.
TEST_F(SharedWaitAttackTest, CancelledDuplicateKeepsTheFirstLease) {
  std::unique_ptr<RedisBackend> b = Replica();
  ASSERT_NE(b, nullptr);
  const std::string key = "r-dup";
  std::shared_ptr<Waiting> first = Wait(*b, "one", absl::Seconds(30), 0, key);
  ASSERT_TRUE(first->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(first->granted()) << first->answer.status();
  const LeaseId lease = first->answer->lease_id;
  bool raced = false;
  for (int attempt = 0; attempt < 50 && !raced; ++attempt) {
    std::shared_ptr<Waiting> copy = Wait(*b, "one", absl::Seconds(30), 0, key);
    if (!b->Cancel(copy->ticket)) {
      ASSERT_TRUE(copy->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
      ASSERT_TRUE(copy->granted()) << copy->answer.status();
      EXPECT_EQ(copy->answer->lease_id, lease);
      continue;
    }
    raced = true;
    // Answered after the cancelled copy's answer was handled.
    absl::StatusOr<Decision> retry = AcquireWithId(*b, "one", key);
    ASSERT_TRUE(retry.ok() && retry->granted) << retry.status();
    EXPECT_EQ(retry->lease_id, lease);
  }
  ASSERT_TRUE(raced) << "no cancel reached a call in flight in 50 attempts";
  absl::StatusOr<absl::Time> renewed = b->Renew(lease, absl::Seconds(60));
  EXPECT_TRUE(renewed.ok()) << "the first grant's lease was given back: " << renewed.status();
  absl::StatusOr<Decision> other = AcquireThrough(*b, Request("one"));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_FALSE(other->granted) << "two leases on a capacity of 1";
}

// (3) A queued waiter whose request_id was meanwhile granted to a different request (another
// feature): its retry fails for good (INVALID_ARGUMENT). It must be answered at once and leave
// the queue; before the fix it called again every 250 ms until its max_wait, its entry left
// un-refreshed at the head, and the waiter behind it was held back until that entry expired
// (3 beats: 30 s here, 20 s at least after the release; the 15 s allowed below for "at once"
// leave a loaded machine room and still tell the two apart).
TEST_F(SharedWaitAttackTest, ARequestIdConflictInTheQueueEndsTheWaitAtOnce) {
  std::unique_ptr<RedisBackend> b0 = Replica(absl::Seconds(10));
  std::unique_ptr<RedisBackend> b1 = Replica(absl::Seconds(10));
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b0, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();

  std::shared_ptr<Waiting> a = Wait(*b0, "one", absl::Seconds(60), 0, "r-conflict", "fp-a");
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::shared_ptr<Waiting> behind = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  // The same request_id, another request, granted first (its feature has room).
  absl::StatusOr<Decision> conflict = AcquireWithId(*b1, "other", "r-conflict", "fp-b");
  ASSERT_TRUE(conflict.ok() && conflict->granted) << conflict.status();

  ASSERT_TRUE(b1->Release(hold->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return a->answered(); }, absl::Seconds(15)))
      << "the conflicting waiter was not answered";
  EXPECT_TRUE(absl::IsInvalidArgument(a->answer.status())) << a->answer.status();
  ASSERT_TRUE(Eventually([&] { return behind->answered(); }, absl::Seconds(15)))
      << "the waiter behind a failed one is held back until its entry expires";
  EXPECT_TRUE(behind->granted()) << behind->answer.status();
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

// (4) Hot reload while waiters are parked: `pool` tightened from 3 slots to 1. A waiter parked
// under the old policy must be decided under the new one (2 slots still held: denied at its
// max_wait); before the fix it called with its old plan (capacity 3) and was granted, 3 held on
// a limit of 1. A waiter of a feature the reload removed is answered the error.
TEST_F(SharedWaitAttackTest, AReloadAppliesToParkedWaiters) {
  std::unique_ptr<RedisBackend> b = Replica();
  ASSERT_NE(b, nullptr);
  std::vector<LeaseId> held;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(*b, Request("pool"));
    ASSERT_TRUE(d.ok() && d->granted) << d.status();
    held.push_back(d->lease_id);
  }
  absl::StatusOr<Decision> one = AcquireThrough(*b, Request("one"));
  ASSERT_TRUE(one.ok() && one->granted) << one.status();
  std::shared_ptr<Waiting> pooled = Wait(*b, "pool", absl::Seconds(3));
  std::shared_ptr<Waiting> removed = Wait(*b, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("pool") == 1 && Queued("one") == 1; }));

  absl::StatusOr<Policy> tight = LoadPolicyFromString(kTightConfig, "tight.yaml");
  ASSERT_TRUE(tight.ok()) << tight.status();
  ASSERT_TRUE(b->Reload(*tight).ok());
  // One slot of three freed: the waiter is woken, and 2 are still held on a limit of 1.
  ASSERT_TRUE(b->Release(held[0], 0).ok());
  ASSERT_TRUE(Eventually([&] { return pooled->answered(); }));
  ASSERT_TRUE(pooled->answer.ok()) << pooled->answer.status();
  EXPECT_FALSE(pooled->answer->granted) << "granted under the old capacity after the reload";
  EXPECT_EQ(pooled->answer->limited_by, "pool.slots");

  ASSERT_TRUE(Eventually([&] { return removed->answered(); }))
      << "a waiter of a removed feature waits on";
  EXPECT_TRUE(absl::IsNotFound(removed->answer.status())) << removed->answer.status();
  EXPECT_TRUE(Eventually([&] { return Queued("pool") == 0 && Queued("one") == 0; }));
}

// (5) The subscriber connection killed (CLIENT KILL TYPE pubsub) while a waiter is parked, and
// the slot freed right then: the waiter is still served (the re-subscription makes every parked
// waiter call once; its beat would too), and only once.
TEST_F(SharedWaitAttackTest, AKilledSubscriptionStillServesTheWaiter) {
  std::unique_ptr<RedisBackend> b0 = Replica();
  std::unique_ptr<RedisBackend> b1 = Replica();
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> w = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::shared_ptr<Waiting> w2 = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  ASSERT_TRUE(redis_->Command({"CLIENT", "KILL", "TYPE", "pubsub"}).ok());
  ASSERT_TRUE(b1->Release(hold->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return w->answered(); }));
  EXPECT_TRUE(w->granted()) << w->answer.status();
  EXPECT_FALSE(w2->answered()) << "the second waiter was served while the first holds the slot";
  ASSERT_TRUE(b0->Release(w->answer->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return w2->answered(); }));
  EXPECT_TRUE(w2->granted()) << w2->answer.status();
}

// (6) redis-server killed (SIGKILL) and restarted from its AOF (fsync always) with waiters parked
// on two replicas: the queue survives, so they are served in their order, one at a time, and
// nobody is stuck.
TEST_F(SharedWaitAttackTest, ARestartFromTheAofKeepsTheQueue) {
  std::unique_ptr<RedisBackend> b0 = Replica();
  std::unique_ptr<RedisBackend> b1 = Replica();
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> first = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::shared_ptr<Waiting> second = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  ASSERT_TRUE(Placed({b0.get(), b1.get()}, 1));

  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  ASSERT_TRUE(redis_->Restart().ok());
  // Released once the replica's connection is back (a call made while down: UNAVAILABLE).
  ASSERT_TRUE(Eventually([&] { return b1->Release(hold->lease_id, 0).ok(); }));
  ASSERT_TRUE(Eventually([&] { return first->answered(); }, absl::Seconds(20)));
  EXPECT_TRUE(first->granted()) << first->answer.status();
  EXPECT_FALSE(second->answered()) << "the later waiter was served with the earlier one";
  ASSERT_TRUE(b0->Release(first->answer->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return second->answered(); }, absl::Seconds(20)));
  EXPECT_TRUE(second->granted()) << second->answer.status();
}

// (7) Redis's data lost under parked waiters (FLUSHALL: as a restart without persistence, the
// library kept): they re-queue at their own arrival numbers, and a request arriving after that
// must queue behind them. Before the fix the arrival counter restarted at 1, so the newcomer
// was numbered as the first waiter and served before the second.
TEST_F(SharedWaitAttackTest, AfterDataLossANewcomerQueuesBehindTheWaitersThatCameBack) {
  // A long beat: the waiters call when the test wakes them, not on their own.
  std::unique_ptr<RedisBackend> b0 = Replica(absl::Seconds(20));
  std::unique_ptr<RedisBackend> b1 = Replica(absl::Seconds(20));
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  Subscribed({b0.get(), b1.get()});
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> first = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::shared_ptr<Waiting> second = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));

  ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
  // The slot taken again (nobody queued: not held back), then the waiters woken: they call and
  // queue again (the slot is held).
  absl::StatusOr<Decision> hold2 = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold2.ok() && hold2->granted) << hold2.status();
  ASSERT_TRUE(redis_->Command({"PUBLISH", absl::StrCat("q:{", kCredential, "}:freed"), "*"}).ok());
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  std::shared_ptr<Waiting> newcomer = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 3; }));

  // Served one at a time, in their order.
  ASSERT_TRUE(b1->Release(hold2->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return first->answered() || newcomer->answered(); }));
  ASSERT_TRUE(first->granted()) << "the newcomer went before the first waiter";
  ASSERT_TRUE(b0->Release(first->answer->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return second->answered() || newcomer->answered(); }));
  ASSERT_TRUE(second->granted()) << "the newcomer went before the second waiter";
  EXPECT_FALSE(newcomer->answered());
  ASSERT_TRUE(b1->Release(second->answer->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return newcomer->answered(); }));
  EXPECT_TRUE(newcomer->granted()) << newcomer->answer.status();
}

// (8) Waiters cancelled while the slots they wait for are freed, over three replicas: every grant
// is released exactly once (by the test, or by the backend for a cancelled call), none leaked:
// the pool ends empty, with nobody queued, and never more than its capacity held.
TEST_F(SharedWaitAttackTest, CancelledWaitersLeakNoSlot) {
  constexpr int kWaiters = 24, kCapacity = 3;
  std::vector<std::unique_ptr<RedisBackend>> b;
  for (int i = 0; i < 3; ++i) {
    b.push_back(Replica());
    ASSERT_NE(b.back(), nullptr);
  }
  std::vector<LeaseId> holds;
  for (int i = 0; i < kCapacity; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(*b[i], Request("pool"));
    ASSERT_TRUE(d.ok() && d->granted) << d.status();
    holds.push_back(d->lease_id);
  }
  std::vector<std::shared_ptr<Waiting>> w;
  for (int i = 0; i < kWaiters; ++i) {
    w.push_back(Wait(*b[i % 3], "pool", absl::Seconds(60)));
    ASSERT_TRUE(Eventually([&] { return Queued("pool") == i + 1; }));
  }
  // The slots freed while every other waiter goes away.
  for (int i = 0; i < kCapacity; ++i) ASSERT_TRUE(b[(i + 1) % 3]->Release(holds[i], 0).ok());
  for (int i = 0; i < kWaiters; i += 2) b[i % 3]->Cancel(w[i]->ticket);
  // The others are served one slot at a time (each released as soon as it is granted).
  std::vector<bool> released(kWaiters, false);
  int most = 0;
  auto serve = [&] {
    int held = 0;
    for (int i = 0; i < kWaiters; ++i) held += w[i]->granted() && !released[i] ? 1 : 0;
    most = std::max(most, held);
    for (int i = 0; i < kWaiters; ++i) {
      if (w[i]->granted() && !released[i]) {
        released[i] = true;
        EXPECT_TRUE(b[(i + 2) % 3]->Release(w[i]->answer->lease_id, 0).ok());
      }
    }
    for (int i = 1; i < kWaiters; i += 2) {
      if (!w[i]->answered()) return false;
    }
    return true;
  };
  ASSERT_TRUE(Eventually(serve, absl::Seconds(30)));
  for (int i = 1; i < kWaiters; i += 2) EXPECT_TRUE(w[i]->granted()) << i;
  EXPECT_LE(most, kCapacity);
  // Nothing held: every cancelled call's grant (if any) was given back, and no entry is left.
  auto pool_used = [&]() -> int64_t {
    absl::StatusOr<std::vector<LimitStatus>> usage = b[0]->Usage(kCredential);
    if (!usage.ok()) return -1;
    for (const LimitStatus& l : *usage) {
      if (l.name == "pool.slots") return l.used;
    }
    return 0;
  };
  EXPECT_TRUE(Eventually([&] { return pool_used() == 0 && Queued("pool") == 0; }))
      << "pool.slots used " << pool_used() << ", queued " << Queued("pool");
}

// (9) ResetCredential with waiters parked behind a window limit (their retry time: tomorrow):
// the reset wakes them (PUBLISH '*'), and as many as fit are granted at once, in their order.
TEST_F(SharedWaitAttackTest, AResetWakesTheWaitersBehindAWindow) {
  std::unique_ptr<RedisBackend> b0 = Replica();
  std::unique_ptr<RedisBackend> b1 = Replica();
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(*b0, Request("win"));
    ASSERT_TRUE(d.ok() && d->granted) << d.status();
  }
  std::vector<std::shared_ptr<Waiting>> w;
  for (int i = 0; i < 3; ++i) {
    w.push_back(Wait(i % 2 == 0 ? *b0 : *b1, "win", absl::Seconds(60)));
    ASSERT_TRUE(Eventually([&] { return Queued("win") == i + 1; }));
  }
  ASSERT_TRUE(b1->Reset(kCredential).ok());
  ASSERT_TRUE(Eventually([&] { return w[0]->answered() && w[1]->answered(); }));
  EXPECT_TRUE(w[0]->granted()) << w[0]->answer.status();
  EXPECT_TRUE(w[1]->granted()) << w[1]->answer.status();
  EXPECT_FALSE(w[2]->answered()) << "a third unit granted on a window of 2 after the reset";
  EXPECT_EQ(Queued("win"), 1);
}

// (10) 48 waiters over three replicas on one slot, served one after another: the Redis calls
// per wake-up stay about one (a polling storm would retry every parked waiter per message),
// and a big waiter at the head of one queue holds back no request on another counter.
TEST_F(SharedWaitAttackTest, FortyEightWaitersMakeNoStorm) {
  constexpr int kWaiters = 48;
  std::vector<std::unique_ptr<RedisBackend>> b;
  for (int i = 0; i < 3; ++i) {
    b.push_back(Replica());
    ASSERT_NE(b.back(), nullptr);
  }
  absl::StatusOr<Decision> hold = AcquireThrough(*b[0], Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::vector<std::shared_ptr<Waiting>> w;
  for (int i = 0; i < kWaiters; ++i) w.push_back(Wait(*b[i % 3], "one", absl::Seconds(60)));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == kWaiters; }));
  // Head-of-line stays within its counter: a request on another feature is granted.
  absl::StatusOr<Decision> unrelated = AcquireThrough(*b[1], Request("other"));
  ASSERT_TRUE(unrelated.ok());
  EXPECT_TRUE(unrelated->granted);

  auto stat = [&](const std::string& command) { return redis_->Calls(command); };
  const int64_t fcalls_before = stat("fcall"), publish_before = stat("publish");
  const absl::Time start = absl::Now();
  ASSERT_TRUE(b[1]->Release(hold->lease_id, 0).ok());
  std::vector<bool> released(kWaiters, false);
  int served = 0, most = 0;
  auto serve = [&] {
    int held = 0;
    for (int i = 0; i < kWaiters; ++i) held += w[i]->granted() && !released[i] ? 1 : 0;
    most = std::max(most, held);
    for (int i = 0; i < kWaiters; ++i) {
      if (w[i]->answered() && !released[i]) {
        released[i] = true;
        ++served;
        if (w[i]->granted()) {
          EXPECT_TRUE(b[(i + 1) % 3]->Release(w[i]->answer->lease_id, 0).ok());
        }
      }
    }
    return served == kWaiters;
  };
  ASSERT_TRUE(Eventually(serve, absl::Seconds(60)));
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (int i = 0; i < kWaiters; ++i) EXPECT_TRUE(w[i]->granted()) << i;
  EXPECT_LE(most, 1);
  const int64_t fcalls = stat("fcall") - fcalls_before;
  const int64_t publishes = stat("publish") - publish_before;
  const int64_t retries = fcalls - (kWaiters + 1);  // less the releases
  std::printf(
      "storm: %d waiters over 3 replicas served one at a time in %.2f s: %lld waiter "
      "retries for %lld wake-up messages (%.2f per message)\n",
      kWaiters, seconds, static_cast<long long>(retries), static_cast<long long>(publishes),
      publishes > 0 ? static_cast<double>(retries) / publishes : 0.0);
  // One retry per message naming a waiter, plus each parked waiter's beat (1 s).
  EXPECT_LE(retries, 2 * publishes + kWaiters * (static_cast<int64_t>(seconds) + 2));
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

// (11) redis-server without persistence killed and restarted empty with waiters parked on two
// replicas (the library gone too): each replica loads the library again (CheckHealth, as the
// server's health loop calls it), the subscriptions come back, the waiters queue again and are
// served one at a time: nobody stuck, nothing granted twice.
TEST_F(SharedWaitAttackTest, ARestartWithoutPersistenceStrandsNobody) {
  redis_.reset();
  RedisServerOptions options;
  options.appendonly = false;
  StartRedis(options);
  std::unique_ptr<RedisBackend> b0 = Replica();
  std::unique_ptr<RedisBackend> b1 = Replica();
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> first = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::shared_ptr<Waiting> second = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  ASSERT_TRUE(Placed({b0.get(), b1.get()}, 1));

  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  ASSERT_TRUE(redis_->Restart().ok());
  // The hold went with the data: one waiter is granted, the other queues behind it.
  ASSERT_TRUE(Eventually(
      [&] {
        b0->CheckHealth();
        b1->CheckHealth();
        return first->answered() || second->answered();
      },
      absl::Seconds(20)));
  std::shared_ptr<Waiting> won = first->answered() ? first : second;
  std::shared_ptr<Waiting> next = won == first ? second : first;
  ASSERT_TRUE(won->granted()) << won->answer.status();
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  EXPECT_FALSE(next->answered()) << "both granted on a capacity of 1";
  ASSERT_TRUE(b0->Release(won->answer->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return next->answered(); }));
  EXPECT_TRUE(next->granted()) << next->answer.status();
}

// (12) A request_id retried on another replica while its first copy still waits: both copies
// queue, the first granted is charged once, and the other copy is answered that same lease
// (the slot counted once: a third request is denied).
TEST_F(SharedWaitAttackTest, ARequestIdRetriedWhileItsFirstCopyWaitsIsChargedOnce) {
  std::unique_ptr<RedisBackend> b0 = Replica();
  std::unique_ptr<RedisBackend> b1 = Replica();
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("pool", 3));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> copy1 = Wait(*b0, "pool", absl::Seconds(60), 0, "r-twice");
  ASSERT_TRUE(Eventually([&] { return Queued("pool") == 1; }));
  std::shared_ptr<Waiting> copy2 = Wait(*b1, "pool", absl::Seconds(60), 0, "r-twice");
  ASSERT_TRUE(Eventually([&] { return Queued("pool") == 2; }));
  ASSERT_TRUE(b0->Release(hold->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return copy1->answered() && copy2->answered(); }));
  ASSERT_TRUE(copy1->granted()) << copy1->answer.status();
  ASSERT_TRUE(copy2->granted()) << copy2->answer.status();
  EXPECT_EQ(copy1->answer->lease_id, copy2->answer->lease_id);
  // One slot of three charged: two more fit, a third does not.
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> d = AcquireThrough(*b0, Request("pool"));
    ASSERT_TRUE(d.ok());
    EXPECT_TRUE(d->granted) << i;
  }
  absl::StatusOr<Decision> over = AcquireThrough(*b1, Request("pool"));
  ASSERT_TRUE(over.ok());
  EXPECT_FALSE(over->granted) << "the request_id was charged twice or the pool over-granted";
  EXPECT_TRUE(Eventually([&] { return Queued("pool") == 0; }));
}

// (13) A Sentinel failover (SENTINEL FAILOVER) with waiters parked on two replicas: the queue
// went to the new primary with the data, the replicas' calls and subscriptions follow it, and
// the waiters are served there in their order, one at a time.
TEST_F(SharedWaitAttackTest, ASentinelFailoverKeepsTheQueueAndServesIt) {
  absl::StatusOr<std::unique_ptr<SentinelGroup>> started = SentinelGroup::Start();
  ASSERT_TRUE(started.ok()) << started.status();
  SentinelGroup& group = **started;
  absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "attack.yaml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  std::vector<std::unique_ptr<RedisBackend>> b;
  for (int i = 0; i < 2; ++i) {
    RedisBackendOptions options;
    options.url = group.url();
    options.connect_wait = absl::Seconds(5);
    options.connections = 1;
    absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
        RedisBackend::Create(*policy, Clock::Real(), options);
    ASSERT_TRUE(backend.ok()) << backend.status();
    b.push_back(*std::move(backend));
  }
  auto queued = [&]() -> int {
    absl::StatusOr<int> port = group.NamedPrimaryPort();
    RedisServer* primary = port.ok() ? group.ServerOnPort(*port) : nullptr;
    if (primary == nullptr) return -1;
    absl::StatusOr<std::string> n =
        primary->Command({"ZCARD", absl::StrCat("q:{", kCredential, "}:w:one.slots")});
    int v = -1;
    if (!n.ok() || !absl::SimpleAtoi(*n, &v)) return -1;
    return v;
  };
  absl::StatusOr<Decision> hold = AcquireThrough(*b[1], Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::shared_ptr<Waiting> first = Wait(*b[0], "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return queued() == 1; }));
  std::shared_ptr<Waiting> second = Wait(*b[1], "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return queued() == 2; }));
  ASSERT_TRUE(Placed({b[0].get(), b[1].get()}, 1));

  absl::StatusOr<int> old_port = group.NamedPrimaryPort();
  ASSERT_TRUE(old_port.ok()) << old_port.status();
  ASSERT_TRUE(group.Failover().ok()) << group.Events();
  absl::StatusOr<int> new_port = group.WaitForNewPrimary(*old_port, absl::Seconds(20));
  ASSERT_TRUE(new_port.ok()) << new_port.status() << "\n" << group.Events();
  EXPECT_EQ(queued(), 2) << "the queue did not reach the new primary";
  // Both replicas follow the new primary and the old one is a replica: a write accepted by the
  // old primary before its demotion is lost with it (asynchronous replication; WAIT is the
  // remedy), which is not what this test is about.
  RedisServer* old_primary = group.ServerOnPort(*old_port);
  ASSERT_NE(old_primary, nullptr);
  const std::string new_primary = absl::StrCat("127.0.0.1:", *new_port);
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> role = old_primary->Command({"ROLE"});
        return role.ok() && role->rfind("slave", 0) == 0 && b[0]->primary() == new_primary &&
               b[1]->primary() == new_primary;
      },
      absl::Seconds(20)))
      << b[0]->primary() << " " << b[1]->primary() << " " << new_primary;

  ASSERT_TRUE(Eventually([&] { return b[0]->Release(hold->lease_id, 0).ok(); }, absl::Seconds(20)));
  ASSERT_TRUE(Eventually([&] { return first->answered(); }, absl::Seconds(20)));
  EXPECT_TRUE(first->granted()) << first->answer.status();
  EXPECT_FALSE(second->answered()) << "the later waiter was served with the earlier one";
  ASSERT_TRUE(first->granted());
  ASSERT_TRUE(Eventually([&] { return b[1]->Release(first->answer->lease_id, 0).ok(); },
                         absl::Seconds(20)));
  ASSERT_TRUE(Eventually([&] { return second->answered(); }, absl::Seconds(20)));
  EXPECT_TRUE(second->granted()) << second->answer.status();
}

// (14) A quotad server in shared mode shut down with an Acquire parked in Redis's queue: the call
// is answered UNAVAILABLE while the server still drains (as the embedded ledger's waiters are),
// and leaves the queue. Before the fix the server's shutdown answered only the embedded
// ledger's waiters: the call outlived the grace (1 s), was cancelled by grpc::Server::Shutdown,
// and its cancellation answered it on a completion queue already shut down, which now and then
// aborted the process (grpc_cq_begin_op), skipping the final flush.
TEST_F(SharedWaitAttackTest, AServerShutDownAnswersItsParkedCalls) {
  TempDir dir;
  ServerOptions options;
  options.config_path = dir.WriteFile("quotad.yaml", kConfig);
  options.redis_url = absl::StrCat("redis://127.0.0.1:", redis_->port());
  options.listen_address = "127.0.0.1:0";
  options.config_watch_interval = absl::ZeroDuration();
  options.cq_threads = 2;
  options.shutdown_grace = absl::Seconds(5);
  absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  // Serving before it is asked: a call refused at start-up would never park.
  ASSERT_TRUE(testing::ServesWithin((*server)->address()));
  std::unique_ptr<RedisBackend> other = Replica();
  ASSERT_NE(other, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*other, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();

  std::unique_ptr<v1::Quota::Stub> stub = v1::Quota::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::AcquireResponse resp;
  grpc::Status status;
  absl::Notification answered;
  std::thread call([&] {
    v1::AcquireRequest req;
    req.set_credential(kCredential);
    req.set_feature("one");
    req.mutable_max_wait()->set_seconds(30);
    status = stub->Acquire(&ctx, req, &resp);
    answered.Notify();
  });
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  const absl::Time start = absl::Now();
  (*server)->Shutdown();
  const absl::Duration took = absl::Now() - start;
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(20)));
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(took, options.shutdown_grace) << "the parked call held the shutdown for its grace";
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

}  // namespace
}  // namespace quotad

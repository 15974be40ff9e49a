// Attacks on shared mode's cross-replica wait queue (RedisBackend::AcquireSharedOrWait,
// quotad_wait; README "Waiting"): one real redis-server on loopback, RedisBackends as replicas
// (a replica is a backend: what the gRPC layer adds is tested in shared_wait_test.cc). Each test
// is an attack that failed before its fix, or a guard that a fault (a lost subscription, a
// restarted or emptied Redis) neither over-grants nor wedges nor reorders the queue.
//
// Ordering without sleeps: a backend with one connection pipelines its calls and answers them in
// order on one thread, so a call made after another is answered (and its callback run) after
// it; the tests use that to know a cancelled waiter's last answer was handled.

#include <gtest/gtest.h>

#include <csignal>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::ReplicaOptions;

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
  static std::unique_ptr<Waiting> Wait(RedisBackend& b, const char* feature,
                                       absl::Duration max_wait, int priority = 0,
                                       std::string key = "", std::string fingerprint = "fp") {
    auto w = std::make_unique<Waiting>();
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

  // Waiters queued in Redis on `feature`'s counter (live or not yet dropped).
  int Queued(const std::string& feature) {
    absl::StatusOr<std::string> n =
        redis_->Command({"ZCARD", absl::StrCat("q:{", kCredential, "}:w:", feature, ".slots")});
    int v = -1;
    if (!n.ok() || !absl::SimpleAtoi(*n, &v)) return -1;
    return v;
  }

  std::unique_ptr<RedisServer> redis_;
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
    std::unique_ptr<Waiting> w = Wait(*b, "one", absl::Seconds(30), 0, key);
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
  std::unique_ptr<Waiting> first = Wait(*b, "one", absl::Seconds(30), 0, key);
  ASSERT_TRUE(first->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(first->granted()) << first->answer.status();
  const LeaseId lease = first->answer->lease_id;
  bool raced = false;
  for (int attempt = 0; attempt < 50 && !raced; ++attempt) {
    std::unique_ptr<Waiting> copy = Wait(*b, "one", absl::Seconds(30), 0, key);
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
// (3 beats: 15 s here).
TEST_F(SharedWaitAttackTest, ARequestIdConflictInTheQueueEndsTheWaitAtOnce) {
  std::unique_ptr<RedisBackend> b0 = Replica(absl::Seconds(5));
  std::unique_ptr<RedisBackend> b1 = Replica(absl::Seconds(5));
  ASSERT_NE(b0, nullptr);
  ASSERT_NE(b1, nullptr);
  absl::StatusOr<Decision> hold = AcquireThrough(*b0, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();

  std::unique_ptr<Waiting> a = Wait(*b0, "one", absl::Seconds(60), 0, "r-conflict", "fp-a");
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::unique_ptr<Waiting> behind = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  // The same request_id, another request, granted first (its feature has room).
  absl::StatusOr<Decision> conflict = AcquireWithId(*b1, "other", "r-conflict", "fp-b");
  ASSERT_TRUE(conflict.ok() && conflict->granted) << conflict.status();

  ASSERT_TRUE(b1->Release(hold->lease_id, 0).ok());
  ASSERT_TRUE(Eventually([&] { return a->answered(); }, absl::Seconds(5)))
      << "the conflicting waiter was not answered";
  EXPECT_TRUE(absl::IsInvalidArgument(a->answer.status())) << a->answer.status();
  ASSERT_TRUE(Eventually([&] { return behind->answered(); }, absl::Seconds(5)))
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
  std::unique_ptr<Waiting> pooled = Wait(*b, "pool", absl::Seconds(3));
  std::unique_ptr<Waiting> removed = Wait(*b, "one", absl::Seconds(60));
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
  std::unique_ptr<Waiting> w = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::unique_ptr<Waiting> w2 = Wait(*b1, "one", absl::Seconds(60));
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
  std::unique_ptr<Waiting> first = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::unique_ptr<Waiting> second = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));

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
  absl::StatusOr<Decision> hold = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold.ok() && hold->granted) << hold.status();
  std::unique_ptr<Waiting> first = Wait(*b0, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  std::unique_ptr<Waiting> second = Wait(*b1, "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));

  ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
  // The slot taken again (nobody queued: not held back), then the waiters woken: they call and
  // queue again (the slot is held).
  absl::StatusOr<Decision> hold2 = AcquireThrough(*b1, Request("one"));
  ASSERT_TRUE(hold2.ok() && hold2->granted) << hold2.status();
  ASSERT_TRUE(
      redis_->Command({"PUBLISH", absl::StrCat("q:{", kCredential, "}:freed"), "*"}).ok());
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  std::unique_ptr<Waiting> newcomer = Wait(*b0, "one", absl::Seconds(60));
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

}  // namespace
}  // namespace quotad

// Shared mode's wait queue (issue 13): one real redis-server and three real quotad servers
// (QuotadServer on loopback port 0, --redis) pointing at it. A request that may wait (max_wait)
// is queued in Redis and parked on its replica: fair across replicas (an earlier waiter on
// another replica goes first, a higher priority passes a lower one), woken by a release made
// through another replica, denied at its max_wait, not held up beyond their expiry by the
// entries of a replica that died, and under a race never more than the capacity held with
// everyone served and the Redis calls per wake-up counted.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::TempDir;

constexpr int kReplicas = 3;
constexpr char kCredential[] = "team/wait";

constexpr char kConfig[] = R"(
credentials:
  - name: team/wait
    features:
      - name: one
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
      - name: pool
        default_lease_ttl: 60s
        limits:
          - {name: slots, kind: concurrency, capacity: 3}
)";

// One Acquire on its own thread (it may wait), answered later.
class Pending {
 public:
  Pending(v1::Quota::Stub* stub, const std::string& feature, absl::Duration max_wait,
          int priority = 0, int64_t cost = 1) {
    ctx_.set_deadline(absl::ToChronoTime(absl::Now() + max_wait + absl::Seconds(20)));
    thread_ = std::thread([=] {
      v1::AcquireRequest req;
      req.set_credential(kCredential);
      req.set_feature(feature);
      req.set_priority(priority);
      if (cost != 1) req.set_cost(cost);
      req.mutable_max_wait()->set_seconds(absl::ToInt64Seconds(max_wait));
      req.mutable_max_wait()->set_nanos(static_cast<int32_t>(
          absl::ToInt64Nanoseconds(max_wait - absl::Seconds(absl::ToInt64Seconds(max_wait)))));
      grpc::Status s = stub->Acquire(&ctx_, req, &resp_);
      status_ = s;
      done_.Notify();
    });
  }
  ~Pending() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  // The client goes away (as a client whose own deadline passed or that was stopped).
  void Cancel() { ctx_.TryCancel(); }
  bool done() const { return done_.HasBeenNotified(); }
  bool granted() const { return done() && status_.ok() && resp_.granted(); }
  const grpc::Status& status() const { return status_; }
  const v1::AcquireResponse& response() const { return resp_; }

 private:
  grpc::ClientContext ctx_;
  grpc::Status status_;
  v1::AcquireResponse resp_;
  absl::Notification done_;
  std::thread thread_;
};

class SharedWaitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    config_ = dir_.WriteFile("quotad.yaml", kConfig);
    for (int i = 0; i < kReplicas; ++i) {
      ServerOptions options;
      options.config_path = config_;
      options.redis_url = Url();
      options.listen_address = "127.0.0.1:0";
      options.sweep_interval = absl::Milliseconds(50);
      options.config_watch_interval = absl::ZeroDuration();
      options.cq_threads = 2;
      options.shutdown_grace = absl::Seconds(1);
      absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
      quota_.push_back(v1::Quota::NewStub(
          grpc::CreateChannel(servers_.back()->address(), grpc::InsecureChannelCredentials())));
    }
    // Every replica serves before a test asks it (Start does not wait for that on a loaded
    // machine; shared_mode_test once saw 48 calls refused in the first 60 ms).
    for (const std::unique_ptr<QuotadServer>& s : servers_) {
      ASSERT_TRUE(testing::ServesWithin(s->address())) << s->address();
    }
  }

  std::string Url() const { return absl::StrCat("redis://127.0.0.1:", redis_->port()); }

  // An Acquire that does not wait.
  v1::AcquireResponse AcquireNow(int replica, const std::string& feature, int64_t cost = 1) {
    v1::AcquireRequest req;
    req.set_credential(kCredential);
    req.set_feature(feature);
    if (cost != 1) req.set_cost(cost);
    v1::AcquireResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Status s = quota_[replica]->Acquire(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  grpc::Status Release(int replica, const std::string& lease_id) {
    v1::ReleaseRequest req;
    req.set_lease_id(lease_id);
    v1::ReleaseResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return quota_[replica]->Release(&ctx, req, &resp);
  }

  // Waiters queued in Redis on `feature`'s counter (live or not yet dropped).
  int Queued(const std::string& feature) {
    absl::StatusOr<std::string> n =
        redis_->Command({"ZCARD", absl::StrCat("q:{", kCredential, "}:w:", feature, ".slots")});
    int v = -1;
    if (!n.ok() || !absl::SimpleAtoi(*n, &v)) return -1;
    return v;
  }

  // INFO commandstats: calls of `command` (lower case) so far.
  int64_t Calls(const std::string& command) { return redis_->Calls(command); }

  TempDir dir_;
  std::unique_ptr<RedisServer> redis_;
  std::string config_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
};

// (1) A waiter parked on replica 0 goes before one that arrived later at replica 1, whoever
// releases; a higher priority passes a lower one that waited longer.
TEST_F(SharedWaitTest, WaitersAreServedInOrderAcrossReplicas) {
  v1::AcquireResponse hold = AcquireNow(2, "one");
  ASSERT_TRUE(hold.granted());

  Pending w1(quota_[0].get(), "one", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  Pending w2(quota_[1].get(), "one", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));

  ASSERT_TRUE(Release(2, hold.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return w1.done(); }));
  EXPECT_TRUE(w1.granted()) << w1.status().error_message();
  EXPECT_FALSE(w2.done()) << "the later waiter was served while the earlier one holds the slot";
  EXPECT_EQ(Queued("one"), 1);

  // Priority: a low one parks on replica 0, a higher one arrives later at replica 2.
  Pending low(quota_[0].get(), "one", absl::Seconds(30), /*priority=*/0);
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  Pending high(quota_[2].get(), "one", absl::Seconds(30), /*priority=*/5);
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 3; }));

  // w1's slot freed through replica 1: the high-priority waiter passes w2 and low.
  ASSERT_TRUE(Release(1, w1.response().lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return high.done(); }));
  EXPECT_TRUE(high.granted()) << high.status().error_message();
  EXPECT_FALSE(w2.done());
  EXPECT_FALSE(low.done());

  ASSERT_TRUE(Release(0, high.response().lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return w2.done(); }));
  EXPECT_TRUE(w2.granted()) << w2.status().error_message();
  EXPECT_FALSE(low.done());

  ASSERT_TRUE(Release(2, w2.response().lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return low.done(); }));
  EXPECT_TRUE(low.granted()) << low.status().error_message();
  ASSERT_TRUE(Release(1, low.response().lease_id()).ok());
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

// (1b) No barging: a waiter that needs two slots while one is free holds back a request for
// one slot that would fit, whether it waits or not, through any replica (as the embedded
// ledger's queue does).
TEST_F(SharedWaitTest, NobodyPassesAWaiterThatDoesNotFitYet) {
  v1::AcquireResponse a = AcquireNow(0, "pool");
  v1::AcquireResponse b = AcquireNow(1, "pool");
  ASSERT_TRUE(a.granted() && b.granted());
  Pending big(quota_[0].get(), "pool", absl::Seconds(30), 0, /*cost=*/2);
  ASSERT_TRUE(Eventually([&] { return Queued("pool") == 1; }));
  // One slot is free, but the waiter is ahead.
  v1::AcquireResponse barge = AcquireNow(2, "pool");
  EXPECT_FALSE(barge.granted());
  EXPECT_EQ(barge.limited_by(), "pool.slots");
  EXPECT_TRUE(barge.has_retry_at());
  Pending small(quota_[1].get(), "pool", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("pool") == 2; }));
  EXPECT_FALSE(small.done());

  ASSERT_TRUE(Release(2, a.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return big.done(); }));
  EXPECT_TRUE(big.granted()) << big.status().error_message();
  EXPECT_FALSE(small.done());  // three slots held: big's two and b
  ASSERT_TRUE(Release(2, b.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return small.done(); }));
  EXPECT_TRUE(small.granted()) << small.status().error_message();
  ASSERT_TRUE(Release(0, big.response().lease_id()).ok());
  ASSERT_TRUE(Release(0, small.response().lease_id()).ok());
  EXPECT_TRUE(Eventually([&] { return Queued("pool") == 0; }));
}

// (1c) A caller that goes away takes its waiter out of the queue at once (not at its entry's
// expiry, 3 s on): the waiter behind it on another replica is next.
TEST_F(SharedWaitTest, ACancelledCallLeavesTheQueue) {
  v1::AcquireResponse hold = AcquireNow(2, "one");
  ASSERT_TRUE(hold.granted());
  Pending w1(quota_[0].get(), "one", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  Pending w2(quota_[1].get(), "one", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 2; }));
  w1.Cancel();
  ASSERT_TRUE(Eventually([&] { return w1.done(); }));
  EXPECT_EQ(w1.status().error_code(), grpc::StatusCode::CANCELLED);
  // Gone from Redis well before its entry would expire.
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 1; }, absl::Seconds(2)));
  ASSERT_TRUE(Release(2, hold.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return w2.done(); }));
  EXPECT_TRUE(w2.granted()) << w2.status().error_message();
}

// (2) A release through another replica wakes the waiter (granted well within its max_wait).
TEST_F(SharedWaitTest, ReleaseThroughAnotherReplicaWakesTheWaiter) {
  v1::AcquireResponse hold = AcquireNow(0, "one");
  ASSERT_TRUE(hold.granted());
  const int64_t messages_before = Calls("publish");
  Pending w(quota_[1].get(), "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  ASSERT_TRUE(Release(2, hold.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return w.done(); }, absl::Seconds(20)));
  EXPECT_TRUE(w.granted()) << w.status().error_message();
  EXPECT_GE(Calls("publish") - messages_before, 1) << "the release told no replica";
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

// (3) A waiter that cannot be served gets the normal denial at max_wait and leaves the queue.
TEST_F(SharedWaitTest, DeniedAtMaxWait) {
  v1::AcquireResponse hold = AcquireNow(0, "one");
  ASSERT_TRUE(hold.granted());
  Pending w(quota_[1].get(), "one", absl::Milliseconds(300));
  ASSERT_TRUE(Eventually([&] { return w.done(); }));
  ASSERT_TRUE(w.status().ok()) << w.status().error_message();
  EXPECT_FALSE(w.response().granted());
  EXPECT_EQ(w.response().limited_by(), "one.slots");
  EXPECT_TRUE(w.response().has_retry_at());
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
  // It did not stay ahead of anyone: the next waiter is served at the next release.
  Pending next(quota_[2].get(), "one", absl::Seconds(30));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
  ASSERT_TRUE(Release(0, hold.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return next.done(); }));
  EXPECT_TRUE(next.granted());
}

// (4) A replica that dies with parked waiters: the others' waiters are still served; the dead
// one's queue entries drop out at their expiry (3 beats after its last call) and hold nobody
// back after it. One replica is shut down (its waiters' calls are cancelled: they leave the
// queue), another dies as a crash would: a RedisBackend destroyed without leaving the queue.
TEST_F(SharedWaitTest, ADeadReplicasWaitersDropOut) {
  v1::AcquireResponse hold = AcquireNow(2, "one");
  ASSERT_TRUE(hold.granted());

  // Replica 0 shut down with a waiter parked: answered, and nobody waits behind it.
  {
    Pending on0(quota_[0].get(), "one", absl::Seconds(60));
    ASSERT_TRUE(Eventually([&] { return Queued("one") == 1; }));
    servers_[0]->Shutdown();
    ASSERT_TRUE(Eventually([&] { return on0.done(); }));
    EXPECT_FALSE(on0.granted());
    // Its call was cancelled: the waiter left the queue.
    EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
  }

  // A crash: a backend parks a waiter and dies without leaving the queue.
  absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  RedisBackendOptions options;
  options.url = Url();
  options.wait_beat = absl::Seconds(1);  // its entries live 3 s after its last call
  absl::StatusOr<std::unique_ptr<RedisBackend>> dying =
      RedisBackend::Create(*policy, Clock::Real(), options);
  ASSERT_TRUE(dying.ok()) << dying.status();
  absl::Notification dying_answered;
  absl::StatusOr<Decision> dying_answer;
  AcquireRequest req;
  req.credential = kCredential;
  req.feature = "one";
  const int before = 0;
  (*dying)->AcquireSharedOrWait(req, SharedRequestId{}, absl::Seconds(60), 0,
                                [&](absl::StatusOr<Decision> d) {
                                  dying_answer = std::move(d);
                                  dying_answered.Notify();
                                });
  ASSERT_TRUE(Eventually([&] { return Queued("one") == before + 1; }));
  Pending on1(quota_[1].get(), "one", absl::Seconds(60));
  ASSERT_TRUE(Eventually([&] { return Queued("one") == before + 2; }));
  dying->reset();  // nothing leaves the queue
  ASSERT_TRUE(dying_answered.HasBeenNotified());
  EXPECT_FALSE(dying_answer.ok() && dying_answer->granted);
  // The dead entry is still queued ahead of on1 when the slot frees.
  EXPECT_EQ(Queued("one"), before + 2);

  const absl::Time released = absl::Now();
  ASSERT_TRUE(Release(2, hold.lease_id()).ok());
  ASSERT_TRUE(Eventually([&] { return on1.done(); }, absl::Seconds(20)));
  EXPECT_TRUE(on1.granted()) << on1.status().error_message();
  std::printf("dead replica: the waiter behind its entry was granted %s after the release "
              "(the entry expires 3 s after the dead backend's last call; then the next "
              "beat, 1 s, of the waiter behind it)\n",
              absl::FormatDuration(absl::Now() - released).c_str());
  EXPECT_TRUE(Eventually([&] { return Queued("one") == 0; }));
}

// (5) N clients over the replicas, each waiting in turn for a slot of a small pool: never more
// than the capacity held at once, everyone served, and the quotad_wait calls per wake-up
// counted (a polling storm would call once per parked waiter per wake-up).
TEST_F(SharedWaitTest, RaceNeverOverGrantsAndServesEveryone) {
  constexpr int kClients = 12, kRounds = 3, kCapacity = 3;
  std::atomic<int> held{0}, most{0}, granted{0}, failed{0};
  const int64_t fcalls_before = Calls("fcall"), publish_before = Calls("publish");
  const absl::Time start = absl::Now();
  {
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        for (int r = 0; r < kRounds; ++r) {
          auto p = std::make_unique<Pending>(quota_[c % kReplicas].get(), "pool",
                                             absl::Seconds(60));
          p->Join();
          if (!p->granted()) {
            failed++;
            continue;
          }
          granted++;
          const int now = ++held;
          int seen = most.load();
          while (now > seen && !most.compare_exchange_weak(seen, now)) {
          }
          // Held a while: renewed through each replica in turn.
          for (int k = 0; k < kReplicas; ++k) {
            v1::RenewRequest renew;
            renew.set_lease_id(p->response().lease_id());
            v1::RenewResponse renewed;
            grpc::ClientContext ctx;
            ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
            if (!quota_[k]->Renew(&ctx, renew, &renewed).ok()) failed++;
          }
          --held;
          if (!Release((c + 1) % kReplicas, p->response().lease_id()).ok()) failed++;
        }
      });
    }
    for (std::thread& t : clients) t.join();
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(granted.load(), kClients * kRounds);
  EXPECT_LE(most.load(), kCapacity);
  const int64_t fcalls = Calls("fcall") - fcalls_before;
  const int64_t publishes = Calls("publish") - publish_before;
  const int64_t releases = kClients * kRounds;
  const int64_t enters = kClients * kRounds;
  const int64_t renews = kClients * kRounds * kReplicas;
  const int64_t retries = fcalls - releases - enters - renews;
  std::printf(
      "race: %d clients x %d rounds over %d replicas, capacity %d, %.2f s: %lld FCALLs "
      "(%lld acquire/enter, %lld renew, %lld release, %lld waiter retries), %lld wake-up "
      "messages: %.2f retries per wake-up, most held at once %d\n",
      kClients, kRounds, kReplicas, kCapacity, seconds, static_cast<long long>(fcalls),
      static_cast<long long>(enters), static_cast<long long>(renews),
      static_cast<long long>(releases),
      static_cast<long long>(retries), static_cast<long long>(publishes),
      publishes > 0 ? static_cast<double>(retries) / publishes : 0.0, most.load());
  // One retry per waiter named by a message (plus a retry when a message came while its call
  // was out), plus each parked waiter's heartbeat (1 s): far below one retry per parked
  // waiter per message.
  EXPECT_LE(retries, 2 * publishes + kClients * (static_cast<int64_t>(seconds) + 2));
  EXPECT_TRUE(Eventually([&] { return Queued("pool") == 0; }));
}

}  // namespace
}  // namespace quotad

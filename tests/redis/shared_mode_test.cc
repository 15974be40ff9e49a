// Shared mode end to end (issue 13, phase 3): one real redis-server and three real quotad
// servers (QuotadServer::Start on loopback port 0, --redis) pointing at it, clients spread over
// the replicas. Every limit kind grants exactly its capacity over all replicas; a request_id
// retried through another replica gets the first answer; Redis killed: UNAVAILABLE and health
// NOT_SERVING, restarted: serving again by itself; a replica gone: the others keep serving.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/server.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::TempDir;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr int kReplicas = 3;
constexpr int kClients = 48;
constexpr int kWindowCapacity = 20;
constexpr int kSlots = 5;

// One feature per limit kind, none of which frees a unit during the test (a day, an hour, a
// bucket refilling one unit an hour), plus a concurrency limit, on one credential.
constexpr char kConfig[] = R"(
credentials:
  - name: team/shared
    features:
      - name: cal
        limits:
          - {name: daily, kind: calendar, unit: day, zone: America/New_York, capacity: 20}
      - name: roll
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 20}
      - name: slide
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 20}
      - name: bucket
        limits:
          - {name: burst, kind: token_bucket, capacity: 20, rate: 1, period: 1h}
      - name: conc
        default_lease_ttl: 30s
        limits:
          - {name: slots, kind: concurrency, capacity: 5}
      - name: scoped
        draws_on: [cal2]
        limits:
          - {name: per_scope, kind: sliding, period: 1h, capacity: 3, scoped: true}
      - name: cal2
        limits:
          - {name: daily, kind: calendar, unit: day, capacity: 5}
)";

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

class SharedModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    config_ = dir_.WriteFile("quotad.yaml", kConfig);
    for (int i = 0; i < kReplicas; ++i) StartReplica(i);
    // Every replica serves (connected, its library loaded) before a test asks it: a clean-clone
    // CI run once saw 48 calls refused in the first 60 ms.
    for (int i = 0; i < kReplicas; ++i) {
      ASSERT_TRUE(Eventually([&] { return HealthOf(i) == HealthCheckResponse::SERVING; }))
          << "replica " << i;
    }
  }

  ServerOptions Options() const {
    return testing::SharedServerOptions(config_,
                                        absl::StrCat("redis://127.0.0.1:", redis_->port()));
  }

  void StartReplica(int i) {
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(Options());
    ASSERT_TRUE(server.ok()) << server.status();
    if (static_cast<int>(servers_.size()) <= i) {
      servers_.resize(i + 1);
      quota_.resize(i + 1);
      health_.resize(i + 1);
    }
    servers_[i] = *std::move(server);
    auto channel =
        grpc::CreateChannel(servers_[i]->address(), grpc::InsecureChannelCredentials());
    quota_[i] = v1::Quota::NewStub(channel);
    health_[i] = Health::NewStub(channel);
    if (static_cast<int>(admin_.size()) <= i) admin_.resize(i + 1);
    admin_[i] = v1::Admin::NewStub(channel);
  }

  grpc::Status Acquire(int replica, const std::string& feature, v1::AcquireResponse* resp,
                       const std::string& request_id = "", int64_t cost = 1,
                       const std::string& scope = "") {
    v1::AcquireRequest req;
    req.set_credential("team/shared");
    req.set_feature(feature);
    req.set_request_id(request_id);
    req.set_scope(scope);
    if (cost != 1) req.set_cost(cost);
    return quota_[replica]->Acquire(Context().get(), req, resp);
  }

  grpc::Status Release(int replica, const std::string& lease_id) {
    v1::ReleaseRequest req;
    req.set_lease_id(lease_id);
    v1::ReleaseResponse resp;
    return quota_[replica]->Release(Context().get(), req, &resp);
  }

  HealthCheckResponse::ServingStatus HealthOf(int replica) {
    HealthCheckResponse resp;
    grpc::Status s =
        health_[replica]->Check(Context(absl::Seconds(2)).get(), HealthCheckRequest(), &resp);
    return s.ok() ? resp.status() : HealthCheckResponse::UNKNOWN;
  }

  // Grants of `feature` when kClients clients spread over the replicas (from `first` on) each
  // try `tries` times.
  int GrantsFromEveryone(const std::string& feature, int tries, const std::string& scope = "",
                         int first = 0) {
    std::atomic<int> granted{0}, failed{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
      clients.emplace_back([&, c] {
        for (int t = 0; t < tries; ++t) {
          v1::AcquireResponse resp;
          grpc::Status s =
              Acquire(first + c % (kReplicas - first), feature, &resp, "", 1, scope);
          if (!s.ok()) {
            failed++;
          } else if (resp.granted()) {
            granted++;
          }
        }
      });
    }
    for (std::thread& t : clients) t.join();
    EXPECT_EQ(failed.load(), 0) << feature;
    return granted.load();
  }

  TempDir dir_;
  std::unique_ptr<RedisServer> redis_;
  std::string config_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
  std::vector<std::unique_ptr<Health::Stub>> health_;
  std::vector<std::unique_ptr<v1::Admin::Stub>> admin_;
};

TEST_F(SharedModeTest, EveryWindowKindGrantsExactlyItsCapacityOverAllReplicas) {
  for (const char* feature : {"cal", "roll", "slide", "bucket"}) {
    EXPECT_EQ(GrantsFromEveryone(feature, 3), kWindowCapacity) << feature;
    // Full on every replica: a denial naming the limit, with a retry time.
    for (int r = 0; r < kReplicas; ++r) {
      v1::AcquireResponse resp;
      ASSERT_TRUE(Acquire(r, feature, &resp).ok());
      EXPECT_FALSE(resp.granted()) << feature;
      EXPECT_FALSE(resp.limited_by().empty()) << feature;
      EXPECT_TRUE(resp.has_retry_at()) << feature;
    }
  }
}

// Report and the Admin calls over gRPC: a count reported to one replica denies through another,
// a throttle reported to one cools every replica, and any replica's GetUsage, ListLeases and
// ResetCredential see and change the same state.
TEST_F(SharedModeTest, ReportAndAdminCallsActOnTheSharedStateThroughAnyReplica) {
  v1::AcquireResponse held;
  ASSERT_TRUE(Acquire(0, "cal", &held).ok());
  ASSERT_TRUE(held.granted());
  v1::ReportRequest report;
  report.set_credential("team/shared");
  report.set_feature("cal");
  report.set_http_status(200);
  auto* limit = report.add_headers();
  limit->set_name("X-RateLimit-Limit");
  limit->set_value("20");
  auto* remaining = report.add_headers();
  remaining->set_name("X-RateLimit-Remaining");
  remaining->set_value("2");
  v1::ReportResponse reported;
  grpc::Status s = quota_[0]->Report(Context().get(), report, &reported);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(reported.adopted_size(), 1);
  EXPECT_EQ(reported.adopted(0), "cal.daily used 1 -> 18");
  EXPECT_EQ(GrantsFromEveryone("cal", 1, "", 1), 2);  // through replicas 1 and 2 only

  v1::GetUsageRequest usage_req;
  usage_req.set_credential("team/shared");
  v1::GetUsageResponse usage;
  s = admin_[2]->GetUsage(Context().get(), usage_req, &usage);
  ASSERT_TRUE(s.ok()) << s.error_message();
  bool seen = false;
  for (const v1::LimitStatus& l : usage.limits()) {
    if (l.name() != "cal.daily") continue;
    seen = true;
    EXPECT_EQ(l.used(), 20);
    EXPECT_EQ(l.remaining(), 0);
  }
  EXPECT_TRUE(seen);

  // A 429 with Retry-After through replica 1: replica 2 denies the feature as cooling down.
  report.set_feature("roll");
  report.clear_headers();
  report.set_http_status(429);
  auto* retry = report.add_headers();
  retry->set_name("Retry-After");
  retry->set_value("600");
  s = quota_[1]->Report(Context().get(), report, &reported);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(reported.has_cooldown_until());
  v1::AcquireResponse cooling;
  ASSERT_TRUE(Acquire(2, "roll", &cooling).ok());
  EXPECT_FALSE(cooling.granted());
  EXPECT_EQ(cooling.limited_by(), "roll.cooldown");
  // The throttle, which quotad's count (0 of 20) does not explain, is learnt as use outside
  // quotad: 2 units (20 -> 18) held back, shown through every replica.
  for (int r = 0; r < kReplicas; ++r) {
    v1::GetUsageResponse u;
    s = admin_[r]->GetUsage(Context().get(), usage_req, &u);
    ASSERT_TRUE(s.ok()) << s.error_message();
    bool learnt = false;
    for (const v1::LimitStatus& l : u.limits()) {
      if (l.name() != "roll.hourly") continue;
      learnt = true;
      EXPECT_EQ(l.outside_estimate(), 2) << "replica " << r;
      EXPECT_EQ(l.remaining(), 18) << "replica " << r;
    }
    EXPECT_TRUE(learnt) << "replica " << r;
  }

  v1::ListLeasesRequest leases_req;
  leases_req.set_credential("team/shared");
  v1::ListLeasesResponse leases;
  s = admin_[1]->ListLeases(Context().get(), leases_req, &leases);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(leases.leases_size(), 3);  // the first grant and the two after the adoption

  v1::ResetCredentialRequest reset_req;
  reset_req.set_credential("team/shared");
  v1::ResetCredentialResponse reset;
  s = admin_[0]->ResetCredential(Context().get(), reset_req, &reset);
  ASSERT_TRUE(s.ok()) << s.error_message();
  for (const v1::LimitStatus& l : reset.limits()) {
    if (l.name() == "cal.daily") EXPECT_EQ(l.used(), 0);
    if (l.name() == "roll.hourly") EXPECT_EQ(l.outside_estimate(), 0);
    EXPECT_NE(l.name(), "roll.cooldown");
  }
  v1::AcquireResponse again;
  ASSERT_TRUE(Acquire(2, "roll", &again).ok());
  EXPECT_TRUE(again.granted());
}

TEST_F(SharedModeTest, ScopesAndDrawsOnAreCountedOnceOverAllReplicas) {
  // Each scope grants 3; the credential-wide cal2 (drawn on) caps the sum at 5.
  EXPECT_EQ(GrantsFromEveryone("scoped", 1, "a"), 3);
  EXPECT_EQ(GrantsFromEveryone("scoped", 1, "b"), 2);
  v1::AcquireResponse resp;
  ASSERT_TRUE(Acquire(1, "scoped", &resp, "", 1, "c").ok());
  EXPECT_FALSE(resp.granted());
  EXPECT_EQ(resp.limited_by(), "cal2.daily");
}

TEST_F(SharedModeTest, ConcurrencyNeverHoldsMoreThanItsSlots) {
  std::atomic<int> held{0}, most{0}, grants{0}, errors{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int t = 0; t < 10; ++t) {
        v1::AcquireResponse resp;
        if (!Acquire(c % kReplicas, "conc", &resp).ok()) {
          errors++;
          continue;
        }
        if (!resp.granted()) continue;
        grants++;
        // Counted up after the grant and down before the release: never more than really held.
        const int now = ++held;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::yield();  // the work of the call, while others race for the slots
        --held;
        // Released through another replica than the one that granted it.
        if (!Release((c + 1) % kReplicas, resp.lease_id()).ok()) errors++;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(grants.load(), kSlots);
  EXPECT_LE(most.load(), kSlots);
  // Everything was released: exactly kSlots fit again, over the replicas.
  EXPECT_EQ(GrantsFromEveryone("conc", 1), kSlots);
}

TEST_F(SharedModeTest, RequestIdRetryThroughAnotherReplicaGetsTheFirstAnswer) {
  v1::AcquireResponse first;
  ASSERT_TRUE(Acquire(0, "cal", &first, "job-1").ok());
  ASSERT_TRUE(first.granted());
  for (int r = 1; r < kReplicas; ++r) {
    v1::AcquireResponse again;
    ASSERT_TRUE(Acquire(r, "cal", &again, "job-1").ok());
    EXPECT_TRUE(again.granted());
    EXPECT_EQ(again.lease_id(), first.lease_id());
  }
  // One unit charged, not three.
  EXPECT_EQ(GrantsFromEveryone("cal", 1), kWindowCapacity - 1);
  // The same request_id for another request is refused, naming it.
  v1::AcquireResponse other;
  grpc::Status s = Acquire(2, "cal", &other, "job-1", /*cost=*/2);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("job-1"), std::string::npos) << s.error_message();
}

// An all-or-nothing batch is decided whole: granted whole through one replica, then (the
// window full) refused whole through another, charging nothing.
TEST_F(SharedModeTest, AnAllOrNothingBatchIsGrantedOrChargedNothing) {
  v1::AcquireBatchRequest batch;
  batch.set_all_or_nothing(true);
  for (const char* feature : {"cal", "cal2"}) {
    v1::AcquireRequest* item = batch.add_items();
    item->set_credential("team/shared");
    item->set_feature(feature);
  }
  v1::AcquireBatchResponse resp;
  ASSERT_TRUE(quota_[0]->AcquireBatch(Context().get(), batch, &resp).ok());
  ASSERT_EQ(resp.results_size(), 2);
  EXPECT_TRUE(resp.results(0).response().granted());
  EXPECT_TRUE(resp.results(1).response().granted());
  // cal2 has 4 units left: taken, so the next batch finds cal2 full and charges cal nothing.
  EXPECT_EQ(GrantsFromEveryone("cal2", 1), 4);
  ASSERT_TRUE(quota_[1]->AcquireBatch(Context().get(), batch, &resp).ok());
  EXPECT_FALSE(resp.results(0).response().granted());
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(resp.results(1).response().limited_by(), "cal2.daily");
  EXPECT_EQ(GrantsFromEveryone("cal", 1), kWindowCapacity - 1);
}

TEST_F(SharedModeTest, ReleaseAndRenewWorkThroughAnyReplica) {
  v1::AcquireResponse resp;
  ASSERT_TRUE(Acquire(0, "conc", &resp).ok());
  ASSERT_TRUE(resp.granted());
  v1::RenewRequest renew;
  renew.set_lease_id(resp.lease_id());
  renew.mutable_ttl()->set_seconds(60);
  v1::RenewResponse renewed;
  ASSERT_TRUE(quota_[1]->Renew(Context().get(), renew, &renewed).ok());
  EXPECT_GT(renewed.lease_expires_at().seconds(), resp.lease_expires_at().seconds());
  v1::ReleaseRequest release;
  release.set_lease_id(resp.lease_id());
  v1::ReleaseResponse released;
  ASSERT_TRUE(quota_[2]->Release(Context().get(), release, &released).ok());
  EXPECT_EQ(released.freed(), 1);
  grpc::Status again = Release(0, resp.lease_id());
  EXPECT_EQ(again.error_code(), grpc::StatusCode::NOT_FOUND) << again.error_message();
}

// Waiting is built (shared_wait_test): a request that may wait for a unit that does not come
// back within its max_wait is answered with the denial at max_wait.
TEST_F(SharedModeTest, AWaiterNothingFreesIsDeniedAtMaxWait) {
  ASSERT_EQ(GrantsFromEveryone("bucket", 1), kWindowCapacity);
  v1::AcquireRequest req;
  req.set_credential("team/shared");
  req.set_feature("bucket");
  req.mutable_max_wait()->set_nanos(300000000);
  v1::AcquireResponse resp;
  ASSERT_TRUE(quota_[0]->Acquire(Context(absl::Seconds(30)).get(), req, &resp).ok());
  EXPECT_FALSE(resp.granted());
  EXPECT_TRUE(resp.has_retry_after());
}

TEST_F(SharedModeTest, RedisDownFailsClosedAndRecoversByItself) {
  v1::AcquireResponse resp;
  ASSERT_TRUE(Acquire(0, "cal", &resp).ok());
  ASSERT_TRUE(resp.granted());
  for (int r = 0; r < kReplicas; ++r) EXPECT_EQ(HealthOf(r), HealthCheckResponse::SERVING);

  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  for (int r = 0; r < kReplicas; ++r) {
    grpc::Status s = Acquire(r, "cal", &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_TRUE(Eventually([&] { return HealthOf(r) == HealthCheckResponse::NOT_SERVING; }));
  }

  ASSERT_TRUE(redis_->Restart().ok());  // replays its AOF: the charge above is still there
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_TRUE(Eventually([&] { return HealthOf(r) == HealthCheckResponse::SERVING; },
                           absl::Seconds(15)));
  }
  EXPECT_EQ(GrantsFromEveryone("cal", 1), kWindowCapacity - 1);
}

TEST_F(SharedModeTest, AReplicaGoneTheOthersKeepServingAndItsLeasesExpire) {
  v1::AcquireRequest req;
  req.set_credential("team/shared");
  req.set_feature("conc");
  req.mutable_lease_ttl()->set_seconds(2);
  for (int i = 0; i < kSlots; ++i) {
    v1::AcquireResponse resp;
    ASSERT_TRUE(quota_[0]->Acquire(Context().get(), req, &resp).ok());
    ASSERT_TRUE(resp.granted());
  }
  servers_[0].reset();  // gone, with every slot held through it
  v1::AcquireResponse resp;
  ASSERT_TRUE(Acquire(1, "conc", &resp).ok());
  EXPECT_FALSE(resp.granted());
  EXPECT_EQ(GrantsFromEveryone("cal", 1, "", /*first=*/1), kWindowCapacity);
  // The leases end at their TTL, on Redis's clock; the survivors grant again.
  EXPECT_TRUE(Eventually(
      [&] {
        v1::AcquireResponse r;
        return Acquire(2, "conc", &r).ok() && r.granted();
      },
      absl::Seconds(10)));
}

TEST(SharedModeOptionsTest, StateAndRedisExcludeEachOther) {
  TempDir dir;
  ServerOptions options;
  options.config_path = dir.WriteFile("quotad.yaml", kConfig);
  options.listen_address = "127.0.0.1:0";
  options.redis_url = "redis://127.0.0.1:1";
  options.state_path = dir.File("state.db");
  absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("--state and --redis exclude each other"),
            std::string::npos)
      << server.status();
  // (--redis_wait_replicas with redis-cluster:// is accepted now: cluster_wait_test.)
}

}  // namespace
}  // namespace quotad

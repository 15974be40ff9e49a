// Fail open in shared mode (issue 13), against a real redis-server killed by the test: while
// Redis cannot be reached, a credential whose profile sets fail_open is granted by the replica
// alone (a lease id marked as not held in Redis, counted in quotad_fail_open_grants_total),
// Release and Renew of such a lease succeed without Redis, and a fail-closed credential gets
// UNAVAILABLE; health is NOT_SERVING meanwhile. Once Redis is back both are decided by Redis
// again, and the fail-open grants were counted nowhere (the over-grant the README states).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/server/http_get.h"
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

constexpr int kReplicas = 2;
constexpr int kCapacity = 3;
// Every fail-open lease id starts with this mark (redis_backend_fail_open.cc).
constexpr char kFailOpenMark[] = "fa11fa11";

// The same limits twice: one profile fails open, the other (the default) fails closed.
constexpr char kConfig[] = R"(
profiles:
  - name: lenient
    fail_open: true
    features:
      - name: calls
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 3}
      - name: jobs
        default_lease_ttl: 30s
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
  - name: strict
    features:
      - name: calls
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 3}
      - name: jobs
        default_lease_ttl: 30s
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
credentials:
  - name: team/open
    profile: lenient
  - name: team/closed
    profile: strict
)";

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

TEST(FailOpenConfigTest, ProfileSettingReachesItsCredentialsAndDefaultsToClosed) {
  absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  ASSERT_EQ(policy->credentials.size(), 2u);
  EXPECT_EQ(policy->credentials[0].name, "team/open");
  EXPECT_TRUE(policy->credentials[0].fail_open);
  EXPECT_EQ(policy->credentials[1].name, "team/closed");
  EXPECT_FALSE(policy->credentials[1].fail_open);

  std::string bad = kConfig;
  bad.replace(bad.find("fail_open: true"), 15, "fail_open: maybe");
  absl::StatusOr<Policy> refused = LoadPolicyFromString(bad, "bad.yaml");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  // The field and its place (the YAML reader names a value's size, never its text).
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "bad.yaml:4:"))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "profiles[0].fail_open"))
      << refused.status();
}

class FailOpenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    config_ = dir_.WriteFile("quotad.yaml", kConfig);
    for (int i = 0; i < kReplicas; ++i) {
      ServerOptions options = testing::SharedServerOptions(
          config_, absl::StrCat("redis://127.0.0.1:", redis_->port()));
      options.redis_timeout = absl::Milliseconds(500);
      options.metrics_listen = "127.0.0.1:0";
      absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
      auto channel =
          grpc::CreateChannel(servers_.back()->address(), grpc::InsecureChannelCredentials());
      quota_.push_back(v1::Quota::NewStub(channel));
      health_.push_back(Health::NewStub(channel));
    }
    // Every replica serves before a test asks it: a call a replica answers before it has
    // reached Redis is granted fail-open (marked), which the tests assert it is not.
    for (int i = 0; i < kReplicas; ++i) {
      ASSERT_TRUE(Eventually([&] { return HealthOf(i) == HealthCheckResponse::SERVING; }))
          << "replica " << i;
    }
  }

  grpc::Status Acquire(int replica, const std::string& credential, const std::string& feature,
                       v1::AcquireResponse* resp) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    return quota_[replica]->Acquire(Context().get(), req, resp);
  }

  // Acquires `asks` times through the replicas in turn; the grants (every call must answer).
  std::vector<std::string> Grants(const std::string& credential, const std::string& feature,
                                  int asks) {
    std::vector<std::string> leases;
    for (int i = 0; i < asks; ++i) {
      v1::AcquireResponse resp;
      grpc::Status s = Acquire(i % kReplicas, credential, feature, &resp);
      EXPECT_TRUE(s.ok()) << credential << ": " << s.error_message();
      if (s.ok() && resp.granted()) leases.push_back(resp.lease_id());
    }
    return leases;
  }

  HealthCheckResponse::ServingStatus HealthOf(int replica) {
    HealthCheckResponse resp;
    grpc::Status s = health_[replica]->Check(Context().get(), HealthCheckRequest(), &resp);
    return s.ok() ? resp.status() : HealthCheckResponse::UNKNOWN;
  }

  std::string Metrics(int replica) {
    return testing::HttpGet(servers_[replica]->metrics_port(), "/metrics");
  }

  TempDir dir_;
  std::string config_;
  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
  std::vector<std::unique_ptr<Health::Stub>> health_;
};

TEST_F(FailOpenTest, FailOpenGrantsDuringTheOutageFailClosedDoesNotBothRecover) {
  // One unit of each credential charged in Redis before the outage (kept by the AOF).
  for (const char* credential : {"team/open", "team/closed"}) {
    std::vector<std::string> first = Grants(credential, "calls", 1);
    ASSERT_EQ(first.size(), 1u) << credential;
    EXPECT_FALSE(absl::StartsWith(first[0], kFailOpenMark)) << first[0];
  }

  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_TRUE(Eventually([&] { return HealthOf(r) == HealthCheckResponse::NOT_SERVING; }));
  }

  // Fail closed: UNAVAILABLE through every replica, for a window and a concurrency limit.
  for (int r = 0; r < kReplicas; ++r) {
    for (const char* feature : {"calls", "jobs"}) {
      v1::AcquireResponse resp;
      grpc::Status s = Acquire(r, "team/closed", feature, &resp);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
      EXPECT_FALSE(resp.granted());
    }
  }

  // Fail open: every ask is granted, past the capacity (counted nowhere), and marked.
  constexpr int kAsks = 5;
  std::vector<std::string> open = Grants("team/open", "calls", kAsks);
  EXPECT_EQ(open.size(), static_cast<size_t>(kAsks));
  std::vector<std::string> jobs = Grants("team/open", "jobs", 2);  // capacity 1
  EXPECT_EQ(jobs.size(), 2u);
  for (const std::string& id : open) EXPECT_TRUE(absl::StartsWith(id, kFailOpenMark)) << id;
  for (const std::string& id : jobs) EXPECT_TRUE(absl::StartsWith(id, kFailOpenMark)) << id;
  // Health does not follow the fail-open grants: this replica counts nothing (README).
  for (int r = 0; r < kReplicas; ++r) EXPECT_EQ(HealthOf(r), HealthCheckResponse::NOT_SERVING);

  // Renew and Release succeed without Redis, through the replica that granted (0 granted
  // the even-numbered asks) and through another one.
  {
    v1::RenewRequest req;
    req.set_lease_id(jobs[0]);
    req.mutable_ttl()->set_seconds(20);
    v1::RenewResponse resp;
    const absl::Time before = absl::Now();
    grpc::Status s = quota_[0]->Renew(Context().get(), req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const absl::Time expiry = absl::FromUnixSeconds(resp.lease_expires_at().seconds());
    EXPECT_GE(expiry, before + absl::Seconds(19));
    EXPECT_LE(expiry, absl::Now() + absl::Seconds(21));
  }
  for (int r = 0; r < kReplicas; ++r) {
    for (const std::string& id : {open[0], jobs[1]}) {
      v1::ReleaseRequest req;
      req.set_lease_id(id);
      req.set_used(1);
      v1::ReleaseResponse resp;
      grpc::Status s = quota_[r]->Release(Context().get(), req, &resp);
      EXPECT_TRUE(s.ok()) << "replica " << r << ": " << s.error_message();
      EXPECT_EQ(resp.refunded(), 0);  // nothing was charged
      EXPECT_EQ(resp.freed(), 0);     // nor held
    }
  }

  // The metric: replica 0 granted asks 0, 2, 4 of `calls` and ask 0 of `jobs`.
  EXPECT_TRUE(absl::StrContains(Metrics(0),
                                "quotad_fail_open_grants_total{credential=\"team/open\"} 4"))
      << Metrics(0);
  EXPECT_TRUE(absl::StrContains(Metrics(1),
                                "quotad_fail_open_grants_total{credential=\"team/open\"} 3"))
      << Metrics(1);
  EXPECT_FALSE(absl::StrContains(Metrics(0),
                                 "quotad_fail_open_grants_total{credential=\"team/closed\""));

  // Redis back (its AOF replayed): both credentials are decided by Redis again. The fail-open
  // grants were counted nowhere: each has exactly the capacity left minus the unit charged
  // before the outage, and the concurrency slot is free.
  ASSERT_TRUE(redis_->Restart().ok());
  for (int r = 0; r < kReplicas; ++r) {
    EXPECT_TRUE(Eventually([&] { return HealthOf(r) == HealthCheckResponse::SERVING; },
                           absl::Seconds(15)));
  }
  for (const char* credential : {"team/open", "team/closed"}) {
    std::vector<std::string> after = Grants(credential, "calls", 2 * kCapacity);
    EXPECT_EQ(after.size(), static_cast<size_t>(kCapacity - 1)) << credential;
    for (const std::string& id : after) EXPECT_FALSE(absl::StartsWith(id, kFailOpenMark)) << id;
    EXPECT_EQ(Grants(credential, "jobs", 3).size(), 1u) << credential;
  }
}

// A call already sent when Redis stops answering (here: CLIENT PAUSE WRITE holds every FCALL
// while PING still answers, so the replica is still SERVING) fails open too once it times out.
TEST(FailOpenBackendTest, ACallThatTimesOutFailsOpenOnlyForFailOpenCredentials) {
  absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status();
  absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  RedisBackendOptions options;
  options.url = absl::StrCat("redis://127.0.0.1:", (*redis)->port());
  // Long enough that the calls before and after the pause are answered by Redis on a loaded
  // machine (at 200 ms a slow answer would be granted fail-open); the paused ones wait it out.
  options.call_timeout = absl::Seconds(1);
  options.connect_wait = absl::Seconds(5);
  options.max_fail_open_leases = 2;
  absl::StatusOr<std::unique_ptr<RedisBackend>> backend =
      RedisBackend::Create(*policy, Clock::Real(), options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_TRUE((*backend)->serving());
  int observed = 0;
  (*backend)->SetFailOpenObserver([&](absl::string_view credential) {
    EXPECT_EQ(credential, "team/open");
    ++observed;
  });
  auto acquire = [&](const std::string& credential) {
    AcquireRequest req;
    req.credential = credential;
    req.feature = "calls";
    absl::Notification done;
    absl::StatusOr<Decision> out;
    (*backend)->AcquireShared(req, SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
      out = std::move(d);
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    return out;
  };

  absl::StatusOr<Decision> held = acquire("team/open");
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_TRUE(held->granted);
  EXPECT_FALSE(RedisBackend::IsFailOpenLease(held->lease_id));

  // Paused until the UNPAUSE below: the five calls in between each wait out call_timeout.
  ASSERT_TRUE((*redis)->Command({"CLIENT", "PAUSE", "60000", "WRITE"}).ok());
  absl::StatusOr<Decision> closed = acquire("team/closed");
  EXPECT_EQ(closed.status().code(), absl::StatusCode::kUnavailable) << closed.status();
  std::vector<LeaseId> open;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> d = acquire("team/open");
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->granted);
    EXPECT_TRUE(RedisBackend::IsFailOpenLease(d->lease_id)) << d->lease_id.ToString();
    open.push_back(d->lease_id);
  }
  // max_fail_open_leases=2 live ones: the third is refused, naming the bound.
  absl::StatusOr<Decision> third = acquire("team/open");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kUnavailable) << third.status();
  EXPECT_TRUE(absl::StrContains(third.status().message(), "max_fail_open_leases=2"))
      << third.status();
  EXPECT_EQ(observed, 2);
  EXPECT_EQ((*backend)->fail_open_grants(), 2);

  // The lease is known to the replica that granted it (for the owner checks of Release and
  // Renew), and released here without Redis; that frees room for another.
  absl::StatusOr<LeaseInfo> info = (*backend)->FindLease(open[0]);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->credential, "team/open");
  EXPECT_EQ(info->feature, "calls");
  ASSERT_TRUE((*backend)->Release(open[0], std::nullopt).ok());
  EXPECT_EQ((*backend)->FindLease(open[0]).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<Decision> again = acquire("team/open");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(RedisBackend::IsFailOpenLease(again->lease_id));

  ASSERT_TRUE((*redis)->Command({"CLIENT", "UNPAUSE"}).ok());
  // Redis answers again: decided there (the lease held before the pause is still Redis's).
  EXPECT_TRUE(Eventually([&] {
    absl::StatusOr<Decision> d = acquire("team/closed");
    return d.ok() && d->granted && !RedisBackend::IsFailOpenLease(d->lease_id);
  }));
  EXPECT_TRUE((*backend)->Release(held->lease_id, 0).ok());
  (*backend)->SetFailOpenObserver(nullptr);
}

}  // namespace
}  // namespace quotad

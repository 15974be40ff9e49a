// QuotadServer end to end: the real server in process on port 0 with a real configuration file,
// called by real gRPC clients. The server runs on a FakeClock: leases expire, waiting calls are
// served and the sweeper runs when a test advances it; only the socket's I/O is polled for.

#include "service/server/server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"

namespace quotad {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ::quotad::testing::Eventually;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // An hour behind the real time (on a whole second), so that the calls' deadlines, which are
    // real times, stay in the server's future however far the tests advance its clock.
    clock_ =
        new FakeClock(absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now() - absl::Hours(1))));
    ServerOptions options;
    options.clock = clock_;
    options.config_path = QUOTAD_TEST_CONFIG;
    options.memory_only = true;
    options.listen_address = "127.0.0.1:0";
    options.sweep_interval = absl::Milliseconds(100);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_OK(server);
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete clock_;  // after the server, whose timers are on it
    clock_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    quota_ = v1::Quota::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
    for (const char* c : {"virustotal/prod", "test/short", "test/race"}) {
      grpc::ClientContext ctx;
      v1::ResetCredentialRequest req;
      v1::ResetCredentialResponse resp;
      req.set_credential(c);
      ASSERT_OK(admin_->ResetCredential(&ctx, req, &resp));
    }
    // Time moves on after the reset, as it did on the real clock: a lease granted in the very
    // nanosecond of a Reset counts as granted before it, and its Release refunds nothing
    // (Ledger::Release compares granted_ns > reset_ns).
    clock_->Advance(absl::Milliseconds(1));
  }

  grpc::Status Acquire(const v1::AcquireRequest& req, v1::AcquireResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return quota_->Acquire(&ctx, req, resp);
  }

  // Acquires test/short's one slot, which an earlier test may still hold (leases outlive
  // Reset): if denied, moves the clock past the longest lease test-short-ttl allows (10 s) and
  // asks again.
  v1::AcquireResponse AcquireTheShortSlot() {
    v1::AcquireResponse resp;
    EXPECT_OK(Acquire(Req("test/short", "jobs"), &resp));
    if (resp.granted()) return resp;
    clock_->Advance(absl::Seconds(11));
    resp.Clear();
    EXPECT_OK(Acquire(Req("test/short", "jobs"), &resp));
    return resp;
  }

  v1::AcquireRequest Req(const std::string& credential, const std::string& feature) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    req.set_holder("server_test");
    return req;
  }

  static FakeClock* clock_;
  static QuotadServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quota::Stub> quota_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

FakeClock* ServerTest::clock_ = nullptr;
QuotadServer* ServerTest::server_ = nullptr;

TEST_F(ServerTest, AcquireGrantsAndReportsEveryLimit) {
  v1::AcquireResponse resp;
  ASSERT_OK(Acquire(Req("virustotal/prod", "requests"), &resp));
  EXPECT_TRUE(resp.granted());
  EXPECT_EQ(resp.lease_id().size(), 32u);
  EXPECT_TRUE(resp.has_lease_expires_at());
  ASSERT_EQ(resp.limits_size(), 3);
  for (const v1::LimitStatus& l : resp.limits()) {
    EXPECT_EQ(l.used(), 1) << l.name();
    EXPECT_EQ(l.remaining(), l.capacity() - 1) << l.name();
    EXPECT_TRUE(l.has_reset_at()) << l.name();
  }
}

TEST_F(ServerTest, DenialIsDataWithRetryAfterAndLimitedBy) {
  v1::AcquireResponse resp;
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK(Acquire(Req("virustotal/prod", "requests"), &resp));
    ASSERT_TRUE(resp.granted()) << i;
  }
  ASSERT_OK(Acquire(Req("virustotal/prod", "requests"), &resp));
  EXPECT_FALSE(resp.granted());
  EXPECT_EQ(resp.limited_by(), "requests.per_minute");
  EXPECT_TRUE(resp.lease_id().empty());
  EXPECT_GT(resp.retry_after().seconds() + resp.retry_after().nanos(), 0);
  // The 60 s window plus the profile's 1 s guard. (On the real clock the denial came a few
  // milliseconds after the charges and the whole seconds read 60; the clock stands still here.)
  EXPECT_LE(resp.retry_after().seconds(), 61);
  EXPECT_TRUE(resp.has_retry_at());
}

TEST_F(ServerTest, AcquireRejectsMalformedInputNamingFieldAndValue) {
  struct Case {
    std::function<void(v1::AcquireRequest*)> mutate;
    std::string expected;
  };
  std::vector<Case> cases = {
      {[](v1::AcquireRequest* r) { r->set_credential(""); }, "credential is required"},
      {[](v1::AcquireRequest* r) { r->set_credential(std::string(300, 'a')); },
       "credential \"aaaa"},
      {[](v1::AcquireRequest* r) { r->set_credential("vt prod"); }, "' ' at offset 2"},
      {[](v1::AcquireRequest* r) { r->set_feature(""); }, "feature is required"},
      {[](v1::AcquireRequest* r) { r->set_scope(std::string("a\nb")); }, "scope"},
      {[](v1::AcquireRequest* r) { r->set_cost(0); }, "cost must be positive, got 0"},
      {[](v1::AcquireRequest* r) { r->set_cost(-5); }, "got -5"},
      {[](v1::AcquireRequest* r) { r->set_cost(1000000); }, "cost 1000000"},
      {[](v1::AcquireRequest* r) { r->mutable_lease_ttl()->set_seconds(-1); },
       "lease_ttl must not be negative"},
      {[](v1::AcquireRequest* r) { r->mutable_max_wait()->set_seconds(86400 * 365); },
       "max_wait 31536000s is more than"},
      {[](v1::AcquireRequest* r) { r->mutable_max_wait()->set_nanos(2000000000); },
       "not a valid duration"},
      {[](v1::AcquireRequest* r) { r->set_priority(5000); }, "priority 5000"},
      {[](v1::AcquireRequest* r) { r->set_request_id(std::string(200, 'x')); }, "request_id"},
  };
  for (const Case& c : cases) {
    v1::AcquireRequest req = Req("virustotal/prod", "requests");
    c.mutate(&req);
    v1::AcquireResponse resp;
    EXPECT_THAT(Acquire(req, &resp),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.expected)));
  }
}

// Issue 11, finding 5: a request_id names one request. Its retry gets the first grant and
// charges nothing; the same request_id on another request (cost, scope, feature) is an error
// naming both, never the first grant.
TEST_F(ServerTest, RequestIdReusedForADifferentRequestIsAnErrorNamingBoth) {
  v1::AcquireRequest first = Req("virustotal/prod", "requests");
  first.set_request_id("sha256-of-the-file");
  v1::AcquireResponse granted;
  ASSERT_OK(Acquire(first, &granted));
  ASSERT_TRUE(granted.granted());
  v1::AcquireResponse retry;
  ASSERT_OK(Acquire(first, &retry));
  EXPECT_EQ(retry.lease_id(), granted.lease_id());

  v1::AcquireRequest other = first;
  other.set_cost(2);
  v1::AcquireResponse resp;
  EXPECT_THAT(Acquire(other, &resp), StatusIs(absl::StatusCode::kInvalidArgument,
                                              AllOf(HasSubstr("sha256-of-the-file"),
                                                    HasSubstr("cost 1"), HasSubstr("cost 2"))));
  EXPECT_TRUE(resp.lease_id().empty());
  other = first;
  other.set_scope("another-ruleset");
  EXPECT_THAT(Acquire(other, &resp), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ServerTest, AcquireOnUnknownCredentialOrFeatureIsNotFound) {
  v1::AcquireResponse resp;
  EXPECT_THAT(Acquire(Req("nobody/prod", "requests"), &resp),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nobody/prod")));
  EXPECT_THAT(Acquire(Req("virustotal/prod", "teleport"), &resp),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("teleport")));
}

TEST_F(ServerTest, MaxWaitWaitsForTheHeldSlotToExpire) {
  v1::AcquireResponse first = AcquireTheShortSlot();
  ASSERT_TRUE(first.granted());
  // The only slot is held by a 1 s lease: a waiting call is parked, not denied at once, and
  // granted on the same call when the lease expires on the server's clock.
  v1::AcquireRequest req = Req("test/short", "jobs");
  req.mutable_max_wait()->set_seconds(30);
  v1::AcquireResponse second;
  grpc::Status status;
  std::thread waiter([&] { status = Acquire(req, &second); });
  EXPECT_TRUE(Eventually([] { return server_->ledger()->waiting() == 1; }))
      << "the call was not parked";
  clock_->Advance(absl::Seconds(2));
  waiter.join();
  ASSERT_OK(status);
  EXPECT_TRUE(second.granted());
  EXPECT_NE(second.lease_id(), first.lease_id());
}

TEST_F(ServerTest, ReleaseRefundsUnusedUnitsAndRenewExtends) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_cost(10);
  v1::AcquireResponse acquired;
  ASSERT_OK(Acquire(req, &acquired));
  ASSERT_TRUE(acquired.granted());

  grpc::ClientContext renew_ctx;
  v1::RenewRequest renew;
  renew.set_lease_id(acquired.lease_id());
  renew.mutable_ttl()->set_seconds(120);
  v1::RenewResponse renewed;
  ASSERT_OK(quota_->Renew(&renew_ctx, renew, &renewed));
  EXPECT_GT(renewed.lease_expires_at().seconds(), acquired.lease_expires_at().seconds());

  grpc::ClientContext release_ctx;
  v1::ReleaseRequest release;
  release.set_lease_id(acquired.lease_id());
  release.set_used(4);
  v1::ReleaseResponse released;
  ASSERT_OK(quota_->Release(&release_ctx, release, &released));
  EXPECT_EQ(released.refunded(), 6);

  grpc::ClientContext usage_ctx;
  v1::GetUsageRequest usage_req;
  usage_req.set_credential("test/race");
  v1::GetUsageResponse usage;
  ASSERT_OK(admin_->GetUsage(&usage_ctx, usage_req, &usage));
  ASSERT_EQ(usage.limits_size(), 1);
  EXPECT_EQ(usage.limits(0).used(), 4);
  EXPECT_EQ(usage.profile(), "test-race");
}

TEST_F(ServerTest, ReleaseAndRenewErrorPaths) {
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_lease_id("not-a-lease");
    v1::ReleaseResponse resp;
    EXPECT_THAT(quota_->Release(&ctx, req, &resp), StatusIs(absl::StatusCode::kInvalidArgument,
                                                            HasSubstr("lease_id \"not-a-lease\"")));
  }
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_lease_id(std::string(32, 'a'));
    v1::ReleaseResponse resp;
    EXPECT_THAT(quota_->Release(&ctx, req, &resp), StatusIs(absl::StatusCode::kNotFound));
  }
  v1::AcquireResponse acquired;
  ASSERT_OK(Acquire(Req("test/race", "calls"), &acquired));
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_lease_id(acquired.lease_id());
    req.set_used(-1);
    v1::ReleaseResponse resp;
    EXPECT_THAT(quota_->Release(&ctx, req, &resp),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("used")));
  }
  {
    grpc::ClientContext ctx;
    v1::RenewRequest req;
    req.set_lease_id(acquired.lease_id());
    req.mutable_ttl()->set_seconds(-3);
    v1::RenewResponse resp;
    EXPECT_THAT(quota_->Renew(&ctx, req, &resp), StatusIs(absl::StatusCode::kInvalidArgument,
                                                          HasSubstr("ttl must not be negative")));
  }
  {
    grpc::ClientContext ctx;
    v1::RenewRequest req;
    req.set_lease_id(std::string(32, 'b'));
    v1::RenewResponse resp;
    EXPECT_THAT(quota_->Renew(&ctx, req, &resp), StatusIs(absl::StatusCode::kNotFound));
  }
}

TEST_F(ServerTest, AdminListsLeasesCredentialsAndProfiles) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_holder("worker-7");
  v1::AcquireResponse acquired;
  ASSERT_OK(Acquire(req, &acquired));
  {
    grpc::ClientContext ctx;
    v1::ListLeasesRequest lr;
    lr.set_credential("test/race");
    v1::ListLeasesResponse leases;
    ASSERT_OK(admin_->ListLeases(&ctx, lr, &leases));
    bool found = false;
    for (const v1::Lease& l : leases.leases()) {
      if (l.lease_id() == acquired.lease_id()) {
        found = true;
        EXPECT_EQ(l.holder(), "worker-7");
        EXPECT_EQ(l.feature(), "calls");
      }
    }
    EXPECT_TRUE(found);
  }
  {
    grpc::ClientContext ctx;
    v1::ListLeasesRequest lr;
    lr.set_credential("nobody/prod");
    v1::ListLeasesResponse leases;
    EXPECT_THAT(admin_->ListLeases(&ctx, lr, &leases), StatusIs(absl::StatusCode::kNotFound));
  }
  {
    grpc::ClientContext ctx;
    v1::ListCredentialsResponse creds;
    ASSERT_OK(admin_->ListCredentials(&ctx, v1::ListCredentialsRequest(), &creds));
    ASSERT_EQ(creds.credentials_size(), 4);
    EXPECT_EQ(creds.credentials(0).name(), "metadefender/prod");  // sorted by name
    bool builtin_vt = false, file_profile = false;
    for (const v1::ProfileEntry& p : creds.profiles()) {
      if (p.name() == "virustotal-public") {
        builtin_vt = p.builtin() && p.definition().features_size() > 0 &&
                     p.credentials_size() == 1 && p.credentials(0) == "virustotal/prod";
      }
      if (p.name() == "test-short-ttl") file_profile = !p.builtin();
    }
    EXPECT_TRUE(builtin_vt);
    EXPECT_TRUE(file_profile);
  }
  {
    grpc::ClientContext ctx;
    v1::GetUsageRequest ur;
    ur.set_credential("nobody/prod");
    v1::GetUsageResponse usage;
    EXPECT_THAT(admin_->GetUsage(&ctx, ur, &usage), StatusIs(absl::StatusCode::kNotFound));
  }
  {
    grpc::ClientContext ctx;
    v1::ResetCredentialRequest rr;
    rr.set_credential("");
    v1::ResetCredentialResponse reset;
    EXPECT_THAT(admin_->ResetCredential(&ctx, rr, &reset),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST_F(ServerTest, ResetZeroesCountersAndReloadKeepsThem) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_cost(7);
  v1::AcquireResponse acquired;
  ASSERT_OK(Acquire(req, &acquired));
  {
    grpc::ClientContext ctx;
    v1::ReloadConfigResponse reloaded;
    ASSERT_OK(admin_->ReloadConfig(&ctx, v1::ReloadConfigRequest(), &reloaded));
    EXPECT_EQ(reloaded.credentials(), 4);
    EXPECT_EQ(reloaded.source(), QUOTAD_TEST_CONFIG);
  }
  grpc::ClientContext usage_ctx;
  v1::GetUsageRequest ur;
  ur.set_credential("test/race");
  v1::GetUsageResponse usage;
  ASSERT_OK(admin_->GetUsage(&usage_ctx, ur, &usage));
  EXPECT_EQ(usage.limits(0).used(), 7);

  grpc::ClientContext ctx;
  v1::ResetCredentialRequest rr;
  rr.set_credential("test/race");
  v1::ResetCredentialResponse reset;
  ASSERT_OK(admin_->ResetCredential(&ctx, rr, &reset));
  ASSERT_EQ(reset.limits_size(), 1);
  EXPECT_EQ(reset.limits(0).used(), 0);
}

TEST_F(ServerTest, SixtyFourClientThreadsNeverOverGrant) {
  constexpr int kThreads = 64;
  constexpr int kAttemptsPerThread = 10;  // 640 attempts on a capacity of 100
  std::atomic<int> granted{0};
  std::atomic<int> denied{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // A channel per thread so that the calls really race over several connections.
      grpc::ChannelArguments args;
      args.SetInt("quotad.test.channel", t);
      auto channel =
          grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args);
      auto stub = v1::Quota::NewStub(channel);
      for (int i = 0; i < kAttemptsPerThread; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
        // 64 new connections at once: a connect that fails transiently (seen once in CI: one
        // thread's 10 calls UNAVAILABLE) is retried by the channel instead of failing the call.
        ctx.set_wait_for_ready(true);
        v1::AcquireResponse resp;
        grpc::Status s = stub->Acquire(&ctx, Req("test/race", "calls"), &resp);
        if (!s.ok()) {
          ADD_FAILURE() << "Acquire failed: " << s.error_code() << " " << s.error_message();
          errors.fetch_add(1);
        } else if (resp.granted()) {
          granted.fetch_add(1);
        } else {
          denied.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(granted.load(), 100);
  EXPECT_EQ(denied.load(), kThreads * kAttemptsPerThread - 100);

  grpc::ClientContext ctx;
  v1::GetUsageRequest ur;
  ur.set_credential("test/race");
  v1::GetUsageResponse usage;
  ASSERT_OK(admin_->GetUsage(&ctx, ur, &usage));
  EXPECT_EQ(usage.limits(0).used(), 100);
  EXPECT_EQ(usage.limits(0).remaining(), 0);
}

TEST_F(ServerTest, LeaseExpiresOverTheWireAndFreesTheSlot) {
  v1::AcquireResponse first = AcquireTheShortSlot();
  ASSERT_TRUE(first.granted());
  v1::AcquireResponse second;
  ASSERT_OK(Acquire(Req("test/short", "jobs"), &second));
  ASSERT_FALSE(second.granted());
  EXPECT_EQ(second.limited_by(), "jobs.concurrent");

  // The 1 s lease runs out by itself: not before its TTL, and then without a Release.
  clock_->Advance(absl::Milliseconds(500));
  v1::AcquireResponse early;
  ASSERT_OK(Acquire(Req("test/short", "jobs"), &early));
  EXPECT_FALSE(early.granted()) << "the slot freed before the lease's TTL ran out";
  clock_->Advance(absl::Milliseconds(600));
  v1::AcquireResponse again;
  ASSERT_OK(Acquire(Req("test/short", "jobs"), &again));
  ASSERT_TRUE(again.granted()) << "slot never freed";

  grpc::ClientContext ctx;
  v1::RenewRequest renew;
  renew.set_lease_id(first.lease_id());
  v1::RenewResponse resp;
  EXPECT_THAT(quota_->Renew(&ctx, renew, &resp), StatusIs(absl::StatusCode::kNotFound));

  // The sweeper drops the expired lease from the operators' list as well: its tick (every
  // 100 ms of the clock) runs on the sweeper's own thread, which the list is polled for.
  clock_->Advance(absl::Milliseconds(100));
  EXPECT_TRUE(Eventually([&] {
    grpc::ClientContext lctx;
    v1::ListLeasesRequest lr;
    lr.set_credential("test/short");
    v1::ListLeasesResponse leases;
    if (!admin_->ListLeases(&lctx, lr, &leases).ok()) return false;
    for (const v1::Lease& l : leases.leases()) {
      if (l.lease_id() == first.lease_id()) return false;
    }
    return true;
  }));
}

TEST_F(ServerTest, HealthIsServing) {
  auto health = Health::NewStub(channel_);
  for (const char* service : {"", "quotad.v1.Quota", "quotad.v1.Admin"}) {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    ASSERT_OK(health->Check(&ctx, req, &resp)) << service;
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << service;
  }
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  HealthCheckResponse resp;
  EXPECT_THAT(health->Check(&ctx, req, &resp), StatusIs(absl::StatusCode::kNotFound));
}

TEST(ServerStartTest, FailsFastOnBadConfigAndBusyPort) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.memory_only = true;
  options.config_path = "/nonexistent/quotad.yaml";
  EXPECT_THAT(QuotadServer::Start(options),
              StatusIs(Not(absl::StatusCode::kOk), HasSubstr("/nonexistent/quotad.yaml")));

  options.config_path = QUOTAD_TEST_CONFIG;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<QuotadServer> first, QuotadServer::Start(options));
  options.listen_address = first->address();
  EXPECT_THAT(QuotadServer::Start(options),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(first->address())));
}

}  // namespace
}  // namespace quotad

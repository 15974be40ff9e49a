// The real quotad server in process on port 0 with a real configuration file, called by real
// gRPC clients.

#include "service/server/server.h"

#include <grpcpp/grpcpp.h>
#include <gmock/gmock.h>
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

namespace quotad {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options;
    options.config_path = QUOTAD_TEST_CONFIG;
    options.memory_only = true;
    options.listen_address = "127.0.0.1:0";
    options.sweep_interval = absl::Milliseconds(100);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
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
      ASSERT_TRUE(admin_->ResetCredential(&ctx, req, &resp).ok());
    }
  }

  grpc::Status Acquire(const v1::AcquireRequest& req, v1::AcquireResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    return quota_->Acquire(&ctx, req, resp);
  }

  // Polls (bounded) until the request is granted: for slots that free when a lease expires.
  v1::AcquireResponse AcquireWithin(const v1::AcquireRequest& req, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    v1::AcquireResponse resp;
    while (absl::Now() < deadline) {
      resp.Clear();
      EXPECT_TRUE(Acquire(req, &resp).ok());
      if (resp.granted()) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return resp;
  }

  v1::AcquireRequest Req(const std::string& credential, const std::string& feature) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    req.set_holder("server_test");
    return req;
  }

  static QuotadServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quota::Stub> quota_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

QuotadServer* ServerTest::server_ = nullptr;

TEST_F(ServerTest, AcquireGrantsAndReportsEveryLimit) {
  v1::AcquireResponse resp;
  ASSERT_TRUE(Acquire(Req("virustotal/prod", "requests"), &resp).ok());
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
    ASSERT_TRUE(Acquire(Req("virustotal/prod", "requests"), &resp).ok());
    ASSERT_TRUE(resp.granted()) << i;
  }
  ASSERT_TRUE(Acquire(Req("virustotal/prod", "requests"), &resp).ok());
  EXPECT_FALSE(resp.granted());
  EXPECT_EQ(resp.limited_by(), "requests.per_minute");
  EXPECT_TRUE(resp.lease_id().empty());
  EXPECT_GT(resp.retry_after().seconds() + resp.retry_after().nanos(), 0);
  EXPECT_LE(resp.retry_after().seconds(), 60);
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
    grpc::Status s = Acquire(req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.expected;
    EXPECT_NE(s.error_message().find(c.expected), std::string::npos)
        << "message: " << s.error_message() << " expected: " << c.expected;
  }
}

// Issue 11, finding 5: a request_id names one request. Its retry gets the first grant and
// charges nothing; the same request_id on another request (cost, scope, feature) is an error
// naming both, never the first grant.
TEST_F(ServerTest, RequestIdReusedForADifferentRequestIsAnErrorNamingBoth) {
  v1::AcquireRequest first = Req("virustotal/prod", "requests");
  first.set_request_id("sha256-of-the-file");
  v1::AcquireResponse granted;
  ASSERT_TRUE(Acquire(first, &granted).ok());
  ASSERT_TRUE(granted.granted());
  v1::AcquireResponse retry;
  ASSERT_TRUE(Acquire(first, &retry).ok());
  EXPECT_EQ(retry.lease_id(), granted.lease_id());

  v1::AcquireRequest other = first;
  other.set_cost(2);
  v1::AcquireResponse resp;
  const grpc::Status s = Acquire(other, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("sha256-of-the-file"));
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("cost 1"));
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("cost 2"));
  EXPECT_TRUE(resp.lease_id().empty());
  other = first;
  other.set_scope("another-ruleset");
  EXPECT_EQ(Acquire(other, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, AcquireOnUnknownCredentialOrFeatureIsNotFound) {
  v1::AcquireResponse resp;
  grpc::Status s = Acquire(Req("nobody/prod", "requests"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("nobody/prod"), std::string::npos) << s.error_message();
  s = Acquire(Req("virustotal/prod", "teleport"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(s.error_message().find("teleport"), std::string::npos) << s.error_message();
}

TEST_F(ServerTest, MaxWaitWaitsForTheHeldSlotToExpire) {
  v1::AcquireRequest req = Req("test/short", "jobs");
  v1::AcquireResponse first = AcquireWithin(req, absl::Seconds(15));
  ASSERT_TRUE(first.granted());
  // The only slot is held by a 1 s lease: a waiting call is granted on the same call when it
  // expires, not denied at once.
  req.mutable_max_wait()->set_seconds(30);
  const absl::Time start = absl::Now();
  v1::AcquireResponse second;
  ASSERT_TRUE(Acquire(req, &second).ok());
  EXPECT_TRUE(second.granted());
  EXPECT_NE(second.lease_id(), first.lease_id());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST_F(ServerTest, ReleaseRefundsUnusedUnitsAndRenewExtends) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_cost(10);
  v1::AcquireResponse acquired;
  ASSERT_TRUE(Acquire(req, &acquired).ok());
  ASSERT_TRUE(acquired.granted());

  grpc::ClientContext renew_ctx;
  v1::RenewRequest renew;
  renew.set_lease_id(acquired.lease_id());
  renew.mutable_ttl()->set_seconds(120);
  v1::RenewResponse renewed;
  ASSERT_TRUE(quota_->Renew(&renew_ctx, renew, &renewed).ok());
  EXPECT_GT(renewed.lease_expires_at().seconds(), acquired.lease_expires_at().seconds());

  grpc::ClientContext release_ctx;
  v1::ReleaseRequest release;
  release.set_lease_id(acquired.lease_id());
  release.set_used(4);
  v1::ReleaseResponse released;
  ASSERT_TRUE(quota_->Release(&release_ctx, release, &released).ok());
  EXPECT_EQ(released.refunded(), 6);

  grpc::ClientContext usage_ctx;
  v1::GetUsageRequest usage_req;
  usage_req.set_credential("test/race");
  v1::GetUsageResponse usage;
  ASSERT_TRUE(admin_->GetUsage(&usage_ctx, usage_req, &usage).ok());
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
    grpc::Status s = quota_->Release(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("lease_id \"not-a-lease\""), std::string::npos)
        << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_lease_id(std::string(32, 'a'));
    v1::ReleaseResponse resp;
    EXPECT_EQ(quota_->Release(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::AcquireResponse acquired;
  ASSERT_TRUE(Acquire(Req("test/race", "calls"), &acquired).ok());
  {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_lease_id(acquired.lease_id());
    req.set_used(-1);
    v1::ReleaseResponse resp;
    grpc::Status s = quota_->Release(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("used"), std::string::npos) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::RenewRequest req;
    req.set_lease_id(acquired.lease_id());
    req.mutable_ttl()->set_seconds(-3);
    v1::RenewResponse resp;
    grpc::Status s = quota_->Renew(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("ttl must not be negative"), std::string::npos)
        << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::RenewRequest req;
    req.set_lease_id(std::string(32, 'b'));
    v1::RenewResponse resp;
    EXPECT_EQ(quota_->Renew(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(ServerTest, AdminListsLeasesCredentialsAndProfiles) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_holder("worker-7");
  v1::AcquireResponse acquired;
  ASSERT_TRUE(Acquire(req, &acquired).ok());
  {
    grpc::ClientContext ctx;
    v1::ListLeasesRequest lr;
    lr.set_credential("test/race");
    v1::ListLeasesResponse leases;
    ASSERT_TRUE(admin_->ListLeases(&ctx, lr, &leases).ok());
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
    EXPECT_EQ(admin_->ListLeases(&ctx, lr, &leases).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::ListCredentialsResponse creds;
    ASSERT_TRUE(admin_->ListCredentials(&ctx, v1::ListCredentialsRequest(), &creds).ok());
    ASSERT_EQ(creds.credentials_size(), 3);
    EXPECT_EQ(creds.credentials(0).name(), "test/race");
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
    EXPECT_EQ(admin_->GetUsage(&ctx, ur, &usage).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::ResetCredentialRequest rr;
    rr.set_credential("");
    v1::ResetCredentialResponse reset;
    EXPECT_EQ(admin_->ResetCredential(&ctx, rr, &reset).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
}

TEST_F(ServerTest, ResetZeroesCountersAndReloadKeepsThem) {
  v1::AcquireRequest req = Req("test/race", "calls");
  req.set_cost(7);
  v1::AcquireResponse acquired;
  ASSERT_TRUE(Acquire(req, &acquired).ok());
  {
    grpc::ClientContext ctx;
    v1::ReloadConfigResponse reloaded;
    ASSERT_TRUE(admin_->ReloadConfig(&ctx, v1::ReloadConfigRequest(), &reloaded).ok());
    EXPECT_EQ(reloaded.credentials(), 3);
    EXPECT_EQ(reloaded.source(), QUOTAD_TEST_CONFIG);
  }
  grpc::ClientContext usage_ctx;
  v1::GetUsageRequest ur;
  ur.set_credential("test/race");
  v1::GetUsageResponse usage;
  ASSERT_TRUE(admin_->GetUsage(&usage_ctx, ur, &usage).ok());
  EXPECT_EQ(usage.limits(0).used(), 7);

  grpc::ClientContext ctx;
  v1::ResetCredentialRequest rr;
  rr.set_credential("test/race");
  v1::ResetCredentialResponse reset;
  ASSERT_TRUE(admin_->ResetCredential(&ctx, rr, &reset).ok());
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
  ASSERT_TRUE(admin_->GetUsage(&ctx, ur, &usage).ok());
  EXPECT_EQ(usage.limits(0).used(), 100);
  EXPECT_EQ(usage.limits(0).remaining(), 0);
}

TEST_F(ServerTest, LeaseExpiresOverTheWireAndFreesTheSlot) {
  // Earlier tests may hold the one slot: leases outlive Reset.
  v1::AcquireResponse first = AcquireWithin(Req("test/short", "jobs"), absl::Seconds(15));
  ASSERT_TRUE(first.granted());
  v1::AcquireResponse second;
  ASSERT_TRUE(Acquire(Req("test/short", "jobs"), &second).ok());
  ASSERT_FALSE(second.granted());
  EXPECT_EQ(second.limited_by(), "jobs.concurrent");

  // The 1 s lease runs out by itself: poll (bounded) until the slot is granted again.
  const absl::Time before = absl::Now();
  v1::AcquireResponse again = AcquireWithin(Req("test/short", "jobs"), absl::Seconds(15));
  ASSERT_TRUE(again.granted()) << "slot never freed";
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(500));  // not before the TTL ran out

  grpc::ClientContext ctx;
  v1::RenewRequest renew;
  renew.set_lease_id(first.lease_id());
  v1::RenewResponse resp;
  EXPECT_EQ(quota_->Renew(&ctx, renew, &resp).error_code(), grpc::StatusCode::NOT_FOUND);

  // The sweeper drops the expired lease from the operators' list as well.
  bool gone = false;
  const absl::Time list_deadline = absl::Now() + absl::Seconds(15);
  while (!gone && absl::Now() < list_deadline) {
    grpc::ClientContext lctx;
    v1::ListLeasesRequest lr;
    lr.set_credential("test/short");
    v1::ListLeasesResponse leases;
    ASSERT_TRUE(admin_->ListLeases(&lctx, lr, &leases).ok());
    gone = true;
    for (const v1::Lease& l : leases.leases()) gone = gone && l.lease_id() != first.lease_id();
    if (!gone) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(gone);
}

TEST_F(ServerTest, HealthIsServing) {
  auto health = Health::NewStub(channel_);
  for (const char* service : {"", "quotad.v1.Quota", "quotad.v1.Admin"}) {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << service;
  }
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  req.set_service("no.such.Service");
  HealthCheckResponse resp;
  EXPECT_EQ(health->Check(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(ServerStartTest, FailsFastOnBadConfigAndBusyPort) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.memory_only = true;
  options.config_path = "/nonexistent/quotad.yaml";
  absl::StatusOr<std::unique_ptr<QuotadServer>> bad = QuotadServer::Start(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("/nonexistent/quotad.yaml"), absl::string_view::npos);

  options.config_path = QUOTAD_TEST_CONFIG;
  absl::StatusOr<std::unique_ptr<QuotadServer>> first = QuotadServer::Start(options);
  ASSERT_TRUE(first.ok()) << first.status();
  options.listen_address = (*first)->address();
  absl::StatusOr<std::unique_ptr<QuotadServer>> second = QuotadServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find((*first)->address()), absl::string_view::npos)
      << second.status();
}

}  // namespace
}  // namespace quotad

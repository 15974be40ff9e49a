// The real server in process, on port 0 with a real SQLite state file in a temporary directory:
// waiting Acquire calls over the wire (order and spacing, cancellation, the deadline cap,
// shutdown), Report (cooldown, adopted counts, input caps) and request_id deduplication.
// Wall-clock tests on a 5-per-second bucket; every wait is bounded polling, never a fixed sleep.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/server.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::StatusIs;
using ::quotad::testing::TempDir;

class WaitReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.config_path = QUOTAD_DURABLE_CONFIG;
    options.state_path = dir_.File("state.db");
    options.listen_address = "127.0.0.1:0";
    options.sweep_interval = absl::Milliseconds(100);
    options.shutdown_grace = absl::Seconds(5);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_OK(server);
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    quota_ = v1::Quota::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }
  void TearDown() override { server_.reset(); }

  static v1::AcquireRequest Req(const std::string& credential, const std::string& feature,
                                absl::Duration max_wait = absl::ZeroDuration()) {
    v1::AcquireRequest r;
    r.set_credential(credential);
    r.set_feature(feature);
    if (max_wait > absl::ZeroDuration()) {
      r.mutable_max_wait()->set_seconds(absl::ToInt64Seconds(max_wait));
      r.mutable_max_wait()->set_nanos(static_cast<int32_t>(
          absl::ToInt64Nanoseconds(max_wait - absl::Seconds(absl::ToInt64Seconds(max_wait)))));
    }
    return r;
  }

  grpc::Status Acquire(const v1::AcquireRequest& req, v1::AcquireResponse* resp,
                       absl::Duration deadline = absl::Seconds(30)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    return quota_->Acquire(&ctx, req, resp);
  }

  int64_t Used(const std::string& credential, const std::string& limit) {
    grpc::ClientContext ctx;
    v1::GetUsageRequest req;
    req.set_credential(credential);
    v1::GetUsageResponse resp;
    EXPECT_OK(admin_->GetUsage(&ctx, req, &resp));
    for (const v1::LimitStatus& l : resp.limits()) {
      if (l.name() == limit) return l.used();
    }
    ADD_FAILURE() << "no limit " << limit << " in " << resp.DebugString();
    return -1;
  }

  // Takes the bucket's one token so that the next call must wait. `expiry`, when given, gets the
  // lease expiry of that grant (the server's decision time plus the feature's lease TTL).
  void Drain(const std::string& credential, absl::Time* expiry = nullptr) {
    ASSERT_TRUE(Eventually([&] {
      v1::AcquireResponse r;
      if (!Acquire(Req(credential, "calls"), &r).ok() || !r.granted()) return false;
      if (expiry != nullptr) *expiry = Expiry(r);
      return true;
    }));
  }

  static absl::Time Expiry(const v1::AcquireResponse& r) {
    return absl::FromUnixSeconds(r.lease_expires_at().seconds()) +
           absl::Nanoseconds(r.lease_expires_at().nanos());
  }

  TempDir dir_{"wait-report"};
  std::unique_ptr<QuotadServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quota::Stub> quota_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(WaitReportTest, WaitingCallsAreGrantedInArrivalOrderAtTheSpacing) {
  absl::Time drained;
  Drain("test/bucket", &drained);
  constexpr int kClients = 5;
  // Each client's grant as the server decided it: its lease expiry (every lease here has the
  // feature's TTL). Order and spacing are judged on these, not on when a client thread got to
  // run after its answer: on a loaded machine a thread can be descheduled long enough to record
  // its grant after the next one's, or two grants 200 ms apart as 50 ms apart.
  absl::Mutex mu;
  std::vector<std::optional<absl::Time>> granted_at(kClients);
  int granted = 0;
  std::vector<std::thread> clients;
  std::atomic<int> failures{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      v1::AcquireResponse r;
      grpc::Status s = Acquire(Req("test/bucket", "calls", absl::Seconds(10)), &r);
      if (!s.ok() || !r.granted()) {
        failures.fetch_add(1);
        return;
      }
      absl::MutexLock lock(&mu);
      granted_at[i] = Expiry(r);
      ++granted;
    });
    // Arrival order is the order in which calls are parked: wait for each before the next.
    ASSERT_TRUE(Eventually([&] {
      absl::MutexLock lock(&mu);
      return server_->ledger()->waiting() + granted >= i + 1;
    }));
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < kClients; ++i) ASSERT_TRUE(granted_at[i].has_value()) << "client " << i;
  // Granted in arrival order, one token every 200 ms into a bucket of 1: each grant at least
  // 200 ms after the one before (the first: after the drain), never two on one token. The upper
  // bound only says a waiter is woken by the refill, not left to its max_wait of 10 s (a loaded
  // machine may delay a wake-up by a few 100 ms).
  for (int i = 0; i < kClients; ++i) {
    const absl::Duration gap = *granted_at[i] - (i == 0 ? drained : *granted_at[i - 1]);
    EXPECT_GE(gap, absl::Milliseconds(200)) << "client " << i << " (arrival order)";
    EXPECT_LE(gap, absl::Seconds(2)) << "client " << i;
  }
  EXPECT_EQ(server_->ledger()->waiting(), 0);
}

TEST_F(WaitReportTest, CancelledWaitingCallLeavesTheQueue) {
  Drain("test/bucket2");
  grpc::ClientContext cancelled_ctx;
  grpc::Status cancelled_status;
  std::thread leaver([&] {
    v1::AcquireResponse r;
    cancelled_status =
        quota_->Acquire(&cancelled_ctx, Req("test/bucket2", "calls", absl::Seconds(30)), &r);
  });
  ASSERT_TRUE(Eventually([&] { return server_->ledger()->waiting() == 1; }));
  cancelled_ctx.TryCancel();
  leaver.join();
  EXPECT_THAT(cancelled_status, StatusIs(absl::StatusCode::kCancelled));
  // Cancel() took it out of the queue: nothing waits, and the next token goes to a later call.
  ASSERT_TRUE(Eventually([&] { return server_->ledger()->waiting() == 0; }));
  v1::AcquireResponse later;
  ASSERT_OK(Acquire(Req("test/bucket2", "calls", absl::Seconds(5)), &later));
  EXPECT_TRUE(later.granted());
}

TEST_F(WaitReportTest, FullQueueIsResourceExhaustedNamingTheCredential) {
  server_.reset();
  ServerOptions options;
  options.config_path = QUOTAD_DURABLE_CONFIG;
  options.memory_only = true;
  options.listen_address = "127.0.0.1:0";
  options.max_waiters_per_credential = 1;
  absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
  ASSERT_OK(server);
  server_ = *std::move(server);
  channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  quota_ = v1::Quota::NewStub(channel_);
  // The only slot is held for an hour: whoever waits for it stays in the queue.
  v1::AcquireResponse held;
  ASSERT_OK(Acquire(Req("test/daily", "jobs"), &held));
  ASSERT_TRUE(held.granted());
  grpc::ClientContext waiter_ctx;
  std::thread waiter([&] {
    v1::AcquireResponse r;
    quota_->Acquire(&waiter_ctx, Req("test/daily", "jobs", absl::Seconds(30)), &r);
  });
  ASSERT_TRUE(Eventually([&] { return server_->ledger()->waiting() == 1; }));
  v1::AcquireResponse r;
  grpc::Status s = Acquire(Req("test/daily", "jobs", absl::Seconds(30)), &r);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(s.error_message().find("test/daily"), std::string::npos) << s.error_message();
  waiter_ctx.TryCancel();
  waiter.join();
}

TEST_F(WaitReportTest, MaxWaitIsCappedAtTheCallDeadline) {
  Drain("test/bucket3");
  // Hold the queue with a long waiter so that the next token is far away for the second one.
  for (int round = 0; round < 3; ++round) {
    v1::AcquireResponse r;
    const absl::Time began = absl::Now();
    grpc::Status s =
        Acquire(Req("test/bucket3", "calls", absl::Minutes(30)), &r, absl::Milliseconds(100));
    // Either granted within the deadline, or the deadline passed: never held for 30 minutes.
    EXPECT_LT(absl::Now() - began, absl::Seconds(5));
    if (s.ok()) {
      EXPECT_TRUE(r.granted() || !r.limited_by().empty());
    }
  }
  ASSERT_TRUE(Eventually([&] { return server_->ledger()->waiting() == 0; }));
}

TEST_F(WaitReportTest, ShutdownAnswersWaitingCallsUnavailable) {
  Drain("test/bucket");
  // Three waiters: the first may be granted by the next refill; the rest must be answered by
  // the shutdown, UNAVAILABLE, long before their 60 s wait ends.
  constexpr int kClients = 3;
  std::vector<grpc::Status> statuses(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      v1::AcquireResponse r;
      statuses[i] = Acquire(Req("test/bucket", "calls", absl::Seconds(60)), &r);
    });
  }
  ASSERT_TRUE(Eventually([&] { return server_->ledger()->waiting() >= kClients - 1; }));
  const absl::Time began = absl::Now();
  server_->Shutdown();
  for (std::thread& t : clients) t.join();
  EXPECT_LT(absl::Now() - began, absl::Seconds(5));
  int unavailable = 0;
  for (const grpc::Status& s : statuses) {
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
      ++unavailable;
      EXPECT_NE(s.error_message().find("shutting down"), std::string::npos) << s.error_message();
    }
  }
  EXPECT_GE(unavailable, kClients - 1);
}

TEST_F(WaitReportTest, ThrottleReportPutsTheFeatureIntoCooldown) {
  grpc::ClientContext ctx;
  v1::ReportRequest req;
  req.set_credential("test/report");
  req.set_feature("requests");
  req.set_http_status(429);
  v1::Header* h = req.add_headers();
  h->set_name("Retry-After");
  h->set_value("12");
  v1::ReportResponse resp;
  const absl::Time before = absl::Now();
  ASSERT_OK(quota_->Report(&ctx, req, &resp));
  ASSERT_TRUE(resp.has_cooldown_until());
  const absl::Time until = absl::FromUnixSeconds(resp.cooldown_until().seconds());
  EXPECT_GE(until, before + absl::Seconds(10));
  EXPECT_LE(until, absl::Now() + absl::Seconds(13));

  v1::AcquireResponse denied;
  ASSERT_OK(Acquire(Req("test/report", "requests"), &denied));
  EXPECT_FALSE(denied.granted());
  EXPECT_EQ(denied.limited_by(), "requests.cooldown");
  EXPECT_GE(denied.retry_after().seconds(), 10);

  // And usage shows it, until when.
  grpc::ClientContext usage_ctx;
  v1::GetUsageRequest usage_req;
  usage_req.set_credential("test/report");
  v1::GetUsageResponse usage;
  ASSERT_OK(admin_->GetUsage(&usage_ctx, usage_req, &usage));
  const v1::LimitStatus* cooldown = nullptr;
  for (const v1::LimitStatus& l : usage.limits()) {
    if (l.name() == "requests.cooldown") cooldown = &l;
  }
  ASSERT_NE(cooldown, nullptr) << usage.DebugString();
  EXPECT_EQ(cooldown->kind(), v1::LIMIT_KIND_COOLDOWN);
  EXPECT_EQ(cooldown->reset_at().seconds(), resp.cooldown_until().seconds());
}

TEST_F(WaitReportTest, ReportAdoptsTheUpstreamCountInUsage) {
  v1::AcquireResponse r;
  ASSERT_OK(Acquire(Req("test/report", "requests"), &r));
  ASSERT_TRUE(r.granted());
  grpc::ClientContext ctx;
  v1::ReportRequest req;
  req.set_credential("test/report");
  req.set_feature("requests");
  req.set_http_status(200);
  for (auto [name, value] : {std::pair<const char*, const char*>{"X-RateLimit-Limit", "100"},
                             {"X-RateLimit-Remaining", "60"},
                             {"X-RateLimit-Remaining-Bogus", "x"}}) {
    v1::Header* h = req.add_headers();
    h->set_name(name);
    h->set_value(value);
  }
  v1::ReportResponse resp;
  ASSERT_OK(quota_->Report(&ctx, req, &resp));
  EXPECT_EQ(resp.adopted_size(), 1) << resp.DebugString();
  EXPECT_FALSE(resp.has_cooldown_until());
  EXPECT_EQ(Used("test/report", "requests.per_minute"), 40);
}

TEST_F(WaitReportTest, ReportRejectsOversizedInputNamingTheValue) {
  auto report = [&](const v1::ReportRequest& req) {
    grpc::ClientContext ctx;
    v1::ReportResponse resp;
    return quota_->Report(&ctx, req, &resp);
  };
  v1::ReportRequest base;
  base.set_credential("test/report");
  base.set_feature("requests");
  base.set_http_status(429);

  v1::ReportRequest many = base;
  for (int i = 0; i < 65; ++i) {
    v1::Header* h = many.add_headers();
    h->set_name(absl::StrCat("X-H", i));
    h->set_value("1");
  }
  grpc::Status s = report(many);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("65"), std::string::npos) << s.error_message();

  v1::ReportRequest long_value = base;
  v1::Header* h = long_value.add_headers();
  h->set_name("Retry-After");
  h->set_value(std::string(9000, '1'));
  s = report(long_value);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("9000 bytes"), std::string::npos) << s.error_message();

  v1::ReportRequest big_body = base;
  big_body.set_body(std::string(70000, 'x'));
  s = report(big_body);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("body is 70000 bytes"), std::string::npos) << s.error_message();

  v1::ReportRequest bad_status = base;
  bad_status.set_http_status(42);
  s = report(bad_status);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("http_status 42"), std::string::npos) << s.error_message();

  v1::ReportRequest unknown = base;
  unknown.set_feature("nothing");
  EXPECT_THAT(report(unknown), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(WaitReportTest, RetriedRequestIdGetsTheFirstGrantAndChargesOnce) {
  v1::AcquireRequest req = Req("test/dedup", "calls");
  req.set_request_id("job-17/attempt");
  v1::AcquireResponse first, second;
  ASSERT_OK(Acquire(req, &first));
  ASSERT_TRUE(first.granted());
  ASSERT_OK(Acquire(req, &second));
  EXPECT_EQ(second.lease_id(), first.lease_id());
  EXPECT_EQ(Used("test/dedup", "calls.per_day"), 1);

  // Concurrent copies of one new request: one grant stands, every copy gets it, one charge.
  v1::AcquireRequest racing = Req("test/dedup", "calls");
  racing.set_request_id("race-1");
  constexpr int kCopies = 8;
  std::vector<std::string> ids(kCopies);
  std::vector<std::thread> copies;
  for (int i = 0; i < kCopies; ++i) {
    copies.emplace_back([&, i] {
      v1::AcquireResponse r;
      if (Acquire(racing, &r).ok() && r.granted()) ids[i] = r.lease_id();
    });
  }
  for (std::thread& t : copies) t.join();
  for (const std::string& id : ids) EXPECT_EQ(id, ids[0]);
  EXPECT_FALSE(ids[0].empty());
  EXPECT_EQ(Used("test/dedup", "calls.per_day"), 2);

  // Release by request_id: a retry gets the first answer instead of NOT_FOUND.
  v1::AcquireRequest job = Req("test/dedup", "jobs");
  v1::AcquireResponse lease;
  ASSERT_OK(Acquire(job, &lease));
  ASSERT_TRUE(lease.granted());
  v1::ReleaseRequest rel;
  rel.set_lease_id(lease.lease_id());
  rel.set_request_id("release-1");
  for (int attempt = 0; attempt < 2; ++attempt) {
    grpc::ClientContext ctx;
    v1::ReleaseResponse resp;
    grpc::Status s = quota_->Release(&ctx, rel, &resp);
    ASSERT_OK(s) << "attempt " << attempt;
    EXPECT_EQ(resp.freed(), 1);
  }
}

}  // namespace
}  // namespace quotad

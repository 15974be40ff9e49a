// quotad_client against the real quotad binary on port 0: leases released on scope exit, renewal
// past the TTL, a killed worker's slot freed by the TTL, retries that keep their request_id across
// a lost answer and a server restart, and prefetch that never hands out more than was granted.
// Waits are bounded polls on a condition, never fixed sleeps.

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/client/prefetch.h"
#include "quotad/client/quota_client.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "tests/support/child_process.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace client {
namespace {

using ::quotad::testing::ChildProcess;
using ::quotad::testing::Eventually;
using ::quotad::testing::IsOk;
using ::quotad::testing::QuotadHasFlag;
using ::quotad::testing::StatusIs;
using ::quotad::testing::TempDir;
using ::testing::Not;

// Records the request_id of every Acquire attempt and can turn the first answer into UNAVAILABLE
// (the answer is lost after quotad charged), calling `on_lost_answer` right then.
struct AttemptLog {
  absl::Mutex mu;
  std::vector<std::string> acquire_ids ABSL_GUARDED_BY(mu);
  std::vector<grpc::StatusCode> acquire_codes ABSL_GUARDED_BY(mu);
  bool lose_next_answer ABSL_GUARDED_BY(mu) = false;
  std::function<void()> on_lost_answer;

  std::vector<std::string> ids() {
    absl::MutexLock lock(&mu);
    return acquire_ids;
  }
  int failures() {
    absl::MutexLock lock(&mu);
    int n = 0;
    for (grpc::StatusCode c : acquire_codes) n += c != grpc::StatusCode::OK;
    return n;
  }
};

class RecordingInterceptor : public grpc::experimental::Interceptor {
 public:
  RecordingInterceptor(grpc::experimental::ClientRpcInfo* info, AttemptLog* log)
      : acquire_(std::string(info->method()) == "/quotad.v1.Quota/Acquire"), log_(log) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (acquire_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      const auto* req = static_cast<const v1::AcquireRequest*>(methods->GetSendMessage());
      if (req != nullptr) {
        absl::MutexLock lock(&log_->mu);
        log_->acquire_ids.push_back(req->request_id());
      }
    }
    if (acquire_ && methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
      grpc::Status* status = methods->GetRecvStatus();
      bool lose = false;
      {
        absl::MutexLock lock(&log_->mu);
        if (status->ok() && log_->lose_next_answer) {
          log_->lose_next_answer = false;
          lose = true;
          *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "answer lost by the test");
        }
        log_->acquire_codes.push_back(status->error_code());
      }
      if (lose && log_->on_lost_answer) log_->on_lost_answer();
    }
    methods->Proceed();
  }

 private:
  const bool acquire_;
  AttemptLog* const log_;
};

class RecordingFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit RecordingFactory(AttemptLog* log) : log_(log) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new RecordingInterceptor(info, log_);
  }

 private:
  AttemptLog* const log_;
};

std::shared_ptr<grpc::Channel> RecordingChannel(const std::string& target, AttemptLog* log) {
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  factories.push_back(std::make_unique<RecordingFactory>(log));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, grpc::InsecureChannelCredentials(), grpc::ChannelArguments(), std::move(factories));
}

// Starts quotad on 127.0.0.1:`port` (0: any). With --state when the binary has it (so that
// dedup and leases survive a restart), else in memory.
std::unique_ptr<ChildProcess> StartQuotad(int port, const std::string& state_path) {
  std::vector<std::string> args = {absl::StrCat("--config=", QUOTAD_CLIENT_TEST_CONFIG),
                                   absl::StrCat("--listen=127.0.0.1:", port),
                                   "--sweep_interval=50ms"};
  static const bool has_state = QuotadHasFlag(QUOTAD_BINARY, "state");
  static const bool has_memory_only = QuotadHasFlag(QUOTAD_BINARY, "memory_only");
  if (has_state && !state_path.empty()) {
    args.push_back(absl::StrCat("--state=", state_path));
  } else if (has_memory_only) {
    args.push_back("--memory_only");
  }
  return std::make_unique<ChildProcess>(QUOTAD_BINARY, args);
}

class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    static const bool has_memory_only = QuotadHasFlag(QUOTAD_BINARY, "memory_only");
    std::vector<std::string> args = {absl::StrCat("--config=", QUOTAD_CLIENT_TEST_CONFIG),
                                     "--listen=127.0.0.1:0", "--sweep_interval=50ms"};
    if (has_memory_only) args.push_back("--memory_only");
    server_ = new ChildProcess(QUOTAD_BINARY, args);
    std::optional<int> port = server_->WaitForPort(absl::Seconds(20));
    ASSERT_TRUE(port.has_value()) << server_->log();
    address_ = new std::string(absl::StrCat("127.0.0.1:", *port));
  }
  static void TearDownTestSuite() {
    delete server_;
    delete address_;
  }

  void SetUp() override {
    ASSERT_NE(address_, nullptr);
    channel_ = grpc::CreateChannel(*address_, grpc::InsecureChannelCredentials());
    admin_ = v1::Admin::NewStub(channel_);
    ClientOptions options;
    options.holder = "client_test";
    client_ = std::make_unique<QuotaClient>(channel_, options);
  }

  // Units used on the credential's first limit.
  int64_t Used(const std::string& credential) { return Used(admin_.get(), credential); }
  static int64_t Used(v1::Admin::Stub* admin, const std::string& credential) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetUsageRequest req;
    req.set_credential(credential);
    v1::GetUsageResponse resp;
    grpc::Status s = admin->GetUsage(&ctx, req, &resp);
    EXPECT_OK(s);
    return resp.limits_size() > 0 ? resp.limits(0).used() : -1;
  }

  std::vector<v1::Lease> Leases(const std::string& credential) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ListLeasesRequest req;
    req.set_credential(credential);
    v1::ListLeasesResponse resp;
    EXPECT_OK(admin_->ListLeases(&ctx, req, &resp));
    return {resp.leases().begin(), resp.leases().end()};
  }

  static ChildProcess* server_;
  static std::string* address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<QuotaClient> client_;
};

ChildProcess* ClientTest::server_ = nullptr;
std::string* ClientTest::address_ = nullptr;

TEST_F(ClientTest, LeaseIsReleasedOnScopeExit) {
  {
    absl::StatusOr<Lease> lease = client_->Acquire("test/scope", "jobs");
    ASSERT_OK(lease);
    ASSERT_TRUE(lease->granted());
    EXPECT_EQ(lease->id().size(), 32u);
    EXPECT_EQ(Leases("test/scope").size(), 1u);
    EXPECT_EQ(Leases("test/scope")[0].holder(), "client_test");

    // The only slot is taken: a denial is data, not an error.
    absl::StatusOr<Lease> denied = client_->Acquire("test/scope", "jobs");
    ASSERT_OK(denied);
    EXPECT_FALSE(denied->granted());
    EXPECT_EQ(denied->limited_by(), "jobs.concurrent");
    EXPECT_THAT(denied->Release(), Not(IsOk()));  // a denial holds nothing
  }
  EXPECT_TRUE(Leases("test/scope").empty());
  absl::StatusOr<Lease> again = client_->Acquire("test/scope", "jobs");
  ASSERT_OK(again);
  EXPECT_TRUE(again->granted()) << "the slot was not freed on scope exit";
}

TEST_F(ClientTest, MovedLeaseIsReleasedOnceByItsLastOwner) {
  std::optional<Lease> outer;
  {
    absl::StatusOr<Lease> lease = client_->Acquire("test/scope", "jobs");
    ASSERT_OK(lease);
    ASSERT_TRUE(lease->granted());
    outer = std::move(*lease);
  }
  EXPECT_TRUE(outer->held());
  EXPECT_EQ(Leases("test/scope").size(), 1u);
  outer.reset();
  EXPECT_TRUE(Leases("test/scope").empty());
}

TEST_F(ClientTest, CommitRefundsWhatTheUpstreamDidNotCharge) {
  AcquireOptions options;
  options.cost = 10;
  absl::StatusOr<Lease> lease = client_->Acquire("test/commit", "calls", options);
  ASSERT_OK(lease);
  ASSERT_TRUE(lease->granted());
  EXPECT_EQ(Used("test/commit"), 10);
  EXPECT_THAT(lease->Commit(11), Not(IsOk()));  // more than the cost
  absl::StatusOr<ReleaseResult> result = lease->Commit(3);
  ASSERT_OK(result);
  EXPECT_EQ(result->refunded, 7);
  EXPECT_EQ(Used("test/commit"), 3);
  EXPECT_FALSE(lease->held());
  EXPECT_THAT(lease->Commit(3), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(ClientTest, RenewalKeepsALongJobAlivePastItsTtl) {
  AcquireOptions options;
  options.lease_ttl = absl::Seconds(1);
  absl::StatusOr<Lease> lease = client_->Acquire("test/renew", "jobs", options);
  ASSERT_OK(lease);
  ASSERT_TRUE(lease->granted());
  const absl::Time first_expiry = lease->expires_at();

  // Three TTLs later (as the server's renewals show) the lease is still held by quotad.
  ASSERT_TRUE(Eventually([&] { return lease->expires_at() > first_expiry + absl::Seconds(3); }))
      << "no renewal moved the expiry; lost: " << lease->lost_status();
  EXPECT_FALSE(lease->lost()) << lease->lost_status();
  std::vector<v1::Lease> live = Leases("test/renew");
  ASSERT_EQ(live.size(), 1u);
  EXPECT_EQ(live[0].lease_id(), lease->id());
  absl::StatusOr<Lease> other = client_->Acquire("test/renew", "jobs");
  ASSERT_OK(other);
  EXPECT_FALSE(other->granted()) << "the renewed slot was handed out again";

  ASSERT_OK(lease->Release());
  absl::StatusOr<Lease> after = client_->Acquire("test/renew", "jobs");
  ASSERT_OK(after);
  EXPECT_TRUE(after->granted());
}

TEST_F(ClientTest, KillingAWorkerFreesItsSlotAfterTheTtl) {
  ChildProcess worker(LEASE_HOLDER_BINARY, {*address_, "test/kill", "jobs", "1000"});
  std::optional<std::string> id = worker.WaitForLine("held lease=", absl::Seconds(20));
  ASSERT_TRUE(id.has_value()) << worker.log();

  // The worker renews its lease: it outlives its first expiry while the worker lives.
  std::vector<v1::Lease> live = Leases("test/kill");
  ASSERT_EQ(live.size(), 1u);
  const int64_t first_expiry =
      live[0].expires_at().seconds() * 1000 + live[0].expires_at().nanos() / 1000000;
  ASSERT_TRUE(Eventually([&] {
    std::vector<v1::Lease> now = Leases("test/kill");
    return now.size() == 1 &&
           now[0].expires_at().seconds() * 1000 + now[0].expires_at().nanos() / 1000000 >
               first_expiry + 1000;
  })) << worker.log();
  absl::StatusOr<Lease> denied = client_->Acquire("test/kill", "jobs");
  ASSERT_OK(denied);
  EXPECT_FALSE(denied->granted());

  worker.Signal(SIGKILL);
  ASSERT_EQ(worker.WaitForExit(absl::Seconds(10)), std::optional<int>(-SIGKILL));
  const absl::Time killed = absl::Now();
  std::optional<Lease> freed;
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<Lease> lease = client_->Acquire("test/kill", "jobs");
    if (!lease.ok() || !lease->granted()) return false;
    freed = std::move(*lease);
    return true;
  })) << "the killed worker's slot was never freed";
  EXPECT_LE(absl::Now() - killed, absl::Seconds(5));
}

TEST_F(ClientTest, LosingALeaseIsVisibleToItsHolder) {
  // A server of its own, killed while the lease is held: renewals fail until it has expired.
  std::unique_ptr<ChildProcess> server = StartQuotad(0, "");
  std::optional<int> port = server->WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << server->log();
  ClientOptions client_options;
  client_options.retry.max_attempts = 1;
  QuotaClient client(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials()),
      client_options);
  std::atomic<int> callbacks{0};
  AcquireOptions options;
  options.lease_ttl = absl::Milliseconds(600);
  options.on_lost = [&](const absl::Status&) { ++callbacks; };
  absl::StatusOr<Lease> lease = client.Acquire("test/lost", "jobs", options);
  ASSERT_OK(lease);
  ASSERT_TRUE(lease->granted());
  server->Signal(SIGKILL);
  server->WaitForExit(absl::Seconds(10));
  ASSERT_TRUE(Eventually([&] { return lease->lost(); }));
  EXPECT_THAT(lease->lost_status(), StatusIs(absl::StatusCode::kDeadlineExceeded))
      << lease->lost_status();
  EXPECT_TRUE(Eventually([&] { return callbacks.load() == 1; }));
  EXPECT_FALSE(lease->held());
}

TEST_F(ClientTest, RetriedAcquireWithALostAnswerIsChargedOnce) {
  AttemptLog log;
  {
    absl::MutexLock lock(&log.mu);
    log.lose_next_answer = true;
  }
  QuotaClient client(RecordingChannel(*address_, &log));
  AcquireOptions options;
  options.cost = 5;
  absl::StatusOr<Lease> lease = client.Acquire("test/dedup", "calls", options);
  ASSERT_OK(lease);
  ASSERT_TRUE(lease->granted());
  const std::vector<std::string> ids = log.ids();
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], ids[1]) << "the retry must carry the same request_id";
  EXPECT_EQ(ids[0], lease->request_id());
  EXPECT_EQ(ids[0].size(), 32u);
  EXPECT_EQ(Used("test/dedup"), 5) << "the retried Acquire was charged twice";
}

TEST_F(ClientTest, RetriesAroundAServerRestartDoNotDoubleCharge) {
  const TempDir state_dir("client-state");
  const std::string state = state_dir.File("quotad.db");
  std::unique_ptr<ChildProcess> server = StartQuotad(0, state);
  std::optional<int> port = server->WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << server->log();
  const std::string address = absl::StrCat("127.0.0.1:", *port);

  // The first answer is lost after quotad charged; quotad then goes down and comes back on the
  // same port while the client keeps retrying.
  AttemptLog log;
  std::thread restarter;
  std::mutex restarted_mu;
  std::unique_ptr<ChildProcess> restarted;
  log.on_lost_answer = [&] {
    server->Signal(SIGTERM);
    server->WaitForExit(absl::Seconds(20));
    restarter = std::thread([&] {
      // Let a few retries meet the closed port before quotad is back.
      Eventually([&] { return log.failures() >= 3; });
      std::lock_guard<std::mutex> lock(restarted_mu);
      restarted = StartQuotad(*port, state);
    });
  };
  {
    absl::MutexLock lock(&log.mu);
    log.lose_next_answer = true;
  }
  ClientOptions client_options;
  client_options.retry.max_attempts = 100;
  client_options.retry.initial_backoff = absl::Milliseconds(20);
  client_options.retry.max_backoff = absl::Milliseconds(200);
  QuotaClient client(RecordingChannel(address, &log), client_options);
  AcquireOptions options;
  options.cost = 5;
  // A control credential charged once the plain way: quotad restores durable state
  // conservatively (reserved blocks count as used), so after the restart the retried credential
  // must look exactly like the control, not like two charges.
  QuotaClient plain(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  absl::StatusOr<Lease> control = plain.Acquire("test/restart_control", "calls", options);
  ASSERT_OK(control);
  ASSERT_TRUE(control->granted());
  absl::StatusOr<Lease> lease = client.Acquire("test/restart", "calls", options);
  if (restarter.joinable()) restarter.join();
  ASSERT_OK(lease);
  EXPECT_TRUE(lease->granted());
  const std::vector<std::string> ids = log.ids();
  ASSERT_GE(ids.size(), 3u);
  for (const std::string& id : ids) EXPECT_EQ(id, ids[0]) << "a retry changed its request_id";
  EXPECT_GE(log.failures(), 3);

  std::lock_guard<std::mutex> lock(restarted_mu);
  ASSERT_NE(restarted, nullptr);
  auto admin = v1::Admin::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const int64_t used = Used(admin.get(), "test/restart");
  EXPECT_GE(used, 5);
  EXPECT_LT(used, 10) << "the retried Acquire was charged twice";
  EXPECT_EQ(used, Used(admin.get(), "test/restart_control")) << restarted->log();
  lease->Commit(5).IgnoreError();
  control->Commit(5).IgnoreError();
}

TEST_F(ClientTest, PrefetchNeverHandsOutMoreThanGranted) {
  PrefetchPool::Options options;
  options.block_size = 16;
  PrefetchPool pool(client_.get(), "test/prefetch", "calls", options);
  std::atomic<int64_t> taken{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (;;) {
        absl::StatusOr<bool> unit = pool.Take();
        ASSERT_OK(unit);
        if (!*unit) return;
        ++taken;
        const PrefetchPool::Counts counts = pool.counts();
        EXPECT_LE(counts.handed_out, counts.granted);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // 100 units per hour: 6 blocks of 16, then the last 4 in a smaller block.
  EXPECT_EQ(taken.load(), 100);
  EXPECT_EQ(pool.handed_out(), 100);
  EXPECT_EQ(pool.granted(), 100);
  EXPECT_EQ(Used("test/prefetch"), 100);
  EXPECT_GT(pool.retry_after(), absl::ZeroDuration());
  EXPECT_OK(pool.Shutdown());
  EXPECT_EQ(Used("test/prefetch"), 100);
  EXPECT_THAT(pool.Take(), Not(IsOk()));
}

TEST_F(ClientTest, PrefetchReturnsUnusedUnitsOnShutdown) {
  PrefetchPool::Options options;
  options.block_size = 16;
  {
    PrefetchPool pool(client_.get(), "test/prefetch_refund", "calls", options);
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(*pool.Take());
    EXPECT_EQ(Used("test/prefetch_refund"), 16);
  }
  EXPECT_EQ(Used("test/prefetch_refund"), 5);
}

TEST(ClientVersionTest, ReportsTheProjectVersion) { EXPECT_STREQ(Version(), QUOTAD_VERSION); }

TEST(RequestIdTest, IsRandom128BitHex) {
  const std::string a = NewRequestId(), b = NewRequestId();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace client
}  // namespace quotad

// Batches over the wire: QuotaClient::AcquireBatch/ReleaseBatch and quotactl's acquire-batch and
// release-batch against the real quotad binary on port 0. A batch grants exactly the capacity
// left across its items and never more (also with batches racing), each item's error names the
// item, and a request_id retried in a batch (a lost answer, a re-sent batch) charges once.

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_interceptor.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/client/quota_client.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "tests/support/child_process.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace client {
namespace {

using ::quotad::testing::ChildProcess;
using ::quotad::testing::IsOk;
using ::quotad::testing::QuotadHasFlag;
using ::quotad::testing::StatusIs;
using ::quotad::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

// Records the request_ids of every AcquireBatch and ReleaseBatch attempt, and can turn the
// first answer of each into UNAVAILABLE after quotad decided it (the answer is lost), so that
// the client retries.
struct BatchLog {
  absl::Mutex mu;
  std::vector<std::vector<std::string>> acquire_attempts ABSL_GUARDED_BY(mu);
  std::vector<std::vector<std::string>> release_attempts ABSL_GUARDED_BY(mu);
  bool lose_acquire_answer ABSL_GUARDED_BY(mu) = false;
  bool lose_release_answer ABSL_GUARDED_BY(mu) = false;
};

class BatchInterceptor : public grpc::experimental::Interceptor {
 public:
  BatchInterceptor(grpc::experimental::ClientRpcInfo* info, BatchLog* log)
      : acquire_(std::string(info->method()) == "/quotad.v1.Quota/AcquireBatch"),
        release_(std::string(info->method()) == "/quotad.v1.Quota/ReleaseBatch"),
        log_(log) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      std::vector<std::string> ids;
      if (acquire_) {
        const auto* req = static_cast<const v1::AcquireBatchRequest*>(methods->GetSendMessage());
        for (const v1::AcquireRequest& item : req->items()) ids.push_back(item.request_id());
      }
      if (release_) {
        const auto* req = static_cast<const v1::ReleaseBatchRequest*>(methods->GetSendMessage());
        for (const v1::ReleaseRequest& item : req->items()) ids.push_back(item.request_id());
      }
      absl::MutexLock lock(&log_->mu);
      if (acquire_) log_->acquire_attempts.push_back(ids);
      if (release_) log_->release_attempts.push_back(ids);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_STATUS)) {
      grpc::Status* status = methods->GetRecvStatus();
      absl::MutexLock lock(&log_->mu);
      bool* lose = acquire_   ? &log_->lose_acquire_answer
                   : release_ ? &log_->lose_release_answer
                              : nullptr;
      if (lose != nullptr && *lose && status->ok()) {
        *lose = false;
        *status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "answer lost by the test");
      }
    }
    methods->Proceed();
  }

 private:
  const bool acquire_;
  const bool release_;
  BatchLog* const log_;
};

class BatchInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BatchInterceptorFactory(BatchLog* log) : log_(log) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* info) override {
    return new BatchInterceptor(info, log_);
  }

 private:
  BatchLog* const log_;
};

// Runs `command` through the shell; returns its exit code and fills `output` with its stdout
// and stderr.
int RunShell(const std::string& command, std::string* output) {
  FILE* pipe = popen(absl::StrCat(command, " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  output->clear();
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The lease ids of the granted rows of quotactl acquire-batch's table, in item order.
std::vector<std::string> GrantedLeases(const std::string& table) {
  std::vector<std::string> ids;
  for (absl::string_view line : absl::StrSplit(table, '\n')) {
    std::vector<std::string> cells = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (cells.size() >= 5 && cells[3] == "granted") ids.push_back(cells[4]);
  }
  return ids;
}

AcquireItem Item(const std::string& credential, const std::string& feature, int64_t cost) {
  AcquireItem item;
  item.credential = credential;
  item.feature = feature;
  item.options.cost = cost;
  return item;
}

class BatchTest : public ::testing::Test {
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
    options.holder = "batch_test";
    client_ = std::make_unique<QuotaClient>(channel_, options);
  }

  // Units used on the credential's first limit.
  int64_t Used(const std::string& credential) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetUsageRequest req;
    req.set_credential(credential);
    v1::GetUsageResponse resp;
    EXPECT_OK(admin_->GetUsage(&ctx, req, &resp));
    return resp.limits_size() > 0 ? resp.limits(0).used() : -1;
  }

  // A client whose batches go through `log`.
  std::unique_ptr<QuotaClient> LoggedClient(BatchLog* log) {
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
    factories.push_back(std::make_unique<BatchInterceptorFactory>(log));
    ClientOptions options;
    options.retry.initial_backoff = absl::Milliseconds(10);
    return std::make_unique<QuotaClient>(grpc::experimental::CreateCustomChannelWithInterceptors(
                                             *address_, grpc::InsecureChannelCredentials(),
                                             grpc::ChannelArguments(), std::move(factories)),
                                         options);
  }

  std::string Quotactl() const { return absl::StrCat(QUOTACTL_BINARY, " --server=", *address_); }

  static ChildProcess* server_;
  static std::string* address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<QuotaClient> client_;
};

ChildProcess* BatchTest::server_ = nullptr;
std::string* BatchTest::address_ = nullptr;

TEST_F(BatchTest, GrantsExactlyTheCapacityLeftInItemOrder) {
  // 100 units per hour; 7 taken by a single Acquire: 93 left.
  AcquireOptions seven;
  seven.cost = 7;
  absl::StatusOr<Lease> first = client_->Acquire("test/batch_exact", "calls", seven);
  ASSERT_OK(first);
  ASSERT_TRUE(first->granted());

  // 18 x 5 = 90 fit; a 19th 5 does not (3 left); a 3 then takes exactly the rest; a 1 is too
  // much.
  std::vector<AcquireItem> items;
  for (int i = 0; i < 19; ++i) items.push_back(Item("test/batch_exact", "calls", 5));
  items.push_back(Item("test/batch_exact", "calls", 3));
  items.push_back(Item("test/batch_exact", "calls", 1));
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results = client_->AcquireBatch(items);
  ASSERT_OK(results);
  ASSERT_EQ(results->size(), items.size());

  int64_t granted_units = 0;
  std::set<std::string> lease_ids, request_ids;
  for (size_t i = 0; i < results->size(); ++i) {
    const absl::StatusOr<Lease>& r = (*results)[i];
    ASSERT_OK(r) << "item " << i;
    const bool expect_granted = i < 18 || i == 19;
    EXPECT_EQ(r->granted(), expect_granted) << "item " << i;
    request_ids.insert(r->request_id());
    EXPECT_EQ(r->request_id().size(), 32u) << "item " << i;
    if (r->granted()) {
      granted_units += r->cost();
      EXPECT_EQ(r->cost(), items[i].options.cost);
      EXPECT_EQ(r->id().size(), 32u);
      lease_ids.insert(r->id());
    } else {
      EXPECT_EQ(r->limited_by(), "calls.per_hour") << "item " << i;
      EXPECT_GT(r->retry_after(), absl::ZeroDuration()) << "item " << i;
    }
  }
  EXPECT_EQ(granted_units, 93);
  EXPECT_EQ(lease_ids.size(), 19u);
  EXPECT_EQ(request_ids.size(), items.size()) << "every item needs its own request_id";
  ASSERT_FALSE((*results)[19]->limits().empty());
  EXPECT_EQ((*results)[19]->limits()[0].remaining, 0);
  EXPECT_EQ(Used("test/batch_exact"), 100);
}

TEST_F(BatchTest, DecisionsOnlyGrantsTheSameAndAnswersNoLimits) {
  // 100 units per hour: 30 x 3 = 90 fit, then a 9 fits (1 left), a 2 does not.
  std::vector<AcquireItem> items;
  for (int i = 0; i < 30; ++i) items.push_back(Item("test/batch_decisions", "calls", 3));
  items.push_back(Item("test/batch_decisions", "calls", 9));
  items.push_back(Item("test/batch_decisions", "calls", 2));
  AcquireBatchOptions options;
  options.decisions_only = true;
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results =
      client_->AcquireBatch(items, options);
  ASSERT_OK(results);
  ASSERT_EQ(results->size(), items.size());
  int64_t granted_units = 0;
  for (size_t i = 0; i < results->size(); ++i) {
    const absl::StatusOr<Lease>& r = (*results)[i];
    ASSERT_OK(r) << "item " << i;
    EXPECT_EQ(r->granted(), i < 31) << "item " << i;
    EXPECT_TRUE(r->limits().empty()) << "item " << i;
    if (r->granted()) granted_units += r->cost();
  }
  EXPECT_EQ(granted_units, 99);
  EXPECT_EQ((*results)[31]->limited_by(), "calls.per_hour");
  EXPECT_GT((*results)[31]->retry_after(), absl::ZeroDuration());
  EXPECT_EQ(Used("test/batch_decisions"), 99);
}

TEST_F(BatchTest, RacingBatchesNeverGrantMoreThanTheCapacity) {
  // 4 threads x 3 batches x 40 units against 100 units per hour.
  constexpr int kThreads = 4, kBatches = 3, kItems = 40;
  std::atomic<int64_t> granted{0};
  std::atomic<int> errors{0};
  std::vector<std::vector<Lease>> held(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<AcquireItem> items(kItems, Item("test/batch_race", "calls", 1));
        absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results = client_->AcquireBatch(items);
        if (!results.ok() || results->size() != items.size()) {
          ++errors;
          continue;
        }
        for (absl::StatusOr<Lease>& r : *results) {
          if (!r.ok()) {
            ++errors;
          } else if (r->granted()) {
            granted += r->cost();
            held[t].push_back(*std::move(r));
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(granted.load(), 100);
  EXPECT_EQ(Used("test/batch_race"), 100);
}

// All-or-nothing batches across two credentials race: each batch asks 7 units of one and 3 of
// the other (100 each), so exactly 14 are granted whole, and no batch is granted in part.
TEST_F(BatchTest, AllOrNothingBatchesRacingAreGrantedWholeOrNotAtAll) {
  constexpr int kThreads = 4, kBatches = 6;
  std::atomic<int> whole{0}, none{0}, half{0}, errors{0};
  std::vector<std::vector<Lease>> held(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int b = 0; b < kBatches; ++b) {
        std::vector<AcquireItem> items = {Item("test/aon_a", "calls", 7),
                                          Item("test/aon_b", "calls", 3)};
        absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results =
            client_->AcquireBatch(items, /*all_or_nothing=*/true);
        if (!results.ok() || results->size() != 2 || !(*results)[0].ok() ||
            !(*results)[1].ok()) {
          ++errors;
          continue;
        }
        const int granted = (*results)[0]->granted() + (*results)[1]->granted();
        if (granted == 2) {
          ++whole;
          for (absl::StatusOr<Lease>& r : *results) held[t].push_back(*std::move(r));
        } else if (granted == 0) {
          ++none;
          EXPECT_EQ((*results)[1]->limited_by(), "all_or_nothing:items[0]");
          EXPECT_EQ((*results)[0]->limited_by(), "calls.per_hour");
        } else {
          ++half;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(half.load(), 0);
  EXPECT_EQ(whole.load(), 14);
  EXPECT_EQ(none.load(), kThreads * kBatches - 14);
  EXPECT_EQ(Used("test/aon_a"), 98);
  EXPECT_EQ(Used("test/aon_b"), 42);
  // An item the client refuses (a batch never waits) refuses the batch without a call.
  std::vector<AcquireItem> items = {Item("test/aon_b", "calls", 1), Item("test/aon_b", "calls", 1)};
  items[1].options.client_wait = absl::Seconds(1);
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results =
      client_->AcquireBatch(items, /*all_or_nothing=*/true);
  ASSERT_OK(results);
  EXPECT_THAT((*results)[1], StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("items[1]")));
  ASSERT_OK((*results)[0]);
  EXPECT_FALSE((*results)[0]->granted());
  EXPECT_EQ((*results)[0]->limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(Used("test/aon_b"), 42);
}

TEST_F(BatchTest, QuotactlAllOrNothing) {
  // 60 + 60 > 100: neither is granted; without the flag the first would be.
  std::string out;
  ASSERT_EQ(RunShell(absl::StrCat(Quotactl(), " acquire-batch --all_or_nothing",
                                  " 'test/aon_ctl calls cost=60' 'test/aon_ctl calls cost=60'"),
                     &out),
            1)  // some denied, none failed
      << out;
  EXPECT_TRUE(GrantedLeases(out).empty()) << out;
  EXPECT_THAT(out, HasSubstr("all_or_nothing:items[1]"));
  EXPECT_EQ(Used("test/aon_ctl"), 0);
  ASSERT_EQ(RunShell(absl::StrCat(Quotactl(), " acquire-batch",
                                  " 'test/aon_ctl calls cost=60' 'test/aon_ctl calls cost=60'"),
                     &out),
            1)
      << out;
  EXPECT_EQ(GrantedLeases(out).size(), 1u) << out;
  EXPECT_EQ(Used("test/aon_ctl"), 60);
}

TEST_F(BatchTest, ASlotIsGrantedToOneItemAndFreedByReleaseBatch) {
  std::vector<AcquireItem> items(4, Item("test/batch_slots", "jobs", 1));
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results = client_->AcquireBatch(items);
  ASSERT_OK(results);
  ASSERT_EQ(results->size(), 4u);
  ASSERT_OK((*results)[0]);
  EXPECT_TRUE((*results)[0]->granted());
  for (int i = 1; i < 4; ++i) {
    ASSERT_OK((*results)[i]);
    EXPECT_FALSE((*results)[i]->granted()) << "item " << i << " got the only slot too";
    EXPECT_EQ((*results)[i]->limited_by(), "jobs.concurrent");
  }

  // The granted lease twice and a denial: one release, two errors that name their item.
  Lease& slot = *(*results)[0];
  Lease& denial = *(*results)[1];
  absl::StatusOr<std::vector<absl::StatusOr<ReleaseResult>>> released =
      client_->ReleaseBatch({{&slot, std::nullopt}, {&slot, std::nullopt}, {&denial, 0}});
  ASSERT_OK(released);
  ASSERT_EQ(released->size(), 3u);
  ASSERT_OK((*released)[0]);
  EXPECT_EQ((*released)[0]->freed, 1);
  EXPECT_THAT((*released)[1], StatusIs(absl::StatusCode::kFailedPrecondition,
                                       AllOf(StartsWith("items[1]: "), HasSubstr("released"))));
  EXPECT_THAT((*released)[2], StatusIs(absl::StatusCode::kFailedPrecondition,
                                       StartsWith("items[2]: the lease was not granted")));
  EXPECT_FALSE(slot.held());

  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> again =
      client_->AcquireBatch({Item("test/batch_slots", "jobs", 1)});
  ASSERT_OK(again);
  ASSERT_OK((*again)[0]);
  EXPECT_TRUE((*again)[0]->granted()) << "ReleaseBatch did not free the slot";
}

TEST_F(BatchTest, PerItemErrorsNameTheItemAndChargeNothing) {
  std::vector<AcquireItem> items;
  items.push_back(Item("test/batch_errors", "calls", 2));
  items.push_back(Item("test/batch_errors", "calls", 1));
  items[1].options.client_wait = absl::Seconds(1);  // refused by the client, never sent
  items.push_back(Item("nobody/unknown", "calls", 1));
  items.push_back(Item("test/batch_errors", "calls", 0));
  items.push_back(Item("test/batch_errors", "calls", 1));
  items[4].options.max_wait = absl::Seconds(1);  // refused by quotad
  items.push_back(Item("test/batch_errors", "no_such_feature", 1));
  items.push_back(Item("test/batch_errors", "calls", 3));
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results = client_->AcquireBatch(items);
  ASSERT_OK(results);
  ASSERT_EQ(results->size(), items.size());

  ASSERT_OK((*results)[0]);
  EXPECT_TRUE((*results)[0]->granted());
  EXPECT_THAT((*results)[1], StatusIs(absl::StatusCode::kInvalidArgument,
                                      StartsWith("items[1]: client_wait 1s is not allowed")));
  // quotad numbered this one items[1] (item 1 was not sent); the client names it as the caller
  // does.
  EXPECT_THAT((*results)[2], StatusIs(absl::StatusCode::kNotFound,
                                      AllOf(StartsWith("items[2]: "), HasSubstr("nobody/unknown"),
                                            Not(HasSubstr("items[1]")))));
  EXPECT_THAT((*results)[3],
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(StartsWith("items[3]: "), HasSubstr("cost"), HasSubstr("0"))));
  EXPECT_THAT((*results)[4], StatusIs(absl::StatusCode::kInvalidArgument,
                                      AllOf(StartsWith("items[4]: "), HasSubstr("max_wait"))));
  EXPECT_THAT((*results)[5],
              StatusIs(absl::StatusCode::kNotFound,
                       AllOf(StartsWith("items[5]: "), HasSubstr("no_such_feature"))));
  ASSERT_OK((*results)[6]);
  EXPECT_TRUE((*results)[6]->granted());
  EXPECT_EQ(Used("test/batch_errors"), 5) << "a refused item was charged";

  // A bad `used` is refused before sending, and the lease stays held.
  Lease& two = *(*results)[0];
  absl::StatusOr<std::vector<absl::StatusOr<ReleaseResult>>> bad =
      client_->ReleaseBatch({{&two, 3}, {nullptr, std::nullopt}});
  ASSERT_OK(bad);
  EXPECT_THAT((*bad)[0], StatusIs(absl::StatusCode::kInvalidArgument,
                                  StartsWith("items[0]: used must be in 0..2 (the lease's cost), "
                                             "got 3")));
  EXPECT_THAT((*bad)[1], StatusIs(absl::StatusCode::kInvalidArgument, StartsWith("items[1]: ")));
  EXPECT_TRUE(two.held());

  // Too many items: the whole call is refused and nothing is charged.
  std::vector<AcquireItem> too_many(kMaxBatchItems + 1, Item("test/batch_errors", "calls", 1));
  EXPECT_THAT(client_->AcquireBatch(too_many),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1001")));
  EXPECT_EQ(Used("test/batch_errors"), 5);

  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> none = client_->AcquireBatch({});
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

TEST_F(BatchTest, ABatchRetriedAfterALostAnswerChargesOnce) {
  BatchLog log;
  {
    absl::MutexLock lock(&log.mu);
    log.lose_acquire_answer = true;
    log.lose_release_answer = true;
  }
  std::unique_ptr<QuotaClient> client = LoggedClient(&log);
  std::vector<AcquireItem> items(3, Item("test/batch_lost", "calls", 4));
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> results = client->AcquireBatch(items);
  ASSERT_OK(results);
  std::vector<std::string> ids;
  for (absl::StatusOr<Lease>& r : *results) {
    ASSERT_OK(r);
    EXPECT_TRUE(r->granted());
    ids.push_back(r->request_id());
  }
  {
    absl::MutexLock lock(&log.mu);
    ASSERT_EQ(log.acquire_attempts.size(), 2u) << "the lost answer was not retried";
    EXPECT_EQ(log.acquire_attempts[0], log.acquire_attempts[1])
        << "the retry must carry the same request_ids";
    EXPECT_EQ(log.acquire_attempts[0], ids);
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 3u);
  EXPECT_EQ(Used("test/batch_lost"), 12) << "the retried batch was charged twice";

  // The release's answer is lost too: its retry must not fail the items, and each refund of
  // 4 - 1 happens once.
  std::vector<ReleaseItem> release;
  for (absl::StatusOr<Lease>& r : *results) release.push_back({&*r, 1});
  absl::StatusOr<std::vector<absl::StatusOr<ReleaseResult>>> released =
      client->ReleaseBatch(release);
  ASSERT_OK(released);
  for (const absl::StatusOr<ReleaseResult>& r : *released) EXPECT_OK(r);
  {
    absl::MutexLock lock(&log.mu);
    ASSERT_EQ(log.release_attempts.size(), 2u);
    EXPECT_EQ(log.release_attempts[0], log.release_attempts[1]);
  }
  EXPECT_EQ(Used("test/batch_lost"), 3);
}

TEST_F(BatchTest, ARequestIdSentAgainChargesOnce) {
  std::vector<AcquireItem> items(2, Item("test/batch_dedup", "calls", 10));
  items[0].options.request_id = "job-1.a";
  items[1].options.request_id = "job-1.b";
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> first = client_->AcquireBatch(items);
  ASSERT_OK(first);
  ASSERT_OK((*first)[0]);
  ASSERT_OK((*first)[1]);
  ASSERT_TRUE((*first)[0]->granted());
  ASSERT_TRUE((*first)[1]->granted());
  EXPECT_EQ(Used("test/batch_dedup"), 20);

  // The same batch again (a job re-run): the first grants, nothing charged.
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> second = client_->AcquireBatch(items);
  ASSERT_OK(second);
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK((*second)[i]);
    ASSERT_TRUE((*second)[i]->granted());
    EXPECT_EQ((*second)[i]->id(), (*first)[i]->id()) << "item " << i;
  }
  EXPECT_EQ(Used("test/batch_dedup"), 20);

  // One id twice in one batch: the second item gets the first one's grant.
  std::vector<AcquireItem> twice(2, Item("test/batch_dedup", "calls", 5));
  twice[0].options.request_id = twice[1].options.request_id = "job-2";
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> third = client_->AcquireBatch(twice);
  ASSERT_OK(third);
  ASSERT_OK((*third)[0]);
  ASSERT_OK((*third)[1]);
  ASSERT_TRUE((*third)[0]->granted());
  ASSERT_TRUE((*third)[1]->granted());
  EXPECT_EQ((*third)[0]->id(), (*third)[1]->id());
  EXPECT_EQ(Used("test/batch_dedup"), 25);
}

TEST_F(BatchTest, QuotactlAcquireBatchAndReleaseBatch) {
  const TempDir dir("batch-quotactl");
  const std::string file = dir.File("items.txt");
  {
    std::ofstream out(file);
    out << "# three of 40 fit in 100; the 20 takes the rest\n"
        << "test/batch_ctl calls cost=40\n\n"
        << "test/batch_ctl calls cost=40\n"
        << "test/batch_ctl calls cost=40\n"
        << "test/batch_ctl   calls\tcost=20\n";
  }
  const std::string acquire =
      absl::StrCat(Quotactl(), " acquire-batch --request_id=ctl-1 --items_file=", file);
  std::string out;
  EXPECT_EQ(RunShell(acquire, &out), 1) << out;  // some denied, none failed
  EXPECT_NE(out.find("granted 3  denied 1  errors 0"), std::string::npos) << out;
  EXPECT_NE(out.find("by calls.per_hour"), std::string::npos) << out;
  const std::vector<std::string> leases = GrantedLeases(out);
  ASSERT_EQ(leases.size(), 3u) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 100);

  // Re-run with the same --request_id: the same leases, nothing charged again (the denial is
  // decided anew and still denied).
  EXPECT_EQ(RunShell(acquire, &out), 1) << out;
  EXPECT_EQ(GrantedLeases(out), leases) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 100);

  // Release them from stdin, each reporting 0 used: everything comes back.
  std::string lines;
  for (const std::string& id : leases) lines += absl::StrCat(id, " used=0\\n");
  EXPECT_EQ(RunShell(absl::StrCat("printf '", lines, "' | ", Quotactl(), " release-batch"), &out),
            0)
      << out;
  EXPECT_NE(out.find("released 3  errors 0"), std::string::npos) << out;
  EXPECT_NE(out.find("refunded 40"), std::string::npos) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 0);

  // Items as arguments; an item's error names it and sets exit code 2, the other item stands.
  EXPECT_EQ(RunShell(absl::StrCat(Quotactl(), " acquire-batch 'test/batch_ctl calls cost=2' ",
                                  "'nobody/unknown calls'"),
                     &out),
            2)
      << out;
  EXPECT_NE(out.find("NOT_FOUND: items[1]: "), std::string::npos) << out;
  EXPECT_NE(out.find("granted 1  denied 0  errors 1"), std::string::npos) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 2);
  EXPECT_EQ(RunShell(absl::StrCat(Quotactl(), " release-batch ", GrantedLeases(out).at(0),
                                  " 00000000000000000000000000000000"),
                     &out),
            2)
      << out;
  EXPECT_NE(out.find("NOT_FOUND: items[1]: "), std::string::npos) << out;
  EXPECT_NE(out.find("released 1  errors 1"), std::string::npos) << out;

  // A malformed item is a usage error naming where it was, and nothing is sent.
  EXPECT_EQ(
      RunShell(absl::StrCat(Quotactl(), " acquire-batch 'test/batch_ctl calls cost=abc'"), &out), 2)
      << out;
  EXPECT_NE(out.find("argument 1 (\"test/batch_ctl calls cost=abc\"): cost \"abc\" is not a "
                     "number"),
            std::string::npos)
      << out;
  EXPECT_EQ(
      RunShell(absl::StrCat("echo 'test/batch_ctl calls frobs=1' | ", Quotactl(), " acquire-batch"),
               &out),
      2)
      << out;
  EXPECT_NE(out.find("stdin:1"), std::string::npos) << out;
  EXPECT_NE(out.find("unknown key \"frobs\""), std::string::npos) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 2);

  // --json prints the response.
  EXPECT_EQ(
      RunShell(absl::StrCat(Quotactl(), " --json acquire-batch 'test/batch_ctl calls'"), &out), 0)
      << out;
  EXPECT_NE(out.find("\"results\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"granted\": true"), std::string::npos) << out;
  EXPECT_NE(out.find("\"limits\""), std::string::npos) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 3);
  // --decisions_only: the same grant, no limits.
  EXPECT_EQ(RunShell(absl::StrCat(Quotactl(),
                                  " --json acquire-batch --decisions_only 'test/batch_ctl calls'"),
                     &out),
            0)
      << out;
  EXPECT_NE(out.find("\"granted\": true"), std::string::npos) << out;
  EXPECT_EQ(out.find("\"limits\""), std::string::npos) << out;
  EXPECT_EQ(Used("test/batch_ctl"), 4);
}

}  // namespace
}  // namespace client
}  // namespace quotad

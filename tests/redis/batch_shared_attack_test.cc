// Attacks on AcquireBatchRequest.decisions_only and AcquireBatchInto (commit c901055) in shared
// mode: one redis-server started by the test, two quotad replicas in process over it on port 0,
// real gRPC clients. Replays by request_id inside a batch, across batches and across replicas,
// per-item errors naming their item, all_or_nothing with a replay, and batches racing from both
// replicas on one concurrency limit. Bounded: a few batches, two client threads.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/server.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::testing::HasSubstr;

constexpr char kConfig[] = R"(
credentials:
  - name: team/shared
    features:
      - name: conc
        default_lease_ttl: 5m
        limits:
          - {name: slots, kind: concurrency, capacity: 5}
      - name: roll
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 20}
)";

v1::AcquireRequest Item(const std::string& feature, const std::string& request_id = "") {
  v1::AcquireRequest req;
  req.set_credential("team/shared");
  req.set_feature(feature);
  req.set_holder("batch_shared_attack_test");
  req.set_request_id(request_id);
  return req;
}

class BatchSharedAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    const std::string config = dir_.WriteFile("quotad.yaml", kConfig);
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(
          testing::SharedServerOptions(config, absl::StrCat("redis://127.0.0.1:", redis_->port())));
      ASSERT_TRUE(server.ok()) << server.status();
      auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
      servers_.push_back(*std::move(server));
      quota_.push_back(v1::Quota::NewStub(channel));
      health_.push_back(Health::NewStub(channel));
    }
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(Eventually([&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
        HealthCheckResponse resp;
        return health_[i]->Check(&ctx, HealthCheckRequest(), &resp).ok() &&
               resp.status() == HealthCheckResponse::SERVING;
      })) << "replica "
          << i;
    }
  }

  void TearDown() override {
    servers_.clear();  // before Redis goes
    redis_.reset();
  }

  grpc::Status Batch(int replica, const v1::AcquireBatchRequest& req,
                     v1::AcquireBatchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return quota_[replica]->AcquireBatch(&ctx, req, resp);
  }
  grpc::Status Single(int replica, const v1::AcquireRequest& req, v1::AcquireResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return quota_[replica]->Acquire(&ctx, req, resp);
  }

  testing::TempDir dir_{"batch-shared"};
  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
  std::vector<std::unique_ptr<Health::Stub>> health_;
};

// decisions_only in shared mode: the same decisions (5 slots: 5 grants), no limits on any item,
// a replay inside the batch answers its first grant, an unknown feature is an error naming its
// item; the replay across replicas (single call, batch with limits) answers the same lease and
// charges nothing; all_or_nothing with that replay and a new item stands or falls on the new one.
TEST_F(BatchSharedAttackTest, DecisionsOnlyDecidesTheSameAndReplaysAcrossReplicas) {
  v1::AcquireBatchRequest req;
  *req.add_items() = Item("conc", "r1");
  *req.add_items() = Item("conc", "r1");
  for (int i = 0; i < 6; ++i) *req.add_items() = Item("conc");
  *req.add_items() = Item("nothing");
  req.set_decisions_only(true);
  v1::AcquireBatchResponse resp;
  ASSERT_TRUE(Batch(0, req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 9);
  std::set<std::string> leases;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(resp.results(i).has_response()) << i << resp.results(i).DebugString();
    EXPECT_EQ(resp.results(i).response().limits_size(), 0) << i;
    if (resp.results(i).response().granted()) leases.insert(resp.results(i).response().lease_id());
  }
  EXPECT_EQ(resp.results(1).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_EQ(leases.size(), 5u) << "5 slots";
  EXPECT_FALSE(resp.results(7).response().granted());
  ASSERT_TRUE(resp.results(8).has_error());
  EXPECT_THAT(resp.results(8).error().message(), HasSubstr("items[8]"));

  v1::AcquireResponse single;
  ASSERT_TRUE(Single(1, Item("conc", "r1"), &single).ok());
  EXPECT_TRUE(single.granted());
  EXPECT_EQ(single.lease_id(), resp.results(0).response().lease_id());
  v1::AcquireBatchRequest again;
  *again.add_items() = Item("conc", "r1");
  *again.add_items() = Item("conc");
  v1::AcquireBatchResponse replayed;
  ASSERT_TRUE(Batch(1, again, &replayed).ok());
  EXPECT_EQ(replayed.results(0).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_FALSE(replayed.results(1).response().granted()) << "the 5 slots are held";
  EXPECT_GT(replayed.results(1).response().limits_size(), 0);

  // all_or_nothing (decided in one FCALL): the new item cannot be granted, so nothing is
  // charged; the replay still answers its first grant, which stands.
  again.set_all_or_nothing(true);
  for (bool lean : {false, true}) {
    again.set_decisions_only(lean);
    v1::AcquireBatchResponse blocked;
    ASSERT_TRUE(Batch(lean ? 1 : 0, again, &blocked).ok());
    ASSERT_EQ(blocked.results_size(), 2);
    EXPECT_TRUE(blocked.results(0).response().granted());
    EXPECT_EQ(blocked.results(0).response().lease_id(), resp.results(0).response().lease_id());
    EXPECT_FALSE(blocked.results(1).response().granted());
    EXPECT_EQ(blocked.results(1).response().limited_by(), "conc.slots");
    EXPECT_EQ(blocked.results(1).response().limits_size(), lean ? 0 : 1);
  }
  // A slot given back: the same batch is granted whole, the replay answering its lease.
  grpc::ClientContext ctx;
  v1::ReleaseRequest release;
  release.set_lease_id(resp.results(2).response().lease_id());
  v1::ReleaseResponse released;
  ASSERT_TRUE(quota_[0]->Release(&ctx, release, &released).ok());
  v1::AcquireBatchResponse whole;
  ASSERT_TRUE(Batch(1, again, &whole).ok());
  EXPECT_EQ(whole.results(0).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_TRUE(whole.results(1).response().granted());
  EXPECT_FALSE(Batch(0, again, &whole).ok() && whole.results(1).response().granted())
      << "a sixth slot";
}

// A batch without all_or_nothing is one FCALL (quotad_acquire_many), its items decided in
// order: of 7 items on 5 slots the first 5 are granted; an item refused here (an unknown
// feature) and one with a request_id used by another request answer their own errors; the
// same 7 items through the other replica, the slots held, are all denied in one more FCALL.
TEST_F(BatchSharedAttackTest, ABatchIsOneCallDecidedInOrder) {
  v1::AcquireResponse first;
  ASSERT_TRUE(Single(0, Item("roll", "taken"), &first).ok());
  ASSERT_TRUE(first.granted());
  v1::AcquireBatchRequest req;
  for (int i = 0; i < 7; ++i) *req.add_items() = Item("conc");
  *req.add_items() = Item("nothing");
  *req.add_items() = Item("conc", "taken");  // "taken" asked for roll
  const int64_t before = redis_->Calls("fcall");
  v1::AcquireBatchResponse resp;
  ASSERT_TRUE(Batch(1, req, &resp).ok());
  EXPECT_EQ(redis_->Calls("fcall") - before, 1);
  ASSERT_EQ(resp.results_size(), 9);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(resp.results(i).response().granted(), i < 5) << i;
  }
  EXPECT_EQ(resp.results(6).response().limited_by(), "conc.slots");
  ASSERT_TRUE(resp.results(7).has_error());
  EXPECT_THAT(resp.results(7).error().message(), HasSubstr("items[7]"));
  ASSERT_TRUE(resp.results(8).has_error());
  EXPECT_EQ(resp.results(8).error().code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(resp.results(8).error().message(), HasSubstr("'taken' was first used"));
  ASSERT_TRUE(Batch(0, req, &resp).ok());
  EXPECT_EQ(redis_->Calls("fcall") - before, 2);
  for (int i = 0; i < 7; ++i) EXPECT_FALSE(resp.results(i).response().granted()) << i;
}

// Batches race from both replicas (decisions_only and not) on 5 slots and 20 units an hour,
// nothing released: exactly 5 slots and 20 units are granted in all.
TEST_F(BatchSharedAttackTest, RacingBatchesOnTwoReplicasGrantExactlyTheCapacity) {
  std::atomic<int> conc{0};
  std::atomic<int> roll{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 6; ++round) {
        v1::AcquireBatchRequest req;
        for (int i = 0; i < 10; ++i) *req.add_items() = Item(i % 2 == 0 ? "conc" : "roll");
        req.set_decisions_only((round + t) % 2 == 0);
        v1::AcquireBatchResponse resp;
        if (!Batch(t, req, &resp).ok() || resp.results_size() != 10) {
          ++failures;
          continue;
        }
        for (int i = 0; i < 10; ++i) {
          const v1::AcquireBatchItem& item = resp.results(i);
          if (!item.has_response()) {
            ++failures;
            continue;
          }
          if (req.decisions_only() && item.response().limits_size() != 0) ++failures;
          if (item.response().granted()) ++(i % 2 == 0 ? conc : roll);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(conc.load(), 5);
  EXPECT_EQ(roll.load(), 20);
}

}  // namespace
}  // namespace quotad

// QuotaService::AcquireBatch and ReleaseBatch (service/server/quota_service.h) called directly:
// no socket, a real ledger on a fake clock (service_fixture.h).

#include <string>

#include "absl/strings/str_cat.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/server/quota_service.h"
#include "tests/service/service_fixture.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

class QuotaBatchTest : public testing::ServiceFixture {
 protected:
  static v1::AcquireBatchRequest BatchOf(std::initializer_list<v1::AcquireRequest> items) {
    v1::AcquireBatchRequest batch;
    for (const v1::AcquireRequest& item : items) *batch.add_items() = item;
    return batch;
  }
};

TEST_F(QuotaBatchTest, EachItemIsDecidedInOrderAndNoMoreThanTheCapacityIsGranted) {
  Build();
  // team-a/key requests: 2 per minute.
  v1::AcquireBatchRequest batch;
  for (int i = 0; i < 4; ++i) *batch.add_items() = AcquireOf("team-a/key", "requests");
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("alice-token"), batch));
  ASSERT_EQ(resp.results_size(), 4);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(resp.results(i).has_response()) << i;
    EXPECT_EQ(resp.results(i).response().granted(), i < 2) << i;
  }
  EXPECT_EQ(resp.results(0).response().lease_id().size(), 32u);
  EXPECT_NE(resp.results(0).response().lease_id(), resp.results(1).response().lease_id());
  EXPECT_EQ(resp.results(2).response().limited_by(), "requests.per_minute");
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);
}

TEST_F(QuotaBatchTest, ItemErrorsNameTheItemAndTheBadValueAndChargeNothing) {
  Build();
  v1::AcquireRequest bad_cost = AcquireOf("team-a/key", "requests");
  bad_cost.set_cost(-3);
  v1::AcquireRequest waits = AcquireOf("team-a/key", "requests");
  waits.mutable_max_wait()->set_seconds(2);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("alice-token"),
                                            BatchOf({AcquireOf("team-a/key", "re quests"), bad_cost,
                                                     AcquireOf("team-a/key", "nothing"), waits,
                                                     AcquireOf("team-a/key", "requests")})));
  ASSERT_EQ(resp.results_size(), 5);
  ASSERT_TRUE(resp.results(0).has_error());
  EXPECT_EQ(resp.results(0).error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(resp.results(0).error().message(),
              AllOf(HasSubstr("items[0]"), HasSubstr("feature"), HasSubstr("\"re quests\"")));
  ASSERT_TRUE(resp.results(1).has_error());
  EXPECT_THAT(resp.results(1).error().message(), AllOf(HasSubstr("items[1]"), HasSubstr("got -3")));
  ASSERT_TRUE(resp.results(2).has_error());
  EXPECT_EQ(resp.results(2).error().code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(resp.results(2).error().message(),
              AllOf(HasSubstr("items[2]"), HasSubstr("nothing")));
  ASSERT_TRUE(resp.results(3).has_error());
  EXPECT_EQ(resp.results(3).error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(resp.results(3).error().message(),
              AllOf(HasSubstr("items[3]"), HasSubstr("max_wait 2s"), HasSubstr("batch")));
  // The refused items charged nothing: the good one is the first grant.
  ASSERT_TRUE(resp.results(4).has_response());
  EXPECT_TRUE(resp.results(4).response().granted());
  ASSERT_EQ(resp.results(4).response().limits_size(), 1);
  EXPECT_EQ(resp.results(4).response().limits(0).remaining(), 1);
}

TEST_F(QuotaBatchTest, AccessRulesApplyPerItem) {
  Build();
  // bob may use team-b/key only.
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("bob-token"),
                                            BatchOf({AcquireOf("team-a/key", "requests"),
                                                     AcquireOf("team-b/key", "requests")})));
  ASSERT_EQ(resp.results_size(), 2);
  ASSERT_TRUE(resp.results(0).has_error());
  EXPECT_EQ(resp.results(0).error().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(resp.results(0).error().message(), HasSubstr("items[0]"));
  ASSERT_TRUE(resp.results(1).has_response());
  EXPECT_TRUE(resp.results(1).response().granted());
  EXPECT_TRUE(ledger_->Leases("team-a/key").empty());

  // Release: alice may not end bob's lease, bob may.
  v1::ReleaseBatchRequest release;
  release.add_items()->set_lease_id(resp.results(1).response().lease_id());
  ASSERT_OK_AND_ASSIGN(v1::ReleaseBatchResponse by_alice,
                       quota_->ReleaseBatch(MustCaller("alice-token"), release));
  ASSERT_TRUE(by_alice.results(0).has_error());
  EXPECT_NE(by_alice.results(0).error().code(), 0);
  ASSERT_OK_AND_ASSIGN(v1::ReleaseBatchResponse by_bob,
                       quota_->ReleaseBatch(MustCaller("bob-token"), release));
  ASSERT_TRUE(by_bob.results(0).has_response());
  EXPECT_TRUE(ledger_->Leases("team-b/key").empty());
}

TEST_F(QuotaBatchTest, RequestIdsReplayInsideAndAcrossBatchesAndSingleCalls) {
  Build();
  const Caller alice = MustCaller("alice-token");
  ASSERT_OK_AND_ASSIGN(
      v1::AcquireBatchResponse first,
      quota_->AcquireBatch(alice, BatchOf({AcquireOf("team-a/key", "requests", "r1"),
                                           AcquireOf("team-a/key", "requests", "r1")})));
  ASSERT_TRUE(first.results(0).has_response());
  ASSERT_TRUE(first.results(1).has_response());
  const std::string lease = first.results(0).response().lease_id();
  EXPECT_EQ(first.results(1).response().lease_id(), lease);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);

  // Across batches and with the single call: the same lease, nothing charged again.
  ASSERT_OK_AND_ASSIGN(
      v1::AcquireBatchResponse again,
      quota_->AcquireBatch(alice, BatchOf({AcquireOf("team-a/key", "requests", "r1")})));
  EXPECT_EQ(again.results(0).response().lease_id(), lease);
  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse single,
                       Acquire(alice, AcquireOf("team-a/key", "requests", "r1")));
  EXPECT_EQ(single.lease_id(), lease);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);

  // A reused request_id for another request is that item's error only.
  v1::AcquireRequest other = AcquireOf("team-a/key", "requests", "r1");
  other.set_cost(2);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse reused,
                       quota_->AcquireBatch(alice, BatchOf({other})));
  ASSERT_TRUE(reused.results(0).has_error());
  EXPECT_EQ(reused.results(0).error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(reused.results(0).error().message(), AllOf(HasSubstr("items[0]"), HasSubstr("r1")));

  // Release with a request_id: the retry in the same batch and in the next gets the first answer.
  v1::ReleaseBatchRequest release;
  for (int i = 0; i < 2; ++i) {
    v1::ReleaseRequest* item = release.add_items();
    item->set_lease_id(lease);
    item->set_request_id("rel-1");
  }
  ASSERT_OK_AND_ASSIGN(v1::ReleaseBatchResponse released, quota_->ReleaseBatch(alice, release));
  ASSERT_TRUE(released.results(0).has_response());
  ASSERT_TRUE(released.results(1).has_response());
  ASSERT_OK_AND_ASSIGN(v1::ReleaseBatchResponse retried, quota_->ReleaseBatch(alice, release));
  EXPECT_TRUE(retried.results(0).has_response());
  EXPECT_TRUE(ledger_->Leases("team-a/key").empty());

  // Without a request_id the lease is gone: NOT_FOUND naming the item.
  v1::ReleaseBatchRequest plain;
  plain.add_items()->set_lease_id("not-a-lease");
  plain.add_items()->set_lease_id(lease);
  ASSERT_OK_AND_ASSIGN(v1::ReleaseBatchResponse gone, quota_->ReleaseBatch(alice, plain));
  ASSERT_TRUE(gone.results(0).has_error());
  EXPECT_THAT(gone.results(0).error().message(),
              AllOf(HasSubstr("items[0]"), HasSubstr("lease_id"), HasSubstr("not-a-lease")));
  ASSERT_TRUE(gone.results(1).has_error());
  EXPECT_EQ(gone.results(1).error().code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(gone.results(1).error().message(), HasSubstr("items[1]"));
}

// The access rules and the names are checked once per distinct credential and feature of a
// batch: every refused item is still named, counted and charged nothing, wherever it stands.
TEST_F(QuotaBatchTest, EveryRefusedItemIsNamedWhenCredentialsAndNamesRepeat) {
  Build();
  v1::AcquireBatchRequest batch;
  // bob may use team-b/key only; "re quests" is no feature name.
  for (int i = 0; i < 3; ++i) {
    *batch.add_items() = AcquireOf("team-a/key", "requests");
    *batch.add_items() = AcquireOf("team-b/key", "requests");
    *batch.add_items() = AcquireOf("team-b/key", "re quests");
  }
  *batch.add_items() = AcquireOf("team-a/key", "requests");
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("bob-token"), batch));
  ASSERT_EQ(resp.results_size(), 10);
  for (int i = 0; i < 10; ++i) {
    const std::string item = absl::StrCat("items[", i, "]");
    if (i % 3 == 0) {
      ASSERT_TRUE(resp.results(i).has_error()) << i;
      EXPECT_EQ(resp.results(i).error().code(),
                static_cast<int>(absl::StatusCode::kPermissionDenied)) << i;
      EXPECT_THAT(resp.results(i).error().message(), HasSubstr(item + ": "));
    } else if (i % 3 == 1) {
      ASSERT_TRUE(resp.results(i).has_response()) << i;
      EXPECT_TRUE(resp.results(i).response().granted()) << i;
    } else {
      ASSERT_TRUE(resp.results(i).has_error()) << i;
      EXPECT_EQ(resp.results(i).error().code(),
                static_cast<int>(absl::StatusCode::kInvalidArgument)) << i;
      EXPECT_THAT(resp.results(i).error().message(),
                  AllOf(HasSubstr(item + ": "), HasSubstr("feature"), HasSubstr("\"re quests\"")));
    }
  }
  EXPECT_TRUE(ledger_->Leases("team-a/key").empty());
  EXPECT_EQ(ledger_->Leases("team-b/key").size(), 3u);
  const std::string text = metrics_->Serialize();
  // One refusal counted per refused item, as three single calls would have.
  EXPECT_THAT(text, HasSubstr("quotad_auth_failures_total{reason=\"permission_denied\"} 4"));
  EXPECT_THAT(text, HasSubstr("quotad_request_errors_total{code=\"PERMISSION_DENIED\","
                              "method=\"AcquireBatchItem\"} 4"));
  EXPECT_THAT(text, HasSubstr("quotad_request_errors_total{code=\"INVALID_ARGUMENT\","
                              "method=\"AcquireBatchItem\"} 3"));

  // Another caller's batch is checked for its own identity: alice may use team-a/key.
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse alice,
                       quota_->AcquireBatch(MustCaller("alice-token"),
                                            BatchOf({AcquireOf("team-a/key", "requests"),
                                                     AcquireOf("team-b/key", "requests")})));
  ASSERT_TRUE(alice.results(0).has_response());
  EXPECT_TRUE(alice.results(0).response().granted());
  ASSERT_TRUE(alice.results(1).has_error());
  EXPECT_THAT(alice.results(1).error().message(), HasSubstr("items[1]: "));
}

// Decisions of a batch are counted per outcome, as many as the single calls would count.
TEST_F(QuotaBatchTest, DecisionsAreCountedPerOutcome) {
  Build();
  v1::AcquireBatchRequest batch;
  // team-a/key requests: 2 per minute; team-b/key: 5.
  for (int i = 0; i < 5; ++i) *batch.add_items() = AcquireOf("team-a/key", "requests");
  for (int i = 0; i < 6; ++i) *batch.add_items() = AcquireOf("team-b/key", "requests");
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("ops-token"), batch));
  ASSERT_EQ(resp.results_size(), 11);
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("quotad_decisions_total{credential=\"team-a/key\",feature="
                              "\"requests\",result=\"granted\"} 2"));
  EXPECT_THAT(text, HasSubstr("quotad_decisions_total{credential=\"team-a/key\",feature="
                              "\"requests\",result=\"denied\"} 3"));
  EXPECT_THAT(text, HasSubstr("quotad_denials_total{credential=\"team-a/key\",limit="
                              "\"requests.per_minute\"} 3"));
  EXPECT_THAT(text, HasSubstr("quotad_decisions_total{credential=\"team-b/key\",feature="
                              "\"requests\",result=\"granted\"} 5"));
  EXPECT_THAT(text, HasSubstr("quotad_denials_total{credential=\"team-b/key\",limit="
                              "\"requests.per_minute\"} 1"));
  // Each answer still carries the limits it touched.
  ASSERT_TRUE(resp.results(0).has_response());
  ASSERT_EQ(resp.results(0).response().limits_size(), 1);
  EXPECT_EQ(resp.results(0).response().limits(0).name(), "requests.per_minute");
}

// A request_id charges once however the batch mixes it with other items, credentials and
// callers' identities.
TEST_F(QuotaBatchTest, RequestIdsChargeOnceAmongOtherItems) {
  Build();
  const Caller ops = MustCaller("ops-token");
  v1::AcquireBatchRequest batch;
  for (int i = 0; i < 3; ++i) {
    *batch.add_items() = AcquireOf("team-b/key", "requests", "same");
    *batch.add_items() = AcquireOf("team-b/key", "requests");
    *batch.add_items() = AcquireOf("team-a/key", "requests", "same");
  }
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(ops, batch));
  ASSERT_EQ(resp.results_size(), 9);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(resp.results(i).has_response()) << i;
  // request_ids are per credential: one lease per credential for "same", three without.
  EXPECT_EQ(resp.results(3).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_EQ(resp.results(6).response().lease_id(), resp.results(0).response().lease_id());
  EXPECT_EQ(resp.results(5).response().lease_id(), resp.results(2).response().lease_id());
  EXPECT_EQ(resp.results(8).response().lease_id(), resp.results(2).response().lease_id());
  EXPECT_NE(resp.results(1).response().lease_id(), resp.results(4).response().lease_id());
  EXPECT_EQ(ledger_->Leases("team-b/key").size(), 4u);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);
}

TEST_F(QuotaBatchTest, BatchesAreBoundedAndMayBeEmpty) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest too_many;
  for (int i = 0; i <= kMaxBatchItems; ++i)
    *too_many.add_items() = AcquireOf("team-a/key", "requests");
  EXPECT_THAT(quota_->AcquireBatch(alice, too_many),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("1001"), HasSubstr("at most 1000"))));
  EXPECT_TRUE(ledger_->Leases("team-a/key").empty());
  v1::ReleaseBatchRequest too_many_releases;
  for (int i = 0; i <= kMaxBatchItems; ++i) too_many_releases.add_items()->set_lease_id("x");
  EXPECT_THAT(quota_->ReleaseBatch(alice, too_many_releases),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 1000")));

  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse empty,
                       quota_->AcquireBatch(alice, v1::AcquireBatchRequest()));
  EXPECT_EQ(empty.results_size(), 0);
}

TEST_F(QuotaBatchTest, AllOrNothingRefusesEveryItemInTheNameOfTheOneNotGranted) {
  Build();
  // alice may not use team-b: the refusal of items[1] refuses items[0], which charged nothing.
  v1::AcquireBatchRequest batch =
      BatchOf({AcquireOf("team-a/key", "requests"), AcquireOf("team-b/key", "requests")});
  batch.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp,
                       quota_->AcquireBatch(MustCaller("alice-token"), batch));
  ASSERT_EQ(resp.results_size(), 2);
  ASSERT_TRUE(resp.results(1).has_error());
  EXPECT_EQ(resp.results(1).error().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(resp.results(1).error().message(), HasSubstr("items[1]"));
  ASSERT_TRUE(resp.results(0).has_response());
  EXPECT_FALSE(resp.results(0).response().granted());
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_FALSE(resp.results(0).response().has_retry_at());
  EXPECT_TRUE(ledger_->Leases("team-a/key").empty());

  // A denial: 1 of 2 units left for 2 new items. The item replaying an earlier grant answers
  // that grant; the others are denied, with the blocker's retry time.
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse first,
                       quota_->AcquireBatch(MustCaller("alice-token"),
                                            BatchOf({AcquireOf("team-a/key", "requests", "r1")})));
  ASSERT_TRUE(first.results(0).response().granted());
  batch = BatchOf({AcquireOf("team-a/key", "requests", "r1"), AcquireOf("team-a/key", "requests"),
                   AcquireOf("team-a/key", "requests")});
  batch.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(resp, quota_->AcquireBatch(MustCaller("alice-token"), batch));
  ASSERT_EQ(resp.results_size(), 3);
  EXPECT_TRUE(resp.results(0).response().granted());
  EXPECT_EQ(resp.results(0).response().lease_id(), first.results(0).response().lease_id());
  EXPECT_FALSE(resp.results(2).response().granted());
  EXPECT_EQ(resp.results(2).response().limited_by(), "requests.per_minute");
  EXPECT_FALSE(resp.results(1).response().granted());
  EXPECT_EQ(resp.results(1).response().limited_by(), "all_or_nothing:items[2]");
  EXPECT_TRUE(resp.results(1).response().has_retry_at());
  EXPECT_EQ(resp.results(1).response().retry_at().seconds(),
            resp.results(2).response().retry_at().seconds());
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);

  // 1 unit left, 1 asked: granted whole.
  batch = BatchOf({AcquireOf("team-a/key", "requests"), AcquireOf("team-a/key", "jobs")});
  batch.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(resp, quota_->AcquireBatch(MustCaller("alice-token"), batch));
  EXPECT_TRUE(resp.results(0).response().granted());
  EXPECT_TRUE(resp.results(1).response().granted());
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 3u);
}

TEST_F(QuotaBatchTest, DecisionsOnlyAnswersTheSameDecisionsWithoutLimits) {
  Build();
  const Caller alice = MustCaller("alice-token");
  // team-a/key requests: 2 per minute. One item granted with its limits, for the replay below.
  ASSERT_OK_AND_ASSIGN(
      v1::AcquireBatchResponse with_limits,
      quota_->AcquireBatch(alice, BatchOf({AcquireOf("team-a/key", "requests", "r1")})));
  ASSERT_TRUE(with_limits.results(0).response().granted());
  EXPECT_GT(with_limits.results(0).response().limits_size(), 0);

  v1::AcquireBatchRequest batch = BatchOf(
      {AcquireOf("team-a/key", "requests", "r1"), AcquireOf("team-a/key", "requests"),
       AcquireOf("team-a/key", "requests"), AcquireOf("team-a/key", "nothing")});
  batch.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(resp.results_size(), 4);
  // The replay answers its first grant, the next item the last unit, then a denial.
  EXPECT_EQ(resp.results(0).response().lease_id(), with_limits.results(0).response().lease_id());
  EXPECT_TRUE(resp.results(1).response().granted());
  EXPECT_FALSE(resp.results(2).response().granted());
  EXPECT_EQ(resp.results(2).response().limited_by(), "requests.per_minute");
  EXPECT_TRUE(resp.results(2).response().has_retry_at());
  ASSERT_TRUE(resp.results(3).has_error());
  EXPECT_THAT(resp.results(3).error().message(), HasSubstr("items[3]"));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(resp.results(i).response().limits_size(), 0) << i;
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);

  // All or nothing: refused whole, still without limits.
  batch.set_all_or_nothing(true);
  batch.mutable_items()->DeleteSubrange(3, 1);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse all, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(all.results_size(), 3);
  EXPECT_FALSE(all.results(1).response().granted());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(all.results(i).response().limits_size(), 0) << i;
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);
}

}  // namespace
}  // namespace quotad

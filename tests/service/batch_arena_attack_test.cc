// Attacks on AcquireBatch as commit c901055 left it (QuotaService::AcquireBatchInto answering
// into a caller's message, AcquireBatchRequest.decisions_only): replays by request_id inside one
// batch and across batches, with and without decisions_only and all_or_nothing, batches of
// exactly kMaxBatchItems and one more, and costs near the int64 maximum. Called directly over a
// real ledger on a fake clock (service_fixture.h). Each test says what it tries; a DISABLED_ one
// shows a bug that is still open (its comment gives the figures).

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/server/quota_service.h"
#include "tests/service/service_fixture.h"

namespace quotad {
namespace {

using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

class BatchArenaAttackTest : public testing::ServiceFixture {
 protected:
  static v1::AcquireBatchRequest BatchOf(std::initializer_list<v1::AcquireRequest> items) {
    v1::AcquireBatchRequest batch;
    for (const v1::AcquireRequest& item : items) *batch.add_items() = item;
    return batch;
  }
  static v1::AcquireRequest WithCost(v1::AcquireRequest req, int64_t cost) {
    req.set_cost(cost);
    return req;
  }
  // Units of team-a/key's requests.per_minute (capacity 2) in use, by GetUsage's reading.
  int64_t RequestsUsed() {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage("team-a/key");
    if (!usage.ok()) return -1;
    for (const LimitStatus& l : *usage) {
      if (l.name == "requests.per_minute") return l.used;
    }
    return -1;
  }
};

// Replays inside one batch: the same request_id twice answers the first grant twice and charges
// once, with decisions_only (no limits on either answer) as without.
TEST_F(BatchArenaAttackTest, DuplicateRequestIdInsideOneBatchChargesOnce) {
  Build();
  const Caller alice = MustCaller("alice-token");
  for (bool decisions_only : {true, false}) {
    SCOPED_TRACE(decisions_only ? "decisions_only" : "with limits");
    const std::string id = decisions_only ? "dup-a" : "dup-b";
    v1::AcquireBatchRequest batch =
        BatchOf({AcquireOf("team-a/key", "requests", id), AcquireOf("team-a/key", "requests", id)});
    batch.set_decisions_only(decisions_only);
    ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
    ASSERT_EQ(resp.results_size(), 2);
    ASSERT_TRUE(resp.results(0).response().granted());
    EXPECT_EQ(resp.results(1).response().lease_id(), resp.results(0).response().lease_id());
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(resp.results(i).response().limits_size(), decisions_only ? 0 : 1) << i;
    }
  }
  // Two request_ids, two units: the limit (2 per minute) is full, and no more is granted.
  EXPECT_EQ(RequestsUsed(), 2);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);
  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse more,
                       Acquire(alice, AcquireOf("team-a/key", "requests")));
  EXPECT_FALSE(more.granted());
}

// Replays across batches and the single path: a grant made in a decisions_only batch is the
// first answer of its request_id everywhere (same lease, nothing charged again), and a
// decisions_only replay of a grant made with limits drops them.
TEST_F(BatchArenaAttackTest, ReplaysAcrossBatchesAndTheSinglePathChargeNothingAgain) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest lean = BatchOf({AcquireOf("team-a/key", "requests", "x1")});
  lean.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse first, quota_->AcquireBatch(alice, lean));
  ASSERT_TRUE(first.results(0).response().granted());
  const std::string lease = first.results(0).response().lease_id();

  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse single,
                       Acquire(alice, AcquireOf("team-a/key", "requests", "x1")));
  EXPECT_TRUE(single.granted());
  EXPECT_EQ(single.lease_id(), lease);
  v1::AcquireBatchRequest full = BatchOf({AcquireOf("team-a/key", "requests", "x1")});
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse again, quota_->AcquireBatch(alice, full));
  EXPECT_EQ(again.results(0).response().lease_id(), lease);
  full.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse aon, quota_->AcquireBatch(alice, full));
  EXPECT_EQ(aon.results(0).response().lease_id(), lease);
  EXPECT_EQ(RequestsUsed(), 1);

  // A grant made with limits, replayed decisions_only: no limits, same lease.
  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse with_limits,
                       Acquire(alice, AcquireOf("team-a/key", "requests", "x2")));
  ASSERT_TRUE(with_limits.granted());
  ASSERT_EQ(with_limits.limits_size(), 1);
  v1::AcquireBatchRequest lean2 = BatchOf({AcquireOf("team-a/key", "requests", "x2")});
  lean2.set_decisions_only(true);
  lean2.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse replayed, quota_->AcquireBatch(alice, lean2));
  EXPECT_EQ(replayed.results(0).response().lease_id(), with_limits.lease_id());
  EXPECT_EQ(replayed.results(0).response().limits_size(), 0);
  EXPECT_EQ(RequestsUsed(), 2);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);
}

// FIXED: an all_or_nothing batch refused after its grants were recorded left the request_id
// answers of those grants standing, naming leases it gave back.
//
// The batch [team-a/key requests "r1", team-a/key jobs "r1"] reuses one request_id for two
// different requests (a caller's bug the single path answers with an error naming both). Both
// items pass the replay check (nothing recorded yet) and AcquireAll grants both; item 0's grant
// is recorded under r1, item 1's recording then conflicts and is refused, so the batch is undone:
// item 0's lease is released (its unit refunded) and item 0 answers
// "all_or_nothing:items[1]". But r1's record still says "granted, lease L0". A retry of item 0
// alone then replays granted: true with L0, a lease the ledger does not hold, and charges
// nothing; the two units of requests.per_minute (capacity 2) are then granted to plain calls.
// Observed then: the client holds 3 grants of a limit of 2 (the replayed L0 is unknown to
// Release/Renew: NOT_FOUND). Now the conflict inside the batch is refused before anything is
// decided or recorded, so the retry is decided again. (A concurrent call taking an item's
// request_id for another request between the check and the recording, a caller's bug twice
// over, still leaves that record: see the closing note of this change.)
TEST_F(BatchArenaAttackTest, RefusedAllOrNothingBatchLeavesNoReplayableGrant) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest batch =
      BatchOf({AcquireOf("team-a/key", "requests", "r1"), AcquireOf("team-a/key", "jobs", "r1")});
  batch.set_all_or_nothing(true);
  batch.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(resp.results_size(), 2);
  // Refused whole, in the name of the conflicting item; nothing held.
  ASSERT_TRUE(resp.results(1).has_error());
  EXPECT_THAT(resp.results(1).error().message(), HasSubstr("items[1]"));
  EXPECT_FALSE(resp.results(0).response().granted());
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 0u);
  EXPECT_EQ(RequestsUsed(), 0);

  // The retry of item 0 alone.
  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse retry,
                       Acquire(alice, AcquireOf("team-a/key", "requests", "r1")));
  int believed = 0;
  if (retry.granted()) {
    ++believed;
    LeaseId id = *LeaseId::Parse(retry.lease_id());
    EXPECT_TRUE(ledger_->FindLease(id).has_value())
        << "replayed a grant of lease " << retry.lease_id() << ", which the ledger does not hold";
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::AcquireResponse plain,
                         Acquire(alice, AcquireOf("team-a/key", "requests")));
    if (plain.granted()) ++believed;
  }
  EXPECT_LE(believed, 2) << "granted " << believed << " of 2";
}

// Control for the above: the same refusal without a request_id conflict (the second item is
// denied by its limit) records nothing, and a retry is decided again.
TEST_F(BatchArenaAttackTest, AllOrNothingDenialRecordsNothing) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest batch = BatchOf({AcquireOf("team-a/key", "requests", "s1"),
                                           WithCost(AcquireOf("team-a/key", "requests", "s2"), 2)});
  batch.set_all_or_nothing(true);
  batch.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  EXPECT_FALSE(resp.results(0).response().granted());
  EXPECT_FALSE(resp.results(1).response().granted());
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(RequestsUsed(), 0);
  ASSERT_OK_AND_ASSIGN(v1::AcquireResponse retry,
                       Acquire(alice, AcquireOf("team-a/key", "requests", "s1")));
  ASSERT_TRUE(retry.granted());
  EXPECT_TRUE(ledger_->FindLease(*LeaseId::Parse(retry.lease_id())).has_value());
  EXPECT_EQ(RequestsUsed(), 1);
}

// FIXED (minor: a wrong denial, never an over-grant): inside an all_or_nothing batch, an item
// repeating an earlier item's request_id (the same request) was decided as a new grant instead
// of answering that item's grant, as the plain batch and the single path do. On
// team-a/key requests (2 a minute), [r1, r1, r1] without all_or_nothing answers one lease three
// times (1 unit); with all_or_nothing the batch needs 3 units and is refused whole.
// Observed then: granted false, limited_by "requests.per_minute" on the item that found no unit.
// Now: one lease, answered three times, 1 unit charged.
TEST_F(BatchArenaAttackTest, AllOrNothingRepeatsOfOneRequestIdChargeOnce) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest batch =
      BatchOf({AcquireOf("team-a/key", "requests", "t1"), AcquireOf("team-a/key", "requests", "t1"),
               AcquireOf("team-a/key", "requests", "t1")});
  batch.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(resp.results_size(), 3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(resp.results(i).has_response()) << i;
    EXPECT_TRUE(resp.results(i).response().granted())
        << i << ": " << resp.results(i).response().limited_by();
    EXPECT_EQ(resp.results(i).response().lease_id(), resp.results(0).response().lease_id()) << i;
  }
  EXPECT_EQ(RequestsUsed(), 1);
}

// FIXED (older than c901055, on its all_or_nothing path): heap-use-after-free when an
// all_or_nothing batch was refused; outcomes are now counted once every answer is final. AcquireBatchAllOrNothing counts each decided item's outcome
// under a key holding a string_view of the item's answer's limited_by; deny_all_but then
// rewrites those answers (set_limited_by of a temporary moves into the string and frees its old
// buffer), and the outcomes loop passes the dangling views to Metrics::OnDecisions. Any refused
// batch of 2 or more items whose ledger denial names "all_or_nothing:items[K]" (23 characters:
// on the heap) does it. AddressSanitizer: READ of size 23 in Metrics::CachedCounter, freed in
// deny_all_but (here, in quota_batch_test's AllOrNothingRefusesEveryItemInTheNameOfTheOneNotGranted
// and over the wire). Without ASan the label is read from freed memory: /metrics then showed
// quotad_denials_total{credential="team-a/key",limit="\xC5\xC7\xE9\xEE|U\0\0othing:items[2]"} 2
// (malloc's free-list pointer, NUL bytes, invalid UTF-8 in a Prometheus label).
TEST_F(BatchArenaAttackTest, RefusedAllOrNothingBatchCountsItsDecisionsWithoutFreedMemory) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest batch =
      BatchOf({AcquireOf("team-a/key", "requests"), AcquireOf("team-a/key", "requests"),
               AcquireOf("team-a/key", "requests")});
  batch.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[2]");
  EXPECT_EQ(resp.results(2).response().limited_by(), "requests.per_minute");
  // The two refused in the name of item 2 are counted under that name.
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("limit=\"all_or_nothing:items[2]\"} 2")) << text;
}

// Exactly kMaxBatchItems items are decided (2 granted, the rest denied, no limits with
// decisions_only); one more is refused whole, naming the count, before anything is charged.
TEST_F(BatchArenaAttackTest, ThousandItemsAreDecidedAndOneMoreIsRefusedWhole) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireBatchRequest batch;
  batch.set_decisions_only(true);
  for (int i = 0; i < 1001; ++i) *batch.add_items() = AcquireOf("team-a/key", "requests");
  EXPECT_THAT(quota_->AcquireBatch(alice, batch),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1001")));
  batch.set_all_or_nothing(true);
  EXPECT_THAT(quota_->AcquireBatch(alice, batch),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("1001")));
  EXPECT_EQ(RequestsUsed(), 0);

  batch.set_all_or_nothing(false);
  batch.mutable_items()->RemoveLast();
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(resp.results_size(), 1000);
  int granted = 0;
  for (const v1::AcquireBatchItem& item : resp.results()) {
    ASSERT_TRUE(item.has_response());
    EXPECT_EQ(item.response().limits_size(), 0);
    if (item.response().granted()) ++granted;
  }
  EXPECT_EQ(granted, 2);
  EXPECT_EQ(RequestsUsed(), 2);
}

// Costs near the int64 maximum: never granted, never wrap a counter, and the items after them
// are decided on the true usage; all_or_nothing with one such item charges nothing.
TEST_F(BatchArenaAttackTest, CostsNearInt64MaxNeverWrapACounter) {
  Build();
  const Caller alice = MustCaller("alice-token");
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  v1::AcquireBatchRequest aon = BatchOf({AcquireOf("team-a/key", "requests"),
                                         WithCost(AcquireOf("team-a/key", "requests"), kMax),
                                         WithCost(AcquireOf("team-a/key", "requests"), kMax)});
  aon.set_all_or_nothing(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse refused, quota_->AcquireBatch(alice, aon));
  for (const v1::AcquireBatchItem& item : refused.results()) {
    EXPECT_FALSE(item.has_response() && item.response().granted());
  }
  EXPECT_EQ(RequestsUsed(), 0);

  v1::AcquireBatchRequest each = BatchOf(
      {WithCost(AcquireOf("team-a/key", "requests"), kMax),
       WithCost(AcquireOf("team-a/key", "requests"), kMax - 1), AcquireOf("team-a/key", "requests"),
       AcquireOf("team-a/key", "requests"), AcquireOf("team-a/key", "requests")});
  each.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, each));
  ASSERT_EQ(resp.results_size(), 5);
  int granted = 0;
  for (int i = 0; i < 5; ++i) {
    const v1::AcquireBatchItem& item = resp.results(i);
    if (item.has_response() && item.response().granted()) {
      EXPECT_GE(i, 2) << "a cost near int64 max was granted";
      ++granted;
    }
  }
  EXPECT_EQ(granted, 2);
  EXPECT_EQ(RequestsUsed(), 2);
}

// Huge lease TTLs in a batch (the largest Duration protobuf allows, and nanos out of range):
// errors naming the item and the value, nothing charged; the items around them are decided.
TEST_F(BatchArenaAttackTest, HugeLeaseTtlsAreItemErrorsNamingTheItem) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireRequest forever = AcquireOf("team-a/key", "jobs");
  forever.mutable_lease_ttl()->set_seconds(315576000000);
  v1::AcquireRequest bad_nanos = AcquireOf("team-a/key", "jobs");
  bad_nanos.mutable_lease_ttl()->set_seconds(1);
  bad_nanos.mutable_lease_ttl()->set_nanos(2000000000);
  for (bool all_or_nothing : {false, true}) {
    SCOPED_TRACE(all_or_nothing ? "all_or_nothing" : "each");
    v1::AcquireBatchRequest batch =
        BatchOf({AcquireOf("team-a/key", "requests"), forever, bad_nanos});
    batch.set_decisions_only(true);
    batch.set_all_or_nothing(all_or_nothing);
    ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
    ASSERT_EQ(resp.results_size(), 3);
    ASSERT_TRUE(resp.results(1).has_error()) << resp.results(1).DebugString();
    EXPECT_EQ(resp.results(1).error().code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(resp.results(1).error().message(), HasSubstr("items[1]"));
    if (!all_or_nothing) {
      EXPECT_TRUE(resp.results(0).response().granted());
      ASSERT_TRUE(resp.results(2).has_error()) << resp.results(2).DebugString();
      EXPECT_THAT(resp.results(2).error().message(), HasSubstr("items[2]"));
    } else {
      EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
    }
  }
  EXPECT_EQ(RequestsUsed(), 1);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);
}

// Per-item errors in a decisions_only batch name their item, and the error of one item does not
// leave a partly built answer in the next: each answer is its own decision.
TEST_F(BatchArenaAttackTest, DecisionsOnlyErrorsNameTheirItemAndLeaveNoPartialAnswer) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireRequest bad_ttl = AcquireOf("team-a/key", "requests");
  bad_ttl.mutable_lease_ttl()->set_seconds(-5);
  v1::AcquireBatchRequest batch =
      BatchOf({AcquireOf("team-a/key", "requests", "e1"), AcquireOf("team-a/key", "jobs", "e1"),
               bad_ttl, AcquireOf("team-b/key", "requests"), AcquireOf("team-a/key", "jobs")});
  batch.set_decisions_only(true);
  ASSERT_OK_AND_ASSIGN(v1::AcquireBatchResponse resp, quota_->AcquireBatch(alice, batch));
  ASSERT_EQ(resp.results_size(), 5);
  EXPECT_TRUE(resp.results(0).response().granted());
  // The same request_id on another feature: an error naming the item, and its grant given back.
  ASSERT_TRUE(resp.results(1).has_error()) << resp.results(1).DebugString();
  EXPECT_THAT(resp.results(1).error().message(), HasSubstr("items[1]"));
  EXPECT_FALSE(resp.results(1).has_response());
  ASSERT_TRUE(resp.results(2).has_error());
  EXPECT_THAT(resp.results(2).error().message(), AllOf(HasSubstr("items[2]"), HasSubstr("-5")));
  ASSERT_TRUE(resp.results(3).has_error());  // alice may not use team-b/key
  EXPECT_EQ(resp.results(3).error().code(), static_cast<int>(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(resp.results(3).error().message(), HasSubstr("items[3]"));
  // Item 1's slot was given back: item 4 gets the one slot of jobs.
  ASSERT_TRUE(resp.results(4).has_response());
  EXPECT_TRUE(resp.results(4).response().granted());
  EXPECT_EQ(resp.results(4).response().limits_size(), 0);
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 2u);
}

}  // namespace
}  // namespace quotad

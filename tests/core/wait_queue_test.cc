// Waiting Acquires: served in order, at the exact moment capacity frees, on a fake clock; and
// the wait queue unit itself (wait_queue.h): serving order and which waiter holds a request back.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/compiled_policy.h"
#include "service/core/ledger.h"
#include "service/core/wait_queue.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using testing::Bucket;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Sliding;
using testing::StatusIs;
using testing::Utc;

struct Answered {
  int who;
  absl::Time at;
  absl::StatusOr<Decision> result;
};

class WaitQueueTest : public ::testing::Test {
 protected:
  void Use(std::vector<FeatureSpec> features, int64_t max_waiters = 10000) {
    LedgerOptions options;
    options.max_waiters_per_credential = max_waiters;
    options.wake = [this](absl::Time t) { wakes_.push_back(t); };
    auto ledger = Ledger::Create(OneCredential("vt", std::move(features)), &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
  }
  WaitTicket Wait(int who, absl::Duration max_wait, int priority = 0,
                  absl::string_view feature = "requests") {
    AcquireRequest req;
    req.credential = "vt";
    req.feature = feature;
    req.lease_ttl = absl::Minutes(30);
    return ledger_->AcquireOrWait(req, max_wait, priority, [this, who](absl::StatusOr<Decision> d) {
      answered_.push_back({who, clock_.Now(), std::move(d)});
    });
  }
  absl::StatusOr<Decision> Now(absl::string_view feature = "requests") {
    AcquireRequest req;
    req.credential = "vt";
    req.feature = feature;
    return ledger_->Acquire(req);
  }
  // Runs the timer loop the server runs: Pump at the time it asks for, until nobody waits or
  // `until` passes.
  void RunUntil(absl::Time until) {
    for (absl::Time next = ledger_->Pump(); next <= until; next = ledger_->Pump()) {
      if (next > clock_.Now()) clock_.Set(next);
    }
  }

  FakeClock clock_{Utc(2026, 4, 1, 9)};
  std::unique_ptr<Ledger> ledger_;
  std::vector<Answered> answered_;
  std::vector<absl::Time> wakes_;
};

TEST_F(WaitQueueTest, HundredWaitersGetGrantsInArrivalOrderAtExactSpacing) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  const absl::Time t0 = clock_.Now();
  for (int i = 0; i < 100; ++i) Wait(i, absl::Hours(1));
  ASSERT_EQ(answered_.size(), 1u);  // the first fits at once
  EXPECT_EQ(ledger_->waiting(), 99);
  ASSERT_FALSE(wakes_.empty());
  EXPECT_EQ(wakes_.back(), t0 + absl::Seconds(15));
  RunUntil(t0 + absl::Hours(1));
  ASSERT_EQ(answered_.size(), 100u);
  for (int i = 0; i < 100; ++i) {
    ASSERT_OK(answered_[i].result);
    EXPECT_TRUE(answered_[i].result->granted) << i;
    EXPECT_EQ(answered_[i].who, i);
    EXPECT_EQ(answered_[i].at, t0 + absl::Seconds(15) * i) << i;
  }
  EXPECT_EQ(ledger_->waiting(), 0);
}

TEST_F(WaitQueueTest, CancelledWaiterLeavesTheQueueAndIsNeverAnswered) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  std::vector<WaitTicket> tickets;
  for (int i = 0; i < 5; ++i) tickets.push_back(Wait(i, absl::Hours(1)));
  EXPECT_TRUE(ledger_->Cancel(tickets[2]));
  EXPECT_FALSE(ledger_->Cancel(tickets[2]));
  EXPECT_FALSE(ledger_->Cancel(tickets[0]));  // answered at once: nothing to cancel
  EXPECT_EQ(ledger_->waiting(), 3);
  RunUntil(clock_.Now() + absl::Hours(1));
  ASSERT_EQ(answered_.size(), 4u);
  EXPECT_EQ(answered_[2].who, 3);  // 3 took 2's turn
  EXPECT_EQ(answered_[2].at - answered_[1].at, absl::Seconds(15));
}

TEST_F(WaitQueueTest, HigherPriorityIsServedFirstFifoWithin) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  Wait(0, absl::Hours(1));  // granted at once
  Wait(1, absl::Hours(1), 0);
  Wait(2, absl::Hours(1), 5);
  Wait(3, absl::Hours(1), 0);
  Wait(4, absl::Hours(1), 5);
  RunUntil(clock_.Now() + absl::Hours(1));
  ASSERT_EQ(answered_.size(), 5u);
  std::vector<int> order;
  for (const Answered& a : answered_) order.push_back(a.who);
  EXPECT_EQ(order, (std::vector<int>{0, 2, 4, 1, 3}));
}

TEST_F(WaitQueueTest, WaiterIsDeniedAtItsDeadlineWithRetryAt) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  const absl::Time t0 = clock_.Now();
  Wait(0, absl::Hours(1));
  Wait(1, absl::Seconds(20));  // served at 15 s
  Wait(2, absl::Seconds(20));  // would need 30 s: denied at 20 s
  RunUntil(t0 + absl::Hours(1));
  ASSERT_EQ(answered_.size(), 3u);
  EXPECT_TRUE(answered_[1].result->granted);
  EXPECT_EQ(answered_[2].who, 2);
  EXPECT_FALSE(answered_[2].result->granted);
  EXPECT_EQ(answered_[2].at, t0 + absl::Seconds(20));
  EXPECT_EQ(answered_[2].result->retry_at, t0 + absl::Seconds(30));
  EXPECT_EQ(answered_[2].result->limited_by, "requests.floor");
}

TEST_F(WaitQueueTest, NewRequestsDoNotPassWaitingOnes) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  const absl::Time t0 = clock_.Now();
  Wait(0, absl::Hours(1));
  Wait(1, absl::Hours(1));
  clock_.Set(t0 + absl::Seconds(15));  // capacity is free, but 1 waits for it
  const Decision d = *Now();
  EXPECT_FALSE(d.granted);
  ASSERT_EQ(answered_.size(), 2u);  // serving the queue first answered 1
  EXPECT_EQ(answered_[1].who, 1);
  EXPECT_TRUE(answered_[1].result->granted);
}

TEST_F(WaitQueueTest, ReleaseServesTheHeadAtOnce) {
  Use({Feature("jobs", {Concurrency("concurrent", 1)})});
  Wait(0, absl::Hours(1), 0, "jobs");
  Wait(1, absl::Hours(1), 0, "jobs");
  ASSERT_EQ(answered_.size(), 1u);
  ASSERT_OK(ledger_->Release(answered_[0].result->lease_id, std::nullopt));
  ASSERT_EQ(answered_.size(), 2u);  // no Pump needed
  EXPECT_TRUE(answered_[1].result->granted);
  EXPECT_EQ(answered_[1].at, answered_[0].at);
}

TEST_F(WaitQueueTest, LeaseExpiryServesTheHeadAtTheExpiry) {
  Use({Feature("jobs", {Concurrency("concurrent", 1)})});
  const absl::Time t0 = clock_.Now();
  Wait(0, absl::Hours(1), 0, "jobs");  // lease_ttl 30 min
  Wait(1, absl::Hours(1), 0, "jobs");
  RunUntil(t0 + absl::Hours(1));
  ASSERT_EQ(answered_.size(), 2u);
  EXPECT_EQ(answered_[1].at, t0 + absl::Minutes(30));
}

TEST_F(WaitQueueTest, FullQueueIsResourceExhaustedWithTheCount) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})}, /*max_waiters=*/3);
  for (int i = 0; i < 5; ++i) Wait(i, absl::Hours(1));
  ASSERT_EQ(answered_.size(), 2u);  // the one granted at once, and the one refused
  EXPECT_EQ(answered_[1].who, 4);
  EXPECT_THAT(answered_[1].result, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_NE(answered_[1].result.status().message().find("3 requests waiting"), std::string::npos)
      << answered_[1].result.status();
}

// Issue 11, finding 9: a sibling feature drawing on the same limit does not pass the waiter.
TEST_F(WaitQueueTest, WaiterIsNotPassedByAFeatureDrawingOnTheSameLimit) {
  FeatureSpec scan = Feature("scan", {Sliding("scan_per_min", 100, absl::Minutes(1))});
  scan.draws_on = {"requests"};
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)}), scan});
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(Now().value().granted);
  Wait(0, absl::Hours(1));  // waits for the floor
  clock_.Set(t0 + absl::Seconds(15));
  const Decision sibling = *Now("scan");
  EXPECT_FALSE(sibling.granted);
  ASSERT_EQ(answered_.size(), 1u);  // serving first granted the waiter
  EXPECT_TRUE(answered_[0].result->granted);
  clock_.Set(t0 + absl::Seconds(30));
  EXPECT_TRUE(Now("scan").value().granted);  // nobody waits now
}

TEST_F(WaitQueueTest, WaitersOfUnrelatedFeaturesDoNotHoldEachOtherBack) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)}),
       Feature("jobs", {Concurrency("concurrent", 1)})});
  ASSERT_TRUE(Now().value().granted);
  Wait(0, absl::Hours(1));  // waits for the floor
  Wait(1, absl::Hours(1), 0, "jobs");
  ASSERT_EQ(answered_.size(), 1u);
  EXPECT_EQ(answered_[0].who, 1);
  EXPECT_TRUE(answered_[0].result->granted);
}

// Issue 11, finding 10: cancelling the head serves the next one at once.
TEST_F(WaitQueueTest, CancellingTheHeadServesTheNextAtOnce) {
  Use({Feature("jobs", {Concurrency("concurrent", 2)})});
  AcquireRequest big;
  big.credential = "vt";
  big.feature = "jobs";
  big.cost = 2;
  big.lease_ttl = absl::Minutes(30);
  ASSERT_TRUE(ledger_->Acquire(AcquireRequest{.credential = "vt", .feature = "jobs",
                                              .lease_ttl = absl::Minutes(30)})
                  .value()
                  .granted);
  const WaitTicket head = ledger_->AcquireOrWait(
      big, absl::Hours(1), 0, [this](absl::StatusOr<Decision> d) {
        answered_.push_back({0, clock_.Now(), std::move(d)});
      });
  Wait(1, absl::Hours(1), 0, "jobs");  // one slot is free, but the head waits for two
  EXPECT_TRUE(answered_.empty());
  ASSERT_TRUE(ledger_->Cancel(head));
  ASSERT_EQ(answered_.size(), 1u);  // no Pump, no unrelated request needed
  EXPECT_EQ(answered_[0].who, 1);
  EXPECT_TRUE(answered_[0].result->granted);
}

TEST_F(WaitQueueTest, AnswerAllWaitersEmptiesEveryQueue) {
  Use({Feature("requests", {Bucket("floor", 4, absl::Minutes(1), 1)})});
  for (int i = 0; i < 4; ++i) Wait(i, absl::Hours(1));
  ledger_->AnswerAllWaiters(absl::UnavailableError("shutting down"));
  ASSERT_EQ(answered_.size(), 4u);
  EXPECT_THAT(answered_[3].result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(ledger_->waiting(), 0);
  EXPECT_EQ(ledger_->Pump(), absl::InfiniteFuture());
}

// A waiter of `feature` and `scope` at `priority`, `id`-th to arrive.
void Park(ledger_internal::WaiterMap& waiters, std::string feature, std::string scope,
          int priority, uint64_t id) {
  auto w = std::make_unique<ledger_internal::Waiter>();
  w->feature = std::move(feature);
  w->scope = std::move(scope);
  w->priority = priority;
  w->id = id;
  waiters.emplace(ledger_internal::WaiterKeyOf(priority, id), std::move(w));
}

TEST(WaiterMapTest, ServesHigherPriorityFirstThenArrivalOrder) {
  ledger_internal::WaiterMap waiters;
  Park(waiters, "f", "", 0, 1);
  Park(waiters, "f", "", 5, 2);
  Park(waiters, "f", "", 0, 3);
  std::vector<uint64_t> order;
  for (const auto& [key, w] : waiters) order.push_back(w->id);
  EXPECT_EQ(order, (std::vector<uint64_t>{2, 1, 3}));
}

TEST(WaiterMapTest, FirstConflictIsTheFirstWaiterAtOrAbovePriorityThatSharesACounter) {
  LimitSpec per_scope = Sliding("per_scope", 10, absl::Minutes(1));
  per_scope.scoped = true;
  const CompiledCredential cc({Feature("a", {per_scope}), Feature("b", {Concurrency("slots", 1)}),
                               Feature("c", {Concurrency("slots", 1)})});
  ledger_internal::WaiterMap waiters;
  Park(waiters, "a", "x", 3, 1);
  Park(waiters, "b", "", 1, 2);
  Park(waiters, "b", "", 1, 3);
  const int a = cc.FindFeature("a");
  const int b = cc.FindFeature("b");
  const int c = cc.FindFeature("c");
  ledger_internal::Waiter* first = ledger_internal::FirstConflict(waiters, cc, b, "", 0);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->id, 2u);
  EXPECT_EQ(ledger_internal::FirstConflict(waiters, cc, b, "", 2), nullptr);  // above them
  EXPECT_EQ(ledger_internal::FirstConflict(waiters, cc, a, "y", 0), nullptr);  // other scope
  ASSERT_NE(ledger_internal::FirstConflict(waiters, cc, a, "x", 3), nullptr);
  EXPECT_EQ(ledger_internal::FirstConflict(waiters, cc, c, "", 0), nullptr);  // own slots
}

}  // namespace
}  // namespace quotad

// Ledger::AcquireAll, the all-or-nothing batch: every item granted or none charged, across
// credentials, limit kinds and shared counters; what a refused batch leaves behind (nothing: the
// whole capacity is still there, no slot held, no journal row); waiters it must not pass; and
// batches racing single acquires and each other in opposite credential orders (no deadlock, no
// window over its capacity, never half a batch).

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Credential;
using testing::Feature;
using testing::Sliding;
using testing::Utc;

// The request views its names: they must outlive it (literals, or the caller's strings).
AcquireRequest Item(absl::string_view credential, absl::string_view feature, int64_t cost = 1) {
  AcquireRequest req;
  req.credential = credential;
  req.feature = feature;
  req.cost = cost;
  req.lease_ttl = absl::Minutes(5);
  return req;
}

// Two credentials ("vt", "md") with one feature of every kind the test needs.
Policy TwoCredentials() {
  Policy p;
  for (const char* name : {"vt", "md"}) {
    p.credentials.push_back(Credential(
        name, "",
        {Feature("day", {Calendar("per_day", 10, CalendarUnit::kDay)}),
         Feature("slide", {Sliding("per_min", 6, absl::Minutes(1))}),
         Feature("bucket", {Bucket("rate", 4, absl::Minutes(1), 4)}),
         Feature("jobs", {Concurrency("slots", 3)})}));
  }
  return p;
}

class LedgerAcquireAllTest : public ::testing::Test {
 protected:
  void Start() {
    LedgerOptions options;
    options.journal = &journal_;
    auto ledger = Ledger::Create(TwoCredentials(), &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  void SetUp() override { Start(); }

  // How many single acquires of `feature` on `credential` are granted from here on (the
  // capacity a refused batch must have left whole).
  int Drain(const std::string& credential, const std::string& feature) {
    int n = 0;
    for (;;) {
      absl::StatusOr<Decision> d = ledger_->Acquire(Item(credential, feature));
      if (!d.ok() || !d->granted) return n;
      ++n;
    }
  }

  FakeClock clock_{Utc(2026, 3, 1, 12)};
  MemoryJournal journal_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(LedgerAcquireAllTest, GrantsEveryItemAcrossCredentials) {
  std::vector<AcquireRequest> items = {Item("vt", "day", 4), Item("md", "slide", 6),
                                       Item("md", "jobs", 3), Item("vt", "bucket", 2)};
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
  ASSERT_EQ(out.size(), items.size());
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_OK(out[i]);
    EXPECT_TRUE(out[i]->granted) << i;
    EXPECT_FALSE(out[i]->lease_id.ToString().empty());
  }
  EXPECT_EQ(Drain("vt", "day"), 6);
  EXPECT_EQ(Drain("md", "slide"), 0);
  EXPECT_EQ(Drain("md", "jobs"), 0);
  // The leases are real: releasing the concurrency one frees its slots.
  ASSERT_OK(ledger_->Release(out[2]->lease_id, std::nullopt));
  EXPECT_EQ(Drain("md", "jobs"), 3);
}

TEST_F(LedgerAcquireAllTest, ADeniedItemLeavesEveryOtherItemUncharged) {
  ASSERT_EQ(Drain("md", "slide"), 6);  // md's sliding window is full
  std::vector<AcquireRequest> items = {Item("vt", "day", 10), Item("vt", "jobs", 3),
                                       Item("vt", "bucket", 4), Item("md", "slide", 1),
                                       Item("vt", "slide", 6)};
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
  ASSERT_EQ(out.size(), items.size());
  ASSERT_OK(out[3]);
  EXPECT_FALSE(out[3]->granted);
  EXPECT_EQ(out[3]->limited_by, "slide.per_min");
  for (int i : {0, 1, 2, 4}) {
    ASSERT_OK(out[i]);
    EXPECT_FALSE(out[i]->granted) << i;
    EXPECT_EQ(out[i]->limited_by, "all_or_nothing:items[3]") << i;
    EXPECT_EQ(out[i]->retry_at, out[3]->retry_at) << i;
  }
  // Everything the items before it took was given back, whole, of every kind.
  EXPECT_EQ(Drain("vt", "day"), 10);
  EXPECT_EQ(Drain("vt", "jobs"), 3);
  EXPECT_EQ(Drain("vt", "bucket"), 4);
  EXPECT_EQ(Drain("vt", "slide"), 6);
  EXPECT_EQ(ledger_->Leases("vt").size(), 10u + 3 + 4 + 6);  // only the drains' leases
}

TEST_F(LedgerAcquireAllTest, ItemsOnOneCounterAddUp) {
  // 6 + 5 > 10 on one calendar day: refused whole, though each fits alone.
  std::vector<absl::StatusOr<Decision>> out =
      ledger_->AcquireAll({Item("vt", "day", 6), Item("vt", "day", 5)});
  ASSERT_OK(out[1]);
  EXPECT_FALSE(out[1]->granted);
  EXPECT_EQ(out[1]->limited_by, "day.per_day");
  EXPECT_EQ(out[0]->limited_by, "all_or_nothing:items[1]");
  // Two charges on one token bucket, then a third that does not fit: the bucket is refunded
  // exactly (latest first), so its whole burst is there again.
  out = ledger_->AcquireAll({Item("md", "bucket", 2), Item("md", "bucket", 2),
                             Item("md", "bucket", 1)});
  ASSERT_OK(out[2]);
  EXPECT_FALSE(out[2]->granted);
  EXPECT_EQ(Drain("md", "bucket"), 4);
  // 6 + 4 = 10 fits exactly.
  out = ledger_->AcquireAll({Item("vt", "day", 6), Item("vt", "day", 4)});
  EXPECT_TRUE(out[0]->granted && out[1]->granted);
  EXPECT_EQ(Drain("vt", "day"), 0);
}

TEST_F(LedgerAcquireAllTest, AnErrorRefusesTheWholeBatchNamingTheItem) {
  std::vector<absl::StatusOr<Decision>> out =
      ledger_->AcquireAll({Item("vt", "jobs", 2), Item("vt", "nope"), Item("md", "day")});
  EXPECT_EQ(out[1].status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(out[1].status().message().find("nope"), std::string::npos);
  for (int i : {0, 2}) {
    ASSERT_OK(out[i]);
    EXPECT_FALSE(out[i]->granted);
    EXPECT_EQ(out[i]->limited_by, "all_or_nothing:items[1]");
    EXPECT_EQ(out[i]->retry_at, absl::InfiniteFuture());
  }
  EXPECT_EQ(Drain("vt", "jobs"), 3);
  // An unknown credential and a bad cost are found before anything is locked or charged.
  out = ledger_->AcquireAll({Item("md", "day"), Item("ghost", "day")});
  EXPECT_EQ(out[1].status().code(), absl::StatusCode::kNotFound);
  out = ledger_->AcquireAll({Item("md", "day", 0), Item("vt", "day")});
  EXPECT_EQ(out[0].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out[1]->limited_by, "all_or_nothing:items[0]");
  EXPECT_EQ(Drain("md", "day"), 10);
  EXPECT_TRUE(ledger_->AcquireAll({}).empty());
}

TEST_F(LedgerAcquireAllTest, ARefusedBatchLeavesNoSlotAcrossARestart) {
  // The concurrency item's lease is written ahead before the grant is answered; the refusal
  // deletes it, so a restart (a new ledger from the same journal) holds no slot for it.
  ASSERT_EQ(Drain("md", "day"), 10);
  std::vector<absl::StatusOr<Decision>> out =
      ledger_->AcquireAll({Item("vt", "jobs", 3), Item("md", "day")});
  EXPECT_FALSE(out[0]->granted);
  Start();
  EXPECT_EQ(Drain("vt", "jobs"), 3);
  EXPECT_EQ(Drain("md", "day"), 0);  // its reservations survived: a restart grants no more
}

TEST_F(LedgerAcquireAllTest, DoesNotPassAWaiter) {
  ASSERT_EQ(Drain("vt", "jobs"), 3);
  std::atomic<int> answered{0};
  WaitTicket ticket = ledger_->AcquireOrWait(Item("vt", "jobs"), absl::Minutes(1), 0,
                                             [&](absl::StatusOr<Decision>) { answered++; });
  ASSERT_NE(ticket.credential, nullptr);  // parked
  // Free one slot by expiry-free means: release one of the drained leases.
  std::vector<LeaseInfo> leases = ledger_->Leases("vt");
  ASSERT_FALSE(leases.empty());
  ASSERT_OK(ledger_->Release(leases[0].id, std::nullopt));
  // The waiter got the slot; a batch asking for it is refused and charges nothing elsewhere.
  EXPECT_EQ(answered.load(), 1);
  std::vector<absl::StatusOr<Decision>> out =
      ledger_->AcquireAll({Item("md", "day", 10), Item("vt", "jobs")});
  EXPECT_FALSE(out[1]->granted);
  EXPECT_EQ(Drain("md", "day"), 10);
}

// Batches in opposite credential orders race single acquires and releases on 4 threads: no
// deadlock (the test ends), every batch is all granted or all refused, and no window holds
// more than its capacity (the drains after the race add up exactly).
TEST_F(LedgerAcquireAllTest, RacingBatchesNeverDeadlockNorGrantHalf) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 3000;
  std::atomic<int> half{0}, errors{0};
  std::atomic<int64_t> day_units[2] = {0, 0};  // units granted on vt, md "day" (never released)
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      const std::string first = t % 2 == 0 ? "vt" : "md";
      const std::string second = t % 2 == 0 ? "md" : "vt";
      std::vector<LeaseId> jobs;
      for (int r = 0; r < kRounds; ++r) {
        if (rng() % 3 == 0) {
          absl::StatusOr<Decision> d = ledger_->Acquire(Item(second, "jobs"));
          if (!d.ok()) errors++;
          if (d.ok() && d->granted) jobs.push_back(d->lease_id);
        } else {
          const int64_t day_cost = rng() % 100 == 0 ? 1 : 0;  // the day limits drain slowly
          std::vector<AcquireRequest> items = {Item(first, "jobs"), Item(second, "jobs")};
          if (day_cost > 0) items.push_back(Item(first, "day", day_cost));
          std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
          int granted = 0;
          for (const auto& d : out) {
            if (!d.ok()) errors++;
            if (d.ok() && d->granted) ++granted;
          }
          if (granted != 0 && granted != static_cast<int>(items.size())) half++;
          if (granted == static_cast<int>(items.size())) {
            jobs.push_back(out[0]->lease_id);
            jobs.push_back(out[1]->lease_id);
            if (day_cost > 0) day_units[first == "vt" ? 0 : 1] += day_cost;
          }
        }
        while (jobs.size() > 1 || (!jobs.empty() && rng() % 2 == 0)) {
          if (!ledger_->Release(jobs.back(), std::nullopt).ok()) errors++;
          jobs.pop_back();
        }
      }
      for (const LeaseId& id : jobs) {
        if (!ledger_->Release(id, std::nullopt).ok()) errors++;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(half.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  // Every slot came back, and the day limits counted exactly what the batches were granted.
  EXPECT_EQ(Drain("vt", "jobs"), 3);
  EXPECT_EQ(Drain("md", "jobs"), 3);
  EXPECT_EQ(Drain("vt", "day"), 10 - day_units[0].load());
  EXPECT_EQ(Drain("md", "day"), 10 - day_units[1].load());
}

}  // namespace
}  // namespace quotad

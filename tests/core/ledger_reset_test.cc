// Ledger::Reset: an operator starts a credential over. Counters go to zero (held slots stay),
// and so does what Report learnt (outside estimates, back-offs, cooldowns), also across a
// restart from the journal.

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

class LedgerResetTest : public ::testing::Test {
 protected:
  std::unique_ptr<Ledger> Open() {
    FeatureSpec f = Feature("f", {Calendar("per_minute", 100, CalendarUnit::kMinute),
                                  Sliding("per_2s", 10, absl::Seconds(2))});
    f.throttle.initial_backoff = absl::Seconds(1);
    f.throttle.max_backoff = absl::Seconds(30);
    LedgerOptions options;
    options.journal = &journal_;
    auto ledger = Ledger::Create(OneCredential("key", {f}), &clock_, options);
    EXPECT_OK(ledger);
    EXPECT_OK((*ledger)->Restore());
    return *std::move(ledger);
  }
  int64_t Outside(Ledger& ledger, absl::string_view limit) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage("key");
    EXPECT_OK(usage);
    for (const LimitStatus& s : *usage) {
      if (s.name == limit) return s.outside_estimate;
    }
    return -1;
  }
  bool Grants(Ledger& ledger) {
    absl::StatusOr<Decision> d = ledger.Acquire({.credential = "key", .feature = "f"});
    EXPECT_OK(d);
    return d.ok() && d->granted;
  }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
  MemoryJournal journal_;
};

TEST_F(LedgerResetTest, ForgetsOutsideEstimatesAndCooldownsAlsoAfterARestart) {
  std::unique_ptr<Ledger> ledger = Open();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Grants(*ledger));
  // Throttled with room left on the 2 s window: outside use is learnt there, and it cools down.
  UpstreamAnswer throttle{.credential = "key", .feature = "f", .http_status = 429,
                          .headers = {{"Retry-After", "20"}}};
  ASSERT_OK(ledger->Report(throttle).status());
  EXPECT_GT(Outside(*ledger, "f.per_2s"), 0);
  EXPECT_FALSE(Grants(*ledger));  // cooling down

  ASSERT_OK(ledger->Reset("key"));
  EXPECT_EQ(Outside(*ledger, "f.per_2s"), 0);
  EXPECT_TRUE(Grants(*ledger));
  // A restart from the same journal does not bring the estimate or the cooldown back.
  ledger.reset();
  ledger = Open();
  EXPECT_EQ(Outside(*ledger, "f.per_2s"), 0);
  EXPECT_TRUE(Grants(*ledger));
}

}  // namespace
}  // namespace quotad

// Ledger::Reload's memory (issue 18, finding 4): a reload keeps an older compiled version of a
// credential only while a lease or a retired counter points into it, and publishes a new table
// only when the set of credentials changes, so repeated reloads do not grow the ledger.

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

Policy WithCapacity(int64_t per_minute, int64_t slots) {
  return OneCredential("vt", {Feature("requests", {Sliding("per_minute", per_minute, absl::Minutes(1)),
                                                   Concurrency("jobs", slots)})});
}

TEST(LedgerReloadFootprintTest, ReloadingTheSamePolicyKeepsOneVersionAndOneTable) {
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(WithCapacity(10, 4), &clock));
  for (int i = 0; i < 100; ++i) ASSERT_OK(ledger->Reload(WithCapacity(10, 4)));
  EXPECT_EQ(ledger->Footprint().versions, 1u);
  EXPECT_EQ(ledger->Footprint().tables, 1u);
}

TEST(LedgerReloadFootprintTest, EditedVersionsLiveOnlyAsLongAsALeaseHoldsThem) {
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(WithCapacity(1000, 4), &clock));
  AcquireRequest req{.credential = "vt", .feature = "requests", .lease_ttl = absl::Minutes(5)};
  ASSERT_OK_AND_ASSIGN(Decision held, ledger->Acquire(req));
  ASSERT_TRUE(held.granted);
  // Lowering a capacity carries the counters: no retired counter, only the lease keeps v1.
  for (int i = 1; i <= 50; ++i) ASSERT_OK(ledger->Reload(WithCapacity(1000 - i, 4)));
  EXPECT_EQ(ledger->Footprint().versions, 2u);  // the one in force and the lease's
  EXPECT_EQ(ledger->Footprint().tables, 1u);
  // The lease still refunds and frees its slot through its own version.
  ASSERT_OK(ledger->Release(held.lease_id, /*used=*/0).status());
  ASSERT_OK(ledger->Reload(WithCapacity(900, 4)));
  EXPECT_EQ(ledger->Footprint().versions, 1u);
}

TEST(LedgerReloadFootprintTest, ARetiredCounterKeepsItsVersionUntilItDrains) {
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(WithCapacity(10, 100), &clock));
  AcquireRequest req{.credential = "vt", .feature = "requests", .lease_ttl = absl::Seconds(1)};
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(req));
    ASSERT_TRUE(d.granted);
  }
  // A sliding window turned into an hourly calendar window: rebuilt, the old counter retired.
  Policy hourly = OneCredential(
      "vt", {Feature("requests", {Calendar("per_minute", 10, CalendarUnit::kHour),
                                  Concurrency("jobs", 100)})});
  ASSERT_OK(ledger->Reload(hourly));
  clock.Advance(absl::Seconds(2));  // the leases expired
  ledger->Sweep();
  ASSERT_OK(ledger->Reload(hourly));
  EXPECT_EQ(ledger->Footprint().versions, 2u);  // the retired sliding counter's rule
  // The window of the old rule has passed: its counter drained; the version goes.
  clock.Advance(absl::Minutes(2));
  ASSERT_OK(ledger->Reload(hourly));
  EXPECT_EQ(ledger->Footprint().versions, 1u);
  // And the retired counter still counted while it lived: 7 more fit the hour, not 10.
  int granted = 0;
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(req));
    granted += d.granted;
  }
  EXPECT_EQ(granted, 7);
}

TEST(LedgerReloadFootprintTest, ANewTableOnlyWhenTheCredentialsChange) {
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(WithCapacity(10, 4), &clock));
  Policy two = WithCapacity(10, 4);
  two.credentials.push_back(OneCredential("md", {Feature("scans", {Concurrency("jobs", 1)})})
                                .credentials[0]);
  ASSERT_OK(ledger->Reload(two));
  ASSERT_OK(ledger->Reload(two));
  EXPECT_EQ(ledger->Footprint().tables, 2u);
  ASSERT_OK(ledger->Reload(WithCapacity(10, 4)));
  EXPECT_EQ(ledger->Footprint().tables, 3u);
}

// Credentials share a compiled policy only when every field of their features is the same
// (SameFeatures): one limit field apart, each runs under its own; and a reload that changes one
// credential's features (here a throttle's multiplier, closer than six digits) compiles that one
// anew and keeps the others' version and counters.
TEST(LedgerReloadFootprintTest, CredentialsShareAPolicyOnlyWhenEveryFieldIsTheSame) {
  auto three = [](int64_t c_capacity, double c_multiplier) {
    Policy p = WithCapacity(10, 100);
    p.credentials[0].name = "a";
    p.credentials.push_back(p.credentials[0]);
    p.credentials[1].name = "b";
    p.credentials.push_back(WithCapacity(c_capacity, 100).credentials[0]);
    p.credentials[2].name = "c";
    p.credentials[2].features[0].throttle.multiplier = c_multiplier;
    return p;
  };
  FakeClock clock;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(three(10, 2.0), &clock));
  EXPECT_EQ(ledger->Footprint().versions, 1u);  // a, b and c alike
  ASSERT_OK(ledger->Reload(three(3, 2.0)));
  EXPECT_EQ(ledger->Footprint().versions, 2u);  // c apart: per_minute 3
  auto granted = [&](const char* credential, int tries) {
    int n = 0;
    for (int i = 0; i < tries; ++i) {
      AcquireRequest req{.credential = credential, .feature = "requests"};
      absl::StatusOr<Decision> d = ledger->Acquire(req);
      EXPECT_OK(d.status());
      n += d.ok() && d->granted;
    }
    return n;
  };
  EXPECT_EQ(granted("c", 5), 3);
  EXPECT_EQ(granted("a", 5), 5);
  EXPECT_EQ(granted("b", 5), 5);
  ASSERT_OK(ledger->Reload(three(3, 2.0000001)));
  EXPECT_EQ(ledger->policy().credentials[2].features[0].throttle.multiplier, 2.0000001);
  EXPECT_EQ(ledger->policy().credentials[0].features[0].throttle.multiplier, 2.0);
  EXPECT_EQ(ledger->Footprint().versions, 3u);  // a and b's, c's new one, c's leases' one
  // a kept its counters through both reloads: 5 of its 10 are left.
  EXPECT_EQ(granted("a", 10), 5);
  EXPECT_EQ(granted("c", 5), 0);
}

}  // namespace
}  // namespace quotad

// Ledger's request API on one credential, without a journal: Acquire over several limits at
// once (all or nothing, draws_on, scopes and max_scopes, the denial that names the limit freeing
// last), Release with `used` and its refunds, Renew, the validation of requests (each error
// names the value), Reload (keeps used units, applies new capacities, a bad policy changes
// nothing), Reset and Leases. Limit kinds at their boundaries are in limits_test, restarts in
// ledger_journal_test, Report in ledger_report_test, and the adversarial cases in
// ledger_adversarial_test and ledger_never_over_test.

#include "service/core/ledger.h"

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::IsOk;
using testing::OneCredential;
using testing::Sliding;
using testing::StatusIs;
using testing::Utc;

// A CyberVault-like credential: `requests` with minute, day and concurrency limits;
// `threats_scan` with its own 5/min that also draws on the `requests` limits.
Policy CyberVault(int64_t per_minute = 60, int64_t per_day = 100) {
  FeatureSpec requests = Feature("requests", {Sliding("per_minute", per_minute, absl::Minutes(1)),
                                              Calendar("per_day", per_day, CalendarUnit::kDay),
                                              Concurrency("concurrent", 100)});
  FeatureSpec scan = Feature("threats_scan", {Sliding("per_minute", 5, absl::Minutes(1))});
  scan.draws_on = {"requests"};
  LimitSpec per_ruleset = Calendar("per_day", 2, CalendarUnit::kDay);
  per_ruleset.scoped = true;
  FeatureSpec livehunt =
      Feature("livehunt", {per_ruleset, Calendar("total", 5, CalendarUnit::kDay)});
  livehunt.max_scopes = 3;
  return OneCredential("cybervault/prod", {requests, scan, livehunt});
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    clock_.Set(Utc(2026, 3, 1, 12));
    Make(CyberVault());
  }
  void Make(const Policy& p) {
    auto ledger = Ledger::Create(p, &clock_);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
  }
  absl::StatusOr<Decision> Try(absl::string_view feature, int64_t cost = 1,
                               absl::string_view scope = "") {
    AcquireRequest req;
    req.credential = "cybervault/prod";
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    req.holder = "worker-1";
    return ledger_->Acquire(req);
  }
  Decision Acquire(absl::string_view feature, int64_t cost = 1, absl::string_view scope = "") {
    auto d = Try(feature, cost, scope);
    EXPECT_OK(d);
    return d.ok() ? *d : Decision{};
  }
  int64_t Used(absl::string_view limit, absl::string_view scope = "") {
    auto usage = ledger_->Usage("cybervault/prod");
    EXPECT_OK(usage);
    for (const LimitStatus& s : *usage) {
      if (s.name == limit && s.scope == scope) return s.used;
    }
    ADD_FAILURE() << "no limit " << limit;
    return -1;
  }

  FakeClock clock_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(LedgerTest, OneFullLimitChargesNoneOfTheOthers) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Acquire("threats_scan").granted);
  EXPECT_EQ(Used("requests.per_minute"), 5);
  EXPECT_EQ(Used("requests.per_day"), 5);
  const Decision denied = Acquire("threats_scan");
  EXPECT_FALSE(denied.granted);
  EXPECT_EQ(denied.limited_by, "threats_scan.per_minute");
  EXPECT_EQ(Used("requests.per_minute"), 5);
  EXPECT_EQ(Used("requests.per_day"), 5);
  EXPECT_EQ(Used("requests.concurrent"), 5);
}

TEST_F(LedgerTest, DrawnOnLimitDeniesTheDrawingFeature) {
  for (int i = 0; i < 60; ++i) ASSERT_TRUE(Acquire("requests").granted) << i;
  const Decision denied = Acquire("threats_scan");
  EXPECT_FALSE(denied.granted);
  EXPECT_EQ(denied.limited_by, "requests.per_minute");
  EXPECT_EQ(Used("threats_scan.per_minute"), 0);
}

TEST_F(LedgerTest, DenialNamesTheLimitThatFreesLast) {
  Make(CyberVault(/*per_minute=*/60, /*per_day=*/3));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Acquire("requests").granted);
  const Decision denied = Acquire("requests");
  EXPECT_EQ(denied.limited_by, "requests.per_day");
  EXPECT_EQ(denied.retry_at, Utc(2026, 3, 2));
}

TEST_F(LedgerTest, DecisionReportsEveryLimitTouched) {
  const Decision d = Acquire("threats_scan", 2);
  ASSERT_TRUE(d.granted);
  ASSERT_EQ(d.limits.size(), 4u);
  EXPECT_EQ(d.limits[0].name, "threats_scan.per_minute");
  EXPECT_EQ(d.limits[0].remaining, 3);
  EXPECT_EQ(d.limits[2].name, "requests.per_day");
  EXPECT_EQ(d.limits[2].remaining, 98);
  EXPECT_EQ(d.limits[2].reset, Utc(2026, 3, 2));
}

TEST_F(LedgerTest, ScopesHaveTheirOwnCountersAndShareUnscopedOnes) {
  EXPECT_EQ(Acquire("livehunt", 2, "ruleset-a").granted, true);
  EXPECT_FALSE(Acquire("livehunt", 1, "ruleset-a").granted);
  EXPECT_TRUE(Acquire("livehunt", 2, "ruleset-b").granted);
  const Decision d = Acquire("livehunt", 2, "ruleset-c");
  EXPECT_FALSE(d.granted);  // the unscoped total (5) is the one that is full
  EXPECT_EQ(d.limited_by, "livehunt.total");
  EXPECT_EQ(Used("livehunt.per_day", "ruleset-a"), 2);
  EXPECT_EQ(Used("livehunt.per_day", "ruleset-b"), 2);
  EXPECT_EQ(Used("livehunt.total"), 4);
}

TEST_F(LedgerTest, TooManyScopesIsResourceExhaustedWithTheScope) {
  for (const char* s : {"a", "b", "c"}) ASSERT_OK(Try("livehunt", 1, s));
  auto d = Try("livehunt", 1, "d");
  EXPECT_THAT(d, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("'d'")));
  EXPECT_OK(Try("livehunt", 1, "a"));  // known scopes still work
}

TEST_F(LedgerTest, ReleaseWithUsedRefundsTheRestInTheOpenWindow) {
  const Decision d = Acquire("requests", 20);
  ASSERT_TRUE(d.granted);
  auto r = ledger_->Release(d.lease_id, 5);
  ASSERT_OK(r);
  EXPECT_EQ(r->refunded, 15);
  EXPECT_EQ(Used("requests.per_minute"), 5);
  EXPECT_EQ(Used("requests.per_day"), 5);
  EXPECT_EQ(Used("requests.concurrent"), 0);
}

TEST_F(LedgerTest, RefundAfterTheWindowClosedGivesNothingBack) {
  clock_.Set(Utc(2026, 3, 1, 23, 59, 30));
  AcquireRequest req;
  req.credential = "cybervault/prod";
  req.feature = "requests";
  req.cost = 10;
  req.lease_ttl = absl::Minutes(5);
  auto d = ledger_->Acquire(req);
  ASSERT_OK(d);
  ASSERT_TRUE(d->granted);
  clock_.Set(Utc(2026, 3, 2, 0, 0, 10));  // the day closed; the sliding minute is still open
  ASSERT_TRUE(Acquire("requests", 1).granted);
  auto r = ledger_->Release(d->lease_id, 0);
  ASSERT_OK(r);
  EXPECT_EQ(Used("requests.per_day"), 1);     // the new day's unit is untouched
  EXPECT_EQ(Used("requests.per_minute"), 1);  // the minute got its 10 back
}

TEST_F(LedgerTest, ReleaseRejectsUsedAboveCostAndKeepsTheLease) {
  const Decision d = Acquire("requests", 3);
  auto bad = ledger_->Release(d.lease_id, 4);
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("used 4")));
  EXPECT_THAT(ledger_->Release(d.lease_id, -1), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_OK(ledger_->Release(d.lease_id, 3));
  EXPECT_THAT(ledger_->Release(d.lease_id, 3), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(LedgerTest, BadRequestsNameTheValue) {
  auto unknown = ledger_->Acquire({.credential = "nope", .feature = "requests"});
  EXPECT_THAT(unknown, StatusIs(absl::StatusCode::kNotFound, HasSubstr("'nope'")));
  auto feature = Try("unknown_feature");
  EXPECT_THAT(feature, StatusIs(absl::StatusCode::kNotFound, HasSubstr("'unknown_feature'")));
  auto zero = Try("requests", 0);
  EXPECT_THAT(zero, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cost 0")));
  auto huge = Try("threats_scan", 6);
  EXPECT_THAT(huge, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(huge.status().message().find("threats_scan.per_minute"), std::string::npos)
      << huge.status();
  auto long_name = Try(std::string(300, 'x'));
  EXPECT_THAT(long_name, StatusIs(absl::StatusCode::kInvalidArgument));
  auto ttl = ledger_->Acquire(
      {.credential = "cybervault/prod", .feature = "requests", .lease_ttl = absl::Hours(100)});
  EXPECT_THAT(ttl, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("100h")));
  // Nothing was charged by any of them.
  EXPECT_EQ(Used("requests.per_day"), 0);
}

TEST_F(LedgerTest, ReloadKeepsUsedUnitsAndAppliesNewCapacity) {
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(Acquire("requests").granted);
  const Decision held = Acquire("requests");
  ASSERT_TRUE(held.granted);
  ASSERT_OK(ledger_->Reload(CyberVault(/*per_minute=*/60, /*per_day=*/40)));
  EXPECT_EQ(Used("requests.per_day"), 51);
  const Decision d = Acquire("requests");
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.limited_by, "requests.per_day");
  EXPECT_EQ(Used("requests.concurrent"), 51);
  // A lease granted under the old policy still releases its slot under the new one.
  auto r = ledger_->Release(held.lease_id, std::nullopt);
  ASSERT_OK(r);
  EXPECT_EQ(r->freed, 1);
}

TEST_F(LedgerTest, BadReloadKeepsTheOldPolicy) {
  Policy bad = CyberVault();
  bad.credentials[0].features[0].limits[0].capacity = -4;
  const absl::Status s = ledger_->Reload(bad);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("-4")));
  EXPECT_TRUE(Acquire("requests").granted);
}

TEST_F(LedgerTest, ResetZeroesWindowsButKeepsHeldSlots) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Acquire("requests").granted);
  ASSERT_OK(ledger_->Reset("cybervault/prod"));
  EXPECT_EQ(Used("requests.per_day"), 0);
  EXPECT_EQ(Used("requests.concurrent"), 5);
  EXPECT_THAT(ledger_->Reset("nope"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(LedgerTest, LeasesListsLiveLeasesWithHolders) {
  ASSERT_TRUE(Acquire("requests").granted);
  ASSERT_TRUE(Acquire("threats_scan").granted);
  const std::vector<LeaseInfo> leases = ledger_->Leases("cybervault/prod");
  ASSERT_EQ(leases.size(), 2u);
  EXPECT_EQ(leases[0].holder, "worker-1");
  EXPECT_TRUE(leases[0].holds_slots);
  clock_.Advance(absl::Minutes(2));  // past the default TTL
  EXPECT_TRUE(ledger_->Leases("").empty());
  EXPECT_EQ(ledger_->Sweep(), 2);
}

TEST_F(LedgerTest, LeaseCountsCountLiveLeasesPerCredential) {
  EXPECT_TRUE(ledger_->LeaseCounts().empty());
  ASSERT_TRUE(Acquire("requests").granted);
  ASSERT_TRUE(Acquire("threats_scan").granted);
  const Decision released = Acquire("requests");
  ASSERT_TRUE(released.granted);
  ASSERT_OK(ledger_->Release(released.lease_id, 1));
  EXPECT_THAT(ledger_->LeaseCounts(), ::testing::ElementsAre(::testing::Pair("cybervault/prod", 2)));
  clock_.Advance(absl::Minutes(2));  // past the default TTL: expired leases are not counted
  EXPECT_TRUE(ledger_->LeaseCounts().empty());
}

}  // namespace
}  // namespace quotad

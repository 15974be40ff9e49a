// AcquireBatchRequest.decisions_only (commit c901055) reaches the ledger as
// AcquireRequest::want_limits = false, which skips reading every counter after the decision
// (Counter::View rolls a counter's window as it reads). The promise: "Decisions are the same
// either way". Two ledgers on two fake clocks moved alike are fed one seeded sequence of
// grants, batches (AcquireAll), releases, renewals, sweeps and time steps over every limit kind
// (scoped too); one asks for limits, the other never does. Every decision (granted, limited_by,
// retry_at, lease expiry) and the usage at the end must be the same. Bounded: 3 seeds x 1500
// operations.

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

Policy EveryKind() {
  LimitSpec scoped = Sliding("per_scope", 3, absl::Minutes(1));
  scoped.scoped = true;
  return OneCredential(
      "x", {Feature("roll", {Rolling("per_min", 7, absl::Minutes(1))}),
            Feature("slide", {Sliding("per_min", 6, absl::Minutes(1)),
                              Sliding("per_hour", 40, absl::Hours(1), /*sub_buckets=*/6)}),
            Feature("bucket", {Bucket("burst", 2, absl::Seconds(10), 4)}),
            Feature("cal", {Calendar("per_hour", 9, CalendarUnit::kHour)}),
            Feature("slots", {Concurrency("held", 3), Rolling("per_min", 10, absl::Minutes(1))}),
            Feature("scoped", {scoped}, {"roll"})});
}

struct Side {
  std::unique_ptr<FakeClock> clock;
  std::unique_ptr<Ledger> ledger;
  std::vector<std::optional<LeaseId>> leases;  // by grant number
};

std::string Describe(const absl::StatusOr<Decision>& d) {
  if (!d.ok()) return d.status().ToString();
  return absl::StrCat(d->granted ? "granted until " : "denied by ", d->granted ? "" : d->limited_by,
                      d->granted ? absl::FormatTime(d->lease_expiry)
                                 : absl::StrCat(" retry ", absl::FormatTime(d->retry_at)));
}

TEST(DecisionsOnlyParityTest, DecisionsAreTheSameWithAndWithoutLimits) {
  const std::vector<std::string> features = {"roll", "slide", "bucket", "cal", "slots", "scoped"};
  const std::vector<std::string> scopes = {"a", "b", "c"};
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    Side sides[2];
    for (Side& s : sides) {
      s.clock = std::make_unique<FakeClock>(Utc(2026, 6, 1, 10, 59, 30));
      ASSERT_OK_AND_ASSIGN(s.ledger, Ledger::Create(EveryKind(), s.clock.get()));
    }
    std::mt19937 rng(seed);
    int decisions = 0, grants = 0;
    for (int op = 0; op < 1500; ++op) {
      const int kind = static_cast<int>(rng() % 10);
      if (kind <= 3) {  // one grant
        const std::string& feature = features[rng() % features.size()];
        const std::string& scope = scopes[rng() % scopes.size()];
        const int64_t cost = 1 + static_cast<int64_t>(rng() % 3);
        const absl::Duration ttl = absl::Seconds(5 + rng() % 60);
        absl::StatusOr<Decision> d[2];
        for (int s = 0; s < 2; ++s) {
          d[s] = sides[s].ledger->Acquire(AcquireRequest{.credential = "x",
                                                         .feature = feature,
                                                         .scope = scope,
                                                         .cost = cost,
                                                         .lease_ttl = ttl,
                                                         .want_limits = s == 0});
        }
        ASSERT_EQ(Describe(d[0]), Describe(d[1])) << "op " << op << " " << feature;
        ++decisions;
        if (d[0].ok() && d[0]->granted) {
          ++grants;
          EXPECT_FALSE(d[0]->limits.empty());
          EXPECT_TRUE(d[1]->limits.empty());
          for (int s = 0; s < 2; ++s) sides[s].leases.push_back(d[s]->lease_id);
        }
      } else if (kind == 4) {  // a batch, all or nothing
        const int n = 2 + static_cast<int>(rng() % 3);
        std::vector<std::string> picked;
        std::vector<int64_t> costs;
        for (int i = 0; i < n; ++i) {
          picked.push_back(features[rng() % features.size()]);
          costs.push_back(1 + static_cast<int64_t>(rng() % 2));
        }
        std::vector<absl::StatusOr<Decision>> d[2];
        for (int s = 0; s < 2; ++s) {
          std::vector<AcquireRequest> reqs;
          for (int i = 0; i < n; ++i) {
            reqs.push_back(AcquireRequest{.credential = "x",
                                          .feature = picked[i],
                                          .scope = "a",
                                          .cost = costs[i],
                                          .want_limits = s == 0});
          }
          d[s] = sides[s].ledger->AcquireAll(reqs);
        }
        ASSERT_EQ(d[0].size(), d[1].size());
        for (size_t i = 0; i < d[0].size(); ++i) {
          ASSERT_EQ(Describe(d[0][i]), Describe(d[1][i])) << "op " << op << " item " << i;
          ++decisions;
          if (d[0][i].ok() && d[0][i]->granted) {
            ++grants;
            for (int s = 0; s < 2; ++s) sides[s].leases.push_back(d[s][i]->lease_id);
          }
        }
      } else if (kind <= 6 && !sides[0].leases.empty()) {  // release or renew one
        const size_t i = rng() % sides[0].leases.size();
        const bool renew = kind == 6;
        const int64_t used = static_cast<int64_t>(rng() % 2);
        std::string r[2];
        for (int s = 0; s < 2; ++s) {
          std::optional<LeaseId>& id = sides[s].leases[i];
          if (!id.has_value()) continue;
          if (renew) {
            absl::StatusOr<absl::Time> t = sides[s].ledger->Renew(*id, absl::Seconds(30));
            r[s] = t.ok() ? absl::FormatTime(*t) : t.status().ToString();
          } else {
            absl::StatusOr<ReleaseResult> rr = sides[s].ledger->Release(*id, used);
            r[s] = rr.ok() ? absl::StrCat(rr->freed, "/", rr->refunded) : rr.status().ToString();
            id.reset();
          }
        }
        // Error texts name the (different) lease ids: compare what they say before the id.
        if (r[0].find("lease ") != std::string::npos) {
          EXPECT_NE(r[1].find("lease "), std::string::npos) << "op " << op << ": " << r[1];
        } else {
          ASSERT_EQ(r[0], r[1]) << "op " << op << (renew ? " renew" : " release");
        }
      } else if (kind == 7) {
        ASSERT_EQ(sides[0].ledger->Sweep(), sides[1].ledger->Sweep()) << "op " << op;
      } else {
        const absl::Duration step = absl::Milliseconds(rng() % 8000);
        for (Side& s : sides) s.clock->Advance(step);
      }
    }
    EXPECT_GT(grants, 100);
    EXPECT_GT(decisions - grants, 100);
    ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> u0, sides[0].ledger->Usage("x"));
    ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> u1, sides[1].ledger->Usage("x"));
    ASSERT_EQ(u0.size(), u1.size());
    for (size_t i = 0; i < u0.size(); ++i) {
      EXPECT_EQ(u0[i].name, u1[i].name);
      EXPECT_EQ(u0[i].scope, u1[i].scope) << u0[i].name;
      EXPECT_EQ(u0[i].used, u1[i].used) << u0[i].name << " " << u0[i].scope;
      EXPECT_EQ(u0[i].reset, u1[i].reset) << u0[i].name << " " << u0[i].scope;
    }
  }
}

}  // namespace
}  // namespace quotad

// Attacks on Ledger::Acquire's validation since it looks the credential up first and skips the
// name's syntax check for a configured credential (ValidateRequest(req, configured)): names a
// check would refuse sitting next to configured ones (an embedded NUL, a control byte, a
// configured name with bytes appended, a name over the length limit, an empty one), a
// configured name of the maximum length, and a credential removed and added again by reloads
// while calls run. Every refused name must still get INVALID_ARGUMENT naming the value (as
// before the change), and nothing may be granted to such a request or over a limit.

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/names.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders
using ::testing::HasSubstr;

constexpr int64_t kSlots = 3;

Policy TwoCredentials(bool with_gone) {
  Policy p;
  p.credentials.push_back(
      Credential("team/a", "", {Feature("conc", {Concurrency("slots", kSlots)})}));
  p.credentials.push_back(Credential(std::string(kMaxNameLength, 'L'), "",
                                     {Feature("conc", {Concurrency("slots", kSlots)})}));
  if (with_gone) {
    p.credentials.push_back(
        Credential("team/gone", "", {Feature("conc", {Concurrency("slots", kSlots)})}));
  }
  return p;
}

AcquireRequest Req(absl::string_view credential) {
  AcquireRequest r;
  r.credential = credential;
  r.feature = "conc";
  r.lease_ttl = absl::Minutes(5);
  return r;
}

// Names the syntax check refuses, each close to a configured one.
std::vector<std::string> BadNames() {
  return {
      std::string("team/a\0", 7),            // configured name + NUL
      std::string("team/a\0x", 8),           // NUL inside
      std::string("\0team/a", 7),            // NUL first
      "team/a\n",                            // control byte
      "team/a ",                             // a space
      "team/a\xff",                          // a non-ASCII byte
      std::string(kMaxNameLength + 1, 'L'),  // the configured long name + one byte
      "team/a" + std::string(1 << 20, 'x'),  // 1 MiB
      "",                                    // empty
  };
}

// Each refused name: INVALID_ARGUMENT naming the field and showing the value (the old answer),
// no grant, nothing charged to the configured credentials.
TEST(LedgerValidateAttackTest, NamesTheCheckRefusesAreRefusedNextToConfiguredOnes) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(TwoCredentials(false), &clock));
  for (const std::string& name : BadNames()) {
    absl::StatusOr<Decision> d = ledger->Acquire(Req(name));
    ASSERT_FALSE(d.ok()) << "granted or decided for " << QuoteValue(name);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument)
        << QuoteValue(name) << ": " << d.status();
    EXPECT_THAT(std::string(d.status().message()), HasSubstr("credential")) << QuoteValue(name);
    if (!name.empty()) {
      // The value is shown (escaped, its head for a long one).
      EXPECT_THAT(std::string(d.status().message()), HasSubstr(QuoteValue(name))) << d.status();
    }
    // The same through AcquireAll (one item, and next to a valid one: none granted).
    std::vector<AcquireRequest> batch = {Req("team/a"), Req(name)};
    std::vector<absl::StatusOr<Decision>> all = ledger->AcquireAll(batch);
    ASSERT_EQ(all.size(), 2u);
    EXPECT_FALSE(all[0].ok() && all[0]->granted) << "batch with " << QuoteValue(name);
    ASSERT_FALSE(all[1].ok()) << QuoteValue(name);
    EXPECT_EQ(all[1].status().code(), absl::StatusCode::kInvalidArgument) << all[1].status();
  }
  // Nothing was charged by any of them.
  for (const std::string& name : {std::string("team/a"), std::string(kMaxNameLength, 'L')}) {
    ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> usage, ledger->Usage(name));
    ASSERT_EQ(usage.size(), 1u);
    EXPECT_EQ(usage[0].used, 0) << name;
  }
}

// A configured name at the length limit is granted (the skipped check would also pass it) and
// only up to its capacity; a valid name that is not configured (a case variant, a prefix) is
// NOT_FOUND naming it.
TEST(LedgerValidateAttackTest, ConfiguredNamesAreGrantedWithinCapacityOthersNotFound) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(TwoCredentials(false), &clock));
  const std::string longest(kMaxNameLength, 'L');
  int granted = 0;
  for (int i = 0; i < 2 * kSlots; ++i) {
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req(longest)));
    granted += d.granted ? 1 : 0;
  }
  EXPECT_EQ(granted, kSlots);
  for (const std::string& name : {std::string("team/A"), std::string("team/"),
                                  std::string("team/aa"), std::string(kMaxNameLength - 1, 'L')}) {
    absl::StatusOr<Decision> d = ledger->Acquire(Req(name));
    ASSERT_FALSE(d.ok()) << name;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound) << d.status();
    EXPECT_THAT(std::string(d.status().message()), HasSubstr(absl::StrCat("'", name, "'")));
  }
}

// Reloads remove and add back "team/gone" while threads ask for it and for its name with a NUL
// appended. The configured name gets a decision or NOT_FOUND, never INVALID_ARGUMENT; the NUL
// name INVALID_ARGUMENT every time; the slots held at the end never exceed the capacity.
TEST(LedgerValidateAttackTest, ReloadRemovingTheCredentialWhileCallsRun) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(TwoCredentials(true), &clock));
  const std::string gone = "team/gone";
  const std::string gone_nul("team/gone\0", 10);
  std::atomic<int> running{2};
  std::atomic<int> wrong{0}, decided{0}, not_found{0}, refused_nul{0};
  std::vector<std::thread> threads;
  // Each thread makes 30,000 rounds, and more (up to 10 s) until the calls have met both the
  // credential configured and removed: on a loaded machine one reload may outlast them all.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  auto more = [&](int n) {
    if (n < 30000) return true;
    return (decided.load() == 0 || not_found.load() == 0) && absl::Now() < give_up;
  };
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      for (int n = 0; more(n); ++n) {
        absl::StatusOr<Decision> d = ledger->Acquire(Req(gone));
        if (d.ok()) {
          ++decided;
        } else if (absl::IsNotFound(d.status())) {
          ++not_found;
        } else {
          ++wrong;
          ADD_FAILURE() << "configured name: " << d.status();
        }
        absl::StatusOr<Decision> bad = ledger->Acquire(Req(gone_nul));
        if (bad.ok() || !absl::IsInvalidArgument(bad.status())) {
          ++wrong;
          ADD_FAILURE() << "NUL name: " << (bad.ok() ? "decided" : bad.status().ToString());
        } else {
          ++refused_nul;
        }
      }
      --running;
    });
  }
  // Reloads for as long as the calls run (bounded).
  int reloads = 0;
  for (; running.load() > 0 && (reloads < 100000 || absl::Now() < give_up); ++reloads) {
    EXPECT_OK(ledger->Reload(TwoCredentials(reloads % 2 == 1)));
  }
  for (std::thread& t : threads) t.join();
  ASSERT_OK(ledger->Reload(TwoCredentials(true)));
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(decided.load(), 0);
  EXPECT_GT(not_found.load(), 0) << "no call ran while the credential was removed";
  EXPECT_GT(refused_nul.load(), 0);
  ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> usage, ledger->Usage(gone));
  ASSERT_EQ(usage.size(), 1u);
  EXPECT_LE(usage[0].used, kSlots);
  // Asked once more now that it is configured: no slot over the capacity.
  int granted = 0;
  for (int i = 0; i < 2 * kSlots; ++i) {
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req(gone)));
    granted += d.granted ? 1 : 0;
  }
  EXPECT_LE(usage[0].used + granted, kSlots);
}

}  // namespace
}  // namespace quotad

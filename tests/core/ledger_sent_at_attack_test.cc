// Attacks on Report's sent_at (UpstreamAnswer::sent_at): a sliding window's count compared with
// quotad's charges from one period before the request was sent, a count not adopted when charges
// it may hold have left the log, and the outside estimate shrinking once per round trip. Each test
// plays the upstream by hand (its own sliding log of every unit, quotad's and an outside tool's)
// and checks that quotad never grants what the upstream would refuse, that an estimate neither
// sticks nor idles the key, and that odd sent_at values (equal to, after, an hour before the
// answer, at the int64 bounds, across a wall-clock step, a restart or a reload) change nothing
// they should not.
//
// Found and fixed here: a count from a call sent more than the guard ago was not adopted at all
// (outside units the upstream reported were dropped, and quotad granted into a full window:
// SlowCallsCountOfOutsideUseIsStillAdopted); one period before an extreme sent_at overflowed
// (ExtremeSentAtsDoNotAdoptQuotadsOwnUnits); a stale request's throttle never shrank an estimate
// that had decayed to nothing (ThrottleFromAStaleRequestShrinksADecayedEstimate). An upstream
// that counts late in the call was under-adopted: Report's contract is now that sent_at is when
// the upstream counted the request (for a provider that counts late, leave it out), and the two
// late-counting tests show that leaving it out is safe (ACountTakenLateInTheCallIsAdopted-
// WithoutSentAt, AnHourOldRequestsCountIsAdoptedWithoutSentAt). Found and left open (DISABLED_,
// it explains): a reload's seed is taken for our own units in a count, with or without sent_at
// (DISABLED_Bug_AnswerAfterAReloadThatRebuiltTheCounterNeverOverGrants).
//
// attack10 (sent_at on full limits): found and fixed, an estimate learnt on a larger capacity
// (a storm with sent_at on a full limit pins it at capacity - 1) decayed from those units after a
// reload or restart shrank the capacity, holding back all but one unit for hours
// (AnEstimateLearntBeforeACapacityShrinkDecaysOnTheNewCapacity, AJournaledEstimateRestored-
// OnAShrunkCapacityDecaysInTime). Held: a whole-capacity cost after a storm, concurrency, Reset.
//
// Sliding logs keep dropped charges one period more (Counter::Log::gone) so that a slow call's
// count is compared exactly; sub-buckets compare with what their ring holds.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

// The upstream's sliding window, as the provider enforces it: every unit that reached it (ours
// and the outside tool's) at the instant it arrived. Not thread-safe.
class UpstreamWindow {
 public:
  UpstreamWindow(int64_t capacity, absl::Duration period) : capacity_(capacity), period_(period) {}
  // Units the upstream counts at `t`: those that arrived in (t - period, t].
  int64_t Count(absl::Time t) const {
    int64_t n = 0;
    for (const auto& [at, units] : sends_) {
      if (at > t - period_ && at <= t) n += units;
    }
    return n;
  }
  // A call of `units` at `t`; false when the upstream refuses it (then it is not counted).
  bool Send(absl::Time t, int64_t units = 1) {
    if (Count(t) + units > capacity_) return false;
    sends_.emplace_back(t, units);
    return true;
  }
  int64_t capacity() const { return capacity_; }

 private:
  const int64_t capacity_;
  const absl::Duration period_;
  std::vector<std::pair<absl::Time, int64_t>> sends_;
};

class SentAtAttackTest : public ::testing::Test {
 protected:
  void Use(std::vector<FeatureSpec> features, Journal* journal = nullptr) {
    LedgerOptions options;
    options.journal = journal;
    options.jitter_seed = 7;
    absl::StatusOr<std::unique_ptr<Ledger>> ledger =
        Ledger::Create(OneCredential("key", std::move(features)), &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = *std::move(ledger);
    if (journal != nullptr) {
      ASSERT_OK(ledger_->Restore());
    }
  }
  Decision Acquire(absl::string_view feature = "f", int64_t cost = 1) {
    AcquireRequest req;
    req.credential = "key";
    req.feature = feature;
    req.cost = cost;
    absl::StatusOr<Decision> d = ledger_->Acquire(req);
    EXPECT_OK(d);
    return d.ok() ? *d : Decision{};
  }
  // A grant that reaches the upstream at once (false: quotad denied it).
  bool GrantAndSend(UpstreamWindow& up) {
    if (!Acquire().granted) return false;
    EXPECT_TRUE(up.Send(clock_.Now())) << "the upstream refused a unit quotad granted at "
                                       << clock_.Now();
    return true;
  }
  // Grants until quotad denies; returns how many it granted (bounded).
  int64_t GrantAll() {
    int64_t n = 0;
    while (n < 1000 && Acquire().granted) ++n;
    return n;
  }
  // An answer of `status` with the upstream's count `used` of a limit of `limit` units.
  UpstreamAnswer Answer(int status, int64_t limit, int64_t used, absl::Time sent_at,
                        absl::Time observed_at = absl::InfinitePast()) {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = status;
    a.headers = {{"X-RateLimit-Limit", absl::StrCat(limit)},
                 {"X-RateLimit-Remaining", absl::StrCat(std::max<int64_t>(0, limit - used))}};
    a.observed_at = observed_at;
    a.sent_at = sent_at;
    return a;
  }
  ReportResult Report(const UpstreamAnswer& a) {
    absl::StatusOr<ReportResult> r = ledger_->Report(a);
    EXPECT_OK(r);
    return r.ok() ? *r : ReportResult{};
  }
  // The status of `limit` (name "f.<limit>").
  LimitStatus Status(absl::string_view limit) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage("key");
    EXPECT_OK(usage);
    for (const LimitStatus& s : *usage) {
      if (s.name == limit) return s;
    }
    ADD_FAILURE() << "no limit " << limit;
    return {};
  }
  // Grants until quotad denies, sending each to `up`; fails on any unit the upstream refuses.
  // Returns the units granted.
  int64_t GrantAllInto(UpstreamWindow& up) {
    int64_t n = 0, refused = 0;
    const int64_t counted = up.Count(clock_.Now());
    while (n < 1000 && Acquire().granted) {
      ++n;
      if (!up.Send(clock_.Now())) ++refused;
    }
    EXPECT_EQ(refused, 0) << "at " << clock_.Now() << " the upstream counted " << counted
                          << " of " << up.capacity() << "; quotad granted " << n << ", "
                          << refused << " of them over";
    return n;
  }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
  std::unique_ptr<Ledger> ledger_;
};

LimitSpec Minute(int64_t capacity, int sub_buckets = 0) {
  LimitSpec l = Sliding("per_minute", capacity, absl::Minutes(1), sub_buckets);
  l.guard = absl::Seconds(1);
  return l;
}

// FOUND, FIXED. sent_at's own model: the upstream counts a call when it arrives (sent_at). A
// call sent at 50 s takes 12 s; the upstream counted 10 of 10 then (our unit from 0 s, 8 of an
// outside tool's from 40 s, and this one). When the answer is seen at 62 s our 0 s unit has left
// the log, so "charges the count may hold have left": nothing was adopted, quotad held 1 unit
// while the upstream held 9 until 100 s, and granted 9 more (the upstream refuses 8). Now the log
// keeps dropped charges one period more (Log::gone) and compares with them: 8 adopted, exactly;
// older ones (and sub-buckets) are compared with what is kept, a lower bound of ours.
TEST_F(SentAtAttackTest, SlowCallsCountOfOutsideUseIsStillAdopted) {
  Use({Feature("f", {Minute(10)})});
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(GrantAndSend(up));
  clock_.Set(t0 + absl::Seconds(40));
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(up.Send(clock_.Now()));  // the outside tool
  clock_.Set(t0 + absl::Seconds(50));
  ASSERT_TRUE(GrantAndSend(up));
  const absl::Time sent = clock_.Now();
  const int64_t counted = up.Count(sent);
  ASSERT_EQ(counted, 10);
  clock_.Set(t0 + absl::Seconds(62));
  Report(Answer(200, 10, counted, sent));
  EXPECT_EQ(up.Count(clock_.Now()), 9);
  EXPECT_EQ(GrantAllInto(up), 1);
  clock_.Set(t0 + absl::Seconds(123));  // 62 s + the span: the adopted units have left
  EXPECT_EQ(GrantAllInto(up), 10);
}

// The same with sub-buckets (the ring's reach instead of the log's dropped charges).
TEST_F(SentAtAttackTest, SlowCallsCountOfOutsideUseIsStillAdoptedWithSubBuckets) {
  Use({Feature("f", {Minute(10, /*sub_buckets=*/6)})});
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(GrantAndSend(up));
  clock_.Set(t0 + absl::Seconds(40));
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(up.Send(clock_.Now()));
  clock_.Set(t0 + absl::Seconds(50));
  ASSERT_TRUE(GrantAndSend(up));
  const absl::Time sent = clock_.Now();
  clock_.Set(t0 + absl::Seconds(85));  // a 35 s call: the 0 s bucket has left the ring
  Report(Answer(200, 10, up.Count(sent), sent));
  EXPECT_EQ(up.Count(clock_.Now()), 9);
  EXPECT_EQ(GrantAllInto(up), 0);  // our 0 s unit, no longer in the ring, counts as outside
}

// An answer to a request sent an hour ago (the server's limit), after an hour of one grant a
// minute, that carries the count of now (10 of 10: our 60 min unit and 9 outside): the upstream
// counted late, so by Report's contract sent_at is left out, and the count is compared with the
// minute before the answer: all 9 outside units are adopted. (With sent_at an hour back, 8 were
// adopted and quotad granted 1 into the full window.)
TEST_F(SentAtAttackTest, AnHourOldRequestsCountIsAdoptedWithoutSentAt) {
  Use({Feature("f", {Minute(10)})});
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(GrantAndSend(up));
  // An hour of one grant a minute; the outside tool fills the rest of the last minute.
  for (int m = 1; m <= 60; ++m) {
    clock_.Set(t0 + absl::Minutes(m));
    ASSERT_TRUE(GrantAndSend(up));
  }
  clock_.Set(t0 + absl::Minutes(60) + absl::Seconds(10));
  while (up.Send(clock_.Now())) {
  }
  ASSERT_EQ(up.Count(clock_.Now()), 10);
  // The hour-old call's answer carries today's count (the upstream counted it late).
  Report(Answer(200, 10, up.Count(clock_.Now()), absl::InfinitePast()));
  EXPECT_EQ(GrantAllInto(up), 0);
}

// sent_at equal to observed_at, absent, or after it (clamped): the same adoption, to the unit.
TEST_F(SentAtAttackTest, SentAtEqualAbsentOrAfterTheAnswerAdoptTheSame) {
  for (const absl::Duration sent_offset :
       {absl::ZeroDuration(), absl::Seconds(5), absl::InfiniteDuration()}) {
    SCOPED_TRACE(absl::StrCat("sent_at = observed_at + ", absl::FormatDuration(sent_offset)));
    clock_.Set(Utc(2026, 6, 21, 10));
    Use({Feature("f", {Minute(10)})});
    const absl::Time t0 = clock_.Now();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(Acquire().granted);
    clock_.Set(t0 + absl::Milliseconds(59500));
    ASSERT_TRUE(Acquire().granted);
    clock_.Set(t0 + absl::Milliseconds(60500));
    const absl::Time observed = clock_.Now();
    const absl::Time sent = sent_offset == absl::InfiniteDuration()
                                ? absl::InfinitePast()
                                : observed + sent_offset;
    const ReportResult r = Report(Answer(200, 10, 8, sent, observed));
    ASSERT_EQ(r.adopted.size(), 1u);
    EXPECT_EQ(r.adopted[0], "f.per_minute used 1 -> 8");  // 1 of ours in the minute before 60.5 s
    clock_.Set(t0 + absl::Seconds(61));
    EXPECT_EQ(Status("f.per_minute").used, 8);
  }
}

// FOUND, FIXED. sent_at at the int64 bounds (and InfiniteFuture, and ancient absl times): one
// period before the bottom one overflowed, every charge looked older than it and quotad adopted
// its own 6 units again (12 of 10 held for a minute). Now: nothing of ours is adopted again.
TEST_F(SentAtAttackTest, ExtremeSentAtsDoNotAdoptQuotadsOwnUnits) {
  const absl::Time extremes[] = {absl::FromUnixNanos(std::numeric_limits<int64_t>::min() + 1),
                                 absl::FromUnixSeconds(-(int64_t{1} << 45)),
                                 absl::FromUnixNanos(std::numeric_limits<int64_t>::max()),
                                 absl::FromUnixSeconds(int64_t{1} << 45),
                                 absl::InfiniteFuture()};
  for (int sub_buckets : {0, 12}) {
    for (const absl::Time sent : extremes) {
      SCOPED_TRACE(absl::StrCat("sent_at ", absl::FormatTime(sent), " sub_buckets ", sub_buckets));
      clock_.Set(Utc(2026, 6, 21, 10));
      Use({Feature("f", {Minute(10, sub_buckets)})});
      for (int i = 0; i < 6; ++i) ASSERT_TRUE(Acquire().granted);
      clock_.Advance(absl::Seconds(1));
      const ReportResult r = Report(Answer(200, 10, 6, sent));
      EXPECT_TRUE(r.adopted.empty()) << r.adopted[0];
      EXPECT_EQ(Status("f.per_minute").used, 6);
      EXPECT_EQ(GrantAll(), 4);
    }
  }
}

// 5 grants at 0 s, one at 59.5 s (sent then); an outside tool takes 4 at 60.2 s and the
// upstream counts the call late, at 60.4 s: 1 + 4 = 5. With sent_at 59.5 s the count would be
// compared with quotad's 6 charges from one period before it: nothing adopted, and at 61 s quotad
// granted 9 while the upstream held 5 (4 over). sent_at is when the upstream counted, so for a
// provider that counts late it is left out: compared with the minute before the answer (1 of
// ours), 4 are adopted and nothing is over.
TEST_F(SentAtAttackTest, ACountTakenLateInTheCallIsAdoptedWithoutSentAt) {
  Use({Feature("f", {Minute(10)})});
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(GrantAndSend(up));
  clock_.Set(t0 + absl::Milliseconds(59500));
  ASSERT_TRUE(GrantAndSend(up));
  clock_.Set(t0 + absl::Milliseconds(60200));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(up.Send(clock_.Now()));
  const int64_t counted = up.Count(t0 + absl::Milliseconds(60400));
  ASSERT_EQ(counted, 5);
  clock_.Set(t0 + absl::Milliseconds(60500));
  Report(Answer(200, 10, counted, absl::InfinitePast()));
  clock_.Set(t0 + absl::Seconds(61));
  EXPECT_EQ(GrantAllInto(up), 5);
}

// Answers arriving out of order never lower what an earlier one adopted.
TEST_F(SentAtAttackTest, AnswersOutOfOrderNeverLowerTheCount) {
  Use({Feature("f", {Minute(10)})});
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(Acquire().granted);
  clock_.Set(t0 + absl::Seconds(10));
  ASSERT_TRUE(Acquire().granted);
  clock_.Set(t0 + absl::Seconds(20));
  // The later request's answer first: 7 counted (2 ours, 5 outside).
  ReportResult r = Report(Answer(200, 10, 7, t0 + absl::Seconds(10)));
  ASSERT_EQ(r.adopted.size(), 1u);
  EXPECT_EQ(Status("f.per_minute").used, 7);
  // Then the earlier request's, with its older, smaller count.
  r = Report(Answer(200, 10, 3, t0));
  EXPECT_TRUE(r.adopted.empty()) << r.adopted[0];
  EXPECT_EQ(Status("f.per_minute").used, 7);
  EXPECT_EQ(GrantAll(), 3);
}

// Refunds racing a report: units refunded after the request was sent give nothing back below
// what the report adopted.
TEST_F(SentAtAttackTest, RefundAfterTheAdoptionDoesNotUndercutIt) {
  Use({Feature("f", {Minute(10)})});
  const absl::Time t0 = clock_.Now();
  const Decision d = Acquire("f", 3);
  ASSERT_TRUE(d.granted);
  clock_.Set(t0 + absl::Seconds(5));
  // Counted 10: our 3 and 7 outside.
  Report(Answer(200, 10, 10, t0));
  ASSERT_OK(ledger_->Release(d.lease_id, 0));  // the lease used nothing after all
  EXPECT_EQ(Status("f.per_minute").used, 10);
  EXPECT_EQ(GrantAll(), 0);
}

// A wall-clock step forward of an hour between the send and the answer: the worker's sent_at is
// on the old wall clock, so it reads as an hour before the call. Whatever the step, quotad does
// not grant into the window the answer showed full.
TEST_F(SentAtAttackTest, WallClockStepsBetweenSendAndAnswerNeverOverGrant) {
  for (const absl::Duration step : {absl::Hours(1), -absl::Hours(1), absl::Seconds(30)}) {
    SCOPED_TRACE(absl::StrCat("wall step ", absl::FormatDuration(step)));
    clock_.Set(Utc(2026, 6, 21, 10));
    Use({Feature("f", {Minute(10)})});
    UpstreamWindow up(10, absl::Minutes(1));
    const absl::Time t0 = clock_.Now();
    ASSERT_TRUE(GrantAndSend(up));
    clock_.Set(t0 + absl::Seconds(50));
    for (int i = 0; i < 8; ++i) ASSERT_TRUE(up.Send(clock_.Now()));
    ASSERT_TRUE(GrantAndSend(up));
    const absl::Time sent_wall = clock_.Now();
    const int64_t counted = up.Count(clock_.Now());
    clock_.StepWall(step);
    clock_.Set(t0 + absl::Seconds(62));
    // The upstream's window is on true time: the test's UpstreamWindow uses the clock before
    // the step (Now() minus the step).
    Report(Answer(200, 10, counted, sent_wall));
    int64_t granted = 0;
    while (granted < 100 && Acquire().granted) {
      ++granted;
      EXPECT_TRUE(up.Send(clock_.Now() - step)) << "unit " << granted;
    }
    clock_.StepWall(-step);
  }
}

// Restart from SQLite between the send and the answer: the restored units stand for charges of
// unknown times; a count with outside units is still adopted, and never over the upstream.
TEST_F(SentAtAttackTest, AnswerAfterARestartNeverOverGrants) {
  TempDir dir;
  const std::string path = dir.path() + "/state.db";
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  absl::Time sent;
  int64_t counted = 0;
  {
    absl::StatusOr<std::unique_ptr<SqliteJournal>> j = SqliteJournal::Open(path);
    ASSERT_OK(j);
    Use({Feature("f", {Minute(10)})}, j->get());
    ASSERT_TRUE(GrantAndSend(up));
    clock_.Set(t0 + absl::Seconds(40));
    for (int i = 0; i < 7; ++i) ASSERT_TRUE(up.Send(clock_.Now()));
    clock_.Set(t0 + absl::Seconds(50));
    ASSERT_TRUE(GrantAndSend(up));
    sent = clock_.Now();
    counted = up.Count(sent);
    ASSERT_EQ(counted, 9);
    ledger_.reset();
  }
  absl::StatusOr<std::unique_ptr<SqliteJournal>> j = SqliteJournal::Open(path);
  ASSERT_OK(j);
  clock_.Set(t0 + absl::Seconds(55));
  Use({Feature("f", {Minute(10)})}, j->get());
  clock_.Set(t0 + absl::Seconds(62));
  Report(Answer(200, 10, counted, sent));
  GrantAllInto(up);
  clock_.Set(t0 + absl::Seconds(101));  // the outside units left upstream at 100 s
  GrantAllInto(up);
  ledger_.reset();
}

// FOUND, LEFT OPEN (older than sent_at: it fails the same without it). A reload that changes
// the guard builds a new counter that starts with the old one's units as if charged at the
// reload (ledger_reload.cc `seed`). quotad granted 5 at 0 s; the reload at 30 s seeds 5 at 30 s.
// The upstream drops ours at 60 s, an outside tool uses 5 at 60.2 s, and an answer counts those
// 5. Adopt takes the 5 seeded units for ours in the count (they are "known" charges, unlike
// units restored after a restart, which `carry_` leaves out), so nothing is adopted; the seed
// leaves quotad at 30 s + 62 s = 92 s, the outside units the upstream at 120.2 s: at 92 s quotad
// grants 5 into a window the upstream holds full (10 of 10). Fix: a seed should count as
// restored units do (not `known`), e.g. a Counter::Seed that charges and moves `carry_`.
TEST_F(SentAtAttackTest, DISABLED_Bug_AnswerAfterAReloadThatRebuiltTheCounterNeverOverGrants) {
  for (const bool with_sent_at : {false, true}) {
    SCOPED_TRACE(with_sent_at ? "with sent_at" : "without sent_at");
    clock_.Set(Utc(2026, 6, 21, 10));
    Use({Feature("f", {Minute(10)})});
    UpstreamWindow up(10, absl::Minutes(1));
    const absl::Time t0 = clock_.Now();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(GrantAndSend(up));
    clock_.Set(t0 + absl::Seconds(30));
    LimitSpec l = Minute(10);
    l.guard = absl::Seconds(2);
    ASSERT_OK(ledger_->Reload(OneCredential("key", {Feature("f", {l})})));
    clock_.Set(t0 + absl::Milliseconds(60200));
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(up.Send(clock_.Now()));  // after ours left at 60 s
    clock_.Set(t0 + absl::Milliseconds(60300));
    const absl::Time sent = clock_.Now();
    clock_.Set(t0 + absl::Milliseconds(60500));
    Report(Answer(200, 10, up.Count(sent), with_sent_at ? sent : absl::InfinitePast()));
    for (const int64_t at_ms : {60600, 92000, 92500, 120300}) {
      clock_.Set(t0 + absl::Milliseconds(at_ms));
      GrantAllInto(up);
    }
  }
}

// Reset while a request is out: its count (taken before the upstream zeroed) arrives after.
// Adopting it only holds back; nothing is granted that the upstream refuses.
TEST_F(SentAtAttackTest, AnswerFromBeforeAResetNeverOverGrants) {
  Use({Feature("f", {Minute(10)})});
  UpstreamWindow up(10, absl::Minutes(1));
  const absl::Time t0 = clock_.Now();
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(GrantAndSend(up));
  const absl::Time sent = clock_.Now();
  clock_.Set(t0 + absl::Seconds(1));
  ASSERT_OK(ledger_->Reset("key"));
  UpstreamWindow fresh(10, absl::Minutes(1));  // the upstream zeroed its counters
  clock_.Set(t0 + absl::Seconds(2));
  Report(Answer(200, 10, 6, sent));
  GrantAllInto(fresh);
  clock_.Set(t0 + absl::Seconds(63));
  EXPECT_EQ(GrantAllInto(fresh), 10 - fresh.Count(clock_.Now()));
}

// --- The outside estimate: once per round trip ---

// Ten requests sent before the first throttle came back, all throttled: the estimate shrinks
// once; a request sent after that decrease shrinks it again.
TEST_F(SentAtAttackTest, ThrottlesOfOneRoundTripShrinkTheEstimateOnce) {
  FeatureSpec f = Feature("f", {Minute(100)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  Use({f});
  const absl::Time t0 = clock_.Now();
  for (int i = 0; i < 10; ++i) {
    clock_.Set(t0 + absl::Milliseconds(100 + i));
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = 429;
    a.sent_at = t0;
    Report(a);
  }
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 10);  // 100 -> 90 once
  clock_.Set(t0 + absl::Milliseconds(200));
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "f";
  a.http_status = 429;
  a.sent_at = t0 + absl::Milliseconds(150);
  Report(a);
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 19);  // 90 -> 81
}

// FOUND, FIXED. A stream of throttles whose sent_at never advances (a stuck or lagging worker
// clock, or one old request retried): after the first decrease the estimate decays to nothing
// in 20 periods, and was then stuck there, every later throttle counting as "sent before the
// last decrease". A decrease that has decayed away no longer covers a throttle.
TEST_F(SentAtAttackTest, ThrottleFromAStaleRequestShrinksADecayedEstimate) {
  FeatureSpec f = Feature("f", {Minute(100)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  Use({f});
  const absl::Time t0 = clock_.Now();
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "f";
  a.http_status = 429;
  a.sent_at = t0;
  clock_.Set(t0 + absl::Seconds(1));
  Report(a);
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 10);
  clock_.Set(t0 + absl::Minutes(30));  // 5% of the capacity a minute: decayed
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 0);
  a.sent_at = t0;  // still before the decrease at 1 s
  Report(a);
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 10);
}

// A throttle stream that pins the estimate at its maximum (capacity - 1) never idles the key: a
// cost that fits the capacity is granted once the cooldown ends.
TEST_F(SentAtAttackTest, AnEstimatePinnedAtItsMaximumStillGrants) {
  FeatureSpec f = Feature("f", {Minute(50)});
  f.throttle.initial_backoff = absl::Milliseconds(10);
  f.throttle.max_backoff = absl::Seconds(1);
  Use({f});
  absl::Time last = clock_.Now();
  for (int i = 0; i < 200; ++i) {
    clock_.Advance(absl::Milliseconds(20));
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = 429;
    a.sent_at = last + absl::Milliseconds(1);  // sent after the previous decrease
    Report(a);
    last = clock_.Now();
  }
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 49);
  clock_.Advance(absl::Seconds(2));  // past any back-off
  EXPECT_TRUE(Acquire("f", 1).granted);
  EXPECT_FALSE(Acquire("f", 1).granted);
  // Even the whole capacity at once is granted eventually (the hold-back leaves room for a cost).
  clock_.Advance(absl::Minutes(2));
  EXPECT_TRUE(Acquire("f", 50).granted);
}

// A throttle whose sent_at is far in the future or past of the ledger's clock (through the core
// API, which does not validate) neither crashes nor idles the key for longer than max_cooldown.
TEST_F(SentAtAttackTest, ThrottlesWithExtremeSentAtsStayBounded) {
  FeatureSpec f = Feature("f", {Minute(10)});
  Use({f});
  for (const absl::Time sent : {absl::FromUnixNanos(std::numeric_limits<int64_t>::min() + 1),
                                absl::FromUnixNanos(std::numeric_limits<int64_t>::max()),
                                absl::InfiniteFuture(), absl::UnixEpoch()}) {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = 429;
    a.sent_at = sent;
    const ReportResult r = Report(a);
    EXPECT_LE(r.cooldown_until, clock_.Now() + absl::Minutes(2)) << absl::FormatTime(sent);
    clock_.Advance(absl::Minutes(3));
  }
  clock_.Advance(absl::Minutes(30));
  EXPECT_TRUE(Acquire().granted);
}

// ---- attack10: the estimate learnt from throttles with sent_at on full limits ----

// A throttle with sent_at, `sent` after the clock's start, reported now.
UpstreamAnswer Throttle(absl::Time sent) {
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "f";
  a.http_status = 429;
  a.sent_at = sent;
  return a;
}

// FOUND, FIXED. A throttle storm with sent_at on a full 100-unit limit ratchets the estimate to
// ~99 units (now learnt, not explained away by the full count). A reload that shrinks the limit
// to 10 units kept the raw 99: Units() clamped it to 9 but decayed it at 5% of the NEW capacity
// (0.5 units a minute) from 99, so 9 of 10 units stayed held back for ~3 hours, where the
// estimate is meant to be gone in 20 periods (20 minutes here). The start is now clamped to
// capacity - 1 before it decays (Units and GoneAt).
TEST_F(SentAtAttackTest, AnEstimateLearntBeforeACapacityShrinkDecaysOnTheNewCapacity) {
  FeatureSpec f = Feature("f", {Minute(100)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(10);
  Use({f});
  ASSERT_EQ(GrantAll(), 100);  // quotad's count is full: every throttle is learnt with sent_at
  for (int i = 0; i < 60; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(20));
    Report(Throttle(sent));
  }
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 99);  // ratcheted to capacity - 1
  FeatureSpec g = Feature("f", {Minute(10)});
  ASSERT_OK(ledger_->Reload(OneCredential("key", {g})));
  EXPECT_LE(Status("f.per_minute").outside_estimate, 9);
  clock_.Advance(absl::Minutes(25));  // 20 periods of 5% of the capacity (and some) later
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 0);
  EXPECT_EQ(GrantAll(), 10);
}

// The same after a restart whose configuration shrank the limit: the journaled 99 units decay on
// the new capacity within 20 periods.
TEST_F(SentAtAttackTest, AJournaledEstimateRestoredOnAShrunkCapacityDecaysInTime) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<SqliteJournal>> journal =
      SqliteJournal::Open(dir.path() + "/j.db");
  ASSERT_OK(journal);
  FeatureSpec f = Feature("f", {Minute(100)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(10);
  Use({f}, journal->get());
  ASSERT_EQ(GrantAll(), 100);
  for (int i = 0; i < 60; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(20));
    Report(Throttle(sent));
  }
  ASSERT_EQ(Status("f.per_minute").outside_estimate, 99);
  // Clean answers end the back-off, so the record is not kept forever by `consecutive`.
  clock_.Advance(absl::Seconds(1));
  Report(Answer(200, 100, 0, clock_.Now()));
  ledger_.reset();
  Use({Feature("f", {Minute(10)})}, journal->get());
  clock_.Advance(absl::Minutes(25));
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 0);
  EXPECT_EQ(GrantAll(), 10);
}

// A storm of throttles with sent_at on a full limit (each sent after the last decrease) pins the
// estimate at capacity - 1; a waiter for the whole capacity is still served once quotad's own
// units leave the window, and the estimate decays away within 20 periods of the last throttle.
TEST_F(SentAtAttackTest, AFullLimitStormNeverStarvesAWholeCapacityCost) {
  FeatureSpec f = Feature("f", {Minute(20)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(50);
  Use({f});
  ASSERT_EQ(GrantAll(), 20);
  for (int i = 0; i < 100; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(100));
    Report(Throttle(sent));
  }
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 19);
  clock_.Advance(absl::Minutes(1));  // quotad's 20 units have left; no back-off is that long
  EXPECT_TRUE(Acquire("f", 20).granted);
  clock_.Advance(absl::Minutes(21));
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 0);
}

// Throttles with sent_at on a concurrency limit whose slots quotad holds all: learnt, but slots
// held from outside are taken to free within seconds, so the key is not idled.
TEST_F(SentAtAttackTest, AConcurrencyStormWithSentAtDoesNotIdleTheKey) {
  FeatureSpec f = Feature("f", {Concurrency("slots", 4)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(50);
  Use({f});
  std::vector<Decision> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(Acquire());
    ASSERT_TRUE(held.back().granted);
  }
  for (int i = 0; i < 50; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(100));
    Report(Throttle(sent));
  }
  for (const Decision& d : held) {
    ASSERT_OK(ledger_->Release(d.lease_id, std::nullopt));
  }
  clock_.Advance(absl::Minutes(4));  // 20 recovery periods of 10 s and more
  EXPECT_EQ(GrantAll(), 4);
}

// Reset forgets what the storm taught: an estimate pinned at capacity - 1 is gone at once.
TEST_F(SentAtAttackTest, ResetForgetsAnEstimateLearntFromAFullLimit) {
  FeatureSpec f = Feature("f", {Minute(10)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(10);
  Use({f});
  ASSERT_EQ(GrantAll(), 10);
  for (int i = 0; i < 30; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(20));
    Report(Throttle(sent));
  }
  ASSERT_EQ(Status("f.per_minute").outside_estimate, 9);
  ASSERT_OK(ledger_->Reset("key"));
  EXPECT_EQ(Status("f.per_minute").outside_estimate, 0);
  EXPECT_EQ(GrantAll(), 10);
}

// A token bucket whose tokens quotad took all, throttled with sent_at again and again: the
// estimate pins at capacity - 1, a whole-burst cost is still granted once the bucket refills,
// and the estimate is gone within 20 refill times.
TEST_F(SentAtAttackTest, ATokenBucketStormWithSentAtDecaysAndNeverStarvesABurst) {
  FeatureSpec f = Feature("f", {Bucket("tb", 10, absl::Minutes(1), 10)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(50);
  Use({f});
  ASSERT_EQ(GrantAll(), 10);
  for (int i = 0; i < 60; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(10));
    Report(Throttle(sent));
  }
  EXPECT_EQ(Status("f.tb").outside_estimate, 9);
  clock_.Advance(absl::Minutes(1));  // refilled; past any back-off
  EXPECT_TRUE(Acquire("f", 10).granted);
  clock_.Advance(absl::Minutes(21));
  EXPECT_EQ(Status("f.tb").outside_estimate, 0);
  EXPECT_EQ(GrantAll(), 10);
}

// A day limit that quotad filled, throttled with sent_at (each request sent after the last
// decrease): the estimate ratchets to capacity - 1 and, by design, decays at 5% of the capacity
// a period (25 h here), so it lasts ~20 days. Bounded as promised: the next day a cost of the
// whole capacity is still granted, no cooldown outlives max_cooldown, and every day the estimate
// is lower. (Not a bug by the estimate's contract; noted for the lead: with sent_at, a storm on a
// full day limit now teaches this, where it used to be explained by quotad's own count.)
TEST_F(SentAtAttackTest, ADayLimitStormIsBoundedByTheEstimatesDecay) {
  FeatureSpec f = Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)});
  f.throttle.initial_backoff = absl::Milliseconds(1);
  f.throttle.max_backoff = absl::Milliseconds(50);
  Use({f});
  ASSERT_EQ(GrantAll(), 100);
  for (int i = 0; i < 60; ++i) {
    const absl::Time sent = clock_.Now();
    clock_.Advance(absl::Milliseconds(10));
    const ReportResult r = Report(Throttle(sent));
    EXPECT_LE(r.cooldown_until, clock_.Now() + absl::Hours(26));  // the longest window
  }
  EXPECT_EQ(Status("f.per_day").outside_estimate, 99);
  clock_.Advance(absl::Hours(24));  // the next day
  EXPECT_TRUE(Acquire("f", 100).granted);
  int64_t last = 99;
  for (int day = 0; day < 22; ++day) {
    clock_.Advance(absl::Hours(24));
    const int64_t now_estimate = Status("f.per_day").outside_estimate;
    EXPECT_LT(now_estimate, std::max<int64_t>(last, 1)) << "day " << day;
    last = now_estimate;
  }
  EXPECT_EQ(last, 0);
}

}  // namespace
}  // namespace quotad

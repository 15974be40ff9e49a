// quotad's Redis function library against a real redis-server: versioned loading, exactly the
// capacity granted under racing callers for each limit kind, all-or-nothing charges, refunds,
// lease renew and expiry, time from Redis whatever the caller's clock, and decision by
// decision agreement with the embedded ledger's counters (service/core/limits.cc).

#include "service/store/redis/redis_functions.h"

#include <atomic>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "service/core/limits.h"
#include "tests/redis/redis_harness.h"

namespace quotad {
namespace redis {
namespace {

using ::quotad::testing::RedisServer;

constexpr char kCred[] = "acme/prod";

LimitSpec Spec(LimitKind kind, int64_t capacity, absl::Duration period = absl::Hours(1)) {
  LimitSpec s;
  s.name = "l";
  s.kind = kind;
  s.capacity = capacity;
  s.period = period;
  if (kind == LimitKind::kCalendar) s.unit = CalendarUnit::kMonth;
  if (kind == LimitKind::kTokenBucket) s.rate = 1;  // one unit per period: no refill in a test
  return s;
}

class RedisFunctionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    client_ = Client(2);
    fn_ = Functions(client_.get(), absl::ZeroDuration());
    absl::StatusOr<int> v = fn_->EnsureLoaded();
    ASSERT_TRUE(v.ok()) << v.status();
  }

  std::unique_ptr<RedisClient> Client(int connections) {
    absl::StatusOr<std::unique_ptr<RedisClient>> c =
        RedisClient::Create({.port = server_->port(), .connections = connections,
                             .call_timeout = absl::Seconds(10)});
    EXPECT_TRUE(c.ok());
    EXPECT_TRUE((*c)->WaitConnected(absl::Seconds(5)));
    return *std::move(c);
  }

  // A caller whose clock is `skew` off Redis's (the machine's).
  static std::unique_ptr<RedisFunctions> Functions(RedisClient* client, absl::Duration skew) {
    return std::make_unique<RedisFunctions>(client, [skew] { return absl::Now() + skew; });
  }

  Rule& AddRule(LimitSpec spec, const std::string& name) {
    rules_.push_back(std::make_unique<Rule>(std::move(spec), name));
    return *rules_.back();
  }

  AcquireCall Call(std::vector<CounterRef> counters, int64_t cost = 1,
                   absl::Duration ttl = absl::Hours(1)) {
    return AcquireCall{kCred, absl::StrCat("lease-", next_lease_++), cost, ttl,
                       std::move(counters)};
  }

  bool Granted(std::vector<CounterRef> counters, int64_t cost = 1) {
    absl::StatusOr<AcquireAnswer> a = fn_->AcquireSync(Call(std::move(counters), cost));
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() && a->granted;
  }

  // `threads` threads, each on its own client (own connections), each with `per_thread`
  // acquires in flight at once on `counters`. Returns how many were granted.
  int64_t Race(const std::vector<CounterRef>& counters, int threads, int per_thread) {
    std::atomic<int64_t> granted{0}, errors{0};
    std::vector<std::thread> workers;
    std::atomic<int> lease{0};
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::unique_ptr<RedisClient> client = Client(2);
        std::unique_ptr<RedisFunctions> fn =
            Functions(client.get(), absl::Seconds(t % 2 == 0 ? -30 : 30));
        absl::BlockingCounter left(per_thread);
        for (int i = 0; i < per_thread; ++i) {
          fn->Acquire(AcquireCall{kCred, absl::StrCat("race-", lease.fetch_add(1)), 1,
                                  absl::Hours(1), counters},
                      [&](absl::StatusOr<AcquireAnswer> a) {
                        if (!a.ok()) {
                          errors.fetch_add(1);
                        } else if (a->granted) {
                          granted.fetch_add(1);
                        }
                        left.DecrementCount();
                      });
        }
        left.Wait();
      });
    }
    for (auto& w : workers) w.join();
    EXPECT_EQ(errors.load(), 0);
    return granted.load();
  }

  std::unique_ptr<RedisServer> server_;
  std::unique_ptr<RedisClient> client_;
  std::unique_ptr<RedisFunctions> fn_;
  std::vector<std::unique_ptr<Rule>> rules_;
  int next_lease_ = 0;
};

TEST_F(RedisFunctionsTest, LoadsItsLibraryAndReplacesAnOlderVersionOnly) {
  const int mine = LibraryVersion();
  ASSERT_GT(mine, 0);
  EXPECT_EQ(*server_->Command({"FCALL_RO", "quotad_version", "0"}), absl::StrCat(mine));
  // An older library is replaced...
  const std::string old_src = absl::StrReplaceAll(
      LibrarySource(), {{absl::StrCat("local VERSION = ", mine), "local VERSION = 0"}});
  ASSERT_EQ(*server_->Command({"FUNCTION", "LOAD", "REPLACE", old_src}), "quotad");
  ASSERT_EQ(*server_->Command({"FCALL_RO", "quotad_version", "0"}), "0");
  EXPECT_EQ(*fn_->EnsureLoaded(), mine);
  EXPECT_EQ(*server_->Command({"FCALL_RO", "quotad_version", "0"}), absl::StrCat(mine));
  // ...a newer one (another replica's) is kept.
  const std::string new_src = absl::StrReplaceAll(
      LibrarySource(),
      {{absl::StrCat("local VERSION = ", mine), absl::StrCat("local VERSION = ", mine + 1)}});
  ASSERT_EQ(*server_->Command({"FUNCTION", "LOAD", "REPLACE", new_src}), "quotad");
  EXPECT_EQ(*fn_->EnsureLoaded(), mine + 1);
}

TEST_F(RedisFunctionsTest, GrantsExactlyTheCapacityToRacingCallersForEachKind) {
  constexpr int64_t kCapacity = 300;
  for (LimitKind kind : {LimitKind::kCalendar, LimitKind::kRolling, LimitKind::kSliding,
                         LimitKind::kTokenBucket, LimitKind::kConcurrency}) {
    SCOPED_TRACE(LimitKindName(kind));
    Rule& rule = AddRule(Spec(kind, kCapacity), absl::StrCat("f.", LimitKindName(kind)));
    // 4 threads x 200 calls in flight, on 4 clients whose clocks are 30 s apart.
    EXPECT_EQ(Race({{rule.full_name, &rule}}, 4, 200), kCapacity);
    EXPECT_FALSE(Granted({{rule.full_name, &rule}}));
  }
}

TEST_F(RedisFunctionsTest, ChargesAllCountersOrNone) {
  Rule& wide = AddRule(Spec(LimitKind::kSliding, 10), "f.wide");
  Rule& narrow = AddRule(Spec(LimitKind::kCalendar, 4), "f.narrow");
  const std::vector<CounterRef> both = {{"f.wide", &wide}, {"f.narrow", &narrow}};
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(Granted(both));
  absl::StatusOr<AcquireAnswer> denied = fn_->AcquireSync(Call(both));
  ASSERT_TRUE(denied.ok());
  EXPECT_FALSE(denied->granted);
  EXPECT_EQ(denied->limiting, 1);  // the calendar window, until its end
  EXPECT_GT(denied->retry_at, denied->now);
  // The denied charge took nothing from `wide`: 6 of its 10 remain.
  EXPECT_EQ(Race({{"f.wide", &wide}}, 2, 20), 6);
}

TEST_F(RedisFunctionsTest, ReleaseRefundsUnusedUnitsAndFreesSlots) {
  for (LimitKind kind : {LimitKind::kCalendar, LimitKind::kRolling, LimitKind::kSliding,
                         LimitKind::kTokenBucket}) {
    SCOPED_TRACE(LimitKindName(kind));
    Rule& rule = AddRule(Spec(kind, 10), absl::StrCat("r.", LimitKindName(kind)));
    const std::vector<CounterRef> counters = {{rule.full_name, &rule}};
    AcquireCall call = Call(counters, 10);
    ASSERT_TRUE(fn_->AcquireSync(call)->granted);
    EXPECT_FALSE(Granted(counters));
    absl::StatusOr<ReleaseAnswer> r =
        fn_->ReleaseSync({kCred, call.lease_id, /*used=*/3, counters});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(r->found);
    EXPECT_EQ(r->refunded, std::vector<int64_t>{7});
    EXPECT_TRUE(Granted(counters, 7));
    EXPECT_FALSE(Granted(counters));
    // A lease ends once.
    EXPECT_FALSE(fn_->ReleaseSync({kCred, call.lease_id, 0, counters})->found);
  }
  Rule& slots = AddRule(Spec(LimitKind::kConcurrency, 2), "r.slots");
  const std::vector<CounterRef> counters = {{"r.slots", &slots}};
  AcquireCall first = Call(counters);
  ASSERT_TRUE(fn_->AcquireSync(first)->granted);
  EXPECT_TRUE(Granted(counters));
  EXPECT_FALSE(Granted(counters));
  absl::StatusOr<ReleaseAnswer> r = fn_->ReleaseSync({kCred, first.lease_id, -1, counters});
  ASSERT_TRUE(r.ok() && r->found);
  EXPECT_EQ(r->freed, 1);
  EXPECT_TRUE(Granted(counters));
  EXPECT_FALSE(Granted(counters));
}

TEST_F(RedisFunctionsTest, NoRefundWithoutUsedOrOnceTheWindowMoved) {
  Rule& rule = AddRule(Spec(LimitKind::kSliding, 5), "n.s");
  const std::vector<CounterRef> counters = {{"n.s", &rule}};
  AcquireCall call = Call(counters, 5);
  ASSERT_TRUE(fn_->AcquireSync(call)->granted);
  absl::StatusOr<ReleaseAnswer> r = fn_->ReleaseSync({kCred, call.lease_id, -1, counters});
  ASSERT_TRUE(r.ok() && r->found);
  EXPECT_EQ(r->refunded, std::vector<int64_t>{0});
  EXPECT_FALSE(Granted(counters));
}

TEST_F(RedisFunctionsTest, LeasesExpireAndRenewMovesTheirSlots) {
  Rule& slots = AddRule(Spec(LimitKind::kConcurrency, 1), "e.slots");
  const std::vector<CounterRef> counters = {{"e.slots", &slots}};
  // A 1 us lease has expired by the next round trip: its slot is free again, and it is gone.
  AcquireCall brief = Call(counters, 1, absl::Microseconds(1));
  ASSERT_TRUE(fn_->AcquireSync(brief)->granted);
  EXPECT_FALSE(fn_->RenewSync({kCred, brief.lease_id, absl::Hours(1), counters})->found);
  EXPECT_FALSE(fn_->ReleaseSync({kCred, brief.lease_id, 0, counters})->found);
  AcquireCall held = Call(counters);
  absl::StatusOr<AcquireAnswer> a = fn_->AcquireSync(held);
  ASSERT_TRUE(a.ok() && a->granted);
  EXPECT_EQ(a->lease_expiry - a->now, absl::Hours(1));  // measured on Redis's clock
  EXPECT_FALSE(Granted(counters));
  // Renewed to 1 us, the lease frees its slot by the next call.
  absl::StatusOr<RenewAnswer> r = fn_->RenewSync({kCred, held.lease_id, absl::Microseconds(1),
                                                  counters});
  ASSERT_TRUE(r.ok() && r->found);
  EXPECT_EQ(r->expiry - r->now, absl::Microseconds(1));
  EXPECT_TRUE(Granted(counters));
}

TEST_F(RedisFunctionsTest, CallerClockSkewDoesNotMatterTimeComesFromRedis) {
  LimitSpec daily = Spec(LimitKind::kCalendar, 5);
  daily.unit = CalendarUnit::kDay;
  Rule& rule = AddRule(daily, "s.daily");
  const std::vector<CounterRef> counters = {{"s.daily", &rule}};
  // Callers 3 days ahead and 3 days behind: the windows they offer do not contain Redis's
  // time, so each call is repeated with windows around it. Together: exactly 5.
  std::unique_ptr<RedisFunctions> ahead = Functions(client_.get(), absl::Hours(72));
  std::unique_ptr<RedisFunctions> behind = Functions(client_.get(), -absl::Hours(72));
  int granted = 0;
  for (int i = 0; i < 5; ++i) {
    RedisFunctions& fn = i % 2 == 0 ? *ahead : *behind;
    absl::StatusOr<AcquireAnswer> a = fn.AcquireSync(Call(counters));
    ASSERT_TRUE(a.ok()) << a.status();
    granted += a->granted;
    EXPECT_LT(absl::AbsDuration(a->now - absl::Now()), absl::Seconds(10));
    EXPECT_EQ(a->lease_expiry - a->now, absl::Hours(1));
  }
  EXPECT_EQ(granted, 5);
  EXPECT_FALSE(ahead->AcquireSync(Call(counters))->granted);
  EXPECT_FALSE(behind->AcquireSync(Call(counters))->granted);
  // The denial's retry is the end of Redis's day, not the caller's.
  absl::StatusOr<AcquireAnswer> d = ahead->AcquireSync(Call(counters));
  int64_t start, end;
  CalendarWindow(CalendarUnit::kDay, absl::UTCTimeZone(), absl::ToUnixNanos(d->now), &start,
                 &end);
  EXPECT_EQ(d->retry_at, absl::FromUnixNanos(end));
}

TEST_F(RedisFunctionsTest, UnlimitedCountsAndNeverDenies) {
  LimitSpec spec = Spec(LimitKind::kUnlimited, 0);
  Rule& rule = AddRule(spec, "u.all");
  for (int i = 0; i < 50; ++i) EXPECT_TRUE(Granted({{"u.all", &rule}}, 1000000));
  // State: start end used ...
  absl::StatusOr<std::string> state =
      server_->Command({"FCALL_RO", "quotad_peek", "1", StateKey(kCred), "u.all", "unl"});
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(*state, ' ')).at(2), "50000000");
}

TEST_F(RedisFunctionsTest, RacingDuplicatesOfARequestIdGrantOnce) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 100), "q.cal");
  Rule& slots = AddRule(Spec(LimitKind::kConcurrency, 100), "q.slots");
  const std::vector<CounterRef> counters = {{"q.cal", &rule}, {"q.slots", &slots}};
  // 4 clients, each sending the same request_id 50 times at once: one grant, one lease.
  std::atomic<int64_t> granted{0}, duplicates{0}, errors{0};
  absl::Mutex mu;
  std::set<std::string> leases;
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      std::unique_ptr<RedisClient> client = Client(2);
      std::unique_ptr<RedisFunctions> fn = Functions(client.get(), absl::ZeroDuration());
      absl::BlockingCounter left(50);
      for (int i = 0; i < 50; ++i) {
        AcquireCall call{kCred, absl::StrCat("dup-", t, "-", i), 3, absl::Hours(1), counters};
        call.feature = "q";
        call.request_id = "req-1";
        call.fingerprint = "feature \"q\" scope \"\" cost 3";
        fn->Acquire(std::move(call), [&, t, i](absl::StatusOr<AcquireAnswer> a) {
          if (!a.ok() || !a->granted) {
            errors.fetch_add(1);
          } else {
            granted.fetch_add(1);
            duplicates.fetch_add(a->duplicate);
            absl::MutexLock lock(&mu);
            leases.insert(a->duplicate ? a->lease_id : absl::StrCat("dup-", t, "-", i));
          }
          left.DecrementCount();
        });
      }
      left.Wait();
    });
  }
  for (auto& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(granted.load(), 200);     // every copy is answered with the grant...
  EXPECT_EQ(duplicates.load(), 199);  // ...made once
  EXPECT_EQ(leases.size(), 1u);
  // Charged once: 97 units and 97 slots remain.
  EXPECT_TRUE(Granted(counters, 97));
  EXPECT_FALSE(Granted(counters, 1));
}

TEST_F(RedisFunctionsTest, ARequestIdReusedForAnotherRequestIsInvalidNamingBoth) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "i.cal");
  const std::vector<CounterRef> counters = {{"i.cal", &rule}};
  AcquireCall first = Call(counters, 2);
  first.request_id = "r";
  first.fingerprint = "feature \"i\" scope \"\" cost 2";
  ASSERT_TRUE(fn_->AcquireSync(first)->granted);
  AcquireCall other = Call(counters, 5);
  other.request_id = "r";
  other.fingerprint = "feature \"i\" scope \"\" cost 5";
  absl::StatusOr<AcquireAnswer> a = fn_->AcquireSync(other);
  ASSERT_TRUE(absl::IsInvalidArgument(a.status())) << a.status();
  EXPECT_EQ(a.status().message(),
            "request_id 'r' was first used for feature \"i\" scope \"\" cost 2; this request is "
            "feature \"i\" scope \"\" cost 5: use a new request_id for a different request");
  // Only the first charged; a denial is not recorded (the retry is decided again).
  EXPECT_TRUE(Granted(counters, 8));
  AcquireCall denied = Call(counters, 1);
  denied.request_id = "d";
  EXPECT_FALSE(fn_->AcquireSync(denied)->granted);
  ASSERT_TRUE(fn_->ReleaseSync({kCred, first.lease_id, 0, counters})->found);
  EXPECT_TRUE(fn_->AcquireSync(denied)->granted);
}

TEST_F(RedisFunctionsTest, ARequestIdIsForgottenAfterItsWindow) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "w.cal");
  const std::vector<CounterRef> counters = {{"w.cal", &rule}};
  AcquireCall call = Call(counters);
  call.request_id = "r";
  call.dedup_window = absl::Seconds(7);
  ASSERT_TRUE(fn_->AcquireSync(call)->granted);
  // Redis expires the record after its window...
  absl::StatusOr<std::string> ttl = server_->Command({"PTTL", DedupKey(kCred, "r")});
  ASSERT_TRUE(ttl.ok());
  int64_t ms = 0;
  ASSERT_TRUE(absl::SimpleAtoi(*ttl, &ms)) << *ttl;
  EXPECT_GT(ms, 0);
  EXPECT_LE(ms, 7000);
  // ...after which (the record deleted here, as its expiry would) a copy is a new request.
  ASSERT_TRUE(server_->Command({"DEL", DedupKey(kCred, "r")}).ok());
  call.lease_id = "second";
  absl::StatusOr<AcquireAnswer> again = fn_->AcquireSync(call);
  ASSERT_TRUE(again.ok() && again->granted);
  EXPECT_FALSE(again->duplicate);
}

// Report, applied on Redis, against the embedded Counter fed the same times.
TEST_F(RedisFunctionsTest, AdoptsTheUpstreamCountLikeTheEmbeddedCounter) {
  for (LimitKind kind : {LimitKind::kCalendar, LimitKind::kRolling, LimitKind::kSliding}) {
    SCOPED_TRACE(LimitKindName(kind));
    Rule& rule = AddRule(Spec(kind, 10), absl::StrCat("a.", LimitKindName(kind)));
    const std::vector<CounterRef> counters = {{rule.full_name, &rule}};
    Counter counter;
    int64_t retry = 0;
    AcquireCall call = Call(counters, 3);
    absl::StatusOr<AcquireAnswer> a = fn_->AcquireSync(call);
    ASSERT_TRUE(a.ok() && a->granted);
    const int64_t charged_at = absl::ToUnixNanos(a->now);
    ASSERT_TRUE(counter.Fits(rule, charged_at, 3, &retry));
    const int64_t token = counter.Charge(rule, charged_at, 3, 1, 0);

    // The upstream counts 7 (4 from outside quotad): adopted, never lowered by a smaller count.
    ReportCall report{kCred, "a", counters, 7};
    report.longest_window = absl::Hours(1);
    report.max_cooldown = absl::Hours(1);
    absl::StatusOr<ReportAnswer> r = fn_->ReportSync(report);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->adopted);
    int64_t added = 0;
    const int64_t rnow = absl::ToUnixNanos(r->now);
    EXPECT_EQ(r->before, counter.Adopt(rule, rnow, 7, 0, rnow, &added));
    EXPECT_EQ(r->added, added);
    EXPECT_EQ(r->added, 4);
    if (added > 0) counter.NoRefundsBefore(rnow);
    report.used = 2;
    ASSERT_TRUE(fn_->ReportSync(report)->added == 0);
    EXPECT_TRUE(Granted(counters, 3));
    EXPECT_FALSE(Granted(counters, 1));

    // The charge made before the adoption gives nothing back (the upstream may hold it).
    absl::StatusOr<ReleaseAnswer> rel = fn_->ReleaseSync({kCred, call.lease_id, 0, counters});
    ASSERT_TRUE(rel.ok() && rel->found);
    EXPECT_EQ(rel->refunded,
              std::vector<int64_t>{counter.Refund(rule, absl::ToUnixNanos(rel->now), token, 3,
                                                  3, charged_at)});
    EXPECT_EQ(rel->refunded, std::vector<int64_t>{0});
  }
}

TEST_F(RedisFunctionsTest, RefundsNeverUndercutAnAdoptedCount) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "f.cal");
  const std::vector<CounterRef> counters = {{"f.cal", &rule}};
  ReportCall report{kCred, "f", counters, 6};
  report.longest_window = absl::Hours(24 * 31);
  report.max_cooldown = absl::Hours(24 * 31);
  ASSERT_TRUE(fn_->ReportSync(report)->adopted);
  // Charged after the adoption: 4 units, released unused. The window keeps the adopted 6.
  AcquireCall call = Call(counters, 4);
  ASSERT_TRUE(fn_->AcquireSync(call)->granted);
  report.used = 9;  // the upstream now counts 9 of our 10: nothing to add, but a floor of 9
  absl::StatusOr<ReportAnswer> r = fn_->ReportSync(report);
  ASSERT_TRUE(r.ok() && r->adopted);
  EXPECT_EQ(r->added, 0);
  absl::StatusOr<ReleaseAnswer> rel = fn_->ReleaseSync({kCred, call.lease_id, 0, counters});
  ASSERT_TRUE(rel.ok() && rel->found);
  EXPECT_EQ(rel->refunded, std::vector<int64_t>{1});  // 10 -> 9, not below
  EXPECT_TRUE(Granted(counters, 1));
  EXPECT_FALSE(Granted(counters, 1));
}

TEST_F(RedisFunctionsTest, RefundAfterAnAdoptionStopsAtTheAdoptedCount) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "g.cal");
  const std::vector<CounterRef> counters = {{"g.cal", &rule}};
  ReportCall report{kCred, "g", counters, 6};
  report.longest_window = absl::Hours(24 * 31);
  report.max_cooldown = absl::Hours(24 * 31);
  ASSERT_TRUE(fn_->ReportSync(report)->adopted);
  AcquireCall call = Call(counters, 4);
  ASSERT_TRUE(fn_->AcquireSync(call)->granted);
  absl::StatusOr<ReleaseAnswer> rel = fn_->ReleaseSync({kCred, call.lease_id, 1, counters});
  ASSERT_TRUE(rel.ok() && rel->found);
  EXPECT_EQ(rel->refunded, std::vector<int64_t>{3});  // 6 adopted + 1 used stay
  EXPECT_TRUE(Granted(counters, 3));
  EXPECT_FALSE(Granted(counters, 1));
}

TEST_F(RedisFunctionsTest, ACountFromAnEarlierWindowIsNotAdopted) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "p.cal");
  const std::vector<CounterRef> counters = {{"p.cal", &rule}};
  ReportCall report{kCred, "p", counters, 10};
  report.reset = absl::Now() - absl::Seconds(30);
  report.longest_window = absl::Hours(24 * 31);
  report.max_cooldown = absl::Hours(24 * 31);
  absl::StatusOr<ReportAnswer> r = fn_->ReportSync(report);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->adopted);
  EXPECT_TRUE(r->reset_passed);
  EXPECT_TRUE(Granted(counters, 10));
}

TEST_F(RedisFunctionsTest, AThrottleCoolsTheFullestLimitForEveryFeatureCappedAtTheLongestWindow) {
  Rule& rule = AddRule(Spec(LimitKind::kCalendar, 10), "c.cal");
  Rule& other = AddRule(Spec(LimitKind::kSliding, 10), "c.slide");
  const std::vector<CounterRef> counters = {{"c.cal", &rule}, {"c.slide", &other}};
  ASSERT_TRUE(Granted({{"c.slide", &other}}, 9));  // 90% full; the calendar limit is empty
  // A throttle without a time: the fullest limit only (AttributeThrottle) backs off for
  // min(1 h, its period) = 1 h, capped at the feature's longest window (here 30 min).
  ReportCall report{kCred, "c", counters};
  report.target = -1;
  report.throttled = true;
  report.max_cooldown = absl::Minutes(30);
  report.initial_backoff = report.max_backoff = absl::Hours(1);
  report.backoffs = {{std::nullopt, 1.0}, {absl::Hours(1), 1.0}};
  absl::StatusOr<ReportAnswer> r = fn_->ReportSync(report);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cooldown_until, r->now + absl::Minutes(30));
  ASSERT_EQ(r->capped.size(), 1u);
  EXPECT_EQ(r->capped[0], r->now + absl::Hours(1));
  AcquireCall call = Call(counters);
  call.feature = "c";
  absl::StatusOr<AcquireAnswer> a = fn_->AcquireSync(call);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->granted);
  EXPECT_TRUE(a->cooling);
  EXPECT_EQ(a->limiting, 1);
  EXPECT_EQ(a->retry_at, r->cooldown_until);
  // Any feature charging the cooling limit waits; one that does not is served.
  EXPECT_FALSE(Granted({{"c.slide", &other}}));
  EXPECT_TRUE(Granted({{"c.cal", &rule}}));
  // With the upstream's Retry-After and no limit to blame, the feature itself cools down, and
  // only it.
  ReportCall feature_cool{kCred, "d", {}};
  feature_cool.target = -1;
  feature_cool.throttled = true;
  feature_cool.retry_at = absl::Now() + absl::Minutes(5);
  feature_cool.max_cooldown = absl::Hours(1);
  r = fn_->ReportSync(feature_cool);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cooldown_until, absl::FromUnixMicros(absl::ToUnixMicros(feature_cool.retry_at)));
  AcquireCall d = Call({{"c.cal", &rule}});
  d.feature = "d";
  a = fn_->AcquireSync(d);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->granted);
  EXPECT_TRUE(a->cooling);
  EXPECT_EQ(a->limiting, -1);
  EXPECT_TRUE(Granted({{"c.cal", &rule}}));  // feature "" is not cooling
}

// A full count cools its limit until the upstream's reset; a count no fuller than the others
// shares the blame with every limit within 2% of the fullest (as Ledger::Report).
TEST_F(RedisFunctionsTest, AThrottleWithAFullCountCoolsItsLimitUntilTheReset) {
  Rule& cal = AddRule(Spec(LimitKind::kCalendar, 10), "t.cal");
  Rule& slide = AddRule(Spec(LimitKind::kSliding, 20), "t.slide");
  const std::vector<CounterRef> counters = {{"t.cal", &cal}, {"t.slide", &slide}};
  ReportCall report{kCred, "t", counters, 10};
  report.full = true;
  report.reset = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) + 600);
  report.longest_window = absl::Hours(24 * 31);
  report.throttled = true;
  report.max_cooldown = absl::Hours(24 * 31);
  absl::StatusOr<ReportAnswer> r = fn_->ReportSync(report);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->adopted);
  EXPECT_EQ(r->added, 10);
  EXPECT_EQ(r->cooldown_until, report.reset);
  EXPECT_TRUE(Granted({{"t.slide", &slide}}));  // not blamed: the count named the calendar
  const absl::Time first_reset = report.reset;
  // The same answer a second too late: an earlier window's count, not adopted, not "full";
  // then both limits are candidates and the fuller (the calendar, 10 of 10) is blamed.
  report.reset = r->now - absl::Seconds(2);
  report.initial_backoff = report.max_backoff = absl::Seconds(7);
  report.backoffs = {{std::nullopt, 1.0}, {absl::Hours(1), 1.0}};
  r = fn_->ReportSync(report);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->reset_passed);
  EXPECT_FALSE(r->adopted);
  EXPECT_TRUE(r->capped.empty());
  // The calendar limit (10 of 10) is blamed, not the sliding one (1 of 20): its 7 s back-off
  // does not shorten the cooldown it has; the sliding limit still grants.
  EXPECT_EQ(r->cooldown_until, first_reset);
  EXPECT_TRUE(Granted({{"t.slide", &slide}}));
}

// Decision by decision against the embedded ledger's Counter, fed the time Redis decided at:
// random costs, releases with random `used`, adoptions of random upstream counts (Report),
// short periods so that windows roll, leases
// expire and buckets refill while the test runs.
void ExpectSameDecisionsAsLimitsCc(RedisFunctions& fn, const Rule& rule, int steps,
                                   uint32_t seed) {
  SCOPED_TRACE(absl::StrCat(LimitKindName(rule.spec.kind), " seed ", seed));
  std::mt19937 rng(seed);
  Counter counter;
  struct Held {
    std::string id;
    int64_t cost, token, at_ns, expiry_ns;
    uint64_t key;
  };
  std::vector<Held> held;
  const std::vector<CounterRef> counters = {{rule.full_name, &rule}};
  int grants = 0, denials = 0, refunds = 0, adoptions = 0, adoptions_added = 0;
  for (int i = 0; i < steps; ++i) {
    if (!held.empty() && rng() % 3 == 0) {
      const size_t pick = rng() % held.size();
      Held h = held[pick];
      held.erase(held.begin() + pick);
      const int64_t used = static_cast<int64_t>(rng() % (h.cost + 1));
      absl::StatusOr<ReleaseAnswer> r = fn.ReleaseSync({kCred, h.id, used, counters});
      ASSERT_TRUE(r.ok()) << r.status();
      const int64_t now = absl::ToUnixNanos(r->now);
      if (rule.spec.kind == LimitKind::kConcurrency) {
        ASSERT_EQ(r->found, h.expiry_ns > now) << "step " << i;
        if (r->found) {
          ASSERT_EQ(r->freed, counter.Free(h.expiry_ns, h.key)) << "step " << i;
        }
        continue;
      }
      if (!r->found) continue;  // its TTL passed
      const int64_t want = counter.Refund(rule, now, h.token, h.cost, h.cost - used, h.at_ns);
      ASSERT_EQ(r->refunded, std::vector<int64_t>{want}) << "step " << i;
      refunds += want > 0;
      continue;
    }
    const LimitKind kind = rule.spec.kind;
    if ((kind == LimitKind::kCalendar || kind == LimitKind::kRolling ||
         kind == LimitKind::kSliding) &&
        rng() % 10 == 0) {
      // The upstream's count, adopted (Report) as the embedded ledger does.
      ReportCall report{kCred, "d", counters,
                        static_cast<int64_t>(rng() % (rule.spec.capacity + 1))};
      report.longest_window = absl::Hours(1);
      report.max_cooldown = absl::Hours(1);
      // The request went out up to 1.5 periods ago (a sliding count is compared with our
      // charges from one period before then, those kept after leaving the window included).
      const int64_t back_us = static_cast<int64_t>(
          rng() % (static_cast<uint64_t>(rule.period_ns / 1000) * 3 / 2 + 1));
      report.sent_at = absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()) - back_us);
      absl::StatusOr<ReportAnswer> r = fn.ReportSync(report);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->adopted);
      const int64_t now = absl::ToUnixNanos(r->now);
      const int64_t sent = std::min(now, absl::ToUnixNanos(report.sent_at));
      int64_t added = 0;
      ASSERT_EQ(r->before, counter.Adopt(rule, now, *report.used, 0, sent, &added))
          << "step " << i << " sent " << (now - sent) / 1000 << " us before";
      ASSERT_EQ(r->added, added) << "step " << i;
      if (added > 0) counter.NoRefundsBefore(now);
      ++adoptions;
      adoptions_added += added > 0;
      continue;
    }
    const int64_t cost = 1 + static_cast<int64_t>(rng() % 4);
    const absl::Duration ttl = absl::Milliseconds(1 + rng() % 20);
    AcquireCall call{kCred, absl::StrCat("d", i), cost, ttl, counters};
    absl::StatusOr<AcquireAnswer> a = fn.AcquireSync(call);
    ASSERT_TRUE(a.ok()) << a.status();
    const int64_t now = absl::ToUnixNanos(a->now);
    int64_t retry = kInfiniteNs;
    const bool fits = counter.Fits(rule, now, cost, &retry);
    ASSERT_EQ(a->granted, fits) << "step " << i << " cost " << cost;
    if (fits) {
      ++grants;
      const int64_t expiry = absl::ToUnixNanos(a->lease_expiry);
      const int64_t token = counter.Charge(rule, now, cost, i + 1, expiry);
      held.push_back({call.lease_id, cost, token, now, expiry, static_cast<uint64_t>(i + 1)});
    } else {
      ++denials;
      if (rule.spec.kind != LimitKind::kRolling) {  // see window_fits in quotad.lua
        ASSERT_EQ(a->retry_at, retry == kInfiniteNs ? absl::InfiniteFuture()
                                                    : absl::FromUnixNanos(retry))
            << "step " << i;
      }
    }
  }
  // The run must have exercised both answers.
  EXPECT_GE(grants, 10);
  EXPECT_GE(denials, 10);
  // A bucket refunds only units still ahead of now (500 us each): on a loaded machine the steps
  // may be slower than that, so its refunds are not required (the comparison above still holds).
  if (rule.spec.kind != LimitKind::kConcurrency && rule.spec.kind != LimitKind::kTokenBucket) {
    EXPECT_GT(refunds, 0);
  }
  if (rule.spec.kind != LimitKind::kConcurrency && rule.spec.kind != LimitKind::kTokenBucket) {
    EXPECT_GT(adoptions, 10);
  }
  // Sliding: sent_at took both ways (some counts compared with fewer of our grants, adopted).
  if (rule.spec.kind == LimitKind::kSliding) EXPECT_GT(adoptions_added, 0);
}

TEST_F(RedisFunctionsTest, DecidesLikeTheEmbeddedCounterForEachKind) {
  LimitSpec rolling = Spec(LimitKind::kRolling, 12, absl::Milliseconds(8));
  rolling.guard = absl::Milliseconds(2);
  LimitSpec sliding = Spec(LimitKind::kSliding, 12, absl::Milliseconds(8));
  sliding.guard = absl::Milliseconds(1);
  LimitSpec bucket = Spec(LimitKind::kTokenBucket, 12, absl::Milliseconds(4));
  bucket.rate = 8;  // 500 us per unit: a whole number of microseconds, as Redis counts
  LimitSpec slots = Spec(LimitKind::kConcurrency, 8);
  LimitSpec minute = Spec(LimitKind::kCalendar, 40);
  minute.unit = CalendarUnit::kMinute;
  minute.guard = absl::Seconds(1);
  int n = 0;
  for (const LimitSpec& spec : {rolling, sliding, bucket, slots, minute}) {
    const Rule& rule = AddRule(spec, absl::StrCat("d.", n++));
    ExpectSameDecisionsAsLimitsCc(*fn_, rule, 1500, 17 + n);
  }
}

}  // namespace
}  // namespace redis
}  // namespace quotad

// quotad's Redis function library against a real redis-server: versioned loading, exactly the
// capacity granted under racing callers for each limit kind, all-or-nothing charges, refunds,
// lease renew and expiry, time from Redis whatever the caller's clock, and decision by
// decision agreement with the embedded ledger's counters (service/core/limits.cc).

#include "service/store/redis/redis_functions.h"

#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
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

// Decision by decision against the embedded ledger's Counter, fed the time Redis decided at:
// random costs, releases with random `used`, short periods so that windows roll, leases
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
  int grants = 0, denials = 0, refunds = 0;
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
  if (rule.spec.kind != LimitKind::kConcurrency) {
    EXPECT_GT(refunds, 0);
  }
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

// Attacks on shared mode's outside estimate (quotad_outside.lua; quotad_report, quotad_acquire,
// quotad_usage and quotad_reset in quotad_functions.lua), against a real redis-server: two
// RedisBackends on one Redis (what two quotad replicas run) and an embedded Ledger on the same
// policy get the same operations, and every replica must answer as the one embedded quotad
// does: the same grants, the same estimate and remaining units, the same cooldowns (give or
// take the call's time); never more granted than the capacity less the units held back, by
// single calls, batches, waiters or racing threads; through reloads, a reset, many throttles and
// a restart of redis-server from its AOF. Most limits recover over an hour or a day, so real time
// barely decays an estimate during a test (those that watch the decay use limits of 1 s or less);
// back-offs start at a few ms, so cooldowns pass fast (polled, never slept). A test named
// DISABLED_Bug_* shows a bug not fixed yet and says what happens; a comment starting "Was a bug"
// names one this attack found, fixed since.

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/ledger.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::BatchThrough;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::ReplicaOptions;

constexpr char kCred[] = "team/o";

// Every kind of limit, capacities 1, 2 and 10^12, a drawn-on limit and a scoped one.
constexpr char kConfig[] = R"(
credentials:
  - name: team/o
    features:
      - name: roll
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 100}
      - name: cal
        limits:
          - {name: daily, kind: calendar, unit: day, capacity: 10}
      - name: slide
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 10}
      - name: sb
        limits:
          - {name: hourly, kind: sliding, period: 1h, sub_buckets: 6, capacity: 20}
      - name: tb
        limits:
          - {name: burst, kind: token_bucket, capacity: 10, rate: 1, period: 1h}
      - name: multi
        draws_on: [roll]
        limits:
          - {name: day, kind: calendar, unit: day, capacity: 50}
          - {name: free, kind: unlimited}
      - name: scoped
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 5, scoped: true}
          - {name: all, kind: rolling, period: 1h, capacity: 30}
      - name: one
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 1}
      - name: two
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 2}
      - name: huge
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 1000000000000}
      - name: conc
        default_lease_ttl: 10m
        limits:
          - {name: slots, kind: concurrency, capacity: 10}
      - name: conc100
        default_lease_ttl: 10m
        limits:
          - {name: slots, kind: concurrency, capacity: 100}
      - name: unl
        limits:
          - {name: free, kind: unlimited}
      - name: quick
        limits:
          - {name: fast, kind: rolling, period: 1s, capacity: 100}
      - name: fasttb
        limits:
          - {name: tb, kind: token_bucket, capacity: 10, rate: 100, period: 1s}
)";

// The back-off: 5 ms, doubling, at most 80 ms, no jitter; 429 and 503 are throttles.
constexpr absl::Duration kBackoff = absl::Milliseconds(5);
constexpr absl::Duration kMaxBackoff = absl::Milliseconds(80);

UpstreamHeaders Headers(std::vector<std::pair<std::string, std::string>> h) { return h; }

LimitSpec& LimitOf(Policy& p, const std::string& feature, const std::string& limit) {
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name != feature) continue;
    for (LimitSpec& l : f.limits) {
      if (l.name == limit) return l;
    }
  }
  ADD_FAILURE() << "no limit " << feature << "." << limit;
  static LimitSpec none;
  return none;
}

class SharedOutsideAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
    Throttled(policy_);
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::unique_ptr<RedisBackend>> b =
          RedisBackend::Create(policy_, Clock::Real(), ReplicaOptions(*redis_));
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE((*b)->serving());
      replicas_.push_back(*std::move(b));
    }
    absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(policy_, Clock::Real());
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = *std::move(ledger);
  }

  // Every feature of `p`: 429 and 503 are throttles, the back-off kBackoff doubling to
  // kMaxBackoff, no jitter.
  static void Throttled(Policy& p) {
    for (FeatureSpec& f : p.credentials[0].features) {
      f.throttle.status_codes = {429, 503};
      f.throttle.initial_backoff = kBackoff;
      f.throttle.multiplier = 2;
      f.throttle.max_backoff = kMaxBackoff;
      f.throttle.jitter_min = f.throttle.jitter_max = 0;
    }
  }

  // kConfig with `features` (YAML, indented as kConfig's) added, throttled as every test's.
  static Policy Extended(const std::string& features) {
    absl::StatusOr<Policy> p = LoadPolicyFromString(absl::StrCat(kConfig, features), "test.yaml");
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return Policy{};
    Throttled(*p);
    return *std::move(p);
  }

  // `feature`'s back-off set to `backoff`, neither doubling nor jittered.
  static void SlowBackoff(Policy& p, const std::string& feature, absl::Duration backoff) {
    for (FeatureSpec& f : p.credentials[0].features) {
      if (f.name == feature) f.throttle.initial_backoff = f.throttle.max_backoff = backoff;
    }
  }

  // The features GetUsage shows cooling down through replica `i` (-1: the embedded ledger),
  // with when their cooldowns end.
  std::vector<std::pair<std::string, absl::Time>> CooldownsOf(int i) {
    absl::StatusOr<std::vector<LimitStatus>> u =
        i < 0 ? ledger_->Usage(kCred) : replicas_[i]->Usage(kCred);
    EXPECT_TRUE(u.ok()) << u.status();
    std::vector<std::pair<std::string, absl::Time>> out;
    if (!u.ok()) return out;
    for (const LimitStatus& l : *u) {
      if (l.cooldown) out.emplace_back(l.name, l.reset);
    }
    return out;
  }

  static std::vector<std::string> Names(const std::vector<std::pair<std::string, absl::Time>>& v) {
    std::vector<std::string> out;
    for (const auto& [name, until] : v) out.push_back(name);
    return out;
  }

  // `p` in force in both replicas and the embedded ledger.
  void ReloadAll(const Policy& p) {
    for (auto& r : replicas_) ASSERT_TRUE(r->Reload(p).ok());
    ASSERT_TRUE(ledger_->Reload(p).ok());
  }

  static AcquireRequest Req(absl::string_view feature, int64_t cost, absl::string_view scope) {
    AcquireRequest req;
    req.credential = kCred;
    req.feature = feature;  // (the caller's strings outlive the request)
    req.scope = scope;
    req.cost = cost;
    req.want_limits = true;
    return req;
  }

  // The same Acquire through replica `i` and the embedded ledger: the same grant, and the same
  // limits (used, estimate, remaining). Answers the two decisions (shared, embedded).
  // `slack`: the estimates may differ by that much (a huge capacity's decays by millions of
  // units between the two calls).
  std::pair<Decision, Decision> Both(int i, const std::string& feature, int64_t cost = 1,
                                     const std::string& scope = "", int64_t slack = 0) {
    const AcquireRequest req = Req(feature, cost, scope);
    absl::StatusOr<Decision> s = AcquireThrough(*replicas_[i], req);
    absl::StatusOr<Decision> e = ledger_->Acquire(req);
    EXPECT_EQ(s.ok(), e.ok()) << feature << ": " << s.status() << " / " << e.status();
    if (!s.ok() || !e.ok()) return {};
    SCOPED_TRACE(absl::StrCat(feature, " cost ", cost, " scope '", scope, "' replica ", i));
    EXPECT_EQ(s->granted, e->granted) << s->limited_by << " / " << e->limited_by;
    if (!s->granted && !e->granted) {
      EXPECT_EQ(s->limited_by, e->limited_by);
    }
    ExpectSameLimits(s->limits, e->limits, slack);
    return {*s, *e};
  }

  static void ExpectSameLimits(const std::vector<LimitStatus>& s, const std::vector<LimitStatus>& e,
                               int64_t slack = 0) {
    ASSERT_EQ(s.size(), e.size());
    for (size_t j = 0; j < e.size(); ++j) {
      SCOPED_TRACE(e[j].name);
      EXPECT_EQ(s[j].used, e[j].used);
      EXPECT_LE(std::abs(s[j].outside_estimate - e[j].outside_estimate), slack)
          << s[j].outside_estimate << " vs " << e[j].outside_estimate;
      EXPECT_LE(std::abs(s[j].remaining - e[j].remaining), slack)
          << s[j].remaining << " vs " << e[j].remaining;
    }
  }

  static UpstreamAnswer Answer(absl::string_view feature, int status, UpstreamHeaders headers,
                               absl::Time sent_at = absl::InfinitePast()) {
    UpstreamAnswer a;
    a.credential = kCred;
    a.feature = feature;
    a.http_status = status;
    a.headers = std::move(headers);
    a.sent_at = sent_at;
    return a;
  }

  // The same answer through replica `i` and the embedded ledger: the same warnings and
  // adoptions, the same cooldown (give or take the call's time). Answers the later of the two.
  absl::Time ReportBoth(int i, UpstreamAnswer answer) {
    if (answer.observed_at == absl::InfinitePast()) answer.observed_at = absl::Now();
    const absl::Time before = absl::Now();
    absl::StatusOr<ReportResult> rs = replicas_[i]->Report(answer);
    absl::StatusOr<ReportResult> re = ledger_->Report(answer);
    const absl::Time after = absl::Now();
    EXPECT_EQ(rs.ok(), re.ok()) << rs.status() << " / " << re.status();
    if (!rs.ok() || !re.ok()) return absl::InfinitePast();
    SCOPED_TRACE(absl::StrCat(answer.feature, " status ", answer.http_status));
    EXPECT_EQ(rs->warnings, re->warnings);
    EXPECT_EQ(rs->adopted, re->adopted);
    if (rs->cooldown_until != re->cooldown_until) {
      EXPECT_LE(absl::AbsDuration(rs->cooldown_until - re->cooldown_until),
                after - before + absl::Milliseconds(1));
    }
    return std::max(rs->cooldown_until, re->cooldown_until);
  }

  static void PassUntil(absl::Time until) {
    EXPECT_TRUE(
        Eventually([&] { return absl::Now() > until + absl::Milliseconds(2); }, absl::Seconds(5)));
  }

  // A waiting Acquire's answer, and when it came.
  struct Waited {
    absl::Notification done;
    absl::StatusOr<Decision> d;
    absl::Time at;
  };

  // The same Acquire with `max_wait` through replica `i` (answered into *shared) and the
  // embedded ledger (into *embedded); both must outlive the answers.
  void WaitBoth(int i, const AcquireRequest& req, absl::Duration max_wait, Waited* shared,
                Waited* embedded) {
    auto answer = [](Waited* w) {
      return [w](absl::StatusOr<Decision> d) {
        w->d = std::move(d);
        w->at = absl::Now();
        w->done.Notify();
      };
    };
    replicas_[i]->AcquireSharedOrWait(req, SharedRequestId{}, max_wait, 0, answer(shared));
    ledger_->AcquireOrWait(req, max_wait, 0, answer(embedded));
  }

  // GetUsage through every replica equals the embedded ledger's.
  void ExpectSameUsage() {
    absl::StatusOr<std::vector<LimitStatus>> e = ledger_->Usage(kCred);
    ASSERT_TRUE(e.ok()) << e.status();
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::vector<LimitStatus>> s = replicas_[i]->Usage(kCred);
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(s->size(), e->size()) << "replica " << i;
      for (size_t j = 0; j < e->size(); ++j) {
        const LimitStatus& a = (*s)[j];
        const LimitStatus& b = (*e)[j];
        SCOPED_TRACE(absl::StrCat("usage through replica ", i, ": ", b.name, "[", b.scope, "]"));
        EXPECT_EQ(a.name, b.name);
        EXPECT_EQ(a.scope, b.scope);
        EXPECT_EQ(a.capacity, b.capacity);
        EXPECT_EQ(a.used, b.used);
        EXPECT_EQ(a.outside_estimate, b.outside_estimate);
        EXPECT_EQ(a.remaining, b.remaining);
        EXPECT_EQ(a.cooldown, b.cooldown);
      }
    }
  }

  void DumpUsage() {
    for (int i = -1; i < 2; ++i) {
      absl::StatusOr<std::vector<LimitStatus>> u =
          i < 0 ? ledger_->Usage(kCred) : replicas_[i]->Usage(kCred);
      if (!u.ok()) continue;
      std::cerr << "  usage " << i << ":";
      for (const LimitStatus& l : *u) {
        if (l.used == 0 && l.outside_estimate == 0 && !l.cooldown) continue;
        std::cerr << " " << l.name << "[" << l.scope << "] u" << l.used << " o"
                  << l.outside_estimate << (l.cooldown ? " cd " + absl::FormatTime(l.reset) : "");
      }
      std::cerr << "\n";
    }
  }

  // The estimate GetUsage shows for `limit` through replica `i` (-1: the embedded ledger).
  int64_t OutsideOf(int i, const std::string& limit) {
    absl::StatusOr<std::vector<LimitStatus>> u =
        i < 0 ? ledger_->Usage(kCred) : replicas_[i]->Usage(kCred);
    EXPECT_TRUE(u.ok()) << u.status();
    if (!u.ok()) return -1;
    for (const LimitStatus& l : *u) {
      if (l.name == limit && !l.cooldown && l.scope.empty()) return l.outside_estimate;
    }
    return -1;
  }

  // `n` throttles of `feature` (no time given, sent now), each cooldown waited out.
  void Throttles(const std::string& feature, int n) {
    for (int t = 0; t < n; ++t) {
      PassUntil(ReportBoth(t % 2, Answer(feature, 429, {}, absl::Now())));
    }
  }

  std::unique_ptr<RedisServer> redis_;
  Policy policy_;
  std::vector<std::unique_ptr<RedisBackend>> replicas_;
  std::unique_ptr<Ledger> ledger_;
};

// Random sequences of Acquires, Releases, batches, Reports (throttles with and without sent_at,
// Retry-After or X-RateLimit counts, clean answers, other errors) and a Reset, through either
// replica and the embedded ledger: every decision, estimate, cooldown and Usage agrees. Not
// concurrency (its estimate decays over 10 s, so the two would round apart) nor 10^12 (millions
// of units a second); not sb in an all-or-nothing batch (see
// DISABLED_Bug_EmbeddedRefusedBatchKeepsASubBucketCharge). To explore: OATTACK_SEED=<n> picks
// another sequence, OATTACK_LOG=1 prints each step and the Usage after each Report.
TEST_F(SharedOutsideAttackTest, RandomSequencesAnswerAsTheEmbeddedLedger) {
  struct F {
    std::string name;
    int64_t cap;  // of the limit X-RateLimit counts name
    int64_t max_cost;
  };
  const std::vector<F> features = {{"roll", 100, 20}, {"cal", 10, 3}, {"slide", 10, 3},
                                   {"sb", 20, 4},     {"tb", 10, 3},  {"multi", 50, 5},
                                   {"scoped", 30, 2}, {"two", 2, 2},  {"unl", 0, 2}};
  const std::vector<std::string> scopes = {"", "a", "b"};
  const char* seed_env = std::getenv("OATTACK_SEED");
  std::mt19937 rng(seed_env != nullptr ? std::atoi(seed_env) : 20261128);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(n)); };
  struct Held {
    LeaseId shared, embedded;
  };
  std::vector<Held> held;
  // Instants between calls (never inside a Report): a sent_at before, or after, each decrease.
  std::vector<absl::Time> instants = {absl::Now()};
  int retry_afters = 0;
  for (int step = 0; step < 500; ++step) {
    const F& f = features[pick(features.size())];
    const int i = pick(2);
    SCOPED_TRACE(absl::StrCat("step ", step, " feature ", f.name));
    const int op = pick(100);
    if (std::getenv("OATTACK_LOG") != nullptr) {
      std::cerr << "step " << step << " op " << op << " " << f.name << " r" << i
                << " t=" << absl::FormatTime(absl::Now()) << "\n";
    }
    if (op < 40) {
      const int64_t cost = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(f.max_cost));
      auto [s, e] = Both(i, f.name, cost, f.name == "scoped" ? scopes[pick(3)] : "");
      if (s.granted && e.granted) held.push_back({s.lease_id, e.lease_id});
    } else if (op < 52 && !held.empty()) {
      const size_t k = pick(held.size());
      const int u = pick(3);
      const std::optional<int64_t> used =
          u == 0 ? std::nullopt : std::optional<int64_t>(u == 1 ? 0 : 1);
      absl::StatusOr<ReleaseResult> rs = replicas_[i]->Release(held[k].shared, used);
      absl::StatusOr<ReleaseResult> re = ledger_->Release(held[k].embedded, used);
      ASSERT_TRUE(rs.ok() && re.ok()) << rs.status() << " / " << re.status();
      EXPECT_EQ(rs->refunded, re->refunded);
      EXPECT_EQ(rs->freed, re->freed);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
    } else if (op < 72) {
      // A throttle: 429 or 503; no time, Retry-After, or counts; sent_at none, past or now.
      UpstreamHeaders h;
      const int kind = pick(10);
      if (kind == 0 && retry_afters < 3) {
        ++retry_afters;
        h = Headers({{"Retry-After", "1"}});
      } else if (kind < 4 && f.cap > 0) {
        const int64_t remaining =
            pick(3) == 0 ? 0 : pick(static_cast<int>(std::min<int64_t>(f.cap, 50)));
        h = Headers({{"X-RateLimit-Limit", absl::StrCat(f.cap)},
                     {"X-RateLimit-Remaining", absl::StrCat(remaining)}});
      }
      const int when = pick(3);
      const absl::Time sent = when == 0   ? absl::InfinitePast()
                              : when == 1 ? instants[pick(instants.size())]
                                          : absl::Now();
      const absl::Time until = ReportBoth(i, Answer(f.name, pick(2) ? 429 : 503, h, sent));
      if (std::getenv("OATTACK_LOG") != nullptr) {
        std::cerr << "  throttle kind " << kind << " when " << when << " headers";
        for (const auto& [k, v] : h) std::cerr << " " << k << "=" << v;
        std::cerr << " until " << absl::FormatTime(until) << "\n";
        DumpUsage();
      }
      if (until > absl::Now()) PassUntil(until);
      instants.push_back(absl::Now());
    } else if (op < 84) {
      // A clean answer, sometimes with counts.
      UpstreamHeaders h;
      if (pick(3) == 0 && f.cap > 0) {
        h = Headers({{"X-RateLimit-Limit", absl::StrCat(f.cap)},
                     {"X-RateLimit-Remaining",
                      absl::StrCat(pick(static_cast<int>(std::min<int64_t>(f.cap, 50))))}});
      }
      ReportBoth(i, Answer(f.name, pick(4) == 0 ? 204 : 200, h));
    } else if (op < 88) {
      const int codes[] = {400, 404, 500, 502};
      ReportBoth(i, Answer(f.name, codes[pick(4)], {}));
    } else if (op < 97) {
      // A batch of 2 or 3 items, all-or-nothing or independent.
      const bool all = pick(2) == 0;
      std::vector<std::string> names;
      std::vector<AcquireRequest> reqs;
      const int want = 2 + pick(2);
      std::vector<int64_t> costs;
      for (int k = 0; k < want; ++k) {
        const F& g = features[pick(features.size())];
        if (all && g.name == "sb") continue;
        names.push_back(g.name);
        costs.push_back(1 + pick(static_cast<int>(std::min<int64_t>(3, g.max_cost))));
      }
      for (size_t k = 0; k < names.size(); ++k) reqs.push_back(Req(names[k], costs[k], ""));
      const int n = static_cast<int>(reqs.size());
      if (n == 0) continue;
      std::vector<absl::StatusOr<Decision>> s =
          BatchThrough(*replicas_[i], reqs, std::vector<SharedRequestId>(reqs.size()), all);
      std::vector<absl::StatusOr<Decision>> e;
      if (all) {
        e = ledger_->AcquireAll(reqs);
      } else {
        for (const AcquireRequest& r : reqs) e.push_back(ledger_->Acquire(r));
      }
      ASSERT_EQ(s.size(), e.size());
      if (std::getenv("OATTACK_LOG") != nullptr) {
        for (int k = 0; k < n; ++k) {
          std::cerr << "  " << (all ? "all" : "many") << " item " << names[k] << " cost "
                    << costs[k] << ": " << s[k].status() << " " << (s[k].ok() && s[k]->granted)
                    << " / " << e[k].status() << " " << (e[k].ok() && e[k]->granted) << "\n";
        }
        DumpUsage();
      }
      for (int k = 0; k < n; ++k) {
        SCOPED_TRACE(absl::StrCat(all ? "all" : "many", " item ", k, " ", names[k]));
        ASSERT_EQ(s[k].ok(), e[k].ok()) << s[k].status() << " / " << e[k].status();
        if (!s[k].ok()) continue;
        EXPECT_EQ(s[k]->granted, e[k]->granted);
        if (s[k]->granted && e[k]->granted) {
          ExpectSameLimits(s[k]->limits, e[k]->limits);
          held.push_back({s[k]->lease_id, e[k]->lease_id});
        }
      }
    } else if (op < 99) {
      ExpectSameUsage();
    } else {
      ASSERT_TRUE(replicas_[i]->Reset(kCred).ok());
      ASSERT_TRUE(ledger_->Reset(kCred).ok());
      instants.push_back(absl::Now());
    }
    if (HasFatalFailure()) return;
  }
  ExpectSameUsage();
}

// Capacity 1 learns nothing (its one unit is all it has); capacity 2 learns one unit, held back
// from a cost of 1 but not from a cost of 2 (never more than capacity - cost); concurrency holds
// its unit back too; 10^12 learns 10^11 per throttle, clamped alike for a cost near capacity.
TEST_F(SharedOutsideAttackTest, CapacityEdgesAndCostsNearTheCapacityHoldBackAlike) {
  Throttles("one", 2);
  EXPECT_EQ(OutsideOf(0, "one.hourly"), 0);
  EXPECT_EQ(OutsideOf(-1, "one.hourly"), 0);
  EXPECT_TRUE(Both(0, "one").first.granted);
  EXPECT_FALSE(Both(1, "one").first.granted);

  Throttles("two", 3);  // 2 -> 1 effective, and never below one unit
  EXPECT_EQ(OutsideOf(1, "two.hourly"), 1);
  EXPECT_EQ(OutsideOf(-1, "two.hourly"), 1);
  EXPECT_TRUE(Both(0, "two", 2).first.granted);  // cost 2: nothing held back
  ASSERT_TRUE(replicas_[0]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  Throttles("two", 1);
  EXPECT_TRUE(Both(1, "two", 1).first.granted);  // 1 + 1 held back = 2
  EXPECT_FALSE(Both(0, "two", 1).first.granted);
  EXPECT_FALSE(Both(1, "two", 2).first.granted);

  Throttles("conc", 1);  // 10 slots -> 9
  for (int k = 0; k < 9; ++k) EXPECT_TRUE(Both(k % 2, "conc").first.granted) << k;
  EXPECT_FALSE(Both(0, "conc").first.granted);

  // 10^12: the estimate decays by ~14 million units a second (10^12 * 5% an hour): a cost that
  // leaves less room than the estimate is clamped to capacity - cost exactly.
  constexpr int64_t kCap = 1000000000000;
  constexpr int64_t kHugeSlack = 100000000;  // ~7 s of decay
  Throttles("huge", 2);                      // ~1.9 * 10^11
  const int64_t s = OutsideOf(0, "huge.hourly"), e = OutsideOf(-1, "huge.hourly");
  EXPECT_GT(s, 189000000000);
  EXPECT_LE(s, 190000000000);
  EXPECT_LE(std::abs(s - e), 100000000) << s << " vs " << e;
  // Clamped: 8.2e11 + 1.8e11 (not 1.9e11) = the capacity.
  EXPECT_TRUE(Both(1, "huge", kCap - 180000000000, "", kHugeSlack).first.granted);
  EXPECT_FALSE(Both(0, "huge", 1, "", kHugeSlack).first.granted);
  ASSERT_TRUE(replicas_[0]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  Throttles("huge", 1);                                                            // 10^11
  EXPECT_TRUE(Both(0, "huge", kCap - 10000000000, "", kHugeSlack).first.granted);  // 10^10 back
  EXPECT_FALSE(Both(1, "huge", 1, "", kHugeSlack).first.granted);
}

// All-or-nothing batches and independent ones hold the estimate back on every item, the items
// before counted: the same grants as the embedded ledger's AcquireAll and Acquires.
TEST_F(SharedOutsideAttackTest, BatchesHoldTheEstimateBackAsTheEmbeddedLedger) {
  Throttles("roll", 1);  // roll.hourly: 10 of 100 held back
  auto batch = [&](int i, bool all, const std::vector<std::pair<std::string, int64_t>>& items) {
    std::vector<AcquireRequest> reqs;
    for (const auto& [f, c] : items) reqs.push_back(Req(f, c, ""));
    std::vector<absl::StatusOr<Decision>> s =
        BatchThrough(*replicas_[i], reqs, std::vector<SharedRequestId>(reqs.size()), all);
    std::vector<absl::StatusOr<Decision>> e;
    if (all) {
      e = ledger_->AcquireAll(reqs);
    } else {
      for (const AcquireRequest& r : reqs) e.push_back(ledger_->Acquire(r));
    }
    std::vector<bool> granted;
    for (size_t k = 0; k < reqs.size(); ++k) {
      SCOPED_TRACE(absl::StrCat(all ? "all" : "many", " item ", k));
      EXPECT_TRUE(s[k].ok() && e[k].ok()) << s[k].status() << " / " << e[k].status();
      if (!s[k].ok() || !e[k].ok()) return granted;
      EXPECT_EQ(s[k]->granted, e[k]->granted);
      if (s[k]->granted && e[k]->granted) ExpectSameLimits(s[k]->limits, e[k]->limits);
      granted.push_back(s[k]->granted);
    }
    return granted;
  };
  // multi draws on roll.hourly: 40 + 40 + 10 held back fit.
  EXPECT_EQ(batch(0, true, {{"roll", 40}, {"multi", 40}}), (std::vector<bool>{true, true}));
  // 80 + 5 + 6 + 10 > 100: refused whole.
  EXPECT_EQ(batch(1, true, {{"roll", 5}, {"multi", 6}}), (std::vector<bool>{false, false}));
  EXPECT_EQ(batch(1, false, {{"roll", 5}, {"multi", 6}, {"roll", 5}}),
            (std::vector<bool>{true, false, true}));
  EXPECT_EQ(batch(0, true, {{"roll", 1}}), (std::vector<bool>{false}));
  ExpectSameUsage();
}

// Threads on two replicas race single Acquires and all-or-nothing pairs on a limit with 27 of
// 100 units held back: exactly 73 are granted, never more.
TEST_F(SharedOutsideAttackTest, RacingReplicasNeverPassTheCapacityLessTheEstimate) {
  Throttles("roll", 3);  // 10, 19, 27.1
  ASSERT_EQ(OutsideOf(0, "roll.hourly"), 27);
  std::atomic<int64_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      RedisBackend& b = *replicas_[t % 2];
      for (int k = 0; k < 40; ++k) {
        if (t % 3 == 2) {
          std::vector<AcquireRequest> reqs = {Req("roll", 1, ""), Req("multi", 1, "")};
          granted += testing::CountGranted(
              BatchThrough(b, reqs, std::vector<SharedRequestId>(2), /*all_or_nothing=*/true));
        } else {
          absl::StatusOr<Decision> d = AcquireThrough(b, Req("roll", 1, ""));
          granted += testing::Granted(d) ? 1 : 0;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // Whatever the race left, single grants fill the rest, and the limit stops at 73.
  for (int k = 0; k < 80; ++k) {
    absl::StatusOr<Decision> d = AcquireThrough(*replicas_[k % 2], Req("roll", 1, ""));
    ASSERT_TRUE(d.ok()) << d.status();
    if (!d->granted) break;
    ++granted;
  }
  EXPECT_EQ(granted.load(), 73);
  absl::StatusOr<std::vector<LimitStatus>> u = replicas_[1]->Usage(kCred);
  ASSERT_TRUE(u.ok()) << u.status();
  for (const LimitStatus& l : *u) {
    if (l.name != "roll.hourly") continue;
    EXPECT_EQ(l.used, 73);
    EXPECT_EQ(l.outside_estimate, 27);
    EXPECT_EQ(l.remaining, 0);
  }
}

// Throttles reported through one replica race grants through both: every grant's limits (read
// in the same FCALL) show its units and the estimate within the capacity, and every throttle is
// learnt.
TEST_F(SharedOutsideAttackTest, ThrottlesRacingGrantsNeverLeaveAGrantPastTheEstimate) {
  std::atomic<bool> stop{false};
  std::atomic<int> violations{0}, grants{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      while (!stop.load()) {
        absl::StatusOr<Decision> d = AcquireThrough(*replicas_[t % 2], Req("roll", 1, ""));
        if (!d.ok() || !d->granted) continue;
        ++grants;
        for (const LimitStatus& l : d->limits) {
          if (l.used + l.outside_estimate > l.capacity) ++violations;
        }
        // Given back (unused), so the race goes on for the whole run.
        (void)replicas_[t % 2]->Release(d->lease_id, 0);
      }
    });
  }
  for (int k = 0; k < 12; ++k) {
    absl::StatusOr<ReportResult> r = replicas_[k % 2]->Report(Answer("roll", 429, {}, absl::Now()));
    ASSERT_TRUE(r.ok()) << r.status();
    PassUntil(r->cooldown_until);
  }
  stop = true;
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(grants.load(), 0);
  // 12 decreases of 10% (each request sent after the one before was learnt): 71.8 units.
  EXPECT_EQ(OutsideOf(0, "roll.hourly"), 72);
  EXPECT_EQ(OutsideOf(1, "roll.hourly"), 72);
}

// A waiter is held back by the estimate as a new request is (not granted while what it asks and
// the units held back pass the capacity), and is served as soon as a refund makes room, as in
// the embedded ledger.
TEST_F(SharedOutsideAttackTest, AWaiterIsHeldBackByTheEstimateAndServedWhenRoomFrees) {
  Throttles("roll", 1);  // 10 held back
  auto [s85, e85] = Both(0, "roll", 85);
  ASSERT_TRUE(s85.granted && e85.granted);
  Waited sw, ew;
  const AcquireRequest req = Req("roll", 10, "");
  WaitBoth(1, req, absl::Seconds(20), &sw, &ew);
  // 85 + 10 + 10 > 100: both wait (the shared one is placed in Redis's queue).
  ASSERT_TRUE(Eventually([&] { return replicas_[1]->wait_stats().placed == 1; }));
  EXPECT_FALSE(sw.done.HasBeenNotified());
  EXPECT_FALSE(ew.done.HasBeenNotified());
  // A request behind the waiter is not served first, though 85 + 5 + 10 fits.
  EXPECT_FALSE(Both(0, "roll", 5).first.granted);
  // Used 80 of 85: 5 come back; 80 + 10 + 10 = 100 fits the waiter, in both.
  absl::StatusOr<ReleaseResult> rs = replicas_[0]->Release(s85.lease_id, 80);
  absl::StatusOr<ReleaseResult> re = ledger_->Release(e85.lease_id, 80);
  ASSERT_TRUE(rs.ok() && re.ok());
  EXPECT_EQ(rs->refunded, 5);
  EXPECT_EQ(re->refunded, 5);
  ASSERT_TRUE(sw.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(ew.done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(sw.d.ok() && ew.d.ok()) << sw.d.status() << " / " << ew.d.status();
  EXPECT_TRUE(sw.d->granted);
  EXPECT_TRUE(ew.d->granted);
  EXPECT_FALSE(Both(1, "roll", 1).first.granted);
  ExpectSameUsage();
}

// A waiter held back by nothing but the estimate (concurrency: it recovers 5% of the capacity
// per 10 s) is served once the estimate has decayed enough, not before, with no release or
// other event to wake it: 90 of 100 slots held, 10 held back; one more slot fits once fewer
// than 9.5 units are estimated, 1 s after the throttle (the replica's heartbeat finds it).
TEST_F(SharedOutsideAttackTest, AWaiterHeldBackOnlyByTheEstimateIsServedWhenItDecays) {
  const absl::Time before = absl::Now();
  PassUntil(ReportBoth(0, Answer("conc100", 429, {}, absl::Now())));
  ASSERT_TRUE(Both(1, "conc100", 90).first.granted);
  absl::Notification done;
  absl::StatusOr<Decision> waited;
  replicas_[0]->AcquireSharedOrWait(Req("conc100", 1, ""), SharedRequestId{}, absl::Seconds(8), 0,
                                    [&](absl::StatusOr<Decision> d) {
                                      waited = std::move(d);
                                      done.Notify();
                                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(waited.ok()) << waited.status();
  ASSERT_TRUE(waited->granted) << "the waiter starved";
  // Granted when its lease began: not before the estimate let it.
  EXPECT_GE(waited->lease_expiry - absl::Minutes(10), before + absl::Seconds(1));
  EXPECT_FALSE(AcquireThrough(*replicas_[1], Req("conc100", 1, ""))->granted);  // 91 + 9
}

// Reloads that shrink the capacity below the estimate (it counts up to capacity - 1), make the
// limit unlimited, rename it, make it scoped, and back: the estimate follows as in the embedded
// ledger. (Usage is not compared across the scoped reload: how units carry between a scoped and
// an unscoped counter is the reload's business, not the estimate's.)
TEST_F(SharedOutsideAttackTest, ReloadsCarryTheEstimateAsTheEmbeddedLedger) {
  Throttles("roll", 3);  // 27 held back
  Both(0, "roll", 10);
  Policy p = policy_;
  LimitOf(p, "roll", "hourly").capacity = 20;  // 19 held back at most
  ReloadAll(p);
  EXPECT_EQ(OutsideOf(0, "roll.hourly"), 19);
  EXPECT_FALSE(Both(1, "roll", 1).first.granted);
  ExpectSameUsage();
  ReloadAll(policy_);
  EXPECT_EQ(OutsideOf(1, "roll.hourly"), 27);
  ExpectSameUsage();
  {
    SCOPED_TRACE("unlimited");
    p = policy_;
    LimitOf(p, "roll", "hourly").kind = LimitKind::kUnlimited;
    ReloadAll(p);
    EXPECT_EQ(OutsideOf(0, "roll.hourly"), 0);
    PassUntil(ReportBoth(0, Answer("roll", 429, {}, absl::Now())));  // the feature cools only
    ExpectSameUsage();
    ReloadAll(policy_);
    EXPECT_EQ(OutsideOf(1, "roll.hourly"), 27);
    ExpectSameUsage();
  }
  {
    SCOPED_TRACE("renamed");
    p = policy_;
    LimitOf(p, "roll", "hourly").name = "hourly2";
    ReloadAll(p);
    EXPECT_EQ(OutsideOf(0, "roll.hourly2"), 0);
    PassUntil(ReportBoth(0, Answer("roll", 429, {}, absl::Now())));  // hourly2 learns 10
    EXPECT_EQ(OutsideOf(1, "roll.hourly2"), 10);
    ExpectSameUsage();
    ReloadAll(policy_);
    EXPECT_EQ(OutsideOf(1, "roll.hourly"), 27);
    for (int k = 0; k < 3; ++k) Both(k % 2, "roll", 30);  // 10 + 30 + 30 + 27 > 100 at the 3rd
    ExpectSameUsage();
  }
  {
    SCOPED_TRACE("scoped");
    p = policy_;
    LimitOf(p, "roll", "hourly").scoped = true;
    ReloadAll(p);
    ReloadAll(policy_);
    EXPECT_EQ(OutsideOf(0, "roll.hourly"), 27);
    EXPECT_EQ(OutsideOf(-1, "roll.hourly"), 27);
  }
}

// Many throttles in a row, with a multiplier of 10^9 and no bound on the back-off: the count
// and the back-off never overflow into an error or a shorter cooldown, the estimate stays
// within capacity - 1, and a clean answer starts the back-off over, as in the embedded ledger.
TEST_F(SharedOutsideAttackTest, ManyThrottlesWithAnUnboundedBackOffStayBounded) {
  Policy p = policy_;
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name != "fasttb") continue;
    f.throttle.multiplier = 1e9;
    f.throttle.max_backoff = absl::InfiniteDuration();
  }
  ReloadAll(p);
  // fasttb.tb refills one unit per 10 ms: every back-off is bounded by that.
  for (int t = 0; t < 80; ++t) {
    SCOPED_TRACE(absl::StrCat("throttle ", t + 1));
    const absl::Time before = absl::Now();
    const absl::Time until = ReportBoth(t % 2, Answer("fasttb", 429, {}, absl::Now()));
    EXPECT_GE(until - before, absl::Milliseconds(t == 0 ? 5 : 10) - absl::Milliseconds(1));
    EXPECT_LE(until - absl::Now(), absl::Milliseconds(t == 0 ? 5 : 10) + absl::Milliseconds(1));
    const int64_t o = OutsideOf(t % 2, "fasttb.tb");
    EXPECT_GE(o, 0);
    EXPECT_LE(o, 9);
    PassUntil(until);
  }
  ReportBoth(0, Answer("fasttb", 200, {}));
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(1, Answer("fasttb", 429, {}, absl::Now()));
  EXPECT_GE(until - before, kBackoff - absl::Milliseconds(1));
  EXPECT_LE(until - absl::Now(), kBackoff + absl::Milliseconds(1));
}

// redis-server killed and restarted from its AOF: the estimate and the throttle count are
// still there, through both replicas.
TEST_F(SharedOutsideAttackTest, ARestartFromTheAofKeepsTheEstimateAndTheBackOff) {
  Throttles("roll", 3);
  Both(0, "roll", 50);
  ASSERT_TRUE(redis_->Stop(SIGKILL).ok());
  ASSERT_TRUE(redis_->Restart().ok());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(Eventually([&] { return replicas_[i]->Usage(kCred).ok(); })) << i;
  }
  EXPECT_EQ(OutsideOf(0, "roll.hourly"), 27);
  ExpectSameUsage();
  // The 4th throttle in a row backs off 40 ms (5 * 2^3), in both.
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(1, Answer("roll", 429, {}, absl::Now()));
  EXPECT_GE(until - before, kBackoff * 8 - absl::Milliseconds(1));
  PassUntil(until);
  ExpectSameUsage();
  for (int k = 0; k < 4; ++k) Both(k % 2, "roll", 5);
  ExpectSameUsage();
}

// Was a bug (found by this attack): an estimate decayed over the recovery period stored by the
// last throttle Report, so after a reload lengthening the period (rolling 1 s -> 1 h) every
// replica decayed it over 1 s while the embedded ledger held 10 units back. Every decision now
// decays it over the period in force (O.recovery).
TEST_F(SharedOutsideAttackTest, AReloadThatLengthensThePeriodDecaysOverTheNewOne) {
  PassUntil(ReportBoth(0, Answer("quick", 429, {}, absl::Now())));  // 10 of 100 held back
  const absl::Time learnt = absl::Now();
  Policy p = policy_;
  LimitOf(p, "quick", "fast").period = absl::Hours(1);
  ReloadAll(p);
  ReportBoth(1, Answer("quick", 200, {}));  // a clean answer changes nothing
  // Until the old period would have decayed it twice over (4 s), every replica holds back what
  // the embedded ledger holds back (within a unit: the two decayed ms apart before the reload).
  int64_t s = 0, e = 0;
  EXPECT_FALSE(Eventually(
      [&] {
        e = OutsideOf(-1, "quick.fast");
        s = OutsideOf(0, "quick.fast");
        return e < 9 || std::abs(s - e) > 1;
      },
      learnt + absl::Seconds(4) - absl::Now()))
      << "replica holds back " << s << ", embedded " << e;
  // Both then grant the same: 90 of 100.
  EXPECT_TRUE(Both(0, "quick", 90).first.granted);
  EXPECT_FALSE(Both(1, "quick", 1).first.granted);
}

// Was a bug: a throttle while the limit's capacity was 1 (not estimable) overwrote the entry's
// recovery period with 0, losing the estimate learnt before for good; after a reload restored
// the capacity the replicas granted 10 units the embedded ledger held back.
TEST_F(SharedOutsideAttackTest, AThrottleAtCapacityOneKeepsTheEstimate) {
  Throttles("roll", 1);  // 10 of 100 held back
  ASSERT_EQ(OutsideOf(0, "roll.hourly"), 10);
  Policy p = policy_;
  LimitOf(p, "roll", "hourly").capacity = 1;
  ReloadAll(p);
  PassUntil(ReportBoth(0, Answer("roll", 429, {}, absl::Now())));
  ReloadAll(policy_);
  EXPECT_EQ(OutsideOf(-1, "roll.hourly"), 10);
  EXPECT_EQ(OutsideOf(0, "roll.hourly"), 10);  // fails: 0
  EXPECT_TRUE(Both(1, "roll", 90).first.granted);
  EXPECT_FALSE(Both(0, "roll", 1).first.granted);  // fails: the replica grants the 91st unit
}

// Was a divergence: Redis counted a scoped limit's throttles under the feature, apart from the
// unscoped limit of the same name, so a reload making the limit scoped restarted the back-off
// (5 ms where the embedded ledger cooled the feature for 40 ms). Both count by limit name now.
TEST_F(SharedOutsideAttackTest, AReloadToScopedKeepsDoublingTheBackOff) {
  Throttles("roll", 3);  // 3 throttles in a row on roll.hourly
  Policy p = policy_;
  LimitOf(p, "roll", "hourly").scoped = true;
  ReloadAll(p);
  const absl::Time before = absl::Now();
  absl::StatusOr<ReportResult> rs = replicas_[0]->Report(Answer("roll", 429, {}, absl::Now()));
  absl::StatusOr<ReportResult> re = ledger_->Report(Answer("roll", 429, {}, absl::Now()));
  ASSERT_TRUE(rs.ok() && re.ok());
  EXPECT_GE(re->cooldown_until - before, kBackoff * 8 - absl::Milliseconds(1));
  EXPECT_GE(rs->cooldown_until - before, kBackoff * 8 - absl::Milliseconds(1));  // fails: 5 ms
}

// Was a leak: a throttle count made the Report PERSIST the credential's hash, and nothing gave it
// an expiry again after a clean answer (with every scope's counter it ever held). A count now
// keeps the hash one max_cooldown after its Report.
TEST_F(SharedOutsideAttackTest, TheHashExpiresAgainAfterAThrottle) {
  Both(0, "quick", 1);
  PassUntil(ReportBoth(0, Answer("quick", 429, {}, absl::Now())));
  ReportBoth(1, Answer("quick", 200, {}));
  ASSERT_TRUE(Eventually([&] { return OutsideOf(0, "quick.fast") == 0; }, absl::Seconds(5)));
  Both(1, "quick", 1);  // a new window: the hash needs to live ~1 s more
  const std::string key = redis::StateKey(kCred);
  absl::StatusOr<std::string> ttl = redis_->Command({"PTTL", key});
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_NE(*ttl, "-1") << key << " never expires";
  EXPECT_NE(*ttl, "-2") << key << " is gone";
}

// BUG (embedded ledger, service/core/ledger_acquire.cc UndoGrant -> Counter::Refund): a refused
// all-or-nothing batch gives back the charges of the items before the blocker by a refund, and a
// sliding limit with sub_buckets refuses a refund into the bucket of an adoption
// (token * bucket_ns <= adopted_): after a Report adopted sb.hourly's count, a batch refused by
// another item leaves its sb item's 3 units charged. Shared mode checks before charging and
// charges nothing. Never an over-grant, but the embedded ledger loses units, and the two disagree.
TEST_F(SharedOutsideAttackTest, DISABLED_Bug_EmbeddedRefusedBatchKeepsASubBucketCharge) {
  Both(0, "sb", 2);
  ReportBoth(0, Answer("sb", 200,
                       Headers({{"X-RateLimit-Limit", "20"}, {"X-RateLimit-Remaining", "15"}})));
  Both(0, "one", 1);  // full
  const std::vector<AcquireRequest> reqs = {Req("sb", 3, ""), Req("one", 1, "")};
  std::vector<absl::StatusOr<Decision>> e = ledger_->AcquireAll(reqs);
  ASSERT_TRUE(e[0].ok() && e[1].ok());
  EXPECT_FALSE(e[0]->granted || e[1]->granted);
  absl::StatusOr<std::vector<LimitStatus>> u = ledger_->Usage(kCred);
  ASSERT_TRUE(u.ok());
  for (const LimitStatus& l : *u) {
    if (l.name == "sb.hourly") {
      EXPECT_EQ(l.used, 5) << "the refused batch charged sb.hourly";
    }
  }
}

// A limit cooling down after a throttle (1 min back-off) still cools down after a reload that
// changes its kind or capacity, as in the embedded ledger (Credential::outside holds the cooldown
// by the limit's name; Redis carries the counter's cd into its new shape).
TEST_F(SharedOutsideAttackTest, ALimitsCooldownOutlivesAReloadThatReshapesIt) {
  Policy slow = policy_;
  for (FeatureSpec& f : slow.credentials[0].features) {
    if (f.name == "roll") f.throttle.initial_backoff = f.throttle.max_backoff = absl::Minutes(1);
  }
  const std::vector<std::pair<std::string, std::function<void(LimitSpec&)>>> reloads = {
      {"sliding", [](LimitSpec& l) { l.kind = LimitKind::kSliding; }},
      {"capacity 50", [](LimitSpec& l) { l.capacity = 50; }},
      {"unlimited", [](LimitSpec& l) { l.kind = LimitKind::kUnlimited; }},
      {"calendar", [](LimitSpec& l) {
         l.kind = LimitKind::kCalendar;
         l.unit = CalendarUnit::kDay;
       }}};
  for (const auto& [what, change] : reloads) {
    SCOPED_TRACE(what);
    ReloadAll(slow);
    ASSERT_TRUE(replicas_[0]->Reset(kCred).ok());
    ASSERT_TRUE(ledger_->Reset(kCred).ok());
    Both(0, "roll", 1);
    ASSERT_GT(ReportBoth(0, Answer("roll", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
    Policy p = slow;
    change(LimitOf(p, "roll", "hourly"));
    ReloadAll(p);
    auto [s, e] = Both(1, "roll", 1);
    EXPECT_FALSE(e.granted);
    EXPECT_FALSE(s.granted);
    EXPECT_EQ(s.limited_by, "roll.cooldown");
  }
}

// Was an over-grant against the embedded ledger (older than the outside estimate): after a reload
// made a cooling limit scoped, the scoped counter had no cooldown and every replica granted at
// once, into the upstream's back-off. A limit's cooldown is now also kept by its name (~o),
// holding every scope of it, as the embedded ledger does.
TEST_F(SharedOutsideAttackTest, AReloadToScopedKeepsTheLimitsCooldown) {
  Policy slow = policy_;
  for (FeatureSpec& f : slow.credentials[0].features) {
    if (f.name == "roll") f.throttle.initial_backoff = f.throttle.max_backoff = absl::Minutes(1);
  }
  ReloadAll(slow);
  Both(0, "roll", 1);
  ASSERT_GT(ReportBoth(0, Answer("roll", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  EXPECT_FALSE(Both(1, "roll", 1).first.granted);
  Policy scoped = slow;
  LimitOf(scoped, "roll", "hourly").scoped = true;
  ReloadAll(scoped);
  auto [s, e] = Both(1, "roll", 1, "x");
  EXPECT_FALSE(e.granted) << "embedded";
  EXPECT_FALSE(s.granted) << "shared";  // fails: granted
}

// ---------------------------------------------------------------------------------------------
// Second attack, on O.recovery (the period an estimate decays over, computed by the library from
// the counter), the limit's cooldown kept by its name in ~o (cooldown_of), scoped limits'
// throttle counts by name, and ~o's part in the hash's expiry.

// Limits whose estimates decay fast enough to watch: every kind, a guard on each kind that takes
// one, a zone, sub-buckets, a period of a fraction of a microsecond more than a second (the
// library rounds it down), a bucket whose emission interval is not whole microseconds (rounded
// up), and every calendar unit (capacities large enough to decay by units a second).
constexpr char kRecoveryFeatures[] = R"(
      - name: rg
        limits:
          - {name: l, kind: rolling, period: 1s, guard: 500ms, capacity: 100}
      - name: sg
        limits:
          - {name: l, kind: sliding, period: 1s, guard: 300ms, capacity: 100}
      - name: sbg
        limits:
          - {name: l, kind: sliding, period: 1s, sub_buckets: 10, guard: 300ms, capacity: 100}
      - name: odd
        limits:
          - {name: l, kind: sliding, period: 1.0000009s, capacity: 100}
      - name: tbq
        limits:
          - {name: l, kind: token_bucket, capacity: 100, rate: 300, period: 1s}
      - name: cmin
        limits:
          - {name: l, kind: calendar, unit: minute, guard: 10s, zone: America/New_York, capacity: 1000}
      - name: chour
        limits:
          - {name: l, kind: calendar, unit: hour, guard: 1m, capacity: 1000000}
      - name: cday
        limits:
          - {name: l, kind: calendar, unit: day, zone: Europe/Berlin, capacity: 1000000000}
      - name: cweek
        limits:
          - {name: l, kind: calendar, unit: week, capacity: 1000000000}
      - name: cmonth
        limits:
          - {name: l, kind: calendar, unit: month, guard: 1h, capacity: 1000000000}
)";

// O.recovery against RecoveryNs for every kind and unit, with guards, a zone, sub-buckets and
// microsecond rounding: after one throttle each (10% of the capacity held back), for 1.5 s every
// replica's estimate lies between the embedded ledger's just before and just after it (give or
// take what either decays in 50 ms, and a unit of rounding): never decayed faster (more granted),
// never slower (held back longer). The fast ones are seen to decay.
TEST_F(SharedOutsideAttackTest, EveryKindUnitGuardAndZoneDecaysAsTheEmbeddedEstimate) {
  ReloadAll(Extended(kRecoveryFeatures));
  struct L {
    std::string feature;
    double per_s;  // units decayed a second (5% of the capacity per recovery period)
    int64_t first = -1, last = -1;
  };
  std::vector<L> ls = {{"rg", 5},
                       {"sg", 5},
                       {"sbg", 5},
                       {"odd", 5},
                       {"tbq", 15},
                       {"cmin", 50.0 / 60},
                       {"chour", 5e4 / 3600},
                       {"cday", 5e7 / (25 * 3600)},
                       {"cweek", 5e7 / (169 * 3600)},
                       {"cmonth", 5e7 / (745 * 3600)},
                       {"conc100", 0.5}};
  for (const L& l : ls) ReportBoth(0, Answer(l.feature, 429, {}, absl::Now()));
  auto outside = [](const std::vector<LimitStatus>& u, const std::string& name) -> int64_t {
    for (const LimitStatus& l : u) {
      if (l.name == name && !l.cooldown) return l.outside_estimate;
    }
    return -1;
  };
  int polls = 0, bad = 0;
  const absl::Time end = absl::Now() + absl::Milliseconds(1500);
  Eventually(
      [&] {
        absl::StatusOr<std::vector<LimitStatus>> e1 = ledger_->Usage(kCred);
        absl::StatusOr<std::vector<LimitStatus>> s = replicas_[polls % 2]->Usage(kCred);
        absl::StatusOr<std::vector<LimitStatus>> e2 = ledger_->Usage(kCred);
        if (!e1.ok() || !s.ok() || !e2.ok()) {
          ++bad;
          return true;
        }
        ++polls;
        for (L& l : ls) {
          const std::string name =
              l.feature == "conc100" ? "conc100.slots" : absl::StrCat(l.feature, ".l");
          const int64_t before = outside(*e1, name), shared = outside(*s, name),
                        after = outside(*e2, name);
          const int64_t slack = 1 + static_cast<int64_t>(l.per_s * 0.05);
          if (l.first < 0) l.first = after;
          l.last = after;
          if (shared < after - slack || shared > before + slack) {
            if (++bad <= 5) {
              ADD_FAILURE() << name << ": replica holds back " << shared << ", embedded " << before
                            << " then " << after;
            }
          }
        }
        return absl::Now() > end;
      },
      absl::Seconds(5), absl::Milliseconds(20));
  EXPECT_EQ(bad, 0);
  EXPECT_GT(polls, 10);
  for (const L& l : ls) {
    SCOPED_TRACE(l.feature);
    EXPECT_GT(l.first, 0);
    if (l.per_s >= 5) {
      EXPECT_LE(l.last, l.first - 5) << "did not decay: the test saw nothing";
    }
  }
}

// BUG (embedded ledger, service/core/compiled_policy.cc RecoveryNs): RecoveryNs subtracts the
// guard from LongestWindow for every kind, but a token bucket's LongestWindow (emission * burst)
// never added it. A token bucket with a guard (refused by the config file's checks,
// limit_checks.cc, but accepted by ValidatePolicy, so reachable by a Policy built in code)
// recovers over emission * burst - guard in the embedded ledger (here 1 s - 900 ms = 100 ms: 10
// units gone in 200 ms), over emission * burst in Redis (O.recovery ignores the guard: gone in
// 2 s). After one throttle the embedded ledger holds nothing back while every replica still holds
// back about 8 units: the two disagree (Redis on the safe side).
TEST_F(SharedOutsideAttackTest, DISABLED_Bug_ATokenBucketsGuardShortensOnlyTheEmbeddedRecovery) {
  Policy p = Extended(R"(
      - name: tbg
        limits:
          - {name: l, kind: token_bucket, capacity: 100, rate: 100, period: 1s}
)");
  LimitOf(p, "tbg", "l").guard = absl::Milliseconds(900);
  ReloadAll(p);
  ReportBoth(0, Answer("tbg", 429, {}, absl::Now()));
  ASSERT_EQ(OutsideOf(-1, "tbg.l"), 10);
  ASSERT_TRUE(Eventually([&] { return OutsideOf(-1, "tbg.l") == 0; }, absl::Seconds(2)));
  EXPECT_LE(OutsideOf(0, "tbg.l"), 1) << "embedded holds nothing back";  // fails: about 8
}

// A limit cooling down (1 min) is made scoped by a reload: its cooldown, kept by its name (~o),
// holds every scope of it, in single Acquires and all-or-nothing batches, as in the embedded
// ledger; GetUsage lists the feature cooling down before the reload in both.
TEST_F(SharedOutsideAttackTest, ACooldownKeptByNameHoldsBatchesOfEveryScope) {
  Policy slow = policy_;
  SlowBackoff(slow, "roll", absl::Minutes(1));
  ReloadAll(slow);
  ASSERT_GT(ReportBoth(0, Answer("roll", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  EXPECT_EQ(Names(CooldownsOf(0)), Names(CooldownsOf(-1)));
  Policy scoped = slow;
  LimitOf(scoped, "roll", "hourly").scoped = true;
  ReloadAll(scoped);
  for (const char* scope : {"a", "b", ""}) {
    SCOPED_TRACE(absl::StrCat("scope '", scope, "'"));
    auto [s, e] = Both(1, "roll", 1, scope);
    EXPECT_FALSE(e.granted);
    EXPECT_FALSE(s.granted);
    EXPECT_LE(absl::AbsDuration(s.retry_at - e.retry_at), absl::Milliseconds(5))
        << absl::FormatTime(s.retry_at) << " vs " << absl::FormatTime(e.retry_at);
  }
  const std::vector<AcquireRequest> reqs = {Req("cal", 1, ""), Req("roll", 1, "c")};
  std::vector<absl::StatusOr<Decision>> s =
      BatchThrough(*replicas_[0], reqs, std::vector<SharedRequestId>(2), /*all_or_nothing=*/true);
  std::vector<absl::StatusOr<Decision>> e = ledger_->AcquireAll(reqs);
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(s[k].ok() && e[k].ok()) << s[k].status() << " / " << e[k].status();
    EXPECT_FALSE(e[k]->granted) << k;
    EXPECT_FALSE(s[k]->granted) << k;
  }
  // Nothing was charged by the refused batch.
  EXPECT_TRUE(Both(0, "cal", 10).first.granted);
}

// Was a display gap (second attack): after a reload made a cooling limit scoped, GetUsage through
// a replica no longer listed the feature's cooldown (the embedded ledger did): quotad_usage now
// reads each feature's scoped limits' cooldowns from ~o too.
TEST_F(SharedOutsideAttackTest, UsageShowsTheCooldownOfALimitMadeScoped) {
  Policy slow = policy_;
  SlowBackoff(slow, "roll", absl::Minutes(1));
  ReloadAll(slow);
  ASSERT_GT(ReportBoth(0, Answer("roll", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  Policy scoped = slow;
  LimitOf(scoped, "roll", "hourly").scoped = true;
  ReloadAll(scoped);
  auto [s, e] = Both(1, "roll", 1, "x");
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted);
  EXPECT_EQ(Names(CooldownsOf(-1)), std::vector<std::string>{"roll.cooldown"});
  EXPECT_EQ(Names(CooldownsOf(0)), std::vector<std::string>{"roll.cooldown"});  // fails: none
}

// Was a divergence (second attack): a throttle blamed on a scoped limit also cooled the answered
// feature (field !<feature>), so a reload renaming the limit left the feature denied for the rest
// of the back-off where the embedded ledger granted. A scoped limit now cools only itself (its
// cooldown in ~o, for every scope and every feature charging it), as embedded.
TEST_F(SharedOutsideAttackTest, ARenamedScopedLimitsCooldownNoLongerCoolsTheFeature) {
  Policy p = Extended(R"(
      - name: sc
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 5, scoped: true}
)");
  SlowBackoff(p, "sc", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(0, Answer("sc", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  {
    auto [s, e] = Both(0, "sc", 1, "a");
    EXPECT_FALSE(e.granted);
    EXPECT_FALSE(s.granted);
  }
  LimitOf(p, "sc", "per").name = "per2";
  ReloadAll(p);
  absl::StatusOr<Decision> e = ledger_->Acquire(Req("sc", 1, "a"));
  absl::StatusOr<Decision> s = AcquireThrough(*replicas_[1], Req("sc", 1, "a"));
  ASSERT_TRUE(s.ok() && e.ok()) << s.status() << " / " << e.status();
  EXPECT_TRUE(e->granted) << e->limited_by;
  EXPECT_TRUE(s->granted) << s->limited_by;  // fails: denied by sc.cooldown for ~1 min
}

// Was a bug (second attack): a clean answer observed after a limit's cooldown ended (a caller
// whose clock is ahead) reset the count and dropped the whole ~o entry, the limit's cooldown with
// it; after a reload made the limit scoped every replica granted a new scope at once while the
// embedded ledger denied. An entry is now kept while its cooldown runs.
TEST_F(SharedOutsideAttackTest, ACleanAnswerObservedPastTheCooldownKeepsItsEntry) {
  Policy slow = policy_;
  SlowBackoff(slow, "one", absl::Minutes(1));
  ReloadAll(slow);
  ASSERT_GT(ReportBoth(0, Answer("one", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  UpstreamAnswer clean = Answer("one", 200, {});
  clean.observed_at = absl::Now() + absl::Minutes(2);
  ReportBoth(1, clean);
  {
    auto [s, e] = Both(0, "one", 1);
    EXPECT_FALSE(e.granted);
    EXPECT_FALSE(s.granted);  // holds: the counter's cd
  }
  Policy scoped = slow;
  LimitOf(scoped, "one", "hourly").scoped = true;
  ReloadAll(scoped);
  absl::StatusOr<Decision> e = ledger_->Acquire(Req("one", 1, "x"));
  absl::StatusOr<Decision> s = AcquireThrough(*replicas_[1], Req("one", 1, "x"));
  ASSERT_TRUE(s.ok() && e.ok()) << s.status() << " / " << e.status();
  EXPECT_FALSE(e->granted);
  EXPECT_FALSE(s->granted) << "granted in the limit's cooldown";  // fails: granted
}

// A waiter for a new scope of a limit made scoped during its cooldown (300 ms, kept only by the
// limit's name in ~o) is neither served before the cooldown ends nor starved after it, in both.
TEST_F(SharedOutsideAttackTest, AWaiterOnACooldownKeptByNameIsServedWhenItEnds) {
  Policy slow = policy_;
  SlowBackoff(slow, "roll", absl::Milliseconds(300));
  ReloadAll(slow);
  const absl::Time until = ReportBoth(0, Answer("roll", 429, {}, absl::Now()));
  ASSERT_GT(until, absl::Now() + absl::Milliseconds(200));
  Policy scoped = slow;
  LimitOf(scoped, "roll", "hourly").scoped = true;
  ReloadAll(scoped);
  Waited sw, ew;
  const AcquireRequest req = Req("roll", 1, "w");
  WaitBoth(1, req, absl::Seconds(5), &sw, &ew);
  // (The embedded ledger's waiters are served by whoever calls Pump: the server's timer, here
  // the poll.)
  ASSERT_TRUE(Eventually(
      [&] {
        ledger_->Pump();
        return ew.done.HasBeenNotified() && sw.done.HasBeenNotified();
      },
      absl::Seconds(8)));
  ASSERT_TRUE(sw.d.ok() && ew.d.ok()) << sw.d.status() << " / " << ew.d.status();
  EXPECT_TRUE(ew.d->granted);
  EXPECT_TRUE(sw.d->granted) << "the waiter starved";
  EXPECT_GE(sw.at, until - absl::Milliseconds(1));
  EXPECT_GE(ew.at, until - absl::Milliseconds(1));
  EXPECT_LE(sw.at, until + absl::Seconds(2));
}

// A feature with two scoped limits (one that releases in 60 ms, one in an hour; back-off 10 ms
// doubling to 200 ms): throttles blamed on both, clean answers seen 30 ms after a throttle (past
// some limits' cooldowns, not others'), a reload adding a third scoped limit (releasing in 30 ms)
// midway and then an unscoped one, fuller than 2%, which the last throttles are blamed on alone.
// Every throttle's cooldown, the cooldowns Usage lists, the unscoped estimate and every grant of
// scopes a and b agree with the embedded ledger (back-offs counted by each limit's name).
TEST_F(SharedOutsideAttackTest, ScopedLimitsCountTheirThrottlesByNameAsEmbedded) {
  Policy p = Extended(R"(
      - name: ss
        limits:
          - {name: s1, kind: sliding, period: 1h, capacity: 100, scoped: true}
          - {name: s2, kind: sliding, period: 60ms, capacity: 100, scoped: true}
)");
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name != "ss") continue;
    f.throttle.initial_backoff = absl::Milliseconds(10);
    f.throttle.max_backoff = absl::Milliseconds(200);
  }
  ReloadAll(p);
  for (int t = 0; t < 10; ++t) {
    SCOPED_TRACE(absl::StrCat("round ", t));
    if (t == 4 || t == 7) {
      for (FeatureSpec& f : p.credentials[0].features) {
        if (f.name != "ss") continue;
        LimitSpec l = f.limits[0];
        if (t == 4) {
          l.name = "s3";
          l.period = absl::Milliseconds(30);
        } else {
          l.name = "u";
          l.kind = LimitKind::kRolling;
          l.capacity = 1000;
          l.scoped = false;
        }
        f.limits.push_back(l);
      }
      ReloadAll(p);
    }
    if (t == 7) {
      // u 3% full: the throttles from now on are blamed on it alone.
      ASSERT_TRUE(testing::Granted(AcquireThrough(*replicas_[0], Req("ss", 30, "c"))));
      ASSERT_TRUE(testing::Granted(ledger_->Acquire(Req("ss", 30, "c"))));
    }
    const absl::Time sent = absl::Now();
    const absl::Time until = ReportBoth(t % 2, Answer("ss", 429, {}, sent));
    // Doubling by each limit's own count: 20 ms at the 2nd after the reset, 160 at the 5th.
    if (t == 3) {
      EXPECT_GE(until - sent, absl::Milliseconds(20) - absl::Milliseconds(1));
    }
    if (t == 6) {
      EXPECT_GE(until - sent, absl::Milliseconds(160) - absl::Milliseconds(1));
    }
    if (t % 3 == 1) {
      // A clean answer seen 30 ms after the throttle.
      UpstreamAnswer clean = Answer("ss", 200, {});
      clean.observed_at = sent + absl::Milliseconds(30);
      ReportBoth((t + 1) % 2, clean);
    }
    PassUntil(until);
    // (Not the whole Usage: s2's and s3's units leave 60 and 30 ms after their grant, and the
    // two reads are not at the same instant.)
    EXPECT_EQ(Names(CooldownsOf(0)), Names(CooldownsOf(-1)));
    if (t >= 7) {
      EXPECT_EQ(OutsideOf(0, "ss.u"), OutsideOf(-1, "ss.u"));
    }
    const AcquireRequest req = Req("ss", 1, t % 2 == 0 ? "a" : "b");
    absl::StatusOr<Decision> s = AcquireThrough(*replicas_[t % 2], req);
    absl::StatusOr<Decision> e = ledger_->Acquire(req);
    ASSERT_TRUE(s.ok() && e.ok()) << s.status() << " / " << e.status();
    EXPECT_TRUE(e->granted) << e->limited_by;
    EXPECT_EQ(s->granted, e->granted) << s->limited_by << " / " << e->limited_by;
  }
}

// ~o in the hash's expiry: after a throttle on a limit that recovers in 100 ms (its estimate
// gone in 2 s) and a clean answer, the hash lives at least as long as the embedded ledger holds
// any of the estimate back (polled until the embedded estimate is gone), and still has an
// expiry then (~o keeps it no longer than its estimates and counts need).
TEST_F(SharedOutsideAttackTest, TheHashOutlivesTheEmbeddedEstimateAndStillExpires) {
  ReloadAll(Extended(R"(
      - name: fast
        limits:
          - {name: l, kind: rolling, period: 100ms, capacity: 100}
)"));
  ReportBoth(0, Answer("fast", 429, {}, absl::Now()));
  ReportBoth(1, Answer("fast", 200, {}));
  const std::string key = redis::StateKey(kCred);
  int64_t e = 0, s = 0;
  bool lost = false;
  ASSERT_TRUE(Eventually(
      [&] {
        e = OutsideOf(-1, "fast.l");
        s = OutsideOf(0, "fast.l");
        absl::StatusOr<std::string> exists = redis_->Command({"EXISTS", key});
        if (e > 1 && (!exists.ok() || *exists != "1" || s < e - 1)) lost = true;
        return e == 0;
      },
      absl::Seconds(4)));
  EXPECT_FALSE(lost) << "the estimate vanished while embedded held " << e << " back";
  absl::StatusOr<std::string> ttl = redis_->Command({"PTTL", key});
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_NE(*ttl, "-1") << key << " never expires";
}

// A Reset during cooldowns kept by name (a scoped limit's, for every scope, and an unscoped
// limit's made scoped by a reload) ends them in both: every scope is granted at once, and
// Usage lists no cooldown.
TEST_F(SharedOutsideAttackTest, AResetEndsEveryCooldownKeptByName) {
  Policy p = Extended(R"(
      - name: sc
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 5, scoped: true}
)");
  SlowBackoff(p, "sc", absl::Minutes(1));
  SlowBackoff(p, "roll", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(0, Answer("sc", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  ASSERT_GT(ReportBoth(1, Answer("roll", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  LimitOf(p, "roll", "hourly").scoped = true;
  ReloadAll(p);
  for (const char* f : {"sc", "roll"}) {
    auto [s, e] = Both(0, f, 1, "a");
    EXPECT_FALSE(e.granted) << f;
    EXPECT_FALSE(s.granted) << f;
  }
  ASSERT_TRUE(replicas_[1]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  for (const char* f : {"sc", "roll"}) {
    for (const char* scope : {"a", "b"}) {
      auto [s, e] = Both(0, f, 1, scope);
      EXPECT_TRUE(e.granted) << f << "[" << scope << "]";
      EXPECT_TRUE(s.granted) << f << "[" << scope << "]";
    }
  }
  EXPECT_TRUE(CooldownsOf(0).empty());
  EXPECT_TRUE(CooldownsOf(-1).empty());
  ExpectSameUsage();
}

// The other way round from AReloadToScopedKeepsDoublingTheBackOff: three throttles blamed on a
// scoped limit, then a reload makes it unscoped and has another feature draw on it. The fourth
// throttle backs off 8 times the first (counted by the limit's name), and its cooldown holds the
// feature that now draws on the limit too, in both.
TEST_F(SharedOutsideAttackTest, AReloadToUnscopedKeepsDoublingAndCoolsWhatDrawsOnIt) {
  Policy p = Extended(R"(
      - name: sc
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 5, scoped: true}
      - name: drawer
        draws_on: [sc]
        limits:
          - {name: own, kind: rolling, period: 1h, capacity: 50}
)");
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name != "sc" && f.name != "drawer") continue;
    f.throttle.initial_backoff = absl::Milliseconds(50);
    f.throttle.max_backoff = absl::Seconds(10);
  }
  ReloadAll(p);
  Throttles("sc", 3);  // 50, 100, 200 ms
  LimitOf(p, "sc", "per").scoped = false;
  ReloadAll(p);
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(0, Answer("sc", 429, {}, absl::Now()));
  EXPECT_GE(until - before, absl::Milliseconds(400) - absl::Milliseconds(1));
  auto [s, e] = Both(1, "drawer", 1);
  EXPECT_FALSE(e.granted) << "embedded";
  EXPECT_FALSE(s.granted) << "shared";
  EXPECT_EQ(Names(CooldownsOf(0)), Names(CooldownsOf(-1)));
  PassUntil(until);
  EXPECT_TRUE(Both(0, "drawer", 1).first.granted);
}

// Was a leak (second attack): with no bound on the back-off (max_backoff infinite, so is the
// feature's max_cooldown) a throttle count PERSISTed the credential's hash for good. A count now
// keeps it at most a day (O.COUNT_KEPT_US) beyond its cooldown.
TEST_F(SharedOutsideAttackTest, AnUnboundedBackOffStillLetsTheHashExpire) {
  Policy p = Extended(R"(
      - name: fast
        limits:
          - {name: l, kind: rolling, period: 100ms, capacity: 100}
)");
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name == "fast") f.throttle.max_backoff = absl::InfiniteDuration();
  }
  ReloadAll(p);
  PassUntil(ReportBoth(0, Answer("fast", 429, {}, absl::Now())));
  ReportBoth(1, Answer("fast", 200, {}));  // the count ends
  ASSERT_TRUE(Eventually([&] { return OutsideOf(-1, "fast.l") == 0; }, absl::Seconds(4)));
  ASSERT_TRUE(Eventually([&] { return OutsideOf(0, "fast.l") == 0; }, absl::Seconds(4)));
  Both(1, "fast", 1);  // a new window: the hash needs to live ~100 ms more
  const std::string key = redis::StateKey(kCred);
  absl::StatusOr<std::string> ttl = redis_->Command({"PTTL", key});
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_NE(*ttl, "-1") << key << " never expires";  // fails: -1
}

// An unscoped limit cooling down (1 min) is renamed, then moved to another feature, by reloads:
// its cooldown stays with the old name, so both grant at once (the feature itself never cooled:
// no Retry-After); renamed back, it cools again in both, for what is left of the minute.
TEST_F(SharedOutsideAttackTest, ARenamedOrMovedUnscopedLimitLeavesItsCooldownBehindAsEmbedded) {
  Policy slow = policy_;
  SlowBackoff(slow, "two", absl::Minutes(1));
  ReloadAll(slow);
  ASSERT_GT(ReportBoth(0, Answer("two", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  EXPECT_FALSE(Both(1, "two", 1).first.granted);
  Policy renamed = slow;
  LimitOf(renamed, "two", "hourly").name = "hourly2";
  ReloadAll(renamed);
  {
    auto [s, e] = Both(1, "two", 1);
    EXPECT_TRUE(e.granted) << e.limited_by;
    EXPECT_TRUE(s.granted) << s.limited_by;
  }
  // Moved: cal charges it (cal.hourly), two charges a new limit.
  Policy moved = slow;
  for (FeatureSpec& f : moved.credentials[0].features) {
    if (f.name == "cal") f.limits.push_back(LimitOf(slow, "two", "hourly"));
    if (f.name == "two") f.limits[0].name = "other";
  }
  ReloadAll(moved);
  for (const char* f : {"two", "cal"}) {
    auto [s, e] = Both(0, f, 1);
    EXPECT_TRUE(e.granted) << f << " " << e.limited_by;
    EXPECT_TRUE(s.granted) << f << " " << s.limited_by;
  }
  ExpectSameUsage();
  ReloadAll(slow);
  auto [s, e] = Both(0, "two", 1);
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted);
  EXPECT_EQ(s.limited_by, e.limited_by);
}


// --- Third attack (bccfe0f: a scoped limit's throttle cools the limit, kept in ~o's entry[5]) ---

// A feature with a scoped limit and an unscoped one, and a feature drawing on it (draws_on
// brings only the unscoped sc.tot: a scoped limit is never drawn on).
constexpr char kScopedFeatures[] = R"(
      - name: sc
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 50, scoped: true}
          - {name: tot, kind: rolling, period: 1h, capacity: 100}
      - name: dr
        draws_on: [sc]
        limits:
          - {name: own, kind: rolling, period: 1h, capacity: 100}
)";

// A feature with a scoped limit only.
constexpr char kScopedOnly[] = R"(
      - name: so
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 5, scoped: true}
      - name: dso
        draws_on: [so]
        limits:
          - {name: own, kind: rolling, period: 1h, capacity: 100}
)";

// Until when GetUsage through replica `i` (-1: embedded) shows `feature` cooling (InfinitePast:
// not at all).
absl::Time CoolingUntil(const std::vector<std::pair<std::string, absl::Time>>& v,
                        const std::string& feature) {
  for (const auto& [name, until] : v) {
    if (name == feature + ".cooldown") return until;
  }
  return absl::InfinitePast();
}

// The feature "scoped" charges a scoped limit and an unscoped one, both empty: a throttle is
// blamed on both (each 0% full). Each cools for the back-off (300 ms), every scope (old, new,
// none charged yet) is denied alike, GetUsage lists the feature cooling until the same time in
// both, and every scope is granted again once the cooldown ends.
TEST_F(SharedOutsideAttackTest, ScopedAndUnscopedLimitsOfOneFeatureCoolAlike) {
  Policy p = policy_;
  SlowBackoff(p, "scoped", absl::Milliseconds(300));
  ReloadAll(p);
  EXPECT_TRUE(Both(0, "scoped", 1, "old").first.granted);
  // The two cooldowns differ by the time between the two Reports (each on its own clock).
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(1, Answer("scoped", 429, {}, absl::Now()));
  const absl::Duration apart = absl::Now() - before + absl::Milliseconds(5);
  ASSERT_GT(until, absl::Now() + absl::Milliseconds(200));
  for (const char* scope : {"old", "new", ""}) {
    auto [s, e] = Both(0, "scoped", 1, scope);
    EXPECT_FALSE(e.granted) << scope;
    EXPECT_FALSE(s.granted) << scope;
    EXPECT_LE(absl::AbsDuration(s.retry_at - e.retry_at), apart) << scope;
  }
  const absl::Time cs = CoolingUntil(CooldownsOf(0), "scoped");
  const absl::Time ce = CoolingUntil(CooldownsOf(-1), "scoped");
  EXPECT_NE(ce, absl::InfinitePast());
  EXPECT_LE(absl::AbsDuration(cs - ce), apart)
      << absl::FormatTime(cs) << " vs " << absl::FormatTime(ce);
  EXPECT_EQ(Names(CooldownsOf(1)), Names(CooldownsOf(-1)));
  PassUntil(until);
  for (const char* scope : {"old", "new"}) {
    auto [s, e] = Both(1, "scoped", 1, scope);
    EXPECT_TRUE(e.granted) << scope << " " << e.limited_by;
    EXPECT_TRUE(s.granted) << scope << " " << s.limited_by;
  }
  EXPECT_TRUE(CooldownsOf(0).empty());
  ExpectSameUsage();
}

// A Retry-After (2 s) on a throttle blamed on a scoped limit (so's only limit) cools the feature
// itself too, in both: after a reload renames the scoped limit (its cooldown stays with the old name), the
// feature is still denied by its own cooldown until the Retry-After, and GetUsage lists it.
TEST_F(SharedOutsideAttackTest, ARetryAfterOnAScopedHitCoolsTheFeatureTooInBoth) {
  Policy p = Extended(kScopedOnly);
  ReloadAll(p);
  const absl::Time until =
      ReportBoth(0, Answer("so", 429, {{"Retry-After", "2"}}, absl::Now()));
  ASSERT_GT(until, absl::Now() + absl::Seconds(1));
  LimitOf(p, "so", "per").name = "per2";
  ReloadAll(p);
  auto [s, e] = Both(1, "so", 1, "a");
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted);
  EXPECT_EQ(s.limited_by, e.limited_by);
  EXPECT_LE(absl::AbsDuration(s.retry_at - e.retry_at), absl::Milliseconds(5));
  EXPECT_EQ(Names(CooldownsOf(0)), Names(CooldownsOf(-1)));
  // The drawing feature draws on no scoped limit, and so's own cooldown is so's alone: granted
  // in both.
  auto [ds, de] = Both(0, "dso", 1, "a");
  EXPECT_TRUE(de.granted) << de.limited_by;
  EXPECT_TRUE(ds.granted) << ds.limited_by;
}

// draws_on onto a feature with a scoped limit (sc.per, not drawn) and an unscoped one (sc.tot,
// drawn): a throttle of sc (both empty, both blamed; 300 ms) denies dr in every scope in both,
// and GetUsage lists both features cooling. With sc.tot 10% full, a throttle of dr is blamed on
// sc.tot alone (dr.own is 1% full, sc.per is not dr's): sc is denied in every scope by it, its
// count doubles dr's back-off (200 ms); a clean answer to dr after it starts sc.tot's count over,
// so sc's next throttle (blamed on sc.tot alone) backs off sc's initial 300 ms, in both.
TEST_F(SharedOutsideAttackTest, ADrawnOnScopedFeaturesCooldownHoldsTheDrawerAsEmbedded) {
  Policy p = Extended(kScopedFeatures);
  SlowBackoff(p, "sc", absl::Milliseconds(300));
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name == "dr") {
      f.throttle.initial_backoff = absl::Milliseconds(100);
      f.throttle.max_backoff = absl::Seconds(2);
    }
  }
  ReloadAll(p);
  absl::Time until = ReportBoth(0, Answer("sc", 429, {}, absl::Now()));
  for (const char* scope : {"a", "b", ""}) {
    auto [s, e] = Both(1, "dr", 1, scope);
    EXPECT_FALSE(e.granted) << scope;
    EXPECT_FALSE(s.granted) << scope;
    EXPECT_EQ(s.limited_by, e.limited_by);
  }
  EXPECT_EQ(Names(CooldownsOf(0)), Names(CooldownsOf(-1)));
  EXPECT_EQ(Names(CooldownsOf(-1)), (std::vector<std::string>{"dr.cooldown", "sc.cooldown"}));
  PassUntil(until);
  EXPECT_TRUE(Both(0, "dr", 1, "a").first.granted);
  EXPECT_TRUE(Both(0, "sc", 10, "a").first.granted);
  const absl::Time sent = absl::Now();
  until = ReportBoth(1, Answer("dr", 429, {}, sent));
  EXPECT_GE(until - sent, absl::Milliseconds(200) - absl::Milliseconds(1));
  EXPECT_LE(until - sent, absl::Milliseconds(250));
  for (const char* scope : {"z", "a"}) {
    auto [s, e] = Both(0, "sc", 1, scope);
    EXPECT_FALSE(e.granted) << scope;
    EXPECT_FALSE(s.granted) << scope;
  }
  EXPECT_EQ(Names(CooldownsOf(1)), Names(CooldownsOf(-1)));
  PassUntil(until);
  ReportBoth(0, Answer("dr", 200, {}));
  const absl::Time sent2 = absl::Now();
  const absl::Time until2 = ReportBoth(1, Answer("sc", 429, {}, sent2));
  EXPECT_GE(until2 - sent2, absl::Milliseconds(300) - absl::Milliseconds(1));
  EXPECT_LE(until2 - sent2, absl::Milliseconds(350));
  ExpectSameUsage();
}

// Batches with items on a cooling scoped limit (sc.per) and its unscoped sibling (sc.tot, drawn
// on by dr), both cooling 1 min: an independent batch grants the other items and denies those in
// both (every scope); an all-or-nothing batch grants none and charges nothing.
TEST_F(SharedOutsideAttackTest, BatchesWithAnItemOnACoolingScopedLimitAnswerAsEmbedded) {
  Policy p = Extended(kScopedFeatures);
  SlowBackoff(p, "sc", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(0, Answer("sc", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  const std::vector<AcquireRequest> reqs = {Req("cal", 1, ""), Req("sc", 1, "a"),
                                            Req("dr", 1, "b"), Req("roll", 2, "")};
  std::vector<absl::StatusOr<Decision>> s =
      BatchThrough(*replicas_[1], reqs, std::vector<SharedRequestId>(reqs.size()), false);
  ASSERT_EQ(s.size(), reqs.size());
  for (size_t k = 0; k < reqs.size(); ++k) {
    absl::StatusOr<Decision> e = ledger_->Acquire(reqs[k]);
    ASSERT_TRUE(s[k].ok() && e.ok()) << k << ": " << s[k].status() << " / " << e.status();
    EXPECT_EQ(s[k]->granted, e->granted) << k << ": " << s[k]->limited_by << " / " << e->limited_by;
    EXPECT_EQ(e->granted, k == 0 || k == 3) << k;
    if (!e->granted) {
      EXPECT_EQ(s[k]->limited_by, e->limited_by) << k;
    }
  }
  ExpectSameUsage();
  const std::vector<AcquireRequest> aon = {Req("cal", 2, ""), Req("roll", 1, ""),
                                           Req("sc", 1, "c")};
  s = BatchThrough(*replicas_[0], aon, std::vector<SharedRequestId>(aon.size()), true);
  std::vector<absl::StatusOr<Decision>> e = ledger_->AcquireAll(aon);
  ASSERT_EQ(s.size(), aon.size());
  ASSERT_EQ(e.size(), aon.size());
  for (size_t k = 0; k < aon.size(); ++k) {
    ASSERT_TRUE(s[k].ok() && e[k].ok()) << s[k].status() << " / " << e[k].status();
    EXPECT_FALSE(e[k]->granted) << k;
    EXPECT_FALSE(s[k]->granted) << k;
  }
  ExpectSameUsage();
  EXPECT_TRUE(Both(1, "cal", 9).first.granted);  // 1 charged by the first batch, 9 left
  EXPECT_FALSE(Both(0, "cal", 1).first.granted);
}

// Waiters parked behind a cooling scoped limit (300 ms): one per scope, two of them through
// different replicas, for the limit's own feature and for one drawing on it. None is served
// before the cooldown ends, every one is served after it (none starved until its 5 s deadline),
// in both; then a waiter behind a 1 min cooldown is served soon after a Reset, in both.
TEST_F(SharedOutsideAttackTest, WaitersBehindACoolingScopedLimitAreServedWhenItEnds) {
  Policy p = Extended(kScopedFeatures);
  SlowBackoff(p, "sc", absl::Milliseconds(300));
  ReloadAll(p);
  // (until: the later of the two cooldowns, each on its own clock; they differ by the time
  // between the two Reports.)
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(0, Answer("sc", 429, {}, absl::Now()));
  const absl::Duration apart = absl::Now() - before + absl::Milliseconds(1);
  ASSERT_GT(until, absl::Now() + absl::Milliseconds(200));
  const std::vector<AcquireRequest> reqs = {Req("sc", 1, "a"), Req("sc", 1, "b"),
                                            Req("dr", 1, "c")};
  std::vector<std::unique_ptr<Waited>> sw, ew;
  for (size_t k = 0; k < reqs.size(); ++k) {
    sw.push_back(std::make_unique<Waited>());
    ew.push_back(std::make_unique<Waited>());
    Waited* s = sw.back().get();
    Waited* e = ew.back().get();
    WaitBoth(k % 2, reqs[k], absl::Seconds(5), s, e);
  }
  ASSERT_TRUE(Eventually(
      [&] {
        ledger_->Pump();
        for (size_t k = 0; k < reqs.size(); ++k) {
          if (!sw[k]->done.HasBeenNotified() || !ew[k]->done.HasBeenNotified()) return false;
        }
        return true;
      },
      absl::Seconds(8)));
  for (size_t k = 0; k < reqs.size(); ++k) {
    SCOPED_TRACE(absl::StrCat("waiter ", k));
    ASSERT_TRUE(sw[k]->d.ok() && ew[k]->d.ok()) << sw[k]->d.status() << " / " << ew[k]->d.status();
    EXPECT_TRUE(ew[k]->d->granted) << ew[k]->d->limited_by;
    EXPECT_TRUE(sw[k]->d->granted) << sw[k]->d->limited_by << ": starved";
    EXPECT_GE(sw[k]->at, until - apart);
    EXPECT_GE(ew[k]->at, until - apart);
    EXPECT_LE(sw[k]->at, until + absl::Seconds(2));
  }
  ExpectSameUsage();

  // A long cooldown, ended by a Reset.
  SlowBackoff(p, "sc", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(1, Answer("sc", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  Waited s2, e2;
  const AcquireRequest req = Req("sc", 1, "d");
  WaitBoth(0, req, absl::Seconds(20), &s2, &e2);
  ledger_->Pump();
  EXPECT_FALSE(s2.done.HasBeenNotified());
  EXPECT_FALSE(e2.done.HasBeenNotified());
  const absl::Time reset_at = absl::Now();
  ASSERT_TRUE(replicas_[1]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  ASSERT_TRUE(Eventually(
      [&] {
        ledger_->Pump();
        return s2.done.HasBeenNotified() && e2.done.HasBeenNotified();
      },
      absl::Seconds(5)))
      << "a waiter starved after the Reset ended the cooldown";
  ASSERT_TRUE(s2.d.ok() && e2.d.ok()) << s2.d.status() << " / " << e2.d.status();
  EXPECT_TRUE(e2.d->granted);
  EXPECT_TRUE(s2.d->granted);
  EXPECT_LE(s2.at - reset_at, absl::Seconds(2));
}

// The clean-answer reset of a scoped limit's count compares the answer's observed time with the
// limit's cooldown (entry[5]), in both: a clean answer seen before the cooldown ends keeps the
// count (the next throttle backs off twice as long), one seen after it starts the back-off over
// (the next backs off the initial 5 ms). Likewise with a Retry-After (300 ms) in place of the
// back-off: a clean answer seen before the Retry-After keeps the count.
TEST_F(SharedOutsideAttackTest, ACleanAnswerResetsAScopedCountOnlyPastItsCooldownAsEmbedded) {
  Policy p = Extended(kScopedOnly);
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name == "so") {
      f.throttle.initial_backoff = absl::Milliseconds(40);
      f.throttle.max_backoff = absl::Seconds(2);
    }
  }
  ReloadAll(p);
  int step = 0;
  auto throttle = [&](int i) {
    SCOPED_TRACE(absl::StrCat("throttle ", ++step));
    const absl::Time sent = absl::Now();
    const absl::Time until = ReportBoth(i, Answer("so", 429, {}, sent));
    return std::make_pair(sent, until);
  };
  auto clean_at = [&](int i, absl::Time observed) {
    UpstreamAnswer clean = Answer("so", 200, {});
    clean.observed_at = observed;
    ReportBoth(i, clean);
  };
  auto [sent1, until1] = throttle(0);  // 40 ms
  EXPECT_LE(until1 - sent1, absl::Milliseconds(40) + absl::Milliseconds(35));
  // Seen in the cooldown (each side's ends at least 40 ms after sent1, on its own clock): the
  // count stays.
  clean_at(1, sent1 + absl::Milliseconds(30));
  PassUntil(until1);
  auto [sent2, until2] = throttle(1);  // 80 ms
  EXPECT_GE(until2 - sent2, absl::Milliseconds(80) - absl::Milliseconds(1));
  clean_at(0, until2 + absl::Milliseconds(1));  // seen after it: starts over
  PassUntil(until2);
  auto [sent3, until3] = throttle(0);  // 40 ms again
  EXPECT_LE(until3 - sent3, absl::Milliseconds(40) + absl::Milliseconds(35));
  PassUntil(until3);
  const absl::Time r0 = absl::Now();
  const absl::Time until4 =
      ReportBoth(1, Answer("so", 429, {{"Retry-After", "1"}}, absl::Now()));  // count 2
  EXPECT_GE(until4 - r0, absl::Milliseconds(500));
  clean_at(0, until4 - absl::Milliseconds(100));  // seen before the Retry-After: stays
  PassUntil(until4);
  auto [sent5, until5] = throttle(0);  // the count's third: 160 ms
  EXPECT_GE(until5 - sent5, absl::Milliseconds(160) - absl::Milliseconds(1));
  ExpectSameUsage();
}

// The hash in ~o's keeping (O.encode): a throttle blamed on a scoped limit no request ever
// charged leaves a hash holding only ~o (and the feature's cooldown). It has an expiry, at least
// as late as the limit's cooldown (1 min); a clean answer seen after the cooldown ends the count
// and the entry, so ~o goes (its cooldown over, nothing to keep).
TEST_F(SharedOutsideAttackTest, AHashHoldingOnlyAScopedCooldownExpiresNoSoonerThanIt) {
  Policy p = Extended(kScopedOnly);
  SlowBackoff(p, "so", absl::Minutes(1));
  ReloadAll(p);
  const absl::Time until = ReportBoth(0, Answer("so", 429, {}, absl::Now()));
  ASSERT_GT(until, absl::Now() + absl::Seconds(50));
  const std::string key = redis::StateKey(kCred);
  absl::StatusOr<std::string> ttl = redis_->Command({"PTTL", key});
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  ASSERT_NE(*ttl, "-2") << key << " is gone in the cooldown";
  ASSERT_NE(*ttl, "-1") << key << " never expires";
  EXPECT_GE(absl::Now() + absl::Milliseconds(std::stoll(*ttl)), until)
      << key << " expires before the cooldown ends";
  // A clean answer seen in the cooldown keeps ~o; one seen after it drops it.
  UpstreamAnswer clean = Answer("so", 200, {});
  clean.observed_at = until - absl::Seconds(1);
  ReportBoth(1, clean);
  absl::StatusOr<std::string> has = redis_->Command({"HEXISTS", key, "~o"});
  ASSERT_TRUE(has.ok()) << has.status();
  EXPECT_EQ(*has, "1");
  {
    auto [s, e] = Both(0, "so", 1, "a");
    EXPECT_FALSE(e.granted);
    EXPECT_FALSE(s.granted);
  }
  clean.observed_at = until + absl::Seconds(1);
  ReportBoth(1, clean);
  has = redis_->Command({"HEXISTS", key, "~o"});
  ASSERT_TRUE(has.ok()) << has.status();
  // The count is over but the cooldown still runs (observed ahead of now): the entry stays for
  // it, as embedded (the limit still denies).
  EXPECT_EQ(*has, "1");
  auto [s, e] = Both(1, "so", 1, "b");
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted);
  ExpectSameUsage();
}

// BUG (service/store/redis/quotad_outside.lua O.encode / gone_at, with save_all's expiry): the
// hash's expiry is set when a Report writes ~o, from the recovery period the entry stored then
// (entry[4]); decisions decay the estimate over the period in force (O.recovery), but nothing
// moves the expiry when a reload lengthens the period. Here: rolling 100 ms, capacity 100, a
// throttle learns 10 units (gone in 2 s at that period); a reload makes the period 1 h (the
// embedded estimate now lasts ~20 h). The feature's max_cooldown is short (max_lease_ttl 100 ms)
// so the throttle count keeps the hash no longer than the estimate, and nothing is charged, so
// only ~o keeps the hash. About 4 s after the throttle the hash expires with ~o in it: every
// replica shows 0 held back where the embedded ledger shows 10, and grants the 91st unit the
// embedded ledger refuses (over-grant against the learnt outside use). Any charge or Report
// before the expiry would not help either: only a throttle Report rewrites entry[4].
TEST_F(SharedOutsideAttackTest, DISABLED_Bug_AReloadLengtheningThePeriodLetsTheHashDropTheEstimate) {
  Policy p = Extended(R"(
      - name: ql
        default_lease_ttl: 100ms
        max_lease_ttl: 100ms
        limits:
          - {name: l, kind: rolling, period: 100ms, capacity: 100}
)");
  ReloadAll(p);
  PassUntil(ReportBoth(0, Answer("ql", 429, {}, absl::Now())));  // 10 of 100 held back
  LimitOf(p, "ql", "l").period = absl::Hours(1);
  ReloadAll(p);
  ASSERT_GE(OutsideOf(-1, "ql.l"), 9);
  ASSERT_GE(OutsideOf(0, "ql.l"), 9);
  const std::string key = redis::StateKey(kCred);
  // The embedded estimate now decays over 1 h (20 h to go); the hash expires ~4 s after the
  // throttle, its ~o with it.
  const bool gone = Eventually(
      [&] {
        absl::StatusOr<std::string> n = redis_->Command({"EXISTS", key});
        return n.ok() && *n == "0";
      },
      absl::Seconds(8));
  EXPECT_FALSE(gone) << key << " expired while the embedded ledger holds "
                     << OutsideOf(-1, "ql.l") << " units back";
  EXPECT_EQ(OutsideOf(0, "ql.l"), OutsideOf(-1, "ql.l"));
  // (HoldBack never holds more than capacity - cost: 90 fit in both.)
  EXPECT_TRUE(Both(1, "ql", 90).second.granted);
  auto [s, e] = Both(0, "ql", 1);
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted) << "the 91st unit granted with 10 held back embedded";  // fails
}

// BUG (embedded ledger, service/core/ledger_acquire.cc, Credential's Acquire: the feature's own
// cooldown is checked first and returns at once, before LimitCooldown): when the feature's
// cooldown (a Retry-After of 1 s) ends before its scoped limit's (a later throttle backs off
// 1 min), the embedded Decision's retry_at is the feature's 1 s, though nothing is granted for a
// minute; every replica answers the later one (quotad_acquire takes the latest cooldown). Never
// an over-grant: a caller retrying at 1 s is denied again.
TEST_F(SharedOutsideAttackTest, DISABLED_Bug_EmbeddedRetryAtStopsAtTheFeaturesOwnCooldown) {
  Policy p = Extended(kScopedOnly);
  SlowBackoff(p, "so", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(0, Answer("so", 429, {{"Retry-After", "1"}}, absl::Now())),
            absl::Now() + absl::Milliseconds(500));
  ASSERT_GT(ReportBoth(1, Answer("so", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  auto [s, e] = Both(0, "so", 1, "a");
  EXPECT_FALSE(e.granted);
  EXPECT_FALSE(s.granted);
  EXPECT_GT(s.retry_at, absl::Now() + absl::Seconds(50));
  EXPECT_GT(e.retry_at, absl::Now() + absl::Seconds(50))  // fails: ~1 s on
      << absl::FormatTime(e.retry_at);
}

// DIVERGENCE (documented in service/store/redis/README.md as a trade-off, quotad_outside.lua
// O.encode: a throttle count keeps the hash one max_cooldown, at most a day; embedded: until a
// clean answer): with max_cooldown ~100 ms (max_lease_ttl 100 ms, the scoped limit's window
// 100 ms) the hash expires ~1-2 s after a throttle, its count with it, and the next throttle of
// the scoped limit backs off the initial 5 ms where the embedded ledger doubles to 10 ms (the
// replicas cool down half as long; shorter, so more calls reach a throttling upstream). Kept
// disabled until the lead decides whether this trade-off stands.
TEST_F(SharedOutsideAttackTest, DISABLED_Bug_AScopedCountGoneWithTheHashHalvesTheNextBackOff) {
  Policy p = Extended(R"(
      - name: qs
        default_lease_ttl: 100ms
        max_lease_ttl: 100ms
        limits:
          - {name: per, kind: sliding, period: 100ms, capacity: 100, scoped: true}
)");
  ReloadAll(p);
  const absl::Time sent1 = absl::Now();
  PassUntil(ReportBoth(0, Answer("qs", 429, {}, sent1)));  // 5 ms
  const std::string key = redis::StateKey(kCred);
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> n = redis_->Command({"EXISTS", key});
        return n.ok() && *n == "0";
      },
      absl::Seconds(5)));
  const absl::Time sent2 = absl::Now();
  absl::StatusOr<ReportResult> rs = replicas_[1]->Report(Answer("qs", 429, {}, sent2));
  absl::StatusOr<ReportResult> re = ledger_->Report(Answer("qs", 429, {}, sent2));
  ASSERT_TRUE(rs.ok() && re.ok());
  EXPECT_GE(re->cooldown_until - sent2, absl::Milliseconds(10) - absl::Milliseconds(1));
  EXPECT_GE(rs->cooldown_until - sent2, absl::Milliseconds(10) - absl::Milliseconds(1))
      << "shared " << (rs->cooldown_until - sent2) << ", embedded "
      << (re->cooldown_until - sent2);  // fails: shared ~5 ms
}

// An all-or-nothing batch whose last item is refused by a cooling scoped limit (1 min), after an
// item that would create a new scope of a feature with max_scopes 2: nothing is created, in both;
// the two scopes are then granted, a third refused (kResourceExhausted) alike.
TEST_F(SharedOutsideAttackTest, ARefusedBatchCreatesNoScopeBehindACoolingScopedLimit) {
  Policy p = Extended(absl::StrCat(kScopedOnly, R"(
      - name: ms
        limits:
          - {name: per, kind: rolling, period: 1h, capacity: 10, scoped: true}
)"));
  for (FeatureSpec& f : p.credentials[0].features) {
    if (f.name == "ms") f.max_scopes = 2;
  }
  SlowBackoff(p, "so", absl::Minutes(1));
  ReloadAll(p);
  ASSERT_GT(ReportBoth(0, Answer("so", 429, {}, absl::Now())), absl::Now() + absl::Seconds(50));
  const std::vector<AcquireRequest> aon = {Req("ms", 1, "x"), Req("so", 1, "a")};
  std::vector<absl::StatusOr<Decision>> s =
      BatchThrough(*replicas_[1], aon, std::vector<SharedRequestId>(aon.size()), true);
  std::vector<absl::StatusOr<Decision>> e = ledger_->AcquireAll(aon);
  ASSERT_EQ(s.size(), aon.size());
  ASSERT_EQ(e.size(), aon.size());
  for (size_t k = 0; k < aon.size(); ++k) {
    ASSERT_TRUE(s[k].ok() && e[k].ok()) << s[k].status() << " / " << e[k].status();
    EXPECT_FALSE(e[k]->granted) << k;
    EXPECT_FALSE(s[k]->granted) << k;
  }
  ExpectSameUsage();
  for (const char* scope : {"y", "z"}) {
    auto [gs, ge] = Both(0, "ms", 1, scope);
    EXPECT_TRUE(ge.granted) << scope << " " << ge.limited_by;
    EXPECT_TRUE(gs.granted) << scope << " " << gs.limited_by;
  }
  const absl::StatusOr<Decision> ts = AcquireThrough(*replicas_[1], Req("ms", 1, "w"));
  const absl::StatusOr<Decision> te = ledger_->Acquire(Req("ms", 1, "w"));
  EXPECT_EQ(ts.status().code(), te.status().code()) << ts.status() << " / " << te.status();
  EXPECT_EQ(te.status().code(), absl::StatusCode::kResourceExhausted) << te.status();
}

// A waiter whose deadline (300 ms) comes before a scoped limit's cooldown ends (1 min) is
// answered at its deadline, not before, denied with the same limited_by and a retry_at at the
// cooldown's end, in both; it leaves no entry behind (a new scope's request after the cooldown
// is not held back by it: a Reset ends the cooldown and the next call is granted at once).
TEST_F(SharedOutsideAttackTest, AWaiterPastItsDeadlineBehindAScopedCooldownIsDeniedAlike) {
  Policy p = Extended(kScopedOnly);
  SlowBackoff(p, "so", absl::Minutes(1));
  ReloadAll(p);
  const absl::Time before = absl::Now();
  const absl::Time until = ReportBoth(0, Answer("so", 429, {}, absl::Now()));
  const absl::Duration apart = absl::Now() - before + absl::Milliseconds(5);
  ASSERT_GT(until, absl::Now() + absl::Seconds(50));
  Waited sw, ew;
  const AcquireRequest req = Req("so", 1, "w");
  const absl::Time start = absl::Now();
  WaitBoth(1, req, absl::Milliseconds(300), &sw, &ew);
  ASSERT_TRUE(Eventually(
      [&] {
        ledger_->Pump();
        return sw.done.HasBeenNotified() && ew.done.HasBeenNotified();
      },
      absl::Seconds(5)));
  ASSERT_TRUE(sw.d.ok() && ew.d.ok()) << sw.d.status() << " / " << ew.d.status();
  EXPECT_FALSE(sw.d->granted);
  EXPECT_FALSE(ew.d->granted);
  EXPECT_EQ(sw.d->limited_by, ew.d->limited_by);
  EXPECT_GE(sw.at - start, absl::Milliseconds(299));
  EXPECT_GE(ew.at - start, absl::Milliseconds(299));
  EXPECT_LE(absl::AbsDuration(sw.d->retry_at - until), apart)
      << absl::FormatTime(sw.d->retry_at);
  EXPECT_LE(absl::AbsDuration(ew.d->retry_at - until), apart)
      << absl::FormatTime(ew.d->retry_at);
  ASSERT_TRUE(replicas_[0]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  auto [s, e] = Both(0, "so", 1, "v");
  EXPECT_TRUE(e.granted) << e.limited_by;
  EXPECT_TRUE(s.granted) << s.limited_by;
}

}  // namespace
}  // namespace quotad

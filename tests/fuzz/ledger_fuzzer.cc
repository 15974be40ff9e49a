// libFuzzer target: the ledger driven by fuzzed requests, on a small fixed policy and a FakeClock.
// Requests go through the server's validation (service/server/validation.h) as a gRPC call would,
// or straight to the core (which must refuse bad input on its own). After every step, every limit
// of every credential must hold: 0 <= used <= capacity (sliding limits may count more after an
// adoption), 0 <= remaining <= capacity - used.

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/server/validation.h"

namespace {

using quotad::LimitKind;
using quotad::LimitSpec;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "ledger_fuzzer: invariant violated: %s\n", what.c_str());
    std::abort();
  }
}

LimitSpec Limit(const char* name, LimitKind kind, int64_t capacity, absl::Duration period,
                bool scoped = false) {
  LimitSpec l;
  l.name = name;
  l.kind = kind;
  l.capacity = capacity;
  l.period = period;
  l.scoped = scoped;
  return l;
}

// Two credentials with every kind of limit, a scoped feature capped at 4 scopes and a feature
// that draws on another.
quotad::Policy MakePolicy() {
  quotad::FeatureSpec requests{"requests"};
  requests.limits = {Limit("per_minute", LimitKind::kSliding, 4, absl::Minutes(1)),
                     Limit("per_hour", LimitKind::kRolling, 20, absl::Hours(1))};
  LimitSpec daily = Limit("per_day", LimitKind::kCalendar, 50, absl::ZeroDuration());
  daily.unit = quotad::CalendarUnit::kDay;
  requests.limits.push_back(daily);

  quotad::FeatureSpec bucketed{"bucketed"};
  LimitSpec bucket = Limit("bucket", LimitKind::kTokenBucket, 5, absl::Seconds(10));
  bucket.rate = 2;
  LimitSpec sub = Limit("sub", LimitKind::kSliding, 8, absl::Minutes(1));
  sub.sub_buckets = 6;
  sub.guard = absl::Seconds(2);
  bucketed.limits = {bucket, sub, Limit("count", LimitKind::kUnlimited, 0, absl::ZeroDuration())};

  quotad::FeatureSpec slots{"slots"};
  slots.limits = {Limit("concurrent", LimitKind::kConcurrency, 3, absl::ZeroDuration())};
  slots.default_lease_ttl = absl::Seconds(30);
  slots.max_lease_ttl = absl::Minutes(10);

  quotad::FeatureSpec hunts{"hunts"};
  hunts.limits = {Limit("per_scope", LimitKind::kSliding, 3, absl::Minutes(1), /*scoped=*/true),
                  Limit("total", LimitKind::kSliding, 10, absl::Minutes(1))};
  hunts.max_scopes = 4;
  hunts.draws_on = {"requests"};

  quotad::CredentialSpec a{"vt/prod", "virustotal-public", {requests, bucketed, slots, hunts}};
  quotad::CredentialSpec b{"md/prod", "metadefender", {requests, slots}};
  return quotad::Policy{{a, b}};
}

const char* const kCredentials[] = {"vt/prod", "md/prod", "unknown", ""};
const char* const kFeatures[] = {"requests", "bucketed", "slots", "hunts", "nope"};
const char* const kScopes[] = {"", "r1", "r2", "r3", "r4", "r5", "r6"};
const char* const kHeaders[] = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Used",
                                "X-RateLimit-Reset", "X-RateLimit-Reset-In", "Retry-After",
                                "X-RateLimit-Interval", "X-RateLimit-For"};

template <size_t N>
std::string Pick(FuzzedDataProvider& in, const char* const (&names)[N]) {
  if (in.ConsumeIntegralInRange(0, 7) == 0) return in.ConsumeRandomLengthString(300);
  return names[in.ConsumeIntegralInRange<size_t>(0, N - 1)];
}

int64_t Amount(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return in.ConsumeIntegral<int64_t>();
    case 1: return in.ConsumeIntegralInRange<int64_t>(-2, 60);
    default: return in.ConsumeIntegralInRange<int64_t>(0, 6);
  }
}

absl::Duration Ttl(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return absl::Nanoseconds(in.ConsumeIntegral<int64_t>());
    case 1: return absl::Seconds(in.ConsumeIntegralInRange<int64_t>(-5, 3600));
    default: return absl::ZeroDuration();
  }
}

void CheckLimits(const std::vector<quotad::LimitStatus>& limits, const std::string& where) {
  for (const quotad::LimitStatus& l : limits) {
    const std::string what = absl::StrCat(where, " ", l.name, "[", l.scope, "] used=", l.used,
                                          " remaining=", l.remaining, " capacity=", l.capacity);
    Check(l.used >= 0, "used >= 0: " + what);
    Check(l.remaining >= 0, "remaining >= 0: " + what);
    if (l.kind == LimitKind::kUnlimited) continue;
    Check(l.remaining <= std::max<int64_t>(0, l.capacity - l.used),
          "remaining <= capacity - used: " + what);
    // A sliding counter may count more than its capacity: its own units in the guard's tail
    // (which may have left upstream) plus an upstream's count adopted in full (the ledger's
    // "outside units hidden in the guard tail are still adopted"); it grants nothing then.
    if (l.kind == LimitKind::kSliding) continue;
    Check(l.used <= l.capacity, "used <= capacity: " + what);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const quotad::Policy* const policy = new quotad::Policy(MakePolicy());
  FuzzedDataProvider in(data, size);
  quotad::FakeClock clock;
  quotad::LedgerOptions options;
  options.jitter_seed = 1;
  absl::StatusOr<std::unique_ptr<quotad::Ledger>> created =
      quotad::Ledger::Create(*policy, &clock, options);
  Check(created.ok(), "the fixed policy is valid: " + created.status().ToString());
  quotad::Ledger& ledger = **created;
  std::vector<quotad::LeaseId> leases;

  for (int step = 0; step < 64 && in.remaining_bytes() > 0; ++step) {
    switch (in.ConsumeIntegralInRange(0, 9)) {
      case 0:
      case 1:
      case 2: {  // Acquire
        const std::string credential = Pick(in, kCredentials);
        const std::string feature = Pick(in, kFeatures);
        const std::string scope = Pick(in, kScopes);
        const std::string holder = in.ConsumeBool() ? "" : in.ConsumeRandomLengthString(300);
        quotad::AcquireRequest req;
        req.credential = credential;
        req.feature = feature;
        req.scope = scope;
        req.holder = holder;
        req.cost = Amount(in);
        req.lease_ttl = Ttl(in);
        req.want_limits = in.ConsumeBool();
        if (in.ConsumeBool()) {  // as the server would: wire checks first
          if (!quotad::ValidateName("credential", credential).ok() ||
              !quotad::ValidateName("feature", feature).ok() ||
              !quotad::ValidateText("scope", scope, quotad::kMaxNameLength).ok() ||
              !quotad::ValidateText("holder", holder, quotad::kMaxNameLength).ok() ||
              req.cost <= 0) {
            break;
          }
        }
        absl::StatusOr<quotad::Decision> d = ledger.Acquire(req);
        if (std::getenv("LEDGER_FUZZ_TRACE")) {
          std::fprintf(stderr, "Acquire %s %s scope=%s cost=%lld ttl=%s -> %s granted=%d\n",
                       credential.c_str(), feature.c_str(), scope.c_str(),
                       static_cast<long long>(req.cost), absl::FormatDuration(req.lease_ttl).c_str(),
                       d.status().ToString().c_str(), d.ok() && d->granted);
        }
        if (!d.ok()) {
          Check(!d.status().message().empty(), "an error says what was wrong");
          break;
        }
        Check(req.cost > 0, "a decision only for a positive cost");
        CheckLimits(d->limits, "Acquire");
        if (d->granted) {
          Check(d->lease_expiry > clock.Now(), "a lease expires after now");
          leases.push_back(d->lease_id);
        } else {
          Check(!d->limited_by.empty(), "a denial names its limit");
        }
        break;
      }
      case 3: {  // Release
        quotad::LeaseId id{in.ConsumeIntegral<uint64_t>(), in.ConsumeIntegral<uint64_t>()};
        if (!leases.empty() && in.ConsumeIntegralInRange(0, 3) != 0) {
          id = leases[in.ConsumeIntegralInRange<size_t>(0, leases.size() - 1)];
        }
        std::optional<int64_t> used;
        if (in.ConsumeBool()) used = Amount(in);
        absl::StatusOr<quotad::ReleaseResult> r = ledger.Release(id, used);
        if (r.ok()) Check(r->refunded >= 0 && r->freed >= 0, "release returns nothing negative");
        break;
      }
      case 4: {  // Renew
        quotad::LeaseId id{in.ConsumeIntegral<uint64_t>(), in.ConsumeIntegral<uint64_t>()};
        if (!leases.empty() && in.ConsumeIntegralInRange(0, 3) != 0) {
          id = leases[in.ConsumeIntegralInRange<size_t>(0, leases.size() - 1)];
        }
        google::protobuf::Duration wire;
        wire.set_seconds(in.ConsumeIntegralInRange<int64_t>(-10, 400 * 86400));
        absl::StatusOr<absl::Duration> ttl = quotad::ParseDuration("ttl", wire, quotad::kMaxTtl);
        absl::StatusOr<absl::Time> expiry = ledger.Renew(id, ttl.ok() ? *ttl : Ttl(in));
        if (expiry.ok()) Check(*expiry >= clock.Now(), "a renewed lease expires after now");
        break;
      }
      case 5: {  // Report
        const std::string credential = Pick(in, kCredentials);
        const std::string feature = Pick(in, kFeatures);
        quotad::UpstreamAnswer a;
        a.credential = credential;
        a.feature = feature;
        a.http_status = in.ConsumeBool() ? 429 : in.ConsumeIntegralInRange(0, 700);
        const int n = in.ConsumeIntegralInRange(0, 5);
        for (int i = 0; i < n; ++i) {
          std::string value = in.ConsumeBool()
                                  ? std::to_string(in.ConsumeIntegralInRange<int64_t>(-5, 100))
                                  : in.ConsumeRandomLengthString(40);
          a.headers.emplace_back(Pick(in, kHeaders), value);
        }
        const std::string body = in.ConsumeBool() ? "" : in.ConsumeRandomLengthString(200);
        a.body = body;
        if (in.ConsumeBool()) {
          a.observed_at = clock.Now() + absl::Seconds(in.ConsumeIntegralInRange(-7200, 7200));
        }
        absl::StatusOr<quotad::ReportResult> r = ledger.Report(a);
        if (std::getenv("LEDGER_FUZZ_TRACE")) {
          std::fprintf(stderr, "Report %s %s status=%d body=%zu bytes ->%s\n", credential.c_str(),
                       feature.c_str(), a.http_status, body.size(), r.status().ToString().c_str());
          for (const auto& [k, v] : a.headers) std::fprintf(stderr, "  %s: %s\n", k.c_str(), v.c_str());
          if (r.ok()) for (const auto& l : r->adopted) std::fprintf(stderr, "  adopted %s\n", l.c_str());
        }
        (void)r;
        break;
      }
      case 6:  // time passes
        if (std::getenv("LEDGER_FUZZ_TRACE")) std::fprintf(stderr, "Advance\n");
        clock.Advance(in.ConsumeBool()
                          ? absl::Milliseconds(in.ConsumeIntegralInRange<int64_t>(0, 120'000))
                          : absl::Seconds(in.ConsumeIntegralInRange<int64_t>(0, 3 * 86400)));
        break;
      case 7:
        ledger.Sweep();
        break;
      case 8:
        if (in.ConsumeBool()) {
          Check(ledger.Reset(Pick(in, kCredentials)).ok() || true, "");
        } else {
          Check(ledger.Reload(*policy).ok(), "reloading the same policy succeeds");
        }
        break;
      default:
        (void)ledger.Leases("");
        break;
    }
    for (const char* c : {"vt/prod", "md/prod"}) {
      absl::StatusOr<std::vector<quotad::LimitStatus>> usage = ledger.Usage(c);
      Check(usage.ok(), "a configured credential has usage");
      CheckLimits(*usage, absl::StrCat("Usage(", c, ")"));
    }
  }
  return 0;
}

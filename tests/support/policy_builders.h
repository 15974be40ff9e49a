#ifndef QUOTAD_TESTS_SUPPORT_POLICY_BUILDERS_H_
#define QUOTAD_TESTS_SUPPORT_POLICY_BUILDERS_H_

// Short builders for the policies tests hand to the Ledger (service/core/policy.h), so that a test
// reads as its rules:
//
//   Policy p = OneCredential("vt/prod", {Feature("requests", {Sliding("per_minute", 4,
//                                                             absl::Minutes(1))})});
//
// Each returns a plain value with every other field at its default. They do not validate: a test
// of validation builds the bad value it needs. Pure functions; thread-safe.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "service/core/policy.h"

namespace quotad::testing {

// At most `capacity` units in any interval of `period`; sub_buckets 0 keeps an exact log.
inline LimitSpec Sliding(std::string name, int64_t capacity, absl::Duration period,
                         int sub_buckets = 0) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kSliding;
  l.capacity = capacity;
  l.period = period;
  l.sub_buckets = sub_buckets;
  return l;
}

// `capacity` units per calendar `unit`, read in `zone` (an IANA name).
inline LimitSpec Calendar(std::string name, int64_t capacity, CalendarUnit unit,
                          const std::string& zone = "UTC") {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kCalendar;
  l.capacity = capacity;
  l.unit = unit;
  l.zone_name = zone;
  absl::LoadTimeZone(zone, &l.zone);
  return l;
}

// A window of `period` that opens at the first charge after the previous one closed.
inline LimitSpec Rolling(std::string name, int64_t capacity, absl::Duration period) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kRolling;
  l.capacity = capacity;
  l.period = period;
  return l;
}

// A token bucket: `rate` units per `period`, at most `burst` at once.
inline LimitSpec Bucket(std::string name, int64_t rate, absl::Duration period, int64_t burst) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kTokenBucket;
  l.rate = rate;
  l.period = period;
  l.capacity = burst;
  return l;
}

// At most `slots` units held by live leases at once.
inline LimitSpec Concurrency(std::string name, int64_t slots) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kConcurrency;
  l.capacity = slots;
  return l;
}

// Counted (per `unit` if set) and never denies.
inline LimitSpec Unlimited(std::string name, CalendarUnit unit = CalendarUnit::kNone) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kUnlimited;
  l.unit = unit;
  return l;
}

// A feature with its limits, drawing on the unscoped limits of `draws_on` as well.
inline FeatureSpec Feature(std::string name, std::vector<LimitSpec> limits,
                           std::vector<std::string> draws_on = {}) {
  FeatureSpec f;
  f.name = std::move(name);
  f.limits = std::move(limits);
  f.draws_on = std::move(draws_on);
  return f;
}

// A credential; `profile` is informational.
inline CredentialSpec Credential(std::string name, std::string profile,
                                 std::vector<FeatureSpec> features) {
  CredentialSpec c;
  c.name = std::move(name);
  c.profile = std::move(profile);
  c.features = std::move(features);
  return c;
}

// A policy of one credential without a profile.
inline Policy OneCredential(std::string name, std::vector<FeatureSpec> features) {
  Policy p;
  p.credentials.push_back(Credential(std::move(name), "", std::move(features)));
  return p;
}

// The instant y-m-d hh:mm:ss UTC, for setting a FakeClock.
inline absl::Time Utc(int y, int m, int d, int hh = 0, int mm = 0, int ss = 0) {
  return absl::FromCivil(absl::CivilSecond(y, m, d, hh, mm, ss), absl::UTCTimeZone());
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SUPPORT_POLICY_BUILDERS_H_

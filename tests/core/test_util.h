#ifndef QUOTAD_TESTS_CORE_TEST_UTIL_H_
#define QUOTAD_TESTS_CORE_TEST_UTIL_H_

#include <string>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "service/core/policy.h"

namespace quotad::testing {

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

inline LimitSpec Rolling(std::string name, int64_t capacity, absl::Duration period) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kRolling;
  l.capacity = capacity;
  l.period = period;
  return l;
}

inline LimitSpec Bucket(std::string name, int64_t rate, absl::Duration period, int64_t burst) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kTokenBucket;
  l.rate = rate;
  l.period = period;
  l.capacity = burst;
  return l;
}

inline LimitSpec Concurrency(std::string name, int64_t slots) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kConcurrency;
  l.capacity = slots;
  return l;
}

inline LimitSpec Unlimited(std::string name, CalendarUnit unit = CalendarUnit::kNone) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = LimitKind::kUnlimited;
  l.unit = unit;
  return l;
}

inline FeatureSpec Feature(std::string name, std::vector<LimitSpec> limits) {
  FeatureSpec f;
  f.name = std::move(name);
  f.limits = std::move(limits);
  return f;
}

inline Policy OneCredential(std::string name, std::vector<FeatureSpec> features) {
  Policy p;
  CredentialSpec c;
  c.name = std::move(name);
  c.features = std::move(features);
  p.credentials.push_back(std::move(c));
  return p;
}

inline absl::Time Utc(int y, int m, int d, int hh = 0, int mm = 0, int ss = 0) {
  return absl::FromCivil(absl::CivilSecond(y, m, d, hh, mm, ss), absl::UTCTimeZone());
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_CORE_TEST_UTIL_H_

#include "service/server/convert.h"

#include <cstdint>
#include <limits>

namespace quotad {

void TimeToProto(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t s = absl::ToUnixSeconds(t);
  out->set_seconds(s);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(s))));
}

void DurationToProto(absl::Duration d, google::protobuf::Duration* out) {
  constexpr int64_t kMaxSeconds = 315576000000;  // the largest value Duration allows
  if (d >= absl::Seconds(kMaxSeconds)) {
    out->set_seconds(kMaxSeconds);
    out->set_nanos(0);
    return;
  }
  if (d <= -absl::Seconds(kMaxSeconds)) {
    out->set_seconds(-kMaxSeconds);
    out->set_nanos(0);
    return;
  }
  absl::Duration rem;
  const int64_t s = absl::IDivDuration(d, absl::Seconds(1), &rem);
  out->set_seconds(s);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(rem)));
}

v1::LimitKind LimitKindToProto(LimitKind kind) {
  switch (kind) {
    case LimitKind::kCalendar:
      return v1::LIMIT_KIND_CALENDAR;
    case LimitKind::kRolling:
      return v1::LIMIT_KIND_ROLLING;
    case LimitKind::kSliding:
      return v1::LIMIT_KIND_SLIDING;
    case LimitKind::kTokenBucket:
      return v1::LIMIT_KIND_TOKEN_BUCKET;
    case LimitKind::kConcurrency:
      return v1::LIMIT_KIND_CONCURRENCY;
    case LimitKind::kUnlimited:
      return v1::LIMIT_KIND_UNLIMITED;
  }
  return v1::LIMIT_KIND_UNSPECIFIED;
}

v1::CalendarUnit CalendarUnitToProto(CalendarUnit unit) {
  switch (unit) {
    case CalendarUnit::kNone:
      return v1::CALENDAR_UNIT_UNSPECIFIED;
    case CalendarUnit::kMinute:
      return v1::CALENDAR_UNIT_MINUTE;
    case CalendarUnit::kHour:
      return v1::CALENDAR_UNIT_HOUR;
    case CalendarUnit::kDay:
      return v1::CALENDAR_UNIT_DAY;
    case CalendarUnit::kWeek:
      return v1::CALENDAR_UNIT_WEEK;
    case CalendarUnit::kMonth:
      return v1::CALENDAR_UNIT_MONTH;
  }
  return v1::CALENDAR_UNIT_UNSPECIFIED;
}

void LimitStatusToProto(const LimitStatus& in, v1::LimitStatus* out) {
  out->set_name(in.name);
  out->set_scope(in.scope);
  out->set_kind(in.cooldown ? v1::LIMIT_KIND_COOLDOWN : LimitKindToProto(in.kind));
  const bool unlimited = in.cooldown || in.kind == LimitKind::kUnlimited ||
                         in.capacity == std::numeric_limits<int64_t>::max();
  out->set_capacity(unlimited ? 0 : in.capacity);
  out->set_used(in.used);
  out->set_remaining(unlimited ? 0 : in.remaining);
  out->set_outside_estimate(in.outside_estimate);
  if (IsFinite(in.reset)) TimeToProto(in.reset, out->mutable_reset_at());
}

void LeaseToProto(const LeaseInfo& in, v1::Lease* out) {
  out->set_lease_id(in.id.ToString());
  out->set_credential(in.credential);
  out->set_feature(in.feature);
  out->set_scope(in.scope);
  out->set_holder(in.holder);
  out->set_cost(in.cost);
  if (IsFinite(in.granted_at)) TimeToProto(in.granted_at, out->mutable_granted_at());
  if (IsFinite(in.expiry)) TimeToProto(in.expiry, out->mutable_expires_at());
  out->set_holds_slots(in.holds_slots);
}

void CredentialToProto(const CredentialSpec& in, v1::ConfiguredCredential* out) {
  out->set_name(in.name);
  out->set_profile(in.profile);
  for (const FeatureSpec& f : in.features) {
    v1::ConfiguredFeature* pf = out->add_features();
    pf->set_name(f.name);
    for (const LimitSpec& l : f.limits) {
      v1::ConfiguredLimit* pl = pf->add_limits();
      pl->set_name(l.name);
      pl->set_kind(LimitKindToProto(l.kind));
      pl->set_capacity(l.kind == LimitKind::kUnlimited ? 0 : l.capacity);
      if (l.period > absl::ZeroDuration()) DurationToProto(l.period, pl->mutable_period());
      pl->set_rate(l.rate);
      pl->set_calendar_unit(CalendarUnitToProto(l.unit));
      if (l.kind == LimitKind::kCalendar || l.unit != CalendarUnit::kNone) {
        pl->set_time_zone(l.zone_name);
      }
      pl->set_sub_buckets(l.sub_buckets);
      pl->set_scoped(l.scoped);
    }
    for (const std::string& d : f.draws_on) pf->add_draws_on(d);
    DurationToProto(f.default_lease_ttl, pf->mutable_default_lease_ttl());
    DurationToProto(f.max_lease_ttl, pf->mutable_max_lease_ttl());
    pf->set_max_scopes(f.max_scopes);
  }
}

}  // namespace quotad

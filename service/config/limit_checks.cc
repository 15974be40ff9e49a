// One limit of a configuration file: its fields checked against its kind and the bounds of
// service/core/bounds.h, and converted to a LimitSpec.

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/config/checks.h"
#include "service/config/duration.h"
#include "service/core/bounds.h"
#include "service/core/names.h"
#include "service/core/status_macros.h"

namespace quotad::config_internal {
namespace {

std::string KindName(v1::Limit::Kind kind) {
  return absl::AsciiStrToLower(v1::Limit::Kind_Name(kind));
}

absl::StatusOr<LimitKind> ToKind(v1::Limit::Kind kind) {
  switch (kind) {
    case v1::Limit::CALENDAR:
      return LimitKind::kCalendar;
    case v1::Limit::ROLLING:
      return LimitKind::kRolling;
    case v1::Limit::SLIDING:
      return LimitKind::kSliding;
    case v1::Limit::TOKEN_BUCKET:
      return LimitKind::kTokenBucket;
    case v1::Limit::CONCURRENCY:
      return LimitKind::kConcurrency;
    case v1::Limit::UNLIMITED:
      return LimitKind::kUnlimited;
    default:
      return absl::InvalidArgumentError("no kind");
  }
}

CalendarUnit ToUnit(v1::Limit::Unit unit) {
  switch (unit) {
    case v1::Limit::MINUTE:
      return CalendarUnit::kMinute;
    case v1::Limit::HOUR:
      return CalendarUnit::kHour;
    case v1::Limit::DAY:
      return CalendarUnit::kDay;
    case v1::Limit::WEEK:
      return CalendarUnit::kWeek;
    case v1::Limit::MONTH:
      return CalendarUnit::kMonth;
    default:
      return CalendarUnit::kNone;
  }
}

}  // namespace

absl::Status ErrorAt(const Origin& origin, absl::string_view field, const absl::Status& status) {
  return status.ok() ? status : origin.Error(field, status.message());
}

absl::StatusOr<absl::Duration> PositiveDuration(const std::string& text, const Origin& origin,
                                                absl::string_view field) {
  absl::StatusOr<absl::Duration> d = ParseConfigDuration(text);
  if (!d.ok()) return origin.Error(field, d.status().message());
  if (*d <= absl::ZeroDuration()) {
    return origin.Error(field, absl::StrCat("must be longer than zero, got ", QuoteValue(text)));
  }
  return *d;
}

absl::StatusOr<LimitSpec> BuildLimit(const v1::Limit& limit, const Origin& origin) {
  LimitSpec spec;
  spec.name = limit.name();
  QUOTAD_ASSIGN_OR_RETURN(spec.kind, [&]() -> absl::StatusOr<LimitKind> {
    absl::StatusOr<LimitKind> kind = ToKind(limit.kind());
    if (!kind.ok()) {
      return origin.Error("kind", absl::StrCat("limit ", QuoteValue(limit.name()),
                                               " needs a kind: calendar, rolling, sliding, "
                                               "token_bucket, concurrency or unlimited"));
    }
    return kind;
  }());
  const v1::Limit::Kind kind = limit.kind();
  const std::string kind_name = KindName(kind);
  auto not_for_kind = [&](absl::string_view field, absl::string_view value) {
    return origin.Error(field,
                        absl::StrCat("does not apply to a ", kind_name, " limit, got ", value));
  };
  auto required = [&](absl::string_view field) {
    return origin.Error(
        field, absl::StrCat("is required for a ", kind_name, " limit ", QuoteValue(limit.name())));
  };

  // capacity
  if (kind == v1::Limit::UNLIMITED) {
    if (limit.capacity() != 0) return not_for_kind("capacity", absl::StrCat(limit.capacity()));
  } else if (limit.capacity() <= 0) {
    return origin.Error("capacity", absl::StrCat("must be > 0, got ", limit.capacity()));
  }
  spec.capacity = limit.capacity();

  // period
  const bool wants_period =
      kind == v1::Limit::ROLLING || kind == v1::Limit::SLIDING || kind == v1::Limit::TOKEN_BUCKET;
  if (wants_period) {
    if (limit.period().empty()) return required("period");
    QUOTAD_ASSIGN_OR_RETURN(spec.period, PositiveDuration(limit.period(), origin, "period"));
    if (spec.period > kMaxPeriod) {
      return origin.Error("period",
                          absl::StrCat("must be at most ", absl::ToInt64Hours(kMaxPeriod) / 24,
                                       "d, got ", QuoteValue(limit.period())));
    }
  } else if (!limit.period().empty()) {
    return not_for_kind("period", QuoteValue(limit.period()));
  }

  // rate
  if (kind == v1::Limit::TOKEN_BUCKET) {
    if (limit.rate() <= 0) {
      return origin.Error("rate",
                          absl::StrCat("must be > 0 for a token_bucket limit, got ", limit.rate()));
    }
    if (spec.period / limit.rate() < absl::Nanoseconds(1)) {
      return origin.Error("rate", absl::StrCat("rate ", limit.rate(), " per ", limit.period(),
                                               " is more than one unit per nanosecond"));
    }
  } else if (limit.rate() != 0) {
    return not_for_kind("rate", absl::StrCat(limit.rate()));
  }
  spec.rate = limit.rate();

  // unit and zone
  const std::string unit_name = absl::AsciiStrToLower(v1::Limit::Unit_Name(limit.unit()));
  if (kind == v1::Limit::CALENDAR) {
    if (limit.unit() == v1::Limit::UNIT_UNSPECIFIED) {
      return origin.Error("unit",
                          "is required for a calendar limit: minute, hour, day, week or "
                          "month");
    }
  } else if (kind != v1::Limit::UNLIMITED && limit.unit() != v1::Limit::UNIT_UNSPECIFIED) {
    return not_for_kind("unit", unit_name);
  }
  spec.unit = ToUnit(limit.unit());
  if (!limit.zone().empty()) {
    if (spec.unit == CalendarUnit::kNone) {
      return origin.Error("zone", absl::StrCat("needs a calendar unit, got zone ",
                                               QuoteValue(limit.zone()), " without one"));
    }
    if (!absl::LoadTimeZone(limit.zone(), &spec.zone)) {
      return origin.Error("zone", absl::StrCat("unknown time zone ", QuoteValue(limit.zone()),
                                               " (expected an IANA name such as \"UTC\" or "
                                               "\"Europe/Berlin\")"));
    }
    spec.zone_name = limit.zone();
  }

  // sub_buckets
  if (kind == v1::Limit::SLIDING) {
    if (limit.sub_buckets() < 0 || limit.sub_buckets() > kMaxSubBuckets) {
      return origin.Error("sub_buckets", absl::StrCat("must be in [0, ", kMaxSubBuckets, "], got ",
                                                      limit.sub_buckets()));
    }
    if (limit.sub_buckets() == 0 && limit.capacity() > kMaxExactSlidingCapacity) {
      return origin.Error(
          "sub_buckets",
          absl::StrCat("an exact sliding log keeps one timestamp per unit; capacity ",
                       limit.capacity(), " is above ", kMaxExactSlidingCapacity,
                       ": set sub_buckets (e.g. 3600 for 1 s buckets of an hour)"));
    }
    if (limit.sub_buckets() > 0 && spec.period / limit.sub_buckets() < kMinSubBucketWidth) {
      return origin.Error("sub_buckets",
                          absl::StrCat(limit.sub_buckets(), " sub-buckets of period ",
                                       limit.period(), " are narrower than ",
                                       absl::FormatDuration(kMinSubBucketWidth)));
    }
  } else if (limit.sub_buckets() != 0) {
    return not_for_kind("sub_buckets", absl::StrCat(limit.sub_buckets()));
  }
  spec.sub_buckets = limit.sub_buckets();
  spec.scoped = limit.scoped();

  // guard
  if (!limit.guard().empty()) {
    if (kind != v1::Limit::SLIDING && kind != v1::Limit::ROLLING && kind != v1::Limit::CALENDAR) {
      return not_for_kind("guard", QuoteValue(limit.guard()));
    }
    QUOTAD_ASSIGN_OR_RETURN(spec.guard, PositiveDuration(limit.guard(), origin, "guard"));
    if (spec.guard > kMaxGuard) {
      return origin.Error("guard", absl::StrCat("must be at most ", absl::FormatDuration(kMaxGuard),
                                                ", got ", QuoteValue(limit.guard())));
    }
  }
  return spec;
}

}  // namespace quotad::config_internal

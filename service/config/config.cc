#include "service/config/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "service/config/builtin_profiles.h"
#include "service/config/duration.h"
#include "service/config/yaml_proto.h"
#include "service/core/status_macros.h"

namespace quotad {
namespace {

// An exact sliding log stores one timestamp per unit (per scope); above this, use sub_buckets.
constexpr int64_t kMaxExactSlidingCapacity = 100000;
// Sub-buckets narrower than this are refused: they buy nothing and cost memory.
constexpr absl::Duration kMinSubBucketWidth = absl::Milliseconds(1);
constexpr int32_t kMaxSubBuckets = 100000;
// The longest window or refill period (the ledger refuses longer ones).
constexpr absl::Duration kMaxPeriod = absl::Hours(24 * 366);

constexpr absl::string_view kProfileNameChars = "_.-";
constexpr absl::string_view kCredentialNameChars = "_./:-";
constexpr absl::string_view kFeatureNameChars = "_-";  // no '.': limits print as feature.limit

std::string Quote(absl::string_view text) { return absl::StrCat("\"", text, "\""); }

// A message of some parsed file and its field path there.
struct Origin {
  const SourceMap* map = nullptr;
  std::string path;

  std::string Field(absl::string_view field) const {
    return path.empty() ? std::string(field) : absl::StrCat(path, ".", field);
  }
  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return map->Error(Field(field), message);
  }
  absl::Status Error(absl::string_view message) const { return map->Error(path, message); }
};

absl::Status CheckName(absl::string_view name, absl::string_view extra_chars, const Origin& origin,
                       absl::string_view what) {
  if (name.empty()) return origin.Error("name", absl::StrCat(what, " name is required"));
  if (name.size() > kMaxNameLength) {
    return origin.Error("name", absl::StrCat(what, " name ", Quote(name), " is longer than ",
                                             kMaxNameLength, " characters"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && extra_chars.find(c) == absl::string_view::npos) {
      return origin.Error(
          "name", absl::StrCat(what, " name ", Quote(name), " may hold only letters, digits and \"",
                               extra_chars, "\""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> PositiveDuration(const std::string& text, const Origin& origin,
                                                absl::string_view field) {
  absl::StatusOr<absl::Duration> d = ParseConfigDuration(text);
  if (!d.ok()) return origin.Error(field, d.status().message());
  if (*d <= absl::ZeroDuration()) {
    return origin.Error(field, absl::StrCat("must be longer than zero, got ", Quote(text)));
  }
  return *d;
}

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

// Checks one limit (as written, or after a credential's override) and converts it. Errors point
// at `origin`'s fields; the Limit and Override messages share the field names.
absl::StatusOr<LimitSpec> BuildLimit(const v1::Limit& limit, const Origin& origin) {
  LimitSpec spec;
  spec.name = limit.name();
  QUOTAD_ASSIGN_OR_RETURN(spec.kind, [&]() -> absl::StatusOr<LimitKind> {
    absl::StatusOr<LimitKind> kind = ToKind(limit.kind());
    if (!kind.ok()) {
      return origin.Error("kind", absl::StrCat("limit ", Quote(limit.name()),
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
        field, absl::StrCat("is required for a ", kind_name, " limit ", Quote(limit.name())));
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
                          absl::StrCat("must be at most 366d, got ", Quote(limit.period())));
    }
  } else if (!limit.period().empty()) {
    return not_for_kind("period", Quote(limit.period()));
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
                                               Quote(limit.zone()), " without one"));
    }
    if (!absl::LoadTimeZone(limit.zone(), &spec.zone)) {
      return origin.Error("zone", absl::StrCat("unknown time zone ", Quote(limit.zone()),
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
                                       limit.period(), " are narrower than 1ms"));
    }
  } else if (limit.sub_buckets() != 0) {
    return not_for_kind("sub_buckets", absl::StrCat(limit.sub_buckets()));
  }
  spec.sub_buckets = limit.sub_buckets();
  spec.scoped = limit.scoped();

  // guard
  if (!limit.guard().empty()) {
    if (kind != v1::Limit::SLIDING && kind != v1::Limit::ROLLING && kind != v1::Limit::CALENDAR) {
      return not_for_kind("guard", Quote(limit.guard()));
    }
    QUOTAD_ASSIGN_OR_RETURN(spec.guard, PositiveDuration(limit.guard(), origin, "guard"));
    if (spec.guard > absl::Hours(1)) {
      return origin.Error("guard", absl::StrCat("must be at most 1h, got ", Quote(limit.guard())));
    }
  }
  return spec;
}

// A feature as a credential will have it: the profile's (or credential's) definition with the
// credential's overrides applied, remembering where each part was written.
struct EffectiveLimit {
  v1::Limit proto;
  Origin origin;
};
struct EffectiveFeature {
  v1::Feature proto;    // limits are in `limits`
  Origin origin;        // where the feature was defined
  Origin lease_origin;  // where the lease settings were last set (definition or override)
  std::vector<EffectiveLimit> limits;
};

EffectiveFeature MakeEffective(const v1::Feature& feature, const Origin& origin) {
  EffectiveFeature f;
  f.proto = feature;
  f.proto.clear_limits();
  f.origin = origin;
  f.lease_origin = origin;
  for (int i = 0; i < feature.limits_size(); ++i) {
    f.limits.push_back(
        {feature.limits(i), {origin.map, absl::StrCat(origin.path, ".limits[", i, "]")}});
  }
  return f;
}

// Checks a feature's own fields and its limits; draws_on targets are checked by the caller.
absl::StatusOr<FeatureSpec> BuildFeature(const EffectiveFeature& f) {
  FeatureSpec spec;
  const v1::Feature& p = f.proto;
  QUOTAD_RETURN_IF_ERROR(CheckName(p.name(), kFeatureNameChars, f.origin, "feature"));
  spec.name = p.name();
  if (f.limits.empty() && p.draws_on().empty()) {
    return f.origin.Error("limits", absl::StrCat("feature ", Quote(p.name()),
                                                 " needs at least one limit or draws_on entry"));
  }
  absl::flat_hash_set<std::string> limit_names;
  for (const EffectiveLimit& l : f.limits) {
    QUOTAD_RETURN_IF_ERROR(CheckName(l.proto.name(), kFeatureNameChars, l.origin, "limit"));
    if (!limit_names.insert(l.proto.name()).second) {
      return l.origin.Error("name", absl::StrCat("limit ", Quote(l.proto.name()),
                                                 " appears twice in feature ", Quote(p.name())));
    }
    QUOTAD_ASSIGN_OR_RETURN(LimitSpec limit, BuildLimit(l.proto, l.origin));
    spec.limits.push_back(std::move(limit));
  }
  absl::flat_hash_set<std::string> draws;
  for (int i = 0; i < p.draws_on_size(); ++i) {
    const std::string field = absl::StrCat("draws_on[", i, "]");
    if (p.draws_on(i) == p.name()) {
      return f.origin.Error(field,
                            absl::StrCat("feature ", Quote(p.name()), " cannot draw on itself"));
    }
    if (!draws.insert(p.draws_on(i)).second) {
      return f.origin.Error(field, absl::StrCat(Quote(p.draws_on(i)), " is listed twice"));
    }
    spec.draws_on.push_back(p.draws_on(i));
  }
  const Origin& lo = f.lease_origin;
  if (!p.default_lease_ttl().empty()) {
    QUOTAD_ASSIGN_OR_RETURN(spec.default_lease_ttl,
                            PositiveDuration(p.default_lease_ttl(), lo, "default_lease_ttl"));
  }
  if (!p.max_lease_ttl().empty()) {
    QUOTAD_ASSIGN_OR_RETURN(spec.max_lease_ttl,
                            PositiveDuration(p.max_lease_ttl(), lo, "max_lease_ttl"));
  }
  if (spec.default_lease_ttl > spec.max_lease_ttl) {
    return lo.Error("max_lease_ttl",
                    absl::StrCat("max_lease_ttl ", absl::FormatDuration(spec.max_lease_ttl),
                                 " is shorter than default_lease_ttl ",
                                 absl::FormatDuration(spec.default_lease_ttl)));
  }
  if (p.has_max_scopes()) {
    if (p.max_scopes() < 1) {
      return lo.Error("max_scopes", absl::StrCat("must be >= 1, got ", p.max_scopes()));
    }
    spec.max_scopes = p.max_scopes();
  }
  return spec;
}

// Builds and cross-checks the features of one credential or profile.
absl::StatusOr<std::vector<FeatureSpec>> BuildFeatures(const std::vector<EffectiveFeature>& fs) {
  std::vector<FeatureSpec> specs;
  absl::flat_hash_set<std::string> names;
  for (const EffectiveFeature& f : fs) {
    QUOTAD_ASSIGN_OR_RETURN(FeatureSpec spec, BuildFeature(f));
    if (!names.insert(spec.name).second) {
      return f.origin.Error("name",
                            absl::StrCat("feature ", Quote(spec.name), " is defined twice"));
    }
    specs.push_back(std::move(spec));
  }
  for (const EffectiveFeature& f : fs) {
    for (int i = 0; i < f.proto.draws_on_size(); ++i) {
      if (!names.contains(f.proto.draws_on(i))) {
        std::vector<std::string> known(names.begin(), names.end());
        std::sort(known.begin(), known.end());
        return f.origin.Error(
            absl::StrCat("draws_on[", i, "]"),
            absl::StrCat("feature ", Quote(f.proto.name()), " draws on ",
                         Quote(f.proto.draws_on(i)),
                         ", which is not a feature here; known: ", absl::StrJoin(known, ", ")));
      }
    }
  }
  return specs;
}

// The profile's throttle facts as the ledger takes them; CheckThrottle has validated them.
ThrottleSpec ToThrottle(const v1::Profile& profile) {
  ThrottleSpec t;
  if (!profile.has_throttle()) return t;
  if (profile.throttle().status_codes_size() > 0) {
    t.status_codes.assign(profile.throttle().status_codes().begin(),
                          profile.throttle().status_codes().end());
  }
  if (!profile.throttle().has_backoff()) return t;
  const v1::Backoff& b = profile.throttle().backoff();
  if (auto d = ParseConfigDuration(b.initial()); d.ok()) t.initial_backoff = *d;
  t.max_backoff = absl::InfiniteDuration();
  if (auto d = ParseConfigDuration(b.max()); !b.max().empty() && d.ok()) t.max_backoff = *d;
  t.multiplier = b.multiplier() == 0 ? 2.0 : b.multiplier();
  t.jitter_min = b.jitter_min();
  t.jitter_max = b.jitter_max();
  return t;
}

absl::Status CheckThrottle(const v1::Profile& profile, const Origin& origin) {
  if (!profile.has_throttle()) return absl::OkStatus();
  const Origin t{origin.map, origin.Field("throttle")};
  for (int i = 0; i < profile.throttle().status_codes_size(); ++i) {
    const int code = profile.throttle().status_codes(i);
    if (code < 100 || code > 599) {
      return t.Error(absl::StrCat("status_codes[", i, "]"),
                     absl::StrCat("not an HTTP status code: ", code));
    }
  }
  if (!profile.throttle().has_backoff()) return absl::OkStatus();
  const v1::Backoff& b = profile.throttle().backoff();
  const Origin bo{origin.map, t.Field("backoff")};
  if (b.initial().empty()) return bo.Error("initial", "is required in a backoff");
  QUOTAD_ASSIGN_OR_RETURN(absl::Duration initial, PositiveDuration(b.initial(), bo, "initial"));
  if (!b.max().empty()) {
    QUOTAD_ASSIGN_OR_RETURN(absl::Duration max, PositiveDuration(b.max(), bo, "max"));
    if (max < initial) {
      return bo.Error("max", absl::StrCat("max ", Quote(b.max()), " is shorter than initial ",
                                          Quote(b.initial())));
    }
  }
  if (b.multiplier() != 0 && b.multiplier() < 1) {
    return bo.Error("multiplier", absl::StrCat("must be >= 1, got ", b.multiplier()));
  }
  if (b.jitter_min() < 0 || b.jitter_min() > b.jitter_max() || b.jitter_max() > 1) {
    return bo.Error("jitter_min", absl::StrCat("need 0 <= jitter_min <= jitter_max <= 1, got ",
                                               b.jitter_min(), " and ", b.jitter_max()));
  }
  return absl::OkStatus();
}

absl::Status CheckProfile(const v1::Profile& profile, const Origin& origin) {
  QUOTAD_RETURN_IF_ERROR(CheckName(profile.name(), kProfileNameChars, origin, "profile"));
  if (profile.features().empty()) {
    return origin.Error(
        "features", absl::StrCat("profile ", Quote(profile.name()), " needs at least one feature"));
  }
  std::vector<EffectiveFeature> fs;
  for (int i = 0; i < profile.features_size(); ++i) {
    fs.push_back(MakeEffective(profile.features(i),
                               {origin.map, origin.Field(absl::StrCat("features[", i, "]"))}));
  }
  QUOTAD_RETURN_IF_ERROR(BuildFeatures(fs).status());
  for (const auto& [key, value] : profile.facts()) {
    if (value < 0) {
      return origin.Error(absl::StrCat("facts.", key), absl::StrCat("must be >= 0, got ", value));
    }
  }
  return CheckThrottle(profile, origin);
}

// A profile and where it was written.
struct ProfileEntry {
  const v1::Profile* profile;
  Origin origin;
};

// The built-in profiles, parsed and checked once.
struct Builtins {
  std::vector<std::unique_ptr<SourceMap>> maps;
  std::vector<v1::Config> files;
  std::vector<ProfileEntry> entries;
};

absl::StatusOr<std::unique_ptr<Builtins>> ParseBuiltins() {
  auto b = std::make_unique<Builtins>();
  b->files.resize(config_internal::kBuiltinProfileFileCount);
  for (size_t i = 0; i < config_internal::kBuiltinProfileFileCount; ++i) {
    const config_internal::EmbeddedFile& file = config_internal::kBuiltinProfileFiles[i];
    b->maps.push_back(std::make_unique<SourceMap>(absl::StrCat("<builtin>/", file.name)));
    const SourceMap* map = b->maps.back().get();
    QUOTAD_RETURN_IF_ERROR(ReadYamlIntoMessage(file.text, &b->files[i], b->maps.back().get()));
    if (!b->files[i].credentials().empty()) {
      return map->Error("credentials", "a built-in profile file may not define credentials");
    }
  }
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < b->files.size(); ++i) {
    for (int j = 0; j < b->files[i].profiles_size(); ++j) {
      const v1::Profile& p = b->files[i].profiles(j);
      Origin origin{b->maps[i].get(), absl::StrCat("profiles[", j, "]")};
      QUOTAD_RETURN_IF_ERROR(CheckProfile(p, origin));
      if (!names.insert(p.name()).second) {
        return origin.Error(
            "name", absl::StrCat("built-in profile ", Quote(p.name()), " is defined twice"));
      }
      b->entries.push_back({&p, std::move(origin)});
    }
  }
  return b;
}

const absl::StatusOr<std::unique_ptr<Builtins>>& GetBuiltins() {
  static const auto* const builtins =
      new absl::StatusOr<std::unique_ptr<Builtins>>(ParseBuiltins());
  return *builtins;
}

std::vector<std::string> ProfileNames(
    const absl::flat_hash_map<std::string, ProfileEntry>& profiles) {
  std::vector<std::string> names;
  for (const auto& [name, entry] : profiles) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

// Applies one override to `features`. `o` is the override's origin.
absl::Status ApplyOverride(const v1::Override& ov, const Origin& o, absl::string_view profile,
                           std::vector<EffectiveFeature>& features,
                           absl::flat_hash_set<std::string>& seen) {
  if (ov.feature().empty()) return o.Error("feature", "is required in an override");
  EffectiveFeature* feature = nullptr;
  std::vector<std::string> feature_names;
  for (EffectiveFeature& f : features) {
    feature_names.push_back(f.proto.name());
    if (f.proto.name() == ov.feature()) feature = &f;
  }
  if (feature == nullptr) {
    return o.Error("feature",
                   absl::StrCat("no feature ", Quote(ov.feature()), " in profile ", Quote(profile),
                                " or the credential; known: ", absl::StrJoin(feature_names, ", ")));
  }
  if (!seen.insert(absl::StrCat(ov.feature(), ".", ov.limit())).second) {
    return o.Error(ov.limit().empty() ? "feature" : "limit",
                   absl::StrCat("a second override of ", Quote(ov.feature()),
                                ov.limit().empty() ? "" : absl::StrCat(".", ov.limit())));
  }
  // Feature fields.
  if (ov.has_default_lease_ttl() || ov.has_max_lease_ttl() || ov.has_max_scopes()) {
    if (ov.has_default_lease_ttl()) feature->proto.set_default_lease_ttl(ov.default_lease_ttl());
    if (ov.has_max_lease_ttl()) feature->proto.set_max_lease_ttl(ov.max_lease_ttl());
    if (ov.has_max_scopes()) feature->proto.set_max_scopes(ov.max_scopes());
    feature->lease_origin = o;
  }
  const bool sets_limit_field = ov.has_capacity() || ov.has_rate() || ov.has_period() ||
                                ov.has_kind() || ov.has_unit() || ov.has_zone() ||
                                ov.has_sub_buckets() || ov.has_scoped() || ov.has_guard();
  if (ov.limit().empty()) {
    if (sets_limit_field) {
      return o.Error("limit", absl::StrCat("the override of feature ", Quote(ov.feature()),
                                           " sets limit fields but names no limit"));
    }
    return absl::OkStatus();
  }
  EffectiveLimit* limit = nullptr;
  std::vector<std::string> limit_names;
  for (EffectiveLimit& l : feature->limits) {
    limit_names.push_back(l.proto.name());
    if (l.proto.name() == ov.limit()) limit = &l;
  }
  if (limit == nullptr) {
    return o.Error("limit", absl::StrCat("no limit ", Quote(ov.limit()), " in feature ",
                                         Quote(ov.feature()), " of profile ", Quote(profile),
                                         "; known: ", absl::StrJoin(limit_names, ", ")));
  }
  v1::Limit& l = limit->proto;
  // A kind change resets the fields the new kind does not use, unless the override sets them.
  if (ov.has_kind() && ov.kind() != l.kind()) {
    const std::string name = l.name();
    const bool scoped = l.scoped();
    l.Clear();
    l.set_name(name);
    l.set_scoped(scoped);
    l.set_kind(ov.kind());
  }
  if (ov.has_capacity()) l.set_capacity(ov.capacity());
  if (ov.has_rate()) l.set_rate(ov.rate());
  if (ov.has_period()) l.set_period(ov.period());
  if (ov.has_unit()) l.set_unit(ov.unit());
  if (ov.has_zone()) l.set_zone(ov.zone());
  if (ov.has_sub_buckets()) l.set_sub_buckets(ov.sub_buckets());
  if (ov.has_scoped()) l.set_scoped(ov.scoped());
  if (ov.has_guard()) l.set_guard(ov.guard());
  limit->origin = o;
  return absl::OkStatus();
}

constexpr absl::string_view kIdentityChars = "_.@-";
constexpr absl::string_view kAccessMethods[] = {"Acquire", "Release", "Renew", "Report"};

bool IsHexDigest(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(c)) return false;
  }
  return true;
}

// The `auth` section: tokens name identities, rules and admins refer to them, rules refer to
// configured credentials.
absl::Status CheckAuth(const v1::Auth& auth, const absl::flat_hash_set<std::string>& credentials,
                       const SourceMap& map) {
  const Origin origin{&map, "auth"};
  if (auth.tokens().empty()) {
    return origin.Error("tokens",
                        "an auth section needs at least one token (remove the section to turn "
                        "authentication off)");
  }
  absl::flat_hash_set<std::string> identities;
  absl::flat_hash_map<std::string, std::string> digests;  // lowercase digest -> field path
  for (int i = 0; i < auth.tokens_size(); ++i) {
    const v1::Token& t = auth.tokens(i);
    const Origin to{&map, origin.Field(absl::StrCat("tokens[", i, "]"))};
    bool valid_identity = !t.identity().empty() && t.identity().size() <= kMaxNameLength;
    for (char c : t.identity()) {
      valid_identity = valid_identity && (absl::ascii_isalnum(c) ||
                                          kIdentityChars.find(c) != absl::string_view::npos);
    }
    if (!valid_identity) {
      // Not echoed: a token pasted here by mistake must not reach a log.
      return to.Error("identity",
                      absl::StrCat("an identity is 1 to ", kMaxNameLength,
                                   " letters, digits and \"", kIdentityChars, "\", got ",
                                   t.identity().size(), " characters that are not"));
    }
    if (!IsHexDigest(t.sha256())) {
      // Never echoed: what is here instead of a digest is most likely the token itself.
      return to.Error("sha256",
                      absl::StrCat("must be the 64 hex digits of a SHA-256 digest (printf %s TOKEN "
                                   "| sha256sum), got ",
                                   t.sha256().size(), " characters that are not (the value is "
                                   "not shown: it may be the token itself)"));
    }
    auto [it, inserted] = digests.emplace(absl::AsciiStrToLower(t.sha256()), to.Field("sha256"));
    if (!inserted) {
      return to.Error("sha256",
                      absl::StrCat("the same token is already listed at ", map.Locate(it->second)));
    }
    identities.insert(t.identity());
  }
  for (int i = 0; i < auth.rules_size(); ++i) {
    const v1::AccessRule& r = auth.rules(i);
    const Origin ro{&map, origin.Field(absl::StrCat("rules[", i, "]"))};
    if (!identities.contains(r.identity())) {
      return ro.Error("identity", absl::StrCat("identity ", Quote(r.identity()),
                                               " has no token in auth.tokens"));
    }
    if (r.credentials().empty()) return ro.Error("credentials", "a rule needs at least one");
    for (int j = 0; j < r.credentials_size(); ++j) {
      const std::string& c = r.credentials(j);
      const std::string field = absl::StrCat("credentials[", j, "]");
      if (c == "*") continue;
      if (absl::EndsWith(c, "/*")) {
        const absl::string_view prefix = absl::string_view(c).substr(0, c.size() - 2);
        bool ok = !prefix.empty();
        for (char ch : prefix) {
          ok = ok && (absl::ascii_isalnum(ch) || kCredentialNameChars.find(ch) != absl::string_view::npos);
        }
        if (!ok) {
          return ro.Error(field, absl::StrCat("bad credential pattern ", Quote(c),
                                              "; use a credential name, \"prefix/*\" or \"*\""));
        }
        continue;
      }
      if (!credentials.contains(c)) {
        return ro.Error(field, absl::StrCat("unknown credential ", Quote(c),
                                            " (use \"prefix/*\" for a family of credentials)"));
      }
    }
    if (r.methods().empty()) return ro.Error("methods", "a rule needs at least one");
    for (int j = 0; j < r.methods_size(); ++j) {
      const std::string& m = r.methods(j);
      bool known = m == "*";
      for (absl::string_view k : kAccessMethods) known = known || m == k;
      if (!known) {
        return ro.Error(absl::StrCat("methods[", j, "]"),
                        absl::StrCat("unknown method ", Quote(m),
                                     "; known: Acquire, Release, Renew, Report, *"));
      }
    }
  }
  for (int i = 0; i < auth.admins_size(); ++i) {
    if (!identities.contains(auth.admins(i))) {
      return origin.Error(absl::StrCat("admins[", i, "]"),
                          absl::StrCat("identity ", Quote(auth.admins(i)),
                                       " has no token in auth.tokens"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedConfig> LoadParsed(v1::Config config, const SourceMap& map) {
  const absl::StatusOr<std::unique_ptr<Builtins>>& builtins = GetBuiltins();
  if (!builtins.ok()) {
    return absl::InternalError(
        absl::StrCat("the built-in profiles do not load: ", builtins.status().message()));
  }
  absl::flat_hash_map<std::string, ProfileEntry> profiles;
  for (const ProfileEntry& e : (*builtins)->entries) profiles.emplace(e.profile->name(), e);
  for (int i = 0; i < config.profiles_size(); ++i) {
    const v1::Profile& p = config.profiles(i);
    Origin origin{&map, absl::StrCat("profiles[", i, "]")};
    QUOTAD_RETURN_IF_ERROR(CheckProfile(p, origin));
    auto it = profiles.find(p.name());
    if (it != profiles.end()) {
      return origin.Error(
          "name", absl::StrCat("profile ", Quote(p.name()), " is already defined",
                               it->second.origin.map == &map
                                   ? absl::StrCat(" at ", map.Locate(it->second.origin.path))
                                   : " as a built-in profile; choose another name"));
    }
    profiles.emplace(p.name(), ProfileEntry{&p, std::move(origin)});
  }

  if (config.credentials().empty()) {
    return map.Error("credentials", "the configuration defines no credentials");
  }
  LoadedConfig loaded;
  absl::flat_hash_map<std::string, std::string> credential_paths;
  for (int i = 0; i < config.credentials_size(); ++i) {
    const v1::Credential& c = config.credentials(i);
    const Origin origin{&map, absl::StrCat("credentials[", i, "]")};
    QUOTAD_RETURN_IF_ERROR(CheckName(c.name(), kCredentialNameChars, origin, "credential"));
    auto [it, inserted] = credential_paths.emplace(c.name(), origin.Field("name"));
    if (!inserted) {
      return origin.Error("name", absl::StrCat("credential ", Quote(c.name()),
                                               " is already defined at ", map.Locate(it->second)));
    }
    std::vector<EffectiveFeature> features;
    if (c.profile().empty()) {
      if (c.features().empty()) {
        return origin.Error("profile", absl::StrCat("credential ", Quote(c.name()),
                                                    " needs a profile or its own features"));
      }
    } else {
      auto p = profiles.find(c.profile());
      if (p == profiles.end()) {
        return origin.Error("profile",
                            absl::StrCat("unknown profile ", Quote(c.profile()),
                                         "; known: ", absl::StrJoin(ProfileNames(profiles), ", ")));
      }
      const ProfileEntry& entry = p->second;
      for (int j = 0; j < entry.profile->features_size(); ++j) {
        features.push_back(MakeEffective(
            entry.profile->features(j),
            {entry.origin.map, entry.origin.Field(absl::StrCat("features[", j, "]"))}));
      }
    }
    const size_t from_profile = features.size();
    for (int j = 0; j < c.features_size(); ++j) {
      const Origin fo{&map, origin.Field(absl::StrCat("features[", j, "]"))};
      for (size_t k = 0; k < from_profile; ++k) {
        if (features[k].proto.name() == c.features(j).name()) {
          return fo.Error("name", absl::StrCat("feature ", Quote(c.features(j).name()),
                                               " is already in profile ", Quote(c.profile()),
                                               "; change it with an override"));
        }
      }
      features.push_back(MakeEffective(c.features(j), fo));
    }
    absl::flat_hash_set<std::string> seen;
    for (int j = 0; j < c.overrides_size(); ++j) {
      QUOTAD_RETURN_IF_ERROR(ApplyOverride(c.overrides(j),
                                           {&map, origin.Field(absl::StrCat("overrides[", j, "]"))},
                                           c.profile(), features, seen));
    }
    CredentialSpec spec;
    spec.name = c.name();
    spec.profile = c.profile();
    QUOTAD_ASSIGN_OR_RETURN(spec.features, BuildFeatures(features));
    if (!c.profile().empty()) {
      const ThrottleSpec throttle = ToThrottle(*profiles.find(c.profile())->second.profile);
      for (FeatureSpec& f : spec.features) f.throttle = throttle;
    }
    loaded.policy.credentials.push_back(std::move(spec));
  }

  if (config.has_auth()) {
    absl::flat_hash_set<std::string> names;
    for (const v1::Credential& c : config.credentials()) names.insert(c.name());
    QUOTAD_RETURN_IF_ERROR(CheckAuth(config.auth(), names, map));
  }

  absl::Status valid = ValidatePolicy(loaded.policy);
  if (!valid.ok()) {
    return absl::Status(valid.code(), absl::StrCat(map.source(), ": ", valid.message()));
  }
  for (const ProfileEntry& e : (*builtins)->entries) loaded.profiles.push_back(*e.profile);
  for (const v1::Profile& p : config.profiles()) loaded.profiles.push_back(p);
  loaded.config = std::move(config);
  return loaded;
}

}  // namespace

absl::StatusOr<LoadedConfig> LoadConfigFromString(absl::string_view yaml, absl::string_view source,
                                                  const ConfigLimits& limits) {
  SourceMap map{std::string(source)};
  if (static_cast<int64_t>(yaml.size()) > limits.max_bytes) {
    return map.Error("", absl::StrCat("the file is ", yaml.size(), " bytes; the limit is ",
                                      "--max_config_bytes=", limits.max_bytes));
  }
  v1::Config config;
  QUOTAD_RETURN_IF_ERROR(ReadYamlIntoMessage(yaml, &config, &map, limits.yaml));
  return LoadParsed(std::move(config), map);
}

absl::StatusOr<LoadedConfig> LoadConfigFile(const std::string& path, const ConfigLimits& limits) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. The checks below
  // are made on the descriptor, so the file cannot be swapped between check and read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return absl::NotFoundError(absl::StrCat("config file ", Quote(path), " does not exist"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open config file ", Quote(path), ": ", std::strerror(err)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot stat config file ", Quote(path), ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config file ", Quote(path), " is not a regular file (",
        S_ISFIFO(st.st_mode)  ? "a FIFO"
        : S_ISDIR(st.st_mode) ? "a directory"
        : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
        : S_ISSOCK(st.st_mode)                       ? "a socket"
                                                     : "not a plain file",
        ")"));
  }
  if (st.st_size > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", Quote(path), " is ", st.st_size,
                                                   " bytes; the limit is --max_config_bytes=",
                                                   limits.max_bytes));
  }
  // A regular file never blocks; read at most one byte past the limit (it may grow meanwhile).
  std::string text;
  text.resize(static_cast<size_t>(std::min<int64_t>(st.st_size, limits.max_bytes)) + 1);
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read config file ", Quote(path), ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
    if (got == text.size() && static_cast<int64_t>(got) <= limits.max_bytes) {
      text.resize(std::min<size_t>(text.size() * 2, static_cast<size_t>(limits.max_bytes) + 1));
    }
  }
  text.resize(got);
  return LoadConfigFromString(text, path, limits);
}

absl::StatusOr<Policy> LoadPolicyFromString(absl::string_view yaml, absl::string_view source) {
  QUOTAD_ASSIGN_OR_RETURN(LoadedConfig loaded, LoadConfigFromString(yaml, source));
  return std::move(loaded.policy);
}

absl::StatusOr<Policy> LoadPolicyFile(const std::string& path) {
  QUOTAD_ASSIGN_OR_RETURN(LoadedConfig loaded, LoadConfigFile(path));
  return std::move(loaded.policy);
}

std::vector<v1::Profile> BuiltinProfiles() {
  std::vector<v1::Profile> profiles;
  const auto& builtins = GetBuiltins();
  if (!builtins.ok()) return profiles;
  for (const ProfileEntry& e : (*builtins)->entries) profiles.push_back(*e.profile);
  return profiles;
}

std::vector<std::string> BuiltinProfileNames() {
  std::vector<std::string> names;
  const auto& builtins = GetBuiltins();
  if (!builtins.ok()) return names;
  for (const ProfileEntry& e : (*builtins)->entries) names.push_back(e.profile->name());
  return names;
}

absl::StatusOr<v1::Profile> FindBuiltinProfile(absl::string_view name) {
  const auto& builtins = GetBuiltins();
  if (!builtins.ok()) return builtins.status();
  for (const ProfileEntry& e : (*builtins)->entries) {
    if (e.profile->name() == name) return *e.profile;
  }
  return absl::NotFoundError(absl::StrCat("no built-in profile ", Quote(name),
                                          "; known: ", absl::StrJoin(BuiltinProfileNames(), ", ")));
}

}  // namespace quotad

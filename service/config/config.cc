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
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "service/config/builtin_profiles.h"
#include "service/config/checks.h"
#include "service/config/duration.h"
#include "service/config/yaml_proto.h"
#include "service/core/names.h"
#include "service/core/status_macros.h"

namespace quotad {
namespace {

using config_internal::BuildLimit;
using config_internal::CheckAuth;
using config_internal::ErrorAt;
using config_internal::Origin;
using config_internal::PositiveDuration;

// A config file's path in an error: all of it (QuoteValue shows 64 bytes of other values).
constexpr size_t kMaxPathShown = 4096;

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
  QUOTAD_RETURN_IF_ERROR(ErrorAt(f.origin, "name", CheckFeatureName(p.name())));
  spec.name = p.name();
  if (f.limits.empty() && p.draws_on().empty()) {
    return f.origin.Error("limits", absl::StrCat("feature ", QuoteValue(p.name()),
                                                 " needs at least one limit or draws_on entry"));
  }
  absl::flat_hash_set<std::string> limit_names;
  for (const EffectiveLimit& l : f.limits) {
    QUOTAD_RETURN_IF_ERROR(ErrorAt(l.origin, "name", CheckLimitName(l.proto.name())));
    if (!limit_names.insert(l.proto.name()).second) {
      return l.origin.Error("name", absl::StrCat("limit ", QuoteValue(l.proto.name()),
                                                 " appears twice in feature ", QuoteValue(p.name())));
    }
    QUOTAD_ASSIGN_OR_RETURN(LimitSpec limit, BuildLimit(l.proto, l.origin));
    spec.limits.push_back(std::move(limit));
  }
  absl::flat_hash_set<std::string> draws;
  for (int i = 0; i < p.draws_on_size(); ++i) {
    const std::string field = absl::StrCat("draws_on[", i, "]");
    if (p.draws_on(i) == p.name()) {
      return f.origin.Error(field,
                            absl::StrCat("feature ", QuoteValue(p.name()), " cannot draw on itself"));
    }
    if (!draws.insert(p.draws_on(i)).second) {
      return f.origin.Error(field, absl::StrCat(QuoteValue(p.draws_on(i)), " is listed twice"));
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
                            absl::StrCat("feature ", QuoteValue(spec.name), " is defined twice"));
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
            absl::StrCat("feature ", QuoteValue(f.proto.name()), " draws on ",
                         QuoteValue(f.proto.draws_on(i)),
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
      return bo.Error("max", absl::StrCat("max ", QuoteValue(b.max()), " is shorter than initial ",
                                          QuoteValue(b.initial())));
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
  QUOTAD_RETURN_IF_ERROR(ErrorAt(origin, "name", CheckProfileName(profile.name())));
  if (profile.features().empty()) {
    return origin.Error(
        "features", absl::StrCat("profile ", QuoteValue(profile.name()), " needs at least one feature"));
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
      if (p.fail_open()) {
        // Failing open is the operator's trade, not a fact of the provider's plan.
        return origin.Error("fail_open",
                            absl::StrCat("built-in profile ", QuoteValue(p.name()),
                                         " may not set fail_open: true (define a profile of "
                                         "your own for credentials that should fail open)"));
      }
      if (!names.insert(p.name()).second) {
        return origin.Error(
            "name", absl::StrCat("built-in profile ", QuoteValue(p.name()), " is defined twice"));
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
                   absl::StrCat("no feature ", QuoteValue(ov.feature()), " in profile ", QuoteValue(profile),
                                " or the credential; known: ", absl::StrJoin(feature_names, ", ")));
  }
  if (!seen.insert(absl::StrCat(ov.feature(), ".", ov.limit())).second) {
    return o.Error(ov.limit().empty() ? "feature" : "limit",
                   absl::StrCat("a second override of ", QuoteValue(ov.feature()),
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
      return o.Error("limit", absl::StrCat("the override of feature ", QuoteValue(ov.feature()),
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
    return o.Error("limit", absl::StrCat("no limit ", QuoteValue(ov.limit()), " in feature ",
                                         QuoteValue(ov.feature()), " of profile ", QuoteValue(profile),
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
          "name", absl::StrCat("profile ", QuoteValue(p.name()), " is already defined",
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
    QUOTAD_RETURN_IF_ERROR(ErrorAt(origin, "name", CheckCredentialName(c.name())));
    auto [it, inserted] = credential_paths.emplace(c.name(), origin.Field("name"));
    if (!inserted) {
      return origin.Error("name", absl::StrCat("credential ", QuoteValue(c.name()),
                                               " is already defined at ", map.Locate(it->second)));
    }
    std::vector<EffectiveFeature> features;
    if (c.profile().empty()) {
      if (c.features().empty()) {
        return origin.Error("profile", absl::StrCat("credential ", QuoteValue(c.name()),
                                                    " needs a profile or its own features"));
      }
    } else {
      auto p = profiles.find(c.profile());
      if (p == profiles.end()) {
        return origin.Error("profile",
                            absl::StrCat("unknown profile ", QuoteValue(c.profile()),
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
          return fo.Error("name", absl::StrCat("feature ", QuoteValue(c.features(j).name()),
                                               " is already in profile ", QuoteValue(c.profile()),
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
    if (!c.profile().empty()) spec.fail_open = profiles.find(c.profile())->second.profile->fail_open();
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
      return absl::NotFoundError(absl::StrCat("config file ", QuoteValue(path, kMaxPathShown), " does not exist"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("cannot open config file ", QuoteValue(path, kMaxPathShown), ": ", std::strerror(err)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot stat config file ", QuoteValue(path, kMaxPathShown), ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config file ", QuoteValue(path, kMaxPathShown), " is not a regular file (",
        S_ISFIFO(st.st_mode)  ? "a FIFO"
        : S_ISDIR(st.st_mode) ? "a directory"
        : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
        : S_ISSOCK(st.st_mode)                       ? "a socket"
                                                     : "not a plain file",
        ")"));
  }
  if (st.st_size > limits.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("config file ", QuoteValue(path, kMaxPathShown), " is ", st.st_size,
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
          absl::StrCat("cannot read config file ", QuoteValue(path, kMaxPathShown), ": ", std::strerror(errno)));
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
  return absl::NotFoundError(absl::StrCat("no built-in profile ", QuoteValue(name),
                                          "; known: ", absl::StrJoin(BuiltinProfileNames(), ", ")));
}

}  // namespace quotad

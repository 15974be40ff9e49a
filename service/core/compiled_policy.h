#ifndef QUOTAD_SERVICE_CORE_COMPILED_POLICY_H_
#define QUOTAD_SERVICE_CORE_COMPILED_POLICY_H_

// Internal to the ledger: a credential's features compiled into the tables the ledger runs
// (rules by index, each feature's rules in charge order, lookups by name).
//
// Immutable once built, so safe to read from any thread without a lock; the ledger shares one
// CompiledCredential (by shared_ptr) between every credential with the same features and
// keeps every version alive while a lease may point into it (SameFeatures says which are the
// same).

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/limits.h"
#include "service/core/policy.h"

namespace quotad {

// One feature as the ledger runs it.
struct CompiledFeature {
  std::string name;
  std::vector<int> rules;  // own limits, then the unscoped limits of draws_on features
  int64_t min_capacity = std::numeric_limits<int64_t>::max();
  int min_capacity_rule = -1;
  int first_scoped_rule = -1;
  bool has_concurrency = false;
  ThrottleSpec throttle;
  absl::Duration default_lease_ttl;
  absl::Duration max_lease_ttl;
  int64_t max_scopes = 0;
  // The longest a throttle answer may cool the feature down: its longest window (a month for
  // calendar months), and at least the throttle's own longest back-off.
  absl::Duration max_cooldown;
};

// The features of one or more credentials with their rules: credentials whose features are the
// same (a profile without overrides) share one. Immutable once built.
struct CompiledCredential {
  explicit CompiledCredential(const std::vector<FeatureSpec>& features_in);

  std::vector<FeatureSpec> spec_features;
  std::vector<Rule> rules;
  std::vector<CompiledFeature> features;
  absl::flat_hash_map<std::string, int> feature_index;
  absl::flat_hash_map<std::string, int> rule_index;

  // -1 when there is no such feature. A credential has a handful of features: a scan beats
  // hashing the name.
  int FindFeature(absl::string_view name) const {
    if (features.size() > 8) {
      auto it = feature_index.find(name);
      return it == feature_index.end() ? -1 : it->second;
    }
    for (size_t i = 0; i < features.size(); ++i) {
      if (features[i].name == name) return static_cast<int>(i);
    }
    return -1;
  }
};

// Whether features `a` and `b` compile to the same tables: every field of every feature, limit
// and throttle is equal (doubles exactly, a limit's zone by name and by value). Credentials whose
// features are the same share a CompiledCredential, and a reload keeps the version of a
// credential whose features are the same as its current version's.
bool SameFeatures(const std::vector<FeatureSpec>& a, const std::vector<FeatureSpec>& b);

// Hashes everything SameFeatures compares (a limit's zone by its name).
template <typename H>
H AbslHashValue(H h, const LimitSpec& l) {
  return H::combine(std::move(h), l.name, l.kind, l.capacity, l.period, l.rate, l.unit,
                    l.zone_name, l.sub_buckets, l.scoped, l.guard);
}
template <typename H>
H AbslHashValue(H h, const ThrottleSpec& t) {
  return H::combine(std::move(h), t.status_codes, t.initial_backoff, t.multiplier, t.max_backoff,
                    t.jitter_min, t.jitter_max);
}
template <typename H>
H AbslHashValue(H h, const FeatureSpec& f) {
  return H::combine(std::move(h), f.name, f.limits, f.draws_on, f.default_lease_ttl,
                    f.max_lease_ttl, f.max_scopes, f.throttle);
}

// A credential's features as a hash-map key, to find the CompiledCredential of features seen
// before without copying them or building a string: equal when SameFeatures. Points to the
// vector, which must outlive the key.
struct FeaturesKey {
  const std::vector<FeatureSpec>* features;

  friend bool operator==(const FeaturesKey& a, const FeaturesKey& b) {
    return SameFeatures(*a.features, *b.features);
  }
  template <typename H>
  friend H AbslHashValue(H h, const FeaturesKey& k) {
    return H::combine(std::move(h), *k.features);
  }
};

// The rule of the credential's current policy that was rule `r` of the policy a lease was granted
// under; -1 when a reload removed it.
int CurrentRule(const CompiledCredential& then, const CompiledCredential& now, int r);

// Whether features `fa` (with scope `sa`) and `fb` (with `sb`) charge a counter in common that
// can deny (an unlimited one never holds anybody back).
bool ShareCounter(const CompiledCredential& cc, int fa, absl::string_view sa, int fb,
                  absl::string_view sb);

// How long one window of `rule` can last.
absl::Duration LongestWindow(const Rule& rule);

// The period over which an outside estimate of `rule` recovers by
// OutsideEstimate::kRecoveryPerPeriod of its capacity: one window (10 s for concurrency).
int64_t RecoveryNs(const Rule& rule);

// Whether an outside estimate can apply to `rule`: unscoped, limited, more than one unit.
bool Estimable(const Rule& rule);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_COMPILED_POLICY_H_

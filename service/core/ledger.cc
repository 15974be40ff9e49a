#include "service/core/ledger.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/core/limits.h"
#include "service/core/outside_estimate.h"

namespace quotad {
namespace {

absl::Time FromNs(int64_t ns) {
  if (ns == kInfiniteNs) return absl::InfiniteFuture();
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  return absl::FromUnixNanos(ns);
}

// a + b, saturating at the ends of int64.
int64_t SatAdd(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) {
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }
  return out;
}

// How far the wall clock may drift from ledger time before the offset between them is updated.
constexpr int64_t kOffsetSlackNs = 1000000;

// A time moved by `by`, the infinities left as they are.
int64_t Shift(int64_t ns, int64_t by) {
  if (ns == kInfiniteNs || ns == std::numeric_limits<int64_t>::min()) return ns;
  return SatAdd(ns, by);
}

// 128 bits from the kernel's CSPRNG, drawn in blocks so that a lease id costs no syscall.
// Thread-compatible per thread (thread_local).
LeaseId NewLeaseId() {
  struct Pool {
    uint64_t words[512];
    size_t next = 512;
  };
  thread_local Pool pool;
  if (pool.next + 2 > 512) {
    size_t got = 0;
    auto* bytes = reinterpret_cast<char*>(pool.words);
    while (got < sizeof(pool.words)) {
      const ssize_t n = getrandom(bytes + got, sizeof(pool.words) - got, 0);
      if (n > 0) got += static_cast<size_t>(n);
      // EINTR: retry. getrandom does not fail otherwise once the pool is initialised.
    }
    pool.next = 0;
  }
  LeaseId id{pool.words[pool.next], pool.words[pool.next + 1]};
  pool.next += 2;
  return id;
}

absl::Status CheckRequestName(absl::string_view field, absl::string_view value, bool required) {
  if (required && value.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  }
  if (value.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", value.substr(0, 32), "...' is ",
                                                   value.size(), " bytes, longer than ",
                                                   kMaxNameLength));
  }
  return absl::OkStatus();
}

}  // namespace

std::string LeaseId::ToString() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kHex[(hi >> (4 * i)) & 0xf];
    out[31 - i] = kHex[(lo >> (4 * i)) & 0xf];
  }
  return out;
}

absl::StatusOr<LeaseId> LeaseId::Parse(absl::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_id '", text.substr(0, 64), "' is not 32 hexadecimal digits"));
  };
  if (text.size() != 32) return bad();
  LeaseId id;
  for (size_t i = 0; i < 32; ++i) {
    const char c = text[i];
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return bad();
    }
    uint64_t& word = i < 16 ? id.hi : id.lo;
    word = (word << 4) | static_cast<uint64_t>(v);
  }
  return id;
}

namespace {

// How long one window of `rule` can last.
absl::Duration LongestWindow(const Rule& rule) {
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      switch (rule.spec.unit) {
        case CalendarUnit::kMinute:
          return absl::Minutes(1) + rule.spec.guard;
        case CalendarUnit::kHour:
          return absl::Hours(1) + rule.spec.guard;
        case CalendarUnit::kDay:
          return absl::Hours(25) + rule.spec.guard;  // a day with a DST change
        case CalendarUnit::kWeek:
          return absl::Hours(24 * 7 + 1) + rule.spec.guard;
        case CalendarUnit::kMonth:
        case CalendarUnit::kNone:
          return absl::Hours(24 * 31 + 1) + rule.spec.guard;
      }
      break;
    case LimitKind::kRolling:
    case LimitKind::kSliding:
      return absl::Nanoseconds(rule.span_ns);
    case LimitKind::kTokenBucket:
      return absl::Nanoseconds(rule.emission_ns) * rule.spec.capacity;
    case LimitKind::kConcurrency:
      break;
  }
  return absl::ZeroDuration();
}

// The period over which an outside estimate of `rule` recovers by
// OutsideEstimate::kRecoveryPerPeriod of its capacity: one window (10 s for concurrency).
int64_t RecoveryNs(const Rule& rule) {
  // Slots held from outside free as their calls end: a short period.
  if (rule.spec.kind == LimitKind::kConcurrency) return absl::ToInt64Nanoseconds(absl::Seconds(10));
  return std::max<int64_t>(1, absl::ToInt64Nanoseconds(LongestWindow(rule) - rule.spec.guard));
}

// Whether an outside estimate can apply to `rule`: unscoped, limited, more than one unit.
bool Estimable(const Rule& rule) {
  return !rule.spec.scoped && rule.spec.kind != LimitKind::kUnlimited && rule.Capacity() > 1;
}

}  // namespace

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
  explicit CompiledCredential(const std::vector<FeatureSpec>& features_in)
      : spec_features(features_in) {
    for (const FeatureSpec& f : spec_features) {
      feature_index[f.name] = static_cast<int>(features.size());
      CompiledFeature cf;
      cf.name = f.name;
      cf.default_lease_ttl = f.default_lease_ttl;
      cf.max_lease_ttl = f.max_lease_ttl;
      cf.max_scopes = f.max_scopes;
      cf.throttle = f.throttle;
      for (const LimitSpec& l : f.limits) {
        const int index = static_cast<int>(rules.size());
        rules.emplace_back(l, absl::StrCat(f.name, ".", l.name));
        rule_index[rules.back().full_name] = index;
        cf.rules.push_back(index);
      }
      features.push_back(std::move(cf));
    }
    for (size_t fi = 0; fi < spec_features.size(); ++fi) {
      CompiledFeature& cf = features[fi];
      for (const std::string& other : spec_features[fi].draws_on) {
        for (int r : features[feature_index.at(other)].rules) {
          if (rules[r].spec.scoped || r < 0) continue;
          // Only the other feature's own limits, not what it draws on in turn.
          if (rules[r].full_name.rfind(absl::StrCat(other, "."), 0) != 0) continue;
          cf.rules.push_back(r);
        }
      }
      cf.max_cooldown = std::max(cf.throttle.max_backoff, cf.max_lease_ttl);
      for (int r : cf.rules) {
        const Rule& rule = rules[r];
        cf.max_cooldown = std::max(cf.max_cooldown, LongestWindow(rule));
        if (rule.spec.scoped && cf.first_scoped_rule < 0) cf.first_scoped_rule = r;
        if (rule.spec.kind == LimitKind::kConcurrency) cf.has_concurrency = true;
        if (rule.spec.kind != LimitKind::kUnlimited && rule.spec.capacity < cf.min_capacity) {
          cf.min_capacity = rule.spec.capacity;
          cf.min_capacity_rule = r;
        }
      }
    }
  }

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

// A request parked until it can be granted or reaches its deadline. Owns its strings.
struct Ledger::Waiter {
  AcquireRequest View() const {
    AcquireRequest r;
    r.credential = credential;
    r.feature = feature;
    r.scope = scope;
    r.holder = holder;
    r.cost = cost;
    r.lease_ttl = lease_ttl;
    r.want_limits = want_limits;
    return r;
  }

  std::string credential, feature, scope, holder;
  int64_t cost = 1;
  absl::Duration lease_ttl;
  bool want_limits = true;
  int64_t deadline_ns = 0;
  int priority = 0;
  uint64_t id = 0;
  WaitCallback done;
  int64_t retry_ns = kInfiniteNs;  // when it could be granted, as last computed
  std::string limited_by;          // the limit that holds it back
};

// Waiting requests of one credential in the order they are served: higher priority first,
// then arrival.
using WaiterMap = std::map<std::pair<int, uint64_t>, std::unique_ptr<Ledger::Waiter>>;

// An answer to deliver once the credential's lock is released.
struct Ledger::Answer {
  WaitCallback done;
  absl::StatusOr<Decision> result;
  std::unique_ptr<Ledger::LeaseRecord> lease;  // to insert first, for grants
};

struct Ledger::Credential {
  explicit Credential(std::string n) : name(std::move(n)) {}

  // Counter of rule `r` for `scope`; nullptr when the rule is scoped, the scope is new and
  // `create` is false. *created (optional) says whether this call made it.
  Counter* CounterFor(int r, absl::string_view scope, bool create, bool* created = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (created != nullptr) *created = false;
    if (!compiled->rules[r].spec.scoped) return &counters[r];
    auto& map = scoped[r];
    auto it = map.find(scope);
    if (it != map.end()) return &it->second;
    if (!create) return nullptr;
    if (created != nullptr) *created = true;
    Counter& c = map[std::string(scope)];
    if (!scope_seeds.empty() && scope_seeds[r].units > 0) {
      // A reload made this limit scoped: each new scope starts with what the whole limit had
      // used then, as the upstream may count all of it against this scope.
      const Rule& rule = compiled->rules[r];
      int64_t unused;
      c.Fits(rule, scope_seeds[r].at_ns, 0, &unused);
      c.Charge(rule, scope_seeds[r].at_ns, scope_seeds[r].units, 0, 0);
    }
    return &c;
  }

  const std::string name;
  absl::Mutex mu;
  const CompiledCredential* compiled ABSL_GUARDED_BY(mu) = nullptr;
  // Every version this credential was compiled to; leases point into them.
  std::vector<std::shared_ptr<const CompiledCredential>> versions ABSL_GUARDED_BY(mu);
  std::string profile ABSL_GUARDED_BY(mu);
  std::vector<Counter> counters ABSL_GUARDED_BY(mu);  // by rule index (unscoped rules)
  std::vector<absl::flat_hash_map<std::string, Counter>> scoped
      ABSL_GUARDED_BY(mu);  // by rule index (scoped rules)
  // What new scopes of a rule start with (by rule index; empty when no reload asked for it).
  struct ScopeSeed {
    int64_t units = 0;
    int64_t at_ns = 0;
  };
  std::vector<ScopeSeed> scope_seeds ABSL_GUARDED_BY(mu);
  // When an operator last zeroed the counters (Reset): leases granted before give nothing back,
  // since their units are no longer in the counters.
  int64_t reset_ns ABSL_GUARDED_BY(mu) = std::numeric_limits<int64_t>::min();
  // A counter of a limit that a reload changed, kept under the rule it was built for until
  // every unit it counted then has left it, and checked and charged with the new rule's
  // counter meanwhile: the window in force at the reload never grants more than the stricter of
  // the old and the new configuration allows.
  struct Retired {
    const Rule* old_rule = nullptr;  // in a version of `versions`, which are never dropped
    int rule = -1;                   // the current rule of the same name
    std::string scope;
    bool all_scopes = false;  // the old rule was unscoped: it counts every scope
    Counter counter;
    int64_t until_ns = 0;
  };
  std::vector<Retired> retired ABSL_GUARDED_BY(mu);
  // Counters of limits a reload removed, by name, kept until they drain in case a later reload
  // brings the limit back.
  struct Removed {
    const Rule* rule = nullptr;  // in a version of `versions`
    Counter counter;
    absl::flat_hash_map<std::string, Counter> scoped;
  };
  absl::flat_hash_map<std::string, Removed> removed ABSL_GUARDED_BY(mu);
  // By limit name: the index in `versions` of the last version whose reload rebuilt its
  // counters (the limit's shape, scoping or a raised capacity changed).
  absl::flat_hash_map<std::string, size_t> rebuilt_at ABSL_GUARDED_BY(mu);
  // Whether the counters of `limit` were rebuilt after `version` was compiled: refund tokens
  // made under it no longer name anything in them.
  bool RebuiltSince(const std::string& limit, const CompiledCredential& version) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = rebuilt_at.find(limit);
    if (it == rebuilt_at.end()) return false;
    for (size_t i = versions.size(); i-- > 0;) {
      if (versions[i].get() == &version) return it->second > i;
    }
    return true;
  }
  // Features cooling down after a throttle answer, by feature name.
  struct Cooldown {
    int64_t until_ns = 0;
  };
  absl::flat_hash_map<std::string, Cooldown> cooldowns ABSL_GUARDED_BY(mu);
  // What Report learned about limits from throttles (outside use, cooldown), by limit name.
  absl::flat_hash_map<std::string, OutsideEstimate> outside ABSL_GUARDED_BY(mu);
  // Units of `rule` held back for outside use from a grant of `cost` at `now`.
  int64_t HoldBack(const Rule& rule, int64_t cost, int64_t now) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (outside.empty() || !Estimable(rule)) return 0;
    auto it = outside.find(rule.full_name);
    if (it == outside.end()) return 0;
    return it->second.HoldBack(rule.Capacity(), RecoveryNs(rule), cost, now);
  }
  // Until when one of the limits `feature` charges cools down (<= now: none does).
  int64_t LimitCooldown(const CompiledCredential& cc, const CompiledFeature& feature,
                        int64_t now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  WaiterMap waiters ABSL_GUARDED_BY(mu);
  // When a waiter may next be served (its retry time or deadline), as last computed.
  int64_t next_serve_ns ABSL_GUARDED_BY(mu) = kInfiniteNs;
};

struct Ledger::Table {
  absl::flat_hash_map<std::string, Credential*> by_name;
  std::vector<Credential*> in_order;  // as configured
};

int64_t Ledger::Credential::LimitCooldown(const CompiledCredential& cc,
                                          const CompiledFeature& feature, int64_t now) const {
  int64_t until = 0;
  if (outside.empty()) return until;
  for (int r : feature.rules) {
    auto it = outside.find(cc.rules[r].full_name);
    if (it != outside.end() && it->second.cooldown_until_ns() > now) {
      until = std::max(until, it->second.cooldown_until_ns());
    }
  }
  return until;
}

namespace {

// Everything about features that compiling them depends on, as one string: credentials with the
// same fingerprint share a CompiledCredential.
std::string Fingerprint(const std::vector<FeatureSpec>& features) {
  std::string out;
  for (const FeatureSpec& f : features) {
    absl::StrAppend(&out, f.name, "{", absl::StrJoin(f.draws_on, ","), ";",
                    absl::ToInt64Nanoseconds(f.default_lease_ttl), ";",
                    absl::ToInt64Nanoseconds(f.max_lease_ttl), ";", f.max_scopes, ";",
                    absl::StrJoin(f.throttle.status_codes, ","), ";",
                    absl::ToInt64Nanoseconds(f.throttle.initial_backoff), ";",
                    f.throttle.multiplier, ";", absl::FormatDuration(f.throttle.max_backoff), ";",
                    f.throttle.jitter_min, ";", f.throttle.jitter_max, ";");
    for (const LimitSpec& l : f.limits) {
      absl::StrAppend(&out, "[", l.name, ";", static_cast<int>(l.kind), ";", l.capacity, ";",
                      absl::ToInt64Nanoseconds(l.period), ";", l.rate, ";",
                      static_cast<int>(l.unit), ";", l.zone_name, ";", l.sub_buckets, ";", l.scoped,
                      ";", absl::ToInt64Nanoseconds(l.guard), "]");
    }
    out += "}";
  }
  return out;
}

}  // namespace

struct Ledger::LeaseRecord {
  Credential* credential = nullptr;
  const CompiledCredential* compiled = nullptr;
  int feature = 0;
  std::string scope;
  std::string holder;
  int64_t cost = 0;
  int64_t granted_ns = 0;
  int64_t expiry_ns = 0;
  absl::InlinedVector<int64_t, 4> tokens;  // refund token per rule, in feature rule order
};

namespace {

JournalLease ToJournal(const LeaseId& id, const Ledger::LeaseRecord& rec, bool holds_slots) {
  JournalLease j;
  j.id = id.ToString();
  j.credential = rec.credential->name;
  j.feature = rec.compiled->features[rec.feature].name;
  j.scope = rec.scope;
  j.holder = rec.holder;
  j.cost = rec.cost;
  j.granted_ns = rec.granted_ns;
  j.expiry_ns = rec.expiry_ns;
  j.holds_slots = holds_slots;
  j.tokens.assign(rec.tokens.begin(), rec.tokens.end());
  return j;
}

}  // namespace

struct Ledger::LeaseShard {
  absl::Mutex mu;
  absl::flat_hash_map<LeaseId, LeaseRecord> leases ABSL_GUARDED_BY(mu);
};

namespace {

absl::Status LeaseNotFound(const LeaseId& id) {
  return absl::NotFoundError(
      absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
}

// The rule of the credential's current policy that was rule `r` of the policy a lease was granted
// under; -1 when a reload removed it.
int CurrentRule(const CompiledCredential& then, const CompiledCredential& now, int r) {
  if (&then == &now) return r;
  auto it = now.rule_index.find(then.rules[r].full_name);
  return it == now.rule_index.end() ? -1 : it->second;
}

}  // namespace

// Everything that runs under one credential's mutex, checked by clang's -Wthread-safety.
struct Ledger::Locked {
  // The live lease `id` in its shard, or nullptr.
  static LeaseRecord* FindLive(LeaseShard& shard, const LeaseId& id, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    auto it = shard.leases.find(id);
    return it == shard.leases.end() || it->second.expiry_ns <= now ? nullptr : &it->second;
  }
  static absl::StatusOr<Decision> Acquire(Ledger& l, Credential& cred, const AcquireRequest& req,
                                          int64_t now, LeaseRecord* rec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // The limits a throttle of `feature` is attributed to: `named` (the limit the answer's headers
  // describe, -1: none) when the answer says it is full; else the limits closest to full by
  // quotad's count plus its outside estimate (ties within 2% of the capacity), leaving out
  // `named` when the answer says it has room.
  static std::vector<int> AttributeThrottle(const Ledger& l, Credential& cred,
                                            const CompiledCredential& cc,
                                            const CompiledFeature& feature, int named,
                                            std::optional<bool> named_full, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // Learns from a throttle attributed to rule `r`: the outside estimate shrinks its effective
  // capacity and the limit cools down until `retry_ns` (the upstream's word, 0: none) or for a
  // back-off no longer than the limit takes to release units. Returns the cooldown's end.
  static int64_t LearnThrottle(Ledger& l, Credential& cred, const CompiledCredential& cc,
                               const CompiledFeature& feature, int r, int64_t retry_ns,
                               bool counted, int64_t now, ReportResult* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // Writes what the credential knows of limit `r` ahead (PutOutside).
  static void JournalOutside(Ledger& l, const Credential& cred, const Rule& rule,
                             const OutsideEstimate& e, ReportResult* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // Writes the high-water marks the charge needs ahead of it; kUnavailable when it cannot.
  static absl::Status ReserveAhead(Ledger& l, const Credential& cred, const CompiledCredential& cc,
                                   const CompiledFeature& feature,
                                   absl::Span<Counter* const> counters, const AcquireRequest& req,
                                   int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // Serves the waiters whose time has come first; then grants or denies; or, when `waiter` is
  // non-null and the request cannot be granted now, parks it (taking *waiter, which becomes
  // null). A request never passes a waiter of its priority or higher that needs one of the
  // same counters.
  static absl::StatusOr<Decision> AcquireOrQueue(Ledger& l, Credential& cred,
                                                 const AcquireRequest& req, int priority,
                                                 int64_t now, LeaseRecord* rec,
                                                 std::unique_ptr<Waiter>* waiter,
                                                 std::vector<Answer>* answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // Serves the credential's waiters in order: grants what fits, denies what reached its
  // deadline; a waiter that must wait holds back every later one that needs one of its
  // counters. Returns when it needs serving next.
  static int64_t ServeCredential(Ledger& l, Credential& cred, int64_t now,
                                 std::vector<Answer>* answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
  // The first waiter (in serving order) at `priority` or higher that needs a counter which
  // feature `fi` with `scope` needs too; nullptr when none.
  static Waiter* FirstConflict(Credential& cred, int fi, absl::string_view scope, int priority)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu);
};

namespace {

// Whether features `fa` (with scope `sa`) and `fb` (with `sb`) charge a counter in common that
// can deny (an unlimited one never holds anybody back).
bool ShareCounter(const CompiledCredential& cc, int fa, absl::string_view sa, int fb,
                  absl::string_view sb) {
  for (int ra : cc.features[fa].rules) {
    if (cc.rules[ra].spec.kind == LimitKind::kUnlimited) continue;
    for (int rb : cc.features[fb].rules) {
      if (ra == rb && (!cc.rules[ra].spec.scoped || sa == sb)) return true;
    }
  }
  return false;
}


}  // namespace

Ledger::Ledger(Clock* clock, LedgerOptions options)
    : clock_(clock),
      options_(options),
      mono_anchor_ns_(absl::ToUnixNanos(clock->Now()) -
                      absl::ToInt64Nanoseconds(clock->Monotonic())),
      jitter_rng_(options.jitter_seed != 0 ? options.jitter_seed : std::random_device{}()),
      leases_(std::make_unique<std::array<LeaseShard, kLeaseShards>>()) {}

int64_t Ledger::NowNs() const {
  const int64_t now = mono_anchor_ns_ + absl::ToInt64Nanoseconds(clock_->Monotonic());
  // The two clocks are read one after the other and drift apart slowly: the offset moves only
  // when it changed by more than a millisecond (a step), so that the wall times callers see of
  // one lease or window stay the same from one answer to the next (page tokens compare them).
  const int64_t offset = absl::ToUnixNanos(clock_->Now()) - now;
  const int64_t old = wall_offset_ns_.load(std::memory_order_relaxed);
  if (offset - old > kOffsetSlackNs || old - offset > kOffsetSlackNs) {
    wall_offset_ns_.store(offset, std::memory_order_relaxed);
  }
  return now;
}

absl::Time Ledger::ToWall(int64_t ns) const {
  return FromNs(Shift(ns, wall_offset_ns_.load(std::memory_order_relaxed)));
}

namespace {

// Whether `rule` runs on the wall clock (calendar boundaries follow civil time).
bool OnWall(const Rule& rule) {
  return (rule.spec.kind == LimitKind::kCalendar || rule.spec.kind == LimitKind::kUnlimited) &&
         rule.spec.unit != CalendarUnit::kNone;
}

}  // namespace

int64_t Ledger::RuleTime(const Rule& rule, int64_t now) const {
  return OnWall(rule) ? Shift(now, wall_offset_ns_.load(std::memory_order_relaxed)) : now;
}

int64_t Ledger::FromRuleTime(const Rule& rule, int64_t t) const {
  return OnWall(rule) ? Shift(t, -wall_offset_ns_.load(std::memory_order_relaxed)) : t;
}

int64_t Ledger::FromWall(absl::Time t) const {
  if (t == absl::InfiniteFuture()) return kInfiniteNs;
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  return Shift(absl::ToUnixNanos(t), -wall_offset_ns_.load(std::memory_order_relaxed));
}

Ledger::~Ledger() = default;

absl::StatusOr<std::unique_ptr<Ledger>> Ledger::Create(const Policy& policy, Clock* clock,
                                                       LedgerOptions options) {
  std::unique_ptr<Ledger> ledger(new Ledger(clock, options));
  if (absl::Status s = ledger->Reload(policy); !s.ok()) return s;
  return ledger;
}

Ledger::Credential* Ledger::FindCredential(absl::string_view name) const {
  const Table* t = table();
  auto it = t->by_name.find(name);
  return it == t->by_name.end() ? nullptr : it->second;
}

Ledger::LeaseShard& Ledger::ShardFor(const LeaseId& id) { return (*leases_)[id.lo % kLeaseShards]; }

absl::Status Ledger::ValidateRequest(const AcquireRequest& req) {
  if (absl::Status s = CheckRequestName("credential", req.credential, true); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("feature", req.feature, true); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("scope", req.scope, false); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("holder", req.holder, false); !s.ok()) return s;
  if (req.cost <= 0 || req.cost > kMaxCapacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost ", req.cost, " must be 1..", kMaxCapacity));
  }
  if (req.lease_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl ", absl::FormatDuration(req.lease_ttl), " is negative"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Decision> Ledger::Acquire(const AcquireRequest& req) {
  if (absl::Status s = ValidateRequest(req); !s.ok()) return s;
  Credential* cred = FindCredential(req.credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", req.credential, "' is not configured"));
  }
  const int64_t now = NowNs();

  std::vector<Answer> answers;
  absl::StatusOr<Decision> result;
  LeaseRecord rec;
  {
    absl::MutexLock lock(&cred->mu);
    result = Locked::AcquireOrQueue(*this, *cred, req, /*priority=*/0, now, &rec,
                                    /*waiter=*/nullptr, &answers);
  }
  if (result.ok() && result->granted) InsertLease(result->lease_id, std::move(rec));
  Deliver(answers);
  return result;
}

void Ledger::InsertLease(const LeaseId& id, LeaseRecord rec) {
  // Outside the credential's lock: nobody can name this lease before Acquire returns.
  if (options_.journal != nullptr && !rec.compiled->features[rec.feature].has_concurrency) {
    options_.journal->PutLease(ToJournal(id, rec, false)).IgnoreError();  // queued; may be lost
  }
  LeaseShard& shard = ShardFor(id);
  absl::MutexLock shard_lock(&shard.mu);
  shard.leases.emplace(id, std::move(rec));
}

absl::StatusOr<Decision> Ledger::Locked::Acquire(Ledger& l, Credential& cred,
                                                 const AcquireRequest& req, int64_t now,
                                                 LeaseRecord* rec) {
  Decision d;
  const CompiledCredential& cc = *cred.compiled;
  const int feature_index = cc.FindFeature(req.feature);
  if (feature_index < 0) {
    return absl::NotFoundError(absl::StrCat(
        "feature '", req.feature, "' is not configured for credential '", req.credential, "'"));
  }
  const CompiledFeature& feature = cc.features[feature_index];
  if (req.cost > feature.min_capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost ", req.cost, " exceeds capacity ", feature.min_capacity, " of limit ",
                     cc.rules[feature.min_capacity_rule].full_name, " and can never be granted"));
  }
  const absl::Duration ttl =
      req.lease_ttl == absl::ZeroDuration() ? feature.default_lease_ttl : req.lease_ttl;
  if (ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  if (feature.first_scoped_rule >= 0 &&
      cred.CounterFor(feature.first_scoped_rule, req.scope, false) == nullptr &&
      static_cast<int64_t>(cred.scoped[feature.first_scoped_rule].size()) >= feature.max_scopes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "scope '", req.scope, "' would exceed the ", feature.max_scopes,
        " scopes allowed for feature ", feature.name, " of credential ", req.credential));
  }

  if (!cred.cooldowns.empty()) {
    auto cool = cred.cooldowns.find(feature.name);
    if (cool != cred.cooldowns.end() && now < cool->second.until_ns) {
      d.retry_at = l.ToWall(cool->second.until_ns);
      d.limited_by = absl::StrCat(feature.name, ".cooldown");
      return d;
    }
  }
  // A limit the upstream throttled cools down every feature that charges it.
  if (const int64_t until = cred.LimitCooldown(cc, feature, now); until > now) {
    d.retry_at = l.ToWall(until);
    d.limited_by = absl::StrCat(feature.name, ".cooldown");
    return d;
  }

  absl::InlinedVector<Counter*, 4> counters;
  counters.reserve(feature.rules.size());
  absl::InlinedVector<int, 2> created_scopes;  // rules whose counter for this scope is new
  for (int r : feature.rules) {
    bool created;
    counters.push_back(cred.CounterFor(r, req.scope, true, &created));
    if (created) created_scopes.push_back(r);
  }

  int64_t retry_ns = std::numeric_limits<int64_t>::min();
  int limited_by = -1;
  for (size_t i = 0; i < counters.size(); ++i) {
    int64_t at = 0;
    const Rule& rule = cc.rules[feature.rules[i]];
    // Units learnt to be used from outside quotad are held back as if charged.
    const int64_t hold = cred.HoldBack(rule, req.cost, now);
    if (!counters[i]->Fits(rule, l.RuleTime(rule, now), req.cost + hold, &at) &&
        l.FromRuleTime(rule, at) > retry_ns) {
      retry_ns = l.FromRuleTime(rule, at);
      limited_by = feature.rules[i];
    }
  }
  // Limits a reload changed: the old rule's counter holds until its window drains.
  absl::InlinedVector<Credential::Retired*, 2> retired;
  if (!cred.retired.empty()) {
    cred.retired.erase(std::remove_if(cred.retired.begin(), cred.retired.end(),
                                      [now](const Credential::Retired& r) {
                                        return r.until_ns <= now;
                                      }),
                       cred.retired.end());
    for (Credential::Retired& old : cred.retired) {
      if (!old.all_scopes && old.scope != req.scope) continue;
      if (std::find(feature.rules.begin(), feature.rules.end(), old.rule) == feature.rules.end()) {
        continue;
      }
      int64_t at = 0;
      if (!old.counter.Fits(*old.old_rule, l.RuleTime(*old.old_rule, now), req.cost, &at)) {
        at = std::min(l.FromRuleTime(*old.old_rule, at), old.until_ns);
        if (at > retry_ns) {
          retry_ns = at;
          limited_by = old.rule;
        }
      }
      retired.push_back(&old);
    }
  }
  if (limited_by >= 0) {
    d.granted = false;
    d.retry_at = l.ToWall(retry_ns);
    d.limited_by = cc.rules[limited_by].full_name;
  } else {
    if (l.options_.journal != nullptr) {
      if (absl::Status s = ReserveAhead(l, cred, cc, feature, counters, req, now); !s.ok()) {
        return s;
      }
    }
    d.granted = true;
    d.lease_id = NewLeaseId();
    const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
    d.lease_expiry = l.ToWall(expiry);
    rec->credential = &cred;
    rec->compiled = &cc;
    rec->feature = feature_index;
    rec->scope = std::string(req.scope);
    rec->holder = std::string(req.holder);
    rec->cost = req.cost;
    rec->granted_ns = now;
    rec->expiry_ns = expiry;
    for (size_t i = 0; i < counters.size(); ++i) {
      rec->tokens.push_back(
          counters[i]->Charge(cc.rules[feature.rules[i]], l.RuleTime(cc.rules[feature.rules[i]], now),
                              req.cost, d.lease_id.lo, expiry));
    }
    for (Credential::Retired* old : retired) {
      old->counter.Charge(*old->old_rule, l.RuleTime(*old->old_rule, now), req.cost,
                          d.lease_id.lo, expiry);
    }
    // A lease holding slots is written before the grant is answered, under the lock; one that
    // only allows a refund is written by InsertLease, after the lock (losing it loses a refund).
    if (l.options_.journal != nullptr && feature.has_concurrency) {
      const absl::Status s = l.options_.journal->PutLease(ToJournal(d.lease_id, *rec, true));
      if (!s.ok()) {
        // The slot would not survive a restart: undo the whole grant and fail closed.
        for (size_t i = 0; i < counters.size(); ++i) {
          const Rule& rule = cc.rules[feature.rules[i]];
          if (rule.spec.kind == LimitKind::kConcurrency) {
            counters[i]->Free(expiry, d.lease_id.lo);
          } else {
            counters[i]->Refund(rule, l.RuleTime(rule, now), rec->tokens[i], req.cost, req.cost,
                                now);
          }
        }
        for (Credential::Retired* old : retired) old->counter.Free(expiry, d.lease_id.lo);
        return absl::UnavailableError(
            absl::StrCat("state store failed, denying (fail closed): ", s.message()));
      }
    }
  }
  if (req.want_limits) {
    d.limits.reserve(counters.size());
    for (size_t i = 0; i < counters.size(); ++i) {
      const Rule& rule = cc.rules[feature.rules[i]];
      const CounterView v = counters[i]->View(rule, l.RuleTime(rule, now));
      LimitStatus& st = d.limits.emplace_back();
      st.name = rule.full_name;
      if (rule.spec.scoped) st.scope = std::string(req.scope);
      st.kind = rule.spec.kind;
      st.capacity = rule.Capacity();
      st.used = v.used;
      st.outside_estimate = cred.HoldBack(rule, 0, now);
      st.remaining = std::max<int64_t>(0, v.remaining - st.outside_estimate);
      st.reset = l.ToWall(l.FromRuleTime(rule, v.reset_ns));
    }
  }
  if (!d.granted) {
    // A denied request leaves no new scope behind (max_scopes counts scopes in use).
    for (int r : created_scopes) cred.scoped[r].erase(req.scope);
  }
  return d;
}

absl::Status Ledger::Locked::ReserveAhead(Ledger& l, const Credential& cred,
                                          const CompiledCredential& cc,
                                          const CompiledFeature& feature,
                                          absl::Span<Counter* const> counters,
                                          const AcquireRequest& req, int64_t now) {
  std::vector<Reservation> reservations;
  absl::InlinedVector<std::array<std::array<int64_t, 3>, 2>, 4> out(counters.size());
  absl::InlinedVector<int, 4> counts(counters.size(), 0);
  for (size_t i = 0; i < counters.size(); ++i) {
    const Rule& rule = cc.rules[feature.rules[i]];
    int64_t buf[2][3];
    if (!counters[i]->NeedsReservation(rule, l.RuleTime(rule, now), req.cost, l.BlockFor(rule), buf,
                                       &counts[i])) {
      continue;
    }
    for (int k = 0; k < counts[i]; ++k) {
      out[i][k] = {buf[k][0], buf[k][1], buf[k][2]};
      reservations.push_back(Reservation{
          CounterKey{cred.name, rule.full_name, rule.spec.scoped ? std::string(req.scope) : ""},
          buf[k][0], buf[k][1], buf[k][2]});
    }
  }
  if (reservations.empty()) return absl::OkStatus();
  if (absl::Status s = l.options_.journal->Reserve(reservations); !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("state store failed, denying (fail closed): ", s.message()));
  }
  for (size_t i = 0; i < counters.size(); ++i) {
    if (counts[i] == 0) continue;
    int64_t buf[2][3];
    for (int k = 0; k < counts[i]; ++k) {
      for (int j = 0; j < 3; ++j) buf[k][j] = out[i][k][j];
    }
    const Rule& rule = cc.rules[feature.rules[i]];
    counters[i]->Reserved(rule, l.RuleTime(rule, now), buf, counts[i]);
  }
  return absl::OkStatus();
}

int64_t Ledger::BlockFor(const Rule& rule) const {
  double base = static_cast<double>(rule.spec.capacity);
  if (rule.spec.kind == LimitKind::kTokenBucket) base = static_cast<double>(rule.spec.rate);
  if (rule.spec.kind == LimitKind::kUnlimited) return options_.max_reserve_block;
  const double block = base * options_.reserve_fraction;
  return std::clamp<int64_t>(static_cast<int64_t>(block), 1, options_.max_reserve_block);
}

absl::StatusOr<Decision> Ledger::Locked::AcquireOrQueue(Ledger& l, Credential& cred,
                                                        const AcquireRequest& req, int priority,
                                                        int64_t now, LeaseRecord* rec,
                                                        std::unique_ptr<Waiter>* waiter,
                                                        std::vector<Answer>* answers) {
  const bool may_wait = waiter != nullptr && *waiter != nullptr;
  // Nobody waits on most credentials: straight to the decision.
  if (cred.waiters.empty() && !may_wait) return Acquire(l, cred, req, now, rec);
  if (!cred.waiters.empty() && now >= cred.next_serve_ns) {
    cred.next_serve_ns = ServeCredential(l, cred, now, answers);
  }
  const int fi = cred.compiled->FindFeature(req.feature);
  Waiter* blocker =
      fi < 0 || cred.waiters.empty() ? nullptr : FirstConflict(cred, fi, req.scope, priority);
  absl::StatusOr<Decision> d;
  if (blocker == nullptr) {
    d = Acquire(l, cred, req, now, rec);
    if (!d.ok() || d->granted || !may_wait) return d;
  } else if (!may_wait) {
    // Waiting requests go first: a request that does not wait is told when the waiter ahead of
    // it could be served, which is the earliest anything could be.
    Decision denied;
    denied.retry_at = l.ToWall(blocker->retry_ns);
    denied.limited_by = blocker->limited_by;
    return denied;
  }
  if (static_cast<int64_t>(cred.waiters.size()) >= l.options_.max_waiters_per_credential) {
    return absl::ResourceExhaustedError(
        absl::StrCat("credential '", cred.name, "' already has ", cred.waiters.size(),
                     " requests waiting, the most allowed; retry later"));
  }
  Waiter& w = **waiter;
  if (blocker != nullptr) {
    w.retry_ns = blocker->retry_ns;
    w.limited_by = blocker->limited_by;
  } else {
    w.retry_ns = l.FromWall(d->retry_at);
    w.limited_by = d->limited_by;
  }
  cred.next_serve_ns = std::min({cred.next_serve_ns, w.retry_ns, w.deadline_ns});
  Decision parked;
  parked.retry_at = l.ToWall(w.retry_ns);
  parked.limited_by = w.limited_by;
  cred.waiters.emplace(std::make_pair(-w.priority, w.id), std::move(*waiter));
  l.waiting_.fetch_add(1, std::memory_order_relaxed);
  {
    absl::MutexLock wait_lock(&l.wait_mu_);
    l.waiting_credentials_.insert(&cred);
  }
  return parked;
}

Ledger::Waiter* Ledger::Locked::FirstConflict(Credential& cred, int fi, absl::string_view scope,
                                              int priority) {
  const CompiledCredential& cc = *cred.compiled;
  for (auto& [order, w] : cred.waiters) {
    if (-order.first < priority) break;  // in order: every later one has a lower priority
    const int wf = cc.FindFeature(w->feature);
    if (wf >= 0 && ShareCounter(cc, fi, scope, wf, w->scope)) return w.get();
  }
  return nullptr;
}

int64_t Ledger::Locked::ServeCredential(Ledger& l, Credential& cred, int64_t now,
                                        std::vector<Answer>* answers) {
  const CompiledCredential& cc = *cred.compiled;
  // Waiters that must go on waiting, with their feature: later ones that share a counter with
  // one of them wait behind it.
  absl::InlinedVector<std::pair<const Waiter*, int>, 8> held;
  int64_t next = kInfiniteNs;
  for (auto it = cred.waiters.begin(); it != cred.waiters.end();) {
    Waiter& w = *it->second;
    auto answer = [&](absl::StatusOr<Decision> result, std::unique_ptr<LeaseRecord> lease)
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu) {
                        Answer& a = answers->emplace_back();
                        a.done = std::move(w.done);
                        a.result = std::move(result);
                        a.lease = std::move(lease);
                        it = cred.waiters.erase(it);
                        l.waiting_.fetch_sub(1, std::memory_order_relaxed);
                      };
    const int fi = cc.FindFeature(w.feature);
    const Waiter* ahead = nullptr;
    if (fi >= 0) {
      for (const auto& [other, of] : held) {
        if (ShareCounter(cc, fi, w.scope, of, other->scope)) {
          ahead = other;
          break;
        }
      }
    }
    if (ahead == nullptr) {
      auto lease = std::make_unique<LeaseRecord>();
      absl::StatusOr<Decision> d = Acquire(l, cred, w.View(), now, lease.get());
      if (!d.ok() || d->granted) {
        const bool granted = d.ok();
        answer(std::move(d), granted ? std::move(lease) : nullptr);
        continue;
      }
      w.retry_ns = l.FromWall(d->retry_at);
      w.limited_by = d->limited_by;
    } else {
      w.retry_ns = ahead->retry_ns;
      w.limited_by = ahead->limited_by;
    }
    if (w.deadline_ns <= now) {
      Decision denied;
      denied.retry_at = l.ToWall(w.retry_ns);
      denied.limited_by = w.limited_by;
      answer(denied, nullptr);
      continue;
    }
    if (fi >= 0) held.emplace_back(&w, fi);
    next = std::min({next, w.retry_ns, w.deadline_ns});
    ++it;
  }
  if (cred.waiters.empty()) {
    absl::MutexLock wait_lock(&l.wait_mu_);
    l.waiting_credentials_.erase(&cred);
  }
  return next;
}

void Ledger::Deliver(std::vector<Answer>& answers) {
  for (Answer& a : answers) {
    if (a.lease != nullptr) InsertLease(a.result->lease_id, std::move(*a.lease));
    a.done(std::move(a.result));
  }
  answers.clear();
}

WaitTicket Ledger::AcquireOrWait(const AcquireRequest& req, absl::Duration max_wait, int priority,
                                 WaitCallback done) {
  if (absl::Status s = ValidateRequest(req); !s.ok()) {
    done(s);
    return {};
  }
  if (max_wait < absl::ZeroDuration()) {
    done(absl::InvalidArgumentError(
        absl::StrCat("max_wait ", absl::FormatDuration(max_wait), " is negative")));
    return {};
  }
  Credential* cred = FindCredential(req.credential);
  if (cred == nullptr) {
    done(absl::NotFoundError(absl::StrCat("credential '", req.credential, "' is not configured")));
    return {};
  }
  const int64_t now = NowNs();
  auto waiter = std::make_unique<Waiter>();
  Waiter& w = *waiter;
  w.credential = std::string(req.credential);
  w.feature = std::string(req.feature);
  w.scope = std::string(req.scope);
  w.holder = std::string(req.holder);
  w.cost = req.cost;
  w.lease_ttl = req.lease_ttl;
  w.want_limits = req.want_limits;
  w.deadline_ns = SatAdd(now, absl::ToInt64Nanoseconds(max_wait));
  w.priority = priority;
  w.id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
  w.done = std::move(done);
  WaitTicket ticket{cred, priority, w.id};

  std::vector<Answer> answers;
  LeaseRecord rec;
  absl::StatusOr<Decision> result;
  {
    absl::MutexLock lock(&cred->mu);
    result = Locked::AcquireOrQueue(*this, *cred, req, priority, now, &rec,
                                    max_wait > absl::ZeroDuration() ? &waiter : nullptr, &answers);
  }
  const bool parked = waiter == nullptr;
  if (!parked) {
    if (result.ok() && result->granted) InsertLease(result->lease_id, std::move(rec));
    waiter->done(std::move(result));
  }
  Deliver(answers);
  if (!parked) return {};
  if (options_.wake) {
    options_.wake(ToWall(std::min(FromWall(result->retry_at),
                                  SatAdd(now, absl::ToInt64Nanoseconds(max_wait)))));
  }
  return ticket;
}

bool Ledger::Cancel(const WaitTicket& ticket) {
  if (ticket.credential == nullptr) return false;
  // Only credentials this ledger made are ever named by tickets, and none is ever freed.
  Credential* cred = const_cast<Credential*>(static_cast<const Credential*>(ticket.credential));
  std::unique_ptr<Waiter> gone;
  {
    absl::MutexLock lock(&cred->mu);
    auto it = cred->waiters.find({-ticket.priority, ticket.id});
    if (it == cred->waiters.end()) return false;
    gone = std::move(it->second);
    cred->waiters.erase(it);
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    // The waiters it held back may go now.
    cred->next_serve_ns = std::numeric_limits<int64_t>::min();
  }
  ServeCredential(*cred);
  return true;
}

void Ledger::ServeCredential(Credential& cred) {
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  std::vector<Answer> answers;
  int64_t next;
  {
    absl::MutexLock lock(&cred.mu);
    if (cred.waiters.empty()) return;
    next = Locked::ServeCredential(*this, cred, NowNs(), &answers);
    cred.next_serve_ns = next;
  }
  Deliver(answers);
  if (next != kInfiniteNs && options_.wake) options_.wake(ToWall(next));
}

absl::Time Ledger::Pump() {
  std::vector<Credential*> creds;
  {
    absl::MutexLock l(&wait_mu_);
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  const int64_t now = NowNs();
  int64_t next = kInfiniteNs;
  std::vector<Answer> answers;
  for (Credential* cred : creds) {
    {
      absl::MutexLock lock(&cred->mu);
      cred->next_serve_ns = Locked::ServeCredential(*this, *cred, now, &answers);
      next = std::min(next, cred->next_serve_ns);
    }
    Deliver(answers);
  }
  return ToWall(next);
}

void Ledger::AnswerAllWaiters(const absl::Status& status) {
  std::vector<Credential*> creds;
  {
    absl::MutexLock l(&wait_mu_);
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  for (Credential* cred : creds) {
    std::vector<std::unique_ptr<Waiter>> waiters;
    {
      absl::MutexLock lock(&cred->mu);
      for (auto& [order, w] : cred->waiters) waiters.push_back(std::move(w));
      waiting_.fetch_sub(static_cast<int64_t>(cred->waiters.size()), std::memory_order_relaxed);
      cred->waiters.clear();
      absl::MutexLock l(&wait_mu_);
      waiting_credentials_.erase(cred);
    }
    for (auto& w : waiters) w->done(status);
  }
}

int64_t Ledger::waiting() const { return waiting_.load(std::memory_order_relaxed); }

absl::StatusOr<ReleaseResult> Ledger::Release(const LeaseId& id, std::optional<int64_t> used) {
  Credential* cred = nullptr;
  absl::StatusOr<ReleaseResult> result = ReleaseImpl(id, used, &cred);
  // Freed slots or refunded units may let waiting requests through.
  if (result.ok() && (result->freed > 0 || result->refunded > 0)) ServeCredential(*cred);
  return result;
}

absl::StatusOr<ReleaseResult> Ledger::ReleaseImpl(const LeaseId& id, std::optional<int64_t> used,
                                                  Credential** out_cred) {
  LeaseShard& shard = ShardFor(id);
  Credential* cred = nullptr;
  const int64_t before = NowNs();
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* rec = Locked::FindLive(shard, id, before);
    if (rec == nullptr) return LeaseNotFound(id);
    cred = rec->credential;
  }
  *out_cred = cred;
  // Lock order: the credential, then the shard; so look again, at the time the locks are held
  // (a lease that expired meanwhile may already have lost its slot to another).
  absl::MutexLock cred_lock(&cred->mu);
  const int64_t now = NowNs();
  LeaseRecord rec;
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* live = Locked::FindLive(shard, id, now);
    if (live == nullptr) return LeaseNotFound(id);
    if (used.has_value() && (*used < 0 || *used > live->cost)) {
      return absl::InvalidArgumentError(
          absl::StrCat("used ", *used, " is outside 0..", live->cost, " (the lease's cost)"));
    }
    rec = std::move(*live);
    shard.leases.erase(id);
  }
  if (options_.journal != nullptr) options_.journal->DeleteLease(id.ToString());
  ReleaseResult result;
  const CompiledCredential& then = *rec.compiled;
  const std::vector<int>& rules = then.features[rec.feature].rules;
  for (size_t i = 0; i < rules.size(); ++i) {
    const int r = CurrentRule(then, *cred->compiled, rules[i]);
    if (r < 0) continue;  // the limit is gone
    const Rule& rule = cred->compiled->rules[r];
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter == nullptr) continue;
    if (rule.spec.kind == LimitKind::kConcurrency) {
      result.freed = std::max(result.freed, counter->Free(rec.expiry_ns, id.lo));
    } else if (used.has_value() && rec.granted_ns > cred->reset_ns &&
               !cred->RebuiltSince(rule.full_name, then)) {
      // A token means something only to a counter of the shape that made it: after a reload
      // rebuilt the counter, the units stay counted until they drain (under-grants, never over).
      result.refunded = std::max(
          result.refunded,
          counter->Refund(rule, RuleTime(rule, now), rec.tokens[i], rec.cost, rec.cost - *used,
                          rec.granted_ns));
    }
  }
  for (Credential::Retired& old : cred->retired) {
    if (old.all_scopes || old.scope == rec.scope) old.counter.Free(rec.expiry_ns, id.lo);
  }
  return result;
}

absl::StatusOr<absl::Time> Ledger::Renew(const LeaseId& id, absl::Duration ttl) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " is negative"));
  }
  LeaseShard& shard = ShardFor(id);
  Credential* cred = nullptr;
  const int64_t before = NowNs();
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* rec = Locked::FindLive(shard, id, before);
    if (rec == nullptr) return LeaseNotFound(id);
    cred = rec->credential;
  }
  // Lock order: the credential, then the shard; so look again, at the time the locks are held:
  // a lease that expired meanwhile may already have lost its slot to another holder.
  absl::MutexLock cred_lock(&cred->mu);
  absl::MutexLock l(&shard.mu);
  const int64_t now = NowNs();
  LeaseRecord* live = Locked::FindLive(shard, id, now);
  if (live == nullptr) return LeaseNotFound(id);
  LeaseRecord& rec = *live;
  const CompiledCredential& then = *rec.compiled;
  const CompiledFeature& feature = then.features[rec.feature];
  if (ttl == absl::ZeroDuration()) ttl = feature.default_lease_ttl;
  if (ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
  // The slots the lease holds, each of which must still be its own: a slot that was taken
  // from it (its expiry passed on a clock that stepped) is not given back by a renewal.
  absl::InlinedVector<Counter*, 2> slots;
  for (int then_rule : feature.rules) {
    const int r = CurrentRule(then, *cred->compiled, then_rule);
    if (r < 0 || cred->compiled->rules[r].spec.kind != LimitKind::kConcurrency) continue;
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter == nullptr || !counter->Holds(rec.expiry_ns, id.lo)) {
      shard.leases.erase(id);
      return LeaseNotFound(id);
    }
    slots.push_back(counter);
  }
  if (options_.journal != nullptr && (feature.has_concurrency || !slots.empty())) {
    // A renewal lost in a crash would free the slot early under a running job. A lease granted
    // before a reload made its limit a concurrency one was written as refund-only: write it
    // again as one that holds slots.
    absl::Status s;
    if (feature.has_concurrency) {
      s = options_.journal->RenewLease(id.ToString(), expiry);
    } else {
      JournalLease j = ToJournal(id, rec, true);
      j.expiry_ns = expiry;
      s = options_.journal->PutLease(j);
    }
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("state store failed, lease not renewed: ", s.message()));
    }
  }
  for (Counter* counter : slots) counter->MoveExpiry(rec.expiry_ns, id.lo, expiry);
  for (Credential::Retired& old : cred->retired) {
    if (old.all_scopes || old.scope == rec.scope) {
      old.counter.MoveExpiry(rec.expiry_ns, id.lo, expiry);
    }
  }
  rec.expiry_ns = expiry;
  return ToWall(expiry);
}

std::vector<int> Ledger::Locked::AttributeThrottle(const Ledger& l, Credential& cred,
                                                   const CompiledCredential& cc,
                                                   const CompiledFeature& feature, int named,
                                                   std::optional<bool> named_full, int64_t now) {
  if (named >= 0 && named_full.value_or(false)) return {named};
  std::vector<std::pair<double, int>> fullness;
  for (int r : feature.rules) {
    const Rule& rule = cc.rules[r];
    if (rule.spec.kind == LimitKind::kUnlimited || (r == named && named_full.has_value())) {
      continue;
    }
    if (rule.spec.scoped) {  // which scope the call was for is unknown: counted as empty
      fullness.emplace_back(0.0, r);
      continue;
    }
    const CounterView v = cred.counters[r].View(rule, l.RuleTime(rule, now));
    const int64_t hold = cred.HoldBack(rule, 1, now);
    fullness.emplace_back(
        static_cast<double>(v.used + hold) / static_cast<double>(rule.Capacity()), r);
  }
  if (fullness.empty()) return named >= 0 ? std::vector<int>{named} : std::vector<int>{};
  double most = 0;
  for (const auto& [f, r] : fullness) most = std::max(most, f);
  std::vector<int> out;
  for (const auto& [f, r] : fullness) {
    if (f >= most - 0.02) out.push_back(r);
  }
  return out;
}

int64_t Ledger::Locked::LearnThrottle(Ledger& l, Credential& cred, const CompiledCredential& cc,
                                      const CompiledFeature& feature, int r, int64_t retry_ns,
                                      bool counted, int64_t now, ReportResult* out) {
  const Rule& rule = cc.rules[r];
  OutsideEstimate& e = cred.outside[rule.full_name];
  e.CountThrottle();
  // A throttle on a limit quotad's own count already has full is explained by that count:
  // nothing is learnt about outside use.
  const bool full = !rule.spec.scoped &&
                    cred.counters[r].View(rule, l.RuleTime(rule, now)).remaining <= 0;
  if (Estimable(rule) && !counted && !full) e.OnThrottle(rule.Capacity(), RecoveryNs(rule), now);
  int64_t until = retry_ns;
  if (until <= now) {
    // No word from the upstream: a back-off that doubles while throttles repeat, but never
    // longer than the limit takes to release units (a sliding or rolling period, the rest of a
    // calendar window; slots free as calls end), so one answer never idles the key for long.
    const ThrottleSpec& t = feature.throttle;
    absl::Duration backoff = t.initial_backoff;
    for (int i = 1; i < e.consecutive() && backoff < t.max_backoff; ++i) backoff *= t.multiplier;
    backoff = std::min(backoff, t.max_backoff);
    absl::Duration release;
    switch (rule.spec.kind) {
      case LimitKind::kSliding:
      case LimitKind::kRolling:
        release = absl::Nanoseconds(rule.period_ns);
        break;
      case LimitKind::kTokenBucket:
        release = absl::Nanoseconds(rule.emission_ns);
        break;
      case LimitKind::kConcurrency:
        release = t.initial_backoff;
        break;
      default: {
        if (rule.spec.scoped) {
          release = LongestWindow(rule);
          break;
        }
        const int64_t reset =
            l.FromRuleTime(rule, cred.counters[r].View(rule, l.RuleTime(rule, now)).reset_ns);
        release = absl::Nanoseconds(std::max<int64_t>(0, reset - now));
        break;
      }
    }
    backoff = std::max(std::min(backoff, release), absl::Milliseconds(1));
    double jitter = t.jitter_min;
    if (t.jitter_max > t.jitter_min) {
      absl::MutexLock jitter_lock(&l.jitter_mu_);
      jitter = std::uniform_real_distribution<double>(t.jitter_min, t.jitter_max)(l.jitter_rng_);
    }
    until = now + absl::ToInt64Nanoseconds(backoff * (1.0 + jitter));
  }
  // One answer cannot idle the key for longer than its longest window takes to drain.
  const int64_t longest = SatAdd(now, absl::ToInt64Nanoseconds(feature.max_cooldown));
  if (until > longest) {
    out->warnings.push_back(absl::StrCat("cooldown until ", absl::FormatTime(l.ToWall(until)),
                                         " capped at ", absl::FormatTime(l.ToWall(longest))));
    until = longest;
  }
  e.CoolUntil(until);
  JournalOutside(l, cred, rule, e, out);
  return e.cooldown_until_ns();
}

void Ledger::Locked::JournalOutside(Ledger& l, const Credential& cred, const Rule& rule,
                                    const OutsideEstimate& e, ReportResult* out) {
  if (l.options_.journal == nullptr) return;
  quotad::JournalOutside jo;
  jo.credential = cred.name;
  jo.limit = rule.full_name;
  // Rounded up: a restart never holds back less than was learnt.
  jo.outside_milli = static_cast<int64_t>(std::ceil(e.raw_outside() * 1000));
  jo.at_ns = e.at_ns();
  jo.cooldown_until_ns = e.cooldown_until_ns();
  jo.consecutive = e.consecutive();
  jo.until_ns = std::max(e.cooldown_until_ns(), e.GoneAt(rule.Capacity(), RecoveryNs(rule)));
  if (jo.consecutive > 0) jo.until_ns = kInfiniteNs;  // the back-off remembers until a success
  if (absl::Status s = l.options_.journal->PutOutside(jo); !s.ok()) {
    out->warnings.push_back(absl::StrCat("what was learnt about ", rule.full_name,
                                         " is not durable: ", s.message()));
  }
}

absl::StatusOr<ReportResult> Ledger::Report(const UpstreamAnswer& answer) {
  Credential* cred = FindCredential(answer.credential);
  if (cred == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("credential '", answer.credential, "' is not configured"));
  }
  const int64_t now = NowNs();
  const absl::Time observed_at =
      answer.observed_at == absl::InfinitePast() ? ToWall(now) : answer.observed_at;
  std::vector<int> throttle_codes;
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    const int fi = cc.FindFeature(answer.feature);
    if (fi < 0) {
      return absl::NotFoundError(absl::StrCat("feature '", answer.feature,
                                              "' is not configured for credential '",
                                              answer.credential, "'"));
    }
    throttle_codes = cc.features[fi].throttle.status_codes;
  }
  // Parsing untrusted text happens outside the credential's lock.
  absl::StatusOr<UpstreamObservation> obs =
      ParseUpstream(answer.http_status, answer.headers, answer.body, observed_at, throttle_codes);
  if (!obs.ok()) return obs.status();

  ReportResult out;
  out.warnings = obs->warnings;
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    const int fi = cc.FindFeature(answer.feature);
    if (fi < 0) return absl::NotFoundError("feature removed by a reload");
    const CompiledFeature& feature = cc.features[fi];

    int named = -1;                  // the limit the headers describe
    std::optional<bool> named_full;  // whether they say it is full
    bool adopted_count = false;      // the named limit's count was adopted from this answer
    if (obs->limit || obs->remaining || obs->used) {
      // Which of the feature's window limits the X-RateLimit-* headers describe.
      std::vector<int> candidates;
      for (int r : feature.rules) {
        const LimitKind k = cc.rules[r].spec.kind;
        if (!cc.rules[r].spec.scoped &&
            (k == LimitKind::kCalendar || k == LimitKind::kRolling || k == LimitKind::kSliding)) {
          candidates.push_back(r);
        }
      }
      int target = -1;
      if (obs->limit) {
        for (int r : candidates) {
          if (cc.rules[r].spec.capacity == *obs->limit) {
            target = r;
            break;
          }
        }
      }
      if (target < 0 && candidates.size() == 1) target = candidates[0];
      if (target < 0) {
        std::vector<std::string> names;
        for (int r : candidates) names.push_back(cc.rules[r].full_name);
        out.warnings.push_back(
            absl::StrCat("X-RateLimit-Limit ", obs->limit ? absl::StrCat(*obs->limit) : "(none)",
                         " matches none of ", absl::StrJoin(names, ", "), "; counts not adopted"));
      } else {
        const Rule& rule = cc.rules[target];
        std::optional<int64_t> upstream_used = obs->used;
        if (!upstream_used && obs->remaining) {
          upstream_used = std::max<int64_t>(
              0, (obs->limit ? *obs->limit : rule.spec.capacity) - *obs->remaining);
        }
        // The upstream's times are wall times: in ledger time here (on the rule's own clock when
        // adopted).
        int64_t reset_ns = obs->reset_at ? FromWall(*obs->reset_at) : 0;
        named = target;
        if (upstream_used) named_full = *upstream_used >= rule.Capacity();
        // Only counts of the window in force are adopted: a reset that has passed describes an
        // earlier window (the answer is late, or the upstream's window rolled since), and one
        // further ahead than a whole window of the limit describes another window.
        const int64_t longest = absl::ToInt64Nanoseconds(LongestWindow(rule));
        // X-RateLimit-Reset is in whole seconds: a reset less than one second ago may be this
        // window's, rounded down. A sliding window has no earlier window: a reset that passed
        // only says its oldest unit left, and the count still holds (see below).
        if (upstream_used && obs->reset_at && rule.spec.kind != LimitKind::kSliding &&
            reset_ns + absl::ToInt64Nanoseconds(absl::Seconds(1)) <= now) {
          out.warnings.push_back(absl::StrCat(
              "X-RateLimit-Reset ", absl::FormatTime(*obs->reset_at), " of ", rule.full_name,
              " has passed (now ", absl::FormatTime(ToWall(now)),
              "): the counts describe an earlier window; not adopted"));
          upstream_used.reset();
          named_full.reset();
        } else if (obs->reset_at &&
                   reset_ns > SatAdd(SatAdd(now, longest),
                                     std::min(longest, absl::ToInt64Nanoseconds(absl::Hours(1))))) {
          // No window of the limit ends that late. Dropping the counts could grant into a full
          // upstream window, so they count in the window in force; the reset is not used.
          out.warnings.push_back(absl::StrCat(
              "X-RateLimit-Reset ", absl::FormatTime(*obs->reset_at), " of ", rule.full_name,
              " is more than one window (", absl::FormatDuration(LongestWindow(rule)),
              ") ahead: the reset is ignored, the counts apply to the window in force"));
          reset_ns = 0;
        }
        if (upstream_used && rule.spec.kind == LimitKind::kSliding) {
          // The units the upstream counted when the answer was seen were charged before then:
          // they leave its window one period later at the latest (plus the guard here).
          const int64_t release =
              SatAdd(std::min(now, FromWall(observed_at)), rule.period_ns);
          if (reset_ns <= now || reset_ns > release) reset_ns = release;
        }
        if (upstream_used) {
          adopted_count = true;
          // A count above the capacity says no more than "full", and keeps used <= capacity.
          upstream_used = std::min(*upstream_used, rule.Capacity());
          Counter* counter = cred->CounterFor(target, "", true);
          int64_t added = 0;
          const int64_t before =
              counter->Adopt(rule, RuleTime(rule, now), *upstream_used,
                             reset_ns == 0 ? 0 : RuleTime(rule, reset_ns), &added);
          if (added > 0) counter->NoRefundsBefore(now);
          if (*upstream_used > before) {
            out.adopted.push_back(
                absl::StrCat(rule.full_name, " used ", before, " -> ", *upstream_used));
          }
          // What was adopted is written ahead like a charge, so a restart keeps it.
          int64_t buf[2][3];
          int count = 0;
          if (options_.journal != nullptr &&
              counter->NeedsReservation(rule, RuleTime(rule, now), 0, /*block=*/0, buf, &count)) {
            std::vector<Reservation> rs;
            for (int k = 0; k < count; ++k) {
              rs.push_back(Reservation{CounterKey{cred->name, rule.full_name, ""}, buf[k][0],
                                       buf[k][1], buf[k][2]});
            }
            if (absl::Status s = options_.journal->Reserve(rs); s.ok()) {
              counter->Reserved(rule, RuleTime(rule, now), buf, count);
            } else {
              out.warnings.push_back(absl::StrCat("the adopted count of ", rule.full_name,
                                                  " is not durable: ", s.message()));
            }
          }
        }
      }
    }

    if (obs->throttled) {
      // The limit that was hit cools down (and with it every feature that charges it), and
      // learns that something outside quotad uses part of it.
      const int64_t retry_ns = obs->retry_at ? FromWall(*obs->retry_at) : 0;
      const std::vector<int> hit =
          Locked::AttributeThrottle(*this, *cred, cc, feature, named, named_full, now);
      if (hit.empty() || retry_ns > now) {
        // Nothing but unlimited limits, or the upstream's own Retry-After: the feature itself
        // cools down too (whatever a later reload makes of its limits).
        Credential::Cooldown& c = cred->cooldowns[feature.name];
        int64_t until = retry_ns > now ? retry_ns
                                       : now + absl::ToInt64Nanoseconds(
                                                   feature.throttle.initial_backoff *
                                                   (1.0 + feature.throttle.jitter_min));
        until = std::min(until, SatAdd(now, absl::ToInt64Nanoseconds(feature.max_cooldown)));
        c.until_ns = std::max(c.until_ns, until);
        out.cooldown_until = ToWall(c.until_ns);
        if (options_.journal != nullptr) {
          if (absl::Status s =
                  options_.journal->PutCooldown({cred->name, feature.name, c.until_ns});
              !s.ok()) {
            out.warnings.push_back(absl::StrCat("the cooldown of ", feature.name,
                                                " is not durable: ", s.message()));
          }
        }
      }
      for (int r : hit) {
        int64_t until_retry = retry_ns;
        if (until_retry == 0 && r == named && named_full.value_or(false) && obs->reset_at &&
            FromWall(*obs->reset_at) > now) {
          until_retry = FromWall(*obs->reset_at);  // the upstream's window resets then
        }
        // A limit whose count this answer gave is known, not estimated: it only cools down.
        const bool counted = r == named && adopted_count;
        const int64_t until = Locked::LearnThrottle(*this, *cred, cc, feature, r, until_retry,
                                                    counted, now, &out);
        out.cooldown_until = std::max(out.cooldown_until, ToWall(until));
      }
    } else if (obs->http_status < 400 && !cred->outside.empty()) {
      // The back-off starts over on a success seen after the cooldown ended; answers to
      // requests sent before the throttle say nothing about the upstream now.
      const int64_t observed_ns = FromWall(observed_at);
      for (int r : feature.rules) {
        auto it = cred->outside.find(cc.rules[r].full_name);
        if (it != cred->outside.end() && it->second.OnClean(observed_ns)) {
          Locked::JournalOutside(*this, *cred, cc.rules[r], it->second, &out);
        }
      }
    }
  }
  if (obs->throttled && options_.wake) options_.wake(out.cooldown_until);
  return out;
}

absl::StatusOr<std::vector<LimitStatus>> Ledger::Usage(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  const int64_t now = NowNs();
  std::vector<LimitStatus> out;
  absl::MutexLock lock(&cred->mu);
  const CompiledCredential& cc = *cred->compiled;
  auto add = [&](const Rule& rule, absl::string_view scope, Counter& counter)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred->mu) {
    const CounterView v = counter.View(rule, RuleTime(rule, now));
    LimitStatus& st = out.emplace_back();
    st.name = rule.full_name;
    st.scope = std::string(scope);
    st.kind = rule.spec.kind;
    st.capacity = rule.Capacity();
    st.used = v.used;
    st.outside_estimate = scope.empty() ? cred->HoldBack(rule, 0, now) : 0;
    st.remaining = std::max<int64_t>(0, v.remaining - st.outside_estimate);
    st.reset = ToWall(FromRuleTime(rule, v.reset_ns));
  };
  for (size_t r = 0; r < cc.rules.size(); ++r) {
    if (!cc.rules[r].spec.scoped) {
      add(cc.rules[r], "", cred->counters[r]);
      continue;
    }
    std::vector<std::string> scopes;
    for (const auto& [scope, counter] : cred->scoped[r]) scopes.push_back(scope);
    std::sort(scopes.begin(), scopes.end());
    for (const std::string& scope : scopes) add(cc.rules[r], scope, cred->scoped[r][scope]);
  }
  std::vector<std::pair<std::string, int64_t>> cooling;
  for (const auto& [feature, c] : cred->cooldowns) {
    if (c.until_ns > now) cooling.emplace_back(feature, c.until_ns);
  }
  // Features cooling down because a limit they charge does.
  for (const CompiledFeature& f : cc.features) {
    const int64_t until = cred->LimitCooldown(cc, f, now);
    if (until <= now) continue;
    auto it = std::find_if(cooling.begin(), cooling.end(),
                           [&](const auto& c) { return c.first == f.name; });
    if (it == cooling.end()) {
      cooling.emplace_back(f.name, until);
    } else {
      it->second = std::max(it->second, until);
    }
  }
  std::sort(cooling.begin(), cooling.end());
  for (const auto& [feature, until_ns] : cooling) {
    LimitStatus& st = out.emplace_back();
    st.name = absl::StrCat(feature, ".cooldown");
    st.kind = LimitKind::kUnlimited;  // never read for a cooldown; see LimitStatus::cooldown
    st.cooldown = true;
    st.reset = ToWall(until_ns);
  }
  return out;
}

std::vector<QueueInfo> Ledger::Queues() const {
  std::vector<Credential*> creds;
  {
    absl::MutexLock lock(&wait_mu_);  // lock order: never a credential's mu inside wait_mu_
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  std::vector<QueueInfo> out;
  for (Credential* cred : creds) {
    absl::MutexLock lock(&cred->mu);
    // One queue per feature and scope; its head is the first of them in serving order.
    std::map<std::pair<std::string, std::string>, QueueInfo> queues;
    for (const auto& [order, w] : cred->waiters) {
      QueueInfo& q = queues[{w->feature, w->scope}];
      if (q.waiters++ > 0) continue;
      q.credential = cred->name;
      q.feature = w->feature;
      q.scope = w->scope;
      q.retry_at = ToWall(w->retry_ns);
      q.limited_by = w->limited_by;
    }
    for (auto& [key, q] : queues) out.push_back(std::move(q));
  }
  std::sort(out.begin(), out.end(), [](const QueueInfo& a, const QueueInfo& b) {
    return std::tie(a.credential, a.feature, a.scope) < std::tie(b.credential, b.feature, b.scope);
  });
  return out;
}

LeaseInfo Ledger::InfoOf(const LeaseId& id, const LeaseRecord& rec) const {
  LeaseInfo info;
  info.id = id;
  info.credential = rec.credential->name;
  const CompiledFeature& f = rec.compiled->features[rec.feature];
  info.feature = f.name;
  info.scope = rec.scope;
  info.holder = rec.holder;
  info.cost = rec.cost;
  info.granted_at = ToWall(rec.granted_ns);
  info.expiry = ToWall(rec.expiry_ns);
  for (int r : f.rules) {
    if (rec.compiled->rules[r].spec.kind == LimitKind::kConcurrency) info.holds_slots = true;
  }
  return info;
}

std::vector<LeaseInfo> Ledger::Leases(absl::string_view credential) {
  const int64_t now = NowNs();
  std::vector<LeaseInfo> out;
  for (LeaseShard& shard : *leases_) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [id, rec] : shard.leases) {
      if (rec.expiry_ns <= now) continue;
      if (!credential.empty() && rec.credential->name != credential) continue;
      out.push_back(InfoOf(id, rec));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const LeaseInfo& a, const LeaseInfo& b) { return a.granted_at < b.granted_at; });
  return out;
}

std::optional<LeaseInfo> Ledger::FindLease(const LeaseId& id) {
  const int64_t now = NowNs();
  LeaseShard& shard = ShardFor(id);
  absl::MutexLock l(&shard.mu);
  const LeaseRecord* rec = Locked::FindLive(shard, id, now);
  if (rec == nullptr) return std::nullopt;
  return InfoOf(id, *rec);
}

absl::Status Ledger::Reset(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    for (size_t r = 0; r < cc.rules.size(); ++r) {
      cred->counters[r].Clear(cc.rules[r]);
      for (auto& [scope, counter] : cred->scoped[r]) counter.Clear(cc.rules[r]);
    }
    // What reloads kept of older configurations goes too: the operator said to start over.
    cred->retired.clear();
    cred->removed.clear();
    cred->scope_seeds.clear();
    cred->reset_ns = NowNs();
  }
  ServeCredential(*cred);
  return absl::OkStatus();
}

absl::Status Ledger::Reload(const Policy& policy) {
  absl::Status s = ReloadImpl(policy);
  if (s.ok()) Pump();  // new capacities may let waiting requests through
  return s;
}

absl::Status Ledger::ReloadImpl(const Policy& policy) {
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  absl::MutexLock reload_lock(&reload_mu_);
  const int64_t now = NowNs();
  auto next = std::make_unique<Table>();
  next->in_order.reserve(policy.credentials.size());
  absl::flat_hash_map<std::string, std::shared_ptr<const CompiledCredential>> shared;
  for (const CredentialSpec& spec : policy.credentials) {
    std::shared_ptr<const CompiledCredential>& compiled = shared[Fingerprint(spec.features)];
    if (compiled == nullptr) compiled = std::make_shared<const CompiledCredential>(spec.features);
    auto& slot = credentials_[spec.name];
    if (slot == nullptr) slot = std::make_unique<Credential>(spec.name);
    Credential& cred = *slot;
    absl::MutexLock lock(&cred.mu);
    const size_t n = compiled->rules.size();
    std::vector<Counter> counters(n);
    std::vector<absl::flat_hash_map<std::string, Counter>> scoped(n);
    std::vector<Credential::ScopeSeed> seeds;
    std::vector<std::pair<int, std::string>> seeded;  // counters that need a reservation
    std::vector<int> rehome;  // concurrency rules built anew
    const bool new_version = cred.versions.empty() || cred.versions.back() != compiled;
    const size_t version_index = cred.versions.size() - (new_version ? 0 : 1);
    if (cred.compiled != nullptr) {
      const CompiledCredential& old = *cred.compiled;
      // Counters retired by earlier reloads follow their limit by name, or end with it.
      for (Credential::Retired& retired : cred.retired) {
        auto it = compiled->rule_index.find(old.rules[retired.rule].full_name);
        retired.rule = it == compiled->rule_index.end() ? -1 : it->second;
      }
      cred.retired.erase(std::remove_if(cred.retired.begin(), cred.retired.end(),
                                        [now](const Credential::Retired& r) {
                                          return r.rule < 0 || r.until_ns <= now;
                                        }),
                         cred.retired.end());
      for (size_t r = 0; r < n; ++r) {
        const Rule& rule = compiled->rules[r];
        // The limit as it was: in the policy in force, or removed by an earlier reload.
        const Rule* was;
        Counter* was_counter;
        absl::flat_hash_map<std::string, Counter>* was_scoped;
        Credential::ScopeSeed was_seed;  // what the old rule's new scopes would start with
        if (auto it = old.rule_index.find(rule.full_name); it != old.rule_index.end()) {
          was = &old.rules[it->second];
          was_counter = &cred.counters[it->second];
          was_scoped = &cred.scoped[it->second];
          if (!cred.scope_seeds.empty()) was_seed = cred.scope_seeds[it->second];
        } else if (auto rit = cred.removed.find(rule.full_name); rit != cred.removed.end()) {
          was = rit->second.rule;
          was_counter = &rit->second.counter;
          was_scoped = &rit->second.scoped;
        } else {
          continue;
        }
        const Rule& o = *was;
        Counter& old_counter = *was_counter;
        auto& old_scoped = *was_scoped;
        if (rule.CarriesCounterOf(o)) {
          counters[r] = std::move(old_counter);
          scoped[r] = std::move(old_scoped);
          if (was_seed.units > 0) {
            seeds.resize(n);
            seeds[r] = was_seed;
          }
          continue;
        }
        // Any other edit: the old counters keep counting under the old rule until what they
        // hold drains, and the new counters start with the units the old ones count now, as
        // if charged at this moment (every unit the upstream may still count stays counted).
        cred.rebuilt_at[rule.full_name] = version_index;
        if (rule.spec.kind == LimitKind::kConcurrency) {
          rehome.push_back(static_cast<int>(r));  // live leases hold its slots (below)
        }
        // The units a counter built for rule `from` stands for under the new rule.
        auto units_of = [&](const Rule& from, Counter& c) -> int64_t {
          // Slots held at the reload count as units charged now; a window's units are no slots.
          if (rule.spec.kind == LimitKind::kConcurrency) return 0;
          int64_t units = c.View(from, RuleTime(from, now)).used;
          // A bucket remembers only what has not refilled: under a slower refill, another kind,
          // or merged with other scopes' charges, the units it already gave back may still
          // count. At most a burst more were charged within its memory.
          if (from.spec.kind == LimitKind::kTokenBucket &&
              !(rule.spec.kind == LimitKind::kTokenBucket &&
                rule.emission_ns <= from.emission_ns && rule.spec.scoped == from.spec.scoped)) {
            units = SatAdd(units, from.Capacity());
          }
          // More than the capacity is kept (a later reload that raises it still sees them),
          // except by a bucket, whose debt beyond a burst only delays its refill.
          return rule.spec.kind == LimitKind::kTokenBucket ? std::min(units, rule.Capacity())
                                                            : units;
        };
        // The old counter of `scope`, and the counters earlier reloads retired under this name
        // (which may remember more than a counter in between could, a bucket's burst say).
        auto used_of = [&](Counter& c, absl::string_view scope)
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu) -> int64_t {
          int64_t units = units_of(o, c);
          for (Credential::Retired& ret : cred.retired) {
            if (ret.rule == static_cast<int>(r) && (ret.all_scopes || ret.scope == scope)) {
              units = std::max(units, units_of(*ret.old_rule, ret.counter));
            }
          }
          return units;
        };
        auto seed = [&](Counter& c, int64_t units, absl::string_view scope) {
          if (units <= 0) return;
          int64_t unused;
          c.Fits(rule, RuleTime(rule, now), 0, &unused);  // rolls it to the current window
          c.Charge(rule, RuleTime(rule, now), units, 0, 0);
          seeded.emplace_back(static_cast<int>(r), std::string(scope));
        };
        auto retire = [&](absl::string_view scope, Counter& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(
                          cred.mu) {
          const int64_t until = FromRuleTime(o, c.DrainedAt(o, RuleTime(o, now)));
          if (until <= now || o.spec.kind == LimitKind::kUnlimited) return;
          cred.retired.push_back(Credential::Retired{&o, static_cast<int>(r), std::string(scope),
                                                     !o.spec.scoped, std::move(c), until});
        };
        if (!o.spec.scoped) {
          const int64_t units = used_of(old_counter, "");
          if (!rule.spec.scoped) {
            seed(counters[r], units, "");
          } else if (units > 0) {
            seeds.resize(n);  // every scope gets them when it first appears
            seeds[r] = {units, RuleTime(rule, now)};
            // The "" scope holds them too, which writes them ahead: a restart seeds every
            // scope from it (see Restore).
            seed(scoped[r][""], units, "");
          }
          retire("", old_counter);
        } else {
          int64_t total = 0;
          for (auto& [scope, c] : old_scoped) {
            const int64_t units = used_of(c, scope);
            total = SatAdd(total, units);
            if (rule.spec.scoped) seed(scoped[r][scope], units, scope);
            retire(scope, c);
          }
          if (was_seed.units > 0) {
            // Scopes not seen yet would have started with the seed: it still counts (in every
            // scope for a scoped rule, once for an unscoped one).
            Counter unseen;
            int64_t unused;
            unseen.Fits(o, was_seed.at_ns, 0, &unused);
            unseen.Charge(o, was_seed.at_ns, was_seed.units, 0, 0);
            const int64_t units = used_of(unseen, "");
            total = SatAdd(total, units);
            if (rule.spec.scoped && units > 0) {
              seeds.resize(n);
              seeds[r] = {units, RuleTime(rule, now)};
              seed(scoped[r][""], units, "");
            }
            retire("", unseen);
            if (!cred.retired.empty() && cred.retired.back().scope.empty()) {
              cred.retired.back().all_scopes = true;
            }
          }
          if (!rule.spec.scoped) seed(counters[r], total, "");
        }
      }
      // Limits that leave the policy are remembered, so that a reload that brings one back is
      // never looser than a restart (whose journal still has its records); drained ones go.
      for (const auto& [name, index] : compiled->rule_index) cred.removed.erase(name);
      for (size_t r = 0; r < old.rules.size(); ++r) {
        if (compiled->rule_index.contains(old.rules[r].full_name)) continue;
        cred.removed[old.rules[r].full_name] =
            Credential::Removed{&old.rules[r], std::move(cred.counters[r]),
                                std::move(cred.scoped[r])};
      }
      absl::erase_if(cred.removed, [this, now](auto& entry) {
        Credential::Removed& gone = entry.second;
        const int64_t at = RuleTime(*gone.rule, now);
        if (gone.counter.DrainedAt(*gone.rule, at) > at) return false;
        for (auto& [scope, c] : gone.scoped) {
          if (c.DrainedAt(*gone.rule, at) > at) return false;
        }
        return true;
      });
    }
    if (!rehome.empty()) {
      // A concurrency limit built anew (a new kind or scoping): every live lease that charges
      // it holds its slots there, whatever the limit was when the lease was granted.
      for (LeaseShard& shard : *leases_) {
        absl::MutexLock shard_lock(&shard.mu);
        for (const auto& [id, rec] : shard.leases) {
          if (rec.credential != &cred || rec.expiry_ns <= now) continue;
          const CompiledCredential& then = *rec.compiled;
          for (int then_rule : then.features[rec.feature].rules) {
            auto it = compiled->rule_index.find(then.rules[then_rule].full_name);
            if (it == compiled->rule_index.end() ||
                std::find(rehome.begin(), rehome.end(), it->second) == rehome.end()) {
              continue;
            }
            Counter& c = compiled->rules[it->second].spec.scoped ? scoped[it->second][rec.scope]
                                                                  : counters[it->second];
            c.RestoreHeld(rec.expiry_ns, id.lo, rec.cost, now);
          }
        }
      }
    }
    cred.counters = std::move(counters);
    cred.scoped = std::move(scoped);
    cred.scope_seeds = std::move(seeds);
    cred.compiled = compiled.get();
    if (new_version) cred.versions.push_back(compiled);
    if (options_.journal != nullptr && !seeded.empty()) {
      // The carried units are written ahead like charges, so that a restart with the new file
      // keeps them too. On failure the next charge of each counter writes them.
      std::vector<Reservation> rs;
      struct Pending {
        Counter* counter;
        int rule;
        int64_t buf[2][3];
        int count;
      };
      std::vector<Pending> pending;
      for (const auto& [r, scope] : seeded) {
        const Rule& rule = compiled->rules[r];
        Pending p{cred.CounterFor(r, scope, true), r, {}, 0};
        if (!p.counter->NeedsReservation(rule, RuleTime(rule, now), 0, /*block=*/0, p.buf,
                                         &p.count)) {
          continue;
        }
        for (int k = 0; k < p.count; ++k) {
          rs.push_back(Reservation{CounterKey{cred.name, rule.full_name, scope}, p.buf[k][0],
                                   p.buf[k][1], p.buf[k][2]});
        }
        pending.push_back(p);
      }
      if (!rs.empty() && options_.journal->Reserve(rs).ok()) {
        for (Pending& p : pending) {
          p.counter->Reserved(compiled->rules[p.rule], RuleTime(compiled->rules[p.rule], now),
                              p.buf, p.count);
        }
      }
    }
    cred.profile = spec.profile;
    next->by_name[spec.name] = &cred;
    next->in_order.push_back(&cred);
  }
  table_.store(next.get(), std::memory_order_release);
  tables_.push_back(std::move(next));
  return absl::OkStatus();
}

absl::Status Ledger::Restore() {
  if (options_.journal == nullptr) return absl::OkStatus();
  absl::StatusOr<JournalState> state = options_.journal->Load();
  if (!state.ok()) return state.status();
  const int64_t now = NowNs();
  // Sliding blocks of one counter in reserve-time order, so each knows the next one's time.
  std::vector<Reservation>& rs = state->reservations;
  auto in_order = [](const Reservation& a, const Reservation& b) {
    return std::tie(a.key.credential, a.key.limit, a.key.scope, a.window_start_ns) <
           std::tie(b.key.credential, b.key.limit, b.key.scope, b.window_start_ns);
  };
  // A store that reads in key order (SQLite by primary key) spares the sort at start-up.
  if (!std::is_sorted(rs.begin(), rs.end(), in_order)) std::sort(rs.begin(), rs.end(), in_order);
  for (size_t i = 0; i < rs.size(); ++i) {
    const Reservation& r = rs[i];
    Credential* cred = FindCredential(r.key.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    auto it = cc.rule_index.find(r.key.limit);
    if (it == cc.rule_index.end()) continue;
    const int64_t next_ns =
        (i + 1 < rs.size() && rs[i + 1].key == r.key) ? rs[i + 1].window_start_ns : now;
    Counter* counter = cred->CounterFor(it->second, r.key.scope, true);
    counter->Restore(cc.rules[it->second], RuleTime(cc.rules[it->second], now), r.window_start_ns,
                     r.until_ns, r.units, next_ns);
    // What a restored high-water mark stands for may include the upstream's count.
    counter->NoRefundsBefore(now);
  }
  // A scoped limit's records of the "" scope may be those of the limit before a reload made it
  // scoped: every new scope starts with what they count (as the reload itself does).
  for (Credential* cred : table()->in_order) {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    for (size_t r = 0; r < cc.rules.size(); ++r) {
      if (!cc.rules[r].spec.scoped) continue;
      auto it = cred->scoped[r].find("");
      if (it == cred->scoped[r].end()) continue;
      const Rule& rule = cc.rules[r];
      const int64_t at = RuleTime(rule, now);
      const int64_t used = it->second.View(rule, at).used;
      if (used <= 0 || rule.spec.kind == LimitKind::kConcurrency) continue;
      cred->scope_seeds.resize(cc.rules.size());
      cred->scope_seeds[r] = {std::max(cred->scope_seeds[r].units, used), at};
      // Scopes the journal named (perhaps only with records of past windows) count them too.
      for (auto& [scope, counter] : cred->scoped[r]) {
        const int64_t own = counter.View(rule, at).used;
        if (scope.empty() || own >= used) continue;
        int64_t unused;
        counter.Fits(rule, at, 0, &unused);
        counter.Charge(rule, at, used - own, 0, 0);
      }
    }
  }
  for (const JournalLease& jl : state->leases) {
    if (jl.expiry_ns <= now) continue;
    absl::StatusOr<LeaseId> id = LeaseId::Parse(jl.id);
    Credential* cred = FindCredential(jl.credential);
    if (!id.ok() || cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    auto fit = cc.feature_index.find(jl.feature);
    if (fit == cc.feature_index.end()) continue;
    const CompiledFeature& feature = cc.features[fit->second];
    LeaseRecord rec;
    rec.credential = cred;
    rec.compiled = &cc;
    rec.feature = fit->second;
    rec.scope = jl.scope;
    rec.holder = jl.holder;
    rec.cost = jl.cost;
    rec.granted_ns = jl.granted_ns;
    rec.expiry_ns = jl.expiry_ns;
    for (size_t k = 0; k < feature.rules.size(); ++k) {
      rec.tokens.push_back(k < jl.tokens.size() ? jl.tokens[k] : 0);
      const int r = feature.rules[k];
      if (cc.rules[r].spec.kind == LimitKind::kConcurrency) {
        cred->CounterFor(r, jl.scope, true)->RestoreHeld(jl.expiry_ns, id->lo, jl.cost, now);
      }
    }
    LeaseShard& shard = ShardFor(*id);
    absl::MutexLock shard_lock(&shard.mu);
    shard.leases.insert_or_assign(*id, std::move(rec));
  }
  for (const JournalCooldown& jc : state->cooldowns) {
    if (jc.until_ns <= now) continue;
    Credential* cred = FindCredential(jc.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled->FindFeature(jc.feature) < 0) continue;
    Credential::Cooldown& c = cred->cooldowns[jc.feature];
    c.until_ns = std::max(c.until_ns, jc.until_ns);
  }
  for (const JournalOutside& jo : state->outside) {
    if (jo.until_ns <= now) continue;
    Credential* cred = FindCredential(jo.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled->rule_index.find(jo.limit) == cred->compiled->rule_index.end()) continue;
    cred->outside.insert_or_assign(
        jo.limit, OutsideEstimate(static_cast<double>(jo.outside_milli) / 1000.0, jo.at_ns,
                                  jo.cooldown_until_ns, static_cast<int>(jo.consecutive)));
  }
  return absl::OkStatus();
}

int64_t Ledger::CompactionTimeNs() const {
  const int64_t now = NowNs();
  return std::min(now, Shift(now, wall_offset_ns_.load(std::memory_order_relaxed)));
}

int64_t Ledger::Sweep() {
  const int64_t now = NowNs();
  int64_t dropped = 0;
  for (LeaseShard& shard : *leases_) {
    absl::MutexLock l(&shard.mu);
    const size_t erased = absl::erase_if(
        shard.leases, [now](const auto& entry) { return entry.second.expiry_ns <= now; });
    // Give the memory of a burst of leases back once it has passed.
    if (erased > 0 && shard.leases.size() * 4 < shard.leases.capacity()) shard.leases.rehash(0);
    dropped += static_cast<int64_t>(erased);
  }
  return dropped;
}

Policy Ledger::policy() const {
  Policy p;
  for (Credential* cred : table()->in_order) {
    absl::MutexLock lock(&cred->mu);
    CredentialSpec& c = p.credentials.emplace_back();
    c.name = cred->name;
    c.profile = cred->profile;
    c.features = cred->compiled->spec_features;
  }
  return p;
}

}  // namespace quotad

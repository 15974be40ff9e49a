#include "service/core/ledger.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/limits.h"

namespace quotad {
namespace {

absl::Time FromNs(int64_t ns) {
  if (ns == kInfiniteNs) return absl::InfiniteFuture();
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  return absl::FromUnixNanos(ns);
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

std::string LeaseId::ToString() const { return absl::StrFormat("%016x%016x", hi, lo); }

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

// One feature as the ledger runs it.
struct CompiledFeature {
  std::string name;
  std::vector<int> rules;  // own limits, then the unscoped limits of draws_on features
  int64_t min_capacity = std::numeric_limits<int64_t>::max();
  int min_capacity_rule = -1;
  int first_scoped_rule = -1;
  bool has_concurrency = false;
  absl::Duration default_lease_ttl;
  absl::Duration max_lease_ttl;
  int64_t max_scopes = 0;
};

// One credential's policy with its rules. Immutable once built.
struct CompiledCredential {
  explicit CompiledCredential(const CredentialSpec& s) : spec(s) {
    for (const FeatureSpec& f : spec.features) {
      feature_index[f.name] = static_cast<int>(features.size());
      CompiledFeature cf;
      cf.name = f.name;
      cf.default_lease_ttl = f.default_lease_ttl;
      cf.max_lease_ttl = f.max_lease_ttl;
      cf.max_scopes = f.max_scopes;
      for (const LimitSpec& l : f.limits) {
        const int index = static_cast<int>(rules.size());
        rules.emplace_back(l, absl::StrCat(f.name, ".", l.name));
        rule_index[rules.back().full_name] = index;
        cf.rules.push_back(index);
      }
      features.push_back(std::move(cf));
    }
    for (size_t fi = 0; fi < spec.features.size(); ++fi) {
      CompiledFeature& cf = features[fi];
      for (const std::string& other : spec.features[fi].draws_on) {
        for (int r : features[feature_index.at(other)].rules) {
          if (rules[r].spec.scoped || r < 0) continue;
          // Only the other feature's own limits, not what it draws on in turn.
          if (rules[r].full_name.rfind(absl::StrCat(other, "."), 0) != 0) continue;
          cf.rules.push_back(r);
        }
      }
      for (int r : cf.rules) {
        const Rule& rule = rules[r];
        if (rule.spec.scoped && cf.first_scoped_rule < 0) cf.first_scoped_rule = r;
        if (rule.spec.kind == LimitKind::kConcurrency) cf.has_concurrency = true;
        if (rule.spec.kind != LimitKind::kUnlimited && rule.spec.capacity < cf.min_capacity) {
          cf.min_capacity = rule.spec.capacity;
          cf.min_capacity_rule = r;
        }
      }
    }
  }

  CredentialSpec spec;
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

struct Ledger::Credential {
  explicit Credential(std::string n) : name(std::move(n)) {}

  // Counter of rule `r` for `scope`; nullptr when the rule is scoped, the scope is new and
  // `create` is false.
  Counter* CounterFor(int r, absl::string_view scope, bool create)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!compiled->rules[r].spec.scoped) return &counters[r];
    auto& map = scoped[r];
    auto it = map.find(scope);
    if (it != map.end()) return &it->second;
    if (!create) return nullptr;
    return &map[std::string(scope)];
  }

  const std::string name;
  absl::Mutex mu;
  const CompiledCredential* compiled ABSL_GUARDED_BY(mu) = nullptr;
  // Every version this credential was compiled to; leases point into them.
  std::vector<std::unique_ptr<const CompiledCredential>> versions ABSL_GUARDED_BY(mu);
  std::vector<Counter> counters ABSL_GUARDED_BY(mu);  // by rule index (unscoped rules)
  std::vector<absl::flat_hash_map<std::string, Counter>> scoped
      ABSL_GUARDED_BY(mu);  // by rule index (scoped rules)
};

struct Ledger::Table {
  absl::flat_hash_map<std::string, Credential*> by_name;
};

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

Ledger::Ledger(Clock* clock, LedgerOptions options)
    : clock_(clock),
      options_(options),
      leases_(std::make_unique<std::array<LeaseShard, kLeaseShards>>()) {}

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

absl::StatusOr<Decision> Ledger::Acquire(const AcquireRequest& req) {
  if (absl::Status s = CheckRequestName("credential", req.credential, true); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("feature", req.feature, true); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("scope", req.scope, false); !s.ok()) return s;
  if (absl::Status s = CheckRequestName("holder", req.holder, false); !s.ok()) return s;
  if (req.cost <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cost ", req.cost, " must be positive"));
  }
  if (req.lease_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl ", absl::FormatDuration(req.lease_ttl), " is negative"));
  }
  Credential* cred = FindCredential(req.credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", req.credential, "' is not configured"));
  }
  const int64_t now = absl::ToUnixNanos(clock_->Now());

  Decision d;
  LeaseRecord rec;
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
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
        cred->CounterFor(feature.first_scoped_rule, req.scope, false) == nullptr &&
        static_cast<int64_t>(cred->scoped[feature.first_scoped_rule].size()) >=
            feature.max_scopes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "scope '", req.scope, "' would exceed the ", feature.max_scopes,
          " scopes allowed for feature ", feature.name, " of credential ", req.credential));
    }

    absl::InlinedVector<Counter*, 4> counters;
    counters.reserve(feature.rules.size());
    for (int r : feature.rules) counters.push_back(cred->CounterFor(r, req.scope, true));

    int64_t retry_ns = std::numeric_limits<int64_t>::min();
    int limited_by = -1;
    for (size_t i = 0; i < counters.size(); ++i) {
      int64_t at = 0;
      const Rule& rule = cc.rules[feature.rules[i]];
      if (!counters[i]->Fits(rule, now, req.cost, &at) && at > retry_ns) {
        retry_ns = at;
        limited_by = feature.rules[i];
      }
    }
    if (limited_by >= 0) {
      d.granted = false;
      d.retry_at = FromNs(retry_ns);
      d.limited_by = cc.rules[limited_by].full_name;
    } else {
      if (options_.journal != nullptr) {
        if (absl::Status s = ReserveAhead(*cred, cc, feature, counters, req, now); !s.ok()) {
          return s;
        }
      }
      d.granted = true;
      d.lease_id = NewLeaseId();
      const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
      d.lease_expiry = FromNs(expiry);
      rec.credential = cred;
      rec.compiled = &cc;
      rec.feature = feature_index;
      rec.scope = std::string(req.scope);
      rec.holder = std::string(req.holder);
      rec.cost = req.cost;
      rec.granted_ns = now;
      rec.expiry_ns = expiry;
      for (size_t i = 0; i < counters.size(); ++i) {
        rec.tokens.push_back(
            counters[i]->Charge(cc.rules[feature.rules[i]], now, req.cost, d.lease_id.lo, expiry));
      }
      if (options_.journal != nullptr) {
        const absl::Status s =
            options_.journal->PutLease(ToJournal(d.lease_id, rec, feature.has_concurrency));
        if (!s.ok() && feature.has_concurrency) {
          // The slot would not survive a restart: undo the whole grant and fail closed.
          for (size_t i = 0; i < counters.size(); ++i) {
            const Rule& rule = cc.rules[feature.rules[i]];
            if (rule.spec.kind == LimitKind::kConcurrency) {
              counters[i]->Free(expiry, d.lease_id.lo);
            } else {
              counters[i]->Refund(rule, now, rec.tokens[i], req.cost);
            }
          }
          return absl::UnavailableError(
              absl::StrCat("state store failed, denying (fail closed): ", s.message()));
        }
      }
    }
    if (req.want_limits) {
      d.limits.reserve(counters.size());
      for (size_t i = 0; i < counters.size(); ++i) {
        const Rule& rule = cc.rules[feature.rules[i]];
        const CounterView v = counters[i]->View(rule, now);
        LimitStatus& st = d.limits.emplace_back();
        st.name = rule.full_name;
        if (rule.spec.scoped) st.scope = std::string(req.scope);
        st.kind = rule.spec.kind;
        st.capacity = rule.Capacity();
        st.used = v.used;
        st.remaining = v.remaining;
        st.reset = FromNs(v.reset_ns);
      }
    }
  }  // cred->mu
  if (d.granted) {
    // Outside the credential's lock: nobody can name this lease before Acquire returns.
    LeaseShard& shard = ShardFor(d.lease_id);
    absl::MutexLock shard_lock(&shard.mu);
    shard.leases.emplace(d.lease_id, std::move(rec));
  }
  return d;
}

absl::Status Ledger::ReserveAhead(const Credential& cred, const CompiledCredential& cc,
                                  const CompiledFeature& feature,
                                  absl::Span<Counter* const> counters, const AcquireRequest& req,
                                  int64_t now) {
  std::vector<Reservation> reservations;
  absl::InlinedVector<std::array<std::array<int64_t, 3>, 2>, 4> out(counters.size());
  absl::InlinedVector<int, 4> counts(counters.size(), 0);
  for (size_t i = 0; i < counters.size(); ++i) {
    const Rule& rule = cc.rules[feature.rules[i]];
    int64_t buf[2][3];
    if (!counters[i]->NeedsReservation(rule, now, req.cost, BlockFor(rule), buf, &counts[i])) {
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
  if (absl::Status s = options_.journal->Reserve(reservations); !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("state store failed, denying (fail closed): ", s.message()));
  }
  for (size_t i = 0; i < counters.size(); ++i) {
    if (counts[i] == 0) continue;
    int64_t buf[2][3];
    for (int k = 0; k < counts[i]; ++k) {
      for (int j = 0; j < 3; ++j) buf[k][j] = out[i][k][j];
    }
    counters[i]->Reserved(cc.rules[feature.rules[i]], now, buf, counts[i]);
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

absl::StatusOr<ReleaseResult> Ledger::Release(const LeaseId& id, std::optional<int64_t> used) {
  const int64_t now = absl::ToUnixNanos(clock_->Now());
  LeaseShard& shard = ShardFor(id);
  Credential* cred = nullptr;
  {
    absl::MutexLock l(&shard.mu);
    auto it = shard.leases.find(id);
    if (it == shard.leases.end() || it->second.expiry_ns <= now) {
      return absl::NotFoundError(
          absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
    }
    cred = it->second.credential;
  }
  absl::MutexLock cred_lock(&cred->mu);
  LeaseRecord rec;
  {
    absl::MutexLock l(&shard.mu);
    auto it = shard.leases.find(id);
    if (it == shard.leases.end() || it->second.expiry_ns <= now) {
      return absl::NotFoundError(
          absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
    }
    if (used.has_value() && (*used < 0 || *used > it->second.cost)) {
      return absl::InvalidArgumentError(
          absl::StrCat("used ", *used, " is outside 0..", it->second.cost, " (the lease's cost)"));
    }
    rec = std::move(it->second);
    shard.leases.erase(it);
  }
  if (options_.journal != nullptr) options_.journal->DeleteLease(id.ToString());
  ReleaseResult result;
  const CompiledCredential& then = *rec.compiled;
  const CompiledCredential& now_cc = *cred->compiled;
  const std::vector<int>& rules = then.features[rec.feature].rules;
  for (size_t i = 0; i < rules.size(); ++i) {
    int r = rules[i];
    if (&then != &now_cc) {
      auto it = now_cc.rule_index.find(then.rules[r].full_name);
      if (it == now_cc.rule_index.end()) continue;  // the limit is gone
      r = it->second;
    }
    const Rule& rule = now_cc.rules[r];
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter == nullptr) continue;
    if (rule.spec.kind == LimitKind::kConcurrency) {
      result.freed = std::max(result.freed, counter->Free(rec.expiry_ns, id.lo));
    } else if (used.has_value()) {
      result.refunded =
          std::max(result.refunded, counter->Refund(rule, now, rec.tokens[i], rec.cost - *used));
    }
  }
  return result;
}

absl::StatusOr<absl::Time> Ledger::Renew(const LeaseId& id, absl::Duration ttl) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " is negative"));
  }
  const int64_t now = absl::ToUnixNanos(clock_->Now());
  LeaseShard& shard = ShardFor(id);
  Credential* cred = nullptr;
  {
    absl::MutexLock l(&shard.mu);
    auto it = shard.leases.find(id);
    if (it == shard.leases.end() || it->second.expiry_ns <= now) {
      return absl::NotFoundError(
          absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
    }
    cred = it->second.credential;
  }
  absl::MutexLock cred_lock(&cred->mu);
  absl::MutexLock l(&shard.mu);
  auto it = shard.leases.find(id);
  if (it == shard.leases.end() || it->second.expiry_ns <= now) {
    return absl::NotFoundError(
        absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
  }
  LeaseRecord& rec = it->second;
  const CompiledCredential& then = *rec.compiled;
  const CompiledFeature& feature = then.features[rec.feature];
  if (ttl == absl::ZeroDuration()) ttl = feature.default_lease_ttl;
  if (ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
  if (options_.journal != nullptr && feature.has_concurrency) {
    // A renewal lost in a crash would free the slot early under a running job.
    if (absl::Status s = options_.journal->RenewLease(id.ToString(), expiry); !s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("state store failed, lease not renewed: ", s.message()));
    }
  }
  const CompiledCredential& now_cc = *cred->compiled;
  for (int r : feature.rules) {
    if (then.rules[r].spec.kind != LimitKind::kConcurrency) continue;
    if (&then != &now_cc) {
      auto found = now_cc.rule_index.find(then.rules[r].full_name);
      if (found == now_cc.rule_index.end()) continue;
      r = found->second;
    }
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter != nullptr) counter->MoveExpiry(rec.expiry_ns, id.lo, expiry);
  }
  rec.expiry_ns = expiry;
  return FromNs(expiry);
}

absl::StatusOr<std::vector<LimitStatus>> Ledger::Usage(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  const int64_t now = absl::ToUnixNanos(clock_->Now());
  std::vector<LimitStatus> out;
  absl::MutexLock lock(&cred->mu);
  const CompiledCredential& cc = *cred->compiled;
  auto add = [&](const Rule& rule, absl::string_view scope, Counter& counter) {
    const CounterView v = counter.View(rule, now);
    LimitStatus& st = out.emplace_back();
    st.name = rule.full_name;
    st.scope = std::string(scope);
    st.kind = rule.spec.kind;
    st.capacity = rule.Capacity();
    st.used = v.used;
    st.remaining = v.remaining;
    st.reset = FromNs(v.reset_ns);
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
  return out;
}

std::vector<LeaseInfo> Ledger::Leases(absl::string_view credential) {
  const int64_t now = absl::ToUnixNanos(clock_->Now());
  std::vector<LeaseInfo> out;
  for (LeaseShard& shard : *leases_) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [id, rec] : shard.leases) {
      if (rec.expiry_ns <= now) continue;
      if (!credential.empty() && rec.credential->name != credential) continue;
      LeaseInfo& info = out.emplace_back();
      info.id = id;
      info.credential = rec.credential->name;
      const CompiledFeature& f = rec.compiled->features[rec.feature];
      info.feature = f.name;
      info.scope = rec.scope;
      info.holder = rec.holder;
      info.cost = rec.cost;
      info.granted_at = FromNs(rec.granted_ns);
      info.expiry = FromNs(rec.expiry_ns);
      for (int r : f.rules) {
        if (rec.compiled->rules[r].spec.kind == LimitKind::kConcurrency) info.holds_slots = true;
      }
    }
  }
  std::sort(out.begin(), out.end(),
            [](const LeaseInfo& a, const LeaseInfo& b) { return a.granted_at < b.granted_at; });
  return out;
}

absl::Status Ledger::Reset(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  absl::MutexLock lock(&cred->mu);
  const CompiledCredential& cc = *cred->compiled;
  for (size_t r = 0; r < cc.rules.size(); ++r) {
    cred->counters[r].Clear(cc.rules[r]);
    for (auto& [scope, counter] : cred->scoped[r]) counter.Clear(cc.rules[r]);
  }
  return absl::OkStatus();
}

absl::Status Ledger::Reload(const Policy& policy) {
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  absl::MutexLock reload_lock(&reload_mu_);
  auto next = std::make_unique<Table>();
  for (const CredentialSpec& spec : policy.credentials) {
    auto compiled = std::make_unique<const CompiledCredential>(spec);
    auto& slot = credentials_[spec.name];
    if (slot == nullptr) slot = std::make_unique<Credential>(spec.name);
    Credential& cred = *slot;
    absl::MutexLock lock(&cred.mu);
    std::vector<Counter> counters(compiled->rules.size());
    std::vector<absl::flat_hash_map<std::string, Counter>> scoped(compiled->rules.size());
    if (cred.compiled != nullptr) {
      const CompiledCredential& old = *cred.compiled;
      for (size_t r = 0; r < compiled->rules.size(); ++r) {
        const Rule& rule = compiled->rules[r];
        auto it = old.rule_index.find(rule.full_name);
        if (it == old.rule_index.end() || !rule.SameShape(old.rules[it->second])) continue;
        counters[r] = std::move(cred.counters[it->second]);
        scoped[r] = std::move(cred.scoped[it->second]);
      }
    }
    cred.counters = std::move(counters);
    cred.scoped = std::move(scoped);
    cred.compiled = compiled.get();
    cred.versions.push_back(std::move(compiled));
    next->by_name[spec.name] = &cred;
  }
  table_.store(next.get(), std::memory_order_release);
  tables_.push_back(std::move(next));
  policy_ = policy;
  return absl::OkStatus();
}

absl::Status Ledger::Restore() {
  if (options_.journal == nullptr) return absl::OkStatus();
  absl::StatusOr<JournalState> state = options_.journal->Load();
  if (!state.ok()) return state.status();
  const int64_t now = absl::ToUnixNanos(clock_->Now());
  // Sliding blocks of one counter in reserve-time order, so each knows the next one's time.
  std::vector<Reservation>& rs = state->reservations;
  std::sort(rs.begin(), rs.end(), [](const Reservation& a, const Reservation& b) {
    return std::tie(a.key.credential, a.key.limit, a.key.scope, a.window_start_ns) <
           std::tie(b.key.credential, b.key.limit, b.key.scope, b.window_start_ns);
  });
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
    cred->CounterFor(it->second, r.key.scope, true)
        ->Restore(cc.rules[it->second], now, r.window_start_ns, r.until_ns, r.units, next_ns);
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
  return absl::OkStatus();
}

int64_t Ledger::Sweep() {
  const int64_t now = absl::ToUnixNanos(clock_->Now());
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
  absl::MutexLock lock(&reload_mu_);
  return policy_;
}

}  // namespace quotad

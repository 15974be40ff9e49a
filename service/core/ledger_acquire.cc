// Ledger::Acquire: validation, the decision under the credential's mutex, the write-ahead of
// reservations, and the lease's entry in the lease table before the mutex is released.
// Ledger::AcquireAll: the same for a batch under several credentials' mutexes, its reservations
// written once every item is granted, and the undo of a refused batch (UndoGrant, then
// ForgetUndone for the scopes and rolling windows its charges made).

#include <algorithm>
#include <array>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"
#include "service/core/names.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

absl::Status Ledger::ValidateRequest(const AcquireRequest& req, bool configured) {
  // A configured credential's name was checked when the policy was.
  if (!configured) {
    if (absl::Status s = CheckCredentialName(req.credential); !s.ok()) return s;
  }
  if (absl::Status s = CheckFeatureName(req.feature); !s.ok()) return s;
  if (absl::Status s = CheckScope(req.scope); !s.ok()) return s;
  if (absl::Status s = CheckHolder(req.holder); !s.ok()) return s;
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
  Credential* cred = FindCredential(req.credential);
  if (absl::Status s = ValidateRequest(req, cred != nullptr); !s.ok()) return s;
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", req.credential, "' is not configured"));
  }
  const int64_t now = NowNs();

  std::vector<Answer> answers;
  absl::StatusOr<Decision> result;
  LeaseRecord rec;
  {
    absl::MutexLock lock(&cred->mu);
    result =
        cred->AcquireOrQueue(*this, req, /*priority=*/0, now, &rec, /*waiter=*/nullptr, &answers);
    if (result.ok() && result->granted) InsertLease(result->lease_id, std::move(rec));
  }
  Deliver(answers);
  return result;
}

namespace {

// Holds the mutexes of several credentials, taken in address order (the one order every
// multi-credential lock follows, so two batches never deadlock) and released in reverse. The
// analysis cannot follow a run-time set of mutexes: the callers' accesses are checked by hand.
class CredentialLocks {
 public:
  explicit CredentialLocks(std::vector<Credential*> creds) ABSL_NO_THREAD_SAFETY_ANALYSIS
      : creds_(std::move(creds)) {
    std::sort(creds_.begin(), creds_.end());
    creds_.erase(std::unique(creds_.begin(), creds_.end()), creds_.end());
    for (Credential* c : creds_) c->mu.Lock();
  }
  ~CredentialLocks() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (auto it = creds_.rbegin(); it != creds_.rend(); ++it) (*it)->mu.Unlock();
  }
  CredentialLocks(const CredentialLocks&) = delete;
  CredentialLocks& operator=(const CredentialLocks&) = delete;

 private:
  std::vector<Credential*> creds_;
};

}  // namespace

std::vector<absl::StatusOr<Decision>> Ledger::AcquireAll(
    absl::Span<const AcquireRequest> requests) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  const int n = static_cast<int>(requests.size());
  std::vector<absl::StatusOr<Decision>> results(n);
  // Every item but `blocker` is denied in its name, with its retry time.
  auto deny_all_but = [&](int blocker, absl::Time retry_at) {
    for (int i = 0; i < n; ++i) {
      if (i == blocker) continue;
      Decision d;
      d.retry_at = retry_at;
      d.limited_by = absl::StrCat("all_or_nothing:items[", blocker, "]");
      results[i] = std::move(d);
    }
  };
  std::vector<Credential*> creds(n);
  for (int i = 0; i < n; ++i) {
    absl::Status s = ValidateRequest(requests[i]);
    if (s.ok() && (creds[i] = FindCredential(requests[i].credential)) == nullptr) {
      s = absl::NotFoundError(
          absl::StrCat("credential '", requests[i].credential, "' is not configured"));
    }
    if (!s.ok()) {
      results[i] = std::move(s);
      deny_all_but(i, absl::InfiniteFuture());
      return results;
    }
  }
  const int64_t now = NowNs();
  std::vector<LeaseRecord> recs(n);
  std::vector<LeaseId> ids(n);  // of the grants, to undo them
  std::vector<Answer> answers;  // waiters served on the way: theirs, delivered unlocked
  int granted = 0;  // items granted before the blocker (n: all); their grants are undone
  {
    CredentialLocks locks(creds);
    // What the items' counters were before any of the batch (or a waiter it serves) ran.
    std::vector<std::vector<Credential::Untouched>> notes(n);
    for (int i = 0; i < n; ++i) {
      const CompiledCredential& cc = *creds[i]->compiled;
      const int f = cc.FindFeature(requests[i].feature);
      if (f >= 0) creds[i]->NoteUntouched(*this, cc.features[f], requests[i].scope, now, &notes[i]);
    }
    for (; granted < n; ++granted) {
      const int i = granted;
      creds[i]->deferring_reservations = &requests[i];
      results[i] = creds[i]->AcquireOrQueue(*this, requests[i], /*priority=*/0, now, &recs[i],
                                            /*waiter=*/nullptr, &answers);
      creds[i]->deferring_reservations = nullptr;
      if (!results[i].ok() || !results[i]->granted) break;
      ids[i] = results[i]->lease_id;
    }
    int charged = granted;  // items whose charges are to be undone when the batch is refused
    if (granted == n && options_.journal != nullptr) {
      // Every item is granted: write what their charges need ahead, all in one Reserve. When
      // the journal fails, the first item that needed one answers for it, and all are undone.
      std::vector<Reservation> reservations;
      std::vector<Credential::Deferred> deferred;
      int first_needing = -1;
      for (int i = 0; i < n; ++i) {
        const size_t before = reservations.size();
        creds[i]->ReserveCharged(*this, recs[i], now, &reservations, &deferred);
        if (first_needing < 0 && reservations.size() > before) first_needing = i;
      }
      if (!reservations.empty()) {
        if (absl::Status s = options_.journal->Reserve(reservations); s.ok()) {
          for (const Credential::Deferred& d : deferred) {
            d.counter->Reserved(*d.rule, RuleTime(*d.rule, now), d.need);
          }
        } else {
          granted = first_needing;
          results[granted] = absl::UnavailableError(
              absl::StrCat("state store failed, denying (fail closed): ", s.message()));
        }
      }
    }
    if (granted < n) {
      // Nobody has seen the charges yet: take them back, the latest first (a token bucket's
      // refund is exact only in that order), then the scopes and rolling windows they made.
      for (int j = charged - 1; j >= 0; --j) {
        creds[j]->UndoGrant(*this, ids[j], recs[j], now);
      }
      for (int i = 0; i < n; ++i) {
        const bool others_granted =
            std::any_of(answers.begin(), answers.end(), [&](const Answer& a) {
              return a.granted_on == creds[i];
            });
        creds[i]->ForgetUndone(*this, notes[i], others_granted, now);
      }
    } else {
      for (int i = 0; i < n; ++i) InsertLease(results[i]->lease_id, std::move(recs[i]));
    }
  }
  if (granted < n) {
    deny_all_but(granted, results[granted].ok() ? results[granted]->retry_at
                                                : absl::InfiniteFuture());
  }
  Deliver(answers);
  return results;
}

void Ledger::InsertLease(const LeaseId& id, LeaseRecord rec) {
  // Under the credential's mutex (see the locking contract in ledger_internal.h): a reload that
  // makes the lease's limit a concurrency limit then finds it holding its slot.
  if (options_.journal != nullptr && !rec.compiled->features[rec.feature].has_concurrency) {
    options_.journal->PutLease(ToJournal(id, rec, false)).IgnoreError();  // queued; may be lost
  }
  leases_->Insert(id, std::move(rec));
}

absl::StatusOr<Decision> Credential::Acquire(Ledger& l, const AcquireRequest& req, int64_t now,
                                             LeaseRecord* rec) {
  Decision d;
  const CompiledCredential& cc = *compiled;
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
      CounterFor(feature.first_scoped_rule, req.scope, false) == nullptr &&
      static_cast<int64_t>(scoped[feature.first_scoped_rule].size()) >= feature.max_scopes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "scope '", req.scope, "' would exceed the ", feature.max_scopes,
        " scopes allowed for feature ", feature.name, " of credential ", req.credential));
  }

  if (!cooldowns.empty()) {
    auto cool = cooldowns.find(feature.name);
    if (cool != cooldowns.end() && now < cool->second.until_ns) {
      d.retry_at = l.ToWall(cool->second.until_ns);
      d.limited_by = absl::StrCat(feature.name, ".cooldown");
      return d;
    }
  }
  // A limit the upstream throttled cools down every feature that charges it.
  if (const int64_t until = LimitCooldown(cc, feature, now); until > now) {
    d.retry_at = l.ToWall(until);
    d.limited_by = absl::StrCat(feature.name, ".cooldown");
    return d;
  }

  // A grant that writes its lease under the lock may be rolled back (below): note first what
  // its charge would change beyond units.
  std::vector<Untouched> notes;
  if (l.options_.journal != nullptr && feature.has_concurrency) {
    NoteUntouched(l, feature, req.scope, now, &notes);
  }
  absl::InlinedVector<Counter*, 4> feature_counters;
  feature_counters.reserve(feature.rules.size());
  absl::InlinedVector<int, 2> created_scopes;  // rules whose counter for this scope is new
  for (int r : feature.rules) {
    bool created;
    feature_counters.push_back(CounterFor(r, req.scope, true, &created));
    if (created) created_scopes.push_back(r);
  }

  int64_t retry_ns = std::numeric_limits<int64_t>::min();
  int limited_by = -1;
  for (size_t i = 0; i < feature_counters.size(); ++i) {
    int64_t at = 0;
    const Rule& rule = cc.rules[feature.rules[i]];
    // Units learnt to be used from outside quotad are held back as if charged.
    const int64_t hold = HoldBack(rule, req.cost, now);
    if (!feature_counters[i]->Fits(rule, l.RuleTime(rule, now), req.cost + hold, &at) &&
        l.FromRuleTime(rule, at) > retry_ns) {
      retry_ns = l.FromRuleTime(rule, at);
      limited_by = feature.rules[i];
    }
  }
  // Limits a reload changed: the old rule's counter holds until its window drains.
  absl::InlinedVector<Credential::Retired*, 2> charged_retired;
  if (!retired.empty()) {
    retired.erase(std::remove_if(retired.begin(), retired.end(),
                                 [now](const Credential::Retired& r) { return r.until_ns <= now; }),
                  retired.end());
    for (Credential::Retired& old : retired) {
      if (!ChargesRetired(old, feature, req.scope)) continue;
      int64_t at = 0;
      if (!old.counter.Fits(*old.old_rule, l.RuleTime(*old.old_rule, now), req.cost, &at)) {
        at = std::min(l.FromRuleTime(*old.old_rule, at), old.until_ns);
        if (at > retry_ns) {
          retry_ns = at;
          limited_by = old.rule;
        }
      }
      charged_retired.push_back(&old);
    }
  }
  if (limited_by >= 0) {
    d.granted = false;
    d.retry_at = l.ToWall(retry_ns);
    d.limited_by = cc.rules[limited_by].full_name;
  } else {
    if (l.options_.journal != nullptr && &req != deferring_reservations) {
      if (absl::Status s = ReserveAhead(l, cc, feature, feature_counters, req, now); !s.ok()) {
        for (int r : created_scopes) scoped[r].erase(req.scope);  // as a denial leaves none
        return s;
      }
    }
    d.granted = true;
    d.lease_id = NewLeaseId();
    const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
    d.lease_expiry = l.ToWall(expiry);
    rec->credential = this;
    rec->compiled = versions.back().compiled;  // the version in force: cc
    rec->version_seq = versions.back().seq;
    rec->feature = feature_index;
    rec->scope = std::string(req.scope);
    rec->holder = std::string(req.holder);
    rec->cost = req.cost;
    rec->granted_ns = now;
    rec->expiry_ns = expiry;
    for (size_t i = 0; i < feature_counters.size(); ++i) {
      rec->tokens.push_back(feature_counters[i]->Charge(cc.rules[feature.rules[i]],
                                                        l.RuleTime(cc.rules[feature.rules[i]], now),
                                                        req.cost, d.lease_id.lo, expiry));
    }
    for (Credential::Retired* old : charged_retired) {
      old->counter.Charge(*old->old_rule, l.RuleTime(*old->old_rule, now), req.cost, d.lease_id.lo,
                          expiry);
    }
    // A lease holding slots is written before the grant is answered; one that only allows a
    // refund is queued by InsertLease, once the grant stands (losing it loses a refund).
    rec->journaled_with_slots = feature.has_concurrency;
    if (l.options_.journal != nullptr && feature.has_concurrency) {
      const absl::Status s = l.options_.journal->PutLease(ToJournal(d.lease_id, *rec, true));
      if (!s.ok()) {
        // The slot would not survive a restart: undo the whole grant and fail closed.
        rec->journaled_with_slots = false;  // no row was written
        UndoGrant(l, d.lease_id, *rec, now);
        ForgetUndone(l, notes, /*others_granted=*/false, now);
        return absl::UnavailableError(
            absl::StrCat("state store failed, denying (fail closed): ", s.message()));
      }
    }
  }
  if (req.want_limits) {
    d.limits.reserve(feature_counters.size());
    for (size_t i = 0; i < feature_counters.size(); ++i) {
      const Rule& rule = cc.rules[feature.rules[i]];
      const CounterView v = feature_counters[i]->View(rule, l.RuleTime(rule, now));
      LimitStatus& st = d.limits.emplace_back();
      st.name = rule.full_name;
      if (rule.spec.scoped) st.scope = std::string(req.scope);
      st.kind = rule.spec.kind;
      st.capacity = rule.Capacity();
      st.used = v.used;
      st.outside_estimate = HoldBack(rule, 0, now);
      st.remaining = std::max<int64_t>(0, v.remaining - st.outside_estimate);
      st.reset = l.ToWall(l.FromRuleTime(rule, v.reset_ns));
    }
  }
  if (!d.granted) {
    // A denied request leaves no new scope behind (max_scopes counts scopes in use).
    for (int r : created_scopes) scoped[r].erase(req.scope);
  }
  return d;
}

void Credential::UndoGrant(Ledger& l, const LeaseId& id, const LeaseRecord& rec, int64_t now) {
  const CompiledCredential& cc = *rec.compiled;
  const CompiledFeature& feature = cc.features[rec.feature];
  for (size_t i = 0; i < feature.rules.size(); ++i) {
    const Rule& rule = cc.rules[feature.rules[i]];
    Counter* counter = CounterFor(feature.rules[i], rec.scope, false);
    if (counter == nullptr) continue;
    if (rule.spec.kind == LimitKind::kConcurrency) {
      counter->Free(rec.expiry_ns, id.lo);
    } else {
      counter->Refund(rule, l.RuleTime(rule, now), rec.tokens[i], rec.cost, rec.cost, now);
    }
  }
  for (Credential::Retired& old : retired) {
    if (ChargesRetired(old, feature, rec.scope)) old.counter.Free(rec.expiry_ns, id.lo);
  }
  if (rec.journaled_with_slots && l.options_.journal != nullptr) {
    l.options_.journal->DeleteLease(id.ToString());
  }
}

void Credential::NoteUntouched(const Ledger& l, const CompiledFeature& feature,
                               absl::string_view scope, int64_t now,
                               std::vector<Untouched>* notes) {
  for (int r : feature.rules) {
    const Rule& rule = compiled->rules[r];
    const bool rolling = rule.spec.kind == LimitKind::kRolling;
    if (!rule.spec.scoped && !rolling) continue;
    Counter* counter = CounterFor(r, scope, false);
    Untouched& note = notes->emplace_back();
    note.rule = r;
    note.scope = rule.spec.scoped ? std::string(scope) : "";
    note.absent = counter == nullptr;
    note.rolling_closed =
        rolling && (counter == nullptr ||
                    counter->View(rule, l.RuleTime(rule, now)).reset_ns == kInfiniteNs);
  }
}

void Credential::ForgetUndone(const Ledger& l, absl::Span<const Untouched> notes,
                              bool others_granted, int64_t now) {
  for (const Untouched& note : notes) {
    const Rule& rule = compiled->rules[note.rule];
    Counter* counter = CounterFor(note.rule, note.scope, false);
    if (counter == nullptr) continue;
    // Units the charges could not give back (a refund refused) stay counted: the counter stays.
    const bool empty = counter->View(rule, l.RuleTime(rule, now)).used == 0;
    if (note.absent && (!others_granted || empty)) {
      scoped[note.rule].erase(note.scope);
    } else if (note.rolling_closed && empty) {
      counter->Clear(rule);  // closes the window; nothing was in it
    }
  }
}

void Credential::ReserveCharged(const Ledger& l, const LeaseRecord& rec, int64_t now,
                                std::vector<Reservation>* reservations,
                                std::vector<Deferred>* counters) {
  const CompiledCredential& cc = *rec.compiled;
  for (int r : cc.features[rec.feature].rules) {
    const Rule& rule = cc.rules[r];
    Counter* counter = CounterFor(r, rec.scope, false);
    if (counter == nullptr ||
        std::any_of(counters->begin(), counters->end(),
                    [&](const Deferred& d) { return d.counter == counter; })) {
      continue;
    }
    ReservationNeed need;
    if (!counter->NeedsReservation(rule, l.RuleTime(rule, now), 0, l.BlockFor(rule), &need)) {
      continue;
    }
    for (const ReservationBlock& b : need.blocks()) {
      reservations->push_back(Reservation{
          CounterKey{name, rule.full_name, rule.spec.scoped ? rec.scope : ""}, b.window_start_ns,
          b.until_ns, b.units});
    }
    counters->push_back(Deferred{counter, &rule, need});
  }
}

absl::Status Credential::ReserveAhead(const Ledger& l, const CompiledCredential& cc,
                                      const CompiledFeature& feature,
                                      absl::Span<Counter* const> feature_counters,
                                      const AcquireRequest& req, int64_t now) const {
  std::vector<Reservation> reservations;
  absl::InlinedVector<ReservationNeed, 4> needs(feature_counters.size());
  for (size_t i = 0; i < feature_counters.size(); ++i) {
    const Rule& rule = cc.rules[feature.rules[i]];
    if (!feature_counters[i]->NeedsReservation(rule, l.RuleTime(rule, now), req.cost,
                                               l.BlockFor(rule), &needs[i])) {
      continue;
    }
    for (const ReservationBlock& b : needs[i].blocks()) {
      reservations.push_back(Reservation{
          CounterKey{name, rule.full_name, rule.spec.scoped ? std::string(req.scope) : ""},
          b.window_start_ns, b.until_ns, b.units});
    }
  }
  if (reservations.empty()) return absl::OkStatus();
  if (absl::Status s = l.options_.journal->Reserve(reservations); !s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("state store failed, denying (fail closed): ", s.message()));
  }
  for (size_t i = 0; i < feature_counters.size(); ++i) {
    if (needs[i].count == 0) continue;
    const Rule& rule = cc.rules[feature.rules[i]];
    feature_counters[i]->Reserved(rule, l.RuleTime(rule, now), needs[i]);
  }
  return absl::OkStatus();
}

}  // namespace quotad

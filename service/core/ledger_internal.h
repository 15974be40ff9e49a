#ifndef QUOTAD_SERVICE_CORE_LEDGER_INTERNAL_H_
#define QUOTAD_SERVICE_CORE_LEDGER_INTERNAL_H_

// Internal to the ledger's .cc files: the state of one credential, the table of credentials,
// and what the operation groups share. Not for use outside service/core/ledger*.cc.
//
// Locking contract (checked by clang's -Wthread-safety; see core_thread_safety_analysis):
// - Credential::mu guards everything mutable in a Credential: its compiled policy, counters,
//   what reloads retired, cooldowns, outside estimates and its wait queue. The operations that
//   run under it are Credential's member functions, each ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu).
// - Lock order: Ledger::reload_mu_, then a Credential::mu, then at most one of a lease shard's
//   mutex (lease_table.h), Ledger::wait_mu_ or Ledger::jitter_mu_. Two credentials' mutexes at
//   once only in Ledger::AcquireAll, which takes them in address order (CredentialLocks) and
//   holds no other lock while taking them; every other path holds one at most.
// - Nothing calls out (a WaitCallback, the wake hook) with a lock held: answers are collected as
//   Answer and delivered by Ledger::Deliver after the credential's mutex is released.
// - A grant's lease enters the lease table (Ledger::InsertLease) before its credential's mutex is
//   released: a reload scans the table under that mutex for the leases that hold slots of the
//   limits it builds anew, and must not miss one granted just before it.
// - A CredentialTable is immutable once published; the ledger keeps every Credential, every
//   table and every CompiledCredential version alive as long as it lives, so raw pointers to
//   them (in tables, leases and WaitTickets) never dangle.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "service/core/compiled_policy.h"
#include "service/core/journal.h"
#include "service/core/lease_id.h"
#include "service/core/lease_table.h"
#include "service/core/ledger.h"
#include "service/core/limits.h"
#include "service/core/outside_estimate.h"
#include "service/core/wait_queue.h"

namespace quotad {
namespace ledger_internal {

// a + b, saturating at the ends of int64.
inline int64_t SatAdd(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) {
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }
  return out;
}

// An answer to deliver once the credential's lock is released.
struct Answer {
  WaitCallback done;
  absl::StatusOr<Decision> result;
  Credential* granted_on = nullptr;  // a grant's credential; its lease is in the table already
};

// One configured credential: its counters and everything the ledger learnt about it. Created by
// the first reload that names it and never destroyed before the ledger. Thread-safe under `mu`
// (see the locking contract above); `name` is immutable.
struct Credential {
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
  // The versions this credential was compiled to that its counters still point into (the one in
  // force, last, and older ones named by a retired or a removed counter); a reload drops the
  // others (PruneVersions). Leases hold their own version. `seq` numbers the versions in the
  // order they came.
  struct Version {
    std::shared_ptr<const CompiledCredential> compiled;
    uint64_t seq = 0;
  };
  absl::InlinedVector<Version, 1> versions ABSL_GUARDED_BY(mu);  // mostly one: no allocation
  uint64_t next_version_seq ABSL_GUARDED_BY(mu) = 0;
  // The profile's name, in Ledger::profiles_ (one string however many credentials name it).
  const std::string* profile ABSL_GUARDED_BY(mu) = nullptr;
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
    const Rule* old_rule = nullptr;  // in a version of `versions`, kept while this lives
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
    const Rule* rule = nullptr;  // in a version of `versions`, kept while this lives
    Counter counter;
    absl::flat_hash_map<std::string, Counter> scoped;
  };
  absl::flat_hash_map<std::string, Removed> removed ABSL_GUARDED_BY(mu);
  // Journal records a restore could not place (this credential, or the limit or feature they
  // name, was not configured then), kept so that a reload that configures it again restores
  // them as a restart with that policy would (Ledger::RestorePending): the running ledger would
  // have kept their counts (`removed`, a dropped credential's counters). Each goes once applied
  // or past its end; they are a part of the journal read at start-up, so bounded by it.
  struct Unplaced {
    // By limit name; the records of each counter in reserve-time order.
    absl::flat_hash_map<std::string, std::vector<Reservation>> reservations;
    std::vector<JournalLease> leases;
    std::vector<JournalCooldown> cooldowns;
    std::vector<JournalOutside> outside;
    bool empty() const {
      return reservations.empty() && leases.empty() && cooldowns.empty() && outside.empty();
    }
  };
  Unplaced unplaced ABSL_GUARDED_BY(mu);
  // By limit name: the seq of the last version whose reload rebuilt its counters (the limit's
  // shape, scoping or a raised capacity changed).
  absl::flat_hash_map<std::string, uint64_t> rebuilt_at ABSL_GUARDED_BY(mu);
  // Whether the counters of `limit` were rebuilt after the version numbered `seq` was in force:
  // refund tokens made under it no longer name anything in them.
  bool RebuiltSince(const std::string& limit, uint64_t seq) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = rebuilt_at.find(limit);
    return it != rebuilt_at.end() && it->second > seq;
  }
  // Drops the versions the counters no longer point into: neither the one in force nor a
  // retired or removed counter's rule.
  void PruneVersions() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
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
  // The item of Ledger::AcquireAll being decided (null: none). Its Acquire charges without
  // writing the high-water marks ahead; the batch writes them, in one Reserve, once every item
  // is granted (ReserveCharged), so that a refused batch leaves none in the journal: restored,
  // they would stand for charges the provider never saw (a rolling window it never opened).
  const AcquireRequest* deferring_reservations ABSL_GUARDED_BY(mu) = nullptr;
  WaiterMap waiters ABSL_GUARDED_BY(mu);
  // When a waiter may next be served (its retry time or deadline), as last computed.
  int64_t next_serve_ns ABSL_GUARDED_BY(mu) = kInfiniteNs;

  // ---- Operations under `mu`. `l` is the ledger that owns this credential; they read its
  // options, its time and its waiting set (whose wait_mu_ and jitter_mu_ come after `mu`).

  // The decision (ledger_acquire.cc): charges every limit of the feature or none; when granted,
  // fills *rec (to insert into the lease table after `mu` is released).
  absl::StatusOr<Decision> Acquire(Ledger& l, const AcquireRequest& req, int64_t now,
                                   LeaseRecord* rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Whether a grant of `feature` for `scope` also charges the retired counter `old`.
  static bool ChargesRetired(const Retired& old, const CompiledFeature& feature,
                             absl::string_view scope) {
    return (old.all_scopes || old.scope == scope) &&
           std::find(feature.rules.begin(), feature.rules.end(), old.rule) != feature.rules.end();
  }
  // Takes back everything Acquire charged for the grant of lease `id` (filled into `rec`), at
  // the instant `now` it was made, with `mu` held since: frees its slots, refunds its units on
  // the feature's counters, frees it on the retired ones (whose tokens Acquire does not keep:
  // a retired window keeps the units, an under-grant until it drains), and deletes its journal
  // row if it wrote one. Gives back at most what was charged, never more.
  void UndoGrant(Ledger& l, const LeaseId& id, const LeaseRecord& rec, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // A counter a charge may touch, as it was before: whether its scope had no counter yet, and
  // (rolling) whether its window was closed. Undoing the charge takes back what it made of them
  // (ForgetUndone): a refund gives back units, not the scope the charge created (which
  // max_scopes counts) nor the window it opened (which would then end before the one the
  // provider opens at the first request it does see).
  struct Untouched {
    int rule = -1;
    std::string scope;
    bool absent = false;          // scoped, and no counter for the scope yet
    bool rolling_closed = false;  // rolling, and its window closed (or no counter yet)
  };
  // Appends the state of the counters a charge of `feature` for `scope` at `now` would touch.
  void NoteUntouched(const Ledger& l, const CompiledFeature& feature, absl::string_view scope,
                     int64_t now, std::vector<Untouched>* notes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // After every charge made since `notes` were taken was undone (UndoGrant), at the same `now`:
  // drops the scope counters that did not exist then (all of them when `others_granted` is
  // false, i.e. nothing but the undone charges went into them; else those that hold nothing),
  // and closes the rolling windows that were closed then and hold nothing now. A closed window
  // whose guard carried units stays open from `now` (Counter keeps no way back to its old
  // bounds and carry; ledger_acquire_all_attack_test, DISABLED_...CarriedRollingWindow...).
  void ForgetUndone(const Ledger& l, absl::Span<const Untouched> notes, bool others_granted,
                    int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The high-water marks the counters charged by the grant `rec` need now that the charge is
  // made (Counter::NeedsReservation with cost 0): appended to *reservations, each counter once
  // (*counters holds those already asked), with what to record once they are durable.
  struct Deferred {
    Counter* counter = nullptr;
    const Rule* rule = nullptr;
    ReservationNeed need;
  };
  void ReserveCharged(const Ledger& l, const LeaseRecord& rec, int64_t now,
                      std::vector<Reservation>* reservations, std::vector<Deferred>* counters)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Writes the high-water marks the charge needs ahead of it; kUnavailable when it cannot.
  absl::Status ReserveAhead(const Ledger& l, const CompiledCredential& cc,
                            const CompiledFeature& feature,
                            absl::Span<Counter* const> feature_counters, const AcquireRequest& req,
                            int64_t now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // The wait queue (ledger_wait.cc). Serves the waiters whose time has come first; then grants
  // or denies; or, when `waiter` is non-null and the request cannot be granted now, parks it
  // (taking *waiter, which becomes null). A request never passes a waiter of its priority or
  // higher that needs one of the same counters.
  absl::StatusOr<Decision> AcquireOrQueue(Ledger& l, const AcquireRequest& req, int priority,
                                          int64_t now, LeaseRecord* rec,
                                          std::unique_ptr<Waiter>* waiter,
                                          std::vector<Answer>* answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Serves the waiters in order: grants what fits, denies what reached its deadline; a waiter
  // that must wait holds back every later one that needs one of its counters. Returns when it
  // needs serving next.
  int64_t ServeWaiters(Ledger& l, int64_t now, std::vector<Answer>* answers)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Learning from throttles (ledger_report.cc). The limits a throttle of `feature` is attributed
  // to: `named` (the limit the answer's headers describe, -1: none) when the answer says it is
  // full; else the limits closest to full by quotad's count plus its outside estimate (ties
  // within 2% of the capacity), leaving out `named` when the answer says it has room.
  std::vector<int> AttributeThrottle(const Ledger& l, const CompiledCredential& cc,
                                     const CompiledFeature& feature, int named,
                                     std::optional<bool> named_full, int64_t now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Learns from a throttle attributed to rule `r`: the outside estimate shrinks its effective
  // capacity and the limit cools down until `retry_ns` (the upstream's word, 0: none) or for a
  // back-off no longer than the limit takes to release units. The estimate shrinks once per
  // round trip, like TCP's window: not for a request sent (`sent_ns`; none: unknown) before the
  // last decrease, whose throttle says nothing the decrease did not take into account. Returns
  // the cooldown's end.
  int64_t LearnThrottle(Ledger& l, const CompiledCredential& cc, const CompiledFeature& feature,
                        int r, int64_t retry_ns, bool counted, std::optional<int64_t> sent_ns,
                        int64_t now, ReportResult* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Writes what the credential knows of limit `rule` ahead (Journal::PutOutside).
  void WriteOutside(const Ledger& l, const Rule& rule, const OutsideEstimate& e,
                    ReportResult* out) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

// The credentials of one policy. Immutable once published (Ledger::table_).
struct CredentialTable {
  // Keys are copies: a lookup compares in the table, not in the Credential (1M credentials).
  absl::flat_hash_map<std::string, Credential*> by_name;
  std::vector<Credential*> in_order;  // as configured
};

// The lease as the journal stores it.
JournalLease ToJournal(const LeaseId& id, const LeaseRecord& rec, bool holds_slots);

// Writes a lease that holds slots now but is journaled refund-only (a reload made its limit a
// concurrency one, before or after a restart) as one that holds slots, until `expiry_ns`: its
// refund-only record is released first, so that it cannot outlive the row's own release.
// Durable before return; sets rec->journaled_with_slots.
absl::Status JournalWithSlots(Journal& journal, const LeaseId& id, LeaseRecord* rec,
                              int64_t expiry_ns);

}  // namespace ledger_internal
}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LEDGER_INTERNAL_H_

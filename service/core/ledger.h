#ifndef QUOTAD_SERVICE_CORE_LEDGER_H_
#define QUOTAD_SERVICE_CORE_LEDGER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "service/core/clock.h"
#include "service/core/journal.h"
#include "service/core/lease_id.h"
#include "service/core/policy.h"
#include "service/core/upstream.h"

namespace quotad {

struct Rule;  // limits.h

// Internal to the ledger (ledger_internal.h): one credential's state and the operations that run
// under its mutex, the credential table, the lease table, a waiting request's answer.
namespace ledger_internal {
struct Credential;
struct CredentialTable;
class LeaseTable;
struct LeaseRecord;
struct Answer;
}  // namespace ledger_internal

// The strings are views: what they name must outlive the Acquire call.
struct AcquireRequest {
  absl::string_view credential;
  absl::string_view feature;
  absl::string_view scope;  // empty: no scope; scoped limits then count the "" scope
  int64_t cost = 1;
  absl::Duration lease_ttl = absl::ZeroDuration();  // zero: the feature's default
  absl::string_view holder;                         // who holds the lease, for operators
  bool want_limits = true;                          // fill Decision::limits
};

// The state of one limit (and scope) as seen by a decision or a usage snapshot.
struct LimitStatus {
  std::string name;   // "feature.limit"
  std::string scope;  // set for scoped limits
  LimitKind kind = LimitKind::kSliding;
  int64_t capacity = 0;  // INT64_MAX for unlimited
  int64_t used = 0;      // units in the current window / held slots
  int64_t remaining = 0;
  absl::Time reset = absl::InfiniteFuture();  // when the current window ends / next unit frees
  // Not a limit but a feature cooling down after a throttle answer ("feature.cooldown"): it
  // grants nothing before `reset`. Capacity, used and remaining are 0.
  bool cooldown = false;
  // Units held back for use from outside quotad, as learnt from throttles (see Report);
  // `remaining` already leaves them out. 0 when nothing was learnt or it has decayed.
  int64_t outside_estimate = 0;
};

struct Decision {
  bool granted = false;
  LeaseId lease_id;                            // set when granted
  absl::Time lease_expiry;                     // set when granted
  absl::Time retry_at = absl::InfinitePast();  // set when denied: earliest possible grant
  std::string limited_by;                      // set when denied: "feature.limit"
  std::vector<LimitStatus> limits;             // every limit touched, when asked for
};

// A live lease, for operators.
struct LeaseInfo {
  LeaseId id;
  std::string credential;
  std::string feature;
  std::string scope;
  std::string holder;
  int64_t cost = 0;
  absl::Time granted_at;
  absl::Time expiry;
  bool holds_slots = false;  // the feature has a concurrency limit
};

// What a worker saw from the upstream, as it passes it on.
struct UpstreamAnswer {
  absl::string_view credential;
  absl::string_view feature;
  int http_status = 0;
  UpstreamHeaders headers;
  absl::string_view body;
  absl::Time observed_at = absl::InfinitePast();  // InfinitePast: now
  // When the request the answer belongs to was sent (InfinitePast: unknown, taken as
  // observed_at). The upstream counted it between then and observed_at: a sliding window's count
  // is compared with quotad's charges from one span before this on.
  absl::Time sent_at = absl::InfinitePast();
};

// What a Report changed.
struct ReportResult {
  // One line per counter whose used units were raised to the upstream's, e.g.
  // "requests.per_minute used 12 -> 40".
  std::vector<std::string> adopted;
  // Set when the answer was a throttle: the feature grants nothing before this.
  absl::Time cooldown_until = absl::InfinitePast();
  // Why parts of the answer were not used.
  std::vector<std::string> warnings;
};

// The requests waiting in one queue (credential, feature, scope), for operators.
struct QueueInfo {
  std::string credential;
  std::string feature;
  std::string scope;
  int64_t waiters = 0;
  absl::Time retry_at = absl::InfiniteFuture();  // when the head could be granted, as last computed
  std::string limited_by;                        // the limit that holds the head back
};

struct ReleaseResult {
  int64_t refunded = 0;  // units given back to window limits
  int64_t freed = 0;     // concurrency slots freed
};

struct LedgerOptions {
  // Where high-water marks and leases are written ahead; not owned, must outlive the ledger.
  // nullptr keeps everything in memory only.
  Journal* journal = nullptr;
  // Units reserved ahead per counter and window, as a fraction of its capacity (of its rate
  // for token buckets), at least 1 and at most max_reserve_block. A crash can leave at most
  // this many units of each window unused; a smaller block means more journal writes.
  double reserve_fraction = 0.01;
  int64_t max_reserve_block = 1000;
  // At most this many requests wait per credential; beyond, AcquireOrWait answers
  // kResourceExhausted.
  int64_t max_waiters_per_credential = 10000;
  // Called (outside the ledger's locks) when a request is parked, with the time by which Pump()
  // must run for it. The owner of the timer that calls Pump() sets this.
  std::function<void(absl::Time)> wake;
  // Seed of the back-off jitter; 0 draws one from the OS. Set it for reproducible simulations.
  uint64_t jitter_seed = 0;
};

// Answers a request that waited. Called exactly once, from whichever thread served it.
using WaitCallback = absl::AnyInvocable<void(absl::StatusOr<Decision>)>;

// Names a parked request, for Cancel().
struct WaitTicket {
  ledger_internal::Credential* credential = nullptr;  // whose queue; nullptr: not parked
  int priority = 0;
  uint64_t id = 0;
};

// Holds the counters of every credential and decides grants.
//
// Each credential has its own mutex, so a hot credential does not serialise unrelated ones.
// Leases live in a sharded table keyed by id. Thread-safe. Does not own `clock`, which must
// outlive the ledger.
//
// Locking: reload_mu_ (reloads only), then a credential's mutex (AcquireAll: several, in
// address order), then one of: a lease shard's mutex (lease_table.h), wait_mu_, jitter_mu_. Answers to waiting requests are delivered with no
// lock held. The implementation is split by operation group: ledger.cc (creation, time,
// CompactionTimeNs, policy), ledger_acquire.cc (Acquire, AcquireAll), ledger_wait.cc (AcquireOrWait, Pump,
// Cancel, Queues), ledger_lease.cc (Release, Renew, Leases, FindLease, Sweep), ledger_report.cc
// (Report, Usage), ledger_reload.cc (Reload, Reset), ledger_restore.cc (Restore,
// CreateRestored).
class Ledger {
 public:
  // kInvalidArgument when the policy does not validate.
  static absl::StatusOr<std::unique_ptr<Ledger>> Create(const Policy& policy, Clock* clock,
                                                        LedgerOptions options = {});

  // Reads the journal back (reservations as charged, leases as held) into a new ledger, before
  // it serves. Records of credentials, limits or features not configured now are kept, and
  // restored as they would have been at start-up by the first reload that configures them
  // again (at its time; those past their end by then are dropped): a restart forgets nothing
  // the running ledger would have kept.
  absl::Status Restore();

  // Create, then Restore, with the journal read (Journal::Load) on a thread of its own while
  // the policy compiles: the same ledger in less time at start-up. Without a journal, Create.
  // The journal must not be written meanwhile (nothing else has the ledger yet).
  static absl::StatusOr<std::unique_ptr<Ledger>> CreateRestored(const Policy& policy,
                                                                Clock* clock,
                                                                LedgerOptions options = {});
  ~Ledger();

  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Charges `cost` on every limit the feature touches, or on none of them.
  // kInvalidArgument for a bad cost, ttl or name; kNotFound for an unknown credential or
  // feature; kResourceExhausted when a new scope would pass the feature's max_scopes;
  // kUnavailable when the journal cannot write (fail closed: nothing charged).
  absl::StatusOr<Decision> Acquire(const AcquireRequest& request);

  // Decides `requests` as one (an all-or-nothing batch, across credentials): either every item
  // is granted, or none is charged. Items are decided in order at one instant, each as Acquire
  // would, seeing the charges of the items before it; a request never passes a waiter it would
  // not pass alone. At the first item that is denied or fails, the items granted before it are
  // given back (their slots freed, their units refunded) before any other call can see them,
  // and every item but that one is answered denied, `limited_by` "all_or_nothing:items[K]" (K:
  // the item that was not granted) with its retry_at (InfiniteFuture after an error). Never
  // waits. The result has one entry per request, in order.
  std::vector<absl::StatusOr<Decision>> AcquireAll(absl::Span<const AcquireRequest> requests);

  // Like Acquire, but when the request cannot be granted now and `max_wait` > 0, it waits in
  // the queue of its credential (higher `priority` first, then arrival order) and `done` is
  // called exactly once: with the grant as soon as capacity frees (window reset, refill,
  // release, expiry, refund), or with the denial at the deadline. A request that is answered at
  // once gets `done` before this returns. Waiters are protected on every counter they need: a
  // later request (of any feature, waiting or not) that needs one of them is not granted before
  // them unless its priority is higher; one that does not wait is denied, one that waits joins
  // the queue. Waiters that share no counter do not hold each other back. kResourceExhausted
  // when the credential's queue is full.
  WaitTicket AcquireOrWait(const AcquireRequest& request, absl::Duration max_wait, int priority,
                           WaitCallback done);

  // Takes a waiting request out of its queue; its `done` is destroyed uncalled, and the waiters
  // it held back are served at once. False when it was already answered.
  bool Cancel(const WaitTicket& ticket);

  // Serves every waiter whose time has come: grants what fits, denies what reached its deadline.
  // Returns when it must run next (InfiniteFuture when nobody waits).
  absl::Time Pump();

  // Answers every waiting request with `status` (shutdown).
  void AnswerAllWaiters(const absl::Status& status);

  // Number of requests waiting.
  int64_t waiting() const;

  // Ends a lease. `used` (0 <= used <= cost) refunds cost - used on every window limit whose
  // charged window is still open; nullopt refunds nothing. Frees concurrency slots.
  // kNotFound for an unknown or expired lease; kInvalidArgument for a bad `used`.
  absl::StatusOr<ReleaseResult> Release(const LeaseId& id, std::optional<int64_t> used);

  // Extends a lease to now + ttl (zero: the feature's default). kNotFound for an unknown or
  // expired lease. Returns the new expiry.
  absl::StatusOr<absl::Time> Renew(const LeaseId& id, absl::Duration ttl);

  // Learns from what the upstream answered a worker (see ParseUpstream). When the upstream says
  // fewer units remain than the ledger believes, the ledger adopts the upstream's count on the
  // limit the answer describes (matched by X-RateLimit-Limit, else the feature's only window
  // limit); it never raises remaining on the word of an answer. A rolling window the ledger
  // opened later than the upstream, or whose end the upstream puts later, is re-anchored to the
  // upstream's reset. Adopted counts are written ahead like charges, and refunds never undercut
  // them. Only counts of the window in force are adopted: a reset that has passed, or lies more than
  // one window ahead, is ignored with a warning. Units adopted on a sliding window leave one
  // period (plus the guard) after the answer was seen, or at the upstream's reset if sooner.
  // A throttle is attributed to the limit the answer names when it says that limit is full,
  // else to the feature's limits closest to full; each such limit learns an outside estimate
  // (units held back from grants: multiplicative decrease of the effective capacity per throttle,
  // additive recovery in time) and cools down, with every feature charging it, until
  // Retry-After (or the upstream's reset of that limit), else for the back-off capped at the
  // time the limit takes to release units; no answer cools anything for longer than the
  // feature's longest window. A throttle on a limit quotad's own count has full teaches no
  // estimate. Estimates and cooldowns are journaled; waiting requests are served after.
  // kNotFound for an unknown credential or feature.
  // kInvalidArgument for a status outside 100..599. `observed_at` zero: now.
  absl::StatusOr<ReportResult> Report(const UpstreamAnswer& answer);

  // Every limit of the credential, each scope of scoped limits, then every feature cooling down
  // (LimitStatus::cooldown). kNotFound for an unknown one.
  absl::StatusOr<std::vector<LimitStatus>> Usage(absl::string_view credential);

  // Live leases, of one credential or (empty) all.
  std::vector<LeaseInfo> Leases(absl::string_view credential);
  // The number of live leases of each credential that has any, without copying them (for
  // metrics: a scrape of 10^5 leases must not copy and sort them).
  absl::flat_hash_map<std::string, int64_t> LeaseCounts();
  // The live lease `id`, or nullopt when it is unknown, released or expired.
  std::optional<LeaseInfo> FindLease(const LeaseId& id);

  // What reloads leave behind, for metrics and tests: compiled versions of credentials kept for
  // leases and retired counters, and credential tables published.
  struct ReloadFootprint {
    size_t versions = 0;
    size_t tables = 0;
  };
  ReloadFootprint Footprint() const;

  // Every queue with requests waiting, by credential then feature and scope. Read-only; takes
  // each waiting credential's lock briefly.
  std::vector<QueueInfo> Queues() const;

  // Zeroes every counter of the credential (held slots stay), and forgets what reloads kept of
  // older configurations and what Report learnt (outside estimates, back-offs, cooldowns; in the
  // journal too). Leases stay; their refunds give nothing back. kNotFound for an unknown one.
  absl::Status Reset(absl::string_view credential);

  // Replaces the policy. Every limit that keeps its name keeps its used units, whatever else
  // changes, so that the window in force grants no more than the stricter of the old and the
  // new configuration: a counter whose shape, scoping and capacity allow it carries over as it
  // is (a lowered capacity applies at once); otherwise the new counter starts with the units
  // the old one counts now, and the old one keeps being checked under its old rule until what
  // it held drains (so a raised capacity applies once the current window ends). Concurrency
  // slots of live leases carry into a concurrency limit built anew. A limit removed and later
  // brought back finds its units again. Live leases of removed features stay until they end.
  // kInvalidArgument (and nothing changed) for a bad policy.
  absl::Status Reload(const Policy& policy);

  // The time to pass to Journal::Compact: records run on the wall clock (calendar limits) or on
  // ledger time (everything else), so only what ended on both has surely ended.
  int64_t CompactionTimeNs() const;

  // Drops expired leases and frees their slots. Expired slots never count against a limit even
  // without this; it only reclaims memory. Returns the number dropped.
  int64_t Sweep();

  // The policy in force.
  Policy policy() const;

  Clock* clock() const { return clock_; }

 private:
  // The operations that run under one credential's mutex are members of Credential, so that
  // clang's -Wthread-safety checks them; they read the ledger's options, time and waiting set.
  friend struct ledger_internal::Credential;
  using Credential = ledger_internal::Credential;
  using LeaseRecord = ledger_internal::LeaseRecord;
  using Answer = ledger_internal::Answer;

  Ledger(Clock* clock, LedgerOptions options);
  // Ledger time, in ns: the monotonic clock anchored to the wall clock at construction. Every
  // duration (windows other than calendar ones, buckets, leases, cooldowns, waits) runs on it;
  // calendar limits run on the wall clock (WallOf). Also records how far the wall clock has
  // stepped from it since.
  int64_t NowNs() const;
  // A ledger time as the wall clock shows it now, for callers.
  absl::Time ToWall(int64_t ns) const;
  // A wall time as a ledger time.
  int64_t FromWall(absl::Time t) const;
  // The time `rule` runs on at ledger time `now` (the wall clock for calendar limits), and back.
  int64_t RuleTime(const Rule& rule, int64_t now) const;
  int64_t FromRuleTime(const Rule& rule, int64_t t) const;
  int64_t BlockFor(const Rule& rule) const;
  // Puts a granted lease in the table (and queues its journal record), under its credential's
  // mutex; nobody can name it before the grant is answered.
  void InsertLease(const LeaseId& id, LeaseRecord rec);
  // What callers see of a lease record (its shard's mutex held).
  LeaseInfo InfoOf(const LeaseId& id, const LeaseRecord& rec) const;
  // Serves every queue of a credential (after something was freed), and delivers.
  void ServeCredential(Credential& cred);
  // The request's names and numbers; `configured`: its credential was found (its name is
  // then known to be valid, and not checked again).
  static absl::Status ValidateRequest(const AcquireRequest& req, bool configured = false);
  absl::Status ReloadImpl(const Policy& policy);
  // Restore from what Journal::Load returned.
  absl::Status RestoreFrom(JournalState state);
  // The parts of a restore, for RestoreFrom and for a reload that configures again what a
  // restore could not place (Credential::unplaced). Each wants cred.mu held (asserted: the
  // type is incomplete here). RestoreCounters: records `rs` of rule `r` (in key order).
  void RestoreCounters(Credential& cred, int r, const Reservation* rs, size_t n, int64_t now);
  // A scoped rule's "" scope records may be those of the rule before a reload made it scoped.
  void SeedScopesFromUnscoped(Credential& cred, int r, int64_t now);
  absl::Status RestoreLease(Credential& cred, const JournalLease& jl, const LeaseId& id,
                            int64_t now);
  // Restores what cred.unplaced has for the configuration in force; drops what ended.
  void RestoreUnplaced(Credential& cred, int64_t now);
  absl::StatusOr<ReleaseResult> ReleaseImpl(const LeaseId& id, std::optional<int64_t> used,
                                            Credential** cred);
  void Deliver(std::vector<Answer>& answers);
  const ledger_internal::CredentialTable* table() const {
    return table_.load(std::memory_order_acquire);
  }
  Credential* FindCredential(absl::string_view name) const;

  Clock* const clock_;
  const LedgerOptions options_;
  const int64_t mono_anchor_ns_;                // wall - monotonic at construction
  mutable std::atomic<int64_t> wall_offset_ns_{0};  // wall - ledger time at the last reading
  mutable absl::Mutex reload_mu_;
  std::atomic<const ledger_internal::CredentialTable*> table_{nullptr};
  // Every table ever published, kept so that readers never see a freed one; reloads are rare.
  std::vector<std::unique_ptr<const ledger_internal::CredentialTable>> tables_
      ABSL_GUARDED_BY(reload_mu_);
  // Every credential ever configured, by its name (the key views Credential::name); never
  // removed while the ledger lives.
  absl::flat_hash_map<absl::string_view, std::unique_ptr<Credential>> credentials_
      ABSL_GUARDED_BY(reload_mu_);
  // Every profile name ever configured, once; Credential::profile points into it. Never shrinks
  // while the ledger lives (node-based: the strings stay where they are).
  absl::node_hash_set<std::string> profiles_ ABSL_GUARDED_BY(reload_mu_);
  std::unique_ptr<ledger_internal::LeaseTable> leases_;
  // Credentials with requests waiting. Lock order: a credential's mu, then wait_mu_.
  mutable absl::Mutex wait_mu_;
  absl::flat_hash_set<Credential*> waiting_credentials_ ABSL_GUARDED_BY(wait_mu_);
  std::atomic<int64_t> waiting_{0};
  std::atomic<uint64_t> next_waiter_id_{1};
  absl::Mutex jitter_mu_;
  std::mt19937_64 jitter_rng_ ABSL_GUARDED_BY(jitter_mu_);
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LEDGER_H_

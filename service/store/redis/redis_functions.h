#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_

// quotad's Redis 7 function library (quotad.lua and quotad_functions.lua, embedded at build
// time): loading and versioning it, and one typed call per decision (acquire, release, renew,
// report). Each call is one FCALL: atomic on the server, timed by Redis's clock, on keys of one
// credential (one hash slot: "q:{credential}:...").

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/limits.h"
#include "service/store/redis/redis_client.h"

namespace quotad {
namespace redis {

// The library's source and the version it declares (`local VERSION = N`).
absl::string_view LibrarySource();
int LibraryVersion();

// Keys. The credential is the hash tag (hex-encoded if it holds a brace).
std::string CredentialTag(absl::string_view credential);  // "{virustotal/prod}"
// The credential's hash: every counter's state, one field each (see quotad.lua).
std::string StateKey(absl::string_view credential);
// The field of `counter` in StateKey (escaped: the library's own fields start with ~ and !,
// and # and @ join a counter's name to its log entries and leases).
std::string CounterField(absl::string_view counter);
// A concurrency counter's leases by expiry.
std::string LeasesByExpiryKey(absl::string_view credential, absl::string_view counter);
std::string LeaseKey(absl::string_view credential, absl::string_view lease_id);
std::string DedupKey(absl::string_view credential, absl::string_view request_id);

// One counter a call touches: `name` is unique within the credential (e.g. "feature.limit",
// plus the scope for scoped limits); `rule` must outlive the call.
struct CounterRef {
  std::string name;
  const Rule* rule = nullptr;
  std::string scope;  // a scoped rule's counter: its scope (for answers and messages)
  // > 0 on the feature's first scoped limit (Acquire only): a scope new to it is refused once
  // the credential counts this many scopes of it (the feature's max_scopes; kResourceExhausted
  // naming the scope, as Ledger::Acquire). At most one counter of a call sets it.
  int64_t max_scopes = 0;
};

struct AcquireCall {
  std::string credential;
  std::string lease_id;
  int64_t cost = 1;
  absl::Duration ttl = absl::Minutes(1);
  std::vector<CounterRef> counters;  // every limit the charge touches; all or nothing
  // The feature charged: its cooldown (Report) is checked first.
  std::string feature;
  // False: no lease record is written (nothing to release, renew or refund; a Release answers
  // not found). Only for callers that never give units back; not with concurrency counters.
  bool keep_lease = true;
  // Non-empty: a retry with the same request_id within `dedup_window` is answered with the
  // first grant and charges nothing; one asking for something else (another `fingerprint`)
  // is kInvalidArgument naming both. Only grants are recorded (a denial charged nothing).
  std::string request_id;
  std::string fingerprint;  // what the request asks for, e.g. feature, scope and cost
  absl::Duration dedup_window = absl::Minutes(10);
  // Non-empty (with keep_lease): `locator` is stored at `locator_key` for as long as the lease
  // lives (renewed and deleted with it), so that a lease can be found from its id alone. The
  // key is outside the credential's hash slot: standalone Redis only (not Cluster).
  std::string locator_key;
  std::string locator;
  // True: a grant, and a denial by the limits (not by a cooldown or a waiter ahead), also
  // answer each counter's state after the decision (AcquireAnswer::limits).
  bool want_limits = false;
};

struct AcquireAnswer {
  bool granted = false;
  absl::Time now;                                   // Redis's time of the decision
  absl::Time lease_expiry = absl::InfinitePast();   // granted
  // A retry of an earlier grant (request_id): `lease_id` is that grant's, `now` its time.
  bool duplicate = false;
  std::string lease_id;
  absl::Time retry_at = absl::InfiniteFuture();     // denied: when all would fit
  int limiting = -1;  // denied: index into counters; -1 with `cooling`: the feature's cooldown
  bool cooling = false;                             // denied by a cooldown (Report)
  // With AcquireCall::want_limits: per counter (same order), Counter::View after the decision.
  struct Limit {
    int64_t used = 0;
    absl::Time reset = absl::InfiniteFuture();  // window end / oldest unit leaves / never
    int64_t outside = 0;  // units held back for use outside quotad (Report's estimate)
  };
  std::vector<Limit> limits;
};

// `counters` must be those of the lease's acquire, in the same order. `used` as in
// Ledger::Release (nullopt: -1, refunds nothing).
struct ReleaseCall {
  std::string credential;
  std::string lease_id;
  int64_t used = -1;
  std::vector<CounterRef> counters;
  std::string locator_key;  // non-empty: deleted with the lease (AcquireCall::locator_key)
};

struct ReleaseAnswer {
  bool found = false;               // false: unknown or expired lease
  absl::Time now;
  int64_t freed = 0;                // concurrency slots
  std::vector<int64_t> refunded;    // per counter
};

struct RenewCall {
  std::string credential;
  std::string lease_id;
  absl::Duration ttl = absl::Minutes(1);
  std::vector<CounterRef> counters;
  std::string locator_key;  // non-empty: renewed with the lease (AcquireCall::locator_key)
};

struct RenewAnswer {
  bool found = false;
  absl::Time now;
  absl::Time expiry = absl::InfinitePast();
};

// What an upstream's answer taught (Ledger::Report's state changes). The caller parses the
// answer (ParseUpstream), picks the limit its counts describe and the back-offs
// (service/core/report_target.h); Redis applies them atomically on its own clock: the time
// checks of the count's reset, the adoption, the attribution of a throttle to the limits
// closest to full, the outside estimates, the doubling back-offs and the cooldowns (see
// quotad_report in quotad_functions.lua and quotad_outside.lua).
struct ReportCall {
  std::string credential;
  std::string feature;
  // The feature's unscoped limits that can deny (not unlimited): those a throttle may be
  // attributed to, and the target among them.
  std::vector<CounterRef> counters;
  std::optional<int64_t> used;  // the upstream's count of the target (capped at its capacity)
  int target = 0;               // index into counters of the limit the counts describe; -1: none
  std::optional<bool> full;     // the counts say the target is full (count >= capacity)
  absl::Time reset = absl::InfinitePast();          // the upstream's reset (Past: unknown)
  absl::Duration longest_window;                    // of the target (LongestWindow)
  absl::Time observed_at = absl::InfiniteFuture();  // when the worker saw it (Future: now)
  absl::Time sent_at = absl::InfiniteFuture();      // when the request was sent (Future: now)
  // The worker said when it sent the request (ReportRequest.sent_at): a throttle on a limit
  // quotad's own count has full is still learnt from (LearnThrottle).
  bool sent_given = false;

  // A throttle (the status is one of the profile's throttle codes); else `clean`: a success
  // (status < 400), after which the back-offs start over.
  bool throttled = false;
  bool clean = false;
  absl::Time retry_at = absl::InfinitePast();  // the upstream's Retry-After (Past: none)
  // The feature's own cooldown when no limit is hit: initial_backoff * (1 + jitter_min).
  absl::Duration feature_backoff = absl::Seconds(1);
  absl::Duration max_cooldown;  // no cooldown lasts past now + this (the feature's longest)
  // The feature's back-off when the upstream gives no time (ThrottleSpec): initial_backoff,
  // times multiplier per throttle since the last clean answer, at most max_backoff
  // (ThrottleBackoff; the throttles are counted in Redis).
  absl::Duration initial_backoff = absl::Seconds(1);
  double multiplier = 1.0;
  absl::Duration max_backoff = absl::Seconds(1);
  // The feature's scoped limits (counted as empty when attributing; a hit one counts the
  // throttle under its name and cools the feature for its back-off, at most its
  // ThrottleRelease, times scoped_jitter).
  struct ScopedLimit {
    std::string name;  // the limit's full name
    absl::Duration release;
  };
  std::vector<ScopedLimit> scoped;
  double scoped_jitter = 1.0;
  // Per counter (same order; missing: as Backoff{}): what bounds the back-off (ThrottleRelease;
  // nullopt: the rest of the counter's window) and the jitter factor (1 + jitter). (An outside
  // estimate decays over the counter's RecoveryNs, which the library computes from the counter.)
  struct Backoff {
    std::optional<absl::Duration> release;
    double jitter = 1.0;
  };
  std::vector<Backoff> backoffs;
};

struct ReportAnswer {
  absl::Time now;
  bool adopted = false;         // the count was adopted (it may have added nothing)
  bool reset_passed = false;    // not adopted: the reset has passed (UpstreamReset::kPassed)
  bool reset_ignored = false;   // the reset was too far ahead (UpstreamReset::kTooFar)
  int64_t before = 0;           // the count quotad had (the units it compared with)
  int64_t added = 0;            // units added to reach the upstream's count
  absl::Time cooldown_until = absl::InfinitePast();  // the latest cooldown now in force
  std::vector<absl::Time> capped;  // cooldowns asked for past max_cooldown (then capped)
};

// What Ledger::Usage shows of some counters of a credential, read in one FCALL_RO.
struct UsageCall {
  std::string credential;
  std::vector<CounterRef> counters;
  struct Feature {
    std::string name;
    std::vector<int> counters;  // indices into counters whose cooldown stops the feature
    std::vector<std::string> scoped_limits;  // scoped limits whose cooldown stops it (~o)
  };
  std::vector<Feature> features;
};

struct UsageAnswer {
  absl::Time now;
  struct Counter {
    int64_t used = 0;
    absl::Time reset = absl::InfiniteFuture();  // window end / oldest unit leaves / never
    absl::Time cooldown = absl::InfinitePast();  // Past: not cooling down
    int64_t outside = 0;  // units held back for use outside quotad (Report's estimate)
  };
  std::vector<Counter> counters;
  std::vector<absl::Time> feature_cooldowns;  // per feature; Past: not cooling down
};

// An Acquire that may wait in the credential's fair queue (quotad_wait; README "Waiting").
struct WaitCall {
  enum class Mode { kEnter, kRetry, kLeave };
  AcquireCall acquire;  // the request (a new lease_id per attempt)
  Mode mode = Mode::kEnter;
  std::string waiter;   // the waiter's id, unique across replicas (no ',')
  int priority = 0;
  int64_t seq = 0;      // kRetry: its arrival number, as the kEnter answer gave it
  // How often the waiter's replica calls while it waits: its queue entries live 3 beats after
  // its last call (a dead replica's waiters drop out then).
  absl::Duration beat = absl::Seconds(1);
};

struct WaitAnswer {
  AcquireAnswer acquire;  // granted, or denied (then parked in the queue)
  int64_t seq = 0;        // denied: its arrival number (for kRetry)
  bool ahead = false;     // denied because a waiter ahead of it shares a counter
};

// An all-or-nothing batch (quotad_acquire_all, Ledger::AcquireAll): every call granted, or none
// charged. On a Cluster every call's keys must lie in one hash slot (one credential).
struct AcquireAllAnswer {
  bool granted = false;
  absl::Time now;  // Redis's time of the decision
  // Granted: each call's answer, in order (a request_id's duplicate answers its first grant).
  std::vector<AcquireAnswer> answers;
  // Not granted: the first call that would not be granted, and its answer (a denial, or the
  // error its single call would give: a request_id first used for another request, a new
  // scope past max_scopes). Nothing was charged.
  int blocker = -1;
  absl::StatusOr<AcquireAnswer> blocked = absl::UnknownError("unset");
  // Not granted: the items before the blocker whose request_id names an earlier grant, and
  // that grant (which stands).
  std::vector<std::pair<int, AcquireAnswer>> duplicates;
};

// How many replicas must hold a decision before it is answered (WAIT, pipelined after the
// FCALL on the same connection). replicas 0: answered as soon as the primary has it.
struct WaitPolicy {
  int replicas = 0;
  absl::Duration timeout = absl::Milliseconds(100);  // WAIT's own timeout (at least 1 ms)
};

// Whether `status` is a WAIT shortfall (kUnavailable): Redis applied the call, but fewer
// replicas than asked acknowledged it, so it was not answered as durable.
bool IsWaitShortfall(const absl::Status& status);
inline constexpr absl::string_view kWaitShortfall = "quotad.redis/wait-shortfall";

// The WAIT command of `policy` (timeout in whole milliseconds, rounded up, at least 1).
std::vector<std::string> WaitCommand(const WaitPolicy& policy);

// The argument lists, for callers that pipeline FCALLs themselves (and the benchmark).
// Calendar windows are computed around `around` (the caller's clock): previous, current, next.
absl::StatusOr<std::vector<std::string>> AcquireArgs(const AcquireCall& call, absl::Time around);
// `function`'s (quotad_acquire_all, quotad_acquire_many): every call's keys, then the count of
// calls and each call's key count, argument count and quotad_acquire arguments.
absl::StatusOr<std::vector<std::string>> BatchArgs(const char* function,
                                                   const std::vector<AcquireCall>& calls,
                                                   absl::Time around);
// `views`: the counters' states to read after the answer (AcquireCall::want_limits: the number
// of counters; 0: none). A new scope past max_scopes is kResourceExhausted naming it.
absl::StatusOr<AcquireAnswer> ParseAcquire(const absl::StatusOr<Reply>& reply, size_t views = 0);

// Calls quotad's functions through a client. Thread-safe. Does not own `client`, which must
// outlive *this. Callbacks run on the client's loop thread (see ReplyCallback).
class RedisFunctions {
 public:
  // `clock_now` gives the caller's time, used only to compute calendar windows to offer (Redis
  // picks the one containing its own TIME; if none does, the call is repeated once with
  // windows around Redis's time).
  //
  // With `wait.replicas` > 0, a grant (Acquire, a request_id's duplicate included) and a Renew
  // that moves a lease's expiry later are answered only once WAIT says that many replicas hold
  // them; when fewer acknowledge within wait.timeout the answer is kUnavailable, nothing handed
  // out (the charge may still be in Redis: an under-grant until the lease's TTL, or the first
  // grant of its request_id for a retry, which waits again). Denials, Release and a Renew that
  // shortens the lease are answered whatever WAIT says (losing them in a failover errs on the
  // safe side; a shortening renewal refused would leave its holder on the later expiry while
  // Redis frees the slot at the earlier one).
  RedisFunctions(RedisClient* client, absl::AnyInvocable<absl::Time() const> clock_now,
                 WaitPolicy wait = {});

  // Loads the library when Redis has none or an older version (FUNCTION LOAD REPLACE); keeps
  // a newer one (another replica's). Blocking: for start-up. Returns the version in force.
  absl::StatusOr<int> EnsureLoaded(absl::Duration timeout = absl::Seconds(5));

  void Acquire(AcquireCall call, absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done);
  // quotad_acquire_all (granted: waits for replicas as Acquire's grant does).
  void AcquireAll(std::vector<AcquireCall> calls,
                  absl::AnyInvocable<void(absl::StatusOr<AcquireAllAnswer>)> done);
  // quotad_acquire_many: independent Acquires in one FCALL, decided in order at one time of
  // Redis's (on a Cluster every call's keys in one slot). One answer per call, as Acquire's
  // (from the first whose calendar windows miss Redis's time on, the calls are sent again
  // together, in order, around Redis's time); the error of the whole call when Redis did not
  // answer.
  using ManyAnswers = std::vector<absl::StatusOr<AcquireAnswer>>;
  void AcquireMany(std::vector<AcquireCall> calls,
                   absl::AnyInvocable<void(absl::StatusOr<ManyAnswers>)> done);
  void Release(ReleaseCall call, absl::AnyInvocable<void(absl::StatusOr<ReleaseAnswer>)> done);
  void Renew(RenewCall call, absl::AnyInvocable<void(absl::StatusOr<RenewAnswer>)> done);
  void Report(ReportCall call, absl::AnyInvocable<void(absl::StatusOr<ReportAnswer>)> done);
  void Usage(UsageCall call, absl::AnyInvocable<void(absl::StatusOr<UsageAnswer>)> done);

  // quotad_wait (a grant waits for replicas as Acquire's does; kLeave never waits).
  void WaitAcquire(WaitCall call, absl::AnyInvocable<void(absl::StatusOr<WaitAnswer>)> done);

  // Blocking forms (not from a client callback).
  absl::StatusOr<AcquireAnswer> AcquireSync(AcquireCall call);
  absl::StatusOr<AcquireAllAnswer> AcquireAllSync(std::vector<AcquireCall> calls);
  absl::StatusOr<ReleaseAnswer> ReleaseSync(ReleaseCall call);
  absl::StatusOr<RenewAnswer> RenewSync(RenewCall call);
  absl::StatusOr<ReportAnswer> ReportSync(ReportCall call);
  absl::StatusOr<UsageAnswer> UsageSync(UsageCall call);

 private:
  void AcquireAround(std::shared_ptr<AcquireCall> call, absl::Time around, bool last_try,
                     absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done);
  void AcquireAllAround(std::shared_ptr<std::vector<AcquireCall>> calls, absl::Time around,
                        bool last_try,
                        absl::AnyInvocable<void(absl::StatusOr<AcquireAllAnswer>)> done);
  void WaitAcquireAround(std::shared_ptr<WaitCall> call, absl::Time around, bool last_try,
                  absl::AnyInvocable<void(absl::StatusOr<WaitAnswer>)> done);
  void ReportAround(std::shared_ptr<ReportCall> call, absl::Time around, bool last_try,
                    absl::AnyInvocable<void(absl::StatusOr<ReportAnswer>)> done);
  void UsageAround(std::shared_ptr<UsageCall> call, absl::Time around, bool last_try,
                   absl::AnyInvocable<void(absl::StatusOr<UsageAnswer>)> done);

  // Sends `args` alone, or followed by WAIT (then `done` gets the FCALL's reply and the number
  // of replicas that acknowledged; -1 without WAIT).
  void CallMaybeWaiting(std::vector<std::string> args,
                        absl::AnyInvocable<void(absl::StatusOr<Reply>, int64_t acked)> done);
  // kUnavailable naming the shortfall when `acked` < wait_.replicas (and WAIT was asked for).
  absl::Status CheckAcked(int64_t acked, absl::string_view what) const;

  RedisClient* const client_;
  absl::AnyInvocable<absl::Time() const> clock_now_;
  const WaitPolicy wait_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_

#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_BACKEND_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_BACKEND_H_

// Shared mode's QuotaBackend: every decision is one call of quotad's Redis function library
// (redis_functions.h), so that any number of replicas pointing at one Redis decide as one
// embedded quotad would. This replica compiles each credential's features into the counters a
// call touches (draws_on, scopes) and the calendar windows in the limit's IANA zone; Redis
// decides atomically on its own clock.
//
// A lease is found from its id alone through its locator, a small key `q:lease:<id>` holding
// the credential, feature, scope, holder, cost and the names of the counters it charged;
// Release and Renew read it first (one more round trip), and a lease whose feature changed its
// limits since (a reload) gives no refund. The locator has no hash tag; in Cluster mode the
// lease id's last 5 hex digits are chosen so that the locator's key lies in the credential's
// slot (redis::LeaseIdInSlot), so that the grant's FCALL writes it and Release/Renew find it by
// the key's slot alone (redis_cluster.h routes every command by its key).
//
// Report parses the answer and chooses the limit its counts describe here, as the embedded
// ledger does (service/core/report_target.h), and applies the adoption, the attribution of a
// throttle, the outside estimate (units held back from every grant, decaying in time), the
// doubling back-off and the cooldowns in one FCALL on Redis's clock (quotad_outside.lua). The
// Admin calls: Usage reads a credential's counters in one FCALL_RO (plus an HKEYS when it has
// scoped limits), Leases scans the lease locators, Reset is one FCALL. These live in
// redis_backend_admin.cc.
//
// Fail open (redis_backend_fail_open.cc): while Redis cannot be reached, an Acquire on a
// credential whose profile sets fail_open is granted by this replica alone, under a lease id
// marked as not held in Redis (IsFailOpenLease); Release and Renew of such a lease succeed here
// without Redis. These grants are counted nowhere: they can over-grant by what workers ask
// during the outage (at most max_fail_open_leases live ones per replica). Credentials that do
// not fail open stay fail closed (kUnavailable, nothing granted).
//
// Waiting (redis_backend_wait.cc, README "Waiting"): an Acquire with max_wait that cannot be
// granted now is queued in Redis, in a fair queue per counter shared by every replica (priority,
// then arrival), and parked here; this replica retries it when Redis publishes that it heads a
// queue (a release, a reset, a waiter leaving), at its retry time, and every wait_beat (its
// heartbeat: a dead replica's entries drop out 3 beats after its last call).
//
// Decision::limits come from the acquire's own FCALL (each counter's view after the decision;
// not for waiters); a feature's max_scopes is counted in the credential's hash by that FCALL.
//
// All-or-nothing batches (redis_backend_batch.cc): one FCALL, quotad_acquire_all.

#include <atomic>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/compiled_policy.h"
#include "service/core/quota_backend.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"
#include "service/store/redis/redis_subscriber.h"

namespace quotad {
namespace redis {
class RedisCluster;
}  // namespace redis

struct RedisBackendOptions {
  // redis://HOST[:PORT] (port 6379 when left out), or
  // redis-sentinel://HOST[:PORT][,HOST[:PORT]...]/MASTERNAME (sentinels, port 26379 when left
  // out): the primary is the one the sentinels name, followed through a failover, or
  // redis-cluster://HOST[:PORT][,HOST[:PORT]...] (nodes of a Redis Cluster, port 6379 when left
  // out): each credential's calls go to the master of its hash slot (redis_cluster.h).
  std::string url;
  // Connections to Redis (calls are pipelined over them) and the time a call may take.
  int connections = 2;
  absl::Duration call_timeout = absl::Seconds(1);
  // How long the first grant of a request_id answers its retries.
  absl::Duration dedup_window = absl::Minutes(10);
  // Create() waits this long for Redis before it starts anyway, NOT_SERVING until reachable.
  absl::Duration connect_wait = absl::Seconds(2);
  // > 0: a grant (and a renewal) is answered only once this many replicas acknowledged it
  // (WAIT, pipelined after the FCALL); fewer within wait_timeout: UNAVAILABLE, nothing handed
  // out (see redis::WaitPolicy).
  int wait_replicas = 0;
  absl::Duration wait_timeout = absl::Milliseconds(100);
  // Fail open: the most fail-open leases this replica keeps live at once (their holders are
  // remembered for FindLease); beyond it, even a fail_open credential is refused (kUnavailable).
  int max_fail_open_leases = 65536;
  // Waiting: how often a parked waiter calls Redis at the least (its heartbeat and safety
  // re-check); its queue entries outlive its last call by 3 beats.
  absl::Duration wait_beat = absl::Seconds(1);
};

// Parses --redis: redis://HOST[:PORT], redis-sentinel://HOST[:PORT][,...]/MASTERNAME or
// redis-cluster://HOST[:PORT][,...] (into cluster_nodes); an IPv6 HOST goes in brackets
// ([::1]:6379) and is returned without them. kInvalidArgument naming the URL and the bad part
// otherwise.
absl::StatusOr<redis::RedisClientOptions> ParseRedisUrl(absl::string_view url);

// Sentinel mode: the client follows a failover by itself (redis_client.h); while no primary is
// up, serving() is false (health NOT_SERVING) and every decision is kUnavailable.
//
// Cluster mode (redis_backend_cluster.cc): serving() while one master is up and every master
// that is up has the library (loaded on each, again on one that was down or is new); the
// credentials of a slot whose master is down are kUnavailable, the others are served. With
// WAIT, each call waits for replicas of its slot's master, and per master: an Acquire whose
// credential's master had fewer replicas connected than wait_replicas at the last CheckHealth
// is refused at once (kUnavailable; the others are served; a batch's items alike), and
// serving() is false once every master that is up is short. (A waiter, or a replica frozen
// without its master noticing yet, are refused by WAIT itself: kUnavailable after
// wait_timeout.)
//
// Thread-safe. Owns its client (and its event-loop thread, which answers AcquireShared and
// waiters), and once a request has waited, a timer thread for parked waiters and a subscriber
// connection with its thread (redis_subscriber.h);
// does not own `clock`, which must outlive *this. Release, Renew, Report, Usage and FindLease
// block until Redis answers (at most call_timeout each). Fails closed: while Redis cannot be
// reached, every decision is kUnavailable and nothing is granted, except for credentials
// whose profile sets fail_open (see the file comment).
class RedisBackend final : public QuotaBackend {
 public:
  // kInvalidArgument for a bad URL or policy. Does not fail when Redis is down: it then starts
  // NOT_SERVING (serving() false) and CheckHealth() loads the library once Redis answers.
  static absl::StatusOr<std::unique_ptr<RedisBackend>> Create(const Policy& policy, Clock* clock,
                                                              RedisBackendOptions options);
  ~RedisBackend() override;

  // Whether a connection is up and the function library is loaded (and, with WAIT, the primary
  // -- Cluster: at least one master that is up -- has at least wait_replicas replicas
  // connected, per ROLE); after a reconnect, loads the library again if Redis lost it (a
  // restart without persistence). Blocks (at most a few call timeouts): call it from a
  // background thread, not from a completion-queue thread.
  bool CheckHealth();
  // "redis://host:port" or "redis-sentinel://host:port,.../name", plus the WAIT setting.
  const std::string& description() const { return description_; }
  // Where decisions go now (Sentinel: the primary last named), and how often it changed.
  std::string primary() const { return client_->primary().ToString(); }
  int failovers() const { return client_->failovers(); }
  // Fail open: called with the credential of each fail-open grant, on the granting thread and
  // under an internal lock (it must not call back into *this); the server counts
  // quotad_fail_open_grants_total with it.
  void SetFailOpenObserver(absl::AnyInvocable<void(absl::string_view credential)> observer)
      ABSL_LOCKS_EXCLUDED(fail_mu_);
  // Fail-open grants made by this replica, in total.
  int64_t fail_open_grants() const ABSL_LOCKS_EXCLUDED(fail_mu_);
  // Whether `id` names a fail-open grant (never held in Redis), from the id alone.
  static bool IsFailOpenLease(const LeaseId& id);

  bool shared() const override { return true; }
  bool serving() const override;
  Clock* clock() const override { return clock_; }

  absl::StatusOr<Decision> Acquire(const AcquireRequest& request) override;
  WaitTicket AcquireOrWait(const AcquireRequest& request, absl::Duration max_wait, int priority,
                           WaitCallback done) override;
  // Takes a parked request out (its queue entries too); `done` is destroyed uncalled. False
  // when it was answered already.
  bool Cancel(const WaitTicket& ticket) override ABSL_LOCKS_EXCLUDED(wait_mu_);
  // Answers every request parked here with `status` (the server shutting down: its calls must
  // be answered before its completion queues close) and takes them out of Redis's queues; a
  // grant on its way for one is given back as for a cancelled call.
  void AnswerAllWaiters(const absl::Status& status) ABSL_LOCKS_EXCLUDED(wait_mu_);
  // AcquireShared, or with max_wait > 0 a request that cannot be granted now waits in the
  // fair queue (see the file comment); answered with the grant, or with the denial at max_wait.
  WaitTicket AcquireSharedOrWait(const AcquireRequest& request, const SharedRequestId& request_id,
                                 absl::Duration max_wait, int priority, WaitCallback done)
      override ABSL_LOCKS_EXCLUDED(wait_mu_);
  // Waiting, for tests and operators: requests parked here now, those of them whose place in
  // Redis's queue is known (their first call answered), quotad_wait calls made, messages naming
  // a waiter parked here.
  struct WaitStats {
    int64_t parked = 0, placed = 0, calls = 0, wakeups = 0;
  };
  WaitStats wait_stats() const ABSL_LOCKS_EXCLUDED(wait_mu_);
  void AcquireShared(const AcquireRequest& request, const SharedRequestId& request_id,
                     DecisionCallback done) override;
  // Independent Acquires (an AcquireBatch): one FCALL (quotad_acquire_many) per hash slot, the
  // items of one slot decided in order at one time of Redis's, each as AcquireShared decides
  // it (fail open included).
  void AcquireManyShared(
      absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
      absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) override;
  // One FCALL (quotad_acquire_all): every item granted or none, at one time of Redis's. Never
  // granted fail open (kUnavailable when Redis cannot be reached). On a Cluster every item's
  // credential must hash to one slot (kFailedPrecondition naming the first that does not).
  void AcquireAllShared(
      absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
      absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) override;

  absl::StatusOr<ReleaseResult> Release(const LeaseId& id, std::optional<int64_t> used) override;
  absl::StatusOr<absl::Time> Renew(const LeaseId& id, absl::Duration ttl) override;
  absl::StatusOr<ReportResult> Report(const UpstreamAnswer& answer) override;
  absl::StatusOr<LeaseInfo> FindLease(const LeaseId& id) override;

  absl::StatusOr<std::vector<LimitStatus>> Usage(absl::string_view credential) override;
  absl::StatusOr<std::vector<LeaseInfo>> Leases(absl::string_view credential) override;
  absl::Status Reset(absl::string_view credential) override;

  Policy policy() const override;
  absl::Status Reload(const Policy& policy) override;

 private:
  // The policy compiled: one CompiledCredential per credential. Immutable; replaced whole.
  struct Compiled {
    Policy policy;
    absl::flat_hash_map<std::string, std::shared_ptr<const CompiledCredential>> credentials;
    absl::flat_hash_set<std::string> fail_open;  // credentials whose profile fails open
  };
  // What one call of a feature touches.
  struct Plan {
    std::shared_ptr<const CompiledCredential> cc;  // keeps the rules alive
    const CompiledFeature* feature = nullptr;
    std::vector<redis::CounterRef> counters;
    std::vector<const Rule*> rules;  // parallel to counters
    std::string signature;           // the counter names, to recognise them after a reload
  };
  // A lease's locator (see the file comment).
  struct Locator {
    std::string credential, feature, scope, holder, signature;
    int64_t cost = 0;
  };

  RedisBackend(Clock* clock, RedisBackendOptions options, std::string description,
               std::unique_ptr<redis::RedisClient> client);
  static absl::StatusOr<std::shared_ptr<const Compiled>> Compile(const Policy& policy);
  std::shared_ptr<const Compiled> compiled() const ABSL_LOCKS_EXCLUDED(mu_);
  static absl::StatusOr<Plan> PlanFor(const Compiled& compiled, absl::string_view credential,
                                      absl::string_view feature, absl::string_view scope);
  // The lease TTL `request` asks for under `plan` (its default when none), or the error of a
  // cost or a TTL the feature can never grant.
  static absl::StatusOr<absl::Duration> CheckedTtl(const Plan& plan,
                                                   const AcquireRequest& request);
  // The call AcquireShared sends for `request` (a new lease id), planned and checked.
  redis::AcquireCall SharedCall(const AcquireRequest& request, const SharedRequestId& request_id,
                                const Plan& plan, absl::Duration ttl) const;
  // AcquireShared's answer: the decision, or the store's error (a fail-open grant of
  // `fallback` for `ttl` instead when Redis could not be reached and `fallback` is set).
  absl::StatusOr<Decision> Decide(const Plan& plan, absl::StatusOr<redis::AcquireAnswer> answer,
                                  absl::string_view lease_id, std::optional<LeaseInfo> fallback,
                                  absl::Duration ttl);
  // quotad_acquire's `answer` as the Decision Ledger::Acquire gives (`lease_id`: the one this
  // call asked for, used unless the answer is a request_id's earlier grant).
  static absl::StatusOr<Decision> DecisionOf(const Plan& plan, const redis::AcquireAnswer& answer,
                                             absl::string_view lease_id);
  absl::StatusOr<Locator> ReadLocator(const LeaseId& id);
  // CheckHealth in Cluster mode: the library on every master that is up (and with WAIT, its
  // replicas; while a master is short, the slot map is read anew first, so that a credential
  // whose slot left that master is not refused on its account).
  bool CheckClusterHealth() ABSL_LOCKS_EXCLUDED(cluster_mu_);
  // Whether `primary` (a primary's client) has at least wait_replicas replicas connected, per
  // ROLE. Blocks for one call.
  bool EnoughReplicas(redis::RedisClient& primary) const;
  // Cluster with WAIT: the master ("host:port") of `credential`'s slot when the last
  // CheckHealth found it short of replicas; empty otherwise (and always outside Cluster mode).
  std::string ShortMasterOf(absl::string_view credential) const ABSL_LOCKS_EXCLUDED(short_mu_);
  static absl::StatusOr<Locator> ParseLocator(absl::string_view value, absl::string_view id);
  // A store error as the caller sees it: kUnavailable (nothing decided) for a transport one;
  // a WAIT shortfall (redis::IsWaitShortfall) says that the call stays applied in Redis.
  absl::Status StoreError(const absl::Status& status, absl::string_view what);
  // A new id for a lease held in Redis: never the fail-open mark, and in Cluster mode one
  // whose locator lies in the credential's slot (one FCALL writes both).
  LeaseId NewHeldLeaseId(absl::string_view credential) const;
  // Fail open (redis_backend_fail_open.cc). The lease a fail-open grant of `request` would be
  // (credential, feature, scope, holder, cost, holds_slots), its strings owned.
  static LeaseInfo FailOpenLease(const AcquireRequest& request, const CompiledFeature& feature);
  // Grants `lease` for `ttl` here. `why` is the store's error, for the log and for the refusal
  // when this replica keeps max_fail_open_leases live ones already. The others: as Release,
  // Renew and FindLease, for an id IsFailOpenLease, without Redis.
  absl::StatusOr<Decision> GrantFailOpen(LeaseInfo lease, absl::Duration ttl,
                                         const absl::Status& why) ABSL_LOCKS_EXCLUDED(fail_mu_);
  absl::StatusOr<ReleaseResult> ReleaseFailOpen(const LeaseId& id) ABSL_LOCKS_EXCLUDED(fail_mu_);
  absl::StatusOr<absl::Time> RenewFailOpen(const LeaseId& id, absl::Duration ttl)
      ABSL_LOCKS_EXCLUDED(fail_mu_);
  absl::StatusOr<LeaseInfo> FindFailOpen(const LeaseId& id) ABSL_LOCKS_EXCLUDED(fail_mu_);
  // Waiting (redis_backend_wait.cc).
  struct Waiter;
  struct Attempt;
  void StartWaiting() ABSL_LOCKS_EXCLUDED(wait_mu_);
  void StopWaiting() ABSL_LOCKS_EXCLUDED(wait_mu_);
  void WaitLoop() ABSL_LOCKS_EXCLUDED(wait_mu_);
  void Send(Attempt attempt);
  void OnAnswer(uint64_t id, absl::string_view lease_id,
                absl::StatusOr<redis::WaitAnswer> answer)
      ABSL_LOCKS_EXCLUDED(wait_mu_);
  void OnMessage(absl::string_view channel, absl::string_view message)
      ABSL_LOCKS_EXCLUDED(wait_mu_);
  // The call that takes `w` out of Redis's queues.
  Attempt Leave(const Waiter& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(wait_mu_);
  Attempt Try(Waiter& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(wait_mu_);
  // 1 + a draw from the throttle's jitter range (1 + jitter_min when it has none).
  double Jitter(const ThrottleSpec& throttle) ABSL_LOCKS_EXCLUDED(jitter_mu_);

  // Destroyed in reverse: the client first, whose pending calls are answered (kCancelled)
  // while everything they touch still lives.
  Clock* const clock_;
  const RedisBackendOptions options_;
  const std::string description_;
  std::atomic<bool> library_loaded_{false};
  // wait_replicas > 0: the primary (Cluster: at least one master up) had that many replicas
  // connected at the last CheckHealth.
  std::atomic<bool> replicas_enough_{true};
  mutable absl::Mutex mu_;
  std::shared_ptr<const Compiled> compiled_ ABSL_GUARDED_BY(mu_);
  absl::Mutex jitter_mu_;
  std::mt19937_64 jitter_rng_ ABSL_GUARDED_BY(jitter_mu_){std::random_device{}()};
  // Fail open: the live fail-open leases this replica granted (expired ones are swept when
  // the table is full), the grants made, and who is told of each.
  mutable absl::Mutex fail_mu_;
  absl::flat_hash_map<LeaseId, LeaseInfo> fail_open_leases_ ABSL_GUARDED_BY(fail_mu_);
  int64_t fail_open_grants_ ABSL_GUARDED_BY(fail_mu_) = 0;
  absl::AnyInvocable<void(absl::string_view)> fail_open_observer_ ABSL_GUARDED_BY(fail_mu_);
  absl::Time last_fail_open_log_ ABSL_GUARDED_BY(fail_mu_) = absl::InfinitePast();
  // Waiting: the parked requests by ticket id (and by their id in Redis), the thread that
  // times them, and the subscription that wakes them. Declared before the client: its
  // destructor answers calls in flight, whose callbacks find the waiters here.
  mutable absl::Mutex wait_mu_;
  absl::CondVar wait_cv_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Waiter>> waiters_ ABSL_GUARDED_BY(wait_mu_);
  absl::flat_hash_map<std::string, uint64_t> waiter_ids_ ABSL_GUARDED_BY(wait_mu_);
  uint64_t next_waiter_ ABSL_GUARDED_BY(wait_mu_) = 1;
  bool wait_started_ ABSL_GUARDED_BY(wait_mu_) = false;
  bool wait_stopping_ ABSL_GUARDED_BY(wait_mu_) = false;
  int64_t wait_calls_ ABSL_GUARDED_BY(wait_mu_) = 0;
  int64_t wakeups_ ABSL_GUARDED_BY(wait_mu_) = 0;
  std::thread wait_thread_;
  std::unique_ptr<redis::RedisSubscriber> subscriber_;
  const std::unique_ptr<redis::RedisClient> client_;
  redis::RedisFunctions functions_;
  // Cluster mode: client_ itself (set once by Create), and the masters holding the library.
  redis::RedisCluster* cluster_ = nullptr;
  absl::Mutex cluster_mu_;
  absl::flat_hash_set<std::string> cluster_loaded_ ABSL_GUARDED_BY(cluster_mu_);
  // Cluster with WAIT: the masters ("host:port") up with fewer than wait_replicas replicas at the
  // last CheckHealth, and whether there are any (read without the lock on every Acquire).
  mutable absl::Mutex short_mu_;
  absl::flat_hash_set<std::string> short_masters_ ABSL_GUARDED_BY(short_mu_);
  std::atomic<bool> any_short_{false};
};

// The key of a lease's locator.
std::string LeaseLocatorKey(absl::string_view lease_id);
// A locator's value: length-prefixed fields ("<len>:<bytes>" each; any byte may appear).
std::string EncodeFields(std::initializer_list<absl::string_view> fields);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_BACKEND_H_

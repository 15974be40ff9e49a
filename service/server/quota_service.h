#ifndef QUOTAD_SERVICE_SERVER_QUOTA_SERVICE_H_
#define QUOTAD_SERVICE_SERVER_QUOTA_SERVICE_H_

// The Quota service (quotad.v1.Quota) without its transport: Acquire, Release, Renew, Report,
// and the batches AcquireBatch and ReleaseBatch (each item decided as by the single call; an
// AcquireBatch checks access and names once per distinct credential and feature, and counts
// its decisions once per outcome; quota_service_batch.cc).
// Each method takes the caller (authenticated by the transport) and the wire request, and owns
// what lies between them and the ledger: validation (errors name the field and the value),
// authorization (the access rules; a lease is ended or extended by its holder's identity or an
// admin), idempotency (request_id, see idempotency.h) and conversion to the wire answer.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.pb.h"
#include "service/core/ledger.h"
#include "service/core/quota_backend.h"
#include "service/server/auth.h"
#include "service/server/identity_waiters.h"
#include "service/server/idempotency.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/serving_config.h"
#include "service/server/status_page.h"

namespace quotad {

// Most items in one AcquireBatch or ReleaseBatch.
inline constexpr int kMaxBatchItems = 1000;

struct QuotaServiceOptions {
  // Acquire priorities above `priority_ceiling` are for admins and `priority_identities` only.
  int32_t priority_ceiling = 100;
  std::vector<std::string> priority_identities;
  // At most this many Acquire calls of one identity wait at once (over every credential).
  int64_t max_waiters_per_identity = 1000;
};

// Answers one Acquire: called exactly once, with the answer or the error. Runs on the thread
// that decided (the caller's, or the one that served the wait queue).
using AcquireDone = absl::AnyInvocable<void(absl::StatusOr<v1::AcquireResponse>)>;

// Decisions are the backend's (quota_backend.h): the embedded ledger, or a store shared by
// several replicas (Redis), which keeps request_ids of Acquire itself and parks a request that
// may wait in its own queue, fair across replicas (AcquireSharedOrWait).
//
// Thread-safe. With the embedded ledger it never blocks on I/O (decisions take only the
// ledger's short locks); with a shared backend Acquire is answered on the backend's thread,
// and Release, Renew and Report wait for the store's answer (bounded by its call timeout).
// Does not own `backend`, `request_ids`, `metrics`, `throttles` or `sampler`, which must
// outlive *this. The backend holds the callbacks of parked and in-flight Acquire calls, which
// refer to *this: answer every waiter (Ledger::AnswerAllWaiters) or destroy the backend before
// *this.
class QuotaService {
 public:
  QuotaService(QuotaBackend* backend, RequestIds* request_ids, Metrics* metrics,
               ThrottleLog* throttles, LogSampler* sampler, QuotaServiceOptions options);
  // The embedded ledger (a LedgerBackend over it, owned by *this).
  QuotaService(Ledger* ledger, RequestIds* request_ids, Metrics* metrics, ThrottleLog* throttles,
               LogSampler* sampler, QuotaServiceOptions options);

  QuotaService(const QuotaService&) = delete;
  QuotaService& operator=(const QuotaService&) = delete;

  // Decides `request` and calls `done` with the answer: before returning, unless the request
  // may wait (max_wait) and cannot be granted now; it is then parked in the ledger and `done`
  // runs on the thread that serves it (a grant, or the denial at the deadline: max_wait, at
  // most the caller's deadline). `request` must stay valid until `done` has run or has been
  // destroyed. Returns the ticket of a parked request, for CancelWait(); nullopt when `done`
  // has run already, or will run on a shared backend's thread (which cannot be cancelled).
  // Errors: kUnauthenticated/kPermissionDenied (access rules, a priority above the ceiling),
  // kInvalidArgument naming the bad field and value (or both requests of a reused request_id),
  // kNotFound (unknown credential or feature), kResourceExhausted (request_id table, waiters of
  // the identity or the credential), and the ledger's other errors.
  std::optional<WaitTicket> Acquire(const Caller& caller, const v1::AcquireRequest& request,
                                    AcquireDone done);

  // Takes a parked Acquire out of its queue (its client left): true when it was still waiting;
  // its `done` is then destroyed uncalled and the caller answers the call itself.
  bool CancelWait(const WaitTicket& ticket);

  // Ends a lease (a retry with the same request_id gets the first answer again). With auth, a
  // lease is ended by the identity that acquired it or an admin: kPermissionDenied for another
  // identity's lease; kNotFound for an unknown or expired one.
  absl::StatusOr<v1::ReleaseResponse> Release(const Caller& caller,
                                              const v1::ReleaseRequest& request);

  // Each item decided in order exactly as by Acquire() (access rules, validation, request_id
  // replay and recording), its answer or its error (prefixed "items[i]: ") in `results[i]`.
  // The access rules and the names' syntax are checked once per distinct credential and
  // feature of the batch (the answers are the same); the decisions are counted in the metrics
  // once per outcome, and the items add no latency samples of their own (the call has one).
  // Never waits: an item with a positive max_wait is refused kInvalidArgument. Without
  // all_or_nothing each grant stands. With a shared backend each item waits for the store's
  // answer (as Release does). With all_or_nothing, every item is checked first, then all are
  // decided as one (QuotaBackend::AcquireAll; see the proto). Errors of the whole call:
  // kInvalidArgument for more than kMaxBatchItems items; kUnimplemented for all_or_nothing on
  // a shared backend.
  absl::StatusOr<v1::AcquireBatchResponse> AcquireBatch(const Caller& caller,
                                                        const v1::AcquireBatchRequest& request);
  // The same, answered into `response` (empty).
  absl::Status AcquireBatchInto(const Caller& caller, const v1::AcquireBatchRequest& request,
                                v1::AcquireBatchResponse* response);

  // Each item ended in order exactly as by Release(), its answer or error in `results[i]`.
  // kInvalidArgument for more than kMaxBatchItems items.
  absl::StatusOr<v1::ReleaseBatchResponse> ReleaseBatch(const Caller& caller,
                                                        const v1::ReleaseBatchRequest& request);
  // The same, answered into `response` (as AcquireBatchInto).
  absl::Status ReleaseBatchInto(const Caller& caller, const v1::ReleaseBatchRequest& request,
                                v1::ReleaseBatchResponse* response);

  // Extends a lease (ttl zero: the feature's default); who may, as for Release.
  absl::StatusOr<v1::RenewResponse> Renew(const Caller& caller, const v1::RenewRequest& request);

  // Passes on what the upstream answered a worker (Ledger::Report).
  absl::StatusOr<v1::ReportResponse> Report(const Caller& caller,
                                            const v1::ReportRequest& request);

  // The most Acquire calls any one identity has waiting now (for the resource gauges).
  int64_t LargestIdentityWaiters() { return waiters_.Largest(); }

 private:
  QuotaService(std::unique_ptr<QuotaBackend> backend, RequestIds* request_ids, Metrics* metrics,
               ThrottleLog* throttles, LogSampler* sampler, QuotaServiceOptions options);
  // A validated Acquire: the core request (views into the wire request) and how to wait.
  struct AcquireArgs {
    AcquireRequest core;
    absl::Duration max_wait = absl::ZeroDuration();
    int priority = 0;
  };

  // The checks of one AcquireBatch that depend only on the credential or the feature, each
  // made once per distinct value. Views the batch's request, which must outlive it. Not
  // thread-safe (one batch, one thread).
  class BatchChecks {
   public:
    struct Credential {
      absl::Status access;  // Authorizer::Authorize(kAcquire)
      absl::Status name;    // ValidateName("credential"), checked when access is granted
    };
    const Credential& ForCredential(const Caller& caller, absl::string_view name);
    const absl::Status& ForFeature(absl::string_view name);  // ValidateName("feature")

   private:
    absl::flat_hash_map<absl::string_view, Credential> credentials_;
    absl::flat_hash_map<absl::string_view, absl::Status> features_;
    // The entries of the previous item (batches mostly repeat one name); valid until the next
    // insertion into the same map, which resets them.
    const std::pair<const absl::string_view, Credential>* last_credential_ = nullptr;
    const std::pair<const absl::string_view, absl::Status>* last_feature_ = nullptr;
  };
  // One outcome of a batch's decisions, for Metrics::OnDecisions. Views strings that outlive
  // the batch's counting.
  struct DecisionKey {
    absl::string_view credential;
    absl::string_view feature;
    bool granted;
    absl::string_view limited_by;
    bool operator==(const DecisionKey& o) const {
      return granted == o.granted && credential == o.credential && feature == o.feature &&
             limited_by == o.limited_by;
    }
    template <typename H>
    friend H AbslHashValue(H h, const DecisionKey& k) {
      return H::combine(std::move(h), k.credential, k.feature, k.granted, k.limited_by);
    }
  };
  using Outcomes = absl::flat_hash_map<DecisionKey, int64_t>;

  static absl::StatusOr<AcquireArgs> ValidateAcquire(const v1::AcquireRequest& request);
  // ValidateAcquire without the credential and feature names.
  static absl::StatusOr<AcquireArgs> ValidateAcquireFields(const v1::AcquireRequest& request);
  // With auth on, the stored holder (`*holder`, "identity/holder") set in `core`; an error
  // when it is too long.
  absl::Status StoredHolder(const Caller& caller, const v1::AcquireRequest& request,
                            std::string* holder, AcquireRequest* core);
  // What a request_id stands for: a retry must ask for the same thing.
  static std::string Fingerprint(const v1::AcquireRequest& request);
  // The request_id of an Acquire on the embedded ledger: true with the first answer in
  // `first` when it is a retry; false with its key in `dedup_key` (empty without request_id)
  // when it is to be decided; an error for a full table or a reused id.
  absl::StatusOr<bool> ReplayAcquire(const Caller& caller, const v1::AcquireRequest& request,
                                     std::string* dedup_key, v1::AcquireResponse* first);
  // What the single path checks of one AcquireBatch item (access, names, fields, priority),
  // the per-credential and per-feature checks once per batch through `checks`; its arguments
  // (viewing `item` and `holder`, the stored holder with auth), or the error.
  absl::StatusOr<AcquireArgs> CheckBatchItem(const Caller& caller, const v1::AcquireRequest& item,
                                             BatchChecks* checks, std::string* holder);
  // A shared backend's AcquireBatch (no all_or_nothing): every item checked here, then decided
  // by the backend in order, in as few round trips as it can (AcquireManyShared).
  void AcquireBatchShared(const Caller& caller, const v1::AcquireBatchRequest& request,
                          v1::AcquireBatchResponse* response);
  // One AcquireBatch item on the embedded ledger, with `checks`, its decision counted in
  // `outcomes` and its limits read only when `want_limits`. The answer in `out`, or the error.
  absl::Status AcquireBatchItem(const Caller& caller, const v1::AcquireRequest& item,
                                bool want_limits, BatchChecks* checks, v1::AcquireBatchItem* out,
                                Outcomes* outcomes);
  // The key a shared backend keeps `request`'s request_id under (empty: none): per identity
  // with auth, as ReplayAcquire's.
  static std::string SharedRequestKey(const Caller& caller, const v1::AcquireRequest& request);
  // An AcquireBatch with all_or_nothing (a shared backend decides it in one call).
  absl::StatusOr<v1::AcquireBatchResponse> AcquireBatchAllOrNothing(
      const Caller& caller, const v1::AcquireBatchRequest& request);
  absl::Status Authorize(const Caller& caller, AccessMethod method, absl::string_view credential);
  absl::Status CheckPriority(const Caller& caller, int priority);
  absl::Status CheckLease(const Caller& caller, AccessMethod method, const LeaseId& id);
  // The answer to `request` from `decision`; a grant is recorded under `dedup_key` (non-empty)
  // or, when a copy of the request won the race, undone and the first grant answered.
  absl::StatusOr<v1::AcquireResponse> Answer(const v1::AcquireRequest& request,
                                             absl::StatusOr<Decision> decision,
                                             const std::string& dedup_key);
  // Answer() of a decision into `out`; the error of recording a grant.
  absl::Status AnswerInto(const v1::AcquireRequest& request, const Decision& decision,
                          const std::string& dedup_key, v1::AcquireResponse* out);
  // A validated Acquire decided by a shared backend (request_ids kept there; one that may wait
  // waits in the store's queue: the ticket then, as for Acquire).
  std::optional<WaitTicket> AcquireShared(const Caller& caller,
                                          const v1::AcquireRequest& request,
                                          const AcquireArgs& args,
                                          const std::string& request_key, absl::Time start,
                                          AcquireDone done);
  // Metrics and the sampled log line of a decision.
  void Observe(const char* method, const std::string& identity,
               const v1::AcquireRequest& request, const absl::StatusOr<Decision>& decision,
               absl::Time start);
  // The sampled log line of a decision.
  void LogDecision(const char* method, const std::string& identity,
                   const v1::AcquireRequest& request, const Decision& decision);

  std::unique_ptr<QuotaBackend> owned_backend_;  // the second constructor's
  QuotaBackend* const backend_;
  Clock* const clock_;  // the backend's
  RequestIds* const request_ids_;
  Metrics* const metrics_;
  ThrottleLog* const throttles_;
  LogSampler* const sampler_;
  const QuotaServiceOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  IdentityWaiters waiters_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_QUOTA_SERVICE_H_

#ifndef QUOTAD_SERVICE_CORE_QUOTA_BACKEND_H_
#define QUOTAD_SERVICE_CORE_QUOTA_BACKEND_H_

// The seam between the service layer and whatever makes the decisions: the embedded Ledger in
// this process (LedgerBackend, ledger_backend.h), or a store shared by several replicas
// (RedisBackend, service/store/redis/redis_backend.h). The types are the ledger's (ledger.h).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "service/core/clock.h"
#include "service/core/lease_id.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"

namespace quotad {

// Answers one shared Acquire, exactly once, on whichever thread the backend chooses.
using DecisionCallback = absl::AnyInvocable<void(absl::StatusOr<Decision>)>;

// The request_id of an Acquire decided by a shared backend, which answers retries itself (the
// same answer through any replica). Views: valid during the AcquireShared call only.
struct SharedRequestId {
  absl::string_view key;          // names it within the credential (and identity, with auth)
  absl::string_view request_id;   // as the caller sent it, for error messages
  absl::string_view fingerprint;  // what the request asks for; a retry must ask the same
};

// Makes the quota decisions the services ask for. Implementations are thread-safe.
//
// Two kinds: in-process (shared() false: the embedded ledger) decides Acquire before returning,
// can park a request that may wait, and leaves request_ids to the caller; shared (shared()
// true: Redis) decides Acquire elsewhere (AcquireShared, answered later on its own thread),
// keeps request_ids itself so that a retry through any replica gets the first answer, and
// waits in the store's own queue (AcquireSharedOrWait). Methods a backend does not support
// answer kUnimplemented naming what is not built.
class QuotaBackend {
 public:
  virtual ~QuotaBackend() = default;

  // See the class comment.
  virtual bool shared() const = 0;
  // Whether decisions can be made now (a shared store is reachable). Health follows it.
  virtual bool serving() const = 0;
  // The time of the services (retry_after, observed_at). Not owned.
  virtual Clock* clock() const = 0;

  // In-process only: as Ledger::Acquire, AcquireOrWait, Cancel.
  virtual absl::StatusOr<Decision> Acquire(const AcquireRequest& request) = 0;
  virtual WaitTicket AcquireOrWait(const AcquireRequest& request, absl::Duration max_wait,
                                   int priority, WaitCallback done) = 0;
  virtual bool Cancel(const WaitTicket& ticket) = 0;
  // In-process only: as Ledger::AcquireAll (every item granted or none). A backend that cannot
  // answers every item kUnimplemented.
  virtual std::vector<absl::StatusOr<Decision>> AcquireAll(
      absl::Span<const AcquireRequest> requests) {
    return std::vector<absl::StatusOr<Decision>>(
        requests.size(), absl::UnimplementedError("all-or-nothing batches are not built here"));
  }

  // Shared only: decides `request` now (never waits) and answers `done`. What `request` and
  // `request_id` view is copied before this returns. A retry of a granted request_id answers
  // that grant (charging nothing); one asking for something else is kInvalidArgument naming
  // both. kUnavailable when the store cannot be reached: nothing was granted (fail closed),
  // unless the credential's profile sets fail_open (RedisBackend: granted locally, uncounted).
  virtual void AcquireShared(const AcquireRequest& request, const SharedRequestId& request_id,
                             DecisionCallback done) = 0;

  // Shared only: as AcquireShared, but a request that cannot be granted now may wait up to
  // `max_wait` in the store's queue, fair across replicas (`priority`, then arrival), answered
  // with the grant or with the denial at max_wait. Returns the ticket for Cancel (id 0: answered
  // already). By default decided at once.
  virtual WaitTicket AcquireSharedOrWait(const AcquireRequest& request,
                                         const SharedRequestId& request_id,
                                         absl::Duration max_wait, int priority,
                                         WaitCallback done) {
    AcquireShared(request, request_id, std::move(done));
    return {};
  }

  // Shared only: independent Acquires (an AcquireBatch) decided in order, each as AcquireShared
  // decides it; `done` gets one result per request, in order. What the arguments view is
  // copied before this returns. A backend that cannot answers every item kUnimplemented.
  virtual void AcquireManyShared(
      absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
      absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) {
    done(std::vector<absl::StatusOr<Decision>>(
        requests.size(), absl::UnimplementedError("shared batches are not built here")));
  }

  // Shared only: as AcquireAll (every item granted or none, decided as one), each item with its
  // request_id (as AcquireShared's); `done` gets one result per request, in order. What the
  // arguments view is copied before this returns. A backend that cannot answers every item
  // kUnimplemented.
  virtual void AcquireAllShared(
      absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
      absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) {
    done(std::vector<absl::StatusOr<Decision>>(
        requests.size(), absl::UnimplementedError("all-or-nothing batches are not built here")));
  }

  // As Ledger::Release, Renew, Report, FindLease (kNotFound: unknown, released or expired).
  virtual absl::StatusOr<ReleaseResult> Release(const LeaseId& id,
                                                std::optional<int64_t> used) = 0;
  virtual absl::StatusOr<absl::Time> Renew(const LeaseId& id, absl::Duration ttl) = 0;
  virtual absl::StatusOr<ReportResult> Report(const UpstreamAnswer& answer) = 0;
  virtual absl::StatusOr<LeaseInfo> FindLease(const LeaseId& id) = 0;

  // Operators: as Ledger::Usage, Leases, Reset.
  virtual absl::StatusOr<std::vector<LimitStatus>> Usage(absl::string_view credential) = 0;
  virtual absl::StatusOr<std::vector<LeaseInfo>> Leases(absl::string_view credential) = 0;
  virtual absl::Status Reset(absl::string_view credential) = 0;

  // The policy in force, and its replacement (as Ledger::Reload).
  virtual Policy policy() const = 0;
  virtual absl::Status Reload(const Policy& policy) = 0;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_QUOTA_BACKEND_H_

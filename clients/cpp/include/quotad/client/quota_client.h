#ifndef QUOTAD_CLIENT_QUOTA_CLIENT_H_
#define QUOTAD_CLIENT_QUOTA_CLIENT_H_

// The C++ client of quotad's Quota service, for workers that call rate-limited upstream APIs.
//
//   quotad::client::QuotaClient client(grpc::CreateChannel(...));
//   absl::StatusOr<quotad::client::Lease> lease = client.Acquire("virustotal/prod", "requests");
//   if (!lease.ok()) return lease.status();          // an error: bad input, quotad unreachable
//   if (!lease->granted()) Defer(lease->retry_after());  // a denial: data, not an error
//   ... call the upstream ...
//   lease->Commit(used);                             // or let it go out of scope: released
//
// Errors and denials: Acquire returns a non-OK status only for errors (INVALID_ARGUMENT,
// NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE after the retries ran out, ...). A denial is an OK
// result holding a Lease whose granted() is false, with retry_after(), retry_at() and
// limited_by(); such a Lease holds nothing and its destructor does nothing.
//
// Retries: UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED (a Cluster slot moving: nothing was done)
// are retried with exponential back-off and jitter (RetryPolicy). Every Acquire carries a
// request_id (128 random bits, hex) that stays the same across those retries, so quotad charges
// a retried Acquire once. Every call has a deadline.
//
// Batches: AcquireBatch and ReleaseBatch decide many items in one call, with a result (or an
// error naming the item) per item and a status for the whole call.

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace quotad {
namespace client {

// The library's version, "MAJOR.MINOR.PATCH".
const char* Version();

// How failed calls are retried. Only UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED are retried.
struct RetryPolicy {
  // Attempts per call, the first included. 1 disables retries.
  int max_attempts = 6;
  // Back-off before the second attempt; multiplied by `multiplier` after each retry, capped at
  // `max_backoff`. Each back-off is randomised by +-`jitter` (a fraction).
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  double multiplier = 2.0;
  double jitter = 0.2;
};

// Settings of a QuotaClient.
struct ClientOptions {
  // Shown to operators as the holder of every lease (pod, process, job). Empty: "pid-<pid>".
  std::string holder;
  // Deadline of each RPC attempt (an Acquire that waits on the server gets its max_wait more).
  absl::Duration call_timeout = absl::Seconds(5);
  RetryPolicy retry;
  // Attached to every call (e.g. a bearer token). May be null. gRPC sends call credentials only
  // over a secure channel (TLS or local credentials).
  std::shared_ptr<grpc::CallCredentials> call_credentials;
};

// What a limit looked like after a decision.
struct LimitState {
  std::string name;  // "feature.limit", e.g. "requests.per_day"
  std::string scope;
  bool concurrency = false;  // true for a concurrency limit (slots held by live leases)
  int64_t capacity = 0;
  int64_t used = 0;
  int64_t remaining = 0;
  absl::Time reset_at = absl::InfinitePast();  // InfinitePast when nothing is pending
};

// Arguments of one Acquire besides the credential and feature.
struct AcquireOptions {
  // Sub-pool inside the feature (e.g. a Livehunt ruleset). Empty: none.
  std::string scope;
  // Units to charge.
  int64_t cost = 1;
  // Lifetime of the lease; zero: the feature's default. Renewals ask for the same lifetime.
  absl::Duration lease_ttl = absl::ZeroDuration();
  // How long quotad may queue the request for capacity before answering "denied".
  absl::Duration max_wait = absl::ZeroDuration();
  // How long this client may keep asking again after denials, sleeping each denial's
  // retry_after (capped by what is left). Zero: a denial is returned at once.
  absl::Duration client_wait = absl::ZeroDuration();
  // Order among waiting requests, -1000..1000.
  int32_t priority = 0;
  // Idempotency key. Empty: a random one per Acquire (kept across its transport retries). Give
  // your own to make an Acquire idempotent across process restarts.
  std::string request_id;
  // Whether the lease is kept alive in the background until released. kAuto: renew when the
  // grant touched a concurrency limit.
  enum class Renew { kAuto, kAlways, kNever };
  Renew renew = Renew::kAuto;
  // Called once, from the renewer thread, when a renewed lease is lost (quotad said NOT_FOUND,
  // or it expired before a renewal got through). Must not destroy the Lease or the client.
  std::function<void(const absl::Status&)> on_lost;
};

// What Release or Commit gave back.
struct ReleaseResult {
  int64_t refunded = 0;  // units returned to window and bucket limits
  int64_t freed = 0;     // concurrency slots freed
};

namespace internal {
class Core;
struct LeaseState;
struct LeaseAccess;
}  // namespace internal

// The answer to an Acquire: a granted lease, or a denial (granted() false).
//
// A granted Lease is released when destroyed (without `used`: nothing is refunded). Commit(used)
// releases it and has quotad refund cost - used. While a renewing lease is alive, a background
// thread renews it at about a third of its TTL; if quotad loses it, lost() turns true and
// on_lost is called.
// Move-only. Not thread-safe, except lost(), lost_status() and expires_at(), which may be called
// from any thread. May outlive the QuotaClient that made it.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  // Releases a granted lease that is still held (errors are ignored: quotad's TTL then frees it).
  ~Lease();

  // True when quotad granted the request.
  bool granted() const { return granted_; }
  explicit operator bool() const { return granted_; }

  // Granted leases: the lease id (32 hex digits), the units charged.
  const std::string& id() const { return id_; }
  int64_t cost() const { return cost_; }
  const std::string& request_id() const { return request_id_; }
  // When the lease ends unless renewed (advances with renewals).
  absl::Time expires_at() const;
  // True while the lease is granted, not released and not lost.
  bool held() const;
  // True once quotad lost the lease; lost_status() says why (OK while not lost).
  bool lost() const;
  absl::Status lost_status() const;

  // Denials: how long to wait, until when, and the limit that denied ("feature.limit").
  absl::Duration retry_after() const { return retry_after_; }
  absl::Time retry_at() const { return retry_at_; }
  const std::string& limited_by() const { return limited_by_; }

  // Every limit the request touched, after the decision.
  const std::vector<LimitState>& limits() const { return limits_; }

  // Releases the lease, reporting that the upstream charged `used` units (0 <= used <= cost);
  // quotad refunds the rest on windows still open. FailedPrecondition when not held.
  absl::StatusOr<ReleaseResult> Commit(int64_t used);
  // Releases the lease without a refund. FailedPrecondition when not held.
  absl::StatusOr<ReleaseResult> Release();

 private:
  friend class QuotaClient;
  friend struct internal::LeaseAccess;
  absl::StatusOr<ReleaseResult> DoRelease(std::optional<int64_t> used);
  void Reset();

  bool granted_ = false;
  std::string id_;
  std::string request_id_;
  int64_t cost_ = 0;
  absl::Duration retry_after_ = absl::ZeroDuration();
  absl::Time retry_at_ = absl::InfinitePast();
  std::string limited_by_;
  std::vector<LimitState> limits_;
  std::shared_ptr<internal::Core> core_;
  std::shared_ptr<internal::LeaseState> state_;
};

// Most items in one AcquireBatch or ReleaseBatch; quotad refuses a larger batch whole
// (INVALID_ARGUMENT), so split it.
inline constexpr int kMaxBatchItems = 1000;

// One item of QuotaClient::AcquireBatch.
struct AcquireItem {
  std::string credential;
  std::string feature;
  // As for Acquire, except that a batch never waits: `max_wait` and `client_wait` must be zero
  // (the item gets INVALID_ARGUMENT otherwise). An empty `request_id` gets a random one, kept
  // across the batch's transport retries.
  AcquireOptions options;
};

// How QuotaClient::AcquireBatch decides and answers.
struct AcquireBatchOptions {
  // Every item granted, or none is (see AcquireBatch).
  bool all_or_nothing = false;
  // Answers without limits: every Lease's limits() is empty. The same decisions, with less for
  // quotad to build and send.
  bool decisions_only = false;
};

// One item of QuotaClient::ReleaseBatch: a lease of this process, and optionally the units the
// upstream charged (as for Lease::Commit; absent: released without a refund, as Lease::Release).
struct ReleaseItem {
  Lease* lease = nullptr;  // not owned; must stay alive during the call
  std::optional<int64_t> used;
};

// One HTTP header of an upstream answer: name, value.
using Header = std::pair<std::string, std::string>;

// What quotad made of a reported upstream answer.
struct ReportResult {
  // One line per limit raised to the upstream's count, e.g. "requests.per_minute used 12 -> 40".
  std::vector<std::string> adopted;
  // When the answer was a throttle: the feature grants nothing before this time.
  std::optional<absl::Time> cooldown_until;
  // Parts of the answer that were ignored (malformed header values, ...).
  std::vector<std::string> warnings;
};

// A client of one quotad (one channel). Thread-safe: share one per process. Owns one background
// thread (the renewer), shared with the leases it made, which keep it alive.
class QuotaClient {
 public:
  QuotaClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});
  ~QuotaClient();
  QuotaClient(const QuotaClient&) = delete;
  QuotaClient& operator=(const QuotaClient&) = delete;

  // Asks quotad for `options.cost` units of `feature` on `credential`. See the file comment for
  // how denials and errors surface.
  absl::StatusOr<Lease> Acquire(absl::string_view credential, absl::string_view feature,
                                const AcquireOptions& options = {});

  // Many Acquires in one call (at most kMaxBatchItems): each item is decided on its own, in
  // order, exactly as Acquire would decide it, and answered at the same index of the result:
  // a Lease (granted, or a denial with granted() false) or the item's error, whose message
  // names the item ("items[1]: credential ..."). Grants are independent: every grant stands
  // whatever the other items got. The outer status is the whole call's: an error when quotad
  // could not be asked (after the retries; every item keeps its request_id across them, so a
  // retried batch charges each grant once) or refused the batch whole (too many items). An
  // empty batch is answered at once, without a call.
  // `all_or_nothing`: every item is granted or none is (on Redis Cluster, items of credentials
  // in one hash slot); otherwise the item that was not granted has its denial or error and
  // every other one a denial whose limited_by() is "all_or_nothing:items[K]" naming it.
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> AcquireBatch(
      const std::vector<AcquireItem>& items, bool all_or_nothing = false);
  absl::StatusOr<std::vector<absl::StatusOr<Lease>>> AcquireBatch(
      const std::vector<AcquireItem>& items, const AcquireBatchOptions& options);

  // Ends many leases in one call (at most kMaxBatchItems), each as Lease::Commit(used) or
  // Lease::Release() would, answered at the same index: what was given back, or the item's
  // error naming it ("items[0]: ..."; FailedPrecondition, without asking quotad, for a lease
  // not granted or already released). Every lease sent is released on the client's side whatever
  // the answer, as with Release (quotad's TTL frees what an error left). The outer status is the
  // whole call's.
  absl::StatusOr<std::vector<absl::StatusOr<ReleaseResult>>> ReleaseBatch(
      const std::vector<ReleaseItem>& items);

  // Tells quotad what the upstream answered (HTTP status, headers, and the body of a throttle
  // answer; only its first 64 KiB are sent) so that it adopts the upstream's count and cools the
  // feature down on throttles. `observed_at`: when the worker got the answer (relative headers
  // count from it); InfinitePast: now. `sent_at`: when the worker sent the request (give it:
  // quotad then compares a sliding window's count with its grants of the period before the
  // request, not before the answer); InfinitePast: not sent. Retried like Acquire.
  absl::StatusOr<ReportResult> ReportUpstream(absl::string_view credential,
                                              absl::string_view feature, int http_status,
                                              const std::vector<Header>& headers,
                                              absl::string_view body = {},
                                              absl::Time observed_at = absl::InfinitePast(),
                                              absl::Time sent_at = absl::InfinitePast());

  const ClientOptions& options() const;

 private:
  std::shared_ptr<internal::Core> core_;
};

// A fresh idempotency key: 128 random bits as 32 lowercase hex digits.
std::string NewRequestId();

}  // namespace client
}  // namespace quotad

#endif  // QUOTAD_CLIENT_QUOTA_CLIENT_H_

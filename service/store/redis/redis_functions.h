#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_

// quotad's Redis 7 function library (quotad.lua, embedded at build time): loading and
// versioning it, and one typed call per decision (acquire, release, renew). Each call is one
// FCALL: atomic on the server, timed by Redis's clock, on keys of one credential (one hash
// slot: "q:{credential}:...").

#include <cstdint>
#include <string>
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
std::string CounterKey(absl::string_view credential, absl::string_view counter);
std::string LeaseKey(absl::string_view credential, absl::string_view lease_id);

// One counter a call touches: `name` is unique within the credential (e.g. "feature.limit",
// plus the scope for scoped limits); `rule` must outlive the call. Sliding rules with
// sub-buckets are not supported yet (kUnimplemented).
struct CounterRef {
  std::string name;
  const Rule* rule = nullptr;
};

struct AcquireCall {
  std::string credential;
  std::string lease_id;
  int64_t cost = 1;
  absl::Duration ttl = absl::Minutes(1);
  std::vector<CounterRef> counters;  // every limit the charge touches; all or nothing
};

struct AcquireAnswer {
  bool granted = false;
  absl::Time now;                                   // Redis's time of the decision
  absl::Time lease_expiry = absl::InfinitePast();   // granted
  absl::Time retry_at = absl::InfiniteFuture();     // denied: when all would fit
  int limiting = -1;                                // denied: index into counters
};

// `counters` must be those of the lease's acquire, in the same order. `used` as in
// Ledger::Release (nullopt: -1, refunds nothing).
struct ReleaseCall {
  std::string credential;
  std::string lease_id;
  int64_t used = -1;
  std::vector<CounterRef> counters;
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
};

struct RenewAnswer {
  bool found = false;
  absl::Time now;
  absl::Time expiry = absl::InfinitePast();
};

// The argument lists, for callers that pipeline FCALLs themselves (and the benchmark).
// Calendar windows are computed around `around` (the caller's clock): previous, current, next.
absl::StatusOr<std::vector<std::string>> AcquireArgs(const AcquireCall& call, absl::Time around);
absl::StatusOr<AcquireAnswer> ParseAcquire(const absl::StatusOr<Reply>& reply);

// Calls quotad's functions through a client. Thread-safe. Does not own `client`, which must
// outlive *this. Callbacks run on the client's loop thread (see ReplyCallback).
class RedisFunctions {
 public:
  // `clock_now` gives the caller's time, used only to compute calendar windows to offer (Redis
  // picks the one containing its own TIME; if none does, the call is repeated once with
  // windows around Redis's time).
  RedisFunctions(RedisClient* client, absl::AnyInvocable<absl::Time() const> clock_now);

  // Loads the library when Redis has none or an older version (FUNCTION LOAD REPLACE); keeps
  // a newer one (another replica's). Blocking: for start-up. Returns the version in force.
  absl::StatusOr<int> EnsureLoaded(absl::Duration timeout = absl::Seconds(5));

  void Acquire(AcquireCall call, absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done);
  void Release(ReleaseCall call, absl::AnyInvocable<void(absl::StatusOr<ReleaseAnswer>)> done);
  void Renew(RenewCall call, absl::AnyInvocable<void(absl::StatusOr<RenewAnswer>)> done);

  // Blocking forms (not from a client callback).
  absl::StatusOr<AcquireAnswer> AcquireSync(AcquireCall call);
  absl::StatusOr<ReleaseAnswer> ReleaseSync(ReleaseCall call);
  absl::StatusOr<RenewAnswer> RenewSync(RenewCall call);

 private:
  void AcquireAround(std::shared_ptr<AcquireCall> call, absl::Time around, bool last_try,
                     absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done);

  RedisClient* const client_;
  absl::AnyInvocable<absl::Time() const> clock_now_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_H_

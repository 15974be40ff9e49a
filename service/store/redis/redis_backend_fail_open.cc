// RedisBackend's fail-open path (see redis_backend.h): grants made by this replica alone while
// Redis cannot be reached, for credentials whose profile sets fail_open, and the Release, Renew
// and FindLease of their leases, which never touch Redis.

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/store/redis/redis_backend.h"
#include "spdlog/spdlog.h"

namespace quotad {
namespace {

// The first 32 bits of every fail-open lease id ("fa11fa11..."); a lease held in Redis never
// starts with them (AcquireShared draws again), so any replica tells the two apart.
constexpr uint64_t kFailOpenMark = 0xfa11fa11;

// The default of a fail-open lease renewed through a replica that did not grant it (and so does
// not know its feature's default TTL): Feature.default_lease_ttl's own default.
constexpr absl::Duration kUnknownDefaultTtl = absl::Minutes(1);

// At most one log line per this long (each names the grants made so far).
constexpr absl::Duration kLogEvery = absl::Seconds(10);

}  // namespace

bool RedisBackend::IsFailOpenLease(const LeaseId& id) { return (id.hi >> 32) == kFailOpenMark; }

void RedisBackend::SetFailOpenObserver(
    absl::AnyInvocable<void(absl::string_view credential)> observer) {
  absl::MutexLock lock(&fail_mu_);
  fail_open_observer_ = std::move(observer);
}

int64_t RedisBackend::fail_open_grants() const {
  absl::MutexLock lock(&fail_mu_);
  return fail_open_grants_;
}

LeaseInfo RedisBackend::FailOpenLease(const AcquireRequest& request,
                                      const CompiledFeature& feature) {
  LeaseInfo lease;
  lease.credential = std::string(request.credential);
  lease.feature = std::string(request.feature);
  lease.scope = std::string(request.scope);
  lease.holder = std::string(request.holder);
  lease.cost = request.cost;
  lease.holds_slots = feature.has_concurrency;
  return lease;
}

absl::StatusOr<Decision> RedisBackend::GrantFailOpen(LeaseInfo lease, absl::Duration ttl,
                                                     const absl::Status& why) {
  const absl::Time now = clock_->Now();
  lease.id = NewLeaseId();
  lease.id.hi = (kFailOpenMark << 32) | (lease.id.hi & 0xffffffffu);
  lease.granted_at = now;
  lease.expiry = now + ttl;
  Decision d;
  d.granted = true;
  d.lease_id = lease.id;
  d.lease_expiry = lease.expiry;
  const std::string credential = lease.credential;
  absl::MutexLock lock(&fail_mu_);
  const int max = std::max(options_.max_fail_open_leases, 0);
  if (static_cast<int>(fail_open_leases_.size()) >= max) {
    absl::erase_if(fail_open_leases_, [now](const auto& entry) {
      return entry.second.expiry <= now;
    });
  }
  if (static_cast<int>(fail_open_leases_.size()) >= max) {
    return absl::UnavailableError(
        absl::StrCat(why.message(), "; fail_open credential ", credential,
                     " not granted either: this replica holds ", fail_open_leases_.size(),
                     " live fail-open leases, the most it keeps (max_fail_open_leases=", max,
                     ")"));
  }
  fail_open_leases_.emplace(lease.id, std::move(lease));
  ++fail_open_grants_;
  if (fail_open_observer_) fail_open_observer_(credential);
  if (now - last_fail_open_log_ >= kLogEvery) {
    last_fail_open_log_ = now;
    spdlog::warn(
        "component=redis event=fail_open_grant credential={} lease={} grants_so_far={} "
        "error=\"{}\" note=\"granted without Redis: counted nowhere\"",
        credential, d.lease_id.ToString(), fail_open_grants_, std::string(why.message()));
  }
  return d;
}

absl::StatusOr<ReleaseResult> RedisBackend::ReleaseFailOpen(const LeaseId& id) {
  // Nothing is held in Redis: ending the lease frees and refunds nothing. A lease this replica
  // does not know (another replica granted it, or it ended) is released all the same.
  absl::MutexLock lock(&fail_mu_);
  fail_open_leases_.erase(id);
  return ReleaseResult{};
}

absl::StatusOr<absl::Time> RedisBackend::RenewFailOpen(const LeaseId& id, absl::Duration ttl) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&fail_mu_);
  auto it = fail_open_leases_.find(id);
  if (it == fail_open_leases_.end() || it->second.expiry <= now) {
    // Granted by another replica (or ended): nothing to extend here, and nothing held anywhere.
    if (ttl < absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ttl ", absl::FormatDuration(ttl), " must not be negative"));
    }
    return now + (ttl == absl::ZeroDuration() ? kUnknownDefaultTtl : ttl);
  }
  LeaseInfo& lease = it->second;
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  absl::StatusOr<Plan> plan = PlanFor(*compiled, lease.credential, lease.feature, lease.scope);
  if (!plan.ok()) return plan.status();
  const CompiledFeature& feature = *plan->feature;
  if (ttl == absl::ZeroDuration()) ttl = feature.default_lease_ttl;
  if (ttl < absl::ZeroDuration() || ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  lease.expiry = now + ttl;
  return lease.expiry;
}

absl::StatusOr<LeaseInfo> RedisBackend::FindFailOpen(const LeaseId& id) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&fail_mu_);
  auto it = fail_open_leases_.find(id);
  if (it == fail_open_leases_.end() || it->second.expiry <= now) {
    return absl::NotFoundError(absl::StrCat("unknown or expired fail-open lease ", id.ToString(),
                                            " (not held in Redis; this replica did not grant it "
                                            "or it ended)"));
  }
  return it->second;
}

}  // namespace quotad

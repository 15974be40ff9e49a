// RedisBackend's batches. All-or-nothing (QuotaBackend::AcquireAllShared): every item planned
// and checked here as AcquireShared checks it, then decided as one by one FCALL,
// quotad_acquire_all, on Redis's clock. Answers as Ledger::AcquireAll: all granted, or the
// blocker's denial or error and every other item denied in its name ("all_or_nothing:items[K]");
// an item whose request_id names an earlier grant answers that grant either way (it stands).
// Independent (AcquireManyShared): one FCALL, quotad_acquire_many, per hash slot, each item
// answered as AcquireShared answers it.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"

namespace quotad {
namespace {

// Every item but `blocker` denied in its name, with the blocker's retry time.
std::vector<absl::StatusOr<Decision>> BlockedBy(int n, int blocker,
                                                absl::StatusOr<Decision> blocked) {
  std::vector<absl::StatusOr<Decision>> out(n);
  const absl::Time retry_at = blocked.ok() ? blocked->retry_at : absl::InfiniteFuture();
  for (int i = 0; i < n; ++i) {
    if (i == blocker) continue;
    Decision d;
    d.retry_at = retry_at;
    d.limited_by = absl::StrCat("all_or_nothing:items[", blocker, "]");
    out[i] = std::move(d);
  }
  out[blocker] = std::move(blocked);
  return out;
}

}  // namespace

void RedisBackend::AcquireAllShared(
    absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
    absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) {
  const int n = static_cast<int>(requests.size());
  if (n == 0) {
    done({});
    return;
  }
  if (request_ids.size() != requests.size()) {
    done(BlockedBy(n, 0, absl::InternalError("one request_id per item is needed")));
    return;
  }
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  // A Cluster routes one FCALL to one master: every key in the first item's slot.
  const int slot = cluster_ != nullptr ? redis::KeySlot(redis::StateKey(requests[0].credential))
                                       : -1;
  std::vector<Plan> plans;
  std::vector<redis::AcquireCall> calls;
  std::vector<std::string> lease_ids, credentials;  // per item, for the answer
  plans.reserve(n);
  calls.reserve(n);
  lease_ids.reserve(n);
  for (int i = 0; i < n; ++i) {
    const AcquireRequest& req = requests[i];
    absl::StatusOr<Plan> plan = PlanFor(*compiled, req.credential, req.feature, req.scope);
    absl::StatusOr<absl::Duration> ttl = plan.ok() ? CheckedTtl(*plan, req) : plan.status();
    if (const std::string master = ShortMasterOf(req.credential); ttl.ok() && !master.empty()) {
      ttl = absl::UnavailableError(absl::StrCat(
          "shared store ", description_, ": master ", master, " of credential '", req.credential,
          "' has fewer replicas connected than WAIT needs: nothing was granted"));
    }
    if (ttl.ok() && slot >= 0) {
      const int own = redis::KeySlot(redis::StateKey(req.credential));
      if (own != slot) {
        ttl = absl::FailedPreconditionError(absl::StrCat(
            "all_or_nothing on a Redis Cluster decides in one hash slot: credential '",
            req.credential, "' of items[", i, "] is in slot ", own, ", items[0]'s '",
            requests[0].credential, "' in slot ", slot,
            " (send one credential's items together, or without all_or_nothing)"));
      }
    }
    if (!ttl.ok()) {
      done(BlockedBy(n, i, ttl.status()));
      return;
    }
    const redis::AcquireCall& call =
        calls.emplace_back(SharedCall(req, request_ids[i], *plan, *ttl));
    lease_ids.push_back(call.lease_id);
    credentials.push_back(call.credential);
    plans.push_back(*std::move(plan));
  }
  if (!serving()) {
    done(BlockedBy(n, 0,
                   absl::UnavailableError(absl::StrCat(
                       "shared store ", description_,
                       " is not serving (unreachable, or fewer replicas than WAIT needs): "
                       "nothing was granted (an all-or-nothing batch never fails open)"))));
    return;
  }
  functions_.AcquireAll(
      std::move(calls),
      [this, n, plans = std::move(plans), lease_ids = std::move(lease_ids),
       credentials = std::move(credentials),
       done = std::move(done)](absl::StatusOr<redis::AcquireAllAnswer> all) mutable {
        if (!all.ok()) {
          done(BlockedBy(
              n, 0,
              StoreError(all.status(),
                         absl::IsDeadlineExceeded(all.status())
                             ? "no lease handed out (the call may still grant in Redis; those "
                               "leases end at their TTL)"
                             : "nothing was granted")));
          return;
        }
        if (!all->granted) {
          absl::StatusOr<Decision> blocked =
              all->blocked.ok() ? DecisionOf(plans[all->blocker], *all->blocked, "")
                                : absl::StatusOr<Decision>(all->blocked.status());
          std::vector<absl::StatusOr<Decision>> out = BlockedBy(n, all->blocker, blocked);
          for (const auto& [item, first] : all->duplicates) {
            out[item] = DecisionOf(plans[item], first, "");
          }
          done(std::move(out));
          return;
        }
        std::vector<absl::StatusOr<Decision>> out;
        out.reserve(n);
        int failed = -1;
        for (int i = 0; i < n; ++i) {
          out.push_back(DecisionOf(plans[i], all->answers[i], lease_ids[i]));
          if (!out.back().ok() && failed < 0) failed = i;
        }
        if (failed >= 0) {
          // An answer not understood: none is handed out. The new grants are given back
          // (refunding nothing: an under-grant at worst); an earlier grant stands.
          std::vector<absl::StatusOr<Decision>> blocked = BlockedBy(n, failed, out[failed]);
          for (int i = 0; i < n; ++i) {
            if (i == failed || !out[i].ok()) continue;
            if (all->answers[i].duplicate) {
              blocked[i] = std::move(out[i]);
              continue;
            }
            redis::ReleaseCall call;
            call.credential = credentials[i];
            call.lease_id = lease_ids[i];
            call.counters = plans[i].counters;
            call.locator_key = LeaseLocatorKey(call.lease_id);
            functions_.Release(std::move(call),
                               [keep = plans[i].cc](absl::StatusOr<redis::ReleaseAnswer>) {});
          }
          done(std::move(blocked));
          return;
        }
        done(std::move(out));
      });
}

void RedisBackend::AcquireManyShared(
    absl::Span<const AcquireRequest> requests, absl::Span<const SharedRequestId> request_ids,
    absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done) {
  const int n = static_cast<int>(requests.size());
  // The answers, filled as they come; `done` runs once the last part is in.
  struct Join {
    absl::Mutex mu;
    std::vector<absl::StatusOr<Decision>> out;
    int pending = 1;  // the parts sent, and this call's own hold until all are sent
    absl::AnyInvocable<void(std::vector<absl::StatusOr<Decision>>)> done;
  };
  auto join = std::make_shared<Join>();
  join->out.assign(n, absl::InternalError("undecided"));
  join->done = std::move(done);
  auto finish = [join] {
    {
      absl::MutexLock lock(&join->mu);
      if (--join->pending > 0) return;
    }
    join->done(std::move(join->out));
  };
  auto set = [join](int i, absl::StatusOr<Decision> d) {
    absl::MutexLock lock(&join->mu);
    join->out[i] = std::move(d);
  };
  auto hold = [join](int parts) {
    absl::MutexLock lock(&join->mu);
    join->pending += parts;
  };
  if (request_ids.size() != requests.size()) {
    for (int i = 0; i < n; ++i) set(i, absl::InternalError("one request_id per item is needed"));
    finish();
    return;
  }
  // The items of one FCALL: one per hash slot on a Cluster (-1: every item).
  struct Part {
    std::vector<int> items;
    std::vector<redis::AcquireCall> calls;
    std::vector<Plan> plans;
    std::vector<std::string> lease_ids;
    std::vector<std::optional<LeaseInfo>> fallbacks;  // fail_open credentials' grants
    std::vector<absl::Duration> ttls;
  };
  absl::flat_hash_map<int, Part> parts;
  std::vector<int> order;  // the parts' slots, as first met
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  const bool up = serving();
  for (int i = 0; i < n; ++i) {
    const AcquireRequest& req = requests[i];
    if (!up || !ShortMasterOf(req.credential).empty()) {
      // As AcquireShared answers it (fail open included), item by item: at once when Redis is
      // down, or (Cluster with WAIT) the item's master is short of replicas.
      hold(1);
      AcquireShared(req, request_ids[i], [set, finish, i](absl::StatusOr<Decision> d) {
        set(i, std::move(d));
        finish();
      });
      continue;
    }
    absl::StatusOr<Plan> plan = PlanFor(*compiled, req.credential, req.feature, req.scope);
    absl::StatusOr<absl::Duration> ttl = plan.ok() ? CheckedTtl(*plan, req) : plan.status();
    if (!ttl.ok()) {
      set(i, ttl.status());
      continue;
    }
    const int slot =
        cluster_ != nullptr ? redis::KeySlot(redis::StateKey(req.credential)) : -1;
    auto [it, added] = parts.try_emplace(slot);
    if (added) order.push_back(slot);
    Part& part = it->second;
    part.items.push_back(i);
    part.calls.push_back(SharedCall(req, request_ids[i], *plan, *ttl));
    part.lease_ids.push_back(part.calls.back().lease_id);
    part.fallbacks.push_back(compiled->fail_open.contains(req.credential)
                                 ? std::optional<LeaseInfo>(FailOpenLease(req, *plan->feature))
                                 : std::nullopt);
    part.ttls.push_back(*ttl);
    part.plans.push_back(*std::move(plan));
  }
  hold(static_cast<int>(order.size()));
  for (int slot : order) {
    Part& part = parts[slot];
    std::vector<redis::AcquireCall> calls = std::move(part.calls);
    functions_.AcquireMany(
        std::move(calls),
        [this, part = std::move(part), set,
         finish](absl::StatusOr<redis::RedisFunctions::ManyAnswers> answers) mutable {
          for (size_t k = 0; k < part.items.size(); ++k) {
            absl::StatusOr<redis::AcquireAnswer> a =
                answers.ok() ? std::move((*answers)[k])
                             : absl::StatusOr<redis::AcquireAnswer>(answers.status());
            set(part.items[k], Decide(part.plans[k], std::move(a), part.lease_ids[k],
                                      std::move(part.fallbacks[k]), part.ttls[k]));
          }
          finish();
        });
  }
  finish();
}

}  // namespace quotad

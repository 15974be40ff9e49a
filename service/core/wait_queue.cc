#include "service/core/wait_queue.h"

namespace quotad {
namespace ledger_internal {

AcquireRequest Waiter::View() const {
  AcquireRequest r;
  r.credential = credential;
  r.feature = feature;
  r.scope = scope;
  r.holder = holder;
  r.cost = cost;
  r.lease_ttl = lease_ttl;
  r.want_limits = want_limits;
  return r;
}

Waiter* FirstConflict(const WaiterMap& waiters, const CompiledCredential& cc, int fi,
                      absl::string_view scope, int priority) {
  for (const auto& [order, w] : waiters) {
    if (-order.first < priority) break;  // in order: every later one has a lower priority
    const int wf = cc.FindFeature(w->feature);
    if (wf >= 0 && ShareCounter(cc, fi, scope, wf, w->scope)) return w.get();
  }
  return nullptr;
}

}  // namespace ledger_internal
}  // namespace quotad

#ifndef QUOTAD_SERVICE_CORE_WAIT_QUEUE_H_
#define QUOTAD_SERVICE_CORE_WAIT_QUEUE_H_

// Internal to the ledger: the requests waiting on one credential (Ledger::AcquireOrWait).
//
// Locking contract: a WaiterMap belongs to one credential and is guarded by that credential's
// mutex (see ledger_internal.h, Credential::waiters); nothing here locks. A Waiter owns its
// strings and its callback; whoever takes it out of the map answers it, after releasing the
// credential's mutex.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/compiled_policy.h"
#include "service/core/ledger.h"
#include "service/core/limits.h"

namespace quotad {
namespace ledger_internal {

// A request parked until it can be granted or reaches its deadline. Owns its strings.
struct Waiter {
  // The request, viewing this waiter's strings.
  AcquireRequest View() const;

  std::string credential, feature, scope, holder;
  int64_t cost = 1;
  absl::Duration lease_ttl;
  bool want_limits = true;
  int64_t deadline_ns = 0;  // ledger time
  int priority = 0;
  uint64_t id = 0;
  WaitCallback done;
  int64_t retry_ns = kInfiniteNs;  // when it could be granted, as last computed
  std::string limited_by;          // the limit that holds it back
};

// Where a waiter sits in its credential's WaiterMap: higher priority first, then arrival (id).
using WaiterKey = std::pair<int, uint64_t>;
inline WaiterKey WaiterKeyOf(int priority, uint64_t id) { return {-priority, id}; }

// Waiting requests of one credential in the order they are served.
using WaiterMap = std::map<WaiterKey, std::unique_ptr<Waiter>>;

// The first waiter (in serving order) at `priority` or higher whose feature needs a counter
// which feature `fi` (of `cc`) with `scope` needs too; nullptr when none. `waiters` are of a
// credential compiled to `cc`.
Waiter* FirstConflict(const WaiterMap& waiters, const CompiledCredential& cc, int fi,
                      absl::string_view scope, int priority);

}  // namespace ledger_internal
}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_WAIT_QUEUE_H_

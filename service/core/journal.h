#ifndef QUOTAD_SERVICE_CORE_JOURNAL_H_
#define QUOTAD_SERVICE_CORE_JOURNAL_H_

// What the ledger writes down so that a restart never over-grants. The ledger defines this
// interface; service/store implements it (SQLite embedded, Redis later). The core never sees
// files or connections.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace quotad {

// Identifies one counter: a limit ("feature.limit") of a credential, for one scope.
struct CounterKey {
  std::string credential;
  std::string limit;
  std::string scope;
  bool operator==(const CounterKey& o) const {
    return credential == o.credential && limit == o.limit && scope == o.scope;
  }
  template <typename H>
  friend H AbslHashValue(H h, const CounterKey& k) {
    return H::combine(std::move(h), k.credential, k.limit, k.scope);
  }
};

// A high-water mark written ahead of the in-memory counter: at most `units` are granted in the
// window that starts at `window_start_ns` (calendar, rolling, unlimited), or in the block
// reserved at `window_start_ns` (sliding: one record per block), or the token bucket's
// theoretical arrival time never passes `units` (token bucket: `units` is a time in ns).
// `until_ns` is when the record stops mattering (window end; for sliding, reserve time plus
// the reserve time of the next block plus one period, or infinite while it is the newest; for
// buckets, the reserved arrival time). Records with the same key and window_start_ns replace
// each other; a record with units < 0 only changes the until_ns of the one it names.
struct Reservation {
  CounterKey key;
  int64_t window_start_ns = 0;
  int64_t until_ns = 0;
  int64_t units = 0;
};

// A lease as written down: enough to hold its slots and refund its charges after a restart.
struct JournalLease {
  std::string id;  // LeaseId::ToString()
  std::string credential;
  std::string feature;
  std::string scope;
  std::string holder;
  int64_t cost = 0;
  int64_t granted_ns = 0;
  int64_t expiry_ns = 0;
  bool holds_slots = false;     // written synchronously; others may be written late
  std::vector<int64_t> tokens;  // refund token per limit, in the feature's limit order
};

// A feature cooling down after the upstream throttled it: it grants nothing before `until_ns`.
// Records of the same credential and feature replace each other.
struct JournalCooldown {
  std::string credential;
  std::string feature;
  int64_t until_ns = 0;
};

// What Report learned about one limit ("feature.limit") of a credential from throttles: the
// estimate of its outside use (`outside_milli` thousandths of a unit as of `at_ns`, decaying from
// there; see OutsideEstimate), its cooldown and the throttles in a row of its back-off. Records of
// the same credential and limit replace each other; `until_ns` is when the record stops mattering.
struct JournalOutside {
  std::string credential;
  std::string limit;
  int64_t outside_milli = 0;
  int64_t at_ns = 0;
  int64_t cooldown_until_ns = 0;
  int64_t consecutive = 0;
  int64_t until_ns = 0;
};

// Everything a journal holds, as read at start-up.
struct JournalState {
  std::vector<Reservation> reservations;
  std::vector<JournalLease> leases;
  std::vector<JournalCooldown> cooldowns;  // feature cooldowns of older versions; no longer written
  std::vector<JournalOutside> outside;
};

// Durable storage for the ledger. Implementations are thread-safe. A method that returns OK
// has made its write durable against a crash of this process (kill -9), except where noted.
class Journal {
 public:
  virtual ~Journal() = default;

  virtual absl::StatusOr<JournalState> Load() = 0;

  // Durable before return. Called at most once per block of grants per counter.
  virtual absl::Status Reserve(const std::vector<Reservation>& reservations) = 0;

  // Leases that hold slots are written durably before the grant is answered. Leases that only
  // allow a refund may be written later (group commit): losing one loses a refund, never a
  // slot, so it can only under-grant.
  virtual absl::Status PutLease(const JournalLease& lease) = 0;
  virtual absl::Status RenewLease(const std::string& id, int64_t expiry_ns) = 0;
  // May be applied late: a lease that outlives its release only holds a slot until expiry.
  virtual void DeleteLease(const std::string& id) = 0;

  // Durable before return. What Report learned from a throttle answer.
  virtual absl::Status PutCooldown(const JournalCooldown& cooldown) = 0;
  // Durable before return. What Report learned about a limit (outside estimate, cooldown).
  virtual absl::Status PutOutside(const JournalOutside& outside) = 0;

  // Drops reservations, leases, cooldowns and outside records that no longer matter at `now_ns`.
  virtual absl::Status Compact(int64_t now_ns) = 0;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_JOURNAL_H_

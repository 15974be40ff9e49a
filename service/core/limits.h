#ifndef QUOTAD_SERVICE_CORE_LIMITS_H_
#define QUOTAD_SERVICE_CORE_LIMITS_H_

// Internal to the ledger: one compiled rule and the counter that enforces it. Times are int64
// nanoseconds since the Unix epoch so that a counter stays small. Counter is defined in
// limits.cc (windows, charges, refunds, slots) and limits_reservation.cc (write-ahead
// reservations, restore from the journal, adopted upstream counts).
//
// Locking contract: none here. A Counter is not thread-safe; the credential that owns it guards
// it with its mutex (ledger_internal.h). A Rule is immutable once built.

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/btree_map.h"
#include "absl/types/span.h"
#include "service/core/policy.h"

namespace quotad {

inline constexpr int64_t kInfiniteNs = std::numeric_limits<int64_t>::max();

// Floor division that is right for negative numerators too.
inline int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// A LimitSpec with its derived values. Immutable once built.
struct Rule {
  explicit Rule(LimitSpec spec, std::string full_name);

  // True when a counter built for `other` means the same thing under this rule, so its state
  // can carry over a reload (capacity may differ).
  bool SameShape(const Rule& other) const;
  // True when a reload from `old` to this rule keeps the counter as it is: the same shape and
  // scoping, and no more capacity (a raised capacity applies once the old window drained).
  // Concurrency slots are the leases themselves: they carry whatever the capacity, which
  // applies at once.
  bool CarriesCounterOf(const Rule& old) const {
    if (spec.scoped != old.spec.scoped || !SameShape(old)) return false;
    return spec.kind == LimitKind::kConcurrency || Capacity() <= old.Capacity();
  }
  int64_t Capacity() const {
    return spec.kind == LimitKind::kUnlimited ? std::numeric_limits<int64_t>::max() : spec.capacity;
  }

  LimitSpec spec;
  std::string full_name;  // "feature.limit"
  int64_t period_ns = 0;
  int64_t guard_ns = 0;
  int64_t span_ns = 0;       // sliding and rolling: how long a charge counts, period + guard
  int64_t emission_ns = 0;   // token bucket: time per unit
  int64_t bucket_ns = 0;     // sliding with sub-buckets: width of one
  int64_t bucket_slots = 0;  // sliding with sub-buckets: buckets kept, enough to cover span_ns
};

// Snapshot of a counter.
struct CounterView {
  int64_t used = 0;
  int64_t remaining = 0;
  int64_t reset_ns = kInfiniteNs;
};

// One write-ahead record a charge needs first: a Reservation (journal.h) without its key.
struct ReservationBlock {
  int64_t window_start_ns = 0;
  int64_t until_ns = 0;
  int64_t units = 0;  // sliding: -1 keeps the block's units and changes only until_ns
};

// The records Counter::NeedsReservation asks for, in order: at most two.
struct ReservationNeed {
  std::array<ReservationBlock, 2> block;
  int count = 0;

  absl::Span<const ReservationBlock> blocks() const {
    return absl::MakeConstSpan(block.data(), static_cast<size_t>(count));
  }
  void Add(const ReservationBlock& b) { block[count++] = b; }
};

// The state of one rule (for one scope). Not thread-safe: the owning credential's mutex guards
// it. Every method takes the rule it was built for and the current time.
class Counter {
 public:
  Counter() = default;
  Counter(Counter&&) = default;
  Counter& operator=(Counter&&) = default;

  // Whether `cost` more units fit now. When not, *retry_ns is the earliest time they would,
  // if nothing else changes (kInfiniteNs if never). May roll an expired window over.
  bool Fits(const Rule& rule, int64_t now, int64_t cost, int64_t* retry_ns);

  // Charges `cost` units, which must fit. Returns a token naming where they went, for Refund.
  // `lease_key` and `expiry_ns` are used by concurrency rules only.
  int64_t Charge(const Rule& rule, int64_t now, int64_t cost, uint64_t lease_key,
                 int64_t expiry_ns);

  // Gives back up to `units` of the `charged` units of the charge made with `token`: only those
  // still counted in their own window (a token bucket: only the lease's own part of the bucket
  // that has not refilled yet), and never below what was adopted from the upstream since (see
  // Adopt). Returns the units given back.
  // `charged_at` is when the charge was made, in the time NoRefundsBefore() takes (calendar and
  // rolling: a charge made before an adoption or a restart gives nothing back, as the
  // upstream's count, or the restored high-water mark, may already hold it).
  int64_t Refund(const Rule& rule, int64_t now, int64_t token, int64_t charged, int64_t units,
                 int64_t charged_at);
  // Calendar and rolling: charges made at or before `t` (ledger time, which never steps) give
  // nothing back from now on. Called after an adoption and after Restore().
  void NoRefundsBefore(int64_t t) { adopted_at_ = std::max(adopted_at_, t); }

  // Concurrency: frees the slots of a lease (no-op if already expired). Returns slots freed.
  int64_t Free(int64_t expiry_ns, uint64_t lease_key);
  // Concurrency: whether the lease with this expiry still holds slots here.
  bool Holds(int64_t expiry_ns, uint64_t lease_key) const {
    return held_ != nullptr && held_->contains({expiry_ns, lease_key});
  }
  // Concurrency: moves a lease's expiry. False if the lease no longer holds slots here.
  bool MoveExpiry(int64_t old_expiry_ns, uint64_t lease_key, int64_t new_expiry_ns);

  CounterView View(const Rule& rule, int64_t now);

  // Forgets every charge; concurrency slots held by live leases stay.
  void Clear(const Rule& rule);

  // When every unit counted now has left the counter (a calendar window's end, or the next
  // one's when the guard carried units into it; a sliding span after the newest charge; a
  // bucket's refill; the last held slot's expiry). At most `now` when nothing is counted.
  int64_t DrainedAt(const Rule& rule, int64_t now);

  // Write-ahead high-water marks (see journal.h). Call after Fits() said yes, before Charge():
  // when charging `cost` now would pass what is reserved, fills `need` (at most two records:
  // sliding also closes its previous block; calendar within its guard also reserves in the next
  // window, where the charge counts too) with the reservation that must be made durable first,
  // reserving `block` more units than needed, and returns true. Concurrency counters never need
  // one (their leases are written instead).
  // Also used after Adopt() with the units it added (cost 0 for windows: their used units
  // already include them), so that what the upstream said survives a restart.
  bool NeedsReservation(const Rule& rule, int64_t now, int64_t cost, int64_t block,
                        ReservationNeed* need);
  // Records that the reservation NeedsReservation() asked for is durable.
  void Reserved(const Rule& rule, int64_t now, const ReservationNeed& need);
  // Rebuilds the state a reservation record stands for, as if every reserved unit had been
  // charged. Sliding records of one counter must come in reserve-time order; `next_ns` is the
  // reserve time of the next block of the same counter (or now for the last one).
  void Restore(const Rule& rule, int64_t now, int64_t window_start_ns, int64_t until_ns,
               int64_t units, int64_t next_ns);
  // Raises the units used now to `used` if that is more (an upstream's count), never lowering
  // them. Rolling: opens the window if closed, and moves its end to `reset_ns` when that is
  // later (0: unknown). Sliding: `sent_ns` (<= now) is when the upstream counted the request
  // the count came with (Report's sent_at: when it was sent, for an upstream that counts
  // requests as they arrive); the count is compared with the charges from one period before
  // then up to now (any of them may be in it: counting too many of ours adopts too little,
  // never a phantom of our own units), and the difference counts until `reset_ns` when that
  // comes before a whole span.
  // Charges forgotten since (the log keeps them one period past their span, sub-buckets not at
  // all) are not compared with: some of ours may then be adopted, never too few units. Returns
  // the units it compared with; *added is the units it added.
  // Refunds never undercut what was adopted: calendar and rolling windows keep at least the
  // adopted count, and sliding charges made before the adoption give nothing back. Not for
  // concurrency or token buckets.
  int64_t Adopt(const Rule& rule, int64_t now, int64_t used, int64_t reset_ns, int64_t sent_ns,
                int64_t* added);
  // Concurrency: holds the slots of a lease read back from the journal.
  void RestoreHeld(int64_t expiry_ns, uint64_t lease_key, int64_t units, int64_t now);

 private:
  struct LogEntry {
    int64_t at_ns;
    int64_t units;
  };
  // The exact sliding log: a ring of charges, oldest first.
  struct Log {
    std::vector<LogEntry> ring;
    size_t head = 0;
    size_t size = 0;
    LogEntry& at(size_t i) { return ring[(head + i) % ring.size()]; }
    void Push(LogEntry e);
    void PopFront();
    // Charges Roll() dropped, kept one period more (oldest first): an answer to a request sent
    // up to a span before now is compared with every charge the upstream may have counted.
    std::deque<LogEntry> gone;
  };
  // Sub-buckets: counts[i % n] holds bucket index i for i in (newest - n, newest].
  struct Buckets {
    std::vector<int64_t> counts;
    int64_t newest = std::numeric_limits<int64_t>::min();
  };
  // Concurrency: slots held, ordered by expiry.
  using Held = absl::btree_map<std::pair<int64_t, uint64_t>, int64_t>;

  void Roll(const Rule& rule, int64_t now);
  int64_t SlidingUsed(const Rule& rule, int64_t now);
  void AdvanceBuckets(const Rule& rule, int64_t now);

  // Calendar/rolling/unlimited: units in the window [start_ns_, end_ns_). Sliding log and
  // buckets: running total of what the log/buckets hold. Token bucket: unused. Concurrency:
  // slots held.
  int64_t used_ = 0;
  int64_t start_ns_ = std::numeric_limits<int64_t>::min();  // token bucket: theoretical arrival
  int64_t end_ns_ = std::numeric_limits<int64_t>::min();
  // Units the journal allows in the current window (or in the current sliding block); for a
  // token bucket, the theoretical arrival time the journal allows.
  int64_t reserved_ = 0;
  int64_t block_start_ns_ = std::numeric_limits<int64_t>::min();  // sliding: current block
  // Calendar and rolling: units charged within the guard, counted in the next window.
  // Sliding: when the counter was restored from the journal (units up to then may be phantoms).
  int64_t carry_ = 0;
  int64_t carry_reserved_ = 0;  // calendar: units the journal allows in the next window
  // Calendar and rolling: units adopted from the upstream in the current window, which refunds
  // never go below. Sliding: when the last adoption happened (charges before it are not
  // refunded).
  int64_t adopted_ = 0;
  // Calendar and rolling: charges made up to then (ledger time) are not refunded.
  int64_t adopted_at_ = std::numeric_limits<int64_t>::min();
  std::unique_ptr<Log> log_;
  std::unique_ptr<Buckets> buckets_;
  std::unique_ptr<Held> held_;
};

// The calendar window containing `t`: [start, end) in nanoseconds.
void CalendarWindow(CalendarUnit unit, const absl::TimeZone& zone, int64_t t_ns, int64_t* start_ns,
                    int64_t* end_ns);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LIMITS_H_

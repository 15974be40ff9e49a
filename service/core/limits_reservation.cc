// Counter (limits.h): what makes a counter's state outlive the process and agree with the
// upstream: write-ahead reservations (NeedsReservation, Reserved), rebuilding from the journal
// (Restore, RestoreHeld) and adopting an upstream's count (Adopt). Not thread-safe, like the rest
// of Counter: the owning credential's mutex guards it.

#include <algorithm>
#include <limits>
#include <memory>

#include "service/core/limits.h"

namespace quotad {

bool Counter::NeedsReservation(const Rule& rule, int64_t now, int64_t cost, int64_t block,
                               ReservationNeed* need) {
  need->count = 0;
  const int64_t cap = rule.Capacity();
  auto clamp_add = [](int64_t a, int64_t b) {
    return a > std::numeric_limits<int64_t>::max() - b ? std::numeric_limits<int64_t>::max()
                                                       : a + b;
  };
  switch (rule.spec.kind) {
    case LimitKind::kConcurrency:
      return false;
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
    case LimitKind::kRolling: {
      // Roll() ran: a closed rolling window's used and reserved are what carries into the new.
      const bool opens = rule.spec.kind == LimitKind::kRolling && now >= end_ns_;
      const int64_t used = used_;
      const int64_t reserved = reserved_;
      const bool in_guard = rule.spec.kind != LimitKind::kUnlimited && !opens &&
                            rule.guard_ns > 0 && now >= end_ns_ - rule.guard_ns;
      const bool carry_needs = in_guard && carry_ + cost > carry_reserved_;
      if (used + cost <= reserved && !carry_needs) return false;
      const int64_t start = opens ? now : start_ns_;
      const int64_t end = opens ? now + rule.span_ns : end_ns_;
      // What is used may pass the capacity (units a reload carried over): keep all of it.
      need->Add({start, end,
                 std::max({reserved, used + cost, std::min(cap, clamp_add(used + cost, block))})});
      if (carry_needs) {
        // A charge within the guard counts in the next window too: reserve it there as well,
        // so that a restart in the next window's first moments still counts it. A rolling
        // window's next one is not known yet: one that opens at this one's end stands for it.
        int64_t next_start = end_ns_, next_end = end_ns_ + rule.span_ns;
        if (rule.spec.kind == LimitKind::kCalendar) {
          CalendarWindow(rule.spec.unit, rule.spec.zone, end_ns_, &next_start, &next_end);
        }
        need->Add({next_start, next_end, std::min(cap, clamp_add(carry_ + cost, block))});
      }
      return true;
    }
    case LimitKind::kSliding: {
      if (cost <= reserved_) return false;
      // The previous block's charges all happened before now: it matters until now + period.
      if (block_start_ns_ != std::numeric_limits<int64_t>::min()) {
        need->Add({block_start_ns_, now + rule.span_ns, -1});  // keep its units, change until_ns
      }
      // Units counted beyond the old block (an adoption overdraws it) go into the new one.
      const int64_t units = cost + std::max<int64_t>(0, -reserved_);
      need->Add({std::max(now, block_start_ns_ + 1),
                 kInfiniteNs,  // until the next block closes it
                 std::max(units, std::min(cap, clamp_add(units, block)))});
      return true;
    }
    case LimitKind::kTokenBucket: {
      const int64_t tat = std::max(start_ns_, now) + cost * rule.emission_ns;
      if (tat <= reserved_) return false;
      const int64_t until = clamp_add(tat, block * rule.emission_ns);
      need->Add({0, until, until});
      return true;
    }
  }
  return false;
}

void Counter::Reserved(const Rule& rule, int64_t now, const ReservationNeed& need) {
  const ReservationBlock& last = need.block[need.count - 1];
  switch (rule.spec.kind) {
    case LimitKind::kSliding:
      // The new block replaces what was left of the old one, less what already overdrew it.
      block_start_ns_ = last.window_start_ns;
      reserved_ = last.units + std::min<int64_t>(0, reserved_);
      break;
    case LimitKind::kCalendar:
      reserved_ = need.block[0].units;
      if (need.count > 1) carry_reserved_ = need.block[1].units;
      break;
    case LimitKind::kRolling:
      if (now >= end_ns_) {  // this reservation opens the window; Charge() must agree on it
        start_ns_ = last.window_start_ns;
        end_ns_ = last.until_ns;
        carry_ = 0;  // Roll() put it in used_
        carry_reserved_ = 0;
      }
      reserved_ = need.block[0].units;
      if (need.count > 1) carry_reserved_ = need.block[1].units;
      break;
    default:
      reserved_ = last.units;
      break;
  }
}

void Counter::Restore(const Rule& rule, int64_t now, int64_t window_start_ns, int64_t until_ns,
                      int64_t units, int64_t next_ns) {
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      Roll(rule, now);
      if (window_start_ns == start_ns_) {
        used_ = std::max(used_, units);
        reserved_ = std::max(reserved_, units);
        // The record may hold units the upstream counted (an adoption, or leases whose
        // releases were lost): refunds after a restart never go below it.
        adopted_ = std::max(adopted_, units);
      } else if (window_start_ns == end_ns_) {  // charged within the guard: counts next window
        carry_ = std::max(carry_, units);
        carry_reserved_ = std::max(carry_reserved_, units);
      }
      break;
    case LimitKind::kRolling:
      // Windows of other periods (a reload changed it) may overlap now: count the most units any
      // of them holds, until the last one ends; refunds only for charges of the newest.
      if (now >= until_ns) break;
      if (now >= end_ns_) {
        start_ns_ = window_start_ns;
        end_ns_ = until_ns;
        used_ = units;
        reserved_ = units;
        adopted_ = units;
      } else {
        start_ns_ = std::max(start_ns_, window_start_ns);
        end_ns_ = std::max(end_ns_, until_ns);
        used_ = std::max(used_, units);
        reserved_ = std::max(reserved_, units);
        adopted_ = std::max(adopted_, units);
      }
      break;
    case LimitKind::kSliding: {
      // Every unit of the block may have been charged as late as the next block's reserve
      // time: count them there, which keeps them at least as long as the upstream does.
      const int64_t at = std::min(next_ns, now);
      carry_ = std::max(carry_, now);  // sliding: units up to now are restored (see Adopt)
      // The newest block is still open (until infinite): the next reservation closes it, so
      // that its row ends instead of staying for ever.
      if (until_ns == kInfiniteNs) block_start_ns_ = std::max(block_start_ns_, window_start_ns);
      if (at + rule.span_ns <= now || units <= 0) break;
      adopted_ = now;  // charges restored here give nothing back (see calendar)
      if (rule.spec.sub_buckets > 0) {
        AdvanceBuckets(rule, at);
        Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        b.counts[((b.newest % n) + n) % n] += units;
      } else {
        if (log_ == nullptr) log_ = std::make_unique<Log>();
        if (log_->size > 0 && log_->at(log_->size - 1).at_ns >= at) {
          log_->at(log_->size - 1).units += units;
        } else {
          log_->Push({at, units});
        }
      }
      used_ += units;
      break;
    }
    case LimitKind::kTokenBucket:
      start_ns_ = std::max(start_ns_, units);
      reserved_ = std::max(reserved_, units);
      break;
    case LimitKind::kConcurrency:
      break;
  }
}

int64_t Counter::Adopt(const Rule& rule, int64_t now, int64_t used, int64_t reset_ns,
                       int64_t sent_ns, int64_t* added) {
  *added = 0;
  Roll(rule, now);
  const int64_t before = rule.spec.kind == LimitKind::kRolling && now >= end_ns_ ? 0 : used_;
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      *added = std::max<int64_t>(0, used - used_);
      used_ += *added;
      adopted_ = std::max(adopted_, used);
      break;
    case LimitKind::kRolling:
      if (now >= end_ns_) {
        // A new window (Roll() reset what was reserved for the old one, and carried its guard).
        start_ns_ = now;
        end_ns_ = now + rule.span_ns;
        carry_ = 0;
        carry_reserved_ = 0;
      }
      if (reset_ns > end_ns_) {  // later only: never frees units early
        end_ns_ = reset_ns;
        reserved_ = 0;  // the journal must learn the new end
      }
      *added = std::max<int64_t>(0, used - used_);
      used_ += *added;
      adopted_ = std::max(adopted_, used);
      break;
    case LimitKind::kSliding: {
      // What the upstream may count of ours: charges from one period before the request was
      // sent up to now. Units restored after a restart stand for charges that may never have
      // been made: the upstream did not count those, so they are left out of `known`. Buckets
      // that straddle the start or the restart are left out. Counting ours high adopts too
      // little (the next throttle teaches the rest); counting it low would adopt our own units
      // as outside ones, for a whole span, again and again. Charges dropped from the log (a
      // request sent more than the guard ago) are compared with while it keeps them (Log::gone,
      // one period more); older ones, and dropped sub-buckets, are not: what the upstream counted
      // of them is unknown, and ignoring the count would let outside units it shows be granted
      // again; counted low, some of ours may be adopted as outside units, never too few.
      const int64_t sent = std::min(sent_ns, now);
      const int64_t from = sent < std::numeric_limits<int64_t>::min() + rule.period_ns
                               ? std::numeric_limits<int64_t>::min()
                               : sent - rule.period_ns;
      int64_t ours = 0;   // what the message compares with (returned)
      int64_t known = 0;  // of those, the charges we know were made
      if (rule.spec.sub_buckets > 0) {
        const Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        for (int64_t i = b.newest - n + 1; i <= b.newest; ++i) {
          if (i * rule.bucket_ns <= from) continue;
          const int64_t units = b.counts[((i % n) + n) % n];
          ours += units;
          if (i * rule.bucket_ns > carry_) known += units;
        }
      } else if (log_ != nullptr) {
        for (const LogEntry& e : log_->gone) {
          if (e.at_ns <= from) continue;
          ours += e.units;
          if (e.at_ns > carry_) known += e.units;
        }
        for (size_t i = 0; i < log_->size; ++i) {
          const int64_t charged = log_->at(i).at_ns;
          if (charged <= from) continue;
          ours += log_->at(i).units;
          if (charged > carry_) known += log_->at(i).units;
        }
      }
      if (used <= known) return ours;
      const int64_t extra = used - known;
      // Counted as charged now, so kept for a whole span; or, when the upstream says its window
      // resets sooner, until that reset (plus the guard).
      int64_t at = now;
      if (reset_ns > now && reset_ns - rule.period_ns < now) at = reset_ns - rule.period_ns;
      if (rule.spec.sub_buckets > 0) {
        Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        const int64_t index = std::max(FloorDiv(at, rule.bucket_ns), b.newest - n + 1);
        b.counts[((index % n) + n) % n] += extra;
      } else {
        if (log_ == nullptr) log_ = std::make_unique<Log>();
        if (log_->size > 0 && log_->at(log_->size - 1).at_ns >= at) {
          log_->at(log_->size - 1).units += extra;  // keeps the log in time order
        } else {
          log_->Push({at, extra});
        }
      }
      used_ += extra;
      reserved_ -= extra;  // counted in the current block, like a charge
      adopted_ = now;
      *added = extra;
      return ours;
    }
    case LimitKind::kTokenBucket:
    case LimitKind::kConcurrency:
      break;
  }
  return before;
}

void Counter::RestoreHeld(int64_t expiry_ns, uint64_t lease_key, int64_t units, int64_t now) {
  if (expiry_ns <= now) return;
  if (held_ == nullptr) held_ = std::make_unique<Held>();
  (*held_)[{expiry_ns, lease_key}] += units;
  used_ += units;
}

}  // namespace quotad

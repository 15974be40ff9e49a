#include "service/core/limits.h"

#include <algorithm>
#include <utility>

#include "absl/time/civil_time.h"

namespace quotad {
namespace {

constexpr int64_t kMinNs = std::numeric_limits<int64_t>::min();

int64_t ToNs(absl::Time t) { return absl::ToUnixNanos(t); }

}  // namespace

Rule::Rule(LimitSpec s, std::string name) : spec(std::move(s)), full_name(std::move(name)) {
  period_ns = absl::ToInt64Nanoseconds(spec.period);
  guard_ns = absl::ToInt64Nanoseconds(spec.guard);
  span_ns = period_ns + guard_ns;
  if (spec.kind == LimitKind::kTokenBucket && spec.rate > 0) {
    // Rounded up: a slightly slower refill never over-grants.
    emission_ns = (period_ns + spec.rate - 1) / spec.rate;
  }
  if (spec.kind == LimitKind::kSliding && spec.sub_buckets > 0) {
    bucket_ns = (period_ns + spec.sub_buckets - 1) / spec.sub_buckets;
    // Bucket i is dropped at (i + slots) * width, which must be no earlier than the end of
    // its last charge's span, (i + 1) * width + span.
    bucket_slots = (span_ns + bucket_ns - 1) / bucket_ns + 1;
  }
}

bool Rule::SameShape(const Rule& other) const {
  if (spec.kind != other.spec.kind) return false;
  switch (spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      return spec.unit == other.spec.unit && spec.zone_name == other.spec.zone_name &&
             guard_ns == other.guard_ns;
    case LimitKind::kRolling:
      return span_ns == other.span_ns;
    case LimitKind::kSliding:
      return span_ns == other.span_ns && spec.sub_buckets == other.spec.sub_buckets;
    case LimitKind::kTokenBucket:
      return emission_ns == other.emission_ns;
    case LimitKind::kConcurrency:
      return true;
  }
  return false;
}

void CalendarWindow(CalendarUnit unit, const absl::TimeZone& zone, int64_t t_ns, int64_t* start_ns,
                    int64_t* end_ns) {
  const absl::CivilSecond cs = zone.At(absl::FromUnixNanos(t_ns)).cs;
  absl::Time start, end;
  switch (unit) {
    case CalendarUnit::kMinute: {
      const absl::CivilMinute m(cs);
      start = absl::FromCivil(m, zone);
      end = absl::FromCivil(m + 1, zone);
      break;
    }
    case CalendarUnit::kHour: {
      const absl::CivilHour h(cs);
      start = absl::FromCivil(h, zone);
      end = absl::FromCivil(h + 1, zone);
      break;
    }
    case CalendarUnit::kDay: {
      const absl::CivilDay d(cs);
      start = absl::FromCivil(d, zone);
      end = absl::FromCivil(d + 1, zone);
      break;
    }
    case CalendarUnit::kWeek: {
      // ISO weeks start on Monday.
      const absl::CivilDay monday =
          absl::PrevWeekday(absl::CivilDay(cs) + 1, absl::Weekday::monday);
      start = absl::FromCivil(monday, zone);
      end = absl::FromCivil(monday + 7, zone);
      break;
    }
    case CalendarUnit::kMonth: {
      const absl::CivilMonth m(cs);
      start = absl::FromCivil(m, zone);
      end = absl::FromCivil(m + 1, zone);
      break;
    }
    case CalendarUnit::kNone:
      *start_ns = kMinNs;
      *end_ns = kInfiniteNs;
      return;
  }
  *start_ns = ToNs(start);
  *end_ns = ToNs(end);
}

void Counter::Log::Push(LogEntry e) {
  if (size == ring.size()) {
    std::vector<LogEntry> bigger(std::max<size_t>(4, ring.size() * 2));
    for (size_t i = 0; i < size; ++i) bigger[i] = at(i);
    ring = std::move(bigger);
    head = 0;
  }
  ring[(head + size) % ring.size()] = e;
  ++size;
}

void Counter::Log::PopFront() {
  head = (head + 1) % ring.size();
  --size;
}

void Counter::Roll(const Rule& rule, int64_t now) {
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      if (now >= end_ns_) {
        const int64_t old_end = end_ns_;
        CalendarWindow(rule.spec.unit, rule.spec.zone, now, &start_ns_, &end_ns_);
        // The guard's charges, and what the journal allows of them, if this is the next window.
        const bool next = start_ns_ == old_end;
        used_ = next ? carry_ : 0;
        reserved_ = next ? carry_reserved_ : 0;
        carry_ = 0;
        carry_reserved_ = 0;
        adopted_ = 0;
      }
      break;
    case LimitKind::kRolling:
      if (now >= end_ns_) {  // closed; the next charge opens a new window
        // Units charged within the old window's guard may have opened the upstream's next
        // window (it lasts `period` from them): they count in ours while that one can last.
        const bool carried = carry_ > 0 && now < end_ns_ + rule.period_ns;
        used_ = carried ? carry_ : 0;
        reserved_ = carried ? carry_reserved_ : 0;
        adopted_ = 0;
      }
      break;
    case LimitKind::kSliding:
      if (rule.spec.sub_buckets > 0) {
        AdvanceBuckets(rule, now);
      } else if (log_ != nullptr) {
        while (log_->size > 0 && log_->at(0).at_ns + rule.span_ns <= now) {
          used_ -= log_->at(0).units;
          log_->gone.push_back(log_->at(0));
          log_->PopFront();
        }
        while (!log_->gone.empty() &&
               log_->gone.front().at_ns + rule.span_ns + rule.period_ns <= now) {
          log_->gone.pop_front();
        }
      }
      break;
    case LimitKind::kConcurrency:
      if (held_ != nullptr) {
        while (!held_->empty() && held_->begin()->first.first <= now) {
          used_ -= held_->begin()->second;
          held_->erase(held_->begin());
        }
      }
      break;
    case LimitKind::kTokenBucket:
      break;
  }
}

void Counter::AdvanceBuckets(const Rule& rule, int64_t now) {
  const int64_t n = rule.bucket_slots;
  if (buckets_ == nullptr) {
    buckets_ = std::make_unique<Buckets>();
    buckets_->counts.assign(n, 0);
  }
  Buckets& b = *buckets_;
  const int64_t current = FloorDiv(now, rule.bucket_ns);
  if (b.newest == kMinNs || current - b.newest >= n) {
    std::fill(b.counts.begin(), b.counts.end(), 0);
    used_ = 0;
    b.newest = current;
    return;
  }
  // A clock that steps back keeps charging the newest bucket: it expires later, never earlier.
  for (int64_t i = b.newest + 1; i <= current; ++i) {
    int64_t& slot = b.counts[i % n];
    used_ -= slot;
    slot = 0;
  }
  if (current > b.newest) b.newest = current;
}

bool Counter::Fits(const Rule& rule, int64_t now, int64_t cost, int64_t* retry_ns) {
  const int64_t cap = rule.Capacity();
  switch (rule.spec.kind) {
    case LimitKind::kUnlimited:
      Roll(rule, now);
      return true;
    case LimitKind::kCalendar:
    case LimitKind::kRolling:
      Roll(rule, now);
      if (used_ + cost <= cap) {
        // Within the guard the charge also counts in the next window.
        const bool in_guard = rule.guard_ns > 0 && now < end_ns_ && now >= end_ns_ - rule.guard_ns;
        if (!in_guard || carry_ + cost <= cap) return true;
      }
      *retry_ns = cost > cap ? kInfiniteNs : end_ns_;
      return false;
    case LimitKind::kTokenBucket: {
      const int64_t tat = std::max(start_ns_, now) + cost * rule.emission_ns;
      const int64_t allowed_at = tat - cap * rule.emission_ns;
      if (allowed_at <= now) return true;
      *retry_ns = cost > cap ? kInfiniteNs : allowed_at;
      return false;
    }
    case LimitKind::kSliding:
    case LimitKind::kConcurrency: {
      Roll(rule, now);
      if (used_ + cost <= cap) return true;
      if (cost > cap) {
        *retry_ns = kInfiniteNs;
        return false;
      }
      const int64_t need = used_ + cost - cap;
      int64_t freed = 0;
      *retry_ns = kInfiniteNs;
      if (rule.spec.kind == LimitKind::kConcurrency) {
        for (const auto& [key, units] : *held_) {
          freed += units;
          if (freed >= need) {
            *retry_ns = key.first;
            break;
          }
        }
      } else if (rule.spec.sub_buckets > 0) {
        const Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        for (int64_t i = b.newest - n + 1; i <= b.newest; ++i) {
          freed += b.counts[((i % n) + n) % n];
          if (freed >= need) {
            *retry_ns = (i + n) * rule.bucket_ns;
            break;
          }
        }
      } else {
        for (size_t i = 0; i < log_->size; ++i) {
          freed += log_->at(i).units;
          if (freed >= need) {
            *retry_ns = log_->at(i).at_ns + rule.span_ns;
            break;
          }
        }
      }
      return false;
    }
  }
  return false;
}

int64_t Counter::Charge(const Rule& rule, int64_t now, int64_t cost, uint64_t lease_key,
                        int64_t expiry_ns) {
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      used_ += cost;
      if (rule.guard_ns > 0 && now >= end_ns_ - rule.guard_ns) carry_ += cost;
      return start_ns_;
    case LimitKind::kRolling:
      if (now >= end_ns_) {  // opens a new window, with what Roll() carried into it
        start_ns_ = now;
        end_ns_ = now + rule.span_ns;
        carry_ = 0;
        carry_reserved_ = 0;
      }
      used_ += cost;
      if (rule.guard_ns > 0 && now >= end_ns_ - rule.guard_ns) carry_ += cost;
      return start_ns_;
    case LimitKind::kTokenBucket:
      // The token is the arrival time this charge reached: its units are the last `cost`
      // emission intervals before it.
      start_ns_ = std::max(start_ns_, now) + cost * rule.emission_ns;
      return start_ns_;
    case LimitKind::kSliding:
      used_ += cost;
      reserved_ -= cost;  // what is left of the durable block (meaningless without a journal)
      if (rule.spec.sub_buckets > 0) {
        Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        b.counts[((b.newest % n) + n) % n] += cost;
        return b.newest;
      }
      if (log_ == nullptr) log_ = std::make_unique<Log>();
      if (log_->size > 0 && log_->at(log_->size - 1).at_ns >= now) {
        // Same instant (or a clock step back): merge into the newest entry, which expires last.
        log_->at(log_->size - 1).units += cost;
        return log_->at(log_->size - 1).at_ns;
      }
      log_->Push({now, cost});
      return now;
    case LimitKind::kConcurrency:
      if (held_ == nullptr) held_ = std::make_unique<Held>();
      (*held_)[{expiry_ns, lease_key}] += cost;
      used_ += cost;
      return 0;
  }
  return 0;
}

int64_t Counter::Refund(const Rule& rule, int64_t now, int64_t token, int64_t charged,
                        int64_t units, int64_t charged_at) {
  units = std::min(units, charged);
  if (units <= 0) return 0;
  Roll(rule, now);
  int64_t take = 0;
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
    case LimitKind::kRolling:
      if (token != start_ns_ || (rule.spec.kind == LimitKind::kRolling && now >= end_ns_)) {
        return 0;
      }
      // The upstream's count adopted since may not hold these units: giving them back could
      // undercut it (sliding windows check this by the charge's time, below).
      if (charged_at <= adopted_at_) return 0;
      // Never below the upstream's own count (adopted_), which may include these units.
      take = std::clamp<int64_t>(used_ - adopted_, 0, units);
      used_ -= take;
      return take;
    case LimitKind::kTokenBucket: {
      // The charge took the emission intervals (token - charged * e, token]. Only the part of
      // them still ahead of now is outstanding; earlier ones have refilled already, and giving
      // them back would hand out other leases' units (or the same units twice).
      const int64_t own_start = std::max(now, token - charged * rule.emission_ns);
      if (token <= own_start || start_ns_ <= now) return 0;
      take = std::min({units, (token - own_start) / rule.emission_ns,
                       (start_ns_ - now) / rule.emission_ns});
      start_ns_ -= take * rule.emission_ns;
      return take;
    }
    case LimitKind::kSliding:
      if (rule.spec.sub_buckets > 0) {
        if (buckets_ == nullptr) return 0;
        Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        if (token > b.newest || token <= b.newest - n) return 0;
        // The bucket may hold charges from before an adoption, which counted them upstream.
        if (token * rule.bucket_ns <= adopted_) return 0;
        int64_t& slot = b.counts[((token % n) + n) % n];
        take = std::min(units, slot);
        slot -= take;
      } else {
        if (log_ == nullptr) return 0;
        // Entries are in time order: binary search for the charge's instant.
        size_t lo = 0, hi = log_->size;
        while (lo < hi) {
          const size_t mid = (lo + hi) / 2;
          if (log_->at(mid).at_ns < token) {
            lo = mid + 1;
          } else {
            hi = mid;
          }
        }
        if (lo == log_->size || log_->at(lo).at_ns != token) return 0;
        if (token <= adopted_) return 0;  // the upstream counted it when we adopted its count
        take = std::min(units, log_->at(lo).units);
        log_->at(lo).units -= take;
      }
      used_ -= take;
      return take;
    case LimitKind::kConcurrency:
      return 0;
  }
  return 0;
}

int64_t Counter::Free(int64_t expiry_ns, uint64_t lease_key) {
  if (held_ == nullptr) return 0;
  auto it = held_->find({expiry_ns, lease_key});
  if (it == held_->end()) return 0;
  const int64_t units = it->second;
  used_ -= units;
  held_->erase(it);
  return units;
}

bool Counter::MoveExpiry(int64_t old_expiry_ns, uint64_t lease_key, int64_t new_expiry_ns) {
  if (held_ == nullptr) return false;
  auto it = held_->find({old_expiry_ns, lease_key});
  if (it == held_->end()) return false;
  const int64_t units = it->second;
  held_->erase(it);
  (*held_)[{new_expiry_ns, lease_key}] += units;
  return true;
}

CounterView Counter::View(const Rule& rule, int64_t now) {
  Roll(rule, now);
  CounterView v;
  const int64_t cap = rule.Capacity();
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      v.used = used_;
      v.reset_ns = end_ns_;
      break;
    case LimitKind::kRolling:
      v.used = now < end_ns_ ? used_ : 0;
      v.reset_ns = now < end_ns_ ? end_ns_ : kInfiniteNs;
      break;
    case LimitKind::kTokenBucket:
      v.used = start_ns_ > now ? (start_ns_ - now + rule.emission_ns - 1) / rule.emission_ns : 0;
      v.reset_ns = start_ns_ > now ? start_ns_ : kInfiniteNs;
      break;
    case LimitKind::kSliding:
      v.used = used_;
      if (rule.spec.sub_buckets > 0) {
        const Buckets& b = *buckets_;
        const int64_t n = static_cast<int64_t>(b.counts.size());
        for (int64_t i = b.newest - n + 1; i <= b.newest; ++i) {
          if (b.counts[((i % n) + n) % n] > 0) {
            v.reset_ns = (i + n) * rule.bucket_ns;
            break;
          }
        }
      } else if (log_ != nullptr) {
        for (size_t i = 0; i < log_->size; ++i) {
          if (log_->at(i).units > 0) {
            v.reset_ns = log_->at(i).at_ns + rule.span_ns;
            break;
          }
        }
      }
      break;
    case LimitKind::kConcurrency:
      v.used = used_;
      if (held_ != nullptr && !held_->empty()) v.reset_ns = held_->begin()->first.first;
      break;
  }
  v.remaining = rule.spec.kind == LimitKind::kUnlimited ? cap : std::max<int64_t>(0, cap - v.used);
  return v;
}

int64_t Counter::DrainedAt(const Rule& rule, int64_t now) {
  Roll(rule, now);
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited: {
      if (carry_ > 0) {
        int64_t next_start, next_end;
        CalendarWindow(rule.spec.unit, rule.spec.zone, end_ns_, &next_start, &next_end);
        return next_end;
      }
      return used_ > 0 ? end_ns_ : now;
    }
    case LimitKind::kRolling:
      if (carry_ > 0) return end_ns_ + rule.period_ns;
      return used_ > 0 && now < end_ns_ ? end_ns_ : now;
    case LimitKind::kTokenBucket:
      return std::max(now, start_ns_);
    case LimitKind::kSliding:
      if (used_ <= 0) return now;
      if (rule.spec.sub_buckets > 0) {
        // Bucket i is dropped at (i + slots) * width.
        return (buckets_->newest + rule.bucket_slots) * rule.bucket_ns;
      }
      return log_->at(log_->size - 1).at_ns + rule.span_ns;
    case LimitKind::kConcurrency:
      return held_ != nullptr && !held_->empty() ? held_->rbegin()->first.first : now;
  }
  return now;
}

void Counter::Clear(const Rule& rule) {
  if (rule.spec.kind == LimitKind::kConcurrency) return;
  used_ = 0;
  carry_ = 0;
  adopted_ = 0;
  log_.reset();
  buckets_.reset();
  if (rule.spec.kind == LimitKind::kTokenBucket) start_ns_ = kMinNs;
  // A rolling window closes: the upstream that was reset opens its next one at the next call,
  // so must we (refunds of what was charged before are refused by the ledger's reset time).
  // Calendar keeps its window bounds.
  if (rule.spec.kind == LimitKind::kRolling) end_ns_ = kMinNs;
}

}  // namespace quotad

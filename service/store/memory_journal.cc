#include "service/store/memory_journal.h"

#include <iterator>

namespace quotad {
namespace {

// Erases the entries of `map` for which `ended(value)` holds.
template <typename Map, typename Pred>
void EraseIf(Map& map, Pred ended) {
  for (auto it = map.begin(); it != map.end();) {
    it = ended(it->second) ? map.erase(it) : std::next(it);
  }
}

}  // namespace

absl::StatusOr<JournalState> MemoryJournal::Load() {
  absl::MutexLock l(&mu_);
  JournalState state;
  for (const auto& [key, r] : reservations_) state.reservations.push_back(r);
  for (const auto& [id, lease] : leases_) state.leases.push_back(lease);
  for (const auto& [key, c] : cooldowns_) state.cooldowns.push_back(c);
  for (const auto& [key, o] : outside_) state.outside.push_back(o);
  return state;
}

absl::Status MemoryJournal::Reserve(const std::vector<Reservation>& reservations) {
  absl::MutexLock l(&mu_);
  for (const Reservation& r : reservations) {
    ReservationKey key(r.key.credential, r.key.limit, r.key.scope, r.window_start_ns);
    if (r.units < 0) {
      auto it = reservations_.find(key);
      if (it != reservations_.end()) it->second.until_ns = r.until_ns;
      continue;
    }
    reservations_.insert_or_assign(std::move(key), r);
  }
  return absl::OkStatus();
}

absl::Status MemoryJournal::PutLease(const JournalLease& lease) {
  absl::MutexLock l(&mu_);
  leases_.insert_or_assign(lease.id, lease);
  return absl::OkStatus();
}

absl::Status MemoryJournal::RenewLease(const std::string& id, int64_t expiry_ns) {
  absl::MutexLock l(&mu_);
  auto it = leases_.find(id);
  if (it != leases_.end()) it->second.expiry_ns = expiry_ns;
  return absl::OkStatus();
}

void MemoryJournal::DeleteLease(const std::string& id) {
  absl::MutexLock l(&mu_);
  leases_.erase(id);
}

absl::Status MemoryJournal::PutCooldown(const JournalCooldown& cooldown) {
  absl::MutexLock l(&mu_);
  cooldowns_.insert_or_assign(PairKey(cooldown.credential, cooldown.feature), cooldown);
  return absl::OkStatus();
}

absl::Status MemoryJournal::PutOutside(const JournalOutside& outside) {
  absl::MutexLock l(&mu_);
  outside_.insert_or_assign(PairKey(outside.credential, outside.limit), outside);
  return absl::OkStatus();
}

absl::Status MemoryJournal::Compact(int64_t now_ns) {
  absl::MutexLock l(&mu_);
  EraseIf(reservations_, [now_ns](const Reservation& r) { return r.until_ns <= now_ns; });
  EraseIf(leases_, [now_ns](const JournalLease& l) { return l.expiry_ns <= now_ns; });
  EraseIf(cooldowns_, [now_ns](const JournalCooldown& c) { return c.until_ns <= now_ns; });
  EraseIf(outside_, [now_ns](const JournalOutside& o) { return o.until_ns <= now_ns; });
  return absl::OkStatus();
}

}  // namespace quotad

#ifndef QUOTAD_TESTS_CORE_MEMORY_JOURNAL_H_
#define QUOTAD_TESTS_CORE_MEMORY_JOURNAL_H_

// A Journal kept in memory, for tests of the ledger's write-ahead logic: a "restart" is a new
// ledger restored from the same journal. Can be told to fail. Thread-safe.

#include <map>
#include <string>
#include <tuple>

#include "absl/synchronization/mutex.h"
#include "service/core/journal.h"

namespace quotad::testing {

class MemoryJournal : public Journal {
 public:
  absl::StatusOr<JournalState> Load() override {
    absl::MutexLock l(&mu_);
    JournalState s;
    for (const auto& [k, r] : reservations_) s.reservations.push_back(r);
    for (const auto& [id, lease] : leases_) s.leases.push_back(lease);
    for (const auto& [key, c] : cooldowns_) s.cooldowns.push_back(c);
    for (const auto& [key, o] : outside_) s.outside.push_back(o);
    return s;
  }
  absl::Status Reserve(const std::vector<Reservation>& rs) override {
    absl::MutexLock l(&mu_);
    if (fail_) return absl::InternalError("disk full");
    ++reserve_calls_;
    for (const Reservation& r : rs) {
      auto key = std::make_tuple(r.key.credential, r.key.limit, r.key.scope, r.window_start_ns);
      if (r.units < 0) {
        auto it = reservations_.find(key);
        if (it != reservations_.end()) it->second.until_ns = r.until_ns;
        continue;
      }
      reservations_[key] = r;
    }
    return absl::OkStatus();
  }
  absl::Status PutLease(const JournalLease& lease) override {
    absl::MutexLock l(&mu_);
    if (fail_) return absl::InternalError("disk full");
    leases_[lease.id] = lease;
    return absl::OkStatus();
  }
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override {
    absl::MutexLock l(&mu_);
    if (fail_) return absl::InternalError("disk full");
    leases_[id].expiry_ns = expiry_ns;
    return absl::OkStatus();
  }
  void DeleteLease(const std::string& id) override {
    absl::MutexLock l(&mu_);
    leases_.erase(id);
  }
  absl::Status PutCooldown(const JournalCooldown& c) override {
    absl::MutexLock l(&mu_);
    if (fail_) return absl::InternalError("disk full");
    cooldowns_[std::make_pair(c.credential, c.feature)] = c;
    return absl::OkStatus();
  }
  absl::Status PutOutside(const JournalOutside& o) override {
    absl::MutexLock l(&mu_);
    if (fail_) return absl::InternalError("disk full");
    outside_[std::make_pair(o.credential, o.limit)] = o;
    return absl::OkStatus();
  }
  absl::Status Compact(int64_t now_ns) override { return absl::OkStatus(); }

  void set_fail(bool fail) {
    absl::MutexLock l(&mu_);
    fail_ = fail;
  }
  int reserve_calls() {
    absl::MutexLock l(&mu_);
    return reserve_calls_;
  }

 private:
  absl::Mutex mu_;
  bool fail_ ABSL_GUARDED_BY(mu_) = false;
  int reserve_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::tuple<std::string, std::string, std::string, int64_t>, Reservation> reservations_
      ABSL_GUARDED_BY(mu_);
  std::map<std::string, JournalLease> leases_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, JournalCooldown> cooldowns_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, JournalOutside> outside_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_CORE_MEMORY_JOURNAL_H_

#ifndef QUOTAD_SERVICE_STORE_MEMORY_JOURNAL_H_
#define QUOTAD_SERVICE_STORE_MEMORY_JOURNAL_H_

// A Journal kept in memory: the reference implementation of the Journal contract
// (service/core/journal.h), run by the conformance suite next to the durable ones, and a journal
// for tests of the ledger's write-ahead logic, where a "restart" is a new ledger restored from
// the same journal. Nothing survives the process; every write is "durable" on return.

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "service/core/journal.h"

namespace quotad {

// Thread-safe: every method under one mutex.
class MemoryJournal : public Journal {
 public:
  MemoryJournal() = default;
  MemoryJournal(const MemoryJournal&) = delete;
  MemoryJournal& operator=(const MemoryJournal&) = delete;

  // Records in key order (reservations by key and window start, leases by id, ...).
  absl::StatusOr<JournalState> Load() override;
  absl::Status Reserve(const std::vector<Reservation>& reservations) override;
  absl::Status PutLease(const JournalLease& lease) override;
  // Renewing a lease that is not there does nothing.
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override;
  void DeleteLease(const std::string& id) override;
  absl::Status PutCooldown(const JournalCooldown& cooldown) override;
  absl::Status PutOutside(const JournalOutside& outside) override;
  // Drops reservations, cooldowns and outside records with until_ns <= now_ns and leases with
  // expiry_ns <= now_ns.
  absl::Status Compact(int64_t now_ns) override;

 private:
  using ReservationKey = std::tuple<std::string, std::string, std::string, int64_t>;
  using PairKey = std::pair<std::string, std::string>;

  absl::Mutex mu_;
  std::map<ReservationKey, Reservation> reservations_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JournalLease> leases_ ABSL_GUARDED_BY(mu_);
  std::map<PairKey, JournalCooldown> cooldowns_ ABSL_GUARDED_BY(mu_);  // credential, feature
  std::map<PairKey, JournalOutside> outside_ ABSL_GUARDED_BY(mu_);     // credential, limit
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_MEMORY_JOURNAL_H_

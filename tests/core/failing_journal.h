#ifndef QUOTAD_TESTS_CORE_FAILING_JOURNAL_H_
#define QUOTAD_TESTS_CORE_FAILING_JOURNAL_H_

// A Journal decorator for tests of the ledger's write-ahead logic: it forwards every call to
// another Journal (usually the reference MemoryJournal, service/store/memory_journal.h), counts
// the Reserve calls that reach it, and, once told to fail, answers every durable write (Reserve,
// PutLease, RenewLease, PutCooldown, PutOutside) with kInternal "disk full" without forwarding
// it, as a store whose disk filled up would. Load, DeleteLease and Compact always go through.
//
//   MemoryJournal memory;
//   FailingJournal journal(&memory);
//   options.journal = &journal;
//   journal.set_fail(true);   // the next writes fail; a restart may still Load() what was kept
//
// Thread-safe if the wrapped journal is. Does not own the wrapped journal, which must outlive it.

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/core/journal.h"

namespace quotad::testing {

class FailingJournal : public Journal {
 public:
  explicit FailingJournal(Journal* inner) : inner_(inner) {}
  FailingJournal(const FailingJournal&) = delete;
  FailingJournal& operator=(const FailingJournal&) = delete;

  absl::StatusOr<JournalState> Load() override { return inner_->Load(); }
  absl::Status Reserve(const std::vector<Reservation>& reservations) override {
    if (fail_) return Failure();
    ++reserve_calls_;
    return inner_->Reserve(reservations);
  }
  absl::Status PutLease(const JournalLease& lease) override {
    return fail_ ? Failure() : inner_->PutLease(lease);
  }
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override {
    return fail_ ? Failure() : inner_->RenewLease(id, expiry_ns);
  }
  void DeleteLease(const std::string& id) override { inner_->DeleteLease(id); }
  absl::Status PutCooldown(const JournalCooldown& cooldown) override {
    return fail_ ? Failure() : inner_->PutCooldown(cooldown);
  }
  absl::Status PutOutside(const JournalOutside& outside) override {
    return fail_ ? Failure() : inner_->PutOutside(outside);
  }
  absl::Status Compact(int64_t now_ns) override { return inner_->Compact(now_ns); }

  // From now on, durable writes fail (true) or go through again (false).
  void set_fail(bool fail) { fail_ = fail; }
  // Reserve calls forwarded to the wrapped journal (failed ones are not counted).
  int reserve_calls() const { return reserve_calls_; }

 private:
  static absl::Status Failure() { return absl::InternalError("disk full"); }

  Journal* const inner_;
  std::atomic<bool> fail_{false};
  std::atomic<int> reserve_calls_{0};
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_CORE_FAILING_JOURNAL_H_

#ifndef QUOTAD_TESTS_SUPPORT_HOOKED_JOURNAL_H_
#define QUOTAD_TESTS_SUPPORT_HOOKED_JOURNAL_H_

// For ledger tests that need one interleaving: a MemoryJournal that runs a hook once before its
// next PutLease or Reserve, and a reload run on a thread of its own from such a hook.

#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/store/memory_journal.h"

namespace quotad::testing {

// A MemoryJournal that runs a hook once, on the writing thread, before the next PutLease (for a
// feature without a concurrency limit that write is InsertLease's: after the grant was decided,
// before the lease is in the table, under the credential's mutex) or the next Reserve.
// Thread-safe.
class HookedJournal : public MemoryJournal {
 public:
  void BeforeNextPutLease(absl::AnyInvocable<void()> hook) {
    absl::MutexLock l(&hook_mu_);
    put_lease_hook_ = std::move(hook);
  }
  void BeforeNextReserve(absl::AnyInvocable<void()> hook) {
    absl::MutexLock l(&hook_mu_);
    reserve_hook_ = std::move(hook);
  }
  absl::Status PutLease(const JournalLease& lease) override {
    if (absl::AnyInvocable<void()> hook = Take(&put_lease_hook_); hook != nullptr) hook();
    return MemoryJournal::PutLease(lease);
  }
  absl::Status Reserve(const std::vector<Reservation>& rs) override {
    if (absl::AnyInvocable<void()> hook = Take(&reserve_hook_); hook != nullptr) hook();
    return MemoryJournal::Reserve(rs);
  }

 private:
  absl::AnyInvocable<void()> Take(absl::AnyInvocable<void()>* hook) {
    absl::MutexLock l(&hook_mu_);
    return std::exchange(*hook, nullptr);
  }
  absl::Mutex hook_mu_;
  absl::AnyInvocable<void()> put_lease_hook_ ABSL_GUARDED_BY(hook_mu_);
  absl::AnyInvocable<void()> reserve_hook_ ABSL_GUARDED_BY(hook_mu_);
};

// Runs `reload` on a thread of its own, started from a journal hook that sits between a grant
// and its entry in the lease table, and gives it up to 100 ms to finish there. A reload that can
// run in that gap finishes at once (one did, before leases entered the table under their
// credential's mutex); one that waits for the credential's mutex finishes after the grant's
// entry is in the table. Join() before looking at the outcome. Not thread-safe.
class ReloadInTheGap {
 public:
  explicit ReloadInTheGap(absl::AnyInvocable<absl::Status()> reload)
      : reload_(std::move(reload)) {}
  ~ReloadInTheGap() { Join(); }
  ReloadInTheGap(const ReloadInTheGap&) = delete;
  ReloadInTheGap& operator=(const ReloadInTheGap&) = delete;

  // For HookedJournal::BeforeNext*.
  absl::AnyInvocable<void()> Hook() {
    return [this] {
      thread_ = std::thread([this] {
        status_ = reload_();
        done_.Notify();
      });
      done_.WaitForNotificationWithTimeout(absl::Milliseconds(100));
    };
  }
  // The reload's status; UNKNOWN when the hook never ran.
  absl::Status Join() {
    if (thread_.joinable()) thread_.join();
    return status_;
  }

 private:
  absl::AnyInvocable<absl::Status()> reload_;
  std::thread thread_;
  absl::Notification done_;
  absl::Status status_ = absl::UnknownError("the hook did not run the reload");
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SUPPORT_HOOKED_JOURNAL_H_

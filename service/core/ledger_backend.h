#ifndef QUOTAD_SERVICE_CORE_LEDGER_BACKEND_H_
#define QUOTAD_SERVICE_CORE_LEDGER_BACKEND_H_

// The embedded ledger as a QuotaBackend: every method forwards to the Ledger (one virtual call,
// nothing allocated or copied on the way).

#include <optional>
#include <utility>
#include <vector>

#include "service/core/ledger.h"
#include "service/core/quota_backend.h"

namespace quotad {

// Thread-safe as the Ledger. Does not own `ledger`, which must outlive *this.
class LedgerBackend final : public QuotaBackend {
 public:
  explicit LedgerBackend(Ledger* ledger) : ledger_(ledger) {}

  bool shared() const override { return false; }
  bool serving() const override { return true; }
  Clock* clock() const override { return ledger_->clock(); }

  absl::StatusOr<Decision> Acquire(const AcquireRequest& request) override {
    return ledger_->Acquire(request);
  }
  WaitTicket AcquireOrWait(const AcquireRequest& request, absl::Duration max_wait, int priority,
                           WaitCallback done) override {
    return ledger_->AcquireOrWait(request, max_wait, priority, std::move(done));
  }
  bool Cancel(const WaitTicket& ticket) override { return ledger_->Cancel(ticket); }
  std::vector<absl::StatusOr<Decision>> AcquireAll(
      absl::Span<const AcquireRequest> requests) override {
    return ledger_->AcquireAll(requests);
  }
  void AcquireShared(const AcquireRequest& request, const SharedRequestId&,
                     DecisionCallback done) override {
    done(ledger_->Acquire(request));  // not called: the service keeps request_ids itself
  }

  absl::StatusOr<ReleaseResult> Release(const LeaseId& id, std::optional<int64_t> used) override {
    return ledger_->Release(id, used);
  }
  absl::StatusOr<absl::Time> Renew(const LeaseId& id, absl::Duration ttl) override {
    return ledger_->Renew(id, ttl);
  }
  absl::StatusOr<ReportResult> Report(const UpstreamAnswer& answer) override {
    return ledger_->Report(answer);
  }
  absl::StatusOr<LeaseInfo> FindLease(const LeaseId& id) override {
    std::optional<LeaseInfo> lease = ledger_->FindLease(id);
    if (!lease.has_value()) return absl::NotFoundError("unknown or expired lease");
    return *std::move(lease);
  }

  absl::StatusOr<std::vector<LimitStatus>> Usage(absl::string_view credential) override {
    return ledger_->Usage(credential);
  }
  absl::StatusOr<std::vector<LeaseInfo>> Leases(absl::string_view credential) override {
    return ledger_->Leases(credential);
  }
  absl::Status Reset(absl::string_view credential) override { return ledger_->Reset(credential); }

  Policy policy() const override { return ledger_->policy(); }
  absl::Status Reload(const Policy& policy) override { return ledger_->Reload(policy); }

 private:
  Ledger* const ledger_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LEDGER_BACKEND_H_

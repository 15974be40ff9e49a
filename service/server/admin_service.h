#ifndef QUOTAD_SERVICE_SERVER_ADMIN_SERVICE_H_
#define QUOTAD_SERVICE_SERVER_ADMIN_SERVICE_H_

// The Admin service (quotad.v1.Admin) without its transport: GetUsage, ListLeases,
// ListCredentials, ResetCredential, ReloadConfig. Every method is for admins only (any caller
// when auth is off) and checks that first; lists are paginated (AIP-158).

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "quotad/v1/quotad.pb.h"
#include "service/config/config.h"
#include "service/core/ledger.h"
#include "service/core/quota_backend.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/serving_config.h"

namespace quotad {

// Thread-safe. ReloadConfig blocks while it reads the file (call it off the completion-queue
// threads); the others never block on I/O with the embedded ledger (a shared backend answers
// them from its store, or kUnimplemented for what it does not build yet). Does not own
// `backend`, `config` or `metrics`, which must outlive *this.
class AdminService {
 public:
  // `config_path`: the file ReloadConfig reads, within `limits`.
  AdminService(QuotaBackend* backend, ConfigInForce* config, Metrics* metrics,
               std::string config_path, ConfigLimits limits);
  // The embedded ledger (a LedgerBackend over it, owned by *this).
  AdminService(Ledger* ledger, ConfigInForce* config, Metrics* metrics, std::string config_path,
               ConfigLimits limits);

  AdminService(const AdminService&) = delete;
  AdminService& operator=(const AdminService&) = delete;

  // Every limit of a credential (paginated). kNotFound for an unknown credential.
  absl::StatusOr<v1::GetUsageResponse> GetUsage(const Caller& caller,
                                                const v1::GetUsageRequest& request);
  // Live leases by expiry, then id (paginated); of one credential or all.
  absl::StatusOr<v1::ListLeasesResponse> ListLeases(const Caller& caller,
                                                    const v1::ListLeasesRequest& request);
  // Configured credentials by name (paginated), and the profiles on the first page.
  absl::StatusOr<v1::ListCredentialsResponse> ListCredentials(
      const Caller& caller, const v1::ListCredentialsRequest& request);
  // Zeroes a credential's counters (Ledger::Reset) and answers its usage after.
  absl::StatusOr<v1::ResetCredentialResponse> ResetCredential(
      const Caller& caller, const v1::ResetCredentialRequest& request);
  // Reads the config file again and applies it (after the admin check, as Reload()).
  absl::StatusOr<v1::ReloadConfigResponse> ReloadConfig(const Caller& caller,
                                                        const v1::ReloadConfigRequest& request);

  // Reads the config file again and applies it: to the backend (Ledger::Reload) and to the
  // services (ConfigInForce). A bad file is rejected (its error returned and logged) and the
  // config in force kept. Counted as quotad_config_reloads_total. Serialized: reloads from
  // Admin, the file watch and SIGHUP may overlap, and the file read last is the one in force.
  absl::StatusOr<v1::ReloadConfigResponse> Reload() ABSL_LOCKS_EXCLUDED(reload_mu_);

 private:
  AdminService(std::unique_ptr<QuotaBackend> backend, ConfigInForce* config, Metrics* metrics,
               std::string config_path, ConfigLimits limits);
  absl::Status CheckAdmin(const Caller& caller);
  absl::StatusOr<v1::ReloadConfigResponse> ReloadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_);

  std::unique_ptr<QuotaBackend> owned_backend_;  // the second constructor's
  QuotaBackend* const backend_;
  ConfigInForce* const config_;
  Metrics* const metrics_;
  const std::string config_path_;
  const ConfigLimits limits_;
  const std::shared_ptr<spdlog::logger> log_;
  absl::Mutex reload_mu_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_ADMIN_SERVICE_H_

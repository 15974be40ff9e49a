#include "service/server/admin_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "service/core/ledger_backend.h"
#include "service/server/auth.h"
#include "service/server/convert.h"
#include "service/server/validation.h"

namespace quotad {
namespace {

// List answers (ListLeases, ListCredentials) are paginated: so many items per page by default,
// at most so many when a caller asks for more.
constexpr size_t kDefaultPageSize = 1000;
constexpr size_t kMaxPageSize = 10000;

// page_size: 0 is kDefaultPageSize; above kMaxPageSize is kMaxPageSize (AIP-158).
absl::StatusOr<size_t> PageSize(int32_t requested) {
  if (requested < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must not be negative, got ", requested));
  }
  if (requested == 0) return kDefaultPageSize;
  return std::min<size_t>(static_cast<size_t>(requested), kMaxPageSize);
}


}  // namespace

AdminService::AdminService(QuotaBackend* backend, ConfigInForce* config, Metrics* metrics,
                           std::string config_path, ConfigLimits limits)
    : backend_(backend),
      config_(config),
      metrics_(metrics),
      config_path_(std::move(config_path)),
      limits_(limits),
      log_(ServerLogger()) {}

AdminService::AdminService(Ledger* ledger, ConfigInForce* config, Metrics* metrics,
                           std::string config_path, ConfigLimits limits)
    : AdminService(std::make_unique<LedgerBackend>(ledger), config, metrics,
                   std::move(config_path), limits) {}

AdminService::AdminService(std::unique_ptr<QuotaBackend> backend, ConfigInForce* config,
                           Metrics* metrics, std::string config_path, ConfigLimits limits)
    : AdminService(backend.get(), config, metrics, std::move(config_path), limits) {
  owned_backend_ = std::move(backend);
}

absl::Status AdminService::CheckAdmin(const Caller& caller) {
  absl::Status s = caller.config->auth->Authorize(caller.identity, AccessMethod::kAdmin, "");
  if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
  return s;
}

absl::StatusOr<v1::GetUsageResponse> AdminService::GetUsage(const Caller& caller,
                                                             const v1::GetUsageRequest& req) {
  if (absl::Status s = CheckAdmin(caller); !s.ok()) return s;
  v1::GetUsageResponse out;
  v1::GetUsageResponse* resp = &out;
  if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
  absl::StatusOr<std::vector<LimitStatus>> usage = backend_->Usage(req.credential());
  if (!usage.ok()) return usage.status();
  resp->set_credential(req.credential());
  const std::shared_ptr<const ServingConfig> snapshot = caller.config;
  if (auto it = snapshot->profile_of.find(req.credential()); it != snapshot->profile_of.end()) {
    resp->set_profile(it->second);
  }
  absl::StatusOr<size_t> page_size = PageSize(req.page_size());
  if (!page_size.ok()) return page_size.status();
  // Order: the limits as the ledger lists them (the configuration's order), scopes in byte
  // order within a limit. The token is the last (limit, scope) answered, web-safe base64 of
  // "limit\nscope" (neither holds a control character).
  absl::flat_hash_map<std::string, size_t> rank;
  for (const LimitStatus& l : *usage) rank.emplace(l.name, rank.size());
  using Key = std::tuple<size_t, absl::string_view>;
  auto key_of = [&](const LimitStatus& l) { return Key{rank.at(l.name), l.scope}; };
  std::vector<const LimitStatus*> entries;
  entries.reserve(usage->size());
  for (const LimitStatus& l : *usage) entries.push_back(&l);
  std::stable_sort(entries.begin(), entries.end(), [&](const LimitStatus* a, const LimitStatus* b) {
    return key_of(*a) < key_of(*b);
  });
  auto first = entries.begin();
  if (!req.page_token().empty()) {
    std::string decoded;
    std::vector<std::string> parts;
    if (absl::WebSafeBase64Unescape(req.page_token(), &decoded)) {
      parts = absl::StrSplit(decoded, absl::MaxSplits('\n', 1));
    }
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "page_token ", QuoteForError(req.page_token()),
          " is not one this server issued (pass next_page_token unchanged)"));
    }
    auto it = rank.find(parts[0]);
    if (it == rank.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "page_token names limit ", QuoteForError(parts[0]),
          ", which the credential no longer has (a reload removed it): start again without "
          "page_token"));
    }
    const Key after{it->second, parts[1]};
    first = std::upper_bound(entries.begin(), entries.end(), after,
                             [&](const Key& k, const LimitStatus* l) { return k < key_of(*l); });
  }
  const size_t left = static_cast<size_t>(entries.end() - first);
  const size_t n = std::min(left, *page_size);
  resp->mutable_limits()->Reserve(static_cast<int>(n));
  for (size_t i = 0; i < n; ++i) LimitStatusToProto(*first[i], resp->add_limits());
  if (left > n) {
    std::string token;
    absl::WebSafeBase64Escape(absl::StrCat(first[n - 1]->name, "\n", first[n - 1]->scope),
                              &token);
    resp->set_next_page_token(token);
  }
  TimeToProto(backend_->clock()->Now(), resp->mutable_observed_at());
  return out;
}

absl::StatusOr<v1::ListLeasesResponse> AdminService::ListLeases(const Caller& caller,
                                                                 const v1::ListLeasesRequest& req) {
  if (absl::Status s = CheckAdmin(caller); !s.ok()) return s;
  v1::ListLeasesResponse out;
  v1::ListLeasesResponse* resp = &out;
  if (!req.credential().empty()) {
    if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
    const std::shared_ptr<const ServingConfig> snapshot = caller.config;
    if (!snapshot->profile_of.contains(req.credential())) {
      return absl::NotFoundError(
          absl::StrCat("unknown credential ", QuoteForError(req.credential())));
    }
  }
  absl::StatusOr<size_t> page_size = PageSize(req.page_size());
  if (!page_size.ok()) return page_size.status();
  // Order: expiry, then id. The token is the last (expiry, id) answered: "<unix ns>.<id>".
  using Key = std::pair<int64_t, std::pair<uint64_t, uint64_t>>;
  auto key_of = [](const LeaseInfo& l) {
    return Key{absl::ToUnixNanos(l.expiry), {l.id.hi, l.id.lo}};
  };
  std::optional<Key> after;
  if (!req.page_token().empty()) {
    const std::vector<absl::string_view> parts = absl::StrSplit(req.page_token(), '.');
    int64_t ns = 0;
    absl::StatusOr<LeaseId> id = parts.size() == 2 ? LeaseId::Parse(parts[1])
                                                   : absl::InvalidArgumentError("");
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &ns) || !id.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "page_token ", QuoteForError(req.page_token()),
          " is not one this server issued (pass next_page_token unchanged)"));
    }
    after = Key{ns, {id->hi, id->lo}};
  }
  absl::StatusOr<std::vector<LeaseInfo>> listed = backend_->Leases(req.credential());
  if (!listed.ok()) return listed.status();
  std::vector<LeaseInfo> leases = *std::move(listed);
  if (after.has_value()) {
    leases.erase(std::remove_if(leases.begin(), leases.end(),
                                [&](const LeaseInfo& l) { return !(*after < key_of(l)); }),
                 leases.end());
  }
  const size_t n = std::min(leases.size(), *page_size);
  std::partial_sort(leases.begin(), leases.begin() + n, leases.end(),
                    [&](const LeaseInfo& a, const LeaseInfo& b) { return key_of(a) < key_of(b); });
  resp->mutable_leases()->Reserve(static_cast<int>(n));
  for (size_t i = 0; i < n; ++i) LeaseToProto(leases[i], resp->add_leases());
  if (leases.size() > n) {
    const Key last = key_of(leases[n - 1]);
    resp->set_next_page_token(absl::StrCat(last.first, ".", leases[n - 1].id.ToString()));
  }
  return out;
}

absl::StatusOr<v1::ListCredentialsResponse> AdminService::ListCredentials(
    const Caller& caller, const v1::ListCredentialsRequest& req) {
  if (absl::Status s = CheckAdmin(caller); !s.ok()) return s;
  v1::ListCredentialsResponse out;
  v1::ListCredentialsResponse* resp = &out;
  absl::StatusOr<size_t> page_size = PageSize(req.page_size());
  if (!page_size.ok()) return page_size.status();
  if (!req.page_token().empty()) {
    // The token is the last credential name answered.
    if (absl::Status s = ValidateName("page_token", req.page_token()); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "page_token ", QuoteForError(req.page_token()),
          " is not one this server issued (pass next_page_token unchanged)"));
    }
  }
  const Policy policy = backend_->policy();
  std::vector<const CredentialSpec*> sorted;
  for (const CredentialSpec& c : policy.credentials) sorted.push_back(&c);
  std::sort(sorted.begin(), sorted.end(),
            [](const CredentialSpec* a, const CredentialSpec* b) { return a->name < b->name; });
  auto first = std::upper_bound(
      sorted.begin(), sorted.end(), req.page_token(),
      [](const std::string& token, const CredentialSpec* c) { return token < c->name; });
  if (req.page_token().empty()) first = sorted.begin();
  const size_t left = static_cast<size_t>(sorted.end() - first);
  const size_t n = std::min(left, *page_size);
  for (size_t i = 0; i < n; ++i) CredentialToProto(*first[i], resp->add_credentials());
  if (left > n) resp->set_next_page_token(first[n - 1]->name);
  if (!req.page_token().empty()) return out;
  // Profiles, on the first page.
  const std::shared_ptr<const ServingConfig> snapshot = caller.config;
  std::map<std::string, v1::ProfileEntry> profiles;
  for (const v1::Profile& p : snapshot->profiles) {
    v1::ProfileEntry& e = profiles[p.name()];
    e.set_name(p.name());
    e.set_builtin(snapshot->builtin.contains(p.name()));
    *e.mutable_definition() = p;
  }
  for (const CredentialSpec* c : sorted) {
    if (c->profile.empty()) continue;
    v1::ProfileEntry& e = profiles[c->profile];
    e.set_name(c->profile);
    e.add_credentials(c->name);
  }
  for (auto& [name, p] : profiles) *resp->add_profiles() = std::move(p);
  return out;
}

absl::StatusOr<v1::ResetCredentialResponse> AdminService::ResetCredential(
    const Caller& caller, const v1::ResetCredentialRequest& req) {
  if (absl::Status s = CheckAdmin(caller); !s.ok()) return s;
  v1::ResetCredentialResponse out;
  v1::ResetCredentialResponse* resp = &out;
  if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
  if (absl::Status s = backend_->Reset(req.credential()); !s.ok()) return s;
  Log(*log_, spdlog::level::info, "credential reset", {{"credential", req.credential()}});
  resp->set_credential(req.credential());
  absl::StatusOr<std::vector<LimitStatus>> usage = backend_->Usage(req.credential());
  if (!usage.ok()) {
    // The reset was done: say so (an error would make the caller believe it was not, and a
    // retry reset again). E.g. a Cluster slot migrating makes the read wait out its timeout.
    Log(*log_, spdlog::level::warn, "limits after a reset unread",
        {{"credential", req.credential()}, {"error", usage.status().message()}});
    return out;
  }
  for (const LimitStatus& l : *usage) LimitStatusToProto(l, resp->add_limits());
  return out;
}

absl::StatusOr<v1::ReloadConfigResponse> AdminService::ReloadConfig(
    const Caller& caller, const v1::ReloadConfigRequest& request) {
  if (absl::Status s = CheckAdmin(caller); !s.ok()) return s;
  return Reload();
}

absl::StatusOr<v1::ReloadConfigResponse> AdminService::Reload() {
  absl::StatusOr<v1::ReloadConfigResponse> result;
  {
    absl::MutexLock lock(&reload_mu_);
    result = ReloadLocked();
  }
  metrics_->OnConfigReload(result.ok());
  return result;
}

absl::StatusOr<v1::ReloadConfigResponse> AdminService::ReloadLocked() {
  absl::StatusOr<LoadedConfig> config = LoadConfigFile(config_path_, limits_);
  if (!config.ok()) {
    Log(*log_, spdlog::level::warn, "reload rejected",
        {{"config", config_path_}, {"error", config.status().message()}});
    return config.status();
  }
  const Policy* policy = &config->policy;
  if (absl::Status s = backend_->Reload(*policy); !s.ok()) {
    Log(*log_, spdlog::level::warn, "reload rejected",
        {{"config", config_path_}, {"error", s.message()}});
    return s;
  }
  config_->Publish(*config);
  v1::ReloadConfigResponse out;
  v1::ReloadConfigResponse* resp = &out;
  resp->set_source(config_path_);
  resp->set_credentials(static_cast<int32_t>(policy->credentials.size()));
  TimeToProto(backend_->clock()->Now(), resp->mutable_loaded_at());
  Log(*log_, spdlog::level::info, "config reloaded",
      {{"config", config_path_}, {"credentials", policy->credentials.size()}});
  return out;
}

}  // namespace quotad

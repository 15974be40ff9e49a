#ifndef QUOTAD_SERVICE_SERVER_AUTH_H_
#define QUOTAD_SERVICE_SERVER_AUTH_H_

// Bearer-token identities and access rules (the `auth` section of the configuration).
//
// A token is never stored: the configuration holds the SHA-256 of each token, and a presented
// token is hashed and compared with every stored digest in constant time. An identity may call a
// Quota method on a credential when one of its rules names both (exact name, "prefix/*" or "*");
// admins may call everything, including the Admin service, and end anyone's lease. A lease may be
// released or renewed only by the identity that acquired it, or by an admin: the ledger's lease
// names its holder, and the holder names the identity (HolderWithIdentity).
//
// Without an `auth` section the Authorizer is disabled: every call is allowed, as "anonymous".

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quotad/v1/config.pb.h"

namespace quotad {

// What an identity may be allowed to do.
enum class AccessMethod { kAcquire, kRelease, kRenew, kReport, kAdmin };

// "Acquire", ..., "Admin".
absl::string_view AccessMethodName(AccessMethod method);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(absl::string_view data);

// Compares without an early exit on the first difference (time depends only on the lengths).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// The identity of a call without auth configured.
inline constexpr absl::string_view kAnonymousIdentity = "anonymous";

// Decides who a caller is and what it may do. Immutable once built; thread-safe.
class Authorizer {
 public:
  // An Authorizer that allows everything (no `auth` section).
  static std::unique_ptr<const Authorizer> AllowAll();
  // An enabled Authorizer that knows no token: every call is UNAUTHENTICATED.
  static std::unique_ptr<const Authorizer> DenyAll();

  // From a configuration's `auth` section as the config loader validated it (service/config
  // auth_checks.cc is the one check of the section, with file and line). A section that did not
  // pass it is not refused here: a malformed digest matches no token, an unknown method grants
  // nothing.
  static std::unique_ptr<const Authorizer> Create(const v1::Auth& auth);

  // AllowAll() when `config` has no auth section, else Create(config.auth()).
  static std::unique_ptr<const Authorizer> FromConfig(const v1::Config& config);

  // Whether calls are checked at all.
  bool enabled() const { return enabled_; }

  // The identity for the value of the `authorization` metadata ("Bearer <token>"; the scheme is
  // case-insensitive). kUnauthenticated when the header is missing (nullopt), malformed, or the
  // token is unknown; the message never echoes the token. Disabled: kAnonymousIdentity.
  absl::StatusOr<std::string> Authenticate(std::optional<absl::string_view> authorization) const;

  // OK, or kPermissionDenied naming the identity, method and credential. `credential` is ignored
  // for kAdmin. Disabled: OK.
  absl::Status Authorize(absl::string_view identity, AccessMethod method,
                         absl::string_view credential) const;

  // Whether `identity` may end or extend a lease held by `owner` (itself, or an admin).
  // kPermissionDenied otherwise. Disabled: OK.
  absl::Status AuthorizeLease(absl::string_view identity, AccessMethod method,
                              absl::string_view owner) const;

  bool IsAdmin(absl::string_view identity) const;

 private:
  struct Rule {
    std::vector<std::string> exact;     // credential names
    std::vector<std::string> prefixes;  // "prefix/" of "prefix/*"
    bool all_credentials = false;
    std::array<bool, 4> methods{};  // indexed by AccessMethod (kAcquire..kReport)
  };

  Authorizer() = default;

  bool enabled_ = false;
  std::vector<std::pair<std::string, std::string>> digests_;  // raw 32-byte digest, identity
  absl::flat_hash_map<std::string, std::vector<Rule>> rules_;
  absl::flat_hash_set<std::string> admins_;
};

// The holder recorded in the ledger (and so in the state file and in Admin.ListLeases) for a
// lease granted to `identity`: "identity/holder" ("identity" when holder is empty). Identities
// hold no '/', so IdentityOfHolder() recovers it after a restart.
std::string HolderWithIdentity(absl::string_view identity, absl::string_view holder);
// The identity part of such a holder; empty when there is none.
absl::string_view IdentityOfHolder(absl::string_view holder);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_AUTH_H_

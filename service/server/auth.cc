#include "service/server/auth.h"

#include <openssl/sha.h>

#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "service/core/names.h"

namespace quotad {
namespace {

std::optional<AccessMethod> ParseMethod(absl::string_view name) {
  if (name == "Acquire") return AccessMethod::kAcquire;
  if (name == "Release") return AccessMethod::kRelease;
  if (name == "Renew") return AccessMethod::kRenew;
  if (name == "Report") return AccessMethod::kReport;
  return std::nullopt;
}

}  // namespace

absl::string_view AccessMethodName(AccessMethod method) {
  switch (method) {
    case AccessMethod::kAcquire:
      return "Acquire";
    case AccessMethod::kRelease:
      return "Release";
    case AccessMethod::kRenew:
      return "Renew";
    case AccessMethod::kReport:
      return "Report";
    case AccessMethod::kAdmin:
      return "Admin";
  }
  return "?";
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = diff | (static_cast<unsigned char>(a[i]) ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

std::unique_ptr<const Authorizer> Authorizer::AllowAll() {
  return std::unique_ptr<const Authorizer>(new Authorizer());
}

std::unique_ptr<const Authorizer> Authorizer::DenyAll() {
  std::unique_ptr<Authorizer> a(new Authorizer());
  a->enabled_ = true;
  return a;
}

std::unique_ptr<const Authorizer> Authorizer::Create(const v1::Auth& auth) {
  std::unique_ptr<Authorizer> a(new Authorizer());
  a->enabled_ = true;
  for (const v1::Token& t : auth.tokens()) {
    a->digests_.emplace_back(absl::HexStringToBytes(absl::AsciiStrToLower(t.sha256())),
                             t.identity());
  }
  for (const v1::AccessRule& r : auth.rules()) {
    Rule rule;
    for (const std::string& c : r.credentials()) {
      if (c == "*") {
        rule.all_credentials = true;
      } else if (absl::EndsWith(c, "/*")) {
        rule.prefixes.push_back(c.substr(0, c.size() - 1));  // keeps the '/'
      } else {
        rule.exact.push_back(c);
      }
    }
    for (const std::string& m : r.methods()) {
      if (m == "*") {
        rule.methods.fill(true);
      } else if (std::optional<AccessMethod> method = ParseMethod(m); method.has_value()) {
        rule.methods[static_cast<int>(*method)] = true;
      }
    }
    a->rules_[r.identity()].push_back(std::move(rule));
  }
  for (const std::string& admin : auth.admins()) a->admins_.insert(admin);
  return a;
}

std::unique_ptr<const Authorizer> Authorizer::FromConfig(const v1::Config& config) {
  if (!config.has_auth()) return AllowAll();
  return Create(config.auth());
}

absl::StatusOr<std::string> Authorizer::Authenticate(
    std::optional<absl::string_view> authorization) const {
  if (!enabled_) return std::string(kAnonymousIdentity);
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "missing credentials: send `authorization: Bearer <token>` metadata");
  }
  absl::string_view value = absl::StripAsciiWhitespace(*authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError(
        "malformed authorization metadata: expected `Bearer <token>`");
  }
  const absl::string_view token = absl::StripAsciiWhitespace(value.substr(kScheme.size()));
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  const absl::string_view presented(reinterpret_cast<const char*>(digest), sizeof(digest));
  // Every digest is compared, whichever matches, so the time taken says nothing of which.
  const std::string* identity = nullptr;
  for (const auto& [stored, name] : digests_) {
    if (ConstantTimeEquals(stored, presented) && identity == nullptr) identity = &name;
  }
  if (identity == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  return *identity;
}

bool Authorizer::IsAdmin(absl::string_view identity) const {
  return admins_.contains(identity);
}

absl::Status Authorizer::Authorize(absl::string_view identity, AccessMethod method,
                                   absl::string_view credential) const {
  if (!enabled_ || IsAdmin(identity)) return absl::OkStatus();
  if (method == AccessMethod::kAdmin) {
    return absl::PermissionDeniedError(
        absl::StrCat("identity ", QuoteValue(identity), " may not use the Admin service"));
  }
  if (auto it = rules_.find(identity); it != rules_.end()) {
    for (const Rule& rule : it->second) {
      if (!rule.methods[static_cast<int>(method)]) continue;
      if (rule.all_credentials) return absl::OkStatus();
      for (const std::string& c : rule.exact) {
        if (c == credential) return absl::OkStatus();
      }
      for (const std::string& p : rule.prefixes) {
        if (absl::StartsWith(credential, p)) return absl::OkStatus();
      }
    }
  }
  return absl::PermissionDeniedError(absl::StrCat("identity ", QuoteValue(identity), " may not call ",
                                                  AccessMethodName(method), " on credential ",
                                                  QuoteValue(credential)));
}

absl::Status Authorizer::AuthorizeLease(absl::string_view identity, AccessMethod method,
                                        absl::string_view owner) const {
  if (!enabled_ || identity == owner || IsAdmin(identity)) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat("identity ", QuoteValue(identity), " may not ",
                                                  AccessMethodName(method),
                                                  " a lease held by another identity"));
}

std::string HolderWithIdentity(absl::string_view identity, absl::string_view holder) {
  return holder.empty() ? std::string(identity) : absl::StrCat(identity, "/", holder);
}

absl::string_view IdentityOfHolder(absl::string_view holder) {
  return holder.substr(0, holder.find('/'));
}

}  // namespace quotad

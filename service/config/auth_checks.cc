// The `auth` section of a configuration file, validated once, here, with file:line errors.

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "service/config/checks.h"
#include "service/core/names.h"
#include "service/core/status_macros.h"

namespace quotad::config_internal {
namespace {

constexpr absl::string_view kAccessMethods[] = {"Acquire", "Release", "Renew", "Report"};

bool IsHexDigest(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(c)) return false;
  }
  return true;
}

}  // namespace

absl::Status CheckAuth(const v1::Auth& auth, const absl::flat_hash_set<std::string>& credentials,
                       const SourceMap& map) {
  const Origin origin{&map, "auth"};
  if (auth.tokens().empty()) {
    return origin.Error("tokens",
                        "an auth section needs at least one token (remove the section to turn "
                        "authentication off)");
  }
  absl::flat_hash_set<std::string> identities;
  absl::flat_hash_map<std::string, std::string> digests;  // lowercase digest -> field path
  for (int i = 0; i < auth.tokens_size(); ++i) {
    const v1::Token& t = auth.tokens(i);
    const Origin to{&map, origin.Field(absl::StrCat("tokens[", i, "]"))};
    // The value is never echoed: a token pasted here by mistake must not reach a log.
    QUOTAD_RETURN_IF_ERROR(ErrorAt(to, "identity", CheckIdentityName(t.identity())));
    if (!IsHexDigest(t.sha256())) {
      // Never echoed: what is here instead of a digest is most likely the token itself.
      return to.Error("sha256",
                      absl::StrCat("must be the 64 hex digits of a SHA-256 digest (printf %s TOKEN "
                                   "| sha256sum), got ",
                                   t.sha256().size(), " characters that are not (the value is "
                                   "not shown: it may be the token itself)"));
    }
    auto [it, inserted] = digests.emplace(absl::AsciiStrToLower(t.sha256()), to.Field("sha256"));
    if (!inserted) {
      return to.Error("sha256",
                      absl::StrCat("the same token is already listed at ", map.Locate(it->second)));
    }
    identities.insert(t.identity());
  }
  for (int i = 0; i < auth.rules_size(); ++i) {
    const v1::AccessRule& r = auth.rules(i);
    const Origin ro{&map, origin.Field(absl::StrCat("rules[", i, "]"))};
    if (!identities.contains(r.identity())) {
      return ro.Error("identity", absl::StrCat("identity ", QuoteValue(r.identity()),
                                               " has no token in auth.tokens"));
    }
    if (r.credentials().empty()) return ro.Error("credentials", "a rule needs at least one");
    for (int j = 0; j < r.credentials_size(); ++j) {
      const std::string& c = r.credentials(j);
      const std::string field = absl::StrCat("credentials[", j, "]");
      if (c == "*") continue;
      if (absl::EndsWith(c, "/*")) {
        const absl::string_view prefix = absl::string_view(c).substr(0, c.size() - 2);
        if (!CheckCredentialName(prefix).ok()) {
          return ro.Error(field, absl::StrCat("bad credential pattern ", QuoteValue(c),
                                              "; use a credential name, \"prefix/*\" or \"*\""));
        }
        continue;
      }
      if (!credentials.contains(c)) {
        return ro.Error(field, absl::StrCat("unknown credential ", QuoteValue(c),
                                            " (use \"prefix/*\" for a family of credentials)"));
      }
    }
    if (r.methods().empty()) return ro.Error("methods", "a rule needs at least one");
    for (int j = 0; j < r.methods_size(); ++j) {
      const std::string& m = r.methods(j);
      bool known = m == "*";
      for (absl::string_view k : kAccessMethods) known = known || m == k;
      if (!known) {
        return ro.Error(absl::StrCat("methods[", j, "]"),
                        absl::StrCat("unknown method ", QuoteValue(m),
                                     "; known: Acquire, Release, Renew, Report, *"));
      }
    }
  }
  for (int i = 0; i < auth.admins_size(); ++i) {
    if (!identities.contains(auth.admins(i))) {
      return origin.Error(absl::StrCat("admins[", i, "]"),
                          absl::StrCat("identity ", QuoteValue(auth.admins(i)),
                                       " has no token in auth.tokens"));
    }
  }
  return absl::OkStatus();
}

}  // namespace quotad::config_internal

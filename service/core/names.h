#ifndef QUOTAD_SERVICE_CORE_NAMES_H_
#define QUOTAD_SERVICE_CORE_NAMES_H_

// The grammar of names, and how an outside value is shown in a message: the one owner of both.
// The config loader, the ledger and the wire validation all call these functions, so that a name
// one layer accepts is never refused by another.
//
// A name (credential, profile, feature, limit, identity) is 1 to kMaxNameLength (256) bytes of
//
//     A-Z  a-z  0-9  .  _  ~  :  /  @  +  -
//
// with one exclusion by kind, each for a separator the name is later joined with:
//
//     feature, limit   no '.'   the ledger reports a limit as "feature.limit"
//     identity         no '/'   with auth on, a lease's holder is stored as "identity/holder"
//
// This alphabet is the union of what every layer accepted before it had one owner: the wire's
// (exactly this set), and the config loader's per-kind subsets (credential "_./:-", profile
// "_.-", feature and limit "_-", identity "_.@-"), so every configuration and request that was
// valid stays valid. ASCII only: a name is a metric label, a log field and a path segment.
//
// A scope or a holder is text, not a name: 0 to kMaxNameLength bytes with no control character
// (below 0x20, or 0x7f). It may be empty.
//
// Every error is kInvalidArgument; its message starts with the field (by default the kind:
// "credential", "feature", ...), shows the value through QuoteValue, and states the rule:
//
//     credential "vt prod" has the character ' ' at offset 2; allowed are letters, digits and
//     ._~:/@+-
//
// An identity's value is never shown (a token pasted in its place must not reach a log): its
// error gives the length and the offset of the first bad byte instead, and names no field.
//
// Pure functions; thread-safe.

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "service/core/bounds.h"

namespace quotad {

// Bytes of a value shown by QuoteValue unless the caller asks for more.
inline constexpr size_t kMaxQuotedBytes = 64;

// `value` as it appears in an error or a log line: in double quotes, C-escaped (a control
// character, a quote, a backslash or a non-ASCII byte cannot forge a line or end the quotes), at
// most `max_bytes` of it, followed by `... (N bytes)` when it was cut:
//     "vt/prod"   "caf\xc3\xa9"   "aaaa...aaaa"... (300 bytes)
std::string QuoteValue(absl::string_view value, size_t max_bytes = kMaxQuotedBytes);

absl::Status CheckCredentialName(absl::string_view name, absl::string_view field = "credential");
absl::Status CheckProfileName(absl::string_view name, absl::string_view field = "profile");
absl::Status CheckFeatureName(absl::string_view name, absl::string_view field = "feature");
absl::Status CheckLimitName(absl::string_view name, absl::string_view field = "limit");
// Identities come only from the configuration's auth section. The message starts "an identity
// is ..." and never shows the value (see above).
absl::Status CheckIdentityName(absl::string_view name);

// Text fields: 0..kMaxNameLength bytes, no control characters.
absl::Status CheckScope(absl::string_view scope, absl::string_view field = "scope");
absl::Status CheckHolder(absl::string_view holder, absl::string_view field = "holder");
// Any other text (a request id, a header): 0..max_length bytes, no control characters.
absl::Status CheckText(absl::string_view text, size_t max_length, absl::string_view field);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_NAMES_H_

// ParseUpstream (upstream.h, upstream_values.cc, upstream_body.cc): the seed pages' exact
// examples, every header form and its repeats, the body scan, malformed values and their
// warnings, and a deterministic mutation run in place of the fuzzer. What the ledger does with
// an observation is in ledger_report_test.

#include "service/core/upstream.h"

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;
using testing::StatusIs;
using testing::Utc;

const std::vector<int> k429 = {429};
const std::vector<int> k429And420 = {429, 420};

// MetaDefender page: the response's own date header is when it was observed.
const absl::Time kMetaDefenderSeen = Utc(2020, 5, 11, 9, 41, 18);
// CyberVault page: X-RateLimit-Reset 1718947260 = 2024-06-21T05:21:00Z; seen 50 s before.
const absl::Time kCyberVaultSeen = absl::FromUnixSeconds(1718947210);
// MediaSilo page: X-RateLimit-Reset 1452270749 = 2016-01-08T16:32:29Z; seen 20 min before.
const absl::Time kMediaSiloSeen = absl::FromUnixSeconds(1452270749 - 1200);
const absl::Time kSeen = Utc(2026, 3, 1, 12, 0, 0);

UpstreamObservation Parse(int status, const UpstreamHeaders& headers, absl::string_view body = "",
                          absl::Time seen = kSeen, const std::vector<int>& codes = k429) {
  absl::StatusOr<UpstreamObservation> obs = ParseUpstream(status, headers, body, seen, codes);
  EXPECT_OK(obs);
  return obs.ok() ? *std::move(obs) : UpstreamObservation{};
}

std::string Dump(const UpstreamObservation& o) {
  return absl::StrCat("warnings: [", absl::StrJoin(o.warnings, " | "), "]");
}

// --------------------------------------------------------------------------------------------
// The seed pages' examples, verbatim.

TEST(UpstreamSeedTest, MetaDefenderHeaderBlock) {
  // The `< ...` lines of the page's curl -vvvv example, as HTTP/2 sends them (lower case).
  const UpstreamHeaders headers = {
      {"date", "Mon, 11 May 2020 09:41:18 GMT"},
      {"content-type", "application/json; charset=utf-8"},
      {"content-length", "5280"},
      {"vary", "Accept-Encoding, Origin"},
      {"x-authenticated", "by apikey"},
      {"x-account-type", "other"},
      {"x-ratelimit-for", "reputation_api"},
      {"x-ratelimit-limit", "4000"},
      {"x-ratelimit-used", "1"},
      {"x-ratelimit-remaining", "3999"},
      {"x-ratelimit-reset-in", "86400s"},
      {"x-ratelimit-interval", "86400"},
      {"x-redis-partial-cache", "true"},
      {"x-content-type-options", "nosniff"},
      {"etag", "\"14a0-xGmnaISdKYosJha3G+h2JjEfaQg\""},
      {"x-response-time", "330ms"},
  };
  const UpstreamObservation o = Parse(200, headers, "", kMetaDefenderSeen);
  EXPECT_EQ(o.http_status, 200);
  EXPECT_FALSE(o.throttled);
  EXPECT_EQ(o.family, "reputation_api");
  EXPECT_EQ(o.limit, 4000);
  EXPECT_EQ(o.used, 1);
  EXPECT_EQ(o.remaining, 3999);
  EXPECT_EQ(o.reset_at, Utc(2020, 5, 12, 9, 41, 18));
  EXPECT_EQ(o.interval, absl::Hours(24));
  EXPECT_EQ(o.retry_at, std::nullopt);
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamSeedTest, MetaDefender429BodyGivesLimitAndPeriod) {
  // The page's body is a fragment (no outer braces, cut off after the message); then the
  // complete object a client would really receive.
  const std::string fragment =
      "\"error\": {\n\"code\": 429000,\n\"messages\": [\n\"Rate limit exceeded, retry after the "
      "limit is reset. Limit: 100 requests / day\"";
  const std::string full = absl::StrCat("{", fragment, "]}}");
  for (const std::string& body : {fragment, full}) {
    SCOPED_TRACE(body);
    const UpstreamObservation o = Parse(429, {}, body, kMetaDefenderSeen);
    EXPECT_TRUE(o.throttled);
    EXPECT_EQ(o.limit, 100);
    EXPECT_EQ(o.interval, absl::Hours(24));
    EXPECT_EQ(o.retry_at, std::nullopt);  // "after the limit is reset": no number
    EXPECT_EQ(o.reset_at, std::nullopt);
    EXPECT_TRUE(o.warnings.empty()) << Dump(o);
  }
}

TEST(UpstreamSeedTest, MetaDefender429BodyDoesNotOverrideHeaderLimit) {
  const UpstreamObservation o = Parse(
      429, {{"X-RateLimit-Limit", "4000"}, {"X-RateLimit-Remaining", "0"}},
      R"({"error": {"code": 429000, "messages": ["Rate limit exceeded. Limit: 100 requests / day"]}})",
      kMetaDefenderSeen);
  EXPECT_EQ(o.limit, 4000);
  EXPECT_EQ(o.remaining, 0);
  EXPECT_EQ(o.interval, std::nullopt);
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0],
            "body limit: ignored \"100 requests / day\": differs from X-RateLimit-Limit 4000");
}

TEST(UpstreamSeedTest, CyberVaultStandardHeaders) {
  // "HTTP/1.1 200 OK" with the page's four headers. Retry-After on a 200 is reported as is.
  const UpstreamHeaders headers = {
      {"X-RateLimit-Limit", "300"},
      {"X-RateLimit-Remaining", "247"},
      {"X-RateLimit-Reset", "1718947260"},
      {"Retry-After", "12"},
  };
  const UpstreamObservation o = Parse(200, headers, "", kCyberVaultSeen);
  EXPECT_FALSE(o.throttled);
  EXPECT_EQ(o.limit, 300);
  EXPECT_EQ(o.remaining, 247);
  EXPECT_EQ(o.used, std::nullopt);
  EXPECT_EQ(o.reset_at, Utc(2024, 6, 21, 5, 21, 0));
  EXPECT_EQ(o.retry_at, kCyberVaultSeen + absl::Seconds(12));
  EXPECT_EQ(o.interval, std::nullopt);
  EXPECT_EQ(o.family, "");
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamSeedTest, CyberVault429Body) {
  const std::string body = R"({
  "error": {
    "code": "RATE_LIMIT_EXCEEDED",
    "message": "You have exceeded your API rate limit. Please retry after 12 seconds.",
    "retry_after": 12,
    "documentation_url": "https://docs.cybervault.io/rate-limits"
  }
})";
  const UpstreamObservation o = Parse(429, {}, body, kCyberVaultSeen);
  EXPECT_TRUE(o.throttled);
  EXPECT_EQ(o.retry_at, kCyberVaultSeen + absl::Seconds(12));
  EXPECT_EQ(o.limit, std::nullopt);
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamSeedTest, CyberVault429HeaderAndBodyTakeTheLater) {
  const std::string body = R"({"error": {"code": "RATE_LIMIT_EXCEEDED", "retry_after": 12}})";
  UpstreamObservation o = Parse(429, {{"Retry-After", "30"}}, body, kCyberVaultSeen);
  EXPECT_EQ(o.retry_at, kCyberVaultSeen + absl::Seconds(30));
  o = Parse(429, {{"Retry-After", "5"}}, body, kCyberVaultSeen);
  EXPECT_EQ(o.retry_at, kCyberVaultSeen + absl::Seconds(12));
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamSeedTest, MediaSiloHeaders) {
  // The page's code block: "X-RateLimit-Reset: 1452270749\nX-RateLimit-Limit: 10000\n
  // X-RateLimit-Remaining: 4578".
  const UpstreamHeaders headers = {
      {"X-RateLimit-Reset", "1452270749"},
      {"X-RateLimit-Limit", "10000"},
      {"X-RateLimit-Remaining", "4578"},
  };
  const UpstreamObservation o = Parse(200, headers, "", kMediaSiloSeen, k429And420);
  EXPECT_FALSE(o.throttled);
  EXPECT_EQ(o.limit, 10000);
  EXPECT_EQ(o.remaining, 4578);
  EXPECT_EQ(o.reset_at, Utc(2016, 1, 8, 16, 32, 29));
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamSeedTest, MediaSilo420IsAThrottleOnlyWhenTheProfileSaysSo) {
  const UpstreamHeaders headers = {{"X-RateLimit-Reset", "1452270749"},
                                   {"X-RateLimit-Limit", "10000"},
                                   {"X-RateLimit-Remaining", "0"}};
  UpstreamObservation o = Parse(420, headers, "", kMediaSiloSeen, k429And420);
  EXPECT_EQ(o.http_status, 420);
  EXPECT_TRUE(o.throttled);
  EXPECT_EQ(o.remaining, 0);
  EXPECT_EQ(o.reset_at, absl::FromUnixSeconds(1452270749));
  EXPECT_EQ(o.retry_at, std::nullopt);  // the page gives no Retry-After; the reset is the hint

  o = Parse(420, headers, "", kMediaSiloSeen, k429);
  EXPECT_FALSE(o.throttled);
  o = Parse(429, headers, "", kMediaSiloSeen, k429And420);
  EXPECT_TRUE(o.throttled);
}

TEST(UpstreamSeedTest, VirusTotal429WithoutRetryAfter) {
  // The page documents only the status ("Throttle: 429"); the caller applies the 60 s back-off.
  const UpstreamObservation o =
      Parse(429, {{"Content-Type", "application/json"}},
            R"({"error": {"code": "QuotaExceededError", "message": "Quota exceeded"}})");
  EXPECT_TRUE(o.throttled);
  EXPECT_EQ(o.retry_at, std::nullopt);
  EXPECT_EQ(o.reset_at, std::nullopt);
  EXPECT_EQ(o.limit, std::nullopt);
  EXPECT_EQ(o.remaining, std::nullopt);
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamTest, NoThrottleCodesMeansNothingThrottles) {
  EXPECT_FALSE(Parse(429, {}, "", kSeen, {}).throttled);
}

// --------------------------------------------------------------------------------------------
// One header value at a time.

struct ValueCase {
  std::string value;
  std::optional<int64_t> want;  // nullopt: ignored with a warning
  std::string why;              // expected end of that warning
};

void ExpectWarning(const UpstreamObservation& o, absl::string_view header, absl::string_view value,
                   absl::string_view why) {
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0], absl::StrCat(header, ": ignored \"", value, "\": ", why));
}

TEST(UpstreamValueTest, Counts) {
  const std::vector<ValueCase> cases = {
      {"0", 0, ""},
      {"4000", 4000, ""},
      {"007", 7, ""},
      {"1000000000000", 1000000000000, ""},
      {"1000000000001", std::nullopt, "above the sane bound 1000000000000"},
      {"99999999999999999999999999", std::nullopt, "above the sane bound 1000000000000"},
      {"-5", std::nullopt, "negative"},
      {"-0", std::nullopt, "negative"},
      {"", std::nullopt, "empty"},
      {"abc", std::nullopt, "not a non-negative integer"},
      {"12abc", std::nullopt, "not a non-negative integer"},
      {"1.5", std::nullopt, "not a non-negative integer"},
      {"+5", std::nullopt, "not a non-negative integer"},
      {"0x10", std::nullopt, "not a non-negative integer"},
      {"1 2", std::nullopt, "not a non-negative integer"},
      {"12;w=60", std::nullopt, "not a non-negative integer"},
      {"100, 100;w=60", std::nullopt, "not a non-negative integer"},  // quoted whole
  };
  for (const char* header : {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Used"}) {
    for (const ValueCase& c : cases) {
      SCOPED_TRACE(absl::StrCat(header, ": ", c.value));
      const UpstreamObservation o = Parse(200, {{header, c.value}});
      const std::optional<int64_t>& got = absl::EndsWith(header, "Limit")       ? o.limit
                                          : absl::EndsWith(header, "Remaining") ? o.remaining
                                                                                : o.used;
      EXPECT_EQ(got, c.want);
      if (c.want) {
        EXPECT_TRUE(o.warnings.empty()) << Dump(o);
      } else {
        ExpectWarning(o, header, c.value, c.why);
      }
    }
  }
}

TEST(UpstreamValueTest, SurroundingWhitespaceIsNotPartOfTheValue) {
  const UpstreamObservation o = Parse(200, {{" X-RateLimit-Remaining\t", " \t12 "}});
  EXPECT_EQ(o.remaining, 12);
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamValueTest, ResetInWithAndWithoutSuffix) {
  const std::vector<ValueCase> cases = {
      {"86400s", 86400, ""},
      {"86400", 86400, ""},
      {"0", 0, ""},
      {"0s", 0, ""},
      {"34560000", 34560000, ""},  // exactly 400 days
      {"34560001", std::nullopt, "more than 400 days"},
      {"99999999999999999999s", std::nullopt, "more than 400 days"},
      {"-1", std::nullopt, "negative"},
      {"-1s", std::nullopt, "negative"},
      {"s", std::nullopt, "not a non-negative integer"},
      {"86400ms", std::nullopt, "not a non-negative integer"},
      {"86400 s", std::nullopt, "not a non-negative integer"},
      {"86400ss", std::nullopt, "not a non-negative integer"},
      {"1d", std::nullopt, "not a non-negative integer"},
      {"", std::nullopt, "empty"},
  };
  for (const ValueCase& c : cases) {
    SCOPED_TRACE(c.value);
    const UpstreamObservation o = Parse(200, {{"X-RateLimit-Reset-In", c.value}});
    if (c.want) {
      EXPECT_EQ(o.reset_at, kSeen + absl::Seconds(*c.want));
      EXPECT_TRUE(o.warnings.empty()) << Dump(o);
    } else {
      EXPECT_EQ(o.reset_at, std::nullopt);
      ExpectWarning(o, "X-RateLimit-Reset-In", c.value, c.why);
    }
  }
}

TEST(UpstreamValueTest, IntervalMustBePositive) {
  EXPECT_EQ(Parse(200, {{"X-RateLimit-Interval", "3600s"}}).interval, absl::Hours(1));
  const UpstreamObservation o = Parse(200, {{"X-RateLimit-Interval", "0"}});
  EXPECT_EQ(o.interval, std::nullopt);
  ExpectWarning(o, "X-RateLimit-Interval", "0", "zero");
}

TEST(UpstreamValueTest, ResetEpochMustBeNearObservedAt) {
  const int64_t seen = absl::ToUnixSeconds(kSeen);
  struct EpochCase {
    std::string value;
    bool ok;
    std::string why;
  };
  const std::vector<EpochCase> cases = {
      {absl::StrCat(seen + 3600), true, ""},
      {absl::StrCat(seen), true, ""},
      {absl::StrCat(seen - 3600), true, ""},  // clock skew up to an hour
      {absl::StrCat(seen - 3601), false,
       "more than 1h before observed_at (2026-03-01T10:59:59+00:00)"},
      {absl::StrCat(seen + 400 * 86400), true, ""},
      {absl::StrCat(seen + 400 * 86400 + 1), false,
       "more than 400 days after observed_at (2027-04-05T12:00:01+00:00)"},
      // A delta where an epoch belongs is 1970: ignored, never read as "in 60 s".
      {"60", false, "more than 1h before observed_at (1970-01-01T00:01:00+00:00)"},
      {"253402300800", false, "above the sane bound 253402300799"},
      {"-1718947260", false, "negative"},
      {"1718947260.5", false, "not a non-negative integer"},
      {"Mon, 11 May 2020 09:41:18 GMT", false, "not a non-negative integer"},
  };
  for (const EpochCase& c : cases) {
    SCOPED_TRACE(c.value);
    const UpstreamObservation o = Parse(200, {{"X-RateLimit-Reset", c.value}});
    if (c.ok) {
      int64_t secs = 0;
      ASSERT_TRUE(absl::SimpleAtoi(c.value, &secs));
      EXPECT_EQ(o.reset_at, absl::FromUnixSeconds(secs));
      EXPECT_TRUE(o.warnings.empty()) << Dump(o);
    } else {
      EXPECT_EQ(o.reset_at, std::nullopt);
      ExpectWarning(o, "X-RateLimit-Reset", c.value, c.why);
    }
  }
}

TEST(UpstreamValueTest, ResetAndResetInTogetherTakeTheLater) {
  const int64_t seen = absl::ToUnixSeconds(kSeen);
  const UpstreamObservation o = Parse(
      200, {{"X-RateLimit-Reset", absl::StrCat(seen + 100)}, {"X-RateLimit-Reset-In", "101s"}});
  EXPECT_EQ(o.reset_at, kSeen + absl::Seconds(101));
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamValueTest, RetryAfterSecondsAndHttpDates) {
  struct RetryCase {
    std::string value;
    std::optional<absl::Time> want;
    std::string why;
  };
  // kSeen is Sunday 2026-03-01 12:00:00 UTC.
  const std::vector<RetryCase> cases = {
      {"12", kSeen + absl::Seconds(12), ""},
      {"0", kSeen, ""},
      {"120", kSeen + absl::Minutes(2), ""},
      {"Sun, 01 Mar 2026 12:01:30 GMT", Utc(2026, 3, 1, 12, 1, 30), ""},  // IMF-fixdate
      {"sun, 01 mar 2026 12:01:30 gmt", Utc(2026, 3, 1, 12, 1, 30), ""},
      {"Sunday, 01-Mar-26 12:01:30 GMT", Utc(2026, 3, 1, 12, 1, 30), ""},  // RFC 850
      {"Sun Mar  1 12:01:30 2026", Utc(2026, 3, 1, 12, 1, 30), ""},        // asctime
      {"Sun Mar 01 12:01:30 2026", Utc(2026, 3, 1, 12, 1, 30), ""},
      {"Mon, 02 Mar 2026 00:00:00 GMT", Utc(2026, 3, 2, 0, 0, 0), ""},
      {"Sun, 01 Mar 2026 11:59:59 GMT", kSeen, ""},  // a second of skew: now
      {"Sun, 01 Mar 2026 11:00:00 GMT", kSeen, ""},
      {"Sun, 01 Mar 2026 10:59:59 GMT", std::nullopt,
       "more than 1h before observed_at (2026-03-01T10:59:59+00:00)"},
      {"Sun, 06 Nov 1994 08:49:37 GMT", std::nullopt,
       "more than 1h before observed_at (1994-11-06T08:49:37+00:00)"},
      {"Sunday, 06-Nov-94 08:49:37 GMT", std::nullopt,
       "more than 1h before observed_at (1994-11-06T08:49:37+00:00)"},
      {"Fri, 01 Mar 2030 12:00:00 GMT", std::nullopt,
       "more than 400 days after observed_at (2030-03-01T12:00:00+00:00)"},
      {"34560000", kSeen + absl::Hours(24 * 400), ""},
      {"34560001", std::nullopt, "more than 400 days"},
      {"-12", std::nullopt, "negative"},
      {"", std::nullopt, "empty"},
      {"soon", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"12s", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"1.5", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Sun, 31 Feb 2026 12:00:00 GMT", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Sun, 01 Mar 2026 24:00:00 GMT", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Sun, 01 Foo 2026 12:00:00 GMT", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Sun, 01 Mar 2026 12:00:00 PST", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Xyz, 01 Mar 2026 12:00:00 GMT", std::nullopt, "neither delta-seconds nor an HTTP-date"},
      {"Sun, 01 Mar 2026 12:00:00 GMT junk", std::nullopt,
       "neither delta-seconds nor an HTTP-date"},
      {"2026-03-01T12:01:30Z", std::nullopt, "neither delta-seconds nor an HTTP-date"},
  };
  for (const RetryCase& c : cases) {
    SCOPED_TRACE(c.value);
    const UpstreamObservation o = Parse(429, {{"Retry-After", c.value}});
    EXPECT_EQ(o.retry_at, c.want);
    if (c.want) {
      EXPECT_TRUE(o.warnings.empty()) << Dump(o);
    } else {
      ExpectWarning(o, "Retry-After", c.value, c.why);
    }
  }
}

TEST(UpstreamValueTest, Rfc850TwoDigitYearMoreThan50YearsAheadIsLastCentury) {
  // Seen in 2026: "76" would be 2076 (50 years ahead: kept), "77" is 1977.
  EXPECT_EQ(Parse(429, {{"Retry-After", "Sunday, 01-Mar-26 12:00:10 GMT"}}).retry_at,
            kSeen + absl::Seconds(10));
  UpstreamObservation o = Parse(429, {{"Retry-After", "Tuesday, 01-Mar-77 12:00:00 GMT"}});
  EXPECT_EQ(o.retry_at, std::nullopt);
  ExpectWarning(o, "Retry-After", "Tuesday, 01-Mar-77 12:00:00 GMT",
                "more than 1h before observed_at (1977-03-01T12:00:00+00:00)");
  o = Parse(429, {{"Retry-After", "Sunday, 01-Mar-76 12:00:00 GMT"}});
  ExpectWarning(o, "Retry-After", "Sunday, 01-Mar-76 12:00:00 GMT",
                "more than 400 days after observed_at (2076-03-01T12:00:00+00:00)");
}

TEST(UpstreamValueTest, FamilyIsAShortToken) {
  EXPECT_EQ(Parse(200, {{"X-RateLimit-For", "prevention_api"}}).family, "prevention_api");
  UpstreamObservation o = Parse(200, {{"X-RateLimit-For", "reputation api"}});
  EXPECT_EQ(o.family, "");
  ExpectWarning(o, "X-RateLimit-For", "reputation api", "not a token of [A-Za-z0-9_.:-]");
  o = Parse(200, {{"X-RateLimit-For", ""}});
  ExpectWarning(o, "X-RateLimit-For", "", "empty");
  o = Parse(200, {{"X-RateLimit-For", std::string(200, 'a')}});
  EXPECT_EQ(o.family, "");
  ASSERT_EQ(o.warnings.size(), 1u);
  EXPECT_EQ(o.warnings[0], absl::StrCat("X-RateLimit-For: ignored \"", std::string(64, 'a'),
                                        "\"... (200 bytes): longer than 128 characters"));
}

TEST(UpstreamValueTest, WarningsEscapeControlBytes) {
  const UpstreamObservation o = Parse(200, {{"X-RateLimit-Limit", std::string("1\x00\n2", 4)}});
  EXPECT_EQ(o.limit, std::nullopt);
  ExpectWarning(o, "X-RateLimit-Limit", "1\\x00\\n2", "not a non-negative integer");
}

// A value's escaped text is up to four times its length: a conflict warning lists fewer values
// rather than grow past 512 bytes (the bound upstream_fuzzer checks).
TEST(UpstreamValueTest, AConflictWarningStaysShortWhateverTheBytes) {
  std::string body = "{";
  for (int n = 1; n <= 5; ++n) {
    absl::StrAppend(&body, n == 1 ? "" : ", ", "\"m", n, "\": \"Limit: ", n,
                    std::string(60, '\x01'), "\"");
  }
  body += "}";
  const UpstreamObservation o = Parse(429, {}, body);
  EXPECT_EQ(o.limit, std::nullopt);
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_LE(o.warnings[0].size(), 512u);
  EXPECT_THAT(o.warnings[0], StartsWith("body limit: ignored \" 1\\x01\\x01"));
  EXPECT_THAT(o.warnings[0], EndsWith("\", ...: repeated with conflicting values"));
}

// --------------------------------------------------------------------------------------------
// Names and repeats.

TEST(UpstreamHeadersTest, NamesAreCaseInsensitive) {
  for (const char* name : {"X-RateLimit-Remaining", "x-ratelimit-remaining",
                           "X-RATELIMIT-REMAINING", "x-RateLimit-remaining"}) {
    SCOPED_TRACE(name);
    const UpstreamObservation o = Parse(200, {{name, "17"}, {"RETRY-AFTER", "3"}});
    EXPECT_EQ(o.remaining, 17);
    EXPECT_EQ(o.retry_at, kSeen + absl::Seconds(3));
    EXPECT_TRUE(o.warnings.empty()) << Dump(o);
  }
}

TEST(UpstreamHeadersTest, SimilarNamesAreNotConfused) {
  // -Reset-In must not be read as -Reset, nor a prefix as the header.
  const UpstreamObservation o = Parse(200, {{"X-RateLimit-Reset-In", "60"},
                                            {"X-RateLimit-Remaining-Extra", "1"},
                                            {"RateLimit-Remaining", "2"},
                                            {"X-RateLimit", "3"}});
  EXPECT_EQ(o.reset_at, kSeen + absl::Seconds(60));
  EXPECT_EQ(o.remaining, std::nullopt);
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamHeadersTest, RepeatedWithTheSameValueIsFine) {
  const UpstreamObservation o = Parse(200, {{"X-RateLimit-Remaining", "5"},
                                            {"x-ratelimit-remaining", "5"},
                                            {"X-RateLimit-Reset-In", "86400s"},
                                            {"X-RateLimit-Reset-In", "86400"},
                                            {"X-RateLimit-Limit", "10, 10"},
                                            {"Retry-After", "60"},
                                            {"Retry-After", "Sun, 01 Mar 2026 12:01:00 GMT"}});
  EXPECT_EQ(o.remaining, 5);
  EXPECT_EQ(o.reset_at, kSeen + absl::Hours(24));
  EXPECT_EQ(o.limit, 10);
  EXPECT_EQ(o.retry_at, kSeen + absl::Minutes(1));
  EXPECT_TRUE(o.warnings.empty()) << Dump(o);
}

TEST(UpstreamHeadersTest, RepeatedWithConflictingValuesIsIgnored) {
  UpstreamObservation o =
      Parse(200, {{"X-RateLimit-Remaining", "5"}, {"X-RateLimit-Remaining", "7"}});
  EXPECT_EQ(o.remaining, std::nullopt);
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0],
            "X-RateLimit-Remaining: ignored \"5\", \"7\": repeated with conflicting values");

  o = Parse(200, {{"X-RateLimit-Limit", "100, 200"}});
  EXPECT_EQ(o.limit, std::nullopt);
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0],
            "X-RateLimit-Limit: ignored \"100\", \"200\": repeated with conflicting values");

  o = Parse(429, {{"Retry-After", "10"}, {"Retry-After", "20"}});
  EXPECT_EQ(o.retry_at, std::nullopt);
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0], "Retry-After: ignored \"10\", \"20\": repeated with conflicting values");

  o = Parse(200, {{"X-RateLimit-For", "reputation_api"}, {"X-RateLimit-For", "prevention_api"}});
  EXPECT_EQ(o.family, "");
  ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
  EXPECT_EQ(o.warnings[0],
            "X-RateLimit-For: ignored \"reputation_api\", \"prevention_api\": repeated with "
            "conflicting values");
}

TEST(UpstreamHeadersTest, AMalformedCopyIsDroppedAndTheUsableOneKept) {
  const UpstreamObservation o =
      Parse(200, {{"X-RateLimit-Remaining", "garbage"}, {"X-RateLimit-Remaining", "9"}});
  EXPECT_EQ(o.remaining, 9);
  ExpectWarning(o, "X-RateLimit-Remaining", "garbage", "not a non-negative integer");
}

TEST(UpstreamHeadersTest, MissingHeadersLeaveFieldsEmpty) {
  const UpstreamObservation o = Parse(200, {});
  EXPECT_EQ(o.http_status, 200);
  EXPECT_FALSE(o.throttled);
  EXPECT_EQ(o.limit, std::nullopt);
  EXPECT_EQ(o.remaining, std::nullopt);
  EXPECT_EQ(o.used, std::nullopt);
  EXPECT_EQ(o.reset_at, std::nullopt);
  EXPECT_EQ(o.retry_at, std::nullopt);
  EXPECT_EQ(o.interval, std::nullopt);
  EXPECT_EQ(o.family, "");
  EXPECT_TRUE(o.warnings.empty());
}

TEST(UpstreamHeadersTest, RemainingAboveLimitIsIgnored) {
  const UpstreamObservation o =
      Parse(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "101"}});
  EXPECT_EQ(o.limit, 100);
  EXPECT_EQ(o.remaining, std::nullopt);
  ExpectWarning(o, "X-RateLimit-Remaining", "101", "above X-RateLimit-Limit 100");
}

TEST(UpstreamHeadersTest, WarningsAreCapped) {
  UpstreamHeaders headers;
  for (int i = 0; i < 100; ++i) headers.push_back({"X-RateLimit-Used", absl::StrCat("x", i)});
  const UpstreamObservation o = Parse(200, headers);
  ASSERT_EQ(o.warnings.size(), kMaxUpstreamWarnings + 1);
  EXPECT_EQ(o.warnings[0], "X-RateLimit-Used: ignored \"x0\": not a non-negative integer");
  EXPECT_EQ(o.warnings.back(), "68 more warnings not shown");
}

// --------------------------------------------------------------------------------------------
// Bodies.

TEST(UpstreamBodyTest, RetryAfterForms) {
  struct BodyCase {
    std::string body;
    std::optional<absl::Duration> want;
    std::string warning;  // empty: none
  };
  const std::vector<BodyCase> cases = {
      {R"({"retry_after": 12})", absl::Seconds(12), ""},
      {R"({"error":{"retry_after":12}})", absl::Seconds(12), ""},
      {R"({"retry_after": "12"})", absl::Seconds(12), ""},
      {R"({"retry_after": 12.0})", absl::Seconds(12), ""},
      {R"({"retry_after": 12.25})", absl::Seconds(13), ""},
      {R"({"retryAfter": 7})", absl::Seconds(7), ""},
      {R"({"retry_after": null})", std::nullopt, ""},
      {R"({"retry_after": -1})", std::nullopt, "body retry_after: ignored \"-1\": negative"},
      {R"({"retry_after": 1e3})", std::nullopt,
       "body retry_after: ignored \"1e3\": not a non-negative integer"},
      {R"({"retry_after": 99999999999})", std::nullopt,
       "body retry_after: ignored \"99999999999\": more than 400 days"},
      {R"({"retry_after": 5, "x": {"retry_after": 6}})", std::nullopt,
       "body retry_after: ignored \"5\", \"6\": repeated with conflicting values"},
      // Text that merely mentions the key is not the key.
      {R"({"message": "retry_after: 99", "note": "\"retry_after\": 98"})", std::nullopt, ""},
      {R"({"message": "say \"hi\"", "retry_after": 4})", absl::Seconds(4), ""},
      // Not JSON: ignored silently.
      {"<html><body>429 Too Many Requests retry_after: 5</body></html>", std::nullopt, ""},
      {"Too Many Requests", std::nullopt, ""},
      {"", std::nullopt, ""},
      {"{\"retry_after", std::nullopt, ""},
      {"{\"retry_after\":", std::nullopt, "body retry_after: ignored \"\": empty"},
      {"{\"a\": \"\\", std::nullopt, ""},
  };
  for (const BodyCase& c : cases) {
    SCOPED_TRACE(c.body);
    const UpstreamObservation o = Parse(429, {}, c.body);
    EXPECT_EQ(o.retry_at, c.want ? std::optional<absl::Time>(kSeen + *c.want) : std::nullopt);
    if (c.warning.empty()) {
      EXPECT_TRUE(o.warnings.empty()) << Dump(o);
    } else {
      ASSERT_EQ(o.warnings.size(), 1u) << Dump(o);
      EXPECT_EQ(o.warnings[0], c.warning);
    }
  }
}

TEST(UpstreamBodyTest, LimitMessages) {
  struct MessageCase {
    std::string message;
    std::optional<int64_t> limit;
    std::optional<absl::Duration> interval;
  };
  const std::vector<MessageCase> cases = {
      {"Limit: 100 requests / day", 100, absl::Hours(24)},
      {"limit: 60 requests per minute", 60, absl::Minutes(1)},
      {"Limit: 10000 per hour", 10000, absl::Hours(1)},
      {"Limit: 15500 requests / month", 15500, std::nullopt},
      {"Limit: 5", 5, std::nullopt},
      {"Limit: unknown", std::nullopt, std::nullopt},
      {"Rate limit exceeded", std::nullopt, std::nullopt},
      {"Limit: 99999999999999 requests / day", std::nullopt, std::nullopt},
  };
  for (const MessageCase& c : cases) {
    SCOPED_TRACE(c.message);
    const UpstreamObservation o =
        Parse(429, {}, absl::StrCat(R"({"error": {"messages": [")", c.message, R"("]}})"));
    EXPECT_EQ(o.limit, c.limit);
    EXPECT_EQ(o.interval, c.interval);
    EXPECT_TRUE(o.warnings.empty()) << Dump(o);
  }
}

TEST(UpstreamBodyTest, OnlyTheFirst64KiBAreScanned) {
  const std::string body = absl::StrCat("{\"pad\": \"", std::string(kMaxUpstreamBodyScan, 'x'),
                                        "\", \"retry_after\": 5}");
  EXPECT_EQ(Parse(429, {}, body).retry_at, std::nullopt);
}

// --------------------------------------------------------------------------------------------
// Errors and robustness.

TEST(UpstreamTest, NonsensicalStatusIsInvalidArgument) {
  for (int status : {-1, 0, 99, 600, 1000}) {
    absl::StatusOr<UpstreamObservation> o = ParseUpstream(status, {}, "", kSeen, k429);
    ASSERT_THAT(o, StatusIs(absl::StatusCode::kInvalidArgument)) << status;
    EXPECT_EQ(o.status().message(),
              absl::StrCat("http_status ", status, " is not an HTTP status code (100..599)"));
  }
  for (int status : {100, 599}) EXPECT_OK(ParseUpstream(status, {}, "", kSeen, k429));
}

TEST(UpstreamTest, InfiniteObservedAtIsInvalidArgument) {
  for (absl::Time t : {absl::InfiniteFuture(), absl::InfinitePast()}) {
    absl::StatusOr<UpstreamObservation> o = ParseUpstream(200, {}, "", t, k429);
    ASSERT_THAT(o, StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

// A deterministic stand-in for the fuzzer: mutated seed inputs never crash (run under ASan/UBSan
// in the sanitizer build) and every field stays within its documented bounds.
TEST(UpstreamTest, MutatedInputsStayWithinBounds) {
  const std::vector<std::string> values = {"4000",
                                           "86400s",
                                           "1718947260",
                                           "Sun, 01 Mar 2026 12:01:30 GMT",
                                           "Sunday, 01-Mar-26 12:01:30 GMT",
                                           "Sun Mar  1 12:01:30 2026",
                                           "reputation_api",
                                           "12, 12"};
  const std::vector<std::string> names = {
      "X-RateLimit-Limit",    "X-RateLimit-Remaining", "X-RateLimit-Used", "X-RateLimit-Reset",
      "X-RateLimit-Reset-In", "X-RateLimit-Interval",  "X-RateLimit-For",  "Retry-After"};
  const std::string body =
      R"({"error": {"code": 429000, "retry_after": 12, "messages": ["Limit: 100 requests / day"]}})";
  std::mt19937 rng(42);
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      const char c = static_cast<char>(rng() % 256);
      switch (rng() % 3) {
        case 0:
          s.insert(pos, 1, c);
          break;
        case 1:
          if (pos < s.size()) s[pos] = c;
          break;
        default:
          if (pos < s.size()) s.erase(pos, 1);
      }
    }
    return s;
  };
  for (int i = 0; i < 20000; ++i) {
    UpstreamHeaders headers;
    const int n = static_cast<int>(rng() % 6);
    for (int h = 0; h < n; ++h) {
      headers.push_back({names[rng() % names.size()], mutate(values[rng() % values.size()])});
    }
    const UpstreamObservation o = Parse(429, headers, mutate(body));
    for (const std::optional<int64_t>& c : {o.limit, o.remaining, o.used}) {
      if (c) {
        EXPECT_GE(*c, 0);
        EXPECT_LE(*c, kMaxUpstreamCount);
      }
    }
    if (o.reset_at) {
      EXPECT_GE(*o.reset_at, kSeen - kMaxUpstreamSkew);
      EXPECT_LE(*o.reset_at, kSeen + kMaxUpstreamHorizon);
    }
    if (o.retry_at) {
      EXPECT_GE(*o.retry_at, kSeen);
      EXPECT_LE(*o.retry_at, kSeen + kMaxUpstreamHorizon);
    }
    if (o.interval) {
      EXPECT_GT(*o.interval, absl::ZeroDuration());
      EXPECT_LE(*o.interval, kMaxUpstreamHorizon);
    }
    if (o.remaining && o.limit) {
      EXPECT_LE(*o.remaining, *o.limit);
    }
    EXPECT_LE(o.warnings.size(), kMaxUpstreamWarnings + 1);
    if (::testing::Test::HasFailure()) break;
  }
}

}  // namespace
}  // namespace quotad

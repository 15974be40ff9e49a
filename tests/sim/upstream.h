#ifndef QUOTAD_TESTS_SIM_UPSTREAM_H_
#define QUOTAD_TESTS_SIM_UPSTREAM_H_

// Models of the upstream providers' OWN enforcement, written from their published pages
// (../shared/seeds/) and deliberately independent of quotad's presets and of service/core: the
// simulator checks quotad's decisions against these, so sharing code would prove nothing.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace quotad::sim {

// Response headers as a worker receives them (name, value), in the provider's spelling.
using Headers = std::vector<std::pair<std::string, std::string>>;

// How a provider describes its quota in its answers, as its seed page shows.
enum class HeaderStyle : uint8_t {
  // VirusTotal (seed 001): nothing; a throttle is a bare 429.
  kNone,
  // CyberVault (seed 004): X-RateLimit-Limit/Remaining/Reset (epoch seconds) of the tier's
  // per-minute limit on every answer; on 429 also Retry-After and the JSON error body with
  // "retry_after".
  kCyberVault,
  // MetaDefender (seed 000): lowercase x-ratelimit-for/limit/used/remaining/reset-in ("86400s")
  // /interval of the endpoint's family on every answer; on 429 the JSON body "Limit: N
  // requests / day".
  kMetaDefender,
  // MediaSilo (seed 003): X-RateLimit-Reset (epoch seconds), X-RateLimit-Limit,
  // X-RateLimit-Remaining on every answer, 420 included.
  kMediaSilo,
};

// One rule a provider enforces. Not thread-safe.
class UpstreamRule {
 public:
  explicit UpstreamRule(std::string name) : name_(std::move(name)) {}
  virtual ~UpstreamRule() = default;

  const std::string& name() const { return name_; }

  // The earliest time >= t at which `units` more would be accepted if nothing else were charged.
  // absl::InfiniteFuture() if never.
  virtual absl::Time Earliest(absl::Time t, int64_t units) = 0;
  // Counts `units` at `t`. The caller checked Earliest(t, units) == t.
  virtual void Charge(absl::Time t, int64_t units) = 0;
  // What the rule's X-RateLimit-* headers show at `t`: its capacity, the units it counts now,
  // and when its current window ends (sliding: when the oldest counted charge stops counting;
  // `t` when nothing counts).
  virtual int64_t Capacity() const = 0;
  virtual int64_t Used(absl::Time t) = 0;
  virtual absl::Time Reset(absl::Time t) = 0;

 private:
  std::string name_;
};

// At most `capacity` units in any interval (t - period, t]: a charge stops counting at
// its time + period.
std::unique_ptr<UpstreamRule> SlidingRule(std::string name, int64_t capacity,
                                          absl::Duration period);
// Resets at 00:00 UTC each day.
std::unique_ptr<UpstreamRule> UtcDayRule(std::string name, int64_t capacity);
// Resets at 00:00 UTC on the 1st of each month.
std::unique_ptr<UpstreamRule> UtcMonthRule(std::string name, int64_t capacity);
// Fixed windows [anchor + k * period, anchor + (k + 1) * period).
std::unique_ptr<UpstreamRule> FixedWindowRule(std::string name, int64_t capacity,
                                              absl::Duration period, absl::Time anchor);
// A window opens at the first request after the previous one closed and lasts `period`
// (MetaDefender: "reset after 24 hours from the first request").
std::unique_ptr<UpstreamRule> FromFirstRequestRule(std::string name, int64_t capacity,
                                                   absl::Duration period);

// A provider: named endpoints, each charged on a list of rules, and an optional cap on
// requests in flight. Not thread-safe.
class Upstream {
 public:
  // `throttle_status`: what it answers when over a limit (429, 420 for MediaSilo).
  // `max_in_flight`: 0 for no cap.
  Upstream(std::string name, int throttle_status, int64_t max_in_flight);

  // Returns the rule's index.
  int AddRule(std::unique_ptr<UpstreamRule> rule);
  // `header_rule`: the rule whose state the answers to this endpoint show (-1: none);
  // `family`: MetaDefender's X-RateLimit-For.
  void AddEndpoint(std::string name, std::vector<int> rules, int header_rule = -1,
                   std::string family = "");
  void set_header_style(HeaderStyle style) { header_style_ = style; }

  struct Answer {
    int status = 200;
    std::string rule;  // set when throttled: which rule refused
    Headers headers;   // as the provider's style says, computed when the request arrived
    std::string body;  // throttle bodies (CyberVault, MetaDefender)
  };
  // A request reaching the provider at `t`, charged `units`. When accepted (200) it is in flight
  // until Finish(); a throttled request charges nothing and is not in flight.
  Answer Send(absl::Time t, absl::string_view endpoint, int64_t units);
  void Finish();

  // The earliest time >= t at which a request of `units` to `endpoint` would be accepted,
  // ignoring the in-flight cap. For the ideal client.
  absl::Time Earliest(absl::Time t, absl::string_view endpoint, int64_t units);

  const std::string& name() const { return name_; }
  int64_t in_flight() const { return in_flight_; }

 private:
  struct Endpoint {
    std::string name;
    std::vector<int> rules;
    int header_rule = -1;
    std::string family;
  };
  const Endpoint& EndpointOf(absl::string_view endpoint) const;
  // Fills answer->headers and ->body. `refused`: the rule that refused (-1: none or the
  // in-flight cap).
  void Describe(absl::Time t, const Endpoint& e, int refused, Answer* answer);

  std::string name_;
  int throttle_status_;
  int64_t max_in_flight_;
  int64_t in_flight_ = 0;
  std::vector<std::unique_ptr<UpstreamRule>> rules_;
  std::vector<Endpoint> endpoints_;
  HeaderStyle header_style_ = HeaderStyle::kNone;
};

// The four providers as their pages describe them.

// VirusTotal Public API (seed 001): 4 requests per minute (modelled as a sliding 60 s window,
// the strictest reading), 500 per UTC day, 15,500 per UTC month. Endpoint "requests".
std::unique_ptr<Upstream> VirusTotalPublic();

// MetaDefender Cloud (seed 000): per API family, N per 24 h from the first request.
// Endpoints "reputation" (4,000, as in the seed's headers) and "prevention" (100, as in the
// seed's 429 example: "Limit: 100 requests / day").
std::unique_ptr<Upstream> MetaDefenderCloud();

// MediaSilo (seed 003): 10,000 per user per hour in fixed hourly windows whose anchor only the
// provider knows (announced by X-RateLimit-Reset); throttles with 420. Endpoint "requests".
std::unique_ptr<Upstream> MediaSilo(absl::Time anchor);

// CyberVault (seed 004): per-minute sliding window and UTC-day cap per tier, N simultaneous
// requests, and per-endpoint sliding 60 s overrides that also count against the tier's limits.
// Endpoints "requests" (any other endpoint), "auth_login", "threats_scan", "reports_generate",
// "incidents_read".
struct CyberVaultTier {
  std::string name;
  int64_t per_minute;
  int64_t per_day;
  int64_t simultaneous;
};
inline const CyberVaultTier kCyberVaultStarter{"starter", 60, 10000, 10};
inline const CyberVaultTier kCyberVaultProfessional{"professional", 300, 100000, 50};
std::unique_ptr<Upstream> CyberVault(const CyberVaultTier& tier);

}  // namespace quotad::sim

#endif  // QUOTAD_TESTS_SIM_UPSTREAM_H_

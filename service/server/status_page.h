#ifndef QUOTAD_SERVICE_SERVER_STATUS_PAGE_H_
#define QUOTAD_SERVICE_SERVER_STATUS_PAGE_H_

// The operator's status page, served on the metrics listener next to /metrics:
//
//   /            HTML: every credential with each limit as a usage bar (used, remaining,
//                capacity, time to reset), cooldowns, live leases and their holders, waiters per
//                queue, the last throttles reported. Refreshes itself every few seconds.
//   /api/usage   the same as JSON; ?credential=NAME answers exactly what Admin.GetUsage answers.
//
// A page is rendered from a StatusSnapshot: the ledger's locks are taken only while the snapshot
// is copied (one credential at a time), never while rendering. Every name, scope and holder is
// HTML-escaped, and the Content-Security-Policy lets only the page's own script and style run.

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/server/http_pages.h"

namespace quotad {

// The length of the window a limit counts in at `now`: the period of sliding and rolling
// windows and token buckets (refill time of `rate`), the calendar unit containing `now` in the
// limit's zone; zero for concurrency and unlimited limits.
absl::Duration WindowLength(const LimitSpec& spec, absl::Time now);

// One throttle answer a worker reported (Quota.Report that started a cooldown).
struct ThrottleRecord {
  std::string credential;
  std::string feature;
  int http_status = 0;
  absl::Time reported_at;
  absl::Time cooldown_until;
};

// The last throttles reported, at most `capacity` of them, newest first.
// Thread-safe.
class ThrottleLog {
 public:
  explicit ThrottleLog(size_t capacity = 50) : capacity_(capacity) {}
  void Record(ThrottleRecord record) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<ThrottleRecord> Recent() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::deque<ThrottleRecord> records_ ABSL_GUARDED_BY(mu_);  // newest first
};

// Everything the page shows, copied out of the ledger. Plain values.
struct StatusSnapshot {
  struct Limit {
    LimitStatus status;
    absl::Duration window = absl::ZeroDuration();  // WindowLength of its spec; 0 when none
  };
  struct Credential {
    std::string name;
    std::string profile;
    std::vector<Limit> limits;  // Ledger::Usage order; cooldowns are in `cooldowns`
    std::vector<LimitStatus> cooldowns;
  };
  absl::Time now;
  std::vector<Credential> credentials;  // by name
  std::vector<LeaseInfo> leases;        // soonest expiry first
  std::vector<QueueInfo> queues;
  int64_t waiting = 0;
  std::vector<ThrottleRecord> throttles;  // newest first
};

// Copies the state of every configured credential (or only `credential` when not empty; an
// unknown one gives no credentials) out of `ledger`. `throttles` may be null.
StatusSnapshot TakeStatusSnapshot(Ledger& ledger, const ThrottleLog* throttles,
                                  absl::string_view credential = {});

// The HTML page. Pure.
std::string RenderStatusHtml(const StatusSnapshot& snapshot);
// The JSON document of /api/usage: {"observedAt", "waiting", "credentials":
// [GetUsageResponse...], "leaseCount", "leases": [Lease...], "queues": [...], "throttles": [...]},
// protobuf JSON names. Pure. The page and this list at most 200 leases, soonest expiry first.
std::string RenderUsageJson(const StatusSnapshot& snapshot);
// One credential as Admin.GetUsage's response in protobuf JSON. Pure.
std::string RenderCredentialJson(const StatusSnapshot& snapshot,
                                 const StatusSnapshot::Credential& credential);

// "&lt;" and friends for text and attribute values.
std::string HtmlEscape(absl::string_view text);

// Serves / and /api/usage from `ledger` (GET and HEAD). Thread-safe. Does not own `ledger` or
// `throttles`, which must outlive it.
class StatusPage {
 public:
  StatusPage(Ledger* ledger, const ThrottleLog* throttles)
      : ledger_(ledger), throttles_(throttles) {}
  std::optional<HttpReply> Handle(const HttpRequest& request) const;

 private:
  Ledger* const ledger_;
  const ThrottleLog* const throttles_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_STATUS_PAGE_H_

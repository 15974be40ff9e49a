#ifndef QUOTAD_TESTS_SIM_NEVER_OVER_ORACLE_H_
#define QUOTAD_TESTS_SIM_NEVER_OVER_ORACLE_H_

// The never-over oracle: the provider's own enforcement of each limit kind, written from
// SPEC.md section 2 and the provider pages (seeds/), apart from service/core. It reads only the
// policy's plain values (service/core/policy.h); it never calls into the ledger or limits.cc.
//
// What it models:
//   - every upstream call (a "send"): the units a worker really sent, at the instant it sent them,
//     on the limits its feature touches (own limits, plus the unscoped limits of draws_on
//     features), and calls from outside quotad on one limit;
//   - for each limit name, one provider model per configuration that was in force (a reload
//     that edits a limit starts a new model, fed with the whole history so that used units carry
//     over, and checked only for calls made while it is in force);
//   - live leases (concurrency slots) and waiting requests in arrival order;
//   - the provider zeroing its counters (Reset), at the instant the ledger is reset.
//
// Not thread-safe; the simulator is single-threaded.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "service/core/policy.h"

namespace quotad::sim {

// A counter as the provider keeps it: a limit name and a scope ("" when unscoped).
struct CounterRef {
  std::string limit;  // "feature.limit"
  std::string scope;
  bool operator<(const CounterRef& o) const {
    return limit != o.limit ? limit < o.limit : scope < o.scope;
  }
  bool operator==(const CounterRef& o) const { return limit == o.limit && scope == o.scope; }
};

// Which counters a request of `feature` with `scope` touches under `policy` (one credential).
std::vector<CounterRef> Touches(const CredentialSpec& cred, const std::string& feature,
                                const std::string& scope);
const LimitSpec* FindLimit(const CredentialSpec& cred, const std::string& full_name);

// One provider model of one limit under one configuration: state per scope.
class ProviderLimit {
 public:
  explicit ProviderLimit(const LimitSpec& spec) : spec_(spec) {}

  // Whether `units` more at `t` would be accepted for `scope`.
  bool Fits(const std::string& scope, int64_t t, int64_t units);
  // Counts `units` at `t`. Returns the units the window holds after, and sets *over when that
  // passes the capacity (token bucket: when the call does not conform).
  // `skewed`: sent while the wall clock was wrong; a calendar window that holds such a call is
  // not checked (calendar boundaries assume a correct wall clock).
  int64_t Add(const std::string& scope, int64_t t, int64_t units, bool* over,
              bool skewed = false);
  // Units the provider counts now in the current window of `scope`, and when it resets.
  int64_t Used(const std::string& scope, int64_t t);
  int64_t ResetNs(const std::string& scope, int64_t t);
  // Rolling: the opening of the earliest window still open at `t` (t when none is).
  int64_t OpenSince(int64_t t);
  const LimitSpec& spec() const { return spec_; }

 private:
  struct State {
    int64_t start = INT64_MIN, end = INT64_MIN, sum = 0;  // calendar, rolling
    std::map<int64_t, int64_t> past;                      // calendar: sums of left windows
    std::set<int64_t> skewed;                             // calendar: windows not checked
    std::deque<std::pair<int64_t, int64_t>> log;          // sliding
    bool has_tat = false;
    __int128 tat = 0;  // token bucket, in ns * rate
  };
  void Advance(State& s, int64_t t);
  const LimitSpec spec_;
  std::map<std::string, State> states_;
};

// The calendar window [start, end) containing t, written from the civil calendar directly.
void OracleCalendarWindow(CalendarUnit unit, const absl::TimeZone& zone, int64_t t,
                          int64_t* start, int64_t* end);

class Oracle {
 public:
  struct Send {
    int64_t t = 0;
    int64_t wall = 0;  // t on the wall clock (calendar limits count by it)
    int64_t units = 0;
    std::string feature, scope;
    std::vector<CounterRef> touches;
    bool outside = false;
  };
  struct Lease {
    std::vector<CounterRef> touches;
    int64_t cost = 0;
    int64_t expiry = 0;
    bool released = false;
    bool ghost = false;  // released, but the release was lost in a crash: holds until expiry
    std::string feature;
    std::string scope;
  };
  struct Waiter {
    uint64_t arrival = 0;
    int priority = 0;
    std::string feature, scope;
    int64_t cost = 0;
    int64_t deadline = 0;
    std::vector<CounterRef> touches;
  };

  // The configuration in force from `now` (initial, or after a successful reload).
  void ApplyPolicy(const CredentialSpec& cred, int64_t now);
  // The provider zeroes every counter of the credential at `now` (what an operator's
  // Ledger::Reset stands for: a rotated key, or the provider's support zeroed the quota). Every
  // limit but concurrency starts a new, empty model; the calls before it, ours and outside ones,
  // are forgotten (a later reload carries none of them); cooldowns end. Live leases keep their
  // slots.
  void Reset(int64_t now);
  const CredentialSpec& policy() const { return cred_; }

  // A worker's upstream call after a grant. Returns the violation, or "".
  std::string SendOurs(int64_t t, const std::string& feature, const std::string& scope,
                       int64_t units);
  // A call from outside quotad on one limit: accepted when it fits the provider's current model.
  bool SendOutside(int64_t t, const std::string& limit, int64_t units);
  // The current model of a limit (for headers).
  ProviderLimit* Current(const std::string& limit);

  // Leases: a grant that holds slots. Returns the violation, or "".
  std::string Grant(uint64_t lease, int64_t t, const std::string& feature,
                    const std::string& scope, int64_t cost, int64_t expiry);
  Lease* FindLease(uint64_t lease);
  int64_t Held(const CounterRef& c, int64_t t, bool with_ghosts) const;

  // Waiting requests, by arrival number.
  std::map<uint64_t, Waiter>& waiters() { return waiters_; }
  // A request that arrived as number `arrival` with `priority` was granted on `touches` at `t`:
  // the violation if it passed a waiter that was there before it, or "".
  std::string CheckNotPassing(uint64_t arrival, int priority, const std::vector<CounterRef>& touches,
                              int64_t t, const std::string& what);

  // Features cooling down, as the ledger said (waiters of a cooling feature may be passed).
  std::map<std::string, int64_t>& cooled_until() { return cooled_until_; }

  int64_t sends() const { return forgotten_ + static_cast<int64_t>(history_.size()); }

  // The wall clock's distance from true time (it steps; durations do not): calendar limits,
  // quotad's and the provider's, follow the wall clock.
  // `now` is true time. Calendar windows that overlap a time when the wall clock was wrong are
  // not checked: calendar boundaries assume a correct wall clock.
  void set_wall_offset(int64_t offset, int64_t now) {
    if (wall_offset_ == 0 && offset != 0) skews_.push_back({now, INT64_MAX});
    if (wall_offset_ != 0 && offset == 0 && !skews_.empty()) skews_.back().second = now;
    wall_offset_ = offset;
  }
  int64_t wall_offset() const { return wall_offset_; }
  // True time `t` as a model of `spec` counts it, and back.
  int64_t ModelTime(const LimitSpec& spec, int64_t t) const;
  int64_t TrueTime(const LimitSpec& spec, int64_t model_t) const;

 private:
  struct Version {
    LimitSpec spec;
    int64_t from = 0;
    // The earliest call whose units this configuration carries: what the one before it still
    // counted when it took over (nothing older can be known to quotad).
    int64_t known_since = INT64_MIN;
    std::unique_ptr<ProviderLimit> model;
  };
  std::string Feed(Version& v, const std::string& name, const Send& s, bool check);
  bool Counts(const std::string& name, const LimitSpec& spec, const Send& s, std::string* scope);

  CredentialSpec cred_;
  std::map<std::string, Version> current_;  // by limit name
  int64_t wall_offset_ = 0;
  std::vector<std::pair<int64_t, int64_t>> skews_;  // [from, to) of true time
  std::vector<Send> history_;  // since the last Reset
  int64_t forgotten_ = 0;       // sends before it
  std::map<uint64_t, Lease> leases_;
  std::map<uint64_t, Waiter> waiters_;
  std::map<std::string, int64_t> cooled_until_;
};

bool SameSpec(const LimitSpec& a, const LimitSpec& b);
std::string DescribeLimit(const LimitSpec& l);

}  // namespace quotad::sim

#endif  // QUOTAD_TESTS_SIM_NEVER_OVER_ORACLE_H_

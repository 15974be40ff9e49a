// What the ledger learns from the upstream (Report: adopted counts, throttles, outside
// estimates, cooldowns) and what it shows of a credential's limits (Usage).

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"
#include "service/core/report_target.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

std::vector<int> Credential::AttributeThrottle(const Ledger& l, const CompiledCredential& cc,
                                               const CompiledFeature& feature, int named,
                                               std::optional<bool> named_full, int64_t now) {
  if (named >= 0 && named_full.value_or(false)) return {named};
  std::vector<std::pair<double, int>> fullness;
  for (int r : feature.rules) {
    const Rule& rule = cc.rules[r];
    if (rule.spec.kind == LimitKind::kUnlimited || (r == named && named_full.has_value())) {
      continue;
    }
    if (rule.spec.scoped) {  // which scope the call was for is unknown: counted as empty
      fullness.emplace_back(0.0, r);
      continue;
    }
    const CounterView v = counters[r].View(rule, l.RuleTime(rule, now));
    const int64_t hold = HoldBack(rule, 1, now);
    fullness.emplace_back(static_cast<double>(v.used + hold) / static_cast<double>(rule.Capacity()),
                          r);
  }
  if (fullness.empty()) return named >= 0 ? std::vector<int>{named} : std::vector<int>{};
  double most = 0;
  for (const auto& [f, r] : fullness) most = std::max(most, f);
  std::vector<int> out;
  for (const auto& [f, r] : fullness) {
    if (f >= most - 0.02) out.push_back(r);
  }
  return out;
}

int64_t Credential::LearnThrottle(Ledger& l, const CompiledCredential& cc,
                                  const CompiledFeature& feature, int r, int64_t retry_ns,
                                  bool counted, std::optional<int64_t> sent_ns, int64_t now,
                                  ReportResult* out) {
  const Rule& rule = cc.rules[r];
  OutsideEstimate& e = outside[rule.full_name];
  e.CountThrottle();
  // Without sent_at, a throttle on a limit quotad's own count already has full is taken as
  // explained by that count: nothing is learnt about outside use. A request sent under a grant
  // had room when it was granted, and a full count may hold the refused call itself (Report
  // before Release), so its throttle is learnt.
  const bool full = !sent_ns.has_value() && !rule.spec.scoped &&
                    counters[r].View(rule, l.RuleTime(rule, now)).remaining <= 0;
  // A decrease that has decayed away no longer accounts for anything.
  const bool in_flight_at_last_decrease =
      sent_ns.value_or(now) < e.at_ns() && e.Units(rule.Capacity(), RecoveryNs(rule), now) > 0;
  if (Estimable(rule) && !counted && !full && !in_flight_at_last_decrease) {
    e.OnThrottle(rule.Capacity(), RecoveryNs(rule), now);
  }
  int64_t until = retry_ns;
  if (until <= now) {
    // No word from the upstream: a back-off that doubles while throttles repeat, but never
    // longer than the limit takes to release units (a sliding or rolling period, the rest of a
    // calendar window; slots free as calls end), so one answer never idles the key for long.
    const ThrottleSpec& t = feature.throttle;
    absl::Duration backoff = ThrottleBackoff(t, e.consecutive());
    std::optional<absl::Duration> release = ThrottleRelease(rule, t);
    if (!release) {
      const int64_t reset =
          l.FromRuleTime(rule, counters[r].View(rule, l.RuleTime(rule, now)).reset_ns);
      release = absl::Nanoseconds(std::max<int64_t>(0, reset - now));
    }
    backoff = std::max(std::min(backoff, *release), absl::Milliseconds(1));
    double jitter = t.jitter_min;
    if (t.jitter_max > t.jitter_min) {
      absl::MutexLock jitter_lock(&l.jitter_mu_);
      jitter = std::uniform_real_distribution<double>(t.jitter_min, t.jitter_max)(l.jitter_rng_);
    }
    until = now + absl::ToInt64Nanoseconds(backoff * (1.0 + jitter));
  }
  // One answer cannot idle the key for longer than its longest window takes to drain.
  const int64_t longest = SatAdd(now, absl::ToInt64Nanoseconds(feature.max_cooldown));
  if (until > longest) {
    out->warnings.push_back(absl::StrCat("cooldown until ", absl::FormatTime(l.ToWall(until)),
                                         " capped at ", absl::FormatTime(l.ToWall(longest))));
    until = longest;
  }
  e.CoolUntil(until);
  WriteOutside(l, rule, e, out);
  return e.cooldown_until_ns();
}

void Credential::WriteOutside(const Ledger& l, const Rule& rule, const OutsideEstimate& e,
                              ReportResult* out) const {
  if (l.options_.journal == nullptr) return;
  quotad::JournalOutside jo;
  jo.credential = name;
  jo.limit = rule.full_name;
  // Rounded up: a restart never holds back less than was learnt.
  jo.outside_milli = static_cast<int64_t>(std::ceil(e.raw_outside() * 1000));
  jo.at_ns = e.at_ns();
  jo.cooldown_until_ns = e.cooldown_until_ns();
  jo.consecutive = e.consecutive();
  jo.until_ns = std::max(e.cooldown_until_ns(), e.GoneAt(rule.Capacity(), RecoveryNs(rule)));
  if (jo.consecutive > 0) jo.until_ns = kInfiniteNs;  // the back-off remembers until a success
  if (absl::Status s = l.options_.journal->PutOutside(jo); !s.ok()) {
    out->warnings.push_back(
        absl::StrCat("what was learnt about ", rule.full_name, " is not durable: ", s.message()));
  }
}

absl::StatusOr<ReportResult> Ledger::Report(const UpstreamAnswer& answer) {
  Credential* cred = FindCredential(answer.credential);
  if (cred == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("credential '", answer.credential, "' is not configured"));
  }
  const int64_t now = NowNs();
  const absl::Time observed_at =
      answer.observed_at == absl::InfinitePast() ? ToWall(now) : answer.observed_at;
  const absl::Time sent_at =
      answer.sent_at == absl::InfinitePast() ? observed_at : std::min(answer.sent_at, observed_at);
  std::vector<int> throttle_codes;
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    const int fi = cc.FindFeature(answer.feature);
    if (fi < 0) {
      return absl::NotFoundError(absl::StrCat("feature '", answer.feature,
                                              "' is not configured for credential '",
                                              answer.credential, "'"));
    }
    throttle_codes = cc.features[fi].throttle.status_codes;
  }
  // Parsing untrusted text happens outside the credential's lock.
  absl::StatusOr<UpstreamObservation> obs =
      ParseUpstream(answer.http_status, answer.headers, answer.body, observed_at, throttle_codes);
  if (!obs.ok()) return obs.status();

  ReportResult out;
  out.warnings = obs->warnings;
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    const int fi = cc.FindFeature(answer.feature);
    if (fi < 0) return absl::NotFoundError("feature removed by a reload");
    const CompiledFeature& feature = cc.features[fi];

    int named = -1;                  // the limit the headers describe
    std::optional<bool> named_full;  // whether they say it is full
    bool adopted_count = false;      // the named limit's count was adopted from this answer
    if (obs->limit || obs->remaining || obs->used) {
      // Which of the feature's window limits the X-RateLimit-* headers describe.
      const int target = ReportTarget(cc, feature, *obs, &out.warnings);
      if (target >= 0) {
        const Rule& rule = cc.rules[target];
        std::optional<int64_t> upstream_used = UpstreamUsed(rule, *obs);
        // The upstream's times are wall times: in ledger time here (on the rule's own clock when
        // adopted).
        int64_t reset_ns = obs->reset_at ? FromWall(*obs->reset_at) : 0;
        named = target;
        if (upstream_used) named_full = *upstream_used >= rule.Capacity();
        // Only counts of the window in force are adopted (see CheckUpstreamReset).
        switch (CheckUpstreamReset(rule, upstream_used.has_value(), reset_ns, now)) {
          case UpstreamReset::kPassed:
            out.warnings.push_back(ResetPassedWarning(rule, *obs->reset_at, ToWall(now)));
            upstream_used.reset();
            named_full.reset();
            break;
          case UpstreamReset::kTooFar:
            // Dropping the counts could grant into a full upstream window, so they count in the
            // window in force; the reset is not used.
            out.warnings.push_back(ResetTooFarWarning(rule, *obs->reset_at));
            reset_ns = 0;
            break;
          case UpstreamReset::kInForce:
            break;
        }
        if (upstream_used && rule.spec.kind == LimitKind::kSliding) {
          reset_ns = SlidingAdoptedUntil(rule, reset_ns, now, FromWall(observed_at));
        }
        if (upstream_used) {
          adopted_count = true;
          // A count above the capacity says no more than "full", and keeps used <= capacity.
          upstream_used = std::min(*upstream_used, rule.Capacity());
          Counter* counter = cred->CounterFor(target, "", true);
          int64_t added = 0;
          const int64_t sent_ns = std::min(now, FromWall(sent_at));
          const int64_t before = counter->Adopt(rule, RuleTime(rule, now), *upstream_used,
                                                reset_ns == 0 ? 0 : RuleTime(rule, reset_ns),
                                                RuleTime(rule, sent_ns), &added);
          if (added > 0) counter->NoRefundsBefore(now);
          if (*upstream_used > before) {
            out.adopted.push_back(
                absl::StrCat(rule.full_name, " used ", before, " -> ", *upstream_used));
          }
          // What was adopted is written ahead like a charge, so a restart keeps it.
          ReservationNeed need;
          if (options_.journal != nullptr &&
              counter->NeedsReservation(rule, RuleTime(rule, now), 0, /*block=*/0, &need)) {
            std::vector<Reservation> rs;
            for (const ReservationBlock& b : need.blocks()) {
              rs.push_back(Reservation{CounterKey{cred->name, rule.full_name, ""},
                                       b.window_start_ns, b.until_ns, b.units});
            }
            if (absl::Status s = options_.journal->Reserve(rs); s.ok()) {
              counter->Reserved(rule, RuleTime(rule, now), need);
            } else {
              out.warnings.push_back(absl::StrCat("the adopted count of ", rule.full_name,
                                                  " is not durable: ", s.message()));
            }
          }
        }
      }
    }

    if (obs->throttled) {
      // The limit that was hit cools down (and with it every feature that charges it), and
      // learns that something outside quotad uses part of it.
      const int64_t retry_ns = obs->retry_at ? FromWall(*obs->retry_at) : 0;
      const std::vector<int> hit =
          cred->AttributeThrottle(*this, cc, feature, named, named_full, now);
      if (hit.empty() || retry_ns > now) {
        // Nothing but unlimited limits, or the upstream's own Retry-After: the feature itself
        // cools down too (whatever a later reload makes of its limits).
        Credential::Cooldown& c = cred->cooldowns[feature.name];
        int64_t until = retry_ns > now
                            ? retry_ns
                            : now + absl::ToInt64Nanoseconds(feature.throttle.initial_backoff *
                                                             (1.0 + feature.throttle.jitter_min));
        until = std::min(until, SatAdd(now, absl::ToInt64Nanoseconds(feature.max_cooldown)));
        c.until_ns = std::max(c.until_ns, until);
        out.cooldown_until = ToWall(c.until_ns);
        if (options_.journal != nullptr) {
          if (absl::Status s =
                  options_.journal->PutCooldown({cred->name, feature.name, c.until_ns});
              !s.ok()) {
            out.warnings.push_back(
                absl::StrCat("the cooldown of ", feature.name, " is not durable: ", s.message()));
          }
        }
      }
      for (int r : hit) {
        int64_t until_retry = retry_ns;
        if (until_retry == 0 && r == named && named_full.value_or(false) && obs->reset_at &&
            FromWall(*obs->reset_at) > now) {
          until_retry = FromWall(*obs->reset_at);  // the upstream's window resets then
        }
        // A limit whose count this answer gave is known, not estimated: it only cools down.
        const bool counted = r == named && adopted_count;
        const int64_t until =
            cred->LearnThrottle(*this, cc, feature, r, until_retry, counted,
                                answer.sent_at == absl::InfinitePast()
                                    ? std::nullopt
                                    : std::optional<int64_t>(std::min(now, FromWall(sent_at))),
                                now, &out);
        out.cooldown_until = std::max(out.cooldown_until, ToWall(until));
      }
    } else if (obs->http_status < 400 && !cred->outside.empty()) {
      // The back-off starts over on a success seen after the cooldown ended; answers to
      // requests sent before the throttle say nothing about the upstream now.
      const int64_t observed_ns = FromWall(observed_at);
      for (int r : feature.rules) {
        auto it = cred->outside.find(cc.rules[r].full_name);
        if (it != cred->outside.end() && it->second.OnClean(observed_ns)) {
          cred->WriteOutside(*this, cc.rules[r], it->second, &out);
        }
      }
    }
  }
  if (obs->throttled && options_.wake) options_.wake(out.cooldown_until);
  return out;
}

absl::StatusOr<std::vector<LimitStatus>> Ledger::Usage(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  const int64_t now = NowNs();
  std::vector<LimitStatus> out;
  absl::MutexLock lock(&cred->mu);
  const CompiledCredential& cc = *cred->compiled;
  auto add = [&](const Rule& rule, absl::string_view scope, Counter& counter)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred->mu) {
                   const CounterView v = counter.View(rule, RuleTime(rule, now));
                   LimitStatus& st = out.emplace_back();
                   st.name = rule.full_name;
                   st.scope = std::string(scope);
                   st.kind = rule.spec.kind;
                   st.capacity = rule.Capacity();
                   st.used = v.used;
                   st.outside_estimate = scope.empty() ? cred->HoldBack(rule, 0, now) : 0;
                   st.remaining = std::max<int64_t>(0, v.remaining - st.outside_estimate);
                   st.reset = ToWall(FromRuleTime(rule, v.reset_ns));
                 };
  for (size_t r = 0; r < cc.rules.size(); ++r) {
    if (!cc.rules[r].spec.scoped) {
      add(cc.rules[r], "", cred->counters[r]);
      continue;
    }
    std::vector<std::string> scopes;
    for (const auto& [scope, counter] : cred->scoped[r]) scopes.push_back(scope);
    std::sort(scopes.begin(), scopes.end());
    for (const std::string& scope : scopes) add(cc.rules[r], scope, cred->scoped[r][scope]);
  }
  std::vector<std::pair<std::string, int64_t>> cooling;
  for (const auto& [feature, c] : cred->cooldowns) {
    if (c.until_ns > now) cooling.emplace_back(feature, c.until_ns);
  }
  // Features cooling down because a limit they charge does.
  for (const CompiledFeature& f : cc.features) {
    const int64_t until = cred->LimitCooldown(cc, f, now);
    if (until <= now) continue;
    auto it = std::find_if(cooling.begin(), cooling.end(),
                           [&](const auto& c) { return c.first == f.name; });
    if (it == cooling.end()) {
      cooling.emplace_back(f.name, until);
    } else {
      it->second = std::max(it->second, until);
    }
  }
  std::sort(cooling.begin(), cooling.end());
  for (const auto& [feature, until_ns] : cooling) {
    LimitStatus& st = out.emplace_back();
    st.name = absl::StrCat(feature, ".cooldown");
    st.kind = LimitKind::kUnlimited;  // never read for a cooldown; see LimitStatus::cooldown
    st.cooldown = true;
    st.reset = ToWall(until_ns);
  }
  return out;
}

}  // namespace quotad

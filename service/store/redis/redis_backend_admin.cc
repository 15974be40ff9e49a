// RedisBackend's Report and the Admin service's calls (Usage, Leases, Reset): the replica parses
// and chooses as the embedded ledger does (service/core/upstream.h, report_target.h); Redis
// applies and reads in one call each (quotad_report, quotad_usage, quotad_reset in
// quotad_functions.lua); Leases scans the lease locators.

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/core/report_target.h"
#include "service/core/upstream.h"
#include "service/store/redis/redis_backend.h"

namespace quotad {
namespace {

// Undoes redis::CounterField's escaping (%XX for the bytes the library reserves).
std::string UnescapeField(absl::string_view field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '%' && i + 2 < field.size()) {
      std::string byte = absl::HexStringToBytes(field.substr(i + 1, 2));
      if (byte.size() == 1) {
        out.push_back(byte[0]);
        i += 2;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

// The first `n` doubles of a lease record (quotad.lua's write_lease: exp, at, cost, ...), in
// microseconds.
bool LeaseRecordHead(absl::string_view v, int n, double* out) {
  if (v.size() < 8 * static_cast<size_t>(n)) return false;
  std::memcpy(out, v.data(), 8 * static_cast<size_t>(n));  // struct.pack: native doubles
  return true;
}

}  // namespace

double RedisBackend::Jitter(const ThrottleSpec& t) {
  if (t.jitter_max <= t.jitter_min) return 1.0 + t.jitter_min;
  absl::MutexLock lock(&jitter_mu_);
  return 1.0 + std::uniform_real_distribution<double>(t.jitter_min, t.jitter_max)(jitter_rng_);
}

absl::StatusOr<ReportResult> RedisBackend::Report(const UpstreamAnswer& answer) {
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  auto it = compiled->credentials.find(answer.credential);
  if (it == compiled->credentials.end()) {
    return absl::NotFoundError(
        absl::StrCat("credential '", answer.credential, "' is not configured"));
  }
  const CompiledCredential& cc = *it->second;
  const int fi = cc.FindFeature(answer.feature);
  if (fi < 0) {
    return absl::NotFoundError(absl::StrCat("feature '", answer.feature,
                                            "' is not configured for credential '",
                                            answer.credential, "'"));
  }
  const CompiledFeature& feature = cc.features[fi];
  if (!serving()) {
    return absl::UnavailableError(
        absl::StrCat("shared store ", description_, " is unreachable: nothing was learnt"));
  }
  // The replica's clock only stands in for a missing observed_at (relative headers count from
  // it); every check of a time against "now" is made on Redis's clock.
  const absl::Time observed_at =
      answer.observed_at == absl::InfinitePast() ? clock_->Now() : answer.observed_at;
  const absl::Time sent_at =
      answer.sent_at == absl::InfinitePast() ? observed_at : std::min(answer.sent_at, observed_at);
  absl::StatusOr<UpstreamObservation> obs = ParseUpstream(
      answer.http_status, answer.headers, answer.body, observed_at, feature.throttle.status_codes);
  if (!obs.ok()) return obs.status();
  ReportResult out;
  out.warnings = obs->warnings;

  // The feature's limits a throttle can be attributed to: its unscoped ones in Redis (scoped
  // ones count as empty, and cool the feature when hit).
  const ThrottleSpec& t = feature.throttle;
  redis::ReportCall call;
  call.credential = std::string(answer.credential);
  call.feature = feature.name;
  call.target = -1;
  call.observed_at = observed_at;
  call.sent_at = sent_at;
  call.sent_given = answer.sent_at != absl::InfinitePast();
  call.throttled = obs->throttled;
  call.clean = !obs->throttled && obs->http_status < 400;
  if (obs->retry_at) call.retry_at = *obs->retry_at;
  call.feature_backoff = t.initial_backoff * (1.0 + t.jitter_min);
  call.max_cooldown = feature.max_cooldown;
  call.initial_backoff = t.initial_backoff;
  call.multiplier = t.multiplier;
  call.max_backoff = t.max_backoff;
  call.scoped_jitter = Jitter(t);
  std::vector<int> rule_of;
  for (int r : feature.rules) {
    const Rule& rule = cc.rules[r];
    if (rule.spec.kind == LimitKind::kUnlimited) continue;
    const std::optional<absl::Duration> release = ThrottleRelease(rule, t);
    if (rule.spec.scoped) {
      call.scoped.push_back({rule.full_name, *release});
      continue;
    }
    call.counters.push_back({rule.full_name, &rule});
    call.backoffs.push_back({release, Jitter(t)});
    rule_of.push_back(r);
  }
  const Rule* target = nullptr;
  std::optional<int64_t> upstream_used;
  if (obs->limit || obs->remaining || obs->used) {
    const int r = ReportTarget(cc, feature, *obs, &out.warnings);
    if (r >= 0) {
      target = &cc.rules[r];
      call.target =
          static_cast<int>(std::find(rule_of.begin(), rule_of.end(), r) - rule_of.begin());
      upstream_used = UpstreamUsed(*target, *obs);
      if (upstream_used) {
        call.full = *upstream_used >= target->Capacity();
        // A count above the capacity says no more than "full".
        upstream_used = std::min(*upstream_used, target->Capacity());
        call.used = upstream_used;
      }
      if (obs->reset_at) call.reset = *obs->reset_at;
      call.longest_window = LongestWindow(*target);
    }
  }
  absl::StatusOr<redis::ReportAnswer> a = functions_.ReportSync(std::move(call));
  if (!a.ok()) return StoreError(a.status(), "nothing was learnt");
  if (target != nullptr && a->reset_passed) {
    out.warnings.push_back(ResetPassedWarning(*target, *obs->reset_at, a->now));
  }
  if (target != nullptr && a->reset_ignored) {
    out.warnings.push_back(ResetTooFarWarning(*target, *obs->reset_at));
  }
  if (target != nullptr && a->adopted && upstream_used && *upstream_used > a->before) {
    out.adopted.push_back(
        absl::StrCat(target->full_name, " used ", a->before, " -> ", *upstream_used));
  }
  const absl::Time cap = a->now + feature.max_cooldown;
  for (absl::Time until : a->capped) {
    out.warnings.push_back(absl::StrCat("cooldown until ", absl::FormatTime(until), " capped at ",
                                        absl::FormatTime(cap)));
  }
  if (obs->throttled) out.cooldown_until = a->cooldown_until;
  return out;
}

absl::StatusOr<std::vector<LimitStatus>> RedisBackend::Usage(absl::string_view credential) {
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  auto it = compiled->credentials.find(credential);
  if (it == compiled->credentials.end()) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  const CompiledCredential& cc = *it->second;
  if (!serving()) {
    return absl::UnavailableError(
        absl::StrCat("shared store ", description_, " is unreachable: no usage to show"));
  }
  // The scopes of scoped limits are the fields of the credential's hash (one more round trip,
  // only for credentials that have scoped limits).
  std::map<int, std::vector<std::string>> scopes;
  bool any_scoped = false;
  for (const Rule& rule : cc.rules) any_scoped = any_scoped || rule.spec.scoped;
  if (any_scoped) {
    absl::StatusOr<redis::Reply> keys = client_->CallSync({"HKEYS", redis::StateKey(credential)});
    if (!keys.ok()) return StoreError(keys.status(), "no usage to show");
    if (keys->type != redis::Reply::Type::kArray) {
      return absl::InternalError(absl::StrCat("HKEYS: ", keys->DebugString()));
    }
    for (size_t r = 0; r < cc.rules.size(); ++r) {
      if (!cc.rules[r].spec.scoped) continue;
      const std::string prefix = absl::StrCat(redis::CounterField(cc.rules[r].full_name), "[");
      for (const redis::Reply& k : keys->elements) {
        const absl::string_view f = k.str;
        if (absl::StartsWith(f, prefix) && absl::EndsWith(f, "]") &&
            f.find_first_of("#@") == absl::string_view::npos) {
          scopes[r].push_back(UnescapeField(f.substr(prefix.size(), f.size() - prefix.size() - 1)));
        }
      }
      std::sort(scopes[r].begin(), scopes[r].end());
    }
  }
  redis::UsageCall call;
  call.credential = std::string(credential);
  std::vector<std::pair<const Rule*, std::string>> shown;  // parallel to call.counters
  std::vector<int> index_of(cc.rules.size(), -1);          // unscoped rule -> counter
  for (size_t r = 0; r < cc.rules.size(); ++r) {
    const Rule& rule = cc.rules[r];
    if (!rule.spec.scoped) {
      index_of[r] = static_cast<int>(call.counters.size());
      call.counters.push_back({rule.full_name, &rule});
      shown.emplace_back(&rule, "");
      continue;
    }
    for (const std::string& scope : scopes[r]) {
      call.counters.push_back({absl::StrCat(rule.full_name, "[", scope, "]"), &rule});
      shown.emplace_back(&rule, scope);
    }
  }
  for (const CompiledFeature& f : cc.features) {
    redis::UsageCall::Feature& uf = call.features.emplace_back();
    uf.name = f.name;
    for (int r : f.rules) {
      if (index_of[r] >= 0) uf.counters.push_back(index_of[r]);
      if (cc.rules[r].spec.scoped) uf.scoped_limits.push_back(cc.rules[r].full_name);
    }
  }
  absl::StatusOr<redis::UsageAnswer> a = functions_.UsageSync(std::move(call));
  if (!a.ok()) return StoreError(a.status(), "no usage to show");
  std::vector<LimitStatus> out;
  for (size_t i = 0; i < shown.size(); ++i) {
    const Rule& rule = *shown[i].first;
    const redis::UsageAnswer::Counter& c = a->counters[i];
    LimitStatus& st = out.emplace_back();
    st.name = rule.full_name;
    st.scope = shown[i].second;
    st.kind = rule.spec.kind;
    st.capacity = rule.Capacity();
    st.used = c.used;
    st.outside_estimate = c.outside;
    st.remaining = rule.spec.kind == LimitKind::kUnlimited
                       ? st.capacity
                       : std::max<int64_t>(0, st.capacity - c.used - c.outside);
    st.reset = c.reset;
  }
  std::vector<std::pair<std::string, absl::Time>> cooling;
  for (size_t f = 0; f < cc.features.size(); ++f) {
    if (a->feature_cooldowns[f] > a->now) {
      cooling.emplace_back(cc.features[f].name, a->feature_cooldowns[f]);
    }
  }
  std::sort(cooling.begin(), cooling.end());
  for (const auto& [feature, until] : cooling) {
    LimitStatus& st = out.emplace_back();
    st.name = absl::StrCat(feature, ".cooldown");
    st.kind = LimitKind::kUnlimited;  // never read for a cooldown; see LimitStatus::cooldown
    st.cooldown = true;
    st.reset = until;
  }
  return out;
}

absl::StatusOr<std::vector<LeaseInfo>> RedisBackend::Leases(absl::string_view credential) {
  if (!serving()) {
    return absl::UnavailableError(
        absl::StrCat("shared store ", description_, " is unreachable: no leases to show"));
  }
  // Every live lease has a locator q:lease:<id>: scan them (a cursor, a thousand at a time,
  // never blocking Redis for long), read them, keep the credential's, then read their records
  // for the grant and expiry times.
  std::vector<std::string> keys;
  std::string cursor = "0";
  do {
    absl::StatusOr<redis::Reply> r =
        client_->CallSync({"SCAN", cursor, "MATCH", LeaseLocatorKey("*"), "COUNT", "1000"});
    if (!r.ok()) return StoreError(r.status(), "no leases to show");
    if (r->type != redis::Reply::Type::kArray || r->elements.size() != 2 ||
        r->elements[1].type != redis::Reply::Type::kArray) {
      return absl::InternalError(absl::StrCat("SCAN: ", r->DebugString()));
    }
    cursor = r->elements[0].str;
    for (const redis::Reply& k : r->elements[1].elements) keys.push_back(k.str);
  } while (cursor != "0");
  absl::StatusOr<redis::Reply> time = client_->CallSync({"TIME"});
  if (!time.ok()) return StoreError(time.status(), "no leases to show");
  int64_t sec = 0, usec = 0;
  if (time->type != redis::Reply::Type::kArray || time->elements.size() != 2 ||
      !absl::SimpleAtoi(time->elements[0].str, &sec) ||
      !absl::SimpleAtoi(time->elements[1].str, &usec)) {
    return absl::InternalError(absl::StrCat("TIME: ", time->DebugString()));
  }
  const double now_us = static_cast<double>(sec) * 1e6 + static_cast<double>(usec);
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  std::vector<LeaseInfo> out;
  constexpr size_t kBatch = 1000;
  for (size_t from = 0; from < keys.size(); from += kBatch) {
    const size_t to = std::min(keys.size(), from + kBatch);
    std::vector<std::string> mget = {"MGET"};
    for (size_t i = from; i < to; ++i) mget.push_back(keys[i]);
    absl::StatusOr<redis::Reply> locators = client_->CallSync(mget);
    if (!locators.ok()) return StoreError(locators.status(), "no leases to show");
    if (locators->type != redis::Reply::Type::kArray || locators->elements.size() != to - from) {
      return absl::InternalError(absl::StrCat("MGET: ", locators->DebugString()));
    }
    std::vector<LeaseInfo> batch;
    std::vector<std::string> records = {"MGET"};
    for (size_t i = from; i < to; ++i) {
      const redis::Reply& v = locators->elements[i - from];
      if (v.type != redis::Reply::Type::kString) continue;  // ended since the scan
      const absl::string_view id = absl::string_view(keys[i]).substr(LeaseLocatorKey("").size());
      absl::StatusOr<Locator> l = ParseLocator(v.str, id);
      absl::StatusOr<LeaseId> lease_id = LeaseId::Parse(id);
      if (!l.ok() || !lease_id.ok()) continue;  // not one of ours
      if (!credential.empty() && l->credential != credential) continue;
      LeaseInfo& info = batch.emplace_back();
      info.id = *lease_id;
      info.credential = l->credential;
      info.feature = l->feature;
      info.scope = l->scope;
      info.holder = l->holder;
      info.cost = l->cost;
      if (auto c = compiled->credentials.find(l->credential); c != compiled->credentials.end()) {
        const int f = c->second->FindFeature(l->feature);
        if (f >= 0) {
          for (int r : c->second->features[f].rules) {
            info.holds_slots =
                info.holds_slots || c->second->rules[r].spec.kind == LimitKind::kConcurrency;
          }
        }
      }
      records.push_back(redis::LeaseKey(l->credential, id));
    }
    if (batch.empty()) continue;
    absl::StatusOr<redis::Reply> rec = client_->CallSync(records);
    if (!rec.ok()) return StoreError(rec.status(), "no leases to show");
    if (rec->type != redis::Reply::Type::kArray || rec->elements.size() != batch.size()) {
      return absl::InternalError(absl::StrCat("MGET: ", rec->DebugString()));
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      double head[2];
      const redis::Reply& v = rec->elements[i];
      if (v.type != redis::Reply::Type::kString || !LeaseRecordHead(v.str, 2, head) ||
          head[0] <= now_us) {
        continue;  // released or expired since
      }
      batch[i].expiry = absl::FromUnixMicros(static_cast<int64_t>(head[0]));
      batch[i].granted_at = absl::FromUnixMicros(static_cast<int64_t>(head[1]));
      out.push_back(std::move(batch[i]));
    }
  }
  return out;
}

absl::Status RedisBackend::Reset(absl::string_view credential) {
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  if (!compiled->credentials.contains(credential)) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  if (!serving()) {
    return absl::UnavailableError(
        absl::StrCat("shared store ", description_, " is unreachable: nothing was reset"));
  }
  absl::StatusOr<redis::Reply> r =
      client_->CallSync({"FCALL", "quotad_reset", "1", redis::StateKey(credential)});
  if (!r.ok()) return StoreError(r.status(), "nothing was reset");
  if (r->is_error()) return StoreError(absl::InternalError(r->str), "nothing was reset");
  return absl::OkStatus();
}

}  // namespace quotad

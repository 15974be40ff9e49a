// RedisFunctions' Report (quotad_report: an upstream's answer applied on Redis's clock) and
// Usage (quotad_usage: what GetUsage shows, read in one FCALL_RO); see quotad_functions.lua.

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/store/redis/redis_functions.h"
#include "service/store/redis/redis_functions_internal.h"

namespace quotad {
namespace redis {

using redis_internal::CallArgs;
using redis_internal::CeilMicros;
using redis_internal::FloorMicros;
using redis_internal::FromMicros;
using redis_internal::Integers;
using redis_internal::kLuaInf;
using redis_internal::Wait;

void RedisFunctions::Report(ReportCall call,
                            absl::AnyInvocable<void(absl::StatusOr<ReportAnswer>)> done) {
  ReportAround(std::make_shared<ReportCall>(std::move(call)), clock_now_(), false,
               std::move(done));
}

void RedisFunctions::ReportAround(std::shared_ptr<ReportCall> call, absl::Time around,
                                  bool last_try,
                                  absl::AnyInvocable<void(absl::StatusOr<ReportAnswer>)> done) {
  auto us = [](absl::Time t, int64_t none) {
    if (t == absl::InfinitePast()) return none;
    if (t == absl::InfiniteFuture()) return kLuaInf;
    return FloorMicros(absl::ToUnixNanos(t));
  };
  auto dur = [](absl::Duration d) {
    // Beyond what microseconds in a double hold exactly (an infinite back-off bound): never.
    if (d >= absl::Microseconds(kLuaInf)) return absl::StrCat(kLuaInf);
    return absl::StrCat(CeilMicros(absl::ToInt64Nanoseconds(d)));
  };
  const int n = static_cast<int>(call->counters.size());
  const int target = call->target >= 0 && call->target < n ? call->target + 1 : 0;
  std::vector<std::string> head = {
      absl::StrCat(n),
      absl::StrCat(target),
      absl::StrCat(call->used ? *call->used : -1),
      absl::StrCat(call->full ? (*call->full ? 1 : 0) : -1),
      absl::StrCat(std::max<int64_t>(0, us(call->reset, 0))),
      dur(call->longest_window),
      absl::StrCat(us(call->observed_at, kLuaInf)),
      absl::StrCat(us(call->sent_at, kLuaInf)),
      call->feature,
      call->throttled ? "1" : (call->clean ? "0" : "2"),
      absl::StrCat(std::max<int64_t>(0, us(call->retry_at, 0))),
      dur(call->feature_backoff),
      dur(call->max_cooldown),
      absl::StrCat(call->scoped.size()),
      absl::StrFormat("%.17g", std::max(1.0, call->scoped_jitter)),
      call->sent_given ? "1" : "0",
      dur(call->initial_backoff),
      absl::StrFormat("%.17g", std::max(1.0, call->multiplier)),
      dur(std::max(call->max_backoff, call->initial_backoff))};
  absl::StatusOr<std::vector<std::string>> args =
      CallArgs("quotad_report", call->credential, {StateKey(call->credential)}, call->counters,
               std::move(head), around);
  if (!args.ok()) {
    done(args.status());
    return;
  }
  for (int i = 0; i < n; ++i) {
    const ReportCall::Backoff b =
        i < static_cast<int>(call->backoffs.size()) ? call->backoffs[i] : ReportCall::Backoff{};
    args->push_back(b.release ? dur(*b.release) : "-1");
    args->push_back(absl::StrFormat("%.17g", std::max(1.0, b.jitter)));
  }
  for (const ReportCall::ScopedLimit& l : call->scoped) {
    args->push_back(CounterField(l.name));
    args->push_back(dur(l.release));
  }
  client_->Call(*std::move(args), [this, call, last_try, done = std::move(done)](
                                      absl::StatusOr<Reply> reply) mutable {
    absl::StatusOr<std::vector<int64_t>> v = Integers(reply);
    if (!v.ok()) {
      done(v.status());
      return;
    }
    if ((*v)[0] == -1) {
      if (last_try) {
        done(absl::FailedPreconditionError("calendar windows do not contain Redis's time"));
      } else {
        ReportAround(call, FromMicros((*v)[1]), true, std::move(done));
      }
      return;
    }
    if (v->size() < 6) {
      done(absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString())));
      return;
    }
    ReportAnswer a;
    a.now = FromMicros((*v)[0]);
    a.before = (*v)[1];
    a.added = (*v)[2];
    if ((*v)[3] > 0) a.cooldown_until = FromMicros((*v)[3]);
    a.adopted = (*v)[4] == 1;
    a.reset_passed = (*v)[4] == -1;
    a.reset_ignored = (*v)[5] == 1;
    for (size_t i = 6; i < v->size(); ++i) a.capped.push_back(FromMicros((*v)[i]));
    done(a);
  });
}

void RedisFunctions::Usage(UsageCall call,
                           absl::AnyInvocable<void(absl::StatusOr<UsageAnswer>)> done) {
  UsageAround(std::make_shared<UsageCall>(std::move(call)), clock_now_(), false,
              std::move(done));
}

void RedisFunctions::UsageAround(std::shared_ptr<UsageCall> call, absl::Time around,
                                 bool last_try,
                                 absl::AnyInvocable<void(absl::StatusOr<UsageAnswer>)> done) {
  const size_t n = call->counters.size();
  std::vector<std::string> head = {absl::StrCat(n), absl::StrCat(call->features.size())};
  absl::StatusOr<std::vector<std::string>> args =
      CallArgs("quotad_usage", call->credential, {StateKey(call->credential)}, call->counters,
               std::move(head), around);
  if (!args.ok()) {
    done(args.status());
    return;
  }
  (*args)[0] = "FCALL_RO";  // reads only: never replicated, never waited for
  for (const UsageCall::Feature& f : call->features) {
    args->push_back(f.name);
    args->push_back(absl::StrCat(f.counters.size()));
    for (int i : f.counters) args->push_back(absl::StrCat(i + 1));
    args->push_back(absl::StrCat(f.scoped_limits.size()));
    for (const std::string& l : f.scoped_limits) args->push_back(CounterField(l));
  }
  client_->Call(*std::move(args), [this, call, n, last_try, done = std::move(done)](
                                      absl::StatusOr<Reply> reply) mutable {
    absl::StatusOr<std::vector<int64_t>> v = Integers(reply);
    if (!v.ok()) {
      done(v.status());
      return;
    }
    if ((*v)[0] == -1) {
      if (last_try) {
        done(absl::FailedPreconditionError("calendar windows do not contain Redis's time"));
      } else {
        UsageAround(call, FromMicros((*v)[1]), true, std::move(done));
      }
      return;
    }
    if (v->size() != 1 + 4 * n + call->features.size()) {
      done(absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString())));
      return;
    }
    UsageAnswer a;
    a.now = FromMicros((*v)[0]);
    for (size_t i = 0; i < n; ++i) {
      UsageAnswer::Counter& c = a.counters.emplace_back();
      c.used = (*v)[1 + 4 * i];
      const int64_t reset = (*v)[2 + 4 * i];
      c.reset = reset < 0 ? absl::InfiniteFuture() : FromMicros(reset);
      if ((*v)[3 + 4 * i] > 0) c.cooldown = FromMicros((*v)[3 + 4 * i]);
      c.outside = (*v)[4 + 4 * i];
    }
    for (size_t f = 0; f < call->features.size(); ++f) {
      const int64_t until = (*v)[1 + 4 * n + f];
      a.feature_cooldowns.push_back(until > 0 ? FromMicros(until) : absl::InfinitePast());
    }
    done(std::move(a));
  });
}

absl::StatusOr<ReportAnswer> RedisFunctions::ReportSync(ReportCall call) {
  return Wait<ReportAnswer>([&](auto done) { Report(std::move(call), std::move(done)); });
}

absl::StatusOr<UsageAnswer> RedisFunctions::UsageSync(UsageCall call) {
  return Wait<UsageAnswer>([&](auto done) { Usage(std::move(call), std::move(done)); });
}

}  // namespace redis
}  // namespace quotad

#include "service/store/redis/redis_functions.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/store/redis/redis_functions_internal.h"

namespace quotad {
namespace redis {
namespace redis_internal {
extern const char kQuotadLibrarySource[];  // quotad_lua.cc, generated from quotad.lua
}  // namespace redis_internal

using redis_internal::CallArgs;
using redis_internal::CeilMicros;
using redis_internal::FloorMicros;
using redis_internal::FromMicros;
using redis_internal::Integers;
using redis_internal::kLuaInf;
using redis_internal::RequestIdConflict;
using redis_internal::Wait;

namespace {

void AddWindows(const Rule& rule, absl::Time around, std::vector<std::string>* out) {
  if (rule.spec.unit == CalendarUnit::kNone) {
    out->push_back("1");
    out->push_back(absl::StrCat(-kLuaInf));
    out->push_back(absl::StrCat(kLuaInf));
    return;
  }
  int64_t start, end, prev_start, prev_end, next_start, next_end;
  CalendarWindow(rule.spec.unit, rule.spec.zone, absl::ToUnixNanos(around), &start, &end);
  CalendarWindow(rule.spec.unit, rule.spec.zone, start - 1, &prev_start, &prev_end);
  CalendarWindow(rule.spec.unit, rule.spec.zone, end, &next_start, &next_end);
  out->push_back("3");
  for (int64_t t : {prev_start, prev_end, start, end, next_start, next_end}) {
    out->push_back(absl::StrCat(FloorMicros(t)));
  }
}

// A calendar (or unlimited) counter's kind with what else defines its windows, "cal:hour:UTC":
// part of its shape, so that the library finds a reload that changed them (quotad_reshape.lua).
std::string WindowKind(absl::string_view kind, const Rule& rule) {
  if (rule.spec.unit == CalendarUnit::kNone) return std::string(kind);
  return absl::StrCat(kind, ":", CalendarUnitName(rule.spec.unit), ":", rule.spec.zone_name);
}

// Appends "name kind cap a b nwin windows..." for one counter.
absl::Status AddCounter(const CounterRef& ref, absl::Time around, std::vector<std::string>* out) {
  const Rule& rule = *ref.rule;
  const int64_t guard = CeilMicros(rule.guard_ns);
  auto head = [&](absl::string_view kind, int64_t cap, int64_t a, int64_t b) {
    out->push_back(CounterField(ref.name));
    out->push_back(std::string(kind));
    out->push_back(absl::StrCat(cap));
    out->push_back(absl::StrCat(a));
    out->push_back(absl::StrCat(b));
  };
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
      head(WindowKind("cal", rule), rule.spec.capacity, guard, 0);
      AddWindows(rule, around, out);
      return absl::OkStatus();
    case LimitKind::kUnlimited:
      head(WindowKind("unl", rule), 0, guard, 0);
      AddWindows(rule, around, out);
      return absl::OkStatus();
    case LimitKind::kRolling:
      head("roll", rule.spec.capacity, CeilMicros(rule.period_ns), guard);
      break;
    case LimitKind::kSliding:
      if (rule.spec.sub_buckets > 0) {
        // Bucket width and span in whole microseconds, rounded up, and as many buckets as
        // cover the span (Rule::bucket_slots' formula): a unit counts at least as long as
        // embedded. When the width is whole microseconds (e.g. 1 s / 10), the buckets are
        // the embedded ledger's exactly: floor(us / width_us) == floor(ns / width_ns).
        const int64_t width = std::max<int64_t>(1, CeilMicros(rule.bucket_ns));
        const int64_t span = CeilMicros(rule.span_ns);
        head("sb", rule.spec.capacity, width, FloorMicros(rule.period_ns));
        out->push_back("1");
        out->push_back(absl::StrCat((span + width - 1) / width + 1));
        out->push_back("0");
        return absl::OkStatus();
      }
      // Span rounded up, period rounded down: units count at least as long as embedded, and
      // an adoption compares with no fewer of our charges (so adopts no less).
      head("slide", rule.spec.capacity, CeilMicros(rule.span_ns), FloorMicros(rule.period_ns));
      break;
    case LimitKind::kTokenBucket:
      // Whole microseconds, rounded up: a refill never faster than the embedded ledger's.
      head("tb", rule.spec.capacity, CeilMicros(rule.emission_ns), 0);
      break;
    case LimitKind::kConcurrency:
      head("conc", rule.spec.capacity, 0, 0);
      break;
  }
  out->push_back("0");
  return absl::OkStatus();
}

}  // namespace

namespace redis_internal {

// quotad_acquire's answer -2 (ParseAcquire: kAlreadyExists with the first fingerprint) as the
// embedded server answers it (server.cc, AnswerFirst).
absl::Status RequestIdConflict(const AcquireCall& call, const absl::Status& first) {
  return absl::InvalidArgumentError(absl::StrCat(
      "request_id '", call.request_id, "' was first used for ", first.message(),
      "; this request is ", call.fingerprint, ": use a new request_id for a different request"));
}

absl::StatusOr<std::vector<std::string>> CallArgs(const char* function,
                                                  absl::string_view credential,
                                                  std::vector<std::string> head_keys,
                                                  const std::vector<CounterRef>& counters,
                                                  std::vector<std::string> head,
                                                  absl::Time around, const std::string& tail_key,
                                                  const std::string& tail) {
  std::vector<std::string> args = {"FCALL", function, ""};
  for (std::string& k : head_keys) args.push_back(std::move(k));
  for (const CounterRef& c : counters) {
    if (c.rule == nullptr) return absl::InvalidArgumentError("counter without a rule");
    if (c.rule->spec.kind == LimitKind::kConcurrency) {
      args.push_back(LeasesByExpiryKey(credential, c.name));
    }
  }
  if (!tail_key.empty()) args.push_back(tail_key);
  args[2] = absl::StrCat(args.size() - 3);
  for (std::string& h : head) args.push_back(std::move(h));
  for (const CounterRef& c : counters) {
    absl::Status s = AddCounter(c, around, &args);
    if (!s.ok()) return s;
  }
  if (!tail.empty()) args.push_back(tail);
  return args;
}

absl::StatusOr<std::vector<int64_t>> Integers(const absl::StatusOr<Reply>& reply) {
  if (!reply.ok()) return reply.status();
  if (reply->is_error()) return absl::InternalError(absl::StrCat("redis: ", reply->str));
  if (reply->type != Reply::Type::kArray || reply->elements.size() < 2) {
    return absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString()));
  }
  std::vector<int64_t> out;
  for (const Reply& e : reply->elements) {
    if (e.type != Reply::Type::kInteger) {
      return absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString()));
    }
    out.push_back(e.integer);
  }
  return out;
}

}  // namespace redis_internal

absl::string_view LibrarySource() { return redis_internal::kQuotadLibrarySource; }

int LibraryVersion() {
  const absl::string_view src = LibrarySource();
  constexpr absl::string_view kMark = "local VERSION = ";
  const size_t at = src.find(kMark);
  if (at == absl::string_view::npos) return 0;
  const size_t from = at + kMark.size();
  const size_t to = src.find('\n', from);
  int version = 0;
  return absl::SimpleAtoi(src.substr(from, to - from), &version) ? version : 0;
}

std::string CredentialTag(absl::string_view credential) {
  if (credential.find_first_of("{}") == absl::string_view::npos) {
    return absl::StrCat("{", credential, "}");
  }
  return absl::StrCat("{", absl::BytesToHexString(credential), "}");
}

std::string StateKey(absl::string_view credential) {
  return absl::StrCat("q:", CredentialTag(credential), ":s");
}

std::string CounterField(absl::string_view counter) {
  if (counter.find_first_of("%#@~!") == absl::string_view::npos) return std::string(counter);
  std::string out;
  for (char ch : counter) {
    if (ch == '%' || ch == '#' || ch == '@' || ch == '~' || ch == '!') {
      absl::StrAppend(&out, "%", absl::BytesToHexString(absl::string_view(&ch, 1)));
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

std::string LeasesByExpiryKey(absl::string_view credential, absl::string_view counter) {
  return absl::StrCat("q:", CredentialTag(credential), ":z:", counter);
}

std::string DedupKey(absl::string_view credential, absl::string_view request_id) {
  return absl::StrCat("q:", CredentialTag(credential), ":r:", request_id);
}

std::string LeaseKey(absl::string_view credential, absl::string_view lease_id) {
  return absl::StrCat("q:", CredentialTag(credential), ":l:", lease_id);
}

absl::StatusOr<std::vector<std::string>> AcquireArgs(const AcquireCall& call, absl::Time around) {
  if (call.cost <= 0) return absl::InvalidArgumentError("cost must be positive");
  if (!call.keep_lease) {
    for (const CounterRef& c : call.counters) {
      if (c.rule != nullptr && c.rule->spec.kind == LimitKind::kConcurrency) {
        return absl::InvalidArgumentError("a concurrency limit needs the lease record");
      }
    }
  }
  absl::StatusOr<std::vector<std::string>> args = CallArgs(
      "quotad_acquire", call.credential,
      {LeaseKey(call.credential, call.lease_id), StateKey(call.credential),
       DedupKey(call.credential, call.request_id)},
      call.counters,
      {absl::StrCat(call.cost), call.lease_id,
       absl::StrCat(CeilMicros(absl::ToInt64Nanoseconds(call.ttl))),
       absl::StrCat(call.counters.size()), call.keep_lease ? "1" : "0", call.request_id,
       call.fingerprint, absl::StrCat(CeilMicros(absl::ToInt64Nanoseconds(call.dedup_window))),
       call.feature},
      around, call.locator.empty() ? "" : call.locator_key);
  if (!args.ok()) return args;
  // locator_value (possibly empty), want_limits, then the scope check's arguments if any.
  args->push_back(call.locator);
  args->push_back(call.want_limits ? "1" : "0");
  for (size_t i = 0; i < call.counters.size(); ++i) {
    const CounterRef& c = call.counters[i];
    if (c.max_scopes <= 0) continue;
    args->push_back(absl::StrCat(i + 1));
    args->push_back(absl::StrCat(c.max_scopes));
    args->push_back(c.scope);
    args->push_back(call.credential);
    break;
  }
  return args;
}

absl::StatusOr<AcquireAnswer> ParseAcquire(const absl::StatusOr<Reply>& reply, size_t views) {
  if (!reply.ok()) return reply.status();
  if (reply->is_error()) return absl::InternalError(absl::StrCat("redis: ", reply->str));
  const std::vector<Reply>& e = reply->elements;
  auto bad = [&] {
    return absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString()));
  };
  auto integer = [&](size_t i, int64_t* out) {
    if (i >= e.size() || e[i].type != Reply::Type::kInteger) return false;
    *out = e[i].integer;
    return true;
  };
  int64_t tag = 0, now = 0, a = 0, b = 0, cooling = 0;
  if (reply->type != Reply::Type::kArray || !integer(0, &tag) || !integer(1, &now)) return bad();
  AcquireAnswer ans;
  ans.now = FromMicros(now);
  // (used, reset, outside) per counter from element `from` on, when the answer carries them.
  auto read_views = [&](size_t from) {
    if (views == 0 || e.size() < from + 3 * views) return true;  // not asked, or not given
    for (size_t i = 0; i < views; ++i) {
      int64_t used = 0, reset = 0, outside = 0;
      if (!integer(from + 3 * i, &used) || !integer(from + 3 * i + 1, &reset) ||
          !integer(from + 3 * i + 2, &outside)) {
        return false;
      }
      ans.limits.push_back(
          {used, reset < 0 ? absl::InfiniteFuture() : FromMicros(reset), outside});
    }
    return true;
  };
  switch (tag) {
    case 1:
    case 2:
      if (!integer(2, &a)) break;
      ans.granted = true;
      ans.lease_expiry = FromMicros(a);
      if (tag == 2) {
        if (e.size() < 4 || e[3].type != Reply::Type::kString) break;
        ans.duplicate = true;
        ans.lease_id = e[3].str;
      } else if (!read_views(3)) {
        break;
      }
      return ans;
    case 0:
      if (!integer(2, &a) || !integer(3, &b) || !integer(4, &cooling)) break;
      ans.retry_at = a < 0 ? absl::InfiniteFuture() : FromMicros(a);
      ans.limiting = static_cast<int>(b) - 1;
      ans.cooling = cooling == 1;
      if (!read_views(5)) break;
      return ans;
    case -3:  // a new scope past the feature's max_scopes
      if (!integer(2, &a) || e.size() < 6) break;
      return absl::ResourceExhaustedError(absl::StrCat(
          "scope '", e[3].str, "' would exceed the ", a, " scopes allowed for feature ", e[4].str,
          " of credential ", e[5].str));
    case -1:  // no calendar window offered contains Redis's time
      return absl::FailedPreconditionError("calendar windows do not contain Redis's time");
    case -2:
      if (e.size() < 3 || e[2].type != Reply::Type::kString) break;
      return absl::AlreadyExistsError(e[2].str);  // the first fingerprint; see Acquire
  }
  return bad();
}

std::vector<std::string> WaitCommand(const WaitPolicy& policy) {
  const int64_t ms = std::max<int64_t>(
      1, absl::ToInt64Milliseconds(absl::Ceil(policy.timeout, absl::Milliseconds(1))));
  return {"WAIT", absl::StrCat(policy.replicas), absl::StrCat(ms)};
}

RedisFunctions::RedisFunctions(RedisClient* client,
                               absl::AnyInvocable<absl::Time() const> clock_now, WaitPolicy wait)
    : client_(client), clock_now_(std::move(clock_now)), wait_(wait) {}

void RedisFunctions::CallMaybeWaiting(
    std::vector<std::string> args,
    absl::AnyInvocable<void(absl::StatusOr<Reply>, int64_t acked)> done) {
  if (wait_.replicas <= 0) {
    client_->Call(std::move(args), [done = std::move(done)](absl::StatusOr<Reply> r) mutable {
      done(std::move(r), -1);
    });
    return;
  }
  // One connection, FCALL then WAIT: WAIT covers this connection's writes, the FCALL's among
  // them (one WAIT per batch of calls, see CallThenWait). The call may take WAIT's timeout on
  // top of its own.
  client_->CallThenWait(
      std::move(args), wait_.replicas, wait_.timeout,
      [done = std::move(done)](absl::StatusOr<Reply> r) mutable {
        if (!r.ok()) {
          done(std::move(r), 0);
          return;
        }
        if (r->type != Reply::Type::kArray || r->elements.size() != 2) {
          done(absl::InternalError(absl::StrCat("unexpected pipeline reply ", r->DebugString())),
               0);
          return;
        }
        const Reply& w = r->elements[1];
        const int64_t acked = w.type == Reply::Type::kInteger ? w.integer : 0;
        done(std::move(r->elements[0]), acked);
      },
      client_->options().call_timeout + wait_.timeout);
}

absl::Status RedisFunctions::CheckAcked(int64_t acked, absl::string_view what) const {
  if (wait_.replicas <= 0 || acked >= wait_.replicas) return absl::OkStatus();
  absl::Status short_of = absl::UnavailableError(absl::StrCat(
      "only ", acked, " of ", wait_.replicas, " replica(s) acknowledged the ", what, " within ",
      absl::FormatDuration(wait_.timeout), " (WAIT): not answered as durable"));
  short_of.SetPayload(kWaitShortfall, absl::Cord(what));
  return short_of;
}

bool IsWaitShortfall(const absl::Status& status) {
  return status.GetPayload(kWaitShortfall).has_value();
}

absl::StatusOr<int> RedisFunctions::EnsureLoaded(absl::Duration timeout) {
  const int mine = LibraryVersion();
  if (mine <= 0) return absl::InternalError("the embedded library declares no VERSION");
  absl::StatusOr<Reply> r = client_->CallSync({"FCALL_RO", "quotad_version", "0"}, timeout);
  if (!r.ok()) return r.status();
  if (r->type == Reply::Type::kInteger && r->integer >= mine) return static_cast<int>(r->integer);
  // None loaded ("Function not found"), or an older one.
  if (r->type != Reply::Type::kInteger &&
      absl::AsciiStrToLower(r->str).find("function not found") == std::string::npos) {
    return absl::InternalError(absl::StrCat("quotad_version: ", r->DebugString()));
  }
  r = client_->CallSync({"FUNCTION", "LOAD", "REPLACE", std::string(LibrarySource())}, timeout);
  if (!r.ok()) return r.status();
  if (r->is_error()) return absl::InternalError(absl::StrCat("FUNCTION LOAD: ", r->str));
  return mine;
}

void RedisFunctions::Acquire(AcquireCall call,
                             absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done) {
  AcquireAround(std::make_shared<AcquireCall>(std::move(call)), clock_now_(), false,
                std::move(done));
}

void RedisFunctions::AcquireAround(std::shared_ptr<AcquireCall> call, absl::Time around,
                                   bool last_try,
                                   absl::AnyInvocable<void(absl::StatusOr<AcquireAnswer>)> done) {
  absl::StatusOr<std::vector<std::string>> args = AcquireArgs(*call, around);
  if (!args.ok()) {
    done(args.status());
    return;
  }
  CallMaybeWaiting(*std::move(args), [this, call, last_try, done = std::move(done)](
                                         absl::StatusOr<Reply> reply, int64_t acked) mutable {
    absl::StatusOr<AcquireAnswer> a =
        ParseAcquire(reply, call->want_limits ? call->counters.size() : 0);
    if (a.ok() && a->granted) {
      // Not durable enough: nothing handed out. A retry of its request_id answers this grant
      // (and waits again); without one, its units stay charged until the lease's TTL.
      if (absl::Status s = CheckAcked(acked, "grant"); !s.ok()) a = s;
    }
    if (!last_try && absl::IsFailedPrecondition(a.status())) {
      // The caller's clock is off by more than a window: offer windows around Redis's time.
      AcquireAround(call, FromMicros(reply->elements[1].integer), true, std::move(done));
      return;
    }
    if (absl::IsAlreadyExists(a.status())) a = RequestIdConflict(*call, a.status());
    done(std::move(a));
  });
}

void RedisFunctions::Release(ReleaseCall call,
                             absl::AnyInvocable<void(absl::StatusOr<ReleaseAnswer>)> done) {
  absl::StatusOr<std::vector<std::string>> args =
      CallArgs("quotad_release", call.credential,
               {LeaseKey(call.credential, call.lease_id), StateKey(call.credential)},
               call.counters,
               {absl::StrCat(call.used), call.lease_id, absl::StrCat(call.counters.size())},
               clock_now_(), call.locator_key, call.locator_key.empty() ? "" : "1");
  if (!args.ok()) {
    done(args.status());
    return;
  }
  const size_t n = call.counters.size();
  client_->Call(*std::move(args), [n, done = std::move(done)](absl::StatusOr<Reply> reply) mutable {
    absl::StatusOr<std::vector<int64_t>> v = Integers(reply);
    if (!v.ok()) {
      done(v.status());
      return;
    }
    ReleaseAnswer a;
    a.now = FromMicros((*v)[1]);
    a.found = (*v)[0] == 1;
    if (a.found) {
      if (v->size() != 3 + n) {
        done(absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString())));
        return;
      }
      a.freed = (*v)[2];
      a.refunded.assign(v->begin() + 3, v->end());
    }
    done(a);
  });
}

void RedisFunctions::Renew(RenewCall call,
                           absl::AnyInvocable<void(absl::StatusOr<RenewAnswer>)> done) {
  absl::StatusOr<std::vector<std::string>> args = CallArgs(
      "quotad_renew", call.credential,
      {LeaseKey(call.credential, call.lease_id), StateKey(call.credential)}, call.counters,
      {absl::StrCat(CeilMicros(absl::ToInt64Nanoseconds(call.ttl))), call.lease_id,
       absl::StrCat(call.counters.size())},
      clock_now_(), call.locator_key, call.locator_key.empty() ? "" : "1");
  if (!args.ok()) {
    done(args.status());
    return;
  }
  CallMaybeWaiting(*std::move(args), [this, done = std::move(done)](absl::StatusOr<Reply> reply,
                                                                    int64_t acked) mutable {
    absl::StatusOr<std::vector<int64_t>> v = Integers(reply);
    if (!v.ok()) {
      done(v.status());
      return;
    }
    // A renewal that moved the expiry later, lost in a failover, would end the lease earlier
    // than answered: answered only once WAIT says it is held. One that moved it earlier (or
    // not at all) is answered either way: Redis applied it, so refused, its holder would keep
    // its old, later expiry while Redis frees the slot at the new one (two holders of one
    // slot); answered, the holder takes the earlier time, and losing it only keeps the lease
    // longer in Redis (an under-grant). A library before v5 does not say: treated as later.
    const bool later = v->size() < 4 || (*v)[2] > (*v)[3];
    if ((*v)[0] == 1 && later) {
      if (absl::Status s = CheckAcked(acked, "renewal"); !s.ok()) {
        done(s);
        return;
      }
    }
    RenewAnswer a;
    a.now = FromMicros((*v)[1]);
    a.found = (*v)[0] == 1 && v->size() >= 3;
    if (a.found) a.expiry = FromMicros((*v)[2]);
    done(a);
  });
}

absl::StatusOr<AcquireAnswer> RedisFunctions::AcquireSync(AcquireCall call) {
  return Wait<AcquireAnswer>([&](auto done) { Acquire(std::move(call), std::move(done)); });
}

absl::StatusOr<ReleaseAnswer> RedisFunctions::ReleaseSync(ReleaseCall call) {
  return Wait<ReleaseAnswer>([&](auto done) { Release(std::move(call), std::move(done)); });
}

absl::StatusOr<RenewAnswer> RedisFunctions::RenewSync(RenewCall call) {
  return Wait<RenewAnswer>([&](auto done) { Renew(std::move(call), std::move(done)); });
}

}  // namespace redis
}  // namespace quotad

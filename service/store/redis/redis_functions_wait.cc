// RedisFunctions::WaitAcquire: quotad_wait (see quotad_functions.lua), an Acquire that may wait
// in the credential's fair queue; its arguments are quotad_acquire's with the queue's first.

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/store/redis/redis_functions.h"

namespace quotad {
namespace redis {

void RedisFunctions::WaitAcquire(WaitCall call,
                          absl::AnyInvocable<void(absl::StatusOr<WaitAnswer>)> done) {
  WaitAcquireAround(std::make_shared<WaitCall>(std::move(call)), clock_now_(), false,
                    std::move(done));
}

void RedisFunctions::WaitAcquireAround(std::shared_ptr<WaitCall> call, absl::Time around,
                                bool last_try,
                                absl::AnyInvocable<void(absl::StatusOr<WaitAnswer>)> done) {
  absl::StatusOr<std::vector<std::string>> args = AcquireArgs(call->acquire, around);
  if (!args.ok()) {
    done(args.status());
    return;
  }
  // quotad_acquire's keys and arguments, the queue's own arguments first.
  size_t nkeys = 0;
  absl::SimpleAtoi((*args)[2], &nkeys);
  (*args)[1] = "quotad_wait";
  const char* mode = call->mode == WaitCall::Mode::kEnter   ? "enter"
                     : call->mode == WaitCall::Mode::kRetry ? "retry"
                                                            : "leave";
  args->insert(args->begin() + 3 + nkeys,
               {mode, call->waiter, absl::StrCat(call->priority), absl::StrCat(call->seq),
                absl::StrCat(std::max<int64_t>(1, absl::ToInt64Microseconds(call->beat)))});
  if (call->mode == WaitCall::Mode::kLeave) {
    client_->Call(*std::move(args), [done = std::move(done)](absl::StatusOr<Reply> r) mutable {
      if (!r.ok()) {
        done(r.status());
      } else if (r->is_error()) {
        done(absl::InternalError(absl::StrCat("redis: ", r->str)));
      } else {
        done(WaitAnswer{});
      }
    });
    return;
  }
  CallMaybeWaiting(*std::move(args), [this, call, last_try, done = std::move(done)](
                                         absl::StatusOr<Reply> reply, int64_t acked) mutable {
    absl::StatusOr<AcquireAnswer> a = ParseAcquire(reply);
    if (a.ok() && a->granted) {
      if (absl::Status s = CheckAcked(acked, "grant"); !s.ok()) a = s;
    }
    if (!last_try && absl::IsFailedPrecondition(a.status())) {
      WaitAcquireAround(call, absl::FromUnixMicros(reply->elements[1].integer), true,
                        std::move(done));
      return;
    }
    if (absl::IsAlreadyExists(a.status())) {
      a = absl::InvalidArgumentError(absl::StrCat(
          "request_id '", call->acquire.request_id, "' was first used for ",
          a.status().message(), "; this request is ", call->acquire.fingerprint,
          ": use a new request_id for a different request"));
    }
    if (!a.ok()) {
      done(a.status());
      return;
    }
    WaitAnswer w;
    w.acquire = *std::move(a);
    if (!w.acquire.granted) {
      const std::vector<Reply>& e = reply->elements;
      if (e.size() < 7 || e[5].type != Reply::Type::kInteger ||
          e[6].type != Reply::Type::kInteger) {
        done(absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString())));
        return;
      }
      w.seq = e[5].integer;
      w.ahead = e[6].integer == 1;
    }
    done(std::move(w));
  });
}

}  // namespace redis
}  // namespace quotad

// RedisFunctions' batches: quotad_acquire_all (an all-or-nothing batch) and quotad_acquire_many
// (independent Acquires), each one FCALL carrying several quotad_acquire calls (see
// quotad_functions.lua).

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/store/redis/redis_functions.h"
#include "service/store/redis/redis_functions_internal.h"

namespace quotad {
namespace redis {

using redis_internal::FromMicros;
using redis_internal::RequestIdConflict;
using redis_internal::Wait;

absl::StatusOr<std::vector<std::string>> BatchArgs(const char* function,
                                                   const std::vector<AcquireCall>& calls,
                                                   absl::Time around) {
  std::vector<std::string> keys, tail = {absl::StrCat(calls.size())};
  for (const AcquireCall& call : calls) {
    // {"FCALL", "quotad_acquire", numkeys, keys..., arguments...}
    absl::StatusOr<std::vector<std::string>> one = AcquireArgs(call, around);
    if (!one.ok()) return one.status();
    size_t nkeys = 0;
    if (one->size() < 3 || !absl::SimpleAtoi((*one)[2], &nkeys) || one->size() < 3 + nkeys) {
      return absl::InternalError("quotad_acquire's arguments have no key count");
    }
    const auto first_arg = one->begin() + 3 + static_cast<ptrdiff_t>(nkeys);
    keys.insert(keys.end(), std::make_move_iterator(one->begin() + 3),
                std::make_move_iterator(first_arg));
    tail.push_back(absl::StrCat(nkeys));
    tail.push_back(absl::StrCat(one->end() - first_arg));
    tail.insert(tail.end(), std::make_move_iterator(first_arg),
                std::make_move_iterator(one->end()));
  }
  std::vector<std::string> args = {"FCALL", function, absl::StrCat(keys.size())};
  args.reserve(3 + keys.size() + tail.size());
  args.insert(args.end(), std::make_move_iterator(keys.begin()),
              std::make_move_iterator(keys.end()));
  args.insert(args.end(), std::make_move_iterator(tail.begin()),
              std::make_move_iterator(tail.end()));
  return args;
}

void RedisFunctions::AcquireAll(
    std::vector<AcquireCall> calls,
    absl::AnyInvocable<void(absl::StatusOr<AcquireAllAnswer>)> done) {
  AcquireAllAround(std::make_shared<std::vector<AcquireCall>>(std::move(calls)), clock_now_(),
                   false, std::move(done));
}

void RedisFunctions::AcquireAllAround(
    std::shared_ptr<std::vector<AcquireCall>> calls, absl::Time around, bool last_try,
    absl::AnyInvocable<void(absl::StatusOr<AcquireAllAnswer>)> done) {
  absl::StatusOr<std::vector<std::string>> args = BatchArgs("quotad_acquire_all", *calls, around);
  if (!args.ok()) {
    done(args.status());
    return;
  }
  CallMaybeWaiting(*std::move(args), [this, calls, last_try, done = std::move(done)](
                                         absl::StatusOr<Reply> reply, int64_t acked) mutable {
    if (!reply.ok()) {
      done(reply.status());
      return;
    }
    if (reply->is_error()) {
      done(absl::InternalError(absl::StrCat("redis: ", reply->str)));
      return;
    }
    const std::vector<Reply>& e = reply->elements;
    auto views = [&](size_t i) {
      const AcquireCall& call = (*calls)[i];
      return call.want_limits ? call.counters.size() : 0;
    };
    auto bad = [&] {
      return absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString()));
    };
    if (reply->type != Reply::Type::kArray || e.size() < 2 ||
        e[0].type != Reply::Type::kInteger || e[1].type != Reply::Type::kInteger) {
      done(bad());
      return;
    }
    AcquireAllAnswer all;
    all.now = FromMicros(e[1].integer);
    if (e[0].integer == 1) {
      if (e.size() != 2 + calls->size()) {
        done(bad());
        return;
      }
      for (size_t i = 0; i < calls->size(); ++i) {
        absl::StatusOr<AcquireAnswer> a = ParseAcquire(e[2 + i], views(i));
        if (!a.ok() || !a->granted) {
          done(a.ok() ? bad() : a.status());
          return;
        }
        all.answers.push_back(*std::move(a));
      }
      all.granted = true;
      // Not durable enough: nothing handed out (the charges stay until the leases' TTL).
      if (absl::Status s = CheckAcked(acked, "grants"); !s.ok()) {
        done(s);
        return;
      }
      done(std::move(all));
      return;
    }
    // An item's index (1-based) at element `i`, as an index into `calls`; -1 if not one.
    auto index = [&](size_t i) {
      if (e[i].type != Reply::Type::kInteger || e[i].integer < 1 ||
          e[i].integer > static_cast<int64_t>(calls->size())) {
        return -1;
      }
      return static_cast<int>(e[i].integer) - 1;
    };
    if (e[0].integer != 0 || e.size() < 4 || e.size() % 2 != 0 || index(2) < 0) {
      done(bad());
      return;
    }
    for (size_t i = 4; i < e.size(); i += 2) {
      const int item = index(i);
      absl::StatusOr<AcquireAnswer> a =
          item < 0 ? absl::StatusOr<AcquireAnswer>(bad()) : ParseAcquire(e[i + 1], 0);
      if (!a.ok() || !a->duplicate) {
        done(a.ok() ? bad() : a.status());
        return;
      }
      all.duplicates.emplace_back(item, *std::move(a));
    }
    all.blocker = index(2);
    const AcquireCall& call = (*calls)[all.blocker];
    all.blocked = ParseAcquire(e[3], views(all.blocker));
    if (!last_try && absl::IsFailedPrecondition(all.blocked.status())) {
      // The caller's clock is off by more than a window: windows around Redis's time.
      AcquireAllAround(calls, all.now, true, std::move(done));
      return;
    }
    if (absl::IsAlreadyExists(all.blocked.status())) {
      all.blocked = RequestIdConflict(call, all.blocked.status());
    }
    // An earlier grant is handed out only once durable, as a retry through Acquire (it waits
    // again): it may be one that was never acknowledged.
    if (!all.duplicates.empty()) {
      if (absl::Status s = CheckAcked(acked, "earlier grants"); !s.ok()) {
        done(s);
        return;
      }
    }
    done(std::move(all));
  });
}

void RedisFunctions::AcquireMany(std::vector<AcquireCall> calls,
                                 absl::AnyInvocable<void(absl::StatusOr<ManyAnswers>)> done) {
  // Rounds of one FCALL each: the first with calendar windows around this replica's time; the
  // items answered -1 (their windows miss Redis's time; quotad_acquire_many decides none after
  // the first such item) sent again together, in order, around Redis's time. Only the items
  // answered -1 are sent again, so that none is decided twice.
  struct State {
    std::vector<AcquireCall> calls;
    ManyAnswers answers;
    absl::AnyInvocable<void(absl::StatusOr<ManyAnswers>)> done;
    // Sends calls[items...] around `around`; `tries` rounds are left after this one.
    std::function<void(std::shared_ptr<State>, std::vector<size_t>, absl::Time, int)> send;
  };
  // A round that failed: the whole call's error when it was the first (nothing decided), else
  // its items' (the earlier rounds' answers stand: their grants were made).
  auto fail = [](State& state, const std::vector<size_t>& items, const absl::Status& error) {
    if (items.size() == state.calls.size()) {
      state.done(error);
      return;
    }
    for (size_t i : items) state.answers[i] = error;
    state.done(std::move(state.answers));
  };
  auto state = std::make_shared<State>();
  state->calls = std::move(calls);
  state->answers.assign(state->calls.size(), absl::InternalError("undecided"));
  state->done = std::move(done);
  state->send = [this, fail](std::shared_ptr<State> state, std::vector<size_t> items,
                             absl::Time around, int tries) {
    std::vector<AcquireCall> round;
    round.reserve(items.size());
    for (size_t i : items) round.push_back(state->calls[i]);
    absl::StatusOr<std::vector<std::string>> args = BatchArgs("quotad_acquire_many", round, around);
    if (!args.ok()) {
      fail(*state, items, args.status());
      return;
    }
    CallMaybeWaiting(*std::move(args), [this, fail, state, items = std::move(items), tries](
                                           absl::StatusOr<Reply> reply, int64_t acked) mutable {
      if (!reply.ok()) {
        fail(*state, items, reply.status());
        return;
      }
      absl::Status bad;
      const std::vector<Reply>& e = reply->elements;
      if (reply->is_error()) {
        bad = absl::InternalError(absl::StrCat("redis: ", reply->str));
      } else if (reply->type != Reply::Type::kArray || e.size() != 2 + items.size() ||
                 e[0].type != Reply::Type::kInteger || e[0].integer != 1 ||
                 e[1].type != Reply::Type::kInteger) {
        bad = absl::InternalError(absl::StrCat("unexpected reply ", reply->DebugString()));
      }
      if (!bad.ok()) {
        fail(*state, items, bad);
        return;
      }
      std::vector<size_t> again;
      for (size_t k = 0; k < items.size(); ++k) {
        const AcquireCall& call = state->calls[items[k]];
        absl::StatusOr<AcquireAnswer> a =
            ParseAcquire(e[2 + k], call.want_limits ? call.counters.size() : 0);
        if (a.ok() && a->granted) {
          if (absl::Status s = CheckAcked(acked, "grant"); !s.ok()) a = s;
        }
        if (tries > 0 && absl::IsFailedPrecondition(a.status())) {
          again.push_back(items[k]);
          continue;
        }
        if (absl::IsAlreadyExists(a.status())) a = RequestIdConflict(call, a.status());
        state->answers[items[k]] = std::move(a);
      }
      if (!again.empty()) {
        // Their calendar windows miss Redis's time: around Redis's, together, in order.
        std::shared_ptr<State> keep = state;
        keep->send(keep, std::move(again), FromMicros(e[1].integer), tries - 1);
        return;
      }
      state->done(std::move(state->answers));
    });
  };
  std::vector<size_t> all(state->calls.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  // Two rounds more at most: Redis's time may cross a window's end between two rounds.
  state->send(state, std::move(all), clock_now_(), 2);
}

absl::StatusOr<AcquireAllAnswer> RedisFunctions::AcquireAllSync(std::vector<AcquireCall> calls) {
  return Wait<AcquireAllAnswer>(
      [&](auto done) { AcquireAll(std::move(calls), std::move(done)); });
}

}  // namespace redis
}  // namespace quotad

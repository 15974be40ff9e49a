// RedisBackend's waiting (README "Waiting"): an Acquire with max_wait that cannot be granted now
// is queued in Redis by quotad_wait (one sorted set per counter, ordered by priority then
// arrival, shared by every replica) and parked here. This replica calls again for a waiter
//   - when Redis publishes that it heads a queue (quotad_release, quotad_reset, or a waiter
//     leaving or granted: channel q:{credential}:freed, one PSUBSCRIBE per replica);
//   - at its retry time, when a limit (not a waiter ahead) held it back (windows reopening,
//     buckets refilling, leases expiring publish nothing);
//   - every wait_beat at the least: its heartbeat (its entries live 3 beats after its last
//     call, so a dead replica's waiters drop out) and the safety re-check for a lost message.
// A waiter has at most one call in flight; a message arriving meanwhile makes it call again
// once that one is answered. A waiter whose deadline passes is answered with the denial and
// leaves the queue; one cancelled leaves it (after its call in flight, if any: a grant made
// meanwhile is released, unless a request_id names it). A waiter is planned again under a
// reloaded policy before its next call; an INVALID_ARGUMENT answer ends its wait at once.

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "service/core/lease_id.h"
#include "service/store/redis/redis_backend.h"

namespace quotad {
namespace {

std::string FreedChannel(absl::string_view credential) {
  return absl::StrCat("q:", redis::CredentialTag(credential), ":freed");
}

}  // namespace

// A request parked on this replica. Owns its strings; `plan` keeps the rules its counters name,
// planned under `compiled` (a reload plans it again before its next call).
struct RedisBackend::Waiter {
  uint64_t id = 0;     // the ticket's
  std::string waiter;  // its id in Redis's queues
  std::string channel;
  std::string scope, holder;
  std::shared_ptr<const Compiled> compiled;
  Plan plan;
  redis::AcquireCall call;  // the request; a new lease id per attempt
  int priority = 0;
  int64_t seq = 0;  // its arrival in Redis's queue; 0: not queued yet
  absl::Time deadline;
  absl::Time next_try = absl::InfiniteFuture();
  bool in_flight = false;  // a quotad_wait call is out
  bool again = false;      // woken while in flight: call again once answered
  bool gone = false;       // cancelled while in flight: leave once answered
  absl::Time retry_at = absl::InfiniteFuture();
  std::string limited_by;
  absl::Status error;  // the last call's, when it failed
  WaitCallback done;
};

// One call to send (outside wait_mu_) for waiter `id`.
struct RedisBackend::Attempt {
  uint64_t id = 0;
  redis::WaitCall call;
  std::shared_ptr<const CompiledCredential> keep;  // the rules `call` names
};

WaitTicket RedisBackend::AcquireSharedOrWait(const AcquireRequest& req,
                                             const SharedRequestId& request_id,
                                             absl::Duration max_wait, int priority,
                                             WaitCallback done) {
  if (max_wait <= absl::ZeroDuration() || !serving()) {
    // Decided at once (a store that cannot be reached: as AcquireShared, fail open included).
    AcquireShared(req, request_id, std::move(done));
    return {};
  }
  // The checks of AcquireShared, before anything is queued.
  std::shared_ptr<const Compiled> now_compiled = compiled();
  absl::StatusOr<Plan> plan = PlanFor(*now_compiled, req.credential, req.feature, req.scope);
  if (!plan.ok()) {
    done(plan.status());
    return {};
  }
  const CompiledFeature& feature = *plan->feature;
  absl::StatusOr<absl::Duration> checked_ttl = CheckedTtl(*plan, req);
  if (!checked_ttl.ok()) {
    done(checked_ttl.status());
    return {};
  }
  const absl::Duration ttl = *checked_ttl;
  StartWaiting();
  auto w = std::make_shared<Waiter>();
  w->waiter = NewLeaseId().ToString();
  w->channel = FreedChannel(req.credential);
  w->priority = priority;
  w->deadline = clock_->Now() + max_wait;
  w->scope = std::string(req.scope);
  w->holder = std::string(req.holder);
  w->compiled = std::move(now_compiled);
  w->done = std::move(done);
  redis::AcquireCall& call = w->call;
  call.credential = std::string(req.credential);
  call.cost = req.cost;
  call.ttl = ttl;
  call.counters = plan->counters;
  call.feature = feature.name;
  call.request_id = std::string(request_id.key);
  call.fingerprint = std::string(request_id.fingerprint);
  call.dedup_window = options_.dedup_window;
  call.locator = EncodeFields({req.credential, req.feature, req.scope, req.holder,
                                absl::StrCat(req.cost), plan->signature});
  w->plan = *std::move(plan);
  Attempt first;
  WaitTicket ticket;
  {
    absl::MutexLock lock(&wait_mu_);
    w->id = next_waiter_++;
    ticket.priority = priority;
    ticket.id = w->id;
    first = Try(*w);
    waiter_ids_[w->waiter] = w->id;
    waiters_[w->id] = std::move(w);
  }
  Send(std::move(first));
  return ticket;
}

RedisBackend::Attempt RedisBackend::Try(Waiter& w) {
  w.in_flight = true;
  w.again = false;
  ++wait_calls_;
  Attempt a;
  a.id = w.id;
  a.keep = w.plan.cc;
  a.call.acquire = w.call;
  a.call.acquire.lease_id = NewHeldLeaseId(a.call.acquire.credential).ToString();
  a.call.acquire.locator_key = LeaseLocatorKey(a.call.acquire.lease_id);
  a.call.mode = w.seq == 0 ? redis::WaitCall::Mode::kEnter : redis::WaitCall::Mode::kRetry;
  a.call.waiter = w.waiter;
  a.call.priority = w.priority;
  a.call.seq = w.seq;
  a.call.beat = options_.wait_beat;
  return a;
}

RedisBackend::Attempt RedisBackend::Leave(const Waiter& w) {
  Attempt a;
  a.keep = w.plan.cc;
  a.call.acquire = w.call;
  a.call.acquire.lease_id = "-";
  a.call.acquire.locator_key.clear();
  a.call.mode = redis::WaitCall::Mode::kLeave;
  a.call.waiter = w.waiter;
  a.call.priority = w.priority;
  a.call.seq = w.seq;
  a.call.beat = options_.wait_beat;
  return a;
}

void RedisBackend::Send(Attempt a) {
  if (a.call.mode == redis::WaitCall::Mode::kLeave) {
    // Best effort: an entry left behind drops out 3 beats after this replica's last call.
    functions_.WaitAcquire(std::move(a.call),
                    [keep = std::move(a.keep)](absl::StatusOr<redis::WaitAnswer>) {});
    return;
  }
  const uint64_t id = a.id;
  std::string lease = a.call.acquire.lease_id;
  functions_.WaitAcquire(std::move(a.call),
                  [this, id, lease = std::move(lease), keep = std::move(a.keep)](
                      absl::StatusOr<redis::WaitAnswer> answer) {
                    OnAnswer(id, lease, std::move(answer));
                  });
}

void RedisBackend::OnAnswer(uint64_t id, absl::string_view lease_id,
                            absl::StatusOr<redis::WaitAnswer> answer) {
  std::shared_ptr<Waiter> finished;  // taken out: answered below, outside the lock
  absl::StatusOr<Decision> result;
  std::vector<Attempt> sends;
  std::optional<redis::ReleaseCall> give_back;
  {
    absl::MutexLock lock(&wait_mu_);
    auto it = waiters_.find(id);
    if (it == waiters_.end()) return;
    Waiter& w = *it->second;
    w.in_flight = false;
    const absl::Time now = clock_->Now();
    auto take = [&] {
      waiter_ids_.erase(w.waiter);
      finished = std::move(it->second);
      waiters_.erase(it);
    };
    if (answer.ok() && answer->acquire.granted) {
      take();  // answered below
    } else if (!answer.ok()) {
      w.error = StoreError(answer.status(), "nothing was granted");
      // An error that a call again would only repeat (a request_id first used for another
      // request, a bad argument) ends the wait at once, as it ends a first call: the waiter at
      // the head of a queue must not hold the others back until its entry expires.
      const bool final_error = absl::IsInvalidArgument(w.error);
      if (w.gone || w.seq == 0 || wait_stopping_ || final_error) {
        // Never queued (the first call failed), going, or failed for good: answered with the
        // error. It leaves the queue even when its first call failed (that call may have queued
        // it before its answer was lost).
        sends.push_back(Leave(w));
        take();
        result = w.gone ? absl::CancelledError("cancelled") : finished->error;
      } else {
        w.next_try = now + std::min(options_.wait_beat / 4, absl::Milliseconds(250));
      }
    } else {
      w.error = absl::OkStatus();
      w.seq = answer->seq;
      const redis::AcquireAnswer& a = answer->acquire;
      w.retry_at = a.retry_at;
      if (a.cooling || a.limiting < 0 || a.limiting >= static_cast<int>(w.plan.rules.size())) {
        w.limited_by = absl::StrCat(w.plan.feature->name, ".cooldown");
      } else {
        w.limited_by = w.plan.rules[a.limiting]->full_name;
      }
      if (w.gone || w.deadline <= now || wait_stopping_) {
        sends.push_back(Leave(w));
        take();
        Decision denied;
        denied.retry_at = finished->retry_at;
        denied.limited_by = finished->limited_by;
        result = denied;
      } else if (w.again) {
        w.next_try = absl::InfinitePast();
      } else if (answer->ahead || a.retry_at == absl::InfiniteFuture()) {
        // A waiter ahead (its replica is told when it leaves), or never by the limits alone.
        w.next_try = now + options_.wait_beat;
      } else {
        w.next_try = std::clamp(a.retry_at, now + absl::Milliseconds(1), now + options_.wait_beat);
      }
    }
    if (finished == nullptr) wait_cv_.Signal();
  }
  for (Attempt& a : sends) Send(std::move(a));
  if (finished == nullptr) return;
  if (answer.ok() && answer->acquire.granted) {
    Decision d;
    d.granted = true;
    const absl::string_view text =
        answer->acquire.duplicate ? absl::string_view(answer->acquire.lease_id) : lease_id;
    absl::StatusOr<LeaseId> lease = LeaseId::Parse(text);
    if (!lease.ok()) {
      if (!finished->gone) {
        finished->done(absl::InternalError(
            absl::StrCat("shared store answered lease ", text, ": ", lease.status().message())));
      }
      return;
    }
    if (finished->gone) {
      // Cancelled while this grant was on its way: nobody takes it, so it is given back, unless
      // a request_id names it. A duplicate is the first copy's lease, held by whoever got that
      // answer; and a retry of the request_id is answered this grant from its record, so
      // releasing it would hand out a lease whose units another request may take meanwhile
      // (over capacity). Those stay charged until their TTL (an under-grant, never an over-one).
      if (answer->acquire.duplicate || !finished->call.request_id.empty()) return;
      redis::ReleaseCall call;
      call.credential = finished->call.credential;
      call.lease_id = lease->ToString();
      call.used = -1;
      call.counters = finished->call.counters;
      call.locator_key = LeaseLocatorKey(call.lease_id);
      functions_.Release(std::move(call),
                         [keep = finished->plan.cc](absl::StatusOr<redis::ReleaseAnswer>) {});
      return;
    }
    d.lease_id = *lease;
    d.lease_expiry = answer->acquire.lease_expiry;
    finished->done(std::move(d));
    return;
  }
  if (finished->gone) return;  // cancelled: `done` is destroyed uncalled
  finished->done(std::move(result));
}

void RedisBackend::OnMessage(absl::string_view channel, absl::string_view message) {
  absl::MutexLock lock(&wait_mu_);
  bool woke = false;
  auto wake = [&](Waiter& w) {
    ++wakeups_;
    woke = true;
    if (w.in_flight) {
      w.again = true;
    } else {
      w.next_try = absl::InfinitePast();
    }
  };
  for (absl::string_view id : absl::StrSplit(message, ',')) {
    if (id == "*") {
      for (auto& [unused, w] : waiters_) {
        if (w->channel == channel) wake(*w);
      }
      continue;
    }
    auto it = waiter_ids_.find(id);
    if (it == waiter_ids_.end()) continue;
    auto w = waiters_.find(it->second);
    if (w != waiters_.end()) wake(*w->second);
  }
  if (woke) wait_cv_.Signal();
}

bool RedisBackend::Cancel(const WaitTicket& ticket) {
  std::shared_ptr<Waiter> gone;
  WaitCallback done;  // destroyed uncalled, outside the lock
  std::optional<Attempt> leave;
  {
    absl::MutexLock lock(&wait_mu_);
    auto it = waiters_.find(ticket.id);
    if (it == waiters_.end() || it->second->gone) return false;
    Waiter& w = *it->second;
    done = std::move(w.done);
    if (w.in_flight) {
      w.gone = true;  // OnAnswer leaves the queue (or gives a grant back)
    } else {
      if (w.seq != 0) leave = Leave(w);
      waiter_ids_.erase(w.waiter);
      gone = std::move(it->second);
      waiters_.erase(it);
    }
  }
  if (leave.has_value()) Send(*std::move(leave));
  return true;
}

void RedisBackend::AnswerAllWaiters(const absl::Status& status) {
  std::vector<WaitCallback> answers;
  std::vector<Attempt> leaves;
  {
    absl::MutexLock lock(&wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      Waiter& w = *it->second;
      if (w.gone) {
        ++it;
        continue;
      }
      answers.push_back(std::move(w.done));
      if (w.in_flight) {
        w.gone = true;  // OnAnswer leaves the queue (or gives a grant back)
        ++it;
        continue;
      }
      if (w.seq != 0) leaves.push_back(Leave(w));
      waiter_ids_.erase(w.waiter);
      waiters_.erase(it++);
    }
  }
  for (Attempt& a : leaves) Send(std::move(a));
  for (WaitCallback& done : answers) done(status);
}

RedisBackend::WaitStats RedisBackend::wait_stats() const {
  absl::MutexLock lock(&wait_mu_);
  WaitStats s;
  for (const auto& [unused, w] : waiters_) {
    if (w->gone) continue;
    ++s.parked;
    s.placed += w->seq != 0 ? 1 : 0;
  }
  s.calls = wait_calls_;
  s.wakeups = wakeups_;
  return s;
}

void RedisBackend::StartWaiting() {
  {
    absl::MutexLock lock(&wait_mu_);
    if (wait_started_) return;
    wait_started_ = true;
  }
  subscriber_ = std::make_unique<redis::RedisSubscriber>(
      "q:*:freed", [this] { return client_->primary(); },
      [this](absl::string_view channel, absl::string_view message) {
        OnMessage(channel, message);
      },
      [this] {
        // Messages may have been missed while not subscribed: every waiter calls again.
        absl::MutexLock lock(&wait_mu_);
        for (auto& [unused, w] : waiters_) {
          if (w->in_flight) {
            w->again = true;
          } else {
            w->next_try = absl::InfinitePast();
          }
        }
        wait_cv_.Signal();
      });
  wait_thread_ = std::thread([this] { WaitLoop(); });
}

void RedisBackend::StopWaiting() {
  {
    absl::MutexLock lock(&wait_mu_);
    if (!wait_started_) return;
    wait_stopping_ = true;
    wait_cv_.Signal();
  }
  wait_thread_.join();
  subscriber_.reset();
  // Waiters not in flight are answered now; those in flight when the client's destructor
  // answers their call. Their queue entries are left to expire (as when a replica dies).
  std::vector<std::shared_ptr<Waiter>> answered;
  {
    absl::MutexLock lock(&wait_mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second->in_flight) {
        ++it;
        continue;
      }
      waiter_ids_.erase(it->second->waiter);
      answered.push_back(std::move(it->second));
      waiters_.erase(it++);
    }
  }
  for (auto& w : answered) {
    if (!w->gone) w->done(absl::UnavailableError("quotad is shutting down: nothing was granted"));
  }
}

void RedisBackend::WaitLoop() {
  // A waiter planned under an older policy (a reload since it parked) is planned again before
  // its next call: it is never granted under a limit the operator has since tightened, and is
  // answered the error when its feature went away or its cost no longer fits.
  auto replan = [this](Waiter& w, const std::shared_ptr<const Compiled>& current) {
    if (w.compiled == current) return absl::OkStatus();
    absl::StatusOr<Plan> plan = PlanFor(*current, w.call.credential, w.call.feature, w.scope);
    if (!plan.ok()) return plan.status();
    const CompiledFeature& feature = *plan->feature;
    if (w.call.cost > feature.min_capacity) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cost ", w.call.cost, " exceeds capacity ", feature.min_capacity, " of limit ",
          plan->cc->rules[feature.min_capacity_rule].full_name, " and can never be granted"));
    }
    if (w.call.ttl > feature.max_lease_ttl) {
      return absl::InvalidArgumentError(
          absl::StrCat("lease_ttl ", absl::FormatDuration(w.call.ttl), " exceeds the maximum ",
                       absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
    }
    w.call.counters = plan->counters;
    w.call.feature = feature.name;
    w.call.locator = EncodeFields({w.call.credential, w.call.feature, w.scope, w.holder,
                                    absl::StrCat(w.call.cost), plan->signature});
    w.plan = *std::move(plan);
    w.compiled = current;
    return absl::OkStatus();
  };
  wait_mu_.Lock();
  while (!wait_stopping_) {
    const absl::Time now = clock_->Now();
    const std::shared_ptr<const Compiled> current = compiled();
    std::vector<Attempt> sends;
    std::vector<std::shared_ptr<Waiter>> expired;
    absl::Time next = now + options_.wait_beat;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      Waiter& w = *it->second;
      if (w.in_flight) {
        ++it;
        continue;
      }
      if (w.deadline <= now) {
        if (w.seq != 0) sends.push_back(Leave(w));
        waiter_ids_.erase(w.waiter);
        expired.push_back(std::move(it->second));
        waiters_.erase(it++);
        continue;
      }
      if (w.next_try <= now) {
        if (absl::Status s = replan(w, current); !s.ok()) {
          w.error = s;
          if (w.seq != 0) sends.push_back(Leave(w));
          waiter_ids_.erase(w.waiter);
          expired.push_back(std::move(it->second));
          waiters_.erase(it++);
          continue;
        }
        sends.push_back(Try(w));
      } else {
        next = std::min({next, w.next_try, w.deadline});
      }
      ++it;
    }
    if (sends.empty() && expired.empty()) {
      wait_cv_.WaitWithTimeout(&wait_mu_, std::max(next - now, absl::Milliseconds(1)));
      continue;
    }
    // Calls and answers go out without the lock (a call failing at once answers inline).
    wait_mu_.Unlock();
    for (Attempt& a : sends) Send(std::move(a));
    for (auto& w : expired) {
      if (!w->error.ok()) {
        w->done(w->error);
        continue;
      }
      Decision denied;  // the normal denial at max_wait, as the embedded ledger answers
      denied.retry_at = w->retry_at;
      denied.limited_by = w->limited_by;
      w->done(denied);
    }
    wait_mu_.Lock();
  }
  wait_mu_.Unlock();
}

}  // namespace quotad

// The ledger's wait queues: AcquireOrWait parks a request in its credential's queue
// (wait_queue.h) when it cannot be granted now; Pump, releases, refunds and reloads serve the
// queues; Cancel and AnswerAllWaiters take requests out. Answers are delivered after the
// credential's mutex is released (ledger_internal.h).

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

absl::StatusOr<Decision> Credential::AcquireOrQueue(Ledger& l, const AcquireRequest& req,
                                                    int priority, int64_t now, LeaseRecord* rec,
                                                    std::unique_ptr<Waiter>* waiter,
                                                    std::vector<Answer>* answers) {
  const bool may_wait = waiter != nullptr && *waiter != nullptr;
  // Nobody waits on most credentials: straight to the decision.
  if (waiters.empty() && !may_wait) return Acquire(l, req, now, rec);
  if (!waiters.empty() && now >= next_serve_ns) {
    next_serve_ns = ServeWaiters(l, now, answers);
  }
  const int fi = compiled->FindFeature(req.feature);
  Waiter* blocker = fi < 0 || waiters.empty()
                        ? nullptr
                        : FirstConflict(waiters, *compiled, fi, req.scope, priority);
  absl::StatusOr<Decision> d;
  if (blocker == nullptr) {
    d = Acquire(l, req, now, rec);
    if (!d.ok() || d->granted || !may_wait) return d;
  } else if (!may_wait) {
    // Waiting requests go first: a request that does not wait is told when the waiter ahead of
    // it could be served, which is the earliest anything could be.
    Decision denied;
    denied.retry_at = l.ToWall(blocker->retry_ns);
    denied.limited_by = blocker->limited_by;
    return denied;
  }
  if (static_cast<int64_t>(waiters.size()) >= l.options_.max_waiters_per_credential) {
    return absl::ResourceExhaustedError(
        absl::StrCat("credential '", name, "' already has ", waiters.size(),
                     " requests waiting, the most allowed; retry later"));
  }
  Waiter& w = **waiter;
  if (blocker != nullptr) {
    w.retry_ns = blocker->retry_ns;
    w.limited_by = blocker->limited_by;
  } else {
    w.retry_ns = l.FromWall(d->retry_at);
    w.limited_by = d->limited_by;
  }
  next_serve_ns = std::min({next_serve_ns, w.retry_ns, w.deadline_ns});
  Decision parked;
  parked.retry_at = l.ToWall(w.retry_ns);
  parked.limited_by = w.limited_by;
  waiters.emplace(ledger_internal::WaiterKeyOf(w.priority, w.id), std::move(*waiter));
  l.waiting_.fetch_add(1, std::memory_order_relaxed);
  {
    absl::MutexLock wait_lock(&l.wait_mu_);
    l.waiting_credentials_.insert(this);
  }
  return parked;
}

int64_t Credential::ServeWaiters(Ledger& l, int64_t now, std::vector<Answer>* answers) {
  const CompiledCredential& cc = *compiled;
  // Waiters that must go on waiting, with their feature: later ones that share a counter with
  // one of them wait behind it.
  absl::InlinedVector<std::pair<const Waiter*, int>, 8> held;
  int64_t next = kInfiniteNs;
  for (auto it = waiters.begin(); it != waiters.end();) {
    Waiter& w = *it->second;
    auto answer = [&](absl::StatusOr<Decision> result, std::unique_ptr<LeaseRecord> lease)
                      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
                        Answer& a = answers->emplace_back();
                        a.done = std::move(w.done);
                        a.result = std::move(result);
                        if (lease != nullptr) {
                          l.InsertLease(a.result->lease_id, std::move(*lease));
                          a.granted_on = this;
                        }
                        it = waiters.erase(it);
                        l.waiting_.fetch_sub(1, std::memory_order_relaxed);
                      };
    const int fi = cc.FindFeature(w.feature);
    const Waiter* ahead = nullptr;
    if (fi >= 0) {
      for (const auto& [other, of] : held) {
        if (ShareCounter(cc, fi, w.scope, of, other->scope)) {
          ahead = other;
          break;
        }
      }
    }
    if (ahead == nullptr) {
      auto lease = std::make_unique<LeaseRecord>();
      absl::StatusOr<Decision> d = Acquire(l, w.View(), now, lease.get());
      if (!d.ok() || d->granted) {
        const bool granted = d.ok();
        answer(std::move(d), granted ? std::move(lease) : nullptr);
        continue;
      }
      w.retry_ns = l.FromWall(d->retry_at);
      w.limited_by = d->limited_by;
    } else {
      w.retry_ns = ahead->retry_ns;
      w.limited_by = ahead->limited_by;
    }
    if (w.deadline_ns <= now) {
      Decision denied;
      denied.retry_at = l.ToWall(w.retry_ns);
      denied.limited_by = w.limited_by;
      answer(denied, nullptr);
      continue;
    }
    if (fi >= 0) held.emplace_back(&w, fi);
    next = std::min({next, w.retry_ns, w.deadline_ns});
    ++it;
  }
  if (waiters.empty()) {
    absl::MutexLock wait_lock(&l.wait_mu_);
    l.waiting_credentials_.erase(this);
  }
  return next;
}

void Ledger::Deliver(std::vector<Answer>& answers) {
  for (Answer& a : answers) a.done(std::move(a.result));
  answers.clear();
}

WaitTicket Ledger::AcquireOrWait(const AcquireRequest& req, absl::Duration max_wait, int priority,
                                 WaitCallback done) {
  if (absl::Status s = ValidateRequest(req); !s.ok()) {
    done(s);
    return {};
  }
  if (max_wait < absl::ZeroDuration()) {
    done(absl::InvalidArgumentError(
        absl::StrCat("max_wait ", absl::FormatDuration(max_wait), " is negative")));
    return {};
  }
  Credential* cred = FindCredential(req.credential);
  if (cred == nullptr) {
    done(absl::NotFoundError(absl::StrCat("credential '", req.credential, "' is not configured")));
    return {};
  }
  const int64_t now = NowNs();
  auto waiter = std::make_unique<Waiter>();
  Waiter& w = *waiter;
  w.credential = std::string(req.credential);
  w.feature = std::string(req.feature);
  w.scope = std::string(req.scope);
  w.holder = std::string(req.holder);
  w.cost = req.cost;
  w.lease_ttl = req.lease_ttl;
  w.want_limits = req.want_limits;
  w.deadline_ns = SatAdd(now, absl::ToInt64Nanoseconds(max_wait));
  w.priority = priority;
  w.id = next_waiter_id_.fetch_add(1, std::memory_order_relaxed);
  w.done = std::move(done);
  WaitTicket ticket{cred, priority, w.id};

  std::vector<Answer> answers;
  LeaseRecord rec;
  absl::StatusOr<Decision> result;
  {
    absl::MutexLock lock(&cred->mu);
    result = cred->AcquireOrQueue(*this, req, priority, now, &rec,
                                  max_wait > absl::ZeroDuration() ? &waiter : nullptr, &answers);
    if (waiter != nullptr && result.ok() && result->granted) {
      InsertLease(result->lease_id, std::move(rec));
    }
  }
  const bool parked = waiter == nullptr;
  if (!parked) waiter->done(std::move(result));
  Deliver(answers);
  if (!parked) return {};
  if (options_.wake) {
    options_.wake(ToWall(
        std::min(FromWall(result->retry_at), SatAdd(now, absl::ToInt64Nanoseconds(max_wait)))));
  }
  return ticket;
}

bool Ledger::Cancel(const WaitTicket& ticket) {
  if (ticket.credential == nullptr) return false;
  // Only credentials this ledger made are ever named by tickets, and none is ever freed.
  Credential* cred = ticket.credential;
  std::unique_ptr<Waiter> gone;
  {
    absl::MutexLock lock(&cred->mu);
    auto it = cred->waiters.find(ledger_internal::WaiterKeyOf(ticket.priority, ticket.id));
    if (it == cred->waiters.end()) return false;
    gone = std::move(it->second);
    cred->waiters.erase(it);
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    // The waiters it held back may go now.
    cred->next_serve_ns = std::numeric_limits<int64_t>::min();
  }
  ServeCredential(*cred);
  return true;
}

void Ledger::ServeCredential(Credential& cred) {
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  std::vector<Answer> answers;
  int64_t next;
  {
    absl::MutexLock lock(&cred.mu);
    if (cred.waiters.empty()) return;
    next = cred.ServeWaiters(*this, NowNs(), &answers);
    cred.next_serve_ns = next;
  }
  Deliver(answers);
  if (next != kInfiniteNs && options_.wake) options_.wake(ToWall(next));
}

absl::Time Ledger::Pump() {
  std::vector<Credential*> creds;
  {
    absl::MutexLock l(&wait_mu_);
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  const int64_t now = NowNs();
  int64_t next = kInfiniteNs;
  std::vector<Answer> answers;
  for (Credential* cred : creds) {
    {
      absl::MutexLock lock(&cred->mu);
      cred->next_serve_ns = cred->ServeWaiters(*this, now, &answers);
      next = std::min(next, cred->next_serve_ns);
    }
    Deliver(answers);
  }
  return ToWall(next);
}

void Ledger::AnswerAllWaiters(const absl::Status& status) {
  std::vector<Credential*> creds;
  {
    absl::MutexLock l(&wait_mu_);
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  for (Credential* cred : creds) {
    std::vector<std::unique_ptr<Waiter>> waiters;
    {
      absl::MutexLock lock(&cred->mu);
      for (auto& [order, w] : cred->waiters) waiters.push_back(std::move(w));
      waiting_.fetch_sub(static_cast<int64_t>(cred->waiters.size()), std::memory_order_relaxed);
      cred->waiters.clear();
      absl::MutexLock l(&wait_mu_);
      waiting_credentials_.erase(cred);
    }
    for (auto& w : waiters) w->done(status);
  }
}

int64_t Ledger::waiting() const { return waiting_.load(std::memory_order_relaxed); }

std::vector<QueueInfo> Ledger::Queues() const {
  std::vector<Credential*> creds;
  {
    absl::MutexLock lock(&wait_mu_);  // lock order: never a credential's mu inside wait_mu_
    creds.assign(waiting_credentials_.begin(), waiting_credentials_.end());
  }
  std::vector<QueueInfo> out;
  for (Credential* cred : creds) {
    absl::MutexLock lock(&cred->mu);
    // One queue per feature and scope; its head is the first of them in serving order.
    std::map<std::pair<std::string, std::string>, QueueInfo> queues;
    for (const auto& [order, w] : cred->waiters) {
      QueueInfo& q = queues[{w->feature, w->scope}];
      if (q.waiters++ > 0) continue;
      q.credential = cred->name;
      q.feature = w->feature;
      q.scope = w->scope;
      q.retry_at = ToWall(w->retry_ns);
      q.limited_by = w->limited_by;
    }
    for (auto& [key, q] : queues) out.push_back(std::move(q));
  }
  std::sort(out.begin(), out.end(), [](const QueueInfo& a, const QueueInfo& b) {
    return std::tie(a.credential, a.feature, a.scope) < std::tie(b.credential, b.feature, b.scope);
  });
  return out;
}

}  // namespace quotad

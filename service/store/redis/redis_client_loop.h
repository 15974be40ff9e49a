#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_LOOP_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_LOOP_H_

// RedisClient's event loop (redis_client.h), private to redis_client.cc, which alone includes
// this header: the hiredis contexts and their epoll adapter, dispatching calls over the
// connections, the ROLE check, WAIT groups, timeouts, reconnects and following a new primary.
// The names below are internal to the client.

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <queue>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "service/store/redis/redis_client.h"

namespace quotad {
namespace redis {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;

inline SteadyClock::duration ToSteady(absl::Duration d) {
  return std::chrono::duration_cast<SteadyClock::duration>(absl::ToChronoNanoseconds(d));
}

// A copy of hiredis's reply.
Reply Convert(const redisReply* r);

// One call in flight (or a pipeline of `expected` commands). Answered once: by its (last)
// reply, its timeout or the shutdown, whichever comes first (the later ones find `finished`).
// Touched only on the loop thread.
struct Pending {
  ReplyCallback done;
  bool finished = false;
  size_t expected = 0;       // a pipeline: the commands written; 0: one plain call
  std::vector<Reply> parts;  // a pipeline: the replies so far
};

inline void Finish(Pending& p, absl::StatusOr<Reply> result) {
  if (p.finished) return;
  p.finished = true;
  p.done(std::move(result));
  p.done = nullptr;  // release what the callback captured
}

struct Submission {
  std::vector<std::vector<std::string>> commands;  // one, or a pipeline
  bool pipeline = false;
  // > 0: CallThenWait (one command, then a WAIT shared with the round's other such calls).
  int wait_replicas = 0;
  int64_t wait_ms = 0;
  ReplyCallback done;
  absl::Duration timeout;
};

// An error reply that says the server cannot take writes now: a primary demoted to replica
// (READONLY), one still loading its data (LOADING), or one refusing writes for want of
// replicas or sentinels (NOREPLICAS, MASTERDOWN). Nothing was written.
bool NotAPrimaryNow(const redisReply* r);

// ROLE's reply names a primary.
bool IsMasterRole(const redisReply* r);

// only.
class RedisClient::Loop {
 public:
  explicit Loop(RedisClientOptions options)
      : options_(std::move(options)),
        host_(options_.host),
        port_(options_.sentinels.empty() ? options_.port : 0) {}
  ~Loop() {
    if (epfd_ >= 0) close(epfd_);
    if (evfd_ >= 0) close(evfd_);
  }

  absl::Status Start() {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    evfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epfd_ < 0 || evfd_ < 0) {
      return absl::InternalError(absl::StrCat("epoll/eventfd: ", strerror(errno)));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // the wake-up fd
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, evfd_, &ev) != 0) {
      return absl::InternalError(absl::StrCat("epoll_ctl: ", strerror(errno)));
    }
    const int n = std::max(1, options_.connections);
    for (int i = 0; i < n; ++i) {
      auto conn = std::make_unique<Conn>();
      conn->loop = this;
      conn->backoff = options_.min_backoff;
      conns_.push_back(std::move(conn));
    }
    thread_ = std::thread([this] { Run(); });
    return absl::OkStatus();
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    Wake();
    if (thread_.joinable()) thread_.join();
  }

  void Submit(Submission s) {
    bool stopped;
    {
      absl::MutexLock lock(&mu_);
      stopped = stop_;
      if (!stopped) queue_.push_back(std::move(s));
    }
    if (stopped) {
      s.done(absl::CancelledError("redis client is shutting down"));
      return;
    }
    Wake();
  }

  int connected() const {
    absl::MutexLock lock(&mu_);
    return connected_;
  }

  // Where calls go from now on. Connections to another address are dropped (their pending
  // calls: kUnavailable) by the loop before any new call is written.
  void SetTarget(const HostPort& target) {
    {
      absl::MutexLock lock(&mu_);
      new_target_ = target;
    }
    Wake();
  }

  HostPort target() const {
    absl::MutexLock lock(&mu_);
    return target_;
  }

  // Called on the loop thread when a connection fails, drops or meets a server that is not a
  // primary (Sentinel mode: ask the sentinels again). Set before Start().
  void set_on_trouble(std::function<void()> f) { on_trouble_ = std::move(f); }

  bool WaitConnected(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto up = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return connected_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&up), timeout);
  }

  const RedisClientOptions& options() const { return options_; }

 private:
  // The CallThenWait calls written to one connection this round, waiting for their WAIT.
  struct Conn;
  // CallThenWait calls written to one connection, answered by the WAIT written after them.
  struct WaitGroup {
    Conn* conn = nullptr;
    int replicas = 0;
    int64_t ms = 0;
    std::vector<std::shared_ptr<Pending>> calls;
  };
  // A CallThenWait call held back while its connection has a WAIT outstanding: Redis would not
  // run it before that WAIT returns anyway, and sent afterwards it joins the next group.
  struct Held {
    std::vector<std::string> args;
    std::shared_ptr<Pending> p;
    int replicas = 0;
    int64_t ms = 0;
  };

  // One connection slot: at most one hiredis context at a time, replaced on reconnect.
  struct Conn {
    Loop* loop = nullptr;
    redisAsyncContext* ac = nullptr;  // owned by hiredis once connecting; nullptr when down
    bool up = false;
    int fd = -1;
    bool registered = false;  // fd in the epoll set
    uint32_t events = 0;
    TimePoint retry_at{};          // when down: next attempt
    TimePoint connect_deadline{};  // when connecting
    absl::Duration backoff;
    std::unique_ptr<WaitGroup> wait_group;  // written since the last WAIT (FlushWait writes it)
    bool wait_outstanding = false;          // a WAIT written, its reply not in yet
    std::vector<Held> held;                 // for the group after that WAIT
  };

  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(evfd_, &one, sizeof(one));
  }

  // hiredis's event hooks (the adapter): keep the fd's epoll interest in step.
  static void UpdateInterest(Conn* c, uint32_t events) {
    if (c->ac == nullptr) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    const int op = c->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(c->loop->epfd_, op, c->fd, &ev) == 0) {
      c->registered = true;
      c->events = events;
    }
  }
  static void AddRead(void* p) {
    auto* c = static_cast<Conn*>(p);
    UpdateInterest(c, c->events | EPOLLIN);
  }
  static void DelRead(void* p) {
    auto* c = static_cast<Conn*>(p);
    UpdateInterest(c, c->events & ~EPOLLIN);
  }
  static void AddWrite(void* p) {
    auto* c = static_cast<Conn*>(p);
    UpdateInterest(c, c->events | EPOLLOUT);
  }
  static void DelWrite(void* p) {
    auto* c = static_cast<Conn*>(p);
    UpdateInterest(c, c->events & ~EPOLLOUT);
  }
  static void Cleanup(void* p) {
    auto* c = static_cast<Conn*>(p);
    if (c->registered) epoll_ctl(c->loop->epfd_, EPOLL_CTL_DEL, c->fd, nullptr);
    c->registered = false;
    c->events = 0;
  }

  static void OnConnect(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    if (status != REDIS_OK) {  // hiredis frees the context after this returns
      c->ac = nullptr;
      c->loop->ScheduleRetry(*c);
      c->loop->Trouble();
      return;
    }
    auto* mac = const_cast<redisAsyncContext*>(ac);
    const std::string& name = c->loop->options_.client_name;
    if (!name.empty()) {
      redisAsyncCommand(mac, nullptr, nullptr, "CLIENT SETNAME %b", name.data(), name.size());
    }
    // Up only once the server says it is a primary: a demoted one is never written to.
    redisAsyncCommand(mac, OnRole, nullptr, "ROLE");
  }

  static void OnRole(redisAsyncContext* ac, void* r, void*) {
    if (r == nullptr) return;  // the context is being freed; its owner retries
    auto* c = static_cast<Conn*>(ac->data);
    if (!IsMasterRole(static_cast<redisReply*>(r))) {
      redisAsyncFree(ac);  // deferred until this callback returns; OnDisconnect backs off
      c->loop->Trouble();
      return;
    }
    c->up = true;
    c->backoff = c->loop->options_.min_backoff;
    absl::MutexLock lock(&c->loop->mu_);
    ++c->loop->connected_;
  }

  static void OnDisconnect(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    c->ac = nullptr;  // freed by hiredis after this returns
    if (c->up) {
      c->up = false;
      {
        absl::MutexLock lock(&c->loop->mu_);
        --c->loop->connected_;
      }
      c->retry_at = SteadyClock::now();  // try again at once; back off if that fails
    } else {
      c->loop->ScheduleRetry(*c);  // dropped before it was up (e.g. not a primary)
    }
    if (!c->loop->stopping_) c->loop->Trouble();
  }

  // Takes a connection out of use at once (its pending calls are answered kUnavailable when
  // hiredis frees it, after the current callback if called from one).
  void Drop(Conn& c) {
    if (c.ac == nullptr) return;
    if (c.up) {
      c.up = false;
      absl::MutexLock lock(&mu_);
      --connected_;
    }
    redisAsyncFree(c.ac);
  }

  void Trouble() {
    if (on_trouble_) on_trouble_();
  }

  static void OnReply(redisAsyncContext* ac, void* r, void* privdata) {
    auto* holder = static_cast<std::shared_ptr<Pending>*>(privdata);
    std::shared_ptr<Pending> p = std::move(*holder);
    delete holder;
    auto* c = static_cast<Conn*>(ac->data);
    if (r == nullptr) {
      Finish(*p, c->loop->stopping_
                     ? absl::CancelledError("redis client is shutting down")
                     : absl::UnavailableError("redis connection lost before the reply"));
      return;
    }
    const auto* reply = static_cast<redisReply*>(r);
    if (NotAPrimaryNow(reply)) {
      Finish(*p, absl::UnavailableError(absl::StrCat(
                     "redis ", c->loop->target_key(),
                     " cannot write now: ", absl::string_view(reply->str, reply->len))));
      // A replica (READONLY) or a server refusing writes: stop using this connection and,
      // with Sentinel, ask where the primary is now.
      if (absl::StartsWith(absl::string_view(reply->str, reply->len), "READONLY")) {
        c->loop->Drop(*c);
      }
      c->loop->Trouble();
      return;
    }
    if (p->expected > 0) {
      p->parts.push_back(Convert(reply));
      if (p->parts.size() < p->expected) return;
      Reply all;
      all.type = Reply::Type::kArray;
      all.elements = std::move(p->parts);
      Finish(*p, std::move(all));
      return;
    }
    Finish(*p, Convert(reply));
  }

  std::string target_key() const { return HostPort{host_, port_}.ToString(); }

  void ScheduleRetry(Conn& c) {
    c.retry_at = SteadyClock::now() + ToSteady(c.backoff);
    c.backoff = std::min(c.backoff * 2, options_.max_backoff);
  }

  void Connect(Conn& c) {
    if (port_ == 0) {  // Sentinel mode, no primary named yet: SetTarget wakes us
      c.retry_at = SteadyClock::now() + ToSteady(options_.max_backoff);
      return;
    }
    redisAsyncContext* ac = redisAsyncConnect(host_.c_str(), port_);
    if (ac == nullptr || ac->err != 0) {
      if (ac != nullptr) redisAsyncFree(ac);
      ScheduleRetry(c);
      return;
    }
    ac->data = &c;
    ac->ev.data = &c;
    ac->ev.addRead = AddRead;
    ac->ev.delRead = DelRead;
    ac->ev.addWrite = AddWrite;
    ac->ev.delWrite = DelWrite;
    ac->ev.cleanup = Cleanup;
    redisAsyncSetConnectCallback(ac, OnConnect);
    redisAsyncSetDisconnectCallback(ac, OnDisconnect);
    c.ac = ac;
    c.fd = ac->c.fd;
    c.connect_deadline = SteadyClock::now() + ToSteady(options_.connect_timeout);
    UpdateInterest(&c, EPOLLIN | EPOLLOUT);  // writable: the connect finished
  }

  Conn* PickConn() {
    for (size_t i = 0; i < conns_.size(); ++i) {
      Conn* c = conns_[(rr_ + i) % conns_.size()].get();
      if (c->up && c->ac != nullptr) {
        rr_ = (rr_ + i + 1) % conns_.size();
        return c;
      }
    }
    return nullptr;
  }

  // Writes a CallThenWait call to `c` and adds it to the group its next WAIT answers.
  void WriteWaitCall(Conn& c, const std::vector<std::string>& args, std::shared_ptr<Pending> p,
                     int replicas, int64_t ms);

  // Writes one command answered to `p` (OnReply); false (and `p` answered) if it cannot.
  bool WriteCommand(Conn& c, const std::vector<std::string>& args,
                    const std::shared_ptr<Pending>& p);

  // Writes the WAIT of `c`'s group after its calls, unless a WAIT is still outstanding.
  void FlushWait(Conn& c);

  // Answers every call of the group that its own reply has not finished already (an error
  // such as READONLY finishes a call at once), then sends the calls held meanwhile, with their
  // own WAIT. Without a reply (the connection is gone), the held calls were never sent.
  static void OnWaitReply(redisAsyncContext*, void* r, void* privdata);

  void Dispatch(Submission s);

  void Run() {
    for (auto& c : conns_) Connect(*c);
    std::vector<epoll_event> events(64);
    while (true) {
      // Calls submitted since the last round.
      std::vector<Submission> batch;
      bool stop;
      std::optional<HostPort> retarget;
      {
        absl::MutexLock lock(&mu_);
        batch.swap(queue_);
        stop = stop_;
        retarget.swap(new_target_);
        if (retarget.has_value()) target_ = *retarget;
      }
      if (retarget.has_value() && !stop && (retarget->host != host_ || retarget->port != port_)) {
        // A new primary: nothing more goes to the old one.
        host_ = retarget->host;
        port_ = retarget->port;
        for (auto& c : conns_) {
          if (c->ac != nullptr) {
            Drop(*c);
            c->ac = nullptr;
          }
          c->backoff = options_.min_backoff;
          c->retry_at = SteadyClock::now();
        }
      }
      if (stop) {
        for (Submission& s : batch) s.done(absl::CancelledError("redis client is shutting down"));
        break;
      }
      for (Submission& s : batch) Dispatch(std::move(s));
      for (auto& c : conns_) FlushWait(*c);
      // Write what was just queued without another trip through epoll.
      for (auto& c : conns_) {
        if (c->ac != nullptr && c->up && (c->events & EPOLLOUT)) redisAsyncHandleWrite(c->ac);
      }

      const int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), NextWaitMs());
      for (int i = 0; i < n; ++i) {
        auto* c = static_cast<Conn*>(events[i].data.ptr);
        if (c == nullptr) {
          uint64_t v;
          [[maybe_unused]] ssize_t r = read(evfd_, &v, sizeof(v));
          continue;
        }
        const uint32_t ev = events[i].events;
        if (c->ac != nullptr && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
          redisAsyncHandleRead(c->ac);
        }
        if (c->ac != nullptr && (ev & EPOLLOUT)) redisAsyncHandleWrite(c->ac);
      }
      const TimePoint now = SteadyClock::now();
      while (!timers_.empty() && (timers_.top().p->finished || timers_.top().at <= now)) {
        std::shared_ptr<Pending> p = timers_.top().p;
        timers_.pop();
        Finish(*p, absl::DeadlineExceededError("no reply from redis within the call's timeout"));
      }
      for (auto& c : conns_) {
        if (c->ac == nullptr && now >= c->retry_at) {
          Connect(*c);
        } else if (c->ac != nullptr && !c->up && now >= c->connect_deadline) {
          // Not connected, or no answer to ROLE yet: OnDisconnect may back off already.
          const TimePoint before = c->retry_at;
          redisAsyncFree(c->ac);
          c->ac = nullptr;
          if (c->retry_at == before) ScheduleRetry(*c);
          Trouble();
        }
      }
    }
    // Shutdown: every call still pending is answered kCancelled.
    stopping_ = true;
    for (auto& c : conns_) {
      if (c->ac != nullptr) redisAsyncFree(c->ac);  // answers its calls with NULL replies
    }
    while (!timers_.empty()) {
      Finish(*timers_.top().p, absl::CancelledError("redis client is shutting down"));
      timers_.pop();
    }
    std::vector<Submission> rest;
    {
      absl::MutexLock lock(&mu_);
      rest.swap(queue_);
    }
    for (Submission& s : rest) s.done(absl::CancelledError("redis client is shutting down"));
  }

  // Milliseconds until the next timer, reconnect or connect deadline (rounded up).
  int NextWaitMs() const {
    TimePoint next = SteadyClock::now() + std::chrono::seconds(1);
    if (!timers_.empty()) next = std::min(next, timers_.top().at);
    for (const auto& c : conns_) {
      if (c->ac == nullptr) next = std::min(next, c->retry_at);
      if (c->ac != nullptr && !c->up) next = std::min(next, c->connect_deadline);
    }
    const auto wait = next - SteadyClock::now();
    if (wait <= SteadyClock::duration::zero()) return 0;
    return static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(wait + std::chrono::microseconds(999))
            .count());
  }

  struct Timer {
    TimePoint at;
    std::shared_ptr<Pending> p;
    bool operator>(const Timer& o) const { return at > o.at; }
  };

  const RedisClientOptions options_;
  // The address connections go to; port 0: none yet (Sentinel). Loop thread only.
  std::string host_;
  int port_;
  std::function<void()> on_trouble_;  // set before Start()
  int epfd_ = -1;
  int evfd_ = -1;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::vector<Submission> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int connected_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<HostPort> new_target_ ABSL_GUARDED_BY(mu_);
  HostPort target_ ABSL_GUARDED_BY(mu_);

  // Loop thread only.
  std::vector<std::unique_ptr<Conn>> conns_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  size_t rr_ = 0;
  bool stopping_ = false;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_LOOP_H_

#include "service/store/redis/redis_client.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <queue>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace quotad {
namespace redis {
namespace {

using SteadyClock = std::chrono::steady_clock;
using TimePoint = SteadyClock::time_point;

SteadyClock::duration ToSteady(absl::Duration d) {
  return std::chrono::duration_cast<SteadyClock::duration>(absl::ToChronoNanoseconds(d));
}

Reply Convert(const redisReply* r) {
  Reply out;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      out.type = Reply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
      out.type = Reply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = Reply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = Reply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = Reply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
      break;
    default:
      out.type = Reply::Type::kNil;
      break;
  }
  return out;
}

// One call in flight. Answered once: by its reply, its timeout or the shutdown, whichever
// comes first (the later ones find `finished`). Touched only on the loop thread.
struct Pending {
  ReplyCallback done;
  bool finished = false;
};

void Finish(Pending& p, absl::StatusOr<Reply> result) {
  if (p.finished) return;
  p.finished = true;
  p.done(std::move(result));
  p.done = nullptr;  // release what the callback captured
}

struct Submission {
  std::vector<std::string> args;
  ReplyCallback done;
  absl::Duration timeout;
};

}  // namespace

std::string Reply::DebugString() const {
  switch (type) {
    case Type::kNil:
      return "(nil)";
    case Type::kInteger:
      return absl::StrCat(integer);
    case Type::kError:
      return absl::StrCat("(error) ", str);
    case Type::kArray:
      return absl::StrCat(
          "[", absl::StrJoin(elements, ", ", [](std::string* o, const Reply& e) {
            o->append(e.DebugString());
          }), "]");
    default:
      return str;
  }
}

// The event loop: owns the hiredis contexts, the epoll set and the thread. Calls cross from
// other threads through `queue_` and an eventfd; everything else is touched by the loop thread
// only.
class RedisClient::Loop {
 public:
  explicit Loop(RedisClientOptions options) : options_(std::move(options)) {}
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

  bool WaitConnected(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    auto up = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return connected_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&up), timeout);
  }

  const RedisClientOptions& options() const { return options_; }

 private:
  // One connection slot: at most one hiredis context at a time, replaced on reconnect.
  struct Conn {
    Loop* loop = nullptr;
    redisAsyncContext* ac = nullptr;  // owned by hiredis once connecting; nullptr when down
    bool up = false;
    int fd = -1;
    bool registered = false;  // fd in the epoll set
    uint32_t events = 0;
    TimePoint retry_at{};           // when down: next attempt
    TimePoint connect_deadline{};   // when connecting
    absl::Duration backoff;
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
      absl::MutexLock lock(&c->loop->mu_);
      --c->loop->connected_;
    }
    c->retry_at = SteadyClock::now();  // try again at once; back off if that fails
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
    Finish(*p, Convert(static_cast<redisReply*>(r)));
  }

  void ScheduleRetry(Conn& c) {
    c.retry_at = SteadyClock::now() + ToSteady(c.backoff);
    c.backoff = std::min(c.backoff * 2, options_.max_backoff);
  }

  void Connect(Conn& c) {
    redisAsyncContext* ac = redisAsyncConnect(options_.host.c_str(), options_.port);
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

  void Dispatch(Submission s) {
    Conn* c = PickConn();
    if (c == nullptr) {
      s.done(absl::UnavailableError("redis is unreachable"));
      return;
    }
    auto p = std::make_shared<Pending>();
    p->done = std::move(s.done);
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(s.args.size());
    lens.reserve(s.args.size());
    for (const std::string& a : s.args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* holder = new std::shared_ptr<Pending>(p);
    if (redisAsyncCommandArgv(c->ac, OnReply, holder, static_cast<int>(argv.size()), argv.data(),
                              lens.data()) != REDIS_OK) {
      delete holder;
      Finish(*p, absl::UnavailableError("redis connection is closing"));
      return;
    }
    const absl::Duration timeout =
        s.timeout > absl::ZeroDuration() ? s.timeout : options_.call_timeout;
    timers_.push({SteadyClock::now() + ToSteady(timeout), std::move(p)});
  }

  void Run() {
    for (auto& c : conns_) Connect(*c);
    std::vector<epoll_event> events(64);
    while (true) {
      // Calls submitted since the last round.
      std::vector<Submission> batch;
      bool stop;
      {
        absl::MutexLock lock(&mu_);
        batch.swap(queue_);
        stop = stop_;
      }
      if (stop) {
        for (Submission& s : batch) s.done(absl::CancelledError("redis client is shutting down"));
        break;
      }
      for (Submission& s : batch) Dispatch(std::move(s));
      // Write what was just queued without another trip through epoll.
      for (auto& c : conns_) {
        if (c->ac != nullptr && c->up && (c->events & EPOLLOUT)) redisAsyncHandleWrite(c->ac);
      }

      const int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()),
                               NextWaitMs());
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
          redisAsyncFree(c->ac);  // not connected: no call is queued, no callback runs
          c->ac = nullptr;
          ScheduleRetry(*c);
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
  int epfd_ = -1;
  int evfd_ = -1;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::vector<Submission> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int connected_ ABSL_GUARDED_BY(mu_) = 0;

  // Loop thread only.
  std::vector<std::unique_ptr<Conn>> conns_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<Timer>> timers_;
  size_t rr_ = 0;
  bool stopping_ = false;
};

absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Create(RedisClientOptions options) {
  if (options.port <= 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad redis port ", options.port));
  }
  auto loop = std::make_unique<Loop>(std::move(options));
  absl::Status s = loop->Start();
  if (!s.ok()) return s;
  return std::unique_ptr<RedisClient>(new RedisClient(std::move(loop)));
}

RedisClient::RedisClient(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

RedisClient::~RedisClient() { loop_->Stop(); }

void RedisClient::Call(std::vector<std::string> args, ReplyCallback done,
                       absl::Duration timeout) {
  loop_->Submit(Submission{std::move(args), std::move(done), timeout});
}

absl::StatusOr<Reply> RedisClient::CallSync(std::vector<std::string> args,
                                            absl::Duration timeout) {
  absl::Notification ready;
  absl::StatusOr<Reply> result;
  Call(
      std::move(args),
      [&](absl::StatusOr<Reply> r) {
        result = std::move(r);
        ready.Notify();
      },
      timeout);
  ready.WaitForNotification();  // every call is answered: reply, timeout or shutdown
  return result;
}

int RedisClient::connected() const { return loop_->connected(); }

bool RedisClient::WaitConnected(absl::Duration timeout) const {
  return loop_->WaitConnected(timeout);
}

}  // namespace redis
}  // namespace quotad

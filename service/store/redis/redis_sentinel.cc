#include "service/store/redis/redis_sentinel.h"

#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace quotad {
namespace redis {
namespace {

timeval Timeval(absl::Duration d) { return absl::ToTimeval(std::max(d, absl::Milliseconds(1))); }

// A blocking connection with `timeout` for the connect and every reply; nullptr on failure
// (`error` says why).
redisContext* Connect(const HostPort& at, absl::Duration timeout, std::string* error) {
  redisContext* c = redisConnectWithTimeout(at.host.c_str(), at.port, Timeval(timeout));
  if (c == nullptr || c->err != 0) {
    *error = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return nullptr;
  }
  redisSetTimeout(c, Timeval(timeout));
  return c;
}

}  // namespace

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);  // IPv6
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<HostPort> AskSentinel(const HostPort& sentinel, absl::string_view master_name,
                                     absl::Duration timeout, int64_t* epoch) {
  if (epoch != nullptr) *epoch = -1;
  std::string error;
  redisContext* c = Connect(sentinel, timeout, &error);
  if (c == nullptr) {
    return absl::UnavailableError(absl::StrCat("sentinel ", sentinel.ToString(), ": ", error));
  }
  const std::string name(master_name);
  redisAppendCommand(c, "SENTINEL get-master-addr-by-name %b", name.data(), name.size());
  if (epoch != nullptr) redisAppendCommand(c, "SENTINEL MASTER %b", name.data(), name.size());
  redisReply* r = nullptr;
  if (redisGetReply(c, reinterpret_cast<void**>(&r)) != REDIS_OK) r = nullptr;
  absl::StatusOr<HostPort> out = absl::UnavailableError(
      absl::StrCat("sentinel ", sentinel.ToString(), ": ", r == nullptr ? c->errstr : "bad reply"));
  if (r != nullptr) {
    HostPort hp;
    if (r->type == REDIS_REPLY_NIL) {
      out = absl::NotFoundError(absl::StrCat("sentinel ", sentinel.ToString(),
                                             " knows no master named '", master_name, "'"));
    } else if (r->type == REDIS_REPLY_ERROR) {
      out = absl::UnavailableError(
          absl::StrCat("sentinel ", sentinel.ToString(), ": ", std::string(r->str, r->len)));
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[0]->type == REDIS_REPLY_STRING &&
               r->element[1]->type == REDIS_REPLY_STRING &&
               absl::SimpleAtoi(absl::string_view(r->element[1]->str, r->element[1]->len),
                                &hp.port)) {
      hp.host.assign(r->element[0]->str, r->element[0]->len);
      out = hp;
    }
    freeReplyObject(r);
    // SENTINEL MASTER: field/value pairs, among them config-epoch.
    redisReply* m = nullptr;
    if (epoch != nullptr && redisGetReply(c, reinterpret_cast<void**>(&m)) == REDIS_OK &&
        m != nullptr) {
      if (m->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < m->elements; i += 2) {
          const redisReply* k = m->element[i];
          const redisReply* v = m->element[i + 1];
          if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
              absl::string_view(k->str, k->len) == "config-epoch") {
            int64_t e = -1;
            if (absl::SimpleAtoi(absl::string_view(v->str, v->len), &e)) *epoch = e;
          }
        }
      }
      freeReplyObject(m);
    }
  }
  redisFree(c);
  return out;
}

SentinelWatcher::SentinelWatcher(SentinelOptions options,
                                 std::function<void(const HostPort&)> on_primary,
                                 std::function<bool()> healthy)
    : options_(std::move(options)),
      on_primary_(std::move(on_primary)),
      healthy_(std::move(healthy)) {}

SentinelWatcher::~SentinelWatcher() { Stop(); }

void SentinelWatcher::Start() {
  ask_thread_ = std::thread([this] { AskLoop(); });
  subscribe_thread_ = std::thread([this] { SubscribeLoop(); });
}

void SentinelWatcher::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (subscribed_fd_ >= 0) shutdown(subscribed_fd_, SHUT_RDWR);  // ends the blocking read
  }
  if (ask_thread_.joinable()) ask_thread_.join();
  if (subscribe_thread_.joinable()) subscribe_thread_.join();
}

void SentinelWatcher::Trigger(bool urgent) {
  absl::MutexLock lock(&mu_);
  triggered_ = true;
  urgent_ = urgent_ || urgent;
}

HostPort SentinelWatcher::primary() const {
  absl::MutexLock lock(&mu_);
  return primary_;
}

int SentinelWatcher::switches() const {
  absl::MutexLock lock(&mu_);
  return switches_;
}

absl::StatusOr<HostPort> SentinelWatcher::AskAll() {
  // Every sentinel, not the first that answers: one that missed a failover (down, cut off, just
  // restarted from its old sentinel.conf) names the old primary, which may well be up and still
  // answer ROLE master (restarted before the others made it a replica): following it would put
  // quotad on the losing side of a split brain. The newest configuration wins.
  absl::Status last = absl::UnavailableError("no sentinel given");
  std::optional<HostPort> best;
  int64_t best_epoch = 0;
  for (const HostPort& s : options_.sentinels) {
    int64_t epoch = -1;
    absl::StatusOr<HostPort> hp = AskSentinel(s, options_.master_name, options_.timeout, &epoch);
    if (!hp.ok()) {
      last = hp.status();
      continue;
    }
    if (!best.has_value() || epoch > best_epoch) {
      best = *hp;
      best_epoch = epoch;
    }
  }
  if (best.has_value()) return *best;
  return last;
}

void SentinelWatcher::AskLoop() {
  absl::Duration backoff = options_.min_backoff;
  bool fruitless = false;
  auto urgent = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || urgent_; };
  auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || triggered_; };
  while (true) {
    // Healthy: ask again only when triggered (or every few seconds, a safety net). Without a
    // primary: every back-off, which an asking that found nothing new doubles.
    const bool healthy = healthy_();
    {
      absl::MutexLock lock(&mu_);
      if (fruitless) mu_.AwaitWithTimeout(absl::Condition(&urgent), backoff);
      mu_.AwaitWithTimeout(absl::Condition(&woken),
                           healthy ? absl::Seconds(5) : absl::ZeroDuration());
      if (stop_) return;
      triggered_ = false;
      urgent_ = false;
    }
    absl::StatusOr<HostPort> hp = AskAll();
    bool changed = false;
    if (hp.ok()) {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      if (*hp != primary_) {
        changed = true;
        if (primary_.port != 0) ++switches_;
        primary_ = *hp;
      }
    }
    if (changed) {
      on_primary_(*hp);
      backoff = options_.min_backoff;
      fruitless = false;
    } else {
      if (fruitless) backoff = std::min(backoff * 2, options_.max_backoff);
      fruitless = true;
    }
  }
}

void SentinelWatcher::SubscribeLoop() {
  absl::Duration backoff = options_.min_backoff;
  auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
  for (size_t next = 0;; ++next) {
    const HostPort& at = options_.sentinels[next % options_.sentinels.size()];
    std::string error;
    redisContext* c = Connect(at, options_.timeout, &error);
    if (c != nullptr) {
      {
        absl::MutexLock lock(&mu_);
        if (stop_) {
          redisFree(c);
          return;
        }
        subscribed_fd_ = c->fd;
      }
      auto* r = static_cast<redisReply*>(redisCommand(c, "SUBSCRIBE +switch-master"));
      const bool subscribed = r != nullptr && r->type == REDIS_REPLY_ARRAY;
      if (r != nullptr) freeReplyObject(r);
      if (subscribed) {
        redisSetTimeout(c, timeval{0, 0});  // wait for messages as long as it takes
        backoff = options_.min_backoff;
        Trigger();  // a switch may have happened while not subscribed
        void* msg = nullptr;
        while (redisGetReply(c, &msg) == REDIS_OK) {
          freeReplyObject(msg);
          Trigger(/*urgent=*/true);
        }
      }
      {
        absl::MutexLock lock(&mu_);
        subscribed_fd_ = -1;
      }
      redisFree(c);
    }
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopped), backoff)) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace redis
}  // namespace quotad

#include "service/store/redis/redis_subscriber.h"

#include <hiredis/hiredis.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>

#include "absl/time/time.h"

namespace quotad {
namespace redis {
namespace {

constexpr absl::Duration kPoll = absl::Milliseconds(200);

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

absl::string_view Str(const redisReply* r) {
  if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) {
    return {};
  }
  return absl::string_view(r->str, r->len);
}

}  // namespace

RedisSubscriber::RedisSubscriber(
    std::string pattern, absl::AnyInvocable<HostPort() const> address,
    absl::AnyInvocable<void(absl::string_view, absl::string_view)> on_message,
    absl::AnyInvocable<void()> on_connect)
    : pattern_(std::move(pattern)),
      address_(std::move(address)),
      on_message_(std::move(on_message)),
      on_connect_(std::move(on_connect)) {
  thread_ = std::thread([this] { Run(); });
}

RedisSubscriber::~RedisSubscriber() {
  stop_.Notify();
  thread_.join();
}

void RedisSubscriber::Run() {
  absl::Duration backoff = absl::Milliseconds(10);
  while (!stop_.HasBeenNotified()) {
    const HostPort at = address_();
    Context ctx;
    if (at.port > 0) {
      const struct timeval tv = absl::ToTimeval(absl::Seconds(1));
      ctx.reset(redisConnectWithTimeout(at.host.c_str(), at.port, tv));
    }
    bool ok = ctx != nullptr && ctx->err == 0 &&
              redisSetTimeout(ctx.get(), absl::ToTimeval(absl::Seconds(1))) == REDIS_OK;
    if (ok) {
      ReplyPtr r(static_cast<redisReply*>(
          redisCommand(ctx.get(), "PSUBSCRIBE %b", pattern_.data(), pattern_.size())));
      ok = r != nullptr && r->type == REDIS_REPLY_ARRAY;
    }
    if (!ok) {
      stop_.WaitForNotificationWithTimeout(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(1));
      continue;
    }
    backoff = absl::Milliseconds(10);
    subscribed_.store(true, std::memory_order_release);
    on_connect_();
    while (!stop_.HasBeenNotified()) {
      struct pollfd p = {ctx->fd, POLLIN, 0};
      const int n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kPoll)));
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) {
        if (!(address_() == at)) break;  // the primary moved (Sentinel): follow it
        continue;
      }
      if (n < 0 || redisBufferRead(ctx.get()) != REDIS_OK) break;
      bool broken = false;
      while (true) {
        void* raw = nullptr;
        if (redisGetReplyFromReader(ctx.get(), &raw) != REDIS_OK) {
          broken = true;
          break;
        }
        if (raw == nullptr) break;
        ReplyPtr r(static_cast<redisReply*>(raw));
        // ["pmessage", pattern, channel, message]
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
            Str(r->element[0]) == "pmessage") {
          messages_.fetch_add(1, std::memory_order_relaxed);
          on_message_(Str(r->element[2]), Str(r->element[3]));
        }
      }
      if (broken) break;
    }
    subscribed_.store(false, std::memory_order_release);
  }
}

}  // namespace redis
}  // namespace quotad

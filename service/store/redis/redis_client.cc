#include "service/store/redis/redis_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "service/store/redis/redis_client_loop.h"

namespace quotad {
namespace redis {

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

bool NotAPrimaryNow(const redisReply* r) {
  if (r->type != REDIS_REPLY_ERROR) return false;
  const absl::string_view e(r->str, r->len);
  for (absl::string_view prefix : {"READONLY", "LOADING", "NOREPLICAS", "MASTERDOWN"}) {
    if (absl::StartsWith(e, prefix)) return true;
  }
  return false;
}

bool IsMasterRole(const redisReply* r) {
  return r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
         (r->element[0]->type == REDIS_REPLY_STRING || r->element[0]->type == REDIS_REPLY_STATUS) &&
         absl::string_view(r->element[0]->str, r->element[0]->len) == "master";
}


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


absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Create(RedisClientOptions options) {
  const bool sentinel = !options.sentinels.empty();
  if (!sentinel && (options.port <= 0 || options.port > 65535)) {
    return absl::InvalidArgumentError(absl::StrCat("bad redis port ", options.port));
  }
  if (sentinel && options.master_name.empty()) {
    return absl::InvalidArgumentError("Sentinel mode needs the master's name");
  }
  auto loop = std::make_unique<Loop>(options);
  std::unique_ptr<SentinelWatcher> watcher;
  if (sentinel) {
    Loop* l = loop.get();
    SentinelOptions so;
    so.sentinels = options.sentinels;
    so.master_name = options.master_name;
    so.timeout = std::min(options.connect_timeout, absl::Milliseconds(500));
    so.min_backoff = options.min_backoff;
    so.max_backoff = options.max_backoff;
    watcher = std::make_unique<SentinelWatcher>(
        std::move(so), [l](const HostPort& hp) { l->SetTarget(hp); },
        [l] { return l->connected() > 0; });
    SentinelWatcher* w = watcher.get();
    loop->set_on_trouble([w] { w->Trigger(); });
  } else {
    loop->SetTarget({options.host, options.port});
  }
  absl::Status s = loop->Start();
  if (!s.ok()) return s;
  std::unique_ptr<RedisClient> client(new RedisClient(std::move(loop)));
  client->watcher_ = std::move(watcher);
  if (client->watcher_ != nullptr) client->watcher_->Start();
  return client;
}

RedisClient::RedisClient(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

RedisClient::~RedisClient() {
  if (watcher_ != nullptr) watcher_->Stop();  // no SetTarget after this
  loop_->Stop();
}

void RedisClient::Call(std::vector<std::string> args, ReplyCallback done,
                       absl::Duration timeout) {
  Submission s;
  s.commands.push_back(std::move(args));
  s.done = std::move(done);
  s.timeout = timeout;
  loop_->Submit(std::move(s));
}

void RedisClient::CallPipeline(std::vector<std::vector<std::string>> commands,
                               ReplyCallback done, absl::Duration timeout) {
  if (commands.empty()) {
    done(absl::InvalidArgumentError("an empty pipeline"));
    return;
  }
  Submission s;
  s.commands = std::move(commands);
  s.pipeline = true;
  s.done = std::move(done);
  s.timeout = timeout;
  loop_->Submit(std::move(s));
}

void RedisClient::CallThenWait(std::vector<std::string> args, int replicas,
                               absl::Duration wait_timeout, ReplyCallback done,
                               absl::Duration timeout) {
  Submission s;
  s.commands.push_back(std::move(args));
  s.wait_replicas = std::max(1, replicas);
  // Whole milliseconds, rounded up, at least 1 (WAIT 0 would wait for ever).
  s.wait_ms = std::max<int64_t>(
      1, absl::ToInt64Milliseconds(absl::Ceil(wait_timeout, absl::Milliseconds(1))));
  s.done = std::move(done);
  s.timeout = timeout;
  loop_->Submit(std::move(s));
}

HostPort RedisClient::primary() const { return loop_->target(); }

int RedisClient::failovers() const {
  return watcher_ != nullptr ? watcher_->switches() : 0;
}

const RedisClientOptions& RedisClient::options() const { return loop_->options(); }

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


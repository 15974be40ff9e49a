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

// The loop's call writing (redis_client_loop.h), out of line.

void RedisClient::Loop::WriteWaitCall(Conn& c, const std::vector<std::string>& args,
                                      std::shared_ptr<Pending> p, int replicas, int64_t ms) {
  if (c.wait_group == nullptr) {
    c.wait_group = std::make_unique<WaitGroup>();
    c.wait_group->conn = &c;
    c.wait_group->replicas = replicas;
    c.wait_group->ms = ms;
  }
  if (!WriteCommand(c, args, p)) return;
  c.wait_group->calls.push_back(std::move(p));
}

bool RedisClient::Loop::WriteCommand(Conn& c, const std::vector<std::string>& args,
                                     const std::shared_ptr<Pending>& p) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* holder = new std::shared_ptr<Pending>(p);
  if (c.ac == nullptr || redisAsyncCommandArgv(c.ac, OnReply, holder, static_cast<int>(argv.size()),
                                               argv.data(), lens.data()) != REDIS_OK) {
    delete holder;
    Finish(*p, absl::UnavailableError("redis connection is closing"));
    return false;
  }
  return true;
}

void RedisClient::Loop::FlushWait(Conn& c) {
  if (c.wait_group == nullptr || c.wait_outstanding) return;
  WaitGroup* g = c.wait_group.release();
  if (c.ac == nullptr || redisAsyncCommand(c.ac, OnWaitReply, g, "WAIT %d %lld", g->replicas,
                                           static_cast<long long>(g->ms)) != REDIS_OK) {
    OnWaitReply(nullptr, nullptr, g);
    return;
  }
  c.wait_outstanding = true;
}

void RedisClient::Loop::OnWaitReply(redisAsyncContext*, void* r, void* privdata) {
  std::unique_ptr<WaitGroup> g(static_cast<WaitGroup*>(privdata));
  Conn& c = *g->conn;
  Loop& loop = *c.loop;
  c.wait_outstanding = false;
  auto lost = [&](absl::string_view what) {
    return loop.stopping_ ? absl::CancelledError("redis client is shutting down")
                          : absl::UnavailableError(what);
  };
  for (std::shared_ptr<Pending>& p : g->calls) {
    if (p->finished) continue;
    if (r == nullptr || p->parts.size() != 1) {
      Finish(*p, lost("redis connection lost before WAIT's reply"));
      continue;
    }
    Reply all;
    all.type = Reply::Type::kArray;
    all.elements = std::move(p->parts);
    all.elements.push_back(Convert(static_cast<redisReply*>(r)));
    Finish(*p, std::move(all));
  }
  std::vector<Held> held;
  held.swap(c.held);
  size_t i = 0;
  for (; r != nullptr && i < held.size(); ++i) {
    Held& h = held[i];
    if (h.p->finished) continue;  // timed out while held
    if (c.wait_group != nullptr &&
        (c.wait_group->replicas != h.replicas || c.wait_group->ms != h.ms)) {
      break;  // another WAIT setting: the group after this one
    }
    loop.WriteWaitCall(c, h.args, h.p, h.replicas, h.ms);
  }
  if (r == nullptr) {
    for (Held& h : held) Finish(*h.p, lost("redis connection lost; the call was not sent"));
    return;
  }
  loop.FlushWait(c);
  for (; i < held.size(); ++i) c.held.push_back(std::move(held[i]));
}

void RedisClient::Loop::Dispatch(Submission s) {
  Conn* c = PickConn();
  if (c == nullptr) {
    s.done(absl::UnavailableError(port_ == 0 ? "no redis primary is known (Sentinel)"
                                             : "redis is unreachable"));
    return;
  }
  auto p = std::make_shared<Pending>();
  p->done = std::move(s.done);
  const absl::Duration timeout =
      s.timeout > absl::ZeroDuration() ? s.timeout : options_.call_timeout;
  timers_.push({SteadyClock::now() + ToSteady(timeout), p});
  if (s.wait_replicas > 0) {
    p->expected = 2;  // the command's reply, then the group's WAIT (OnWaitReply)
    const bool other_setting =
        c->wait_group != nullptr &&
        (c->wait_group->replicas != s.wait_replicas || c->wait_group->ms != s.wait_ms);
    if (c->wait_outstanding || other_setting) {
      FlushWait(*c);
      c->held.push_back({std::move(s.commands[0]), p, s.wait_replicas, s.wait_ms});
    } else {
      WriteWaitCall(*c, s.commands[0], p, s.wait_replicas, s.wait_ms);
    }
    return;
  }
  if (s.pipeline) p->expected = s.commands.size();
  for (const std::vector<std::string>& args : s.commands) {
    // On failure the commands already written are answered to a finished call.
    if (!WriteCommand(*c, args, p)) return;
  }
}

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

RedisClient::RedisClient() = default;

RedisClient::RedisClient(std::unique_ptr<Loop> loop) : loop_(std::move(loop)) {}

RedisClient::~RedisClient() {
  if (watcher_ != nullptr) watcher_->Stop();  // no SetTarget after this
  if (loop_ != nullptr) loop_->Stop();
}

void RedisClient::Call(std::vector<std::string> args, ReplyCallback done,
                       absl::Duration timeout) {
  Submission s;
  s.commands.push_back(std::move(args));
  s.done = std::move(done);
  s.timeout = timeout;
  loop_->Submit(std::move(s));
}

void RedisClient::CallPipeline(std::vector<std::vector<std::string>> commands, ReplyCallback done,
                               absl::Duration timeout) {
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

int RedisClient::failovers() const { return watcher_ != nullptr ? watcher_->switches() : 0; }

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

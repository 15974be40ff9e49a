// Decisions per second on one redis-server (started here, loopback): quotad's acquire function
// against a plain Lua fixed-window counter (INCRBY + EXPIRE, what envoyproxy/ratelimit does per
// descriptor), with the same client, connections and calls in flight, side by side.
//
//   redis_bench [--seconds=S] [--inflight=N] [--connections=C] [--aof] [--replica] [--breakdown]
//
// Every quotad call is a grant (capacities are out of reach), so each one writes its counters
// and a lease, as in production; the plain script writes its one counter. --replica starts one
// replica of the server and adds the cases with WAIT 1 (--redis_wait_replicas=1): FCALL then
// WAIT pipelined on one connection, one WAIT for the calls written together (as quotad sends
// them, RedisClient::CallThenWait), and one WAIT after every call for comparison. The "per
// call" cases send that many Acquires of one credential in one FCALL (quotad_acquire_many, as
// a shared quotad sends an AcquireBatch): decisions/s counts every Acquire.
//
// --breakdown adds where redis-server's time goes in one quotad_acquire of a calendar minute:
// scripts sent with the very arguments of that call (EVALSHA instead of FCALL), each doing one
// more of the Redis commands quotad_acquire runs (TIME, the state's HMGET, the wait queue's
// EXISTS, the state's HSET, the lease record's SET); what is left of quotad_acquire's time
// after the last is its Lua (arguments, rolling, fits, packing).

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "service/core/limits.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/redis_harness.h"

namespace quotad {
namespace redis {
namespace {

constexpr char kPlainScript[] =
    "local c = redis.call('INCRBY', KEYS[1], ARGV[1]) "
    "if c == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end "
    "if c > tonumber(ARGV[3]) then return 0 end return 1";

// --breakdown: each script runs the commands of the ones before it and one more, on
// quotad_acquire's keys (KEYS[1] the lease record, KEYS[2] the credential's hash) and arguments
// (ARGV[10] the counter's name, ARGV[9] the feature), as quotad_acquire runs them.
constexpr const char* kBreakdown[][2] = {
    {"  EVALSHA, its arguments, return 1", "return 1"},
    {"  + TIME", "local t = redis.call('TIME') return 1"},
    {"  + HMGET of the state (6 fields)",
     "local t = redis.call('TIME') "
     "local v = redis.call('HMGET', KEYS[2], '~x', ARGV[10], '~k:' .. ARGV[10], "
     "'~s:' .. ARGV[10], '!' .. ARGV[9], '~o') return 1"},
    {"  + EXISTS of the wait queue",
     "local t = redis.call('TIME') "
     "local v = redis.call('HMGET', KEYS[2], '~x', ARGV[10], '~k:' .. ARGV[10], "
     "'~s:' .. ARGV[10], '!' .. ARGV[9], '~o') "
     "redis.call('EXISTS', KEYS[2] .. 'wx') return 1"},
    {"  + HSET of the counter's state",
     "local t = redis.call('TIME') "
     "local v = redis.call('HMGET', KEYS[2], '~x', ARGV[10], '~k:' .. ARGV[10], "
     "'~s:' .. ARGV[10], '!' .. ARGV[9], '~o') "
     "redis.call('EXISTS', KEYS[2] .. 'wx') "
     "redis.call('HSET', KEYS[2], ARGV[10], struct.pack('ddddddd', 1, 2, 3, 4, 5, 6, 7)) "
     "return 1"},
    {"  + SET of the lease record (PXAT)",
     "local t = redis.call('TIME') "
     "local v = redis.call('HMGET', KEYS[2], '~x', ARGV[10], '~k:' .. ARGV[10], "
     "'~s:' .. ARGV[10], '!' .. ARGV[9], '~o') "
     "redis.call('EXISTS', KEYS[2] .. 'wx') "
     "redis.call('HSET', KEYS[2], ARGV[10], struct.pack('ddddddd', 1, 2, 3, 4, 5, 6, 7)) "
     "redis.call('SET', KEYS[1], struct.pack('ddddd', 1, 2, 3, 4, 5), 'PXAT', "
     "tonumber(t[1]) * 1000 + 60000) return 1"},
};

struct Result {
  int64_t calls = 0;
  int64_t granted = 0;
  int64_t errors = 0;
  int64_t unacked = 0;  // WAIT: grants fewer replicas acknowledged than asked for
  double seconds = 0;
};

// Keeps `inflight` calls going for `duration`; make_args(i) builds call i. With `wait`, each
// call is followed by that WAIT on the same connection.
template <typename MakeArgs, typename IsGrant>
Result Run(RedisClient& client, int inflight, absl::Duration duration, MakeArgs make_args,
           IsGrant is_grant, const WaitPolicy& wait = {}, bool per_call_wait = false) {
  std::atomic<int64_t> next{0}, done{0}, granted{0}, errors{0}, unacked{0};
  std::atomic<int> active{inflight};
  absl::Notification finished;
  const absl::Time start = absl::Now();
  const absl::Time stop = start + duration;
  std::function<void()> issue = [&]() {
    if (absl::Now() >= stop) {
      if (active.fetch_sub(1) == 1) finished.Notify();
      return;
    }
    const int64_t i = next.fetch_add(1);
    auto answered = [&](absl::StatusOr<Reply> r) {
      done.fetch_add(1);
      if (r.ok() && wait.replicas > 0) {
        // [FCALL's reply, WAIT's count]
        if (r->elements.size() != 2) {
          r = absl::InternalError("bad pipeline reply");
        } else {
          if (r->elements[1].integer < wait.replicas) unacked.fetch_add(1);
          r = Reply(r->elements[0]);
        }
      }
      if (!r.ok() || r->is_error()) {
        errors.fetch_add(1);
      } else if (is_grant(*r)) {
        granted.fetch_add(1);
      }
      issue();
    };
    if (wait.replicas > 0 && per_call_wait) {
      client.CallPipeline({make_args(i), WaitCommand(wait)}, std::move(answered));
    } else if (wait.replicas > 0) {
      client.CallThenWait(make_args(i), wait.replicas, wait.timeout, std::move(answered));
    } else {
      client.Call(make_args(i), std::move(answered));
    }
  };
  for (int i = 0; i < inflight; ++i) issue();
  finished.WaitForNotification();
  Result res;
  res.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  res.calls = done.load();
  res.granted = granted.load();
  res.errors = errors.load();
  res.unacked = unacked.load();
  return res;
}

bool FirstIsOne(const Reply& r) {
  if (r.type == Reply::Type::kInteger) return r.integer == 1;
  return r.type == Reply::Type::kArray && !r.elements.empty() && r.elements[0].integer == 1;
}

int Main(int argc, char** argv) {
  double seconds = 3;
  int inflight = 128, connections = 2;
  bool aof = false, replica = false, breakdown = false;
  for (int i = 1; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--seconds=")) {
      (void)absl::SimpleAtod(a, &seconds);
    } else if (absl::ConsumePrefix(&a, "--inflight=")) {
      (void)absl::SimpleAtoi(a, &inflight);
    } else if (absl::ConsumePrefix(&a, "--connections=")) {
      (void)absl::SimpleAtoi(a, &connections);
    } else if (a == "--aof") {
      aof = true;
    } else if (a == "--replica") {
      replica = true;
    } else if (a == "--breakdown") {
      breakdown = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--seconds=S] [--inflight=N] [--connections=C] [--aof] "
                   "[--replica] [--breakdown]\n",
                   argv[0]);
      return 2;
    }
  }
  testing::RedisServerOptions so;
  so.appendonly = aof;
  absl::StatusOr<std::unique_ptr<testing::RedisServer>> server =
      testing::RedisServer::Start(so);
  if (!server.ok()) {
    std::fprintf(stderr, "redis-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<testing::RedisServer> replica_server;
  if (replica) {
    testing::RedisServerOptions ro = so;
    ro.extra_args = {"--replicaof", "127.0.0.1", absl::StrCat((*server)->port())};
    absl::StatusOr<std::unique_ptr<testing::RedisServer>> r = testing::RedisServer::Start(ro);
    if (!r.ok()) {
      std::fprintf(stderr, "replica: %s\n", r.status().ToString().c_str());
      return 1;
    }
    replica_server = *std::move(r);
    // Bounded: the replica's first sync of an empty server takes milliseconds.
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (true) {
      absl::StatusOr<std::string> info = replica_server->Command({"INFO", "replication"});
      if (info.ok() && absl::StrContains(*info, "master_link_status:up")) break;
      if (absl::Now() > give_up) {
        std::fprintf(stderr, "the replica did not sync\n");
        return 1;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
  }
  absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Create(
      {.port = (*server)->port(), .connections = connections, .call_timeout = absl::Seconds(10)});
  if (!client.ok() || !(*client)->WaitConnected(absl::Seconds(5))) {
    std::fprintf(stderr, "cannot connect\n");
    return 1;
  }
  RedisFunctions fn(client->get(), [] { return absl::Now(); });
  if (absl::StatusOr<int> v = fn.EnsureLoaded(); !v.ok()) {
    std::fprintf(stderr, "load: %s\n", v.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<Reply> sha = (*client)->CallSync({"SCRIPT", "LOAD", kPlainScript});
  if (!sha.ok() || sha->is_error()) {
    std::fprintf(stderr, "script load failed\n");
    return 1;
  }
  const absl::Duration duration = absl::Seconds(seconds);
  constexpr int kCredentials = 100;  // descriptors / credentials the calls spread over

  auto limit = [](LimitKind kind, CalendarUnit unit = CalendarUnit::kNone) {
    LimitSpec s;
    s.name = "l";
    s.kind = kind;
    s.capacity = kMaxCapacity;
    s.period = absl::Minutes(1);
    s.unit = unit;
    if (kind == LimitKind::kTokenBucket) s.rate = kMaxCapacity;
    return s;
  };
  const Rule minute(limit(LimitKind::kCalendar, CalendarUnit::kMinute), "f.minute");
  const Rule sliding(limit(LimitKind::kSliding), "f.sliding");
  const Rule bucket(limit(LimitKind::kTokenBucket), "f.bucket");
  const Rule slots(limit(LimitKind::kConcurrency), "f.slots");

  struct Case {
    const char* name;
    std::vector<CounterRef> counters;  // empty: the plain script
    bool keep_lease = true;
    int wait = 0;  // WAIT this many replicas after the call (one WAIT per batch, as quotad)
    bool per_call_wait = false;  // one WAIT after every call instead
    int batch = 1;  // > 1: this many Acquires of one credential per FCALL (quotad_acquire_many)
    std::string script;  // --breakdown: this script (SHA), with the first case's arguments
  };
  std::vector<Case> cases = {
      {"plain Lua fixed window (INCRBY+EXPIRE)", {}},
      {"quotad_acquire: 1 calendar minute", {{"f.minute", &minute}}},
      {"  same, no lease record (keep_lease=false)", {{"f.minute", &minute}}, false},
      {"  same, 16 per call (quotad_acquire_many)", {{"f.minute", &minute}}, true, 0, false, 16},
      {"  same, 64 per call (quotad_acquire_many)", {{"f.minute", &minute}}, true, 0, false, 64},
      {"quotad_acquire: calendar+sliding+bucket+slots",
       {{"f.minute", &minute},
        {"f.sliding", &sliding},
        {"f.bucket", &bucket},
        {"f.slots", &slots}}},
      {"quotad_acquire: calendar+sliding+bucket",
       {{"f.minute", &minute}, {"f.sliding", &sliding}, {"f.bucket", &bucket}}},
  };
  if (replica) {
    // Next to their cases without WAIT.
    cases.insert(cases.begin() + 2,
                 {"  same, WAIT 1 after every call", {{"f.minute", &minute}}, true, 1, true});
    cases.insert(cases.begin() + 2,
                 {"  same, WAIT 1 (one per batch, as quotad)", {{"f.minute", &minute}}, true, 1});
    cases.insert(cases.begin() + 1, {"  same, WAIT 1 after every call", {}, true, 1, true});
    cases.insert(cases.begin() + 1, {"  same, WAIT 1 (one per batch)", {}, true, 1});
  }
  if (breakdown) {
    // After quotad_acquire's case, with its counters.
    auto at = std::find_if(cases.begin(), cases.end(), [](const Case& c) {
      return absl::StartsWith(c.name, "quotad_acquire: 1 calendar minute");
    });
    std::vector<Case> parts;
    for (const auto& [name, body] : kBreakdown) {
      absl::StatusOr<Reply> loaded = (*client)->CallSync({"SCRIPT", "LOAD", body});
      if (!loaded.ok() || loaded->is_error()) {
        std::fprintf(stderr, "script load failed: %s\n", name);
        return 1;
      }
      parts.push_back({name, {{"f.minute", &minute}}});
      parts.back().script = loaded->str;
    }
    cases.insert(at + 1, parts.begin(), parts.end());
  }
  std::printf(
      "redis-server %s%s, %d connection(s), %d calls in flight, %.1f s per case, "
      "%d credentials\n",
      aof ? "appendonly yes appendfsync always" : "in memory (no AOF)",
      replica ? ", one replica" : "", connections, inflight, seconds, kCredentials);
  std::printf("%-48s %12s %10s %14s %8s\n", "case", "decisions/s", "x plain", "server us/dec.",
              "errors");
  double plain_rate = 0;
  for (const Case& c : cases) {
    (void)(*client)->CallSync({"FLUSHALL"});
    (void)(*client)->CallSync({"CONFIG", "RESETSTAT"});
    Result r;
    if (c.counters.empty()) {
      r = Run(
          **client, inflight, duration,
          [&](int64_t i) {
            return std::vector<std::string>{"EVALSHA", sha->str, "1",
                                            absl::StrCat("rl:{c", i % kCredentials, "}:minute"),
                                            "1", "60", "1000000000000"};
          },
          FirstIsOne, WaitPolicy{c.wait, absl::Seconds(1)}, c.per_call_wait);
    } else {
      r = Run(
          **client, inflight, duration,
          [&](int64_t i) {
            AcquireCall call{absl::StrCat("c", i % kCredentials), absl::StrCat("b", i), 1,
                             absl::Seconds(2), c.counters};
            call.feature = "f";
            call.keep_lease = c.keep_lease;
            if (!c.script.empty()) {
              std::vector<std::string> args = *AcquireArgs(call, absl::Now());
              args[0] = "EVALSHA";
              args[1] = c.script;
              return args;
            }
            if (c.batch <= 1) return *AcquireArgs(call, absl::Now());
            std::vector<AcquireCall> calls(c.batch, call);
            for (int k = 0; k < c.batch; ++k) calls[k].lease_id = absl::StrCat("b", i, "-", k);
            return *BatchArgs("quotad_acquire_many", calls, absl::Now());
          },
          FirstIsOne, WaitPolicy{c.wait, absl::Seconds(1)}, c.per_call_wait);
    }
    // Where the time goes: redis-server's own time per call of the script or function.
    absl::StatusOr<std::string> stats = (*server)->Command({"INFO", "commandstats"});
    double server_us = 0, waits = 0;
    if (stats.ok()) {
      for (absl::string_view line : absl::StrSplit(*stats, '\n')) {
        if (absl::StartsWith(line, "cmdstat_wait:calls=")) {
          (void)absl::SimpleAtod(line.substr(19, line.find(',') - 19), &waits);
          continue;
        }
        const bool evalsha = c.counters.empty() || !c.script.empty();
        if (!absl::StartsWith(line, evalsha ? "cmdstat_evalsha:" : "cmdstat_fcall:")) {
          continue;
        }
        const size_t at = line.find("usec_per_call=");
        if (at != absl::string_view::npos) {
          (void)absl::SimpleAtod(line.substr(at + 14, line.find(',', at) - at - 14), &server_us);
        }
      }
    }
    const double rate = static_cast<double>(r.calls) * c.batch / r.seconds;
    if (plain_rate == 0) plain_rate = rate;
    std::printf("%-48s %12.0f %10.2f %14.2f %8lld", c.name, rate, rate / plain_rate,
                server_us / c.batch, static_cast<long long>(r.errors));
    if (waits > 0) std::printf("   %.1f calls per WAIT", r.calls / waits);
    std::printf("\n");
    if (r.unacked > 0) {
      std::printf("  (%lld not acknowledged by the replica in time)\n",
                  static_cast<long long>(r.unacked));
    }
    if (r.granted != r.calls - r.errors) {
      std::printf("  (%lld denied)\n", static_cast<long long>(r.calls - r.errors - r.granted));
    }
  }
  return 0;
}

}  // namespace
}  // namespace redis
}  // namespace quotad

int main(int argc, char** argv) { return quotad::redis::Main(argc, argv); }

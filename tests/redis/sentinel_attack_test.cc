// Attacks on shared mode's Sentinel and WAIT paths (issue 13's last change): each test tries to
// make quotad's Redis layer hand out more than a limit allows, hand out a grant a failover then
// loses although WAIT was on, or never answer again. Real redis-server, replica and
// redis-sentinel processes on free loopback ports (RedisServer, SentinelGroup), each stopped by
// the test; every wait is bounded.
//
//  - URL edge cases: IPv6 loopback (bracketed, with and without a port), malformed hosts and
//    ports, no master name, an empty host list.
//  - Renew under WAIT: a renewal that shortens a lease, refused as not durable, must not leave
//    the slot to free earlier than the holder was told.
//  - A connection dropped between FCALL and WAIT, then the request_id retried through another
//    client (another quotad replica): nothing handed out by the first, the retry charges
//    nothing more.
//  - A primary demoted while a WAIT is outstanding (-UNBLOCKED), and READONLY in the middle of
//    a batch of CallThenWait calls.
//  - Sentinels: all down (the client keeps its primary, never hangs); a named "primary" that is
//    a replica (no reconnect storm); a stale first sentinel naming the old primary, restarted
//    and still answering ROLE master (split brain: the client must not move back to it).

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/core/limits.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"
#include "service/store/redis/redis_sentinel.h"
#include "tests/redis/sentinel_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace redis {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::FieldOf;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::SentinelGroup;

// ---------------------------------------------------------------------------------------------
// --redis URL edge cases.

TEST(SentinelAttackUrlTest, Ipv6LoopbackIsParsedWithoutBracketsAndKeepsItsPort) {
  absl::StatusOr<RedisClientOptions> o = ParseRedisUrl("redis://[::1]:6380");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host, "::1");
  EXPECT_EQ(o->port, 6380);

  o = ParseRedisUrl("redis://[::1]");
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->host, "::1");
  EXPECT_EQ(o->port, 6379);

  o = ParseRedisUrl("redis-sentinel://[::1]:5000,127.0.0.1:5001,[::1]/m");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->sentinels.size(), 3u);
  EXPECT_EQ(o->sentinels[0], (HostPort{"::1", 5000}));
  EXPECT_EQ(o->sentinels[1], (HostPort{"127.0.0.1", 5001}));
  EXPECT_EQ(o->sentinels[2], (HostPort{"::1", 26379}));
  EXPECT_EQ(o->master_name, "m");
}

TEST(SentinelAttackUrlTest, MalformedHostsAndPortsAreRefusedNamingTheBadPart) {
  struct Case {
    const char* url;
    const char* names;
  } cases[] = {
      // An unbracketed IPv6 address: "::1" was read as host ":" port 1.
      {"redis://::1", "'::1'"},
      {"redis-sentinel://::1/m", "'::1'"},
      {"redis://a:1:2", "'a:1:2'"},
      {"redis://[::1", "'[::1'"},
      {"redis://[::1]x", "'[::1]x'"},
      {"redis://[::1]:", "'[::1]:'"},
      {"redis://[]:6379", "no host"},
      {"redis://[::1]:0", "'[::1]:0'"},
      {"redis://[::1]:65536", "'[::1]:65536'"},
      {"redis://a:", "'a:'"},
      {"redis://a:-1", "'a:-1'"},
      {"redis://a:x", "'a:x'"},
      {"redis://", "no host"},
      {"redis-sentinel:///m", "no host"},
      {"redis-sentinel://,/m", "no host"},
      {"redis-sentinel://a:1", "no master name"},
      {"redis-sentinel:///", "no master name"},
      {"redis-sentinel://a:70000/m", "'a:70000'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<RedisClientOptions> o = ParseRedisUrl(c.url);
    ASSERT_FALSE(o.ok()) << c.url << " parsed as host '" << o->host << "' port " << o->port;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.url;
    EXPECT_NE(o.status().message().find(c.url), std::string::npos) << o.status();
    EXPECT_NE(o.status().message().find(c.names), std::string::npos) << o.status();
  }
}

TEST(SentinelAttackUrlTest, ClientReachesARedisOnIpv6LoopbackThroughItsUrl) {
  RedisServerOptions so;
  so.appendonly = false;
  so.extra_args = {"--bind", "127.0.0.1", "::1"};
  absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start(so);
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<RedisClientOptions> o =
      ParseRedisUrl(absl::StrCat("redis://[::1]:", (*server)->port()));
  ASSERT_TRUE(o.ok()) << o.status();
  absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Create(*o);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->WaitConnected(absl::Seconds(5)))
      << "never connected to " << o->host << ":" << o->port;
  absl::StatusOr<Reply> r = (*client)->CallSync({"SET", "k", "v6"});
  ASSERT_TRUE(r.ok() && !r->is_error());
  EXPECT_EQ(*(*server)->Command({"GET", "k"}), "v6");
}

// ---------------------------------------------------------------------------------------------
// A primary and one replica (no sentinels): WAIT's paths.

bool ReplicaOnline(const RedisServer& primary) {
  absl::StatusOr<std::string> info = primary.Command({"INFO", "replication"});
  return info.ok() && FieldOf(*info, "connected_slaves") == "1" &&
         FieldOf(*info, "slave0").find("state=online") != std::string::npos;
}

class WaitAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RedisServerOptions data;
    data.appendonly = false;
    RedisServerOptions po = data;
    po.extra_args = {"--repl-diskless-sync-delay", "0"};  // a replica's sync starts at once
    absl::StatusOr<std::unique_ptr<RedisServer>> p = RedisServer::Start(po);
    ASSERT_TRUE(p.ok()) << p.status();
    primary_ = *std::move(p);
    RedisServerOptions ro = data;
    ro.extra_args = {"--replicaof", "127.0.0.1", absl::StrCat(primary_->port())};
    absl::StatusOr<std::unique_ptr<RedisServer>> r = RedisServer::Start(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    replica_ = *std::move(r);
    ASSERT_TRUE(Eventually([&] { return ReplicaOnline(*primary_); }, absl::Seconds(10)));
  }

  // A client of the primary (plain redis://), as one quotad replica has.
  std::unique_ptr<RedisClient> Client(int connections = 2) {
    RedisClientOptions o;
    o.port = primary_->port();
    o.connections = connections;
    o.call_timeout = absl::Seconds(20);  // the answers below come from replies or lost links
    o.max_backoff = absl::Milliseconds(100);
    absl::StatusOr<std::unique_ptr<RedisClient>> c = RedisClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    EXPECT_TRUE((*c)->WaitConnected(absl::Seconds(5)));
    return *std::move(c);
  }

  std::unique_ptr<RedisFunctions> Functions(RedisClient* client, absl::Duration wait_timeout) {
    auto fn = std::make_unique<RedisFunctions>(
        client, [] { return absl::Now(); }, WaitPolicy{1, wait_timeout});
    EXPECT_TRUE(fn->EnsureLoaded().ok());
    return fn;
  }

  // Blocks until a client named quotad sits in WAIT on the primary (its FCALL ran).
  bool QuotadBlockedInWait() {
    return Eventually(
        [&] {
          absl::StatusOr<std::string> list = primary_->Command({"CLIENT", "LIST"});
          return list.ok() && list->find("cmd=wait") != std::string::npos &&
                 list->find("name=quotad") != std::string::npos;
        },
        absl::Seconds(5));
  }

  std::unique_ptr<RedisServer> primary_;
  std::unique_ptr<RedisServer> replica_;
};

AcquireCall Call(const std::vector<CounterRef>& counters, const std::string& lease,
                 absl::Duration ttl = absl::Minutes(1), const std::string& request_id = "") {
  AcquireCall c{"cred", lease, 1, ttl, counters};
  c.feature = "f";
  c.request_id = request_id;
  c.fingerprint = "f/1";
  return c;
}

// holder-1's grant of one unit. WAIT's 100 ms can fall short on a loaded machine even with the
// replica online: the grant is retried under the same request_id until the replica has
// acknowledged it (5 s at most).
absl::StatusOr<AcquireAnswer> FirstHolder(RedisFunctions& fn,
                                          const std::vector<CounterRef>& counters) {
  absl::StatusOr<AcquireAnswer> first;
  Eventually(
      [&] {
        first = fn.AcquireSync(Call(counters, "holder-1", absl::Minutes(1), "first"));
        return first.ok() && first->granted;
      },
      absl::Seconds(5), absl::Milliseconds(20));
  return first;
}

// A holder renews its lease to a shorter TTL while the replica is away: Redis applies it, WAIT
// falls short. If that is answered "not renewed" (kUnavailable), the holder keeps the expiry it
// was granted, but Redis frees the slot at the shorter one: a second holder gets the only slot
// while the first still holds it in good faith.
TEST_F(WaitAttackTest, ShorteningRenewalRefusedByWaitMustNotFreeTheSlotEarly) {
  std::unique_ptr<RedisClient> client = Client();
  ASSERT_NE(client, nullptr);
  std::unique_ptr<RedisFunctions> fn = Functions(client.get(), absl::Milliseconds(100));
  LimitSpec spec;
  spec.name = "slots";
  spec.kind = LimitKind::kConcurrency;
  spec.capacity = 1;
  const Rule rule(spec, "f.slots");
  const std::vector<CounterRef> counters = {{"f.slots", &rule}};

  const absl::StatusOr<AcquireAnswer> first = FirstHolder(*fn, counters);
  ASSERT_TRUE(first.ok() && first->granted) << first.status();
  absl::Time held_until = first->lease_expiry;  // what the first holder believes

  ASSERT_TRUE(replica_->Stop(SIGKILL).ok());
  absl::StatusOr<RenewAnswer> renewed =
      fn->RenewSync({"cred", "holder-1", absl::Milliseconds(300), counters});
  if (renewed.ok()) {
    ASSERT_TRUE(renewed->found);
    held_until = renewed->expiry;  // answered: the holder takes the shorter expiry
  } else {
    EXPECT_EQ(renewed.status().code(), absl::StatusCode::kUnavailable) << renewed.status();
    // Not renewed, as far as the holder knows: it keeps held_until.
  }

  ASSERT_TRUE(replica_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return ReplicaOnline(*primary_); }, absl::Seconds(10)));
  // A second worker asks for the slot for a while (the shorter TTL is long past by the end).
  absl::StatusOr<AcquireAnswer> second;
  int tries = 0;
  const bool got = Eventually(
      [&] {
        second = fn->AcquireSync(Call(counters, absl::StrCat("holder-2-", tries++)));
        return second.ok() && second->granted;
      },
      absl::Seconds(2), absl::Milliseconds(50));
  if (got) {
    const int holders = 1 + (held_until > second->now ? 1 : 0);
    EXPECT_LE(holders, 1) << "the second holder got the only slot at " << second->now
                          << " while the first holds it until " << held_until;
  } else {
    // Refused: the slot is still the first holder's (its renewal was not applied).
    EXPECT_GT(held_until, absl::Now());
  }
}

// The other side of the rule above: a renewal that moves the expiry later is still refused
// while no replica holds it (a failover losing it would end the lease before the time
// answered), and one that keeps or shortens it is answered with the expiry Redis now holds.
TEST_F(WaitAttackTest, ExtendingRenewalIsStillRefusedWithoutAReplica) {
  std::unique_ptr<RedisClient> client = Client();
  ASSERT_NE(client, nullptr);
  std::unique_ptr<RedisFunctions> fn = Functions(client.get(), absl::Milliseconds(100));
  LimitSpec spec;
  spec.name = "slots";
  spec.kind = LimitKind::kConcurrency;
  spec.capacity = 1;
  const Rule rule(spec, "f.slots");
  const std::vector<CounterRef> counters = {{"f.slots", &rule}};
  const absl::StatusOr<AcquireAnswer> first = FirstHolder(*fn, counters);
  ASSERT_TRUE(first.ok() && first->granted) << first.status();

  ASSERT_TRUE(replica_->Stop(SIGKILL).ok());
  absl::StatusOr<RenewAnswer> longer =
      fn->RenewSync({"cred", "holder-1", absl::Minutes(10), counters});
  EXPECT_EQ(longer.status().code(), absl::StatusCode::kUnavailable) << longer.status();
  absl::StatusOr<RenewAnswer> shorter =
      fn->RenewSync({"cred", "holder-1", absl::Seconds(30), counters});
  ASSERT_TRUE(shorter.ok()) << shorter.status();
  ASSERT_TRUE(shorter->found);
  EXPECT_EQ(shorter->expiry - shorter->now, absl::Seconds(30));
  EXPECT_LT(shorter->expiry, first->lease_expiry);
}

// The connection dies after the FCALL granted and while its WAIT is outstanding: nothing is
// handed out (at once, not at WAIT's timeout); a retry of the request_id through another client
// (another quotad replica) answers that very grant once a replica holds it, and charges nothing
// more. Counted against a capacity of 5.
TEST_F(WaitAttackTest, LinkDroppedBetweenFcallAndWaitThenRetriedElsewhereChargesOnce) {
  std::unique_ptr<RedisClient> a = Client();
  std::unique_ptr<RedisClient> b = Client();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  std::unique_ptr<RedisFunctions> fa = Functions(a.get(), absl::Seconds(15));
  // b's WAIT leaves a loaded machine's replica time to acknowledge: a grant whose WAIT timed
  // out would be charged and not handed, and the count below would come out short.
  std::unique_ptr<RedisFunctions> fb = Functions(b.get(), absl::Seconds(3));
  LimitSpec spec;
  spec.name = "daily";
  spec.kind = LimitKind::kCalendar;
  spec.unit = CalendarUnit::kDay;
  spec.capacity = 5;
  const Rule rule(spec, "f.daily");
  const std::vector<CounterRef> counters = {{"f.daily", &rule}};

  ASSERT_TRUE(replica_->Stop(SIGKILL).ok());
  absl::Notification answered;
  absl::StatusOr<AcquireAnswer> first;
  const absl::Time sent = absl::Now();
  fa->Acquire(Call(counters, "lease-r1", absl::Minutes(1), "r1"),
              [&](absl::StatusOr<AcquireAnswer> r) {
                first = std::move(r);
                answered.Notify();
              });
  ASSERT_TRUE(QuotadBlockedInWait());
  ASSERT_FALSE(answered.HasBeenNotified());
  // Every client connection of the primary (quotad's) is cut while WAIT is outstanding.
  ASSERT_TRUE(primary_->Command({"CLIENT", "KILL", "TYPE", "normal"}).ok());
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(5)))
      << "the call waited for WAIT's 15 s after its link died";
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
  EXPECT_LT(absl::Now() - sent, absl::Seconds(10));

  int handed = 0;  // grants a client received, request_id r1 counted once
  ASSERT_TRUE(replica_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return ReplicaOnline(*primary_); }, absl::Seconds(10)));
  absl::StatusOr<AcquireAnswer> retry;
  ASSERT_TRUE(Eventually(
      [&] {
        retry = fb->AcquireSync(Call(counters, "lease-r1-again", absl::Minutes(1), "r1"));
        return retry.ok();
      },
      absl::Seconds(20), absl::Milliseconds(50)))
      << retry.status();
  ASSERT_TRUE(retry->granted);
  EXPECT_TRUE(retry->duplicate);
  EXPECT_EQ(retry->lease_id, "lease-r1");
  ++handed;
  ASSERT_TRUE(a->WaitConnected(absl::Seconds(5)));
  for (int i = 0; i < 10; ++i) {
    RedisFunctions& f = i % 2 == 0 ? *fa : *fb;
    absl::StatusOr<AcquireAnswer> m = f.AcquireSync(Call(counters, absl::StrCat("m", i)));
    ASSERT_TRUE(m.ok()) << m.status();
    handed += m->granted ? 1 : 0;
  }
  EXPECT_EQ(handed, 5) << "capacity 5";
}

// The primary is demoted (REPLICAOF) while quotad's WAIT is outstanding: Redis unblocks the
// WAIT with -UNBLOCKED and closes the connection; the grant is not handed out, at once.
TEST_F(WaitAttackTest, PrimaryDemotedWhileWaitIsOutstandingHandsNothingOut) {
  std::unique_ptr<RedisClient> client = Client();
  ASSERT_NE(client, nullptr);
  std::unique_ptr<RedisFunctions> fn = Functions(client.get(), absl::Seconds(15));
  LimitSpec spec;
  spec.name = "daily";
  spec.kind = LimitKind::kCalendar;
  spec.unit = CalendarUnit::kDay;
  spec.capacity = 5;
  const Rule rule(spec, "f.daily");
  const std::vector<CounterRef> counters = {{"f.daily", &rule}};

  ASSERT_TRUE(replica_->Stop(SIGKILL).ok());
  absl::Notification answered;
  absl::StatusOr<AcquireAnswer> got;
  fn->Acquire(Call(counters, "l1"), [&](absl::StatusOr<AcquireAnswer> r) {
    got = std::move(r);
    answered.Notify();
  });
  ASSERT_TRUE(QuotadBlockedInWait());
  // Demoted to a replica of the (dead) replica's address, as a failover would.
  ASSERT_TRUE(
      primary_->Command({"REPLICAOF", "127.0.0.1", absl::StrCat(replica_->port())}).ok());
  ASSERT_TRUE(answered.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  // A replica now: the client does not come up on it, every call is refused.
  absl::StatusOr<AcquireAnswer> next = fn->AcquireSync(Call(counters, "l2"));
  EXPECT_EQ(next.status().code(), absl::StatusCode::kUnavailable) << next.status();
  EXPECT_TRUE(Eventually([&] { return client->connected() == 0; }, absl::Seconds(5)));
}

// One connection, a burst of CallThenWait calls, the server demoted by a call in the middle of
// it: the calls after it meet READONLY (the connection is dropped, the rest of the batch and
// its WAIT are answered kUnavailable). None of them is answered as durable; none is written.
TEST_F(WaitAttackTest, ReadonlyInTheMiddleOfAWaitBatchAnswersNothingAfterItAsDurable) {
  std::unique_ptr<RedisClient> client = Client(/*connections=*/1);
  ASSERT_NE(client, nullptr);
  RedisServerOptions other;
  other.appendonly = false;
  absl::StatusOr<std::unique_ptr<RedisServer>> elsewhere = RedisServer::Start(other);
  ASSERT_TRUE(elsewhere.ok()) << elsewhere.status();

  absl::Mutex mu;
  std::vector<absl::StatusOr<Reply>> answers(6);
  int count = 0;
  auto record = [&](int i) {
    return [&, i](absl::StatusOr<Reply> r) {
      absl::MutexLock lock(&mu);
      answers[i] = std::move(r);
      ++count;
    };
  };
  const std::vector<std::vector<std::string>> batch = {
      {"INCR", "before"},
      {"INCR", "before"},
      {"REPLICAOF", "127.0.0.1", absl::StrCat((*elsewhere)->port())},
      {"INCR", "after"},
      {"INCR", "after"},
      {"INCR", "after"},
  };
  for (size_t i = 0; i < batch.size(); ++i) {
    client->CallThenWait(batch[i], 1, absl::Seconds(10), record(static_cast<int>(i)));
  }
  ASSERT_TRUE(Eventually([&] {
    absl::MutexLock lock(&mu);
    return count == static_cast<int>(batch.size());
  }, absl::Seconds(15)));
  // The calls before REPLICAOF may have gone out with an earlier WAIT (a round of the loop
  // may write the first call alone) that the replica acknowledged before the demotion: those
  // may be answered durable. The calls after it ran on a replica, or not at all.
  for (size_t i = 3; i < batch.size(); ++i) {
    const bool acked = answers[i].ok() && answers[i]->elements.size() == 2 &&
                       answers[i]->elements[1].type == Reply::Type::kInteger &&
                       answers[i]->elements[1].integer >= 1;
    EXPECT_FALSE(acked) << "call " << i << " answered as durable: "
                        << (answers[i].ok() ? answers[i]->DebugString()
                                            : answers[i].status().ToString());
  }
  // The server is a replica of an empty one now; what counts is that no "after" ran on it
  // while it was a primary: it has none (the sync from `elsewhere` emptied it, or READONLY).
  absl::StatusOr<std::string> after = primary_->Command({"GET", "after"});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, "(nil)");
}

// ---------------------------------------------------------------------------------------------
// Sentinels.

class SentinelAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<SentinelGroup>> g = SentinelGroup::Start();
    ASSERT_TRUE(g.ok()) << g.status();
    group_ = *std::move(g);
  }

  std::unique_ptr<RedisClient> Client(const std::string& url) {
    absl::StatusOr<RedisClientOptions> o = ParseRedisUrl(url);
    EXPECT_TRUE(o.ok()) << o.status();
    if (!o.ok()) return nullptr;
    o->call_timeout = absl::Seconds(2);
    o->connect_timeout = absl::Milliseconds(500);
    absl::StatusOr<std::unique_ptr<RedisClient>> c = RedisClient::Create(*o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  static int64_t Connections(const RedisServer& s) {
    absl::StatusOr<std::string> info = s.Command({"INFO", "stats"});
    int64_t n = -1;
    if (info.ok()) (void)absl::SimpleAtoi(FieldOf(*info, "total_connections_received"), &n);
    return n;
  }

  std::unique_ptr<SentinelGroup> group_;
};

// Every sentinel dies: the client keeps its primary. The primary dies too: calls are refused at
// once (none hangs); it comes back on its address: the client is up again by itself.
TEST_F(SentinelAttackTest, AllSentinelsDownTheClientKeepsItsPrimaryAndNeverHangs) {
  std::unique_ptr<RedisClient> client = Client(group_->url());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(10)));
  for (int i = 0; i < group_->sentinel_count(); ++i) {
    ASSERT_TRUE(group_->sentinel(i).Stop(SIGKILL).ok());
  }
  absl::StatusOr<Reply> r = client->CallSync({"INCR", "n"});
  ASSERT_TRUE(r.ok() && !r->is_error()) << (r.ok() ? r->DebugString() : r.status().ToString());

  ASSERT_TRUE(group_->server(0).Stop(SIGKILL).ok());
  ASSERT_TRUE(Eventually([&] { return client->connected() == 0; }, absl::Seconds(5)));
  for (int i = 0; i < 20; ++i) {
    const absl::Time start = absl::Now();
    r = client->CallSync({"INCR", "n"});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(1)) << "a call waited with no primary up";
  }
  ASSERT_TRUE(group_->server(0).Restart().ok());
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(10)));
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<Reply> w = client->CallSync({"INCR", "n"});
    return w.ok() && !w->is_error();
  }));
}

// The sentinels name, for a master, a server that is a replica: every connection is refused by
// the ROLE check. The client must back off (connections and askings stay few), and every call
// is answered at once.
TEST_F(SentinelAttackTest, ANamedPrimaryThatIsAReplicaCausesNoReconnectStorm) {
  RedisServer& replica = group_->server(1);
  RedisServer& s0 = group_->sentinel(0);
  ASSERT_EQ(*s0.Command({"SENTINEL", "MONITOR", "ghost", "127.0.0.1",
                         absl::StrCat(replica.port()), "2"}),
            "OK");
  const int64_t replica_before = Connections(replica);
  const int64_t sentinel_before = Connections(s0);
  std::unique_ptr<RedisClient> client =
      Client(absl::StrCat("redis-sentinel://127.0.0.1:", s0.port(), "/ghost"));
  ASSERT_NE(client, nullptr);
  const absl::Time start = absl::Now();
  ASSERT_TRUE(Eventually([&] { return client->primary().port == replica.port(); }));
  int calls = 0;
  while (absl::Now() - start < absl::Seconds(3)) {
    const absl::Time t = absl::Now();
    absl::StatusOr<Reply> r = client->CallSync({"INCR", "n"});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
    EXPECT_LT(absl::Now() - t, absl::Milliseconds(500));
    ++calls;  // callers back to back for 3 s: the harshest trickle
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  const int64_t to_replica = Connections(replica) - replica_before;
  const int64_t to_sentinel = Connections(s0) - sentinel_before;
  std::printf("[no storm] %.1f s, %d calls refused: %lld connections to the replica, %lld to the "
              "sentinel\n",
              seconds, calls, static_cast<long long>(to_replica),
              static_cast<long long>(to_sentinel));
  EXPECT_EQ(client->connected(), 0);
  // Two connection slots backing off 10 ms doubling to 1 s: ~10 attempts each in 3 s; the
  // askings back off the same way. A storm would be hundreds.
  EXPECT_LT(to_replica, 60);
  EXPECT_LT(to_sentinel, 60);
}

// Cuts every connection named quotad on `s` (CLIENT KILL ID each), leaving the sentinels' own.
int KillQuotadConnections(const RedisServer& s) {
  absl::StatusOr<std::string> list = s.Command({"CLIENT", "LIST"});
  if (!list.ok()) return 0;
  int killed = 0;
  // One line per client: "id=N addr=... name=quotad ...".
  std::vector<std::string> words = absl::StrSplit(*list, absl::ByAnyChar("\n\r "));
  std::string id;
  for (const std::string& w : words) {
    if (absl::StartsWith(w, "id=")) id = w.substr(3);
    if (w == "name=quotad" && !id.empty()) {
      if (s.Command({"CLIENT", "KILL", "ID", id}).ok()) ++killed;
      id.clear();
    }
  }
  return killed;
}

// Split brain through a stale sentinel: the first sentinel of the URL was down during a failover
// (kill -9 of the primary); the old primary comes back empty, still a primary until the
// sentinels turn it into a replica (seconds), and so does the stale sentinel, which names it
// until the others' hello messages reach it. The client, following the new primary, loses its
// connections and asks again: it must not move back to the old primary (without WAIT, every
// grant it took there is lost when that server is made a replica: an over-grant).
TEST_F(SentinelAttackTest, AStaleFirstSentinelDoesNotMoveTheClientBackToTheOldPrimary) {
  RedisServer& old_primary = group_->server(0);
  RedisServer& new_primary = group_->server(1);
  RedisServer& stale = group_->sentinel(0);
  std::unique_ptr<RedisClient> client = Client(group_->url());  // the stale one first
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(10)));
  ASSERT_EQ(client->primary().port, old_primary.port());

  ASSERT_TRUE(stale.Stop(SIGKILL).ok());
  ASSERT_TRUE(old_primary.Stop(SIGKILL).ok());
  auto named = [&](const RedisServer& s) {
    absl::StatusOr<std::string> r = s.Command({"SENTINEL", "GET-MASTER-ADDR-BY-NAME", "quotad"});
    return r.ok() ? *r : std::string();
  };
  const std::string fresh = absl::StrCat("127.0.0.1 ", new_primary.port());
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> role = new_primary.Command({"ROLE"});
        return named(group_->sentinel(1)) == fresh && named(group_->sentinel(2)) == fresh &&
               role.ok() && absl::StartsWith(*role, "master");
      },
      absl::Seconds(20)));
  ASSERT_TRUE(Eventually(
      [&] { return client->primary().port == new_primary.port() && client->connected() > 0; },
      absl::Seconds(20)));

  ASSERT_TRUE(old_primary.Restart().ok());  // empty, a primary by its own configuration
  ASSERT_TRUE(stale.Restart().ok());        // its sentinel.conf still names the old primary
  const bool stale_then = named(stale) == absl::StrCat("127.0.0.1 ", old_primary.port());
  ASSERT_GT(KillQuotadConnections(new_primary), 0);

  // Watched for 3 s, or until the other sentinels name another primary themselves (the stale
  // one, before it learns, may reconfigure servers: Sentinel's own business, not the client's).
  bool moved_back = false;
  int written = 0;
  std::string on_old = "(nil)";  // the old primary's count while the others named the new one
  Eventually(
      [&] {
        absl::StatusOr<std::string> count = old_primary.Command({"GET", "split"});
        if (named(group_->sentinel(1)) != fresh || named(group_->sentinel(2)) != fresh) {
          return true;
        }
        if (count.ok()) on_old = *count;
        if (client->primary().port == old_primary.port()) moved_back = true;
        absl::StatusOr<Reply> r = client->CallSync({"INCR", "split"}, absl::Milliseconds(500));
        if (r.ok() && !r->is_error()) ++written;
        return false;
      },
      absl::Seconds(3), absl::Milliseconds(20));
  std::printf("[stale sentinel] named the old primary after its restart: %s; client moved back: "
              "%s; %d writes answered, old primary holds %s\n",
              stale_then ? "yes" : "no", moved_back ? "yes" : "no", written, on_old.c_str());
  EXPECT_FALSE(moved_back);
  EXPECT_EQ(on_old, "(nil)") << "writes answered by the old primary";
}

}  // namespace
}  // namespace redis
}  // namespace quotad

// Sentinel mode and WAIT below the server: --redis=redis-sentinel:// parsing, the client finding
// the primary through real sentinels and following SENTINEL FAILOVER, the ROLE check that keeps
// a client off a replica, a demoted primary (READONLY) dropped, and WAIT turning a grant that no
// replica acknowledged into kUnavailable (its request_id retry answered once a replica has it).
// One primary, one replica and three redis-sentinel processes on loopback (SentinelGroup).

#include "service/store/redis/redis_sentinel.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "service/core/limits.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/sentinel_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace redis {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::SentinelGroup;

TEST(ParseRedisUrlTest, SentinelUrlNamesEverySentinelAndTheMaster) {
  absl::StatusOr<RedisClientOptions> o =
      ParseRedisUrl("redis-sentinel://10.0.0.1:5000,sentinel-b,[::1]/mymaster");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->sentinels.size(), 3u);
  EXPECT_EQ(o->sentinels[0], (HostPort{"10.0.0.1", 5000}));
  EXPECT_EQ(o->sentinels[1], (HostPort{"sentinel-b", 26379}));
  EXPECT_EQ(o->sentinels[2], (HostPort{"::1", 26379}));
  EXPECT_EQ(o->master_name, "mymaster");
}

TEST(ParseRedisUrlTest, BadSentinelUrlsNameTheBadPart) {
  struct Case {
    const char* url;
    const char* names;
  } cases[] = {
      {"redis-sentinel://a:1,b:2", "no master name"},
      {"redis-sentinel://a:1/", "no master name"},
      {"redis-sentinel://a:1,b:99999/m", "'b:99999'"},
      {"redis-sentinel://a:1,,b/m", "no host in ''"},
      {"redis-sentinel://a:1/m/x", "bad master name 'm/x'"},
      {"redis-cluster://a:1,,b", "no host in ''"},
      {"rediss://a:1", "expected redis://"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<RedisClientOptions> o = ParseRedisUrl(c.url);
    ASSERT_FALSE(o.ok()) << c.url;
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << c.url;
    EXPECT_NE(o.status().message().find(c.url), std::string::npos) << o.status();
    EXPECT_NE(o.status().message().find(c.names), std::string::npos) << o.status();
  }
}

class SentinelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<SentinelGroup>> g = SentinelGroup::Start();
    ASSERT_TRUE(g.ok()) << g.status();
    group_ = *std::move(g);
  }

  std::unique_ptr<RedisClient> Client(RedisClientOptions o) {
    o.call_timeout = absl::Seconds(2);
    absl::StatusOr<std::unique_ptr<RedisClient>> c = RedisClient::Create(std::move(o));
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::unique_ptr<RedisClient> SentinelClient() {
    absl::StatusOr<RedisClientOptions> o = ParseRedisUrl(group_->url());
    EXPECT_TRUE(o.ok()) << o.status();
    return Client(*o);
  }

  std::unique_ptr<SentinelGroup> group_;
};

TEST_F(SentinelTest, AskSentinelNamesThePrimaryAndKnowsNoOtherMaster) {
  HostPort s{"127.0.0.1", group_->sentinel(0).port()};
  absl::StatusOr<HostPort> p = AskSentinel(s, group_->master_name(), absl::Seconds(1));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, (HostPort{"127.0.0.1", group_->server(0).port()}));
  absl::StatusOr<HostPort> none = AskSentinel(s, "nobody", absl::Seconds(1));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
}

TEST_F(SentinelTest, ClientFollowsSentinelFailoverToTheNewPrimary) {
  std::unique_ptr<RedisClient> client = SentinelClient();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(10)));
  EXPECT_EQ(client->primary().port, group_->server(0).port());
  absl::StatusOr<Reply> r = client->CallSync({"SET", "k", "before"});
  ASSERT_TRUE(r.ok() && !r->is_error()) << (r.ok() ? r->DebugString() : r.status().ToString());

  ASSERT_TRUE(group_->Failover().ok());
  absl::StatusOr<int> fresh =
      group_->WaitForNewPrimary(group_->server(0).port(), absl::Seconds(20));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(*fresh, group_->server(1).port());
  // The client moves by itself (+switch-master, or READONLY from the demoted primary).
  ASSERT_TRUE(Eventually([&] { return client->primary().port == *fresh && client->connected(); },
                         absl::Seconds(20)));
  EXPECT_EQ(client->failovers(), 1);
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<Reply> w = client->CallSync({"SET", "k", "after"});
    return w.ok() && !w->is_error();
  }));
  EXPECT_EQ(*group_->server(1).Command({"GET", "k"}), "after");
}

TEST_F(SentinelTest, RoleCheckKeepsAClientOffAReplicaAndDropsADemotedPrimary) {
  RedisServer& replica = group_->server(1);
  RedisClientOptions o;
  o.port = replica.port();
  o.max_backoff = absl::Milliseconds(50);
  std::unique_ptr<RedisClient> client = Client(o);
  ASSERT_NE(client, nullptr);
  // The connection is made, but ROLE says "slave": never up, every call refused.
  absl::StatusOr<Reply> r = client->CallSync({"PING"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->connected(), 0);

  // Promoted by hand: the client comes up by itself.
  ASSERT_EQ(*replica.Command({"REPLICAOF", "NO", "ONE"}), "OK");
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(10)));
  r = client->CallSync({"SET", "k", "1"});
  ASSERT_TRUE(r.ok() && !r->is_error());

  // Demoted again: a write is refused as kUnavailable (READONLY, nothing written) and the
  // client drops its connections to it.
  ASSERT_EQ(*replica.Command({"REPLICAOF", "127.0.0.1", absl::StrCat(group_->server(0).port())}),
            "OK");
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<Reply> w = client->CallSync({"SET", "k", "2"});
    return absl::IsUnavailable(w.status()) && client->connected() == 0;
  }));
  EXPECT_NE(*replica.Command({"GET", "k"}), "2");
}

TEST_F(SentinelTest, WaitRefusesAGrantNoReplicaHoldsAndItsRetryAnswersItOnceOneDoes) {
  RedisServer& primary = group_->server(0);
  RedisClientOptions o;
  o.port = primary.port();
  std::unique_ptr<RedisClient> client = Client(o);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->WaitConnected(absl::Seconds(5)));
  // WAIT's timeout leaves a loaded machine's replica time to acknowledge: every call below
  // with the replica up must be answered granted or denied, never "only 0 of 1 replica".
  RedisFunctions fn(
      client.get(), [] { return absl::Now(); }, WaitPolicy{1, absl::Seconds(2)});
  ASSERT_TRUE(fn.EnsureLoaded().ok());
  LimitSpec spec;
  spec.name = "daily";
  spec.kind = LimitKind::kCalendar;
  spec.unit = CalendarUnit::kDay;
  spec.capacity = 10;
  const Rule rule(spec, "f.daily");
  auto call = [&](const std::string& lease, const std::string& request_id) {
    AcquireCall c{"cred", lease, 1, absl::Minutes(1), {{"f.daily", &rule}}};
    c.feature = "f";
    c.request_id = request_id;
    c.fingerprint = "f/1";
    return c;
  };
  absl::StatusOr<AcquireAnswer> a = fn.AcquireSync(call("l1", "r1"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->granted);

  // The replica gone: WAIT times out with 0 acknowledgements; the grant is not handed out.
  ASSERT_TRUE(group_->server(1).Stop(SIGKILL).ok());
  a = fn.AcquireSync(call("l2", "r2"));
  ASSERT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
  EXPECT_NE(a.status().message().find("only 0 of 1 replica"), std::string::npos) << a.status();

  // Back (it resyncs from the primary): the retry of r2 answers the first grant, now held by the
  // replica too, and charges nothing more.
  ASSERT_TRUE(group_->server(1).Restart().ok());
  ASSERT_TRUE(Eventually(
      [&] {
        a = fn.AcquireSync(call("l3", "r2"));
        return a.ok();
      },
      absl::Seconds(20)))
      << a.status();
  EXPECT_TRUE(a->granted);
  EXPECT_TRUE(a->duplicate);
  EXPECT_EQ(a->lease_id, "l2");
  // l1 and l2 charged: 8 more fit, not 9.
  int more = 0;
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<AcquireAnswer> m = fn.AcquireSync(call(absl::StrCat("m", i), ""));
    ASSERT_TRUE(m.ok()) << m.status();
    more += m->granted ? 1 : 0;
  }
  EXPECT_EQ(more, 8);
}

TEST_F(SentinelTest, CallThenWaitSharesOneWaitPerBatchAndFailsHeldCallsWhenTheLinkDies) {
  RedisServer& primary = group_->server(0);
  RedisClientOptions o;
  o.port = primary.port();
  o.connections = 1;
  o.call_timeout = absl::Seconds(20);  // answers below come from replies or the lost link
  absl::StatusOr<std::unique_ptr<RedisClient>> created = RedisClient::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  RedisClient& client = **created;
  ASSERT_TRUE(client.WaitConnected(absl::Seconds(5)));
  ASSERT_EQ(*primary.Command({"CONFIG", "RESETSTAT"}), "OK");

  constexpr int kCalls = 200;
  absl::Mutex mu;
  int answered = 0, acked = 0;
  std::vector<absl::StatusCode> codes;
  auto count = [&](absl::StatusOr<Reply> r) {
    absl::MutexLock lock(&mu);
    ++answered;
    if (r.ok() && r->elements.size() == 2 && r->elements[1].integer == 1) ++acked;
    codes.push_back(r.status().code());
  };
  for (int i = 0; i < kCalls; ++i) client.CallThenWait({"INCR", "n"}, 1, absl::Seconds(5), count);
  auto answered_all = [&](int n) {
    return Eventually([&] {
      absl::MutexLock lock(&mu);
      return answered == n;
    });
  };
  ASSERT_TRUE(answered_all(kCalls));
  EXPECT_EQ(acked, kCalls);
  EXPECT_EQ(*primary.Command({"GET", "n"}), absl::StrCat(kCalls));
  const std::string stats = *primary.Command({"INFO", "commandstats"});
  const size_t at = stats.find("cmdstat_wait:calls=");
  ASSERT_NE(at, std::string::npos) << stats;
  int waits = 0;
  ASSERT_TRUE(absl::SimpleAtoi(stats.substr(at + 19, stats.find(',', at) - at - 19), &waits));
  EXPECT_LT(waits, kCalls / 4) << "WAITs written for " << kCalls << " calls";

  // No replica: the next WAIT stays out (5 s), the calls after it are held; the primary dies:
  // every one is answered kUnavailable at once, none waits for its timeout.
  ASSERT_TRUE(group_->server(1).Stop(SIGKILL).ok());
  {
    absl::MutexLock lock(&mu);
    answered = 0;
    codes.clear();
  }
  client.CallThenWait({"INCR", "n"}, 1, absl::Seconds(5), count);
  ASSERT_TRUE(Eventually([&] { return *primary.Command({"GET", "n"}) == "201"; }));
  // Its WAIT went out with it: these are held back until that WAIT returns.
  for (int i = 0; i < 10; ++i) client.CallThenWait({"INCR", "n"}, 1, absl::Seconds(5), count);
  ASSERT_TRUE(primary.Stop(SIGKILL).ok());
  ASSERT_TRUE(answered_all(11));
  for (absl::StatusCode code : codes) EXPECT_EQ(code, absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace redis
}  // namespace quotad

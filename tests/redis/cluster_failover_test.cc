// Shared mode through a failover inside a Redis Cluster (issue 13): three masters with one
// replica each on loopback (ClusterGroup, cluster-node-timeout 1 s), one quotad
// (--redis=redis-cluster://...) and clients acquiring against the calendar limits of three
// credentials, one on each master, while the first master is killed (kill -9: the cluster
// promotes its replica by itself), killed while its replica is stalled (a read-only script holds
// the replica's event loop for 6 s; the kill comes once charges sit unsent in the master's
// buffer: on loopback a plain kill -9 leaves nothing unsent), or handed over (CLUSTER FAILOVER on
// its replica: the old master lives on, as the new master's replica). quotad follows the new master
// by itself. The oracle is each limit's capacity: every grant a client received is counted per
// credential, and the clients keep going after the failover until the new master denies.
// Without WAIT the failed-over credential's over-grant is printed (the grants the old master
// acknowledged and never replicated; behind a stalled replica it must be more than 0, the
// control of the WAIT case); with --redis_wait_replicas=1 it must be 0. The other masters'
// credentials are never over-granted and keep being granted while the failed-over one is out. A
// killed master is restarted once quotad has moved, with its nodes.conf (it rejoins as the new
// master's replica, empty) and not promotable before its first sync (as the sentinel test restarts
// its primary): with WAIT 1 the new master grants nothing until then. One line per scenario prints
// the over-grant per credential (net of grants Redis charged but answered UNAVAILABLE), the grants
// before, during (until the first grant through the new master) and after the failover, and when
// the failed-over credential was granted again.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/server.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/cluster_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using ::quotad::testing::ClusterGroup;
using ::quotad::testing::ClusterGroupOptions;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::TempDir;

constexpr int kMasters = 3;
constexpr int kFailed = 0;  // the master that fails over (its credential is creds_[kFailed])
constexpr int kCapacity = 2000;
constexpr int kGrantsBeforeFailover = 300;  // per credential
constexpr int kClients = 3 * kMasters;
// Every wait of the test is bounded; a scenario takes seconds.
constexpr absl::Duration kClientDeadline = absl::Seconds(40);

struct Scenario {
  const char* name;
  bool kill;  // kill -9 the master; else CLUSTER FAILOVER on its replica
  // Before the kill, the replica stops reading its master's stream (a read-only script holds
  // its event loop) until charges are left unsent in the master's buffer: what the kill loses.
  bool stall_replica;
  int wait_replicas;  // --redis_wait_replicas
};

// A replica stalled: a read-only script holding its event loop for ARGV[1] microseconds.
constexpr char kBusyScript[] =
    "local s = redis.call('TIME'); local t0 = s[1] * 1000000 + s[2]; "
    "while true do local t = redis.call('TIME'); "
    "if t[1] * 1000000 + t[2] - t0 > tonumber(ARGV[1]) then return 1 end end";
// The stall outlasts filling the link and the charges after it (at most 3 s) with room to spare
// under CI's load (a 3 s stall once ended before the kill: the replica had caught up half way).
constexpr absl::Duration kStall = absl::Seconds(6);
constexpr absl::Duration kFillWithin = absl::Seconds(2);
constexpr absl::Duration kChargesWithin = absl::Seconds(1);
constexpr int64_t kUnsentBytes = 1 << 20;  // "the link is full": unsent, well past a block
constexpr int kMaxFills = 32;              // MB written at most to fill the stalled replica's link
constexpr int kUnsentCharges = 5;          // charges made after it filled, before the kill

// What `master` holds for its replica and has not written to the link: the flags=S client's
// omem in CLIENT LIST (Redis 7 counts the shared replication buffer from the block the replica
// is in, so a replica that is caught up shows up to a block, ~20 KB); -1 if unreadable.
int64_t UnsentToReplica(const RedisServer& master) {
  absl::StatusOr<std::string> list = master.Command({"CLIENT", "LIST"});
  if (!list.ok()) return -1;
  for (absl::string_view line : absl::StrSplit(*list, '\n')) {
    if (!absl::StrContains(line, " flags=S ")) continue;
    for (absl::string_view field : absl::StrSplit(line, ' ')) {
      int64_t n = 0;
      if (absl::ConsumePrefix(&field, "omem=") && absl::SimpleAtoi(field, &n)) return n;
    }
  }
  return -1;
}

// A key that master `m` serves.
std::string KeyOn(const ClusterGroup& group, int m) {
  for (int i = 0;; ++i) {
    std::string key = absl::StrCat("filler", i);
    if (group.OwnerOf(redis::KeySlot(key)) == m) return key;
  }
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

// The grants one credential received, by when each was answered, and its UNAVAILABLE answers.
// Thread-safe: its clients add, the test thread reads.
struct Grants {
  absl::Mutex mu;
  std::vector<absl::Time> at ABSL_GUARDED_BY(mu);
  // The first grant of a request sent after quotad was seen on the new master.
  absl::Time first_after_followed ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  std::atomic<int> unavailable{0};

  int CountIn(absl::Time from, absl::Time to) {
    absl::MutexLock lock(&mu);
    return static_cast<int>(
        std::count_if(at.begin(), at.end(), [&](absl::Time t) { return t >= from && t < to; }));
  }
  int Total() {
    absl::MutexLock lock(&mu);
    return static_cast<int>(at.size());
  }
};

class ClusterFailoverTest : public ::testing::TestWithParam<Scenario> {
 protected:
  HealthCheckResponse::ServingStatus HealthOf() {
    HealthCheckResponse resp;
    grpc::Status s = health_->Check(Context(absl::Seconds(2)).get(), HealthCheckRequest(), &resp);
    return s.ok() ? resp.status() : HealthCheckResponse::UNKNOWN;
  }

  grpc::Status Acquire(const std::string& credential, v1::AcquireResponse* resp) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature("cal");
    return quota_->Acquire(Context().get(), req, resp);
  }

  // creds_[m]: the first team/f<i> whose hash slot master `m` serves.
  void PickCredentials(const ClusterGroup& group) {
    for (int m = 0; m < kMasters; ++m) {
      for (int i = 0; creds_[m].empty(); ++i) {
        const std::string name = absl::StrCat("team/f", i);
        if (group.OwnerOf(redis::KeySlot(redis::StateKey(name))) == m) creds_[m] = name;
      }
    }
  }

  std::string Config() const {
    std::string yaml = "credentials:\n";
    for (const std::string& name : creds_) {
      absl::StrAppend(&yaml, "  - name: ", name, "\n", "    features:\n", "      - name: cal\n",
                      "        limits:\n",
                      "          - {name: daily, kind: calendar, unit: day, capacity: ", kCapacity,
                      "}\n");
    }
    return yaml;
  }

  TempDir dir_;
  std::array<std::string, kMasters> creds_;
  std::unique_ptr<v1::Quota::Stub> quota_;
  std::unique_ptr<Health::Stub> health_;
};

TEST_P(ClusterFailoverTest, FollowsTheNewMasterAndCountsTheOverGrant) {
  const Scenario& sc = GetParam();
  ClusterGroupOptions group_options;
  group_options.replicas_per_master = 1;
  group_options.node_timeout = absl::Seconds(1);
  // A replica's full sync at once, not after the 5 s a diskless sync waits for more replicas.
  group_options.node_args = {"--repl-diskless-sync-delay", "0"};
  absl::StatusOr<std::unique_ptr<ClusterGroup>> started = ClusterGroup::Start(group_options);
  ASSERT_TRUE(started.ok()) << started.status();
  ClusterGroup& group = **started;
  PickCredentials(group);
  RedisServer& old_master = group.node(kFailed);
  RedisServer& new_master = group.replica(kFailed);

  ServerOptions options =
      testing::SharedServerOptions(dir_.WriteFile("quotad.yaml", Config()), group.url());
  options.redis_wait_replicas = sc.wait_replicas;
  options.redis_wait_timeout = absl::Milliseconds(200);
  absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  quota_ = v1::Quota::NewStub(channel);
  health_ = Health::NewStub(channel);
  ASSERT_TRUE(
      Eventually([&] { return HealthOf() == HealthCheckResponse::SERVING; }, absl::Seconds(20)));

  // Three clients per credential (a client stuck on the failed-over master stalls no other
  // master's): each acquires until, after quotad has followed the new master, a request it sent
  // is denied by the limit (only the new master can answer the failed-over credential then).
  std::array<Grants, kMasters> grants;
  std::atomic<int> other_errors{0}, finished{0};
  std::atomic<bool> followed{false}, stop{false};
  std::string other_error;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, k = c % kMasters] {
      const absl::Time deadline = absl::Now() + kClientDeadline;
      while (!stop.load() && absl::Now() < deadline) {
        const bool after = followed.load();
        v1::AcquireResponse resp;
        grpc::Status s = Acquire(creds_[k], &resp);
        if (s.ok() && resp.granted()) {
          const absl::Time now = absl::Now();
          absl::MutexLock lock(&grants[k].mu);
          grants[k].at.push_back(now);
          if (after && grants[k].first_after_followed == absl::InfiniteFuture()) {
            grants[k].first_after_followed = now;
          }
        } else if (s.ok()) {
          if (after && resp.limited_by() == "cal.daily") {
            finished++;
            return;
          }
        } else if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
          // Nothing granted; as a client would, retry once quotad says it serves.
          grants[k].unavailable++;
          Eventually([&] { return stop.load() || HealthOf() == HealthCheckResponse::SERVING; },
                     absl::Seconds(5), absl::Milliseconds(20));
        } else if (other_errors++ == 0) {
          other_error = absl::StrCat(creds_[k], ": ", s.error_code(), " ", s.error_message());
        }
      }
    });
  }
  // Whatever happens below, the clients end before the cluster and quotad do.
  struct Joiner {
    std::vector<std::thread>* t;
    std::atomic<bool>* stop;
    ~Joiner() {
      stop->store(true);
      for (std::thread& c : *t) {
        if (c.joinable()) c.join();
      }
    }
  } joiner{&clients, &stop};

  ASSERT_TRUE(Eventually(
      [&] {
        for (Grants& g : grants) {
          if (g.Total() < kGrantsBeforeFailover) return false;
        }
        return true;
      },
      absl::Seconds(20)))
      << "granted " << grants[0].Total() << ", " << grants[1].Total() << ", " << grants[2].Total();
  std::atomic<bool> stall_sent{false};
  std::thread staller;
  struct StallerJoiner {
    std::thread* t;
    ~StallerJoiner() {
      if (t->joinable()) t->join();
    }
  } staller_joiner{&staller};
  if (sc.stall_replica) {
    // Held for kStall, the replica takes nothing from its link: once the link's socket buffers
    // are full (1 MB writes of a key of the same master fill them), every charge the master
    // makes stays in its output buffer for the replica, and dies with it.
    staller = std::thread([&] {
      stall_sent = true;
      new_master
          .Command({"EVAL_RO", kBusyScript, "0", absl::StrCat(absl::ToInt64Microseconds(kStall))})
          .IgnoreError();
    });
    ASSERT_TRUE(Eventually([&] { return stall_sent.load(); }));
    const std::string filler(1 << 20, 'x');
    const std::string key = KeyOn(group, kFailed);
    int fills = 0;
    ASSERT_TRUE(Eventually(
        [&] {
          if (UnsentToReplica(old_master) >= kUnsentBytes) return true;
          if (fills < kMaxFills && old_master.Command({"SET", key, filler}).ok()) ++fills;
          return false;
        },
        kFillWithin, absl::Milliseconds(2)))
        << "the stalled replica's link never filled (" << fills << " MB written)";
    const int64_t fcalls = old_master.Calls("fcall");
    ASSERT_TRUE(Eventually([&] { return old_master.Calls("fcall") >= fcalls + kUnsentCharges; },
                           kChargesWithin))
        << "no charges after the link filled";
    const int64_t unsent = UnsentToReplica(old_master);
    // Without WAIT the unsent charges are what the oracle must see lost, so the link must still
    // be full. With WAIT, 0 over-grant must hold however much is unsent (CI twice saw ~560 KB
    // left here under load with WAIT on; the figure is printed).
    if (sc.wait_replicas == 0) {
      ASSERT_GE(unsent, kUnsentBytes) << "the replica caught up before the kill";
    }
    std::printf(
        "[%s] killing the master with %lld bytes unsent to its stalled replica (%d MB "
        "written to fill the link, %lld charges since)\n",
        sc.name, static_cast<long long>(unsent), fills,
        static_cast<long long>(old_master.Calls("fcall") - fcalls));
  }
  const absl::Time failover_start = absl::Now();
  if (sc.kill) {
    ASSERT_TRUE(group.Kill(kFailed).ok());
  } else {
    absl::StatusOr<std::string> ok = new_master.Command({"CLUSTER", "FAILOVER"});
    ASSERT_TRUE(ok.ok() && *ok == "OK") << ok.status() << " " << ok.value_or("");
  }
  // The replica is a master and quotad is connected to it (and a handed-over master is a
  // replica): from here on, a denial of the failed-over credential can only come from the new
  // master.
  auto role_of = [](RedisServer& s) {
    absl::StatusOr<std::string> role = s.Command({"ROLE"});
    return role.ok() ? role->substr(0, role->find(' ')) : std::string("down");
  };
  auto quotad_on = [](RedisServer& s) {
    absl::StatusOr<std::string> list = s.Command({"CLIENT", "LIST"});
    return list.ok() && list->find("name=quotad") != std::string::npos;
  };
  ASSERT_TRUE(Eventually(
      [&] {
        return role_of(new_master) == "master" && quotad_on(new_master) &&
               (sc.kill || role_of(old_master) == "slave");
      },
      absl::Seconds(20)))
      << "no failover, or quotad did not follow: the replica is " << role_of(new_master)
      << ", the old master " << role_of(old_master);
  const absl::Time switched = absl::Now();
  followed.store(true);
  absl::Time synced = absl::InfiniteFuture();  // the killed master back as a synced replica
  if (sc.kill) {
    // Restarted (empty: no AOF) with its nodes.conf, it rejoins as the new master's replica; not
    // promotable until its first sync (were the new master to flap meanwhile, the cluster would
    // promote an empty replica and every grant would be lost, WAIT or not).
    // The new master syncs it at once (repl-diskless-sync-delay 0): with WAIT, the outage
    // printed is the promotion plus this restart and sync.
    ASSERT_TRUE(group.RestartMaster(kFailed, {"--cluster-replica-no-failover", "yes"}).ok());
    ASSERT_TRUE(Eventually(
        [&] {
          absl::StatusOr<std::string> info = old_master.Command({"INFO", "replication"});
          return info.ok() &&
                 absl::StrContains(*info, absl::StrCat("master_port:", new_master.port())) &&
                 absl::StrContains(*info, "master_link_status:up");
        },
        absl::Seconds(30)))
        << "the restarted master did not sync from the new one";
    synced = absl::Now();
    ASSERT_TRUE(old_master.Command({"CONFIG", "SET", "cluster-replica-no-failover", "no"}).ok());
  }

  ASSERT_TRUE(Eventually([&] { return finished.load() == kClients; }, kClientDeadline))
      << finished.load() << " of " << kClients << " clients saw every limit after the failover";
  stop.store(true);
  for (std::thread& c : clients) c.join();

  // When the failed-over credential was granted through the new master (a request sent after
  // quotad was seen there), and its outage: its longest gap between two grants from the last
  // grant before the failover to that one.
  absl::Time resumed, gap_from = failover_start, gap_to = failover_start;
  {
    absl::MutexLock lock(&grants[kFailed].mu);
    resumed = grants[kFailed].first_after_followed;
    std::vector<absl::Time>& at = grants[kFailed].at;
    std::sort(at.begin(), at.end());
    for (size_t i = 1; i < at.size() && at[i - 1] < resumed; ++i) {
      if (at[i] >= failover_start && at[i] - at[i - 1] > gap_to - gap_from) {
        gap_from = at[i - 1];
        gap_to = at[i];
      }
    }
  }
  const absl::Time far = absl::InfiniteFuture(), past = absl::InfinitePast();
  std::vector<std::string> over, counts;
  int unavailable = 0;
  for (int m = 0; m < kMasters; ++m) {
    Grants& g = grants[m];
    over.push_back(absl::StrCat(creds_[m], m == kFailed ? " (failed over) " : " ",
                                std::max(g.Total() - kCapacity, 0)));
    counts.push_back(absl::StrCat(creds_[m], " ", g.CountIn(past, failover_start), "/",
                                  g.CountIn(failover_start, resumed), "/",
                                  g.CountIn(resumed, far)));
    unavailable += g.unavailable.load();
  }
  const auto secs = [&](absl::Time t) {
    return t == far ? -1.0 : absl::ToDoubleSeconds(t - failover_start);
  };
  std::printf(
      "[%s] over-grant %s; granted before/during/after the failover: %s (capacity %d each); "
      "%s granted through the new master %.2f s after the failover started (replica promoted "
      "and quotad on it after %.2f s, killed master restarted and synced as its replica after "
      "%s; longest gap without a grant %.2f s); %d UNAVAILABLE answers\n",
      sc.name, absl::StrJoin(over, ", ").c_str(), absl::StrJoin(counts, ", ").c_str(), kCapacity,
      creds_[kFailed].c_str(), secs(resumed), secs(switched),
      sc.kill ? absl::StrFormat("%.2f s", secs(synced)).c_str() : "-",
      absl::ToDoubleSeconds(gap_to - gap_from), unavailable);
  std::fflush(stdout);
  RecordProperty("over_grant", std::max(grants[kFailed].Total() - kCapacity, 0));

  EXPECT_EQ(other_errors.load(), 0) << other_error;
  EXPECT_EQ(HealthOf(), HealthCheckResponse::SERVING);
  // quotad followed the new master by itself: the failed-over credential was granted through
  // it, and it answers the limit reached there.
  EXPECT_NE(resumed, far) << "nothing granted on " << creds_[kFailed] << " after the failover";
  for (int m = 0; m < kMasters; ++m) {
    v1::AcquireResponse last;
    ASSERT_TRUE(Acquire(creds_[m], &last).ok()) << creds_[m];
    EXPECT_FALSE(last.granted()) << creds_[m];
    if (m == kFailed) continue;
    // The masters that did not fail over never over-grant, and kept granting meanwhile.
    EXPECT_LE(grants[m].Total(), kCapacity) << creds_[m] << " on master " << m;
    EXPECT_GT(grants[m].CountIn(failover_start, resumed), 0)
        << creds_[m] << " on master " << m << " was not granted while " << creds_[kFailed]
        << " failed over";
  }
  if (sc.wait_replicas > 0) {
    EXPECT_LE(grants[kFailed].Total(), kCapacity) << "WAIT must never over-grant";
  } else if (sc.stall_replica) {
    // The control of the WAIT case: the charges left unsent were granted, and the kill lost
    // them (were this 0, the oracle could not see a loss, and WAIT's 0 would prove nothing).
    EXPECT_GT(grants[kFailed].Total(), kCapacity)
        << "a kill behind a stalled replica lost no grant without WAIT";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Failover, ClusterFailoverTest,
    ::testing::Values(Scenario{"kill -9, no WAIT", true, false, 0},
                      Scenario{"kill -9, WAIT 1", true, false, 1},
                      Scenario{"kill -9 behind a stalled replica, no WAIT", true, true, 0},
                      Scenario{"kill -9 behind a stalled replica, WAIT 1", true, true, 1},
                      Scenario{"CLUSTER FAILOVER, no WAIT", false, false, 0},
                      Scenario{"CLUSTER FAILOVER, WAIT 1", false, false, 1}),
    [](const ::testing::TestParamInfo<Scenario>& info) {
      return std::string(info.param.kill ? "Kill9" : "ClusterFailover") +
             (info.param.stall_replica ? "StalledReplica" : "") +
             (info.param.wait_replicas > 0 ? "Wait" : "NoWait");
    });

}  // namespace
}  // namespace quotad

// Shared mode on Redis Cluster with WAIT (issue 13, --redis_wait_replicas with
// redis-cluster://): a real cluster on loopback, three masters with one replica each
// (ClusterGroup, replicas_per_master 1), started and stopped by the test. A grant on a
// credential of any master is answered only once that master's replica holds it. A master whose
// replica is gone hands nothing out for its credentials (WAIT's shortfall, kUnavailable; once
// the health check saw it, refused at once without a call to it) while the other masters keep
// granting; with every master short, NOT_SERVING; after the replicas are back, the same
// request_id's retry answers the first grant and charges nothing more. A quotad server starts
// with --redis_wait_replicas=1 over the cluster (Create no longer refuses it). Last, the cost:
// decisions/s with and without WAIT over the same cluster, printed (not asserted).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/cluster_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::BatchThrough;
using ::quotad::testing::ClusterGroup;
using ::quotad::testing::ClusterGroupOptions;
using ::quotad::testing::Eventually;
using ::quotad::testing::TempDir;

constexpr int kCredentials = 12;
// Generous, so that a loaded machine does not make WAIT fall short where a replica is up.
constexpr absl::Duration kWaitTimeout = absl::Seconds(1);

std::string Cred(int i) { return absl::StrCat("team/w", i); }

std::string Config() {
  std::string yaml = "credentials:\n";
  for (int i = 0; i < kCredentials; ++i) {
    absl::StrAppend(&yaml, "  - name: ", Cred(i), "\n", "    features:\n", "      - name: cal\n",
                    "        limits:\n",
                    "          - {name: daily, kind: calendar, unit: day, capacity: 100}\n",
                    "      - name: bulk\n", "        limits:\n",
                    "          - {name: daily, kind: calendar, unit: day, capacity: 1000000}\n",
                    "      - name: conc\n", "        default_lease_ttl: 60s\n", "        limits:\n",
                    "          - {name: slots, kind: concurrency, capacity: 5}\n");
  }
  return yaml;
}

// `req` through `backend` with `rid` as its request_id (none when empty), waited for.
absl::StatusOr<Decision> Acquire(RedisBackend& backend, const std::string& credential,
                                 const std::string& feature, const std::string& rid = "") {
  AcquireRequest req;
  req.credential = credential;
  req.feature = feature;
  const std::string fp = absl::StrCat(credential, "/", feature);
  absl::Notification done;
  absl::StatusOr<Decision> out;
  backend.AcquireShared(req, rid.empty() ? SharedRequestId{} : SharedRequestId{rid, rid, fp},
                        [&](absl::StatusOr<Decision> d) {
                          out = std::move(d);
                          done.Notify();
                        });
  done.WaitForNotification();
  return out;
}

class ClusterWaitTest : public ::testing::Test {
 protected:
  // One cluster for the suite (starting six nodes takes seconds): each test uses its own
  // features or credentials' counts, and a test that stops a replica starts it again.
  static void SetUpTestSuite() {
    ClusterGroupOptions o;
    o.replicas_per_master = 1;
    absl::StatusOr<std::unique_ptr<ClusterGroup>> group = ClusterGroup::Start(o);
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = std::move(*group).release();
  }
  static void TearDownTestSuite() {
    delete group_;
    group_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(group_, nullptr);
    for (int m = 0; m < group_->size(); ++m) {
      ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(m) == 1; }, absl::Seconds(10)))
          << "master " << m << "'s replica";
    }
    absl::StatusOr<Policy> policy = LoadPolicyFromString(Config(), "cluster_wait_test");
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
    // Which master serves each credential: every master has some.
    std::vector<int> per(group_->size(), 0);
    for (int i = 0; i < kCredentials; ++i) {
      master_of_.push_back(group_->OwnerOf(redis::KeySlot(redis::StateKey(Cred(i)))));
      ++per[master_of_.back()];
    }
    for (int m = 0; m < group_->size(); ++m) ASSERT_GT(per[m], 0) << "master " << m;
  }

  std::unique_ptr<RedisBackend> Backend(int wait_replicas) {
    RedisBackendOptions options;
    options.url = group_->url();
    options.connect_wait = absl::Seconds(5);
    options.wait_replicas = wait_replicas;
    options.wait_timeout = kWaitTimeout;
    absl::StatusOr<std::unique_ptr<RedisBackend>> b =
        RedisBackend::Create(policy_, Clock::Real(), options);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return nullptr;
    EXPECT_TRUE(Eventually([&] { return (*b)->CheckHealth(); }, absl::Seconds(10)))
        << "the backend never served";
    return *std::move(b);
  }

  // The first credential served by master `m`.
  int CredOn(int m) const {
    for (int i = 0; i < kCredentials; ++i) {
      if (master_of_[i] == m) return i;
    }
    return -1;
  }

  // The credential's state hash on its master and on that master's replica.
  std::string OnMaster(int i) {
    absl::StatusOr<std::string> v =
        group_->node(master_of_[i]).Command({"HGETALL", redis::StateKey(Cred(i))});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  }
  std::string OnReplica(int i) {
    absl::StatusOr<std::string> v =
        group_->ReadOnReplica(master_of_[i], 0, {"HGETALL", redis::StateKey(Cred(i))});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  }

  // The leases of feature conc (the other features' grants are leases too, until their TTL).
  static std::vector<LeaseInfo> ConcLeases(const std::vector<LeaseInfo>& all) {
    std::vector<LeaseInfo> out;
    for (const LeaseInfo& l : all) {
      if (l.feature == "conc") out.push_back(l);
    }
    return out;
  }

  int64_t Used(RedisBackend& backend, int i, const std::string& limit) {
    absl::StatusOr<std::vector<LimitStatus>> usage = backend.Usage(Cred(i));
    EXPECT_TRUE(usage.ok()) << usage.status();
    if (!usage.ok()) return -1;
    for (const LimitStatus& l : *usage) {
      if (l.name == limit) return l.used;
    }
    return 0;
  }

  static ClusterGroup* group_;
  Policy policy_;
  std::vector<int> master_of_;  // by credential
};

ClusterGroup* ClusterWaitTest::group_ = nullptr;

// (a) Every grant, on every master, is on that master's replica when it is answered.
TEST_F(ClusterWaitTest, GrantsOnEveryMasterAreOnItsReplicaWhenAnswered) {
  std::unique_ptr<RedisBackend> backend = Backend(1);
  ASSERT_NE(backend, nullptr);
  EXPECT_TRUE(absl::StrContains(backend->description(), "WAIT 1 replica(s)"))
      << backend->description();
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kCredentials; ++i) {
      absl::StatusOr<Decision> d = Acquire(*backend, Cred(i), "cal");
      ASSERT_TRUE(d.ok()) << Cred(i) << ": " << d.status();
      ASSERT_TRUE(d->granted) << Cred(i);
      // Read at once, no waiting: WAIT acknowledged it before the answer.
      const std::string master = OnMaster(i);
      EXPECT_FALSE(master.empty() || master == "(nil)") << Cred(i);
      EXPECT_EQ(OnReplica(i), master) << Cred(i) << " on master " << master_of_[i];
    }
  }
  for (int i = 0; i < kCredentials; ++i) EXPECT_EQ(Used(*backend, i, "cal.daily"), 3) << Cred(i);
}

// (b) A master without its replica hands nothing out while the others keep granting; with no
// master able to grant, NOT_SERVING; the replicas back, a retry gets the first grant.
TEST_F(ClusterWaitTest, MasterWithoutItsReplicaHandsNothingOutAndRetryGetsTheFirstGrant) {
  std::unique_ptr<RedisBackend> backend = Backend(1);
  ASSERT_NE(backend, nullptr);
  const int a = CredOn(0), b = CredOn(1);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);

  ASSERT_TRUE(group_->replica(0).Stop(SIGKILL).ok());
  ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(0) == 0; }));

  // Before any health check: WAIT itself refuses to answer master 0's grant as made.
  absl::StatusOr<Decision> first = Acquire(*backend, Cred(a), "conc", "rid-a");
  ASSERT_FALSE(first.ok()) << "granted with no replica to acknowledge it";
  EXPECT_EQ(first.status().code(), absl::StatusCode::kUnavailable) << first.status();
  EXPECT_TRUE(absl::StrContains(first.status().message(), "WAIT")) << first.status();
  EXPECT_TRUE(absl::StrContains(first.status().message(), "0 of 1")) << first.status();
  // Redis did grant it (a retry of rid-a is answered it below): not "nothing was granted".
  EXPECT_FALSE(absl::StrContains(first.status().message(), "nothing was granted"))
      << first.status();
  EXPECT_TRUE(absl::StrContains(first.status().message(), "stays charged")) << first.status();
  // Master 1's credentials are still granted.
  absl::StatusOr<Decision> other = Acquire(*backend, Cred(b), "conc");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(other->granted);

  // The health check sees master 0 short: still SERVING (two masters can grant), master 0's
  // credentials refused at once (no FCALL sent), master 1's granted.
  EXPECT_TRUE(backend->CheckHealth());
  const int64_t fcalls = group_->node(0).Calls("fcall");
  absl::StatusOr<Decision> refused = Acquire(*backend, Cred(a), "conc");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(
      absl::StrContains(refused.status().message(), "fewer replicas connected than WAIT needs"))
      << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                absl::StrCat("127.0.0.1:", group_->node(0).port())))
      << refused.status();
  EXPECT_EQ(group_->node(0).Calls("fcall"), fcalls) << "a call was sent to the short master";
  other = Acquire(*backend, Cred(b), "conc");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_TRUE(other->granted);
  // Batches too: master 0's item refused at once, master 1's decided; an all-or-nothing batch
  // naming master 0's credential refused whole.
  const std::string cred_a = Cred(a), cred_b = Cred(b);  // the requests view them
  std::vector<AcquireRequest> items(2);
  items[0].credential = cred_a;
  items[1].credential = cred_b;
  for (AcquireRequest& item : items) item.feature = "conc";
  const std::vector<SharedRequestId> no_ids(2);
  std::vector<absl::StatusOr<Decision>> batch =
      BatchThrough(*backend, items, no_ids, /*all_or_nothing=*/false);
  EXPECT_TRUE(absl::IsUnavailable(batch[0].status())) << batch[0].status();
  EXPECT_TRUE(absl::StrContains(batch[0].status().message(), "fewer replicas"))
      << batch[0].status();
  ASSERT_TRUE(batch[1].ok()) << batch[1].status();
  EXPECT_TRUE(batch[1]->granted);
  batch = BatchThrough(*backend, items, no_ids, /*all_or_nothing=*/true);
  EXPECT_TRUE(absl::IsUnavailable(batch[0].status())) << batch[0].status();
  EXPECT_TRUE(batch[1].ok() && !batch[1]->granted) << "granted beside a refused item";
  EXPECT_EQ(group_->node(0).Calls("fcall"), fcalls) << "a batch was sent to the short master";

  // Every master short: NOT_SERVING, every decision refused at once.
  for (int m = 1; m < group_->size(); ++m) {
    ASSERT_TRUE(group_->replica(m).Stop(SIGKILL).ok());
    ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(m) == 0; }));
  }
  EXPECT_FALSE(backend->CheckHealth());
  refused = Acquire(*backend, Cred(b), "conc");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(
      absl::StrContains(refused.status().message(), "fewer replicas connected than WAIT needs"))
      << refused.status();

  // The replicas back (each resyncs from its master): serving again.
  for (int m = 0; m < group_->size(); ++m) {
    ASSERT_TRUE(group_->replica(m).Restart().ok());
    ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(m) == 1; }, absl::Seconds(10)));
  }
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  EXPECT_TRUE(Acquire(*backend, Cred(a), "cal").ok());

  // The unacknowledged first attempt did charge master 0 (it ran; only WAIT fell short).
  absl::StatusOr<std::vector<LeaseInfo>> leases = backend->Leases(Cred(a));
  ASSERT_TRUE(leases.ok()) << leases.status();
  ASSERT_EQ(ConcLeases(*leases).size(), 1u);
  const LeaseId held = ConcLeases(*leases)[0].id;
  // The same request_id: the first grant, nothing more charged, and now on the replica too.
  absl::StatusOr<Decision> retry = Acquire(*backend, Cred(a), "conc", "rid-a");
  ASSERT_TRUE(retry.ok()) << retry.status();
  EXPECT_TRUE(retry->granted);
  EXPECT_EQ(retry->lease_id.ToString(), held.ToString());
  EXPECT_EQ(Used(*backend, a, "conc.slots"), 1);
  leases = backend->Leases(Cred(a));
  ASSERT_TRUE(leases.ok()) << leases.status();
  EXPECT_EQ(ConcLeases(*leases).size(), 1u);
  EXPECT_EQ(OnReplica(a), OnMaster(a));
}

// (c) --redis_wait_replicas with redis-cluster:// is accepted, end to end through a server.
TEST_F(ClusterWaitTest, ServerStartsWithWaitOverClusterAndGrants) {
  TempDir dir;
  ServerOptions options =
      testing::SharedServerOptions(dir.WriteFile("quotad.yaml", Config()), group_->url());
  options.redis_wait_replicas = 1;
  options.redis_wait_timeout = kWaitTimeout;
  absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(testing::ServesWithin((*server)->address()));
  auto quota = v1::Quota::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < kCredentials; ++i) {
    v1::AcquireRequest req;
    req.set_credential(Cred(i));
    req.set_feature("bulk");
    v1::AcquireResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::Status s = quota->Acquire(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << Cred(i) << ": " << s.error_message();
    EXPECT_TRUE(resp.granted()) << Cred(i);
    EXPECT_EQ(OnReplica(i), OnMaster(i)) << Cred(i);
  }
}

// The cost of WAIT over the cluster: the same decisions with and without it, side by side,
// one at a time (the replica round trip per call) and 64 in flight (one WAIT per batch of a
// connection's calls). Figures printed, not asserted; every decision must be a grant, and the
// masters must have run WAIT only when asked to.
// Calls in flight and answered, under the run's mutex.
struct Counts {
  int most;       // in flight at once
  int decisions;  // to send
  int in_flight = 0, answered = 0, granted = 0;
  static bool Room(Counts* c) { return c->in_flight < c->most; }
  static bool AllAnswered(Counts* c) { return c->answered == c->decisions; }
};

TEST_F(ClusterWaitTest, CostOfWaitIsMeasured) {
  struct Run {
    int in_flight;
    int decisions;
  };
  std::string figures;
  for (const Run run : {Run{1, 500}, Run{64, 6000}}) {
    for (int wait : {0, 1}) {
      std::unique_ptr<RedisBackend> backend = Backend(wait);
      ASSERT_NE(backend, nullptr);
      int64_t waits_before = 0;
      for (int m = 0; m < group_->size(); ++m) waits_before += group_->node(m).Calls("wait");
      absl::Mutex mu;
      Counts c{run.in_flight, run.decisions};
      int& in_flight = c.in_flight;
      int& answered = c.answered;
      int& granted = c.granted;
      const absl::Time start = absl::Now();
      // This thread sends; answers only count (a callback runs on a client's loop thread).
      for (int n = 0; n < run.decisions; ++n) {
        {
          absl::MutexLock lock(&mu);
          ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&Counts::Room, &c), absl::Seconds(10)))
              << "no answer for 10s at decision " << n;
          ++in_flight;
        }
        AcquireRequest req;
        const std::string credential = Cred(n % kCredentials);
        req.credential = credential;
        req.feature = "bulk";
        req.want_limits = false;
        backend->AcquireShared(req, SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
          absl::MutexLock lock(&mu);
          --in_flight;
          ++answered;
          if (d.ok() && d->granted) ++granted;
        });
      }
      {
        absl::MutexLock lock(&mu);
        ASSERT_TRUE(
            mu.AwaitWithTimeout(absl::Condition(&Counts::AllAnswered, &c), absl::Seconds(10)))
            << "answered " << answered << " of " << run.decisions;
      }
      const absl::Duration took = absl::Now() - start;
      int64_t waits = -waits_before;
      for (int m = 0; m < group_->size(); ++m) waits += group_->node(m).Calls("wait");
      EXPECT_EQ(granted, run.decisions) << "wait_replicas=" << wait;
      if (wait == 0) {
        EXPECT_EQ(waits, 0);
      } else {
        EXPECT_GT(waits, 0);
        EXPECT_LE(waits, run.decisions);
      }
      absl::StrAppend(&figures, "  in flight ", run.in_flight, ", wait_replicas=", wait, ": ",
                      run.decisions, " decisions in ", absl::FormatDuration(took), " = ",
                      static_cast<int64_t>(run.decisions / absl::ToDoubleSeconds(took)),
                      " decisions/s, ", absl::FormatDuration(took / run.decisions),
                      " each; WAITs run by the masters: ", waits, "\n");
    }
  }
  std::cout << "Cluster (3 masters + 1 replica each, loopback), AcquireShared on 12 "
               "credentials:\n"
            << figures;
}

}  // namespace
}  // namespace quotad

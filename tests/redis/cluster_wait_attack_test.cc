// Attacks on WAIT with Redis Cluster (--redis_wait_replicas over redis-cluster://): a real
// cluster on loopback, three masters with one replica each (ClusterGroup, replicas_per_master
// 1), started once for the suite and stopped by it. What each test tries to get out of quotad
// is a grant no replica acknowledged, or more than a limit allows:
//  - a replica killed after the last health check (the short-master set stale): single calls,
//    batches (AcquireManyShared, AcquireAllShared), a waiter woken by a release, and a renewal
//    moving an expiry later, all on the master without its replica;
//  - the request_id of an unacknowledged grant retried through AcquireShared, a batch and a
//    waiter while the replica is still gone, then once it is back (the first lease only);
//  - the slot of a credential migrated (ClusterGroup::MigrateSlot) while WAIT calls and their
//    retries are sent into the split slot (ASK is not followed with WAIT);
//  - a fail_open credential on a short master (only fail-open leases, never the Redis one);
//  - a credential's slot moved off a short master onto one that can grant, and the reverse;
//  - two backends (two quotad replicas) on one concurrency limit while the replica is killed
//    and restarted, one of them never told by a health check;
//  - last, master 0 killed with grants in flight and its replica taking over: every lease
//    handed out survives, and the capacity holds across the failover.
// One defect found, now fixed: a credential whose slot moved off a short master stayed refused
// as that master's for as long as it was short (a refused credential sends no call, so no MOVED
// corrected the map); CheckClusterHealth now reads the map anew while any master is short.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/cluster_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace {

using ::quotad::testing::ClusterGroup;
using ::quotad::testing::ClusterGroupOptions;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;

constexpr int kCredentials = 30;
constexpr int kSlots = 5;
constexpr absl::Duration kWaitTimeout = absl::Milliseconds(500);

std::string Cred(int i) { return absl::StrCat("team/x", i); }

std::string Config() {
  std::string yaml = "credentials:\n";
  for (int i = 0; i < kCredentials; ++i) {
    absl::StrAppend(&yaml, "  - name: ", Cred(i), "\n", "    features:\n", "      - name: conc\n",
                    "        default_lease_ttl: 60s\n", "        max_lease_ttl: 1h\n",
                    "        limits:\n",
                    "          - {name: slots, kind: concurrency, capacity: ", kSlots, "}\n");
  }
  return yaml;
}

AcquireRequest Req(const std::string& credential) {
  AcquireRequest req;
  req.credential = credential;
  req.feature = "conc";
  return req;
}

SharedRequestId Rid(const std::string& rid, const std::string& credential) {
  // The strings live in a static set: SharedRequestId holds views.
  static absl::Mutex mu;
  static std::set<std::string>* keep = new std::set<std::string>;
  absl::MutexLock lock(&mu);
  const std::string& k = *keep->insert(rid).first;
  const std::string& fp = *keep->insert(absl::StrCat(credential, "/conc")).first;
  return rid.empty() ? SharedRequestId{} : SharedRequestId{k, k, fp};
}

absl::StatusOr<Decision> Acquire(RedisBackend& backend, const std::string& credential,
                                 const std::string& rid = "") {
  absl::Notification done;
  absl::StatusOr<Decision> out;
  backend.AcquireShared(Req(credential), Rid(rid, credential), [&](absl::StatusOr<Decision> d) {
    out = std::move(d);
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

absl::StatusOr<Decision> AcquireWaiting(RedisBackend& backend, const std::string& credential,
                                        absl::Duration max_wait, const std::string& rid = "") {
  absl::Notification done;
  absl::StatusOr<Decision> out;
  backend.AcquireSharedOrWait(Req(credential), Rid(rid, credential), max_wait, 0,
                              [&](absl::StatusOr<Decision> d) {
                                out = std::move(d);
                                done.Notify();
                              });
  done.WaitForNotification();
  return out;
}

std::vector<absl::StatusOr<Decision>> Batch(RedisBackend& backend, bool all,
                                            const std::vector<std::string>& credentials,
                                            const std::vector<std::string>& rids) {
  std::vector<AcquireRequest> reqs;
  std::vector<SharedRequestId> ids;
  for (size_t i = 0; i < credentials.size(); ++i) {
    reqs.push_back(Req(credentials[i]));
    ids.push_back(Rid(rids[i], credentials[i]));
  }
  absl::Notification done;
  std::vector<absl::StatusOr<Decision>> out;
  auto cb = [&](std::vector<absl::StatusOr<Decision>> d) {
    out = std::move(d);
    done.Notify();
  };
  if (all) {
    backend.AcquireAllShared(reqs, ids, cb);
  } else {
    backend.AcquireManyShared(reqs, ids, cb);
  }
  done.WaitForNotification();
  return out;
}

bool Granted(const absl::StatusOr<Decision>& d) { return d.ok() && d->granted; }

std::string Show(const absl::StatusOr<Decision>& d) {
  if (!d.ok()) return d.status().ToString();
  return d->granted ? absl::StrCat("granted ", d->lease_id.ToString())
                    : absl::StrCat("denied by ", d->limited_by);
}

class ClusterWaitAttackTest : public ::testing::Test {
 protected:
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
    absl::StatusOr<Policy> policy = LoadPolicyFromString(Config(), "cluster_wait_attack_test");
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
  }

  std::unique_ptr<RedisBackend> Backend() { return Backend(policy_); }
  std::unique_ptr<RedisBackend> Backend(const Policy& policy) {
    RedisBackendOptions options;
    options.url = group_->url();
    options.connect_wait = absl::Seconds(5);
    options.wait_replicas = 1;
    options.wait_timeout = kWaitTimeout;
    options.wait_beat = absl::Milliseconds(200);
    absl::StatusOr<std::unique_ptr<RedisBackend>> b =
        RedisBackend::Create(policy, Clock::Real(), options);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return nullptr;
    EXPECT_TRUE(Eventually([&] { return (*b)->CheckHealth(); }, absl::Seconds(10)))
        << "the backend never served";
    return *std::move(b);
  }

  static int MasterOf(const std::string& credential) {
    return group_->OwnerOf(redis::KeySlot(redis::StateKey(credential)));
  }
  // A credential served by master `m` that no test used before (each test takes its own).
  static std::string FreshCredOn(int m) {
    for (; next_ < kCredentials; ++next_) {
      if (MasterOf(Cred(next_)) == m) return Cred(next_++);
    }
    ADD_FAILURE() << "no credential left on master " << m;
    return Cred(0);
  }

  static void KillReplica(int m) {
    ASSERT_TRUE(group_->replica(m).Stop(SIGKILL).ok());
    ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(m) == 0; }));
  }
  static void RestartReplica(int m) {
    ASSERT_TRUE(group_->replica(m).Restart().ok());
    ASSERT_TRUE(Eventually([&] { return group_->OnlineReplicas(m) == 1; }, absl::Seconds(10)));
  }

  // The credential's state hash on its master and on that master's replica.
  static std::string OnMaster(const std::string& credential) {
    absl::StatusOr<std::string> v =
        group_->node(MasterOf(credential)).Command({"HGETALL", redis::StateKey(credential)});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  }
  static std::string OnReplica(const std::string& credential) {
    absl::StatusOr<std::string> v =
        group_->ReadOnReplica(MasterOf(credential), 0, {"HGETALL", redis::StateKey(credential)});
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : "";
  }
  // A handed-out lease must be on the replica when it is answered: its lease key exists there.
  static bool LeaseOnReplica(const std::string& credential, const Decision& d) {
    absl::StatusOr<std::string> v = group_->ReadOnReplica(
        MasterOf(credential), 0, {"EXISTS", redis::LeaseKey(credential, d.lease_id.ToString())});
    return v.ok() && *v == "1";
  }

  std::vector<std::string> ConcLeases(RedisBackend& backend, const std::string& credential) {
    absl::StatusOr<std::vector<LeaseInfo>> all = backend.Leases(credential);
    EXPECT_TRUE(all.ok()) << all.status();
    std::vector<std::string> out;
    if (!all.ok()) return out;
    for (const LeaseInfo& l : *all) {
      if (l.feature == "conc") out.push_back(l.id.ToString());
    }
    return out;
  }

  int64_t Used(RedisBackend& backend, const std::string& credential) {
    absl::StatusOr<std::vector<LimitStatus>> usage = backend.Usage(credential);
    EXPECT_TRUE(usage.ok()) << usage.status();
    if (!usage.ok()) return -1;
    for (const LimitStatus& l : *usage) {
      if (l.name == "conc.slots") return l.used;
    }
    return 0;
  }

  static ClusterGroup* group_;
  static int next_;
  Policy policy_;
};

ClusterGroup* ClusterWaitAttackTest::group_ = nullptr;
int ClusterWaitAttackTest::next_ = 0;

// The replica of master 0 killed after the last health check (its short-master set still
// empty): a single call, both kinds of batch and a renewal moving the expiry later get nothing
// handed out for master 0's credential; master 1's credential in the same batch is granted.
TEST_F(ClusterWaitAttackTest, StaleShortSetStillHandsOutNothingUnacknowledged) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string a = FreshCredOn(0), b = FreshCredOn(1);
  absl::StatusOr<Decision> held = Acquire(*backend, a);
  ASSERT_TRUE(Granted(held)) << Show(held);
  ASSERT_TRUE(LeaseOnReplica(a, *held));

  KillReplica(0);
  // No CheckHealth: ShortMasterOf still says master 0 can grant; only WAIT stands in the way.
  absl::StatusOr<Decision> one = Acquire(*backend, a);
  EXPECT_FALSE(Granted(one)) << "granted unacknowledged: " << Show(one);
  EXPECT_EQ(one.status().code(), absl::StatusCode::kUnavailable) << Show(one);

  std::vector<absl::StatusOr<Decision>> many = Batch(*backend, false, {a, b, a}, {"", "", ""});
  ASSERT_EQ(many.size(), 3u);
  EXPECT_FALSE(Granted(many[0])) << "batch item on master 0: " << Show(many[0]);
  EXPECT_TRUE(Granted(many[1])) << "batch item on master 1: " << Show(many[1]);
  EXPECT_FALSE(Granted(many[2])) << "batch item on master 0: " << Show(many[2]);
  if (Granted(many[1])) {
    EXPECT_TRUE(LeaseOnReplica(b, *many[1]));
  }

  std::vector<absl::StatusOr<Decision>> all = Batch(*backend, true, {a, a}, {"", ""});
  ASSERT_EQ(all.size(), 2u);
  for (const auto& d : all) EXPECT_FALSE(Granted(d)) << "all-or-nothing: " << Show(d);

  // A renewal moving the held lease's expiry later (1h instead of 60s) is not answered.
  absl::StatusOr<absl::Time> renewed = backend->Renew(held->lease_id, absl::Hours(1));
  EXPECT_FALSE(renewed.ok()) << "renewal to " << *renewed << " answered unacknowledged";

  // The health check sees it now: refused at once, the same as before.
  EXPECT_TRUE(backend->CheckHealth());
  one = Acquire(*backend, a);
  EXPECT_FALSE(Granted(one)) << Show(one);
  many = Batch(*backend, false, {a}, {""});
  ASSERT_EQ(many.size(), 1u);
  EXPECT_FALSE(Granted(many[0])) << Show(many[0]);

  RestartReplica(0);
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  // Charged in Redis: the held lease plus what the unacknowledged calls took, never more.
  EXPECT_LE(Used(*backend, a), kSlots);
  EXPECT_EQ(OnReplica(a), OnMaster(a));
}

// A waiter parked on a full limit of master 0 is woken by a release after the replica died:
// its grant cannot be acknowledged and must not be handed out (answered denied or an error by
// its max_wait).
TEST_F(ClusterWaitAttackTest, WaiterWokenOnAShortMasterGetsNothingUnacknowledged) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string a = FreshCredOn(0);
  std::vector<LeaseId> held;
  for (int i = 0; i < kSlots; ++i) {
    absl::StatusOr<Decision> d = Acquire(*backend, a);
    ASSERT_TRUE(Granted(d)) << Show(d);
    held.push_back(d->lease_id);
  }
  absl::Mutex mu;
  bool answered = false;
  absl::StatusOr<Decision> out;
  backend->AcquireSharedOrWait(Req(a), SharedRequestId{}, absl::Seconds(2), 0,
                               [&](absl::StatusOr<Decision> d) {
                                 absl::MutexLock lock(&mu);
                                 out = std::move(d);
                                 answered = true;
                               });
  // Parked (its place in Redis's queue known) before the replica goes.
  ASSERT_TRUE(Eventually([&] { return backend->wait_stats().placed >= 1; }));
  KillReplica(0);
  ASSERT_TRUE(backend->Release(held[0], std::nullopt).ok());
  {
    absl::MutexLock lock(&mu);
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&answered), absl::Seconds(10)))
        << "the waiter was never answered";
    EXPECT_FALSE(Granted(out)) << "a waiter was handed an unacknowledged grant: " << Show(out);
  }
  RestartReplica(0);
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  EXPECT_LE(Used(*backend, a), kSlots);
}

// The request_id of an unacknowledged grant, retried through every path while the replica is
// still gone: nothing handed out, and no second lease charged; once the replica is back, every
// path answers the first lease.
TEST_F(ClusterWaitAttackTest, RetriesOfAnUnacknowledgedGrantNeverGetASecondLease) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string a = FreshCredOn(2);
  KillReplica(2);
  absl::StatusOr<Decision> first = Acquire(*backend, a, "rid-retry");
  ASSERT_FALSE(Granted(first)) << Show(first);
  EXPECT_EQ(Used(*backend, a), 1) << "the first attempt ran (only WAIT fell short)";
  // Still short, no health check: each path must neither answer it nor charge again.
  absl::StatusOr<Decision> again = Acquire(*backend, a, "rid-retry");
  EXPECT_FALSE(Granted(again)) << "retry answered unacknowledged: " << Show(again);
  std::vector<absl::StatusOr<Decision>> many = Batch(*backend, false, {a}, {"rid-retry"});
  ASSERT_EQ(many.size(), 1u);
  EXPECT_FALSE(Granted(many[0])) << "batch retry answered unacknowledged: " << Show(many[0]);
  absl::StatusOr<Decision> waited = AcquireWaiting(*backend, a, absl::Seconds(1), "rid-retry");
  EXPECT_FALSE(Granted(waited)) << "waiting retry answered unacknowledged: " << Show(waited);
  EXPECT_EQ(Used(*backend, a), 1) << "a retry charged a second lease";

  RestartReplica(2);
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  const std::vector<std::string> leases = ConcLeases(*backend, a);
  ASSERT_EQ(leases.size(), 1u);
  absl::StatusOr<Decision> retry = Acquire(*backend, a, "rid-retry");
  ASSERT_TRUE(Granted(retry)) << Show(retry);
  EXPECT_EQ(retry->lease_id.ToString(), leases[0]);
  EXPECT_TRUE(LeaseOnReplica(a, *retry));
  many = Batch(*backend, false, {a}, {"rid-retry"});
  ASSERT_EQ(many.size(), 1u);
  ASSERT_TRUE(Granted(many[0])) << Show(many[0]);
  EXPECT_EQ(many[0]->lease_id.ToString(), leases[0]);
  waited = AcquireWaiting(*backend, a, absl::Seconds(1), "rid-retry");
  ASSERT_TRUE(Granted(waited)) << Show(waited);
  EXPECT_EQ(waited->lease_id.ToString(), leases[0]);
  EXPECT_EQ(Used(*backend, a), 1);
  EXPECT_EQ(ConcLeases(*backend, a).size(), 1u);
}

// The credential's slot moved from master 0 to master 1 while WAIT calls (each sent twice with
// one request_id) go into the split slot: every call is answered, a request_id's two answers
// are one lease, and no more leases than the capacity exist.
TEST_F(ClusterWaitAttackTest, SlotMigratedWhileWaitCallsRunGrantsOnceAndAnswersAll) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string a = FreshCredOn(0);
  // Keys in the slot first (the state hash, a lease, its locator), so that the migration has
  // batches to go between.
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Decision> d = Acquire(*backend, a);
    ASSERT_TRUE(Granted(d)) << Show(d);
  }
  const int slot = redis::KeySlot(redis::StateKey(a));
  absl::Mutex mu;
  struct Answer {
    std::string rid;
    absl::StatusOr<Decision> d;
  };
  std::vector<Answer> answers;
  int sent = 0;
  auto send = [&](const std::string& rid) {
    ++sent;
    backend->AcquireShared(Req(a), Rid(rid, a), [&, rid](absl::StatusOr<Decision> d) {
      absl::MutexLock lock(&mu);
      answers.push_back({rid, std::move(d)});
    });
  };
  absl::Status moved = group_->MigrateSlot(slot, 1, 1, [&](int n) {
    const std::string rid = absl::StrCat("mig-", n);
    send(rid);
    send(rid);
  });
  ASSERT_TRUE(moved.ok()) << moved;
  ASSERT_EQ(group_->OwnerOf(slot), 1);
  send("mig-after");
  send("mig-after");
  {
    absl::MutexLock lock(&mu);
    auto all_in = [&] { return static_cast<int>(answers.size()) == sent; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all_in), absl::Seconds(15)))
        << answers.size() << " of " << sent << " answered";
  }
  std::map<std::string, std::string> lease_of_rid;
  std::set<std::string> handed;
  for (const Answer& x : answers) {
    if (!Granted(x.d)) continue;
    const std::string id = x.d->lease_id.ToString();
    auto [it, added] = lease_of_rid.try_emplace(x.rid, id);
    EXPECT_EQ(it->second, id) << x.rid << " answered two leases";
    handed.insert(id);
  }
  std::string seen;
  for (const Answer& x : answers) absl::StrAppend(&seen, "  ", x.rid, ": ", Show(x.d), "\n");
  EXPECT_GT(handed.size(), 0u) << "nothing granted after the migration";
  std::cout << sent << " calls into the migrating slot:\n" << seen;
  const std::vector<std::string> leases = ConcLeases(*backend, a);
  EXPECT_LE(handed.size() + 2, static_cast<size_t>(kSlots));
  EXPECT_LE(leases.size(), static_cast<size_t>(kSlots));
  for (const std::string& id : handed) {
    EXPECT_NE(std::find(leases.begin(), leases.end(), id), leases.end())
        << "handed-out lease " << id << " is not in the store";
    absl::StatusOr<LeaseId> parsed = LeaseId::Parse(id);
    ASSERT_TRUE(parsed.ok());
    Decision d;
    d.lease_id = *parsed;
    EXPECT_TRUE(LeaseOnReplica(a, d)) << id << " not on the new master's replica";
  }
  EXPECT_EQ(Used(*backend, a), static_cast<int64_t>(leases.size()));
  EXPECT_EQ(OnReplica(a), OnMaster(a));
}

// The slot of a credential whose master (1) is short of replicas migrates to a master (2) that
// has its replica: the credential is no longer refused once a health check has run (it does
// not stay refused on the old master's account), and what it is granted is on master 2's
// replica. Then the reverse: a credential of healthy master 2 moved onto short master 1 is
// never handed an unacknowledged grant, even before the client's map knows of the move.
TEST_F(ClusterWaitAttackTest, SlotMovedOffAndOntoAShortMaster) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string off = FreshCredOn(1), onto = FreshCredOn(2);
  ASSERT_TRUE(Granted(Acquire(*backend, off)));
  ASSERT_TRUE(Granted(Acquire(*backend, onto)));
  KillReplica(1);
  EXPECT_TRUE(backend->CheckHealth());
  absl::StatusOr<Decision> d = Acquire(*backend, off);
  ASSERT_FALSE(Granted(d)) << Show(d);

  // Off: master 1 -> master 2.
  ASSERT_TRUE(group_->MigrateSlot(redis::KeySlot(redis::StateKey(off)), 2).ok());
  ASSERT_EQ(MasterOf(off), 2);
  bool granted = Eventually(
      [&] {
        backend->CheckHealth();
        d = Acquire(*backend, off);
        return Granted(d);
      },
      absl::Seconds(10));
  EXPECT_TRUE(granted) << "still refused after its slot left the short master: " << Show(d);
  if (granted) {
    EXPECT_TRUE(LeaseOnReplica(off, *d));
  }

  // Onto: master 2 -> master 1 (short); the backend's map still says master 2.
  ASSERT_TRUE(group_->MigrateSlot(redis::KeySlot(redis::StateKey(onto)), 1).ok());
  ASSERT_EQ(MasterOf(onto), 1);
  for (int i = 0; i < 3; ++i) {
    d = Acquire(*backend, onto);
    EXPECT_FALSE(Granted(d)) << "granted on the short master: " << Show(d);
    backend->CheckHealth();
  }
  RestartReplica(1);
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  EXPECT_LE(Used(*backend, onto), kSlots);
  EXPECT_EQ(OnReplica(onto), OnMaster(onto));
}

// A fail_open credential on master 1 without its replica: before the health check (WAIT falls
// short) and after it (refused at once) it may be granted only fail open (a lease marked as not
// held in Redis, IsFailOpenLease), never the unacknowledged Redis lease; the same request_id
// retried once the replica is back answers the one lease Redis charged, no second one.
TEST_F(ClusterWaitAttackTest, FailOpenCredentialOnAShortMasterNeverGetsTheUnacknowledgedLease) {
  const std::string f = FreshCredOn(1);
  Policy policy = policy_;
  for (CredentialSpec& c : policy.credentials) c.fail_open = c.name == f;
  std::unique_ptr<RedisBackend> backend = Backend(policy);
  ASSERT_NE(backend, nullptr);
  KillReplica(1);
  absl::StatusOr<Decision> d = Acquire(*backend, f, "fo-1");
  if (Granted(d)) {
    EXPECT_TRUE(RedisBackend::IsFailOpenLease(d->lease_id))
        << "the unacknowledged Redis lease was handed out: " << Show(d);
  }
  EXPECT_EQ(Used(*backend, f), 1) << "the FCALL ran once (only WAIT fell short)";
  EXPECT_TRUE(backend->CheckHealth());
  d = Acquire(*backend, f, "fo-2");
  if (Granted(d)) {
    EXPECT_TRUE(RedisBackend::IsFailOpenLease(d->lease_id)) << Show(d);
  }
  EXPECT_EQ(Used(*backend, f), 1) << "refused at once: no FCALL";

  RestartReplica(1);
  ASSERT_TRUE(Eventually([&] { return backend->CheckHealth(); }, absl::Seconds(10)));
  const std::vector<std::string> leases = ConcLeases(*backend, f);
  ASSERT_EQ(leases.size(), 1u);
  d = Acquire(*backend, f, "fo-1");
  ASSERT_TRUE(Granted(d)) << Show(d);
  EXPECT_EQ(d->lease_id.ToString(), leases[0]);
  EXPECT_TRUE(LeaseOnReplica(f, *d));
  EXPECT_EQ(Used(*backend, f), 1);
}

// Two backends (two quotad replicas) on one concurrency limit of master 2; its replica killed
// (only the first backend told by a health check) and restarted. Every lease handed out is on
// the replica when answered, and no more than the capacity are handed out in all.
TEST_F(ClusterWaitAttackTest, TwoBackendsNeverOverCapacityWhileTheReplicaComesAndGoes) {
  std::unique_ptr<RedisBackend> first = Backend();
  std::unique_ptr<RedisBackend> second = Backend();
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  const std::string a = FreshCredOn(2);
  RedisBackend* backends[2] = {first.get(), second.get()};
  std::set<std::string> handed;
  auto ask = [&](int n) {
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<Decision> d = Acquire(*backends[i % 2], a);
      if (!Granted(d)) continue;
      EXPECT_TRUE(LeaseOnReplica(a, *d)) << "handed out before its replica held it: " << Show(d);
      handed.insert(d->lease_id.ToString());
    }
  };
  ask(2);
  EXPECT_EQ(handed.size(), 2u);
  KillReplica(2);
  const size_t before = handed.size();
  ask(4);
  EXPECT_EQ(handed.size(), before) << "granted with master 2's replica gone";
  EXPECT_TRUE(first->CheckHealth());  // the second backend is not told
  ask(4);
  EXPECT_EQ(handed.size(), before) << "granted with master 2's replica gone";
  RestartReplica(2);
  ASSERT_TRUE(
      Eventually([&] { return first->CheckHealth() && second->CheckHealth(); }, absl::Seconds(10)));
  ask(2 * kSlots);
  EXPECT_LE(handed.size(), static_cast<size_t>(kSlots));
  const std::vector<std::string> leases = ConcLeases(*first, a);
  EXPECT_LE(leases.size(), static_cast<size_t>(kSlots));
  for (const std::string& id : handed) {
    EXPECT_NE(std::find(leases.begin(), leases.end(), id), leases.end()) << id;
  }
  EXPECT_EQ(OnReplica(a), OnMaster(a));
}

// Last (it swaps master 0 and its replica): master 0 killed while grants are in flight, its
// replica taking over (CLUSTER FAILOVER TAKEOVER), the old master back as the new one's
// replica. Every lease handed out before the failover is on the new master (WAIT's promise),
// and no more than the capacity is handed out in all, before and after.
TEST_F(ClusterWaitAttackTest, ZzFailoverLosesNoHandedOutLeaseAndNeverOverGrants) {
  std::unique_ptr<RedisBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  const std::string a = FreshCredOn(0);
  absl::Mutex mu;
  std::set<std::string> handed;
  int sent = 0, answered = 0;
  auto send = [&] {
    {
      absl::MutexLock lock(&mu);
      ++sent;
    }
    backend->AcquireShared(Req(a), SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
      absl::MutexLock lock(&mu);
      ++answered;
      if (Granted(d)) handed.insert(d->lease_id.ToString());
    });
  };
  auto all_answered = [&] {
    absl::MutexLock lock(&mu);
    return answered == sent;
  };
  for (int i = 0; i < 3; ++i) send();
  ASSERT_TRUE(Eventually(all_answered, absl::Seconds(10)));
  // More in flight as the master dies.
  for (int i = 0; i < 6; ++i) send();
  ASSERT_TRUE(group_->Kill(0).ok());
  ASSERT_TRUE(Eventually(all_answered, absl::Seconds(10))) << "calls never answered";
  std::set<std::string> before;
  {
    absl::MutexLock lock(&mu);
    before = handed;
  }
  ASSERT_LE(before.size(), static_cast<size_t>(kSlots));

  RedisServer& promoted = group_->replica(0);
  ASSERT_TRUE(promoted.Command({"CLUSTER", "FAILOVER", "TAKEOVER"}).ok());
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> role = promoted.Command({"ROLE"});
        return role.ok() && absl::StartsWith(*role, "master");
      },
      absl::Seconds(10)));
  // Every lease handed out survived: WAIT had it on this node before it was answered.
  for (const std::string& id : before) {
    absl::StatusOr<std::string> v = promoted.Command({"EXISTS", redis::LeaseKey(a, id)});
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(*v, "1") << "handed-out lease " << id << " lost in the failover";
  }
  // The old master back as the new master's replica: the new master can grant again.
  ASSERT_TRUE(group_->node(0).Restart().ok());
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> info = promoted.Command({"INFO", "replication"});
        return info.ok() && absl::StrContains(*info, "state=online");
      },
      absl::Seconds(15)))
      << "the old master never came back as a replica";
  ASSERT_TRUE(Eventually(
      [&] {
        if (!backend->CheckHealth()) return false;
        send();
        return Eventually(all_answered, absl::Seconds(5)) && [&] {
          absl::MutexLock lock(&mu);
          return handed.size() >= static_cast<size_t>(kSlots) || handed.size() > before.size();
        }();
      },
      absl::Seconds(15)))
      << "nothing granted on the new master";
  for (int i = 0; i < 2 * kSlots; ++i) send();
  ASSERT_TRUE(Eventually(all_answered, absl::Seconds(10)));
  absl::MutexLock lock(&mu);
  EXPECT_LE(handed.size(), static_cast<size_t>(kSlots)) << "over-granted across the failover";
  std::cout << "failover: " << before.size() << " lease(s) handed out before, " << handed.size()
            << " in all, of " << sent << " calls\n";
}

}  // namespace
}  // namespace quotad

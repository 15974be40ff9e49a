// Attacks on shared mode over Redis Cluster (issue 13's router, redis_cluster.h): a three-master
// cluster on loopback (ClusterGroup) with two real quotad servers over it, or RedisBackends
// built directly where an option the server does not expose matters (wait_beat). Each test names
// the promise it attacks and fails if the bug it looks for is there:
//   - a Release or a ResetCredential while its slot is migrating (keys still on the old owner):
//     answered as what Redis did (DISABLED_: the Lua's wake() touches an undeclared key, and the
//     RPC reads Usage after the reset; see the test), and over-granting nothing meanwhile;
//   - a request_id retried through the other server while its slot migrates and after: the first
//     grant, charged once; a lease renewed and released through MOVED after its slot moved;
//   - credential names with punctuation, and names with braces (the hex hash tag, reached only
//     through the key functions: the configuration refuses braces): quotad's slot is Redis's
//     slot for every key and for the lease locator;
//   - fail_open: with a master down, only that master's fail-open credentials are granted alone;
//     a slot migration, or a MOVED ping-pong ending at the redirect bound, is no outage (ABORTED,
//     never a grant by the replica alone);
//   - the cross-replica wait queue: a waiter parked on one server, its credential on one master,
//     woken by a release through another server (the PUBLISH crosses masters), also after the
//     master the subscriber was connected to died; waiters racing over a migration;
//   - a master restarted empty: what is granted again is its own credentials' counts, nothing of
//     the other masters' (the README's "no AOF: everything" bound, per master);
//   - a failover to a replica (CLUSTER REPLICATE, then CLUSTER FAILOVER) under racing clients on
//     both servers: exactly the capacity granted across it, never more than the slots held.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/lease_id.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/cluster_harness.h"
#include "tests/redis/redis_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::ClusterGroup;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::RedisServerOptions;
using ::quotad::testing::TempDir;

constexpr int kCredentials = 24;
constexpr int kDaily = 6;
constexpr int kSlotsCap = 2;
constexpr int kBig = 200;
// Names with every punctuation the configuration allows (letters, digits and ._~:/@+-; a brace
// is refused by the configuration, so the hex tag form is reached only through the key functions
// themselves: see BraceNamesHashAsRedisHashesThem).
const std::vector<std::string>& OddCredentials() {
  static const auto* names = new std::vector<std::string>{"a:b", "team/x@y", "~.+-_", "q:", "0"};
  return *names;
}

std::string Cred(int i) { return absl::StrCat("team/c", i); }

int SlotOfCredential(const std::string& credential) {
  return redis::KeySlot(redis::StateKey(credential));
}

std::string Features() {
  return absl::StrCat(
      "    features:\n", "      - name: cal\n", "        limits:\n",
      "          - {name: daily, kind: calendar, unit: day, capacity: ", kDaily, "}\n",
      "      - name: big\n", "        limits:\n",
      "          - {name: daily, kind: calendar, unit: day, capacity: ", kBig, "}\n",
      "      - name: conc\n", "        default_lease_ttl: 30s\n", "        limits:\n",
      "          - {name: slots, kind: concurrency, capacity: ", kSlotsCap, "}\n",
      "      - name: one\n", "        default_lease_ttl: 60s\n", "        limits:\n",
      "          - {name: slots, kind: concurrency, capacity: 1}\n");
}

constexpr int kOpenCredentials = 12;
// Every fail-open lease id starts with this mark (redis_backend_fail_open.cc).
constexpr char kFailOpenMark[] = "fa11fa11";
std::string OpenCred(int i) { return absl::StrCat("open/c", i); }

std::string Config() {
  // A profile that fails open (fail_open: true): its credentials are granted by the replica
  // alone when Redis cannot decide (README "Fail open").
  std::string yaml =
      "profiles:\n"
      "  - name: lenient\n"
      "    fail_open: true\n"
      "    features:\n"
      "      - name: one\n"
      "        default_lease_ttl: 60s\n"
      "        limits:\n"
      "          - {name: slots, kind: concurrency, capacity: 1}\n"
      "credentials:\n";
  for (int i = 0; i < kOpenCredentials; ++i) {
    absl::StrAppend(&yaml, "  - name: ", OpenCred(i), "\n    profile: lenient\n");
  }
  for (int i = 0; i < kCredentials; ++i) {
    absl::StrAppend(&yaml, "  - name: ", Cred(i), "\n", Features());
  }
  for (const std::string& name : OddCredentials()) {
    absl::StrAppend(&yaml, "  - name: \"", name, "\"\n", Features());
  }
  return yaml;
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

class ClusterAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ClusterGroup>> group = ClusterGroup::Start();
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = *std::move(group);
    config_ = dir_.WriteFile("quotad.yaml", Config());
  }

  void StartServers() {
    for (int i = 0; i < 2; ++i) {
      ServerOptions options = testing::SharedServerOptions(config_, group_->url());
      absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
      ASSERT_TRUE(server.ok()) << server.status();
      auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
      servers_.push_back(*std::move(server));
      quota_.push_back(v1::Quota::NewStub(channel));
      admin_.push_back(v1::Admin::NewStub(channel));
    }
    // Every server serves before a test asks it (Start does not wait for that on a loaded
    // machine; shared_mode_test once saw 48 calls refused in the first 60 ms).
    for (const std::unique_ptr<QuotadServer>& s : servers_) {
      ASSERT_TRUE(testing::ServesWithin(s->address())) << s->address();
    }
  }

  grpc::Status Acquire(int server, const std::string& credential, const std::string& feature,
                       v1::AcquireResponse* resp, const std::string& request_id = "") {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    if (!request_id.empty()) req.set_request_id(request_id);
    return quota_[server]->Acquire(Context().get(), req, resp);
  }

  grpc::Status Release(int server, const std::string& lease_id) {
    v1::ReleaseRequest req;
    req.set_lease_id(lease_id);
    v1::ReleaseResponse resp;
    return quota_[server]->Release(Context().get(), req, &resp);
  }

  grpc::Status Renew(int server, const std::string& lease_id) {
    v1::RenewRequest req;
    req.set_lease_id(lease_id);
    v1::RenewResponse resp;
    return quota_[server]->Renew(Context().get(), req, &resp);
  }

  int64_t Used(int server, const std::string& credential, const std::string& limit) {
    v1::GetUsageRequest req;
    req.set_credential(credential);
    v1::GetUsageResponse resp;
    grpc::Status s = admin_[server]->GetUsage(Context().get(), req, &resp);
    EXPECT_TRUE(s.ok()) << credential << ": " << s.error_message();
    for (const v1::LimitStatus& l : resp.limits()) {
      if (l.name() == limit) return l.used();
    }
    return -1;
  }

  std::string CredentialOn(int m, int skip = 0) {
    for (int i = 0; i < kCredentials; ++i) {
      if (group_->OwnerOf(SlotOfCredential(Cred(i))) == m && skip-- == 0) return Cred(i);
    }
    ADD_FAILURE() << "no credential on master " << m;
    return "";
  }

  std::string OpenCredentialOn(int m) {
    for (int i = 0; i < kOpenCredentials; ++i) {
      if (group_->OwnerOf(SlotOfCredential(OpenCred(i))) == m) return OpenCred(i);
    }
    ADD_FAILURE() << "no fail-open credential on master " << m;
    return "";
  }

  // One command on node `i`, its text (errors start "ERR:").
  std::string On(int i, const std::vector<std::string>& args) {
    absl::StatusOr<std::string> r = group_->node(i).Command(args);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::string("ERR: ") + std::string(r.status().message());
  }

  // Opens `slot` for a move from its owner to `to` (IMPORTING, then MIGRATING) without moving a
  // key: every key stays on the old owner, which serves a command whose keys it all holds.
  void OpenMigration(int slot, int to) {
    const int from = group_->OwnerOf(slot);
    const std::string s = absl::StrCat(slot);
    ASSERT_EQ(On(to, {"CLUSTER", "SETSLOT", s, "IMPORTING", group_->node_id(from)}), "OK");
    ASSERT_EQ(On(from, {"CLUSTER", "SETSLOT", s, "MIGRATING", group_->node_id(to)}), "OK");
  }

  TempDir dir_;
  std::unique_ptr<ClusterGroup> group_;
  std::string config_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
  std::vector<std::unique_ptr<v1::Admin::Stub>> admin_;
};

// Found by this attack and fixed: quotad_release and quotad_reset end with wake()
// (quotad_queue.lua), whose `EXISTS q:{cred}:wx` names a key the FCALL did not declare. On a
// master whose slot is MIGRATING a key missing there is, inside a script, the error "Script
// attempted to access a non local key in a cluster node", raised after the release or reset
// was written (scripts are not rolled back): quotad answered INTERNAL for a release it made.
// wake() now runs under pcall (no waiter woken then: they call again at their beat). And
// ResetCredential answered the failure of its second call, the Usage read (a TRYAGAIN during
// the split until the timeout), for a reset that was done: it now answers the reset without
// the limits.
TEST_F(ClusterAttackTest, ReleaseWhileItsSlotIsMigratingAnswersWhatRedisDid) {
  StartServers();
  const std::string cred = CredentialOn(0);
  const int slot = SlotOfCredential(cred);
  v1::AcquireResponse a, c;
  ASSERT_TRUE(Acquire(0, cred, "conc", &a).ok());
  ASSERT_TRUE(a.granted());
  ASSERT_TRUE(Acquire(0, cred, "cal", &c).ok());
  ASSERT_TRUE(c.granted());
  OpenMigration(slot, 2);
  // Either answer is right if it is true: released (OK, the lease gone) or refused (the lease
  // still held: a Renew finds it).
  grpc::Status s = Release(1, a.lease_id());
  if (s.ok()) {
    EXPECT_EQ(Release(0, a.lease_id()).error_code(), grpc::StatusCode::NOT_FOUND);
  } else {
    grpc::Status renewed = Renew(0, a.lease_id());
    EXPECT_TRUE(renewed.ok()) << "Release answered " << s.error_message()
                              << " but Redis released the lease: " << renewed.error_message();
  }
  // ResetCredential (quotad_reset ends with wake(pre, nil) too): reset, or refused and the
  // count kept.
  v1::ResetCredentialRequest reset;
  reset.set_credential(cred);
  v1::ResetCredentialResponse reset_resp;
  s = admin_[0]->ResetCredential(Context().get(), reset, &reset_resp);
  ASSERT_TRUE(group_->MigrateSlot(slot, 2).ok());
  // (GetUsage while the slot is split is a TRYAGAIN: read after the move.)
  if (!s.ok()) {
    EXPECT_EQ(Used(1, cred, "cal.daily"), 1)
        << "ResetCredential answered " << s.error_message() << " but Redis reset the credential";
  }
}

// What the bug above does not do: it over-grants nothing. With the release's answer wrong, the
// slot is free in Redis (a second holder fits), never held twice: after the migration the
// concurrency limit grants exactly its capacity.
TEST_F(ClusterAttackTest, ReleaseDuringAMigrationNeverOverGrants) {
  StartServers();
  const std::string cred = CredentialOn(1);
  const int slot = SlotOfCredential(cred);
  std::vector<std::string> held;
  for (int i = 0; i < kSlotsCap; ++i) {
    v1::AcquireResponse a;
    ASSERT_TRUE(Acquire(i % 2, cred, "conc", &a).ok());
    ASSERT_TRUE(a.granted());
    held.push_back(a.lease_id());
  }
  OpenMigration(slot, 0);
  // An acquire while the slot is open and nothing moved: its new lease key is missing, the
  // state is there: TRYAGAIN until the call's timeout, nothing granted.
  v1::AcquireResponse during;
  grpc::Status s = Acquire(0, cred, "conc", &during);
  EXPECT_FALSE(s.ok() && during.granted()) << "granted over a full limit during a migration";
  Release(1, held[0]).ok();  // answered INTERNAL today (see above); done in Redis either way
  ASSERT_TRUE(group_->MigrateSlot(slot, 0).ok());
  int granted = 0;
  for (int t = 0; t < 4; ++t) {
    v1::AcquireResponse a;
    ASSERT_TRUE(Acquire(t % 2, cred, "conc", &a).ok());
    if (a.granted()) ++granted;
  }
  EXPECT_EQ(granted, 1) << "one slot was freed; the other is still held";
  // The lease held across the move is renewed and released through MOVED, through either server.
  grpc::Status rs = Renew(0, held[1]);
  EXPECT_TRUE(rs.ok()) << rs.error_message();
  rs = Release(1, held[1]);
  EXPECT_TRUE(rs.ok()) << rs.error_message();
  EXPECT_EQ(Release(0, held[1]).error_code(), grpc::StatusCode::NOT_FOUND);
}

// Two masters that each name the other as a slot's owner (a map in flux: one gave the slot away
// by SETSLOT NODE, the other has not heard): MOVED back and forth. The router stops at its
// redirect bound, answers ABORTED naming it (no hang, nothing granted, and no fail-open grant:
// Redis is up), and serves the slot again once the masters agree.
TEST_F(ClusterAttackTest, MovedPingPongEndsAtTheRedirectBound) {
  StartServers();
  const std::string cred = OpenCredentialOn(0);  // never used before: its slot holds no key
  const int slot = SlotOfCredential(cred);
  const std::string s = absl::StrCat(slot);
  ASSERT_EQ(On(0, {"CLUSTER", "COUNTKEYSINSLOT", s}), "0");
  ASSERT_EQ(On(0, {"CLUSTER", "SETSLOT", s, "NODE", group_->node_id(1)}), "OK");
  ASSERT_TRUE(absl::StartsWith(On(1, {"GET", redis::StateKey(cred)}), "ERR:MOVED"))
      << "node 1 still sends the slot to node 0";
  for (int server = 0; server < 2; ++server) {
    v1::AcquireResponse a;
    grpc::Status st = Acquire(server, cred, "one", &a);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED)
        << "server " << server << ": " << st.error_message() << " granted=" << a.granted();
    EXPECT_TRUE(absl::StrContains(st.error_message(), "redirected more than"))
        << st.error_message();
  }
  ASSERT_EQ(On(0, {"CLUSTER", "SETSLOT", s, "NODE", group_->node_id(0)}), "OK");
  for (int server = 0; server < 2; ++server) {
    EXPECT_TRUE(Eventually([&] {
      v1::AcquireResponse a;
      if (!Acquire(server, cred, "one", &a).ok() || !a.granted()) return false;
      EXPECT_FALSE(absl::StartsWith(a.lease_id(), kFailOpenMark)) << a.lease_id();
      return Release(server, a.lease_id()).ok();  // capacity 1: free it for the other server
    })) << "server "
        << server;
  }
}

// A request_id retried through the other server while its slot is split (keys partly moved) and
// after the move: never a second lease, charged once.
TEST_F(ClusterAttackTest, RequestIdRetriedAcrossAMigrationChargesOnce) {
  StartServers();
  const std::string cred = CredentialOn(0);
  const int slot = SlotOfCredential(cred);
  // Other keys in the slot, so that the migration moves a key at a time.
  for (int i = 0; i < 3; ++i) {
    v1::AcquireResponse a;
    ASSERT_TRUE(Acquire(0, cred, "cal", &a).ok());
  }
  v1::AcquireResponse first;
  ASSERT_TRUE(Acquire(0, cred, "big", &first, "rid-migrate-1").ok());
  ASSERT_TRUE(first.granted());
  int split_tries = 0;
  ASSERT_TRUE(group_
                  ->MigrateSlot(slot, 1, 1,
                                [&](int moved) {
                                  if (moved != 2) return;
                                  ++split_tries;
                                  v1::AcquireResponse r;
                                  grpc::Status s = Acquire(1, cred, "big", &r, "rid-migrate-1");
                                  if (s.ok()) {
                                    EXPECT_TRUE(r.granted());
                                    EXPECT_EQ(r.lease_id(), first.lease_id());
                                  }
                                })
                  .ok());
  EXPECT_EQ(split_tries, 1);
  for (int server = 0; server < 2; ++server) {
    v1::AcquireResponse r;
    grpc::Status s = Acquire(server, cred, "big", &r, "rid-migrate-1");
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(r.granted());
    EXPECT_EQ(r.lease_id(), first.lease_id()) << "server " << server;
  }
  EXPECT_EQ(Used(0, cred, "big.daily"), 1);
  EXPECT_EQ(Used(1, cred, "cal.daily"), 3);
}

// Names with punctuation: the slot quotad computes is the one Redis computes for every key it
// writes (state and lease locator), the lease is found through either server, and the limit
// grants exactly its capacity.
TEST_F(ClusterAttackTest, OddCredentialsLandInTheSlotRedisComputes) {
  StartServers();
  for (const std::string& cred : OddCredentials()) {
    const int slot = SlotOfCredential(cred);
    std::vector<std::string> held;
    for (int t = 0; t < kSlotsCap + 1; ++t) {
      v1::AcquireResponse a;
      grpc::Status s = Acquire(t % 2, cred, "conc", &a);
      ASSERT_TRUE(s.ok()) << cred << ": " << s.error_message();
      if (a.granted()) held.push_back(a.lease_id());
    }
    ASSERT_EQ(held.size(), static_cast<size_t>(kSlotsCap)) << cred;
    const int owner = group_->OwnerOf(slot);
    EXPECT_EQ(On(owner, {"CLUSTER", "KEYSLOT", redis::StateKey(cred)}), absl::StrCat(slot)) << cred;
    EXPECT_EQ(On(owner, {"EXISTS", redis::StateKey(cred)}), "1") << cred;
    for (const std::string& id : held) {
      EXPECT_EQ(On(owner, {"CLUSTER", "KEYSLOT", LeaseLocatorKey(id)}), absl::StrCat(slot)) << cred;
      EXPECT_EQ(On(owner, {"EXISTS", LeaseLocatorKey(id)}), "1") << cred << " " << id;
    }
    grpc::Status s = Renew(1, held[0]);
    EXPECT_TRUE(s.ok()) << cred << ": " << s.error_message();
    s = Release(1, held[0]);
    EXPECT_TRUE(s.ok()) << cred << ": " << s.error_message();
    EXPECT_EQ(Used(0, cred, "conc.slots"), 1) << cred;
  }
}

// Names holding braces (the configuration refuses them today; the key functions take the hex
// tag): every key of the credential, and a lease locator placed by LeaseIdInSlot, hash where
// Redis hashes them (CLUSTER KEYSLOT), a tag and a half-tag included.
TEST_F(ClusterAttackTest, BraceNamesHashAsRedisHashesThem) {
  for (const std::string name :
       {"brace{x}y", "close}only", "{}", "open{only", "}{", "a}b", "{a}", "x{}y{z}"}) {
    const int slot = SlotOfCredential(name);
    for (const std::string& key :
         {redis::StateKey(name), redis::DedupKey(name, "r{1}"), redis::LeaseKey(name, "l}"),
          redis::LeasesByExpiryKey(name, "f.slots"),
          absl::StrCat("q:", redis::CredentialTag(name), ":wx")}) {
      EXPECT_EQ(On(0, {"CLUSTER", "KEYSLOT", key}), absl::StrCat(slot)) << name << " " << key;
    }
    for (int i = 0; i < 20; ++i) {
      const LeaseId id = redis::LeaseIdInSlot(NewLeaseId(), LeaseLocatorKey(""), slot);
      ASSERT_EQ(On(1, {"CLUSTER", "KEYSLOT", LeaseLocatorKey(id.ToString())}), absl::StrCat(slot))
          << name;
    }
  }
}

// fail_open with one master down: its fail-open credentials are granted by the replica (marked
// ids), its other credentials are UNAVAILABLE, and a fail-open credential of a live master is
// still decided by Redis (counted: its capacity holds).
TEST_F(ClusterAttackTest, FailOpenWithOneMasterDownFailsOpenOnlyForThatMaster) {
  StartServers();
  const int dead = 0;
  const std::string open_dead = OpenCredentialOn(dead);
  const std::string open_live = OpenCredentialOn(1);
  const std::string strict_dead = CredentialOn(dead);
  ASSERT_TRUE(group_->Kill(dead).ok());
  for (int server = 0; server < 2; ++server) {
    ASSERT_TRUE(Eventually([&] {
      v1::AcquireResponse a;
      return Acquire(server, strict_dead, "one", &a).error_code() == grpc::StatusCode::UNAVAILABLE;
    })) << "server "
        << server;
    v1::AcquireResponse a;
    grpc::Status s = Acquire(server, open_dead, "one", &a);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(a.granted());
    EXPECT_TRUE(absl::StartsWith(a.lease_id(), kFailOpenMark)) << a.lease_id();
  }
  v1::AcquireResponse first, second;
  ASSERT_TRUE(Acquire(0, open_live, "one", &first).ok());
  ASSERT_TRUE(first.granted());
  EXPECT_FALSE(absl::StartsWith(first.lease_id(), kFailOpenMark)) << first.lease_id();
  ASSERT_TRUE(Acquire(1, open_live, "one", &second).ok());
  EXPECT_FALSE(second.granted()) << "a live master's fail-open credential is still counted";
  // Admin of a live master's credential works; of the dead one's it is UNAVAILABLE.
  for (const auto& [cred, code] : std::vector<std::pair<std::string, grpc::StatusCode>>{
           {CredentialOn(1), grpc::StatusCode::OK}, {strict_dead, grpc::StatusCode::UNAVAILABLE}}) {
    v1::ResetCredentialRequest reset;
    reset.set_credential(cred);
    v1::ResetCredentialResponse reset_resp;
    EXPECT_EQ(admin_[1]->ResetCredential(Context().get(), reset, &reset_resp).error_code(), code)
        << cred;
    v1::GetUsageRequest usage;
    usage.set_credential(cred);
    v1::GetUsageResponse usage_resp;
    EXPECT_EQ(admin_[0]->GetUsage(Context().get(), usage, &usage_resp).error_code(), code) << cred;
  }
}

// A slot migration is no outage: Redis is up and answers every call (TRYAGAIN: not now). A
// fail-open credential whose slot migrates longer than the call's timeout must still not be
// granted over its limit by the replica alone.
TEST_F(ClusterAttackTest, FailOpenCredentialIsNotGrantedAloneDuringAMigration) {
  StartServers();
  const std::string cred = OpenCredentialOn(1);
  const int slot = SlotOfCredential(cred);
  v1::AcquireResponse hold;
  ASSERT_TRUE(Acquire(0, cred, "one", &hold).ok());
  ASSERT_TRUE(hold.granted());
  OpenMigration(slot, 2);
  for (int server = 0; server < 2; ++server) {
    v1::AcquireResponse a;
    grpc::Status s = Acquire(server, cred, "one", &a);
    EXPECT_FALSE(s.ok() && a.granted())
        << "server " << server << " granted " << a.lease_id()
        << " over a full limit of capacity 1 while the slot migrated";
  }
  ASSERT_TRUE(group_->MigrateSlot(slot, 2).ok());
  v1::AcquireResponse after;
  ASSERT_TRUE(Acquire(1, cred, "one", &after).ok());
  EXPECT_FALSE(after.granted()) << "the slot is still held after the move";
}

// The wait queue over Cluster, built from two RedisBackends with a wait_beat longer than the
// waits: a waiter is granted before its max_wait only if the PUBLISH of the release reached its
// replica's subscriber. The subscriber is connected to one master (the router's primary());
// the credential lives on another. Then that master dies: the subscriber must move to a live
// one, or no waiter of any other master is ever woken (each waits its whole max_wait, denied).
TEST_F(ClusterAttackTest, WaiterWokenAcrossMastersAndAfterTheSubscribersMasterDies) {
  absl::StatusOr<Policy> policy = LoadPolicyFromString(Config(), "cluster.yaml");
  ASSERT_TRUE(policy.ok()) << policy.status();
  RedisBackendOptions options;
  options.url = group_->url();
  options.connect_wait = absl::Seconds(5);
  options.wait_beat = absl::Seconds(60);  // no re-check within a wait: only a PUBLISH wakes
  std::vector<std::unique_ptr<RedisBackend>> backends;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::unique_ptr<RedisBackend>> b =
        RedisBackend::Create(*policy, Clock::Real(), options);
    ASSERT_TRUE(b.ok()) << b.status();
    backends.push_back(*std::move(b));
  }
  // The subscriber's master: the first of the map by address (RedisCluster::primary()).
  int sub_master = 0;
  for (int i = 1; i < group_->size(); ++i) {
    if (absl::StrCat("127.0.0.1:", group_->node(i).port()) <
        absl::StrCat("127.0.0.1:", group_->node(sub_master).port())) {
      sub_master = i;
    }
  }
  const int home = (sub_master + 1) % group_->size();
  auto acquire = [&](int b, const std::string& cred) {
    AcquireRequest req;
    req.credential = cred;
    req.feature = "one";
    absl::Notification done;
    absl::StatusOr<Decision> out;
    backends[b]->AcquireShared(req, SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
      out = std::move(d);
      done.Notify();
    });
    done.WaitForNotification();
    return out;
  };
  auto round = [&](const std::string& cred, const char* what) {
    absl::StatusOr<Decision> hold = acquire(1, cred);
    ASSERT_TRUE(hold.ok()) << what << ": " << hold.status();
    ASSERT_TRUE(hold->granted) << what;
    AcquireRequest req;
    req.credential = cred;
    req.feature = "one";
    absl::Notification answered;
    absl::StatusOr<Decision> waited;
    backends[0]->AcquireSharedOrWait(req, SharedRequestId{}, absl::Seconds(8), 0,
                                     [&](absl::StatusOr<Decision> d) {
                                       waited = std::move(d);
                                       answered.Notify();
                                     });
    const std::string wx = absl::StrCat("q:", redis::CredentialTag(cred), ":wx");
    ASSERT_TRUE(Eventually([&] { return On(home, {"EXISTS", wx}) == "1"; })) << what;
    ASSERT_TRUE(backends[1]->Release(hold->lease_id, std::nullopt).ok()) << what;
    answered.WaitForNotification();  // at most max_wait (8 s)
    ASSERT_TRUE(waited.ok()) << what << ": " << waited.status();
    EXPECT_TRUE(waited->granted) << what << ": the release's PUBLISH never reached the waiter";
    if (waited->granted) {
      ASSERT_TRUE(backends[0]->Release(waited->lease_id, std::nullopt).ok());
    }
  };
  const std::string cred = CredentialOn(home);
  round(cred, "all masters up");
  ASSERT_TRUE(group_->Kill(sub_master).ok());
  // Both backends see the master gone (its slots fail closed; the others serve).
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<Decision> d = acquire(1, CredentialOn(sub_master));
    return !d.ok() && absl::IsUnavailable(d.status());
  }));
  round(cred, "the subscriber's master dead");
}

// Waiters racing over both servers for a limit of 1 while its slot migrates (a key at a time):
// each client acquires with max_wait, holds, and releases through the other server. Never more
// than 1 held at once, and every client is served in the end (a call the migration refused is
// asked again).
TEST_F(ClusterAttackTest, WaitersRaceAcrossServersWhileTheSlotMigrates) {
  StartServers();
  const std::string cred = CredentialOn(1, 1);
  const int slot = SlotOfCredential(cred);
  constexpr int kClients = 6, kRounds = 3;
  std::atomic<int> held{0}, max_held{0}, granted{0}, refused{0};
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int r = 0; r < kRounds && absl::Now() < deadline;) {
        v1::AcquireRequest req;
        req.set_credential(cred);
        req.set_feature("one");
        req.mutable_max_wait()->set_seconds(10);
        v1::AcquireResponse resp;
        grpc::Status s = quota_[c % 2]->Acquire(Context(absl::Seconds(30)).get(), req, &resp);
        if (!s.ok() || !resp.granted()) {
          refused++;
          continue;
        }
        const int now = ++held;
        int seen = max_held.load();
        while (now > seen && !max_held.compare_exchange_weak(seen, now)) {
        }
        granted++;
        --held;
        Release((c + 1) % 2, resp.lease_id()).ok();  // INTERNAL during the split (see above)
        ++r;
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return granted.load() >= 3; }, absl::Seconds(30)));
  ASSERT_TRUE(group_->MigrateSlot(slot, 0, 1).ok());
  for (std::thread& t : clients) t.join();
  std::printf(
      "waiters racing over a migration: %d granted of %d, %d calls refused or timed out "
      "and asked again, held at most %d of 1\n",
      granted.load(), kClients * kRounds, refused.load(), max_held.load());
  EXPECT_LE(max_held.load(), 1);
  EXPECT_EQ(granted.load(), kClients * kRounds);
}

// A master restarted empty (no persistence): what it loses is everything its slots counted
// (the README's "no AOF: everything" bound, per master): its credentials are granted their
// capacity again, and no credential of another master gets a unit more. A lease it held is
// unknown afterwards (NOT_FOUND, never an error or a refund of another lease).
TEST_F(ClusterAttackTest, MasterRestartedEmptyLosesOnlyItsOwnSlotsCounts) {
  StartServers();
  const int dead = 1;
  const std::string lost = CredentialOn(dead);
  const std::string kept = CredentialOn(0);
  for (const std::string& cred : {lost, kept}) {
    int granted = 0;
    for (int t = 0; t < kDaily + 2; ++t) {
      v1::AcquireResponse a;
      ASSERT_TRUE(Acquire(t % 2, cred, "cal", &a).ok());
      if (a.granted()) ++granted;
    }
    ASSERT_EQ(granted, kDaily) << cred;
  }
  v1::AcquireResponse lease;
  ASSERT_TRUE(Acquire(0, lost, "conc", &lease).ok());
  ASSERT_TRUE(lease.granted());

  ASSERT_TRUE(group_->Kill(dead).ok());
  ASSERT_TRUE(group_->node(dead).Restart().ok());
  for (int server = 0; server < 2; ++server) {
    ASSERT_TRUE(Eventually([&] {
      v1::AcquireResponse probe;
      return Acquire(server, CredentialOn(dead, 1), "conc", &probe).ok() && probe.granted();
    })) << "server "
        << server;
  }
  int again_lost = 0, again_kept = 0;
  for (int t = 0; t < 2 * kDaily; ++t) {
    v1::AcquireResponse a;
    ASSERT_TRUE(Acquire(t % 2, lost, "cal", &a).ok());
    if (a.granted()) ++again_lost;
    v1::AcquireResponse b;
    ASSERT_TRUE(Acquire(t % 2, kept, "cal", &b).ok());
    if (b.granted()) ++again_kept;
  }
  std::printf(
      "master restarted empty: its credential granted %d more (capacity %d), another "
      "master's %d more\n",
      again_lost, kDaily, again_kept);
  EXPECT_EQ(again_lost, kDaily) << "the bound: one capacity per window again, never more";
  EXPECT_EQ(again_kept, 0);
  EXPECT_EQ(Release(1, lease.lease_id()).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A replica added to a master (CLUSTER REPLICATE) and promoted (CLUSTER FAILOVER, which waits
// for the replica to catch up) while clients on both servers race for a credential of that
// master: the map goes stale (MOVED from the demoted master), and exactly the capacity is
// granted across the switch.
TEST_F(ClusterAttackTest, FailoverToAReplicaUnderLoadGrantsExactlyTheCapacity) {
  const int master = 2;
  // A fourth node, a replica of `master`. Its bus port is picked free and bound by redis-server
  // later: another test may take it meanwhile, so a failed start is tried on another (as
  // ClusterGroup::Start does).
  absl::StatusOr<int> bus;
  absl::StatusOr<std::unique_ptr<RedisServer>> replica;
  for (int attempt = 0; attempt < 3; ++attempt) {
    bus = quotad::testing::PickFreePort();
    ASSERT_TRUE(bus.ok()) << bus.status();
    RedisServerOptions o;
    o.appendonly = false;
    o.extra_args = {"--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    absl::StrCat(*bus),
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no"};
    replica = RedisServer::Start(o);
    if (replica.ok()) break;
  }
  ASSERT_TRUE(replica.ok()) << replica.status();
  RedisServer& r = **replica;
  ASSERT_EQ(On(0, {"CLUSTER", "MEET", "127.0.0.1", absl::StrCat(r.port()), absl::StrCat(*bus)}),
            "OK");
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<std::string> nodes = r.Command({"CLUSTER", "NODES"});
    return nodes.ok() && absl::StrContains(*nodes, group_->node_id(master));
  }));
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<std::string> ok = r.Command({"CLUSTER", "REPLICATE", group_->node_id(master)});
    return ok.ok() && *ok == "OK";
  }));
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> info = r.Command({"INFO", "replication"});
        return info.ok() && absl::StrContains(*info, "master_link_status:up");
      },
      absl::Seconds(20)));
  StartServers();
  const std::string cred = CredentialOn(master);

  // Clients on both servers: a concurrency limit acquired and released in a loop (held counted
  // after the grant and uncounted before the release is sent: never above what Redis holds), and
  // the calendar limit: half its capacity before the failover, the rest after.
  std::atomic<bool> stop{false}, second_half{false};
  std::atomic<int> held{0}, max_held{0}, conc_grants{0}, big_granted{0}, failed{0};
  std::atomic<int> release_failed{0};  // its lease may stay held until its TTL (30 s)
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      while (!stop.load()) {
        v1::AcquireResponse a;
        grpc::Status s = Acquire(c % 2, cred, "conc", &a);
        if (!s.ok()) {
          failed++;
        } else if (a.granted()) {
          const int now = ++held;
          int seen = max_held.load();
          while (now > seen && !max_held.compare_exchange_weak(seen, now)) {
          }
          conc_grants++;
          --held;
          if (!Release((c + 1) % 2, a.lease_id()).ok()) release_failed++;
        }
        if (second_half.load() || big_granted.load() < kBig / 2) {
          v1::AcquireResponse b;
          grpc::Status bs = Acquire(c % 2, cred, "big", &b);
          if (!bs.ok()) {
            failed++;
          } else if (b.granted()) {
            big_granted++;
          }
        }
      }
    });
  }
  // Whatever fails below, the clients end (joined) before the servers and the cluster do.
  struct Joiner {
    std::vector<std::thread>* threads;
    std::atomic<bool>* stop;
    ~Joiner() {
      stop->store(true);
      for (std::thread& t : *threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{&clients, &stop};
  ASSERT_TRUE(Eventually([&] { return big_granted.load() >= kBig / 2; }, absl::Seconds(30)));
  const int before = conc_grants.load();
  ASSERT_EQ(*r.Command({"CLUSTER", "FAILOVER"}), "OK");
  ASSERT_TRUE(Eventually(
      [&] {
        absl::StatusOr<std::string> role = r.Command({"ROLE"});
        return role.ok() && absl::StartsWith(*role, "master");
      },
      absl::Seconds(30)));
  const int at_switch = conc_grants.load();
  // Bounded generously: a loaded CI machine once took longer than the default 10 s. And past
  // the slots' TTL (30 s): a release refused during the switch (or an Acquire that failed after
  // Redis applied it) leaves its slot held until then, an under-grant; with both slots so held
  // nothing is granted until they expire (seen on a loaded machine: 25 grants after the
  // switch, then none for 30 s, 6 calls failed).
  ASSERT_TRUE(
      Eventually([&] { return conc_grants.load() >= at_switch + 40; }, absl::Seconds(75)))
      << "grants go on after the failover (" << conc_grants.load() - at_switch << " so far, "
      << failed.load() << " calls failed, " << release_failed.load() << " releases refused)";
  const int big_at_switch = big_granted.load();
  second_half = true;
  ASSERT_TRUE(Eventually(
      [&] {
        v1::AcquireResponse a;
        if (!Acquire(0, cred, "big", &a).ok()) return false;
        if (a.granted()) big_granted++;  // a probe that is granted counts too
        return !a.granted();
      },
      absl::Seconds(30)));
  stop = true;
  for (std::thread& t : clients) t.join();
  std::printf(
      "failover under load: %d conc grants before the failover, %d at the switch, %d in "
      "all (held at most %d of %d); calendar %d before the switch, %d in all of %d; %d "
      "calls failed\n",
      before, at_switch, conc_grants.load(), max_held.load(), kSlotsCap, big_at_switch,
      big_granted.load(), kBig, failed.load());
  EXPECT_LE(max_held.load(), kSlotsCap);
  EXPECT_EQ(big_granted.load(), kBig);
  EXPECT_EQ(Used(1, cred, "big.daily"), kBig);
  // Every slot came back, but those of releases refused during the switch (UNAVAILABLE: maybe
  // not applied; freed at their TTL, an under-grant).
  EXPECT_LE(Used(0, cred, "conc.slots"), release_failed.load());
  EXPECT_EQ(group_->node(master).Command({"ROLE"}).value_or("").rfind("slave", 0), 0u)
      << "the old master is a replica now";
}

}  // namespace
}  // namespace quotad

// Shared mode on Redis Cluster (issue 13): a three-master cluster on loopback started and stopped
// by the test (ClusterGroup), the slot router (redis_cluster.h) alone and two real quotad
// servers (QuotadServer::Start, --redis=redis-cluster://...) over it. Credentials spread over
// every master; racing clients get exactly each credential's capacity; Release, Renew,
// GetUsage, ListLeases and ResetCredential through either server; a slot migrated under load
// (ASK while it is split, MOVED after) over-grants nothing; a master killed fails its own
// credentials closed while the others keep serving.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/core/lease_id.h"
#include "service/server/server.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"
#include "service/store/redis/redis_functions.h"
#include "tests/redis/cluster_harness.h"
#include "tests/redis/server_helpers.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::ClusterGroup;
using ::quotad::testing::Eventually;
using ::quotad::testing::TempDir;

constexpr int kCredentials = 24;
constexpr int kDaily = 6;     // capacity of each credential's calendar limit
constexpr int kSlotsCap = 2;  // concurrency

std::string Cred(int i) { return absl::StrCat("team/c", i); }

int SlotOfCredential(const std::string& credential) {
  return redis::KeySlot(redis::StateKey(credential));
}

std::string Config() {
  std::string yaml = "credentials:\n";
  for (int i = 0; i < kCredentials; ++i) {
    absl::StrAppend(&yaml, "  - name: ", Cred(i), "\n", "    features:\n", "      - name: cal\n",
                    "        limits:\n",
                    "          - {name: daily, kind: calendar, unit: day, capacity: ", kDaily,
                    "}\n", "      - name: big\n", "        limits:\n",
                    "          - {name: daily, kind: calendar, unit: day, capacity: 60}\n",
                    "      - name: conc\n", "        default_lease_ttl: 30s\n", "        limits:\n",
                    "          - {name: slots, kind: concurrency, capacity: ", kSlotsCap, "}\n");
  }
  return yaml;
}

std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return ctx;
}

// --- The router's pure parts -----------------------------------------------------------------

TEST(ClusterSlotTest, KeySlotIsRedisHashSlot) {
  EXPECT_EQ(redis::KeySlot("123456789"), 12739);  // CRC16-XMODEM check value, mod 16384
  EXPECT_EQ(redis::KeySlot("{user1000}.following"), redis::KeySlot("user1000"));
  EXPECT_EQ(redis::KeySlot("foo{}{bar}"), redis::KeySlot("foo{}{bar}"));
  EXPECT_NE(redis::KeySlot("foo{}{bar}"), redis::KeySlot("bar"));  // an empty tag: whole key
  EXPECT_EQ(redis::KeySlot(redis::StateKey("team/c1")), redis::KeySlot("team/c1"));
}

TEST(ClusterSlotTest, LeaseIdInSlotPutsTheLocatorInTheSlotAndKeeps108Bits) {
  for (int i = 0; i < 20000; ++i) {
    const LeaseId id = NewLeaseId();
    const int slot = (i * 7919) % redis::kClusterSlots;
    const LeaseId in = redis::LeaseIdInSlot(id, LeaseLocatorKey(""), slot);
    ASSERT_EQ(redis::KeySlot(LeaseLocatorKey(in.ToString())), slot) << id.ToString();
    ASSERT_EQ(in.hi, id.hi);
    ASSERT_EQ(in.lo >> 20, id.lo >> 20);
  }
}

TEST(ClusterSlotTest, ParsesClusterUrlsAndNamesBadParts) {
  absl::StatusOr<redis::RedisClientOptions> o =
      ParseRedisUrl("redis-cluster://10.0.0.1:7000,[::1]:7001,redis-2");
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->cluster_nodes.size(), 3u);
  EXPECT_EQ(o->cluster_nodes[0].ToString(), "10.0.0.1:7000");
  EXPECT_EQ(o->cluster_nodes[1].host, "::1");
  EXPECT_EQ(o->cluster_nodes[2].port, 6379);
  for (const char* bad : {"redis-cluster://", "redis-cluster://a:0", "redis-cluster://a:1,,b:2",
                          "redis-cluster://u@a:1", "redis-cluster://a:1/x"}) {
    absl::StatusOr<redis::RedisClientOptions> r = ParseRedisUrl(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_TRUE(absl::StrContains(r.status().message(), bad)) << r.status();
  }
}

// --- A real cluster ---------------------------------------------------------------------------

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ClusterGroup>> group = ClusterGroup::Start();
    ASSERT_TRUE(group.ok()) << group.status();
    group_ = *std::move(group);
  }

  std::unique_ptr<redis::RedisCluster> Router() {
    absl::StatusOr<redis::RedisClientOptions> o = ParseRedisUrl(group_->url());
    EXPECT_TRUE(o.ok()) << o.status();
    absl::StatusOr<std::unique_ptr<redis::RedisCluster>> c = redis::RedisCluster::Create(*o);
    EXPECT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE((*c)->WaitConnected(absl::Seconds(5)));
    EXPECT_TRUE(Eventually([&] { return (*c)->connected() == group_->size(); }));
    return *std::move(c);
  }

  // Two quotad servers over the cluster.
  void StartServers() {
    config_ = dir_.WriteFile("quotad.yaml", Config());
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
                       v1::AcquireResponse* resp) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    return quota_[server]->Acquire(Context().get(), req, resp);
  }

  grpc::Status Release(int server, const std::string& lease_id) {
    v1::ReleaseRequest req;
    req.set_lease_id(lease_id);
    v1::ReleaseResponse resp;
    return quota_[server]->Release(Context().get(), req, &resp);
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

  // The first credential whose slot lies on master `m`.
  std::string CredentialOn(int m) {
    for (int i = 0; i < kCredentials; ++i) {
      if (group_->OwnerOf(SlotOfCredential(Cred(i))) == m) return Cred(i);
    }
    ADD_FAILURE() << "no credential on master " << m;
    return "";
  }

  TempDir dir_;
  std::unique_ptr<ClusterGroup> group_;
  std::string config_;
  std::vector<std::unique_ptr<QuotadServer>> servers_;
  std::vector<std::unique_ptr<v1::Quota::Stub>> quota_;
  std::vector<std::unique_ptr<v1::Admin::Stub>> admin_;
};

// The router alone: MOVED, ASK and a killed master, on plain keys.
TEST_F(ClusterTest, RouterFollowsAskThenMovedAndFailsClosedForADeadMastersSlots) {
  std::unique_ptr<redis::RedisCluster> router = Router();
  // Keys spread over every master, written and read back through the router.
  std::set<int> owners;
  for (int i = 0; i < 60; ++i) {
    const std::string key = absl::StrCat("k", i);
    owners.insert(group_->OwnerOf(redis::KeySlot(key)));
    absl::StatusOr<redis::Reply> r = router->CallSync({"SET", key, absl::StrCat(i)});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->str, "OK") << r->DebugString();
  }
  EXPECT_EQ(owners.size(), 3u);
  // MGET across slots is split and put back in order.
  absl::StatusOr<redis::Reply> m = router->CallSync({"MGET", "k1", "k2", "k3", "nokey"});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->elements.size(), 4u);
  EXPECT_EQ(m->elements[0].str, "1");
  EXPECT_EQ(m->elements[2].str, "3");
  EXPECT_EQ(m->elements[3].type, redis::Reply::Type::kNil);

  // Migrate the slot of "{mig}a" and "{mig}b", one key at a time: with one key moved, reading
  // it through the router is an ASK followed.
  ASSERT_TRUE(router->CallSync({"SET", "{mig}a", "A"}).ok());
  ASSERT_TRUE(router->CallSync({"SET", "{mig}b", "B"}).ok());
  const int slot = redis::KeySlot("{mig}a");
  const int from = group_->OwnerOf(slot);
  const int to = (from + 1) % 3;
  int checked = 0;
  absl::Status migrated = group_->MigrateSlot(slot, to, 1, [&](int moved) {
    if (moved != 1) return;
    for (const char* key : {"{mig}a", "{mig}b"}) {
      absl::StatusOr<redis::Reply> r = router->CallSync({"GET", key});
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->str, key == std::string("{mig}a") ? "A" : "B") << r->DebugString();
      ++checked;
    }
  });
  ASSERT_TRUE(migrated.ok()) << migrated;
  EXPECT_EQ(checked, 2);
  EXPECT_GE(router->asked(), 1);  // the moved key, read while the slot was split
  EXPECT_EQ(router->moved(), 0);
  // The slot now lives on `to`; the router's map still says `from`: MOVED, followed.
  absl::StatusOr<redis::Reply> after = router->CallSync({"GET", "{mig}b"});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->str, "B");
  EXPECT_GE(router->moved(), 1);
  EXPECT_TRUE(Eventually([&] { return router->MasterOf(slot).port == group_->node(to).port(); }));

  // A master killed: its keys fail closed (kUnavailable naming it), the others answer.
  const int dead = 2;
  ASSERT_TRUE(group_->Kill(dead).ok());
  ASSERT_TRUE(Eventually([&] { return router->connected() == 2; }));
  for (int i = 0; i < 60; ++i) {
    const std::string key = absl::StrCat("k", i);
    absl::StatusOr<redis::Reply> r = router->CallSync({"GET", key});
    if (group_->OwnerOf(redis::KeySlot(key)) == dead) {
      ASSERT_FALSE(r.ok()) << key;
      EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
      EXPECT_TRUE(absl::StrContains(r.status().message(),
                                    absl::StrCat("master 127.0.0.1:", group_->node(dead).port())))
          << r.status();
    } else {
      ASSERT_TRUE(r.ok()) << key << ": " << r.status();
      EXPECT_EQ(r->str, absl::StrCat(i));
    }
  }
}

TEST_F(ClusterTest, TwoServersGrantExactlyEachCapacityOverThreeMasters) {
  StartServers();
  std::set<int> masters;
  for (int i = 0; i < kCredentials; ++i) masters.insert(group_->OwnerOf(SlotOfCredential(Cred(i))));
  ASSERT_EQ(masters.size(), 3u) << "the credentials should spread over every master";

  // 16 clients over both servers, each trying every credential's "cal" twice: 2 * 16 tries for
  // a capacity of kDaily.
  std::vector<std::atomic<int>> granted(kCredentials);
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back([&, c] {
      for (int t = 0; t < 2; ++t) {
        for (int i = 0; i < kCredentials; ++i) {
          const int k = (i + c) % kCredentials;
          v1::AcquireResponse resp;
          grpc::Status s = Acquire(c % 2, Cred(k), "cal", &resp);
          if (!s.ok()) {
            failed++;
          } else if (resp.granted()) {
            granted[k]++;
          }
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  for (int i = 0; i < kCredentials; ++i) {
    EXPECT_EQ(granted[i].load(), kDaily) << Cred(i);
    EXPECT_EQ(Used(i % 2, Cred(i), "cal.daily"), kDaily) << Cred(i);
  }
  for (int m = 0; m < group_->size(); ++m) {
    absl::StatusOr<int64_t> keys = group_->KeyCount(m);
    ASSERT_TRUE(keys.ok()) << keys.status();
    EXPECT_GT(*keys, 0) << "master " << m << " holds nothing";
  }

  // Leases through either server, on a credential of each master: Renew, ListLeases, Release.
  for (int m = 0; m < group_->size(); ++m) {
    const std::string cred = CredentialOn(m);
    std::vector<std::string> held;
    for (int i = 0; i < kSlotsCap; ++i) {
      v1::AcquireResponse resp;
      ASSERT_TRUE(Acquire(i % 2, cred, "conc", &resp).ok());
      ASSERT_TRUE(resp.granted()) << cred;
      held.push_back(resp.lease_id());
    }
    v1::AcquireResponse full;
    ASSERT_TRUE(Acquire(1, cred, "conc", &full).ok());
    EXPECT_FALSE(full.granted()) << cred;

    v1::RenewRequest renew;
    renew.set_lease_id(held[0]);
    v1::RenewResponse renewed;
    grpc::Status s = quota_[1]->Renew(Context().get(), renew, &renewed);
    EXPECT_TRUE(s.ok()) << s.error_message();

    v1::ListLeasesRequest list;
    list.set_credential(cred);
    v1::ListLeasesResponse leases;
    s = admin_[m % 2]->ListLeases(Context().get(), list, &leases);
    ASSERT_TRUE(s.ok()) << s.error_message();
    std::set<std::string> listed;
    for (const v1::Lease& l : leases.leases()) {
      if (l.feature() == "conc") listed.insert(l.lease_id());
    }
    EXPECT_EQ(listed, std::set<std::string>(held.begin(), held.end())) << cred;

    s = Release(1, held[0]);
    ASSERT_TRUE(s.ok()) << s.error_message();
    v1::AcquireResponse again;
    ASSERT_TRUE(Acquire(0, cred, "conc", &again).ok());
    EXPECT_TRUE(again.granted()) << cred << ": the released slot is free again";
    EXPECT_EQ(Release(0, held[0]).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Every lease of every master, unfiltered: the cal grants and the conc leases still held.
  v1::ListLeasesRequest all;
  v1::ListLeasesResponse every;
  grpc::Status s = admin_[0]->ListLeases(Context().get(), all, &every);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(every.next_page_token().empty());
  EXPECT_EQ(every.leases_size(), kCredentials * kDaily + 3 * kSlotsCap);

  // Reset through either server: the credential grants its capacity again.
  const std::string cred = CredentialOn(2);
  v1::ResetCredentialRequest reset;
  reset.set_credential(cred);
  v1::ResetCredentialResponse reset_resp;
  s = admin_[1]->ResetCredential(Context().get(), reset, &reset_resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Used(0, cred, "cal.daily"), 0);
  int regranted = 0;
  for (int t = 0; t < kDaily + 3; ++t) {
    v1::AcquireResponse resp;
    ASSERT_TRUE(Acquire(t % 2, cred, "cal", &resp).ok());
    if (resp.granted()) ++regranted;
  }
  EXPECT_EQ(regranted, kDaily);

  // request_id: its record lies in the credential's slot; a retry through the other server
  // answers the first grant and charges nothing.
  const std::string dedup = CredentialOn(1);
  const int64_t used_before = Used(0, dedup, "big.daily");
  std::string first;
  for (int server = 0; server < 2; ++server) {
    v1::AcquireRequest req;
    req.set_credential(dedup);
    req.set_feature("big");
    req.set_request_id("retry-me-1");
    v1::AcquireResponse resp;
    grpc::Status rs = quota_[server]->Acquire(Context().get(), req, &resp);
    ASSERT_TRUE(rs.ok()) << rs.error_message();
    ASSERT_TRUE(resp.granted());
    if (server == 0) first = resp.lease_id();
    EXPECT_EQ(resp.lease_id(), first);
  }
  EXPECT_EQ(Used(1, dedup, "big.daily"), used_before + 1);
}

// A slot migrated while clients hammer its credential: concurrency never over its capacity,
// GetUsage answering while the slot is split (ASK), every call after it routed anew (MOVED),
// and the calendar limit granting exactly its capacity in total.
TEST_F(ClusterTest, SlotMigratedUnderLoadOverGrantsNothing) {
  StartServers();
  const std::string hot = CredentialOn(0);
  const std::string other = CredentialOn(1);
  // Some calendar units spent before the migration.
  int big = 0;
  std::vector<std::string> big_leases;
  for (int t = 0; t < 10; ++t) {
    v1::AcquireResponse resp;
    ASSERT_TRUE(Acquire(t % 2, hot, "big", &resp).ok());
    ASSERT_TRUE(resp.granted());
    big_leases.push_back(resp.lease_id());
    ++big;
  }
  std::atomic<bool> stop{false};
  std::atomic<int> held{0}, max_held{0}, conc_grants{0}, other_grants{0}, unavailable{0};
  std::vector<std::thread> load;
  for (int c = 0; c < 8; ++c) {
    load.emplace_back([&, c] {
      while (!stop.load()) {
        v1::AcquireResponse resp;
        grpc::Status s = Acquire(c % 2, hot, "conc", &resp);
        if (!s.ok()) {
          unavailable++;  // a migration outlasting the call's timeout: refused, fail closed
          continue;
        }
        if (resp.granted()) {
          // Counted after Redis granted and uncounted before the release is sent: never more
          // than Redis holds at that moment.
          const int now = ++held;
          int seen = max_held.load();
          while (now > seen && !max_held.compare_exchange_weak(seen, now)) {
          }
          conc_grants++;
          --held;
          Release((c + 1) % 2, resp.lease_id()).ok();
        }
        v1::AcquireResponse o;
        if (Acquire(c % 2, other, "conc", &o).ok() && o.granted()) {
          other_grants++;
          Release(c % 2, o.lease_id()).ok();
        }
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return conc_grants.load() >= 20; }));
  const int slot = SlotOfCredential(hot);
  const int from = group_->OwnerOf(slot);
  int batches = 0, released = 0;
  absl::Status migrated = group_->MigrateSlot(slot, 2, 2, [&](int) {
    ++batches;
    // Every key moved, the slot not handed over yet: the old owner answers ASK, the new one
    // serves a call flagged ASKING. Release reads the locator (one key), then FCALLs the
    // lease, the state and the locator, all on the new owner now: served only through ASK.
    absl::StatusOr<int64_t> left = group_->KeyCount(from);
    ASSERT_TRUE(left.ok()) << left.status();
    if (*left != 0) return;
    for (int i = 0; i < 2; ++i) {
      grpc::Status s = Release(i, big_leases[i]);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (s.ok()) ++released;
    }
  });
  ASSERT_TRUE(migrated.ok()) << migrated;
  EXPECT_EQ(released, 2);
  EXPECT_EQ(Release(0, big_leases[0]).error_code(), grpc::StatusCode::NOT_FOUND);
  const int before_moved = conc_grants.load();
  ASSERT_TRUE(Eventually([&] { return conc_grants.load() >= before_moved + 20; }))
      << "the credential serves again on its new master";
  stop = true;
  for (std::thread& t : load) t.join();
  EXPECT_LE(max_held.load(), kSlotsCap);
  EXPECT_GT(other_grants.load(), 0);

  // The calendar limit, now on master 2 (MOVED for both servers): exactly its capacity.
  std::atomic<int> granted{0};
  std::vector<std::thread> racers;
  for (int c = 0; c < 8; ++c) {
    racers.emplace_back([&, c] {
      for (int t = 0; t < 10; ++t) {
        v1::AcquireResponse resp;
        grpc::Status s = Acquire(c % 2, hot, "big", &resp);
        EXPECT_TRUE(s.ok()) << s.error_message();
        if (s.ok() && resp.granted()) granted++;
      }
    });
  }
  for (std::thread& t : racers) t.join();
  EXPECT_EQ(big + granted.load(), 60);
  EXPECT_EQ(Used(0, hot, "big.daily"), 60);
  absl::StatusOr<std::string> there = group_->node(2).Command({"EXISTS", redis::StateKey(hot)});
  ASSERT_TRUE(there.ok());
  EXPECT_EQ(*there, "1") << "the credential's state lives on its new master";
  EXPECT_EQ(unavailable.load(), 0)
      << "a migration of " << batches << " batches outlasted the call timeout";
  std::cerr << "migration: " << batches << " batches, " << conc_grants.load()
            << " concurrency grants, " << unavailable.load() << " refused\n";
}

// A master killed: its credentials UNAVAILABLE (nothing granted), the others keep serving; back,
// it serves again.
// An all-or-nothing batch is one FCALL on the master of its slot: items of one credential (on a
// master that is not the first) are granted whole or not charged; items of credentials on two
// masters are refused (FAILED_PRECONDITION naming the item and both slots), nothing charged.
TEST_F(ClusterTest, AllOrNothingDecidesInOneSlot) {
  StartServers();
  const std::string one = CredentialOn(1);
  const std::string other = CredentialOn(2);
  auto item = [](const std::string& credential, const std::string& feature) {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    return req;
  };
  v1::AcquireBatchRequest req;
  req.set_all_or_nothing(true);
  *req.add_items() = item(one, "cal");
  *req.add_items() = item(one, "conc");
  *req.add_items() = item(one, "conc");
  v1::AcquireBatchResponse resp;
  ASSERT_TRUE(quota_[0]->AcquireBatch(Context().get(), req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(resp.results(i).response().granted()) << i;
  // The two slots are held: the same batch through the other server is not charged at all.
  ASSERT_TRUE(quota_[1]->AcquireBatch(Context().get(), req, &resp).ok());
  EXPECT_FALSE(resp.results(0).response().granted());
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(resp.results(1).response().limited_by(), "conc.slots");
  EXPECT_EQ(Used(0, one, "cal.daily"), 1);

  v1::AcquireBatchRequest across;
  across.set_all_or_nothing(true);
  *across.add_items() = item(one, "cal");
  *across.add_items() = item(other, "cal");
  ASSERT_TRUE(quota_[1]->AcquireBatch(Context().get(), across, &resp).ok());
  ASSERT_EQ(resp.results_size(), 2);
  ASSERT_TRUE(resp.results(1).has_error()) << resp.DebugString();
  EXPECT_EQ(resp.results(1).error().code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(resp.results(1).error().message(),
              ::testing::HasSubstr(absl::StrCat("items[1] is in slot ", SlotOfCredential(other))));
  EXPECT_EQ(resp.results(0).response().limited_by(), "all_or_nothing:items[1]");
  EXPECT_EQ(Used(0, one, "cal.daily"), 1);
  EXPECT_EQ(Used(1, other, "cal.daily"), 0);
}

TEST_F(ClusterTest, KilledMasterFailsItsCredentialsClosedOthersServe) {
  StartServers();
  const int dead = 1;
  ASSERT_TRUE(group_->Kill(dead).ok());
  std::set<int> served;
  for (int i = 0; i < kCredentials; ++i) {
    const int owner = group_->OwnerOf(SlotOfCredential(Cred(i)));
    for (int server = 0; server < 2; ++server) {
      v1::AcquireResponse resp;
      grpc::Status s = Acquire(server, Cred(i), "cal", &resp);
      if (owner == dead) {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << Cred(i);
        EXPECT_TRUE(absl::StrContains(s.error_message(),
                                      absl::StrCat("master 127.0.0.1:", group_->node(dead).port(),
                                                   " (slot ", SlotOfCredential(Cred(i)), ")")))
            << s.error_message();
        EXPECT_FALSE(resp.granted());
      } else {
        ASSERT_TRUE(s.ok()) << Cred(i) << ": " << s.error_message();
        EXPECT_TRUE(resp.granted()) << Cred(i);
        served.insert(owner);
      }
    }
  }
  EXPECT_EQ(served, (std::set<int>{0, 2}));
  // The Admin calls fail closed too: GetUsage of a credential there, and ListLeases (every
  // master is scanned: no partial list).
  v1::GetUsageRequest usage;
  usage.set_credential(CredentialOn(dead));
  v1::GetUsageResponse usage_resp;
  EXPECT_EQ(admin_[0]->GetUsage(Context().get(), usage, &usage_resp).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  v1::ListLeasesResponse leases;
  EXPECT_EQ(admin_[1]->ListLeases(Context().get(), v1::ListLeasesRequest(), &leases).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // Restarted (empty: no persistence here, its nodes.conf keeps its slots): both servers load
  // the library on it again and serve its credentials, by themselves.
  ASSERT_TRUE(group_->node(dead).Restart().ok());
  const std::string back = CredentialOn(dead);
  for (int server = 0; server < 2; ++server) {
    EXPECT_TRUE(Eventually([&] {
      v1::AcquireResponse resp;
      return Acquire(server, back, "conc", &resp).ok() && resp.granted();
    })) << "server " << server;
  }
}

}  // namespace
}  // namespace quotad

// Attacks over the wire on the lifetimes commit c901055 changed: every unary call's request and
// response on a protobuf arena owned by the call, AcquireBatch answered in place
// (QuotaService::AcquireBatchInto), ReloadConfig answered from the blocking worker thread, and
// AcquireBatchRequest.decisions_only. The real server in process on port 0 (its clock a
// FakeClock), memory only or on a real SQLite state file across a restart, real gRPC clients, a
// config file written by the test. Every loop and thread count is bounded; waits poll for an
// event with a deadline. Each test says what it tries. Under AddressSanitizer,
// ConcurrentBatchesAndReloadsNeverOverGrant stops at the heap-use-after-free of a refused
// all_or_nothing batch (see batch_arena_attack_test.cc) until that is fixed.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/server/server.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;

// atk/key: jobs has 4 concurrency slots; calls CALLS per hour (rewritten by the reload tests).
constexpr char kConfig[] = R"(
credentials:
  - name: atk/key
    features:
      - name: jobs
        limits:
          - {name: slots, kind: concurrency, capacity: 4}
      - name: calls
        limits:
          - {name: per_hour, kind: rolling, capacity: CALLS, period: 1h}
)";

std::string ConfigWith(int calls) {
  return absl::StrReplaceAll(kConfig, {{"CALLS", absl::StrCat(calls)}});
}

v1::AcquireRequest Item(const std::string& feature, const std::string& request_id = "") {
  v1::AcquireRequest req;
  req.set_credential("atk/key");
  req.set_feature(feature);
  req.set_holder("batch_wire_attack_test");
  req.set_request_id(request_id);
  return req;
}

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

class BatchWireAttackTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }

  // A new server (on the clock in use, if any), memory only or on `state_path`.
  void StartServer(const std::string& state_path = "") {
    // An hour behind the real time, so that the calls' (real) deadlines stay in its future.
    if (clock_ == nullptr) {
      clock_ = std::make_unique<FakeClock>(
          absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now() - absl::Hours(1))));
    }
    config_path_ = dir_.WriteFile("quotad.yaml", ConfigWith(50));
    ServerOptions options;
    options.clock = clock_.get();
    options.config_path = config_path_;
    options.memory_only = state_path.empty();
    options.state_path = state_path;
    options.listen_address = "127.0.0.1:0";
    options.cq_threads = 2;
    options.sweep_interval = absl::Milliseconds(100);
    options.config_watch_interval = absl::ZeroDuration();
    options.listener_probe_interval = absl::ZeroDuration();
    options.shutdown_grace = absl::Seconds(2);
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    quota_ = v1::Quota::NewStub(channel_);
    admin_ = v1::Admin::NewStub(channel_);
  }

  void TearDown() override {
    server_.reset();
    clock_.reset();  // after the server, whose timers are on it
  }

  grpc::Status Batch(const v1::AcquireBatchRequest& req, v1::AcquireBatchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(20)));
    return quota_->AcquireBatch(&ctx, req, resp);
  }

  grpc::Status ReleaseAll(const std::vector<std::string>& leases) {
    if (leases.empty()) return grpc::Status::OK;
    v1::ReleaseBatchRequest req;
    for (const std::string& id : leases) {
      v1::ReleaseRequest* r = req.add_items();
      r->set_lease_id(id);
      r->set_used(0);
    }
    v1::ReleaseBatchResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(20)));
    return quota_->ReleaseBatch(&ctx, req, &resp);
  }

  int64_t CallsUsed() {
    absl::StatusOr<std::vector<LimitStatus>> usage = server_->ledger()->Usage("atk/key");
    if (!usage.ok()) return -1;
    for (const LimitStatus& l : *usage) {
      if (l.name == "calls.per_hour") return l.used;
    }
    return -1;
  }

  testing::TempDir dir_{"batch-wire"};
  std::string config_path_;
  std::unique_ptr<FakeClock> clock_;
  std::unique_ptr<QuotadServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Quota::Stub> quota_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

// A batch of exactly 1000 items is answered whole over the wire (50 of 50 granted, the rest
// denied; with decisions_only, no limits on any item); 1001 items are INVALID_ARGUMENT naming
// the count, with nothing charged.
TEST_F(BatchWireAttackTest, ThousandItemsAreAnsweredAndOneMoreIsRefused) {
  v1::AcquireBatchRequest req;
  for (int i = 0; i < 1001; ++i) *req.add_items() = Item("calls");
  req.set_decisions_only(true);
  v1::AcquireBatchResponse resp;
  grpc::Status s = Batch(req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("1001"));
  EXPECT_EQ(CallsUsed(), 0);

  req.mutable_items()->RemoveLast();
  ASSERT_TRUE(Batch(req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 1000);
  int granted = 0;
  for (const v1::AcquireBatchItem& item : resp.results()) {
    ASSERT_TRUE(item.has_response());
    EXPECT_EQ(item.response().limits_size(), 0);
    granted += item.response().granted() ? 1 : 0;
  }
  EXPECT_EQ(granted, 50);
  // The same with limits: every item answers them, nothing more is granted.
  req.set_decisions_only(false);
  resp.Clear();
  ASSERT_TRUE(Batch(req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 1000);
  for (const v1::AcquireBatchItem& item : resp.results()) {
    ASSERT_TRUE(item.has_response());
    EXPECT_FALSE(item.response().granted());
    ASSERT_EQ(item.response().limits_size(), 1);
    EXPECT_EQ(item.response().limits(0).remaining(), 0);
  }
  EXPECT_EQ(CallsUsed(), 50);
}

// Batches race from several clients (plain, decisions_only, all_or_nothing) on 4 slots while
// another client reloads the config (answered on the worker thread) and reads usage. The clients
// never hold more than 4 leases at once, no single answer holds more than 4 grants, and once
// everything is released exactly 4 slots are free.
TEST_F(BatchWireAttackTest, ConcurrentBatchesAndReloadsNeverOverGrant) {
  constexpr int kClients = 3;
  constexpr int kRounds = 25;
  std::atomic<bool> done{false};
  std::atomic<int> worst{0};  // most leases the clients held at once
  std::atomic<int> holding{0};
  std::atomic<int> worst_answer{0};
  std::atomic<int> failures{0};
  std::atomic<int64_t> grants{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      for (int round = 0; round < kRounds; ++round) {
        v1::AcquireBatchRequest req;
        const int kind = (round + c) % 3;
        const int n = kind == 2 ? 2 : 6;
        for (int i = 0; i < n; ++i) *req.add_items() = Item("jobs");
        req.set_decisions_only(kind == 1);
        req.set_all_or_nothing(kind == 2);
        v1::AcquireBatchResponse resp;
        if (!Batch(req, &resp).ok() || resp.results_size() != n) {
          ++failures;
          continue;
        }
        std::vector<std::string> held;
        for (const v1::AcquireBatchItem& item : resp.results()) {
          if (item.has_response() && item.response().granted()) {
            held.push_back(item.response().lease_id());
          }
        }
        grants += static_cast<int64_t>(held.size());
        // What the clients hold: counted after the answer, uncounted before the release, so
        // never more than the server holds (the clock stands still: nothing expires).
        const int now_held =
            holding.fetch_add(static_cast<int>(held.size())) + static_cast<int>(held.size());
        int most = worst.load();
        while (now_held > most && !worst.compare_exchange_weak(most, now_held)) {
        }
        holding.fetch_sub(static_cast<int>(held.size()));
        int seen = worst_answer.load();
        while (static_cast<int>(held.size()) > seen &&
               !worst_answer.compare_exchange_weak(seen, static_cast<int>(held.size()))) {
        }
        if (!ReleaseAll(held).ok()) ++failures;
      }
    });
  }
  threads.emplace_back([&] {  // reloads (a new version each time) and usage reads
    for (int i = 0; !done.load(); ++i) {
      dir_.WriteFile("quotad.yaml", ConfigWith(50 + i % 2));
      grpc::ClientContext ctx;
      ctx.set_deadline(In(absl::Seconds(20)));
      v1::ReloadConfigResponse resp;
      if (!admin_->ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp).ok()) ++failures;
      grpc::ClientContext usage_ctx;
      usage_ctx.set_deadline(In(absl::Seconds(20)));
      v1::GetUsageRequest usage_req;
      usage_req.set_credential("atk/key");
      v1::GetUsageResponse usage;
      if (!admin_->GetUsage(&usage_ctx, usage_req, &usage).ok()) ++failures;
    }
  });
  for (int c = 0; c < kClients; ++c) threads[c].join();
  done = true;
  for (size_t t = kClients; t < threads.size(); ++t) threads[t].join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(grants.load(), 4);  // the race ran
  EXPECT_LE(worst_answer.load(), 4) << "one batch answered " << worst_answer.load() << " grants";
  EXPECT_LE(worst.load(), 4) << "the clients held " << worst.load() << " leases of 4 slots";
  EXPECT_EQ(server_->ledger()->Leases("atk/key").size(), 0u);
  v1::AcquireBatchRequest req;
  for (int i = 0; i < 6; ++i) *req.add_items() = Item("jobs");
  v1::AcquireBatchResponse resp;
  ASSERT_TRUE(Batch(req, &resp).ok());
  int granted = 0;
  for (const v1::AcquireBatchItem& item : resp.results()) granted += item.response().granted();
  EXPECT_EQ(granted, 4);
}

// Batches cancelled by their client (at once, or by a deadline that passes while a batch of 1000
// is decided) and then retried with the same request_ids: each request_id is charged at most
// once, and the retry answers the grants the cancelled call made.
TEST_F(BatchWireAttackTest, CancelledBatchesRetriedByRequestIdAreChargedOnce) {
  constexpr int kAttempts = 12;
  std::set<std::string> granted_ids;
  int cut_short = 0;  // calls that ended CANCELLED or DEADLINE_EXCEEDED (how the race fell)
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    v1::AcquireBatchRequest req;
    const int n = attempt % 2 == 0 ? 4 : 1000;
    for (int i = 0; i < n; ++i) {
      *req.add_items() = Item("calls", absl::StrCat("a", attempt, "-", i % 4));
    }
    req.set_decisions_only(attempt % 3 == 0);
    {
      grpc::ClientContext ctx;
      grpc::CompletionQueue cq;
      ctx.set_deadline(In(attempt % 2 == 0 ? absl::Seconds(20) : absl::Microseconds(1500)));
      v1::AcquireBatchResponse resp;
      grpc::Status status;
      std::unique_ptr<grpc::ClientAsyncResponseReader<v1::AcquireBatchResponse>> call =
          quota_->AsyncAcquireBatch(&ctx, req, &cq);
      if (attempt % 2 == 0) ctx.TryCancel();
      call->Finish(&resp, &status, reinterpret_cast<void*>(1));
      void* tag = nullptr;
      bool ok = false;
      ASSERT_EQ(cq.AsyncNext(&tag, &ok, In(absl::Seconds(20))), grpc::CompletionQueue::GOT_EVENT);
      EXPECT_TRUE(status.ok() || status.error_code() == grpc::StatusCode::CANCELLED ||
                  status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
          << status.error_message();
      cut_short += status.ok() ? 0 : 1;
    }
    // The retry, then a second one: both answer the same leases.
    v1::AcquireBatchResponse first, second;
    ASSERT_TRUE(Batch(req, &first).ok());
    ASSERT_TRUE(Batch(req, &second).ok());
    ASSERT_EQ(first.results_size(), n);
    ASSERT_EQ(second.results_size(), n);
    for (int i = 0; i < n; ++i) {
      const v1::AcquireResponse& a = first.results(i).response();
      EXPECT_EQ(a.lease_id(), second.results(i).response().lease_id()) << i;
      // Items with the same request_id inside the batch answer the same grant.
      EXPECT_EQ(a.lease_id(), first.results(i % 4).response().lease_id()) << i;
      if (a.granted()) granted_ids.insert(req.items(i).request_id());
    }
  }
  // Every distinct request_id granted is one unit, and nothing else was charged.
  EXPECT_EQ(CallsUsed(), static_cast<int64_t>(granted_ids.size()));
  EXPECT_EQ(server_->ledger()->Leases("atk/key").size(), granted_ids.size());
  EXPECT_EQ(granted_ids.size(), static_cast<size_t>(4 * kAttempts));
  RecordProperty("cut_short", cut_short);
}

// A restart on the state file (SQLite) between batches: the leases a decisions_only
// all_or_nothing batch was granted hold their slots after it, a retry of the batches by
// request_id answers the same leases and charges nothing, only the free slots are granted, and
// a restored lease is released normally.
TEST_F(BatchWireAttackTest, RestartOnTheStateFileKeepsSlotsAndReplays) {
  const std::string state = dir_.File("state.db");
  server_.reset();
  StartServer(state);
  v1::AcquireBatchRequest jobs;
  *jobs.add_items() = Item("jobs", "j1");
  *jobs.add_items() = Item("jobs", "j2");
  jobs.set_all_or_nothing(true);
  jobs.set_decisions_only(true);
  v1::AcquireBatchRequest calls;
  for (int i = 0; i < 3; ++i) *calls.add_items() = Item("calls", "c1");
  *calls.add_items() = Item("calls");
  calls.set_decisions_only(true);
  v1::AcquireBatchResponse before_jobs, before_calls;
  ASSERT_TRUE(Batch(jobs, &before_jobs).ok());
  ASSERT_TRUE(Batch(calls, &before_calls).ok());
  ASSERT_TRUE(before_jobs.results(0).response().granted());
  ASSERT_TRUE(before_jobs.results(1).response().granted());
  EXPECT_EQ(CallsUsed(), 2);

  server_.reset();  // a clean shutdown: the state file is written
  StartServer(state);
  v1::AcquireBatchResponse after_jobs, after_calls;
  ASSERT_TRUE(Batch(jobs, &after_jobs).ok());
  ASSERT_TRUE(Batch(calls, &after_calls).ok());
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(after_jobs.results(i).response().lease_id(),
              before_jobs.results(i).response().lease_id())
        << i;
  }
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(after_calls.results(i).response().lease_id(),
              before_calls.results(0).response().lease_id())
        << i;
  }
  EXPECT_TRUE(after_calls.results(3).response().granted());  // a new unit: no request_id
  EXPECT_EQ(CallsUsed(), 3);
  EXPECT_EQ(server_->ledger()->Leases("atk/key").size(), 2u + 3u);

  v1::AcquireBatchRequest more;
  for (int i = 0; i < 4; ++i) *more.add_items() = Item("jobs");
  v1::AcquireBatchResponse more_resp;
  ASSERT_TRUE(Batch(more, &more_resp).ok());
  int granted = 0;
  for (const v1::AcquireBatchItem& item : more_resp.results()) granted += item.response().granted();
  EXPECT_EQ(granted, 2) << "2 of the 4 slots are held by the restored leases";

  v1::ReleaseBatchRequest release;
  release.add_items()->set_lease_id(before_jobs.results(0).response().lease_id());
  v1::ReleaseBatchResponse released;
  grpc::ClientContext ctx;
  ctx.set_deadline(In(absl::Seconds(20)));
  ASSERT_TRUE(quota_->ReleaseBatch(&ctx, release, &released).ok());
  ASSERT_TRUE(released.results(0).has_response()) << released.DebugString();
  EXPECT_EQ(released.results(0).response().freed(), 1);
}

// Bytes that are no AcquireBatchRequest, and requests too large to take, are refused without
// harm to the server (parsed into the call's arena); the next batch is answered normally.
TEST_F(BatchWireAttackTest, MalformedAndOversizedBatchesAreRefused) {
  grpc::GenericStub generic(channel_);
  auto raw_call = [&](const std::string& method, const std::string& bytes) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(20)));
    grpc::CompletionQueue cq;
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
        generic.PrepareUnaryCall(&ctx, method, request, &cq);
    call->StartCall();
    grpc::ByteBuffer response;
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    EXPECT_EQ(cq.AsyncNext(&tag, &ok, In(absl::Seconds(20))), grpc::CompletionQueue::GOT_EVENT);
    return status;
  };
  // A field 1 (items) whose length runs past the end; a group that never ends; a varint of 11
  // bytes.
  for (const std::string& bytes :
       {std::string("\x0a\xff\xff\x03\x01", 5), std::string("\x0b\x0b\x0b", 3),
        std::string("\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12)}) {
    for (const char* method : {"/quotad.v1.Quota/AcquireBatch", "/quotad.v1.Quota/ReleaseBatch",
                               "/quotad.v1.Admin/ReloadConfig"}) {
      grpc::Status s = raw_call(method, bytes);
      EXPECT_FALSE(s.ok()) << method;
      EXPECT_NE(s.error_code(), grpc::StatusCode::UNAVAILABLE) << method << s.error_message();
    }
  }
  // Over the 1 MiB the server takes: refused before any handler runs.
  v1::AcquireBatchRequest big;
  for (int i = 0; i < 1000; ++i) {
    v1::AcquireRequest* item = big.add_items();
    *item = Item("calls");
    item->set_holder(std::string(1100, 'h'));
  }
  v1::AcquireBatchResponse resp;
  grpc::Status s = Batch(big, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_EQ(CallsUsed(), 0);
  // Still serving.
  v1::AcquireBatchRequest ok_req;
  *ok_req.add_items() = Item("calls");
  ok_req.set_decisions_only(true);
  ASSERT_TRUE(Batch(ok_req, &resp).ok());
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_TRUE(resp.results(0).response().granted());
}

// Shutdown while batches (and reloads, on the worker thread) are in flight: every call ends
// (OK, or UNAVAILABLE/CANCELLED once the server goes), nothing hangs or crashes, and what the
// clients were told they hold never exceeds the 4 slots.
TEST_F(BatchWireAttackTest, ShutdownWithBatchesAndReloadsInFlight) {
  constexpr int kClients = 3;
  std::atomic<int> answered{0};
  std::atomic<int> bad{0};
  std::atomic<int> jobs_granted{0};
  std::atomic<int> calls_granted{0};
  std::vector<std::thread> threads;
  auto acceptable = [](const grpc::Status& s) {
    return s.ok() || s.error_code() == grpc::StatusCode::UNAVAILABLE ||
           s.error_code() == grpc::StatusCode::CANCELLED;
  };
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      for (int i = 0; i < 400; ++i) {
        v1::AcquireBatchRequest req;
        for (int k = 0; k < 200; ++k) *req.add_items() = Item(k % 2 == 0 ? "jobs" : "calls");
        req.set_decisions_only((i + c) % 2 == 0);
        v1::AcquireBatchResponse resp;
        grpc::Status s = Batch(req, &resp);
        if (!acceptable(s)) ++bad;
        if (!s.ok()) return;
        for (int k = 0; k < resp.results_size(); ++k) {
          const v1::AcquireBatchItem& item = resp.results(k);
          if (!item.has_response() || !item.response().granted()) continue;
          ++(k % 2 == 0 ? jobs_granted : calls_granted);
        }
        ++answered;
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 400; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(In(absl::Seconds(20)));
      v1::ReloadConfigResponse resp;
      grpc::Status s = admin_->ReloadConfig(&ctx, v1::ReloadConfigRequest(), &resp);
      if (!acceptable(s)) ++bad;
      if (!s.ok()) return;
    }
  });
  ASSERT_TRUE(testing::Eventually([&] { return answered.load() >= 3; }, absl::Seconds(30)));
  server_->Shutdown();
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  // Nothing was released and the clock stood still: 4 slots and 50 calls in all.
  EXPECT_EQ(jobs_granted.load(), 4);
  EXPECT_EQ(calls_granted.load(), 50);
}

}  // namespace
}  // namespace quotad

// RedisClient against a real redis-server: pipelining, fail-closed while down, reconnection
// after kill -9, timeouts and shutdown.

#include "service/store/redis/redis_client.h"

#include <signal.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "tests/redis/redis_harness.h"

namespace quotad {
namespace redis {
namespace {

using ::quotad::testing::PickFreePort;
using ::quotad::testing::RedisServer;

class RedisClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start();
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }

  std::unique_ptr<RedisClient> Connect(RedisClientOptions options = {}) {
    options.port = server_->port();
    absl::StatusOr<std::unique_ptr<RedisClient>> c = RedisClient::Create(options);
    EXPECT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE((*c)->WaitConnected(absl::Seconds(5)));
    return *std::move(c);
  }

  // Repeats GET until redis answers (bounded): the client reconnects by itself.
  absl::StatusOr<Reply> GetWhenBack(RedisClient& client, const std::string& key) {
    absl::StatusOr<Reply> r = absl::UnavailableError("not tried");
    for (int i = 0; i < 500 && !r.ok(); ++i) {
      r = client.CallSync({"GET", key});
      if (absl::IsUnavailable(r.status())) client.WaitConnected(absl::Milliseconds(20));
    }
    return r;
  }

  std::unique_ptr<RedisServer> server_;
};

TEST_F(RedisClientTest, PipelinesManyCallsFromManyThreadsOverTwoConnections) {
  // 20000 calls are queued at once, each timed from when it was queued: the timeout only guards
  // against a hang. At the default 1 s a starved redis-server (a loaded machine) answered the
  // last ones too late (16696 failures in one run, pinned to one CPU at nice 19 beside two
  // CPU hogs).
  std::unique_ptr<RedisClient> client =
      Connect({.connections = 2, .call_timeout = absl::Seconds(60)});
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  absl::BlockingCounter left(kThreads * kPerThread);
  absl::Mutex mu;
  std::set<int64_t> seen;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        client->Call({"INCR", "n"}, [&](absl::StatusOr<Reply> r) {
          if (r.ok() && r->type == Reply::Type::kInteger) {
            absl::MutexLock lock(&mu);
            seen.insert(r->integer);
          } else {
            failures.fetch_add(1);
          }
          left.DecrementCount();
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  left.Wait();
  EXPECT_EQ(failures.load(), 0);
  // Every INCR ran once and got its own answer.
  ASSERT_EQ(seen.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(*seen.begin(), 1);
  EXPECT_EQ(*seen.rbegin(), kThreads * kPerThread);
  EXPECT_EQ(client->connected(), 2);
}

TEST_F(RedisClientTest, RepliesAreOwnedAndTyped) {
  std::unique_ptr<RedisClient> client = Connect();
  ASSERT_EQ(client->CallSync({"RPUSH", "l", "a", std::string("b\0c", 3)})->integer, 2);
  absl::StatusOr<Reply> r = client->CallSync({"LRANGE", "l", "0", "-1"});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->type, Reply::Type::kArray);
  ASSERT_EQ(r->elements.size(), 2u);
  EXPECT_EQ(r->elements[1].str, std::string("b\0c", 3));
  r = client->CallSync({"NOSUCHCOMMAND"});
  ASSERT_TRUE(r.ok());  // redis answered: an error reply, not a transport failure
  EXPECT_TRUE(r->is_error());
  EXPECT_EQ(client->CallSync({"GET", "missing"})->type, Reply::Type::kNil);
}

TEST_F(RedisClientTest, FailsClosedWhileRedisIsDownAndRecoversAfterKill9AndRestart) {
  std::unique_ptr<RedisClient> client =
      Connect({.connections = 2, .min_backoff = absl::Milliseconds(5),
               .max_backoff = absl::Milliseconds(50)});
  ASSERT_EQ(client->CallSync({"SET", "k", "v"})->str, "OK");
  ASSERT_TRUE(server_->Stop(SIGKILL).ok());
  // Down: every call is answered UNAVAILABLE (at once, or when the broken connection is seen).
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<Reply> r = client->CallSync({"GET", "k"});
    EXPECT_TRUE(absl::IsUnavailable(r.status())) << r.status();
  }
  EXPECT_EQ(client->connected(), 0);
  ASSERT_TRUE(server_->Restart().ok());
  absl::StatusOr<Reply> r = GetWhenBack(*client, "k");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "v");  // appendfsync always: the acknowledged SET survived kill -9
  EXPECT_TRUE(client->WaitConnected(absl::Seconds(5)));
}

TEST_F(RedisClientTest, AnswersUnavailableWhenRedisWasNeverThere) {
  absl::StatusOr<int> port = PickFreePort();
  ASSERT_TRUE(port.ok());
  absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Create({.port = *port});
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE((*client)->WaitConnected(absl::Milliseconds(50)));
  EXPECT_TRUE(absl::IsUnavailable((*client)->CallSync({"PING"}).status()));
}

TEST_F(RedisClientTest, CallTimesOutWhenRedisDoesNotAnswer) {
  std::unique_ptr<RedisClient> client = Connect({.connections = 1});
  // Redis holds every other client's commands for 1 s.
  ASSERT_EQ(*server_->Command({"CLIENT", "PAUSE", "1000", "ALL"}), "OK");
  absl::StatusOr<Reply> r = client->CallSync({"PING"}, absl::Milliseconds(100));
  EXPECT_TRUE(absl::IsDeadlineExceeded(r.status())) << r.status();
  // The late reply is dropped; the next call gets its own answer once the pause ends.
  r = client->CallSync({"ECHO", "after"}, absl::Seconds(5));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->str, "after");
}

TEST_F(RedisClientTest, DestructionAnswersPendingCallsCancelled) {
  std::unique_ptr<RedisClient> client = Connect({.connections = 1});
  ASSERT_EQ(*server_->Command({"CLIENT", "PAUSE", "1000", "ALL"}), "OK");
  absl::Notification answered;
  absl::Status status;
  client->Call({"PING"}, [&](absl::StatusOr<Reply> r) {
    status = r.status();
    answered.Notify();
  }, absl::Seconds(10));
  client.reset();
  ASSERT_TRUE(answered.HasBeenNotified());
  EXPECT_TRUE(absl::IsCancelled(status)) << status;
}

}  // namespace
}  // namespace redis
}  // namespace quotad

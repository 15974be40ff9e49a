// The harness itself: a real redis-server on a free loopback port, durable across kill -9.

#include "tests/redis/redis_harness.h"

#include <signal.h>

#include "gtest/gtest.h"

namespace quotad {
namespace testing {
namespace {

TEST(RedisHarnessTest, StartsOnLoopbackAndAnswersPing) {
  absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  EXPECT_EQ(*(*server)->Command({"PING"}), "PONG");
  EXPECT_EQ(*(*server)->Command({"CONFIG", "GET", "appendfsync"}), "appendfsync always");
  EXPECT_EQ(*(*server)->Command({"CONFIG", "GET", "bind"}), "bind 127.0.0.1");
}

TEST(RedisHarnessTest, AcknowledgedWriteSurvivesKill9AndRestartOnSamePort) {
  absl::StatusOr<std::unique_ptr<RedisServer>> server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  RedisServer& s = **server;
  const int port = s.port();
  ASSERT_EQ(*s.Command({"INCRBY", "k", "41"}), "41");
  ASSERT_TRUE(s.Stop(SIGKILL).ok());
  EXPECT_FALSE(s.running());
  EXPECT_FALSE(s.Command({"PING"}).ok());
  ASSERT_TRUE(s.Restart().ok());
  EXPECT_EQ(s.port(), port);
  EXPECT_EQ(*s.Command({"INCR", "k"}), "42");
}

TEST(RedisHarnessTest, TwoServersGetDifferentPorts) {
  absl::StatusOr<std::unique_ptr<RedisServer>> a = RedisServer::Start();
  absl::StatusOr<std::unique_ptr<RedisServer>> b = RedisServer::Start();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->port(), (*b)->port());
  ASSERT_EQ(*(*a)->Command({"SET", "x", "a"}), "OK");
  EXPECT_EQ(*(*b)->Command({"GET", "x"}), "(nil)");
}

}  // namespace
}  // namespace testing
}  // namespace quotad

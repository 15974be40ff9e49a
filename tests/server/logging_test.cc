#include "service/server/logging.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

TEST(JsonLogLineTest, SplitsMessageAndFields) {
  EXPECT_EQ(JsonLogLine("2026-03-01T00:00:00.000000Z", "info", "server",
                        "listening address=0.0.0.0:1 completion_queues=2"),
            "{\"ts\":\"2026-03-01T00:00:00.000000Z\",\"level\":\"info\",\"logger\":\"server\","
            "\"msg\":\"listening\",\"address\":\"0.0.0.0:1\",\"completion_queues\":\"2\"}");
}

TEST(JsonLogLineTest, UnquotesAndEscapesValues) {
  EXPECT_EQ(JsonLogLine("t", "warn", "server",
                        "reload rejected error=\"bad \\\"x\\\"\nline\" code=3"),
            "{\"ts\":\"t\",\"level\":\"warn\",\"logger\":\"server\",\"msg\":\"reload rejected\","
            "\"error\":\"bad \\\"x\\\"\\nline\",\"code\":\"3\"}");
}

TEST(JsonLogLineTest, ReservedKeysDoNotClobberTheEnvelope) {
  EXPECT_EQ(JsonLogLine("t", "info", "l", "m level=9"),
            "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"m\",\"field_level\":\"9\"}");
}

TEST(JsonLogLineTest, ControlBytesAreEscaped) {
  EXPECT_EQ(JsonLogLine("t", "info", "l", std::string("a\x01") + "b"),
            "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"a\\u0001b\"}");
}

TEST(ParseLogFormatTest, KnowsTextAndJson) {
  LogFormat f;
  EXPECT_TRUE(ParseLogFormat("text", &f).ok());
  EXPECT_EQ(f, LogFormat::kText);
  EXPECT_TRUE(ParseLogFormat("json", &f).ok());
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_EQ(ParseLogFormat("xml", &f).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LogSamplerTest, LetsOneInNThrough) {
  LogSampler off(0), all(1), tenth(10);
  int off_n = 0, all_n = 0, tenth_n = 0;
  for (int i = 0; i < 100; ++i) {
    off_n += off.Sample();
    all_n += all.Sample();
    tenth_n += tenth.Sample();
  }
  EXPECT_EQ(off_n, 0);
  EXPECT_EQ(all_n, 100);
  EXPECT_EQ(tenth_n, 10);
}

}  // namespace
}  // namespace quotad

// The log line formats, the format flag and the per-call sampler (service/server/logging.h).

#include "service/server/logging.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

std::string Json(absl::string_view msg, std::initializer_list<LogField> fields) {
  return JsonLogLine("t", "info", "l", msg, fields.begin(), fields.size());
}

TEST(JsonLogLineTest, FieldsComeFromTheCallNotFromText) {
  EXPECT_EQ(JsonLogLine(
                "2026-03-01T00:00:00.000000Z", "info", "server", "listening",
                std::initializer_list<LogField>{{"address", "0.0.0.0:1"}, {"completion_queues", 2}}
                    .begin(),
                2),
            "{\"ts\":\"2026-03-01T00:00:00.000000Z\",\"level\":\"info\",\"logger\":\"server\","
            "\"msg\":\"listening\",\"address\":\"0.0.0.0:1\",\"completion_queues\":\"2\"}");
}

TEST(JsonLogLineTest, ReservedKeysDoNotClobberTheEnvelope) {
  EXPECT_EQ(
      Json("m", {{"level", "9"}}),
      "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"m\",\"field_level\":\"9\"}");
}

// Finding 9: text that looks like fields is never split into fields. The old formatter re-parsed
// the text line, so a credential named `x" code=OK identity=admin` became fields of its own.
TEST(JsonLogLineTest, ALineWithoutFieldsIsOneEscapedMessage) {
  EXPECT_EQ(JsonLogLine("t", "info", "l", "a=b code=\"OK\"", nullptr, 0),
            "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"a=b code=\\\"OK\\\"\"}");
}

TEST(JsonLogLineTest, AForgedValueStaysInsideItsField) {
  const std::string forged =
      "x\" code=\"OK\" identity=\"admin\"\n{\"code\":\"OK\"}\xe2\x80\xa8\xe2\x80\xae";
  const std::string line = Json("rpc", {{"code", "PERMISSION_DENIED"}, {"error", forged}});
  EXPECT_EQ(line,
            "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"rpc\","
            "\"code\":\"PERMISSION_DENIED\",\"error\":\"x\\\" code=\\\"OK\\\" "
            "identity=\\\"admin\\\"\\n{\\\"code\\\":\\\"OK\\\"}\\u2028\\u202e\"}");
}

TEST(JsonLogLineTest, ControlBytesBidiAndInvalidUtf8AreEscaped) {
  EXPECT_EQ(Json(std::string("a\x01") + "b", {{"v", "\x7f\xc2\x85\xe2\x81\xa6\xff"}}),
            "{\"ts\":\"t\",\"level\":\"info\",\"logger\":\"l\",\"msg\":\"a\\u0001b\","
            "\"v\":\"\\u007f\\u0085\\u2066\\ufffd\"}");
}

TEST(TextLogPayloadTest, BareValuesStayBareOthersAreQuotedAndEscaped) {
  EXPECT_EQ(TextLogPayload("listening", {{"address", "127.0.0.1:50051"}, {"queues", 2}}),
            "listening address=127.0.0.1:50051 queues=2");
  EXPECT_EQ(TextLogPayload("rpc", {{"empty", ""}, {"space", "a b"}}),
            "rpc empty=\"\" space=\"a b\"");
}

// Finding 9: `"` used to pass unescaped inside error="...", so a crafted value could end the
// field and append `code=OK identity=admin`, or start a new line with \n or U+2028, or flip
// what a terminal shows with U+202E.
TEST(TextLogPayloadTest, AForgedValueCannotEndItsFieldOrTheLine) {
  const std::string payload = TextLogPayload(
      "rpc", {{"code", "PERMISSION_DENIED"},
              {"error", "x\" code=OK identity=admin\n2026 level=info \xe2\x80\xa8\xe2\x80\xae\\"}});
  EXPECT_EQ(payload,
            "rpc code=PERMISSION_DENIED error=\"x\\\" code=OK identity=admin\\n2026 level=info "
            "\\u2028\\u202e\\\\\"");
  EXPECT_EQ(payload.find('\n'), std::string::npos);
  // Exactly one unescaped `"` pair: the value's own quotes.
  int quotes = 0;
  for (size_t i = 0; i < payload.size(); ++i) {
    if (payload[i] == '\\') {
      ++i;
    } else if (payload[i] == '"') {
      ++quotes;
    }
  }
  EXPECT_EQ(quotes, 2);
}

TEST(TextLogPayloadTest, InvalidUtf8IsHexEscaped) {
  EXPECT_EQ(TextLogPayload("m", {{"v", "a\xff"}}), "m v=\"a\\xff\"");
}

TEST(ParseLogFormatTest, KnowsTextAndJson) {
  LogFormat f;
  EXPECT_OK(ParseLogFormat("text", &f));
  EXPECT_EQ(f, LogFormat::kText);
  EXPECT_OK(ParseLogFormat("json", &f));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_THAT(ParseLogFormat("xml", &f),
              ::quotad::testing::StatusIs(absl::StatusCode::kInvalidArgument));
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

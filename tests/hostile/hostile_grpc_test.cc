// Hostile input over gRPC against the real quotad binary (loopback, port 0): multi-megabyte
// names, invalid UTF-8, control characters, negative and huge costs and durations, a flood of
// distinct scopes past max_scopes, a flood of unknown credentials and lease ids, and bytes that
// are not a message at all. After each, the server is SERVING, its memory is bounded and the
// usage of a credential nobody touched is unchanged. Bounded in count and time.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "tests/support/child_process.h"
#include "tests/support/grpc_status_matchers.h"

namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::Not;

using grpc::StatusCode;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using quotad::v1::AcquireRequest;
using quotad::v1::AcquireResponse;

constexpr int64_t kMiB = 1024 * 1024;

// The quotad binary on 127.0.0.1:0 with the hostile configuration; killed at the end.
class Quotad : public quotad::testing::ChildProcess {
 public:
  Quotad() : ChildProcess(QUOTAD_BINARY, Args()) {}

  bool alive() { return !WaitForExit(absl::ZeroDuration()).has_value(); }

  // VmRSS in KiB, -1 when unreadable.
  int64_t RssKib() const {
    std::ifstream in(absl::StrCat("/proc/", pid(), "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (absl::StartsWith(line, "VmRSS:")) {
        int64_t kib = -1;
        std::string digits;
        for (char c : line) {
          if (c >= '0' && c <= '9') digits.push_back(c);
        }
        if (absl::SimpleAtoi(digits, &kib)) return kib;
      }
    }
    return -1;
  }

 private:
  static std::vector<std::string> Args() {
    std::vector<std::string> args = {absl::StrCat("--config=", QUOTAD_HOSTILE_CONFIG),
                                     "--listen=127.0.0.1:0", "--log_level=info", "--memory_only",
                                     "--metrics_listen="};
    return args;
  }
};

class HostileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    quotad_ = new Quotad();
    std::optional<int> port = quotad_->WaitForPort(absl::Seconds(30));
    ASSERT_TRUE(port.has_value()) << quotad_->log();
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials(), args));
    // The known credential holds 3 units and one live lease for the whole suite.
    for (int i = 0; i < 3; ++i) {
      AcquireRequest req;
      req.set_credential("known/cred");
      req.set_feature("calls");
      req.mutable_lease_ttl()->set_seconds(3600);
      AcquireResponse resp;
      grpc::ClientContext ctx;
      ASSERT_OK(quotad::v1::Quota::NewStub(*channel_)->Acquire(&ctx, req, &resp));
      ASSERT_TRUE(resp.granted());
    }
    known_usage_ = new std::string(KnownUsage());
    baseline_rss_kib_ = quotad_->RssKib();
  }
  static void TearDownTestSuite() {
    std::printf("quotad VmRSS: %lld KiB at start, %lld KiB at the end\n",
                static_cast<long long>(baseline_rss_kib_),
                static_cast<long long>(quotad_->RssKib()));
    delete channel_;
    delete quotad_;
    delete known_usage_;
  }

  // Used and remaining of every limit of known/cred, as text.
  static std::string KnownUsage() {
    quotad::v1::GetUsageRequest req;
    req.set_credential("known/cred");
    quotad::v1::GetUsageResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = quotad::v1::Admin::NewStub(*channel_)->GetUsage(&ctx, req, &resp);
    if (!s.ok()) return "GetUsage failed: " + s.error_message();
    std::string out;
    for (const quotad::v1::LimitStatus& l : resp.limits()) {
      absl::StrAppend(&out, l.name(), " used=", l.used(), " remaining=", l.remaining(), "; ");
    }
    return out;
  }

  void SetUp() override { ASSERT_TRUE(quotad_->alive()) << quotad_->log(); }

  // After every test: alive, SERVING, the untouched credential unchanged, memory bounded.
  void TearDown() override {
    ASSERT_TRUE(quotad_->alive()) << "quotad died:\n" << quotad_->log();
    HealthCheckRequest req;
    HealthCheckResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ASSERT_OK(Health::NewStub(*channel_)->Check(&ctx, req, &resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
    EXPECT_EQ(KnownUsage(), *known_usage_);
    const int64_t rss = quotad_->RssKib();
    // Generous but real: the scope flood holds 10000 counters; huge messages are transient.
    EXPECT_LT(rss - baseline_rss_kib_, 256 * 1024)
        << "VmRSS grew from " << baseline_rss_kib_ << " KiB to " << rss << " KiB";
  }

  grpc::Status Acquire(const AcquireRequest& req, AcquireResponse* resp = nullptr) {
    AcquireResponse ignored;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    return quotad::v1::Quota::NewStub(*channel_)->Acquire(&ctx, req, resp ? resp : &ignored);
  }

  static AcquireRequest Spend() {
    AcquireRequest req;
    req.set_credential("spend/cred");
    req.set_feature("calls");
    return req;
  }

  // INVALID_ARGUMENT whose message names `field` and contains `value_text`.
  static void ExpectInvalid(const grpc::Status& s, const std::string& field,
                            const std::string& value_text) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_TRUE(absl::StrContains(s.error_message(), field)) << s.error_message();
    EXPECT_TRUE(absl::StrContains(s.error_message(), value_text))
        << "'" << s.error_message() << "' does not show " << value_text;
    EXPECT_LT(s.error_message().size(), 1024u) << "an error message echoes a huge value";
  }

  static Quotad* quotad_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static std::string* known_usage_;
  static int64_t baseline_rss_kib_;
};

Quotad* HostileTest::quotad_ = nullptr;
std::shared_ptr<grpc::Channel>* HostileTest::channel_ = nullptr;
std::string* HostileTest::known_usage_ = nullptr;
int64_t HostileTest::baseline_rss_kib_ = 0;

TEST_F(HostileTest, MultiMegabyteNamesAreRefusedNamingFieldAndSize) {
  for (int64_t size : {64 * 1024 * int64_t{1}, 1000 * 1000 * int64_t{1}}) {  // below 1 MiB
    const std::string big(size, 'a');
    const std::string bytes = absl::StrCat("(", size, " bytes)");
    AcquireRequest req = Spend();
    req.set_credential(big);
    ExpectInvalid(Acquire(req), "credential", bytes);
    req = Spend();
    req.set_feature(big);
    ExpectInvalid(Acquire(req), "feature", bytes);
    req = Spend();
    req.set_scope(big);
    ExpectInvalid(Acquire(req), "scope", bytes);
    req = Spend();
    req.set_holder(big);
    ExpectInvalid(Acquire(req), "holder", bytes);
    req = Spend();
    req.set_request_id(big);
    ExpectInvalid(Acquire(req), "request_id", bytes);

    quotad::v1::ReleaseRequest rel;
    rel.set_lease_id(big);
    quotad::v1::ReleaseResponse rel_resp;
    grpc::ClientContext ctx;
    ExpectInvalid(quotad::v1::Quota::NewStub(*channel_)->Release(&ctx, rel, &rel_resp), "lease_id",
                  bytes);

    quotad::v1::GetUsageRequest usage;
    usage.set_credential(big);
    quotad::v1::GetUsageResponse usage_resp;
    grpc::ClientContext ctx2;
    ExpectInvalid(quotad::v1::Admin::NewStub(*channel_)->GetUsage(&ctx2, usage, &usage_resp),
                  "credential", bytes);
  }
  // Past the server's receive limit (1 MiB) the transport refuses it before quotad parses it.
  for (int64_t size : {1 * kMiB, 3 * kMiB, 8 * kMiB}) {
    AcquireRequest req = Spend();
    req.set_credential(std::string(size, 'a'));
    const grpc::Status s = Acquire(req);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kResourceExhausted));
    EXPECT_TRUE(absl::StrContains(s.error_message(), "larger than max")) << s.error_message();
    std::printf("%lld-byte credential: code %d \"%s\"\n", static_cast<long long>(size),
                s.error_code(), s.error_message().c_str());
  }
}

TEST_F(HostileTest, InvalidUtf8AndControlCharactersAreRefused) {
  // proto3 strings must be UTF-8: the server's parser refuses the message (the client library
  // logs an error while serializing, and sends it anyway).
  for (const std::string& bad : {std::string("\xff\xfe"), std::string("ab\xc3"),
                                 std::string("\xed\xa0\x80"), std::string("\xc0\xaf")}) {
    AcquireRequest req = Spend();
    req.set_credential(bad);
    grpc::Status s = Acquire(req);
    EXPECT_THAT(s, Not(IsOk()));
    EXPECT_NE(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
    std::printf("invalid UTF-8 credential: code %d \"%s\"\n", s.error_code(),
                s.error_message().c_str());
    req = Spend();
    req.set_scope(bad);
    s = Acquire(req);
    EXPECT_THAT(s, Not(IsOk()));
    EXPECT_NE(s.error_code(), StatusCode::UNAVAILABLE) << s.error_message();
  }
  // Valid UTF-8 that is not a name, and control characters in free text: named and escaped.
  AcquireRequest req = Spend();
  req.set_credential("caf\xc3\xa9/prod");
  ExpectInvalid(Acquire(req), "credential", "\\xc3");
  req = Spend();
  req.set_scope(std::string("a\0b", 3));
  ExpectInvalid(Acquire(req), "scope", "\\x00");
  req = Spend();
  req.set_holder("pod\n7");
  ExpectInvalid(Acquire(req), "holder", "\\n");
  req = Spend();
  req.set_request_id("id\x1b[31m");
  ExpectInvalid(Acquire(req), "request_id", "\\x1b");
}

TEST_F(HostileTest, NegativeAndHugeCostsAndDurationsAreRefusedWithTheValue) {
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (int64_t cost : {int64_t{0}, int64_t{-1}, kMin}) {
    AcquireRequest req = Spend();
    req.set_cost(cost);
    ExpectInvalid(Acquire(req), "cost", absl::StrCat(cost));
  }
  for (int64_t cost : {int64_t{101}, kMax}) {  // above the feature's largest capacity
    AcquireRequest req = Spend();
    req.set_cost(cost);
    ExpectInvalid(Acquire(req), "cost", absl::StrCat(cost));
  }
  struct Case {
    int64_t seconds;
    int32_t nanos;
  };
  for (const Case& c : std::vector<Case>{
           {-1, 0}, {kMin, 0}, {0, -5}, {0, 2'000'000'000}, {1, -1}, {kMax, 999'999'999}}) {
    AcquireRequest req = Spend();
    req.mutable_lease_ttl()->set_seconds(c.seconds);
    req.mutable_lease_ttl()->set_nanos(c.nanos);
    grpc::Status s = Acquire(req);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_TRUE(absl::StrContains(s.error_message(), "lease_ttl")) << s.error_message();
    req = Spend();
    req.mutable_max_wait()->set_seconds(c.seconds);
    req.mutable_max_wait()->set_nanos(c.nanos);
    s = Acquire(req);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_TRUE(absl::StrContains(s.error_message(), "max_wait")) << s.error_message();
  }
  AcquireRequest req = Spend();
  req.mutable_max_wait()->set_seconds(3601);
  ExpectInvalid(Acquire(req), "max_wait", "1h1s");
  req = Spend();
  req.set_priority(std::numeric_limits<int32_t>::min());
  ExpectInvalid(Acquire(req), "priority", "-2147483648");

  // A lease of the spendable credential: huge `used` and ttl are refused, the lease stays.
  AcquireResponse granted;
  ASSERT_OK(Acquire(Spend(), &granted));
  ASSERT_TRUE(granted.granted());
  auto quota = quotad::v1::Quota::NewStub(*channel_);
  for (int64_t used : {int64_t{-1}, kMin, kMax}) {
    quotad::v1::ReleaseRequest rel;
    rel.set_lease_id(granted.lease_id());
    rel.set_used(used);
    quotad::v1::ReleaseResponse resp;
    grpc::ClientContext ctx;
    ExpectInvalid(quota->Release(&ctx, rel, &resp), "used", absl::StrCat(used));
  }
  for (int64_t seconds : {int64_t{-1}, kMax, kMin}) {
    quotad::v1::RenewRequest renew;
    renew.set_lease_id(granted.lease_id());
    renew.mutable_ttl()->set_seconds(seconds);
    quotad::v1::RenewResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = quota->Renew(&ctx, renew, &resp);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_TRUE(absl::StrContains(s.error_message(), "ttl")) << s.error_message();
  }
  quotad::v1::ReleaseRequest rel;
  rel.set_lease_id(granted.lease_id());
  quotad::v1::ReleaseResponse resp;
  grpc::ClientContext ctx;
  EXPECT_OK(quota->Release(&ctx, rel, &resp)) << "the lease survived the bad calls";
}

TEST_F(HostileTest, TwentyThousandScopesStopAtMaxScopesWithAClearError) {
  int ok = 0, exhausted = 0, other = 0;
  std::string first_error;
  const int64_t rss_before = quotad_->RssKib();
  for (int i = 0; i < 20000; ++i) {
    AcquireRequest req;
    req.set_credential("scoped/cred");
    req.set_feature("hunts");
    req.set_scope(absl::StrCat("ruleset-", i));
    grpc::Status s = Acquire(req);
    if (s.ok()) {
      ++ok;
    } else if (s.error_code() == StatusCode::RESOURCE_EXHAUSTED) {
      if (exhausted++ == 0) first_error = s.error_message();
    } else if (other++ == 0) {
      ADD_FAILURE() << "scope " << i << ": " << s.error_code() << " " << s.error_message();
    }
  }
  std::printf("20000 scopes: %d answered, %d RESOURCE_EXHAUSTED (\"%s\"), VmRSS %lld -> %lld KiB\n",
              ok, exhausted, first_error.c_str(), static_cast<long long>(rss_before),
              static_cast<long long>(quotad_->RssKib()));
  EXPECT_EQ(ok, 10000);
  EXPECT_EQ(exhausted, 10000);
  EXPECT_TRUE(absl::StrContains(first_error, "ruleset-10000")) << first_error;
  EXPECT_TRUE(absl::StrContains(first_error, "10000")) << first_error;
  // A scope already counted still works.
  AcquireRequest req;
  req.set_credential("scoped/cred");
  req.set_feature("hunts");
  req.set_scope("ruleset-7");
  EXPECT_OK(Acquire(req));
}

TEST_F(HostileTest, FloodOfUnknownCredentialsAndLeasesKeepsMemoryFlat) {
  const int64_t rss_before = quotad_->RssKib();
  auto quota = quotad::v1::Quota::NewStub(*channel_);
  for (int i = 0; i < 20000; ++i) {
    AcquireRequest req;
    req.set_credential(absl::StrCat("attacker/key-", i));
    req.set_feature("calls");
    grpc::Status s = Acquire(req);
    ASSERT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
    if (i == 0) {
      EXPECT_TRUE(absl::StrContains(s.error_message(), "attacker/key-0")) << s.error_message();
    }
  }
  for (int i = 0; i < 5000; ++i) {
    quotad::v1::ReleaseRequest rel;
    rel.set_lease_id(absl::StrCat("deadbeef", absl::Hex(i, absl::kZeroPad8), "0000000000000000"));
    quotad::v1::ReleaseResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = quota->Release(&ctx, rel, &resp);
    ASSERT_THAT(s, StatusIs(absl::StatusCode::kNotFound));
  }
  const int64_t rss_after = quotad_->RssKib();
  std::printf("25000 unknown credentials and leases: VmRSS %lld -> %lld KiB\n",
              static_cast<long long>(rss_before), static_cast<long long>(rss_after));
  EXPECT_LT(rss_after - rss_before, 32 * 1024) << "unknown names must not be remembered";
}

TEST_F(HostileTest, BytesThatAreNotAMessageAreRefused) {
  grpc::GenericStub stub(*channel_);
  const std::vector<std::string> payloads = {
      std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),  // varint overflow
      std::string("\x0a\xff\xff\xff\xff\x0f", 6),                       // length past the end
      std::string("\x22\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 11),  // absurd length
      std::string(1000, '\x07'),                                        // bad wire type
  };
  for (const std::string& p : payloads) {
    grpc::Slice slice(p);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::CompletionQueue cq;
    auto call = stub.PrepareUnaryCall(&ctx, "/quotad.v1.Quota/Acquire", request, &cq);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_THAT(status, Not(IsOk()));
    EXPECT_NE(status.error_code(), StatusCode::UNAVAILABLE) << status.error_message();
    std::printf("garbage Acquire payload of %zu bytes: code %d \"%s\"\n", p.size(),
                status.error_code(), status.error_message().c_str());
  }
}

}  // namespace

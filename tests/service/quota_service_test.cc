// QuotaService (service/server/quota_service.h) called directly: no socket, a real ledger on a
// fake clock (service_fixture.h).

#include "service/server/quota_service.h"

#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/service_fixture.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

class QuotaServiceTest : public testing::ServiceFixture {};

TEST_F(QuotaServiceTest, GrantsAndConvertsTheDecision) {
  Build();
  absl::StatusOr<v1::AcquireResponse> resp =
      Acquire(MustCaller("alice-token"), AcquireOf("team-a/key", "requests"));
  ASSERT_THAT(resp, IsOk());
  EXPECT_TRUE(resp->granted());
  EXPECT_EQ(resp->lease_id().size(), 32u);
  ASSERT_EQ(resp->limits_size(), 1);
  EXPECT_EQ(resp->limits(0).name(), "requests.per_minute");
  EXPECT_EQ(resp->limits(0).capacity(), 2);
  EXPECT_EQ(resp->limits(0).remaining(), 1);
  // The ledger's holder names the identity.
  std::optional<LeaseInfo> lease = ledger_->FindLease(*LeaseId::Parse(resp->lease_id()));
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->holder, "alice/worker-1");
}

TEST_F(QuotaServiceTest, DenialCarriesLimitAndRetryTimes) {
  Build();
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests")), IsOk());
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests")), IsOk());
  absl::StatusOr<v1::AcquireResponse> denied = Acquire(alice, AcquireOf("team-a/key", "requests"));
  ASSERT_THAT(denied, IsOk());
  EXPECT_FALSE(denied->granted());
  EXPECT_EQ(denied->limited_by(), "requests.per_minute");
  EXPECT_TRUE(denied->has_retry_at());
  EXPECT_GT(denied->retry_after().seconds(), 0);
  EXPECT_LE(denied->retry_after().seconds(), 60);
}

TEST_F(QuotaServiceTest, ValidationErrorsNameTheField) {
  Build();
  const Caller alice = MustCaller("alice-token");
  v1::AcquireRequest bad_feature = AcquireOf("team-a/key", "re quests");
  EXPECT_THAT(Acquire(alice, bad_feature),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("feature"), HasSubstr("\"re quests\""))));
  v1::AcquireRequest bad_cost = AcquireOf("team-a/key", "requests");
  bad_cost.set_cost(-3);
  EXPECT_THAT(Acquire(alice, bad_cost),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("got -3")));
  v1::AcquireRequest bad_priority = AcquireOf("team-a/key", "requests");
  bad_priority.set_priority(5000);
  EXPECT_THAT(Acquire(alice, bad_priority),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("priority 5000")));
  v1::AcquireRequest bad_wait = AcquireOf("team-a/key", "requests");
  bad_wait.mutable_max_wait()->set_seconds(7200);
  EXPECT_THAT(Acquire(alice, bad_wait),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_wait")));
  v1::AcquireRequest bad_scope = AcquireOf("team-a/key", "requests");
  bad_scope.set_scope("a\nb");
  EXPECT_THAT(Acquire(alice, bad_scope),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("scope"), HasSubstr("control character"))));

  v1::ReleaseRequest release;
  release.set_lease_id("not-a-lease");
  EXPECT_THAT(quota_->Release(alice, release),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("lease_id"), HasSubstr("not-a-lease"))));
  v1::ReportRequest report;
  report.set_credential("team-a/key");
  report.set_feature("requests");
  report.set_http_status(42);
  EXPECT_THAT(quota_->Report(alice, report),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("http_status 42")));
}

TEST_F(QuotaServiceTest, UnknownNamesAreNotFound) {
  Build();
  EXPECT_THAT(Acquire(MustCaller("alice-token"), AcquireOf("team-a/key", "nothing")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nothing")));
}

TEST_F(QuotaServiceTest, RetryWithTheSameRequestIdGetsTheFirstAnswer) {
  Build();
  const Caller alice = MustCaller("alice-token");
  absl::StatusOr<v1::AcquireResponse> first =
      Acquire(alice, AcquireOf("team-a/key", "requests", "rid-1"));
  ASSERT_THAT(first, IsOk());
  ASSERT_TRUE(first->granted());
  absl::StatusOr<v1::AcquireResponse> again =
      Acquire(alice, AcquireOf("team-a/key", "requests", "rid-1"));
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->lease_id(), first->lease_id());
  // Charged once: one unit of two left.
  EXPECT_EQ(ledger_->Leases("team-a/key").size(), 1u);
  absl::StatusOr<v1::AcquireResponse> other =
      Acquire(alice, AcquireOf("team-a/key", "requests", "rid-2"));
  ASSERT_THAT(other, IsOk());
  EXPECT_NE(other->lease_id(), first->lease_id());
}

TEST_F(QuotaServiceTest, ReusedRequestIdForAnotherRequestNamesBoth) {
  Build();
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests", "rid-1")), IsOk());
  v1::AcquireRequest different = AcquireOf("team-a/key", "requests", "rid-1");
  different.set_cost(2);
  EXPECT_THAT(Acquire(alice, different), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  AllOf(HasSubstr("request_id 'rid-1'"),
                                                        HasSubstr("cost 1"), HasSubstr("cost 2"))));
}

TEST_F(QuotaServiceTest, RequestIdsAreKeptPerIdentity) {
  Build();
  v1::AcquireRequest req = AcquireOf("team-a/key", "requests", "shared");
  absl::StatusOr<v1::AcquireResponse> alice = Acquire(MustCaller("alice-token"), req);
  absl::StatusOr<v1::AcquireResponse> ops = Acquire(MustCaller("ops-token"), req);
  ASSERT_THAT(alice, IsOk());
  ASSERT_THAT(ops, IsOk());
  EXPECT_NE(alice->lease_id(), ops->lease_id());
}

TEST_F(QuotaServiceTest, ReleaseRetryIsAnsweredFromTheRequestIdTable) {
  Build({.sqlite = true});
  const Caller alice = MustCaller("alice-token");
  absl::StatusOr<v1::AcquireResponse> granted = Acquire(alice, AcquireOf("team-a/key", "jobs"));
  ASSERT_THAT(granted, IsOk());
  v1::ReleaseRequest release;
  release.set_lease_id(granted->lease_id());
  release.set_request_id("rel-1");
  absl::StatusOr<v1::ReleaseResponse> first = quota_->Release(alice, release);
  ASSERT_THAT(first, IsOk());
  EXPECT_EQ(first->freed(), 1);
  // The lease is gone; the retry gets the first answer, not NOT_FOUND. Any case of the id is
  // the same lease.
  release.set_lease_id(absl::AsciiStrToUpper(granted->lease_id()));
  absl::StatusOr<v1::ReleaseResponse> again = quota_->Release(alice, release);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->freed(), 1);
  release.set_request_id("");
  EXPECT_THAT(quota_->Release(alice, release), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(QuotaServiceTest, FullRequestIdTableRefusesNewRequestIds) {
  Build({.max_request_ids = 1});
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests", "a")), IsOk());
  EXPECT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests", "b")),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("--max_request_ids")));
  // Without a request_id nothing is recorded.
  EXPECT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests")), IsOk());
}

TEST_F(QuotaServiceTest, CallersWithoutAValidTokenAreUnauthenticated) {
  Build();
  EXPECT_THAT(CallerWith(""), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(CallerWith("mallory-token"), StatusIs(absl::StatusCode::kUnauthenticated,
                                                    ::testing::Not(HasSubstr("mallory-token"))));
}

TEST_F(QuotaServiceTest, WithoutAuthEveryoneIsAnonymousAndAllowed) {
  Build({.auth = false});
  absl::StatusOr<Caller> caller = CallerWith("");
  ASSERT_THAT(caller, IsOk());
  EXPECT_EQ(caller->identity, "anonymous");
  absl::StatusOr<v1::AcquireResponse> resp = Acquire(*caller, AcquireOf("team-b/key", "requests"));
  ASSERT_THAT(resp, IsOk());
  EXPECT_EQ(ledger_->FindLease(*LeaseId::Parse(resp->lease_id()))->holder, "worker-1");
}

TEST_F(QuotaServiceTest, AccessRulesDecideWhoMayCallWhat) {
  Build();
  EXPECT_THAT(Acquire(MustCaller("bob-token"), AcquireOf("team-a/key", "requests")),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("\"bob\""), HasSubstr("Acquire"), HasSubstr("team-a/key"))));
  v1::ReportRequest report;
  report.set_credential("team-b/key");
  report.set_feature("requests");
  report.set_http_status(200);
  EXPECT_THAT(quota_->Report(MustCaller("alice-token"), report),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("Report")));
  EXPECT_THAT(quota_->Report(MustCaller("bob-token"), report), IsOk());
  v1::AcquireRequest high = AcquireOf("team-a/key", "requests");
  high.set_priority(500);
  EXPECT_THAT(Acquire(MustCaller("alice-token"), high),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("priority 500"), HasSubstr("\"alice\""))));
  EXPECT_THAT(Acquire(MustCaller("ops-token"), high), IsOk());
}

TEST_F(QuotaServiceTest, LeasesAreEndedOnlyByTheirHolderOrAnAdmin) {
  Build();
  absl::StatusOr<v1::AcquireResponse> granted =
      Acquire(MustCaller("alice-token"), AcquireOf("team-a/key", "jobs"));
  ASSERT_THAT(granted, IsOk());
  v1::ReleaseRequest release;
  release.set_lease_id(granted->lease_id());
  v1::RenewRequest renew;
  renew.set_lease_id(granted->lease_id());
  EXPECT_THAT(quota_->Release(MustCaller("bob-token"), release),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"bob\"")));
  EXPECT_THAT(quota_->Renew(MustCaller("bob-token"), renew),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("another identity")));
  EXPECT_THAT(quota_->Renew(MustCaller("ops-token"), renew), IsOk());
  absl::StatusOr<v1::RenewResponse> renewed = quota_->Renew(MustCaller("alice-token"), renew);
  ASSERT_THAT(renewed, IsOk());
  EXPECT_TRUE(renewed->has_lease_expires_at());
  EXPECT_THAT(quota_->Release(MustCaller("alice-token"), release), IsOk());
  // Released: unknown now, to everyone but an admin, whose call reaches the ledger.
  EXPECT_THAT(quota_->Release(MustCaller("alice-token"), release),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr(granted->lease_id())));
  EXPECT_THAT(quota_->Release(MustCaller("ops-token"), release),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(QuotaServiceTest, AnUnknownLeaseIsNotFoundForNonAdmins) {
  Build();
  v1::ReleaseRequest release;
  release.set_lease_id("0123456789abcdef0123456789abcdef");
  EXPECT_THAT(quota_->Release(MustCaller("bob-token"), release),
              StatusIs(absl::StatusCode::kNotFound,
                       HasSubstr("unknown or expired lease 0123456789abcdef0123456789abcdef")));
}

TEST_F(QuotaServiceTest, AnExpiredLeaseIsNotFoundForItsHolder) {
  Build();
  v1::AcquireRequest req = AcquireOf("team-a/key", "jobs");
  req.mutable_lease_ttl()->set_seconds(30);
  absl::StatusOr<v1::AcquireResponse> granted = Acquire(MustCaller("alice-token"), req);
  ASSERT_THAT(granted, IsOk());
  clock_.Advance(absl::Seconds(31));
  v1::RenewRequest renew;
  renew.set_lease_id(granted->lease_id());
  EXPECT_THAT(quota_->Renew(MustCaller("alice-token"), renew),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("expired")));
}

TEST_F(QuotaServiceTest, AWaitingAcquireIsAnsweredWhenCapacityFrees) {
  Build();
  const Caller alice = MustCaller("alice-token");
  absl::StatusOr<v1::AcquireResponse> holder = Acquire(alice, AcquireOf("team-a/key", "jobs"));
  ASSERT_THAT(holder, IsOk());
  v1::AcquireRequest waiting = AcquireOf("team-a/key", "jobs");
  waiting.mutable_max_wait()->set_seconds(10);
  std::optional<absl::StatusOr<v1::AcquireResponse>> answer;
  std::optional<WaitTicket> ticket = quota_->Acquire(
      alice, waiting, [&](absl::StatusOr<v1::AcquireResponse> a) { answer = std::move(a); });
  ASSERT_TRUE(ticket.has_value());
  EXPECT_FALSE(answer.has_value());
  v1::ReleaseRequest release;
  release.set_lease_id(holder->lease_id());
  ASSERT_THAT(quota_->Release(alice, release), IsOk());
  ASSERT_TRUE(answer.has_value());
  ASSERT_THAT(*answer, IsOk());
  EXPECT_TRUE((*answer)->granted());
  EXPECT_FALSE(quota_->CancelWait(*ticket));
}

TEST_F(QuotaServiceTest, AWaitingAcquireIsDeniedAtItsDeadlineAndCanBeCancelled) {
  Build();
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "jobs")), IsOk());
  v1::AcquireRequest waiting = AcquireOf("team-a/key", "jobs");
  waiting.mutable_max_wait()->set_seconds(10);
  // The call's own deadline (3 s) is shorter than max_wait.
  Caller with_deadline = alice;
  with_deadline.deadline = clock_.Now() + absl::Seconds(3);
  std::optional<absl::StatusOr<v1::AcquireResponse>> answer;
  ASSERT_TRUE(quota_
                  ->Acquire(with_deadline, waiting,
                            [&](absl::StatusOr<v1::AcquireResponse> a) { answer = std::move(a); })
                  .has_value());
  clock_.Advance(absl::Seconds(3));
  ledger_->Pump();
  ASSERT_TRUE(answer.has_value());
  ASSERT_THAT(*answer, IsOk());
  EXPECT_FALSE((*answer)->granted());

  bool called = false;
  std::optional<WaitTicket> ticket =
      quota_->Acquire(alice, waiting, [&](absl::StatusOr<v1::AcquireResponse>) { called = true; });
  ASSERT_TRUE(ticket.has_value());
  EXPECT_TRUE(quota_->CancelWait(*ticket));
  EXPECT_FALSE(called);
}

TEST_F(QuotaServiceTest, WaitersPerIdentityAreCapped) {
  Build({.max_waiters_per_identity = 1});
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "jobs")), IsOk());
  v1::AcquireRequest waiting = AcquireOf("team-a/key", "jobs");
  waiting.mutable_max_wait()->set_seconds(10);
  ASSERT_TRUE(
      quota_->Acquire(alice, waiting, [](absl::StatusOr<v1::AcquireResponse>) {}).has_value());
  std::optional<absl::StatusOr<v1::AcquireResponse>> second;
  EXPECT_FALSE(quota_
                   ->Acquire(alice, waiting,
                             [&](absl::StatusOr<v1::AcquireResponse> a) { second = std::move(a); })
                   .has_value());
  ASSERT_TRUE(second.has_value());
  EXPECT_THAT(*second, StatusIs(absl::StatusCode::kResourceExhausted,
                                AllOf(HasSubstr("\"alice\""), HasSubstr("at most 1"))));
}

TEST_F(QuotaServiceTest, ReportOfAThrottleCoolsTheFeatureDown) {
  Build();
  v1::ReportRequest report;
  report.set_credential("team-b/key");
  report.set_feature("requests");
  report.set_http_status(429);
  v1::Header* retry = report.add_headers();
  retry->set_name("Retry-After");
  retry->set_value("30");
  absl::StatusOr<v1::ReportResponse> resp = quota_->Report(MustCaller("bob-token"), report);
  ASSERT_THAT(resp, IsOk());
  ASSERT_TRUE(resp->has_cooldown_until());
  EXPECT_EQ(resp->cooldown_until().seconds(), absl::ToUnixSeconds(clock_.Now()) + 30);
  ASSERT_EQ(throttles_.Recent().size(), 1u);
}

}  // namespace
}  // namespace quotad

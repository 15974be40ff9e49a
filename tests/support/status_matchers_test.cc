// The status matchers match what they should, refuse what they should not, and explain a
// failure with the status they got.

#include "tests/support/status_matchers.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest-spi.h"
#include "gtest/gtest.h"

namespace quotad::testing {
namespace {

using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::DescribeMatcher;
using ::testing::Eq;
using ::testing::Gt;
using ::testing::HasSubstr;
using ::testing::Matcher;
using ::testing::Not;
using ::testing::SizeIs;
using ::testing::StartsWith;

// The explanation `matcher` gives for `value`, and whether it matched.
template <typename T, typename M>
std::string Explain(const M& matcher, const T& value, bool* matched = nullptr) {
  ::testing::StringMatchResultListener listener;
  const bool m = ::testing::ExplainMatchResult(Matcher<T>(matcher), value, &listener);
  if (matched != nullptr) *matched = m;
  return listener.str();
}

const absl::Status kNotFound = absl::NotFoundError("no credential \"vt/prod\"");

TEST(IsOkTest, MatchesOkStatusAndStatusOr) {
  EXPECT_THAT(absl::OkStatus(), IsOk());
  EXPECT_THAT(absl::StatusOr<int>(3), IsOk());
}

TEST(IsOkTest, RefusesAnErrorAndPrintsIt) {
  EXPECT_THAT(kNotFound, Not(IsOk()));
  EXPECT_THAT(absl::StatusOr<int>(kNotFound), Not(IsOk()));
  bool matched = true;
  // gtest prints an absl::Status itself; the status inside a StatusOr is the matcher's to show.
  EXPECT_EQ(Explain(IsOk(), kNotFound, &matched), "");
  EXPECT_FALSE(matched);
  EXPECT_EQ(Explain(IsOk(), absl::StatusOr<int>(kNotFound), &matched),
            "whose status is NOT_FOUND: no credential \"vt/prod\"");
  EXPECT_FALSE(matched);
  EXPECT_EQ(DescribeMatcher<absl::Status>(IsOk()), "is OK");
  EXPECT_EQ(DescribeMatcher<absl::Status>(IsOk(), /*negation=*/true), "is not OK");
}

TEST(StatusIsTest, MatchesCodeAlone) {
  EXPECT_THAT(kNotFound, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(absl::StatusOr<std::string>(kNotFound), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(absl::OkStatus(), StatusIs(absl::StatusCode::kOk));
  EXPECT_THAT(kNotFound, Not(StatusIs(absl::StatusCode::kInvalidArgument)));
  EXPECT_THAT(absl::OkStatus(), Not(StatusIs(absl::StatusCode::kNotFound)));
  EXPECT_THAT(absl::StatusOr<int>(5), Not(StatusIs(absl::StatusCode::kNotFound)));
}

TEST(StatusIsTest, MatchesCodeAndMessage) {
  EXPECT_THAT(kNotFound, StatusIs(absl::StatusCode::kNotFound, HasSubstr("vt/prod")));
  EXPECT_THAT(kNotFound, StatusIs(absl::StatusCode::kNotFound, "no credential \"vt/prod\""));
  EXPECT_THAT(kNotFound, StatusIs(AnyOf(absl::StatusCode::kNotFound,
                                        absl::StatusCode::kPermissionDenied),
                                  AllOf(StartsWith("no "), HasSubstr("prod"))));
  EXPECT_THAT(kNotFound, Not(StatusIs(absl::StatusCode::kNotFound, HasSubstr("md/prod"))));
  EXPECT_THAT(kNotFound, Not(StatusIs(absl::StatusCode::kAborted, HasSubstr("vt/prod"))));
  EXPECT_THAT(absl::OkStatus(), Not(StatusIs(absl::StatusCode::kOk, "something")));
}

TEST(StatusIsTest, ExplainsWhichPartDoesNotMatch) {
  bool matched = true;
  EXPECT_EQ(Explain(StatusIs(absl::StatusCode::kInvalidArgument), kNotFound, &matched),
            "whose code does not match");
  EXPECT_FALSE(matched);
  const std::string code = Explain(StatusIs(absl::StatusCode::kInvalidArgument),
                                   absl::StatusOr<int>(kNotFound), &matched);
  EXPECT_FALSE(matched);
  EXPECT_THAT(code, HasSubstr("whose status is NOT_FOUND: no credential"));
  EXPECT_THAT(code, HasSubstr("whose code does not match"));

  const std::string message =
      Explain(StatusIs(absl::StatusCode::kNotFound, HasSubstr("md/prod")), kNotFound, &matched);
  EXPECT_FALSE(matched);
  EXPECT_THAT(message, HasSubstr("whose message does not match"));

  EXPECT_THAT(Explain(StatusIs(absl::StatusCode::kNotFound), absl::StatusOr<int>(1), &matched),
              HasSubstr("whose status is OK"));
  EXPECT_FALSE(matched);
}

TEST(StatusIsTest, DescribesCodeAndMessage) {
  const Matcher<absl::Status> m = StatusIs(absl::StatusCode::kNotFound, HasSubstr("vt"));
  EXPECT_THAT(DescribeMatcher<absl::Status>(m), AllOf(HasSubstr("status code that is equal to NOT_FOUND"),
                                                      HasSubstr("message that has substring \"vt\"")));
  EXPECT_THAT(DescribeMatcher<absl::Status>(m, /*negation=*/true),
              AllOf(HasSubstr("isn't equal to NOT_FOUND"), HasSubstr(", or a message that")));
}

TEST(IsOkAndHoldsTest, MatchesAnOkValue) {
  EXPECT_THAT(absl::StatusOr<int>(7), IsOkAndHolds(7));
  EXPECT_THAT(absl::StatusOr<int>(7), IsOkAndHolds(Gt(5)));
  EXPECT_THAT(absl::StatusOr<std::string>("abc"), IsOkAndHolds(HasSubstr("b")));
  EXPECT_THAT(absl::StatusOr<std::vector<int>>(std::vector<int>{1, 2}), IsOkAndHolds(SizeIs(2)));
}

TEST(IsOkAndHoldsTest, RefusesAnErrorOrAnotherValue) {
  EXPECT_THAT(absl::StatusOr<int>(kNotFound), Not(IsOkAndHolds(7)));
  EXPECT_THAT(absl::StatusOr<int>(8), Not(IsOkAndHolds(7)));
  bool matched = true;
  EXPECT_EQ(Explain(IsOkAndHolds(7), absl::StatusOr<int>(kNotFound), &matched),
            "whose status is NOT_FOUND: no credential \"vt/prod\"");
  EXPECT_FALSE(matched);
  EXPECT_EQ(Explain(IsOkAndHolds(Eq(7)), absl::StatusOr<int>(8), &matched),
            "whose value 8 does not match");
  EXPECT_FALSE(matched);
  EXPECT_EQ(DescribeMatcher<absl::StatusOr<int>>(IsOkAndHolds(7)),
            "is OK and has a value that is equal to 7");
}

TEST(IsOkAndHoldsTest, WorksWithMoveOnlyValues) {
  absl::StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(3);
  EXPECT_THAT(p, IsOkAndHolds(::testing::Pointee(3)));
}

// The assertion macros: pass on OK, fail (with the status in the message) otherwise.
absl::StatusOr<int> Twice(int x) {
  if (x < 0) return absl::InvalidArgumentError("negative");
  return 2 * x;
}

TEST(StatusMacrosTest, OkMacrosPassOnOk) {
  EXPECT_OK(absl::OkStatus());
  ASSERT_OK(Twice(1));
  ASSERT_OK_AND_ASSIGN(int four, Twice(2));
  EXPECT_EQ(four, 4);
  int six = 0;
  ASSERT_OK_AND_ASSIGN(six, Twice(3));
  EXPECT_EQ(six, 6);
}

TEST(StatusMacrosTest, ExpectOkFailsNamingTheStatus) {
  EXPECT_NONFATAL_FAILURE(EXPECT_OK(absl::InternalError("disk on fire")),
                          "INTERNAL: disk on fire");
}

TEST(StatusMacrosTest, AssertOkFailsNamingTheStatus) {
  EXPECT_FATAL_FAILURE(ASSERT_OK(absl::InternalError("disk on fire")), "INTERNAL: disk on fire");
}

void AssignFromFailure() {
  ASSERT_OK_AND_ASSIGN(int x, Twice(-1));
  (void)x;
  ADD_FAILURE() << "not reached: ASSERT_OK_AND_ASSIGN returns on an error";
}

TEST(StatusMacrosTest, AssertOkAndAssignFailsNamingExpressionAndStatus) {
  EXPECT_FATAL_FAILURE(AssignFromFailure(), "Twice(-1) returned INVALID_ARGUMENT: negative");
}

}  // namespace
}  // namespace quotad::testing

#ifndef QUOTAD_TESTS_SUPPORT_STATUS_MATCHERS_H_
#define QUOTAD_TESTS_SUPPORT_STATUS_MATCHERS_H_

// gMock matchers and assertions for absl::Status and absl::StatusOr<T> (Abseil 20220623 has
// none), so that a test says what it expects and a failure prints the status it got:
//
//   EXPECT_OK(ledger.Release(id));
//   EXPECT_THAT(LoadPolicyFromString(yaml, "t.yaml"),
//               StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("t.yaml:3:")));
//   EXPECT_THAT(ParseConfigDuration("90s"), IsOkAndHolds(absl::Seconds(90)));
//   ASSERT_OK_AND_ASSIGN(Policy policy, LoadPolicyFromString(yaml, "t.yaml"));
//
// The matchers take anything StatusAdapter<T> knows: absl::Status and absl::StatusOr<T> here,
// grpc::Status in grpc_status_matchers.h (so that a gRPC test uses the same vocabulary without
// this header, or any test that includes it, depending on gRPC). Matchers are immutable values;
// they may be used from any thread.

#include <ostream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad::testing {

// How the matchers see a status-like type: Get() returns its absl::Status. Specialize it for
// another type (see grpc_status_matchers.h); the primary template is left undefined, so a matcher
// used on an unknown type fails to compile rather than to match.
template <typename T, typename = void>
struct StatusAdapter;

template <>
struct StatusAdapter<absl::Status> {
  static const absl::Status& Get(const absl::Status& s) { return s; }
};

template <typename T>
struct StatusAdapter<absl::StatusOr<T>> {
  static const absl::Status& Get(const absl::StatusOr<T>& s) { return s.status(); }
};

// The absl::Status of `value`, whatever status-like type it is.
template <typename T>
absl::Status GetStatus(const T& value) {
  return StatusAdapter<std::decay_t<T>>::Get(value);
}

namespace internal_status {

// StatusIs: the code and the message, each matched by its own matcher.
class StatusIsMatcherCommon {
 public:
  StatusIsMatcherCommon(::testing::Matcher<absl::StatusCode> code,
                        ::testing::Matcher<const std::string&> message)
      : code_(std::move(code)), message_(std::move(message)) {}

  void DescribeTo(std::ostream* os) const {
    *os << "has a status code that ";
    code_.DescribeTo(os);
    *os << ", and a message that ";
    message_.DescribeTo(os);
  }

  void DescribeNegationTo(std::ostream* os) const {
    *os << "has a status code that ";
    code_.DescribeNegationTo(os);
    *os << ", or a message that ";
    message_.DescribeNegationTo(os);
  }

  // `show_status`: whether to print the status (gtest already prints an absl::Status itself,
  // but not the status inside an absl::StatusOr or a grpc::Status).
  bool MatchAndExplain(const absl::Status& status, bool show_status,
                       ::testing::MatchResultListener* listener) const {
    const char* sep = "";
    if (show_status) {
      *listener << "whose status is " << StatusText(status);
      sep = ", ";
    }
    ::testing::StringMatchResultListener inner;
    if (!code_.MatchAndExplain(status.code(), &inner)) {
      *listener << sep << "whose code does not match" << Suffix(inner.str());
      return false;
    }
    const std::string message(status.message());
    if (!message_.MatchAndExplain(message, &inner)) {
      *listener << sep << "whose message does not match" << Suffix(inner.str());
      return false;
    }
    return true;
  }

 private:
  static std::string StatusText(const absl::Status& status) {
    return status.ok() ? std::string("OK") : status.ToString();
  }
  static std::string Suffix(const std::string& explanation) {
    return explanation.empty() ? "" : ": " + explanation;
  }

  const ::testing::Matcher<absl::StatusCode> code_;
  const ::testing::Matcher<const std::string&> message_;
};

template <typename T>
class StatusIsMatcherImpl : public ::testing::MatcherInterface<const T&> {
 public:
  explicit StatusIsMatcherImpl(StatusIsMatcherCommon common) : common_(std::move(common)) {}
  void DescribeTo(std::ostream* os) const override { common_.DescribeTo(os); }
  void DescribeNegationTo(std::ostream* os) const override { common_.DescribeNegationTo(os); }
  bool MatchAndExplain(const T& actual, ::testing::MatchResultListener* listener) const override {
    return common_.MatchAndExplain(GetStatus(actual), !std::is_same_v<T, absl::Status>, listener);
  }

 private:
  const StatusIsMatcherCommon common_;
};

// The polymorphic StatusIs(...) value: becomes a Matcher<T> for any status-like T.
class StatusIsMatcher {
 public:
  explicit StatusIsMatcher(StatusIsMatcherCommon common) : common_(std::move(common)) {}
  template <typename T>
  operator ::testing::Matcher<T>() const {  // NOLINT(google-explicit-constructor)
    return ::testing::Matcher<T>(new StatusIsMatcherImpl<std::decay_t<T>>(common_));
  }

 private:
  const StatusIsMatcherCommon common_;
};

// IsOk(): the status is OK.
class IsOkMatcher {
 public:
  template <typename T>
  bool MatchAndExplain(const T& actual, ::testing::MatchResultListener* listener) const {
    const absl::Status status = GetStatus(actual);
    if (!status.ok() && !std::is_same_v<T, absl::Status>) *listener << "whose status is " << status;
    return status.ok();
  }
  void DescribeTo(std::ostream* os) const { *os << "is OK"; }
  void DescribeNegationTo(std::ostream* os) const { *os << "is not OK"; }
};

// IsOkAndHolds(m): an OK StatusOr<T> whose value matches m.
template <typename StatusOrT>
class IsOkAndHoldsMatcherImpl : public ::testing::MatcherInterface<const StatusOrT&> {
 public:
  using value_type = typename StatusOrT::value_type;

  template <typename InnerMatcher>
  explicit IsOkAndHoldsMatcherImpl(InnerMatcher&& inner)
      : inner_(::testing::SafeMatcherCast<const value_type&>(std::forward<InnerMatcher>(inner))) {}

  void DescribeTo(std::ostream* os) const override {
    *os << "is OK and has a value that ";
    inner_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const override {
    *os << "is not OK, or has a value that ";
    inner_.DescribeNegationTo(os);
  }
  bool MatchAndExplain(const StatusOrT& actual,
                       ::testing::MatchResultListener* listener) const override {
    if (!actual.ok()) {
      *listener << "whose status is " << actual.status();
      return false;
    }
    ::testing::StringMatchResultListener inner;
    const bool matches = inner_.MatchAndExplain(*actual, &inner);
    *listener << "whose value " << ::testing::PrintToString(*actual)
              << (matches ? " matches" : " does not match");
    if (!inner.str().empty()) *listener << ", " << inner.str();
    return matches;
  }

 private:
  const ::testing::Matcher<const value_type&> inner_;
};

template <typename InnerMatcher>
class IsOkAndHoldsMatcher {
 public:
  explicit IsOkAndHoldsMatcher(InnerMatcher inner) : inner_(std::move(inner)) {}
  template <typename StatusOrT>
  operator ::testing::Matcher<StatusOrT>() const {  // NOLINT(google-explicit-constructor)
    return ::testing::Matcher<StatusOrT>(
        new IsOkAndHoldsMatcherImpl<std::decay_t<StatusOrT>>(inner_));
  }

 private:
  const InnerMatcher inner_;
};

// For ASSERT_OK_AND_ASSIGN: success, or a failure naming the expression and its status.
template <typename T>
::testing::AssertionResult OkOrExplain(const absl::StatusOr<T>& value, const char* expression) {
  if (value.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expression << " returned " << value.status();
}

}  // namespace internal_status

// The status (of an absl::Status, absl::StatusOr<T> or adapted type) has a code matching `code`
// (an absl::StatusCode or a matcher of one) and a message matching `message` (a string or a
// matcher of std::string, e.g. HasSubstr("t.yaml:3:")).
template <typename CodeMatcher, typename MessageMatcher>
internal_status::StatusIsMatcher StatusIs(CodeMatcher&& code, MessageMatcher&& message) {
  return internal_status::StatusIsMatcher(internal_status::StatusIsMatcherCommon(
      ::testing::MatcherCast<absl::StatusCode>(std::forward<CodeMatcher>(code)),
      ::testing::MatcherCast<const std::string&>(std::forward<MessageMatcher>(message))));
}

// The status has a code matching `code`, whatever its message.
template <typename CodeMatcher>
internal_status::StatusIsMatcher StatusIs(CodeMatcher&& code) {
  return StatusIs(std::forward<CodeMatcher>(code), ::testing::_);
}

// The status is OK.
inline ::testing::PolymorphicMatcher<internal_status::IsOkMatcher> IsOk() {
  return ::testing::MakePolymorphicMatcher(internal_status::IsOkMatcher());
}

// An OK absl::StatusOr<T> whose value matches `inner` (a value or a matcher of T).
template <typename InnerMatcher>
internal_status::IsOkAndHoldsMatcher<std::decay_t<InnerMatcher>> IsOkAndHolds(
    InnerMatcher&& inner) {
  return internal_status::IsOkAndHoldsMatcher<std::decay_t<InnerMatcher>>(
      std::forward<InnerMatcher>(inner));
}

}  // namespace quotad::testing

// EXPECT_OK(expr) / ASSERT_OK(expr): `expr` (a status-like value) is OK; the failure prints it.
#define EXPECT_OK(expr) EXPECT_THAT((expr), ::quotad::testing::IsOk())
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::quotad::testing::IsOk())

// ASSERT_OK_AND_ASSIGN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>); if it is not OK, fails
// the test naming `expr` and its status and returns from the test; else moves its value into
// `lhs`, which may declare a variable: ASSERT_OK_AND_ASSIGN(Policy p, Load(...)).
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  QUOTAD_ASSERT_OK_AND_ASSIGN_IMPL_(QUOTAD_STATUS_MATCHERS_CONCAT_(quotad_statusor_, __LINE__), \
                                    lhs, rexpr)
#define QUOTAD_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr)                           \
  auto statusor = (rexpr);                                                                \
  ASSERT_TRUE(::quotad::testing::internal_status::OkOrExplain(statusor, #rexpr)); \
  lhs = std::move(statusor).value()
#define QUOTAD_STATUS_MATCHERS_CONCAT_(a, b) QUOTAD_STATUS_MATCHERS_CONCAT_INNER_(a, b)
#define QUOTAD_STATUS_MATCHERS_CONCAT_INNER_(a, b) a##b

#endif  // QUOTAD_TESTS_SUPPORT_STATUS_MATCHERS_H_

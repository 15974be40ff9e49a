#ifndef QUOTAD_TESTS_SUPPORT_GRPC_STATUS_MATCHERS_H_
#define QUOTAD_TESTS_SUPPORT_GRPC_STATUS_MATCHERS_H_

// StatusIs / IsOk / EXPECT_OK / ASSERT_OK (status_matchers.h) for grpc::Status, so that a test
// over the wire says `EXPECT_THAT(stub->Acquire(...), StatusIs(absl::StatusCode::kNotFound))`.
// gRPC's status codes have the values of absl::StatusCode, and map one to one. Only tests that
// link gRPC include this header.

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "tests/support/status_matchers.h"

namespace quotad::testing {

template <>
struct StatusAdapter<grpc::Status> {
  static absl::Status Get(const grpc::Status& s) {
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SUPPORT_GRPC_STATUS_MATCHERS_H_

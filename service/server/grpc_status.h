#ifndef QUOTAD_SERVICE_SERVER_GRPC_STATUS_H_
#define QUOTAD_SERVICE_SERVER_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace quotad {

// The one mapping from the modules' absl::Status to the wire. Codes map one to one (both follow
// the canonical error space); the message is passed unchanged. Unknown codes become UNKNOWN.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_GRPC_STATUS_H_

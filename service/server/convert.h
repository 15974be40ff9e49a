#ifndef QUOTAD_SERVICE_SERVER_CONVERT_H_
#define QUOTAD_SERVICE_SERVER_CONVERT_H_

// Conversions from the core's values to the wire messages of quotad.v1. Pure; thread-safe.

#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "quotad/v1/quotad.pb.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"

namespace quotad {

// False for absl::InfiniteFuture()/InfinitePast(), which are left absent on the wire.
inline bool IsFinite(absl::Time t) {
  return t != absl::InfiniteFuture() && t != absl::InfinitePast();
}
// `t` must be finite.
void TimeToProto(absl::Time t, google::protobuf::Timestamp* out);
// Infinite durations are clamped to the largest Duration proto value.
void DurationToProto(absl::Duration d, google::protobuf::Duration* out);

v1::LimitKind LimitKindToProto(LimitKind kind);
v1::CalendarUnit CalendarUnitToProto(CalendarUnit unit);

void LimitStatusToProto(const LimitStatus& in, v1::LimitStatus* out);
void LeaseToProto(const LeaseInfo& in, v1::Lease* out);
void CredentialToProto(const CredentialSpec& in, v1::ConfiguredCredential* out);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_CONVERT_H_

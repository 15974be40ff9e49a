#ifndef QUOTAD_SERVICE_CORE_LEASE_ID_H_
#define QUOTAD_SERVICE_CORE_LEASE_ID_H_

// The name of one grant: 128 random bits, printed as 32 lowercase hex digits.
// A plain value type. NewLeaseId() is thread-safe (each thread draws from its own pool); no
// locks are involved.

#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quotad {

// 128 random bits naming one grant. Printed as 32 lowercase hex digits.
struct LeaseId {
  uint64_t hi = 0;
  uint64_t lo = 0;

  std::string ToString() const;
  // kInvalidArgument naming the text when it is not 32 hex digits.
  static absl::StatusOr<LeaseId> Parse(absl::string_view text);
  bool operator==(const LeaseId& o) const { return hi == o.hi && lo == o.lo; }
  template <typename H>
  friend H AbslHashValue(H h, const LeaseId& id) {
    return H::combine(std::move(h), id.hi, id.lo);
  }
};

// 128 bits from the kernel's CSPRNG, drawn in blocks so that a lease id costs no syscall.
// Thread-safe: each thread has its own pool (thread_local).
LeaseId NewLeaseId();

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LEASE_ID_H_

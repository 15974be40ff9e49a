#ifndef QUOTAD_SERVICE_CORE_STATUS_MACROS_H_
#define QUOTAD_SERVICE_CORE_STATUS_MACROS_H_

// Abseil 20220623 has no public RETURN_IF_ERROR / ASSIGN_OR_RETURN; these are the project's own.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QUOTAD_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status quotad_status_ = (expr);          \
    if (!quotad_status_.ok()) return quotad_status_; \
  } while (0)

#define QUOTAD_STATUS_CONCAT_INNER_(a, b) a##b
#define QUOTAD_STATUS_CONCAT_(a, b) QUOTAD_STATUS_CONCAT_INNER_(a, b)

#define QUOTAD_ASSIGN_OR_RETURN(lhs, expr) \
  QUOTAD_ASSIGN_OR_RETURN_IMPL_(QUOTAD_STATUS_CONCAT_(quotad_statusor_, __LINE__), lhs, expr)

#define QUOTAD_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#endif  // QUOTAD_SERVICE_CORE_STATUS_MACROS_H_

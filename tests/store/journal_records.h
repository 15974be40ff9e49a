#ifndef QUOTAD_TESTS_STORE_JOURNAL_RECORDS_H_
#define QUOTAD_TESTS_STORE_JOURNAL_RECORDS_H_

// Journal records for the store tests: one lease and one reservation with every field set.

#include <cstdint>
#include <string>
#include <utility>

#include "service/core/journal.h"

namespace quotad::testing {

// A lease whose tokens hold the extremes a token can take.
inline JournalLease Lease(std::string id, bool holds_slots, int64_t expiry_ns = 5000) {
  JournalLease l;
  l.id = std::move(id);
  l.credential = "vt/prod";
  l.feature = "retrohunt";
  l.scope = "ruleset-7";
  l.holder = "worker-3";
  l.cost = 4;
  l.granted_ns = 1000;
  l.expiry_ns = expiry_ns;
  l.holds_slots = holds_slots;
  l.tokens = {0, -1, INT64_MAX, INT64_MIN, 1767225600000000000};
  return l;
}

inline Reservation Res(std::string cred, std::string limit, std::string scope, int64_t start,
                       int64_t until, int64_t units) {
  return Reservation{CounterKey{std::move(cred), std::move(limit), std::move(scope)}, start, until,
                     units};
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_STORE_JOURNAL_RECORDS_H_

#include "service/core/lease_id.h"

#include <sys/random.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quotad {

LeaseId NewLeaseId() {
  struct Pool {
    uint64_t words[512];
    size_t next = 512;
  };
  thread_local Pool pool;
  if (pool.next + 2 > 512) {
    size_t got = 0;
    auto* bytes = reinterpret_cast<char*>(pool.words);
    while (got < sizeof(pool.words)) {
      const ssize_t n = getrandom(bytes + got, sizeof(pool.words) - got, 0);
      if (n > 0) got += static_cast<size_t>(n);
      // EINTR: retry. getrandom does not fail otherwise once the pool is initialised.
    }
    pool.next = 0;
  }
  LeaseId id{pool.words[pool.next], pool.words[pool.next + 1]};
  pool.next += 2;
  return id;
}

std::string LeaseId::ToString() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kHex[(hi >> (4 * i)) & 0xf];
    out[31 - i] = kHex[(lo >> (4 * i)) & 0xf];
  }
  return out;
}

absl::StatusOr<LeaseId> LeaseId::Parse(absl::string_view text) {
  auto bad = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_id '", text.substr(0, 64), "' is not 32 hexadecimal digits"));
  };
  if (text.size() != 32) return bad();
  LeaseId id;
  for (size_t i = 0; i < 32; ++i) {
    const char c = text[i];
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else {
      return bad();
    }
    uint64_t& word = i < 16 ? id.hi : id.lo;
    word = (word << 4) | static_cast<uint64_t>(v);
  }
  return id;
}

}  // namespace quotad

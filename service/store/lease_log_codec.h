#ifndef QUOTAD_SERVICE_STORE_LEASE_LOG_CODEC_H_
#define QUOTAD_SERVICE_STORE_LEASE_LOG_CODEC_H_

// The bytes of the SQLite store's lease log (see sqlite_journal.h): refund-only leases and
// releases, encoded by the caller off every lock and concatenated in lease_log rows, and the
// reader that Load and Compact fold them with. Internal to service/store.
//
// Thread-safety: plain functions and a reader over bytes it does not own; no shared state.
//
// A record is a lease or a release. The tag says which, and whether the id is the ledger's 32
// lowercase hex digits (stored as 16 bytes) or any text.
//   lease:   id, str credential, str feature, str scope, str holder, zvarint cost,
//            i64 granted_ns, zvarint (expiry_ns - granted_ns), u8 holds_slots, varint n,
//            n tokens: zvarint (granted_ns - token) (tokens are times near the grant)
//   release: id
// str is a varint length and the bytes; i64 is 8 bytes little-endian; zvarint is a zigzag
// varint (a wrapping difference, so any int64 round-trips).

#include <cstdint>
#include <string>

#include "service/core/journal.h"

namespace quotad::sqlite_internal {

inline constexpr char kLeaseTag = 'L';      // id as text
inline constexpr char kLeaseHexTag = 'H';   // id as 16 bytes
inline constexpr char kReleaseTag = 'D';    // id as text
inline constexpr char kReleaseHexTag = 'E';  // id as 16 bytes

// Appends the record of `lease` to `*out`.
void EncodeLease(const JournalLease& lease, std::string* out);
// Appends the record of the release of lease `id` to `*out`.
void EncodeRelease(const std::string& id, std::string* out);

// Reads records from bytes it does not own, which must outlive it. Any malformed input sets
// ok() to false and ends the input (done()). Inline: Load folds every lease of the log with it.
class LogReader {
 public:
  LogReader(const void* data, int bytes)
      : p_(static_cast<const unsigned char*>(data)), end_(p_ + (data == nullptr ? 0 : bytes)) {}
  bool done() const { return p_ == end_; }
  bool ok() const { return ok_; }
  char Tag() { return ok_ && p_ < end_ ? static_cast<char>(*p_++) : Fail(); }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) return Fail();
      const unsigned char b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return Fail();
  }
  int64_t I64() {
    if (end_ - p_ < 8) return Fail();
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(p_[b]) << (8 * b);
    p_ += 8;
    return static_cast<int64_t>(v);
  }
  void Str(std::string* out) {
    const uint64_t n = Varint();
    if (!ok_ || static_cast<uint64_t>(end_ - p_) < n) {
      Fail();
      return;
    }
    out->assign(reinterpret_cast<const char*>(p_), n);
    p_ += n;
  }
  // The id after a tag: 16 bytes, or text.
  void Id(bool hex, std::string* out) {
    if (!hex) {
      Str(out);
      return;
    }
    if (end_ - p_ < 16) {
      Fail();
      return;
    }
    static constexpr char kDigits[] = "0123456789abcdef";
    out->resize(32);
    for (int i = 0; i < 16; ++i) {
      (*out)[2 * i] = kDigits[p_[i] >> 4];
      (*out)[2 * i + 1] = kDigits[p_[i] & 0xf];
    }
    p_ += 16;
  }
  bool Lease(bool hex_id, JournalLease* l) {
    Id(hex_id, &l->id);
    Str(&l->credential);
    Str(&l->feature);
    Str(&l->scope);
    Str(&l->holder);
    l->cost = static_cast<int64_t>(Unzig(Varint()));
    l->granted_ns = I64();
    l->expiry_ns =
        static_cast<int64_t>(static_cast<uint64_t>(l->granted_ns) + Unzig(Varint()));
    l->holds_slots = ok_ && p_ < end_ && *p_++ != 0;
    const uint64_t n = Varint();
    if (!ok_ || n > static_cast<uint64_t>(end_ - p_)) return Fail() != 0;
    l->tokens.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      l->tokens[i] =
          static_cast<int64_t>(static_cast<uint64_t>(l->granted_ns) - Unzig(Varint()));
    }
    return ok_;
  }

 private:
  static uint64_t Unzig(uint64_t v) { return (v >> 1) ^ (0 - (v & 1)); }
  char Fail() {
    ok_ = false;
    p_ = end_;
    return 0;
  }
  const unsigned char* p_;
  const unsigned char* end_;
  bool ok_ = true;
};

}  // namespace quotad::sqlite_internal

#endif  // QUOTAD_SERVICE_STORE_LEASE_LOG_CODEC_H_

#include "service/store/lease_log_codec.h"

namespace quotad::sqlite_internal {
namespace {

void PutVarint(std::string* out, uint64_t v) {
  char b[10];
  int n = 0;
  while (v >= 0x80) {
    b[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  b[n++] = static_cast<char>(v);
  out->append(b, n);
}

uint64_t Zig(uint64_t v) { return (v << 1) ^ (0 - (v >> 63)); }
// a - b, wrapping.
uint64_t Diff(int64_t a, int64_t b) { return static_cast<uint64_t>(a) - static_cast<uint64_t>(b); }

void PutI64(std::string* out, int64_t v) {
  char b[8];
  const uint64_t u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((u >> (8 * i)) & 0xff);
  out->append(b, 8);
}

void PutStr(std::string* out, const std::string& s) {
  PutVarint(out, s.size());
  out->append(s);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The id as 16 bytes when it is 32 lowercase hex digits (LeaseId::ToString), else as text.
void PutId(std::string* out, const std::string& id, char hex_tag, char text_tag) {
  if (id.size() == 32) {
    char b[17];
    b[0] = hex_tag;
    bool hex = true;
    for (int i = 0; i < 16 && hex; ++i) {
      const int h = HexDigit(id[2 * i]);
      const int l = HexDigit(id[2 * i + 1]);
      hex = h >= 0 && l >= 0;
      b[1 + i] = static_cast<char>(h * 16 + l);
    }
    if (hex) {
      out->append(b, 17);
      return;
    }
  }
  out->push_back(text_tag);
  PutStr(out, id);
}

}  // namespace

void EncodeLease(const JournalLease& l, std::string* out) {
  PutId(out, l.id, kLeaseHexTag, kLeaseTag);
  PutStr(out, l.credential);
  PutStr(out, l.feature);
  PutStr(out, l.scope);
  PutStr(out, l.holder);
  PutVarint(out, Zig(static_cast<uint64_t>(l.cost)));
  PutI64(out, l.granted_ns);
  PutVarint(out, Zig(Diff(l.expiry_ns, l.granted_ns)));
  out->push_back(l.holds_slots ? 1 : 0);
  PutVarint(out, l.tokens.size());
  for (int64_t t : l.tokens) PutVarint(out, Zig(Diff(l.granted_ns, t)));
}

void EncodeRelease(const std::string& id, std::string* out) {
  PutId(out, id, kReleaseHexTag, kReleaseTag);
}

}  // namespace quotad::sqlite_internal

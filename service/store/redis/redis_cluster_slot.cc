// Redis Cluster's hash slots (CRC16) and lease ids placed in a slot (redis_cluster.h).

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "service/store/redis/redis_cluster.h"

namespace quotad {
namespace redis {
namespace {

const std::array<uint16_t, 256>& CrcTable() {
  static const std::array<uint16_t, 256> table = [] {
    std::array<uint16_t, 256> t{};
    for (int i = 0; i < 256; ++i) {
      uint16_t c = static_cast<uint16_t>(i << 8);
      for (int b = 0; b < 8; ++b)
        c = (c & 0x8000) ? static_cast<uint16_t>((c << 1) ^ 0x1021) : static_cast<uint16_t>(c << 1);
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// CRC16-XMODEM (poly 0x1021, init 0, no final xor), continued from `crc`.
uint16_t Crc16(uint16_t crc, absl::string_view data) {
  const auto& t = CrcTable();
  for (unsigned char ch : data) {
    crc = static_cast<uint16_t>((crc << 8) ^ t[((crc >> 8) ^ ch) & 0xff]);
  }
  return crc;
}

constexpr char kHex[] = "0123456789abcdef";

// For each 14-bit value v, a 20-bit number whose 5 hex digits have CRC16 & 0x3fff == v.
const std::vector<uint32_t>& SuffixTable() {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(kClusterSlots, UINT32_MAX);
    int filled = 0;
    char text[5];
    for (uint32_t n = 0; n < (1u << 20) && filled < kClusterSlots; ++n) {
      for (int i = 0; i < 5; ++i) text[i] = kHex[(n >> (4 * (4 - i))) & 0xf];
      const int v = Crc16(0, absl::string_view(text, 5)) & 0x3fff;
      if (t[v] == UINT32_MAX) {
        t[v] = n;
        ++filled;
      }
    }
    return t;
  }();
  return table;
}

// The key a command touches first, if any: FCALL/FCALL_RO/EVAL/EVALSHA name theirs after
}  // namespace

int KeySlot(absl::string_view key) {
  const size_t open = key.find('{');
  if (open != absl::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(0, key) & (kClusterSlots - 1);
}

LeaseId LeaseIdInSlot(LeaseId id, absl::string_view prefix, int slot) {
  // CRC16 with init 0 is linear: crc(P || S) = crc(P || 00000) ^ crc(S) for a 5-byte S.
  const std::string text = id.ToString();
  uint16_t c = Crc16(0, prefix);
  c = Crc16(c, absl::string_view(text).substr(0, text.size() - 5));
  c = Crc16(c, absl::string_view("\0\0\0\0\0", 5));
  const uint32_t suffix = SuffixTable()[(static_cast<uint32_t>(slot) ^ c) & 0x3fff];
  id.lo = (id.lo & ~uint64_t{0xfffff}) | suffix;
  return id;
}

}  // namespace redis
}  // namespace quotad

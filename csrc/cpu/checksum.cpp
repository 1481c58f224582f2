#include "cpu/checksum.h"

#include <cstring>
#include <vector>

#include "cpu/parallel.h"

namespace pyneg {

namespace {

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // unaligned-safe; the table file stores little-endian
  return v;
}

inline uint64_t round64(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}

inline uint64_t merge(uint64_t h, uint64_t v) {
  h ^= round64(0, v);
  return h * kP1 + kP4;
}

inline uint64_t avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

// xxHash64's structure (not its exact tail handling): 32-byte stripes into four lanes.
uint64_t hash_block(const uint8_t* p, int64_t n, uint64_t seed) {
  const uint8_t* const end = p + n;
  uint64_t h;
  if (n >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const uint8_t* const limit = end - 32;
    do {
      v1 = round64(v1, read64(p));
      v2 = round64(v2, read64(p + 8));
      v3 = round64(v3, read64(p + 16));
      v4 = round64(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge(merge(merge(merge(h, v1), v2), v3), v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(n);
  for (; p + 8 <= end; p += 8) h = rotl(h ^ round64(0, read64(p)), 27) * kP1 + kP4;
  for (; p < end; ++p) h = rotl(h ^ (static_cast<uint64_t>(*p) * kP5), 11) * kP1;
  return avalanche(h);
}

}  // namespace

uint64_t checksum64(const uint8_t* data, int64_t n, int num_threads) {
  if (n <= 0) return avalanche(kP5);
  const int64_t blocks = (n + kChecksumBlock - 1) / kChecksumBlock;
  std::vector<uint64_t> hashes(static_cast<size_t>(blocks));
  parallel_for(blocks, num_threads, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kChecksumBlock;
      const int64_t len = std::min(kChecksumBlock, n - start);
      hashes[static_cast<size_t>(b)] = hash_block(data + start, len, static_cast<uint64_t>(b));
    }
  });
  uint64_t h = static_cast<uint64_t>(n) * kP5;
  for (uint64_t v : hashes) h = merge(h, v);
  return avalanche(h);
}

}  // namespace pyneg

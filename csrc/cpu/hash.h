// Integer hashing shared by the frequency estimator and the ring index.
#pragma once

#include <cstdint>

namespace pyneg {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ULL;

// The splitmix64 finaliser: a bijection of 64-bit words whose output bits each
// depend on every input bit, so consecutive ids land far apart.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Hash function k of a family: splitmix64's output k + 1 for seed `id`. The
// functions are distinct bijections, pseudo-independent for different k.
inline uint64_t seeded_hash(uint64_t id, uint64_t k) {
  return mix64(id + (k + 1) * kGoldenGamma);
}

// floor(h * n / 2^64): maps a hash onto [0, n) without a modulo (and its bias).
inline uint64_t reduce_range(uint64_t h, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(h) * n) >> 64);
}

}  // namespace pyneg

// Philox4x32-10 counter-based random number generator (Salmon et al., SC'11),
// the generator behind curand's and PyTorch's CUDA streams.
//
// Every random number pyneg draws is a pure function of (seed, counter), so the
// same seed gives the same samples whatever the thread count, the batch split or
// the device. Header-only and free of host-only code so the CUDA kernels can
// include it unchanged.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PYNEG_HD __host__ __device__ __forceinline__
#define PYNEG_HD_COLD __host__ __device__ __noinline__
#else
#define PYNEG_HD inline
// Rare paths: out of line, so the hot loops around them stay small.
#define PYNEG_HD_COLD __attribute__((noinline, cold)) inline
#endif

namespace pyneg {

struct Philox4x32 {
  uint32_t v[4];
};

namespace detail {
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

PYNEG_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}
}  // namespace detail

// Ten rounds of Philox4x32 on counter (c0, c1, c2, c3) under key (k0, k1).
PYNEG_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                  uint32_t k0, uint32_t k1) {
  using namespace detail;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// Stream tags (fourth counter word) keep the draws of different purposes apart.
enum StreamTag : uint32_t {
  kTagDraw = 0,     // plain draws: block (position >> 1), half (position & 1)
  kTagRedraw = 1,   // redraws after an excluded id: (position, attempt)
  kTagUnique = 2,   // candidates of a row without replacement: (row base, try)
  kTagRace = 3,     // exponential keys of the Efraimidis-Spirakis race: (row base, id)
  kTagSkipGram = 16,  // skip-gram pairs: (token position, 0): keep test and reduced window
  kTagMine = 17,      // hard-negative windows: (row, slot): permutation keys and the systematic start
  kTagShuffle = 18,   // pair shuffle (pair_shuffle.h): (record >> 4, 0) bucket labels, (slot >> 2, 1)
                      // Fisher-Yates draws, (slot, 2 + attempt) their redraws
};

// One 64-bit random number for (seed, position, word, tag): the first half of
// the Philox block whose counter is (position, word, tag).
PYNEG_HD uint64_t random64(uint64_t seed, uint64_t position, uint32_t word, uint32_t tag) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(position),
                                     static_cast<uint32_t>(position >> 32), word, tag,
                                     static_cast<uint32_t>(seed),
                                     static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
}

// The Philox block behind plain draws 2 * block and 2 * block + 1.
PYNEG_HD Philox4x32 draw_block(uint64_t seed, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u,
                       kTagDraw, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The 64-bit random number of half `half` (0 or 1) of a draw block.
PYNEG_HD uint64_t block_half(const Philox4x32& r, unsigned half) {
  return half ? ((static_cast<uint64_t>(r.v[3]) << 32) | r.v[2])
              : ((static_cast<uint64_t>(r.v[1]) << 32) | r.v[0]);
}

// The random number of plain draw `position`: two consecutive positions share
// one Philox block, so a sequential pass costs one block per two draws.
PYNEG_HD uint64_t draw_random64(uint64_t seed, uint64_t position) {
  return block_half(draw_block(seed, position >> 1), static_cast<unsigned>(position & 1));
}

// A double in (0, 1] from 53 random bits: never 0, so -log(u) is finite.
PYNEG_HD double uniform_open0(uint64_t r) {
  return static_cast<double>((r >> 11) + 1) * (1.0 / 9007199254740992.0);
}

}  // namespace pyneg

// Random numbers of consecutive plain-draw positions (or of any consecutive
// Philox counters: fill_philox_blocks), many Philox blocks at a time.
// Bit-identical to draw_random64() in philox.h; on x86-64 CPUs with
// AVX-512F or AVX2 (checked at run time, the default build targets baseline
// x86-64) sixteen or eight blocks run in the lanes of one vector register.
#pragma once

#include <cstdint>

namespace pyneg {

// r[i] = draw_random64(seed, pos + i) for i in [0, count).
void fill_draw_randoms(uint64_t seed, uint64_t pos, int64_t count, uint64_t* r);

// Philox blocks (first + i, word, tag) under seed for i in [0, count), as
// philox4x32_10 gives them: r[2i] = words 1:0, r[2i + 1] = words 3:2 (so, as
// bytes on a little-endian CPU, each block's words 0, 1, 2, 3 in order).
void fill_philox_blocks(uint64_t seed, uint64_t first, int64_t count, uint32_t word, uint32_t tag, uint64_t* r);

// The same with a named implementation ("scalar", "avx2" or "avx512"), for
// tests; false (r untouched) when this CPU or build lacks it.
bool fill_draw_randoms_isa(const char* isa, uint64_t seed, uint64_t pos, int64_t count, uint64_t* r);

// Which implementation fill_draw_randoms uses on this CPU: "avx512", "avx2" or "scalar".
const char* philox_batch_isa();

}  // namespace pyneg

#include "cpu/philox_batch.h"

#include "cpu/philox.h"

#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYNEG_HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

namespace pyneg {

namespace {

// Blocks (first + i, word, tag) for i in [0, n) into r[2i] (words 1:0) and
// r[2i + 1] (words 3:2), one at a time. Plain draws: word 0, kTagDraw.
void blocks_scalar(uint64_t seed, uint64_t first, int64_t n, uint64_t* r, uint32_t word, uint32_t tag) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t b = first + static_cast<uint64_t>(i);
    const Philox4x32 x = philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), word, tag,
                                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    r[2 * i] = block_half(x, 0);
    r[2 * i + 1] = block_half(x, 1);
  }
}

#ifdef PYNEG_HAVE_AVX2_PATH
// 32x32 -> 64-bit products of every 32-bit lane of a with the constant m,
// split into high and low halves (pmuludq handles the even lanes; the odd
// lanes are shifted down first).
__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi,
                                                     __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Eight blocks per iteration; the tail goes through blocks_scalar.
__attribute__((target("avx2"))) void blocks_avx2(uint64_t seed, uint64_t first, int64_t n, uint64_t* r,
                                                 uint32_t word, uint32_t tag) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(detail::kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(detail::kPhiloxM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t b = first + static_cast<uint64_t>(i);
    // Counter low words b + lane; the carry into the high word is per lane.
    const __m256i lo_base = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b)));
    __m256i c0 = _mm256_add_epi32(lo_base, lane);
    const __m256i carry = _mm256_cmpgt_epi32(
        _mm256_xor_si256(lo_base, _mm256_set1_epi32(INT32_MIN)),
        _mm256_xor_si256(c0, _mm256_set1_epi32(INT32_MIN)));  // unsigned c0 < lo_base
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32))),
                                  carry);
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(word));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(tag));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, m0, hi0, lo0);
      mulhilo8(c2, m1, hi1, lo1);
      const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
      const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0);
      c1 = lo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1);
      c3 = lo0;
      k0 += detail::kPhiloxW0;
      k1 += detail::kPhiloxW1;
    }
    // Interleave into 64-bit words: block j gives (c1:c0) then (c3:c2).
    const __m256i w01_lo = _mm256_unpacklo_epi32(c0, c1);  // blocks 0,1 | 4,5 word 0
    const __m256i w01_hi = _mm256_unpackhi_epi32(c0, c1);  // blocks 2,3 | 6,7 word 0
    const __m256i w23_lo = _mm256_unpacklo_epi32(c2, c3);  // blocks 0,1 | 4,5 word 1
    const __m256i w23_hi = _mm256_unpackhi_epi32(c2, c3);  // blocks 2,3 | 6,7 word 1
    // Pair word 0 and word 1 of each block: (b0w0, b0w1, b1w0, b1w1) ...
    const __m256i p0 = _mm256_unpacklo_epi64(w01_lo, w23_lo);  // b0w0 b0w1 | b4w0 b4w1
    const __m256i p1 = _mm256_unpackhi_epi64(w01_lo, w23_lo);  // b1 | b5
    const __m256i p2 = _mm256_unpacklo_epi64(w01_hi, w23_hi);  // b2 | b6
    const __m256i p3 = _mm256_unpackhi_epi64(w01_hi, w23_hi);  // b3 | b7
    __m256i* out = reinterpret_cast<__m256i*>(r + 2 * i);
    _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(p0, p1, 0x20));  // b0 b1
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(p2, p3, 0x20));  // b2 b3
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(p0, p1, 0x31));  // b4 b5
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(p2, p3, 0x31));  // b6 b7
  }
  blocks_scalar(seed, first + static_cast<uint64_t>(i), n - i, r + 2 * i, word, tag);
}

// The AVX-512 code uses full-mask (maskz) forms of the intrinsics: GCC 12's
// headers give the plain ones an undefined pass-through operand that
// -Wmaybe-uninitialized reports (GCC bug 105593); same instructions.
__attribute__((target("avx512f"))) inline __m512i mul_epu32_512(__m512i a, __m512i b) {
  return _mm512_maskz_mul_epu32(0xFF, a, b);
}
__attribute__((target("avx512f"))) inline __m512i shr32_512(__m512i a) {
  return _mm512_maskz_srli_epi64(0xFF, a, 32);
}
__attribute__((target("avx512f"))) inline __m512i shl32_512(__m512i a) {
  return _mm512_maskz_slli_epi64(0xFF, a, 32);
}

// Sixteen blocks per iteration in the lanes of one 512-bit register, the same
// rounds as blocks_avx2 (the three-way XOR of a round is one vpternlogd); the
// tail goes through blocks_scalar. About 1.5x the AVX2 rate on the 2-core
// Intel Xeon development machine: 1.3 against 1.9 ns per draw.
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi,
                                                         __m512i& lo) {
  const __m512i even = mul_epu32_512(a, m);
  const __m512i odd = mul_epu32_512(shr32_512(a), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, shr32_512(even), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, shl32_512(odd));
}

__attribute__((target("avx512f"))) void blocks_avx512(uint64_t seed, uint64_t first, int64_t n, uint64_t* r,
                                                 uint32_t word, uint32_t tag) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(detail::kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(detail::kPhiloxM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const uint64_t b = first + static_cast<uint64_t>(i);
    // Counter low words b + lane; a lane whose low word wrapped carries into its high word.
    const __m512i lo_base = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b)));
    __m512i c0 = _mm512_add_epi32(lo_base, lane);
    const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, lo_base);
    const __m512i hi_base = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b >> 32)));
    __m512i c1 = _mm512_mask_add_epi32(hi_base, carry, hi_base, _mm512_set1_epi32(1));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(word));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(tag));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
      c1 = lo1;
      c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      c3 = lo0;
      k0 += detail::kPhiloxW0;
      k1 += detail::kPhiloxW1;
    }
    // As in blocks_avx2, per 128-bit lane q: p0 = block 4q, p1 = 4q + 1, ...
    // (each (c1:c0, c3:c2)); then a 4x4 transpose of 128-bit lanes puts the
    // blocks in order.
    const __m512i w01_lo = _mm512_maskz_unpacklo_epi32(0xFFFF, c0, c1);
    const __m512i w01_hi = _mm512_maskz_unpackhi_epi32(0xFFFF, c0, c1);
    const __m512i w23_lo = _mm512_maskz_unpacklo_epi32(0xFFFF, c2, c3);
    const __m512i w23_hi = _mm512_maskz_unpackhi_epi32(0xFFFF, c2, c3);
    const __m512i p0 = _mm512_maskz_unpacklo_epi64(0xFF, w01_lo, w23_lo);
    const __m512i p1 = _mm512_maskz_unpackhi_epi64(0xFF, w01_lo, w23_lo);
    const __m512i p2 = _mm512_maskz_unpacklo_epi64(0xFF, w01_hi, w23_hi);
    const __m512i p3 = _mm512_maskz_unpackhi_epi64(0xFF, w01_hi, w23_hi);
    const __m512i t0 = _mm512_maskz_shuffle_i64x2(0xFF, p0, p1, 0x44);  // p0.q0 p0.q1 p1.q0 p1.q1
    const __m512i t1 = _mm512_maskz_shuffle_i64x2(0xFF, p2, p3, 0x44);  // p2.q0 p2.q1 p3.q0 p3.q1
    const __m512i t2 = _mm512_maskz_shuffle_i64x2(0xFF, p0, p1, 0xEE);  // p0.q2 p0.q3 p1.q2 p1.q3
    const __m512i t3 = _mm512_maskz_shuffle_i64x2(0xFF, p2, p3, 0xEE);
    __m512i* out = reinterpret_cast<__m512i*>(r + 2 * i);
    _mm512_storeu_si512(out + 0, _mm512_maskz_shuffle_i64x2(0xFF, t0, t1, 0x88));  // blocks 0-3
    _mm512_storeu_si512(out + 1, _mm512_maskz_shuffle_i64x2(0xFF, t0, t1, 0xDD));  // blocks 4-7
    _mm512_storeu_si512(out + 2, _mm512_maskz_shuffle_i64x2(0xFF, t2, t3, 0x88));  // blocks 8-11
    _mm512_storeu_si512(out + 3, _mm512_maskz_shuffle_i64x2(0xFF, t2, t3, 0xDD));  // blocks 12-15
  }
  blocks_scalar(seed, first + static_cast<uint64_t>(i), n - i, r + 2 * i, word, tag);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

using BlocksFn = void (*)(uint64_t, uint64_t, int64_t, uint64_t*, uint32_t, uint32_t);

// The widest implementation this CPU runs, and its name.
struct Impl {
  BlocksFn fn;
  const char* isa;
};

Impl best_impl() {
#ifdef PYNEG_HAVE_AVX2_PATH
  if (cpu_has_avx512()) return {blocks_avx512, "avx512"};
  if (cpu_has_avx2()) return {blocks_avx2, "avx2"};
#endif
  return {blocks_scalar, "scalar"};
}

const Impl& best() {
  static const Impl impl = best_impl();
  return impl;
}

void fill_with(BlocksFn blocks, uint64_t seed, uint64_t pos, int64_t count, uint64_t* r) {
  if (count <= 0) return;
  int64_t i = 0;
  if (pos & 1) r[i++] = draw_random64(seed, pos);
  const int64_t nblocks = (count - i) / 2;
  blocks(seed, (pos + static_cast<uint64_t>(i)) >> 1, nblocks, r + i, 0u, kTagDraw);
  i += 2 * nblocks;
  if (i < count) r[i] = draw_random64(seed, pos + static_cast<uint64_t>(i));
}

}  // namespace

void fill_draw_randoms(uint64_t seed, uint64_t pos, int64_t count, uint64_t* r) {
  fill_with(best().fn, seed, pos, count, r);
}

bool fill_draw_randoms_isa(const char* isa, uint64_t seed, uint64_t pos, int64_t count, uint64_t* r) {
  BlocksFn fn = nullptr;
  if (std::strcmp(isa, "scalar") == 0) fn = blocks_scalar;
#ifdef PYNEG_HAVE_AVX2_PATH
  if (std::strcmp(isa, "avx2") == 0 && cpu_has_avx2()) fn = blocks_avx2;
  if (std::strcmp(isa, "avx512") == 0 && cpu_has_avx512()) fn = blocks_avx512;
#endif
  if (fn == nullptr) return false;
  fill_with(fn, seed, pos, count, r);
  return true;
}

void fill_philox_blocks(uint64_t seed, uint64_t first, int64_t count, uint32_t word, uint32_t tag, uint64_t* r) {
  if (count > 0) best().fn(seed, first, count, r, word, tag);
}

const char* philox_batch_isa() { return best().isa; }

}  // namespace pyneg

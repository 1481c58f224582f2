#include "cpu/pair_shuffle.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/philox.h"
#include "cpu/philox_batch.h"
#include "cpu/skipgram.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace pyneg {

namespace {

constexpr int kMaxBucketBits = 8;

inline Philox4x32 shuffle_block(uint64_t seed, uint64_t counter, uint32_t word) {
  return philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), word, kTagShuffle,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Lemire's bounded integer, exactly uniform in [0, range): with x uniform on
// [0, 2^32), m = x * range; x is accepted iff (m mod 2^32) >= 2^32 mod range,
// and then floor(m / 2^32) takes every value in [0, range) for exactly
// floor(2^32 / range) of the accepted x. A rejected x (probability < range /
// 2^32) is redrawn from (slot, 2 + attempt). range < 2^32 here.
PYNEG_HD_COLD uint32_t bounded32_redraw(uint64_t seed, uint64_t slot, uint32_t range, uint64_t m) {
  const uint32_t threshold = (0u - range) % range;  // 2^32 mod range
  for (uint32_t attempt = 0; static_cast<uint32_t>(m) < threshold; ++attempt) {
    m = static_cast<uint64_t>(shuffle_block(seed, slot, 2u + attempt).v[0]) * range;
  }
  return static_cast<uint32_t>(m >> 32);
}

inline uint64_t bounded32(uint32_t x, uint32_t range, uint64_t seed, uint64_t slot) {
  const uint64_t m = static_cast<uint64_t>(x) * range;
  if (static_cast<uint32_t>(m) < range) return bounded32_redraw(seed, slot, range, m);
  return m >> 32;
}

// The same with 64-bit draws for range >= 2^32 (buckets of over 4G records),
// from (slot, 2 + attempt) words 0-1.
PYNEG_HD_COLD uint64_t bounded64(uint64_t range, uint64_t seed, uint64_t slot) {
  const uint64_t threshold = (0 - range) % range;  // 2^64 mod range
  for (uint32_t attempt = 0;; ++attempt) {
    const Philox4x32 r = shuffle_block(seed, slot, 2u + attempt);
    const unsigned __int128 m =
        static_cast<unsigned __int128>((static_cast<uint64_t>(r.v[1]) << 32) | r.v[0]) * range;
    if (static_cast<uint64_t>(m) >= threshold) return static_cast<uint64_t>(m >> 64);
  }
}

// The scatter writes each bucket's values a cache line at a time with
// non-temporal stores (x86-64): the 2 x buckets streams it writes cost no
// reads of the lines they overwrite, and Fisher-Yates then reads each bucket
// once, in order (slot g, then slots at most g: already in cache).
struct alignas(64) LineBuffer {
  int64_t v[8];
  int k = 0;
  // Value of slot o of a; writes the buffered run when slot o + 1 starts a line.
  void put(int64_t* a, int64_t o, int64_t value) {
    v[k++] = value;
    if ((reinterpret_cast<uintptr_t>(a + o + 1) & 63) == 0) flush(a, o + 1);
  }
  // Writes the k buffered values of slots [end - k, end).
  void flush(int64_t* a, int64_t end) {
    int64_t* d = a + end - k;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    for (int j = 0; j < k; ++j) _mm_stream_si64(reinterpret_cast<long long*>(d + j), v[j]);
#else
    for (int j = 0; j < k; ++j) d[j] = v[j];
#endif
    k = 0;
  }
};

inline void stream_fence() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  _mm_sfence();
#endif
}

// Fisher-Yates over slots [s, e) of both arrays: for t = 1 .. e - s - 1, swap
// t and j uniform in [0, t] (after step t, slots s .. s + t are a uniform
// permutation of the records that were there). Slot g = s + t draws word
// g & 3 of block (g >> 2, 1); the bucket's blocks are drawn first, many at a
// time (philox_batch.h), into buf.
void shuffle_bucket(int64_t* c, int64_t* x, int64_t s, int64_t e, uint64_t seed, std::vector<uint64_t>& buf) {
  if (e - s < 2) return;
  const uint64_t first = static_cast<uint64_t>(s + 1) >> 2, last = static_cast<uint64_t>(e - 1) >> 2;
  buf.resize(2 * (last - first + 1));
  fill_philox_blocks(seed, first, static_cast<int64_t>(last - first + 1), 1u, kTagShuffle, buf.data());
  const uint64_t* words = buf.data() - 2 * first;  // words[2 * block + half]
  for (int64_t g = s + 1; g < e; ++g) {
    const uint64_t t = static_cast<uint64_t>(g - s);
    const uint64_t ug = static_cast<uint64_t>(g);
    const uint32_t w = static_cast<uint32_t>(words[(ug >> 1)] >> (32 * (ug & 1)));
    const uint64_t j = t + 1 < (uint64_t{1} << 32) ? bounded32(w, static_cast<uint32_t>(t + 1), seed, ug)
                                                   : bounded64(t + 1, seed, ug);
    const int64_t k = s + static_cast<int64_t>(j);
    std::swap(c[g], c[k]);
    std::swap(x[g], x[k]);
  }
}

// Scatters the records source(emit) produces (emit(centre, context), n of
// them in order) into their buckets, then shuffles every bucket.
template <class Source>
void scatter_and_shuffle(int64_t n, uint64_t seed, int bits, Source&& source, int64_t* c, int64_t* x,
                         int num_threads) {
  if (bits < -1 || bits > kMaxBucketBits) {
    throw std::invalid_argument("bucket_bits must be in [0, " + std::to_string(kMaxBucketBits) + "] or -1, got " +
                                std::to_string(bits));
  }
  if (bits < 0) bits = pair_shuffle_bucket_bits(n);
  const int64_t buckets = int64_t{1} << bits;
  std::vector<int64_t> start(static_cast<size_t>(buckets) + 1, 0);
  if (bits == 0) {
    int64_t o = 0;
    source([&](int64_t centre, int64_t context) {
      c[o] = centre;
      x[o] = context;
      ++o;
    });
    start[1] = n;
  } else {
    // Label of record i: byte i & 15 of block (i >> 4, 0), i.e. byte i & 7 of
    // 64-bit word i >> 3 of the blocks as fill_philox_blocks writes them.
    const int64_t blocks = (n + 15) >> 4;
    std::vector<uint64_t> labels(static_cast<size_t>(2 * blocks));
    parallel_for(blocks, num_threads, 1 << 14, [&](int64_t lo, int64_t hi) {
      fill_philox_blocks(seed, static_cast<uint64_t>(lo), hi - lo, 0u, kTagShuffle, labels.data() + 2 * lo);
    });
    const uint64_t mask = static_cast<uint64_t>(buckets - 1);
    auto label = [&](int64_t i) { return (labels[static_cast<size_t>(i >> 3)] >> (8 * (i & 7))) & mask; };
    for (int64_t i = 0; i < n; ++i) ++start[label(i) + 1];
    for (int64_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    std::vector<LineBuffer> bc(static_cast<size_t>(buckets)), bx(static_cast<size_t>(buckets));
    int64_t i = 0;
    source([&](int64_t centre, int64_t context) {
      const uint64_t b = label(i++);
      const int64_t o = cursor[b]++;
      bc[b].put(c, o, centre);
      bx[b].put(x, o, context);
    });
    for (int64_t b = 0; b < buckets; ++b) {
      bc[b].flush(c, cursor[b]);
      bx[b].flush(x, cursor[b]);
    }
    stream_fence();
  }
  parallel_for(buckets, num_threads, 1, [&](int64_t lo, int64_t hi) {
    std::vector<uint64_t> buf;
    for (int64_t b = lo; b < hi; ++b) shuffle_bucket(c, x, start[b], start[b + 1], seed, buf);
  });
}

}  // namespace

int pair_shuffle_bucket_bits(int64_t n) {
  int bits = 0;
  while (bits < kMaxBucketBits && n > (int64_t{1} << (15 + bits))) ++bits;
  return bits;
}

void shuffle_pairs(const int64_t* centres, const int64_t* contexts, int64_t n, uint64_t seed, int bucket_bits,
                   int64_t* out_centres, int64_t* out_contexts, int num_threads) {
  scatter_and_shuffle(
      n, seed, bucket_bits,
      [&](auto&& emit) {
        for (int64_t i = 0; i < n; ++i) emit(centres[i], contexts[i]);
      },
      out_centres, out_contexts, num_threads);
}

void fill_shuffled(const SkipGramPlan& plan, uint64_t seed, int64_t* centres, int64_t* contexts, int num_threads) {
  scatter_and_shuffle(
      plan.num_pairs(), seed, -1, [&](auto&& emit) { plan.for_each_pair(emit); }, centres, contexts, num_threads);
}

}  // namespace pyneg

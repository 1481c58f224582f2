#include "cpu/pair_shuffle.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/philox.h"
#include "cpu/philox_batch.h"
#include "cpu/skipgram.h"

namespace pyneg {

namespace {

constexpr int kMaxBucketBits = 8;
// The default stays at 32 buckets (64 write streams for the scatter's plain
// stores): on the development machine (2-core AMD EPYC) 16 or 64 buckets
// measured a little slower, and 128-256 L2-sized buckets slower still (the
// scatter's extra streams cost more than the cache-sized Fisher-Yates saved).
constexpr int kDefaultMaxBucketBits = 5;

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

// Fisher-Yates over slots [s, e) of both arrays: for t = 1 .. e - s - 1, swap
// t and j uniform in [0, t] (after step t, slots s .. s + t are a uniform
// permutation of the records that were there). Slot g = s + t draws word
// g & 3 of block (g >> 2, 1); the bucket's blocks are drawn first, many at a
// time (philox_batch.h), into buf.
void shuffle_bucket(int64_t* __restrict c, int64_t* __restrict x, int64_t s, int64_t e, uint64_t seed,
                    std::vector<uint64_t>& buf) {
  if (e - s < 2) return;
  const uint64_t first = static_cast<uint64_t>(s + 1) >> 2, last = static_cast<uint64_t>(e - 1) >> 2;
  buf.resize(2 * (last - first + 1));
  fill_philox_blocks(seed, first, static_cast<int64_t>(last - first + 1), 1u, kTagShuffle, buf.data());
  const uint64_t* words = buf.data();  // words[2 * (block - first) + half]
  // Steps run kStep at a time: their swap partners first (a function of the
  // random words alone), then the swaps, each prefetching the partner of the
  // swap kAhead steps on.
  constexpr int64_t kStep = 256, kAhead = 16;
  int64_t partner[kStep];
  for (int64_t g0 = s + 1; g0 < e; g0 += kStep) {
    const int64_t m = std::min(kStep, e - g0);
    for (int64_t q = 0; q < m; ++q) {
      const uint64_t ug = static_cast<uint64_t>(g0 + q);
      const uint64_t t = ug - static_cast<uint64_t>(s);
      const uint32_t w = static_cast<uint32_t>(words[(ug >> 1) - 2 * first] >> (32 * (ug & 1)));
      const uint64_t j = t + 1 < (uint64_t{1} << 32) ? bounded32(w, static_cast<uint32_t>(t + 1), seed, ug)
                                                     : bounded64(t + 1, seed, ug);
      partner[q] = s + static_cast<int64_t>(j);
    }
    for (int64_t q = 0; q < m; ++q) {
      if (q + kAhead < m) {
        __builtin_prefetch(c + partner[q + kAhead], 1);
        __builtin_prefetch(x + partner[q + kAhead], 1);
      }
      const int64_t g = g0 + q, k = partner[q];
      std::swap(c[g], c[k]);
      std::swap(x[g], x[k]);
    }
  }
}

// Scatters the records into their buckets, then shuffles every bucket.
// Records [seg[k], seg[k + 1]) come from source(k, emit) (emit(centre,
// context) for each, in order); segments scatter on several threads, each
// into its own share of every bucket (bucket-major, segment-minor offsets).
// A stable scatter has one result, so the segments (which follow the thread
// count) change nothing in the output.
template <class Source>
void scatter_and_shuffle(int64_t n, uint64_t seed, int bits, const std::vector<int64_t>& seg, Source&& source,
                         int64_t* c, int64_t* x, int num_threads) {
  const int64_t segments = static_cast<int64_t>(seg.size()) - 1;
  const int64_t buckets = int64_t{1} << bits;
  std::vector<int64_t> start(static_cast<size_t>(buckets) + 1, 0);
  if (bits == 0) {
    parallel_for(segments, num_threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        int64_t o = seg[k];
        source(k, [&](int64_t centre, int64_t context) {
          c[o] = centre;
          x[o] = context;
          ++o;
        });
      }
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
    // cursor[k * buckets + b]: segment k's count of bucket b, then its first slot there.
    std::vector<int64_t> cursor(static_cast<size_t>(segments * buckets), 0);
    parallel_for(segments, num_threads, 1, [&](int64_t lo, int64_t hi) {
      // Four counters a bucket (record i & 3): no chain of increments on one counter.
      std::vector<int64_t> part(static_cast<size_t>(4 * buckets));
      for (int64_t k = lo; k < hi; ++k) {
        std::fill(part.begin(), part.end(), 0);
        for (int64_t i = seg[k]; i < seg[k + 1]; ++i) ++part[static_cast<size_t>((i & 3) * buckets) + label(i)];
        for (int64_t b = 0; b < buckets; ++b) {
          cursor[k * buckets + b] = part[b] + part[buckets + b] + part[2 * buckets + b] + part[3 * buckets + b];
        }
      }
    });
    int64_t total = 0;
    for (int64_t b = 0; b < buckets; ++b) {
      start[b] = total;
      for (int64_t k = 0; k < segments; ++k) {
        const int64_t m = cursor[k * buckets + b];
        cursor[k * buckets + b] = total;
        total += m;
      }
    }
    start[buckets] = total;
    parallel_for(segments, num_threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; ++k) {
        int64_t* cur = cursor.data() + k * buckets;
        int64_t i = seg[k];
        source(k, [&](int64_t centre, int64_t context) {
          const int64_t o = cur[label(i++)]++;
          c[o] = centre;
          x[o] = context;
        });
      }
    });
  }
  parallel_for(buckets, num_threads, 1, [&](int64_t lo, int64_t hi) {
    std::vector<uint64_t> buf;
    for (int64_t b = lo; b < hi; ++b) shuffle_bucket(c, x, start[b], start[b + 1], seed, buf);
  });
}

int checked_bits(int bits, int64_t n) {
  if (bits < -1 || bits > kMaxBucketBits) {
    throw std::invalid_argument("bucket_bits must be in [0, " + std::to_string(kMaxBucketBits) + "] or -1, got " +
                                std::to_string(bits));
  }
  return bits < 0 ? pair_shuffle_bucket_bits(n) : bits;
}

// Segments per thread: enough records each to be worth a thread.
int64_t segment_count(int64_t n, int num_threads) {
  return std::max<int64_t>(1, std::min<int64_t>(std::max(num_threads, 1), n >> 16));
}

}  // namespace

int pair_shuffle_bucket_bits(int64_t n) {
  int bits = 0;
  while (bits < kDefaultMaxBucketBits && n > (int64_t{1} << (17 + bits))) ++bits;
  return bits;
}

void shuffle_pairs(const int64_t* centres, const int64_t* contexts, int64_t n, uint64_t seed, int bucket_bits,
                   int64_t* out_centres, int64_t* out_contexts, int num_threads) {
  const int bits = checked_bits(bucket_bits, n);
  const int64_t segments = segment_count(n, num_threads);
  std::vector<int64_t> seg(static_cast<size_t>(segments) + 1);
  for (int64_t k = 0; k <= segments; ++k) seg[k] = n / segments * k + std::min(k, n % segments);
  scatter_and_shuffle(
      n, seed, bits, seg,
      [&](int64_t k, auto&& emit) {
        for (int64_t i = seg[k]; i < seg[k + 1]; ++i) emit(centres[i], contexts[i]);
      },
      out_centres, out_contexts, num_threads);
}

void fill_shuffled(const SkipGramPlan& plan, uint64_t seed, int64_t* centres, int64_t* contexts, int num_threads) {
  // Segments cut at sentence starts: the first sentence whose pairs start at
  // or after k / segments of all pairs.
  const int64_t n = plan.num_pairs(), sentences = plan.num_sentences();
  const int64_t segments = segment_count(n, num_threads);
  std::vector<int64_t> first(static_cast<size_t>(segments) + 1, 0), seg(static_cast<size_t>(segments) + 1, 0);
  for (int64_t k = 1; k <= segments; ++k) {
    const int64_t target = k == segments ? n : n / segments * k;
    int64_t lo = first[k - 1], hi = sentences;  // first sentence s with pairs_before(s) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (plan.pairs_before(mid) >= target) hi = mid; else lo = mid + 1;
    }
    first[k] = k == segments ? sentences : lo;
    seg[k] = plan.pairs_before(first[k]);
  }
  scatter_and_shuffle(
      n, seed, checked_bits(-1, n), seg,
      [&](int64_t k, auto&& emit) { plan.for_each_pair(first[k], first[k + 1], emit); }, centres, contexts,
      num_threads);
}

}  // namespace pyneg

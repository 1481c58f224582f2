#include "cpu/alias_sample.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/philox.h"
#include "cpu/philox_batch.h"
#include "cpu/row_set.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYNEG_HAVE_AVX512_PICK 1
#include <immintrin.h>
#endif

namespace pyneg {

namespace {

constexpr int64_t kGrain = int64_t{1} << 15;  // draws per thread chunk, at least
constexpr int kBlock = 256;                   // draws resolved together
// Draws a thread of alias_sample claims at a time (a multiple of kBlock; the
// prefetch pipeline restarts per piece, about 1% at this size).
constexpr int64_t kPiece = int64_t{1} << 13;
// For DRAM tables, draw i prefetches the entry of draw i + kPrefetchAhead into
// L2 (prefetcht1; presumably faster than a prefetch into L1 because it does not
// hold one of the core's few L1 miss buffers until the line arrives, so more
// misses stay in flight). Measured at V = 10^7, 81920 draws per call with a new
// seed each call (the 2-core Intel Xeon development machine with AVX-512,
// shared, thread CPU time, M draws/s per core, AVX-512 Philox batches): into L2, 115 at distance 32, 153 at 64, 160-168 at 128 to
// 256; into L1, 110 at any distance from 32 to 192 (the old 16-draw stages: 85).
// AVX2 batches: 148 at 128 into L2.
constexpr int kPrefetchAhead = 128;
constexpr int kPrefetchLocality = 2;  // __builtin_prefetch's 2: prefetcht1, into L2
static_assert(kPrefetchAhead <= kBlock, "the prefetched draw must be in the next block at most");
// Tables above this many bytes live in DRAM: prefetch each draw's entry ahead.
constexpr size_t kPrefetchBytes = size_t{1} << 20;

// The table's cumulative masses, built on first use by whichever thread needs
// them (rows drawn from their exact CDF are rare and may never occur).
class LazyCumulative {
 public:
  explicit LazyCumulative(const AliasTableView& table) : table_(table) {}
  const uint64_t* get() {
    std::call_once(once_, [this] {
      cum_ = cumulative_mass(table_);
      if (cum_.empty() || cum_.back() != table_.total_mass())
        throw std::invalid_argument("mass must sum to V * 2**32 (the class masses of entries)");
    });
    return cum_.data();
  }

 private:
  const AliasTableView& table_;
  std::once_flag once_;
  std::vector<uint64_t> cum_;
};

// Picks of cache-resident tables, eight at a time: out[i] = alias_pick(entries,
// v, r[i]) for i in [0, m), bit for bit, and whether an id was >= v. Tables up
// to kPrefetchBytes have V < 2**32, so the 128-bit product u * V of alias_pick
// splits into 32 x 32-bit ones: t = hi32(u) * V + (lo32(u) * V >> 32) (< 2**64)
// is bits 32..95 of u * V, so t >> 32 is the bucket and the low half of t the
// coin. About 1.7x the scalar loop at V = 10^5 (a gather of eight entries
// against eight dependent scalar picks); the scalar loop finishes the tail.
#ifdef PYNEG_HAVE_AVX512_PICK
// Full-mask forms of the intrinsics (here and for the gather): GCC 12's headers
// give the plain ones an undefined pass-through operand that
// -Wmaybe-uninitialized reports (GCC bug 105593); same instructions.
__attribute__((target("avx512f"))) inline __m512i mul_epu32_512(__m512i a, __m512i b) {
  return _mm512_maskz_mul_epu32(0xFF, a, b);
}
__attribute__((target("avx512f"))) inline __m512i shr32_512(__m512i a) {
  return _mm512_maskz_srli_epi64(0xFF, a, 32);
}

__attribute__((target("avx512f"))) bool pick_block_avx512(const uint64_t* entries, uint64_t v,
                                                         const uint64_t* r, int m, int64_t* out) {
  static_assert(kPrefetchBytes / sizeof(uint64_t) < (uint64_t{1} << 32), "V must fit in 32 bits");
  const __m512i vv = _mm512_set1_epi64(static_cast<long long>(v));
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFFll);
  __mmask8 bad = 0;
  int i = 0;
  for (; i + 8 <= m; i += 8) {
    const __m512i u = _mm512_loadu_si512(r + i);
    const __m512i hi = mul_epu32_512(shr32_512(u), vv);
    const __m512i t = _mm512_add_epi64(hi, shr32_512(mul_epu32_512(u, vv)));
    const __m512i bucket = shr32_512(t);
    const __m512i e = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), 0xFF, bucket,
                                                      reinterpret_cast<const long long*>(entries), 8);
    // Alias when coin >= threshold (the low halves of t and e).
    const __mmask8 take_alias = _mm512_cmpge_epu64_mask(_mm512_and_si512(t, low32), _mm512_and_si512(e, low32));
    const __m512i id = _mm512_mask_blend_epi64(take_alias, bucket, shr32_512(e));
    bad |= _mm512_cmpge_epu64_mask(id, vv);
    _mm512_storeu_si512(out + i, id);
  }
  uint64_t worst = bad;
  for (; i < m; ++i) {
    const int64_t id = alias_pick(entries, v, r[i]);
    worst |= static_cast<uint64_t>(id >= static_cast<int64_t>(v));
    out[i] = id;
  }
  return worst != 0;
}

bool cpu_has_avx512_pick() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

}  // namespace

void throw_bad_alias(uint64_t v) {
  throw std::invalid_argument("entries is not an alias table: a bucket's alias is >= V = " +
                              std::to_string(v));
}

void check_drawn_ids(const int64_t* out, int64_t n, int64_t v) {
  uint64_t worst = 0;
  for (int64_t i = 0; i < n; ++i) worst |= static_cast<uint64_t>(out[i] >= v);
  if (worst) throw_bad_alias(static_cast<uint64_t>(v));
}

namespace {

// prepare_exclude_lists over any source of masses: mass_of(i, id) is the mass
// of id, the i-th entry of the flat lists.
template <class MassOf>
PreparedExclude prepare_lists(int64_t n, int64_t num_positive, const ExcludeLists& ex,
                              int64_t unique_k, MassOf&& mass_of) {
  PreparedExclude p;
  const uint64_t total = static_cast<uint64_t>(n) * kBucketMass;
  p.offsets.assign(static_cast<size_t>(ex.num_lists + 1), 0);
  p.ids.reserve(static_cast<size_t>(ex.num_lists * ex.width));
  p.allowed_mass.resize(static_cast<size_t>(ex.num_lists));
  p.allowed_positive.resize(static_cast<size_t>(ex.num_lists));
  std::vector<std::pair<int64_t, uint64_t>> row;  // (id, mass) of one list
  for (int64_t l = 0; l < ex.num_lists; ++l) {
    row.clear();
    for (int64_t j = 0; j < ex.width; ++j) {
      const int64_t i = l * ex.width + j;
      const int64_t id = ex.ids[i];
      if (id == -1) continue;
      if (id < 0 || id >= n) {
        throw std::invalid_argument("exclude holds id " + std::to_string(id) +
                                    " outside [0, " + std::to_string(n) +
                                    ") (use -1 for padding)");
      }
      const uint64_t m = mass_of(i, id);
      if (m > total) throw std::invalid_argument("mass holds a class mass above V * 2**32 (not the masses of the table)");
      row.emplace_back(id, m);
    }
    std::sort(row.begin(), row.end());
    row.erase(std::unique(row.begin(), row.end(),
                          [](const auto& a, const auto& b) { return a.first == b.first; }),
              row.end());
    uint64_t excluded = 0;
    int64_t excluded_positive = 0;
    for (const auto& [id, m] : row) {
      p.ids.push_back(id);
      excluded += m;
      if (excluded > total || excluded < m)
        throw std::invalid_argument("mass of exclude row " + std::to_string(l) + " exceeds V * 2**32 (not the masses of the table)");
      excluded_positive += m > 0;
      p.cum.push_back(excluded);
    }
    p.allowed_mass[static_cast<size_t>(l)] = total - excluded;
    p.allowed_positive[static_cast<size_t>(l)] = num_positive - excluded_positive;
    if (p.allowed_mass[static_cast<size_t>(l)] == 0) {
      throw std::invalid_argument("exclude row " + std::to_string(l) +
                                  " leaves no id with positive weight to draw");
    }
    if (p.allowed_positive[static_cast<size_t>(l)] < unique_k) {
      throw std::invalid_argument(
          "size asks for " + std::to_string(unique_k) + " distinct ids per row, but row " +
          std::to_string(l) + " has only " +
          std::to_string(p.allowed_positive[static_cast<size_t>(l)]) +
          " allowed ids with positive weight");
    }
    p.offsets[static_cast<size_t>(l + 1)] = static_cast<int64_t>(p.ids.size());
  }
  return p;
}

}  // namespace

PreparedExclude prepare_exclude_lists(const AliasTableView& table, const ExcludeLists& ex,
                                      int64_t unique_k) {
  const uint64_t* mass = table.mass;
  return prepare_lists(table.size(), table.num_positive, ex, unique_k,
                       [mass](int64_t, int64_t id) { return mass[id]; });
}

PreparedExclude prepare_exclude_lists_from_masses(int64_t num_classes, int64_t num_positive,
                                                  const ExcludeLists& ex,
                                                  const uint64_t* id_mass, int64_t unique_k) {
  return prepare_lists(num_classes, num_positive, ex, unique_k,
                       [id_mass](int64_t i, int64_t) { return id_mass[i]; });
}

std::vector<uint64_t> cumulative_mass(const AliasTableView& table) {
  std::vector<uint64_t> cum(static_cast<size_t>(table.size()));
  uint64_t acc = 0;
  for (size_t i = 0; i < cum.size(); ++i) cum[i] = acc += table.mass[i];
  return cum;
}

void alias_sample(const AliasTableView& table, uint64_t seed, uint64_t offset, int64_t* out,
                  int64_t n, int num_threads) {
  const uint64_t* entries = table.entries;
  const uint64_t v = static_cast<uint64_t>(table.size());
  const bool prefetch = static_cast<size_t>(table.size()) * sizeof(uint64_t) > kPrefetchBytes;
  std::atomic<bool> bad_alias{false};
  auto draw_range = [&, entries, v](int64_t b, int64_t e) {
    // Every id is checked against V as it is written (one compare per draw): a
    // table with an alias >= V (not one pyneg built) is refused, never returned.
    uint64_t worst = 0;
    // entries and v are copied into the closure: as locals, the compiler knows
    // the stores to out cannot change them and keeps them in registers.
    if (!prefetch) {
      uint64_t r[kBlock];
#ifdef PYNEG_HAVE_AVX512_PICK
      if (cpu_has_avx512_pick()) {
        bool bad = false;
        for (int64_t j = b; j < e; j += kBlock) {
          const int m = static_cast<int>(std::min<int64_t>(kBlock, e - j));
          fill_draw_randoms(seed, offset + static_cast<uint64_t>(j), m, r);
          bad |= pick_block_avx512(entries, v, r, m, out + j);
        }
        if (bad) bad_alias = true;
        return;
      }
#endif
      for (int64_t j = b; j < e; j += kBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kBlock, e - j));
        fill_draw_randoms(seed, offset + static_cast<uint64_t>(j), m, r);
        for (int i = 0; i < m; ++i) {
          const int64_t id = alias_pick(entries, v, r[i]);
          worst |= static_cast<uint64_t>(id >= static_cast<int64_t>(v));
          out[j + i] = id;
        }
      }
      if (worst) bad_alias = true;
      return;
    }
    // DRAM-resident table: the randoms of the next kBlock draws are made (one
    // batch, no table reads) before the current block is resolved, and each
    // draw prefetches the entry of the draw kPrefetchAhead later, so the table
    // reads arrive at an even rate and stay in flight while the picks and the
    // Philox batches run. (Prefetching a whole block at once right after its
    // Philox batch left the miss buffers idle during the batch.)
    // The ring holds two blocks: draw t of the chunk is at r[t & kRingMask].
    constexpr int64_t kRingMask = 2 * kBlock - 1;
    uint64_t r[2 * kBlock];
    const int64_t len = e - b;
    auto fill = [&](int64_t t) {  // the randoms of chunk draws [t, t + kBlock)
      if (t < len) {
        fill_draw_randoms(seed, offset + static_cast<uint64_t>(b + t), std::min<int64_t>(kBlock, len - t),
                          r + (t & kRingMask));
      }
    };
    fill(0);
    for (int64_t t = 0; t < std::min<int64_t>(kPrefetchAhead, len); ++t)
      __builtin_prefetch(entries + mulhi64(r[t], v), 0, kPrefetchLocality);
    int64_t* dst = out + b;
    for (int64_t t0 = 0; t0 < len; t0 += kBlock) {
      fill(t0 + kBlock);
      const int64_t t1 = std::min<int64_t>(t0 + kBlock, len);
      for (int64_t t = t0; t < t1; ++t) {
        if (t + kPrefetchAhead < len)
          __builtin_prefetch(entries + mulhi64(r[(t + kPrefetchAhead) & kRingMask], v), 0, kPrefetchLocality);
        const int64_t id = alias_pick(entries, v, r[t & kRingMask]);
        worst |= static_cast<uint64_t>(id >= static_cast<int64_t>(v));
        dst[t] = id;
      }
    }
    if (worst) bad_alias = true;
  };
  // The threads (as many as before: one parallel_for chunk each) claim
  // kPiece draws at a time until none are left, so a thread that starts late
  // or is descheduled (a loaded machine) leaves its share to the others instead
  // of holding up the call. Draws depend only on their positions, so the split
  // changes nothing in the output.
  const int64_t pieces = (n + kPiece - 1) / kPiece;
  std::atomic<int64_t> next{0};
  parallel_for(n, num_threads, kGrain, [&](int64_t, int64_t) {
    for (int64_t p; (p = next.fetch_add(1, std::memory_order_relaxed)) < pieces;)
      draw_range(p * kPiece, std::min(n, (p + 1) * kPiece));
  });
  if (bad_alias) throw_bad_alias(v);
}

void alias_sample_excluding(const AliasTableView& table, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k,
                            int64_t* out, int num_threads) {
  const PreparedExclude lists = prepare_exclude_lists(table, exclude);
  LazyCumulative table_cum(table);
  const uint64_t* entries = table.entries;
  const uint64_t v = static_cast<uint64_t>(table.size());
  const uint64_t total = table.total_mass();
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1));
  parallel_for(rows, num_threads, grain, [&](int64_t rb, int64_t re) {
    std::vector<uint64_t> r(static_cast<size_t>(std::min<int64_t>(k, kBlock)));
    for (int64_t row = rb; row < re; ++row) {
      const int64_t l = row / exclude.rows_per_list;
      const ExcludedIds ex = lists.list(l);
      const uint64_t allowed = lists.allowed_mass[static_cast<size_t>(l)];
      const bool use_cdf = row_uses_cdf(allowed, total);
      int64_t* dst = out + row * k;
      const uint64_t base = offset + static_cast<uint64_t>(row * k);
      for (int64_t j = 0; j < k; j += kBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kBlock, k - j));
        fill_draw_randoms(seed, base + static_cast<uint64_t>(j), m, r.data());
        for (int i = 0; i < m; ++i) {
          const uint64_t pos = base + static_cast<uint64_t>(j + i);
          dst[j + i] = draw_excluding(entries, v, [&] { return table_cum.get(); }, ex, allowed,
                                      use_cdf, seed, pos, r[static_cast<size_t>(i)]);
        }
      }
    }
  });
  check_drawn_ids(out, rows * k, table.size());
}

namespace {

// Expected number of draws with replacement after which `k` distinct allowed
// ids have been seen: solves sum_i 1 - (1 - p_i)^t = k for t by bisection.
int64_t expected_tries(const AliasTableView& table, const ExcludedIds& excluded, int64_t k) {
  const double total = static_cast<double>(table.total_mass());
  std::vector<double> log1m;  // log(1 - p_i) of the allowed ids
  for (size_t i = 0; i < static_cast<size_t>(table.size()); ++i) {
    if (table.mass[i] == 0 || excluded.contains(static_cast<int64_t>(i))) continue;
    log1m.push_back(std::log1p(-static_cast<double>(table.mass[i]) / total));
  }
  auto distinct = [&](double t) {
    double s = 0.0;
    for (double l : log1m) s -= std::expm1(t * l);
    return s;
  };
  double lo = static_cast<double>(k), hi = lo;
  while (distinct(hi) < static_cast<double>(k) - 0.5 && hi < 1e18) hi *= 2.0;
  for (int it = 0; it < 48 && hi - lo > 0.5; ++it) {
    const double mid = 0.5 * (lo + hi);
    (distinct(mid) < static_cast<double>(k) - 0.5 ? lo : hi) = mid;
  }
  return static_cast<int64_t>(std::ceil(hi));
}

}  // namespace

void alias_sample_unique(const AliasTableView& table, uint64_t seed, uint64_t offset,
                         const ExcludeLists& exclude, int64_t rows, int64_t k,
                         int64_t* out, int64_t* tries_out, int num_threads) {
  const PreparedExclude lists = prepare_exclude_lists(table, exclude, k);
  const uint64_t* entries = table.entries;
  const uint64_t v = static_cast<uint64_t>(table.size());
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(4 * k, 1));
  parallel_for(rows, num_threads, grain, [&](int64_t rb, int64_t re) {
    RowSet seen;
    std::vector<std::pair<double, int64_t>> keys;
    for (int64_t row = rb; row < re; ++row) {
      const int64_t l = row / exclude.rows_per_list;
      const uint64_t base = offset + static_cast<uint64_t>(row * k);
      int64_t* dst = out + row * k;
      const ExcludedIds ex = lists.list(l);
      seen.reset(static_cast<size_t>(k + (ex.end - ex.begin)));
      for (const int64_t* p = ex.begin; p != ex.end; ++p) seen.insert(*p);
      uint64_t t = 0;
      int64_t got = unique_row_rejection(entries, v, seed, base, k, seen, dst, &t);
      int64_t tries = static_cast<int64_t>(t);
      if (got < k) {
        // Successive sampling is memoryless: the rest of the row is the race
        // key_i = E_i / m_i over the ids not yet seen, smallest keys first.
        keys.clear();
        for (size_t i = 0; i < static_cast<size_t>(table.size()); ++i) {
          const uint64_t m = table.mass[i];
          if (m == 0 || seen.contains(static_cast<int64_t>(i))) continue;
          const double u = uniform_open0(random64(seed, base, static_cast<uint32_t>(i), kTagRace));
          keys.emplace_back(-std::log(u) / static_cast<double>(m), static_cast<int64_t>(i));
        }
        const auto need = static_cast<std::ptrdiff_t>(k - got);
        if (static_cast<std::ptrdiff_t>(keys.size()) < need) {
          // Only a table whose masses changed after the caller counted its
          // drawable classes (a mapped file written under its readers) gets here.
          throw std::invalid_argument(
              "the alias table has fewer drawable classes than a unique row needs: its masses "
              "changed while drawing (was a mapped table file modified?)");
        }
        std::nth_element(keys.begin(), keys.begin() + need - 1, keys.end());
        std::sort(keys.begin(), keys.begin() + need);
        for (std::ptrdiff_t i = 0; i < need; ++i) dst[got++] = keys[static_cast<size_t>(i)].second;
        if (tries_out) {  // O(V) per bisection step: only when asked for
          tries = std::max(tries, expected_tries(table, ex, k));
        }
      }
      if (tries_out) tries_out[row] = tries;
    }
  });
  check_drawn_ids(out, rows * k, table.size());
}

void emulate_device_sampling(const AliasTableView& table, int mode, uint64_t seed, uint64_t offset,
                             const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                             int64_t* tries) {
  const uint64_t* entries = table.entries;
  const uint64_t v = static_cast<uint64_t>(table.size());
  const uint64_t n = static_cast<uint64_t>(rows * k);
  if (mode == 0) {
    for (uint64_t i = 0; i < plain_thread_count(offset, n); ++i)
      plain_thread(i, entries, v, seed, offset, out, n);
    return;
  }
  if (mode != 1 && mode != 2) throw std::invalid_argument("mode must be 0, 1 or 2");
  const PreparedExclude p = prepare_exclude_lists(table, exclude, mode == 2 ? k : 0);
  const ExcludeArrays arrays{p.offsets.data(), p.ids.data(), p.cum.data(), p.allowed_mass.data(),
                             exclude.rows_per_list};
  if (mode == 1) {
    const std::vector<uint64_t> cum = cumulative_mass(table);
    for (uint64_t j = 0; j < n; ++j)
      excluding_thread(j, entries, v, cum.data(), arrays, seed, offset, k, out);
    return;
  }
  const auto capacity = static_cast<int64_t>(id_set_capacity(static_cast<uint64_t>(k + p.longest())));
  std::vector<int64_t> slots(static_cast<size_t>(rows * capacity));
  for (int64_t row = 0; row < rows; ++row)
    unique_row_thread(row, entries, v, arrays, seed, offset, k, slots.data() + row * capacity,
                      capacity, tries, out);
}

}  // namespace pyneg

// The per-draw logic of alias sampling, shared by the CPU kernels
// (alias_sample.cpp) and the CUDA kernels (csrc/cuda/alias.cu).
//
// Everything here is header-only, PYNEG_HD (__host__ __device__ under nvcc)
// and free of host-only code, so a given seed gives bit-identical samples on
// CPU and GPU by construction: both devices run these very functions, and the
// CPU tests exercise them. What stays device-specific is only how draws are
// scheduled (AVX-512/AVX2 Philox batches and prefetching on the CPU, one thread
// per Philox block or per row on the GPU) and where scratch memory comes from.
// One exception: the CPU picks of cache-resident tables may run eight at a
// time in AVX-512 (pick_block_avx512 in alias_sample.cpp), the same arithmetic
// as alias_pick split into 32-bit products; the golden digests pin both.
#pragma once

#include <cstdint>

#include "cpu/philox.h"

namespace pyneg {

// Redraws of an excluded id before a row finishes from its exact CDF.
constexpr uint32_t kMaxRedraws = 1024;
// Rows whose allowed mass is below total >> kRejectionMassShift (1/16) are
// drawn from their exact CDF: rejection would take > 16 draws per id.
constexpr int kRejectionMassShift = 4;

// High 64 bits of the 128-bit product a * b.
PYNEG_HD uint64_t mulhi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// Branch-free pick from one 64-bit random number: the high half of u * V picks
// the bucket, the next 32 bits of the product are the coin. Entries pack
// (alias << 32) | threshold (see alias_table.h).
PYNEG_HD int64_t alias_pick(const uint64_t* entries, uint64_t n, uint64_t u) {
#if defined(__CUDA_ARCH__)
  const uint64_t bucket = __umul64hi(u, n);
  const uint64_t low = u * n;
#else  // one 64x64 -> 128-bit multiply gives both halves
  const unsigned __int128 prod = static_cast<unsigned __int128>(u) * n;
  const uint64_t bucket = static_cast<uint64_t>(prod >> 64);
  const uint64_t low = static_cast<uint64_t>(prod);
#endif
  const uint32_t coin = static_cast<uint32_t>(low >> 32);
  const uint64_t e = entries[bucket];
  const uint64_t alias = e >> 32;
  // Select with a mask, not `?:`: compilers turn the ternary into a branch,
  // and a coin against a threshold is unpredictable (a mispredict per few draws).
  const uint64_t take_alias = 0 - static_cast<uint64_t>(coin >= static_cast<uint32_t>(e));
  return static_cast<int64_t>(bucket ^ ((bucket ^ alias) & take_alias));
}

// A sorted, deduplicated exclusion list [begin, end) with the running sum of
// its ids' masses (cum[j] = mass of begin[0..j]), as prepare_exclude_lists
// (alias_sample.h) builds it.
struct ExcludedIds {
  const int64_t* begin;
  const int64_t* end;
  const uint64_t* cum;

  PYNEG_HD bool contains(int64_t id) const {
    const int64_t n = end - begin;
    if (n <= 8) {  // short lists (a row's positive): a scan beats bisection
      for (int64_t j = 0; j < n; ++j)
        if (begin[j] == id) return true;
      return false;
    }
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (begin[mid] < id) lo = mid + 1; else hi = mid;
    }
    return lo < n && begin[lo] == id;
  }

  // Mass of the excluded ids <= id.
  PYNEG_HD uint64_t mass_upto(int64_t id) const {
    int64_t lo = 0, hi = end - begin;  // first excluded id > id
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (begin[mid] <= id) lo = mid + 1; else hi = mid;
    }
    return lo == 0 ? 0 : cum[lo - 1];
  }
};

// Exact draw from the allowed ids of a row: the smallest i whose allowed
// cumulative mass exceeds u's share of allowed_mass. The allowed CDF is the
// table's cumulative mass (table_cum, V entries) minus the excluded mass up to
// i, so no per-row array of V entries is built.
PYNEG_HD int64_t allowed_cdf_pick(const uint64_t* table_cum, int64_t v, const ExcludedIds& ex,
                                  uint64_t allowed_mass, uint64_t u) {
  const uint64_t target = mulhi64(u, allowed_mass);  // in [0, allowed_mass)
  int64_t lo = 0, hi = v;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (table_cum[mid] - ex.mass_upto(mid) > target) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// The rare part of draw_excluding: redraws of an excluded id with
// (pos, attempt) randoms, attempts 1..kMaxRedraws, then (probability
// < (15/16)^1024) or for CDF rows the exact CDF. Kept out of line so the hot
// loop of the CPU stays short and keeps many table reads in flight.
template <class CumFn>
PYNEG_HD_COLD int64_t redraw_excluded(const uint64_t* entries, uint64_t v, CumFn&& table_cum,
                                      const ExcludedIds& ex, uint64_t allowed_mass, bool use_cdf,
                                      uint64_t seed, uint64_t pos) {
  if (!use_cdf) {
    for (uint32_t attempt = 1; attempt <= kMaxRedraws; ++attempt) {
      const int64_t id = alias_pick(entries, v, random64(seed, pos, attempt, kTagRedraw));
      if (!ex.contains(id)) return id;
    }
  }
  return allowed_cdf_pick(table_cum(), static_cast<int64_t>(v), ex, allowed_mass,
                          random64(seed, pos, 0u, kTagRedraw));
}

// Plain draw `pos` of a row with exclusion list `ex`, whose random number
// draw_random64(seed, pos) is `first` (the CPU computes those in batches).
// Rows with little allowed mass (use_cdf, see row_uses_cdf) are drawn from
// their exact CDF; otherwise an excluded id is redrawn (redraw_excluded).
// table_cum() returns the table's cumulative masses; it is called only when
// the CDF is used, so the CPU can build them lazily.
template <class CumFn>
PYNEG_HD int64_t draw_excluding(const uint64_t* entries, uint64_t v, CumFn&& table_cum,
                                const ExcludedIds& ex, uint64_t allowed_mass, bool use_cdf,
                                uint64_t seed, uint64_t pos, uint64_t first) {
  if (!use_cdf) {
    const int64_t id = alias_pick(entries, v, first);
    if (!ex.contains(id)) return id;
  }
  return redraw_excluded(entries, v, table_cum, ex, allowed_mass, use_cdf, seed, pos);
}

// Whether a row with this allowed mass is drawn from its exact CDF.
PYNEG_HD bool row_uses_cdf(uint64_t allowed_mass, uint64_t total_mass) {
  return allowed_mass < (total_mass >> kRejectionMassShift);
}

// Open-addressing set of ids >= 0 over caller-owned slots (-1 = empty); the
// capacity is a power of two at least twice the number of ids inserted.
struct IdSetView {
  int64_t* slots;
  uint64_t mask;

  PYNEG_HD uint64_t hash(int64_t id) const {
    return ((static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ull) >> 20) & mask;
  }
  // Inserts id; returns its slot, or -1 when it was already present.
  PYNEG_HD int64_t insert_slot(int64_t id) {
    uint64_t s = hash(id);
    while (slots[s] != -1) {
      if (slots[s] == id) return -1;
      s = (s + 1) & mask;
    }
    slots[s] = id;
    return static_cast<int64_t>(s);
  }
  PYNEG_HD bool insert(int64_t id) { return insert_slot(id) >= 0; }
  PYNEG_HD bool contains(int64_t id) const {
    uint64_t s = hash(id);
    while (slots[s] != -1) {
      if (slots[s] == id) return true;
      s = (s + 1) & mask;
    }
    return false;
  }
};

// Slots an IdSetView needs for `expected` ids: a power of two >= 16 and >= 2x.
PYNEG_HD uint64_t id_set_capacity(uint64_t expected) {
  uint64_t cap = 16;
  while (cap < 2 * expected) cap <<= 1;
  return cap;
}

// Candidate draws a unique row may take before it finishes with the
// exponential race (done on the CPU: it reads every class).
PYNEG_HD uint64_t unique_max_tries(int64_t k) { return 8 * static_cast<uint64_t>(k) + 1024; }

// The rejection phase of a row without replacement: candidates
// t = 0, 1, ... (randoms (base, t) of kTagUnique) are kept when `seen` (which
// already holds the row's excluded ids) did not hold them. Stops at k ids or
// unique_max_tries(k) candidates; returns how many ids it wrote to dst and
// sets *tries to the candidates used.
template <class Set>
PYNEG_HD int64_t unique_row_rejection(const uint64_t* entries, uint64_t v, uint64_t seed,
                                      uint64_t base, int64_t k, Set& seen, int64_t* dst,
                                      uint64_t* tries) {
  const uint64_t max_tries = unique_max_tries(k);
  int64_t got = 0;
  uint64_t t = 0;
  for (; got < k && t < max_tries; ++t) {
    const int64_t id =
        alias_pick(entries, v, random64(seed, base, static_cast<uint32_t>(t), kTagUnique));
    if (seen.insert(id)) dst[got++] = id;
  }
  *tries = t;
  return got;
}

}  // namespace pyneg

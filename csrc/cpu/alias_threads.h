// The work of one CUDA thread of the alias-draw kernels (csrc/cuda/alias.cu),
// as __host__ __device__ functions. The kernels are grid-stride loops around
// these; the CPU runs the same functions serially (emulate_device_sampling in
// alias_sample.h) so the tests check the GPU's scheduling — which thread
// draws which position, row and list — against the CPU kernels bit for bit on
// machines without a GPU. Only the launch itself is left to a GPU to test.
#pragma once

#include <cstdint>

#include "cpu/alias_draw.h"

namespace pyneg {

// Prepared exclusion lists (PreparedExclude of alias_sample.h) as raw arrays,
// on whichever device runs the threads: row r uses list r / rows_per_list.
struct ExcludeArrays {
  const int64_t* offsets;        // num_lists + 1
  const int64_t* ids;            // sorted, deduplicated per list
  const uint64_t* cum;           // running mass of each list's ids
  const uint64_t* allowed_mass;  // num_lists
  int64_t rows_per_list;

  PYNEG_HD ExcludedIds list(int64_t l) const {
    const int64_t b = offsets[l], e = offsets[l + 1];
    return ExcludedIds{ids + b, ids + e, cum + b};
  }
};

// The table's cumulative masses, already at hand (CumFn of draw_excluding).
struct CumulativeMass {
  const uint64_t* p;
  PYNEG_HD const uint64_t* operator()() const { return p; }
};

// Philox blocks covering positions [offset, offset + n): one thread each.
PYNEG_HD uint64_t plain_thread_count(uint64_t offset, uint64_t n) {
  return n == 0 ? 0 : ((offset + n - 1) >> 1) - (offset >> 1) + 1;
}

// Thread i of the plain kernel: Philox block (offset >> 1) + i gives the
// draws of positions 2b and 2b + 1, written where they fall in the output.
PYNEG_HD void plain_thread(uint64_t i, const uint64_t* entries, uint64_t v, uint64_t seed,
                           uint64_t offset, int64_t* out, uint64_t n) {
  const uint64_t b = (offset >> 1) + i;
  const Philox4x32 r = draw_block(seed, b);
  for (unsigned half = 0; half < 2; ++half) {
    const uint64_t pos = 2 * b + half;
    if (pos >= offset && pos - offset < n) out[pos - offset] = alias_pick(entries, v, block_half(r, half));
  }
}

// Thread j of the exclusion kernel: output j = row j / k, position offset + j
// (the CPU's base + column).
PYNEG_HD void excluding_thread(uint64_t j, const uint64_t* entries, uint64_t v,
                               const uint64_t* table_cum, const ExcludeArrays& ex, uint64_t seed,
                               uint64_t offset, int64_t k, int64_t* out) {
  const int64_t row = static_cast<int64_t>(j) / k;
  const int64_t l = row / ex.rows_per_list;
  const uint64_t allowed = ex.allowed_mass[l];
  const uint64_t pos = offset + j;
  out[j] = draw_excluding(entries, v, CumulativeMass{table_cum}, ex.list(l), allowed,
                          row_uses_cdf(allowed, v << 32), seed, pos, draw_random64(seed, pos));
}

// The thread of row `row` in the unique kernel: the row's rejection phase in
// its own hash set (the `capacity` slots at row_slots). tries[row] = the
// candidates used, or -1 when the row needs the exponential race (finished on
// the CPU).
PYNEG_HD void unique_row_thread(int64_t row, const uint64_t* entries, uint64_t v,
                                const ExcludeArrays& ex, uint64_t seed, uint64_t offset, int64_t k,
                                int64_t* row_slots, int64_t capacity, int64_t* tries, int64_t* out) {
  IdSetView seen{row_slots, static_cast<uint64_t>(capacity - 1)};
  for (int64_t s = 0; s < capacity; ++s) seen.slots[s] = -1;
  const ExcludedIds list = ex.list(row / ex.rows_per_list);
  for (const int64_t* p = list.begin; p != list.end; ++p) seen.insert(*p);
  uint64_t t = 0;
  const int64_t got = unique_row_rejection(entries, v, seed, offset + static_cast<uint64_t>(row * k),
                                           k, seen, out + row * k, &t);
  tries[row] = got == k ? static_cast<int64_t>(t) : -1;
}

}  // namespace pyneg

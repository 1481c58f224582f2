#include "cpu/frequency_estimator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include "cpu/hash.h"
#include "cpu/ids.h"
#include "cpu/parallel.h"

namespace pyneg {

namespace {

// Ids hashed (and their cells prefetched) one block ahead of the updates, so
// the cache misses of a DRAM-resident table overlap.
constexpr int kBlock = 16;
// Below this many cell updates a thread costs more than it saves.
constexpr int64_t kParallelUpdates = int64_t{1} << 16;

// Id -> cell of hash function k: the one definition of the hashing.
inline uint64_t bucket_of(int64_t id, uint64_t k, uint64_t nb) {
  return reduce_range(seeded_hash(static_cast<uint64_t>(id), k), nb);
}

void fill_buckets(const int64_t* ids, int m, uint64_t k, uint64_t nb, const double* row,
                  uint64_t* out) {
  for (int j = 0; j < m; ++j) {
    out[j] = bucket_of(ids[j], k, nb);
    __builtin_prefetch(row + 2 * out[j], 1);
  }
}

void update_row(double* row, uint64_t k, uint64_t nb, double alpha, double t, const int64_t* ids,
                int64_t n) {
  const double keep = 1.0 - alpha;
  uint64_t buf[2][kBlock];
  int cur = 0;
  int m = static_cast<int>(std::min<int64_t>(kBlock, n));
  fill_buckets(ids, m, k, nb, row, buf[cur]);
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t next = i + kBlock;
    const int m_next = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kBlock, n - next)));
    if (m_next > 0) fill_buckets(ids + next, m_next, k, nb, row, buf[cur ^ 1]);
    for (int j = 0; j < m; ++j) {
      double* cell = row + 2 * buf[cur][j];
      const double last = cell[0];
      if (last == t) continue;  // already hit this step: count the step once
      // Kept as separate multiply and add (no fused multiply-add on baseline
      // x86-64), so a plain NumPy transcription reproduces it bit for bit.
      cell[1] = last == 0.0 ? t : keep * cell[1] + alpha * (t - last);
      cell[0] = t;
    }
    cur ^= 1;
    m = m_next;
  }
}

[[noreturn]] void throw_bad_cell(int64_t k, int64_t b, double last, double gap, int64_t step) {
  std::ostringstream msg;
  msg.precision(17);
  msg << "cells[" << k << ", " << b << "] holds (last step, gap) = (" << last << ", " << gap
      << "), not an estimator cell after step " << step
      << ": the last step must be a whole number in [0, step] (0: never hit) and the gap "
         "finite and > 0 once the cell was hit";
  throw std::invalid_argument(msg.str());
}

}  // namespace

int64_t frequency_bucket(int64_t id, int64_t k, int64_t num_buckets) {
  return static_cast<int64_t>(bucket_of(id, static_cast<uint64_t>(k), static_cast<uint64_t>(num_buckets)));
}

void check_frequency_table(const FrequencyTable& table, double alpha, int64_t step) {
  if (table.num_hashes <= 0) throw std::invalid_argument("num_hashes must be >= 1");
  if (table.num_buckets <= 0 || table.num_buckets > kMaxFrequencyBuckets) {
    throw std::invalid_argument("num_buckets must be in [1, " +
                                std::to_string(kMaxFrequencyBuckets) + "], got " +
                                std::to_string(table.num_buckets));
  }
  if (!(alpha > 0.0 && alpha <= 1.0)) {
    throw std::invalid_argument("alpha must be in (0, 1], got " + std::to_string(alpha));
  }
  if (step < 0) throw std::invalid_argument("step must be >= 0");
}

void frequency_update(const FrequencyTable& table, double alpha, int64_t step,
                      const int64_t* ids, int64_t n, int num_threads) {
  check_frequency_table(table, alpha, step);
  if (step < 1) throw std::invalid_argument("an update's step must be >= 1");
  check_non_negative_ids(ids, n, "ids");
  const uint64_t nb = static_cast<uint64_t>(table.num_buckets);
  const double t = static_cast<double>(step);
  // Rows are disjoint memory: one thread per row needs no synchronisation and
  // gives the same result as one thread.
  const int threads = n * table.num_hashes >= kParallelUpdates ? num_threads : 1;
  parallel_for(table.num_hashes, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      update_row(table.cells + 2 * table.num_buckets * k, static_cast<uint64_t>(k), nb, alpha, t,
                 ids, n);
    }
  });
}

void frequency_estimate(const FrequencyTable& table, int64_t step, const int64_t* ids,
                        int64_t n, bool log, float* out) {
  check_frequency_table(table, 1.0, step);
  check_non_negative_ids(ids, n, "ids");
  const uint64_t nb = static_cast<uint64_t>(table.num_buckets);
  // A cell never hit reads as a gap of step + 1, more than any recorded gap
  // (B <= A <= step always), so an unseen id gets 1 / (step + 1).
  const double unseen = static_cast<double>(step) + 1.0;
  const double last_max = static_cast<double>(step);
  for (int64_t i = 0; i < n; ++i) {
    double gap = 0.0;
    for (int64_t k = 0; k < table.num_hashes; ++k) {
      const uint64_t b = bucket_of(ids[i], static_cast<uint64_t>(k), nb);
      const double* cell = table.cells + 2 * (table.num_buckets * k + static_cast<int64_t>(b));
      // Each value is loaded once: what is checked is what is used, whoever writes
      // the caller's table meanwhile (the public op reads the caller's memory).
      const double last = cell[0];
      const double cell_gap = cell[1];
      if (!(last >= 0.0 && last <= last_max && last == std::floor(last)) ||
          (last != 0.0 && !(cell_gap > 0.0 && cell_gap <= std::numeric_limits<double>::max()))) {
        throw_bad_cell(k, static_cast<int64_t>(b), last, cell_gap, step);
      }
      gap = std::max(gap, last == 0.0 ? unseen : cell_gap);
    }
    out[i] = static_cast<float>(log ? 0.0 - std::log(gap) : 1.0 / gap);  // 0 - x: +0 for gap 1
  }
}

}  // namespace pyneg

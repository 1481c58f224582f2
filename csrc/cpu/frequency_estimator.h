// Streaming estimate of the probability that an item id appears in a training
// step's batch (Yi et al., RecSys 2019, "sampling-bias-corrected neural
// modeling"), the log q of in-batch and queue negatives.
//
// For each of num_hashes hash functions h_k there is one row of num_buckets
// cells {A, B}: A the last step the cell was hit, B the estimated gap between
// hits. On step t every cell that one of the step's ids hashes to is updated
// once:
//     B <- (1 - alpha) * B + alpha * (t - A);   A <- t
// and the estimate of an id is p = 1 / max_k B[h_k(id)] (the most pessimistic
// row, which limits the damage of collisions).
//
// Conventions (documented in pyneg/memory.py too):
//  * Steps are numbered from 1; A = 0 marks a cell never hit. On its first hit
//    at step t a cell takes B = t, the gap since the start of the stream, as if
//    step 0 had hit it; later hits blend gaps with weight alpha.
//  * A cell is updated at most once per step: a repeated id (or a colliding id)
//    later in the same step finds A == t and leaves it. B then estimates
//    1 / P(some id of the cell is in a step's batch), which for a cell holding
//    one id is exactly that id's inclusion probability 1 - (1 - p)^batch.
//  * An id whose cells were never hit gets p = 1 / (t + 1): the rate it would
//    have if it showed up at the next step (1 before any update).
//
// State layout: num_hashes x num_buckets x {A, B} doubles, row-major, so one
// update touches one 16-byte cell (one cache line). A holds whole step numbers,
// exact in a double up to 2^53 steps.
#pragma once

#include <cstdint>

namespace pyneg {

// Bucket indices are reduced from 64-bit hashes by a 64x64 -> 128-bit multiply;
// 2^31 - 1 keeps them in 32 bits and the NumPy transcription in int64.
constexpr int64_t kMaxFrequencyBuckets = (int64_t{1} << 31) - 1;

struct FrequencyTable {
  double* cells = nullptr;    // num_hashes * num_buckets * 2 doubles
  int64_t num_hashes = 0;
  int64_t num_buckets = 0;
};

// Bucket of `id` under hash function k: floor(seeded_hash(id, k) * num_buckets / 2^64).
int64_t frequency_bucket(int64_t id, int64_t k, int64_t num_buckets);

// Throws std::invalid_argument for a table of bad shape, alpha outside (0, 1]
// or step < 1.
void check_frequency_table(const FrequencyTable& table, double alpha, int64_t step);

// Records step `step`'s ids. Throws std::invalid_argument (before writing
// anything) when an id is negative. Rows run on up to num_threads threads for
// large batches; the result does not depend on the thread count.
void frequency_update(const FrequencyTable& table, double alpha, int64_t step,
                      const int64_t* ids, int64_t n, int num_threads);

// out[i] = estimated probability (or its log when `log`) that ids[i] is in a
// step's batch, after `step` updates. Throws std::invalid_argument for negative
// ids, and for a cell read that no estimator can hold (naming it cells[k, b]): a
// last step that is not a whole number in [0, step], or a hit cell (last step > 0)
// whose gap is not finite and > 0. Only the cells the ids read are checked (a
// whole-table scan would cost O(table) per lookup).
void frequency_estimate(const FrequencyTable& table, int64_t step, const int64_t* ids,
                        int64_t n, bool log, float* out);

}  // namespace pyneg

// Sparse catalogues: a weighted table over n slots whose slot s stands for the
// catalogue id ids[s], with ids strictly increasing in [0, V) and V up to
// kMaxAnalyticClasses (2^50). Only the classes of non-zero weight need a slot,
// so a catalogue of V = 2^40 ids of which n have weight costs the table of n
// classes (8 B each) plus this array (8 B each): 16 B per stored class, 24 B
// once the table's class masses are derived (exclusions, unique rows, log_prob).
//
// Draws pick slots from the alias table (the same kernels and Philox positions
// as a dense table) and map them to ids with gather_sparse_ids (one load per
// draw). Exclusion lists and log_prob hold catalogue ids, which
// lookup_sparse_ids maps to slots by binary search (O(log n) per id); an id
// without a slot has zero weight: never drawn, nothing to exclude.
#pragma once

#include <cstdint>

namespace pyneg {

// Throws std::invalid_argument naming `name` unless 1 <= n and ids[0..n) is
// strictly increasing within [0, v).
void check_sparse_ids(const int64_t* ids, int64_t n, int64_t v, const char* name);

// inout[j] = ids[inout[j]] for j in [0, m). Throws std::invalid_argument when
// a slot is outside [0, n) or a mapped id outside [0, v) (an id array changed
// in place under its readers, e.g. a mapped file written by another tool): a
// draw never returns an id outside [0, v).
void gather_sparse_ids(const int64_t* ids, int64_t n, int64_t v, int64_t* inout, int64_t m,
                       int num_threads);

// slots[j] = s with ids[s] == query[j], or -1 when query[j] has no slot (zero
// weight) or is -1 and allow_padding. Throws std::invalid_argument naming
// `name` for an id outside [0, v) (-1 allowed only with allow_padding). ids
// must be sorted (check_sparse_ids); an unsorted array gives wrong slots but
// never reads outside ids.
void lookup_sparse_ids(const int64_t* ids, int64_t n, int64_t v, const int64_t* query, int64_t m,
                       int64_t* slots, bool allow_padding, const char* name, int num_threads);

// out[j] = log P(one draw == query[j]) for the table whose slot masses are
// `mass` (summing to n * 2^32): log(mass[slot] / (n * 2^32)), -inf for an id
// without a slot. Throws std::invalid_argument naming `name` for an id outside
// [0, v). One pass (lookup, gather, log) over the queries.
void sparse_log_prob(const int64_t* ids, const uint64_t* mass, int64_t n, int64_t v, const int64_t* query,
                     int64_t m, double* out, const char* name, int num_threads);

}  // namespace pyneg

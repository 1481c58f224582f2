// Draws from an AliasTable: with replacement, with per-row exclusion lists, and
// without replacement. Draw `position` of a call with (seed, offset) uses the
// random numbers of absolute position offset + position only, so results are
// identical for any thread count and any split of a request into batches.
#pragma once

#include <cstdint>

#include "cpu/alias_table.h"

namespace pyneg {

// Per-row exclusion lists: row r of the output excludes the ids of list
// r / rows_per_list; each list has `width` entries, -1 marks padding.
struct ExcludeLists {
  const int64_t* ids = nullptr;
  int64_t num_lists = 0;
  int64_t width = 0;
  int64_t rows_per_list = 1;
};

// out[j] for j in [0, n): independent draws from the table.
void alias_sample(const AliasTable& table, uint64_t seed, uint64_t offset, int64_t* out,
                  int64_t n, int num_threads);

// rows x k draws; row r never contains an id of its exclusion list. Excluded
// draws are redrawn, which samples the distribution renormalised over the
// allowed ids. Throws std::invalid_argument when a list leaves no allowed id
// of positive mass or holds an id outside [-1, V).
void alias_sample_excluding(const AliasTable& table, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k,
                            int64_t* out, int num_threads);

// rows x k draws, distinct within each row (successive sampling: each id is
// drawn from the distribution renormalised over the ids not drawn yet nor
// excluded). tries_out[r] (optional) receives the number of candidate draws
// with replacement that row r consumed, the `num_tries` of sampled softmax's
// expected counts. Throws std::invalid_argument when a row asks for more
// distinct ids than it has allowed ids of positive mass.
void alias_sample_unique(const AliasTable& table, uint64_t seed, uint64_t offset,
                         const ExcludeLists& exclude, int64_t rows, int64_t k,
                         int64_t* out, int64_t* tries_out, int num_threads);

}  // namespace pyneg

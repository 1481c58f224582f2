// Accidental hits: the (row, column) pairs where candidate column j's id equals
// one of query row i's positive ids. A softmax loss masks these (the column is
// the row's own positive, not a negative); the memory bank reports them.
//
// A hash table of the candidates (id -> chain of its columns, in column order)
// is built once and probed with every positive id: O(N + B * T + hits) time
// and O(N) memory, where a dense comparison is O(B * N) in both.
#pragma once

#include <cstdint>
#include <vector>

namespace pyneg {

// Appends every hit to rows/cols, ordered by row, then positive (t), then
// column; a pair is listed once per positive of the row that it equals.
// `positives` is (b, t) row-major. Returns false (and leaves rows/cols empty)
// as soon as more than max_pairs hits are found: the caller then masks with a
// dense comparison, which is smaller than such a list. Ids must be >= 0.
bool find_accidental_hits(const int64_t* candidates, int64_t n, const int64_t* positives, int64_t b, int64_t t,
                          int64_t max_pairs, std::vector<int64_t>* rows, std::vector<int64_t>* cols);

}  // namespace pyneg

#include "cpu/hits.h"

#include <stdexcept>

#include "cpu/hash.h"
#include "cpu/ids.h"

namespace pyneg {

namespace {

struct Chain {
  int64_t id;     // -1: free entry (ids are >= 0)
  int64_t first;  // first column holding id
  int64_t last;   // last column holding id (where the next one is linked)
};

}  // namespace

bool find_accidental_hits(const int64_t* candidates, int64_t n, const int64_t* positives, int64_t b, int64_t t,
                          int64_t max_pairs, std::vector<int64_t>* rows, std::vector<int64_t>* cols) {
  if (n < 0 || b < 0 || t < 0) throw std::invalid_argument("find_accidental_hits: negative size");
  check_non_negative_ids(candidates, n, "negative_ids");
  check_non_negative_ids(positives, b * t, "positive_ids");
  rows->clear();
  cols->clear();
  if (n == 0 || b * t == 0) return true;
  // Open addressing with linear probing at load <= 1/2: a probe ends at a free entry.
  uint64_t size = 2;
  while (size < 2 * static_cast<uint64_t>(n)) size <<= 1;
  const uint64_t mask = size - 1;
  std::vector<Chain> table(size, Chain{-1, -1, -1});
  std::vector<int64_t> next(static_cast<size_t>(n), -1);  // next column with the same id
  for (int64_t j = 0; j < n; ++j) {
    const int64_t id = candidates[j];
    uint64_t pos = mix64(static_cast<uint64_t>(id)) & mask;
    while (table[pos].id != -1 && table[pos].id != id) pos = (pos + 1) & mask;
    Chain& c = table[pos];
    if (c.id == -1) {
      c = Chain{id, j, j};
    } else {
      next[static_cast<size_t>(c.last)] = j;
      c.last = j;
    }
  }
  int64_t found = 0;
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t k = 0; k < t; ++k) {
      const int64_t id = positives[i * t + k];
      uint64_t pos = mix64(static_cast<uint64_t>(id)) & mask;
      while (table[pos].id != -1 && table[pos].id != id) pos = (pos + 1) & mask;
      if (table[pos].id == -1) continue;
      for (int64_t j = table[pos].first; j >= 0; j = next[static_cast<size_t>(j)]) {
        if (++found > max_pairs) {
          rows->clear();
          cols->clear();
          return false;
        }
        rows->push_back(i);
        cols->push_back(j);
      }
    }
  }
  return true;
}

}  // namespace pyneg

// Draws from an AliasTable: with replacement, with per-row exclusion lists, and
// without replacement. Draw `position` of a call with (seed, offset) uses the
// random numbers of absolute position offset + position only, so results are
// identical for any thread count and any split of a request into batches.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/alias_draw.h"
#include "cpu/alias_table.h"
#include "cpu/alias_threads.h"

namespace pyneg {

// Per-row exclusion lists: row r of the output excludes the ids of list
// r / rows_per_list; each list has `width` entries, -1 marks padding.
struct ExcludeLists {
  const int64_t* ids = nullptr;
  int64_t num_lists = 0;
  int64_t width = 0;
  int64_t rows_per_list = 1;
};

// The exclusion lists, each sorted and deduplicated (CSR), with the running
// mass of their ids and what remains drawable once they are removed. The CPU
// kernels build it per call; the CUDA path builds it with the same function
// and uploads it.
struct PreparedExclude {
  std::vector<int64_t> offsets;          // num_lists + 1
  std::vector<int64_t> ids;              // list l: ids[offsets[l], offsets[l + 1])
  std::vector<uint64_t> cum;             // running mass of each list's ids
  std::vector<uint64_t> allowed_mass;    // total mass minus the list's mass
  std::vector<int64_t> allowed_positive; // drawable classes not in the list

  ExcludedIds list(int64_t l) const {
    const auto b = static_cast<size_t>(offsets[static_cast<size_t>(l)]);
    const auto e = static_cast<size_t>(offsets[static_cast<size_t>(l) + 1]);
    return ExcludedIds{ids.data() + b, ids.data() + e, cum.data() + b};
  }
  // Ids in the longest list (sizes the per-row hash sets of unique draws).
  int64_t longest() const {
    int64_t n = 0;
    for (size_t l = 0; l + 1 < offsets.size(); ++l) n = std::max(n, offsets[l + 1] - offsets[l]);
    return n;
  }
};

// Validates and prepares exclusion lists. Throws std::invalid_argument for an
// id outside [-1, V), a list that leaves no id of positive mass or, when
// unique_k > 0, fewer than unique_k drawable ids (draws without replacement).
PreparedExclude prepare_exclude_lists(const AliasTableView& table, const ExcludeLists& exclude,
                                      int64_t unique_k = 0);

// The same from the masses of the listed ids alone (id_mass[i] is the mass of
// exclude.ids[i], ignored for padding): the CUDA path gathers them on the
// device instead of reading the whole table on the host.
PreparedExclude prepare_exclude_lists_from_masses(int64_t num_classes, int64_t num_positive,
                                                  const ExcludeLists& exclude,
                                                  const uint64_t* id_mass, int64_t unique_k = 0);

// Running sum of the table's masses (V entries): the exact-CDF fallback of
// heavily excluded rows (see allowed_cdf_pick in alias_draw.h).
std::vector<uint64_t> cumulative_mass(const AliasTableView& table);

// Throws std::invalid_argument: the table has an alias >= V.
[[noreturn]] void throw_bad_alias(uint64_t v);
// Throws (throw_bad_alias) when an id of out[0, n) is >= v: the excluding and
// unique kernels' output is checked with it (a malformed table gives such ids).
void check_drawn_ids(const int64_t* out, int64_t n, int64_t v);

// out[j] for j in [0, n): independent draws from the table.
void alias_sample(const AliasTableView& table, uint64_t seed, uint64_t offset, int64_t* out,
                  int64_t n, int num_threads);

// rows x k draws; row r never contains an id of its exclusion list. Excluded
// draws are redrawn, which samples the distribution renormalised over the
// allowed ids. Throws std::invalid_argument when a list leaves no allowed id
// of positive mass or holds an id outside [-1, V).
void alias_sample_excluding(const AliasTableView& table, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k,
                            int64_t* out, int num_threads);

// rows x k draws, distinct within each row (successive sampling: each id is
// drawn from the distribution renormalised over the ids not drawn yet nor
// excluded). tries_out[r] (optional) receives the number of candidate draws
// with replacement that row r consumed, the `num_tries` of sampled softmax's
// expected counts. Throws std::invalid_argument when a row asks for more
// distinct ids than it has allowed ids of positive mass.
void alias_sample_unique(const AliasTableView& table, uint64_t seed, uint64_t offset,
                         const ExcludeLists& exclude, int64_t rows, int64_t k,
                         int64_t* out, int64_t* tries_out, int num_threads);

// The CUDA kernels' per-thread work (alias_threads.h) run serially on the
// CPU, on the arrays the CUDA path uploads: lets tests check the GPU's
// scheduling against the kernels above without a GPU. mode 0: plain draws
// (out holds rows * k), 1: with exclusions, 2: unique (tries gets what the
// device writes: -1 for rows left to the exponential race, whose ids are
// then incomplete).
void emulate_device_sampling(const AliasTableView& table, int mode, uint64_t seed, uint64_t offset,
                             const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                             int64_t* tries);

}  // namespace pyneg

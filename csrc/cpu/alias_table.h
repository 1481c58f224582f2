// Walker/Vose alias table in 8 bytes per class, with exact integer masses.
//
// ---------------------------------------------------------------- layout
// What a sampler holds (and what a file would map) is ONE array and two
// scalars; nothing else describes the distribution:
//
//   entries       uint64[V] (held as an int64 tensor: the same 64 bits)
//                 entry i = (alias_i << 32) | threshold_i.
//                 A draw picks bucket i and a 32-bit coin from one 64-bit random
//                 number u (i = high 64 bits of u * V, coin = the next 32 bits) and
//                 returns i when coin < threshold_i, else alias_i.
//   num_classes   V = len(entries), 1 <= V <= kMaxClasses (alias is 32-bit).
//   num_positive  classes of positive mass (derivable from entries; kept so a
//                 draw without replacement can refuse k > num_positive in O(1)).
//
// Class masses are implied by the entries: bucket j gives threshold_j to class j
// and 2^32 - threshold_j to alias_j, so
//     m_i = threshold_i + sum_{j : alias_j = i} (2^32 - threshold_j),
// and sum_i m_i = V * 2^32 exactly. Every entry whose alias is < V is a valid
// table (any 32-bit threshold is in range); that is the only invariant a table
// from elsewhere (a file, an operator's caller) must satisfy, and the kernels
// check it on every bucket they read. class_masses() recomputes the masses in
// O(V) when something needs them (exclusion lists, draws without replacement,
// probabilities): the sampler keeps that array only once one of those is used.
//
// ------------------------------------------------------------- precision
// The table is built from the weights w (copied once, then checked) as integer
// masses m_i = round(w_i * V * 2^32 / sum(w)) (the sum compensated, so it is
// exact to a few ulps), the residual given to the largest class. So the
// probability P_i = m_i / (V * 2^32) of drawing class i satisfies
//     |P_i - p_i| <= 2^-33 / V + 2^-50 * p_i   for every class but the largest,
//     |P_i - p_i| <= 2^-32                      for the largest,
// p_i = w_i / sum(w). A class with p_i < 2^-33 / V has m_i = 0: never drawn,
// and its probability reported as 0 (probs, log_prob report P, the table's
// distribution: what logQ corrections need).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/alias_draw.h"  // alias_pick: the draw from a table
#include "cpu/huge_buffer.h"

namespace pyneg {

constexpr uint64_t kBucketMass = uint64_t{1} << 32;
// Alias indices are 32-bit and V * 2^32 (the total mass) must fit in 63 bits,
// since masses cross to Python as int64 tensors.
constexpr int64_t kMaxClasses = (int64_t{1} << 31) - 1;

// What the samplers read: a table's arrays, wherever they live (an AliasTable's
// buffer, or tensors a caller holds). The kernels take this view, so they are
// pure functions of the arrays. `mass` (class_masses of the entries) is needed
// only by exclusion lists and draws without replacement.
struct AliasTableView {
  const uint64_t* entries = nullptr;  // (alias << 32) | threshold, one per bucket
  const uint64_t* mass = nullptr;     // class masses (derived, optional), sum V * 2^32
  int64_t n = 0;                      // V, the number of classes (and buckets)
  int64_t num_positive = 0;           // classes with mass > 0 (drawable)

  int64_t size() const { return n; }
  uint64_t total_mass() const { return static_cast<uint64_t>(n) * kBucketMass; }
};

struct AliasTable {
  HugeBuffer<uint64_t> entries;   // (alias << 32) | threshold, one per bucket
  int64_t num_positive = 0;       // classes with mass > 0 (drawable)

  int64_t size() const { return static_cast<int64_t>(entries.size()); }
  uint64_t total_mass() const { return static_cast<uint64_t>(size()) * kBucketMass; }
  AliasTableView view() const { return AliasTableView{entries.data(), nullptr, size(), num_positive}; }
  operator AliasTableView() const { return view(); }  // NOLINT: a table is its view
};

// Builds the table from raw weights: reads `weights` exactly once (copying them
// into the table's own buffer), then checks and converts the copy in place, so a
// concurrent writer of the caller's memory cannot make the checked values differ
// from the used ones. Peak memory: the table (8 B/class) plus a 4 B/class work
// list. Throws std::invalid_argument, naming `name`, for NaN, infinite or
// negative weights, an all-zero vector, n == 0 or n > kMaxClasses.
AliasTable build_alias_table(const double* weights, int64_t n, const char* name, int num_threads = 1);

// The two halves of build_alias_table, for callers that must copy under a lock
// (the bindings copy while holding the GIL, then build without it):
// copy_weights copies n doubles into dst (their bits), and
// build_alias_table_in_place checks and turns such a copy into the table.
void copy_weights(const double* weights, int64_t n, uint64_t* dst, int num_threads = 1);
AliasTable build_alias_table_in_place(HugeBuffer<uint64_t> words, const char* name, int num_threads = 1);
// Throws std::invalid_argument naming `name` unless 1 <= n <= kMaxClasses.
void check_table_size(int64_t n, const char* name);

// m[i] = the mass of class i implied by entries (see the layout above). Throws
// std::invalid_argument when an alias is >= n (not a table). Returns the
// number of classes of positive mass.
int64_t class_masses(const uint64_t* entries, int64_t n, uint64_t* m);

// Throws std::invalid_argument naming `name` unless every alias is < n.
void check_alias_entries(const uint64_t* entries, int64_t n, const char* name);

}  // namespace pyneg

// Negatives for link prediction and knowledge-graph embeddings (pyneg.graph).
//
// A set of known (a, b, c) keys (for a graph: (relation, source, destination))
// is stored as groups: the sorted, deduplicated c values of every (a, b) pair,
// found through an open-addressing hash of the full (a, b) pair (no packed key,
// so any int64 ids >= 0 work). Memory is O(E); a membership query is one hash
// probe plus a binary search in the group.
//
// Every draw is a pure function of (seed, offset + row, draw index) through
// Philox4x32-10 (philox.h), so results never depend on the thread count, and a
// batch split with matching offsets gives the same rows.
//
// Uniform draws over the allowed set of a row (the universe minus the row's
// forbidden ids) never reject: the r-th allowed id is found by a binary search
// over the sorted forbidden positions, so every row terminates in O(k log m)
// and is exactly uniform over what is allowed. Weighted draws use an alias
// table with rejection and fall back to the row's exact CDF when the allowed
// mass is small; distinct weighted draws (successive sampling) also reject
// ids already drawn, and fall back to a Fenwick tree of the row's remaining
// masses once the mass left is small. Infeasible requests are refused before anything is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/alias_table.h"
#include "cpu/huge_buffer.h"

namespace pyneg {

// Tags of the graph layer's Philox streams (fourth counter word); disjoint
// from the tags in philox.h (which stay below 2^16).
constexpr uint32_t kTagGraphSide = 0x47520000u;      // side coin of draw j: (row, j)
constexpr uint32_t kTagGraphUniform = 0x47520100u;   // + side: uniform draw j (or try j when unique)
constexpr uint32_t kTagGraphShuffle = 0x47520200u;   // + side: partial Fisher-Yates step j
constexpr uint32_t kTagGraphWeighted = 0x47530000u;  // + attempt (< 2^12) * 4 + side: weighted draw j
constexpr uint32_t kTagGraphCdf = 0x47540000u;       // + side: weighted draw j from the exact CDF
constexpr uint32_t kTagGraphGlobal = 0x47550000u;    // global pairs: (position, 2 * try + half)

class PairGroups {
 public:
  struct Group {
    int64_t a, b, begin, len;
  };
  // Graphs (every a == 0, b below a few times the key count) also get a dense
  // directory: span[b] = where b's values are, one cache line per lookup.
  struct Span {
    int64_t begin, len;
  };

  // Builds the groups of n keys. Throws std::invalid_argument for a negative id.
  PairGroups(const int64_t* a, const int64_t* b, const int64_t* c, int64_t n, int num_threads);
  PairGroups() = default;
  PairGroups(const PairGroups&) = delete;
  PairGroups& operator=(const PairGroups&) = delete;
  PairGroups(PairGroups&&) = default;
  PairGroups& operator=(PairGroups&&) = default;

  // A non-owning view over an index's arrays (groups as (a, b, begin, len)
  // rows, values, hash slots; see the bindings' `arrays`), e.g. tensors handed
  // to an operator; they must outlive the view. O(1): only the sizes are
  // checked (the slot count a power of two), since every lookup bounds its
  // reads (find), so arrays that are not an index's give wrong answers but no
  // read out of bounds. Views have no dense directory. Throws
  // std::invalid_argument naming `name`.
  static PairGroups view(const Group* groups, int64_t num_groups, const int64_t* values, int64_t num_values,
                         const int64_t* slots, int64_t num_slots, const char* name);

  // The sorted c values of (a, b), or nullptr (and *len = 0) when none.
  const int64_t* find(int64_t a, int64_t b, int64_t* len) const;
  bool contains(int64_t a, int64_t b, int64_t c) const;

  int64_t num_keys() const { return nv_; }
  int64_t num_groups() const { return ng_; }
  const Group* groups() const { return g_; }
  const int64_t* values() const { return v_; }
  const int64_t* slots() const { return s_; }
  int64_t num_slots() const { return ns_; }
  size_t memory_bytes() const;

  const Span* dense() const { return nd_ == 0 ? nullptr : d_; }
  int64_t dense_size() const { return nd_; }
  // Graphs with a dense directory also get a one-hash bit filter of their
  // (b, c) pairs, about 13 bits a key: a pair whose bit is clear is not a
  // key, found with one cache miss instead of two (most random pairs of a
  // sparse graph). Null when none.
  const uint64_t* filter() const { return filter_.size() == 0 ? nullptr : filter_.data(); }
  uint64_t filter_mask() const { return filter_mask_; }
  static uint64_t filter_bit(int64_t b, int64_t c) {
    return (static_cast<uint64_t>(b) * 0x9E3779B97F4A7C15ULL) ^ (static_cast<uint64_t>(c) * 0xC2B2AE3D27D4EB4FULL);
  }

 private:
  void point_at_owned();

  HugeBuffer<Span> dense_;   // read at random: huge pages when large
  HugeBuffer<uint64_t> filter_;  // bit filter (graphs with a dense directory)
  uint64_t filter_mask_ = 0;     // bit index mask
  HugeBuffer<int64_t> vals_;  // the values, moved out of values_ after the build
  std::vector<Group> groups_;
  std::vector<int64_t> values_;  // group g's values: [begin, begin + len), sorted, unique
  std::vector<int64_t> slots_;   // hash slots: group index or -1
  uint64_t mask_ = 0;
  // What lookups read: the owned buffers above, or a view's arrays.
  const Group* g_ = nullptr;
  int64_t ng_ = 0;
  const int64_t* v_ = nullptr;
  int64_t nv_ = 0;
  const int64_t* s_ = nullptr;
  int64_t ns_ = 0;
  const Span* d_ = nullptr;
  int64_t nd_ = 0;
};

// out[i] = index contains (a[i], b[i], c[i]).
void pair_groups_contains(const PairGroups& index, const int64_t* a, const int64_t* b, const int64_t* c,
                          int64_t n, uint8_t* out, int num_threads);

// Weighted node draws: the core alias table (alias_table.h: 8 bytes per node,
// probabilities P_i = m_i / (V 2^32) from integer masses m_i) and its masses,
// so a row's allowed mass, its CDF and log q are exact.
struct GraphAlias {
  AliasTable table;
  std::vector<uint64_t> mass;  // class_masses of the table, sum V * 2^32
  int64_t num_positive = 0;
  int64_t size() const { return table.size(); }
};
// Throws std::invalid_argument (naming `name`) for NaN, inf, negative or all-zero weights.
GraphAlias build_graph_alias(const double* weights, int64_t n, const char* name);

// One side (what is replaced) of a corruption: 0 head, 1 relation, 2 tail.
struct CorruptSide {
  const PairGroups* index = nullptr;  // known values for the row's other two fields; null: none
  int64_t universe = 0;               // ids are [0, universe) unless typed
  const int64_t* typed_offsets = nullptr;  // pseudo-typed: candidates of relation r are
  const int64_t* typed_ids = nullptr;      // typed_ids[typed_offsets[r] .. typed_offsets[r + 1]), sorted
  int64_t num_typed_relations = 0;
  const GraphAlias* weights = nullptr;  // weighted draws (untyped only); null: uniform
};

struct CorruptRequest {
  const int64_t* rows = nullptr;       // (B, 3) [head, relation, tail]
  int64_t num_rows = 0;
  const double* side_probs = nullptr;  // (B, 3) probability of replacing head, relation, tail
  int64_t k = 0;
  bool unique = false;                 // within one row and side, ids are distinct
  bool exclude_self_loops = false;     // a new head != tail and a new tail != head
  CorruptSide side[3];
  uint64_t seed = 0, offset = 0;
};

// Fills ids (B, k) with the replacing ids, sides (B, k) with the side (0, 1, 2)
// and log_q (B, k) with the log probability of that negative in one draw:
// log P(side) + log q_side(id), q_side being the draw distribution
// renormalised over the row's allowed ids of that side. The row's own id and
// the known values of that side (index) are never drawn. Throws
// std::invalid_argument before writing anything when a row's request cannot
// be met (a side with positive probability and too few allowed ids; with
// weights, too few allowed ids of positive mass). Weighted and unique: draw
// j of a row's side follows the masses renormalised over the allowed ids not
// drawn yet (successive sampling); log_q is still the one-draw probability
// under the renormalised allowed masses.
void corrupt_rows(const CorruptRequest& req, int64_t* ids, int8_t* sides, double* log_q, int num_threads);

// Global negatives: k pairs (u, v), u in [0, num_src), v in [0, num_dst),
// uniform over the pairs not in index (keys (0, u) -> v) and, with
// exclude_self_loops, u != v; upper: unordered pairs, u < v (a square graph
// whose index holds both directions). num_known: the index's pairs inside the
// sampled space (all keys; with upper, those with u < v). unique: distinct
// pairs, in the order of the positions that drew them. Returns the log of one
// draw's probability (-log of the number of allowed pairs). Throws
// std::invalid_argument up front when fewer pairs are allowed than needed.
double global_negatives(const PairGroups& index, int64_t num_src, int64_t num_dst, int64_t num_known, int64_t k,
                        bool unique, bool exclude_self_loops, bool upper, uint64_t seed, uint64_t offset,
                        int64_t* src, int64_t* dst, int num_threads);

// Filtered ranks of row i's true id truth[i] among the n scores of row i:
// filtered[i] lists (sorted, unique) ids that are known true and are left
// out (the true id itself is never left out). Writes the optimistic (1 + #
// greater) and pessimistic (1 + # greater + # equal others) ranks; the
// realistic rank is their mean. Throws std::invalid_argument for NaN scores.
template <class T>
void filtered_ranks(const T* scores, int64_t b, int64_t n, const int64_t* truth, const PairGroups* index,
                    const int64_t* key_a, const int64_t* key_b, int64_t* optimistic, int64_t* pessimistic,
                    int num_threads);

}  // namespace pyneg

// Walker/Vose alias table with exact integer masses.
//
// Each class i owns an integer mass m_i = round(p_i * V * 2^32), adjusted so that
// sum(m) == V * 2^32 exactly. Vose's pairing then runs on integers, so no
// bucket is left over by rounding and a zero-weight class can never be drawn.
// The probability of drawing i differs from the normalised weight p_i by at most
// 2^-32 (in practice about 2^-33 / V); see DESIGN.md.
//
// An entry packs threshold (low 32 bits) and alias (high 32 bits) into one
// 8-byte word, so a draw reads one cache line: bucket i is kept when the coin is
// below its threshold, else its alias is returned. Full buckets alias themselves.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/alias_draw.h"  // alias_pick: the draw from a table
#include "cpu/huge_buffer.h"

namespace pyneg {

constexpr uint64_t kBucketMass = uint64_t{1} << 32;
// Alias indices are 32-bit and V * 2^32 must fit in 63 bits.
constexpr int64_t kMaxClasses = (int64_t{1} << 31) - 1;

// What the samplers read: a table's arrays, wherever they live (an AliasTable's
// buffers, or tensors a caller holds). The kernels take this view, so they are
// pure functions of the arrays.
struct AliasTableView {
  const uint64_t* entries = nullptr;  // (alias << 32) | threshold, one per bucket
  const uint64_t* mass = nullptr;     // integer mass of every class, sums to V * 2^32
  int64_t n = 0;                      // V, the number of classes (and buckets)
  int64_t num_positive = 0;           // classes with mass > 0 (drawable)

  int64_t size() const { return n; }
  uint64_t total_mass() const { return static_cast<uint64_t>(n) * kBucketMass; }
};

struct AliasTable {
  HugeBuffer<uint64_t> entries;   // (alias << 32) | threshold, one per bucket
  HugeBuffer<uint64_t> mass;      // integer mass of every class, sums to V * 2^32
  int64_t num_positive = 0;       // classes with mass > 0 (drawable)

  int64_t size() const { return static_cast<int64_t>(entries.size()); }
  uint64_t total_mass() const { return static_cast<uint64_t>(size()) * kBucketMass; }
  AliasTableView view() const { return AliasTableView{entries.data(), mass.data(), size(), num_positive}; }
  operator AliasTableView() const { return view(); }  // NOLINT: a table is its view
};

// probs_out[i] = weights[i] / sum(weights). Throws std::invalid_argument,
// naming `name`, for NaN, infinite or negative weights, an all-zero vector,
// n == 0 or n > kMaxClasses. The sum is taken over weights / max(weights), so
// huge finite weights cannot overflow it.
void normalize_weights(const double* weights, int64_t n, const char* name, double* probs_out);

// Builds the table from normalised probabilities (as normalize_weights gives):
// the table is a pure function of probs, so a sampler rebuilt from its saved
// probs draws exactly the same samples. Throws std::invalid_argument, naming
// `name`, for invalid probs or a sum further than 1e-6 from 1.
AliasTable build_alias_table(const double* probs, int64_t n, const char* name);

}  // namespace pyneg

// Huffman tree over V classes for hierarchical softmax.
//
// Built in O(V log V) for the sort plus O(V) for the merge: classes sorted by
// count feed one queue, merged inner nodes (whose weights come out in
// non-decreasing order) feed a second, and each step merges the two smallest
// fronts (word2vec's CreateBinaryTree). Ties go to the leaf queue and, within
// it, to the smaller class id, so the tree is a pure function of the counts;
// preferring leaves on ties also gives the code of least depth variance among
// the optimal ones.
//
// Flat layout (shared with the CUDA kernels, do not change):
//   offsets  int64 (V + 1): class c's path is positions offsets[c] .. offsets[c+1]-1,
//            root first;
//   nodes    int32: inner-node index in [0, V - 2], i.e. a row of the (V - 1, dim)
//            weight; the root is inner node 0 and every parent has a smaller
//            index than its children, so ascending order is top-down;
//   codes    uint8 in {0, 1}: the branch taken at that node. With sign
//            s = 1 - 2 * code,  log P(c | v) = sum_j log sigmoid(s_j * (u_{n_j} . v + b_{n_j})).
// The first of the two nodes merged at a step (the lighter one) is the code-0
// child.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/huge_buffer.h"

namespace pyneg {

// Inner-node indices are int32, so V - 1 must fit in 31 bits.
constexpr int64_t kMaxHuffmanClasses = (int64_t{1} << 31) - 1;

// Arrays are HugeBuffers: the paths of a large vocabulary take hundreds of MB,
// which huge pages fill with far fewer page faults (and nothing is zeroed twice).
struct HuffmanTree {
  int64_t num_classes = 0;
  int64_t max_depth = 0;
  HugeBuffer<int64_t> offsets;   // (V + 1)
  HugeBuffer<int32_t> nodes;     // (offsets[V],)
  HugeBuffer<uint8_t> codes;     // (offsets[V],)
  HugeBuffer<int64_t> depths;    // (V,) path length of every class
  // children[2 n + b]: the child of inner node n on branch b. A value >= 0 is
  // an inner node; a value < 0 is the leaf of class ~value (= -value - 1).
  HugeBuffer<int32_t> children;  // (2 (V - 1),)

  int64_t num_inner() const { return num_classes > 0 ? num_classes - 1 : 0; }
  int64_t total_path_length() const { return offsets[static_cast<size_t>(num_classes)]; }
};

// Builds the tree from per-class counts (any non-negative finite numbers; zeros
// allowed, also all of them). Throws std::invalid_argument, naming `name`, for
// NaN, infinite or negative counts, n == 0 or n > kMaxHuffmanClasses. V = 1
// gives a single leaf with an empty path (log P = 0); V = 2 one inner node.
HuffmanTree build_huffman_tree(const double* counts, int64_t n, const char* name);

// Flat path arrays in the layout above held by someone else (a tensor a caller
// passed to a pyneg operator): nothing about them is trusted.
struct HuffmanPathsView {
  int64_t num_classes = 0;          // V: entries of offsets minus one
  const int64_t* offsets = nullptr;  // (V + 1)
  const int32_t* nodes = nullptr;    // (num_steps)
  const uint8_t* codes = nullptr;    // (num_steps)
  int64_t num_steps = 0;
};

// The paths of one batch, copied out of a view and checked after copying, so
// kernels that read only these copies stay in bounds whatever anyone writes
// into the view's arrays meanwhile. Example b's path is positions
// row_offsets[b] .. row_offsets[b + 1] - 1 of nodes and codes.
struct BatchPaths {
  std::vector<int64_t> row_offsets;  // (batch + 1)
  std::vector<int32_t> nodes;        // every node in [0, num_inner)
  std::vector<uint8_t> codes;
};

// Copies the paths of target[0 .. batch) (targets the caller already owns) out
// of `paths`. Throws std::invalid_argument for a target outside [0, V)
// (naming `name`), and for a path that leaves
// the arrays, is longer than max_len, holds a node outside [0, num_inner) or a
// code other than 0 or 1.
void gather_batch_paths(const HuffmanPathsView& paths, const int64_t* target, int64_t batch,
                        int64_t num_inner, int64_t max_len, const char* name, BatchPaths* out);

// Checks a copy of a tree's children array (2 (V - 1) entries, layout of
// HuffmanTree::children): every entry an inner node in [0, V - 1) or the leaf of
// a class in [0, V). Throws std::invalid_argument naming `name` otherwise.
void check_children(const int32_t* children, int64_t num_classes, const char* name);

}  // namespace pyneg

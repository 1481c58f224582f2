#include "cpu/huffman.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pyneg {

namespace {

// Order-preserving integer key of a non-negative double: for x, y >= 0,
// x < y exactly when bits(x) < bits(y). -0.0 is mapped to +0.0 first.
inline uint64_t count_key(double x) {
  if (x == 0.0) x = 0.0;
  uint64_t k;
  std::memcpy(&k, &x, sizeof k);
  return k;
}

// Class ids sorted by ascending count, ties by ascending id: an LSD radix sort
// on the 64-bit keys (stable, so equal keys keep id order). Passes whose digit
// is the same for every key (the sign and most exponent bits of typical
// counts) are skipped.
HugeBuffer<int32_t> sorted_ids(const double* counts, int64_t n) {
  constexpr int kBits = 11;
  constexpr uint64_t kMask = (uint64_t{1} << kBits) - 1;
  HugeBuffer<uint64_t> keys(static_cast<size_t>(n)), keys2(static_cast<size_t>(n));
  HugeBuffer<int32_t> ids(static_cast<size_t>(n)), ids2(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    keys[i] = count_key(counts[i]);
    ids[i] = static_cast<int32_t>(i);
  }
  std::vector<int64_t> hist(kMask + 1);
  for (int shift = 0; shift < 64; shift += kBits) {
    std::fill(hist.begin(), hist.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++hist[(keys[i] >> shift) & kMask];
    if (hist[(keys[0] >> shift) & kMask] == n) continue;  // one digit value: nothing moves
    int64_t sum = 0;
    for (auto& h : hist) {
      const int64_t c = h;
      h = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t dst = hist[(keys[i] >> shift) & kMask]++;
      keys2[dst] = keys[i];
      ids2[dst] = ids[i];
    }
    std::swap(keys, keys2);
    std::swap(ids, ids2);
  }
  return ids;
}

void check_counts(const double* counts, int64_t n, const char* name, double& max_count) {
  if (n <= 0) throw std::invalid_argument(std::string(name) + " must not be empty");
  if (n > kMaxHuffmanClasses) {
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(n) +
                                " classes, more than the " + std::to_string(kMaxHuffmanClasses) +
                                " a Huffman tree supports");
  }
  max_count = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double c = counts[i];
    if (!std::isfinite(c)) {
      throw std::invalid_argument(std::string(name) + " must be finite, got " + std::to_string(c) +
                                  " at index " + std::to_string(i));
    }
    if (c < 0) {
      throw std::invalid_argument(std::string(name) + " must be non-negative, got " +
                                  std::to_string(c) + " at index " + std::to_string(i));
    }
    max_count = std::max(max_count, c);
  }
}

}  // namespace

HuffmanTree build_huffman_tree(const double* counts, int64_t n, const char* name) {
  double max_count = 0.0;
  check_counts(counts, n, name, max_count);

  HuffmanTree t;
  t.num_classes = n;
  const int64_t inner = n - 1;
  const HugeBuffer<int32_t> order = sorted_ids(counts, n);

  // Merged weights could overflow to inf for counts near DBL_MAX; scaling by a
  // power of two is exact (short of underflow) and keeps the optimal tree.
  double scale = 1.0;
  if (max_count > 0 && max_count * static_cast<double>(n) > 1e300) {
    scale = std::ldexp(1.0, -std::ilogb(max_count));
  }

  // The merge. Nodes are numbered 0 .. n-1 for leaves in sorted order and
  // n + k for the k-th merge; merge k takes the lighter front first (branch 0).
  HugeBuffer<int64_t> kids(static_cast<size_t>(2 * inner));
  HugeBuffer<double> merged(static_cast<size_t>(inner));
  int64_t leaf = 0, next_inner = 0;
  auto weight_of_leaf = [&](int64_t i) { return counts[order[i]] * scale; };
  auto pop = [&](int64_t k) -> int64_t {  // the lighter front; ties to the leaf queue
    if (leaf < n && (next_inner >= k || weight_of_leaf(leaf) <= merged[next_inner])) return leaf++;
    return n + next_inner++;
  };
  auto weight = [&](int64_t node) { return node < n ? weight_of_leaf(node) : merged[node - n]; };
  for (int64_t k = 0; k < inner; ++k) {
    const int64_t a = pop(k);
    const int64_t b = pop(k);
    merged[k] = weight(a) + weight(b);
    kids[2 * k] = a;
    kids[2 * k + 1] = b;
  }

  // Public numbering: merge k is inner node inner - 1 - k, so the root (the
  // last merge) is 0 and parents precede their children.
  t.children = HugeBuffer<int32_t>(static_cast<size_t>(2 * inner));
  for (int64_t k = 0; k < inner; ++k) {
    const int64_t id = inner - 1 - k;
    for (int b = 0; b < 2; ++b) {
      const int64_t node = kids[2 * k + b];
      t.children[2 * id + b] = node < n ? ~order[node] : static_cast<int32_t>(inner - 1 - (node - n));
    }
  }

  // Depths top-down (ascending inner index), then path offsets.
  t.depths = HugeBuffer<int64_t>(static_cast<size_t>(n));
  if (inner == 0) t.depths[0] = 0;
  HugeBuffer<int64_t> inner_depth(static_cast<size_t>(inner));
  if (inner > 0) inner_depth[0] = 0;
  for (int64_t id = 0; id < inner; ++id) {
    for (int b = 0; b < 2; ++b) {
      const int32_t ch = t.children[2 * id + b];
      if (ch >= 0) {
        inner_depth[ch] = inner_depth[id] + 1;
      } else {
        t.depths[~ch] = inner_depth[id] + 1;
      }
    }
  }
  t.offsets = HugeBuffer<int64_t>(static_cast<size_t>(n + 1));
  t.offsets[0] = 0;
  for (int64_t c = 0; c < n; ++c) {
    t.offsets[c + 1] = t.offsets[c] + t.depths[c];
    t.max_depth = std::max(t.max_depth, t.depths[c]);
  }
  const int64_t total = t.offsets[n];
  t.nodes = HugeBuffer<int32_t>(static_cast<size_t>(total));
  t.codes = HugeBuffer<uint8_t>(static_cast<size_t>(total));

  // Paths by a depth-first walk that keeps the current root-to-node prefix in
  // a small buffer and copies it out at each leaf: sequential reads instead of
  // a dependent parent-pointer chase per path step.
  std::vector<int32_t> prefix_nodes(static_cast<size_t>(t.max_depth) + 1);
  std::vector<uint8_t> prefix_codes(static_cast<size_t>(t.max_depth) + 1);
  struct Entry {
    int32_t node;
    int32_t depth;
    uint8_t code;  // branch taken from the parent
  };
  std::vector<Entry> stack;
  if (inner > 0) stack.push_back({0, 0, 0});
  while (!stack.empty()) {
    const Entry e = stack.back();
    stack.pop_back();
    if (e.depth > 0) prefix_codes[e.depth - 1] = e.code;
    prefix_nodes[e.depth] = e.node;
    for (int b = 1; b >= 0; --b) {
      const int32_t ch = t.children[2 * static_cast<int64_t>(e.node) + b];
      if (ch >= 0) {
        stack.push_back({ch, e.depth + 1, static_cast<uint8_t>(b)});
      } else {
        prefix_codes[e.depth] = static_cast<uint8_t>(b);
        const int64_t at = t.offsets[~ch];
        std::memcpy(&t.nodes[at], prefix_nodes.data(), sizeof(int32_t) * (e.depth + 1));
        std::memcpy(&t.codes[at], prefix_codes.data(), e.depth + 1);
      }
    }
  }
  return t;
}

void gather_batch_paths(const HuffmanPathsView& paths, const int64_t* target, int64_t batch,
                        int64_t num_inner, int64_t max_len, const char* name, BatchPaths* out) {
  const int64_t v = paths.num_classes;
  out->row_offsets.assign(static_cast<size_t>(batch) + 1, 0);
  // Each class's bounds are read once: later writes to offsets cannot change what is copied.
  std::vector<int64_t> first(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t c = target[b];
    if (c < 0 || c >= v) {
      throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(c) +
                                  " outside [0, " + std::to_string(v) + ")");
    }
    const int64_t lo = paths.offsets[c], hi = paths.offsets[c + 1];
    if (lo < 0 || hi < lo || hi > paths.num_steps || hi - lo > max_len) {
      throw std::invalid_argument("path_offsets give class " + std::to_string(c) + " the path [" +
                                  std::to_string(lo) + ", " + std::to_string(hi) +
                                  "), not within the " + std::to_string(paths.num_steps) +
                                  " path steps or longer than max_depth " + std::to_string(max_len));
    }
    first[static_cast<size_t>(b)] = lo;
    out->row_offsets[static_cast<size_t>(b) + 1] = out->row_offsets[static_cast<size_t>(b)] + (hi - lo);
  }
  const int64_t steps = out->row_offsets[static_cast<size_t>(batch)];
  out->nodes.resize(static_cast<size_t>(steps));
  out->codes.resize(static_cast<size_t>(steps));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t at = out->row_offsets[static_cast<size_t>(b)];
    const int64_t len = out->row_offsets[static_cast<size_t>(b) + 1] - at;
    const int64_t lo = first[static_cast<size_t>(b)];
    if (len == 0) continue;  // empty paths (V = 1): the arrays may be null, and memcpy(null, ..., 0) is UB
    std::memcpy(out->nodes.data() + at, paths.nodes + lo, sizeof(int32_t) * static_cast<size_t>(len));
    std::memcpy(out->codes.data() + at, paths.codes + lo, static_cast<size_t>(len));
  }
  for (int64_t p = 0; p < steps; ++p) {  // checked after copying
    const int32_t n = out->nodes[static_cast<size_t>(p)];
    if (n < 0 || n >= num_inner) {
      throw std::invalid_argument("path_nodes holds node " + std::to_string(n) + " outside [0, " +
                                  std::to_string(num_inner) + ")");
    }
    const uint8_t bit = out->codes[static_cast<size_t>(p)];
    if (bit > 1) {  // a code is a branch: 0 or 1 (the kernels and the reference read nothing else alike)
      throw std::invalid_argument("path_codes holds " + std::to_string(bit) + ", not a code bit (0 or 1)");
    }
  }
}

void check_children(const int32_t* children, int64_t num_classes, const char* name) {
  const int64_t inner = num_classes > 0 ? num_classes - 1 : 0;
  for (int64_t i = 0; i < 2 * inner; ++i) {
    const int32_t ch = children[i];
    if (ch >= 0 ? ch >= inner : static_cast<int64_t>(~ch) >= num_classes) {
      throw std::invalid_argument(std::string(name) + " holds " + std::to_string(ch) +
                                  ", neither an inner node in [0, " + std::to_string(inner) +
                                  ") nor the leaf of a class in [0, " + std::to_string(num_classes) + ")");
    }
  }
}

}  // namespace pyneg

#include "cpu/skipgram.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "cpu/hsoftmax.h"
#include "cpu/parallel.h"
#include "cpu/philox.h"

namespace pyneg {

namespace {

// ------------------------------------------------------------------ vectors
// Eight partial sums in a fixed order: vectorisable without -ffast-math and
// the same bits on every run and thread count.
template <class T>
inline T dot(const T* a, const T* b, int64_t d) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += alpha * x[i];
}

// sigmoid(s) and, when wanted, -log sigmoid(s) and -log sigmoid(-s), from one exp.
template <class T>
struct Sigmoid {
  T sig, e;
  explicit Sigmoid(T s) : e(std::exp(-std::abs(s))) { sig = s >= 0 ? T(1) / (T(1) + e) : e / (T(1) + e); }
  T nll(T s, bool positive) const {  // -log sigmoid(+-s), stable for any s
    const T x = positive ? s : -s;
    return std::log1p(e) - std::min(x, T(0));
  }
};

// Work below this many multiply-adds stays on the calling thread: a thread
// start costs about as much.
constexpr int64_t kMinWorkPerThread = 1 << 16;

int threads_for(int64_t work, int num_threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, work / kMinWorkPerThread)));
}

// ------------------------------------------------------------ row grouping
// Occurrences of ids grouped by id: rows ascending, occurrences of one row in
// their original order (a stable LSD radix sort on 11-bit digits), so a row's
// sum has one fixed order.
struct RowGroups {
  std::vector<int64_t> rows;   // distinct ids, ascending
  std::vector<int64_t> start;  // (rows.size() + 1) into order
  std::vector<int32_t> order;  // occurrence indices, grouped by id

  void build(const int64_t* ids, int64_t n, int64_t num_rows) {
    constexpr int kBits = 11;
    constexpr uint32_t kBuckets = 1u << kBits;
    keys_.resize(static_cast<size_t>(n));
    keys2_.resize(static_cast<size_t>(n));
    order.resize(static_cast<size_t>(n));
    tmp_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      keys_[i] = static_cast<uint32_t>(ids[i]);
      order[i] = static_cast<int32_t>(i);
    }
    int bits = 1;
    while (bits < 32 && (uint64_t{1} << bits) < static_cast<uint64_t>(std::max<int64_t>(num_rows, 2))) ++bits;
    std::vector<int64_t> count(kBuckets + 1);
    for (int shift = 0; shift < bits; shift += kBits) {
      std::fill(count.begin(), count.end(), 0);
      for (int64_t i = 0; i < n; ++i) ++count[((keys_[i] >> shift) & (kBuckets - 1)) + 1];
      for (uint32_t b = 0; b < kBuckets; ++b) count[b + 1] += count[b];
      for (int64_t i = 0; i < n; ++i) {
        const int64_t slot = count[(keys_[i] >> shift) & (kBuckets - 1)]++;
        keys2_[slot] = keys_[i];
        tmp_[slot] = order[i];
      }
      keys_.swap(keys2_);
      order.swap(tmp_);
    }
    rows.clear();
    start.clear();
    for (int64_t i = 0; i < n; ++i) {
      if (i == 0 || keys_[i] != keys_[i - 1]) {
        rows.push_back(keys_[i]);
        start.push_back(i);
      }
    }
    start.push_back(n);
  }

  int64_t size() const { return static_cast<int64_t>(rows.size()); }

  // fn(u, row, acc) for every distinct row u, acc = sum over its occurrences j
  // of coef(j) * vec(j) (dim values). Rows are split into contiguous ranges of
  // about equal occurrence counts, one per thread.
  template <class T, class Term, class Sink>
  void reduce(int64_t dim, int num_threads, Term term, Sink sink) const {
    const int64_t u_count = size();
    if (u_count == 0) return;
    const int64_t occ = start.back();
    const int chunks = static_cast<int>(std::min<int64_t>(threads_for(occ * dim, num_threads), u_count));
    std::vector<int64_t> bounds(static_cast<size_t>(chunks) + 1, u_count);
    bounds[0] = 0;
    for (int64_t u = 0, c = 1; u < u_count && c < chunks; ++u) {
      if (start[u + 1] * chunks >= occ * c) bounds[c++] = u + 1;
    }
    parallel_for(chunks, chunks, 1, [&](int64_t cb, int64_t ce) {
      std::vector<T> acc(static_cast<size_t>(dim));
      for (int64_t u = bounds[cb]; u < bounds[ce]; ++u) {
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t s = start[u]; s < start[u + 1]; ++s) {
          T c;
          const T* x = term(order[s], c);
          axpy(c, x, acc.data(), dim);
        }
        sink(u, rows[u], acc.data());
      }
    });
  }

 private:
  std::vector<uint32_t> keys_, keys2_;
  std::vector<int32_t> tmp_;
};

void check_range(const int64_t* ids, int64_t n, int64_t bound, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= bound) {
      throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(ids[i]) +
                                  " outside [0, " + std::to_string(bound) + ")");
    }
  }
}

// Output ids of a batch, slot t of pair b at b * (k + 1) + t.
template <class T>
void output_ids(const SGNSBatch<T>& a, std::vector<int64_t>& out) {
  const int64_t w = a.k + 1;
  out.resize(static_cast<size_t>(a.batch * w));
  for (int64_t b = 0; b < a.batch; ++b) {
    out[b * w] = a.contexts[b];
    for (int64_t j = 0; j < a.k; ++j) out[b * w + 1 + j] = a.negatives[b * a.k + j];
  }
}

inline const int64_t& slot_id(const int64_t* contexts, const int64_t* negatives, int64_t k, int64_t b,
                              int64_t t) {
  return t == 0 ? contexts[b] : negatives[b * k + t - 1];
}

// coef of every slot of pairs [begin, end) and, when grad_input is given,
// grad_input[b] = g_b sum_t coef_t u_t (g_b = grad_loss[b] or 1); loss[b] when given.
template <class T>
void pair_pass(const SGNSBatch<T>& a, int64_t begin, int64_t end, bool scores, T* loss, T* coef,
               const T* grad_loss, T* grad_input) {
  const int64_t d = a.dim, w = a.k + 1;
  for (int64_t b = begin; b < end; ++b) {
    T* cb = coef + b * w;
    if (scores) {
      const T* v = a.input_weight + a.centres[b] * d;
      double nll = 0.0;
      for (int64_t t = 0; t < w; ++t) {
        if (t + 1 < w) __builtin_prefetch(a.output_weight + slot_id(a.contexts, a.negatives, a.k, b, t + 1) * d);
        const T s = dot(v, a.output_weight + slot_id(a.contexts, a.negatives, a.k, b, t) * d, d);
        const Sigmoid<T> sg(s);
        cb[t] = t == 0 ? sg.sig - T(1) : sg.sig;
        if (loss != nullptr) nll += static_cast<double>(sg.nll(s, t == 0));
      }
      if (loss != nullptr) loss[b] = static_cast<T>(nll);
    }
    if (grad_input != nullptr) {
      T* gi = grad_input + b * d;
      std::fill(gi, gi + d, T(0));
      const T g = grad_loss != nullptr ? grad_loss[b] : T(1);
      for (int64_t t = 0; t < w; ++t) {
        axpy(g * cb[t], a.output_weight + slot_id(a.contexts, a.negatives, a.k, b, t) * d, gi, d);
      }
    }
  }
}

template <class T>
void run_pairs(const SGNSBatch<T>& a, bool scores, T* loss, T* coef, const T* grad_loss, T* grad_input,
               int num_threads) {
  const int64_t per_pair = (a.k + 1) * a.dim * ((scores ? 1 : 0) + (grad_input ? 1 : 0));
  const int nt = threads_for(a.batch * per_pair, num_threads);
  parallel_for(a.batch, nt, 1, [&](int64_t begin, int64_t end) {
    pair_pass(a, begin, end, scores, loss, coef, grad_loss, grad_input);
  });
}

// Scratch reused across the mini-batches of one SGD call.
template <class T>
struct Scratch {
  std::vector<T> coef, grad_in, loss;
  std::vector<int64_t> out_ids;
  RowGroups out_groups, in_groups;
};

}  // namespace

// ------------------------------------------------------------ pair generation
SkipGramPlan::SkipGramPlan(const SkipGramCorpus& c) {
  if (c.window < 1) throw std::invalid_argument("window must be >= 1, got " + std::to_string(c.window));
  if (c.window > (int64_t{1} << 30)) throw std::invalid_argument("window is too large");
  const int64_t bound = c.keep != nullptr ? c.vocab : INT64_MAX;
  check_range(c.tokens, c.n, bound, "tokens");
  const int64_t sentences = c.offsets != nullptr ? c.num_sentences : 1;
  if (c.offsets != nullptr) {
    if (sentences > 0 && c.offsets[0] != 0) throw std::invalid_argument("offsets must start at 0");
    for (int64_t s = 0; s < sentences; ++s) {
      if (c.offsets[s] > c.n || (s > 0 && c.offsets[s] < c.offsets[s - 1])) {
        throw std::invalid_argument("offsets must be non-decreasing and at most len(tokens) = " +
                                    std::to_string(c.n));
      }
    }
  }
  ids_.reserve(static_cast<size_t>(c.n));
  reach_.reserve(static_cast<size_t>(c.n));
  sent_start_.reserve(static_cast<size_t>(sentences) + 1);
  const uint32_t k0 = static_cast<uint32_t>(c.seed), k1 = static_cast<uint32_t>(c.seed >> 32);
  for (int64_t s = 0; s < sentences; ++s) {
    const int64_t lo = c.offsets != nullptr ? c.offsets[s] : 0;
    const int64_t hi = c.offsets == nullptr || s + 1 == sentences ? c.n : c.offsets[s + 1];
    sent_start_.push_back(static_cast<int64_t>(ids_.size()));
    for (int64_t p = lo; p < hi; ++p) {
      const uint64_t pos = c.position + static_cast<uint64_t>(p);
      const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32), 0u,
                                         kTagSkipGram, k0, k1);
      const int64_t id = c.tokens[p];
      if (c.keep != nullptr) {
        const uint64_t bits = (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
        const double u = static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
        if (!(u < c.keep[id])) continue;
      }
      ids_.push_back(id);
      reach_.push_back(1 + static_cast<int32_t>((static_cast<uint64_t>(r.v[2]) * static_cast<uint64_t>(c.window)) >> 32));
    }
  }
  sent_start_.push_back(static_cast<int64_t>(ids_.size()));
  for (size_t s = 0; s + 1 < sent_start_.size(); ++s) {
    const int64_t lo = sent_start_[s], hi = sent_start_[s + 1];
    for (int64_t i = lo; i < hi; ++i) {
      num_pairs_ += std::min<int64_t>(reach_[i], i - lo) + std::min<int64_t>(reach_[i], hi - 1 - i);
    }
  }
}

void SkipGramPlan::fill(int64_t* centres, int64_t* contexts) const {
  int64_t o = 0;
  for (size_t s = 0; s + 1 < sent_start_.size(); ++s) {
    const int64_t lo = sent_start_[s], hi = sent_start_[s + 1];
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t first = std::max(lo, i - reach_[i]), last = std::min(hi - 1, i + reach_[i]);
      for (int64_t j = first; j <= last; ++j) {
        if (j == i) continue;
        centres[o] = ids_[i];
        contexts[o] = ids_[j];
        ++o;
      }
    }
  }
}

// ------------------------------------------------------- negative sampling
template <class T>
void sgns_check_ids(const SGNSBatch<T>& a) {
  check_range(a.centres, a.batch, a.num_input, "centres");
  check_range(a.contexts, a.batch, a.num_output, "contexts");
  check_range(a.negatives, a.batch * a.k, a.num_output, "negatives");
}

template <class T>
void sgns_forward(const SGNSBatch<T>& a, T* loss, T* coef, int num_threads) {
  run_pairs<T>(a, true, loss, coef, nullptr, nullptr, num_threads);
}

template <class T>
void sgns_backward(const SGNSBatch<T>& a, const T* coef, const T* grad_loss, T* grad_input,
                   int64_t* touched_input, T* grad_output, int64_t* touched_output,
                   int num_threads, int64_t* num_touched_input, int64_t* num_touched_output) {
  const int64_t d = a.dim, w = a.k + 1;
  *num_touched_input = *num_touched_output = 0;
  if (grad_output != nullptr) {
    std::vector<int64_t> ids;
    output_ids(a, ids);
    RowGroups g;
    g.build(ids.data(), static_cast<int64_t>(ids.size()), a.num_output);
    *num_touched_output = g.size();
    g.reduce<T>(d, num_threads,
                [&](int32_t j, T& c) {
                  const int64_t b = j / w;
                  c = coef[j] * (grad_loss != nullptr ? grad_loss[b] : T(1));
                  return a.input_weight + a.centres[b] * d;
                },
                [&](int64_t u, int64_t row, const T* acc) {
                  if (touched_output != nullptr) touched_output[u] = row;
                  std::copy(acc, acc + d, grad_output + (touched_output != nullptr ? u : row) * d);
                });
  }
  if (grad_input != nullptr) {
    std::vector<T> per_pair(static_cast<size_t>(a.batch * d));
    run_pairs<T>(a, false, nullptr, const_cast<T*>(coef), grad_loss, per_pair.data(), num_threads);
    RowGroups g;
    g.build(a.centres, a.batch, a.num_input);
    *num_touched_input = g.size();
    g.reduce<T>(d, num_threads,
                [&](int32_t b, T& c) {
                  c = T(1);
                  return per_pair.data() + int64_t{b} * d;
                },
                [&](int64_t u, int64_t row, const T* acc) {
                  if (touched_input != nullptr) touched_input[u] = row;
                  std::copy(acc, acc + d, grad_input + (touched_input != nullptr ? u : row) * d);
                });
  }
}

template <class T>
double sgns_sgd(const SGNSBatch<T>& all, T* input, T* output, double lr_begin, double lr_end,
                int64_t step, int num_threads) {
  const int64_t d = all.dim, w = all.k + 1;
  step = std::max<int64_t>(step, 1);
  Scratch<T> s;
  double total = 0.0;
  for (int64_t first = 0; first < all.batch; first += step) {
    SGNSBatch<T> a = all;
    a.batch = std::min(step, all.batch - first);
    a.centres += first;
    a.contexts += first;
    a.negatives += first * all.k;
    const T lr = static_cast<T>(lr_begin + (lr_end - lr_begin) * static_cast<double>(first) /
                                               static_cast<double>(all.batch));
    s.coef.resize(static_cast<size_t>(a.batch * w));
    s.grad_in.resize(static_cast<size_t>(a.batch * d));
    s.loss.resize(static_cast<size_t>(a.batch));
    // 1. Scores, coefficients and the per-pair input gradients, all at the old weights.
    run_pairs<T>(a, true, s.loss.data(), s.coef.data(), nullptr, s.grad_in.data(), num_threads);
    for (int64_t b = 0; b < a.batch; ++b) total += static_cast<double>(s.loss[b]);
    // 2. Output rows (reads only the input table, unchanged until step 3).
    output_ids(a, s.out_ids);
    s.out_groups.build(s.out_ids.data(), a.batch * w, a.num_output);
    s.out_groups.template reduce<T>(
        d, num_threads,
        [&](int32_t j, T& c) {
          c = s.coef[j];
          return a.input_weight + a.centres[j / w] * d;
        },
        [&](int64_t, int64_t row, const T* acc) { axpy(-lr, acc, output + row * d, d); });
    // 3. Input rows.
    s.in_groups.build(a.centres, a.batch, a.num_input);
    s.in_groups.template reduce<T>(
        d, num_threads,
        [&](int32_t b, T& c) {
          c = T(1);
          return s.grad_in.data() + int64_t{b} * d;
        },
        [&](int64_t, int64_t row, const T* acc) { axpy(-lr, acc, input + row * d, d); });
  }
  return total;
}

// ----------------------------------------------------- hierarchical softmax
template <class T>
double hs_sgd(const HuffmanTree& tree, T* input, int64_t num_input, T* weight, T* bias, int64_t dim,
              const int64_t* centres, const int64_t* contexts, int64_t batch, double lr_begin,
              double lr_end, int64_t step, int num_threads) {
  check_range(centres, batch, num_input, "centres");
  check_range(contexts, batch, tree.num_classes, "contexts");
  step = std::max<int64_t>(step, 1);
  const int64_t d = dim, inner = tree.num_inner();
  std::vector<T> vin, gin, loss, dz, gw, gb, ones;
  std::vector<int64_t> row_offsets, touched;
  RowGroups groups;
  double total = 0.0;
  for (int64_t first = 0; first < batch; first += step) {
    const int64_t n = std::min(step, batch - first);
    const int64_t* c = centres + first;
    const T lr = static_cast<T>(lr_begin + (lr_end - lr_begin) * static_cast<double>(first) /
                                               static_cast<double>(batch));
    vin.resize(static_cast<size_t>(n * d));
    gin.resize(static_cast<size_t>(n * d));
    loss.resize(static_cast<size_t>(n));
    ones.assign(static_cast<size_t>(n), T(1));
    row_offsets.resize(static_cast<size_t>(n) + 1);
    for (int64_t b = 0; b < n; ++b) std::copy(input + c[b] * d, input + (c[b] + 1) * d, vin.data() + b * d);
    const int64_t steps = huffman_batch_offsets(tree, contexts + first, n, "contexts", row_offsets.data());
    dz.resize(static_cast<size_t>(steps));
    const int64_t cap = std::min(steps, inner);
    gw.resize(static_cast<size_t>(cap * d));
    gb.resize(static_cast<size_t>(cap));
    touched.resize(static_cast<size_t>(cap));
    HSBatch<T> hb;
    hb.tree = &tree;
    hb.input = vin.data();
    hb.target = contexts + first;
    hb.row_offsets = row_offsets.data();
    hb.weight = weight;
    hb.bias = bias;
    hb.batch = n;
    hb.dim = d;
    hs_forward(hb, loss.data(), dz.data(), num_threads);
    for (int64_t b = 0; b < n; ++b) total += static_cast<double>(loss[b]);
    const int64_t used = hs_backward(hb, dz.data(), ones.data(), gin.data(), gw.data(),
                                     bias != nullptr ? gb.data() : nullptr, touched.data(), num_threads);
    for (int64_t u = 0; u < used; ++u) {  // distinct nodes: no two updates share a row
      axpy(-lr, gw.data() + u * d, weight + touched[u] * d, d);
      if (bias != nullptr) bias[touched[u]] -= lr * gb[u];
    }
    groups.build(c, n, num_input);
    groups.template reduce<T>(
        d, num_threads,
        [&](int32_t b, T& coef) {
          coef = T(1);
          return gin.data() + int64_t{b} * d;
        },
        [&](int64_t, int64_t row, const T* acc) { axpy(-lr, acc, input + row * d, d); });
  }
  return total;
}

#define PYNEG_INSTANTIATE_SG(T)                                                                      \
  template void sgns_check_ids<T>(const SGNSBatch<T>&);                                              \
  template void sgns_forward<T>(const SGNSBatch<T>&, T*, T*, int);                                   \
  template void sgns_backward<T>(const SGNSBatch<T>&, const T*, const T*, T*, int64_t*, T*, int64_t*, \
                                 int, int64_t*, int64_t*);                                           \
  template double sgns_sgd<T>(const SGNSBatch<T>&, T*, T*, double, double, int64_t, int);            \
  template double hs_sgd<T>(const HuffmanTree&, T*, int64_t, T*, T*, int64_t, const int64_t*,        \
                            const int64_t*, int64_t, double, double, int64_t, int);

PYNEG_INSTANTIATE_SG(float)
PYNEG_INSTANTIATE_SG(double)

#undef PYNEG_INSTANTIATE_SG

}  // namespace pyneg

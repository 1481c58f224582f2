// Exact hard-negative mining (see mining.h for the contract).
#include "cpu/mining.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/philox.h"

// The score micro-kernel is compiled for several instruction sets and picked
// once at run time from the CPU's features (AVX-512, AVX2 + FMA, or the
// baseline), so the wheel stays portable (no -march=native) yet uses the
// vector units the CPU has. On one machine every score goes through the same
// version, hence the same rounding.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define PYNEG_MINING_DISPATCH 1
#endif

namespace pyneg {

namespace mining_detail {

// Micro-tile: kMR query rows x kNR<T> candidates (one 64-byte line of a packed
// panel row), accumulated in registers over the whole dimension.
constexpr int kMR = 6;
template <class T>
constexpr int kNR = static_cast<int>(64 / sizeof(T));

// A 64-byte vector (GCC/Clang vector extension, not intrinsics): each clone
// maps it onto its own registers (4 SSE, 2 AVX2 or 1 AVX-512 register).
typedef float LineF __attribute__((vector_size(64)));
typedef double LineD __attribute__((vector_size(64)));
template <class T>
struct LineOf;
template <>
struct LineOf<float> {
  using type = LineF;
};
template <>
struct LineOf<double> {
  using type = LineD;
};
template <class T>
using Line = typename LineOf<T>::type;

// out[i * ldo + j] = sum_t q[i * d + t] * panel[t * NR + j], t ascending: the
// same order for every tile, whatever block it belongs to. The kMR running sums
// stay in registers; each step loads one panel line and broadcasts kMR scalars.
template <class T>
__attribute__((always_inline)) inline void micro_tile(const T* __restrict q, const T* __restrict panel,
                                                      int64_t d, T* __restrict out, int64_t ldo) {
  constexpr int NR = kNR<T>;
  Line<T> acc[kMR];
  for (int i = 0; i < kMR; ++i) acc[i] = Line<T>{};
  for (int64_t t = 0; t < d; ++t) {
    Line<T> line;
    std::memcpy(&line, panel + t * NR, sizeof(line));
#pragma GCC unroll 8
    for (int i = 0; i < kMR; ++i) acc[i] += q[i * d + t] * line;
  }
  for (int i = 0; i < kMR; ++i) std::memcpy(out + i * ldo, &acc[i], sizeof(acc[i]));
}

// Scores of kMR packed query rows against `num_panels` packed candidate panels.
template <class T>
__attribute__((always_inline)) inline void score_rows_body(const T* q, int64_t d, const T* panels,
                                                           int64_t num_panels, T* out) {
  constexpr int NR = kNR<T>;
  for (int64_t p = 0; p < num_panels; ++p) micro_tile<T>(q, panels + p * d * NR, d, out + p * NR, num_panels * NR);
}

template <class T>
using ScoreRows = void (*)(const T*, int64_t, const T*, int64_t, T*);

#define PYNEG_SCORE_ROWS(name, attr)                                                               \
  template <class T>                                                                              \
  attr void name(const T* q, int64_t d, const T* panels, int64_t num_panels, T* out) {            \
    score_rows_body<T>(q, d, panels, num_panels, out);                                            \
  }
PYNEG_SCORE_ROWS(score_rows_base, )
#ifdef PYNEG_MINING_DISPATCH
PYNEG_SCORE_ROWS(score_rows_avx2, __attribute__((target("avx2,fma"))))
PYNEG_SCORE_ROWS(score_rows_avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif
#undef PYNEG_SCORE_ROWS

template <class T>
ScoreRows<T> pick_score_rows() {
#ifdef PYNEG_MINING_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return &score_rows_avx512<T>;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &score_rows_avx2<T>;
#endif
  return &score_rows_base<T>;
}

template <class T>
void score_rows(const T* q, int64_t d, const T* panels, int64_t num_panels, T* out) {
  static const ScoreRows<T> fn = pick_score_rows<T>();  // thread-safe one-time choice
  fn(q, d, panels, num_panels, out);
}

template <class T>
struct Entry {
  T score;
  int64_t id;
};

// a ranks above b: higher score, then smaller id (a total order on distinct ids).
template <class T>
inline bool better(const Entry<T>& a, const Entry<T>& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Magnitude bits of a float: for |v| they order like the values, and they are
// >= the bits of infinity exactly when v is not finite. Integer max reductions
// vectorise where floating-point ones (NaN-aware) do not.
template <class T>
struct Bits;
template <>
struct Bits<float> {
  using type = uint32_t;
  static constexpr type kAbs = 0x7fffffffu, kInf = 0x7f800000u;
};
template <>
struct Bits<double> {
  using type = uint64_t;
  static constexpr type kAbs = 0x7fffffffffffffffull, kInf = 0x7ff0000000000000ull;
};

template <class T>
inline typename Bits<T>::type abs_bits(T v) {
  typename Bits<T>::type b;
  std::memcpy(&b, &v, sizeof(v));
  return b & Bits<T>::kAbs;
}

template <class T>
inline double from_abs_bits(typename Bits<T>::type b) {
  T v;
  std::memcpy(&v, &b, sizeof(v));
  return static_cast<double>(v);
}

[[noreturn]] PYNEG_HD_COLD void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Copies rows [r0, r1) of a (rows, d) matrix, checks them (finite; nonzero when
// cosine) and returns their largest magnitude; inv_norm gets 1/|row| for cosine.
template <class T>
double copy_checked_rows(const T* src, int64_t r0, int64_t r1, int64_t d, T* dst, bool cosine, T* inv_norm,
                         const char* name) {
  double max_abs = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = src + r * d;
    T* out = dst + (r - r0) * d;
    double sq = 0;
    for (int64_t t = 0; t < d; ++t) {
      const T v = row[t];  // read once: what is checked is what is scored
      out[t] = v;
      if (!std::isfinite(v)) fail(std::string(name) + " holds a non-finite value in row " + std::to_string(r));
      const double a = std::fabs(static_cast<double>(v));
      max_abs = std::max(max_abs, a);
      sq += a * a;
    }
    if (cosine) {
      if (!(sq > 0)) fail(std::string(name) + " row " + std::to_string(r) + " has zero norm (cosine is undefined)");
      inv_norm[r - r0] = static_cast<T>(1.0 / std::sqrt(sq));
    }
  }
  return max_abs;
}

template <class T>
void check_no_overflow(double max_q, double max_c, int64_t d) {
  // |q . c| <= d * max|q| * max|c|: below this bound no partial sum overflows.
  if (!(static_cast<double>(d) * max_q * max_c < 0.5 * static_cast<double>(std::numeric_limits<T>::max()))) {
    fail("query and candidates are too large: their dot products could overflow; scale them down");
  }
}

template <class T>
class TopkRunner {
 public:
  TopkRunner(const TopkProblem<T>& p, int num_threads) : p_(p), threads_(std::max(num_threads, 1)) {
    const int64_t d = std::max<int64_t>(p.dim, 1);
    const int64_t target = int64_t{256} * 1024 / (d * static_cast<int64_t>(sizeof(T)));
    cb_ = round_up(p.candidate_block > 0 ? p.candidate_block : std::max<int64_t>(target, NR), NR);
    // Queries are read kMR rows at a time, so their block need not fit a cache:
    // by default one block per thread (up to 4096 rows), which packs every
    // candidate block once per thread.
    const int64_t per_thread = (p.num_queries + threads_ - 1) / threads_;
    qb_ = round_up(p.query_block > 0 ? p.query_block : std::min<int64_t>(std::max<int64_t>(per_thread, 1), 4096), kMR);
    nqb_ = (p.num_queries + qb_ - 1) / qb_;
    ncb_ = (p.num_candidates + cb_ - 1) / cb_;
    // Few query blocks: split the candidates too, each split with its own heaps.
    splits_ = nqb_ >= threads_ ? 1 : std::max<int64_t>(1, std::min<int64_t>(threads_, ncb_));
  }

  void run(const TopkResult& r) {
    const int64_t B = p_.num_queries, hi = p_.hi;
    heaps_.assign(static_cast<size_t>(splits_ * B * hi), Entry<T>{T(0), -1});
    counts_.assign(static_cast<size_t>(splits_ * B), 0);
    parallel_for(splits_ * nqb_, threads_, 1, [&](int64_t b, int64_t e) {
      for (int64_t task = b; task < e; ++task) run_task(task / nqb_, task % nqb_);
    });
    parallel_for(B, threads_, 256, [&](int64_t b, int64_t e) {
      std::vector<Entry<T>> all;
      for (int64_t row = b; row < e; ++row) {
        all.clear();
        for (int64_t s = 0; s < splits_; ++s) {
          const Entry<T>* h = heaps_.data() + (s * B + row) * hi;
          all.insert(all.end(), h, h + counts_[static_cast<size_t>(s * B + row)]);
        }
        std::sort(all.begin(), all.end(), better<T>);
        const int64_t n = std::min<int64_t>(hi, static_cast<int64_t>(all.size()));
        r.counts[row] = n;
        for (int64_t j = 0; j < hi; ++j) {
          r.ids[row * hi + j] = j < n ? all[static_cast<size_t>(j)].id : -1;
          r.scores[row * hi + j] =
              j < n ? static_cast<double>(all[static_cast<size_t>(j)].score) : -std::numeric_limits<double>::infinity();
        }
      }
    });
  }

 private:
  static constexpr int NR = kNR<T>;

  bool excluded(int64_t row, int64_t id) const {
    if (p_.exclude_width == 0) return false;
    const int64_t* ex = p_.exclude + row * p_.exclude_width;
    return std::binary_search(ex, ex + p_.exclude_width, id);
  }

  // The slow path: a score at or above the row's current threshold.
  void offer(int64_t row, Entry<T>* heap, int64_t& count, T& threshold, Entry<T> e) const {
    const double s = static_cast<double>(e.score);
    if (p_.upper && !(s < p_.upper[row])) return;
    if (p_.has_max_score && !(s <= p_.max_score)) return;
    if (excluded(row, e.id)) return;
    const int64_t hi = p_.hi;
    if (count < hi) {
      heap[count++] = e;
      std::push_heap(heap, heap + count, better<T>);  // heap[0]: the worst kept
      if (count == hi) threshold = heap[0].score;
    } else if (better(e, heap[0])) {
      std::pop_heap(heap, heap + hi, better<T>);
      heap[hi - 1] = e;
      std::push_heap(heap, heap + hi, better<T>);
      threshold = heap[0].score;
    }
  }

  void run_task(int64_t split, int64_t qblock) {
    const int64_t B = p_.num_queries, N = p_.num_candidates, d = p_.dim, hi = p_.hi;
    const int64_t r0 = qblock * qb_, r1 = std::min(B, r0 + qb_), nrows = r1 - r0;
    const int64_t rows_pad = round_up(nrows, kMR);
    std::vector<T> q(static_cast<size_t>(rows_pad * d), T(0)), q_inv(static_cast<size_t>(rows_pad), T(1));
    const double max_q = copy_checked_rows(p_.query, r0, r1, d, q.data(), p_.cosine, q_inv.data(), "query");
    std::vector<T> threshold(static_cast<size_t>(nrows), -std::numeric_limits<T>::infinity());
    Entry<T>* heaps = heaps_.data() + (split * B + r0) * hi;
    int64_t* counts = counts_.data() + split * B + r0;

    std::vector<T> c_inv(static_cast<size_t>(cb_), T(1));
    std::vector<T> panels(static_cast<size_t>(cb_ * d));
    std::vector<T> tile(static_cast<size_t>(kMR * cb_));
    const int64_t cb_begin = split * ncb_ / splits_, cb_end = (split + 1) * ncb_ / splits_;
    for (int64_t cbk = cb_begin; cbk < cb_end; ++cbk) {
      const int64_t c0 = cbk * cb_, c1 = std::min(N, c0 + cb_), nc = c1 - c0;
      const int64_t num_panels = (nc + NR - 1) / NR;
      // Own copy of the block in the panel layout [panel][t][NR]; the checks
      // (finite, no possible overflow, nonzero norm) run on that copy.
      if (nc % NR) std::fill(panels.begin() + (num_panels - 1) * d * NR, panels.begin() + num_panels * d * NR, T(0));
      typename Bits<T>::type max_bits = 0;
      for (int64_t j = 0; j < nc; ++j) {
        T* dst = panels.data() + (j / NR) * d * NR + (j % NR);
        const T* src = p_.candidates + (c0 + j) * d;
        for (int64_t t = 0; t < d; ++t) dst[t * NR] = src[t];
        typename Bits<T>::type row_bits = 0;
        for (int64_t t = 0; t < d; ++t) row_bits = std::max(row_bits, abs_bits(dst[t * NR]));
        if (row_bits >= Bits<T>::kInf)
          fail("candidates holds a non-finite value in row " + std::to_string(c0 + j));
        max_bits = std::max(max_bits, row_bits);
        if (p_.cosine) {
          double sq = 0;
          for (int64_t t = 0; t < d; ++t) sq += static_cast<double>(dst[t * NR]) * static_cast<double>(dst[t * NR]);
          if (!(sq > 0)) fail("candidates row " + std::to_string(c0 + j) + " has zero norm (cosine is undefined)");
          c_inv[static_cast<size_t>(j)] = static_cast<T>(1.0 / std::sqrt(sq));
        }
      }
      check_no_overflow<T>(max_q, from_abs_bits<T>(max_bits), d);
      const int64_t ldo = num_panels * NR;
      for (int64_t g = 0; g < rows_pad; g += kMR) {
        score_rows(q.data() + g * d, d, panels.data(), num_panels, tile.data());
        for (int64_t i = 0; i < kMR && g + i < nrows; ++i) {
          const int64_t local = g + i, row = r0 + local;
          T* srow = tile.data() + i * ldo;
          if (p_.cosine) {
            const T qi = q_inv[static_cast<size_t>(local)];
            for (int64_t j = 0; j < nc; ++j) srow[j] = srow[j] * qi * c_inv[static_cast<size_t>(j)];
          }
          T& thr = threshold[static_cast<size_t>(local)];
          Entry<T>* heap = heaps + local * hi;
          int64_t& count = counts[local];
          // Most rows have no score at or above their threshold in a block:
          // a branch-free (vectorised) test first, the heap only if needed.
          const T t0 = thr;
          bool any = false;
          for (int64_t j = 0; j < nc; ++j) any |= srow[j] >= t0;
          if (!any) continue;
          for (int64_t j = 0; j < nc; ++j) {
            if (srow[j] >= thr) offer(row, heap, count, thr, Entry<T>{srow[j], c0 + j});
          }
        }
      }
    }
  }

  const TopkProblem<T>& p_;
  int threads_;
  int64_t cb_ = 0, qb_ = 0, nqb_ = 0, ncb_ = 0, splits_ = 1;
  std::vector<Entry<T>> heaps_;
  std::vector<int64_t> counts_;
};

template <class T>
void mine_topk_impl(const TopkProblem<T>& p, const TopkResult& r, int num_threads) {
  if (p.num_queries <= 0) return;
  if (p.hi <= 0 || p.num_candidates <= 0) {
    for (int64_t row = 0; row < p.num_queries; ++row) r.counts[row] = 0;
    for (int64_t i = 0; i < p.num_queries * p.hi; ++i) {
      r.ids[i] = -1;
      r.scores[i] = -std::numeric_limits<double>::infinity();
    }
    return;
  }
  TopkRunner<T>(p, num_threads).run(r);
}

// Inclusion probabilities (log) of a window of w scores sorted descending, k of them drawn.
void window_log_pi(const double* scores, int64_t w, int64_t k, WindowSampling sampling, double tau,
                   std::vector<double>& log_pi, std::vector<double>& suffix) {
  log_pi.assign(static_cast<size_t>(w), 0.0);
  if (sampling == WindowSampling::kUniform) {
    const double lp = std::log(static_cast<double>(k) / static_cast<double>(w));
    std::fill(log_pi.begin(), log_pi.end(), lp);
    return;
  }
  // log weights relative to the best score; suffix[j] = log sum_{i >= j} weight_i.
  suffix.assign(static_cast<size_t>(w + 1), -std::numeric_limits<double>::infinity());
  for (int64_t j = 0; j < w; ++j) log_pi[static_cast<size_t>(j)] = (scores[j] - scores[0]) / tau;
  for (int64_t j = w - 1; j >= 0; --j) {
    const double a = log_pi[static_cast<size_t>(j)], b = suffix[static_cast<size_t>(j + 1)];
    const double m = std::max(a, b);
    suffix[static_cast<size_t>(j)] = m + std::log1p(std::exp(std::min(a, b) - m));
  }
  // The first m ranks are capped at probability 1; the rest share k - m in
  // proportion to their weights (weights are nonincreasing in rank).
  int64_t m = 0;
  while (m < k && std::log(static_cast<double>(k - m)) + log_pi[static_cast<size_t>(m)] - suffix[static_cast<size_t>(m)] > 0) ++m;
  for (int64_t j = 0; j < w; ++j) {
    double& lp = log_pi[static_cast<size_t>(j)];
    if (j < m) {
      lp = 0.0;
    } else if (m == k) {
      lp = -std::numeric_limits<double>::infinity();
    } else {
      lp = std::min(0.0, std::log(static_cast<double>(k - m)) + lp - suffix[static_cast<size_t>(m)]);
    }
  }
}

}  // namespace mining_detail

void mine_topk(const TopkProblem<float>& p, const TopkResult& r, int num_threads) {
  mining_detail::mine_topk_impl(p, r, num_threads);
}

void mine_topk(const TopkProblem<double>& p, const TopkResult& r, int num_threads) {
  mining_detail::mine_topk_impl(p, r, num_threads);
}

void mine_window(const WindowProblem& p, const WindowResult& r, int num_threads) {
  using namespace mining_detail;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  parallel_for(p.rows, num_threads, 64, [&](int64_t b, int64_t e) {
    std::vector<double> log_pi, suffix;
    std::vector<std::pair<uint64_t, int64_t>> order;
    std::vector<char> chosen;
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = std::min(p.counts[row], p.hi);
      const int64_t w = std::max<int64_t>(0, n - p.lo);
      r.window[row] = w;
      const int64_t* ids = p.ids + row * p.hi + p.lo;
      const double* scores = p.scores + row * p.hi + p.lo;
      int64_t* out_ids = r.ids + row * p.k;
      double* out_scores = r.scores + row * p.k;
      double* out_lq = r.log_q + row * p.k;
      if (w <= p.k || p.sampling == WindowSampling::kTop) {
        // Every candidate of the window (or its first k) lands in the sample: pi = 1.
        const int64_t take = std::min(w, p.k);
        for (int64_t j = 0; j < p.k; ++j) {
          out_ids[j] = j < take ? ids[j] : -1;
          out_scores[j] = j < take ? scores[j] : neg_inf;
          out_lq[j] = j < take ? 0.0 : neg_inf;
        }
        continue;
      }
      window_log_pi(scores, w, p.k, p.sampling, p.tau, log_pi, suffix);
      // A Philox permutation of the window, then systematic points u + m on the
      // cumulative pi: each candidate is hit with probability exactly pi_j.
      const uint64_t pos = p.offset + static_cast<uint64_t>(row);
      order.resize(static_cast<size_t>(w));
      for (int64_t j = 0; j < w; ++j)
        order[static_cast<size_t>(j)] = {random64(p.seed, pos, static_cast<uint32_t>(j + 1), kTagMine), j};
      std::sort(order.begin(), order.end());
      const double u = static_cast<double>(random64(p.seed, pos, 0, kTagMine) >> 11) * (1.0 / 9007199254740992.0);
      chosen.assign(static_cast<size_t>(w), 0);
      int64_t m = 0;
      double cum = 0;
      for (const auto& kv : order) {
        const int64_t j = kv.second;
        const double next = cum + std::exp(log_pi[static_cast<size_t>(j)]);
        if (m < p.k && u + static_cast<double>(m) < next) {
          chosen[static_cast<size_t>(j)] = 1;
          ++m;
        }
        cum = next;
      }
      // Rounding can leave the last point just past the total (sum pi = k up to
      // ~1e-15): complete with the best-ranked candidates not yet chosen.
      for (int64_t j = 0; j < w && m < p.k; ++j) {
        if (!chosen[static_cast<size_t>(j)]) {
          chosen[static_cast<size_t>(j)] = 1;
          ++m;
        }
      }
      int64_t o = 0;
      for (int64_t j = 0; j < w; ++j) {
        if (!chosen[static_cast<size_t>(j)]) continue;
        out_ids[o] = ids[j];
        out_scores[o] = scores[j];
        out_lq[o] = log_pi[static_cast<size_t>(j)];
        ++o;
      }
    }
  });
}

}  // namespace pyneg

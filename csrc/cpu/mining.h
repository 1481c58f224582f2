// Exact hard-negative mining: the top-`hi` candidates of every query row by
// dot product (or cosine), with exclusions and positive-aware filters, and the
// draw of k negatives from a rank window [lo, hi) of them with their exact
// inclusion probabilities.
//
// Two stages, so that the CUDA path (blocked matmul + top-k on the device) can
// share the second one:
//   1. mine_topk: blocked dot products (a packed block of candidates against a
//      block of queries, a register-tiled micro-kernel the compiler vectorises),
//      one bounded heap per row; memory O(B * hi + one block), never (B, N).
//   2. mine_window: per row, ranks [lo, hi) of the admissible candidates, and k
//      of them drawn with Philox randomness keyed by (seed, offset + row).
//
// Order: candidate a ranks above b when score_a > score_b, or the scores are
// equal and id_a < id_b. That total order makes the result independent of the
// thread count and of the block sizes (every score is computed by the same
// instruction sequence, whatever block it falls in).
#pragma once

#include <cstdint>

namespace pyneg {

// The miner's random numbers use philox.h's stream tag kTagMine.

template <class T>
struct TopkProblem {
  const T* query = nullptr;       // (num_queries, dim), row-major
  const T* candidates = nullptr;  // (num_candidates, dim), row-major
  int64_t num_queries = 0, num_candidates = 0, dim = 0;
  // (num_queries, exclude_width) ids; each row sorted ascending, -1 = padding.
  const int64_t* exclude = nullptr;
  int64_t exclude_width = 0;
  // Per row: a candidate is admissible only when score < upper[row] (the
  // positive-aware filters folded into one bound); nullptr: no bound.
  const double* upper = nullptr;
  double max_score = 0;     // admissible only when score <= max_score
  bool has_max_score = false;
  bool cosine = false;      // scores are dot / (|q| |c|)
  int64_t hi = 0;           // candidates kept per row
  int64_t query_block = 0;  // 0: chosen from dim (rounded up to the micro-tile)
  int64_t candidate_block = 0;
};

struct TopkResult {
  int64_t* ids = nullptr;     // (num_queries, hi), best first; -1 past count
  double* scores = nullptr;   // (num_queries, hi), exact copies of the T scores; -inf past count
  int64_t* counts = nullptr;  // (num_queries,) admissible candidates kept (<= hi)
};

// Throws std::invalid_argument when a query or candidate holds a non-finite
// value, a cosine has a zero vector, or dot products could overflow T.
void mine_topk(const TopkProblem<float>& p, const TopkResult& r, int num_threads);
void mine_topk(const TopkProblem<double>& p, const TopkResult& r, int num_threads);

enum class WindowSampling : int { kTop = 0, kUniform = 1, kSoftmax = 2 };

struct WindowProblem {
  const int64_t* ids = nullptr;     // (rows, hi) as mine_topk writes them
  const double* scores = nullptr;   // (rows, hi)
  const int64_t* counts = nullptr;  // (rows,)
  int64_t rows = 0, hi = 0, lo = 0, k = 0;
  WindowSampling sampling = WindowSampling::kUniform;
  double tau = 1.0;                 // softmax temperature
  uint64_t seed = 0, offset = 0;    // row r draws from stream position offset + r
};

struct WindowResult {
  int64_t* ids = nullptr;     // (rows, k), in rank order; -1 padding
  double* scores = nullptr;   // (rows, k); -inf padding
  double* log_q = nullptr;    // (rows, k) log inclusion probability; -inf padding
  int64_t* window = nullptr;  // (rows,) admissible candidates in [lo, hi)
};

// Draws k of each row's window. Inclusion probabilities pi_j (sum k, each <= 1):
//   kTop: the first k, pi = 1;  kUniform: pi = k / w;
//   kSoftmax: pi_j = min(1, c * exp(score_j / tau)) with c such that sum pi = k
//   (probability proportional to size, capped at 1).
// The sample is drawn by randomised systematic sampling (a Philox permutation
// of the window, one uniform start, points u, u + 1, ..., u + k - 1 on the
// cumulative pi), whose marginal inclusion probabilities are exactly pi_j;
// with equal pi it is a uniform k-subset. log_q = log pi_j. A row whose window
// holds w < k candidates returns all w (log q 0) and k - w paddings.
void mine_window(const WindowProblem& p, const WindowResult& r, int num_threads);

}  // namespace pyneg

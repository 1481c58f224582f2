// Uniform and log-uniform draws without a table: O(1) memory whatever V
// (V up to 2^40 and beyond: ids are int64 end to end).
//
// Draw `position` of a call takes the same 64-bit Philox number as an alias
// draw (draw_random64(seed, offset + position)), so a seed gives the same
// stream whatever the thread count or batch split.
//   uniform:     id = high 64 bits of u * V (multiply-shift, no modulo bias);
//                P(id) = 1/V to within 2^-64.
//   log-uniform: id = floor(exp(x * log(V + 1)) - 1) with x = u's 53 high bits
//                / 2^53, clamped to V - 1: the inverse of the CDF
//                F(k) = log(k + 1) / log(V + 1), TensorFlow's
//                log_uniform_candidate_sampler, so
//                P(id = k) = log((k + 2) / (k + 1)) / log(V + 1) to within
//                float64 rounding (about 2^-52 relative per class boundary).
// Exclusion lists are redrawn (renormalised over the allowed ids) or, when
// the allowed probability is below 1/16, drawn from the exact allowed CDF;
// draws without replacement reject repeats and finish from the allowed CDF.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/alias_sample.h"  // ExcludeLists

namespace pyneg {

constexpr int kAnalyticUniform = 0;
constexpr int kAnalyticLogUniform = 1;
// Largest V of the analytic samplers: ids and counts stay exact in int64 and
// in the 53-bit mantissa the log-uniform inverse CDF works with.
constexpr int64_t kMaxAnalyticClasses = int64_t{1} << 50;

struct AnalyticDist {
  int kind = kAnalyticUniform;
  int64_t v = 1;
  double log_v1 = 0.0;  // log(V + 1), for the log-uniform

  AnalyticDist(int kind, int64_t v);  // throws std::invalid_argument for a bad kind or V
  int64_t pick(uint64_t u) const;
  double prob(int64_t k) const;       // P(id == k)
  double cdf(int64_t k) const;        // P(id < k), k in [0, V]
};

// 2^(j/64), j = 0..63 (constants in analytic_sample.cpp).
extern const double kExp2Table64[64];

// exp(x) for x in [0, 40], without libm: x = (64 n + j) ln2 / 64 + r with
// |r| <= ln2 / 128 (ln2 in two parts), exp(r) by its Taylor polynomial to
// degree 5 (relative error below 2^-53), times 2^(j/64) from a table and 2^n
// from the exponent bits. Short dependency chains: many draws overlap.
inline double exp_small(double x) {
  constexpr double kLog2e64 = 92.33248261689366;      // 64 / ln2
  constexpr double kLn2Hi64 = 0.010830424696223417;   // ln2 / 64 to 36 bits: m * it is exact
  constexpr double kLn2Lo64 = 2.572804622327669e-14;  // ln2 / 64 - kLn2Hi64
  // Round to nearest with the 1.5 * 2^52 trick (nearbyint can be a libm call
  // without SSE4.1, which the portable build does not assume).
  constexpr double kRound = 6755399441055744.0;
  const double m = (x * kLog2e64 + kRound) - kRound;
  const double r = (x - m * kLn2Hi64) - m * kLn2Lo64;
  const double p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))));
  const auto mi = static_cast<int64_t>(m);
  const uint64_t bits = static_cast<uint64_t>((mi >> 6) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * kExp2Table64[mi & 63] * scale;
}

inline int64_t log_uniform_pick(uint64_t u, double log_v1, int64_t v) {
  const double y = exp_small((static_cast<double>(static_cast<int64_t>(u >> 11)) * (1.0 / 9007199254740992.0)) * log_v1) - 1.0;  // in [0, V] up to rounding
  const auto k = static_cast<int64_t>(y > 0.0 ? y : 0.0);
  return k < v ? k : v - 1;
}

void analytic_sample(const AnalyticDist& d, uint64_t seed, uint64_t offset, int64_t* out, int64_t n,
                     int num_threads);
void analytic_sample_excluding(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                               const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                               int num_threads);
// rows x k draws distinct within each row. tries_out[r] (optional) is the row's
// num_tries in TensorFlow's sense: the number of draws with replacement it took
// to see k distinct allowed ids (duplicates and excluded ids count). A row that
// the rejection phase cannot finish (unique_max_tries(k) draws) is completed from
// its exact allowed CDF, which draws no more candidates, so its count is
// undefined; it then reports max(draws taken, analytic_expected_tries(d, its
// exclusion list, k)), the rule of the alias kernels (alias_sample.h).
void analytic_sample_unique(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                            int64_t* tries_out, int num_threads);

// The expected number of draws with replacement after which k distinct ids
// outside `excluded` (sorted, distinct, in [0, V)) have been seen: the t solving
// sum over allowed i of 1 - (1 - p_i)^t = k - 1/2 (bisection, rounded up). Exact
// sums for ids below 1024 and for the excluded ids; above, the log-uniform's
// smooth terms are integrated (8-point Gauss-Legendre on [a, 2a) segments,
// relative error well below 1e-6), so it costs O(log V + |excluded|) per step
// whatever V (2^50 included). Throws std::invalid_argument unless
// 1 <= k <= V - |excluded|.
int64_t analytic_expected_tries(const AnalyticDist& d, const int64_t* excluded, int64_t num_excluded,
                                int64_t k);

}  // namespace pyneg

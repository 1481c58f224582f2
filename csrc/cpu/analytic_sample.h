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

// exp(x) for x in [0, 40] in plain arithmetic (relative error < 2^-51), and the
// log-uniform draw from one 64-bit random number built on it.
double exp_small(double x);
int64_t log_uniform_pick(uint64_t u, double log_v1, int64_t v);

void analytic_sample(const AnalyticDist& d, uint64_t seed, uint64_t offset, int64_t* out, int64_t n,
                     int num_threads);
void analytic_sample_excluding(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                               const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                               int num_threads);
void analytic_sample_unique(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                            int64_t* tries_out, int num_threads);

}  // namespace pyneg

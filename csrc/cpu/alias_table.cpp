#include "cpu/alias_table.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace pyneg {

namespace {

[[noreturn]] void fail(const char* name, const std::string& what) {
  throw std::invalid_argument(std::string(name) + " " + what);
}

// Checks finiteness and sign, and returns the largest value.
double checked_max(const double* w, int64_t n, const char* name) {
  if (n <= 0) fail(name, "must not be empty");
  if (n > kMaxClasses) fail(name, "has more than 2^31 - 1 classes");
  double wmax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = w[i];
    if (!(x >= 0.0) || !std::isfinite(x)) {
      fail(name, "must be finite and non-negative (entry " + std::to_string(i) + " is " +
                     std::to_string(x) + ")");
    }
    wmax = x > wmax ? x : wmax;
  }
  if (wmax == 0.0) fail(name, "must have a positive sum (all entries are zero)");
  return wmax;
}

// sum(w) * scale with four accumulators (instruction-level parallelism and a
// smaller rounding error than one running sum).
double scaled_sum(const double* w, int64_t n, double scale) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += w[i + j] * scale;
  for (; i < n; ++i) acc[0] += w[i] * scale;
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace

void normalize_weights(const double* weights, int64_t n, const char* name, double* probs_out) {
  const double wmax = checked_max(weights, n, name);
  const double inv_max = 1.0 / wmax;
  if (std::isfinite(inv_max)) {
    const double inv_sum = 1.0 / scaled_sum(weights, n, inv_max);
    for (int64_t i = 0; i < n; ++i) probs_out[i] = weights[i] * inv_max * inv_sum;
    return;
  }
  // A subnormal largest weight (e.g. all weights 1e-310): 1 / wmax overflows,
  // so divide by it instead; w / wmax is in [0, 1] and the sum is >= 1.
  for (int64_t i = 0; i < n; ++i) probs_out[i] = weights[i] / wmax;
  const double inv_sum = 1.0 / scaled_sum(probs_out, n, 1.0);
  for (int64_t i = 0; i < n; ++i) probs_out[i] *= inv_sum;
}

AliasTable build_alias_table(const double* probs, int64_t n, const char* name) {
  checked_max(probs, n, name);
  if (std::fabs(scaled_sum(probs, n, 1.0) - 1.0) > 1e-6) fail(name, "must sum to 1");

  AliasTable t;
  t.mass = HugeBuffer<uint64_t>(static_cast<size_t>(n));
  t.entries = HugeBuffer<uint64_t>(static_cast<size_t>(n));
  uint64_t* mass = t.mass.data();

  // Integer masses m_i = round(p_i * V * 2^32); the largest class absorbs the
  // rounding residual so that they sum to V * 2^32 exactly.
  const double scale = static_cast<double>(n) * static_cast<double>(kBucketMass);
  unsigned __int128 total = 0;
  int64_t argmax = 0;
  uint64_t max_mass = 0;
  int64_t positive = 0;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t m = static_cast<uint64_t>(std::nearbyint(probs[k] * scale));
    mass[k] = m;
    total += m;
    positive += m > 0;
    const bool larger = m > max_mass;
    max_mass = larger ? m : max_mass;
    argmax = larger ? k : argmax;
  }
  const unsigned __int128 target = static_cast<unsigned __int128>(t.total_mass());
  if (total > target) {
    mass[argmax] -= static_cast<uint64_t>(total - target);
  } else {
    mass[argmax] += static_cast<uint64_t>(target - total);
  }
  t.num_positive = positive;

  // Vose's pairing on integers. `work` holds the small buckets growing from the
  // front and the large ones growing from the back; the remaining mass of a
  // class is kept in its entry's word until the bucket is finished.
  HugeBuffer<uint32_t> work(static_cast<size_t>(n));
  uint64_t* rest = t.entries.data();
  int64_t ns = 0, nl = n;
  for (int64_t k = 0; k < n; ++k) {
    // Branch-free: write k to both stacks' next slots, advance only one. The
    // stray write lands in a slot that the other stack overwrites later or
    // that lies between the two stacks.
    rest[k] = mass[k];
    const bool small = mass[k] < kBucketMass;
    work[static_cast<size_t>(ns)] = static_cast<uint32_t>(k);
    work[static_cast<size_t>(nl - 1)] = static_cast<uint32_t>(k);
    ns += small;
    nl -= !small;
  }
  // Invariant: small stack work[0, ns), large stack work[nl, n).
  while (ns > 0 && nl < n) {
    const uint32_t s = work[static_cast<size_t>(--ns)];
    const uint32_t l = work[static_cast<size_t>(nl)];
    const uint64_t keep = rest[s];
    rest[s] = (static_cast<uint64_t>(l) << 32) | keep;  // finished: alias l, threshold keep
    rest[l] -= kBucketMass - keep;
    if (rest[l] < kBucketMass) {
      ++nl;
      work[static_cast<size_t>(ns++)] = l;
    }
  }
  // Exact integer masses leave only full buckets: each keeps itself.
  for (int64_t k = nl; k < n; ++k) {
    const uint64_t l = work[static_cast<size_t>(k)];
    rest[l] = (l << 32) | 0xFFFFFFFFull;
  }
  if (ns != 0) throw std::logic_error("alias table: unpaired small bucket (bug)");
  return t;
}

}  // namespace pyneg

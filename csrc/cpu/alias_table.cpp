#include "cpu/alias_table.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace pyneg {

namespace {
[[noreturn]] void fail(const char* name, const std::string& what) {
  throw std::invalid_argument(std::string(name) + " " + what);
}
}  // namespace

AliasTable build_alias_table(const double* weights, int64_t n, const char* name,
                             double* probs_out) {
  if (n <= 0) fail(name, "must not be empty");
  if (n > kMaxClasses) fail(name, "has more than 2^31 - 1 classes");

  // Pass 1: validate and find the largest weight, so that the sum below is
  // taken over w / max and cannot overflow for huge finite weights.
  double wmax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double w = weights[i];
    if (!(w >= 0.0) || !std::isfinite(w)) {
      fail(name, "must be finite and non-negative (entry " + std::to_string(i) + " is " +
                     std::to_string(w) + ")");
    }
    wmax = w > wmax ? w : wmax;
  }
  if (wmax == 0.0) fail(name, "must have a positive sum (all weights are zero)");

  // Pass 2: sum of w / wmax with four accumulators (ILP and a smaller error).
  const double inv_max = 1.0 / wmax;
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) acc[j] += weights[i + j] * inv_max;
  for (; i < n; ++i) acc[0] += weights[i] * inv_max;
  const double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);

  AliasTable t;
  t.mass.resize(static_cast<size_t>(n));
  t.entries.resize(static_cast<size_t>(n));
  uint64_t* mass = t.mass.data();

  // Pass 3: integer masses m_i = round(p_i * V * 2^32); track their sum and the
  // largest class, which absorbs the rounding residual.
  const double scale = static_cast<double>(n) * static_cast<double>(kBucketMass);
  const double inv_sum = 1.0 / sum;
  unsigned __int128 total = 0;
  int64_t argmax = 0;
  int64_t positive = 0;
  for (int64_t k = 0; k < n; ++k) {
    const double p = weights[k] * inv_max * inv_sum;
    if (probs_out) probs_out[k] = p;
    const uint64_t m = static_cast<uint64_t>(std::nearbyint(p * scale));
    mass[k] = m;
    total += m;
    argmax = m > mass[argmax] ? k : argmax;
  }
  const unsigned __int128 target = static_cast<unsigned __int128>(t.total_mass());
  if (total > target) {
    mass[argmax] -= static_cast<uint64_t>(total - target);
  } else {
    mass[argmax] += static_cast<uint64_t>(target - total);
  }
  for (int64_t k = 0; k < n; ++k) positive += mass[k] > 0;
  t.num_positive = positive;

  // Pass 4: Vose's pairing on integers. `work` holds small buckets growing from
  // the front and large ones growing from the back; `rest` is the remaining
  // mass of each bucket's class.
  std::vector<uint32_t> work(static_cast<size_t>(n));
  std::vector<uint64_t> rest(mass, mass + n);
  int64_t ns = 0, nl = n;
  for (int64_t k = 0; k < n; ++k) {
    if (rest[k] < kBucketMass) {
      work[ns++] = static_cast<uint32_t>(k);
    } else {
      work[--nl] = static_cast<uint32_t>(k);
    }
  }
  uint64_t* entries = t.entries.data();
  // Invariant: small stack work[0, ns), large stack work[nl, n).
  while (ns > 0 && nl < n) {
    const uint32_t s = work[--ns];
    const uint32_t l = work[nl];
    entries[s] = (static_cast<uint64_t>(l) << 32) | rest[s];
    rest[l] -= kBucketMass - rest[s];
    if (rest[l] < kBucketMass) {
      ++nl;
      work[ns++] = l;
    }
  }
  // Exact integer masses leave only full buckets: each keeps itself.
  for (int64_t k = nl; k < n; ++k) {
    const uint64_t l = work[k];
    entries[l] = (l << 32) | 0xFFFFFFFFull;
  }
  if (ns != 0) throw std::logic_error("alias table: unpaired small bucket (bug)");
  return t;
}

}  // namespace pyneg

#include "cpu/alias_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "cpu/parallel.h"

namespace pyneg {

namespace {

[[noreturn]] void fail(const char* name, const std::string& what) {
  throw std::invalid_argument(std::string(name) + " " + what);
}

// Work is split into fixed blocks (not per thread), and block results are
// combined in block order, so the table is the same whatever the thread count.
constexpr int64_t kBlock = int64_t{1} << 16;

int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

template <class Fn>
void for_blocks(int64_t n, int num_threads, Fn&& fn) {
  const int64_t nb = num_blocks(n);
  parallel_for(nb, num_threads, 8, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b, b * kBlock, std::min(n, (b + 1) * kBlock));
  });
}

struct BlockCheck {
  double max = 0.0;
  int64_t bad = -1;  // first invalid entry of the block
};

}  // namespace

void copy_weights(const double* weights, int64_t n, uint64_t* dst, int num_threads) {
  for_blocks(n, num_threads, [&](int64_t, int64_t i0, int64_t i1) {
    std::memcpy(dst + i0, weights + i0, static_cast<size_t>(i1 - i0) * sizeof(double));
  });
}

AliasTable build_alias_table(const double* weights, int64_t n, const char* name, int num_threads) {
  check_table_size(n, name);
  HugeBuffer<uint64_t> words(static_cast<size_t>(n));
  copy_weights(weights, n, words.data(), num_threads);
  return build_alias_table_in_place(std::move(words), name, num_threads);
}

void check_table_size(int64_t n, const char* name) {
  if (n <= 0) fail(name, "must not be empty");
  if (n > kMaxClasses) fail(name, "has more than 2^31 - 1 classes (" + std::to_string(n) + ")");
}

AliasTable build_alias_table_in_place(HugeBuffer<uint64_t> words, const char* name, int num_threads) {
  const auto n = static_cast<int64_t>(words.size());
  check_table_size(n, name);
  AliasTable t;
  t.entries = std::move(words);
  uint64_t* word = t.entries.data();
  const int64_t nb = num_blocks(n);

  // Pass 1: check the copy (the caller's memory is never read again) and take
  // the largest weight of each block.
  std::vector<BlockCheck> checks(static_cast<size_t>(nb));
  for_blocks(n, num_threads, [&](int64_t b, int64_t i0, int64_t i1) {
    double mx = 0.0;
    bool ok = true;
    for (int64_t i = i0; i < i1; ++i) {
      double x;
      std::memcpy(&x, word + i, sizeof x);
      ok &= (x >= 0.0) & (x <= std::numeric_limits<double>::max());  // false for NaN, inf, < 0
      mx = x > mx ? x : mx;
    }
    BlockCheck c{mx, -1};
    if (!ok) {
      for (int64_t i = i0; i < i1; ++i) {
        double x;
        std::memcpy(&x, word + i, sizeof x);
        if (!(x >= 0.0) || !std::isfinite(x)) { c.bad = i; break; }
      }
    }
    checks[static_cast<size_t>(b)] = c;
  });
  double wmax = 0.0;
  for (const BlockCheck& c : checks) {
    if (c.bad >= 0) {
      double x;
      std::memcpy(&x, word + c.bad, sizeof x);
      fail(name, "must be finite and non-negative (entry " + std::to_string(c.bad) + " is " +
                     std::to_string(x) + ")");
    }
    wmax = std::max(wmax, c.max);
  }
  if (wmax == 0.0) fail(name, "must have a positive sum (all entries are zero)");

  // Scale by a power of two f = f1 * f2 (exact) so the largest weight is in [1, 2):
  // neither huge weights overflow the sum nor subnormal ones lose their bits.
  const int e = -std::ilogb(wmax);
  const int e1 = std::min(e, 1000);
  const double f1 = std::ldexp(1.0, e1), f2 = std::ldexp(1.0, e - e1);

  // Pass 2: block sums (8 accumulators: relative error <= 2^-40 per block),
  // combined in block order with Neumaier's compensation.
  std::vector<double> sums(static_cast<size_t>(nb));
  for_blocks(n, num_threads, [&](int64_t b, int64_t i0, int64_t i1) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8)
      for (int j = 0; j < 8; ++j) {
        double x;
        std::memcpy(&x, word + i + j, sizeof x);
        acc[j] += x * f1 * f2;
      }
    for (; i < i1; ++i) {
      double x;
      std::memcpy(&x, word + i, sizeof x);
      acc[0] += x * f1 * f2;
    }
    sums[static_cast<size_t>(b)] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  });
  double s = 0.0, c = 0.0;
  for (double x : sums) {
    const double tt = s + x;
    c += std::fabs(s) >= std::fabs(x) ? (s - tt) + x : (x - tt) + s;
    s = tt;
  }
  const double total_sum = s + c;  // in [1, 2n)
  const double scale = static_cast<double>(n) * static_cast<double>(kBucketMass) / total_sum;
  const double g2 = f2 * scale;

  // Pass 3: integer masses m_i = round(w_i * V * 2^32 / sum), in place.
  struct BlockMass {
    unsigned __int128 total = 0;
    int64_t positive = 0;
    int64_t argmax = 0;
    uint64_t max = 0;
  };
  std::vector<BlockMass> blocks(static_cast<size_t>(nb));
  for_blocks(n, num_threads, [&](int64_t b, int64_t i0, int64_t i1) {
    BlockMass r;
    r.argmax = i0;
    for (int64_t i = i0; i < i1; ++i) {
      double x;
      std::memcpy(&x, word + i, sizeof x);
      const uint64_t m = static_cast<uint64_t>(static_cast<int64_t>(x * f1 * g2 + 0.5));
      word[i] = m;
      const unsigned __int128 before = r.total;
      r.total = before + m;
      r.positive += m > 0;
      const bool larger = m > r.max;
      r.max = larger ? m : r.max;
      r.argmax = larger ? i : r.argmax;
    }
    blocks[static_cast<size_t>(b)] = r;
  });
  unsigned __int128 total = 0;
  int64_t argmax = 0, positive = 0;
  uint64_t max_mass = 0;
  for (const BlockMass& r : blocks) {
    total += r.total;
    positive += r.positive;
    if (r.max > max_mass) { max_mass = r.max; argmax = r.argmax; }
  }
  // The largest class absorbs the rounding residual (|residual| <= about V / 2
  // + 2^-39 of the total): masses then sum to V * 2^32 exactly.
  const unsigned __int128 target = static_cast<unsigned __int128>(t.total_mass());
  if (total > target) {
    word[argmax] -= static_cast<uint64_t>(total - target);
  } else {
    word[argmax] += static_cast<uint64_t>(target - total);
  }
  if (word[argmax] == 0) positive -= 1;  // (impossible in practice: the largest mass is >= 2^32)
  t.num_positive = positive;

  // Pass 4: Vose's pairing on integers, in place. `work` holds the small
  // buckets growing from the front and the large ones growing from the back;
  // the remaining mass of a class stays in its word until the bucket is finished.
  HugeBuffer<uint32_t> work(static_cast<size_t>(n));
  uint64_t* rest = word;
  int64_t ns = 0, nl = n;
  for (int64_t k = 0; k < n; ++k) {
    // Branch-free: write k to both stacks' next slots, advance only one. The
    // stray write lands in a slot that the other stack overwrites later or
    // that lies between the two stacks.
    const bool small = rest[k] < kBucketMass;
    work[static_cast<size_t>(ns)] = static_cast<uint32_t>(k);
    work[static_cast<size_t>(nl - 1)] = static_cast<uint32_t>(k);
    ns += small;
    nl -= !small;
  }
  // Invariant: small stack work[0, ns), large stack work[nl, n).
  while (ns > 0 && nl < n) {
    const uint32_t sm = work[static_cast<size_t>(--ns)];
    const uint32_t l = work[static_cast<size_t>(nl)];
    const uint64_t keep = rest[sm];
    rest[sm] = (static_cast<uint64_t>(l) << 32) | keep;  // finished: alias l, threshold keep
    rest[l] -= kBucketMass - keep;
    if (rest[l] < kBucketMass) {
      ++nl;
      work[static_cast<size_t>(ns++)] = l;
    }
  }
  // Exact integer masses leave only full buckets: each keeps itself (a coin of
  // 2^32 - 1 goes to the alias, which is the bucket itself).
  for (int64_t k = nl; k < n; ++k) {
    const uint64_t l = work[static_cast<size_t>(k)];
    rest[l] = (l << 32) | 0xFFFFFFFFull;
  }
  if (ns != 0) throw std::logic_error("alias table: unpaired small bucket (bug)");
  return t;
}

void check_alias_entries(const uint64_t* entries, int64_t n, const char* name) {
  uint64_t worst = 0;
  for (int64_t j = 0; j < n; ++j) worst = std::max(worst, entries[j] >> 32);
  if (worst >= static_cast<uint64_t>(n)) {
    int64_t j = 0;
    while ((entries[j] >> 32) < static_cast<uint64_t>(n)) ++j;
    throw std::invalid_argument(std::string(name) + " is not an alias table: entry " + std::to_string(j) +
                                " has alias " + std::to_string(entries[j] >> 32) + " >= V = " +
                                std::to_string(n));
  }
}

int64_t class_masses(const uint64_t* entries, int64_t n, uint64_t* m) {
  check_alias_entries(entries, n, "entries");
  std::fill(m, m + n, uint64_t{0});
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t e = entries[j];
    const uint64_t thr = e & 0xFFFFFFFFull;
    m[j] += thr;
    m[e >> 32] += kBucketMass - thr;
  }
  int64_t positive = 0;
  for (int64_t j = 0; j < n; ++j) positive += m[j] > 0;
  return positive;
}

}  // namespace pyneg

#include "cpu/sparse_ids.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "cpu/parallel.h"

namespace pyneg {

namespace {

constexpr int64_t kGrain = int64_t{1} << 15;

[[noreturn]] void out_of_range(const char* name, int64_t id, int64_t v, bool allow_padding) {
  throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(id) + " outside [0, " +
                              std::to_string(v) + ")" + (allow_padding ? " (use -1 for padding)" : ""));
}

}  // namespace

void check_sparse_ids(const int64_t* ids, int64_t n, int64_t v, const char* name) {
  if (n <= 0) throw std::invalid_argument(std::string(name) + " must not be empty");
  if (ids[0] < 0 || ids[n - 1] >= v) out_of_range(name, ids[0] < 0 ? ids[0] : ids[n - 1], v, false);
  int64_t bad = 0;  // branch-free scan; the position is found only on failure
  for (int64_t i = 1; i < n; ++i) bad |= static_cast<int64_t>(ids[i] <= ids[i - 1]);
  if (!bad) return;
  int64_t i = 1;
  while (ids[i] > ids[i - 1]) ++i;
  if (ids[i] == ids[i - 1])
    throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(ids[i]) +
                                " twice (each id may carry one weight)");
  throw std::invalid_argument(std::string(name) + " must be sorted in increasing order (entry " +
                              std::to_string(i) + " is " + std::to_string(ids[i]) + " after " +
                              std::to_string(ids[i - 1]) + ")");
}

void gather_sparse_ids(const int64_t* ids, int64_t n, int64_t v, int64_t* inout, int64_t m,
                       int num_threads) {
  std::atomic<bool> bad{false};
  parallel_for(m, num_threads, kGrain, [&, ids, n, v](int64_t b, int64_t e) {
    uint64_t worst = 0;
    for (int64_t j = b; j < e; ++j) {
      const uint64_t s = static_cast<uint64_t>(inout[j]);
      // An out-of-range slot reads slot 0 (never outside ids) and is reported.
      const bool slot_ok = s < static_cast<uint64_t>(n);
      const int64_t id = ids[slot_ok ? s : 0];
      worst |= static_cast<uint64_t>(!slot_ok) | static_cast<uint64_t>(static_cast<uint64_t>(id) >= static_cast<uint64_t>(v));
      inout[j] = id;
    }
    if (worst) bad = true;
  });
  if (bad)
    throw std::invalid_argument("ids is not a sparse sampler's id array: a drawn slot maps outside [0, " +
                                std::to_string(v) + ") (was a mapped table file modified?)");
}

void lookup_sparse_ids(const int64_t* ids, int64_t n, int64_t v, const int64_t* query, int64_t m,
                       int64_t* slots, bool allow_padding, const char* name, int num_threads) {
  // Range first (the error names the first bad id whatever the thread count).
  for (int64_t j = 0; j < m; ++j) {
    const int64_t q = query[j];
    if ((q < 0 && !(allow_padding && q == -1)) || q >= v) out_of_range(name, q, v, allow_padding);
  }
  parallel_for(m, num_threads, kGrain / 8, [&, ids, n](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const int64_t q = query[j];
      const int64_t* p = std::lower_bound(ids, ids + n, q);
      slots[j] = (q >= 0 && p != ids + n && *p == q) ? static_cast<int64_t>(p - ids) : -1;
    }
  });
}

}  // namespace pyneg

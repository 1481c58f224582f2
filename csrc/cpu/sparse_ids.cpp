#include "cpu/sparse_ids.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/parallel.h"

namespace pyneg {

namespace {

constexpr int64_t kGrain = int64_t{1} << 15;
// Lookups run in lockstep groups, and gathers prefetch this far ahead: an id
// array of a large catalogue lives in DRAM, so each step of a binary search and
// each gathered id is a cache miss; many in flight hide their latency.
constexpr int kLanes = 16;

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
      if (j + kLanes < e) {
        const uint64_t ahead = static_cast<uint64_t>(inout[j + kLanes]);
        __builtin_prefetch(ids + (ahead < static_cast<uint64_t>(n) ? ahead : 0));
      }
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

namespace {

// The ids of query[b, e) checked in [0, v) (-1 too with allow_padding); throws naming `name`.
void check_query(const int64_t* query, int64_t m, int64_t v, bool allow_padding, const char* name) {
  for (int64_t j = 0; j < m; ++j) {
    const int64_t q = query[j];
    if ((q < 0 && !(allow_padding && q == -1)) || q >= v) out_of_range(name, q, v, allow_padding);
  }
}

// emit(j, slot) for every j in [b, e): the slot of query[j] in ids, -1 when absent.
// Branch-free lower bound (base moves by half while base[half] < q), kLanes
// queries in lockstep: every lane takes the same number of steps (they depend
// on n alone), and the next step's two possible probes are prefetched, so the
// misses of all lanes overlap (6x np.searchsorted for 10^7 ids in DRAM).
template <class Emit>
void lookup_range(const int64_t* ids, int64_t n, const int64_t* query, int64_t b, int64_t e, Emit&& emit) {
  const int64_t* base[kLanes];
  int64_t q[kLanes];
  for (int64_t j = b; j < e; j += kLanes) {
    const int lanes = static_cast<int>(std::min<int64_t>(kLanes, e - j));
    for (int i = 0; i < lanes; ++i) {
      base[i] = ids;
      q[i] = query[j + i];
    }
    for (int64_t len = n; len > 1;) {
      const int64_t half = len / 2;
      const int64_t next = (len - half) / 2;
      for (int i = 0; i < lanes; ++i) {
        __builtin_prefetch(base[i] + next);
        __builtin_prefetch(base[i] + half + next);
      }
      for (int i = 0; i < lanes; ++i) base[i] = base[i][half] < q[i] ? base[i] + half : base[i];
      len -= half;
    }
    for (int i = 0; i < lanes; ++i) {
      const int64_t* p = base[i] + (base[i][0] < q[i]);  // the lower bound, in [ids, ids + n]
      emit(j + i, (q[i] >= 0 && p != ids + n && *p == q[i]) ? static_cast<int64_t>(p - ids) : int64_t{-1});
    }
  }
}

}  // namespace

void lookup_sparse_ids(const int64_t* ids, int64_t n, int64_t v, const int64_t* query, int64_t m,
                       int64_t* slots, bool allow_padding, const char* name, int num_threads) {
  check_query(query, m, v, allow_padding, name);  // first: the error names the first bad id
  parallel_for(m, num_threads, kGrain / 8, [&, ids, n](int64_t b, int64_t e) {
    lookup_range(ids, n, query, b, e, [slots](int64_t j, int64_t s) { slots[j] = s; });
  });
}

void sparse_log_prob(const int64_t* ids, const uint64_t* mass, int64_t n, int64_t v, const int64_t* query,
                     int64_t m, double* out, const char* name, int num_threads) {
  check_query(query, m, v, false, name);
  const double total = static_cast<double>(n) * 4294967296.0;  // n * 2^32, as the dense tables' log_prob
  parallel_for(m, num_threads, kGrain / 8, [&, ids, mass, n, total](int64_t b, int64_t e) {
    lookup_range(ids, n, query, b, e, [&](int64_t j, int64_t s) {
      const double p = s < 0 ? 0.0 : static_cast<double>(mass[s]) / total;
      out[j] = std::log(p);  // log(0) = -inf: an id of weight 0
    });
  });
}

}  // namespace pyneg

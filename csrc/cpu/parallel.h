// A minimal fork-join helper: split [0, n) into contiguous chunks and run them
// on std::threads. Results never depend on the split because every kernel
// derives its randomness from absolute positions (see philox.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace pyneg {

// Runs fn(begin, end) over [0, n) on up to num_threads threads, giving each
// chunk at least `grain` items. Rethrows the first exception in the caller.
template <class Fn>
void parallel_for(int64_t n, int num_threads, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(std::max(num_threads, 1), (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  workers.reserve(static_cast<size_t>(chunks - 1));
  const int64_t step = (n + chunks - 1) / chunks;
  auto run = [&](int64_t c) {
    const int64_t b = c * step, e = std::min(n, b + step);
    try {
      if (b < e) fn(b, e);
    } catch (...) {
      errors[static_cast<size_t>(c)] = std::current_exception();
    }
  };
  for (int64_t c = 1; c < chunks; ++c) workers.emplace_back(run, c);
  run(0);
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace pyneg

// A minimal fork-join helper: split [0, n) into contiguous chunks and run them
// on a persistent pool of worker threads (parallel.cpp). Results never depend
// on which thread runs a chunk: the chunk boundaries are a pure function of
// (n, num_threads, grain), exactly as when every call started its own threads,
// and every kernel derives its randomness from absolute positions (philox.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <vector>

namespace pyneg {

namespace detail {

// task(ctx, c) for one chunk c; must not throw (parallel_for catches).
using ChunkTask = void (*)(void* ctx, int64_t chunk);

// Runs task(ctx, c) for every c in [0, chunks), on the pool's workers and the
// calling thread, and returns once all have run. Falls back to running the
// chunks one after the other in the caller when the pool is in use (a nested
// call from inside a chunk, or another thread's call at the same time), so
// it never waits on itself.
void run_chunks(int64_t chunks, ChunkTask task, void* ctx);

}  // namespace detail

// Worker threads the pool holds now (0 before the first parallel call).
int parallel_pool_size();

// Runs fn(begin, end) over [0, n) on up to num_threads threads, giving each
// chunk at least `grain` items. Rethrows the caller the exception of the
// lowest-numbered chunk that threw (the same one whatever the scheduling).
template <class Fn>
void parallel_for(int64_t n, int num_threads, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(std::max(num_threads, 1), (n + grain - 1) / grain);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  const int64_t step = (n + chunks - 1) / chunks;
  auto run = [&](int64_t c) {
    const int64_t b = c * step, e = std::min(n, b + step);
    try {
      if (b < e) fn(b, e);
    } catch (...) {
      errors[static_cast<size_t>(c)] = std::current_exception();
    }
  };
  detail::run_chunks(
      chunks, [](void* ctx, int64_t c) { (*static_cast<decltype(run)*>(ctx))(c); }, &run);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace pyneg

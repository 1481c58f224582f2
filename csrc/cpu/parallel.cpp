// The persistent thread pool behind parallel_for (parallel.h).
//
// Why a pool: starting and joining std::threads on every call cost tens of
// microseconds, which small calls in a training loop (a few thousand draws,
// one HS batch) paid on every step. Workers now start once, on the first
// parallel call that needs them, and sleep on a condition variable between
// calls.
//
// What keeps it safe:
// - Chunks are claimed from an atomic counter by the caller and the workers
//   alike, and the caller always claims too, so every chunk runs even if no
//   worker wakes up (or none could be started): worker count never changes
//   results, only speed.
// - One caller at a time owns the workers (busy_, taken with try_lock).
//   Another thread's call meanwhile, or a nested call from inside a chunk,
//   runs its chunks inline instead of waiting: nothing ever waits on the pool
//   while holding it, so it cannot deadlock.
// - fork(): the child has none of the parent's threads, and the pool's mutexes
//   may have been held when it forked. A pthread_atfork child handler sets the
//   pool aside (never touched again) and the child's next parallel call makes
//   a fresh one.
// - The pool is never destroyed: at exit, workers may still sleep on its
//   condition variable, and destroying it (or a joinable std::thread) under
//   them would be undefined behaviour or std::terminate.
#include "cpu/parallel.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace pyneg {
namespace detail {
namespace {

// More workers than this buy nothing but memory; chunks beyond the worker
// count are still run (by whoever is free), so results are unaffected.
constexpr int64_t kMaxWorkers = 256;

// True on a pool worker, and on a caller while it runs its own job's chunks:
// a parallel_for from there runs inline (the pool is this job's already).
thread_local bool t_in_pool = false;

struct Job {
  ChunkTask task;
  void* ctx;
  int64_t chunks;
  std::atomic<int64_t> next{0};  // the next chunk to claim
  std::atomic<int64_t> done{0};  // chunks finished

  void drain() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      task(ctx, c);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

class Pool {
 public:
  Pool* abandoned_next = nullptr;  // pools set aside by fork (kept reachable)

  // Runs the job on the workers and the caller; false (nothing run) when
  // another thread owns the workers now.
  bool try_run(int64_t chunks, ChunkTask task, void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    grow(std::min<int64_t>(chunks - 1, kMaxWorkers));
    Job job{task, ctx, chunks};
    int64_t woken;
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &job;
      ++generation_;
      woken = std::min<int64_t>(chunks - 1, static_cast<int64_t>(threads_.size()));
    }
    for (int64_t i = 0; i < woken; ++i) wake_.notify_one();
    t_in_pool = true;
    job.drain();
    t_in_pool = false;
    // The job lives on this stack frame: wait until every chunk is done and
    // no worker still holds a pointer to it.
    std::unique_lock<std::mutex> lk(m_);
    idle_.wait(lk, [&] { return job.done.load(std::memory_order_acquire) == chunks; });
    job_ = nullptr;  // workers that wake from now on find no job
    idle_.wait(lk, [&] { return users_ == 0; });
    return true;
  }

  int size() {
    std::lock_guard<std::mutex> lk(m_);
    return static_cast<int>(threads_.size());
  }

 private:
  // Starts workers up to `want`; keeps what it has if the system refuses more
  // threads (the caller runs the chunks no worker takes).
  void grow(int64_t want) {
    std::lock_guard<std::mutex> lk(m_);
    if (static_cast<int64_t>(threads_.size()) >= want) return;
    // Workers inherit this mask: asynchronous signals (SIGINT, SIGCHLD, ...)
    // then go to the process's own threads, where Python handles them; faults
    // stay deliverable to the thread that caused them.
    sigset_t all, old;
    sigfillset(&all);
    for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&all, s);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    while (static_cast<int64_t>(threads_.size()) < want) {
      try {
        threads_.emplace_back([this, seen = generation_] { work(seen); });
      } catch (...) {  // std::system_error (no more threads) or std::bad_alloc
        break;
      }
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }

  void work(uint64_t seen) {
    t_in_pool = true;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      wake_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      Job* job = job_;
      if (job == nullptr) continue;  // the caller finished that job alone
      ++users_;
      lk.unlock();
      job->drain();
      lk.lock();
      --users_;
      idle_.notify_one();  // only the owning caller waits on idle_
    }
  }

  std::mutex busy_;               // held by the caller that owns the workers
  std::mutex m_;                  // guards everything below
  std::condition_variable wake_;  // workers: a new job (generation_ moved)
  std::condition_variable idle_;  // caller: chunks done, users_ back to 0
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int users_ = 0;  // workers inside job_->drain()
  std::vector<std::thread> threads_;
};

std::atomic<Pool*> g_pool{nullptr};
Pool* g_abandoned = nullptr;

// Runs in the child right after fork(), single-threaded: the parent's workers
// are gone and its pool's mutexes may be locked forever.
void forget_pool_in_child() {
  Pool* p = g_pool.exchange(nullptr);
  if (p != nullptr) {
    p->abandoned_next = g_abandoned;
    g_abandoned = p;
  }
}

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  static const int registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child);
  (void)registered;
  // Two threads may race to make the first pool: one wins, the other's goes.
  Pool* fresh = new Pool;
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
  delete fresh;
  return p;
}

}  // namespace

void run_chunks(int64_t chunks, ChunkTask task, void* ctx) {
  if (!t_in_pool && pool()->try_run(chunks, task, ctx)) return;
  for (int64_t c = 0; c < chunks; ++c) task(ctx, c);
}

}  // namespace detail

int parallel_pool_size() {
  detail::Pool* p = detail::g_pool.load(std::memory_order_acquire);
  return p == nullptr ? 0 : p->size();
}

}  // namespace pyneg

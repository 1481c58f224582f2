#include "cpu/skipgram.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <thread>
#include <numeric>
#include <stdexcept>
#include <string>

#include "cpu/hsoftmax.h"
#include "cpu/parallel.h"
#include "cpu/philox.h"

namespace pyneg {

namespace {

void check_range(const int64_t* ids, int64_t n, int64_t bound, const char* name) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= bound) {
      throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(ids[i]) +
                                  " outside [0, " + std::to_string(bound) + ")");
    }
  }
}

// Private copies of ids a caller hands in (and another thread may write while
// the GIL is released): checked after copying, read only from the copy, so an
// id can never change between its check and its use.
std::vector<int64_t> private_ids(const int64_t* ids, int64_t n, int64_t bound, const char* name) {
  std::vector<int64_t> copy(ids, ids + n);
  check_range(copy.data(), n, bound, name);
  return copy;
}

// a with its id arrays replaced by checked private copies held in `store`.
template <class T>
SGNSBatch<T> private_batch(const SGNSBatch<T>& a, std::vector<int64_t> (&store)[3]) {
  store[0] = private_ids(a.centres, a.batch, a.num_input, "centres");
  store[1] = private_ids(a.contexts, a.batch, a.num_output, "contexts");
  store[2] = private_ids(a.negatives, a.batch * a.k, a.num_output, "negatives");
  SGNSBatch<T> b = a;
  b.centres = store[0].data();
  b.contexts = store[1].data();
  b.negatives = store[2].data();
  return b;
}

// A board of tasks for one whole SGD call (many mini-batches, two stages
// each), shared by a team of threads. Stage s has tasks(s) tasks; a thread
// claims the next unclaimed task of the current stage, runs it, and the thread
// that finishes the stage's last task runs the stage's epilogue and opens the
// next stage. No thread ever waits for another *thread*: a stage waits only
// for its claimed tasks, so a worker the OS does not schedule claims nothing
// and holds nobody up (the others, or the caller alone, run every task). The
// work of each task is a pure function of (stage, task), so the results do not
// depend on which thread runs which task, nor on the team's size.
//
// The ticket packs (stage << 32 | next task); a claim is a compare-and-swap on
// the whole word, so a stale claim of a finished stage fails. A thread with
// nothing to claim spins briefly, then sleeps on a condition variable (a
// waiting thread frees its core for the ones with work).
//
// A worker the OS preempts while it *holds* a task still stalls its stage.
// So the team watches itself: every kWindow stages, the thread finishing a
// stage compares the window's wall time with the summed time the threads
// spent running tasks (their CPU time: a thread preempted inside a task is
// not working); when the team is no faster than that sum (no thread ran in
// parallel with another, as on a machine with more runnable threads than
// cores), the workers stop claiming and the caller finishes the call alone. Who runs a task never changes its result, so neither does this.
class TaskBoard {
 public:
  // tasks(s) for stage s in [0, stages); run(s, t) runs task t of stage s;
  // finish(s) runs once, after all of stage s's tasks, before stage s + 1.
  template <class Tasks, class Run, class Finish>
  static void run_team(int threads, uint32_t stages, Tasks tasks, Run run, Finish finish) {
    TaskBoard board;
    board.team_ = threads > 1;
    board.window_start_ = Clock::now();
    std::vector<std::thread> workers;
    if (stages > 0) {
      workers.reserve(static_cast<size_t>(std::max(threads - 1, 0)));
      for (int t = 1; t < threads; ++t) workers.emplace_back([&] { board.work(false, stages, tasks, run, finish); });
    }
    board.work(true, stages, tasks, run, finish);
    for (auto& w : workers) w.join();
  }

 private:
  using Clock = std::chrono::steady_clock;

  static int64_t ns(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }

  // CPU time of the calling thread: time a thread spends preempted inside a
  // task is not work, and must not make a stalled team look parallel.
  static int64_t thread_cpu_ns() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
    timespec ts{};
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
#endif
    return ns(Clock::now().time_since_epoch());
  }

  template <class Tasks, class Run, class Finish>
  void work(bool caller, uint32_t stages, Tasks& tasks, Run& run, Finish& finish) {
    for (;;) {
      if (!caller && solo_.load(std::memory_order_relaxed)) return;  // the caller finishes alone
      uint64_t t = ticket_.load(std::memory_order_acquire);
      const uint32_t stage = static_cast<uint32_t>(t >> 32);
      if (stage >= stages) return;
      const uint64_t count = static_cast<uint64_t>(tasks(stage));
      if ((t & 0xffffffffu) < count) {
        if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
        const int64_t start = team_ ? thread_cpu_ns() : 0;
        run(stage, static_cast<int64_t>(t & 0xffffffffu));
        if (team_) work_ns_.fetch_add(thread_cpu_ns() - start, std::memory_order_relaxed);
        if (static_cast<uint64_t>(done_.fetch_add(1, std::memory_order_acq_rel)) + 1 == count) {
          finish(stage);
          if (team_ && !solo_.load(std::memory_order_relaxed) && ++window_stages_ == kWindow) {
            // Finishers run one after the other (stage order), so the window's fields need no lock.
            const Clock::time_point now = Clock::now();
            const int64_t wall = ns(now - window_start_), busy = work_ns_.exchange(0, std::memory_order_relaxed);
            if (10 * wall > 9 * busy) solo_.store(true, std::memory_order_relaxed);
            window_start_ = now;
            window_stages_ = 0;
          }
          done_.store(0, std::memory_order_relaxed);
          ticket_.store(static_cast<uint64_t>(stage + 1) << 32, std::memory_order_seq_cst);
          if (sleepers_.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(mutex_); }
            wake_.notify_all();
          }
        }
        continue;
      }
      wait_past(stage);
    }
  }

  void wait_past(uint32_t stage) {
    auto moved = [&] { return static_cast<uint32_t>(ticket_.load(std::memory_order_acquire) >> 32) != stage; };
    for (int spin = 0; spin < kSpins; ++spin) {
      if (moved()) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return static_cast<uint32_t>(ticket_.load(std::memory_order_seq_cst) >> 32) != stage; });
    }
    sleepers_.fetch_sub(1, std::memory_order_seq_cst);
  }

  static constexpr int kSpins = 2000;  // a few microseconds
  static constexpr uint32_t kWindow = 16;  // stages (8 mini-batches) per check of the team's speed-up
  bool team_ = false;
  std::atomic<bool> solo_{false};
  std::atomic<int64_t> work_ns_{0};
  Clock::time_point window_start_;
  uint32_t window_stages_ = 0;
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace

#define PYNEG_SG_ISA generic
#include "cpu/skipgram_kernels.inc"
#undef PYNEG_SG_ISA

#if defined(__x86_64__) && defined(__GNUC__)
#define PYNEG_SG_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define PYNEG_SG_ISA avx2
#include "cpu/skipgram_kernels.inc"
#undef PYNEG_SG_ISA
#pragma GCC pop_options
#endif

namespace {

bool use_avx2() {
#ifdef PYNEG_SG_AVX2
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace

#ifdef PYNEG_SG_AVX2
#define PYNEG_SG_DISPATCH(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define PYNEG_SG_DISPATCH(fn, ...) generic::fn(__VA_ARGS__)
#endif

const char* skipgram_isa() { return use_avx2() ? "avx2" : "generic"; }

// ------------------------------------------------------------ pair generation
SkipGramPlan::SkipGramPlan(const SkipGramCorpus& c) {
  if (c.window < 1) throw std::invalid_argument("window must be >= 1, got " + std::to_string(c.window));
  if (c.window > (int64_t{1} << 30)) throw std::invalid_argument("window is too large");
  const int64_t bound = c.keep != nullptr ? c.vocab : INT64_MAX;
  const int64_t sentences = c.offsets != nullptr ? c.num_sentences : 1;
  // The caller's arrays may change under us (the GIL is released): offsets are
  // copied, then checked; each token is read once, and checked as it is read.
  std::vector<int64_t> offs;
  if (c.offsets != nullptr) {
    offs.assign(c.offsets, c.offsets + sentences);
    if (sentences > 0 && offs[0] != 0) throw std::invalid_argument("offsets must start at 0");
    for (int64_t s = 0; s < sentences; ++s) {
      if (offs[s] > c.n || (s > 0 && offs[s] < offs[s - 1])) {
        throw std::invalid_argument("offsets must be non-decreasing and at most len(tokens) = " +
                                    std::to_string(c.n));
      }
    }
  }
  ids_.reserve(static_cast<size_t>(c.n));
  reach_.reserve(static_cast<size_t>(c.n));
  sent_start_.reserve(static_cast<size_t>(sentences) + 1);
  const uint32_t k0 = static_cast<uint32_t>(c.seed), k1 = static_cast<uint32_t>(c.seed >> 32);
  for (int64_t s = 0; s < sentences; ++s) {
    const int64_t lo = c.offsets != nullptr ? offs[s] : 0;
    const int64_t hi = c.offsets == nullptr || s + 1 == sentences ? c.n : offs[s + 1];
    sent_start_.push_back(static_cast<int64_t>(ids_.size()));
    for (int64_t p = lo; p < hi; ++p) {
      const uint64_t pos = c.position + static_cast<uint64_t>(p);
      const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32), 0u,
                                         kTagSkipGram, k0, k1);
      const int64_t id = static_cast<const volatile int64_t*>(c.tokens)[p];  // one read
      if (id < 0 || id >= bound) {
        throw std::invalid_argument("tokens holds id " + std::to_string(id) + " outside [0, " +
                                    std::to_string(bound) + ")");
      }
      if (c.keep != nullptr) {
        const uint64_t bits = (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
        const double u = static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
        if (!(u < c.keep[id])) continue;
      }
      ids_.push_back(id);
      reach_.push_back(1 + static_cast<int32_t>((static_cast<uint64_t>(r.v[2]) * static_cast<uint64_t>(c.window)) >> 32));
    }
  }
  sent_start_.push_back(static_cast<int64_t>(ids_.size()));
  sent_pairs_.reserve(sent_start_.size());
  int64_t pairs = 0;
  for (size_t s = 0; s + 1 < sent_start_.size(); ++s) {
    sent_pairs_.push_back(pairs);
    const int64_t lo = sent_start_[s], hi = sent_start_[s + 1];
    for (int64_t i = lo; i < hi; ++i) {
      pairs += std::min<int64_t>(reach_[i], i - lo) + std::min<int64_t>(reach_[i], hi - 1 - i);
    }
  }
  sent_pairs_.push_back(pairs);
}

void SkipGramPlan::fill(int64_t* centres, int64_t* contexts) const {
  int64_t o = 0;
  for_each_pair([&](int64_t centre, int64_t context) {
    centres[o] = centre;
    contexts[o] = context;
    ++o;
  });
}

// ------------------------------------------------------- negative sampling
template <class T>
void sgns_check_ids(const SGNSBatch<T>& a) {
  check_range(a.centres, a.batch, a.num_input, "centres");
  check_range(a.contexts, a.batch, a.num_output, "contexts");
  check_range(a.negatives, a.batch * a.k, a.num_output, "negatives");
}

template <class T>
void sgns_forward(const SGNSBatch<T>& in, T* loss, T* coef, int num_threads) {
  std::vector<int64_t> store[3];
  const SGNSBatch<T> a = private_batch(in, store);
  PYNEG_SG_DISPATCH(sgns_forward_impl, a, loss, coef, num_threads);
}

template <class T>
void sgns_backward(const SGNSBatch<T>& in, const T* coef, const T* grad_loss, T* grad_input,
                   int64_t* touched_input, T* grad_output, int64_t* touched_output,
                   int num_threads, int64_t* num_touched_input, int64_t* num_touched_output) {
  std::vector<int64_t> store[3];
  const SGNSBatch<T> a = private_batch(in, store);
  PYNEG_SG_DISPATCH(sgns_backward_impl, a, coef, grad_loss, grad_input, touched_input, grad_output,
                    touched_output, num_threads, num_touched_input, num_touched_output);
}

template <class T>
double sgns_sgd(const SGNSBatch<T>& in, T* input, T* output, double lr_begin, double lr_end,
                int64_t step, bool compute_loss, int num_threads, bool hogwild) {
  std::vector<int64_t> store[3];
  const SGNSBatch<T> a = private_batch(in, store);
  return PYNEG_SG_DISPATCH(sgns_sgd_impl, a, input, output, lr_begin, lr_end, step, compute_loss, num_threads,
                           hogwild);
}

template <class T>
double hs_sgd(const HuffmanTree& tree, T* input, int64_t num_input, T* weight, T* bias, int64_t dim,
              const int64_t* centres, const int64_t* contexts, int64_t batch, double lr_begin,
              double lr_end, int64_t step, bool compute_loss, int num_threads, bool hogwild) {
  const std::vector<int64_t> c = private_ids(centres, batch, num_input, "centres");
  const std::vector<int64_t> x = private_ids(contexts, batch, tree.num_classes, "contexts");
  return PYNEG_SG_DISPATCH(hs_sgd_impl, tree, input, num_input, weight, bias, dim, c.data(), x.data(), batch,
                           lr_begin, lr_end, step, compute_loss, num_threads, hogwild);
}

#define PYNEG_INSTANTIATE_SG(T)                                                                      \
  template void sgns_check_ids<T>(const SGNSBatch<T>&);                                              \
  template void sgns_forward<T>(const SGNSBatch<T>&, T*, T*, int);                                   \
  template void sgns_backward<T>(const SGNSBatch<T>&, const T*, const T*, T*, int64_t*, T*, int64_t*, \
                                 int, int64_t*, int64_t*);                                           \
  template double sgns_sgd<T>(const SGNSBatch<T>&, T*, T*, double, double, int64_t, bool, int, bool); \
  template double hs_sgd<T>(const HuffmanTree&, T*, int64_t, T*, T*, int64_t, const int64_t*,        \
                            const int64_t*, int64_t, double, double, int64_t, bool, int, bool);

PYNEG_INSTANTIATE_SG(float)
PYNEG_INSTANTIATE_SG(double)

#undef PYNEG_INSTANTIATE_SG

}  // namespace pyneg

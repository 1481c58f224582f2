#include "cpu/skipgram.h"

#include <algorithm>
#include <atomic>
#include <chrono>
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

// A team of threads kept for one whole SGD call (many mini-batches, two
// phases each), so a phase costs a barrier rather than a thread start. The
// barrier spins briefly (the other threads are usually microseconds away),
// then sleeps on a condition variable: on a machine with more runnable
// threads than cores a waiting thread gives its core to the thread it waits
// for instead of burning its share of the CPU in yields.
class Team {
 public:
  explicit Team(int size) : size_(size) {}

  // fn(tid) on `size` threads, the caller being tid 0.
  template <class Fn>
  void run(Fn&& fn) {
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(size_ - 1));
    for (int t = 1; t < size_; ++t) workers.emplace_back([&, t] { fn(t); });
    fn(0);
    for (auto& w : workers) w.join();
  }

  void barrier() {
    if (size_ == 1) return;
    const unsigned gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
      arrived_.store(0, std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_acq_rel);
      }
      wake_.notify_all();
      return;
    }
    for (int spin = 0; spin < kSpins; ++spin) {
      if (generation_.load(std::memory_order_acquire) != gen) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != gen; });
  }

  int size() const { return size_; }

 private:
  static constexpr int kSpins = 2000;  // a few microseconds
  int size_;
  std::atomic<int> arrived_{0};
  std::atomic<unsigned> generation_{0};
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
  check_range(c.tokens, c.n, bound, "tokens");
  const int64_t sentences = c.offsets != nullptr ? c.num_sentences : 1;
  if (c.offsets != nullptr) {
    if (sentences > 0 && c.offsets[0] != 0) throw std::invalid_argument("offsets must start at 0");
    for (int64_t s = 0; s < sentences; ++s) {
      if (c.offsets[s] > c.n || (s > 0 && c.offsets[s] < c.offsets[s - 1])) {
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
    const int64_t lo = c.offsets != nullptr ? c.offsets[s] : 0;
    const int64_t hi = c.offsets == nullptr || s + 1 == sentences ? c.n : c.offsets[s + 1];
    sent_start_.push_back(static_cast<int64_t>(ids_.size()));
    for (int64_t p = lo; p < hi; ++p) {
      const uint64_t pos = c.position + static_cast<uint64_t>(p);
      const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32), 0u,
                                         kTagSkipGram, k0, k1);
      const int64_t id = c.tokens[p];
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
  for (size_t s = 0; s + 1 < sent_start_.size(); ++s) {
    const int64_t lo = sent_start_[s], hi = sent_start_[s + 1];
    for (int64_t i = lo; i < hi; ++i) {
      num_pairs_ += std::min<int64_t>(reach_[i], i - lo) + std::min<int64_t>(reach_[i], hi - 1 - i);
    }
  }
}

void SkipGramPlan::fill(int64_t* centres, int64_t* contexts) const {
  int64_t o = 0;
  for (size_t s = 0; s + 1 < sent_start_.size(); ++s) {
    const int64_t lo = sent_start_[s], hi = sent_start_[s + 1];
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t first = std::max(lo, i - reach_[i]), last = std::min(hi - 1, i + reach_[i]);
      for (int64_t j = first; j <= last; ++j) {
        if (j == i) continue;
        centres[o] = ids_[i];
        contexts[o] = ids_[j];
        ++o;
      }
    }
  }
}

// ------------------------------------------------------- negative sampling
template <class T>
void sgns_check_ids(const SGNSBatch<T>& a) {
  check_range(a.centres, a.batch, a.num_input, "centres");
  check_range(a.contexts, a.batch, a.num_output, "contexts");
  check_range(a.negatives, a.batch * a.k, a.num_output, "negatives");
}

template <class T>
void sgns_forward(const SGNSBatch<T>& a, T* loss, T* coef, int num_threads) {
  PYNEG_SG_DISPATCH(sgns_forward_impl, a, loss, coef, num_threads);
}

template <class T>
void sgns_backward(const SGNSBatch<T>& a, const T* coef, const T* grad_loss, T* grad_input,
                   int64_t* touched_input, T* grad_output, int64_t* touched_output,
                   int num_threads, int64_t* num_touched_input, int64_t* num_touched_output) {
  PYNEG_SG_DISPATCH(sgns_backward_impl, a, coef, grad_loss, grad_input, touched_input, grad_output,
                    touched_output, num_threads, num_touched_input, num_touched_output);
}

template <class T>
double sgns_sgd(const SGNSBatch<T>& a, T* input, T* output, double lr_begin, double lr_end,
                int64_t step, bool compute_loss, int num_threads, bool hogwild) {
  return PYNEG_SG_DISPATCH(sgns_sgd_impl, a, input, output, lr_begin, lr_end, step, compute_loss, num_threads,
                           hogwild);
}

template <class T>
double hs_sgd(const HuffmanTree& tree, T* input, int64_t num_input, T* weight, T* bias, int64_t dim,
              const int64_t* centres, const int64_t* contexts, int64_t batch, double lr_begin,
              double lr_end, int64_t step, bool compute_loss, int num_threads, bool hogwild) {
  check_range(centres, batch, num_input, "centres");
  check_range(contexts, batch, tree.num_classes, "contexts");
  return PYNEG_SG_DISPATCH(hs_sgd_impl, tree, input, num_input, weight, bias, dim, centres, contexts, batch,
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

// Skip-gram training kernels: (centre, context) pair generation with word2vec's
// subsampling and reduced window, the fused negative-sampling loss (forward and
// backward in one pass over the embedding tables, no (B, K, d) gather), and
// in-place SGD steps for negative sampling and hierarchical softmax.
//
// Negative sampling (SGNS), centre c, context o, negatives n_1..n_K, input
// table W (rows v), output table U (rows u):
//   loss  = -log sigmoid(u_o . v_c) - sum_k log sigmoid(-u_{n_k} . v_c)
//   coef  = dloss/dscore: sigmoid(s) - 1 for the context, sigmoid(s) for a negative
//   dloss/dv_c = sum_t coef_t u_t,   dloss/du_t = coef_t v_c
// Slot t = 0 of a pair is its context, slots 1..K its negatives.
//
// Determinism: pairs are split across threads with no shared writes; every
// gradient row of the fused loss is summed by one thread over its occurrences
// in batch order (a stable radix sort groups occurrences by row), so results
// are the same bits for any thread count. The in-place steps are mini-batch
// SGD: all gradients of a mini-batch are taken at the weights before its
// update (no Hogwild races), then each touched row is updated by the one
// thread that owns it (row % threads), its occurrences in pair order. A
// mini-batch of one pair runs word2vec's per-pair loop instead (one thread).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/huffman.h"

namespace pyneg {

// The pair generator's random numbers use philox.h's stream tag kTagSkipGram.

// ------------------------------------------------------------ pair generation
// Token p (absolute counter position `position + p`) has one Philox block
// (position + p, 0, kTagSkipGram) under `seed`: words 0-1 give a 53-bit uniform
// u in [0, 1) and the token is kept iff u < keep[token]; word 2 gives the
// reduced window b = 1 + floor(word2 * window / 2^32) in [1, window]. Kept
// tokens of one sentence pair with the kept tokens at most b positions away
// (b of the centre), in sentence order: centres ascending, contexts left to right.
struct SkipGramCorpus {
  const int64_t* tokens = nullptr;   // (n,) ids in [0, vocab)
  int64_t n = 0;
  const int64_t* offsets = nullptr;  // (num_sentences,) sentence starts; null: one sentence
  int64_t num_sentences = 0;
  const double* keep = nullptr;      // (vocab,) keep probabilities; null: keep every token
  int64_t vocab = 0;
  int64_t window = 5;
  uint64_t seed = 0;
  uint64_t position = 0;
};

// The kept tokens and their windows, computed once; count() and fill() read them.
class SkipGramPlan {
 public:
  // Throws std::invalid_argument naming the argument for ids outside [0, vocab),
  // offsets not starting at 0, decreasing or past n, or window < 1.
  explicit SkipGramPlan(const SkipGramCorpus& corpus);
  int64_t num_pairs() const { return sent_pairs_.back(); }
  int64_t num_kept() const { return static_cast<int64_t>(ids_.size()); }
  // Writes num_pairs() centres and contexts.
  void fill(int64_t* centres, int64_t* contexts) const;
  // Sentences (with kept tokens or not) and the pairs of sentences [0, s).
  int64_t num_sentences() const { return static_cast<int64_t>(sent_start_.size()) - 1; }
  int64_t pairs_before(int64_t sentence) const { return sent_pairs_[static_cast<size_t>(sentence)]; }
  // Calls emit(centre, context) for every pair of sentences [first, last), in fill()'s order.
  template <class Emit>
  void for_each_pair(int64_t first, int64_t last, Emit&& emit) const {
    for (int64_t s = first; s < last; ++s) {
      const int64_t lo = sent_start_[static_cast<size_t>(s)], hi = sent_start_[static_cast<size_t>(s) + 1];
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t first_j = i - reach_[i] > lo ? i - reach_[i] : lo;
        const int64_t last_j = i + reach_[i] < hi - 1 ? i + reach_[i] : hi - 1;
        const int64_t centre = ids_[i];
        for (int64_t j = first_j; j < i; ++j) emit(centre, ids_[j]);
        for (int64_t j = i + 1; j <= last_j; ++j) emit(centre, ids_[j]);
      }
    }
  }
  template <class Emit>
  void for_each_pair(Emit&& emit) const {
    for_each_pair(0, num_sentences(), emit);
  }

 private:
  std::vector<int64_t> ids_;          // kept tokens in corpus order
  std::vector<int32_t> reach_;        // reduced window of each kept token
  std::vector<int64_t> sent_start_;   // kept-token index where each sentence starts (+ end)
  std::vector<int64_t> sent_pairs_;   // pairs of the sentences before each sentence (+ all)
};

// ------------------------------------------------------- negative sampling
template <class T>
struct SGNSBatch {
  const T* input_weight = nullptr;   // (num_input x dim)
  const T* output_weight = nullptr;  // (num_output x dim)
  int64_t num_input = 0, num_output = 0, dim = 0;
  const int64_t* centres = nullptr;    // (batch,)
  const int64_t* contexts = nullptr;   // (batch,)
  const int64_t* negatives = nullptr;  // (batch x k)
  int64_t batch = 0, k = 0;
};

// Throws std::invalid_argument naming centres/contexts/negatives for an id out of range.
template <class T>
void sgns_check_ids(const SGNSBatch<T>& a);

// loss[b] (may be null) and coef (batch x (k + 1)) of every pair.
template <class T>
void sgns_forward(const SGNSBatch<T>& a, T* loss, T* coef, int num_threads);

// Gradients of sum_b grad_loss[b] * loss[b] (grad_loss null: all ones), given
// sgns_forward's coef. For each table, either dense (touched null: the rows
// of the batch's ids are written, the caller zeroes the others) or compact
// (touched[u] receives the u-th distinct id ascending, row u its gradient;
// room for min(ids, rows) rows is enough). A null gradient is skipped.
// Returns the numbers of distinct input and output ids.
template <class T>
void sgns_backward(const SGNSBatch<T>& a, const T* coef, const T* grad_loss, T* grad_input,
                   int64_t* touched_input, T* grad_output, int64_t* touched_output,
                   int num_threads, int64_t* num_touched_input, int64_t* num_touched_output);

// In-place mini-batch SGD over `a.batch` pairs, `step` pairs at a time, on the
// summed loss: mini-batch m (first pair p) uses lr = lr_begin + (lr_end -
// lr_begin) * p / batch. The weights are written through input/output (the
// same memory as a's tables). Returns the sum of the pairs' losses when
// compute_loss (one log1p per score more), else 0. step == 1 runs the
// per-pair loop (word2vec's update, in cache, no copies). hogwild (opt-in):
// threads train contiguous shares of the pairs at once without locks, as
// word2vec does: no barriers, but results then depend on scheduling.
template <class T>
double sgns_sgd(const SGNSBatch<T>& a, T* input, T* output, double lr_begin, double lr_end,
                int64_t step, bool compute_loss, int num_threads, bool hogwild = false);

// ----------------------------------------------------- hierarchical softmax
// In-place mini-batch SGD of skip-gram with hierarchical softmax: the centre's
// input row predicts the context's Huffman path (hsoftmax.h's kernels), same
// schedule as sgns_sgd (the same mini-batch kernel: a path node is a slot
// with label 1 - code). bias (V - 1,) may be null. Returns the summed NLL when
// compute_loss, else 0.
template <class T>
double hs_sgd(const HuffmanTree& tree, T* input, int64_t num_input, T* weight, T* bias,
              int64_t dim, const int64_t* centres, const int64_t* contexts, int64_t batch,
              double lr_begin, double lr_end, int64_t step, bool compute_loss, int num_threads,
              bool hogwild = false);

// "avx2" when the vector kernels run their AVX2+FMA build on this CPU, else "generic".
const char* skipgram_isa();

}  // namespace pyneg

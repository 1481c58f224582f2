// Bindings of the skip-gram kernels (csrc/cpu/skipgram.h): pair generation, the
// fused negative-sampling loss and the in-place SGD steps. Float kernels are
// bound for float32 and float64; tables written in place must have exactly
// the kernel's dtype and be C-contiguous and writeable (never a silent copy).
#include <optional>
#include <string>
#include <utility>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "cpu/huffman.h"
#include "cpu/pair_shuffle.h"
#include "cpu/skipgram.h"

namespace pyneg::bindings {

namespace {

void require_len(const py::array& a, py::ssize_t n, const char* name, const char* what) {
  if (a.ndim() != 1 || a.shape(0) != n) {
    throw std::invalid_argument(std::string(name) + " must be 1-D of length " + std::to_string(n) + " (" +
                                what + ")");
  }
}

template <class T>
void require_table(const py::array& a, const char* name) {
  require_ndim(a, 2, name);
  if (a.shape(0) < 1 || a.shape(1) < 1) throw std::invalid_argument(std::string(name) + " must not be empty");
  if (a.shape(0) >= (py::ssize_t{1} << 31)) throw std::invalid_argument(std::string(name) + " has too many rows");
}

template <class T>
bool overlaps(const py::array& a, const py::array& b) {
  const char* pa = static_cast<const char*>(a.data());
  const char* pb = static_cast<const char*>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

// Validated views of one negative-sampling batch.
template <class T>
SGNSBatch<T> bind_batch(const py::array& input_weight, const py::array& output_weight,
                        const input_array<int64_t>& centres, const input_array<int64_t>& contexts,
                        const input_array<int64_t>& negatives) {
  require_table<T>(input_weight, "input_weight");
  require_table<T>(output_weight, "output_weight");
  if (input_weight.shape(1) != output_weight.shape(1)) {
    throw std::invalid_argument("output_weight must have input_weight's dim " +
                                std::to_string(input_weight.shape(1)) + ", got " +
                                std::to_string(output_weight.shape(1)));
  }
  require_ndim(centres, 1, "centres");
  const py::ssize_t batch = centres.shape(0);
  require_len(contexts, batch, "contexts", "one per centre");
  require_ndim(negatives, 2, "negatives");
  if (negatives.shape(0) != batch) {
    throw std::invalid_argument("negatives must be (" + std::to_string(batch) + ", K) to match centres");
  }
  if (batch * (negatives.shape(1) + 1) >= (py::ssize_t{1} << 31)) {
    throw std::invalid_argument("centres: batch * (K + 1) must be < 2**31");
  }
  SGNSBatch<T> a;
  a.input_weight = static_cast<const T*>(input_weight.data());
  a.output_weight = static_cast<const T*>(output_weight.data());
  a.num_input = input_weight.shape(0);
  a.num_output = output_weight.shape(0);
  a.dim = input_weight.shape(1);
  a.centres = centres.data();
  a.contexts = contexts.data();
  a.negatives = negatives.data();
  a.batch = batch;
  a.k = negatives.shape(1);
  return a;
}

template <class T>
void bind_float(py::module_& m) {
  m.def(
      "sgns_forward",
      [](const input_array<T>& input_weight, const input_array<T>& output_weight,
         const input_array<int64_t>& centres, const input_array<int64_t>& contexts,
         const input_array<int64_t>& negatives, output_array<T> loss, output_array<T> coef, int num_threads) {
        SGNSBatch<T> a = bind_batch<T>(input_weight, output_weight, centres, contexts, negatives);
        require_len(loss, a.batch, "loss", "one per pair");
        require_ndim(coef, 2, "coef");
        if (coef.shape(0) != a.batch || coef.shape(1) != a.k + 1) {
          throw std::invalid_argument("coef must be (batch, K + 1)");
        }
        T* lp = writable_data(loss, "loss");
        T* cp = writable_data(coef, "coef");
        py::gil_scoped_release release;
        sgns_forward(a, lp, cp, num_threads);
      },
      py::arg("input_weight"), py::arg("output_weight"), py::arg("centres"), py::arg("contexts"),
      py::arg("negatives"), py::arg("loss").noconvert(), py::arg("coef").noconvert(),
      py::arg("num_threads") = 1,
      "Per-pair negative-sampling loss into loss; dloss/dscore of every (pair, slot) into coef.");
  m.def(
      "sgns_backward",
      [](const input_array<T>& input_weight, const input_array<T>& output_weight,
         const input_array<int64_t>& centres, const input_array<int64_t>& contexts,
         const input_array<int64_t>& negatives, const input_array<T>& coef,
         std::optional<input_array<T>> grad_loss, std::optional<output_array<T>> grad_input,
         std::optional<output_array<int64_t>> touched_input, std::optional<output_array<T>> grad_output,
         std::optional<output_array<int64_t>> touched_output, int num_threads) {
        SGNSBatch<T> a = bind_batch<T>(input_weight, output_weight, centres, contexts, negatives);
        require_ndim(coef, 2, "coef");
        if (coef.shape(0) != a.batch || coef.shape(1) != a.k + 1) {
          throw std::invalid_argument("coef must be (batch, K + 1)");
        }
        const T* gl = nullptr;
        if (grad_loss) {
          require_len(*grad_loss, a.batch, "grad_loss", "one per pair");
          gl = grad_loss->data();
        }
        // A table's gradient is dense (rows of the table) or compact (one row per slot of touched).
        auto bind_grad = [&](std::optional<output_array<T>>& g, std::optional<output_array<int64_t>>& t,
                             int64_t rows, int64_t ids, const char* gname, const char* tname,
                             T*& gp, int64_t*& tp) {
          gp = nullptr;
          tp = nullptr;
          if (!g) return;
          if (t) {
            require_ndim(*t, 1, tname);
            if (t->shape(0) < std::min(rows, ids)) {
              throw std::invalid_argument(std::string(tname) + " must have room for " +
                                          std::to_string(std::min(rows, ids)) + " rows");
            }
            rows = t->shape(0);
            tp = writable_data(*t, tname);
          }
          require_ndim(*g, 2, gname);
          if (g->shape(0) != rows || g->shape(1) != a.dim) {
            throw std::invalid_argument(std::string(gname) + " must be (" + std::to_string(rows) + ", " +
                                        std::to_string(a.dim) + ")");
          }
          gp = writable_data(*g, gname);
        };
        T* gi;
        T* go;
        int64_t* ti;
        int64_t* to;
        bind_grad(grad_input, touched_input, a.num_input, a.batch, "grad_input", "touched_input", gi, ti);
        bind_grad(grad_output, touched_output, a.num_output, a.batch * (a.k + 1), "grad_output",
                  "touched_output", go, to);
        const T* cp = coef.data();
        py::gil_scoped_release release;
        int64_t ni = 0, no = 0;
        sgns_backward(a, cp, gl, gi, ti, go, to, num_threads, &ni, &no);
        return std::make_pair(ni, no);
      },
      py::arg("input_weight"), py::arg("output_weight"), py::arg("centres"), py::arg("contexts"),
      py::arg("negatives"), py::arg("coef"), py::arg("grad_loss") = py::none(),
      py::arg("grad_input").noconvert() = py::none(), py::arg("touched_input").noconvert() = py::none(),
      py::arg("grad_output").noconvert() = py::none(), py::arg("touched_output").noconvert() = py::none(),
      py::arg("num_threads") = 1,
      "Gradients of sum(grad_loss * loss) for both tables, dense or compact (with touched); returns "
      "the numbers of distinct input and output ids.");
  m.def(
      "sgns_sgd",
      [](output_array<T> input_weight, output_array<T> output_weight, const input_array<int64_t>& centres,
         const input_array<int64_t>& contexts, const input_array<int64_t>& negatives, double lr_begin,
         double lr_end, int64_t step, bool compute_loss, int num_threads, bool hogwild) {
        SGNSBatch<T> a = bind_batch<T>(input_weight, output_weight, centres, contexts, negatives);
        if (overlaps<T>(input_weight, output_weight)) {
          throw std::invalid_argument("input_weight and output_weight must not share memory");
        }
        if (step < 1) throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(step));
        T* in = writable_data(input_weight, "input_weight");
        T* out = writable_data(output_weight, "output_weight");
        py::gil_scoped_release release;
        return sgns_sgd(a, in, out, lr_begin, lr_end, step, compute_loss, num_threads, hogwild);
      },
      py::arg("input_weight").noconvert(), py::arg("output_weight").noconvert(), py::arg("centres"),
      py::arg("contexts"), py::arg("negatives"), py::arg("lr_begin"), py::arg("lr_end"), py::arg("step"),
      py::arg("compute_loss") = true, py::arg("num_threads") = 1, py::arg("hogwild") = false,
      "In-place mini-batch SGD on the summed negative-sampling loss; returns the summed loss.");
  m.def(
      "hs_sgd",
      [](const HuffmanTree& tree, output_array<T> input_weight, output_array<T> weight,
         std::optional<output_array<T>> bias, const input_array<int64_t>& centres,
         const input_array<int64_t>& contexts, double lr_begin, double lr_end, int64_t step, bool compute_loss,
         int num_threads, bool hogwild) {
        require_table<T>(input_weight, "input_weight");
        require_ndim(weight, 2, "weight");
        const int64_t dim = input_weight.shape(1);
        if (weight.shape(0) != tree.num_inner() || weight.shape(1) != dim) {
          throw std::invalid_argument("weight must be (" + std::to_string(tree.num_inner()) + ", " +
                                      std::to_string(dim) + ")");
        }
        if (overlaps<T>(input_weight, weight)) {
          throw std::invalid_argument("input_weight and weight must not share memory");
        }
        T* bp = nullptr;
        if (bias) {
          require_len(*bias, tree.num_inner(), "bias", "one per inner node");
          bp = writable_data(*bias, "bias");
        }
        require_ndim(centres, 1, "centres");
        require_len(contexts, centres.shape(0), "contexts", "one per centre");
        if (step < 1) throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(step));
        T* in = writable_data(input_weight, "input_weight");
        T* w = writable_data(weight, "weight");
        const int64_t* c = centres.data();
        const int64_t* x = contexts.data();
        const int64_t n = centres.shape(0), rows = input_weight.shape(0);
        py::gil_scoped_release release;
        return hs_sgd(tree, in, rows, w, bp, dim, c, x, n, lr_begin, lr_end, step, compute_loss, num_threads,
                      hogwild);
      },
      py::arg("tree"), py::arg("input_weight").noconvert(), py::arg("weight").noconvert(),
      py::arg("bias").noconvert(), py::arg("centres"), py::arg("contexts"), py::arg("lr_begin"),
      py::arg("lr_end"), py::arg("step"), py::arg("compute_loss") = true, py::arg("num_threads") = 1,
      py::arg("hogwild") = false, "In-place mini-batch SGD of skip-gram with hierarchical softmax; returns the summed NLL.");
}

}  // namespace

void register_skipgram(py::module_& m) {
  m.def("skipgram_isa", &skipgram_isa, "The instruction set the skip-gram vector kernels use: avx2 or generic.");
  m.def(
      "skipgram_pairs",
      [](const input_array<int64_t>& tokens, std::optional<input_array<int64_t>> offsets,
         std::optional<input_array<double>> keep, int64_t window, uint64_t seed, uint64_t position,
         std::optional<uint64_t> shuffle_seed, int num_threads) {
        require_ndim(tokens, 1, "tokens");
        SkipGramCorpus c;
        c.tokens = tokens.data();
        c.n = tokens.shape(0);
        if (offsets) {
          require_ndim(*offsets, 1, "offsets");
          c.offsets = offsets->data();
          c.num_sentences = offsets->shape(0);
        }
        if (keep) {
          require_ndim(*keep, 1, "keep");
          c.keep = keep->data();
          c.vocab = keep->shape(0);
        }
        c.window = window;
        c.seed = seed;
        c.position = position;
        std::optional<SkipGramPlan> plan;
        {
          py::gil_scoped_release release;
          plan.emplace(c);
        }
        py::array_t<int64_t> centres(plan->num_pairs()), contexts(plan->num_pairs());
        int64_t* cp = centres.mutable_data();
        int64_t* xp = contexts.mutable_data();
        {
          py::gil_scoped_release release;
          if (shuffle_seed) {
            fill_shuffled(*plan, *shuffle_seed, cp, xp, num_threads);
          } else {
            plan->fill(cp, xp);
          }
        }
        return std::make_pair(centres, contexts);
      },
      py::arg("tokens"), py::arg("offsets"), py::arg("keep"), py::arg("window"), py::arg("seed"),
      py::arg("position") = 0, py::arg("shuffle_seed") = py::none(), py::arg("num_threads") = 1,
      "(centre, context) pairs of a token stream with subsampling (keep) and a reduced window, "
      "a pure function of (seed, position + token index); in corpus order, or shuffled by "
      "shuffle_pairs(..., shuffle_seed) when shuffle_seed is given.");
  m.def(
      "shuffle_pairs",
      [](const input_array<int64_t>& centres, const input_array<int64_t>& contexts, uint64_t seed,
         int bucket_bits, int num_threads) {
        require_ndim(centres, 1, "centres");
        require_len(contexts, centres.shape(0), "contexts", "one per centre");
        const std::vector<int64_t> c = owned_copy(centres), x = owned_copy(contexts);
        const int64_t n = static_cast<int64_t>(c.size());
        py::array_t<int64_t> out_c(n), out_x(n);
        int64_t* cp = out_c.mutable_data();
        int64_t* xp = out_x.mutable_data();
        {
          py::gil_scoped_release release;
          shuffle_pairs(c.data(), x.data(), n, seed, bucket_bits, cp, xp, num_threads);
        }
        return std::make_pair(out_c, out_x);
      },
      py::arg("centres"), py::arg("contexts"), py::arg("seed"), py::arg("bucket_bits") = -1,
      py::arg("num_threads") = 1,
      "The (centre, context) records in a uniformly random order, a pure function of (seed, records): "
      "the same bits for any num_threads. bucket_bits in [0, 8], -1: the default for their number.");
  bind_float<float>(m);
  bind_float<double>(m);
}

}  // namespace pyneg::bindings

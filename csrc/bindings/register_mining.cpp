// Bindings of the hard-negative miner (csrc/cpu/mining.h). Inputs and outputs
// must have exactly the kernel's dtype and layout (no silent copies); the
// Python layer (pyneg/mining.py) validates arguments and owns every array
// passed here except query and candidates, which the kernel copies block by
// block and checks on its own copy.
#include <cmath>
#include <limits>
#include <string>

#include "bindings/common.h"
#include "cpu/mining.h"

namespace pyneg::bindings {

namespace {

template <class T>
using exact_array = py::array_t<T, py::array::c_style>;

void require_rows(const py::array& a, py::ssize_t rows, py::ssize_t cols, const char* name) {
  if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != cols) {
    throw std::invalid_argument(std::string(name) + " must have shape (" + std::to_string(rows) + ", " +
                                std::to_string(cols) + ")");
  }
}

template <class T>
void bind_topk(py::module_& m) {
  m.def(
      "mine_topk",
      [](const exact_array<T>& query, const exact_array<T>& candidates, const exact_array<int64_t>& exclude,
         const exact_array<double>& upper, bool has_upper, double max_score, bool has_max_score, bool cosine,
         int64_t hi, int64_t query_block, int64_t candidate_block, exact_array<int64_t> ids,
         exact_array<double> scores, exact_array<int64_t> counts, int num_threads) {
        require_ndim(query, 2, "query");
        require_ndim(candidates, 2, "candidates");
        require_ndim(exclude, 2, "exclude");
        const py::ssize_t B = query.shape(0), d = query.shape(1);
        if (candidates.shape(1) != d) throw std::invalid_argument("candidates must have query's dimension");
        if (exclude.shape(0) != B) throw std::invalid_argument("exclude must have one row per query");
        if (hi < 0) throw std::invalid_argument("hi must be >= 0");
        if (has_upper && (upper.ndim() != 1 || upper.shape(0) != B))
          throw std::invalid_argument("upper must have one entry per query");
        require_rows(ids, B, hi, "ids");
        require_rows(scores, B, hi, "scores");
        if (counts.ndim() != 1 || counts.shape(0) != B) throw std::invalid_argument("counts must be (B,)");
        TopkProblem<T> p;
        p.query = query.data();
        p.candidates = candidates.data();
        p.num_queries = B;
        p.num_candidates = candidates.shape(0);
        p.dim = d;
        p.exclude = exclude.data();
        p.exclude_width = exclude.shape(1);
        p.upper = has_upper ? upper.data() : nullptr;
        p.max_score = max_score;
        p.has_max_score = has_max_score;
        p.cosine = cosine;
        p.hi = hi;
        p.query_block = query_block;
        p.candidate_block = candidate_block;
        TopkResult r{writable_data(ids, "ids"), writable_data(scores, "scores"), writable_data(counts, "counts")};
        py::gil_scoped_release release;
        mine_topk(p, r, num_threads);
      },
      py::arg("query").noconvert(), py::arg("candidates").noconvert(), py::arg("exclude").noconvert(),
      py::arg("upper").noconvert(), py::arg("has_upper"), py::arg("max_score"), py::arg("has_max_score"),
      py::arg("cosine"), py::arg("hi"), py::arg("query_block"), py::arg("candidate_block"),
      py::arg("ids").noconvert(), py::arg("scores").noconvert(), py::arg("counts").noconvert(),
      py::arg("num_threads") = 1,
      "Exact top-hi admissible candidates of every query row, best first (score desc, id asc).");
}

}  // namespace

void register_mining(py::module_& m) {
  bind_topk<float>(m);
  bind_topk<double>(m);
  m.def(
      "mine_window",
      [](const exact_array<int64_t>& ids, const exact_array<double>& scores, const exact_array<int64_t>& counts,
         int64_t lo, int64_t k, int sampling, double tau, uint64_t seed, uint64_t offset,
         exact_array<int64_t> out_ids, exact_array<double> out_scores, exact_array<double> out_log_q,
         exact_array<int64_t> window, int num_threads) {
        require_ndim(ids, 2, "ids");
        const py::ssize_t rows = ids.shape(0), hi = ids.shape(1);
        require_rows(scores, rows, hi, "scores");
        if (counts.ndim() != 1 || counts.shape(0) != rows) throw std::invalid_argument("counts must be (rows,)");
        if (lo < 0 || k < 0) throw std::invalid_argument("lo and k must be >= 0");
        if (sampling < 0 || sampling > 2) throw std::invalid_argument("sampling must be 0, 1 or 2");
        if (!(tau > 0) || !std::isfinite(tau)) throw std::invalid_argument("tau must be finite and > 0");
        require_rows(out_ids, rows, k, "out_ids");
        require_rows(out_scores, rows, k, "out_scores");
        require_rows(out_log_q, rows, k, "out_log_q");
        if (window.ndim() != 1 || window.shape(0) != rows) throw std::invalid_argument("window must be (rows,)");
        const int64_t* c = counts.data();
        for (py::ssize_t i = 0; i < rows; ++i)
          if (c[i] < 0 || c[i] > hi) throw std::invalid_argument("counts must be in [0, hi]");
        WindowProblem p;
        p.ids = ids.data();
        p.scores = scores.data();
        p.counts = c;
        p.rows = rows;
        p.hi = hi;
        p.lo = std::min<int64_t>(lo, hi);
        p.k = k;
        p.sampling = static_cast<WindowSampling>(sampling);
        p.tau = tau;
        p.seed = seed;
        p.offset = offset;
        WindowResult r{writable_data(out_ids, "out_ids"), writable_data(out_scores, "out_scores"),
                       writable_data(out_log_q, "out_log_q"), writable_data(window, "window")};
        py::gil_scoped_release release;
        mine_window(p, r, num_threads);
      },
      py::arg("ids").noconvert(), py::arg("scores").noconvert(), py::arg("counts").noconvert(), py::arg("lo"),
      py::arg("k"), py::arg("sampling"), py::arg("tau"), py::arg("seed"), py::arg("offset"),
      py::arg("out_ids").noconvert(), py::arg("out_scores").noconvert(), py::arg("out_log_q").noconvert(),
      py::arg("window").noconvert(), py::arg("num_threads") = 1,
      "Draw k of each row's rank window [lo, hi) with exact inclusion probabilities (see mining.h).");
}

}  // namespace pyneg::bindings

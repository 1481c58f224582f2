// Bindings of the accidental-hit finder (csrc/cpu/hits.h).
#include <limits>
#include <vector>

#include "bindings/common.h"
#include "cpu/hits.h"

namespace pyneg::bindings {

void register_hits(py::module_& m) {
  m.def(
      "find_accidental_hits",
      [](const input_array<int64_t>& candidates, const input_array<int64_t>& positives,
         int64_t max_pairs) -> py::object {
        require_ndim(candidates, 1, "negative_ids");
        require_ndim(positives, 2, "positive_ids");
        if (max_pairs < 0) throw std::invalid_argument("max_pairs must be >= 0");
        // Owned copies: the search runs without the GIL on memory nobody else can write.
        const std::vector<int64_t> cand = owned_copy(candidates);
        const std::vector<int64_t> pos = owned_copy(positives);
        const int64_t b = positives.shape(0), t = positives.shape(1);
        std::vector<int64_t> rows, cols;
        bool complete;
        {
          py::gil_scoped_release release;
          complete = find_accidental_hits(cand.data(), static_cast<int64_t>(cand.size()), pos.data(), b, t,
                                          max_pairs, &rows, &cols);
        }
        if (!complete) return py::none();
        return py::make_tuple(to_array(rows), to_array(cols));
      },
      py::arg("negative_ids"), py::arg("positive_ids"), py::arg("max_pairs") = std::numeric_limits<int64_t>::max(),
      "(rows, cols) int64 arrays of the pairs with negative_ids[col] == positive_ids[row, t] for some t, by row, "
      "then t, then column; None when there are more than max_pairs of them.");
}

}  // namespace pyneg::bindings

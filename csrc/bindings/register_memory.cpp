// Bindings of the memory-bank kernels: the streaming frequency estimator
// (csrc/cpu/frequency_estimator.h) and the ring index (csrc/cpu/ring_index.h).
#include <string>

#include "bindings/common.h"
#include "cpu/frequency_estimator.h"

namespace pyneg::bindings {

namespace {

// The estimator's state is a float64 (num_hashes, num_buckets, 2) array owned
// by the Python layer and updated in place.
FrequencyTable frequency_table(output_array<double>& cells, bool write) {
  require_ndim(cells, 3, "state");
  if (cells.shape(2) != 2) throw std::invalid_argument("state must have shape (num_hashes, num_buckets, 2)");
  FrequencyTable t;
  t.cells = write ? writable_data(cells, "state") : const_cast<double*>(cells.data());
  t.num_hashes = cells.shape(0);
  t.num_buckets = cells.shape(1);
  return t;
}

}  // namespace

void register_memory(py::module_& m) {
  m.attr("MAX_FREQUENCY_BUCKETS") = kMaxFrequencyBuckets;
  m.def(
      "frequency_update",
      [](output_array<double> state, const input_array<int64_t>& ids, int64_t step, double alpha,
         int num_threads) {
        const FrequencyTable t = frequency_table(state, true);
        require_ndim(ids, 1, "ids");
        const int64_t* p = ids.data();
        const int64_t n = ids.size();
        py::gil_scoped_release release;
        frequency_update(t, alpha, step, p, n, num_threads);
      },
      py::arg("state").noconvert(), py::arg("ids"), py::arg("step"), py::arg("alpha"),
      py::arg("num_threads") = 1,
      "Record step `step`'s ids in the (num_hashes, num_buckets, 2) state, in place.");
  m.def(
      "frequency_estimate",
      [](output_array<double> state, const input_array<int64_t>& ids, int64_t step, bool log,
         output_array<float> out) {
        const FrequencyTable t = frequency_table(state, false);
        require_ndim(ids, 1, "ids");
        if (out.size() != ids.size()) throw std::invalid_argument("out must have one entry per id");
        float* dst = writable_data(out, "out");
        const int64_t* p = ids.data();
        const int64_t n = ids.size();
        py::gil_scoped_release release;
        frequency_estimate(t, step, p, n, log, dst);
      },
      py::arg("state").noconvert(), py::arg("ids"), py::arg("step"), py::arg("log"),
      py::arg("out").noconvert(),
      "Estimated probability (or its log) that each id is in a step's batch.");
  m.def("frequency_bucket", &frequency_bucket, py::arg("id"), py::arg("k"), py::arg("num_buckets"),
        "Bucket of `id` under hash function k (for tests and debugging).");
}

}  // namespace pyneg::bindings

// Bindings of the memory-bank kernels: the streaming frequency estimator
// (csrc/cpu/frequency_estimator.h) and the ring index (csrc/cpu/ring_index.h).
#include <string>
#include <utility>
#include <vector>

#include "bindings/common.h"
#include "cpu/frequency_estimator.h"
#include "cpu/ring_index.h"

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

// A private copy of a 1-D id input. What the kernels check is what they read,
// whatever another thread does to the caller's array meanwhile (torch ops run
// without the GIL, so holding it does not keep a tensor's memory still).
std::vector<int64_t> owned_ids(const input_array<int64_t>& a, const char* name) {
  require_ndim(a, 1, name);
  return std::vector<int64_t>(a.data(), a.data() + a.size());
}

}  // namespace

void register_memory(py::module_& m) {
  m.attr("MAX_FREQUENCY_BUCKETS") = kMaxFrequencyBuckets;
  m.def(
      "frequency_update",
      [](output_array<double> state, const input_array<int64_t>& ids, int64_t step, double alpha,
         int num_threads) {
        // No private copy of the ids here (unlike the ring index): the Python
        // layer passes one, and any id value hashes into the table, so even a
        // concurrent writer could not make the kernel leave its memory.
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
        py::gil_scoped_release release;  // as in frequency_update: the ids are the caller's private copy
        frequency_estimate(t, step, p, n, log, dst);
      },
      py::arg("state").noconvert(), py::arg("ids"), py::arg("step"), py::arg("log"),
      py::arg("out").noconvert(),
      "Estimated probability (or its log) that each id is in a step's batch.");
  // Test-only: the hash's buckets, checked against a Python transcription.
  py::module_ testing = m.attr("_testing");
  testing.def("frequency_bucket", &frequency_bucket, py::arg("id"), py::arg("k"), py::arg("num_buckets"),
              "Bucket of `id` under hash function k (for tests).");

  // The index is mutable: every method keeps the GIL, so one Python thread's
  // push can never race another's. (Each call is O(batch), microseconds.)
  m.attr("MAX_RING_CAPACITY") = kMaxRingCapacity;
  m.def(
      "ring_copy_rows",
      [](output_array<uint8_t> dst, const input_array<uint8_t>& src, const py::tuple& write) {
        require_ndim(dst, 2, "dst");
        require_ndim(src, 2, "src");
        if (write.size() != 4) throw std::invalid_argument("write must be (src_begin, dst_begin, first, second)");
        RingWrite w{write[0].cast<int64_t>(), write[1].cast<int64_t>(), write[2].cast<int64_t>(),
                    write[3].cast<int64_t>()};
        const int64_t cap = dst.shape(0), n = src.shape(0);
        if (src.shape(1) != dst.shape(1)) throw std::invalid_argument("src and dst rows differ in size");
        if (w.src_begin < 0 || w.first < 0 || w.second < 0 || w.dst_begin < 0 ||
            w.src_begin + w.first + w.second > n || w.dst_begin + w.first > cap || w.second > w.dst_begin) {
          throw std::invalid_argument("write does not fit src and dst");
        }
        unsigned char* d = writable_data(dst, "dst");
        const unsigned char* s = src.data();
        const int64_t row_bytes = dst.shape(1);
        // The GIL stays held: src is the caller's memory (a zero-copy view of
        // their embeddings), which pyneg neither owns nor can keep alive against
        // another thread freeing its storage; a few hundred KB is microseconds.
        copy_ring_rows(d, s, row_bytes, w);
      },
      py::arg("dst").noconvert(), py::arg("src"), py::arg("write"),
      "Copy the rows of src (bytes) into the bank storage dst as RingIndex.push planned.");
  py::class_<RingIndex>(m, "RingIndex",
                        "Write pointer and size of a FIFO memory bank.")
      .def(py::init<int64_t>(), py::arg("capacity"))
      .def_property_readonly("size", &RingIndex::size)
      .def_property_readonly("head", &RingIndex::head, "Slot the next entry goes to.")
      .def(
          "push",
          [](RingIndex& r, const input_array<int64_t>& ids) {
            const std::vector<int64_t> own = owned_ids(ids, "ids");
            const RingWrite w = r.push(own.data(), static_cast<int64_t>(own.size()));
            return py::make_tuple(w.src_begin, w.dst_begin, w.first, w.second);
          },
          py::arg("ids"),
          "Record a batch of ids; returns (src_begin, dst_begin, first, second): rows "
          "[src_begin, src_begin + first) go to slots [dst_begin, ...), the next `second` rows to "
          "slots [0, second).")
      .def(
          "restore",
          [](RingIndex& r, const input_array<int64_t>& ids, const input_array<int64_t>& steps,
             int64_t head) {
            const std::vector<int64_t> own_ids = owned_ids(ids, "ids");
            const std::vector<int64_t> own_steps = owned_ids(steps, "steps");
            if (own_steps.size() != own_ids.size()) throw std::invalid_argument("steps must have one entry per id");
            r.restore(own_ids.data(), own_steps.data(), static_cast<int64_t>(own_ids.size()), head);
          },
          py::arg("ids"), py::arg("steps"), py::arg("head"),
          "Replace the contents with entries given oldest first; the next entry goes to slot `head`.");
}

}  // namespace pyneg::bindings

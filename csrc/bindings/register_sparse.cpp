// Bindings of the sparse catalogues' id maps (csrc/cpu/sparse_ids.h).
#include <algorithm>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "cpu/analytic_sample.h"
#include "cpu/huge_buffer.h"
#include "cpu/sparse_ids.h"

namespace pyneg::bindings {

namespace {

void check_num_classes(int64_t v) {
  if (v < 1 || v > kMaxAnalyticClasses)
    throw std::invalid_argument("num_classes must be in [1, 2**50], got " + std::to_string(v));
}

}  // namespace

// A sparse sampler's ids in pyneg's own buffer, on huge pages when large (as
// the alias tables' entries): every draw reads one id at random, and with 4 KiB
// pages an id array of 10^7 ids would miss the TLB on nearly every read.
struct IdBuffer {
  HugeBuffer<int64_t> ids;
};

void register_sparse(py::module_& m) {
  py::class_<IdBuffer>(m, "IdBuffer", "A copy of int64 ids in pyneg's huge-page buffer (sparse samplers' ids).")
      .def(py::init([](const input_array<int64_t>& ids) {
             require_ndim(ids, 1, "ids");
             IdBuffer b{HugeBuffer<int64_t>(static_cast<size_t>(ids.size()))};
             std::copy(ids.data(), ids.data() + ids.size(), b.ids.data());
             return b;
           }),
           py::arg("ids"))
      .def(
          "_storage",
          [](py::object self) {
            const auto& b = self.cast<const IdBuffer&>();
            const auto n = static_cast<py::ssize_t>(b.ids.size());
            return py::array_t<int64_t>({n}, {static_cast<py::ssize_t>(sizeof(int64_t))}, b.ids.data(), self);
          },
          "The ids as an int64 array sharing the buffer's memory (kept alive by it; never written).");
  m.def(
      "sparse_check_ids",
      [](const input_array<int64_t>& ids, int64_t num_classes, const std::string& name) {
        require_ndim(ids, 1, name.c_str());
        check_num_classes(num_classes);
        const int64_t* p = ids.data();
        const int64_t n = ids.size();
        py::gil_scoped_release release;
        check_sparse_ids(p, n, num_classes, name.c_str());
      },
      py::arg("ids"), py::arg("num_classes"), py::arg("name") = "ids",
      "Refuse (ValueError naming `name`) ids that are empty, not strictly increasing, or outside "
      "[0, num_classes).");
  m.def(
      "sparse_gather",
      [](const input_array<int64_t>& ids, int64_t num_classes, output_array<int64_t> inout, int num_threads) {
        require_ndim(ids, 1, "ids");
        check_num_classes(num_classes);
        int64_t* dst = writable_data(inout, "inout");
        const int64_t* p = ids.data();
        const int64_t n = ids.size(), count = inout.size();
        if (n < 1) throw std::invalid_argument("ids must not be empty");
        py::gil_scoped_release release;
        gather_sparse_ids(p, n, num_classes, dst, count, num_threads);
      },
      py::arg("ids"), py::arg("num_classes"), py::arg("inout").noconvert(), py::arg("num_threads") = 1,
      "Replace every slot of inout by its id, ids[slot], in place (checked: slots in [0, len(ids)), "
      "ids in [0, num_classes)).");
  m.def(
      "sparse_lookup",
      [](const input_array<int64_t>& ids, int64_t num_classes, const input_array<int64_t>& query,
         output_array<int64_t> slots, bool allow_padding, const std::string& name, int num_threads) {
        require_ndim(ids, 1, "ids");
        check_num_classes(num_classes);
        if (slots.size() != query.size()) throw std::invalid_argument("slots must have one entry per query id");
        int64_t* dst = writable_data(slots, "slots");
        const std::vector<int64_t> q = owned_copy(query);  // the caller's may change meanwhile
        const int64_t* p = ids.data();
        const int64_t n = ids.size();
        py::gil_scoped_release release;
        lookup_sparse_ids(p, n, num_classes, q.data(), static_cast<int64_t>(q.size()), dst, allow_padding,
                          name.c_str(), num_threads);
      },
      py::arg("ids"), py::arg("num_classes"), py::arg("query"), py::arg("slots").noconvert(),
      py::arg("allow_padding") = false, py::arg("name") = "ids", py::arg("num_threads") = 1,
      "Write the slot of every query id (binary search in the sorted ids; -1 for an id without a "
      "slot, or padding -1 when allow_padding) into slots. Refuses ids outside [0, num_classes), "
      "naming `name`.");
  m.def(
      "sparse_log_prob",
      [](const input_array<int64_t>& ids, const input_array<int64_t>& mass, int64_t num_classes,
         const input_array<int64_t>& query, output_array<double> out, const std::string& name, int num_threads) {
        require_ndim(ids, 1, "ids");
        require_ndim(mass, 1, "mass");
        check_num_classes(num_classes);
        if (ids.size() < 1 || mass.size() != ids.size())
          throw std::invalid_argument("mass must hold one mass per id (and ids must not be empty)");
        if (out.size() != query.size()) throw std::invalid_argument("out must have one entry per query id");
        double* dst = writable_data(out, "out");
        const std::vector<int64_t> q = owned_copy(query);
        const int64_t* p = ids.data();
        const auto* ms = reinterpret_cast<const uint64_t*>(mass.data());
        const int64_t n = ids.size();
        py::gil_scoped_release release;
        sparse_log_prob(p, ms, n, num_classes, q.data(), static_cast<int64_t>(q.size()), dst, name.c_str(),
                        num_threads);
      },
      py::arg("ids"), py::arg("mass"), py::arg("num_classes"), py::arg("query"), py::arg("out").noconvert(),
      py::arg("name") = "ids", py::arg("num_threads") = 1,
      "Write log P(one draw == id) of every query id into out: log(mass[slot] / (n * 2**32)), -inf for an "
      "id without a slot; refuses ids outside [0, num_classes), naming `name`.");
  // (Large catalogues: the analytic samplers' num_tries of rows finished from their CDF.)
  py::module_ testing = m.attr("_testing");
  testing.def(
      "analytic_expected_tries",
      [](int kind, int64_t num_classes, const input_array<int64_t>& excluded, int64_t k) {
        const AnalyticDist d(kind, num_classes);
        std::vector<int64_t> ex = owned_copy(excluded);
        std::sort(ex.begin(), ex.end());
        ex.erase(std::unique(ex.begin(), ex.end()), ex.end());
        for (int64_t x : ex)
          if (x < 0 || x >= num_classes) throw std::invalid_argument("excluded holds an id outside [0, V)");
        py::gil_scoped_release release;
        return analytic_expected_tries(d, ex.data(), static_cast<int64_t>(ex.size()), k);
      },
      py::arg("kind"), py::arg("num_classes"), py::arg("excluded"), py::arg("k"),
      "The expected draws with replacement that give k distinct ids outside `excluded` "
      "(num_tries of a unique row finished from the exact CDF).");
}

}  // namespace pyneg::bindings

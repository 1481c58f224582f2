// pyneg._cuda: bindings of the CUDA kernels (csrc/cuda/api.h). Arguments cross
// as integers: device pointers (tensor.data_ptr()), the device index and the
// stream handle (torch.cuda.current_stream().cuda_stream). The Python layer
// allocates and validates the tensors; this layer checks what it can without
// touching device memory, releases the GIL around the launches, and lets
// std::invalid_argument become ValueError and std::runtime_error (CUDA
// errors) become RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/alias_draw.h"
#include "cuda/api.h"

namespace py = pybind11;
using namespace pyneg::cuda;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

ExcludeArrays exclude_of(uintptr_t offsets, uintptr_t ids, uintptr_t cum, uintptr_t allowed_mass,
                         int64_t rows_per_list) {
  ExcludeArrays ex{};
  ex.offsets = ptr<const int64_t>(offsets);
  ex.ids = ptr<const int64_t>(ids);
  ex.cum = ptr<const uint64_t>(cum);
  ex.allowed_mass = ptr<const uint64_t>(allowed_mass);
  ex.rows_per_list = rows_per_list;
  return ex;
}

template <class T>
HsArgs<T> hs_args(uintptr_t input, uintptr_t weight, uintptr_t bias, uintptr_t target,
                  uintptr_t offsets, uintptr_t nodes, uintptr_t codes, int64_t batch,
                  int64_t dim, int64_t num_classes, int64_t num_inner, int64_t num_steps) {
  HsArgs<T> a;
  a.input = ptr<const T>(input);
  a.weight = ptr<const T>(weight);
  a.bias = ptr<const T>(bias);
  a.target = ptr<const int64_t>(target);
  a.offsets = ptr<const int64_t>(offsets);
  a.nodes = ptr<const int32_t>(nodes);
  a.codes = ptr<const uint8_t>(codes);
  a.batch = batch;
  a.dim = dim;
  a.num_classes = num_classes;
  a.num_inner = num_inner;
  a.num_steps = num_steps;
  return a;
}

bool is_double(const std::string& dtype) {
  if (dtype == "float32") return false;
  if (dtype == "float64") return true;
  throw std::invalid_argument("dtype must be 'float32' or 'float64', got '" + dtype + "'");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "pyneg's CUDA kernels: alias draws bit-identical to the CPU's, hierarchical softmax. "
      "Functions take integer device pointers, the device index and a stream handle.";

  m.def("device_count", &device_count, "CUDA devices visible to pyneg._cuda (0 without a driver).");
  m.def(
      "id_set_capacity",
      [](int64_t expected) {
        if (expected < 0) throw std::invalid_argument("expected must be >= 0");
        return static_cast<int64_t>(pyneg::id_set_capacity(static_cast<uint64_t>(expected)));
      },
      py::arg("expected"), "Hash-set slots per row that alias_sample_unique needs for `expected` ids.");

  m.def(
      "alias_sample",
      [](int device, uintptr_t stream, uintptr_t entries, int64_t v, uint64_t seed,
         uint64_t offset, uintptr_t out, int64_t n) {
        py::gil_scoped_release release;
        alias_sample(device, stream, ptr<const uint64_t>(entries), v, seed, offset,
                     ptr<int64_t>(out), n);
      },
      py::arg("device"), py::arg("stream"), py::arg("entries"), py::arg("num_classes"),
      py::arg("seed"), py::arg("offset"), py::arg("out"), py::arg("n"),
      "out[j] = draw offset + j from the alias table `entries` (int64 (V,)).");

  m.def(
      "alias_sample_excluding",
      [](int device, uintptr_t stream, uintptr_t entries, int64_t v, uintptr_t table_cum,
         uintptr_t offsets, uintptr_t ids, uintptr_t cum, uintptr_t allowed_mass,
         int64_t rows_per_list, uint64_t seed, uint64_t offset, int64_t rows, int64_t k,
         uintptr_t out) {
        const ExcludeArrays ex = exclude_of(offsets, ids, cum, allowed_mass, rows_per_list);
        py::gil_scoped_release release;
        alias_sample_excluding(device, stream, ptr<const uint64_t>(entries), v,
                               ptr<const uint64_t>(table_cum), ex, seed, offset, rows, k,
                               ptr<int64_t>(out));
      },
      py::arg("device"), py::arg("stream"), py::arg("entries"), py::arg("num_classes"),
      py::arg("table_cum"), py::arg("list_offsets"), py::arg("list_ids"), py::arg("list_cum"),
      py::arg("allowed_mass"), py::arg("rows_per_list"), py::arg("seed"), py::arg("offset"),
      py::arg("rows"), py::arg("k"), py::arg("out"),
      "rows x k draws avoiding each row's prepared exclusion list.");

  m.def(
      "alias_sample_unique",
      [](int device, uintptr_t stream, uintptr_t entries, int64_t v, uintptr_t offsets,
         uintptr_t ids, uintptr_t cum, uintptr_t allowed_mass, int64_t rows_per_list,
         uint64_t seed, uint64_t offset, int64_t first_row, int64_t rows, int64_t k,
         uintptr_t slots, int64_t capacity, uintptr_t tries, uintptr_t out) {
        const ExcludeArrays ex = exclude_of(offsets, ids, cum, allowed_mass, rows_per_list);
        py::gil_scoped_release release;
        alias_sample_unique(device, stream, ptr<const uint64_t>(entries), v, ex, seed, offset,
                            first_row, rows, k, ptr<int64_t>(slots), capacity,
                            ptr<int64_t>(tries), ptr<int64_t>(out));
      },
      py::arg("device"), py::arg("stream"), py::arg("entries"), py::arg("num_classes"),
      py::arg("list_offsets"), py::arg("list_ids"), py::arg("list_cum"), py::arg("allowed_mass"),
      py::arg("rows_per_list"), py::arg("seed"), py::arg("offset"), py::arg("first_row"),
      py::arg("rows"), py::arg("k"), py::arg("slots"), py::arg("capacity"), py::arg("tries"),
      py::arg("out"),
      "Rows [first_row, first_row + rows) of k distinct ids (rejection phase; slots: rows x "
      "capacity scratch); tries[r] = -1 marks rows to finish on the CPU.");

  m.def(
      "hs_forward",
      [](const std::string& dtype, int device, uintptr_t stream, uintptr_t input,
         uintptr_t weight, uintptr_t bias, uintptr_t target, uintptr_t offsets, uintptr_t nodes,
         uintptr_t codes, int64_t batch, int64_t dim, int64_t num_classes, int64_t num_inner,
         int64_t num_steps, uintptr_t nll) {
        const bool dbl = is_double(dtype);
        py::gil_scoped_release release;
        if (dbl) {
          hs_forward<double>(device, stream,
                             hs_args<double>(input, weight, bias, target, offsets, nodes, codes,
                                             batch, dim, num_classes, num_inner, num_steps),
                             ptr<double>(nll));
        } else {
          hs_forward<float>(device, stream,
                            hs_args<float>(input, weight, bias, target, offsets, nodes, codes,
                                           batch, dim, num_classes, num_inner, num_steps),
                            ptr<float>(nll));
        }
      },
      py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("input"), py::arg("weight"),
      py::arg("bias"), py::arg("target"), py::arg("offsets"), py::arg("nodes"), py::arg("codes"),
      py::arg("batch"), py::arg("dim"), py::arg("num_classes"), py::arg("num_inner"),
      py::arg("num_steps"), py::arg("nll"),
      "Per-example hierarchical-softmax NLL (bias = 0 for none). Index arrays are bounds-checked "
      "in the kernel: an example with an id, path or node out of range gets a NaN loss.");

  m.def(
      "hs_backward",
      [](const std::string& dtype, int device, uintptr_t stream, uintptr_t input,
         uintptr_t weight, uintptr_t bias, uintptr_t target, uintptr_t offsets, uintptr_t nodes,
         uintptr_t codes, int64_t batch, int64_t dim, int64_t num_classes, int64_t num_inner,
         int64_t num_steps, uintptr_t grad_nll, uintptr_t grad_input,
         uintptr_t grad_weight, uintptr_t grad_bias) {
        const bool dbl = is_double(dtype);
        py::gil_scoped_release release;
        if (dbl) {
          hs_backward<double>(device, stream,
                              hs_args<double>(input, weight, bias, target, offsets, nodes, codes,
                                              batch, dim, num_classes, num_inner, num_steps),
                              ptr<const double>(grad_nll), ptr<double>(grad_input),
                              ptr<double>(grad_weight), ptr<double>(grad_bias));
        } else {
          hs_backward<float>(device, stream,
                             hs_args<float>(input, weight, bias, target, offsets, nodes, codes,
                                            batch, dim, num_classes, num_inner, num_steps),
                             ptr<const float>(grad_nll), ptr<float>(grad_input),
                             ptr<float>(grad_weight), ptr<float>(grad_bias));
        }
      },
      py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("input"), py::arg("weight"),
      py::arg("bias"), py::arg("target"), py::arg("offsets"), py::arg("nodes"), py::arg("codes"),
      py::arg("batch"), py::arg("dim"), py::arg("num_classes"), py::arg("num_inner"),
      py::arg("num_steps"), py::arg("grad_nll"), py::arg("grad_input"),
      py::arg("grad_weight"), py::arg("grad_bias"),
      "Writes grad_input; adds into grad_weight and grad_bias (0 for none).");
}

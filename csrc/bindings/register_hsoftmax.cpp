// Bindings of the Huffman tree and the hierarchical-softmax kernels
// (csrc/cpu/huffman.h, csrc/cpu/hsoftmax.h). Each kernel is bound for float32
// and float64; outputs must have exactly the kernel's dtype (no silent copies).
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "cpu/hsoftmax.h"
#include "cpu/huffman.h"

namespace pyneg::bindings {

namespace {

// A read-only NumPy view of one of the tree's arrays that keeps the tree alive.
template <class T>
py::array tree_view(py::object self, const HugeBuffer<T>& buf) {
  return readonly_view(self, buf.data(), static_cast<py::ssize_t>(buf.size()));
}

void require_shape(const py::array& a, std::initializer_list<py::ssize_t> shape, const char* name) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t i = 0;
  for (auto s : shape) ok = ok && a.shape(i++) == s;
  if (!ok) {
    std::string want = "(", got = "(";
    i = 0;
    for (auto s : shape) want += (i++ ? ", " : "") + std::to_string(s);
    for (py::ssize_t k = 0; k < a.ndim(); ++k) got += (k ? ", " : "") + std::to_string(a.shape(k));
    throw std::invalid_argument(std::string(name) + " must have shape " + want + "), got " + got + ")");
  }
}

// The flat path arrays an operator was given (checked for shape only: the
// values are copied and checked per batch by gather_batch_paths).
struct BoundPaths {
  HuffmanPathsView view;
};

BoundPaths bind_paths(const input_array<int64_t>& offsets, const input_array<int32_t>& nodes,
                      const input_array<uint8_t>& codes) {
  require_ndim(offsets, 1, "path_offsets");
  require_ndim(nodes, 1, "path_nodes");
  require_shape(codes, {nodes.shape(0)}, "path_codes");
  if (offsets.shape(0) < 2) throw std::invalid_argument("path_offsets must have V + 1 >= 2 entries");
  BoundPaths out;
  out.view.num_classes = offsets.shape(0) - 1;
  out.view.offsets = offsets.data();
  out.view.nodes = nodes.data();
  out.view.codes = codes.data();
  out.view.num_steps = nodes.shape(0);
  return out;
}

// One batch, bound to memory the kernels own. The targets are copied before
// anything checks them, and the batch's paths are copied out of the caller's
// arrays and checked after copying (gather_batch_paths, with the GIL released):
// the kernels read only those copies, so another thread writing the caller's
// targets or path arrays cannot make them index out of bounds.
template <class T>
struct BoundBatch {
  HSBatch<T> batch;
  HuffmanPathsView paths;
  std::vector<int64_t> target;
  BatchPaths steps;

  // Runs without the GIL: checks and copies the paths, then points the batch at them.
  void gather(int64_t max_len) {
    gather_batch_paths(paths, target.data(), batch.batch, batch.num_inner, max_len, "target", &steps);
    batch.row_offsets = steps.row_offsets.data();
    batch.nodes = steps.nodes.data();
    batch.codes = steps.codes.data();
  }
};

template <class T>
BoundBatch<T> bind_batch(const input_array<T>& input, const input_array<int64_t>& target,
                         const input_array<T>& weight, const std::optional<input_array<T>>& bias,
                         const input_array<int64_t>& offsets, const input_array<int32_t>& nodes,
                         const input_array<uint8_t>& codes, const py::array& dz) {
  require_ndim(input, 2, "input");
  const py::ssize_t batch = input.shape(0), dim = input.shape(1);
  BoundBatch<T> out;
  out.paths = bind_paths(offsets, nodes, codes).view;
  const py::ssize_t inner = out.paths.num_classes - 1;
  require_shape(target, {batch}, "target");
  require_shape(weight, {inner, dim}, "weight");
  if (bias) require_shape(*bias, {inner}, "bias");
  require_ndim(dz, 2, "dz");
  require_shape(dz, {batch, dz.shape(1)}, "dz");
  out.target = owned_copy(target);
  out.batch.input = input.data();
  out.batch.weight = weight.data();
  out.batch.bias = bias ? bias->data() : nullptr;
  out.batch.batch = batch;
  out.batch.dim = dim;
  out.batch.num_inner = inner;
  out.batch.dz_stride = dz.shape(1);
  return out;
}

template <class T>
void bind_kernels(py::module_& m) {
  m.def(
      "hs_forward",
      [](const input_array<T>& input, const input_array<int64_t>& target, const input_array<T>& weight,
         const std::optional<input_array<T>>& bias, const input_array<int64_t>& path_offsets,
         const input_array<int32_t>& path_nodes, const input_array<uint8_t>& path_codes,
         output_array<T> loss, output_array<T> dz, int num_threads) {
        BoundBatch<T> bb = bind_batch<T>(input, target, weight, bias, path_offsets, path_nodes, path_codes, dz);
        require_shape(loss, {bb.batch.batch}, "loss");
        T* loss_p = writable_data(loss, "loss");
        T* dz_p = writable_data(dz, "dz");
        py::gil_scoped_release release;
        bb.gather(bb.batch.dz_stride);
        hs_forward(bb.batch, loss_p, dz_p, num_threads);
      },
      py::arg("input"), py::arg("target"), py::arg("weight"), py::arg("bias"), py::arg("path_offsets"),
      py::arg("path_nodes"), py::arg("path_codes"), py::arg("loss").noconvert(), py::arg("dz").noconvert(),
      py::arg("num_threads") = 1,
      "Per-example NLL into loss; each path step's dNLL/dscore into dz (B, max_depth), 0 after the "
      "path (for hs_backward). Raises ValueError for a target outside [0, V), a path longer than "
      "dz's width or path arrays that do not describe paths.");
  m.def(
      "hs_backward",
      [](const input_array<T>& input, const input_array<int64_t>& target, const input_array<T>& weight,
         const input_array<int64_t>& path_offsets, const input_array<int32_t>& path_nodes,
         const input_array<uint8_t>& path_codes, const input_array<T>& dz, const input_array<T>& grad_loss,
         std::optional<output_array<T>> grad_input, std::optional<output_array<T>> grad_weight,
         std::optional<output_array<T>> grad_bias, std::optional<output_array<int64_t>> touched,
         int num_threads, bool pad_unused) {
        BoundBatch<T> bb =
            bind_batch<T>(input, target, weight, std::nullopt, path_offsets, path_nodes, path_codes, dz);
        const int64_t batch = bb.batch.batch, dim = bb.batch.dim, inner = bb.batch.num_inner;
        require_shape(grad_loss, {batch}, "grad_loss");
        T* gi = nullptr;
        T* gw = nullptr;
        T* gb = nullptr;
        int64_t* tp = nullptr;
        if (grad_input) {
          require_shape(*grad_input, {batch, dim}, "grad_input");
          gi = writable_data(*grad_input, "grad_input");
        }
        // Dense node gradients have V - 1 rows; compact ones one row per slot of touched.
        int64_t rows = inner;
        if (touched) {
          require_ndim(*touched, 1, "touched");
          rows = touched->shape(0);
          tp = writable_data(*touched, "touched");
        }
        if (grad_weight) {
          require_shape(*grad_weight, {rows, dim}, "grad_weight");
          gw = writable_data(*grad_weight, "grad_weight");
        }
        if (grad_bias) {
          require_shape(*grad_bias, {rows}, "grad_bias");
          gb = writable_data(*grad_bias, "grad_bias");
        }
        const T* dz_p = dz.data();
        const T* gl = grad_loss.data();
        py::gil_scoped_release release;
        bb.gather(bb.batch.dz_stride);
        const int64_t steps = bb.steps.row_offsets.back();
        if (tp != nullptr && rows < std::min(steps, inner)) {
          throw std::invalid_argument("touched must have room for min(path steps, V - 1) = " +
                                      std::to_string(std::min(steps, inner)) + " nodes");
        }
        const int64_t used = hs_backward(bb.batch, dz_p, gl, gi, gw, gb, tp, num_threads);
        if (tp != nullptr && pad_unused) {
          // Slots past the distinct nodes: node 0 (the root, on every path when there is a
          // step at all) and -0.0, which adds nothing to any value, so the slots may be kept.
          for (int64_t u = used; u < rows; ++u) {
            tp[u] = 0;
            if (gw != nullptr) std::fill(gw + u * dim, gw + (u + 1) * dim, T(-0.0));
            if (gb != nullptr) gb[u] = T(-0.0);
          }
        }
        return used;
      },
      py::arg("input"), py::arg("target"), py::arg("weight"), py::arg("path_offsets"), py::arg("path_nodes"),
      py::arg("path_codes"), py::arg("dz"), py::arg("grad_loss"), py::arg("grad_input").noconvert() = py::none(),
      py::arg("grad_weight").noconvert() = py::none(), py::arg("grad_bias").noconvert() = py::none(),
      py::arg("touched").noconvert() = py::none(), py::arg("num_threads") = 1, py::arg("pad_unused") = true,
      "Gradients of sum(grad_loss * loss). Node rows are written densely (rows of V - 1), or "
      "compactly when touched is given (row u is node touched[u]; with pad_unused the slots past "
      "the distinct nodes get node 0 and -0.0, otherwise they are left as they were); returns "
      "the number of distinct nodes.");
  m.def(
      "hs_log_prob",
      [](const input_array<int32_t>& children, const input_array<T>& logits, output_array<T> out,
         int num_threads) {
        require_ndim(logits, 2, "logits");
        const int64_t batch = logits.shape(0), inner = logits.shape(1);
        require_shape(children, {2 * inner}, "children");
        require_shape(out, {batch, inner + 1}, "out");
        T* o = writable_data(out, "out");
        const T* x = logits.data();
        std::vector<int32_t> ch = owned_copy(children);
        py::gil_scoped_release release;
        check_children(ch.data(), inner + 1, "children");
        hs_log_prob(ch.data(), inner + 1, x, batch, o, num_threads);
      },
      py::arg("children"), py::arg("logits"), py::arg("out").noconvert(), py::arg("num_threads") = 1,
      "log P(c | input) of every class from the inner-node scores logits (B, V - 1).");
  m.def(
      "hs_log_prob_backward",
      [](const input_array<int32_t>& children, const input_array<T>& logits, const input_array<T>& grad_out,
         output_array<T> grad_logits, int num_threads) {
        require_ndim(logits, 2, "logits");
        const int64_t batch = logits.shape(0), inner = logits.shape(1);
        require_shape(children, {2 * inner}, "children");
        require_shape(grad_out, {batch, inner + 1}, "grad_out");
        require_shape(grad_logits, {batch, inner}, "grad_logits");
        T* gx = writable_data(grad_logits, "grad_logits");
        const T* x = logits.data();
        const T* g = grad_out.data();
        std::vector<int32_t> ch = owned_copy(children);
        py::gil_scoped_release release;
        check_children(ch.data(), inner + 1, "children");
        hs_log_prob_backward(ch.data(), inner + 1, x, g, batch, gx, num_threads);
      },
      py::arg("children"), py::arg("logits"), py::arg("grad_out"), py::arg("grad_logits").noconvert(),
      py::arg("num_threads") = 1, "Gradient of hs_log_prob with respect to logits.");
}

}  // namespace

void register_hsoftmax(py::module_& m) {
  py::class_<HuffmanTree>(m, "HuffmanTree",
                          "Huffman tree over V classes with flat root-to-leaf paths.")
      .def_static(
          "from_counts",
          [](const input_array<double>& counts, const std::string& name) {
            require_ndim(counts, 1, name.c_str());
            const double* c = counts.data();
            const int64_t n = counts.size();
            py::gil_scoped_release release;
            return build_huffman_tree(c, n, name.c_str());
          },
          py::arg("counts"), py::arg("name") = "counts",
          "Build the tree (sort, then the two-queue merge); ties are broken by class id.")
      .def_property_readonly("num_classes", [](const HuffmanTree& t) { return t.num_classes; })
      .def_property_readonly("max_depth", [](const HuffmanTree& t) { return t.max_depth; })
      .def_property_readonly(
          "path_offsets", [](py::object self) { return tree_view(self, self.cast<const HuffmanTree&>().offsets); },
          "int64 (V + 1): class c's path is path_nodes[path_offsets[c]:path_offsets[c + 1]] (read-only view).")
      .def_property_readonly(
          "path_nodes", [](py::object self) { return tree_view(self, self.cast<const HuffmanTree&>().nodes); },
          "int32 inner-node indices of every path, root first (read-only view).")
      .def_property_readonly(
          "path_codes", [](py::object self) { return tree_view(self, self.cast<const HuffmanTree&>().codes); },
          "uint8 code bits of every path step (read-only view).")
      .def_property_readonly(
          "depths", [](py::object self) { return tree_view(self, self.cast<const HuffmanTree&>().depths); },
          "int64 path length of every class (read-only view).")
      .def_property_readonly(
          "children", [](py::object self) { return tree_view(self, self.cast<const HuffmanTree&>().children); },
          "int32 (2 (V - 1)): children[2 n + b] is the branch-b child of inner node n; "
          ">= 0 an inner node, < 0 the leaf of class ~value (read-only view).");
  bind_kernels<float>(m);
  bind_kernels<double>(m);
}

}  // namespace pyneg::bindings

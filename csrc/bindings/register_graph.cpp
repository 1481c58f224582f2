// Bindings of the graph layer (csrc/cpu/graph.h): known-edge sets, filtered
// negatives, triple corruption and filtered ranks. Every id array is copied
// (owned_copy) before it is checked, and the kernels run without the GIL on
// those copies; the score matrix of filtered_ranks is copied row by row by
// the kernel itself.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "cpu/graph.h"

namespace pyneg::bindings {

namespace {

void check_range(const std::vector<int64_t>& v, int64_t limit, const char* name) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || (limit >= 0 && v[i] >= limit)) {
      throw std::invalid_argument(std::string(name) + " holds id " + std::to_string(v[i]) + " at position " +
                                  std::to_string(i) + ", outside [0, " +
                                  (limit >= 0 ? std::to_string(limit) : std::string("inf")) + ")");
    }
  }
}

void require_same_size(const py::array& a, const py::array& b, const char* what) {
  if (a.size() != b.size()) throw std::invalid_argument(std::string(what) + ": arrays differ in length");
}

struct Typed {
  std::vector<int64_t> offsets, ids;
};

// pybind11 computes an array's strides and byte size in signed 64-bit arithmetic:
// refuse (rows, k) outputs of 8-byte values whose byte size cannot be represented.
void check_output_shape(int64_t rows, int64_t k, const char* what) {
  constexpr int64_t kMaxBytes = int64_t{1} << 62;
  if (rows < 0 || k < 0 || (rows > 0 && k > kMaxBytes / 8 / rows))
    throw std::invalid_argument(std::string(what) + " asks for more negatives than one array can hold");
}

// An index argument: None, a PairGroups, or its arrays (groups (G, 4) as
// (a, b, begin, len) rows, values (K,), slots (S,); PairGroups.arrays), e.g.
// an operator's tensors, read in place through a bounded view (PairGroups::view).
struct IndexArg {
  std::shared_ptr<PairGroups> owned;
  py::array_t<int64_t, py::array::c_style | py::array::forcecast> groups, values, slots;
  PairGroups view;
  const PairGroups* ptr = nullptr;
};

void resolve_index(const py::object& o, IndexArg* out, const char* name) {
  if (o.is_none()) return;
  if (py::isinstance<PairGroups>(o)) {
    out->owned = o.cast<std::shared_ptr<PairGroups>>();
    out->ptr = out->owned.get();
    return;
  }
  const auto t = o.cast<py::tuple>();
  if (t.size() != 3) throw std::invalid_argument(std::string(name) + " must be a PairGroups or (groups, values, slots)");
  out->groups = t[0].cast<decltype(out->groups)>();
  out->values = t[1].cast<decltype(out->values)>();
  out->slots = t[2].cast<decltype(out->slots)>();
  if (out->groups.ndim() != 2 || out->groups.shape(1) != 4)
    throw std::invalid_argument(std::string(name) + ": groups must be (G, 4)");
  require_ndim(out->values, 1, name);
  require_ndim(out->slots, 1, name);
  static_assert(sizeof(PairGroups::Group) == 4 * sizeof(int64_t), "Group is 4 int64");
  out->view = PairGroups::view(reinterpret_cast<const PairGroups::Group*>(out->groups.data()), out->groups.shape(0),
                               out->values.data(), out->values.shape(0), out->slots.data(), out->slots.shape(0), name);
  out->ptr = &out->view;
}

}  // namespace

void register_graph(py::module_& m) {
  py::class_<PairGroups, std::shared_ptr<PairGroups>>(
      m, "PairGroups",
      "Known (a, b, c) keys grouped by (a, b): sorted unique c per group, found through a hash of the pair.")
      .def(py::init([](const input_array<int64_t>& a, const input_array<int64_t>& b, const input_array<int64_t>& c,
                       int64_t limit_a, int64_t limit_b, int64_t limit_c, int num_threads) {
             require_ndim(a, 1, "a");
             require_ndim(b, 1, "b");
             require_ndim(c, 1, "c");
             require_same_size(a, b, "PairGroups");
             require_same_size(a, c, "PairGroups");
             std::vector<int64_t> va = owned_copy(a), vb = owned_copy(b), vc = owned_copy(c);
             check_range(va, limit_a, "relation ids");
             check_range(vb, limit_b, "source ids");
             check_range(vc, limit_c, "destination ids");
             py::gil_scoped_release release;
             return std::make_shared<PairGroups>(va.data(), vb.data(), vc.data(), static_cast<int64_t>(va.size()),
                                                 num_threads);
           }),
           py::arg("a"), py::arg("b"), py::arg("c"), py::arg("limit_a") = -1, py::arg("limit_b") = -1,
           py::arg("limit_c") = -1, py::arg("num_threads") = 1)
      .def(
          "arrays",
          [](const std::shared_ptr<PairGroups>& g) {
            py::object base = py::cast(g);
            const auto ng = static_cast<py::ssize_t>(g->num_groups());
            py::array_t<int64_t> groups({ng, py::ssize_t{4}}, reinterpret_cast<const int64_t*>(g->groups()), base);
            py::array_t<int64_t> values(static_cast<py::ssize_t>(g->num_keys()), g->values(), base);
            py::array_t<int64_t> slots(static_cast<py::ssize_t>(g->num_slots()), g->slots(), base);
            for (py::array* a : {static_cast<py::array*>(&groups), static_cast<py::array*>(&values),
                                 static_cast<py::array*>(&slots)})
              py::detail::array_proxy(a->ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            return py::make_tuple(groups, values, slots);
          },
          "(groups (G, 4) int64 rows (a, b, begin, len), values (K,), slots (S,)): the index's own arrays, "
          "read-only views that keep it alive; graph_corrupt and graph_filtered_ranks take them in its place.")
      .def_property_readonly("num_keys", &PairGroups::num_keys)
      .def_property_readonly("num_groups", &PairGroups::num_groups)
      .def_property_readonly("memory_bytes", &PairGroups::memory_bytes)
      .def(
          "contains",
          [](const PairGroups& g, const input_array<int64_t>& a, const input_array<int64_t>& b,
             const input_array<int64_t>& c, int num_threads) {
            require_same_size(a, b, "contains");
            require_same_size(a, c, "contains");
            const std::vector<int64_t> va = owned_copy(a), vb = owned_copy(b), vc = owned_copy(c);
            py::array_t<bool> out(static_cast<py::ssize_t>(va.size()));
            auto* o = reinterpret_cast<uint8_t*>(out.mutable_data());
            {
              py::gil_scoped_release release;
              pair_groups_contains(g, va.data(), vb.data(), vc.data(), static_cast<int64_t>(va.size()), o,
                                   num_threads);
            }
            return out;
          },
          py::arg("a"), py::arg("b"), py::arg("c"), py::arg("num_threads") = 1,
          "bool array: (a[i], b[i], c[i]) is a known key (any int64 values; negative ones are never known).")
      .def(
          "group_arrays",
          [](const PairGroups& g) {
            const PairGroups::Group* gs = g.groups();
            const auto ng = static_cast<size_t>(g.num_groups());
            py::array_t<int64_t> a(static_cast<py::ssize_t>(ng)), b(static_cast<py::ssize_t>(ng)),
                len(static_cast<py::ssize_t>(ng));
            auto *pa = a.mutable_data(), *pb = b.mutable_data(), *pl = len.mutable_data();
            for (size_t i = 0; i < ng; ++i) {
              pa[i] = gs[i].a;
              pb[i] = gs[i].b;
              pl[i] = gs[i].len;
            }
            return py::make_tuple(a, b, len);
          },
          "(a, b, count) of every group, in first-seen order (copies).")
      .def(
          "keys",
          [](const PairGroups& g) {
            const int64_t* vals = g.values();
            const auto n = static_cast<py::ssize_t>(g.num_keys());
            py::array_t<int64_t> a(n), b(n), c(n);
            auto *pa = a.mutable_data(), *pb = b.mutable_data(), *pc = c.mutable_data();
            py::ssize_t q = 0;
            for (int64_t gi = 0; gi < g.num_groups(); ++gi) {
              const PairGroups::Group& grp = g.groups()[gi];
              for (int64_t j = 0; j < grp.len; ++j, ++q) {
                pa[q] = grp.a;
                pb[q] = grp.b;
                pc[q] = vals[grp.begin + j];
              }
            }
            return py::make_tuple(a, b, c);
          },
          "(a, b, c) of every key, grouped by (a, b) in first-seen order, c sorted (copies).");

  py::class_<GraphAlias, std::shared_ptr<GraphAlias>>(m, "GraphAlias",
                                                      "Alias table over node weights for the graph layer.")
      .def(py::init([](const input_array<double>& w) {
             require_ndim(w, 1, "weights");
             const std::vector<double> v = owned_copy(w);
             py::gil_scoped_release release;
             return std::make_shared<GraphAlias>(build_graph_alias(v.data(), static_cast<int64_t>(v.size()), "weights"));
           }),
           py::arg("weights"))
      .def_property_readonly("probs",
                             [](const GraphAlias& t) {
                               std::vector<double> p(t.mass.size());
                               const double total = static_cast<double>(t.table.total_mass());
                               for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<double>(t.mass[i]) / total;
                               return to_array(p);
                             })
      .def_property_readonly("num_classes", &GraphAlias::size);

  m.def(
      "graph_corrupt",
      [](const input_array<int64_t>& rows, const input_array<double>& side_probs, int64_t k, bool unique,
         bool exclude_self_loops, std::vector<py::object> indexes,
         std::vector<int64_t> universes, std::optional<std::pair<input_array<int64_t>, input_array<int64_t>>> typed_head,
         std::optional<std::pair<input_array<int64_t>, input_array<int64_t>>> typed_tail,
         std::optional<std::shared_ptr<GraphAlias>> weights_head, std::optional<std::shared_ptr<GraphAlias>> weights_tail,
         uint64_t seed, uint64_t offset, int num_threads) {
        require_ndim(rows, 2, "rows");
        require_ndim(side_probs, 2, "side_probs");
        if (rows.shape(1) != 3 || side_probs.shape(1) != 3 || side_probs.shape(0) != rows.shape(0))
          throw std::invalid_argument("rows and side_probs must both be (B, 3)");
        if (indexes.size() != 3 || universes.size() != 3)
          throw std::invalid_argument("indexes and universes must have 3 entries (head, relation, tail)");
        if (k < 0) throw std::invalid_argument("k must be >= 0");
        const std::vector<int64_t> r = owned_copy(rows);
        const std::vector<double> p = owned_copy(side_probs);
        Typed th, tt;
        auto take_typed = [&](const std::optional<std::pair<input_array<int64_t>, input_array<int64_t>>>& src,
                              Typed* dst, CorruptSide* side) {
          if (!src) return;
          dst->offsets = owned_copy(src->first);
          dst->ids = owned_copy(src->second);
          const auto& o = dst->offsets;
          if (o.empty() || o.front() != 0 || o.back() != static_cast<int64_t>(dst->ids.size()))
            throw std::invalid_argument("typed offsets must start at 0 and end at len(ids)");
          for (size_t i = 0; i + 1 < o.size(); ++i) {
            if (o[i + 1] < o[i]) throw std::invalid_argument("typed offsets must be non-decreasing");
            for (int64_t j = o[i] + 1; j < o[i + 1]; ++j)
              if (dst->ids[j] <= dst->ids[j - 1]) throw std::invalid_argument("typed ids must be sorted and unique");
          }
          check_range(dst->ids, side->universe, "typed ids");
          side->typed_offsets = o.data();
          side->typed_ids = dst->ids.data();
          side->num_typed_relations = static_cast<int64_t>(o.size()) - 1;
        };
        CorruptRequest req;
        req.rows = r.data();
        req.num_rows = rows.shape(0);
        req.side_probs = p.data();
        req.k = k;
        req.unique = unique;
        req.exclude_self_loops = exclude_self_loops;
        req.seed = seed;
        req.offset = offset;
        IndexArg index_args[3];
        for (int s = 0; s < 3; ++s) {
          resolve_index(indexes[s], &index_args[s], "indexes");
          req.side[s].index = index_args[s].ptr;
          req.side[s].universe = universes[s];
        }
        take_typed(typed_head, &th, &req.side[0]);
        take_typed(typed_tail, &tt, &req.side[2]);
        req.side[0].weights = weights_head ? weights_head->get() : nullptr;
        req.side[2].weights = weights_tail ? weights_tail->get() : nullptr;
        for (int s : {0, 2}) {
          if (req.side[s].weights && req.side[s].weights->size() != req.side[s].universe)
            throw std::invalid_argument("weights must have one entry per node");
        }
        check_output_shape(req.num_rows, k, "k");
        const auto B = static_cast<py::ssize_t>(req.num_rows);
        py::array_t<int64_t> ids({B, static_cast<py::ssize_t>(k)});
        py::array_t<int8_t> sides({B, static_cast<py::ssize_t>(k)});
        py::array_t<double> log_q({B, static_cast<py::ssize_t>(k)});
        int64_t* pi = ids.mutable_data();
        int8_t* ps = sides.mutable_data();
        double* pq = log_q.mutable_data();
        {
          py::gil_scoped_release release;
          corrupt_rows(req, pi, ps, pq, num_threads);
        }
        return py::make_tuple(ids, sides, log_q);
      },
      py::arg("rows"), py::arg("side_probs"), py::arg("k"), py::arg("unique"), py::arg("exclude_self_loops"),
      py::arg("indexes"), py::arg("universes"), py::arg("typed_head") = py::none(), py::arg("typed_tail") = py::none(),
      py::arg("weights_head") = py::none(), py::arg("weights_tail") = py::none(), py::arg("seed") = 0,
      py::arg("offset") = 0, py::arg("num_threads") = 1,
      "(ids, sides, log_q), each (B, k): replacing id, side (0 head, 1 relation, 2 tail), log q of the draw.");

  m.def(
      "graph_global_negatives",
      [](const PairGroups& index, int64_t num_src, int64_t num_dst, int64_t num_known, int64_t k, bool unique,
         bool exclude_self_loops, bool upper, uint64_t seed, uint64_t offset, int num_threads) {
        if (k < 0) throw std::invalid_argument("num_neg_samples must be >= 0");
        check_output_shape(2, k, "num_neg_samples");
        py::array_t<int64_t> out({py::ssize_t{2}, static_cast<py::ssize_t>(k)});
        int64_t* ps = out.mutable_data();
        int64_t* pd = ps + k;
        double lq;
        {
          py::gil_scoped_release release;
          lq = global_negatives(index, num_src, num_dst, num_known, k, unique, exclude_self_loops, upper, seed, offset,
                                ps, pd, num_threads);
        }
        return py::make_tuple(out, lq);
      },
      py::arg("index"), py::arg("num_src"), py::arg("num_dst"), py::arg("num_known"), py::arg("k"), py::arg("unique"),
      py::arg("exclude_self_loops"), py::arg("upper"), py::arg("seed") = 0, py::arg("offset") = 0,
      py::arg("num_threads") = 1, "(pairs, log_q): (2, k) negative pairs and the log probability of one draw.");

  m.def(
      "graph_filtered_ranks",
      [](const py::array& scores, const input_array<int64_t>& truth, const py::object& index,
         const input_array<int64_t>& key_a, const input_array<int64_t>& key_b, int num_threads) {
        require_ndim(scores, 2, "scores");
        require_ndim(truth, 1, "targets");
        if (truth.shape(0) != scores.shape(0)) throw std::invalid_argument("targets must have one id per scores row");
        const std::vector<int64_t> t = owned_copy(truth);
        std::vector<int64_t> ka, kb;
        IndexArg index_arg;
        resolve_index(index, &index_arg, "index");
        if (index_arg.ptr != nullptr) {
          if (key_a.size() != truth.size() || key_b.size() != truth.size())
            throw std::invalid_argument("filter keys must have one entry per row");
          ka = owned_copy(key_a);
          kb = owned_copy(key_b);
        }
        const int64_t b = scores.shape(0), n = scores.shape(1);
        py::array_t<int64_t> opt(static_cast<py::ssize_t>(b)), pes(static_cast<py::ssize_t>(b));
        int64_t* po = opt.mutable_data();
        int64_t* pp = pes.mutable_data();
        const PairGroups* idx = index_arg.ptr;
        const bool contiguous = (scores.flags() & py::array::c_style) != 0;
        if (!contiguous) throw std::invalid_argument("scores must be C-contiguous");
        if (py::isinstance<py::array_t<float>>(scores) && scores.dtype().is(py::dtype::of<float>())) {
          const auto* s = static_cast<const float*>(scores.data());
          py::gil_scoped_release release;
          filtered_ranks<float>(s, b, n, t.data(), idx, ka.data(), kb.data(), po, pp, num_threads);
        } else if (scores.dtype().is(py::dtype::of<double>())) {
          const auto* s = static_cast<const double*>(scores.data());
          py::gil_scoped_release release;
          filtered_ranks<double>(s, b, n, t.data(), idx, ka.data(), kb.data(), po, pp, num_threads);
        } else {
          throw py::type_error("scores must be float32 or float64");
        }
        return py::make_tuple(opt, pes);
      },
      py::arg("scores").noconvert(), py::arg("targets"), py::arg("index"), py::arg("key_a"), py::arg("key_b"),
      py::arg("num_threads") = 1,
      "(optimistic, pessimistic) int64 filtered ranks of targets[i] in scores[i] (C-contiguous float32/64).");
}

}  // namespace pyneg::bindings

// Bindings of the alias table and its samplers (csrc/cpu/alias_*.h).
#include <algorithm>
#include <optional>
#include <vector>

#include <pybind11/stl.h>

#include "bindings/common.h"
#include "cpu/alias_sample.h"
#include "cpu/alias_table.h"
#include "cpu/analytic_sample.h"
#include "cpu/huge_buffer.h"
#include "cpu/philox_batch.h"

namespace pyneg::bindings {

namespace {

// The exclusion lists over `ids`, an owned copy of `exclude` (see owned_copy):
// the kernels read them with the GIL released.
ExcludeLists exclude_lists(const input_array<int64_t>& exclude, const std::vector<int64_t>& ids,
                           int64_t rows) {
  if (exclude.ndim() != 2) throw std::invalid_argument("exclude must be 2-D (rows, width)");
  ExcludeLists ex;
  ex.ids = ids.data();
  ex.num_lists = exclude.shape(0);
  ex.width = exclude.shape(1);
  if (ex.num_lists <= 0 || rows % ex.num_lists != 0) {
    throw std::invalid_argument("exclude has " + std::to_string(ex.num_lists) +
                                " rows, which does not divide the " + std::to_string(rows) +
                                " sample rows");
  }
  ex.rows_per_list = rows / ex.num_lists;
  return ex;
}

int64_t checked_rows(output_array<int64_t>& out, int64_t k) {
  if (k <= 0 || out.size() % k != 0) {
    throw std::invalid_argument("out must hold a whole number of rows of k ids");
  }
  return out.size() / k;
}

// A table given as arrays (the int64 tensors a sampler holds: entries and the
// masses derived from them, both read as uint64). Shapes are checked here; the
// kernels never index memory by an alias, check every drawn id against V (an
// alias >= V is refused, not returned), and check the masses where they read
// them (each <= V * 2**32, an exclusion row's sum too, the running sum ==
// V * 2**32).
AliasTableView table_view(const input_array<int64_t>& entries, const input_array<int64_t>* mass,
                          int64_t num_positive) {
  require_ndim(entries, 1, "entries");
  const int64_t n = entries.size();
  if (n <= 0 || n > kMaxClasses)
    throw std::invalid_argument("entries must hold 1 to 2**31 - 1 buckets, got " + std::to_string(n));
  if (mass == nullptr && num_positive != 0)
    throw std::invalid_argument("num_positive needs mass");
  AliasTableView t{reinterpret_cast<const uint64_t*>(entries.data()), nullptr, n, num_positive};
  if (mass) {
    require_ndim(*mass, 1, "mass");
    if (mass->size() != n) throw std::invalid_argument("mass must have as many entries as entries");
    if (num_positive < 1 || num_positive > n)
      throw std::invalid_argument("num_positive must be in [1, V], got " + std::to_string(num_positive));
    t.mass = reinterpret_cast<const uint64_t*>(mass->data());
  }
  return t;
}

// A writable int64 view of a table's buffer (uint64 values below 2**63 in
// mass; entries are bit patterns), kept alive by the table: the sampler wraps
// it in a tensor without copying. pyneg never writes it.
py::array_t<int64_t> storage_view(py::object owner, const uint64_t* data, py::ssize_t n) {
  return py::array_t<int64_t>({n}, {static_cast<py::ssize_t>(sizeof(int64_t))},
                              reinterpret_cast<const int64_t*>(data), owner);
}


std::vector<uint64_t> masses_of(const AliasTable& t) {
  std::vector<uint64_t> m(static_cast<size_t>(t.size()));
  class_masses(t.entries.data(), t.size(), m.data());
  return m;
}

// One conversion-and-draw per kind: the operators' array-taking bindings and
// the tests' table-taking ones (an AliasTable converts to a view) share it.
void draw_into(const AliasTableView& t, uint64_t seed, uint64_t offset, output_array<int64_t>& out,
               int num_threads) {
  int64_t* dst = writable_data(out, "out");
  const int64_t n = out.size();
  py::gil_scoped_release release;
  alias_sample(t, seed, offset, dst, n, num_threads);
}

// The conversions of a draw with exclusion lists, shared by the table and the
// analytic kernels: the output's rows and a private copy of the lists (checked
// after copying); then draw(ex, rows, dst) runs without the GIL.
template <class Draw>
void excluding_into(const input_array<int64_t>& exclude, int64_t k, output_array<int64_t>& out, Draw&& draw) {
  int64_t* dst = writable_data(out, "out");
  const int64_t rows = checked_rows(out, k);
  const std::vector<int64_t> ids = owned_copy(exclude);
  const ExcludeLists ex = exclude_lists(exclude, ids, rows);
  py::gil_scoped_release release;
  draw(ex, rows, dst);
}

// The same for draws without replacement, with the optional per-row tries:
// draw(ex, rows, dst, tries) runs without the GIL.
template <class Draw>
void unique_into(const input_array<int64_t>& exclude, int64_t k, output_array<int64_t>& out,
                 std::optional<output_array<int64_t>>& tries, Draw&& draw) {
  int64_t* dst = writable_data(out, "out");
  const int64_t rows = checked_rows(out, k);
  int64_t* tr = nullptr;
  if (tries) {
    tr = writable_data(*tries, "tries");
    if (tries->size() != rows) throw std::invalid_argument("tries must hold one value per row");
  }
  const std::vector<int64_t> ids = owned_copy(exclude);
  const ExcludeLists ex = exclude_lists(exclude, ids, rows);
  py::gil_scoped_release release;
  draw(ex, rows, dst, tr);
}

void draw_excluding_into(const AliasTableView& t, uint64_t seed, uint64_t offset,
                         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t>& out,
                         int num_threads) {
  excluding_into(exclude, k, out, [&](const ExcludeLists& ex, int64_t rows, int64_t* dst) {
    alias_sample_excluding(t, seed, offset, ex, rows, k, dst, num_threads);
  });
}

void draw_unique_into(const AliasTableView& t, uint64_t seed, uint64_t offset,
                      const input_array<int64_t>& exclude, int64_t k, output_array<int64_t>& out,
                      std::optional<output_array<int64_t>>& tries, int num_threads) {
  unique_into(exclude, k, out, tries, [&](const ExcludeLists& ex, int64_t rows, int64_t* dst, int64_t* tr) {
    alias_sample_unique(t, seed, offset, ex, rows, k, dst, tr, num_threads);
  });
}

}  // namespace

void register_alias(py::module_& m) {
  // Test-only members of the table (golden draw streams, the CUDA path's
  // preparation checked against the CPU's) live in _core._testing as
  // alias_table_<name>(table, ...): the package itself draws through the
  // array-taking kernels below.
  py::module_ testing = m.attr("_testing");
  py::class_<AliasTable> cls(m, "AliasTable",
                         "Walker/Vose alias table in 8 bytes per class (csrc/cpu/alias_table.h).");
  // Copies the weights while holding the GIL (into the table's own buffer: the
  // only copy), then checks and builds from the copy without it.
  auto build = [](const input_array<double>& weights, const std::string& name, int num_threads) {
    require_ndim(weights, 1, name.c_str());
    const int64_t n = weights.size();
    check_table_size(n, name.c_str());
    HugeBuffer<uint64_t> words(static_cast<size_t>(n));
    copy_weights(weights.data(), n, words.data(), num_threads);
    py::gil_scoped_release release;
    return build_alias_table_in_place(std::move(words), name.c_str(), num_threads);
  };
  cls.def(py::init(build), py::arg("weights"), py::arg("name") = "weights", py::arg("num_threads") = 1,
          "Build the table from non-negative weights (normalised by their sum).")
      .def_property_readonly("num_classes", &AliasTable::size)
      .def_property_readonly("num_positive",
                             [](const AliasTable& t) { return t.num_positive; })
      .def(
          "_storage",
          [](py::object self) {
            const auto& t = self.cast<const AliasTable&>();
            return storage_view(self, t.entries.data(), t.size());
          },
          "entries as an int64 array sharing the table's memory (the tensor the sampler "
          "holds; never written).");
  m.def(
      "alias_class_masses",
      [](const input_array<int64_t>& entries, output_array<int64_t> out) {
        require_ndim(entries, 1, "entries");
        const int64_t n = entries.size();
        check_table_size(n, "entries");
        if (out.size() != n) throw std::invalid_argument("out must have as many entries as entries");
        auto* dst = reinterpret_cast<uint64_t*>(writable_data(out, "out"));
        const auto* src = reinterpret_cast<const uint64_t*>(entries.data());
        py::gil_scoped_release release;
        return class_masses(src, n, dst);
      },
      py::arg("entries"), py::arg("out").noconvert(),
      "Write the class masses the table's entries imply into out (they sum to V * 2**32); "
      "returns how many are positive. Refuses entries with an alias >= V.");
  testing.def(
      "alias_table_from_entries",
      [](const input_array<int64_t>& entries) {
        require_ndim(entries, 1, "entries");
        const int64_t n = entries.size();
        check_table_size(n, "entries");
        AliasTable t;
        t.entries = HugeBuffer<uint64_t>(static_cast<size_t>(n));
        std::copy(entries.data(), entries.data() + n, reinterpret_cast<int64_t*>(t.entries.data()));
        std::vector<uint64_t> m(static_cast<size_t>(n));
        t.num_positive = class_masses(t.entries.data(), n, m.data());
        return t;
      },
      py::arg("entries"), "An AliasTable holding a copy of entries (checked: every alias < V).");
  testing.def(
      "alias_table_entries",
      [](py::object self) {
        const auto& t = self.cast<const AliasTable&>();
        return readonly_view(self, t.entries.data(), t.size());
      },
      "Packed (alias << 32) | threshold words, one per bucket (read-only view).");
  testing.def(
      "alias_table_mass",
      [](const AliasTable& t) { return to_array(masses_of(t)); },
      "Integer mass of every class implied by the entries; masses sum to V * 2**32 (a new array).");
  testing.def(
      "alias_table_sample",
      [](const AliasTable& t, uint64_t seed, uint64_t offset, output_array<int64_t> out,
         int num_threads) { draw_into(t, seed, offset, out, num_threads); },
      py::arg("table"), py::arg("seed"), py::arg("offset"), py::arg("out").noconvert(),
      py::arg("num_threads") = 1, "Fill out with independent draws.");
  testing.def(
      "alias_table_sample_excluding",
      [](const AliasTable& t, uint64_t seed, uint64_t offset,
         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t> out,
         int num_threads) {
        const std::vector<uint64_t> mass = masses_of(t);
        AliasTableView v = t.view();
        v.mass = mass.data();
        draw_excluding_into(v, seed, offset, exclude, k, out, num_threads);
      },
      py::arg("table"), py::arg("seed"), py::arg("offset"), py::arg("exclude"), py::arg("k"),
      py::arg("out").noconvert(), py::arg("num_threads") = 1,
      "Fill out (rows x k) with draws that avoid each row's exclusion list.");
  testing.def(
      "alias_table_sample_unique",
      [](const AliasTable& t, uint64_t seed, uint64_t offset,
         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t> out,
         std::optional<output_array<int64_t>> tries, int num_threads) {
        const std::vector<uint64_t> mass = masses_of(t);
        AliasTableView v = t.view();
        v.mass = mass.data();
        draw_unique_into(v, seed, offset, exclude, k, out, tries, num_threads);
      },
      py::arg("table"), py::arg("seed"), py::arg("offset"), py::arg("exclude"), py::arg("k"),
      py::arg("out").noconvert(), py::arg("tries").noconvert() = py::none(),
      py::arg("num_threads") = 1,
      "Fill out (rows x k) with ids distinct within each row; tries gets the "
      "candidate draws each row used.");
  // For the CUDA path: the same preparation as the CPU kernels, as arrays to upload.
  testing.def(
      "alias_table_prepare_exclude",
      [](const AliasTable& t, const input_array<int64_t>& exclude, int64_t rows, int64_t unique_k) {
        const std::vector<int64_t> ids = owned_copy(exclude);
        const ExcludeLists ex = exclude_lists(exclude, ids, rows);
        const std::vector<uint64_t> mass = masses_of(t);
        AliasTableView v = t.view();
        v.mass = mass.data();
        PreparedExclude p;
        {
          py::gil_scoped_release release;
          p = prepare_exclude_lists(v, ex, unique_k);
        }
        return py::make_tuple(to_array(p.offsets), to_array(p.ids), to_array(p.cum),
                              to_array(p.allowed_mass), ex.rows_per_list, p.longest());
      },
      py::arg("table"), py::arg("exclude"), py::arg("rows"), py::arg("unique_k") = 0,
      "Sorted, deduplicated exclusion lists as the kernels use them: (offsets, ids, cum, "
      "allowed_mass, rows_per_list, longest list).");
  testing.def(
      "alias_table_cumulative_mass",
      [](const AliasTable& t) {
        const std::vector<uint64_t> mass = masses_of(t);
        AliasTableView v = t.view();
        v.mass = mass.data();
        std::vector<uint64_t> cum;
        {
          py::gil_scoped_release release;
          cum = cumulative_mass(v);
        }
        return to_array(cum);
      },
      "Running sum of the class masses (the exact-CDF fallback of excluded rows).");
  cls.def(
      "_emulate_device",
      [](const AliasTable& t, int mode, uint64_t seed, uint64_t offset,
         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t> out,
         output_array<int64_t> tries) {
        int64_t* dst = writable_data(out, "out");
        const int64_t rows = checked_rows(out, k);
        int64_t* tr = writable_data(tries, "tries");
        if (tries.size() != rows) throw std::invalid_argument("tries must hold one value per row");
        const std::vector<int64_t> ids = owned_copy(exclude);
        const ExcludeLists ex = exclude_lists(exclude, ids, rows);
        const std::vector<uint64_t> mass = masses_of(t);
        AliasTableView v = t.view();
        v.mass = mass.data();
        py::gil_scoped_release release;
        emulate_device_sampling(v, mode, seed, offset, ex, rows, k, dst, tr);
      },
      py::arg("mode"), py::arg("seed"), py::arg("offset"), py::arg("exclude"), py::arg("k"),
      py::arg("out").noconvert(), py::arg("tries").noconvert(),
      "Tests only: the CUDA kernels' per-thread work run serially on the CPU.");
  // The operators' kernels (pyneg/_ops/alias.py): the table comes as arrays.
  m.def(
      "alias_draw",
      [](const input_array<int64_t>& entries, uint64_t seed, uint64_t offset,
         output_array<int64_t> out, int num_threads) {
        draw_into(table_view(entries, nullptr, 0), seed, offset, out, num_threads);
      },
      py::arg("entries"), py::arg("seed"), py::arg("offset"), py::arg("out").noconvert(),
      py::arg("num_threads") = 1, "Fill out with independent draws from the table's entries.");
  m.def(
      "alias_draw_excluding",
      [](const input_array<int64_t>& entries, const input_array<int64_t>& mass,
         int64_t num_positive, uint64_t seed, uint64_t offset, const input_array<int64_t>& exclude,
         int64_t k, output_array<int64_t> out, int num_threads) {
        draw_excluding_into(table_view(entries, &mass, num_positive), seed, offset, exclude, k, out,
                            num_threads);
      },
      py::arg("entries"), py::arg("mass"), py::arg("num_positive"), py::arg("seed"),
      py::arg("offset"), py::arg("exclude"), py::arg("k"), py::arg("out").noconvert(),
      py::arg("num_threads") = 1,
      "Fill out (rows x k) with draws that avoid each row's exclusion list.");
  m.def(
      "alias_draw_unique",
      [](const input_array<int64_t>& entries, const input_array<int64_t>& mass,
         int64_t num_positive, uint64_t seed, uint64_t offset, const input_array<int64_t>& exclude,
         int64_t k, output_array<int64_t> out, std::optional<output_array<int64_t>> tries,
         int num_threads) {
        draw_unique_into(table_view(entries, &mass, num_positive), seed, offset, exclude, k, out, tries,
                         num_threads);
      },
      py::arg("entries"), py::arg("mass"), py::arg("num_positive"), py::arg("seed"),
      py::arg("offset"), py::arg("exclude"), py::arg("k"), py::arg("out").noconvert(),
      py::arg("tries").noconvert() = py::none(), py::arg("num_threads") = 1,
      "Fill out (rows x k) with ids distinct within each row; tries gets the candidate "
      "draws each row used.");
  m.def(
      "alias_prepare_exclude",
      [](int64_t num_classes, int64_t num_positive, const input_array<int64_t>& exclude,
         const input_array<int64_t>& id_mass, int64_t rows, int64_t unique_k) {
        if (num_classes <= 0 || num_classes > kMaxClasses)
          throw std::invalid_argument("num_classes must be in [1, 2**31 - 1]");
        if (id_mass.size() != exclude.size())
          throw std::invalid_argument("id_mass must have one entry per exclude entry");
        const std::vector<int64_t> ids = owned_copy(exclude);
        const std::vector<int64_t> masses = owned_copy(id_mass);
        const ExcludeLists ex = exclude_lists(exclude, ids, rows);
        PreparedExclude p;
        {
          py::gil_scoped_release release;
          p = prepare_exclude_lists_from_masses(num_classes, num_positive, ex,
                                                reinterpret_cast<const uint64_t*>(masses.data()),
                                                unique_k);
        }
        return py::make_tuple(to_array(p.offsets), to_array(p.ids), to_array(p.cum),
                              to_array(p.allowed_mass), ex.rows_per_list, p.longest());
      },
      py::arg("num_classes"), py::arg("num_positive"), py::arg("exclude"), py::arg("id_mass"),
      py::arg("rows"), py::arg("unique_k") = 0,
      "AliasTable.prepare_exclude from the masses of the listed ids alone (id_mass[i] is the "
      "mass of exclude's i-th entry): what the CUDA path uploads.");
  m.attr("MAX_CLASSES") = kMaxClasses;
  m.attr("MAX_ANALYTIC_CLASSES") = kMaxAnalyticClasses;
  // The analytic samplers (uniform, log-uniform): no table, O(1) memory.
  m.def(
      "analytic_draw",
      [](int kind, int64_t num_classes, uint64_t seed, uint64_t offset, output_array<int64_t> out,
         int num_threads) {
        const AnalyticDist d(kind, num_classes);
        int64_t* dst = writable_data(out, "out");
        const int64_t n = out.size();
        py::gil_scoped_release release;
        analytic_sample(d, seed, offset, dst, n, num_threads);
      },
      py::arg("kind"), py::arg("num_classes"), py::arg("seed"), py::arg("offset"),
      py::arg("out").noconvert(), py::arg("num_threads") = 1,
      "Fill out with independent uniform (kind 0) or log-uniform (kind 1) draws.");
  m.def(
      "analytic_draw_excluding",
      [](int kind, int64_t num_classes, uint64_t seed, uint64_t offset,
         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t> out, int num_threads) {
        const AnalyticDist d(kind, num_classes);
        excluding_into(exclude, k, out, [&](const ExcludeLists& ex, int64_t rows, int64_t* dst) {
          analytic_sample_excluding(d, seed, offset, ex, rows, k, dst, num_threads);
        });
      },
      py::arg("kind"), py::arg("num_classes"), py::arg("seed"), py::arg("offset"), py::arg("exclude"),
      py::arg("k"), py::arg("out").noconvert(), py::arg("num_threads") = 1,
      "Fill out (rows x k) with analytic draws that avoid each row's exclusion list.");
  m.def(
      "analytic_draw_unique",
      [](int kind, int64_t num_classes, uint64_t seed, uint64_t offset,
         const input_array<int64_t>& exclude, int64_t k, output_array<int64_t> out,
         std::optional<output_array<int64_t>> tries, int num_threads) {
        const AnalyticDist d(kind, num_classes);
        unique_into(exclude, k, out, tries, [&](const ExcludeLists& ex, int64_t rows, int64_t* dst, int64_t* tr) {
          analytic_sample_unique(d, seed, offset, ex, rows, k, dst, tr, num_threads);
        });
      },
      py::arg("kind"), py::arg("num_classes"), py::arg("seed"), py::arg("offset"), py::arg("exclude"),
      py::arg("k"), py::arg("out").noconvert(), py::arg("tries").noconvert() = py::none(),
      py::arg("num_threads") = 1,
      "Fill out (rows x k) with analytic draws distinct within each row; tries gets the "
      "candidate draws each row used.");
  testing.def(
      "draw_randoms",
      [](uint64_t seed, uint64_t offset, output_array<uint64_t> out, const std::string& isa) {
        uint64_t* dst = writable_data(out, "out");
        const int64_t n = out.size();
        py::gil_scoped_release release;
        if (isa.empty()) {
          fill_draw_randoms(seed, offset, n, dst);
        } else if (!fill_draw_randoms_isa(isa.c_str(), seed, offset, n, dst)) {
          throw std::invalid_argument("this CPU or build has no " + isa + " Philox batches");
        }
      },
      py::arg("seed"), py::arg("offset"), py::arg("out").noconvert(), py::arg("isa") = "",
      "The 64-bit Philox4x32-10 numbers behind plain draws offset, offset + 1, ... (isa: "
      "'scalar', 'avx2' or 'avx512' to pick the implementation; '' for the one draws use).");
  testing.def("philox_isa", &philox_batch_isa, "Instruction set of the batched Philox generator.");
}

}  // namespace pyneg::bindings

// pyneg._core: the compiled kernels of pyneg. One register_<area>() per file.
#include "bindings/common.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyneg's C++ kernels (alias sampling, Huffman trees, memory banks)";
  // Bindings only pyneg's tests call (golden random streams, the ISA a kernel
  // picked): not API, kept out of _core's own namespace. Made first, so each
  // register_<area>() can add to it through m.attr("_testing").
  m.def_submodule("_testing", "pyneg's test-only bindings (golden vectors, ISA reports); not API.");
  pyneg::bindings::register_alias(m);
  pyneg::bindings::register_memory(m);
  pyneg::bindings::register_hsoftmax(m);
  pyneg::bindings::register_mining(m);
  pyneg::bindings::register_skipgram(m);
  pyneg::bindings::register_hits(m);
  pyneg::bindings::register_tablefile(m);
  pyneg::bindings::register_graph(m);
  pyneg::bindings::register_sparse(m);
}

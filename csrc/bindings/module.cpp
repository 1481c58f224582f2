// pyneg._core: the compiled kernels of pyneg. One register_<area>() per file.
#include "bindings/common.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyneg's C++ kernels (alias sampling, Huffman trees, memory banks)";
  pyneg::bindings::register_alias(m);
  pyneg::bindings::register_memory(m);
  pyneg::bindings::register_hsoftmax(m);
  pyneg::bindings::register_mining(m);
  pyneg::bindings::register_skipgram(m);
  pyneg::bindings::register_hits(m);
}

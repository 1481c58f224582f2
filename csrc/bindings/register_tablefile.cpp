// Bindings of the table files' checksum (csrc/cpu/checksum.h).
#include "bindings/common.h"
#include "cpu/checksum.h"

namespace pyneg::bindings {

void register_tablefile(py::module_& m) {
  m.def(
      "checksum64",
      [](const py::buffer& data, int num_threads) {
        // A read-only request: a mapped file's memoryview is never written. The
        // request keeps the buffer exported (an mmap cannot be closed under us)
        // while the hash runs without the GIL.
        py::buffer_info info = data.request(false);
        if (info.ndim != 1 || info.itemsize != 1 || (info.strides.size() == 1 && info.strides[0] != 1))
          throw std::invalid_argument("data must be a contiguous 1-D buffer of bytes");
        const auto* p = static_cast<const uint8_t*>(info.ptr);
        const int64_t n = static_cast<int64_t>(info.size);
        py::gil_scoped_release release;
        return checksum64(p, n, num_threads);
      },
      py::arg("data"), py::arg("num_threads") = 1,
      "Checksum of a contiguous byte buffer (blocks of 1 MiB hashed in parallel, folded in order); "
      "the same value whatever num_threads.");
}

}  // namespace pyneg::bindings

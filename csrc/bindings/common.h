// Shared helpers of the pybind11 layer: conversion and validation only.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyneg::bindings {

namespace py = pybind11;

// Read-only inputs: any array-like, converted (copied only if needed) to a
// C-contiguous array of T.
template <class T>
using input_array = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Outputs written in place: exactly T, C-contiguous and writeable, never a copy
// (bind these with .noconvert()).
template <class T>
using output_array = py::array_t<T, py::array::c_style>;

template <class T>
T* writable_data(output_array<T>& a, const char* name) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + " is read-only");
  return a.mutable_data();
}

// A copy of an input's values, taken while the GIL is held: kernels that run
// with the GIL released then read memory pyneg owns, whatever another Python
// thread does to the caller's array meanwhile.
template <class T>
std::vector<T> owned_copy(const input_array<T>& a) {
  return std::vector<T>(a.data(), a.data() + a.size());
}

// A new NumPy array holding a copy of v.
template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// A read-only 1-D NumPy view of n values owned by `owner`, which the view keeps alive.
template <class T>
py::array_t<T> readonly_view(py::object owner, const T* data, py::ssize_t n) {
  py::array_t<T> a({n}, {static_cast<py::ssize_t>(sizeof(T))}, data, owner);
  a.attr("setflags")(false);
  return a;
}

inline void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) +
                                "-D, got " + std::to_string(a.ndim()) + "-D");
  }
}

void register_alias(py::module_& m);
void register_memory(py::module_& m);
void register_hsoftmax(py::module_& m);
void register_mining(py::module_& m);
void register_skipgram(py::module_& m);
void register_hits(py::module_& m);
void register_tablefile(py::module_& m);
void register_graph(py::module_& m);
void register_sparse(py::module_& m);

}  // namespace pyneg::bindings

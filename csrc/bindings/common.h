// Shared helpers of the pybind11 layer: conversion and validation only.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

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

inline void require_ndim(const py::array& a, py::ssize_t ndim, const char* name) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) +
                                "-D, got " + std::to_string(a.ndim()) + "-D");
  }
}

void register_alias(py::module_& m);
void register_memory(py::module_& m);

}  // namespace pyneg::bindings

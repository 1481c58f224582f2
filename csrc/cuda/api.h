// Host entry points of pyneg's CUDA kernels: raw device pointers, the device
// index and a CUDA stream handle (as an integer, so this header needs neither
// the CUDA headers nor pybind11 and the bindings compile with the host
// compiler). Every function selects `device`, launches on `stream`
// asynchronously and throws std::runtime_error with cudaGetErrorString's text
// when CUDA reports an error, std::invalid_argument for bad sizes.
#pragma once

#include <cstdint>

#include "cpu/alias_threads.h"  // ExcludeArrays

namespace pyneg::cuda {

using pyneg::ExcludeArrays;  // prepared exclusion lists, uploaded to the device

// Devices the CUDA runtime sees; 0 when there is none or no usable driver.
int device_count();

// Throws std::runtime_error unless `device` is a usable CUDA device.
void require_device(int device);

// out[j] = alias draw at position offset + j, j in [0, n); bit-identical to
// the CPU's alias_sample for the same table and seed.
void alias_sample(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                  uint64_t seed, uint64_t offset, int64_t* out, int64_t n);

// rows x k draws avoiding each row's list; table_cum is the table's running
// mass (V entries), read by rows drawn from their exact CDF. Bit-identical to
// the CPU's alias_sample_excluding.
void alias_sample_excluding(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                            const uint64_t* table_cum, const ExcludeArrays& ex, uint64_t seed,
                            uint64_t offset, int64_t rows, int64_t k, int64_t* out);

// Rows [first_row, first_row + rows) of k ids distinct within each row: the
// rejection phase of the CPU's alias_sample_unique, one thread per row. out,
// tries and the lists are indexed by absolute row; slots: rows * capacity
// int64 scratch for this launch (capacity from id_set_capacity(k + longest
// list)), so a large request runs in chunks of rows. tries[r] gets the
// candidates row r used, or -1 when the row reached unique_max_tries(k)
// before k distinct ids: such rows must be finished on the CPU (the
// exponential race reads every class), which gives the CPU's result exactly.
void alias_sample_unique(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                         const ExcludeArrays& ex, uint64_t seed, uint64_t offset,
                         int64_t first_row, int64_t rows, int64_t k, int64_t* slots,
                         int64_t capacity, int64_t* tries, int64_t* out);

// Hierarchical softmax over a flat tree layout: class c's path is positions
// offsets[c] .. offsets[c + 1] - 1 (root first) of nodes (inner-node rows of
// weight, int32) and codes (0/1); sign s = 1 - 2 code. For example b with
// class target[b]: nll[b] = -sum_j log sigmoid(s_j (weight[n_j] . input[b] + bias[n_j])).
// bias may be null. T is float or double.
//
// The kernels trust none of the index arrays: a target outside [0, num_classes),
// a path outside [0, num_steps) or a node outside [0, num_inner) never makes
// them read or write out of bounds; the example's loss (and its input
// gradient) comes out NaN instead and it adds nothing to the node gradients.
template <class T>
struct HsArgs {
  const T* input = nullptr;       // (B, dim)
  const T* weight = nullptr;      // (V - 1, dim)
  const T* bias = nullptr;        // (V - 1) or null
  const int64_t* target = nullptr;  // (B)
  const int64_t* offsets = nullptr; // (V + 1)
  const int32_t* nodes = nullptr;
  const uint8_t* codes = nullptr;
  int64_t batch = 0;
  int64_t dim = 0;
  int64_t num_classes = 0;  // V: entries of offsets minus one
  int64_t num_inner = 0;    // rows of weight (and of bias)
  int64_t num_steps = 0;    // entries of nodes and of codes
};

// nll: (B) per-example negative log-likelihood.
template <class T>
void hs_forward(int device, uintptr_t stream, const HsArgs<T>& a, T* nll);

// grad_nll: (B). Writes grad_input (B, dim); adds into grad_weight (V - 1, dim)
// and grad_bias (V - 1, may be null) with atomics (the root is on every path).
template <class T>
void hs_backward(int device, uintptr_t stream, const HsArgs<T>& a, const T* grad_nll,
                 T* grad_input, T* grad_weight, T* grad_bias);

}  // namespace pyneg::cuda

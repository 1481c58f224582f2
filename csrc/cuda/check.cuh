// Error handling and launch helpers shared by the .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyneg::cuda {

// Throws std::runtime_error("pyneg._cuda: <what>: <cudaGetErrorString>").
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("pyneg._cuda: ") + what + ": " + cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

// Grid size for a grid-stride loop over n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < (int64_t{1} << 20) ? (blocks > 0 ? blocks : 1) : (int64_t{1} << 20));
}

// Checks that the launch just made was accepted (asynchronous kernel errors
// surface at the next synchronising call, as with any CUDA library).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace pyneg::cuda

// Alias draws on the GPU. The per-draw logic is the CPU's (cpu/alias_draw.h,
// compiled here as __host__ __device__), so a seed gives bit-identical samples
// on both devices; only the scheduling differs: one thread per Philox block
// for plain draws, one per draw with exclusions, one per row without
// replacement. What one thread does is in cpu/alias_threads.h, which the CPU
// tests also run.
#include <string>

#include "cpu/alias_threads.h"
#include "cuda/api.h"
#include "cuda/check.cuh"

namespace pyneg::cuda {

namespace {

constexpr int kThreads = 256;

// Grid-stride loops over the per-thread work of cpu/alias_threads.h.
__global__ void alias_sample_kernel(const uint64_t* __restrict__ entries, uint64_t v, uint64_t seed,
                                    uint64_t offset, int64_t* __restrict__ out, uint64_t n) {
  const uint64_t threads = plain_thread_count(offset, n);
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < threads;
       i += stride) {
    plain_thread(i, entries, v, seed, offset, out, n);
  }
}

__global__ void alias_sample_excluding_kernel(const uint64_t* __restrict__ entries, uint64_t v,
                                              const uint64_t* __restrict__ table_cum,
                                              ExcludeArrays ex, uint64_t seed, uint64_t offset,
                                              int64_t k, int64_t* __restrict__ out, uint64_t n) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t j = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += stride) {
    excluding_thread(j, entries, v, table_cum, ex, seed, offset, k, out);
  }
}

__global__ void alias_sample_unique_kernel(const uint64_t* __restrict__ entries, uint64_t v,
                                           ExcludeArrays ex, uint64_t seed, uint64_t offset,
                                           int64_t first_row, int64_t rows, int64_t k,
                                           int64_t* __restrict__ slots, int64_t capacity,
                                           int64_t* __restrict__ tries, int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += stride) {
    unique_row_thread(first_row + i, entries, v, ex, seed, offset, k, slots + i * capacity,
                      capacity, tries, out);
  }
}

void check_table(const uint64_t* entries, int64_t v) {
  if (entries == nullptr) throw std::invalid_argument("entries must not be a null pointer");
  if (v <= 0 || v > (int64_t{1} << 31) - 1) {
    throw std::invalid_argument("num_classes must be in [1, 2^31 - 1], got " + std::to_string(v));
  }
}

void check_exclude(const ExcludeArrays& ex) {
  if (!ex.offsets || !ex.ids || !ex.cum || !ex.allowed_mass)
    throw std::invalid_argument("exclusion list pointers must not be null");
  if (ex.rows_per_list <= 0) throw std::invalid_argument("rows_per_list must be positive");
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

void require_device(int device) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    check(err, "no usable CUDA device (cudaGetDeviceCount)");
  }
  if (device < 0 || device >= n) {
    throw std::runtime_error("pyneg._cuda: CUDA device " + std::to_string(device) +
                             " does not exist (" + std::to_string(n) + " visible)");
  }
  check(cudaSetDevice(device), "cudaSetDevice");
}

void alias_sample(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                  uint64_t seed, uint64_t offset, int64_t* out, int64_t n) {
  check_table(entries, v);
  if (n < 0) throw std::invalid_argument("n must be >= 0");
  if (n == 0) return;
  require_device(device);
  const uint64_t threads = plain_thread_count(offset, static_cast<uint64_t>(n));
  alias_sample_kernel<<<grid_for(static_cast<int64_t>(threads), kThreads), kThreads, 0,
                        as_stream(stream)>>>(entries, static_cast<uint64_t>(v), seed, offset, out,
                                             static_cast<uint64_t>(n));
  check_launch("alias_sample_kernel");
}

void alias_sample_excluding(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                            const uint64_t* table_cum, const ExcludeArrays& ex, uint64_t seed,
                            uint64_t offset, int64_t rows, int64_t k, int64_t* out) {
  check_table(entries, v);
  check_exclude(ex);
  if (!table_cum) throw std::invalid_argument("table_cum must not be a null pointer");
  if (rows < 0 || k < 0) throw std::invalid_argument("rows and k must be >= 0");
  const int64_t n = rows * k;
  if (n == 0) return;
  require_device(device);
  alias_sample_excluding_kernel<<<grid_for(n, kThreads), kThreads, 0, as_stream(stream)>>>(
      entries, static_cast<uint64_t>(v), table_cum, ex, seed, offset, k, out,
      static_cast<uint64_t>(n));
  check_launch("alias_sample_excluding_kernel");
}

void alias_sample_unique(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                         const ExcludeArrays& ex, uint64_t seed, uint64_t offset,
                         int64_t first_row, int64_t rows, int64_t k, int64_t* slots,
                         int64_t capacity, int64_t* tries, int64_t* out) {
  check_table(entries, v);
  check_exclude(ex);
  if (first_row < 0 || rows < 0 || k < 0)
    throw std::invalid_argument("first_row, rows and k must be >= 0");
  if (capacity < 16 || (capacity & (capacity - 1)) != 0 || capacity < 2 * k)
    throw std::invalid_argument("capacity must be a power of two >= max(16, 2k)");
  if (!slots || !tries) throw std::invalid_argument("slots and tries must not be null");
  if (rows == 0 || k == 0) return;
  require_device(device);
  // Small blocks: one thread per row, and rows are few.
  constexpr int threads = 64;
  alias_sample_unique_kernel<<<grid_for(rows, threads), threads, 0, as_stream(stream)>>>(
      entries, static_cast<uint64_t>(v), ex, seed, offset, first_row, rows, k, slots, capacity, tries,
      out);
  check_launch("alias_sample_unique_kernel");
}

}  // namespace pyneg::cuda

// Alias draws on the GPU. The per-draw logic is the CPU's (cpu/alias_draw.h,
// compiled here as __host__ __device__), so a seed gives bit-identical samples
// on both devices; only the scheduling differs: one thread per Philox block
// for plain draws, one per draw with exclusions, one per row without
// replacement.
#include <string>

#include "cpu/alias_draw.h"
#include "cuda/api.h"
#include "cuda/check.cuh"

namespace pyneg::cuda {

namespace {

constexpr int kThreads = 256;

// Plain draws: thread i resolves Philox block first_block + i, i.e. positions
// 2b and 2b + 1, writing those inside [offset, offset + n).
__global__ void alias_sample_kernel(const uint64_t* __restrict__ entries, uint64_t v, uint64_t seed,
                                    uint64_t offset, int64_t* __restrict__ out, uint64_t n) {
  const uint64_t first_block = offset >> 1;
  const uint64_t blocks = ((offset + n - 1) >> 1) - first_block + 1;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < blocks;
       i += stride) {
    const uint64_t b = first_block + i;
    const Philox4x32 r = draw_block(seed, b);
    for (unsigned half = 0; half < 2; ++half) {
      const uint64_t pos = 2 * b + half;
      if (pos >= offset && pos - offset < n) {
        out[pos - offset] = alias_pick(entries, v, block_half(r, half));
      }
    }
  }
}

struct TableCum {
  const uint64_t* p;
  __device__ const uint64_t* operator()() const { return p; }
};

__device__ ExcludedIds list_of(const DeviceExclude& ex, int64_t l) {
  const int64_t b = ex.offsets[l], e = ex.offsets[l + 1];
  return ExcludedIds{ex.ids + b, ex.ids + e, ex.cum + b};
}

__global__ void alias_sample_excluding_kernel(const uint64_t* __restrict__ entries, uint64_t v,
                                              const uint64_t* __restrict__ table_cum,
                                              DeviceExclude ex, uint64_t seed, uint64_t offset,
                                              int64_t k, int64_t* __restrict__ out, uint64_t n) {
  const uint64_t total = v << 32;  // V * 2^32, the table's total mass
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t j = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += stride) {
    const int64_t row = static_cast<int64_t>(j) / k;
    const int64_t l = row / ex.rows_per_list;
    const uint64_t allowed = ex.allowed_mass[l];
    const uint64_t pos = offset + j;  // = offset + row * k + column, as on the CPU
    out[j] = draw_excluding(entries, v, TableCum{table_cum}, list_of(ex, l), allowed,
                            row_uses_cdf(allowed, total), seed, pos, draw_random64(seed, pos));
  }
}

__global__ void alias_sample_unique_kernel(const uint64_t* __restrict__ entries, uint64_t v,
                                           DeviceExclude ex, uint64_t seed, uint64_t offset,
                                           int64_t rows, int64_t k, int64_t* __restrict__ slots,
                                           int64_t capacity, int64_t* __restrict__ tries,
                                           int64_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += stride) {
    IdSetView seen{slots + row * capacity, static_cast<uint64_t>(capacity - 1)};
    for (int64_t s = 0; s < capacity; ++s) seen.slots[s] = -1;
    const ExcludedIds list = list_of(ex, row / ex.rows_per_list);
    for (const int64_t* p = list.begin; p != list.end; ++p) seen.insert(*p);
    uint64_t t = 0;
    const int64_t got = unique_row_rejection(entries, v, seed, offset + static_cast<uint64_t>(row * k),
                                             k, seen, out + row * k, &t);
    tries[row] = got == k ? static_cast<int64_t>(t) : -1;
  }
}

void check_table(const uint64_t* entries, int64_t v) {
  if (entries == nullptr) throw std::invalid_argument("entries must not be a null pointer");
  if (v <= 0 || v > (int64_t{1} << 31) - 1) {
    throw std::invalid_argument("num_classes must be in [1, 2^31 - 1], got " + std::to_string(v));
  }
}

void check_exclude(const DeviceExclude& ex) {
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
  const uint64_t blocks = ((offset + static_cast<uint64_t>(n) - 1) >> 1) - (offset >> 1) + 1;
  alias_sample_kernel<<<grid_for(static_cast<int64_t>(blocks), kThreads), kThreads, 0,
                        as_stream(stream)>>>(entries, static_cast<uint64_t>(v), seed, offset, out,
                                             static_cast<uint64_t>(n));
  check_launch("alias_sample_kernel");
}

void alias_sample_excluding(int device, uintptr_t stream, const uint64_t* entries, int64_t v,
                            const uint64_t* table_cum, const DeviceExclude& ex, uint64_t seed,
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
                         const DeviceExclude& ex, uint64_t seed, uint64_t offset, int64_t rows,
                         int64_t k, int64_t* slots, int64_t capacity, int64_t* tries,
                         int64_t* out) {
  check_table(entries, v);
  check_exclude(ex);
  if (rows < 0 || k < 0) throw std::invalid_argument("rows and k must be >= 0");
  if (capacity < 16 || (capacity & (capacity - 1)) != 0 || capacity < 2 * k)
    throw std::invalid_argument("capacity must be a power of two >= max(16, 2k)");
  if (!slots || !tries) throw std::invalid_argument("slots and tries must not be null");
  if (rows == 0 || k == 0) return;
  require_device(device);
  // Small blocks: one thread per row, and rows are few.
  constexpr int threads = 64;
  alias_sample_unique_kernel<<<grid_for(rows, threads), threads, 0, as_stream(stream)>>>(
      entries, static_cast<uint64_t>(v), ex, seed, offset, rows, k, slots, capacity, tries, out);
  check_launch("alias_sample_unique_kernel");
}

}  // namespace pyneg::cuda

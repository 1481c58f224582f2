// Hierarchical-softmax loss and gradients on the GPU: one warp per example,
// the warp's lanes splitting the embedding dimension, so each node's dot
// product is one warp reduction and every memory access is coalesced.
#include <stdexcept>
#include <string>

#include <math_constants.h>

#include "cuda/api.h"
#include "cuda/check.cuh"

namespace pyneg::cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;  // 8 examples per block

template <class T>
__device__ T warp_sum(T x) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, o);
  return x;
}

// log(1 + exp(x)) without overflow.
__device__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ double softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
// sigmoid(x) - 1 = -sigmoid(-x), without cancellation for large x.
__device__ float sigmoid_minus_one(float x) { return -1.f / (1.f + expf(x)); }
__device__ double sigmoid_minus_one(double x) { return -1.0 / (1.0 + exp(x)); }

// Class c's path [*lo, *hi) when c, the path and every node on it are in
// range. All lanes of a warp read the same values, so the answer (and every
// branch on it) is warp-uniform, as the full-mask shuffles need.
template <class T>
__device__ bool valid_path(const HsArgs<T>& a, int64_t c, int64_t* lo, int64_t* hi) {
  if (c < 0 || c >= a.num_classes) return false;
  *lo = a.offsets[c];
  *hi = a.offsets[c + 1];
  if (*lo < 0 || *hi < *lo || *hi > a.num_steps) return false;
  for (int64_t p = *lo; p < *hi; ++p) {
    if (a.nodes[p] < 0 || a.nodes[p] >= a.num_inner) return false;
  }
  return true;
}

// s_j (u_{n_j} . v + b_{n_j}) of path position p, reduced over the warp.
template <class T>
__device__ T signed_logit(const HsArgs<T>& a, const T* v, int64_t p, int lane, int32_t* node) {
  const int32_t n = a.nodes[p];
  const T* u = a.weight + static_cast<int64_t>(n) * a.dim;
  T dot = 0;
  for (int64_t i = lane; i < a.dim; i += kWarp) dot += u[i] * v[i];
  dot = warp_sum(dot);
  if (a.bias) dot += a.bias[n];
  *node = n;
  return a.codes[p] ? -dot : dot;
}

template <class T>
__global__ void hs_forward_kernel(HsArgs<T> a, T* __restrict__ nll) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
       b < a.batch; b += warps) {
    int64_t lo, hi;
    if (!valid_path(a, a.target[b], &lo, &hi)) {
      if (lane == 0) nll[b] = CUDART_NAN_F;
      continue;
    }
    const T* v = a.input + b * a.dim;
    T loss = 0;
    for (int64_t p = lo; p < hi; ++p) {
      int32_t n;
      loss += softplus(-signed_logit(a, v, p, lane, &n));  // -log sigmoid(z)
    }
    if (lane == 0) nll[b] = loss;
  }
}

template <class T>
__global__ void hs_backward_kernel(HsArgs<T> a, const T* __restrict__ grad_nll,
                                   T* __restrict__ grad_input, T* __restrict__ grad_weight,
                                   T* __restrict__ grad_bias) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
       b < a.batch; b += warps) {
    const T* v = a.input + b * a.dim;
    T* gv = grad_input + b * a.dim;
    int64_t lo, hi;
    if (!valid_path(a, a.target[b], &lo, &hi)) {
      for (int64_t i = lane; i < a.dim; i += kWarp) gv[i] = CUDART_NAN_F;
      continue;
    }
    for (int64_t i = lane; i < a.dim; i += kWarp) gv[i] = 0;  // each lane owns its elements
    const T g = grad_nll[b];
    for (int64_t p = lo; p < hi; ++p) {
      int32_t n;
      const T z = signed_logit(a, v, p, lane, &n);
      // d(-log sigmoid(z))/d(u.v + b) = (sigmoid(z) - 1) s
      const T coef = g * sigmoid_minus_one(z) * (a.codes[p] ? T(-1) : T(1));
      const T* u = a.weight + static_cast<int64_t>(n) * a.dim;
      T* gu = grad_weight + static_cast<int64_t>(n) * a.dim;
      for (int64_t i = lane; i < a.dim; i += kWarp) {
        gv[i] += coef * u[i];
        atomicAdd(gu + i, coef * v[i]);  // nodes near the root are shared by many examples
      }
      if (grad_bias && lane == 0) atomicAdd(grad_bias + n, coef);
    }
  }
}

template <class T>
void check_args(const HsArgs<T>& a) {
  if (a.batch < 0 || a.dim <= 0) throw std::invalid_argument("batch must be >= 0 and dim > 0");
  if (a.num_classes < 1 || a.num_inner < 0 || a.num_steps < 0)
    throw std::invalid_argument("num_classes must be >= 1, num_inner and num_steps >= 0");
  if (!a.input || !a.weight || !a.target || !a.offsets || !a.nodes || !a.codes)
    throw std::invalid_argument("hierarchical softmax pointers must not be null (bias may be)");
}

unsigned warp_grid(int64_t batch) { return grid_for(batch * kWarp, kThreads); }

}  // namespace

template <class T>
void hs_forward(int device, uintptr_t stream, const HsArgs<T>& a, T* nll) {
  check_args(a);
  if (!nll) throw std::invalid_argument("nll must not be a null pointer");
  if (a.batch == 0) return;
  require_device(device);
  hs_forward_kernel<T><<<warp_grid(a.batch), kThreads, 0, as_stream(stream)>>>(a, nll);
  check_launch("hs_forward_kernel");
}

template <class T>
void hs_backward(int device, uintptr_t stream, const HsArgs<T>& a, const T* grad_nll,
                 T* grad_input, T* grad_weight, T* grad_bias) {
  check_args(a);
  if (!grad_nll || !grad_input || !grad_weight)
    throw std::invalid_argument("grad_nll, grad_input and grad_weight must not be null");
  if (a.batch == 0) return;
  require_device(device);
  hs_backward_kernel<T><<<warp_grid(a.batch), kThreads, 0, as_stream(stream)>>>(
      a, grad_nll, grad_input, grad_weight, grad_bias);
  check_launch("hs_backward_kernel");
}

template void hs_forward<float>(int, uintptr_t, const HsArgs<float>&, float*);
template void hs_forward<double>(int, uintptr_t, const HsArgs<double>&, double*);
template void hs_backward<float>(int, uintptr_t, const HsArgs<float>&, const float*, float*,
                                 float*, float*);
template void hs_backward<double>(int, uintptr_t, const HsArgs<double>&, const double*, double*,
                                  double*, double*);

}  // namespace pyneg::cuda

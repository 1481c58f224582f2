#include "cpu/hsoftmax.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/parallel.h"

namespace pyneg {

namespace {

// Eight independent partial sums: without -ffast-math the compiler may not
// reorder a single running sum, and one accumulator would serialise on the
// add latency. The fixed order keeps results identical run to run.
template <class T>
inline T dot(const T* a, const T* b, int64_t d) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  T s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

template <class T>
inline void axpy(T alpha, const T* x, T* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += alpha * x[i];
}

// log sigmoid(x) and log sigmoid(-x) with one exp and one log1p, stable for
// any x (no cancellation when |x| is large).
template <class T>
inline void log_sigmoid_pair(T x, T& pos, T& neg) {
  const T e = std::log1p(std::exp(-std::abs(x)));
  pos = std::min(x, T(0)) - e;
  neg = std::min(-x, T(0)) - e;
}

template <class T>
inline T sigmoid(T x) {
  if (x >= 0) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

constexpr int64_t kRowGrain = 64;  // examples per chunk: enough to amortise a thread start

template <class T>
void input_gradient(const HSBatch<T>& a, const T* dz, const T* grad_loss, T* grad_input,
                    int num_threads) {
  const int64_t d = a.dim;
  parallel_for(a.batch, num_threads, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* gi = grad_input + b * d;
      std::fill(gi, gi + d, T(0));
      const int64_t first = a.row_offsets[b], len = a.row_offsets[b + 1] - first;
      const T g = grad_loss[b];
      const T* dzb = dz + b * a.dz_stride;
      for (int64_t j = 0; j < len; ++j) axpy(g * dzb[j], a.weight + int64_t{a.nodes[first + j]} * d, gi, d);
    }
  });
}

}  // namespace

template <class T>
void hs_forward(const HSBatch<T>& a, T* loss, T* dz, int num_threads) {
  const int64_t d = a.dim;
  parallel_for(a.batch, num_threads, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* v = a.input + b * d;
      const int64_t first = a.row_offsets[b], len = a.row_offsets[b + 1] - first;
      T* dzb = dz + b * a.dz_stride;
      std::fill(dzb + len, dzb + a.dz_stride, T(0));  // the padding: the output is fully defined
      double nll = 0.0;  // a handful of terms; double keeps float32 losses exact to rounding
      for (int64_t j = 0; j < len; ++j) {
        const int64_t n = a.nodes[first + j];
        if (j + 1 < len) __builtin_prefetch(a.weight + int64_t{a.nodes[first + j + 1]} * d);
        T x = dot(a.weight + n * d, v, d);
        if (a.bias != nullptr) x += a.bias[n];
        const T s = a.codes[first + j] ? T(-1) : T(1);
        T pos, neg;
        log_sigmoid_pair(s * x, pos, neg);
        nll -= static_cast<double>(pos);
        dzb[j] = s * (sigmoid(s * x) - T(1));
      }
      loss[b] = static_cast<T>(nll);
    }
  });
}

template <class T>
int64_t hs_backward(const HSBatch<T>& a, const T* dz, const T* grad_loss, T* grad_input,
                    T* grad_weight, T* grad_bias, int64_t* touched, int num_threads) {
  const int64_t d = a.dim;
  if (grad_input != nullptr) input_gradient(a, dz, grad_loss, grad_input, num_threads);
  const int64_t inner = a.num_inner;
  const int64_t steps = a.row_offsets[a.batch];
  if (inner == 0 || steps == 0) return 0;

  // Bucket the batch's path steps by node (stable: example order within a
  // node), keeping the example and the coefficient g_b * dz of each step.
  std::vector<int64_t> start(static_cast<size_t>(inner + 1), 0);
  for (int64_t p = 0; p < steps; ++p) ++start[a.nodes[p] + 1];
  std::vector<int64_t> node_list;  // distinct nodes, ascending
  for (int64_t n = 0; n < inner; ++n) {
    if (start[n + 1] > 0) node_list.push_back(n);
    start[n + 1] += start[n];
  }
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  std::vector<int64_t> step_example(static_cast<size_t>(steps));
  std::vector<T> step_coef(static_cast<size_t>(steps));
  for (int64_t b = 0; b < a.batch; ++b) {
    const int64_t first = a.row_offsets[b];
    const T* dzb = dz + b * a.dz_stride;
    for (int64_t p = first; p < a.row_offsets[b + 1]; ++p) {
      const int64_t slot = fill[a.nodes[p]]++;
      step_example[slot] = b;
      step_coef[slot] = grad_loss[b] * dzb[p - first];
    }
  }
  const int64_t num_touched = static_cast<int64_t>(node_list.size());
  if (grad_weight == nullptr && grad_bias == nullptr) return num_touched;

  // Split the distinct nodes into one contiguous range per thread holding
  // about the same number of steps (the root alone holds `batch` of them).
  const int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, num_touched)));
  std::vector<int64_t> bounds(static_cast<size_t>(chunks + 1), num_touched);
  bounds[0] = 0;
  for (int64_t u = 0, k = 1; u < num_touched && k < chunks; ++u) {
    if (start[node_list[u] + 1] * chunks >= steps * k) bounds[k++] = u + 1;
  }
  parallel_for(chunks, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t u = bounds[cb]; u < bounds[ce]; ++u) {
      const int64_t n = node_list[u];
      const int64_t row = touched != nullptr ? u : n;
      if (touched != nullptr) touched[u] = n;
      T bias_sum = 0;
      T* gw = grad_weight != nullptr ? grad_weight + row * d : nullptr;
      if (gw != nullptr) std::fill(gw, gw + d, T(0));
      for (int64_t s = start[n]; s < start[n + 1]; ++s) {
        if (gw != nullptr) axpy(step_coef[s], a.input + step_example[s] * d, gw, d);
        bias_sum += step_coef[s];
      }
      if (grad_bias != nullptr) grad_bias[row] = bias_sum;
    }
  });
  return num_touched;
}

template <class T>
void hs_log_prob(const int32_t* children, int64_t num_classes, const T* logits, int64_t batch, T* out,
                 int num_threads) {
  const int64_t v = num_classes, inner = num_classes > 0 ? num_classes - 1 : 0;
  parallel_for(batch, num_threads, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> cum(static_cast<size_t>(std::max<int64_t>(inner, 1)));
    for (int64_t b = begin; b < end; ++b) {
      T* o = out + b * v;
      if (inner == 0) {
        o[0] = T(0);
        continue;
      }
      const T* x = logits + b * inner;
      cum[0] = T(0);
      for (int64_t n = 0; n < inner; ++n) {  // parents precede children
        T lp[2];
        log_sigmoid_pair(x[n], lp[0], lp[1]);
        for (int k = 0; k < 2; ++k) {
          const int32_t ch = children[2 * n + k];
          const T value = cum[n] + lp[k];
          if (ch >= 0) {
            cum[ch] = value;
          } else {
            o[~ch] = value;
          }
        }
      }
    }
  });
}

template <class T>
void hs_log_prob_backward(const int32_t* children, int64_t num_classes, const T* logits,
                          const T* grad_out, int64_t batch, T* grad_logits, int num_threads) {
  const int64_t v = num_classes, inner = num_classes > 0 ? num_classes - 1 : 0;
  if (inner == 0) return;
  parallel_for(batch, num_threads, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> below(static_cast<size_t>(inner));  // sum of grad_out over a node's leaves
    for (int64_t b = begin; b < end; ++b) {
      const T* g = grad_out + b * v;
      const T* x = logits + b * inner;
      T* gx = grad_logits + b * inner;
      for (int64_t n = inner - 1; n >= 0; --n) {  // children before parents
        T sub[2];
        for (int k = 0; k < 2; ++k) {
          const int32_t ch = children[2 * n + k];
          sub[k] = ch >= 0 ? below[ch] : g[~ch];
        }
        // d log sigmoid(x)/dx = sigmoid(-x); d log sigmoid(-x)/dx = -sigmoid(x).
        gx[n] = sigmoid(-x[n]) * sub[0] - sigmoid(x[n]) * sub[1];
        below[n] = sub[0] + sub[1];
      }
    }
  });
}

#define PYNEG_INSTANTIATE_HS(T)                                                                  \
  template void hs_forward<T>(const HSBatch<T>&, T*, T*, int);                                   \
  template int64_t hs_backward<T>(const HSBatch<T>&, const T*, const T*, T*, T*, T*, int64_t*, \
                                  int);                                                          \
  template void hs_log_prob<T>(const int32_t*, int64_t, const T*, int64_t, T*, int);             \
  template void hs_log_prob_backward<T>(const int32_t*, int64_t, const T*, const T*, int64_t, T*, int);

PYNEG_INSTANTIATE_HS(float)
PYNEG_INSTANTIATE_HS(double)

#undef PYNEG_INSTANTIATE_HS

}  // namespace pyneg

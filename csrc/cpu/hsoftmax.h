// Hierarchical softmax over a HuffmanTree (see huffman.h for the layout).
//
// With input v, inner-node rows u_n (weight, (V - 1) x dim), optional bias b_n
// and the path (n_j, s_j = 1 - 2 code_j) of class c:
//   NLL(c | v)      = -sum_j log sigmoid(z_j),  z_j = s_j (u_{n_j} . v + b_{n_j})
//   dNLL/d(u.v + b) = s_j (sigmoid(z_j) - 1)          =: dz_j
//   dNLL/dv         = sum_j dz_j u_{n_j},   dNLL/du_{n_j} = dz_j v,   dNLL/db_{n_j} = dz_j
// The forward pass stores dz (one value per path step of the batch) so the
// backward pass needs no second round of dot products.
//
// Threading: examples are split across threads (no shared writes). Node
// gradients are gathered per node: the batch's path steps are bucketed by
// node (a stable counting sort), and each node sums its contributions in
// example order, so results are bit-identical for every thread count and free
// of races although the root is on every path.
#pragma once

#include <cstdint>

#include "cpu/huffman.h"

namespace pyneg {

// One batch: input (batch x dim), weight (num_inner x dim), bias ((num_inner,)
// or null), and the batch's own paths (a BatchPaths from gather_batch_paths):
// example b's path is steps row_offsets[b] .. row_offsets[b + 1] - 1 of nodes
// and codes, every node in [0, num_inner). The kernels read no tree.
template <class T>
struct HSBatch {
  const T* input = nullptr;
  const T* weight = nullptr;
  const T* bias = nullptr;
  const int64_t* row_offsets = nullptr;
  const int32_t* nodes = nullptr;
  const uint8_t* codes = nullptr;
  int64_t batch = 0;
  int64_t dim = 0;
  int64_t num_inner = 0;
  int64_t dz_stride = 0;  // dz is (batch x dz_stride), dz_stride >= every path's length
};

// loss[b] = NLL(class of example b | input[b]); dz[b * dz_stride + j] as above for
// the path's steps j, 0 in the padding after them.
template <class T>
void hs_forward(const HSBatch<T>& a, T* loss, T* dz, int num_threads);

// Gradients of sum_b grad_loss[b] * loss[b], given the forward pass's dz.
//   grad_input ((batch x dim) or null) is overwritten.
//   Node gradients: when `touched` is null, grad_weight (num_inner x dim) and
//   grad_bias ((num_inner,)) get the rows of the nodes on the batch's paths written
//   (the caller zeroes the others); otherwise touched[u] receives the u-th
//   distinct node in ascending order and row u of grad_weight / grad_bias its
//   gradient (a compact, sparse gradient: room for min(row_offsets[batch],
//   num_inner) rows is enough). Either may be null.
// Returns the number of distinct nodes on the batch's paths.
template <class T>
int64_t hs_backward(const HSBatch<T>& a, const T* dz, const T* grad_loss, T* grad_input,
                    T* grad_weight, T* grad_bias, int64_t* touched, int num_threads);

// Full distribution: out[b, c] = log P(c | input b) for every class, given the
// inner-node scores logits[b, n] = u_n . v_b + b_n (batch x (V - 1)). One
// top-down pass per input: log sigmoid(+-a_n) once per inner node, cumulative
// log-probabilities pushed from parents to children.
// children: 2 (V - 1) entries in HuffmanTree::children's layout, checked by
// check_children, with every parent numbered before its children.
template <class T>
void hs_log_prob(const int32_t* children, int64_t num_classes, const T* logits, int64_t batch, T* out,
                 int num_threads);

// grad_logits[b, n] = d(sum_c grad_out[b, c] * out[b, c]) / d logits[b, n]
//                   = sigmoid(-a_n) G_0(n) - sigmoid(a_n) G_1(n),
// G_k(n) the sum of grad_out over the leaves below child k of n (bottom-up).
template <class T>
void hs_log_prob_backward(const int32_t* children, int64_t num_classes, const T* logits,
                          const T* grad_out, int64_t batch, T* grad_logits, int num_threads);

}  // namespace pyneg

"""Plain Python / PyTorch hierarchical softmax, written once and used three ways.

- the reference the tests check pyneg's C++ kernels against;
- the baselines of the benchmarks (``pyneg.bench.hsoftmax``);
- the fallback of :class:`pyneg.HierarchicalSoftmax` on devices that have no
  pyneg kernels (everything here is ordinary differentiable torch code).

The hierarchical softmax here works on *padded* paths: every class's path is
padded to the tree's maximum depth, so a batch becomes dense (B, L) tensors that
``F.embedding`` and ``F.logsigmoid`` handle, at the price of B x L x dim
intermediate memory.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F


def heapq_huffman_depths(counts: np.ndarray) -> np.ndarray:
    """Code length of every class from the textbook priority-queue Huffman construction.

    Pops the two lightest nodes off a binary heap and pushes their merge until
    one node is left, then reads each class's depth off the parent links.
    O(V log V) with Python-level heap operations.
    """
    weights = [float(c) for c in counts]
    n = len(weights)
    heap = [(w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * max(2 * n - 1, 1)
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * max(2 * n - 1, 1)
    for i in range(2 * n - 3, -1, -1):  # the root is node 2n - 2; parents come later
        depth[i] = depth[parent[i]] + 1
    return np.asarray(depth[:n], dtype=np.int64)


class PaddedPaths(NamedTuple):
    """Every class's path padded to the maximum depth L.

    nodes: (V, L) int64 inner-node rows (0 in padding); signs: (V, L) +-1 for
    code 0 / 1 and 0 in padding.
    """

    nodes: torch.Tensor
    signs: torch.Tensor


def padded_paths(
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device] = None,
) -> PaddedPaths:
    """Pads the flat layout (``offsets``, ``nodes``, ``codes`` of a HuffmanTree) to (V, L)."""
    offsets = offsets.to(torch.int64)
    depths = offsets[1:] - offsets[:-1]
    width = max(int(depths.max()) if depths.numel() else 0, 1)
    pos = torch.arange(width, dtype=torch.int64)
    mask = pos[None, :] < depths[:, None]
    idx = (offsets[:-1, None] + pos[None, :]).clamp_max(max(nodes.numel() - 1, 0))
    if nodes.numel() == 0:  # V = 1: one empty path
        flat_nodes = torch.zeros_like(idx)
        flat_signs = torch.zeros(idx.shape, dtype=dtype)
    else:
        flat_nodes = torch.where(mask, nodes.to(torch.int64)[idx], 0)
        flat_signs = torch.where(mask, 1.0 - 2.0 * codes.to(dtype)[idx], 0.0).to(dtype)
    return PaddedPaths(flat_nodes.to(device), flat_signs.to(device))


class _SparseGather(torch.autograd.Function):
    """``vector[index]`` whose gradient is a sparse COO vector (``F.embedding(sparse=True)`` for 1-D)."""

    @staticmethod
    def forward(ctx, vector: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.size = vector.shape[0]
        return vector[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        # Indices are path nodes, all in range; duplicates are summed when coalesced.
        g = torch.sparse_coo_tensor(index.reshape(1, -1), grad.reshape(-1), (ctx.size,), check_invariants=False)
        return g, None


def gather_nll(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    paths: PaddedPaths,
    *,
    sparse: bool = False,
) -> torch.Tensor:
    """Per-example negative log-likelihood (B,), by gathering every path's rows.

    ``-sum_j log sigmoid(s_j (u_{n_j} . v + b_{n_j}))`` over the padded path of
    ``target[b]``, with padding masked out.
    """
    if weight.shape[0] == 0:  # V = 1: the only class has probability 1
        return (input * 0).sum(1)
    nodes = paths.nodes[target]  # (B, L)
    signs = paths.signs[target].to(input.dtype)  # (B, L)
    rows = F.embedding(nodes, weight, sparse=sparse)  # (B, L, d)
    scores = torch.bmm(rows, input.unsqueeze(-1)).squeeze(-1)  # (B, L)
    if bias is not None:
        if sparse:  # F.embedding's sparse gradient cannot flow back through bias.unsqueeze(-1)
            scores = scores + _SparseGather.apply(bias, nodes)
        else:
            scores = scores + F.embedding(nodes, bias.unsqueeze(-1)).squeeze(-1)
    return -(F.logsigmoid(signs * scores) * (signs != 0)).sum(1)


def gather_log_prob(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], paths: PaddedPaths
) -> torch.Tensor:
    """log P(c | input) of every class (B, V): all inner-node scores, gathered per class."""
    return log_prob_from_scores(F.linear(input, weight, bias), paths)


def log_prob_from_scores(scores: torch.Tensor, paths: PaddedPaths) -> torch.Tensor:
    """log P(c | .) of every class (B, V) from the inner-node scores (B, V - 1)."""
    if scores.shape[1] == 0:
        return scores.sum(1, keepdim=True) * 0  # V = 1: log 1 (still connected to the graph)
    signs = paths.signs.to(scores.dtype)  # (V, L)
    picked = scores[:, paths.nodes]  # (B, V, L)
    return (F.logsigmoid(signs * picked) * (signs != 0)).sum(-1)

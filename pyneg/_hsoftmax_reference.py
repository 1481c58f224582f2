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
    on = signs != 0  # padding steps add 0 (masked before logsigmoid: 0 * inf would be NaN)
    return -torch.where(on, F.logsigmoid(torch.where(on, signs * scores, 0.0)), 0.0).sum(1)


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
    on = signs != 0  # padding steps add 0 (masked before logsigmoid: 0 * inf would be NaN)
    return torch.where(on, F.logsigmoid(torch.where(on, signs * picked, 0.0)), 0.0).sum(-1)


def check_flat_batch(
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    max_depth: int,
    num_inner: int,
    codes: Optional[torch.Tensor] = None,
) -> None:
    """Raises ValueError unless the flat layout gives every ``target`` a path pyneg may read.

    The checks the C++ kernels make (a target outside [0, V) is named as there),
    with one synchronisation on an accelerator: ids in range, paths inside
    ``nodes`` and at most ``max_depth`` long, nodes in [0, num_inner).
    """
    v = offsets.numel() - 1
    if target.numel() == 0:
        return
    bad_id = (target < 0) | (target >= v)
    if bool(bad_id.any()):
        raise ValueError(f"target holds id {int(target[bad_id][0])} outside [0, {v})")
    lo, hi = offsets[target], offsets[target + 1]
    if bool(((lo < 0) | (hi < lo) | (hi > nodes.numel()) | (hi - lo > max_depth)).any()):
        raise ValueError(f"path_offsets do not describe paths of at most max_depth {max_depth} in the path steps")
    if nodes.numel() and bool(((nodes < 0) | (nodes >= num_inner)).any()):
        raise ValueError(f"path_nodes holds nodes outside [0, {num_inner})")
    if codes is not None and codes.numel() and bool((codes > 1).any()):
        raise ValueError(f"path_codes holds {int(codes.max())}, not a code bit (0 or 1)")


def check_tree_values(
    children: torch.Tensor, offsets: torch.Tensor, nodes: torch.Tensor, codes: torch.Tensor, max_depth: int
) -> None:
    """Raises ValueError unless ``children`` is a tree whose root-to-leaf paths are exactly the flat paths.

    What ``hs_log_prob`` needs: its CPU kernel walks ``children`` top-down
    (every parent numbered before its children), the reference gathers the
    paths, so both must describe the same tree. Checked: every inner node but
    the root 0 and every leaf is the child of exactly one inner node, with a
    smaller number; each class's path starts at the root, each step is the
    parent of the next with the code of the branch taken, and the last is the
    parent of the class's leaf. O(V + path steps), vectorised.
    """
    v = offsets.numel() - 1
    inner = v - 1
    lengths = offsets[1:] - offsets[:-1]
    if int(offsets[0]) != 0 or int(offsets[-1]) != nodes.numel() or bool((lengths < 0).any()):
        raise ValueError(
            "path_offsets must run from 0 to len(path_nodes) without decreasing (the layout of HuffmanTree)"
        )
    check_flat_batch(torch.arange(v, device=offsets.device), offsets, nodes, max_depth, inner, codes)
    if inner == 0:
        return
    ch = children.to(torch.int64)
    bad = ch.ge(inner) | ch.lt(-v)
    if bool(bad.any()):
        raise ValueError(
            f"children holds {int(ch[bad][0])}, neither an inner node in [0, {inner}) "
            f"nor the leaf of a class in [0, {v})"
        )
    # Index space of the tree: inner nodes 0 .. V-2, then the leaf of class c at V - 1 + c.
    slot = torch.where(ch >= 0, ch, inner + (-1 - ch))
    count = torch.bincount(slot, minlength=inner + v)
    parent = torch.arange(2 * inner, device=ch.device) // 2
    if int(count[0]) != 0 or not bool((count[1:] == 1).all()):
        raise ValueError(
            "children is not a tree: every inner node but the root 0 and every class's leaf must be "
            "the child of exactly one inner node"
        )
    if bool(((ch >= 0) & (ch <= parent)).any()):
        raise ValueError("children is not a tree numbered top-down: an inner node's children must have larger numbers")
    up = torch.empty(inner + v, dtype=torch.int64, device=ch.device)
    side = torch.empty(inner + v, dtype=torch.int64, device=ch.device)
    up[slot] = parent
    side[slot] = torch.arange(2 * inner, device=ch.device) % 2
    n = nodes.to(torch.int64)
    # The node after each step: the next step's node, or the class's leaf after its last step.
    nxt = torch.empty_like(n)
    if n.numel() > 1:
        nxt[:-1] = n[1:]
    cls = torch.repeat_interleave(torch.arange(v, device=n.device), lengths)
    last = offsets[1:] - 1
    ends = lengths > 0
    nxt[last[ends]] = inner + cls[last[ends]]
    firsts = offsets[:-1][ends]
    if (
        not bool(ends.all())
        or not bool((n[firsts] == 0).all())
        or not bool((up[nxt] == n).all())
        or not bool((side[nxt] == codes.to(torch.int64)).all())
    ):
        raise ValueError(
            "children and the paths (path_offsets, path_nodes, path_codes) describe different trees: "
            "each class's path must run from the root through children to its leaf"
        )


def batch_paths(
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    max_depth: int,
    dtype: torch.dtype,
) -> PaddedPaths:
    """The paths of ``target`` (B,) from the flat layout, padded to ``max_depth``: (B, L) rows and signs.

    Only the batch's paths are gathered (O(B L), no synchronisation); the
    layout must have passed :func:`check_flat_batch`.
    """
    width = max(max_depth, 1)
    lo = offsets[target]
    depth = offsets[target + 1] - lo
    pos = torch.arange(width, dtype=torch.int64, device=target.device)
    mask = pos[None, :] < depth[:, None]
    if nodes.numel() == 0:  # V = 1: every path is empty
        zeros = torch.zeros(mask.shape, dtype=torch.int64, device=target.device)
        return PaddedPaths(zeros, zeros.to(dtype))
    idx = (lo[:, None] + pos[None, :]).clamp(0, nodes.numel() - 1)
    batch_nodes = torch.where(mask, nodes.to(torch.int64)[idx], 0)
    signs = torch.where(mask, 1.0 - 2.0 * codes.to(dtype)[idx], 0.0).to(dtype)
    return PaddedPaths(batch_nodes, signs)


def flat_nll(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    max_depth: int,
) -> torch.Tensor:
    """:func:`gather_nll` over the flat layout (checked first): differentiable, any device."""
    check_flat_batch(target, offsets, nodes, max_depth, weight.shape[0])
    paths = batch_paths(target, offsets, nodes, codes, max_depth, input.dtype)
    rows = torch.arange(target.shape[0], device=target.device)
    return gather_nll(input, rows, weight, bias, paths)


def flat_log_prob(
    scores: torch.Tensor, offsets: torch.Tensor, nodes: torch.Tensor, codes: torch.Tensor, max_depth: int
) -> torch.Tensor:
    """:func:`log_prob_from_scores` over the flat layout (checked first): (B, V), differentiable."""
    classes = torch.arange(offsets.numel() - 1, device=scores.device)
    check_flat_batch(classes, offsets, nodes, max_depth, scores.shape[1])
    return log_prob_from_scores(scores, batch_paths(classes, offsets, nodes, codes, max_depth, scores.dtype))


def flat_nll_grads(
    grad_loss: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of ``sum(grad_loss * flat_nll(...))`` by the closed form, without autograd.

    With ``z_j = s_j (u_{n_j} . v + b_{n_j})``, ``dNLL/d(u.v + b) = s_j (sigmoid(z_j) - 1)``;
    node rows accumulate with ``index_add_``. Returns (grad_input, grad_weight,
    grad_bias or None).
    """
    check_flat_batch(target, offsets, nodes, max_depth, weight.shape[0])
    grad_input = torch.zeros_like(input)
    grad_weight = torch.zeros_like(weight)
    grad_bias = None if bias is None else torch.zeros_like(bias)
    if weight.shape[0] == 0 or input.shape[0] == 0:
        return grad_input, grad_weight, grad_bias
    paths = batch_paths(target, offsets, nodes, codes, max_depth, input.dtype)
    rows = weight[paths.nodes]  # (B, L, d)
    scores = torch.bmm(rows, input.unsqueeze(-1)).squeeze(-1)
    if bias is not None:
        scores = scores + bias[paths.nodes]
    coef = grad_loss.to(input.dtype)[:, None] * paths.signs * (torch.sigmoid(paths.signs * scores) - 1)
    coef = coef * (paths.signs != 0)  # (B, L): 0 in the padding
    grad_input = torch.bmm(coef.unsqueeze(1), rows).squeeze(1)
    flat = paths.nodes.reshape(-1)
    grad_weight.index_add_(0, flat, (coef.unsqueeze(-1) * input.unsqueeze(1)).reshape(-1, input.shape[1]))
    if grad_bias is not None:
        grad_bias.index_add_(0, flat, coef.reshape(-1))
    return grad_input, grad_weight, grad_bias


def flat_log_prob_grad(
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    max_depth: int,
) -> torch.Tensor:
    """Gradient of ``sum(grad_out * flat_log_prob(scores, ...))`` by the closed form (B, V - 1)."""
    classes = torch.arange(offsets.numel() - 1, device=scores.device)
    check_flat_batch(classes, offsets, nodes, max_depth, scores.shape[1])
    grad = torch.zeros_like(scores)
    if scores.shape[1] == 0:
        return grad
    paths = batch_paths(classes, offsets, nodes, codes, max_depth, scores.dtype)  # (V, L)
    real = paths.signs != 0  # (V, L): False in the padding
    # The padding reads node 0: zeroed before any product, so an infinite score there is no
    # 0 * inf = NaN (the CPU kernel, which walks the tree, never reads it).
    picked = torch.where(real, scores[:, paths.nodes], 0)  # (B, V, L)
    # d log sigmoid(s a) / da = s sigmoid(-s a)
    term = grad_out.to(scores.dtype).unsqueeze(-1) * paths.signs * torch.sigmoid(-paths.signs * picked)
    term = torch.where(real, term, 0)
    grad.index_add_(1, paths.nodes.reshape(-1), term.reshape(scores.shape[0], -1))
    return grad

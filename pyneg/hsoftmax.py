"""Huffman trees and hierarchical softmax (Morin & Bengio 2005; Mikolov et al. 2013).

A Huffman tree over V classes gives every class a root-to-leaf path of inner
nodes n_1..n_L with code bits c_1..c_L; frequent classes get short paths. With a
context vector v, inner-node vectors u and optional biases b,

    log P(c | v) = sum_j log sigmoid(s_j (u_{n_j} . v + b_{n_j})),   s_j = 1 - 2 c_j,

and the probabilities of all V classes sum to one. Training costs O(depth · dim)
per example (about log2 V) instead of O(V · dim) for a full softmax.

The tree is built in C++ (sort plus the O(V) two-queue merge); the loss and its
gradients are C++ kernels that run on all of torch's intra-op threads with the
GIL released and give the same bits whatever the thread count.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pyneg import _core
from pyneg import cuda as pyneg_cuda
from pyneg._hsoftmax_reference import PaddedPaths, gather_log_prob, gather_nll, padded_paths
from pyneg._validation import ArrayLike, as_float64_numpy, as_index_tensor, check_bool, check_int
from pyneg.functional import _check_reduction, _reduce

__all__ = ["HuffmanTree", "HierarchicalSoftmax"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _view(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the tree's (read-only) memory; torch warns about read-only arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class HuffmanTree:
    """Huffman tree over ``V`` classes, built from per-class counts.

    Build one with :meth:`from_counts`. Ties between equal counts are broken by
    class id, so the same counts always give the same tree; the weighted path
    length ``sum(counts * depths)`` is the minimum over all binary trees.

    The paths are stored flat (the layout the kernels read, on CPU and GPU):

    - :attr:`path_offsets` int64 (V + 1): class ``c``'s path occupies positions
      ``path_offsets[c]`` to ``path_offsets[c + 1] - 1``, root first;
    - :attr:`path_nodes` int32: inner-node index in ``[0, V - 2]`` (a row of
      :class:`HierarchicalSoftmax`'s ``weight``); the root is node 0;
    - :attr:`path_codes` uint8: code bit ``c_j``; the sign is ``1 - 2 c_j``.

    These tensors share the tree's memory: read them, don't write them.

    Example:
        >>> import pyneg
        >>> tree = pyneg.HuffmanTree.from_counts([5, 1, 1, 3])
        >>> tree.depths.tolist()
        [1, 3, 3, 2]
        >>> nodes, codes = tree.path(3)
        >>> nodes.tolist(), codes.tolist()
        ([0, 1], [True, True])
    """

    def __init__(self, core: Any, counts: torch.Tensor) -> None:
        # Use from_counts: this wraps an already built pyneg._core.HuffmanTree.
        self._core = core
        self._counts = counts
        self._cache: Dict[str, torch.Tensor] = {}

    @classmethod
    def from_counts(cls, counts: ArrayLike) -> "HuffmanTree":
        """Builds the tree from ``counts``: 1-D, finite, >= 0 (zeros allowed).

        Raises ValueError for an empty, multi-dimensional, NaN, infinite or
        negative ``counts`` and TypeError for non-numeric data.
        """
        c = as_float64_numpy(counts, "counts")
        core = _core.HuffmanTree.from_counts(c, "counts")
        return cls(core, torch.from_numpy(np.array(c, copy=True)))

    # ------------------------------------------------------------------ shape
    @property
    def num_classes(self) -> int:
        """V, the number of classes (leaves)."""
        return int(self._core.num_classes)

    @property
    def num_inner(self) -> int:
        """V - 1, the number of inner nodes (rows of the weight)."""
        return max(self.num_classes - 1, 0)

    @property
    def max_depth(self) -> int:
        """The longest path length."""
        return int(self._core.max_depth)

    @property
    def counts(self) -> torch.Tensor:
        """(V,) float64 counts the tree was built from."""
        return self._counts

    def _cached(self, name: str) -> torch.Tensor:
        t = self._cache.get(name)
        if t is None:
            t = self._cache[name] = _view(getattr(self._core, name))
        return t

    @property
    def depths(self) -> torch.Tensor:
        """(V,) int64 code length (path length) of every class."""
        return self._cached("depths")

    @property
    def path_offsets(self) -> torch.Tensor:
        """(V + 1,) int64 start of every class's path in :attr:`path_nodes`."""
        return self._cached("path_offsets")

    @property
    def path_nodes(self) -> torch.Tensor:
        """int32 inner-node index of every path step, each path root first."""
        return self._cached("path_nodes")

    @property
    def path_codes(self) -> torch.Tensor:
        """uint8 code bit (0 or 1) of every path step."""
        return self._cached("path_codes")

    @property
    def weighted_path_length(self) -> float:
        """``sum(counts * depths)``: the expected code length times the total count."""
        return float((self._counts * self.depths.to(torch.float64)).sum())

    def path(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class ``i``'s path: (int64 inner-node indices root to leaf, bool code bits)."""
        i = check_int(i, "i")
        if not 0 <= i < self.num_classes:
            raise ValueError(f"i must be in [0, {self.num_classes}), got {i}")
        lo, hi = int(self.path_offsets[i]), int(self.path_offsets[i + 1])
        return self.path_nodes[lo:hi].to(torch.int64), self.path_codes[lo:hi].to(torch.bool)

    def padded_paths(self, dtype: torch.dtype = torch.float32,
                     device: Optional[torch.device] = None) -> PaddedPaths:
        """All paths padded to :attr:`max_depth`: (V, L) node rows and signs (0 in padding)."""
        return padded_paths(self.path_offsets, self.path_nodes, self.path_codes, dtype=dtype, device=device)

    # ------------------------------------------------------------------ misc
    def __reduce__(self):  # pickle / deepcopy: rebuild from the counts (deterministic)
        return (HuffmanTree.from_counts, (self._counts,))

    def __repr__(self) -> str:
        return f"HuffmanTree(num_classes={self.num_classes}, max_depth={self.max_depth})"


def _kernel_threads() -> int:
    return torch.get_num_threads()


class _HSLoss(torch.autograd.Function):
    """Per-example NLL through the C++ kernels (CPU, float32 / float64)."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                target: torch.Tensor, tree: HuffmanTree, sparse: bool) -> torch.Tensor:
        input = input.detach().contiguous()
        w = weight.detach().contiguous()
        b = None if bias is None else bias.detach().contiguous()
        tgt = target.numpy()
        steps = tree._core.batch_path_length(tgt)
        loss = torch.empty(input.shape[0], dtype=input.dtype)
        dz = torch.empty(steps, dtype=input.dtype)
        _core.hs_forward(tree._core, input.numpy(), tgt, w.numpy(), None if b is None else b.numpy(),
                         loss.numpy(), dz.numpy(), _kernel_threads())
        ctx.save_for_backward(input, w, target, dz)
        ctx.tree = tree
        ctx.sparse = sparse
        ctx.has_bias = bias is not None
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor):
        input, w, target, dz = ctx.saved_tensors
        tree: HuffmanTree = ctx.tree
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.has_bias
        grad_loss = grad_loss.detach().to(input.dtype).contiguous()
        inner, dim, dtype = tree.num_inner, input.shape[1], input.dtype
        gi = torch.empty_like(input) if need_input else None
        gw = gb = touched = None
        if ctx.sparse and (need_weight or need_bias):
            cap = min(dz.numel(), inner)
            touched = torch.empty(cap, dtype=torch.int64)
            gw = torch.empty(cap, dim, dtype=dtype) if need_weight else None
            gb = torch.empty(cap, dtype=dtype) if need_bias else None
        else:
            # Rows off the batch's paths stay zero; torch.zeros maps zero pages lazily.
            gw = torch.zeros(inner, dim, dtype=dtype) if need_weight else None
            gb = torch.zeros(inner, dtype=dtype) if need_bias else None
        used = _core.hs_backward(
            tree._core, input.numpy(), target.numpy(), w.numpy(), dz.numpy(), grad_loss.numpy(),
            None if gi is None else gi.numpy(), None if gw is None else gw.numpy(),
            None if gb is None else gb.numpy(), None if touched is None else touched.numpy(),
            _kernel_threads(),
        )
        if touched is not None:
            idx = touched[:used].unsqueeze(0)
            if gw is not None:
                gw = _sparse(idx, gw[:used], (inner, dim))
            if gb is not None:
                gb = _sparse(idx, gb[:used], (inner,))
        return gi, gw, gb, None, None, None


class _HSLossCUDA(torch.autograd.Function):
    """Per-example NLL through pyneg's CUDA kernels (dense gradients, float32 / float64)."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                target: torch.Tensor, flat: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        input, weight = input.detach().contiguous(), weight.detach().contiguous()
        bias = None if bias is None else bias.detach().contiguous()
        loss = pyneg_cuda.hs_forward(input, weight, target, *flat, bias=bias)
        ctx.save_for_backward(input, weight, target, *(() if bias is None else (bias,)))
        ctx.flat = flat
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor):
        input, weight, target, *bias = ctx.saved_tensors
        gi, gw, gb = pyneg_cuda.hs_backward(grad_loss, input, weight, target, *ctx.flat,
                                            bias=bias[0] if bias else None)
        return gi, gw, gb, None, None


def _sparse(indices: torch.Tensor, values: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    # Indices come out sorted and distinct: the tensor is coalesced by construction.
    return torch.sparse_coo_tensor(indices, values, size, is_coalesced=True, check_invariants=False)


class _HSLogProb(torch.autograd.Function):
    """(B, V - 1) inner-node scores -> (B, V) log-probabilities, one tree walk per row."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, tree: HuffmanTree) -> torch.Tensor:
        logits = logits.detach().contiguous()
        out = torch.empty(logits.shape[0], tree.num_classes, dtype=logits.dtype)
        _core.hs_log_prob(tree._core, logits.numpy(), out.numpy(), _kernel_threads())
        ctx.save_for_backward(logits)
        ctx.tree = tree
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        (logits,) = ctx.saved_tensors
        grad_out = grad_out.detach().to(logits.dtype).contiguous()
        grad = torch.empty_like(logits)
        _core.hs_log_prob_backward(ctx.tree._core, logits.numpy(), grad_out.numpy(), grad.numpy(),
                                   _kernel_threads())
        return grad, None


class HierarchicalSoftmax(nn.Module):
    """Hierarchical softmax over a Huffman tree of ``counts``, as a loss module.

    Args:
        counts: per-class counts (1-D, >= 0), or an already built
            :class:`HuffmanTree`.
        dim: size of the input vectors.
        bias: learn one bias per inner node.
        sparse: give ``weight`` (and ``bias``) a sparse COO gradient holding
            only the rows on the batch's paths, as ``nn.Embedding(sparse=True)``
            does; use it with ``torch.optim.SparseAdam`` or ``SGD``.
        dtype, device: of the parameters. float32 and float64 run on pyneg's
            C++ kernels on CPU and, when pyneg was built with CUDA and
            ``sparse`` is False, on its CUDA kernels; other dtypes and devices
            (and sparse CUDA modules) use an equivalent pure-PyTorch
            implementation.

    Attributes:
        weight: (V - 1, dim) inner-node vectors, initialised to zero as in
            word2vec: every class then starts at probability 2^-depth, the
            Huffman code's own prior, and the inputs break the symmetry.
        bias: (V - 1,) or None.
        tree: the :class:`HuffmanTree`.

    Example:
        >>> import torch, pyneg
        >>> hs = pyneg.HierarchicalSoftmax(torch.tensor([5.0, 1, 1, 3]), dim=8)
        >>> x = torch.randn(2, 8, requires_grad=True)
        >>> loss = hs(x, torch.tensor([0, 3]))
        >>> loss.backward()
        >>> bool(torch.allclose(hs.log_prob(x).exp().sum(1), torch.ones(2)))
        True
    """

    def __init__(self, counts: Any, dim: int, *, bias: bool = False, sparse: bool = False,
                 dtype: Optional[torch.dtype] = None, device: Any = None) -> None:
        super().__init__()
        dim = check_int(dim, "dim", minimum=1)
        check_bool(sparse, "sparse")
        check_bool(bias, "bias")
        self.tree = counts if isinstance(counts, HuffmanTree) else HuffmanTree.from_counts(counts)
        self.num_classes = self.tree.num_classes
        self.dim = dim
        self.sparse = sparse
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(self.tree.num_inner, dim, **factory))
        if bias:
            self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(self.tree.num_inner, **factory))
        else:
            self.register_parameter("bias", None)
        self._padded: Dict[Tuple[torch.device, torch.dtype], PaddedPaths] = {}
        self._flat: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zeros ``weight`` and ``bias`` (word2vec's initialisation of the inner nodes)."""
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, bias={self.bias is not None}, "
                f"sparse={self.sparse}, max_depth={self.tree.max_depth}")

    # ----------------------------------------------------------------- checks
    def _check_input(self, input: Any) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dtype != self.weight.dtype:
            raise TypeError(f"input must have the weight's dtype {self.weight.dtype}, got {input.dtype}")
        if input.dim() != 2 or input.shape[1] != self.dim:
            raise ValueError(f"input must be (B, {self.dim}), got shape {tuple(input.shape)}")
        if input.device != self.weight.device:
            raise ValueError(f"input is on {input.device} but the module's weight is on {self.weight.device}")
        return input

    def _on_kernels(self, input: torch.Tensor) -> bool:
        return input.device.type == "cpu" and input.dtype in _KERNEL_DTYPES

    def _on_cuda_kernels(self, input: torch.Tensor) -> bool:
        # Sparse gradients stay on the gather path: the CUDA backward writes dense rows.
        return (input.device.type == "cuda" and input.dtype in _KERNEL_DTYPES and not self.sparse
                and pyneg_cuda.cuda_available())

    def _flat_paths(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tree's flat path arrays on ``device`` (uploaded once per device)."""
        if device not in self._flat:
            self._flat[device] = tuple(t.to(device) for t in (  # type: ignore[assignment]
                self.tree.path_offsets, self.tree.path_nodes, self.tree.path_codes))
        return self._flat[device]

    def _paths(self, input: torch.Tensor) -> PaddedPaths:
        key = (input.device, input.dtype)
        if key not in self._padded:
            self._padded[key] = self.tree.padded_paths(input.dtype, input.device)
        return self._padded[key]

    # ---------------------------------------------------------------- compute
    def forward(self, input: torch.Tensor, target: ArrayLike, reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood of ``target`` given ``input``.

        Args:
            input: (B, dim) context vectors, the weight's dtype and device.
            target: (B,) class ids in [0, V).
            reduction: "none" (B,), "mean" or "sum".
        """
        _check_reduction(reduction)
        input = self._check_input(input)
        tgt = as_index_tensor(target, "target", self.num_classes)
        if not isinstance(target, torch.Tensor):
            # A NumPy array is wrapped, not copied, and torch's version counter cannot see
            # writes to it: the backward pass must not read targets changed after forward.
            tgt = tgt.clone()
        if tgt.shape != input.shape[:1]:
            raise ValueError(f"target must be ({input.shape[0]},) to match input, got shape {tuple(tgt.shape)}")
        if self._on_kernels(input):
            loss = _HSLoss.apply(input, self.weight, self.bias, tgt, self.tree, self.sparse)
        elif self._on_cuda_kernels(input):
            loss = _HSLossCUDA.apply(input, self.weight, self.bias, tgt.to(input.device),
                                     self._flat_paths(input.device))
        else:
            loss = gather_nll(input, tgt.to(input.device), self.weight, self.bias, self._paths(input),
                              sparse=self.sparse)
        return _reduce(loss, reduction)

    def log_prob(self, input: torch.Tensor) -> torch.Tensor:
        """(B, V) log-probabilities of every class (differentiable).

        Scores every inner node once per input (one matrix product), then walks
        the tree top-down accumulating log-probabilities: O(B V dim) like a full
        softmax, meant for evaluation rather than training.
        """
        input = self._check_input(input)
        if self._on_kernels(input):
            logits = nn.functional.linear(input, self.weight, self.bias)
            return _HSLogProb.apply(logits, self.tree)
        return gather_log_prob(input, self.weight, self.bias, self._paths(input))

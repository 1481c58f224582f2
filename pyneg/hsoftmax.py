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

Reliability (docs/reliability_hsoftmax.md): a tree is immutable. The kernels
read only the tree's private arrays and private copies of the targets, checked
after copying; every tensor a tree hands out is a fresh copy, so writing it
changes nothing pyneg reads. Module states carry a fingerprint of their tree.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pyneg import _core
from pyneg._hsoftmax_reference import PaddedPaths, padded_paths
from pyneg._ops import hsoftmax as _hs_ops
from pyneg._ops._checks import refuses_alike_compiled
from pyneg._reduction import acc_dtype as _acc_dtype
from pyneg._reduction import check_reduction as _check_reduction
from pyneg._reduction import reduce_loss as _reduce
from pyneg._validation import (
    _WIDE_UNSIGNED,
    MAX_CLASSES,
    ArrayLike,
    as_float64_numpy,
    as_index_tensor,
    as_tensor,
    check_bool,
    check_device,
    check_int,
    check_nbytes,
    check_tensor,
    shape_str,
)

__all__ = ["HuffmanTree", "HierarchicalSoftmax"]

_PARAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The tree arrays the ops take, in their argument order.
_FLAT_NAMES = ("path_offsets", "path_nodes", "path_codes", "children")
_FlatPaths = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
# Format of the tree fingerprint a module's state_dict carries (its "_extra_state").
_STATE_FORMAT = 1


def _private_view(array: np.ndarray) -> torch.Tensor:
    """A tensor over one of the C++ tree's read-only arrays, for pyneg's own reads only.

    torch.from_numpy gives a *writable* tensor (and warns about the read-only
    array): such a tensor must never leave this module; users get clones.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _check_float_dtype(dtype: Any, name: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {type(dtype).__name__}")
    if dtype not in _PARAM_DTYPES:
        raise TypeError(f"{name} must be a floating-point dtype (float16, bfloat16, float32 or float64), got {dtype}")
    return dtype


def _module_device(device: Any) -> Optional[torch.device]:
    """A module's device; unlike check_device this allows meta (deferred initialisation)."""
    if isinstance(device, (str, torch.device)) and str(device).strip() == "meta":
        return torch.device("meta")
    return check_device(device)


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

    A tree is immutable. Every tensor it hands out (these three, :attr:`depths`,
    :attr:`counts`, :meth:`path`, :meth:`padded_paths`) is a fresh copy: writing
    one changes nothing the tree or the kernels read. Copying, pickling and
    ``torch.save`` give an equal tree (:meth:`fingerprint` compares them).

    Example:
        >>> import pyneg
        >>> tree = pyneg.HuffmanTree.from_counts([5, 1, 1, 3])
        >>> tree.depths.tolist()
        [1, 3, 3, 2]
        >>> nodes, codes = tree.path(3)
        >>> nodes.tolist(), codes.tolist()
        ([0, 1], [True, True])
    """

    def __init__(self, core: Any, counts: ArrayLike) -> None:
        # Use from_counts: this wraps an already built pyneg._core.HuffmanTree.
        if not isinstance(core, _core.HuffmanTree):
            raise TypeError("build a HuffmanTree with HuffmanTree.from_counts(counts)")
        c = np.array(as_float64_numpy(counts, "counts", max_len=MAX_CLASSES), copy=True)  # private
        if c.shape[0] != core.num_classes:
            raise ValueError(f"counts must have the tree's {core.num_classes} entries, got {c.shape[0]}")
        self._core = core
        self._counts = torch.from_numpy(c)
        # Built here, once (catch_warnings in _private_view is not thread-safe): never handed out.
        self._arrays: Dict[str, torch.Tensor] = {
            name: _private_view(getattr(core, name))
            for name in ("path_offsets", "path_nodes", "path_codes", "children", "depths")
        }
        # Plain ints, read once: torch.compile traces attribute reads, not calls into pybind11.
        self._num_classes = int(core.num_classes)
        self._max_depth = int(core.max_depth)
        # The arrays the ops take, per device (the CPU's are views of the C++ tree's own).
        self._flat: Dict[torch.device, _FlatPaths] = {
            torch.device("cpu"): tuple(self._arrays[n] for n in _FLAT_NAMES)  # type: ignore[dict-item]
        }
        self._fingerprint: Optional[str] = None

    @classmethod
    def from_counts(cls, counts: ArrayLike) -> HuffmanTree:
        """Builds the tree from ``counts``: 1-D, finite, >= 0 (zeros allowed).

        Raises ValueError for an empty, multi-dimensional, NaN, infinite or
        negative ``counts`` and TypeError for non-numeric data.
        """
        c = as_float64_numpy(counts, "counts", max_len=MAX_CLASSES)
        core = _core.HuffmanTree.from_counts(c, "counts")
        return cls(core, c)

    # ------------------------------------------------------------------ shape
    @property
    def num_classes(self) -> int:
        """V, the number of classes (leaves)."""
        return self._num_classes

    @property
    def num_inner(self) -> int:
        """V - 1, the number of inner nodes (rows of the weight)."""
        return max(self.num_classes - 1, 0)

    @property
    def max_depth(self) -> int:
        """The longest path length."""
        return self._max_depth

    @property
    def counts(self) -> torch.Tensor:
        """(V,) float64 counts the tree was built from (a copy)."""
        return self._counts.clone()

    def _array(self, name: str) -> torch.Tensor:
        return self._arrays[name]

    @property
    def depths(self) -> torch.Tensor:
        """(V,) int64 code length (path length) of every class (a copy)."""
        return self._array("depths").clone()

    @property
    def path_offsets(self) -> torch.Tensor:
        """(V + 1,) int64 start of every class's path in :attr:`path_nodes` (a copy)."""
        return self._array("path_offsets").clone()

    @property
    def path_nodes(self) -> torch.Tensor:
        """int32 inner-node index of every path step, each path root first (a copy)."""
        return self._array("path_nodes").clone()

    @property
    def path_codes(self) -> torch.Tensor:
        """uint8 code bit (0 or 1) of every path step (a copy)."""
        return self._array("path_codes").clone()

    @property
    def weighted_path_length(self) -> float:
        """``sum(counts * depths)``: the expected code length times the total count."""
        return float((self._counts * self._array("depths").to(torch.float64)).sum())

    def path(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class ``i``'s path: (int64 inner-node indices root to leaf, bool code bits)."""
        i = check_int(i, "i")
        if not 0 <= i < self.num_classes:
            raise ValueError(f"i must be in [0, {self.num_classes}), got {i}")
        offsets = self._array("path_offsets")
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        return (self._array("path_nodes")[lo:hi].to(torch.int64), self._array("path_codes")[lo:hi].to(torch.bool))

    def padded_paths(self, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> PaddedPaths:
        """All paths padded to :attr:`max_depth`: (V, L) node rows and signs (0 in padding).

        ``dtype`` (a floating-point dtype) is the signs'; the result is a fresh copy.
        """
        dtype = _check_float_dtype(dtype, "dtype")
        device = check_device(device)
        return padded_paths(
            self._array("path_offsets"),
            self._array("path_nodes"),
            self._array("path_codes"),
            dtype=dtype,
            device=device,
        )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the tree's shape: equal exactly when two trees have the same paths.

        Counts that give the same tree (e.g. all counts doubled) give the same
        fingerprint; :class:`HierarchicalSoftmax` keeps it in its ``state_dict``.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(b"pyneg.HuffmanTree/1")
            h.update(np.int64(self.num_classes).tobytes())
            # children determines every path: the node numbering and both branches of every node.
            h.update(np.ascontiguousarray(self._core.children, dtype="<i4").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ------------------------------------------------- pyneg's private copies
    def _flat_paths(self, device: torch.device) -> _FlatPaths:
        """(path_offsets, path_nodes, path_codes, children) on ``device``, for the ops (never handed out).

        The CPU's are the tree's own arrays; other devices get copies, uploaded once.
        """
        f = self._flat.get(device)
        if f is None:
            f = self._flat[device] = tuple(  # type: ignore[assignment]
                self._arrays[n].to(device, copy=True) for n in _FLAT_NAMES
            )
        return f  # type: ignore[return-value]

    # ------------------------------------------------------------------ misc
    def __reduce__(self):  # pickle / torch.save: rebuild from the counts (deterministic)
        return (HuffmanTree.from_counts, (self._counts.numpy().copy(),))

    def __copy__(self) -> HuffmanTree:
        return self  # immutable

    def __deepcopy__(self, memo: Dict[int, Any]) -> HuffmanTree:
        return self  # immutable: a copy could never differ from the original

    def __repr__(self) -> str:
        return f"HuffmanTree(num_classes={self.num_classes}, max_depth={self.max_depth})"


class _Cast(torch.autograd.Function):
    """``x.to(dtype)`` whose backward also casts sparse gradients (torch's own cast cannot)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.dtype = x.dtype
        return x.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return grad.to(ctx.dtype), None


def _to_acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its accumulation dtype (16-bit -> float32; others as they are)."""
    acc = _acc_dtype(t.dtype)
    return t if acc == t.dtype else _Cast.apply(t, acc)


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
        dtype: of the parameters (a floating-point dtype). float32 and
            float64 run on pyneg's C++ kernels on CPU and, when pyneg was built
            with CUDA and ``sparse`` is False, on its CUDA kernels; other
            devices (and sparse CUDA modules) use an equivalent pure-PyTorch
            implementation. float16 and bfloat16 modules compute in float32
            and return float32 losses and log-probabilities (no overflow where
            float32 is finite).
        device: as ``dtype`` above.

    Attributes:
        weight: (V - 1, dim) inner-node vectors, initialised to zero as in
            word2vec: every class then starts at probability 2^-depth, the
            Huffman code's own prior, and the inputs break the symmetry.
        bias: (V - 1,) or None.
        tree: the :class:`HuffmanTree` (read-only attribute; the tree is immutable).

    The loss and ``log_prob`` are PyTorch operators (``torch.ops.pyneg.hs_nll``,
    ``hs_log_prob``; see pyneg/_ops/hsoftmax.py): a module call with tensor
    inputs compiles with ``torch.compile(fullgraph=True)`` without graph breaks
    and exports with ``torch.export``.

    Second derivatives: under ``create_graph=True`` the backward pass runs in
    differentiable PyTorch ops (the padded-path reference), so gradient
    penalties get exact second derivatives (dense ones, also for ``sparse``).

    The ``state_dict`` carries the tree's :meth:`HuffmanTree.fingerprint`
    (as ``_extra_state``); :meth:`load_state_dict` refuses, with ValueError and
    before writing anything, a state of a module built on another tree.

    Example:
        >>> import torch, pyneg
        >>> hs = pyneg.HierarchicalSoftmax(torch.tensor([5.0, 1, 1, 3]), dim=8)
        >>> x = torch.randn(2, 8, requires_grad=True)
        >>> loss = hs(x, torch.tensor([0, 3]))
        >>> loss.backward()
        >>> bool(torch.allclose(hs.log_prob(x).exp().sum(1), torch.ones(2)))
        True
    """

    def __init__(
        self,
        counts: Any,
        dim: int,
        *,
        bias: bool = False,
        sparse: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        dim = check_int(dim, "dim", minimum=1)
        sparse = check_bool(sparse, "sparse")
        bias = check_bool(bias, "bias")
        dtype = _check_float_dtype(torch.get_default_dtype() if dtype is None else dtype, "dtype")
        device = _module_device(device)
        tree = counts if isinstance(counts, HuffmanTree) else HuffmanTree.from_counts(counts)
        if tree.num_inner * dim >= 2**63:
            raise ValueError(f"dim {dim} times the tree's {tree.num_inner} inner nodes overflows a tensor size")
        self._tree = tree
        self._dim = dim
        self._sparse = sparse
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(torch.empty(tree.num_inner, dim, **factory))
        if bias:
            self.bias: Optional[nn.Parameter] = nn.Parameter(torch.empty(tree.num_inner, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # ------------------------------------------------------------- attributes
    @property
    def tree(self) -> HuffmanTree:
        """The :class:`HuffmanTree` (immutable; fixed for the module's lifetime)."""
        return self._tree

    @property
    def num_classes(self) -> int:
        """V."""
        return self._tree.num_classes

    @property
    def dim(self) -> int:
        """Size of the input vectors."""
        return self._dim

    @property
    def sparse(self) -> bool:
        """Whether ``weight`` and ``bias`` get sparse gradients (may be switched, a bool)."""
        return self._sparse

    @sparse.setter
    def sparse(self, value: bool) -> None:
        self._sparse = check_bool(value, "sparse")

    def reset_parameters(self) -> None:
        """Zeros ``weight`` and ``bias`` (word2vec's initialisation of the inner nodes)."""
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, bias={self.bias is not None}, "
            f"sparse={self.sparse}, max_depth={self._tree.max_depth}"
        )

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> Dict[str, Any]:
        """The tree's fingerprint, saved in ``state_dict()`` (loads with ``weights_only=True``)."""
        return {"format": _STATE_FORMAT, "num_classes": self.num_classes, "tree_sha256": self._tree.fingerprint()}

    def set_extra_state(self, state: Any) -> None:
        self._check_tree_state(state, "_extra_state")  # checked before anything was written too

    def _check_tree_state(self, state: Any, key: str) -> None:
        if not isinstance(state, Mapping) or not isinstance(state.get("tree_sha256"), str):
            raise ValueError(f"state_dict[{key!r}] is not a HierarchicalSoftmax tree fingerprint")
        if state.get("num_classes") != self.num_classes or state["tree_sha256"] != self._tree.fingerprint():
            raise ValueError(
                f"state_dict is of a HierarchicalSoftmax over another tree ({state.get('num_classes')} classes, "
                f"fingerprint {str(state['tree_sha256'])[:12]}...) than this module's ({self.num_classes} classes, "
                f"{self._tree.fingerprint()[:12]}...): its weight rows belong to other inner nodes"
            )

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`, checked in full before anything is written.

        Refused with ValueError: a state of a module over another tree (its
        ``_extra_state`` fingerprint differs; never accepted), parameters of
        other shapes, and, with ``strict=True``, a state without the
        fingerprint (saved by an older pyneg: load it with ``strict=False`` to
        skip the tree check), without ``weight`` / ``bias`` or with other keys.
        """
        strict = check_bool(strict, "strict")
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        if strict:
            if "_extra_state" not in state_dict:
                raise ValueError(
                    "state_dict has no tree fingerprint ('_extra_state'): it was saved by a pyneg older than the "
                    "fingerprint or built by hand; load it with strict=False to accept it without the tree check"
                )
            names = ("weight",) + (("bias",) if self.bias is not None else ())
            for name in names:
                if name not in state_dict:
                    raise ValueError(f"state_dict has no {name!r}")
            unexpected = sorted(str(k) for k in state_dict if k not in names + ("_extra_state",))
            if unexpected:
                hint = " (this module was built with bias=False)" if "bias" in unexpected else ""
                raise ValueError(f"state_dict has unexpected keys {unexpected}{hint}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: List[str],
        unexpected_keys: List[str],
        error_msgs: List[str],
    ) -> None:
        # Called for this module inside any model's load_state_dict: the tree and the shapes are
        # checked before torch copies a single value of this module. (torch passes strict=True here
        # whatever the caller asked; it reports missing keys itself, after loading.)
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_tree_state(state_dict[key], key)
        for name in ("weight", "bias"):
            param, k = getattr(self, name), prefix + name
            if param is not None and k in state_dict:
                value = state_dict[k]
                if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(param.shape):
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"state_dict[{k!r}] must have shape {shape_str(param.shape)}, got {shape}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ----------------------------------------------------------------- checks
    def _checked_parameters(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """weight and bias as the kernels need them (they may have been replaced since __init__)."""
        w, b = self.weight, self.bias
        inner = self._tree.num_inner
        if not isinstance(w, torch.Tensor) or w.layout != torch.strided:
            raise TypeError("weight must be a dense torch.Tensor")
        if w.dtype not in _PARAM_DTYPES:
            raise TypeError(f"weight must be floating-point (float16, bfloat16, float32 or float64), got {w.dtype}")
        if tuple(w.shape) != (inner, self._dim):
            raise ValueError(f"weight must be ({inner}, {self._dim}), got shape {shape_str(w.shape)}")
        if w.device.type == "meta":
            raise ValueError(
                "weight is a meta tensor, which holds no data (materialise the module with "
                "to_empty(device=...) and reset_parameters() first)"
            )
        if b is not None:
            if not isinstance(b, torch.Tensor) or b.layout != torch.strided:
                raise TypeError("bias must be a dense torch.Tensor")
            if b.dtype != w.dtype or b.device != w.device or tuple(b.shape) != (inner,):
                raise ValueError(
                    f"bias must be ({inner},) with the weight's dtype and device, got "
                    f"{shape_str(b.shape)} {b.dtype} on {b.device}"
                )
        return w, b

    def _check_input(self, input: Any, weight: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        check_tensor(input, "input")
        if input.dtype != weight.dtype:
            raise TypeError(f"input must have the weight's dtype {weight.dtype}, got {input.dtype}")
        if input.dim() != 2 or input.shape[1] != self._dim:
            raise ValueError(f"input must be (B, {self._dim}), got shape {shape_str(input.shape)}")
        if input.device != weight.device:
            raise ValueError(f"input is on {input.device} but the module's weight is on {weight.device}")
        return input

    def _target(self, target: ArrayLike, device: torch.device, rows: Optional[int] = None) -> torch.Tensor:
        """A private int64 copy of ``target`` on ``device``.

        Tensors are checked here for what their metadata shows (layout, dtype);
        their ids are range-checked by the op, on the copy it reads (the same
        ValueError wording), so a compiled graph needs no values. Arrays and
        sequences (and uint64 tensors, which could wrap) are checked in full here.
        """
        if torch.compiler.is_compiling() and isinstance(target, (bool, int, float, list, tuple)):
            target = as_tensor(target, "target")  # compiled: NumPy cannot be traced; the op checks the ids
        if isinstance(target, torch.Tensor) and target.dtype not in _WIDE_UNSIGNED:
            check_tensor(target, "target")
            if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
                raise TypeError(f"target must hold integer ids, got {target.dtype}")
            return target.detach().to(device=device, dtype=torch.int64, copy=True)
        if rows is not None:  # the shape before the ids, as the compiled road (the op checks the ids)
            src = as_tensor(target, "target")
            shape = tuple(src.shape)
            if shape != (rows,) and not (src.is_floating_point() or src.is_complex() or src.dtype == torch.bool):
                raise ValueError(f"target must be ({rows},) to match input, got shape {shape_str(shape)}")
        return as_index_tensor(target, "target", self.num_classes).to(device)

    # ---------------------------------------------------------------- compute
    @refuses_alike_compiled
    def forward(self, input: torch.Tensor, target: ArrayLike, reduction: str = "mean") -> torch.Tensor:
        """Negative log-likelihood of ``target`` given ``input``.

        Args:
            input: (B, dim) context vectors, the weight's dtype and device.
            target: (B,) class ids in [0, V) (a tensor, array or sequence; copied).
            reduction: "none" (B,), "mean" or "sum". "mean" needs B >= 1.

        Returns float32 for 16-bit modules, the weight's dtype otherwise.
        Runs ``torch.ops.pyneg.hs_nll`` (compiles with ``torch.compile(fullgraph=True)``
        and exports with ``torch.export`` for tensor targets).
        """
        _check_reduction(reduction)
        weight, bias = self._checked_parameters()
        input = self._check_input(input, weight)
        # A private copy: what the op (and the backward pass) reads is what it checks, whatever
        # the caller (or another thread) writes into its target.
        tgt = self._target(target, input.device, input.shape[0])
        if tgt.shape != input.shape[:1]:
            raise ValueError(f"target must be ({input.shape[0]},) to match input, got shape {shape_str(tgt.shape)}")
        if reduction == "mean" and input.shape[0] == 0:
            raise ValueError("input has no rows: the mean over an empty batch is undefined (use reduction='sum')")
        x, w = _to_acc(input), _to_acc(weight)  # 16-bit modules compute in float32
        b = None if bias is None else _to_acc(bias)
        offsets, nodes, codes, _ = self._tree._flat_paths(x.device)
        loss, _ = _hs_ops.hs_nll(x, w, b, tgt, offsets, nodes, codes, self._tree.max_depth, self._sparse)
        return _reduce(loss, reduction)

    @refuses_alike_compiled
    def log_prob(self, input: torch.Tensor) -> torch.Tensor:
        """(B, V) log-probabilities of every class (differentiable).

        Scores every inner node once per input (one matrix product), then walks
        the tree top-down accumulating log-probabilities (``torch.ops.pyneg.hs_log_prob``):
        O(B V dim) like a full softmax, meant for evaluation rather than training.
        float32 for 16-bit modules, the weight's dtype otherwise.
        """
        weight, bias = self._checked_parameters()
        input = self._check_input(input, weight)
        x, w = _to_acc(input), _to_acc(weight)
        b = None if bias is None else _to_acc(bias)
        offsets, nodes, codes, children = self._tree._flat_paths(x.device)
        # The (B, V - 1) scores and the (B, V) result: refused by name before anything is allocated.
        if not torch.compiler.is_compiling():  # traced: the op checks the (B, V) size when the graph runs
            check_nbytes((x.shape[0], self.num_classes), 2 * x.element_size(), "log_prob's (B, V) scores of input")
        scores = nn.functional.linear(x, w, b)
        return _hs_ops.hs_log_prob(scores, children, offsets, nodes, codes, self._tree.max_depth)

"""Hierarchical softmax as PyTorch operators (``torch.ops.pyneg.hs_*``).

Every op is a pure function of its tensors: the tree enters as its flat arrays
(the layout of :class:`pyneg.HuffmanTree`: ``path_offsets`` int64 (V + 1),
``path_nodes`` int32, ``path_codes`` uint8, ``children`` int32 (2 (V - 1))) and
``max_depth``, the longest path, as an int (it fixes the width of ``dz``, so
shapes follow from the arguments' shapes alone).

- ``hs_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes,
  max_depth, sparse) -> (loss (B,), dz)``: per-row NLL. ``dz`` is what the
  backward pass reads: on CPU the (B, max_depth) per-step dNLL/dscore the C++
  forward kernel leaves (0 after each path); elsewhere (B, 0), the backward
  recomputing the scores. ``sparse`` only chooses the weight's gradient layout.
- ``hs_nll_backward(...) -> (grad_input, grad_weight, grad_bias)``: dense.
- ``hs_nll_backward_sparse(...) -> (grad_input, touched, weight_rows,
  bias_rows, count)``: the gradient rows of the distinct nodes on the batch's
  paths (``touched``, ascending) in ``cap = min(B max_depth, V - 1)`` slots;
  ``count`` (0-dim) of them are used, the others hold node 0 with -0.0, which
  changes no sum, so the padded form is a valid (uncoalesced) sparse gradient.
- ``hs_log_prob(scores, children, path_offsets, path_nodes, path_codes,
  max_depth) -> (B, V)`` from the inner-node scores (B, V - 1), and
  ``hs_log_prob_backward``.

Implementations: CPU runs pyneg's C++ kernels (through ``.numpy()`` views, the
GIL released, on torch's intra-op threads, bit-identical for every thread
count); CUDA runs pyneg._cuda's kernels for the dense loss when pyneg was built
with CUDA, the differentiable PyTorch reference (pyneg._hsoftmax_reference)
otherwise; every other device runs the reference. Checks that need values
(targets in [0, V), paths inside the arrays) happen inside the implementations,
with the wording of pyneg's other checks; shapes and dtypes are checked by the
fake implementations too.

Second derivatives: under ``create_graph=True`` the registered backward
formulas differentiate the reference instead of calling the backward ops, so
gradients of gradients are exact (dense, also for ``sparse=True``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch._subclasses.fake_tensor import is_fake

from pyneg import _core
from pyneg import cuda as pyneg_cuda
from pyneg._hsoftmax_reference import (
    batch_paths,
    check_flat_batch,
    check_tree_values,
    flat_log_prob,
    flat_log_prob_grad,
    flat_nll,
    flat_nll_grads,
)
from pyneg._ops import _checks
from pyneg._validation import allocate, check_nbytes

__all__ = [
    "hs_nll",
    "hs_nll_backward",
    "hs_nll_backward_sparse",
    "hs_log_prob",
    "hs_log_prob_backward",
]

_FLOATS = (torch.float32, torch.float64)
_TREE_DTYPES = (("path_offsets", torch.int64), ("path_nodes", torch.int32), ("path_codes", torch.uint8))


# ------------------------------------------------------------------ checks
def _check_tree(path_offsets: torch.Tensor, path_nodes: torch.Tensor, path_codes: torch.Tensor, max_depth: int) -> int:
    """Static checks of the flat arrays (shapes, dtypes); returns V."""
    for (name, dtype), t in zip(_TREE_DTYPES, (path_offsets, path_nodes, path_codes)):
        if t.dtype != dtype or t.dim() != 1:
            raise TypeError(f"{name} must be a 1-D {dtype} tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if path_codes.shape != path_nodes.shape:
        raise ValueError(
            f"path_codes must have path_nodes' shape {tuple(path_nodes.shape)}, got {tuple(path_codes.shape)}"
        )
    if path_offsets.shape[0] < 2:
        raise ValueError("path_offsets must have V + 1 >= 2 entries")
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    v = path_offsets.shape[0] - 1
    if max_depth > max(v - 1, 0):  # no root-to-leaf path of a binary tree over V classes is longer
        raise ValueError(
            f"max_depth={max_depth} exceeds V - 1 = {v - 1}, the longest path a tree of V = {v} classes has "
            f"(V + 1 = {v + 1} path_offsets)"
        )
    for name, t in zip(("path_offsets", "path_nodes", "path_codes"), (path_offsets, path_nodes, path_codes)):
        if t.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    return v


def _check_nll(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
) -> None:
    v = _check_tree(path_offsets, path_nodes, path_codes, max_depth)
    if input.dtype not in _FLOATS or weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError(
            f"input, weight and bias must share a dtype, float32 or float64; got {input.dtype}, {weight.dtype}"
        )
    if input.dim() != 2 or tuple(weight.shape) != (v - 1, input.shape[1]):
        raise ValueError(
            f"input must be (B, d) and weight (V - 1, d) = ({v - 1}, d), "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (v - 1,):
        raise ValueError(f"bias must be ({v - 1},), got {tuple(bias.shape)}")
    if target.dtype != torch.int64 or tuple(target.shape) != (input.shape[0],):
        raise ValueError(
            f"target must be an int64 ({input.shape[0]},) tensor, got {target.dtype} {tuple(target.shape)}"
        )
    _checks.same_device(
        "hs_nll",
        [
            ("input", input),
            ("weight", weight),
            ("bias", bias),
            ("target", target),
            ("path_offsets", path_offsets),
            ("path_nodes", path_nodes),
            ("path_codes", path_codes),
        ],
    )
    check_nbytes((input.shape[0], max_depth), input.element_size(), "hs_nll's (B, max_depth) per-step derivatives")


def _dz_width(device: torch.device, max_depth: int) -> int:
    # Only the CPU kernels leave per-step derivatives; other backward passes recompute the scores.
    return max_depth if device.type == "cpu" else 0


def _threads() -> int:
    return torch.get_num_threads()


def _np(t: torch.Tensor) -> Any:
    # A NumPy view for the bindings (which copy what is not C-contiguous into their input arrays).
    return (t.detach() if t.requires_grad else t).numpy()


def _np_opt(t: Optional[torch.Tensor]) -> Any:
    return None if t is None else _np(t)


# ------------------------------------------------------------- hs_nll forward
def _nll_reference(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth):
    with torch.no_grad():
        loss = flat_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    return loss, input.new_zeros(input.shape[0], _dz_width(input.device, max_depth))


def _hs_nll_reference(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
    sparse: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row hierarchical-softmax NLL (B,) and ``dz``, the state its backward reads.

    This body is the implementation for devices without pyneg kernels (the
    PyTorch reference); CPU and CUDA register their own below.
    """
    _check_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    return _nll_reference(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)


def _hs_nll_cpu(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth, sparse=False):
    _check_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    loss = torch.empty(input.shape[0], dtype=input.dtype)
    dz = torch.empty(input.shape[0], max_depth, dtype=input.dtype)
    # The binding copies the targets and the batch's paths, and checks the copies, before any kernel reads them.
    _core.hs_forward(
        _np(input),
        _np(target),
        _np(weight),
        _np_opt(bias),
        _np(path_offsets),
        _np(path_nodes),
        _np(path_codes),
        loss.numpy(),
        dz.numpy(),
        _threads(),
    )
    return loss, dz


def _cuda_kernels(input: torch.Tensor, weight: torch.Tensor) -> bool:
    # pyneg._cuda refuses empty arrays (null pointers): those cases take the reference.
    return pyneg_cuda.cuda_available() and input.shape[0] > 0 and weight.shape[0] > 0


def _cuda_args(*tensors: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    return tuple(None if t is None else t.detach().contiguous() for t in tensors)


def _hs_nll_cuda(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth, sparse=False):
    _check_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    if not _cuda_kernels(input, weight):
        return _nll_reference(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    # One synchronisation: the CPU's error wording for a bad target (the kernels themselves
    # never index out of bounds, and give NaN for a path they cannot read).
    check_flat_batch(target, path_offsets, path_nodes, max_depth, weight.shape[0], path_codes)
    x, w, b, t, off, nodes, codes = _cuda_args(input, weight, bias, target, path_offsets, path_nodes, path_codes)
    loss = pyneg_cuda.hs_forward(x, w, t, off, nodes, codes, bias=b)
    return loss, input.new_zeros(input.shape[0], 0)


def _hs_nll_fake(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth, sparse=False):
    _check_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    return input.new_empty(input.shape[0]), input.new_empty(input.shape[0], _dz_width(input.device, max_depth))


# ------------------------------------------------------------ hs_nll backward
def _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth):
    _check_nll(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    if tuple(grad_loss.shape) != (input.shape[0],) or not grad_loss.is_floating_point():
        raise ValueError(f"grad_loss must be a floating-point ({input.shape[0]},) tensor, got {tuple(grad_loss.shape)}")
    width = _dz_width(input.device, max_depth)
    if tuple(dz.shape) != (input.shape[0], width) or dz.dtype != input.dtype:
        raise ValueError(f"dz must be hs_nll's ({input.shape[0]}, {width}) {input.dtype} output, got {tuple(dz.shape)}")
    # Beside input: a meta grad_loss or dz among CPU tensors would otherwise send the call to
    # the fake kernel, which returns uninitialised memory.
    _checks.same_device("hs_nll_backward", [("input", input), ("grad_loss", grad_loss), ("dz", dz)])


def _cpu_backward(
    grad_loss, input, weight, target, dz, path_offsets, path_nodes, path_codes, gi, gw, gb, touched, pad=True
):
    return _core.hs_backward(
        _np(input),
        _np(target),
        _np(weight),
        _np(path_offsets),
        _np(path_nodes),
        _np(path_codes),
        _np(dz),
        _np(grad_loss.to(input.dtype)),
        gi.numpy(),
        None if gw is None else gw.numpy(),
        None if gb is None else gb.numpy(),
        None if touched is None else touched.numpy(),
        _threads(),
        pad,
    )


def _no_bias(input: torch.Tensor) -> torch.Tensor:
    return input.new_empty(0)


def _hs_nll_backward_reference(
    grad_loss: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    dz: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense gradients of ``sum(grad_loss * hs_nll(...)[0])``: (grad_input, grad_weight, grad_bias).

    ``grad_bias`` is empty (0,) without a bias. This body is the reference
    (devices without pyneg kernels).
    """
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    gi, gw, gb = flat_nll_grads(grad_loss, input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    return gi, gw, _no_bias(input) if gb is None else gb


def _hs_nll_backward_cpu(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth):
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    gi = torch.empty_like(input, memory_format=torch.contiguous_format)
    # Rows off the batch's paths stay zero; torch.zeros maps zero pages lazily.
    gw = torch.zeros(weight.shape, dtype=weight.dtype)
    gb = None if bias is None else torch.zeros(bias.shape, dtype=bias.dtype)
    _cpu_backward(grad_loss, input, weight, target, dz, path_offsets, path_nodes, path_codes, gi, gw, gb, None)
    return gi, gw, _no_bias(input) if gb is None else gb


def _hs_nll_backward_cuda(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth):
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    if not _cuda_kernels(input, weight):
        gi, gw, gb = flat_nll_grads(
            grad_loss, input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth
        )
    else:
        check_flat_batch(target, path_offsets, path_nodes, max_depth, weight.shape[0], path_codes)
        x, w, b, t, off, nodes, codes = _cuda_args(input, weight, bias, target, path_offsets, path_nodes, path_codes)
        gi, gw, gb = pyneg_cuda.hs_backward(grad_loss, x, w, t, off, nodes, codes, bias=b)
    return gi, gw, _no_bias(input) if gb is None else gb


def _hs_nll_backward_fake(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth):
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    gb = _no_bias(input) if bias is None else torch.empty_like(bias)
    return torch.empty_like(input), torch.empty_like(weight), gb


# ----------------------------------------------------- hs_nll sparse backward
def _sparse_capacity(input: torch.Tensor, weight: torch.Tensor, max_depth: int) -> int:
    """Slots for the distinct nodes: a batch touches at most B * max_depth of the V - 1."""
    return min(input.shape[0] * max_depth, weight.shape[0])


def _hs_nll_backward_sparse_reference(
    grad_loss: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    dz: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients with the node rows compact: (grad_input, touched, weight_rows, bias_rows, count).

    ``touched`` (cap,) int64 holds the distinct nodes on the batch's paths in
    ascending order in its first ``count`` slots, node 0 after them; row ``u`` of
    ``weight_rows`` (cap, d) and ``bias_rows`` (cap,) (empty (0,) without a bias)
    is node ``touched[u]``'s gradient, -0.0 in the unused slots. This body is the
    reference (devices without pyneg kernels; CUDA's kernels write dense rows).
    """
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    gi, gw, gb = flat_nll_grads(grad_loss, input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth)
    cap = _sparse_capacity(input, weight, max_depth)
    paths = batch_paths(target, path_offsets, path_nodes, path_codes, max_depth, input.dtype)
    used = paths.nodes[paths.signs != 0].unique()  # sorted
    n = used.numel()
    touched = torch.zeros(cap, dtype=torch.int64, device=input.device)
    touched[:n] = used
    rows = torch.full((cap, input.shape[1]), -0.0, dtype=input.dtype, device=input.device)
    rows[:n] = gw[used]
    if gb is None:
        bias_rows = _no_bias(input)
    else:
        bias_rows = torch.full((cap,), -0.0, dtype=input.dtype, device=input.device)
        bias_rows[:n] = gb[used]
    return gi, touched, rows, bias_rows, torch.tensor(n, dtype=torch.int64, device=input.device)


def _hs_nll_backward_sparse_cpu(
    grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth, *, _pad=True
):
    # _pad=False (eager backward passes only, which keep the first `count` slots) skips writing the unused slots.
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    cap = _sparse_capacity(input, weight, max_depth)
    gi = torch.empty_like(input, memory_format=torch.contiguous_format)
    touched = torch.empty(cap, dtype=torch.int64)
    rows = torch.empty(cap, input.shape[1], dtype=input.dtype)
    bias_rows = _no_bias(input) if bias is None else torch.empty(cap, dtype=input.dtype)
    used = _cpu_backward(
        grad_loss,
        input,
        weight,
        target,
        dz,
        path_offsets,
        path_nodes,
        path_codes,
        gi,
        rows,
        None if bias is None else bias_rows,
        touched,
        _pad,
    )
    return gi, touched, rows, bias_rows, torch.tensor(used, dtype=torch.int64)


def _hs_nll_backward_sparse_fake(
    grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth
):
    _check_backward(grad_loss, input, weight, bias, target, dz, path_offsets, path_nodes, path_codes, max_depth)
    cap = _sparse_capacity(input, weight, max_depth)
    bias_rows = _no_bias(input) if bias is None else input.new_empty(cap)
    return (
        torch.empty_like(input),
        input.new_empty(cap, dtype=torch.int64),
        input.new_empty(cap, input.shape[1]),
        bias_rows,
        input.new_empty((), dtype=torch.int64),
    )


# ------------------------------------------------------------ hs_nll autograd
def _setup_nll(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[torch.Tensor, torch.Tensor]) -> None:
    input, weight, bias, target, offsets, nodes, codes, max_depth, sparse = inputs
    # target first: it is the first int64 tensor a caller reaching into grad_fn finds (and the
    # backward kernels check it again, so even writing it there cannot send them out of bounds).
    ctx.save_for_backward(target, input, weight, bias, output[1], offsets, nodes, codes)
    ctx.max_depth = max_depth
    ctx.sparse = sparse
    ctx.mark_non_differentiable(output[1])


def _sparse(indices: torch.Tensor, values: torch.Tensor, size: Tuple[int, ...], coalesced: bool) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, size, is_coalesced=coalesced, check_invariants=False)


def _backward_nll(ctx: Any, grad_loss: torch.Tensor, grad_dz: Optional[torch.Tensor]):
    target, input, weight, bias, dz, offsets, nodes, codes = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    tail = (None,) * 6
    if torch.is_grad_enabled():  # create_graph=True: differentiate the differentiable reference
        wrt = [t for t, n in zip((input, weight, bias), (need_input, need_weight, need_bias)) if n and t is not None]
        with torch.enable_grad():
            nll = flat_nll(input, weight, bias, target, offsets, nodes, codes, ctx.max_depth)
        got = iter(torch.autograd.grad(nll, wrt, grad_loss, create_graph=True, allow_unused=True) if wrt else ())
        grads = tuple(
            next(got) if n and t is not None else None
            for t, n in zip((input, weight, bias), (need_input, need_weight, need_bias))
        )
        return grads + tail
    args = (grad_loss, input, weight, bias, target, dz, offsets, nodes, codes, ctx.max_depth)
    # Eager CPU backward passes call the kernels' implementations directly: the same function the
    # op dispatches to, without the dispatcher's Python overhead (a traced graph records the op).
    direct = input.device.type == "cpu" and not (torch.compiler.is_compiling() or is_fake(dz))
    if not ctx.sparse:
        gi, gw, gb = (_hs_nll_backward_cpu if direct else hs_nll_backward)(*args)
        return (
            gi if need_input else None,
            gw if need_weight else None,
            gb if need_bias and bias is not None else None,
        ) + tail
    if direct:
        gi, touched, rows, bias_rows, count = _hs_nll_backward_sparse_cpu(*args, _pad=False)
    else:
        gi, touched, rows, bias_rows, count = hs_nll_backward_sparse(*args)
    if not direct and (torch.compiler.is_compiling() or is_fake(count)):
        # No data-dependent shapes in a graph: keep every slot (the unused ones add -0.0 to node 0).
        idx, coalesced = touched.unsqueeze(0), False
    else:
        used = int(count)
        idx, rows, coalesced = touched[:used].unsqueeze(0), rows[:used], True
        bias_rows = bias_rows[:used] if bias is not None else bias_rows
    gw = _sparse(idx, rows, tuple(weight.shape), coalesced) if need_weight else None
    gb = _sparse(idx, bias_rows, tuple(bias.shape), coalesced) if need_bias and bias is not None else None
    return (gi if need_input else None, gw, gb) + tail


# --------------------------------------------------------------- hs_log_prob
def _check_log_prob(scores, children, path_offsets, path_nodes, path_codes, max_depth) -> int:
    v = _check_tree(path_offsets, path_nodes, path_codes, max_depth)
    if scores.dtype not in _FLOATS or scores.dim() != 2 or scores.shape[1] != v - 1:
        raise ValueError(
            f"scores must be a float32 or float64 (B, V - 1) = (B, {v - 1}) tensor, "
            f"got {scores.dtype} {tuple(scores.shape)}"
        )
    if children.dtype != torch.int32 or tuple(children.shape) != (2 * (v - 1),):
        raise ValueError(
            f"children must be an int32 ({2 * (v - 1)},) tensor, got {children.dtype} {tuple(children.shape)}"
        )
    _checks.same_device(
        "hs_log_prob",
        [
            ("scores", scores),
            ("children", children),
            ("path_offsets", path_offsets),
            ("path_nodes", path_nodes),
            ("path_codes", path_codes),
        ],
    )
    check_nbytes((scores.shape[0], v), scores.element_size(), "the (B, V) log-probabilities (scores rows x classes)")
    return v


def _check_log_prob_backward(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth) -> int:
    """hs_log_prob_backward's arguments: hs_log_prob's, and ``grad_out`` a real (B, V) tensor beside ``scores``."""
    v = _check_log_prob(scores, children, path_offsets, path_nodes, path_codes, max_depth)
    op = "hs_log_prob_backward"
    _checks.check(op, grad_out, "grad_out", dtypes=_FLOATS + (torch.float16, torch.bfloat16))
    _checks.check(op, grad_out, "grad_out", shape=(scores.shape[0], v))
    _checks.same_device(op, [("grad_out", grad_out), ("scores", scores)])
    return v


def _checked_children(children, path_offsets, path_nodes, path_codes, max_depth) -> torch.Tensor:
    """A private copy of ``children``, checked to be the tree of the paths (what the CPU kernels then read)."""
    own = children.detach().clone()
    check_tree_values(own, path_offsets, path_nodes, path_codes, max_depth)
    return own


def _alloc_log_prob(b: int, v: int, dtype: torch.dtype) -> torch.Tensor:
    """The (B, V) output (its size was checked by _check_log_prob)."""
    return allocate(lambda: torch.empty(b, v, dtype=dtype), f"the ({b}, {v}) log-probabilities")


def _hs_log_prob_reference(
    scores: torch.Tensor,
    children: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
) -> torch.Tensor:
    """(B, V) log-probabilities of every class from the inner-node scores (B, V - 1).

    The CPU kernel walks ``children`` top-down once per row; this body (the
    reference, every other device) gathers the padded paths.
    """
    _check_log_prob(scores, children, path_offsets, path_nodes, path_codes, max_depth)
    check_tree_values(children, path_offsets, path_nodes, path_codes, max_depth)
    with torch.no_grad():
        return flat_log_prob(scores, path_offsets, path_nodes, path_codes, max_depth)


def _hs_log_prob_cpu(scores, children, path_offsets, path_nodes, path_codes, max_depth):
    v = _check_log_prob(scores, children, path_offsets, path_nodes, path_codes, max_depth)
    children = _checked_children(children, path_offsets, path_nodes, path_codes, max_depth)
    out = _alloc_log_prob(scores.shape[0], v, scores.dtype)
    _core.hs_log_prob(_np(children), _np(scores), out.numpy(), _threads())
    return out


def _hs_log_prob_fake(scores, children, path_offsets, path_nodes, path_codes, max_depth):
    v = _check_log_prob(scores, children, path_offsets, path_nodes, path_codes, max_depth)
    return scores.new_empty(scores.shape[0], v)


def _hs_log_prob_backward_reference(
    grad_out: torch.Tensor,
    scores: torch.Tensor,
    children: torch.Tensor,
    path_offsets: torch.Tensor,
    path_nodes: torch.Tensor,
    path_codes: torch.Tensor,
    max_depth: int,
) -> torch.Tensor:
    """Gradient of ``sum(grad_out * hs_log_prob(scores, ...))`` with respect to ``scores`` (the reference)."""
    _check_log_prob_backward(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth)
    check_tree_values(children, path_offsets, path_nodes, path_codes, max_depth)
    return flat_log_prob_grad(grad_out, scores, path_offsets, path_nodes, path_codes, max_depth)


def _hs_log_prob_backward_cpu(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth):
    _check_log_prob_backward(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth)
    children = _checked_children(children, path_offsets, path_nodes, path_codes, max_depth)
    grad = torch.empty(scores.shape, dtype=scores.dtype)
    _core.hs_log_prob_backward(_np(children), _np(scores), _np(grad_out.to(scores.dtype)), grad.numpy(), _threads())
    return grad


def _hs_log_prob_backward_fake(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth):
    _check_log_prob_backward(grad_out, scores, children, path_offsets, path_nodes, path_codes, max_depth)
    return torch.empty_like(scores)


def _setup_log_prob(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
    scores, children, offsets, nodes, codes, max_depth = inputs
    ctx.save_for_backward(scores, children, offsets, nodes, codes)
    ctx.max_depth = max_depth


def _backward_log_prob(ctx: Any, grad_out: torch.Tensor):
    scores, children, offsets, nodes, codes = ctx.saved_tensors
    tail = (None,) * 5
    if torch.is_grad_enabled():  # create_graph=True: differentiate the differentiable reference
        with torch.enable_grad():
            lp = flat_log_prob(scores, offsets, nodes, codes, ctx.max_depth)
        (grad,) = torch.autograd.grad(lp, scores, grad_out, create_graph=True)
        return (grad,) + tail
    return (hs_log_prob_backward(grad_out, scores, children, offsets, nodes, codes, ctx.max_depth),) + tail


# -------------------------------------------------------------- registration
# The ops are defined with torch.library.Library rather than torch.library.custom_op: custom_op's
# Python wrappers (argument re-binding, alias checks, its generated autograd.Function) cost about
# 60-80 us per call on a loss that takes ~100 us at B = 256, which the hierarchical softmax's
# small-batch training steps would pay twice per step. The registrations are the same ones
# custom_op makes: a schema, a kernel per device, a fake kernel and an Autograd kernel.
_LIB = torch.library.Library("pyneg", "FRAGMENT")  # kept alive here: the registrations last as long as it

_PATHS = "Tensor path_offsets, Tensor path_nodes, Tensor path_codes, int max_depth"
_BACKWARD_ARGS = f"Tensor grad_loss, Tensor input, Tensor weight, Tensor? bias, Tensor target, Tensor dz, {_PATHS}"


def _register(schema: str, *, reference: Any, cpu: Any, fake: Any, cuda: Any = None, autograd: Any = None) -> Any:
    """Defines ``pyneg::<name>`` with a reference kernel for every device, CPU (and CUDA) kernels,
    a fake kernel and an Autograd kernel (``autograd`` or a refusal to differentiate)."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, reference, "CompositeExplicitAutograd")  # devices without pyneg kernels
    _LIB.impl(name, cpu, "CPU")
    _LIB.impl(name, cuda if cuda is not None else reference, "CUDA")
    torch.library.register_fake(f"pyneg::{name}", fake, lib=_LIB)
    op = getattr(torch.ops.pyneg, name)
    _LIB.impl(name, autograd if autograd is not None else _not_differentiable(op), "Autograd")
    return op


def _below_autograd(op: Any, *args: Any) -> Any:
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _not_differentiable(op: Any) -> Any:
    def kernel(*args: Any) -> Any:
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            raise RuntimeError(
                f"{op._qualified_op_name} is not differentiable: second derivatives of the hierarchical "
                "softmax come from backward(create_graph=True) through pyneg::hs_nll / pyneg::hs_log_prob"
            )
        return _below_autograd(op, *args)

    return kernel


class _HSNll(torch.autograd.Function):
    """hs_nll's autograd: the forward op below autograd, :func:`_backward_nll` backward."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Any:  # type: ignore[override]
        out = _below_autograd(hs_nll, *args)
        _setup_nll(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # type: ignore[override]
        return _backward_nll(ctx, *grads)


class _HSLogProb(torch.autograd.Function):
    """hs_log_prob's autograd: the op below autograd, :func:`_backward_log_prob` backward."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Any:  # type: ignore[override]
        out = _below_autograd(hs_log_prob, *args)
        _setup_log_prob(ctx, args, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        return _backward_log_prob(ctx, grad)


def _needs_graph(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _hs_nll_autograd(input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth, sparse=False):
    args = (input, weight, bias, target, path_offsets, path_nodes, path_codes, max_depth, sparse)
    if _needs_graph(input, weight, bias):
        return _HSNll.apply(*args)
    return _below_autograd(hs_nll, *args)


def _hs_log_prob_autograd(scores, children, path_offsets, path_nodes, path_codes, max_depth):
    args = (scores, children, path_offsets, path_nodes, path_codes, max_depth)
    if _needs_graph(scores):
        return _HSLogProb.apply(*args)
    return _below_autograd(hs_log_prob, *args)


hs_nll = _register(
    "hs_nll(Tensor input, Tensor weight, Tensor? bias, Tensor target, "
    f"{_PATHS}, bool sparse=False) -> (Tensor, Tensor)",
    reference=_hs_nll_reference,
    cpu=_hs_nll_cpu,
    cuda=_hs_nll_cuda,
    fake=_hs_nll_fake,
    autograd=_hs_nll_autograd,
)
hs_nll_backward = _register(
    f"hs_nll_backward({_BACKWARD_ARGS}) -> (Tensor, Tensor, Tensor)",
    reference=_hs_nll_backward_reference,
    cpu=_hs_nll_backward_cpu,
    cuda=_hs_nll_backward_cuda,
    fake=_hs_nll_backward_fake,
)
hs_nll_backward_sparse = _register(
    f"hs_nll_backward_sparse({_BACKWARD_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    reference=_hs_nll_backward_sparse_reference,
    cpu=_hs_nll_backward_sparse_cpu,
    fake=_hs_nll_backward_sparse_fake,
)
hs_log_prob = _register(
    f"hs_log_prob(Tensor scores, Tensor children, {_PATHS}) -> Tensor",
    reference=_hs_log_prob_reference,
    cpu=_hs_log_prob_cpu,
    fake=_hs_log_prob_fake,
    autograd=_hs_log_prob_autograd,
)
hs_log_prob_backward = _register(
    f"hs_log_prob_backward(Tensor grad_out, Tensor scores, Tensor children, {_PATHS}) -> Tensor",
    reference=_hs_log_prob_backward_reference,
    cpu=_hs_log_prob_backward_cpu,
    fake=_hs_log_prob_backward_fake,
)

_NLL_NAMES = ("input", "weight", "bias", "target", "path_offsets", "path_nodes", "path_codes")
_BACKWARD_NAMES = ("grad_loss", "input", "weight", "bias", "target", "dz", "path_offsets", "path_nodes", "path_codes")
_LOG_PROB_NAMES = ("scores", "children", "path_offsets", "path_nodes", "path_codes")
_checks.refuse_sparse("hs_nll", _NLL_NAMES)
_checks.refuse_sparse("hs_nll_backward", _BACKWARD_NAMES)
_checks.refuse_sparse("hs_nll_backward_sparse", _BACKWARD_NAMES)
_checks.refuse_sparse("hs_log_prob", _LOG_PROB_NAMES)
_checks.refuse_sparse("hs_log_prob_backward", ("grad_out",) + _LOG_PROB_NAMES)

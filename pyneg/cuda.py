"""pyneg's CUDA kernels (the optional extension module ``pyneg._cuda``).

``pyneg._cuda`` is built when ``nvcc`` is found at install time (see README,
"CUDA"). It takes integer device pointers and the current CUDA stream, so it
works with any torch build and never links libtorch; this module turns torch
tensors into those arguments. Output tensors are allocated by torch on the
caller's device, and kernels run on ``torch.cuda.current_stream()``.

Alias draws on the GPU are bit-identical to the CPU's for the same seed: both
run the same per-draw functions (``csrc/cpu/alias_draw.h``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from pyneg import _core

try:
    from pyneg import _cuda
except ImportError:  # built without nvcc: the CPU kernels and torch fallbacks remain
    _cuda = None  # type: ignore[assignment]

__all__ = ["cuda_available", "is_built", "hs_forward", "hs_backward"]

_NO_EXCLUDE = np.full((1, 1), -1, dtype=np.int64)
# Scratch for the hash sets of unique rows on the GPU, at most.
_UNIQUE_SCRATCH_BYTES = 64 << 20


def is_built() -> bool:
    """Whether this installation of pyneg includes the CUDA module ``pyneg._cuda``."""
    return _cuda is not None


def cuda_available() -> bool:
    """True when ``pyneg._cuda`` was built and torch can use a CUDA device.

    Both are needed: pyneg's kernels take torch's device pointers and stream.
    """
    return _cuda is not None and torch.cuda.is_available() and _cuda.device_count() > 0


def _require() -> None:
    if _cuda is None:
        raise RuntimeError("pyneg was built without CUDA (pyneg._cuda is missing); reinstall with nvcc on PATH")
    if not cuda_available():
        raise RuntimeError("pyneg._cuda is built but no CUDA device is usable by torch")


def normalize_device(device: torch.device) -> torch.device:
    """``device`` with its index filled in (``cuda`` means the current device)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _stream(device: torch.device) -> int:
    return int(torch.cuda.current_stream(device).cuda_stream)


def _upload(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array (int64 or uint64, viewed as int64) copied to ``device``; never empty,
    so its data pointer is never null (the kernels only read what offsets point at)."""
    if arr.size == 0:
        arr = np.zeros(1, dtype=arr.dtype)
    return torch.from_numpy(np.ascontiguousarray(arr).view(np.int64)).to(device)


# ------------------------------------------------------------------ sampling
def draw_into(
    out: torch.Tensor,
    entries: torch.Tensor,
    mass: Optional[torch.Tensor],
    num_positive: int,
    exclude: Optional[torch.Tensor],
    seed: int,
    offset: int,
    k: int,
    unique: bool,
    want_tries: bool,
) -> Optional[torch.Tensor]:
    """Fills the contiguous int64 CUDA tensor ``out`` (rows x k draws) with pyneg's kernels.

    The CUDA implementation of the ``pyneg::alias_*`` ops: the table is the
    sampler's ``entries`` and ``mass`` tensors on ``out``'s device, so nothing of
    size V crosses to the host. The same draws as the CPU kernels give for
    ``(seed, offset)``. Exclusion lists ((L, P) int64, any device) are checked
    and prepared on the host (by the CPU code, from the masses of the listed
    ids, gathered on the device) and uploaded; the exclusion kernels' exact-CDF
    fallback reads the running masses, a ``cumsum`` of ``mass`` on the device.
    Rows drawn without replacement that exhaust their candidate budget are
    finished by the CPU kernel (on a host copy of the table, made only then),
    which needs one synchronisation; returns the per-row tries (CPU) when
    ``want_tries``.
    """
    _require()
    device = normalize_device(out.device)
    idx, stream = device.index, _stream(device)
    v = entries.numel()
    n = out.numel()
    entries = entries.to(device).contiguous()
    if exclude is None and not unique:
        _cuda.alias_sample(
            device=idx,
            stream=stream,
            entries=entries.data_ptr(),
            num_classes=v,
            seed=seed,
            offset=offset,
            out=out.data_ptr(),
            n=n,
        )
        return None
    assert mass is not None
    mass = mass.to(device).contiguous()
    rows = n // k
    if exclude is None:
        ex = _NO_EXCLUDE
        id_mass = np.zeros_like(ex)
    else:
        ex = exclude.detach().to("cpu", torch.int64).contiguous().numpy().copy()  # owned, then checked
        _check_exclude_ids(ex, v)
        # (clamp, not clamp_: the tensor shares ex's memory, whose -1 padding must stay)
        gathered = mass.index_select(0, torch.from_numpy(ex.reshape(-1)).clamp(0, v - 1).to(device))
        id_mass = gathered.cpu().numpy().reshape(ex.shape)
    offsets, ids, cum, allowed, rows_per_list, longest = _core.alias_prepare_exclude(
        v, num_positive, ex, id_mass, rows, k if unique else 0
    )
    d_offsets, d_ids, d_cum, d_allowed = (_upload(a, device) for a in (offsets, ids, cum, allowed))
    common = dict(
        device=idx,
        stream=stream,
        num_classes=v,
        list_offsets=d_offsets.data_ptr(),
        list_ids=d_ids.data_ptr(),
        list_cum=d_cum.data_ptr(),
        allowed_mass=d_allowed.data_ptr(),
        rows_per_list=rows_per_list,
        seed=seed,
        offset=offset,
        k=k,
        out=out.data_ptr(),
    )
    if not unique:
        table_cum = torch.cumsum(mass, 0)  # masses sum to V * 2**32 < 2**63: no overflow
        _cuda.alias_sample_excluding(entries=entries.data_ptr(), table_cum=table_cum.data_ptr(), rows=rows, **common)
        return None
    capacity = _cuda.id_set_capacity(k + longest)
    # Each row's hash set lives in scratch memory: bound it by running the rows
    # in chunks (launches on one stream run in order, so chunks reuse it).
    chunk = max(1, min(rows, _UNIQUE_SCRATCH_BYTES // (8 * capacity)))
    slots = torch.empty(chunk * capacity, dtype=torch.int64, device=device)
    tries = torch.empty(rows, dtype=torch.int64, device=device)
    for first in range(0, rows, chunk):
        _cuda.alias_sample_unique(
            entries=entries.data_ptr(),
            slots=slots.data_ptr(),
            capacity=capacity,
            tries=tries.data_ptr(),
            first_row=first,
            rows=min(chunk, rows - first),
            **common,
        )
    host_tries = tries.cpu()
    grid = out.view(rows, k)
    leftover = (host_tries < 0).nonzero().flatten().tolist()
    if leftover:
        # The exponential race reads all V classes: the CPU kernel finishes the
        # row (the same code, so the same ids as a CPU call would give).
        host_entries, host_mass = entries.cpu().numpy(), mass.cpu().numpy()
    for row in leftover:
        lst = ex[row // rows_per_list : row // rows_per_list + 1] if exclude is not None else _NO_EXCLUDE
        buf = np.empty((1, k), dtype=np.int64)
        tr = np.empty(1, dtype=np.int64)
        _core.alias_draw_unique(
            host_entries, host_mass, num_positive, seed, offset + row * k, lst, k, buf, tr if want_tries else None, 1
        )
        grid[row].copy_(torch.from_numpy(buf[0]))
        host_tries[row] = int(tr[0]) if want_tries else -1
    return host_tries if want_tries else None


def _check_exclude_ids(ex: np.ndarray, num_classes: int) -> None:
    """The eager check's wording (pyneg._validation.as_index_tensor): ids in [-1, V)."""
    if ex.size:
        lo, hi = int(ex.min()), int(ex.max())
        if lo < -1 or hi >= num_classes:
            bad = lo if lo < -1 else hi
            raise ValueError(f"exclude holds id {bad} outside [0, {num_classes}) (use -1 for padding)")


# ----------------------------------------------------- hierarchical softmax
_FLOATS = {torch.float32: "float32", torch.float64: "float64"}


def _check_hs(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
) -> Tuple[str, torch.Tensor]:
    """Checks the arguments; returns the dtype name and a private copy of ``target``.

    The kernels index by target: they get the copy that was range-checked, so a
    later write to the caller's tensor (another thread, another stream) cannot
    send them out of bounds.
    """
    _require()
    for name, t in (
        ("input", input),
        ("weight", weight),
        ("target", target),
        ("offsets", offsets),
        ("nodes", nodes),
        ("codes", codes),
    ) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != input.device or t.device.type != "cuda":
            raise ValueError(f"{name} must be on input's CUDA device, got {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if target.dtype == torch.int64:
        target = target.detach().clone()
    if input.dtype not in _FLOATS:
        raise TypeError(f"input must be float32 or float64, got {input.dtype}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError("weight (and bias) must have input's dtype")
    for name, t, dt in (
        ("target", target, torch.int64),
        ("offsets", offsets, torch.int64),
        ("nodes", nodes, torch.int32),
        ("codes", codes, torch.uint8),
    ):
        if t.dtype != dt:
            raise TypeError(f"{name} must be {dt}, got {t.dtype}")
    if input.dim() != 2 or weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise ValueError(f"input (B, d) and weight (V-1, d) disagree: {tuple(input.shape)}, {tuple(weight.shape)}")
    if offsets.dim() != 1 or offsets.numel() != weight.shape[0] + 2:
        raise ValueError(f"offsets must have V + 1 = {weight.shape[0] + 2} entries, got {tuple(offsets.shape)}")
    if nodes.dim() != 1 or codes.shape != nodes.shape:
        raise ValueError(
            f"nodes and codes must be 1-D of one length, got {tuple(nodes.shape)} and {tuple(codes.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if target.dim() != 1 or target.numel() != input.shape[0]:
        raise ValueError(f"target must have shape ({input.shape[0]},), got {tuple(target.shape)}")
    if target.numel():
        lo, hi = torch.aminmax(target)
        if int(lo) < 0 or int(hi) >= offsets.numel() - 1:  # one synchronisation
            raise ValueError(f"target holds ids outside [0, {offsets.numel() - 1})")
    return _FLOATS[input.dtype], target


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _hs_pointers(
    dtype: str,
    device: torch.device,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
) -> Dict[str, Any]:
    """The arguments hs_forward and hs_backward of pyneg._cuda share (by name)."""
    return dict(
        dtype=dtype,
        device=device.index,
        stream=_stream(device),
        input=input.data_ptr(),
        weight=weight.data_ptr(),
        bias=_ptr(bias),
        target=target.data_ptr(),
        offsets=offsets.data_ptr(),
        nodes=nodes.data_ptr(),
        codes=codes.data_ptr(),
        batch=input.shape[0],
        dim=input.shape[1],
        # The kernels bounds-check offsets and nodes against these (NaN for a bad path).
        num_classes=offsets.numel() - 1,
        num_inner=weight.shape[0],
        num_steps=nodes.numel(),
    )


def hs_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-example hierarchical-softmax NLL (B,) on the GPU.

    Class ``c``'s path is ``nodes[offsets[c]:offsets[c+1]]`` (int32 rows of
    ``weight``, root first) with bits ``codes`` (uint8); with sign
    ``s = 1 - 2 code``, ``nll[b] = -sum_j log sigmoid(s_j (weight[n_j] . input[b] + bias[n_j]))``.
    """
    dtype, target = _check_hs(input, weight, bias, target, offsets, nodes, codes)
    device = normalize_device(input.device)
    nll = torch.empty(input.shape[0], dtype=input.dtype, device=device)
    _cuda.hs_forward(
        nll=nll.data_ptr(), **_hs_pointers(dtype, device, input, weight, bias, target, offsets, nodes, codes)
    )
    return nll


def hs_backward(
    grad_nll: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    offsets: torch.Tensor,
    nodes: torch.Tensor,
    codes: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    grad_weight: Optional[torch.Tensor] = None,
    grad_bias: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Gradients of ``hs_forward`` given ``grad_nll`` (B,).

    Returns ``(grad_input, grad_weight, grad_bias)``; gradients are added into
    ``grad_weight`` / ``grad_bias`` when given (zeros otherwise), with atomics
    since the root lies on every path. ``grad_bias`` is None without ``bias``.
    """
    dtype, target = _check_hs(input, weight, bias, target, offsets, nodes, codes)
    device = normalize_device(input.device)
    grad_nll = grad_nll.to(device=device, dtype=input.dtype).contiguous()
    if grad_nll.shape != (input.shape[0],):
        raise ValueError(f"grad_nll must have shape ({input.shape[0]},), got {tuple(grad_nll.shape)}")
    if grad_weight is None:
        grad_weight = torch.zeros_like(weight)
    elif (
        grad_weight.shape != weight.shape
        or grad_weight.dtype != weight.dtype
        or not grad_weight.is_contiguous()
        or grad_weight.device != weight.device
    ):
        raise ValueError("grad_weight must be a contiguous tensor like weight")
    if bias is not None:
        if grad_bias is None:
            grad_bias = torch.zeros_like(bias)
        elif (
            grad_bias.shape != bias.shape
            or grad_bias.dtype != bias.dtype
            or not grad_bias.is_contiguous()
            or grad_bias.device != bias.device
        ):
            raise ValueError("grad_bias must be a contiguous tensor like bias")
    else:
        grad_bias = None
    grad_input = torch.empty_like(input)
    _cuda.hs_backward(
        grad_nll=grad_nll.data_ptr(),
        grad_input=grad_input.data_ptr(),
        grad_weight=grad_weight.data_ptr(),
        grad_bias=_ptr(grad_bias),
        **_hs_pointers(dtype, device, input, weight, bias, target, offsets, nodes, codes),
    )
    return grad_input, grad_weight, grad_bias

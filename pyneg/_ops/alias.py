"""Alias-table draws as PyTorch operators (``torch.ops.pyneg.alias_*``).

Every op is a pure function of its tensors: the table comes as the two int64
tensors a sampler holds (``entries``: packed ``(alias << 32) | threshold``
words; ``mass``: integer class masses summing to ``V * 2**32``), the seed and
the offset of the first draw as 0-dim int64 tensors (their 64 bits read as
unsigned), so a new seed is new data, never a recompilation. Each op has one
implementation per device under one name: the CPU runs pyneg's C++ kernels on
the tensors' memory (``pyneg._core.alias_draw*``); CUDA runs pyneg's CUDA
kernels when ``pyneg._cuda`` is built (bit-identical to the CPU), and
otherwise torch ops (plain draws) or the CPU kernels on a host copy
(exclusions, unique rows). Fake implementations give the result's shape, so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace through.

Checks that need the data (exclusion ids in range, rows that leave nothing to
draw, ``num_tries`` values, ``ids`` of ``log_prob``) run inside the ops and raise
the ValueError of pyneg's eager checks; shapes, dtypes and every other static
argument are checked by the callers (pyneg/samplers.py) before an op runs.

Ops:
    ``alias_sample(entries, seed, offset, size)``: independent draws of shape ``size``.
    ``alias_sample_excluding(entries, mass, num_positive, exclude, seed, offset, size, k)``:
        rows of ``k`` draws avoiding their exclusion list (``exclude`` (L, P),
        padded with -1; list ``l`` serves rows ``[l * R / L, (l + 1) * R / L)``).
    ``alias_sample_unique(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries)``:
        rows of ``k`` distinct ids, and each row's ``num_tries`` (shape (R,), or (0,)
        when ``with_tries`` is False).
    ``alias_log_prob(log_probs, ids)``: ``log_probs[ids]`` with ids checked in range.
    ``alias_check_tries(num_tries)``: a float64 copy of ``num_tries``, checked.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyneg import _core, cuda

__all__ = [
    "alias_sample",
    "alias_sample_excluding",
    "alias_sample_unique",
    "alias_log_prob",
    "alias_check_tries",
    "allocate",
    "check_tries_impl",
    "direct_call_ok",
    "draw_into",
    "log_prob_impl",
    "torch_ops_draw",
]

_MASK64 = 2**64 - 1
_NO_EXCLUDE = np.full((1, 1), -1, dtype=np.int64)


def _u64(t: Tensor) -> int:
    """A 0-dim int64 tensor's 64 bits as an unsigned Python int (seeds, offsets)."""
    return int(t.item()) & _MASK64


def allocate(shape: Sequence[int], device: torch.device) -> Tensor:
    """An int64 tensor for the draws; a size the machine cannot hold is a MemoryError naming it."""
    try:
        return torch.empty(tuple(shape), dtype=torch.int64, device=device)
    except (RuntimeError, MemoryError) as exc:  # torch's allocators raise RuntimeError (CPU) or OOM
        raise MemoryError(
            f"size {tuple(shape)}: cannot allocate {8 * math.prod(shape)} bytes of draws on {device} ({exc})"
        ) from None


def _check_exclude_ids(exclude: Tensor, num_classes: int) -> None:
    """The eager check's wording (pyneg._validation.as_index_tensor): ids in [-1, V)."""
    if exclude.numel() == 0:
        return
    low, high = torch.aminmax(exclude)
    lo, hi = int(low), int(high)
    if lo < -1 or hi >= num_classes:
        bad = lo if lo < -1 else hi
        raise ValueError(f"exclude holds id {bad} outside [0, {num_classes}) (use -1 for padding)")


def direct_call_ok(*tensors: Optional[Tensor]) -> bool:
    """Whether an op's implementation may run without the dispatcher: eagerly (not
    compiling, exporting or tracing), on plain tensors (or None), with no torch
    function or dispatch mode to see the call. Then calling it is what the op
    would do, without the dispatcher's Python round trips (most of a small call's cost)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or _function_mode_on():
        return False
    for t in tensors:
        if t is not None and type(t) is not Tensor:
            return False
    return True


_function_mode_on = torch._C._is_torch_function_mode_enabled


def _cpu_array(t: Union[Tensor, np.ndarray]) -> np.ndarray:
    """A CPU tensor's values as a contiguous NumPy array (no copy when already so; an
    array, such as the NumPy view of a sampler's table, passes through)."""
    if isinstance(t, np.ndarray):
        return t
    return t.detach().contiguous().numpy()


# ------------------------------------------------------------- CPU kernels
def draw_into(
    out: Tensor,
    entries: Union[Tensor, np.ndarray],
    mass: Union[Tensor, np.ndarray, None],
    num_positive: int,
    exclude: Optional[Tensor],
    seed: int,
    offset: int,
    k: int,
    unique: bool,
    tries: Optional[Tensor],
) -> None:
    """Fills the contiguous int64 CPU tensor ``out`` with draws from the table's tensors.

    The one place the CPU kernels are called: the ops' CPU implementations
    and eager ``sample(..., out=...)`` (which writes straight into the caller's
    buffer) both come here. ``exclude`` is (L, P) int64 or None; ``tries``
    (rows,) receives each unique row's tries when given. The table may come as
    tensors or as their NumPy views.
    """
    if out.numel() == 0:
        return
    flat = out.numpy()  # the kernels read any C-contiguous shape as rows of k
    threads = torch.get_num_threads()
    ent = _cpu_array(entries)
    if exclude is not None:
        _check_exclude_ids(exclude, ent.shape[0])
    if unique:
        assert mass is not None
        lists = _NO_EXCLUDE if exclude is None else _cpu_array(exclude)
        _core.alias_draw_unique(
            ent, _cpu_array(mass), num_positive, seed, offset, lists, k, flat,
            None if tries is None else tries.numpy(), threads,
        )  # fmt: skip
    elif exclude is not None:
        assert mass is not None
        _core.alias_draw_excluding(
            ent, _cpu_array(mass), num_positive, seed, offset, _cpu_array(exclude), k, flat, threads
        )
    else:
        _core.alias_draw(ent, seed, offset, flat, threads)


def torch_ops_draw(entries: Tensor, shape: Sequence[int], seed: int) -> Tensor:
    """Alias draws with plain torch ops on ``entries``' device (the CUDA fallback without pyneg._cuda).

    Reads the same table as the kernels but takes its random numbers from
    torch's generator for the device seeded with ``seed``, so its samples follow
    the same distribution without being bit-identical to the kernels' ones.
    """
    device = entries.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed % (2**63))
    bucket = torch.randint(0, entries.numel(), tuple(shape), generator=gen, device=device)
    coin = torch.randint(0, 2**32, tuple(shape), generator=gen, device=device)
    word = entries[bucket]
    keep = coin < (word & 0xFFFFFFFF)
    return torch.where(keep, bucket, word >> 32)


def _rows_k(shape: Sequence[int], k: int) -> Tuple[int, int]:
    """Draws and rows of a call (k ids per row; a size without draws has no rows)."""
    n = math.prod(shape)
    return n, (n // k if k and n else 0)


# ---------------------------------------------------------------- the ops
@torch.library.custom_op("pyneg::alias_sample", mutates_args=())
def alias_sample(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    """Independent draws of shape ``size`` from the table ``entries``: draw ``j`` (row-major)
    uses Philox position ``offset + j`` of ``seed``."""
    out = allocate(size, entries.device)
    draw_into(out, entries, None, 0, None, _u64(seed), _u64(offset), 1, False, None)
    return out


@alias_sample.register_fake
def _(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    return entries.new_empty(tuple(size))


@alias_sample.register_kernel("cuda")
def _alias_sample_cuda(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    if not cuda.cuda_available():  # pyneg._cuda not built: torch ops on the device's table
        return torch_ops_draw(entries, size, _u64(seed))
    out = allocate(size, entries.device)
    if out.numel():
        cuda.draw_into(out, entries, None, 0, None, _u64(seed), _u64(offset), 1, False, False)
    return out


@torch.library.custom_op("pyneg::alias_sample_excluding", mutates_args=())
def alias_sample_excluding(
    entries: Tensor,
    mass: Tensor,
    num_positive: int,
    exclude: Tensor,
    seed: Tensor,
    offset: Tensor,
    size: Sequence[int],
    k: int,
) -> Tensor:
    """Rows of ``k`` draws (``size`` holds ``R * k`` of them) that avoid their exclusion list;
    excluded draws are redrawn (the distribution renormalised over the allowed ids)."""
    out = allocate(size, entries.device)
    draw_into(out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, False, None)
    return out


@alias_sample_excluding.register_fake
def _(entries, mass, num_positive, exclude, seed, offset, size, k):  # type: ignore[no-untyped-def]
    return entries.new_empty(tuple(size))


@alias_sample_excluding.register_kernel("cuda")
def _alias_sample_excluding_cuda(entries, mass, num_positive, exclude, seed, offset, size, k):  # type: ignore[no-untyped-def]
    if not cuda.cuda_available():  # the CPU kernels on a host copy
        return alias_sample_excluding(
            entries.cpu(), mass.cpu(), num_positive, exclude.cpu(), seed.cpu(), offset.cpu(), size, k
        ).to(entries.device)
    out = allocate(size, entries.device)
    if out.numel():
        cuda.draw_into(out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, False, False)
    return out


@torch.library.custom_op("pyneg::alias_sample_unique", mutates_args=())
def alias_sample_unique(
    entries: Tensor,
    mass: Tensor,
    num_positive: int,
    exclude: Optional[Tensor],
    seed: Tensor,
    offset: Tensor,
    size: Sequence[int],
    k: int,
    with_tries: bool,
) -> Tuple[Tensor, Tensor]:
    """Rows of ``k`` ids distinct within the row (successive sampling), and the candidate
    draws each row took (``num_tries``; shape (R,), or (0,) without ``with_tries``)."""
    out = allocate(size, entries.device)
    _, rows = _rows_k(size, k)
    tries = torch.empty(rows if with_tries else 0, dtype=torch.int64)
    draw_into(
        out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, True, tries if with_tries else None
    )
    return out, tries


@alias_sample_unique.register_fake
def _(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries):  # type: ignore[no-untyped-def]
    _, rows = _rows_k(size, k)
    return entries.new_empty(tuple(size)), entries.new_empty(rows if with_tries else 0)


@alias_sample_unique.register_kernel("cuda")
def _alias_sample_unique_cuda(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries):  # type: ignore[no-untyped-def]
    device = entries.device
    if not cuda.cuda_available():  # the CPU kernels on a host copy
        ids, tries = alias_sample_unique(
            entries.cpu(), mass.cpu(), num_positive, None if exclude is None else exclude.cpu(),
            seed.cpu(), offset.cpu(), size, k, with_tries,
        )  # fmt: skip
        return ids.to(device), tries.to(device)
    out = allocate(size, device)
    _, rows = _rows_k(size, k)
    tries = torch.empty(rows if with_tries else 0, dtype=torch.int64, device=device)
    if out.numel():
        host = cuda.draw_into(out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, True, with_tries)
        if with_tries and host is not None:
            tries.copy_(host)
    return out, tries


def log_prob_impl(log_probs: Tensor, ids: Tensor) -> Tensor:
    """What ``pyneg::alias_log_prob`` computes (eager callers may run it without the dispatcher)."""
    v = log_probs.numel()
    # Checked after copying: the caller's ids may be written while this runs
    # (another thread), and what is indexed must be what was checked.
    ids = ids.clone()
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if lo < 0 or hi >= v:  # (tensor comparisons: one synchronisation on a device)
            lo_i, hi_i = int(lo), int(hi)
            raise ValueError(f"ids holds id {lo_i if lo_i < 0 else hi_i} outside [0, {v})")
    if ids.dim() == 1:
        return log_probs.index_select(0, ids.to(log_probs.device))
    return log_probs.index_select(0, ids.reshape(-1).to(log_probs.device)).reshape(ids.shape)


def check_tries_impl(num_tries: Tensor) -> Tensor:
    """What ``pyneg::alias_check_tries`` computes (eager callers may run it without the dispatcher)."""
    t = num_tries.to(torch.float64, copy=True)
    if t.numel():
        if not bool(torch.isfinite(t).all()) or bool((t < 1).any()):
            raise ValueError("num_tries must be finite and >= 1")
        if bool((t != t.round()).any()):
            raise ValueError("num_tries must hold whole numbers (how many draws a unique draw took)")
    return t


@torch.library.custom_op("pyneg::alias_log_prob", mutates_args=())
def alias_log_prob(log_probs: Tensor, ids: Tensor) -> Tensor:
    """``log_probs[ids]`` (float64, the shape of ``ids``) with every id checked in [0, V)."""
    return log_prob_impl(log_probs, ids)


@alias_log_prob.register_fake
def _(log_probs: Tensor, ids: Tensor) -> Tensor:
    return log_probs.new_empty(ids.shape)


@torch.library.custom_op("pyneg::alias_check_tries", mutates_args=())
def alias_check_tries(num_tries: Tensor) -> Tensor:
    """A float64 copy of ``num_tries`` after checking it holds whole numbers >= 1."""
    return check_tries_impl(num_tries)


@alias_check_tries.register_fake
def _(num_tries: Tensor) -> Tensor:
    return num_tries.new_empty(num_tries.shape, dtype=torch.float64)

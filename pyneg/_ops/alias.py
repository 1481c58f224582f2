"""Alias-table draws as PyTorch operators (``torch.ops.pyneg.alias_*``).

Every op is a pure function of its tensors: the table comes as the int64
tensor a sampler holds (``entries``: packed ``(alias << 32) | threshold``
words, layout in csrc/cpu/alias_table.h) and, where exclusions, unique rows or
probabilities need them, the class masses derived from it (``mass``, summing to
``V * 2**32``, ``_core.alias_class_masses``), the seed and
the offset of the first draw as 0-dim int64 tensors (their 64 bits read as
unsigned), so a new seed is new data, never a recompilation. Each op has one
implementation per device under one name: the CPU runs pyneg's C++ kernels on
the tensors' memory (``pyneg._core.alias_draw*``); CUDA runs pyneg's CUDA
kernels when ``pyneg._cuda`` is built (bit-identical to the CPU), and
otherwise torch ops (plain draws) or the CPU kernels on a host copy
(exclusions, unique rows). Fake implementations give the result's shape, so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace through.

Every op checks its own arguments (dtype, shape, device, contiguity: in its real
and fake implementations alike, so eager, compiled and exported calls refuse the
same input with the same error) and the data it reads: exclusion ids in range,
rows that leave nothing to draw, ``num_tries`` values, ``ids`` of ``log_prob``,
every drawn id against V (an alias >= V is refused, never returned), the masses
where they are read. Errors name the op's argument.

Ops:
    ``alias_sample(entries, seed, offset, size)``: independent draws of shape ``size``.
    ``alias_sample_excluding(entries, mass, num_positive, exclude, seed, offset, size, k)``:
        rows of ``k`` draws avoiding their exclusion list (``exclude`` (L, P),
        padded with -1; list ``l`` serves rows ``[l * R / L, (l + 1) * R / L)``).
    ``alias_sample_unique(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries)``:
        rows of ``k`` distinct ids, and each row's ``num_tries`` (shape (R,), or (0,)
        when ``with_tries`` is False).
    ``alias_log_prob(mass, ids)``: ``log(mass[ids] / (V * 2**32))`` with ids checked in range.
    ``alias_check_tries(num_tries)``: a float64 copy of ``num_tries``, checked.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from pyneg import _core, cuda
from pyneg._validation import MAX_BUFFER_BYTES

__all__ = [
    "alias_sample",
    "alias_sample_excluding",
    "alias_sample_unique",
    "alias_log_prob",
    "alias_check_tries",
    "alias_class_masses",
    "check_ids",
    "analytic_draw_into",
    "analytic_log_prob",
    "analytic_log_prob_impl",
    "analytic_sample",
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


# ------------------------------------------------------------ argument checks
# Every op checks its arguments itself (dtype, shape, device, contiguity, and the
# table's invariants where it reads them), in its real and its fake
# implementation alike, so eager, compiled and exported calls refuse the same
# input with the same error, naming the op's argument.
_MAX_CLASSES = int(_core.MAX_CLASSES)


def _fake(t: Tensor) -> bool:
    """Whether ``t`` is a FakeTensor (tracing): value-level refusals then wait for the
    real run, so a compiled call raises the eager error (not Dynamo's wrapper of it)."""
    return isinstance(t, torch._subclasses.fake_tensor.FakeTensor)


def check_table_tensor(t: object, name: str) -> None:
    """A table argument (``entries`` or ``mass``): a 1-D contiguous int64 tensor of 1 to 2**31 - 1 values."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor (a sampler's table), got {t.dtype}")
    if t.layout != torch.strided or t.dim() != 1:
        raise ValueError(f"{name} must be a dense 1-D tensor, got {t.layout} of shape {tuple(t.shape)}")
    if not 1 <= t.numel() <= _MAX_CLASSES:
        raise ValueError(f"{name} must hold 1 to {_MAX_CLASSES} classes, got {t.numel()}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_ids_tensor(t: object, name: str, device: torch.device) -> None:
    """Integer ids (int64) on the table's device or the CPU."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 tensor of ids, got {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense tensor, got {t.layout}")
    _same_device(((name, t.device), ("the table", device)))


def _same_device(named: Sequence[Tuple[str, torch.device]]) -> None:
    """Tensors of one call must live on one device (a CPU seed or offset aside); a meta
    tensor beside real ones is refused (it would give uninitialised memory)."""
    devices = {d for _, d in named}
    if len(devices) > 1 and not devices <= {torch.device("cpu")}:
        metas = [n for n, d in named if d.type == "meta"]
        non_cpu = {d for _, d in named if d.type != "cpu"}
        if metas or len(non_cpu) > 1:
            desc = ", ".join(f"{n} on {d}" for n, d in named)
            raise ValueError(f"the tensors of one call must be on one device (got {desc})")


def check_scalar_tensor(t: object, name: str) -> None:
    """``seed`` / ``offset``: a 0-dim int64 CPU tensor (its 64 bits read as unsigned)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a 0-dim int64 tensor, got {type(t).__name__}")
    if t.dtype != torch.int64 or t.dim() != 0:
        raise TypeError(f"{name} must be a 0-dim int64 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")


def check_draw_args(
    entries: Tensor,
    mass: Optional[Tensor],
    num_positive: Optional[int],
    exclude: Optional[Tensor],
    seed: Tensor,
    offset: Tensor,
    size: Sequence[int],
    k: int,
) -> None:
    """The checks every draw op runs first (real and fake implementations)."""
    check_table_tensor(entries, "entries")
    named = [("entries", entries.device)]
    if mass is not None:
        check_table_tensor(mass, "mass")
        if mass.numel() != entries.numel():
            raise ValueError(f"mass must have one value per class of entries ({entries.numel()}), got {mass.numel()}")
        named.append(("mass", mass.device))
    if num_positive is not None and not 1 <= num_positive <= entries.numel():
        raise ValueError(f"num_positive must be in [1, {entries.numel()}], got {num_positive}")
    _same_device(named + _check_request(exclude, seed, offset, size, k))


def _check_request(
    exclude: Optional[Tensor], seed: Tensor, offset: Tensor, size: Sequence[int], k: int
) -> List[Tuple[str, torch.device]]:
    """The checks of a draw request shared by the table and the analytic ops (seed,
    offset, size, k, exclude); returns the devices of those tensors by name."""
    check_scalar_tensor(seed, "seed")
    check_scalar_tensor(offset, "offset")
    named = [("seed", seed.device), ("offset", offset.device)]
    if any(type(d) is not int and not isinstance(d, torch.SymInt) for d in size):
        raise TypeError(f"size must hold ints, got {list(size)}")
    if any(isinstance(d, int) and d < 0 for d in size):
        raise ValueError(f"size must hold non-negative dimensions, got {list(size)}")
    n = math.prod(size)
    if isinstance(k, int) and isinstance(n, int) and (k < 0 or (k == 0 and n) or (k and n % k)):
        raise ValueError(f"k must be >= 1 and divide the {n} draws of size {list(size)}, got {k}")
    if exclude is not None:
        if not isinstance(exclude, Tensor):
            raise TypeError(f"exclude must be a tensor, got {type(exclude).__name__}")
        if exclude.dtype != torch.int64 and not _fake(exclude):  # (at run time, compiled too)
            raise TypeError(f"exclude must hold integer ids, got {exclude.dtype}")
        if exclude.layout != torch.strided or exclude.dim() != 2 or exclude.shape[0] < 1 or exclude.shape[1] < 1:
            raise ValueError(f"exclude must be a dense (L, P) tensor with L, P >= 1, got shape {tuple(exclude.shape)}")
        rows = n // k if isinstance(k, int) and k else 0
        if isinstance(rows, int) and rows and rows % exclude.shape[0]:
            raise ValueError(f"exclude has {exclude.shape[0]} rows, which does not divide the {rows} rows of size")
        named.append(("exclude", exclude.device))
    return named


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


def _check_device_aliases(entries: Tensor) -> None:
    """The CUDA kernels do not check ids as the CPU ones do: check the aliases up front
    (O(V) on the device, one synchronisation)."""
    alias = (entries >> 32) & 0xFFFFFFFF
    worst = int(alias.max())
    if worst >= entries.numel():
        raise ValueError(f"entries is not an alias table: a bucket's alias is {worst} >= V = {entries.numel()}")


def _rows_k(shape: Sequence[int], k: int) -> Tuple[int, int]:
    """Draws and rows of a call (k ids per row; a size without draws has no rows)."""
    n = math.prod(shape)
    return n, (n // k if k and n else 0)


# ---------------------------------------------------------------- the ops
@torch.library.custom_op("pyneg::alias_sample", mutates_args=())
def alias_sample(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    """Independent draws of shape ``size`` from the table ``entries``: draw ``j`` (row-major)
    uses Philox position ``offset + j`` of ``seed``."""
    check_draw_args(entries, None, None, None, seed, offset, size, 1)
    out = allocate(size, entries.device)
    draw_into(out, entries, None, 0, None, _u64(seed), _u64(offset), 1, False, None)
    return out


@alias_sample.register_fake
def _(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    check_draw_args(entries, None, None, None, seed, offset, size, 1)
    return entries.new_empty(tuple(size))


@alias_sample.register_kernel("cuda")
def _alias_sample_cuda(entries: Tensor, seed: Tensor, offset: Tensor, size: Sequence[int]) -> Tensor:
    check_draw_args(entries, None, None, None, seed, offset, size, 1)
    _check_device_aliases(entries)
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
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    out = allocate(size, entries.device)
    draw_into(out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, False, None)
    return out


@alias_sample_excluding.register_fake
def _(entries, mass, num_positive, exclude, seed, offset, size, k):  # type: ignore[no-untyped-def]
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    return entries.new_empty(tuple(size))


@alias_sample_excluding.register_kernel("cuda")
def _alias_sample_excluding_cuda(entries, mass, num_positive, exclude, seed, offset, size, k):  # type: ignore[no-untyped-def]
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    _check_device_aliases(entries)
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
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    out = allocate(size, entries.device)
    _, rows = _rows_k(size, k)
    tries = torch.empty(rows if with_tries else 0, dtype=torch.int64)
    draw_into(
        out, entries, mass, num_positive, exclude, _u64(seed), _u64(offset), k, True, tries if with_tries else None
    )
    return out, tries


@alias_sample_unique.register_fake
def _(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries):  # type: ignore[no-untyped-def]
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    _, rows = _rows_k(size, k)
    return entries.new_empty(tuple(size)), entries.new_empty(rows if with_tries else 0)


@alias_sample_unique.register_kernel("cuda")
def _alias_sample_unique_cuda(entries, mass, num_positive, exclude, seed, offset, size, k, with_tries):  # type: ignore[no-untyped-def]
    check_draw_args(entries, mass, num_positive, exclude, seed, offset, size, k)
    _check_device_aliases(entries)
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


def _log_prob_out(ids: Tensor) -> Tensor:
    """The float64 result of a log_prob, sized before it is allocated: a MemoryError naming
    ``ids`` and the size for absurd ones (e.g. an expanded view of 2**40 ids), decided from
    the machine's memory rather than by an allocator failure (which aborts under ASan)."""
    nbytes = 8 * ids.numel()
    if nbytes > MAX_BUFFER_BYTES:
        raise MemoryError(
            f"ids has {ids.numel()} elements: cannot allocate {nbytes} bytes of log-probabilities "
            f"(more than this machine's {MAX_BUFFER_BYTES} bytes of memory)"
        )
    return torch.empty(ids.shape, dtype=torch.float64)


def _owned_ids(ids: Tensor, v: int) -> Tensor:
    """A private flat int64 copy of ``ids`` (the caller's may be written meanwhile by
    another thread: what is indexed must be what was checked), checked in [0, V)."""
    flat = ids.reshape(-1).to(torch.int64, copy=True)
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if lo < 0 or hi >= v:  # (tensor comparisons: one synchronisation on a device)
            lo_i, hi_i = int(lo), int(hi)
            raise ValueError(f"ids holds id {lo_i if lo_i < 0 else hi_i} outside [0, {v})")
    return flat


def log_prob_impl(mass: Tensor, ids: Tensor) -> Tensor:
    """What ``pyneg::alias_log_prob`` computes (eager callers may run it without the dispatcher)."""
    check_table_tensor(mass, "mass")
    check_ids_tensor(ids, "ids", mass.device)
    out = _log_prob_out(ids)
    flat = _owned_ids(ids, mass.numel())
    m = mass.index_select(0, flat.to(mass.device)).to(torch.float64)
    m /= float(mass.numel()) * 2.0**32  # the probability (one rounding), then its log
    torch.log(m, out=m)
    out.copy_(m.reshape(ids.shape))
    return out.to(mass.device) if mass.device.type != "cpu" else out


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
def alias_log_prob(mass: Tensor, ids: Tensor) -> Tensor:
    """``log(mass[ids] / (V * 2**32))`` (float64, the shape of ``ids``): the log-probability of
    each id under the table whose class masses are ``mass``; every id checked in [0, V)."""
    return log_prob_impl(mass, ids)


@alias_log_prob.register_fake
def _(mass: Tensor, ids: Tensor) -> Tensor:
    check_table_tensor(mass, "mass")
    check_ids_tensor(ids, "ids", mass.device)
    return mass.new_empty(ids.shape, dtype=torch.float64)


@torch.library.custom_op("pyneg::alias_check_tries", mutates_args=())
def alias_check_tries(num_tries: Tensor) -> Tensor:
    """A float64 copy of ``num_tries`` after checking it holds whole numbers >= 1."""
    return check_tries_impl(num_tries)


@alias_check_tries.register_fake
def _(num_tries: Tensor) -> Tensor:
    return num_tries.new_empty(num_tries.shape, dtype=torch.float64)


# ------------------------------------------------------- analytic samplers
# UniformSampler and LogUniformSampler hold no table: their ops take the kind
# (0 uniform, 1 log-uniform) and V (up to 2**50) instead.
_KINDS = (0, 1)
MAX_ANALYTIC_CLASSES = int(_core.MAX_ANALYTIC_CLASSES)


def check_analytic_args(
    kind: int, num_classes: int, exclude: Optional[Tensor], seed: Tensor, offset: Tensor, size: Sequence[int], k: int
) -> None:
    """The checks of ``pyneg::analytic_sample`` (real and fake implementations)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be 0 (uniform) or 1 (log-uniform), got {kind}")
    if isinstance(num_classes, int) and not 1 <= num_classes <= MAX_ANALYTIC_CLASSES:
        raise ValueError(f"num_classes must be in [1, 2**50], got {num_classes}")
    _same_device(_check_request(exclude, seed, offset, size, k))


def analytic_draw_into(
    out: Tensor,
    kind: int,
    num_classes: int,
    exclude: Optional[Tensor],
    seed: int,
    offset: int,
    k: int,
    unique: bool,
    tries: Optional[Tensor],
) -> None:
    """Fills the contiguous int64 CPU tensor ``out`` with analytic draws (the one place
    the analytic CPU kernels are called)."""
    if out.numel() == 0:
        return
    flat = out.numpy()
    threads = torch.get_num_threads()
    if unique:
        lists = _NO_EXCLUDE if exclude is None else _cpu_array(exclude)
        _core.analytic_draw_unique(
            kind, num_classes, seed, offset, lists, k, flat, None if tries is None else tries.numpy(), threads
        )
    elif exclude is not None:
        _core.analytic_draw_excluding(kind, num_classes, seed, offset, _cpu_array(exclude), k, flat, threads)
    else:
        _core.analytic_draw(kind, num_classes, seed, offset, flat, threads)


@torch.library.custom_op("pyneg::analytic_sample", mutates_args=())
def analytic_sample(
    kind: int,
    num_classes: int,
    exclude: Optional[Tensor],
    seed: Tensor,
    offset: Tensor,
    size: Sequence[int],
    k: int,
    unique: bool,
    with_tries: bool,
) -> Tuple[Tensor, Tensor]:
    """Uniform (``kind`` 0) or log-uniform (1) draws over ``num_classes`` ids without a table:
    plain, avoiding ``exclude`` lists, or distinct within rows of ``k`` (``unique``), with
    each row's ``num_tries`` (shape (R,) when ``unique and with_tries``, else (0,))."""
    check_analytic_args(kind, num_classes, exclude, seed, offset, size, k)
    out = allocate(size, torch.device("cpu"))
    _, rows = _rows_k(size, k)
    want = unique and with_tries
    tries = torch.empty(rows if want else 0, dtype=torch.int64)
    ex = None if exclude is None else exclude.detach().cpu().contiguous()
    analytic_draw_into(out, kind, num_classes, ex, _u64(seed), _u64(offset), k, unique, tries if want else None)
    return out, tries


@analytic_sample.register_fake
def _(kind, num_classes, exclude, seed, offset, size, k, unique, with_tries):  # type: ignore[no-untyped-def]
    check_analytic_args(kind, num_classes, exclude, seed, offset, size, k)
    _, rows = _rows_k(size, k)
    return seed.new_empty(tuple(size)), seed.new_empty(rows if unique and with_tries else 0)


def analytic_log_prob_impl(kind: int, num_classes: int, ids: Tensor) -> Tensor:
    """What ``pyneg::analytic_log_prob`` computes (eager callers may run it without the dispatcher)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be 0 (uniform) or 1 (log-uniform), got {kind}")
    if not 1 <= num_classes <= MAX_ANALYTIC_CLASSES:
        raise ValueError(f"num_classes must be in [1, 2**50], got {num_classes}")
    check_ids_tensor(ids, "ids", ids.device)
    out = _log_prob_out(ids)
    flat = _owned_ids(ids, num_classes)
    if kind == 0:
        out.fill_(-math.log(num_classes))
        return out.to(ids.device) if ids.device.type != "cpu" else out
    k = flat.cpu().to(torch.float64)
    # log P(k) = log(log1p(1 / (k + 1))) - log(log1p(V)), TensorFlow's log-uniform.
    lp = torch.log(torch.log1p(torch.reciprocal(k.add_(1.0)))).sub_(math.log(math.log1p(num_classes)))
    out.copy_(lp.reshape(ids.shape))
    return out.to(ids.device) if ids.device.type != "cpu" else out


@torch.library.custom_op("pyneg::analytic_log_prob", mutates_args=())
def analytic_log_prob(kind: int, num_classes: int, ids: Tensor) -> Tensor:
    """log P(one draw == id) of the uniform (``kind`` 0) or log-uniform (1) distribution over
    ``num_classes`` ids (float64, the shape of ``ids``); every id checked in [0, V)."""
    return analytic_log_prob_impl(kind, num_classes, ids)


@analytic_log_prob.register_fake
def _(kind: int, num_classes: int, ids: Tensor) -> Tensor:
    if kind not in _KINDS:
        raise ValueError(f"kind must be 0 (uniform) or 1 (log-uniform), got {kind}")
    check_ids_tensor(ids, "ids", ids.device)
    return ids.new_empty(ids.shape, dtype=torch.float64)


@torch.library.custom_op("pyneg::check_ids", mutates_args=())
def check_ids(ids: Tensor, num_classes: int, name: str) -> Tensor:
    """A private int64 copy of ``ids`` after checking every id is in [0, ``num_classes``);
    the error names ``name`` (the caller's argument, e.g. ``true_classes``)."""
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer ids, got {ids.dtype}")
    flat = ids.to(torch.int64, copy=True)
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if lo < 0 or hi >= num_classes:
            lo_i, hi_i = int(lo), int(hi)
            raise ValueError(f"{name} holds id {lo_i if lo_i < 0 else hi_i} outside [0, {num_classes})")
    return flat


@check_ids.register_fake
def _(ids: Tensor, num_classes: int, name: str) -> Tensor:
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer ids, got {ids.dtype}")
    return ids.new_empty(ids.shape, dtype=torch.int64)


@torch.library.custom_op("pyneg::alias_class_masses", mutates_args=())
def alias_class_masses(entries: Tensor) -> Tensor:
    """The class masses (int64, summing to ``V * 2**32``) that the table ``entries`` implies;
    refuses entries with an alias >= V."""
    check_table_tensor(entries, "entries")
    host = entries.detach().cpu().contiguous()
    out = torch.empty(host.numel(), dtype=torch.int64)
    _core.alias_class_masses(host.numpy(), out.numpy())
    return out.to(entries.device)


@alias_class_masses.register_fake
def _(entries: Tensor) -> Tensor:
    check_table_tensor(entries, "entries")
    return torch.empty_like(entries)

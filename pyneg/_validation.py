"""Argument checks shared by pyneg's public entry points.

Every error names the argument it is about, so a user can tell which input was
wrong without reading pyneg's source. The rules, applied everywhere:

* NumPy scalars are accepted wherever a Python number is (``np.int64(3)``,
  ``np.float32(.5)``, ``np.bool_(True)``); a bool is never an int or a float.
* Meta tensors (no data) are refused with ValueError, sparse or other
  non-strided layouts with TypeError.
* Ids are checked in the integer domain they were given in: a uint64
  ``2**64 - 1`` is out of range, never ``-1`` (padding).
* Sizes whose element count reaches ``2**63`` (or a caller's lower bound) are
  refused with ValueError before anything is allocated.
* Index inputs are copied into memory pyneg owns *before* they are checked, so
  what the C++ kernels read (possibly with the GIL released) is exactly what
  was checked, whatever another thread does to the caller's tensor.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]
SizeLike = Union[int, Sequence[int], torch.Size]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
# Unsigned dtypes whose conversion to int64 can wrap (torch casts modulo 2**64).
_WIDE_UNSIGNED = tuple(getattr(torch, n) for n in ("uint64",) if hasattr(torch, n))

#: Largest number of classes pyneg's tables serve (32-bit alias indices; equals
#: ``pyneg._core.MAX_CLASSES``).
MAX_CLASSES = 2**31 - 1
#: Largest ``num_classes`` of the samplers without a table (uniform, log-uniform).
MAX_ANALYTIC_CLASSES = 2**50
#: Element counts must stay below this (torch's sizes are int64).
MAX_NUMEL = 2**63 - 1


def shape_str(shape: Sequence[Any]) -> str:
    """``str(tuple(shape))``, also inside ``torch.compile``: Dynamo can format each size (a
    symbolic one under ``dynamic=True`` is specialised) but not a tuple of them, so error
    messages built from traced sizes use this instead of ``tuple(t.shape)``."""
    out = ""
    n = 0
    for d in shape:  # a plain loop: Dynamo traces it
        out = out + (", " if n else "") + f"{d}"
        n += 1
    return "(" + out + ("," if n == 1 else "") + ")"


# ------------------------------------------------------------------ tensors
def check_tensor(t: torch.Tensor, name: str) -> torch.Tensor:
    """Refuses tensors pyneg cannot read: meta (no data) and non-strided (sparse) layouts."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor, which holds no data")
    return t


def as_tensor(data: ArrayLike, name: str) -> torch.Tensor:
    """Returns ``data`` as a tensor without copying tensors; raises TypeError otherwise.

    Tensors pass :func:`check_tensor`; arrays and sequences must hold real numbers
    (or bools) that NumPy can represent without falling back to Python objects.
    """
    if isinstance(data, torch.Tensor):
        return check_tensor(data, name)
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {type(data).__name__}")
    if torch.compiler.is_compiling() and isinstance(data, (bool, int, float, list, tuple)):
        # Dynamo cannot trace np.asarray of Python values: torch builds the tensor NumPy
        # would (float64 for Python floats), so compiled and eager calls check the same dtype.
        if isinstance(data, (list, tuple)) and _nested_shape(data) is None:
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {_RAGGED}")
        if isinstance(data, int) and not isinstance(data, bool) and not -(2**63) <= data < 2**63:
            raise TypeError(
                f"{name} must hold numbers that fit in 64 bits (got Python objects, e.g. an int "
                f">= 2**64 or a ragged sequence)"
            )
        t = torch.as_tensor(data)
        return t.double() if t.is_floating_point() else t
    if torch.compiler.is_compiling() and isinstance(data, np.ndarray):
        # Dynamo traces an array as a tensor (it cannot read its dtype): the same dtype.
        return torch.as_tensor(data)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        if isinstance(data, (list, tuple)) and _nested_shape(data) is None:  # the compiled road's words
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {_RAGGED}") from None
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers: {exc}") from None
    if arr.dtype == object:
        raise TypeError(
            f"{name} must hold numbers that fit in 64 bits (got Python objects, e.g. an int "
            f">= 2**64 or a ragged sequence)"
        )
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not arr.flags.c_contiguous or not arr.flags.writeable or arr.dtype.byteorder not in "=|":
        # np.ascontiguousarray would turn 0-d into 1-d; torch wants native byte order.
        arr = arr.astype(arr.dtype.newbyteorder("="), order="C", copy=True)
    return torch.from_numpy(arr)


_RAGGED = "a ragged sequence (nested sequences of different lengths)"


def _nested_shape(data: Any) -> Optional[Tuple[int, ...]]:
    """The shape of nested lists and tuples (``()`` for anything else), None when ragged.

    Plain Python, so ``torch.compile`` traces it (the values are constants of the
    graph) and eager and compiled calls refuse a ragged sequence with one message.
    """
    if not isinstance(data, (list, tuple)):
        return ()
    first: Optional[Tuple[int, ...]] = ()
    n = 0
    for item in data:  # a plain loop: Dynamo traces it
        inner = _nested_shape(item)
        if inner is None or (n and inner != first):
            return None
        first = inner
        n += 1
    return (n, *first) if first is not None else None


def check_float_tensor(t: Any, name: str) -> torch.Tensor:
    """A readable floating-point tensor (TypeError for anything else)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    return t


def as_tensor_on(x: Any, name: str, device: torch.device, *, other: str = "query") -> torch.Tensor:
    """Tensors stay where they are (a device other than ``other``'s is an error); arrays go to ``device``."""
    if isinstance(x, torch.Tensor):
        check_tensor(x, name)
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but {other} is on {device}")
        return x
    return as_tensor(x, name).to(device)


def as_float64_numpy(data: ArrayLike, name: str, *, ndim: int = 1, max_len: Optional[int] = None) -> np.ndarray:
    """A contiguous float64 NumPy array of real numbers of the given rank (CPU copy if needed).

    ``max_len`` bounds the number of elements, checked before any conversion.
    """
    t = as_tensor(data, name)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {shape_str(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if max_len is not None and t.numel() > max_len:
        raise ValueError(f"{name} has {t.numel()} entries, more than the {max_len} supported")
    if t.dtype in _WIDE_UNSIGNED:  # torch cannot cast uint64 to float64 on every device
        return t.detach().cpu().numpy().astype(np.float64)
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


def owned_copy(t: torch.Tensor, dtype: torch.dtype, name: str = "the input") -> torch.Tensor:
    """A contiguous CPU copy of ``t`` in ``dtype`` that nobody else references.

    A copy larger than memory (an expanded view of a few bytes can have 2**40
    elements) is refused by name before it is allocated.
    """
    check_nbytes(tuple(t.shape), torch.empty((), dtype=dtype).element_size(), f"a copy of {name}")
    dst = torch.empty(tuple(t.shape), dtype=dtype)
    dst.copy_(t.detach())
    return dst


def as_index_tensor(
    data: ArrayLike, name: str, num_classes: Optional[int], *, allow_padding: bool = False, allow_empty: bool = True
) -> torch.Tensor:
    """An int64 CPU tensor of ids in [0, num_classes) (or -1 when allow_padding).

    ``num_classes=None`` bounds ids by int64 only (ids that are keys, not rows).

    The result is always a fresh copy that pyneg owns, checked after copying:
    kernels may read it with the GIL released while another thread writes the
    caller's tensor. Unsigned ids are range-checked before conversion, so a
    uint64 ``2**64 - 1`` is refused instead of becoming ``-1``.
    """
    t = as_tensor(data, name)
    if t.numel() == 0:
        if not allow_empty:
            raise ValueError(f"{name} must not be empty")
        if not isinstance(data, (torch.Tensor, np.ndarray)) or data.dtype == np.float64:
            # NumPy gives [] its default dtype float64: no id to check, and no dtype the user chose.
            return torch.empty(tuple(t.shape), dtype=torch.int64)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    pad = " (use -1 for padding)" if allow_padding else ""
    hi = 2**63 if num_classes is None else num_classes
    if t.dtype in _WIDE_UNSIGNED:
        check_nbytes(tuple(t.shape), 16, f"a copy of {name}")
        arr = t.detach().cpu().numpy().copy()  # owned; checked as unsigned, then converted
        if arr.size and int(arr.max()) >= hi:
            raise ValueError(f"{name} holds id {int(arr.max())} outside [0, {hi}){pad}")
        return torch.from_numpy(arr.astype(np.int64))
    out = owned_copy(t, torch.int64, name)
    if out.numel():
        lo = -1 if allow_padding else 0
        low, high = torch.aminmax(out)
        tmin, tmax = int(low), int(high)
        if tmin < 0 and num_classes is None and not allow_padding:
            # Ids that are keys (no upper bound to state): the C++ kernels' wording (csrc/cpu/ids.h),
            # so an int32 tensor or a list reads as an int64 tensor does.
            raise ValueError(f"{name} holds negative id {tmin} (ids must be >= 0)")
        if tmin < lo or tmax >= hi:
            bad = tmin if tmin < lo else tmax
            raise ValueError(f"{name} holds id {bad} outside [0, {hi}){pad}")
    return out


def check_holds_data(t: torch.Tensor, name: str) -> None:
    """Refuses a strided tensor whose storage is smaller than its view (its storage was resized or freed).

    torch itself reads such a tensor out of bounds; pyneg refuses it by name.
    """
    if t.layout != torch.strided or t.is_nested or t.device.type == "meta" or t.numel() == 0:
        return  # refused elsewhere by name, or nothing to read
    extent = t.storage_offset() + 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
    if extent * t.element_size() > t.untyped_storage().nbytes():
        raise ValueError(
            f"{name} views {extent * t.element_size()} bytes but its storage holds only "
            f"{t.untyped_storage().nbytes()} (was the storage resized or freed?)"
        )


def as_id_array(ids: ArrayLike, name: str, *, ndim: Optional[int] = 1) -> np.ndarray:
    """Ids that are keys (>= 0, any int64) as a private C-contiguous int64 NumPy array.

    Always a copy pyneg owns: what gets checked is what the kernels and the
    caller's own columns read, whatever another thread writes to the caller's
    tensor meanwhile (torch ops run without the GIL). ``ndim=None`` accepts any
    shape. An int64 CPU tensor, the fast path of a training loop, is copied
    without a range check: the C++ kernels check the copy for negative ids.
    Anything else goes through :func:`as_index_tensor`.
    """
    if isinstance(ids, torch.Tensor):
        check_holds_data(ids, name)
    if (
        type(ids) is torch.Tensor
        and ids.dtype is torch.int64
        and ids.layout == torch.strided
        and ids.device.type == "cpu"
        and (ndim is None or ids.dim() == ndim)
    ):
        check_nbytes(tuple(ids.shape), 8, f"a copy of {name}")
        copied: np.ndarray = ids.detach().numpy().copy()
        return copied
    if ndim is not None:  # dtype, rank, values: the order of the compiled road (check_id_tensor, then the ops)
        src = ids if isinstance(ids, torch.Tensor) else as_tensor(ids, name)
        if _is_integer(src) and src.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {shape_str(src.shape)}")
    t = as_index_tensor(ids, name, None)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {shape_str(t.shape)}")
    return t.numpy()


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_id_tensor(ids: Any, name: str, *, ndim: Optional[int] = None) -> torch.Tensor:
    """Ids as an int64 tensor, from static metadata only (what ``torch.compile`` sees).

    The compiled-path twin of :func:`as_id_array`: it refuses what is not an
    integer tensor of rank ``ndim`` (None: any) without reading the values
    (the ops that take the ids check those, e.g. for negative ids).
    """
    if isinstance(ids, (bool, int, float, list, tuple, np.ndarray)):
        # What eager calls accept too; Python floats become float64, as NumPy makes them.
        if isinstance(ids, (list, tuple)) and _nested_shape(ids) is None:
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {_RAGGED}")
        t = torch.as_tensor(ids)
        if t.numel() == 0 and (not isinstance(ids, np.ndarray) or ids.dtype == np.float64):
            ids = t.long()  # as as_index_tensor: no id to check, and no dtype the user chose
        else:
            ids = t.double() if t.is_floating_point() and not isinstance(ids, np.ndarray) else t
    if isinstance(ids, (str, bytes)) or ids is None:
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {type(ids).__name__}")
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor inside a compiled step, got {type(ids).__name__}")
    check_tensor(ids, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {ids.dtype}")
    if ndim is not None and ids.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {shape_str(ids.shape)}")
    return ids.to(torch.int64)


def allocate(make: Callable[[], Any], what: str) -> Any:
    """``make()``, with an allocator failure reported as MemoryError naming ``what``."""
    try:
        return make()
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e) or "memory" in str(e):
            raise MemoryError(f"cannot allocate {what}: {e}") from None
        raise


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the bytes two strided tensors can address intersect (conservative)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    if sa.data_ptr() != sb.data_ptr():
        return False

    def span(t: torch.Tensor) -> Tuple[int, int]:
        extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
        lo = t.storage_offset() * t.element_size()
        return int(lo), int(lo + extent * t.element_size())

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def check_out(
    out: Any, name: str, shape: Tuple[int, ...], dtype: torch.dtype, *, inputs: Iterable[Tuple[str, Any]] = ()
) -> torch.Tensor:
    """An ``out=`` buffer: a dense, contiguous tensor of ``dtype`` and ``shape``, not requiring
    grad and sharing no memory with any of ``inputs`` (pairs of name and value)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    check_tensor(out, name)
    if out.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {shape_str(out.shape)} but size is {shape_str(shape)}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if out.requires_grad:
        raise ValueError(f"{name} must not require grad")
    for other_name, other in inputs:
        if isinstance(other, np.ndarray) and other.size and out.device.type == "cpu" and out.numel():
            if np.may_share_memory(out.numpy(), other):
                raise ValueError(f"{name} overlaps {other_name}")
        elif (
            isinstance(other, torch.Tensor)
            and other.layout == torch.strided
            and other.device.type != "meta"
            and shares_memory(out, other)
        ):
            raise ValueError(f"{name} overlaps {other_name}")
    return out


# ------------------------------------------------------------------ numbers
def check_int(value: Any, name: str, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """A Python int from an int, a NumPy integer or a one-element integer tensor (never a bool)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if (
            isinstance(value, torch.Tensor)
            and value.numel() == 1
            and value.layout == torch.strided
            and value.device.type != "meta"
            and not value.is_floating_point()
            and not value.is_complex()
            and value.dtype != torch.bool
        ):
            value = int(value.item())
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}")
    return number


def check_float(value: Any, name: str, *, minimum: Optional[float] = None, finite: bool = True) -> float:
    """A Python float from a real Python or NumPy number (never a bool); finite unless told."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float64, got {value}") from None
    # Comparisons, not math.isnan / isinf: under torch.compile(dynamic=True) a number passed
    # in is symbolic, which Dynamo compares (NaN fails every comparison) but cannot hand to math.
    if not x <= math.inf or (finite and not -math.inf < x < math.inf):
        raise ValueError(f"{name} must be finite, got {x}")
    if minimum is not None and not x >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    return x


def check_bool(value: Any, name: str) -> bool:
    """A bool from a bool or a NumPy bool; anything else (``"no"``, 0, None) is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_size(size: SizeLike, name: str = "size", *, max_numel: int = MAX_NUMEL) -> Tuple[int, ...]:
    """Normalises an int or sequence of ints into a shape tuple of non-negative ints.

    A shape whose element count exceeds ``max_numel`` (by default, one that does
    not fit in int64), or whose nonzero dimensions multiply past int64, is
    refused before anything is allocated.
    """
    if isinstance(size, np.ndarray) and size.ndim == 1:
        size = size.tolist()
    if isinstance(size, (torch.Size, tuple, list)):
        dims = tuple(check_int(s, name) for s in size)
    else:
        dims = (check_int(size, name),)
    for d in dims:
        if d < 0:
            raise ValueError(f"{name} must not be negative, got {shape_str(dims)}")
        if d > MAX_NUMEL:
            raise ValueError(f"{name} has a dimension >= 2**63, got {shape_str(dims)}")
    nonzero = 1
    for d in dims:  # a plain loop: Dynamo cannot trace math.prod over a generator
        nonzero *= max(d, 1)
    if nonzero > MAX_NUMEL:  # torch refuses these even when a dim is 0
        raise ValueError(f"{name} {shape_str(dims)}: the product of its dimensions does not fit in int64")
    numel = math.prod(dims)
    if numel > max_numel:
        raise ValueError(f"{name} {shape_str(dims)} has {numel} elements, more than the {max_numel} supported")
    return dims


def _physical_memory() -> Optional[int]:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return int(pages) * int(page) if pages > 0 and page > 0 else None


#: No single buffer pyneg allocates may exceed this many bytes (the machine's RAM):
#: a larger request is refused by name before it reaches the allocator.
MAX_BUFFER_BYTES = _physical_memory() or MAX_NUMEL


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_nbytes(dims: Tuple[int, ...], item_bytes: int, what: str) -> None:
    """Refuses a buffer of ``dims`` before anything is allocated: ValueError when its byte count
    overflows int64, MemoryError (naming ``what`` and the size) when it exceeds the machine's RAM.

    Symbolic sizes (a fake kernel tracing dynamic shapes) are skipped rather than
    specialised: the real kernel checks the concrete sizes when the graph runs.
    """
    if any(isinstance(d, torch.SymInt) for d in dims):
        return
    dims = check_size(dims, what, max_numel=MAX_NUMEL // item_bytes)
    nbytes = math.prod(dims) * item_bytes
    if nbytes > MAX_BUFFER_BYTES:
        raise MemoryError(
            f"{what} would need a buffer of shape {dims} ({_gib(nbytes)}), more than this machine's "
            f"{_gib(MAX_BUFFER_BYTES)} of memory"
        )


def check_seed(seed: Any, name: str = "seed") -> int:
    value = check_int(seed, name)
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def check_device(device: Any, name: str = "device") -> Optional[torch.device]:
    """None, or a torch.device; the meta device (no data) is refused."""
    if device is None:
        return None
    if isinstance(device, (bool, np.bool_)):
        raise TypeError(f"{name} must be a torch.device or a string, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a valid torch device: {exc}") from None
    if dev.type == "meta":
        raise ValueError(f"{name} must not be the meta device (meta tensors hold no data)")
    return dev

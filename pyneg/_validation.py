"""Argument checks shared by pyneg's public entry points.

Every error names the argument it is about, so a user can tell which input was
wrong without reading pyneg's source.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]
SizeLike = Union[int, Sequence[int], torch.Size]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def as_tensor(data: ArrayLike, name: str) -> torch.Tensor:
    """Returns ``data`` as a tensor without copying tensors; raises TypeError otherwise."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (str, bytes)) or data is None:
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {type(data).__name__}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers: {exc}") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if not arr.flags.c_contiguous:  # np.ascontiguousarray would turn 0-d into 1-d
        arr = arr.copy(order="C")
    return torch.from_numpy(arr)


def as_float64_numpy(data: ArrayLike, name: str, *, ndim: int = 1) -> np.ndarray:
    """A contiguous float64 NumPy array of real numbers of the given rank (CPU copy if needed)."""
    t = as_tensor(data, name)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return t.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()


def as_index_tensor(data: ArrayLike, name: str, num_classes: int, *, allow_padding: bool = False) -> torch.Tensor:
    """An int64 CPU tensor of ids in [0, num_classes) (or -1 when allow_padding)."""
    t = as_tensor(data, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    t = t.detach().to(device="cpu", dtype=torch.int64)
    if t.numel():
        lo = -1 if allow_padding else 0
        tmin, tmax = int(t.min()), int(t.max())
        if tmin < lo or tmax >= num_classes:
            bad = tmin if tmin < lo else tmax
            pad = " (use -1 for padding)" if allow_padding else ""
            raise ValueError(f"{name} holds id {bad} outside [0, {num_classes}){pad}")
    return t.contiguous()


def check_int(value: Any, name: str, *, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_size(size: SizeLike, name: str = "size") -> Tuple[int, ...]:
    """Normalises an int or sequence of ints into a shape tuple of non-negative ints."""
    if isinstance(size, (torch.Size, tuple, list)):
        dims = tuple(check_int(s, name) for s in size)
    else:
        dims = (check_int(size, name),)
    for d in dims:
        if d < 0:
            raise ValueError(f"{name} must not be negative, got {dims}")
    return dims


def check_seed(seed: Any, name: str = "seed") -> int:
    seed = check_int(seed, name)
    if not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


def check_device(device: Any, name: str = "device") -> Optional[torch.device]:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{name} is not a valid torch device: {exc}") from None

"""Checks of ``load_state_dict`` inputs and copies of pickled state (bank and estimator).

A state dict is checked entirely before anything is loaded, so a refused one
leaves the object as it was; every error names the offending key.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch

from pyneg._validation import check_float, check_holds_data, check_int, check_tensor, shape_str

#: Steps count updates/enqueues; the estimator keeps them as float64 (exact up
#: to 2**53) and the bank's steps must round-trip through the same state formats.
MAX_STEP = 2**53


class PackedTensor(NamedTuple):
    """A CPU tensor pickled by value: its dtype's name, its shape and its bytes.

    Why: torch's multiprocessing pickler (DataLoader workers started with
    ``spawn`` or ``forkserver``, ``torch.multiprocessing`` queues) sends a CPU
    tensor as a file descriptor of shared memory that the *sender's* storage
    keeps alive. A pickled state is built fresh for each pickling (copies, by
    design: nothing private is handed out), so its tensors die as soon as the
    pickle is written, before the receiver maps them, which then fails with
    "unable to resize file ... Invalid argument (22)". Bytes in the pickle
    stream have no such lifetime.
    """

    dtype: str
    shape: Tuple[int, ...]
    data: np.ndarray  # uint8, the tensor's contiguous bytes


def pack_tensors(state: Any) -> Any:
    """``state`` with every CPU tensor (in dicts, lists and tuples) replaced by a :class:`PackedTensor`."""
    if isinstance(state, torch.Tensor):
        if state.device.type != "cpu" or state.layout != torch.strided:
            return state
        flat = state.detach().contiguous().reshape(-1)
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        # No copy: the array keeps the (fresh) tensor alive, and pickling writes its bytes.
        return PackedTensor(str(state.dtype).replace("torch.", ""), tuple(state.shape), raw.numpy())
    if isinstance(state, dict):
        return {k: pack_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):  # not a NamedTuple
        return type(state)(pack_tensors(v) for v in state)
    return state


def unpack_tensors(state: Any) -> Any:
    """The inverse of :func:`pack_tensors` (tensors already unpacked pass through)."""
    if isinstance(state, PackedTensor):
        dtype = getattr(torch, state.dtype)
        raw = torch.from_numpy(np.ascontiguousarray(state.data, dtype=np.uint8))
        if raw.numel() == 0:
            return torch.empty(state.shape, dtype=dtype)
        return raw.view(dtype).reshape(state.shape).clone()
    if isinstance(state, dict):
        return {k: unpack_tensors(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(unpack_tensors(v) for v in state)
    return state


def copy_on_write(state: Dict[str, Any], memo: Dict[int, Any], group: Optional[Any]) -> Dict[str, Any]:
    """A deep copy of an object's pickled state that keeps its process group (a handle) shared."""
    if group is not None:
        memo[id(group)] = group
    return copy.deepcopy(state, memo)


def check_dense(t: torch.Tensor, key: str) -> None:
    """A tensor with data that copies into the state: strided (not sparse or nested), not meta."""
    check_tensor(t, f"state_dict[{key!r}]")
    check_holds_data(t, f"state_dict[{key!r}]")
    if t.is_nested:
        raise TypeError(f"state_dict[{key!r}] must be a dense tensor, got a nested one")


def state_value(sd: Dict[str, Any], key: str) -> Any:
    """``sd[key]``, or a ValueError naming the missing key."""
    if key not in sd:
        raise ValueError(f"state_dict has no {key!r}")
    return sd[key]


def state_tensor(sd: Dict[str, Any], key: str, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``sd[key]`` checked, as a private CPU copy (what is checked is what gets loaded)."""
    t = state_value(sd, key)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(t).__name__}")
    check_dense(t, key)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"state_dict[{key!r}] has shape {shape_str(t.shape)}, expected {shape_str(shape)}")
    if t.dtype != dtype:
        raise TypeError(f"state_dict[{key!r}] must be {dtype}, got {t.dtype}")
    out = torch.empty(tuple(shape), dtype=dtype)
    out.copy_(t.detach())
    return out


def state_int(sd: Dict[str, Any], key: str, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """``sd[key]`` as an int in [minimum, maximum]."""
    return check_int(state_value(sd, key), f"state_dict[{key!r}]", minimum=minimum, maximum=maximum)


def state_must_match(sd: Dict[str, Any], key: str, mine: Any, what: str) -> None:
    """Refuses a state whose ``key`` (a configuration value) differs from this object's ``mine``."""
    theirs = state_value(sd, key)
    value = (
        check_float(theirs, f"state_dict[{key!r}]")
        if isinstance(mine, float)
        else check_int(theirs, f"state_dict[{key!r}]")
    )
    if value != mine:
        raise ValueError(f"state_dict has {key}={theirs!r} but this {what} has {mine!r}")

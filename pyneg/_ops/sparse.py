"""Sparse catalogues' id maps as PyTorch operators (``torch.ops.pyneg.sparse_lookup``).

A sparse sampler (``AliasSampler(weights, ids=..., num_classes=V)``) draws table
slots and maps them to catalogue ids through its sorted ``ids`` array (a gather,
``ids[slots]``); exclusion lists and ``log_prob`` hold catalogue ids, mapped to
slots by binary search (``pyneg._core.sparse_lookup``, csrc/cpu/sparse_ids.h).
Eager CPU calls run the C++ kernels directly; this op is what compiled graphs
and other devices call (the lookup runs on a host copy).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyneg import _core

__all__ = ["sparse_lookup", "lookup_impl"]


def _check(ids: object, query: object) -> None:
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64 or ids.dim() != 1 or ids.numel() < 1:
        raise TypeError("ids must be a non-empty 1-D int64 tensor (a sparse sampler's ids)")
    if not isinstance(query, Tensor):
        raise TypeError(f"the ids to look up must be a tensor, got {type(query).__name__}")
    if query.dtype != torch.int64 and not isinstance(query, torch._subclasses.fake_tensor.FakeTensor):
        raise TypeError(f"the ids to look up must hold integer ids, got {query.dtype}")


def lookup_impl(ids: Tensor, num_classes: int, query: Tensor, allow_padding: bool, name: str) -> Tensor:
    """What ``pyneg::sparse_lookup`` computes (eager callers may run it without the dispatcher)."""
    _check(ids, query)
    host_ids = ids.detach().cpu().contiguous()
    q = query.detach().to(device="cpu", dtype=torch.int64).contiguous()
    slots = torch.empty(q.shape, dtype=torch.int64)
    if q.numel():
        _core.sparse_lookup(
            host_ids.numpy(), num_classes, q.numpy(), slots.numpy(), allow_padding, name, torch.get_num_threads()
        )
    return slots if query.device.type == "cpu" else slots.to(query.device)


@torch.library.custom_op("pyneg::sparse_lookup", mutates_args=())
def sparse_lookup(ids: Tensor, num_classes: int, query: Tensor, allow_padding: bool, name: str) -> Tensor:
    """The slot of every id of ``query`` in the sorted ``ids`` (-1 for an id without a slot,
    and for padding -1 when ``allow_padding``); ids outside [0, ``num_classes``) are refused
    with a ValueError naming ``name``."""
    return lookup_impl(ids, num_classes, query, allow_padding, name)


@sparse_lookup.register_fake
def _(ids: Tensor, num_classes: int, query: Tensor, allow_padding: bool, name: str) -> Tensor:
    _check(ids, query)
    return query.new_empty(query.shape, dtype=torch.int64)

"""Reads of the memory bank and the frequency estimator as PyTorch operators.

A compiled training step reads a :class:`pyneg.MemoryBank` or a
:class:`pyneg.FrequencyEstimator` through these ops, so ``torch.compile`` (and
``fullgraph=True``) traces the read instead of breaking the graph. Each op is a
pure function of its tensors. The objects keep their changing state in
tensors that they update in place (the estimator's step; where the bank's
reads start) and in the sizes of views they replace at every write (how many
entries a bank read returns), so a compiled step takes them as graph inputs
and sees every enqueue or update made between two calls: nothing about them
is a constant of the graph. (The bank's reads themselves are plain torch ops
over those inputs: ``index_select`` of a run of slots.)

Checks that need the data (negative ids) run inside the ops and raise the
ValueError of pyneg's eager checks; shapes and dtypes are checked by the
callers (pyneg/bank.py, pyneg/frequency.py) before an op runs.

Ops:
    ``frequency_estimate(cells, ids, step, log)``: the estimator's probability
        (or log probability) of each id, float32 of ``ids``' shape (CPU; the C++
        kernel ``pyneg._core.frequency_estimate``).
    ``bank_hit_mask(entry_ids, positive_ids)``: the (B, N) accidental-hit mask
        ``entry_ids[n] == positive_ids[b]`` (any device; the hits come from
        :func:`pyneg._hits.find_hits`, the losses' hit finder).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pyneg import _core, _hits
from pyneg._ops import _checks
from pyneg._state import MAX_STEP
from pyneg._validation import allocate, check_nbytes

__all__ = ["frequency_estimate", "estimate", "bank_hit_mask", "hit_mask"]

# A hit list (rows and columns as int64, with the vectors' growth and the
# copies made from them) costs up to about this many bytes per hit: hits are
# listed only while the lists stay smaller than the (B, N) bool mask they fill.
_BYTES_PER_HIT = 64


def _check_non_negative(ids: Tensor, name: str) -> None:
    """The C++ kernels' wording (csrc/cpu/ids.h) for a negative id."""
    if ids.numel():
        lo = int(ids.min())
        if lo < 0:
            raise ValueError(f"{name} holds negative id {lo} (ids must be >= 0)")


# ------------------------------------------------------- frequency estimator
def check_estimate_args(cells: Tensor, ids: Tensor, step: Tensor, log: bool, *, real: bool = True) -> None:
    """``frequency_estimate``'s arguments (no data read): one check for the op, its fake and the eager road."""
    op = "frequency_estimate"
    _checks.check(op, cells, "cells", dtypes=(torch.float64,), ndim=(3,))
    if cells.shape[0] < 1 or cells.shape[1] < 1 or cells.shape[2] != 2:
        raise ValueError(
            f"pyneg::{op}: cells must be the estimator's (num_hashes, num_buckets, 2) table with "
            f"num_hashes, num_buckets >= 1, got shape {tuple(cells.shape)}"
        )
    if not cells.is_contiguous():
        raise ValueError(f"pyneg::{op}: cells must be contiguous (the estimator's own table)")
    _checks.check(op, ids, "ids", dtypes=_checks.INT_DTYPES)
    _checks.check(op, step, "step", dtypes=(torch.int64,), shape=())
    if not isinstance(log, bool):
        raise TypeError(f"pyneg::{op}: log must be a bool, got {type(log).__name__}")
    _checks.same_device(op, [("cells", cells), ("ids", ids), ("step", step)], cpu_only=True, real=real)
    check_nbytes(tuple(ids.shape), 8, f"pyneg::{op}: the estimates of ids")


def estimate(cells: Tensor, ids: Tensor, step: int, log: bool) -> Tensor:
    """What ``frequency_estimate`` computes, callable eagerly without the dispatcher.

    The caller (the op, or FrequencyEstimator's eager road) has run
    :func:`check_estimate_args`. The kernel reads a private copy of the ids
    (checked there for negative ids): what it checks is what it reads.
    """
    arr = np.array(ids.detach().reshape(-1).numpy(), dtype=np.int64, copy=True)
    out = torch.empty(tuple(ids.shape), dtype=torch.float32)
    _core.frequency_estimate(cells.detach().numpy(), arr, step, log, out.view(-1).numpy())
    return out


@torch.library.custom_op("pyneg::frequency_estimate", mutates_args=(), device_types="cpu")
def frequency_estimate(cells: Tensor, ids: Tensor, step: Tensor, log: bool) -> Tensor:
    """Estimated probability (``log``: its log) that each id is in a step's batch.

    ``cells``: the estimator's float64 (num_hashes, num_buckets, 2) table of
    (last step, gap) cells; ``ids``: integer ids >= 0, any shape; ``step``: 0-dim
    int64 in [0, 2**53], updates so far. Each cell an id reads must be one an
    estimator can hold after ``step`` updates (a last step that is a whole number
    in [0, step], 0 for a cell never hit; a finite gap > 0 once hit): ValueError
    naming the cell otherwise.
    """
    check_estimate_args(cells, ids, step, log)
    s = int(step)
    if not 0 <= s <= MAX_STEP:
        raise ValueError(f"pyneg::frequency_estimate: step must be in [0, 2**53] (updates so far), got {s}")
    return estimate(cells, ids, s, log)


@frequency_estimate.register_fake
def _(cells: Tensor, ids: Tensor, step: Tensor, log: bool) -> Tensor:
    _checks.fake_refused(lambda: check_estimate_args(cells, ids, step, log, real=False), cells, ids, step)
    return ids.new_empty(ids.shape, dtype=torch.float32)


# --------------------------------------------------------------- memory bank
def hit_mask(entry_ids: Tensor, positive_ids: Tensor) -> Tensor:
    """What ``bank_hit_mask`` computes, callable eagerly without the dispatcher.

    The hits come from pyneg's one hit finder (:func:`pyneg._hits.find_hits`,
    the C++ hash join the softmax losses use), with its hash table built over
    the smaller side (it hashes its candidates and probes with the positives;
    the mask is symmetric in the two). With more hits than a list smaller
    than the mask can hold (a repeated id), the mask is the dense comparison.
    """
    check_hit_mask_args(entry_ids, positive_ids)
    _check_non_negative(positive_ids, "positive_ids")
    b, n = positive_ids.shape[0], entry_ids.shape[0]
    budget = b * n // _BYTES_PER_HIT
    if b < n:
        found = _hits.find_hits(positive_ids, entry_ids, budget)
        hits = None if found is None else (found[1], found[0])
    else:
        hits = _hits.find_hits(entry_ids, positive_ids, budget)
    if hits is None:
        return _hits.hit_mask(entry_ids, positive_ids)
    mask = allocate(lambda: torch.zeros((b, n), dtype=torch.bool, device=positive_ids.device), f"a ({b}, {n}) hit mask")
    if hits[0].numel():
        mask[hits[0], hits[1]] = True
    return mask


def check_hit_mask_args(entry_ids: Tensor, positive_ids: Tensor, *, real: bool = True) -> None:
    """``bank_hit_mask``'s arguments (no data read), and the size of the mask."""
    op = "bank_hit_mask"
    _checks.check(op, entry_ids, "entry_ids", dtypes=_checks.INT_DTYPES, ndim=(1,))
    _checks.check(op, positive_ids, "positive_ids", dtypes=_checks.INT_DTYPES, ndim=(1,))
    _checks.same_device(op, [("entry_ids", entry_ids), ("positive_ids", positive_ids)], real=real)
    b, n = positive_ids.shape[0], entry_ids.shape[0]
    check_nbytes((b, n), 1, "the hit mask (positive_ids x bank entries)")


@torch.library.custom_op("pyneg::bank_hit_mask", mutates_args=())
def bank_hit_mask(entry_ids: Tensor, positive_ids: Tensor) -> Tensor:
    """(B, N) bool: ``entry_ids[n] == positive_ids[b]``; positive ids must be >= 0."""
    return hit_mask(entry_ids, positive_ids)


@bank_hit_mask.register_fake
def _(entry_ids: Tensor, positive_ids: Tensor) -> Tensor:
    _checks.fake_refused(lambda: check_hit_mask_args(entry_ids, positive_ids, real=False), entry_ids, positive_ids)
    return positive_ids.new_empty((_checks.rows(positive_ids), _checks.rows(entry_ids)), dtype=torch.bool)


_checks.refuse_sparse("frequency_estimate", ("cells", "ids", "step"))
_checks.refuse_sparse("bank_hit_mask", ("entry_ids", "positive_ids"))

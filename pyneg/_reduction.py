"""How pyneg's losses turn per-row values into the returned loss, and in which dtype they run.

Shared by the losses (:mod:`pyneg.functional`), the hierarchical softmax and
the skip-gram models, so ``reduction`` and ``sample_weight`` mean the same
everywhere: "none" keeps one value per row, "sum" adds them and "mean" divides
the (weighted) sum by the number of rows.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: torch.Tensor, reduction: str, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row losses, weighted, then reduced: "mean" divides by the number of rows."""
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def check_reduction(reduction: Any) -> None:
    if isinstance(reduction, torch.Tensor):
        # Not its repr: a tensor's repr cannot be traced by torch.compile (and would print its data).
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got a tensor")
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where log-sum-exp runs: 16-bit inputs accumulate in float32."""
    return torch.float32 if dtype in LOW_PRECISION else dtype

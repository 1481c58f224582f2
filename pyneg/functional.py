"""Losses for training embeddings against sampled, in-batch and queued negatives.

Functions here take plain tensors; :mod:`pyneg.losses` wraps them as
``nn.Module``. Every loss takes ``reduction`` in {"none", "mean", "sum"}, where
"none" gives one value per query row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["negative_sampling_loss"]

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def negative_sampling_loss(
    input: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """word2vec's skip-gram negative-sampling (SGNS) loss.

    ``-log σ(u·v) - Σ_k log σ(-u·n_k)`` for each row, with ``u = input[b]``,
    ``v = positive[b]`` and ``n_k = negative[b, k]``.

    Args:
        input: (B, d) centre-word (or query) vectors.
        positive: (B, d) context (or positive item) vectors.
        negative: (B, K, d) negative vectors for each row.
        reduction: "none" (B,), "mean" or "sum".
    """
    _check_reduction(reduction)
    for t, name in ((input, "input"), (positive, "positive"), (negative, "negative")):
        _check_float(t, name)
    if input.dim() != 2:
        raise ValueError(f"input must be (B, d), got shape {tuple(input.shape)}")
    if positive.shape != input.shape:
        raise ValueError(f"positive must have input's shape {tuple(input.shape)}, got {tuple(positive.shape)}")
    if negative.dim() != 3 or negative.shape[0] != input.shape[0] or negative.shape[2] != input.shape[1]:
        raise ValueError(
            f"negative must be (B, K, d) = ({input.shape[0]}, K, {input.shape[1]}), got {tuple(negative.shape)}"
        )
    pos = (input * positive).sum(-1)
    neg = torch.bmm(negative, input.unsqueeze(-1)).squeeze(-1)
    loss = -F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)
    return _reduce(loss, reduction)

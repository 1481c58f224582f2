"""``nn.Module`` wrappers of the losses in :mod:`pyneg.functional`.

The modules hold the settings (temperature, reduction, gathering, chunking) so a
training script configures the loss once; ``forward`` takes the tensors and
per-batch data (ids, log q) exactly as the functional form does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from pyneg import functional as PF
from pyneg._deprecation import renamed_keyword
from pyneg._loss_checks import check_chunk_size, check_temperature
from pyneg._reduction import check_reduction
from pyneg._softmax import DEFAULT_CHUNK_SIZE
from pyneg._sources import NegativeSource
from pyneg._validation import check_bool

__all__ = [
    "InBatchSoftmaxLoss",
    "SampledSoftmaxLoss",
    "NCELoss",
    "MixedNegativesLoss",
    "NegativeSamplingLoss",
    "NegativeSource",
]


class _SoftmaxLoss(nn.Module):
    def __init__(
        self, *, temperature: float = 1.0, reduction: str = "mean", chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE
    ) -> None:
        super().__init__()
        # Validate now so a bad setting fails where the module is built.
        self.temperature = check_temperature(temperature)
        check_reduction(reduction)
        self.reduction = reduction
        self.chunk_size = check_chunk_size(chunk_size)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}, chunk_size={self.chunk_size}"


class _GatheringLoss(_SoftmaxLoss):
    def __init__(
        self,
        *,
        temperature: float = 1.0,
        reduction: str = "mean",
        gather: bool = False,
        group: Optional[Any] = None,
        chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(temperature=temperature, reduction=reduction, chunk_size=chunk_size)
        self.gather = check_bool(gather, "gather")
        self.group = group

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gather={self.gather}"


class InBatchSoftmaxLoss(_GatheringLoss):
    """:func:`pyneg.functional.in_batch_softmax_loss` as a module.

    Example:
        >>> import torch, pyneg
        >>> loss_fn = pyneg.losses.InBatchSoftmaxLoss(temperature=0.1)
        >>> q, c = torch.randn(8, 16), torch.randn(8, 16)
        >>> loss_fn(q, c, log_q=torch.full((8,), -3.0)).dim()
        0
    """

    def forward(
        self, query: torch.Tensor, candidate: torch.Tensor, *, log_q=None, candidate_ids=None, sample_weight=None
    ) -> torch.Tensor:
        return PF.in_batch_softmax_loss(
            query,
            candidate,
            log_q=log_q,
            candidate_ids=candidate_ids,
            temperature=self.temperature,
            reduction=self.reduction,
            gather=self.gather,
            group=self.group,
            chunk_size=self.chunk_size,
            sample_weight=sample_weight,
        )


class _SampledLoss(_SoftmaxLoss):
    """Settings of the sampled losses: those of every softmax loss and ``remove_accidental_hits``."""

    _function: Any = None

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        reduction: str = "mean",
        chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
        remove_accidental_hits: bool = True,
    ) -> None:
        super().__init__(temperature=temperature, reduction=reduction, chunk_size=chunk_size)
        self.remove_accidental_hits = check_bool(remove_accidental_hits, "remove_accidental_hits")

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        *,
        positive_log_q=None,
        negative_log_q=None,
        positive_ids=None,
        negative_ids=None,
        bias=None,
        positive_bias=None,
        negative_bias=None,
        sample_weight=None,
    ) -> torch.Tensor:
        return type(self)._function(
            query,
            positive,
            negative,
            positive_log_q=positive_log_q,
            negative_log_q=negative_log_q,
            positive_ids=positive_ids,
            negative_ids=negative_ids,
            temperature=self.temperature,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            bias=bias,
            positive_bias=positive_bias,
            negative_bias=negative_bias,
            sample_weight=sample_weight,
            remove_accidental_hits=self.remove_accidental_hits,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", remove_accidental_hits={self.remove_accidental_hits}"


class SampledSoftmaxLoss(_SampledLoss):
    """:func:`pyneg.functional.sampled_softmax_loss` as a module."""

    _function = staticmethod(PF.sampled_softmax_loss)


class NCELoss(_SampledLoss):
    """:func:`pyneg.functional.nce_loss` (TensorFlow's ``nce_loss``) as a module.

    Example:
        >>> import torch, pyneg
        >>> loss_fn = pyneg.losses.NCELoss()
        >>> q, pos, neg = torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)
        >>> loss_fn(q, pos, neg, negative_log_q=torch.full((32,), -2.0)).dim()
        0
    """

    _function = staticmethod(PF.nce_loss)


class MixedNegativesLoss(_GatheringLoss):
    """:func:`pyneg.functional.mixed_negatives_loss` as a module."""

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        sources: Sequence[NegativeSource],
        *,
        positive_ids=None,
        positive_log_q=None,
        sample_weight=None,
    ) -> torch.Tensor:
        return PF.mixed_negatives_loss(
            query,
            positive,
            sources,
            positive_ids=positive_ids,
            positive_log_q=positive_log_q,
            temperature=self.temperature,
            reduction=self.reduction,
            gather=self.gather,
            group=self.group,
            chunk_size=self.chunk_size,
            sample_weight=sample_weight,
        )


class NegativeSamplingLoss(nn.Module):
    """:func:`pyneg.functional.negative_sampling_loss` (word2vec's SGNS) as a module."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    @renamed_keyword("input", "query")
    def forward(
        self, query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, sample_weight=None
    ) -> torch.Tensor:
        return PF.negative_sampling_loss(
            query, positive, negative, reduction=self.reduction, sample_weight=sample_weight
        )

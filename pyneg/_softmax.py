"""The private engine of pyneg's softmax losses: in-batch, sampled and mixed negatives.

Every softmax loss here is one formula. Row i has a positive logit
    s⁺_i = q_i·p_i / T − log q⁺_i
and negative logits from one or more blocks of candidates,
    s_ij = q_i·e_j / T − log q_j        (−inf when column j is masked)
and the loss is  logsumexp(s⁺_i, s_i·) − s⁺_i,  i.e. softmax cross-entropy
with the positive in column 0. A column is masked when it is row i's own
positive (the diagonal of an in-batch block) or an accidental hit (its id
equals row i's positive id). log q is a constant: it never gets a gradient.

A block shared by all rows collapses to one logsumexp column computed by the
operator ``torch.ops.pyneg.softmax_block_lse`` (:mod:`pyneg._ops.softmax`),
chunk by chunk; per-row blocks are (B, N) logits in plain autograd. Nothing
here reads tensor values, so the losses trace into one graph.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

import pyneg._ops.softmax  # noqa: F401  (registers torch.ops.pyneg.softmax_*)
from pyneg._hits import hit_mask
from pyneg._reduction import acc_dtype, reduce_loss

# Columns of a block scored at a time. Measured on the 2-core reference machine
# (B = 4,096, 65,536 bank entries, d = 128, fwd+bwd): 460 MiB peak against
# 1,204 MiB for all columns at once, for about 1.5x the time when idle (about
# the same time under load); blocks of up to this many columns (any in-batch
# block of a normal batch) are scored in one go.
DEFAULT_CHUNK_SIZE = 8192


def check_temperature_fits(temperature: float, dtype: torch.dtype) -> None:
    """Refuses a temperature whose reciprocal overflows ``dtype``, the dtype the logits are computed in.

    ``query / temperature`` would then be inf for every nonzero query and the
    loss NaN (inf - inf) where the float64 value is finite: such a temperature
    is refused by name instead (float32: below about 2.94e-39; float64 inputs
    accept anything down to about 5.6e-309).
    """
    smallest = 1.0 / torch.finfo(dtype).max
    if temperature < smallest:
        raise ValueError(
            f"temperature={temperature!r} is too small for {str(dtype).replace('torch.', '')} logits: "
            f"1 / temperature overflows {str(dtype).replace('torch.', '')} (the smallest temperature it "
            f"can score is {smallest:.4g}); use a larger temperature, or float64 inputs"
        )


class Block(NamedTuple):
    """One block of negative columns, validated, for :func:`softmax_loss`."""

    emb: torch.Tensor  # (N, d), or (B, N, d) for per-row negatives
    log_q: Optional[torch.Tensor]  # (N,) / (B, N), acc dtype, detached
    ids: Optional[torch.Tensor]  # (N,) / (B, N), compared with the rows' positive ids
    diag: Optional[int] = None  # column diag + i is row i's own positive: masked
    bias: Optional[torch.Tensor] = None  # (N,) / (B, N) added to the logits; gets a gradient
    pad: Optional[torch.Tensor] = None  # (B, N) per-row padding (mined negatives): masked


def _block_lse(
    query: torch.Tensor,
    block: Block,
    row_ids: Optional[torch.Tensor],
    temperature: float,
    chunk_size: Optional[int],
    nce: bool,
) -> torch.Tensor:
    """(B,) logsumexp (Σ softplus for NCE) of a shared block's masked logits: ``pyneg::softmax_block_lse``.

    Scored by chunks of ``chunk_size`` columns (None: all at once); the shift
    bias − log q enters the op as one (N,) tensor, so the bias gets its gradient
    through autograd and log q (detached) none.
    """
    shift = None if block.log_q is None else -block.log_q
    if block.bias is not None:
        shift = block.bias if shift is None else block.bias + shift
    n = block.emb.shape[0]
    out, _ = torch.ops.pyneg.softmax_block_lse(
        query / temperature, block.emb, shift, block.ids, row_ids, block.diag, chunk_size or n, nce
    )
    return out


def _per_row_scores(
    query: torch.Tensor, block: Block, row_ids: Optional[torch.Tensor], temperature: float
) -> torch.Tensor:
    """(B, N) corrected, masked logits of per-row negatives (B, N, d) (plain autograd)."""
    s = torch.bmm(block.emb, query.unsqueeze(-1)).squeeze(-1) / temperature
    if block.log_q is not None:
        s = s - block.log_q
    if block.bias is not None:
        s = s + block.bias
    if block.ids is not None and row_ids is not None:
        s = s.masked_fill(hit_mask(block.ids, row_ids), -math.inf)
    if block.pad is not None:
        s = s.masked_fill(block.pad, -math.inf)
    return s


def _to_acc(
    query: torch.Tensor, positive: torch.Tensor, positive_bias: Optional[torch.Tensor], blocks: Sequence[Block]
):
    """16-bit inputs go to float32 (through autograd, so gradients come back in their dtype)."""
    acc = acc_dtype(query.dtype)
    if acc == query.dtype:
        return query, positive, positive_bias, list(blocks)

    def up(t):
        return None if t is None else t.to(acc)

    blocks = [b._replace(emb=b.emb.to(acc), bias=up(b.bias)) for b in blocks]
    return query.to(acc), positive.to(acc), up(positive_bias), blocks


def _positive_logits(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_log_q: Optional[torch.Tensor],
    positive_bias: Optional[torch.Tensor],
    temperature: float,
) -> torch.Tensor:
    """(B, T) logits of the positives: query·p / temperature + bias − log q (T = 1 for (B, d))."""
    if positive.dim() == 2:
        pos = (query * positive).sum(-1, keepdim=True) / temperature
    else:
        pos = (query.unsqueeze(1) * positive).sum(-1) / temperature
    if positive_log_q is not None:
        pos = pos - positive_log_q.reshape(pos.shape)
    if positive_bias is not None:
        pos = pos + positive_bias.reshape(pos.shape)
    return pos


def softmax_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_log_q: Optional[torch.Tensor],
    blocks: Sequence[Block],
    row_ids: Optional[torch.Tensor],
    temperature: float,
    chunk_size: Optional[int],
    reduction: str,
    *,
    positive_bias: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Softmax cross-entropy with the positives first, ``blocks`` as the negatives.

    With T positives per row (``positive`` (B, T, d)) each has label 1/T:
    loss = logsumexp(all logits) − mean_t(s⁺_t).
    """
    query, positive, positive_bias, blocks = _to_acc(query, positive, positive_bias, blocks)
    check_temperature_fits(temperature, query.dtype)
    pos = _positive_logits(query, positive, positive_log_q, positive_bias, temperature)
    # Each shared block collapses to its own logsumexp column: the final
    # logsumexp over [pos, lse_1, ..., per-row logits] is the full softmax.
    columns = [pos]
    for b in blocks:
        if b.emb.shape[-2] == 0:
            continue
        if b.emb.dim() == 3:
            columns.append(_per_row_scores(query, b, row_ids, temperature))
        else:
            columns.append(_block_lse(query, b, row_ids, temperature, chunk_size, nce=False).unsqueeze(1))
    logits = torch.cat(columns, 1)
    loss = torch.logsumexp(logits, 1) - pos.mean(1)  # pos is finite, so no row is all −inf
    return reduce_loss(loss, reduction, weight)


def sigmoid_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_log_q: Optional[torch.Tensor],
    block: Block,
    row_ids: Optional[torch.Tensor],
    temperature: float,
    chunk_size: Optional[int],
    reduction: str,
    *,
    positive_bias: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sigmoid cross-entropy: label 1/T on each of the T positives, 0 on each (unmasked) negative."""
    query, positive, positive_bias, (block,) = _to_acc(query, positive, positive_bias, [block])
    check_temperature_fits(temperature, query.dtype)
    pos = _positive_logits(query, positive, positive_log_q, positive_bias, temperature)
    t = pos.shape[1]
    # z·softplus(−s) + (1 − z)·softplus(s) with z = 1/T; softplus(x) = −log σ(−x).
    loss = -F.logsigmoid(pos).sum(1)
    if t > 1:
        loss = loss / t - F.logsigmoid(-pos).sum(1) * ((t - 1) / t)
    if block.emb.shape[-2] == 0:
        pass
    elif block.emb.dim() == 3:
        loss = loss - F.logsigmoid(-_per_row_scores(query, block, row_ids, temperature)).sum(1)
    else:
        loss = loss + _block_lse(query, block._replace(diag=None), row_ids, temperature, chunk_size, nce=True)
    return reduce_loss(loss, reduction, weight)

"""The private engine of pyneg's softmax losses: blocks of negatives scored by chunks.

Softmax losses: in-batch, sampled and mixed negatives.

Every softmax loss here is one formula. Row i has a positive logit
    s⁺_i = q_i·p_i / T − log q⁺_i
and negative logits from one or more blocks of candidates,
    s_ij = q_i·e_j / T − log q_j        (−inf when column j is masked)
and the loss is  logsumexp(s⁺_i, s_i·) − s⁺_i,  i.e. softmax cross-entropy
with the positive in column 0. A column is masked when it is row i's own
positive (the diagonal of an in-batch block) or an accidental hit (its id
equals row i's positive id). log q is a constant: it never gets a gradient.

"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pyneg import _hits
from pyneg._hits import DENSE, block_dense_mask_, block_hits
from pyneg._reduction import acc_dtype, reduce_loss

# Columns of a block scored at a time. Measured on the 2-core reference machine
# (B = 4,096, 65,536 bank entries, d = 128, fwd+bwd): 460 MiB peak against
# 1,204 MiB for all columns at once, for about 1.5x the time when idle (about
# the same time under load); blocks of up to this many columns (any in-batch
# block of a normal batch) are scored in one go.
DEFAULT_CHUNK_SIZE = 8192


class Block(NamedTuple):
    """One block of negative columns, validated, for :func:`softmax_loss`."""

    emb: torch.Tensor  # (N, d), or (B, N, d) for per-row negatives
    log_q: Optional[torch.Tensor]  # (N,) / (B, N), acc dtype, detached
    ids: Optional[torch.Tensor]  # (N,) / (B, N), compared with the rows' positive ids
    diag: Optional[int] = None  # column diag + i is row i's own positive: masked
    bias: Optional[torch.Tensor] = None  # (N,) / (B, N) added to the logits; gets a gradient
    pad: Optional[torch.Tensor] = None  # (B, N) per-row padding (mined negatives): masked


def _block_scores(
    qs: torch.Tensor,
    emb: torch.Tensor,
    shift: Optional[torch.Tensor],
    hits: Optional[Tuple[torch.Tensor, torch.Tensor]],
    start: int,
    total: int,
) -> torch.Tensor:
    """Corrected, masked logits of the columns ``start..start+len(emb)`` of a shared block of ``total``.

    ``qs`` is query / temperature, so scaling costs O(B d), not O(B N); the
    per-column shift (bias − log q) is the matmul's bias (one pass over the
    (B, n) output). Inputs are already in the accumulation dtype.
    """
    if shift is None:
        s = qs @ emb.t()
    else:
        s = torch.addmm(shift.unsqueeze(0), qs, emb.t())
    if hits is not None:
        rows, cols = hits
        if start or emb.shape[0] < total:  # a chunk: only its own hits
            keep = (cols >= start) & (cols < start + emb.shape[0])
            rows, cols = rows[keep], cols[keep] - start
        s[rows, cols] = -math.inf
    return s


def _exp_normalise_(s: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """In place: s ← exp(s − rowmax), or the row softmax when ``normalise``. Returns each row's logsumexp.

    Works through blocks of rows of about 1 MiB so that the max, exp, sum and
    division passes run in cache rather than streaming the whole (B, n) matrix
    from memory four times. Rows that are all −inf get logsumexp −inf (and
    zeros instead of a softmax).
    """
    b, n = s.shape
    lse = s.new_empty(b)
    step = max(1, (1 << 18) // max(n, 1))
    for r in range(0, b, step):
        t = s[r : r + step]
        m = t.amax(1, keepdim=True)
        m = _finite_or_zero(m)
        t.sub_(m).exp_()
        z = t.sum(1, keepdim=True)
        if normalise:
            t.div_(z.clamp_min(torch.finfo(z.dtype).tiny))
        torch.add(z.log(), m, out=lse[r : r + step].unsqueeze(1))
    return lse


def _softplus_sum(s: torch.Tensor) -> torch.Tensor:
    """Σ_j softplus(s_ij) = Σ_j −log σ(−s_ij) per row, exactly (−inf entries add 0).

    By blocks of rows of about 1 MiB, as in :func:`_exp_normalise_`: the
    temporaries stay in cache instead of adding two (B, n) matrices to the
    peak memory. Not differentiable (the autograd Function's forward).
    """
    b, n = s.shape
    out = s.new_empty(b)
    step = max(1, (1 << 18) // max(n, 1))
    for r in range(0, b, step):
        torch.sum(F.logsigmoid(s[r : r + step].neg()), 1, out=out[r : r + step])
    return out.neg_()


class _BlockLogSumExp(torch.autograd.Function):
    """logsumexp (or, for NCE, Σ softplus) over the columns of a shared block of negatives, by chunks.

    Forward keeps a running reduction over chunks of ``chunk_size`` columns,
    so at most (B, chunk_size) logits exist at a time; backward recomputes each
    chunk's logits (one extra matmul) to form the weights of each logit's
    gradient: the softmax for logsumexp, σ(s) for Σ softplus(s). With a single
    chunk those weights are kept from the forward instead (the memory autograd
    would hold anyway) and nothing is recomputed. Rows whose columns are all
    masked have logsumexp −inf and get zero gradient (autograd's logsumexp
    would give NaN there); masked logits add 0 to Σ softplus. ``bias`` (N,) is
    added to the logits and gets the gradient Σ_i grad_i · weight_ij.
    """

    @staticmethod
    def forward(
        ctx,
        query,
        emb,
        log_q,
        ids,
        row_ids,
        diag,
        temperature,
        chunk_size,  # type: ignore[override]
        bias=None,
        nce=False,
    ):
        n, b = emb.shape[0], query.shape[0]
        qs = query / temperature
        shift = None if log_q is None else -log_q
        if bias is not None:
            shift = bias.detach() if shift is None else shift + bias.detach()
        # Many hits (a tiny catalogue, a repeated id): a dense (B, n) mask is
        # smaller than the hit list, which is then never built.
        hits = block_hits(ids, row_ids, diag, b, query.device, max_pairs=int(_hits.DENSE_MASK_FRACTION * b * n))
        dense = hits is DENSE
        if dense:
            hits = None
        ctx.dense = dense
        probs = None
        if chunk_size >= n:
            s = _block_scores(qs, emb, shift, hits, 0, n)
            if dense:
                block_dense_mask_(s, ids, row_ids, diag, 0)
            if nce:
                out = _softplus_sum(s)
                probs = s.sigmoid_()
            else:
                out = _exp_normalise_(s, normalise=True)
                probs = s  # the softmax, in the logits' buffer
        else:
            out = None
            for start in range(0, n, chunk_size):
                s = _block_scores(qs, emb[start : start + chunk_size], _rows(shift, start, chunk_size), hits, start, n)
                if dense:
                    block_dense_mask_(s, ids, row_ids, diag, start)
                if nce:
                    part = _softplus_sum(s)
                    out = part if out is None else out.add_(part)
                else:
                    part = _exp_normalise_(s)
                    out = part if out is None else torch.logaddexp(out, part)
        hr, hc = hits if hits is not None else (None, None)
        ctx.save_for_backward(query, emb, out, probs, shift, ids, row_ids, hr, hc)
        ctx.args = (diag, temperature, chunk_size, nce)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        query, emb, out, probs, shift, ids, row_ids, hr, hc = ctx.saved_tensors
        diag, temperature, chunk_size, nce = ctx.args
        hits = None if hr is None else (hr, hc)
        need_q, need_e, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[8]
        # d lse_i / d s_ij = softmax_ij; rows with lse = −inf have no column to weigh.
        if not nce:
            grad = torch.where(torch.isfinite(out), grad, torch.zeros_like(grad))
        grad = grad.to(query.dtype)
        w = (grad / temperature).unsqueeze(1)
        wq = query * w if need_e else None
        grad_q = torch.zeros_like(query) if need_q else None
        grad_e = torch.empty_like(emb) if need_e else None
        grad_b = query.new_empty(emb.shape[0]) if need_b else None
        n = emb.shape[0]
        qs = query / temperature if probs is None else None
        step = n if probs is not None else chunk_size
        for start in range(0, n, step):
            stop = min(start + step, n)
            if probs is not None:  # left intact: backward may run again with retain_graph
                p = probs
            else:
                s = _block_scores(qs, emb[start:stop], _rows(shift, start, step), hits, start, n)
                if ctx.dense:
                    block_dense_mask_(s, ids, row_ids, diag, start)
                p = s.sigmoid_() if nce else s.sub_(_finite_or_zero(out).unsqueeze(1)).exp_()
            if need_q:
                grad_q.add_((p @ emb[start:stop]).mul_(w))
            if need_e:
                torch.mm(p.t(), wq, out=grad_e[start:stop])
            if need_b:
                torch.mv(p.t(), grad, out=grad_b[start:stop])
        return grad_q, grad_e, None, None, None, None, None, None, grad_b, None


def _rows(t: Optional[torch.Tensor], start: int, size: int) -> Optional[torch.Tensor]:
    return None if t is None else t[start : start + size]


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


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
        if row_ids.dim() == 1:
            hit = block.ids == row_ids.unsqueeze(1)
        else:  # (B, N, T): equal to any of the row's positives
            hit = (block.ids.unsqueeze(-1) == row_ids.unsqueeze(1)).any(-1)
        s = s.masked_fill(hit, -math.inf)
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
            lse = _BlockLogSumExp.apply(
                query, b.emb, b.log_q, b.ids, row_ids, b.diag, temperature, chunk_size or b.emb.shape[0], b.bias, False
            )
            columns.append(lse.unsqueeze(1))
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
        loss = loss + _BlockLogSumExp.apply(
            query,
            block.emb,
            block.log_q,
            block.ids,
            row_ids,
            None,
            temperature,
            chunk_size or block.emb.shape[0],
            block.bias,
            True,
        )
    return reduce_loss(loss, reduction, weight)

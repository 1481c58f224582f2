"""Losses for training embeddings against sampled, in-batch and queued negatives.

Functions here take plain tensors; :mod:`pyneg.losses` wraps them as
``nn.Module``. Every loss takes ``reduction`` in {"none", "mean", "sum"}, where
"none" gives one value per query row, and ``sample_weight``, one weight
``w_i >= 0`` per row: "none" gives ``w_i · l_i``, "sum" ``Σ w_i · l_i`` and
"mean" ``Σ w_i · l_i / B`` (Keras' convention: the batch size divides, not the
sum of the weights).

16-bit inputs (float16, bfloat16) are scored in float32 and the loss is
returned in float32, so a loss or logit beyond float16's range (tiny
temperatures) stays finite; gradients reach the inputs in their own dtype.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pyneg._validation import ArrayLike, as_tensor, check_bool, check_int, check_tensor
from pyneg.distributed import _raise_if_any_rank_failed, all_gather, all_gather_with_grad, rank_offset

__all__ = [
    "negative_sampling_loss",
    "in_batch_softmax_loss",
    "sampled_softmax_loss",
    "nce_loss",
    "mixed_negatives_loss",
    "compute_accidental_hits",
    "NegativeSource",
]

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: torch.Tensor, reduction: str, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row losses, weighted, then reduced: "mean" divides by the number of rows."""
    if weight is not None:
        loss = loss * weight
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction: Any) -> None:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_tensor(t, name)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_weight(weight: Any, rows: int, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """None, or ``sample_weight`` as a (rows,) tensor of finite weights >= 0 in ``dtype``.

    Weights may require grad (they multiply the per-row losses); NumPy and list
    inputs are copied, since autograd saves the weights for the backward pass.
    """
    if weight is None:
        return None
    t = _as_data(weight, "sample_weight", device)
    if not isinstance(weight, torch.Tensor):
        t = t.clone()
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"sample_weight must hold real numbers, got {t.dtype}")
    if tuple(t.shape) != (rows,):
        raise ValueError(f"sample_weight must have shape ({rows},), one weight per row, got {tuple(t.shape)}")
    if t.numel():
        if not bool(torch.isfinite(t).all()):
            raise ValueError("sample_weight must be finite")
        if bool((t < 0).any()):
            raise ValueError(f"sample_weight must be >= 0, got {float(t.min())}")
    return t.to(dtype)


def negative_sampling_loss(
    input: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    reduction: str = "mean",
    *,
    sample_weight: Optional[ArrayLike] = None,
) -> torch.Tensor:
    """word2vec's skip-gram negative-sampling (SGNS) loss.

    ``-log σ(u·v) - Σ_k log σ(-u·n_k)`` for each row, with ``u = input[b]``,
    ``v = positive[b]`` and ``n_k = negative[b, k]``. This is :func:`nce_loss`
    with log Q = 0, no biases and no accidental-hit removal.

    Args:
        input: (B, d) centre-word (or query) vectors, B >= 1.
        positive: (B, d) context (or positive item) vectors, same dtype and device.
        negative: (B, K, d) negative vectors for each row, same dtype and device.
        reduction: "none" (B,), "mean" or "sum".
        sample_weight: (B,) weights >= 0 of the rows (see the module docs for
            how they combine with ``reduction``).

    Returns:
        The loss, in input's dtype (float32 for 16-bit inputs).
    """
    _check_reduction(reduction)
    for t, name in ((input, "input"), (positive, "positive"), (negative, "negative")):
        _check_float(t, name)
    if input.dim() != 2:
        raise ValueError(f"input must be (B, d), got shape {tuple(input.shape)}")
    if input.shape[0] == 0:
        raise ValueError("input must have at least one row")
    if positive.shape != input.shape:
        raise ValueError(f"positive must have input's shape {tuple(input.shape)}, got {tuple(positive.shape)}")
    if negative.dim() != 3 or negative.shape[0] != input.shape[0] or negative.shape[2] != input.shape[1]:
        raise ValueError(
            f"negative must be (B, K, d) = ({input.shape[0]}, K, {input.shape[1]}), got {tuple(negative.shape)}"
        )
    for t, name in ((positive, "positive"), (negative, "negative")):
        if t.dtype != input.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but input has {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    acc = _acc_dtype(input.dtype)
    weight = _check_weight(sample_weight, input.shape[0], input.device, acc)
    input, positive, negative = input.to(acc), positive.to(acc), negative.to(acc)
    pos = (input * positive).sum(-1)
    # Broadcast-multiply-and-sum rather than bmm: a batch of matrix-vector
    # products is several times slower in bmm's forward+backward on the CPU.
    neg = (negative * input.unsqueeze(1)).sum(-1)
    loss = -F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)
    return _reduce(loss, reduction, weight)


# --------------------------------------------------------------------------
# Softmax losses: in-batch, sampled and mixed negatives.
#
# Every softmax loss here is one formula. Row i has a positive logit
#     s⁺_i = q_i·p_i / T − log q⁺_i
# and negative logits from one or more blocks of candidates,
#     s_ij = q_i·e_j / T − log q_j        (−inf when column j is masked)
# and the loss is  logsumexp(s⁺_i, s_i·) − s⁺_i,  i.e. softmax cross-entropy
# with the positive in column 0. A column is masked when it is row i's own
# positive (the diagonal of an in-batch block) or an accidental hit (its id
# equals row i's positive id). log q is a constant: it never gets a gradient.
# --------------------------------------------------------------------------

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Columns of a block scored at a time. Measured on the 2-core reference machine
# (B = 4,096, 65,536 bank entries, d = 128, fwd+bwd): 460 MiB peak against
# 1,204 MiB for all columns at once, for about 1.5x the time when idle (about
# the same time under load); blocks of up to this many columns (any in-batch
# block of a normal batch) are scored in one go.
DEFAULT_CHUNK_SIZE = 8192
# Above this fraction of masked entries a block is masked with a dense (B, n)
# comparison instead of a list of (row, column) hits (16 bytes per hit, about
# 48 while the list is built): the list then stays within 3x the mask's size.
_DENSE_MASK_FRACTION = 1 / 16
_DENSE = "dense"  # what _hit_pairs returns instead of a list longer than max_pairs


# Unsigned id dtypes torch cannot compare or reduce everywhere: converted to int64.
_WIDE_UNSIGNED = tuple(getattr(torch, n) for n in ("uint16", "uint32") if hasattr(torch, n))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where log-sum-exp runs: 16-bit inputs accumulate in float32."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a positive float, got {type(temperature).__name__} "
            "(for a learned temperature, scale query instead)"
        )
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return t


def _check_chunk_size(chunk_size: Optional[int]) -> Optional[int]:
    return None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)


def _check_query(query: torch.Tensor) -> None:
    _check_float(query, "query")
    if query.dim() != 2:
        raise ValueError(f"query must be (B, d), got shape {tuple(query.shape)}")
    if query.shape[0] == 0:
        raise ValueError("query must have at least one row")


def _check_embeddings(
    t: Any,
    name: str,
    query: torch.Tensor,
    *,
    rows: Optional[int] = None,
    per_row_ok: bool = False,
    per_row_name: str = "N",
) -> torch.Tensor:
    """(N, d) (or (B, N, d) when per_row_ok) with query's d, dtype and device."""
    _check_float(t, name)
    d = query.shape[1]
    if t.dim() == 2 and t.shape[1] == d and (rows is None or t.shape[0] == rows):
        pass
    elif per_row_ok and t.dim() == 3 and t.shape[0] == query.shape[0] and t.shape[2] == d:
        pass
    else:
        want = f"({rows if rows is not None else 'N'}, {d})"
        if per_row_ok:
            want += f" or ({query.shape[0]}, {per_row_name}, {d})"
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.dtype != query.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but query has {query.dtype}")
    if t.device != query.device:
        raise ValueError(f"{name} is on {t.device} but query is on {query.device}")
    return t


def _as_data(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """Tensors stay where they are (a wrong device is an error); arrays go to ``device``."""
    if isinstance(x, torch.Tensor):
        check_tensor(x, name)
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but query is on {device}")
        return x
    return as_tensor(x, name).to(device)


def _check_ids(ids: Any, name: str, shape: Tuple[int, ...], device: torch.device) -> Optional[torch.Tensor]:
    """None, or an integer tensor of ``shape`` on ``device`` holding ids >= 0."""
    if ids is None:
        return None
    t = _as_data(ids, name, device)
    if not isinstance(ids, torch.Tensor) and t.device.type == "cpu":
        # NumPy memory is wrapped, not copied, and autograd cannot see writes to it; the
        # backward pass may rebuild the mask from these ids.
        t = t.clone()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype == getattr(torch, "uint64", None):  # reinterpreted, ids past 2**63 are negative
        t = t.view(torch.int64)
        if t.numel() and bool((t < 0).any()):
            raise ValueError(f"{name} holds an id >= 2**63 (ids are compared as int64)")
    elif t.dtype in _WIDE_UNSIGNED:
        t = t.to(torch.int64)
    if t.numel() and bool((t < 0).any()):
        raise ValueError(f"{name} holds a negative id ({int(t.min())}); ids must be >= 0")
    return t.detach()


def _check_log_q(
    log_q: Any, name: str, shape: Tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Optional[torch.Tensor]:
    """None, or a finite float tensor of ``shape``, detached, in the logits' dtype."""
    if log_q is None:
        return None
    t = _as_data(log_q, name, device)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite (log-probabilities of items that can be drawn)")
    return t.detach().to(dtype)


@dataclass
class _Block:
    """One block of negative columns, validated, for :func:`_softmax_loss`."""

    emb: torch.Tensor  # (N, d), or (B, N, d) for per-row negatives
    log_q: Optional[torch.Tensor]  # (N,) / (B, N), acc dtype, detached
    ids: Optional[torch.Tensor]  # (N,) / (B, N), compared with the rows' positive ids
    diag: Optional[int] = None  # column diag + i is row i's own positive: masked
    bias: Optional[torch.Tensor] = None  # (N,) / (B, N) added to the logits; gets a gradient
    pad: Optional[torch.Tensor] = None  # (B, N) per-row padding (mined negatives): masked


def _hit_pairs(
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    b: int,
    dev: torch.device,
    max_pairs: Optional[int] = None,
) -> Any:
    """(rows, columns) of the masked entries of a block, or None when there are none to mask.

    Accidental hits are few (an id recurs in a handful of columns), so they are
    found by sorting the block's ids and binary-searching each row's id:
    O((N + B) log N + hits) instead of a dense (B, N) comparison. The hits are
    counted before any is listed: with more than ``max_pairs`` of them (a
    repeated id: padding, a popular item) nothing is listed and ``_DENSE`` is
    returned, so the lists never outgrow the dense mask they stand for.
    """
    rows, cols = [], []
    if ids is not None and row_ids is not None and ids.numel():
        sorted_ids, perm = torch.sort(ids)
        lo = torch.searchsorted(sorted_ids, row_ids, right=False)
        counts = torch.searchsorted(sorted_ids, row_ids, right=True) - lo
        total = int(counts.sum())
        if max_pairs is not None and total + (0 if diag is None else b) > max_pairs:
            return _DENSE
        if total:
            rows.append(torch.repeat_interleave(torch.arange(b, device=dev), counts))
            first = torch.repeat_interleave(lo - (counts.cumsum(0) - counts), counts)
            cols.append(perm[first + torch.arange(total, device=dev)])
    if diag is not None:
        r = torch.arange(b, device=dev)
        rows.append(r)
        cols.append(r + diag)
    if not rows:
        return None
    return torch.cat(rows), torch.cat(cols)


def _block_hits(
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    b: int,
    dev: torch.device,
    max_pairs: Optional[int] = None,
) -> Any:
    """:func:`_hit_pairs` for rows with one positive id (B,) or several (B, T): a column that
    equals any of row i's positive ids is masked for row i (a pair may be listed twice).
    ``_DENSE`` when all T lists together would exceed ``max_pairs``."""
    if row_ids is None or row_ids.dim() == 1:
        return _hit_pairs(ids, row_ids, diag, b, dev, max_pairs=max_pairs)
    parts, listed = [], 0
    for t in range(row_ids.shape[1]):
        budget = None if max_pairs is None else max_pairs - listed
        h = _hit_pairs(ids, row_ids[:, t].contiguous(), diag if t == 0 else None, b, dev, max_pairs=budget)
        if h is _DENSE:
            return _DENSE
        if h is not None:
            parts.append(h)
            listed += h[0].numel()
    if not parts:
        return None
    return torch.cat([h[0] for h in parts]), torch.cat([h[1] for h in parts])


def _block_dense_mask_(s: torch.Tensor, ids, row_ids, diag: Optional[int], start: int) -> None:
    """:func:`_dense_mask_` for one (B,) or several (B, T) positive ids per row."""
    if row_ids is None or row_ids.dim() == 1:
        _dense_mask_(s, ids, row_ids, diag, start)
        return
    for t in range(row_ids.shape[1]):
        _dense_mask_(s, ids, row_ids[:, t], diag if t == 0 else None, start)


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
        hits = _block_hits(ids, row_ids, diag, b, query.device, max_pairs=int(_DENSE_MASK_FRACTION * b * n))
        dense = hits is _DENSE
        if dense:
            hits = None
        ctx.dense = dense
        probs = None
        if chunk_size >= n:
            s = _block_scores(qs, emb, shift, hits, 0, n)
            if dense:
                _block_dense_mask_(s, ids, row_ids, diag, 0)
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
                    _block_dense_mask_(s, ids, row_ids, diag, start)
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
                    _block_dense_mask_(s, ids, row_ids, diag, start)
                p = s.sigmoid_() if nce else s.sub_(_finite_or_zero(out).unsqueeze(1)).exp_()
            if need_q:
                grad_q.add_((p @ emb[start:stop]).mul_(w))
            if need_e:
                torch.mm(p.t(), wq, out=grad_e[start:stop])
            if need_b:
                torch.mv(p.t(), grad, out=grad_b[start:stop])
        return grad_q, grad_e, None, None, None, None, None, None, grad_b, None


def _dense_mask_(s: torch.Tensor, ids, row_ids, diag: Optional[int], start: int) -> None:
    """The (B, n) comparison mask, for blocks whose ids repeat so much that hit lists would be larger."""
    n = s.shape[1]
    if ids is not None and row_ids is not None:
        s.masked_fill_(ids[start : start + n].unsqueeze(0) == row_ids.unsqueeze(1), -math.inf)
    if diag is not None:
        r = torch.arange(s.shape[0], device=s.device)
        c = r + (diag - start)
        ok = (c >= 0) & (c < n)
        s[r[ok], c[ok]] = -math.inf


def _rows(t: Optional[torch.Tensor], start: int, size: int) -> Optional[torch.Tensor]:
    return None if t is None else t[start : start + size]


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _per_row_scores(
    query: torch.Tensor, block: _Block, row_ids: Optional[torch.Tensor], temperature: float
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
    query: torch.Tensor, positive: torch.Tensor, positive_bias: Optional[torch.Tensor], blocks: Sequence[_Block]
):
    """16-bit inputs go to float32 (through autograd, so gradients come back in their dtype)."""
    acc = _acc_dtype(query.dtype)
    if acc == query.dtype:
        return query, positive, positive_bias, list(blocks)

    def up(t):
        return None if t is None else t.to(acc)

    blocks = [dataclasses.replace(b, emb=b.emb.to(acc), bias=up(b.bias)) for b in blocks]
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


def _softmax_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_log_q: Optional[torch.Tensor],
    blocks: Sequence[_Block],
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
    return _reduce(loss, reduction, weight)


def _nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_log_q: Optional[torch.Tensor],
    block: _Block,
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
    return _reduce(loss, reduction, weight)


def _checked_before_gather(
    check: Callable[[], Any], gather: bool, group, flags: Callable[[Any], Dict[str, bool]]
) -> Any:
    """Runs a loss's checks; with ``gather`` every rank learns whether all passed before any gather.

    A rank whose checks raise (any exception) would otherwise leave the others
    waiting in the gather; ranks that disagree on ``flags(result)`` (which of ids
    and log q they gather) would run different collectives.
    """
    if not gather:
        return check()
    try:
        result = check()
    except Exception as exc:  # every rank must hear of it; the helper re-raises exc here
        _raise_if_any_rank_failed(exc, group)
    _raise_if_any_rank_failed(None, group, flags=flags(result))
    return result


def _gather_batch(
    candidate: torch.Tensor, ids: Optional[torch.Tensor], log_q: Optional[torch.Tensor], group
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """The global batch: every rank's candidates (with gradient), ids and log q, and our row offset."""
    offset = rank_offset(candidate.shape[0], group, device=candidate.device)
    candidate = all_gather_with_grad(candidate, group)
    ids = None if ids is None else all_gather(ids, group)
    log_q = None if log_q is None else all_gather(log_q, group)
    return candidate, ids, log_q, offset


def in_batch_softmax_loss(
    query: torch.Tensor,
    candidate: torch.Tensor,
    *,
    log_q: Optional[ArrayLike] = None,
    candidate_ids: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    gather: bool = False,
    group: Optional[Any] = None,
    chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
    sample_weight: Optional[ArrayLike] = None,
) -> torch.Tensor:
    """Softmax loss with in-batch negatives and the logQ correction (Yi et al., 2019).

    Row ``i``'s positive is ``candidate[i]``; every other row's candidate is a
    negative. The logit of column ``j`` is ``query[i]·candidate[j] / temperature
    − log_q[j]`` (the correction applies to the positive too), and a column
    ``j != i`` whose id equals row ``i``'s id is an accidental hit: it is masked
    out (logit −inf), never treated as a negative.

    Args:
        query: (B, d) query embeddings.
        candidate: (B, d) candidate embeddings, same dtype and device.
        log_q: (B,) log-probability that each candidate lands in a batch (e.g.
            :meth:`pyneg.FrequencyEstimator.log_prob`); treated as a constant.
        candidate_ids: (B,) integer ids >= 0 for accidental-hit masking.
        temperature: logits are dot products divided by it (> 0).
        reduction: "none" (B,), "mean" or "sum".
        gather: score each rank's queries against the candidates of every rank
            (the global batch) when ``torch.distributed`` is initialised; log q
            and ids are gathered too. Each rank's loss is the mean over its own
            rows; ``DistributedDataParallel`` averages gradients over ranks, so
            with equal per-rank batches training follows the mean over the
            global batch exactly (with unequal batches weight rank ``r``'s mean
            by ``b_r · world_size / B``). Without a process group: world size 1.
        group: the process group to gather over (default: the world).
        chunk_size: score at most this many candidate columns at a time (see
            :func:`sampled_softmax_loss`).
        sample_weight: (B,) weights >= 0 of this rank's rows; "mean" is
            ``Σ w_i l_i / B`` (Keras' convention).

    Returns:
        The loss, in query's dtype (float32 for 16-bit inputs).

    Example:
        >>> import torch, pyneg.functional as PF
        >>> q, c = torch.randn(4, 8), torch.randn(4, 8)
        >>> PF.in_batch_softmax_loss(q, c, candidate_ids=torch.tensor([3, 5, 3, 9])).shape
        torch.Size([])
    """
    gather = check_bool(gather, "gather")

    def check() -> Tuple[float, Optional[int], Optional[torch.Tensor], Optional[torch.Tensor], Any]:
        _check_reduction(reduction)
        _check_query(query)
        b = query.shape[0]
        _check_embeddings(candidate, "candidate", query, rows=b)
        return (
            _check_temperature(temperature),
            _check_chunk_size(chunk_size),
            _check_log_q(log_q, "log_q", (b,), query.device, _acc_dtype(query.dtype)),
            _check_ids(candidate_ids, "candidate_ids", (b,), query.device),
            _check_weight(sample_weight, b, query.device, _acc_dtype(query.dtype)),
        )

    temp, chunk, own_log_q, row_ids, weight = _checked_before_gather(
        check, gather, group, lambda r: {"log_q": r[2] is not None, "candidate_ids": r[3] is not None}
    )
    columns, col_ids, col_log_q, diag = candidate, row_ids, own_log_q, 0
    if gather:
        columns, col_ids, col_log_q, diag = _gather_batch(candidate, row_ids, own_log_q, group)
    return _softmax_loss(
        query,
        candidate,
        own_log_q,
        [_Block(columns, col_log_q, col_ids, diag)],
        row_ids,
        temp,
        chunk,
        reduction,
        weight=weight,
    )


@dataclass
class _SampledInputs:
    """The validated inputs of :func:`sampled_softmax_loss` and :func:`nce_loss`."""

    positive: torch.Tensor  # (B, d) or (B, T, d)
    positive_log_q: Optional[torch.Tensor]
    positive_bias: Optional[torch.Tensor]
    row_ids: Optional[torch.Tensor]  # (B,) / (B, T) when hits are removed
    block: _Block
    weight: Optional[torch.Tensor]


def _check_bias(bias: Any, name: str, shape: Tuple[int, ...], query: torch.Tensor) -> Optional[torch.Tensor]:
    """None, or a float tensor of ``shape`` with query's dtype and device (it may require grad)."""
    if bias is None:
        return None
    _check_float(bias, name)
    if tuple(bias.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(bias.shape)}")
    if bias.dtype != query.dtype:
        raise TypeError(f"{name} has dtype {bias.dtype} but query has {query.dtype}")
    if bias.device != query.device:
        raise ValueError(f"{name} is on {bias.device} but query is on {query.device}")
    return bias


def _check_sampled(
    query,
    positive,
    negative,
    positive_log_q,
    negative_log_q,
    positive_ids,
    negative_ids,
    bias,
    positive_bias,
    negative_bias,
    sample_weight,
    remove_accidental_hits,
) -> _SampledInputs:
    _check_query(query)
    b, dev, acc = query.shape[0], query.device, _acc_dtype(query.dtype)
    _check_embeddings(positive, "positive", query, rows=b, per_row_ok=True, per_row_name="T")
    if positive.dim() == 3 and positive.shape[1] == 0:
        raise ValueError(f"positive must hold at least one positive per row, got shape {tuple(positive.shape)}")
    _check_embeddings(negative, "negative", query, per_row_ok=True)
    rows, cols = tuple(positive.shape[:-1]), tuple(negative.shape[:-1])
    pos_lq = _check_log_q(positive_log_q, "positive_log_q", rows, dev, acc)
    neg_lq = _check_log_q(negative_log_q, "negative_log_q", cols, dev, acc)
    pos_ids = _check_ids(positive_ids, "positive_ids", rows, dev)
    neg_ids = _check_ids(negative_ids, "negative_ids", cols, dev)
    if (pos_ids is None) != (neg_ids is None):
        raise ValueError("positive_ids and negative_ids must be given together (to mask accidental hits)")
    pos_bias = _check_bias(positive_bias, "positive_bias", rows, query)
    neg_bias = _check_bias(negative_bias, "negative_bias", cols, query)
    if bias is not None:
        if positive_bias is not None or negative_bias is not None:
            raise ValueError("bias (a table indexed by ids) excludes positive_bias and negative_bias")
        _check_float(bias, "bias")
        if bias.dim() != 1:
            raise ValueError(f"bias must be a (V,) table of per-class biases, got shape {tuple(bias.shape)}")
        _check_bias(bias, "bias", tuple(bias.shape), query)
        if pos_ids is None:
            raise ValueError("bias is a table indexed by ids: give positive_ids and negative_ids")
        for t, name in ((pos_ids, "positive_ids"), (neg_ids, "negative_ids")):
            if t is not None and t.numel() and int(t.max()) >= bias.shape[0]:
                raise ValueError(f"{name} holds id {int(t.max())} but bias has {bias.shape[0]} entries")
        pos_bias, neg_bias = bias[pos_ids], bias[neg_ids]
    weight = _check_weight(sample_weight, b, dev, acc)
    if not check_bool(remove_accidental_hits, "remove_accidental_hits"):
        pos_ids = neg_ids = None
    return _SampledInputs(positive, pos_lq, pos_bias, pos_ids, _Block(negative, neg_lq, neg_ids, bias=neg_bias), weight)


def sampled_softmax_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    positive_log_q: Optional[ArrayLike] = None,
    negative_log_q: Optional[ArrayLike] = None,
    positive_ids: Optional[ArrayLike] = None,
    negative_ids: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
    bias: Optional[torch.Tensor] = None,
    positive_bias: Optional[torch.Tensor] = None,
    negative_bias: Optional[torch.Tensor] = None,
    sample_weight: Optional[ArrayLike] = None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Sampled softmax: the positives against sampled negatives, each logit corrected by log Q.

    Logits are ``s = query·e / temperature + b − log Q``: the positives' with
    ``positive_log_q``, the negatives' with ``negative_log_q`` (b = 0 without
    biases). For negatives drawn by a pyneg sampler, log Q is the log expected
    count (:meth:`pyneg.AliasSampler.log_expected_count`, TensorFlow's
    ``subtract_log_q``). A negative whose id equals one of the row's positive
    ids is an accidental hit and is masked out (TensorFlow's
    ``remove_accidental_hits``). With T positives per row, each has label 1/T
    (TensorFlow's ``num_true``): the loss of row i is
    ``logsumexp_j(s_ij) − (1/T) Σ_t s⁺_it`` over its T positive and its
    unmasked negative logits; T = 1 is the usual cross-entropy.

    Args:
        query: (B, d).
        positive: (B, d), row ``i``'s positive, or (B, T, d): T positives
            per row (TensorFlow's ``num_true``), each with label 1/T.
        negative: (N, d) shared by all rows, or (B, N, d) per row.
        positive_log_q: (B,) or (B, T), log Q of the positives.
        negative_log_q: (N,) for shared negatives, (B, N) for per-row ones.
        positive_ids: integer ids >= 0 with the shapes of
            positive_log_q and negative_log_q; give both to mask accidental
            hits (a negative equal to any of the row's positive ids).
        negative_ids: as ``positive_ids`` above.
        temperature: logits are dot products divided by it (> 0).
        reduction: "none" (B,), "mean" or "sum".
        chunk_size: for shared negatives, score at most this many columns at a
            time: peak memory O(B · chunk_size) instead of O(B · N), for one
            extra matmul in the backward pass (which the smaller working set
            pays back on CPU). None scores all columns at once and keeps their
            softmax for the backward pass.
        bias: a (V,) table of per-class biases indexed by the ids (needs both
            id arguments); or instead ``positive_bias`` (the shape of
            positive_log_q) and ``negative_bias`` (that of negative_log_q),
            aligned with the embeddings. Biases get gradients; query's dtype
            and device.
        sample_weight: (B,) weights >= 0 of the rows; "mean" is
            ``Σ w_i l_i / B`` (Keras' convention).
        remove_accidental_hits: mask the hits when ids are given (True);
            False uses the ids only to index ``bias``.

    Returns:
        The loss, in query's dtype (float32 for 16-bit inputs).
    """
    _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    chunk_size = _check_chunk_size(chunk_size)
    x = _check_sampled(
        query,
        positive,
        negative,
        positive_log_q,
        negative_log_q,
        positive_ids,
        negative_ids,
        bias,
        positive_bias,
        negative_bias,
        sample_weight,
        remove_accidental_hits,
    )
    return _softmax_loss(
        query,
        x.positive,
        x.positive_log_q,
        [x.block],
        x.row_ids,
        temperature,
        chunk_size,
        reduction,
        positive_bias=x.positive_bias,
        weight=x.weight,
    )


def nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    positive_log_q: Optional[ArrayLike] = None,
    negative_log_q: Optional[ArrayLike] = None,
    positive_ids: Optional[ArrayLike] = None,
    negative_ids: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
    bias: Optional[torch.Tensor] = None,
    positive_bias: Optional[torch.Tensor] = None,
    negative_bias: Optional[torch.Tensor] = None,
    sample_weight: Optional[ArrayLike] = None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Noise-contrastive estimation (Gutmann & Hyvärinen, 2010), as TensorFlow's ``nce_loss``.

    Every logit is ``s = query·e / temperature + b − log Q``, with log Q the
    log expected count of the class among the sampled candidates (``log(k·q)``
    with replacement: :meth:`pyneg.AliasSampler.log_expected_count`), and the
    loss is the sigmoid cross-entropy of each logit against its label, 1/T for
    each of the row's T positives and 0 for each sampled negative, summed over
    the row::

        l_i = Σ_t [ (1/T)·softplus(−s⁺_it) + (1 − 1/T)·softplus(s⁺_it) ]
              + Σ_j softplus(s⁻_ij),        softplus(x) = −log σ(−x) = log(1 + eˣ)

    Masked negatives (accidental hits: a negative equal to one of the row's
    positive ids) add nothing. With log Q = 0, no biases, T = 1, no hit
    removal and per-row negatives (B, K, d) this is
    :func:`negative_sampling_loss`.

    Unlike TensorFlow's ``nce_loss`` (``remove_accidental_hits=False`` by
    default) hits are removed whenever both id arguments are given, as in
    :func:`sampled_softmax_loss`; pass ``remove_accidental_hits=False`` for
    TensorFlow's default.

    Args:
        query: (B, d).
        positive: (B, d), row ``i``'s positive, or (B, T, d): T positives
            per row (TensorFlow's ``num_true``), each with label 1/T.
        negative: (N, d) shared by all rows, or (B, N, d) per row.
        positive_log_q: (B,) or (B, T), log Q of the positives.
        negative_log_q: (N,) for shared negatives, (B, N) for per-row ones.
        positive_ids: integer ids >= 0 with the shapes of
            positive_log_q and negative_log_q; give both to mask accidental
            hits (a negative equal to any of the row's positive ids).
        negative_ids: as ``positive_ids`` above.
        temperature: logits are dot products divided by it (> 0).
        reduction: "none" (B,), "mean" or "sum".
        chunk_size: for shared negatives, score at most this many columns at
            a time (peak memory O(B · chunk_size)); None: all at once.
        bias: a (V,) table of per-class biases indexed by the ids (needs both
            id arguments); or instead ``positive_bias`` and ``negative_bias``
            aligned with the embeddings. Biases get gradients.
        sample_weight: (B,) weights >= 0 of the rows; "mean" is
            ``Σ w_i l_i / B`` (Keras' convention).
        remove_accidental_hits: mask the hits when ids are given (True);
            False uses the ids only to index ``bias``.

    Returns:
        The loss, in query's dtype (float32 for 16-bit inputs).

    Example:
        >>> import torch, pyneg
        >>> sampler = pyneg.LogUniformSampler(1000)
        >>> table = torch.randn(1000, 16)
        >>> labels = torch.randint(0, 1000, (8, 2))            # two positives per row
        >>> cand = sampler.sample_candidates(64, labels, seed=0)
        >>> loss = pyneg.functional.nce_loss(
        ...     torch.randn(8, 16), table[labels], table[cand.sampled_candidates],
        ...     positive_log_q=cand.true_expected_count.log(),
        ...     negative_log_q=cand.sampled_expected_count.log(),
        ...     positive_ids=labels, negative_ids=cand.sampled_candidates)
        >>> loss.shape
        torch.Size([])
    """
    _check_reduction(reduction)
    temperature = _check_temperature(temperature)
    chunk_size = _check_chunk_size(chunk_size)
    x = _check_sampled(
        query,
        positive,
        negative,
        positive_log_q,
        negative_log_q,
        positive_ids,
        negative_ids,
        bias,
        positive_bias,
        negative_bias,
        sample_weight,
        remove_accidental_hits,
    )
    return _nce_loss(
        query,
        x.positive,
        x.positive_log_q,
        x.block,
        x.row_ids,
        temperature,
        chunk_size,
        reduction,
        positive_bias=x.positive_bias,
        weight=x.weight,
    )


def _check_hit_ids(ids: Any, name: str, device: Optional[torch.device]) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else as_tensor(ids, name)
    if t.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {tuple(t.shape)}")
    checked = _check_ids(t, name, tuple(t.shape), t.device if device is None else device)
    assert checked is not None  # ids were given
    return checked


def compute_accidental_hits(positive_ids: ArrayLike, negative_ids: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """The accidental hits among sampled candidates, as TensorFlow's ``compute_accidental_hits``.

    Entry ``(i, j)`` is a hit when candidate ``j`` equals one of row ``i``'s
    positive ids; these are the entries :func:`sampled_softmax_loss` and
    :func:`nce_loss` mask.

    Args:
        positive_ids: (B,) or (B, T) integer ids >= 0 (TensorFlow's
            ``true_classes`` with ``num_true = T``).
        negative_ids: (N,) candidates shared by all rows (TensorFlow's
            ``sampled_candidates``), or (B, N) per row.

    Returns:
        ``(rows, columns)``: int64 tensors on positive_ids' device, one entry
        per hit, sorted by row, then column: TensorFlow's ``indices`` and
        ``ids`` outputs (its ``weights`` are ``-FLOAT_MAX`` for every hit).

    One deliberate difference: when a candidate id appears several times in
    ``negative_ids``, TensorFlow reports only its last copy, so the earlier
    copies of a row's own label stay in that row's softmax as negatives; pyneg
    reports (and its losses mask) every copy. Each (row, column) pair is
    reported once, also when a row's positive ids repeat (TensorFlow lists it
    once per matching positive). With distinct candidates and distinct
    positive ids per row the two agree up to order (TensorFlow orders a row's
    hits by positive, pyneg by column).

    Example:
        >>> import torch, pyneg
        >>> rows, cols = pyneg.functional.compute_accidental_hits(
        ...     torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 3, 2, 9]))
        >>> rows.tolist(), cols.tolist()
        ([0, 0, 1], [0, 2, 1])
    """
    pos = _check_hit_ids(positive_ids, "positive_ids", None)
    dev = pos.device
    neg = _check_hit_ids(negative_ids, "negative_ids", dev)
    b, n = pos.shape[0], neg.shape[-1]
    if neg.dim() == 2 and neg.shape[0] != b:
        raise ValueError(f"negative_ids must be (N,) or ({b}, N) for {b} rows, got shape {tuple(neg.shape)}")
    empty = torch.empty(0, dtype=torch.int64, device=dev)
    if b == 0 or n == 0 or pos.numel() == 0:
        return empty, empty.clone()
    row_ids = pos.to(torch.int64).reshape(b, -1)
    neg = neg.to(torch.int64)
    if neg.dim() == 1:
        hits = _block_hits(neg, row_ids, None, b, dev)
        if hits is None:
            return empty, empty.clone()
        rows, cols = hits
    else:
        rows, cols = (neg.unsqueeze(-1) == row_ids.unsqueeze(1)).any(-1).nonzero(as_tuple=True)
    key = torch.unique(rows * n + cols)  # sorted, each pair once
    return key // n, key % n


@dataclass(frozen=True)
class NegativeSource:
    """One source of negatives for :func:`mixed_negatives_loss`.

    Attributes:
        embeddings: (N, d) negative embeddings. For an ``in_batch`` source,
            None means the loss's ``positive`` (the batch's own positives).
        ids: (N,) integer ids >= 0: an entry whose id equals a row's positive
            id is an accidental hit and is masked for that row. For an
            ``in_batch`` source, None means the loss's ``positive_ids``.
        log_q: (N,) the log-probability with which *this source* yields each
            entry (its log Q: batch-inclusion probability for in-batch and
            queued negatives, the log expected count for sampled ones);
            subtracted from the entry's logits. None: no correction.
        in_batch: the entries are the batch's positives, row-aligned with the
            queries: entry ``i`` is row ``i``'s own positive, so it is left out
            of row ``i``'s negatives (the loss scores it once, as the
            positive). With ``gather=True`` these entries, ids and log q are
            gathered over ranks into the global batch.
    """

    embeddings: Optional[torch.Tensor] = None
    ids: Optional[ArrayLike] = None
    log_q: Optional[ArrayLike] = None
    in_batch: bool = False

    @classmethod
    def batch(
        cls,
        log_q: Optional[ArrayLike] = None,
        *,
        ids: Optional[ArrayLike] = None,
        embeddings: Optional[torch.Tensor] = None,
    ) -> NegativeSource:
        """The batch's own positives as negatives (in-batch), with their log q."""
        return cls(embeddings, ids, log_q, in_batch=True)

    @classmethod
    def from_bank(cls, bank: Any) -> NegativeSource:
        """A memory bank's entries (detached) with their ids and log q.

        With a :class:`pyneg.MemoryBank` this takes :meth:`~pyneg.MemoryBank.negatives`:
        no entries before warm-up, none older than ``max_age``, and views into
        the bank rather than copies (so enqueue after ``loss.backward()``). Any
        other object only needs ``embeddings``, ``ids`` and ``log_q``. Entries
        enqueued without a log q (NaN) get no correction.
        """
        negatives = getattr(bank, "negatives", None)
        entries = negatives() if callable(negatives) else bank
        log_q = entries.log_q
        if log_q is not None:
            missing = torch.isnan(log_q)
            if bool(missing.all()):
                log_q = None
            elif bool(missing.any()):
                log_q = torch.where(missing, torch.zeros_like(log_q), log_q)
        return cls(entries.embeddings.detach(), entries.ids, log_q)

    @classmethod
    def from_sampler(
        cls, embeddings: torch.Tensor, ids: ArrayLike, sampler: Any, *, num_tries: Optional[int] = None
    ) -> NegativeSource:
        """Negatives drawn by a pyneg sampler: ``ids`` (N,) and their ``embeddings`` (N, d).

        log Q is the sampler's log expected count of each id among the N draws
        (``num_tries`` for draws with ``unique=True``, as ``sample_candidates`` reports it).
        """
        # A NumPy/list input is copied: the loss saves the ids for its backward.
        ids_t = ids if isinstance(ids, torch.Tensor) else as_tensor(ids, "ids").clone()
        log_q = sampler.log_expected_count(ids_t, max(int(ids_t.numel()), 1), num_tries=num_tries)
        return cls(embeddings, ids_t.to(embeddings.device), log_q.to(embeddings.device))

    @classmethod
    def from_mined(cls, mined: Any, embeddings: torch.Tensor) -> NegativeSource:
        """Per-row hard negatives from :func:`pyneg.mine_hard_negatives`, with their own log q.

        Row ``i`` gets its own ``k`` negatives (not shared with other rows),
        each corrected by the log-probability with which it landed in row
        ``i``'s sample. Padding (id -1, log q -inf) is masked out by the loss.

        Args:
            mined: a :class:`pyneg.mining.MinedNegatives` (anything with
                ``ids`` and ``log_q`` of shape (B, k)).
            embeddings: the (N, d) catalogue the ids index (e.g. the current
                item tower's outputs, so gradients reach it), or the
                negatives' own (B, k, d) embeddings.
        """
        ids, log_q = mined.ids, mined.log_q
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() == 2:
            n = embeddings.shape[0]
            if ids.numel() and int(ids.max()) >= n:
                raise ValueError(f"mined.ids holds id {int(ids.max())} but embeddings has only {n} rows")
            emb = embeddings[ids.clamp_min(0).to(embeddings.device)]
        elif embeddings.dim() == 3 and tuple(embeddings.shape[:2]) == tuple(ids.shape):
            emb = embeddings
        else:
            raise ValueError(f"embeddings must be (N, d) or {tuple(ids.shape) + ('d',)}, got {tuple(embeddings.shape)}")
        return cls(emb, ids.to(emb.device), log_q.to(emb.device))


def mixed_negatives_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    sources: Sequence[NegativeSource],
    *,
    positive_ids: Optional[ArrayLike] = None,
    positive_log_q: Optional[ArrayLike] = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    gather: bool = False,
    group: Optional[Any] = None,
    chunk_size: Optional[int] = DEFAULT_CHUNK_SIZE,
    sample_weight: Optional[ArrayLike] = None,
) -> torch.Tensor:
    """Softmax loss over negatives from several sources, each corrected by its own log q.

    Row ``i``'s logits are its positive, ``query[i]·positive[i] / temperature −
    positive_log_q[i]``, and every entry ``e`` of every source,
    ``query[i]·e / temperature − log_q_source(e)``: in-batch negatives, sampled
    negatives and a memory bank can be mixed (Yang et al., 2020, mixed negative
    sampling), and each logit is corrected for the distribution of the source
    it came from. Entries whose id equals ``positive_ids[i]`` are accidental
    hits in whichever source they sit: masked out.

    With one in-batch source and ``positive_log_q`` equal to its log q this is
    :func:`in_batch_softmax_loss`; with one sampled source it is
    :func:`sampled_softmax_loss`.

    Args:
        query: (B, d).
        positive: (B, d), row ``i``'s positive.
        sources: :class:`NegativeSource` s; e.g. ``[NegativeSource.batch(lq),
            NegativeSource.from_bank(bank), NegativeSource.from_sampler(e, ids,
            sampler)]``. A source may be empty (a bank before warm-up).
        positive_ids: (B,) integer ids >= 0; needed when a source has ids.
        positive_log_q: (B,) the positive's correction (for in-batch training,
            the batch-inclusion log-probability of the positive).
        temperature: logits are dot products divided by it (> 0).
        reduction: "none" (B,), "mean" or "sum".
        gather: in-batch sources span the global batch across ranks, as in
            :func:`in_batch_softmax_loss` (same reduction semantics); other
            sources are used as each rank gives them (share them across ranks,
            e.g. with :func:`pyneg.distributed.sampler_seed`, for results equal
            to one process).
        group: the process group to gather over.
        chunk_size: score at most this many columns of a source at a time
            (memory O(B · chunk_size) instead of O(B · N) for a large bank);
            None: all at once.
        sample_weight: (B,) weights >= 0 of the rows; "mean" is
            ``Σ w_i l_i / B`` (Keras' convention).

    Returns:
        The loss, in query's dtype (float32 for 16-bit inputs).
    """
    gather = check_bool(gather, "gather")
    # Checks first (all of them, on every rank), gathers after: see _checked_before_gather.
    temperature, chunk_size, pos_lq, pos_ids, weight, blocks = _checked_before_gather(
        lambda: _check_mixed(
            query, positive, sources, positive_log_q, positive_ids, temperature, chunk_size, reduction, sample_weight
        ),
        gather,
        group,
        _gathered_flags,
    )
    if gather:
        for k, blk in enumerate(blocks):
            if blk.diag is not None:  # an in-batch source spans the global batch
                emb, ids, log_q, diag = _gather_batch(blk.emb, blk.ids, blk.log_q, group)
                blocks[k] = dataclasses.replace(blk, emb=emb, ids=ids, log_q=log_q, diag=diag)
    return _softmax_loss(query, positive, pos_lq, blocks, pos_ids, temperature, chunk_size, reduction, weight=weight)


def _gathered_flags(checked: Tuple[Any, ...]) -> Dict[str, bool]:
    """Which optional tensors of the in-batch sources a gathering mixed loss will gather."""
    flags = {}
    for k, blk in enumerate(checked[5]):
        if blk.diag is not None:
            flags[f"sources[{k}].ids"] = blk.ids is not None
            flags[f"sources[{k}].log_q"] = blk.log_q is not None
    return flags


def _check_mixed(
    query: Any,
    positive: Any,
    sources: Any,
    positive_log_q: Any,
    positive_ids: Any,
    temperature: Any,
    chunk_size: Any,
    reduction: Any,
    sample_weight: Any,
):
    """The validated inputs of :func:`mixed_negatives_loss`, one (ungathered) block per source."""
    _check_reduction(reduction)
    _check_query(query)
    temperature = _check_temperature(temperature)
    chunk_size = _check_chunk_size(chunk_size)
    b, dev, acc = query.shape[0], query.device, _acc_dtype(query.dtype)
    _check_embeddings(positive, "positive", query, rows=b)
    pos_lq = _check_log_q(positive_log_q, "positive_log_q", (b,), dev, acc)
    pos_ids = _check_ids(positive_ids, "positive_ids", (b,), dev)
    weight = _check_weight(sample_weight, b, dev, acc)
    if isinstance(sources, NegativeSource) or not isinstance(sources, (list, tuple)):
        raise TypeError(f"sources must be a list of NegativeSource, got {type(sources).__name__}")
    blocks = []
    for k, src in enumerate(sources):
        name = f"sources[{k}]"
        if not isinstance(src, NegativeSource):
            raise TypeError(f"{name} must be a NegativeSource, got {type(src).__name__}")
        emb = src.embeddings
        if src.in_batch and emb is None:
            emb = positive
        elif emb is None:
            raise ValueError(f"{name}.embeddings is None (only an in_batch source may omit them)")
        _check_embeddings(
            emb, f"{name}.embeddings", query, rows=b if src.in_batch else None, per_row_ok=not src.in_batch
        )
        cols = tuple(emb.shape[:-1])  # (N,), or (B, N) for per-row negatives
        ids = src.ids if src.ids is not None or not src.in_batch else pos_ids
        ids, src_log_q, pad = _split_padding(ids, src.log_q, name, dev) if emb.dim() == 3 else (ids, src.log_q, None)
        ids = _check_ids(ids, f"{name}.ids", cols, dev)
        if ids is not None and pos_ids is None:
            raise ValueError(f"{name} has ids but positive_ids is None: accidental hits cannot be masked")
        log_q = _check_log_q(src_log_q, f"{name}.log_q", cols, dev, acc)
        blocks.append(_Block(emb, log_q, ids, 0 if src.in_batch else None, pad=pad))
    return temperature, chunk_size, pos_lq, pos_ids, weight, blocks


def _split_padding(ids: Any, log_q: Any, name: str, dev: torch.device):
    """Per-row negatives may be padded (id -1, log q -inf, as mining pads): (ids, log_q, pad mask).

    Padded entries get id 0 and log q 0 (so the checks pass) and are masked out by the loss.
    """
    pad = None
    if ids is not None:
        ids = _as_data(ids, f"{name}.ids", dev)
        if not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
            pad = ids == -1
    if log_q is not None:
        log_q = _as_data(log_q, f"{name}.log_q", dev)
        if log_q.is_floating_point():
            lq_pad = log_q == -math.inf
            if pad is not None and lq_pad.shape == pad.shape and not torch.equal(lq_pad, pad):
                raise ValueError(f"{name}: padded entries must have id -1 and log q -inf together")
            pad = lq_pad if pad is None else pad
    if pad is None or pad.shape != (ids if ids is not None else log_q).shape or not bool(pad.any()):
        return ids, log_q, None
    if ids is not None:
        ids = ids.masked_fill(pad, 0)
    if log_q is not None:
        log_q = log_q.masked_fill(pad, 0.0)
    return ids, log_q, pad

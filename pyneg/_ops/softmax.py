"""The softmax losses' operators: the blocked log-sum-exp core, the hit finder and the value checks.

* ``pyneg::softmax_block_lse(qs, emb, shift, ids, row_ids, diag, chunk_size, nce)``
  → ``(out, probs)``: per row, logsumexp (``nce=False``) or Σ softplus
  (``nce=True``) over the masked logits ``qs @ emb.T + shift`` of a block of N
  negatives shared by all rows, scored ``chunk_size`` columns at a time (at most
  a (B, chunk_size) matrix exists). ``probs`` is the (B, N) softmax (σ for NCE)
  kept for the backward pass when the block is one chunk, else an empty (0,)
  tensor (the backward pass then recomputes each chunk). Masked: columns whose
  id (``ids`` (N,)) equals one of the row's ``row_ids`` ((B,) or (B, T)), and,
  with ``diag``, column ``diag + i`` of row ``i``. Differentiable in qs, emb and
  shift (``pyneg::softmax_block_lse_backward``); under ``create_graph=True`` the
  backward pass differentiates the block in plain PyTorch ops instead, so second
  derivatives (gradient penalties) are exact.
* ``pyneg::softmax_find_hits(candidate_ids, positive_ids, max_pairs)`` →
  ``(rows, cols, complete)``: the accidental hits (:func:`pyneg._hits.find_hits`);
  data-dependent in size. CPU: the C++ hash join; CUDA: sort + searchsorted.
* ``pyneg::softmax_check_ids`` / ``softmax_check_real`` / ``softmax_check_padding``:
  the value checks of the losses' inputs (ids >= 0 and below a bound, finite log q,
  finite weights >= 0, consistent padding). Each returns a checked copy that the
  loss then uses, so the check cannot be dropped from a compiled graph, and
  raises the losses' ValueError when a value is wrong: the checks run inside the
  graph instead of breaking it with ``.item()``.

Everything data-dependent (which entries are hits, whether a block is masked
densely, the chunk loop) happens inside the implementations, so the losses
trace into one graph.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from pyneg import _core, _hits
from pyneg._ops import _checks
from pyneg._validation import MAX_BUFFER_BYTES, check_nbytes

_NO_BOUND = -1


# ------------------------------------------------------------ accidental hits
# Accidental hits listed at most (two int64 per hit, and the kernel's working copies): a list
# that would not fit in memory is refused by name instead of reaching the allocator.
_MAX_LISTED = MAX_BUFFER_BYTES // 64


def _too_many_hits(limit: int) -> str:
    return (
        f"pyneg::softmax_find_hits: positive_ids and candidate_ids have more than {limit} accidental hits; "
        f"listing them would need more than this machine's {MAX_BUFFER_BYTES / 2**30:.3g} GiB of memory "
        "(a repeated id? a dense mask is smaller)"
    )


def _check_find_hits(
    candidate_ids: torch.Tensor, positive_ids: torch.Tensor, max_pairs: int, real: bool = True
) -> None:
    op = "softmax_find_hits"
    _checks.check(op, candidate_ids, "candidate_ids", dtypes=_checks.INT_DTYPES, ndim=(1,))
    _checks.check(op, positive_ids, "positive_ids", dtypes=_checks.INT_DTYPES, ndim=(2,))
    _checks.same_device(op, [("candidate_ids", candidate_ids), ("positive_ids", positive_ids)], real=real)


@torch.library.custom_op("pyneg::softmax_find_hits", mutates_args=())
def find_hits(
    candidate_ids: torch.Tensor, positive_ids: torch.Tensor, max_pairs: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, complete): hits of positive_ids (B, T) among candidate_ids (N,); max_pairs < 0: no limit."""
    _check_find_hits(candidate_ids, positive_ids, max_pairs)
    # No limit asked: at most the pairs whose (row, column) list fits in memory (the kernel counts
    # the hits before listing them, so a list that cannot fit is refused before it is allocated).
    limit = _MAX_LISTED if max_pairs < 0 else max_pairs
    # Private copies, checked here with the op's argument names; the kernel reads (and re-checks) them.
    cand = candidate_ids.detach().to(torch.int64, copy=True)
    pos = positive_ids.detach().to(torch.int64, copy=True)
    for name, t in (("candidate_ids", cand), ("positive_ids", pos)):
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"pyneg::softmax_find_hits: {name} holds negative id {int(t.min())} (ids must be >= 0)")
    found = _core.find_accidental_hits(cand.numpy(), pos.numpy(), limit)
    if found is None and max_pairs < 0:
        raise MemoryError(_too_many_hits(limit))
    if found is None:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty.clone(), torch.tensor(False)
    return torch.from_numpy(found[0]), torch.from_numpy(found[1]), torch.tensor(True)


@find_hits.register_kernel("cuda")
def _find_hits_cuda(
    candidate_ids: torch.Tensor, positive_ids: torch.Tensor, max_pairs: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Sorting is what a GPU does well: sort the candidates, binary-search every positive.
    _check_find_hits(candidate_ids, positive_ids, max_pairs)
    dev = candidate_ids.device
    cand, pos = candidate_ids.to(torch.int64), positive_ids.to(torch.int64)
    if bool((cand < 0).any()) or bool((pos < 0).any()):
        raise ValueError("find_accidental_hits: ids must be >= 0")
    b, t = pos.shape
    sorted_ids, perm = torch.sort(cand)
    flat = pos.reshape(-1)
    lo = torch.searchsorted(sorted_ids, flat, right=False)
    counts = torch.searchsorted(sorted_ids, flat, right=True) - lo
    total = int(counts.sum())
    if max_pairs < 0 and total > _MAX_LISTED:
        raise MemoryError(_too_many_hits(_MAX_LISTED))
    if 0 <= max_pairs < total:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        return empty, empty.clone(), torch.tensor(False, device=dev)
    probe = torch.repeat_interleave(torch.arange(b * t, device=dev), counts)
    first = torch.repeat_interleave(lo - (counts.cumsum(0) - counts), counts)
    cols = perm[first + torch.arange(total, device=dev)]
    # A positive's columns come out in sort order; the CPU kernel lists them by column.
    key = probe * max(cand.numel(), 1) + cols
    key = torch.sort(key).values
    return key // max(cand.numel(), 1) // t, key % max(cand.numel(), 1), torch.tensor(True, device=dev)


@find_hits.register_fake
def _find_hits_fake(candidate_ids, positive_ids, max_pairs):
    _checks.fake_refused(lambda: _check_find_hits(candidate_ids, positive_ids, max_pairs, False), candidate_ids)
    n = torch.library.get_ctx().new_dynamic_size()
    rows = candidate_ids.new_empty(n, dtype=torch.int64)
    return rows, rows.new_empty(n), candidate_ids.new_empty((), dtype=torch.bool)


# ---------------------------------------------------------------- value checks
def _check_ids_args(ids: torch.Tensor, name: str, real: bool = True) -> None:
    _checks.check("softmax_check_ids", ids, "ids (" + name + ")", dtypes=_checks.INT_DTYPES)
    _checks.same_device("softmax_check_ids", [("ids", ids)], real=real)
    check_nbytes(tuple(ids.shape), 8, f"a copy of {name}")


@torch.library.custom_op("pyneg::softmax_check_ids", mutates_args=())
def check_ids(ids: torch.Tensor, name: str, upper: int, upper_name: str, wide: bool) -> torch.Tensor:
    """An int64 copy of ``ids`` after checking 0 <= id (< upper unless upper < 0).

    ``wide``: the ids were uint64 viewed as int64, so a negative value is one >= 2**63.
    """
    _check_ids_args(ids, name)
    out = ids.to(torch.int64, copy=True)
    if out.numel():
        low, high = torch.aminmax(out)
        if int(low) < 0:
            if wide:
                raise ValueError(f"{name} holds an id >= 2**63 (ids are compared as int64)")
            raise ValueError(f"{name} holds a negative id ({int(low)}); ids must be >= 0")
        if upper >= 0 and int(high) >= upper:
            raise ValueError(f"{name} holds id {int(high)} but {upper_name}")
    return out


@check_ids.register_fake
def _check_ids_fake(ids, name, upper, upper_name, wide):
    _checks.fake_refused(lambda: _check_ids_args(ids, name, False), ids)
    return ids.new_empty(ids.shape, dtype=torch.int64)


def _check_real_args(x: torch.Tensor, name: str, what: str, real: bool = True) -> None:
    _checks.same_device("softmax_check_real", [("x", x)], real=real)
    _checks.check(
        "softmax_check_real", x, "x (" + name + ")", dtypes=_checks.FLOAT_DTYPES + (torch.float16, torch.bfloat16)
    )
    if what not in ("log_q", "weight"):
        raise ValueError(f"pyneg::softmax_check_real: what must be 'log_q' or 'weight', got {what!r}")


@torch.library.custom_op("pyneg::softmax_check_real", mutates_args=())
def check_real(x: torch.Tensor, name: str, what: str) -> torch.Tensor:
    """A copy of ``x`` after checking its values: ``what`` is "log_q" (finite) or "weight" (finite, >= 0)."""
    _check_real_args(x, name, what)
    if x.numel():
        if what == "log_q":
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} must be finite (log-probabilities of items that can be drawn)")
        elif what == "weight":
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} must be finite")
            if bool((x < 0).any()):
                raise ValueError(f"{name} must be >= 0, got {float(x.min())}")
        else:
            raise ValueError(f"unknown check {what!r}")
    return x.clone()


@check_real.register_fake
def _check_real_fake(x, name, what):
    _checks.fake_refused(lambda: _check_real_args(x, name, what, False), x)
    return torch.empty_like(x)


def _check_real_setup(ctx, inputs, output):
    pass


def _check_real_backward(ctx, grad):
    return grad, None, None  # the check is the identity on valid values


check_real.register_autograd(_check_real_backward, setup_context=_check_real_setup)


def _check_padding_args(id_pad: torch.Tensor, log_q_pad: torch.Tensor, real: bool = True) -> None:
    op = "softmax_check_padding"
    _checks.check(op, id_pad, "id_pad", dtypes=(torch.bool,))
    _checks.check(op, log_q_pad, "log_q_pad", dtypes=(torch.bool,), shape=tuple(id_pad.shape))
    _checks.same_device(op, [("id_pad", id_pad), ("log_q_pad", log_q_pad)], real=real)


@torch.library.custom_op("pyneg::softmax_check_padding", mutates_args=())
def check_padding(id_pad: torch.Tensor, log_q_pad: torch.Tensor, name: str) -> torch.Tensor:
    """The padding mask after checking that ids (-1) and log q (-inf) mark the same entries."""
    _check_padding_args(id_pad, log_q_pad)
    if not torch.equal(id_pad, log_q_pad):
        raise ValueError(f"{name}: padded entries must have id -1 and log q -inf together")
    return id_pad.clone()


@check_padding.register_fake
def _check_padding_fake(id_pad, log_q_pad, name):
    _checks.fake_refused(lambda: _check_padding_args(id_pad, log_q_pad, False), id_pad, log_q_pad)
    return torch.empty_like(id_pad)


# ------------------------------------------------------- blocked log-sum-exp
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


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


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
        m = _finite_or_zero(t.amax(1, keepdim=True))
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
    peak memory.
    """
    b, n = s.shape
    out = s.new_empty(b)
    step = max(1, (1 << 18) // max(n, 1))
    for r in range(0, b, step):
        torch.sum(F.logsigmoid(s[r : r + step].neg()), 1, out=out[r : r + step])
    return out.neg_()


def _masking(ids, row_ids, diag, b: int, n: int, device):
    """(hits, dense): the hit list of the block, or dense=True when a (B, n) mask is smaller."""
    # Many hits (a tiny catalogue, a repeated id): a dense (B, n) mask is
    # smaller than the hit list, which is then never built.
    hits = _hits.block_hits(ids, row_ids, diag, b, device, max_pairs=int(_hits.DENSE_MASK_FRACTION * b * n))
    if hits is _hits.DENSE:
        return None, True
    return hits, False


def _chunk_scores(qs, emb, shift, ids, row_ids, diag, hits, dense: bool, start: int, stop: int) -> torch.Tensor:
    n = emb.shape[0]
    s = _block_scores(qs, emb[start:stop], None if shift is None else shift[start:stop], hits, start, n)
    if dense:
        _hits.dense_mask_(s, ids, row_ids, diag, start)
    return s


def _check_block_args(
    qs, emb, shift, ids, row_ids, diag, chunk_size: int, nce: bool, op: str = "softmax_block_lse", real: bool = True
):
    """The block's arguments (no data read), shared by the op, its backward and their fake kernels."""
    _checks.check(op, qs, "qs", dtypes=_checks.FLOAT_DTYPES, ndim=(2,))
    b, d = qs.shape
    _checks.check(op, emb, "emb", dtypes=(qs.dtype,), shape=(None, d))
    n = emb.shape[0]
    _checks.check(op, shift, "shift", dtypes=(qs.dtype,), shape=(n,))
    _checks.check(op, ids, "ids", dtypes=_checks.INT_DTYPES, shape=(n,))
    _checks.check(op, row_ids, "row_ids", dtypes=_checks.INT_DTYPES, ndim=(1, 2))
    if row_ids is not None and row_ids.shape[0] != b:
        raise ValueError(f"pyneg::{op}: row_ids must have qs' {b} rows, got shape {tuple(row_ids.shape)}")
    if chunk_size < 1:
        raise ValueError(f"pyneg::{op}: chunk_size must be >= 1, got {chunk_size}")
    if diag is not None and not -n <= diag <= n:
        raise ValueError(f"pyneg::{op}: diag must be in [-{n}, {n}] (column diag + i is row i's own), got {diag}")
    _checks.same_device(op, [("qs", qs), ("emb", emb), ("shift", shift), ("ids", ids), ("row_ids", row_ids)], real=real)
    # The (B, chunk) score matrix (and, for one chunk, the (B, N) softmax kept for backward).
    check_nbytes((b, min(chunk_size, n)), qs.element_size(), f"pyneg::{op}: the (rows of qs, chunk_size) scores")


@torch.library.custom_op("pyneg::softmax_block_lse", mutates_args=())
def block_lse(
    qs: torch.Tensor,
    emb: torch.Tensor,
    shift: Optional[torch.Tensor],
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    chunk_size: int,
    nce: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, probs): see the module docstring."""
    _check_block_args(qs, emb, shift, ids, row_ids, diag, chunk_size, nce)
    b, n = qs.shape[0], emb.shape[0]
    hits, dense = _masking(ids, row_ids, diag, b, n, qs.device)
    if chunk_size >= n:
        s = _chunk_scores(qs, emb, shift, ids, row_ids, diag, hits, dense, 0, n)
        if nce:
            total = _softplus_sum(s)
            return total, s.sigmoid_()
        return _exp_normalise_(s, normalise=True), s  # the softmax, in the logits' buffer
    out: Optional[torch.Tensor] = None
    for start in range(0, n, chunk_size):
        s = _chunk_scores(qs, emb, shift, ids, row_ids, diag, hits, dense, start, start + chunk_size)
        if nce:
            part = _softplus_sum(s)
            out = part if out is None else out.add_(part)
        else:
            part = _exp_normalise_(s)
            out = part if out is None else torch.logaddexp(out, part)
    assert out is not None  # n > chunk_size >= 1
    return out, qs.new_empty((0,))


@block_lse.register_fake
def _block_lse_fake(qs, emb, shift, ids, row_ids, diag, chunk_size, nce):
    if _checks.fake_refused(
        lambda: _check_block_args(qs, emb, shift, ids, row_ids, diag, chunk_size, nce, real=False), qs
    ):
        return qs.new_empty((_checks.rows(qs),)), qs.new_empty((0,))
    b, n = qs.shape[0], emb.shape[0]
    probs = qs.new_empty((b, n)) if chunk_size >= n else qs.new_empty((0,))
    return qs.new_empty((b,)), probs


@torch.library.custom_op("pyneg::softmax_block_lse_backward", mutates_args=())
def block_lse_backward(
    grad: torch.Tensor,
    qs: torch.Tensor,
    emb: torch.Tensor,
    shift: Optional[torch.Tensor],
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    chunk_size: int,
    nce: bool,
    out: torch.Tensor,
    probs: torch.Tensor,
    need_qs: bool,
    need_emb: bool,
    need_shift: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``softmax_block_lse`` w.r.t. qs, emb and shift (empty (0,) tensors when not needed).

    Each logit's weight is the softmax (σ for NCE); with one chunk it is
    ``probs`` from the forward pass, otherwise each chunk's logits are
    recomputed (one extra matmul). Rows with logsumexp −inf (every column
    masked) get zero gradient (autograd's logsumexp would give NaN there).
    """
    _check_backward_args(grad, qs, emb, shift, ids, row_ids, diag, chunk_size, nce, out, probs)
    n = emb.shape[0]
    if not nce:  # d lse_i / d s_ij = softmax_ij; rows with lse = −inf have no column to weigh
        grad = torch.where(torch.isfinite(out), grad, torch.zeros_like(grad))
    grad = grad.to(qs.dtype)
    wq = qs * grad.unsqueeze(1) if need_emb else None
    grad_q = torch.zeros_like(qs) if need_qs else qs.new_empty((0,))
    grad_e = torch.empty_like(emb) if need_emb else emb.new_empty((0,))
    grad_s = qs.new_empty(n) if need_shift else qs.new_empty((0,))
    kept = probs.dim() == 2
    if kept:
        hits, dense = None, False
    else:
        hits, dense = _masking(ids, row_ids, diag, qs.shape[0], n, qs.device)
    step = n if kept else chunk_size
    for start in range(0, n, step):
        stop = min(start + step, n)
        if kept:  # read, not overwritten: backward may run again with retain_graph
            p = probs
        else:
            s = _chunk_scores(qs, emb, shift, ids, row_ids, diag, hits, dense, start, stop)
            p = s.sigmoid_() if nce else s.sub_(_finite_or_zero(out).unsqueeze(1)).exp_()
        if need_qs:
            grad_q.add_((p @ emb[start:stop]).mul_(grad.unsqueeze(1)))
        if wq is not None:  # need_emb
            torch.mm(p.t(), wq, out=grad_e[start:stop])
        if need_shift:
            torch.mv(p.t(), grad, out=grad_s[start:stop])
    return grad_q, grad_e, grad_s


def _check_backward_args(grad, qs, emb, shift, ids, row_ids, diag, chunk_size, nce, out, probs, real=True) -> None:
    op = "softmax_block_lse_backward"
    _check_block_args(qs, emb, shift, ids, row_ids, diag, chunk_size, nce, op=op, real=real)
    b, n = qs.shape[0], emb.shape[0]
    _checks.check(op, grad, "grad", dtypes=_checks.FLOAT_DTYPES, shape=(b,))
    _checks.check(op, out, "out", dtypes=(qs.dtype,), shape=(b,))
    _checks.check(op, probs, "probs", dtypes=(qs.dtype,), ndim=(1, 2))
    if tuple(probs.shape) not in ((b, n), (0,)):
        raise ValueError(
            f"pyneg::{op}: probs must be softmax_block_lse's ({b}, {n}) or (0,) output, got {tuple(probs.shape)}"
        )
    _checks.same_device(op, [("grad", grad), ("qs", qs), ("out", out), ("probs", probs)], real=real)


@block_lse_backward.register_fake
def _block_lse_backward_fake(
    grad, qs, emb, shift, ids, row_ids, diag, chunk_size, nce, out, probs, need_qs, need_emb, need_shift
):
    _checks.fake_refused(
        lambda: _check_backward_args(grad, qs, emb, shift, ids, row_ids, diag, chunk_size, nce, out, probs, False), qs
    )
    n = emb.shape[0]
    return (
        torch.empty_like(qs) if need_qs else qs.new_empty((0,)),
        torch.empty_like(emb) if need_emb else emb.new_empty((0,)),
        qs.new_empty((n,)) if need_shift else qs.new_empty((0,)),
    )


def _block_lse_setup(ctx, inputs, output):
    qs, emb, shift, ids, row_ids, diag, chunk_size, nce = inputs
    out, probs = output
    ctx.mark_non_differentiable(probs)
    # No zero (B, N) gradient for probs (it is not differentiable): that would double the peak memory.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(qs, emb, shift, ids, row_ids, out, probs)
    ctx.args = (diag, chunk_size, nce)
    ctx.has_shift = shift is not None


def _block_lse_differentiable(qs, emb, shift, ids, row_ids, diag: Optional[int], nce: bool, out: torch.Tensor):
    """``softmax_block_lse``'s ``out`` in differentiable PyTorch ops (all N columns at once).

    What ``backward(create_graph=True)`` differentiates, so that gradient
    penalties through the softmax losses get exact second derivatives. Rows
    whose every column is masked (``out`` = −inf) contribute nothing, as in
    the backward op.
    """
    s = qs @ emb.t()
    if shift is not None:
        s = s + shift.unsqueeze(0)
    b, n = s.shape
    mask = torch.zeros((b, n), dtype=torch.bool, device=s.device)
    if ids is not None and row_ids is not None:
        mask |= _hits.hit_mask(ids, row_ids)
    if diag is not None:
        r = torch.arange(b, device=s.device)
        c = r + diag
        ok = (c >= 0) & (c < n)
        mask[r[ok], c[ok]] = True
    if nce:
        return torch.where(mask, torch.zeros_like(s), F.softplus(s)).sum(1)
    live = torch.isfinite(out).unsqueeze(1)
    s = torch.where(mask | ~live, torch.full_like(s, -math.inf), s)
    s = torch.where(live, s, torch.zeros_like(s))  # all-masked rows: a finite stand-in with zero gradient
    return torch.where(live.squeeze(1), torch.logsumexp(s, 1), torch.zeros_like(out))


def _block_lse_backward(ctx, grad_out, grad_probs):
    qs, emb, shift, ids, row_ids, out, probs = ctx.saved_tensors
    diag, chunk_size, nce = ctx.args
    need_qs, need_emb, need_shift = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if grad_out is None:  # the loss does not depend on this block
        return None, None, None, None, None, None, None, None
    if torch.is_grad_enabled():
        # backward(create_graph=True): differentiate the block in plain PyTorch ops, so
        # the gradient itself has a graph (exact second derivatives, (B, N) memory).
        wrt = [t for t, need in ((qs, need_qs), (emb, need_emb), (shift, need_shift and ctx.has_shift)) if need]
        with torch.enable_grad():
            value = _block_lse_differentiable(qs, emb, shift, ids, row_ids, diag, nce, out)
        grads = iter(torch.autograd.grad(value, wrt, grad_out, create_graph=True, allow_unused=True))
        return (
            next(grads) if need_qs else None,
            next(grads) if need_emb else None,
            next(grads) if need_shift and ctx.has_shift else None,
            None,
            None,
            None,
            None,
            None,
        )
    gq, ge, gs = torch.ops.pyneg.softmax_block_lse_backward(
        grad_out,
        qs,
        emb,
        shift,
        ids,
        row_ids,
        diag,
        chunk_size,
        nce,
        out,
        probs,
        need_qs,
        need_emb,
        need_shift and ctx.has_shift,
    )
    return (
        gq if need_qs else None,
        ge if need_emb else None,
        gs if need_shift and ctx.has_shift else None,
        None,
        None,
        None,
        None,
        None,
    )


block_lse.register_autograd(_block_lse_backward, setup_context=_block_lse_setup)


_checks.refuse_sparse("softmax_find_hits", ("candidate_ids", "positive_ids"))
_checks.refuse_sparse("softmax_check_ids", ("ids",))
_checks.refuse_sparse("softmax_check_real", ("x",))
_checks.refuse_sparse("softmax_check_padding", ("id_pad", "log_q_pad"))
_checks.refuse_sparse("softmax_block_lse", ("qs", "emb", "shift", "ids", "row_ids"))
_checks.refuse_sparse(
    "softmax_block_lse_backward",
    ("grad", "qs", "emb", "shift", "ids", "row_ids", "diag", "chunk_size", "nce", "out", "probs"),
)

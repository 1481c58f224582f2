"""Hard negatives, mined exactly, with the log q of how they were drawn.

:func:`mine_hard_negatives` scores every candidate against every query (dot
product or cosine), drops each row's known positives (``exclude``) and the
candidates a positive-aware filter marks as probable false negatives, keeps the
ranks ``[lo, hi)`` of what remains, and draws ``k`` of them per row. Each
returned negative comes with the exact log-probability that it landed in the
row's sample, which is the log q a logQ-corrected loss subtracts
(:meth:`pyneg.NegativeSource.from_mined` feeds them to
:func:`pyneg.functional.mixed_negatives_loss`).

Ranking: candidate ``a`` ranks above ``b`` when its score is higher, or the
scores are equal and its id is smaller. That total order makes results
independent of thread counts and block sizes.

Backends: CPU tensors go through pyneg's C++ kernel (blocked dot products, a
bounded heap per row, threads with the GIL released; memory O(B * hi + one
block), never the (B, N) score matrix). Tensors on a GPU go through blocked
``torch.matmul`` + ``torch.topk`` on the device (``backend="torch"``, which
also runs on the CPU). ``backend="faiss"`` searches a faiss index instead
(approximate for IVF/HNSW indexes; optional dependency). All of them then draw
from the window with the same C++ code, so a seed gives the same sample
whichever found the top ``hi``.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np
import torch

from pyneg import _core
from pyneg._validation import ArrayLike, as_index_tensor, as_tensor, check_int, check_nbytes, check_seed, shape_str

__all__ = ["MinedNegatives", "mine_hard_negatives", "mine_dataset", "SAMPLINGS"]

#: Ways to pick ``k`` negatives from a row's rank window.
SAMPLINGS = ("top", "uniform", "softmax")
_SAMPLING_CODE = {"top": 0, "uniform": 1, "softmax": 2}
_METRICS = ("dot", "cosine")
_BACKENDS = ("auto", "cpu", "torch", "faiss")
_FLOATS = (torch.float32, torch.float64)
# 16-bit embeddings (models trained in bf16) are scored in float32, as the losses do.
_HALFS = (torch.float16, torch.bfloat16)


class MinedNegatives(NamedTuple):
    """What :func:`mine_hard_negatives` returns (all on the query's device).

    Attributes:
        ids: (B, k) int64 candidate ids, in rank order (best first); -1 pads a
            row whose window held fewer than ``k`` admissible candidates.
        scores: (B, k) their scores, in the query's dtype; -inf for padding.
        log_q: (B, k) float64 log-probability that each id landed in its row's
            sample (0 when it was certain); -inf for padding.
        window: (B,) number of admissible candidates in each row's window
            ``[lo, hi)`` (at most ``hi - lo``).
    """

    ids: torch.Tensor
    scores: torch.Tensor
    log_q: torch.Tensor
    window: torch.Tensor


def _check_real(
    value: Any, name: str, *, minimum: Optional[float] = None, maximum: Optional[float] = None, open_min: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    bad = not math.isfinite(v)
    if minimum is not None:
        bad = bad or (v <= minimum if open_min else v < minimum)
    if maximum is not None:
        bad = bad or v > maximum
    if bad:
        lo = "" if minimum is None else f"{'>' if open_min else '>='} {minimum}"
        hi = "" if maximum is None else f"<= {maximum}"
        rule = " and ".join(x for x in (lo, hi) if x)
        raise ValueError(f"{name} must be finite{' and ' + rule if rule else ''}, got {value}")
    return v


def _check_matrix(value: Any, name: str) -> torch.Tensor:
    """A (rows, d) float tensor, detached; float16 and bfloat16 stay as given (see :func:`_scoring_dtype`)."""
    if isinstance(value, torch.Tensor):
        x = value
    else:
        x = as_tensor(value, name)
        if x.dtype not in _FLOATS:
            raise TypeError(f"{name} must hold float32 or float64 values, got {x.dtype}")
    if x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (it holds no data to mine)")
    if x.dtype not in _FLOATS + _HALFS:
        raise TypeError(
            f"{name} must be float32 or float64 (float16 and bfloat16 are scored in float32), got {x.dtype}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {shape_str(x.shape)}")
    return x.detach()


def _positive_scores(query: torch.Tensor, positive: Any, positive_scores: Any, cosine: bool) -> Optional[torch.Tensor]:
    """(B,) float64 scores of the rows' positives on the CPU, or None."""
    if positive is not None and positive_scores is not None:
        raise ValueError("give positive or positive_scores, not both")
    b = query.shape[0]
    if positive is not None:
        pos = _check_matrix(positive, "positive")
        if tuple(pos.shape) != tuple(query.shape):
            raise ValueError(f"positive must have query's shape {shape_str(query.shape)}, got {shape_str(pos.shape)}")
        if pos.device != query.device:
            raise ValueError(f"positive is on {pos.device} but query is on {query.device}")
        q, p = query.to(torch.float64), pos.to(torch.float64)
        s = (q * p).sum(1)
        if cosine:
            s = s / (q.norm(dim=1) * p.norm(dim=1))
        s = s.cpu()
        if not bool(torch.isfinite(s).all()):
            raise ValueError("positive gives non-finite scores (non-finite values, or a zero vector with cosine)")
        return s
    if positive_scores is not None:
        s = as_tensor(positive_scores, "positive_scores")
        if not s.is_floating_point():
            raise TypeError(f"positive_scores must be floating point, got {s.dtype}")
        if tuple(s.shape) != (b,):
            raise ValueError(f"positive_scores must have shape ({b},), got {shape_str(s.shape)}")
        s = s.detach().to(device="cpu", dtype=torch.float64, copy=True)
        if not bool(torch.isfinite(s).all()):
            raise ValueError("positive_scores must be finite")
        return s
    return None


def _upper_bounds(
    pos: Optional[torch.Tensor], margin: Any, relative_margin: Any, perc_pos: Any
) -> Optional[torch.Tensor]:
    """Per-row strict upper bound on an admissible score (float64), or None without filters.

    absolute margin m:   score < pos - m
    relative margin r:   score < pos - r * |pos|  (below the positive whatever its sign)
    TopK-PercPos p:      score < p * pos for pos >= 0; for pos < 0, p * pos would lie
                         above the positive, so the rule is read as the relative
                         margin 1 - p: score < pos - (1 - p) * |pos|. The two agree
                         for pos >= 0.
    """
    rules = []
    if margin is not None:
        rules.append(("margin", _check_real(margin, "margin"), None))
    if relative_margin is not None:
        rules.append(("relative_margin", _check_real(relative_margin, "relative_margin", minimum=0.0), None))
    if perc_pos is not None:
        rules.append(("perc_pos", _check_real(perc_pos, "perc_pos", minimum=0.0, maximum=1.0, open_min=True), None))
    if not rules:
        return None
    if pos is None:
        raise ValueError(f"{rules[0][0]} needs the positives' scores: pass positive or positive_scores")
    upper = torch.full_like(pos, math.inf)
    for name, v, _ in rules:
        if name == "margin":
            bound = pos - v
        elif name == "relative_margin":
            bound = pos - v * pos.abs()
        else:
            bound = pos - (1.0 - v) * pos.abs()
        upper = torch.minimum(upper, bound)
    return upper


def _check_exclude(exclude: Any, b: int, n: int) -> Optional[torch.Tensor]:
    """(B, P) int64 CPU copy, each row sorted ascending (-1 padding first), or None."""
    if exclude is None:
        return None
    return torch.sort(_exclude_lists(exclude, b, n), dim=1).values.contiguous()  # the kernel's own copy


def _exclude_lists(exclude: Any, b: int, n: Optional[int]) -> torch.Tensor:
    """``exclude`` as a checked (B, P) int64 CPU copy of ids in [0, n) (any id >= 0 when
    ``n`` is None) or -1 padding, one row per query row."""
    ex = as_index_tensor(exclude, "exclude", n, allow_padding=True)
    if ex.dim() == 1:
        ex = ex.unsqueeze(1)
    if ex.dim() != 2:
        raise ValueError(f"exclude must be (B,) or (B, P), got shape {shape_str(ex.shape)}")
    if ex.shape[0] != b:
        raise ValueError(f"exclude has {ex.shape[0]} rows but query has {b}")
    return ex


class _CandidateIds:
    """The catalogue ids of a candidate matrix's rows (checked: 1-D, N of them, >= 0,
    distinct) and the maps between rows and ids (sorted copy + binary search)."""

    def __init__(self, candidate_ids: Any, n: int, name: str = "candidate_ids") -> None:
        ids = as_index_tensor(candidate_ids, name, None)  # owned int64 CPU copy, ids >= 0
        if ids.dim() != 1 or ids.shape[0] != n:
            raise ValueError(f"{name} must hold one id per row of candidates ({n}), got shape {shape_str(ids.shape)}")
        self.ids = ids
        self.sorted, self.order = torch.sort(ids)
        if n > 1:
            dup = self.sorted[1:] == self.sorted[:-1]
            if bool(dup.any()):
                raise ValueError(f"{name} holds id {int(self.sorted[1:][dup][0])} twice (ids must be distinct)")

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """The row of each id (int64, any shape), -1 for ids that are not candidates (and -1)."""
        n = self.sorted.shape[0]
        pos = torch.searchsorted(self.sorted, ids).clamp_(max=n - 1)
        hit = self.sorted[pos] == ids
        return torch.where(hit, self.order[pos], torch.full_like(ids, -1))

    def rows_of_exclude(self, exclude: Any, b: int) -> Optional[torch.Tensor]:
        """``exclude`` of catalogue ids as :func:`_check_exclude` gives row lists."""
        if exclude is None:
            return None
        return torch.sort(self.rows_of(_exclude_lists(exclude, b, None)), dim=1).values.contiguous()

    def ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows (-1 padding) to catalogue ids (-1 padding)."""
        r = torch.from_numpy(rows)
        return torch.where(r >= 0, self.ids[r.clamp(min=0)], r).numpy()


def _check_block_size(block_size: Any) -> Tuple[int, int]:
    if block_size is None:
        return 0, 0
    if isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        return (
            check_int(block_size[0], "block_size[0]", minimum=1),
            check_int(block_size[1], "block_size[1]", minimum=1),
        )
    raise TypeError("block_size must be None or (query_block, candidate_block)")


def _float_bound(bound: torch.Tensor, dtype: torch.dtype, *, strict: bool) -> torch.Tensor:
    """A bound in ``dtype`` such that comparing scores of ``dtype`` with it equals comparing in float64.

    For ``score < bound`` (strict) that is the bound rounded up; for ``score <= bound``, rounded down.
    """
    if dtype == torch.float64:
        return bound
    b32 = bound.to(dtype)
    if strict:
        low = b32.to(torch.float64) < bound
        return torch.where(low, torch.nextafter(b32, torch.full_like(b32, math.inf)), b32)
    high = b32.to(torch.float64) > bound
    return torch.where(high, torch.nextafter(b32, torch.full_like(b32, -math.inf)), b32)


_TopK = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (ids, float64 scores, counts), on the CPU


def _topk_cpu(
    query: torch.Tensor,
    candidates: torch.Tensor,
    hi: int,
    exclude: Optional[torch.Tensor],
    upper: Optional[torch.Tensor],
    max_score: Optional[float],
    cosine: bool,
    block: Tuple[int, int],
    num_threads: int,
) -> _TopK:
    b = query.shape[0]
    ids = np.empty((b, hi), dtype=np.int64)
    scores = np.empty((b, hi), dtype=np.float64)
    counts = np.empty(b, dtype=np.int64)
    ex = exclude.numpy() if exclude is not None else np.empty((b, 0), dtype=np.int64)
    up = upper.numpy() if upper is not None else np.empty(0, dtype=np.float64)
    _core.mine_topk(
        query.contiguous().numpy(),
        candidates.contiguous().numpy(),
        ex,
        up,
        upper is not None,
        0.0 if max_score is None else max_score,
        max_score is not None,
        cosine,
        hi,
        block[0],
        block[1],
        ids,
        scores,
        counts,
        num_threads,
    )
    return torch.from_numpy(ids), torch.from_numpy(scores), torch.from_numpy(counts)


def _rank_sort(scores: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted by score descending, then id ascending."""
    by_id = torch.argsort(ids, dim=1, stable=True)
    s, i = scores.gather(1, by_id), ids.gather(1, by_id)
    by_score = torch.argsort(s, dim=1, descending=True, stable=True)
    return s.gather(1, by_score), i.gather(1, by_score)


def _chunk_top(s: torch.Tensor, start: int, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact top-k (score desc, id asc) of a chunk whose column j is id start + j."""
    k = min(k, s.shape[1])
    vals, cols = torch.topk(s, k, dim=1)
    kth = vals[:, -1:]
    # topk breaks ties arbitrarily: where ties straddle the k-th place (and the
    # tied value is a real score, not a masked -inf), take them in id order.
    straddle = ((s == kth).sum(1) > (vals == kth).sum(1)) & torch.isfinite(kth.squeeze(1))
    rows = torch.nonzero(straddle).squeeze(1)
    if rows.numel():
        fixed = torch.sort(s[rows], dim=1, descending=True, stable=True)
        vals[rows], cols[rows] = fixed.values[:, :k], fixed.indices[:, :k]
    return vals, cols + start


def _topk_torch(
    query: torch.Tensor,
    candidates: torch.Tensor,
    hi: int,
    exclude: Optional[torch.Tensor],
    upper: Optional[torch.Tensor],
    max_score: Optional[float],
    cosine: bool,
    chunk: int,
) -> _TopK:
    """Top-hi admissible candidates per row with blocked matmul + topk, on the tensors' device."""
    dev, dtype = query.device, query.dtype
    b, n = query.shape[0], candidates.shape[0]
    if not bool(torch.isfinite(query).all()):
        raise ValueError("query holds a non-finite value")
    q = query
    if cosine:
        qn = q.norm(dim=1, keepdim=True)
        if not bool((qn > 0).all()):
            raise ValueError("query has a row of zero norm (cosine is undefined)")
        q = q / qn
    up = None if upper is None else _float_bound(upper, dtype, strict=True).to(dev).unsqueeze(1)
    mx = (
        None
        if max_score is None
        else _float_bound(torch.tensor([max_score], dtype=torch.float64), dtype, strict=False).to(dev)
    )
    ex = None if exclude is None else exclude.to(dev)
    chunk = chunk or max(hi, min(n, (1 << 26) // max(b, 1)))
    best_s = torch.empty((b, 0), dtype=dtype, device=dev)
    best_i = torch.empty((b, 0), dtype=torch.int64, device=dev)
    for start in range(0, n, chunk):
        c = candidates[start : start + chunk]
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"candidates holds a non-finite value in rows [{start}, {start + c.shape[0]})")
        s = q @ c.T
        if cosine:
            cn = c.norm(dim=1)
            if not bool((cn > 0).all()):
                raise ValueError("candidates has a row of zero norm (cosine is undefined)")
            s /= cn
        if not bool(torch.isfinite(s).all()):
            raise ValueError("query and candidates give non-finite scores (overflow); scale them down")
        if up is not None:
            s.masked_fill_(s >= up, -math.inf)
        if mx is not None:
            s.masked_fill_(s > mx, -math.inf)
        if ex is not None:
            hit = (ex >= start) & (ex < start + c.shape[0])
            r, p = torch.nonzero(hit, as_tuple=True)
            s[r, ex[r, p] - start] = -math.inf
        vals, ids = _chunk_top(s, start, hi)
        best_s, best_i = _rank_sort(torch.cat([best_s, vals], 1), torch.cat([best_i, ids], 1))
        best_s, best_i = best_s[:, :hi], best_i[:, :hi]
    admissible = torch.isfinite(best_s)
    counts = admissible.sum(1)
    best_i = torch.where(admissible, best_i, torch.full_like(best_i, -1))
    return best_i.cpu(), best_s.to(torch.float64).cpu(), counts.cpu()


def _topk_faiss(
    query: torch.Tensor,
    hi: int,
    exclude: Optional[torch.Tensor],
    upper: Optional[torch.Tensor],
    max_score: Optional[float],
    index: Any,
    search_k: Any,
) -> _TopK:
    """Top-hi admissible candidates from a faiss index (approximate unless the index is exact).

    The index is searched for ``search_k`` neighbours (default hi + the
    exclusion width); excluded and filtered neighbours are then dropped, so a
    row can come back with fewer than ``hi`` (reported in ``counts``, never
    hidden).
    """
    if index is None:
        raise ValueError("backend='faiss' needs index= (a faiss index over the candidates, inner product)")
    width = 0 if exclude is None else exclude.shape[1]
    kk = hi + width if search_k is None else check_int(search_k, "search_k", minimum=hi)
    kk = min(kk, int(index.ntotal))
    q = query.to(device="cpu", dtype=torch.float32).contiguous().numpy()
    dist, found = index.search(q, kk)
    scores = torch.from_numpy(dist).to(torch.float64)
    ids = torch.from_numpy(found).to(torch.int64)
    ok = ids >= 0
    if exclude is not None:
        ok &= ~(ids.unsqueeze(2) == exclude.unsqueeze(1)).any(2)
    if upper is not None:
        ok &= scores < upper.unsqueeze(1)
    if max_score is not None:
        ok &= scores <= max_score
    scores = torch.where(ok, scores, torch.full_like(scores, -math.inf))
    ids = torch.where(ok, ids, torch.full_like(ids, -1))
    scores, ids = _rank_sort(scores, ids)
    counts = ok.sum(1).clamp(max=hi)
    top_s = torch.full((q.shape[0], hi), -math.inf, dtype=torch.float64)
    top_i = torch.full((q.shape[0], hi), -1, dtype=torch.int64)
    m = min(hi, kk)
    top_s[:, :m], top_i[:, :m] = scores[:, :m], ids[:, :m]
    return top_i, top_s.contiguous(), counts.contiguous()


def mine_hard_negatives(
    query: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    lo: int = 0,
    hi: Optional[int] = None,
    exclude: Optional[ArrayLike] = None,
    positive: Optional[torch.Tensor] = None,
    positive_scores: Optional[ArrayLike] = None,
    margin: Optional[float] = None,
    relative_margin: Optional[float] = None,
    perc_pos: Optional[float] = None,
    max_score: Optional[float] = None,
    sampling: str = "uniform",
    tau: float = 1.0,
    pad: bool = False,
    metric: str = "dot",
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    offset: int = 0,
    backend: str = "auto",
    num_threads: Optional[int] = None,
    block_size: Optional[Tuple[int, int]] = None,
    index: Any = None,
    search_k: Optional[int] = None,
    candidate_ids: Optional[ArrayLike] = None,
) -> MinedNegatives:
    """``k`` hard negatives per query row, drawn from ranks ``[lo, hi)`` of an exact search.

    Every candidate is scored against each row (``metric``); a candidate is
    *admissible* for a row unless it is in the row's ``exclude`` list or a
    filter drops it. Admissible candidates are ranked (score descending, then
    id ascending), ranks ``[lo, hi)`` form the row's window, and ``k`` of the
    window are drawn (``sampling``); filtered and excluded candidates take no
    rank. The inclusion probability pi of each returned negative is exact:

    - ``"top"``: the first ``k`` of the window, pi = 1 (log q 0).
    - ``"uniform"``: a uniform ``k``-subset of the window's ``w`` candidates,
      pi = k / w.
    - ``"softmax"``: probability proportional to ``exp(score / tau)`` capped at
      1: pi_j = min(1, c · exp(s_j / tau)) with c such that the pi sum to k
      (sampling with probability proportional to size, without replacement).
      These are the probabilities with which each candidate lands in the
      sample, not a first-draw softmax times k.

    The sample is drawn by randomised systematic sampling over a Philox
    permutation of the window, keyed by ``(seed, offset + row)``: the same seed
    gives the same negatives whatever the thread count or block size, and
    mining rows in chunks with ``offset`` = the chunk's first row gives the
    result of one call.

    Filters (positive-aware, against false negatives; each needs ``positive``
    or ``positive_scores``; a candidate must pass all of those given):

    - ``margin`` m: score < pos - m.
    - ``relative_margin`` r >= 0: score < pos - r·|pos| (stays below the
      positive when its score is negative, where pos·(1 - r) would not).
    - ``perc_pos`` p in (0, 1] (TopK-PercPos; NV-Retriever uses 0.95): score <
      p·pos for pos >= 0; for a negative positive score, p·pos lies above the
      positive, so the rule is read as score < pos - (1 - p)·|pos|.
    - ``max_score``: score <= max_score (needs no positive).

    Args:
        query: (B, d) float32 or float64 query embeddings (float16 and
            bfloat16 are scored in float32, on a float32 copy, and their
            scores come back in float32).
        candidates: (N, d) candidate embeddings, same dtype and device.
        k: negatives per row (>= 1, <= hi - lo).
        lo: the rank window; ``hi`` defaults to ``lo + k`` and must be <= N.
        hi: as ``lo`` above.
        exclude: (B,) or (B, P) ids (-1 padding) a row never gets, e.g. its
            positives (the format of ``sample(exclude=)``).
        positive: (B, d) the rows' positive embeddings (scored like candidates,
            in float64); or ``positive_scores`` (B,).
        margin: the filters above.
        relative_margin: as ``margin`` above.
        perc_pos: as ``margin`` above.
        max_score: as ``margin`` above.
        sampling: "top", "uniform" or "softmax".
        tau: temperature of "softmax" (> 0).
        pad: when a row's window holds fewer than ``k`` admissible candidates,
            return what it holds and pad with id -1 / log q -inf (which
            :func:`pyneg.functional.mixed_negatives_loss` masks) instead of
            raising ValueError.
        metric: "dot" or "cosine" (cosine divides by both norms; zero vectors
            are an error).
        seed: int; without it, one is drawn from ``generator`` (or torch's
            default generator). Unused by "top".
        offset: stream position of row 0 (for chunked mining).
        backend: "auto" (the C++ kernel for CPU tensors, "torch" otherwise),
            "cpu", "torch" (blocked matmul + topk on the tensors' device), or
            "faiss" (search ``index``: approximate for an IVF/HNSW index; the
            window and the draw are pyneg's, ``metric="dot"`` only).
        index: for "faiss", an inner-product faiss index over ``candidates``
            (its ids are candidate rows).
        search_k: for "faiss", neighbours to request (default ``hi`` + the
            exclusion width); excluded and filtered neighbours are dropped
            afterwards, so rows may be short (``pad`` and ``window`` report it).
        num_threads: CPU threads (default ``torch.get_num_threads()``).
        block_size: (query_block, candidate_block) rows per block of the C++
            kernel, or for "torch" (ignored, candidate_block) columns per
            matmul; results do not depend on it.
        candidate_ids: (N,) the catalogue id of each row of ``candidates``
            (distinct, >= 0, any order; int64, so ids past ``2**31`` and up to
            ``2**63 - 1``, e.g. a shard of a ``2**40`` catalogue). ``exclude`` then
            holds catalogue ids (an id that is not a candidate excludes nothing),
            and the result's ``ids`` are catalogue ids (-1 still pads). Without
            it, ids are rows of ``candidates``. Ties still break by row, which is
            id order when ``candidate_ids`` is increasing. To gather embeddings
            of the result, pass the same ``candidate_ids`` to
            :meth:`pyneg.NegativeSource.from_mined`.

    Precision: float32 inputs are scored in float32 (each dot product summed
    in a fixed order, so equal inputs give equal scores on one machine), float64
    inputs in float64. Filters compare each score exactly against bounds
    computed in float64.

    Returns:
        :class:`MinedNegatives` (ids, scores, log_q, window).

    Raises:
        ValueError: bad sizes, a window beyond N, non-finite embeddings or
            scores, or (without ``pad``) a row with fewer than ``k`` admissible
            candidates in its window. TypeError: wrong types or dtypes.

    Example:
        >>> import torch, pyneg
        >>> g = torch.Generator().manual_seed(0)
        >>> q, items = torch.randn(4, 16, generator=g), torch.randn(1000, 16, generator=g)
        >>> pos = torch.tensor([3, 5, 7, 9])
        >>> mined = pyneg.mine_hard_negatives(q, items, 8, hi=50, exclude=pos,
        ...                                   positive=items[pos], perc_pos=0.95, seed=0, pad=True)
        >>> mined.ids.shape, bool((mined.ids != pos[:, None]).all())
        (torch.Size([4, 8]), True)
    """
    query = _check_matrix(query, "query")
    candidates = _check_matrix(candidates, "candidates")
    if candidates.dtype != query.dtype:
        raise TypeError(f"candidates has dtype {candidates.dtype} but query has {query.dtype}")
    if candidates.device != query.device:
        raise ValueError(f"candidates is on {candidates.device} but query is on {query.device}")
    if candidates.shape[1] != query.shape[1]:
        raise ValueError(
            f"candidates must have query's dimension {query.shape[1]}, got shape {shape_str(candidates.shape)}"
        )
    if query.shape[1] == 0:
        raise ValueError("query must have at least one dimension")
    if query.dtype in _HALFS:  # scored in float32 (a copy), scores returned in float32
        query, candidates = query.float(), candidates.float()
    b, n = query.shape[0], candidates.shape[0]
    k = check_int(k, "k", minimum=1)
    lo = check_int(lo, "lo", minimum=0)
    hi_given = hi is not None
    hi = lo + k if hi is None else check_int(hi, "hi", minimum=1)
    if lo >= hi:
        raise ValueError(f"lo must be < hi, got lo={lo}, hi={hi}")
    if k > hi - lo:
        raise ValueError(f"k={k} exceeds the window [lo, hi) = [{lo}, {hi}) of {hi - lo} ranks")
    if hi > n:
        if hi_given:
            raise ValueError(f"hi={hi} exceeds the number of candidates ({n} rows in candidates)")
        raise ValueError(
            f"k={k}" + (f" with lo={lo}" if lo else "") + f" asks for ranks up to {hi} but candidates has only "
            f"{n} rows: lower k" + (" or lo" if lo else "") + f" (at most {n - lo})"
        )
    # Each row's top hi (an id and a score per rank): refused by name before the search when it cannot fit.
    check_nbytes((b, hi), 16, "the top-hi lists of every query row (rows of query x hi)")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    tau = _check_real(tau, "tau", minimum=0.0, open_min=True)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be a bool, got {type(pad).__name__}")
    offset = check_int(offset, "offset", minimum=0)
    threads = torch.get_num_threads() if num_threads is None else check_int(num_threads, "num_threads", minimum=1)
    block = _check_block_size(block_size)
    cosine = metric == "cosine"
    max_score = None if max_score is None else _check_real(max_score, "max_score")
    pos = _positive_scores(query, positive, positive_scores, cosine)
    upper = _upper_bounds(pos, margin, relative_margin, perc_pos)
    cat = None if candidate_ids is None else _CandidateIds(candidate_ids, n)
    ex = _check_exclude(exclude, b, n) if cat is None else cat.rows_of_exclude(exclude, b)
    if sampling == "top":
        seed = 0
    elif seed is None:
        from pyneg.samplers import draw_seed

        seed = draw_seed(generator)
    else:
        seed = check_seed(seed)

    if backend == "cpu" and query.device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got {query.device}")
    if backend == "faiss":
        if cosine:
            raise ValueError("backend='faiss' supports metric='dot' (index normalised vectors for cosine)")
        top_ids, top_scores, counts = _topk_faiss(query, hi, ex, upper, max_score, index, search_k)
    elif backend == "cpu" or (backend == "auto" and query.device.type == "cpu"):
        top_ids, top_scores, counts = _topk_cpu(query, candidates, hi, ex, upper, max_score, cosine, block, threads)
    else:
        top_ids, top_scores, counts = _topk_torch(query, candidates, hi, ex, upper, max_score, cosine, block[1])

    window = (torch.clamp(counts, max=hi) - lo).clamp_min(0)
    short = window < k
    if not pad and bool(short.any()):
        row = int(torch.nonzero(short)[0])
        raise ValueError(
            f"row {row} has {int(window[row])} admissible candidates in ranks [{lo}, {hi}) but k={k} were asked "
            f"({int(short.sum())} rows are short): widen the window, relax the filters, or pass pad=True"
        )
    out_ids = np.empty((b, k), dtype=np.int64)
    out_scores = np.empty((b, k), dtype=np.float64)
    out_lq = np.empty((b, k), dtype=np.float64)
    out_window = np.empty(b, dtype=np.int64)
    _core.mine_window(
        top_ids.numpy(),
        top_scores.numpy(),
        counts.numpy(),
        lo,
        k,
        _SAMPLING_CODE[sampling],
        tau,
        seed,
        offset,
        out_ids,
        out_scores,
        out_lq,
        out_window,
        threads,
    )
    dev = query.device
    if cat is not None:
        out_ids = cat.ids_of_rows(out_ids)
    return MinedNegatives(
        torch.from_numpy(out_ids).to(dev),
        torch.from_numpy(out_scores).to(device=dev, dtype=query.dtype),
        torch.from_numpy(out_lq).to(dev),
        torch.from_numpy(out_window).to(dev),
    )


def _rows_of(x: Any, name: str, n: int) -> Optional[torch.Tensor]:
    if x is None:
        return None
    t = x if isinstance(x, torch.Tensor) else as_tensor(x, name)
    if t.dim() == 0 or t.shape[0] != n:
        raise ValueError(f"{name} must have one row per query ({n}), got shape {shape_str(t.shape)}")
    return t


def mine_dataset(
    query: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    *,
    chunk_size: int = 4096,
    path: Optional[str] = None,
    progress: bool = True,
    exclude: Optional[ArrayLike] = None,
    positive: Optional[torch.Tensor] = None,
    positive_scores: Optional[ArrayLike] = None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    offset: int = 0,
    **kwargs: Any,
) -> MinedNegatives:
    """Offline mining over a whole query set, chunk by chunk, resumable.

    Calls :func:`mine_hard_negatives` on ``chunk_size`` rows at a time (with
    ``offset`` advancing, so the result equals one call over all rows) and,
    with ``path``, saves the rows mined so far after every chunk (written to a
    temporary file and renamed, so an interrupted run leaves the last complete
    checkpoint). Run again with the same arguments and it resumes after the
    last saved chunk; a checkpoint written for other arguments is refused.

    Args:
        query: (n, d) all queries; ``exclude``, ``positive`` and
            ``positive_scores`` have one row per query, as for
            :func:`mine_hard_negatives`; other keyword arguments are passed on.
        chunk_size: rows per call.
        path: checkpoint file (``torch.save`` format), or None.
        progress: show a tqdm progress bar (when tqdm is installed).
        seed: without it (and for a sampled window), one is drawn from
            ``generator`` once and stored in the checkpoint.

    Returns:
        :class:`MinedNegatives` for all n rows (the final checkpoint holds the same).
    """
    query = _check_matrix(query, "query")
    n = query.shape[0]
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    offset = check_int(offset, "offset", minimum=0)
    ex = _rows_of(exclude, "exclude", n)
    pos = _rows_of(positive, "positive", n)
    pos_s = _rows_of(positive_scores, "positive_scores", n)
    if seed is None and kwargs.get("sampling", "uniform") != "top":
        from pyneg.samplers import draw_seed

        seed = draw_seed(generator)
    seed = 0 if seed is None else check_seed(seed)
    job = repr((n, tuple(candidates.shape), k, seed, offset, sorted((a, repr(v)) for a, v in kwargs.items())))
    state = None
    if path is not None and os.path.exists(path):
        state = torch.load(path)
        if state.get("job") != job:
            raise ValueError(f"path {path!r} holds a checkpoint of a different mining job; remove it or change path")
    if state is None:
        state = {
            "job": job,
            "done": 0,
            "ids": torch.full((n, k), -1, dtype=torch.int64),
            "scores": torch.full((n, k), -math.inf, dtype=torch.float32 if query.dtype in _HALFS else query.dtype),
            "log_q": torch.full((n, k), -math.inf, dtype=torch.float64),
            "window": torch.zeros(n, dtype=torch.int64),
        }
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n, initial=state["done"], desc="mining", unit="query")
        except ImportError:
            bar = None
    try:
        for start in range(state["done"], n, chunk_size):
            stop = min(n, start + chunk_size)
            part = mine_hard_negatives(
                query[start:stop],
                candidates,
                k,
                exclude=None if ex is None else ex[start:stop],
                positive=None if pos is None else pos[start:stop],
                positive_scores=None if pos_s is None else pos_s[start:stop],
                seed=seed,
                offset=offset + start,
                **kwargs,
            )
            for name, value in zip(("ids", "scores", "log_q", "window"), part):
                state[name][start:stop] = value.cpu()
            state["done"] = stop
            if path is not None:
                tmp = f"{path}.tmp"
                torch.save(state, tmp)
                os.replace(tmp, path)
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    dev = query.device
    return MinedNegatives(*(state[name].to(dev) for name in ("ids", "scores", "log_q", "window")))

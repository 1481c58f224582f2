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

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyneg._deprecation import renamed_keyword
from pyneg._hits import find_hits, hit_mask
from pyneg._loss_checks import (
    check_chunk_size,
    check_embeddings,
    check_hit_ids,
    check_ids,
    check_log_q,
    check_mixed,
    check_query,
    check_sampled,
    check_temperature,
    check_weight,
)
from pyneg._ops._checks import refuses_alike_compiled
from pyneg._reduction import acc_dtype, check_reduction, reduce_loss
from pyneg._softmax import DEFAULT_CHUNK_SIZE, Block, sigmoid_loss, softmax_loss
from pyneg._sources import NegativeSource
from pyneg._validation import ArrayLike, check_bool, check_float_tensor, shape_str
from pyneg.distributed import (
    _raise_if_any_rank_failed,
    all_gather,
    all_gather_with_grad,
    rank_and_world_size,
    rank_offset,
)

__all__ = [
    "negative_sampling_loss",
    "in_batch_softmax_loss",
    "sampled_softmax_loss",
    "nce_loss",
    "mixed_negatives_loss",
    "compute_accidental_hits",
    "NegativeSource",
]


_refuses_alike_compiled = refuses_alike_compiled


@_refuses_alike_compiled
@renamed_keyword("input", "query")
def negative_sampling_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    reduction: str = "mean",
    *,
    sample_weight: Optional[ArrayLike] = None,
) -> torch.Tensor:
    """word2vec's skip-gram negative-sampling (SGNS) loss.

    ``-log σ(u·v) - Σ_k log σ(-u·n_k)`` for each row, with ``u = query[b]``,
    ``v = positive[b]`` and ``n_k = negative[b, k]``. This is :func:`nce_loss`
    with log Q = 0, no biases and no accidental-hit removal.

    Args:
        query: (B, d) centre-word (or query) vectors, B >= 1.
        positive: (B, d) context (or positive item) vectors, same dtype and device.
        negative: (B, K, d) negative vectors for each row, same dtype and device.
        reduction: "none" (B,), "mean" or "sum".
        sample_weight: (B,) weights >= 0 of the rows (see the module docs for
            how they combine with ``reduction``).

    Returns:
        The loss, in query's dtype (float32 for 16-bit inputs).
    """
    check_reduction(reduction)
    for t, name in ((query, "query"), (positive, "positive"), (negative, "negative")):
        check_float_tensor(t, name)
    if query.dim() != 2:
        raise ValueError(f"query must be (B, d), got shape {shape_str(query.shape)}")
    if query.shape[0] == 0:
        raise ValueError("query must have at least one row")
    if positive.shape != query.shape:
        raise ValueError(f"positive must have query's shape {shape_str(query.shape)}, got {shape_str(positive.shape)}")
    if negative.dim() != 3 or negative.shape[0] != query.shape[0] or negative.shape[2] != query.shape[1]:
        raise ValueError(
            f"negative must be (B, K, d) = ({query.shape[0]}, K, {query.shape[1]}), got {shape_str(negative.shape)}"
        )
    for t, name in ((positive, "positive"), (negative, "negative")):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but query has {query.dtype}")
        if t.device != query.device:
            raise ValueError(f"{name} is on {t.device} but query is on {query.device}")
    acc = acc_dtype(query.dtype)
    weight = check_weight(sample_weight, query.shape[0], query.device, acc)
    query, positive, negative = query.to(acc), positive.to(acc), negative.to(acc)
    pos = (query * positive).sum(-1)
    # Broadcast-multiply-and-sum rather than bmm: a batch of matrix-vector
    # products is several times slower in bmm's forward+backward on the CPU.
    neg = (negative * query.unsqueeze(1)).sum(-1)
    loss = -F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)
    return reduce_loss(loss, reduction, weight)


def _gather_runs_eagerly(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss`` as is, except that a compiled call with ``gather=True`` over several ranks runs eagerly.

    The gathers, and the all-ranks agreement on the checks that precedes them
    (a rank whose input is refused must tell the others before they enter a
    collective), need their values at once: traced, a value check would only
    fail when the graph runs, after the other ranks had entered the gather.
    Such a call is one graph break (``torch.compiler.disable``); one process
    (no group, or a world of one) traces as usual.
    """
    eager = torch.compiler.disable(loss)

    @functools.wraps(loss)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.compiler.is_compiling() and kwargs.get("gather") is True:
            if rank_and_world_size(kwargs.get("group"))[1] > 1:
                return eager(*args, **kwargs)
        return loss(*args, **kwargs)

    return wrapper


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


@_refuses_alike_compiled
@_gather_runs_eagerly
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
        check_reduction(reduction)
        check_query(query)
        b = query.shape[0]
        check_embeddings(candidate, "candidate", query, rows=b)
        return (
            check_temperature(temperature),
            check_chunk_size(chunk_size),
            check_log_q(log_q, "log_q", (b,), query.device, acc_dtype(query.dtype)),
            check_ids(candidate_ids, "candidate_ids", (b,), query.device),
            check_weight(sample_weight, b, query.device, acc_dtype(query.dtype)),
        )

    temp, chunk, own_log_q, row_ids, weight = _checked_before_gather(
        check, gather, group, lambda r: {"log_q": r[2] is not None, "candidate_ids": r[3] is not None}
    )
    columns, col_ids, col_log_q, diag = candidate, row_ids, own_log_q, 0
    if gather:
        columns, col_ids, col_log_q, diag = _gather_batch(candidate, row_ids, own_log_q, group)
    return softmax_loss(
        query,
        candidate,
        own_log_q,
        [Block(columns, col_log_q, col_ids, diag)],
        row_ids,
        temp,
        chunk,
        reduction,
        weight=weight,
    )


@_refuses_alike_compiled
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
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    chunk_size = check_chunk_size(chunk_size)
    x = check_sampled(
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
    return softmax_loss(
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


@_refuses_alike_compiled
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
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    chunk_size = check_chunk_size(chunk_size)
    x = check_sampled(
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
    return sigmoid_loss(
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
    pos = check_hit_ids(positive_ids, "positive_ids", None)
    dev = pos.device
    neg = check_hit_ids(negative_ids, "negative_ids", dev)
    b, n = pos.shape[0], neg.shape[-1]
    if neg.dim() == 2 and neg.shape[0] != b:
        raise ValueError(f"negative_ids must be (N,) or ({b}, N) for {b} rows, got shape {shape_str(neg.shape)}")
    empty = torch.empty(0, dtype=torch.int64, device=dev)
    if b == 0 or n == 0 or pos.numel() == 0:
        return empty, empty.clone()
    row_ids = pos.reshape(b, -1)
    if neg.dim() == 1:
        hits = find_hits(neg, row_ids)
        assert hits is not None  # no max_pairs
        rows, cols = hits
        if row_ids.shape[1] == 1:
            return rows, cols  # already sorted by row, then column, each pair once
    else:
        rows, cols = hit_mask(neg, row_ids).nonzero(as_tuple=True)
    key = torch.unique(rows * n + cols)  # sorted, each pair once
    return key // n, key % n


@_refuses_alike_compiled
@_gather_runs_eagerly
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
        lambda: check_mixed(
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
                blocks[k] = blk._replace(emb=emb, ids=ids, log_q=log_q, diag=diag)
    return softmax_loss(query, positive, pos_lq, blocks, pos_ids, temperature, chunk_size, reduction, weight=weight)


def _gathered_flags(checked: Tuple[Any, ...]) -> Dict[str, bool]:
    """Which optional tensors of the in-batch sources a gathering mixed loss will gather."""
    flags = {}
    for k, blk in enumerate(checked[5]):
        if blk.diag is not None:
            flags[f"sources[{k}].ids"] = blk.ids is not None
            flags[f"sources[{k}].log_q"] = blk.log_q is not None
    return flags

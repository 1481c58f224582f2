"""Checks of the inputs of pyneg's losses (shapes, dtypes, devices and values), one per argument kind.

Generic checks live in :mod:`pyneg._validation`; these know the losses'
argument conventions: a (B, d) query, embeddings aligned with it, ids >= 0,
finite log q, weights >= 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional, Tuple

import torch

from pyneg._reduction import acc_dtype, check_reduction
from pyneg._softmax import Block
from pyneg._sources import NegativeSource
from pyneg._validation import as_tensor, as_tensor_on, check_bool, check_float_tensor, check_int, shape_str

# Unsigned id dtypes torch cannot compare or reduce everywhere: converted to int64.
_WIDE_UNSIGNED = tuple(getattr(torch, n) for n in ("uint16", "uint32") if hasattr(torch, n))


def check_weight(weight: Any, rows: int, device: torch.device, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """None, or ``sample_weight`` as a (rows,) tensor of finite weights >= 0 in ``dtype``.

    Weights may require grad (they multiply the per-row losses); NumPy and list
    inputs are copied, since autograd saves the weights for the backward pass.
    """
    if weight is None:
        return None
    t = as_tensor_on(weight, "sample_weight", device)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"sample_weight must hold real numbers, got {t.dtype}")
    if tuple(t.shape) != (rows,):
        raise ValueError(f"sample_weight must have shape ({rows},), one weight per row, got {shape_str(t.shape)}")
    if not t.is_floating_point():
        t = t.to(dtype)
    # The op checks the values and returns a copy (what autograd saves), the identity for gradients.
    return torch.ops.pyneg.softmax_check_real(t, "sample_weight", "weight").to(dtype)


def check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(
            f"temperature must be a positive float, got {type(temperature).__name__} "
            "(for a learned temperature, scale query instead)"
        )
    t = float(temperature)
    # Comparisons, not math.isfinite: under torch.compile(dynamic=True) a temperature
    # passed in is a symbolic float, which Dynamo compares (NaN fails both) but cannot
    # hand to math.isfinite.
    if not (0 < t < math.inf):
        # float(): Dynamo formats a symbolic float only through it (the same text eagerly).
        shown = float(temperature) if isinstance(temperature, float) else temperature
        raise ValueError(f"temperature must be finite and > 0, got {shown}")
    return t


def check_chunk_size(chunk_size: Optional[int]) -> Optional[int]:
    return None if chunk_size is None else check_int(chunk_size, "chunk_size", minimum=1)


def check_query(query: torch.Tensor) -> None:
    check_float_tensor(query, "query")
    if query.dim() != 2:
        raise ValueError(f"query must be (B, d), got shape {shape_str(query.shape)}")
    if query.shape[0] == 0:
        raise ValueError("query must have at least one row")


def check_embeddings(
    t: Any,
    name: str,
    query: torch.Tensor,
    *,
    rows: Optional[int] = None,
    per_row_ok: bool = False,
    per_row_name: str = "N",
) -> torch.Tensor:
    """(N, d) (or (B, N, d) when per_row_ok) with query's d, dtype and device."""
    check_float_tensor(t, name)
    d = query.shape[1]
    if t.dim() == 2 and t.shape[1] == d and (rows is None or t.shape[0] == rows):
        pass
    elif per_row_ok and t.dim() == 3 and t.shape[0] == query.shape[0] and t.shape[2] == d:
        pass
    else:
        want = f"({rows if rows is not None else 'N'}, {d})"
        if per_row_ok:
            want += f" or ({query.shape[0]}, {per_row_name}, {d})"
        raise ValueError(f"{name} must be {want}, got shape {shape_str(t.shape)}")
    if t.dtype != query.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but query has {query.dtype}")
    if t.device != query.device:
        raise ValueError(f"{name} is on {t.device} but query is on {query.device}")
    return t


def check_ids(ids: Any, name: str, shape: Tuple[int, ...], device: torch.device) -> Optional[torch.Tensor]:
    """None, or an integer tensor of ``shape`` on ``device`` holding ids >= 0."""
    if ids is None:
        return None
    t = as_tensor_on(ids, name, device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_str(shape)}, got {shape_str(t.shape)}")
    wide = t.dtype == getattr(torch, "uint64", None)
    if wide:  # reinterpreted, ids past 2**63 are negative
        t = t.view(torch.int64)
    elif t.dtype in _WIDE_UNSIGNED:
        t = t.to(torch.int64)
    # The op checks the values and returns an int64 copy: what the loss (and its backward
    # pass, which may rebuild the mask) reads is what was checked, whoever writes the input.
    return torch.ops.pyneg.softmax_check_ids(t.detach(), name, -1, "", wide)


def check_ids_below(ids: torch.Tensor, name: str, upper: int, what: str) -> torch.Tensor:
    """Checked int64 ids (from :func:`check_ids`) that must also be < ``upper`` (``what`` says why)."""
    return torch.ops.pyneg.softmax_check_ids(ids, name, upper, what, False)


def check_log_q(
    log_q: Any, name: str, shape: Tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Optional[torch.Tensor]:
    """None, or a finite float tensor of ``shape``, detached, in the logits' dtype."""
    if log_q is None:
        return None
    t = as_tensor_on(log_q, name, device)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_str(shape)}, got {shape_str(t.shape)}")
    return torch.ops.pyneg.softmax_check_real(t.detach(), name, "log_q").to(dtype)


class SampledInputs(NamedTuple):
    """The validated inputs of :func:`sampled_softmax_loss` and :func:`nce_loss`."""

    positive: torch.Tensor  # (B, d) or (B, T, d)
    positive_log_q: Optional[torch.Tensor]
    positive_bias: Optional[torch.Tensor]
    row_ids: Optional[torch.Tensor]  # (B,) / (B, T) when hits are removed
    block: Block
    weight: Optional[torch.Tensor]


def check_bias(bias: Any, name: str, shape: Tuple[int, ...], query: torch.Tensor) -> Optional[torch.Tensor]:
    """None, or a float tensor of ``shape`` with query's dtype and device (it may require grad)."""
    if bias is None:
        return None
    check_float_tensor(bias, name)
    if tuple(bias.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_str(shape)}, got {shape_str(bias.shape)}")
    if bias.dtype != query.dtype:
        raise TypeError(f"{name} has dtype {bias.dtype} but query has {query.dtype}")
    if bias.device != query.device:
        raise ValueError(f"{name} is on {bias.device} but query is on {query.device}")
    return bias


def check_sampled(
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
) -> SampledInputs:
    check_query(query)
    b, dev, acc = query.shape[0], query.device, acc_dtype(query.dtype)
    check_embeddings(positive, "positive", query, rows=b, per_row_ok=True, per_row_name="T")
    if positive.dim() == 3 and positive.shape[1] == 0:
        raise ValueError(f"positive must hold at least one positive per row, got shape {shape_str(positive.shape)}")
    check_embeddings(negative, "negative", query, per_row_ok=True)
    rows, cols = tuple(positive.shape[:-1]), tuple(negative.shape[:-1])
    pos_lq = check_log_q(positive_log_q, "positive_log_q", rows, dev, acc)
    neg_lq = check_log_q(negative_log_q, "negative_log_q", cols, dev, acc)
    pos_ids = check_ids(positive_ids, "positive_ids", rows, dev)
    neg_ids = check_ids(negative_ids, "negative_ids", cols, dev)
    if (pos_ids is None) != (neg_ids is None):
        raise ValueError("positive_ids and negative_ids must be given together (to mask accidental hits)")
    pos_bias = check_bias(positive_bias, "positive_bias", rows, query)
    neg_bias = check_bias(negative_bias, "negative_bias", cols, query)
    if bias is not None:
        if positive_bias is not None or negative_bias is not None:
            raise ValueError("bias (a table indexed by ids) excludes positive_bias and negative_bias")
        check_float_tensor(bias, "bias")
        if bias.dim() != 1:
            raise ValueError(f"bias must be a (V,) table of per-class biases, got shape {shape_str(bias.shape)}")
        check_bias(bias, "bias", tuple(bias.shape), query)
        if pos_ids is None:
            raise ValueError("bias is a table indexed by ids: give positive_ids and negative_ids")
        what = f"bias has {bias.shape[0]} entries"
        pos_ids = check_ids_below(pos_ids, "positive_ids", bias.shape[0], what)
        if neg_ids is not None:
            neg_ids = check_ids_below(neg_ids, "negative_ids", bias.shape[0], what)
        pos_bias, neg_bias = bias[pos_ids], bias[neg_ids]
    weight = check_weight(sample_weight, b, dev, acc)
    if not check_bool(remove_accidental_hits, "remove_accidental_hits"):
        pos_ids = neg_ids = None
    return SampledInputs(positive, pos_lq, pos_bias, pos_ids, Block(negative, neg_lq, neg_ids, bias=neg_bias), weight)


def check_hit_ids(ids: Any, name: str, device: Optional[torch.device]) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else as_tensor(ids, name)
    if t.dim() not in (1, 2):
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {shape_str(t.shape)}")
    checked = check_ids(t, name, tuple(t.shape), t.device if device is None else device)
    assert checked is not None  # ids were given
    return checked


def check_mixed(
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
    check_reduction(reduction)
    check_query(query)
    temperature = check_temperature(temperature)
    chunk_size = check_chunk_size(chunk_size)
    b, dev, acc = query.shape[0], query.device, acc_dtype(query.dtype)
    check_embeddings(positive, "positive", query, rows=b)
    pos_lq = check_log_q(positive_log_q, "positive_log_q", (b,), dev, acc)
    pos_ids = check_ids(positive_ids, "positive_ids", (b,), dev)
    weight = check_weight(sample_weight, b, dev, acc)
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
        check_embeddings(
            emb, f"{name}.embeddings", query, rows=b if src.in_batch else None, per_row_ok=not src.in_batch
        )
        cols = tuple(emb.shape[:-1])  # (N,), or (B, N) for per-row negatives
        ids = src.ids if src.ids is not None or not src.in_batch else pos_ids
        ids, src_log_q, pad = split_padding(ids, src.log_q, name, dev) if emb.dim() == 3 else (ids, src.log_q, None)
        ids = check_ids(ids, f"{name}.ids", cols, dev)
        if ids is not None and pos_ids is None:
            raise ValueError(f"{name} has ids but positive_ids is None: accidental hits cannot be masked")
        log_q = check_log_q(src_log_q, f"{name}.log_q", cols, dev, acc)
        blocks.append(Block(emb, log_q, ids, 0 if src.in_batch else None, pad=pad))
    return temperature, chunk_size, pos_lq, pos_ids, weight, blocks


def split_padding(ids: Any, log_q: Any, name: str, dev: torch.device):
    """Per-row negatives may be padded (id -1, log q -inf, as mining pads): (ids, log_q, pad mask).

    Padded entries get id 0 and log q 0 (so the checks pass) and are masked out by
    the loss. The mask is built whether or not anything is padded (no branch on
    values: the loss compiles into one graph); it is None only when neither ids
    nor log q can mark padding.
    """
    pad = None
    if ids is not None:
        ids = as_tensor_on(ids, f"{name}.ids", dev)
        if not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
            pad = ids == -1
    if log_q is not None:
        log_q = as_tensor_on(log_q, f"{name}.log_q", dev)
        if log_q.is_floating_point():
            lq_pad = log_q == -math.inf
            if pad is None:
                pad = lq_pad
            elif lq_pad.shape == pad.shape:
                pad = torch.ops.pyneg.softmax_check_padding(pad, lq_pad, name)
    if pad is None:
        return ids, log_q, None
    if ids is not None and ids.shape == pad.shape:
        ids = ids.masked_fill(pad, 0)
    if log_q is not None and log_q.shape == pad.shape and log_q.is_floating_point():
        log_q = log_q.masked_fill(pad, 0.0)
    return ids, log_q, pad

"""The graph layer's per-step kernels as PyTorch operators (``torch.ops.pyneg.graph_*``).

A training loop calls two kernels every step: the filtered draws (negative
edges, triple corruption: ``graph_corrupt``) and, at evaluation, the filtered
ranks (``graph_filtered_ranks``). As operators they are pure functions of
tensors, so ``torch.compile(fullgraph=True)`` and ``torch.export`` trace them:

* the known keys come as an index's three tensors, ``[groups, values, slots]``
  (``EdgeSet.index_tensors()``, ``TripleSet.index_tensors(side)``: the C++
  index's own memory, shared, not copied): ``groups`` (G, 4) int64 rows
  ``(a, b, begin, len)``, ``values`` (K,) the sorted known ids of every group,
  ``slots`` (S,) the hash slots (S a power of two). An empty list: no filter.
  The kernels read them in place through a bounded view: every lookup bounds
  its probes and ranges, so tensors that are not an index's own give wrong
  filters, never a read out of bounds. O(1) per call (nothing is rebuilt);
* the seed and the offset of the first row are 0-dim int64 tensors (their 64
  bits read as unsigned), so a new seed is new data, not a recompilation;
* the output shapes are static: (B, k) draws, (B,) ranks.

Checks that need no data (dtypes, shapes, device) run in the real and fake
kernels alike; those that need data (ids in range, infeasible rows, NaN
scores) run in the C++ kernels and raise ValueError. Weighted draws (an alias
table over node weights) are not an operator yet: ``negative_edges(...,
weights=...)`` stays eager.

Ops:
    ``graph_corrupt(rows, side_probs, k, unique, exclude_self_loops, universes,
    head_index, relation_index, tail_index, typed_head, typed_tail, seed, offset)``
        -> ``(ids (B, k) int64, sides (B, k) int8, log_q (B, k) float64)``:
        rows (B, 3) ``[head, relation, tail]`` (-1 for "no own id" on a side
        replaced with probability 1), side_probs (B, 3) float64, universes
        ``[num_heads, num_relations, num_tails]``; ``*_index``: the index that
        filters that side (``[]``: none); ``typed_*``: ``[offsets, ids]`` of the
        pseudo-typed candidates per relation, or ``[]``. Row i draws from
        Philox stream ``offset + i``: the same bits as the eager functions.
    ``graph_filtered_ranks(scores, targets, index, key_a, key_b)``
        -> ``(optimistic, pessimistic)`` (B,) int64: filtered ranks of
        ``targets[i]`` in ``scores[i]``, leaving out the known ids of group
        ``(key_a[i], key_b[i])`` of ``index`` (``[]``: raw ranks).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from pyneg import _core
from pyneg._ops import _checks
from pyneg._validation import check_nbytes

__all__ = ["graph_corrupt", "graph_filtered_ranks"]

_MASK64 = 2**64 - 1
# ids (8) + sides (1) + log q (8) per negative
_CORRUPT_BYTES = 17


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _check_index(op: str, index: Sequence[Tensor], name: str) -> None:
    if len(index) not in (0, 3):
        raise ValueError(f"pyneg::{op}: {name} must be [] or [groups, values, slots], got {len(index)} tensors")
    if index:
        _checks.check(op, index[0], f"{name}[0] (groups)", dtypes=(torch.int64,), shape=(None, 4))
        _checks.check(op, index[1], f"{name}[1] (values)", dtypes=(torch.int64,), ndim=(1,))
        _checks.check(op, index[2], f"{name}[2] (slots)", dtypes=(torch.int64,), ndim=(1,))


def check_corrupt_args(
    rows: Tensor,
    side_probs: Tensor,
    k: int,
    universes: Sequence[int],
    indexes: Sequence[Sequence[Tensor]],
    typed: Sequence[Sequence[Tensor]],
    seed: Tensor,
    offset: Tensor,
    *,
    real: bool = True,
) -> None:
    op = "graph_corrupt"
    _checks.check(op, rows, "rows", dtypes=(torch.int64,), shape=(None, 3))
    _checks.check(op, side_probs, "side_probs", dtypes=(torch.float64,), shape=(None, 3))
    if side_probs.shape[0] != rows.shape[0]:
        raise ValueError(f"pyneg::{op}: side_probs must have one row per row of rows")
    if k < 0:
        raise ValueError(f"pyneg::{op}: k must be >= 0, got {k}")
    if len(universes) != 3:
        raise ValueError(f"pyneg::{op}: universes must be [num_heads, num_relations, num_tails]")
    for name, index in zip(("head_index", "relation_index", "tail_index"), indexes):
        _check_index(op, index, name)
    for name, t in zip(("typed_head", "typed_tail"), typed):
        if len(t) not in (0, 2):
            raise ValueError(f"pyneg::{op}: {name} must be [] or [offsets, ids], got {len(t)} tensors")
        for part, x in zip(("offsets", "ids"), t):
            _checks.check(op, x, f"{name} {part}", dtypes=(torch.int64,), ndim=(1,))
    _checks.check(op, seed, "seed", dtypes=(torch.int64,), shape=())
    _checks.check(op, offset, "offset", dtypes=(torch.int64,), shape=())
    named = [("rows", rows), ("side_probs", side_probs), ("seed", seed), ("offset", offset)]
    for name, index in zip(("head_index", "relation_index", "tail_index"), indexes):
        named += [(f"{name}[{i}]", t) for i, t in enumerate(index)]
    for name, t in zip(("typed_head", "typed_tail"), typed):
        named += [(f"{name}[{i}]", x) for i, x in enumerate(t)]
    _checks.same_device(op, named, cpu_only=True, real=real)
    check_nbytes((rows.shape[0], k), _CORRUPT_BYTES, f"pyneg::{op}: k")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _index_arg(index: Sequence[Tensor]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return None if not index else (_np(index[0]), _np(index[1]), _np(index[2]))


@torch.library.custom_op("pyneg::graph_corrupt", mutates_args=(), device_types="cpu")
def graph_corrupt(
    rows: Tensor,
    side_probs: Tensor,
    k: int,
    unique: bool,
    exclude_self_loops: bool,
    universes: List[int],
    head_index: List[Tensor],
    relation_index: List[Tensor],
    tail_index: List[Tensor],
    typed_head: List[Tensor],
    typed_tail: List[Tensor],
    seed: Tensor,
    offset: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Filtered corruption of every row: (ids, sides, log_q), each (B, k) (see the module doc)."""
    indexes = (head_index, relation_index, tail_index)
    check_corrupt_args(rows, side_probs, k, universes, indexes, (typed_head, typed_tail), seed, offset)
    ids, sides, lq = _core.graph_corrupt(
        _np(rows),
        _np(side_probs),
        k,
        unique,
        exclude_self_loops,
        [_index_arg(ix) for ix in indexes],
        list(universes),
        (_np(typed_head[0]), _np(typed_head[1])) if typed_head else None,
        (_np(typed_tail[0]), _np(typed_tail[1])) if typed_tail else None,
        None,
        None,
        int(seed.item()) & _MASK64,
        int(offset.item()) & _MASK64,
        _threads(),
    )
    return torch.from_numpy(ids), torch.from_numpy(sides), torch.from_numpy(lq)


@graph_corrupt.register_fake
def _(
    rows: Tensor,
    side_probs: Tensor,
    k: int,
    unique: bool,
    exclude_self_loops: bool,
    universes: List[int],
    head_index: List[Tensor],
    relation_index: List[Tensor],
    tail_index: List[Tensor],
    typed_head: List[Tensor],
    typed_tail: List[Tensor],
    seed: Tensor,
    offset: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    indexes = (head_index, relation_index, tail_index)
    _checks.fake_refused(
        lambda: check_corrupt_args(
            rows, side_probs, k, universes, indexes, (typed_head, typed_tail), seed, offset, real=False
        ),
        rows,
        side_probs,
        seed,
    )
    shape = (_checks.rows(rows), max(k, 0))
    return (
        rows.new_empty(shape, dtype=torch.int64),
        rows.new_empty(shape, dtype=torch.int8),
        rows.new_empty(shape, dtype=torch.float64),
    )


def check_ranks_args(
    scores: Tensor, targets: Tensor, index: Sequence[Tensor], key_a: Tensor, key_b: Tensor, *, real: bool = True
) -> None:
    op = "graph_filtered_ranks"
    _checks.check(op, scores, "scores", dtypes=_checks.FLOAT_DTYPES, ndim=(2,))
    b = _checks.rows(scores)
    for name, t in (("targets", targets), ("key_a", key_a), ("key_b", key_b)):
        _checks.check(op, t, name, dtypes=(torch.int64,), ndim=(1,))
        if t.shape[0] != b:
            raise ValueError(f"pyneg::{op}: {name} must have one entry per scores row, got shape {tuple(t.shape)}")
    _check_index(op, index, "index")
    named = [("scores", scores), ("targets", targets), ("key_a", key_a), ("key_b", key_b)]
    named += [(f"index[{i}]", t) for i, t in enumerate(index)]
    _checks.same_device(op, named, cpu_only=True, real=real)


@torch.library.custom_op("pyneg::graph_filtered_ranks", mutates_args=(), device_types="cpu")
def graph_filtered_ranks(
    scores: Tensor, targets: Tensor, index: List[Tensor], key_a: Tensor, key_b: Tensor
) -> Tuple[Tensor, Tensor]:
    """(optimistic, pessimistic) filtered ranks, (B,) int64 each (see the module doc)."""
    check_ranks_args(scores, targets, index, key_a, key_b)
    opt, pes = _core.graph_filtered_ranks(
        _np(scores), _np(targets), _index_arg(index), _np(key_a), _np(key_b), _threads()
    )
    return torch.from_numpy(opt), torch.from_numpy(pes)


@graph_filtered_ranks.register_fake
def _(scores: Tensor, targets: Tensor, index: List[Tensor], key_a: Tensor, key_b: Tensor) -> Tuple[Tensor, Tensor]:
    _checks.fake_refused(lambda: check_ranks_args(scores, targets, index, key_a, key_b, real=False), scores, targets)
    b = _checks.rows(scores) if scores.dim() else 0
    return scores.new_empty((b,), dtype=torch.int64), scores.new_empty((b,), dtype=torch.int64)


_checks.refuse_sparse(
    "graph_corrupt",
    (
        "rows", "side_probs", "k", "unique", "exclude_self_loops", "universes", "head_index",
        "relation_index", "tail_index", "typed_head", "typed_tail", "seed", "offset",
    ),
)  # fmt: skip
_checks.refuse_sparse("graph_filtered_ranks", ("scores", "targets", "index", "key_a", "key_b"))

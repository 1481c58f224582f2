"""Accidental hits: the (row, column) entries of a block of negatives that equal a row's positive id.

A hit is masked out of the row's softmax (the column is the row's own
positive, not a negative). This module is pyneg's one way of finding them:

* :func:`find_hits` lists the hits of candidates shared by all rows. Hits are
  few (an id recurs in a handful of columns), so the list is found with a hash
  join (``pyneg._core.find_accidental_hits``: a hash table of the candidates
  probed with each positive id, O(N + B·T + hits)) rather than a dense
  (B, N) comparison; on CUDA the candidates are sorted and searched instead.
  Measured against the alternatives (sort + searchsorted, a dense comparison,
  the memory bank's persistent ring index rebuilt per call) it was the fastest
  pure function for B = 512..4,096 rows and N = 4,096..65,536 candidates.
* :func:`hit_mask` is the dense (B, N) comparison, for per-row candidates
  (whose logits are (B, N) anyway) and for shared blocks whose ids repeat so
  much that the list would be larger than the mask (see
  :data:`DENSE_MASK_FRACTION`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

# Above this fraction of masked entries a block is masked with a dense (B, n)
# comparison instead of a list of (row, column) hits (16 bytes per hit, about
# 48 while the list is built): the list then stays within 3x the mask's size.
DENSE_MASK_FRACTION = 1 / 16
DENSE = "dense"  # what block_hits returns instead of a list longer than max_pairs


def find_hits(
    candidate_ids: torch.Tensor, positive_ids: torch.Tensor, max_pairs: Optional[int] = None
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The accidental hits of B rows among N candidates shared by all rows.

    Args:
        candidate_ids: (N,) integer ids >= 0 (any integer dtype; compared as int64).
        positive_ids: (B,) one positive id per row, or (B, T) several; ids >= 0,
            on candidate_ids' device.
        max_pairs: give up (return None) once more than this many hits are
            found, so a caller can switch to a dense mask that is smaller than
            the list; None: no limit.

    Returns:
        ``(rows, cols)``: int64 tensors on candidate_ids' device with
        ``candidate_ids[cols[k]] == positive_ids[rows[k], t]`` for some ``t``,
        one entry per (row, positive, column), ordered by row, then positive,
        then column (a row whose positive ids repeat lists a column once per
        copy); or None when there are more than ``max_pairs`` hits. Eager
        only (the number of hits is data-dependent): call it from an op's
        implementation or from code that is not compiled.

    Raises:
        ValueError: an id is negative.
    """
    pos = positive_ids.unsqueeze(1) if positive_ids.dim() == 1 else positive_ids  # (B, T); B may be 0
    rows, cols, complete = torch.ops.pyneg.softmax_find_hits(
        candidate_ids, pos, -1 if max_pairs is None else int(max_pairs)
    )
    if not bool(complete):
        return None
    return rows, cols


def hit_mask(candidate_ids: torch.Tensor, positive_ids: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: candidate j of row i equals one of row i's positive ids.

    ``candidate_ids`` is (N,) (shared by all rows) or (B, N) (per row);
    ``positive_ids`` is (B,) or (B, T). Memory: the mask itself (T > 1 is
    compared one positive at a time, never as a (B, N, T) tensor). Traceable
    (no data-dependent sizes).
    """
    cand = candidate_ids if candidate_ids.dim() == 2 else candidate_ids.unsqueeze(0)
    pos = positive_ids.unsqueeze(1) if positive_ids.dim() == 1 else positive_ids  # (B, T); B may be 0
    mask = cand == pos[:, :1]
    for t in range(1, pos.shape[1]):
        mask |= cand == pos[:, t : t + 1]
    return mask


def block_hits(
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    b: int,
    dev: torch.device,
    max_pairs: Optional[int] = None,
) -> Any:
    """(rows, columns) of the masked entries of a shared block, or None when there are none.

    The entries are the accidental hits (:func:`find_hits`; ``ids`` (N,) against
    ``row_ids`` (B,) or (B, T)) and, with ``diag``, the column ``diag + i`` of each
    row ``i`` (its own positive in an in-batch block). ``DENSE`` when the hits
    alone would exceed ``max_pairs`` (the list would outgrow the dense mask it
    stands for). Eager only.
    """
    rows, cols = [], []
    if ids is not None and row_ids is not None and ids.numel():
        budget = None if max_pairs is None else max(max_pairs - (0 if diag is None else b), -1)
        if budget is not None and budget < 0:
            return DENSE
        hits = find_hits(ids, row_ids, budget)
        if hits is None:
            return DENSE
        if hits[0].numel():
            rows.append(hits[0])
            cols.append(hits[1])
    if diag is not None:
        r = torch.arange(b, device=dev)
        rows.append(r)
        cols.append(r + diag)
    if not rows:
        return None
    return torch.cat(rows), torch.cat(cols)


def dense_mask_(
    s: torch.Tensor, ids: Optional[torch.Tensor], row_ids: Optional[torch.Tensor], diag: Optional[int], start: int
) -> None:
    """In place: −inf on the masked entries of columns ``start..start+n`` of a shared block, by comparison.

    For blocks whose ids repeat so much that hit lists would be larger than the (B, n) mask.
    """
    n = s.shape[1]
    if ids is not None and row_ids is not None:
        s.masked_fill_(hit_mask(ids[start : start + n], row_ids), -math.inf)
    if diag is not None:
        r = torch.arange(s.shape[0], device=s.device)
        c = r + (diag - start)
        ok = (c >= 0) & (c < n)
        s[r[ok], c[ok]] = -math.inf

"""Accidental hits: the (row, column) entries of a block of negatives that equal a row's positive id.

A hit is masked out of the row's softmax (it is the row's own positive, not a
negative). One module finds them for every loss and for the memory bank.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

# Above this fraction of masked entries a block is masked with a dense (B, n)
# comparison instead of a list of (row, column) hits (16 bytes per hit, about
# 48 while the list is built): the list then stays within 3x the mask's size.
DENSE_MASK_FRACTION = 1 / 16
DENSE = "dense"  # what hit_pairs returns instead of a list longer than max_pairs


def hit_pairs(
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
    repeated id: padding, a popular item) nothing is listed and ``DENSE`` is
    returned, so the lists never outgrow the dense mask they stand for.
    """
    rows, cols = [], []
    if ids is not None and row_ids is not None and ids.numel():
        sorted_ids, perm = torch.sort(ids)
        lo = torch.searchsorted(sorted_ids, row_ids, right=False)
        counts = torch.searchsorted(sorted_ids, row_ids, right=True) - lo
        total = int(counts.sum())
        if max_pairs is not None and total + (0 if diag is None else b) > max_pairs:
            return DENSE
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


def block_hits(
    ids: Optional[torch.Tensor],
    row_ids: Optional[torch.Tensor],
    diag: Optional[int],
    b: int,
    dev: torch.device,
    max_pairs: Optional[int] = None,
) -> Any:
    """:func:`hit_pairs` for rows with one positive id (B,) or several (B, T): a column that
    equals any of row i's positive ids is masked for row i (a pair may be listed twice).
    ``DENSE`` when all T lists together would exceed ``max_pairs``."""
    if row_ids is None or row_ids.dim() == 1:
        return hit_pairs(ids, row_ids, diag, b, dev, max_pairs=max_pairs)
    parts, listed = [], 0
    for t in range(row_ids.shape[1]):
        budget = None if max_pairs is None else max_pairs - listed
        h = hit_pairs(ids, row_ids[:, t].contiguous(), diag if t == 0 else None, b, dev, max_pairs=budget)
        if h is DENSE:
            return DENSE
        if h is not None:
            parts.append(h)
            listed += h[0].numel()
    if not parts:
        return None
    return torch.cat([h[0] for h in parts]), torch.cat([h[1] for h in parts])


def block_dense_mask_(s: torch.Tensor, ids, row_ids, diag: Optional[int], start: int) -> None:
    """:func:`dense_mask_` for one (B,) or several (B, T) positive ids per row."""
    if row_ids is None or row_ids.dim() == 1:
        dense_mask_(s, ids, row_ids, diag, start)
        return
    for t in range(row_ids.shape[1]):
        dense_mask_(s, ids, row_ids[:, t], diag if t == 0 else None, start)


def dense_mask_(s: torch.Tensor, ids, row_ids, diag: Optional[int], start: int) -> None:
    """The (B, n) comparison mask, for blocks whose ids repeat so much that hit lists would be larger."""
    n = s.shape[1]
    if ids is not None and row_ids is not None:
        s.masked_fill_(ids[start : start + n].unsqueeze(0) == row_ids.unsqueeze(1), -math.inf)
    if diag is not None:
        r = torch.arange(s.shape[0], device=s.device)
        c = r + (diag - start)
        ok = (c >= 0) & (c < n)
        s[r[ok], c[ok]] = -math.inf

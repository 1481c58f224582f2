"""Where a memory bank's entries sit in its ring buffer (slot arithmetic only, no data).

Slots fill 0, 1, ..., M-1 and then wrap: the newest ``count`` entries end just
before ``head`` and form one run of slots or, when they wrap, two. The bank
(:mod:`pyneg.bank`) lays out its eager and its compiled reads with these
functions, so the two paths cannot disagree.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

Segments = List[Tuple[int, int]]


def newest(head: int, count: int, capacity: int) -> Segments:
    """Storage slices holding the newest ``count`` entries, oldest first."""
    return run((head - count) % capacity, count, capacity)


def run(start: int, count: int, capacity: int) -> Segments:
    """Storage slices of ``count`` consecutive slots from ``start``, wrapping past the last slot."""
    if count == 0:
        return [(0, 0)]
    if start + count <= capacity:
        return [(start, start + count)]
    return [(start, capacity), (0, start + count - capacity)]


def count_since(steps: np.ndarray, head: int, size: int, min_step: int) -> int:
    """Number of the ``size`` stored entries written at a step >= ``min_step`` (the newest ones).

    Steps never decrease from oldest to newest, so each run of slots is sorted:
    one binary search per run.
    """
    return sum(b - a - int(np.searchsorted(steps[a:b], min_step)) for a, b in newest(head, size, steps.shape[0]))


def negative_segments(
    steps: np.ndarray, head: int, size: int, step: int, max_age: Optional[int], warmup: int
) -> Segments:
    """The slices :meth:`pyneg.MemoryBank.negatives` reads: the entries no older than
    ``max_age`` once ``warmup`` enqueues have happened, none before. A bank whose
    every slot is young is read whole, in storage order (one view)."""
    if step < warmup:
        return [(0, 0)]
    capacity = steps.shape[0]
    young = size if max_age is None else count_since(steps, head, size, step - max_age)
    return [(0, capacity)] if young == capacity else newest(head, young, capacity)

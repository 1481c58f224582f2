"""A unigram sampler whose distribution is learned from the stream of true classes.

:class:`LearnedUnigramSampler` keeps a count per class, adds the true classes of
every training step to it (:meth:`~LearnedUnigramSampler.update`) and draws
negatives in proportion to the counts, like TensorFlow's
``learned_unigram_candidate_sampler``. It *is* an :class:`~pyneg.AliasSampler`:
drawing, ``unique``, ``exclude``, ``sample_candidates``, ``log_prob`` and the
expected counts are the alias sampler's own code, run on the table the sampler
last built.

**Rebuild schedule.** Building an alias table costs O(V), so the table is not
rebuilt on every update: it is rebuilt from the live counts after every
``rebuild_every`` updates and, when ``rebuild_growth`` is given, as soon as the
total count has grown by that factor since the last build (so early, fast
changing counts are followed closely), or on demand with
:meth:`~LearnedUnigramSampler.rebuild`. An update itself costs O(batch).
Between rebuilds the sampler keeps drawing from the table it built last, and
:attr:`~pyneg.AliasSampler.probs`, ``log_prob``, ``expected_count`` and
``log_expected_count`` all describe *that* table, never the live counts: the
log Q a loss subtracts is always the one of the distribution the negatives came
from. The live counts are :attr:`~LearnedUnigramSampler.counts`.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import torch

from pyneg import _core
from pyneg._validation import (
    MAX_CLASSES,
    ArrayLike,
    as_index_tensor,
    as_tensor,
    check_float,
    check_int,
    owned_copy,
)
from pyneg.frequency import FrequencyEstimator
from pyneg.samplers import AliasSampler, _table_distribution

__all__ = ["LearnedUnigramSampler"]


class LearnedUnigramSampler(AliasSampler):
    """Draws ids in proportion to counts learned from the true classes seen so far.

    Every class starts at ``initial_count`` (TensorFlow's default, 1, gives every
    class a positive probability before it is seen); :meth:`update` adds one per
    occurrence of each id. Counts are exact float64 integers up to 2**53.

    Args:
        num_classes: V, the number of classes.
        initial_count: the count every class starts at; > 0, so that no class
            ever has probability 0 (a class never seen stays drawable).
        rebuild_every: rebuild the alias table after this many updates.
        rebuild_growth: if given (> 1), also rebuild as soon as the total count
            is this many times the total at the last build.

    Thread-safe: :meth:`update`, :meth:`set_counts`, :meth:`rebuild`,
    ``state_dict`` and ``load_state_dict`` run under one lock, so concurrent
    updates are all counted and a state is always a consistent snapshot. A
    rebuild replaces the sampler's table, probabilities and caches as one object,
    so a thread drawing at the same time uses either the old table or the new
    one, each with its own probabilities, never a mix.

    Copies (``copy.deepcopy``, pickle, ``torch.save``) and ``state_dict`` keep
    the table drawn from, the live counts and the schedule's position: the copy
    draws, updates and rebuilds exactly as the original would.

    Example:
        >>> import torch, pyneg
        >>> sampler = pyneg.LearnedUnigramSampler(5, rebuild_every=2)
        >>> sampler.update(torch.tensor([3, 3, 3]))
        False
        >>> sampler.update(torch.tensor([3, 1]))  # the 2nd update rebuilds the table
        True
        >>> sampler.probs
        tensor([0.1000, 0.2000, 0.1000, 0.5000, 0.1000], dtype=torch.float64)
    """

    def __init__(
        self,
        num_classes: int,
        *,
        initial_count: float = 1.0,
        rebuild_every: int = 100,
        rebuild_growth: Optional[float] = None,
    ) -> None:
        n = check_int(num_classes, "num_classes", minimum=1, maximum=MAX_CLASSES)
        c0 = _check_initial_count(initial_count, "initial_count")
        every = check_int(rebuild_every, "rebuild_every", minimum=1)
        growth = _check_growth(rebuild_growth, "rebuild_growth")
        self._lock = threading.Lock()
        self._initial_count = c0
        self._rebuild_every = every
        self._rebuild_growth = growth
        # Owned float64 counts, updated in place with index_add_ (O(batch), no
        # copy of the V entries; a C++ kernel would do the same loop).
        self._counts = torch.full((n,), c0, dtype=torch.float64)
        self._mass = float(n) * c0  # the live total, kept incrementally
        with self._lock:
            self._rebuild_locked()

    @classmethod
    def from_estimator(
        cls,
        estimator: FrequencyEstimator,
        keys: ArrayLike,
        *,
        rebuild_every: int = 100,
        rebuild_growth: Optional[float] = None,
    ) -> LearnedUnigramSampler:
        """A sampler over ``keys`` whose counts are a :class:`~pyneg.FrequencyEstimator`'s estimate.

        For streams whose vocabulary is not known in advance: the estimator
        follows ids without knowing V, and this builds a sampler over the ids
        you want to draw from (e.g. the distinct ids seen so far). Class ``i``
        of the sampler stands for ``keys[i]``, so map its draws back with
        ``keys[sampler.sample(...)]``. Each class's count is the estimated
        number of steps whose batch held the key (``probability * step``, with
        ``step`` at least 1), so later :meth:`update` calls (with positions
        into ``keys``) add to counts of the same scale. Build a new sampler
        when the key set changes.
        """
        if not isinstance(estimator, FrequencyEstimator):
            raise TypeError(f"estimator must be a pyneg.FrequencyEstimator, got {type(estimator).__name__}")
        k = as_index_tensor(keys, "keys", None, allow_empty=False)
        if k.dim() != 1:
            raise ValueError(f"keys must be 1-D, got shape {tuple(k.shape)}")
        if k.numel() > MAX_CLASSES:
            raise ValueError(f"keys must hold at most {MAX_CLASSES} ids, got {k.numel()}")
        if torch.unique(k).numel() != k.numel():
            raise ValueError("keys must not repeat an id (each key is one class)")
        counts = estimator.probability(k).to(torch.float64) * max(estimator.step, 1)
        sampler = cls(k.numel(), rebuild_every=rebuild_every, rebuild_growth=rebuild_growth)
        with sampler._lock:
            sampler._set_counts_locked(torch.arange(k.numel()), counts)
            sampler._rebuild_locked()
        return sampler

    # --------------------------------------------------------------- learning
    @property
    def counts(self) -> torch.Tensor:
        """(V,) float64 live counts (a copy; the table may have been built from older ones)."""
        with self._lock:
            return self._counts.clone()

    @property
    def initial_count(self) -> float:
        """The count every class started at."""
        return self._initial_count

    @property
    def rebuild_every(self) -> int:
        """The table is rebuilt after this many updates."""
        return self._rebuild_every

    @property
    def rebuild_growth(self) -> Optional[float]:
        """Also rebuild when the total count grew by this factor (None: never)."""
        return self._rebuild_growth

    @property
    def pending_updates(self) -> int:
        """Updates since the table was last built (0 right after a rebuild)."""
        return self._pending

    def update(self, ids: ArrayLike) -> bool:
        """Adds one to the count of every id in ``ids`` (any shape; repeats count each time).

        One call is one update for the schedule. Returns whether the table was
        rebuilt. Refused input (ids out of ``[0, V)``, non-integer dtypes, meta
        or sparse tensors) raises ValueError/TypeError and changes nothing.
        """
        with self._lock:
            idx = as_index_tensor(ids, "ids", self.num_classes).reshape(-1)
            if idx.numel():
                self._counts.index_add_(0, idx, torch.ones(idx.numel(), dtype=torch.float64))
                self._mass += float(idx.numel())
            return self._after_update_locked()

    def set_counts(self, ids: ArrayLike, counts: ArrayLike) -> bool:
        """Replaces the counts of ``ids`` (distinct) by ``counts`` (same shape, finite, > 0).

        One call is one update for the schedule; returns whether the table was
        rebuilt. Refused input changes nothing.
        """
        with self._lock:
            self._set_counts_locked(ids, counts)
            return self._after_update_locked()

    def rebuild(self) -> None:
        """Rebuilds the table from the live counts now (O(V)) and restarts the schedule."""
        with self._lock:
            self._rebuild_locked()

    def _set_counts_locked(self, ids: ArrayLike, counts: ArrayLike) -> None:
        idx = as_index_tensor(ids, "ids", self.num_classes).reshape(-1)
        c = as_tensor(counts, "counts")
        if c.dtype == torch.bool or c.is_complex():
            raise TypeError(f"counts must hold real numbers, got {c.dtype}")
        c = owned_copy(c, torch.float64).reshape(-1)
        if c.numel() != idx.numel():
            raise ValueError(f"counts must hold one value per id: {c.numel()} values for {idx.numel()} ids")
        if c.numel() and not bool((torch.isfinite(c) & (c > 0)).all()):
            raise ValueError("counts must be finite and > 0 (every class keeps a positive probability)")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("ids must not repeat an id in set_counts")
        if idx.numel():
            self._mass += float(c.sum() - self._counts[idx].sum())
            self._counts[idx] = c

    def _after_update_locked(self) -> bool:
        self._pending += 1
        due = self._pending >= self._rebuild_every or (
            self._rebuild_growth is not None and self._mass >= self._rebuild_growth * self._built_mass
        )
        if due:
            self._rebuild_locked()
        return due

    def _rebuild_locked(self) -> None:
        table = _core.AliasTable(self._counts.numpy(), "counts", torch.get_num_threads())  # copies, then checks
        self._dist = _table_distribution(table)
        self._pending = 0
        self._built_mass = self._mass = float(self._counts.sum())  # resynchronise the running total

    # ------------------------------------------------------------ persistence
    _EXTRA_KEYS = ("counts", "initial_count", "rebuild_every", "rebuild_growth", "pending_updates", "built_mass")

    def state_dict(self) -> Dict[str, Any]:
        """The table's probabilities (what it draws from), the live ``counts``, the
        schedule (``rebuild_every``, ``rebuild_growth``: 0.0 for None) and its
        position (``pending_updates``, ``built_mass``)."""
        with self._lock:
            return super().state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        with self._lock:
            super().load_state_dict(state_dict)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._lock = threading.Lock()  # unpickling builds the object without __init__
        with self._lock:
            super().__setstate__(state)

    def _extra_state(self) -> Dict[str, Any]:
        return {
            "counts": self._counts.clone(),
            "initial_count": self._initial_count,
            "rebuild_every": self._rebuild_every,
            "rebuild_growth": self._rebuild_growth or 0.0,
            "pending_updates": self._pending,
            "built_mass": self._built_mass,
        }

    def _check_extra_state(self, state: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
        c = state["counts"]
        if (
            not isinstance(c, torch.Tensor)
            or c.dtype != torch.float64
            or c.dim() != 1
            or c.layout != torch.strided
            or c.device.type == "meta"
        ):
            raise ValueError("state_dict['counts'] must be a 1-D float64 tensor")
        if c.numel() != num_classes:
            raise ValueError(f"state_dict['counts'] has {c.numel()} classes but the table {num_classes}")
        counts = owned_copy(c, torch.float64)
        if not bool((torch.isfinite(counts) & (counts > 0)).all()):
            raise ValueError("state_dict['counts'] must be finite and > 0")
        try:
            growth = check_float(state["rebuild_growth"], "state_dict['rebuild_growth']")
            extra = {
                "counts": counts,
                "initial_count": _check_initial_count(state["initial_count"], "state_dict['initial_count']"),
                "rebuild_every": check_int(state["rebuild_every"], "state_dict['rebuild_every']", minimum=1),
                "rebuild_growth": None if growth == 0.0 else _check_growth(growth, "state_dict['rebuild_growth']"),
                "pending_updates": check_int(state["pending_updates"], "state_dict['pending_updates']", minimum=0),
                "built_mass": check_float(state["built_mass"], "state_dict['built_mass']", minimum=0.0),
            }
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return extra

    def _set_extra_state(self, extra: Dict[str, Any]) -> None:
        self._counts = extra["counts"]
        self._initial_count = extra["initial_count"]
        self._rebuild_every = extra["rebuild_every"]
        self._rebuild_growth = extra["rebuild_growth"]
        self._pending = extra["pending_updates"]
        self._built_mass = extra["built_mass"]
        self._mass = float(self._counts.sum())

    def __repr__(self) -> str:
        return (
            f"LearnedUnigramSampler(num_classes={self.num_classes}, rebuild_every={self._rebuild_every}, "
            f"rebuild_growth={self._rebuild_growth}, pending_updates={self._pending})"
        )


def _check_initial_count(value: Any, name: str) -> float:
    c = check_float(value, name, minimum=0.0)
    if not c > 0:
        raise ValueError(f"{name} must be > 0 (every class starts with a positive probability), got {c}")
    return c


def _check_growth(value: Any, name: str) -> Optional[float]:
    if value is None:
        return None
    g = check_float(value, name, minimum=1.0)
    if not g > 1:
        raise ValueError(f"{name} must be > 1 (or None), got {g}")
    return g

"""Streaming estimate of how likely each item id is to be in a step's batch.

:class:`FrequencyEstimator` estimates, from the stream of training batches, the
probability ``p`` that an item id lands in a step's batch: the ``log q`` that
in-batch (and queue) negatives subtract from their logits (Yi et al., RecSys
2019). Its hot path is C++ (``csrc/cpu/frequency_estimator.cpp``).

With ``sync=True`` (and an initialised process group of world size > 1) each
``update`` gathers the step's ids from all ranks, in rank order, before
recording them, so every rank holds what one process fed the concatenated
global batch would hold. Without a process group it behaves as world size 1.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Optional

import numpy as np
import torch

from pyneg import _core
from pyneg._deprecation import renamed_keyword
from pyneg._ops import memory as _ops
from pyneg._ops._checks import refuses_alike_compiled
from pyneg._state import (
    MAX_STEP,
    copy_on_write,
    pack_tensors,
    state_int,
    state_must_match,
    state_tensor,
    unpack_tensors,
)
from pyneg._validation import (
    ArrayLike,
    allocate,
    as_id_array,
    check_bool,
    check_float,
    check_id_tensor,
    check_int,
    check_nbytes,
)
from pyneg.distributed import _checked_on_every_rank, _gather_rows, _sync_group

__all__ = ["FrequencyEstimator"]


class FrequencyEstimator:
    """Streaming estimate of how likely each item id is to be in a step's batch.

    Keeps, for each of ``num_hashes`` hash functions, a row of ``num_buckets``
    cells ``(A, B)``: ``A`` the last step the cell was hit and ``B`` the
    estimated gap between hits. Step ``t`` (``update(ids)``, steps counted from
    1) updates every cell that one of its ids hashes to::

        B <- (1 - alpha) * B + alpha * (t - A);   A <- t

    and the estimate is ``p = 1 / max_k B[h_k(id)]``: the most pessimistic row,
    which limits the damage of hash collisions (a collision only makes a cell
    hit more often, i.e. its gap smaller).

    Conventions:

    * **Once per step.** A cell is updated at most once per step: an id repeated
      within a batch counts once, so ``B`` estimates the mean gap between steps
      whose batch contains the id and ``p`` the per-step inclusion probability,
      ``1 - (1 - p_draw) ** batch_size`` for ids drawn i.i.d. (A colliding id in
      the same step also finds its cell already updated: the cell measures the
      probability that *any* of its ids is in the batch.)
    * **First sighting.** ``A`` starts at 0, so a cell first hit at step ``t``
      has waited ``t`` steps since the stream started; it takes ``B = t`` (that
      first gap) instead of blending it with an arbitrary prior.
    * **Never seen.** An id whose cells were never hit gets ``p = 1 / (step + 1)``,
      the rate it would have if it appeared at the next step (1 before any update).

    The estimate converges over about ``1 / alpha`` steps: smaller ``alpha``
    is smoother but adapts more slowly to a drifting distribution.

    Under ``torch.compile`` (``fullgraph=True`` too), :meth:`probability` and
    :meth:`log_prob` of an integer tensor trace without a graph break (the op
    ``pyneg::frequency_estimate``, with the table and the step as graph inputs,
    so each call reads the current estimate); :meth:`update` stays eager
    (``torch.compiler.disable``): call it outside the compiled step.

    Thread-safe: :meth:`update` takes a lock around assigning the step number
    and running the kernel, so concurrent calls are serialised (each gets a
    step of its own, in the order they take the lock), and estimates read a
    consistent table. Copies (``copy.deepcopy``, pickle, ``torch.save``) are
    independent estimators that continue exactly as the original would.

    Args:
        num_buckets: cells per hash function (memory: 16 bytes per cell and hash).
            Use at least as many as there are distinct ids, ideally a few times more.
        alpha: learning rate of the gap average, in (0, 1].
        num_hashes: number of independent hash functions (rows).
        sync: when torch.distributed is initialised with world size > 1, make
            ``update`` gather the ids of all ranks (rank order) first, so every
            rank holds the same estimator.
        group: the process group to gather over (default: the world);
            ``process_group=`` is its deprecated name.

    Example:
        >>> import torch, pyneg
        >>> est = pyneg.FrequencyEstimator(1 << 16)
        >>> est.update(torch.tensor([3, 5, 3]))
        >>> est.probability(torch.tensor([3, 5]))
        tensor([1., 1.])
    """

    @renamed_keyword("process_group", "group")
    def __init__(
        self,
        num_buckets: int,
        *,
        alpha: float = 0.01,
        num_hashes: int = 2,
        sync: bool = False,
        group: Optional[Any] = None,
    ) -> None:
        num_buckets = check_int(num_buckets, "num_buckets", minimum=1)
        if num_buckets > _core.MAX_FREQUENCY_BUCKETS:
            raise ValueError(f"num_buckets must be <= {_core.MAX_FREQUENCY_BUCKETS}, got {num_buckets}")
        alpha = check_float(alpha, "alpha")
        if not 0.0 < alpha <= 1.0:  # also rejects NaN
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        num_hashes = check_int(num_hashes, "num_hashes", minimum=1)
        check_nbytes((num_hashes, num_buckets), 16, "the estimator's table (num_hashes, num_buckets)")
        self._alpha = alpha
        self._sync = check_bool(sync, "sync")
        self._group = group
        # (A, B) interleaved so that one update touches one 16-byte cell.
        self._set_state(
            allocate(
                lambda: torch.zeros((num_hashes, num_buckets, 2), dtype=torch.float64),
                f"the estimator's table of {num_hashes} x {num_buckets} cells",
            ),
            0,
        )

    def _set_state(self, state: torch.Tensor, step: int) -> None:
        self._state = state  # never handed out: state_dict() copies
        self._cells = state.numpy()  # the same memory, as the kernels take it
        # The step as a 0-dim tensor too, updated in place: a compiled read takes it
        # as a graph input, so it sees every update (nothing recompiles).
        self._step_t = torch.zeros((), dtype=torch.int64)
        self._set_step(step)
        # update() assigns step numbers and runs the kernel under this lock, so
        # calls from several threads each get their own step (see the class docs).
        self._lock = threading.RLock()

    def _set_step(self, step: int) -> None:
        self._step = step
        self._step_t.fill_(step)

    # ------------------------------------------------------- copies, pickling
    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "alpha": self._alpha,
                "sync": self._sync,
                "group": self._group,
                # By value: see pyneg._state.PackedTensor (spawn DataLoader workers).
                "state": pack_tensors(self._state.clone()),
                "step": self._step,
            }

    def __setstate__(self, st: Dict[str, Any]) -> None:
        self._alpha, self._sync, self._group = st["alpha"], st["sync"], st["group"]
        self._set_state(unpack_tensors(st["state"]).contiguous().clone(), st["step"])

    def __deepcopy__(self, memo: Dict[int, Any]) -> FrequencyEstimator:
        new = FrequencyEstimator.__new__(FrequencyEstimator)
        memo[id(self)] = new
        new.__setstate__(copy_on_write(self.__getstate__(), memo, self._group))
        return new

    # ------------------------------------------------------------ properties
    @property
    def num_buckets(self) -> int:
        return int(self._state.shape[1])

    @property
    def num_hashes(self) -> int:
        return int(self._state.shape[0])

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def step(self) -> int:
        """Number of updates so far (the step number of the last update)."""
        return self._step

    def __repr__(self) -> str:
        return (
            f"FrequencyEstimator(num_buckets={self.num_buckets}, alpha={self._alpha}, "
            f"num_hashes={self.num_hashes}, step={self._step})"
        )

    # --------------------------------------------------------------- updates
    @torch.compiler.disable
    def update(self, ids: ArrayLike) -> None:
        """Records one training step's item ids (1-D, >= 0; repeats count once).

        Thread-safe: calls from several threads are serialised, each one a step
        of its own. With ``sync=True`` under torch.distributed, gathers every
        rank's ids first (each rank must call ``update`` once per step).
        """
        with self._lock:
            group = _sync_group(self._sync, self._group)

            def check() -> np.ndarray:
                if self._step >= MAX_STEP:
                    raise ValueError(
                        f"the estimator has reached its last step ({MAX_STEP}): "
                        "step numbers past 2**53 are not exact in its float64 table"
                    )
                return as_id_array(ids, "ids")

            arr = _checked_on_every_rank(check, group)
            if group is not None:
                arr = _gather_rows(torch.from_numpy(arr), group).numpy()
            if arr.size == 0:  # checked after the gather, so every rank agrees
                raise ValueError("ids must not be empty")
            _core.frequency_update(self._cells, arr, self._step + 1, self._alpha, torch.get_num_threads())
            self._set_step(self._step + 1)

    @refuses_alike_compiled
    def probability(self, ids: ArrayLike) -> torch.Tensor:
        """Estimated probability that each id is in a step's batch.

        float32 (the precision of log q in the losses; the estimate itself is
        good to a few percent), the shape of ``ids``, on ``ids``' device.
        """
        return self._estimate(ids, log=False)

    @refuses_alike_compiled
    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """``log`` of :meth:`probability` (computed from the gap in double precision)."""
        return self._estimate(ids, log=True)

    def _estimate(self, ids: ArrayLike, *, log: bool) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # The op pyneg::frequency_estimate, with the table and the step as graph inputs.
            t = check_id_tensor(ids, "ids")
            return _ops.frequency_estimate(self._state, t.cpu(), self._step_t, log).to(t.device)
        dev = ids.device if isinstance(ids, torch.Tensor) else None
        arr = torch.from_numpy(as_id_array(ids, "ids", ndim=None))
        with self._lock:  # a consistent snapshot while another thread updates
            _ops.check_estimate_args(self._state, arr, self._step_t, log)  # the op's own checks: one road
            out = _ops.estimate(self._state, arr, self._step, log)
        return out if dev is None or dev.type == "cpu" else out.to(dev)

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> Dict[str, Any]:
        """A copy of the state: ``last_step`` (int64) and ``gap`` (float64), both (num_hashes, num_buckets).

        Plain ints, floats and tensors: loads with ``torch.load(weights_only=True)``.
        """
        with self._lock:
            return {
                "num_buckets": self.num_buckets,
                "num_hashes": self.num_hashes,
                "alpha": self._alpha,
                "step": self._step,
                "last_step": self._state[..., 0].to(torch.int64),
                "gap": self._state[..., 1].clone(),
            }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output; ValueError for another shape or alpha.

        Everything is checked before anything is written: a refused state
        leaves the estimator as it was.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, mine in (("num_buckets", self.num_buckets), ("num_hashes", self.num_hashes), ("alpha", self._alpha)):
            state_must_match(state_dict, key, mine, "estimator")
        step = state_int(state_dict, "step", maximum=MAX_STEP)
        shape = (self.num_hashes, self.num_buckets)
        last = state_tensor(state_dict, "last_step", shape, torch.int64)
        gap = state_tensor(state_dict, "gap", shape, torch.float64)
        if last.numel() and (int(last.min()) < 0 or int(last.max()) > step):
            raise ValueError("state_dict['last_step'] must lie in [0, step]")
        hit = gap[last > 0]  # a cell never hit (last_step 0) ignores its gap
        if not bool((hit.isfinite() & (hit > 0)).all()):
            raise ValueError("state_dict['gap'] must be finite and > 0 wherever last_step > 0")
        with self._lock:
            self._state[..., 0] = last.to(torch.float64)
            self._state[..., 1] = gap
            self._set_step(step)

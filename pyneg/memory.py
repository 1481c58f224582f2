"""Streaming frequency estimation and memory banks of past embeddings.

:class:`FrequencyEstimator` estimates, from the stream of training batches, the
probability ``p`` that an item id lands in a step's batch: the ``log q`` that
in-batch (and queue) negatives subtract from their logits (Yi et al., RecSys
2019). Its hot path is C++ (``csrc/cpu/frequency_estimator.cpp``).

Both classes can keep every rank identical under ``torch.distributed``: with
``sync=True`` (and an initialised process group of world size > 1) each
``update``/``enqueue`` gathers the step's inputs from all ranks, in rank order,
before recording them, so every rank holds what one process fed the
concatenated global batch would hold. Without a process group they behave as
world size 1.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

from pyneg import _core
from pyneg import distributed as _dist
from pyneg._validation import ArrayLike, as_tensor, check_int

__all__ = ["FrequencyEstimator"]


# ------------------------------------------------------------------ helpers
def _id_array(ids: ArrayLike, name: str) -> np.ndarray:
    """``ids`` as a 1-D int64 NumPy array on the CPU (no copy for a CPU LongTensor).

    Only dtype and rank are checked here; the C++ kernels reject negative ids
    before they write anything, which costs less than a separate pass in torch.
    """
    if type(ids) is torch.Tensor and ids.dtype is torch.int64 and ids.dim() == 1 and ids.device.type == "cpu":
        return ids.numpy()  # the fast path of a training loop
    t = as_tensor(ids, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy()


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _sync_group(sync: bool, group: Optional[Any]) -> Optional[Any]:
    """The group to gather over, or None when there is nothing to gather."""
    if not sync:
        return None
    _, world = _dist.rank_and_world_size(group)
    return (group if group is not None else dist.group.WORLD) if world > 1 else None


def _gather_rows(t: torch.Tensor, group: Any) -> torch.Tensor:
    """``pyneg.distributed.all_gather`` on the device the backend needs (CUDA for NCCL)."""
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    return _dist.all_gather(t.to(dev), group).to(t.device)


def _state_tensor(sd: Dict[str, Any], key: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"state_dict has no {key!r}")
    t = sd[key]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"state_dict[{key!r}] has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise TypeError(f"state_dict[{key!r}] must be {dtype}, got {t.dtype}")
    return t


def _state_value(sd: Dict[str, Any], key: str) -> Any:
    if key not in sd:
        raise ValueError(f"state_dict has no {key!r}")
    return sd[key]


# --------------------------------------------------------- frequency estimator
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

    Args:
        num_buckets: cells per hash function (memory: 16 bytes per cell and hash).
            Use at least as many as there are distinct ids, ideally a few times more.
        alpha: learning rate of the gap average, in (0, 1].
        num_hashes: number of independent hash functions (rows).
        sync: when torch.distributed is initialised with world size > 1, make
            ``update`` gather the ids of all ranks (rank order) first, so every
            rank holds the same estimator.
        process_group: the group to gather over (default: the world).

    Example:
        >>> import torch, pyneg
        >>> est = pyneg.FrequencyEstimator(1 << 16)
        >>> est.update(torch.tensor([3, 5, 3]))
        >>> est.probability(torch.tensor([3, 5]))
        tensor([1., 1.])
    """

    def __init__(
        self,
        num_buckets: int,
        *,
        alpha: float = 0.01,
        num_hashes: int = 2,
        sync: bool = False,
        process_group: Optional[Any] = None,
    ) -> None:
        num_buckets = check_int(num_buckets, "num_buckets", minimum=1)
        if num_buckets > _core.MAX_FREQUENCY_BUCKETS:
            raise ValueError(f"num_buckets must be <= {_core.MAX_FREQUENCY_BUCKETS}, got {num_buckets}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        alpha = float(alpha)
        if not 0.0 < alpha <= 1.0:  # also rejects NaN
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        num_hashes = check_int(num_hashes, "num_hashes", minimum=1)
        self._alpha = alpha
        self._sync = _check_bool(sync, "sync")
        self._group = process_group
        # (A, B) interleaved so that one update touches one 16-byte cell.
        self._state = torch.zeros((num_hashes, num_buckets, 2), dtype=torch.float64)
        self._cells = self._state.numpy()  # the same memory, as the kernels take it
        self._step = 0

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
        return (f"FrequencyEstimator(num_buckets={self.num_buckets}, alpha={self._alpha}, "
                f"num_hashes={self.num_hashes}, step={self._step})")

    # --------------------------------------------------------------- updates
    def update(self, ids: ArrayLike) -> None:
        """Records one training step's item ids (1-D, >= 0; repeats count once).

        With ``sync=True`` under torch.distributed, gathers every rank's ids
        first (each rank must call ``update`` once per step).
        """
        arr = _id_array(ids, "ids")
        group = _sync_group(self._sync, self._group)
        if group is not None:
            arr = _gather_rows(torch.from_numpy(arr), group).numpy()
        if arr.size == 0:  # checked after the gather, so every rank agrees
            raise ValueError("ids must not be empty")
        _core.frequency_update(self._cells, arr, self._step + 1, self._alpha, torch.get_num_threads())
        self._step += 1

    def probability(self, ids: ArrayLike) -> torch.Tensor:
        """Estimated probability that each id is in a step's batch.

        float32 (the precision of log q in the losses; the estimate itself is
        good to a few percent), the shape of ``ids``, on ``ids``' device.
        """
        return self._estimate(ids, log=False)

    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """``log`` of :meth:`probability` (computed from the gap in double precision)."""
        return self._estimate(ids, log=True)

    def _estimate(self, ids: ArrayLike, *, log: bool) -> torch.Tensor:
        dev = ids.device if isinstance(ids, torch.Tensor) else None
        t = as_tensor(ids, "ids")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"ids must hold integer ids, got {t.dtype}")
        flat = t.detach().to(device="cpu", dtype=torch.int64).reshape(-1).contiguous()
        out = torch.empty(flat.shape, dtype=torch.float32)
        _core.frequency_estimate(self._cells, flat.numpy(), self._step, log, out.numpy())
        out = out.reshape(t.shape)
        return out if dev is None or dev.type == "cpu" else out.to(dev)

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> Dict[str, Any]:
        """A copy of the state: ``last_step`` (int64) and ``gap`` (float64), both (num_hashes, num_buckets)."""
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

        Everything is checked before anything is written.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, mine in (("num_buckets", self.num_buckets), ("num_hashes", self.num_hashes),
                          ("alpha", self._alpha)):
            if _state_value(state_dict, key) != mine:
                raise ValueError(f"state_dict has {key}={state_dict[key]!r} but this estimator has {mine!r}")
        step = check_int(_state_value(state_dict, "step"), "state_dict['step']", minimum=0)
        shape = (self.num_hashes, self.num_buckets)
        last = _state_tensor(state_dict, "last_step", shape, torch.int64)
        gap = _state_tensor(state_dict, "gap", shape, torch.float64)
        if bool((last < 0).any()) or bool((last > step).any()):
            raise ValueError("state_dict['last_step'] must lie in [0, step]")
        self._state[..., 0] = last.to(torch.float64)
        self._state[..., 1] = gap
        self._step = step

"""Streaming frequency estimation and memory banks of past embeddings.

:class:`FrequencyEstimator` estimates, from the stream of training batches, the
probability ``p`` that an item id lands in a step's batch: the ``log q`` that
in-batch (and queue) negatives subtract from their logits (Yi et al., RecSys
2019). Its hot path is C++ (``csrc/cpu/frequency_estimator.cpp``).

:class:`MemoryBank` is a FIFO queue of the most recent item embeddings (MoCo
queues, cross-batch negatives of Wang et al., SIGIR 2021) with their ids,
``log q`` and the step that wrote them. Batches are written in place through a
ring pointer (never concatenated or shifted); a C++ ring index
(``csrc/cpu/ring_index.cpp``) keeps the pointer, the per-slot steps and an
id -> slots lookup that finds accidental hits in O(batch + hits).

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
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from pyneg import _core
from pyneg import distributed as _dist
from pyneg._validation import ArrayLike, as_tensor, check_bool, check_device, check_int

__all__ = ["FrequencyEstimator", "MemoryBank", "BankNegatives"]


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


def _sync_group(sync: bool, group: Optional[Any]) -> Optional[Any]:
    """The group to gather over, or None when there is nothing to gather."""
    if not sync:
        return None
    _, world = _dist.rank_and_world_size(group)
    return (group if group is not None else dist.group.WORLD) if world > 1 else None


def _backend_device(group: Any) -> torch.device:
    """Where collectives of ``group`` take their tensors (CUDA for NCCL)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_rows(t: torch.Tensor, group: Any) -> torch.Tensor:
    """``pyneg.distributed.all_gather`` on the device the backend needs."""
    return _dist.all_gather(t.to(_backend_device(group)), group).to(t.device)


def _checked_on_every_rank(check: Callable[[], Any], group: Optional[Any]) -> Any:
    """Runs the input checks ``check()``; under ``group`` the ranks agree first.

    A rank whose input is bad must not leave the others waiting in the gather
    that follows: every rank reports whether its checks passed (one small
    all-reduce), and if any failed, all raise (the failing rank its own error).
    """
    if group is None:
        return check()
    error: Optional[Exception] = None
    result = None
    try:
        result = check()
    except (TypeError, ValueError) as e:
        error = e
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=_backend_device(group))
    dist.all_reduce(failed, group=group)
    if error is not None:
        raise error
    if int(failed.item()) > 0:
        raise ValueError("another rank passed invalid input to this synchronised call (see its error)")
    return result


def _check_dense(t: torch.Tensor, key: str) -> None:
    """A tensor with data that copies into the state: strided (not sparse or nested), not meta."""
    if t.layout != torch.strided or t.is_nested:
        raise TypeError(f"state_dict[{key!r}] must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type == "meta":
        raise ValueError(f"state_dict[{key!r}] is on meta (a tensor without data)")


def _state_tensor(sd: Dict[str, Any], key: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"state_dict has no {key!r}")
    t = sd[key]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(t).__name__}")
    _check_dense(t, key)
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
_MAX_ESTIMATOR_STEP = 2**53  # the cells hold step numbers as float64, exact up to 2**53


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
        self._sync = check_bool(sync, "sync")
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
        group = _sync_group(self._sync, self._group)
        arr = _checked_on_every_rank(lambda: _id_array(ids, "ids"), group)
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
        if step > _MAX_ESTIMATOR_STEP:
            raise ValueError(f"state_dict['step'] must be <= {_MAX_ESTIMATOR_STEP}, got {step}")
        shape = (self.num_hashes, self.num_buckets)
        last = _state_tensor(state_dict, "last_step", shape, torch.int64)
        gap = _state_tensor(state_dict, "gap", shape, torch.float64)
        if bool((last < 0).any()) or bool((last > step).any()):
            raise ValueError("state_dict['last_step'] must lie in [0, step]")
        hit = gap[(last > 0).to(gap.device)]  # a cell never hit (last_step 0) ignores its gap
        if not bool((hit.isfinite() & (hit > 0)).all()):
            raise ValueError("state_dict['gap'] must be finite and > 0 wherever last_step > 0")
        self._state[..., 0] = last.to(torch.float64)
        self._state[..., 1] = gap
        self._step = step


# ----------------------------------------------------------------- memory bank
class BankNegatives(NamedTuple):
    """What :meth:`MemoryBank.negatives` returns: aligned columns of negatives.

    ``hit_mask`` is ``None`` unless positive ids were given; then it is (B, N),
    True where the entry's id equals row b's positive id (an accidental hit,
    to be masked out of the logits, never treated as a negative).
    """

    embeddings: torch.Tensor
    ids: torch.Tensor
    log_q: torch.Tensor
    hit_mask: Optional[torch.Tensor]


Segments = List[Tuple[int, int]]

_MAX_BANK_STEP = 2**63 - 2  # steps are int64 in the ring index; the next enqueue writes step + 1


class MemoryBank:
    """FIFO queue of the ``capacity`` most recent (detached) embeddings, with ids and log q.

    Each :meth:`enqueue` writes its rows in place after the newest entry,
    wrapping around and overwriting the oldest: no concatenation, no shift, no
    allocation. A batch larger than ``capacity`` keeps its last ``capacity``
    rows. Every entry remembers the step (1 for the first enqueue, 2 for the
    second, ...) that wrote it; its age is ``bank.step - entry step`` (0 for the
    latest batch).

    Reading:

    * ``embeddings``, ``ids``, ``log_q``, ``steps``, ``ages``, :meth:`valid_mask`
      and :meth:`hit_mask` list all entries **oldest first**, as new tensors
      (copies): they stay valid after later enqueues.
    * :meth:`negatives` is what a training step uses: the entries young enough
      (age <= ``max_age``), and nothing until the bank is :attr:`ready`, with
      their hit mask. It returns **views** into the bank whenever the young
      entries are contiguous in storage (always once the bank is full when
      ``max_age`` is None), so it costs nothing, but the columns come in
      storage order (all tensors it returns are aligned with each other), and
      the next ``enqueue`` overwrites them: call ``enqueue`` after
      ``loss.backward()``. (Autograd notices the violation: backward raises
      "modified by an inplace operation" instead of computing a wrong gradient.)

    Args:
        capacity: number of entries kept (M).
        dim: embedding size.
        dtype: floating dtype of the stored embeddings (inputs are cast).
        device: where the embeddings, ids and log q live (default CPU); inputs
            must be there too. The ring index itself is on the CPU.
        max_age: entries older than this many steps are left out of
            :meth:`negatives` (None: never).
        warmup: :meth:`negatives` returns no entries until this many enqueues
            have happened (:attr:`ready`); early embeddings come from an
            untrained model and make poor negatives.
        sync: when torch.distributed is initialised with world size > 1, make
            ``enqueue`` gather embeddings, ids and log q of all ranks (rank
            order) first, so every rank holds the same bank.
        process_group: the group to gather over (default: the world).

    Example:
        >>> import torch, pyneg
        >>> bank = pyneg.MemoryBank(4, 2)
        >>> bank.enqueue(torch.ones(3, 2), torch.tensor([7, 8, 9]))
        >>> bank.enqueue(torch.zeros(2, 2), torch.tensor([1, 2]), log_q=torch.tensor([-1.0, -2.0]))
        >>> bank.ids
        tensor([8, 9, 1, 2])
        >>> bank.log_q
        tensor([nan, nan, -1., -2.])
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: Union[None, str, torch.device] = None,
        max_age: Optional[int] = None,
        warmup: int = 0,
        sync: bool = False,
        process_group: Optional[Any] = None,
    ) -> None:
        capacity = check_int(capacity, "capacity", minimum=1)
        if capacity > _core.MAX_RING_CAPACITY:
            raise ValueError(f"capacity must be <= {_core.MAX_RING_CAPACITY}, got {capacity}")
        dim = check_int(dim, "dim", minimum=1)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        dev = check_device(device) or torch.device("cpu")
        self._max_age = None if max_age is None else check_int(max_age, "max_age", minimum=0)
        self._warmup = check_int(warmup, "warmup", minimum=0)
        self._sync = check_bool(sync, "sync")
        self._group = process_group
        self._index = _core.RingIndex(capacity)
        self._set_storage(torch.empty((capacity, dim), dtype=dtype, device=dev))
        self._ids = torch.empty(capacity, dtype=torch.int64, device=dev)
        self._log_q = torch.empty(capacity, dtype=torch.float32, device=dev)
        self._step = 0

    def _set_storage(self, emb: torch.Tensor) -> None:
        self._emb = emb
        # The same memory as (capacity, row bytes) uint8, as the C++ row copy takes it.
        self._emb_bytes = emb.view(torch.uint8).numpy() if emb.device.type == "cpu" else None

    # ------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        return int(self._emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self._emb.dtype

    @property
    def device(self) -> torch.device:
        return self._emb.device

    @property
    def max_age(self) -> Optional[int]:
        return self._max_age

    @property
    def warmup(self) -> int:
        return self._warmup

    @property
    def step(self) -> int:
        """Number of enqueues so far (the step of the newest entries)."""
        return self._step

    @property
    def ready(self) -> bool:
        """True once ``warmup`` enqueues have happened: :meth:`negatives` then returns entries."""
        return self._step >= self._warmup

    def __len__(self) -> int:
        return int(self._index.size)

    def __repr__(self) -> str:
        return (f"MemoryBank(capacity={self.capacity}, dim={self.dim}, dtype={self.dtype}, device={self.device}, "
                f"len={len(self)}, step={self._step}, max_age={self._max_age}, warmup={self._warmup})")

    # ---------------------------------------------------------------- writing
    def enqueue(self, embeddings: torch.Tensor, ids: ArrayLike, log_q: Optional[ArrayLike] = None) -> None:
        """Appends a batch: ``embeddings`` (B, dim) (stored detached), ``ids`` (B,) >= 0,
        ``log_q`` (B,) or None (stored as NaN).

        Everything is checked before anything is written, so a bad call leaves
        the bank as it was. With ``sync=True`` under torch.distributed every rank
        must call ``enqueue`` once per step (a rank may pass zero rows).
        """
        group = _sync_group(self._sync, self._group)

        def check() -> Tuple[torch.Tensor, np.ndarray, Optional[torch.Tensor]]:
            if not isinstance(embeddings, torch.Tensor):
                raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
            if embeddings.layout != torch.strided or embeddings.is_nested:
                raise TypeError(f"embeddings must be a dense (strided) tensor, got layout {embeddings.layout}")
            if not embeddings.is_floating_point():
                raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")
            if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
                raise ValueError(f"embeddings must have shape (B, {self.dim}), got {tuple(embeddings.shape)}")
            if embeddings.device != self._emb.device:
                raise ValueError(f"embeddings are on {embeddings.device} but the bank is on {self._emb.device}")
            n = embeddings.shape[0]
            id_arr = _id_array(ids, "ids")
            if id_arr.shape[0] != n:
                raise ValueError(f"ids has {id_arr.shape[0]} entries but embeddings has {n} rows")
            lq = None
            if log_q is not None:
                lq = as_tensor(log_q, "log_q")
                if lq.layout != torch.strided or lq.is_nested:
                    raise TypeError(f"log_q must be a dense (strided) tensor, got layout {lq.layout}")
                if not lq.is_floating_point():
                    raise TypeError(f"log_q must be floating point, got {lq.dtype}")
                if tuple(lq.shape) != (n,):
                    raise ValueError(f"log_q must have shape ({n},), got {tuple(lq.shape)}")
                if lq.device.type == "meta":
                    raise ValueError("log_q is on meta (a tensor without data)")
                lq = lq.detach()
            return embeddings.detach(), id_arr, lq

        src, id_arr, lq = _checked_on_every_rank(check, group)
        n = src.shape[0]
        if group is not None:
            if lq is None:
                lq = torch.full((n,), math.nan, dtype=torch.float32)
            src = _gather_rows(src.to(self._emb.dtype), group)  # every rank sends the bank's dtype
            id_arr = _gather_rows(torch.from_numpy(id_arr), group).numpy()
            lq = _gather_rows(lq.to(device=src.device, dtype=torch.float32), group)
        if id_arr.shape[0] == 0:  # checked after the gather, so every rank agrees
            raise ValueError("embeddings must not be empty")
        dev = self._emb.device
        if lq is not None:
            lq = lq.to(device=dev, dtype=torch.float32)  # before the index moves: this copy can fail
        # Inputs that are views of this bank (what negatives() returned) are
        # copied first: the writes below would overwrite rows they still read.
        src = _unaliased(src, self._emb)
        if dev.type == "cpu" and _shares_memory(torch.from_numpy(id_arr), self._ids):
            id_arr = id_arr.copy()
        if lq is not None:
            lq = _unaliased(lq, self._log_q)
        # The byte view too: a tensor with the negative bit set has none.
        fast = dev.type == "cpu" and src.dtype == self._emb.dtype and src.is_contiguous() and not src.is_neg()
        src_bytes = src.view(torch.uint8).numpy() if fast else None
        # The index checks the ids before it changes anything; after it, the
        # copies below cannot fail (shapes, devices and dtypes are checked).
        write = self._index.push(id_arr, self._step + 1)
        self._step += 1
        if src_bytes is not None:
            # Bytes straight into the ring, single-threaded with the GIL released.
            _core.ring_copy_rows(self._emb_bytes, src_bytes, write)
            # Written behind torch's back: bump the version counter as an in-place
            # op would, so autograd still catches views used before this enqueue.
            torch.autograd.graph.increment_version(self._emb)
        else:
            _copy_rows(self._emb, src, write)
        _copy_rows(self._ids, torch.from_numpy(id_arr).to(dev, non_blocking=True), write)
        if lq is None:
            _, dst, first, second = write
            self._log_q[dst:dst + first].fill_(math.nan)
            self._log_q[:second].fill_(math.nan)
        else:
            _copy_rows(self._log_q, lq, write)

    # ------------------------------------------------------ oldest-first views
    def _fifo(self, count: int) -> Segments:
        """Storage slices holding the newest ``count`` entries, oldest first."""
        if count == 0:
            return [(0, 0)]
        cap, head = self.capacity, int(self._index.head)
        start = (head - count) % cap
        if start + count <= cap:
            return [(start, start + count)]
        return [(start, cap), (0, head)]

    @property
    def embeddings(self) -> torch.Tensor:
        """(len(bank), dim) stored embeddings, oldest first (a copy)."""
        return _take(self._emb, self._fifo(len(self)), copy=True)

    @property
    def ids(self) -> torch.Tensor:
        """(len(bank),) int64 ids, oldest first (a copy)."""
        return _take(self._ids, self._fifo(len(self)), copy=True)

    @property
    def log_q(self) -> torch.Tensor:
        """(len(bank),) float32 log q, NaN where none was given, oldest first (a copy)."""
        return _take(self._log_q, self._fifo(len(self)), copy=True)

    @property
    def steps(self) -> torch.Tensor:
        """(len(bank),) int64 step that wrote each entry, oldest first (a copy)."""
        view = self._index.slot_steps  # read-only NumPy view of the index
        return torch.from_numpy(np.concatenate([view[a:b] for a, b in self._fifo(len(self))])).to(self.device)

    @property
    def ages(self) -> torch.Tensor:
        """(len(bank),) int64 ``step - steps``: 0 for the latest batch, oldest first."""
        return self._step - self.steps

    def _min_step(self) -> int:
        return 0 if self._max_age is None else self._step - self._max_age

    def valid_mask(self) -> torch.Tensor:
        """(len(bank),) bool, oldest first: True for entries no older than ``max_age``."""
        n = len(self)
        young = int(self._index.count_since(self._min_step()))
        return torch.arange(n, device=self.device) >= n - young

    def hit_mask(self, positive_ids: ArrayLike) -> torch.Tensor:
        """(B, len(bank)) bool, columns oldest first: entry id == row b's positive id.

        Covers every stored entry whatever its age; combine with
        :meth:`valid_mask` (or use :meth:`negatives`, which leaves old entries
        out) to drop entries older than ``max_age``.
        """
        return self._hits(positive_ids, 0, self._fifo(len(self)))

    def _hits(self, positive_ids: ArrayLike, min_step: int, segments: Segments) -> torch.Tensor:
        pos = _id_array(positive_ids, "positive_ids")
        width = sum(b - a for a, b in segments)
        mask = torch.zeros((pos.shape[0], width), dtype=torch.bool, device=self.device)
        rows, slots = self._index.find_hits(pos, min_step)
        if rows.size and width:
            (a1, b1) = segments[0]
            cols = np.where((slots >= a1) & (slots < b1), slots - a1, slots - segments[-1][0] + (b1 - a1))
            mask[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = True
        return mask

    # -------------------------------------------------------------- training
    def negatives(self, positive_ids: Optional[ArrayLike] = None) -> BankNegatives:
        """The entries a training step uses as negatives, aligned column by column.

        Leaves out entries older than ``max_age`` and returns nothing (N = 0)
        until the bank is :attr:`ready`. Views into the bank when the entries
        are contiguous in storage (see the class docstring: enqueue after
        backward). With ``positive_ids`` (B,), also the (B, N) hit mask.
        """
        if not self.ready:
            segments: Segments = [(0, 0)]
        else:
            young = int(self._index.count_since(self._min_step()))
            # A full bank of young entries is the whole buffer: one view, storage order.
            segments = [(0, self.capacity)] if young == self.capacity else self._fifo(young)
        mask = None if positive_ids is None else self._hits(positive_ids, self._min_step(), segments)
        return BankNegatives(_take(self._emb, segments, copy=False), _take(self._ids, segments, copy=False),
                             _take(self._log_q, segments, copy=False), mask)

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> Dict[str, Any]:
        """A copy of the contents: entries oldest first, their steps, and the write pointer."""
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "step": self._step,
            "head": int(self._index.head),
            "embeddings": self.embeddings,
            "ids": self.ids,
            "log_q": self.log_q,
            "steps": self.steps,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output into the same slots, so the bank
        continues exactly as the saved one would. ValueError for another
        capacity or dim; everything is checked before anything is written."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, mine in (("capacity", self.capacity), ("dim", self.dim)):
            if _state_value(state_dict, key) != mine:
                raise ValueError(f"state_dict has {key}={state_dict[key]!r} but this bank has {mine!r}")
        step = check_int(_state_value(state_dict, "step"), "state_dict['step']", minimum=0)
        if step > _MAX_BANK_STEP:  # the next enqueue's step must fit in int64
            raise ValueError(f"state_dict['step'] must be <= {_MAX_BANK_STEP}, got {step}")
        head = check_int(_state_value(state_dict, "head"), "state_dict['head']", minimum=0)
        ids = _state_value(state_dict, "ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError("state_dict['ids'] must be a 1-D tensor")
        n = ids.shape[0]
        emb = _state_value(state_dict, "embeddings")
        if not isinstance(emb, torch.Tensor) or not emb.is_floating_point():
            raise TypeError("state_dict['embeddings'] must be a floating-point tensor")
        _check_dense(emb, "embeddings")
        if tuple(emb.shape) != (n, self.dim):
            raise ValueError(f"state_dict['embeddings'] has shape {tuple(emb.shape)}, expected {(n, self.dim)}")
        ids = _state_tensor(state_dict, "ids", (n,), torch.int64).cpu()
        log_q = _state_tensor(state_dict, "log_q", (n,), torch.float32)
        steps = _state_tensor(state_dict, "steps", (n,), torch.int64).cpu()
        if n and (int(steps.min()) < 1 or int(steps.max()) > step):
            raise ValueError("state_dict['steps'] must lie in [1, step]")
        # Converted (detached: the bank never holds a graph) before anything is written.
        emb = emb.detach().to(device=self.device, dtype=self.dtype)
        log_q = log_q.detach().to(self.device)
        self._index.restore(ids.contiguous().numpy(), steps.contiguous().numpy(), head)
        self._step = step
        (start, stop) = self._fifo(n)[0]  # a wrapped second segment starts at slot 0
        write = (0, start, stop - start, n - (stop - start))
        _copy_rows(self._emb, emb, write)
        _copy_rows(self._ids, ids.to(self.device), write)
        _copy_rows(self._log_q, log_q, write)

    def to(self, device: Union[str, torch.device]) -> "MemoryBank":
        """Moves the stored tensors to ``device`` (in place); returns the bank."""
        dev = check_device(device)
        self._set_storage(self._emb.to(dev))
        self._ids = self._ids.to(dev)
        self._log_q = self._log_q.to(dev)
        return self


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the storages of ``a`` and ``b`` overlap (conservative: whole storages)."""
    if a.device != b.device:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    a0, b0 = sa.data_ptr(), sb.data_ptr()
    return a0 < b0 + sb.nbytes() and b0 < a0 + sa.nbytes()


def _unaliased(t: torch.Tensor, bank_tensor: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when it shares memory with ``bank_tensor``."""
    return t.clone() if _shares_memory(t, bank_tensor) else t


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, write: Tuple[int, int, int, int]) -> None:
    """Copies rows as the ring index planned: ``src[s:s+f] -> dst[d:d+f]``, then the wrap."""
    s, d, first, second = write
    dst[d:d + first].copy_(src[s:s + first])
    if second:
        dst[:second].copy_(src[s + first:s + first + second])


def _take(t: torch.Tensor, segments: Segments, *, copy: bool) -> torch.Tensor:
    """The rows of ``segments`` in order: a view of one segment (unless ``copy``), else a new tensor."""
    if len(segments) == 1:
        a, b = segments[0]
        return t[a:b].clone() if copy else t[a:b]
    return torch.cat([t[a:b] for a, b in segments])

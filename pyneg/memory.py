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

import copy
import math
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from pyneg import _core
from pyneg import distributed as _dist
from pyneg._validation import (
    ArrayLike,
    as_index_tensor,
    as_tensor,
    check_bool,
    check_device,
    check_float,
    check_int,
    check_tensor,
    shares_memory,
)

__all__ = ["FrequencyEstimator", "MemoryBank", "BankNegatives"]


# ------------------------------------------------------------------ helpers
_MAX_ID = 2**63 - 1
# Steps count updates/enqueues; the estimator keeps them as float64 (exact up to
# 2**53) and the bank's steps must round-trip through the same state formats.
_MAX_STEP = 2**53
# A hit list (rows and slots as int64, with the vectors' growth and the copies
# made from them) costs up to about this many bytes per hit: hits are listed
# only while the lists stay smaller than the (B, N) bool mask they fill.
_BYTES_PER_HIT = 64


def _id_array(ids: ArrayLike, name: str, *, ndim: Optional[int] = 1) -> np.ndarray:
    """``ids`` (>= 0) as a private C-contiguous int64 NumPy array (always a copy pyneg owns).

    The copy is what gets checked and what the index, the kernels and the
    bank's own id column read: another thread writing the caller's tensor
    meanwhile (torch ops run without the GIL) cannot make them disagree.
    ``ndim=None`` accepts any shape.
    """
    if isinstance(ids, torch.Tensor):
        _check_holds_data(ids, name)
    if (
        type(ids) is torch.Tensor
        and ids.dtype is torch.int64
        and ids.layout == torch.strided
        and ids.device.type == "cpu"
        and (ndim is None or ids.dim() == ndim)
    ):
        # The fast path of a training loop; the C++ kernels check the copy for negative ids.
        return ids.detach().numpy().copy()
    t = as_index_tensor(ids, name, _MAX_ID + 1)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t.numpy()


def _check_holds_data(t: torch.Tensor, name: str) -> None:
    """Refuses a strided tensor whose storage is smaller than its view (its storage was resized or freed).

    torch itself reads such a tensor out of bounds; pyneg refuses it by name.
    """
    if t.layout != torch.strided or t.is_nested or t.device.type == "meta" or t.numel() == 0:
        return  # refused elsewhere by name, or nothing to read
    extent = t.storage_offset() + 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))
    if extent * t.element_size() > t.untyped_storage().nbytes():
        raise ValueError(
            f"{name} views {extent * t.element_size()} bytes but its storage holds only "
            f"{t.untyped_storage().nbytes()} (was the storage resized or freed?)"
        )


def _checked_size(dims: Tuple[int, ...], item_bytes: int, what: str) -> None:
    """Refuses (ValueError, before anything is allocated) a buffer whose byte count overflows int64."""
    if math.prod(dims) * item_bytes > 2**63 - 1:
        raise ValueError(f"{what} of shape {dims} would take more than 2**63 bytes")


def _allocate(make: Callable[[], Any], what: str) -> Any:
    """``make()``, with an allocator failure reported as MemoryError naming ``what``."""
    try:
        return make()
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e) or "memory" in str(e):
            raise MemoryError(f"cannot allocate {what}: {e}") from None
        raise


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

    A rank whose checks fail, with any exception (a ValueError for bad input,
    but also whatever an odd input object raises), must not leave the others
    waiting in the gather that follows: every rank reports whether its checks
    passed (one small all-reduce), and if any failed, all raise (the failing
    rank its own error, the others a ValueError saying so).
    """
    if group is None:
        return check()
    error: Optional[BaseException] = None
    result = None
    try:
        result = check()
    except Exception as e:
        error = e
    _dist._raise_if_any_rank_failed(error, group, _backend_device(group))
    return result


def _copy_on_write(state: Dict[str, Any], memo: Dict[int, Any], group: Optional[Any]) -> Dict[str, Any]:
    """A deep copy of an object's pickled state that keeps its process group (a handle) shared."""
    if group is not None:
        memo[id(group)] = group
    return copy.deepcopy(state, memo)


def _check_dense(t: torch.Tensor, key: str) -> None:
    """A tensor with data that copies into the state: strided (not sparse or nested), not meta."""
    check_tensor(t, f"state_dict[{key!r}]")
    _check_holds_data(t, f"state_dict[{key!r}]")
    if t.is_nested:
        raise TypeError(f"state_dict[{key!r}] must be a dense tensor, got a nested one")


def _state_tensor(sd: Dict[str, Any], key: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """``sd[key]`` checked, as a private CPU copy (what is checked is what gets loaded)."""
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
    out = torch.empty(tuple(shape), dtype=dtype)
    out.copy_(t.detach())
    return out


def _state_value(sd: Dict[str, Any], key: str) -> Any:
    if key not in sd:
        raise ValueError(f"state_dict has no {key!r}")
    return sd[key]


def _state_int(sd: Dict[str, Any], key: str, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
    value = check_int(_state_value(sd, key), f"state_dict[{key!r}]", minimum=minimum)
    if maximum is not None and value > maximum:
        raise ValueError(f"state_dict[{key!r}] must be <= {maximum}, got {value}")
    return value


def _state_must_match(sd: Dict[str, Any], key: str, mine: Any, what: str) -> None:
    theirs = _state_value(sd, key)
    value = (
        check_float(theirs, f"state_dict[{key!r}]")
        if isinstance(mine, float)
        else check_int(theirs, f"state_dict[{key!r}]")
    )
    if value != mine:
        raise ValueError(f"state_dict has {key}={theirs!r} but this {what} has {mine!r}")


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
        alpha = check_float(alpha, "alpha")
        if not 0.0 < alpha <= 1.0:  # also rejects NaN
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        num_hashes = check_int(num_hashes, "num_hashes", minimum=1)
        _checked_size((num_hashes, num_buckets), 16, "the estimator's table (num_hashes, num_buckets)")
        self._alpha = alpha
        self._sync = check_bool(sync, "sync")
        self._group = process_group
        # (A, B) interleaved so that one update touches one 16-byte cell.
        self._set_state(
            _allocate(
                lambda: torch.zeros((num_hashes, num_buckets, 2), dtype=torch.float64),
                f"the estimator's table of {num_hashes} x {num_buckets} cells",
            ),
            0,
        )

    def _set_state(self, state: torch.Tensor, step: int) -> None:
        self._state = state  # never handed out: state_dict() copies
        self._cells = state.numpy()  # the same memory, as the kernels take it
        self._step = step
        # update() assigns step numbers and runs the kernel under this lock, so
        # calls from several threads each get their own step (see the class docs).
        self._lock = threading.RLock()

    # ------------------------------------------------------- copies, pickling
    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "alpha": self._alpha,
                "sync": self._sync,
                "group": self._group,
                "state": self._state.clone(),
                "step": self._step,
            }

    def __setstate__(self, st: Dict[str, Any]) -> None:
        self._alpha, self._sync, self._group = st["alpha"], st["sync"], st["group"]
        self._set_state(st["state"].contiguous().clone(), st["step"])

    def __deepcopy__(self, memo: Dict[int, Any]) -> FrequencyEstimator:
        new = FrequencyEstimator.__new__(FrequencyEstimator)
        memo[id(self)] = new
        new.__setstate__(_copy_on_write(self.__getstate__(), memo, self._group))
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
    def update(self, ids: ArrayLike) -> None:
        """Records one training step's item ids (1-D, >= 0; repeats count once).

        Thread-safe: calls from several threads are serialised, each one a step
        of its own. With ``sync=True`` under torch.distributed, gathers every
        rank's ids first (each rank must call ``update`` once per step).
        """
        with self._lock:
            group = _sync_group(self._sync, self._group)

            def check() -> np.ndarray:
                if self._step >= _MAX_STEP:
                    raise ValueError(
                        f"the estimator has reached its last step ({_MAX_STEP}): "
                        "step numbers past 2**53 are not exact in its float64 table"
                    )
                return _id_array(ids, "ids")

            arr = _checked_on_every_rank(check, group)
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
        arr = _id_array(ids, "ids", ndim=None)
        out = torch.empty(arr.shape, dtype=torch.float32)
        with self._lock:  # a consistent snapshot while another thread updates
            _core.frequency_estimate(self._cells, arr.reshape(-1), self._step, log, out.view(-1).numpy())
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
            _state_must_match(state_dict, key, mine, "estimator")
        step = _state_int(state_dict, "step", maximum=_MAX_STEP)
        shape = (self.num_hashes, self.num_buckets)
        last = _state_tensor(state_dict, "last_step", shape, torch.int64)
        gap = _state_tensor(state_dict, "gap", shape, torch.float64)
        if last.numel() and (int(last.min()) < 0 or int(last.max()) > step):
            raise ValueError("state_dict['last_step'] must lie in [0, step]")
        hit = gap[last > 0]  # a cell never hit (last_step 0) ignores its gap
        if not bool((hit.isfinite() & (hit > 0)).all()):
            raise ValueError("state_dict['gap'] must be finite and > 0 wherever last_step > 0")
        with self._lock:
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
      Only the embeddings are views: ``negatives().ids`` and ``.log_q`` are
      copies (the id lookup keeps its own ids and never reads what was handed
      out). Writing ``negatives().embeddings`` in place writes the stored
      embeddings of those entries, exactly as if they had been enqueued with
      the new values: ``bank.embeddings``, ``state_dict()`` and later
      ``negatives()`` show them, nothing else changes, no kernel trusts them.
      (Resizing or freeing that view's storage is refused at the next call.)

    Thread-safety: every method takes the bank's lock, so calls from several
    threads are serialised (enqueues get consecutive steps in the order they
    take the lock). A call that raises leaves the bank as it was. Copies
    (``copy.deepcopy``, pickle, ``torch.save``) are independent banks that
    continue exactly as the original would (same next negatives).

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
        device: Union[str, torch.device, None] = None,
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
        if dev.type == "meta":
            raise ValueError("device must not be meta (a bank on meta would hold no data)")
        _checked_size((capacity, dim), torch.empty((), dtype=dtype).element_size(), "the bank's embeddings")
        self._max_age = None if max_age is None else check_int(max_age, "max_age", minimum=0)
        self._warmup = check_int(warmup, "warmup", minimum=0)
        self._sync = check_bool(sync, "sync")
        self._group = process_group
        self._lock = threading.RLock()
        what = f"a bank of {capacity} x {dim} {dtype}"
        self._index = _allocate(lambda: _core.RingIndex(capacity), what)
        self._set_storage(_allocate(lambda: torch.empty((capacity, dim), dtype=dtype, device=dev), what))
        # The bank's id and log q columns are never handed out (negatives() copies
        # them), so they always agree with the index's own ids.
        self._ids = _allocate(lambda: torch.empty(capacity, dtype=torch.int64, device=dev), what)
        self._log_q = _allocate(lambda: torch.empty(capacity, dtype=torch.float32, device=dev), what)
        self._step = 0

    def _set_storage(self, emb: torch.Tensor) -> None:
        self._emb = emb
        self._emb_nbytes = emb.untyped_storage().nbytes()

    def _check_storage(self) -> None:
        """Refuses to go on once the embedding storage was resized or freed through a view."""
        if self._emb.untyped_storage().nbytes() != self._emb_nbytes:
            raise RuntimeError(
                "the bank's embedding storage was resized through a view returned by "
                "negatives(); the bank cannot be used any more (load a state_dict into a new one)"
            )

    # ------------------------------------------------------- copies, pickling
    def __getstate__(self) -> Dict[str, Any]:
        with self._lock:
            self._check_storage()
            config = {
                "capacity": self.capacity,
                "dim": self.dim,
                "dtype": self.dtype,
                "max_age": self._max_age,
                "warmup": self._warmup,
                "sync": self._sync,
            }
            return {"config": config, "group": self._group, "state": self.state_dict()}

    def __setstate__(self, st: Dict[str, Any]) -> None:
        state = st["state"]
        # Where the saved tensors are now (torch.load's map_location may have moved them).
        self.__init__(**st["config"], device=state["embeddings"].device)  # type: ignore[misc]
        self._group = st["group"]
        self.load_state_dict(state)

    def __deepcopy__(self, memo: Dict[int, Any]) -> MemoryBank:
        new = MemoryBank.__new__(MemoryBank)
        memo[id(self)] = new
        new.__setstate__(_copy_on_write(self.__getstate__(), memo, self._group))
        return new

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
        return (
            f"MemoryBank(capacity={self.capacity}, dim={self.dim}, dtype={self.dtype}, device={self.device}, "
            f"len={len(self)}, step={self._step}, max_age={self._max_age}, warmup={self._warmup})"
        )

    # ---------------------------------------------------------------- writing
    def enqueue(self, embeddings: torch.Tensor, ids: ArrayLike, log_q: Optional[ArrayLike] = None) -> None:
        """Appends a batch: ``embeddings`` (B, dim) (stored detached), ``ids`` (B,) >= 0,
        ``log_q`` (B,) or None (stored as NaN).

        Everything is checked before anything is written, so a bad call leaves
        the bank as it was. With ``sync=True`` under torch.distributed every rank
        must call ``enqueue`` once per step (a rank may pass zero rows); a rank
        whose checks fail makes every rank raise.
        """
        with self._lock:
            self._enqueue(embeddings, ids, log_q)

    def _enqueue(self, embeddings: torch.Tensor, ids: ArrayLike, log_q: Optional[ArrayLike]) -> None:
        group = _sync_group(self._sync, self._group)

        def check() -> Tuple[torch.Tensor, np.ndarray, Optional[torch.Tensor]]:
            self._check_storage()
            if self._step >= _MAX_STEP:
                raise ValueError(f"the bank has reached its last step ({_MAX_STEP})")
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
            _check_holds_data(embeddings, "embeddings")
            n = embeddings.shape[0]
            id_arr = _id_array(ids, "ids")
            if id_arr.shape[0] != n:
                raise ValueError(f"ids has {id_arr.shape[0]} entries but embeddings has {n} rows")
            lq = None
            if log_q is not None:
                lq = as_tensor(log_q, "log_q")
                check_tensor(lq, "log_q")
                _check_holds_data(lq, "log_q")
                if not lq.is_floating_point():
                    raise TypeError(f"log_q must be floating point, got {lq.dtype}")
                if tuple(lq.shape) != (n,):
                    raise ValueError(f"log_q must have shape ({n},), got {tuple(lq.shape)}")
                # A private float32 copy on the bank's device (this copy can fail: before the index moves).
                lq = torch.empty(n, dtype=torch.float32, device=self.device).copy_(lq.detach())
            elif group is not None:
                lq = torch.full((n,), math.nan, dtype=torch.float32, device=self.device)
            src = embeddings.detach()
            if group is not None:
                src = src.to(self._emb.dtype)  # every rank sends the bank's dtype
            return src, id_arr, lq

        src, id_arr, lq = _checked_on_every_rank(check, group)
        if group is not None:
            src = _gather_rows(src, group)
            id_arr = _gather_rows(torch.from_numpy(id_arr), group).numpy()
            lq = _gather_rows(lq, group)
        if id_arr.shape[0] == 0:  # checked after the gather, so every rank agrees
            raise ValueError("embeddings must not be empty")
        # Embeddings that are views of this bank (what negatives() returned) are
        # copied first: the writes below would overwrite rows they still read.
        src = _unaliased(src, self._emb)
        dev = self._emb.device
        # The byte views too (a tensor with the negative bit set has none),
        # taken now: the storage was checked above, and nothing is cached that
        # a resize through a handed-out view could leave dangling.
        fast = dev.type == "cpu" and src.dtype == self._emb.dtype and src.is_contiguous() and not src.is_neg()
        if fast:
            dst_bytes, src_bytes = self._emb.view(torch.uint8).numpy(), src.view(torch.uint8).numpy()
        # The index checks the ids (its own copy) before it changes anything;
        # after it, the copies below cannot fail (shapes, devices and dtypes are checked).
        write = self._index.push(id_arr, self._step + 1)
        self._step += 1
        if fast:
            # Bytes straight into the ring, single-threaded with the GIL released.
            _core.ring_copy_rows(dst_bytes, src_bytes, write)
            # Written behind torch's back: bump the version counter as an in-place
            # op would, so autograd still catches views used before this enqueue.
            torch.autograd.graph.increment_version(self._emb)
        else:
            _copy_rows(self._emb, src, write)
        _copy_rows(self._ids, torch.from_numpy(id_arr).to(dev), write)
        if lq is None:
            _, dst, first, second = write
            self._log_q[dst : dst + first].fill_(math.nan)
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

    def _column(self, t: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._check_storage()
            return _take(t, self._fifo(len(self)), copy=True)

    @property
    def embeddings(self) -> torch.Tensor:
        """(len(bank), dim) stored embeddings, oldest first (a copy)."""
        return self._column(self._emb)

    @property
    def ids(self) -> torch.Tensor:
        """(len(bank),) int64 ids, oldest first (a copy)."""
        return self._column(self._ids)

    @property
    def log_q(self) -> torch.Tensor:
        """(len(bank),) float32 log q, NaN where none was given, oldest first (a copy)."""
        return self._column(self._log_q)

    @property
    def steps(self) -> torch.Tensor:
        """(len(bank),) int64 step that wrote each entry, oldest first (a copy)."""
        with self._lock:
            view = self._index.slot_steps  # read-only NumPy view of the index
            steps = np.concatenate([view[a:b] for a, b in self._fifo(len(self))])  # a copy
        return torch.from_numpy(steps).to(self.device)

    @property
    def ages(self) -> torch.Tensor:
        """(len(bank),) int64 ``step - steps``: 0 for the latest batch, oldest first."""
        with self._lock:
            return self._step - self.steps

    def _min_step(self) -> int:
        return 0 if self._max_age is None else self._step - self._max_age

    def valid_mask(self) -> torch.Tensor:
        """(len(bank),) bool, oldest first: True for entries no older than ``max_age``."""
        with self._lock:
            n = len(self)
            young = int(self._index.count_since(self._min_step()))
        return torch.arange(n, device=self.device) >= n - young

    def hit_mask(self, positive_ids: ArrayLike) -> torch.Tensor:
        """(B, len(bank)) bool, columns oldest first: entry id == row b's positive id.

        Covers every stored entry whatever its age; combine with
        :meth:`valid_mask` (or use :meth:`negatives`, which leaves old entries
        out) to drop entries older than ``max_age``. Memory: the mask itself,
        whatever the ids (a padding id repeated everywhere costs no more than
        distinct ids).
        """
        with self._lock:
            self._check_storage()
            return self._hits(positive_ids, 0, self._fifo(len(self)))

    def _hits(self, positive_ids: ArrayLike, min_step: int, segments: Segments) -> torch.Tensor:
        """Hit mask of the entries in ``segments`` (all written at a step >= min_step)."""
        pos = _id_array(positive_ids, "positive_ids")
        width = sum(b - a for a, b in segments)
        _checked_size((pos.shape[0], width), 1, "the hit mask (positive_ids, bank entries)")
        mask = _allocate(
            lambda: torch.zeros((pos.shape[0], width), dtype=torch.bool, device=self.device),
            f"a ({pos.shape[0]}, {width}) hit mask",
        )
        # Lists of hits only while they are smaller than the mask; otherwise (a
        # repeated id) the mask is the comparison itself. The index still checks
        # the ids (negative ones) when it finds too many hits to list.
        hits = self._index.find_hits(pos, min_step, pos.shape[0] * width // _BYTES_PER_HIT)
        if hits is None:
            cols = _take(self._ids, segments, copy=False)
            torch.eq(cols.unsqueeze(0), torch.from_numpy(pos).to(self.device).unsqueeze(1), out=mask)
        elif hits[0].size and width:
            rows, slots = hits
            (a1, b1) = segments[0]
            cols = np.where((slots >= a1) & (slots < b1), slots - a1, slots - segments[-1][0] + (b1 - a1))
            mask[torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)] = True
        return mask

    # -------------------------------------------------------------- training
    def negatives(self, positive_ids: Optional[ArrayLike] = None) -> BankNegatives:
        """The entries a training step uses as negatives, aligned column by column.

        Leaves out entries older than ``max_age`` and returns nothing (N = 0)
        until the bank is :attr:`ready`. The embeddings are views into the bank
        when the entries are contiguous in storage (see the class docstring:
        enqueue after backward); ids and log q are copies. With
        ``positive_ids`` (B,), also the (B, N) hit mask.
        """
        with self._lock:
            self._check_storage()
            if not self.ready:
                segments: Segments = [(0, 0)]
            else:
                young = int(self._index.count_since(self._min_step()))
                # A full bank of young entries is the whole buffer: one view, storage order.
                segments = [(0, self.capacity)] if young == self.capacity else self._fifo(young)
            mask = None if positive_ids is None else self._hits(positive_ids, self._min_step(), segments)
            return BankNegatives(
                _take(self._emb, segments, copy=False),
                _take(self._ids, segments, copy=True),
                _take(self._log_q, segments, copy=True),
                mask,
            )

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> Dict[str, Any]:
        """A copy of the contents: entries oldest first, their steps, and the write pointer.

        Plain ints and tensors: loads with ``torch.load(weights_only=True)``.
        """
        with self._lock:
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
        capacity or dim or an inconsistent state; everything is checked before
        anything is written, so a refused state leaves the bank as it was."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, mine in (("capacity", self.capacity), ("dim", self.dim)):
            _state_must_match(state_dict, key, mine, "bank")
        step = _state_int(state_dict, "step", maximum=_MAX_STEP)
        head = _state_int(state_dict, "head", maximum=self.capacity - 1)
        ids = _state_value(state_dict, "ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError("state_dict['ids'] must be a 1-D tensor")
        n = ids.shape[0]
        if n > self.capacity:
            raise ValueError(f"state_dict holds {n} entries, more than this bank's capacity {self.capacity}")
        if n < self.capacity and head != n:
            raise ValueError(f"state_dict['head'] is {head}, impossible for a bank holding {n} < capacity entries")
        emb = _state_value(state_dict, "embeddings")
        if not isinstance(emb, torch.Tensor):
            raise TypeError(f"state_dict['embeddings'] must be a tensor, got {type(emb).__name__}")
        _check_dense(emb, "embeddings")
        if not emb.is_floating_point():
            raise TypeError(f"state_dict['embeddings'] must be a floating-point tensor, got {emb.dtype}")
        if tuple(emb.shape) != (n, self.dim):
            raise ValueError(f"state_dict['embeddings'] has shape {tuple(emb.shape)}, expected {(n, self.dim)}")
        ids = _state_tensor(state_dict, "ids", (n,), torch.int64)
        log_q = _state_tensor(state_dict, "log_q", (n,), torch.float32)
        steps = _state_tensor(state_dict, "steps", (n,), torch.int64)
        if n and int(ids.min()) < 0:
            raise ValueError("state_dict['ids'] holds a negative id (ids must be >= 0)")
        if n and (int(steps.min()) < 1 or int(steps.max()) > step):
            raise ValueError("state_dict['steps'] must lie in [1, step]")
        if n > 1 and bool((steps[1:] < steps[:-1]).any()):
            raise ValueError("state_dict['steps'] must not decrease from oldest to newest")
        with self._lock:
            self._check_storage()
            # Converted (a private copy, detached: the bank never holds a graph) before anything is written.
            emb = torch.empty((n, self.dim), dtype=self.dtype, device=self.device).copy_(emb.detach())
            log_q = log_q.to(self.device)
            self._index.restore(ids.numpy(), steps.numpy(), head)
            self._step = step
            (start, stop) = self._fifo(n)[0]  # a wrapped second segment starts at slot 0
            write = (0, start, stop - start, n - (stop - start))
            _copy_rows(self._emb, emb, write)
            _copy_rows(self._ids, ids.to(self.device), write)
            _copy_rows(self._log_q, log_q, write)

    def to(self, device: Union[str, torch.device]) -> MemoryBank:
        """Moves the stored tensors to ``device`` (in place); returns the bank."""
        dev = check_device(device)
        if dev is None or dev.type == "meta":
            raise ValueError(f"device must be a device with data, got {device!r}")
        with self._lock:
            self._check_storage()
            emb, ids, log_q = self._emb.to(dev), self._ids.to(dev), self._log_q.to(dev)  # can fail: first
            self._set_storage(emb)
            self._ids, self._log_q = ids, log_q
        return self


def _unaliased(t: torch.Tensor, bank_tensor: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it when it shares memory with ``bank_tensor``."""
    return t.clone() if shares_memory(t, bank_tensor) else t


def _copy_rows(dst: torch.Tensor, src: torch.Tensor, write: Tuple[int, int, int, int]) -> None:
    """Copies rows as the ring index planned: ``src[s:s+f] -> dst[d:d+f]``, then the wrap."""
    s, d, first, second = write
    dst[d : d + first].copy_(src[s : s + first])
    if second:
        dst[:second].copy_(src[s + first : s + first + second])


def _take(t: torch.Tensor, segments: Segments, *, copy: bool) -> torch.Tensor:
    """The rows of ``segments`` in order: a view of one segment (unless ``copy``), else a new tensor."""
    if len(segments) == 1:
        a, b = segments[0]
        return t[a:b].clone() if copy else t[a:b]
    return torch.cat([t[a:b] for a, b in segments])

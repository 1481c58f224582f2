"""A memory bank of past embeddings: a FIFO queue of cross-batch negatives.

:class:`MemoryBank` is a FIFO queue of the most recent item embeddings (MoCo
queues, cross-batch negatives of Wang et al., SIGIR 2021) with their ids,
``log q`` and the step that wrote them. Batches are written in place through a
ring pointer (never concatenated or shifted) that a C++ ring index
(``csrc/cpu/ring_index.cpp``) keeps. Accidental hits (entries whose id is a
row's positive) are found by pyneg's one hit finder, the hash join the
softmax losses use (:mod:`pyneg._hits`), in O(batch + entries + hits).
:class:`BankNegatives` is what :meth:`MemoryBank.negatives` returns.

With ``sync=True`` (and an initialised process group of world size > 1) each
``enqueue`` gathers the step's inputs from all ranks, in rank order, before
recording them, so every rank holds what one process fed the concatenated
global batch would hold. Without a process group it behaves as world size 1.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from pyneg import _core, _ring
from pyneg._deprecation import renamed_keyword
from pyneg._ops import memory as _ops
from pyneg._ops._checks import refuse as _refuse
from pyneg._ring import Segments
from pyneg._state import (
    MAX_STEP,
    check_dense,
    copy_on_write,
    pack_tensors,
    state_int,
    state_must_match,
    state_tensor,
    state_value,
    unpack_tensors,
)
from pyneg._validation import (
    ArrayLike,
    allocate,
    as_id_array,
    as_tensor,
    check_bool,
    check_device,
    check_holds_data,
    check_id_tensor,
    check_int,
    check_nbytes,
    check_tensor,
    shape_str,
    shares_memory,
)
from pyneg.distributed import _checked_on_every_rank, _gather_rows, _sync_group

__all__ = ["MemoryBank", "BankNegatives"]


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

    Under ``torch.compile`` (``fullgraph=True`` too), :meth:`negatives`,
    ``embeddings``, ``ids`` and ``log_q`` trace without a graph break and read
    the bank as it is at each call (its state comes in as graph inputs, see
    ``docs/guide/memory.md``); there :meth:`negatives` returns copies gathered
    from the bank, not views, and it refuses the arguments an eager call refuses,
    with the same error, when the graph runs. :meth:`enqueue` stays eager (``torch.compiler.disable``): call it
    outside the compiled step.

    Thread-safety: every method takes the bank's lock (compiled reads do not:
    Dynamo cannot trace a lock), so calls from several threads are serialised
    (enqueues get consecutive steps in the order they take the lock). A call
    that raises leaves the bank as it was. Copies (``copy.deepcopy``, pickle,
    ``torch.save``) are independent banks that continue exactly as the
    original would (same next negatives).

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
        group: the process group to gather over (default: the world);
            ``process_group=`` is its deprecated name.

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

    @renamed_keyword("process_group", "group")
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
        group: Optional[Any] = None,
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
        check_nbytes((capacity, dim), torch.empty((), dtype=dtype).element_size(), "the bank's embeddings")
        self._max_age = None if max_age is None else check_int(max_age, "max_age", minimum=0)
        self._warmup = check_int(warmup, "warmup", minimum=0)
        self._sync = check_bool(sync, "sync")
        self._group = group
        self._lock = threading.RLock()
        what = f"a bank of {capacity} x {dim} {dtype}"
        self._index = allocate(lambda: _core.RingIndex(capacity), what)
        self._set_storage(allocate(lambda: torch.empty((capacity, dim), dtype=dtype, device=dev), what))
        # The bank's id and log q columns are never handed out (negatives() copies
        # them), so they always agree with the index's own ids.
        self._ids = allocate(lambda: torch.empty(capacity, dtype=torch.int64, device=dev), what)
        self._log_q = allocate(lambda: torch.empty(capacity, dtype=torch.float32, device=dev), what)
        # The step that wrote each slot (the index keeps its own copy for its lookups).
        self._steps = allocate(lambda: torch.zeros(capacity, dtype=torch.int64), what)
        # Where the reads start, as data a compiled read takes (see _set_layout);
        # written through its NumPy view (a few hundred ns per enqueue).
        self._starts = torch.zeros(2, dtype=torch.int64)
        self._starts_np = self._starts.numpy()
        self._length_bufs = [allocate(lambda: torch.empty(capacity, dtype=torch.uint8), what) for _ in range(2)]
        self._step = 0
        self._runs = ((0, -1), (0, -1))
        self._set_layout()

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
            # Tensors by value: see pyneg._state.PackedTensor (spawn DataLoader workers).
            return {"config": config, "group": self._group, "state": pack_tensors(self.state_dict())}

    def __setstate__(self, st: Dict[str, Any]) -> None:
        state = unpack_tensors(st["state"])
        # Where the saved tensors are now (torch.load's map_location may have moved them).
        self.__init__(**st["config"], device=state["embeddings"].device)  # type: ignore[misc]
        self._group = st["group"]
        self.load_state_dict(state)

    def __deepcopy__(self, memo: Dict[int, Any]) -> MemoryBank:
        new = MemoryBank.__new__(MemoryBank)
        memo[id(self)] = new
        new.__setstate__(copy_on_write(self.__getstate__(), memo, self._group))
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
    @torch.compiler.disable
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
            if self._step >= MAX_STEP:
                raise ValueError(f"the bank has reached its last step ({MAX_STEP})")
            if not isinstance(embeddings, torch.Tensor):
                raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
            if embeddings.layout != torch.strided or embeddings.is_nested:
                raise TypeError(f"embeddings must be a dense (strided) tensor, got layout {embeddings.layout}")
            if not embeddings.is_floating_point():
                raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")
            if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
                raise ValueError(f"embeddings must have shape (B, {self.dim}), got {shape_str(embeddings.shape)}")
            if embeddings.device != self._emb.device:
                raise ValueError(f"embeddings are on {embeddings.device} but the bank is on {self._emb.device}")
            check_holds_data(embeddings, "embeddings")
            n = embeddings.shape[0]
            id_arr = as_id_array(ids, "ids")
            if id_arr.shape[0] != n:
                raise ValueError(f"ids has {id_arr.shape[0]} entries but embeddings has {n} rows")
            lq = None
            if log_q is not None:
                lq = as_tensor(log_q, "log_q")
                check_tensor(lq, "log_q")
                check_holds_data(lq, "log_q")
                if not lq.is_floating_point():
                    raise TypeError(f"log_q must be floating point, got {lq.dtype}")
                if tuple(lq.shape) != (n,):
                    raise ValueError(f"log_q must have shape ({n},), got {shape_str(lq.shape)}")
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
        write = self._index.push(id_arr)
        self._step += 1
        _fill_rows(self._steps, self._step, write)
        self._set_layout()
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

    def _set_layout(self) -> None:
        """Lays out the reads after every write: which run of slots :meth:`negatives`
        and the oldest-first columns take (``start``, ``count``; the run wraps past
        the last slot).

        For compiled reads the starts are data (``_starts``, a tensor updated in
        place) and the counts are the lengths of two views (``_counts``): a
        compiled step takes both as graph inputs, so it reads the current run
        after every enqueue, with the count a dynamic size (after one
        recompilation) instead of a constant of the graph.
        """
        head, size, cap = int(self._index.head), int(self._index.size), self.capacity
        neg = _ring.negative_segments(self._steps.numpy(), head, size, self._step, self._max_age, self._warmup)
        runs = ((neg[0][0], sum(b - a for a, b in neg)), ((head - size) % cap, size))
        self._starts_np[:] = (runs[0][0], runs[1][0])
        if [count for _, count in runs] != [count for _, count in self._runs]:  # new views only for new counts
            self._counts = tuple(buf[:count] for buf, (_, count) in zip(self._length_bufs, runs))
        self._runs = runs

    # ------------------------------------------------------ oldest-first views
    def _fifo(self, count: int) -> Segments:
        """Storage slices holding the newest ``count`` entries, oldest first."""
        return _ring.newest(int(self._index.head), count, self.capacity)

    def _column(self, t: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return t.index_select(0, self._traced_slots(1))
        with self._lock:
            self._check_storage()
            return _take(t, self._fifo(len(self)), copy=True)

    @property
    def embeddings(self) -> torch.Tensor:
        """(len(bank), dim) stored embeddings, oldest first (a copy). Readable in a compiled step."""
        return self._column(self._emb)

    @property
    def ids(self) -> torch.Tensor:
        """(len(bank),) int64 ids, oldest first (a copy). Readable in a compiled step."""
        return self._column(self._ids)

    @property
    def log_q(self) -> torch.Tensor:
        """(len(bank),) float32 log q, NaN where none was given, oldest first (a copy).
        Readable in a compiled step."""
        return self._column(self._log_q)

    @property
    def steps(self) -> torch.Tensor:
        """(len(bank),) int64 step that wrote each entry, oldest first (a copy)."""
        with self._lock:
            return _take(self._steps, self._fifo(len(self)), copy=True).to(self.device)

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
            young = _ring.count_since(self._steps.numpy(), int(self._index.head), n, self._min_step())
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
            return self._hits(positive_ids, self._fifo(len(self)))

    def _hits(self, positive_ids: ArrayLike, segments: Segments) -> torch.Tensor:
        """Hit mask of the entries in ``segments`` (pyneg's one hit finder, as the compiled path)."""
        pos = torch.from_numpy(as_id_array(positive_ids, "positive_ids")).to(self.device)
        return _ops.hit_mask(_take(self._ids, segments, copy=False), pos)

    # -------------------------------------------------------------- training
    def negatives(self, positive_ids: Optional[ArrayLike] = None) -> BankNegatives:
        """The entries a training step uses as negatives, aligned column by column.

        Leaves out entries older than ``max_age`` and returns nothing (N = 0)
        until the bank is :attr:`ready`. The embeddings are views into the bank
        when the entries are contiguous in storage (see the class docstring:
        enqueue after backward); ids and log q are copies. With
        ``positive_ids`` (B,), also the (B, N) hit mask.
        """
        if torch.compiler.is_compiling():
            try:
                return self._traced_negatives(positive_ids)
            except (ValueError, TypeError) as e:
                # Raised now, while tracing, it would end as Dynamo's "Observed exception";
                # the compiled call raises the eager error when the graph runs instead.
                return self._refused_negatives(positive_ids, e)
        with self._lock:
            self._check_storage()
            segments = _ring.run(*self._runs[0], self.capacity)
            mask = None if positive_ids is None else self._hits(positive_ids, segments)
            return BankNegatives(
                _take(self._emb, segments, copy=False),
                _take(self._ids, segments, copy=True),
                _take(self._log_q, segments, copy=True),
                mask,
            )

    # ------------------------------------------------------- compiled reads
    def _traced_slots(self, which: int) -> torch.Tensor:
        """The slots of run ``which`` (0: negatives, 1: every entry oldest first), in order."""
        count = self._counts[which].shape[0]
        return (torch.arange(count, device=self.device) + self._starts[which].to(self.device)) % self.capacity

    def _traced_negatives(self, positive_ids: Optional[ArrayLike]) -> BankNegatives:
        """:meth:`negatives` inside ``torch.compile``: the same entries, through pyneg's ops.

        The bank's state comes in as tensors (nothing about it is a constant of
        the graph), the columns are gathered copies (an op cannot return a view
        of the bank), and the lock is not taken (Dynamo cannot trace it): enqueue
        from the training loop's own thread, after backward, as in eager mode.
        """
        pos = None
        if positive_ids is not None:
            pos = check_id_tensor(positive_ids, "positive_ids", ndim=1).to(self.device)
        slots = self._traced_slots(0)
        ids = self._ids.index_select(0, slots)
        mask = None if pos is None else _ops.bank_hit_mask(ids, pos)
        return BankNegatives(self._emb.index_select(0, slots), ids, self._log_q.index_select(0, slots), mask)

    def _refused_negatives(self, positive_ids: Optional[ArrayLike], e: Exception) -> BankNegatives:
        """:meth:`negatives` of arguments that eager calls refuse, inside ``torch.compile``.

        Every column depends on the op ``pyneg::refuse`` (which raises ``e``'s eager
        error when the graph runs), so none can be computed or used before it has
        raised; the columns' values are never seen. The hit mask keeps a plausible
        (B, N) shape so that the rest of the step still traces.
        """
        r = _refuse(self._ids, type(e).__name__, str(e))
        slots = self._traced_slots(0)
        ids = self._ids.index_select(0, slots) + r
        emb = self._emb.index_select(0, slots) + r.to(self._emb.dtype)
        log_q = self._log_q.index_select(0, slots) + r.to(self._log_q.dtype)
        mask = None
        if positive_ids is not None:
            rows = positive_ids.shape[0] if isinstance(positive_ids, torch.Tensor) and positive_ids.dim() else 0
            mask = (ids.new_zeros((rows, 1)) + ids.unsqueeze(0)) != ids.unsqueeze(0)
        return BankNegatives(emb, ids, log_q, mask)

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
            state_must_match(state_dict, key, mine, "bank")
        step = state_int(state_dict, "step", maximum=MAX_STEP)
        head = state_int(state_dict, "head", maximum=self.capacity - 1)
        ids = state_value(state_dict, "ids")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
            raise ValueError("state_dict['ids'] must be a 1-D tensor")
        n = ids.shape[0]
        if n > self.capacity:
            raise ValueError(f"state_dict holds {n} entries, more than this bank's capacity {self.capacity}")
        if n < self.capacity and head != n:
            raise ValueError(f"state_dict['head'] is {head}, impossible for a bank holding {n} < capacity entries")
        emb = state_value(state_dict, "embeddings")
        if not isinstance(emb, torch.Tensor):
            raise TypeError(f"state_dict['embeddings'] must be a tensor, got {type(emb).__name__}")
        check_dense(emb, "embeddings")
        if not emb.is_floating_point():
            raise TypeError(f"state_dict['embeddings'] must be a floating-point tensor, got {emb.dtype}")
        if tuple(emb.shape) != (n, self.dim):
            raise ValueError(f"state_dict['embeddings'] has shape {shape_str(emb.shape)}, expected {(n, self.dim)}")
        ids = state_tensor(state_dict, "ids", (n,), torch.int64)
        log_q = state_tensor(state_dict, "log_q", (n,), torch.float32)
        steps = state_tensor(state_dict, "steps", (n,), torch.int64)
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
            _copy_rows(self._steps, steps, write)
            self._set_layout()
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


def _fill_rows(dst: torch.Tensor, value: int, write: Tuple[int, int, int, int]) -> None:
    """Sets the slots the ring index planned (as :func:`_copy_rows` writes them) to ``value``."""
    _, d, first, second = write
    dst[d : d + first].fill_(value)
    dst[:second].fill_(value)


def _take(t: torch.Tensor, segments: Segments, *, copy: bool) -> torch.Tensor:
    """The rows of ``segments`` in order: a view of one segment (unless ``copy``), else a new tensor."""
    if len(segments) == 1:
        a, b = segments[0]
        return t[a:b].clone() if copy else t[a:b]
    return torch.cat([t[a:b] for a, b in segments])

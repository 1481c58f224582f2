"""Negative samplers built on Walker/Vose alias tables.

All samplers share :class:`AliasSampler`'s interface: the table is built once in
O(V) in C++, and every draw costs O(1) whatever the distribution. Randomness is
counter-based (Philox4x32-10): draw ``j`` of a call is a pure function of
``(seed, offset + j)``, so results do not depend on the thread count or on how a
request is split into batches.

Resolution: every class is drawn with its normalised weight to within 2**-32
(the table stores integer masses that sum to ``V * 2**32``). A class whose
normalised weight is below about ``2**-33 / V`` is never drawn, although
:attr:`~AliasSampler.probs` and :meth:`~AliasSampler.log_prob` still report it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from pyneg import _core, cuda
from pyneg._ops import alias as _alias_ops
from pyneg._ops._checks import refuses_alike_compiled_as
from pyneg._state import pack_tensors, unpack_tensors
from pyneg._validation import (
    MAX_ANALYTIC_CLASSES,
    MAX_BUFFER_BYTES,
    MAX_CLASSES,
    ArrayLike,
    SizeLike,
    as_float64_numpy,
    as_index_tensor,
    as_tensor,
    check_bool,
    check_device,
    check_float,
    check_int,
    check_out,
    check_seed,
    check_size,
    check_tensor,
    owned_copy,
    shape_str,
)

__all__ = [
    "AliasSampler",
    "UnigramSampler",
    "UniformSampler",
    "LogUniformSampler",
    "CandidateSample",
    "draw_seed",
]

# Draws of one call: the int64 result's bytes must fit in int64.
_MAX_DRAWS = 2**60 - 1
# Draw positions are 64-bit counters.
_POSITIONS = 2**64
# Plain draws of at most this many ids cannot be refused once their seed is
# drawn (the allocation cannot fail in practice), so they skip saving the
# generator's state; larger ones save it to rewind after a MemoryError.
_REWIND_NUMEL = 1 << 24
# Integer dtypes that go to the ops as they are (converted to int64 by torch);
# anything else (uint64, floats, bools, arrays, lists) takes the eager checks.
_OP_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_OPS = torch.ops.pyneg

# Refusals of the public methods inside torch.compile(fullgraph=True): raised when the graph
# runs, as the eager call raises them (pyneg/_ops/_checks.py), with the dtype a caller expects.
_refuses_as_draws = refuses_alike_compiled_as(lambda r: r.to(torch.int64))
_refuses_as_float64 = refuses_alike_compiled_as(lambda r: r.to(torch.float64))
_refuses_as_candidates = refuses_alike_compiled_as(
    lambda r: CandidateSample(r.to(torch.int64), r.to(torch.float64), r.to(torch.float64), r.to(torch.int64))
)


def draw_seed(generator: Optional[torch.Generator] = None) -> int:
    """A 63-bit seed drawn from ``generator`` (torch's default generator when None).

    This is how samplers seed themselves when no ``seed`` is given, so that
    ``torch.manual_seed`` reproduces a run and each DataLoader worker (whose
    default generator torch seeds differently) gets its own stream.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


def _check_seed_arg(value: Union[int, torch.Tensor], name: str, compiling: bool) -> Union[int, torch.Tensor]:
    """A seed or offset: an int in [0, 2**64), or a one-element integer tensor (a 0-dim int64
    CPU tensor is what the ops take: under torch.compile a new value is then new data, not a
    recompilation). A tensor's value is read as its 64 bits, unsigned, eagerly and compiled
    alike (``torch.tensor(-3)`` is the seed ``2**64 - 3``), so both give the same draws."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must be an int or a one-element integer tensor, got {value.dtype} of shape "
                f"{shape_str(value.shape)}"
            )
        if value.device.type == "meta":
            raise ValueError(f"{name} must hold a value, got a meta tensor")
        if not compiling:  # its 64 bits, as the ops read them (a negative int64 is a seed >= 2**63)
            return int(value.detach().reshape(()).cpu().numpy().item()) % _POSITIONS  # (uint64 past 2**63 too)
        return value.reshape(()).to(device="cpu", dtype=torch.int64)
    if type(value) is int and 0 <= value < _POSITIONS:
        return value
    return check_seed(value, name)


def _int64_tensor(value: int) -> torch.Tensor:
    """An int in [0, 2**64) as a 0-dim int64 tensor holding its 64 bits."""
    return torch.tensor(value - _POSITIONS if value >= 2**63 else value, dtype=torch.int64, device="cpu")


def _u64(value: Union[int, torch.Tensor]) -> int:
    return (int(value) if isinstance(value, torch.Tensor) else value) & (_POSITIONS - 1)


class _Distribution:
    """One sampler's whole state, replaced as a unit (never mutated in place).

    The table is one int64 tensor, ``entries`` (``(alias << 32) | threshold``
    words, 8 bytes per class; layout in csrc/cpu/alias_table.h), plus the
    scalars ``num_classes`` and ``num_positive``. Nothing else is stored: the
    class masses (what ``probs``, ``log_prob``, exclusion lists and unique draws
    read) are derived from ``entries`` in O(V) the first time one of those needs
    them and kept from then on (8 bytes per class more). A thread that loads a
    new state while another samples can never pair one state's table with
    another's masses: both live here. Per-device copies are uploaded on first use.
    """

    __slots__ = (
        "device_ids", "device_tables", "entries", "entries_np", "ids", "ids_np", "mass_np", "num_classes",
        "num_positive",
    )  # fmt: skip

    def __init__(self, entries: np.ndarray, num_positive: int) -> None:
        self.entries_np = entries  # what eager CPU calls hand the kernels (never written)
        self.entries = torch.from_numpy(entries)
        self.num_classes = int(entries.shape[0])
        self.num_positive = int(num_positive)
        self.mass_np: Optional[np.ndarray] = None
        self.device_tables: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}
        # A sparse catalogue (see AliasSampler's ``ids``): slot s of the table is the id
        # ids_np[s] (sorted), and num_classes is the catalogue's V. None for a dense table.
        self.ids_np: Optional[np.ndarray] = None
        self.ids: Optional[torch.Tensor] = None
        self.device_ids: Dict[torch.device, torch.Tensor] = {}

    def make_sparse(self, ids: np.ndarray, num_classes: int) -> _Distribution:
        """Makes this table's slots stand for the (checked, sorted) catalogue ``ids`` of a
        catalogue of ``num_classes`` ids; returns self."""
        self.ids_np = ids
        self.ids = torch.from_numpy(ids)
        self.num_classes = int(num_classes)
        return self

    @property
    def num_slots(self) -> int:
        """The table's size: V for a dense table, the number of stored ids for a sparse one."""
        return int(self.entries_np.shape[0])

    def ids_on(self, device: torch.device) -> torch.Tensor:
        """The sparse ids on ``device`` (uploaded once per device)."""
        assert self.ids is not None
        if device.type == "cpu":
            return self.ids
        got = self.device_ids.get(device)
        if got is None:
            got = self.ids.to(device)
            self.device_ids[device] = got
        return got

    def masses(self) -> np.ndarray:
        """The class masses (int64, sum ``V * 2**32``), derived from ``entries`` on first use."""
        m = self.mass_np
        if m is None:  # racing threads compute the same values; either result is kept
            m = np.empty(self.entries_np.shape[0], dtype=np.int64)
            _core.alias_class_masses(self.entries_np, m)
            self.mass_np = m
        return m

    @property
    def mass(self) -> torch.Tensor:
        """The masses as a tensor. Inside a compiled graph, before anything computed them
        eagerly, the ``pyneg::alias_class_masses`` op computes them in the graph (O(V) per
        call; an eager ``log_prob``, exclusion or unique draw keeps them for later calls)."""
        m = self.mass_np
        if m is not None:
            return torch.from_numpy(m)
        if not _alias_ops.direct_call_ok(self.entries):
            traced: torch.Tensor = _OPS.alias_class_masses(self.entries)
            return traced
        return torch.from_numpy(self.masses())

    def tables(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(entries, mass)`` on ``device`` (copies uploaded once per device)."""
        if device.type == "cpu":
            return self.entries, self.mass
        got = self.device_tables.get(device)
        if got is None:  # racing threads upload the same values
            got = (self.entries.to(device), self.mass.to(device))
            self.device_tables[device] = got
        return got


def _table_distribution(table: Any) -> _Distribution:
    """The state of a table pyneg just built (an ``_core.AliasTable``)."""
    return _Distribution(table._storage(), int(table.num_positive))


def _entries_distribution(entries: np.ndarray) -> _Distribution:
    """The state of an owned int64 ``entries`` array (a loaded table): its aliases
    are checked (all < V) while its masses are derived."""
    m = np.empty(entries.shape[0], dtype=np.int64)
    positive = _core.alias_class_masses(entries, m)
    dist = _Distribution(entries, positive)
    dist.mass_np = m
    return dist


class CandidateSample(NamedTuple):
    """What TensorFlow's ``*_candidate_sampler`` functions return, plus ``num_tries``.

    ``true_expected_count`` and ``sampled_expected_count`` are the expected
    number of times each id appears among the sampled candidates; sampled
    softmax subtracts their logarithms from the logits (``log Q``).
    ``num_tries`` is an int; inside ``torch.compile`` it is a 0-dim int64
    tensor (it is data of the draw, which a compiled graph cannot turn into a
    Python int without a break).
    """

    sampled_candidates: torch.Tensor
    true_expected_count: torch.Tensor
    sampled_expected_count: torch.Tensor
    num_tries: Union[int, torch.Tensor]


class AliasSampler:
    """Draws class ids with probability proportional to ``weights``.

    Args:
        weights: 1-D, finite, non-negative, with a positive sum (tensor, array or
            sequence). Class ``i`` is drawn with probability
            ``weights[i] / weights.sum()``.
        ids: a sparse catalogue: ``weights[j]`` is the weight of catalogue id
            ``ids[j]`` (1-D integer ids, distinct, in ``[0, num_classes)``, any
            order), and every other id of the catalogue has weight 0. The table
            then holds one slot per given id, not one per class, so ids may go up
            to ``2**50`` (as :class:`UniformSampler`): 16 bytes per given id
            (the table's entry and the sorted id), 24 once its class masses are
            derived (exclusions, unique rows, ``log_prob``). Draws, exclusions
            (catalogue ids; an id of weight 0 is never drawn), unique rows,
            ``log_prob`` (``-inf`` for an id of weight 0), expected counts,
            pickling, ``state_dict`` and table files work as for a dense table;
            :attr:`probs` (V values) is refused past ``2**31 - 1`` classes.
        num_classes: the catalogue's size V with ``ids`` (default
            ``max(ids) + 1``); at most ``2**50``.

    A dense table (``ids=None``) holds at most ``2**31 - 1`` classes: its class
    masses are int64 and sum to ``V * 2**32``, which must stay below ``2**63``.
    Larger catalogues give their weights as ``ids`` with ``num_classes``.

    Example:
        >>> import torch, pyneg
        >>> sampler = pyneg.AliasSampler(torch.tensor([1.0, 2.0, 0.0, 5.0]))
        >>> negatives = sampler.sample((2, 3), seed=0)
        >>> negatives.shape, negatives.dtype
        (torch.Size([2, 3]), torch.int64)
        >>> bool((negatives != 2).all())  # class 2 has zero weight
        True

        A catalogue of 2**40 ids of which three carry weight:

        >>> sparse = pyneg.AliasSampler([1.0, 2.0, 5.0], ids=[7, 2**35, 2**40 - 1], num_classes=2**40)
        >>> bool(torch.isin(sparse.sample(8, seed=0), sparse.ids).all())
        True
        >>> float(sparse.log_prob(torch.tensor([3])))  # weight 0
        -inf
    """

    def __init__(
        self,
        weights: ArrayLike,
        *,
        ids: Optional[ArrayLike] = None,
        num_classes: Optional[int] = None,
        _name: str = "weights",
    ) -> None:
        if ids is not None:
            self._dist = _sparse_distribution(weights, ids, num_classes, _name)
            return
        if num_classes is not None:
            raise TypeError(
                "num_classes is the size of a sparse catalogue and needs ids (weights[j] is the weight of "
                "ids[j]); a dense table has len(weights) classes"
            )
        # The binding copies w into the table's own buffer (holding the GIL), then
        # checks and builds from that copy: another thread writing the caller's
        # array cannot make the checked values differ from the used ones.
        w = as_float64_numpy(weights, _name, max_len=MAX_CLASSES)
        self._dist = _table_distribution(_core.AliasTable(w, _name, torch.get_num_threads()))

    @property
    def _table(self) -> Any:
        """An ``_core.AliasTable`` holding a copy of the entries (tests draw from it directly)."""
        return _core._testing.alias_table_from_entries(self._dist.entries_np)

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        """V, the number of classes."""
        return self._dist.num_classes

    @property
    def num_positive(self) -> int:
        """How many classes can be drawn (positive mass in the table)."""
        return self._dist.num_positive

    @property
    def ids(self) -> Optional[torch.Tensor]:
        """A sparse sampler's catalogue ids, the ones given with a weight (sorted; a copy); None for a dense table."""
        ids = getattr(self._dist, "ids", None)
        return None if ids is None else ids.clone()

    @property
    def probs(self) -> torch.Tensor:
        """(V,) float64 probabilities of one draw: the table's masses over ``V * 2**32``.

        They differ from the normalised weights by at most ``2**-32`` each (see the
        samplers guide, "Exactness"). A fresh tensor on every access (O(V)): writing
        it changes nothing in the sampler. A sparse sampler (``ids``) gives 0 for the ids
        without weight, and refuses (ValueError) catalogues above ``2**31 - 1`` classes:
        use ``log_prob(sampler.ids)`` there.
        """
        dist = self._dist
        if dist.ids is not None:
            v = dist.num_classes
            if v > MAX_CLASSES:
                raise ValueError(
                    f"probs of a sparse {type(self).__name__} of {v} classes would hold {v} float64 values "
                    f"({8 * v} bytes); use log_prob(ids) for the ids you need (sampler.ids carry the weight)"
                )
            dense = torch.zeros(v, dtype=torch.float64)
            dense[dist.ids] = dist.mass.to(torch.float64) / _total_mass(dist.num_slots)
            return dense
        return dist.mass.to(torch.float64) / _total_mass(dist.num_classes)

    @_refuses_as_float64
    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """log P(one draw == id), float64, with the shape of ``ids`` (-inf for classes never drawn).

        The table's probability (its integer mass over ``V * 2**32``). Works inside
        ``torch.compile(fullgraph=True)`` for integer tensor ``ids`` (the range check
        runs in the ``pyneg::alias_log_prob`` op).
        """
        return self._log_prob(ids, self._dist)

    def _log_prob(self, ids: ArrayLike, dist: _Distribution) -> torch.Tensor:
        """:meth:`log_prob` under one given state (a call that draws and scores pins one)."""
        idx, dev = _log_prob_ids(ids, dist.num_classes)
        if dist.ids is not None:
            out = _sparse_log_prob(dist, idx)
            return out if dev is None else out.to(dev)
        if idx.device.type == "cpu" and _alias_ops.direct_call_ok(idx):
            out = _alias_ops.log_prob_impl(dist.mass, idx)
        else:
            out = _OPS.alias_log_prob(dist.mass, idx)
        return out if dev is None else out.to(dev)

    @_refuses_as_float64
    def probability(self, ids: ArrayLike) -> torch.Tensor:
        """P(one draw == id), float64, with the shape of ``ids`` (0 for classes never drawn).

        The name :class:`~pyneg.FrequencyEstimator` uses for the same question,
        so both answer ``probability(ids)`` / ``log_prob(ids)``. ``exp`` of
        :meth:`log_prob` (equal to ``probs[ids]`` to float64 rounding), so it
        takes the same ``ids`` and also runs inside ``torch.compile(fullgraph=True)``.
        """
        return torch.exp(self.log_prob(ids))

    # ------------------------------------------------ sampled-softmax counts
    @_refuses_as_float64
    def expected_count(
        self,
        ids: ArrayLike,
        num_sampled: int,
        *,
        num_tries: Union[int, torch.Tensor, None] = None,
    ) -> torch.Tensor:
        """Expected number of times each id appears among ``num_sampled`` candidates.

        With replacement (``num_tries=None``) this is ``num_sampled * p``. For
        candidates drawn with ``unique=True``, pass the ``num_tries`` the draw
        used (see :meth:`sample_candidates`); the count is then TensorFlow's:
        ``num_sampled * p`` when ``num_tries == num_sampled`` (no draw was
        rejected) and ``1 - (1 - p) ** num_tries`` otherwise. A tensor
        ``num_tries`` broadcasts against the trailing dimensions of ``ids``
        from the left, one value per row.
        """
        return torch.exp(self.log_expected_count(ids, num_sampled, num_tries=num_tries))

    @_refuses_as_float64
    def log_expected_count(
        self,
        ids: ArrayLike,
        num_sampled: int,
        *,
        num_tries: Union[int, torch.Tensor, None] = None,
    ) -> torch.Tensor:
        """``log`` of :meth:`expected_count`, computed stably: the ``log Q`` of sampled softmax."""
        num_sampled = check_int(num_sampled, "num_sampled", minimum=1)
        logp = self.log_prob(ids)
        if num_tries is None:
            return logp + math.log(num_sampled)
        return _log_count(logp, num_sampled, _check_num_tries(num_tries, tuple(logp.shape)))

    # ---------------------------------------------------------------- drawing
    @_refuses_as_draws
    def sample(
        self,
        size: SizeLike,
        *,
        exclude: Optional[ArrayLike] = None,
        unique: bool = False,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        offset: int = 0,
        device: Union[str, torch.device, None] = None,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Draws a LongTensor of class ids of shape ``size``.

        Args:
            size: int or tuple. The last dimension holds one query's negatives:
                ``(B, k)`` gives ``k`` negatives for each of ``B`` rows.
            exclude: ids a row must never contain, (B,) or (B, P) padded with
                -1, B the first dimension of ``size``. Excluded draws are
                redrawn, so each row follows the distribution renormalised over
                its allowed ids. For a 1-D ``size`` each element is a row.
            unique: draw the ids of each row (last dimension) without
                replacement: successive sampling, each id drawn from the
                distribution renormalised over the ids not drawn yet.
            generator: where to take a seed from when ``seed`` is None
                (torch's default generator when both are None).
            seed: draws are a pure function of ``(seed, offset + position)``.
                An int in [0, 2**64) or a one-element integer tensor (its 64
                bits); inside ``torch.compile`` a 0-dim int64 tensor seed is
                data, so a new seed never recompiles. Without a seed one is
                drawn from the generator, inside a compiled graph as a tensor
                (``torch.randint(0, 2**63 - 1, ())``).
            offset: position of the first draw in the seed's stream; draws of
                one call with ``offset=0`` equal those of two calls split at
                ``n`` with offsets 0 and ``n``. An int or a tensor, like ``seed``.
            device: where the result lives (default: ``out``'s device, else CPU).
                On a CUDA device pyneg's CUDA kernels draw there, bit-identical
                to the CPU for the same seed (when ``pyneg.cuda_available()``).
            out: int64 tensor of shape ``size`` to write into (reusing it saves
                the page faults of a fresh allocation); dense, contiguous, and
                sharing no memory with ``exclude``.

        Raises:
            ValueError, TypeError: for a bad argument, naming it; the call then
                changes nothing (not ``out``, not the generator; inside a
                compiled graph the seed already drawn is not given back).
            MemoryError: ``size`` fits in int64 but not in memory.

        The draws are the ``torch.ops.pyneg.alias_sample*`` operators, so the
        call works inside ``torch.compile(fullgraph=True)`` and ``torch.export``
        (see the samplers guide, "Inside torch.compile and torch.export").
        """
        if (
            type(size) is tuple
            and exclude is None
            and unique is False
            and generator is None
            and device is None
            and out is None
            and type(offset) is int
            and offset == 0
            and (seed is None or (type(seed) is int and 0 <= seed < _POSITIONS))
        ):
            # The commonest call (a shape, maybe an int seed, no options), in one
            # place: the checks that apply, then the kernel. Same draws as _sample.
            fast = self._fast_draw(size, seed)
            if fast is not None:
                return fast
        return self._sample(size, exclude, unique, generator, seed, offset, device, out, want_tries=False)[0]

    def _fast_draw(self, size: Tuple[Any, ...], seed: Optional[int]) -> Optional[torch.Tensor]:
        """Plain CPU draws of shape ``size`` eagerly, or None when the call needs the full path
        (a size to check, tracing or a mode active, a size large enough to need the
        generator's rewind on failure)."""
        numel = 1
        for d in size:
            if type(d) is not int or d < 0:
                return None
            numel *= d
        if numel == 0 or numel > _REWIND_NUMEL or not _alias_ops.direct_call_ok():
            return None
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()))  # as draw_seed: torch's default generator
        result = torch.empty(size, dtype=torch.int64)
        dist = self._dist
        self._fast_kernel(dist, seed, result)
        return result

    @staticmethod
    def _fast_kernel(dist: Any, seed: int, result: torch.Tensor) -> None:
        threads = torch.get_num_threads()
        _core.alias_draw(dist.entries_np, seed, 0, result.numpy(), threads)
        if dist.ids_np is not None:  # slots to catalogue ids, in place
            _core.sparse_gather(dist.ids_np, dist.num_classes, result.numpy(), threads)

    @_refuses_as_candidates
    def sample_candidates(
        self,
        num_sampled: int,
        true_classes: Optional[ArrayLike] = None,
        *,
        unique: bool = True,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> CandidateSample:
        """Shared candidates for sampled softmax, as TensorFlow's candidate samplers give them.

        Draws ``num_sampled`` candidates (distinct when ``unique``) and returns
        them with the expected counts of ``true_classes`` ((B,) or (B, T) with
        T true classes per row, TensorFlow's ``num_true``; the counts have its
        shape) and of the candidates; ``log`` of those counts is the
        correction sampled softmax and NCE subtract. See
        :meth:`expected_count` for the formula (TensorFlow's, including its
        ``num_sampled * p`` when a unique draw needed no extra tries).
        """
        num_sampled = check_int(num_sampled, "num_sampled", minimum=1, maximum=_MAX_DRAWS)
        check_bool(unique, "unique")
        if true_classes is not None:
            if torch.compiler.is_compiling() and not isinstance(true_classes, torch.Tensor):
                # Dynamo cannot guard on the values as_index_tensor reads: torch builds the
                # tensor NumPy would, then the tensor road below.
                true_classes = as_tensor(true_classes, "true_classes")
            if torch.compiler.is_compiling() and isinstance(true_classes, torch.Tensor):
                # Compiled: static checks here, the range check in log_prob's op.
                check_tensor(true_classes, "true_classes")
                if true_classes.dtype not in _OP_INT_DTYPES:
                    raise TypeError(f"true_classes must hold integer ids, got {true_classes.dtype}")
                # The range check in an op of its own, so its error names true_classes as eagerly.
                checked: torch.Tensor = _OPS.check_ids(true_classes.to(device="cpu"), self.num_classes, "true_classes")
                true_classes = checked
            else:  # checked before drawing: a refused call draws nothing
                true_classes = as_index_tensor(true_classes, "true_classes", self.num_classes)
            if true_classes.dim() > 2:
                shown = shape_str(true_classes.shape)
                raise ValueError(f"true_classes must be (B,) or (B, num_true), got shape {shown}")
        # One state for the draws and both expected counts, whatever a concurrent rebuild
        # (LearnedUnigramSampler) or load_state_dict installs meanwhile: never a mix.
        dist = self._dist
        ids, tries = self._sample((num_sampled,), None, unique, generator, seed, 0, None, None, dist=dist)
        logp = self._log_prob(ids, dist)
        num_tries: Union[int, torch.Tensor, None] = None
        if unique and tries is not None:
            t = tries[0]
            num_tries = t if torch.compiler.is_compiling() else int(t)
        sampled_count = torch.exp(_log_count(logp, num_sampled, num_tries))
        if true_classes is None:
            true_count = torch.empty(0, dtype=torch.float64)
        else:
            true_count = torch.exp(_log_count(self._log_prob(true_classes, dist), num_sampled, num_tries))
        return CandidateSample(ids, true_count, sampled_count, num_sampled if num_tries is None else num_tries)

    def _sample(
        self,
        size: SizeLike,
        exclude: Optional[ArrayLike],
        unique: bool,
        generator: Optional[torch.Generator],
        seed: Union[int, torch.Tensor, None],
        offset: Union[int, torch.Tensor],
        device: Any,
        out: Optional[torch.Tensor],
        want_tries: bool = True,
        dist: Optional[_Distribution] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if dist is None:
            dist = self._dist  # one state for the whole call, whatever other threads load
        compiling = torch.compiler.is_compiling()
        # The common call (a tuple of ints, no options) takes cheap checks; anything
        # else goes through the full ones, which give the errors.
        if type(size) is tuple and all(type(d) is int and d >= 0 for d in size):
            shape = size
            numel = math.prod(shape)
            if numel == 0 or numel > _MAX_DRAWS:  # empty: dims that multiply past int64 are refused
                shape = check_size(size, max_numel=_MAX_DRAWS)
        else:
            shape = check_size(size, max_numel=_MAX_DRAWS)
            numel = math.prod(shape)
        if unique is not False:
            unique = check_bool(unique, "unique")
        if isinstance(offset, torch.Tensor):
            offset = _check_seed_arg(offset, "offset", compiling)
        else:
            if type(offset) is not int or offset < 0:
                offset = check_int(offset, "offset", minimum=0, maximum=_POSITIONS - 1)
            if offset + numel > _POSITIONS:
                raise ValueError(
                    f"offset + the number of draws must not exceed 2**64 (the positions of a "
                    f"seed's stream), got offset {offset} and {numel} draws"
                )
        dev = None if device is None else check_device(device)
        if out is not None:
            check_out(out, "out", shape, torch.int64, inputs=[("exclude", exclude)])
            if dev is None:
                dev = out.device
            elif out.device != dev:
                raise ValueError(f"out is on {out.device} but device is {dev}")
        dev = dev or _CPU
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {dev}, but torch has no usable CUDA device")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is not None:
            seed = _check_seed_arg(seed, "seed", compiling)

        # Rows: the last dimension is a row of negatives; a 1-D size with an
        # exclusion list has one row per element.
        if len(shape) >= 2:
            k = shape[-1]
        elif exclude is not None:
            k = 1
        else:
            k = numel
        ex = None if exclude is None else self._exclusion_lists(exclude, shape, dev)
        if unique and k > dist.num_positive:
            raise ValueError(
                f"size asks for {k} distinct ids per row but only {dist.num_positive} classes have positive weight"
            )
        if seed is not None:
            return self._draw(dist, shape, k, ex, unique, seed, offset, dev, out, want_tries)
        if compiling:
            # The seed is drawn inside the graph from torch's generator, as a
            # tensor; a refused call cannot rewind it there (see the samplers guide).
            seed = torch.randint(0, 2**63 - 1, (), generator=generator, device=_CPU if generator is None else None)
            return self._draw(dist, shape, k, ex, unique, seed, offset, dev, out, want_tries)
        # A refused call must leave the generator as it found it: the kernels may
        # still refuse an exclusion list (one that leaves nothing to draw), and a
        # huge size its allocation. Other calls cannot fail once the seed is drawn.
        gen = generator if generator is not None else torch.default_generator
        may_refuse = ex is not None or numel > _REWIND_NUMEL
        gen_state = gen.get_state() if may_refuse else None
        gen_device = _CPU if generator is None else generator.device
        seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=gen_device))  # as draw_seed
        if gen_state is None:
            return self._draw(dist, shape, k, ex, unique, seed, offset, dev, out, want_tries)
        # Rewind only if no other thread has drawn from the generator since.
        drawn_state = gen.get_state()
        try:
            return self._draw(dist, shape, k, ex, unique, seed, offset, dev, out, want_tries)
        except (ValueError, TypeError, MemoryError):
            if torch.equal(gen.get_state(), drawn_state):
                gen.set_state(gen_state)
            raise

    def _exclusion_lists(self, exclude: ArrayLike, shape: Tuple[int, ...], dev: torch.device) -> torch.Tensor:
        """``exclude`` as the (L, P) int64 tensor on ``dev`` the ops take (shape checks only:
        the ops check the ids' range)."""
        if not isinstance(exclude, torch.Tensor):
            # One road, eager and compiled (Dynamo cannot guard on the values as_index_tensor
            # reads): the tensor NumPy would build, and an integer one takes the op road, which
            # checks the range; others (uint64, floats) the eager checks below.
            exclude = as_tensor(exclude, "exclude")
        if isinstance(exclude, torch.Tensor) and exclude.dtype in _OP_INT_DTYPES:
            ex = check_tensor(exclude, "exclude").to(device=dev, dtype=torch.int64)
        elif isinstance(exclude, torch.Tensor) and (
            exclude.is_floating_point() or exclude.is_complex() or exclude.dtype == torch.bool
        ):
            # Refused here on both roads (compiled, sample() turns it into pyneg::refuse).
            raise TypeError(f"exclude must hold integer ids, got {exclude.dtype}")
        else:  # arrays, lists, uint64 and non-integer tensors: the eager checks
            ex = as_index_tensor(exclude, "exclude", self._dist.num_classes, allow_padding=True).to(dev)
        if ex.dim() == 1:
            ex = ex.unsqueeze(1)
        if ex.dim() != 2:
            raise ValueError(f"exclude must be (B,) or (B, P), got shape {shape_str(ex.shape)}")
        lead = shape[0] if shape else 1
        if ex.shape[0] != lead:
            raise ValueError(f"exclude has {ex.shape[0]} rows but size {shape} has {lead} in its first dimension")
        if ex.shape[1] == 0:
            ex = torch.full((ex.shape[0], 1), -1, dtype=torch.int64, device=dev)
        return ex

    def _draw(
        self,
        dist: _Distribution,
        shape: Tuple[int, ...],
        k: int,
        ex: Optional[torch.Tensor],
        unique: bool,
        seed: Union[int, torch.Tensor],
        offset: Union[int, torch.Tensor],
        dev: torch.device,
        out: Optional[torch.Tensor],
        want_tries: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draws checked arguments: a dense table's ids directly (:meth:`_draw_slots`); a sparse
        one's slots, with its exclusion lists mapped from catalogue ids to slots first, then
        mapped to catalogue ids (in place)."""
        if dist.ids is None:
            return self._draw_slots(dist, shape, k, ex, unique, seed, offset, dev, out, want_tries)
        slot_ex = None if ex is None else _sparse_slots(dist, ex, "exclude", allow_padding=True)
        slots, tries = self._draw_slots(dist, shape, k, slot_ex, unique, seed, offset, dev, out, want_tries)
        return _sparse_gather(dist, slots, into=out is not None), tries

    def _draw_slots(
        self,
        dist: _Distribution,
        shape: Tuple[int, ...],
        k: int,
        ex: Optional[torch.Tensor],
        unique: bool,
        seed: Union[int, torch.Tensor],
        offset: Union[int, torch.Tensor],
        dev: torch.device,
        out: Optional[torch.Tensor],
        want_tries: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draws checked arguments with the ``pyneg::alias_*`` ops (CPU or CUDA by the tables' device).

        ``seed`` and ``offset`` are ints or 0-dim int64 tensors. Eager CPU calls on plain
        tensors, with no torch function or dispatch mode active, run the ops' CPU
        implementation directly: the same code, without the dispatcher's Python
        round trips (most of a small draw's cost otherwise).
        """
        if dev.type == "cpu" and _alias_ops.direct_call_ok(ex):
            result = out if out is not None else _alias_ops.allocate(shape, dev)
            numel = result.numel()
            rows = numel // k if numel else 0
            tries = torch.empty(rows, dtype=torch.int64) if unique and want_tries else None
            masses = dist.masses() if unique or ex is not None else None  # derived once, then kept
            _alias_ops.draw_into(
                result, dist.entries_np, masses, dist.num_positive if masses is not None else 0, ex, _u64(seed),
                _u64(offset), k, unique, tries,
            )  # fmt: skip
            return result, tries
        direct = _alias_ops.direct_call_ok(ex)
        if dev.type == "cuda" and direct:
            dev = cuda.normalize_device(dev)  # one table copy per device, whichever way it is named
        mass: Optional[torch.Tensor]
        if dev.type == "cpu" and ex is None and not unique:  # plain draws read the entries alone
            entries, mass = dist.entries, None
        else:
            entries, mass = dist.tables(dev)
        if dev.type == "cuda" and direct and cuda.cuda_available():
            # Eager CUDA calls: the ops' CUDA implementation, straight into out when given.
            result = out if out is not None else _alias_ops.allocate(shape, dev)
            numel = result.numel()
            host = None
            if numel:
                host = cuda.draw_into(
                    result, entries, mass, dist.num_positive, ex, _u64(seed), _u64(offset), k, unique,
                    unique and want_tries,
                )  # fmt: skip
            tries = None
            if unique and want_tries:
                tries = host if host is not None else torch.empty(numel // k if numel else 0, dtype=torch.int64)
            return result, tries
        seed = seed if isinstance(seed, torch.Tensor) else _int64_tensor(seed)
        offset = offset if isinstance(offset, torch.Tensor) else _ZERO if offset == 0 else _int64_tensor(offset)
        tries = None
        if unique:
            ids, t = _OPS.alias_sample_unique(entries, mass, dist.num_positive, ex, seed, offset, shape, k, want_tries)
            tries = t if want_tries else None
        elif ex is not None:
            ids = _OPS.alias_sample_excluding(entries, mass, dist.num_positive, ex, seed, offset, shape, k)
        else:
            ids = _OPS.alias_sample(entries, seed, offset, shape)
        if out is not None:
            out.copy_(ids)
            return out, tries
        return ids, tries

    def _sample_torch_ops(
        self, shape: Tuple[int, ...], seed: int, device: torch.device, dist: Optional[_Distribution] = None
    ) -> torch.Tensor:
        """Alias draws with plain torch ops on ``device`` (the CUDA op's fallback when pyneg._cuda
        is not built): the same distribution as the kernels, not the same draws."""
        dist = dist or self._dist
        return _alias_ops.torch_ops_draw(dist.tables(device)[0], shape, seed)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> Dict[str, Any]:
        """The sampler's state: its class name and its table (``entries``, the (V,) int64
        words it draws from), plus what a subclass adds (UnigramSampler: ``power``).

        Holds only tensors, strings and numbers, so it loads with
        ``torch.load(..., weights_only=True)``. States saved by pyneg before the compact
        table (with ``probs`` instead of ``entries``) still load: the table is then
        rebuilt from those probabilities.
        """
        dist = self._dist
        if dist.ids is not None:  # a sparse catalogue: the slots' ids and V too
            return {
                "sampler": type(self).__name__, "entries": dist.entries.clone(), "ids": dist.ids.clone(),
                "num_classes": dist.num_classes, **self._extra_state(),
            }  # fmt: skip
        return {"sampler": type(self).__name__, "entries": dist.entries.clone(), **self._extra_state()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`; the sampler then draws exactly as the saved one.

        Refuses (ValueError, leaving the sampler unchanged) the state of another
        sampler class, of another number of classes, or with missing, unknown
        or malformed entries.
        """
        dist, extra = self._check_state(state_dict, self.num_classes)
        self._dist = dist
        self._set_extra_state(extra)

    # Names of the entries a subclass adds to the state.
    _EXTRA_KEYS: Tuple[str, ...] = ()

    def _extra_state(self) -> Dict[str, Any]:
        """Entries a subclass adds to the state (numbers and strings only)."""
        return {}

    def _check_extra_state(self, state: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
        """Validates a subclass's entries of ``state``; returns them (nothing is written)."""
        return {}

    def _set_extra_state(self, extra: Dict[str, Any]) -> None:
        pass

    def _check_state(self, state: Any, num_classes: Optional[int]) -> Tuple[_Distribution, Dict[str, Any]]:
        """Checks a state fully and builds its distribution, writing nothing: (dist, extra)."""
        cls = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
        table_key = "probs" if "probs" in state and "entries" not in state else "entries"  # probs: older pyneg
        sparse = table_key == "entries" and "ids" in state
        want = {"sampler", table_key, *self._EXTRA_KEYS} | ({"ids", "num_classes"} if sparse else set())
        missing, unknown = want - set(state), set(state) - want
        if missing or unknown:
            raise ValueError(
                f"state_dict is not a state of {cls} (saved by another class or an older pyneg?): "
                + ", ".join(
                    filter(
                        None,
                        [
                            f"missing {sorted(missing)}" if missing else None,
                            f"unexpected {sorted(map(str, unknown))}" if unknown else None,
                        ],
                    )
                )
            )
        if state["sampler"] != cls:
            raise ValueError(f"state_dict is a state of {state['sampler']!r}, not of {cls}")
        p = state[table_key]
        name = f"state_dict[{table_key!r}]"
        dtype = torch.float64 if table_key == "probs" else torch.int64
        if (
            not isinstance(p, torch.Tensor)
            or p.dtype != dtype
            or p.dim() != 1
            or p.layout != torch.strided
            or p.device.type == "meta"
        ):
            raise ValueError(
                f"{name} must be a 1-D {str(dtype).replace('torch.', '')} tensor, got "
                + (f"{p.dtype} of shape {tuple(p.shape)}" if isinstance(p, torch.Tensor) else type(p).__name__)
            )
        if p.numel() == 0 or p.numel() > MAX_CLASSES:
            raise ValueError(f"{name} must have 1 to {MAX_CLASSES} entries, got {p.numel()}")
        sparse_ids: Optional[np.ndarray] = None
        if sparse:
            try:
                v = check_int(
                    state["num_classes"], "state_dict['num_classes']", minimum=1, maximum=MAX_ANALYTIC_CLASSES
                )
            except TypeError as exc:
                raise ValueError(str(exc)) from None
            q = state["ids"]
            if not isinstance(q, torch.Tensor) or q.dtype != torch.int64 or q.dim() != 1 or q.layout != torch.strided:
                raise ValueError(
                    "state_dict['ids'] must be a 1-D int64 tensor, got "
                    + (f"{q.dtype} of shape {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__)
                )
            if q.device.type == "meta" or q.numel() != p.numel():
                raise ValueError(f"state_dict['ids'] must hold one id per entry ({p.numel()}), got {q.numel()}")
            sparse_ids = _core.IdBuffer(q.detach().cpu())._storage()  # owned, then checked
            _core.sparse_check_ids(sparse_ids, v, "state_dict['ids']")
        else:
            v = p.numel()
        if num_classes is not None and v != num_classes:
            raise ValueError(f"{name} has {v} classes but this {cls} has {num_classes}")
        extra = self._check_extra_state(state, v)
        if table_key == "probs":
            probs = owned_copy(p, torch.float64).numpy()
            if not np.isfinite(probs).all() or (probs < 0).any() or abs(float(probs.sum()) - 1.0) > 1e-6:
                raise ValueError(f"{name} must be finite, non-negative and sum to 1")
            dist = _table_distribution(_core.AliasTable(probs, name, torch.get_num_threads()))
        else:
            try:  # copied, then checked: every alias < V
                dist = _entries_distribution(owned_copy(p, torch.int64).numpy())
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if sparse_ids is not None:
            dist.make_sparse(sparse_ids, v)
        return dist, extra

    # ------------------------------------------------------------ table files
    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Writes the sampler to a table file that :meth:`load` maps read-only.

        The file holds a versioned header (sampler class, parameters, every
        array's dtype, shape, offset and checksum) and the table's arrays; the
        samplers without a table (uniform, log-uniform) save their parameters
        only. Written to a temporary file renamed over ``path``: processes that
        mapped an older file at ``path`` keep reading it whole. See the guide
        "Catalogues larger than memory".
        """
        from pyneg import _sampler_files

        _sampler_files.save(self, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]], *, mmap: bool = True, verify: bool = True) -> Any:
        """A sampler read from a file written by :meth:`save` (an instance of the saved class).

        Args:
            path: the file.
            mmap: map the table read-only instead of reading it: every process
                that maps the file shares one copy of its memory, and a mapped
                sampler pickled to a DataLoader worker (fork, spawn or
                forkserver) maps the file again instead of copying the table.
            verify: check every array's checksum (one pass over the file).

        Raises:
            ValueError: ``path`` is not a table file, has another format version,
                was truncated or resized, fails a checksum, or holds a sampler
                that is not a ``cls``: refused before any draw.
        """
        from pyneg import _sampler_files

        return _sampler_files.load(cls, path, mmap=mmap, verify=verify)

    def __reduce_ex__(self, protocol: Any) -> Any:
        if "_mapped_from" in self.__dict__:  # a mapped table: pickle the file, not the table
            from pyneg import _sampler_files

            reduced = _sampler_files.reduce_mapped(self)
            if reduced is not None:
                return reduced
        return super().__reduce_ex__(protocol)

    # Pickling (deepcopy, torch.save) goes through state_dict, so a copy is
    # built and validated exactly as a loaded state is.
    def __getstate__(self) -> Dict[str, Any]:
        # Tensors by value: see pyneg._state.PackedTensor (spawn DataLoader workers).
        packed: Dict[str, Any] = pack_tensors(self.state_dict())
        return packed

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = unpack_tensors(state)
        if isinstance(state, dict) and "_probs" in state:  # pickled by an older pyneg: its attributes
            extra = {"power": state["power"]} if "power" in state else {}
            state = {"sampler": type(self).__name__, "probs": state["_probs"], **extra}
        self._dist, extra = self._check_state(state, None)
        self._set_extra_state(extra)

    def __repr__(self) -> str:
        dist = self._dist
        if getattr(dist, "ids", None) is not None:
            return f"{type(self).__name__}(num_classes={self.num_classes}, ids: {dist.num_slots} with weight)"
        return f"{type(self).__name__}(num_classes={self.num_classes})"


_CPU = torch.device("cpu")


# ---------------------------------------------------------- sparse catalogues
def _sparse_distribution(weights: ArrayLike, ids: ArrayLike, num_classes: Any, wname: str) -> _Distribution:
    """The table of a sparse catalogue: ``weights[j]`` for id ``ids[j]``, the other ids of
    ``[0, num_classes)`` weight 0. The table's slots follow the ids sorted."""
    w = as_float64_numpy(weights, wname, max_len=MAX_CLASSES)
    t = as_tensor(ids, "ids")
    if t.dim() != 1:
        raise ValueError(f"ids must be 1-D (one catalogue id per weight), got shape {tuple(t.shape)}")
    if t.numel() != w.shape[0]:
        raise ValueError(f"ids has {t.numel()} entries but {wname} has {w.shape[0]}: one id per weight")
    v = None
    if num_classes is not None:
        v = check_int(num_classes, "num_classes", minimum=1, maximum=MAX_ANALYTIC_CLASSES)
    idx = as_index_tensor(ids, "ids", v if v is not None else MAX_ANALYTIC_CLASSES).numpy()  # owned
    if v is None:
        v = int(idx.max()) + 1
    if idx.shape[0] > 1 and not bool((idx[1:] > idx[:-1]).all()):
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        w = w[order]
    _core.sparse_check_ids(idx, v, "ids")  # distinct (sorted now), in range
    dist = _table_distribution(_core.AliasTable(np.ascontiguousarray(w), wname, torch.get_num_threads()))
    return dist.make_sparse(_core.IdBuffer(idx)._storage(), v)  # on huge pages: draws read it at random


def _sparse_slots(dist: _Distribution, query: torch.Tensor, name: str, *, allow_padding: bool) -> torch.Tensor:
    """The table slots of the catalogue ids ``query`` (-1 for an id of weight 0, and for
    padding), on ``query``'s device; ids outside [0, V) refused naming ``name``."""
    from pyneg._ops import sparse as _sparse_ops

    assert dist.ids is not None
    if query.device.type == "cpu" and _alias_ops.direct_call_ok(query):
        return _sparse_ops.lookup_impl(dist.ids, dist.num_classes, query, allow_padding, name)
    slots: torch.Tensor = _OPS.sparse_lookup(dist.ids, dist.num_classes, query, allow_padding, name)
    return slots


def _sparse_gather(dist: _Distribution, slots: torch.Tensor, *, into: bool) -> torch.Tensor:
    """Drawn slots replaced by their catalogue ids: in place on the CPU (C++), else a gather
    (written back into ``slots`` when ``into``: the caller's ``out``)."""
    assert dist.ids_np is not None
    if slots.device.type == "cpu" and _alias_ops.direct_call_ok(slots) and slots.is_contiguous():
        if slots.numel():
            _core.sparse_gather(dist.ids_np, dist.num_classes, slots.view(-1).numpy(), torch.get_num_threads())
        return slots
    got = dist.ids_on(slots.device).index_select(0, slots.reshape(-1)).reshape(slots.shape)
    if into:
        slots.copy_(got)
        return slots
    return got


def _sparse_log_prob(dist: _Distribution, idx: torch.Tensor) -> torch.Tensor:
    """log P(one draw == id) of a sparse table for int64 catalogue ids ``idx`` (CPU): the
    slot's mass over ``n * 2**32``, ``-inf`` for an id of weight 0."""
    if 8 * idx.numel() > MAX_BUFFER_BYTES:  # sized first: a MemoryError for absurd ids, as dense tables
        _alias_ops._log_prob_out(idx)
    assert dist.ids_np is not None
    if _alias_ops.direct_call_ok(idx):  # eagerly: one C++ pass (lookup, gather, log)
        q = idx.contiguous()
        out = torch.empty(q.shape, dtype=torch.float64)
        if q.numel():
            _core.sparse_log_prob(
                dist.ids_np, dist.masses(), dist.num_classes, q.numpy(), out.numpy(), "ids", torch.get_num_threads()
            )
        return out
    slots = _sparse_slots(dist, idx, "ids", allow_padding=False)
    mass = dist.mass
    missing = slots < 0
    m = mass.index_select(0, slots.clamp(min=0).reshape(-1).to(mass.device)).to(torch.float64).reshape(idx.shape)
    m = torch.where(missing.to(m.device), torch.zeros((), dtype=torch.float64, device=m.device), m)
    return torch.log(m / _total_mass(dist.num_slots))


def _total_mass(num_classes: int) -> float:
    """The total integer mass of a table of V classes, ``V * 2**32``, as a float."""
    return float(num_classes) * 2.0**32


def _log_prob_ids(ids: ArrayLike, num_classes: int) -> Tuple[torch.Tensor, Optional[torch.device]]:
    """``ids`` of log_prob as an int64 CPU tensor (the op checks the range of integer
    tensors; anything else takes the eager checks), and the device to return on."""
    if torch.compiler.is_compiling() and not isinstance(ids, torch.Tensor):
        # Dynamo cannot trace the NumPy conversion nor guard on the values as_index_tensor
        # reads: torch builds the tensor NumPy would, and an integer one takes the op road.
        ids = as_tensor(ids, "ids")
    if isinstance(ids, torch.Tensor) and ids.dtype in _OP_INT_DTYPES:
        check_tensor(ids, "ids")
        idx = ids if ids.dtype == torch.int64 and ids.device.type == "cpu" else ids.to(device="cpu", dtype=torch.int64)
        return idx, ids.device
    dev = ids.device if isinstance(ids, torch.Tensor) else None
    return as_index_tensor(ids, "ids", num_classes), dev


# The offset of most calls (never handed out, never written: the ops only read it).
_ZERO = torch.zeros((), dtype=torch.int64, device="cpu")


def _log_count(logp: torch.Tensor, num_sampled: int, tries: Union[float, torch.Tensor, None]) -> torch.Tensor:
    """log expected counts from log p: ``log(k p)`` with replacement (``tries`` None), else
    TensorFlow's ``log(1 - (1 - p) ** tries)`` (``log(k p)`` where ``tries == k``)."""
    with_replacement = logp + math.log(num_sampled)
    if tries is None:
        return with_replacement
    if isinstance(tries, torch.Tensor):
        tries = tries.to(device=logp.device, dtype=torch.float64)
        while tries.dim() and tries.dim() < logp.dim():
            tries = tries.unsqueeze(-1)
    # log(1 - (1 - p)^t) = log(-expm1(t * log1p(-p))); p is clamped to [0, 1]
    # so a rounding excess of exp(log p) over 1 cannot turn into NaN.
    p = torch.exp(logp).clamp_(max=1.0)
    counted = torch.log(-torch.expm1(tries * torch.log1p(-p)))
    # TensorFlow's shortcut: a unique draw that rejected nothing (t == k) counts k·p.
    # (compared as float64, like tries: a Python int past int64 cannot enter a tensor op)
    if not isinstance(tries, torch.Tensor):
        return with_replacement if tries == float(num_sampled) else counted
    return torch.where(tries == float(num_sampled), with_replacement, counted)


def _check_num_tries(num_tries: Any, shape: Tuple[int, ...]) -> Union[float, torch.Tensor]:
    """``num_tries``: whole numbers >= 1, either a number (returned as a float) or a tensor
    whose shape is a leading part of ``shape`` (size-1 dims broadcast), returned as a float64
    copy; its values are checked in the ``pyneg::alias_check_tries`` op."""
    if isinstance(num_tries, (torch.Tensor, np.ndarray, list, tuple)):
        t = as_tensor(num_tries, "num_tries")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"num_tries must hold real numbers, got {t.dtype}")
        lead = shape[: t.dim()]
        if t.dim() > len(shape) or any(a not in (1, b) for a, b in zip(t.shape, lead)):
            raise ValueError(
                f"num_tries must be a number or hold one value per leading index of ids "
                f"(shape {shape_str(shape)}), got shape {shape_str(t.shape)}"
            )
        t = t.detach()
        return _alias_ops.check_tries_impl(t) if _alias_ops.direct_call_ok(t) else _OPS.alias_check_tries(t)
    x = check_float(num_tries, "num_tries", minimum=1.0)
    # math.floor, not round() (untraceable on a symbolic number) nor x % 1 (which Dynamo
    # evaluates wrongly on a symbolic float under dynamic=True: 1.5 % 1 passed as 0)
    if x != math.floor(x):
        raise ValueError("num_tries must hold whole numbers (how many draws a unique draw took)")
    return x


class UnigramSampler(AliasSampler):
    """Draws ids with probability proportional to ``counts ** power`` (word2vec uses 0.75).

    Args:
        counts: 1-D non-negative frequencies (e.g. word or item counts).
        power: exponent applied to the counts; 0.75 flattens the distribution
            so rare items are drawn more often than their frequency alone gives.
            With ``power == 0`` every class, zero counts included, is equally likely.
        ids: a sparse catalogue, as :class:`AliasSampler`'s: ``counts[j]`` is the
            count of catalogue id ``ids[j]``, every other id has count 0 (and
            weight 0, whatever ``power``: with ``power == 0`` every given id is
            equally likely).
        num_classes: the catalogue's size with ``ids`` (default ``max(ids) + 1``).
    """

    def __init__(
        self,
        counts: ArrayLike,
        power: float = 0.75,
        *,
        ids: Optional[ArrayLike] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        power = check_float(power, "power", minimum=0.0)
        # Owned: the checks below and the weights computed from them see the same values.
        c = np.array(as_float64_numpy(counts, "counts", max_len=MAX_CLASSES), copy=True)
        if not np.isfinite(c).all() or (c < 0).any():
            raise ValueError("counts must be finite and non-negative")
        cmax = c.max()
        if cmax == 0 and power > 0:
            raise ValueError("counts must have a positive sum (all entries are zero)")
        # (c / max c) ** power lies in [0, 1]: proportional to c ** power, but it
        # cannot overflow (1e200 ** 2) nor lose subnormal counts.
        with np.errstate(under="ignore"):  # in place: c is pyneg's own copy
            w = np.power(np.divide(c, cmax, out=c), power, out=c) if cmax > 0 else np.ones_like(c)
        self._power = power
        super().__init__(w, ids=ids, num_classes=num_classes, _name="counts")

    @property
    def power(self) -> float:
        """The exponent applied to the counts."""
        return self._power

    _EXTRA_KEYS = ("power",)

    def _extra_state(self) -> Dict[str, Any]:
        return {"power": self._power}

    def _check_extra_state(self, state: Dict[str, Any], num_classes: int) -> Dict[str, Any]:
        try:
            return {"power": check_float(state["power"], "state_dict['power']", minimum=0.0)}
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def _set_extra_state(self, extra: Dict[str, Any]) -> None:
        self._power = extra["power"]


class _AnalyticState:
    """The whole state of an analytic sampler: which distribution and V (no table)."""

    __slots__ = ("kind", "num_classes", "num_positive")

    def __init__(self, kind: int, num_classes: int) -> None:
        self.kind = kind
        self.num_classes = self.num_positive = num_classes


class _AnalyticSampler(AliasSampler):
    """A sampler defined by its size alone: draws, exclusions, unique rows, probabilities
    and expected counts are computed from V (O(1) memory whatever V, V up to 2**40 and
    beyond), with the same Philox positions as the table-based samplers."""

    _KIND = 0
    _dist: Any

    def __init__(self, num_classes: int) -> None:
        n = check_int(num_classes, "num_classes", minimum=1, maximum=MAX_ANALYTIC_CLASSES)
        self._dist = _AnalyticState(self._KIND, n)

    @property
    def _table(self) -> Any:
        raise AttributeError(f"{type(self).__name__} has no table: it draws analytically")

    @staticmethod
    def _fast_kernel(dist: Any, seed: int, result: torch.Tensor) -> None:
        _core.analytic_draw(dist.kind, dist.num_classes, seed, 0, result.numpy(), torch.get_num_threads())

    @property
    def probs(self) -> torch.Tensor:
        """(V,) float64 probabilities of one draw, computed on demand (O(V)).

        Refused (ValueError) for V above 2**31 - 1: use :meth:`log_prob` of the ids you need.
        """
        v = self.num_classes
        if v > MAX_CLASSES:
            raise ValueError(
                f"probs of {type(self).__name__}({v}) would hold {v} float64 values ({8 * v} bytes); "
                "use log_prob(ids) for the ids you need"
            )
        return torch.exp(_alias_ops.analytic_log_prob_impl(self._KIND, v, torch.arange(v)))

    @_refuses_as_float64
    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """log P(one draw == id), float64, with the shape of ``ids``: computed from V, no table.

        Works inside ``torch.compile(fullgraph=True)`` for integer tensor ``ids`` (the range
        check runs in the ``pyneg::analytic_log_prob`` op).
        """
        return self._log_prob(ids, self._dist)

    def _log_prob(self, ids: ArrayLike, dist: Any) -> torch.Tensor:
        v = dist.num_classes
        idx, dev = _log_prob_ids(ids, v)
        if _alias_ops.direct_call_ok(idx):
            out = _alias_ops.analytic_log_prob_impl(dist.kind, v, idx)
        else:
            out = _OPS.analytic_log_prob(dist.kind, v, idx)
        return out if dev is None else out.to(dev)

    def _draw(
        self,
        dist: Any,
        shape: Tuple[int, ...],
        k: int,
        ex: Optional[torch.Tensor],
        unique: bool,
        seed: Union[int, torch.Tensor],
        offset: Union[int, torch.Tensor],
        dev: torch.device,
        out: Optional[torch.Tensor],
        want_tries: bool,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draws checked arguments with ``pyneg::analytic_sample`` (CPU kernels; the result is
        moved to ``dev``). Eager CPU calls run the op's implementation directly."""
        want = unique and want_tries
        if ex is not None and ex.device.type != "cpu":
            ex = ex.cpu()
        if _alias_ops.direct_call_ok(ex):
            result = out if out is not None and dev.type == "cpu" else _alias_ops.allocate(shape, _CPU)
            numel = result.numel()
            rows = numel // k if numel else 0
            tries = torch.empty(rows, dtype=torch.int64) if want else None
            _alias_ops.analytic_draw_into(
                result, dist.kind, dist.num_classes, ex, _u64(seed), _u64(offset), k, unique, tries
            )
        else:
            seed = seed if isinstance(seed, torch.Tensor) else _int64_tensor(seed)
            offset = offset if isinstance(offset, torch.Tensor) else _ZERO if offset == 0 else _int64_tensor(offset)
            result, t = _OPS.analytic_sample(dist.kind, dist.num_classes, ex, seed, offset, shape, k, unique, want)
            tries = t if want else None
        if out is not None and result is not out:
            out.copy_(result)
            return out, tries
        return (result if dev.type == "cpu" else result.to(dev)), tries

    def state_dict(self) -> Dict[str, Any]:
        """The sampler's state: its class name and ``num_classes`` (nothing else defines it)."""
        return {"sampler": type(self).__name__, "num_classes": self.num_classes}

    def _check_state(self, state: Any, num_classes: Optional[int]) -> Tuple[Any, Dict[str, Any]]:
        cls = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
        if "probs" in state and "num_classes" not in state and set(state) == {"sampler", "probs"}:
            p = state["probs"]  # saved by an older pyneg: only its size matters, and its values must agree
            if not isinstance(p, torch.Tensor) or p.dtype != torch.float64 or p.dim() != 1 or p.device.type == "meta":
                raise ValueError("state_dict['probs'] must be a 1-D float64 tensor")
            n = p.numel()
            if state["sampler"] != cls:
                raise ValueError(f"state_dict is a state of {state['sampler']!r}, not of {cls}")
            if not 1 <= n <= MAX_CLASSES:
                raise ValueError(f"state_dict['probs'] must have 1 to {MAX_CLASSES} entries, got {n}")
            ref = type(self)(n).probs
            if not torch.allclose(owned_copy(p, torch.float64), ref, rtol=1e-9, atol=0):
                raise ValueError(f"state_dict['probs'] is not the distribution of {cls}({n})")
            state = {"sampler": cls, "num_classes": n}
        want = {"sampler", "num_classes"}
        missing, unknown = want - set(state), set(state) - want
        if missing or unknown:
            raise ValueError(
                f"state_dict is not a state of {cls} (saved by another class or an older pyneg?): "
                + ", ".join(
                    x
                    for x in (
                        f"missing {sorted(missing)}" if missing else "",
                        f"unexpected {sorted(map(str, unknown))}" if unknown else "",
                    )
                    if x
                )
            )
        if state["sampler"] != cls:
            raise ValueError(f"state_dict is a state of {state['sampler']!r}, not of {cls}")
        try:
            n = check_int(state["num_classes"], "state_dict['num_classes']", minimum=1, maximum=MAX_ANALYTIC_CLASSES)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if num_classes is not None and n != num_classes:
            raise ValueError(f"state_dict['num_classes'] is {n} but this {cls} has {num_classes}")
        return _AnalyticState(self._KIND, n), {}


class UniformSampler(_AnalyticSampler):
    """Draws every id of ``range(num_classes)`` with probability ``1 / num_classes``.

    No table: a draw is the high half of a 64-bit Philox number times V, so memory
    is O(1) whatever ``num_classes`` (up to 2**50; ids are int64).
    """

    _KIND = 0


class LogUniformSampler(_AnalyticSampler):
    """Zipfian sampler over ids sorted by decreasing frequency.

    ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``, the distribution of
    TensorFlow's ``log_uniform_candidate_sampler``: id 0 must be the most
    frequent class. No table: a draw inverts the CDF,
    ``floor(exp(x * log(V + 1)) - 1)`` for a 53-bit uniform ``x``, so memory is O(1)
    whatever ``num_classes`` (up to 2**50; ids are int64).
    """

    _KIND = 1

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
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from pyneg import _core, cuda
from pyneg._validation import (
    ArrayLike,
    SizeLike,
    as_float64_numpy,
    as_index_tensor,
    check_bool,
    check_device,
    check_int,
    check_seed,
    check_size,
)

__all__ = [
    "AliasSampler",
    "UnigramSampler",
    "UniformSampler",
    "LogUniformSampler",
    "CandidateSample",
    "draw_seed",
]

_NO_EXCLUDE = np.full((1, 1), -1, dtype=np.int64)


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


class CandidateSample(NamedTuple):
    """What TensorFlow's ``*_candidate_sampler`` functions return, plus ``num_tries``.

    ``true_expected_count`` and ``sampled_expected_count`` are the expected
    number of times each id appears among the sampled candidates; sampled
    softmax subtracts their logarithms from the logits (``log Q``).
    """

    sampled_candidates: torch.Tensor
    true_expected_count: torch.Tensor
    sampled_expected_count: torch.Tensor
    num_tries: int


class AliasSampler:
    """Draws class ids with probability proportional to ``weights``.

    Args:
        weights: 1-D, finite, non-negative, with a positive sum (tensor, array or
            sequence). Class ``i`` is drawn with probability
            ``weights[i] / weights.sum()``.

    Example:
        >>> import torch, pyneg
        >>> sampler = pyneg.AliasSampler(torch.tensor([1.0, 2.0, 0.0, 5.0]))
        >>> negatives = sampler.sample((2, 3), seed=0)
        >>> negatives.shape, negatives.dtype
        (torch.Size([2, 3]), torch.int64)
        >>> bool((negatives != 2).all())  # class 2 has zero weight
        True
    """

    def __init__(self, weights: ArrayLike, *, _name: str = "weights") -> None:
        w = as_float64_numpy(weights, _name)
        probs = np.empty_like(w)
        self._table = _core.AliasTable(w, _name, probs)
        self._probs = torch.from_numpy(probs)
        self._log_probs: Optional[torch.Tensor] = None
        # Per-device copies of the table (entries; cumulative masses for the CUDA
        # exclusion kernels), uploaded on first use.
        self._device_entries: Dict[Any, torch.Tensor] = {}

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        """V, the number of classes."""
        return int(self._table.num_classes)

    @property
    def num_positive(self) -> int:
        """How many classes can be drawn (positive weight at the table's resolution)."""
        return int(self._table.num_positive)

    @property
    def probs(self) -> torch.Tensor:
        """(V,) float64 probabilities of one draw (the normalised weights); read it, don't write it."""
        return self._probs

    def log_prob(self, ids: ArrayLike) -> torch.Tensor:
        """log P(one draw == id), float64, with the shape of ``ids`` (-inf for zero weight)."""
        dev = ids.device if isinstance(ids, torch.Tensor) else None
        idx = as_index_tensor(ids, "ids", self.num_classes)
        if self._log_probs is None:
            self._log_probs = self._compute_log_probs()
        out = self._log_probs[idx]
        return out if dev is None else out.to(dev)

    def _compute_log_probs(self) -> torch.Tensor:
        return torch.log(self._probs)

    # ------------------------------------------------ sampled-softmax counts
    def expected_count(
        self,
        ids: ArrayLike,
        num_sampled: int,
        *,
        num_tries: Union[None, int, torch.Tensor] = None,
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

    def log_expected_count(
        self,
        ids: ArrayLike,
        num_sampled: int,
        *,
        num_tries: Union[None, int, torch.Tensor] = None,
    ) -> torch.Tensor:
        """``log`` of :meth:`expected_count`, computed stably: the ``log Q`` of sampled softmax."""
        num_sampled = check_int(num_sampled, "num_sampled", minimum=1)
        logp = self.log_prob(ids)
        if num_tries is None:
            return logp + math.log(num_sampled)
        tries = _check_num_tries(num_tries, logp, num_sampled)
        # log(1 - (1 - p)^t) = log(-expm1(t * log1p(-p))); TensorFlow takes k·p when t == k.
        counted = torch.log(-torch.expm1(tries * torch.log1p(-torch.exp(logp))))
        return torch.where(tries == num_sampled, logp + math.log(num_sampled), counted)

    # ---------------------------------------------------------------- drawing
    def sample(
        self,
        size: SizeLike,
        *,
        exclude: Optional[ArrayLike] = None,
        unique: bool = False,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        offset: int = 0,
        device: Union[None, str, torch.device] = None,
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
            offset: position of the first draw in the seed's stream; draws of
                one call with ``offset=0`` equal those of two calls split at
                ``n`` with offsets 0 and ``n``.
            device: where the result lives (default: ``out``'s device, else CPU).
                On a CUDA device pyneg's CUDA kernels draw there, bit-identical
                to the CPU for the same seed (when ``pyneg.cuda_available()``).
            out: int64 tensor of shape ``size`` to write into (reusing it saves
                the page faults of a fresh allocation).
        """
        return self._sample(size, exclude, unique, generator, seed, offset, device, out, want_tries=False)[0]

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
        num_sampled = check_int(num_sampled, "num_sampled", minimum=1)
        if true_classes is not None:
            shape = tuple(as_index_tensor(true_classes, "true_classes", self.num_classes).shape)
            if len(shape) > 2:
                raise ValueError(f"true_classes must be (B,) or (B, num_true), got shape {shape}")
        ids, tries = self._sample((num_sampled,), None, unique, generator, seed, 0, None, None)
        num_tries = int(tries[0]) if unique else None
        sampled_count = self.expected_count(ids, num_sampled, num_tries=num_tries)
        if true_classes is None:
            true_count = torch.empty(0, dtype=torch.float64)
        else:
            true_count = self.expected_count(true_classes, num_sampled, num_tries=num_tries)
        return CandidateSample(ids, true_count, sampled_count, num_tries or num_sampled)

    def _sample(
        self,
        size: SizeLike,
        exclude: Optional[ArrayLike],
        unique: bool,
        generator: Optional[torch.Generator],
        seed: Optional[int],
        offset: int,
        device: Any,
        out: Optional[torch.Tensor],
        want_tries: bool = True,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        shape = check_size(size)
        check_bool(unique, "unique")
        offset = check_int(offset, "offset", minimum=0)
        dev = check_device(device)
        if out is not None:
            _check_out(out, shape)
            if dev is None:
                dev = out.device
            elif out.device != dev:
                raise ValueError(f"out is on {out.device} but device is {dev}")
        dev = dev or torch.device("cpu")
        seed = draw_seed(generator) if seed is None else check_seed(seed)

        # Rows: the last dimension is a row of negatives; a 1-D size with an
        # exclusion list has one row per element.
        numel = math.prod(shape)
        if len(shape) >= 2:
            rows, k = numel // shape[-1] if shape[-1] else 0, shape[-1]
        elif exclude is not None:
            rows, k = numel, 1
        else:
            rows, k = 1, numel
        lists = None
        if exclude is not None:
            ex = as_index_tensor(exclude, "exclude", self.num_classes, allow_padding=True)
            if ex.dim() == 1:
                ex = ex.unsqueeze(1)
            if ex.dim() != 2:
                raise ValueError(f"exclude must be (B,) or (B, P), got shape {tuple(ex.shape)}")
            lead = shape[0] if shape else 1
            if ex.shape[0] != lead:
                raise ValueError(
                    f"exclude has {ex.shape[0]} rows but size {shape} has {lead} in its first dimension"
                )
            if ex.shape[1] == 0:
                ex = torch.full((ex.shape[0], 1), -1, dtype=torch.int64)
            lists = ex.numpy()
        if unique and k > self.num_positive:
            raise ValueError(
                f"size asks for {k} distinct ids per row but only {self.num_positive} classes "
                "have positive weight"
            )

        if dev.type == "cuda" and cuda.cuda_available():
            # pyneg's CUDA kernels: the same draws as the CPU's, made on the device.
            result = out if out is not None else torch.empty(shape, dtype=torch.int64, device=dev)
            tries = torch.empty(rows, dtype=torch.int64) if unique and want_tries else None
            if numel:
                tries = cuda.sample_into(self._table, self._device_entries, result, rows, k, lists, unique,
                                         seed, offset, unique and want_tries)
            return result, tries

        on_cpu = dev.type == "cpu"
        if on_cpu and out is not None:
            result = out
        else:
            result = torch.empty(shape, dtype=torch.int64)
        tries = torch.empty(rows, dtype=torch.int64) if unique and want_tries else None
        if numel == 0:
            pass
        elif not on_cpu and lists is None and not unique:
            # pyneg._cuda not built: draw with torch ops on the device's table copy.
            drawn = self._sample_torch_ops(shape, seed, dev)
            if out is not None:
                out.copy_(drawn)
                return out, None
            return drawn, None
        else:
            flat = result.view(-1).numpy()
            threads = torch.get_num_threads()
            if unique:
                self._table.sample_unique(
                    seed, offset, _NO_EXCLUDE if lists is None else lists, k, flat,
                    None if tries is None else tries.numpy(), threads,
                )
            elif lists is not None:
                self._table.sample_excluding(seed, offset, lists, k, flat, threads)
            else:
                self._table.sample(seed, offset, flat, threads)
        if not on_cpu:
            if out is not None:
                out.copy_(result)
                return out, tries
            return result.to(dev), tries
        return result, tries

    def _sample_torch_ops(self, shape: Tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
        """Alias draws with plain torch ops on ``device`` (the fallback when pyneg._cuda is not built).

        Uses the same table as the C++ kernels but torch's generator for the
        device, so its samples follow the same distribution without being
        bit-identical to the CPU ones.
        """
        entries, _ = cuda.table_tensors(self._table, self._device_entries, device)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed % (2**63))
        bucket = torch.randint(0, self.num_classes, shape, generator=gen, device=device)
        coin = torch.randint(0, 2**32, shape, generator=gen, device=device)
        word = entries[bucket]
        keep = coin < (word & 0xFFFFFFFF)
        return torch.where(keep, bucket, word >> 32)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The sampler's state: its probabilities (the table is a pure function of them)."""
        return {"probs": self._probs.clone()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`; the sampler then draws exactly as the saved one."""
        if not isinstance(state_dict, dict) or "probs" not in state_dict:
            raise ValueError("state_dict must be a dict with a 'probs' entry")
        probs = as_float64_numpy(state_dict["probs"], "state_dict['probs']").copy()
        self._table = _core.AliasTable.from_probs(probs, "state_dict['probs']")
        self._probs = torch.from_numpy(probs)
        self._log_probs = None
        self._device_entries = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_table", "_device_entries", "_log_probs")}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._table = _core.AliasTable.from_probs(self._probs.numpy(), "probs")
        self._log_probs = None
        self._device_entries = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


def _check_num_tries(num_tries: Any, logp: torch.Tensor, num_sampled: int) -> torch.Tensor:
    """``num_tries`` as float64 on logp's device, shaped to broadcast over its trailing dimensions."""
    if isinstance(num_tries, (bool, np.bool_)) or isinstance(num_tries, (str, bytes)):
        raise TypeError(f"num_tries must be an int or an integer tensor, got {type(num_tries).__name__}")
    if isinstance(num_tries, torch.Tensor):
        t = num_tries.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(num_tries))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"num_tries must be an int or an integer tensor: {exc}") from None
    if t.layout != torch.strided or t.device.type == "meta":
        raise TypeError("num_tries must be a dense tensor with data")
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype.is_signed
                                                       or t.dtype == torch.uint8):
        raise TypeError(f"num_tries must hold integers, got {t.dtype}")
    t = t.to(device=logp.device, dtype=torch.float64)
    if t.numel():
        if not bool(torch.isfinite(t).all()) or bool((t != t.round()).any()):
            raise ValueError("num_tries must hold whole numbers")
        if bool((t < num_sampled).any()):
            raise ValueError(f"num_tries must be >= num_sampled ({num_sampled}): a unique draw of k ids "
                             f"takes at least k tries, got {float(t.min()):g}")
    if t.dim() > logp.dim() or tuple(t.shape) != tuple(logp.shape[:t.dim()]):
        raise ValueError(f"num_tries of shape {tuple(t.shape)} does not match the leading dimensions "
                         f"of ids {tuple(logp.shape)}")
    while t.dim() and t.dim() < logp.dim():
        t = t.unsqueeze(-1)
    return t


def _check_out(out: Any, shape: Tuple[int, ...]) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype != torch.int64:
        raise TypeError(f"out must be int64, got {out.dtype}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but size is {shape}")
    if not out.is_contiguous():
        raise ValueError("out must be contiguous")
    if out.requires_grad:
        raise ValueError("out must not require grad")


class UnigramSampler(AliasSampler):
    """Draws ids with probability proportional to ``counts ** power`` (word2vec uses 0.75).

    Args:
        counts: 1-D non-negative frequencies (e.g. word or item counts).
        power: exponent applied to the counts; 0.75 flattens the distribution
            so rare items are drawn more often than their frequency alone gives.
            With ``power == 0`` every class, zero counts included, is equally likely.
    """

    def __init__(self, counts: ArrayLike, power: float = 0.75) -> None:
        if isinstance(power, bool) or not isinstance(power, (int, float)):
            raise TypeError(f"power must be a float, got {type(power).__name__}")
        if not math.isfinite(power) or power < 0:
            raise ValueError(f"power must be finite and >= 0, got {power}")
        c = as_float64_numpy(counts, "counts")
        if not np.isfinite(c).all() or (c < 0).any():
            raise ValueError("counts must be finite and non-negative")
        self.power = float(power)
        super().__init__(np.power(c, self.power), _name="counts")


class UniformSampler(AliasSampler):
    """Draws every id of ``range(num_classes)`` with probability ``1 / num_classes``."""

    def __init__(self, num_classes: int) -> None:
        n = check_int(num_classes, "num_classes", minimum=1)
        super().__init__(np.ones(n), _name="num_classes")


class LogUniformSampler(AliasSampler):
    """Zipfian sampler over ids sorted by decreasing frequency.

    ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``, the distribution of
    TensorFlow's ``log_uniform_candidate_sampler``: id 0 must be the most
    frequent class.
    """

    def __init__(self, num_classes: int) -> None:
        n = check_int(num_classes, "num_classes", minimum=1)
        k = np.arange(n, dtype=np.float64)
        super().__init__(np.log1p(1.0 / (k + 1.0)), _name="num_classes")

    def _compute_log_probs(self) -> torch.Tensor:
        k = torch.arange(self.num_classes, dtype=torch.float64)
        return torch.log(torch.log1p(1.0 / (k + 1.0))) - math.log(math.log(self.num_classes + 1.0))

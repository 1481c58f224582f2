"""Samplers in table files (:mod:`pyneg._tablefile`): which arrays each sampler class's
table consists of, and how a sampler is rebuilt around mapped arrays without copying them.

This is the only module that knows the samplers' table layout; the file format
itself is generic. The compact layout (csrc/cpu/alias_table.h): the table is the
int64 ``entries`` array ((alias << 32) | threshold, 8 bytes per class) and the
scalars ``num_classes`` and ``num_positive``; the class masses are derived from
the entries. A file stores the masses too (``mass``, 8 more bytes per class), so
that the processes mapping it share them instead of each deriving a private copy
the first time it draws with exclusions or without replacement, or reads
``probs``/``log_prob``: 16 bytes per class in all. A sparse sampler (``ids=``)
stores one more array, ``ids`` (the sorted catalogue id of every slot), and
``num_classes`` is then the catalogue's V: 24 bytes per stored id.

Samplers without a table of their own save their parameters only:
``UniformSampler`` and ``LogUniformSampler`` (their ``num_classes``), rebuilt by
their constructor at load. ``UnigramSampler`` adds ``power``. A
``LearnedUnigramSampler`` saves a snapshot of its current table, which loads as
a (frozen) ``AliasSampler`` drawing exactly as the snapshot.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, cast

import numpy as np
import torch

from pyneg import _core, _tablefile
from pyneg._validation import MAX_ANALYTIC_CLASSES, MAX_CLASSES, check_bool
from pyneg.samplers import (
    AliasSampler,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
    _Distribution,
)

_TABLE_ARRAYS = {"entries": np.int64, "mass": np.int64}
_SPARSE_ARRAYS = {**_TABLE_ARRAYS, "ids": np.int64}
_ANALYTIC: Dict[str, Type[AliasSampler]] = {"UniformSampler": UniformSampler, "LogUniformSampler": LogUniformSampler}
_TABLED: Dict[str, Type[AliasSampler]] = {"AliasSampler": AliasSampler, "UnigramSampler": UnigramSampler}

S = TypeVar("S", bound=AliasSampler)


def _file_class(sampler: AliasSampler) -> str:
    name = type(sampler).__name__
    if name in _ANALYTIC or name in _TABLED:
        return name
    if name == "LearnedUnigramSampler":
        return "AliasSampler"  # a snapshot of its current table
    raise TypeError(f"{name} cannot be saved to a table file")


def save(sampler: AliasSampler, path: os.PathLike[str] | str) -> None:
    """Writes ``sampler`` to ``path`` (see :meth:`pyneg.AliasSampler.save`)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    name = _file_class(sampler)
    if os.path.isdir(path):
        raise ValueError(f"path {os.fspath(path)!r} is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"path {os.fspath(path)!r}: its folder {folder!r} does not exist")
    d = sampler._dist  # one consistent state
    params: Dict[str, Any] = {"num_classes": d.num_classes}
    arrays: Dict[str, np.ndarray] = {}
    if name not in _ANALYTIC:
        params["num_positive"] = d.num_positive
        arrays = {"entries": np.asarray(d.entries_np), "mass": np.asarray(d.masses())}
        if d.ids_np is not None:
            arrays["ids"] = np.asarray(d.ids_np)
    if name == "UnigramSampler":
        assert isinstance(sampler, UnigramSampler)
        params["power"] = float(sampler.power)
    _tablefile.write_table_file(path, name, params, arrays)


def load(cls: Type[S], path: os.PathLike[str] | str, *, mmap: bool = True, verify: bool = True) -> S:
    """Reads a sampler of class ``cls`` (or a subclass) from ``path`` (see :meth:`pyneg.AliasSampler.load`)."""
    mmap = check_bool(mmap, "mmap")
    verify = check_bool(verify, "verify")
    tf = _tablefile.open_table_file(path, mmap_mode=mmap, verify=verify)
    return _rebuild(cls, tf, check_ids=verify)


def _rebuild(cls: Type[S], tf: _tablefile.TableFile, *, check_ids: bool = True) -> S:
    path = tf.fingerprint.path
    known = _ANALYTIC.get(tf.sampler) or _TABLED.get(tf.sampler)
    if known is None:
        raise ValueError(f"path {path!r} holds a {tf.sampler!r}, which this pyneg cannot load")
    if not issubclass(known, cls):
        raise ValueError(f"path {path!r} holds a {tf.sampler}, not a {cls.__name__}")
    params = tf.params
    try:
        n = int(params["num_classes"])
        if tf.sampler in _ANALYTIC:
            made: Any = known
            return cast(S, made(n))
        num_positive = int(params["num_positive"])
        power = float(params["power"]) if tf.sampler == "UnigramSampler" else None
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"path {path!r}: the header's params of {tf.sampler} are malformed") from None
    arrays = tf.arrays
    sparse = "ids" in arrays
    kinds = _SPARSE_ARRAYS if sparse else _TABLE_ARRAYS
    slots = int(arrays["entries"].shape[0]) if sparse and "entries" in arrays and arrays["entries"].ndim == 1 else n
    if set(arrays) != set(kinds) or any(arrays[k].dtype != t or arrays[k].shape != (slots,) for k, t in kinds.items()):
        raise ValueError(f"path {path!r}: its arrays are not the table of a {tf.sampler} of {n} classes")
    if (
        not 1 <= slots <= MAX_CLASSES
        or not 1 <= num_positive <= slots
        or not slots <= n <= (MAX_ANALYTIC_CLASSES if sparse else MAX_CLASSES)
    ):
        raise ValueError(f"path {path!r}: num_classes {n} or num_positive {num_positive} out of range")
    if sparse and check_ids:  # (verify=False trusts the file: the gather still keeps draws in [0, V))
        try:
            _core.sparse_check_ids(arrays["ids"], n, "ids")
        except ValueError as exc:
            raise ValueError(f"path {path!r}: {exc}") from None
    sampler: Any = object.__new__(known)
    if power is not None:
        sampler._power = power
    dist = _FileDistribution(arrays["entries"], arrays["mass"], num_positive)
    if sparse:
        with warnings.catch_warnings():  # read-only: pyneg's kernels only read it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            dist.make_sparse(arrays["ids"], n)
    sampler._dist = dist
    # Mapped while the sampler still holds this state (a loaded state_dict replaces it).
    sampler._mapped_from = (tf.fingerprint, dist) if tf.mapped else None
    sampler._mapping = tf._mmap  # kept alive with the sampler
    return cast(S, sampler)


class _FileDistribution(_Distribution):
    """A ``_Distribution`` over a table file's arrays (read-only when mapped), never copied:
    the masses are the file's too, so nothing is derived per process."""

    __slots__ = ("mass_tensor",)

    def __init__(self, entries: np.ndarray, mass: np.ndarray, num_positive: int) -> None:
        with warnings.catch_warnings():  # read-only arrays: pyneg's kernels only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            super().__init__(entries, num_positive)
        self.mass_np = mass
        self.mass_tensor = _tablefile.readonly_tensor(mass)

    def masses(self) -> np.ndarray:
        return self.mass_np  # type: ignore[return-value]  # set in __init__, never None

    @property
    def mass(self) -> torch.Tensor:
        return self.mass_tensor


def mapped_fingerprint(sampler: AliasSampler) -> Optional[_tablefile.Fingerprint]:
    """The file a sampler's table is mapped from, or None (never mapped, or its state replaced since)."""
    mapped = sampler.__dict__.get("_mapped_from")
    if not isinstance(mapped, tuple) or mapped[1] is not sampler.__dict__.get("_dist"):
        return None
    fp = mapped[0]
    return fp if isinstance(fp, _tablefile.Fingerprint) else None


def table_tensors(sampler: AliasSampler) -> List[torch.Tensor]:
    """The tensors a table sampler holds now (entries, a sparse one's ids, and the masses once
    derived or mapped)."""
    d = sampler._dist
    if not isinstance(d, _Distribution):
        return []
    return [d.entries] + ([d.ids] if d.ids is not None else []) + ([d.mass] if d.mass_np is not None else [])


def remap(fingerprint: Tuple[str, int, int, int, int], cls_name: str) -> AliasSampler:
    """Unpickles a mapped sampler: maps the same file again (refused if it changed since)."""
    fp = _tablefile.Fingerprint(*fingerprint)
    # The parent verified the data's checksums; the header checksum, size, inode and
    # modification time identify the same file, so a worker maps it without a full read.
    tf = _tablefile.open_table_file(fp.path, mmap_mode=True, verify=False, expect=fp)
    cls = _TABLED.get(cls_name, AliasSampler)
    return _rebuild(cls, tf, check_ids=False)


def reduce_mapped(sampler: AliasSampler) -> Optional[Tuple[Any, ...]]:
    """``__reduce__`` of a mapped sampler (its file, not its table), or None when not mapped."""
    fp = mapped_fingerprint(sampler)
    if fp is None:
        return None
    return (remap, (fp.as_tuple(), type(sampler).__name__))


__all__ = ["save", "load", "remap", "reduce_mapped", "mapped_fingerprint", "table_tensors"]

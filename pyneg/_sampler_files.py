"""Samplers in table files (:mod:`pyneg._tablefile`): which arrays each sampler class's
table consists of, and how a sampler is rebuilt around mapped arrays without copying them.

This is the only module that knows the samplers' table layout; the file format
itself is generic. Layout of main's ``_Distribution``: ``probs`` and ``log_probs``
(float64), the alias ``entries`` ((alias << 32) | threshold) and the integer
``mass`` of every class (int64 views of uint64), 32 bytes per class.

Samplers without a table of their own save their parameters only:
``UniformSampler`` and ``LogUniformSampler`` (their ``num_classes``), rebuilt by
their constructor at load. ``UnigramSampler`` adds ``power``. A
``LearnedUnigramSampler`` saves a snapshot of its current table, which loads as
a (frozen) ``AliasSampler`` drawing exactly as the snapshot.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, cast

import numpy as np

from pyneg import _tablefile
from pyneg._validation import MAX_CLASSES, check_bool
from pyneg.samplers import (
    AliasSampler,
    LogUniformSampler,
    UniformSampler,
    UnigramSampler,
    _Distribution,
)

_TABLE_ARRAYS = ("probs", "log_probs", "entries", "mass")
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
    d = sampler._dist  # one consistent state
    params: Dict[str, Any] = {"num_classes": d.num_classes}
    arrays: Dict[str, np.ndarray] = {}
    if name not in _ANALYTIC:
        params["num_positive"] = d.num_positive
        arrays = {
            "probs": d.probs.numpy(),
            "log_probs": d.log_probs.numpy(),
            "entries": np.asarray(d.entries_np),
            "mass": np.asarray(d.mass_np),
        }
    if name == "UnigramSampler":
        assert isinstance(sampler, UnigramSampler)
        params["power"] = float(sampler.power)
    _tablefile.write_table_file(path, name, params, arrays)


def load(cls: Type[S], path: os.PathLike[str] | str, *, mmap: bool = True, verify: bool = True) -> S:
    """Reads a sampler of class ``cls`` (or a subclass) from ``path`` (see :meth:`pyneg.AliasSampler.load`)."""
    mmap = check_bool(mmap, "mmap")
    verify = check_bool(verify, "verify")
    tf = _tablefile.open_table_file(path, mmap_mode=mmap, verify=verify)
    return _rebuild(cls, tf)


def _rebuild(cls: Type[S], tf: _tablefile.TableFile) -> S:
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
    want = {"probs": np.float64, "log_probs": np.float64, "entries": np.int64, "mass": np.int64}
    if set(arrays) != set(want) or any(arrays[k].dtype != t or arrays[k].shape != (n,) for k, t in want.items()):
        raise ValueError(f"path {path!r}: its arrays are not the table of a {tf.sampler} of {n} classes")
    if not 1 <= n <= MAX_CLASSES or not 1 <= num_positive <= n:
        raise ValueError(f"path {path!r}: num_classes {n} or num_positive {num_positive} out of range")
    sampler: Any = object.__new__(known)
    if power is not None:
        sampler._power = power
    sampler._dist = _mapped_distribution(arrays, n, num_positive)
    sampler._mapped_from = tf.fingerprint if tf.mapped else None
    sampler._mapping = tf._mmap  # kept alive with the sampler
    return cast(S, sampler)


class _FileTable:
    """What ``_Distribution.table`` offers, over arrays of a table file."""

    def __init__(self, entries: np.ndarray, mass: np.ndarray, n: int, num_positive: int) -> None:
        self._entries, self._mass = entries, mass
        self.num_classes, self.num_positive = n, num_positive

    def _storage(self) -> Tuple[np.ndarray, np.ndarray]:
        return self._entries, self._mass


def _mapped_distribution(arrays: Dict[str, np.ndarray], n: int, num_positive: int) -> _Distribution:
    """A ``_Distribution`` whose tensors are the file's arrays themselves (no copy)."""
    d = object.__new__(_Distribution)
    d.probs = _tablefile.readonly_tensor(arrays["probs"])
    d.table = _FileTable(arrays["entries"], arrays["mass"], n, num_positive)
    d.entries_np, d.mass_np = arrays["entries"], arrays["mass"]
    d.entries = _tablefile.readonly_tensor(arrays["entries"])
    d.mass = _tablefile.readonly_tensor(arrays["mass"])
    d.num_classes, d.num_positive = n, num_positive
    d.log_probs = _tablefile.readonly_tensor(arrays["log_probs"])
    d.device_tables = {}
    return d


def mapped_fingerprint(sampler: AliasSampler) -> Optional[_tablefile.Fingerprint]:
    """The file a sampler's table is mapped from, or None."""
    fp = sampler.__dict__.get("_mapped_from")
    return fp if isinstance(fp, _tablefile.Fingerprint) else None


def remap(fingerprint: Tuple[str, int, int, int, int], cls_name: str) -> AliasSampler:
    """Unpickles a mapped sampler: maps the same file again (refused if it changed since)."""
    fp = _tablefile.Fingerprint(*fingerprint)
    # The parent verified the data's checksums; the header checksum, size, inode and
    # modification time identify the same file, so a worker maps it without a full read.
    tf = _tablefile.open_table_file(fp.path, mmap_mode=True, verify=False, expect=fp)
    cls = _TABLED.get(cls_name, AliasSampler)
    return _rebuild(cls, tf)


def reduce_mapped(sampler: AliasSampler) -> Optional[Tuple[Any, ...]]:
    """``__reduce__`` of a mapped sampler (its file, not its table), or None when not mapped."""
    fp = mapped_fingerprint(sampler)
    if fp is None:
        return None
    return (remap, (fp.as_tuple(), type(sampler).__name__))


def nbytes_private(sampler: AliasSampler) -> int:
    """Bytes of the sampler's table tensors that it owns (0 for a mapped sampler)."""
    if mapped_fingerprint(sampler) is not None:
        return 0
    d = sampler._dist
    return sum(int(t.numel()) * t.element_size() for t in (d.probs, d.log_probs, d.entries, d.mass))


__all__ = ["save", "load", "remap", "reduce_mapped", "mapped_fingerprint"]

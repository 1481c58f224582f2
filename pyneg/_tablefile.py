"""pyneg's table files: a versioned container of named, typed, aligned arrays.

Layout (little-endian)::

    offset 0   prefix, 64 bytes:
               magic b"PYNEGTBL" | format version (u32) | header length (u32)
               | file size (u64) | header checksum (u64) | zeros
    offset 64  header: UTF-8 JSON, then zeros up to a multiple of 64
               {"sampler": class name, "params": {...},
                "arrays": [{"name", "dtype", "shape", "offset", "nbytes", "checksum"}, ...]}
    then       every array's bytes at its offset (a multiple of 64), C order

Checksums are ``pyneg._core.checksum64`` (blocks of 1 MiB hashed in parallel
with an xxHash64-style function, folded in order): of the header's JSON, and of
every array's bytes. :func:`open_table_file` refuses, before handing out any
array, a file that is not a table file, has another format version, whose size
is not the one its header records (truncated or resized), whose header or
arrays do not match their checksums (a flipped byte), or whose arrays lie
outside the file or overlap.

Files are written to a temporary file in the same folder and renamed over the
target (:func:`write_table_file`), so a process that mapped the old file keeps
reading the old, complete file: a mapped file is never truncated by pyneg.
(Truncating a mapped file in place by other means makes its readers fault with
SIGBUS, as for any memory-mapped file.) Writing into a mapped file in place is
not prevented either; the draw kernels never use a table's contents to address
memory beyond the table, so such a writer can change the ids drawn, never make
a draw read out of bounds or return an id outside ``[0, V)``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from pyneg import _core

MAGIC = b"PYNEGTBL"
FORMAT_VERSION = 1
ALIGN = 64
_PREFIX = struct.Struct("<8sIIQQ")  # magic, version, header length, file size, header checksum
_PREFIX_SIZE = 64
_MAX_HEADER = 1 << 24
# The dtypes a table file may hold (little-endian, fixed size).
_DTYPES = {"float64": "<f8", "float32": "<f4", "int64": "<i8", "int32": "<i4", "uint64": "<u8", "uint32": "<u4"}


def checksum(data: Any) -> int:
    """``checksum64`` of a bytes-like object (a mapped file's memoryview is read, never copied)."""
    view = memoryview(data).cast("B")
    return int(_core.checksum64(view, max(1, torch.get_num_threads())))


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _header_bytes(sampler: str, params: Mapping[str, Any], entries: List[Dict[str, Any]]) -> bytes:
    return json.dumps({"sampler": sampler, "params": dict(params), "arrays": entries}, sort_keys=True).encode()


def write_table_file(
    path: os.PathLike[str] | str, sampler: str, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> None:
    """Writes ``arrays`` (name -> C-contiguous array of a supported dtype) with the sampler's
    class name and JSON ``params``; atomically (a temporary file renamed over ``path``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    entries: List[Dict[str, Any]] = []
    prepared: List[np.ndarray] = []
    for name, a in arrays.items():
        kind = np.dtype(a.dtype).name
        if kind not in _DTYPES:
            raise TypeError(f"array {name!r} has dtype {a.dtype}, which a table file cannot hold")
        b = np.ascontiguousarray(a, dtype=np.dtype(_DTYPES[kind]))
        prepared.append(b)
        entries.append({"name": name, "dtype": kind, "shape": list(b.shape), "nbytes": int(b.nbytes)})
    # Offsets depend on the header's length, which depends on the offsets' digits:
    # lay out with a generous header first, then fix the header's length.
    header_len = _aligned(len(_header_bytes(sampler, params, entries)) + 64 * (len(entries) + 1) + 64)
    offset = _PREFIX_SIZE + header_len
    for e, b in zip(entries, prepared):
        e["offset"] = offset
        e["checksum"] = checksum(b) if b.nbytes else checksum(b"")
        offset = _aligned(offset + b.nbytes)
    header = _header_bytes(sampler, params, entries)
    if len(header) > header_len:  # cannot happen: the estimate leaves room for every offset's digits
        raise AssertionError("table file header outgrew its estimate")
    file_size = offset
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), file_size, checksum(header))
    fd, tmp = tempfile.mkstemp(prefix=".pyneg-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(prefix.ljust(_PREFIX_SIZE, b"\0"))
            f.write(header.ljust(header_len, b"\0"))
            for e, b in zip(entries, prepared):
                f.seek(e["offset"])
                f.write(b.data.cast("B") if b.nbytes else b"")
            f.truncate(file_size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class Fingerprint:
    """What identifies a mapped file: a pickled mapped sampler re-maps only the same file."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    header_checksum: int

    def as_tuple(self) -> Tuple[str, int, int, int, int]:
        return (self.path, self.size, self.mtime_ns, self.inode, self.header_checksum)


@dataclass
class TableFile:
    """An opened table file: its sampler name, params and arrays (read-only views of the mapping
    when mapped, owned copies otherwise)."""

    sampler: str
    params: Dict[str, Any]
    arrays: Dict[str, np.ndarray]
    fingerprint: Fingerprint
    mapped: bool
    _mmap: Optional[mmap.mmap] = field(default=None, repr=False)


def _refuse(path: str, why: str) -> ValueError:
    return ValueError(f"path {path!r} is not a valid pyneg table file: {why}")


def open_table_file(
    path: os.PathLike[str] | str, *, mmap_mode: bool = True, verify: bool = True, expect: Optional[Fingerprint] = None
) -> TableFile:
    """Opens and checks a table file; see the module's docstring for what is refused.

    ``mmap_mode``: map the file read-only (shared by every process that maps it) instead of
    reading it into memory. ``verify``: check the arrays' checksums and that the padding is
    zeros (a full read of the file).
    ``expect``: the fingerprint of the file a pickled sampler mapped; another file is refused.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    spath = os.path.abspath(os.fsdecode(os.fspath(path)))
    try:
        f = open(spath, "rb")
    except FileNotFoundError:
        raise ValueError(f"path {spath!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"path {spath!r} is a folder, not a table file") from None
    with f:
        st = os.fstat(f.fileno())
        size = st.st_size
        prefix = f.read(_PREFIX_SIZE)
        if len(prefix) < _PREFIX_SIZE or prefix[:8] != MAGIC:
            raise _refuse(spath, "it does not start with pyneg's magic bytes (not a table file, or truncated)")
        _, version, header_len, file_size, header_sum = _PREFIX.unpack_from(prefix)
        if version != FORMAT_VERSION:
            raise _refuse(
                spath, f"it has format version {version}, this pyneg reads version {FORMAT_VERSION} (save it again)"
            )
        if file_size != size:
            raise _refuse(spath, f"its header records {file_size} bytes but the file has {size} (truncated or resized)")
        if header_len > _MAX_HEADER or _PREFIX_SIZE + header_len > size:
            raise _refuse(spath, f"its header length {header_len} does not fit the file")
        header = f.read(header_len)
        if checksum(header) != header_sum:
            raise _refuse(spath, "its header does not match its checksum (the file is corrupted)")
        try:
            meta = json.loads(header.decode())
            sampler, params, entries = meta["sampler"], meta["params"], meta["arrays"]
            if not isinstance(sampler, str) or not isinstance(params, dict) or not isinstance(entries, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise _refuse(spath, "its header is malformed") from None
        fp = Fingerprint(spath, size, st.st_mtime_ns, st.st_ino, header_sum)
        if expect is not None and (fp.size, fp.mtime_ns, fp.inode, fp.header_checksum) != (
            expect.size,
            expect.mtime_ns,
            expect.inode,
            expect.header_checksum,
        ):
            raise ValueError(
                f"path {spath!r} changed on disk since the sampler was mapped from it (another file, size or "
                "modification time): load it again"
            )
        layout = _check_layout(spath, entries, _PREFIX_SIZE + header_len, size)
        buf: Any
        mm: Optional[mmap.mmap] = None
        if mmap_mode and size > 0:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            buf = mm
        else:
            f.seek(0)
            buf = bytearray(size)
            if f.readinto(buf) != size:
                raise _refuse(spath, "it was truncated while being read")
    if verify:  # every byte is covered: the padding between the parts must be zeros
        if any(prefix[_PREFIX.size :]):
            raise _refuse(spath, "its prefix's reserved bytes are not zeros (the file is corrupted)")
        start = _PREFIX_SIZE + header_len
        for offset, nbytes in sorted((e[3], e[4]) for e in layout) + [(size, 0)]:
            if offset > start and any(memoryview(buf)[start:offset]):
                raise _refuse(spath, "its padding bytes are not zeros (the file is corrupted)")
            start = max(start, offset + nbytes)
    arrays: Dict[str, np.ndarray] = {}
    for name, dtype, shape, offset, nbytes, want in layout:
        a = np.frombuffer(buf, dtype=np.dtype(_DTYPES[dtype]), count=int(np.prod(shape)), offset=offset).reshape(shape)
        if verify and checksum(a if nbytes else b"") != want:
            raise _refuse(spath, f"array {name!r} does not match its checksum (the file is corrupted)")
        arrays[name] = a  # mapped: read-only views; else views of the bytearray read above, owned
    return TableFile(sampler, params, arrays, fp, mm is not None, mm)


def _check_layout(
    path: str, entries: List[Any], data_start: int, size: int
) -> List[Tuple[str, str, Tuple[int, ...], int, int, int]]:
    out = []
    spans = []
    names = set()
    for e in entries:
        try:
            name, dtype, shape = e["name"], e["dtype"], tuple(int(d) for d in e["shape"])
            offset, nbytes, want = int(e["offset"]), int(e["nbytes"]), int(e["checksum"])
        except (KeyError, TypeError, ValueError):
            raise _refuse(path, "its header describes an array malformed") from None
        if not isinstance(name, str) or name in names or dtype not in _DTYPES or any(d < 0 for d in shape):
            raise _refuse(path, f"its header describes array {name!r} with an invalid name, dtype or shape")
        names.add(name)
        if nbytes != int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize:
            raise _refuse(path, f"array {name!r}'s byte count does not match its shape")
        if offset % ALIGN or offset < data_start or offset + nbytes > size:
            raise _refuse(path, f"array {name!r} lies outside the file or is misaligned")
        spans.append((offset, offset + nbytes))
        out.append((name, dtype, shape, offset, nbytes, want))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise _refuse(path, "its arrays overlap")
    return out


def readonly_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing a read-only array's memory (torch warns that it cannot protect it: pyneg
    hands such tensors only to kernels that read them, and never out)."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)

"""Samplers saved to table files and mapped read-only: round trips, DataLoader workers under
fork, spawn and forkserver, refused files, and a file written under its readers."""

from __future__ import annotations

import mmap
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import pyneg
from pyneg import _tablefile

WEIGHTS = torch.tensor([5.0, 1.0, 0.0, 3.0, 1.0, 0.5, 8.0, 2.0, 0.0, 4.0, 1.5, 0.25])
V = WEIGHTS.numel()


def _samplers():
    learned = pyneg.LearnedUnigramSampler(V)
    learned.update(torch.tensor([1, 1, 3, 5, 5, 5]))
    learned.rebuild()
    return {
        "alias": pyneg.AliasSampler(WEIGHTS),
        "unigram": pyneg.UnigramSampler(WEIGHTS * 10, power=0.5),
        "uniform": pyneg.UniformSampler(V),
        "loguniform": pyneg.LogUniformSampler(V),
        "learned": learned,
    }


def _draws(s: pyneg.AliasSampler):
    ex = torch.tensor([[0, 6, -1], [3, -1, -1], [1, 2, 9], [6, 0, 3]])
    return (
        s.sample((4, 7), seed=3),
        s.sample((4, 5), seed=4, exclude=ex),
        s.sample((4, 5), seed=5, unique=True, exclude=ex),
        s.log_prob(torch.arange(V)),
    )


def _is_mapped(t: np.ndarray) -> bool:
    base = t
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else getattr(base, "obj", None)
    return isinstance(base, mmap.mmap)


@pytest.mark.parametrize("name", list(_samplers()))
@pytest.mark.parametrize("use_mmap", [True, False])
def test_round_trip_draws_as_the_saved_sampler(tmp_path, name, use_mmap):
    s = _samplers()[name]
    path = tmp_path / "table.pyneg"
    s.save(path)
    loaded = pyneg.AliasSampler.load(path, mmap=use_mmap)
    want = "AliasSampler" if name == "learned" else type(s).__name__  # the learned sampler: a snapshot
    assert type(loaded).__name__ == want
    assert loaded.num_classes == V and loaded.num_positive == s.num_positive
    assert torch.equal(loaded.probs, s.probs)
    for a, b in zip(_draws(loaded), _draws(s)):
        assert torch.equal(a, b)
    if name == "unigram":
        assert loaded.power == 0.5
    tabled = name in ("alias", "unigram", "learned")
    if tabled:  # the entries and the masses are the file's, never copied when mapped
        assert _is_mapped(loaded._dist.entries_np) == use_mmap
        assert _is_mapped(loaded._dist.masses()) == use_mmap
    if not tabled:  # parameters only: no array in the file
        assert os.path.getsize(path) < 4096


def test_mapped_sampler_pickles_its_file_not_its_table(tmp_path):
    big = pyneg.AliasSampler(torch.rand(50_000, generator=torch.Generator().manual_seed(0)))
    big.save(tmp_path / "big.pyneg")
    mapped = pyneg.AliasSampler.load(tmp_path / "big.pyneg")
    blob = pickle.dumps(mapped)
    assert len(blob) < 2000 < len(pickle.dumps(big))
    again = pickle.loads(blob)
    assert _is_mapped(again._dist.entries_np)
    assert torch.equal(again.sample(100, seed=1), big.sample(100, seed=1))
    # a loaded state replaces the mapping: the sampler then pickles its state again
    again.load_state_dict(big.state_dict())
    assert len(pickle.dumps(again)) > 100_000


def test_unpickling_refuses_a_file_changed_since_it_was_mapped(tmp_path):
    path = tmp_path / "t.pyneg"
    pyneg.AliasSampler(WEIGHTS).save(path)
    blob = pickle.dumps(pyneg.AliasSampler.load(path))
    pyneg.AliasSampler(WEIGHTS + 1).save(path)
    with pytest.raises(ValueError, match="changed on disk"):
        pickle.loads(blob)


def test_saving_over_a_mapped_file_leaves_its_readers_the_old_table(tmp_path):
    path = tmp_path / "t.pyneg"
    old = pyneg.AliasSampler(WEIGHTS)
    old.save(path)
    mapped = pyneg.AliasSampler.load(path)
    new = pyneg.AliasSampler(WEIGHTS.flip(0))
    new.save(path)
    assert torch.equal(mapped.sample(500, seed=2), old.sample(500, seed=2))
    assert torch.equal(pyneg.AliasSampler.load(path).sample(500, seed=2), new.sample(500, seed=2))


# --------------------------------------------------------------- DataLoader workers
class _Rows(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> int:
        return i


class _Draw:
    """collate_fn: the batch's draws with seeds fixed by its indices, and whether the worker's
    sampler is mapped (it must have been re-mapped, not copied)."""

    def __init__(self, sampler: pyneg.AliasSampler) -> None:
        self.sampler = sampler

    def __call__(self, batch):
        draws = torch.stack([self.sampler.sample(20, seed=1000 + i, exclude=torch.tensor([i] * 20)) for i in batch])
        return draws, _is_mapped(self.sampler._dist.entries_np)


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_draw_as_the_parent(tmp_path, context):
    path = tmp_path / "t.pyneg"
    pyneg.UnigramSampler(WEIGHTS * 3).save(path)
    mapped = pyneg.AliasSampler.load(path)
    loader = DataLoader(_Rows(), batch_size=3, num_workers=2, collate_fn=_Draw(mapped), multiprocessing_context=context)
    batches = list(loader)
    ref = _Draw(mapped)
    for (draws, was_mapped), idx in zip(batches, ([0, 1, 2], [3, 4, 5])):
        assert was_mapped
        assert torch.equal(draws, ref(idx)[0])


# ------------------------------------------------------------------ refused files
def _saved(tmp_path) -> str:
    path = str(tmp_path / "t.pyneg")
    pyneg.AliasSampler(WEIGHTS).save(path)
    return path


def _array_offsets(path: str):
    tf = _tablefile.open_table_file(path, mmap_mode=False)
    import json

    with open(path, "rb") as f:
        prefix = f.read(64)
        header_len = struct.unpack_from("<8sIIQQ", prefix)[2]
        meta = json.loads(f.read(header_len))
    assert set(tf.arrays) == {a["name"] for a in meta["arrays"]}
    return {a["name"]: (a["offset"], a["nbytes"]) for a in meta["arrays"]}


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("use_mmap", [True, False])
def test_damaged_files_are_refused_before_any_draw(tmp_path, use_mmap):
    def refused(path: str, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            pyneg.AliasSampler.load(path, mmap=use_mmap)

    path = _saved(tmp_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:  # truncated
        f.truncate(size - 8)
    refused(path, "truncated or resized")
    path = _saved(tmp_path)
    with open(path, "ab") as f:  # resized
        f.write(b"\0" * 64)
    refused(path, "truncated or resized")
    path = _saved(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(10)
    refused(path, "magic")
    for name, (offset, nbytes) in _array_offsets(_saved(tmp_path)).items():
        for where in (offset, offset + nbytes - 1, offset + nbytes // 2):
            path = _saved(tmp_path)
            _flip(path, where)
            refused(path, f"array '{name}' does not match its checksum")
    path = _saved(tmp_path)
    _flip(path, 64 + 5)  # in the JSON header
    refused(path, "header does not match its checksum")
    fresh = _saved(tmp_path)
    for where in (40, os.path.getsize(fresh) - 1, _array_offsets(fresh)["entries"][0] - 1):  # padding
        path = _saved(tmp_path)
        _flip(path, where)
        refused(path, "not zeros")
    path = _saved(tmp_path)
    _patch(path, 8, struct.pack("<I", 2))  # another format version
    refused(path, "format version 2")
    path = _saved(tmp_path)
    _patch(path, 0, b"NOTPYNEG")
    refused(path, "magic")
    refused(str(tmp_path / "missing.pyneg"), "does not exist")
    refused(str(tmp_path), "folder")


def test_refusals_name_the_argument(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match="not a UniformSampler"):
        pyneg.UniformSampler.load(path)
    with pytest.raises(TypeError, match="mmap"):
        pyneg.AliasSampler.load(path, mmap="yes")
    with pytest.raises(TypeError, match="path"):
        pyneg.AliasSampler.load(3)
    with pytest.raises(TypeError, match="path"):
        pyneg.AliasSampler(WEIGHTS).save(3)
    with pytest.raises(ValueError, match="folder"):
        pyneg.AliasSampler(WEIGHTS).save(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        pyneg.AliasSampler(WEIGHTS).save(tmp_path / "no" / "t.pyneg")
    # a refused load leaves the file usable; verify=False skips only the data checksums
    offset, _ = _array_offsets(path)["mass"]
    _flip(path, offset)
    loaded = pyneg.AliasSampler.load(path, verify=False)
    assert loaded.num_classes == V


def test_checksum_is_independent_of_threads_and_detects_every_flipped_byte():
    from pyneg import _core

    data = np.random.default_rng(0).integers(0, 256, size=3 * (1 << 20) + 77, dtype=np.uint8)
    ref = _core.checksum64(data, 1)
    assert ref == _core.checksum64(data, 2) == _core.checksum64(data, 7)
    for pos in (0, 31, 32, 1 << 20, 3 * (1 << 20) + 76):
        bad = data.copy()
        bad[pos] ^= 1
        assert _core.checksum64(bad, 2) != ref
    assert _core.checksum64(data[:-1], 1) != ref  # length matters
    assert _core.checksum64(np.zeros(64, np.uint8), 1) != _core.checksum64(np.zeros(65, np.uint8), 1)
    with pytest.raises(ValueError, match="contiguous"):
        _core.checksum64(np.zeros((2, 2), np.uint8), 1)


# ------------------------------------------------------------- crash suite
def test_a_file_written_under_its_readers_cannot_make_a_draw_read_out_of_bounds(tmp_path, run_child):
    """The child maps a table, then scribbles the file in place (its mapping sees every write) and
    draws: every mode must finish without a crash and return ids in [0, V)."""
    path = str(tmp_path / "t.pyneg")
    pyneg.AliasSampler(torch.rand(5000, generator=torch.Generator().manual_seed(1)) + 0.01).save(path)
    offsets = _array_offsets(path)
    proc = run_child(
        f"""
        import numpy as np, torch, pyneg
        path, offsets, V = {path!r}, {offsets!r}, 5000
        s = pyneg.AliasSampler.load(path)
        rng = np.random.default_rng(0)
        ex = torch.tensor([[0, 1, 2, -1]] * 64)
        for trial, fill in enumerate(["random", "ones", "zeros", "random"]):
            with open(path, "r+b") as f:
                for name, (off, nbytes) in offsets.items():
                    if fill == "random":
                        data = rng.integers(0, 256, size=nbytes, dtype=np.uint8).tobytes()
                    else:
                        data = (b"\\xff" if fill == "ones" else b"\\0") * nbytes
                    f.seek(off)
                    f.write(data)
                f.flush()
            draws = [
                lambda: s.sample((64, 50), seed=trial),
                lambda: s.sample((64, 50), seed=trial, exclude=ex),
                lambda: s.sample((64, 20), seed=trial, unique=True, exclude=ex),
                lambda: s.sample((64, 20), seed=trial, unique=True),
            ]
            for draw in draws:
                try:
                    o = draw()
                except ValueError as e:  # a table that is no longer one may be refused
                    print("refused:", e)
                    continue
                assert int(o.min()) >= 0 and int(o.max()) < V, (fill, int(o.min()), int(o.max()))
                print("drawn", fill)
            s.log_prob(torch.arange(V))
            s.probs
        print("in range")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "in range" in proc.stdout and "drawn" in proc.stdout

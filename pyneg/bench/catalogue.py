"""Catalogues larger than memory: one mapped table shared by DataLoader workers, and a table
sharded across gloo ranks.

``mapped_table_8_workers``: a table saved once and mapped read-only by a parent and 8
DataLoader workers (fork), each of which reads every page of the table. Timed: loading
the mapped file (header, checksums of every array) against building the table from
its weights. Notes: the proportional set size (PSS, /proc/<pid>/smaps_rollup) of the
parent and the 8 workers, minus the same processes' PSS when they do the same work
over a 16-class table, against one copy of the table (its bytes).

``sharded_draws_2_ranks``: draws of a ShardedAliasSampler on 2 gloo ranks (spawned in
setup; their negatives/s and bytes per rank are notes) against the unsharded
sampler's draws in this process (timed).

Full size (V = 10^8, about 1.6 GB of table file: entries and masses) runs only without
``--quick``; quick runs use V = 10^6.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import weakref
from types import SimpleNamespace
from typing import Any, Dict, List

import torch

import pyneg
from pyneg._sampler_files import table_tensors
from pyneg.bench.workload import Workload

WORKERS = 8
_CHUNK = 1 << 16


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss line in smaps_rollup")


def _weights(v: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(v, generator=g, dtype=torch.float64) + 1e-3


class _TouchAll(torch.utils.data.Dataset):
    """Item i (one per worker): reads every page of the sampler's table (draws, log q and a pass
    over each array, in chunks: no private copy), then reports its pid."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return WORKERS

    def __getitem__(self, i: int) -> int:
        s = self.sampler
        if s is not None:
            v = s.num_classes
            out = torch.empty(_CHUNK, dtype=torch.int64)  # reused: the draws add no memory
            for j in range(max(1, v // _CHUNK)):
                s.sample(_CHUNK, seed=i, offset=j * _CHUNK, out=out)
            for arr in table_tensors(s):
                for start in range(0, v, _CHUNK):
                    float(arr[start : start + _CHUNK].sum())  # every page resident
            s.log_prob(torch.arange(min(v, _CHUNK)))
        return os.getpid()


def _pss_total(sampler: Any) -> Dict[str, int]:
    """Total PSS (KiB) of this process and WORKERS fork workers that have all read the table."""
    loader = torch.utils.data.DataLoader(
        _TouchAll(sampler),
        batch_size=1,
        num_workers=WORKERS,
        multiprocessing_context="fork",
        persistent_workers=True,
        prefetch_factor=1,
    )
    it = iter(loader)
    pids = sorted({int(b) for b in it})
    total = _pss_kib(os.getpid()) + sum(_pss_kib(p) for p in pids)
    del it, loader
    return {"kib": total, "workers": len(pids)}


class _State(SimpleNamespace):
    """A workload's state (weak-referenceable: its table file is removed with it)."""


def _mapped_setup(quick: bool) -> SimpleNamespace:
    v = 10**6 if quick else 10**8
    st = _State(v=v, dir=tempfile.mkdtemp(prefix="pyneg-bench-"))
    weakref.finalize(st, shutil.rmtree, st.dir, True)  # the file goes with the state (or at exit)
    st.weights = _weights(v)
    t0 = time.perf_counter()
    built = pyneg.AliasSampler(st.weights)
    st.build_s = time.perf_counter() - t0
    st.path = os.path.join(st.dir, "table.pyneg")
    t0 = time.perf_counter()
    built.save(st.path)
    st.save_s = time.perf_counter() - t0
    built.log_prob(torch.arange(1))  # the masses too: a loaded sampler maps both arrays
    st.table_bytes = sum(t.numel() * t.element_size() for t in table_tensors(built))
    st.reference = built.sample(1000, seed=1)
    del built
    empty = _pss_total(pyneg.AliasSampler(torch.ones(16)))  # the same work over a 16-class table
    mapped = pyneg.AliasSampler.load(st.path)
    full = _pss_total(mapped)
    st.pss = {"empty_kib": empty["kib"], "mapped_kib": full["kib"], "workers": full["workers"]}
    t0 = time.perf_counter()
    pyneg.AliasSampler.load(st.path, verify=False)
    st.load_unverified_s = time.perf_counter() - t0
    return st


def _load(st: SimpleNamespace) -> pyneg.AliasSampler:
    return pyneg.AliasSampler.load(st.path)


def _build(st: SimpleNamespace) -> pyneg.AliasSampler:
    return pyneg.AliasSampler(st.weights)


def _check_mapped(st: SimpleNamespace, result: pyneg.AliasSampler, baselines: Dict[str, Any]) -> None:
    assert torch.equal(result.sample(1000, seed=1), st.reference)
    assert torch.equal(baselines["build the table from weights"].sample(1000, seed=1), st.reference)


def _mapped_notes(st: SimpleNamespace) -> Dict[str, Any]:
    added_mib = (st.pss["mapped_kib"] - st.pss["empty_kib"]) / 1024
    copy_mib = st.table_bytes / 2**20
    return {
        "one_copy_MiB": round(copy_mib, 1),
        "PSS_added_parent_plus_workers_MiB": round(added_mib, 1),
        "PSS_ratio_to_one_copy": round(added_mib / copy_mib, 3),
        "PSS_total_MiB": round(st.pss["mapped_kib"] / 1024, 1),
        "workers": st.pss["workers"],
        "build_s": round(st.build_s, 3),
        "save_s": round(st.save_s, 3),
        "load_unverified_s": round(st.load_unverified_s, 4),
    }


# ------------------------------------------------------------------ sharded
def _rank(rank: int, world: int, init_file: str, out_file: str, v: int, shape: List[int], reps: int) -> None:
    import torch.distributed as dist

    from pyneg.sharded import ShardedAliasSampler

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        w = _weights(v)
        lo, hi = rank * v // world, (rank + 1) * v // world
        s = ShardedAliasSampler(w[lo:hi])
        times = []
        for r in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            s.sample(tuple(shape), seed=r)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            torch.save({"median_s": statistics.median(times), "bytes": s.local_nbytes()}, out_file)
    finally:
        dist.destroy_process_group()
    os._exit(0)


def _sharded_setup(quick: bool) -> SimpleNamespace:
    from torch.multiprocessing import spawn  # type: ignore[attr-defined]

    v = 10**6 if quick else 10**7
    shape = [4096, 20]
    st = SimpleNamespace(v=v, shape=shape)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.pt")
        spawn(_rank, args=(2, os.path.join(tmp, "init"), out, v, shape, 5 if quick else 20), nprocs=2)
        st.sharded = torch.load(out)
    st.sampler = pyneg.AliasSampler(_weights(v))
    st.sampler.sample(tuple(shape), seed=0)
    st.unsharded_bytes = sum(t.numel() * t.element_size() for t in table_tensors(st.sampler))
    return st


def _sharded_notes(st: SimpleNamespace) -> Dict[str, Any]:
    n = st.shape[0] * st.shape[1]
    return {
        "sharded_2_ranks_negatives_per_s_per_rank": f"{n / st.sharded['median_s']:.3g}",
        "sharded_bytes_per_rank_MiB": round(st.sharded["bytes"] / 2**20, 1),
        "unsharded_bytes_MiB": round(st.unsharded_bytes / 2**20, 1),
    }


def _check_sharded(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.shape == tuple(st.shape) and int(result.min()) >= 0 and int(result.max()) < st.v
    assert st.sharded["bytes"] < 0.6 * st.unsharded_bytes


WORKLOADS = [
    Workload(
        name="mapped_table_8_workers",
        group="catalogue",
        description="load a mapped table file (checksums verified) vs build it; PSS of 8 workers in notes",
        setup=_mapped_setup,
        run=_load,
        baselines={"build the table from weights": _build},
        check=_check_mapped,
        items=1,
        target_size={"V": 10**8},
        size=lambda st: {"V": st.v},
        notes=_mapped_notes,
    ),
    Workload(
        name="sharded_draws_2_ranks",
        group="catalogue",
        description="4096 x 20 draws: unsharded table in one process (timed); 2 gloo ranks in notes",
        setup=_sharded_setup,
        run=lambda st: st.sampler.sample(tuple(st.shape), seed=0),
        check=_check_sharded,
        items=lambda st: st.shape[0] * st.shape[1],
        target_size={"V": 10**7},
        size=lambda st: {"V": st.v},
        notes=_sharded_notes,
    ),
]

"""Hard-negative mining workloads: pyneg's exact miner against what users would
otherwise run to find each query's top candidates.

Baselines: PyTorch blocked ``matmul`` + ``topk`` over column chunks of the
candidates with the same exclusions (the chunked search users write to avoid
the full (B, N) score matrix), and faiss ``IndexFlatIP`` exact search (when
``faiss`` is installed; the index is built in setup, untimed), asked for
``hi + 1`` neighbours so the excluded positive can be dropped.

DESIGN target (B = 4,096, N = 10^6, d = 128, top 64): faster than both, with at
most 1/10 of PyTorch's peak memory (the table's peak-memory column).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import torch

import pyneg
from pyneg.bench.workload import Target, Workload

TORCH = "PyTorch blocked matmul + topk"
FAISS = "faiss IndexFlatIP"
# Candidate columns per matmul in the PyTorch baseline: (4096, 16384) float32
# scores are 256 MiB, about what one would allow for the block.
TORCH_CHUNK = 16384

faiss: Any
try:
    import faiss  # type: ignore[import-not-found, no-redef]  # optional baseline, when installed
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


def _setup(b: int, n: int, d: int, hi: int):
    def setup(quick: bool) -> SimpleNamespace:
        bb, nn = (b, n) if not quick else (min(b, 256), min(n, 20000))
        g = torch.Generator().manual_seed(0)
        query = torch.randn(bb, d, generator=g)
        cand = torch.randn(nn, d, generator=g)
        pos = torch.randint(0, nn, (bb,), generator=g)
        st = SimpleNamespace(query=query, cand=cand, pos=pos, hi=hi, b=bb, n=nn, index=None)
        if faiss is not None:
            faiss.omp_set_num_threads(torch.get_num_threads())
            st.index = faiss.IndexFlatIP(d)
            st.index.add(cand.numpy())
        return st

    return setup


def _pyneg(st: SimpleNamespace) -> torch.Tensor:
    return pyneg.mine_hard_negatives(st.query, st.cand, st.hi, exclude=st.pos, sampling="top").ids


def _torch_blocked(st: SimpleNamespace) -> torch.Tensor:
    best_s = torch.empty(st.b, 0)
    best_i = torch.empty(st.b, 0, dtype=torch.int64)
    rows = torch.arange(st.b)
    for start in range(0, st.n, TORCH_CHUNK):
        s = st.query @ st.cand[start : start + TORCH_CHUNK].T
        inside = (st.pos >= start) & (st.pos < start + s.shape[1])
        s[rows[inside], st.pos[inside] - start] = -math.inf
        v, i = torch.topk(s, min(st.hi, s.shape[1]), dim=1)
        best_s, j = torch.topk(torch.cat([best_s, v], 1), min(st.hi, best_s.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, j)
    return best_i


def _faiss_flat(st: SimpleNamespace) -> torch.Tensor:
    _, ids = st.index.search(st.query.numpy(), st.hi + 1)
    ids = torch.from_numpy(ids)
    keep = ids != st.pos[:, None]
    # drop the positive where it was found, else the last neighbour
    keep[:, -1] &= ~keep.all(1)
    return ids[keep].view(st.b, st.hi)


def _check(st: SimpleNamespace, ids: torch.Tensor, base: Dict[str, Any]) -> None:
    assert ids.shape == (st.b, st.hi)
    assert not bool((ids == st.pos[:, None]).any()), "an excluded positive was returned"
    rows = min(32, st.b)
    # float64 reference scores of the first rows, chunk by chunk (no float64 copy of the catalogue)
    scores = torch.cat([st.query[:rows].double() @ st.cand[i : i + 65536].double().T for i in range(0, st.n, 65536)], 1)
    for name, other in base.items():
        # Same sets up to float32 rounding between nearly tied scores.
        same = np.mean([len(set(a.tolist()) & set(b.tolist())) / st.hi for a, b in zip(ids, other)])
        assert same > 0.99, f"{name} agrees on only {same:.4f} of the top {st.hi}"
    got = scores.gather(1, ids[:rows]).sort(1, descending=True).values
    scores[torch.arange(rows), st.pos[:rows]] = -math.inf
    want = scores.topk(st.hi, dim=1).values
    assert torch.allclose(got, want, atol=1e-3), "pyneg's top scores differ from the float64 reference"


def _baselines() -> Dict[str, Any]:
    base = {TORCH: _torch_blocked}
    if faiss is not None:
        base[FAISS] = _faiss_flat
    return base


def _targets() -> tuple:
    t = (Target("ratio", 1.0, TORCH), Target("peak_memory_ratio", 10.0, TORCH))
    return t + ((Target("ratio", 1.0, FAISS),) if faiss is not None else ())


WORKLOADS = [
    Workload(
        name="mining_exact_B4096_N1e6",
        group="mining",
        description="exact top-64 hard negatives, B = 4096, N = 10^6, d = 128, positive excluded",
        setup=_setup(4096, 10**6, 128, 64),
        run=_pyneg,
        baselines=_baselines(),
        check=_check,
        items=lambda st: st.b,
        targets=_targets(),
        target_size={"B": 4096, "N": 10**6, "d": 128, "hi": 64},
        size=lambda st: {"B": st.b, "N": st.n, "d": st.query.shape[1], "hi": st.hi},
        measure_memory=True,
    ),
]

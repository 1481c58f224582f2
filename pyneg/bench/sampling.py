"""Sampling workloads: pyneg's alias samplers against what users would otherwise use.

Baselines: ``torch.multinomial`` (rebuilds a CDF on every call),
``numpy.random.Generator.choice`` (likewise), a word2vec-style lookup table of
10^7 entries (fast, but quantises every probability to a multiple of 1e-7),
``torch.randint`` (the uniform floor: the cost of the random numbers alone; the
raw-throughput and small-call targets are ratios against it) and
``torch.cumsum`` of the same weights (a CDF build; the alias-build target is a
ratio against it).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import torch

import pyneg
from pyneg.bench.workload import Target, Workload

MULTINOMIAL = "torch.multinomial"
RANDINT = "torch.randint (uniform)"
CUMSUM = "torch.cumsum (same weights)"


def zipf_counts(num_classes: int, exponent: float = 1.0, seed: int = 0) -> np.ndarray:
    """Word-frequency-like counts: a Zipf law over shuffled ids."""
    rng = np.random.default_rng(seed)
    counts = 1e9 / np.arange(1, num_classes + 1, dtype=np.float64) ** exponent
    return rng.permutation(np.floor(counts) + 1.0)


def word2vec_table(probs: np.ndarray, table_size: int = 10**7) -> torch.Tensor:
    """word2vec's unigram table: id i fills about probs[i] * table_size slots."""
    cum = np.cumsum(probs)
    cum /= cum[-1]
    slots = (np.arange(table_size) + 0.5) / table_size
    return torch.from_numpy(np.searchsorted(cum, slots).astype(np.int64))


def assert_follows(samples: torch.Tensor, probs: torch.Tensor, *, top: int = 200, z: float = 6.0) -> None:
    """Asserts that ``samples`` look like draws from ``probs``.

    Chi-square over the ``top`` most probable ids plus one bin for the rest,
    against a threshold ``df + z * sqrt(2 df)``: a sampler whose probabilities
    are off by a few percent on frequent ids fails it.
    """
    s = samples.reshape(-1).to("cpu")
    n = s.numel()
    p = probs.to(torch.float64)
    k = min(top, p.numel())
    top_p, top_ids = torch.topk(p, k)
    counts = torch.bincount(s, minlength=p.numel()).to(torch.float64)
    obs = torch.cat([counts[top_ids], (n - counts[top_ids].sum()).reshape(1)])
    exp = torch.cat([top_p, (1.0 - top_p.sum()).clamp_min(0).reshape(1)]) * n
    keep = exp >= 5
    assert torch.all(obs[~keep] <= 50 + 10 * exp[~keep]), "ids drawn far more often than their probability"
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    limit = df + z * math.sqrt(2 * max(df, 1))
    assert chi2 <= limit, f"samples do not follow probs: chi2 {chi2:.1f} > {limit:.1f} (df {df})"


def _check_draws(state: Any, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.dtype == torch.int64 and result.numel() == state.n
    assert_follows(result, state.probs)
    for name in ("torch.multinomial", "numpy choice"):
        if name in baselines:
            assert_follows(torch.as_tensor(baselines[name]), state.probs)


def _draw_setup(num_classes: int, draws: int, *, shape=None, table: bool = True):
    def setup(quick: bool) -> SimpleNamespace:
        v = num_classes if not quick else min(num_classes, 10**6)
        sampler = pyneg.UnigramSampler(zipf_counts(v), power=0.75)
        st = SimpleNamespace(
            sampler=sampler,
            probs=sampler.probs,
            n=draws,
            v=v,
            probs32=sampler.probs.to(torch.float32),
            rng=np.random.default_rng(0),
            out=torch.empty(shape or (draws,), dtype=torch.int64),
            seed=[0],
        )
        st.out_base = torch.empty_like(st.out)
        if table:
            st.w2v = word2vec_table(sampler.probs.numpy())
        return st

    return setup


def _pyneg_draw(st: SimpleNamespace) -> torch.Tensor:
    st.seed[0] += 1
    return st.sampler.sample(st.out.shape, seed=st.seed[0], out=st.out)


def _multinomial(st: SimpleNamespace) -> torch.Tensor:
    return torch.multinomial(st.probs32, st.n, replacement=True)


def _numpy_choice(st: SimpleNamespace) -> np.ndarray:
    return st.rng.choice(st.v, size=st.n, p=st.probs.numpy())


def _w2v_table(st: SimpleNamespace) -> torch.Tensor:
    return st.w2v[torch.randint(0, st.w2v.numel(), (st.n,))]


def _randint(st: SimpleNamespace) -> torch.Tensor:
    return torch.randint(0, st.v, st.out_base.shape, out=st.out_base)


def _unique_setup(quick: bool) -> SimpleNamespace:
    v = 10**7 if not quick else 10**6
    rows = 64 if not quick else 8
    sampler = pyneg.UnigramSampler(zipf_counts(v), power=0.75)
    return SimpleNamespace(sampler=sampler, probs32=sampler.probs.to(torch.float32), rows=rows, k=1000, v=v, seed=[0])


def _pyneg_unique(st: SimpleNamespace) -> torch.Tensor:
    st.seed[0] += 1
    return st.sampler.sample((st.rows, st.k), unique=True, seed=st.seed[0])


def _multinomial_unique(st: SimpleNamespace) -> torch.Tensor:
    return torch.stack([torch.multinomial(st.probs32, st.k, replacement=False) for _ in range(st.rows)])


def _check_unique(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.shape == (st.rows, st.k)
    for row in [result] + list(baselines.values()):
        srt = row.sort(dim=1).values
        assert bool((srt[:, 1:] != srt[:, :-1]).all()), "a row repeats an id"
    # The number of the 50 most probable ids per row has the same law under
    # both; compare means with a tolerance from the per-row spread (pyneg's
    # side uses extra rows: they are cheap).
    top = torch.topk(st.sampler.probs, 50).indices
    ours = torch.isin(st.sampler.sample((1024, st.k), unique=True, seed=12345), top).sum(1).double()
    theirs = torch.isin(baselines["torch.multinomial row by row"], top).sum(1).double()
    sd = float(ours.std())
    tol = 5.0 * sd * math.sqrt(1.0 / ours.numel() + 1.0 / theirs.numel())
    assert abs(float(ours.mean() - theirs.mean())) < tol, (float(ours.mean()), float(theirs.mean()), tol)


def _build_setup(quick: bool) -> SimpleNamespace:
    v = 10**7 if not quick else 10**6
    return SimpleNamespace(weights=torch.from_numpy(zipf_counts(v) ** 0.75), v=v)


def _pyneg_build(st: SimpleNamespace) -> pyneg.AliasSampler:
    return pyneg.AliasSampler(st.weights)


def _cdf_build(st: SimpleNamespace) -> torch.Tensor:
    return torch.cumsum(st.weights, 0)


def _check_build(st: SimpleNamespace, result: pyneg.AliasSampler, baselines: Dict[str, Any]) -> None:
    cum = baselines[CUMSUM]
    assert torch.allclose(torch.cumsum(result.probs, 0), cum / cum[-1], atol=1e-9)
    assert_follows(result.sample(10**6, seed=1), result.probs)


def _raw_setup(num_classes: int):
    def setup(quick: bool) -> SimpleNamespace:
        n = 10**7 if not quick else 2 * 10**6
        sampler = pyneg.UnigramSampler(zipf_counts(num_classes), power=0.75)
        return SimpleNamespace(
            sampler=sampler,
            probs=sampler.probs,
            n=n,
            v=num_classes,
            out=torch.empty(n, dtype=torch.int64),
            out_base=torch.empty(n, dtype=torch.int64),
            seed=[0],
        )

    return setup


# Small calls: the per-call overhead a training loop pays, called as a user
# would (no seed, no out=, a fresh result each call) on both sides.
SMALL_CALL_V = 10**5


def _small_setup(shape):
    def setup(quick: bool) -> SimpleNamespace:
        sampler = pyneg.UnigramSampler(zipf_counts(SMALL_CALL_V), power=0.75)
        return SimpleNamespace(
            sampler=sampler, probs=sampler.probs, shape=tuple(shape), v=SMALL_CALL_V, n=math.prod(shape)
        )

    return setup


def _pyneg_small(st: SimpleNamespace) -> torch.Tensor:
    return st.sampler.sample(st.shape)


def _randint_small(st: SimpleNamespace) -> torch.Tensor:
    return torch.randint(0, st.v, st.shape)


def _check_small(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.shape == st.shape and result.dtype == torch.int64
    assert baselines[RANDINT].shape == st.shape
    # One call is too few draws for a chi-square: check the sampler's law on many calls' worth.
    assert_follows(torch.cat([st.sampler.sample(st.shape).reshape(-1) for _ in range(max(1, 10**6 // st.n))]), st.probs)


def _draws_size(st: SimpleNamespace) -> Dict[str, Any]:
    return {"V": st.v, "shape": list(st.out.shape)}


def _small_call_workload(shape) -> Workload:
    """``sample(shape)`` against ``torch.randint`` of the same shape; target: within 2x its time."""
    name = "x".join(str(s) for s in shape)
    return Workload(
        name=f"small_call_{name}",
        group="sampling",
        description=f"per-call overhead: sample(({', '.join(map(str, shape))})), V = 10^5, no out=",
        setup=_small_setup(shape),
        run=_pyneg_small,
        baselines={RANDINT: _randint_small},
        check=_check_small,
        items=lambda st: st.n,
        targets=(Target("ratio", 0.5, RANDINT),),
        target_size={"shape": list(shape)},
        size=lambda st: {"shape": list(st.shape)},
    )


def _raw_workload(exp: int, min_ratio: float, where: str) -> Workload:
    """10^7 draws into a reused buffer against torch.randint of the same size (out= reused too)."""
    return Workload(
        name=f"raw_draws_V1e{exp}",
        group="sampling",
        description=f"raw throughput, {where} table (V = 10^{exp}), 10^7 draws, out= reused",
        setup=_raw_setup(10**exp),
        run=_pyneg_draw,
        baselines={RANDINT: _randint},
        check=_check_draws,
        items=lambda st: st.n,
        targets=(Target("ratio", min_ratio, RANDINT),),
        target_size={"V": 10**exp, "shape": [10**7]},
        size=_draws_size,
    )


WORKLOADS = [
    Workload(
        name="alias_draw_V1e6",
        group="sampling",
        description="10^6 draws per call from unigram^0.75 over V = 10^6",
        setup=_draw_setup(10**6, 10**6),
        run=_pyneg_draw,
        baselines={
            MULTINOMIAL: _multinomial,
            "numpy choice": _numpy_choice,
            "word2vec table (10^7)": _w2v_table,
            RANDINT: _randint,
        },
        check=_check_draws,
        items=lambda st: st.n,
        targets=(Target("ratio", 30, MULTINOMIAL),),
        target_size={"V": 10**6, "shape": [10**6]},
        size=_draws_size,
    ),
    Workload(
        name="step_negatives_V1e7",
        group="sampling",
        description="one training step: 4096 x 20 negatives, V = 10^7 table built once",
        setup=_draw_setup(10**7, 4096 * 20, shape=(4096, 20)),
        run=_pyneg_draw,
        baselines={MULTINOMIAL: _multinomial, "word2vec table (10^7)": _w2v_table},
        check=_check_draws,
        items=lambda st: st.n,
        targets=(Target("ratio", 100, MULTINOMIAL),),
        target_size={"V": 10**7, "shape": [4096, 20]},
        size=_draws_size,
    ),
    Workload(
        name="unique_V1e7",
        group="sampling",
        description="64 rows x 1000 distinct ids, V = 10^7",
        setup=_unique_setup,
        run=_pyneg_unique,
        baselines={"torch.multinomial row by row": _multinomial_unique},
        check=_check_unique,
        items=lambda st: st.rows * st.k,
        targets=(Target("ratio", 100, "torch.multinomial row by row"),),
        target_size={"V": 10**7, "rows": 64, "k": 1000},
        size=lambda st: {"V": st.v, "rows": st.rows, "k": st.k},
    ),
    Workload(
        name="alias_build_V1e7",
        group="sampling",
        description="build the alias table from 10^7 weights (one core)",
        setup=_build_setup,
        run=_pyneg_build,
        baselines={CUMSUM: _cdf_build},
        check=_check_build,
        items=lambda st: st.v,
        targets=(Target("ratio", 0.5, CUMSUM),),
        target_size={"V": 10**7},
        size=lambda st: {"V": st.v},
    ),
    _raw_workload(4, 2, "cache-resident"),
    _raw_workload(7, 0.5, "DRAM-resident"),
    _small_call_workload((512, 5)),
    _small_call_workload((4096, 20)),
]

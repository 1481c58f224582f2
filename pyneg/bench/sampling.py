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
TWO_TABLES = "2x the final table (16 B/class, touched)"


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


def _build_setup_v(num_classes: int):
    def setup(quick: bool) -> SimpleNamespace:
        v = num_classes if not quick else 10**6
        return SimpleNamespace(weights=torch.from_numpy(zipf_counts(v) ** 0.75), v=v)

    return setup


_build_setup = _build_setup_v(10**7)


def _two_tables(st: SimpleNamespace) -> torch.Tensor:
    """The peak-memory yardstick of a build: twice the final table, allocated and touched."""
    return torch.zeros(2 * st.v, dtype=torch.int64)


def _pyneg_build(st: SimpleNamespace) -> pyneg.AliasSampler:
    return pyneg.AliasSampler(st.weights)


def _cdf_build(st: SimpleNamespace) -> torch.Tensor:
    return torch.cumsum(st.weights, 0)


def _check_build(st: SimpleNamespace, result: pyneg.AliasSampler, baselines: Dict[str, Any]) -> None:
    cum = baselines[CUMSUM]
    assert torch.allclose(torch.cumsum(result.probs, 0), cum / cum[-1], atol=1e-9)
    assert_follows(result.sample(10**6, seed=1), result.probs)


def _build_workload(exp: int) -> Workload:
    """Build from 10^exp weights against torch.cumsum; peak build memory against 2x the table."""
    return Workload(
        name=f"alias_build_V1e{exp}",
        group="sampling",
        description=f"build the alias table from 10^{exp} weights (8 B/class table; peak vs 2x table)",
        setup=_build_setup_v(10**exp),
        run=_pyneg_build,
        baselines={CUMSUM: _cdf_build, TWO_TABLES: _two_tables},
        check=_check_build,
        items=lambda st: st.v,
        targets=(Target("ratio", 1 / 1.5, CUMSUM), Target("peak_memory_ratio", 1.0, TWO_TABLES)),
        target_size={"V": 10**exp},
        size=lambda st: {"V": st.v},
        measure_memory=True,
    )


# ----------------------------------------------------- samplers without a table
ANALYTIC_SHAPE = (4096, 20)


def _analytic_setup(kind: str, num_classes: int):
    def setup(quick: bool) -> SimpleNamespace:
        cls = pyneg.UniformSampler if kind == "uniform" else pyneg.LogUniformSampler
        return SimpleNamespace(sampler=cls(num_classes), v=num_classes, shape=ANALYTIC_SHAPE, kind=kind)

    return setup


def _pyneg_analytic(st: SimpleNamespace) -> torch.Tensor:
    return st.sampler.sample(st.shape)


def _randint_analytic(st: SimpleNamespace) -> torch.Tensor:
    return torch.randint(0, st.v, st.shape)


def _check_analytic(st: SimpleNamespace, result: torch.Tensor, baselines: Dict[str, Any]) -> None:
    assert result.shape == st.shape and result.dtype == torch.int64
    assert int(result.min()) >= 0 and int(result.max()) < st.v
    # The law on coarse bins (V is far too large for a per-id test): P(id < V^t) for a few t.
    x = torch.cat([st.sampler.sample(st.shape).reshape(-1) for _ in range(10)]).double()
    n = x.numel()
    for t in (0.25, 0.5, 0.75):
        edge = float(st.v) ** t if st.kind == "loguniform" else st.v * t
        p = math.log1p(math.floor(edge)) / math.log1p(st.v) if st.kind == "loguniform" else math.floor(edge) / st.v
        got = float((x < math.floor(edge)).double().mean())
        assert abs(got - p) < 6 * math.sqrt(p * (1 - p) / n) + 1e-9, (t, got, p)


def _analytic_workload(kind: str, num_classes: int, label: str) -> Workload:
    return Workload(
        name=f"analytic_{kind}_{label}",
        group="sampling",
        description=f"{'Uniform' if kind == 'uniform' else 'LogUniform'}Sampler({label}): 4096 x 20 draws, no table",
        setup=_analytic_setup(kind, num_classes),
        run=_pyneg_analytic,
        baselines={RANDINT: _randint_analytic},
        check=_check_analytic,
        items=lambda st: math.prod(st.shape),
        targets=(Target("ratio", 1 / 1.5, RANDINT),),
        target_size={"V": num_classes, "shape": list(ANALYTIC_SHAPE)},
        size=lambda st: {"V": st.v, "shape": list(st.shape)},
    )


# ------------------------------------------------- resident memory per class
def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmRSS not in /proc/self/status")


def resident_bytes_per_class(make: Any, num_classes: int) -> float:
    """Resident-memory growth of building and keeping one sampler (after a plain draw),
    per class: what a sampler holds once built (build-time scratch freed)."""
    import gc

    from pyneg.bench.timing import _malloc_trim

    gc.collect()
    _malloc_trim()
    before = _rss_bytes()
    sampler = make()
    sampler.sample((64, 8), seed=0)
    gc.collect()
    _malloc_trim()
    grown = _rss_bytes() - before
    del sampler
    return grown / num_classes


def _memory_setup(kind: str, num_classes: int):
    def setup(quick: bool) -> SimpleNamespace:
        v = num_classes if not quick else 10**6
        weights = torch.from_numpy(zipf_counts(v)) if kind in ("alias", "unigram") else torch.empty(0)
        make = {
            "alias": lambda: pyneg.AliasSampler(weights),
            "unigram": lambda: pyneg.UnigramSampler(weights, power=0.75),
            "uniform": lambda: pyneg.UniformSampler(v),
            "loguniform": lambda: pyneg.LogUniformSampler(v),
        }[kind]
        st = SimpleNamespace(v=v, make=make, kind=kind)
        st.bytes_per_class = resident_bytes_per_class(make, v)
        return st

    return setup


def _memory_workload(kind: str, exp: int) -> Workload:
    """Builds the sampler (timed); the resident growth per class of a kept sampler is a note.
    Targets (DESIGN.md): weighted tables <= 8 B/class; uniform / log-uniform O(1) (< 1 MiB)."""
    return Workload(
        name=f"sampler_memory_{kind}_V1e{exp}",
        group="sampling",
        description=f"resident memory per class of a built {kind} sampler, V = 10^{exp}",
        setup=_memory_setup(kind, 10**exp),
        run=lambda st: st.make(),
        items=lambda st: st.v,
        notes=lambda st: {
            "resident B/class": round(st.bytes_per_class, 3),
            "resident MiB": round(st.bytes_per_class * st.v / 2**20, 3),
            "target": "<= 8 B/class" if st.kind in ("alias", "unigram") else "< 1 MiB in all",
            "met": (st.bytes_per_class <= 8.0)
            if st.kind in ("alias", "unigram")
            else (st.bytes_per_class * st.v < 2**20),
        },
        target_size={"V": 10**exp},
        size=lambda st: {"V": st.v},
    )


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
    _build_workload(7),
    _build_workload(8),
    _raw_workload(4, 2, "cache-resident"),
    _raw_workload(7, 0.5, "DRAM-resident"),
    _small_call_workload((512, 5)),
    _small_call_workload((4096, 20)),
    _analytic_workload("uniform", 10**9, "1e9"),
    _analytic_workload("loguniform", 2**40, "2e40"),
    *(_memory_workload(kind, exp) for exp in (7, 8) for kind in ("alias", "unigram", "uniform", "loguniform")),
]

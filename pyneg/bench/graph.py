"""Graph workloads: filtered negatives for link prediction and KGE, filtered ranks.

* ``graph_negatives_*``: N = 10^6 nodes, E = 10^7 edges, 10^7 filtered
  negatives (exact count, none a known edge). With replacement against a
  careful plain-PyTorch loop (``torch.randint`` candidates, rejected with
  ``torch.isin`` on sorted int64 keys ``u * N + v``, until k are kept); distinct
  pairs against PyG's ``negative_sampling`` (when torch_geometric is
  installed). The edge set is built once in setup (untimed), as a training
  loop would.
* ``graph_corrupt_*``: filtered Bernoulli corruption of a batch of 4,096 training
  triples, 32 negatives each, on UMLS (from the PyKEEN wheel) and on a synthetic
  10^6-entity, 10^7-triple graph, against PyKEEN's ``BernoulliNegativeSampler``
  with its exact ``python-set`` filterer and its Bloom filter (when PyKEEN is
  installed). The notes give each one's false-negative rate (known triples
  returned as negatives) and how many negatives the filter dropped.
* ``graph_ranks_*``: filtered realistic ranks of 10^4 test triples over 10^5
  entities against a plain-PyTorch masked rank (known tails' scores set to
  -inf through an index_put of the filter list, then comparisons), in blocks of
  1,000 rows.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any, Dict, List

import torch

from pyneg import graph as G
from pyneg._kg_data import load_bundled_kg
from pyneg.bench.workload import Target, Workload

LOOP = "PyTorch randint + isin loop"
PYG = "PyG negative_sampling"
PK_SET = "PyKEEN python-set filter"
PK_BLOOM = "PyKEEN Bloom filter"
MASKED = "PyTorch masked rank"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- link prediction negatives


def _neg_setup(n: int, e: int, k: int):
    def setup(quick: bool) -> SimpleNamespace:
        nn, ee, kk = (n, e, k) if not quick else (10**4, 10**5, 10**5)
        g = torch.Generator().manual_seed(0)
        ei = torch.randint(0, nn, (2, ee), generator=g)
        es = G.EdgeSet(ei, nn)
        keys = torch.unique(ei[0] * nn + ei[1])  # sorted
        return SimpleNamespace(ei=ei, es=es, keys=keys, n=nn, e=ee, k=kk)

    return setup


def _pyneg_with_replacement(st: SimpleNamespace) -> torch.Tensor:
    out: torch.Tensor = G.negative_sampling(st.es, num_neg_samples=st.k, unique=False, seed=1)
    return out


def _pyneg_distinct(st: SimpleNamespace) -> torch.Tensor:
    out: torch.Tensor = G.negative_sampling(st.es, num_neg_samples=st.k, seed=1)
    return out


def _torch_loop(st: SimpleNamespace) -> torch.Tensor:
    """Careful plain PyTorch: oversample by the expected rejection rate, reject with isin, repeat."""
    g = torch.Generator().manual_seed(1)
    n, need = st.n, st.k
    accept = 1.0 - st.keys.numel() / float(n * n) - 1.0 / n
    parts: List[torch.Tensor] = []
    while need > 0:
        m = int(need / accept * 1.02) + 1024
        u = torch.randint(0, n, (m,), generator=g)
        v = torch.randint(0, n, (m,), generator=g)
        ok = (u != v) & ~torch.isin(u * n + v, st.keys, assume_unique=False)
        kept = torch.stack([u[ok], v[ok]])[:, :need]
        parts.append(kept)
        need -= kept.shape[1]
    return torch.cat(parts, 1)


def _pyg(st: SimpleNamespace) -> torch.Tensor:
    from torch_geometric.utils import negative_sampling  # type: ignore[import-untyped,import-not-found,unused-ignore]

    out: torch.Tensor = negative_sampling(st.ei, st.n, st.k)
    return out


def _check_negatives(st: SimpleNamespace, out: torch.Tensor, base: Dict[str, Any]) -> None:
    assert out.shape == (2, st.k), "pyneg must return exactly the requested count"
    assert not bool(st.es.contains(out).any()), "a negative is a known edge"
    assert not bool((out[0] == out[1]).any()), "a negative is a self-loop"
    for name, b in base.items():
        assert not bool(st.es.contains(b).any()), f"{name} returned a known edge"


def _neg_notes(st: SimpleNamespace) -> Dict[str, Any]:
    return {"edge_set_bytes": int(st.es._fwd.memory_bytes)}


# ---------------------------------------------------------------- triple corruption


def _synthetic_triples(n: int, r: int, t: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    # Power-law-ish entity popularity: squares of uniforms concentrate on low ids.
    h = (torch.rand(t, generator=g) ** 2 * n).long()
    tail = (torch.rand(t, generator=g) ** 2 * n).long()
    rel = torch.randint(0, r, (t,), generator=g)
    return torch.stack([h, rel, tail], 1)


def _corrupt_setup(source: str):
    def setup(quick: bool) -> SimpleNamespace:
        if source == "umls":
            kg = load_bundled_kg("umls")
            if kg is None:
                train, n, r = _synthetic_triples(135, 46, 5216), 135, 46  # UMLS's sizes, when PyKEEN is absent
            else:
                train, n, r = kg.train, kg.num_entities, kg.num_relations
        else:
            n, r, t = (10**6, 1000, 10**7) if not quick else (10**4, 100, 10**5)
            train = _synthetic_triples(n, r, t)
        ts = G.TripleSet(train, n, r)
        corr = G.TripleCorruptor(ts, corrupt="bernoulli")
        g = torch.Generator().manual_seed(3)
        batch = train[torch.randint(0, train.shape[0], (4096 if not quick else 512,), generator=g)]
        st = SimpleNamespace(train=train, ts=ts, corr=corr, batch=batch, k=32, n=n, r=r, pk={})
        if _has("pykeen"):
            from pykeen.sampling import BernoulliNegativeSampler  # type: ignore[import-not-found,unused-ignore]

            for name, filt in ((PK_SET, "python-set"), (PK_BLOOM, "bloom")):
                st.pk[name] = BernoulliNegativeSampler(
                    mapped_triples=train,
                    num_entities=n,
                    num_relations=r,
                    num_negs_per_pos=st.k,
                    filtered=True,
                    filterer=filt,
                )
        return st

    return setup


def _pyneg_corrupt(st: SimpleNamespace) -> torch.Tensor:
    out: torch.Tensor = st.corr.sample(st.batch, st.k, seed=1).triples
    return out


def _pykeen_corrupt(name: str):
    def run(st: SimpleNamespace) -> Any:
        torch.manual_seed(1)
        return st.pk[name].sample(st.batch)

    return run


def _check_corrupt(st: SimpleNamespace, out: torch.Tensor, base: Dict[str, Any]) -> None:
    assert out.shape == (st.batch.shape[0], st.k, 3), "pyneg must return exactly k negatives per positive"
    assert not bool(st.ts.contains(out.reshape(-1, 3)).any()), "a negative is a known triple"


def _corrupt_notes(st: SimpleNamespace) -> Dict[str, Any]:
    notes: Dict[str, Any] = {"pyneg_false_negative_rate": 0.0, "pyneg_negatives_per_positive": st.k}
    out = _pyneg_corrupt(st).reshape(-1, 3)
    notes["pyneg_false_negative_rate"] = float(st.ts.contains(out).double().mean())
    for name, sampler in st.pk.items():
        neg, mask = sampler.sample(st.batch)
        flat = neg.reshape(-1, 3)
        keep = mask.reshape(-1) if mask is not None else torch.ones(flat.shape[0], dtype=torch.bool)
        known = st.ts.contains(flat)
        notes[f"{name}: false_negative_rate"] = float(known[keep].double().mean())
        notes[f"{name}: valid negatives dropped"] = float((~keep & ~known).double().mean())
        notes[f"{name}: negatives per positive"] = float(keep.double().sum() / st.batch.shape[0])
    return notes


# ---------------------------------------------------------------- filtered ranks


def _rank_setup(b: int, n: int):
    def setup(quick: bool) -> SimpleNamespace:
        bb, nn = (b, n) if not quick else (1000, 10**4)
        train = _synthetic_triples(nn, 50, 20 * nn)
        ts = G.TripleSet(train, nn, 50)
        g = torch.Generator().manual_seed(4)
        test = train[torch.randint(0, train.shape[0], (bb,), generator=g)]
        # Scores rounded to 1/64 so that ties occur.
        scores = (torch.randn(bb, nn, generator=g) * 64).round() / 64
        # The plain-PyTorch baseline's filter list (built once, untimed): (row, id) pairs of known tails.
        h, r, t = train[:, 0], train[:, 1], train[:, 2]
        key = r * nn + h
        order = torch.argsort(key)
        skey, stail = key[order], t[order]
        q = test[:, 1] * nn + test[:, 0]
        lo = torch.searchsorted(skey, q)
        hi = torch.searchsorted(skey, q, right=True)
        cnt = hi - lo
        rows = torch.repeat_interleave(torch.arange(bb), cnt)
        idx = torch.repeat_interleave(lo, cnt) + (
            torch.arange(int(cnt.sum())) - torch.repeat_interleave(cnt.cumsum(0) - cnt, cnt)
        )
        return SimpleNamespace(ts=ts, test=test, scores=scores, frows=rows, fids=stail[idx], b=bb, n=nn)

    return setup


def _pyneg_ranks(st: SimpleNamespace) -> torch.Tensor:
    out: torch.Tensor = G.filtered_ranks(st.scores, st.test, filter=st.ts, ties="realistic")
    return out


def _masked_ranks(st: SimpleNamespace, block: int = 1000) -> torch.Tensor:
    out = []
    for lo in range(0, st.b, block):
        s = st.scores[lo : lo + block].clone()
        rows = torch.arange(s.shape[0])
        truth = st.test[lo : lo + block, 2]
        true_s = s[rows, truth].clone()
        sel = (st.frows >= lo) & (st.frows < lo + block)
        s[st.frows[sel] - lo, st.fids[sel]] = -torch.inf
        s[rows, truth] = true_s
        gt = (s > true_s[:, None]).sum(1)
        ge = (s >= true_s[:, None]).sum(1)
        out.append((gt + ge + 1).double() / 2)
    return torch.cat(out)


def _check_ranks(st: SimpleNamespace, out: torch.Tensor, base: Dict[str, Any]) -> None:
    for name, b in base.items():
        assert torch.equal(out, b), f"{name} disagrees with pyneg's ranks"


WORKLOADS = [
    Workload(
        name="graph_negatives_N1e6_E1e7",
        group="graph",
        description="10^7 filtered negative pairs (with replacement), N = 10^6, E = 10^7, exact count",
        setup=_neg_setup(10**6, 10**7, 10**7),
        run=_pyneg_with_replacement,
        baselines={LOOP: _torch_loop},
        check=_check_negatives,
        items=lambda st: st.k,
        targets=(Target("ratio", 5.0, LOOP),),
        target_size={"N": 10**6, "E": 10**7, "k": 10**7},
        size=lambda st: {"N": st.n, "E": st.e, "k": st.k},
        notes=_neg_notes,
    ),
    Workload(
        name="graph_negatives_distinct_N1e6_E1e7",
        group="graph",
        description="10^7 distinct filtered negative pairs, N = 10^6, E = 10^7 (PyG negative_sampling semantics)",
        setup=_neg_setup(10**6, 10**7, 10**7),
        run=_pyneg_distinct,
        baselines={PYG: _pyg} if _has("torch_geometric") else {},
        check=_check_negatives,
        items=lambda st: st.k,
        targets=(Target("ratio", 50.0, PYG),) if _has("torch_geometric") else (),
        target_size={"N": 10**6, "E": 10**7, "k": 10**7},
        size=lambda st: {"N": st.n, "E": st.e, "k": st.k},
    ),
    Workload(
        name="graph_corrupt_umls",
        group="graph",
        description="filtered Bernoulli corruption, UMLS, 4096 positives x 32 negatives",
        setup=_corrupt_setup("umls"),
        run=_pyneg_corrupt,
        baselines={PK_SET: _pykeen_corrupt(PK_SET), PK_BLOOM: _pykeen_corrupt(PK_BLOOM)} if _has("pykeen") else {},
        check=_check_corrupt,
        items=lambda st: st.batch.shape[0] * st.k,
        notes=_corrupt_notes,
    ),
    Workload(
        name="graph_corrupt_E1e7",
        group="graph",
        description="filtered Bernoulli corruption, 10^6 entities, 10^7 triples, 4096 positives x 32 negatives",
        setup=_corrupt_setup("synthetic"),
        run=_pyneg_corrupt,
        baselines={PK_SET: _pykeen_corrupt(PK_SET), PK_BLOOM: _pykeen_corrupt(PK_BLOOM)} if _has("pykeen") else {},
        check=_check_corrupt,
        items=lambda st: st.batch.shape[0] * st.k,
        target_size={"N": 10**6, "T": 10**7},
        size=lambda st: {"N": st.n, "T": int(st.train.shape[0])},
        notes=_corrupt_notes,
    ),
    Workload(
        name="graph_ranks_B1e4_N1e5",
        group="graph",
        description="filtered realistic ranks, 10^4 test triples x 10^5 entities",
        setup=_rank_setup(10**4, 10**5),
        run=_pyneg_ranks,
        baselines={MASKED: _masked_ranks},
        check=_check_ranks,
        items=lambda st: st.b,
        target_size={"B": 10**4, "N": 10**5},
        size=lambda st: {"B": st.b, "N": st.n},
    ),
]

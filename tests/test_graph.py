"""pyneg.graph: exact filtered negatives, triple corruption and filtered ranks.

Every result is checked against a plain Python/NumPy reference: known edges
as a Python set, the allowed set of every row enumerated, log q recomputed,
ranks from a NumPy transcription of PyKEEN's definitions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pyneg
from pyneg import graph as G
from pyneg._kg_data import load_bundled_kg


def random_graph(n: int, e: int, seed: int, self_loops: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    if not self_loops:
        ei = ei[:, ei[0] != ei[1]]
    return ei


def edge_set_py(ei: torch.Tensor, undirected: bool = False) -> set:
    s = {(int(u), int(v)) for u, v in ei.t().tolist()}
    if undirected:
        s |= {(v, u) for u, v in s}
    return s


def random_triples(n: int, r: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, n, (t,), generator=g)
    rel = torch.randint(0, r, (t,), generator=g)
    tail = torch.randint(0, n, (t,), generator=g)
    return torch.stack([h, rel, tail], 1)


# ---------------------------------------------------------------- edge sets


def test_edge_set_membership_matches_python_set():
    ei = random_graph(200, 3000, 0)
    es = G.EdgeSet(ei, 200)
    ref = edge_set_py(ei)
    assert es.num_edges == len(ref)
    q = random_graph(200, 5000, 1)
    got = es.contains(q).tolist()
    assert got == [(u, v) in ref for u, v in q.t().tolist()]
    und = G.EdgeSet(ei, 200, undirected=True)
    ref_u = edge_set_py(ei, undirected=True)
    assert und.num_edges == len(ref_u)
    assert und.contains(q).tolist() == [(u, v) in ref_u for u, v in q.t().tolist()]


def test_edge_set_large_ids():
    big = 2**40
    ei = torch.tensor([[big - 1, 5, big - 1], [3, big - 2, 7]])
    es = G.EdgeSet(ei, big)
    assert es.contains(torch.tensor([[big - 1, big - 1, 5, 3], [3, 7, big - 2, big - 1]])).tolist() == [
        True,
        True,
        True,
        False,
    ]
    neg = G.negative_edges(es, ei, 4, seed=0)
    assert int(neg.dst.max()) < big and not es.contains(torch.stack([neg.src.reshape(-1), neg.dst.reshape(-1)])).any()


# ---------------------------------------------------------------- per-row negatives


@pytest.mark.parametrize("corrupt", ["dst", "src", "both"])
@pytest.mark.parametrize("unique", [False, True])
def test_negative_edges_exact_and_filtered(corrupt, unique):
    n = 60
    ei = random_graph(n, 900, 2)
    es = G.EdgeSet(ei, n)
    known = edge_set_py(ei)
    pos = ei[:, :300]
    k = 7
    neg = G.negative_edges(es, pos, k, corrupt=corrupt, unique=unique, seed=3)
    assert neg.src.shape == neg.dst.shape == neg.log_q.shape == (300, k)
    for i in range(300):
        u, v = int(pos[0, i]), int(pos[1, i])
        pairs = list(zip(neg.src[i].tolist(), neg.dst[i].tolist()))
        for a, b in pairs:
            assert (a, b) not in known
            assert a != b  # self-loops excluded by default
            assert a == u or b == v  # exactly one end replaced
        if corrupt == "dst":
            assert all(a == u for a, _ in pairs)
        if unique:
            assert len(set(pairs)) == k


def test_negative_edges_log_q_matches_reference():
    n = 40
    ei = random_graph(n, 500, 4)
    es = G.EdgeSet(ei, n)
    known = edge_set_py(ei)
    pos = ei[:, :100]
    neg = G.negative_edges(es, pos, 5, corrupt="both", seed=5)
    for i in range(100):
        u, v = int(pos[0, i]), int(pos[1, i])
        for j in range(5):
            a, b = int(neg.src[i, j]), int(neg.dst[i, j])
            if a == u and b != v:  # destination replaced
                allowed = [x for x in range(n) if (u, x) not in known and x != u]
            else:
                allowed = [x for x in range(n) if (x, v) not in known and x != v]
            assert math.isclose(float(neg.log_q[i, j]), math.log(0.5) - math.log(len(allowed)), rel_tol=1e-12)


def test_negative_edges_uniform_over_allowed_set_chi_square():
    n = 50
    # Source 0 is connected to 35 nodes: 14 allowed destinations (not 0, not known).
    dsts = torch.arange(1, 36)
    ei = torch.stack([torch.zeros_like(dsts), dsts])
    es = G.EdgeSet(ei, n)
    rows = torch.tensor([[0] * 2000, [-1] * 2000])
    for unique in (False, True):
        neg = G.negative_edges(es, rows, 7, unique=unique, seed=11)
        d = neg.dst.reshape(-1).numpy()
        assert set(np.unique(d).tolist()) <= set(range(36, 50))
        counts = np.bincount(d, minlength=n)[36:]
        assert stats.chisquare(counts).pvalue > 1e-3
        assert torch.allclose(neg.log_q, torch.full_like(neg.log_q, -math.log(14)))
    # A sampler that also returned one forbidden id, or favoured one id, would fail:
    bad = np.concatenate([counts, [counts.mean()]])
    assert stats.chisquare(bad + np.eye(len(bad))[0] * 400).pvalue < 1e-3


def test_negative_edges_weighted_distribution_and_log_q():
    n = 30
    g = torch.Generator().manual_seed(6)
    w = torch.rand(n, generator=g, dtype=torch.float64) ** 2
    w[5] = 0.0
    ei = torch.tensor([[0, 0, 0], [1, 2, 3]])
    es = G.EdgeSet(ei, n)
    rows = torch.tensor([[0] * 4000, [1] * 4000])
    neg = G.negative_edges(es, rows, 10, weights=w, seed=7)
    d = neg.dst.reshape(-1).numpy()
    allowed = np.array([x for x in range(n) if x not in (0, 1, 2, 3)])
    p = w.numpy()[allowed] / w.numpy()[allowed].sum()
    assert not np.isin(d, [0, 1, 2, 3, 5]).any()
    counts = np.bincount(d, minlength=n)[allowed]
    mask = p > 0
    assert stats.chisquare(counts[mask], p[mask] * counts.sum()).pvalue > 1e-3
    ref = np.log(w.numpy()[d] / w.numpy()[allowed].sum())
    assert np.allclose(neg.log_q.reshape(-1).numpy(), ref, rtol=1e-12)


def test_weighted_rows_with_little_allowed_mass_use_exact_cdf():
    # Forbidden nodes hold > 15/16 of the mass: the row is drawn from its exact CDF.
    n = 20
    w = torch.ones(n, dtype=torch.float64)
    w[:10] = 1000.0
    ei = torch.stack([torch.zeros(9, dtype=torch.int64), torch.arange(1, 10)])
    es = G.EdgeSet(ei, n)
    neg = G.negative_edges(es, torch.tensor([[0] * 3000, [-1] * 3000]), 4, weights=w, seed=1)
    d = neg.dst.reshape(-1).numpy()
    assert d.min() >= 10
    assert stats.chisquare(np.bincount(d, minlength=n)[10:]).pvalue > 1e-3
    assert np.allclose(neg.log_q.numpy(), -math.log(10))


def test_weighted_all_allowed_zero_weight_is_refused():
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    es = G.EdgeSet(torch.tensor([[0], [1]]), 4)
    with pytest.raises(ValueError, match="weight 0"):
        G.negative_edges(es, torch.tensor([[0], [1]]), 2, weights=w, seed=0)


def test_negative_edges_infeasible_refused_up_front():
    n = 5
    full = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]])
    es = G.EdgeSet(full, n)
    with pytest.raises(ValueError, match="row 1"):
        G.negative_edges(es, torch.tensor([[1, 0], [2, 1]]), 3, seed=0)
    with pytest.raises(ValueError, match="distinct"):
        G.negative_edges(es, torch.tensor([[1], [2]]), 4, unique=True, seed=0)  # 3 allowed: 0, 3, 4
    assert G.negative_edges(es, torch.tensor([[1], [2]]), 3, unique=True, seed=0).dst.sort().values.tolist() == [
        [0, 3, 4]
    ]


def test_unfiltered_excludes_only_own_positive():
    es = G.EdgeSet(torch.tensor([[0, 0], [1, 2]]), 4)
    neg = G.negative_edges(es, torch.tensor([[0] * 500, [1] * 500]), 4, filtered=False, seed=0)
    assert set(neg.dst.reshape(-1).tolist()) == {2, 3}


# ---------------------------------------------------------------- determinism


def test_determinism_across_threads_and_batch_splits():
    n = 500
    ei = random_graph(n, 8000, 8)
    es = G.EdgeSet(ei, n)
    pos = ei[:, :3000]
    w = torch.arange(1, n + 1, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = G.negative_edges(es, pos, 9, corrupt="both", seed=42)
        aw = G.negative_edges(es, pos, 9, weights=w, seed=42)
        ag = G.negative_sampling(ei, n, 5000, seed=3)
        torch.set_num_threads(2)
        b = G.negative_edges(es, pos, 9, corrupt="both", seed=42)
        bw = G.negative_edges(es, pos, 9, weights=w, seed=42)
        bg = G.negative_sampling(ei, n, 5000, seed=3)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst) and torch.equal(a.log_q, b.log_q)
    assert torch.equal(aw.dst, bw.dst) and torch.equal(ag, bg)
    parts = [
        G.negative_edges(es, pos[:, lo : lo + 700], 9, corrupt="both", seed=42, offset=lo) for lo in range(0, 3000, 700)
    ]
    assert torch.equal(torch.cat([p.src for p in parts]), a.src)
    assert torch.equal(torch.cat([p.dst for p in parts]), a.dst)
    c = G.negative_edges(es, pos, 9, corrupt="both", seed=43)
    assert not torch.equal(c.dst, a.dst)
    torch.manual_seed(0)
    d1 = G.negative_edges(es, pos, 3)
    torch.manual_seed(0)
    d2 = G.negative_edges(es, pos, 3)
    assert torch.equal(d1.dst, d2.dst)


# ---------------------------------------------------------------- global (PyG) negatives


@pytest.mark.parametrize("n,e", [(300, 4000), (24, 420)])  # sparse (rejection) and dense (enumerated)
def test_negative_sampling_exact_unique_filtered(n, e):
    ei = random_graph(n, e, 9)
    known = edge_set_py(ei)
    allowed = n * n - len(known) - sum(1 for x in range(n) if (x, x) not in known)
    k = min(2000, allowed)
    out, lq = G.negative_sampling(ei, n, k, seed=1, return_log_q=True)
    assert out.shape == (2, k) and out.dtype == torch.int64
    pairs = list(zip(out[0].tolist(), out[1].tolist()))
    assert len(set(pairs)) == k
    assert not any(p in known or p[0] == p[1] for p in pairs)
    assert math.isclose(lq, -math.log(allowed))
    with pytest.raises(ValueError, match="distinct"):
        G.negative_sampling(ei, n, allowed + 1, seed=1)
    assert G.negative_sampling(ei, n, allowed, seed=2).shape == (2, allowed)


@pytest.mark.parametrize(
    "n,e,k",
    [
        (2000, 30000, 50000),  # sparse, rejection: 4 hash partitions, one round
        (300, 20000, 60000),  # 2/3 of the allowed pairs: many repeats, several rounds
        (60, 2500, 1000),  # dense, enumerated; one partition
        (3000, 20000, 300000),  # 2^4 partitions, several chunks
    ],
)
def test_distinct_pairs_are_the_first_occurrences_of_the_stream(n, e, k):
    """Distinct pairs are the first k distinct pairs of the with-replacement
    stream (position j draws the same pair in both), whatever the threads."""
    ei = random_graph(n, e, 12)
    es = G.EdgeSet(ei, n)
    stream = G.negative_sampling(es, num_neg_samples=12 * k, unique=False, seed=5)
    keys = (stream[0] * n + stream[1]).numpy()
    _, first = np.unique(keys, return_index=True)
    first = np.sort(first)
    assert first.size >= k
    expected = stream[:, torch.from_numpy(first[:k])]
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(G.negative_sampling(es, num_neg_samples=k, seed=5))
    finally:
        torch.set_num_threads(before)
    for out in outs:
        assert torch.equal(out, expected)


@pytest.mark.parametrize("e", [40, 100])  # 40: rejection; 100 of 110 off-diagonal pairs: enumerated
def test_negative_sampling_uniform_over_pairs_chi_square(e):
    n = 11
    ei = random_graph(n, e, 10, self_loops=False)
    known = edge_set_py(ei)
    allowed = [(u, v) for u in range(n) for v in range(n) if u != v and (u, v) not in known]
    out = G.negative_sampling(ei, n, 30000, seed=4, unique=False)
    idx = {p: i for i, p in enumerate(allowed)}
    counts = np.zeros(len(allowed))
    for p in zip(out[0].tolist(), out[1].tolist()):
        counts[idx[p]] += 1  # KeyError = a forbidden pair
    assert stats.chisquare(counts).pvalue > 1e-3


def test_negative_sampling_bipartite_and_undirected():
    ei = torch.tensor([[0, 1, 2], [0, 3, 4]])
    out = G.negative_sampling(ei, (3, 5), 12, seed=0)
    assert out.shape == (2, 12) and int(out[0].max()) < 3 and int(out[1].max()) < 5
    assert not G.EdgeSet(ei, (3, 5)).contains(out).any()
    sq = random_graph(30, 200, 3, self_loops=False)
    und = G.negative_sampling(sq, 30, 100, force_undirected=True, seed=0)
    assert und.shape == (2, 100)
    a, b = und[:, :50], und[:, 50:]
    assert torch.equal(a, b.flip(0)) and bool((a[0] < a[1]).all())
    known = edge_set_py(sq, undirected=True)
    assert not any((u, v) in known for u, v in und.t().tolist())
    assert len({(u, v) for u, v in a.t().tolist()}) == 50


def test_negative_sampling_complete_graph_refused():
    n = 6
    full = torch.tensor([[u, v] for u in range(n) for v in range(n) if u != v]).t()
    with pytest.raises(ValueError, match="no negative pair"):
        G.negative_sampling(full, n, 1, seed=0)
    assert G.negative_sampling(full, n, 0, seed=0).shape == (2, 0)


def test_structured_negative_sampling():
    n = 40
    ei = random_graph(n, 400, 12)
    known = edge_set_py(ei)
    i, j, k = G.structured_negative_sampling(ei, n, seed=0)
    assert torch.equal(i, ei[0]) and torch.equal(j, ei[1]) and k.shape == (400,)
    assert not any((a, c) in known for a, c in zip(i.tolist(), k.tolist()))
    i, j, k = G.structured_negative_sampling(ei, n, contains_neg_self_loops=False, seed=0)
    assert bool((k != i).all())


# ---------------------------------------------------------------- bad input


def test_bad_edge_index_refused():
    with pytest.raises(ValueError, match="edge_index"):
        G.EdgeSet(torch.tensor([[0, -1], [1, 2]]), 5)
    with pytest.raises(ValueError, match="edge_index"):
        G.EdgeSet(torch.tensor([[0, 5], [1, 2]]), 5)
    with pytest.raises(ValueError, match="edge_index"):
        G.EdgeSet(torch.tensor([0, 1, 2]), 5)
    with pytest.raises(ValueError, match="edge_index"):
        G.EdgeSet(torch.zeros(3, 4, dtype=torch.int64), 5)
    with pytest.raises(TypeError, match="edge_index"):
        G.EdgeSet(torch.zeros(2, 4), 5)
    with pytest.raises(TypeError, match="edge_index"):
        G.EdgeSet(None, 5)
    with pytest.raises(ValueError, match="num_nodes"):
        G.EdgeSet(torch.zeros(2, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_nodes"):
        G.EdgeSet(torch.tensor([[0], [1]]), 0)
    es = G.EdgeSet(torch.zeros(2, 0, dtype=torch.int64), 4)  # empty graph: every pair but self-loops allowed
    assert es.num_edges == 0
    assert G.negative_sampling(es, num_neg_samples=12, seed=0).shape == (2, 12)
    with pytest.raises(ValueError, match="edge_index"):
        G.negative_edges(es, torch.tensor([[0], [4]]), 2)
    with pytest.raises(ValueError, match="num_negatives"):
        G.negative_edges(es, torch.tensor([[0], [1]]), -1)
    with pytest.raises(TypeError, match="edges"):
        G.negative_edges(torch.zeros(2, 1), torch.tensor([[0], [1]]), 1)
    with pytest.raises(ValueError, match="corrupt"):
        G.negative_edges(es, torch.tensor([[0], [1]]), 1, corrupt="middle")
    with pytest.raises(ValueError, match="weights"):
        G.negative_edges(es, torch.tensor([[0], [1]]), 1, weights=torch.tensor([1.0, float("nan"), 1, 1]))
    with pytest.raises(ValueError, match="weights"):
        G.negative_edges(es, torch.tensor([[0], [1]]), 1, weights=torch.ones(3))
    with pytest.raises(ValueError, match="num_neg_samples"):
        G.negative_sampling(es, num_neg_samples=-2)
    with pytest.raises(ValueError, match="method"):
        G.negative_sampling(es, method="exact")


# ---------------------------------------------------------------- triples


def test_triple_set_and_bernoulli_formula():
    tr = random_triples(50, 4, 600, 13)
    ts = G.TripleSet(tr, 50, 4)
    ref = {tuple(x) for x in tr.tolist()}
    assert ts.num_triples == len(ref)
    q = random_triples(50, 4, 2000, 14)
    assert ts.contains(q).tolist() == [tuple(x) in ref for x in q.tolist()]
    probs = ts.head_corruption_probs().numpy()
    for r in range(4):
        rows = [x for x in ref if x[1] == r]
        tph = len(rows) / len({h for h, _, _ in rows})
        hpt = len(rows) / len({t for _, _, t in rows})
        assert math.isclose(probs[r], tph / (tph + hpt), rel_tol=1e-12)


@pytest.mark.parametrize("corrupt", ["bernoulli", "uniform", "head", "tail", "relation", "all"])
def test_corrupted_triples_filtered_exact(corrupt):
    tr = random_triples(40, 5, 800, 15)
    train, extra = tr[:600], tr[600:]
    filt = G.TripleSet.union(train, extra, num_entities=40, num_relations=5)
    known = {tuple(x) for x in tr.tolist()}
    c = G.TripleCorruptor(G.TripleSet(train, 40, 5), filter=filt, corrupt=corrupt)
    out = c.sample(train[:200], 6, seed=1)
    assert out.triples.shape == (200, 6, 3) and out.log_q.shape == (200, 6)
    for i in range(200):
        h, r, t = train[i].tolist()
        for j in range(6):
            neg = tuple(out.triples[i, j].tolist())
            assert neg not in known
            s = int(out.side[i, j])
            assert sum(a != b for a, b in zip(neg, (h, r, t))) == 1 and neg[s] != (h, r, t)[s]


def test_corruption_log_q_reference():
    tr = random_triples(30, 3, 400, 16)
    ts = G.TripleSet(tr, 30, 3)
    known = {tuple(x) for x in tr.tolist()}
    c = G.TripleCorruptor(ts, corrupt="bernoulli")
    out = c.sample(tr[:80], 4, seed=2)
    ph = ts.head_corruption_probs().numpy()
    for i in range(80):
        h, r, t = tr[i].tolist()
        for j in range(4):
            if int(out.side[i, j]) == 0:
                allowed = [x for x in range(30) if (x, r, t) not in known and x != h]
                ref = math.log(ph[r]) - math.log(len(allowed))
            else:
                allowed = [x for x in range(30) if (h, r, x) not in known and x != t]
                ref = math.log(1 - ph[r]) - math.log(len(allowed))
            assert math.isclose(float(out.log_q[i, j]), ref, rel_tol=1e-12)


@pytest.mark.parametrize("corrupt", ["bernoulli", "uniform", "all"])
def test_pseudo_typed_relation_with_a_single_head_corrupts_its_tails(corrupt):
    """Relation 0 has one head, relation 1 one tail: pseudo-typed draws move that side's
    probability to the other entity side instead of refusing the rows. (Filtered
    against train, such a relation's rows have nothing to draw on the other side
    either: every typed tail is a known tail of the single head. So: filter=None.)"""
    g = torch.Generator().manual_seed(4)
    t0 = torch.stack(
        [torch.full((15,), 5), torch.zeros(15, dtype=torch.int64), torch.randperm(30, generator=g)[:15]], 1
    )
    t1 = torch.stack([torch.randperm(30, generator=g)[:12], torch.ones(12, dtype=torch.int64), torch.full((12,), 7)], 1)
    t2 = random_triples(30, 3, 80, 5)
    t2 = t2[t2[:, 1] == 2]
    tr = torch.cat([t0, t1, t2])
    ts = G.TripleSet(tr, 30, 3)
    known = {tuple(x) for x in tr.tolist()}
    tails0 = {t for _, r, t in known if r == 0}
    heads1 = {h for h, r, _ in known if r == 1}
    c = G.TripleCorruptor(ts, corrupt=corrupt, pseudo_typed=True, filter=None)
    out = c.sample(tr, 6, seed=2)
    assert out.triples.shape == (tr.shape[0], 6, 3)
    assert not (out.triples == tr.unsqueeze(1)).all(2).any()
    probs = c.side_probs(tr[:, 1].numpy())
    p_rel = {"bernoulli": 0.0, "uniform": 0.0, "all": 1.0 / 3.0}[corrupt]
    for i in range(tr.shape[0]):
        r = int(tr[i, 1])
        if r == 0:
            assert probs[i, 0] == 0.0 and math.isclose(probs[i, 2], 1.0 - p_rel)
        if r == 1:
            assert probs[i, 2] == 0.0 and math.isclose(probs[i, 0], 1.0 - p_rel)
        for j in range(6):
            side = int(out.side[i, j])
            neg = tuple(out.triples[i, j].tolist())
            if r == 0 and side != 1:
                assert side == 2 and neg[2] in tails0
                n_allowed = len(tails0) - 1  # unfiltered: only the row's own tail is excluded
                assert math.isclose(float(out.log_q[i, j]), math.log(probs[i, 2]) - math.log(n_allowed), rel_tol=1e-12)
            if r == 1 and side != 1:
                assert side == 0 and neg[0] in heads1


def test_pseudo_typed_draws_stay_in_relation_domain():
    tr = random_triples(60, 3, 300, 17)
    tr[:, 0] = tr[:, 0] % 20 + 20 * tr[:, 1]  # relation r: heads in [20r, 20r + 20)
    ts = G.TripleSet(tr, 60, 3)
    known = {tuple(x) for x in tr.tolist()}
    heads = {r: {h for h, rr, _ in known if rr == r} for r in range(3)}
    tails = {r: {t for _, rr, t in known if rr == r} for r in range(3)}
    c = G.TripleCorruptor(ts, corrupt="uniform", pseudo_typed=True)
    out = c.sample(tr, 5, seed=3)
    for i in range(tr.shape[0]):
        r = int(tr[i, 1])
        for j in range(5):
            neg = tuple(out.triples[i, j].tolist())
            assert neg not in known
            if int(out.side[i, j]) == 0:
                assert neg[0] in heads[r]
                n_allowed = len(heads[r]) - sum(1 for x in heads[r] if (x, r, neg[2]) in known)
            else:
                assert neg[2] in tails[r]
                n_allowed = len(tails[r]) - sum(1 for x in tails[r] if (neg[0], r, x) in known)
            assert math.isclose(float(out.log_q[i, j]), math.log(0.5) - math.log(n_allowed), rel_tol=1e-12)


def test_corruption_unique_and_infeasible():
    tr = torch.tensor([[0, 0, 1], [0, 0, 2], [0, 0, 3]])
    ts = G.TripleSet(tr, 6, 1)
    c = G.TripleCorruptor(ts, corrupt="tail", unique=True)
    out = c.sample(tr[:1], 3, seed=0)  # allowed tails of (0, 0, ?): 0, 4, 5
    assert sorted(out.triples[0, :, 2].tolist()) == [0, 4, 5]
    with pytest.raises(ValueError, match="distinct"):
        c.sample(tr[:1], 4, seed=0)
    with pytest.raises(ValueError, match="triples"):
        c.sample(torch.tensor([[0, 1, 1]]), 1)
    with pytest.raises(ValueError, match="triples"):
        c.sample(torch.tensor([[0, 0, 6]]), 1)
    with pytest.raises(ValueError, match="corrupt"):
        G.TripleCorruptor(ts, corrupt="tails")


def test_chunked_negatives_hit_mask():
    tr = random_triples(25, 2, 300, 18)
    ts = G.TripleSet(tr, 25, 2)
    known = {tuple(x) for x in tr.tolist()}
    c = G.TripleCorruptor(ts)
    out = c.sample_chunked(tr[:50], 20, chunk_size=16, seed=4)
    assert out.entities.shape == (4, 20) and out.hits.shape == (50, 20)
    for i in range(50):
        h, r, t = tr[i].tolist()
        for j in range(20):
            e = int(out.entities[i // 16, j])
            assert bool(out.hits[i, j]) == ((h, r, e) in known or e == t)
    head = c.sample_chunked(tr[:50], 20, chunk_size=16, side="head", seed=4)
    for i in range(50):
        h, r, t = tr[i].tolist()
        for j in range(20):
            e = int(head.entities[i // 16, j])
            assert bool(head.hits[i, j]) == ((e, r, t) in known or e == h)


BUNDLED = ["nations", "kinships", "umls"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bernoulli_rates_on_bundled_kgs(name):
    kg = load_bundled_kg(name)
    if kg is None:
        pytest.skip("PyKEEN (which ships the dataset) is not installed")
    ts = G.TripleSet(kg.train, kg.num_entities, kg.num_relations)
    probs = ts.head_corruption_probs().numpy()
    tr = kg.train.numpy()
    for r in range(kg.num_relations):
        rows = tr[tr[:, 1] == r]
        if len(rows) == 0:
            continue
        tph = len({tuple(x) for x in rows}) / len(set(rows[:, 0]))
        hpt = len({tuple(x) for x in rows}) / len(set(rows[:, 2]))
        assert math.isclose(probs[r], tph / (tph + hpt), rel_tol=1e-12)
    # Empirical head-corruption rate per relation: a binomial test at a fixed seed.
    c = G.TripleCorruptor(ts, corrupt="bernoulli")
    out = c.sample(kg.train, 50, seed=5)
    side = out.side.numpy()
    pvals = []
    for r in range(kg.num_relations):
        sel = side[tr[:, 1] == r]
        if sel.size == 0:
            continue
        pvals.append(stats.binomtest(int((sel == 0).sum()), sel.size, probs[r]).pvalue)
    assert min(pvals) * len(pvals) > 1e-3  # Bonferroni over relations
    known = {tuple(x) for x in tr.tolist()}
    assert not any(tuple(x) in known for x in out.triples.reshape(-1, 3).tolist())


# ---------------------------------------------------------------- ranks


def pykeen_ranks_reference(scores: np.ndarray, true_ids: np.ndarray, filtered: list) -> dict:
    """PyKEEN's definitions: optimistic = 1 + #{s > s_true}; pessimistic = #{s >= s_true};
    realistic = their mean; filtered ids' scores are set to -inf (never the true one)."""
    s = scores.astype(np.float64).copy()
    for i, ids in enumerate(filtered):
        ids = [x for x in ids if x != true_ids[i]]
        s[i, ids] = -np.inf
    st = s[np.arange(len(s)), true_ids][:, None]
    opt = (s > st).sum(1) + 1
    pes = (s >= st).sum(1)
    return {"optimistic": opt, "pessimistic": pes, "realistic": (opt + pes) / 2}


@pytest.mark.parametrize("side", ["tail", "head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_filtered_ranks_match_reference_with_ties(side, dtype):
    n, b = 30, 64
    tr = random_triples(n, 3, 500, 19)
    ts = G.TripleSet(tr, n, 3)
    test = tr[:b]
    g = torch.Generator().manual_seed(20)
    scores = torch.randint(0, 4, (b, n), generator=g).to(dtype)  # many ties
    known = {tuple(x) for x in tr.tolist()}
    col = 2 if side == "tail" else 0
    filt = []
    for h, r, t in test.tolist():
        if side == "tail":
            filt.append([x for x in range(n) if (h, r, x) in known])
        else:
            filt.append([x for x in range(n) if (x, r, t) in known])
    ref = pykeen_ranks_reference(scores.numpy(), test[:, col].numpy(), filt)
    for ties in ("optimistic", "realistic", "pessimistic"):
        got = G.filtered_ranks(scores, test, side=side, filter=ts, ties=ties)
        assert got.dtype == torch.float64
        np.testing.assert_array_equal(got.numpy(), ref[ties])
    raw = pykeen_ranks_reference(scores.numpy(), test[:, col].numpy(), [[] for _ in range(b)])
    np.testing.assert_array_equal(G.filtered_ranks(scores, test, side=side, ties="realistic").numpy(), raw["realistic"])


def test_rank_metrics_and_bad_scores():
    ranks = torch.tensor([1.0, 2.0, 4.0, 20.0])
    m = G.rank_metrics(ranks, ks=(1, 10))
    assert math.isclose(m["mrr"], (1 + 0.5 + 0.25 + 0.05) / 4)
    assert m["hits@1"] == 0.25 and m["hits@10"] == 0.75
    tr = torch.tensor([[0, 0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        G.filtered_ranks(torch.tensor([[0.0, float("nan"), 1.0]]), tr)
    with pytest.raises(TypeError, match="scores"):
        G.filtered_ranks(torch.tensor([[0, 1, 2]]), tr)
    with pytest.raises(ValueError, match="triples"):
        G.filtered_ranks(torch.zeros(1, 1), tr)
    with pytest.raises(ValueError, match="ties"):
        G.filtered_ranks(torch.zeros(1, 3), tr, ties="average")
    with pytest.raises(ValueError, match="rows"):
        G.filtered_ranks(torch.zeros(2, 3), tr)


def test_public_names():
    assert pyneg.graph is G


def test_negative_sampling_dense_undirected_enumerated_path():
    # 12 nodes, 60 of the 66 unordered pairs are edges: fewer than 1/4 allowed, so
    # pairs are enumerated (source by allowed count, then its r-th allowed partner).
    n = 12
    pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    g = torch.Generator().manual_seed(21)
    keep = torch.randperm(len(pairs), generator=g)[:60].tolist()
    ei = torch.tensor([pairs[i] for i in keep]).t()
    known = edge_set_py(ei, undirected=True)
    allowed = [(u, v) for u, v in pairs if (u, v) not in known]
    assert len(allowed) == 6
    out, lq = G.negative_sampling(ei, n, 12, force_undirected=True, seed=0, return_log_q=True)
    assert sorted(zip(out[0, :6].tolist(), out[1, :6].tolist())) == sorted(allowed)
    assert math.isclose(lq, -math.log(6))
    with pytest.raises(ValueError, match="distinct"):
        G.negative_sampling(ei, n, 14, force_undirected=True, seed=0)
    many = G.negative_sampling(ei, n, 6000, force_undirected=True, unique=False, seed=1)
    counts = np.array(
        [sum(1 for p in zip(many[0, :3000].tolist(), many[1, :3000].tolist()) if p == a) for a in allowed]
    )
    assert counts.sum() == 3000 and stats.chisquare(counts).pvalue > 1e-3

"""pyneg.graph.negative_edges(weights=..., unique=True): weighted draws
without replacement (successive sampling).

Each row draws k distinct allowed ids, draw j from the weights renormalised
over the allowed ids not drawn yet (torch.multinomial(replacement=False)'s
law). The ordered draws of many rows are checked against an exact
enumeration of that law on tiny graphs (rejection path, exact Fenwick path,
and a row that switches from one to the other), with a deliberately wrong law
shown to fail the same test.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from scipy import stats

from pyneg import graph as G

# Node 0 is the source of every row; its known edge 0 -> 1 and the self-loop
# are forbidden, so the allowed destinations are 2, 3, 4, 5.
ALLOWED = [2, 3, 4, 5]
ROWS = 20000


def _edges() -> G.EdgeSet:
    return G.EdgeSet(torch.tensor([[0], [1]]), 6)


def _draw(w: torch.Tensor, k: int, seed: int) -> G.GraphNegatives:
    rows = torch.tensor([[0] * ROWS, [-1] * ROWS])
    return G.negative_edges(_edges(), rows, k, weights=w, unique=True, seed=seed)


def successive_law(w: List[float], allowed: List[int], k: int) -> Dict[Tuple[int, ...], float]:
    """Exact probability of every ordered sequence of k distinct draws."""
    law = {}
    for seq in itertools.permutations(allowed, k):
        left = sum(w[a] for a in allowed)
        p = 1.0
        for a in seq:
            p *= w[a] / left
            left -= w[a]
        law[seq] = p
    return law


def naive_law(w: List[float], allowed: List[int], k: int) -> Dict[Tuple[int, ...], float]:
    """A wrong law: sequence probability proportional to the product of the
    weights (no renormalisation after each draw)."""
    raw = {seq: math.prod(w[a] for a in seq) for seq in itertools.permutations(allowed, k)}
    z = sum(raw.values())
    return {s: p / z for s, p in raw.items()}


def seq_pvalue(dst: np.ndarray, law: Dict[Tuple[int, ...], float]) -> float:
    keys = list(law)
    index = {s: i for i, s in enumerate(keys)}
    counts = np.zeros(len(keys))
    for row in dst:
        counts[index[tuple(int(x) for x in row)]] += 1
    expected = np.array([law[s] for s in keys]) * len(dst)
    return float(stats.chisquare(counts, expected).pvalue)


# (weights, k): total mass 12 with 10 allowed (alias rejection throughout);
# 210 with 10 allowed (< 1/16: exact Fenwick draws from the start); 56 with 16
# allowed (rejection first, Fenwick once the mass left drops below 56/16).
CASES = [
    ([1.0, 1.0, 1.0, 2.0, 3.0, 4.0], 3),
    ([100.0, 100.0, 1.0, 2.0, 3.0, 4.0], 3),
    ([20.0, 20.0, 1.0, 2.0, 3.0, 10.0], 3),
    ([1.0, 1.0, 1.0, 2.0, 3.0, 4.0], 2),
]


@pytest.mark.parametrize("w,k", CASES)
def test_successive_sampling_law_matches_exact_enumeration(w, k):
    wt = torch.tensor(w, dtype=torch.float64)
    neg = _draw(wt, k, seed=11)
    dst = neg.dst.numpy()
    assert dst.shape == (ROWS, k)
    assert (neg.src == 0).all()
    # distinct within a row, never a known edge, a self-loop or a forbidden node
    assert all(len(set(r)) == k for r in dst.tolist())
    assert np.isin(dst, ALLOWED).all()
    law = successive_law(w, ALLOWED, k)
    # the whole ordered sequence: first draws, pairs and order at once
    assert seq_pvalue(dst, law) > 1e-3
    # a wrong law is rejected by the same statistic
    assert seq_pvalue(dst, naive_law(w, ALLOWED, k)) < 1e-6
    # first draws
    first = np.array([sum(p for s, p in law.items() if s[0] == a) for a in ALLOWED])
    counts = np.array([(dst[:, 0] == a).sum() for a in ALLOWED])
    assert stats.chisquare(counts, first * ROWS).pvalue > 1e-3
    # pairwise inclusion: every pair within 4.5 standard errors of its exact probability
    for a, b in itertools.combinations(ALLOWED, 2):
        p = sum(q for s, q in law.items() if a in s and b in s)
        got = ((dst == a).any(1) & (dst == b).any(1)).mean()
        assert abs(got - p) <= 4.5 * math.sqrt(p * (1 - p) / ROWS) + 1e-12, (a, b, got, p)
    # log q: the one-draw probability under the renormalised allowed weights
    wa = sum(w[a] for a in ALLOWED)
    ref = np.log(np.array(w)[dst] / wa)
    assert np.allclose(neg.log_q.numpy(), ref, rtol=1e-12)


def test_enumeration_agrees_with_torch_multinomial():
    # The law enumerated above is torch.multinomial(replacement=False)'s.
    w = [1.0, 1.0, 1.0, 2.0, 3.0, 4.0]
    g = torch.Generator().manual_seed(3)
    probs = torch.tensor([w[a] for a in ALLOWED], dtype=torch.float64).expand(ROWS, 4)
    picks = torch.multinomial(probs, 3, replacement=False, generator=g)
    dst = torch.tensor(ALLOWED)[picks].numpy()
    law = successive_law(w, ALLOWED, 3)
    assert seq_pvalue(dst, law) > 1e-3
    assert seq_pvalue(dst, naive_law(w, ALLOWED, 3)) < 1e-6


def test_zero_weight_never_drawn_and_exact_k_takes_all():
    w = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    neg = _draw(w, 2, seed=0)
    assert np.isin(neg.dst.numpy(), [3, 5]).all()
    assert (neg.dst.sort(1).values == torch.tensor([3, 5])).all()


def test_infeasible_rows_refused_up_front():
    es = _edges()
    w = torch.tensor([1.0, 1.0, 0.0, 2.0, 0.0, 4.0], dtype=torch.float64)
    rows = torch.tensor([[1, 0], [-1, -1]])  # row 0 (source 1) allows 0, 2, 3, 4, 5: 3 of weight > 0
    with pytest.raises(ValueError, match="row 1: cannot draw 3 distinct weighted negatives"):
        G.negative_edges(es, rows, 3, weights=w, unique=True, seed=0)
    with pytest.raises(ValueError, match="weight > 0"):
        G.negative_edges(es, rows, 3, weights=w, unique=True, seed=0)
    assert G.negative_edges(es, rows[:, :1], 3, weights=w, unique=True, seed=0).dst.shape == (1, 3)
    with pytest.raises(ValueError, match="weight 0"):
        G.negative_edges(es, rows, 1, weights=torch.tensor([1.0, 1.0, 0, 0, 0, 0]), unique=True, seed=0)


def test_large_graph_rows_no_repeats_no_known_edges_and_thread_invariance():
    n = 400
    g = torch.Generator().manual_seed(5)
    ei = torch.randint(0, n, (2, 6000), generator=g)
    # sources 0..9 know the 40 heaviest nodes: their rows hold < 1/16 of the
    # mass and take the exact path; the other rows reject
    heavy = torch.arange(40)
    ei = torch.cat([ei, torch.stack([torch.arange(10).repeat_interleave(40), heavy.repeat(10)])], 1)
    es = G.EdgeSet(ei, n)
    w = torch.ones(n, dtype=torch.float64)
    w[:40] = 1000.0
    w[100:110] = 0.0
    pos = torch.cat([ei[:, -400:], ei[:, :1600]], 1)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(
                (
                    G.negative_edges(es, pos, 12, weights=w, unique=True, seed=9),
                    G.negative_edges(es, pos, 6, weights=w, unique=True, corrupt="both", seed=9),
                )
            )
    finally:
        torch.set_num_threads(before)
    for a, b in outs[1:]:
        for x, y in ((outs[0][0], a), (outs[0][1], b)):
            assert torch.equal(x.src, y.src) and torch.equal(x.dst, y.dst) and torch.equal(x.log_q, y.log_q)
    known = set(map(tuple, ei.t().tolist()))
    neg, both = outs[0]
    assert neg.dst.shape == (2000, 12)
    for s, d in zip(neg.src.tolist(), neg.dst.tolist()):
        assert len(set(d)) == 12
        assert all((s[0], v) not in known and v != s[0] and not 100 <= v < 110 for v in d)
    # corrupt="both": per row and side the replacing ids are distinct
    side_head = both.src != pos[0].unsqueeze(1)
    for i in range(2000):
        heads = both.src[i][side_head[i]].tolist()
        tails = both.dst[i][~side_head[i]].tolist()
        assert len(set(heads)) == len(heads) and len(set(tails)) == len(tails)
        for u, v in zip(both.src[i].tolist(), both.dst[i].tolist()):
            assert (u, v) not in known and u != v
    # the exact-path rows never draw the heavy (known) nodes
    assert not np.isin(neg.dst[:400].numpy(), np.arange(40)).any()

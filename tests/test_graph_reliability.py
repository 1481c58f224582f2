"""Crash-suite cases for pyneg.graph: concurrent writers, hostile sizes, odd inputs.

Each case runs in a child process (the ``run_child`` fixture), so a crash fails
the test instead of killing the test run.
"""

from __future__ import annotations

import torch

from pyneg import graph as G


def test_concurrent_writers_do_not_crash(run_child):
    # Other threads rewrite the caller's edge_index, positives, weights and
    # scores (with out-of-range and negative ids, NaN) while the GIL-free
    # kernels run: each kernel works on its own checked copy (scores: row by
    # row), so a call either succeeds with valid results or raises ValueError.
    proc = run_child("""
        import threading, torch
        from pyneg import graph as G
        g = torch.Generator().manual_seed(0)
        n = 3000
        ei = torch.randint(0, n, (2, 60000), generator=g)
        scores = torch.randn(64, n, generator=g)
        w = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        stop = threading.Event()
        def writer():
            i = 0
            while not stop.is_set():
                c = (i * 7919) % ei.shape[1]
                ei[i % 2, c] = (-5, n + 7, 3)[i % 3]
                scores[i % 64, c % n] = float("nan") if i % 5 == 0 else 0.25
                w[c % n] = float("nan") if i % 7 == 0 else 1.0
                i += 1
        t = threading.Thread(target=writer)
        t.start()
        outcomes = set()
        try:
            for _ in range(8):
                try:
                    es = G.EdgeSet(ei, n)
                    neg = G.negative_edges(es, ei[:, :5000].clamp(0, n - 1), 4, weights=w, seed=1)
                    assert int(neg.dst.min()) >= 0 and int(neg.dst.max()) < n
                    tr = torch.stack([ei[0, :64].clamp(0, n - 1), torch.zeros(64, dtype=torch.int64),
                                      ei[1, :64].clamp(0, n - 1)], 1)
                    ts = G.TripleSet(tr, n, 1)
                    r = G.filtered_ranks(scores, tr, filter=ts)
                    assert bool(((r >= 1) & (r <= n)).all())
                    outcomes.add("ok")
                except ValueError as e:
                    outcomes.add("refused")
        finally:
            stop.set()
            t.join()
        print("done", sorted(outcomes))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def test_hostile_sizes_and_shapes(run_child):
    proc = run_child("""
        import torch
        from pyneg import graph as G
        es = G.EdgeSet(torch.tensor([[0, 1], [1, 2]]), 4)
        for call in (
            lambda: G.negative_sampling(es, num_neg_samples=2**62),
            lambda: G.negative_edges(es, torch.tensor([[0], [1]]), 2**61),
            lambda: G.EdgeSet(torch.tensor([[0], [1]]), 2**63),
            lambda: G.EdgeSet(torch.zeros(2, 3, 0, dtype=torch.int64), 4),
            lambda: G.negative_edges(es, torch.zeros(2, 0, dtype=torch.int64), 3),
            lambda: G.filtered_ranks(torch.zeros(0, 4), torch.zeros(0, 3, dtype=torch.int64)),
            lambda: G.TripleSet(torch.zeros(0, 3, dtype=torch.int64), 3, 1),
            lambda: G.negative_edges(es, torch.tensor([[0], [1]]), 3, unique=True),
            lambda: G.negative_sampling(torch.tensor([[2**40], [3]]), num_neg_samples=5),
        ):
            try:
                call()
            except (ValueError, TypeError, MemoryError, OverflowError):
                pass
        print("done")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def test_refused_call_changes_nothing():
    ei = torch.tensor([[0, 0, 1], [1, 2, 2]])
    es = G.EdgeSet(ei, 3)
    before = es.num_edges
    pos = torch.tensor([[0, 1], [1, 2]])
    copy = pos.clone()
    try:
        G.negative_edges(es, pos, 2, unique=True)  # row 0: only node... 0 is a self-loop, 1 and 2 known
    except ValueError:
        pass
    else:
        raise AssertionError("an infeasible request must be refused")
    assert es.num_edges == before and torch.equal(pos, copy)
    out = G.negative_edges(es, pos[:, 1:], 1, seed=0)
    assert out.dst.tolist() == [[0]]


def test_empty_inputs():
    es = G.EdgeSet(torch.zeros(2, 0, dtype=torch.int64), 3)
    neg = G.negative_edges(es, torch.zeros(2, 0, dtype=torch.int64), 4, seed=0)
    assert neg.dst.shape == (0, 4)
    assert G.negative_edges(es, torch.tensor([[0], [1]]), 0, seed=0).dst.shape == (1, 0)
    r = G.filtered_ranks(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64))
    assert r.shape == (0,)
    ts = G.TripleSet(torch.zeros(0, 3, dtype=torch.int64), 3, 2)
    assert ts.num_triples == 0
    assert ts.head_corruption_probs().tolist() == [0.5, 0.5]
    c = G.TripleCorruptor(ts, corrupt="uniform")
    out = c.sample(torch.tensor([[0, 1, 2]]), 5, seed=0)
    assert out.triples.shape == (1, 5, 3)

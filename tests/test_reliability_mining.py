"""Crash-suite cases for the miner: concurrent writers, hostile sizes, odd inputs.

Each case runs in a child process (the ``run_child`` fixture), so a crash fails
the test instead of killing the test run.
"""

from __future__ import annotations

import torch

import pyneg


def test_concurrent_writer_to_candidates_does_not_crash(run_child):
    # Another thread rewrites the candidates (with NaN, with huge values) while
    # the GIL-free kernel mines them: the kernel scores its own checked copy of
    # each block, so the call either succeeds with valid ids or raises
    # ValueError; it never reads out of bounds or returns garbage ids.
    proc = run_child("""
        import threading, torch, pyneg
        g = torch.Generator().manual_seed(0)
        q, c = torch.randn(64, 32, generator=g), torch.randn(40000, 32, generator=g)
        stop = threading.Event()
        def writer():
            i = 0
            while not stop.is_set():
                r = (i * 7919) % c.shape[0]
                c[r, i % 32] = float("nan") if i % 3 == 0 else (1e30 if i % 3 == 1 else 0.5)
                i += 1
        t = threading.Thread(target=writer)
        t.start()
        outcomes = set()
        try:
            for _ in range(6):
                try:
                    m = pyneg.mine_hard_negatives(q, c, 8, hi=40, seed=0, num_threads=2)
                    assert ((m.ids >= 0) & (m.ids < c.shape[0])).all()
                    outcomes.add("ok")
                except ValueError as e:
                    assert "non-finite" in str(e) or "overflow" in str(e), e
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
        import torch, pyneg
        q = torch.randn(3, 4)
        # one candidate, hi = N
        m = pyneg.mine_hard_negatives(q, torch.randn(1, 4), 1, sampling="top")
        assert m.ids.tolist() == [[0], [0], [0]]
        # zero query rows
        m = pyneg.mine_hard_negatives(torch.randn(0, 4), torch.randn(5, 4), 2, seed=0)
        assert m.ids.shape == (0, 2)
        # more threads than rows, tiny blocks, long exclusion rows
        ex = torch.arange(30).repeat(3, 1)
        m = pyneg.mine_hard_negatives(q, torch.randn(40, 4), 5, hi=10, exclude=ex, num_threads=64,
                                      block_size=(1, 1), seed=0)
        assert (m.ids >= 30).all()
        # everything excluded: padding, not a crash
        m = pyneg.mine_hard_negatives(q, torch.randn(30, 4), 2, exclude=ex, pad=True, seed=0)
        assert (m.ids == -1).all() and (m.window == 0).all()
        # a window wider than the admissible candidates, softmax with a tiny tau
        m = pyneg.mine_hard_negatives(q, torch.randn(200, 4) * 50, 5, hi=200, sampling="softmax",
                                      tau=1e-6, seed=0)
        assert torch.isfinite(m.log_q).all() and (m.log_q <= 0).all()
        print("done")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout


def test_refused_call_changes_nothing():
    q, c = torch.randn(4, 8), torch.randn(50, 8)
    ex = torch.tensor([[3, -1], [2, 1], [0, 0], [9, 8]])
    before = (q.clone(), c.clone(), ex.clone())
    for kwargs in ({"k": 60}, {"k": 2, "margin": 1.0}, {"k": 2, "exclude": ex[:3]}):
        try:
            pyneg.mine_hard_negatives(q, c, exclude=ex, **{"k": 2, **kwargs})
        except (ValueError, TypeError):
            pass
    pyneg.mine_hard_negatives(q, c, 2, exclude=ex, seed=0)  # exclusion rows are sorted on a copy
    for a, b in zip(before, (q, c, ex)):
        assert torch.equal(a, b)

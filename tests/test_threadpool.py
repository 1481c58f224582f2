"""The persistent thread pool behind the CPU kernels (csrc/cpu/parallel.{h,cpp}).

What it must keep: the same results whatever the thread count (chunk
boundaries are a pure function of the call, and the kernels' randomness comes
from absolute positions), working draws in a child after ``os.fork()`` (whose
parent's workers do not exist there), no deadlock when several Python threads
call the kernels at once with the GIL released, and worker exceptions reaching
Python as the same ValueError. What it adds: worker threads that persist from
one call to the next instead of starting on every call.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import pyneg
from pyneg._hsoftmax_reference import gather_nll
from pyneg.bench.sampling import assert_follows, zipf_counts
from pyneg.mining import mine_hard_negatives

THREADS = (1, 2, 4, 8)  # 8 is more than this machine's cores: the pool grows past them


def with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sampler():
    return pyneg.UnigramSampler(zipf_counts(50_000), power=0.75)


# ------------------------------------------------- same results, any thread count
def _draws(s):
    # Sizes past the kernels' grains, so 2..8 threads really split the work.
    rows = 4000
    return (
        s.sample((1_000_003,), seed=7),
        s.sample((rows, 64), seed=8, exclude=torch.arange(rows).reshape(-1, 1)),
        s.sample((600, 200), seed=9, unique=True),
    )


def test_sampler_draws_equal_for_every_thread_count(sampler):
    one = with_threads(1, lambda: _draws(sampler))
    for n in THREADS[1:]:
        for got, want in zip(with_threads(n, lambda: _draws(sampler)), one):
            assert torch.equal(got, want), n
    plain, excluding, unique = one
    assert_follows(plain, sampler.probs)
    assert not (excluding == torch.arange(excluding.shape[0])[:, None]).any()
    srt = unique.sort(1).values
    assert bool((srt[:, 1:] != srt[:, :-1]).all())


def _hs_step(hs, x, target):
    x = x.detach().clone().requires_grad_()
    hs.zero_grad()
    loss = hs(x, target, reduction="sum")
    loss.backward()
    return loss.detach(), x.grad, hs.weight.grad.clone(), hs.bias.grad.clone()


def test_hsoftmax_equal_for_every_thread_count_and_matches_reference():
    counts = zipf_counts(20_000)
    gen = torch.Generator().manual_seed(3)
    hs = pyneg.HierarchicalSoftmax(counts, 32, bias=True)
    with torch.no_grad():
        hs.weight.normal_(0, 0.1, generator=gen)
        hs.bias.normal_(0, 0.1, generator=gen)
    x = torch.randn(2048, 32, generator=gen)
    target = torch.randint(0, 20_000, (2048,), generator=gen)
    one = with_threads(1, lambda: _hs_step(hs, x, target))
    for n in THREADS[1:]:
        for got, want in zip(with_threads(n, lambda: _hs_step(hs, x, target)), one):
            assert torch.equal(got, want), n  # bitwise: the gradient sums keep their order
    # and the shared result is hierarchical softmax
    xr = x.clone().requires_grad_()
    w = hs.weight.detach().clone().requires_grad_()
    b = hs.bias.detach().clone().requires_grad_()
    ref = gather_nll(xr, target, w, b, hs.tree.padded_paths(torch.float32)).sum()
    ref.backward()
    assert torch.allclose(one[0], ref.detach(), rtol=1e-5)
    for got, want in zip(one[1:], (xr.grad, w.grad, b.grad)):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mining_equal_for_every_thread_count_and_matches_topk():
    gen = torch.Generator().manual_seed(5)
    q, c = torch.randn(300, 24, generator=gen), torch.randn(5000, 24, generator=gen)
    runs = [mine_hard_negatives(q, c, 16, hi=16, num_threads=n, seed=1) for n in THREADS]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    # k = hi draws the whole window: the top 16 by score (random floats: no ties)
    want = torch.topk(q @ c.T, 16, dim=1).indices.sort(1).values
    assert torch.equal(runs[0].ids.sort(1).values, want)


# ------------------------------------------------------------ the pool persists
def test_workers_persist_between_calls(run_child):
    proc = run_child(
        """
        import os, torch, pyneg
        torch.set_num_threads(4)
        torch.ones(10**6).sum()  # torch's own pools start first
        s = pyneg.UnigramSampler(torch.arange(1, 1001).double())
        def tasks():
            return len(os.listdir("/proc/self/task"))
        before = tasks()
        s.sample((10**6,), seed=1)
        after_first = tasks()
        for i in range(20):
            s.sample((10**6,), seed=i)
        print(before, after_first, tasks())
        """
    )
    assert proc.returncode == 0, proc.stderr
    before, first, later = map(int, proc.stdout.split())
    assert first == before + 3, (before, first)  # 4 chunks: the caller and 3 workers, kept
    assert later == first  # later calls reuse them


# ----------------------------------------------------------------------- fork
def test_draws_after_fork_match_the_parent(run_child):
    # The parent's pool exists (and is busy in another thread) when it forks; the
    # child's draws must neither hang on the parent's workers nor differ.
    proc = run_child(
        """
        import os, threading, numpy as np, torch, pyneg
        torch.set_num_threads(4)
        s = pyneg.UnigramSampler(torch.arange(1, 5001).double())
        want = s.sample((10**6,), seed=11).numpy()
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                s.sample((10**6,), seed=3)
        t = threading.Thread(target=busy)
        t.start()
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                # numpy compares: torch's own OpenMP pool is not usable after a fork
                ok = all(np.array_equal(s.sample((10**6,), seed=11).numpy(), want) for _ in range(3))
                # the child made its own workers (the parent's do not exist here)
                workers = len(os.listdir("/proc/self/task")) - 1
                os._exit(0 if ok and workers >= 3 else 3 if not ok else 4)
            pids.append(pid)
        stop.set()
        t.join()
        print([os.waitpid(p, 0)[1] for p in pids])
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[0,", "0,", "0,", "0]"], proc.stdout


def test_multiprocessing_fork_workers_draw_the_parents_samples(run_child):
    proc = run_child(
        """
        import multiprocessing as mp, numpy as np, torch, pyneg
        torch.set_num_threads(2)
        s = pyneg.UnigramSampler(torch.arange(1, 5001).double())
        def draw(seed):
            # numpy, not torch ops, in the child: torch's OpenMP pool hangs after a fork
            return s.sample((300_000,), seed=seed).numpy()
        want = [draw(seed) for seed in range(4)]
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(draw, range(4))
        print(all(np.array_equal(a, b) for a, b in zip(got, want)))
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


# ---------------------------------------------------------- concurrent callers
def test_concurrent_python_threads_get_the_serial_results(sampler):
    seeds = list(range(32))

    def draw(seed):
        return sampler.sample((200_000,), seed=seed)

    def concurrent():
        start = threading.Barrier(8)

        def task(seed):
            if seed < 8:
                start.wait()  # the first eight calls overlap
            return draw(seed)

        with ThreadPoolExecutor(8) as ex:
            return list(ex.map(task, seeds))

    serial = with_threads(1, lambda: [draw(s) for s in seeds])
    got = with_threads(4, concurrent)
    for a, b in zip(got, serial):
        assert torch.equal(a, b)


def test_concurrent_hsoftmax_and_sampling(sampler):
    counts = zipf_counts(5000)
    hs = pyneg.HierarchicalSoftmax(counts, 16)
    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 5000, (1024,), generator=torch.Generator().manual_seed(2))
    want_loss = with_threads(1, lambda: hs(x, target, reduction="none").detach())
    want_draw = with_threads(1, lambda: sampler.sample((300_000,), seed=4))

    def loss(_):
        return hs(x, target, reduction="none").detach()

    def draws(_):
        return sampler.sample((300_000,), seed=4)

    def mixed():
        with ThreadPoolExecutor(6) as ex:
            return list(ex.map(loss, range(12))), list(ex.map(draws, range(12)))

    losses, drawn = with_threads(4, mixed)
    assert all(torch.equal(v, want_loss) for v in losses)
    assert all(torch.equal(v, want_draw) for v in drawn)


# ------------------------------------------------------------------ exceptions
@pytest.mark.parametrize("threads", THREADS)
def test_worker_exceptions_reach_python_as_value_error(threads):
    gen = torch.Generator().manual_seed(0)
    q, c = torch.randn(40, 8, generator=gen), torch.randn(4000, 8, generator=gen)
    c[3999, 1] = math.nan  # in the last candidate block: raised on a worker when split
    c[2100, 0] = math.inf
    messages = set()
    for _ in range(3):
        with pytest.raises(ValueError, match="candidates holds a non-finite value in row") as err:
            mine_hard_negatives(q, c, 4, num_threads=threads, block_size=(8, 64))
        messages.add(str(err.value))
    assert len(messages) == 1  # the same chunk's error every time, whatever finished first
    # and the pool still works after a failed call
    ok = mine_hard_negatives(q, c[:2000], 4, num_threads=threads, block_size=(8, 64))
    assert ok.ids.shape == (40, 4)

"""ShardedAliasSampler on 2 and 3 gloo ranks (spawned here, CPU, loopback) against the
unsharded AliasSampler and a plain one-process reference of the documented algorithm."""

from __future__ import annotations

import math
import os
import tempfile
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import stats

import pyneg
from pyneg.distributed import _splitmix64
from pyneg.sharded import ShardedAliasSampler

V = 30
DRAWS = 120_000  # per rank and request
SLICES = {2: [(0, 13), (13, 30)], 3: [(0, 7), (7, 9), (9, 30)]}  # 3 ranks: rank 1's slice is all zero
EXCLUDE = torch.tensor([[0, 5, 5, -1], [20, 21, 22, 29], [3, 14, -1, -1]])
K = 40_000


def _weights() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    w = torch.rand(V, generator=g, dtype=torch.float64) * torch.arange(1, V + 1)
    w[[4, 7, 8]] = 0.0  # classes that must never be drawn (7, 8: rank 1's whole slice with 3 ranks)
    return w


def _run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        lo, hi = SLICES[world][rank]
        s = ShardedAliasSampler(_weights()[lo:hi])
        res = {
            "range": s.shard_range,
            "num_classes": s.num_classes,
            "log_prob": s.log_prob(torch.arange(V)),
            "log_prob_2d": s.log_prob(torch.tensor([[0, 29], [13, 7]])),
            # every rank makes the same request: the ids must not depend on who asks
            "same": s.sample((4, 25), seed=11),
            # each rank's own stream for the chi-square test
            "own": s.sample(DRAWS, seed=100 + rank),
            "excluded": s.sample((3, K), exclude=EXCLUDE, seed=7 + rank),
            # ranks ask for different sizes, one without exclusions
            "uneven": s.sample((rank + 1, 3), seed=5, exclude=None if rank else torch.tensor([1])),
            "nbytes": s.local_nbytes(),
        }
        torch.save(res, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # see test_distributed.py: gloo's threads can abort a rank at interpreter exit


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request):
    world = request.param
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_run, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=True)
        yield world, [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(world)]


def _shard_log_masses(world: int) -> torch.Tensor:
    w = _weights().numpy()
    log_m = []
    for lo, hi in SLICES[world]:
        top = w[lo:hi].max()
        log_m.append(math.log(top) + math.log(float(np.sum(w[lo:hi] / top))) if top > 0 else -math.inf)
    log_m_t = torch.tensor(log_m, dtype=torch.float64)
    return log_m_t - torch.logsumexp(log_m_t, 0)


def _sharded_log_prob(world: int) -> torch.Tensor:
    """log P(shard) + the local table's log p, slice by slice (plain AliasSamplers)."""
    w = _weights()
    out = torch.full((V,), -math.inf, dtype=torch.float64)
    for (lo, hi), log_shard in zip(SLICES[world], _shard_log_masses(world)):
        if w[lo:hi].sum() > 0:
            out[lo:hi] = pyneg.AliasSampler(w[lo:hi]).log_prob(torch.arange(hi - lo)) + log_shard
    return out


def _reference(world: int, size, seed: int, exclude=None) -> torch.Tensor:
    """The documented algorithm in one process, with plain tensors and one AliasSampler per slice:
    shard by allowed mass (float64 uniform of torch.Generator(splitmix64(seed))), then draw the
    shard's requests, in order, at consecutive positions of stream splitmix64(seed + owner + 1)."""
    w = _weights().numpy()
    slices = SLICES[world]
    log_m = []
    for lo, hi in slices:
        top = w[lo:hi].max()
        log_m.append(math.log(top) + math.log(float(np.sum(w[lo:hi] / top))) if top > 0 else -math.inf)
    log_m_t = torch.tensor(log_m, dtype=torch.float64)
    shard_p = torch.exp(log_m_t - torch.logsumexp(log_m_t, 0))
    n = math.prod(size)
    g = torch.Generator().manual_seed(_splitmix64(seed) & ((1 << 63) - 1))
    u = torch.rand(n, dtype=torch.float64, generator=g)
    out = torch.empty(n, dtype=torch.int64)
    assert exclude is None
    cum = torch.cumsum(shard_p, 0)
    shard = torch.searchsorted(cum, u * cum[-1], right=True)
    for r, (lo, hi) in enumerate(slices):
        where = (shard == r).nonzero().squeeze(1)
        if where.numel():
            local = pyneg.AliasSampler(torch.from_numpy(w[lo:hi]))
            out[where] = local.sample(where.numel(), seed=_splitmix64(seed + r + 1)) + lo
    return out.reshape(size)


def _chi2_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    assert counts[p == 0].sum() == 0, "a class of zero probability was drawn"
    keep = p > 0
    return float(stats.chisquare(counts[keep], counts.sum() * p[keep] / p[keep].sum()).pvalue)


def test_partition_and_log_prob_match_the_unsharded_sampler(ranks):
    world, res = ranks
    full = pyneg.AliasSampler(_weights())
    assert [r["range"] for r in res] == SLICES[world]
    assert all(r["num_classes"] == V for r in res)
    exact = _weights() / _weights().sum()
    own = _sharded_log_prob(world)
    for r in res:
        # the log q of the distribution the sharded sampler draws from (shard mass x local table)...
        assert torch.allclose(r["log_prob"], own, rtol=1e-12, atol=0)
        assert torch.equal(r["log_prob_2d"], r["log_prob"][torch.tensor([[0, 29], [13, 7]])])
        # ...which is the unsharded sampler's, and the normalised weights, to the tables' 2**-32
        # resolution (each table reports the probabilities it draws with)
        assert torch.equal(torch.isinf(r["log_prob"]), torch.isinf(full.log_prob(torch.arange(V))))
        assert (r["log_prob"].exp() - full.log_prob(torch.arange(V)).exp()).abs().max() <= 2.0**-31
        assert (r["log_prob"].exp() - exact).abs().max() <= 2.0**-31
    # bytes: each rank holds its own slice only (entries and masses: 16 bytes per class; none for a zero slice)
    for r, (lo, hi) in zip(res, SLICES[world]):
        assert r["nbytes"] <= 16 * (hi - lo)


def test_draws_are_exact_digests_of_the_documented_algorithm(ranks):
    world, res = ranks
    ref = _reference(world, (4, 25), 11)
    for r in res:
        assert torch.equal(r["same"], ref)  # identical on every rank for the same request
    for rank, r in enumerate(res):
        assert torch.equal(r["own"], _reference(world, (DRAWS,), 100 + rank))


def test_draws_follow_the_unsharded_distribution(ranks):
    world, res = ranks
    p = pyneg.AliasSampler(_weights()).probs.numpy()
    for r in res:
        counts = np.bincount(r["own"].numpy(), minlength=V)
        assert _chi2_pvalue(counts, p) > 1e-4


def test_excluded_rows_follow_the_renormalised_distribution(ranks):
    world, res = ranks
    p = pyneg.AliasSampler(_weights()).probs.numpy()
    for r in res:
        draws = r["excluded"]
        assert draws.shape == (3, K)
        for row in range(3):
            banned = [int(i) for i in EXCLUDE[row] if i >= 0]
            allowed = p.copy()
            allowed[banned] = 0.0
            counts = np.bincount(draws[row].numpy(), minlength=V)
            assert _chi2_pvalue(counts, allowed) > 1e-4


def test_uneven_requests(ranks):
    world, res = ranks
    for rank, r in enumerate(res):
        assert r["uneven"].shape == (rank + 1, 3)
        assert ((r["uneven"] >= 0) & (r["uneven"] < V)).all()
    assert not (res[0]["uneven"] == 1).any()


def test_a_wrong_shard_pick_fails_the_chi_square():
    """The chi-square test above can fail: drawing shards uniformly (not by mass) is caught."""
    w = _weights().numpy()
    rng = np.random.default_rng(0)
    parts = []
    for lo, hi in SLICES[2]:
        local = w[lo:hi] / w[lo:hi].sum()
        parts.append(rng.choice(np.arange(lo, hi), size=DRAWS // 2, p=local))
    counts = np.bincount(np.concatenate(parts), minlength=V)
    assert _chi2_pvalue(counts, w / w.sum()) < 1e-6


def test_world_size_one():
    w = _weights()
    s = ShardedAliasSampler(w)
    assert s.shard_range == (0, V) and s.num_classes == V
    assert torch.allclose(s.log_prob(torch.arange(V)), pyneg.AliasSampler(w).log_prob(torch.arange(V)), rtol=1e-12)
    assert torch.equal(s.sample((2, 5), seed=3), s.sample((2, 5), seed=3))
    neg = s.sample((3, 200), exclude=EXCLUDE, seed=1)
    for row in range(3):
        assert not torch.isin(neg[row], EXCLUDE[row][EXCLUDE[row] >= 0]).any()
    assert s.log_expected_count(torch.tensor([0]), 10).item() == pytest.approx(
        math.log(10) + s.log_prob(torch.tensor([0])).item()
    )


def test_bad_arguments_are_refused_naming_them():
    s = ShardedAliasSampler(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="local_weights"):
        ShardedAliasSampler(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="local_weights"):
        ShardedAliasSampler(torch.zeros(3))
    with pytest.raises(ValueError, match="local_weights"):
        ShardedAliasSampler(torch.zeros(0))
    with pytest.raises(ValueError, match="ids"):
        s.log_prob(torch.tensor([3]))
    with pytest.raises(ValueError, match="exclude"):
        s.sample((2, 3), exclude=torch.tensor([0, 1, 2]), seed=0)
    with pytest.raises(ValueError, match="exclude"):
        s.sample((1, 3), exclude=torch.tensor([[0, 1, 2]]), seed=0)  # nothing left to draw
    with pytest.raises(ValueError, match="size"):
        s.sample(-1, seed=0)
    with pytest.raises(TypeError, match="generator"):
        s.sample(3, generator=3)


# ----------------------------------------------------------------- failures
def _fail(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from _rank_outcomes import outcomes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))  # fmt: skip
    s = ShardedAliasSampler(torch.ones(5))
    calls = {
        # one rank passes a bad size: every rank raises, promptly
        "bad_size": lambda: s.sample(-1 if rank == world - 1 else 4, seed=0),
        "bad_ids": lambda: s.log_prob(torch.tensor([10**6]) if rank == 0 else torch.tensor([0])),
        "bad_weights": lambda: ShardedAliasSampler(torch.tensor([-1.0]) if rank == 1 else torch.ones(2)),
        # still in step afterwards
        "after": lambda: s.sample(4, seed=0),
    }
    got = outcomes(calls)
    if rank == world - 1:
        torch.save(got, os.path.join(out_dir, f"f{rank}.pt"))
        os._exit(0)  # the last rank leaves: the others' next call must raise, not hang
    got.update(outcomes({"peer_left": lambda: s.sample(4, seed=0)}))
    torch.save(got, os.path.join(out_dir, f"f{rank}.pt"))
    os._exit(0)


@pytest.mark.parametrize("world", [2, 3])
def test_a_raising_or_leaving_rank_makes_the_others_raise(world):
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.spawn(_fail, args=(world, os.path.join(tmp, "init"), tmp), nprocs=world, join=False)
        deadline = time.monotonic() + 240  # a hang guard, not a timing assertion
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail("a rank hung")
        res = [torch.load(os.path.join(tmp, f"f{r}.pt")) for r in range(world)]
    for rank, got in enumerate(res):
        assert got["bad_size"][0] == "ValueError"
        assert ("size" in got["bad_size"][1]) == (rank == world - 1)
        assert got["bad_ids"][0] == "ValueError"
        assert got["bad_weights"][0] == "ValueError"
        assert got["after"][0] == "no error"
        if rank != world - 1:
            assert got["peer_left"][0] != "no error"

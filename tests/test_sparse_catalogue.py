"""Issue 21: weighted samplers over catalogues past 2**31 ids (sparse catalogues).

A dense table at V = 2**31 + 10 needs 17 GB; a catalogue where only n ids carry
weight holds the table of those n (``AliasSampler(weights, ids=..., num_classes=V)``):
16 bytes per weighted id, 24 once its masses are derived. Draws are the dense
table's slot draws (same Philox positions) mapped through the sorted ids.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

import pyneg
from pyneg import _core, _tablefile

BIG = 2**40
PAST = 2**31 + 10


def catalogue(v: int, n: int = 500, seed: int = 0):
    """n distinct ids spread over [0, v) (boundaries included) with random weights, some zero."""
    rng = np.random.default_rng(seed)
    ids = set(rng.integers(0, v, size=n - 6, dtype=np.int64).tolist())
    ids |= {0, v - 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 if v > 2**32 else v - 2}
    ids = np.array(sorted(ids), dtype=np.int64)
    rng.shuffle(ids)  # given in any order
    w = rng.uniform(0.1, 10.0, size=len(ids))
    w[::17] = 0.0
    return torch.from_numpy(ids), torch.from_numpy(w)


def slots_of(sampler_ids: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    s = np.searchsorted(sampler_ids.numpy(), x.reshape(-1).numpy())
    assert (sampler_ids.numpy()[s] == x.reshape(-1).numpy()).all()  # every draw is a weighted id
    return s


def chi2(slot_draws: np.ndarray, p: np.ndarray) -> float:
    counts = np.bincount(slot_draws, minlength=len(p))
    keep = p > 0
    assert counts[~keep].sum() == 0
    return stats.chisquare(counts[keep], counts.sum() * p[keep] / p[keep].sum()).pvalue


def normalised(s: pyneg.AliasSampler, ids: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    """The normalised weights in the order of the sampler's (sorted) ids."""
    order = np.argsort(ids.numpy())
    assert torch.equal(s.ids, ids[order])
    p = w.numpy()[order]
    return p / p.sum()


@pytest.mark.parametrize("v", [PAST, BIG])
def test_sparse_draws_follow_the_normalised_weights(v):
    ids, w = catalogue(v)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=v)
    assert s.num_classes == v and s.num_positive == int((w > 0).sum())
    p = normalised(s, ids, w)
    x = s.sample((200_000,), seed=1)
    assert x.dtype == torch.int64 and int(x.min()) >= 0 and int(x.max()) < v
    assert chi2(slots_of(s.ids, x), p) > 1e-4
    # The test can fail: the same draws against other weights.
    q = p.copy()
    q[: len(q) // 2] *= 1.5
    assert chi2(slots_of(s.ids, x), q / q.sum()) < 1e-6
    # log_prob is log(w / sum) to the table's resolution; -inf for weight 0.
    lp = s.log_prob(s.ids)
    np.testing.assert_allclose(np.exp(lp.numpy()), p, rtol=0, atol=2.0**-32)
    assert torch.isneginf(lp[torch.from_numpy(p == 0)]).all()
    outside = torch.tensor([1, v - 3, 2**31 + 3])
    outside = outside[~torch.isin(outside, s.ids)]
    assert torch.isneginf(s.log_prob(outside)).all()
    assert torch.equal(s.probability(outside), torch.zeros(len(outside), dtype=torch.float64))
    # Expected counts: log(k p) with replacement.
    torch.testing.assert_close(s.log_expected_count(s.ids[:5], 64), lp[:5] + math.log(64))


@pytest.mark.parametrize("v", [PAST, BIG])
def test_sparse_draws_are_the_dense_slot_draws_mapped_to_ids(v):
    ids, w = catalogue(v, n=300, seed=2)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=v)
    dense = pyneg.AliasSampler(torch.from_numpy(normalised(s, ids, w)))  # the slots' table
    for size in [(1000,), (50, 20), (1 << 17,)]:
        got = s.sample(size, seed=5)
        assert torch.equal(got, s.ids[dense.sample(size, seed=5)])
    a = s.sample(10_000, seed=7)
    assert torch.equal(a, torch.cat([s.sample(4_000, seed=7), s.sample(6_000, seed=7, offset=4_000)]))
    torch.set_num_threads(1)
    try:
        assert torch.equal(a, s.sample(10_000, seed=7))
    finally:
        torch.set_num_threads(2)
    out = torch.full((100, 100), -5, dtype=torch.int64)
    assert s.sample((100, 100), seed=3, out=out) is out
    assert torch.equal(out, s.sample((100, 100), seed=3))
    torch.manual_seed(11)
    b = s.sample((8, 4))
    torch.manual_seed(11)
    assert torch.equal(b, s.sample((8, 4)))


@pytest.mark.parametrize("v", [PAST, BIG])
def test_sparse_exclusion_and_unique_rows(v):
    ids, w = catalogue(v, n=60, seed=3)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=v)
    p = normalised(s, ids, w)
    top = s.ids[torch.from_numpy(np.argsort(-p)[:5].copy())]  # the heaviest ids
    zero_weight = torch.tensor([5, v - 2 if v - 2 not in set(s.ids.tolist()) else 6])
    ex = torch.cat([top, zero_weight, torch.tensor([-1])])  # padding, and ids that are never drawn anyway
    x = s.sample((20_000, 10), seed=1, exclude=ex.repeat(20_000, 1))
    assert not torch.isin(x, top).any()
    q = p.copy()
    q[np.searchsorted(s.ids.numpy(), top.numpy())] = 0
    assert chi2(slots_of(s.ids, x), q / q.sum()) > 1e-4
    # A heavily excluded row (allowed mass < 1/16: the exact CDF) still avoids its ids.
    by_weight = np.array([i for i in np.argsort(-p) if p[i] > 0])
    heavy = s.ids[torch.from_numpy(by_weight[:-3].copy())]
    y = s.sample((200, 4), seed=2, exclude=heavy.repeat(200, 1))
    assert not torch.isin(y, heavy).any()
    # Per-row lists of catalogue ids: row b never holds its own.
    rows = s.ids[torch.randint(0, len(ids), (64, 3), generator=torch.Generator().manual_seed(0))]
    z = s.sample((64, 16), seed=3, exclude=rows)
    assert not (z.unsqueeze(2) == rows.unsqueeze(1)).any()
    # Unique rows: distinct, within the weighted ids, avoiding exclusions.
    u = s.sample((500, 12), seed=4, unique=True, exclude=top.repeat(500, 1))
    assert all(len(set(r)) == 12 for r in u.tolist())
    assert not torch.isin(u, top).any() and torch.isin(u, s.ids).all()
    assert chi2(slots_of(s.ids, u[:, 0]), q / q.sum()) > 1e-4
    full = s.sample((3, s.num_positive), seed=5, unique=True)  # every weighted id (the race)
    weighted = set(s.ids[torch.from_numpy(p > 0)].tolist())
    assert all(set(r) == weighted for r in full.tolist())
    cand = s.sample_candidates(8, torch.tensor([[int(top[0]), 5]]), seed=6)
    assert torch.isin(cand.sampled_candidates, s.ids).all() and cand.true_expected_count[0, 1] == 0
    # Refusals name the argument and change nothing.
    with pytest.raises(ValueError, match=rf"exclude holds id {v} outside \[0, {v}\)"):
        s.sample((1, 2), seed=1, exclude=torch.tensor([v]))
    with pytest.raises(ValueError, match="exclude holds id -2"):
        s.sample((1, 2), seed=1, exclude=torch.tensor([-2]))
    with pytest.raises(ValueError, match="exclude row 0 leaves no id"):
        s.sample((1, 2), seed=1, exclude=s.ids.reshape(1, -1))
    with pytest.raises(ValueError, match="distinct ids per row"):
        s.sample((1, s.num_positive + 1), seed=1, unique=True)
    with pytest.raises(ValueError, match=rf"ids holds id {v} outside"):
        s.log_prob(torch.tensor([0, v]))
    with pytest.raises(ValueError, match=rf"true_classes holds id {v}"):
        s.sample_candidates(2, torch.tensor([v]), seed=1)
    out = torch.zeros(1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="exclude"):
        s.sample((1, 2), seed=1, exclude=torch.tensor([v]), out=out)
    assert not out.any()


def test_sparse_construction_is_checked():
    w = torch.tensor([1.0, 2.0, 3.0])
    s = pyneg.AliasSampler(w, ids=[2**35, 4, 2**31])  # num_classes defaults to max(ids) + 1
    assert s.num_classes == 2**35 + 1 and s.ids.tolist() == [4, 2**31, 2**35]
    assert s.log_prob(torch.tensor([4])).item() == pytest.approx(math.log(2 / 6), abs=1e-9)
    for bad, err, match in [
        (dict(ids=[1, 2]), ValueError, "ids has 2 entries but weights has 3"),
        (dict(ids=[1, 2, 1]), ValueError, "ids holds id 1 twice"),
        (dict(ids=[1, 2, BIG], num_classes=BIG), ValueError, rf"ids holds id {BIG} outside \[0, {BIG}\)"),
        (dict(ids=[1, -2, 3]), ValueError, "ids holds id -2"),
        (dict(ids=[1.0, 2.0, 3.0]), TypeError, "ids must hold integer ids"),
        (dict(ids=[[1, 2, 3]]), ValueError, "ids must be 1-D"),
        (dict(ids=[1, 2, 3], num_classes=2**50 + 1), ValueError, "num_classes"),
        (dict(ids=[1, 2, 3], num_classes=0), ValueError, "num_classes"),
        (dict(ids=[1, 2, 3], num_classes=2.5), TypeError, "num_classes"),
        (dict(num_classes=10), TypeError, "num_classes .* needs ids"),
    ]:
        with pytest.raises(err, match=match):
            pyneg.AliasSampler(w, **bad)
    with pytest.raises(ValueError, match="weights must have a positive sum"):
        pyneg.AliasSampler([0.0, 0.0], ids=[1, 2], num_classes=BIG)
    with pytest.raises(ValueError, match="counts must be finite"):
        pyneg.UnigramSampler([1.0, -1.0], ids=[1, 2], num_classes=BIG)
    s = pyneg.AliasSampler([1.0, 0.0], ids=[5, 2**50 - 1], num_classes=2**50)  # the analytic samplers' limit
    assert s.sample(10, seed=0).eq(5).all()
    u = pyneg.UnigramSampler([1.0, 16.0], power=0.5, ids=[PAST - 1, 2], num_classes=PAST)
    assert u.power == 0.5 and u.log_prob(torch.tensor([2])).item() == pytest.approx(math.log(4 / 5), abs=1e-9)


def test_dense_limit_is_checked_at_the_boundary_without_allocating():
    # A dense table stays at 2**31 - 1 classes: its int64 masses sum to V * 2**32 < 2**63.
    assert _core.MAX_CLASSES == 2**31 - 1
    huge = torch.zeros(1, dtype=torch.float64).expand(2**31)
    with pytest.raises(ValueError, match="weights has 2147483648 entries, more than the 2147483647"):
        pyneg.AliasSampler(huge)
    with pytest.raises(ValueError, match="counts has 2147483648 entries"):
        pyneg.UnigramSampler(huge)
    with pytest.raises(ValueError, match="weights has 2147483648 entries"):  # sparse: at most 2**31 - 1 weighted ids
        pyneg.AliasSampler(huge, ids=torch.zeros(1, dtype=torch.int64).expand(2**31), num_classes=BIG)
    entries = torch.zeros(1, dtype=torch.int64).expand(2**31)
    with pytest.raises(ValueError, match="must have 1 to 2147483647 entries"):
        pyneg.AliasSampler([1.0]).load_state_dict({"sampler": "AliasSampler", "entries": entries})
    with pytest.raises(ValueError, match="mass must hold 1 to 2147483647 classes, got 2147483648"):
        torch.ops.pyneg.alias_log_prob(entries, torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="entries must hold 1 to 2147483647 classes, got 2147483648"):
        torch.ops.pyneg.alias_class_masses(entries)


def test_sparse_state_dict_pickle_and_refused_states():
    ids, w = catalogue(BIG, n=40, seed=4)
    s = pyneg.UnigramSampler(w, power=0.5, ids=ids, num_classes=BIG)
    sd = s.state_dict()
    assert set(sd) == {"sampler", "entries", "ids", "num_classes", "power"} and sd["num_classes"] == BIG
    assert sd["entries"].numel() == sd["ids"].numel() == len(ids)  # 16 bytes per weighted id
    want = s.sample((6, 7), seed=3, exclude=s.ids[:6])
    for copy in (pickle.loads(pickle.dumps(s)), torch.load(_saved(sd), weights_only=True)):
        t = copy if isinstance(copy, pyneg.AliasSampler) else pyneg.UnigramSampler([1.0])
        if not isinstance(copy, pyneg.AliasSampler):
            t.__setstate__(copy)
        assert torch.equal(t.sample((6, 7), seed=3, exclude=s.ids[:6]), want) and t.power == 0.5
    other = pyneg.UnigramSampler(torch.ones(3), ids=[1, 2, 3], num_classes=BIG)
    other.load_state_dict(sd)
    assert torch.equal(other.sample((6, 7), seed=3, exclude=s.ids[:6]), want)
    before = other.state_dict()
    bad_states = {
        "unsorted": {**sd, "ids": sd["ids"].flip(0)},
        "duplicate": {**sd, "ids": torch.cat([sd["ids"][:1], sd["ids"][:-1]])},
        "out of range": {**sd, "num_classes": int(sd["ids"].max())},
        "wrong length": {**sd, "ids": sd["ids"][:-1]},
        "float ids": {**sd, "ids": sd["ids"].double()},
        "another V": {**sd, "num_classes": BIG + 1},
        "no V": {k: x for k, x in sd.items() if k != "num_classes"},
    }
    for name, state in bad_states.items():
        with pytest.raises(ValueError, match=r"state_dict|ids"):
            other.load_state_dict(state)
        after = other.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in ("entries", "ids")), name
    with pytest.raises(ValueError, match="has 1099511627776 classes but this UnigramSampler has 3"):
        pyneg.UnigramSampler(torch.ones(3)).load_state_dict(sd)


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("mmap", [True, False])
def test_sparse_table_files(tmp_path, mmap):
    ids, w = catalogue(BIG, n=100, seed=5)
    s = pyneg.UnigramSampler(w, ids=ids, num_classes=BIG)
    path = os.path.join(tmp_path, "sparse.pyneg")
    s.save(path)
    t = pyneg.AliasSampler.load(path, mmap=mmap)
    assert type(t) is pyneg.UnigramSampler and t.num_classes == BIG and torch.equal(t.ids, s.ids)
    ex = s.ids[:10]
    assert torch.equal(
        t.sample((9, 8), seed=1, exclude=ex.repeat(9, 1)), s.sample((9, 8), seed=1, exclude=ex.repeat(9, 1))
    )
    assert torch.equal(t.sample((9, 8), seed=2, unique=True), s.sample((9, 8), seed=2, unique=True))
    assert torch.equal(t.log_prob(s.ids), s.log_prob(s.ids))
    if mmap:  # a mapped sampler pickles as its file
        blob = pickle.dumps(t)
        assert len(blob) < 1000
        assert torch.equal(pickle.loads(blob).sample(100, seed=4), s.sample(100, seed=4))
    # A file whose ids are not sorted (checksums intact: written so) is refused by name.
    bad = os.path.join(tmp_path, "bad.pyneg")
    sd = s.state_dict()
    m = np.empty(len(ids), dtype=np.int64)
    _core.alias_class_masses(sd["entries"].numpy(), m)
    arrays = {"entries": sd["entries"].numpy(), "mass": m, "ids": sd["ids"].flip(0).numpy().copy()}
    params = {"num_classes": BIG, "num_positive": s.num_positive, "power": 0.75}
    _tablefile.write_table_file(bad, "UnigramSampler", params, arrays)
    with pytest.raises(ValueError, match="bad.pyneg.*ids must be sorted"):
        pyneg.AliasSampler.load(bad, mmap=mmap)
    _tablefile.write_table_file(
        bad, "UnigramSampler", {**params, "num_classes": 2**50 + 1}, {**arrays, "ids": sd["ids"].numpy()}
    )
    with pytest.raises(ValueError, match="out of range"):
        pyneg.AliasSampler.load(bad, mmap=mmap)


def test_sparse_sampler_through_the_operators():
    # Inside a torch function mode the samplers go through torch.ops.pyneg (what
    # torch.compile traces): the same draws and log-probabilities as eager calls.
    ids, w = catalogue(BIG, n=50, seed=6)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=BIG)
    ex = s.ids[:3].repeat(4, 1)
    want = [
        s.sample((4, 5), seed=1),
        s.sample((4, 5), seed=1, exclude=ex),
        s.sample((4, 5), seed=1, unique=True),
        s.log_prob(s.ids),
    ]

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Mode():
        got = [
            s.sample((4, 5), seed=1),
            s.sample((4, 5), seed=1, exclude=ex),
            s.sample((4, 5), seed=1, unique=True),
            s.log_prob(s.ids),
        ]
        with pytest.raises(ValueError, match=f"exclude holds id {BIG}"):
            s.sample((1, 2), seed=1, exclude=torch.tensor([BIG]))
    for g, x in zip(got, want):
        assert torch.equal(g, x)


def test_sparse_ids_in_losses_bank_and_estimator():
    v = PAST
    ids, w = catalogue(v, n=200, seed=7)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=v)
    g = torch.Generator().manual_seed(0)
    b, d, k = 6, 8, 16
    q, pos = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    pos_ids = s.ids[torch.arange(b) * 7]
    neg_ids = s.sample(k, seed=3, exclude=None)
    table = {int(i): torch.randn(d, generator=g) for i in torch.cat([pos_ids, neg_ids]).tolist()}
    neg = torch.stack([table[int(i)] for i in neg_ids.tolist()])
    neg[0] = pos[2]
    neg_ids[0] = pos_ids[2]  # an accidental hit past 2**31
    log_q = s.log_expected_count(neg_ids, k).float()
    loss = pyneg.functional.sampled_softmax_loss(
        q, pos, neg, negative_log_q=log_q, positive_ids=pos_ids, negative_ids=neg_ids, reduction="none"
    )
    logits = torch.cat([(q * pos).sum(1, keepdim=True), q @ neg.T - log_q], 1)
    hit = pos_ids.unsqueeze(1) == neg_ids.unsqueeze(0)
    logits[:, 1:][hit] = float("-inf")
    assert hit[2, 0]
    torch.testing.assert_close(loss, -torch.log_softmax(logits, 1)[:, 0])
    cand = s.sample_candidates(k, pos_ids, seed=4)
    nce = pyneg.functional.nce_loss(
        q, pos, torch.stack([table.get(int(i), torch.zeros(d)) for i in cand.sampled_candidates.tolist()]),
        positive_log_q=cand.true_expected_count.log().float(),
        negative_log_q=cand.sampled_expected_count.log().float(),
        positive_ids=pos_ids, negative_ids=cand.sampled_candidates,
    )  # fmt: skip
    assert torch.isfinite(nce)
    bank = pyneg.MemoryBank(8, d)
    bank.enqueue(pos, pos_ids, s.log_prob(pos_ids).float())
    assert bank.ids.tolist() == pos_ids.tolist() and torch.isfinite(bank.log_q).all()
    est = pyneg.FrequencyEstimator(1024)
    for step in range(5):
        est.update(s.sample(32, seed=step))
    p = est.probability(s.ids)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.isfinite(est.log_prob(torch.tensor([v - 1])))


def test_sparse_memory_is_16_bytes_per_weighted_id():
    ids, w = catalogue(BIG, n=1000, seed=8)
    s = pyneg.AliasSampler(w, ids=ids, num_classes=BIG)
    d = s._dist
    assert d.entries_np.nbytes + d.ids_np.nbytes == 16 * len(ids)
    assert d.mass_np is None
    s.log_prob(s.ids[:3])
    assert d.mass_np.nbytes == 8 * len(ids)  # derived on demand: 24 bytes per weighted id
    assert "ids: 1000 with weight" in repr(s) and pyneg.AliasSampler([1.0]).ids is None
    with pytest.raises(MemoryError, match="ids has 1099511627776 elements"):
        s.log_prob(torch.zeros(1, dtype=torch.int64).expand(2**40))
    with pytest.raises(ValueError, match="probs of a sparse AliasSampler of 1099511627776 classes"):
        s.probs  # noqa: B018
    small = pyneg.AliasSampler([1.0, 3.0], ids=[7, 2], num_classes=10)
    torch.testing.assert_close(small.probs, torch.tensor([0, 0, 0.75, 0, 0, 0, 0, 0.25, 0, 0], dtype=torch.float64))


def test_sparse_sampler_inside_torch_compile():
    s = pyneg.AliasSampler([1.0, 2.0, 5.0, 0.5], ids=[2**35, 7, BIG - 1, 12], num_classes=BIG)
    ex = torch.tensor([[7], [BIG - 1]])

    def step(seed, out):
        a = s.sample((2, 3), seed=seed, exclude=ex)
        b = s.sample((2, 3), seed=seed, unique=True)
        s.sample((2, 3), seed=seed, out=out)
        return a, b, s.log_prob(a), s.log_expected_count(b, 3)

    out_eager, out_compiled = torch.empty(2, 3, dtype=torch.int64), torch.empty(2, 3, dtype=torch.int64)
    want = step(torch.tensor(5), out_eager)
    got = torch.compile(step, fullgraph=True, backend="eager")(torch.tensor(5), out_compiled)
    assert all(torch.equal(x, y) for x, y in zip(want, got)) and torch.equal(out_eager, out_compiled)
    assert torch.isin(out_compiled, s.ids).all()


@pytest.mark.parametrize("n", [1, 2, 3, 15, 16, 17, 1000, 100_003])
def test_lookup_and_gather_kernels_match_numpy(n):
    rng = np.random.default_rng(n)
    ids = np.unique(rng.integers(0, BIG, size=2 * n, dtype=np.int64))[:n]
    assert len(ids) == n
    query = np.concatenate([ids, rng.integers(0, BIG, size=5000, dtype=np.int64), [-1, 0, BIG - 1], ids - 1, ids + 1])
    query = query[(query >= -1) & (query < BIG)]
    rng.shuffle(query)
    slots = np.empty_like(query)
    _core.sparse_lookup(ids, BIG, query, slots, True, "q", 2)
    pos = np.searchsorted(ids, query).clip(max=n - 1)
    want = np.where((ids[pos] == query) & (query >= 0), pos, -1)
    assert np.array_equal(slots, want)
    drawn = rng.integers(0, n, size=70_000, dtype=np.int64)
    got = drawn.copy()
    _core.sparse_gather(ids, BIG, got, 2)
    assert np.array_equal(got, ids[drawn])
    with pytest.raises(ValueError, match="is not a sparse sampler's id array"):
        _core.sparse_gather(ids, BIG, np.array([n], dtype=np.int64), 1)
    with pytest.raises(ValueError, match="q holds id -1"):
        _core.sparse_lookup(ids, BIG, np.array([-1]), np.empty(1, dtype=np.int64), False, "q", 1)

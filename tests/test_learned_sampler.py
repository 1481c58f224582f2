"""LearnedUnigramSampler: counts learned from a stream, a table rebuilt on a schedule,
and probabilities / expected counts that always describe the table drawn from."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import numpy as np
import pytest
import torch
from scipy import stats

import pyneg
from pyneg import LearnedUnigramSampler

V = 40


def _stream(sampler, steps=50, batch=64, seed=0):
    """Feeds ``steps`` batches of Zipf-like ids; returns the reference counts (initial 1 + occurrences)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, sampler.num_classes + 1)
    p /= p.sum()
    ref = np.full(sampler.num_classes, sampler.initial_count)
    for _ in range(steps):
        ids = rng.choice(sampler.num_classes, size=batch, p=p)
        np.add.at(ref, ids, 1.0)
        sampler.update(torch.from_numpy(ids))
    return ref


def _chi2_p(draws: torch.Tensor, probs: np.ndarray) -> float:
    obs = np.bincount(draws.reshape(-1).numpy(), minlength=probs.size)
    return float(stats.chisquare(obs, probs / probs.sum() * obs.sum()).pvalue)


def _snapshot(sampler):
    return sampler.probs, sampler.counts, sampler.pending_updates


# ------------------------------------------------------------------ drawing
def test_draws_follow_the_counts_after_a_stream():
    s = LearnedUnigramSampler(V, rebuild_every=10**6)
    ref = _stream(s)
    np.testing.assert_array_equal(s.counts.numpy(), ref)  # reference: np.add.at
    s.rebuild()
    np.testing.assert_allclose(s.probs.numpy(), ref / ref.sum(), rtol=2**-38, atol=2**-32)  # the table's resolution
    draws = s.sample((200_000,), seed=1)
    assert _chi2_p(draws, ref) > 1e-4
    # The same test rejects a sampler that ignored the learned counts (its initial uniform
    # table), one that drew from counts ** 0.75 (word2vec's smoothing) and one that forgot
    # the initial count.
    assert _chi2_p(draws, np.ones(V)) < 1e-6
    assert _chi2_p(draws, ref**0.75) < 1e-6
    assert _chi2_p(draws, ref - 1.0 + 1e-9) < 1e-4  # fails the threshold the right counts pass


def test_probs_and_expected_counts_describe_the_drawn_table_between_rebuilds():
    s = LearnedUnigramSampler(V, rebuild_every=20)
    ref_built = _stream(s, steps=20)  # the 20th update rebuilt the table
    assert s.pending_updates == 0
    _stream(s, steps=7, seed=5)  # live counts move on, the table does not
    assert s.pending_updates == 7
    ref = pyneg.AliasSampler(torch.from_numpy(ref_built))  # an independent table of the built counts
    ids = torch.arange(V)
    torch.testing.assert_close(s.probs, ref.probs, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.log_prob(ids), ref.log_prob(ids), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.log_expected_count(ids, 64), torch.log(64 * ref.probs), rtol=1e-12, atol=0)
    assert not torch.allclose(s.probs, s.counts / s.counts.sum())  # the live counts differ
    # What is drawn is that table: same draws as the independent table, unique and exclude included.
    assert torch.equal(s.sample((5000,), seed=3), ref.sample((5000,), seed=3))
    excl = torch.tensor([[0, 1], [2, -1]])
    assert torch.equal(
        s.sample((2, 10), seed=4, unique=True, exclude=excl), ref.sample((2, 10), seed=4, unique=True, exclude=excl)
    )
    a = s.sample_candidates(16, torch.tensor([[1], [2]]), seed=6)
    b = ref.sample_candidates(16, torch.tensor([[1], [2]]), seed=6)
    for x, y in zip(a, b):
        assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))
    # After the next rebuild everything describes the new counts.
    live = s.counts
    s.rebuild()
    torch.testing.assert_close(s.probs, live / live.sum(), rtol=2**-38, atol=2**-32)  # the table's resolution
    torch.testing.assert_close(s.log_expected_count(ids, 64), torch.log(64 * live / live.sum()), rtol=0, atol=1e-8)


def test_rebuild_schedule_every_n_updates():
    s = LearnedUnigramSampler(5, rebuild_every=3)
    before = s.probs
    draws = s.sample((1000,), seed=0)
    assert s.update(torch.tensor([4, 4, 4, 4])) is False
    assert s.update([4]) is False
    assert torch.equal(s.probs, before) and torch.equal(s.sample((1000,), seed=0), draws)
    assert s.pending_updates == 2
    assert s.update(torch.tensor([], dtype=torch.int64)) is True  # every call is one update
    torch.testing.assert_close(s.probs, torch.tensor([1, 1, 1, 1, 6], dtype=torch.float64) / 10)
    assert s.pending_updates == 0 and not torch.equal(s.sample((1000,), seed=0), draws)


def test_rebuild_schedule_on_growth():
    s = LearnedUnigramSampler(10, rebuild_every=10**6, rebuild_growth=2.0)  # mass 10
    assert s.update(torch.zeros(9, dtype=torch.int64)) is False  # mass 19 < 20
    assert float(s.probs[0]) == pytest.approx(0.1, rel=1e-12)
    assert s.update(torch.tensor([1])) is True  # mass 20 = 2 x 10
    assert float(s.probs[0]) == pytest.approx(10 / 20, rel=1e-12)
    assert s.update(torch.zeros(19, dtype=torch.int64)) is False  # 39 < 40
    assert s.update(torch.tensor([1])) is True


# ------------------------------------------------------------ reproducibility
def test_reproducible_by_seed():
    a, b = LearnedUnigramSampler(V, rebuild_every=7), LearnedUnigramSampler(V, rebuild_every=7)
    _stream(a, steps=30)
    _stream(b, steps=30)
    assert torch.equal(a.sample((4, 50), seed=11), b.sample((4, 50), seed=11))
    assert not torch.equal(a.sample((4, 50), seed=11), a.sample((4, 50), seed=12))


def _roundtrips(s):
    yield "state_dict", _loaded(s)
    yield "deepcopy", copy.deepcopy(s)
    yield "pickle", pickle.loads(pickle.dumps(s))
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    t = LearnedUnigramSampler(s.num_classes)
    t.load_state_dict(torch.load(buf, weights_only=True))
    yield "torch.save(state_dict)", t
    buf = io.BytesIO()
    torch.save(s, buf)
    buf.seek(0)
    yield "torch.save", torch.load(buf, weights_only=False)


def _loaded(s):
    t = LearnedUnigramSampler(s.num_classes)
    t.load_state_dict(s.state_dict())
    return t


def test_round_trips_continue_exactly():
    s = LearnedUnigramSampler(V, rebuild_every=9, rebuild_growth=1.5)
    _stream(s, steps=13)  # mid-schedule: the table and the live counts differ
    for how, t in _roundtrips(s):
        assert type(t) is LearnedUnigramSampler, how
        assert torch.equal(t.probs, s.probs) and torch.equal(t.counts, s.counts), how
        assert t.pending_updates == s.pending_updates and t.rebuild_growth == 1.5, how
        assert torch.equal(t.sample((3, 30), seed=2), s.sample((3, 30), seed=2)), how
        u = copy.deepcopy(s)
        _stream(u, steps=11, seed=9)
        _stream(t, steps=11, seed=9)  # crosses a rebuild in both
        assert torch.equal(t.probs, u.probs) and torch.equal(t.counts, u.counts), how
        assert torch.equal(t.sample((3, 30), seed=2), u.sample((3, 30), seed=2)), how
        t.update(torch.tensor([0]))
        assert not torch.equal(t.counts, s.counts), f"{how}: the copy shares counts"


def test_state_dict_refuses_other_states_and_changes_nothing():
    s = LearnedUnigramSampler(V)
    _stream(s, steps=3)
    before = _snapshot(s)
    good = s.state_dict()
    bad_states = [
        pyneg.UnigramSampler(np.ones(V)).state_dict(),
        {**good, "counts": good["counts"][:-1]},
        {**good, "counts": good["counts"].float()},
        {**good, "counts": -good["counts"]},
        {**good, "rebuild_every": 0},
        {**good, "rebuild_growth": 0.5},
        {**good, "initial_count": "1"},
        {k: v for k, v in good.items() if k != "built_mass"},
    ]
    for bad in bad_states:
        with pytest.raises(ValueError, match="state_dict"):
            s.load_state_dict(bad)
        now = _snapshot(s)
        assert torch.equal(now[0], before[0]) and torch.equal(now[1], before[1]) and now[2] == before[2]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("ids", "exc", "match"),
    [
        (torch.tensor([0, V]), ValueError, "ids"),
        (torch.tensor([-1]), ValueError, "ids"),
        (torch.tensor([1.0]), TypeError, "ids"),
        (torch.tensor([True]), TypeError, "ids"),
        (np.array([2**64 - 1], dtype=np.uint64), ValueError, "ids"),
        (torch.empty(3, dtype=torch.int64, device="meta"), ValueError, "ids"),
        (torch.tensor([[0, 1]]).to_sparse(), TypeError, "ids"),
        ("3", TypeError, "ids"),
    ],
)
def test_bad_update_is_refused_and_changes_nothing(ids, exc, match):
    s = LearnedUnigramSampler(V, rebuild_every=2)
    s.update(torch.tensor([1, 2]))
    before = _snapshot(s)
    with pytest.raises(exc, match=match):
        s.update(ids)
    now = _snapshot(s)
    assert torch.equal(now[0], before[0]) and torch.equal(now[1], before[1]) and now[2] == before[2]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
        ({"num_classes": True}, TypeError, "num_classes"),
        ({"num_classes": 3, "initial_count": 0.0}, ValueError, "initial_count"),
        ({"num_classes": 3, "initial_count": float("nan")}, ValueError, "initial_count"),
        ({"num_classes": 3, "initial_count": True}, TypeError, "initial_count"),
        ({"num_classes": 3, "rebuild_every": 0}, ValueError, "rebuild_every"),
        ({"num_classes": 3, "rebuild_every": True}, TypeError, "rebuild_every"),
        ({"num_classes": 3, "rebuild_growth": 1.0}, ValueError, "rebuild_growth"),
        ({"num_classes": 3, "rebuild_growth": "2"}, TypeError, "rebuild_growth"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LearnedUnigramSampler(**kwargs)


def test_set_counts_and_its_refusals():
    s = LearnedUnigramSampler(4, rebuild_every=1)
    assert s.set_counts(torch.tensor([0, 3]), torch.tensor([5.0, 2.0])) is True
    torch.testing.assert_close(s.probs, torch.tensor([5, 1, 1, 2], dtype=torch.float64) / 9)
    before = _snapshot(s)
    for ids, counts, exc, match in [
        ([0, 0], [1.0, 2.0], ValueError, "repeat"),
        ([0], [0.0], ValueError, "counts"),
        ([0], [float("inf")], ValueError, "counts"),
        ([0, 1], [1.0], ValueError, "counts"),
        ([0], [True], TypeError, "counts"),
        ([4], [1.0], ValueError, "ids"),
    ]:
        with pytest.raises(exc, match=match):
            s.set_counts(torch.tensor(ids), torch.tensor(counts))
        now = _snapshot(s)
        assert torch.equal(now[0], before[0]) and torch.equal(now[1], before[1]) and now[2] == before[2]


# ----------------------------------------------------------------- estimator
def test_from_estimator_uses_the_streaming_estimate():
    est = pyneg.FrequencyEstimator(1 << 12, alpha=0.05)
    keys = torch.tensor([10**12, 7, 123456789, 42])  # ids are keys: no V is known
    rng = np.random.default_rng(0)
    for _ in range(400):
        est.update(keys[torch.from_numpy(rng.choice(4, size=2, p=[0.5, 0.3, 0.15, 0.05]))])
    s = LearnedUnigramSampler.from_estimator(est, keys, rebuild_every=5)
    p = est.probability(keys).double() * est.step
    torch.testing.assert_close(s.counts, p)
    torch.testing.assert_close(s.probs, p / p.sum(), rtol=2**-38, atol=2**-32)  # the table's resolution
    assert keys[s.sample((10,), seed=0)].shape == (10,)
    with pytest.raises(TypeError, match="estimator"):
        LearnedUnigramSampler.from_estimator(object(), keys)
    with pytest.raises(ValueError, match="keys"):
        LearnedUnigramSampler.from_estimator(est, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="keys"):
        LearnedUnigramSampler.from_estimator(est, torch.tensor([], dtype=torch.int64))


# -------------------------------------------------------------------- threads
def test_concurrent_updates_are_all_counted():
    s = LearnedUnigramSampler(V, rebuild_every=5)
    ids = torch.arange(V).repeat(10)

    def work():
        for _ in range(50):
            s.update(ids)
            s.sample((100,), seed=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(s.counts, torch.full((V,), 1.0 + 4 * 50 * 10, dtype=torch.float64))
    assert s.pending_updates == 0  # 200 updates, a multiple of 5

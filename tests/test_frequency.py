"""FrequencyEstimator against a plain-Python transcription of its update rule,
and against the true inclusion probabilities of a simulated Zipfian stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyneg
from pyneg import _core

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def bucket(item: int, k: int, num_buckets: int) -> int:
    return (mix64((item + (k + 1) * GOLDEN) & MASK) * num_buckets) >> 64


class Reference:
    """The estimator written out one id at a time, as the docstring states it."""

    def __init__(self, num_buckets: int, alpha: float, num_hashes: int) -> None:
        self.n, self.alpha, self.h = num_buckets, alpha, num_hashes
        self.last = [[0] * num_buckets for _ in range(num_hashes)]
        self.gap = [[0.0] * num_buckets for _ in range(num_hashes)]
        self.step = 0

    def update(self, ids) -> None:
        self.step += 1
        t = self.step
        for k in range(self.h):
            for item in ids:
                b = bucket(int(item), k, self.n)
                a = self.last[k][b]
                if a == t:  # once per step
                    continue
                self.gap[k][b] = float(t) if a == 0 else (1.0 - self.alpha) * self.gap[k][b] + self.alpha * (t - a)
                self.last[k][b] = t

    def probability(self, item: int) -> float:
        gaps = []
        for k in range(self.h):
            b = bucket(item, k, self.n)
            gaps.append(self.step + 1.0 if self.last[k][b] == 0 else self.gap[k][b])
        return 1.0 / max(gaps)


def test_hash_is_splitmix64():
    # splitmix64 seeded with 0 first outputs 0xE220A8397B1DCDAF: hash 0 of id 0.
    assert mix64(GOLDEN) == 0xE220A8397B1DCDAF
    assert _core._testing.frequency_bucket(0, 0, (1 << 31) - 1) == (0xE220A8397B1DCDAF * ((1 << 31) - 1)) >> 64
    rng = np.random.default_rng(0)
    for item in rng.integers(0, 2**62, 50).tolist() + [0, 1, 2**63 - 1]:
        for k in range(3):
            for n in (1, 7, 1000, (1 << 31) - 1):
                assert _core._testing.frequency_bucket(item, k, n) == bucket(item, k, n)


@pytest.mark.parametrize("num_hashes,alpha", [(1, 0.01), (2, 0.3), (3, 1.0)])
def test_matches_plain_python_exactly(num_hashes, alpha):
    # Few buckets: collisions and repeats within a step are frequent.
    rng = np.random.default_rng(num_hashes)
    est = pyneg.FrequencyEstimator(37, alpha=alpha, num_hashes=num_hashes)
    ref = Reference(37, alpha, num_hashes)
    queries = torch.arange(200)
    for _ in range(60):
        ids = torch.from_numpy(rng.integers(0, 200, int(rng.integers(1, 30))))
        est.update(ids)
        ref.update(ids.tolist())
        sd = est.state_dict()
        assert sd["step"] == ref.step
        assert sd["last_step"].tolist() == ref.last
        assert sd["gap"].tolist() == ref.gap  # bit for bit
        expected = torch.tensor([ref.probability(i) for i in queries.tolist()], dtype=torch.float64)
        assert torch.equal(est.probability(queries), expected.float())
        assert torch.allclose(est.log_prob(queries), torch.log(expected).float(), rtol=0, atol=1e-6)


def test_zipf_stream_converges_to_inclusion_probabilities():
    num_items, batch, steps = 10_000, 1_000, 2_000
    p = 1.0 / np.arange(1, num_items + 1)
    p /= p.sum()
    rng = np.random.default_rng(0)
    est = pyneg.FrequencyEstimator(1 << 18)
    for _ in range(steps):
        est.update(torch.from_numpy(rng.choice(num_items, size=batch, p=p)))
    top = torch.arange(100)  # ids are ranks: the 100 most frequent
    true = torch.from_numpy(1.0 - (1.0 - p[:100]) ** batch)
    rel = (est.probability(top).double() - true).abs() / true
    assert float(rel.median()) <= 0.05, float(rel.median())
    assert float(rel.max()) <= 0.25
    # Repeats within a batch count once: counting every sighting would report
    # expected counts (batch * p, up to ~100 for the top id), not probabilities.
    assert float(est.probability(top).max()) <= 1.0


def test_first_sighting_and_unseen_ids():
    est = pyneg.FrequencyEstimator(1 << 12, alpha=0.5, num_hashes=2)
    assert est.probability([9]).item() == 1.0  # before any update: 1 / (0 + 1)
    est.update([1])
    est.update([2])
    est.update([3])
    # Id 3's cells are first hit at step 3: B = 3 (the gap since the start).
    assert est.probability([3]).item() == pytest.approx(1 / 3)
    assert est.probability([4]).item() == pytest.approx(1 / 4)  # never seen: 1 / (step + 1)
    est.update([3, 3, 3])  # once per step, whatever the repeats
    assert est.probability([3]).item() == pytest.approx(1 / (0.5 * 3 + 0.5 * 1))
    assert est.step == 4


def test_thread_count_does_not_change_the_result():
    ids = torch.from_numpy(np.random.default_rng(1).zipf(1.3, 200_000) % 50_000)
    states = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            est = pyneg.FrequencyEstimator(1 << 14, num_hashes=3)
            est.update(ids)
            est.update(ids[::3])  # non-contiguous input is copied, not misread
            states.append(est.state_dict())
    finally:
        torch.set_num_threads(before)
    assert torch.equal(states[0]["gap"], states[1]["gap"])
    assert torch.equal(states[0]["last_step"], states[1]["last_step"])


def test_inputs_of_every_kind_and_shape():
    est = pyneg.FrequencyEstimator(1 << 10)
    est.update(np.array([1, 2], dtype=np.int32))
    est.update([2, 3])
    est.update(torch.tensor([3], dtype=torch.int16))
    q = torch.tensor([[1, 2], [3, 4]])
    p = est.probability(q)
    assert p.shape == (2, 2) and p.dtype == torch.float32
    assert torch.equal(p.reshape(-1), est.probability(q.reshape(-1)))
    assert est.probability(torch.empty(0, dtype=torch.int64)).shape == (0,)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(2)
    a = pyneg.FrequencyEstimator(101, alpha=0.1, num_hashes=2)
    for _ in range(10):
        a.update(torch.from_numpy(rng.integers(0, 500, 40)))
    b = pyneg.FrequencyEstimator(101, alpha=0.1, num_hashes=2)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        ids = torch.from_numpy(rng.integers(0, 500, 40))
        a.update(ids)
        b.update(ids)
    q = torch.arange(500)
    assert torch.equal(a.probability(q), b.probability(q)) and a.step == b.step == 20
    assert torch.equal(a.state_dict()["gap"], b.state_dict()["gap"])


@pytest.mark.parametrize("kwargs", [dict(num_buckets=102), dict(num_hashes=3), dict(alpha=0.2)])
def test_load_state_dict_of_another_shape_raises_and_changes_nothing(kwargs):
    args = dict(num_buckets=101, alpha=0.1, num_hashes=2)
    a = pyneg.FrequencyEstimator(**args)
    a.update([1, 2, 3])
    before = a.state_dict()
    other = pyneg.FrequencyEstimator(**{**args, **kwargs})
    other.update([4])
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        a.load_state_dict(other.state_dict())
    bad = dict(before, gap=before["gap"][:1])
    with pytest.raises(ValueError, match="gap"):
        a.load_state_dict(bad)
    assert a.step == 1 and torch.equal(a.state_dict()["gap"], before["gap"])


def _set_hit_gaps(value):
    def bad(sd):
        gap = sd["gap"].clone()
        gap[sd["last_step"] > 0] = value
        return gap

    return bad


@pytest.mark.parametrize(
    "key,bad,error",
    [
        ("gap", _set_hit_gaps(math.nan), ValueError),
        ("gap", _set_hit_gaps(math.inf), ValueError),
        ("gap", _set_hit_gaps(-2.0), ValueError),  # p < 0, log p NaN
        ("gap", _set_hit_gaps(0.0), ValueError),  # p = inf
        ("gap", lambda sd: torch.empty(2, 101, dtype=torch.float64, device="meta"), (ValueError, TypeError)),
        ("gap", lambda sd: sd["gap"].to_sparse(), TypeError),
        ("last_step", lambda sd: sd["last_step"].to_sparse(), TypeError),
        ("step", lambda sd: 2**63 - 1, ValueError),  # beyond 2**53 steps are not exact in the float64 cells
        ("step", lambda sd: 2**70, ValueError),
    ],
)
def test_load_state_dict_with_a_tampered_tensor_raises_and_changes_nothing(key, bad, error):
    a = pyneg.FrequencyEstimator(101, alpha=0.1)
    a.update([1, 2, 3])
    before = a.state_dict()
    other = pyneg.FrequencyEstimator(101, alpha=0.1)
    for ids in ([4, 5], [5, 6], [4]):
        other.update(ids)
    sd = other.state_dict()
    sd[key] = bad(sd)
    with pytest.raises(error, match=key):
        a.load_state_dict(sd)
    after = a.state_dict()
    assert after["step"] == 1 and torch.equal(after["gap"], before["gap"])
    assert torch.equal(after["last_step"], before["last_step"])
    a.update([1])  # still usable
    assert a.step == 2


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        (dict(num_buckets=0), ValueError, "num_buckets"),
        (dict(num_buckets=-5), ValueError, "num_buckets"),
        (dict(num_buckets=2**40), ValueError, "num_buckets"),
        (dict(num_buckets=1.5), TypeError, "num_buckets"),
        (dict(num_buckets=8, alpha=0.0), ValueError, "alpha"),
        (dict(num_buckets=8, alpha=1.5), ValueError, "alpha"),
        (dict(num_buckets=8, alpha=math.nan), ValueError, "alpha"),
        (dict(num_buckets=8, alpha="0.1"), TypeError, "alpha"),
        (dict(num_buckets=8, num_hashes=0), ValueError, "num_hashes"),
        (dict(num_buckets=8, sync=1), TypeError, "sync"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        pyneg.FrequencyEstimator(**kwargs)


@pytest.mark.parametrize(
    "ids,error",
    [
        (torch.tensor([1, -2, 3]), ValueError),
        (torch.tensor([1.0, 2.0]), TypeError),
        (torch.tensor([True]), TypeError),
        (torch.tensor([[1, 2]]), ValueError),
        (torch.tensor(3), ValueError),
        (torch.empty(0, dtype=torch.int64), ValueError),
        ("abc", TypeError),
    ],
)
def test_bad_ids_raise_and_change_nothing(ids, error):
    est = pyneg.FrequencyEstimator(64)
    est.update([5, 6])
    before = est.state_dict()
    with pytest.raises(error, match="ids"):
        est.update(ids)
    after = est.state_dict()
    assert after["step"] == 1 and torch.equal(after["gap"], before["gap"])
    assert torch.equal(after["last_step"], before["last_step"])
    with pytest.raises(ValueError, match="ids"):
        est.probability(torch.tensor([-1]))

"""num_tries of unique draws: TensorFlow's count of draws with replacement.

A row drawn by rejection reports the draws it took (duplicates and excluded ids
included), TensorFlow's ``num_tries``. A row that rejection cannot finish
(``8 k + 1024`` draws) is completed from its exact CDF, which draws no more
candidates, so the count is undefined: every kernel (alias, uniform,
log-uniform) then reports ``max(draws taken, t*)`` where t* solves
``sum over allowed i of 1 - (1 - p_i)^t = k - 1/2`` (the expected number of
draws that give k distinct allowed ids), rounded up.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyneg
from pyneg import _core

expected_tries = _core._testing.analytic_expected_tries


def log_uniform_p(v: int) -> np.ndarray:
    k = np.arange(v, dtype=np.float64)
    return np.log1p(1.0 / (k + 1.0)) / math.log1p(v)


def exact_tries(p: np.ndarray, excluded, k: int) -> int:
    """t* by bisection on the exact sum (the reference)."""
    allowed = np.delete(p, np.asarray(excluded, dtype=np.int64))
    log1m = np.log1p(-allowed)

    def distinct(t: float) -> float:
        return float(-np.expm1(t * log1m).sum())

    lo = hi = float(k)
    while distinct(hi) < k - 0.5:
        hi *= 2.0
    for _ in range(80):
        if hi - lo <= 0.5:
            break
        mid = 0.5 * (lo + hi)
        if distinct(mid) < k - 0.5:
            lo = mid
        else:
            hi = mid
    return math.ceil(hi)


@pytest.mark.parametrize(
    "v, excluded, k",
    [
        (40, [], 12),
        (1000, [], 900),
        (1000, [0, 1, 2, 500], 600),
        (5000, [0, 3, 4999], 3000),  # ids past 1024: the integrated tail
        (3_000_000, [0, 1, 2_999_999], 2_000_000),
        (3_000_000, [], 50),
    ],
)
def test_log_uniform_expected_tries_match_the_exact_sum(v, excluded, k):
    got = expected_tries(1, v, np.array(excluded, dtype=np.int64), k)
    want = exact_tries(log_uniform_p(v), excluded, k)
    assert abs(got - want) <= max(1, 1e-6 * want), (got, want)


def test_uniform_expected_tries_closed_form():
    v, k = 1000, 700
    got = expected_tries(0, v, np.array([1, 2, 3], dtype=np.int64), k)
    assert abs(got - exact_tries(np.full(v, 1.0 / v), [1, 2, 3], k)) <= 1


def test_expected_tries_at_2_to_the_40():
    v = 2**40
    a = expected_tries(1, v, np.array([], dtype=np.int64), 1000)
    b = expected_tries(1, v, np.array([], dtype=np.int64), 100_000)
    c = expected_tries(1, v, np.arange(10, dtype=np.int64), 100_000)  # the heaviest ids excluded: more draws
    assert 1000 <= a < b < c < 2**62
    with pytest.raises(ValueError, match="k must be in"):
        expected_tries(1, 10, np.arange(5, dtype=np.int64), 6)


@pytest.mark.parametrize("cls, v, k", [(pyneg.LogUniformSampler, 1000, 900), (pyneg.UniformSampler, 10_000, 10_000)])
def test_rows_finished_from_the_cdf_report_the_expected_tries(cls, v, k):
    # Both need more than 8 k + 1024 draws on average (the uniform one: the coupon collector).
    s = cls(v)
    cand = s.sample_candidates(k, seed=1, unique=True)
    assert len(set(cand.sampled_candidates.tolist())) == k
    want = max(8 * k + 1024, expected_tries(cls._KIND, v, np.array([], dtype=np.int64), k))
    assert cand.num_tries == want
    assert want > 8 * k + 1024  # the expected count, not the candidates drawn
    # Rows sharing an exclusion list report the same count (computed once per list).
    ex = torch.tensor([0, 1, 2])
    k = k - 3
    ids, tries = s._sample((3, k), ex.repeat(3, 1), True, None, 2, 0, None, None)
    assert tries.tolist() == [max(8 * k + 1024, expected_tries(cls._KIND, v, ex.numpy(), k))] * 3
    # The expected counts use it: 1 - (1 - p)^tries.
    p = s.probability(cand.sampled_candidates)
    torch.testing.assert_close(cand.sampled_expected_count, 1 - (1 - p) ** want, rtol=1e-12, atol=0)


def test_rows_finished_by_rejection_report_the_draws_taken():
    # No fallback: num_tries is the number of draws (>= k, equal to k without collisions).
    s = pyneg.LogUniformSampler(2**40)
    cand = s.sample_candidates(64, torch.tensor([[0, 2**35]]), seed=3, unique=True)
    assert 64 <= cand.num_tries < 8 * 64 + 1024
    heavy = pyneg.LogUniformSampler(100).sample_candidates(40, seed=4, unique=True)
    assert 40 < heavy.num_tries < 8 * 40 + 1024  # collisions counted

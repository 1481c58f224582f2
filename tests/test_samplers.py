"""Samplers against their definitions: goodness of fit (scipy chi-square),
exclusion, sampling without replacement, determinism and persistence."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

import pyneg
from pyneg import _core
from pyneg._core import _testing

ALPHA = 1e-4  # a correct sampler fails a test with probability 1e-4; a wrong one virtually always


def chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor, *, min_expected: float = 5.0) -> float:
    """p-value of a chi-square goodness-of-fit test, pooling classes with small expected counts.

    Classes of zero probability must never be drawn: that is asserted, not tested.
    """
    s = samples.reshape(-1).cpu()
    n = s.numel()
    p = probs.to(torch.float64).cpu()
    counts = torch.bincount(s, minlength=p.numel()).to(torch.float64)
    assert counts.numel() == p.numel(), "an id outside [0, V) was drawn"
    assert counts[p == 0].sum() == 0, "a class of probability zero was drawn"
    exp = p * n
    big = exp >= min_expected
    obs = counts[big].tolist()
    ex = exp[big].tolist()
    rest_exp = float(exp[~big].sum())
    if rest_exp > 0:
        obs.append(float(counts[~big].sum()))
        ex.append(rest_exp)
    if len(obs) < 2:
        return 1.0
    ex = np.asarray(ex)
    ex *= n / ex.sum()  # guard float drift in the pooled bin
    return float(stats.chisquare(np.asarray(obs), ex).pvalue)


def zipf(v: int, a: float = 1.1) -> torch.Tensor:
    return 1.0 / torch.arange(1, v + 1, dtype=torch.float64) ** a


WEIGHTS = {
    "v1": torch.tensor([3.0]),
    "v2": torch.tensor([1.0, 3.0]),
    "v2_zero": torch.tensor([0.0, 3.0]),
    "small": torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5]),
    "zipf_1000": zipf(1000),
    "many_zeros": torch.where(
        torch.arange(500) % 7 == 0, torch.rand(500, generator=torch.Generator().manual_seed(1)) + 0.1, torch.zeros(500)
    ),
    "20_orders": torch.logspace(-10, 10, 41, dtype=torch.float64),
    "uniform_4097": torch.ones(4097),
}


def assert_within_table_bound(probs, w):
    """The compact table's precision (csrc/cpu/alias_table.h, the samplers guide):
    |P_i - p_i| <= 2**-33 / V + 2**-39 p_i for every class but the largest, and
    <= 2**-32 for the largest, p the normalised weights (computed exactly here
    with Python fractions of the float64 weights)."""
    from fractions import Fraction

    w = [Fraction(x) for x in np.asarray(w, dtype=np.float64).tolist()]
    total = sum(w)
    v = len(w)
    got = probs.numpy()
    big = int(np.argmax(got))
    for i, (pi, wi) in enumerate(zip(got, w)):
        exact = wi / total
        dev = abs(Fraction(float(pi)) - exact)
        bound = Fraction(2) ** -32 if i == big else Fraction(2) ** -33 / v + Fraction(2) ** -39 * exact
        assert dev <= bound, (i, float(dev), float(bound))


@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_alias_sampler_fits_its_probs(name):
    w = WEIGHTS[name]
    sampler = pyneg.AliasSampler(w)
    assert_within_table_bound(sampler.probs, w)
    assert sampler.probs.dtype == torch.float64
    samples = sampler.sample(200_000, seed=1234)
    assert samples.dtype == torch.int64 and samples.shape == (200_000,)
    assert chi2_pvalue(samples, sampler.probs) > ALPHA


def test_chi2_detects_a_wrong_distribution():
    # The test statistic itself must be able to fail: samples from slightly
    # different weights (10% off on one class) are rejected.
    w = zipf(50)
    wrong = w.clone()
    wrong[3] *= 1.10
    samples = pyneg.AliasSampler(wrong).sample(1_000_000, seed=5)
    assert chi2_pvalue(samples, pyneg.AliasSampler(w).probs) < ALPHA


def test_table_masses_are_exact():
    w = torch.logspace(-10, 10, 41, dtype=torch.float64)
    sampler = pyneg.AliasSampler(w)
    mass = _testing.alias_table_mass(sampler._table).astype(np.float64)
    v = sampler.num_classes
    assert int(_testing.alias_table_mass(sampler._table).astype(object).sum()) == v * 2**32
    # Each class's table probability is within 2**-32 of its weight.
    assert np.max(np.abs(mass / (v * 2**32) - sampler.probs.numpy())) <= 2.0**-32
    # And the masses are exactly what the entries encode.
    entries = _testing.alias_table_entries(sampler._table)
    thr = (entries & 0xFFFFFFFF).astype(np.float64)
    alias = (entries >> 32).astype(np.int64)
    full = alias == np.arange(v)
    rebuilt = np.where(full, 2.0**32, thr)
    np.add.at(rebuilt, alias[~full], 2.0**32 - thr[~full])
    assert np.array_equal(rebuilt, mass)


def test_unigram_sampler():
    counts = torch.tensor([100.0, 0.0, 10.0, 1.0, 55.0])
    s = pyneg.UnigramSampler(counts, power=0.75)
    expected = counts**0.75 / (counts**0.75).sum()
    assert torch.allclose(s.probs, expected.double())
    assert chi2_pvalue(s.sample((1000, 100), seed=3), s.probs) > ALPHA
    s0 = pyneg.UnigramSampler(counts, power=0.0)
    assert torch.allclose(s0.probs, torch.full((5,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("v", [1, 2, 10, 1000])
def test_log_uniform_sampler(v):
    s = pyneg.LogUniformSampler(v)
    k = torch.arange(v, dtype=torch.float64)
    expected = torch.log((k + 2) / (k + 1)) / math.log(v + 1)
    assert torch.allclose(s.probs, expected, rtol=1e-12)
    assert torch.allclose(s.log_prob(torch.arange(v)), expected.log(), rtol=1e-12)
    assert chi2_pvalue(s.sample(100_000, seed=9), s.probs) > ALPHA


def test_uniform_sampler():
    s = pyneg.UniformSampler(37)
    assert torch.allclose(s.probs, torch.full((37,), 1 / 37, dtype=torch.float64))
    assert chi2_pvalue(s.sample(50_000, seed=2), s.probs) > ALPHA


def test_log_prob_and_expected_counts():
    s = pyneg.AliasSampler([1.0, 3.0, 0.0, 4.0])
    ids = torch.tensor([[0, 1], [3, 2]])
    lp = s.log_prob(ids)
    assert lp.shape == ids.shape and lp.dtype == torch.float64
    assert torch.allclose(lp.exp(), torch.tensor([[0.125, 0.375], [0.5, 0.0]], dtype=torch.float64))
    # with replacement: log(k p)
    assert torch.allclose(s.log_expected_count(ids, 8), lp + math.log(8))
    # without replacement (TensorFlow): log(1 - (1 - p)^tries), per row tries
    tries = torch.tensor([5, 9])
    got = s.expected_count(ids, 2, num_tries=tries)
    p = lp.exp()
    want = 1 - (1 - p) ** tries.double().unsqueeze(1)
    assert torch.allclose(got, want)


def test_probability_is_one_draws_probability():
    s = pyneg.AliasSampler([1.0, 3.0, 0.0, 4.0])
    ids = torch.tensor([[0, 1], [3, 2]])
    p = s.probability(ids)
    assert p.shape == ids.shape and p.dtype == torch.float64
    torch.testing.assert_close(p, torch.tensor([[0.125, 0.375], [0.5, 0.0]], dtype=torch.float64), rtol=1e-15, atol=0)
    assert p[1, 1].item() == 0.0  # zero weight: exactly 0, not a tiny exp(-inf) residue
    assert s.probability([3, 0]).tolist() == pytest.approx([0.5, 0.125], rel=1e-15)  # lists, like log_prob
    z = pyneg.LogUniformSampler(1000)
    ids = torch.randint(0, 1000, (6, 7), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.probability(ids), z.probs[ids], rtol=1e-14, atol=0)
    torch.testing.assert_close(z.probability(ids).log(), z.log_prob(ids), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match=r"ids holds id 4 outside \[0, 4\)"):
        s.probability(torch.tensor([4]))
    with pytest.raises(TypeError, match="ids"):
        s.probability(torch.tensor([0.5]))


def test_samplers_and_the_estimator_share_probability_names():
    # One vocabulary: P(id) is probability(ids), its log is log_prob(ids).
    est = pyneg.FrequencyEstimator(num_buckets=64, alpha=0.5)
    for _ in range(4):
        est.update(torch.tensor([1, 2, 3]))
    for obj in (pyneg.AliasSampler([1.0, 2.0, 3.0, 4.0]), est):
        ids = torch.tensor([1, 3])
        torch.testing.assert_close(obj.probability(ids).log(), obj.log_prob(ids), rtol=1e-5, atol=0)


def test_sample_candidates_matches_tensorflow_definitions():
    s = pyneg.LogUniformSampler(100)
    res = s.sample_candidates(10, torch.tensor([0, 5, 99]), unique=True, seed=4)
    ids = res.sampled_candidates
    assert ids.unique().numel() == 10
    assert res.num_tries >= 10
    p = s.probs
    assert torch.allclose(res.sampled_expected_count, 1 - (1 - p[ids]) ** res.num_tries)
    assert torch.allclose(res.true_expected_count, 1 - (1 - p[[0, 5, 99]]) ** res.num_tries)
    rep = s.sample_candidates(10, [1], unique=False, seed=4)
    assert torch.allclose(rep.true_expected_count, 10 * p[[1]])


# --------------------------------------------------------------- exclusion
def test_exclude_positive_per_row():
    w = zipf(20)
    s = pyneg.AliasSampler(w)
    positives = torch.arange(20).repeat(500)  # 10,000 rows
    out = s.sample((positives.numel(), 30), exclude=positives, seed=7)
    assert not (out == positives.unsqueeze(1)).any()
    # Rows excluding id 0 follow the distribution renormalised without id 0.
    rows0 = out[positives == 0]
    p0 = s.probs.clone()
    p0[0] = 0
    assert chi2_pvalue(rows0, p0 / p0.sum()) > ALPHA


def test_exclude_lists_with_padding_and_heavy_mass():
    w = torch.tensor([1000.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0])
    s = pyneg.AliasSampler(w)
    # Row 0 removes nearly all the mass (the exact-CDF path); row 1 only padding.
    exclude = torch.tensor([[0, 3, -1], [-1, -1, -1]])
    out = s.sample((2, 60_000), exclude=exclude, seed=11)
    assert not torch.isin(out[0], torch.tensor([0, 3, 5])).any()
    p_row0 = torch.tensor([0, 1, 1, 0, 1, 0, 2], dtype=torch.float64)
    assert chi2_pvalue(out[0], p_row0 / p_row0.sum()) > ALPHA
    assert chi2_pvalue(out[1], s.probs) > ALPHA


def test_exclude_everything_raises():
    s = pyneg.AliasSampler([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="exclude"):
        s.sample((1, 4), exclude=torch.tensor([[0, 2]]), seed=0)


def test_exclude_validation():
    s = pyneg.AliasSampler([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="exclude"):
        s.sample((2, 3), exclude=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="exclude"):
        s.sample((2, 3), exclude=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="exclude"):
        s.sample((2, 3), exclude=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="exclude"):
        s.sample((2, 3), exclude=torch.tensor([-2, 1]))


# --------------------------------------------------- without replacement
def test_unique_rows_are_distinct():
    s = pyneg.UnigramSampler(torch.arange(1, 2001).double())
    out = s.sample((300, 50), unique=True, seed=1)
    srt = out.sort(dim=1).values
    assert (srt[:, 1:] != srt[:, :-1]).all()


def successive_sampling_pairs(p: np.ndarray) -> dict:
    """Exact distribution of the ordered pair (first, second) of successive sampling."""
    out = {}
    for i, pi in enumerate(p):
        for j, pj in enumerate(p):
            if i != j and pi > 0 and pj > 0:
                out[(i, j)] = pi * pj / (1 - pi)
    return out


@pytest.mark.parametrize("weights", [[5.0, 1.0, 1.0, 3.0, 0.0], [1e6, 1.0, 2.0, 1.0]])
def test_unique_follows_successive_sampling(weights):
    # The second weight vector makes rejection slow (one class holds ~all the
    # mass), which exercises the switch to the exponential race.
    s = pyneg.AliasSampler(weights)
    out = s.sample((100_000, 2), unique=True, seed=21)
    exact = successive_sampling_pairs(s.probs.numpy())
    keys = list(exact)
    index = {k: i for i, k in enumerate(keys)}
    codes = torch.tensor([index[(int(a), int(b))] for a, b in out.tolist()])
    probs = torch.tensor([exact[k] for k in keys], dtype=torch.float64)
    assert chi2_pvalue(codes, probs / probs.sum()) > ALPHA


def test_unique_full_permutation_and_exclusion():
    s = pyneg.AliasSampler([1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    out = s.sample((100, 5), unique=True, seed=3)
    assert (out.sort(dim=1).values == torch.arange(5)).all()
    ex = s.sample((100, 3), unique=True, exclude=torch.full((100,), 4), seed=3)
    assert not (ex == 4).any() and not (ex == 5).any()
    assert (ex.sort(dim=1).values[:, 1:] != ex.sort(dim=1).values[:, :-1]).all()


def test_unique_too_many_raises():
    s = pyneg.AliasSampler([1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="size"):
        s.sample((1, 3), unique=True)
    with pytest.raises(ValueError, match="row"):
        s.sample((1, 2), unique=True, exclude=torch.tensor([1]))


# ------------------------------------------------------------- determinism
def test_same_seed_same_samples_any_thread_count():
    s = pyneg.UnigramSampler(torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 100)
    n = 300_001
    a = np.empty(n, np.int64)
    b = np.empty(n, np.int64)
    _testing.alias_table_sample(s._table, 42, 0, a, 1)
    _testing.alias_table_sample(s._table, 42, 0, b, 2)
    assert np.array_equal(a, b)
    for th in (1, 2, 3):
        ex = np.empty((2000, 64), np.int64)
        _testing.alias_table_sample_excluding(
            s._table, 42, 0, np.arange(2000, dtype=np.int64).reshape(-1, 1), 64, ex, th
        )
        if th == 1:
            ex1 = ex.copy()
        assert np.array_equal(ex, ex1)
        un = np.empty((600, 100), np.int64)
        tr = np.empty(600, np.int64)
        _testing.alias_table_sample_unique(s._table, 42, 0, np.full((1, 1), -1, np.int64), 100, un, tr, th)
        if th == 1:
            un1 = un.copy()
        assert np.array_equal(un, un1)


def test_batch_splits_give_the_same_stream():
    s = pyneg.LogUniformSampler(5000)
    whole = s.sample(10_001, seed=5)
    parts = torch.cat([s.sample(3_333, seed=5), s.sample(6_668, seed=5, offset=3_333)])
    assert torch.equal(whole, parts)
    rows = s.sample((40, 25), seed=5, exclude=torch.arange(40))
    top = s.sample((15, 25), seed=5, exclude=torch.arange(15))
    rest = s.sample((25, 25), seed=5, exclude=torch.arange(15, 40), offset=15 * 25)
    assert torch.equal(rows, torch.cat([top, rest]))


def philox4x32_10(ctr, key):
    """Reference Philox4x32-10 (Salmon et al. 2011) in plain Python."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    m = 0xFFFFFFFF
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & m, p1 & m, ((p0 >> 32) ^ c3 ^ k1) & m, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0, c1, c2, c3


def test_philox_known_answers():
    # Random123's known-answer vectors for philox4x32-10.
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    )


@pytest.mark.parametrize("isa", ["", "scalar", "avx2", "avx512"])
@pytest.mark.parametrize("offset", [0, 1, 7, 2 * (2**32 - 3) + 1, 2 * (2**32 - 9)])
def test_draw_stream_equals_reference_philox(offset, isa):
    # Position j uses block j // 2 (counter (lo, hi, 0, 0), key = seed) and its
    # first or second 64-bit half; every batched path (AVX2: 8 blocks a pass,
    # AVX-512: 16) must agree, also from odd offsets, across a 2**32 block
    # boundary and in the scalar tail after the vector passes.
    seed = 0x0123456789ABCDEF
    out = np.empty(75, np.uint64)
    try:
        _core._testing.draw_randoms(seed, offset, out, isa)
    except ValueError:
        pytest.skip(f"this CPU has no {isa} Philox batches")
    for j, got in enumerate(out.tolist()):
        pos = offset + j
        blk = pos >> 1
        x = philox4x32_10((blk & 0xFFFFFFFF, blk >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
        want = (x[3] << 32 | x[2]) if pos & 1 else (x[1] << 32 | x[0])
        assert got == want, j


def test_seed_from_torch_generator():
    s = pyneg.UniformSampler(1000)
    torch.manual_seed(123)
    a = s.sample(50)
    torch.manual_seed(123)
    b = s.sample(50)
    assert torch.equal(a, b)
    g1 = torch.Generator().manual_seed(1)
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(s.sample(50, generator=g1), s.sample(50, generator=g2))
    assert not torch.equal(s.sample(50, generator=g1), s.sample(50, generator=g1))


def test_out_buffer_is_written_in_place():
    s = pyneg.UniformSampler(10)
    out = torch.empty((4, 5), dtype=torch.int64)
    res = s.sample((4, 5), seed=1, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert torch.equal(out, s.sample((4, 5), seed=1))
    with pytest.raises(TypeError, match="out"):
        s.sample((4, 5), out=torch.empty((4, 5), dtype=torch.int32))
    with pytest.raises(ValueError, match="out"):
        s.sample((4, 5), out=torch.empty((5, 4), dtype=torch.int64))
    with pytest.raises(ValueError, match="out"):
        s.sample((4, 5), out=torch.empty((5, 4), dtype=torch.int64).t())


def test_state_dict_and_pickle_round_trip():
    s = pyneg.UnigramSampler(torch.rand(777, generator=torch.Generator().manual_seed(3)) * 10)
    t = pyneg.UnigramSampler(torch.ones(777), power=1.0)
    t.load_state_dict(s.state_dict())
    assert t.power == s.power
    assert torch.equal(t.sample((9, 9), seed=8), s.sample((9, 9), seed=8))
    u = pickle.loads(pickle.dumps(s))
    assert torch.equal(u.sample(1000, seed=8), s.sample(1000, seed=8))
    # Another class's state, another size, or malformed probs are refused.
    with pytest.raises(ValueError, match="state_dict"):
        pyneg.UniformSampler(777).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="state_dict"):
        pyneg.UnigramSampler(torch.ones(5)).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="state_dict"):
        t.load_state_dict({**t.state_dict(), "probs": torch.full((777,), 0.5, dtype=torch.float64)})


def test_device_argument(device):
    s = pyneg.UnigramSampler(torch.arange(1, 101).double())
    out = s.sample((64, 10), seed=3, device=device)
    assert out.device.type == device and out.dtype == torch.int64
    ex = s.sample((64, 10), seed=3, device=device, exclude=torch.arange(64), unique=True)
    assert ex.device.type == device
    assert not (ex.cpu() == torch.arange(64).unsqueeze(1)).any()


def test_torch_ops_fallback_fits_probs():
    # The device fallback (no CUDA kernels) draws with torch ops on the table;
    # run it on the CPU to check it follows the same distribution.
    s = pyneg.AliasSampler(zipf(300))
    out = s._sample_torch_ops((200_000,), 17, torch.device("cpu"))
    assert chi2_pvalue(out, s.probs) > ALPHA


def test_empty_and_zero_sizes():
    s = pyneg.UniformSampler(3)
    assert s.sample(0).shape == (0,)
    assert s.sample((0, 2), unique=True).shape == (0, 2)
    with pytest.raises(ValueError, match="size"):
        s.sample((0, 5), unique=True)  # asking the impossible fails even for no rows
    assert s.sample((4, 0), exclude=torch.arange(3).repeat(2)[:4] % 3).shape == (4, 0)


def test_core_reports_its_isa():
    assert _core._testing.philox_isa() in ("avx512", "avx2", "scalar")


@pytest.mark.parametrize("v", [100_000, 300_000])  # the cache-resident (8-wide picks) and the prefetching loop
@pytest.mark.parametrize("offset", [0, 3])
def test_plain_draws_equal_the_per_position_draws_at_block_and_piece_edges(v, offset):
    # The CPU kernel batches Philox numbers (256 a block), picks 8 at a time or
    # prefetches 128 draws ahead, and lets its threads claim 8192-draw pieces
    # (calls of more than 32768 draws use several threads);
    # none of that may change a draw: compare with the one-position-at-a-time
    # schedule of the device emulation, for lengths at those edges.
    s = pyneg.AliasSampler(np.random.default_rng(v).random(v) + 0.01)
    nothing = np.full((1, 1), -1, np.int64)
    for n in (1, 7, 8, 9, 127, 128, 129, 255, 256, 257, 8191, 8192, 8193, 3 * 8192 + 129, 12 * 8192 + 129):
        want = np.empty((1, n), np.int64)
        s._table._emulate_device(0, 99, offset, nothing, n, want, np.empty(1, np.int64))
        for threads in (1, 2, 3):
            got = np.empty(n, np.int64)
            _testing.alias_table_sample(s._table, 99, offset, got, threads)
            assert np.array_equal(got, want[0]), (n, threads)

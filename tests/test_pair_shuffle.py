"""The C++ pair shuffle (csrc/cpu/pair_shuffle.h) behind SkipGramPairs(shuffle=True):
exact bits against a plain-Python transcription, records kept whole, reproducibility,
thread-count independence, uniformity (chi-square, with biased variants that fail it)
and DataLoader workers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from test_samplers import philox4x32_10  # the plain-Python Philox reference

import pyneg
from pyneg import _core
from pyneg import skipgram as sg

TAG = 18  # philox.h kTagShuffle
M32 = 0xFFFFFFFF


# ----------------------------------------------------------------- reference
def _block(counter, word, seed):
    return philox4x32_10((counter & M32, counter >> 32, word, TAG), (seed & M32, seed >> 32))


def reference_shuffle(centres, contexts, seed, bucket_bits):
    """pair_shuffle.h in plain Python: bucket labels, stable scatter, Fisher-Yates per bucket."""
    n = len(centres)
    records = list(zip(centres, contexts))
    mask = (1 << bucket_bits) - 1
    labels = [(_block(i >> 4, 0, seed)[(i & 15) >> 2] >> (8 * (i & 3))) & mask for i in range(n)]
    order = sorted(range(n), key=lambda i: labels[i])  # stable: input order within a bucket
    out = [records[i] for i in order]
    sizes = np.bincount(labels, minlength=mask + 1) if n else np.zeros(mask + 1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for s, e in zip(starts[:-1].tolist(), starts[1:].tolist()):
        for g in range(s + 1, e):
            r = g - s + 1  # j uniform in [0, g - s]
            m = _block(g >> 2, 1, seed)[g & 3] * r
            if (m & M32) < r:  # Lemire's rejection: redraws from (g, 2 + attempt)
                attempt = 0
                while (m & M32) < (2**32 - r) % r:
                    m = _block(g, 2 + attempt, seed)[0] * r
                    attempt += 1
            k = s + (m >> 32)
            out[g], out[k] = out[k], out[g]
    return [c for c, _ in out], [x for _, x in out]


@pytest.mark.parametrize("bits", [0, 1, 3, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 17, 300])
def test_shuffle_equals_the_python_reference(n, bits):
    c = np.arange(n, dtype=np.int64) * 3
    x = np.arange(n, dtype=np.int64) * 5 + 1
    for seed in (0, 7, 2**63 - 1):
        got = _core.shuffle_pairs(c, x, seed, bits, 1)
        want = reference_shuffle(c.tolist(), x.tolist(), seed, bits)
        assert got[0].tolist() == want[0] and got[1].tolist() == want[1], (n, bits, seed)


def test_default_bucket_bits_follow_the_record_count():
    # One bucket (plain Fisher-Yates) up to 2**17 records, then up to 32 buckets.
    n = 2**17
    c = np.arange(n + 1, dtype=np.int64)
    for m, bits in ((n, 0), (n + 1, 1)):
        got = _core.shuffle_pairs(c[:m], c[:m], 5, -1, 1)[0]
        assert np.array_equal(got, _core.shuffle_pairs(c[:m], c[:m], 5, bits, 1)[0])
    with pytest.raises(ValueError, match="bucket_bits"):
        _core.shuffle_pairs(c[:4], c[:4], 5, 9, 1)


# ------------------------------------------------------ records, reproducible
def _corpus(n=60_000, vocab=500, seed=3):
    rng = np.random.default_rng(seed)
    tokens = torch.from_numpy(rng.integers(0, vocab, n))
    offsets = torch.from_numpy(np.unique(np.r_[0, rng.integers(1, n, n // 12)]))
    keep = sg.keep_probability(np.bincount(tokens.numpy(), minlength=vocab).astype(np.float64), 1e-3)
    return tokens, offsets, keep


def _keys(c, x):
    """(centre, context) pairs as one sortable key each: a multiset of pairs, not of ids."""
    return np.sort(c.numpy() * 1_000_003 + x.numpy())


def test_shuffled_chunk_is_a_permutation_of_its_pairs():
    tokens, offsets, keep = _corpus()
    kw = dict(offsets=offsets, keep=keep, seed=11, chunk_tokens=20_000)
    plain = pyneg.SkipGramPairs(tokens, 5, shuffle=False, **kw)
    shuffled = pyneg.SkipGramPairs(tokens, 5, **kw)
    for index, (lo, hi) in enumerate(plain.chunks()):
        c0, x0 = plain.chunk_pairs(lo, hi, 2, index)
        c1, x1 = shuffled.chunk_pairs(lo, hi, 2, index)
        assert c1.numel() == c0.numel() > 2**16
        assert not torch.equal(c1, c0)
        assert np.array_equal(_keys(c1, x1), _keys(c0, x0))  # every pair kept whole
        # Written straight to its place, yet the same as shuffling the corpus-order pairs.
        seed = (11 * 1_000_003 + 2 * 7919 + index) % 2**63
        rc, rx = sg._shuffle_pairs(c0, x0, seed)
        assert torch.equal(c1, rc) and torch.equal(x1, rx)


def test_shuffle_is_reproducible_and_differs_across_epochs_and_chunks():
    tokens, offsets, keep = _corpus(n=8_000)
    ds = pyneg.SkipGramPairs(tokens, 3, offsets=offsets, keep=keep, seed=4, chunk_tokens=100_000)
    again = pyneg.SkipGramPairs(tokens, 3, offsets=offsets, keep=keep, seed=4, chunk_tokens=100_000)
    lo, hi = next(iter(ds.chunks()))
    a = ds.chunk_pairs(lo, hi, 1, 0)
    b = again.chunk_pairs(lo, hi, 1, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Epochs draw other pairs and another order; another chunk index, the same pairs in another order.
    e2 = ds.chunk_pairs(lo, hi, 2, 0)
    assert not torch.equal(e2[0][: a[0].numel()], a[0][: e2[0].numel()])
    other = ds.chunk_pairs(lo, hi, 1, 1)
    assert not torch.equal(other[0], a[0])
    assert np.array_equal(_keys(*other), _keys(*a))
    seeds = [_core.shuffle_pairs(np.arange(50), np.arange(50), s, -1, 1)[0] for s in range(20)]
    assert len({s.tobytes() for s in seeds}) == 20


def test_same_bits_for_any_thread_count():
    tokens, offsets, keep = _corpus(n=120_000)
    ds = pyneg.SkipGramPairs(tokens, 5, offsets=offsets, keep=keep, seed=9, chunk_tokens=1 << 20)
    lo, hi = next(iter(ds.chunks()))
    big = np.arange(300_000, dtype=np.int64)
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            c, x = ds.chunk_pairs(lo, hi, 0, 0)
            assert c.numel() > 2**18  # several buckets and segments
            got.append((c, x, sg._shuffle_pairs(big, big + 1, 3)[0]))
    finally:
        torch.set_num_threads(before)
    for c, x, s in got[1:]:
        assert torch.equal(c, got[0][0]) and torch.equal(x, got[0][1]) and torch.equal(s, got[0][2])
    for bits in (0, 4, 8):  # explicit bucket counts too
        outs = [_core.shuffle_pairs(big, big + 1, 5, bits, t)[0] for t in (1, 2, 3)]
        assert all(np.array_equal(o, outs[0]) for o in outs[1:])


def test_empty_and_single_pair_chunks():
    for n in (0, 1):
        c, x = sg._shuffle_pairs(np.arange(n) + 4, np.arange(n) + 9, 1)
        assert c.tolist() == list(range(4, 4 + n)) and x.tolist() == list(range(9, 9 + n))
        assert c.dtype == torch.int64
    # A chunk of one token has no pairs; two tokens give two pairs.
    for tokens, want in (([3], []), ([3, 5], [(3, 5), (5, 3)])):
        ds = pyneg.SkipGramPairs(torch.tensor(tokens), 2, seed=1)
        batches = list(ds)
        pairs = sorted(
            zip(
                torch.cat([b[0] for b in batches] or [torch.empty(0)]).tolist(),
                torch.cat([b[1] for b in batches] or [torch.empty(0)]).tolist(),
            )
        )
        assert pairs == want
        c, x = ds.chunk_pairs(0, len(tokens), 0, 0)
        assert c.numel() == len(want)


# ---------------------------------------------------------------- uniformity
SAMPLES = 12_000
P_MIN = 1e-4  # fixed seeds: the outcome is deterministic; a uniform shuffle clears this easily


def _perms(shuffle, n, samples):
    return np.array([shuffle(n, s) for s in range(samples)])


def _p_values(perms):
    """Chi-square p-values: where element 0 lands; where elements 0 and n-1 land (their
    relative order and distance); and, for n = 5, the whole permutation."""
    samples, n = perms.shape
    out = {}
    pos0 = np.argmax(perms == 0, axis=1)
    out["element 0"] = stats.chisquare(np.bincount(pos0, minlength=n)).pvalue
    pos_last = np.argmax(perms == n - 1, axis=1)
    joint = np.bincount(pos0 * n + pos_last, minlength=n * n).reshape(n, n)
    cells = joint[~np.eye(n, dtype=bool)]
    out["elements 0 and n-1"] = stats.chisquare(cells).pvalue
    out["0 before n-1"] = stats.binomtest(int((pos0 < pos_last).sum()), samples).pvalue
    if n == 5:
        index = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
        counts = np.bincount([index[tuple(p)] for p in perms], minlength=120)
        out["permutation"] = stats.chisquare(counts).pvalue
    return out


def _ours(bits):
    def shuffle(n, seed):
        r = np.arange(n, dtype=np.int64)
        c, x = _core.shuffle_pairs(r, r + 100, seed * 0x9E3779B97F4A7C15 % 2**64, bits, 1)
        assert np.array_equal(x, c + 100)
        return c

    return shuffle


def _naive(n, seed):
    """The wrong Fisher-Yates: swap every slot with a slot drawn from all n (n^n paths)."""
    rng = np.random.default_rng(seed)
    p = list(range(n))
    for i in range(n):
        j = int(rng.integers(n))
        p[i], p[j] = p[j], p[i]
    return p


def _modulo(n, seed):
    """Fisher-Yates with `r % (t + 1)` bounded ints from 4-bit r: the modulo bias made visible."""
    rng = np.random.default_rng(seed)
    p = list(range(n))
    for t in range(1, n):
        j = int(rng.integers(16)) % (t + 1)
        p[t], p[j] = p[j], p[t]
    return p


@pytest.mark.parametrize("bits", [0, 2])
@pytest.mark.parametrize("n", [5, 6, 7, 8])
def test_positions_are_uniform(n, bits):
    p = _p_values(_perms(_ours(bits), n, SAMPLES))
    assert min(p.values()) > P_MIN, p


@pytest.mark.parametrize("n", [5, 6, 7, 8])
@pytest.mark.parametrize("wrong", [_naive, _modulo])
def test_the_uniformity_test_catches_biased_shuffles(wrong, n):
    # Same statistics and sample size as test_positions_are_uniform: each biased
    # variant fails at least one of them by a wide margin.
    p = _p_values(_perms(wrong, n, SAMPLES))
    assert min(p.values()) < P_MIN * 1e-3, p


# ------------------------------------------------------------------ workers
def _batches(loader):
    return sorted((c.numpy().tobytes(), x.numpy().tobytes()) for c, x in loader)


@pytest.mark.parametrize(
    ("context", "workers", "tokens", "chunk"),
    [("fork", 2, 3_000, 700), ("spawn", 1, 3_000, 700), ("fork", 2, 80_000, 40_000)],
)
def test_dataloader_workers_yield_the_same_shuffled_batches(context, workers, tokens, chunk):
    # The last case: chunks of over 2**17 pairs (several buckets, scattered on several
    # threads), the parent's thread pool started before the workers fork.
    tokens, offsets, keep = _corpus(n=tokens, vocab=40)
    batch = 64 if chunk < 1000 else 8192
    ds = pyneg.SkipGramPairs(tokens, 5, offsets=offsets, batch_size=batch, seed=6, chunk_tokens=chunk)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if chunk > 1000:
            lo, hi = next(iter(ds.chunks()))
            assert ds.chunk_pairs(lo, hi, 0, 0)[0].numel() > 2**17
        ds.set_epoch(0)
        want = _batches(ds)  # epoch 0 without workers: whole batches, in their shuffled order
        ds.set_epoch(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=context)
        assert _batches(loader) == want
    finally:
        torch.set_num_threads(before)

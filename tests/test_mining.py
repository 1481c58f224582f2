"""Hard-negative mining (pyneg.mining) against a brute-force PyTorch reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pyneg.functional as PF
from pyneg.mining import mine_hard_negatives

BACKENDS = ("cpu", "torch")


# ------------------------------------------------------------------ reference
def reference_top(query, cand, hi, *, exclude=None, upper=None, max_score=None, cosine=False):
    """Full (B, N) float64 score matrix, masking, and a sort by (score desc, id asc)."""
    q, c = query.double(), cand.double()
    s = q @ c.T
    if cosine:
        s = s / (q.norm(dim=1, keepdim=True) * c.norm(dim=1))
    ok = torch.ones_like(s, dtype=torch.bool)
    if exclude is not None:
        ex = exclude if exclude.dim() == 2 else exclude[:, None]
        for r in range(s.shape[0]):
            e = ex[r][ex[r] >= 0]
            ok[r, e] = False
    if upper is not None:
        ok &= s < upper[:, None]
    if max_score is not None:
        ok &= s <= max_score
    ids, scores = [], []
    n = s.shape[1]
    for r in range(s.shape[0]):
        cand_ids = torch.nonzero(ok[r]).squeeze(1)
        vals = s[r, cand_ids]
        # lexicographic: id ascending first, then a stable sort by score descending
        order = torch.sort(vals, descending=True, stable=True).indices
        ids.append(cand_ids[order][:hi])
        scores.append(vals[order][:hi])
    assert n >= 0
    return ids, scores


def int_data(b, n, d, seed, dtype=torch.float32, dup=True):
    """Small integers: every score is exact in float32, with many ties (and duplicated candidates)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (b, d), generator=g).to(dtype)
    c = torch.randint(-2, 3, (n, d), generator=g).to(dtype)
    if dup and n >= 4:
        c[n // 2] = c[0]
        c[n - 1] = c[1]
    return q, c


def upper_of(pos, margin=None, relative_margin=None, perc_pos=None):
    u = torch.full_like(pos, math.inf)
    if margin is not None:
        u = torch.minimum(u, pos - margin)
    if relative_margin is not None:
        u = torch.minimum(u, pos - relative_margin * pos.abs())
    if perc_pos is not None:
        u = torch.minimum(u, pos - (1 - perc_pos) * pos.abs())
    return u


FILTERS = [
    {},
    {"margin": 0.0},
    {"margin": 1.0},
    {"relative_margin": 0.1},
    {"perc_pos": 0.95},
    {"max_score": 2.0},
    {"margin": 0.5, "perc_pos": 0.9, "max_score": 4.0},
]

COMBOS = [
    # b, n, d, lo, hi
    (1, 1, 1, 0, 1),
    (3, 17, 4, 0, 5),
    (7, 50, 3, 2, 9),
    (13, 200, 8, 0, 40),
    (20, 97, 16, 10, 30),
    (5, 300, 5, 0, 300),
    (40, 64, 2, 1, 3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_top_window_matches_reference(backend, combo, filt):
    b, n, d, lo, hi = combo
    q, c = int_data(b, n, d, seed=hash((combo, tuple(filt))) % 1000)
    g = torch.Generator().manual_seed(1)
    pos_ids = torch.randint(0, n, (b,), generator=g)
    exclude = torch.stack([pos_ids, torch.randint(-1, n, (b,), generator=g)], 1)
    pos_scores = (q.double() * c[pos_ids].double()).sum(1)
    kw = dict(filt)
    if set(kw) - {"max_score"}:
        kw["positive"] = c[pos_ids]
    mined = mine_hard_negatives(
        q, c, hi - lo, lo=lo, hi=hi, exclude=exclude, sampling="top", pad=True, backend=backend, **kw
    )
    upper = None
    if set(filt) - {"max_score"}:
        upper = upper_of(pos_scores, filt.get("margin"), filt.get("relative_margin"), filt.get("perc_pos"))
    ref_ids, ref_scores = reference_top(q, c, hi, exclude=exclude, upper=upper, max_score=filt.get("max_score"))
    for r in range(b):
        want_ids = ref_ids[r][lo:]
        w = want_ids.numel()
        assert int(mined.window[r]) == w
        assert torch.equal(mined.ids[r, :w], want_ids), (r, mined.ids[r], want_ids)
        assert torch.equal(mined.scores[r, :w].double(), ref_scores[r][lo:])
        assert bool((mined.ids[r, w:] == -1).all()) and bool((mined.log_q[r, w:] == -math.inf).all())
        assert bool((mined.log_q[r, :w] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_floats_match_reference(backend, dtype):
    g = torch.Generator().manual_seed(3)
    b, n, d, hi = 33, 2000, 24, 50
    q = torch.randn(b, d, generator=g, dtype=dtype)
    c = torch.randn(n, d, generator=g, dtype=dtype)
    mined = mine_hard_negatives(q, c, hi, sampling="top", backend=backend)
    ref_ids, ref_scores = reference_top(q, c, hi)
    full = q.double() @ c.double().T
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for r in range(b):
        got = full[r, mined.ids[r]]
        # the same ranked values (ids may differ only between scores within rounding)
        assert torch.allclose(got, ref_scores[r], atol=tol, rtol=0)
        assert torch.allclose(mined.scores[r].double(), got, atol=tol, rtol=0)
        agree = (mined.ids[r] == ref_ids[r]).float().mean()
        assert agree > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_matches_reference(backend):
    g = torch.Generator().manual_seed(4)
    q, c = torch.randn(9, 12, generator=g), torch.randn(500, 12, generator=g) * 3
    mined = mine_hard_negatives(q, c, 20, sampling="top", metric="cosine", backend=backend)
    _, ref_scores = reference_top(q, c, 20, cosine=True)
    for r in range(9):
        assert torch.allclose(mined.scores[r].double(), ref_scores[r], atol=1e-5)
    assert float(mined.scores.max()) <= 1 + 1e-6


def test_threads_and_blocks_give_identical_results():
    g = torch.Generator().manual_seed(5)
    q, c = torch.randn(70, 37, generator=g), torch.randn(3001, 37, generator=g)
    q[5] = q[3]  # identical rows, duplicated candidates: ties
    c[100] = c[7]
    kw = dict(lo=3, hi=60, exclude=torch.arange(70) * 11, sampling="softmax", tau=0.5, seed=123)
    base = mine_hard_negatives(q, c, 10, num_threads=1, block_size=(512, 512), **kw)
    for threads, block in [(2, None), (3, (6, 16)), (2, (7, 33)), (1, (1, 1)), (4, (70, 3001)), (2, (200, 5000))]:
        other = mine_hard_negatives(q, c, 10, num_threads=threads, block_size=block, **kw)
        for a, bb in zip(base, other):
            assert torch.equal(a, bb), (threads, block)
    torch_backend = mine_hard_negatives(q, c, 10, backend="torch", block_size=(1, 500), **kw)
    # the window draw is shared: same top-hi ids give the same sample
    same_rows = (torch_backend.ids == base.ids).all(1)
    assert float(same_rows.float().mean()) > 0.9


def test_exclusions_and_filters_never_violated():
    g = torch.Generator().manual_seed(6)
    b, n = 64, 400
    q, c = torch.randn(b, 8, generator=g), torch.randn(n, 8, generator=g)
    pos_ids = torch.randint(0, n, (b,), generator=g)
    history = torch.randint(-1, n, (b, 12), generator=g)
    exclude = torch.cat([pos_ids[:, None], history], 1)
    mined = mine_hard_negatives(
        q,
        c,
        6,
        hi=30,
        exclude=exclude,
        positive=c[pos_ids],
        margin=0.1,
        relative_margin=0.05,
        max_score=2.5,
        sampling="uniform",
        seed=1,
        pad=True,
    )
    pos = (q.double() * c[pos_ids].double()).sum(1)
    valid = mined.ids >= 0
    for r in range(b):
        ids = mined.ids[r][valid[r]]
        assert not bool(torch.isin(ids, exclude[r]).any())
        s = q[r].double() @ c[ids].double().T
        assert bool((s < pos[r] - 0.1).all()) and bool((s < pos[r] - 0.05 * pos[r].abs()).all())
        assert bool((s <= 2.5).all())
        assert ids.unique().numel() == ids.numel()


def test_relative_margin_and_perc_pos_for_negative_positive_scores():
    # Positive score -4: pos * (1 - r) = -3.6 would lie above the positive and admit -3.9.
    q = torch.tensor([[1.0]])
    c = torch.tensor([[-3.0], [-3.9], [-4.1], [-4.5], [-5.0]])
    kw = dict(positive_scores=torch.tensor([-4.0]), sampling="top", pad=True, hi=5)
    m = mine_hard_negatives(q, c, 5, relative_margin=0.1, **kw)
    assert m.ids[0].tolist() == [3, 4, -1, -1, -1]  # below -4 - 0.4 = -4.4
    m = mine_hard_negatives(q, c, 5, perc_pos=0.95, **kw)
    assert m.ids[0].tolist() == [3, 4, -1, -1, -1]  # below -4 - 0.2 = -4.2
    m = mine_hard_negatives(q, c, 5, margin=0.0, **kw)
    assert m.ids[0].tolist() == [2, 3, 4, -1, -1]  # below -4
    # Positive score 4 (scores 3, 3.9, 4.1, 4.5, 5): TopK-PercPos is score < 0.95 * 4 = 3.8.
    m = mine_hard_negatives(
        -q, c, 5, perc_pos=0.95, positive_scores=torch.tensor([4.0]), sampling="top", pad=True, hi=5
    )
    assert m.ids[0].tolist() == [0, -1, -1, -1, -1]


def test_filtered_candidates_take_no_rank():
    q = torch.tensor([[1.0]])
    c = torch.arange(10, dtype=torch.float32)[:, None]  # score = id
    m = mine_hard_negatives(q, c, 2, lo=1, hi=3, max_score=6.0, exclude=torch.tensor([5]), sampling="top")
    # admissible ranked: 6, 4, 3, 2, ... -> ranks [1, 3) = 4, 3
    assert m.ids[0].tolist() == [4, 3]


# ------------------------------------------------------------------ sampling
def _frequencies(scores, k, lo, hi, sampling, tau, rows=20000, seed=7):
    q = torch.ones(rows, 1, dtype=torch.float64)
    c = torch.tensor(scores, dtype=torch.float64)[:, None]
    m = mine_hard_negatives(q, c, k, lo=lo, hi=hi, sampling=sampling, tau=tau, seed=seed)
    counts = torch.bincount(m.ids.flatten(), minlength=len(scores)).double()
    return m, counts


def capped_pi(scores, k, tau):
    """Reference inclusion probabilities: pi_j = min(1, c * exp(s_j / tau)), sum k (by bisection on c)."""
    w = np.exp((np.asarray(scores, dtype=np.float64) - max(scores)) / tau)
    lo_c, hi_c = 0.0, 1e300
    for _ in range(4000):
        mid = math.sqrt(lo_c * hi_c) if lo_c > 0 else hi_c / 2**60
        if np.minimum(1.0, mid * w).sum() < k:
            lo_c = mid
        else:
            hi_c = mid
        if hi_c - lo_c <= 1e-15 * hi_c:
            break
    return np.minimum(1.0, hi_c * w)


@pytest.mark.parametrize("sampling,tau", [("uniform", 1.0), ("softmax", 1.0), ("softmax", 0.3), ("softmax", 3.0)])
def test_sampling_frequencies_match_log_q(sampling, tau):
    scores = [5.0, 4.5, 4.4, 3.0, 2.0, 1.9, 1.0, 0.0, -1.0, -3.0, -4.0]
    lo, hi, k, rows = 1, 11, 3, 20000
    m, counts = _frequencies(scores, k, lo, hi, sampling, tau, rows)
    window = scores[lo:hi]
    want = np.full(hi - lo, k / (hi - lo)) if sampling == "uniform" else capped_pi(window, k, tau)
    want_lq = torch.full((len(scores),), -math.inf, dtype=torch.float64)
    want_lq[lo:hi] = torch.from_numpy(np.log(want))
    # each returned log q is the reference log pi of that id (every row saw the same window)
    assert torch.allclose(m.log_q, want_lq[m.ids], atol=1e-9, rtol=0)
    assert counts[0] == 0  # rank 0 is outside the window
    assert bool((m.window == hi - lo).all())
    # chi-square of the inclusion counts against rows * pi, on the uncertain ids
    p = torch.from_numpy(want)
    inner = (p * rows >= 5) & (p < 1 - 1e-12)
    expected = rows * p[inner]
    got = counts[lo:hi][inner]
    stat = float((((got - expected) ** 2) / (expected * (1 - p[inner]))).sum())
    assert stat < stats.chi2.ppf(0.9999, int(inner.sum())), (stat, got, expected)
    certain = p >= 1 - 1e-12
    assert bool((counts[lo:hi][certain] == rows).all())
    assert int(counts.sum()) == rows * k


def test_reference_pi_is_not_first_draw_softmax():
    # capping matters for these scores: k * softmax exceeds 1 for the best one
    pi = capped_pi([5.0, 4.5, 4.4, 3.0, 2.0], 3, 1.0)
    sm = 3 * np.exp([5.0, 4.5, 4.4, 3.0, 2.0]) / np.exp([5.0, 4.5, 4.4, 3.0, 2.0]).sum()
    assert sm.max() > 1 and abs(pi.sum() - 3) < 1e-9 and pi.max() <= 1


def test_softmax_capping_is_needed():
    # A dominant candidate: its inclusion probability is 1, not k * softmax.
    scores = [10.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    m, counts = _frequencies(scores, 2, 0, 6, "softmax", 1.0, rows=4000)
    assert counts[0] == 4000
    lq0 = m.log_q[m.ids == 0]
    assert bool((lq0 == 0).all())
    rest = m.log_q[m.ids != 0]
    assert torch.allclose(rest.exp(), torch.full_like(rest, 1 / 5))
    # a first-draw softmax times k would claim 2 * e^10 / (e^10 + 5) > 1 for id 0


def test_wrong_sampler_would_fail_the_frequency_test():
    # The chi-square above is sharp enough: counts of the softmax sampler are
    # rejected against uniform probabilities, and vice versa.
    scores = [3.0, 2.0, 1.0, 0.0, -1.0, -2.0]
    _, counts = _frequencies(scores, 2, 0, 6, "softmax", 1.0, rows=20000)
    p = torch.full((6,), 2 / 6, dtype=torch.float64)
    stat = float((((counts - 20000 * p) ** 2) / (20000 * p * (1 - p))).sum())
    assert stat > stats.chi2.ppf(0.9999, 6)


def test_seeds_and_offsets():
    g = torch.Generator().manual_seed(8)
    q, c = torch.randn(30, 6, generator=g), torch.randn(300, 6, generator=g)
    kw = dict(hi=40, sampling="uniform")
    a = mine_hard_negatives(q, c, 5, seed=11, **kw)
    b = mine_hard_negatives(q, c, 5, seed=11, **kw)
    d = mine_hard_negatives(q, c, 5, seed=12, **kw)
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, d.ids)
    first = mine_hard_negatives(q[:13], c, 5, seed=11, **kw)
    second = mine_hard_negatives(q[13:], c, 5, seed=11, offset=13, **kw)
    assert torch.equal(torch.cat([first.ids, second.ids]), a.ids)
    torch.manual_seed(0)
    e = mine_hard_negatives(q, c, 5, **kw)
    torch.manual_seed(0)
    f = mine_hard_negatives(q, c, 5, **kw)
    assert torch.equal(e.ids, f.ids)
    # rank order within each row
    s = a.scores
    assert bool((s[:, :-1] >= s[:, 1:]).all())


# ------------------------------------------------------------------ padding and errors
def test_padding_or_error_when_window_is_short():
    q = torch.tensor([[1.0], [-1.0]])
    c = torch.arange(6, dtype=torch.float32)[:, None]
    with pytest.raises(ValueError, match="row 0 has 2 admissible"):
        mine_hard_negatives(q, c, 3, hi=4, max_score=1.0)
    m = mine_hard_negatives(q, c, 3, hi=4, max_score=1.0, pad=True, seed=0)
    assert m.ids[0].tolist() == [1, 0, -1]
    assert m.log_q[0].tolist() == [0.0, 0.0, -math.inf]
    assert m.window.tolist() == [2, 4]  # row 1 scores 0, -1, ... all pass max_score
    assert m.scores[0, 2] == -math.inf


def _qc():
    return torch.randn(4, 8), torch.randn(50, 8)


BAD = [
    (dict(k=0), ValueError, "k"),
    (dict(k=2.0), TypeError, "k"),
    (dict(k=5, hi=3), ValueError, "k=5"),
    (dict(k=1, lo=3, hi=3), ValueError, "lo"),
    (dict(k=2, hi=51), ValueError, "hi=51"),
    (dict(k=2, lo=-1), ValueError, "lo"),
    (dict(k=2, sampling="gumbel"), ValueError, "sampling"),
    (dict(k=2, tau=0.0), ValueError, "tau"),
    (dict(k=2, tau=math.nan), ValueError, "tau"),
    (dict(k=2, metric="l2"), ValueError, "metric"),
    (dict(k=2, margin=0.1), ValueError, "margin"),
    (dict(k=2, perc_pos=1.5, positive_scores=torch.zeros(4)), ValueError, "perc_pos"),
    (dict(k=2, relative_margin=-0.1, positive_scores=torch.zeros(4)), ValueError, "relative_margin"),
    (dict(k=2, positive_scores=torch.zeros(3), margin=0.0), ValueError, "positive_scores"),
    (dict(k=2, positive_scores=torch.tensor([0.0, math.nan, 0, 0]), margin=0.0), ValueError, "positive_scores"),
    (dict(k=2, max_score=math.inf), ValueError, "max_score"),
    (dict(k=2, exclude=torch.tensor([0, 1, 2])), ValueError, "exclude"),
    (dict(k=2, exclude=torch.tensor([0, 1, 2, 50])), ValueError, "exclude"),
    (dict(k=2, exclude=torch.zeros(4)), TypeError, "exclude"),
    (dict(k=2, pad=1), TypeError, "pad"),
    (dict(k=2, seed=-1), ValueError, "seed"),
    (dict(k=2, backend="gpu"), ValueError, "backend"),
    (dict(k=2, num_threads=0), ValueError, "num_threads"),
    (dict(k=2, block_size=7), TypeError, "block_size"),
    (dict(k=2, block_size=(0, 4)), ValueError, "block_size"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments(kwargs, exc, match):
    q, c = _qc()
    with pytest.raises(exc, match=match):
        mine_hard_negatives(q, c, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_tensors(backend):
    q, c = _qc()
    kw = dict(backend=backend)
    with pytest.raises(TypeError, match="candidates has dtype"):
        mine_hard_negatives(q, c.double(), 2, **kw)
    with pytest.raises(TypeError, match="query must be float32 or float64"):
        mine_hard_negatives(q.int(), c.int(), 2, **kw)
    with pytest.raises(TypeError, match="candidates has dtype"):
        mine_hard_negatives(q.half(), c.bfloat16(), 2, **kw)
    with pytest.raises(ValueError, match="dimension"):
        mine_hard_negatives(q, c[:, :4], 2, **kw)
    with pytest.raises(ValueError, match="query must be 2-D"):
        mine_hard_negatives(q[0], c, 2, **kw)
    bad = c.clone()
    bad[37, 2] = math.nan
    with pytest.raises(ValueError, match="candidates holds a non-finite value"):
        mine_hard_negatives(q, bad, 2, **kw)
    bad = q.clone()
    bad[1, 0] = math.inf
    with pytest.raises(ValueError, match="query holds a non-finite value"):
        mine_hard_negatives(bad, c, 2, **kw)
    with pytest.raises(ValueError, match="overflow"):
        mine_hard_negatives(q * 1e20, c * 1e20, 2, **kw)
    zero = c.clone()
    zero[3] = 0
    with pytest.raises(ValueError, match="zero norm"):
        mine_hard_negatives(q, zero, 2, metric="cosine", **kw)
    with pytest.raises(TypeError, match="dense"):
        mine_hard_negatives(q.to_sparse(), c, 2, **kw)
    with pytest.raises(ValueError, match="meta"):
        mine_hard_negatives(q.to("meta"), c.to("meta"), 2, **kw)
    with pytest.raises(TypeError, match="query must hold float32"):
        mine_hard_negatives([[1, 2]], [[1, 2]], 1, **kw)


def test_numpy_inputs_and_noncontiguous():
    q, c = _qc()
    a = mine_hard_negatives(q.numpy(), c.numpy(), 3, sampling="top")
    b = mine_hard_negatives(q, c, 3, sampling="top")
    ct = c.T.contiguous().T  # non-contiguous view with the same values
    d = mine_hard_negatives(q, ct, 3, sampling="top")
    assert torch.equal(a.ids, b.ids) and torch.equal(b.ids, d.ids)


# ------------------------------------------------------------------ into the loss
def test_from_mined_feeds_mixed_negatives_loss():
    g = torch.Generator().manual_seed(9)
    b, n, d = 6, 80, 5
    q = torch.randn(b, d, generator=g)
    items = torch.randn(n, d, generator=g).requires_grad_()
    pos_ids = torch.randint(0, n, (b,), generator=g)
    # a short window for some rows: padding must be masked by the loss
    mined = mine_hard_negatives(
        q,
        items,
        4,
        hi=10,
        exclude=pos_ids,
        positive=items[pos_ids].detach(),
        margin=0.5,
        sampling="uniform",
        seed=3,
        pad=True,
    )
    src = PF.NegativeSource.from_mined(mined, items)
    loss = PF.mixed_negatives_loss(q, items[pos_ids], [src], positive_ids=pos_ids, temperature=0.5, reduction="none")
    # manual: per row, [pos, q.e_j / T - log q_j for the valid j]
    want = []
    for r in range(b):
        ok = mined.ids[r] >= 0
        e = items[mined.ids[r][ok]]
        logits = torch.cat([(q[r] @ items[pos_ids[r]])[None] / 0.5, q[r] @ e.T / 0.5 - mined.log_q[r][ok].float()])
        want.append(torch.logsumexp(logits, 0) - logits[0])
    want = torch.stack(want)
    assert torch.allclose(loss, want, atol=1e-5)
    loss.sum().backward()
    assert items.grad is not None and bool(torch.isfinite(items.grad).all())
    # with the in-batch source as well, and the (B, k, d) form
    emb = items.detach()[mined.ids.clamp_min(0)]
    src3 = PF.NegativeSource.from_mined(mined, emb)
    total = PF.mixed_negatives_loss(q, items.detach()[pos_ids], [PF.NegativeSource.batch(), src3], positive_ids=pos_ids)
    assert torch.isfinite(total)


def test_mixed_loss_rejects_inconsistent_padding():
    q, items = torch.randn(2, 3), torch.randn(10, 3)
    ids = torch.tensor([[1, -1], [2, 3]])
    lq = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    src = PF.NegativeSource(items[ids.clamp_min(0)], ids, lq)
    with pytest.raises(ValueError, match="padded entries"):
        PF.mixed_negatives_loss(q, items[:2], [src], positive_ids=torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backend_matches_cpu():
    q, c = int_data(50, 3000, 16, seed=12)
    ex = torch.randint(-1, 3000, (50, 3), generator=torch.Generator().manual_seed(0))
    kw = dict(lo=2, hi=40, exclude=ex, sampling="softmax", seed=5, max_score=6.0, positive=c[:50], margin=0.0, pad=True)
    cpu = mine_hard_negatives(q, c, 10, **kw)
    gpu = mine_hard_negatives(q.cuda(), c.cuda(), 10, **{**kw, "positive": c[:50].cuda()})
    assert gpu.ids.device.type == "cuda"
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())


# ------------------------------------------------------------------ offline mining and docs
def test_mine_dataset_resumes_and_equals_one_call(tmp_path):
    from pyneg.mining import mine_dataset

    g = torch.Generator().manual_seed(11)
    q, c = torch.randn(50, 6, generator=g), torch.randn(200, 6, generator=g)
    pos = torch.randint(0, 200, (50,), generator=g)
    kw = dict(hi=30, exclude=pos, positive=c[pos], margin=0.1, sampling="softmax", seed=4, pad=True)
    whole = mine_hard_negatives(q, c, 5, **kw)
    path = str(tmp_path / "neg.pt")
    out = mine_dataset(q, c, 5, chunk_size=7, path=path, progress=False, **kw)
    for a, b in zip(whole, out):
        assert torch.equal(a, b)
    # an interrupted run: keep the checkpoint after 3 chunks and resume
    state = torch.load(path)
    state["done"] = 21
    state["ids"][21:] = -1
    torch.save(state, path)
    again = mine_dataset(q, c, 5, chunk_size=7, path=path, progress=False, **kw)
    assert torch.equal(again.ids, whole.ids)
    with pytest.raises(ValueError, match="different mining job"):
        mine_dataset(q, c, 6, chunk_size=7, path=path, progress=False, **kw)


# ------------------------------------------------------------------ faiss (optional)
def test_agrees_with_faiss_flat_ip():
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(10)
    q, c = torch.randn(50, 32, generator=g), torch.randn(5000, 32, generator=g)
    index = faiss.IndexFlatIP(32)
    index.add(c.numpy())
    _, ids = index.search(q.numpy(), 20)
    mined = mine_hard_negatives(q, c, 20, sampling="top")
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, mined.ids.numpy())])
    assert recall > 0.99


def test_faiss_backend():
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(13)
    q, c = torch.randn(40, 16, generator=g), torch.randn(3000, 16, generator=g)
    pos = torch.randint(0, 3000, (40,), generator=g)
    index = faiss.IndexFlatIP(16)
    index.add(c.numpy())
    kw = dict(lo=2, hi=30, exclude=pos, positive=c[pos], margin=0.2, sampling="uniform", seed=2, pad=True)
    exact = mine_hard_negatives(q, c, 6, **kw)
    flat = mine_hard_negatives(q, c, 6, backend="faiss", index=index, search_k=3000, **kw)
    # too few neighbours: the filters leave rows short, and the result says so
    short = mine_hard_negatives(q, c, 6, backend="faiss", index=index, search_k=31, **kw)
    assert bool((short.window < exact.window).any()) and bool(
        ((short.ids >= 0).sum(1) == short.window.clamp(max=6)).all()
    )
    # an exact index gives the exact miner's negatives (up to float32 near-ties)
    assert float((flat.ids == exact.ids).float().mean()) > 0.97
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 16, faiss.METRIC_INNER_PRODUCT)
    ivf.train(c.numpy())
    ivf.add(c.numpy())
    approx = mine_hard_negatives(q, c, 6, backend="faiss", index=ivf, **kw)
    valid = approx.ids >= 0
    assert not bool((approx.ids == pos[:, None]).any())
    assert bool((approx.window <= 28).all()) and bool((valid.sum(1) == approx.window.clamp(max=6)).all())
    with pytest.raises(ValueError, match="index"):
        mine_hard_negatives(q, c, 6, backend="faiss")
    with pytest.raises(ValueError, match="metric"):
        mine_hard_negatives(q, c, 6, backend="faiss", index=index, metric="cosine")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_embeddings_are_scored_in_float32(dtype):
    q, c = _qc()
    q16, c16 = q.to(dtype), c.to(dtype)
    for sampling in ("top", "uniform", "softmax"):
        got = mine_hard_negatives(q16, c16, 3, hi=8, sampling=sampling, seed=1)
        want = mine_hard_negatives(q16.float(), c16.float(), 3, hi=8, sampling=sampling, seed=1)
        assert got.scores.dtype == torch.float32
        assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores)
        assert torch.equal(got.log_q, want.log_q)


def test_k_beyond_candidates_names_k():
    q, c = _qc()
    n = c.shape[0]
    with pytest.raises(ValueError, match=rf"k={n + 5} asks for ranks up to {n + 5} but candidates has only {n} rows"):
        mine_hard_negatives(q, c, n + 5)
    with pytest.raises(ValueError, match=r"k=3 with lo=" + str(n - 1)):
        mine_hard_negatives(q, c, 3, lo=n - 1)
    with pytest.raises(ValueError, match=rf"hi={n + 1} exceeds the number of candidates"):
        mine_hard_negatives(q, c, 2, hi=n + 1)

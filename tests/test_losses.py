"""Softmax losses against plain transcriptions of their formulas.

References: a direct PyTorch transcription of each formula (full logit matrix,
correction, masking, ``F.cross_entropy``); a row-by-row transcription for mixed
negatives; and TensorFlow's documented sampled softmax (``_compute_sampled_logits``
followed by softmax cross-entropy, the true class at column 0) written out in
NumPy.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pyneg
import pyneg.functional as PF
from pyneg import _hits
from pyneg.functional import NegativeSource

INF = float("inf")


# ---------------------------------------------------------------- references
def ref_in_batch(q, c, log_q=None, ids=None, temperature=1.0, reduction="mean"):
    """logits[i, j] = q_i·c_j / T − log_q[j]; ids[j] == ids[i], j != i masked; label i."""
    logits = q @ c.t() / temperature
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype)
    if ids is not None:
        hit = (ids.unsqueeze(0) == ids.unsqueeze(1)) & ~torch.eye(len(ids), dtype=torch.bool)
        logits = logits.masked_fill(hit, -INF)
    return F.cross_entropy(logits, torch.arange(len(q)), reduction=reduction)


def ref_sampled(q, p, n, plq=None, nlq=None, pids=None, nids=None, temperature=1.0, reduction="mean"):
    """[s⁺ | s⁻] with s = dot / T − log_q, hits masked, label 0."""
    pos = (q * p).sum(-1, keepdim=True) / temperature
    neg = (q @ n.t() if n.dim() == 2 else torch.einsum("bd,bnd->bn", q, n)) / temperature
    if plq is not None:
        pos = pos - plq.unsqueeze(1)
    if nlq is not None:
        neg = neg - nlq
    if pids is not None:
        neg = neg.masked_fill(nids == pids.unsqueeze(1), -INF)
    logits = torch.cat([pos, neg], 1)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long), reduction=reduction)


def ref_mixed(q, p, sources, pids=None, plq=None, temperature=1.0):
    """Row by row: the positive, then each source's entries that are neither row i's
    own in-batch positive nor an accidental hit, each minus its source's log q."""
    losses = []
    for i in range(len(q)):
        row = [q[i] @ p[i] / temperature - (plq[i] if plq is not None else 0.0)]
        for src in sources:
            emb = p if src.in_batch and src.embeddings is None else src.embeddings
            ids = pids if src.in_batch and src.ids is None else src.ids
            for j in range(len(emb)):
                if src.in_batch and j == i:
                    continue
                if ids is not None and int(ids[j]) == int(pids[i]):
                    continue
                lq = src.log_q[j] if src.log_q is not None else 0.0
                row.append(q[i] @ emb[j] / temperature - lq)
        logits = torch.stack([torch.as_tensor(x, dtype=q.dtype) for x in row])
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses)


def tf_sampled_softmax_loss(
    weights, labels, inputs, sampled, true_expected_count, sampled_expected_count, remove_accidental_hits=True
):
    """TensorFlow's sampled_softmax_loss as documented (num_true=1, zero biases), in NumPy.

    _compute_sampled_logits: true_logits = Σ inputs·w[labels]; sampled_logits =
    inputs @ w[sampled]ᵀ; accidental hits get −FLOAT_MAX added; subtract_log_q
    subtracts log(expected count) from both; the labels are [1, 0, ..., 0];
    then softmax_cross_entropy_with_logits.
    """
    inputs, weights = np.asarray(inputs, np.float64), np.asarray(weights, np.float64)
    true_logits = (inputs * weights[labels]).sum(1, keepdims=True)
    sampled_logits = inputs @ weights[sampled].T
    if remove_accidental_hits:
        for i, label in enumerate(labels):
            for j, s in enumerate(sampled):
                if s == label:
                    sampled_logits[i, j] += -np.finfo(np.float32).max
    true_logits -= np.log(true_expected_count).reshape(-1, 1)
    sampled_logits -= np.log(sampled_expected_count)
    logits = np.concatenate([true_logits, sampled_logits], 1)
    out_labels = np.zeros_like(logits)
    out_labels[:, 0] = 1.0
    m = logits.max(1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    return -(out_labels * log_softmax).sum(1)


@pytest.fixture(params=["sparse", "dense"])
def mask_mode(request, monkeypatch):
    """Masks are lists of hits, or dense comparisons when ids repeat a lot: test both."""
    monkeypatch.setattr(_hits, "DENSE_MASK_FRACTION", 2.0 if request.param == "sparse" else 0.0)
    return request.param


# ------------------------------------------------------------------- data
def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def batch(b=7, d=5, dtype=torch.float64, seed=0, num_ids=4):
    g = gen(seed)
    q = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    c = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    log_q = torch.log(torch.rand(b, generator=g, dtype=torch.float64) * 0.5 + 0.01)
    ids = torch.randint(0, num_ids, (b,), generator=g)  # few ids: many accidental hits
    return q, c, log_q, ids


def bank_like(n=11, d=5, seed=3, num_ids=4, dtype=torch.float64):
    """What pyneg.MemoryBank exposes (embeddings, ids, log_q with NaN = none given)."""
    g = gen(seed)
    log_q = torch.log(torch.rand(n, generator=g) * 0.5 + 0.01)
    log_q[::4] = float("nan")
    return SimpleNamespace(
        embeddings=torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype),
        ids=torch.randint(0, num_ids, (n,), generator=g),
        log_q=log_q,
    )


# ------------------------------------------------------------- in-batch
@pytest.mark.parametrize("temperature", [1.0, 0.07])
@pytest.mark.parametrize("use_log_q", [False, True])
@pytest.mark.parametrize("use_ids", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_in_batch_matches_formula(mask_mode, temperature, use_log_q, use_ids, reduction):
    q, c, log_q, ids = batch()
    lq, i = (log_q if use_log_q else None), (ids if use_ids else None)
    got = PF.in_batch_softmax_loss(q, c, log_q=lq, candidate_ids=i, temperature=temperature, reduction=reduction)
    want = ref_in_batch(q, c, lq, i, temperature, reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 100])
def test_in_batch_chunks_match_formula_and_gradients(mask_mode, chunk_size):
    q, c, log_q, ids = batch(b=9)
    q.requires_grad_(True)
    c.requires_grad_(True)
    got = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids, temperature=0.5, chunk_size=chunk_size)
    gq, gc = torch.autograd.grad(got, (q, c))
    want = ref_in_batch(q, c, log_q, ids, 0.5)
    wq, wc = torch.autograd.grad(want, (q, c))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, wq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gc, wc, rtol=1e-10, atol=1e-12)


def test_in_batch_masks_duplicates_never_the_diagonal():
    q, c, _, _ = batch(b=4)
    ids = torch.tensor([5, 5, 5, 5])  # every column is row i's id: only the positive is left
    loss = PF.in_batch_softmax_loss(q, c, candidate_ids=ids, reduction="none")
    torch.testing.assert_close(loss, torch.zeros(4, dtype=torch.float64))
    ids = torch.tensor([5, 5, 6, 7])
    loss = PF.in_batch_softmax_loss(q, c, candidate_ids=ids, reduction="none")
    # Row 0's negatives are columns 2 and 3 only: moving column 1 changes nothing for it.
    c2 = c.clone()
    c2[1] += 10.0
    loss2 = PF.in_batch_softmax_loss(q, c2, candidate_ids=ids, reduction="none")
    assert loss2[0] == loss[0] and loss2[2] != loss[2]


def test_gather_without_process_group_is_world_size_one():
    q, c, log_q, ids = batch()
    a = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids, gather=True)
    b = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids)
    assert torch.equal(a, b)


# --------------------------------------------------------------- sampled
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sampled_matches_formula(mask_mode, per_row, chunk_size, reduction):
    g = gen(1)
    b, n, d = 6, 10, 5
    q, p = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    shape = (b, n) if per_row else (n,)
    neg = torch.randn(*shape, d, generator=g, dtype=torch.float64)
    plq = torch.randn(b, generator=g, dtype=torch.float64)
    nlq = torch.randn(*shape, generator=g, dtype=torch.float64)
    pids = torch.randint(0, 5, (b,), generator=g)
    nids = torch.randint(0, 5, shape, generator=g)
    got = PF.sampled_softmax_loss(
        q,
        p,
        neg,
        positive_log_q=plq,
        negative_log_q=nlq,
        positive_ids=pids,
        negative_ids=nids,
        temperature=0.3,
        reduction=reduction,
        chunk_size=chunk_size,
    )
    want = ref_sampled(q, p, neg, plq, nlq, pids, nids, 0.3, reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plain = PF.sampled_softmax_loss(q, p, neg, reduction=reduction)
    torch.testing.assert_close(plain, ref_sampled(q, p, neg, reduction=reduction), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("unique", [True, False])
def test_sampled_matches_tensorflow_definition(mask_mode, unique):
    """pyneg's sampler + sampled_softmax_loss reproduce TensorFlow's sampled softmax."""
    g = gen(2)
    v, d, b, k = 50, 8, 16, 12
    weights = torch.randn(v, d, generator=g, dtype=torch.float64)
    inputs = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (b,), generator=g)  # frequent ids: some are also sampled
    sampler = pyneg.LogUniformSampler(v)
    cand = sampler.sample_candidates(k, labels, unique=unique, seed=4)
    assert torch.isin(cand.sampled_candidates, labels).any(), "the test needs accidental hits"
    got = PF.sampled_softmax_loss(
        inputs,
        weights[labels],
        weights[cand.sampled_candidates],
        positive_log_q=cand.true_expected_count.log(),
        negative_log_q=cand.sampled_expected_count.log(),
        positive_ids=labels,
        negative_ids=cand.sampled_candidates,
        reduction="none",
    )
    want = tf_sampled_softmax_loss(
        weights.numpy(),
        labels.numpy(),
        inputs.numpy(),
        cand.sampled_candidates.numpy(),
        cand.true_expected_count.numpy(),
        cand.sampled_expected_count.numpy(),
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- mixed
def three_sources(b=7, d=5, dtype=torch.float64):
    q, p, log_q, ids = batch(b, d, dtype)
    g = gen(5)
    bank = bank_like(d=d, dtype=dtype)
    sampled_ids = torch.randint(0, 6, (9,), generator=g)
    sampler = pyneg.UnigramSampler(torch.arange(1.0, 7.0))
    sampled = NegativeSource.from_sampler(
        torch.randn(9, d, generator=g, dtype=torch.float64).to(dtype), sampled_ids, sampler
    )
    sources = [NegativeSource.batch(log_q), NegativeSource.from_bank(bank), sampled]
    return q, p, log_q, ids, sources, bank


@pytest.mark.parametrize("chunk_size", [None, 1, 4])
def test_mixed_matches_row_by_row_reference(mask_mode, chunk_size):
    q, p, log_q, ids, sources, _ = three_sources()
    got = PF.mixed_negatives_loss(
        q, p, sources, positive_ids=ids, positive_log_q=log_q, temperature=0.4, reduction="none", chunk_size=chunk_size
    )
    want = ref_mixed(q, p, sources, ids, log_q, temperature=0.4)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mixed_corrects_each_source_by_its_own_log_q():
    q, p, log_q, ids, sources, bank = three_sources()
    base = PF.mixed_negatives_loss(q, p, sources, positive_ids=ids, reduction="none")
    # Raising one bank entry's log q lowers that entry's logit only: loss goes down
    # in rows where it is a negative, and nowhere does it go up.
    shifted = SimpleNamespace(embeddings=bank.embeddings, ids=bank.ids, log_q=bank.log_q.clone())
    shifted.log_q[1] += 5.0
    srcs = [sources[0], NegativeSource.from_bank(shifted), sources[2]]
    lower = PF.mixed_negatives_loss(q, p, srcs, positive_ids=ids, reduction="none")
    negative_for = ids != bank.ids[1]
    assert (lower[negative_for] < base[negative_for]).all()
    torch.testing.assert_close(lower[~negative_for], base[~negative_for])


def test_mixed_reduces_to_in_batch_and_sampled():
    q, p, log_q, ids = batch()
    ib = PF.mixed_negatives_loss(q, p, [NegativeSource.batch(log_q)], positive_ids=ids, positive_log_q=log_q)
    torch.testing.assert_close(ib, PF.in_batch_softmax_loss(q, p, log_q=log_q, candidate_ids=ids))
    g = gen(6)
    neg, nids, nlq = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.arange(5), torch.zeros(5) - 2
    sm = PF.mixed_negatives_loss(q, p, [NegativeSource(neg, nids, nlq)], positive_ids=ids)
    torch.testing.assert_close(
        sm, PF.sampled_softmax_loss(q, p, neg, positive_ids=ids, negative_ids=nids, negative_log_q=nlq)
    )


def test_from_bank_reads_the_bank_attributes():
    bank = bank_like()
    src = NegativeSource.from_bank(bank)
    assert src.embeddings is not None and torch.equal(src.embeddings, bank.embeddings)
    missing = torch.isnan(bank.log_q)
    assert torch.equal(src.log_q[missing], torch.zeros(int(missing.sum())))  # NaN: no correction
    assert torch.equal(src.log_q[~missing], bank.log_q[~missing])
    none_given = SimpleNamespace(
        embeddings=bank.embeddings, ids=bank.ids, log_q=torch.full_like(bank.log_q, float("nan"))
    )
    assert NegativeSource.from_bank(none_given).log_q is None


def test_from_sampler_log_q_is_the_log_expected_count():
    sampler = pyneg.UnigramSampler(torch.tensor([10.0, 5.0, 1.0, 1.0]), power=1.0)
    ids = torch.tensor([0, 2, 0])
    src = NegativeSource.from_sampler(torch.zeros(3, 2), ids, sampler)
    torch.testing.assert_close(src.log_q, torch.log(3 * sampler.probs[ids]))


def test_bank_entries_get_no_gradient():
    q, p, log_q, ids, _, _ = three_sources()
    bank = bank_like()
    bank.embeddings.requires_grad_(True)  # even a bank holding a graph is read detached
    q.requires_grad_(True)
    loss = PF.mixed_negatives_loss(q, p, [NegativeSource.from_bank(bank)], positive_ids=ids)
    loss.backward()
    assert bank.embeddings.grad is None and q.grad is not None


def test_empty_source_is_no_negatives():
    q, p, log_q, ids = batch()
    empty = NegativeSource(torch.empty(0, 5, dtype=torch.float64), torch.empty(0, dtype=torch.long))
    a = PF.mixed_negatives_loss(q, p, [NegativeSource.batch(), empty], positive_ids=ids)
    torch.testing.assert_close(a, PF.in_batch_softmax_loss(q, p, candidate_ids=ids))


# ------------------------------------------------------------- gradients
def test_gradcheck_in_batch():
    q, c, log_q, ids = batch(b=5, d=3)
    for chunk in (None, 2):
        fn = lambda q, c: PF.in_batch_softmax_loss(
            q, c, log_q=log_q, candidate_ids=ids, temperature=0.7, reduction="none", chunk_size=chunk
        )
        assert torch.autograd.gradcheck(fn, (q.requires_grad_(), c.requires_grad_()))


@pytest.mark.parametrize("per_row", [False, True])
def test_gradcheck_sampled(per_row):
    g = gen(7)
    q, p = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    shape = (4, 6) if per_row else (6,)
    neg = torch.randn(*shape, 3, generator=g, dtype=torch.float64)
    pids, nids = torch.tensor([0, 1, 2, 1]), torch.randint(0, 3, shape, generator=g)
    nlq = torch.randn(*shape, generator=g, dtype=torch.float64)
    for chunk in (None, 4):
        fn = lambda q, p, n: PF.sampled_softmax_loss(
            q,
            p,
            n,
            negative_log_q=nlq,
            positive_ids=pids,
            negative_ids=nids,
            chunk_size=chunk,
            reduction="sum",
        )
        assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in (q, p, neg)))


def test_gradcheck_mixed(mask_mode):
    q, p, log_q, ids, sources, _ = three_sources(b=4, d=3)
    sampled = sources[2]
    emb = sampled.embeddings.clone().requires_grad_()

    def fn(q, p, emb):
        srcs = [sources[0], sources[1], NegativeSource(emb, sampled.ids, sampled.log_q)]
        return PF.mixed_negatives_loss(
            q, p, srcs, positive_ids=ids, positive_log_q=log_q, chunk_size=3, reduction="none"
        )

    assert torch.autograd.gradcheck(fn, (q.requires_grad_(), p.requires_grad_(), emb))


def test_fully_masked_rows_have_zero_loss_and_finite_gradients(mask_mode):
    q, c, _, _ = batch(b=3)
    q.requires_grad_(True)
    c.requires_grad_(True)
    for chunk in (None, 1):
        loss = PF.in_batch_softmax_loss(q, c, candidate_ids=torch.tensor([1, 1, 1]), chunk_size=chunk, reduction="sum")
        gq, gc = torch.autograd.grad(loss, (q, c))
        assert loss == 0 and torch.isfinite(gq).all() and torch.isfinite(gc).all()
        assert (gq == 0).all()


# ---------------------------------------------------- dtypes and stability
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)]
)
def test_every_float_dtype(dtype, tol):
    q, p, log_q, ids, sources, _ = three_sources(dtype=dtype)
    q.requires_grad_(True)
    got = PF.mixed_negatives_loss(q, p, sources, positive_ids=ids, positive_log_q=log_q, reduction="none")
    # 16-bit inputs are scored in float32 and the loss stays there (beyond float16's range it stays finite).
    assert got.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    # Reference in float64 on the same (rounded) inputs.
    srcs64 = [
        NegativeSource(None if s.embeddings is None else s.embeddings.double(), s.ids, s.log_q, s.in_batch)
        for s in sources
    ]
    want = ref_mixed(q.double(), p.double(), srcs64, ids, log_q)
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)
    got.sum().backward()
    assert q.grad.dtype == dtype and torch.isfinite(q.grad).all()


def test_large_logits_stay_finite():
    """Temperature 1e-3 on unit vectors: logits near 1000, far beyond exp's range."""
    q, c, log_q, ids = batch(b=16, d=8, dtype=torch.float32)
    q, c = F.normalize(q, dim=1).requires_grad_(), F.normalize(c, dim=1).requires_grad_()
    loss = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids, temperature=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    want = ref_in_batch(q.detach().double(), c.detach().double(), log_q, ids, 1e-3)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------- modules
def test_modules_equal_functional():
    q, p, log_q, ids, sources, _ = three_sources()
    m = pyneg.losses.InBatchSoftmaxLoss(temperature=0.2, reduction="sum", chunk_size=3)
    assert torch.equal(
        m(q, p, log_q=log_q, candidate_ids=ids),
        PF.in_batch_softmax_loss(q, p, log_q=log_q, candidate_ids=ids, temperature=0.2, reduction="sum", chunk_size=3),
    )
    neg = sources[2].embeddings
    m = pyneg.losses.SampledSoftmaxLoss(temperature=0.5)
    assert torch.equal(
        m(q, p, neg, negative_log_q=sources[2].log_q),
        PF.sampled_softmax_loss(q, p, neg, negative_log_q=sources[2].log_q, temperature=0.5),
    )
    m = pyneg.losses.MixedNegativesLoss(reduction="none")
    assert torch.equal(
        m(q, p, sources, positive_ids=ids, positive_log_q=log_q),
        PF.mixed_negatives_loss(q, p, sources, positive_ids=ids, positive_log_q=log_q, reduction="none"),
    )
    g = gen(8)
    x, y, z = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    assert torch.equal(pyneg.losses.NegativeSamplingLoss()(x, y, z), PF.negative_sampling_loss(x, y, z))
    assert "temperature=0.2" in repr(pyneg.losses.InBatchSoftmaxLoss(temperature=0.2))
    with pytest.raises(ValueError, match="temperature"):
        pyneg.losses.MixedNegativesLoss(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        pyneg.losses.SampledSoftmaxLoss(reduction="avg")


def test_numpy_and_list_data_are_accepted():
    q, c, log_q, ids = batch()
    a = PF.in_batch_softmax_loss(q, c, log_q=log_q.numpy(), candidate_ids=ids.tolist())
    assert torch.equal(a, PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids))


# -------------------------------------------------------------- bad input
def _bad_cases():
    q, c, log_q, ids = batch(b=4, d=3)
    neg = torch.randn(5, 3, dtype=torch.float64)
    ib, ss, mx = PF.in_batch_softmax_loss, PF.sampled_softmax_loss, PF.mixed_negatives_loss
    return [
        (lambda: ib(q.numpy(), c), TypeError, "query"),
        (lambda: ib(q.long(), c), TypeError, "query"),
        (lambda: ib(q[0], c), ValueError, "query"),
        (lambda: ib(q[:0], c[:0]), ValueError, "query"),
        (lambda: ib(q, c[:3]), ValueError, "candidate"),
        (lambda: ib(q, c[:, :2]), ValueError, "candidate"),
        (lambda: ib(q, c.float()), TypeError, "candidate"),
        (lambda: ib(q, c.to("meta")), ValueError, "candidate"),
        (lambda: ib(q, c, log_q=log_q[:3]), ValueError, "log_q"),
        (lambda: ib(q, c, log_q=torch.tensor([0.0, float("nan"), 0.0, 0.0])), ValueError, "log_q"),
        (lambda: ib(q, c, log_q=torch.tensor([0.0, -INF, 0.0, 0.0])), ValueError, "log_q"),
        (lambda: ib(q, c, log_q=torch.zeros(4, dtype=torch.long)), TypeError, "log_q"),
        (lambda: ib(q, c, log_q=log_q.to("meta")), ValueError, "log_q"),
        (lambda: ib(q, c, candidate_ids=ids.double()), TypeError, "candidate_ids"),
        (lambda: ib(q, c, candidate_ids=ids[:2]), ValueError, "candidate_ids"),
        (lambda: ib(q, c, candidate_ids=torch.tensor([0, -1, 2, 3])), ValueError, "candidate_ids"),
        (lambda: ib(q, c, candidate_ids="abcd"), TypeError, "candidate_ids"),
        (lambda: ib(q, c, temperature=0.0), ValueError, "temperature"),
        (lambda: ib(q, c, temperature=-1.0), ValueError, "temperature"),
        (lambda: ib(q, c, temperature=math.nan), ValueError, "temperature"),
        (lambda: ib(q, c, temperature="1"), TypeError, "temperature"),
        (lambda: ib(q, c, temperature=torch.tensor(1.0)), TypeError, "temperature"),
        (lambda: ib(q, c, reduction="avg"), ValueError, "reduction"),
        (lambda: ib(q, c, gather=1), TypeError, "gather"),
        (lambda: ib(q, c, chunk_size=0), ValueError, "chunk_size"),
        (lambda: ib(q, c, chunk_size=2.5), TypeError, "chunk_size"),
        (lambda: ss(q, c, neg[:, :2]), ValueError, "negative"),
        (lambda: ss(q, c, torch.randn(3, 5, 3, dtype=torch.float64)), ValueError, "negative"),
        (lambda: ss(q, c, neg.float()), TypeError, "negative"),
        (lambda: ss(q, c[:2], neg), ValueError, "positive"),
        (lambda: ss(q, c, neg, negative_log_q=torch.zeros(4)), ValueError, "negative_log_q"),
        (lambda: ss(q, c, neg, positive_log_q=torch.zeros(5)), ValueError, "positive_log_q"),
        (lambda: ss(q, c, neg, positive_ids=ids), ValueError, "negative_ids"),
        (lambda: ss(q, c, neg, positive_ids=ids, negative_ids=torch.arange(4)), ValueError, "negative_ids"),
        (lambda: ss(q, c, neg, positive_ids=ids, negative_ids=torch.arange(5) - 1), ValueError, "negative_ids"),
        (lambda: mx(q, c, NegativeSource.batch()), TypeError, "sources"),
        (lambda: mx(q, c, [neg]), TypeError, r"sources\[0\]"),
        (lambda: mx(q, c, [NegativeSource()]), ValueError, r"sources\[0\].embeddings"),
        (
            lambda: mx(q, c, [NegativeSource.batch(), NegativeSource(neg.float())]),
            TypeError,
            r"sources\[1\].embeddings",
        ),
        (lambda: mx(q, c, [NegativeSource.batch(embeddings=neg)]), ValueError, r"sources\[0\].embeddings"),
        (lambda: mx(q, c, [NegativeSource(neg, torch.arange(5))]), ValueError, "positive_ids"),
        (lambda: mx(q, c, [NegativeSource(neg, torch.arange(4))], positive_ids=ids), ValueError, r"sources\[0\].ids"),
        (lambda: mx(q, c, [NegativeSource(neg, log_q=torch.zeros(5) + INF)]), ValueError, r"sources\[0\].log_q"),
        (lambda: mx(q, c, [], positive_ids=ids[:1]), ValueError, "positive_ids"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_names_the_argument(case):
    fn, exc, name = _bad_cases()[case]
    with pytest.raises(exc, match=name):
        fn()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_numpy_ids_written_after_forward_do_not_change_the_gradient(mask_mode, chunk_size):
    # NumPy ids are wrapped, not copied, and torch cannot see writes to them:
    # a chunked backward that rebuilds the mask must use the ids forward saw.
    q, c, log_q, _ = batch(b=6)
    q.requires_grad_(True)
    c.requires_grad_(True)
    ids = np.array([1, 1, 2, 2, 3, 3])
    want = torch.autograd.grad(
        PF.in_batch_softmax_loss(
            q, c, log_q=log_q, candidate_ids=torch.tensor(ids), chunk_size=chunk_size, reduction="sum"
        ),
        (q, c),
    )
    loss = PF.in_batch_softmax_loss(q, c, log_q=log_q, candidate_ids=ids, chunk_size=chunk_size, reduction="sum")
    ids[:] = [9, 8, 7, 6, 5, 4]
    got = torch.autograd.grad(loss, (q, c))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)

"""NCE, several positives per row, biases and accidental hits against TensorFlow's documented formulas.

The reference is a float64 PyTorch transcription of TensorFlow's
``_compute_sampled_logits`` (true logits ``x·w[labels] + b[labels]``, sampled
logits ``x @ w[sampled]ᵀ + b[sampled]``, ``-FLOAT_MAX`` added to every
accidental hit, ``log(expected count)`` subtracted from both, labels ``1/T``
for the T true classes and 0 for the sampled ones) followed by
``sigmoid_cross_entropy_with_logits`` (``max(x, 0) − x·z + log(1 + e^−|x|)``,
summed over the row: ``nce_loss``) or ``softmax_cross_entropy_with_logits``
(``sampled_softmax_loss``). Gradients are compared by running autograd
through both.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyneg
import pyneg.functional as PF
from pyneg import _hits

FLOAT_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------- references
def tf_sampled_logits(
    inputs, weights, biases, labels, sampled, true_ec, sampled_ec, remove_accidental_hits, temperature=1.0
):
    """TensorFlow's _compute_sampled_logits (labels (B, T), shared sampled (S,)); returns logits, labels."""
    b, t = labels.shape
    true_w = weights[labels.reshape(-1)].reshape(b, t, -1)
    true_logits = (inputs.unsqueeze(1) * true_w).sum(-1) / temperature
    sampled_logits = inputs @ weights[sampled].t() / temperature
    if biases is not None:
        true_logits = true_logits + biases[labels]
        sampled_logits = sampled_logits + biases[sampled]
    if remove_accidental_hits:
        penalty = torch.zeros_like(sampled_logits)
        for i in range(b):
            for j in range(len(sampled)):
                if int(sampled[j]) in labels[i].tolist():
                    penalty[i, j] = -FLOAT_MAX
        sampled_logits = sampled_logits + penalty
    if true_ec is not None:
        true_logits = true_logits - torch.log(true_ec)
        sampled_logits = sampled_logits - torch.log(sampled_ec)
    logits = torch.cat([true_logits, sampled_logits], 1)
    out_labels = torch.cat([torch.full_like(true_logits, 1.0 / t), torch.zeros_like(sampled_logits)], 1)
    return logits, out_labels


def tf_nce(*args, **kw):
    """nce_loss: sigmoid_cross_entropy_with_logits, summed over each row."""
    x, z = tf_sampled_logits(*args, **kw)
    return (torch.clamp(x, min=0) - x * z + torch.log1p(torch.exp(-x.abs()))).sum(1)


def tf_sampled_softmax(*args, **kw):
    """sampled_softmax_loss: softmax_cross_entropy_with_logits."""
    x, z = tf_sampled_logits(*args, **kw)
    return -(z * torch.log_softmax(x, 1)).sum(1)


@pytest.fixture(params=["sparse", "dense"])
def mask_mode(request, monkeypatch):
    monkeypatch.setattr(_hits, "DENSE_MASK_FRACTION", 2.0 if request.param == "sparse" else 0.0)
    return request.param


def problem(t=3, b=6, d=5, v=12, s=9, seed=0, unique=True):
    """A TensorFlow-style setup: a (V, d) table, (V,) biases, labels (B, T), shared candidates."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(v, d, generator=g, dtype=torch.float64)
    biases = torch.randn(v, generator=g, dtype=torch.float64)
    inputs = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (b, t), generator=g)  # frequent labels: many accidental hits
    sampler = pyneg.LogUniformSampler(v)
    cand = sampler.sample_candidates(s, labels, unique=unique, seed=seed)
    return weights, biases, inputs, labels, cand


LOSSES = {"nce": (PF.nce_loss, tf_nce), "softmax": (PF.sampled_softmax_loss, tf_sampled_softmax)}


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("bias_mode", ["none", "table", "aligned"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_matches_tensorflow_definition_with_gradients(mask_mode, loss, t, remove, bias_mode, chunk_size):
    fn, ref = LOSSES[loss]
    weights, biases, inputs, labels, cand = problem(t=t)
    sampled = cand.sampled_candidates
    assert torch.isin(sampled, labels).any(), "the test needs accidental hits"
    true_ec, sampled_ec = cand.true_expected_count, cand.sampled_expected_count
    assert true_ec.shape == labels.shape

    def run(w, bias, x):
        kw = {}
        if bias_mode == "table":
            kw["bias"] = bias
        elif bias_mode == "aligned":
            kw["positive_bias"], kw["negative_bias"] = bias[labels], bias[sampled]
        return fn(
            x,
            w[labels],
            w[sampled],
            positive_log_q=true_ec.log(),
            negative_log_q=sampled_ec.log(),
            positive_ids=labels,
            negative_ids=sampled,
            remove_accidental_hits=remove,
            temperature=0.7,
            chunk_size=chunk_size,
            reduction="none",
            **kw,
        )

    leaves = [x.clone().requires_grad_() for x in (weights, biases, inputs)]
    got = run(*leaves)
    got_grads = torch.autograd.grad(got.sum(), leaves, allow_unused=True)
    leaves_ref = [x.clone().requires_grad_() for x in (weights, biases, inputs)]
    want = ref(
        leaves_ref[2],
        leaves_ref[0],
        leaves_ref[1] if bias_mode != "none" else None,
        labels,
        sampled,
        true_ec,
        sampled_ec,
        remove,
        temperature=0.7,
    )
    want_grads = torch.autograd.grad(want.sum(), leaves_ref, allow_unused=True)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    for name, g, w in zip(("weights", "biases", "inputs"), got_grads, want_grads):
        if w is None:
            assert g is None or bool((g == 0).all()), name
        else:
            torch.testing.assert_close(g, w, rtol=1e-11, atol=1e-12, msg=name)


def test_nce_with_log_q_zero_is_word2vec_negative_sampling():
    g = torch.Generator().manual_seed(1)
    u, v, n = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((7, 6), (7, 6), (7, 4, 6)))
    leaves = [x.clone().requires_grad_() for x in (u, v, n)]
    got = PF.nce_loss(*leaves, reduction="none")
    leaves_ref = [x.clone().requires_grad_() for x in (u, v, n)]
    want = PF.negative_sampling_loss(*leaves_ref, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves_ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    # and both are the SGNS formula
    sgns = -torch.log(torch.sigmoid((u * v).sum(1))) - torch.log(torch.sigmoid(-(n @ u.unsqueeze(-1)).squeeze(-1))).sum(
        1
    )
    torch.testing.assert_close(got.detach(), sgns, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_per_row_negatives_match_the_formula(mask_mode, loss):
    """Per-row negatives (B, N, d), ids (B, N), several positives: the same TF formula, row by row."""
    fn, ref = LOSSES[loss]
    weights, biases, inputs, labels, _ = problem(t=2)
    g = torch.Generator().manual_seed(5)
    neg_ids = torch.randint(0, 12, (6, 7), generator=g)
    neg_lq = torch.log(torch.rand(6, 7, generator=g, dtype=torch.float64) + 0.1)
    pos_lq = torch.log(torch.rand(6, 2, generator=g, dtype=torch.float64) + 0.1)
    got = fn(
        inputs,
        weights[labels],
        weights[neg_ids],
        positive_log_q=pos_lq,
        negative_log_q=neg_lq,
        positive_ids=labels,
        negative_ids=neg_ids,
        bias=biases,
        reduction="none",
    )
    want = torch.stack(
        [
            ref(
                inputs[i : i + 1],
                weights,
                biases,
                labels[i : i + 1],
                neg_ids[i],
                pos_lq[i : i + 1].exp(),
                neg_lq[i].exp(),
                True,
            )[0]
            for i in range(6)
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("per_row", [False, True])
def test_one_positive_per_row_is_exactly_the_two_dimensional_form(loss, per_row):
    """T = 1 given as (B, 1, d) gives bit for bit the (B, d) results (today's)."""
    fn = LOSSES[loss][0]
    weights, biases, inputs, labels, cand = problem(t=1)
    lab = labels[:, 0]
    neg_ids = cand.sampled_candidates.expand(6, -1) if per_row else cand.sampled_candidates
    plq = cand.true_expected_count.log()
    nlq = cand.sampled_expected_count.log().expand(neg_ids.shape)
    x1, x2 = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    a = fn(
        x1,
        weights[lab],
        weights[neg_ids],
        positive_log_q=plq[:, 0],
        negative_log_q=nlq,
        positive_ids=lab,
        negative_ids=neg_ids,
        reduction="none",
    )
    b = fn(
        x2,
        weights[lab].unsqueeze(1),
        weights[neg_ids],
        positive_log_q=plq,
        negative_log_q=nlq,
        positive_ids=labels,
        negative_ids=neg_ids,
        reduction="none",
    )
    assert torch.equal(a, b)
    assert torch.equal(torch.autograd.grad(a.sum(), x1)[0], torch.autograd.grad(b.sum(), x2)[0])


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_gradcheck_nce(per_row, chunk_size):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    shape = (4, 5, 3) if per_row else (5, 3)
    n = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    pids = torch.randint(0, 6, (4, 2), generator=g)
    nids = torch.randint(0, 6, shape[:-1], generator=g)
    nlq = torch.log(torch.rand(shape[:-1], generator=g, dtype=torch.float64) + 0.1)

    def fn(q, p, n, bias):
        return PF.nce_loss(
            q,
            p,
            n,
            negative_log_q=nlq,
            positive_ids=pids,
            negative_ids=nids,
            bias=bias,
            temperature=0.5,
            chunk_size=chunk_size,
            reduction="sum",
        )

    assert torch.autograd.gradcheck(fn, (q, p, n, bias))


def test_gradcheck_sampled_softmax_several_positives_and_biases():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    n = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pb = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    nb = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    pids = torch.randint(0, 5, (4, 3), generator=g)
    nids = torch.randint(0, 5, (6,), generator=g)

    def fn(q, p, n, pb, nb):
        return PF.sampled_softmax_loss(
            q,
            p,
            n,
            positive_ids=pids,
            negative_ids=nids,
            positive_bias=pb,
            negative_bias=nb,
            chunk_size=4,
            reduction="sum",
        )

    assert torch.autograd.gradcheck(fn, (q, p, n, pb, nb))


def test_nce_module_equals_functional():
    weights, biases, inputs, labels, cand = problem(t=2)
    kw = dict(
        positive_log_q=cand.true_expected_count.log(),
        negative_log_q=cand.sampled_expected_count.log(),
        positive_ids=labels,
        negative_ids=cand.sampled_candidates,
        bias=biases,
        sample_weight=torch.arange(6.0, dtype=torch.float64),
    )
    args = (inputs, weights[labels], weights[cand.sampled_candidates])
    m = pyneg.losses.NCELoss(temperature=0.3, reduction="sum", remove_accidental_hits=False, chunk_size=2)
    want = PF.nce_loss(*args, temperature=0.3, reduction="sum", remove_accidental_hits=False, chunk_size=2, **kw)
    assert torch.equal(m(*args, **kw), want)
    m = pyneg.losses.SampledSoftmaxLoss(reduction="none")
    assert torch.equal(m(*args, **kw), PF.sampled_softmax_loss(*args, reduction="none", **kw))
    assert "remove_accidental_hits=False" in repr(pyneg.losses.NCELoss(remove_accidental_hits=False))
    with pytest.raises(TypeError, match="remove_accidental_hits"):
        pyneg.losses.NCELoss(remove_accidental_hits=1)


# ------------------------------------------------------ accidental hits
def ref_hits(pos, neg):
    pos = pos.reshape(len(pos), -1)
    pairs = set()
    for i in range(len(pos)):
        row = neg[i] if neg.dim() == 2 else neg
        for j in range(len(row)):
            if int(row[j]) in pos[i].tolist():
                pairs.add((i, j))
    return sorted(pairs)


@pytest.mark.parametrize("t", [None, 1, 3])
@pytest.mark.parametrize("per_row", [False, True])
def test_compute_accidental_hits_lists_every_copy(t, per_row):
    g = torch.Generator().manual_seed(6)
    pos = torch.randint(0, 6, (9,) if t is None else (9, t), generator=g)
    neg = torch.randint(0, 6, (9, 11) if per_row else (11,), generator=g)  # repeated candidates
    rows, cols = PF.compute_accidental_hits(pos, neg)
    assert rows.dtype == cols.dtype == torch.int64
    assert list(zip(rows.tolist(), cols.tolist())) == ref_hits(pos, neg)
    assert len(rows) > 0


def test_compute_accidental_hits_masks_what_the_losses_mask():
    weights, _, inputs, labels, cand = problem(t=3, unique=False)
    rows, cols = PF.compute_accidental_hits(labels, cand.sampled_candidates)
    sampled = cand.sampled_candidates
    got = PF.sampled_softmax_loss(
        inputs, weights[labels], weights[sampled], positive_ids=labels, negative_ids=sampled, reduction="none"
    )
    neg = inputs @ weights[sampled].t()
    neg[rows, cols] = -math.inf
    pos = (inputs.unsqueeze(1) * weights[labels]).sum(-1)
    want = torch.logsumexp(torch.cat([pos, neg], 1), 1) - pos.mean(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_compute_accidental_hits_with_all_equal_ids():
    pos = torch.zeros(50, 2, dtype=torch.long)
    rows, cols = PF.compute_accidental_hits(pos, torch.zeros(40, dtype=torch.long))
    assert rows.numel() == 50 * 40
    assert torch.equal(rows, torch.arange(50).repeat_interleave(40)) and torch.equal(cols, torch.arange(40).repeat(50))
    rows, cols = PF.compute_accidental_hits(pos, torch.ones(40, dtype=torch.long))
    assert rows.numel() == 0 and cols.numel() == 0


def test_compute_accidental_hits_accepts_arrays_and_lists():
    rows, cols = PF.compute_accidental_hits(np.array([[1, 2], [3, 4]]), [2, 3, 2, 9])
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    "args,exc,name",
    [
        ((torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long)), ValueError, "positive_ids"),
        ((torch.zeros(2, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long)), ValueError, "negative_ids"),
        ((torch.zeros(2, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long)), ValueError, "negative_ids"),
        ((torch.zeros(2), torch.zeros(3, dtype=torch.long)), TypeError, "positive_ids"),
        ((torch.zeros(2, dtype=torch.long), torch.tensor([0, -1])), ValueError, "negative_ids"),
        ((torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long).to("meta")), ValueError, "negative_ids"),
        (("ab", torch.zeros(3, dtype=torch.long)), TypeError, "positive_ids"),
    ],
)
def test_compute_accidental_hits_bad_input(args, exc, name):
    with pytest.raises(exc, match=name):
        PF.compute_accidental_hits(*args)


# ------------------------------------------------------ expected counts
def test_unique_expected_count_is_tensorflows():
    """TensorFlow: k·p when num_tries == k (no draw rejected), else 1 − (1 − p)^num_tries."""
    s = pyneg.AliasSampler([1.0, 3.0, 0.0, 4.0])
    p = s.probs
    ids = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(s.expected_count(ids, 3, num_tries=3), 3 * p, rtol=1e-15, atol=0)
    torch.testing.assert_close(s.expected_count(ids, 3, num_tries=7), 1 - (1 - p) ** 7, rtol=1e-14, atol=0)
    # per-row tries: row 0 took no extra tries, row 1 did
    rows = torch.tensor([[0, 1], [3, 1]])
    got = s.expected_count(rows, 2, num_tries=torch.tensor([2, 5]))
    want = torch.stack([2 * p[rows[0]], 1 - (1 - p[rows[1]]) ** 5])
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert torch.isinf(s.log_expected_count([2], 3, num_tries=3)).all()
    assert torch.isinf(s.log_expected_count([2], 3, num_tries=5)).all()


def test_sample_candidates_without_collisions_reports_k_p():
    s = pyneg.UniformSampler(10**6)
    cand = s.sample_candidates(8, torch.tensor([[1, 2], [3, 4], [5, 6]]), unique=True, seed=0)
    assert cand.num_tries == 8  # a collision among 8 of 10**6 is very unlikely, and the seed is fixed
    torch.testing.assert_close(
        cand.sampled_expected_count, torch.full((8,), 8e-6, dtype=torch.float64), rtol=1e-14, atol=0
    )
    assert cand.true_expected_count.shape == (3, 2)
    torch.testing.assert_close(
        cand.true_expected_count, torch.full((3, 2), 8e-6, dtype=torch.float64), rtol=1e-14, atol=0
    )


def test_sample_candidates_several_true_classes():
    s = pyneg.LogUniformSampler(30)
    true = torch.tensor([[0, 5], [29, 3]])
    cand = s.sample_candidates(12, true, unique=True, seed=1)
    assert cand.num_tries > 12  # collisions: the 1 − (1 − p)^tries branch
    p = s.probs
    torch.testing.assert_close(cand.true_expected_count, 1 - (1 - p[true]) ** cand.num_tries, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="true_classes"):
        s.sample_candidates(4, torch.zeros(2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="true_classes"):
        s.sample_candidates(4, [[0, 30]])


@pytest.mark.parametrize(
    "tries,exc",
    [
        (float("nan"), ValueError),
        (2.5, ValueError),
        (True, TypeError),
        ("3", TypeError),
        (0, ValueError),
        (torch.tensor([3, 4, 5]), ValueError),
        (torch.tensor([3.0 + 0j]), TypeError),
        (float("inf"), ValueError),
        (torch.tensor([[3, 4]]), ValueError),
    ],
)
def test_num_tries_bad_input(tries, exc):
    s = pyneg.UniformSampler(10)
    with pytest.raises(exc, match="num_tries"):
        s.log_expected_count(torch.tensor([[1, 2, 3], [4, 5, 6]]), 3, num_tries=tries)


def test_num_tries_accepts_numpy_ints():
    s = pyneg.UniformSampler(10)
    a = s.log_expected_count([1, 2], 2, num_tries=np.int64(5))
    torch.testing.assert_close(a, s.log_expected_count([1, 2], 2, num_tries=5), rtol=0, atol=0)


# -------------------------------------------------------------- bad input
def _bad_cases():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, dtype=torch.float64, generator=g)
    p = torch.randn(4, 2, 3, dtype=torch.float64, generator=g)
    n = torch.randn(5, 3, dtype=torch.float64, generator=g)
    pids, nids = torch.zeros(4, 2, dtype=torch.long), torch.arange(5)
    nce = PF.nce_loss
    return [
        (lambda: nce(q, p[:, :0], n), ValueError, "positive"),
        (lambda: nce(q, p[:3], n), ValueError, "positive"),
        (lambda: nce(q, p, n, positive_log_q=torch.zeros(4)), ValueError, "positive_log_q"),
        (lambda: nce(q, p, n, positive_ids=pids[:, :1], negative_ids=nids), ValueError, "positive_ids"),
        (lambda: nce(q, p, n, positive_ids=pids), ValueError, "negative_ids"),
        (lambda: nce(q, p, n, positive_bias=torch.zeros(4, dtype=torch.float64)), ValueError, "positive_bias"),
        (lambda: nce(q, p, n, negative_bias=torch.zeros(4, dtype=torch.float64)), ValueError, "negative_bias"),
        (lambda: nce(q, p, n, negative_bias=torch.zeros(5)), TypeError, "negative_bias"),
        (lambda: nce(q, p, n, negative_bias=torch.zeros(5, dtype=torch.long)), TypeError, "negative_bias"),
        (lambda: nce(q, p, n, negative_bias=np.zeros(5)), TypeError, "negative_bias"),
        (lambda: nce(q, p, n, bias=torch.zeros(6, dtype=torch.float64)), ValueError, "bias"),
        (
            lambda: nce(q, p, n, bias=torch.zeros(6, 1, dtype=torch.float64), positive_ids=pids, negative_ids=nids),
            ValueError,
            "bias",
        ),
        (
            lambda: nce(q, p, n, bias=torch.zeros(4, dtype=torch.float64), positive_ids=pids, negative_ids=nids),
            ValueError,
            "negative_ids",
        ),
        (
            lambda: nce(
                q,
                p,
                n,
                bias=torch.zeros(6, dtype=torch.float64),
                positive_ids=pids,
                negative_ids=nids,
                negative_bias=torch.zeros(5, dtype=torch.float64),
            ),
            ValueError,
            "bias",
        ),
        (lambda: nce(q, p, n, remove_accidental_hits="no"), TypeError, "remove_accidental_hits"),
        (lambda: nce(q, p, n, sample_weight=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "sample_weight"),
        (lambda: nce(q, p, n, sample_weight=torch.ones(3)), ValueError, "sample_weight"),
        (lambda: nce(q, p, n, sample_weight=torch.tensor([1.0, math.nan, 1.0, 1.0])), ValueError, "sample_weight"),
        (lambda: nce(q, p, n, sample_weight=torch.ones(4, dtype=torch.bool)), TypeError, "sample_weight"),
        (lambda: nce(q, p, n, reduction="avg"), ValueError, "reduction"),
        (lambda: nce(q, p, n, temperature=0.0), ValueError, "temperature"),
        (lambda: nce(q, p, n.float()), TypeError, "negative"),
        (lambda: nce(q, p, n.to_sparse()), TypeError, "negative"),
        (
            lambda: PF.sampled_softmax_loss(q, p, n, positive_ids=pids, negative_ids=nids[:4]),
            ValueError,
            "negative_ids",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_names_the_argument(case):
    fn, exc, name = _bad_cases()[case]
    with pytest.raises(exc, match=name):
        fn()

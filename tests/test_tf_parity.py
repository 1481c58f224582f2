"""pyneg against TensorFlow itself, where TensorFlow is installed (skipped otherwise; not a CI dependency).

The same inputs (pyneg's candidates and expected counts passed to TensorFlow
as ``sampled_values``) go through ``tf.nn.nce_loss``,
``tf.nn.sampled_softmax_loss`` and ``tf.nn.compute_accidental_hits``; losses
and gradients must agree to float64 precision. TensorFlow's own candidate
samplers are compared with pyneg's expected-count formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

tf = pytest.importorskip("tensorflow")

import pyneg  # noqa: E402
import pyneg.functional as PF  # noqa: E402


def setup(t, seed=0, v=15, d=6, b=8, s=7):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(v, d, generator=g, dtype=torch.float64)
    biases = torch.randn(v, generator=g, dtype=torch.float64)
    inputs = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.stack([torch.randperm(6, generator=g)[:t] for _ in range(b)])  # distinct per row, frequent
    cand = pyneg.LogUniformSampler(v).sample_candidates(s, labels, unique=True, seed=seed)
    assert torch.isin(cand.sampled_candidates, labels).any()
    return weights, biases, inputs, labels, cand


def tf_loss(fn, weights, biases, inputs, labels, cand, remove):
    w, b, x = (tf.Variable(a.numpy()) for a in (weights, biases, inputs))
    sampled = (
        tf.constant(cand.sampled_candidates.numpy()),
        tf.constant(cand.true_expected_count.numpy()),
        tf.constant(cand.sampled_expected_count.numpy()),
    )
    with tf.GradientTape() as tape:
        loss = fn(
            weights=w,
            biases=b,
            labels=tf.constant(labels.numpy()),
            inputs=x,
            num_sampled=len(cand.sampled_candidates),
            num_classes=weights.shape[0],
            num_true=labels.shape[1],
            sampled_values=sampled,
            remove_accidental_hits=remove,
        )
        total = tf.reduce_sum(loss)
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, [w, b, x])]
    return loss.numpy(), grads


PAIRS = {
    "nce": (PF.nce_loss, lambda: tf.nn.nce_loss),
    "sampled_softmax": (PF.sampled_softmax_loss, lambda: tf.nn.sampled_softmax_loss),
}


@pytest.mark.parametrize("loss", sorted(PAIRS))
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("remove", [True, False])
def test_losses_and_gradients_match_tensorflow(loss, t, remove):
    ours, theirs = PAIRS[loss]
    weights, biases, inputs, labels, cand = setup(t)
    leaves = [a.clone().requires_grad_() for a in (weights, biases, inputs)]
    w, b, x = leaves
    sampled = cand.sampled_candidates
    got = ours(
        x,
        w[labels],
        w[sampled],
        positive_log_q=cand.true_expected_count.log(),
        negative_log_q=cand.sampled_expected_count.log(),
        positive_ids=labels,
        negative_ids=sampled,
        bias=b,
        remove_accidental_hits=remove,
        reduction="none",
    )
    grads = torch.autograd.grad(got.sum(), leaves)
    want, want_grads = tf_loss(theirs(), weights, biases, inputs, labels, cand, remove)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-10)
    for name, g, wg in zip(("weights", "biases", "inputs"), grads, want_grads):
        np.testing.assert_allclose(g.numpy(), wg, rtol=1e-9, atol=1e-10, err_msg=name)


def test_compute_accidental_hits_matches_tensorflow_for_distinct_candidates():
    _, _, _, labels, cand = setup(3)
    rows, cols = PF.compute_accidental_hits(labels, cand.sampled_candidates)
    res = tf.nn.compute_accidental_hits(
        tf.constant(labels.numpy()), tf.constant(cand.sampled_candidates.numpy()), num_true=3
    )
    theirs = sorted(zip(res.indices.numpy().tolist(), res.ids.numpy().tolist()))
    assert list(zip(rows.tolist(), cols.tolist())) == theirs and len(theirs) > 0
    assert np.all(res.weights.numpy() == -np.finfo(np.float32).max)


def test_compute_accidental_hits_repeated_candidates_the_documented_difference():
    labels = torch.tensor([[2, 7], [3, 4]])
    cands = torch.tensor([2, 3, 2, 9, 3])
    res = tf.nn.compute_accidental_hits(tf.constant(labels.numpy()), tf.constant(cands.numpy()), num_true=2)
    theirs = set(zip(res.indices.numpy().tolist(), res.ids.numpy().tolist()))
    assert theirs == {(0, 2), (1, 4)}  # TensorFlow: only each id's last copy
    rows, cols = PF.compute_accidental_hits(labels, cands)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (0, 2), (1, 1), (1, 4)]  # pyneg: every copy


def test_unique_expected_count_without_collisions_is_k_p_as_in_tensorflow():
    v, k = 1_000_000, 8
    true = np.array([[1, 2], [3, 4]], dtype=np.int64)
    res = tf.random.uniform_candidate_sampler(true, num_true=2, num_sampled=k, unique=True, range_max=v, seed=1)
    np.testing.assert_allclose(res.sampled_expected_count.numpy(), k / v, rtol=1e-6)  # TensorFlow: k·p
    s = pyneg.UniformSampler(v)
    ids = torch.from_numpy(res.sampled_candidates.numpy())
    np.testing.assert_allclose(
        s.expected_count(ids, k, num_tries=k).numpy(), res.sampled_expected_count.numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        s.expected_count(torch.from_numpy(true), k, num_tries=k).numpy(), res.true_expected_count.numpy(), rtol=1e-6
    )


def test_unique_expected_count_with_collisions_matches_tensorflow():
    v, k = 40, 12
    true = np.array([[0, 5], [39, 2]], dtype=np.int64)
    res = tf.random.log_uniform_candidate_sampler(true, num_true=2, num_sampled=k, unique=True, range_max=v, seed=3)
    s = pyneg.LogUniformSampler(v)
    ids = torch.from_numpy(res.sampled_candidates.numpy())
    p = s.probs[ids].numpy()
    # TensorFlow does not report num_tries: recover it from one count, then every count must follow.
    ec = res.sampled_expected_count.numpy().astype(np.float64)
    tries = round(np.log1p(-ec[0]) / np.log1p(-p[0]))
    assert tries > k
    np.testing.assert_allclose(s.expected_count(ids, k, num_tries=tries).numpy(), ec, rtol=1e-5)
    np.testing.assert_allclose(
        s.expected_count(torch.from_numpy(true), k, num_tries=tries).numpy(), res.true_expected_count.numpy(), rtol=1e-5
    )
    rep = tf.random.log_uniform_candidate_sampler(true, num_true=2, num_sampled=k, unique=False, range_max=v, seed=3)
    np.testing.assert_allclose(
        s.expected_count(torch.from_numpy(true), k).numpy(), rep.true_expected_count.numpy(), rtol=1e-5
    )

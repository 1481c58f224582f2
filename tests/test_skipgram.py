"""pyneg.skipgram: pair generation, the fused negative-sampling loss and the in-place SGD steps,
each against a plain PyTorch / Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_samplers import philox4x32_10  # the plain-Python Philox reference
from torch import nn

import pyneg
from pyneg import skipgram as sg


# ----------------------------------------------------------------- references
def reference_loss(w_in, w_out, centres, contexts, negatives):
    """-log σ(u_o·v) - Σ_k log σ(-u_k·v) per pair, from gathered rows."""
    v = w_in[centres]
    pos = (v * w_out[contexts]).sum(-1)
    neg = (w_out[negatives] * v.unsqueeze(1)).sum(-1)
    return -nn.functional.logsigmoid(pos) - nn.functional.logsigmoid(-neg).sum(-1)


def make_batch(v_in=50, v_out=37, d=12, b=64, k=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_in = torch.randn(v_in, d, generator=g, dtype=dtype) * 0.4
    w_out = torch.randn(v_out, d, generator=g, dtype=dtype) * 0.4
    c = torch.randint(0, v_in, (b,), generator=g)
    x = torch.randint(0, v_out, (b,), generator=g)
    n = torch.randint(0, v_out, (b, k), generator=g)
    return w_in, w_out, c, x, n


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


# ------------------------------------------------------------- fused loss
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sparse", [False, True])
def test_loss_and_gradients_match_plain_pytorch(dtype, sparse):
    w_in, w_out, c, x, n = make_batch(dtype=dtype)
    weights = torch.rand(c.shape[0], dtype=dtype)  # a non-uniform grad_loss
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    loss = sg.negative_sampling_embedding_loss(a, b, c, x, n, "none", sparse=sparse)
    (loss * weights).sum().backward()
    ra, rb = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    ref = reference_loss(ra, rb, c, x, n)
    (ref * weights).sum().backward()
    torch.testing.assert_close(loss, ref, **TOL[dtype])
    assert a.grad.is_sparse == sparse and b.grad.is_sparse == sparse
    for got, want, ids in ((a.grad, ra.grad, c), (b.grad, rb.grad, torch.cat([x, n.flatten()]))):
        if sparse:
            # Only the touched rows, distinct and ascending (coalesced by construction).
            assert torch.equal(got._indices()[0], torch.unique(ids))
            got = got.to_dense()
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_loss_matches_functional_negative_sampling_loss_and_reductions():
    w_in, w_out, c, x, n = make_batch()
    want = pyneg.functional.negative_sampling_loss(w_in[c], w_out[x], w_out[n], reduction="none")
    for reduction, f in (("none", lambda t: t), ("sum", torch.sum), ("mean", torch.mean)):
        got = sg.negative_sampling_embedding_loss(w_in, w_out, c, x, n, reduction)
        torch.testing.assert_close(got, f(want), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    w_in, w_out, c, x, n = make_batch(v_in=7, v_out=6, d=4, b=5, k=3)
    w_in.requires_grad_()
    w_out.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: sg.negative_sampling_embedding_loss(a, b, c, x, n, "none"), (w_in, w_out)
    )


def test_only_one_table_needs_grad():
    w_in, w_out, c, x, n = make_batch()
    a = w_in.clone().requires_grad_()
    sg.negative_sampling_embedding_loss(a, w_out, c, x, n, "sum").backward()
    ra = w_in.clone().requires_grad_()
    reference_loss(ra, w_out, c, x, n).sum().backward()
    torch.testing.assert_close(a.grad, ra.grad)


def test_fallback_path_for_other_dtypes_matches_kernel():
    w_in, w_out, c, x, n = make_batch(dtype=torch.float32)
    got = sg.negative_sampling_embedding_loss(w_in.to(torch.bfloat16), w_out.to(torch.bfloat16), c, x, n, "none")
    want = sg.negative_sampling_embedding_loss(w_in, w_out, c, x, n, "none")
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)


def big_batch(dtype=torch.float64):
    # Large enough that the kernels split the work across threads.
    return make_batch(v_in=500, v_out=300, d=32, b=4096, k=5, dtype=dtype, seed=3)


def with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradients_bitwise_identical_across_thread_counts(sparse):
    w_in, w_out, c, x, n = big_batch(torch.float32)

    def grads():
        a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
        loss = sg.negative_sampling_embedding_loss(a, b, c, x, n, "sum", sparse=sparse)
        loss.backward()
        return loss.detach(), a.grad.to_dense(), b.grad.to_dense()

    one = with_threads(1, grads)
    for threads in (2, 3, 4):
        for got, want in zip(with_threads(threads, grads), one):
            assert torch.equal(got, want)


# ----------------------------------------------------------- in-place SGD
def torch_sgd_reference(w_in, w_out, c, x, n, lr, lr_end, batch_size):
    a, b = w_in.clone().requires_grad_(), w_out.clone().requires_grad_()
    opt = torch.optim.SGD([a, b], lr=lr)
    total = 0.0
    for first in range(0, c.shape[0], batch_size):
        for group in opt.param_groups:
            group["lr"] = lr + (lr_end - lr) * first / c.shape[0]
        s = slice(first, first + batch_size)
        loss = reference_loss(a, b, c[s], x[s], n[s]).sum()
        total += loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return a.detach(), b.detach(), total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_sgd_step_equals_torch_optim_sgd_on_the_summed_loss(dtype, batch_size):
    # batch_size 1 runs the per-pair kernel (word2vec's inner loop), larger
    # sizes the mini-batch kernel; make_batch's 37 output rows give repeated
    # rows within a pair and within a mini-batch.
    w_in, w_out, c, x, n = make_batch(b=300, dtype=dtype)
    a, b = w_in.clone(), w_out.clone()
    total = sg.negative_sampling_sgd_(a, b, c, x, n, 0.2, lr_end=0.05, batch_size=batch_size, compute_loss=True)
    ra, rb, rtotal = torch_sgd_reference(w_in, w_out, c, x, n, 0.2, 0.05, batch_size)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, ra, **tol)
    torch.testing.assert_close(b, rb, **tol)
    assert total == pytest.approx(rtotal, rel=1e-12 if dtype == torch.float64 else 1e-5)
    assert sg.negative_sampling_sgd_(a, b, c, x, n, 0.1) is None  # no loss unless asked


def test_sgd_step_is_bitwise_identical_across_thread_counts():
    w_in, w_out, c, x, n = big_batch(torch.float32)

    def run():
        a, b = w_in.clone(), w_out.clone()
        sg.negative_sampling_sgd_(a, b, c, x, n, 0.05, lr_end=0.01, batch_size=2048)
        return a, b

    one = with_threads(1, run)
    for threads in (2, 4):
        got = with_threads(threads, run)
        assert torch.equal(got[0], one[0]) and torch.equal(got[1], one[1])
    assert not torch.equal(one[0], w_in) and not torch.equal(one[1], w_out)


def test_module_forward_and_sgd_step():
    m = pyneg.SkipGramNegativeSampling(50, 12, num_outputs=37, dtype=torch.float64)
    assert m.weight.abs().max() <= 0.5 / 12 and not m.output_weight.any()  # word2vec's init
    _, _, c, x, n = make_batch()
    with torch.no_grad():
        m.output_weight.normal_()
    torch.testing.assert_close(m(c, x, n), reference_loss(m.weight, m.output_weight, c, x, n).mean())
    before = m.weight.detach().clone()
    ra, rb, _ = torch_sgd_reference(m.weight.detach(), m.output_weight.detach(), c, x, n, 0.1, 0.1, 16)
    m.sgd_step_(c, x, n, 0.1, batch_size=16)
    torch.testing.assert_close(m.weight.detach(), ra)
    torch.testing.assert_close(m.output_weight.detach(), rb)
    assert not torch.equal(before, m.weight.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_size", [1, 100])
@pytest.mark.parametrize("bias", [False, True])
def test_hierarchical_softmax_sgd_equals_torch_optim_sgd(bias, batch_size, dtype):
    g = torch.Generator().manual_seed(1)
    v, d = 40, 8
    counts = torch.randint(1, 100, (v,), generator=g).double()
    hs = pyneg.HierarchicalSoftmax(counts, d, bias=bias, dtype=dtype)
    with torch.no_grad():
        for p in hs.parameters():
            p.normal_(0, 0.3, generator=g)
    ref_hs = pyneg.HierarchicalSoftmax(counts, d, bias=bias, dtype=dtype)
    ref_hs.load_state_dict(hs.state_dict())
    w_in = torch.randn(v, d, generator=g, dtype=dtype) * 0.3
    c, x = torch.randint(0, v, (250,), generator=g), torch.randint(0, v, (250,), generator=g)
    a = w_in.clone()
    total = sg.hierarchical_softmax_sgd_(a, hs, c, x, 0.1, lr_end=0.02, batch_size=batch_size, compute_loss=True)
    ra = w_in.clone().requires_grad_()
    opt = torch.optim.SGD([ra, *ref_hs.parameters()], lr=0.1)
    rtotal = 0.0
    for first in range(0, 250, batch_size):
        for group in opt.param_groups:
            group["lr"] = 0.1 + (0.02 - 0.1) * first / 250
        loss = ref_hs(ra[c[first : first + batch_size]], x[first : first + batch_size], reduction="sum")
        rtotal += loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, ra.detach(), **tol)
    for p, q in zip(hs.parameters(), ref_hs.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), **tol)
    assert total == pytest.approx(rtotal, rel=1e-12 if dtype == torch.float64 else 1e-5)


# --------------------------------------------------------- pair generation
def reference_pairs(tokens, offsets, keep, window, seed, offset=0):
    """A plain-Python transcription of the documented rule (Philox block per token)."""
    starts = list(offsets) + [len(tokens)]
    centres, contexts = [], []
    for s in range(len(offsets)):
        kept, reach = [], []
        for p in range(starts[s], starts[s + 1]):
            pos = offset + p
            r = philox4x32_10((pos & 0xFFFFFFFF, pos >> 32, 0, 16), (seed & 0xFFFFFFFF, seed >> 32))
            u = (((r[1] << 32) | r[0]) >> 11) * 2.0**-53
            if keep is not None and not u < keep[tokens[p]]:
                continue
            kept.append(tokens[p])
            reach.append(1 + ((r[2] * window) >> 32))
        for i, b in enumerate(reach):
            for j in range(max(0, i - b), min(len(kept), i + b + 1)):
                if j != i:
                    centres.append(kept[i])
                    contexts.append(kept[j])
    return centres, contexts


def test_pairs_equal_the_python_reference():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, 400)
    offsets = np.array([0, 17, 17, 60, 61, 200, 390])
    keep = rng.random(30)
    keep[:5] = 1.0
    for seed, offset, window in ((7, 0, 5), (2**40 + 3, 2**33 - 100, 3), (0, 5, 1)):
        c, x = sg.skipgram_pairs(tokens, window, offsets=offsets, keep=keep, seed=seed, offset=offset)
        rc, rx = reference_pairs(tokens.tolist(), offsets.tolist(), keep, window, seed, offset)
        assert c.tolist() == rc and x.tolist() == rx
    c, x = sg.skipgram_pairs(tokens, 4, seed=9)  # no subsampling, one sentence
    rc, rx = reference_pairs(tokens.tolist(), [0], None, 4, 9)
    assert c.tolist() == rc and x.tolist() == rx


def test_pairs_of_chunks_equal_the_pairs_of_the_whole():
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(rng.integers(0, 50, 5000))
    offsets = torch.arange(0, 5000, 13)
    keep = sg.keep_probability(torch.bincount(tokens, minlength=50).double(), 0.01)
    whole = sg.skipgram_pairs(tokens, 5, offsets=offsets, keep=keep, seed=4)
    cut = int(offsets[200])
    a = sg.skipgram_pairs(tokens[:cut], 5, offsets=offsets[:200], keep=keep, seed=4)
    b = sg.skipgram_pairs(tokens[cut:], 5, offsets=offsets[200:] - cut, keep=keep, seed=4, offset=cut)
    assert torch.equal(whole[0], torch.cat([a[0], b[0]])) and torch.equal(whole[1], torch.cat([a[1], b[1]]))


def test_keep_probability_formula():
    counts = torch.tensor([1000.0, 100.0, 10.0, 1.0, 0.0], dtype=torch.float64)
    t = 1e-2 * counts.sum()
    want = torch.clamp(((counts / t).sqrt() + 1) * t / counts, max=1.0)
    want[4] = 1.0
    torch.testing.assert_close(sg.keep_probability(counts, 1e-2), want)
    assert torch.equal(sg.keep_probability(counts, 0.0), torch.ones(5, dtype=torch.float64))


def test_subsampling_frequencies():
    # Two-token sentences (word, marker): the marker (always kept) pairs with the word iff it was kept.
    rng = np.random.default_rng(2)
    words = rng.integers(0, 6, 60000)
    tokens = np.stack([words, np.full_like(words, 6)], 1).ravel()
    keep = np.array([0.05, 0.2, 0.5, 0.8, 0.95, 1.0, 1.0])
    c, x = sg.skipgram_pairs(tokens, 2, offsets=np.arange(0, tokens.size, 2), keep=keep, seed=11)
    kept = torch.bincount(x[c == 6], minlength=7).numpy()[:6]
    seen = np.bincount(words, minlength=6)
    expected = seen * keep[:6]
    sd = np.sqrt(seen * keep[:6] * (1 - keep[:6])) + 1e-9
    assert np.all(np.abs(kept - expected) <= 5 * sd + 1e-9), (kept, expected)
    assert kept[5] == seen[5]


def test_reduced_window_is_uniform():
    # No subsampling, one long sentence: an interior centre has 2b contexts, b ~ U{1..window}.
    window, n = 5, 30000
    c, _ = sg.skipgram_pairs(np.arange(n), window, seed=3)
    per_centre = torch.bincount(c, minlength=n)[window:-window].numpy()
    assert set(np.unique(per_centre)) <= {2, 4, 6, 8, 10}
    freq = np.bincount(per_centre // 2, minlength=window + 1)[1:] / per_centre.size
    assert np.all(np.abs(freq - 1 / window) < 5 * math.sqrt(0.2 * 0.8 / per_centre.size))


def test_pairs_dataset_batches_and_epochs():
    rng = np.random.default_rng(5)
    tokens = torch.from_numpy(rng.integers(0, 40, 3000))
    offsets = torch.arange(0, 3000, 10)
    ds = pyneg.SkipGramPairs(tokens, 3, offsets=offsets, batch_size=100, seed=8, chunk_tokens=700, shuffle=False)
    chunks = list(ds.chunks())
    assert chunks[0][0] == 0 and chunks[-1][1] == 3000
    assert all((lo % 10 == 0 and hi - lo >= 700) or hi == 3000 for lo, hi in chunks)
    epoch0 = list(ds)
    assert all(b[0].numel() <= 100 for b in epoch0)
    c = torch.cat([b[0] for b in epoch0])
    x = torch.cat([b[1] for b in epoch0])
    whole = sg.skipgram_pairs(tokens, 3, offsets=offsets, seed=8)
    assert torch.equal(c, whole[0]) and torch.equal(x, whole[1])  # chunking changes nothing
    epoch1 = torch.cat([b[0] for b in ds])
    assert not torch.equal(epoch1[: min(c.numel(), epoch1.numel())], c[: epoch1.numel()])
    ds.set_epoch(0)
    assert torch.equal(torch.cat([b[0] for b in ds]), c)
    shuffled = pyneg.SkipGramPairs(tokens, 3, offsets=offsets, batch_size=100, seed=8, chunk_tokens=700)
    sc = torch.cat([b[0] for b in shuffled])
    assert not torch.equal(sc, c) and torch.equal(sc.sort().values, c.sort().values)


# -------------------------------------------------------------- bad input
def test_bad_loss_inputs_raise_naming_the_argument():
    w_in, w_out, c, x, n = make_batch()
    f = sg.negative_sampling_embedding_loss
    cases = [
        ((w_in, w_out, c, x, torch.full_like(n, 37)), ValueError, "negatives"),
        ((w_in, w_out, c + 50, x, n), ValueError, "centres"),
        ((w_in, w_out, c, x - 1 - x.max(), n), ValueError, "contexts"),
        ((w_in, w_out, c, x, n[:3]), ValueError, "negatives"),
        ((w_in, w_out, c, x[:3], n), ValueError, "contexts"),
        ((w_in, w_out.float(), c, x, n), TypeError, "output_weight"),
        ((w_in, w_out[:, :3], c, x, n), ValueError, "output_weight"),
        ((w_in[0], w_out, c, x, n), ValueError, "input_weight"),
        ((w_in.long(), w_out, c, x, n), TypeError, "input_weight"),
        ((w_in, w_out, c.double(), x, n), TypeError, "centres"),
        (("w", w_out, c, x, n), TypeError, "input_weight"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc, match=name):
            f(*args)
    with pytest.raises(ValueError, match="reduction"):
        f(w_in, w_out, c, x, n, "avg")
    with pytest.raises(TypeError, match="sparse"):
        f(w_in, w_out, c, x, n, sparse=1)


def test_refused_sgd_steps_change_nothing():
    w_in, w_out, c, x, n = make_batch()
    a, b = w_in.clone(), w_out.clone()
    f = sg.negative_sampling_sgd_
    cases = [
        (lambda: f(a, b, c, x, torch.full_like(n, 99), 0.1), ValueError, "negatives"),
        (lambda: f(a, a, c, x, n % 37, 0.1), ValueError, "share memory"),
        (lambda: f(a, b, c, x, n, float("nan")), ValueError, "lr"),
        (lambda: f(a, b, c, x, n, 0.1, lr_end=-1.0), ValueError, "lr_end"),
        (lambda: f(a, b, c, x, n, "0.1"), TypeError, "lr"),
        (lambda: f(a, b, c, x, n, 0.1, batch_size=0), ValueError, "batch_size"),
        (lambda: f(a.t(), b, c % 12, x, n, 0.1), ValueError, "input_weight"),
        (lambda: f(a.to(torch.bfloat16), b.to(torch.bfloat16), c, x, n, 0.1), TypeError, "input_weight"),
        (lambda: f(a, b, c, x, n, 0.1, compute_loss=1), TypeError, "compute_loss"),
    ]
    for call, exc, name in cases:
        with pytest.raises(exc, match=name):
            call()
    assert torch.equal(a, w_in) and torch.equal(b, w_out)
    hs = pyneg.HierarchicalSoftmax(torch.ones(37), 12, dtype=torch.float64)
    h = sg.hierarchical_softmax_sgd_
    for call, exc, name in [
        (lambda: h(a, "hs", c, x, 0.1), TypeError, "hs"),
        (lambda: h(a, hs, c, x + 37, 0.1), ValueError, "contexts"),
        (lambda: h(a, hs, c + 50, x, 0.1), ValueError, "centres"),
        (lambda: h(a[:, :5].contiguous(), hs, c, x, 0.1), ValueError, "input_weight"),
        (lambda: h(a.float(), hs, c, x, 0.1), TypeError, "hs.weight"),
    ]:
        with pytest.raises(exc, match=name):
            call()
    assert torch.equal(a, w_in) and not hs.weight.any()


def test_bad_pair_inputs_raise_naming_the_argument():
    t = np.arange(10)
    cases = [
        (dict(tokens=t, window=0), ValueError, "window"),
        (dict(tokens=t, window=2.5), TypeError, "window"),
        (dict(tokens=t - 1), ValueError, "tokens"),
        (dict(tokens=t.astype(float)), TypeError, "tokens"),
        (dict(tokens=t.reshape(2, 5)), ValueError, "tokens"),
        (dict(tokens=t, keep=np.ones(5)), ValueError, "tokens"),
        (dict(tokens=t, keep=np.full(10, np.nan)), ValueError, "keep"),
        (dict(tokens=t, offsets=[1, 4]), ValueError, "offsets"),
        (dict(tokens=t, offsets=[0, 6, 4]), ValueError, "offsets"),
        (dict(tokens=t, offsets=[0, 11]), ValueError, "offsets"),
        (dict(tokens=t, seed=-1), ValueError, "seed"),
        (dict(tokens=t, offset=-1), ValueError, "offset"),
    ]
    for kwargs, exc, name in cases:
        with pytest.raises(exc, match=name):
            sg.skipgram_pairs(seed=kwargs.pop("seed", 0), **kwargs)
    with pytest.raises(ValueError, match="counts"):
        sg.keep_probability([1.0, -2.0])
    with pytest.raises(ValueError, match="sample"):
        sg.keep_probability([1.0], -1e-3)
    with pytest.raises(ValueError, match="tokens"):
        pyneg.SkipGramPairs(t, keep=np.ones(3))
    with pytest.raises(ValueError, match="batch_size"):
        pyneg.SkipGramPairs(t, batch_size=0)


@pytest.mark.parametrize("batch_size", [7, 300, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_hierarchical_softmax_sgd_is_bitwise_identical_across_thread_counts(batch_size, dtype, bias):
    # The deterministic kernel's tasks (64-pair scoring tasks, 4 x threads row
    # partitions) are claimed by whichever thread is free: with 1 to 4 threads
    # every row lands in a different partition and thread, the bits must not move.
    g = torch.Generator().manual_seed(4)
    v, d, n = 300, 32, 6000
    counts = torch.randint(1, 1000, (v,), generator=g).double()
    w_in = (torch.randn(v, d, generator=g) * 0.1).to(dtype)
    c, x = torch.randint(0, v, (n,), generator=g), torch.randint(0, v, (n,), generator=g)

    def run():
        hs = pyneg.HierarchicalSoftmax(counts, d, bias=bias, dtype=dtype)
        with torch.no_grad():
            hs.weight.copy_(torch.randn(hs.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        a = w_in.clone()
        loss = sg.hierarchical_softmax_sgd_(a, hs, c, x, 0.05, lr_end=0.01, batch_size=batch_size, compute_loss=True)
        out = [a, hs.weight.detach().clone(), torch.tensor(loss)]
        return out + ([hs.bias.detach().clone()] if bias else [])

    one = with_threads(1, run)
    assert not torch.equal(one[0], w_in)
    for threads in (2, 3, 4):
        for got, want in zip(with_threads(threads, run), one):
            assert torch.equal(got, want)


def test_hogwild_sgd_trains_and_equals_the_deterministic_step_on_one_thread():
    w_in, w_out, c, x, n = big_batch(torch.float32)

    def run(hogwild):
        a, b = w_in.clone(), w_out.clone()
        first = sg.negative_sampling_sgd_(a, b, c, x, n, 0.05, batch_size=512, compute_loss=True, hogwild=hogwild)
        again = sg.negative_sampling_sgd_(a, b, c, x, n, 0.0, batch_size=512, compute_loss=True)
        return a, b, first, again

    det = with_threads(1, lambda: run(False))
    one = with_threads(1, lambda: run(True))
    assert torch.equal(one[0], det[0]) and torch.equal(one[1], det[1])
    two = with_threads(2, lambda: run(True))
    assert torch.isfinite(two[0]).all() and torch.isfinite(two[1]).all()
    assert two[3] < two[2] and two[3] == pytest.approx(det[3], rel=0.05)  # it trains like the deterministic step


@pytest.mark.parametrize("batch_size", [1, 3, 300])
def test_sgd_step_is_bitwise_identical_across_thread_counts_for_any_batch_size(batch_size):
    # Rows are owned by thread (row % threads) in the mini-batch kernel: with
    # 2, 3 and 4 threads every row changes owner, the bits must not.
    w_in, w_out, c, x, n = make_batch(v_in=61, v_out=43, d=20, b=3000, dtype=torch.float32, seed=5)

    def run():
        a, b = w_in.clone(), w_out.clone()
        loss = sg.negative_sampling_sgd_(a, b, c, x, n, 0.05, lr_end=0.01, batch_size=batch_size, compute_loss=True)
        return a, b, torch.tensor(loss)

    one = with_threads(1, run)
    for threads in (2, 3, 4):
        for got, want in zip(with_threads(threads, run), one):
            assert torch.equal(got, want)
    assert not torch.equal(one[0], w_in)


def test_per_pair_sgd_is_word2vecs_update():
    # A NumPy transcription of word2vec's skip-gram inner loop (one pair per
    # step, g = lr (label - sigmoid(f)), neu1e += g u, u += g v, v += neu1e),
    # all scores taken before the pair's updates.
    w_in, w_out, c, x, n = make_batch(v_in=30, v_out=500, d=16, b=200, dtype=torch.float64, seed=9)
    a, b = w_in.clone(), w_out.clone()
    sg.negative_sampling_sgd_(a, b, c, x, n, 0.3, lr_end=0.1, batch_size=1)
    v_in, v_out = w_in.numpy().copy(), w_out.numpy().copy()
    for p in range(200):
        lr = 0.3 + (0.1 - 0.3) * p / 200
        v = v_in[c[p]]
        slots = [int(x[p])] + [int(j) for j in n[p]]
        labels = [1.0] + [0.0] * 5
        g = [lr * (lab - 1.0 / (1.0 + math.exp(-float(v @ v_out[j])))) for j, lab in zip(slots, labels)]
        neu1e = sum(gt * v_out[j] for gt, j in zip(g, slots))
        for gt, j in zip(g, slots):
            v_out[j] = v_out[j] + gt * v
        v_in[c[p]] = v + neu1e
    np.testing.assert_allclose(a.numpy(), v_in, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(b.numpy(), v_out, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("objective", ["ns", "hs"])
def test_hogwild_per_pair_steps_train_and_equal_the_deterministic_path_on_one_thread(objective):
    g = torch.Generator().manual_seed(3)
    v, d, p = 200, 16, 20000
    counts = 1.0 / torch.arange(1, v + 1, dtype=torch.float64)
    c = torch.multinomial(counts, p, True, generator=g)
    x = (c + torch.randint(0, 3, (p,), generator=g)) % v  # learnable: contexts near the centre
    n = torch.multinomial(counts**0.75, p * 5, True, generator=g).view(p, 5)
    w_in = (torch.rand(v, d, generator=g) - 0.5) / d

    def run(hogwild):
        a = w_in.clone()
        if objective == "ns":
            b = torch.zeros(v, d)
            first = sg.negative_sampling_sgd_(a, b, c, x, n, 0.025, batch_size=1, compute_loss=True, hogwild=hogwild)
            again = sg.negative_sampling_sgd_(a, b, c, x, n, 0.0, batch_size=1, compute_loss=True)
            return a, b, first, again
        hs = pyneg.HierarchicalSoftmax(counts, d)
        first = sg.hierarchical_softmax_sgd_(a, hs, c, x, 0.025, batch_size=1, compute_loss=True, hogwild=hogwild)
        again = sg.hierarchical_softmax_sgd_(a, hs, c, x, 0.0, batch_size=1, compute_loss=True)
        return a, hs.weight.detach().clone(), first, again

    det = with_threads(1, lambda: run(False))
    assert torch.equal(with_threads(1, lambda: run(True))[0], det[0])
    assert torch.equal(with_threads(3, lambda: run(False))[1], det[1])  # batch 1 without hogwild: one thread
    two = with_threads(2, lambda: run(True))
    assert torch.isfinite(two[0]).all() and torch.isfinite(two[1]).all()
    assert two[3] < 0.9 * two[2] and two[3] == pytest.approx(det[3], rel=0.05)  # it trains like the ordered run


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("threads", [2, 3])
def test_hogwild_hierarchical_softmax_loses_no_update_of_the_shared_nodes(threads, bias):
    # Hogwild HS threads step private copies of the inner nodes nearest the
    # root and exchange their changes every few hundred pairs. At a learning
    # rate small enough that the steps barely move the weights, the summed
    # change is the per-pair run's whatever the interleaving, so every node
    # (the root above all, on every path) must end where the ordered run puts
    # it: an exchange that dropped one thread's changes would leave the root's
    # change about 1 / threads of it.
    g = torch.Generator().manual_seed(11)
    v, d, p = 300, 24, 40000
    counts = torch.randint(1, 1000, (v,), generator=g).double()
    c, x = torch.randint(0, v, (p,), generator=g), torch.randint(0, v, (p,), generator=g)
    w_in = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5  # float64: the changes are ~1e-6
    w_node = torch.randn(v - 1, d, generator=g, dtype=torch.float64) * 0.5

    def run(hogwild, pairs=p):
        hs = pyneg.HierarchicalSoftmax(counts, d, bias=bias, dtype=torch.float64)
        with torch.no_grad():
            hs.weight.copy_(w_node)
        a = w_in.clone()
        sg.hierarchical_softmax_sgd_(a, hs, c[:pairs], x[:pairs], 1e-6, batch_size=1, hogwild=hogwild)
        return a - w_in, hs.weight.detach() - w_node, (hs.bias.detach().clone() if bias else None)

    det = with_threads(1, lambda: run(False))
    got = with_threads(threads, lambda: run(True))

    def rel(a, b):  # relative error of a change (second-order terms of the interleaving are ~1e-3)
        return float((a - b).norm() / b.norm())

    assert det[1][0].abs().sum() > 0  # the root moved
    assert rel(got[1][0], det[1][0]) < 1e-2  # the root
    assert rel(got[1], det[1]) < 1e-2 and rel(got[0], det[0]) < 1e-2
    if bias:
        assert det[2][0] != 0 and rel(got[2], det[2]) < 1e-2
    # What the test catches: the root's change with the last thread's share
    # of the pairs dropped (the ordered run over the other shares) is far
    # outside the tolerance above.
    dropped = with_threads(1, lambda: run(False, pairs=p * (threads - 1) // threads))
    assert rel(dropped[1][0], det[1][0]) > 0.1


def test_refused_hogwild_and_batch_size_arguments_name_the_argument():
    w_in, w_out, c, x, n = make_batch()
    a, b = w_in.clone(), w_out.clone()
    hs = pyneg.HierarchicalSoftmax(torch.ones(37), 12, dtype=torch.float64)
    for call, exc, name in [
        (lambda: sg.negative_sampling_sgd_(a, b, c, x, n, 0.1, hogwild="yes"), TypeError, "hogwild"),
        (lambda: sg.negative_sampling_sgd_(a, b, c, x, n, 0.1, batch_size=1.5), TypeError, "batch_size"),
        (lambda: sg.hierarchical_softmax_sgd_(a, hs, c, x % 37, 0.1, hogwild=1), TypeError, "hogwild"),
        (lambda: sg.hierarchical_softmax_sgd_(a, hs, c, x % 37, 0.1, batch_size=0), ValueError, "batch_size"),
        (lambda: sg.hierarchical_softmax_sgd_(a, hs, c, x % 37, -0.1), ValueError, "lr"),
    ]:
        with pytest.raises(exc, match=name):
            call()
    assert torch.equal(a, w_in) and torch.equal(b, w_out) and not hs.weight.any()


# ---------------------------------------------- hardening (issue 25)
def test_keep_above_one_or_below_zero_is_refused_naming_keep():
    t = np.arange(10)
    for bad in (np.full(10, 1.5), np.r_[np.ones(9), -0.1]):
        with pytest.raises(ValueError, match="keep"):
            sg.skipgram_pairs(t, 2, keep=bad, seed=0)
        with pytest.raises(ValueError, match="keep"):
            pyneg.SkipGramPairs(t, 2, keep=bad, seed=0)
    sg.skipgram_pairs(t, 2, keep=np.r_[np.zeros(5), np.ones(5)], seed=0)  # the bounds themselves are fine


def _sorted_epoch(batches):
    c = torch.cat([b[0] for b in batches])
    x = torch.cat([b[1] for b in batches])
    key = c * 1000 + x
    return key.sort().values


@pytest.mark.parametrize(
    ("context", "persistent", "workers", "epochs"),
    [("fork", False, 2, 3), ("fork", True, 2, 3), ("spawn", False, 1, 2)],
)
def test_dataloader_workers_move_on_to_the_next_epoch(context, persistent, workers, epochs):
    # (spawn starts fresh interpreters each epoch: one worker, two epochs keep it short)
    rng = np.random.default_rng(2)
    tokens = torch.from_numpy(rng.integers(0, 30, 2000))
    offsets = torch.arange(0, 2000, 20)
    ds = pyneg.SkipGramPairs(tokens, 3, offsets=offsets, keep=np.full(30, 0.7), batch_size=64, seed=4, chunk_tokens=300)
    want = []
    for e in range(3):  # without workers: epochs 0, 1, 2
        ds.set_epoch(e)
        want.append(_sorted_epoch(list(ds)))
    assert not torch.equal(want[0], want[1])
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=workers, multiprocessing_context=context, persistent_workers=persistent
    )
    for e in range(epochs):
        got = _sorted_epoch(list(loader))
        assert torch.equal(got, want[e]), f"epoch {e} under {context} workers repeated another epoch"
    assert ds.next_epoch() == epochs  # the parent sees the epochs its workers drew
    ds.set_epoch(1)  # set_epoch in the parent selects the workers' next epoch
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=context)
    assert torch.equal(_sorted_epoch(list(loader)), want[1])


_SKIPGRAM_CONCURRENT_WRITER = """
import threading, numpy as np, torch, pyneg
from pyneg import skipgram as sg
V, D, B = 50, 8, 20000
torch.set_num_threads(2)
hs = pyneg.HierarchicalSoftmax(np.arange(1, V + 1, dtype=np.float64), D)
w_in = torch.zeros(V, D); w_out = torch.zeros(V, D)
c = torch.randint(0, V, (B,)); x = torch.randint(0, V, (B,)); n = torch.randint(0, V, (B, 3))
tokens = torch.randint(0, V, (B,))
stop = threading.Event()
def writer():
    bad = [10**12, -5, V]
    i = 0
    while not stop.is_set():
        j = (i * 7919) % B
        for arr in (c, x, tokens):
            old = int(arr[j]); arr[j] = bad[i % 3]; arr[j] = old
        n[j % B, i % 3] = bad[i % 3]; n[j % B, i % 3] = 0
        i += 1
th = threading.Thread(target=writer); th.start()
outcomes = {"ran": 0, "refused": 0}
try:
    for it in range(30):
        for call in (
            lambda: sg.hierarchical_softmax_sgd_(w_in, hs, c, x, 0.01, batch_size=1 + 63 * (it % 2)),
            lambda: sg.negative_sampling_sgd_(w_in, w_out, c, x, n, 0.01, batch_size=64),
            lambda: sg.negative_sampling_embedding_loss(w_in, w_out, c, x, n),
            lambda: sg.skipgram_pairs(tokens, 3, keep=np.ones(V), seed=1),
        ):
            try:
                call(); outcomes["ran"] += 1
            except ValueError:
                outcomes["refused"] += 1
finally:
    stop.set(); th.join()
print(outcomes["ran"] + outcomes["refused"], bool(torch.isfinite(w_in).all()))
"""


def test_concurrent_writer_of_the_ids_cannot_crash_the_skipgram_kernels(run_child):
    proc = run_child(_SKIPGRAM_CONCURRENT_WRITER)
    assert proc.returncode == 0, proc.stderr
    # Every call either ran on a checked private copy of its ids or was refused with ValueError.
    assert proc.stdout.split() == ["120", "True"], proc.stdout + proc.stderr

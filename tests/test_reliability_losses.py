"""Reliability of the loss entry points: any input gives a finite loss that matches float64, or an error naming it.

Property tests (hypothesis) draw a loss, shapes (empty batches and empty
negative sets included), a dtype (float16, bfloat16, float32, float64), value
scales and temperatures that overflow float16 when scored in it, NumPy scalar
temperatures, non-contiguous views, optional per-row weights, and at most one
corruption of one argument: a wrong dtype (int, bool, complex, another float),
the meta device or a sparse layout. A valid call must return a finite loss (in
float32 for 16-bit inputs) equal to a plain float64 transcription of the
formula on the same (rounded) inputs, with finite gradients wherever the
float64 gradient fits the input's dtype; an invalid one must raise ValueError
or TypeError whose message names the argument.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyneg.functional as PF
from pyneg.functional import NegativeSource

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD_DTYPES = [torch.int64, torch.bool, torch.complex64, torch.float32, torch.float16]


# ------------------------------------------------------- float64 references
def ref_loss(name, t, temperature, weight, reduction):
    """Plain float64 transcriptions of each loss (no masking: the property inputs carry no ids)."""
    q = t["query"]
    if name == "negative_sampling":
        u, v, n = t["query"], t["positive"], t["negative"]
        loss = -F.logsigmoid((u * v).sum(1)) - F.logsigmoid(-torch.einsum("bd,bkd->bk", u, n)).sum(1)
    elif name == "in_batch":
        logits = q @ t["positive"].t() / temperature
        loss = torch.logsumexp(logits, 1) - logits.diagonal()
    elif name == "mixed":  # in-batch source and an extra shared source
        b = q.shape[0]
        inb = (q @ t["positive"].t() / temperature).masked_fill(torch.eye(b, dtype=torch.bool), -math.inf)
        pos = (q * t["positive"]).sum(1, keepdim=True) / temperature
        logits = torch.cat([pos, inb, q @ t["negative"].t() / temperature], 1)
        loss = torch.logsumexp(logits, 1) - pos[:, 0]
    else:
        pos = (q * t["positive"]).sum(1, keepdim=True) / temperature
        neg = q @ t["negative"].t() / temperature
        if name == "sampled":
            loss = torch.logsumexp(torch.cat([pos, neg], 1), 1) - pos[:, 0]
        else:  # nce: sigmoid cross-entropy, label 1 for the positive, 0 for the negatives
            x, z = torch.cat([pos, neg], 1), torch.zeros(q.shape[0], 1 + neg.shape[1], dtype=q.dtype)
            z[:, 0] = 1
            loss = (x.clamp(min=0) - x * z + torch.log1p(torch.exp(-x.abs()))).sum(1)
    if weight is not None:
        loss = loss * weight
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def call(name, t, temperature, weight, reduction):
    kw = dict(reduction=reduction, sample_weight=weight)
    if name == "negative_sampling":
        return PF.negative_sampling_loss(t["query"], t["positive"], t["negative"], **kw)
    kw["temperature"] = temperature
    if name == "in_batch":
        return PF.in_batch_softmax_loss(t["query"], t["positive"], **kw)
    if name == "mixed":
        return PF.mixed_negatives_loss(
            t["query"], t["positive"], [NegativeSource.batch(), NegativeSource(t["negative"])], **kw
        )
    fn = PF.sampled_softmax_loss if name == "sampled" else PF.nce_loss
    return fn(t["query"], t["positive"], t["negative"], **kw)


ARG_NAMES = {  # what an error about each tensor must name
    "negative_sampling": {"query": "query", "positive": "positive", "negative": "negative"},
    "in_batch": {"query": "query", "positive": "candidate"},
    "mixed": {"query": "query", "positive": "positive", "negative": "sources[1].embeddings"},
    "sampled": {"query": "query", "positive": "positive", "negative": "negative"},
    "nce": {"query": "query", "positive": "positive", "negative": "negative"},
}


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(ARG_NAMES)))
    b = draw(st.integers(0, 3))
    d = draw(st.integers(1, 4))
    n = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(FLOATS))
    scale = draw(st.sampled_from([1.0, 30.0, 300.0]))
    temperature = draw(st.sampled_from([1.0, 1e-5, np.float32(0.5), np.float64(2.0), 0.07]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    weighted = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    shapes = {"query": (b, d), "positive": (b, d), "negative": (b, n, d) if name == "negative_sampling" else (n, d)}
    shapes = {k: v for k, v in shapes.items() if k in ARG_NAMES[name]}
    tensors = {k: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype) for k, s in shapes.items()}
    weight = torch.rand(b, generator=g, dtype=torch.float64) * 2 if weighted else None
    noncontig = draw(st.sampled_from([None] + sorted(tensors)))
    if noncontig is not None:  # same values, a strided view
        x = tensors[noncontig]
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        tensors[noncontig] = wide[..., ::2]
    corrupt = draw(st.sampled_from([None, "dtype", "meta", "sparse"]))
    target = draw(st.sampled_from(sorted(tensors) + (["sample_weight"] if weighted else [])))
    if corrupt == "dtype":
        bad = draw(st.sampled_from([x for x in BAD_DTYPES if x != dtype]))
        if target == "sample_weight":
            bad = draw(st.sampled_from([torch.bool, torch.complex64]))
            weight = weight.to(bad)
        else:
            tensors[target] = tensors[target].to(bad)
    elif corrupt in ("meta", "sparse"):
        conv = (lambda x: x.to("meta")) if corrupt == "meta" else (lambda x: x.to_sparse())
        if target == "sample_weight":
            weight = conv(weight)
        else:
            tensors[target] = conv(tensors[target])
    return name, tensors, temperature, weight, reduction, corrupt, target, b


def _fits(x: torch.Tensor, dtype: torch.dtype) -> bool:
    return bool(x.abs().max() < torch.finfo(dtype).max / 4) if x.numel() else True


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(cases())
def test_loss_is_finite_and_exact_or_an_error_names_the_argument(case):
    name, tensors, temperature, weight, reduction, corrupt, target, b = case
    dtype = tensors["query"].dtype
    if corrupt is not None or b == 0:
        names = []
        if corrupt is not None:
            names.append("sample_weight" if target == "sample_weight" else ARG_NAMES[name][target])
        if b == 0:  # an empty batch (either fault may be reported first)
            names.append(ARG_NAMES[name]["query"])
        with pytest.raises((ValueError, TypeError), match="|".join(map(re.escape, names))):
            call(name, tensors, temperature, weight, reduction)
        return
    leaves = {k: v.detach().requires_grad_() for k, v in tensors.items()}
    got = call(name, leaves, temperature, weight, reduction)
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert got.dtype == acc
    assert torch.isfinite(got).all(), (name, dtype, temperature, got)
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    want = ref_loss(name, ref_leaves, float(temperature), weight, reduction)
    # fp32 scoring: dot-product error ~ eps · |q| |e| / T (Cauchy-Schwarz bound of every logit).
    norms = [v.detach().double().norm(dim=-1).max() if v.numel() else torch.tensor(0.0) for v in tensors.values()]
    scale = float(max(norms)) ** 2 / float(temperature) + 1.0
    tol = 1e-10 if acc == torch.float64 else 3e-6
    torch.testing.assert_close(got.detach().double(), want.detach(), rtol=tol, atol=tol * scale * 8)
    # Gradients: finite wherever the float64 gradient fits the input's dtype, and close to it.
    got.sum().backward()
    want.sum().backward()
    for k, leaf in leaves.items():
        ref_grad = ref_leaves[k].grad
        if ref_grad is None or ref_grad.numel() == 0 or not _fits(ref_grad, dtype):
            continue
        assert leaf.grad is not None and leaf.grad.dtype == dtype, k
        assert torch.isfinite(leaf.grad).all(), (name, k, dtype, temperature)
        gtol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
        gscale = float(ref_grad.abs().max()) if ref_grad.numel() else 0.0
        torch.testing.assert_close(leaf.grad.double(), ref_grad, rtol=gtol, atol=gtol * (gscale * 8 + 1))


# -------------------------------------------------------- named cases
def test_float16_in_batch_with_a_tiny_temperature_is_finite():
    """The case of issue 10: fp16, temperature 1e-5; float64 gives about 3e5."""
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(4, 8, generator=g).half(), torch.randn(4, 8, generator=g).half()
    got = PF.in_batch_softmax_loss(q, c, temperature=1e-5)
    want = PF.in_batch_softmax_loss(q.double(), c.double(), temperature=1e-5)
    assert want > 1e5 and torch.isfinite(got) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_16_bit_dot_products_beyond_float16_range_stay_finite(dtype, chunk_size):
    """|q·e| = 8 · 100² = 80,000 > 65,504: scored in float16 these would be inf."""
    q = torch.full((3, 8), 100.0, dtype=dtype)
    e = torch.full((5, 8), 100.0, dtype=dtype) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=dtype)[:, None]
    p = torch.full((3, 8), 99.0, dtype=dtype)
    for fn in (PF.sampled_softmax_loss, PF.nce_loss):
        got = fn(q, p, e, chunk_size=chunk_size, reduction="none")
        want = fn(q.double(), p.double(), e.double(), chunk_size=chunk_size, reduction="none")
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


LOSS_CALLS = {
    "in_batch": lambda q, p, n, **kw: PF.in_batch_softmax_loss(q, p, temperature=0.5, **kw),
    "sampled": lambda q, p, n, **kw: PF.sampled_softmax_loss(q, p, n, temperature=0.5, chunk_size=2, **kw),
    "nce": lambda q, p, n, **kw: PF.nce_loss(q, p, n, temperature=0.5, chunk_size=2, **kw),
    "mixed": lambda q, p, n, **kw: PF.mixed_negatives_loss(
        q, p, [NegativeSource.batch(), NegativeSource(n)], temperature=0.5, **kw
    ),
    "negative_sampling": lambda q, p, n, **kw: PF.negative_sampling_loss(q, p, n.expand(len(q), -1, -1), **kw),
}


@pytest.mark.parametrize("loss", sorted(LOSS_CALLS))
def test_sample_weight_follows_keras_reduction(loss):
    fn = LOSS_CALLS[loss]
    g = torch.Generator().manual_seed(2)
    q, p, n = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 4), (5, 4), (6, 4)))
    w = torch.tensor([0.0, 1.0, 2.5, 0.5, 3.0], dtype=torch.float64)
    plain = fn(q, p, n, reduction="none")
    torch.testing.assert_close(fn(q, p, n, reduction="none", sample_weight=w), w * plain, rtol=1e-14, atol=0)
    torch.testing.assert_close(fn(q, p, n, reduction="sum", sample_weight=w), (w * plain).sum(), rtol=1e-14, atol=0)
    # "mean": Σ w·l / B, not / Σ w
    torch.testing.assert_close(
        fn(q, p, n, reduction="mean", sample_weight=w), (w * plain).sum() / 5, rtol=1e-14, atol=0
    )
    torch.testing.assert_close(
        fn(q, p, n, reduction="mean", sample_weight=w.numpy()), (w * plain).sum() / 5, rtol=1e-14, atol=0
    )
    assert torch.equal(fn(q, p, n, sample_weight=torch.ones(5, dtype=torch.float64)), fn(q, p, n))
    # a row of weight 0 sends no gradient to its query
    qq = q.clone().requires_grad_()
    fn(qq, p, n, sample_weight=w).backward()
    assert (qq.grad[0] == 0).all() and (qq.grad[1:] != 0).any()
    for bad, exc in (
        (-w, ValueError),
        (w[:3], ValueError),
        (w.to(torch.complex128), TypeError),
        (w.to("meta"), ValueError),
        (w.to_sparse(), TypeError),
        ("w", TypeError),
    ):
        with pytest.raises(exc, match="sample_weight"):
            fn(q, p, n, sample_weight=bad)


def test_numpy_scalar_temperature_is_a_number():
    g = torch.Generator().manual_seed(3)
    q, c = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    want = PF.in_batch_softmax_loss(q, c, temperature=0.25)
    for t in (np.float32(0.25), np.float64(0.25)):
        assert torch.equal(PF.in_batch_softmax_loss(q, c, temperature=t), want)
    with pytest.raises(TypeError, match="temperature"):
        PF.in_batch_softmax_loss(q, c, temperature=np.bool_(True))


@pytest.mark.parametrize("reduction", ["avg", None, 1, ["mean"]])
def test_bad_reduction_is_named(reduction):
    q = torch.randn(2, 3)
    for fn in (
        lambda: PF.in_batch_softmax_loss(q, q, reduction=reduction),
        lambda: PF.negative_sampling_loss(q, q, q.unsqueeze(1), reduction=reduction),
        lambda: PF.nce_loss(q, q, q, reduction=reduction),
    ):
        with pytest.raises(ValueError, match="reduction"):
            fn()


def test_negative_sampling_checks_dtypes_and_devices():
    q = torch.randn(2, 3)
    n = torch.randn(2, 4, 3)
    with pytest.raises(TypeError, match="positive"):
        PF.negative_sampling_loss(q, q.double(), n)
    with pytest.raises(TypeError, match="negative"):
        PF.negative_sampling_loss(q, q, n.half())
    with pytest.raises(ValueError, match="negative"):
        PF.negative_sampling_loss(q, q, n.to("meta"))
    with pytest.raises(ValueError, match="query"):
        PF.negative_sampling_loss(q[:0], q[:0], n[:0])


@pytest.mark.parametrize("arg", ["log_q", "candidate_ids"])
@pytest.mark.parametrize("how", ["meta", "sparse"])
def test_meta_and_sparse_side_inputs_are_named(arg, how):
    q = torch.randn(3, 2)
    x = torch.zeros(3) if arg == "log_q" else torch.arange(3)
    x = x.to("meta") if how == "meta" else x.to_sparse()
    with pytest.raises((ValueError, TypeError), match=arg):
        PF.in_batch_softmax_loss(q, q, **{arg: x})


def test_unsigned_ids_are_compared_exactly_or_refused():
    g = torch.Generator().manual_seed(4)
    q, c = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    ids = torch.tensor([1, 2, 1, 3])
    want = PF.in_batch_softmax_loss(q, c, candidate_ids=ids)
    for dtype in (torch.uint8, torch.int32) + tuple(
        getattr(torch, n) for n in ("uint32", "uint64") if hasattr(torch, n)
    ):
        assert torch.equal(PF.in_batch_softmax_loss(q, c, candidate_ids=ids.to(dtype)), want), dtype
    if hasattr(torch, "uint64"):
        wrapped = torch.tensor([1, 2, 2**64 - 1, 3], dtype=torch.uint64)  # would wrap to -1 as int64
        with pytest.raises(ValueError, match="candidate_ids"):
            PF.in_batch_softmax_loss(q, c, candidate_ids=wrapped)

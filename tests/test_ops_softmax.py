"""The softmax losses' torch.library operators (pyneg/_ops/softmax.py) and the losses compiled.

* ``torch.library.opcheck`` of every ``pyneg::softmax_*`` op over several
  argument sets (schema, fake tensors, autograd registration, AOT dispatch).
* Each loss (and its ``nn.Module``) under ``torch.compile(fullgraph=True)``:
  0 graph breaks, and the eager loss and gradients within 1e-5 in float32 and
  float64 (backends eager / aot_eager; one inductor test).
* Value checks still raise the losses' ValueErrors inside a compiled graph.
* The hit finder against a dense comparison.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch

import pyneg
import pyneg.functional as PF
from pyneg import _core, _hits
from pyneg.functional import NegativeSource

ops = torch.ops.pyneg
MinedLike = namedtuple("MinedLike", "ids log_q")  # what NegativeSource.from_mined reads
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _need(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------ hits
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [3, 50, 10_000])
@pytest.mark.parametrize("t", [1, 3])
def test_find_hits_equals_a_dense_comparison(device, vocab, t):
    _need(device)
    g = torch.Generator().manual_seed(vocab + t)
    cand = torch.randint(0, vocab, (257,), generator=g).to(device)
    pos = torch.randint(0, vocab, (33, t), generator=g).to(device)
    rows, cols = _hits.find_hits(cand, pos)
    # Expected: one entry per (row, positive, column), ordered by row, then positive, then column.
    eq = cand.view(1, 1, -1) == pos.unsqueeze(-1)  # (B, T, N)
    r, k, c = eq.nonzero(as_tuple=True)
    assert torch.equal(rows.cpu(), r.cpu()) and torch.equal(cols.cpu(), c.cpu())
    assert rows.device.type == device
    if r.numel() > 1:
        assert _hits.find_hits(cand, pos, max_pairs=r.numel() - 1) is None
    assert _hits.find_hits(cand, pos, max_pairs=r.numel()) is not None


def test_find_hits_edge_cases_and_refusals():
    empty = _hits.find_hits(torch.empty(0, dtype=torch.int64), torch.tensor([1, 2]))
    assert empty is not None and empty[0].numel() == 0 and empty[1].numel() == 0
    rows, cols = _hits.find_hits(torch.tensor([5, 5, 5], dtype=torch.int32), torch.tensor([5, 4]))
    assert rows.tolist() == [0, 0, 0] and cols.tolist() == [0, 1, 2] and rows.dtype == torch.int64
    with pytest.raises(ValueError, match="negative"):
        _core.find_accidental_hits(np.array([1, -2]), np.array([[1]]))
    with pytest.raises(ValueError, match="negative"):
        _core.find_accidental_hits(np.array([1, 2]), np.array([[-1]]))
    with pytest.raises(ValueError, match="2-D"):
        _core.find_accidental_hits(np.array([1, 2]), np.array([1]))


def test_hit_mask_matches_the_broadcast_comparison():
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(0, 7, (20,), generator=g)
    per_row = torch.randint(0, 7, (5, 20), generator=g)
    pos = torch.randint(0, 7, (5, 3), generator=g)
    for cand in (shared, per_row):
        want = ((cand if cand.dim() == 2 else cand.unsqueeze(0)).unsqueeze(-1) == pos.unsqueeze(1)).any(-1)
        assert torch.equal(_hits.hit_mask(cand, pos), want)
        assert torch.equal(
            _hits.hit_mask(cand, pos[:, 0]), want if pos.shape[1] == 1 else _hits.hit_mask(cand, pos[:, :1])
        )


# --------------------------------------------------------------- opcheck
def _lse_args(b, n, d, *, chunk, nce, ids=True, shift=True, diag=None, t=1, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = torch.randn(b, d, dtype=dtype, generator=g).requires_grad_()
    emb = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    sh = torch.randn(n, dtype=dtype, generator=g).requires_grad_() if shift else None
    cand = torch.randint(0, 4, (n,), generator=g) if ids else None
    rows = (torch.randint(0, 4, (b, t) if t > 1 else (b,), generator=g)) if ids else None
    return (qs, emb, sh, cand, rows, diag, chunk, nce)


LSE_ARGS = [
    _lse_args(5, 7, 3, chunk=7, nce=False),
    _lse_args(5, 7, 3, chunk=3, nce=False),
    _lse_args(5, 5, 3, chunk=2, nce=False, diag=0, shift=False),
    _lse_args(4, 9, 2, chunk=4, nce=True, t=2),
    _lse_args(4, 9, 2, chunk=9, nce=True, ids=False),
    _lse_args(6, 8, 3, chunk=8, nce=False, dtype=torch.float32, seed=3),
]


@pytest.mark.parametrize("args", LSE_ARGS, ids=range(len(LSE_ARGS)))
def test_opcheck_block_lse(args):
    torch.library.opcheck(ops.softmax_block_lse.default, args)


@pytest.mark.parametrize("need", [(True, True, True), (True, False, False), (False, True, True)])
@pytest.mark.parametrize("chunk", [7, 3])
def test_opcheck_block_lse_backward(need, chunk):
    qs, emb, sh, cand, rows, diag, _, nce = (a.detach() if isinstance(a, torch.Tensor) else a for a in LSE_ARGS[0])
    out, probs = ops.softmax_block_lse(qs, emb, sh, cand, rows, diag, chunk, nce)
    grad = torch.randn(out.shape, dtype=out.dtype)
    args = (grad, qs, emb, sh, cand, rows, diag, chunk, nce, out, probs, *need)
    torch.library.opcheck(ops.softmax_block_lse_backward.default, args)


@pytest.mark.parametrize(
    "args",
    [
        (torch.tensor([3, 0, 7]), "ids", -1, "", False),
        (torch.tensor([[3, 1], [0, 2]], dtype=torch.int32), "ids", 4, "bias has 4 entries", False),
        (torch.empty(0, dtype=torch.int64), "ids", -1, "", True),
    ],
)
def test_opcheck_check_ids(args):
    torch.library.opcheck(ops.softmax_check_ids.default, args)


@pytest.mark.parametrize(
    "args",
    [
        (torch.randn(5, dtype=torch.float64), "log_q", "log_q"),
        (torch.rand(4, requires_grad=True), "sample_weight", "weight"),
        (torch.randn(2, 3), "sources[1].log_q", "log_q"),
    ],
)
def test_opcheck_check_real(args):
    torch.library.opcheck(ops.softmax_check_real.default, args)


def test_opcheck_check_padding():
    pad = torch.tensor([[True, False], [False, False]])
    torch.library.opcheck(ops.softmax_check_padding.default, (pad, pad.clone(), "sources[0]"))


@pytest.mark.parametrize(
    "args",
    [
        (torch.tensor([1, 2, 1, 9]), torch.tensor([[1], [9], [4]]), -1),
        (torch.tensor([1, 2, 1, 9]), torch.tensor([[1, 2], [9, 9]]), 100),
        (torch.tensor([1, 1, 1]), torch.tensor([[1], [1]]), 2),
    ],
)
def test_opcheck_find_hits(args):
    # Data-dependent output size: the fake kernel allocates an unbacked size.
    torch.library.opcheck(
        ops.softmax_find_hits.default, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )


def test_value_checks_raise_the_losses_errors():
    with pytest.raises(ValueError, match=r"ids holds a negative id \(-3\); ids must be >= 0"):
        ops.softmax_check_ids(torch.tensor([1, -3]), "ids", -1, "", False)
    with pytest.raises(ValueError, match=r"holds an id >= 2\*\*63"):
        ops.softmax_check_ids(torch.tensor([-1]), "ids", -1, "", True)
    with pytest.raises(ValueError, match="ids holds id 4 but bias has 4 entries"):
        ops.softmax_check_ids(torch.tensor([1, 4]), "ids", 4, "bias has 4 entries", False)
    with pytest.raises(ValueError, match="must be finite"):
        ops.softmax_check_real(torch.tensor([0.0, float("inf")]), "log_q", "log_q")
    with pytest.raises(ValueError, match=r"sample_weight must be >= 0, got -2.0"):
        ops.softmax_check_real(torch.tensor([1.0, -2.0]), "sample_weight", "weight")
    with pytest.raises(ValueError, match="together"):
        ops.softmax_check_padding(torch.tensor([True]), torch.tensor([False]), "s")


@pytest.mark.parametrize("args", [a for a in LSE_ARGS if a[0].dtype == torch.float64], ids=str)
def test_block_lse_double_backward_is_exact(args):
    # Decision (docs/reliability_losses.md): create_graph=True differentiates the block in
    # plain PyTorch ops, so second derivatives (gradient penalties) are exact.
    qs, emb, sh, cand, rows, diag, chunk, nce = args
    leaves = [t.detach().requires_grad_() for t in (qs, emb)] + ([] if sh is None else [sh.detach().requires_grad_()])

    def f(q, e, *rest):
        return ops.softmax_block_lse(q, e, rest[0] if rest else None, cand, rows, diag, chunk, nce)[0]

    assert torch.autograd.gradgradcheck(f, tuple(leaves))


# ------------------------------------------------------- compiled losses
def _data(dtype, seed=0, b=6, n=11, d=4):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, grad=True):
        return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_(grad)

    return dict(
        q=r(b, d),
        c=r(b, d),
        neg=r(n, d),
        per_row=r(b, 3, d),
        multi=r(b, 2, d),
        bias=r(20),
        ids=torch.tensor([1, 2, 1, 3, 4, 2])[:b],
        ids2=torch.randint(0, 5, (b, 2), generator=g),
        nids=torch.randint(0, 5, (n,), generator=g),
        prids=torch.randint(0, 5, (b, 3), generator=g),
        lq=torch.randn(b, dtype=dtype, generator=g),
        nlq=torch.randn(n, dtype=dtype, generator=g),
        prlq=torch.randn(b, 3, dtype=dtype, generator=g),
        w=torch.rand(b, dtype=dtype, generator=g),
        bank=torch.randn(n, d, dtype=dtype, generator=g),
    )


CASES = {
    "in_batch": lambda x: PF.in_batch_softmax_loss(
        x["q"], x["c"], log_q=x["lq"], candidate_ids=x["ids"], temperature=0.5
    ),
    "in_batch_chunked_weighted": lambda x: PF.in_batch_softmax_loss(
        x["q"], x["c"], log_q=x["lq"], candidate_ids=x["ids"], chunk_size=4, sample_weight=x["w"], reduction="sum"
    ),
    "sampled_shared": lambda x: PF.sampled_softmax_loss(
        x["q"], x["c"], x["neg"], positive_log_q=x["lq"], negative_log_q=x["nlq"],
        positive_ids=x["ids"], negative_ids=x["nids"], chunk_size=3,
    ),
    "sampled_per_row": lambda x: PF.sampled_softmax_loss(
        x["q"], x["c"], x["per_row"], negative_log_q=x["prlq"], positive_ids=x["ids"], negative_ids=x["prids"]
    ),
    "sampled_multi_bias": lambda x: PF.sampled_softmax_loss(
        x["q"], x["multi"], x["neg"], positive_ids=x["ids2"], negative_ids=x["nids"], bias=x["bias"],
        reduction="none",
    ),
    "nce": lambda x: PF.nce_loss(
        x["q"], x["c"], x["neg"], positive_log_q=x["lq"], negative_log_q=x["nlq"],
        positive_ids=x["ids"], negative_ids=x["nids"], chunk_size=5,
    ),
    "nce_per_row": lambda x: PF.nce_loss(x["q"], x["c"], x["per_row"], negative_log_q=x["prlq"]),
    "negative_sampling": lambda x: PF.negative_sampling_loss(x["q"], x["c"], x["per_row"], sample_weight=x["w"]),
    "mixed": lambda x: PF.mixed_negatives_loss(
        x["q"], x["c"],
        [NegativeSource.batch(x["lq"]), NegativeSource(x["bank"], x["nids"], x["nlq"]),
         NegativeSource(x["per_row"], torch.where(x["prids"] == 0, -1, x["prids"]),
                        torch.where(x["prids"] == 0, float("-inf"), x["prlq"]))],
        positive_ids=x["ids"], positive_log_q=x["lq"], chunk_size=4,
    ),
    "mixed_mined": lambda x: PF.mixed_negatives_loss(
        x["q"], x["c"],
        [NegativeSource.batch(), NegativeSource.from_mined(
            MinedLike(torch.where(x["prids"] == 0, -1, x["prids"]),
                      torch.where(x["prids"] == 0, float("-inf"), x["prlq"])), x["neg"])],
        positive_ids=x["ids"],
    ),
}  # fmt: skip


def _grads(loss, x):
    leaves = [v for v in x.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    return [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]


def _compare(fn, x, backend):
    want = fn(x)
    want_g = _grads(want, x)
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    got = compiled(x)
    got_g = _grads(got, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_losses_trace_without_graph_breaks(name):
    x = _data(torch.float32)
    explained = torch._dynamo.explain(CASES[name])(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_loss_equals_eager(name, dtype):
    _compare(CASES[name], _data(dtype, seed=1), backend="aot_eager")


@pytest.mark.parametrize("name", ["in_batch", "sampled_shared", "mixed"])
def test_compiled_loss_equals_eager_backend_eager(name):
    _compare(CASES[name], _data(torch.float64, seed=2), backend="eager")


def test_compiled_loss_inductor():
    x = _data(torch.float32, seed=3)

    def step(x):
        return CASES["in_batch"](x) + CASES["sampled_shared"](x) + CASES["nce"](x) + CASES["mixed"](x)

    _compare(step, x, backend="inductor")


def test_compiled_loss_follows_new_values_and_shapes():
    """A compiled loss reads its ids and log q as tensors (new values, no recompile) and handles a new batch."""
    fn = torch.compile(CASES["in_batch"], backend="aot_eager", fullgraph=True)
    for seed, b in ((4, 6), (5, 6), (6, 5)):
        x = _data(torch.float64, seed=seed, b=b)
        x["ids"] = torch.randint(0, 3, (b,), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fn(x), CASES["in_batch"](x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "module, call",
    [
        (pyneg.losses.InBatchSoftmaxLoss(temperature=0.3), lambda m, x: m(
            x["q"], x["c"], log_q=x["lq"], candidate_ids=x["ids"])),
        (pyneg.losses.SampledSoftmaxLoss(chunk_size=4), lambda m, x: m(
            x["q"], x["c"], x["neg"], negative_log_q=x["nlq"], positive_ids=x["ids"], negative_ids=x["nids"])),
        (pyneg.losses.NCELoss(), lambda m, x: m(x["q"], x["c"], x["neg"], negative_log_q=x["nlq"])),
        (pyneg.losses.MixedNegativesLoss(chunk_size=5), lambda m, x: m(
            x["q"], x["c"], [NegativeSource.batch(x["lq"]), NegativeSource(x["bank"], x["nids"], x["nlq"])],
            positive_ids=x["ids"])),
        (pyneg.losses.NegativeSamplingLoss(), lambda m, x: m(x["q"], x["c"], x["per_row"])),
    ],
    ids=["in_batch", "sampled", "nce", "mixed", "negative_sampling"],
)  # fmt: skip
def test_compiled_modules_equal_eager(module, call):
    x = _data(torch.float32, seed=7)

    def fn(x):
        return call(module, x)

    assert torch._dynamo.explain(fn)(x).graph_break_count == 0
    torch._dynamo.reset()
    _compare(fn, x, backend="aot_eager")


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(ids=torch.tensor([1, -2, 1, 3, 4, 2])), r"candidate_ids holds a negative id \(-2\)"),
        (dict(lq=torch.tensor([0.0, float("nan"), 0, 0, 0, 0])), "log_q must be finite"),
        (dict(w=torch.tensor([1.0, -1.0, 1, 1, 1, 1])), r"sample_weight must be >= 0, got -1.0"),
    ],
)
def test_compiled_loss_still_refuses_bad_values(bad, match):
    def fn(x):
        return PF.in_batch_softmax_loss(x["q"], x["c"], log_q=x["lq"], candidate_ids=x["ids"], sample_weight=x["w"])

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    x = _data(torch.float32, seed=8)
    compiled(x)  # compiles with good values
    with pytest.raises(ValueError, match=match):
        compiled({**x, **bad})


def test_compiled_bias_table_refuses_out_of_range_ids():
    fn = torch.compile(CASES["sampled_multi_bias"], backend="aot_eager", fullgraph=True)
    x = _data(torch.float32, seed=9)
    fn(x)
    with pytest.raises(ValueError, match="negative_ids holds id 25 but bias has 20 entries"):
        fn({**x, "nids": x["nids"].clone().index_fill_(0, torch.tensor([2]), 25)})


def test_compiled_chunked_graph_holds_no_full_logit_matrix():
    """Compiled, a chunked block's (B, N) logits never appear in the graph (forward or backward):
    the op scores chunk by chunk inside its kernel; with one chunk, the kept softmax is (B, N)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    b, n, d, chunk = 16, 512, 8, 64
    g = torch.Generator().manual_seed(10)
    x = dict(q=torch.randn(b, d, generator=g).requires_grad_(), c=torch.randn(b, d, generator=g).requires_grad_())
    x["bank"] = torch.randn(n, d, generator=g)

    def largest(chunk_size):
        sizes = []

        def record(gm, example_inputs):
            for node in gm.graph.nodes:
                val = node.meta.get("val")
                for t in val if isinstance(val, (tuple, list)) else (val,):
                    if isinstance(t, torch.Tensor):
                        sizes.append(t.numel())
            return make_boxed_func(gm.forward)

        def fn(x):
            return PF.sampled_softmax_loss(x["q"], x["c"], x["bank"], chunk_size=chunk_size)

        torch._dynamo.reset()
        compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=record, bw_compiler=record), fullgraph=True)
        loss = compiled(x)
        loss.backward()
        torch.testing.assert_close(loss, fn(x), rtol=1e-5, atol=1e-5)
        return max(sizes)

    assert largest(chunk) == n * d  # the bank itself; no (B, N) = 8192-entry tensor
    assert largest(None) == b * n  # one chunk: the softmax kept for backward


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["in_batch", "sampled_shared", "nce", "mixed"])
def test_compiled_loss_on_cuda_equals_eager(name):
    _need("cuda")
    x = {k: (v.detach().cuda().requires_grad_(v.requires_grad)) for k, v in _data(torch.float32, seed=11).items()}
    _compare(CASES[name], x, backend="aot_eager")

"""Hierarchical softmax as PyTorch operators (pyneg/_ops/hsoftmax.py).

Every op passes torch.library.opcheck (schema, fake tensors, autograd
registration, AOT dispatch) over several argument sets; HierarchicalSoftmax
compiles with torch.compile(fullgraph=True) with no graph break and gives the
eager loss and gradients; torch.export of a module using it gives the eager
results; value checks happen inside the ops; the PyTorch reference (the
implementation of devices without pyneg kernels) matches the CPU kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import pyneg
from pyneg._hsoftmax_reference import flat_log_prob_grad, flat_nll_grads, gather_nll, padded_paths
from pyneg._ops import hsoftmax as ops

COUNTS = [50.0, 1, 2, 30, 7, 7, 3, 11, 90, 4, 1, 16, 5, 5, 8]
OPS = torch.ops.pyneg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device usable by torch")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def make_hs(counts=COUNTS, dim=6, *, bias=True, sparse=False, dtype=torch.float64, device="cpu", seed=0):
    hs = pyneg.HierarchicalSoftmax(counts, dim, bias=bias, sparse=sparse, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero weights would make every comparison trivial
        hs.weight.copy_(torch.randn(hs.weight.shape, generator=g, dtype=torch.float64).to(dtype))
        if bias:
            hs.bias.copy_(torch.randn(hs.bias.shape, generator=g, dtype=torch.float64).to(dtype))
    return hs


def tree_args(tree, device="cpu"):
    """(path_offsets, path_nodes, path_codes, children, max_depth): the tree as the ops take it."""
    offsets, nodes, codes, children = (
        t.to(device)
        for t in (tree.path_offsets, tree.path_nodes, tree.path_codes, tree._flat_paths(torch.device("cpu"))[3])
    )
    return offsets, nodes, codes, children.clone(), tree.max_depth


def nll_args(batch, *, bias=True, dtype=torch.float64, sparse=False, counts=COUNTS, dim=5, device="cpu", grad=True):
    g = torch.Generator().manual_seed(batch + 7 * bias + 13 * sparse)
    tree = pyneg.HuffmanTree.from_counts(counts)
    offsets, nodes, codes, _, depth = tree_args(tree, device)
    v = tree.num_classes
    x = torch.randn(batch, dim, generator=g, dtype=dtype).to(device).requires_grad_(grad)
    w = torch.randn(v - 1, dim, generator=g, dtype=dtype).to(device).requires_grad_(grad)
    b = torch.randn(v - 1, generator=g, dtype=dtype).to(device).requires_grad_(grad) if bias else None
    t = torch.randint(0, v, (batch,), generator=g).to(device)
    return (x, w, b, t, offsets, nodes, codes, depth, sparse)


NLL_CASES = [
    dict(batch=7),
    dict(batch=7, bias=False),
    dict(batch=9, dtype=torch.float32),
    dict(batch=9, dtype=torch.float32, bias=False, sparse=True),
    dict(batch=6, sparse=True),
    dict(batch=0),
    dict(batch=0, sparse=True),
    dict(batch=4, counts=[3.0, 1.0]),  # V = 2: one inner node
    dict(batch=3, counts=[2.0]),  # V = 1: empty paths
]


def case_id(case):
    return ",".join(f"{k}={getattr(v, 'itemsize', v)}" for k, v in case.items())


# ------------------------------------------------------------------ opcheck
# A sparse gradient's slots depend on the data: eager gives the distinct nodes exactly (coalesced,
# as before the ops), a graph keeps all cap slots (test_compiled_sparse_gradient_sums_to_the_eager_one),
# so opcheck's AOT comparison, which compares the number of stored values, cannot apply to it.
_SPARSE_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("case", NLL_CASES, ids=case_id)
def test_opcheck_hs_nll(case):
    args = nll_args(**case)
    if case.get("sparse"):
        torch.library.opcheck(OPS.hs_nll, args, test_utils=_SPARSE_UTILS)
    else:
        torch.library.opcheck(OPS.hs_nll, args)
    if case.get("sparse"):  # the forward alone through AOT dispatch
        torch.library.opcheck(OPS.hs_nll, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))


@pytest.mark.parametrize("case", [c for c in NLL_CASES if not c.get("sparse")], ids=case_id)
@pytest.mark.parametrize("sparse", [False, True])
def test_opcheck_hs_nll_backward(case, sparse):
    x, w, b, t, off, nodes, codes, depth, _ = nll_args(**case, grad=False)
    _, dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth)
    grad = torch.randn(x.shape[0], dtype=x.dtype)
    op = OPS.hs_nll_backward_sparse if sparse else OPS.hs_nll_backward
    torch.library.opcheck(op, (grad, x, w, b, t, dz, off, nodes, codes, depth))


LOG_PROB_CASES = [
    (4, torch.float64, COUNTS),
    (5, torch.float32, COUNTS),
    (0, torch.float64, COUNTS),
    (3, torch.float64, [1.0, 2.0]),
    (2, torch.float64, [4.0]),
]


@pytest.mark.parametrize("batch,dtype,counts", LOG_PROB_CASES)
def test_opcheck_hs_log_prob(batch, dtype, counts):
    tree = pyneg.HuffmanTree.from_counts(counts)
    offsets, nodes, codes, children, depth = tree_args(tree)
    scores = torch.randn(batch, tree.num_inner, dtype=dtype, requires_grad=True)
    torch.library.opcheck(OPS.hs_log_prob, (scores, children, offsets, nodes, codes, depth))
    grad = torch.randn(batch, tree.num_classes, dtype=dtype)
    torch.library.opcheck(OPS.hs_log_prob_backward, (grad, scores.detach(), children, offsets, nodes, codes, depth))


# ---------------------------------------------------------- op semantics
def test_ops_match_the_reference_and_the_module():
    x, w, b, t, off, nodes, codes, depth, _ = nll_args(11, grad=False)
    loss, dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth)
    ref = gather_nll(x, t, w, b, padded_paths(off, nodes, codes, dtype=x.dtype))
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    assert dz.shape == (11, depth)
    depths = (off[1:] - off[:-1])[t]
    assert bool((dz[torch.arange(depth)[None, :] >= depths[:, None]] == 0).all())  # 0 after each path
    grad = torch.randn(11, dtype=x.dtype)
    dense = OPS.hs_nll_backward(grad, x, w, b, t, dz, off, nodes, codes, depth)
    for got, want in zip(dense, flat_nll_grads(grad, x, w, b, t, off, nodes, codes, depth)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gi, touched, rows, bias_rows, count = OPS.hs_nll_backward_sparse(grad, x, w, b, t, dz, off, nodes, codes, depth)
    n = int(count)
    want_nodes = torch.unique(torch.cat([nodes[off[c] : off[c + 1]] for c in t.tolist()]).long())
    assert torch.equal(touched[:n], want_nodes)
    assert bool((touched[n:] == 0).all()) and bool((rows[n:] == 0).all()) and bool(torch.signbit(rows[n:]).all())
    assert torch.equal(gi, dense[0])
    assert torch.equal(rows[:n], dense[1][want_nodes]) and torch.equal(bias_rows[:n], dense[2][want_nodes])


def test_reference_implementation_matches_the_cpu_kernels():
    # The op bodies are what devices without pyneg kernels run: compare them to the CPU kernels.
    x, w, b, t, off, nodes, codes, depth, _ = nll_args(13, grad=False)
    loss, dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth)
    ref_loss, _ = ops._nll_reference(x, w, b, t, off, nodes, codes, depth)
    torch.testing.assert_close(ref_loss, loss, rtol=1e-12, atol=1e-12)
    grad = torch.randn(13, dtype=x.dtype)
    cpu = OPS.hs_nll_backward_sparse(grad, x, w, b, t, dz, off, nodes, codes, depth)
    ref = ops._hs_nll_backward_sparse_reference(grad, x, w, b, t, dz, off, nodes, codes, depth)
    for got, want in zip(ref, cpu):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    _, _, _, children, _ = tree_args(tree)
    scores = torch.randn(4, tree.num_inner, dtype=torch.float64)
    lp = OPS.hs_log_prob(scores, children, off, nodes, codes, depth)
    torch.testing.assert_close(ops._hs_log_prob_reference(scores, children, off, nodes, codes, depth), lp)
    g = torch.randn(4, tree.num_classes, dtype=torch.float64)
    torch.testing.assert_close(
        flat_log_prob_grad(g, scores, off, nodes, codes, depth),
        OPS.hs_log_prob_backward(g, scores, children, off, nodes, codes, depth),
    )


def test_value_checks_happen_inside_the_ops():
    x, w, b, t, off, nodes, codes, depth, _ = nll_args(4, grad=False)
    bad = t.clone()
    bad[2] = len(COUNTS)
    with pytest.raises(ValueError, match=f"target holds id {len(COUNTS)} outside"):
        OPS.hs_nll(x, w, b, bad, off, nodes, codes, depth)
    with pytest.raises(ValueError, match=f"target holds id {len(COUNTS)} outside"):
        ops._nll_reference(x, w, b, bad, off, nodes, codes, depth)
    # Tree arrays from anyone: a path leaving the arrays, too long or through a missing node is refused.
    long_off = off.clone()
    long_off[1:] += 10**6
    with pytest.raises(ValueError, match="path_offsets"):
        OPS.hs_nll(x, w, b, torch.full((4,), 3), long_off, nodes, codes, depth)
    with pytest.raises(ValueError, match="max_depth"):
        OPS.hs_nll(x, w, b, t, off, nodes, codes, 1)
    bad_nodes = nodes.clone()
    bad_nodes[:] = 10**6
    with pytest.raises(ValueError, match="path_nodes holds node"):
        OPS.hs_nll(x, w, b, t, off, bad_nodes, codes, depth)
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    children = tree_args(tree)[3]
    children[3] = 10**6
    with pytest.raises(ValueError, match="children holds"):
        OPS.hs_log_prob(torch.zeros(2, tree.num_inner, dtype=torch.float64), children, off, nodes, codes, depth)
    # Shapes and dtypes are checked by the fake implementations too (no data needed).
    with pytest.raises(TypeError, match="path_nodes"):
        OPS.hs_nll(x, w, b, t, off, nodes.long(), codes, depth)
    mode = torch._subclasses.FakeTensorMode()
    fake = [mode.from_tensor(a) for a in (x, w[:-1], t, off, nodes, codes)]
    with mode, pytest.raises(ValueError, match="weight"):
        OPS.hs_nll(fake[0], fake[1], None, *fake[2:], depth)


# ------------------------------------------------------------- compile
def step_outputs(fn, hs, x, target):
    xg = x.detach().clone().requires_grad_()
    loss = fn(xg, target)
    params = [p for p in (hs.weight, hs.bias) if p is not None]
    grads = torch.autograd.grad(loss, [xg] + params)
    return [loss.detach()] + [g.to_dense() if g.is_sparse else g for g in grads]


def assert_close_all(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "backend,bias,sparse,dtype,reduction",
    [
        ("eager", True, False, torch.float64, "mean"),
        ("aot_eager", True, False, torch.float32, "sum"),
        ("aot_eager", False, False, torch.float64, "none"),
        ("aot_eager", True, True, torch.float64, "mean"),
        ("aot_eager", False, True, torch.float32, "sum"),
        ("aot_eager", True, False, torch.bfloat16, "mean"),
    ],
)
def test_loss_compiles_without_graph_breaks(backend, bias, sparse, dtype, reduction):
    hs = make_hs(bias=bias, sparse=sparse, dtype=dtype)
    x = torch.randn(9, 6, dtype=torch.float64).to(dtype)
    target = torch.tensor([0, 3, 14, 7, 8, 8, 1, 2, 11])

    def fn(inp, tgt):
        loss = hs(inp, tgt, reduction=reduction)
        return loss.sum() if reduction == "none" else loss

    explained = torch._dynamo.explain(fn)(x, target)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    assert_close_all(step_outputs(compiled, hs, x, target), step_outputs(fn, hs, x, target))
    # A new batch of the same shape reuses the graph and still matches eager.
    other = torch.tensor([14, 14, 0, 1, 2, 3, 4, 5, 6])
    assert_close_all(step_outputs(compiled, hs, x, other), step_outputs(fn, hs, x, other))


def test_compiled_sparse_gradient_sums_to_the_eager_one():
    # Inside a graph the sparse gradient keeps every slot (no data-dependent shape): the unused
    # ones add -0.0 to node 0, so once coalesced it is bit-identical to eager's.
    hs = make_hs(sparse=True)
    x = torch.randn(5, 6, dtype=torch.float64)
    target = torch.tensor([0, 3, 14, 7, 8])
    compiled = torch.compile(lambda i, t: hs(i, t, reduction="sum"), backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, target), hs.weight)[0]
    want = torch.autograd.grad(hs(x, target, reduction="sum"), hs.weight)[0]
    assert got.is_sparse and want.is_sparse and want.is_coalesced()
    got = got.coalesce()
    assert torch.equal(got.indices(), want.indices()) and torch.equal(got.values(), want.values())


def test_log_prob_compiles_without_graph_breaks():
    hs = make_hs()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    explained = torch._dynamo.explain(hs.log_prob)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(hs.log_prob, backend="aot_eager", fullgraph=True)
    got, want = compiled(x), hs.log_prob(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad((got * w).sum(), x)[0], torch.autograd.grad((want * w).sum(), x)[0], rtol=1e-5, atol=1e-5
    )


def test_compiled_step_refuses_bad_targets_with_the_eager_error():
    hs = make_hs()
    compiled = torch.compile(lambda i, t: hs(i, t), backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    compiled(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target holds id 15 outside"):
        compiled(x, torch.tensor([0, 15, 2]))


def test_inductor_training_step_matches_eager():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(len(COUNTS), 6)
    hs = make_hs(dtype=torch.float32)
    ctx = torch.tensor([1, 4, 2, 0, 9, 14])
    target = torch.tensor([0, 3, 14, 7, 8, 8])

    def step(c, t):
        return hs(emb(c), t) + 0.1 * hs.log_prob(emb(c)).exp().sum()

    compiled = torch.compile(step, backend="inductor", fullgraph=True)
    params = [emb.weight, hs.weight, hs.bias]
    got = [compiled(ctx, target)]
    got += torch.autograd.grad(got[0], params)
    want = [step(ctx, target)]
    want += torch.autograd.grad(want[0], params)
    assert_close_all([g.detach() for g in got], [w.detach() for w in want])


# ---------------------------------------------------------------- export
class _Head(torch.nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.emb = torch.nn.Embedding(len(COUNTS), 6, dtype=torch.float64)
        self.hs = make_hs(bias=bias)

    def forward(self, ctx, target):
        return self.hs(self.emb(ctx), target, reduction="none"), self.hs.log_prob(self.emb(ctx))


@pytest.mark.parametrize("bias", [True, False])
def test_export_round_trip(bias):
    torch.manual_seed(0)
    m = _Head(bias)
    ctx = torch.tensor([1, 4, 2, 0, 9])
    target = torch.tensor([0, 3, 14, 7, 8])
    ep = torch.export.export(m, (ctx, target))
    names = {n.target.name() for n in ep.graph.nodes if isinstance(n.target, torch._ops.OpOverload)}
    assert {"pyneg::hs_nll", "pyneg::hs_log_prob"} <= names
    for c, t in ((ctx, target), (torch.tensor([5, 5, 6, 7, 8]), torch.tensor([14, 1, 1, 2, 0]))):
        for got, want in zip(ep.module()(c, t), m(c, t)):
            assert torch.equal(got, want)


# ----------------------------------------------------------------- double backward
def test_double_backward_goes_through_the_reference():
    hs = make_hs()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 14, 7])
    (gx,) = torch.autograd.grad(hs(x, target, reduction="sum"), x, create_graph=True)
    (ggw,) = torch.autograd.grad(gx.pow(2).sum(), hs.weight)
    paths = padded_paths(*(getattr(hs.tree, n) for n in ("path_offsets", "path_nodes", "path_codes")), dtype=x.dtype)
    w = hs.weight.detach().requires_grad_()
    (gx_ref,) = torch.autograd.grad(gather_nll(x, target, w, hs.bias, paths).sum(), x, create_graph=True)
    (ggw_ref,) = torch.autograd.grad(gx_ref.pow(2).sum(), w)
    torch.testing.assert_close(ggw, ggw_ref)


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(
    "case",
    [dict(batch=7), dict(batch=9, dtype=torch.float32, bias=False), dict(batch=5, sparse=True), dict(batch=0)],
    ids=case_id,
)
def test_opcheck_on_cuda(case):
    args = nll_args(**case, device="cuda")
    torch.library.opcheck(OPS.hs_nll, args, **({"test_utils": _SPARSE_UTILS} if case.get("sparse") else {}))
    x, w, b, t, off, nodes, codes, depth, _ = (a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    _, dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth)
    grad = torch.randn(x.shape[0], dtype=x.dtype, device="cuda")
    for op in (OPS.hs_nll_backward, OPS.hs_nll_backward_sparse):
        torch.library.opcheck(op, (grad, x, w, b, t, dz, off, nodes, codes, depth))
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    children = tree_args(tree, "cuda")[3]
    scores = torch.randn(3, tree.num_inner, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(OPS.hs_log_prob, (scores, children, off, nodes, codes, depth))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_module_compiles_and_matches_cpu(sparse):
    cpu = make_hs(sparse=sparse)
    gpu = make_hs(sparse=sparse, device="cuda")
    x = torch.randn(6, 6, dtype=torch.float64)
    target = torch.tensor([0, 3, 14, 7, 8, 8])
    compiled = torch.compile(lambda i, t: gpu(i, t, reduction="sum"), backend="aot_eager", fullgraph=True)
    got = step_outputs(compiled, gpu, x.cuda(), target.cuda())
    want = step_outputs(lambda i, t: cpu(i, t, reduction="sum"), cpu, x, target)
    assert_close_all([g.cpu() for g in got], want)
    torch.testing.assert_close(gpu.log_prob(x.cuda()).cpu(), cpu.log_prob(x))


def test_backward_ops_refuse_to_be_differentiated():
    x, w, b, t, off, nodes, codes, depth, _ = nll_args(3)
    _, dz = OPS.hs_nll(x.detach(), w.detach(), b.detach(), t, off, nodes, codes, depth)
    grad = torch.ones(3, dtype=x.dtype)
    for op in (OPS.hs_nll_backward, OPS.hs_nll_backward_sparse):
        with pytest.raises(RuntimeError, match="not differentiable.*create_graph=True"):
            op(grad, x, w, b, t, dz, off, nodes, codes, depth)
        with torch.no_grad():  # outside a graph they run
            assert op(grad, x, w, b, t, dz, off, nodes, codes, depth)[0].shape == x.shape


def test_import_pyneg_registers_the_ops(run_child):
    proc = run_child(
        "import torch, pyneg, sys\n"
        "print('pyneg._ops' in sys.modules, all(hasattr(torch.ops.pyneg, n) for n in "
        "('hs_nll', 'hs_nll_backward', 'hs_nll_backward_sparse', 'hs_log_prob', 'hs_log_prob_backward')))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr

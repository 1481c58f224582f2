"""Hierarchical softmax under abuse: writes through every tensor a tree hands out,
concurrent writers, copies and saved states, second derivatives, 16-bit inputs,
threads and bad arguments. Every result is compared with the pure-PyTorch
reference in pyneg._hsoftmax_reference; every crash-prone case runs in a child
process (the run_child fixture fails the test if the child dies of a signal)."""

from __future__ import annotations

import copy
import io
import pickle
import threading

import numpy as np
import pytest
import torch

import pyneg
from pyneg._hsoftmax_reference import gather_log_prob, gather_nll, padded_paths

COUNTS = [50.0, 1, 2, 30, 7, 7, 3, 11, 90, 4, 1, 16]


def make_hs(counts=COUNTS, dim=6, *, bias=True, dtype=torch.float64, sparse=False, seed=0):
    hs = pyneg.HierarchicalSoftmax(counts, dim, bias=bias, sparse=sparse, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero weights would make every check trivial
        hs.weight.copy_(torch.randn(hs.weight.shape, generator=g, dtype=torch.float64).to(dtype))
        if bias:
            hs.bias.copy_(torch.randn(hs.bias.shape, generator=g, dtype=torch.float64).to(dtype))
    return hs


def reference_paths(counts):
    """Padded paths of a tree built afresh from the counts (nothing shared with the tree under test)."""
    t = pyneg.HuffmanTree.from_counts(counts)
    return padded_paths(t.path_offsets, t.path_nodes, t.path_codes, dtype=torch.float64)


def outputs(hs, x, target):
    """Loss, its gradients and log_prob: what must survive any round trip unchanged."""
    x = x.detach().clone().requires_grad_()
    loss = hs(x, target, reduction="sum")
    params = [p for p in (hs.weight, hs.bias) if p is not None]
    grads = torch.autograd.grad(loss, [x] + params)
    return [loss.detach(), *grads, hs.log_prob(x.detach())]


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.is_sparse == v.is_sparse
        if u.is_sparse:
            u, v = u.coalesce(), v.coalesce()
            assert torch.equal(u.indices(), v.indices())
            u, v = u.values(), v.values()
        assert torch.equal(u, v)


# ------------------------------------------------------------ family 1: aliasing
def test_handed_out_tensors_are_copies():
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    before = [
        tree.path_offsets,
        tree.path_nodes,
        tree.path_codes,
        tree.depths,
        tree.counts,
        *tree.padded_paths(torch.float64),
        *tree.path(1),
    ]
    fingerprint = tree.fingerprint()
    for t in (
        tree.path_offsets,
        tree.path_nodes,
        tree.path_codes,
        tree.depths,
        tree.counts,
        *tree.padded_paths(torch.float64),
        *tree.path(1),
    ):
        t.fill_(7 if t.dtype != torch.bool else True)
    after = [
        tree.path_offsets,
        tree.path_nodes,
        tree.path_codes,
        tree.depths,
        tree.counts,
        *tree.padded_paths(torch.float64),
        *tree.path(1),
    ]
    assert_same(before, after)
    assert tree.fingerprint() == fingerprint
    assert tree.weighted_path_length == float((torch.tensor(COUNTS, dtype=torch.float64) * before[3]).sum())
    assert torch.equal(pickle.loads(pickle.dumps(tree)).path_nodes, before[1])


_WRITE_EVERYTHING = """
import torch, pyneg
from pyneg._hsoftmax_reference import gather_nll, gather_log_prob, padded_paths
counts = {counts}
torch.manual_seed(0)
hs = pyneg.HierarchicalSoftmax(counts, 6, bias=True, dtype=torch.float64)
with torch.no_grad():
    hs.weight.normal_(); hs.bias.normal_()
fresh = pyneg.HuffmanTree.from_counts(counts)
ref_paths = padded_paths(fresh.path_offsets, fresh.path_nodes, fresh.path_codes, dtype=torch.float64)
x = torch.randn(64, 6, dtype=torch.float64)
target = torch.randint(0, len(counts), (64,))

def vandalise(tree):
    # Huge, negative and out-of-range values through every tensor the tree hands out.
    for t in (tree.path_offsets, tree.path_nodes, tree.path_codes, tree.depths, tree.counts,
              *tree.padded_paths(torch.float64), *tree.path(0)):
        if t.dtype == torch.bool:
            t.fill_(True)
        elif t.dtype == torch.uint8:
            t.fill_(255)
        else:
            t.fill_(-(2 ** 30) if t.is_floating_point() else 2 ** 30)
            t[::2] = -7

def check(tag, loss, grads, lp):
    w = hs.weight.detach().clone().requires_grad_()
    b = hs.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    ref = gather_nll(xr, target, w, b, ref_paths).sum()
    ref_grads = torch.autograd.grad(ref, (xr, w, b))
    ok = torch.allclose(loss, ref, atol=1e-10) and all(
        torch.allclose(g, r, atol=1e-10) for g, r in zip(grads, ref_grads))
    ok = ok and torch.allclose(lp, gather_log_prob(x, hs.weight, hs.bias, ref_paths), atol=1e-10)
    print(tag, "ok" if ok else "WRONG")

for step in range(3):  # between calls
    vandalise(hs.tree)
    xg = x.detach().clone().requires_grad_()
    loss = hs(xg, target, reduction="sum")
    vandalise(hs.tree)  # between forward and backward
    grads = torch.autograd.grad(loss, (xg, hs.weight, hs.bias))
    check("call%d" % step, loss.detach(), grads, hs.log_prob(x))
"""


def test_writing_every_handed_out_tensor_cannot_crash_or_change_the_loss(run_child):
    proc = run_child(_WRITE_EVERYTHING.format(counts=COUNTS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["call0", "ok", "call1", "ok", "call2", "ok"], proc.stdout + proc.stderr


_WRITE_SAVED_TARGET = """
import torch, pyneg
hs = pyneg.HierarchicalSoftmax({counts}, 6, bias=True, dtype=torch.float64)
with torch.no_grad():
    hs.weight.normal_()
x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
target = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
loss = hs(x, target, reduction="none")
ones = torch.ones_like(loss)
target.fill_(10 ** 9)  # the caller's tensor: the saved copy is pyneg's
gx, = torch.autograd.grad(loss, x, ones, retain_graph=True)
print("caller-write", bool(torch.isfinite(gx).all()))
# Even the private copy, reached through the graph, is checked again before the kernels read it.
saved = [t for t in loss.grad_fn.saved_tensors if t is not None and t.dtype == torch.int64]
saved[0].numpy()[:] = 10 ** 9  # through NumPy: torch's version counter does not see it
try:
    torch.autograd.grad(loss, x, ones)
    print("graph-write", "no error")
except ValueError as exc:
    print("graph-write", "ValueError", "target" in str(exc))
"""


def test_writing_targets_between_forward_and_backward(run_child):
    proc = run_child(_WRITE_SAVED_TARGET.format(counts=COUNTS))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["caller-write True", "graph-write ValueError True"], proc.stdout + proc.stderr


# ------------------------------------------------ family 2: check, then read again
_CONCURRENT_WRITER = """
import threading
import numpy as np, torch, pyneg
from pyneg._hsoftmax_reference import gather_nll, padded_paths
counts = {counts}
torch.manual_seed(0)
hs = pyneg.HierarchicalSoftmax(counts, 16, bias=True, dtype=torch.float64)
with torch.no_grad():
    hs.weight.normal_(); hs.bias.normal_()
fresh = pyneg.HuffmanTree.from_counts(counts)
ref_paths = padded_paths(fresh.path_offsets, fresh.path_nodes, fresh.path_codes, dtype=torch.float64)
B = 4096
x = torch.randn(B, 16, dtype=torch.float64)
good = torch.randint(0, len(counts), (B,))
ref = gather_nll(x, good, hs.weight.detach(), hs.bias.detach(), ref_paths)
outcomes = {{"equal": 0, "refused": 0, "wrong": 0}}
for kind in ("tensor", "numpy"):
    target = good.clone() if kind == "tensor" else good.numpy().copy()
    stop = threading.Event()

    def writer():
        # Every entry is at all times either its good value or far out of range.
        rng = np.random.default_rng(1)
        while not stop.is_set():
            i = int(rng.integers(0, B))
            target[i] = 10 ** 12 if rng.random() < 0.5 else -(10 ** 12)
            target[i] = good[i]

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(40):
            xg = x.detach().clone().requires_grad_()
            try:
                loss = hs(xg, target, reduction="none")
                loss.sum().backward()
            except ValueError as exc:
                assert "target" in str(exc), exc
                outcomes["refused"] += 1
                continue
            ok = torch.allclose(loss.detach(), ref, atol=1e-10)
            outcomes["equal" if ok else "wrong"] += 1
    finally:
        stop.set()
        th.join()
print(outcomes["equal"] + outcomes["refused"], outcomes["wrong"])
"""


def test_concurrent_writer_of_the_target_cannot_crash_the_kernels(run_child):
    proc = run_child(_CONCURRENT_WRITER.format(counts=COUNTS))
    assert proc.returncode == 0, proc.stderr
    # Each call saw a private snapshot: either all its ids were good (the reference loss) or it was refused.
    assert proc.stdout.split() == ["80", "0"], proc.stdout + proc.stderr


# ------------------------------------------------------ family 3: round trips
def _torch_round_trip(obj, **load_kwargs):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, **load_kwargs)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_module_round_trips_behave_exactly_like_the_original(sparse, dtype):
    hs = make_hs(dtype=dtype, sparse=sparse)
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3)).to(dtype)
    target = torch.tensor([0, 1, 2, 3, 4, 5, 8, 11, 8])
    want = outputs(hs, x, target)
    copies = [copy.deepcopy(hs), pickle.loads(pickle.dumps(hs)), _torch_round_trip(hs, weights_only=False)]
    fresh = pyneg.HierarchicalSoftmax(COUNTS, 6, bias=True, sparse=sparse, dtype=dtype)
    fresh.load_state_dict(_torch_round_trip(hs.state_dict(), weights_only=True))
    copies.append(fresh)
    for other in copies:
        assert other.tree.fingerprint() == hs.tree.fingerprint()
        assert other.sparse == sparse and other.dim == 6 and other.num_classes == len(COUNTS)
        assert_same(outputs(other, x, target), want)
    assert_same(outputs(hs, x, target), want)  # the original is untouched by its copies


def test_tree_round_trips():
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    for other in (
        copy.deepcopy(tree),
        copy.copy(tree),
        pickle.loads(pickle.dumps(tree)),
        _torch_round_trip(tree, weights_only=False),
    ):
        assert other.fingerprint() == tree.fingerprint()
        for name in ("path_offsets", "path_nodes", "path_codes", "depths", "counts"):
            assert torch.equal(getattr(other, name), getattr(tree, name))


# --------------------------------------------------- family 4: foreign states
def _params(hs):
    return [p.detach().clone() for p in hs.parameters()]


def test_state_of_a_module_over_other_counts_is_refused_before_anything_is_written():
    hs = make_hs()
    before = _params(hs)
    other = make_hs(counts=COUNTS[::-1], seed=5)  # same V, same shapes, another tree
    assert other.weight.shape == hs.weight.shape
    for strict in (True, False):
        with pytest.raises(ValueError, match="another tree"):
            hs.load_state_dict(other.state_dict(), strict=strict)
        assert_same(_params(hs), before)
    # Counts that build the same tree are the same module.
    same_tree = make_hs(counts=[2 * c for c in COUNTS], seed=7)
    assert same_tree.tree.fingerprint() == hs.tree.fingerprint()
    hs.load_state_dict(same_tree.state_dict())
    assert_same(_params(hs), _params(same_tree))


def test_state_without_a_fingerprint_needs_strict_false():
    hs, src = make_hs(), make_hs(seed=9)
    old = {k: v for k, v in src.state_dict().items() if k != "_extra_state"}
    before = _params(hs)
    with pytest.raises(ValueError, match="no tree fingerprint.*strict=False"):
        hs.load_state_dict(old)
    assert_same(_params(hs), before)
    hs.load_state_dict(old, strict=False)
    assert_same(_params(hs), _params(src))


@pytest.mark.parametrize("change", ["dim", "bias", "garbage", "not a dict"])
def test_state_of_another_shape_is_refused_before_anything_is_written(change):
    hs = make_hs()
    before = _params(hs)
    sd = make_hs(seed=4).state_dict()
    if change == "dim":
        sd = make_hs(dim=5, seed=4).state_dict()
    elif change == "bias":
        sd = make_hs(bias=False, seed=4).state_dict()
    elif change == "garbage":
        sd["_extra_state"] = {"tree_sha256": "0" * 64, "num_classes": len(COUNTS)}
    else:
        sd["_extra_state"] = "abc"
    with pytest.raises(ValueError, match="state_dict"):
        hs.load_state_dict(sd)
    assert_same(_params(hs), before)


def test_fingerprint_is_checked_inside_a_larger_model():
    model = torch.nn.ModuleDict({"hs": make_hs()})
    other = torch.nn.ModuleDict({"hs": make_hs(counts=COUNTS[::-1])})
    with pytest.raises(ValueError, match="another tree"):
        model.load_state_dict(other.state_dict())
    model.load_state_dict(torch.nn.ModuleDict({"hs": make_hs(seed=2)}).state_dict())


# ------------------------------------------------ family 7: second derivatives
@pytest.mark.parametrize("sparse", [False, True])
def test_double_backward_of_the_loss_matches_gradgradcheck(sparse):
    hs = make_hs(counts=COUNTS[:7], dim=3, sparse=sparse)
    target = torch.tensor([0, 3, 6, 6, 1])
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    w = hs.weight.detach().clone().requires_grad_()
    b = hs.bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return torch.func.functional_call(hs, {"weight": w, "bias": b}, (x, target), {"reduction": "none"})

    if not sparse:  # first derivatives of the sparse module are sparse (checked in test_hsoftmax.py)
        assert torch.autograd.gradcheck(f, (x, w, b))
    # Under create_graph=True the first derivatives come out dense, for sparse modules too.
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_double_backward_of_log_prob_matches_gradgradcheck():
    hs = make_hs(counts=COUNTS[:6], dim=3)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    w = hs.weight.detach().clone().requires_grad_()
    b = hs.bias.detach().clone().requires_grad_()

    wrapper = _LogProb(hs)

    def f(x, w, b):
        return torch.func.functional_call(wrapper, {"hs.weight": w, "hs.bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


class _LogProb(torch.nn.Module):
    def __init__(self, hs):
        super().__init__()
        self.hs = hs

    def forward(self, x):
        return self.hs.log_prob(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("what", ["loss", "log_prob"])
def test_gradient_penalty_matches_the_pure_pytorch_reference(dtype, what):
    # The case that used to be off by 5-9x: d/dweight of a penalty on d loss / d input.
    hs = make_hs(dtype=dtype)
    paths = reference_paths(COUNTS)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(4)).to(dtype).requires_grad_()
    target = torch.randint(0, len(COUNTS), (16,), generator=torch.Generator().manual_seed(5))
    w = hs.weight.detach().clone().requires_grad_()
    b = hs.bias.detach().clone().requires_grad_()
    if what == "loss":
        ours, ref = hs(x, target, reduction="sum"), gather_nll(x, target, w, b, paths).sum()
    else:
        pick = torch.randn(16, len(COUNTS), generator=torch.Generator().manual_seed(6)).to(dtype)
        ours = (hs.log_prob(x) * pick).sum()
        ref = (gather_log_prob(x, w, b, paths) * pick).sum()
    (gx,) = torch.autograd.grad(ours, x, create_graph=True)
    (rx,) = torch.autograd.grad(ref, x, create_graph=True)
    got = torch.autograd.grad((gx**2).sum(), (x, hs.weight, hs.bias))
    want = torch.autograd.grad((rx**2).sum(), (x, w, b))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for g, r in zip(got, want):
        assert torch.allclose(g, r, atol=tol, rtol=tol)
        assert r.abs().max() > 0.1  # a second derivative that is really there


# ------------------------------------------------------------ 16-bit inputs
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_modules_compute_in_float32(dtype):
    hs = make_hs(dtype=dtype)
    paths = reference_paths(COUNTS)
    # Scores of about 1e5: a 16-bit loss would overflow or round to nonsense.
    x = (torch.randn(8, 6, generator=torch.Generator().manual_seed(7)) * 300).to(dtype)
    with torch.no_grad():
        hs.weight.mul_(60)
    target = torch.arange(8)
    w, b = hs.weight.detach().double(), hs.bias.detach().double()
    ref = gather_nll(x.double(), target, w, b, paths)
    assert float(ref.max()) > 7e4  # above float16's largest finite value
    loss = hs(x, target, reduction="none")
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss).all())
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    lp = hs.log_prob(x)
    assert lp.dtype == torch.float32 and bool(torch.isfinite(lp).all())
    assert torch.allclose(lp.double(), gather_log_prob(x.double(), w, b, paths), rtol=1e-5)
    xg = x.clone().requires_grad_()
    hs(xg, target).backward()
    assert xg.grad.dtype == dtype and hs.weight.grad.dtype == dtype


# ------------------------------------------------------------------ threads
def test_threads_sharing_one_module_get_the_serial_results():
    hs = make_hs(counts=np.arange(1, 500, dtype=np.float64), dim=32)
    gen = torch.Generator().manual_seed(8)
    jobs = [
        (torch.randn(256, 32, dtype=torch.float64, generator=gen), torch.randint(0, 499, (256,), generator=gen))
        for _ in range(8)
    ]

    def run(x, t):
        x = x.clone().requires_grad_()
        loss = hs(x, t, reduction="sum")
        return [loss.detach(), *torch.autograd.grad(loss, (x, hs.weight, hs.bias)), hs.log_prob(x.detach())]

    serial = [run(*j) for j in jobs]
    results = [None] * len(jobs)
    errors = []

    def worker(k):
        try:
            for _ in range(3):
                results[k] = run(*jobs[k])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for got, want in zip(results, serial):
        assert_same(got, want)  # the kernels are deterministic whatever runs beside them

    # .backward() from several threads accumulates every contribution (autograd locks .grad).
    hs.zero_grad(set_to_none=True)
    threads = [threading.Thread(target=lambda j=j: hs(j[0], j[1], reduction="sum").backward()) for j in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    total = sum(s[2] for s in serial)
    assert torch.allclose(hs.weight.grad, total, atol=1e-9)


# -------------------------------------------------------- family 8: arguments
def test_arguments_are_checked_by_name():
    hs = make_hs()
    x = torch.randn(3, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    cases = [
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, dtype=torch.int64), TypeError, "dtype"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, dtype=torch.complex64), TypeError, "dtype"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, dtype="float32"), TypeError, "dtype"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, device="nowhere"), ValueError, "device"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, sparse="no"), TypeError, "sparse"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 4, bias="yes"), TypeError, "bias"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, 2**62), ValueError, "dim"),
        (lambda: pyneg.HierarchicalSoftmax(COUNTS, True), TypeError, "dim"),
        (lambda: hs(x.to("meta"), t), ValueError, "input"),
        (lambda: hs(x.to_sparse(), t), TypeError, "input"),
        (lambda: hs(x, t.to("meta")), ValueError, "target"),
        (lambda: hs(x, t.to_sparse()), TypeError, "target"),
        (lambda: hs(x, t.to(torch.bool)), TypeError, "target"),
        (lambda: hs(x, t.to(torch.complex64)), TypeError, "target"),
        (lambda: hs(x, torch.tensor([0, 1, 2**64 - 1], dtype=torch.uint64)), ValueError, "target holds id 1844"),
        (lambda: hs(x, np.array([0, 1, 2**64 - 1], dtype=np.uint64)), ValueError, "target holds id 1844"),
        (lambda: hs(x, [0, 1, 2**64]), TypeError, "target"),
        (lambda: hs(x, []), ValueError, "target must be"),
        (lambda: hs(x, t, reduction="avg"), ValueError, "reduction"),
        (lambda: hs(x, t, reduction=None), ValueError, "reduction"),
        (lambda: hs(x[:0], t[:0]), ValueError, "empty batch"),
        (lambda: hs.log_prob(x.to("meta")), ValueError, "input"),
        (lambda: hs.tree.padded_paths(torch.int64), TypeError, "dtype"),
        (lambda: hs.tree.path(True), TypeError, "i"),
        (lambda: pyneg.HuffmanTree(None, COUNTS), TypeError, "from_counts"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    with pytest.raises(AttributeError):
        hs.tree = pyneg.HuffmanTree.from_counts([1, 2])
    with pytest.raises(TypeError, match="sparse"):
        hs.sparse = "no"


def test_numpy_scalars_and_empty_batches_are_accepted():
    hs = pyneg.HierarchicalSoftmax(np.array(COUNTS, dtype=np.float32), np.int64(6), bias=True, dtype=torch.float64)
    assert hs.dim == 6 and isinstance(hs.dim, int)
    empty = torch.zeros(0, 6, dtype=torch.float64)
    assert hs(empty, torch.zeros(0, dtype=torch.int64), reduction="none").shape == (0,)
    assert float(hs(empty, torch.zeros(0, dtype=torch.int64), reduction="sum").detach()) == 0.0
    assert hs.log_prob(empty).shape == (0, len(COUNTS))
    assert hs(empty, [], reduction="none").shape == (0,)  # an empty list is an empty batch of ids
    u = torch.tensor([0, 11, 3], dtype=torch.uint64)
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.equal(hs(x, u), hs(x, u.to(torch.int64)))
    hs.load_state_dict(hs.state_dict(), strict=np.bool_(True))


def test_replaced_parameters_are_checked():
    hs = make_hs()
    x, t = torch.randn(2, 6, dtype=torch.float64), torch.tensor([0, 1])
    hs.weight = torch.nn.Parameter(torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must be"):
        hs(x, t)
    hs = make_hs()
    hs.bias = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must be"):
        hs.log_prob(x)


def test_meta_modules_build_and_refuse_to_compute():
    hs = pyneg.HierarchicalSoftmax(COUNTS, 6, device="meta")
    assert hs.weight.is_meta
    with pytest.raises(ValueError, match="weight is a meta tensor"):
        hs(torch.zeros(2, 6), [0, 1])
    hs.to_empty(device="cpu")
    hs.reset_parameters()
    assert torch.isfinite(hs(torch.zeros(2, 6), [0, 1]))


@pytest.mark.cuda
@pytest.mark.skipif(not pyneg.cuda_available(), reason="needs a CUDA device usable by torch and pyneg._cuda")
def test_cuda_kernels_bounds_check_every_index():
    # pyneg.cuda.hs_forward / hs_backward take flat paths from anyone: a bad id, path or node
    # gives that example a NaN loss (and input gradient), never an out-of-bounds access.
    tree = pyneg.HuffmanTree.from_counts(COUNTS)
    dev = torch.device("cuda")
    off, nodes, codes = (t.to(dev) for t in (tree.path_offsets, tree.path_nodes, tree.path_codes))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64).to(dev)
    w = torch.randn(len(COUNTS) - 1, 6, generator=g, dtype=torch.float64).to(dev)
    target = torch.tensor([0, 1, 2, 3], device=dev)
    good = pyneg.cuda.hs_forward(x, w, target, off, nodes, codes)
    assert bool(torch.isfinite(good).all())
    bad_nodes = nodes.clone()
    bad_nodes[int(off[1]) : int(off[2])] = 10**6  # class 1's path
    bad_off = off.clone()
    bad_off[3] = 10**9  # the end of class 2's path and the start of class 3's
    for o, n, bad in ((off, bad_nodes, [1]), (bad_off, nodes, [2, 3])):
        nll = pyneg.cuda.hs_forward(x, w, target, o, n, codes)
        gi, gw, _ = pyneg.cuda.hs_backward(torch.ones(4, dtype=x.dtype, device=dev), x, w, target, o, n, codes)
        ok = [i for i in range(4) if i not in bad]
        assert bool(torch.isnan(nll[bad]).all()) and torch.equal(nll[ok], good[ok])
        assert bool(torch.isnan(gi[bad]).all()) and bool(torch.isfinite(gi[ok]).all())
        assert bool(torch.isfinite(gw).all())

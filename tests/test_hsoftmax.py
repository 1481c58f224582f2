"""Huffman tree and hierarchical softmax against plain references: a textbook
heapq Huffman construction and a padded-path PyTorch implementation
(pyneg._hsoftmax_reference), autograd's gradcheck, and the tree's own invariants."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch.func import functional_call

import pyneg
from pyneg._hsoftmax_reference import gather_log_prob, gather_nll, heapq_huffman_depths


def random_counts(v: int, seed: int, *, zeros: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.integers(0 if zeros else 1, 1000, v).astype(np.float64)
    return c


def zipf_counts(v: int, seed: int = 0, a: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.floor(1e7 / np.arange(1, v + 1) ** a) + 1)


def make_hs(
    counts, dim: int, *, bias: bool, dtype=torch.float64, sparse: bool = False, seed: int = 0, device: str = "cpu"
) -> pyneg.HierarchicalSoftmax:
    hs = pyneg.HierarchicalSoftmax(counts, dim, bias=bias, sparse=sparse, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised nodes would make every check trivial
        hs.weight.copy_(torch.randn(hs.weight.shape, generator=g, dtype=dtype) * 0.5)
        if bias:
            hs.bias.copy_(torch.randn(hs.bias.shape, generator=g, dtype=dtype))
    return hs.to(device)


# --------------------------------------------------------------------- tree
def check_layout(tree: pyneg.HuffmanTree) -> None:
    """Offsets, node ranges, root-first, parents before children, prefix-free codes."""
    v = tree.num_classes
    off, nodes, codes = tree.path_offsets, tree.path_nodes, tree.path_codes
    assert off.dtype == torch.int64 and nodes.dtype == torch.int32 and codes.dtype == torch.uint8
    assert off.shape == (v + 1,) and int(off[0]) == 0 and int(off[-1]) == nodes.numel() == codes.numel()
    depths = off[1:] - off[:-1]
    assert torch.equal(tree.depths, depths) and tree.depths.dtype == torch.int64
    assert tree.max_depth == int(depths.max())
    if v == 1:
        assert nodes.numel() == 0
        return
    assert int(nodes.min()) == 0 and int(nodes.max()) == v - 2
    assert set(nodes.tolist()) == set(range(v - 1))  # every inner node is on some path
    assert codes.max() <= 1
    # Following (node, code) from the root must reach distinct leaves: the code
    # is prefix-free and each inner node has exactly two children.
    child = {}
    for c in range(v):
        n, k = tree.path(c)
        assert n.dtype == torch.int64 and k.dtype == torch.bool
        assert n.numel() >= 1 and int(n[0]) == 0
        assert bool((n[1:] > n[:-1]).all()), "parents must precede their children"
        steps = list(zip(n.tolist(), k.tolist()))
        for (node, bit), nxt in zip(steps, [s[0] for s in steps[1:]] + [("leaf", c)]):
            assert child.setdefault((node, bit), nxt) == nxt
    assert len(child) == 2 * (v - 1)


@pytest.mark.parametrize("v", [1, 2, 3, 4, 7, 64, 1000])
def test_tree_layout(v):
    check_layout(pyneg.HuffmanTree.from_counts(random_counts(v, v)))


def test_small_tree_by_hand():
    # 1 + 1 -> 2; 2 + 3 -> 5; 5 (class 0) + 5 -> root. Ties go to the leaf.
    tree = pyneg.HuffmanTree.from_counts([5, 1, 1, 3])
    assert tree.depths.tolist() == [1, 3, 3, 2]
    assert [(n.tolist(), c.tolist()) for n, c in map(tree.path, range(4))] == [
        ([0], [False]),
        ([0, 1, 2], [True, False, False]),
        ([0, 1, 2], [True, False, True]),
        ([0, 1], [True, True]),
    ]


def test_tiny_vocabularies():
    one = pyneg.HuffmanTree.from_counts([7.0])
    assert one.num_classes == 1 and one.max_depth == 0 and one.depths.tolist() == [0]
    nodes, codes = one.path(0)
    assert nodes.numel() == 0 and codes.numel() == 0
    two = pyneg.HuffmanTree.from_counts([3.0, 1.0])
    assert two.depths.tolist() == [1, 1]
    assert two.path(1)[1].tolist() == [False] and two.path(0)[1].tolist() == [True]  # lighter is code 0


COUNT_CASES = {
    "random_ints": lambda: random_counts(2000, 1),
    "with_many_zeros": lambda: random_counts(500, 2) * (np.arange(500) % 3 == 0),
    "zipf_1e4": lambda: zipf_counts(10_000),
    "zipf_steep": lambda: zipf_counts(3000, a=1.5),
    "all_equal": lambda: np.ones(1000),
    "all_zero": lambda: np.zeros(37),
    "geometric": lambda: 2.0 ** -np.arange(60.0),  # the deepest possible tree, V - 1 levels
    "huge": lambda: np.array([1e308, 1e308, 1e307, 1.0, 5e307]),
    "floats": lambda: np.random.default_rng(3).random(777),
}


@pytest.mark.parametrize("case", sorted(COUNT_CASES))
def test_weighted_path_length_is_optimal(case):
    counts = COUNT_CASES[case]()
    tree = pyneg.HuffmanTree.from_counts(counts)
    if tree.num_classes <= 2000:  # the layout check walks every path in Python
        check_layout(tree)
    scaled = counts / max(counts.max(), 1.0)  # sum(counts * depth) overflows for the "huge" case
    ours = float((scaled * tree.depths.numpy()).sum())
    theirs = float((scaled * heapq_huffman_depths(counts)).sum())
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)
    if counts.max() < 1e300:
        assert tree.weighted_path_length == pytest.approx(float((counts * tree.depths.numpy()).sum()), rel=1e-12)


def test_weighted_path_length_check_can_fail():
    # A complete (balanced) tree is far from optimal on Zipfian counts: the
    # comparison above is a real constraint.
    counts = zipf_counts(1024)
    balanced = float((counts * 10).sum())
    assert float((counts * heapq_huffman_depths(counts)).sum()) < 0.8 * balanced


def test_equal_counts_give_a_balanced_tree():
    # Ties go to leaves: equal counts give the complete tree of depth ceil(log2 V).
    assert pyneg.HuffmanTree.from_counts(np.ones(1000)).max_depth == 10
    assert pyneg.HuffmanTree.from_counts(np.ones(1024)).depths.unique().tolist() == [10]


def test_tree_is_deterministic_and_picklable():
    counts = zipf_counts(5000, seed=4)
    a, b = pyneg.HuffmanTree.from_counts(counts), pyneg.HuffmanTree.from_counts(counts.copy())
    for name in ("path_offsets", "path_nodes", "path_codes"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    c = pickle.loads(pickle.dumps(a))
    assert torch.equal(c.path_nodes, a.path_nodes) and torch.equal(c.counts, a.counts)


def test_tree_does_not_alias_the_counts():
    counts = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64)
    tree = pyneg.HuffmanTree.from_counts(counts)
    counts[0] = 100.0
    assert tree.counts.tolist() == [4.0, 1.0, 2.0]


# ------------------------------------------------------------- probabilities
@pytest.mark.parametrize("v", [1, 2, 3, 10, 257, 2000])
@pytest.mark.parametrize("bias", [False, True])
def test_probabilities_sum_to_one(v, bias, device):
    hs = make_hs(random_counts(v, v), 12, bias=bias, seed=v, device=device)
    x = torch.randn(9, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(v)).to(device) * 3
    lp = hs.log_prob(x)
    assert lp.shape == (9, v) and lp.dtype == torch.float64
    assert torch.allclose(torch.logsumexp(lp, 1), torch.zeros(9, dtype=torch.float64, device=device), atol=1e-12)
    assert bool((lp <= 0).all())
    # float32 too, within float32 rounding
    lp32 = make_hs(random_counts(v, v), 12, bias=bias, dtype=torch.float32, seed=v, device=device).log_prob(x.float())
    assert torch.allclose(lp32.double().exp().sum(1), torch.ones(9, dtype=torch.float64, device=device), atol=1e-4)


def test_log_prob_matches_forward_and_reference():
    counts = random_counts(300, 5)
    hs = make_hs(counts, 16, bias=True)
    x = torch.randn(20, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(2))
    lp = hs.log_prob(x)
    ref = gather_log_prob(x, hs.weight, hs.bias, hs.tree.padded_paths(torch.float64))
    assert torch.allclose(lp, ref, atol=1e-12)
    assert torch.allclose(lp.gather(1, target[:, None]).squeeze(1), -hs(x, target, reduction="none"), atol=1e-12)


def test_log_prob_gradient_matches_reference():
    hs = make_hs(random_counts(100, 6), 8, bias=True)
    x = torch.randn(7, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 100, dtype=torch.float64)
    params = [x, hs.weight, hs.bias]
    got = torch.autograd.grad((hs.log_prob(x) * w).sum(), params)
    ref = gather_log_prob(x, hs.weight, hs.bias, hs.tree.padded_paths(torch.float64))
    want = torch.autograd.grad((ref * w).sum(), params)
    for g, r in zip(got, want):
        assert torch.allclose(g, r, atol=1e-10)


# ------------------------------------------------------- forward / backward
@pytest.mark.parametrize("v", [2, 5, 300, 5000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_forward_backward_match_reference(v, bias, dtype, reduction, device):
    counts = zipf_counts(v, seed=v)
    hs = make_hs(counts, 24, bias=bias, dtype=dtype, seed=v, device=device)
    gen = torch.Generator().manual_seed(v + 1)
    x = torch.randn(300, 24, dtype=dtype, generator=gen).to(device).requires_grad_()
    target = torch.randint(0, v, (300,), generator=gen)
    loss = hs(x, target.to(device), reduction=reduction)
    # The reference runs on CPU in float64.
    x64 = x.detach().cpu().double().requires_grad_()
    w64 = hs.weight.detach().cpu().double().requires_grad_()
    b64 = hs.bias.detach().cpu().double().requires_grad_() if bias else None
    ref = gather_nll(x64, target, w64, b64, hs.tree.padded_paths(torch.float64))
    ref = {"none": ref, "mean": ref.mean(), "sum": ref.sum()}[reduction]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    assert loss.dtype == dtype and loss.shape == ref.shape
    assert torch.allclose(loss.detach().cpu().double(), ref.detach(), **tol)
    upstream = torch.rand(loss.shape, generator=gen, dtype=torch.float64)
    (loss * upstream.to(device, dtype)).sum().backward()
    (ref * upstream).sum().backward()
    assert torch.allclose(x.grad.cpu().double(), x64.grad, **tol)
    assert torch.allclose(hs.weight.grad.cpu().double(), w64.grad, **tol)
    if bias:
        assert torch.allclose(hs.bias.grad.cpu().double(), b64.grad, **tol)


@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck(bias):
    hs = make_hs(random_counts(13, 3), 5, bias=bias)
    target = torch.tensor([0, 3, 12, 7, 7, 1])
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = hs.weight.detach().clone().requires_grad_()
    params = (x, w) + ((hs.bias.detach().clone().requires_grad_(),) if bias else ())

    def nll(x, w, *b):
        p = {"weight": w, **({"bias": b[0]} if b else {})}
        return functional_call(hs, p, (x, target), {"reduction": "none"})

    assert torch.autograd.gradcheck(nll, params)
    # log_prob = the tree walk (the operator pyneg::hs_log_prob) over F.linear's scores.
    logits = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    t = hs.tree
    paths = (t.path_offsets, t.path_nodes, t.path_codes, t.max_depth)
    children = t._flat_paths(torch.device("cpu"))[3]
    assert torch.autograd.gradcheck(lambda z: torch.ops.pyneg.hs_log_prob(z, children, *paths), (logits,))


def test_tiny_vocabulary_losses():
    one = make_hs([3.0], 4, bias=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = one(x, torch.zeros(3, dtype=torch.int64), reduction="none")
    assert loss.tolist() == [0.0, 0.0, 0.0]  # log P = 0
    loss.sum().backward()
    assert x.grad.abs().sum() == 0 and one.weight.grad.shape == (0, 4)
    assert one.log_prob(x).tolist() == [[0.0]] * 3


# -------------------------------------------------------------------- sparse
@pytest.mark.parametrize("bias", [False, True])
def test_sparse_gradient_equals_dense(bias):
    counts = zipf_counts(2000, seed=8)
    dense = make_hs(counts, 16, bias=bias, dtype=torch.float32)
    sparse = make_hs(counts, 16, bias=bias, dtype=torch.float32, sparse=True)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2000, (64,), generator=torch.Generator().manual_seed(1))
    dense(x, target).backward()
    sparse(x, target).backward()
    g = sparse.weight.grad
    assert g.is_sparse and g.shape == dense.weight.grad.shape
    on_paths = torch.unique(torch.cat([sparse.tree.path(int(t))[0] for t in target]))
    assert torch.equal(g._indices()[0], on_paths)  # only the rows on the batch's paths, sorted
    assert torch.equal(g.to_dense(), dense.weight.grad)  # same kernel, same order: bit-identical
    if bias:
        assert sparse.bias.grad.is_sparse and torch.equal(sparse.bias.grad.to_dense(), dense.bias.grad)
    opt = torch.optim.SparseAdam(list(sparse.parameters()), lr=0.1)
    before = sparse.weight.detach().clone()
    opt.step()
    changed = (sparse.weight.detach() != before).any(1).nonzero().squeeze(1)
    assert torch.equal(changed, on_paths)


# --------------------------------------------------------------- determinism
def test_deterministic_across_runs_and_thread_counts():
    counts = zipf_counts(20_000, seed=9)
    x = torch.randn(1500, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    target = torch.randint(0, 20_000, (1500,), generator=torch.Generator().manual_seed(4))

    def run():
        hs = make_hs(counts, 32, bias=True, dtype=torch.float32)
        x.grad = None
        loss = hs(x, target, reduction="sum")
        loss.backward()
        return loss.detach().clone(), x.grad.clone(), hs.weight.grad.clone(), hs.bias.grad.clone()

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_module_copies():
    hs = make_hs(zipf_counts(50), 4, bias=True)
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 49])
    for other in (copy.deepcopy(hs), pickle.loads(pickle.dumps(hs))):
        assert torch.equal(other(x, t), hs(x, t))
    fresh = pyneg.HierarchicalSoftmax(hs.tree, 4, bias=True, dtype=torch.float64)
    fresh.load_state_dict(hs.state_dict())
    assert torch.equal(fresh(x, t), hs(x, t))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "counts,exc,match",
    [
        ([], ValueError, "counts must not be empty"),
        ([1.0, float("nan")], ValueError, "counts must be finite"),
        ([1.0, float("inf")], ValueError, "counts must be finite"),
        ([1.0, -2.0], ValueError, "counts must be non-negative"),
        ([[1.0, 2.0]], ValueError, "counts must be 1-D"),
        ("abc", TypeError, "counts"),
        (None, TypeError, "counts"),
        ([1 + 2j], TypeError, "counts"),
    ],
)
def test_bad_counts(counts, exc, match):
    with pytest.raises(exc, match=match):
        pyneg.HuffmanTree.from_counts(counts)
    with pytest.raises(exc, match=match):
        pyneg.HierarchicalSoftmax(counts, 4)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="dim"):
        pyneg.HierarchicalSoftmax([1, 2, 3], 0)
    with pytest.raises(ValueError, match="dim"):
        pyneg.HierarchicalSoftmax([1, 2, 3], -3)
    with pytest.raises(TypeError, match="dim"):
        pyneg.HierarchicalSoftmax([1, 2, 3], 2.5)
    with pytest.raises(TypeError, match="sparse"):
        pyneg.HierarchicalSoftmax([1, 2, 3], 2, sparse="yes")
    tree = pyneg.HuffmanTree.from_counts([1, 2, 3])
    for i in (-1, 3):
        with pytest.raises(ValueError, match="i must be in"):
            tree.path(i)


def test_bad_forward_inputs():
    hs = make_hs([4, 3, 2, 1], 3, bias=False, dtype=torch.float32)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="target holds id 4"):
        hs(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="target holds id -1"):
        hs(x, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="target"):
        hs(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target must be"):
        hs(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="input must be"):
        hs(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="input must be"):
        hs(torch.randn(3), torch.tensor([0]))
    with pytest.raises(TypeError, match="input must have the weight's dtype"):
        hs(x.double(), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="input must have the weight's dtype"):
        hs(torch.ones(2, 3, dtype=torch.int64), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        hs([[0.0] * 3] * 2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        hs(x, torch.tensor([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="input must be"):
        hs.log_prob(torch.randn(2, 2))
    # Targets as a list or NumPy array are accepted.
    assert torch.equal(hs(x, [0, 1]), hs(x, np.array([0, 1])))


def test_numpy_target_written_after_forward_does_not_change_the_gradient():
    # A NumPy target is wrapped, not copied, and torch cannot see writes to it:
    # the backward pass must use the targets the forward pass saw.
    hs = make_hs(np.ones(8), 4, bias=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(hs(x, torch.tensor([0, 1, 2]), reduction="sum"), (x, hs.weight, hs.bias))
    target = np.array([0, 1, 2])
    loss = hs(x, target, reduction="sum")
    target[:] = [7, 6, 5]  # same path lengths: nothing else would notice
    got = torch.autograd.grad(loss, (x, hs.weight, hs.bias))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_gradient_with_bias_off_the_kernels(dtype):
    # 16-bit parameters (and every CUDA module with sparse=True) take the
    # gather path; its bias gradient must be sparse too, and match the dense one.
    counts = zipf_counts(50, seed=2)
    dense = make_hs(counts, 8, bias=True, dtype=dtype)
    sparse = make_hs(counts, 8, bias=True, dtype=dtype, sparse=True)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    target = torch.tensor([0, 3, 3, 17, 49, 8])
    dense(x, target, reduction="sum").backward()
    sparse(x, target, reduction="sum").backward()
    assert sparse.weight.grad.is_sparse and sparse.bias.grad.is_sparse
    assert torch.allclose(sparse.weight.grad.to_dense().double(), dense.weight.grad.double(), atol=1e-2)
    assert torch.allclose(sparse.bias.grad.to_dense().double(), dense.bias.grad.double(), atol=1e-2)
    torch.optim.SGD(sparse.parameters(), lr=0.1).step()


def test_gather_reference_sparse_bias_gradient():
    # The path CUDA modules with sparse=True and bias=True run (float32).
    hs = make_hs(zipf_counts(40, seed=3), 5, bias=True, dtype=torch.float32)
    x = torch.randn(4, 5)
    target = torch.tensor([0, 39, 7, 7])
    paths = hs.tree.padded_paths(torch.float32)
    w, b = hs.weight.detach().clone().requires_grad_(), hs.bias.detach().clone().requires_grad_()
    gather_nll(x, target, w, b, paths, sparse=True).sum().backward()
    w2, b2 = hs.weight.detach().clone().requires_grad_(), hs.bias.detach().clone().requires_grad_()
    gather_nll(x, target, w2, b2, paths).sum().backward()
    assert w.grad.is_sparse and b.grad.is_sparse
    assert torch.allclose(w.grad.to_dense(), w2.grad, atol=1e-6)
    assert torch.allclose(b.grad.to_dense(), b2.grad, atol=1e-6)

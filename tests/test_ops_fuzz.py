"""Fuzzing the public operators ``torch.ops.pyneg.*`` (memory, softmax and hierarchical-softmax ops).

Each op starts from a valid call; one argument is replaced by a random
corruption (another dtype, rank or size, the meta device beside CPU tensors,
a sparse layout, a non-contiguous view, garbage values). The call must then
either return exactly what a plain-PyTorch reference computes from the same
arguments, or raise ValueError / TypeError / MemoryError naming the argument:
never a crash (the cases run in a child process, which must not die of a
signal), never torch's or pybind11's internal errors, never silent garbage.
The same refusals hold for the ops called inside ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch

import pyneg

OPS = torch.ops.pyneg

FUZZ_CHILD = r"""
import math, random, sys, traceback
import torch, pyneg
from pyneg._hsoftmax_reference import flat_log_prob, flat_log_prob_grad, flat_nll, flat_nll_grads
OPS = torch.ops.pyneg
OP = sys.argv[1] if len(sys.argv) > 1 else {op!r}
rng = random.Random({seed})
torch.manual_seed({seed})

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8,
          torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64]

def corrupt_cells(t):
    # Garbage in the estimator's (last step, gap) cells: values no estimator holds.
    v = t.clone()
    col = rng.choice([0, 1])
    bad = rng.choice([-1.0, -3.0, 0.5, 2.5, 1e9, math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308 * 10])
    mask = torch.rand(v.shape[:2]) < rng.choice([0.1, 0.5, 1.0])
    v[..., col][mask] = bad
    return "cell-values", v

def corrupt(t, name=None):
    if name == "cells" and rng.random() < 0.4:
        return corrupt_cells(t)
    kind = rng.choice(["dtype", "rank", "size", "meta", "sparse", "strided", "values", "empty"])
    if kind == "dtype":
        d = rng.choice(DTYPES)
        return kind, (t.real if t.is_complex() else t).to(d) if d != torch.complex64 else t.to(torch.float32).to(d)
    if kind == "rank":
        return kind, t.unsqueeze(0) if rng.random() < 0.5 or t.dim() == 0 else t.reshape(-1)[:1].reshape(())
    if kind == "size":
        n = rng.choice([0, 1, 3, 1000])
        return kind, torch.zeros((n,) + tuple(t.shape[1:]), dtype=t.dtype) if t.dim() else t
    if kind == "meta":
        return kind, t.to("meta")
    if kind == "sparse":
        return kind, t.to_sparse() if t.dim() else t
    if kind == "strided":
        if t.dim() and t.shape[0] > 1:
            return kind, t.repeat_interleave(2, 0)[::2]  # equal values, stride 2
        return kind, t
    if kind == "values":
        if t.is_floating_point():
            v = t.clone()
            if v.numel():
                v.view(-1)[: max(1, v.numel() // 2)] = rng.choice([math.nan, math.inf, -1e30, 1e30])
            return kind, v
        if t.dtype == torch.bool:
            return kind, ~t
        info = torch.iinfo(t.dtype)
        return kind, torch.randint(int(info.min), int(info.max), tuple(t.shape), dtype=t.dtype) if t.numel() else t
    return kind, t[:0] if t.dim() else t

def valid_tree():
    tree = pyneg.HuffmanTree.from_counts(torch.arange(1.0, 10.0))
    flat = tree._flat_paths(torch.device("cpu"))
    return [t.clone() for t in flat[:4]], tree.max_depth

def base(op):
    if op == "frequency_estimate":
        est = pyneg.FrequencyEstimator(16, alpha=0.3)
        for s in range(3):
            est.update(torch.randint(0, 20, (5,)))
        return [est._state.clone(), torch.randint(0, 20, (4, 3)), est._step_t.clone(), True], ["cells", "ids", "step"]
    if op == "bank_hit_mask":
        return [torch.randint(0, 5, (6,)), torch.randint(0, 5, (4,))], ["entry_ids", "positive_ids"]
    if op == "softmax_find_hits":
        return [torch.randint(0, 5, (6,)), torch.randint(0, 5, (4, 2)), -1], ["candidate_ids", "positive_ids"]
    if op == "softmax_check_ids":
        return [torch.randint(0, 9, (5,)), "ids", 10, "num_classes is 10", False], ["ids"]
    if op == "softmax_check_real":
        what = rng.choice(["log_q", "weight"])
        x = torch.rand(5, dtype=rng.choice([torch.float32, torch.float64]))
        return [x if what == "weight" else x.log(), "x", what], ["x"]
    if op == "softmax_check_padding":
        id_pad = torch.rand(6) < 0.4
        return [id_pad, id_pad.clone(), "id_pad"], ["id_pad", "log_q_pad"]
    if op == "softmax_block_lse":
        b, n, d = 4, 6, 3
        return ([torch.randn(b, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64),
                 torch.randn(n, dtype=torch.float64), torch.randint(0, 4, (n,)), torch.randint(0, 4, (b,)),
                 None, rng.choice([2, 6]), rng.random() < 0.5], ["qs", "emb", "shift", "ids", "row_ids"])
    if op == "hs_log_prob":
        (off, nodes, codes, children), depth = valid_tree()
        return [torch.randn(3, off.numel() - 2, dtype=torch.float64), children, off, nodes, codes, depth], \
               ["scores", "children", "path_offsets", "path_nodes", "path_codes"]
    if op == "hs_nll":
        (off, nodes, codes, children), depth = valid_tree()
        v = off.numel() - 1
        return [torch.randn(4, 3, dtype=torch.float64), torch.randn(v - 1, 3, dtype=torch.float64),
                torch.randn(v - 1, dtype=torch.float64), torch.randint(0, v, (4,)), off, nodes, codes, depth, False], \
               ["input", "weight", "bias", "target", "path_offsets", "path_nodes", "path_codes"]
    if op == "hs_log_prob_backward":
        (off, nodes, codes, children), depth = valid_tree()
        v = off.numel() - 1
        return [torch.randn(3, v, dtype=torch.float64), torch.randn(3, v - 1, dtype=torch.float64), children, off,
                nodes, codes, depth], ["grad_out", "scores", "children", "path_offsets", "path_nodes", "path_codes"]
    if op == "hs_nll_backward":
        (off, nodes, codes, children), depth = valid_tree()
        v = off.numel() - 1
        x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(v - 1, 3, dtype=torch.float64)
        b, t = torch.randn(v - 1, dtype=torch.float64), torch.randint(0, v, (4,))
        _, dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth, False)
        return [torch.randn(4, dtype=torch.float64), x, w, b, t, dz, off, nodes, codes, depth], \
               ["grad_loss", "input", "weight", "bias", "target", "dz", "path_offsets", "path_nodes", "path_codes"]
    raise KeyError(op)

def reference(op, a):
    # Only called on accepted calls; computes the answer from the arguments as given.
    if op == "frequency_estimate":
        # Plain Python over the cells each id reads (pyneg's hash, transcribed in the tests):
        # an accepted call must have read only cells an estimator can hold.
        cells, ids, step, log = a
        s, (h, nb, _) = int(step), cells.shape
        out = []
        for i in ids.to(torch.int64).reshape(-1).tolist():
            gap = 0.0
            for k in range(h):
                last, g = cells[k, pyneg._core._testing.frequency_bucket(i, k, nb)].tolist()
                ok = 0 <= last <= s and last == math.floor(last) and (last == 0 or 0 < g < math.inf)
                if not ok:
                    raise AssertionError(f"read cell ({{last}}, {{g}}) at step {{s}}")
                gap = max(gap, s + 1.0 if last == 0 else g)
            out.append(0.0 - math.log(gap) if log else 1.0 / gap)
        return torch.tensor(out, dtype=torch.float32).reshape(ids.shape)
    if op == "bank_hit_mask":
        e, p = a
        return e.to(torch.int64).unsqueeze(0) == p.to(torch.int64).unsqueeze(1)
    if op == "softmax_find_hits":
        c, p, _ = a
        m = c.to(torch.int64).view(1, 1, -1) == p.to(torch.int64).unsqueeze(-1)
        rows, t, cols = torch.nonzero(m, as_tuple=True)
        return sorted(zip(rows.tolist(), cols.tolist()))
    if op == "softmax_check_ids":
        return a[0].to(torch.int64)
    if op == "softmax_check_real":
        # Accepted only for finite values (and >= 0 for weights); the answer is a copy.
        x, _, what = a
        if not bool(torch.isfinite(x).all()) or (what == "weight" and bool((x < 0).any())):
            raise AssertionError(f"accepted {{what}} values {{x.tolist()}}")
        return x
    if op == "softmax_check_padding":
        # Accepted only when ids (-1) and log q (-inf) mark the same entries; the answer is the mask.
        id_pad, log_q_pad, _ = a
        if not torch.equal(id_pad, log_q_pad):
            raise AssertionError("accepted padding masks that differ")
        return id_pad
    if op == "softmax_block_lse":
        qs, emb, shift, ids, row_ids, diag, chunk, nce = a
        s = qs @ emb.t() + (0 if shift is None else shift)
        mask = ids.to(torch.int64).unsqueeze(0) == row_ids.to(torch.int64).reshape(qs.shape[0], -1)[:, :1]
        if row_ids.dim() == 2:
            for t in range(row_ids.shape[1]):
                mask |= ids.to(torch.int64).unsqueeze(0) == row_ids[:, t : t + 1].to(torch.int64)
        if nce:
            return torch.where(mask, 0.0, torch.nn.functional.softplus(s)).sum(1)
        return torch.logsumexp(s.masked_fill(mask, -math.inf), 1)
    if op == "hs_log_prob":
        scores, children, off, nodes, codes, depth = a
        return flat_log_prob(scores, off, nodes, codes, depth)
    if op == "hs_nll":
        x, w, b, t, off, nodes, codes, depth, sparse = a
        return flat_nll(x, w, b, t, off, nodes, codes, depth)
    if op == "hs_log_prob_backward":
        g, scores, children, off, nodes, codes, depth = a
        return flat_log_prob_grad(g, scores, off, nodes, codes, depth)
    if op == "hs_nll_backward":
        g, x, w, b, t, dz, off, nodes, codes, depth = a
        # dz is hs_nll's saved output: an accepted dz must be the forward's, the gradients its closed form.
        _, want_dz = OPS.hs_nll(x, w, b, t, off, nodes, codes, depth, False)
        if not torch.equal(dz, want_dz):
            return None
        return flat_nll_grads(g, x, w, b, t, off, nodes, codes, depth)
    raise KeyError(op)

def same(got, want):
    if want is None:  # a value no reference defines (a dz the forward did not produce): any finite shape-right answer
        return True
    if isinstance(want, tuple):
        return all(same(g, w) for g, w in zip(got, want) if w is not None)
    if isinstance(want, list):
        rows, cols, complete = got
        return bool(complete) and sorted(zip(rows.tolist(), cols.tolist())) == want
    if isinstance(got, (tuple, list)):
        got = got[0]
    tol = 1e-9 if got.dtype == torch.float64 or not got.is_floating_point() else 1e-5  # float32 kernels
    return got.shape == want.shape and torch.allclose(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True)

bad = 0
accepted = refused = 0
for case in range({cases}):
    args, names = base(OP)
    i = rng.randrange(len(names))
    kind, args[i] = corrupt(args[i], names[i])
    try:
        got = getattr(OPS, OP)(*args)
    except (ValueError, TypeError, MemoryError) as e:
        refused += 1
        msg = str(e)
        if "incompatible function arguments" in msg or ("pyneg" not in msg and names[i] not in msg
                and not any(n in msg for n in names)):
            print(f"UNNAMED {{OP}} {{kind}} {{names[i]}}: {{msg[:300]}}"); bad += 1
        continue
    except Exception as e:
        print(f"OTHER {{OP}} {{kind}} {{names[i]}}: {{type(e).__name__}}: {{str(e)[:300]}}"); bad += 1
        continue
    accepted += 1
    outs = got if isinstance(got, (tuple, list)) else (got,)
    if any(o.device.type == "meta" for o in outs):  # shape propagation: only for all-meta calls
        if not all(a.device.type == "meta" for a in args if isinstance(a, torch.Tensor)):
            print(f"META-OUTPUT {{OP}} {{kind}} {{names[i]}}"); bad += 1
        continue
    try:
        want = reference(OP, args)
    except Exception as e:
        why = f"{{type(e).__name__}}: {{str(e)[:200]}}"
        print(f"ACCEPTED-INVALID {{OP}} {{kind}} {{names[i]}}: reference fails with {{why}}"); bad += 1
        continue
    if not same(got, want):
        print(f"GARBAGE {{OP}} {{kind}} {{names[i]}}"); bad += 1
print(f"DONE bad={{bad}} accepted={{accepted}} refused={{refused}}")
"""

FUZZED = [
    "frequency_estimate",
    "bank_hit_mask",
    "softmax_find_hits",
    "softmax_check_ids",
    "softmax_block_lse",
    "hs_log_prob",
    "hs_nll",
    "hs_log_prob_backward",
    "hs_nll_backward",
    "softmax_check_real",
    "softmax_check_padding",
]


@pytest.mark.parametrize("op", FUZZED)
def test_fuzz_op(run_child, op):
    proc = run_child(FUZZ_CHILD.format(op=op, seed=FUZZED.index(op), cases=150), timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DONE bad=0" in out, out[-4000:]


# ---------------------------------------------------------------- named refusals
def test_frequency_estimate_refuses_wrong_cells_by_name():
    ids = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="cells must be 3-D"):
        OPS.frequency_estimate(torch.randn(3, 5, dtype=torch.float64), ids, torch.tensor(5), True)
    with pytest.raises(TypeError, match="cells must be float64"):
        OPS.frequency_estimate(torch.randn(3, 5), ids, torch.tensor(5), True)
    with pytest.raises(TypeError, match="ids must be"):
        OPS.frequency_estimate(torch.zeros(2, 4, 2, dtype=torch.float64), ids.float(), torch.tensor(5), True)
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*53\]"):
        OPS.frequency_estimate(torch.zeros(2, 4, 2, dtype=torch.float64), ids, torch.tensor(-1), True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: OPS.bank_hit_mask(torch.arange(3).to("meta"), torch.arange(2)),
        lambda: OPS.frequency_estimate(
            torch.zeros(2, 4, 2, dtype=torch.float64), torch.arange(3, device="meta"), torch.tensor(1), False
        ),
        lambda: OPS.softmax_block_lse(
            torch.randn(2, 3), torch.randn(4, 3, device="meta"), None, None, None, None, 4, False
        ),
        lambda: OPS.softmax_find_hits(torch.arange(3), torch.arange(2, device="meta").reshape(2, 1), -1),
    ],
    ids=["bank_hit_mask", "frequency_estimate", "softmax_block_lse", "softmax_find_hits"],
)
def test_meta_beside_cpu_is_refused(call):
    # Before: the dispatcher ran the fake kernel and returned uninitialised CPU memory.
    with pytest.raises(ValueError, match="meta"):
        call()


def test_all_meta_calls_still_give_shapes():
    out = OPS.bank_hit_mask(torch.arange(3, device="meta"), torch.arange(2, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)


def _tree():
    tree = pyneg.HuffmanTree.from_counts(torch.arange(1.0, 10.0))
    off, nodes, codes, children = (t.clone() for t in tree._flat_paths(torch.device("cpu"))[:4])
    return off, nodes, codes, children, tree.max_depth


@pytest.mark.parametrize("code", [2, 255])
def test_hs_codes_must_be_bits(code):
    off, nodes, codes, children, depth = _tree()
    codes[0] = code
    v = off.numel() - 1
    x, w = torch.randn(2, 3, dtype=torch.float64), torch.randn(v - 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="path_codes holds"):
        OPS.hs_log_prob(torch.randn(2, v - 1, dtype=torch.float64), children, off, nodes, codes, depth)
    # A target whose path holds step 0 (the class whose path starts there and is not empty).
    first = int(((off[:-1] == 0) & (off[1:] > 0)).nonzero()[0])
    target = torch.tensor([first, first])
    with pytest.raises(ValueError, match="path_codes holds"):
        OPS.hs_nll(x, w, None, target, off, nodes, codes, depth)


def test_hs_children_must_be_the_paths_tree():
    off, nodes, codes, children, depth = _tree()
    v = off.numel() - 1
    scores = torch.randn(2, v - 1, dtype=torch.float64)
    swapped = children.clone()
    swapped[0], swapped[1] = children[1], children[0]  # the root's branches swapped: another tree
    with pytest.raises(ValueError, match="children"):
        OPS.hs_log_prob(scores, swapped, off, nodes, codes, depth)
    cyclic = children.clone()
    cyclic[2 * (v - 2)] = 0  # the last inner node points back at the root
    with pytest.raises(ValueError, match="children"):
        OPS.hs_log_prob(scores, cyclic, off, nodes, codes, depth)
    # the valid tree: the CPU kernel equals the reference
    from pyneg._hsoftmax_reference import flat_log_prob

    torch.testing.assert_close(
        OPS.hs_log_prob(scores, children, off, nodes, codes, depth), flat_log_prob(scores, off, nodes, codes, depth)
    )


def test_hs_absurd_max_depth_is_refused_before_allocating():
    off, nodes, codes, children, depth = _tree()
    v = off.numel() - 1
    x, w = torch.randn(2, 3, dtype=torch.float64), torch.randn(v - 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_depth"):
        OPS.hs_nll(x, w, None, torch.tensor([0, 1]), off, nodes, codes, 2**40)


def test_compiled_op_refusals_equal_eager():
    def call(cells, ids, step):
        return OPS.frequency_estimate(cells, ids, step, True)

    cells = torch.zeros(2, 4, dtype=torch.float64)  # wrong layout
    ids = torch.tensor([1, 2])
    errors = []
    for fn in (call, torch.compile(call, backend="eager", fullgraph=True)):
        with pytest.raises(ValueError) as info:
            fn(cells, ids, torch.tensor(1))
        errors.append(str(info.value))
    assert "cells must be 3-D" in errors[0] and "cells must be 3-D" in errors[1]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda g: g.to(torch.complex128), TypeError, "grad_out must be float"),
        (lambda g: g.long(), TypeError, "grad_out must be float"),
        (lambda g: g[:, :3], ValueError, r"grad_out must have shape \(2, 9\)"),
        (lambda g: g.to("meta"), ValueError, "grad_out is on meta"),
    ],
    ids=["complex", "int", "shape", "meta"],
)
def test_hs_log_prob_backward_checks_grad_out(bad, error, match):
    # Before: complex and integer grad_out were cast silently, a meta one returned uninitialised memory.
    off, nodes, codes, children, depth = _tree()
    v = off.numel() - 1
    scores, g = torch.randn(2, v - 1, dtype=torch.float64), torch.randn(2, v, dtype=torch.float64)
    with pytest.raises(error, match=match):
        OPS.hs_log_prob_backward(bad(g), scores, children, off, nodes, codes, depth)


@pytest.mark.parametrize("which", ["grad_loss", "dz"])
def test_hs_nll_backward_refuses_a_meta_tensor_beside_cpu(which):
    off, nodes, codes, children, depth = _tree()
    v = off.numel() - 1
    x, w, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(v - 1, 3, dtype=torch.float64), torch.arange(4)
    _, dz = OPS.hs_nll(x, w, None, t, off, nodes, codes, depth, False)
    args = {"grad_loss": torch.ones(4, dtype=torch.float64), "dz": dz}
    args[which] = args[which].to("meta")
    for op in (OPS.hs_nll_backward, OPS.hs_nll_backward_sparse):
        with pytest.raises(ValueError, match=f"{which} is on meta"):
            op(args["grad_loss"], x, w, None, t, args["dz"], off, nodes, codes, depth)


def test_hs_log_prob_backward_reference_keeps_infinite_scores_finite():
    """The reference kernel (every device but the CPU) equals the CPU kernel for infinite scores
    (before: the padding's 0 * inf gave NaN gradients)."""
    from pyneg._hsoftmax_reference import flat_log_prob_grad

    off, nodes, codes, children, depth = _tree()
    v = off.numel() - 1
    scores = torch.randn(2, v - 1, dtype=torch.float64)
    scores[0, :3], scores[1, 0] = torch.inf, -torch.inf
    g = torch.randn(2, v, dtype=torch.float64)
    got = flat_log_prob_grad(g, scores, off, nodes, codes, depth)
    assert got.isfinite().all()
    torch.testing.assert_close(got, OPS.hs_log_prob_backward(g, scores, children, off, nodes, codes, depth))

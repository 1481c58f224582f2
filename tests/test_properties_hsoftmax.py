"""Property tests (hypothesis) of the hierarchical-softmax entry points: any
dtype (uint64, 16-bit, bool, complex), device (cpu, meta), layout (sparse),
stride or shape either gives a result that matches the pure-PyTorch reference
or raises ValueError / TypeError naming the argument, and a refused call leaves
the module as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyneg
from pyneg._hsoftmax_reference import gather_log_prob, gather_nll, heapq_huffman_depths, padded_paths

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.uint64,
    torch.bool,
    torch.complex64,
]
REAL_FLOAT = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INT = (torch.int64, torch.int32, torch.int8, torch.uint8, torch.uint64)


def convert(values: np.ndarray, dtype: torch.dtype, layout: str, container: str):
    """values (float64 array) in the given dtype, as a (strided / sparse / meta) tensor, array or list.

    torch has no sparse uint64: those come out dense (callers use :func:`layout_of`).
    """
    t = torch.from_numpy(values.copy())
    if dtype == torch.uint64:
        t = torch.from_numpy(np.clip(np.nan_to_num(values, nan=0.0, posinf=1e19), 0, 1e19).astype(np.uint64))
    elif dtype in INT or dtype == torch.bool:
        t = torch.from_numpy(np.nan_to_num(values, posinf=100, neginf=-100)).to(dtype)
    else:
        t = t.to(dtype)
    if layout == "strided":  # the same values at a stride of 2
        wide = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype) if t.dim() else t
        if t.dim():
            wide[::2] = t
            t = wide[::2]
    elif layout_of(layout, dtype) == "sparse" and t.dim():
        t = t.to_sparse()
    elif layout == "meta":
        t = t.to("meta")
    if container == "numpy" and layout in ("contiguous", "strided") and dtype != torch.bfloat16:
        return t.numpy()
    if container == "list" and layout == "contiguous" and dtype != torch.bfloat16:
        return t.tolist()
    return t


def layout_of(layout: str, dtype: torch.dtype) -> str:
    return "contiguous" if layout == "sparse" and dtype == torch.uint64 else layout


containers = st.sampled_from(["tensor", "numpy", "list"])
layouts = st.sampled_from(["contiguous", "contiguous", "strided", "sparse", "meta"])


def raises_naming(exc: BaseException, *names: str) -> bool:
    event(f"refused: {type(exc).__name__}")
    return isinstance(exc, (ValueError, TypeError)) and any(n in str(exc) for n in names)


# ------------------------------------------------------------------ the tree
@SETTINGS
@given(
    values=st.lists(st.floats(0, 1e6), min_size=0, max_size=40),
    special=st.sampled_from([None] * 4 + [0.0, 1e-310, 5e-324, 1e300, -1.0, -0.0, np.nan, np.inf]),
    where=st.integers(0, 40),
    two_d=st.sampled_from([False] * 4 + [True]),
    dtype=st.sampled_from(DTYPES),
    layout=layouts,
    container=containers,
)
def test_from_counts(values, special, where, two_d, dtype, layout, container):
    if special is not None:
        values = values[:where] + [special] + values[where:]
    arr = np.asarray(values, dtype=np.float64)
    if two_d and arr.size:
        arr = arr[None, :]
    counts = convert(arr, dtype, layout, container)
    layout = layout_of(layout, dtype)
    try:
        tree = pyneg.HuffmanTree.from_counts(counts)
    except Exception as exc:
        assert raises_naming(exc, "counts"), repr(exc)
        # Refused only for a reason: no valid input is refused.
        if dtype not in REAL_FLOAT + INT or layout in ("sparse", "meta"):
            return
        dense = counts if isinstance(counts, torch.Tensor) else torch.as_tensor(np.asarray(counts))
        got = dense.numpy().astype(np.float64) if dense.dtype == torch.uint64 else dense.double().numpy()
        valid = (
            got.ndim == 1
            and got.size > 0  # the values as the dtype holds them (may overflow)
            and bool(np.isfinite(got).all())
            and bool((got >= 0).all())
        )
        assert not valid, f"valid counts refused: {exc}"
        return
    assert layout in ("contiguous", "strided") and dtype not in (torch.bool, torch.complex64)
    event("accepted")
    used = tree.counts  # the counts as the tree read them (after the dtype's rounding)
    depths = tree.depths.to(torch.float64)
    assert tree.num_classes == used.numel() == arr.size
    want = float((used * torch.from_numpy(heapq_huffman_depths(used.numpy())).to(torch.float64)).sum())
    assert abs(float((used * depths).sum()) - want) <= 1e-9 * max(want, 1.0)  # optimal, as the heap's
    if tree.num_classes > 1:
        assert float((2.0**-depths).sum()) == pytest.approx(1.0)  # a full binary tree (Kraft)


# ---------------------------------------------------------------- the module
@SETTINGS
@given(
    dim=st.one_of(st.integers(-2, 6), st.sampled_from([np.int64(3), np.int32(2), True, 2.0, "4", 2**62])),
    bias=st.sampled_from([True, False, np.bool_(True), 1, "yes", None]),
    sparse=st.sampled_from([False, True, np.bool_(False), 0, "no"]),
    dtype=st.sampled_from(
        [None, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64, "float32"]
    ),
    device=st.sampled_from([None, "cpu", "meta", "nowhere", 3.5]),
)
def test_module_construction(dim, bias, sparse, dtype, device):
    try:
        hs = pyneg.HierarchicalSoftmax([3, 1, 4, 1, 5], dim, bias=bias, sparse=sparse, dtype=dtype, device=device)
    except Exception as exc:
        assert raises_naming(exc, "dim", "bias", "sparse", "dtype", "device"), repr(exc)
        bad = []
        if isinstance(dim, (bool, float, str)) or (not isinstance(dim, bool) and int(dim) < 1) or dim == 2**62:
            bad.append("dim")
        if not isinstance(bias, (bool, np.bool_)):
            bad.append("bias")
        if not isinstance(sparse, (bool, np.bool_)):
            bad.append("sparse")
        if dtype not in (None, torch.float64, torch.float16, torch.bfloat16):
            bad.append("dtype")
        if device not in (None, "cpu", "meta"):
            bad.append("device")
        assert bad and any(b in str(exc) for b in bad), (bad, repr(exc))
        return
    event("accepted")
    assert hs.weight.shape == (4, int(dim)) and hs.dim == int(dim)
    assert (hs.bias is not None) == bool(bias) and hs.sparse == bool(sparse)
    assert hs.weight.dtype == (dtype or torch.get_default_dtype())
    assert hs.weight.device.type == (device or "cpu")


COUNTS = [9.0, 1, 3, 3, 7, 2, 0, 5, 11]


def build(dtype, bias, sparse):
    hs = pyneg.HierarchicalSoftmax(COUNTS, 4, bias=bias, sparse=sparse, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        hs.weight.copy_(torch.randn(hs.weight.shape, generator=g, dtype=torch.float64))
        if bias:
            hs.bias.copy_(torch.randn(hs.bias.shape, generator=g, dtype=torch.float64))
    return hs


MODULES = {
    (d, b, s): build(d, b, s)
    for d in (torch.float64, torch.float32, torch.float16)
    for b in (False, True)
    for s in (False, True)
}
_t = pyneg.HuffmanTree.from_counts(COUNTS)
PATHS = padded_paths(_t.path_offsets, _t.path_nodes, _t.path_codes, dtype=torch.float64)
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-4}


def snapshot(hs):
    return [p.detach().clone() for p in hs.parameters()] + [p.grad for p in hs.parameters()]


def unchanged(hs, before):
    now = snapshot(hs)
    return all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(now, before)
    )


@settings(SETTINGS, max_examples=200)
@given(
    key=st.sampled_from(sorted(MODULES, key=str)),
    batch=st.integers(0, 5),
    in_dtype=st.sampled_from(
        [None] * 6
        + [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64]
    ),
    in_layout=st.sampled_from(["contiguous"] * 5 + ["transposed", "strided", "sparse", "meta"]),
    in_cols=st.sampled_from([4] * 5 + [3]),
    ids=st.lists(st.one_of(st.integers(0, 8), st.integers(-3, 12)), min_size=0, max_size=6),
    match_len=st.sampled_from([True] * 4 + [False]),
    t_dtype=st.sampled_from(
        [torch.int64] * 4 + [torch.int32, torch.uint8, torch.uint64, torch.float32, torch.bool, torch.complex64]
    ),
    t_layout=st.sampled_from(["contiguous"] * 5 + ["strided", "sparse", "meta"]),
    t_container=containers,
    reduction=st.sampled_from(["mean", "sum", "none"] * 2 + ["avg", None]),
)
def test_forward(key, batch, in_dtype, in_layout, in_cols, ids, match_len, t_dtype, t_layout, t_container, reduction):
    hs = MODULES[key]
    dtype = key[0]
    in_dtype = in_dtype or dtype
    g = torch.Generator().manual_seed(batch)
    x64 = torch.randn(batch, in_cols, generator=g, dtype=torch.float64)
    if in_layout == "transposed":
        x = x64.t().contiguous().t().to(in_dtype)
    elif in_layout == "strided":
        x = torch.zeros(batch, 2 * in_cols, dtype=torch.float64)[:, ::2]
        x.copy_(x64)
        x = x.to(in_dtype) if in_dtype != torch.float64 else x
    else:
        x = x64.to(in_dtype)
        x = x.to_sparse() if in_layout == "sparse" else x.to("meta") if in_layout == "meta" else x
    ids = (ids + [0] * batch)[:batch] if match_len else ids
    target = convert(np.asarray(ids, dtype=np.float64), t_dtype, t_layout, t_container)
    t_layout = layout_of(t_layout, t_dtype)
    x_dense = x.double() if in_layout not in ("sparse", "meta") and in_dtype in REAL_FLOAT else x64
    before = snapshot(hs)
    valid_input = in_dtype == dtype and in_layout not in ("sparse", "meta") and in_cols == 4
    in_range = all(0 <= i < len(COUNTS) for i in ids)
    valid_target = (t_dtype in INT and t_layout in ("contiguous", "strided") and in_range and len(ids) == batch) or (
        len(ids) == 0 == batch and t_container == "list" and t_layout == "contiguous"
    )
    if t_dtype == torch.uint64 and any(i < 0 for i in ids):  # convert() clipped them: in range after all
        valid_target = t_layout in ("contiguous", "strided") and len(ids) == batch
        ids = [max(i, 0) for i in ids]
    valid = valid_input and valid_target and reduction in ("mean", "sum", "none") and (batch or reduction != "mean")
    try:
        loss = hs(x, target, reduction=reduction)
    except Exception as exc:
        assert raises_naming(exc, "input", "target", "reduction"), repr(exc)
        assert not valid, f"valid call refused: {exc!r}"
        assert unchanged(hs, before)
        return
    assert valid, "an invalid call was accepted"
    event("accepted")
    ref = gather_nll(
        x_dense,
        torch.tensor(ids, dtype=torch.int64),
        hs.weight.detach().double(),
        None if hs.bias is None else hs.bias.detach().double(),
        PATHS,
    )
    ref = ref.mean() if reduction == "mean" else ref.sum() if reduction == "sum" else ref
    assert loss.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert torch.allclose(loss.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    assert unchanged(hs, before)  # a forward pass changes nothing


@SETTINGS
@given(
    key=st.sampled_from(sorted(MODULES, key=str)),
    batch=st.integers(1, 6),
    data=st.data(),
    transposed=st.booleans(),
    t_dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.uint64]),
    t_container=containers,
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_valid_calls_match_the_reference(key, batch, data, transposed, t_dtype, t_container, reduction):
    """Only valid calls: loss and every gradient equal the reference's (float64 reference)."""
    hs = MODULES[key]
    dtype = key[0]
    ids = data.draw(st.lists(st.integers(0, len(COUNTS) - 1), min_size=batch, max_size=batch))
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, generator=g, dtype=torch.float64).to(dtype)
    x = (x.t().contiguous().t() if transposed else x).requires_grad_()
    target = convert(np.asarray(ids, dtype=np.float64), t_dtype, "contiguous", t_container)
    loss = hs(x, target, reduction=reduction)
    grads = torch.autograd.grad(loss.sum(), [x] + list(hs.parameters()))
    xr = x.detach().double().requires_grad_()
    params = [p.detach().double().requires_grad_() for p in hs.parameters()]
    ref = gather_nll(xr, torch.tensor(ids), params[0], params[1] if len(params) > 1 else None, PATHS)
    ref = ref.mean() if reduction == "mean" else ref.sum() if reduction == "sum" else ref
    want = torch.autograd.grad(ref.sum(), [xr] + params)
    tol = TOL[dtype] if dtype != torch.float16 else 2e-3  # 16-bit gradients are rounded to 16 bits
    assert torch.allclose(loss.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    for got, ref_grad in zip(grads, want):
        assert got.is_sparse == (hs.sparse and got.shape != x.shape)
        got = got.to_dense() if got.is_sparse else got
        assert torch.allclose(got.double(), ref_grad, atol=tol, rtol=tol)


@SETTINGS
@given(
    key=st.sampled_from(sorted(MODULES, key=str)),
    batch=st.integers(0, 4),
    in_dtype=st.sampled_from([None, torch.float64, torch.float16, torch.int32, torch.bool, torch.complex64]),
    in_layout=st.sampled_from(["contiguous", "contiguous", "sparse", "meta", "3-d"]),
)
def test_log_prob(key, batch, in_dtype, in_layout):
    hs = MODULES[key]
    dtype = key[0]
    in_dtype = in_dtype or dtype
    x64 = torch.randn(batch, 4, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    x = x64.to(in_dtype)
    x = {"sparse": lambda: x.to_sparse(), "meta": lambda: x.to("meta"), "3-d": lambda: x[None]}.get(
        in_layout, lambda: x
    )()
    before = snapshot(hs)
    try:
        lp = hs.log_prob(x)
    except Exception as exc:
        assert raises_naming(exc, "input"), repr(exc)
        assert not (in_dtype == dtype and in_layout == "contiguous"), f"valid call refused: {exc!r}"
        assert unchanged(hs, before)
        return
    assert in_dtype == dtype and in_layout == "contiguous"
    event("accepted")
    ref = gather_log_prob(
        x.double(), hs.weight.detach().double(), None if hs.bias is None else hs.bias.detach().double(), PATHS
    )
    assert torch.allclose(lp.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    assert unchanged(hs, before)


@SETTINGS
@given(
    counts=st.sampled_from([COUNTS, [2 * c for c in COUNTS], COUNTS[::-1], COUNTS[:-1]]),
    dim=st.sampled_from([4, 4, 3]),
    bias=st.booleans(),
    src_dtype=st.sampled_from([torch.float64, torch.float32]),
    edit=st.sampled_from(
        ["none"] * 6 + ["drop-fingerprint", "garbage-fingerprint", "drop-weight", "weight-not-tensor", "extra-key"]
    ),
    strict=st.sampled_from([True, False] * 3 + [np.bool_(True), "yes"]),
)
def test_load_state_dict(counts, dim, bias, src_dtype, edit, strict):
    hs = build(torch.float64, True, False)
    src = pyneg.HierarchicalSoftmax(counts, dim, bias=bias, dtype=src_dtype)
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1, generator=torch.Generator().manual_seed(3))
    sd = dict(src.state_dict())
    if edit == "drop-fingerprint":
        del sd["_extra_state"]
    elif edit == "garbage-fingerprint":
        sd["_extra_state"] = {"tree_sha256": 3}
    elif edit == "drop-weight":
        del sd["weight"]
    elif edit == "weight-not-tensor":
        sd["weight"] = [[0.0] * dim] * 8
    elif edit == "extra-key":
        sd["something"] = torch.zeros(1)
    before = snapshot(hs)
    same_tree = src.tree.fingerprint() == hs.tree.fingerprint()
    same_v = len(counts) == len(COUNTS)
    is_strict = isinstance(strict, (bool, np.bool_)) and bool(strict)
    shapes_ok = (edit == "drop-weight" or (dim == 4 and same_v and edit != "weight-not-tensor")) and (
        not bias or same_v
    )
    tree_ok = edit != "garbage-fingerprint" and (same_tree or edit == "drop-fingerprint")
    strict_ok = not is_strict or (bias and edit not in ("drop-fingerprint", "drop-weight", "extra-key"))
    valid = isinstance(strict, (bool, np.bool_)) and shapes_ok and tree_ok and strict_ok
    try:
        hs.load_state_dict(sd, strict=strict)
    except Exception as exc:
        assert not valid, f"valid state refused: {exc!r}"
        assert raises_naming(exc, "state_dict", "strict"), repr(exc)
        assert unchanged(hs, before)
        return
    assert valid, "an invalid state was accepted"
    event("accepted")
    for k, old in (("weight", before[0]), ("bias", before[1])):
        assert torch.equal(getattr(hs, k).detach(), sd[k].double() if k in sd else old)

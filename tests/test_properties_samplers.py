"""Property tests over every sampler entry point (issue 10).

Hypothesis generates arguments of every dtype (uint64, float16, bfloat16, bool,
complex included), device (cpu, meta), layout (sparse), stride (non-contiguous),
container (tensor, NumPy array, list), shapes from empty to products past int64,
and ``out=`` buffers that alias the inputs. Each call must either return a valid
result, checked against a NumPy/PyTorch reference, or raise ValueError/TypeError
whose message names one of the call's arguments; a call that raised must leave
the sampler unchanged (same state_dict, same next draws).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pyneg

DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
]
INT_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64}
FORMS = ["tensor", "tensor", "tensor", "noncontig", "transposed", "numpy", "list", "sparse", "meta"]

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

V = 12
WEIGHTS = np.array([3.0, 1.0, 0.0, 2.0, 5.0, 1.0, 0.0, 4.0, 1.0, 2.0, 1.0, 1.0])
P = WEIGHTS / WEIGHTS.sum()


def fresh_sampler():
    return pyneg.AliasSampler(WEIGHTS)


# ----------------------------------------------------------------- inputs
def _cast(values, dtype):
    """A tensor of ``dtype`` from Python numbers, wrapping like a C cast (-1 -> 2**64 - 1 for uint64)."""
    base = (
        torch.tensor(
            values, dtype=torch.float64 if any(isinstance(v, float) for v in np.ravel(values)) else torch.int64
        )
        if len(np.shape(values))
        else torch.tensor(values)
    )
    if dtype in INT_DTYPES and base.is_floating_point():
        base = torch.nan_to_num(base).clamp(-(2**62), 2**62).to(torch.int64)
    if dtype == torch.uint64 or dtype == torch.uint32 or dtype == torch.uint16:
        arr = base.numpy().astype({torch.uint64: np.uint64, torch.uint32: np.uint32, torch.uint16: np.uint16}[dtype])
        return torch.from_numpy(arr.copy())
    return base.to(dtype)


def _form(t: torch.Tensor, form: str):
    """``t`` in the given form, and the form it actually got (some do not apply to every tensor)."""
    if form == "noncontig" and t.dim() >= 1:
        return torch.stack([t, t], dim=-1)[..., 0], form
    if form == "transposed" and t.dim() == 2:
        return t.t().contiguous().t(), form
    if form == "numpy" and t.dtype != torch.bfloat16:
        return t.numpy(), form
    if form == "list":
        return t.tolist(), form
    if form == "sparse" and t.dim() >= 1:
        try:
            return t.to_sparse(), form
        except (RuntimeError, TypeError):
            pass
    if form == "meta":
        return t.to("meta"), form
    return t, "tensor"


@st.composite
def arrays(draw, values, shapes):
    """(argument as the user passes it, the same values as an int64/float64 reference array or None)."""
    shape = draw(shapes)
    n = math.prod(shape)
    vals = draw(st.lists(values, min_size=n, max_size=n))
    dtype = draw(st.one_of(st.sampled_from(DTYPES), st.sampled_from([torch.int64, torch.int32, torch.float64])))
    t = _cast(np.array(vals, dtype=object).reshape(shape).tolist() if shape else vals[0], dtype)
    arg, form = _form(t, draw(st.sampled_from(FORMS)))
    ref = None
    if not t.is_complex() and t.dtype != torch.bool:
        ref = t.numpy().astype(np.float64) if t.dtype == torch.uint64 else t.to(torch.float64).numpy()
        if t.dtype in INT_DTYPES:
            ref = t.numpy().astype(object) if t.dtype == torch.uint64 else t.to(torch.int64).numpy()
    return arg, ref, t.dtype, form


ID_VALUES = st.one_of(
    st.integers(-2, V + 2),
    st.integers(0, V - 1),
    st.integers(0, V - 1),
    st.sampled_from([2**63 - 1, -(2**63), -1, 2**31]),
)
ID_SHAPES = st.one_of(
    st.tuples(st.integers(0, 6)), st.tuples(st.integers(0, 4), st.integers(0, 3)), st.just(()), st.just((0, 5))
)


def _is_dense_cpu(arg) -> bool:
    return (
        (isinstance(arg, torch.Tensor) and arg.layout == torch.strided and arg.device.type == "cpu")
        or isinstance(arg, (np.ndarray, list))
        or np.isscalar(arg)
    )


def _valid_ids(ref, dtype, form, *, padding: bool = False):
    """The int ids the reference says are valid (None when the call must be refused)."""
    if ref is None or dtype not in INT_DTYPES or form in ("sparse", "meta"):
        return None
    flat = [int(x) for x in np.ravel(ref)]
    lo = -1 if padding else 0
    if any(x < lo or x >= V for x in flat):
        return None
    return np.array(flat, dtype=np.int64).reshape(np.shape(ref))


def _empty_ok(ids) -> bool:
    """An empty list, or an empty NumPy array of NumPy's default dtype, is an empty set of ids."""
    arg, _, dtype, form = ids
    return (form == "list" and np.size(arg) == 0) or (form == "numpy" and arg.size == 0 and arg.dtype == np.float64)


def _table_state(s):
    """The state entry that defines the distribution, as a tensor: the table's entries
    (weighted samplers) or V (analytic samplers)."""
    sd = s.state_dict()
    return sd["entries"].clone() if "entries" in sd else torch.tensor(sd["num_classes"])


def fingerprint(s):
    return (
        _table_state(s),
        s.sample((4, 6), seed=3),
        s.sample((3, 3), seed=4, unique=True),
        s.log_prob(torch.arange(V)),
    )


def assert_unchanged(s, before):
    for a, b in zip(fingerprint(s), before):
        assert torch.equal(a, b)


def assert_names_argument(exc: BaseException, names):
    msg = str(exc)
    event(f"refused: {type(exc).__name__}: {msg.split()[0]}")
    assert any(re.search(rf"\b{n}\b", msg) for n in names), f"{type(exc).__name__}: {msg!r} names none of {names}"


# -------------------------------------------------------------- constructors
WEIGHT_VALUES = st.one_of(
    st.floats(0, 1e6),
    st.integers(0, 100),
    st.sampled_from([0.0, 1e-310, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
)
SCALARS = st.one_of(
    st.integers(-3, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            np.float32(0.5),
            np.int64(7),
            np.bool_(True),
            True,
            "3",
            None,
            2**31,
            2**63,
            np.uint64(2**64 - 1),
            10**400,
            torch.tensor(5),
            torch.tensor(2.5),
            torch.ones(2, dtype=torch.int64),
            torch.tensor(3, device="meta"),
        ]
    ),
)


@PROPS
@given(
    arrays(WEIGHT_VALUES, st.one_of(st.tuples(st.integers(0, 8)), st.just(()), st.just((2, 3)))),
    st.sampled_from(["alias", "unigram", "uniform", "loguniform"]),
    SCALARS,
)
def test_constructors(weights, kind, scalar):
    arg, ref, dtype, form = weights
    try:
        if kind == "alias":
            s = pyneg.AliasSampler(arg)
        elif kind == "unigram":
            s = pyneg.UnigramSampler(arg, power=scalar)
        elif kind == "uniform":
            s = pyneg.UniformSampler(scalar)
        else:
            s = pyneg.LogUniformSampler(scalar)
    except (ValueError, TypeError) as exc:
        assert_names_argument(exc, {"alias": ["weights"], "unigram": ["counts", "power"]}.get(kind, ["num_classes"]))
        if (
            kind == "alias"
            and ref is not None
            and form not in ("sparse", "meta")
            and np.ndim(ref) == 1
            and np.size(ref)
            and dtype != torch.bool
        ):
            w = ref.astype(np.float64)
            assert not (np.isfinite(w).all() and (w >= 0).all() and w.max() > 0), f"valid weights refused: {exc}"
        return
    event("valid")
    p = s.probs.numpy()
    assert p.dtype == np.float64 and abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
    # The table's resolution (docs/guide/samplers.md, "Exactness"): every class within
    # 2**-33 / V + 2**-39 p of its normalised weight, the largest within 2**-32.
    if kind == "alias":
        w = ref.astype(np.float64).ravel()
        assert np.allclose(p, w / w.max() / (w / w.max()).sum(), rtol=2**-38, atol=2**-32)
    elif kind == "unigram":
        c = ref.astype(np.float64).ravel()
        with np.errstate(all="ignore"):
            q = np.power(c / c.max(), float(scalar)) if c.max() > 0 else np.ones_like(c)
        assert np.allclose(p, q / q.sum(), rtol=2**-38, atol=2**-32)
    elif kind == "uniform":
        assert np.allclose(p, 1 / len(p), rtol=1e-12)
    else:
        k = np.arange(len(p))
        assert np.allclose(p, np.log1p(1 / (k + 1)) / np.log(len(p) + 1), rtol=1e-9)
    draws = s.sample(200, seed=1)
    assert int(draws.min()) >= 0 and int(draws.max()) < len(p) and (p[draws.numpy()] > 0).all()


# ------------------------------------------------------------------ sample
_VALID_SIZES = st.one_of(st.integers(0, 40), st.tuples(st.integers(0, 6), st.integers(0, 7)))
SIZES = st.one_of(
    _VALID_SIZES,
    _VALID_SIZES,
    st.integers(-2, 40),
    st.tuples(st.integers(-1, 4)),
    st.sampled_from(
        [
            (),
            (0,),
            (3, 0),
            (0, 2**40),
            (2**62, 0, 2**62),
            (2**31, 2**31, 2**31),
            (2**63,),
            2**62,
            (np.int64(3), np.int32(4)),
            np.int64(5),
            2.5,
            "4",
            None,
            (2, True),
            torch.Size([2, 3]),
            np.array([2, 2]),
        ]
    ),
)
BOOLS = st.one_of(
    st.booleans(), st.booleans(), st.sampled_from([True, False, np.bool_(True), np.bool_(False), "no", 1, 0, None])
)
SEEDS = st.one_of(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from([-1, 2**64, np.uint64(7), np.int64(9), 1.5, "1", True, torch.tensor(4)]),
)
OFFSETS = st.one_of(
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.sampled_from([2**64 - 1, 2**64 - 10, 2**64, -1, 2**53 + 1, np.int64(3), 0.5, True]),
)
DEVICES = st.one_of(st.none(), st.none(), st.sampled_from([None, "cpu", torch.device("cpu"), "meta", "bogus", 3, True]))


def _shape_of(size):
    if isinstance(size, (tuple, list, torch.Size, np.ndarray)):
        return tuple(int(d) for d in size)
    return (int(size),)


def _exclude_strategy(size):
    """Mostly exclusion lists with one row per row of ``size`` (so that calls get to the kernels)."""
    try:
        lead = _shape_of(size)[0] if _shape_of(size) else 1
    except (TypeError, ValueError, OverflowError, IndexError):
        lead = 2
    lead = lead if 0 <= lead <= 8 else 2
    matching = st.one_of(st.tuples(st.just(lead)), st.tuples(st.just(lead), st.integers(0, 4)))
    anything = st.one_of(st.tuples(st.integers(0, 6)), st.tuples(st.integers(0, 6), st.integers(0, 3)), st.just(()))
    return st.one_of(st.none(), arrays(ID_VALUES, matching), arrays(ID_VALUES, matching), arrays(ID_VALUES, anything))


# What a valid call looks like: with these, only the argument picked as the
# adversarial one may be refused (and the error must then name it).
VALID_SAMPLE = {
    "size": st.one_of(st.integers(0, 5), st.tuples(st.integers(0, 6), st.integers(0, 5))),
    "unique": st.booleans(),
    "seed": st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    "offset": st.integers(0, 1000),
    "device": st.sampled_from([None, "cpu", torch.device("cpu")]),
    "out": st.sampled_from(["none", "fresh"]),
}
ANY_SAMPLE = {
    "size": SIZES,
    "unique": st.sampled_from([np.bool_(True), np.bool_(False), "no", 1, 0, None, torch.tensor(True)]),
    "seed": SEEDS,
    "offset": OFFSETS,
    "device": DEVICES,
    "out": st.sampled_from(["none", "fresh", "int32", "wrong_shape", "noncontig", "meta", "sparse", "aliases_exclude"]),
}


def _valid_exclude(size):
    lead = _shape_of(size)[0] if _shape_of(size) else 1
    ids = st.integers(-1, V - 1)
    return st.one_of(
        st.none(),
        st.builds(
            lambda rows: (torch.tensor(rows, dtype=torch.int64).reshape(lead, 2),),
            st.lists(st.lists(ids, min_size=2, max_size=2), min_size=lead, max_size=lead),
        ),
    )


def _int_like(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _must_refuse(adversarial, args, out):
    """The adversarial value when it is plainly invalid (so the call must have been refused), else None."""
    v = args.get(adversarial)
    bad = {
        "unique": lambda: not isinstance(v, (bool, np.bool_)),
        "seed": lambda: v is not None and not isinstance(v, torch.Tensor) and not (_int_like(v) and 0 <= v < 2**64),
        "offset": lambda: not (_int_like(v) and 0 <= v and v + math.prod(_shape_of(args["size"])) <= 2**64),
        "device": lambda: v not in (None, "cpu") and v != torch.device("cpu"),
        "out": lambda: out is not None and v not in ("none", "fresh"),
        "size": lambda: (
            isinstance(v, (float, str, type(None)))
            or (_int_like(v) and v < 0)
            or (isinstance(v, tuple) and any(isinstance(d, bool) or (_int_like(d) and d < 0) for d in v))
        ),
    }.get(adversarial)
    return v if bad is not None and bad() else None


@settings(PROPS, max_examples=250)
@given(st.sampled_from([None, None, "size", "exclude", "unique", "seed", "offset", "device", "out"]), st.data())
def test_sample(adversarial, data):
    event(f"adversarial: {adversarial}")
    args = {k: data.draw((ANY_SAMPLE if k == adversarial else VALID_SAMPLE)[k], label=k) for k in VALID_SAMPLE}
    size, unique, seed, offset, device, out_kind = (
        args[k] for k in ("size", "unique", "seed", "offset", "device", "out")
    )
    if adversarial == "exclude":
        exclude = data.draw(_exclude_strategy(size), label="exclude")
    elif adversarial is None or adversarial != "size":
        exclude = data.draw(_valid_exclude(size), label="exclude")
        exclude = None if exclude is None else (exclude[0], exclude[0].numpy(), torch.int64, "tensor")
    else:
        exclude = None
    s = fresh_sampler()
    before = fingerprint(s)
    ex_arg = None if exclude is None else exclude[0]
    out = None
    try:
        shape = _shape_of(size)
        if out_kind != "none" and all(0 <= d < 64 for d in shape):
            numel = math.prod(shape)
            if out_kind == "fresh":
                out = torch.full(shape, -7, dtype=torch.int64)
            elif out_kind == "int32":
                out = torch.full(shape, -7, dtype=torch.int32)
            elif out_kind == "wrong_shape":
                out = torch.full((numel + 1,), -7, dtype=torch.int64)
            elif out_kind == "noncontig" and numel > 1:
                out = torch.full(shape + (2,), -7, dtype=torch.int64)[..., 0]
            elif out_kind == "meta":
                out = torch.empty(shape, dtype=torch.int64, device="meta")
            elif out_kind == "sparse" and len(shape):
                out = torch.zeros(shape, dtype=torch.int64).to_sparse()
            elif (
                out_kind == "aliases_exclude"
                and isinstance(ex_arg, torch.Tensor)
                and ex_arg.dtype == torch.int64
                and ex_arg.layout == torch.strided
                and ex_arg.device.type == "cpu"
                and ex_arg.numel()
                and numel
            ):
                # One buffer holds the exclusion list and, overlapping its last id, out.
                m = ex_arg.numel()
                buf = torch.full((m + numel,), -7, dtype=torch.int64)
                buf[:m] = ex_arg.reshape(-1)
                ex_arg = buf[:m].view(ex_arg.shape)
                out = buf[m - 1 : m - 1 + numel].view(shape)
    except (TypeError, ValueError, OverflowError):
        pass
    out_before = (
        out.clone()
        if isinstance(out, torch.Tensor) and out.layout == torch.strided and out.device.type == "cpu"
        else None
    )
    ex_before = ex_arg.clone() if isinstance(ex_arg, torch.Tensor) and ex_arg.device.type != "meta" else None
    try:
        got = s.sample(size, exclude=ex_arg, unique=unique, seed=seed, offset=offset, device=device, out=out)
    except (ValueError, TypeError) as exc:
        assert_names_argument(exc, [adversarial] if adversarial else [])
        assert_unchanged(s, before)
        if out_before is not None and out_kind != "aliases_exclude":
            assert torch.equal(out, out_before), "a refused call wrote out"
        return
    except MemoryError as exc:
        assert "size" in str(exc)
        return
    # A valid call: check it against what was asked.
    event("valid")
    refuse = _must_refuse(adversarial, args, out)
    assert not refuse, f"{adversarial}={refuse!r} was accepted"
    shape = _shape_of(size)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64 and tuple(got.shape) == shape
    assert got.device.type == "cpu"
    if out is not None:
        assert got is out
        assert out_kind != "aliases_exclude" or not got.numel(), "out aliasing exclude was accepted"
    if ex_before is not None and ex_before.layout == torch.strided:
        assert torch.equal(ex_arg, ex_before), "sample wrote its exclude input"
    flat = got.reshape(-1).numpy()
    if flat.size:
        assert flat.min() >= 0 and flat.max() < V and (P[flat] > 0).all()
    rows = got.reshape(-1, shape[-1]) if len(shape) >= 2 and shape[-1] else None
    if exclude is not None:
        ids = _valid_ids(exclude[1], exclude[2], exclude[3], padding=True)
        if ids is None and _empty_ok(exclude):
            ids = np.zeros(np.shape(exclude[0]), dtype=np.int64)
        assert ids is not None, "invalid exclusion list accepted"
        lists = ids.reshape(ids.shape[0] if ids.ndim else 1, -1) if ids.size else np.zeros((0, 0), np.int64)
        per_row = got.reshape(lists.shape[0], -1).numpy() if ids.size else []
        for r, lst in zip(per_row, lists):
            assert not set(r.tolist()) & set(lst.tolist()), "drew an excluded id"
    if bool(unique) and rows is not None:
        assert all(len(set(r)) == len(r) for r in rows.tolist())
    if out is None:  # deterministic for a given seed
        again = s.sample(size, exclude=ex_arg, unique=unique, seed=seed, offset=offset, device=device)
        assert torch.equal(again, got) or seed is None


# ------------------------------------------------------- log_prob and counts
TRIES = st.one_of(
    st.none(),
    st.integers(-2, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "3",
            True,
            np.float32(2.5),
            np.int64(4),
            torch.tensor(3.0),
            torch.tensor([2, 3]),
            torch.ones(5),
            torch.ones(1, 1, 1, 1),
            torch.tensor([True]),
            torch.ones(2, dtype=torch.complex64),
            torch.ones(2, device="meta"),
            torch.tensor([1.0, float("nan")]),
            [2, 3],
            np.array([4.0, 1.0]),
        ]
    ),
)
NUM_SAMPLED = st.one_of(st.integers(1, 8), st.integers(-1, 100), st.sampled_from([np.int64(5), 2.0, True, "2", 2**70]))


@PROPS
@given(arrays(ID_VALUES, ID_SHAPES), NUM_SAMPLED, TRIES, st.sampled_from(["log_prob", "expected", "log_expected"]))
def test_log_prob_and_expected_counts(ids, num_sampled, num_tries, fn):
    s = fresh_sampler()
    before = fingerprint(s)
    arg, ref, dtype, form = ids
    try:
        if fn == "log_prob":
            got = s.log_prob(arg)
        elif fn == "expected":
            got = s.expected_count(arg, num_sampled, num_tries=num_tries)
        else:
            got = s.log_expected_count(arg, num_sampled, num_tries=num_tries)
    except (ValueError, TypeError) as exc:
        assert_names_argument(exc, ["ids", "num_sampled", "num_tries"])
        assert_unchanged(s, before)
        return
    event("valid")
    valid = _valid_ids(ref, dtype, form)
    assert valid is not None or _empty_ok(ids), "invalid ids accepted"
    if valid is None:
        valid = np.zeros(np.shape(ref) if ref is not None else np.shape(arg), dtype=np.int64)  # an empty list
    assert got.dtype == torch.float64 and tuple(got.shape) == valid.shape
    p = P[valid]
    if fn == "log_prob":
        with np.errstate(divide="ignore"):
            assert np.allclose(got.numpy(), np.log(p), rtol=1e-9, atol=0, equal_nan=False)  # the table's resolution
        return
    assert not torch.isnan(got).any()
    if num_tries is None:
        expected = int(num_sampled) * p
    else:
        t = np.asarray(num_tries.numpy() if isinstance(num_tries, torch.Tensor) else num_tries, dtype=np.float64)
        t = t.reshape(t.shape + (1,) * (p.ndim - t.ndim))
        with np.errstate(all="ignore"):
            expected = -np.expm1(t * np.log1p(-p))
        # TensorFlow's rule: a unique draw that rejected nothing (tries == k) counts k·p.
        expected = np.where(t == float(num_sampled), float(num_sampled) * p, expected)
        expected = np.broadcast_to(expected, p.shape)
    value = got.numpy() if fn == "expected" else np.exp(got.numpy())
    assert np.allclose(value, expected, rtol=1e-9, atol=0)


# --------------------------------------------------------- sample_candidates
@PROPS
@given(NUM_SAMPLED, st.one_of(st.none(), arrays(ID_VALUES, ID_SHAPES)), BOOLS, SEEDS)
def test_sample_candidates(num_sampled, true_classes, unique, seed):
    s = fresh_sampler()
    before = fingerprint(s)
    tc = None if true_classes is None else true_classes[0]
    try:
        c = s.sample_candidates(num_sampled, tc, unique=unique, seed=seed)
    except (ValueError, TypeError) as exc:
        assert_names_argument(exc, ["num_sampled", "true_classes", "unique", "seed", "size"])
        assert_unchanged(s, before)
        return
    event("valid")
    n = int(num_sampled)
    ids = c.sampled_candidates
    assert ids.shape == (n,) and ids.dtype == torch.int64 and (P[ids.numpy()] > 0).all()
    if bool(unique):
        assert len(set(ids.tolist())) == n and c.num_tries >= n
        ref = -np.expm1(c.num_tries * np.log1p(-P[ids.numpy()]))
    else:
        assert c.num_tries == n
        ref = n * P[ids.numpy()]
    assert np.allclose(c.sampled_expected_count.numpy(), ref, rtol=1e-9)
    assert not torch.isnan(c.true_expected_count).any()
    if true_classes is not None:
        valid = _valid_ids(true_classes[1], true_classes[2], true_classes[3])
        assert valid is not None or _empty_ok(true_classes), "invalid true_classes accepted"


# ----------------------------------------------------------- load_state_dict
CLASSES = {
    "alias": lambda n: pyneg.AliasSampler(np.arange(1, n + 1, dtype=np.float64)),
    "unigram": lambda n: pyneg.UnigramSampler(np.arange(n, 0, -1, dtype=np.float64), power=0.5),
    "uniform": lambda n: pyneg.UniformSampler(n),
    "loguniform": lambda n: pyneg.LogUniformSampler(n),
}
MUTATIONS = [
    "none",
    "none",
    "drop_key",
    "add_key",
    "tag",
    "float32",
    "float16",
    "bfloat16",
    "complex",
    "bool",
    "noncontig",
    "2d",
    "shorter",
    "scaled",
    "nan",
    "negative",
    "meta",
    "sparse",
    "list",
    "numpy",
    "power_nan",
    "power_str",
    "power_np",
    "not_dict",
    "uint64",
]


@PROPS
@given(
    st.sampled_from(sorted(CLASSES)),
    st.sampled_from(sorted(CLASSES)),
    st.sampled_from([1, 5, 7]),
    st.sampled_from([1, 5, 7]),
    st.sampled_from(MUTATIONS),
)
def test_load_state_dict(src_kind, dst_kind, n_src, n_dst, mutation):
    src, dst = CLASSES[src_kind](n_src), CLASSES[dst_kind](n_dst)
    sd = src.state_dict()
    key = "entries" if "entries" in sd else "num_classes"
    p = sd[key]
    m = dict(sd)
    if (
        key == "num_classes"
        and mutation not in ("none", "drop_key", "add_key", "tag", "not_dict")
        and not mutation.startswith("power")
    ):
        # V is an int: each mutation becomes a malformed count of classes.
        m[key] = {
            "float32": p + 0.5, "float16": float(p), "bfloat16": str(p), "complex": complex(p), "bool": True,
            "noncontig": [p], "2d": [[p]], "shorter": p - 1 if p > 1 else 0, "scaled": 2**50 + p,
            "nan": float("nan"), "negative": -p, "meta": torch.tensor(p, device="meta"), "sparse": None,
            "list": [p], "numpy": np.array([p]), "uint64": torch.tensor([p, p]),
        }[mutation]  # fmt: skip
        mutation = "malformed_v"
    if mutation == "drop_key":
        m.pop(key)
    elif mutation == "add_key":
        m["extra"] = 1
    elif mutation == "tag":
        m["sampler"] = "FrequencyEstimator"
    elif mutation in ("float32", "float16", "bfloat16", "complex", "bool"):
        m[key] = p.to(
            {
                "float32": torch.float32,
                "float16": torch.float16,
                "bfloat16": torch.bfloat16,
                "complex": torch.complex128,
                "bool": torch.bool,
            }[mutation]
        )
    elif mutation == "uint64":
        m[key] = torch.from_numpy(p.numpy().view(np.uint64).copy())
    elif mutation == "noncontig":
        m[key] = torch.stack([p, p], -1)[:, 0]
    elif mutation == "2d":
        m[key] = p.unsqueeze(0)
    elif mutation == "shorter":
        m[key] = p[:-1]
    elif mutation == "scaled":  # an alias >= V
        m[key] = p.clone()
        m[key][0] = p.numel() << 32
    elif mutation == "nan":  # alias 2**32 - 1
        m[key] = p.clone().fill_(-1)
    elif mutation == "negative":
        m[key] = -p
    elif mutation == "meta":
        m[key] = p.to("meta")
    elif mutation == "sparse":
        m[key] = p.to_sparse()
    elif mutation == "list":
        m[key] = p.tolist()
    elif mutation == "numpy":
        m[key] = p.numpy()
    elif mutation.startswith("power"):
        m["power"] = {"power_nan": float("nan"), "power_str": "x", "power_np": np.float64(0.5)}[mutation]
    elif mutation == "not_dict":
        m = list(m.items())
    before = fingerprint(dst) if n_dst >= V else None
    before_sd = dst.state_dict()
    before_draws = dst.sample(30, seed=2)
    try:
        dst.load_state_dict(m)
    except (ValueError, TypeError) as exc:
        assert_names_argument(exc, ["state_dict"])
        for k, v in dst.state_dict().items():
            assert torch.equal(v, before_sd[k]) if isinstance(v, torch.Tensor) else v == before_sd[k]
        assert torch.equal(dst.sample(30, seed=2), before_draws)
        if before is not None:
            assert_unchanged(dst, before)
        return
    # Accepted: only this class's state of this size, and it now draws as the source.
    event("valid")
    assert src_kind == dst_kind and n_src == n_dst, "another class's or size's state was accepted"
    assert mutation in ("none", "noncontig") or (mutation == "power_np" and src_kind == "unigram"), (
        f"mutated state ({mutation}) accepted"
    )
    assert torch.equal(dst.probs, src.probs)
    assert torch.equal(dst.sample((3, 4), seed=5), src.sample((3, 4), seed=5))
    assert torch.equal(dst.log_prob(torch.arange(n_dst)), src.log_prob(torch.arange(n_src)))

"""Issue 25 item 2 (samplers): every ``torch.ops.pyneg`` sampler op checks its arguments itself.

Random dtypes, shapes and values: each call either returns a well-formed result
(ids in [0, V), the documented shape) or raises ValueError / TypeError naming an
argument of the op; never a crash, never silent garbage. A meta tensor beside CPU
tensors is refused. opcheck covers the ops added for the compact table.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import pyneg

OPS = torch.ops.pyneg
V = 50
ARG_NAMES = ["entries", "mass", "num_positive", "exclude", "seed", "offset", "size", "k", "ids", "kind",
             "num_classes", "the tensors of one call"]  # fmt: skip


def seed(x):
    return torch.tensor(x - 2**64 if x >= 2**63 else x, dtype=torch.int64)


@pytest.fixture(scope="module")
def table():
    s = pyneg.AliasSampler(torch.arange(1.0, V + 1))
    d = s._dist
    d.masses()
    return d.entries, d.mass, d.num_positive


def test_the_issue_s_calls_are_refused(table):
    # float entries, and int64 garbage: refused naming entries (they returned zeros before).
    with pytest.raises(TypeError, match="entries must be an int64 tensor"):
        OPS.alias_sample(torch.rand(100), torch.tensor(1), torch.tensor(0), [10])
    garbage = torch.randint(-(2**62), 2**62, (100,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="entries is not an alias table"):
        OPS.alias_sample(garbage, torch.tensor(1), torch.tensor(0), [1000])
    e, m, npos = table
    with pytest.raises(TypeError, match="mass must be an int64 tensor"):
        OPS.alias_sample_excluding(e, m.double(), npos, torch.tensor([[1]]), seed(1), seed(0), [2, 2], 2)
    with pytest.raises(ValueError, match="mass must sum|mass holds a class mass|mass of exclude row"):
        OPS.alias_sample_excluding(e, torch.full_like(m, 2**62), npos, torch.tensor([[1]]), seed(1), seed(0), [2, 2], 2)
    with pytest.raises(ValueError, match="must be contiguous"):
        OPS.alias_sample(torch.stack([e, e], 1)[:, 0], seed(1), seed(0), [3])
    with pytest.raises(ValueError, match="num_positive"):
        OPS.alias_sample_unique(e, m, 0, None, seed(1), seed(0), [2], 2, False)
    with pytest.raises(TypeError, match="seed must be a 0-dim int64 tensor"):
        OPS.alias_sample(e, torch.tensor([1, 2]), seed(0), [3])
    with pytest.raises(TypeError, match="offset must be a 0-dim int64 tensor"):
        OPS.alias_sample(e, seed(1), torch.tensor(0.0), [3])
    with pytest.raises(ValueError, match="size must hold non-negative"):
        OPS.alias_sample(e, seed(1), seed(0), [-3])
    with pytest.raises(TypeError, match="ids must be an int64 tensor"):
        OPS.alias_log_prob(m, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="num_classes must be in"):
        OPS.analytic_sample(0, 0, None, seed(1), seed(0), [3], 3, False, False)
    with pytest.raises(ValueError, match="kind must be 0"):
        OPS.analytic_log_prob(5, 10, torch.tensor([1]))


def test_meta_beside_cpu_is_refused(table):
    e, m, npos = table
    with pytest.raises(ValueError, match="one device"):
        OPS.alias_sample_excluding(e.to("meta"), m, npos, torch.tensor([[1]]), seed(1), seed(0), [2, 2], 2)
    with pytest.raises(ValueError, match="one device"):
        OPS.alias_sample(e.to("meta"), seed(1), seed(0), [3])
    with pytest.raises(ValueError, match="one device"):
        OPS.alias_sample_unique(e, m.to("meta"), npos, None, seed(1), seed(0), [2], 2, False)
    with pytest.raises(ValueError, match="seed must be on the CPU"):
        OPS.alias_sample(e, seed(1).to("meta"), seed(0), [3])
    with pytest.raises(ValueError, match="one device"):
        OPS.alias_log_prob(m.to("meta"), torch.tensor([1]))


def _random_tensor(g, kind):
    shape = tuple(int(x) for x in g.integers(0, 4, size=int(g.integers(0, 3))))
    if kind == "float":
        return torch.from_numpy(np.asarray(g.normal(size=shape) * 1e3)).float()
    if kind == "bool":
        return torch.from_numpy(np.asarray(g.integers(0, 2, size=shape)).astype(bool))
    if kind == "int32":
        return torch.from_numpy(np.asarray(g.integers(-(2**31), 2**31 - 1, size=shape)).astype(np.int32))
    return torch.from_numpy(np.asarray(g.integers(-(2**63), 2**63 - 1, size=shape, dtype=np.int64)))


def _named(exc):
    msg = str(exc)
    return any(re.search(rf"\b{re.escape(n)}\b", msg) for n in ARG_NAMES)


@pytest.mark.parametrize("op", ["alias_sample", "alias_sample_excluding", "alias_sample_unique", "alias_log_prob",
                                "alias_class_masses", "analytic_sample", "analytic_log_prob"])  # fmt: skip
def test_fuzz_every_op(op, table):
    e, m, npos = table
    g = np.random.default_rng(abs(hash(op)) % 2**32)
    ok = refused = 0
    for it in range(150):
        # Start from valid arguments, then replace one or two with random values.
        args = {
            "entries": e, "mass": m, "num_positive": npos, "exclude": torch.tensor([[1, -1], [3, 4]]),
            "seed": seed(it), "offset": seed(0), "size": [4, 3], "k": 3, "unique": False, "with_tries": True,
            "ids": torch.tensor([[0, 49], [3, 7]]), "kind": int(g.integers(0, 2)), "num_classes": V,
        }  # fmt: skip
        for _ in range(int(g.integers(1, 3))):
            what = g.choice(["entries", "mass", "exclude", "seed", "offset", "ids", "size", "k", "num_positive",
                             "num_classes", "garbage_entries"])  # fmt: skip
            if what == "garbage_entries":
                args["entries"] = torch.from_numpy(g.integers(-(2**63), 2**63 - 1, size=V, dtype=np.int64))
            elif what == "size":
                args["size"] = [int(x) for x in g.integers(-2, 5, size=int(g.integers(0, 3)))]
            elif what in ("k", "num_positive", "num_classes"):
                args[what] = int(g.integers(-3, 60))
            else:
                args[what] = _random_tensor(g, g.choice(["float", "bool", "int32", "int64"]))
        a = args
        try:
            if op == "alias_sample":
                out = OPS.alias_sample(a["entries"], a["seed"], a["offset"], a["size"])
                res = [out]
            elif op == "alias_sample_excluding":
                out = OPS.alias_sample_excluding(a["entries"], a["mass"], a["num_positive"], a["exclude"], a["seed"],
                                                 a["offset"], a["size"], a["k"])  # fmt: skip
                res = [out]
            elif op == "alias_sample_unique":
                out, _ = OPS.alias_sample_unique(a["entries"], a["mass"], a["num_positive"], a["exclude"], a["seed"],
                                                 a["offset"], a["size"], a["k"], True)  # fmt: skip
                res = [out]
            elif op == "alias_log_prob":
                lp = OPS.alias_log_prob(a["mass"], a["ids"])
                assert lp.dtype == torch.float64 and lp.shape == a["ids"].shape
                assert not torch.isnan(lp).any() and (lp <= 1e-12).all()
                res = []
            elif op == "alias_class_masses":
                mm = OPS.alias_class_masses(a["entries"])
                assert int(mm.sum()) == a["entries"].numel() * 2**32 or mm.numel() >= 2**31
                res = []
            elif op == "analytic_sample":
                out, _ = OPS.analytic_sample(a["kind"], a["num_classes"], a["exclude"], a["seed"], a["offset"],
                                             a["size"], a["k"], bool(it % 2), True)  # fmt: skip
                res = [out]
            else:
                lp = OPS.analytic_log_prob(a["kind"], a["num_classes"], a["ids"])
                assert lp.shape == a["ids"].shape and torch.isfinite(lp).all()
                res = []
        except (ValueError, TypeError) as exc:
            assert _named(exc), f"{type(exc).__name__}: {exc} names no argument"
            refused += 1
            continue
        except RuntimeError as exc:  # the dispatcher's own schema check (a wrong Python type)
            assert "expected" in str(exc) or "argument" in str(exc), exc
            refused += 1
            continue
        for out in res:
            assert out.dtype == torch.int64 and list(out.shape) == list(a["size"])
            vv = a["num_classes"] if op == "analytic_sample" else a["entries"].numel()
            if out.numel():
                assert int(out.min()) >= 0 and int(out.max()) < vv, "garbage ids returned"
        ok += 1
    assert ok and refused  # both roads were taken


def test_opcheck_new_ops(table):
    e, m, npos = table
    cases = [
        (OPS.alias_class_masses.default, (e,)),
        (OPS.analytic_sample.default, (0, 2**40, None, seed(1), seed(0), [4, 5], 5, False, False)),
        (
            OPS.analytic_sample.default,
            (1, 2**40, torch.tensor([[0, 2**40 - 1]]), seed(1), seed(3), [4, 5], 5, False, False),
        ),
        (OPS.analytic_sample.default, (1, 100, None, seed(1), seed(0), [4, 5], 5, True, True)),
        (OPS.analytic_log_prob.default, (1, 2**40, torch.tensor([[0, 2**40 - 1]]))),
        (OPS.check_ids.default, (torch.tensor([1, 2]), 10, "true_classes")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compiled_and_eager_agree_on_refusals_and_draws():
    for s in (pyneg.AliasSampler(torch.arange(1.0, 51.0)), pyneg.LogUniformSampler(2**40)):
        f = torch.compile(lambda sd, s=s: s.sample((3, 4), seed=sd), backend="eager", fullgraph=True)
        assert torch.equal(f(torch.tensor(-3)), s.sample((3, 4), seed=torch.tensor(-3)))
        assert torch.equal(s.sample((3, 4), seed=torch.tensor(-3)), s.sample((3, 4), seed=2**64 - 3))
        g = torch.compile(lambda ex, s=s: s.sample((2, 4), exclude=ex, seed=1), backend="eager", fullgraph=True)
        for call in (g, lambda ex, s=s: s.sample((2, 4), exclude=ex, seed=1)):
            with pytest.raises(TypeError, match="exclude must hold integer ids, got torch.float32"):
                call(torch.tensor([1.0, 2.0]))
        h = torch.compile(lambda t, s=s: s.sample_candidates(5, t, seed=1), backend="eager", fullgraph=True)
        for call in (h, lambda t, s=s: s.sample_candidates(5, t, seed=1)):
            with pytest.raises(ValueError, match="true_classes holds id"):
                call(torch.tensor([1, 2**41]))

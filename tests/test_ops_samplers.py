"""The alias samplers as PyTorch operators: opcheck, torch.compile(fullgraph=True), torch.export.

The ops (pyneg/_ops/alias.py) are checked against the eager sampler (whose draws
tests/test_sampler_golden.py pins bit for bit) and against plain torch references
(log_prob, expected counts).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo

import pyneg
from pyneg.samplers import _int64_tensor

OPS = torch.ops.pyneg
V = 50


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.fixture(scope="module")
def sampler():
    w = torch.arange(1, V + 1, dtype=torch.float64) ** 1.5
    w[7] = 0.0  # one class that can never be drawn
    return pyneg.AliasSampler(w)


def seed(x: int) -> torch.Tensor:
    return _int64_tensor(x)


# --------------------------------------------------------------------- opcheck
def _op_args(s):
    d = s._dist
    e, m, npos = d.entries, d.mass, d.num_positive
    ex = torch.tensor([[0, 3, -1], [5, 5, 49], [-1, -1, -1]])
    return [
        (OPS.alias_sample.default, (e, seed(1), seed(0), [4, 6])),
        (OPS.alias_sample.default, (e, seed(2**64 - 1), seed(2**63 + 5), [17])),
        (OPS.alias_sample.default, (e, seed(3), seed(0), [0, 5])),
        (OPS.alias_sample.default, (e, seed(3), seed(0), [])),
        (OPS.alias_sample_excluding.default, (e, m, npos, ex, seed(4), seed(0), [3, 5], 5)),
        (OPS.alias_sample_excluding.default, (e, m, npos, ex[:1], seed(4), seed(9), [6, 2], 2)),
        (OPS.alias_sample_excluding.default, (e, m, npos, ex, seed(4), seed(0), [3, 0], 0)),
        (OPS.alias_sample_unique.default, (e, m, npos, None, seed(5), seed(0), [4, 10], 10, True)),
        (OPS.alias_sample_unique.default, (e, m, npos, ex, seed(5), seed(3), [3, 8], 8, True)),
        (OPS.alias_sample_unique.default, (e, m, npos, None, seed(5), seed(0), [2, 40], 40, False)),
        (OPS.alias_sample_unique.default, (e, m, npos, None, seed(5), seed(0), [0, 4], 4, True)),
        (OPS.alias_log_prob.default, (d.mass, torch.tensor([[0, 7], [49, 3]]))),
        (OPS.alias_log_prob.default, (d.mass, torch.empty(0, dtype=torch.int64))),
        (OPS.alias_check_tries.default, (torch.tensor([3.0, 12.0]),)),
        (OPS.alias_check_tries.default, (torch.tensor([4, 9]),)),
    ]


def test_opcheck_every_op(sampler):
    seen = set()
    for op, args in _op_args(sampler):
        torch.library.opcheck(op, args)
        seen.add(op.name())
    assert seen == {
        "pyneg::alias_sample",
        "pyneg::alias_sample_excluding",
        "pyneg::alias_sample_unique",
        "pyneg::alias_log_prob",
        "pyneg::alias_check_tries",
    }


def test_ops_give_the_sampler_draws(sampler):
    d = sampler._dist
    got = OPS.alias_sample(d.entries, seed(11), seed(7), [6, 4])
    assert torch.equal(got, sampler.sample((6, 4), seed=11, offset=7))
    ex = torch.tensor([[1, 2], [3, -1]])
    got = OPS.alias_sample_excluding(d.entries, d.mass, d.num_positive, ex, seed(11), seed(0), [2, 9], 9)
    assert torch.equal(got, sampler.sample((2, 9), exclude=ex, seed=11))
    ids, tries = OPS.alias_sample_unique(d.entries, d.mass, d.num_positive, None, seed(11), seed(0), [12], 12, True)
    cand = sampler.sample_candidates(12, seed=11)
    assert torch.equal(ids, cand.sampled_candidates) and int(tries[0]) == cand.num_tries
    assert (ids != 7).all() and ids.unique().numel() == 12


def test_ops_check_data_values(sampler):
    d = sampler._dist
    with pytest.raises(ValueError, match=r"exclude holds id 50 outside \[0, 50\) \(use -1 for padding\)"):
        OPS.alias_sample_excluding(d.entries, d.mass, d.num_positive, torch.tensor([[50]]), seed(1), seed(0), [1, 2], 2)
    with pytest.raises(ValueError, match="exclude holds id -3 outside"):
        OPS.alias_sample_unique(
            d.entries, d.mass, d.num_positive, torch.tensor([[-3]]), seed(1), seed(0), [1, 2], 2, True
        )
    everything = torch.arange(V).reshape(1, V)
    with pytest.raises(ValueError, match="leaves no id with positive weight"):
        OPS.alias_sample_excluding(d.entries, d.mass, d.num_positive, everything, seed(1), seed(0), [1, 2], 2)
    with pytest.raises(ValueError, match=r"ids holds id 50 outside \[0, 50\)"):
        OPS.alias_log_prob(d.mass, torch.tensor([1, 50]))
    with pytest.raises(ValueError, match="finite and >= 1"):
        OPS.alias_check_tries(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="whole numbers"):
        OPS.alias_check_tries(torch.tensor([2.5]))


def test_fake_tensors_give_shapes(sampler):
    from torch._subclasses.fake_tensor import FakeTensorMode

    d = sampler._dist
    with FakeTensorMode(allow_non_fake_inputs=True):
        a = OPS.alias_sample(d.entries, seed(1), seed(0), [3, 4])
        b, t = OPS.alias_sample_unique(d.entries, d.mass, d.num_positive, None, seed(1), seed(0), [3, 4], 4, True)
        out = sampler.sample((5, 2), seed=3)  # the sampler goes through the ops under a mode
    assert a.shape == (3, 4) and b.shape == (3, 4) and t.shape == (3,) and out.shape == (5, 2)
    assert a.dtype == b.dtype == t.dtype == torch.int64


# ------------------------------------------------------------- torch.compile
def _step(s, sd):
    """A step's worth of sampler calls: plain, excluding, unique, log_prob, candidates, log Q."""
    a = s.sample((4, 5), seed=sd)
    b = s.sample((4, 3), exclude=a[:, :2], seed=sd, offset=20)
    c = s.sample((4, 6), unique=True, seed=sd)
    lp = s.log_prob(a)
    cand = s.sample_candidates(8, a[:, 0], seed=sd)
    lq = s.log_expected_count(c, 6, num_tries=cand.num_tries)
    ec = s.expected_count(b, 3)
    return a, b, c, lp, cand.sampled_candidates, cand.true_expected_count, cand.sampled_expected_count, lq, ec


def _same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        if x.dtype == torch.int64:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=0, equal_nan=True)


def test_step_has_no_graph_breaks(sampler):
    explained = dynamo.explain(lambda sd: _step(sampler, sd))(seed(3))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_step_matches_eager_draws(sampler, backend):
    compiled = torch.compile(lambda sd: _step(sampler, sd), backend=backend, fullgraph=True)
    for sd in (3, 4, 2**64 - 2):
        _same(compiled(seed(sd)), _step(sampler, sd))


def test_compiled_with_inductor_matches_eager(sampler):
    def f(sd):
        a = sampler.sample((64, 5), seed=sd)
        u = sampler.sample((8, 4), unique=True, exclude=a[:8, :1], seed=sd)
        return a, u, sampler.log_expected_count(a, 5) * 2.0

    compiled = torch.compile(f, backend="inductor", fullgraph=True)
    for sd in (0, 9):
        _same(compiled(seed(sd)), f(sd))


def test_int_seeds_recompile_at_most_once(sampler):
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(lambda sd: sampler.sample((3, 4), seed=sd), backend=backend, fullgraph=True)
    for sd in range(6):
        assert torch.equal(compiled(sd), sampler.sample((3, 4), seed=sd))
    # The first int is specialised; Dynamo then marks it dynamic: no recompilation per seed.
    assert len(frames) <= 2
    frames.clear()
    dynamo.reset()
    compiled = torch.compile(lambda sd: sampler.sample((3, 4), seed=sd), backend=backend, fullgraph=True)
    for sd in range(4):
        compiled(seed(sd))
    assert len(frames) == 1  # a tensor seed is data: one graph for every seed


def test_compiled_without_seed_draws_from_torch_generator(sampler):
    def f():
        return sampler.sample((6, 5)), sampler.sample((2, 4), unique=True), sampler.sample_candidates(5)

    explained = dynamo.explain(f)()
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.manual_seed(123)
    a1, u1, c1 = compiled()
    torch.manual_seed(123)
    a2, u2, c2 = f()
    # backend="eager" runs torch.randint as eager does: the seed drawn in the graph is eager's.
    assert torch.equal(a1, a2) and torch.equal(u1, u2)
    assert torch.equal(c1.sampled_candidates, c2.sampled_candidates)
    assert isinstance(c1.num_tries, torch.Tensor) and int(c1.num_tries) == c2.num_tries
    assert (a1 != 7).all() and all(r.unique().numel() == 4 for r in u1)
    torch.manual_seed(124)
    assert not torch.equal(compiled()[0], a1)  # a new generator state, new draws


def test_compiled_refusals_keep_their_error(sampler):
    def f(ex, sd):
        return sampler.sample((2, 3), exclude=ex, seed=sd)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.tensor([[1], [2]]), seed(1)), f(torch.tensor([[1], [2]]), 1))
    with pytest.raises(ValueError, match="exclude holds id 50 outside"):
        compiled(torch.tensor([[1], [50]]), seed(1))
    with pytest.raises(ValueError, match=r"ids holds id 99 outside \[0, 50\)"):
        torch.compile(sampler.log_prob, backend="eager", fullgraph=True)(torch.tensor([99]))
    with pytest.raises(ValueError, match="num_tries must hold whole numbers"):
        torch.compile(
            lambda t: sampler.log_expected_count(torch.tensor([1, 2]), 2, num_tries=t), backend="eager", fullgraph=True
        )(torch.tensor([2.5]))


def test_compiled_log_prob_and_counts_match_reference(sampler):
    probs = sampler.probs
    ids = torch.tensor([[0, 7, 49], [3, 3, 10]])
    tries = torch.tensor([4.0, 3.0])

    def f(i, t):
        return sampler.log_prob(i), sampler.expected_count(i, 3, num_tries=t), sampler.log_expected_count(i, 3)

    lp, ec, lec = torch.compile(f, backend="aot_eager", fullgraph=True)(ids, tries)
    p = probs[ids]
    torch.testing.assert_close(lp, torch.log(p))
    ref = torch.where(tries[:, None] == 3, 3 * p, 1 - (1 - p) ** tries[:, None])
    torch.testing.assert_close(ec, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(lec, torch.log(3 * p))


def test_compiled_probability_matches_eager(sampler):
    torch._dynamo.reset()
    ids = torch.tensor([[0, 7, 49], [3, 3, 10]])
    assert torch._dynamo.explain(sampler.probability)(ids).graph_break_count == 0
    got = torch.compile(sampler.probability, backend="eager", fullgraph=True)(ids)
    torch.testing.assert_close(got, sampler.probability(ids), rtol=1e-12, atol=0)
    torch.testing.assert_close(got, sampler.probs[ids], rtol=1e-12, atol=0)
    torch._dynamo.reset()


# -------------------------------------------------------------- torch.export
class _Negatives(torch.nn.Module):
    """A module that draws negatives for a batch and scores them."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.emb = torch.nn.Embedding(V, 4)

    def forward(self, anchors: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        neg = self.sampler.sample((anchors.shape[0], 6), exclude=anchors, seed=sd)
        scores = (self.emb(anchors)[:, None, :] * self.emb(neg)).sum(-1)
        return scores - self.sampler.log_expected_count(neg, 6).to(scores.dtype)


def test_export_module_that_draws(sampler):
    torch.manual_seed(0)
    mod = _Negatives(sampler)
    anchors = torch.tensor([1, 5, 9])
    prog = torch.export.export(mod, (anchors, seed(17)))
    names = {n.target.name() for n in prog.graph.nodes if n.op == "call_function" and hasattr(n.target, "name")}
    assert "pyneg::alias_sample_excluding" in names and "pyneg::alias_log_prob" in names
    for sd in (17, 18):
        torch.testing.assert_close(prog.module()(anchors, seed(sd)), mod(anchors, seed(sd)), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- eager
def test_out_still_written_in_place(sampler):
    out = torch.empty((3, 7), dtype=torch.int64)
    ptr = out.data_ptr()
    got = sampler.sample((3, 7), seed=5, out=out)
    assert got is out and out.data_ptr() == ptr
    assert torch.equal(out, sampler.sample((3, 7), seed=5))


def test_tensor_seeds_and_offsets_equal_int_ones(sampler):
    a = sampler.sample((4, 4), seed=torch.tensor(2**63 + 3, dtype=torch.uint64) if hasattr(torch, "uint64") else 9)
    b = sampler.sample((4, 4), seed=2**63 + 3 if hasattr(torch, "uint64") else 9)
    assert torch.equal(a, b)
    assert torch.equal(
        sampler.sample((5,), seed=seed(4), offset=torch.tensor(3)), sampler.sample((5,), seed=4, offset=3)
    )
    with pytest.raises(TypeError, match="seed must be an int or a one-element integer tensor"):
        sampler.sample((2,), seed=torch.tensor([1.0]))
    # A tensor seed is read as its 64 bits, eagerly and compiled alike (issue 25, item 6).
    assert torch.equal(sampler.sample((2,), seed=torch.tensor(-1)), sampler.sample((2,), seed=2**64 - 1))


def test_plain_draws_skip_the_generator_state_but_refusals_rewind(sampler, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    calls = []
    real = torch.Generator.get_state

    class Spy(torch.Generator):
        def get_state(self):
            calls.append(1)
            return real(self)

    spy = Spy()
    spy.set_state(gen.get_state())
    sampler.sample((16, 5), generator=spy)
    assert calls == []  # a plain draw cannot be refused once its seed is drawn
    before = spy.get_state()
    with pytest.raises(ValueError, match="leaves no id"):
        sampler.sample((1, 2), exclude=torch.arange(V).reshape(1, V), generator=spy)
    assert calls and torch.equal(spy.get_state(), before)


# --------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device usable by torch")
def test_cuda_ops_match_cpu(sampler):
    d = sampler._dist
    dev = torch.device("cuda")
    e, m = d.tables(dev)
    ex = torch.tensor([[0, 3, -1], [5, 5, 49], [-1, -1, -1]])
    for op, args in _op_args(sampler):
        moved = tuple(a.to(dev) if isinstance(a, torch.Tensor) and a.dim() else a for a in args)
        moved = tuple(e if a is d.entries else m if a is d.mass else a for a in moved)
        torch.library.opcheck(op, moved)
    compiled = torch.compile(lambda sd: sampler.sample((6, 5), seed=sd, device=dev), backend="eager", fullgraph=True)
    got = compiled(seed(7))
    assert got.device.type == "cuda"
    if pyneg.cuda_available():  # pyneg's kernels: the CPU's draws, bit for bit
        assert torch.equal(got.cpu(), sampler.sample((6, 5), seed=7))
        u = sampler.sample((3, 8), unique=True, exclude=ex.to(dev), seed=7, device=dev)
        assert torch.equal(u.cpu(), sampler.sample((3, 8), unique=True, exclude=ex, seed=7))
        x = sampler.sample((3, 8), exclude=ex.to(dev), seed=7, device=dev)
        assert torch.equal(x.cpu(), sampler.sample((3, 8), exclude=ex, seed=7))
    else:  # the torch-ops fallback: the same distribution, never a zero-weight class
        assert (got != 7).all()


def test_reference_distribution_of_op_draws(sampler):
    # 200k op draws against the sampler's probabilities (chi-square, fixed seed).
    d = sampler._dist
    draws = OPS.alias_sample(d.entries, seed(2024), seed(0), [200_000])
    counts = np.bincount(draws.numpy(), minlength=V)
    p = sampler.probs.numpy()
    keep = p > 0
    chi2 = (((counts[keep] - 200_000 * p[keep]) ** 2) / (200_000 * p[keep])).sum()
    assert counts[~keep].sum() == 0
    assert chi2 < 1.5 * keep.sum() + 30, chi2  # dof = 48: a wrong table lands far above
    assert math.isclose(counts.sum(), 200_000)


@pytest.mark.skipif(pyneg.cuda_available(), reason="checks the fallback used when pyneg._cuda is missing")
def test_cuda_implementations_fall_back_without_pyneg_cuda(sampler):
    # The CUDA implementations' branches for a build without pyneg._cuda, run on
    # CPU tensors (they keep the inputs' device): exclusions and unique rows are
    # the CPU kernels' draws, plain draws come from torch ops on the table.
    from pyneg._ops import alias as impl

    d = sampler._dist
    e, m, npos = d.entries, d.mass, d.num_positive
    ex = torch.tensor([[0, 3, -1], [5, 5, 49]])
    got = impl._alias_sample_excluding_cuda(e, m, npos, ex, seed(4), seed(2), [2, 9], 9)
    assert torch.equal(got, sampler.sample((2, 9), exclude=ex, seed=4, offset=2))
    ids, tries = impl._alias_sample_unique_cuda(e, m, npos, ex, seed(4), seed(0), [2, 12], 12, True)
    assert torch.equal(ids, sampler.sample((2, 12), exclude=ex, unique=True, seed=4)) and tries.shape == (2,)
    plain = impl._alias_sample_cuda(e, seed(9), seed(0), [100_000])
    assert torch.equal(plain, sampler._sample_torch_ops((100_000,), 9, torch.device("cpu")))
    counts = np.bincount(plain.numpy(), minlength=V) / 100_000
    assert counts[7] == 0 and np.abs(counts - sampler.probs.numpy()).max() < 0.01

"""Issue 25 (hardening, round two) outside the samplers and skip-gram's own suites.

* edges: the float32 temperature refusal, exact double backward through the
  softmax losses and ``negative_sampling_embedding_loss`` (gradient penalties
  against plain-PyTorch references);
* eager = compiled for refused inputs of the losses, the bank and the estimator;
* requests that cannot fit are refused by name before anything is allocated;
* ``sample_candidates`` never mixes two tables while another thread installs one;
* concurrent writers of every caller tensor the losses, the ops, mining and
  the learned sampler read (child processes: no signal, only named refusals or
  results that match a reference).
"""

from __future__ import annotations

import threading

import pytest
import torch

import pyneg
import pyneg.functional as PF
from pyneg.skipgram import _reference_loss, negative_sampling_embedding_loss


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------- temperature
def test_float32_temperature_whose_reciprocal_overflows_is_refused():
    q, c = torch.randn(4, 8, generator=_g()), torch.randn(4, 8, generator=_g(1))
    for loss in (
        lambda t: PF.in_batch_softmax_loss(q, c, temperature=t),
        lambda t: PF.sampled_softmax_loss(q, c, c, temperature=t),
        lambda t: PF.nce_loss(q, c, c, temperature=t),
    ):
        with pytest.raises(ValueError, match=r"temperature=1e-40 is too small for float32"):
            loss(1e-40)
        assert torch.isfinite(loss(1e-30))  # representable: scored as before
    # float64 scores it: the value is the float64 reference
    q64, c64 = q.double(), c.double()
    s = q64 @ c64.t() / 1e-40
    want = (torch.logsumexp(s, 1) - s.diagonal()).mean()
    torch.testing.assert_close(PF.in_batch_softmax_loss(q64, c64, temperature=1e-40), want)
    # 16-bit inputs are scored in float32: the same refusal
    with pytest.raises(ValueError, match="float32"):
        PF.in_batch_softmax_loss(q.bfloat16(), c.bfloat16(), temperature=1e-40)


# ------------------------------------------------------------ double backward
def _penalty(loss_fn, leaves):
    loss = loss_fn(*leaves)
    grads = torch.autograd.grad(loss, leaves, create_graph=True)
    return torch.autograd.grad(sum(g.pow(2).sum() for g in grads), leaves)


def _ref_in_batch(q, c, ids):
    s = q @ c.t()
    hit = (ids.unsqueeze(0) == ids.unsqueeze(1)) & ~torch.eye(len(ids), dtype=torch.bool)
    s = s.masked_fill(hit, float("-inf"))
    return (torch.logsumexp(s, 1) - s.diagonal()).mean()


def _ref_sampled(q, p, n, lq):
    pos = (q * p).sum(1, keepdim=True)
    s = q @ n.t() - lq
    return (torch.logsumexp(torch.cat([pos, s], 1), 1) - pos.squeeze(1)).mean()


@pytest.mark.parametrize("chunk", [None, 2])
def test_gradient_penalty_through_softmax_losses_matches_plain_pytorch(chunk):
    g = _g(3)
    q, c, n = (torch.randn(s, 5, dtype=torch.float64, generator=g).requires_grad_() for s in (6, 6, 9))
    ids = torch.tensor([1, 2, 1, 3, 4, 2])
    lq = torch.randn(9, dtype=torch.float64, generator=g)
    got = _penalty(lambda a, b: PF.in_batch_softmax_loss(a, b, candidate_ids=ids, chunk_size=chunk), (q, c))
    want = _penalty(lambda a, b: _ref_in_batch(a, b, ids), (q, c))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    got = _penalty(lambda a, b, e: PF.sampled_softmax_loss(a, b, e, negative_log_q=lq, chunk_size=chunk), (q, c, n))
    want = _penalty(lambda a, b, e: _ref_sampled(a, b, e, lq), (q, c, n))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)


def test_nce_gradgradcheck():
    g = _g(4)
    q, p, n = (torch.randn(s, 3, dtype=torch.float64, generator=g).requires_grad_() for s in (4, 4, 5))
    pid, nid = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 5, 6, 7, 2])
    assert torch.autograd.gradgradcheck(
        lambda a, b, e: PF.nce_loss(a, b, e, positive_ids=pid, negative_ids=nid, chunk_size=2), (q, p, n)
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_penalty_through_negative_sampling_embedding_loss(sparse):
    g = _g(5)
    wi = torch.randn(10, 4, dtype=torch.float64, generator=g).requires_grad_()
    wo = torch.randn(12, 4, dtype=torch.float64, generator=g).requires_grad_()
    c, x = torch.tensor([1, 2, 3, 1]), torch.tensor([4, 5, 6, 4])
    n = torch.randint(0, 12, (4, 5), generator=g)
    got = _penalty(lambda a, b: negative_sampling_embedding_loss(a, b, c, x, n, sparse=sparse), (wi, wo))
    want = _penalty(lambda a, b: _reference_loss(a, b, c, x, n, False).mean(), (wi, wo))
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v)
    assert torch.autograd.gradgradcheck(lambda a, b: negative_sampling_embedding_loss(a, b, c, x, n), (wi, wo))


# ------------------------------------------------------- eager = compiled
def _both(fn, *args):
    """The error (type, message) or the result, eagerly and compiled (fullgraph)."""
    out = []
    for f in (fn, torch.compile(fn, backend="eager", fullgraph=True)):
        try:
            out.append(("ok", f(*args)))
        except (ValueError, TypeError) as e:
            out.append((type(e).__name__, str(e)))
    return out


def _bank():
    bank = pyneg.MemoryBank(8, 4)
    bank.enqueue(torch.randn(4, 4, generator=_g()), torch.tensor([1, 2, 3, 4]))
    return bank


@pytest.mark.parametrize("bad", [torch.tensor([-1, 2]), torch.tensor([2, -5])])
def test_bank_losses_refuse_negative_positive_ids_compiled_as_eager(bad):
    bank = _bank()
    q, p = torch.randn(2, 4, generator=_g(1)), torch.randn(2, 4, generator=_g(2))

    def mixed(q, p, pid):
        return PF.mixed_negatives_loss(q, p, [pyneg.NegativeSource.from_bank(bank)], positive_ids=pid)

    def sampled(q, p, pid):
        neg = bank.negatives(pid)
        return PF.sampled_softmax_loss(q, p, neg.embeddings, positive_ids=pid, negative_ids=neg.ids)

    for fn in (mixed, sampled):
        eager, compiled = _both(fn, q, p, bad)
        assert eager[0] == "ValueError" and eager == compiled, (eager, compiled)


def test_estimator_and_ops_refuse_compiled_as_eager():
    est = pyneg.FrequencyEstimator(16)
    est.update(torch.tensor([1, 2]))
    eager, compiled = _both(lambda ids: est.log_prob(ids), torch.tensor([3, -2]))
    assert eager[0] == "ValueError" and eager == compiled
    eager, compiled = _both(lambda a, b: torch.ops.pyneg.bank_hit_mask(a, b), torch.arange(3), torch.arange(4.0))
    assert eager[0] == "TypeError" and "positive_ids" in eager[1] and eager == compiled


def test_valid_calls_agree_compiled_and_eager():
    bank = _bank()
    q, p = torch.randn(2, 4, generator=_g(1)), torch.randn(2, 4, generator=_g(2))

    def fn(q, p, pid):
        return PF.mixed_negatives_loss(q, p, [pyneg.NegativeSource.from_bank(bank)], positive_ids=pid)

    eager, compiled = _both(fn, q, p, torch.tensor([2, 9]))
    assert eager[0] == compiled[0] == "ok"
    torch.testing.assert_close(eager[1], compiled[1])


# ------------------------------------------------------------ cannot fit
def _expanded(n):
    return torch.zeros(1, dtype=torch.int64).expand(n)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: pyneg.FrequencyEstimator(16).log_prob(_expanded(2**40)), "ids"),
        (lambda: _bank().hit_mask(_expanded(2**40)), "positive_ids"),
        (lambda: torch.ops.pyneg.bank_hit_mask(_expanded(2**20), _expanded(2**24)), "hit mask"),
        (lambda: PF.compute_accidental_hits(_expanded(2**16), _expanded(2**17)), "accidental hits"),
        (
            lambda: PF.sampled_softmax_loss(
                torch.randn(1, 4).expand(2**22, 4),
                torch.randn(1, 4).expand(2**22, 4),
                torch.randn(1, 4).expand(2**22, 4),
            ),
            "scores",
        ),
        (
            lambda: pyneg.HierarchicalSoftmax(torch.arange(1.0, 2**16 + 1), 4).log_prob(
                torch.randn(1, 4).expand(2**24, 4)
            ),
            "log_prob",
        ),
        (
            lambda: pyneg.mine_hard_negatives(
                torch.randn(1, 4).expand(2**24, 4), torch.randn(1, 4).expand(2**24, 4), 2**23, sampling="top"
            ),
            "top-hi lists",
        ),
    ],
    ids=["estimator", "bank_ids", "bank_mask_op", "hits", "sampled_scores", "hs_log_prob", "mining"],
)
def test_requests_that_cannot_fit_are_refused_by_name(call, name):
    with pytest.raises((MemoryError, ValueError), match=name) as info:
        call()
    assert "GiB" in str(info.value) or "int64" in str(info.value)


# ------------------------------------------- sample_candidates: one table per call
def test_sample_candidates_never_mixes_tables_while_another_thread_installs_one():
    v = 50
    a = pyneg.LearnedUnigramSampler(v, rebuild_every=1)
    a.set_counts(torch.arange(v), torch.arange(1.0, v + 1.0))
    b = pyneg.LearnedUnigramSampler(v, rebuild_every=1)
    b.set_counts(torch.arange(v), torch.arange(v, 0.0, -1.0))
    states = [a.state_dict(), b.state_dict()]
    probs = [a.probs, b.probs]  # the tables' probabilities (states hold the tables, not probs)
    sampler = pyneg.LearnedUnigramSampler(v, rebuild_every=1)
    sampler.load_state_dict(states[0])
    stop = threading.Event()

    def installer():
        i = 0
        while not stop.is_set():
            sampler.load_state_dict(states[i % 2])
            i += 1

    t = threading.Thread(target=installer)
    t.start()
    true = torch.tensor([[0], [v - 1]])
    try:
        for seed in range(300):
            cs = sampler.sample_candidates(5, true, unique=False, seed=seed)
            fits = [
                torch.allclose(cs.sampled_expected_count, 5 * p[cs.sampled_candidates])
                and torch.allclose(cs.true_expected_count, 5 * p[true])
                for p in probs
            ]
            assert any(fits), seed  # both counts from one table (never a mix)
    finally:
        stop.set()
        t.join()


# ------------------------------------------------------- concurrent writers
_WRITER = """
import threading, torch, pyneg, pyneg.functional as PF
OPS = torch.ops.pyneg
stop = threading.Event()
def writing(t, lo, hi):
    def run():
        while not stop.is_set():
            t.random_(lo, hi)  # without the GIL: overlaps the reads
    th = threading.Thread(target=run); th.start(); return th
"""


def _run_writer_case(run_child, body):
    proc = run_child(_WRITER + body, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_concurrent_writers_of_loss_ids(run_child):
    _run_writer_case(
        run_child,
        """
ids = torch.zeros(4096, dtype=torch.int64)
th = writing(ids, -3, 50)
q, c, n = torch.randn(64, 8), torch.randn(64, 8), torch.randn(512, 8)
try:
    for i in range(200):
        for f in (lambda: PF.in_batch_softmax_loss(q, c, candidate_ids=ids[:64]),
                  lambda: PF.sampled_softmax_loss(q, c, n, positive_ids=ids[:64], negative_ids=ids[64:576]),
                  lambda: PF.nce_loss(q, c, n, positive_ids=ids[:64], negative_ids=ids[64:576], chunk_size=100),
                  lambda: PF.compute_accidental_hits(ids[:64], ids[64:576])):
            try:
                out = f()
                if isinstance(out, torch.Tensor):
                    assert torch.isfinite(out).all()
            except ValueError as e:
                assert "negative" in str(e), e
finally:
    stop.set(); th.join()
print("OK")
""",
    )


def test_concurrent_writers_of_op_arguments(run_child):
    _run_writer_case(
        run_child,
        """
from pyneg._hsoftmax_reference import flat_log_prob
tree = pyneg.HuffmanTree.from_counts(torch.arange(1.0, 200.0))
off, nodes, codes, children = (t.clone() for t in tree._flat_paths(torch.device("cpu"))[:4])
good_children, good_codes = children.clone(), codes.clone()
scores = torch.randn(4, 198, dtype=torch.float64)
want = flat_log_prob(scores, off, nodes, good_codes, tree.max_depth)
est = pyneg.FrequencyEstimator(64); est.update(torch.arange(10))
ids = torch.zeros(100_000, dtype=torch.int64)
def scribble(t, good):
    def run():
        while not stop.is_set():
            t.copy_(good); t.random_(-5, 300); t.copy_(good)
    th = threading.Thread(target=run); th.start(); return th
threads = [writing(ids, -2, 40), scribble(children, good_children)]
x = torch.randn(3, 5, dtype=torch.float64); w = torch.randn(198, 5, dtype=torch.float64)
try:
    for i in range(150):
        try:
            got = OPS.hs_log_prob(scores, children, off, nodes, good_codes, tree.max_depth)
            assert torch.allclose(got, want), "hs_log_prob read a children table it did not check"
        except ValueError as e:
            assert "children" in str(e), e
        for f in (lambda: OPS.frequency_estimate(est._state, ids[:5000], est._step_t, True),
                  lambda: OPS.softmax_find_hits(ids[:300], ids[300:600].reshape(100, 3), -1),
                  lambda: OPS.bank_hit_mask(ids[:300], ids[300:400]),
                  lambda: OPS.hs_nll(x, w, None, ids[:3].clamp(0, 198), off, nodes, good_codes, tree.max_depth)):
            try:
                f()
            except ValueError as e:
                assert "negative" in str(e) or "outside" in str(e), e
finally:
    stop.set(); [t.join() for t in threads]
print("OK")
""",
    )


def test_concurrent_writers_of_mining_and_learned_sampler_inputs(run_child):
    _run_writer_case(
        run_child,
        """
ids = torch.zeros(10_000, dtype=torch.int64)
th = writing(ids, -3, 200)
q, cand = torch.randn(16, 8), torch.randn(200, 8)
s = pyneg.LearnedUnigramSampler(200, rebuild_every=3)
try:
    for i in range(200):
        try:
            m = pyneg.mine_hard_negatives(q, cand, 4, hi=20, exclude=ids[:16 * 3].reshape(16, 3), seed=i, pad=True)
            assert bool(((m.ids >= -1) & (m.ids < 200)).all())
        except ValueError as e:
            assert "exclude" in str(e), e
        try:
            s.update(ids[:500])
        except ValueError as e:
            assert "ids" in str(e), e
        cs = s.sample_candidates(8, seed=i)
        assert bool(((cs.sampled_candidates >= 0) & (cs.sampled_candidates < 200)).all())
    assert bool(torch.isfinite(s.counts).all()) and bool((s.counts > 0).all())
finally:
    stop.set(); th.join()
print("OK")
""",
    )


def test_exported_calls_refuse_as_eager():
    class HitMask(torch.nn.Module):
        def forward(self, a, b):
            return torch.ops.pyneg.bank_hit_mask(a, b)

    ep = torch.export.export(HitMask(), (torch.arange(3), torch.arange(4)))
    a, b = torch.tensor([1, 2, 3]), torch.tensor([3, 1, 0, 9])
    assert torch.equal(ep.module()(a, b), b.unsqueeze(1) == a.unsqueeze(0))
    with pytest.raises(ValueError, match="positive_ids holds negative id -3"):
        ep.module()(a, torch.tensor([-3, 1, 0, 9]))
    # A call the op refuses statically exports to a program that raises the eager error when run.
    bad = (torch.arange(3), torch.arange(4.0))
    with pytest.raises(TypeError, match="positive_ids must be") as eager:
        HitMask()(*bad)
    with pytest.raises(TypeError, match="positive_ids must be") as exported:
        torch.export.export(HitMask(), bad).module()(*bad)
    assert str(eager.value) == str(exported.value)


_N = torch.randn(5, 3, generator=_g(9))


@pytest.mark.parametrize(
    "loss",
    [
        lambda q, c: PF.in_batch_softmax_loss(q, c, temperature=1e-40),
        lambda q, c: PF.sampled_softmax_loss(q, c, _N, temperature=-1.0),
        lambda q, c: PF.nce_loss(q, c, _N, reduction="avg"),
        lambda q, c: PF.negative_sampling_loss(q, c, _N.expand(4, 5, 3), reduction="x"),
        lambda q, c: PF.mixed_negatives_loss(q, c, [], temperature=0),
        lambda q, c: PF.sampled_softmax_loss(q, c, _N.double()),
    ],
    ids=["in_batch_temperature", "sampled_temperature", "nce_reduction", "sgns_reduction", "mixed", "dtype"],
)
def test_python_level_refusals_raise_the_eager_error_compiled(loss):
    """fullgraph compiles no longer end in Dynamo's "Observed exception": the eager error, by name."""
    q, c = torch.randn(4, 3, generator=_g(7)), torch.randn(4, 3, generator=_g(8))
    eager, compiled = _both(loss, q, c)
    assert eager[0] in ("ValueError", "TypeError") and eager == compiled, (eager, compiled)


def test_module_and_estimator_refusals_raise_the_eager_error_compiled():
    hs = pyneg.HierarchicalSoftmax(torch.arange(1.0, 6.0), 3)
    est = pyneg.FrequencyEstimator(8)
    x = torch.randn(2, 3, generator=_g(6))
    for call in (
        lambda x: hs(x, torch.tensor([0, 1]), reduction="bad"),
        lambda x: hs(x, torch.tensor([0, 9])),
        lambda x: hs.log_prob(x.int()),
        lambda x: est.log_prob(x),
        lambda x: est.probability(torch.tensor([-1])),
    ):
        eager, compiled = _both(call, x)
        assert eager[0] in ("ValueError", "TypeError") and eager == compiled, (eager, compiled)

"""The memory bank's and the frequency estimator's reads as PyTorch operators (issue 11).

* ``torch.library.opcheck`` of ``pyneg::frequency_estimate``, ``pyneg::bank_slots``
  and ``pyneg::bank_hit_mask`` over several argument sets;
* reads inside ``torch.compile(fullgraph=True)`` (backends eager and aot_eager,
  one inductor training step): 0 graph breaks, the eager results;
* freshness: enqueues and updates between two compiled calls are seen by the
  second call, without recompiling;
* the value checks (negative ids) inside the ops, eagerly and compiled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo.testing

import pyneg
from pyneg import _ring


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _filled_bank(capacity=8, dim=3, *, enqueues=3, rows=3, max_age=None, warmup=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = pyneg.MemoryBank(capacity, dim, max_age=max_age, warmup=warmup)
    for step in range(enqueues):
        ids = torch.randint(0, 6, (rows,), generator=g)
        bank.enqueue(torch.randn(rows, dim, generator=g), ids, log_q=-torch.rand(rows, generator=g) - step)
    return bank


def _estimator(updates=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    est = pyneg.FrequencyEstimator(64, alpha=0.2, num_hashes=3)
    for _ in range(updates):
        est.update(torch.randint(0, 20, (7,), generator=g))
    return est


def _assert_same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)


def _graph_breaks(fn, *args) -> int:
    explained = torch._dynamo.explain(fn)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
    return explained.graph_break_count


# ---------------------------------------------------------------- opcheck
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (0,)])
def test_opcheck_frequency_estimate(log, shape):
    est = _estimator()
    ids = torch.randint(0, 40, shape)
    torch.library.opcheck(torch.ops.pyneg.frequency_estimate.default, (est._state, ids, est._step_t, log))
    fresh = pyneg.FrequencyEstimator(16)  # step 0: every id unseen
    torch.library.opcheck(torch.ops.pyneg.frequency_estimate.default, (fresh._state, ids, fresh._step_t, log))


@pytest.mark.parametrize("b, n", [(4, 6), (1, 1), (3, 0), (0, 5)])
def test_opcheck_bank_hit_mask(b, n):
    g = torch.Generator().manual_seed(b * 10 + n)
    entries, positives = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (b,), generator=g)
    torch.library.opcheck(torch.ops.pyneg.bank_hit_mask.default, (entries, positives))
    expected = positives.unsqueeze(1).numpy() == entries.unsqueeze(0).numpy()
    assert np.array_equal(torch.ops.pyneg.bank_hit_mask(entries, positives).numpy(), expected)


def test_bank_runs_index_what_eager_reads():
    """The compiled path's slots ((start + arange(count)) % capacity) index exactly the rows the
    eager reads return (a NumPy gather as the reference), across fills, wraps, max_age and warm-up."""
    for max_age, warmup, enqueues in [(None, 0, 2), (None, 0, 5), (1, 0, 6), (None, 4, 3), (0, 0, 7)]:
        bank = _filled_bank(8, enqueues=enqueues, max_age=max_age, warmup=warmup)
        emb = bank._emb.numpy()
        for which, want in ((0, bank.negatives().embeddings), (1, bank.embeddings)):
            start, count = int(bank._starts[which]), bank._counts[which].shape[0]
            assert (start, count) == bank._runs[which]
            slots = (np.arange(count) + start) % bank.capacity
            assert np.array_equal(emb[slots], want.numpy())
            assert np.array_equal(bank._traced_slots(which).numpy(), slots)


def test_frequency_estimate_op_matches_the_estimator():
    est = _estimator(updates=9)
    ids = torch.arange(30).reshape(5, 6)
    for log in (False, True):
        got = torch.ops.pyneg.frequency_estimate(est._state, ids, est._step_t, log)
        want = est.log_prob(ids) if log else est.probability(ids)
        assert torch.equal(got, want)
    # A NumPy transcription of the estimate from the table (1 / max gap, unseen cells 1 / (step + 1)).
    cells = est._state.numpy()
    buckets = np.array(
        [[pyneg._core._testing.frequency_bucket(i, k, est.num_buckets) for k in range(3)] for i in range(30)]
    )
    gaps = np.where(cells[np.arange(3), buckets, 0] == 0, est.step + 1, cells[np.arange(3), buckets, 1])
    np.testing.assert_allclose(est.probability(torch.arange(30)).numpy(), 1 / gaps.max(1), rtol=1e-6)


# ------------------------------------------------------- value checks in ops
def test_ops_refuse_negative_ids_with_the_eager_wording():
    est, bank = _estimator(), _filled_bank()
    bad = torch.tensor([1, -3])
    with pytest.raises(ValueError, match="^ids holds negative id -3"):
        torch.ops.pyneg.frequency_estimate(est._state, bad, est._step_t, False)
    with pytest.raises(ValueError, match="positive_ids holds negative id -3"):
        torch.ops.pyneg.bank_hit_mask(bank._ids, bad)
    with pytest.raises(ValueError, match="ids holds negative id"):
        est.log_prob(bad)  # eager: the same words
    with pytest.raises(ValueError, match="positive_ids holds negative id"):
        bank.negatives(bad)

    @torch.compile(fullgraph=True, backend="eager")
    def read(bank, est, ids):
        return bank.negatives(ids).hit_mask, est.log_prob(ids)

    with pytest.raises(ValueError, match="negative id -3"):
        read(bank, est, bad)


def test_compiled_reads_refuse_what_is_not_an_id_tensor():
    est, bank = _estimator(), _filled_bank()

    @torch.compile(fullgraph=True, backend="eager")
    def read(bank, est, ids):
        return bank.negatives(ids).hit_mask, est.probability(ids)

    with pytest.raises(Exception, match="must hold integer ids"):
        read(bank, est, torch.tensor([1.0, 2.0]))


# ------------------------------------------------------------ compiled reads
def _bank_reads(bank, positive_ids):
    neg = bank.negatives(positive_ids)
    return neg.embeddings, neg.ids, neg.log_q, neg.hit_mask, bank.embeddings, bank.ids, bank.log_q


def _estimator_reads(est, ids):
    return est.probability(ids), est.log_prob(ids)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("max_age, warmup, enqueues", [(None, 0, 2), (None, 0, 5), (1, 0, 5), (None, 9, 2)])
def test_bank_reads_compile_without_breaks(backend, max_age, warmup, enqueues):
    bank = _filled_bank(8, enqueues=enqueues, max_age=max_age, warmup=warmup)
    pos = torch.tensor([0, 3, 5, 3])
    assert _graph_breaks(_bank_reads, bank, pos) == 0
    compiled = torch.compile(_bank_reads, fullgraph=True, backend=backend)
    for got, want in zip(compiled(bank, pos), _bank_reads(bank, pos)):
        _assert_same(got, want)
    # Without positive ids there is no mask.
    assert torch.compile(lambda b: b.negatives(), fullgraph=True, backend=backend)(bank).hit_mask is None


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_estimator_reads_compile_without_breaks(backend):
    est = _estimator()
    ids = torch.tensor([[0, 1, 2], [19, 33, 0]])
    assert _graph_breaks(_estimator_reads, est, ids) == 0
    compiled = torch.compile(_estimator_reads, fullgraph=True, backend=backend)
    for got, want in zip(compiled(est, ids), _estimator_reads(est, ids)):
        _assert_same(got, want)
    # int32 ids are converted in the graph, as the eager path converts them.
    small = ids.to(torch.int32)
    for got, want in zip(compiled(est, small), _estimator_reads(est, small)):
        _assert_same(got, want)


def test_compiled_reads_see_enqueues_and_updates_between_calls():
    """Nothing about the bank or the estimator is a constant of the graph: no stale reads, no recompiles."""
    bank = pyneg.MemoryBank(6, 2, warmup=1)
    est = pyneg.FrequencyEstimator(32)
    counter = torch._dynamo.testing.CompileCounter()

    def step(bank, est, pos):
        neg = bank.negatives(pos)
        return neg.embeddings, neg.ids, neg.log_q, neg.hit_mask, bank.ids, est.log_prob(pos)

    compiled = torch.compile(step, fullgraph=True, backend=counter)
    pos = torch.tensor([4, 7])
    bank.enqueue(torch.ones(2, 2), torch.tensor([1, 4]))
    est.update(torch.tensor([1, 4]))
    first = compiled(bank, est, pos)
    assert first[1].tolist() == [1, 4] and first[3].tolist() == [[False, True], [False, False]]
    for i in range(2, 7):  # fills the bank, then wraps; the entries' count changes every call
        bank.enqueue(
            torch.full((i % 3 + 1, 2), float(i)), torch.arange(i % 3 + 1) + 3 * i, log_q=-torch.ones(i % 3 + 1)
        )
        est.update(torch.tensor([7, 7, i]))
        got = compiled(bank, est, pos)
        for g, w in zip(got, step(bank, est, pos)):
            _assert_same(g, w)
        if i == 3:
            # Compiled once for the first count of entries and once more with the count as a
            # dynamic size; no call after that recompiles.
            compiled_after_two = counter.frame_count
    assert got[1].tolist() == bank.negatives().ids.tolist() and len(bank) == 6  # the wrapped bank's entries
    assert not torch.equal(got[5], first[5])  # the estimator's log q moved with its updates
    assert compiled_after_two <= 2 and counter.frame_count == compiled_after_two


def test_compiled_negatives_are_empty_before_warmup_and_fill_after():
    bank = pyneg.MemoryBank(4, 2, warmup=2)
    counter = torch._dynamo.testing.CompileCounter()
    read = torch.compile(lambda b: b.negatives().embeddings, fullgraph=True, backend=counter)
    bank.enqueue(torch.ones(3, 2), torch.tensor([1, 2, 3]))
    assert read(bank).shape == (0, 2)
    bank.enqueue(torch.zeros(3, 2), torch.tensor([4, 5, 6]))
    assert torch.equal(read(bank), bank.negatives().embeddings)
    assert read(bank).shape == (4, 2)
    bank.enqueue(torch.full((1, 2), 3.0), torch.tensor([7]))
    assert torch.equal(read(bank), bank.negatives().embeddings)
    assert counter.frame_count <= 2  # empty (a size Dynamo specialises), then the full bank


def test_updates_stay_eager():
    """enqueue and update are torch.compiler.disable'd: a compiled step may call them (a graph
    break, so not under fullgraph=True) and they still change the objects."""
    bank, est = pyneg.MemoryBank(4, 2), pyneg.FrequencyEstimator(16)

    @torch.compile(backend="eager")
    def step(x, ids):
        bank.enqueue(x * 2, ids)
        est.update(ids)
        return x + 1

    step(torch.ones(2, 2), torch.tensor([3, 4]))
    assert bank.ids.tolist() == [3, 4] and torch.equal(bank.embeddings, torch.full((2, 2), 2.0))
    assert est.step == 1


def test_compiled_training_step_with_bank_negatives_inductor():
    """A step scoring queries against the bank's negatives, hits masked and log q subtracted,
    compiled with inductor: 0 graph breaks, the eager loss and gradients."""
    torch.manual_seed(0)
    bank = pyneg.MemoryBank(16, 4)
    est = pyneg.FrequencyEstimator(64)
    for _ in range(3):
        ids = torch.randint(0, 10, (6,))
        est.update(ids)
        bank.enqueue(torch.randn(6, 4), ids, log_q=est.log_prob(ids))
    query, positive = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    pos_ids = torch.tensor([1, 2, 3, 4, 5])

    def loss_fn(query, positive, pos_ids):
        neg = bank.negatives(pos_ids)
        logits = query @ neg.embeddings.T - torch.nan_to_num(neg.log_q, nan=0.0)
        logits = logits.masked_fill(neg.hit_mask, float("-inf"))
        pos_logit = (query * positive).sum(1, keepdim=True) - est.log_prob(pos_ids).unsqueeze(1)
        return torch.nn.functional.cross_entropy(torch.cat([pos_logit, logits], 1), torch.zeros(5, dtype=torch.int64))

    assert _graph_breaks(loss_fn, query, positive, pos_ids) == 0
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor")
    want = loss_fn(query, positive, pos_ids)
    want_grads = torch.autograd.grad(want, (query, positive))
    got = compiled(query, positive, pos_ids)
    got_grads = torch.autograd.grad(got, (query, positive))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    # Enqueue between two calls: the second loss is the new bank's eager loss.
    bank.enqueue(torch.randn(6, 4), torch.arange(6), log_q=est.log_prob(torch.arange(6)))
    torch.testing.assert_close(
        compiled(query, positive, pos_ids), loss_fn(query, positive, pos_ids), rtol=1e-5, atol=1e-5
    )


def test_mixed_negatives_loss_over_bank_negatives_compiles():
    """mixed_negatives_loss over NegativeSource.from_bank(bank): 0 graph breaks, the eager loss
    and gradients, and the next call after an enqueue reads the new bank."""
    import pyneg.functional as PF

    torch.manual_seed(1)
    bank = pyneg.MemoryBank(64, 8)
    bank.enqueue(torch.randn(40, 8), torch.randint(0, 30, (40,)), log_q=-torch.rand(40))
    q, p = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    ids = torch.randint(0, 30, (6,))

    def step(q, p, ids):
        return PF.mixed_negatives_loss(q, p, [PF.NegativeSource.from_bank(bank)], positive_ids=ids)

    assert _graph_breaks(step, q, p, ids) == 0
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        want = step(q, p, ids)
        got = compiled(q, p, ids)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for g, w in zip(torch.autograd.grad(got, (q, p)), torch.autograd.grad(want, (q, p))):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        bank.enqueue(torch.randn(30, 8), ids.repeat(5), log_q=-torch.rand(30))  # hits for every row


# ------------------------------------------------------------------ ring
def test_ring_helpers_against_a_plain_reference():
    """pyneg._ring's segments and counts against a per-slot Python loop over a random history."""
    rng = np.random.default_rng(3)
    for capacity in (1, 3, 8):
        bank = pyneg.MemoryBank(capacity, 1)
        order = []  # slot of every stored entry, oldest first
        slot = 0
        for step in range(1, 12):
            n = int(rng.integers(1, 2 * capacity + 1))
            bank.enqueue(torch.zeros(n, 1), torch.arange(n))
            for _ in range(min(n, capacity)):
                order.append(slot)
                slot = (slot + 1) % capacity
            order = order[-capacity:]
            steps = bank._steps.numpy()
            head, size = int(bank._index.head), len(bank)
            assert [s for a, b in _ring.newest(head, size, capacity) for s in range(a, b)] == order
            for min_step in range(step + 2):
                assert _ring.count_since(steps, head, size, min_step) == sum(steps[s] >= min_step for s in order)


# ------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_reads_on_cuda():
    """A bank on the GPU and ids on the GPU: the compiled reads give the eager results on the GPU."""
    bank = _filled_bank(8, enqueues=4).to("cuda")
    est = _estimator()
    pos = torch.tensor([0, 3, 5], device="cuda")

    def reads(bank, est, pos):
        return _bank_reads(bank, pos) + _estimator_reads(est, pos)

    compiled = torch.compile(reads, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(bank, est, pos), reads(bank, est, pos)):
        assert got.device.type == "cuda"
        _assert_same(got, want)
    bank.enqueue(torch.ones(2, 3, device="cuda"), torch.tensor([5, 6]))
    for got, want in zip(compiled(bank, est, pos), reads(bank, est, pos)):
        _assert_same(got, want)

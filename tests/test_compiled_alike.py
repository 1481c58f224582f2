"""Eager = compiled = exported, round three (issue 25's gaps).

* ``MemoryBank.negatives()`` refuses, compiled (``fullgraph=True``), what it
  refuses eagerly, with the same error and message, although it returns a
  NamedTuple: every column depends on the op ``pyneg::refuse``, which stays in
  the graph even when the caller drops the result.
* Refusals whose message is built from sizes that ``dynamic=True`` makes
  symbolic raise pyneg's error, not Dynamo's; valid calls with symbolic sizes
  and a symbolic temperature trace and equal eager calls.
* The estimator's cells: a cell an id reads that no estimator can hold
  (negative, fractional, future or non-finite last step; a non-finite or
  non-positive gap once hit) is refused by name in eager, compiled and
  exported calls of ``pyneg::frequency_estimate``.

Compiled calls use the aot_eager backend (Inductor is slow on the test
machine: one Inductor case per family).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyneg
import pyneg.functional as PF

OPS = torch.ops.pyneg


def _outcome(f, args):
    try:
        return ("ok", f(*args))
    except (ValueError, TypeError, MemoryError) as e:
        return (type(e).__name__, str(e))


def _both(fn, *args, dynamic=False, backend="aot_eager"):
    """(eager, compiled) outcomes: ("ok", result) or (error type, message)."""
    torch._dynamo.reset()
    return _outcome(fn, args), _outcome(torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic), args)


def _assert_alike(eager, compiled, *, refused=True):
    if refused:
        assert eager[0] in ("ValueError", "TypeError"), eager
        assert eager == compiled, (eager, compiled)
    else:
        assert eager[0] == compiled[0] == "ok", (eager, compiled)
        torch.testing.assert_close(eager[1], compiled[1])


def _bank():
    bank = pyneg.MemoryBank(8, 4)
    bank.enqueue(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3, 4]))
    return bank


# ------------------------------------------------------ bank.negatives() compiled
BAD_POSITIVE_IDS = {
    "float": torch.tensor([1.0, 2.0]),
    "bool": torch.tensor([True, False]),
    "complex": torch.tensor([1 + 0j]),
    "2d": torch.tensor([[1, 2]]),
    "0d": torch.tensor(3),
    "meta": torch.tensor([1, 2], device="meta"),
    "negative": torch.tensor([-1, 2]),
    "float_list": [1.0, 2.0],
    "string": "12",
}


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("bad", list(BAD_POSITIVE_IDS), ids=list(BAD_POSITIVE_IDS))
def test_bank_negatives_refuses_compiled_as_eager(bad, dynamic):
    bank = _bank()
    eager, compiled = _both(lambda p: bank.negatives(p).hit_mask, BAD_POSITIVE_IDS[bad], dynamic=dynamic)
    _assert_alike(eager, compiled)
    assert "positive_ids" in eager[1]


@pytest.mark.parametrize("field", ["embeddings", "ids", "log_q", "hit_mask", "dropped"])
def test_bank_negatives_refusal_reaches_every_column(field):
    """Whichever column the step uses (or none: the result dropped), the refusal is raised."""
    bank = _bank()

    def step(p, x):
        neg = bank.negatives(p)
        if field == "dropped":
            return x * 2
        return getattr(neg, field).sum() + x

    eager, compiled = _both(step, torch.tensor([1.5]), torch.ones(()))
    _assert_alike(eager, compiled)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize(
    "ids", [torch.tensor([1, 9]), torch.tensor([3], dtype=torch.int32), [2, 4, 7], np.array([1, 3]), []]
)
def test_bank_negatives_valid_arguments_compiled_as_eager(ids, dynamic):
    bank = _bank()
    eager, compiled = _both(lambda p: bank.negatives(p).hit_mask, ids, dynamic=dynamic)
    _assert_alike(eager, compiled, refused=False)


def test_bank_loss_step_refuses_compiled_as_eager_inductor():
    bank = _bank()
    q, p = torch.randn(2, 4), torch.randn(2, 4)

    def step(q, p, pid):
        neg = bank.negatives(pid)
        return PF.sampled_softmax_loss(q, p, neg.embeddings, positive_ids=pid, negative_ids=neg.ids)

    eager, compiled = _both(step, q, p, torch.tensor([1.0, 2.0]), backend="inductor")
    _assert_alike(eager, compiled)


# ------------------------------------------------------------- symbolic sizes
_Q, _C, _N = torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3)
SIZE_REFUSALS = {
    "sampled_dim": lambda q, c: PF.sampled_softmax_loss(q, c, torch.randn(5, 2)),
    "sampled_rows": lambda q, c: PF.sampled_softmax_loss(q, c[:3], torch.randn(5, 3)),
    "sampled_log_q": lambda q, c: PF.sampled_softmax_loss(q, c, torch.randn(5, 3), negative_log_q=torch.zeros(4)),
    "sampled_ids": lambda q, c: PF.sampled_softmax_loss(
        q, c, torch.randn(5, 3), positive_ids=torch.arange(4), negative_ids=torch.arange(6)
    ),
    "sampled_weight": lambda q, c: PF.sampled_softmax_loss(q, c, torch.randn(5, 3), sample_weight=torch.ones(3)),
    "in_batch_rows": lambda q, c: PF.in_batch_softmax_loss(q, c[:3]),
    "in_batch_log_q": lambda q, c: PF.in_batch_softmax_loss(q, c, log_q=torch.zeros(3)),
    "in_batch_ids": lambda q, c: PF.in_batch_softmax_loss(q, c, candidate_ids=torch.arange(3)),
    "in_batch_query_1d": lambda q, c: PF.in_batch_softmax_loss(q[0], c),
    "sgns": lambda q, c: PF.negative_sampling_loss(q, c, torch.randn(4, 2, 2)),
    "sgns_positive": lambda q, c: PF.negative_sampling_loss(q, c[:2], torch.randn(4, 2, 3)),
    "nce": lambda q, c: PF.nce_loss(q, c, torch.randn(5, 2)),
    "mixed": lambda q, c: PF.mixed_negatives_loss(
        q, c, [pyneg.NegativeSource(torch.randn(5, 3), log_q=torch.zeros(4))]
    ),
    "bias": lambda q, c: PF.sampled_softmax_loss(q, c, torch.randn(5, 3), bias=torch.zeros(2, 2)),
}


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", list(SIZE_REFUSALS), ids=list(SIZE_REFUSALS))
def test_size_refusals_raise_pyneg_errors_with_symbolic_sizes(case, dynamic):
    eager, compiled = _both(SIZE_REFUSALS[case], _Q, _C, dynamic=dynamic)
    _assert_alike(eager, compiled)


VALID = {
    "in_batch": lambda q, c: PF.in_batch_softmax_loss(q, c, log_q=torch.zeros(4), candidate_ids=torch.arange(4)),
    "sampled": lambda q, c: PF.sampled_softmax_loss(q, c, _N, negative_log_q=torch.zeros(5)),
    "nce": lambda q, c: PF.nce_loss(q, c, torch.ones(5, 3)),
    "sgns": lambda q, c: PF.negative_sampling_loss(q, c, torch.ones(4, 2, 3)),
}


@pytest.mark.parametrize("case", list(VALID), ids=list(VALID))
def test_valid_calls_trace_with_symbolic_sizes(case):
    """Before: the default temperature became a symbolic float under dynamic=True and its
    check (math.isfinite) ended as Dynamo's "torch.* op returned non-Tensor"."""
    eager, compiled = _both(VALID[case], _Q, _C, dynamic=True)
    _assert_alike(eager, compiled, refused=False)


@pytest.mark.parametrize("temperature", [0.5, 0.0, -1.0, math.inf, math.nan])
def test_temperature_passed_in_with_dynamic_shapes(temperature):
    def fn(q, c, t):
        return PF.in_batch_softmax_loss(q, c, temperature=t)

    eager, compiled = _both(fn, _Q, _C, temperature, dynamic=True)
    _assert_alike(eager, compiled, refused=not 0 < temperature < math.inf)


@pytest.mark.parametrize("dynamic", [False, True])
def test_module_and_estimator_size_refusals_with_symbolic_sizes(dynamic):
    hs = pyneg.HierarchicalSoftmax(torch.arange(1.0, 6.0), 3)
    est = pyneg.FrequencyEstimator(8)
    bank = _bank()
    for call in (
        lambda x: hs(x, torch.tensor([0, 1, 2])),
        lambda x: hs(x[:, :2], torch.tensor([0, 1])),
        lambda x: hs.log_prob(x[0]),
        lambda x: est.log_prob(x),
        lambda x: bank.negatives(torch.zeros(2, 2, dtype=torch.int64)).hit_mask,
        lambda x: est.log_prob([1.5]),
    ):
        eager, compiled = _both(call, torch.randn(2, 3), dynamic=dynamic)
        _assert_alike(eager, compiled)


# ------------------------------------------------------------ estimator cells
def _cells():
    est = pyneg.FrequencyEstimator(16, alpha=0.3)
    for s in range(3):
        est.update(torch.arange(s, 20, 2))
    return est._state.clone(), est._step_t.clone()


def _read_cell(cells, ids):
    """(k, bucket) of the first cell ids[0] reads."""
    return 0, pyneg._core._testing.frequency_bucket(int(ids[0]), 0, cells.shape[1])


GARBAGE = {
    "negative_last_step": (0, -1.0),
    "fractional_last_step": (0, 1.5),
    "future_last_step": (0, 4.0),
    "nan_last_step": (0, math.nan),
    "inf_last_step": (0, math.inf),
    "zero_gap": (1, 0.0),
    "negative_gap": (1, -2.0),
    "nan_gap": (1, math.nan),
    "inf_gap": (1, math.inf),
}


def _garbage(which):
    cells, step = _cells()
    ids = torch.tensor([4, 7])
    k, b = _read_cell(cells, ids)
    col, value = GARBAGE[which]
    if col == 1:
        cells[k, b, 0] = 2.0  # a hit cell: its gap is read
    cells[k, b, col] = value
    return cells, ids, step


@pytest.mark.parametrize("which", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_cells_are_refused_by_name_eager_compiled_exported(which):
    cells, ids, step = _garbage(which)

    def call(cells, ids, step):
        return OPS.frequency_estimate(cells, ids, step, True)

    with pytest.raises(ValueError, match=r"cells\[0, \d+\] holds \(last step, gap\)") as eager:
        call(cells, ids, step)
    for dynamic in (False, True):
        _, compiled = _both(call, cells, ids, step, dynamic=dynamic)
        assert compiled == ("ValueError", str(eager.value))

    class Estimate(torch.nn.Module):
        def forward(self, cells, ids, step):
            return call(cells, ids, step)

    good_cells, good_step = _cells()
    ep = torch.export.export(Estimate(), (good_cells, ids, good_step))
    with pytest.raises(ValueError) as exported:
        ep.module()(cells, ids, step)
    assert str(exported.value) == str(eager.value)


def test_cells_an_id_does_not_read_are_not_scanned_and_valid_states_pass():
    cells, step = _cells()
    ids = torch.tensor([4])
    want = OPS.frequency_estimate(cells, ids, step, False)
    read = {pyneg._core._testing.frequency_bucket(4, k, cells.shape[1]) for k in range(cells.shape[0])}
    other = next(b for b in range(cells.shape[1]) if b not in read)
    cells[:, other, 0] = math.nan  # a cell nobody reads: the lookup stays O(ids), not O(table)
    torch.testing.assert_close(OPS.frequency_estimate(cells, ids, step, False), want)


@pytest.mark.parametrize("log", [False, True])
def test_opcheck_frequency_estimate_on_loaded_states(log):
    """States an estimator can hold (loaded through load_state_dict, with gaps below 1 and
    cells hit at the current step) pass the op's checks; opcheck over them."""
    est = pyneg.FrequencyEstimator(8, alpha=0.5, num_hashes=3)
    sd = est.state_dict()
    g = torch.Generator().manual_seed(3)
    sd["step"] = 2**40
    sd["last_step"] = torch.randint(0, 2**40, (3, 8), generator=g)
    sd["last_step"][0, :4] = 0
    sd["last_step"][1, :2] = 2**40
    sd["gap"] = torch.rand(3, 8, dtype=torch.float64, generator=g) * 1e6 + 1e-300
    est.load_state_dict(sd)
    ids = torch.randint(0, 1000, (4, 5), generator=g)
    torch.library.opcheck(OPS.frequency_estimate.default, (est._state, ids, est._step_t, log))
    torch.library.opcheck(OPS.frequency_estimate.default, (est._state, ids.t(), est._step_t, log))
    torch.testing.assert_close(
        est.log_prob(ids) if log else est.probability(ids), OPS.frequency_estimate(est._state, ids, est._step_t, log)
    )


def test_step_beyond_the_exact_range_is_refused():
    cells, _ = _cells()
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*53\]"):
        OPS.frequency_estimate(cells, torch.tensor([1]), torch.tensor(2**53 + 1), False)


@pytest.mark.parametrize(
    "bad", [torch.tensor([1.0, 2.0]), torch.tensor([-1, 2]), torch.tensor([[1, 2]])], ids=["float", "negative", "2d"]
)
def test_bank_negatives_exported_refuses_as_eager(bad):
    bank = _bank()

    class Negatives(torch.nn.Module):
        def forward(self, p):
            return bank.negatives(p).hit_mask

    eager = _outcome(Negatives(), (bad,))
    assert eager[0] in ("ValueError", "TypeError")
    assert _outcome(torch.export.export(Negatives(), (bad,)).module(), (bad,)) == eager


# ------------------------------------------- garbage in place of each argument
_EST = pyneg.FrequencyEstimator(8)
_EST.update(torch.tensor([1, 2]))
_HS = pyneg.HierarchicalSoftmax(torch.arange(1.0, 6.0), 3)
_BANK = _bank()
_GARBAGE_CALLS = {
    # Python scalars and ragged lists where tensors go (eager: NumPy; compiled: torch builds the same dtype)
    "sampled_positive_ids_scalar": lambda: PF.sampled_softmax_loss(
        _Q, _C, _N, positive_ids=-5, negative_ids=torch.arange(5)
    ),
    "sampled_weight_nan_scalar": lambda: PF.sampled_softmax_loss(_Q, _C, _N, sample_weight=math.nan),
    "nce_log_q_ragged": lambda: PF.nce_loss(_Q, _C, _N, positive_log_q=[[1.0], [2.0, 3.0]]),
    "in_batch_ids_ragged": lambda: PF.in_batch_softmax_loss(_Q, _C, candidate_ids=[[1], [2, 3]]),
    "in_batch_log_q_scalar": lambda: PF.in_batch_softmax_loss(_Q, _C, log_q=-5),
    "bank_ids_scalar": lambda: _BANK.negatives(-5),
    "bank_ids_float_scalar": lambda: _BANK.negatives(math.nan),
    "bank_ids_ragged": lambda: _BANK.negatives([[1], [2, 3]]),
    "bank_ids_3d": lambda: _BANK.negatives(torch.zeros(2, 2, 2)),
    "estimator_ids_scalar": lambda: _EST.probability(-5),
    "estimator_ids_ragged": lambda: _EST.probability([[1], [2, 3]]),
    "hs_target_scalar": lambda: _HS(torch.randn(2, 3), -5),
    "hs_target_float_scalar": lambda: _HS(torch.randn(2, 3), math.nan),
    "hs_target_ragged": lambda: _HS(torch.randn(2, 3), [[1], [2, 3]]),
    # a tensor where a string goes: its repr cannot be traced
    "hs_reduction_tensor": lambda: _HS(torch.randn(2, 3), torch.tensor([0, 1]), reduction=torch.zeros(2)),
    "loss_reduction_tensor": lambda: PF.in_batch_softmax_loss(_Q, _C, reduction=torch.zeros(2)),
}


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("case", list(_GARBAGE_CALLS), ids=list(_GARBAGE_CALLS))
def test_garbage_arguments_are_refused_alike_compiled(case, dynamic):
    eager, compiled = _both(_GARBAGE_CALLS[case], dynamic=dynamic)
    _assert_alike(eager, compiled)


_META_CALLS = {
    "nce": lambda q, c: PF.nce_loss(q, c, _N),
    "in_batch": lambda q, c: PF.in_batch_softmax_loss(q, q),
    "sgns": lambda q, c: PF.negative_sampling_loss(q, c, _N.expand(4, 5, 3)),
    "hs_log_prob": lambda q, c: _HS.log_prob(q),
    "estimator": lambda q, c: _EST.probability(c),
}


@pytest.mark.parametrize("case", list(_META_CALLS), ids=list(_META_CALLS))
def test_meta_inputs_are_refused_compiled_as_eager(case):
    """Before: the compiled graph ran on meta tensors, where pyneg::refuse's meta kernel (its
    fake kernel) returned a placeholder instead of raising: a meta result, no error."""
    ids = torch.tensor([1, 2], device="meta")
    eager, compiled = _both(_META_CALLS[case], _Q.to("meta"), ids if case == "estimator" else _C)
    _assert_alike(eager, compiled)
    assert "meta" in eager[1]

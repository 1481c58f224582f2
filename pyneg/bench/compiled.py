"""Compiled vs eager: one training step that uses pyneg, under ``torch.compile`` and without.

The step: seeded negatives from a :class:`pyneg.UnigramSampler`, the
:class:`pyneg.HierarchicalSoftmax` loss, :func:`~pyneg.functional.sampled_softmax_loss`
over those negatives, :func:`~pyneg.functional.in_batch_softmax_loss` with a
log q, and :func:`~pyneg.functional.mixed_negatives_loss` over the batch and a
:class:`pyneg.MemoryBank`'s negatives; forward and backward. The bank is filled
in setup and only read in the step (enqueueing is eager bookkeeping).

Timed: steady-state steps (median), the compiled one against the eager one.
Reported beside the times: the compile time (the first compiled step, forward
and backward, measured once in setup) and the graph breaks
``torch._dynamo.explain`` counts in the forward. ``torch.compile`` runs
without ``fullgraph``, so a step with graph breaks still runs and is timed.
Every step uses the same seed, so steps are alike and a changing Python int
cannot cause recompiles.

``--quick`` (and the pytest suite under ``--benchmark-disable``) runs a tiny
step and skips the compile (tracing the step with its graph breaks takes
minutes on a 2-core machine): both rows then run eager, which checks that
the step runs, and the table says so.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from types import SimpleNamespace
from typing import Any, Dict

import torch

import pyneg
import pyneg.functional as F
from pyneg.bench.sampling import zipf_counts
from pyneg.bench.workload import Workload

EAGER = "eager step"


class TwoTowerStep(torch.nn.Module):
    """A retrieval model's step losses, summed: every pyneg piece a compiled step would call."""

    def __init__(self, num_items: int, dim: int, num_negatives: int, bank: pyneg.MemoryBank, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        counts = zipf_counts(num_items, seed=seed)
        self.query_emb = torch.nn.Parameter(torch.randn(num_items, dim, generator=gen) * 0.1)
        self.item_emb = torch.nn.Parameter(torch.randn(num_items, dim, generator=gen) * 0.1)
        self.hs = pyneg.HierarchicalSoftmax(counts, dim)
        self.sampler = pyneg.UnigramSampler(counts, power=0.75)
        self.num_negatives = num_negatives
        self.bank = bank

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        q = self.query_emb[users]
        pos = self.item_emb[items]
        neg_ids = self.sampler.sample((self.num_negatives,), seed=1234)
        neg = self.item_emb[neg_ids]
        neg_lq = self.sampler.log_expected_count(neg_ids, self.num_negatives)
        pos_lq = self.sampler.log_expected_count(items, items.shape[0])
        hs = self.hs(q, items)
        sampled = F.sampled_softmax_loss(q, pos, neg, positive_ids=items, negative_ids=neg_ids, negative_log_q=neg_lq)
        in_batch = F.in_batch_softmax_loss(q, pos, log_q=pos_lq, candidate_ids=items)
        mixed = F.mixed_negatives_loss(
            q,
            pos,
            [F.NegativeSource.batch(pos_lq, ids=items), F.NegativeSource.from_bank(self.bank)],
            positive_ids=items,
            positive_log_q=pos_lq,
        )
        return hs + sampled + in_batch + mixed


def _train_step(fn, st: SimpleNamespace):
    """One step: the loss, forward and backward; returns the loss and the gradients."""
    for p in st.model.parameters():
        p.grad = None
    loss = fn(st.users, st.items)
    loss.backward()
    return loss.detach(), [p.grad for p in st.model.parameters()]


def _setup(batch: int, num_items: int, dim: int, num_negatives: int, bank_size: int):
    def setup(quick: bool) -> SimpleNamespace:
        b, v, d, n, m = (batch, num_items, dim, num_negatives, bank_size) if not quick else (32, 1000, 16, 64, 256)
        gen = torch.Generator().manual_seed(1)
        bank = pyneg.MemoryBank(m, d)
        bank_ids = torch.randint(0, v, (m,), generator=gen)
        # log q of a uniform draw over the catalogue
        bank.enqueue(torch.randn(m, d, generator=gen) * 0.1, bank_ids, torch.full((m,), -math.log(v)))
        model = TwoTowerStep(v, d, n, bank)
        users = torch.randint(0, v, (b,), generator=gen)
        items = torch.randint(0, v, (b,), generator=gen)
        st = SimpleNamespace(model=model, compiled=model, users=users, items=items, compile_s=None)
        st.size = {"B": b, "V": v, "d": d, "negatives": n, "bank": m}
        if not quick:
            _compile(st)
        return st

    return setup


def _compile(st: SimpleNamespace, backend: str = "inductor") -> None:
    """Counts the graph breaks, then compiles the step and times the first compiled call."""
    quiet = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor")]
    levels = [log.level for log in quiet]
    try:
        # Dynamo warns once per break: the count is the table's, not a log's.
        for log in quiet:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._dynamo.reset()
            explained = torch._dynamo.explain(st.model)(st.users, st.items)
            torch._dynamo.reset()
            st.compiled = torch.compile(st.model, backend=backend)  # no fullgraph: a step with breaks still runs
            t0 = time.perf_counter()
            _train_step(st.compiled, st)  # compiles forward and backward
            st.compile_s = time.perf_counter() - t0
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    st.backend = backend
    st.graph_breaks = int(explained.graph_break_count)
    st.graphs = int(explained.graph_count)


def _compiled_step(st: SimpleNamespace):
    return _train_step(st.compiled, st)


def _eager_step(st: SimpleNamespace):
    return _train_step(st.model, st)


def _check(st: SimpleNamespace, result, baselines: Dict[str, Any]) -> None:
    loss, grads = result
    eager_loss, eager_grads = baselines[EAGER]
    assert torch.isfinite(loss) and torch.allclose(loss, eager_loss, rtol=1e-5, atol=1e-6), (loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        assert (g is None) == (e is None)
        if g is not None:
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


def _notes(st: SimpleNamespace) -> Dict[str, Any]:
    if st.compile_s is None:
        return {"compile": "skipped in --quick (compiling takes minutes on small machines): both rows ran eager"}
    return {
        "backend": st.backend,
        "compile_s": round(st.compile_s, 2),
        "graph_breaks": st.graph_breaks,
        "graphs": st.graphs,
    }


def _workload(name: str, batch: int, num_items: int, dim: int, num_negatives: int, bank_size: int) -> Workload:
    return Workload(
        name=name,
        group="compiled",
        description=(
            f"training step, torch.compile vs eager: B = {batch}, V = {num_items}, d = {dim}, "
            f"{num_negatives} sampled + {bank_size} bank negatives, HS + 3 softmax losses, fwd + bwd"
        ),
        setup=_setup(batch, num_items, dim, num_negatives, bank_size),
        run=_compiled_step,
        baselines={EAGER: _eager_step},
        check=_check,
        items=lambda st: st.size["B"],
        size=lambda st: dict(st.size),
        notes=_notes,
    )


WORKLOADS = [
    _workload("compiled_step_small", 256, 10**4, 64, 1024, 4096),
    _workload("compiled_step_medium", 1024, 10**5, 128, 4096, 16384),
]

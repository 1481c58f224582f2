"""One training step that uses every area of pyneg, compiled with fullgraph=True.

The step draws seeded negatives, scores a hierarchical-softmax head, a sampled
softmax with TensorFlow's expected-count correction, an in-batch softmax with
the frequency estimator's log q, and a mixed loss over memory-bank negatives.
Compiled, it must run as one graph (no breaks) and give the eager loss and
gradients.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pyneg
from pyneg import functional as PF

V, D, B, K = 500, 16, 24, 12


class Step(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        counts = torch.randint(1, 200, (V,), generator=g)
        self.sampler = pyneg.UnigramSampler(counts)
        self.hs = pyneg.HierarchicalSoftmax(counts, D)
        self.items = nn.Embedding(V, D)
        self.tower = nn.Linear(D, D)
        self.bank = pyneg.MemoryBank(64, D)
        self.est = pyneg.FrequencyEstimator(1024)
        for _ in range(3):
            ids = torch.randint(0, V, (B,), generator=g)
            self.est.update(ids)
            self.bank.enqueue(torch.randn(B, D, generator=g), ids, torch.randn(B, generator=g))

    def forward(self, users: torch.Tensor, items: torch.Tensor, seed: int) -> torch.Tensor:
        q = self.tower(users)
        pos = self.items(items)
        neg_ids = self.sampler.sample((K,), seed=seed)
        neg = self.items(neg_ids)
        hs = self.hs(q, items)
        sampled = PF.sampled_softmax_loss(
            q,
            pos,
            neg,
            positive_log_q=self.sampler.log_expected_count(items, K),
            negative_log_q=self.sampler.log_expected_count(neg_ids, K),
            positive_ids=items,
            negative_ids=neg_ids,
        )
        log_q = self.est.log_prob(items)
        in_batch = PF.in_batch_softmax_loss(q, pos, log_q=log_q, candidate_ids=items, temperature=0.5)
        mixed = PF.mixed_negatives_loss(
            q,
            pos,
            [pyneg.NegativeSource.batch(log_q=log_q, ids=items), pyneg.NegativeSource.from_bank(self.bank)],
            positive_ids=items,
            positive_log_q=log_q,
        )
        return hs + sampled + in_batch + mixed


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randint(0, V, (B,), generator=g)


def _loss_and_grads(step: nn.Module, fn, users, items, seed):
    step.zero_grad()
    loss = fn(users, items, seed)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in step.named_parameters()}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_step_has_no_graph_breaks():
    step = Step()
    users, items = _inputs()
    explanation = torch._dynamo.explain(step)(users, items, 7)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_step_equals_eager(backend):
    step = Step()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    for seed in (7, 8):  # a new seed must not need a new graph to be right
        users, items = _inputs(seed)
        want_loss, want_grads = _loss_and_grads(step, step, users, items, seed)
        got_loss, got_grads = _loss_and_grads(step, compiled, users, items, seed)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
        assert want_grads.keys() == got_grads.keys()
        for name in want_grads:
            torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_compiled_step_sees_bank_updates():
    step = Step()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    users, items = _inputs()
    before = compiled(users, items, 3).detach()
    step.bank.enqueue(torch.randn(B, D), torch.randint(0, V, (B,)))
    step.est.update(items)
    want = step(users, items, 3).detach()
    got = compiled(users, items, 3).detach()
    assert not torch.equal(want, before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class Head(nn.Module):
    """A small model with a hierarchical-softmax head and a sampled-softmax head."""

    def __init__(self) -> None:
        super().__init__()
        counts = torch.arange(1, V + 1)
        self.tower = nn.Linear(D, D)
        self.hs = pyneg.HierarchicalSoftmax(counts, D)
        self.items = nn.Embedding(V, D)

    def forward(self, users: torch.Tensor, items: torch.Tensor, neg_ids: torch.Tensor) -> torch.Tensor:
        q = self.tower(users)
        return self.hs(q, items, reduction="none") + PF.sampled_softmax_loss(
            q, self.items(items), self.items(neg_ids), positive_ids=items, negative_ids=neg_ids, reduction="none"
        )


def test_export_gives_eager_results():
    head = Head()
    users, items = _inputs()
    neg_ids = torch.randint(0, V, (K,), generator=torch.Generator().manual_seed(5))
    program = torch.export.export(head, (users, items, neg_ids))
    torch.testing.assert_close(program.module()(users, items, neg_ids), head(users, items, neg_ids))
    users2, items2 = _inputs(9)
    torch.testing.assert_close(program.module()(users2, items2, neg_ids), head(users2, items2, neg_ids))
